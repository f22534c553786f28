//! Wire types shared by the Porthole app, the CLI and the guest agent.
//!
//! Everything that crosses the wire between them (HTTP bodies, events, data-channel messages)
//! is defined here once, with serde, so both sides agree by construction. This crate does no
//! I/O and has no opinion about transports; `../shared/contracts.md` is the spec these types
//! follow, and extending a type means adding optional fields, never renaming existing ones.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Secret redaction, the one rule both sides apply: the guest before any byte leaves it, the
/// host again before it stores what a guest sent (a guest is not trusted to have done it).
pub mod redact {
    use serde_json::Value;

    /// Secrets as `redact` wants them: empty values dropped (they would match everywhere),
    /// longest first, so a secret containing another is replaced whole.
    pub fn prepare(secrets: impl IntoIterator<Item = (String, String)>) -> Vec<(String, String)> {
        let mut v: Vec<(String, String)> = secrets
            .into_iter()
            .filter(|(_, val)| !val.is_empty())
            .collect();
        v.sort_by(|a, b| b.1.len().cmp(&a.1.len()));
        v
    }

    /// Replaces each value (in the order given: see `prepare`) with `[REDACTED:NAME]`.
    pub fn text(secrets: &[(String, String)], text: &str) -> String {
        let mut out = text.to_string();
        for (name, val) in secrets {
            if out.contains(val.as_str()) {
                out = out.replace(val.as_str(), &format!("[REDACTED:{name}]"));
            }
        }
        out
    }

    /// `text` over every string of a JSON value, object keys included (a key can carry
    /// output too: an environment map, a header name).
    pub fn value(secrets: &[(String, String)], v: &mut Value) {
        if secrets.is_empty() {
            return;
        }
        match v {
            Value::String(s) => {
                let r = text(secrets, s);
                if r != *s {
                    *s = r;
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| value(secrets, x)),
            Value::Object(o) => {
                o.values_mut().for_each(|x| value(secrets, x));
                let hit = |k: &String| secrets.iter().any(|(_, val)| k.contains(val.as_str()));
                if o.keys().any(hit) {
                    // Rebuilt in order, so the object keeps its key order.
                    for (k, x) in std::mem::take(o) {
                        o.insert(text(secrets, &k), x);
                    }
                }
            }
            _ => {}
        }
    }
}

/// Which finished recordings retention deletes, decided the same way on a machine (by the
/// agent) and on the host (by core); each side measures and deletes its own.
pub mod retention {
    /// A recording as retention sees it.
    #[derive(Debug, Clone)]
    pub struct Kept {
        pub id: String,
        pub started_at_unix_ms: u64,
        pub bytes: u64,
    }

    /// The limits; `None` is no limit.
    #[derive(Debug, Clone, Copy, Default)]
    pub struct Retention {
        pub max_age: Option<std::time::Duration>,
        pub max_bytes: Option<u64>,
    }

    impl Retention {
        /// Which of `finished` (any order) to delete now, oldest first: those past the age,
        /// then the oldest until the rest fit. `live_bytes` (sessions still recording) counts
        /// toward the total but is never chosen.
        pub fn choose(&self, finished: &[Kept], live_bytes: u64, now_unix_ms: u64) -> Vec<String> {
            let mut by_age: Vec<&Kept> = finished.iter().collect();
            by_age.sort_by_key(|k| (k.started_at_unix_ms, k.id.clone()));
            let mut total: u64 = live_bytes + by_age.iter().map(|k| k.bytes).sum::<u64>();
            let mut out = Vec::new();
            for k in by_age {
                let too_old = self.max_age.is_some_and(|a| {
                    now_unix_ms.saturating_sub(k.started_at_unix_ms) > a.as_millis() as u64
                });
                let too_big = self.max_bytes.is_some_and(|b| total > b);
                if !(too_old || too_big) {
                    break;
                }
                total -= k.bytes;
                out.push(k.id.clone());
            }
            out
        }
    }
}

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
    fn retention_takes_the_oldest_finished_first() {
        const DAY: u64 = 86_400_000;
        let now = 100 * DAY;
        let k = |id: &str, days_ago: u64, mb: u64| retention::Kept {
            id: id.into(),
            started_at_unix_ms: now - days_ago * DAY,
            bytes: mb << 20,
        };
        let all = [k("c", 1, 10), k("a", 40, 10), k("b", 20, 10), k("d", 0, 10)];
        #[track_caller]
        fn check(
            r: retention::Retention,
            all: &[retention::Kept],
            live_mb: u64,
            now: u64,
            want: &[&str],
        ) {
            assert_eq!(r.choose(all, live_mb << 20, now), want);
        }
        let days = |d: u64| Some(std::time::Duration::from_secs(d * 86_400));
        use retention::Retention;
        let none = Retention::default();
        check(none, &all, 0, now, &[]);
        check(
            Retention {
                max_age: days(30),
                max_bytes: None,
            },
            &all,
            0,
            now,
            &["a"],
        );
        check(
            Retention {
                max_age: days(10),
                max_bytes: None,
            },
            &all,
            0,
            now,
            &["a", "b"],
        );
        // 40 MiB finished + 15 live over a 30 MiB cap: the three oldest go, never the live one.
        check(
            Retention {
                max_age: None,
                max_bytes: Some(30 << 20),
            },
            &all,
            15,
            now,
            &["a", "b", "c"],
        );
        check(
            Retention {
                max_age: None,
                max_bytes: Some(40 << 20),
            },
            &all,
            0,
            now,
            &[],
        );
        // A live session bigger than the cap alone empties the finished ones, and stops there.
        check(
            Retention {
                max_age: None,
                max_bytes: Some(1),
            },
            &all,
            500,
            now,
            &["a", "b", "c", "d"],
        );
    }

    #[test]
    fn redaction_reaches_every_string_and_keeps_order() {
        let secrets = redact::prepare([
            ("SHORT".to_string(), "abc".to_string()),
            ("LONG".to_string(), "xxabcxx".to_string()),
            ("EMPTY".to_string(), String::new()),
        ]);
        let mut v = serde_json::json!({
            "z": "say xxabcxx and abc",
            "a": ["abc", 3, {"abc": "k"}],
            "m": null,
        });
        redact::value(&secrets, &mut v);
        assert_eq!(
            v.to_string(),
            r#"{"a":["[REDACTED:SHORT]",3,{"[REDACTED:SHORT]":"k"}],"m":null,"z":"say [REDACTED:LONG] and [REDACTED:SHORT]"}"#
        );
        assert_eq!(redact::text(&secrets, "no secret"), "no secret");
    }

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
