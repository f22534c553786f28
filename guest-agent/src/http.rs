//! The HTTP API (spec: `guest-agent/openapi.yaml`). One small handler per endpoint; each turns
//! its request into a call on [`App`] and its errors into `{"error": {"code", "message"}}`.

use crate::app::{attach_viewer, App};
use crate::control::Human;
use crate::events::new_session_id;
use crate::stream::{StreamError, StreamHub};
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use futures_util::Stream;
use porthole_proto::{
    Actor, ControlAction, ErrorBody, ErrorDetail, EventPage, Health, HealthStatus,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::sync::Arc;
use subtle::ConstantTimeEq;

pub const VIEWER_HTML: &str = include_str!("../static/viewer.html");
/// Request bodies larger than this are refused (413): SDP offers are a few KiB, actions less.
pub const MAX_BODY: usize = 1 << 20;

/// An error as the API reports it.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.to_string(),
                message: self.message,
            },
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<StreamError> for ApiError {
    fn from(e: StreamError) -> Self {
        match e {
            StreamError::BadOffer(m) => ApiError::new(StatusCode::BAD_REQUEST, "bad_sdp", m),
            StreamError::Busy(code, m) => ApiError::new(StatusCode::SERVICE_UNAVAILABLE, code, m),
            StreamError::NoViewer(id) => ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no viewer {id}"),
            ),
            other => ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "stream_error",
                other.to_string(),
            ),
        }
    }
}

type AppState = State<Arc<App>>;

/// A request body that must be JSON (400 naming the parse error otherwise).
fn json_body(body: &[u8]) -> Result<Value, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("body is not JSON: {e}")))
}

pub fn router(app: Arc<App>) -> Router {
    let authed = Router::new()
        .route("/v1/whep", post(whep_create))
        .route("/v1/whep/{id}", delete(whep_delete).patch(whep_patch))
        .route("/v1/control", get(control_get).post(control_post))
        .route("/v1/display", get(display_get).post(display_post))
        .route("/v1/events", get(events_get))
        .route("/v1/events/stream", get(events_stream))
        .route(
            "/v1/environment",
            get(environment_get).post(environment_post),
        )
        .route(
            "/v1/environment/terminals/{name}/restart",
            post(terminal_restart),
        )
        .route("/v1/recordings", get(recordings_list))
        .route("/v1/recordings/{id}/video", get(recording_video))
        .route("/v1/recordings/{id}/events", get(recording_events))
        .route("/v1/recordings/{id}/thumbs/{name}", get(recording_thumb))
        .route("/v1/sessions", post(session_new))
        .route("/v1/sessions/current", get(session_current))
        .merge(crate::computer::routes())
        .merge(crate::vendors::routes())
        .merge(
            Router::new()
                .nest_service("/mcp", crate::mcp::service(app.clone()))
                .layer(middleware::from_fn(mcp_json_guard)),
        )
        .layer(middleware::from_fn_with_state(app.clone(), auth));
    Router::new()
        .route("/v1/health", get(health))
        .route("/viewer", get(viewer))
        .merge(authed)
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such endpoint; see guest-agent/openapi.yaml",
            )
        })
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .layer(middleware::from_fn_with_state(app.clone(), json_errors))
        .with_state(app)
}

/// The MCP transport answers a JSON body it cannot parse with 415, as if the content type
/// were wrong: a body that says `application/json` and is not JSON is the caller's 400 here,
/// like on every other endpoint. (Bounded by the body limit, which MCP applies too.)
async fn mcp_json_guard(req: Request, next: Next) -> Response {
    let says_json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim_start()
                .to_ascii_lowercase()
                .starts_with("application/json")
        });
    if req.method() != axum::http::Method::POST || !says_json {
        return next.run(req).await;
    }
    let (parts, body) = req.into_parts();
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    let mut over = 0usize;
    // Read whole: an answer sent while the client still writes is often lost to a reset
    // (seen with a 2 MiB body under load). Past the limit the rest is read and dropped, up to
    // a bound, so the caller gets its 413.
    while let Some(chunk) = futures_util::StreamExt::next(&mut stream).await {
        let Ok(chunk) = chunk else { break };
        if over > 0 || bytes.len() + chunk.len() > MAX_BODY {
            over += chunk.len();
            if over > 16 * MAX_BODY {
                break;
            }
        } else {
            bytes.extend_from_slice(&chunk);
        }
    }
    if over > 0 {
        return ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "payload_too_large",
            format!("body over {MAX_BODY} bytes"),
        )
        .into_response();
    }
    if let Err(e) = serde_json::from_slice::<serde::de::IgnoredAny>(&bytes) {
        return ApiError::bad_request(format!("body is not JSON: {e}")).into_response();
    }
    next.run(Request::from_parts(parts, Body::from(bytes)))
        .await
}

/// Who is calling, decided by which token the request carries. Handlers that act differently
/// for the coding agent (exec while a human holds control) read it from the request's
/// extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Principal {
    /// The host user through the app or the CLI: trusted, reaches everything.
    Operator,
    /// The coding agent inside the machine: hostile by assumption.
    Agent,
}

/// What the agent token may reach. Everything that would let the coding agent act as the human
/// (control changes, WHEP viewers and their input, the display, secrets and the environment,
/// sessions, recordings) is the operator's alone.
pub fn agent_may(method: &axum::http::Method, path: &str) -> bool {
    use axum::http::Method;
    if path == "/mcp" || path.starts_with("/mcp/") {
        return true;
    }
    matches!(
        (method.clone(), path),
        (Method::POST, "/v1/computer")
            | (Method::GET, "/v1/screenshot")
            | (Method::POST, "/v1/exec")
            | (Method::GET, "/v1/events")
            | (Method::GET, "/v1/events/stream")
            | (Method::GET, "/v1/control")
            | (Method::POST, "/v1/chapters")
            | (Method::POST, "/v1/anthropic/tool_use")
            | (Method::POST, "/v1/openai/computer_call")
    )
}

fn bearer(headers: &HeaderMap) -> &str {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        // The scheme name is case-insensitive (RFC 7235).
        .and_then(|v| {
            v.get(..7)
                .filter(|p| p.eq_ignore_ascii_case("bearer "))
                .map(|_| &v[7..])
        })
        .unwrap_or("")
}

/// Which principal a token names, in constant time for both comparisons (a timing side
/// channel must not reveal either token byte by byte, nor which one was close).
pub fn principal_of(given: &str, operator: &str, agent: Option<&str>) -> Option<Principal> {
    if given.is_empty() {
        return None;
    }
    let op = bool::from(given.as_bytes().ct_eq(operator.as_bytes()));
    let ag = agent.is_some_and(|a| bool::from(given.as_bytes().ct_eq(a.as_bytes())));
    match (op, ag) {
        (true, _) => Some(Principal::Operator),
        (false, true) => Some(Principal::Agent),
        _ => None,
    }
}

async fn auth(State(app): AppState, mut req: Request, next: Next) -> Response {
    let given = bearer(req.headers());
    let Some(who) = principal_of(given, &app.cfg.token, app.cfg.agent_token.as_deref()) else {
        let msg = if given.is_empty() {
            "missing Authorization: Bearer <token>"
        } else {
            "wrong token"
        };
        return ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", msg).into_response();
    };
    if who == Principal::Agent && !agent_may(req.method(), req.uri().path()) {
        return ApiError::new(
            StatusCode::FORBIDDEN,
            "wrong_scope",
            format!(
                "{} {} needs the operator's token; the agent token reaches computer use, screenshot, exec, MCP, events, GET /v1/control and chapters",
                req.method(),
                req.uri().path()
            ),
        )
        .into_response();
    }
    req.extensions_mut().insert(who);
    next.run(req).await
}

/// Rejections produced by axum itself (bad JSON, body too large, wrong method) come as plain
/// text; rewrite them into the one error shape every client parses.
/// Also the last line of secret redaction for errors: messages often quote the request.
async fn json_errors(State(app): AppState, req: Request, next: Next) -> Response {
    let res = next.run(req).await;
    let status = res.status();
    if status.as_u16() < 400 {
        return res;
    }
    let is_json = res
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    let (parts, body) = res.into_parts();
    let body = axum::body::to_bytes(body, 256 * 1024)
        .await
        .unwrap_or_default();
    let text = app
        .timeline
        .redactor
        .redact(String::from_utf8_lossy(&body).trim());
    if is_json {
        let mut res = Response::from_parts(parts, Body::from(text));
        res.headers_mut().remove(header::CONTENT_LENGTH);
        return res;
    }
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
        StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST => "bad_request",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::NOT_ACCEPTABLE => "not_acceptable",
        StatusCode::UNAUTHORIZED => "unauthorized",
        StatusCode::FORBIDDEN => "wrong_scope",
        _ => "error",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    // Unprocessable JSON is still the client's fault: keep it a plain 400 as documented.
    let status = if status == StatusCode::UNPROCESSABLE_ENTITY {
        StatusCode::BAD_REQUEST
    } else {
        status
    };
    ApiError::new(status, code, message).into_response()
}

async fn health(State(app): AppState) -> Json<Health> {
    let mut problems = Vec::new();
    // The screenshotter's persistent connection: opening and closing one per call would make
    // an Xvfb with no other client reset itself each time.
    let a = app.clone();
    let size = tokio::task::spawn_blocking(move || a.screenshots.screen_size()).await;
    let display_info = match size {
        Ok(Ok((w, h))) => Some(porthole_proto::DisplayInfo {
            name: app.cfg.display.clone(),
            width: w,
            height: h,
        }),
        Ok(Err(e)) => {
            problems.push(format!("display {} unreachable: {e}", app.cfg.display));
            None
        }
        Err(e) => {
            problems.push(format!("display check failed: {e}"));
            None
        }
    };
    for p in app.hub.pipelines() {
        if let Some(msg) = p.problem() {
            problems.push(format!("{} stream: {msg}", p.codec().name()));
        }
    }
    problems.extend(crate::computer::health_problems(&app));
    Json(Health {
        status: if problems.is_empty() {
            HealthStatus::Ok
        } else {
            HealthStatus::Degraded
        },
        version: env!("CARGO_PKG_VERSION").to_string(),
        problems,
        session_id: Some(app.timeline.session_id()),
        display: display_info,
    })
}

async fn viewer() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        VIEWER_HTML,
    )
}

async fn whep_create(
    State(app): AppState,
    Query(q): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    body: String,
) -> Result<Response, ApiError> {
    // A grid tile asks for a lower rate: it gets its own (cheaper) encode at that rate.
    let max_fps = match q.get("max_fps") {
        None => None,
        Some(v) => match v.parse::<u32>() {
            Ok(f) if (1..=120).contains(&f) => Some(f),
            _ => {
                return Err(ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    format!(
                        "max_fps={v}: expected a whole number of frames per second from 1 to 120"
                    ),
                ))
            }
        },
    };
    if let Some(ct) = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
    {
        if !ct.starts_with("application/sdp") {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                format!("send the offer as Content-Type: application/sdp, not {ct}"),
            ));
        }
    }
    if !body.trim_start().starts_with("v=0") {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "bad_sdp",
            "the body is not an SDP offer (it must start with v=0)",
        ));
    }
    // Negotiation runs in its own task: a panic deep in SDP handling on hostile input must cost
    // this one request, not the agent.
    let a = app.clone();
    let viewer = tokio::spawn(async move { a.hub.add_viewer(body, max_fps).await })
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                "bad_sdp",
                "the offer could not be processed",
            )
        })??;
    attach_viewer(app.clone(), viewer.clone());
    let answer = StreamHub::answer_sdp(&viewer).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "stream_error",
            "no answer",
        )
    })?;
    app.timeline.emit(Actor::System, "stream", json!({"viewer": viewer.id, "state": "offered", "codec": viewer.codec.name(), "fps": viewer.fps, "viewers": app.hub.viewer_count()}));
    let location = format!("/v1/whep/{}", viewer.id);
    let mut res = Response::new(Body::from(answer));
    *res.status_mut() = StatusCode::CREATED;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    h.insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("ascii id"),
    );
    Ok(res)
}

async fn whep_delete(State(app): AppState, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    if app.drop_viewer(&id).await {
        Ok(StatusCode::OK)
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no viewer {id} (already closed?)"),
        ))
    }
}

/// Trickle ICE is not needed (the answer carries every candidate); say so plainly.
async fn whep_patch() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "trickle_unsupported",
        "trickle ICE is not supported; send a complete offer",
    )
}

async fn control_get(State(app): AppState) -> Json<porthole_proto::ControlState> {
    Json(app.control.lock().unwrap().state())
}

async fn control_post(
    State(app): AppState,
    body: axum::body::Bytes,
) -> Result<Json<porthole_proto::ControlState>, ApiError> {
    let v = json_body(&body)?;
    let action = v.get("action").and_then(Value::as_str).ok_or_else(|| {
        ApiError::bad_request(format!(
            "action: missing; expected one of {}",
            ControlAction::NAMES.join(", ")
        ))
    })?;
    let action: ControlAction = serde_json::from_value(json!(action)).map_err(|_| {
        ApiError::bad_request(format!(
            "action: unknown '{action}'; expected one of {}",
            ControlAction::NAMES.join(", ")
        ))
    })?;
    Ok(Json(app.apply_control(action, Human::Api, Actor::Human)))
}

impl From<crate::display::DisplayError> for ApiError {
    fn from(e: crate::display::DisplayError) -> Self {
        use crate::display::DisplayError as E;
        let (status, code) = match &e {
            E::OutOfRange(..) => (StatusCode::BAD_REQUEST, "bad_request"),
            E::Fixed(_) => (StatusCode::CONFLICT, "display_fixed"),
            E::X { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "display_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

async fn display_get(State(app): AppState) -> Result<Json<porthole_proto::DisplayState>, ApiError> {
    let display = app.cfg.display.clone();
    let info = tokio::task::spawn_blocking(move || crate::display::info(&display))
        .await
        .expect("display task panicked")?;
    Ok(Json(info))
}

/// Resizes the guest's screen for the agent: refused, like its actions, while a human holds
/// control (their viewer drives the size then) or the agent is paused.
async fn display_post(
    State(app): AppState,
    body: axum::body::Bytes,
) -> Result<Json<porthole_proto::DisplayState>, ApiError> {
    let v = json_body(&body)?;
    let dim = |k: &str| {
        v.get(k)
            .and_then(Value::as_u64)
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| ApiError::bad_request(format!("{k}: expected a whole number of pixels")))
    };
    let (w, h) = (dim("width")?, dim("height")?);
    crate::display::normalize(w, h)?;
    if let Err(r) = app.control.lock().unwrap().agent_may_act() {
        return Err(ApiError::new(StatusCode::CONFLICT, "control_refused", r.0));
    }
    let (_, after) = app.set_display(w, h, Actor::Agent, json!("api")).await?;
    Ok(Json(after))
}

#[derive(Deserialize)]
struct EventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
}

async fn events_get(State(app): AppState, Query(q): Query<EventsQuery>) -> Json<EventPage> {
    let (events, next) = app
        .timeline
        .page(q.after, q.limit.unwrap_or(1000).clamp(1, 10_000));
    Json(EventPage { events, next })
}

async fn events_stream(
    State(app): AppState,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<SseEvent, std::convert::Infallible>>>, ApiError> {
    let Some(slot) = crate::app::Slot::take(&app.sse_open, app.cfg.limits.max_sse) else {
        return Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_subscribers",
            format!(
                "{} event streams are open (--max-sse {}): close one, or poll GET /v1/events",
                app.cfg.limits.max_sse, app.cfg.limits.max_sse
            ),
        ));
    };
    // Subscribe before reading the backlog so nothing falls between the two. The backlog and
    // any stretch the subscription lagged over are read from the timeline a page at a time
    // (memory, else the file's index): a subscriber costs one page, not the session.
    let mut rx = app.timeline.subscribe();
    let mut last = q.after;
    let stream = async_stream(move |tx| async move {
        let _slot = slot;
        loop {
            loop {
                let (page, _) = app.timeline.page(last, 1000);
                if page.is_empty() {
                    break;
                }
                for e in page {
                    last = e.seq;
                    if tx.send(to_sse(&e)).await.is_err() {
                        return;
                    }
                }
            }
            // Live: the next event, or a gap (lagged, or emitted while paging) to page over.
            loop {
                match rx.recv().await {
                    Ok(e) if e.seq == last + 1 => {
                        last = e.seq;
                        if tx.send(to_sse(&e)).await.is_err() {
                            return;
                        }
                    }
                    Ok(e) if e.seq > last => break,
                    // A new session (seq from 1 again): read it from its start.
                    Ok(e) if e.seq == 1 => {
                        last = 0;
                        break;
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => break,
                    Err(_) => return,
                }
            }
        }
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}

fn to_sse(e: &porthole_proto::Event) -> Result<SseEvent, std::convert::Infallible> {
    Ok(SseEvent::default()
        .id(e.seq.to_string())
        .event(e.kind.clone())
        .data(serde_json::to_string(e).unwrap_or_default()))
}

/// A stream fed by a task through a small channel (no macro crate needed).
fn async_stream<T, F, Fut>(f: F) -> impl Stream<Item = T>
where
    T: Send + 'static,
    F: FnOnce(tokio::sync::mpsc::Sender<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(f(tx));
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

fn session_json(app: &App) -> Value {
    json!({
        "id": app.timeline.session_id(),
        "started_at_unix_ms": app.timeline.started_at_unix_ms(),
        "t_ms": app.timeline.now_ms(),
        "recording": app.cfg.record,
    })
}

async fn session_new(State(app): AppState) -> Result<(StatusCode, Json<Value>), ApiError> {
    let old = app.timeline.session_id();
    if app.cfg.record {
        crate::recorder::finish_current(&app);
    }
    app.timeline.restart(new_session_id());
    app.timeline.emit(
        Actor::System,
        "session",
        json!({"state": "started", "previous": old}),
    );
    if app.cfg.record
        && !app
            .recorder_on
            .swap(true, std::sync::atomic::Ordering::SeqCst)
    {
        crate::recorder::spawn(app.clone())
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "recording_failed", e))?;
    }
    Ok((StatusCode::CREATED, Json(session_json(&app))))
}

async fn session_current(State(app): AppState) -> Json<Value> {
    Json(session_json(&app))
}

async fn environment_get(State(app): AppState) -> Json<Value> {
    let mut v = serde_json::to_value(app.env.lock().unwrap().clone()).unwrap_or_default();
    // Log tails are joined from separately redacted pieces: redact the whole once more.
    app.timeline.redactor.redact_value(&mut v);
    Json(v)
}

/// `{"environment": {...}, "secrets": {"NAME": "value"}, "workspace"?: "/path"}`.
async fn environment_post(
    State(app): AppState,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let v = json_body(&body)?;
    let obj = v
        .as_object()
        .ok_or_else(|| ApiError::bad_request("body: expected an object with \"environment\""))?;
    for k in obj.keys() {
        if !["environment", "secrets", "workspace"].contains(&k.as_str()) {
            return Err(ApiError::bad_request(format!(
                "{k}: unknown field; expected environment, secrets, workspace"
            )));
        }
    }
    let env_v = obj
        .get("environment")
        .ok_or_else(|| ApiError::bad_request("environment: missing required field"))?;
    let problems = porthole_envfile::validate_value(porthole_envfile::Kind::Porthole, env_v);
    if !problems.is_empty() {
        let lines: Vec<String> = problems
            .iter()
            .map(|p| format!("environment.{p}"))
            .collect();
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid_environment",
            lines.join("; "),
        ));
    }
    let env: porthole_envfile::PortholeEnvironment = serde_json::from_value(env_v.clone())
        .map_err(|e| ApiError::bad_request(format!("environment: {e}")))?;
    let mut secrets = std::collections::HashMap::new();
    if let Some(s) = obj.get("secrets") {
        let so = s
            .as_object()
            .ok_or_else(|| ApiError::bad_request("secrets: expected an object of NAME: value"))?;
        for (k, val) in so {
            // Never echo the value back, even in an error.
            let val = val
                .as_str()
                .ok_or_else(|| ApiError::bad_request(format!("secrets.{k}: expected a string")))?;
            secrets.insert(k.clone(), val.to_string());
        }
    }
    let missing: Vec<&String> = env
        .secrets
        .iter()
        .filter(|n| !secrets.contains_key(*n) && !app.secrets.lock().unwrap().contains_key(*n))
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::bad_request(format!(
            "secrets: the environment needs {missing:?}, which were not given"
        )));
    }
    let ws = match obj.get("workspace").and_then(Value::as_str) {
        Some(w) => std::path::PathBuf::from(w),
        None => app
            .cfg
            .workspace
            .clone()
            .unwrap_or_else(|| std::env::current_dir().unwrap_or_else(|_| "/".into())),
    };
    if !ws.is_dir() {
        return Err(ApiError::bad_request(format!(
            "workspace: {} is not a directory",
            ws.display()
        )));
    }
    let names: Vec<String> = secrets.keys().cloned().collect();
    app.add_secrets(secrets);
    crate::environment::apply(app.clone(), env, ws);
    app.timeline.emit(
        Actor::System,
        "step",
        json!({"step": "environment", "state": "applied", "secrets": names}),
    );
    let mut v = serde_json::to_value(app.env.lock().unwrap().clone()).unwrap_or_default();
    app.timeline.redactor.redact_value(&mut v);
    Ok((StatusCode::ACCEPTED, Json(v)))
}

async fn terminal_restart(
    State(app): AppState,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    crate::environment::restart_terminal(&app, &name)
        .await
        .map_err(|e| ApiError::new(StatusCode::NOT_FOUND, "not_found", e))?;
    Ok(StatusCode::OK)
}

async fn recordings_list(State(app): AppState) -> Json<Value> {
    Json(json!({"recordings": crate::recorder::list(&app)}))
}

fn recording_dir(app: &App, id: &str) -> Result<std::path::PathBuf, ApiError> {
    let dir = crate::recorder::recordings_dir(&app.cfg.data_dir).join(id);
    if !crate::recorder::valid_id(id) || !dir.join("meta.json").exists() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no recording {id}"),
        ));
    }
    Ok(dir)
}

#[derive(Deserialize)]
struct PartQuery {
    part: Option<usize>,
}

async fn recording_video(
    State(app): AppState,
    Path(id): Path<String>,
    Query(q): Query<PartQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    use tokio::io::{AsyncReadExt, AsyncSeekExt};
    let dir = recording_dir(&app, &id)?;
    let part = q.part.unwrap_or(1);
    let path = crate::recorder::part_path(&dir, part);
    let mut f = tokio::fs::File::open(&path).await.map_err(|_| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("recording {id} has no part {part}"),
        )
    })?;
    // The file may still grow (live session): serve what is there now.
    let len = f.metadata().await.map(|m| m.len()).unwrap_or(0);
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (status, start, end) = match range {
        None => (StatusCode::OK, 0, len.saturating_sub(1)),
        Some(r) => match crate::recorder::parse_range(r, len) {
            Some((s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
            None => {
                let mut res = ApiError::new(
                    StatusCode::RANGE_NOT_SATISFIABLE,
                    "range_not_satisfiable",
                    format!("range {r} is outside 0-{len}"),
                )
                .into_response();
                res.headers_mut().insert(
                    header::CONTENT_RANGE,
                    HeaderValue::from_str(&format!("bytes */{len}")).expect("ascii"),
                );
                return Ok(res);
            }
        },
    };
    let n = if len == 0 { 0 } else { end - start + 1 };
    f.seek(std::io::SeekFrom::Start(start))
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "io", e.to_string()))?;
    // Streamed in 64 KiB reads: sync asks for `bytes=N-` of parts that can be gigabytes, and
    // this once allocated the whole range at once (the agent died out of memory).
    let body = futures_util::stream::unfold(
        (Some(f.take(n)), vec![0u8; 64 * 1024]),
        |(r, mut buf)| async move {
            let mut r = r?;
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(k) => Some((
                    Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(&buf[..k])),
                    (Some(r), buf),
                )),
                Err(e) => Some((Err(e), (None, buf))),
            }
        },
    );
    let mut res = Response::new(Body::from_stream(body));
    res.headers_mut()
        .insert(header::CONTENT_LENGTH, HeaderValue::from(n));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("video/mp4"));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")).expect("ascii"),
        );
    }
    Ok(res)
}

#[derive(Deserialize)]
struct RecEventsQuery {
    #[serde(default)]
    after: u64,
    limit: Option<usize>,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
}

async fn recording_events(
    State(app): AppState,
    Path(id): Path<String>,
    Query(q): Query<RecEventsQuery>,
) -> Result<Json<Value>, ApiError> {
    let dir = recording_dir(&app, &id)?;
    let limit = q.limit.unwrap_or(1000).clamp(1, 100_000);
    let after = q.after;
    let path = dir.join("events.jsonl");
    let app2 = app.clone();
    let events = tokio::task::spawn_blocking(move || {
        // Each session's index is kept and extended by what was appended since: a sync's
        // pages are O(page) each, not a read of the whole file per page.
        let mut index = app2
            .event_indexes
            .lock()
            .unwrap()
            .remove(&id)
            .unwrap_or_default();
        if let Err(e) = index.extend(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("{}: {e}", path.display());
            }
        }
        let keep = |e: &porthole_proto::Event| {
            !(q.from_ms.is_some_and(|f| e.t_ms < f) || q.to_ms.is_some_and(|t| e.t_ms > t))
        };
        let events = index.read(&path, q.after, limit, keep).unwrap_or_default();
        let mut cache = app2.event_indexes.lock().unwrap();
        if cache.len() >= 64 {
            cache.clear();
        }
        cache.insert(id, index);
        events
    })
    .await
    .unwrap_or_default();
    let next = events.last().map(|e| e.seq).unwrap_or(after);
    Ok(Json(json!({"events": events, "next": next})))
}

async fn recording_thumb(
    State(app): AppState,
    Path((id, name)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let dir = recording_dir(&app, &id)?;
    if !name.ends_with(".jpg") || !crate::recorder::valid_id(name.trim_end_matches(".jpg")) {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no thumbnail {name}"),
        ));
    }
    let bytes = tokio::fs::read(dir.join("thumbs").join(&name))
        .await
        .map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no thumbnail {name}"),
            )
        })?;
    Ok(([(header::CONTENT_TYPE, "image/jpeg")], bytes).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Method;

    /// Each row: method, path, whether the agent token reaches it. The operator token reaches
    /// all of them (no scope check applies to it).
    #[test]
    fn agent_scope() {
        let check = |m: Method, p: &str, want: bool| {
            assert_eq!(agent_may(&m, p), want, "{m} {p}");
        };
        check(Method::POST, "/v1/computer", true);
        check(Method::GET, "/v1/screenshot", true);
        check(Method::POST, "/v1/exec", true);
        check(Method::POST, "/mcp", true);
        check(Method::GET, "/v1/events", true);
        check(Method::GET, "/v1/events/stream", true);
        check(Method::GET, "/v1/control", true);
        check(Method::POST, "/v1/chapters", true);
        check(Method::POST, "/v1/anthropic/tool_use", true);
        check(Method::POST, "/v1/openai/computer_call", true);
        // Acting as the human, or touching what only the human owns.
        check(Method::POST, "/v1/control", false);
        check(Method::POST, "/v1/whep", false);
        check(Method::DELETE, "/v1/whep/abc", false);
        check(Method::PATCH, "/v1/whep/abc", false);
        check(Method::POST, "/v1/display", false);
        check(Method::GET, "/v1/display", false);
        check(Method::POST, "/v1/environment", false);
        check(Method::GET, "/v1/environment", false);
        check(
            Method::POST,
            "/v1/environment/terminals/agent/restart",
            false,
        );
        check(Method::POST, "/v1/sessions", false);
        check(Method::GET, "/v1/recordings", false);
        check(Method::GET, "/v1/recordings/x/video", false);
        check(Method::GET, "/v1/recordings/x/events", false);
        // Path tricks: no prefix match outside /mcp.
        check(Method::POST, "/v1/computer/../control", false);
        check(Method::GET, "/mcpx", false);
        check(Method::GET, "/v1/events/../recordings", false);
    }

    #[test]
    fn principals() {
        assert_eq!(
            principal_of("op", "op", Some("ag")),
            Some(Principal::Operator)
        );
        assert_eq!(principal_of("ag", "op", Some("ag")), Some(Principal::Agent));
        assert_eq!(principal_of("ag", "op", None), None);
        assert_eq!(principal_of("", "op", Some("ag")), None);
        assert_eq!(principal_of("o", "op", Some("ag")), None);
        assert_eq!(principal_of("opx", "op", Some("ag")), None);
    }
}
