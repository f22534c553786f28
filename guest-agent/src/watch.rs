//! Watchers for agent runs: file changes in a git workspace (`files`, `commit` events), a
//! `tasks.json` task list (`tasks`), and a `stalled` event when the coding agent goes quiet.

use crate::app::App;
use porthole_proto::Actor;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// In the workload: the repository's config is the coding agent's (`core.fsmonitor`, filter
/// drivers run commands).
async fn git(app: &App, ws: &Path, args: &[&str]) -> Option<String> {
    let out = app
        .workload
        .host_command("git")
        .arg("-C")
        .arg(ws)
        .args(args)
        .output()
        .await
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim_end().to_string())
}

/// Summarises a `tasks.json` (`[{"id","content","status","blockedBy":[]}]`).
pub fn summarize_tasks(v: &Value) -> Value {
    let tasks = v.as_array().cloned().unwrap_or_default();
    let done: Vec<&Value> = tasks
        .iter()
        .filter(|t| {
            matches!(
                t["status"].as_str(),
                Some("done" | "completed" | "complete")
            )
        })
        .collect();
    let done_ids: Vec<&str> = done.iter().filter_map(|t| t["id"].as_str()).collect();
    let blocked: Vec<Value> = tasks
        .iter()
        .filter(|t| !done.contains(t))
        .filter(|t| {
            t["blockedBy"].as_array().is_some_and(|b| {
                b.iter()
                    .any(|d| d.as_str().is_some_and(|d| !done_ids.contains(&d)))
            })
        })
        .filter_map(|t| t["id"].as_str().map(|s| json!(s)))
        .collect();
    let items: Vec<Value> = tasks
        .iter()
        .map(|t| {
            let id = t["id"].as_str().unwrap_or("");
            json!({"id": id, "text": t["content"], "status": t["status"], "done": done.contains(&t), "blocked": blocked.contains(&json!(id))})
        })
        .collect();
    json!({"total": tasks.len(), "done": done.len(), "blocked": blocked, "items": items})
}

pub fn spawn(app: Arc<App>, ws: PathBuf, stall_after: Duration) {
    tokio::spawn(async move {
        let is_git = ws.join(".git").exists();
        let (mut last_status, mut last_head) = (String::new(), String::new());
        let mut tasks_mtime = None;
        let mut events = app.timeline.subscribe();
        let mut last_activity = Instant::now();
        let mut stalled = false;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                ev = events.recv() => {
                    let Ok(e) = ev else { continue };
                    let active = match e.kind.as_str() {
                        "terminal" => e.data["name"] == "agent",
                        "action" | "input" | "files" | "commit" | "tasks" => true,
                        _ => false,
                    };
                    if active {
                        last_activity = Instant::now();
                        if stalled {
                            stalled = false;
                            app.timeline.emit(Actor::System, "stalled", json!({"state": "active"}));
                        }
                    }
                }
                _ = tick.tick() => {
                    if is_git {
                        if let Some(st) = git(&app, &ws, &["status", "--porcelain=v1"]).await {
                            if st != last_status {
                                let stat = git(&app, &ws, &["diff", "--shortstat", "HEAD"]).await.unwrap_or_default();
                                let files: Vec<&str> = st.lines().take(200).collect();
                                app.timeline.emit(Actor::Agent, "files", json!({"changed": files, "shortstat": stat.trim()}));
                                last_status = st;
                            }
                        }
                        if let Some(head) = git(&app, &ws, &["log", "-1", "--format=%H %s"]).await {
                            if head != last_head {
                                if !last_head.is_empty() {
                                    let (sha, subject) = head.split_once(' ').unwrap_or((&head, ""));
                                    app.timeline.emit(Actor::Agent, "commit", json!({"sha": sha, "subject": subject}));
                                }
                                last_head = head;
                            }
                        }
                    }
                    let tf = ws.join("tasks.json");
                    let mtime = std::fs::metadata(&tf).and_then(|m| m.modified()).ok();
                    if mtime.is_some() && mtime != tasks_mtime {
                        tasks_mtime = mtime;
                        match std::fs::read_to_string(&tf).ok().and_then(|t| serde_json::from_str::<Value>(&t).ok()) {
                            Some(v) => { app.timeline.emit(Actor::Agent, "tasks", summarize_tasks(&v)); }
                            None => { app.timeline.emit(Actor::System, "error", json!({"source": "tasks.json", "message": "tasks.json is not valid JSON"})); }
                        }
                    }
                    let has_agent = app.env.lock().unwrap().terminals.iter().any(|t| t.name == "agent" && t.running);
                    if has_agent && !stall_after.is_zero() && !stalled && last_activity.elapsed() >= stall_after {
                        stalled = true;
                        app.timeline.emit(Actor::System, "stalled", json!({"state": "stalled", "idle_ms": last_activity.elapsed().as_millis() as u64}));
                    }
                }
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_summary() {
        let v = json!([
            {"id": "a", "content": "x", "status": "done", "blockedBy": []},
            {"id": "b", "content": "y", "status": "pending", "blockedBy": ["a"]},
            {"id": "c", "content": "z", "status": "pending", "blockedBy": ["b"]}
        ]);
        let s = summarize_tasks(&v);
        assert_eq!(s["total"], 3);
        assert_eq!(s["done"], 1);
        assert_eq!(s["blocked"], json!(["c"]));
    }
}
