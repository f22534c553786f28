//! The local store: SQLite through sqlx, migrations embedded, WAL mode.
//!
//! WAL plus `synchronous=NORMAL` keeps the database consistent across a kill at any point (a
//! transaction is either in the WAL or not); `reopen` marks sessions that were running as
//! interrupted, because whoever was syncing them is gone.

use crate::error::Result;
use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;
use std::path::Path;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct Store {
    pub pool: SqlitePool,
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Store {
    pub async fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(crate::error::CoreError::io(format!("create {}", dir.display())))?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // App and CLI share the file: wait for the other's write instead of failing.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new().max_connections(4).connect_with(opts).await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Sessions left `running` by a process that is gone become `interrupted`.
    pub async fn mark_interrupted(&self, machine: &str) -> Result<u64> {
        let r = sqlx::query("UPDATE sessions SET state = 'interrupted' WHERE machine = ? AND state = 'running'")
            .bind(machine)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn migrates_from_empty_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let s = Store::open(&p).await.unwrap();
        sqlx::query("INSERT INTO sessions (id, machine, started_at, state) VALUES ('a', 'm', 1, 'running')").execute(&s.pool).await.unwrap();
        drop(s);
        let s = Store::open(&p).await.unwrap();
        assert_eq!(s.mark_interrupted("m").await.unwrap(), 1);
        let (state,): (String,) = sqlx::query_as("SELECT state FROM sessions WHERE id = 'a'").fetch_one(&s.pool).await.unwrap();
        assert_eq!(state, "interrupted");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode").fetch_one(&s.pool).await.unwrap();
        assert_eq!(mode, "wal");
    }
}
