//! The vendors' own tool-call shapes, taken verbatim and run through the one action path
//! (`computer::perform`): Anthropic's tool-use blocks (the `computer` tool and each member tool
//! of the computer toolset by its own name) on `POST /v1/anthropic/tool_use`, OpenAI's
//! `computer_call` items on `POST /v1/openai/computer_call`; and chapters, the coding agent's
//! marks on its own session (`POST /v1/chapters`, MCP tool `chapter`).
//!
//! Architecture Invariant: nothing here acts on the guest by itself. Every vendor action becomes
//! a `/v1/computer` action object and goes through `perform`, so control gating, the timeline,
//! thumbnails and the coordinate mapping are the same whoever's shape it came in.

use crate::app::App;
use crate::computer::{perform, ShotQuery, ACTIONS};
use crate::http::ApiError;
use axum::extract::{Query, State};
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use bytes::Bytes;
use porthole_proto::Actor;
use serde_json::{json, Map, Value};
use std::sync::Arc;

pub fn routes() -> Router<Arc<App>> {
    Router::new()
        .route("/v1/anthropic/tool_use", post(anthropic))
        .route("/v1/openai/computer_call", post(openai))
        .route("/v1/chapters", post(chapters))
}

/// Blocks in one Anthropic list, and `/v1/computer` actions one OpenAI item may expand to: a
/// model sends a handful per turn; a hostile caller must not turn one request into thousands of
/// actions (each a timeline event and two thumbnails) or gigabytes of screenshots.
pub const MAX_BLOCKS: usize = 32;
pub const MAX_ACTIONS: usize = 128;

fn bad(field: &str, msg: impl std::fmt::Display) -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "invalid_action",
        format!("{field}: {msg}"),
    )
}

/// A required string field of `o`; `path` names it in the error.
fn required_str<'a>(o: &'a Map<String, Value>, key: &str, path: &str) -> Result<&'a str, ApiError> {
    match o.get(key) {
        Some(Value::String(s)) => Ok(s.as_str()),
        None => Err(bad(path, "missing")),
        Some(_) => Err(bad(path, "expected a string")),
    }
}

fn body_json(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| bad("body", format!("not JSON: {e}")))
}

// ---------------------------------------------------------------------------------------------
// Anthropic

/// One tool-use block (`{"name", "input"}`, as the API returns it; `type`/`id` are ignored) as
/// a `/v1/computer` action: `computer` takes its input as is, a member tool is the action of
/// its name with the input as its fields. `at` names the block in errors (`[2].input`).
pub fn anthropic_action(block: &Value, at: &str) -> Result<Value, ApiError> {
    let o = block
        .as_object()
        .ok_or_else(|| bad(at, "expected a tool-use object {\"name\", \"input\"}"))?;
    let name = required_str(o, "name", &format!("{at}name"))?;
    let input = match o.get("input") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(m)) => m.clone(),
        Some(_) => return Err(bad(&format!("{at}input"), "expected an object")),
    };
    if name == "computer" {
        return Ok(Value::Object(input));
    }
    if !ACTIONS.contains(&name) {
        return Err(bad(
            &format!("{at}name"),
            format!(
                "unknown tool '{name}'; expected computer or a member tool: {}",
                ACTIONS.join(", ")
            ),
        ));
    }
    if let Some(a) = input.get("action").filter(|a| a.as_str() != Some(name)) {
        return Err(bad(
            &format!("{at}input.action"),
            format!("{a} contradicts the tool name '{name}' (leave it out)"),
        ));
    }
    let mut v = input;
    v.insert("action".into(), json!(name));
    Ok(Value::Object(v))
}

fn error_value(e: &ApiError) -> Value {
    json!({"error": {"code": e.code, "message": e.message}})
}

async fn anthropic(
    State(app): State<Arc<App>>,
    Query(q): Query<ShotQuery>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let v = body_json(&body)?;
    match &v {
        Value::Array(blocks) => {
            if blocks.is_empty() {
                return Err(bad(
                    "body",
                    "an empty list; send one tool-use block or more",
                ));
            }
            // Every block's shape is checked before any runs (a malformed block → 400, nothing
            // done); an action that then fails (off screen, refused by control) ends the list
            // there, its entry the error, as the contract says.
            let actions = blocks
                .iter()
                .enumerate()
                .map(|(i, b)| anthropic_action(b, &format!("[{i}].")))
                .collect::<Result<Vec<_>, _>>()?;
            let mut results = Vec::with_capacity(actions.len());
            for a in &actions {
                match perform(&app, a, &q).await {
                    Ok(r) => results.push(r),
                    Err(e) => {
                        results.push(error_value(&e));
                        break;
                    }
                }
            }
            Ok(Json(json!({ "results": results })))
        }
        _ => {
            let a = anthropic_action(&v, "")?;
            perform(&app, &a, &q).await.map(Json)
        }
    }
}

// ---------------------------------------------------------------------------------------------
// OpenAI

/// OpenAI's key names (as its computer-use reference maps them) to ours; the rest match
/// case-insensitively already (CTRL, SHIFT, TAB, HOME, ...).
const OPENAI_KEYS: &[(&str, &str)] = &[
    ("enter", "Return"),
    ("esc", "Escape"),
    ("arrowup", "Up"),
    ("arrowdown", "Down"),
    ("arrowleft", "Left"),
    ("arrowright", "Right"),
    ("pageup", "Page_Up"),
    ("pagedown", "Page_Down"),
    ("backspace", "BackSpace"),
    ("delete", "Delete"),
    ("capslock", "Caps_Lock"),
    ("option", "alt"),
    ("cmd", "super"),
    ("space", "space"),
    ("/", "slash"),
    ("\\", "backslash"),
];

fn openai_key(k: &str) -> String {
    let lower = k.to_ascii_lowercase();
    if let Some((_, ours)) = OPENAI_KEYS.iter().find(|(o, _)| *o == lower) {
        return ours.to_string();
    }
    // A single letter: its key, not the shifted keysym (CTRL+C means ctrl and c).
    if k.chars().count() == 1 {
        return lower;
    }
    k.to_string()
}

fn chord(keys: &Value, field: &str) -> Result<String, ApiError> {
    let arr = keys
        .as_array()
        .filter(|a| !a.is_empty())
        .ok_or_else(|| bad(field, "expected a non-empty list of key names"))?;
    let mut out = Vec::new();
    for (i, k) in arr.iter().enumerate() {
        let s = k
            .as_str()
            .filter(|s| !s.is_empty())
            .ok_or_else(|| bad(&format!("{field}[{i}]"), "expected a key name"))?;
        out.push(openai_key(s));
    }
    Ok(out.join("+"))
}

fn int(o: &Map<String, Value>, at: &str, f: &str) -> Result<i64, ApiError> {
    let v = o
        .get(f)
        .ok_or_else(|| bad(&format!("{at}.{f}"), "required"))?;
    v.as_i64()
        .or_else(|| v.as_f64().filter(|x| x.fract() == 0.0).map(|x| x as i64))
        .ok_or_else(|| bad(&format!("{at}.{f}"), "expected an integer"))
}

fn xy(o: &Map<String, Value>, at: &str) -> Result<Value, ApiError> {
    Ok(json!([int(o, at, "x")?, int(o, at, "y")?]))
}

/// Pixels of an OpenAI scroll per wheel notch (Chromium on X scrolls about this much a notch).
pub const SCROLL_PX_PER_NOTCH: i64 = 100;

/// One OpenAI computer action as `/v1/computer` actions (a drag or a two-axis scroll is more
/// than one). `at` names it in errors (`action`, `actions[3]`).
pub fn openai_actions(a: &Value, at: &str) -> Result<Vec<Value>, ApiError> {
    let o = a
        .as_object()
        .ok_or_else(|| bad(at, "expected an action object with a \"type\""))?;
    let ty = required_str(o, "type", &format!("{at}.type"))?;
    Ok(match ty {
        "click" => {
            let at_xy = xy(o, at)?;
            let button = o.get("button").and_then(Value::as_str).unwrap_or("left");
            let mods = o.get("keys").filter(|k| !k.is_null());
            let key = mods
                .map(|k| chord(k, &format!("{at}.keys")))
                .transpose()?;
            let click = |action: &str| {
                let mut v = json!({"action": action, "coordinate": at_xy});
                if let Some(k) = &key {
                    v["key"] = json!(k);
                }
                v
            };
            match button {
                "left" => vec![click("left_click")],
                "right" => vec![click("right_click")],
                "wheel" | "middle" => vec![click("middle_click")],
                // What a browser does with the mouse's back and forward buttons.
                "back" => vec![
                    json!({"action": "mouse_move", "coordinate": at_xy}),
                    json!({"action": "key", "text": "alt+Left"}),
                ],
                "forward" => vec![
                    json!({"action": "mouse_move", "coordinate": at_xy}),
                    json!({"action": "key", "text": "alt+Right"}),
                ],
                other => {
                    return Err(bad(
                        &format!("{at}.button"),
                        format!("unknown button '{other}'; expected left, right, wheel, back or forward"),
                    ))
                }
            }
        }
        "double_click" => vec![json!({"action": "double_click", "coordinate": xy(o, at)?})],
        "move" => vec![json!({"action": "mouse_move", "coordinate": xy(o, at)?})],
        "type" => {
            let t = o
                .get("text")
                .and_then(Value::as_str)
                .ok_or_else(|| bad(&format!("{at}.text"), "required, a string"))?;
            vec![json!({"action": "type", "text": t})]
        }
        "keypress" => {
            let keys = o
                .get("keys")
                .ok_or_else(|| bad(&format!("{at}.keys"), "required"))?;
            vec![json!({"action": "key", "text": chord(keys, &format!("{at}.keys"))?})]
        }
        "scroll" => {
            let at_xy = xy(o, at)?;
            let sx = o.get("scroll_x").map(|_| int(o, at, "scroll_x")).transpose()?.unwrap_or(0);
            let sy = o.get("scroll_y").map(|_| int(o, at, "scroll_y")).transpose()?.unwrap_or(0);
            let key = o
                .get("keys")
                .filter(|k| !k.is_null() && k.as_array().is_some_and(|a| !a.is_empty()))
                .map(|k| chord(k, &format!("{at}.keys")))
                .transpose()?;
            let mut out = vec![];
            for (px, neg, pos) in [(sy, "up", "down"), (sx, "left", "right")] {
                if px == 0 {
                    continue;
                }
                let notches = ((px.abs() + SCROLL_PX_PER_NOTCH / 2) / SCROLL_PX_PER_NOTCH).clamp(1, 100);
                let mut v = json!({"action": "scroll", "coordinate": at_xy,
                    "scroll_direction": if px < 0 { neg } else { pos }, "scroll_amount": notches});
                if let Some(k) = &key {
                    v["key"] = json!(k);
                }
                out.push(v);
            }
            if out.is_empty() {
                out.push(json!({"action": "mouse_move", "coordinate": at_xy}));
            }
            out
        }
        "drag" => {
            let path = o
                .get("path")
                .and_then(Value::as_array)
                .filter(|p| p.len() >= 2)
                .ok_or_else(|| bad(&format!("{at}.path"), "expected at least two points [{x, y}, ...]"))?;
            let mut pts = Vec::with_capacity(path.len());
            for (i, p) in path.iter().enumerate() {
                let po = p
                    .as_object()
                    .ok_or_else(|| bad(&format!("{at}.path[{i}]"), "expected {x, y}"))?;
                pts.push(xy(po, &format!("{at}.path[{i}]"))?);
            }
            let mut out = vec![json!({"action": "left_mouse_down", "coordinate": pts[0]})];
            for p in &pts[1..] {
                out.push(json!({"action": "mouse_move", "coordinate": p}));
            }
            out.push(json!({"action": "left_mouse_up", "coordinate": pts[pts.len() - 1]}));
            out
        }
        "screenshot" => vec![],
        // OpenAI's wait has no duration; its reference waits about a second.
        "wait" => vec![json!({"action": "wait", "duration": 1})],
        other => {
            return Err(bad(
                &format!("{at}.type"),
                format!("unknown action '{other}'; expected click, double_click, scroll, type, keypress, drag, move, screenshot or wait"),
            ))
        }
    })
}

async fn openai(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = body_json(&body)?;
    let item = v
        .as_object()
        .ok_or_else(|| bad("body", "expected a computer_call item"))?;
    if let Some(t) = item
        .get("type")
        .filter(|t| t.as_str() != Some("computer_call"))
    {
        return Err(bad("type", format!("{t}: expected \"computer_call\"")));
    }
    let call_id = match item.get("call_id") {
        Some(Value::String(s)) if !s.is_empty() => s.clone(),
        None | Some(Value::Null) => return Err(bad("call_id", "missing")),
        Some(_) => return Err(bad("call_id", "expected a non-empty string")),
    };
    let mut actions = vec![];
    match (
        item.get("action").filter(|a| !a.is_null()),
        item.get("actions").filter(|a| !a.is_null()),
    ) {
        (Some(a), None) => actions.extend(openai_actions(a, "action")?),
        (None, Some(Value::Array(list))) if !list.is_empty() => {
            for (i, a) in list.iter().enumerate() {
                actions.extend(openai_actions(a, &format!("actions[{i}]"))?);
            }
        }
        (None, Some(_)) => return Err(bad("actions", "expected a non-empty list")),
        (Some(_), Some(_)) => return Err(bad("action", "send either action or actions, not both")),
        (None, None) => return Err(bad("action", "missing (or actions[])")),
    }
    if actions.len() > MAX_ACTIONS {
        return Err(bad(
            "actions",
            format!(
                "{} steps (a drag's path counts each point); at most {MAX_ACTIONS} in one item",
                actions.len()
            ),
        ));
    }
    // Everything checked before anything runs: a bad step later must not leave the first done
    // (or a drag's button held).
    for a in &actions {
        crate::computer::parse_action(a, app.cfg.display_size)?;
    }
    let quiet = ShotQuery {
        settle: Some(0),
        ..Default::default()
    };
    for a in &actions {
        perform(&app, a, &quiet).await?;
    }
    // The answer always carries the screen as it is now.
    let shot = perform(
        &app,
        &json!({"action": "screenshot"}),
        &ShotQuery::default(),
    )
    .await?;
    let png = shot["base64_image"].as_str().unwrap_or_default();
    let checks = item
        .get("pending_safety_checks")
        .cloned()
        .unwrap_or_else(|| json!([]));
    Ok((
        StatusCode::OK,
        Json(json!({
            "type": "computer_call_output",
            "call_id": call_id,
            "acknowledged_safety_checks": checks,
            "output": {"type": "computer_screenshot", "image_url": format!("data:image/png;base64,{png}")},
        })),
    ))
}

// ---------------------------------------------------------------------------------------------
// Chapters

/// Marks a chapter: a `chapter` event with the title, the description and a screenshot (a
/// full-size JPEG next to the session's thumbnails, named in the event's data).
pub async fn chapter(app: &Arc<App>, v: &Value) -> Result<porthole_proto::Event, ApiError> {
    let o = v
        .as_object()
        .ok_or_else(|| bad("body", "expected {\"title\", \"description\"?}"))?;
    let title = match o.get("title") {
        Some(Value::String(s)) if !s.trim().is_empty() && s.chars().count() <= 200 => {
            s.trim().to_string()
        }
        Some(Value::String(s)) if s.trim().is_empty() => {
            return Err(bad("title", "must not be empty"))
        }
        Some(Value::String(_)) => return Err(bad("title", "at most 200 characters")),
        None | Some(Value::Null) => return Err(bad("title", "required")),
        Some(_) => return Err(bad("title", "expected a string")),
    };
    let description = match o.get("description") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 4000 => Some(s.clone()),
        Some(Value::String(_)) => return Err(bad("description", "at most 4000 characters")),
        Some(_) => return Err(bad("description", "expected a string")),
    };
    let proves = match o.get("proves") {
        None | Some(Value::Null) => None,
        Some(Value::String(s)) if s.chars().count() <= 1000 => Some(s.clone()),
        Some(Value::String(_)) => return Err(bad("proves", "at most 1000 characters")),
        Some(_) => return Err(bad("proves", "expected a string")),
    };
    let id = format!(
        "chapter-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros())
            .unwrap_or(0)
    );
    let shot = crate::computer::jpeg_screenshot(app).await;
    let screenshot = match shot {
        Some(bytes) => {
            let dir = crate::recorder::recordings_dir(&app.cfg.data_dir)
                .join(app.timeline.session_id())
                .join("thumbs");
            let _ = tokio::fs::create_dir_all(&dir).await;
            let name = format!("{id}.jpg");
            match tokio::fs::write(dir.join(&name), bytes).await {
                Ok(()) => Some(name),
                Err(_) => None,
            }
        }
        None => None,
    };
    let mut data = json!({"title": title, "screenshot": screenshot});
    if let Some(d) = description {
        data["description"] = json!(d);
    }
    if let Some(p) = proves {
        data["proves"] = json!(p);
    }
    Ok(app.timeline.emit(Actor::Agent, "chapter", data))
}

async fn chapters(
    State(app): State<Arc<App>>,
    body: Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = body_json(&body)?;
    let ev = chapter(&app, &v).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"chapter": serde_json::to_value(ev).unwrap_or_default()})),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: a vendor's call, and the `/v1/computer` actions it becomes (or the error).
    #[test]
    fn anthropic_blocks() {
        fn check(block: Value, want: Result<Value, &str>) {
            let got = anthropic_action(&block, "");
            match (got, want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{block}"),
                (Err(e), Err(w)) => assert!(e.message.starts_with(w), "{block}: {}", e.message),
                (g, w) => panic!("{block}: got {:?}, want {w:?}", g.map_err(|e| e.message)),
            }
        }
        check(
            json!({"type": "tool_use", "id": "toolu_1", "name": "computer", "input": {"action": "left_click", "coordinate": [5, 6]}}),
            Ok(json!({"action": "left_click", "coordinate": [5, 6]})),
        );
        check(
            json!({"name": "left_click", "input": {"coordinate": [5, 6]}}),
            Ok(json!({"action": "left_click", "coordinate": [5, 6]})),
        );
        check(
            json!({"name": "screenshot"}),
            Ok(json!({"action": "screenshot"})),
        );
        check(
            json!({"name": "scroll", "input": {"coordinate": [1, 2], "scroll_direction": "down", "scroll_amount": 2}}),
            Ok(
                json!({"action": "scroll", "coordinate": [1, 2], "scroll_direction": "down", "scroll_amount": 2}),
            ),
        );
        check(
            json!({"name": "bash", "input": {}}),
            Err("name: unknown tool 'bash'"),
        );
        check(json!({"input": {}}), Err("name: missing"));
        check(
            json!({"name": "type", "input": "hi"}),
            Err("input: expected an object"),
        );
        check(
            json!({"name": "type", "input": {"action": "key", "text": "a"}}),
            Err("input.action: \"key\" contradicts"),
        );
    }

    #[test]
    fn a_drag_path_counts_each_point() {
        let path: Vec<Value> = (0..200).map(|i| json!({"x": i, "y": i})).collect();
        let a = openai_actions(&json!({"type": "drag", "path": path}), "action").unwrap();
        assert!(
            a.len() > MAX_ACTIONS,
            "the handler refuses this many: {}",
            a.len()
        );
    }

    #[test]
    fn openai_actions_map() {
        fn check(a: Value, want: Result<Value, &str>) {
            match (openai_actions(&a, "action"), want) {
                (Ok(g), Ok(w)) => assert_eq!(Value::Array(g), w, "{a}"),
                (Err(e), Err(w)) => assert!(e.message.starts_with(w), "{a}: {}", e.message),
                (g, w) => panic!("{a}: got {:?}, want {w:?}", g.map_err(|e| e.message)),
            }
        }
        check(
            json!({"type": "click", "x": 10, "y": 20, "button": "left"}),
            Ok(json!([{"action": "left_click", "coordinate": [10, 20]}])),
        );
        check(
            json!({"type": "click", "x": 10, "y": 20, "button": "wheel"}),
            Ok(json!([{"action": "middle_click", "coordinate": [10, 20]}])),
        );
        check(
            json!({"type": "click", "x": 1, "y": 2, "button": "back"}),
            Ok(
                json!([{"action": "mouse_move", "coordinate": [1, 2]}, {"action": "key", "text": "alt+Left"}]),
            ),
        );
        check(
            json!({"type": "click", "x": 1, "y": 2, "button": "thumb"}),
            Err("action.button: unknown button 'thumb'"),
        );
        check(json!({"type": "click", "y": 2}), Err("action.x: required"));
        check(
            json!({"type": "double_click", "x": 3, "y": 4}),
            Ok(json!([{"action": "double_click", "coordinate": [3, 4]}])),
        );
        check(
            json!({"type": "type", "text": "Hi!"}),
            Ok(json!([{"action": "type", "text": "Hi!"}])),
        );
        check(
            json!({"type": "keypress", "keys": ["CTRL", "C"]}),
            Ok(json!([{"action": "key", "text": "CTRL+c"}])),
        );
        check(
            json!({"type": "keypress", "keys": ["ENTER"]}),
            Ok(json!([{"action": "key", "text": "Return"}])),
        );
        check(
            json!({"type": "keypress", "keys": []}),
            Err("action.keys: expected a non-empty list"),
        );
        check(
            json!({"type": "scroll", "x": 5, "y": 6, "scroll_x": 0, "scroll_y": 250}),
            Ok(
                json!([{"action": "scroll", "coordinate": [5, 6], "scroll_direction": "down", "scroll_amount": 3}]),
            ),
        );
        check(
            json!({"type": "scroll", "x": 5, "y": 6, "scroll_x": -40, "scroll_y": -100, "keys": ["SHIFT"]}),
            Ok(json!([
                {"action": "scroll", "coordinate": [5, 6], "scroll_direction": "up", "scroll_amount": 1, "key": "SHIFT"},
                {"action": "scroll", "coordinate": [5, 6], "scroll_direction": "left", "scroll_amount": 1, "key": "SHIFT"}
            ])),
        );
        check(
            json!({"type": "drag", "path": [{"x": 1, "y": 1}, {"x": 5, "y": 5}, {"x": 9, "y": 9}]}),
            Ok(json!([
                {"action": "left_mouse_down", "coordinate": [1, 1]},
                {"action": "mouse_move", "coordinate": [5, 5]},
                {"action": "mouse_move", "coordinate": [9, 9]},
                {"action": "left_mouse_up", "coordinate": [9, 9]}
            ])),
        );
        check(
            json!({"type": "drag", "path": [{"x": 1, "y": 1}]}),
            Err("action.path: expected at least two points"),
        );
        check(
            json!({"type": "drag", "path": [{"x": 1, "y": 1}, {"x": 2}]}),
            Err("action.path[1].y: required"),
        );
        check(
            json!({"type": "move", "x": 7, "y": 8}),
            Ok(json!([{"action": "mouse_move", "coordinate": [7, 8]}])),
        );
        check(json!({"type": "screenshot"}), Ok(json!([])));
        check(
            json!({"type": "wait"}),
            Ok(json!([{"action": "wait", "duration": 1}])),
        );
        check(
            json!({"type": "teleport"}),
            Err("action.type: unknown action 'teleport'"),
        );
        check(json!({"x": 1}), Err("action.type: missing"));
    }
}
