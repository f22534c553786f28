//! Wire types shared by the Porthole app, the CLI and the guest agent.
//!
//! Everything that crosses the wire between them (HTTP bodies, events, data-channel messages)
//! is defined here once, with serde, so both sides agree by construction. This crate does no
//! I/O and has no opinion about transports; `../shared/contracts.md` is the spec these types
//! follow, and extending a type means adding optional fields, never renaming existing ones.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Who caused something to happen on the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum Actor {
    Agent,
    Human,
    System,
}

/// One entry of a session's timeline. `seq` starts at 1 and `t_ms` is the session clock; both
/// are non-decreasing in the order events are emitted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct Event {
    #[cfg_attr(test, ts(type = "number"))]
    pub seq: u64,
    #[cfg_attr(test, ts(type = "number"))]
    pub t_ms: u64,
    pub actor: Actor,
    pub kind: String,
    #[serde(default)]
    #[cfg_attr(test, ts(type = "any"))]
    pub data: Value,
}

/// `GET /v1/events` response.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct EventPage {
    pub events: Vec<Event>,
    #[cfg_attr(test, ts(type = "number"))]
    pub next: u64,
}

/// Body of every non-2xx HTTP response: `{"error": {"code", "message"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct ErrorDetail {
    pub code: String,
    pub message: String,
}

/// `GET /v1/health`: always 200; `status` is `degraded` when `problems` is non-empty.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct Health {
    pub status: HealthStatus,
    pub version: String,
    pub problems: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub display: Option<DisplayInfo>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum HealthStatus {
    Ok,
    Degraded,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct DisplayInfo {
    pub name: String,
    pub width: u32,
    pub height: u32,
}

/// Who may act on the machine. The agent holds control unless paused or a human took it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum Holder {
    Agent,
    Human,
    Nobody,
}

/// `GET /v1/control` and the answer to `POST /v1/control`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct ControlState {
    pub holder: Holder,
    pub agent_paused: bool,
    #[cfg_attr(test, ts(type = "number"))]
    pub since_t_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum ControlAction {
    PauseAgent,
    ResumeAgent,
    Take,
    Release,
}

impl ControlAction {
    pub const NAMES: &'static [&'static str] = &["pause_agent", "resume_agent", "take", "release"];
}

/// `POST /v1/control` body.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ControlRequest {
    pub action: ControlAction,
}

/// Messages a viewer sends on the `porthole` data channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum ViewerMessage {
    /// Pointer position in stream pixels; `buttons` is the DOM `buttons` bitmask
    /// (1 left, 2 right, 4 middle).
    Pointer {
        x: i32,
        y: i32,
        #[serde(default)]
        buttons: u32,
    },
    /// Wheel deltas in DOM pixels (about 100 per notch).
    Wheel {
        #[serde(default)]
        dx: f64,
        #[serde(default)]
        dy: f64,
    },
    /// A key going down or up: DOM `KeyboardEvent.code` and `.key`.
    Key {
        code: String,
        key: String,
        down: bool,
    },
    /// Text to type as is (paste).
    Text {
        text: String,
    },
    /// Becomes the guest's clipboard (CLIPBOARD selection); only while this viewer holds
    /// control, like input.
    Clipboard {
        text: String,
    },
    Control {
        action: ControlAction,
    },
    /// Asks the guest's screen to become `width`x`height` (the viewer's window), only while this
    /// viewer holds control; the size before is restored when control goes back.
    Display {
        width: u32,
        height: u32,
    },
}

/// `GET /v1/display` and the answer to `POST /v1/display` (`{"width", "height"}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct DisplayState {
    pub width: u32,
    pub height: u32,
    /// Whether the X server can change its size (Xvnc can, Xvfb cannot).
    pub resizable: bool,
    /// Why not, when it cannot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub reason: Option<String>,
}

/// One step of a long machine operation (create, start, snapshot) for a progress display: the
/// guest image recipe's `[k/n] what` lines carry `step` and `steps`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct Progress {
    pub machine: String,
    /// `create`, `start` or `snapshot`.
    pub op: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub step: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(test, ts(optional))]
    pub steps: Option<u32>,
}

impl Progress {
    /// A progress line; `[k/n] rest` becomes step k of n with message `rest`.
    pub fn line(machine: &str, op: &str, line: &str) -> Self {
        let parsed = line.strip_prefix('[').and_then(|r| {
            let (frac, rest) = r.split_once("] ")?;
            let (k, n) = frac.split_once('/')?;
            Some((k.parse().ok()?, n.parse().ok()?, rest))
        });
        let (step, steps, message) = match parsed {
            Some((k, n, rest)) => (Some(k), Some(n), rest),
            None => (None, None, line),
        };
        Self {
            machine: machine.into(),
            op: op.into(),
            message: message.trim().into(),
            step,
            steps,
        }
    }
}

/// Messages the agent sends on the `porthole` data channel.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub enum AgentMessage {
    Event(Event),
    /// Pairs the session clock with the RTP timestamp of a sent frame.
    Clock {
        #[cfg_attr(test, ts(type = "number"))]
        t_ms: u64,
        rtp_timestamp: u32,
    },
    Stats(StreamStats),
    /// Text copied in the guest, sent only to a viewer that holds control (secrets redacted).
    Clipboard {
        text: String,
    },
}

/// Sender-side stream figures, sent about once a second.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[cfg_attr(test, derive(ts_rs::TS), ts(export))]
pub struct StreamStats {
    pub codec: String,
    pub width: u32,
    pub height: u32,
    pub fps: f64,
    pub bitrate_kbps: f64,
    /// Median capture+convert+encode CPU time per frame over the last second.
    pub encode_ms_p50: f64,
    #[cfg_attr(test, ts(type = "number"))]
    pub frames: u64,
    #[cfg_attr(test, ts(type = "number"))]
    pub keyframes: u64,
    #[cfg_attr(test, ts(type = "number"))]
    pub viewers: usize,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_lines_carry_the_recipe_steps() {
        #[track_caller]
        fn check(line: &str, step: Option<u32>, steps: Option<u32>, message: &str) {
            let p = Progress::line("m", "create", line);
            assert_eq!(
                (p.step, p.steps, p.message.as_str()),
                (step, steps, message),
                "{line}"
            );
        }
        check(
            "[2/6] install desktop (12:00:01)",
            Some(2),
            Some(6),
            "install desktop (12:00:01)",
        );
        check("booting the VM", None, None, "booting the VM");
        check("[x/6] odd", None, None, "[x/6] odd");
        check("[3/6]no space", None, None, "[3/6]no space");
        check(
            "  Get:1 http://deb.debian.org  ",
            None,
            None,
            "Get:1 http://deb.debian.org",
        );
    }

    #[test]
    fn viewer_messages_parse_as_the_contract_writes_them() {
        let m: ViewerMessage =
            serde_json::from_str(r#"{"type":"pointer","x":10,"y":20,"buttons":1}"#).unwrap();
        assert_eq!(
            m,
            ViewerMessage::Pointer {
                x: 10,
                y: 20,
                buttons: 1
            }
        );
        let m: ViewerMessage =
            serde_json::from_str(r#"{"type":"key","code":"KeyA","key":"a","down":true}"#).unwrap();
        assert_eq!(
            m,
            ViewerMessage::Key {
                code: "KeyA".into(),
                key: "a".into(),
                down: true
            }
        );
        let m: ViewerMessage =
            serde_json::from_str(r#"{"type":"control","action":"take"}"#).unwrap();
        assert_eq!(
            m,
            ViewerMessage::Control {
                action: ControlAction::Take
            }
        );
        let m: ViewerMessage =
            serde_json::from_str(r#"{"type":"display","width":1000,"height":700}"#).unwrap();
        assert_eq!(
            m,
            ViewerMessage::Display {
                width: 1000,
                height: 700
            }
        );
        assert!(serde_json::from_str::<ViewerMessage>(r#"{"type":"warp"}"#).is_err());
    }

    #[test]
    fn agent_messages_are_tagged_by_type() {
        let m = AgentMessage::Clock {
            t_ms: 5,
            rtp_timestamp: 9,
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(v["type"], "clock");
        assert_eq!(v["rtp_timestamp"], 9);
        let e = AgentMessage::Event(Event {
            seq: 1,
            t_ms: 2,
            actor: Actor::Human,
            kind: "input".into(),
            data: Value::Null,
        });
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["type"], "event");
        assert_eq!(v["actor"], "human");
        assert_eq!(v["seq"], 1);
    }
}
