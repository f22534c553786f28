//! Machines: records in the store, the provider trait, and the manager the app and CLI call.

use crate::agent::AgentClient;
use crate::error::{CoreError, Result};
use crate::paths::StateDir;
use crate::provider::{local::LocalSandbox, remote::RemoteHost, Provider};
use crate::store::{now_ms, Store};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    Local,
    Qemu,
    Remote,
}

impl ProviderKind {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "local" => Ok(Self::Local),
            "qemu" => Ok(Self::Qemu),
            "remote" => Ok(Self::Remote),
            other => Err(CoreError::Invalid(format!(
                "unknown provider '{other}'; expected local, qemu or remote"
            ))),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Qemu => "qemu",
            Self::Remote => "remote",
        }
    }
}

/// A machine as the CLI's `--json` and the app show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub name: String,
    pub provider: ProviderKind,
    /// creating | running | stopped | failed
    pub status: String,
    pub agent_url: Option<String>,
    #[serde(skip_serializing)]
    pub token_path: PathBuf,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<i64>,
    /// Provider details (display, network mode, workspace, fingerprint, ...).
    pub spec: Value,
    /// Whether the machine has a network of its own (false only for `--network host`);
    /// unknown for a remote host.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub isolated: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub created_at: i64,
}

impl Machine {
    /// Beside the operator's token in the state's `keys/`, for the machines Porthole starts.
    pub fn agent_token_path(&self) -> PathBuf {
        self.token_path
            .with_file_name(format!("{}.agent-token", self.name))
    }
}

/// What `machine create` asks for.
#[derive(Debug, Clone, Default)]
pub struct CreateSpec {
    pub name: String,
    pub provider: Option<ProviderKind>,
    pub env_path: Option<PathBuf>,
    pub workspace: Option<PathBuf>,
    pub from_snapshot: Option<String>,
    pub url: Option<String>,
    pub token_file: Option<PathBuf>,
    pub fingerprint: Option<String>,
    /// Remote: allow plain `http://` to a host that is not this one (token in clear).
    pub insecure_http: bool,
    /// Start the agent without a session (warm pool).
    pub idle: bool,
    /// local: "netns" (root), "slirp" (any user) or "host" (not isolated; "loopback" is its
    /// old name). Default: netns as root, else slirp.
    pub network: Option<String>,
    pub display_size: Option<(u32, u32)>,
    pub browser: bool,
    /// Host paths bound at the same path inside a sandbox (a worktree's main `.git`).
    pub extra_binds: Vec<PathBuf>,
}

pub fn valid_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 40
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(CoreError::Invalid(format!(
            "machine name '{name}': use 1-40 letters, digits, '-' or '_', starting with a letter or digit"
        )))
    }
}

/// Writes a file only its owner can read, created with mode 0600 (never a create-then-chmod
/// window in which another user could open it); replaces what was there.
pub fn write_private(path: &std::path::Path, contents: &[u8]) -> Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(CoreError::io(format!("create {}", path.display())))?;
    f.write_all(contents)
        .map_err(CoreError::io(format!("write {}", path.display())))
}

/// Creates a directory (and its parents) that only its owner can enter, mode 0700 from the start.
pub fn create_private_dir(path: &std::path::Path) -> Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
        .map_err(CoreError::io(format!("create {}", path.display())))
}

pub fn random_token() -> String {
    use rand::RngCore;
    let mut b = [0u8; 24];
    rand::thread_rng().fill_bytes(&mut b);
    hex(&b)
}

/// Lower-case hex of bytes (tokens, keys, hashes).
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[derive(Clone, Debug)]
pub struct Machines {
    pub store: Store,
    pub state: StateDir,
    /// Steps of long operations, for whoever shows progress (the app); lines nobody reads are
    /// dropped.
    progress: tokio::sync::broadcast::Sender<porthole_proto::Progress>,
}

type Row = (
    String,
    String,
    String,
    Option<String>,
    String,
    Option<i64>,
    String,
    Option<String>,
    i64,
);

fn from_row(r: Row) -> Machine {
    Machine {
        name: r.0,
        provider: ProviderKind::parse(&r.1).unwrap_or(ProviderKind::Local),
        status: r.2,
        agent_url: r.3,
        token_path: PathBuf::from(r.4),
        pid: r.5,
        spec: serde_json::from_str(&r.6).unwrap_or(Value::Null),
        error: r.7,
        created_at: r.8,
        isolated: None,
    }
    .with_isolation()
}

impl Machine {
    fn with_isolation(mut self) -> Self {
        self.isolated = match self.provider {
            ProviderKind::Local => Some(!matches!(
                self.spec["network"].as_str(),
                Some("host") | Some("loopback")
            )),
            ProviderKind::Qemu => Some(true),
            ProviderKind::Remote => None,
        };
        self
    }
}

impl Machines {
    pub async fn open(state: StateDir) -> Result<Self> {
        let store = Store::open(&state.db()).await?;
        let (progress, _) = tokio::sync::broadcast::channel(256);
        Ok(Self {
            store,
            state,
            progress,
        })
    }

    /// Progress of every long operation from now on (see [`porthole_proto::Progress`]).
    pub fn watch_progress(&self) -> tokio::sync::broadcast::Receiver<porthole_proto::Progress> {
        self.progress.subscribe()
    }

    /// Reports a step of `op` on `machine` (`[k/n] what` lines carry their step).
    pub fn report(&self, machine: &str, op: &str, line: &str) {
        tracing::debug!(machine, op, line, "progress");
        let _ = self
            .progress
            .send(porthole_proto::Progress::line(machine, op, line));
    }

    pub async fn get(&self, name: &str) -> Result<Machine> {
        let r: Option<Row> = sqlx::query_as("SELECT name, provider, status, agent_url, token_path, pid, spec, error, created_at FROM machines WHERE name = ?").bind(name).fetch_optional(&self.store.pool).await?;
        r.map(from_row)
            .ok_or_else(|| CoreError::NoMachine(name.to_string()))
    }

    /// All machines; running ones whose process died are marked failed first.
    pub async fn list(&self) -> Result<Vec<Machine>> {
        let rows: Vec<Row> = sqlx::query_as("SELECT name, provider, status, agent_url, token_path, pid, spec, error, created_at FROM machines ORDER BY created_at").fetch_all(&self.store.pool).await?;
        let mut out = Vec::new();
        for r in rows {
            let mut m = from_row(r);
            if m.status == "running" {
                if let Some(reason) = self.dead_reason(&m) {
                    m.status = "failed".into();
                    m.error = Some(reason.clone());
                    self.save(&m).await?;
                    self.store.mark_interrupted(&m.name).await?;
                }
            }
            out.push(m);
        }
        Ok(out)
    }

    fn dead_reason(&self, m: &Machine) -> Option<String> {
        match m.provider {
            ProviderKind::Local => LocalSandbox::new(self.state.clone()).dead_reason(m),
            ProviderKind::Remote => None,
            ProviderKind::Qemu => {
                crate::provider::qemu::Qemu::new(self.state.clone()).dead_reason(m)
            }
        }
    }

    pub async fn save(&self, m: &Machine) -> Result<()> {
        sqlx::query(
            "INSERT INTO machines (name, provider, status, agent_url, token_path, pid, spec, error, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
             ON CONFLICT(name) DO UPDATE SET status = excluded.status, agent_url = excluded.agent_url,
               token_path = excluded.token_path, pid = excluded.pid, spec = excluded.spec, error = excluded.error,
               updated_at = excluded.updated_at",
        )
        .bind(&m.name)
        .bind(m.provider.as_str())
        .bind(&m.status)
        .bind(&m.agent_url)
        .bind(m.token_path.to_string_lossy().to_string())
        .bind(m.pid)
        .bind(m.spec.to_string())
        .bind(&m.error)
        .bind(m.created_at)
        .bind(now_ms())
        .execute(&self.store.pool)
        .await?;
        Ok(())
    }

    pub fn token(&self, m: &Machine) -> Result<String> {
        std::fs::read_to_string(&m.token_path)
            .map(|t| t.trim().to_string())
            .map_err(CoreError::io(format!(
                "read token {}",
                m.token_path.display()
            )))
    }

    /// The coding agent's token: the only one the machine's own processes (terminals, runs,
    /// MCP configs) ever see. Local and QEMU machines have one; a remote host's agent was
    /// installed with a single token.
    pub fn agent_token(&self, m: &Machine) -> Result<String> {
        let p = m.agent_token_path();
        std::fs::read_to_string(&p)
            .map(|t| t.trim().to_string())
            .map_err(|_| {
                CoreError::Invalid(format!(
                    "machine '{}' has no agent token (its agent serves one token, the operator's: {} machines made before two tokens existed, and remote hosts, do); recreate it to get one",
                    m.name,
                    m.provider.as_str()
                ))
            })
    }

    pub fn client(&self, m: &Machine) -> Result<AgentClient> {
        let url = m.agent_url.as_deref().ok_or_else(|| {
            CoreError::Invalid(format!(
                "machine '{}' has no agent address (status {})",
                m.name, m.status
            ))
        })?;
        AgentClient::new(url, &self.token(m)?, m.spec["fingerprint"].as_str())
    }

    /// Creates a machine and returns once its agent answers `/v1/health` with a working
    /// display; on any failure everything it started or wrote is removed again.
    pub async fn create(&self, spec: CreateSpec) -> Result<Machine> {
        valid_name(&spec.name)?;
        if self.get(&spec.name).await.is_ok() {
            return Err(CoreError::MachineExists(spec.name.clone()));
        }
        let kind = spec.provider.unwrap_or(ProviderKind::Local);
        self.report(
            &spec.name,
            "create",
            &format!("creating a {} machine", kind.as_str()),
        );
        let mut m = Machine {
            name: spec.name.clone(),
            provider: kind,
            status: "creating".into(),
            agent_url: None,
            token_path: self.state.keys().join(format!("{}.token", spec.name)),
            pid: None,
            spec: json!({}),
            error: None,
            created_at: now_ms(),
            isolated: None,
        };
        let r = match kind {
            ProviderKind::Local => {
                LocalSandbox::new(self.state.clone())
                    .create(self, &spec, &mut m)
                    .await
            }
            ProviderKind::Remote => RemoteHost.create(self, &spec, &mut m).await,
            ProviderKind::Qemu => {
                crate::provider::qemu::Qemu::new(self.state.clone())
                    .create(self, &spec, &mut m)
                    .await
            }
        };
        if let Err(e) = r {
            self.cleanup(&m).await;
            return Err(e);
        }
        m.status = "running".into();
        self.save(&m).await?;
        Ok(m.with_isolation())
    }

    async fn cleanup(&self, m: &Machine) {
        let _ = match m.provider {
            ProviderKind::Local => LocalSandbox::new(self.state.clone()).destroy(m).await,
            ProviderKind::Remote => RemoteHost.destroy(m).await,
            ProviderKind::Qemu => {
                crate::provider::qemu::Qemu::new(self.state.clone())
                    .destroy(m)
                    .await
            }
        };
        let _ = sqlx::query("DELETE FROM machines WHERE name = ?")
            .bind(&m.name)
            .execute(&self.store.pool)
            .await;
        if m.provider != ProviderKind::Remote || m.token_path.starts_with(self.state.keys()) {
            let _ = std::fs::remove_file(&m.token_path);
            let _ = std::fs::remove_file(m.agent_token_path());
        }
    }

    pub async fn stop(&self, name: &str) -> Result<Machine> {
        let mut m = self.get(name).await?;
        match m.provider {
            ProviderKind::Local => LocalSandbox::new(self.state.clone()).stop(&mut m).await?,
            ProviderKind::Remote => RemoteHost.stop(&mut m).await?,
            ProviderKind::Qemu => {
                crate::provider::qemu::Qemu::new(self.state.clone())
                    .stop(&mut m)
                    .await?
            }
        }
        m.status = "stopped".into();
        self.save(&m).await?;
        self.store.mark_interrupted(name).await?;
        Ok(m)
    }

    pub async fn start(&self, name: &str) -> Result<Machine> {
        let mut m = self.get(name).await?;
        if m.status == "running" && self.dead_reason(&m).is_none() {
            return Ok(m);
        }
        self.report(name, "start", "starting");
        let r = match m.provider {
            ProviderKind::Local => {
                LocalSandbox::new(self.state.clone())
                    .start(self, &mut m)
                    .await
            }
            ProviderKind::Remote => RemoteHost.start(self, &mut m).await,
            ProviderKind::Qemu => {
                crate::provider::qemu::Qemu::new(self.state.clone())
                    .start(self, &mut m)
                    .await
            }
        };
        match r {
            Ok(()) => {
                m.status = "running".into();
                m.error = None;
            }
            Err(e) => {
                m.status = "failed".into();
                m.error = Some(e.to_string());
                self.save(&m).await?;
                return Err(e);
            }
        }
        self.save(&m).await?;
        Ok(m)
    }

    /// Stops everything the machine runs and forgets it. Its synced recordings are kept.
    pub async fn destroy(&self, name: &str) -> Result<()> {
        let m = self.get(name).await?;
        self.store.mark_interrupted(name).await?;
        self.cleanup(&m).await;
        Ok(())
    }

    pub async fn snapshot(&self, name: &str, snap: &str) -> Result<Value> {
        self.snapshot_with(name, snap, false).await
    }

    /// `disk_only` matters for QEMU (a local sandbox's processes never survive a snapshot).
    pub async fn snapshot_with(&self, name: &str, snap: &str, disk_only: bool) -> Result<Value> {
        valid_name(snap).map_err(|_| {
            CoreError::Invalid(format!(
                "snapshot name '{snap}': use letters, digits, '-' or '_'"
            ))
        })?;
        let m = self.get(name).await?;
        let exists: Option<(String,)> = sqlx::query_as("SELECT name FROM snapshots WHERE name = ?")
            .bind(snap)
            .fetch_optional(&self.store.pool)
            .await?;
        if exists.is_some() {
            return Err(CoreError::Invalid(format!(
                "a snapshot named '{snap}' already exists"
            )));
        }
        let dir = self.state.snapshots().join(snap);
        let spec = match m.provider {
            ProviderKind::Local => LocalSandbox::new(self.state.clone()).snapshot(&m, &dir).await?,
            ProviderKind::Qemu => crate::provider::qemu::Qemu::new(self.state.clone()).snapshot(self, &m, &dir, !disk_only).await?,
            ProviderKind::Remote => return Err(CoreError::Invalid("remote hosts cannot be snapshotted from here; snapshot them with your cloud's tools".into())),
        };
        sqlx::query("INSERT INTO snapshots (name, machine, provider, path, spec, created_at) VALUES (?, ?, ?, ?, ?, ?)")
            .bind(snap)
            .bind(&m.name)
            .bind(m.provider.as_str())
            .bind(dir.to_string_lossy().to_string())
            .bind(spec.to_string())
            .bind(now_ms())
            .execute(&self.store.pool)
            .await?;
        Ok(
            json!({"name": snap, "machine": m.name, "provider": m.provider, "path": dir, "spec": spec}),
        )
    }

    pub async fn snapshot_info(&self, snap: &str) -> Result<(PathBuf, ProviderKind, Value)> {
        let r: Option<(String, String, String)> =
            sqlx::query_as("SELECT path, provider, spec FROM snapshots WHERE name = ?")
                .bind(snap)
                .fetch_optional(&self.store.pool)
                .await?;
        let (p, prov, spec) = r.ok_or_else(|| CoreError::NoSnapshot(snap.to_string()))?;
        Ok((
            PathBuf::from(p),
            ProviderKind::parse(&prov)?,
            serde_json::from_str(&spec).unwrap_or(Value::Null),
        ))
    }

    /// Polls the agent until it is healthy (display up), the process dies, or time runs out.
    pub async fn wait_ready(
        &self,
        m: &Machine,
        timeout: Duration,
        alive: impl Fn() -> Option<String>,
    ) -> Result<()> {
        let client = self.client(m)?;
        let op = if m.status == "creating" {
            "create"
        } else {
            "start"
        };
        self.report(&m.name, op, "waiting for the agent");
        let start = Instant::now();
        let mut last;
        loop {
            if let Some(reason) = alive() {
                return Err(CoreError::Boot {
                    name: m.name.clone(),
                    reason,
                });
            }
            match client.health().await {
                Ok(h) if h.problems.is_empty() => return Ok(()),
                Ok(h) => last = h.problems.join("; "),
                Err(e) => last = e.to_string(),
            }
            if start.elapsed() > timeout {
                return Err(CoreError::Boot {
                    name: m.name.clone(),
                    reason: format!(
                        "the agent was not ready after {}s ({last})",
                        timeout.as_secs()
                    ),
                });
            }
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    }
}
