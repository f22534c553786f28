//! Running an environment: snapshot → build → install → start → terminals, ports watched.
//!
//! Each step's output streams as `terminal` events (named after the step or terminal, ANSI
//! kept) through a [`StreamRedactor`], so a secret split across two reads is still caught.
//! Terminals are windows of ONE tmux session (`porthole`) that the AI agent can attach to.

use crate::app::App;
use porthole_envfile::PortholeEnvironment;
use porthole_proto::Actor;
use serde::Serialize;
use serde_json::json;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

pub const TMUX_SESSION: &str = "porthole";
const TAIL_BYTES: usize = 4096;

#[derive(Debug, Clone, Serialize, PartialEq)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Pending,
    Running,
    Done,
    Failed,
    Skipped,
    Unsupported,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    pub name: String,
    pub state: StepState,
    pub exit_code: Option<i32>,
    pub started_t_ms: Option<u64>,
    pub duration_ms: Option<u64>,
    pub message: Option<String>,
    pub log_tail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct PortStatus {
    pub port: u16,
    pub name: Option<String>,
    pub listening: bool,
    pub since_t_ms: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TerminalStatus {
    pub name: String,
    pub command: String,
    pub window: String,
    pub running: bool,
    pub exit_status: Option<i32>,
    pub log_tail: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvStatus {
    /// none | running | ready | failed
    pub state: String,
    pub name: Option<String>,
    pub workspace: Option<PathBuf>,
    pub steps: Vec<Step>,
    pub ports: Vec<PortStatus>,
    pub terminals: Vec<TerminalStatus>,
    pub tmux_session: Option<String>,
    /// The tmux server's socket: `tmux -S <socket> attach -t porthole`.
    pub tmux_socket: Option<PathBuf>,
    /// Bumped on every apply; a superseded run stops touching the status.
    #[serde(skip)]
    pub generation: u64,
}

impl Default for EnvStatus {
    fn default() -> Self {
        Self {
            state: "none".into(),
            name: None,
            workspace: None,
            steps: Vec::new(),
            ports: Vec::new(),
            terminals: Vec::new(),
            tmux_session: None,
            tmux_socket: None,
            generation: 0,
        }
    }
}

/// Redacts a stream of output chunks: holds back any tail that could be the start of a secret
/// (and incomplete UTF-8), so a value split across reads is still replaced.
pub struct StreamRedactor {
    secrets: Vec<(String, String)>,
    /// Decoded text not shown yet: a tail that may be the start of a secret.
    text: String,
    /// An incomplete UTF-8 sequence at the end of the input so far.
    bytes: Vec<u8>,
}

impl StreamRedactor {
    pub fn new(secrets: &HashMap<String, String>) -> Self {
        let s =
            porthole_proto::redact::prepare(secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
        Self {
            secrets: s,
            text: String::new(),
            bytes: Vec::new(),
        }
    }

    fn redact(&self, t: &str) -> String {
        crate::events::redact_with(&self.secrets, t)
    }

    /// Feeds bytes; returns what can be shown now. Invalid UTF-8 becomes U+FFFD where it is,
    /// and never releases what is held back (it used to: one stray byte and the first half of
    /// a secret went out together, the second half with the next chunk).
    pub fn push(&mut self, chunk: &[u8]) -> String {
        self.bytes.extend_from_slice(chunk);
        let mut rest: &[u8] = &self.bytes;
        loop {
            match std::str::from_utf8(rest) {
                Ok(s) => {
                    self.text.push_str(s);
                    rest = &[];
                    break;
                }
                Err(e) => {
                    let (good, bad) = rest.split_at(e.valid_up_to());
                    self.text
                        .push_str(std::str::from_utf8(good).expect("valid up to here"));
                    match e.error_len() {
                        Some(n) => {
                            self.text.push(char::REPLACEMENT_CHARACTER);
                            rest = &bad[n..];
                        }
                        None => {
                            rest = bad;
                            break;
                        }
                    }
                }
            }
        }
        self.bytes = rest.to_vec();
        // The longest suffix that is a proper prefix of some secret must wait for more bytes.
        // If that suffix starts inside an occurrence the redaction replaces (a secret ending in
        // its own first character, `s3cr3ts`), the whole occurrence waits too: cutting through
        // it would show it but for one character, and what follows may still make it part of
        // a longer secret. Occurrences are found as the redaction finds them: longest secret
        // first, left to right, never overlapping (found by a property test: with "dd" and
        // "ddd" + "d", an overlapping search let the second "dd" out).
        let text = &self.text;
        // Each secret is searched only between the occurrences of longer ones, as the
        // redaction's replace-after-replace does.
        let mut spans: Vec<(usize, usize)> = Vec::new();
        for (_, v) in &self.secrets {
            spans.sort_unstable();
            let mut found = Vec::new();
            let mut gap_start = 0;
            for &(a, b) in spans
                .iter()
                .chain(std::iter::once(&(text.len(), text.len())))
            {
                for (i, _) in text[gap_start..a].match_indices(v.as_str()) {
                    found.push((gap_start + i, gap_start + i + v.len()));
                }
                gap_start = b;
            }
            spans.extend(found);
        }
        let mut from = text.len();
        for (_, v) in &self.secrets {
            for (i, _) in text.char_indices().rev().take(v.len()) {
                let suffix = &text[i..];
                if suffix.len() < v.len() && v.starts_with(suffix) {
                    from = from.min(i);
                }
            }
        }
        if let Some(&(a, _)) = spans.iter().find(|&&(a, b)| a < from && from < b) {
            from = a;
        }
        let hold = text.len() - from;
        let cut = text.len() - hold;
        let shown = self.redact(&text[..cut]);
        self.text.drain(..cut);
        shown
    }

    /// Called when the stream has been quiet for a while: releases what is held back only if
    /// it is too short to give a secret away (a prompt ending in a common letter must not
    /// hang forever); a longer secret prefix stays held until more output or the end.
    pub fn idle_flush(&mut self) -> String {
        if self.text.len() + self.bytes.len() <= 2 {
            return self.flush();
        }
        String::new()
    }

    /// A whole stream at once: what any chunking of it must come to.
    #[cfg(test)]
    pub fn flush_all(mut self, all: &[u8]) -> String {
        self.bytes = all.to_vec();
        self.flush()
    }

    /// Everything held back (the stream ended).
    pub fn flush(&mut self) -> String {
        let mut s = std::mem::take(&mut self.text);
        s.push_str(&String::from_utf8_lossy(&self.bytes));
        self.bytes.clear();
        self.redact(&s)
    }
}

/// What one terminal or step may put on the timeline: a steady 64 KiB a second with bursts of
/// 256 KiB. `yes` in a terminal once made gigabytes of events; the excess is counted and said
/// (a `terminal` event with `cut_bytes`), never silently dropped, and the output is still read
/// (the program never blocks on a full pipe).
pub const TERMINAL_BYTES_PER_SEC: f64 = 64.0 * 1024.0;
pub const TERMINAL_BURST_BYTES: f64 = 256.0 * 1024.0;

pub struct OutputBudget {
    tokens: f64,
    last: Instant,
    cut: u64,
}

impl OutputBudget {
    pub fn new(now: Instant) -> Self {
        OutputBudget {
            tokens: TERMINAL_BURST_BYTES,
            last: now,
            cut: 0,
        }
    }

    /// The part of `s` that fits now (whole characters); the rest is counted as cut.
    pub fn admit<'a>(&mut self, s: &'a str, now: Instant) -> &'a str {
        let dt = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + dt * TERMINAL_BYTES_PER_SEC).min(TERMINAL_BURST_BYTES);
        let mut n = s.len().min(self.tokens as usize);
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        self.tokens -= n as f64;
        self.cut += (s.len() - n) as u64;
        &s[..n]
    }

    /// Bytes cut since the last call.
    pub fn take_cut(&mut self) -> u64 {
        std::mem::take(&mut self.cut)
    }
}

/// The event that says output was cut.
fn emit_cut(app: &App, name: &str, budget: &mut OutputBudget) {
    let cut = budget.take_cut();
    if cut > 0 {
        app.timeline.emit(
            Actor::System,
            "terminal",
            json!({"name": name, "text": format!("\n[porthole: {cut} bytes of output not recorded (over {} KiB/s)]\n", TERMINAL_BYTES_PER_SEC as u64 / 1024), "cut_bytes": cut}),
        );
    }
}

fn push_tail(tail: &mut String, s: &str) {
    tail.push_str(s);
    if tail.len() > TAIL_BYTES {
        let mut cut = tail.len() - TAIL_BYTES;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail.drain(..cut);
    }
}

/// Loads `DIR/.porthole/environment.json`, else `DIR/.cursor/environment.json`.
pub fn load_workspace_env(dir: &Path) -> Result<Option<PortholeEnvironment>, String> {
    for p in [
        dir.join(".porthole/environment.json"),
        dir.join(".cursor/environment.json"),
    ] {
        if p.exists() {
            return porthole_envfile::load_file(&p)
                .map(Some)
                .map_err(|e| format!("{}: {e}", p.display()));
        }
    }
    Ok(None)
}

fn env_vars(
    env: &PortholeEnvironment,
    secrets: &HashMap<String, String>,
    app: &App,
) -> HashMap<String, String> {
    let mut v: HashMap<String, String> = env
        .env
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    v.extend(secrets.iter().map(|(k, s)| (k.clone(), s.clone())));
    v.insert("DISPLAY".into(), app.cfg.display.clone());
    // Processes in the machine (the coding agent above all) reach their own agent's API.
    let mut addr = app.cfg.listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    v.entry("PORTHOLE_AGENT_URL".into())
        .or_insert(format!("http://{addr}"));
    v.entry("PORTHOLE_MCP_URL".into())
        .or_insert(format!("http://{addr}/mcp"));
    // The coding agent's token, never the operator's (whatever the environment says), when
    // the agent serves two; one token (documented for a bare `serve`) is the operator's.
    match &app.cfg.agent_token {
        Some(t) => {
            v.insert("PORTHOLE_TOKEN".into(), t.clone());
        }
        None => {
            v.entry("PORTHOLE_TOKEN".into())
                .or_insert(app.cfg.token.clone());
        }
    }
    v
}

/// A POSIX shell script exporting `vars`, for a terminal's shell to source. Names that are not
/// environment variable names are left out (they could not be exported, and must not be able to
/// turn into shell syntax).
fn export_script(vars: &HashMap<String, String>) -> String {
    let mut names: Vec<&String> = vars.keys().collect();
    names.sort();
    let mut out = String::new();
    for k in names {
        let ok = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if ok {
            out.push_str(&format!("export {k}={}\n", sh_quote(&vars[k])));
        }
    }
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// What each terminal's shell sources, by the FIFO it reads it from (kept so that a restarted
/// pane gets it again).
fn terminal_envs() -> &'static Mutex<HashMap<PathBuf, Arc<String>>> {
    static ENVS: std::sync::OnceLock<Mutex<HashMap<PathBuf, Arc<String>>>> =
        std::sync::OnceLock::new();
    ENVS.get_or_init(Default::default)
}

/// Hands a terminal its environment through a FIFO (mode 0600, in the agent's data dir) that
/// its shell sources: secrets and tokens never appear on a command line (tmux's `-e NAME=value`
/// would put them in `/proc/*/cmdline`, readable by every process in the machine) and never
/// touch the disk. Writes the script once, to the first reader, within two minutes; gives up
/// when the environment is re-applied.
fn serve_terminal_env(app: Arc<App>, fifo: PathBuf, generation: u64) {
    let Some(script) = terminal_envs().lock().unwrap().get(&fifo).cloned() else {
        return;
    };
    tokio::spawn(async move {
        let alive = || app.env.lock().unwrap().generation == generation;
        hand_over(&fifo, &script, Duration::from_secs(120), alive).await;
    });
}

/// Writes `script` to the first reader of the FIFO `fifo` within `wait`, while `alive()`;
/// whether it did.
async fn hand_over(fifo: &Path, script: &str, wait: Duration, alive: impl Fn() -> bool) -> bool {
    use tokio::io::AsyncWriteExt;
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline && alive() {
        // Fails (ENXIO) until the shell opens the FIFO to read it; refuses anything that is
        // not a FIFO (so the script is never written into a file put in its place).
        match tokio::net::unix::pipe::OpenOptions::new().open_sender(fifo) {
            Ok(mut tx) => return tx.write_all(script.as_bytes()).await.is_ok(),
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => return false,
        }
    }
    false
}

/// Starts (or restarts) the environment sequence in the background.
pub fn apply(app: Arc<App>, env: PortholeEnvironment, workspace: PathBuf) {
    let generation = {
        let mut st = app.env.lock().unwrap();
        st.generation += 1;
        let g = st.generation;
        *st = EnvStatus {
            state: "running".into(),
            name: env.name.clone(),
            workspace: Some(workspace.clone()),
            steps: Vec::new(),
            ports: env
                .ports
                .iter()
                .map(|p| PortStatus {
                    port: p.port,
                    name: p.name.clone(),
                    listening: false,
                    since_t_ms: None,
                })
                .collect(),
            terminals: Vec::new(),
            tmux_session: None,
            tmux_socket: None,
            generation: g,
        };
        g
    };
    tokio::spawn(async move {
        stop_previous(&app).await;
        let ok = run_sequence(&app, &env, &workspace, generation).await;
        let mut st = app.env.lock().unwrap();
        if st.generation == generation {
            st.state = if ok { "ready".into() } else { "failed".into() };
            let state = st.state.clone();
            drop(st);
            app.timeline.emit(
                Actor::System,
                "step",
                json!({"step": "environment", "state": state}),
            );
        }
    });
}

/// Stops everything the environment started (on re-apply and on agent shutdown).
pub async fn stop_previous(app: &App) {
    let old = app.env_procs.lock().unwrap().drain(..).collect::<Vec<_>>();
    for pgid in old {
        // SAFETY: signalling a process group we started.
        unsafe { libc::kill(-pgid, libc::SIGTERM) };
    }
    let _ = app
        .workload
        .tmux()
        .arg("-S")
        .arg(tmux_socket(app))
        .args(["kill-session", "-t", TMUX_SESSION])
        .env_remove("PORTHOLE_TOKEN")
        .output()
        .await;
    let terminals = app.cfg.data_dir.join("terminals");
    terminal_envs()
        .lock()
        .unwrap()
        .retain(|p, _| !p.starts_with(&terminals));
}

fn set_step(app: &App, generation: u64, step: Step) {
    let mut st = app.env.lock().unwrap();
    if st.generation != generation {
        return;
    }
    match st.steps.iter_mut().find(|s| s.name == step.name) {
        Some(s) => *s = step,
        None => st.steps.push(step),
    }
}

async fn run_sequence(
    app: &Arc<App>,
    env: &PortholeEnvironment,
    ws: &Path,
    generation: u64,
) -> bool {
    let secrets = app.secrets.lock().unwrap().clone();
    let vars = env_vars(env, &secrets, app);
    let step = |name: &str, state: StepState, message: Option<String>| Step {
        name: name.into(),
        state,
        exit_code: None,
        started_t_ms: Some(app.timeline.now_ms()),
        duration_ms: None,
        message,
        log_tail: String::new(),
    };
    if env.snapshot.is_some() {
        // The machine provider restores snapshots before the agent starts; nothing to do here.
        let s = step(
            "snapshot",
            StepState::Skipped,
            Some("restored by the machine provider".into()),
        );
        app.timeline.emit(
            Actor::System,
            "step",
            json!({"step": "snapshot", "state": "skipped", "message": s.message}),
        );
        set_step(app, generation, s);
    }
    if env.build.is_some() || env.image.is_some() {
        let (state, message, extra) = match &app.image_build {
            // The provider built (or found) the image and booted the machine from it.
            Some(b) => {
                let (run, total) = (b["steps_run"].as_u64().unwrap_or(0), b["steps_total"].as_u64().unwrap_or(0));
                let how = if env.build.is_none() {
                    "from podman's local storage".to_string()
                } else if run == 0 {
                    "cached: no build step ran".to_string()
                } else {
                    format!("{run} of {total} build steps ran")
                };
                (
                    StepState::Done,
                    format!("image {} ({how})", b["name"].as_str().unwrap_or("?")),
                    json!({"image": b["name"], "image_id": b["id"], "steps_run": run, "steps_total": total,
                           "duration_ms": b["duration_ms"], "warnings": b["warnings"]}),
                )
            }
            None => (
                StepState::Unsupported,
                format!(
                    "{} is applied by the local sandbox provider, which builds it with podman; this machine was not booted from it",
                    if env.build.is_some() { "build" } else { "image" }
                ),
                json!({}),
            ),
        };
        let mut data = json!({"step": "build", "state": state, "message": message});
        if let (Some(d), Some(x)) = (data.as_object_mut(), extra.as_object()) {
            d.extend(x.clone());
        }
        app.timeline.emit(Actor::System, "step", data);
        let mut s = step("build", state, Some(message));
        s.duration_ms = app
            .image_build
            .as_ref()
            .and_then(|b| b["duration_ms"].as_u64());
        set_step(app, generation, s);
    }
    if let Some(cmd) = &env.install {
        let started = Instant::now();
        let mut s = step("install", StepState::Running, None);
        set_step(app, generation, s.clone());
        app.timeline.emit(
            Actor::System,
            "step",
            json!({"step": "install", "state": "running", "command": cmd}),
        );
        let (code, tail) = run_step(app, "install", cmd, ws, &vars, &secrets, true).await;
        s.exit_code = code;
        s.duration_ms = Some(started.elapsed().as_millis() as u64);
        s.log_tail = tail;
        s.state = if code == Some(0) {
            StepState::Done
        } else {
            StepState::Failed
        };
        app.timeline.emit(
            Actor::System,
            "step",
            json!({"step": "install", "state": s.state, "exit_code": code, "duration_ms": s.duration_ms, "log_tail": if code == Some(0) { String::new() } else { s.log_tail.clone() }}),
        );
        let failed = s.state == StepState::Failed;
        set_step(app, generation, s);
        if failed {
            return false;
        }
    }
    if let Some(cmd) = &env.start {
        let mut s = step("start", StepState::Running, None);
        app.timeline.emit(
            Actor::System,
            "step",
            json!({"step": "start", "state": "running", "command": cmd}),
        );
        let (a, cmd2, ws2, vars2, sec2) = (
            app.clone(),
            cmd.clone(),
            ws.to_path_buf(),
            vars.clone(),
            secrets.clone(),
        );
        tokio::spawn(async move {
            let (code, tail) = run_step(&a, "start", &cmd2, &ws2, &vars2, &sec2, false).await;
            a.timeline.emit(
                Actor::System,
                "step",
                json!({"step": "start", "state": "exited", "exit_code": code}),
            );
            let mut st = a.env.lock().unwrap();
            if let Some(s) = st.steps.iter_mut().find(|s| s.name == "start") {
                s.exit_code = code;
                s.log_tail = tail;
                s.state = if code == Some(0) {
                    StepState::Done
                } else {
                    StepState::Failed
                };
            }
        });
        s.state = StepState::Running;
        set_step(app, generation, s);
    }
    if !env.terminals.is_empty() {
        if let Err(e) = start_terminals(app, env, ws, &vars, generation).await {
            app.timeline.emit(
                Actor::System,
                "error",
                json!({"step": "terminals", "message": e}),
            );
            set_step(
                app,
                generation,
                step("terminals", StepState::Failed, Some(e)),
            );
            return false;
        }
    }
    if !env.ports.is_empty() {
        tokio::spawn(watch_ports(app.clone(), generation));
    }
    true
}

/// Runs one step's shell command, streaming its output as `terminal` events.
async fn run_step(
    app: &Arc<App>,
    name: &str,
    cmd: &str,
    ws: &Path,
    vars: &HashMap<String, String>,
    secrets: &HashMap<String, String>,
    blocking: bool,
) -> (Option<i32>, String) {
    let mut c = app.workload.command("sh");
    c.arg("-c")
        .arg(cmd)
        .current_dir(ws)
        .envs(vars)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = match c.spawn() {
        Ok(c) => c,
        Err(e) => return (None, format!("could not start: {e}")),
    };
    if let Some(id) = child.id() {
        if !blocking {
            app.env_procs.lock().unwrap().push(id as i32);
        }
    }
    let tail = Arc::new(Mutex::new(String::new()));
    let mut readers = Vec::new();
    for out in [
        Box::new(child.stdout.take().expect("piped"))
            as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let (a, n, t, sec) = (app.clone(), name.to_string(), tail.clone(), secrets.clone());
        readers.push(tokio::spawn(async move { pump(a, n, out, t, sec).await }));
    }
    let status = child.wait().await.ok().and_then(|s| s.code());
    for r in readers {
        let _ = tokio::time::timeout(Duration::from_secs(1), r).await;
    }
    let t = tail.lock().unwrap().clone();
    (status, t)
}

async fn pump(
    app: Arc<App>,
    name: String,
    mut r: Box<dyn tokio::io::AsyncRead + Unpin + Send>,
    tail: Arc<Mutex<String>>,
    secrets: HashMap<String, String>,
) {
    let mut red = StreamRedactor::new(&secrets);
    let mut budget = OutputBudget::new(Instant::now());
    let mut buf = vec![0u8; 8192];
    let mut said = Instant::now();
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(250), r.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break,
            Ok(Ok(n)) => n,
            Err(_) => {
                let s = red.idle_flush();
                emit_text(&app, &name, budget.admit(&s, Instant::now()), &tail);
                emit_cut(&app, &name, &mut budget);
                continue;
            }
        };
        let s = red.push(&buf[..n]);
        emit_text(&app, &name, budget.admit(&s, Instant::now()), &tail);
        if said.elapsed() >= Duration::from_secs(1) {
            said = Instant::now();
            emit_cut(&app, &name, &mut budget);
        }
    }
    let s = red.flush();
    emit_text(&app, &name, budget.admit(&s, Instant::now()), &tail);
    emit_cut(&app, &name, &mut budget);
}

fn emit_text(app: &App, name: &str, s: &str, tail: &Mutex<String>) {
    if s.is_empty() {
        return;
    }
    push_tail(&mut tail.lock().unwrap(), s);
    app.timeline
        .emit(Actor::System, "terminal", json!({"name": name, "text": s}));
}

/// The agent's own tmux server (in its data dir), so agents sharing a host never touch each
/// other's terminals.
/// In the workload sandbox, under `terminals/`: the one part of the data directory the
/// workload sees.
pub fn tmux_socket(app: &App) -> PathBuf {
    if app.workload.sandboxed() {
        app.cfg.data_dir.join("terminals").join("tmux.sock")
    } else {
        app.cfg.data_dir.join("tmux.sock")
    }
}

async fn tmux(app: &App, args: &[&str]) -> Result<String, String> {
    // The tmux server a first command starts inherits this environment, and every pane the
    // server's: never a token the agent itself may have been started with.
    // Through the workload too: a tmux server can make its client exec a command
    // (MSG_EXEC), and the server is the coding agent's.
    let out = app
        .workload
        .tmux()
        .arg("-S")
        .arg(tmux_socket(app))
        .args(args)
        .env_remove("PORTHOLE_TOKEN")
        .output()
        .await
        .map_err(|e| format!("tmux: {e} (is tmux installed?)"))?;
    if !out.status.success() {
        return Err(format!(
            "tmux {}: {}",
            args.first().unwrap_or(&""),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A terminal's FIFO file name: its window name made a plain file name (a terminal named
/// `/abs/x` or `../x` once made the agent `remove_file` and `mkfifo` wherever it said), with a
/// hash of the whole name so two names that map alike still get files of their own.
fn fifo_stem(window: &str) -> String {
    let plain: String = window
        .chars()
        .take(48)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    // FNV-1a: stable across runs and builds (the restart path recomputes it).
    let h = window.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    });
    format!("{plain}-{:08x}", h as u32)
}

fn terminal_name(t: &porthole_envfile::Terminal, i: usize) -> String {
    t.name
        .clone()
        .filter(|n| !n.trim().is_empty())
        .unwrap_or_else(|| format!("terminal-{}", i + 1))
}

async fn start_terminals(
    app: &Arc<App>,
    env: &PortholeEnvironment,
    ws: &Path,
    vars: &HashMap<String, String>,
    generation: u64,
) -> Result<(), String> {
    let dir = app.cfg.data_dir.join("terminals");
    std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
        .create(&dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    let wsd = ws.to_string_lossy().to_string();
    let sock = tmux_socket(app).to_string_lossy().to_string();
    let script = Arc::new(export_script(vars));
    let mut statuses = Vec::new();
    for (i, t) in env.terminals.iter().enumerate() {
        let name = terminal_name(t, i);
        // tmux window names must not contain '.' or ':' (target syntax).
        let window = name.replace(['.', ':'], "_");
        let stem = fifo_stem(&window);
        let gate = format!("porthole-start-{window}");
        // Output goes through a FIFO, never a file: raw terminal bytes (which may hold secrets)
        // must not touch the disk before redaction.
        let fifo = dir.join(format!("{stem}.fifo"));
        let _ = std::fs::remove_file(&fifo);
        let cpath =
            std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::mkfifo(cpath.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "mkfifo {}: {}",
                fifo.display(),
                std::io::Error::last_os_error()
            ));
        }
        // Read-write so the reader never sees EOF between writers (pane restarts).
        let rx = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .map_err(|e| format!("open {}: {e}", fifo.display()))?;
        // The environment (secrets, the token) comes through a FIFO the shell sources, never
        // as `-e NAME=value` on tmux's command line.
        let env_fifo = dir.join(format!("{stem}.env"));
        let _ = std::fs::remove_file(&env_fifo);
        let cenv = std::ffi::CString::new(env_fifo.to_string_lossy().as_bytes())
            .map_err(|e| e.to_string())?;
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::mkfifo(cenv.as_ptr(), 0o600) } != 0 {
            return Err(format!(
                "mkfifo {}: {}",
                env_fifo.display(),
                std::io::Error::last_os_error()
            ));
        }
        terminal_envs()
            .lock()
            .unwrap()
            .insert(env_fifo.clone(), script.clone());
        serve_terminal_env(app.clone(), env_fifo.clone(), generation);
        // The command waits until the pane's output is piped, so its first lines are kept.
        let command = format!(
            "unset LOCPATH; . {}; tmux -S {} wait-for {gate}; {}",
            sh_quote(&env_fifo.to_string_lossy()),
            sh_quote(&sock),
            t.command
        );
        let mut args: Vec<String> = if i == 0 {
            vec![
                "new-session".into(),
                "-d".into(),
                "-s".into(),
                TMUX_SESSION.into(),
                "-x".into(),
                "200".into(),
                "-y".into(),
                "50".into(),
                "-n".into(),
                window.clone(),
            ]
        } else {
            vec![
                "new-window".into(),
                "-t".into(),
                TMUX_SESSION.into(),
                "-n".into(),
                window.clone(),
            ]
        };
        args.extend(["-c".into(), wsd.clone()]);
        args.push(command);
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        tmux(app, &refs).await?;
        let target = format!("{TMUX_SESSION}:{window}");
        tmux(
            app,
            &["set-option", "-w", "-t", &target, "remain-on-exit", "on"],
        )
        .await?;
        tmux(
            app,
            &[
                "pipe-pane",
                "-o",
                "-t",
                &target,
                &format!("{} > '{}'", app.workload.tool("cat"), fifo.display()),
            ],
        )
        .await?;
        tmux(app, &["wait-for", "-S", &gate]).await?;
        app.timeline.emit(
            Actor::System,
            "step",
            json!({"step": format!("terminal:{name}"), "state": "running", "window": target}),
        );
        statuses.push(TerminalStatus {
            name: name.clone(),
            command: t.command.clone(),
            window: target.clone(),
            running: true,
            exit_status: None,
            log_tail: String::new(),
        });
        tokio::spawn(follow_terminal(app.clone(), name, target, rx, generation));
    }
    let mut st = app.env.lock().unwrap();
    if st.generation == generation {
        st.terminals = statuses;
        st.tmux_session = Some(TMUX_SESSION.into());
        st.tmux_socket = Some(tmux_socket(app));
    }
    Ok(())
}

/// Streams a terminal's output (redacted) and watches its pane for exit.
async fn follow_terminal(
    app: Arc<App>,
    name: String,
    target: String,
    mut rx: tokio::net::unix::pipe::Receiver,
    generation: u64,
) {
    let secrets = app.secrets.lock().unwrap().clone();
    let mut red = StreamRedactor::new(&secrets);
    let mut reported_exit = false;
    let mut buf = vec![0u8; 16 * 1024];
    let mut check = tokio::time::interval(Duration::from_millis(500));
    let budget = Mutex::new(OutputBudget::new(Instant::now()));
    let emit = |s: &str| {
        let s = budget.lock().unwrap().admit(s, Instant::now()).to_string();
        if !s.is_empty() {
            update_terminal(&app, &name, |t| push_tail(&mut t.log_tail, &s));
            app.timeline
                .emit(Actor::System, "terminal", json!({"name": name, "text": s}));
        }
    };
    loop {
        if app.env.lock().unwrap().generation != generation {
            return;
        }
        tokio::select! {
            r = tokio::time::timeout(Duration::from_secs(1), rx.read(&mut buf)) => match r {
                Ok(Ok(n)) if n > 0 => emit(&red.push(&buf[..n])),
                Ok(_) => {}
                Err(_) => emit(&red.idle_flush()),
            },
            _ = check.tick() => {
                emit_cut(&app, &name, &mut budget.lock().unwrap());
                let out = tmux(&app, &["list-panes", "-t", &target, "-F", "#{pane_dead} #{pane_dead_status}"]).await;
                let dead = match &out {
                    Ok(s) => s.trim().split_once(' ').filter(|(d, _)| *d == "1").map(|(_, st)| st.parse::<i32>().ok()),
                    Err(_) => Some(None),
                };
                match dead {
                    Some(status) if !reported_exit => {
                        reported_exit = true;
                        emit(&red.flush());
                        update_terminal(&app, &name, |t| {
                            t.running = false;
                            t.exit_status = status;
                        });
                        app.timeline.emit(Actor::System, "step", json!({"step": format!("terminal:{name}"), "state": "exited", "exit_code": status, "restartable": true}));
                    }
                    None if reported_exit => {
                        reported_exit = false;
                        update_terminal(&app, &name, |t| {
                            t.running = true;
                            t.exit_status = None;
                        });
                    }
                    _ => {}
                }
            }
        }
    }
}

fn update_terminal(app: &App, name: &str, f: impl FnOnce(&mut TerminalStatus)) {
    let mut st = app.env.lock().unwrap();
    if let Some(t) = st.terminals.iter_mut().find(|t| t.name == name) {
        f(t);
    }
}

/// Restarts a terminal whose command exited (or kills and restarts a running one).
pub async fn restart_terminal(app: &Arc<App>, name: &str) -> Result<(), String> {
    let target = app
        .env
        .lock()
        .unwrap()
        .terminals
        .iter()
        .find(|t| t.name == name)
        .map(|t| t.window.clone());
    let target = target.ok_or_else(|| format!("no terminal named '{name}'"))?;
    // The respawned shell sources its environment again.
    let window = target.rsplit(':').next().unwrap_or_default();
    let generation = app.env.lock().unwrap().generation;
    serve_terminal_env(
        app.clone(),
        app.cfg
            .data_dir
            .join("terminals")
            .join(format!("{}.env", fifo_stem(window))),
        generation,
    );
    tmux(app, &["respawn-pane", "-k", "-t", &target]).await?;
    app.timeline.emit(
        Actor::System,
        "step",
        json!({"step": format!("terminal:{name}"), "state": "running", "restarted": true}),
    );
    Ok(())
}

/// Ports listening on this machine, from /proc/net/tcp{,6} (state 0A = LISTEN).
pub fn listening_ports() -> Vec<u16> {
    let mut out = Vec::new();
    for f in ["/proc/net/tcp", "/proc/net/tcp6"] {
        if let Ok(s) = std::fs::read_to_string(f) {
            for line in s.lines().skip(1) {
                let cols: Vec<&str> = line.split_whitespace().collect();
                if cols.len() > 3 && cols[3] == "0A" {
                    if let Some(port) = cols[1]
                        .rsplit(':')
                        .next()
                        .and_then(|p| u16::from_str_radix(p, 16).ok())
                    {
                        out.push(port);
                    }
                }
            }
        }
    }
    out
}

async fn watch_ports(app: Arc<App>, generation: u64) {
    loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let open = listening_ports();
        let mut events = Vec::new();
        {
            let mut st = app.env.lock().unwrap();
            if st.generation != generation {
                return;
            }
            for p in st.ports.iter_mut() {
                let now = open.contains(&p.port);
                if now != p.listening {
                    p.listening = now;
                    p.since_t_ms = Some(app.timeline.now_ms());
                    events.push(json!({"port": p.port, "name": p.name, "state": if now { "listening" } else { "closed" }}));
                }
            }
        }
        for e in events {
            app.timeline.emit(Actor::System, "port", e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redactor_catches_secrets_split_across_chunks() {
        let secrets: HashMap<String, String> =
            [("TOKEN".to_string(), "hunter2-secret".to_string())].into();
        let mut r = StreamRedactor::new(&secrets);
        let mut out = String::new();
        for chunk in ["token is hun", "ter2-se", "cret and é", "\n"] {
            out += &r.push(chunk.as_bytes());
        }
        out += &r.flush();
        assert_eq!(out, "token is [REDACTED:TOKEN] and é\n");
        // A prefix that never completes is shown once the stream flushes.
        let mut r = StreamRedactor::new(&secrets);
        let mut out = r.push(b"hunter");
        assert_eq!(out, "");
        out += &r.flush();
        assert_eq!(out, "hunter");
        // UTF-8 split in the middle of a character is held until complete.
        let mut r = StreamRedactor::new(&HashMap::new());
        let e = "é".as_bytes();
        assert_eq!(r.push(&e[..1]), "");
        assert_eq!(r.push(&e[1..]), "é");
    }

    /// Each row: seconds since the start, bytes offered, bytes admitted, bytes cut so far.
    #[test]
    fn output_budget_table() {
        let t0 = Instant::now();
        let mut b = OutputBudget::new(t0);
        let kib = 1024usize;
        let rows: &[(f64, usize, usize, u64)] = &[
            (0.0, 100 * kib, 100 * kib, 0),
            (0.0, 200 * kib, 156 * kib, 44 * 1024),
            (0.0, 10, 0, 44 * 1024 + 10),
            (1.0, 100 * kib, 64 * kib, 44 * 1024 + 10 + 36 * 1024),
            (
                100.0,
                300 * kib,
                256 * kib,
                44 * 1024 + 10 + 36 * 1024 + 44 * 1024,
            ),
        ];
        for (at, offered, admitted, cut) in rows {
            let s = "x".repeat(*offered);
            let got = b.admit(&s, t0 + Duration::from_secs_f64(*at)).len();
            assert_eq!(got, *admitted, "at {at} s, {offered} bytes");
            assert_eq!(b.cut, *cut, "at {at} s");
        }
        assert_eq!(b.take_cut(), 44 * 1024 + 10 + 36 * 1024 + 44 * 1024);
        assert_eq!(b.take_cut(), 0);
        // Never half a character.
        let mut b = OutputBudget::new(t0);
        b.tokens = 2.0;
        assert_eq!(b.admit("é€", t0), "é");
    }

    #[test]
    fn fifo_names_stay_in_the_terminals_directory() {
        for (window, plain) in [
            ("agent", "agent-"),
            ("/abs/x", "_abs_x-"),
            ("../../etc/passwd", "______etc_passwd-"),
            ("it's; rm -rf ~", "it_s__rm_-rf__-"),
        ] {
            let s = fifo_stem(window);
            assert!(s.starts_with(plain), "{window} -> {s}");
            assert!(!s.contains('/') && !s.contains('\'') && s != "..", "{s}");
            assert_eq!(
                Path::new("/d").join(format!("{s}.fifo")).parent(),
                Some(Path::new("/d"))
            );
        }
        assert_ne!(
            fifo_stem("a b"),
            fifo_stem("a_b"),
            "names that map alike get their own files"
        );
        assert_eq!(
            fifo_stem("agent"),
            fifo_stem("agent"),
            "the restart path finds the same file"
        );
    }

    /// For every way of cutting the output into two or three chunks, with invalid bytes
    /// around and inside it, the secret never comes out (what `issue 19` found leaking).
    #[test]
    fn a_secret_that_ends_in_its_first_character_is_not_cut_through() {
        let secrets = HashMap::from([("S".to_string(), "s3cr3ts".to_string())]);
        let mut r = StreamRedactor::new(&secrets);
        let mut out = r.push(b"x s3cr3ts");
        out += &r.push(b" y");
        out += &r.flush();
        assert_eq!(out, "x [REDACTED:S] y");
    }

    #[test]
    fn the_secret_never_comes_out_whatever_the_chunking_and_the_bytes() {
        let secret = "sk-live-4f9Q";
        let secrets = HashMap::from([("API_KEY".to_string(), secret.to_string())]);
        let inputs: Vec<Vec<u8>> = vec![
            [b"\xff".as_slice(), secret.as_bytes(), b"\n"].concat(),
            [b"x\xc3".as_slice(), secret.as_bytes(), b"\xe2\x82"].concat(),
            [
                b"\xf0\x9f\x98\x80 ".as_slice(),
                secret.as_bytes(),
                b" \xff\xfe",
                secret.as_bytes(),
            ]
            .concat(),
            [b"sk-liv\xff".as_slice(), secret.as_bytes()].concat(),
        ];
        for input in &inputs {
            let n = input.len();
            for a in 0..=n {
                for b in a..=n {
                    let mut r = StreamRedactor::new(&secrets);
                    let mut out = String::new();
                    out += &r.push(&input[..a]);
                    out += &r.push(&input[a..b]);
                    out += &r.push(&input[b..]);
                    out += &r.flush();
                    assert!(
                        !out.contains(secret),
                        "cut at {a},{b} of {input:?}: {out:?}"
                    );
                    assert!(!out.contains("sk-live-4f"), "a half came out: {out:?}");
                    assert_eq!(
                        out.matches("[REDACTED:API_KEY]").count(),
                        input
                            .windows(secret.len())
                            .filter(|w| *w == secret.as_bytes())
                            .count(),
                        "{out:?}"
                    );
                }
            }
        }
    }

    fn mkfifo(p: &Path) {
        let c = std::ffi::CString::new(p.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    }

    fn scratch_dir(name: &str) -> PathBuf {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let d = std::env::temp_dir().join(format!(
            "porthole-env-test-{name}-{}-{nanos}",
            std::process::id()
        ));
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[tokio::test]
    async fn a_terminal_gets_its_environment_through_a_fifo_never_a_command_line() {
        let dir = scratch_dir("fifo");
        let fifo = dir.join("agent.env");
        mkfifo(&fifo);
        let secret = "sk-live 'quoted' $(touch pwned) `x` \\ \n line2";
        let vars: HashMap<String, String> = [
            ("API_KEY".to_string(), secret.to_string()),
            ("PORTHOLE_TOKEN".to_string(), "agent-token-123".to_string()),
            // Not a variable name: left out rather than turned into shell syntax.
            ("X; touch pwned2".to_string(), "v".to_string()),
        ]
        .into();
        let script = export_script(&vars);
        assert!(!script.contains("pwned2"), "{script}");
        let (f2, s2) = (fifo.clone(), script.clone());
        let writer =
            tokio::spawn(
                async move { hand_over(&f2, &s2, Duration::from_secs(20), || true).await },
            );
        // What a pane runs: the FIFO's path is all its command line holds.
        let command = format!(
            ". {}; printf '%s|%s' \"$API_KEY\" \"$PORTHOLE_TOKEN\"",
            sh_quote(&fifo.to_string_lossy())
        );
        assert!(!command.contains("sk-live"));
        let out = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(&command)
            .current_dir(&dir)
            .output()
            .await
            .unwrap();
        assert!(writer.await.unwrap(), "the script was handed over");
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            format!("{secret}|agent-token-123"),
            "stderr: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(!dir.join("pwned").exists() && !dir.join("pwned2").exists());
        // Nothing was stored: the FIFO holds no bytes once read.
        assert_eq!(std::fs::metadata(&fifo).unwrap().len(), 0);

        // A regular file put where the FIFO was never receives the script.
        let _ = std::fs::remove_file(&fifo);
        std::fs::write(&fifo, "").unwrap();
        assert!(!hand_over(&fifo, &script, Duration::from_secs(1), || true).await);
        assert_eq!(std::fs::read(&fifo).unwrap(), b"");
        // No reader within the wait: gives up.
        let lone = dir.join("lone.env");
        mkfifo(&lone);
        assert!(!hand_over(&lone, &script, Duration::from_millis(200), || true).await);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn listening_ports_sees_a_listener() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        assert!(listening_ports().contains(&port));
    }
}
