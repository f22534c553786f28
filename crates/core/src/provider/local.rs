//! The local sandbox: bubblewrap around an X server, openbox, (Chromium) and the guest agent.
//!
//! The X server is TigerVNC's Xvnc when installed (no VNC port: only its RandR, which lets the
//! screen follow a viewer's window), else Xvfb (fixed size).
//!
//! Two network modes:
//! - `loopback` (any user, no privileges): the sandbox shares the host's network; the agent
//!   listens on 127.0.0.1 at a random port behind its random token.
//! - `netns` (root or CAP_NET_ADMIN): its own network namespace joined to the host by a veth
//!   pair with a /30 of 10.213.N.0; the agent is reachable only at 10.213.N.2.
//!
//! The sandbox runs in its own process group and PID namespace: killing the group ends every
//! process in it, and the namespace's end takes any daemon (tmux) with it.

use super::{agent_bin, free_port, pid_alive, which, Provider};
use crate::error::{CoreError, Result};
use crate::machine::{random_token, CreateSpec, Machine, Machines};
use crate::paths::StateDir;
use serde_json::{json, Value};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// An exclusive `flock` on a file, released when dropped (or when the process dies).
pub(crate) struct CreateLock {
    _file: std::fs::File,
}

impl CreateLock {
    pub(crate) fn acquire(path: &Path) -> Result<Self> {
        use std::os::fd::AsRawFd;
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(CoreError::io(format!("open {}", path.display())))?;
        // SAFETY: flock on a descriptor we own; blocks until the other create saved its row.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(CoreError::io("lock machine creation")(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(Self { _file: f })
    }
}

pub struct LocalSandbox {
    state: StateDir,
}

const AGENT_PORT_NETNS: u16 = 7300;

pub(crate) fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn netns_name(idx: u64) -> String {
    format!("porthole-{idx}")
}

pub(crate) async fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = tokio::process::Command::new(cmd)
        .args(args)
        .output()
        .await
        .map_err(CoreError::io(format!("run {cmd}")))?;
    if !out.status.success() {
        return Err(CoreError::Boot {
            name: String::new(),
            reason: format!(
                "{cmd} {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        });
    }
    Ok(())
}

/// The last error-looking lines of a log, without terminal colour codes.
pub(crate) fn log_tail(p: &Path) -> String {
    let s = std::fs::read_to_string(p).unwrap_or_default();
    let mut clean = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ ... final byte in @..~
            for d in chars.by_ref() {
                if ('@'..='~').contains(&d) && d != '[' {
                    break;
                }
            }
        } else {
            clean.push(c);
        }
    }
    let lines: Vec<&str> = clean.lines().filter(|l| !l.trim().is_empty()).collect();
    let errors: Vec<&str> = lines
        .iter()
        .copied()
        .filter(|l| {
            l.contains("ERROR")
                || l.contains("Error")
                || l.contains("error:")
                || l.contains("fatal")
        })
        .collect();
    let pick = if errors.is_empty() {
        &lines[..]
    } else {
        &errors[..]
    };
    pick[pick.len().saturating_sub(3)..].join(" | ")
}

impl LocalSandbox {
    pub fn new(state: StateDir) -> Self {
        Self { state }
    }

    fn check_tools() -> Result<()> {
        for (bin, pkg) in [("bwrap", "bubblewrap"), ("openbox", "openbox")] {
            if which(bin).is_none() {
                return Err(CoreError::Missing(format!("{bin} is not installed: sudo apt-get install {pkg} (or run packaging/install-deps.sh)")));
            }
        }
        if which("Xvnc").is_none() && which("Xvfb").is_none() {
            return Err(CoreError::Missing("no X server: sudo apt-get install tigervnc-standalone-server (resizable) or xvfb (or run packaging/install-deps.sh)".into()));
        }
        Ok(())
    }

    /// A display number no other machine and no host X server uses.
    async fn pick_display(ms: &Machines) -> Result<u32> {
        let used: Vec<u32> = ms
            .list()
            .await?
            .iter()
            .filter_map(|m| m.spec["display"].as_u64().map(|d| d as u32))
            .collect();
        let unix = std::fs::read_to_string("/proc/net/unix").unwrap_or_default();
        (100..1000)
            .find(|n| {
                !used.contains(n)
                    && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
                    && !unix.contains(&format!("/tmp/.X11-unix/X{n}\n"))
            })
            .ok_or_else(|| {
                CoreError::Invalid("no free X display number between 100 and 999".into())
            })
    }

    async fn pick_net_index(ms: &Machines) -> Result<u64> {
        let used: Vec<u64> = ms
            .list()
            .await?
            .iter()
            .filter_map(|m| m.spec["net_index"].as_u64())
            .collect();
        (1..=250)
            .find(|i| {
                !used.contains(i) && !Path::new(&format!("/run/netns/{}", netns_name(*i))).exists()
            })
            .ok_or_else(|| {
                CoreError::Invalid(
                    "no free network index (250 sandboxes with their own network exist)".into(),
                )
            })
    }

    async fn netns_up(idx: u64) -> Result<()> {
        let ns = netns_name(idx);
        let (h, n) = (format!("phh{idx}"), format!("phn{idx}"));
        run("ip", &["netns", "add", &ns]).await?;
        run(
            "ip",
            &["link", "add", &h, "type", "veth", "peer", "name", &n],
        )
        .await?;
        run("ip", &["link", "set", &n, "netns", &ns]).await?;
        run(
            "ip",
            &["addr", "add", &format!("10.213.{idx}.1/30"), "dev", &h],
        )
        .await?;
        run("ip", &["link", "set", &h, "up"]).await?;
        run(
            "ip",
            &[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.{idx}.2/30"),
                "dev",
                &n,
            ],
        )
        .await?;
        run("ip", &["-n", &ns, "link", "set", &n, "up"]).await?;
        run("ip", &["-n", &ns, "link", "set", "lo", "up"]).await?;
        Ok(())
    }

    async fn netns_down(idx: u64) {
        // Deleting the namespace destroys the veth pair with it.
        let _ = run("ip", &["netns", "del", &netns_name(idx)]).await;
        let _ = run("ip", &["link", "del", &format!("phh{idx}")]).await;
    }

    fn init_script(spec: &Value) -> String {
        let d = spec["display"].as_u64().unwrap_or(100);
        let (w, h) = (
            spec["width"].as_u64().unwrap_or(1280),
            spec["height"].as_u64().unwrap_or(800),
        );
        let listen = spec["listen"].as_str().unwrap_or("127.0.0.1:7300");
        let mut agent = format!(
            "exec /run/porthole/bin/porthole-agent serve --display :{d} --listen {listen} --token-file /run/porthole/token --data-dir /run/porthole/agent"
        );
        if spec["workspace"].is_string() {
            agent.push_str(" --workspace /workspace");
        }
        if spec["idle"].as_bool() == Some(true) {
            agent.push_str(" --idle");
        }
        if let Some(ds) = spec["display_size"].as_str() {
            agent.push_str(&format!(" --display-size {ds}"));
        }
        if let Some(s) = spec["stall_after"].as_u64() {
            agent.push_str(&format!(" --stall-after {s}"));
        }
        let browser = if spec["browser"].as_bool() == Some(true) {
            "  chromium --no-sandbox --test-type --disable-gpu --no-first-run --disable-background-networking --disable-component-update \
             --disable-sync --disable-dev-shm-usage --user-data-dir=$HOME/.chromium --window-position=0,0 \
             --window-size=$W,$H about:blank >/run/porthole/logs/chromium.log 2>&1 &\n"
                .to_string()
        } else {
            String::new()
        };
        format!(
            "#!/bin/sh\n# Runs inside the sandbox (written by porthole).\nexport DISPLAY=:{d} W={w} H={h}\n\
             if command -v Xvnc >/dev/null; then\n  \
             Xvnc :{d} -geometry {w}x{h} -depth 24 -rfbport -1 -SecurityTypes None -nolisten tcp >/run/porthole/logs/xserver.log 2>&1 &\n\
             else\n  Xvfb :{d} -screen 0 {w}x{h}x24 -nolisten tcp >/run/porthole/logs/xserver.log 2>&1 &\nfi\n\
             (\n  i=0; while [ ! -e /tmp/.X11-unix/X{d} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done\n  \
             openbox >/run/porthole/logs/openbox.log 2>&1 &\n{browser}) &\n{agent}\n"
        )
    }

    fn bwrap_args(&self, m: &Machine, spec: &Value, mdir: &Path, agent: &Path) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&[
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--hostname",
            &m.name,
        ]);
        push(&[
            "--ro-bind",
            "/usr",
            "/usr",
            "--ro-bind",
            "/etc",
            "/etc",
            "--ro-bind-try",
            "/opt",
            "/opt",
        ]);
        for d in ["bin", "sbin", "lib", "lib64", "lib32"] {
            let host = PathBuf::from("/").join(d);
            match std::fs::read_link(&host) {
                Ok(target) => push(&[
                    "--symlink",
                    &target.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) if host.is_dir() => push(&[
                    "--ro-bind",
                    &host.to_string_lossy(),
                    &host.to_string_lossy(),
                ]),
                Err(_) => {}
            }
        }
        push(&[
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs",
            "/var",
        ]);
        push(&["--dir", "/var/tmp"]);
        let p = |x: &Path| x.to_string_lossy().to_string();
        push(&[
            "--bind",
            &p(&mdir.join("home")),
            "/home/porthole",
            "--setenv",
            "HOME",
            "/home/porthole",
        ]);
        push(&["--bind", &p(&mdir.join("agent")), "/run/porthole/agent"]);
        push(&["--bind", &p(&mdir.join("logs")), "/run/porthole/logs"]);
        push(&["--ro-bind", &p(&m.token_path), "/run/porthole/token"]);
        push(&["--ro-bind", &p(agent), "/run/porthole/bin/porthole-agent"]);
        push(&[
            "--ro-bind",
            &p(&mdir.join("init.sh")),
            "/run/porthole/init.sh",
        ]);
        for b in spec["extra_binds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            push(&["--bind", b, b]);
        }
        if let Some(ws) = spec["workspace"].as_str() {
            push(&["--bind", ws, "/workspace", "--chdir", "/workspace"]);
        } else {
            push(&["--chdir", "/home/porthole"]);
        }
        push(&[
            "--setenv",
            "PATH",
            "/usr/local/bin:/usr/bin:/bin",
            "--setenv",
            "USER",
            "porthole",
            "--unsetenv",
            "PORTHOLE_TOKEN",
        ]);
        push(&["--", "/bin/sh", "/run/porthole/init.sh"]);
        a
    }

    /// Starts the sandbox described by `m.spec` and waits for its agent.
    async fn boot(&self, ms: &Machines, m: &mut Machine) -> Result<()> {
        Self::check_tools()?;
        let op = if m.status == "creating" {
            "create"
        } else {
            "start"
        };
        ms.report(
            &m.name,
            op,
            "starting the sandbox: X server, window manager, agent",
        );
        let agent = agent_bin()?;
        let mdir = self.state.machine(&m.name);
        for d in ["home", "agent", "logs"] {
            std::fs::create_dir_all(mdir.join(d))
                .map_err(CoreError::io(format!("create {}", mdir.join(d).display())))?;
        }
        if let Some(idx) = m.spec["net_index"].as_u64() {
            Self::netns_down(idx).await;
            Self::netns_up(idx).await.map_err(|e| match e {
                CoreError::Boot { reason, .. } => CoreError::Boot {
                    name: m.name.clone(),
                    reason: format!("network namespace: {reason}"),
                },
                other => other,
            })?;
        }
        std::fs::write(mdir.join("init.sh"), Self::init_script(&m.spec))
            .map_err(CoreError::io("write init.sh"))?;
        let args = self.bwrap_args(m, &m.spec, &mdir, &agent);
        let log = std::fs::File::create(mdir.join("logs/sandbox.log"))
            .map_err(CoreError::io("create sandbox log"))?;
        let mut cmd = match m.spec["net_index"].as_u64() {
            Some(idx) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", &netns_name(idx), "bwrap"]);
                c
            }
            None => tokio::process::Command::new("bwrap"),
        };
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(CoreError::io("log"))?)
            .stderr(log)
            .process_group(0)
            .env("RUST_LOG", std::env::var("PORTHOLE_AGENT_LOG").unwrap_or_else(|_| "info,webrtc=error,webrtc_ice=error,webrtc_srtp=error,webrtc_dtls=error,webrtc_sctp=error,webrtc_mdns=error".into()));
        let limits = super::limits::Limits::from_env()?;
        let mut child = cmd.spawn().map_err(CoreError::io("start bwrap"))?;
        let pid = child.id().map(|p| p as i64);
        m.pid = pid;
        // At once, so everything the sandbox starts inherits the limits.
        if let Some(p) = pid {
            m.spec["limits"] = super::limits::apply(&m.name, &[p as i32], limits);
            super::limits::adopt_group(&m.spec["limits"], p as i32);
        }
        let log_path = mdir.join("logs/sandbox.log");
        let exited = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let ex = exited.clone();
        // Reap the sandbox when it exits, so a dead one is seen as dead (not a zombie).
        tokio::spawn(async move {
            let st = child.wait().await;
            *ex.lock().unwrap() = Some(format!(
                "sandbox exited ({})",
                st.map(|s| s.to_string()).unwrap_or_default()
            ));
        });
        let r = ms
            .wait_ready(m, Duration::from_secs(30), || {
                exited
                    .lock()
                    .unwrap()
                    .clone()
                    .map(|e| format!("{e}: {}", log_tail(&log_path)))
            })
            .await;
        if let Err(e) = r {
            self.kill(m).await;
            return Err(e);
        }
        if let Some(p) = m.pid {
            super::limits::adopt_group(&m.spec["limits"], p as i32);
        }
        Ok(())
    }

    async fn kill(&self, m: &Machine) {
        if let Some(pid) = m.pid {
            // SAFETY: signalling the process group we created for this sandbox.
            unsafe { libc::kill(-(pid as i32), libc::SIGTERM) };
            for _ in 0..50 {
                if !pid_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            // SAFETY: as above; SIGKILL for whatever ignored SIGTERM.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
        }
        if let Some(idx) = m.spec["net_index"].as_u64() {
            Self::netns_down(idx).await;
        }
        let limits = m.spec["limits"].clone();
        let _ = tokio::task::spawn_blocking(move || super::limits::remove_applied(&limits)).await;
    }

    /// Copies the machine's disk state (its home) into `dir`; processes do not survive.
    pub async fn snapshot(&self, m: &Machine, dir: &Path) -> Result<Value> {
        std::fs::create_dir_all(dir).map_err(CoreError::io(format!("create {}", dir.display())))?;
        let src = self.state.machine(&m.name).join("home");
        let out = tokio::process::Command::new("cp")
            .args(["-a", "--reflink=auto"])
            .arg(&src)
            .arg(dir.join("home"))
            .output()
            .await
            .map_err(CoreError::io("cp"))?;
        if !out.status.success() {
            let _ = std::fs::remove_dir_all(dir);
            return Err(CoreError::Invalid(format!(
                "snapshot copy failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(
            json!({"workspace": m.spec["workspace"], "env": m.spec["env"], "display_size": m.spec["display_size"]}),
        )
    }
}

impl Provider for LocalSandbox {
    async fn create(&self, ms: &Machines, spec: &CreateSpec, m: &mut Machine) -> Result<()> {
        Self::check_tools()?;
        super::limits::Limits::from_env()?;
        let mdir = self.state.machine(&m.name);
        if mdir.exists() {
            // Left from a crash of an earlier create with this name: it is not in the store.
            let _ = std::fs::remove_dir_all(&mdir);
        }
        // The workspace: given, or the repository an environment file belongs to.
        let mut workspace = spec.workspace.clone();
        if workspace.is_none() {
            if let Some(env) = &spec.env_path {
                let abs = std::fs::canonicalize(env)
                    .map_err(CoreError::io(format!("environment file {}", env.display())))?;
                let dir = abs.parent().map(Path::to_path_buf).unwrap_or_default();
                let is_hidden = dir
                    .file_name()
                    .is_some_and(|n| n == ".cursor" || n == ".porthole" || n == ".devcontainer");
                workspace = Some(if is_hidden {
                    dir.parent().map(Path::to_path_buf).unwrap_or(dir)
                } else {
                    dir
                });
            }
        }
        if let Some(env) = &spec.env_path {
            let report = porthole_envfile::check_file(env);
            if !report.is_valid() {
                let problems: Vec<String> = report.problems.iter().map(|p| p.to_string()).collect();
                return Err(CoreError::Invalid(format!(
                    "environment file {} is invalid: {}",
                    env.display(),
                    problems.join("; ")
                )));
            }
        }
        let workspace = match workspace {
            Some(w) => Some(
                std::fs::canonicalize(&w)
                    .map_err(CoreError::io(format!("workspace {}", w.display())))?,
            ),
            None => None,
        };
        let network = match spec.network.as_deref() {
            Some("loopback") => "loopback",
            Some("netns") => {
                if !is_root() || which("ip").is_none() {
                    return Err(CoreError::Missing("--network netns needs root (or CAP_NET_ADMIN) and iproute2; use --network loopback".into()));
                }
                "netns"
            }
            Some(other) => {
                return Err(CoreError::Invalid(format!(
                    "--network {other}: expected loopback or netns"
                )))
            }
            None if is_root() && which("ip").is_some() => "netns",
            None => "loopback",
        };
        // Two creates (two CLI processes) must not pick the same display or network index:
        // hold an exclusive lock from picking until the machine row is saved.
        let _lock = CreateLock::acquire(&ms.state.root().join(".create.lock"))?;
        let display = Self::pick_display(ms).await?;
        let (w, h) = spec.display_size.unwrap_or((1280, 800));
        let mut s = json!({
            "display": display, "width": w, "height": h, "network": network,
            "workspace": workspace, "idle": spec.idle, "browser": spec.browser,
            "env": spec.env_path.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())),
            "extra_binds": spec.extra_binds,
        });
        // Seconds of silence before a run's agent counts as stalled (the agent's default otherwise).
        if let Some(secs) = std::env::var("PORTHOLE_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            s["stall_after"] = json!(secs);
        }
        let url = if network == "netns" {
            let idx = Self::pick_net_index(ms).await?;
            s["net_index"] = json!(idx);
            s["listen"] = json!(format!("10.213.{idx}.2:{AGENT_PORT_NETNS}"));
            format!("http://10.213.{idx}.2:{AGENT_PORT_NETNS}")
        } else {
            let port = free_port("127.0.0.1")?;
            s["listen"] = json!(format!("127.0.0.1:{port}"));
            format!("http://127.0.0.1:{port}")
        };
        m.spec = s;
        m.agent_url = Some(url);
        std::fs::create_dir_all(ms.state.keys()).map_err(CoreError::io("create keys dir"))?;
        std::fs::write(&m.token_path, random_token()).map_err(CoreError::io("write token"))?;
        std::fs::set_permissions(&m.token_path, std::fs::Permissions::from_mode(0o600))
            .map_err(CoreError::io("chmod token"))?;
        if let Some(snap) = &spec.from_snapshot {
            let (path, kind, _) = ms.snapshot_info(snap).await?;
            if kind != crate::machine::ProviderKind::Local {
                return Err(CoreError::Invalid(format!(
                    "snapshot '{snap}' is a {} snapshot; use --provider {}",
                    kind.as_str(),
                    kind.as_str()
                )));
            }
            std::fs::create_dir_all(&mdir).map_err(CoreError::io("create machine dir"))?;
            let out = tokio::process::Command::new("cp")
                .args(["-a", "--reflink=auto"])
                .arg(path.join("home"))
                .arg(mdir.join("home"))
                .output()
                .await
                .map_err(CoreError::io("cp"))?;
            if !out.status.success() {
                return Err(CoreError::Invalid(format!(
                    "restore snapshot '{snap}': {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            m.spec["snapshot"] = json!(snap);
        }
        // Saved before booting, so a concurrent create sees this display and network as taken.
        ms.save(m).await?;
        drop(_lock);
        self.boot(ms, m).await
    }

    async fn start(&self, ms: &Machines, m: &mut Machine) -> Result<()> {
        self.kill(m).await;
        self.boot(ms, m).await
    }

    async fn stop(&self, m: &mut Machine) -> Result<()> {
        self.kill(m).await;
        m.pid = None;
        Ok(())
    }

    async fn destroy(&self, m: &Machine) -> Result<()> {
        self.kill(m).await;
        let mdir = self.state.machine(&m.name);
        if mdir.exists() {
            std::fs::remove_dir_all(&mdir)
                .map_err(CoreError::io(format!("remove {}", mdir.display())))?;
        }
        Ok(())
    }

    fn dead_reason(&self, m: &Machine) -> Option<String> {
        let pid = m.pid?;
        if pid_alive(pid) {
            return None;
        }
        let log = self.state.machine(&m.name).join("logs/sandbox.log");
        let tail = log_tail(&log);
        Some(format!(
            "the sandbox's processes are gone (killed or crashed){}",
            if tail.is_empty() {
                String::new()
            } else {
                format!("; last log: {tail}")
            }
        ))
    }
}
