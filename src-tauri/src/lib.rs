//! Porthole desktop app: Tauri glue over `porthole-core`.
//!
//! Each command converts its arguments, calls the core, and maps errors to `{code, message}`.
//! Live video reaches the UI as raw access units over the loopback WebSocket of
//! `porthole_core::frames` (WebKitGTK has no WebRTC; the UI decodes with WebCodecs); replay's
//! still over a `Channel` (paced, one at a time).

use porthole_core::frames::{FrameServer, Sent};
use porthole_core::live::{LiveFrame, LiveSession};
use porthole_core::{CoreError, CreateSpec, Machine, Machines, ProviderKind, StateDir};
use porthole_proto::Progress;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tauri::ipc::{Channel, InvokeResponseBody};
use tauri::{Manager, State};
use tokio::sync::Mutex;

/// What every failed command returns to the UI.
#[derive(Debug, Serialize)]
pub struct UiError {
    code: String,
    message: String,
}

impl From<CoreError> for UiError {
    fn from(e: CoreError) -> Self {
        Self {
            code: e.code().into(),
            message: e.to_string(),
        }
    }
}

type Res<T> = Result<T, UiError>;

pub struct AppState {
    ms: Machines,
    frames: Arc<FrameServer>,
    lives: Mutex<HashMap<String, Arc<LiveSession>>>,
    replays: Mutex<HashMap<String, Arc<AtomicBool>>>,
}

/// Forwards `name`'s progress lines to the UI until the returned guard drops.
fn progress_to(ms: &Machines, name: &str, ch: Channel<Progress>) -> AbortOnDrop {
    let mut rx = ms.watch_progress();
    let name = name.to_string();
    AbortOnDrop(tokio::spawn(async move {
        loop {
            match rx.recv().await {
                Ok(p) if p.machine == name => {
                    let _ = ch.send(p);
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => return,
            }
        }
    }))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[tauri::command]
async fn machines_list(s: State<'_, AppState>) -> Res<Vec<Machine>> {
    Ok(s.ms.list().await?)
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct CreateReq {
    name: String,
    provider: String,
    env_path: Option<String>,
    workspace: Option<String>,
    url: Option<String>,
    token_file: Option<String>,
    fingerprint: Option<String>,
    browser: Option<bool>,
}

#[tauri::command]
async fn machine_create(
    s: State<'_, AppState>,
    req: CreateReq,
    on_progress: Channel<Progress>,
) -> Res<Machine> {
    let _progress = progress_to(&s.ms, &req.name, on_progress);
    let spec = CreateSpec {
        name: req.name,
        provider: Some(ProviderKind::parse(&req.provider)?),
        env_path: req.env_path.filter(|p| !p.is_empty()).map(Into::into),
        workspace: req.workspace.filter(|p| !p.is_empty()).map(Into::into),
        url: req.url.filter(|p| !p.is_empty()),
        token_file: req.token_file.filter(|p| !p.is_empty()).map(Into::into),
        fingerprint: req.fingerprint.filter(|p| !p.is_empty()),
        browser: req.browser.unwrap_or(true),
        ..Default::default()
    };
    Ok(s.ms.create(spec).await?)
}

#[tauri::command]
async fn machine_start(
    s: State<'_, AppState>,
    name: String,
    on_progress: Channel<Progress>,
) -> Res<Machine> {
    let _progress = progress_to(&s.ms, &name, on_progress);
    Ok(s.ms.start(&name).await?)
}

#[tauri::command]
async fn machine_stop(s: State<'_, AppState>, name: String) -> Res<Machine> {
    if let Some(l) = s.lives.lock().await.remove(&name) {
        l.close().await;
    }
    Ok(s.ms.stop(&name).await?)
}

#[tauri::command]
async fn machine_destroy(s: State<'_, AppState>, name: String) -> Res<()> {
    if let Some(l) = s.lives.lock().await.remove(&name) {
        l.close().await;
    }
    Ok(s.ms.destroy(&name).await?)
}

#[tauri::command]
async fn machine_snapshot(
    s: State<'_, AppState>,
    name: String,
    snapshot: String,
    on_progress: Channel<Progress>,
) -> Res<()> {
    let _progress = progress_to(&s.ms, &name, on_progress);
    s.ms.snapshot(&name, &snapshot).await?;
    Ok(())
}

#[tauri::command]
async fn machine_health(s: State<'_, AppState>, name: String) -> Res<Value> {
    let m = s.ms.get(&name).await?;
    let client = s.ms.client(&m)?;
    let h = client.health().await?;
    let compat = porthole_core::compat::check(&h.version, env!("CARGO_PKG_VERSION"));
    // The environment's setup (install, start) is a long operation too: its steps, no logs.
    let mut env = client.get("/v1/environment").await.unwrap_or(Value::Null);
    for step in env["steps"].as_array_mut().into_iter().flatten() {
        step.as_object_mut().map(|o| o.remove("log_tail"));
    }
    Ok(json!({"health": h, "compat": compat, "environment": env}))
}

#[tauri::command]
async fn live_start(
    s: State<'_, AppState>,
    name: String,
    on_event: Channel<Value>,
    max_fps: Option<u32>,
) -> Res<Value> {
    if let Some(old) = s.lives.lock().await.remove(&name) {
        old.close().await;
    }
    let m = s.ms.get(&name).await?;
    let client = s.ms.client(&m)?;
    let session = client.get("/v1/sessions/current").await?;
    let (sink, frames) = s.frames.open();
    let live = LiveSession::connect_at(
        client,
        max_fps,
        move |f: LiveFrame| {
            matches!(
                sink.send(f.to_wire().into(), f.keyframe),
                Sent::Dropped { first: true }
            )
        },
        move |e| {
            let _ = on_event.send(serde_json::to_value(e).unwrap_or_default());
        },
    )
    .await?;
    // Two starts of one view can race past the `remove` above: close whichever lost.
    if let Some(old) = s.lives.lock().await.insert(name.clone(), Arc::new(live)) {
        old.close().await;
    }
    let d = m.spec.clone();
    Ok(
        json!({"sessionId": session["id"], "codec": "H264", "width": d["width"].as_u64().unwrap_or(1280), "height": d["height"].as_u64().unwrap_or(800), "frames": frames, "gpu": has_gpu()}),
    )
}

/// The UI restarted its decoder: ask the agent for a keyframe now, not at the next periodic one.
#[tauri::command]
async fn live_keyframe(s: State<'_, AppState>, name: String) -> Res<()> {
    if let Some(l) = s.lives.lock().await.get(&name) {
        l.request_keyframe();
    }
    Ok(())
}

/// The guest screen's size and whether it can follow the window (`GET /v1/display`).
#[tauri::command]
async fn display_info(s: State<'_, AppState>, name: String) -> Res<Value> {
    let m = s.ms.get(&name).await?;
    Ok(s.ms.client(&m)?.get("/v1/display").await?)
}

#[tauri::command]
async fn live_stop(s: State<'_, AppState>, name: String) -> Res<()> {
    if let Some(l) = s.lives.lock().await.remove(&name) {
        l.close().await;
    }
    Ok(())
}

#[tauri::command]
async fn live_input(s: State<'_, AppState>, name: String, msg: Value) -> Res<()> {
    let live = s.lives.lock().await.get(&name).cloned();
    let live = live.ok_or_else(|| UiError {
        code: "not_connected".into(),
        message: format!("no live view of {name}; open it first"),
    })?;
    Ok(live.send(&msg).await?)
}

#[tauri::command]
async fn control(s: State<'_, AppState>, name: String, action: String) -> Res<Value> {
    let m = s.ms.get(&name).await?;
    Ok(s.ms
        .client(&m)?
        .post("/v1/control", &json!({"action": action}))
        .await?)
}

#[tauri::command]
async fn events(s: State<'_, AppState>, name: String, after: u64) -> Res<Value> {
    let m = s.ms.get(&name).await?;
    Ok(s.ms
        .client(&m)?
        .get(&format!("/v1/events?after={after}"))
        .await?)
}

#[tauri::command]
async fn sessions_list(s: State<'_, AppState>) -> Res<Vec<Value>> {
    let mut list = porthole_core::sync::local_sessions(&s.ms.store).await?;
    for v in list.iter_mut() {
        let id = v["id"].as_str().unwrap_or_default().to_string();
        v["thumbnail"] = porthole_core::sync::thumbnail_data_url(&s.ms, &id)
            .map(Value::String)
            .unwrap_or(Value::Null);
    }
    Ok(list)
}

#[tauri::command]
async fn sessions_sync(s: State<'_, AppState>, name: String) -> Res<Value> {
    let m = s.ms.get(&name).await?;
    let r = porthole_core::sync::sync_machine(&s.ms, &m).await?;
    Ok(serde_json::to_value(r).unwrap_or_default())
}

#[tauri::command]
async fn replay_open(s: State<'_, AppState>, session_id: String) -> Res<Value> {
    let rec = porthole_core::sync::recording(&s.ms, &session_id).await?;
    let first = &rec.parts[0];
    Ok(
        json!({"sessionId": session_id, "duration_ms": rec.duration_ms(), "codec": "H264", "width": first.width, "height": first.height, "keyframes_ms": rec.keyframes_ms()}),
    )
}

#[tauri::command]
async fn replay_events(s: State<'_, AppState>, session_id: String) -> Res<Value> {
    Ok(serde_json::to_value(
        porthole_core::sync::events(&s.ms.store, &session_id, None, None).await?,
    )
    .unwrap_or_default())
}

#[tauri::command]
async fn replay_play(
    s: State<'_, AppState>,
    session_id: String,
    from_ms: u64,
    speed: f64,
    on_frame: Channel<InvokeResponseBody>,
) -> Res<()> {
    let stop = Arc::new(AtomicBool::new(false));
    if let Some(old) = s
        .replays
        .lock()
        .await
        .insert(session_id.clone(), stop.clone())
    {
        old.store(true, Ordering::SeqCst);
    }
    let rec = porthole_core::sync::recording(&s.ms, &session_id).await?;
    let speed = speed.clamp(0.25, 8.0);
    // Returns when playback ends or is stopped (the UI's player waits on it).
    tokio::task::spawn_blocking(move || {
        rec.play(from_ms, speed, &stop, |f| {
            on_frame.send(InvokeResponseBody::Raw(f.to_wire())).is_ok()
        })
    })
    .await
    .map_err(|e| UiError {
        code: "replay_failed".into(),
        message: e.to_string(),
    })??;
    Ok(())
}

#[tauri::command]
async fn replay_stop(s: State<'_, AppState>, session_id: String) -> Res<()> {
    if let Some(old) = s.replays.lock().await.remove(&session_id) {
        old.store(true, Ordering::SeqCst);
    }
    Ok(())
}

#[tauri::command]
async fn export_evidence(
    s: State<'_, AppState>,
    session_id: String,
    out_dir: String,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> Res<Value> {
    let r = porthole_core::export::export(
        &s.ms,
        &session_id,
        std::path::Path::new(&out_dir),
        from_ms,
        to_ms,
    )
    .await?;
    Ok(json!({"dir": r.dir, "html": r.html, "summary": r.summary}))
}

#[tauri::command]
fn env_check(text: String, file_name: String) -> Value {
    serde_json::to_value(porthole_envfile::check_str(
        std::path::Path::new(&file_name),
        &text,
    ))
    .unwrap_or_default()
}

#[tauri::command]
fn env_schema() -> Value {
    porthole_envfile::porthole_schema()
}

#[tauri::command]
async fn secrets_list(s: State<'_, AppState>) -> Res<Value> {
    let v = porthole_core::vault::Vault::open(&s.ms).await?;
    Ok(json!({"backend": v.backend(), "secrets": v.list().await?}))
}

#[tauri::command]
async fn secret_set(s: State<'_, AppState>, name: String, scope: String, value: String) -> Res<()> {
    Ok(porthole_core::vault::Vault::open(&s.ms)
        .await?
        .set(&name, &scope, &value)
        .await?)
}

#[tauri::command]
async fn secret_delete(s: State<'_, AppState>, name: String, scope: String) -> Res<()> {
    porthole_core::vault::Vault::open(&s.ms)
        .await?
        .delete(&name, &scope)
        .await?;
    Ok(())
}

#[tauri::command]
async fn runs_list(s: State<'_, AppState>) -> Res<Value> {
    let runs = porthole_core::runs::Runs::new(s.ms.clone()).list().await?;
    Ok(serde_json::to_value(runs).unwrap_or_default())
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct RunReq {
    repo: String,
    branch: Option<String>,
    task: String,
    agent: String,
    env_path: Option<String>,
}

#[tauri::command]
async fn run_start(s: State<'_, AppState>, req: RunReq) -> Res<Value> {
    let spec = porthole_core::runs::StartSpec {
        repo: req.repo,
        base: req.branch.filter(|b| !b.is_empty()),
        task: req.task,
        agent: req.agent,
        env: req.env_path.filter(|p| !p.is_empty()).map(Into::into),
        provider: ProviderKind::Local,
    };
    let r = porthole_core::runs::Runs::new(s.ms.clone())
        .start(spec)
        .await?;
    Ok(serde_json::to_value(r).unwrap_or_default())
}

#[tauri::command]
async fn run_stop(s: State<'_, AppState>, id: String) -> Res<Value> {
    Ok(serde_json::to_value(
        porthole_core::runs::Runs::new(s.ms.clone())
            .stop(&id)
            .await?,
    )
    .unwrap_or_default())
}

#[tauri::command]
async fn run_collect(s: State<'_, AppState>, id: String) -> Res<Value> {
    Ok(porthole_core::runs::Runs::new(s.ms.clone())
        .collect(&id)
        .await?)
}

#[tauri::command]
fn app_version() -> String {
    env!("CARGO_PKG_VERSION").to_string()
}

/// Without a GPU (no DRM render node: VMs, CI, remote desktops) WebKitGTK's DMA-BUF renderer
/// composites every repaint of the window through llvmpipe: measured here, a 4 Hz text change
/// next to a live canvas cost 23% of a core (1440x900 window), and the still live view 152%
/// (the session clock, the terminals' cursor). With the renderer off, 1.0-1.3%. A GPU keeps the
/// default; the user's own setting always wins.
#[cfg(target_os = "linux")]
fn software_rendering_fixups() {
    if !has_gpu() && std::env::var_os("WEBKIT_DISABLE_DMABUF_RENDERER").is_none() {
        // Before GTK or any thread starts: nothing else reads the environment yet.
        std::env::set_var("WEBKIT_DISABLE_DMABUF_RENDERER", "1");
    }
}

/// Whether the webview's GL runs on a GPU. WebKit masks the renderer's name from pages ("Apple
/// GPU"), so the UI asks us: on llvmpipe its WebGL renderer costs more than drawImage.
fn has_gpu() -> bool {
    if cfg!(target_os = "linux") {
        std::fs::read_dir("/dev/dri")
            .map(|d| {
                d.flatten()
                    .any(|e| e.file_name().to_string_lossy().starts_with("renderD"))
            })
            .unwrap_or(false)
    } else {
        true
    }
}

pub fn run() {
    #[cfg(target_os = "linux")]
    software_rendering_fixups();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()),
        )
        .init();
    tauri::Builder::default()
        .setup(|app| {
            let ms = tauri::async_runtime::block_on(Machines::open(StateDir::from_env()))?;
            // The page's origin: tauri://localhost on Linux and macOS, http://tauri.localhost
            // on Windows; the Vite dev server only in debug builds (`tauri dev`).
            let mut origins: Vec<String> = [
                "tauri://localhost",
                "http://tauri.localhost",
                "https://tauri.localhost",
            ]
            .map(String::from)
            .into();
            if cfg!(debug_assertions) {
                origins.extend([
                    "http://localhost:5173".into(),
                    "http://127.0.0.1:5173".into(),
                ]);
            }
            let frames = tauri::async_runtime::block_on(FrameServer::start(origins))?;
            app.manage(AppState {
                ms,
                frames,
                lives: Mutex::new(HashMap::new()),
                replays: Mutex::new(HashMap::new()),
            });
            Ok(())
        })
        .invoke_handler(tauri::generate_handler![
            machines_list,
            machine_create,
            machine_start,
            machine_stop,
            machine_destroy,
            machine_snapshot,
            machine_health,
            live_start,
            live_stop,
            live_keyframe,
            display_info,
            live_input,
            control,
            events,
            sessions_list,
            sessions_sync,
            replay_open,
            replay_events,
            replay_play,
            replay_stop,
            export_evidence,
            env_check,
            env_schema,
            secrets_list,
            secret_set,
            secret_delete,
            runs_list,
            run_start,
            run_stop,
            run_collect,
            app_version,
        ])
        .run(tauri::generate_context!())
        .expect("error while running Porthole");
}
