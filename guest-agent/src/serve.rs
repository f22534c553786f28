//! `porthole-agent serve`: validates every flag and file before anything starts, then runs.

use crate::app::{App, Config};
use crate::capture::{x11::X11Source, FrameSource};
use crate::computer::Screenshotter;
use crate::control::Control;
use crate::events::{new_session_id, Timeline};
use crate::input::Input;
use crate::stream::{IceConfig, StreamHub};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no token: pass --token-file PATH or set PORTHOLE_TOKEN")]
    NoToken,
    #[error("token file {0} is empty")]
    EmptyToken(PathBuf),
    #[error("--agent-token-file holds the operator's token: the coding agent's token must differ, or it could act as the operator")]
    SameTokens,
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "secrets file {path} is readable by group or others (mode {mode:o}); run: chmod 600 {path}"
    )]
    SecretsMode { path: PathBuf, mode: u32 },
    #[error("secrets file {path}: {message}")]
    SecretsFormat { path: PathBuf, message: String },
    #[error("--display-size {0}: expected WIDTHxHEIGHT, e.g. 1280x800 (each 16 to 8192)")]
    DisplaySize(String),
    #[error("--display {0}: expected an X display such as :0 or :99")]
    Display(String),
    #[error("--workspace {0} is not a directory")]
    Workspace(PathBuf),
    #[error("--max-fps {0}: expected 1 to 120")]
    Fps(u32),
}

pub fn parse_size(s: &str) -> Result<(u32, u32), ConfigError> {
    let err = || ConfigError::DisplaySize(s.to_string());
    let (w, h) = s.split_once(['x', 'X']).ok_or_else(err)?;
    let (w, h): (u32, u32) = (
        w.trim().parse().map_err(|_| err())?,
        h.trim().parse().map_err(|_| err())?,
    );
    if !(16..=8192).contains(&w) || !(16..=8192).contains(&h) {
        return Err(err());
    }
    Ok((w, h))
}

/// PR_SET_DUMPABLE 0: see the caller.
pub fn make_undumpable() {
    // SAFETY: prctl with constant arguments; it only changes this process's own flag.
    #[cfg(target_os = "linux")]
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

pub fn read_token(file: Option<&Path>) -> Result<String, ConfigError> {
    match file {
        Some(p) => {
            let t = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.into(),
                source,
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                return Err(ConfigError::EmptyToken(p.into()));
            }
            Ok(t)
        }
        None => match std::env::var("PORTHOLE_TOKEN") {
            Ok(t) if !t.trim().is_empty() => Ok(t.trim().to_string()),
            _ => Err(ConfigError::NoToken),
        },
    }
}

/// Reads a JSON object of NAME → value; refused unless only the owner can read it.
pub fn read_secrets(p: &Path) -> Result<HashMap<String, String>, ConfigError> {
    let meta = std::fs::metadata(p).map_err(|source| ConfigError::Read {
        path: p.into(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(ConfigError::SecretsMode {
            path: p.into(),
            mode,
        });
    }
    let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
        path: p.into(),
        source,
    })?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ConfigError::SecretsFormat {
            path: p.into(),
            // serde's message can quote the input; give only the position so no value leaks.
            message: format!("not valid JSON (line {}, column {})", e.line(), e.column()),
        })?;
    let obj = v.as_object().ok_or_else(|| ConfigError::SecretsFormat {
        path: p.into(),
        message: "expected a JSON object of NAME: value".into(),
    })?;
    let mut out = HashMap::new();
    for (k, val) in obj {
        let s = val.as_str().ok_or_else(|| ConfigError::SecretsFormat {
            path: p.into(),
            message: format!("{k}: expected a string value"),
        })?;
        out.insert(k.clone(), s.to_string());
    }
    Ok(out)
}

pub fn validate_display(d: &str) -> Result<(), ConfigError> {
    let rest = d
        .split_once(':')
        .map(|(_, r)| r)
        .ok_or_else(|| ConfigError::Display(d.into()))?;
    let num = rest.split('.').next().unwrap_or("");
    if num.is_empty() || !num.chars().all(|c| c.is_ascii_digit()) {
        return Err(ConfigError::Display(d.into()));
    }
    Ok(())
}

pub fn default_data_dir() -> PathBuf {
    if let Some(s) = std::env::var_os("XDG_STATE_HOME").filter(|s| !s.is_empty()) {
        return PathBuf::from(s).join("porthole-agent");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/porthole-agent")
}

pub struct Prepared {
    pub cfg: Config,
    pub hub_limits: crate::stream::HubLimits,
    pub listen: SocketAddr,
    pub secrets: HashMap<String, String>,
    pub ice: IceConfig,
    pub idle: bool,
    /// The workspace's environment, already validated.
    pub environment: Option<porthole_envfile::PortholeEnvironment>,
    pub stall_after: std::time::Duration,
    /// HTTPS (--tls-cert/--tls-key), loaded and checked before anything runs.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub workload_sandbox: bool,
    pub workload_seccomp: Option<PathBuf>,
    /// Shell commands started in the workload at boot (`--start`).
    pub start: Vec<String>,
    /// The same, in the environment's image (`--start-in-image`).
    pub start_in_image: Vec<String>,
    /// The environment's image, the root of what the coding agent runs.
    pub image: Option<crate::workload::ImageRoot>,
    /// The provider's account of making that image (the `build` step).
    pub image_build: Option<serde_json::Value>,
    pub egress_log: Option<PathBuf>,
}

/// One `--start` command: once the X server's socket is there (at most 5 s), `sh -c` in the
/// workload, detached; its output goes where the command sends it.
async fn start_in_workload(app: Arc<App>, cmd: String, in_image: bool) {
    let n = app.cfg.display.trim_start_matches(':');
    let n = n.split('.').next().unwrap_or(n).to_string();
    let sock = std::path::Path::new("/tmp/.X11-unix").join(format!("X{n}"));
    for _ in 0..500 {
        if sock.exists() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let mut c = if in_image {
        app.workload.command("sh")
    } else {
        app.workload.host_command("sh")
    };
    let spawned = c
        .arg("-c")
        .arg(&cmd)
        .env_remove("PORTHOLE_TOKEN")
        .stdin(std::process::Stdio::null())
        .process_group(0)
        .spawn();
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "--start command did not start");
    }
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("signal handler");
    tokio::select! { _ = tokio::signal::ctrl_c() => {}, _ = term.recv() => {} }
}

/// Builds the app and serves until the listener fails or a signal arrives.
pub async fn run(p: Prepared) -> anyhow::Result<()> {
    use anyhow::Context;
    let listener = tokio::net::TcpListener::bind(p.listen)
        .await
        .with_context(|| format!("cannot listen on {}", p.listen))?;
    let display = p.cfg.display.clone();
    let source: crate::pipeline::SourceFactory =
        Box::new(move || X11Source::open(&display).map(|s| Box::new(s) as Box<dyn FrameSource>));
    let hub = StreamHub::new(p.ice, p.cfg.max_fps, source).context("webrtc setup")?;
    hub.set_limits(p.hub_limits);
    let record_root = p
        .cfg
        .record
        .then(|| crate::recorder::recordings_dir(&p.cfg.data_dir));
    let timeline = Timeline::new(new_session_id(), record_root);
    // The operator's token is a secret like any other: should it ever reach output (a process
    // that read it before the agent forgot the file), it reads [REDACTED:PORTHOLE_OPERATOR_TOKEN].
    timeline.redactor.set(
        p.secrets
            .clone()
            .into_iter()
            .chain([("PORTHOLE_OPERATOR_TOKEN".to_string(), p.cfg.token.clone())]),
    );
    // Started here, on the thread that lives as long as the agent: the holder's bubblewrap
    // has --die-with-parent, whose "parent" is the spawning thread.
    let workload = if p.workload_sandbox {
        crate::workload::Workload::start(
            &p.cfg.data_dir,
            p.workload_seccomp.as_deref(),
            p.image.clone(),
        )
        .map_err(|e| anyhow::anyhow!("workload sandbox: {e}"))?
    } else {
        crate::workload::Workload::direct()
    };
    let app = Arc::new(App {
        workload,
        input: Input::spawn(p.cfg.display.clone()),
        screenshots: Screenshotter::new(p.cfg.display.clone()),
        thumbs: Screenshotter::new(p.cfg.display.clone()),
        thumbs_before: Screenshotter::new(p.cfg.display.clone()),
        secrets: Mutex::new(p.secrets),
        cfg: p.cfg,
        timeline,
        control: Mutex::new(Control::default()),
        hub,
        started: std::time::Instant::now(),
        env: Mutex::new(Default::default()),
        env_procs: Mutex::new(Vec::new()),
        recording_problem: Mutex::new(None),
        event_indexes: Mutex::default(),
        exec_running: Arc::default(),
        sse_open: Arc::default(),
        recorder_on: false.into(),
        clipboard: Default::default(),
        display_restore: Default::default(),
        image_build: p.image_build.clone(),
    });
    if app.cfg.record && !p.idle {
        app.recorder_on
            .store(true, std::sync::atomic::Ordering::SeqCst);
        crate::recorder::spawn(app.clone())
            .map_err(anyhow::Error::msg)
            .context("recorder")?;
    }
    if !p.idle {
        app.timeline.emit(
            porthole_proto::Actor::System,
            "session",
            serde_json::json!({"state": "started"}),
        );
    }
    if let Some(ws) = app.cfg.workspace.clone() {
        crate::watch::spawn(app.clone(), ws, p.stall_after);
    }
    if let (Some(env), Some(ws)) = (p.environment, app.cfg.workspace.clone()) {
        crate::environment::apply(app.clone(), env, ws);
    }
    if let Some(log) = p.egress_log {
        crate::egress::spawn_follower(app.clone(), log);
    }
    for cmd in p.start {
        tokio::spawn(start_in_workload(app.clone(), cmd, false));
    }
    for cmd in p.start_in_image {
        tokio::spawn(start_in_workload(app.clone(), cmd, true));
    }
    tracing::info!(addr = %listener.local_addr()?, display = %app.cfg.display, tls = p.tls.is_some(), "porthole-agent serving");
    let router = crate::http::router(app.clone());
    match p.tls {
        Some(acceptor) => {
            axum::serve(
                crate::tls::TlsListener::new(listener, acceptor).context("tls listener")?,
                router,
            )
            .with_graceful_shutdown(shutdown_signal())
            .await
        }
        None => {
            axum::serve(listener, router)
                .with_graceful_shutdown(shutdown_signal())
                .await
        }
    }
    .context("http server")?;
    if app.cfg.record {
        crate::recorder::finish_current(&app);
    }
    crate::environment::stop_previous(&app).await;
    let _ = app
        .workload
        .tmux()
        .arg("-S")
        .arg(crate::environment::tmux_socket(&app))
        .arg("kill-server")
        .output()
        .await;
    for p in app.hub.pipelines() {
        p.shutdown();
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_displays() {
        assert_eq!(parse_size("1024x768").unwrap(), (1024, 768));
        assert!(parse_size("1024").is_err());
        assert!(parse_size("0x768").is_err());
        assert!(validate_display(":99").is_ok());
        assert!(validate_display("host:1.0").is_ok());
        assert!(validate_display("99").is_err());
        assert!(validate_display(":x").is_err());
    }

    #[test]
    fn secrets_file_mode_is_enforced_and_values_never_quoted() {
        let dir = std::env::temp_dir().join(format!("porthole-secrets-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("s.json");
        std::fs::write(&p, r#"{"API_KEY": "sk-live-123"}"#).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = read_secrets(&p).unwrap_err().to_string();
        assert!(e.contains("s.json") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read_secrets(&p).unwrap()["API_KEY"], "sk-live-123");
        std::fs::write(&p, r#"{"API_KEY": "sk-live-123""#).unwrap();
        let e = read_secrets(&p).unwrap_err().to_string();
        assert!(!e.contains("sk-live"), "{e}");
    }
}
