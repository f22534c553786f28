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
    porthole_proto::redact::text(secrets, text)
}

/// Replaces secret values with `[REDACTED:NAME]` in any text.
#[derive(Default, Clone)]
pub struct Redactor {
    secrets: Arc<Mutex<Vec<(String, String)>>>,
}

impl Redactor {
    pub fn set(&self, secrets: impl IntoIterator<Item = (String, String)>) {
        *self.secrets.lock().unwrap() = porthole_proto::redact::prepare(secrets);
    }

    pub fn redact(&self, text: &str) -> String {
        redact_with(&self.secrets.lock().unwrap(), text)
    }

    pub fn redact_value(&self, v: &mut Value) {
        porthole_proto::redact::value(&self.secrets.lock().unwrap(), v)
    }
}

/// Events held in memory per session: the newest ones, for the live readers (SSE, data
/// channels, `/v1/events`). Older pages come from `events.jsonl` through its index, so a long
/// session costs the same memory as a short one. Without a recording (`--no-record`) only
/// these are kept.
pub const HELD_EVENTS: usize = 10_000;

/// Events waiting for a broken `events.jsonl` (disk full) are held up to this many; beyond
/// it the oldest are dropped from the file (not from readers that already had them) and the
/// `error` event on resuming says how many.
const HELD_UNWRITTEN: usize = 100_000;

/// Where each `STRIDE`-th seq starts in an `events.jsonl`: a page is a seek and at most
/// `STRIDE` skipped lines plus the page itself, so sync is O(page), not O(file).
#[derive(Debug, Default, Clone)]
pub struct SeqIndex {
    /// Bytes of whole lines indexed (and, for the live file, written).
    pub len: u64,
    /// Highest seq seen.
    pub last_seq: u64,
    /// `marks[k]`: offset of the first line whose seq is > k * STRIDE.
    marks: Vec<u64>,
}

const STRIDE: u64 = 64;

/// The seq of a line as this agent writes it (`{"seq":N,...`); anything else is not an event.
fn line_seq(line: &[u8]) -> Option<u64> {
    let rest = line.strip_prefix(br#"{"seq":"#)?;
    let n = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&rest[..n]).ok()?.parse().ok()
}

impl SeqIndex {
    /// Notes a whole line holding `seq`, written at the current end.
    fn note(&mut self, seq: u64, line_len: u64) {
        while (self.marks.len() as u64) * STRIDE < seq {
            self.marks.push(self.len);
        }
        self.len += line_len;
        self.last_seq = self.last_seq.max(seq);
    }

    /// Indexes what was appended to `path` since the last call (whole lines only: a torn
    /// last line, from a kill mid-write, waits until it is whole, which it never will be).
    pub fn extend(&mut self, path: &std::path::Path) -> std::io::Result<()> {
        use std::io::{BufRead, Seek};
        let f = std::fs::File::open(path)?;
        let mut r = std::io::BufReader::new(f);
        r.seek(std::io::SeekFrom::Start(self.len))?;
        let mut line = Vec::new();
        loop {
            line.clear();
            let n = r.read_until(b'\n', &mut line)?;
            if n == 0 || line.last() != Some(&b'\n') {
                return Ok(());
            }
            match line_seq(&line) {
                Some(seq) if seq > self.last_seq => self.note(seq, n as u64),
                _ => self.len += n as u64,
            }
        }
    }

    /// Events with `seq > after` from `path`, oldest first, at most `limit`, with `keep`
    /// filtering (a time window).
    pub fn read(
        &self,
        path: &std::path::Path,
        after: u64,
        limit: usize,
        keep: impl Fn(&Event) -> bool,
    ) -> std::io::Result<Vec<Event>> {
        match self.window(after) {
            Some(w) => read_window(path, w, after, limit, keep),
            None => Ok(Vec::new()),
        }
    }

    /// The bytes of the file that can hold the events after `after`: (start, end).
    fn window(&self, after: u64) -> Option<(u64, u64)> {
        let from = *self.marks.get((after / STRIDE) as usize)?;
        Some((from, self.len))
    }
}

/// The events with `seq > after` in bytes `from..to` of an events file (see `SeqIndex`).
fn read_window(
    path: &std::path::Path,
    (from, to): (u64, u64),
    after: u64,
    limit: usize,
    keep: impl Fn(&Event) -> bool,
) -> std::io::Result<Vec<Event>> {
    use std::io::{BufRead, Read, Seek};
    let mut f = std::fs::File::open(path)?;
    f.seek(std::io::SeekFrom::Start(from))?;
    let r = std::io::BufReader::new(f.take(to - from));
    let mut out = Vec::new();
    // Only increasing seqs: a line out of order (a damaged or foreign file) is skipped, so
    // a reader paging by `next` never sees an event twice.
    let mut last = after;
    for line in r.split(b'\n') {
        let line = line?;
        if line_seq(&line).is_none_or(|s| s <= last) {
            continue;
        }
        // A line that does not parse (damaged on disk) is skipped, not an error.
        if let Ok(e) = serde_json::from_slice::<Event>(&line) {
            last = e.seq;
            if keep(&e) {
                out.push(e);
                if out.len() >= limit {
                    break;
                }
            }
        }
    }
    Ok(out)
}

/// The held events with `seq > after`, at most `limit`.
fn held_after(l: &Log, after: u64, limit: usize) -> Vec<Event> {
    let from = l.held.partition_point(|e| e.seq <= after);
    l.held.range(from..).take(limit).cloned().collect()
}

/// `events.jsonl` of the session's recording, appended to as events happen. A failed write
/// (disk full) does not end it: the events wait in memory and go out, in order, once a write
/// works again (tried at most once a second).
struct Sink {
    path: std::path::PathBuf,
    file: Option<std::fs::File>,
    index: SeqIndex,
    /// Why the last write failed, while it does.
    problem: Option<String>,
    last_try: Option<Instant>,
    /// Unwritten events dropped because the file stayed broken too long.
    lost: u64,
}

impl Sink {
    /// The sink of a session; the file is made with the first event (so a failure to make
    /// it is said on the timeline like any later one).
    fn open(root: Option<&std::path::Path>, session_id: &str) -> Option<Sink> {
        Some(Sink {
            path: root?.join(session_id).join("events.jsonl"),
            file: None,
            index: SeqIndex::default(),
            problem: None,
            last_try: None,
            lost: 0,
        })
    }

    /// Opens the file at its last whole line: a line cut by a failed write is dropped, so
    /// what follows starts on a line of its own.
    fn reopen(&mut self) -> std::io::Result<()> {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)?;
        if f.metadata()?.len() != self.index.len {
            f.set_len(self.index.len)?;
        }
        self.file = Some(f);
        Ok(())
    }

    fn write(&mut self, ev: &Event) -> std::io::Result<()> {
        use std::io::Write;
        let f = self.file.as_mut().ok_or(std::io::ErrorKind::NotConnected)?;
        // One write per line: after a crash the file ends on a whole event.
        let mut line = serde_json::to_vec(ev).unwrap_or_default();
        line.push(b'\n');
        f.write_all(&line)?;
        self.index.note(ev.seq, line.len() as u64);
        Ok(())
    }

    /// Writes what the file lacks of `held` (and `ev`), oldest first; on failure keeps the
    /// rest for the next try.
    fn catch_up(&mut self, held: &std::collections::VecDeque<Event>) -> Result<(), String> {
        if self.file.is_none() {
            if self
                .last_try
                .is_some_and(|t| t.elapsed() < std::time::Duration::from_secs(1))
            {
                return Err(self.problem.clone().unwrap_or_default());
            }
            self.last_try = Some(Instant::now());
            if let Err(e) = std::fs::create_dir_all(self.path.parent().expect("in a dir"))
                .and_then(|_| self.reopen())
            {
                return Err(format!("cannot write {}: {e}", self.path.display()));
            }
        }
        let from = held.partition_point(|e| e.seq <= self.index.last_seq);
        for e in held.range(from..) {
            if let Err(err) = self.write(e) {
                self.file = None;
                self.last_try = Some(Instant::now());
                return Err(format!("cannot write {}: {err}", self.path.display()));
            }
        }
        Ok(())
    }
}

struct Log {
    sink: Option<Sink>,
    session_id: String,
    started: Instant,
    started_at_unix_ms: u64,
    /// The newest events (see [`HELD_EVENTS`]), plus any `events.jsonl` still lacks.
    held: std::collections::VecDeque<Event>,
    next_seq: u64,
}

impl Log {
    fn new(record_root: Option<&std::path::Path>, session_id: String) -> Self {
        Self {
            sink: Sink::open(record_root, &session_id),
            session_id,
            started: Instant::now(),
            started_at_unix_ms: unix_ms(),
            held: std::collections::VecDeque::new(),
            next_seq: 1,
        }
    }

    /// Appends an event; returns a problem that is new (the sink just broke) or resolved.
    fn push(&mut self, ev: Event) -> Option<SinkChange> {
        self.held.push_back(ev);
        let mut change = None;
        if let Some(sink) = self.sink.as_mut() {
            let was = sink.problem.clone();
            match sink.catch_up(&self.held) {
                Ok(()) => {
                    if let Some(why) = was {
                        sink.problem = None;
                        change = Some(SinkChange::Resumed {
                            was: why,
                            lost: std::mem::take(&mut sink.lost),
                        });
                    }
                }
                Err(why) => {
                    if was.is_none() {
                        change = Some(SinkChange::Broke(why.clone()));
                    }
                    sink.problem = Some(why);
                }
            }
        }
        let written = self.sink.as_ref().map_or(u64::MAX, |s| s.index.last_seq);
        while self.held.len() > HELD_EVENTS {
            let front = self.held.front().expect("not empty").seq;
            if front <= written {
                self.held.pop_front();
            } else if self.held.len() > HELD_UNWRITTEN {
                self.held.pop_front();
                if let Some(s) = self.sink.as_mut() {
                    s.lost += 1;
                }
            } else {
                break;
            }
        }
        change
    }
}

enum SinkChange {
    Broke(String),
    Resumed { was: String, lost: u64 },
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
        Self {
            log: Arc::new(Mutex::new(Log::new(record_root.as_deref(), session_id))),
            record_root,
            tx,
            redactor: Redactor::default(),
        }
    }

    /// Ends the current session and starts a new one: new id, clock at 0, seq from 1.
    pub fn restart(&self, session_id: String) {
        let fresh = Log::new(self.record_root.as_deref(), session_id);
        *self.log.lock().unwrap() = fresh;
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

    /// Why `events.jsonl` cannot be written now (disk full), for /v1/health.
    pub fn problem(&self) -> Option<String> {
        let l = self.log.lock().unwrap();
        l.sink.as_ref().and_then(|s| s.problem.clone())
    }

    pub fn emit(&self, actor: Actor, kind: &str, mut data: Value) -> Event {
        self.redactor.redact_value(&mut data);
        let (ev, change) = {
            let mut l = self.log.lock().unwrap();
            let t_ms = l.started.elapsed().as_millis() as u64;
            let seq = l.next_seq;
            l.next_seq += 1;
            let ev = Event {
                seq,
                t_ms,
                actor,
                kind: kind.to_string(),
                data,
            };
            let change = l.push(ev.clone());
            (ev, change)
        };
        let _ = self.tx.send(ev.clone());
        // Said on the timeline itself (kept in memory and written once the file works).
        match change {
            Some(SinkChange::Broke(why)) => {
                tracing::warn!("events.jsonl: {why}; held in memory until a write works");
                self.emit(
                    Actor::System,
                    "error",
                    serde_json::json!({"source": "events", "message": why}),
                );
            }
            Some(SinkChange::Resumed { was, lost }) => {
                tracing::info!("events.jsonl: writing again (was: {was}; {lost} lost)");
                self.emit(
                    Actor::System,
                    "error",
                    serde_json::json!({"source": "events", "state": "resumed", "message": format!("events.jsonl is written again after: {was}"), "lost": lost}),
                );
            }
            None => {}
        }
        ev
    }

    /// Events with `seq > after`, oldest first, at most `limit`: from memory when it holds
    /// them, else from `events.jsonl` through its index (O(page)). Without a file, what
    /// memory no longer holds is gone and the page starts at the oldest held event.
    pub fn page(&self, after: u64, limit: usize) -> (Vec<Event>, u64) {
        let paged = |events: Vec<Event>| {
            let next = events.last().map_or(after, |e| e.seq);
            (events, next)
        };
        // The file is read without the lock (emit must not wait on a page of I/O); the
        // lines it reads are whole and never change once written.
        let (path, window, session) = {
            let l = self.log.lock().unwrap();
            let oldest_held = l.held.front().map_or(l.next_seq, |e| e.seq);
            let file = match &l.sink {
                Some(sink) if after + 1 < oldest_held && sink.index.len > 0 => sink
                    .index
                    .window(after)
                    .map(|w| (sink.path.clone(), w, l.session_id.clone())),
                _ => None,
            };
            match file {
                Some(f) => f,
                None => return paged(held_after(&l, after, limit)),
            }
        };
        let read = read_window(&path, window, after, limit, |_| true);
        let failed = read.is_err();
        let mut v = read.unwrap_or_default();
        if v.len() < limit {
            // The file ends where memory may go on (held but unwritten). Only where memory
            // starts at or before the file's end: events emitted during the read can evict
            // what follows it from memory (they are in the file, past this window), and a
            // page that jumped over them would make a reader paging by `next` skip them.
            // A file that cannot be read at all leaves memory the only source (as before).
            let l = self.log.lock().unwrap();
            let last = v.last().map_or(after, |e| e.seq);
            let contiguous = l.held.front().is_none_or(|e| e.seq <= last + 1);
            if l.session_id == session && (contiguous || failed) {
                let more = held_after(&l, last, limit - v.len());
                v.extend(more);
            }
        }
        paged(v)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Event> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    use std::io::Write;

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

    fn seqs(v: &[Event]) -> Vec<u64> {
        v.iter().map(|e| e.seq).collect()
    }

    #[test]
    fn a_long_session_holds_the_newest_and_pages_the_rest_from_the_file() {
        let d = tempfile::tempdir().unwrap();
        let t = Timeline::new("s1".into(), Some(d.path().to_path_buf()));
        let n = HELD_EVENTS as u64 * 2 + 345;
        for i in 0..n {
            t.emit(Actor::Agent, "terminal", json!({"i": i}));
        }
        assert_eq!(
            t.log.lock().unwrap().held.len(),
            HELD_EVENTS,
            "memory is bounded"
        );
        #[track_caller]
        fn check(t: &Timeline, after: u64, limit: usize, want: std::ops::RangeInclusive<u64>) {
            let (p, next) = t.page(after, limit);
            assert_eq!(
                seqs(&p),
                want.clone().collect::<Vec<_>>(),
                "page({after}, {limit})"
            );
            assert_eq!(next, *want.end().max(&after));
        }
        check(&t, 0, 3, 1..=3);
        check(&t, 63, 2, 64..=65);
        check(&t, 64, 2, 65..=66);
        check(&t, 12_345, 3, 12_346..=12_348);
        // Across the file and memory.
        let held_from = n - HELD_EVENTS as u64 + 1;
        check(&t, held_from - 3, 6, held_from - 2..=held_from + 3);
        check(&t, n - 2, 10, n - 1..=n);
        let (p, next) = t.page(n, 10);
        assert!(p.is_empty());
        assert_eq!(next, n);
        // Read whole, a page at a time (what sync and SSE do): nothing missing, nothing twice.
        let (mut all, mut after) = (Vec::new(), 0);
        loop {
            let (p, next) = t.page(after, 1000);
            if p.is_empty() {
                break;
            }
            all.extend(seqs(&p));
            after = next;
        }
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn paging_while_events_pour_in_skips_none() {
        // Emits go on while pages are read from the file without the lock: every event is
        // seen once, in order. (The eviction race `page` guards against, 10,000 emits during
        // one page's read, is not hit here: it was reasoned about, not reproduced.)
        let d = tempfile::tempdir().unwrap();
        let t = std::sync::Arc::new(Timeline::new("s1".into(), Some(d.path().to_path_buf())));
        let n = HELD_EVENTS as u64 * 3;
        let w = t.clone();
        let writer = std::thread::spawn(move || {
            for i in 0..n {
                w.emit(Actor::Agent, "terminal", json!({"i": i}));
            }
        });
        let (mut all, mut after) = (Vec::new(), 0);
        while after < n {
            let (p, next) = t.page(after, 700);
            all.extend(seqs(&p));
            after = next;
        }
        writer.join().unwrap();
        assert_eq!(all, (1..=n).collect::<Vec<_>>());
    }

    #[test]
    fn a_full_disk_loses_no_event_and_says_so() {
        let d = tempfile::tempdir().unwrap();
        let t = Timeline::new("s1".into(), Some(d.path().to_path_buf()));
        let path = d.path().join("s1/events.jsonl");
        for i in 0..10 {
            t.emit(Actor::Agent, "action", json!({"i": i}));
        }
        assert!(t.problem().is_none());
        // The disk fills: every write fails with ENOSPC.
        t.log.lock().unwrap().sink.as_mut().unwrap().file = Some(
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/full")
                .unwrap(),
        );
        for i in 10..15 {
            t.emit(Actor::Agent, "action", json!({"i": i}));
        }
        let why = t.problem().expect("health says so");
        assert!(why.contains("No space left"), "{why}");
        // A line half-written when the disk filled up.
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(br#"{"seq":11,"t_ms":"#)
            .unwrap();
        // Space returns: the next write after the retry interval catches up, in order.
        t.log.lock().unwrap().sink.as_mut().unwrap().last_try = None;
        let last = t.emit(Actor::Agent, "action", json!({"i": 15}));
        assert!(t.problem().is_none());
        let text = std::fs::read_to_string(&path).unwrap();
        let events: Vec<Event> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect();
        assert_eq!(seqs(&events), (1..=last.seq + 1).collect::<Vec<_>>());
        let said: Vec<&Value> = events
            .iter()
            .filter(|e| e.kind == "error")
            .map(|e| &e.data)
            .collect();
        assert_eq!(said.len(), 2, "{said:?}");
        assert_eq!(said[0]["source"], "events");
        assert_eq!(said[1]["state"], "resumed");
        assert_eq!(said[1]["lost"], 0);
    }

    #[test]
    fn the_index_takes_whole_lines_only() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("events.jsonl");
        let line = |seq: u64| {
            format!(
                "{}\n",
                serde_json::to_string(&Event {
                    seq,
                    t_ms: seq * 10,
                    actor: Actor::System,
                    kind: "k".into(),
                    data: json!({}),
                })
                .unwrap()
            )
        };
        let mut text: String = (1..=70).map(line).collect();
        text.push_str("not json\n");
        text.push_str(&line(71));
        text.push_str(r#"{"seq":72,"t_"#);
        std::fs::write(&path, &text).unwrap();
        let mut ix = SeqIndex::default();
        ix.extend(&path).unwrap();
        assert_eq!(ix.last_seq, 71, "a torn last line is not indexed");
        let all = |ix: &SeqIndex, after| seqs(&ix.read(&path, after, 1000, |_| true).unwrap());
        assert_eq!(all(&ix, 0), (1..=71).collect::<Vec<_>>());
        assert_eq!(all(&ix, 69), vec![70, 71]);
        let windowed = ix
            .read(&path, 0, 1000, |e| (100..=120).contains(&e.t_ms))
            .unwrap();
        assert_eq!(seqs(&windowed), vec![10, 11, 12]);
        // The torn line completed later (it never is by this agent; another writer might).
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap();
        f.write_all(b"ms\":720,\"actor\":\"system\",\"kind\":\"k\",\"data\":{}}\n")
            .unwrap();
        ix.extend(&path).unwrap();
        assert_eq!(all(&ix, 70), vec![71, 72]);
    }
}
