//! Recording: the live H.264 packets muxed into fragmented MP4, with no second encode.
//!
//! Layout (contracts.md): `<data-dir>/recordings/<session-id>/video-NNNN.mp4` (a new part when
//! the display size changes), `events.jsonl` beside it (written by the timeline), `meta.json`,
//! and `thumbs/` (small screenshots before and after each action). Fragments are cut at every
//! keyframe and at least once a second and flushed at once, so after `kill -9` the file plays
//! up to within about a second of the kill.

use crate::app::App;
use crate::encode::{nal_units, Codec};
use crate::pipeline::Packet;
use ffmpeg_next as ff;
use porthole_proto::Actor;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Meta {
    pub id: String,
    pub started_at_unix_ms: u64,
    #[serde(default)]
    pub ended_at_unix_ms: Option<u64>,
    #[serde(default)]
    pub duration_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RecordingInfo {
    pub id: String,
    pub started_at: u64,
    pub duration_ms: u64,
    pub bytes: u64,
    /// recording | complete | interrupted
    pub state: String,
    pub parts: usize,
}

pub fn recordings_dir(data_dir: &Path) -> PathBuf {
    data_dir.join("recordings")
}

pub fn part_path(dir: &Path, part: usize) -> PathBuf {
    dir.join(format!("video-{part:04}.mp4"))
}

/// A valid recording id: what `new_session_id` makes, nothing that could climb out of the dir.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

struct Mp4 {
    out: ff::format::context::Output,
    started: Instant,
    width: u32,
    height: u32,
    last_pts: i64,
    /// Packets written so far.
    written: u64,
}

impl Mp4 {
    fn open(
        path: &Path,
        width: u32,
        height: u32,
        keyframe: &[u8],
        started: Instant,
    ) -> Result<Self, String> {
        let mut out =
            ff::format::output_as(path, "mp4").map_err(|e| format!("{}: {e}", path.display()))?;
        {
            let codec = ff::encoder::find(ff::codec::Id::H264);
            let mut st = out.add_stream(codec).map_err(|e| e.to_string())?;
            st.set_time_base(ff::Rational(1, 90_000));
            // Parameter sets from the first keyframe, Annex-B: the muxer turns them into avcC.
            let mut extra = Vec::new();
            for n in nal_units(keyframe) {
                if matches!(n[0] & 0x1f, 7 | 8) {
                    extra.extend_from_slice(&[0, 0, 0, 1]);
                    extra.extend_from_slice(n);
                }
            }
            // SAFETY: codecpar belongs to the stream we just added; extradata is allocated with
            // av_malloc plus the padding FFmpeg requires and handed over to it.
            unsafe {
                let par = (*st.as_mut_ptr()).codecpar;
                (*par).codec_type = ff::ffi::AVMediaType::AVMEDIA_TYPE_VIDEO;
                (*par).codec_id = ff::ffi::AVCodecID::AV_CODEC_ID_H264;
                (*par).width = width as i32;
                (*par).height = height as i32;
                let pad = ff::ffi::AV_INPUT_BUFFER_PADDING_SIZE as usize;
                let p = ff::ffi::av_mallocz(extra.len() + pad) as *mut u8;
                std::ptr::copy_nonoverlapping(extra.as_ptr(), p, extra.len());
                (*par).extradata = p;
                (*par).extradata_size = extra.len() as i32;
            }
        }
        let mut opts = ff::Dictionary::new();
        opts.set("movflags", "frag_keyframe+empty_moov+default_base_moof");
        opts.set("frag_duration", "1000000");
        opts.set("flush_packets", "1");
        out.write_header_with(opts)
            .map_err(|e| format!("mp4 header: {e}"))?;
        Ok(Self {
            out,
            started,
            width,
            height,
            last_pts: -1,
            written: 0,
        })
    }

    fn write(&mut self, p: &Packet) -> Result<(), String> {
        let tb = self
            .out
            .stream(0)
            .map(|s| s.time_base())
            .unwrap_or(ff::Rational(1, 90_000));
        let us = p
            .captured_at
            .saturating_duration_since(self.started)
            .as_micros() as i64;
        let pts = (us * tb.1 as i64 / 1_000_000 / tb.0.max(1) as i64).max(self.last_pts + 1);
        self.last_pts = pts;
        let mut pkt = ff::Packet::copy(&p.frame.data);
        pkt.set_stream(0);
        pkt.set_pts(Some(pts));
        pkt.set_dts(Some(pts));
        if p.frame.keyframe {
            pkt.set_flags(ff::packet::Flags::KEY);
        }
        pkt.write(&mut self.out)
            .map(|_| ())
            .map_err(|e| format!("mp4 write: {e}"))
    }

    fn finish(mut self) {
        let _ = self.out.write_trailer();
    }
}

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn write_meta(dir: &Path, m: &Meta) -> std::io::Result<()> {
    let tmp = dir.join("meta.json.tmp");
    std::fs::write(&tmp, serde_json::to_vec_pretty(m).unwrap_or_default())?;
    std::fs::rename(tmp, dir.join("meta.json"))
}

/// How often retention runs besides at each session's start.
const PRUNE_EVERY: std::time::Duration = std::time::Duration::from_secs(600);

/// How soon a recorder that could not write tries again.
const RETRY: std::time::Duration = std::time::Duration::from_secs(2);

/// Records sessions while enabled: runs on its own thread, following session restarts.
pub fn spawn(app: Arc<App>) -> Result<(), String> {
    let pipeline = app.hub.pipeline(Codec::H264).map_err(|e| e.to_string())?;
    let mut rx = pipeline.subscribe();
    let guard = pipeline.demand();
    std::thread::Builder::new()
        .name("recorder".into())
        .spawn(move || {
            let _keep_capturing = guard;
            let mut session = String::new();
            let mut dir = PathBuf::new();
            let mut mp4: Option<Mp4> = None;
            let mut part = 0usize;
            let mut meta: Option<Meta> = None;
            // When writing failed (disk full, directory gone): the stream goes on, and the
            // recorder tries again with a new part every RETRY until writing works.
            let mut failed: Option<Instant> = None;
            let mut last_prune: Option<Instant> = None;
            loop {
                let pkt = match rx.blocking_recv() {
                    Ok(p) => p,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(dropped = n, "recorder fell behind");
                        pipeline.request_keyframe();
                        continue;
                    }
                    Err(_) => break,
                };
                let sid = app.timeline.session_id();
                if sid != session {
                    if let Some(m) = mp4.take() {
                        m.finish();
                    }
                    if let Some(mut m) = meta.take() {
                        m.ended_at_unix_ms = Some(unix_ms());
                        m.duration_ms = Some(m.ended_at_unix_ms.unwrap_or(0).saturating_sub(m.started_at_unix_ms));
                        let _ = write_meta(&dir, &m);
                    }
                    session = sid.clone();
                    dir = recordings_dir(&app.cfg.data_dir).join(&sid);
                    part = 0;
                    failed = None;
                    meta = None;
                    last_prune = None;
                }
                if failed.is_some_and(|t| t.elapsed() < RETRY) {
                    continue;
                }
                if last_prune.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
                    last_prune = Some(Instant::now());
                    prune(&app);
                }
                if meta.is_none() {
                    let m = Meta { id: sid.clone(), started_at_unix_ms: app.timeline.started_at_unix_ms(), ended_at_unix_ms: None, duration_ms: None };
                    match std::fs::create_dir_all(dir.join("thumbs")).and_then(|_| write_meta(&dir, &m)) {
                        Ok(()) => {
                            meta = Some(m);
                            app.timeline.emit(Actor::System, "recording", json!({"id": sid, "state": "started"}));
                            pipeline.request_keyframe();
                        }
                        Err(e) => {
                            report(&app, format!("cannot write recording {}: {e}", dir.display()));
                            failed = Some(Instant::now());
                            continue;
                        }
                    }
                }
                let f = &pkt.frame;
                if mp4.as_ref().is_some_and(|m| (m.width, m.height) != (f.width, f.height)) {
                    mp4.take().expect("checked").finish();
                }
                if mp4.is_none() {
                    if !f.keyframe {
                        pipeline.request_keyframe();
                        continue;
                    }
                    part += 1;
                    let path = part_path(&dir, part);
                    match Mp4::open(&path, f.width, f.height, &f.data, app.timeline.started()) {
                        Ok(m) => mp4 = Some(m),
                        Err(e) => {
                            // The part that could not start is not left behind half-made.
                            let _ = std::fs::remove_file(&path);
                            part -= 1;
                            report(&app, e);
                            failed = Some(Instant::now());
                            continue;
                        }
                    }
                }
                let m = mp4.as_mut().expect("opened");
                if let Err(e) = m.write(&pkt) {
                    // Disk full or gone: say so, keep streaming, retry with a new part later.
                    // What the part holds up to here stays playable (fragments are whole); a
                    // part that never held a frame is not left behind.
                    if m.written == 0 {
                        let _ = std::fs::remove_file(part_path(&dir, part));
                        part -= 1;
                    }
                    report(&app, e);
                    mp4 = None;
                    failed = Some(Instant::now());
                    continue;
                }
                m.written += 1;
                if m.written == 1 {
                    // Said once the part holds its first frame. The muxer starts every part's
                    // clock at 0: start_t_ms puts that frame back on the session clock.
                    let start = app.timeline.t_ms_of(pkt.captured_at);
                    app.timeline.emit(Actor::System, "recording", json!({"id": session, "state": "part", "part": part, "width": f.width, "height": f.height, "start_t_ms": start}));
                }
                if failed.take().is_some() || app.recording_problem.lock().unwrap().is_some() {
                    let was = app.recording_problem.lock().unwrap().take();
                    if let Some(was) = was {
                        app.timeline.emit(Actor::System, "recording", json!({"id": session, "state": "resumed", "part": part, "after": was}));
                    }
                }
            }
            if let Some(m) = mp4.take() {
                m.finish();
            }
        })
        .map_err(|e| e.to_string())?;
    Ok(())
}

fn report(app: &App, msg: String) {
    tracing::warn!("recording: {msg}");
    let mut p = app.recording_problem.lock().unwrap();
    if p.as_deref() != Some(msg.as_str()) {
        *p = Some(msg.clone());
        drop(p);
        app.timeline.emit(
            Actor::System,
            "error",
            json!({"source": "recording", "message": msg}),
        );
    }
}

/// Marks the end of the current recording (clean shutdown).
pub fn finish_current(app: &App) {
    let dir = recordings_dir(&app.cfg.data_dir).join(app.timeline.session_id());
    if let Ok(text) = std::fs::read_to_string(dir.join("meta.json")) {
        if let Ok(mut m) = serde_json::from_str::<Meta>(&text) {
            m.ended_at_unix_ms = Some(unix_ms());
            m.duration_ms = Some(app.timeline.now_ms());
            let _ = write_meta(&dir, &m);
        }
    }
}

pub fn list(app: &App) -> Vec<RecordingInfo> {
    let root = recordings_dir(&app.cfg.data_dir);
    let current = app.timeline.session_id();
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir(&root) else {
        return out;
    };
    for e in rd.flatten() {
        let dir = e.path();
        let Some(meta) = std::fs::read_to_string(dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Meta>(&t).ok())
        else {
            continue;
        };
        let mut bytes = 0;
        let mut parts = 0;
        for f in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().to_string();
            if let Ok(md) = f.metadata() {
                if md.is_file() {
                    bytes += md.len();
                }
            }
            if name.starts_with("video-") && name.ends_with(".mp4") {
                parts += 1;
            }
        }
        let (state, duration_ms) = if meta.id == current && app.cfg.record {
            ("recording", app.timeline.now_ms())
        } else if let Some(d) = meta.duration_ms {
            ("complete", d)
        } else {
            // Never closed: the agent died. Its length is the last event's time.
            let last = std::fs::read_to_string(dir.join("events.jsonl"))
                .ok()
                .and_then(|t| {
                    t.lines()
                        .last()
                        .and_then(|l| serde_json::from_str::<porthole_proto::Event>(l).ok())
                })
                .map(|e| e.t_ms)
                .unwrap_or(0);
            ("interrupted", last)
        };
        out.push(RecordingInfo {
            id: meta.id,
            started_at: meta.started_at_unix_ms,
            duration_ms,
            bytes,
            state: state.into(),
            parts,
        });
    }
    out.sort_by_key(|r| r.started_at);
    out
}

/// How much finished recording a machine keeps (`--retain-days`, `--retain-mb`): a machine
/// that runs for months must not fill its disk with evidence nobody synced.
pub use porthole_proto::retention::{Kept, Retention};

fn dir_bytes(dir: &Path) -> u64 {
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

/// Applies the retention to this machine's recordings; each deletion is a `recording` event
/// (`state: "deleted"`), so the timeline says where evidence went.
pub fn prune(app: &App) {
    let r = app.cfg.retention;
    if r.max_age.is_none() && r.max_bytes.is_none() {
        return;
    }
    let root = recordings_dir(&app.cfg.data_dir);
    let live = app.timeline.session_id();
    let mut finished = Vec::new();
    let mut live_bytes = 0;
    for e in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        let id = e.file_name().to_string_lossy().to_string();
        if !valid_id(&id) || !e.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = e.path();
        let bytes = dir_bytes(&dir);
        if id == live {
            live_bytes = bytes;
            continue;
        }
        // Without a readable meta.json, the directory's own age stands in.
        let started = std::fs::read_to_string(dir.join("meta.json"))
            .ok()
            .and_then(|t| serde_json::from_str::<Meta>(&t).ok())
            .map(|m| m.started_at_unix_ms)
            .or_else(|| {
                let t = e.metadata().ok()?.modified().ok()?;
                Some(t.duration_since(std::time::UNIX_EPOCH).ok()?.as_millis() as u64)
            })
            .unwrap_or(0);
        finished.push(Kept {
            id,
            started_at_unix_ms: started,
            bytes,
        });
    }
    for id in r.choose(&finished, live_bytes, unix_ms()) {
        let bytes = finished.iter().find(|k| k.id == id).map_or(0, |k| k.bytes);
        match std::fs::remove_dir_all(root.join(&id)) {
            Ok(()) => {
                app.event_indexes.lock().unwrap().remove(&id);
                app.timeline.emit(
                    Actor::System,
                    "recording",
                    json!({"id": id, "state": "deleted", "bytes": bytes, "reason": "retention (--retain-days, --retain-mb)"}),
                );
            }
            Err(e) => tracing::warn!("retention: cannot delete recording {id}: {e}"),
        }
    }
}

/// Parses a single `Range: bytes=...` against a length; `None` when unsatisfiable.
pub fn parse_range(h: &str, len: u64) -> Option<(u64, u64)> {
    let spec = h.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && start < len).then_some((start, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Some((0, 99)));
        assert_eq!(parse_range("bytes=900-", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=-100", 1000), Some((900, 999)));
        assert_eq!(parse_range("bytes=0-5000", 1000), Some((0, 999)));
        assert_eq!(parse_range("bytes=1000-", 1000), None);
        assert_eq!(parse_range("bytes=5-1", 1000), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), None);
        assert_eq!(parse_range("items=0-1", 1000), None);
    }

    #[test]
    fn ids_cannot_escape() {
        assert!(valid_id("s19f2a3b4c5d6e7f"));
        assert!(!valid_id("../etc"));
        assert!(!valid_id(""));
    }
}
