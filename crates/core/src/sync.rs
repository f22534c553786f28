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
    /// Synced sessions the host's retention deleted after this sync (oldest first).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pruned: Vec<String>,
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

/// The secrets to redact from what a guest sends: every value in the vault. Opening the vault
/// only when it holds something keeps a sync from creating a key nobody asked for.
async fn host_secrets(ms: &Machines) -> Result<Vec<(String, String)>> {
    let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM secrets")
        .fetch_one(&ms.store.pool)
        .await?;
    if n == 0 {
        return Ok(Vec::new());
    }
    crate::vault::Vault::open(ms).await?.all_values().await
}

pub async fn sync_machine(ms: &Machines, m: &Machine) -> Result<SyncReport> {
    let client = ms.client(m)?;
    let list = client.get("/v1/recordings").await?;
    let secrets = host_secrets(ms).await?;
    let retention = host_retention()?;
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
        let gone: Option<(String,)> = sqlx::query_as("SELECT id FROM pruned WHERE id = ?")
            .bind(&id)
            .fetch_optional(&ms.store.pool)
            .await?;
        if gone.is_some() {
            // Deleted here by retention; the guest's copy is the guest's business.
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
        report.events += sync_events(ms, &client, &id, &secrets).await?;
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
    report.pruned = prune(ms, retention).await?;
    Ok(report)
}

/// What the host keeps of synced recordings: `PORTHOLE_RETAIN_DAYS` (default 0: any age) and
/// `PORTHOLE_RETAIN_GB` (default 50) unless `recordings prune` is given its own; applied
/// after every sync, oldest finished sessions first, never one still recording.
pub fn host_retention() -> Result<porthole_proto::retention::Retention> {
    let num = |var: &str, default: u64| -> Result<u64> {
        match std::env::var(var) {
            Err(_) => Ok(default),
            Ok(v) => v.trim().parse::<u64>().map_err(|_| {
                CoreError::Invalid(format!("{var}={v}: expected a whole number (0: no limit)"))
            }),
        }
    };
    let days = num("PORTHOLE_RETAIN_DAYS", 0)?;
    let gb = num("PORTHOLE_RETAIN_GB", 50)?;
    Ok(porthole_proto::retention::Retention {
        max_age: (days > 0).then(|| std::time::Duration::from_secs(days * 86_400)),
        max_bytes: (gb > 0).then(|| gb << 30),
    })
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    let mut n = 0;
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        match e.file_type() {
            Ok(t) if t.is_dir() => n += dir_bytes(&e.path()),
            Ok(_) => n += e.metadata().map(|m| m.len()).unwrap_or(0),
            Err(_) => {}
        }
    }
    n
}

/// Deletes the synced sessions `r` chooses (rows first, in one transaction, then files: a kill
/// between leaves a directory no row names, never a row without its files). Returns their ids.
pub async fn prune(ms: &Machines, r: porthole_proto::retention::Retention) -> Result<Vec<String>> {
    if r.max_age.is_none() && r.max_bytes.is_none() {
        return Ok(Vec::new());
    }
    let rows: Vec<(String, i64, String)> =
        sqlx::query_as("SELECT id, started_at, state FROM sessions")
            .fetch_all(&ms.store.pool)
            .await?;
    let mut finished = Vec::new();
    let mut live_bytes = 0;
    for (id, started, state) in rows {
        let bytes = dir_bytes(&ms.state.recordings().join(&id));
        if state == "running" {
            live_bytes += bytes;
        } else {
            finished.push(porthole_proto::retention::Kept {
                id,
                started_at_unix_ms: started.max(0) as u64,
                bytes,
            });
        }
    }
    let chosen = r.choose(&finished, live_bytes, now_ms() as u64);
    if chosen.is_empty() {
        return Ok(chosen);
    }
    let mut tx = ms.store.pool.begin().await?;
    for id in &chosen {
        for q in [
            "DELETE FROM events WHERE session_id = ?",
            "DELETE FROM thumbnails WHERE session_id = ?",
            "DELETE FROM recordings WHERE session_id = ?",
        ] {
            sqlx::query(q).bind(id).execute(&mut *tx).await?;
        }
        sqlx::query(
            "INSERT OR REPLACE INTO pruned (id, machine, pruned_at)
             SELECT id, machine, ? FROM sessions WHERE id = ?",
        )
        .bind(now_ms())
        .bind(id)
        .execute(&mut *tx)
        .await?;
        sqlx::query("DELETE FROM sessions WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    for id in &chosen {
        let dir = ms.state.recordings().join(id);
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("prune: cannot delete {}: {e}", dir.display());
            }
        }
    }
    Ok(chosen)
}

async fn sync_events(
    ms: &Machines,
    client: &crate::agent::AgentClient,
    id: &str,
    secrets: &[(String, String)],
) -> Result<u64> {
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
        let before = after;
        let mut events = page["events"].as_array().cloned().unwrap_or_default();
        if events.is_empty() {
            break;
        }
        let mut tx = ms.store.pool.begin().await?;
        for e in &mut events {
            // The guest redacted already; a guest is not trusted to have (a secret set on the
            // host after the machine started, a compromised agent).
            porthole_proto::redact::value(secrets, &mut e["data"]);
            let r = sqlx::query("INSERT OR IGNORE INTO events (session_id, seq, t_ms, actor, kind, data) VALUES (?, ?, ?, ?, ?, ?)")
                .bind(id)
                .bind(e["seq"].as_i64().unwrap_or(0))
                .bind(e["t_ms"].as_i64().unwrap_or(0))
                .bind(e["actor"].as_str().unwrap_or(""))
                .bind(porthole_proto::redact::text(secrets, e["kind"].as_str().unwrap_or("")))
                .bind(e["data"].to_string())
                .execute(&mut *tx)
                .await?;
            added += r.rows_affected();
            after = after.max(e["seq"].as_i64().unwrap_or(after));
        }
        if after <= before {
            // A page that does not move on (a guest answering the same events forever)
            // would loop here: the next sync asks again.
            tx.commit().await?;
            break;
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
