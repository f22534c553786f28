//! `POST /v1/exec`: run a shell command in the guest, with a timeout that kills its whole
//! process group, output capped (and said so), secrets passed as env and redacted from output.

use crate::app::App;
use crate::http::{ApiError, Principal};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use porthole_proto::Actor;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::AsyncReadExt;

/// Bytes kept per stream; the rest is read and dropped so the child never blocks on a full pipe.
pub const OUTPUT_CAP: usize = 1 << 20;
pub const DEFAULT_TIMEOUT_MS: u64 = 60_000;
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub command: String,
    pub cwd: Option<String>,
    #[serde(default)]
    pub env: HashMap<String, String>,
    pub timeout_ms: Option<u64>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExecResult {
    pub exit_code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub duration_ms: u64,
    pub truncated: bool,
    pub timed_out: bool,
}

async fn read_capped<R: tokio::io::AsyncRead + Unpin>(mut r: R) -> (Vec<u8>, bool) {
    let mut kept = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let mut truncated = false;
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = OUTPUT_CAP.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
                truncated |= n > room;
            }
        }
    }
    (kept, truncated)
}

/// Runs `sh -c command` in a new process group.
pub async fn run(
    workload: &crate::workload::Workload,
    req: &ExecRequest,
    extra_env: &HashMap<String, String>,
) -> Result<ExecResult, String> {
    let timeout = Duration::from_millis(req.timeout_ms.unwrap_or(DEFAULT_TIMEOUT_MS));
    let mut cmd = workload.command("sh");
    cmd.arg("-c")
        .arg(&req.command)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd.envs(extra_env)
        .envs(&req.env)
        .process_group(0)
        .kill_on_drop(true);
    if let Some(cwd) = &req.cwd {
        if !std::path::Path::new(cwd).is_dir() {
            return Err(format!("cwd: {cwd} is not a directory"));
        }
        cmd.current_dir(cwd);
    }
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("could not start sh: {e}"))?;
    let pgid = child.id().map(|p| p as i32);
    let out = tokio::spawn(read_capped(child.stdout.take().expect("piped")));
    let err = tokio::spawn(read_capped(child.stderr.take().expect("piped")));
    let (status, timed_out) = match tokio::time::timeout(timeout, child.wait()).await {
        Ok(s) => (s.ok(), false),
        Err(_) => {
            if let Some(pg) = pgid {
                // SAFETY: signalling the process group we created for this command.
                unsafe { libc::kill(-pg, libc::SIGKILL) };
            }
            (child.wait().await.ok(), true)
        }
    };
    // Background grandchildren may keep the pipes open: bound the wait for their output too.
    let grace = Duration::from_millis(200);
    let (o, ot) = tokio::time::timeout(grace, out)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    let (e, et) = tokio::time::timeout(grace, err)
        .await
        .ok()
        .and_then(|r| r.ok())
        .unwrap_or_default();
    Ok(ExecResult {
        exit_code: if timed_out {
            None
        } else {
            status.and_then(|s| s.code())
        },
        stdout: String::from_utf8_lossy(&o).into_owned(),
        stderr: String::from_utf8_lossy(&e).into_owned(),
        duration_ms: start.elapsed().as_millis() as u64,
        truncated: ot || et,
        timed_out,
    })
}

/// `POST /v1/exec`. The operator may always run commands; the coding agent only while it may
/// act (not while paused, not while a human holds control). A request that reached here
/// without a principal is treated as the agent's.
pub async fn handler(
    State(app): State<Arc<App>>,
    principal: Option<axum::Extension<Principal>>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let req: ExecRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("exec body: {e}")))?;
    if exec_gated(principal.map(|p| p.0)) {
        agent_may_exec(&app, &req)?;
    }
    perform(&app, req).await.map(Json)
}

/// Whether an exec from this principal waits on the control lock.
pub fn exec_gated(principal: Option<Principal>) -> bool {
    principal != Some(Principal::Operator)
}

/// Refuses (409 `control_refused`, and a `refused` event) an agent's exec while it may not act.
pub fn agent_may_exec(app: &App, req: &ExecRequest) -> Result<(), ApiError> {
    let refusal = app.control.lock().unwrap().agent_may_act();
    if let Err(r) = refusal {
        app.timeline.emit(
            Actor::Agent,
            "refused",
            json!({"action": "exec", "command": req.command, "reason": r.0}),
        );
        return Err(ApiError::new(StatusCode::CONFLICT, "control_refused", r.0));
    }
    Ok(())
}

/// Runs a validated request for the agent (HTTP and MCP alike); output redacted, recorded.
pub async fn perform(app: &App, req: ExecRequest) -> Result<Value, ApiError> {
    if req.command.trim().is_empty() {
        return Err(ApiError::bad_request("command: must not be empty"));
    }
    if req.timeout_ms.is_some_and(|t| t == 0 || t > MAX_TIMEOUT_MS) {
        return Err(ApiError::bad_request(format!(
            "timeout_ms: expected 1 to {MAX_TIMEOUT_MS}"
        )));
    }
    let max = app.cfg.limits.max_exec;
    let Some(_slot) = crate::app::Slot::take(&app.exec_running, max) else {
        return Err(ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_execs",
            format!("{max} commands are running already (--max-exec {max}): wait for one to end"),
        ));
    };
    let secrets = app.secrets.lock().unwrap().clone();
    let r = run(&app.workload, &req, &secrets)
        .await
        .map_err(ApiError::bad_request)?;
    let red = &app.timeline.redactor;
    let (stdout, stderr) = (red.redact(&r.stdout), red.redact(&r.stderr));
    app.timeline.emit(
        Actor::Agent,
        "exec",
        json!({"command": req.command, "exit_code": r.exit_code, "duration_ms": r.duration_ms, "timed_out": r.timed_out, "truncated": r.truncated}),
    );
    Ok(json!({
        "exit_code": r.exit_code,
        "stdout": stdout,
        "stderr": stderr,
        "duration_ms": r.duration_ms,
        "truncated": r.truncated,
        "timed_out": r.timed_out,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cmd: &str, timeout_ms: Option<u64>) -> ExecRequest {
        ExecRequest {
            command: cmd.into(),
            cwd: None,
            env: HashMap::new(),
            timeout_ms,
        }
    }

    /// Only the operator's exec skips the control lock; an unknown caller is the agent.
    #[test]
    fn who_is_gated() {
        for (p, gated) in [
            (Some(Principal::Operator), false),
            (Some(Principal::Agent), true),
            (None, true),
        ] {
            assert_eq!(exec_gated(p), gated, "{p:?}");
        }
    }

    #[tokio::test]
    async fn runs_with_env_and_exit_code() {
        let mut r = req("echo $A; echo err >&2; exit 3", None);
        r.env.insert("A".into(), "hello".into());
        let out = run(&crate::workload::Workload::direct(), &r, &HashMap::new())
            .await
            .unwrap();
        assert_eq!(
            (out.exit_code, out.stdout.as_str(), out.stderr.as_str()),
            (Some(3), "hello\n", "err\n")
        );
        assert!(!out.truncated && !out.timed_out);
    }

    #[tokio::test]
    async fn timeout_kills_the_process_group() {
        let dir = std::env::temp_dir().join(format!("porthole-exec-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let marker = dir.join("child-alive");
        // The grandchild would write the marker after 1.5 s if it survived the group kill.
        let cmd = format!("(sleep 1.5; touch {}) & sleep 30", marker.display());
        let out = run(
            &crate::workload::Workload::direct(),
            &req(&cmd, Some(300)),
            &HashMap::new(),
        )
        .await
        .unwrap();
        assert!(out.timed_out);
        assert_eq!(out.exit_code, None);
        std::thread::sleep(Duration::from_millis(1800));
        assert!(!marker.exists(), "grandchild survived the timeout");
    }

    #[tokio::test]
    async fn output_is_capped_and_says_so() {
        let out = run(
            &crate::workload::Workload::direct(),
            &req("head -c 3000000 /dev/zero | tr '\\0' x", None),
            &HashMap::new(),
        )
        .await
        .unwrap();
        assert_eq!(out.stdout.len(), OUTPUT_CAP);
        assert!(out.truncated);
        assert_eq!(out.exit_code, Some(0));
    }
}
