//! The capture → convert → encode loop and the frame policy that drives it.
//!
//! One [`Pipeline`] per codec: every viewer (and the recorder) of that codec shares its one
//! capture and one encode. It runs only while something holds a [`DemandGuard`]; with no
//! demand the thread drops its X connection and sleeps, so an unwatched machine costs nothing.
//!
//! [`FramePolicy`] is a pure state machine that is told the time: it decides when to grab a
//! frame (on damage, capped at the frame rate) and when a keyframe is due (every 2 s on a still
//! screen, at once on PLI or a new viewer).

use crate::capture::{CaptureError, FrameSource, Waker};
use crate::encode::{Codec, EncodedFrame, Encoder};
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::broadcast;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Capture {
        keyframe: bool,
    },
    /// Sleep until this instant unless something changes first (`None`: until woken).
    Wait(Option<Instant>),
}

/// Frame pacing is a token bucket (rate = the fps cap, depth 2) rather than a fixed minimum
/// interval: a pointer move produces a frame at once, and the application's repaint a few ms
/// later goes out at once too instead of waiting a whole frame interval (measured: that wait
/// was most of the input-to-photon time). The average rate never exceeds the cap.
#[derive(Debug, Clone)]
pub struct FramePolicy {
    rate: f64,
    burst: f64,
    tokens: f64,
    refilled_at: Option<Instant>,
    keyframe_interval: Duration,
    last_keyframe: Option<Instant>,
    dirty: bool,
    keyframe_requested: bool,
}

impl FramePolicy {
    pub fn new(max_fps: u32, keyframe_interval: Duration) -> Self {
        Self {
            rate: max_fps.max(1) as f64,
            burst: 2.0,
            tokens: 2.0,
            refilled_at: None,
            keyframe_interval,
            last_keyframe: None,
            dirty: true,
            keyframe_requested: true,
        }
    }

    pub fn mark_dirty(&mut self) {
        self.dirty = true;
    }

    pub fn request_keyframe(&mut self) {
        self.keyframe_requested = true;
    }

    fn tokens_at(&self, now: Instant) -> f64 {
        match self.refilled_at {
            Some(t) => (self.tokens + now.saturating_duration_since(t).as_secs_f64() * self.rate)
                .min(self.burst),
            None => self.burst,
        }
    }

    pub fn decide(&self, now: Instant) -> Decision {
        let kf_at = self.last_keyframe.map(|k| k + self.keyframe_interval);
        let kf_due = self.keyframe_requested || kf_at.is_none_or(|t| now >= t);
        if !self.dirty && !kf_due {
            return Decision::Wait(kf_at);
        }
        let tokens = self.tokens_at(now);
        if tokens >= 1.0 - 1e-9 {
            return Decision::Capture { keyframe: kf_due };
        }
        let wait = Duration::from_secs_f64((1.0 - tokens) / self.rate);
        Decision::Wait(Some(now + wait))
    }

    pub fn captured(&mut self, now: Instant, keyframe: bool) {
        self.tokens = (self.tokens_at(now) - 1.0).max(0.0);
        self.refilled_at = Some(now);
        self.dirty = false;
        if keyframe {
            self.last_keyframe = Some(now);
            self.keyframe_requested = false;
        }
    }
}

/// One encoded frame as it leaves the pipeline.
#[derive(Debug, Clone)]
pub struct Packet {
    pub frame: EncodedFrame,
    /// When the picture was grabbed.
    pub captured_at: Instant,
    /// Real time since the previous frame (frames come on damage, not on a tick).
    pub since_previous: Duration,
    /// CPU time of capture + convert + encode, this thread (x264 runs single-threaded).
    pub cpu: Duration,
}

#[derive(Debug, Clone, Copy)]
struct FrameRecord {
    at: Instant,
    cpu_us: u64,
    bytes: usize,
    keyframe: bool,
}

/// Figures over the last second, for the `stats` message and the benchmark.
#[derive(Debug, Clone, Default)]
pub struct PipelineStats {
    pub fps: f64,
    pub bitrate_kbps: f64,
    pub cpu_ms_p50: f64,
    pub frames: u64,
    pub keyframes: u64,
    pub width: u32,
    pub height: u32,
}

pub type SourceFactory = Box<dyn Fn() -> Result<Box<dyn FrameSource>, CaptureError> + Send + Sync>;

struct Shared {
    codec: Codec,
    max_fps: u32,
    demand: AtomicUsize,
    keyframe: AtomicBool,
    dirty: AtomicBool,
    stop: AtomicBool,
    waker: Waker,
    tx: broadcast::Sender<Arc<Packet>>,
    recent: Mutex<VecDeque<FrameRecord>>,
    totals: Mutex<(u64, u64, u32, u32)>,
    /// Last capture/encode failure, cleared by the next good frame (reported on /v1/health).
    problem: Mutex<Option<String>>,
}

#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

/// Keeps a pipeline running while alive.
pub struct DemandGuard {
    shared: Arc<Shared>,
}

impl Drop for DemandGuard {
    fn drop(&mut self) {
        self.shared.demand.fetch_sub(1, Ordering::SeqCst);
        self.shared.waker.wake();
    }
}

impl Pipeline {
    pub fn spawn(codec: Codec, max_fps: u32, source: SourceFactory) -> std::io::Result<Self> {
        let (tx, _) = broadcast::channel(8);
        let shared = Arc::new(Shared {
            codec,
            max_fps,
            demand: AtomicUsize::new(0),
            keyframe: AtomicBool::new(true),
            dirty: AtomicBool::new(true),
            stop: AtomicBool::new(false),
            waker: Waker::new()?,
            tx,
            recent: Mutex::new(VecDeque::new()),
            totals: Mutex::new((0, 0, 0, 0)),
            problem: Mutex::new(None),
        });
        let s = shared.clone();
        std::thread::Builder::new()
            .name(format!("pipeline-{}", codec.name()))
            .spawn(move || run(s, source))?;
        Ok(Self { shared })
    }

    pub fn codec(&self) -> Codec {
        self.shared.codec
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Packet>> {
        self.shared.tx.subscribe()
    }

    pub fn demand(&self) -> DemandGuard {
        self.shared.demand.fetch_add(1, Ordering::SeqCst);
        self.request_keyframe();
        DemandGuard {
            shared: self.shared.clone(),
        }
    }

    pub fn active(&self) -> bool {
        self.shared.demand.load(Ordering::SeqCst) > 0
    }

    pub fn request_keyframe(&self) {
        self.shared.keyframe.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
    }

    /// Something (our own input injection) changed the screen: grab without waiting for X.
    pub fn nudge(&self) {
        self.shared.dirty.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
    }

    pub fn problem(&self) -> Option<String> {
        self.shared.problem.lock().unwrap().clone()
    }

    pub fn stats(&self) -> PipelineStats {
        let now = Instant::now();
        let recent = self.shared.recent.lock().unwrap();
        let window: Vec<&FrameRecord> = recent
            .iter()
            .filter(|r| now.duration_since(r.at) <= Duration::from_secs(1))
            .collect();
        let mut cpu: Vec<u64> = window.iter().map(|r| r.cpu_us).collect();
        cpu.sort_unstable();
        let (frames, keyframes, width, height) = *self.shared.totals.lock().unwrap();
        PipelineStats {
            fps: window.len() as f64,
            bitrate_kbps: window.iter().map(|r| r.bytes).sum::<usize>() as f64 * 8.0 / 1000.0,
            cpu_ms_p50: cpu
                .get(cpu.len() / 2)
                .map(|&c| c as f64 / 1000.0)
                .unwrap_or(0.0),
            frames,
            keyframes: keyframes.max(window.iter().filter(|r| r.keyframe).count() as u64),
            width,
            height,
        }
    }

    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        self.shared.waker.wake();
    }
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_THREAD_CPUTIME_ID always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn run(s: Arc<Shared>, open: SourceFactory) {
    let epoch = Instant::now();
    let mut source: Option<Box<dyn FrameSource>> = None;
    let mut encoder: Option<Encoder> = None;
    let mut policy = FramePolicy::new(s.max_fps, Duration::from_secs(2));
    let mut last_capture: Option<Instant> = None;
    while !s.stop.load(Ordering::SeqCst) {
        if s.demand.load(Ordering::SeqCst) == 0 {
            // Nobody watches: let go of X entirely and sleep until demand returns.
            source = None;
            encoder = None;
            crate::capture::poll_readable(&[s.waker.raw_fd()], None);
            s.waker.drain();
            continue;
        }
        let src = match &mut source {
            Some(src) => src,
            None => match open() {
                Ok(src) => {
                    policy = FramePolicy::new(s.max_fps, Duration::from_secs(2));
                    *s.problem.lock().unwrap() = None;
                    source.insert(src)
                }
                Err(e) => {
                    report(&s, format!("capture unavailable: {e}"));
                    // Retry once a second (or sooner when demand changes).
                    crate::capture::poll_readable(
                        &[s.waker.raw_fd()],
                        Some(Instant::now() + Duration::from_secs(1)),
                    );
                    s.waker.drain();
                    continue;
                }
            },
        };
        if s.keyframe.swap(false, Ordering::SeqCst) {
            policy.request_keyframe();
        }
        if s.dirty.swap(false, Ordering::SeqCst) {
            policy.mark_dirty();
        }
        let now = Instant::now();
        let keyframe = match policy.decide(now) {
            Decision::Wait(until) => {
                match src.wait(until, &s.waker) {
                    Ok(w) => {
                        if w.changed {
                            policy.mark_dirty();
                        }
                        if w.resized {
                            encoder = None;
                            policy.request_keyframe();
                        }
                    }
                    Err(e) => {
                        report(&s, format!("capture failed: {e}"));
                        source = None;
                    }
                }
                continue;
            }
            Decision::Capture { keyframe } => keyframe,
        };
        let cpu0 = thread_cpu();
        let captured_at = Instant::now();
        let frame = match src.capture() {
            Ok(f) => f,
            Err(e) => {
                report(&s, format!("capture failed: {e}"));
                source = None;
                continue;
            }
        };
        let (w, h) = (frame.width & !1, frame.height & !1);
        if encoder.as_ref().is_none_or(|e| e.size() != (w, h)) {
            match Encoder::new(s.codec, frame.width, frame.height, s.max_fps) {
                Ok(e) => encoder = Some(e),
                Err(e) => {
                    report(&s, format!("encoder: {e}"));
                    std::thread::sleep(Duration::from_secs(1));
                    continue;
                }
            }
        }
        let enc = encoder.as_mut().expect("created above");
        let keyframe = keyframe || enc.size() != (w, h);
        let t_us = captured_at.duration_since(epoch).as_micros() as u64;
        let out = enc.encode(&frame, t_us, keyframe);
        policy.captured(captured_at, keyframe);
        let cpu = thread_cpu().saturating_sub(cpu0);
        let since_previous = last_capture
            .map(|l| captured_at - l)
            .unwrap_or(Duration::from_millis(33));
        last_capture = Some(captured_at);
        match out {
            Ok(frames) => {
                for f in frames {
                    let rec = FrameRecord {
                        at: captured_at,
                        cpu_us: cpu.as_micros() as u64,
                        bytes: f.data.len(),
                        keyframe: f.keyframe,
                    };
                    {
                        let mut r = s.recent.lock().unwrap();
                        r.push_back(rec);
                        while r.len() > 120 {
                            r.pop_front();
                        }
                        let mut t = s.totals.lock().unwrap();
                        t.0 += 1;
                        t.1 += f.keyframe as u64;
                        t.2 = f.width;
                        t.3 = f.height;
                    }
                    let _ = s.tx.send(Arc::new(Packet {
                        frame: f,
                        captured_at,
                        since_previous,
                        cpu,
                    }));
                }
                if s.problem.lock().unwrap().is_some() {
                    *s.problem.lock().unwrap() = None;
                }
            }
            Err(e) => report(&s, format!("encode failed: {e}")),
        }
    }
}

fn report(s: &Shared, msg: String) {
    let mut p = s.problem.lock().unwrap();
    if p.as_deref() != Some(msg.as_str()) {
        tracing::warn!(codec = s.codec.name(), "{msg}");
        *p = Some(msg);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::synthetic::SyntheticSource;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Drives a policy through (time offset, event) steps and checks each decision.
    fn check(steps: &[(u64, &str, Decision)], t0: Instant) {
        let mut p = FramePolicy::new(25, ms(2000));
        for (i, (at, ev, want)) in steps.iter().enumerate() {
            let now = t0 + ms(*at);
            match *ev {
                "dirty" => p.mark_dirty(),
                "pli" => p.request_keyframe(),
                _ => {}
            }
            let got = p.decide(now);
            // Waits are computed in floating point: equal within a millisecond is equal.
            let same = match (got, *want) {
                (Decision::Wait(Some(a)), Decision::Wait(Some(b))) => a.max(b) - a.min(b) < ms(1),
                (g, w) => g == w,
            };
            assert!(
                same,
                "step {i} at {at} ms after {ev}: got {got:?}, want {want:?}"
            );
            if let Decision::Capture { keyframe } = got {
                p.captured(now, keyframe);
            }
        }
    }

    #[test]
    fn frame_policy() {
        let t0 = Instant::now();
        let at = |n| Decision::Wait(Some(t0 + ms(n)));
        let cap = |k| Decision::Capture { keyframe: k };
        check(
            &[
                (0, "", cap(true)),        // first frame is a keyframe
                (1, "", at(2000)),         // still screen: sleep until the keyframe is due
                (10, "dirty", cap(false)), // a burst of two: the repaint after a move goes at once
                (12, "dirty", at(40)),     // bucket spent: the 25 fps rate holds the third back
                (40, "", cap(false)),
                (50, "dirty", at(80)),
                (80, "", cap(false)),
                (100, "pli", at(120)), // PLI: keyframe as soon as the rate allows
                (120, "", cap(true)),
                (121, "", at(2120)),
                (2120, "", cap(true)), // still screen: one keyframe every 2 s
                (2121, "", at(4120)),
            ],
            t0,
        );
    }

    #[test]
    fn pipeline_runs_only_with_demand_and_shares_one_encode() {
        let p = Pipeline::spawn(
            Codec::H264,
            30,
            Box::new(|| {
                Ok(Box::new(SyntheticSource::new(320, 240, Some(ms(10)))) as Box<dyn FrameSource>)
            }),
        )
        .unwrap();
        std::thread::sleep(ms(200));
        assert_eq!(p.stats().frames, 0, "no demand, no frames");
        let mut a = p.subscribe();
        let mut b = p.subscribe();
        let guard = p.demand();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let first = a.recv().await.unwrap();
            assert!(first.frame.keyframe, "a new viewer starts on a keyframe");
            let same = b.recv().await.unwrap();
            assert!(
                Arc::ptr_eq(&first, &same),
                "both subscribers get the same encoded packet"
            );
            for _ in 0..5 {
                let p = a.recv().await.unwrap();
                assert!(p.since_previous > Duration::ZERO);
            }
        });
        drop(guard);
        std::thread::sleep(ms(150));
        let n = p.stats().frames;
        std::thread::sleep(ms(300));
        assert_eq!(p.stats().frames, n, "demand gone: encoding stopped");
        p.shutdown();
    }
}
