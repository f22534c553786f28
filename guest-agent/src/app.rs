//! The running agent: configuration, the session timeline, control, input and the stream hub,
//! and the glue between a viewer's data channel and them.

use crate::control::{Control, Human};
use crate::events::Timeline;
use crate::input::{Input, InputAction, MouseButton};
use crate::keys;
use crate::stream::{StreamHub, Viewer};
use porthole_proto::{Actor, AgentMessage, ControlAction, StreamStats, ViewerMessage};
use serde_json::json;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;

#[derive(Debug, Clone)]
pub struct Config {
    pub display: String,
    /// Where the HTTP API listens (advertised to the machine's own processes).
    pub listen: std::net::SocketAddr,
    /// The operator's token (the app, the CLI): reaches every endpoint.
    pub token: String,
    /// The coding agent's token, when the machine has two principals: it reaches only what
    /// [`crate::http::agent_may`] allows. `None`: one token, the operator's (documented).
    pub agent_token: Option<String>,
    pub data_dir: PathBuf,
    /// The computer-use coordinate space, mapped to the real screen by the agent.
    pub display_size: (u32, u32),
    pub workspace: Option<PathBuf>,
    pub record: bool,
    pub max_fps: u32,
    /// Finished recordings kept on this machine: see [`crate::recorder::Retention`].
    pub retention: crate::recorder::Retention,
    pub limits: Limits,
}

/// What one caller may hold at once (`--max-exec`, `--max-sse`; the stream's are
/// [`crate::stream::HubLimits`]): each past its limit is a clear 429/503 naming the flag.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_exec: usize,
    pub max_sse: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_exec: 32,
            max_sse: 256,
        }
    }
}

/// One of a counted resource, given back when dropped.
pub struct Slot(Arc<std::sync::atomic::AtomicUsize>);

impl Slot {
    pub fn take(count: &Arc<std::sync::atomic::AtomicUsize>, max: usize) -> Option<Slot> {
        use std::sync::atomic::Ordering::SeqCst;
        if count.fetch_add(1, SeqCst) >= max {
            count.fetch_sub(1, SeqCst);
            return None;
        }
        Some(Slot(count.clone()))
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

pub struct App {
    pub cfg: Config,
    /// Where everything the coding agent runs is started (see [`crate::workload`]).
    pub workload: crate::workload::Workload,
    pub timeline: Timeline,
    pub control: Mutex<Control>,
    pub input: Input,
    pub hub: StreamHub,
    pub screenshots: crate::computer::Screenshotter,
    /// A second X connection for action thumbnails: the "after" one waits for the screen to
    /// settle, and must not hold up the next action's screen queries meanwhile.
    pub thumbs: crate::computer::Screenshotter,
    /// And one for the "before" grabs, so they never queue behind an "after" that is settling.
    pub thumbs_before: crate::computer::Screenshotter,
    /// Secret values by name: exported to commands, redacted from everything that leaves.
    pub secrets: Mutex<std::collections::HashMap<String, String>>,
    pub started: Instant,
    pub env: Mutex<crate::environment::EnvStatus>,
    /// Process groups of background environment commands (start), killed on re-apply.
    pub env_procs: Mutex<Vec<i32>>,
    /// Commands running (`exec`, HTTP and MCP) and event streams open, against `cfg.limits`.
    pub exec_running: Arc<std::sync::atomic::AtomicUsize>,
    pub sse_open: Arc<std::sync::atomic::AtomicUsize>,
    /// The `events.jsonl` index of each recording lately read (`/v1/recordings/{id}/events`).
    pub event_indexes: Mutex<std::collections::HashMap<String, crate::events::SeqIndex>>,
    /// Why recording is failing (disk full, unwritable), shown on /v1/health.
    pub recording_problem: Mutex<Option<String>>,
    /// Whether the recorder thread runs (not before the first session with `--idle`).
    pub recorder_on: std::sync::atomic::AtomicBool,
    /// The guest's clipboard, started with the first viewer (idle agents keep no X client for it).
    pub clipboard: std::sync::OnceLock<crate::clipboard::Clipboard>,
    /// The screen size before a human's viewer resized it, put back when control returns.
    pub display_restore: Mutex<Option<(u32, u32)>>,
    /// The provider's account of making the environment's image (`--image-build`), shown as
    /// the `build` step.
    pub image_build: Option<serde_json::Value>,
}

impl App {
    pub fn clipboard(&self) -> &crate::clipboard::Clipboard {
        self.clipboard
            .get_or_init(|| crate::clipboard::Clipboard::spawn(self.cfg.display.clone()))
    }

    /// Adds secrets: exported to commands from now on and redacted from everything shown.
    pub fn add_secrets(&self, secrets: std::collections::HashMap<String, String>) {
        let mut all = self.secrets.lock().unwrap();
        all.extend(secrets);
        self.timeline
            .redactor
            .set(all.iter().map(|(k, v)| (k.clone(), v.clone())).chain([(
                "PORTHOLE_OPERATOR_TOKEN".to_string(),
                self.cfg.token.clone(),
            )]));
    }

    /// Changes the screen size (blocking X calls on a worker thread) and puts it on the timeline.
    pub async fn set_display(
        self: &Arc<Self>,
        w: u32,
        h: u32,
        actor: Actor,
        by: serde_json::Value,
    ) -> Result<((u32, u32), porthole_proto::DisplayState), crate::display::DisplayError> {
        let display = self.cfg.display.clone();
        let (before, after) =
            tokio::task::spawn_blocking(move || crate::display::resize(&display, w, h))
                .await
                .expect("resize task panicked")?;
        let now = (after.width, after.height);
        if before != now {
            self.timeline.emit(
                actor,
                "display",
                json!({"width": now.0, "height": now.1, "from": {"width": before.0, "height": before.1}, "by": by}),
            );
        }
        Ok((before, after))
    }

    /// A human's viewer resized the screen and no human holds control any more: put it back, so
    /// the agent resumes on the screen it knew.
    fn restore_display_if_released(self: &Arc<Self>) {
        if self.control.lock().unwrap().human().is_some() {
            return;
        }
        let Some((w, h)) = self.display_restore.lock().unwrap().take() else {
            return;
        };
        let app = self.clone();
        tokio::spawn(async move {
            if let Err(e) = app.set_display(w, h, Actor::System, json!("restore")).await {
                app.timeline.emit(
                    Actor::System,
                    "error",
                    json!({"message": format!("restore the display size: {e}")}),
                );
            }
        });
    }

    /// Applies a control action and records it; returns the new state.
    pub fn apply_control(
        self: &Arc<Self>,
        action: ControlAction,
        who: Human,
        actor: Actor,
    ) -> porthole_proto::ControlState {
        let t = self.timeline.now_ms();
        let mut c = self.control.lock().unwrap();
        if c.apply(action, who.clone(), t) {
            // Under the control lock, so generations reach the injection thread in order.
            self.input.revoke(c.generation());
            let st = c.state();
            drop(c);
            let by = match who {
                Human::Api => json!("api"),
                Human::Viewer(v) => json!(v),
            };
            self.timeline.emit(
                actor,
                "control",
                json!({"action": action, "by": by, "state": st}),
            );
            self.restore_display_if_released();
            return st;
        }
        c.state()
    }

    /// Forgets a viewer: stream, and control it may have held.
    pub async fn drop_viewer(self: &Arc<Self>, id: &str) -> bool {
        let existed = self.hub.remove_viewer(id).await.is_ok();
        let t = self.timeline.now_ms();
        let released = {
            let mut c = self.control.lock().unwrap();
            let released = c.viewer_gone(id, t);
            if released {
                self.input.revoke(c.generation());
            }
            released
        };
        if released {
            let st = self.control.lock().unwrap().state();
            self.timeline.emit(
                Actor::System,
                "control",
                json!({"action": "release", "by": id, "reason": "viewer left", "state": st}),
            );
            self.restore_display_if_released();
        }
        if existed {
            self.timeline.emit(
                Actor::System,
                "stream",
                json!({"viewer": id, "state": "closed", "viewers": self.hub.viewer_count()}),
            );
        }
        existed
    }
}

/// Notches one viewer `wheel` message may scroll (a physical wheel sends one or a few).
pub const MAX_WHEEL_NOTCHES: i32 = 20;

/// Per-viewer input state: pressed buttons, wheel remainder, and coalescing of noisy events.
#[derive(Default)]
struct InputState {
    buttons: u32,
    wheel: (f64, f64),
    last_move_event: Option<Instant>,
    last_refusal: Option<Instant>,
    /// Modifiers this viewer holds down, from its own key messages (they carry no flags).
    mods: Vec<&'static str>,
}

/// The `input` event recorded for a viewer's key, or `None` when there is nothing to record.
/// Special keys by name, modifiers by name, printing keys only as a count: never a character
/// (only a human at the controls sends keys, and the agent reads the timeline).
pub(crate) fn key_input_event(
    code: &str,
    key: &str,
    down: bool,
    mods: &mut Vec<&'static str>,
) -> Option<serde_json::Value> {
    let own = keys::dom_modifier(code);
    if let Some(m) = own {
        mods.retain(|x| *x != m);
        if down {
            mods.push(m);
        }
    }
    let others: Vec<&str> = mods.iter().copied().filter(|m| Some(*m) != own).collect();
    match keys::dom_special_name(code, key) {
        Some(name) => {
            Some(json!({"device": "key", "key": name, "down": down, "modifiers": others}))
        }
        // The key going up says nothing the key going down did not.
        None if down => {
            Some(json!({"device": "key", "count": 1, "down": true, "modifiers": others}))
        }
        None => None,
    }
}

/// The `input` event recorded for a viewer's text (a paste, an input method): its length only.
pub(crate) fn text_input_event(text: &str) -> serde_json::Value {
    json!({"device": "text", "count": text.chars().count()})
}

/// Wires a new viewer's peer connection: state changes, the `porthole` data channel.
pub fn attach_viewer(app: Arc<App>, viewer: Arc<Viewer>) {
    let id = viewer.id.clone();
    let a = app.clone();
    viewer.pc.on_peer_connection_state_change(Box::new(move |s| {
        let (a, id) = (a.clone(), id.clone());
        Box::pin(async move {
            tracing::debug!(viewer = %id, state = %s, "peer connection");
            match s {
                RTCPeerConnectionState::Connected => {
                    // Frames sent before DTLS finished were lost to this viewer: a keyframe now
                    // rather than at the next periodic one (up to 2 s away).
                    if let Some(v) = a.hub.viewer(&id) {
                        if let Ok(p) = a.hub.pipeline_at(v.codec, v.fps) {
                            p.request_keyframe();
                        }
                    }
                    a.timeline.emit(Actor::System, "stream", json!({"viewer": id, "state": "connected", "viewers": a.hub.viewer_count()}));
                }
                RTCPeerConnectionState::Failed => {
                    if let Some(v) = a.hub.viewer(&id) {
                        let diagnosis = crate::stream::diagnose_ice_failure(&v.answer_sdp, &v.offer_sdp, a.hub.ice());
                        tracing::warn!(viewer = %id, %diagnosis, "viewer connection failed");
                        a.timeline.emit(Actor::System, "stream", json!({"viewer": id, "state": "failed", "diagnosis": diagnosis}));
                    }
                    tokio::spawn(async move { a.drop_viewer(&id).await });
                }
                RTCPeerConnectionState::Closed => {
                    // Spawned: closing the connection from inside its own callback would deadlock.
                    tokio::spawn(async move { a.drop_viewer(&id).await });
                }
                _ => {}
            }
        })
    }));
    let id = viewer.id.clone();
    let codec = viewer.codec;
    let fps = viewer.fps;
    viewer.pc.on_data_channel(Box::new(move |dc: Arc<RTCDataChannel>| {
        let (app, id) = (app.clone(), id.clone());
        Box::pin(async move {
            if dc.label() != "porthole" {
                tracing::warn!(viewer = %id, label = dc.label(), "ignoring data channel with unknown label");
                return;
            }
            let state = Arc::new(Mutex::new(InputState::default()));
            let (a2, id2, dc2) = (app.clone(), id.clone(), dc.clone());
            // Subscribed now, not when the feed task starts: the viewer's first message may be
            // handled before that, and what it causes (a refusal) must still reach the viewer.
            let events = Mutex::new(Some(app.timeline.subscribe()));
            dc.on_open(Box::new(move || {
                if let Some(ev) = events.lock().unwrap().take() {
                    tokio::spawn(feed_viewer(a2.clone(), id2.clone(), dc2.clone(), codec, fps, ev));
                }
                Box::pin(async {})
            }));
            dc.on_message(Box::new(move |msg: DataChannelMessage| {
                let (app, id, state) = (app.clone(), id.clone(), state.clone());
                Box::pin(async move {
                    let text = String::from_utf8_lossy(&msg.data);
                    match serde_json::from_str::<ViewerMessage>(&text) {
                        Ok(m) => handle_message(&app, &id, &state, m).await,
                        Err(e) => tracing::warn!(viewer = %id, "unknown data-channel message ({e}): {:.200}", text),
                    }
                })
            }));
        })
    }));
}

/// Sends events as they happen, plus `clock` and `stats` once a second, until the channel closes.
async fn feed_viewer(
    app: Arc<App>,
    viewer: String,
    dc: Arc<RTCDataChannel>,
    codec: crate::encode::Codec,
    fps: u32,
    mut events: tokio::sync::broadcast::Receiver<porthole_proto::Event>,
) {
    let mut clip = app.clipboard().subscribe();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        let msg = tokio::select! {
            c = clip.recv() => match c {
                // Only to the human at the controls; secrets never leave, even this way.
                Ok(text) if app.control.lock().unwrap().viewer_may_act(&viewer).is_ok()
                    && app.control.lock().unwrap().state().holder == porthole_proto::Holder::Human =>
                {
                    AgentMessage::Clipboard { text: app.timeline.redactor.redact(&text) }
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
            ev = events.recv() => match ev {
                Ok(e) => AgentMessage::Event(e),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                Err(_) => return,
            },
            _ = tick.tick() => {
                if let Some(c) = app.hub.clock(codec, fps) {
                    let m = AgentMessage::Clock { t_ms: app.timeline.t_ms_of(c.captured_at), rtp_timestamp: c.rtp_timestamp };
                    if send(&dc, &m).await.is_err() { return; }
                }
                let p = match app.hub.pipeline_at(codec, fps) { Ok(p) => p.stats(), Err(_) => continue };
                AgentMessage::Stats(StreamStats {
                    codec: codec.name().into(), width: p.width, height: p.height, fps: p.fps,
                    bitrate_kbps: p.bitrate_kbps, encode_ms_p50: p.cpu_ms_p50, frames: p.frames,
                    keyframes: p.keyframes, viewers: app.hub.viewer_count(),
                })
            }
        };
        if send(&dc, &msg).await.is_err() {
            tracing::debug!(viewer = %viewer, "data channel closed");
            return;
        }
    }
}

async fn send(dc: &RTCDataChannel, m: &AgentMessage) -> Result<(), ()> {
    let s = serde_json::to_string(m).map_err(|_| ())?;
    dc.send_text(s).await.map(|_| ()).map_err(|_| ())
}

fn button_of(bit: u32) -> MouseButton {
    match bit {
        2 => MouseButton::Right,
        4 => MouseButton::Middle,
        _ => MouseButton::Left,
    }
}

fn button_name(b: MouseButton) -> &'static str {
    match b {
        MouseButton::Left => "left",
        MouseButton::Middle => "middle",
        MouseButton::Right => "right",
    }
}

async fn handle_message(app: &Arc<App>, viewer: &str, state: &Mutex<InputState>, m: ViewerMessage) {
    if let ViewerMessage::Control { action } = m {
        app.apply_control(action, Human::Viewer(viewer.to_string()), Actor::Human);
        return;
    }
    let allowed = app.control.lock().unwrap().viewer_may_act(viewer);
    if let Err(refusal) = allowed {
        let mut st = state.lock().unwrap();
        // A refused pointer stream would flood the timeline: one refusal a second is enough.
        if st
            .last_refusal
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            st.last_refusal = Some(Instant::now());
            drop(st);
            app.timeline.emit(
                Actor::Human,
                "refused",
                json!({"viewer": viewer, "input": input_kind(&m), "reason": refusal.0}),
            );
        }
        return;
    }
    let mut actions = Vec::new();
    let mut events = Vec::new();
    {
        let mut st = state.lock().unwrap();
        match &m {
            ViewerMessage::Pointer { x, y, buttons } => {
                actions.push(InputAction::MoveTo { x: *x, y: *y });
                let changed = st.buttons ^ buttons;
                for bit in [1u32, 2, 4] {
                    if changed & bit != 0 {
                        let down = buttons & bit != 0;
                        actions.push(InputAction::Button {
                            button: button_of(bit),
                            down,
                        });
                        events.push(json!({"device": "pointer", "x": x, "y": y, "button": button_name(button_of(bit)), "down": down}));
                    }
                }
                st.buttons = *buttons;
                if changed == 0
                    && st
                        .last_move_event
                        .is_none_or(|t| t.elapsed() >= Duration::from_millis(100))
                {
                    st.last_move_event = Some(Instant::now());
                    events.push(json!({"device": "pointer", "x": x, "y": y, "move": true}));
                }
            }
            ViewerMessage::Wheel { dx, dy } => {
                let (nx, ny) = wheel_notches(&mut st.wheel, *dx, *dy);
                if nx != 0 || ny != 0 {
                    actions.push(InputAction::Scroll { dx: nx, dy: ny });
                    events.push(json!({"device": "wheel", "dx": nx, "dy": ny}));
                }
            }
            ViewerMessage::Key { code, key, down } => match keys::dom_keysym(code, key) {
                Some(k) => {
                    actions.push(InputAction::Key {
                        keysym: k,
                        down: *down,
                    });
                    if let Some(e) = key_input_event(code, key, *down, &mut st.mods) {
                        events.push(e);
                    }
                }
                None => tracing::warn!(viewer, code, key, "no keysym for key"),
            },
            ViewerMessage::Text { text } => {
                actions.push(InputAction::Text(text.clone()));
                events.push(text_input_event(text));
            }
            ViewerMessage::Clipboard { text } => {
                // Not an input action: the guest's clipboard now holds it, for a paste there.
                let n = text.chars().count();
                drop(st);
                app.clipboard().set(text.clone());
                app.timeline.emit(
                    Actor::Human,
                    "input",
                    json!({"device": "clipboard", "chars": n, "viewer": viewer}),
                );
                return;
            }
            ViewerMessage::Display { width, height } => {
                drop(st);
                match app
                    .set_display(*width, *height, Actor::Human, json!(viewer))
                    .await
                {
                    Ok((before, _)) => {
                        let mut r = app.display_restore.lock().unwrap();
                        if r.is_none() {
                            *r = Some(before);
                        }
                    }
                    Err(e) => {
                        app.timeline.emit(
                            Actor::System,
                            "error",
                            json!({"viewer": viewer, "input": "display", "message": e.to_string()}),
                        );
                    }
                }
                return;
            }
            ViewerMessage::Control { .. } => unreachable!("handled above"),
        }
    }
    if actions.is_empty() {
        return;
    }
    match app.input.run(actions).await {
        Ok(_) => {
            // No nudge: XI2 raw motion and Damage wake the capture by themselves, and a frame
            // grabbed before the application repaints would only spend the rate budget.
            for mut e in events {
                e["viewer"] = json!(viewer);
                app.timeline.emit(Actor::Human, "input", e);
            }
        }
        Err(e) => {
            app.timeline.emit(
                Actor::System,
                "error",
                json!({"viewer": viewer, "message": e.to_string()}),
            );
        }
    }
}

/// Browsers report ~100 px per notch; the remainder is kept so trackpads scroll too. A
/// message is at most [`MAX_WHEEL_NOTCHES`] notches and not-a-number is none: `dy: 1e12`
/// once became Scroll{i32::MAX}, which held the one input thread (everyone's) for hours.
fn wheel_notches(acc: &mut (f64, f64), dx: f64, dy: f64) -> (i32, i32) {
    let m = MAX_WHEEL_NOTCHES as f64 * 100.0;
    let bound = |v: f64| if v.is_finite() { v.clamp(-m, m) } else { 0.0 };
    acc.0 = bound(bound(acc.0) + bound(dx));
    acc.1 = bound(bound(acc.1) + bound(dy));
    let (nx, ny) = (
        (acc.0 / 100.0).trunc() as i32,
        (acc.1 / 100.0).trunc() as i32,
    );
    acc.0 -= nx as f64 * 100.0;
    acc.1 -= ny as f64 * 100.0;
    (nx, ny)
}

fn input_kind(m: &ViewerMessage) -> &'static str {
    match m {
        ViewerMessage::Pointer { .. } => "pointer",
        ViewerMessage::Wheel { .. } => "wheel",
        ViewerMessage::Key { .. } => "key",
        ViewerMessage::Text { .. } => "text",
        ViewerMessage::Clipboard { .. } => "clipboard",
        ViewerMessage::Control { .. } => "control",
        ViewerMessage::Display { .. } => "display",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    /// A human's keys during takeover, in order (modifier state carries over between rows):
    /// code, key, down → the recorded event data (`None`: not recorded). No printable
    /// character or DOM `code` of a printing key may appear in any of them.
    #[test]
    fn key_events_carry_no_characters() {
        let named = |key: &str, down: bool, mods: &[&str]| {
            Some(json!({"device": "key", "key": key, "down": down, "modifiers": mods}))
        };
        let count = |mods: &[&str]| {
            Some(json!({"device": "key", "count": 1, "down": true, "modifiers": mods}))
        };
        let rows: &[(&str, &str, bool, Option<Value>)] = &[
            ("KeyP", "p", true, count(&[])),
            ("KeyP", "p", false, None),
            ("ShiftLeft", "Shift", true, named("ShiftLeft", true, &[])),
            ("Digit1", "!", true, count(&["shift"])),
            ("Digit1", "!", false, None),
            ("ShiftLeft", "Shift", false, named("ShiftLeft", false, &[])),
            ("Space", " ", true, count(&[])),
            ("KeyE", "é", true, count(&[])),
            (
                "ControlLeft",
                "Control",
                true,
                named("ControlLeft", true, &[]),
            ),
            ("KeyS", "s", true, count(&["ctrl"])),
            ("AltLeft", "Alt", true, named("AltLeft", true, &["ctrl"])),
            (
                "Delete",
                "Delete",
                true,
                named("Delete", true, &["ctrl", "alt"]),
            ),
            ("AltLeft", "Alt", false, named("AltLeft", false, &["ctrl"])),
            (
                "ControlLeft",
                "Control",
                false,
                named("ControlLeft", false, &[]),
            ),
            ("Enter", "Enter", true, named("Enter", true, &[])),
            ("Enter", "Enter", false, named("Enter", false, &[])),
            (
                "NumpadEnter",
                "Enter",
                true,
                named("NumpadEnter", true, &[]),
            ),
            (
                "Backspace",
                "Backspace",
                true,
                named("Backspace", true, &[]),
            ),
            ("Tab", "Tab", true, named("Tab", true, &[])),
            (
                "ArrowLeft",
                "ArrowLeft",
                true,
                named("ArrowLeft", true, &[]),
            ),
            ("F5", "F5", true, named("F5", true, &[])),
            ("Escape", "Escape", true, named("Escape", true, &[])),
            ("MetaLeft", "Meta", true, named("MetaLeft", true, &[])),
            ("KeyL", "l", true, count(&["meta"])),
            ("MetaLeft", "Meta", false, named("MetaLeft", false, &[])),
            // An unfamiliar code for a named key: the name from `key`, never the code.
            ("Unidentified", "Enter", true, named("Enter", true, &[])),
            // A code that looks special but is not on the list stays a count.
            ("Fx", "x", true, count(&[])),
        ];
        let mut mods = Vec::new();
        for (code, key, down, want) in rows {
            let got = key_input_event(code, key, *down, &mut mods);
            assert_eq!(&got, want, "{code}/{key:?} down={down}");
            if let Some(v) = got {
                let s = v.to_string();
                let printing = keys::dom_special_name(code, key).is_none();
                if printing {
                    assert!(
                        !s.contains(&format!("\"{key}\"")),
                        "{s} names the character {key:?}"
                    );
                    assert!(!s.contains(code), "{s} names the key {code}");
                }
            }
        }
    }

    /// Each row: the accumulated remainder before, one message's (dx, dy), the notches sent.
    #[test]
    fn wheel_table() {
        let rows: &[((f64, f64), (f64, f64), (i32, i32))] = &[
            ((0.0, 0.0), (0.0, 100.0), (0, 1)),
            ((0.0, 0.0), (0.0, -250.0), (0, -2)),
            ((0.0, 60.0), (0.0, 50.0), (0, 1)),
            ((0.0, 0.0), (0.0, 1e12), (0, MAX_WHEEL_NOTCHES)),
            (
                (0.0, 0.0),
                (-1e300, f64::NEG_INFINITY),
                (-MAX_WHEEL_NOTCHES, 0),
            ),
            ((0.0, 0.0), (f64::NAN, 300.0), (0, 3)),
            ((f64::NAN, 0.0), (100.0, 0.0), (1, 0)),
        ];
        for (before, (dx, dy), want) in rows {
            let mut acc = *before;
            assert_eq!(
                wheel_notches(&mut acc, *dx, *dy),
                *want,
                "{before:?} + ({dx}, {dy})"
            );
            assert!(acc.0.is_finite() && acc.1.is_finite(), "{acc:?}");
        }
    }

    #[test]
    fn text_events_carry_a_count_only() {
        for (text, n) in [("hunter2", 7), ("pässwörd ✓", 10), ("", 0), ("a\nb", 3)] {
            let v = text_input_event(text);
            assert_eq!(v, json!({"device": "text", "count": n}), "{text:?}");
        }
    }
}
