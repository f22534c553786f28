//! The session timeline: one clock and one ordered event log per session.
//!
//! `seq` and `t_ms` are assigned under one lock, so every reader (HTTP, SSE, data channels,
//! the recorder) sees the same order with non-decreasing times. Text passes through the
//! redactor before it is stored, so no reader can see a secret.

use porthole_proto::{Actor, Event};
use serde_json::Value;
use std::sync::{Arc, Mutex};
use std::time::Instant;
use tokio::sync::broadcast;

/// Replaces each value (longest first) with `[REDACTED:NAME]`.
pub fn redact_with(secrets: &[(String, String)], text: &str) -> String {
    let mut out = text.to_string();
    for (name, val) in secrets {
        if out.contains(val.as_str()) {
            out = out.replace(val.as_str(), &format!("[REDACTED:{name}]"));
        }
    }
    out
}

/// Replaces secret values with `[REDACTED:NAME]` in any text.
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Arc<Mutex<Vec<(String, String)>>>,
}

impl Redactor {
    pub fn set(&self, secrets: impl IntoIterator<Item = (String, String)>) {
        let mut v: Vec<(String, String)> = secrets
            .into_iter()
            .filter(|(_, val)| !val.is_empty())
            .collect();
        // Longest first, so a secret containing another is replaced whole.
        v.sort_by(|a, b| b.1.len().cmp(&a.1.len()));
        *self.secrets.lock().unwrap() = v;
    }

    pub fn redact(&self, text: &str) -> String {
        redact_with(&self.secrets.lock().unwrap(), text)
    }

    pub fn redact_value(&self, v: &mut Value) {
        match v {
            Value::String(s) => {
                let r = self.redact(s);
                if r != *s {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| self.redact_value(x)),
            Value::Object(o) => o.values_mut().for_each(|x| self.redact_value(x)),
            _ => {}
        }
    }
}

struct Log {
    /// `events.jsonl` of the session's recording, appended to as events happen.
    sink: Option<std::fs::File>,
    session_id: String,
    started: Instant,
    started_at_unix_ms: u64,
    events: Vec<Event>,
}

#[derive(Clone)]
pub struct Timeline {
    log: Arc<Mutex<Log>>,
    /// Recordings directory when sessions are recorded.
    record_root: Option<std::path::PathBuf>,
    tx: broadcast::Sender<Event>,
    pub redactor: Redactor,
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

pub fn new_session_id() -> String {
    // Time-ordered, so recordings sort by start: yyyymmddThhmmss would need a date crate;
    // unix ms in hex plus randomness is as sortable and shorter.
    format!(
        "s{:011x}{:06x}",
        unix_ms(),
        rand::random::<u32>() & 0xff_ffff
    )
}

impl Timeline {
    pub fn new(session_id: String, record_root: Option<std::path::PathBuf>) -> Self {
        let (tx, _) = broadcast::channel(1024);
        let sink = open_sink(record_root.as_deref(), &session_id);
        Self {
            log: Arc::new(Mutex::new(Log {
                sink,
                session_id,
                started: Instant::now(),
                started_at_unix_ms: unix_ms(),
                events: Vec::new(),
            })),
            record_root,
            tx,
            redactor: Redactor::default(),
        }
    }

    /// Ends the current session and starts a new one: new id, clock at 0, seq from 1.
    pub fn restart(&self, session_id: String) {
        let sink = open_sink(self.record_root.as_deref(), &session_id);
        let mut l = self.log.lock().unwrap();
        *l = Log {
            sink,
            session_id,
            started: Instant::now(),
            started_at_unix_ms: unix_ms(),
            events: Vec::new(),
        };
    }

    pub fn session_id(&self) -> String {
        self.log.lock().unwrap().session_id.clone()
    }

    pub fn started_at_unix_ms(&self) -> u64 {
        self.log.lock().unwrap().started_at_unix_ms
    }

    pub fn started(&self) -> Instant {
        self.log.lock().unwrap().started
    }

    /// Milliseconds since the session started.
    pub fn now_ms(&self) -> u64 {
        self.log.lock().unwrap().started.elapsed().as_millis() as u64
    }

    pub fn t_ms_of(&self, at: Instant) -> u64 {
        at.saturating_duration_since(self.started()).as_millis() as u64
    }

    pub fn emit(&self, actor: Actor, kind: &str, mut data: Value) -> Event {
        self.redactor.redact_value(&mut data);
        let ev = {
            let mut l = self.log.lock().unwrap();
            let t_ms = l.started.elapsed().as_millis() as u64;
            let seq = l.events.len() as u64 + 1;
            let ev = Event {
                seq,
                t_ms,
                actor,
                kind: kind.to_string(),
                data,
            };
            if let Some(f) = l.sink.as_mut() {
                use std::io::Write;
                // One write per line: after a crash the file ends on a whole event.
                let mut line = serde_json::to_vec(&ev).unwrap_or_default();
                line.push(b'\n');
                if let Err(e) = f.write_all(&line) {
                    tracing::warn!("events.jsonl: {e}; events are kept in memory only");
                    l.sink = None;
                }
            }
            l.events.push(ev.clone());
            ev
        };
        let _ = self.tx.send(ev.clone());
        ev
    }

    /// Events with `seq > after`, oldest first, at most `limit`.
    pub fn page(&self, after: u64, limit: usize) -> (Vec<Event>, u64) {
        let l = self.log.lock().unwrap();
        let start = (after as usize).min(l.events.len());
        let events: Vec<Event> = l.events[start..].iter().take(limit).cloned().collect();
        let next = events
            .last()
            .map(|e| e.seq)
            .unwrap_or(after.max(start as u64));
        (events, next)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

fn open_sink(root: Option<&std::path::Path>, session_id: &str) -> Option<std::fs::File> {
    let dir = root?.join(session_id);
    let r = std::fs::create_dir_all(&dir).and_then(|_| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("events.jsonl"))
    });
    match r {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!("cannot write {}: {e}", dir.display());
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn events_are_ordered_paged_and_redacted() {
        let t = Timeline::new("s1".into(), None);
        t.redactor
            .set([("API_KEY".to_string(), "sk-12345".to_string())]);
        for i in 0..5 {
            t.emit(
                Actor::Agent,
                "action",
                json!({"i": i, "text": "key sk-12345 here"}),
            );
        }
        let (all, next) = t.page(0, 1000);
        assert_eq!(
            all.iter().map(|e| e.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4, 5]
        );
        assert_eq!(next, 5);
        assert!(all.windows(2).all(|w| w[0].t_ms <= w[1].t_ms));
        assert_eq!(all[0].data["text"], "key [REDACTED:API_KEY] here");
        let (p, next) = t.page(2, 2);
        assert_eq!(p.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![3, 4]);
        assert_eq!(next, 4);
        let (p, next) = t.page(9, 10);
        assert!(p.is_empty());
        assert_eq!(next, 9, "next never goes backwards");
        t.restart("s2".into());
        assert_eq!(t.emit(Actor::System, "control", json!({})).seq, 1);
    }
}
