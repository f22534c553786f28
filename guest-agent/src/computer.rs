//! Computer use: Anthropic's `computer` tool actions over HTTP, screenshots, and exec.
//!
//! The agent declares a display size (`--display-size`); the model sees screenshots in that
//! size and gives coordinates in it, and we map them to the real screen here, so clicks land
//! where the screenshot showed whatever the scaling. Each request is parsed into one
//! [`Action`] first (all validation up front, 400 naming the field), then run.

use crate::app::App;
use crate::http::ApiError;
use crate::input::{InputAction, MouseButton};
use crate::keys;
use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use base64::Engine as _;
use porthole_proto::Actor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const ACTIONS: &[&str] = &[
    "key",
    "type",
    "mouse_move",
    "left_click",
    "left_click_drag",
    "right_click",
    "middle_click",
    "double_click",
    "triple_click",
    "screenshot",
    "cursor_position",
    "left_mouse_down",
    "left_mouse_up",
    "scroll",
    "hold_key",
    "wait",
    "zoom",
];
const DIRECTIONS: &[&str] = &["up", "down", "left", "right"];
const MAX_DURATION_S: f64 = 100.0;

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Key {
        chords: Vec<Vec<u32>>,
        text: String,
    },
    Type {
        text: String,
    },
    MouseMove {
        at: (u32, u32),
    },
    Click {
        button: MouseButton,
        count: u32,
        at: Option<(u32, u32)>,
        modifiers: Vec<u32>,
    },
    Drag {
        from: (u32, u32),
        to: (u32, u32),
    },
    MouseDown {
        at: Option<(u32, u32)>,
    },
    MouseUp {
        at: Option<(u32, u32)>,
    },
    Scroll {
        at: Option<(u32, u32)>,
        direction: &'static str,
        amount: u32,
        modifiers: Vec<u32>,
    },
    HoldKey {
        keys: Vec<u32>,
        duration: Duration,
    },
    Wait {
        duration: Duration,
    },
    Screenshot,
    Zoom {
        region: [u32; 4],
    },
    CursorPosition,
}

/// Image options for screenshots.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    #[default]
    Png,
    Jpeg,
    Webp,
}

impl ImageFormat {
    fn mime(self) -> &'static str {
        match self {
            ImageFormat::Png => "image/png",
            ImageFormat::Jpeg => "image/jpeg",
            ImageFormat::Webp => "image/webp",
        }
    }
}

fn bad(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_action",
        format!("{field}: {msg}"),
    )
}

/// Parses and validates one action against the declared display size.
pub fn parse_action(v: &Value, (w, h): (u32, u32)) -> Result<Action, ApiError> {
    let obj = v
        .as_object()
        .ok_or_else(|| bad("body", "expected a JSON object with an \"action\""))?;
    let action = match obj.get("action") {
        None => {
            return Err(bad(
                "action",
                format!("missing; expected one of {}", ACTIONS.join(", ")),
            ))
        }
        Some(Value::String(s)) => s.as_str(),
        Some(_) => return Err(bad("action", "expected a string")),
    };
    if !ACTIONS.contains(&action) {
        return Err(bad(
            "action",
            format!(
                "unknown action '{action}'; expected one of {}",
                ACTIONS.join(", ")
            ),
        ));
    }
    let point = |field: &str| -> Result<Option<(u32, u32)>, ApiError> {
        let Some(c) = obj.get(field).filter(|c| !c.is_null()) else {
            return Ok(None);
        };
        let arr = c
            .as_array()
            .filter(|a| a.len() == 2)
            .ok_or_else(|| bad(field, "expected [x, y]"))?;
        let mut xy = [0i64; 2];
        for (i, n) in arr.iter().enumerate() {
            xy[i] = n
                .as_i64()
                .or_else(|| n.as_f64().filter(|f| f.fract() == 0.0).map(|f| f as i64))
                .ok_or_else(|| bad(field, "expected [x, y] with integer pixels"))?;
        }
        if xy[0] < 0 || xy[1] < 0 || xy[0] >= w as i64 || xy[1] >= h as i64 {
            return Err(bad(
                field,
                format!(
                    "[{}, {}] is off screen; the display is {w}x{h} (x 0..{}, y 0..{})",
                    xy[0],
                    xy[1],
                    w - 1,
                    h - 1
                ),
            ));
        }
        Ok(Some((xy[0] as u32, xy[1] as u32)))
    };
    let need_point =
        |field: &str| point(field)?.ok_or_else(|| bad(field, format!("required for {action}")));
    let text = |field: &str| -> Result<String, ApiError> {
        match obj.get(field) {
            Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
            Some(Value::String(_)) => Err(bad(field, "must not be empty")),
            None | Some(Value::Null) => Err(bad(field, format!("required for {action}"))),
            Some(_) => Err(bad(field, "expected a string")),
        }
    };
    let duration = || -> Result<Duration, ApiError> {
        let d = obj
            .get("duration")
            .ok_or_else(|| bad("duration", format!("required for {action} (seconds)")))?;
        let d = d
            .as_f64()
            .ok_or_else(|| bad("duration", "expected a number of seconds"))?;
        if d < 0.0 {
            return Err(bad("duration", "must not be negative"));
        }
        if d > MAX_DURATION_S {
            return Err(bad("duration", format!("at most {MAX_DURATION_S} seconds")));
        }
        Ok(Duration::from_secs_f64(d))
    };
    let modifiers = || -> Result<Vec<u32>, ApiError> {
        // `key` is the documented field; Anthropic's reference also takes the modifier from
        // `text` for clicks and scrolls, so accept that when `key` is absent.
        let (field, val) = match obj.get("key").filter(|v| !v.is_null()) {
            Some(v) => ("key", Some(v)),
            None => ("text", obj.get("text")),
        };
        match val {
            None | Some(Value::Null) => Ok(vec![]),
            Some(Value::String(s)) => {
                let chords = keys::parse_chords(s).map_err(|e| bad(field, e))?;
                Ok(chords.into_iter().flatten().collect())
            }
            Some(_) => Err(bad(
                field,
                "expected a string such as \"shift\" or \"ctrl\"",
            )),
        }
    };
    let click = |button, count| -> Result<Action, ApiError> {
        Ok(Action::Click {
            button,
            count,
            at: point("coordinate")?,
            modifiers: modifiers()?,
        })
    };
    Ok(match action {
        "key" => {
            let t = text("text")?;
            Action::Key {
                chords: keys::parse_chords(&t).map_err(|e| bad("text", e))?,
                text: t,
            }
        }
        "type" => Action::Type {
            text: text("text")?,
        },
        "mouse_move" => Action::MouseMove {
            at: need_point("coordinate")?,
        },
        "left_click" => click(MouseButton::Left, 1)?,
        "right_click" => click(MouseButton::Right, 1)?,
        "middle_click" => click(MouseButton::Middle, 1)?,
        "double_click" => click(MouseButton::Left, 2)?,
        "triple_click" => click(MouseButton::Left, 3)?,
        "left_click_drag" => Action::Drag {
            from: need_point("start_coordinate")?,
            to: need_point("coordinate")?,
        },
        "left_mouse_down" => Action::MouseDown {
            at: point("coordinate")?,
        },
        "left_mouse_up" => Action::MouseUp {
            at: point("coordinate")?,
        },
        "scroll" => {
            let dir = obj.get("scroll_direction").ok_or_else(|| {
                bad(
                    "scroll_direction",
                    format!(
                        "required for scroll; expected one of {}",
                        DIRECTIONS.join(", ")
                    ),
                )
            })?;
            let direction = DIRECTIONS
                .iter()
                .find(|d| Some(**d) == dir.as_str())
                .ok_or_else(|| {
                    bad(
                        "scroll_direction",
                        format!("unknown {dir}; expected one of {}", DIRECTIONS.join(", ")),
                    )
                })?;
            let amount = match obj.get("scroll_amount") {
                None | Some(Value::Null) => 3,
                Some(a) => a.as_u64().filter(|a| *a <= 100).ok_or_else(|| {
                    bad(
                        "scroll_amount",
                        "expected a whole number of notches from 0 to 100",
                    )
                })? as u32,
            };
            Action::Scroll {
                at: point("coordinate")?,
                direction,
                amount,
                modifiers: modifiers()?,
            }
        }
        "hold_key" => {
            let t = text("text")?;
            let keys = keys::parse_chords(&t)
                .map_err(|e| bad("text", e))?
                .into_iter()
                .flatten()
                .collect();
            Action::HoldKey {
                keys,
                duration: duration()?,
            }
        }
        "wait" => Action::Wait {
            duration: duration()?,
        },
        "screenshot" => Action::Screenshot,
        "cursor_position" => Action::CursorPosition,
        "zoom" => {
            let r = obj
                .get("region")
                .ok_or_else(|| bad("region", "required for zoom: [x1, y1, x2, y2]"))?;
            let a = r
                .as_array()
                .filter(|a| a.len() == 4)
                .ok_or_else(|| bad("region", "expected [x1, y1, x2, y2]"))?;
            let mut reg = [0u32; 4];
            for (i, n) in a.iter().enumerate() {
                reg[i] = n
                    .as_u64()
                    .ok_or_else(|| bad("region", "expected four non-negative integers"))?
                    as u32;
            }
            if reg[0] >= reg[2] || reg[1] >= reg[3] {
                return Err(bad("region", "needs x1 < x2 and y1 < y2"));
            }
            if reg[2] > w || reg[3] > h {
                return Err(bad(
                    "region",
                    format!("{reg:?} extends off screen; the display is {w}x{h}"),
                ));
            }
            Action::Zoom { region: reg }
        }
        _ => unreachable!("checked against ACTIONS"),
    })
}

/// Maps declared-display coordinates to real screen pixels (pixel centres, so round-trips hold).
pub fn to_screen((x, y): (u32, u32), declared: (u32, u32), screen: (u32, u32)) -> (i32, i32) {
    let sx = ((x as f64 + 0.5) * screen.0 as f64 / declared.0 as f64).floor() as i32;
    let sy = ((y as f64 + 0.5) * screen.1 as f64 / declared.1 as f64).floor() as i32;
    (sx.min(screen.0 as i32 - 1), sy.min(screen.1 as i32 - 1))
}

pub fn to_declared((x, y): (i32, i32), declared: (u32, u32), screen: (u32, u32)) -> (u32, u32) {
    let dx = ((x.max(0) as f64 + 0.5) * declared.0 as f64 / screen.0 as f64).floor() as u32;
    let dy = ((y.max(0) as f64 + 0.5) * declared.1 as f64 / screen.1 as f64).floor() as u32;
    (dx.min(declared.0 - 1), dy.min(declared.1 - 1))
}

/// Grabs the screen once the picture has settled: no X Damage for `QUIET`, at most `CAP`.
pub struct Screenshotter {
    display: String,
    conn: Mutex<Option<Shot>>,
}

struct Shot {
    conn: x11rb::rust_connection::RustConnection,
    root: u32,
    damage: u32,
}

const QUIET: Duration = Duration::from_millis(80);
const CAP: Duration = Duration::from_millis(1500);

pub struct Rgb {
    pub width: u32,
    pub height: u32,
    pub pixels: Vec<u8>,
}

impl Screenshotter {
    pub fn new(display: String) -> Self {
        Self {
            display,
            conn: Mutex::new(None),
        }
    }

    pub fn screen_size(&self) -> Result<(u32, u32), String> {
        use x11rb::protocol::xproto::ConnectionExt as _;
        let mut g = self.conn.lock().unwrap();
        let s = self.connect(&mut g)?;
        // The setup block is fixed at connect time; ask for the current root size instead.
        let geo = s
            .conn
            .get_geometry(s.root)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string());
        if geo.is_err() {
            *g = None;
        }
        geo.map(|g| (g.width as u32, g.height as u32))
    }

    fn connect<'a>(&self, g: &'a mut Option<Shot>) -> Result<&'a mut Shot, String> {
        use x11rb::connection::Connection;
        use x11rb::protocol::damage::ConnectionExt as _;
        if g.is_none() {
            let (conn, n) = x11rb::rust_connection::RustConnection::connect(Some(&self.display))
                .map_err(|e| format!("display {}: {e}", self.display))?;
            let root = conn.setup().roots[n].root;
            conn.damage_query_version(1, 1)
                .map_err(|e| e.to_string())?
                .reply()
                .map_err(|e| e.to_string())?;
            let damage = conn.generate_id().map_err(|e| e.to_string())?;
            conn.damage_create(
                damage,
                root,
                x11rb::protocol::damage::ReportLevel::NON_EMPTY,
            )
            .map_err(|e| e.to_string())?;
            conn.flush().map_err(|e| e.to_string())?;
            *g = Some(Shot { conn, root, damage });
        }
        Ok(g.as_mut().expect("set above"))
    }

    /// Waits for the screen to settle, then grabs it (RGB, real screen size).
    pub fn grab(&self, settle: bool) -> Result<Rgb, String> {
        let raw = self.grab_raw(settle)?;
        let mut rgb = Vec::with_capacity((raw.width * raw.height * 3) as usize);
        for px in raw
            .bgrx
            .chunks_exact(4)
            .take((raw.width * raw.height) as usize)
        {
            rgb.extend_from_slice(&[px[2], px[1], px[0]]);
        }
        Ok(Rgb {
            width: raw.width,
            height: raw.height,
            pixels: rgb,
        })
    }

    /// The screen as X gives it (BGRx), with no conversion: cheap enough to take inline.
    pub fn grab_raw(&self, settle: bool) -> Result<Raw, String> {
        let mut g = self.conn.lock().unwrap();
        let r = self.grab_inner(&mut g, settle);
        if r.is_err() {
            *g = None;
        }
        r
    }

    fn grab_inner(&self, g: &mut Option<Shot>, settle: bool) -> Result<Raw, String> {
        use std::os::fd::AsRawFd;
        use x11rb::connection::Connection;
        use x11rb::protocol::damage::ConnectionExt as _;
        use x11rb::protocol::xproto::ConnectionExt as _;
        let s = self.connect(g)?;
        let start = Instant::now();
        // Re-arm, then wait until a whole QUIET interval passes without damage.
        s.conn
            .damage_subtract(s.damage, x11rb::NONE, x11rb::NONE)
            .map_err(|e| e.to_string())?;
        s.conn.flush().map_err(|e| e.to_string())?;
        if settle {
            let mut quiet_since = Instant::now();
            loop {
                let mut damaged = false;
                while let Some(ev) = s.conn.poll_for_event().map_err(|e| e.to_string())? {
                    if matches!(ev, x11rb::protocol::Event::DamageNotify(_)) {
                        damaged = true;
                    }
                }
                if damaged {
                    s.conn
                        .damage_subtract(s.damage, x11rb::NONE, x11rb::NONE)
                        .map_err(|e| e.to_string())?;
                    s.conn.flush().map_err(|e| e.to_string())?;
                    quiet_since = Instant::now();
                }
                let now = Instant::now();
                if now.duration_since(quiet_since) >= QUIET || now.duration_since(start) >= CAP {
                    break;
                }
                let until = (quiet_since + QUIET).min(start + CAP);
                crate::capture::poll_readable(&[s.conn.stream().as_raw_fd()], Some(until));
            }
        } else {
            while s
                .conn
                .poll_for_event()
                .map_err(|e| e.to_string())?
                .is_some()
            {}
        }
        let geo = s
            .conn
            .get_geometry(s.root)
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        let (w, h) = (geo.width as u32, geo.height as u32);
        let img = s
            .conn
            .get_image(
                x11rb::protocol::xproto::ImageFormat::Z_PIXMAP,
                s.root,
                0,
                0,
                w as u16,
                h as u16,
                !0,
            )
            .map_err(|e| e.to_string())?
            .reply()
            .map_err(|e| e.to_string())?;
        if img.data.len() < (w * h * 4) as usize {
            return Err(format!(
                "unexpected image depth {} ({} bytes)",
                img.depth,
                img.data.len()
            ));
        }
        Ok(Raw {
            width: w,
            height: h,
            bgrx: img.data,
        })
    }
}

pub struct Raw {
    pub width: u32,
    pub height: u32,
    pub bgrx: Vec<u8>,
}

/// Averages `f`x`f` blocks (f chosen so the width is at most `max_w`): a thumbnail costs
/// about a millisecond this way, against ~150 ms for a filtered resize in a debug build.
pub fn box_downscale(src: &Raw, max_w: u32) -> Rgb {
    let f = src.width.div_ceil(max_w).max(1);
    let (w, h) = (src.width / f, src.height / f);
    let mut out = Vec::with_capacity((w * h * 3) as usize);
    let n = f * f;
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0u32; 3];
            for dy in 0..f {
                let row = ((y * f + dy) * src.width + x * f) as usize * 4;
                for dx in 0..f as usize {
                    for c in 0..3 {
                        acc[c] += src.bgrx[row + dx * 4 + c] as u32;
                    }
                }
            }
            // BGRx in, RGB out.
            out.extend([acc[2], acc[1], acc[0]].iter().map(|v| (v / n) as u8));
        }
    }
    Rgb {
        width: w,
        height: h,
        pixels: out,
    }
}

/// Crops (in real pixels) and scales to `out`, then encodes.
pub fn encode_image(
    src: &Rgb,
    crop: Option<[u32; 4]>,
    out: (u32, u32),
    fmt: ImageFormat,
    quality: u8,
) -> Result<Vec<u8>, String> {
    use image::{imageops, ImageBuffer, Rgb as P};
    let full: ImageBuffer<P<u8>, Vec<u8>> =
        ImageBuffer::from_raw(src.width, src.height, src.pixels.clone()).ok_or("bad buffer")?;
    let mut img = match crop {
        Some([x1, y1, x2, y2]) => imageops::crop_imm(&full, x1, y1, x2 - x1, y2 - y1).to_image(),
        None => full,
    };
    if (img.width(), img.height()) != out {
        img = imageops::resize(&img, out.0, out.1, imageops::FilterType::Triangle);
    }
    let mut bytes = Vec::new();
    let mut cur = std::io::Cursor::new(&mut bytes);
    match fmt {
        ImageFormat::Png => {
            let enc = image::codecs::png::PngEncoder::new_with_quality(
                &mut cur,
                image::codecs::png::CompressionType::Fast,
                image::codecs::png::FilterType::Sub,
            );
            img.write_with_encoder(enc).map_err(|e| e.to_string())?
        }
        ImageFormat::Jpeg => {
            let enc =
                image::codecs::jpeg::JpegEncoder::new_with_quality(&mut cur, quality.clamp(1, 100));
            img.write_with_encoder(enc).map_err(|e| e.to_string())?
        }
        ImageFormat::Webp => {
            let enc = image::codecs::webp::WebPEncoder::new_lossless(&mut cur);
            img.write_with_encoder(enc).map_err(|e| e.to_string())?
        }
    }
    Ok(bytes)
}

#[derive(Deserialize, Default)]
pub struct ShotQuery {
    #[serde(default)]
    pub format: ImageFormat,
    pub quality: Option<u8>,
    /// Output scale relative to the declared display size (0.1–1.0).
    pub scale: Option<f64>,
    /// `0` skips waiting for the screen to settle.
    pub settle: Option<u8>,
}

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/computer", post(computer))
        .route("/v1/screenshot", get(screenshot))
        .route("/v1/exec", post(crate::exec::handler))
}

pub fn health_problems(app: &App) -> Vec<String> {
    let recording = app.recording_problem.lock().unwrap().clone();
    recording
        .map(|p| format!("recording: {p}"))
        .into_iter()
        .chain(app.timeline.problem().map(|p| format!("events: {p}")))
        .collect()
}

/// The screen now as a full-size JPEG (chapters), or None if the grab fails.
pub async fn jpeg_screenshot(app: &Arc<App>) -> Option<Vec<u8>> {
    let q = ShotQuery {
        format: ImageFormat::Jpeg,
        quality: Some(85),
        ..Default::default()
    };
    take_screenshot(app, &q, None).await.ok()
}

async fn take_screenshot(
    app: &Arc<App>,
    q: &ShotQuery,
    crop: Option<[u32; 4]>,
) -> Result<Vec<u8>, ApiError> {
    let declared = app.cfg.display_size;
    let scale = q.scale.unwrap_or(1.0);
    if !(0.1..=1.0).contains(&scale) {
        return Err(ApiError::bad_request(format!(
            "scale: {scale} is out of range; expected 0.1 to 1.0"
        )));
    }
    let out = (
        ((declared.0 as f64) * scale).round().max(1.0) as u32,
        ((declared.1 as f64) * scale).round().max(1.0) as u32,
    );
    let (a, fmt, quality, settle) = (
        app.clone(),
        q.format,
        q.quality.unwrap_or(80),
        q.settle != Some(0),
    );
    tokio::task::spawn_blocking(move || {
        let rgb = a.screenshots.grab(settle)?;
        // A zoom region is given in declared coordinates: map both corners to the screen.
        let crop = crop.map(|[x1, y1, x2, y2]| {
            let scr = (rgb.width, rgb.height);
            let (sx1, sy1) = to_screen((x1, y1), declared, scr);
            let (sx2, sy2) = to_screen((x2 - 1, y2 - 1), declared, scr);
            [sx1 as u32, sy1 as u32, sx2 as u32 + 1, sy2 as u32 + 1]
        });
        encode_image(&rgb, crop, out, fmt, quality)
    })
    .await
    .map_err(|e| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "screenshot_failed",
            e.to_string(),
        )
    })?
    .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "screenshot_failed", e))
}

async fn screenshot(
    State(app): State<Arc<App>>,
    Query(q): Query<ShotQuery>,
) -> Result<Response, ApiError> {
    let bytes = take_screenshot(&app, &q, None).await?;
    Ok((
        [
            (header::CONTENT_TYPE, q.format.mime()),
            (header::CACHE_CONTROL, "no-store"),
        ],
        bytes,
    )
        .into_response())
}

async fn computer(
    State(app): State<Arc<App>>,
    Query(q): Query<ShotQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v: Value =
        serde_json::from_slice(&body).map_err(|e| bad("body", format!("not JSON: {e}")))?;
    perform(&app, &v, &q).await.map(Json)
}

/// Validates and runs one action for the agent (HTTP and MCP alike): refused while the agent
/// may not act, recorded on the timeline, answered in Anthropic's tool-result shape.
pub async fn perform(app: &Arc<App>, v: &Value, shot: &ShotQuery) -> Result<Value, ApiError> {
    let action = parse_action(v, app.cfg.display_size)?;
    let name = v["action"].as_str().unwrap_or_default().to_string();
    // Admitted at a control generation: the injection thread drops whatever of this action is
    // still to come once control changes (a take, a pause), so the check cannot go stale.
    let admission = app.control.lock().unwrap().agent_admission();
    let generation = match admission {
        Ok(g) => g,
        Err(r) => {
            app.timeline.emit(
                Actor::Agent,
                "refused",
                json!({"action": name, "reason": r.0}),
            );
            return Err(ApiError::new(StatusCode::CONFLICT, "control_refused", r.0));
        }
    };
    let thumbs = app.cfg.record
        && !matches!(
            action,
            Action::Screenshot | Action::Zoom { .. } | Action::CursorPosition | Action::Wait { .. }
        );
    // Only the raw grab happens before the action; shrinking and JPEG come afterwards.
    let before = if thumbs {
        let a = app.clone();
        tokio::task::spawn_blocking(move || a.thumbs_before.grab_raw(false).ok())
            .await
            .ok()
            .flatten()
    } else {
        None
    };
    let started = Instant::now();
    let out = match run_action(app, &action, shot, generation).await {
        Err(e) if e.status == StatusCode::CONFLICT => {
            // Stopped part-way by a control change: a refusal, like one before it started.
            app.timeline.emit(
                Actor::Agent,
                "refused",
                json!({"action": name, "reason": e.message, "interrupted": true,
                       "duration_ms": started.elapsed().as_millis() as u64}),
            );
            return Err(e);
        }
        out => out,
    };
    let mut data = v.clone();
    if let Some(o) = data.as_object_mut() {
        o.remove("action");
        o.insert("action".into(), json!(name));
        o.insert(
            "duration_ms".into(),
            json!(started.elapsed().as_millis() as u64),
        );
        if let Ok((_, _, Some(pos))) = &out {
            o.insert("screen".into(), json!({"x": pos.0, "y": pos.1}));
        }
        if let Err(e) = &out {
            o.insert("error".into(), json!(e.message));
        }
    }
    if thumbs {
        if let Some(o) = data.as_object_mut() {
            // Named by the event's seq, which is the next one: emit assigns it under its lock,
            // so we read it back from the emitted event instead of guessing.
            o.insert("thumbs".into(), json!(true));
        }
    }
    let ev = app.timeline.emit(Actor::Agent, "action", data);
    if thumbs {
        let (a, session, seq) = (app.clone(), app.timeline.session_id(), ev.seq);
        tokio::spawn(async move {
            let dir = crate::recorder::recordings_dir(&a.cfg.data_dir)
                .join(&session)
                .join("thumbs");
            if let Some(raw) = before {
                if let Ok(Some(b)) = tokio::task::spawn_blocking(move || small_jpeg(&raw)).await {
                    let _ = tokio::fs::write(dir.join(format!("{seq}-before.jpg")), b).await;
                }
            }
            if let Some(after) = thumbnail(&a, true).await {
                let _ = tokio::fs::write(dir.join(format!("{seq}-after.jpg")), after).await;
            }
        });
    }
    let (output, image, _) = out?;
    Ok(json!({"output": output, "error": null, "base64_image": image}))
}

/// A small JPEG of the screen for the timeline (320 px wide), or None if the grab fails.
async fn thumbnail(app: &Arc<App>, settle: bool) -> Option<Vec<u8>> {
    let a = app.clone();
    tokio::task::spawn_blocking(move || small_jpeg(&a.thumbs.grab_raw(settle).ok()?))
        .await
        .ok()
        .flatten()
}

fn small_jpeg(raw: &Raw) -> Option<Vec<u8>> {
    let small = box_downscale(raw, 320);
    encode_image(
        &small,
        None,
        (small.width, small.height),
        ImageFormat::Jpeg,
        70,
    )
    .ok()
}

type ActionOut = (Option<String>, Option<String>, Option<(i32, i32)>);

async fn run_action(
    app: &Arc<App>,
    action: &Action,
    shot: &ShotQuery,
    generation: u64,
) -> Result<ActionOut, ApiError> {
    let declared = app.cfg.display_size;
    let a = app.clone();
    let screen = tokio::task::spawn_blocking(move || a.screenshots.screen_size())
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "input_failed",
                e.to_string(),
            )
        })?
        .map_err(|e| ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "display_unavailable", e))?;
    let map = |p: (u32, u32)| to_screen(p, declared, screen);
    let mut acts = Vec::new();
    let mut pos = None;
    let press = |acts: &mut Vec<InputAction>, keys: &[u32], down: bool| {
        let it: Box<dyn Iterator<Item = &u32>> = if down {
            Box::new(keys.iter())
        } else {
            Box::new(keys.iter().rev())
        };
        for k in it {
            acts.push(InputAction::Key { keysym: *k, down });
        }
    };
    let mut output = None;
    match action {
        Action::Screenshot => {
            let img = take_screenshot(app, shot, None).await?;
            return Ok((
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(img)),
                None,
            ));
        }
        Action::Zoom { region } => {
            let img = take_screenshot(app, shot, Some(*region)).await?;
            return Ok((
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(img)),
                None,
            ));
        }
        Action::Wait { duration } => {
            tokio::time::sleep(*duration).await;
            let img = take_screenshot(app, shot, None).await?;
            return Ok((
                None,
                Some(base64::engine::general_purpose::STANDARD.encode(img)),
                None,
            ));
        }
        Action::CursorPosition => acts.push(InputAction::Location),
        Action::Key { chords, .. } => {
            for c in chords {
                press(&mut acts, c, true);
                press(&mut acts, c, false);
            }
        }
        Action::Type { text } => acts.push(InputAction::Text(text.clone())),
        Action::MouseMove { at } => {
            let p = map(*at);
            pos = Some(p);
            acts.push(InputAction::MoveTo { x: p.0, y: p.1 });
        }
        Action::Click {
            button,
            count,
            at,
            modifiers,
        } => {
            if let Some(at) = at {
                let p = map(*at);
                pos = Some(p);
                acts.push(InputAction::MoveTo { x: p.0, y: p.1 });
            }
            press(&mut acts, modifiers, true);
            for _ in 0..*count {
                acts.push(InputAction::Button {
                    button: *button,
                    down: true,
                });
                acts.push(InputAction::Button {
                    button: *button,
                    down: false,
                });
            }
            press(&mut acts, modifiers, false);
        }
        Action::Drag { from, to } => {
            let (f, t) = (map(*from), map(*to));
            pos = Some(t);
            acts.push(InputAction::MoveTo { x: f.0, y: f.1 });
            acts.push(InputAction::Button {
                button: MouseButton::Left,
                down: true,
            });
            // Intermediate moves: pages that track dragging need to see motion, not a jump.
            for i in 1..=8 {
                let x = f.0 + (t.0 - f.0) * i / 8;
                let y = f.1 + (t.1 - f.1) * i / 8;
                acts.push(InputAction::MoveTo { x, y });
            }
            acts.push(InputAction::Button {
                button: MouseButton::Left,
                down: false,
            });
        }
        Action::MouseDown { at } | Action::MouseUp { at } => {
            if let Some(at) = at {
                let p = map(*at);
                pos = Some(p);
                acts.push(InputAction::MoveTo { x: p.0, y: p.1 });
            }
            acts.push(InputAction::Button {
                button: MouseButton::Left,
                down: matches!(action, Action::MouseDown { .. }),
            });
        }
        Action::Scroll {
            at,
            direction,
            amount,
            modifiers,
        } => {
            if let Some(at) = at {
                let p = map(*at);
                pos = Some(p);
                acts.push(InputAction::MoveTo { x: p.0, y: p.1 });
            }
            let n = *amount as i32;
            let (dx, dy) = match *direction {
                "up" => (0, -n),
                "down" => (0, n),
                "left" => (-n, 0),
                _ => (n, 0),
            };
            press(&mut acts, modifiers, true);
            acts.push(InputAction::Scroll { dx, dy });
            press(&mut acts, modifiers, false);
        }
        Action::HoldKey { keys, duration } => {
            press(&mut acts, keys, true);
            app.input
                .run_agent(generation, std::mem::take(&mut acts))
                .await
                .map_err(|e| input_err_for(app, e))?;
            tokio::select! {
                _ = tokio::time::sleep(*duration) => {}
                // Control changed: the injection thread has let go of the keys already.
                _ = app.input.changed_from(generation) => {
                    return Err(input_err_for(app, crate::input::InputError::Refused {
                        admitted: generation,
                        current: app.input.generation(),
                    }));
                }
            }
            press(&mut acts, keys, false);
        }
    }
    let at = app
        .input
        .run_agent(generation, acts)
        .await
        .map_err(|e| input_err_for(app, e))?;
    if matches!(action, Action::CursorPosition) {
        let (x, y) = to_declared(at, declared, screen);
        output = Some(format!("X={x},Y={y}"));
        pos = Some(at);
    }
    Ok((output, None, pos))
}

/// An injection error as the agent sees it: a control change is a 409 refusal (why, in the
/// words of the control state now), anything else the display's fault.
fn input_err_for(app: &App, e: crate::input::InputError) -> ApiError {
    if let crate::input::InputError::Refused { .. } = e {
        let why = app.control.lock().unwrap().agent_may_act().err();
        let msg = match why {
            Some(r) => format!("{}; the action was stopped part-way ({e})", r.0),
            None => e.to_string(),
        };
        return ApiError::new(StatusCode::CONFLICT, "control_refused", msg);
    }
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "input_failed",
        e.to_string(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: request body → Ok(action) or Err(substring of the 400 message).
    fn check(body: Value, want: Result<Action, &str>) {
        let got = parse_action(&body, (1024, 768));
        match (got, want) {
            (Ok(a), Ok(w)) => assert_eq!(a, w, "{body}"),
            (Err(e), Err(w)) => {
                assert_eq!(e.status, StatusCode::BAD_REQUEST);
                assert!(e.message.contains(w), "{body}: '{}' lacks '{w}'", e.message)
            }
            (g, w) => panic!(
                "{body}: got {g:?}, want {w:?}",
                g = g.map_err(|e| e.message)
            ),
        }
    }

    #[test]
    fn validation() {
        check(
            json!({"action": "left_click", "coordinate": [10, 20]}),
            Ok(Action::Click {
                button: MouseButton::Left,
                count: 1,
                at: Some((10, 20)),
                modifiers: vec![],
            }),
        );
        check(
            json!({"action": "triple_click"}),
            Ok(Action::Click {
                button: MouseButton::Left,
                count: 3,
                at: None,
                modifiers: vec![],
            }),
        );
        check(
            json!({"action": "left_click", "coordinate": [1, 2], "key": "shift"}),
            Ok(Action::Click {
                button: MouseButton::Left,
                count: 1,
                at: Some((1, 2)),
                modifiers: vec![0xffe1],
            }),
        );
        check(
            json!({"action": "fly"}),
            Err("action: unknown action 'fly'; expected one of key, type, mouse_move"),
        );
        check(json!({}), Err("action: missing; expected one of"));
        check(
            json!({"action": "mouse_move"}),
            Err("coordinate: required for mouse_move"),
        );
        check(
            json!({"action": "mouse_move", "coordinate": [1024, 5]}),
            Err("coordinate: [1024, 5] is off screen; the display is 1024x768"),
        );
        check(
            json!({"action": "mouse_move", "coordinate": [-1, 5]}),
            Err("off screen"),
        );
        check(
            json!({"action": "mouse_move", "coordinate": [1.5, 5]}),
            Err("integer pixels"),
        );
        check(
            json!({"action": "mouse_move", "coordinate": "1,2"}),
            Err("coordinate: expected [x, y]"),
        );
        check(
            json!({"action": "wait", "duration": -1}),
            Err("duration: must not be negative"),
        );
        check(
            json!({"action": "wait"}),
            Err("duration: required for wait"),
        );
        check(
            json!({"action": "hold_key", "text": "shift", "duration": 0.5}),
            Ok(Action::HoldKey {
                keys: vec![0xffe1],
                duration: Duration::from_millis(500),
            }),
        );
        check(
            json!({"action": "key", "text": "ctrl+bogus"}),
            Err("text: unknown key name 'bogus'"),
        );
        check(json!({"action": "key"}), Err("text: required for key"));
        check(
            json!({"action": "type", "text": 5}),
            Err("text: expected a string"),
        );
        check(
            json!({"action": "scroll", "scroll_direction": "sideways"}),
            Err("scroll_direction: unknown \"sideways\"; expected one of up, down, left, right"),
        );
        check(
            json!({"action": "scroll", "scroll_direction": "down", "scroll_amount": 2, "coordinate": [5, 5]}),
            Ok(Action::Scroll {
                at: Some((5, 5)),
                direction: "down",
                amount: 2,
                modifiers: vec![],
            }),
        );
        check(
            json!({"action": "left_click_drag", "coordinate": [5, 5]}),
            Err("start_coordinate: required for left_click_drag"),
        );
        check(
            json!({"action": "zoom", "region": [10, 10, 5, 20]}),
            Err("x1 < x2"),
        );
        check(
            json!({"action": "zoom", "region": [0, 0, 2000, 20]}),
            Err("off screen"),
        );
        check(
            json!({"action": "zoom", "region": [0, 0, 512, 384]}),
            Ok(Action::Zoom {
                region: [0, 0, 512, 384],
            }),
        );
    }

    #[test]
    fn coordinate_mapping_round_trips() {
        for (declared, screen) in [
            ((1024, 768), (1280, 800)),
            ((1280, 800), (1280, 800)),
            ((1366, 768), (1920, 1080)),
        ] {
            for p in [
                (0, 0),
                (declared.0 - 1, declared.1 - 1),
                (declared.0 / 2, declared.1 / 3),
            ] {
                let s = to_screen(p, declared, screen);
                assert!(s.0 >= 0 && s.0 < screen.0 as i32 && s.1 >= 0 && s.1 < screen.1 as i32);
                assert_eq!(
                    to_declared(s, declared, screen),
                    p,
                    "{declared:?} → {screen:?}"
                );
            }
        }
        assert_eq!(
            to_screen((512, 384), (1024, 768), (2048, 1536)),
            (1025, 769)
        );
    }
}
