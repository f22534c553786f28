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
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Store {
    pub async fn open(path: &Path) -> Result<Self> {
        // The state directory: 0700 from the start (see paths.rs).
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            crate::paths::ensure_private_dir(dir)?;
        }
        let opts = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            // App and CLI share the file: wait for the other's write instead of failing.
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(opts)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Self { pool })
    }

    /// Sessions left `running` by a process that is gone become `interrupted`.
    pub async fn mark_interrupted(&self, machine: &str) -> Result<u64> {
        let r = sqlx::query(
            "UPDATE sessions SET state = 'interrupted' WHERE machine = ? AND state = 'running'",
        )
        .bind(machine)
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Child mode for the crash test: write sessions and their events in transactions forever.
    async fn writer(path: &Path) {
        let s = Store::open(path).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, machine, started_at, state) VALUES ('s', 'm', 1, 'running')",
        )
        .execute(&s.pool)
        .await
        .unwrap();
        for seq in 1.. {
            let mut tx = s.pool.begin().await.unwrap();
            sqlx::query("INSERT INTO events (session_id, seq, t_ms, actor, kind, data) VALUES ('s', ?, ?, 'agent', 'action', '{}')")
                .bind(seq)
                .bind(seq * 10)
                .execute(&mut *tx)
                .await
                .unwrap();
            sqlx::query("UPDATE sessions SET last_seq = ? WHERE id = 's'")
                .bind(seq)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
    }

    #[tokio::test]
    async fn survives_kill_9_mid_write() {
        if let Ok(p) = std::env::var("PORTHOLE_STORE_CRASH_CHILD") {
            writer(Path::new(&p)).await;
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("crash.db");
        // Re-run this very test in a child process as the writer, then kill it mid-write.
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "store::tests::survives_kill_9_mid_write",
                "--nocapture",
            ])
            .env("PORTHOLE_STORE_CRASH_CHILD", &p)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(std::time::Duration::from_millis(1500));
        child.kill().unwrap();
        child.wait().unwrap();
        let s = Store::open(&p).await.unwrap();
        let (ok,): (String,) = sqlx::query_as("PRAGMA integrity_check")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(ok, "ok");
        let (n, max): (i64, Option<i64>) = sqlx::query_as("SELECT COUNT(*), MAX(seq) FROM events")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        let (last,): (i64,) = sqlx::query_as("SELECT last_seq FROM sessions WHERE id = 's'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert!(n > 0, "the writer wrote something before the kill");
        // Every committed transaction is whole: the counter and the rows agree.
        assert_eq!((n, max), (last, Some(last)));
        assert_eq!(
            s.mark_interrupted("m").await.unwrap(),
            1,
            "the running session is marked interrupted"
        );
    }

    #[tokio::test]
    async fn reads_go_on_while_a_sync_writes() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(&dir.path().join("c.db")).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, machine, started_at, state) VALUES ('s', 'm', 1, 'running')",
        )
        .execute(&s.pool)
        .await
        .unwrap();
        let w = s.clone();
        let writer = tokio::spawn(async move {
            for page in 0..50i64 {
                let mut tx = w.pool.begin().await.unwrap();
                for k in 0..100i64 {
                    let seq = page * 100 + k + 1;
                    sqlx::query("INSERT INTO events (session_id, seq, t_ms, actor, kind, data) VALUES ('s', ?, ?, 'agent', 'action', '{}')")
                        .bind(seq)
                        .bind(seq)
                        .execute(&mut *tx)
                        .await
                        .unwrap();
                }
                tx.commit().await.unwrap();
            }
        });
        let mut reads = 0;
        let mut last = 0;
        while !writer.is_finished() {
            let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM events")
                .fetch_one(&s.pool)
                .await
                .unwrap();
            assert_eq!(n % 100, 0, "a reader never sees half a page");
            assert!(n >= last, "counts only grow");
            last = n;
            reads += 1;
        }
        writer.await.unwrap();
        assert!(reads > 1, "reads ran during the writes");
    }

    #[tokio::test]
    async fn migrates_from_empty_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s.db");
        let s = Store::open(&p).await.unwrap();
        sqlx::query(
            "INSERT INTO sessions (id, machine, started_at, state) VALUES ('a', 'm', 1, 'running')",
        )
        .execute(&s.pool)
        .await
        .unwrap();
        drop(s);
        let s = Store::open(&p).await.unwrap();
        assert_eq!(s.mark_interrupted("m").await.unwrap(), 1);
        let (state,): (String,) = sqlx::query_as("SELECT state FROM sessions WHERE id = 'a'")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(state, "interrupted");
        let (mode,): (String,) = sqlx::query_as("PRAGMA journal_mode")
            .fetch_one(&s.pool)
            .await
            .unwrap();
        assert_eq!(mode, "wal");
    }
}
