//! Incremental sync of sessions from a machine's agent into the local store: events by
//! sequence number, video by byte offset (Range), thumbnails by name. Rerunning after a cut
//! continues where it stopped, and nothing is stored twice (events are keyed by seq).

use crate::error::{CoreError, Result};
use crate::machine::{Machine, Machines};
use crate::store::{now_ms, Store};
use serde::Serialize;
use serde_json::Value;

#[derive(Debug, Default, Serialize)]
pub struct SyncReport {
    pub sessions: usize,
    pub events: u64,
    pub bytes: u64,
    /// Sessions the guest listed that were not taken, and why (the guest is not trusted).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub refused: Vec<String>,
}

/// The most a synced recording part may hold on this host (`PORTHOLE_SYNC_MAX_PART_MB`,
/// default 4096): a guest cannot fill the host's disk through one endless part.
fn max_part_bytes() -> u64 {
    std::env::var("PORTHOLE_SYNC_MAX_PART_MB")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(4096)
        << 20
}

/// Parts a session may claim: a guest that says a billion would have the host loop on it.
const MAX_PARTS: u64 = 10_000;

/// A session id as agents make them (`new_session_id`): what may name a directory here.
pub fn valid_session_id(id: &str) -> bool {
    (1..=64).contains(&id.len())
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// Whether `machine` may write into session `id`, given who holds it here: ids are global, and
/// one guest must not extend another machine's recording (an id is on `/v1/health`).
pub fn claim(owner: Option<&str>, machine: &str, id: &str) -> std::result::Result<(), String> {
    match owner {
        Some(o) if o != machine => Err(format!(
            "session {id}: it belongs to machine '{o}', not '{machine}'"
        )),
        _ => Ok(()),
    }
}

pub async fn sync_machine(ms: &Machines, m: &Machine) -> Result<SyncReport> {
    let client = ms.client(m)?;
    let list = client.get("/v1/recordings").await?;
    let mut report = SyncReport::default();
    for r in list["recordings"].as_array().cloned().unwrap_or_default() {
        let id = r["id"].as_str().unwrap_or_default().to_string();
        if !valid_session_id(&id) {
            report.refused.push(format!(
                "{:?}: not a session id (letters, digits, - and _, at most 64)",
                id.chars().take(80).collect::<String>()
            ));
            continue;
        }
        let owner: Option<(String,)> = sqlx::query_as("SELECT machine FROM sessions WHERE id = ?")
            .bind(&id)
            .fetch_optional(&ms.store.pool)
            .await?;
        if let Err(why) = claim(owner.as_ref().map(|o| o.0.as_str()), &m.name, &id) {
            report.refused.push(why);
            continue;
        }
        let state = match r["state"].as_str() {
            Some("recording") => "running",
            Some("interrupted") => "interrupted",
            _ => "ended",
        };
        sqlx::query(
            "INSERT INTO sessions (id, machine, started_at, duration_ms, state) VALUES (?, ?, ?, ?, ?)
             ON CONFLICT(id) DO UPDATE SET duration_ms = excluded.duration_ms, state = excluded.state",
        )
        .bind(&id)
        .bind(&m.name)
        .bind(r["started_at"].as_i64().unwrap_or(0))
        .bind(r["duration_ms"].as_i64().unwrap_or(0))
        .bind(state)
        .execute(&ms.store.pool)
        .await?;
        report.sessions += 1;
        report.events += sync_events(ms, &client, &id).await?;
        let dir = ms.state.recordings().join(&id);
        std::fs::create_dir_all(dir.join("thumbs"))
            .map_err(CoreError::io(format!("create {}", dir.display())))?;
        for part in 1..=r["parts"].as_u64().unwrap_or(0).min(MAX_PARTS) as u32 {
            let path = dir.join(format!("video-{part:04}.mp4"));
            let have = std::fs::metadata(&path).map(|md| md.len()).unwrap_or(0);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(CoreError::io(format!("open {}", path.display())))?;
            let got = client
                .video_to(
                    &id,
                    part,
                    have,
                    &mut f,
                    max_part_bytes().saturating_sub(have),
                )
                .await;
            f.sync_data().map_err(CoreError::io("sync"))?;
            let got = got?;
            report.bytes += got;
            let total = have + got;
            sqlx::query(
                "INSERT INTO recordings (session_id, part, path, bytes, complete) VALUES (?, ?, ?, ?, ?)
                 ON CONFLICT(session_id, part) DO UPDATE SET bytes = excluded.bytes, complete = excluded.complete",
            )
            .bind(&id)
            .bind(part as i64)
            .bind(path.to_string_lossy().to_string())
            .bind(total as i64)
            .bind((state != "running") as i64)
            .execute(&ms.store.pool)
            .await?;
        }
        sync_thumbs(ms, &client, &id, &dir).await?;
        sqlx::query("UPDATE sessions SET synced_at = ? WHERE id = ?")
            .bind(now_ms())
            .bind(&id)
            .execute(&ms.store.pool)
            .await?;
    }
    Ok(report)
}

async fn sync_events(ms: &Machines, client: &crate::agent::AgentClient, id: &str) -> Result<u64> {
    let (mut after,): (i64,) = sqlx::query_as("SELECT last_seq FROM sessions WHERE id = ?")
        .bind(id)
        .fetch_one(&ms.store.pool)
        .await?;
    let mut added = 0;
    loop {
        let page = client
            .get(&format!(
                "/v1/recordings/{id}/events?after={after}&limit=2000"
            ))
            .await?;
        let events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        let mut tx = ms.store.pool.begin().await?;
        for e in &events {
            let r = sqlx::query("INSERT OR IGNORE INTO events (session_id, seq, t_ms, actor, kind, data) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(id)
                .bind(e["seq"].as_i64().unwrap_or(0))
                .bind(e["t_ms"].as_i64().unwrap_or(0))
                .bind(e["actor"].as_str().unwrap_or(""))
                .bind(e["kind"].as_str().unwrap_or(""))
                .bind(e["data"].to_string())
                .execute(&mut *tx)
                .await?;
            added += r.rows_affected();
            after = after.max(e["seq"].as_i64().unwrap_or(after));
        }
        sqlx::query("UPDATE sessions SET last_seq = ? WHERE id = ?")
            .bind(after)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
    }
    Ok(added)
}

async fn sync_thumbs(
    ms: &Machines,
    client: &crate::agent::AgentClient,
    id: &str,
    dir: &std::path::Path,
) -> Result<()> {
    let rows: Vec<(i64,)> =
        sqlx::query_as("SELECT seq FROM events WHERE session_id = ? AND kind = 'action' AND json_extract(data, '$.thumbs') = 1").bind(id).fetch_all(&ms.store.pool).await?;
    for (seq,) in rows {
        for which in ["before", "after"] {
            let name = format!("{seq}-{which}.jpg");
            let path = dir.join("thumbs").join(&name);
            if path.exists() {
                continue;
            }
            // A thumbnail may not exist yet (written just after its action): try next sync.
            if let Ok(bytes) = client
                .get_bytes(&format!("/v1/recordings/{id}/thumbs/{name}"))
                .await
            {
                std::fs::write(&path, &bytes)
                    .map_err(CoreError::io(format!("write {}", path.display())))?;
                sqlx::query("INSERT OR IGNORE INTO thumbnails (session_id, seq, which, path) VALUES (?, ?, ?, ?)")
                    .bind(id)
                    .bind(seq)
                    .bind(which)
                    .bind(path.to_string_lossy().to_string())
                    .execute(&ms.store.pool)
                    .await?;
            }
        }
    }
    Ok(())
}

/// Sessions in the local store, newest first.
pub async fn local_sessions(store: &Store) -> Result<Vec<Value>> {
    let rows: Vec<(String, String, i64, i64, String, i64, i64)> = sqlx::query_as(
        "SELECT s.id, s.machine, s.started_at, s.duration_ms, s.state,
                COALESCE((SELECT SUM(bytes) FROM recordings r WHERE r.session_id = s.id), 0),
                (SELECT COUNT(*) FROM events e WHERE e.session_id = s.id)
         FROM sessions s ORDER BY s.started_at DESC",
    )
    .fetch_all(&store.pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| serde_json::json!({"id": r.0, "machine": r.1, "started_at": r.2, "duration_ms": r.3, "state": r.4, "bytes": r.5, "events": r.6}))
        .collect())
}

/// Events of a stored session, optionally within a time window.
pub async fn events(
    store: &Store,
    session: &str,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> Result<Vec<porthole_proto::Event>> {
    let rows: Vec<(i64, i64, String, String, String)> =
        sqlx::query_as("SELECT seq, t_ms, actor, kind, data FROM events WHERE session_id = ? AND t_ms >= ? AND t_ms <= ? ORDER BY seq")
            .bind(session)
            .bind(from_ms.unwrap_or(0) as i64)
            .bind(to_ms.map(|t| t as i64).unwrap_or(i64::MAX))
            .fetch_all(&store.pool)
            .await?;
    Ok(rows
        .into_iter()
        .map(|r| porthole_proto::Event {
            seq: r.0 as u64,
            t_ms: r.1 as u64,
            actor: serde_json::from_value(Value::String(r.2))
                .unwrap_or(porthole_proto::Actor::System),
            kind: r.3,
            data: serde_json::from_str(&r.4).unwrap_or(Value::Null),
        })
        .collect())
}

/// The first screenshot of a session as a data URL (for the replay library).
pub fn thumbnail_data_url(ms: &Machines, session: &str) -> Option<String> {
    use base64::Engine as _;
    let dir = ms.state.recordings().join(session).join("thumbs");
    let mut names: Vec<(u64, std::path::PathBuf)> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            let seq = n.split('-').next()?.parse().ok()?;
            n.ends_with("-after.jpg").then(|| (seq, e.path()))
        })
        .collect();
    names.sort();
    let bytes = std::fs::read(&names.first()?.1).ok()?;
    Some(format!(
        "data:image/jpeg;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(bytes)
    ))
}

/// A synced session's recording, every part on the session clock (see
/// [`crate::replay::Recording`]).
pub async fn recording(ms: &Machines, session: &str) -> Result<crate::replay::Recording> {
    // Only the `recording` events: every seek opens the recording again, and a long session's
    // terminal output would be read each time for nothing.
    let rows: Vec<(i64, i64, String)> = sqlx::query_as(
        "SELECT seq, t_ms, data FROM events WHERE session_id = ? AND kind = 'recording' ORDER BY seq",
    )
    .bind(session)
    .fetch_all(&ms.store.pool)
    .await?;
    let evs: Vec<porthole_proto::Event> = rows
        .into_iter()
        .map(|r| porthole_proto::Event {
            seq: r.0 as u64,
            t_ms: r.1 as u64,
            actor: porthole_proto::Actor::System,
            kind: "recording".into(),
            data: serde_json::from_str(&r.2).unwrap_or(Value::Null),
        })
        .collect();
    let starts = crate::replay::Recording::starts_from_events(&evs);
    crate::replay::Recording::open(&ms.state.recordings().join(session), &starts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_guest_cannot_name_paths_or_claim_another_machines_session() {
        for (id, ok) in [
            ("20261202-051500-ab12", true),
            ("s_1", true),
            ("", false),
            ("..", false),
            ("a/b", false),
            ("a\\b", false),
            ("<script>", false),
            ("x y", false),
            (&"a".repeat(65), false),
        ] {
            assert_eq!(valid_session_id(id), ok, "{id:?}");
        }
        assert!(claim(None, "b", "s1").is_ok());
        assert!(claim(Some("b"), "b", "s1").is_ok());
        let e = claim(Some("a"), "b", "s1").unwrap_err();
        assert!(e.contains("belongs to machine 'a'"), "{e}");
    }
}
