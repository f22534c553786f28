//! Agent runs: a repository and a task go in; a machine runs the agent on its own branch
//! (`porthole/<run-id>`, a git worktree for a local repository); the branch and its evidence
//! come out. Several runs on one repository never collide: own worktree, display and ports.

use crate::error::{CoreError, Result};
use crate::machine::{CreateSpec, Machines, ProviderKind};
use crate::store::now_ms;
use serde::Serialize;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone)]
pub struct StartSpec {
    pub repo: String,
    pub base: Option<String>,
    pub task: String,
    pub agent: String,
    pub env: Option<PathBuf>,
    pub provider: ProviderKind,
}

#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub id: String,
    pub repo: String,
    pub base: String,
    pub branch: String,
    pub task: String,
    pub agent: String,
    pub machine: String,
    pub worktree: Option<String>,
    pub status: String,
    pub error: Option<String>,
    pub created_at: i64,
}

pub struct Runs {
    ms: Machines,
}

async fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let out = tokio::process::Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .output()
        .await
        .map_err(|e| CoreError::Git(format!("git: {e} (is git installed?)")))?;
    if !out.status.success() {
        return Err(CoreError::Git(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// A repository given as a URL (cloned) rather than a local path (a worktree).
pub fn is_url(repo: &str) -> bool {
    repo.contains("://") || repo.starts_with("git@")
}

/// The token for cloning and pushing a URL repository: the vault's `GIT_TOKEN`, else
/// `GITHUB_TOKEN` (global secrets). `None`: try without credentials (a public repository).
async fn git_token(ms: &Machines) -> Result<Option<(String, String)>> {
    let vault = crate::vault::Vault::open(ms).await?;
    let all = vault.env_for(None).await?;
    Ok(["GIT_TOKEN", "GITHUB_TOKEN"]
        .iter()
        .find_map(|k| all.get(*k).map(|v| (k.to_string(), v.clone()))))
}

/// Runs git against a remote with the token handed over by `GIT_ASKPASS` (never on a command
/// line or in a URL, so it cannot show up in `ps`, git's messages or the run record).
async fn git_remote(
    dir: &Path,
    args: &[&str],
    token: Option<&(String, String)>,
    run_dir: &Path,
) -> Result<String> {
    let mut cmd = tokio::process::Command::new("git");
    cmd.arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null());
    if let Some((_, value)) = token {
        let askpass = run_dir.join("askpass.sh");
        std::fs::write(&askpass, "#!/bin/sh\ncase \"$1\" in\n  [Uu]sername*) echo \"${PORTHOLE_GIT_USER:-x-access-token}\" ;;\n  *) echo \"$PORTHOLE_GIT_TOKEN\" ;;\nesac\n")
            .map_err(CoreError::io("write askpass"))?;
        std::fs::set_permissions(
            &askpass,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .map_err(CoreError::io("chmod askpass"))?;
        cmd.env("GIT_ASKPASS", &askpass)
            .env("PORTHOLE_GIT_TOKEN", value);
    }
    let out = cmd
        .output()
        .await
        .map_err(|e| CoreError::Git(format!("git: {e} (is git installed?)")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some((_, v)) = token {
        err = err.replace(v.as_str(), "[REDACTED]");
    }
    let low = err.to_lowercase();
    let secret = token.map(|(k, _)| k.as_str());
    Err(CoreError::Git(
        if low.contains("authentication failed")
            || low.contains("403")
            || low.contains("could not read username")
            || low.contains("could not read password")
        {
            match secret {
            Some(k) => format!("the server rejected the credentials (vault secret {k}): check the token and its access to the repository ({err})"),
            None => format!("the server wants credentials: store a token with `porthole secrets set GIT_TOKEN` ({err})"),
        }
        } else if low.contains("not found")
            || low.contains("404")
            || low.contains("does not appear to be a git repository")
        {
            format!("repository not found: {err}")
        } else {
            format!("git {}: {err}", args.first().copied().unwrap_or(""))
        },
    ))
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

type RunRow = (
    String,
    String,
    String,
    String,
    String,
    String,
    String,
    Option<String>,
    String,
    Option<String>,
    i64,
);

fn from_row(r: RunRow) -> Run {
    Run {
        id: r.0,
        repo: r.1,
        base: r.2,
        branch: r.3,
        task: r.4,
        agent: r.5,
        machine: r.6,
        worktree: r.7,
        status: r.8,
        error: r.9,
        created_at: r.10,
    }
}

impl Runs {
    pub fn new(ms: Machines) -> Self {
        Self { ms }
    }

    pub async fn get(&self, id: &str) -> Result<Run> {
        let r: Option<RunRow> = sqlx::query_as(
            "SELECT id, repo, base, branch, task, agent, machine, worktree, status, error, created_at FROM runs WHERE id = ?",
        )
        .bind(id)
        .fetch_optional(&self.ms.store.pool)
        .await?;
        r.map(from_row)
            .ok_or_else(|| CoreError::NoRun(id.to_string()))
    }

    pub async fn list(&self) -> Result<Vec<Run>> {
        let rows: Vec<RunRow> = sqlx::query_as(
            "SELECT id, repo, base, branch, task, agent, machine, worktree, status, error, created_at FROM runs ORDER BY created_at",
        )
        .fetch_all(&self.ms.store.pool)
        .await?;
        Ok(rows.into_iter().map(from_row).collect())
    }

    async fn set_status(&self, id: &str, status: &str, error: Option<&str>) -> Result<()> {
        sqlx::query("UPDATE runs SET status = ?, error = ?, updated_at = ? WHERE id = ?")
            .bind(status)
            .bind(error)
            .bind(now_ms())
            .bind(id)
            .execute(&self.ms.store.pool)
            .await?;
        Ok(())
    }

    /// Checks everything first (repository, base branch, agent command, environment), so a bad
    /// request leaves nothing half-created; then worktree → machine → agent terminal.
    pub async fn start(&self, spec: StartSpec) -> Result<Run> {
        if spec.task.trim().is_empty() {
            return Err(CoreError::Invalid("--task must not be empty".into()));
        }
        if spec.agent.trim().is_empty() {
            return Err(CoreError::Invalid("--agent must name a command".into()));
        }
        if spec.provider != ProviderKind::Local {
            return Err(CoreError::Invalid(
                "runs use --provider local in this version".into(),
            ));
        }
        let id = format!("r{:08x}", rand::random::<u32>());
        let branch = format!("porthole/{id}");
        let dir = self.ms.state.runs().join(&id);
        let url = is_url(&spec.repo);
        let (repo, base) = if url {
            // A clone of its own is the workspace: clone first, so a bad URL or rejected
            // credentials stop here with nothing but this directory to remove.
            std::fs::create_dir_all(&dir)
                .map_err(CoreError::io(format!("create {}", dir.display())))?;
            let token = git_token(&self.ms).await?;
            let clone = dir.join("worktree");
            let r = async {
                git_remote(
                    &dir,
                    &["clone", "--quiet", &spec.repo, &clone.to_string_lossy()],
                    token.as_ref(),
                    &dir,
                )
                .await?;
                let base = match &spec.base {
                    Some(b) => b.clone(),
                    None => git(&clone, &["symbolic-ref", "--short", "HEAD"]).await?,
                };
                git(
                    &clone,
                    &[
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        &format!("origin/{base}^{{commit}}"),
                    ],
                )
                .await
                .map_err(|_| {
                    CoreError::Invalid(format!(
                        "base branch '{base}' does not exist in {}",
                        spec.repo
                    ))
                })?;
                git(
                    &clone,
                    &[
                        "checkout",
                        "--quiet",
                        "-b",
                        &branch,
                        &format!("origin/{base}"),
                    ],
                )
                .await?;
                Ok::<_, CoreError>(base)
            }
            .await;
            match r {
                Ok(base) => (clone, base),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            }
        } else {
            let repo = std::fs::canonicalize(&spec.repo)
                .map_err(|_| CoreError::Invalid(format!("repository {} not found", spec.repo)))?;
            let top = git(&repo, &["rev-parse", "--show-toplevel"])
                .await
                .map_err(|_| {
                    CoreError::Invalid(format!("{} is not a git repository", repo.display()))
                })?;
            let repo = PathBuf::from(top);
            let base = match &spec.base {
                Some(b) => b.clone(),
                None => git(&repo, &["symbolic-ref", "--short", "HEAD"])
                    .await
                    .map_err(|_| {
                        CoreError::Invalid(
                            "the repository has a detached HEAD; pass --branch BASE".into(),
                        )
                    })?,
            };
            git(
                &repo,
                &[
                    "rev-parse",
                    "--verify",
                    "--quiet",
                    &format!("{base}^{{commit}}"),
                ],
            )
            .await
            .map_err(|_| {
                CoreError::Invalid(format!(
                    "base branch '{base}' does not exist in {}",
                    repo.display()
                ))
            })?;
            let dirty = git(&repo, &["status", "--porcelain", "--untracked-files=no"]).await?;
            if !dirty.is_empty() {
                return Err(CoreError::Invalid(format!(
                    "{} has uncommitted changes; commit or stash them first (the run starts from '{base}' and would not see them)",
                    repo.display()
                )));
            }
            (repo, base)
        };
        // From here on a failure must also remove the clone of a URL repository.
        let fail = |e: CoreError| {
            if url {
                let _ = std::fs::remove_dir_all(&dir);
            }
            e
        };
        let program = spec
            .agent
            .split_whitespace()
            .next()
            .unwrap_or_default()
            .to_string();
        let found = if program.contains('/') {
            repo.join(&program).is_file() || Path::new(&program).is_file()
        } else {
            crate::provider::which(&program).is_some()
        };
        if !found {
            return Err(fail(CoreError::Invalid(format!("agent command '{program}' was not found in the machine (not on PATH, not a file in the repository)"))));
        }
        let env_path = spec
            .env
            .clone()
            .or_else(|| crate::environments::find_in_repo(&repo));
        let env = match &env_path {
            Some(p) => Some(crate::environments::load(p).map_err(fail)?),
            None => None,
        };

        let worktree = dir.join("worktree");
        if !url {
            std::fs::create_dir_all(&dir)
                .map_err(CoreError::io(format!("create {}", dir.display())))?;
            git(
                &repo,
                &[
                    "worktree",
                    "add",
                    "-b",
                    &branch,
                    &worktree.to_string_lossy(),
                    &base,
                ],
            )
            .await?;
        }
        let machine = format!("run-{id}");
        let now = now_ms();
        sqlx::query(
            "INSERT INTO runs (id, repo, base, branch, task, agent, machine, worktree, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'starting', ?, ?)",
        )
        .bind(&id)
        .bind(if url { spec.repo.clone() } else { repo.to_string_lossy().to_string() })
        .bind(&base)
        .bind(&branch)
        .bind(&spec.task)
        .bind(&spec.agent)
        .bind(&machine)
        .bind(worktree.to_string_lossy().to_string())
        .bind(now)
        .bind(now)
        .execute(&self.ms.store.pool)
        .await?;

        let r = self
            .launch(&id, &repo, &worktree, &machine, &spec, env)
            .await;
        if let Err(e) = r {
            // Nothing half-created: the machine, the worktree and the branch go again.
            let _ = self.ms.destroy(&machine).await;
            if !url {
                let _ = git(
                    &repo,
                    &["worktree", "remove", "--force", &worktree.to_string_lossy()],
                )
                .await;
                let _ = git(&repo, &["branch", "-D", &branch]).await;
            }
            let _ = std::fs::remove_dir_all(&dir);
            sqlx::query("DELETE FROM runs WHERE id = ?")
                .bind(&id)
                .execute(&self.ms.store.pool)
                .await?;
            return Err(e);
        }
        self.set_status(&id, "running", None).await?;
        self.get(&id).await
    }

    async fn launch(
        &self,
        id: &str,
        repo: &Path,
        worktree: &Path,
        machine: &str,
        spec: &StartSpec,
        env: Option<porthole_envfile::PortholeEnvironment>,
    ) -> Result<()> {
        let m = self
            .ms
            .create(CreateSpec {
                name: machine.to_string(),
                provider: Some(ProviderKind::Local),
                workspace: Some(worktree.to_path_buf()),
                browser: true,
                extra_binds: vec![repo.join(".git")],
                ..Default::default()
            })
            .await?;
        let client = self.ms.client(&m)?;
        let token = self.ms.token(&m)?;
        // Inside the sandbox the agent listens where the machine spec says.
        let inner = format!(
            "http://{}",
            m.spec["listen"].as_str().unwrap_or("127.0.0.1:7300")
        );
        let home = self.ms.state.machine(machine).join("home");
        let mcp = json!({"mcpServers": {"porthole": {"type": "http", "url": format!("{inner}/mcp"), "headers": {"Authorization": format!("Bearer {token}")}}}});
        for p in [
            home.join(".cursor/mcp.json"),
            home.join(".porthole/mcp.json"),
        ] {
            std::fs::create_dir_all(p.parent().expect("has parent"))
                .map_err(CoreError::io("create mcp dir"))?;
            std::fs::write(&p, serde_json::to_vec_pretty(&mcp).unwrap_or_default())
                .map_err(CoreError::io("write mcp config"))?;
        }
        // Claude Code reads project-scoped servers from its user config.
        std::fs::write(
            home.join(".claude.json"),
            serde_json::to_vec_pretty(&json!({"mcpServers": mcp["mcpServers"]}))
                .unwrap_or_default(),
        )
        .map_err(CoreError::io("write claude config"))?;
        std::fs::write(home.join("TASK.md"), &spec.task).map_err(CoreError::io("write task"))?;

        let mut env = env.unwrap_or_default();
        let vars = [
            ("PORTHOLE_RUN_ID", id.to_string()),
            ("PORTHOLE_TASK", spec.task.clone()),
            ("PORTHOLE_AGENT_URL", inner.clone()),
            ("PORTHOLE_MCP_URL", format!("{inner}/mcp")),
            (
                "PORTHOLE_MCP_CONFIG",
                "/home/porthole/.porthole/mcp.json".to_string(),
            ),
            ("PORTHOLE_TOKEN", token.clone()),
            ("GIT_AUTHOR_NAME", "Porthole agent".to_string()),
            ("GIT_AUTHOR_EMAIL", "agent@porthole.invalid".to_string()),
            ("GIT_COMMITTER_NAME", "Porthole agent".to_string()),
            ("GIT_COMMITTER_EMAIL", "agent@porthole.invalid".to_string()),
        ];
        for (k, v) in vars {
            env.env.insert(k.into(), v);
        }
        // The agent runs in a window of the environment's shared tmux session, with the task.
        env.terminals.insert(
            0,
            porthole_envfile::Terminal {
                name: Some("agent".into()),
                command: format!("{} {}", spec.agent, shell_quote(&spec.task)),
                description: Some("the coding agent".into()),
            },
        );
        let env_v = serde_json::to_value(&env).map_err(|e| CoreError::Invalid(e.to_string()))?;
        let mut body = json!({"environment": env_v, "workspace": "/workspace"});
        // API keys for the agent come from the vault as environment variables.
        let vault = crate::vault::Vault::open(&self.ms).await?;
        let secrets = vault.env_for(env.name.as_deref()).await?;
        if !secrets.is_empty() {
            body["secrets"] = json!(secrets);
        }
        client.post("/v1/environment", &body).await?;
        Ok(())
    }

    /// Everything about a run: its record, commits on its branch, diff stat, and live status.
    pub async fn show(&self, id: &str) -> Result<Value> {
        let r = self.get(id).await?;
        let repo = PathBuf::from(&r.repo);
        let commits = git(
            &repo,
            &[
                "log",
                "--format=%h %s",
                &format!("{}..{}", r.base, r.branch),
            ],
        )
        .await
        .unwrap_or_default();
        let stat = git(
            &repo,
            &["diff", "--stat", &format!("{}...{}", r.base, r.branch)],
        )
        .await
        .unwrap_or_default();
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["commits"] = json!(commits.lines().collect::<Vec<_>>());
        v["diff_stat"] = json!(stat);
        if let Ok(m) = self.ms.get(&r.machine).await {
            v["machine_status"] = json!(m.status);
            if let Ok(c) = self.ms.client(&m) {
                if let Ok(env) = c.get("/v1/environment").await {
                    v["environment"] = env;
                }
            }
        }
        Ok(v)
    }

    /// Stops the run's machine; the branch keeps every commit the agent made.
    pub async fn stop(&self, id: &str) -> Result<Run> {
        let r = self.get(id).await?;
        if let Ok(m) = self.ms.get(&r.machine).await {
            // Keep what the machine recorded before it goes.
            let _ = crate::sync::sync_machine(&self.ms, &m).await;
        }
        let _ = self.ms.destroy(&r.machine).await;
        self.set_status(id, "stopped", None).await?;
        self.get(id).await
    }

    /// Reports the run's branch in the repository (a worktree branch is already there), writes
    /// a patch file as the fallback and a Markdown summary for the pull request.
    pub async fn collect(&self, id: &str) -> Result<Value> {
        let r = self.get(id).await?;
        let url = is_url(&r.repo);
        // A local repository has the branch already (the worktree shares it); a URL run's
        // branch lives in its clone and is pushed back when the credentials allow.
        let repo = if url {
            PathBuf::from(r.worktree.clone().unwrap_or_default())
        } else {
            PathBuf::from(&r.repo)
        };
        let base = if url {
            format!("origin/{}", r.base)
        } else {
            r.base.clone()
        };
        git(&repo, &["rev-parse", "--verify", "--quiet", &r.branch])
            .await
            .map_err(|_| {
                CoreError::Git(format!(
                    "branch {} is gone from {}",
                    r.branch,
                    repo.display()
                ))
            })?;
        let commits = git(
            &repo,
            &["log", "--format=%h %s", &format!("{base}..{}", r.branch)],
        )
        .await?;
        let stat = git(
            &repo,
            &["diff", "--stat", &format!("{base}...{}", r.branch)],
        )
        .await?;
        let patch = git(
            &repo,
            &["format-patch", "--stdout", &format!("{base}..{}", r.branch)],
        )
        .await?;
        let dir = self.ms.state.runs().join(id);
        std::fs::create_dir_all(&dir).map_err(CoreError::io("create run dir"))?;
        let patch_path = dir.join(format!("{id}.patch"));
        std::fs::write(&patch_path, &patch).map_err(CoreError::io("write patch"))?;
        let (pushed, push_error) = if url {
            let token = git_token(&self.ms).await?;
            match git_remote(
                &repo,
                &["push", "--quiet", "origin", &format!("{0}:{0}", r.branch)],
                token.as_ref(),
                &dir,
            )
            .await
            {
                Ok(_) => (Some(true), None),
                Err(e) => (Some(false), Some(e.to_string())),
            }
        } else {
            (None, None)
        };
        // The evidence bundle: the machine's recording synced and exported next to the patch.
        if let Ok(m) = self.ms.get(&r.machine).await {
            let _ = crate::sync::sync_machine(&self.ms, &m).await;
        }
        let session: Option<(String,)> = sqlx::query_as(
            "SELECT id FROM sessions WHERE machine = ? ORDER BY started_at DESC LIMIT 1",
        )
        .bind(&r.machine)
        .fetch_optional(&self.ms.store.pool)
        .await?;
        let evidence = match session {
            Some((sid,)) => {
                crate::export::export(&self.ms, &sid, &dir.join("evidence"), None, None)
                    .await
                    .ok()
            }
            None => None,
        };
        let n = commits.lines().count();
        let where_ = match (url, pushed) {
            (true, Some(true)) => format!("pushed to {}", r.repo),
            (true, _) => format!(
                "not pushed ({}); apply `{}` instead",
                push_error.clone().unwrap_or_default(),
                patch_path.display()
            ),
            _ => format!("in {}", r.repo),
        };
        let summary = format!(
            "## Porthole run `{id}`\n\n**Task:** {}\n\n**Branch:** `{}` (from `{}`), {n} commit(s), {where_}\n\n### Commits\n{}\n\n### Diff\n```\n{}\n```\n",
            r.task,
            r.branch,
            r.base,
            commits.lines().map(|l| format!("- {l}")).collect::<Vec<_>>().join("\n"),
            stat
        );
        let summary = match &evidence {
            Some(e) => format!(
                "{summary}\n### Evidence\nRecording with {} events and {} screenshots: open `{}` (video, timeline, screenshots at each action).\n",
                e.events,
                e.screenshots,
                e.html.display()
            ),
            None => summary,
        };
        let summary_path = dir.join("summary.md");
        std::fs::write(&summary_path, &summary).map_err(CoreError::io("write summary"))?;
        let mut v = json!({"id": id, "repo": r.repo, "branch": r.branch, "commits": n, "patch": patch_path, "summary": summary_path,
            "evidence": evidence.as_ref().map(|e| e.html.clone())});
        if let Some(p) = pushed {
            v["pushed"] = json!(p);
            v["push_error"] = json!(push_error);
        }
        Ok(v)
    }
}
