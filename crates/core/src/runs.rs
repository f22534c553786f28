//! Agent runs: a repository and a task go in; a machine runs the agent on its own branch
//! (`porthole/<run-id>`); the branch and its evidence come out. Several runs on one repository
//! never collide: own clone, display and ports.
//!
//! The coding agent and everything it runs are hostile, so the host's repositories never enter
//! the sandbox and nothing the sandbox wrote is ever executed by the host:
//! - The sandbox's workspace (`runs/<id>/worktree`) is a clone of its own, made by the host
//!   before the machine starts: `git clone --no-local --template=` (objects copied through the
//!   pack protocol, so no hardlinks and no alternates into the host repository; no hooks, not
//!   even samples). The user's `.git` is not bound into the machine.
//! - The branch comes back by [`import_branch`], which reads the clone's refs and objects as
//!   data and never runs git with the clone as its repository (see there why).
//! - A URL run's host side is `runs/<id>/host.git`, a bare clone only the host ever writes: the
//!   sandbox's clone is made from it, the branch is imported into it, and it pushes to the URL
//!   recorded at `run start`, with a credential that answers for that URL only.
//! - A run gets the vault secrets its environment declares and no others; the agent token (never
//!   the operator's) is in its environment and MCP configs, which are written 0600.

use crate::error::{CoreError, Result};
use crate::machine::{create_private_dir, write_private, CreateSpec, Machines, ProviderKind};
use crate::store::now_ms;
use serde::Serialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

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

/// Environment variables that would point git at another repository or object store than the
/// one named on its command line (set when Porthole is started from a git hook, say).
const GIT_LOCATION_ENV: &[&str] = &[
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
    "GIT_QUARANTINE_PATH",
];

/// How long one git command may take before it is killed: a sandbox can plant a FIFO where git
/// expects an object file, and a collect must not hang forever on it.
const GIT_TIMEOUT: Duration = Duration::from_secs(15 * 60);

fn git_command() -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new("git");
    for k in GIT_LOCATION_ENV {
        cmd.env_remove(k);
    }
    cmd.env("GIT_TERMINAL_PROMPT", "0")
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    cmd
}

async fn run_git(mut cmd: tokio::process::Command, what: &str) -> Result<std::process::Output> {
    match tokio::time::timeout(GIT_TIMEOUT, cmd.output()).await {
        Ok(r) => r.map_err(|e| CoreError::Git(format!("git: {e} (is git installed?)"))),
        Err(_) => Err(CoreError::Git(format!(
            "git {what}: no answer after {} s",
            GIT_TIMEOUT.as_secs()
        ))),
    }
}

/// Runs git in a repository the host owns (never the sandbox's clone once the machine runs):
/// a working tree, or a bare repository (`*.git`, named with `--git-dir` so that
/// `safe.bareRepository=explicit` does not refuse it).
async fn git(dir: &Path, args: &[&str]) -> Result<String> {
    let mut cmd = git_command();
    if is_bare_path(dir) {
        cmd.arg("--git-dir").arg(dir);
    } else {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args);
    let out = run_git(cmd, args.first().copied().unwrap_or("")).await?;
    if !out.status.success() {
        return Err(CoreError::Git(format!(
            "git {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The run's own bare repositories (`host.git`, the import scratch) end in `.git`; a user's
/// repository is always its top-level working directory.
fn is_bare_path(dir: &Path) -> bool {
    dir.extension().is_some_and(|e| e == "git")
        && dir.join("HEAD").is_file()
        && dir.join("objects").is_dir()
        && !dir.join(".git").exists()
}

/// A repository given as a URL (cloned) rather than a local path.
pub fn is_url(repo: &str) -> bool {
    repo.contains("://") || repo.starts_with("git@")
}

/// A credential for one URL: a vault secret's name and value.
struct Credential {
    secret: String,
    token: String,
}

/// The token for cloning and pushing a URL repository: the vault's `GIT_TOKEN`, else
/// `GITHUB_TOKEN` (global secrets; never handed to the machine unless its environment declares
/// them). `None`: try without credentials (a public repository).
async fn git_token(ms: &Machines) -> Result<Option<Credential>> {
    let vault = crate::vault::Vault::open(ms).await?;
    for k in ["GIT_TOKEN", "GITHUB_TOKEN"] {
        if let Some(token) = vault.get(k, None).await? {
            return Ok(Some(Credential {
                secret: k.to_string(),
                token,
            }));
        }
    }
    Ok(None)
}

/// What git's askpass is asked for an HTTP(S) URL (git's `credential_describe`): the user name
/// to answer, the username prompt and the password prompt. `None` for other transports (ssh
/// uses its own keys; nothing of the vault's is handed to it).
fn credential_prompts(url: &str) -> Option<(String, String, String)> {
    let (scheme, rest) = url.split_once("://")?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let (user, host) = match authority.rsplit_once('@') {
        Some((u, h)) => (u.split(':').next().unwrap_or("").to_string(), h),
        None => (String::new(), authority),
    };
    if host.is_empty() {
        return None;
    }
    let user = if user.is_empty() {
        "x-access-token".to_string()
    } else {
        user
    };
    Some((
        user.clone(),
        format!("Username for '{scheme}://{host}': "),
        format!("Password for '{scheme}://{user}@{host}': "),
    ))
}

/// Answers git's prompts only when they name the run's own URL (same scheme, host and port):
/// a redirect or a remote rewritten to another host gets nothing. The token comes from the
/// environment git hands down (never a command line, a URL or a file).
const ASKPASS: &str = r#"#!/bin/sh
# Porthole: the vault's token for one URL only.
if [ "$1" = "$PORTHOLE_GIT_USER_PROMPT" ]; then
  printf '%s\n' "$PORTHOLE_GIT_USER"
elif [ "$1" = "$PORTHOLE_GIT_PASS_PROMPT" ]; then
  printf '%s\n' "$PORTHOLE_GIT_TOKEN"
else
  echo "porthole: no credential for this prompt: $1" >&2
  exit 1
fi
"#;

fn write_executable(path: &Path, contents: &str) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o700)
        .open(path)
        .map_err(CoreError::io(format!("create {}", path.display())))?;
    f.write_all(contents.as_bytes())
        .map_err(CoreError::io(format!("write {}", path.display())))
}

/// Runs git against `url` (clone, push) from a repository the host owns, with the vault's
/// token handed over by an askpass that answers for `url` alone. The user's own credential
/// helpers are switched off while the vault's token is in play (none of them stores it, none
/// answers instead).
async fn git_remote(
    dir: &Path,
    url: &str,
    args: &[&str],
    cred: Option<&Credential>,
    run_dir: &Path,
) -> Result<String> {
    let mut cmd = git_command();
    let prompts = cred.and_then(|c| credential_prompts(url).map(|p| (c, p)));
    let askpass = run_dir.join("askpass.sh");
    if let Some((c, (user, user_prompt, pass_prompt))) = &prompts {
        write_executable(&askpass, ASKPASS)?;
        cmd.args([
            "-c",
            "credential.helper=",
            "-c",
            "credential.useHttpPath=false",
        ])
        .env("GIT_ASKPASS", &askpass)
        .env_remove("SSH_ASKPASS")
        .env("PORTHOLE_GIT_USER", user)
        .env("PORTHOLE_GIT_USER_PROMPT", user_prompt)
        .env("PORTHOLE_GIT_PASS_PROMPT", pass_prompt)
        .env("PORTHOLE_GIT_TOKEN", &c.token);
    }
    if is_bare_path(dir) {
        cmd.arg("--git-dir").arg(dir);
    } else {
        cmd.arg("-C").arg(dir);
    }
    cmd.args(args);
    let out = run_git(cmd, args.first().copied().unwrap_or("")).await;
    if prompts.is_some() {
        let _ = std::fs::remove_file(&askpass);
    }
    let out = out?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_string());
    }
    let mut err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    if let Some(c) = cred {
        err = err.replace(c.token.as_str(), "[REDACTED]");
    }
    let low = err.to_lowercase();
    let secret = cred.map(|c| c.secret.as_str());
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

/// Makes the sandbox's workspace: a clone of `source` (a repository the host owns) on `branch`
/// at `start`. `--no-local` copies objects through the pack protocol (no hardlinks, no
/// alternates back into `source`), `--template=` leaves `hooks/` out altogether. The clone's
/// `.git` is a fresh directory of the run's own; git runs in it only here, before the machine
/// exists.
async fn clone_workspace(source: &Path, worktree: &Path, branch: &str, start: &str) -> Result<()> {
    let mut cmd = git_command();
    cmd.args([
        "clone",
        "--quiet",
        "--no-local",
        "--no-hardlinks",
        "--template=",
        "--no-checkout",
        "--",
    ])
    .arg(source)
    .arg(worktree);
    let out = run_git(cmd, "clone").await?;
    if !out.status.success() {
        return Err(CoreError::Git(format!(
            "git clone {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    git(worktree, &["checkout", "--quiet", "-b", branch, start]).await?;
    Ok(())
}

/// Reads a small regular file without following a final symlink and without blocking on a FIFO
/// planted in its place; `None` when it is not a regular file.
fn read_plain_file(path: &Path, max: u64) -> Option<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut s = String::new();
    f.take(max).read_to_string(&mut s).ok()?;
    Some(s)
}

fn is_object_id(s: &str) -> bool {
    (s.len() == 40 || s.len() == 64) && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The commit the sandbox's clone has on `branch`, read as data from its ref files (a loose
/// ref, else `packed-refs`): no git process ever opens the clone as its repository.
fn sandbox_tip(worktree: &Path, branch: &str) -> Result<String> {
    let gitdir = worktree.join(".git");
    let meta = std::fs::symlink_metadata(&gitdir).map_err(|_| {
        CoreError::Git(format!(
            "the run's clone {} has no .git any more",
            worktree.display()
        ))
    })?;
    if !meta.is_dir() {
        return Err(CoreError::Git(format!(
            "the run's clone {}: .git is not a directory (replaced from inside the machine?)",
            worktree.display()
        )));
    }
    let refname = format!("refs/heads/{branch}");
    if let Some(s) = read_plain_file(&gitdir.join(&refname), 4096) {
        let s = s.trim();
        return if is_object_id(s) {
            Ok(s.to_ascii_lowercase())
        } else {
            Err(CoreError::Git(format!(
                "{branch} in the run's clone is not a commit id (a symbolic ref?)"
            )))
        };
    }
    if let Some(packed) = read_plain_file(&gitdir.join("packed-refs"), 512 << 20) {
        for line in packed.lines() {
            if line.starts_with('#') || line.starts_with('^') {
                continue;
            }
            if let Some((oid, name)) = line.split_once(' ') {
                if name.trim_end() == refname && is_object_id(oid) {
                    return Ok(oid.to_ascii_lowercase());
                }
            }
        }
    }
    if gitdir.join("reftable").exists() {
        return Err(CoreError::Git(format!(
            "the run's clone {} was converted to the reftable format, which collect does not read",
            worktree.display()
        )));
    }
    Err(CoreError::Git(format!(
        "branch {branch} is gone from the run's clone {}",
        worktree.display()
    )))
}

/// Brings `branch` from the sandbox's clone (`worktree`) into `target`, a repository the host
/// owns (the user's, or a URL run's `host.git`), as `refs/heads/<branch>`. Only refs change in
/// `target`: its working tree, index, HEAD, config and hooks are left alone.
///
/// Why this executes nothing from the sandbox. Every git command that names a repository reads
/// that repository's `config` (and the hooks it points to): `core.fsmonitor`, `core.hooksPath`,
/// `core.sshCommand`, aliases, `diff.*.textconv`, `gpg.program`, a promisor remote for lazy
/// fetches, `include.path`. Even `git fetch <clone>` runs `git-upload-pack` *in* the clone, with
/// its config: `uploadpack.packObjectsHook` is honoured only from protected config (git >= 2.15),
/// but that still leaves the clone's config parsed by a host process, and `-c` overrides do not
/// reach the upload-pack a local fetch spawns (git clears `GIT_CONFIG_PARAMETERS` for it). So no
/// git process here has the clone as its repository:
/// 1. the tip is read from the clone's ref files as text and must be a bare object id;
/// 2. a fresh bare scratch repository the host creates (`--template=`: no hooks; its config is
///    ours) gets the clone's `objects/` as an alternate object directory. Alternates are pure
///    data (object lookup only: no config, no hooks, no refs are read from them);
/// 3. the scratch repository points `refs/heads/<branch>` at the tip (git checks the object
///    exists and we check it is a commit), and `target` fetches that ref from the scratch
///    repository: the upload-pack runs in the scratch repository, the fetch in `target` reads
///    only `target`'s config, and `fetch.fsckObjects` checks every new object (hashes are
///    recomputed, so a lying object file cannot land under another name; malformed trees and
///    `.gitmodules` are refused). Nothing in the scratch repository's config or environment
///    asks for a lazy fetch, commit-graph, multi-pack index or bitmap that the clone could
///    forge.
///
/// Returns the commit imported.
async fn import_branch(
    worktree: &Path,
    branch: &str,
    target: &Path,
    scratch: &Path,
) -> Result<String> {
    let tip = sandbox_tip(worktree, branch)?;
    let objects = worktree.join(".git/objects");
    let objects_meta = std::fs::symlink_metadata(&objects);
    if !objects_meta.map(|m| m.is_dir()).unwrap_or(false) {
        return Err(CoreError::Git(format!(
            "the run's clone {}: .git/objects is not a directory",
            worktree.display()
        )));
    }
    let objects = std::fs::canonicalize(&objects)
        .map_err(CoreError::io(format!("resolve {}", objects.display())))?;
    let objects_s = objects.to_string_lossy().to_string();
    if objects_s.contains('\n') || objects_s.starts_with('"') {
        return Err(CoreError::Git(format!(
            "{objects_s}: a path git cannot take as an alternate"
        )));
    }
    let format = git(target, &["rev-parse", "--show-object-format"])
        .await
        .unwrap_or_else(|_| "sha1".into());
    let _ = std::fs::remove_dir_all(scratch);
    if let Some(p) = scratch.parent() {
        create_private_dir(p)?;
    }
    let r = async {
        let mut init = git_command();
        init.args(["init", "--quiet", "--bare", "--template="])
            .arg(format!("--object-format={format}"))
            .arg(scratch);
        let out = run_git(init, "init").await?;
        if !out.status.success() {
            return Err(CoreError::Git(format!(
                "git init {}: {}",
                scratch.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        // The scratch repository's own config: nothing the clone's object store could forge is
        // consulted by the upload-pack that serves the fetch below.
        for (k, v) in [
            ("core.commitGraph", "false"),
            ("core.multiPackIndex", "false"),
            ("pack.useBitmaps", "false"),
            ("core.hooksPath", "/dev/null"),
            ("core.fsmonitor", "false"),
        ] {
            git(scratch, &["config", k, v]).await?;
        }
        std::fs::write(
            scratch.join("objects/info/alternates"),
            format!("{objects_s}\n"),
        )
        .map_err(CoreError::io("write alternates"))?;
        let kind = git(scratch, &["cat-file", "-t", &tip]).await.map_err(|e| {
            CoreError::Git(format!(
                "{branch} in the run's clone points at {tip}, which its objects do not hold ({e})"
            ))
        })?;
        if kind != "commit" {
            return Err(CoreError::Git(format!(
                "{branch} in the run's clone points at a {kind}, not a commit"
            )));
        }
        let refname = format!("refs/heads/{branch}");
        git(scratch, &["update-ref", &refname, &tip]).await?;
        let mut fetch = git_command();
        fetch.env("GIT_NO_LAZY_FETCH", "1");
        if is_bare_path(target) {
            fetch.arg("--git-dir").arg(target);
        } else {
            fetch.arg("-C").arg(target);
        }
        fetch
            .args([
                "-c",
                "fetch.fsckObjects=true",
                "-c",
                "transfer.fsckObjects=true",
                "fetch",
                "--quiet",
                "--no-tags",
                "--no-write-fetch-head",
                "--no-recurse-submodules",
                "--no-auto-maintenance",
            ])
            .arg(scratch)
            .arg(format!("+{refname}:{refname}"));
        let out = run_git(fetch, "fetch").await?;
        if !out.status.success() {
            return Err(CoreError::Git(format!(
                "bringing {branch} into {}: {}",
                target.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(tip.clone())
    }
    .await;
    let _ = std::fs::remove_dir_all(scratch);
    r
}

/// Writes a file that will hold a token into the machine's home, 0600 from creation, refusing a
/// directory on the way that is a symlink (the home belongs to the machine).
fn write_machine_private(home: &Path, rel: &str, contents: &[u8]) -> Result<()> {
    let path = home.join(rel);
    let mut dir = home.to_path_buf();
    for c in Path::new(rel)
        .parent()
        .map(|p| p.components().collect::<Vec<_>>())
        .unwrap_or_default()
    {
        dir.push(c);
        if std::fs::symlink_metadata(&dir)
            .map(|m| m.file_type().is_symlink())
            .unwrap_or(false)
        {
            return Err(CoreError::Invalid(format!(
                "{} is a symlink; refusing to write a token through it",
                dir.display()
            )));
        }
        create_private_dir(&dir)?;
    }
    write_private(&path, contents)
}

/// The MCP configs Cursor, Claude Code and others read, pointing at the machine's agent with the
/// agent token (never the operator's).
fn write_mcp_configs(home: &Path, inner: &str, agent_token: &str) -> Result<()> {
    let mcp = json!({"mcpServers": {"porthole": {"type": "http", "url": format!("{inner}/mcp"), "headers": {"Authorization": format!("Bearer {agent_token}")}}}});
    let pretty = serde_json::to_vec_pretty(&mcp).unwrap_or_default();
    write_machine_private(home, ".cursor/mcp.json", &pretty)?;
    write_machine_private(home, ".porthole/mcp.json", &pretty)?;
    // Claude Code reads project-scoped servers from its user config.
    write_machine_private(
        home,
        ".claude.json",
        &serde_json::to_vec_pretty(&json!({"mcpServers": mcp["mcpServers"]})).unwrap_or_default(),
    )
}

/// The body of `POST /v1/environment` for a run: the environment with the run's variables (the
/// agent token as `PORTHOLE_TOKEN`) and the agent's terminal, and exactly the secrets resolved
/// for what the environment declares.
fn environment_body(
    mut env: porthole_envfile::PortholeEnvironment,
    vars: Vec<(&str, String)>,
    agent_terminal: porthole_envfile::Terminal,
    secrets: &BTreeMap<String, String>,
) -> Result<Value> {
    for (k, v) in vars {
        env.env.insert(k.into(), v);
    }
    // The agent runs in a window of the environment's shared tmux session, with the task.
    env.terminals.insert(0, agent_terminal);
    let env_v = serde_json::to_value(&env).map_err(|e| CoreError::Invalid(e.to_string()))?;
    let mut body = json!({"environment": env_v, "workspace": "/workspace"});
    if !secrets.is_empty() {
        body["secrets"] = json!(secrets);
    }
    Ok(body)
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

/// What `start` prepared before the machine: the run's record and what `launch` needs.
struct Staged {
    id: String,
    dir: PathBuf,
    worktree: PathBuf,
    machine: String,
    env: Option<porthole_envfile::PortholeEnvironment>,
    secrets: BTreeMap<String, String>,
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

    /// Where a run's branch is brought back to: the user's repository, or a URL run's
    /// `host.git` (which pushes it on).
    fn target(&self, r: &Run) -> PathBuf {
        if is_url(&r.repo) {
            self.ms.state.runs().join(&r.id).join("host.git")
        } else {
            PathBuf::from(&r.repo)
        }
    }

    fn base_ref(r: &Run) -> String {
        if is_url(&r.repo) {
            format!("refs/heads/{}", r.base)
        } else {
            r.base.clone()
        }
    }

    /// Brings the run's branch from the sandbox's clone into [`Self::target`] (see
    /// [`import_branch`]: nothing from the clone is executed, the target's working tree is not
    /// touched).
    async fn bring_back(&self, r: &Run) -> Result<()> {
        let worktree = PathBuf::from(r.worktree.clone().unwrap_or_default());
        // A run made before runs had clones of their own: its git worktree shared the user's
        // repository, which has the branch already.
        if !is_url(&r.repo)
            && std::fs::symlink_metadata(worktree.join(".git"))
                .map(|m| m.is_file())
                .unwrap_or(false)
        {
            return Ok(());
        }
        let scratch = self
            .ms
            .state
            .runs()
            .join(&r.id)
            .join(format!("import-{:08x}.git", rand::random::<u32>()));
        import_branch(&worktree, &r.branch, &self.target(r), &scratch)
            .await
            .map(|_| ())
    }

    /// Checks everything first (repository, base branch, agent command, environment, declared
    /// secrets), so a bad request leaves nothing half-created; then clone → machine → agent
    /// terminal.
    pub async fn start(&self, spec: StartSpec) -> Result<Run> {
        let s = self.stage(&spec).await?;
        if let Err(e) = self.launch(&s, &spec).await {
            // Nothing half-created: the machine and the run's clones go again.
            let _ = self.ms.destroy(&s.machine).await;
            let _ = std::fs::remove_dir_all(&s.dir);
            sqlx::query("DELETE FROM runs WHERE id = ?")
                .bind(&s.id)
                .execute(&self.ms.store.pool)
                .await?;
            return Err(e);
        }
        self.set_status(&s.id, "running", None).await?;
        self.get(&s.id).await
    }

    /// Everything before the machine: the checks, the sandbox's clone (and a URL run's
    /// `host.git`), the secrets the environment declares, the run's record ('starting').
    async fn stage(&self, spec: &StartSpec) -> Result<Staged> {
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
        let worktree = dir.join("worktree");
        let url = is_url(&spec.repo);
        // (what the record names, the base, where the repository's files are, its base commit)
        let (record, base, files, start) = if url {
            // The host's own bare clone first, so a bad URL or rejected credentials stop here
            // with nothing but this directory to remove; the sandbox's clone is made from it.
            create_private_dir(&dir)?;
            let host = dir.join("host.git");
            let r = async {
                let token = git_token(&self.ms).await?;
                git_remote(
                    &dir,
                    &spec.repo,
                    &[
                        "clone",
                        "--quiet",
                        "--bare",
                        "--template=",
                        "--",
                        &spec.repo,
                        &host.to_string_lossy(),
                    ],
                    token.as_ref(),
                    &dir,
                )
                .await?;
                let base = match &spec.base {
                    Some(b) => b.clone(),
                    None => git(&host, &["symbolic-ref", "--short", "HEAD"]).await?,
                };
                let start = git(
                    &host,
                    &[
                        "rev-parse",
                        "--verify",
                        "--quiet",
                        &format!("refs/heads/{base}^{{commit}}"),
                    ],
                )
                .await
                .map_err(|_| {
                    CoreError::Invalid(format!(
                        "base branch '{base}' does not exist in {}",
                        spec.repo
                    ))
                })?;
                clone_workspace(&host, &worktree, &branch, &start).await?;
                Ok::<_, CoreError>((base, start))
            }
            .await;
            match r {
                Ok((base, start)) => (spec.repo.clone(), base, worktree.clone(), start),
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
            let start = git(
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
            (repo.to_string_lossy().to_string(), base, repo, start)
        };
        // From here on a failure must also remove a URL run's clones.
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
            files.join(&program).is_file() || Path::new(&program).is_file()
        } else {
            crate::provider::which(&program).is_some()
        };
        if !found {
            return Err(fail(CoreError::Invalid(format!("agent command '{program}' was not found in the machine (not on PATH, not a file in the repository)"))));
        }
        let env_path = spec
            .env
            .clone()
            .or_else(|| crate::environments::find_in_repo(&files));
        let env = match &env_path {
            Some(p) => Some(crate::environments::load(p).map_err(fail)?),
            None => None,
        };
        // Only what the environment declares, and all of it: the guest refuses an environment
        // whose secrets are missing, so say which one and how to add it before anything starts.
        let declared = env.as_ref().map(|e| e.secrets.clone()).unwrap_or_default();
        let secrets = if declared.is_empty() {
            BTreeMap::new()
        } else {
            let vault = crate::vault::Vault::open(&self.ms).await.map_err(fail)?;
            vault
                .declared(env.as_ref().and_then(|e| e.name.as_deref()), &declared)
                .await
                .map_err(fail)?
        };
        if !url {
            create_private_dir(&dir)?;
            if let Err(e) = clone_workspace(&files, &worktree, &branch, &start).await {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        }
        let machine = format!("run-{id}");
        let now = now_ms();
        let inserted = sqlx::query(
            "INSERT INTO runs (id, repo, base, branch, task, agent, machine, worktree, status, created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'starting', ?, ?)",
        )
        .bind(&id)
        .bind(&record)
        .bind(&base)
        .bind(&branch)
        .bind(&spec.task)
        .bind(&spec.agent)
        .bind(&machine)
        .bind(worktree.to_string_lossy().to_string())
        .bind(now)
        .bind(now)
        .execute(&self.ms.store.pool)
        .await;
        if let Err(e) = inserted {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e.into());
        }
        Ok(Staged {
            id,
            dir,
            worktree,
            machine,
            env,
            secrets,
        })
    }

    async fn launch(&self, s: &Staged, spec: &StartSpec) -> Result<()> {
        // The workspace is the run's own clone; nothing else of the host's is bound in (the
        // user's `.git` above all).
        let m = self
            .ms
            .create(CreateSpec {
                name: s.machine.clone(),
                provider: Some(ProviderKind::Local),
                workspace: Some(s.worktree.clone()),
                browser: true,
                ..Default::default()
            })
            .await?;
        let client = self.ms.client(&m)?;
        // The coding agent's token: scoped to computer use, exec, MCP and events.
        let token = self.ms.agent_token(&m)?;
        // Inside the sandbox the agent listens where the machine spec says.
        let inner = format!(
            "http://{}",
            m.spec["listen"].as_str().unwrap_or("127.0.0.1:7300")
        );
        let home = self.ms.state.machine(&s.machine).join("home");
        write_mcp_configs(&home, &inner, &token)?;
        write_machine_private(&home, "TASK.md", spec.task.as_bytes())?;

        let vars = vec![
            ("PORTHOLE_RUN_ID", s.id.clone()),
            ("PORTHOLE_TASK", spec.task.clone()),
            ("PORTHOLE_AGENT_URL", inner.clone()),
            ("PORTHOLE_MCP_URL", format!("{inner}/mcp")),
            (
                "PORTHOLE_MCP_CONFIG",
                "/home/porthole/.porthole/mcp.json".to_string(),
            ),
            ("PORTHOLE_TOKEN", token),
            ("GIT_AUTHOR_NAME", "Porthole agent".to_string()),
            ("GIT_AUTHOR_EMAIL", "agent@porthole.invalid".to_string()),
            ("GIT_COMMITTER_NAME", "Porthole agent".to_string()),
            ("GIT_COMMITTER_EMAIL", "agent@porthole.invalid".to_string()),
        ];
        let terminal = porthole_envfile::Terminal {
            name: Some("agent".into()),
            command: format!("{} {}", spec.agent, shell_quote(&spec.task)),
            description: Some("the coding agent".into()),
        };
        let body = environment_body(
            s.env.clone().unwrap_or_default(),
            vars,
            terminal,
            &s.secrets,
        )?;
        client.post("/v1/environment", &body).await?;
        Ok(())
    }

    /// Everything about a run: its record, commits on its branch (brought back from the run's
    /// clone first, so they are current), diff stat, and live status.
    pub async fn show(&self, id: &str) -> Result<Value> {
        let r = self.get(id).await?;
        let target = self.target(&r);
        let branch_error = self.bring_back(&r).await.err().map(|e| e.to_string());
        let branch_ref = format!("refs/heads/{}", r.branch);
        let base = Self::base_ref(&r);
        let commits = git(
            &target,
            &["log", "--format=%h %s", &format!("{base}..{branch_ref}")],
        )
        .await
        .unwrap_or_default();
        let stat = git(
            &target,
            &["diff", "--stat", &format!("{base}...{branch_ref}")],
        )
        .await
        .unwrap_or_default();
        let mut v = serde_json::to_value(&r).unwrap_or_default();
        v["commits"] = json!(commits.lines().collect::<Vec<_>>());
        v["diff_stat"] = json!(stat);
        if let Some(e) = branch_error {
            v["branch_error"] = json!(e);
        }
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

    /// Stops the run's machine; the branch keeps every commit the agent made (its clone stays,
    /// and the branch is brought back once more).
    pub async fn stop(&self, id: &str) -> Result<Run> {
        let r = self.get(id).await?;
        if let Ok(m) = self.ms.get(&r.machine).await {
            // Keep what the machine recorded before it goes.
            let _ = crate::sync::sync_machine(&self.ms, &m).await;
        }
        let _ = self.ms.destroy(&r.machine).await;
        let _ = self.bring_back(&r).await;
        self.set_status(id, "stopped", None).await?;
        self.get(id).await
    }

    /// Brings the run's branch into the repository (a URL run's into its `host.git`, then
    /// pushed to the URL recorded at start), writes a patch file as the fallback and a Markdown
    /// summary for the pull request.
    pub async fn collect(&self, id: &str) -> Result<Value> {
        let r = self.get(id).await?;
        let url = is_url(&r.repo);
        let target = self.target(&r);
        self.bring_back(&r).await?;
        let branch_ref = format!("refs/heads/{}", r.branch);
        let base = Self::base_ref(&r);
        let commits = git(
            &target,
            &["log", "--format=%h %s", &format!("{base}..{branch_ref}")],
        )
        .await?;
        let stat = git(
            &target,
            &["diff", "--stat", &format!("{base}...{branch_ref}")],
        )
        .await?;
        let patch = git(
            &target,
            &["format-patch", "--stdout", &format!("{base}..{branch_ref}")],
        )
        .await?;
        let dir = self.ms.state.runs().join(id);
        create_private_dir(&dir)?;
        let patch_path = dir.join(format!("{id}.patch"));
        std::fs::write(&patch_path, &patch).map_err(CoreError::io("write patch"))?;
        let (pushed, push_error) = if url {
            // From the host's own repository, to the URL recorded at `run start` (never the
            // clone's `remote.origin.url`, which the agent could have changed).
            let token = git_token(&self.ms).await?;
            let refspec = format!("{branch_ref}:{branch_ref}");
            match git_remote(
                &target,
                &r.repo,
                &["push", "--quiet", "--", &r.repo, &refspec],
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

#[cfg(test)]
mod tests {
    //! Real git, real files. The test plays the hostile coding agent: it commits in the run's
    //! clone, then plants every hook and config it can in that clone, each writing a marker
    //! file when executed; then it collects as the host would.
    use super::*;
    use std::collections::BTreeMap;
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    fn sh_git(dir: &Path, args: &[&str]) -> String {
        let out = Command::new("git")
            .arg("-C")
            .arg(dir)
            .args(["-c", "user.name=t", "-c", "user.email=t@t"])
            .args(args)
            .env_remove("GIT_DIR")
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "git {args:?} in {}: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    fn user_repo(path: &Path) {
        std::fs::create_dir_all(path).unwrap();
        sh_git(path, &["init", "-q", "-b", "main"]);
        std::fs::write(path.join("README.md"), "# app\n").unwrap();
        sh_git(path, &["add", "-A"]);
        sh_git(path, &["commit", "-q", "-m", "base"]);
        // The user's own (inert) hook and config: both must come out of collect byte for byte.
        std::fs::write(
            path.join(".git/hooks/pre-commit.sample"),
            "#!/bin/sh\nexit 0\n",
        )
        .unwrap();
        sh_git(path, &["config", "porthole.test", "user-config"]);
    }

    /// Every file under `.git` that a collect must not touch (config, hooks, HEAD, index, info)
    /// and the working tree's files, as bytes.
    fn snapshot(repo: &Path) -> BTreeMap<String, Vec<u8>> {
        let mut out = BTreeMap::new();
        fn walk(root: &Path, d: &Path, out: &mut BTreeMap<String, Vec<u8>>, skip: &[&str]) {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().to_string();
                if skip.contains(&rel.as_str()) {
                    continue;
                }
                if p.is_dir() {
                    walk(root, &p, out, skip);
                } else {
                    out.insert(rel, std::fs::read(&p).unwrap());
                }
            }
        }
        walk(
            repo,
            repo,
            &mut out,
            &[".git/objects", ".git/refs", ".git/logs", ".git/packed-refs"],
        );
        out
    }

    fn executable(p: &Path, body: &str) {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, body).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn markers(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .collect();
        v.sort();
        v
    }

    /// Plants in the clone's `.git` everything that executes a command when git runs with the
    /// clone as its repository, each writing `markers/<name>`.
    fn plant_attacks(worktree: &Path, markers: &Path, evil_remote: &Path) {
        let evil = markers.parent().unwrap().join("evil.sh");
        executable(
            &evil,
            &format!(
                "#!/bin/sh\ntouch '{}'/\"$1\"\ncat >/dev/null 2>&1 </dev/null\nexit 0\n",
                markers.display()
            ),
        );
        let e = evil.display();
        let hooks = [
            "post-checkout",
            "reference-transaction",
            "pre-push",
            "post-merge",
            "post-rewrite",
            "pre-auto-gc",
            "post-index-change",
            "fsmonitor-watchman",
            "pre-commit",
            "update",
            "pre-receive",
            "post-update",
        ];
        for h in hooks {
            executable(
                &worktree.join(".git/hooks").join(h),
                &format!("#!/bin/sh\n'{e}' hook-{h}\n"),
            );
            executable(
                &worktree.join(".evil-hooks").join(h),
                &format!("#!/bin/sh\n'{e}' hookspath-{h}\n"),
            );
        }
        let cfg = format!(
            r#"
[core]
	repositoryformatversion = 1
	fsmonitor = "'{e}' fsmonitor"
	hooksPath = {hooks}
	sshCommand = "'{e}' sshcommand"
	pager = "'{e}' pager"
	editor = "'{e}' editor"
	askPass = "'{e}' askpass"
	gitProxy = "'{e}' gitproxy"
	alternateRefsCommand = "'{e}' alternaterefs"
[extensions]
	partialClone = origin
[uploadpack]
	packObjectsHook = "'{e}' packobjectshook"
[alias]
	st = "!'{e}' alias-st"
	lg = "!'{e}' alias-lg"
[diff "evil"]
	textconv = "'{e}' textconv"
	command = "'{e}' diffcommand"
[diff]
	external = "'{e}' diffexternal"
[filter "evil"]
	clean = "'{e}' clean"
	smudge = "'{e}' smudge"
	process = "'{e}' filterprocess"
[gpg]
	program = "'{e}' gpg"
[log]
	showSignature = true
[credential]
	helper = "!'{e}' credential"
[protocol "ext"]
	allow = always
[remote "origin"]
	url = "ext::'{e}' ext-remote"
	pushurl = {evil_remote}
	promisor = true
	receivepack = "'{e}' receivepack"
	uploadpack = "'{e}' uploadpack"
[url "{evil_remote}"]
	insteadOf = file://
"#,
            hooks = worktree.join(".evil-hooks").display(),
            evil_remote = evil_remote.display(),
        );
        let mut config = std::fs::read_to_string(worktree.join(".git/config")).unwrap();
        config.push_str(&cfg);
        std::fs::write(worktree.join(".git/config"), config).unwrap();
    }

    /// The hostile agent's work: a commit on the run's branch, with attributes that would run
    /// the planted diff/filter drivers in any git that reads the clone's config.
    fn agent_commits(worktree: &Path) -> String {
        std::fs::write(worktree.join("NOTES.md"), "the agent's note\n").unwrap();
        std::fs::write(worktree.join(".gitattributes"), "* diff=evil filter=evil\n").unwrap();
        sh_git(worktree, &["add", "-A"]);
        sh_git(worktree, &["commit", "-q", "-m", "agent work"]);
        sh_git(worktree, &["rev-parse", "HEAD"])
    }

    async fn machines(tmp: &Path) -> Machines {
        // Never the developer's own keychain from a unit test.
        std::env::set_var("PORTHOLE_KEYCHAIN", "0");
        Machines::open(crate::paths::StateDir::at(tmp.join("state")))
            .await
            .unwrap()
    }

    fn spec(repo: &str) -> StartSpec {
        StartSpec {
            repo: repo.to_string(),
            base: None,
            task: "write a note".into(),
            agent: "sh".into(),
            env: None,
            provider: ProviderKind::Local,
        }
    }

    #[tokio::test]
    async fn collect_executes_nothing_from_the_sandbox_clone_and_leaves_the_repository_alone() {
        let tmp = tempfile::tempdir().unwrap();
        let ms = machines(tmp.path()).await;
        let runs = Runs::new(ms);
        let repo = tmp.path().join("repo");
        user_repo(&repo);
        let marks = tmp.path().join("markers");
        std::fs::create_dir_all(&marks).unwrap();
        let evil_remote = tmp.path().join("evil.git");
        sh_git(
            tmp.path(),
            &["init", "-q", "--bare", &evil_remote.to_string_lossy()],
        );

        let s = runs.stage(&spec(&repo.to_string_lossy())).await.unwrap();
        let worktree = s.worktree.clone();
        // The sandbox's workspace is a clone of its own: a real .git directory, no alternates
        // into the user's repository, no hooks at all, on the run's branch.
        assert!(std::fs::symlink_metadata(worktree.join(".git"))
            .unwrap()
            .is_dir());
        assert!(!worktree.join(".git/objects/info/alternates").exists());
        assert!(!worktree.join(".git/hooks").exists());
        assert_eq!(
            sh_git(&worktree, &["symbolic-ref", "--short", "HEAD"]),
            format!("porthole/{}", s.id)
        );
        // And the user's repository gained nothing at start (no worktree, no branch).
        assert_eq!(sh_git(&repo, &["worktree", "list"]).lines().count(), 1);
        assert_eq!(sh_git(&repo, &["branch", "--list", "porthole/*"]), "");
        let before = snapshot(&repo);

        let tip = agent_commits(&worktree);
        plant_attacks(&worktree, &marks, &evil_remote);

        let r = runs.get(&s.id).await.unwrap();
        let shown = runs.show(&s.id).await.unwrap();
        assert_eq!(shown["commits"].as_array().unwrap().len(), 1, "{shown}");
        let c = runs.collect(&s.id).await.unwrap();
        assert_eq!(c["commits"], 1, "{c}");
        let stopped = runs.stop(&s.id).await.unwrap();
        assert_eq!(stopped.status, "stopped");

        assert_eq!(
            markers(&marks),
            Vec::<String>::new(),
            "something planted in the clone ran on the host"
        );
        // The branch arrived, with the agent's commit, and only as a ref.
        assert_eq!(
            sh_git(&repo, &["rev-parse", &format!("refs/heads/{}", r.branch)]),
            tip
        );
        assert_eq!(
            sh_git(&repo, &["show", &format!("{}:NOTES.md", r.branch)]),
            "the agent's note"
        );
        assert_eq!(
            snapshot(&repo),
            before,
            "the repository's config, hooks, HEAD, index or files changed"
        );
        assert_eq!(sh_git(&repo, &["symbolic-ref", "HEAD"]), "refs/heads/main");
        assert_eq!(sh_git(&repo, &["status", "--porcelain"]), "");
        assert!(std::fs::read_to_string(c["patch"].as_str().unwrap())
            .unwrap()
            .contains("NOTES.md"));
        // Nothing was pushed anywhere the clone's config names.
        assert_eq!(sh_git(&evil_remote, &["for-each-ref"]), "");
        // No scratch repository is left behind.
        let left: Vec<_> = std::fs::read_dir(runs.ms.state.runs().join(&s.id))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
            .filter(|n| n.starts_with("import-"))
            .collect();
        assert!(left.is_empty(), "{left:?}");

        // The control: the planted config is live, so a git run *in* the clone executes it.
        let _ = Command::new("git")
            .arg("-C")
            .arg(&worktree)
            .arg("status")
            .output()
            .unwrap();
        assert!(
            markers(&marks).contains(&"fsmonitor".to_string()),
            "the attack is live (a plain `git status` in the clone runs it): {:?}",
            markers(&marks)
        );
    }

    #[tokio::test]
    async fn a_replaced_ref_or_git_dir_is_refused_without_running_anything() {
        let tmp = tempfile::tempdir().unwrap();
        let ms = machines(tmp.path()).await;
        let runs = Runs::new(ms);
        let repo = tmp.path().join("repo");
        user_repo(&repo);
        let s = runs.stage(&spec(&repo.to_string_lossy())).await.unwrap();
        let wt = s.worktree.clone();
        let branch = format!("porthole/{}", s.id);
        sh_git(&wt, &["pack-refs", "--all"]);
        let loose = wt.join(".git/refs/heads").join(&branch);
        std::fs::create_dir_all(loose.parent().unwrap()).unwrap();
        // A ref pointing at a tree, not a commit.
        let tree = sh_git(&wt, &["rev-parse", "HEAD^{tree}"]);
        std::fs::write(
            wt.join(".git/refs/heads").join(&branch),
            format!("{tree}\n"),
        )
        .unwrap();
        let e = runs.collect(&s.id).await.unwrap_err().to_string();
        assert!(e.contains("not a commit"), "{e}");
        // A symbolic ref, and an object the clone does not have.
        std::fs::write(
            wt.join(".git/refs/heads").join(&branch),
            "ref: refs/heads/main\n",
        )
        .unwrap();
        let e = runs.collect(&s.id).await.unwrap_err().to_string();
        assert!(e.contains("not a commit id"), "{e}");
        std::fs::write(
            wt.join(".git/refs/heads").join(&branch),
            format!("{}\n", "ab".repeat(20)),
        )
        .unwrap();
        let e = runs.collect(&s.id).await.unwrap_err().to_string();
        assert!(e.contains("do not hold"), "{e}");
        // A FIFO in place of the ref does not hang the collect; the packed ref is used.
        std::fs::remove_file(wt.join(".git/refs/heads").join(&branch)).unwrap();
        let c = std::ffi::CString::new(
            wt.join(".git/refs/heads")
                .join(&branch)
                .to_string_lossy()
                .as_bytes(),
        )
        .unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let c = runs.collect(&s.id).await.unwrap();
        assert_eq!(c["commits"], 0, "{c}");
        // `.git` swapped for a symlink to the user's own repository.
        std::fs::rename(wt.join(".git"), wt.join("git-moved")).unwrap();
        std::os::unix::fs::symlink(repo.join(".git"), wt.join(".git")).unwrap();
        let e = runs.collect(&s.id).await.unwrap_err().to_string();
        assert!(e.contains("not a directory"), "{e}");
    }

    #[tokio::test]
    async fn a_url_run_pushes_from_the_hosts_repository_to_the_url_recorded_at_start() {
        let tmp = tempfile::tempdir().unwrap();
        let ms = machines(tmp.path()).await;
        let runs = Runs::new(ms);
        let src = tmp.path().join("src");
        user_repo(&src);
        let served = tmp.path().join("served.git");
        sh_git(
            tmp.path(),
            &[
                "clone",
                "-q",
                "--bare",
                &src.to_string_lossy(),
                &served.to_string_lossy(),
            ],
        );
        let evil_remote = tmp.path().join("evil.git");
        sh_git(
            tmp.path(),
            &["init", "-q", "--bare", &evil_remote.to_string_lossy()],
        );
        let marks = tmp.path().join("markers");
        std::fs::create_dir_all(&marks).unwrap();
        let url = format!("file://{}", served.display());

        let s = runs.stage(&spec(&url)).await.unwrap();
        let r = runs.get(&s.id).await.unwrap();
        assert_eq!(r.repo, url, "the URL is recorded at start");
        let host = runs.ms.state.runs().join(&s.id).join("host.git");
        assert!(host.join("HEAD").is_file(), "the host's own bare clone");
        assert!(
            !host.starts_with(&s.worktree),
            "host.git is not inside the sandbox's workspace"
        );
        assert!(!s.worktree.join(".git/hooks").exists());

        let tip = agent_commits(&s.worktree);
        plant_attacks(&s.worktree, &marks, &evil_remote);

        let c = runs.collect(&s.id).await.unwrap();
        assert_eq!(c["pushed"], true, "{c}");
        assert_eq!(c["commits"], 1, "{c}");
        assert_eq!(
            markers(&marks),
            Vec::<String>::new(),
            "something planted in the clone ran on the host"
        );
        assert_eq!(
            sh_git(&served, &["rev-parse", &format!("refs/heads/{}", r.branch)]),
            tip
        );
        assert_eq!(
            sh_git(&evil_remote, &["for-each-ref"]),
            "",
            "the clone's remote/insteadOf were not used"
        );
        assert_eq!(
            sh_git(&host, &["rev-parse", &format!("refs/heads/{}", r.branch)]),
            tip
        );

        // The control: pushing from the clone, as runs once did, executes what the clone's
        // config names (here `remote.origin.receivepack`).
        let _ = Command::new("git")
            .arg("-C")
            .arg(&s.worktree)
            .args(["push", "-q", "origin", &r.branch])
            .output()
            .unwrap();
        assert!(!markers(&marks).is_empty(), "the attack is live");
    }

    #[test]
    fn the_askpass_answers_only_for_the_recorded_url() {
        let tmp = tempfile::tempdir().unwrap();
        let askpass = tmp.path().join("askpass.sh");
        write_executable(&askpass, ASKPASS).unwrap();
        assert_eq!(
            std::fs::metadata(&askpass).unwrap().permissions().mode() & 0o777,
            0o700
        );
        let (user, up, pp) =
            credential_prompts("https://git.example.com:8443/org/app.git").unwrap();
        assert_eq!(user, "x-access-token");
        assert_eq!(up, "Username for 'https://git.example.com:8443': ");
        assert_eq!(
            pp,
            "Password for 'https://x-access-token@git.example.com:8443': "
        );
        let ask = |prompt: &str| {
            let out = Command::new(&askpass)
                .arg(prompt)
                .env("PORTHOLE_GIT_USER", &user)
                .env("PORTHOLE_GIT_USER_PROMPT", &up)
                .env("PORTHOLE_GIT_PASS_PROMPT", &pp)
                .env("PORTHOLE_GIT_TOKEN", "tok-123")
                .output()
                .unwrap();
            (
                out.status.success(),
                String::from_utf8_lossy(&out.stdout).to_string(),
            )
        };
        assert_eq!(ask(&up), (true, "x-access-token\n".into()));
        assert_eq!(ask(&pp), (true, "tok-123\n".into()));
        for other in [
            "Password for 'https://x-access-token@evil.example.com': ",
            "Password for 'https://x-access-token@git.example.com': ",
            "Password for 'http://x-access-token@git.example.com:8443': ",
            "Password for 'https://x-access-token@git.example.com:8443.evil.example': ",
            "Username for 'https://evil.example.com': ",
            "Enter passphrase for key '/root/.ssh/id_ed25519': ",
        ] {
            assert_eq!(ask(other), (false, String::new()), "answered {other:?}");
        }
        let (u, _, pp) = credential_prompts("https://me@host.example/x.git").unwrap();
        assert_eq!(u, "me");
        assert_eq!(pp, "Password for 'https://me@host.example': ");
        assert!(credential_prompts("git@github.com:org/app.git").is_none());
        assert!(credential_prompts("ssh://git@github.com/org/app.git").is_none());
    }

    #[tokio::test]
    async fn a_run_gets_only_the_secrets_its_environment_declares_and_the_agent_token() {
        let tmp = tempfile::tempdir().unwrap();
        let ms = machines(tmp.path()).await;
        let vault = crate::vault::Vault::open(&ms).await.unwrap();
        vault
            .set("DECLARED_KEY", "", "v-declared-111")
            .await
            .unwrap();
        vault
            .set("UNDECLARED_KEY", "", "v-undeclared-222")
            .await
            .unwrap();
        vault.set("SCOPED_KEY", "", "v-global-333").await.unwrap();
        vault
            .set("SCOPED_KEY", "web", "v-scoped-444")
            .await
            .unwrap();
        vault.set("GIT_TOKEN", "", "v-git-555").await.unwrap();
        let runs = Runs::new(ms);
        let repo = tmp.path().join("repo");
        user_repo(&repo);
        std::fs::create_dir_all(repo.join(".porthole")).unwrap();
        std::fs::write(
            repo.join(".porthole/environment.json"),
            r#"{"name": "web", "secrets": ["DECLARED_KEY", "SCOPED_KEY"], "env": {"PLAIN": "1"}}"#,
        )
        .unwrap();
        sh_git(&repo, &["add", "-A"]);
        sh_git(&repo, &["commit", "-q", "-m", "env"]);

        let s = runs.stage(&spec(&repo.to_string_lossy())).await.unwrap();
        assert_eq!(
            s.secrets,
            BTreeMap::from([
                ("DECLARED_KEY".to_string(), "v-declared-111".to_string()),
                ("SCOPED_KEY".to_string(), "v-scoped-444".to_string()),
            ])
        );
        let body = environment_body(
            s.env.clone().unwrap(),
            vec![("PORTHOLE_TOKEN", "agent-tok-abc".to_string())],
            porthole_envfile::Terminal {
                name: Some("agent".into()),
                command: "sh 'task'".into(),
                description: None,
            },
            &s.secrets,
        )
        .unwrap();
        let text = body.to_string();
        for v in ["v-undeclared-222", "v-global-333", "v-git-555"] {
            assert!(
                !text.contains(v),
                "an undeclared secret reaches the run: {text}"
            );
        }
        assert_eq!(body["secrets"]["DECLARED_KEY"], "v-declared-111");
        assert_eq!(
            body["environment"]["env"]["PORTHOLE_TOKEN"],
            "agent-tok-abc"
        );
        assert_eq!(body["environment"]["terminals"][0]["name"], "agent");

        // A declared secret the vault lacks stops the run before anything is made.
        std::fs::write(
            repo.join(".porthole/environment.json"),
            r#"{"name": "web", "secrets": ["NOT_IN_VAULT"]}"#,
        )
        .unwrap();
        sh_git(&repo, &["commit", "-q", "-am", "env 2"]);
        let n = std::fs::read_dir(runs.ms.state.runs()).unwrap().count();
        let Err(e) = runs.stage(&spec(&repo.to_string_lossy())).await else {
            panic!("a run started without its declared secret");
        };
        let e = e.to_string();
        assert!(
            e.contains("NOT_IN_VAULT") && e.contains("porthole secrets set"),
            "{e}"
        );
        assert_eq!(
            std::fs::read_dir(runs.ms.state.runs()).unwrap().count(),
            n,
            "nothing left behind"
        );
    }

    #[test]
    fn mcp_configs_hold_the_agent_token_and_are_private_from_creation() {
        let tmp = tempfile::tempdir().unwrap();
        let home = tmp.path().join("home");
        std::fs::create_dir_all(&home).unwrap();
        write_mcp_configs(&home, "http://127.0.0.1:7300", "agent-tok-xyz").unwrap();
        for f in [".cursor/mcp.json", ".porthole/mcp.json", ".claude.json"] {
            let p = home.join(f);
            assert_eq!(
                std::fs::metadata(&p).unwrap().permissions().mode() & 0o777,
                0o600,
                "{f}"
            );
            let v: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
            assert_eq!(
                v["mcpServers"]["porthole"]["headers"]["Authorization"], "Bearer agent-tok-xyz",
                "{f}"
            );
        }
        for d in [".cursor", ".porthole"] {
            assert_eq!(
                std::fs::metadata(home.join(d))
                    .unwrap()
                    .permissions()
                    .mode()
                    & 0o777,
                0o700,
                "{d}"
            );
        }
        // A directory on the way that is a symlink (out of the machine's home) is refused.
        let other = tmp.path().join("elsewhere");
        std::fs::create_dir_all(&other).unwrap();
        let home2 = tmp.path().join("home2");
        std::fs::create_dir_all(&home2).unwrap();
        std::os::unix::fs::symlink(&other, home2.join(".cursor")).unwrap();
        assert!(write_mcp_configs(&home2, "http://x", "t").is_err());
        assert!(!other.join("mcp.json").exists());
    }
}
