//! The local sandbox: bubblewrap around an X server, openbox, (Chromium) and the guest agent.
//!
//! The X server is TigerVNC's Xvnc when installed (no VNC port: only its RandR, which lets the
//! screen follow a viewer's window), else Xvfb (fixed size). It listens only inside the
//! machine (its network namespace scopes the abstract socket) and asks for the machine's own
//! MIT-MAGIC-COOKIE.
//!
//! The coding agent and everything it runs are hostile, so the sandbox is layered (like
//! Firecracker's jailer): a user namespace always, entered from an unprivileged host uid (as
//! root, a uid of the machine's own with no passwd entry: bubblewrap as root would map the
//! sandbox to host root, whose `/proc/sys` stays writable even without capabilities); no
//! capabilities; seccomp filters ([`super::seccomp`]); a new session (no TIOCSTI into the
//! caller's terminal); a clean environment (bubblewrap itself gets none of the caller's, so
//! `/proc/1/environ` inside is clean too); read-only system directories; only the machine's
//! own directories writable.
//!
//! Network, whoever runs Porthole, a private namespace:
//! - `netns` (root): a named namespace with a veth pair (10.213.N.1 ↔ .2, so any WebRTC peer
//!   on the host reaches the agent) and slirp4netns for outbound traffic.
//! - `slirp` (an ordinary user): bubblewrap's own network namespace with slirp4netns; the
//!   agent's TCP port and one UDP port are forwarded from 127.0.0.1.
//! In both, packet rules inside the namespace (installed from outside before the agent
//! starts; nothing inside has the capability to change them) refuse new connections to any
//! host address, the link-local range (169.254.169.254) and other sandboxes; slirp4netns runs
//! with `--disable-host-loopback`.
//! - `host` (explicit, `--network host`; `loopback` is its old name): the host's network, not
//!   isolated, and `machine list --json` says `"isolated": false`.
//!
//! A supervisor (a shell that lives as long as the machine) is bubblewrap's parent, so
//! `--die-with-parent` holds: killing the supervisor's process group ends bubblewrap, whose
//! death kills the sandbox's PID 1, whose death ends the PID namespace and everything in it.

use super::{agent_bin, free_port, pid_alive, which, Provider};
use crate::error::{CoreError, Result};
use crate::machine::{random_token, CreateSpec, Machine, Machines};
use crate::paths::StateDir;
use serde_json::{json, Value};
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

// Descriptors the supervisor opens for bubblewrap (bash: more than one digit).
const FD_SECCOMP_DENY: u32 = 10;
const FD_SECCOMP_CLONE3: u32 = 11;
const FD_TOKEN: u32 = 12;
const FD_AGENT_TOKEN: u32 = 13;
const FD_XAUTH: u32 = 14;
/// The workload's seccomp program, a file inside for porthole-agent to apply.
const FD_SECCOMP_WORKLOAD: u32 = 15;
/// Where the egress filter listens inside a restricted machine's network namespace, and the
/// firewall mark its own connections carry (`porthole_agent::egress::MARK`).
const EGRESS_PROXY_PORT: u16 = 15001;
const EGRESS_MARK: u32 = 0x7068;

/// As root, where the supervisor's private mount namespace shows the machine's host paths to
/// bubblewrap (see [`LocalSandbox::sources`]).
const SANDBOX_SRC: &str = "/run/porthole-sandbox";
/// The write end of slirp4netns's `--exit-fd` pipe, in the supervisor only.
const FD_SLIRP_EXIT: u32 = 30;

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
/// A log file in a directory the sandbox can write: whatever it left at that name (a symlink
/// to /etc/shadow, a FIFO) is removed, never followed, and the file is created anew
/// (O_EXCL does not follow links; a name planted again in between makes the boot fail).
pub(crate) fn create_log(p: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::remove_file(p) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o644)
        .open(p)
}

/// The last 64 KiB of a log the sandbox may have replaced: a symlink is not followed, a FIFO
/// or device is not read (O_NONBLOCK, regular files only).
fn read_log(p: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::OpenOptionsExt;
    const MAX: u64 = 64 * 1024;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(p)
    else {
        return String::new();
    };
    let Ok(meta) = f.metadata() else {
        return String::new();
    };
    if !meta.is_file() {
        return String::new();
    }
    if meta.len() > MAX {
        let _ = f.seek(SeekFrom::Start(meta.len() - MAX));
    }
    let mut buf = Vec::new();
    let _ = f.take(MAX).read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).to_string()
}

pub(crate) fn log_tail(p: &Path) -> String {
    let s = read_log(p);
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

/// 16 random bytes: the X server's MIT-MAGIC-COOKIE-1 for one boot of one machine.
fn random_cookie() -> [u8; 16] {
    use rand::RngCore;
    let mut c = [0u8; 16];
    rand::thread_rng().fill_bytes(&mut c);
    c
}

/// An Xauthority file with one FamilyWild entry (any host, any display), so the cookie works
/// whatever name the client uses for the server.
fn xauth_file(cookie: &[u8; 16]) -> Vec<u8> {
    let mut f = Vec::new();
    let mut field = |b: &[u8]| {
        f.extend_from_slice(&(b.len() as u16).to_be_bytes());
        f.extend_from_slice(b);
    };
    // family 0xffff (FamilyWild), then address, display number, auth name, auth data.
    let mut out = vec![0xff, 0xff];
    field(b"");
    field(b"");
    field(b"MIT-MAGIC-COOKIE-1");
    field(cookie);
    out.extend_from_slice(&f);
    out
}

/// A pipe, both ends close-on-exec (only [`pass_fd`] hands one on).
fn pipe() -> std::io::Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both were just created and are owned by nobody else.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// Hands `fd` to the child as descriptor `target` (dup2 clears close-on-exec on the copy).
/// The DNS servers the machine uses (its /etc is the host's): the nameserver lines of
/// /etc/resolv.conf that are addresses.
fn resolvers() -> Vec<String> {
    std::fs::read_to_string("/etc/resolv.conf")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().strip_prefix("nameserver"))
        .map(str::trim)
        .filter(|a| a.parse::<std::net::IpAddr>().is_ok())
        .map(str::to_string)
        .collect()
}

fn pass_fd(cmd: &mut tokio::process::Command, fd: &std::os::fd::OwnedFd, target: u32) {
    use std::os::fd::AsRawFd;
    let raw = fd.as_raw_fd();
    // SAFETY: dup2 is async-signal-safe; `raw` stays open in the parent until after spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(raw, target as i32) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// A system tool that may live in an sbin directory an ordinary user's PATH leaves out.
fn sbin(bin: &str) -> String {
    which(bin)
        .or_else(|| {
            ["/usr/sbin", "/sbin"]
                .iter()
                .map(|d| Path::new(d).join(bin))
                .find(|p| p.is_file())
        })
        .map(|p| p.to_string_lossy().to_string())
        .unwrap_or_else(|| bin.to_string())
}

/// The user namespace owning process `pid`'s network namespace (ioctl NS_GET_USERNS).
fn netns_owner(pid: i32) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::{AsRawFd, FromRawFd};
    const NS_GET_USERNS: libc::c_ulong = 0xb701; // _IO(0xb7, 0x1)
    let f = std::fs::File::open(format!("/proc/{pid}/ns/net"))?;
    // SAFETY: an ioctl on a namespace descriptor we own; it returns a new descriptor or -1.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), NS_GET_USERNS as _) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(r) })
}

fn free_udp_port() -> Result<u16> {
    let s =
        std::net::UdpSocket::bind(("127.0.0.1", 0)).map_err(CoreError::io("pick a UDP port"))?;
    Ok(s.local_addr()
        .map_err(CoreError::io("pick a UDP port"))?
        .port())
}

/// `chown -R` without following symlinks (a link the agent planted must not hand it a host
/// file); `to` None: back to the owner recorded when the machine took the tree.
fn chown_tree(root: &Path, to: Option<(u32, u32)>) -> Result<()> {
    let (u, g) = to.unwrap_or((0, 0));
    let out = std::process::Command::new("chown")
        .args(["-R", "-P", "-h", &format!("{u}:{g}"), "--"])
        .arg(root)
        .output()
        .map_err(CoreError::io("run chown"))?;
    if !out.status.success() {
        return Err(CoreError::Invalid(format!(
            "chown {}: {}",
            root.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

fn chown(p: &Path, uid: u32) -> Result<()> {
    std::os::unix::fs::chown(p, Some(uid), Some(uid))
        .map_err(CoreError::io(format!("chown {}", p.display())))
}

/// Asks slirp4netns (its JSON API on a unix socket) to forward a port from the host's loopback.
/// A machine's own copy of an image's root filesystem (reflinked where the filesystem can),
/// owned by the machine's uid as root, so its programs can write anywhere in it.
async fn copy_rootfs(src: &Path, dst: &Path, uid: Option<u64>) -> Result<()> {
    let _ = std::fs::remove_dir_all(dst);
    let out = tokio::process::Command::new("cp")
        .args(["-a", "--reflink=auto", "--"])
        .arg(src)
        .arg(dst)
        .output()
        .await
        .map_err(CoreError::io("cp"))?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(dst);
        return Err(CoreError::Invalid(format!(
            "copy the image's root filesystem: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    if let Some(uid) = uid {
        let dst = dst.to_path_buf();
        tokio::task::spawn_blocking(move || chown_tree(&dst, Some((uid as u32, uid as u32))))
            .await
            .map_err(|e| CoreError::Invalid(format!("chown: {e}")))??;
    }
    Ok(())
}

async fn slirp_hostfwd(
    api: &Path,
    proto: &str,
    host: u64,
    guest: u64,
) -> std::result::Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::UnixStream::connect(api)
        .await
        .map_err(|e| e.to_string())?;
    let req = json!({"execute": "add_hostfwd", "arguments": {"proto": proto, "host_addr": "127.0.0.1", "host_port": host, "guest_addr": "10.0.2.100", "guest_port": guest}});
    s.write_all(req.to_string().as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    s.shutdown().await.map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .await
        .map_err(|e| e.to_string())?;
    let v: Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
    match v.get("error") {
        Some(e) => Err(e.to_string()),
        None => Ok(()),
    }
}

/// A uid of the machine's own for the sandbox when Porthole runs as root: no passwd entry, no
/// files on the host but the machine's, and distinct per machine (so per-uid limits and
/// signals never cross machines). Above the ranges distributions hand to users and subuids.
fn sandbox_uid_for(display: u32) -> u32 {
    let base = std::env::var("PORTHOLE_SANDBOX_UID_BASE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_100_000_000u32);
    base + display
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
        // Two `ip netns add` at once on a host's first namespaces race on making /run/netns
        // a shared mount: the second mount hides the first namespace's bind (seen here as
        // slirp4netns's `setns(CLONE_NEWNET): Invalid argument` when two runs start together).
        let _lock = tokio::task::spawn_blocking(|| {
            CreateLock::acquire(Path::new("/run/porthole-netns.lock"))
        })
        .await
        .map_err(|e| CoreError::Invalid(format!("netns lock: {e}")))??;
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

    /// The workspace environment's egress policy, read at every boot (it is the file's, and
    /// the file may have changed): `{"restricted": false}` or the mode and list the filter
    /// enforces. A restricted machine must have a network of its own to filter.
    fn egress_spec(m: &Machine) -> Result<Value> {
        let boot_err = |reason: String| CoreError::Boot {
            name: m.name.clone(),
            reason,
        };
        let env = match m.spec["workspace"]
            .as_str()
            .and_then(|ws| crate::environments::find_in_repo(Path::new(ws)))
        {
            Some(f) => match crate::environments::load(&f) {
                Ok(e) => e,
                // The agent reports a broken file on the timeline; the network stays open
                // only if the file never said otherwise, which a broken file cannot say.
                Err(e) => return Err(boot_err(format!("{}: {e}", f.display()))),
            },
            None => return Ok(json!({"restricted": false})),
        };
        let policy = porthole_envfile::egress::Policy::from_env(
            env.egress_mode.as_deref(),
            &env.egress_allowlist,
        )
        .map_err(boot_err)?;
        if !policy.restricted() {
            return Ok(json!({"restricted": false}));
        }
        if m.spec["network"] == "host" {
            return Err(boot_err(
                "the environment restricts egress (egressMode/egressAllowlist), which needs the machine's own network: drop --network host".into(),
            ));
        }
        Ok(json!({
            "restricted": true,
            "mode": env.egress_mode,
            "allow": env.egress_allowlist,
        }))
    }

    fn init_script(spec: &Value) -> String {
        let d = spec["display"].as_u64().unwrap_or(100);
        let (w, h) = (
            spec["width"].as_u64().unwrap_or(1280),
            spec["height"].as_u64().unwrap_or(800),
        );
        let listen = spec["listen_inside"]
            .as_str()
            .or(spec["listen"].as_str())
            .unwrap_or("127.0.0.1:7300");
        // --workload-sandbox: what the coding agent runs cannot see, signal or replace the
        // agent, nor reach its data directory (evidence: events, the video, meta.json).
        let mut agent = format!(
            "exec /run/porthole/bin/porthole-agent serve --display :{d} --listen {listen} --token-file /run/porthole/token --agent-token-file /run/porthole/agent-token --forget-token-files --data-dir /run/porthole/agent --workload-sandbox"
        );
        if spec["seccomp"]["applied"] == true {
            agent.push_str(" --workload-seccomp /run/porthole/seccomp-workload.bpf");
        }
        if spec["workspace"].is_string() {
            agent.push_str(" --workspace /workspace");
        }
        if spec["egress"]["restricted"] == true {
            agent.push_str(" --egress-log /run/porthole/net/egress.jsonl");
        }
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let image = spec["image"].is_object();
        if image {
            // The image's root is where exec, the steps and the terminals run.
            agent.push_str(" --workload-root /run/porthole/rootfs");
            for kv in spec["image"]["env"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
            {
                agent.push_str(&format!(" --workload-env {}", q(kv)));
            }
            let mut summary = spec["image"].clone();
            if let Some(o) = summary.as_object_mut() {
                o.remove("env");
            }
            agent.push_str(&format!(" --image-build {}", q(&summary.to_string())));
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
        if spec["network"] == "slirp" {
            // WebRTC through slirp4netns's forward of this one UDP port on the host's loopback.
            if let Some(u) = spec["udp_port"].as_u64() {
                agent.push_str(&format!(" --udp-port {u} --public-ip 127.0.0.1"));
            }
        }
        // The browser opens pages the coding agent chooses: workload, started by the agent.
        // The machine's Chromium, or the environment's chromeExecutablePath (in the image,
        // when the machine has one: a browser the image brings).
        if spec["browser"].as_bool() == Some(true) {
            let (bin, flag, log) = match spec["chrome"].as_str() {
                Some(c) if image => (q(c), "--start-in-image", "/tmp/porthole-chromium.log"),
                Some(c) => (q(c), "--start", "/run/porthole/logs/chromium.log"),
                None => (
                    "chromium".into(),
                    "--start",
                    "/run/porthole/logs/chromium.log",
                ),
            };
            let cmd = format!(
                "exec {bin} --no-sandbox --test-type --disable-gpu --no-first-run --disable-background-networking --disable-component-update \
                 --disable-sync --disable-dev-shm-usage --user-data-dir=$HOME/.chromium --window-position=0,0 \
                 --window-size={w},{h} about:blank >{log} 2>&1"
            );
            agent.push_str(&format!(" {flag} {}", q(&cmd)));
        }
        // The network's packet rules go in from outside before anything the agent starts can
        // send a packet: wait for the supervisor's mark.
        let wait_net = if spec["network"] == "host" {
            String::new()
        } else {
            "i=0; while [ ! -e /run/porthole/net/ready ] && [ $i -lt 1000 ]; do sleep 0.01; i=$((i+1)); done\n\
             [ -e /run/porthole/net/ready ] || { echo 'network was not set up in 10 s' >&2; exit 1; }\n"
                .to_string()
        };
        format!(
            "#!/bin/sh\n# Runs inside the sandbox (written by porthole).\nexport DISPLAY=:{d} W={w} H={h} XAUTHORITY=/run/porthole/xauth\n\
             {wait_net}\
             if command -v Xvnc >/dev/null; then\n  \
             Xvnc :{d} -auth /run/porthole/xauth -geometry {w}x{h} -depth 24 -rfbport -1 -SecurityTypes None -nolisten tcp >/run/porthole/logs/xserver.log 2>&1 &\n\
             else\n  Xvfb :{d} -auth /run/porthole/xauth -screen 0 {w}x{h}x24 -nolisten tcp >/run/porthole/logs/xserver.log 2>&1 &\nfi\n\
             (\n  i=0; while [ ! -e /tmp/.X11-unix/X{d} ] && [ $i -lt 500 ]; do sleep 0.01; i=$((i+1)); done\n  \
             openbox >/run/porthole/logs/openbox.log 2>&1 &\n) &\n{agent}\n"
        )
    }

    /// The environment the sandbox starts with: an allowlist, nothing of the caller's
    /// (cloud credentials, `GITHUB_TOKEN`, API keys stay on the host). An environment file's
    /// `env` and declared secrets reach the machine through the agent, not through here.
    fn sandbox_env() -> Vec<(&'static str, String)> {
        vec![
            ("PATH", "/usr/local/bin:/usr/bin:/bin".into()),
            ("HOME", "/home/porthole".into()),
            ("USER", "porthole".into()),
            ("LANG", "C.UTF-8".into()),
            ("XAUTHORITY", "/run/porthole/xauth".into()),
            (
                "RUST_LOG",
                std::env::var("PORTHOLE_AGENT_LOG").unwrap_or_else(|_| {
                    "info,webrtc=error,webrtc_ice=error,webrtc_srtp=error,webrtc_dtls=error,webrtc_sctp=error,webrtc_mdns=error".into()
                }),
            ),
        ]
    }

    /// bubblewrap's arguments. `seccomp_fds`: descriptors the supervisor opens on the compiled
    /// filters (none where no filter could be built; the spec then says why).
    /// The machine's host paths bubblewrap binds in: (key, real path).
    fn sources(spec: &Value, mdir: &Path, agent: &Path) -> Vec<(&'static str, PathBuf)> {
        let mut v = vec![
            ("home", mdir.join("home")),
            ("agent", mdir.join("agent")),
            ("logs", mdir.join("logs")),
            ("net", mdir.join("net")),
            ("agent-bin", agent.to_path_buf()),
            ("init", mdir.join("init.sh")),
        ];
        if let Some(ws) = spec["workspace"].as_str() {
            v.push(("workspace", PathBuf::from(ws)));
        }
        if spec["image"].is_object() {
            v.push(("rootfs", mdir.join("rootfs")));
        }
        v
    }

    /// As root, bubblewrap runs as the machine's uid, which cannot walk into the 0700 state
    /// directory (and bubblewrap resolves every bind source with realpath, so `--bind-fd`
    /// does not help): the supervisor first binds each source under [`SANDBOX_SRC`] in a
    /// private mount namespace of its own. As an ordinary user, the real paths.
    fn source_path(spec: &Value, key: &str, real: &Path) -> String {
        if spec["sandbox_uid"].is_u64() {
            format!("{SANDBOX_SRC}/{key}")
        } else {
            real.to_string_lossy().to_string()
        }
    }

    fn bwrap_args(
        m: &Machine,
        spec: &Value,
        mdir: &Path,
        agent: &Path,
        seccomp_fds: &[u32],
    ) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |xs: &[&str]| a.extend(xs.iter().map(|s| s.to_string()));
        push(&[
            "--unshare-user",
            "--unshare-pid",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            &m.name,
            // The user inside; the host uid it maps to has no privileges.
            "--uid",
            "1000",
            "--gid",
            "1000",
            "--cap-drop",
            "ALL",
            "--new-session",
            "--die-with-parent",
            // No --disable-userns: porthole-agent builds the workload's sandbox in here (its
            // own user, PID and mount namespaces); the workload's seccomp filter refuses new
            // user namespaces to everything the coding agent runs.
            "--clearenv",
        ]);
        if spec["network"] == "slirp" {
            push(&["--unshare-net"]);
        }
        for (k, v) in Self::sandbox_env() {
            push(&["--setenv", k, &v]);
        }
        for fd in seccomp_fds {
            push(&["--add-seccomp-fd", &fd.to_string()]);
        }
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
        // A new /proc for the PID namespace. Its /proc/sys is made read-only one level down, in
        // the workload's sandbox: a bind over it here would make that sandbox's /proc mount
        // fail (the kernel refuses a new proc where the visible one is partly covered). The
        // host uid the machine runs as owns nothing there either way.
        push(&[
            "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run", "--tmpfs",
            "/var",
        ]);
        // The X server runs without root and could not make its socket directory itself
        // (it then waits on the abstract socket alone, and the init's wait for the socket
        // file times out).
        push(&[
            "--dir",
            "/var/tmp",
            "--perms",
            "1777",
            "--dir",
            "/tmp/.X11-unix",
        ]);
        let src = |key: &str| {
            Self::sources(spec, mdir, agent)
                .into_iter()
                .find(|(k, _)| *k == key)
                .map(|(k, real)| Self::source_path(spec, k, &real))
                .unwrap_or_default()
        };
        push(&["--bind", &src("home"), "/home/porthole"]);
        push(&["--bind", &src("agent"), "/run/porthole/agent"]);
        push(&["--bind", &src("logs"), "/run/porthole/logs"]);
        push(&["--ro-bind", &src("net"), "/run/porthole/net"]);
        push(&[
            "--ro-bind",
            &src("agent-bin"),
            "/run/porthole/bin/porthole-agent",
        ]);
        push(&["--ro-bind", &src("init"), "/run/porthole/init.sh"]);
        let fd = |n: u32| n.to_string();
        // Copies in the sandbox's own /run, which the agent deletes once read: no key file of
        // the host is reachable from inside, and processes started later find no token file.
        push(&[
            "--perms",
            "0600",
            "--file",
            &fd(FD_TOKEN),
            "/run/porthole/token",
        ]);
        push(&[
            "--perms",
            "0600",
            "--file",
            &fd(FD_AGENT_TOKEN),
            "/run/porthole/agent-token",
        ]);
        push(&[
            "--perms",
            "0600",
            "--ro-bind-data",
            &fd(FD_XAUTH),
            "/run/porthole/xauth",
        ]);
        if spec["seccomp"]["applied"] == true {
            push(&[
                "--perms",
                "0444",
                "--ro-bind-data",
                &fd(FD_SECCOMP_WORKLOAD),
                "/run/porthole/seccomp-workload.bpf",
            ]);
        }
        for b in spec["extra_binds"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            push(&["--ro-bind", b, b]);
        }
        if spec["image"].is_object() {
            push(&["--bind", &src("rootfs"), "/run/porthole/rootfs"]);
        }
        if spec["workspace"].is_string() {
            push(&[
                "--bind",
                &src("workspace"),
                "/workspace",
                "--chdir",
                "/workspace",
            ]);
        } else {
            push(&["--chdir", "/home/porthole"]);
        }
        push(&["--", "/bin/sh", "/run/porthole/init.sh"]);
        a
    }

    /// The supervisor: bubblewrap's parent for the machine's lifetime (so `--die-with-parent`
    /// means "dies with the machine", not "dies when `machine create` exits"), and the owner
    /// of slirp4netns. It gets an empty environment from us and passes none on.
    fn supervisor_script(
        m: &Machine,
        spec: &Value,
        mdir: &Path,
        agent: &Path,
        bwrap: &[String],
    ) -> String {
        let q = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
        let p = |x: &Path| q(&x.to_string_lossy());
        let args: Vec<String> = bwrap.iter().map(|a| q(a)).collect();
        let run = mdir.join("run");
        let mut launch = String::new();
        if let Some(idx) = spec["net_index"].as_u64() {
            launch.push_str(&format!("ip netns exec {} ", netns_name(idx)));
        }
        let mut mounts = String::new();
        if let Some(uid) = spec["sandbox_uid"].as_u64() {
            launch.push_str(
                "unshare -m --propagation private /bin/bash -c \"$MOUNTS\" porthole-launch ",
            );
            mounts.push_str(&format!(
                "set -e; mount -t tmpfs -o mode=0755,size=1m porthole-sandbox {SANDBOX_SRC}; "
            ));
            for (key, real) in Self::sources(spec, mdir, agent) {
                let dest = format!("{SANDBOX_SRC}/{key}");
                let make = if real.is_dir() { "mkdir" } else { "touch" };
                mounts.push_str(&format!(
                    "{make} {dest}; mount --bind {} {dest}; ",
                    p(&real)
                ));
            }
            mounts.push_str(&format!(
                "exec setpriv --reuid={uid} --regid={uid} --clear-groups --inh-caps=-all --bounding-set=-all \"$@\""
            ));
        }
        let mut opens: Vec<(u32, PathBuf)> = vec![
            (FD_TOKEN, run.join("token")),
            (FD_AGENT_TOKEN, run.join("agent-token")),
            (FD_XAUTH, run.join("xauth")),
        ];
        if spec["seccomp"]["applied"] == true {
            opens.push((FD_SECCOMP_DENY, run.join("seccomp-supervisor.bpf")));
            opens.push((FD_SECCOMP_CLONE3, run.join("seccomp-clone3.bpf")));
            opens.push((FD_SECCOMP_WORKLOAD, run.join("seccomp-deny.bpf")));
        }
        let open_all: Vec<String> = opens
            .iter()
            .map(|(n, path)| format!("{n}<{}", p(path)))
            .collect();
        format!(
            "#!/bin/bash\n# The supervisor of machine {name} (written by porthole): bubblewrap's parent. It holds\n# slirp4netns's exit pipe, so slirp4netns ends with it.\n\
             MOUNTS={mounts}\n\
             {launch}bwrap --info-fd 3 {args} 3>{info} {open} {exit_fd}>&- &\nB=$!\n\
             trap 'kill -KILL $B 2>/dev/null; exit 143' TERM INT HUP\n\
             wait $B; st=$?\necho \"sandbox exited with status $st\" >&2\nexit $st\n",
            mounts = q(&mounts),
            exit_fd = FD_SLIRP_EXIT,
            name = m.name,
            args = args.join(" "),
            info = p(&run.join("info.json")),
            open = open_all.join(" "),
        )
    }

    /// New connections from inside the machine to any host address are refused (replies to
    /// the host's own connections, to the agent, pass as established). `host_addrs`: every
    /// address of the host's interfaces at boot, the veth pairs' range, link-local.
    /// `egress`: `Some(resolvers)` for a restricted machine (the only DNS servers it may ask:
    /// port 53 to anywhere would be a tunnel past the allowlist).
    fn nft_rules(host_addrs: &[String], egress: Option<&[String]>) -> String {
        let (v4, v6): (Vec<&String>, Vec<&String>) =
            host_addrs.iter().partition(|a| !a.contains(':'));
        let set = |xs: &[&String]| xs.iter().map(|s| s.as_str()).collect::<Vec<_>>().join(", ");
        let mut r = String::from(
            // Loopback by address as well as by interface: a connection the nat chain
            // redirected to the egress filter still shows its first route's interface here.
            "table inet porthole {\n  chain out {\n    type filter hook output priority 0; policy accept;\n    oif \"lo\" accept\n    ip daddr 127.0.0.0/8 accept\n    ct state established,related accept\n",
        );
        r.push_str("    ip daddr { 10.213.0.0/16, 169.254.0.0/16, 10.0.2.2 } drop\n");
        if !v4.is_empty() {
            r.push_str(&format!("    ip daddr {{ {} }} drop\n", set(&v4)));
        }
        r.push_str("    ip6 daddr { fe80::/10 } drop\n");
        if !v6.is_empty() {
            r.push_str(&format!("    ip6 daddr {{ {} }} drop\n", set(&v6)));
        }
        if let Some(resolvers) = egress {
            // After the host's addresses, so an allowed name that resolves to one of them
            // still reaches nothing. TCP was redirected to the filter (below); the filter's
            // own connections carry its mark; DNS goes to the resolvers only; nothing else
            // leaves.
            let (r4, r6): (Vec<&String>, Vec<&String>) =
                resolvers.iter().partition(|a| !a.contains(':'));
            let mut dns = String::new();
            let mut dns_nat = String::new();
            for (fam, list) in [("ip", &r4), ("ip6", &r6)] {
                if !list.is_empty() {
                    let l = set(list);
                    dns.push_str(&format!(
                        "    {fam} daddr {{ {l} }} udp dport 53 accept\n    {fam} daddr {{ {l} }} tcp dport 53 accept\n"
                    ));
                    dns_nat.push_str(&format!("    {fam} daddr {{ {l} }} tcp dport 53 accept\n"));
                }
            }
            r.push_str(&format!(
                "    meta mark {mark:#x} accept\n{dns}    drop\n  }}\n  chain nat_out {{\n    type nat hook output priority -100; policy accept;\n    oif \"lo\" accept\n    meta mark {mark:#x} accept\n{dns_nat}    meta nfproto ipv4 meta l4proto tcp redirect to :{port}\n",
                mark = EGRESS_MARK,
                port = EGRESS_PROXY_PORT,
            ));
        }
        r.push_str("  }\n}\n");
        r
    }

    /// The host's own addresses (every interface, loopback included).
    fn host_addresses() -> Vec<String> {
        let out = std::process::Command::new("ip")
            .args(["-o", "addr", "show"])
            .output();
        let text = out
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        let mut v: Vec<String> = text
            .lines()
            .filter_map(|l| {
                let mut it = l.split_whitespace();
                it.find(|w| *w == "inet" || *w == "inet6")?;
                let a = it.next()?.split('/').next()?.to_string();
                Some(a)
            })
            .filter(|a| !a.starts_with("127.") && a != "::1")
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// Puts the packet rules into the machine's namespace, starts slirp4netns for its outbound
    /// traffic and forwards the agent's ports; then marks the network ready (the sandbox's
    /// init waits for the mark, so nothing inside sends a packet before the rules hold).
    /// `exit_rx`: the read end of the pipe whose write end only the supervisor holds.
    async fn network_up(
        &self,
        m: &Machine,
        mdir: &Path,
        exit_rx: Option<std::os::fd::OwnedFd>,
    ) -> Result<()> {
        let net = m.spec["network"].as_str().unwrap_or("host");
        if net == "host" {
            return Ok(());
        }
        let run = mdir.join("run");
        let boot_err = |reason: String| CoreError::Boot {
            name: m.name.clone(),
            reason,
        };
        // bubblewrap reports its child (the PID namespace's init) on --info-fd.
        let t0 = std::time::Instant::now();
        let child: i32 = loop {
            let info = std::fs::read_to_string(run.join("info.json")).unwrap_or_default();
            if let Some(pid) = serde_json::from_str::<Value>(&info)
                .ok()
                .and_then(|v| v["child-pid"].as_i64())
            {
                break pid as i32;
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(boot_err(format!(
                    "bubblewrap did not start: {}",
                    log_tail(&mdir.join("logs/sandbox.log"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        std::fs::write(run.join("child.pid"), child.to_string())
            .map_err(CoreError::io("write child.pid"))?;
        let restricted = m.spec["egress"]["restricted"] == true;
        let resolvers = resolvers();
        let rules = Self::nft_rules(
            &Self::host_addresses(),
            restricted.then_some(resolvers.as_slice()),
        );
        std::fs::write(run.join("rules.nft"), &rules).map_err(CoreError::io("write rules.nft"))?;
        let rules_path = run.join("rules.nft").to_string_lossy().to_string();
        // The user namespace that owns the network namespace, asked of the kernel
        // (NS_GET_USERNS): bubblewrap nests user namespaces (for `--dev`), and only the
        // owner's grants CAP_NET_ADMIN over the network. We, its creator, hold every
        // capability in it; nothing inside holds any.
        let owner = match m.spec["net_index"].as_u64() {
            Some(_) => None,
            None => Some(
                netns_owner(child)
                    .map_err(|e| boot_err(format!("the sandbox's network namespace: {e}")))?,
            ),
        };
        let me = std::process::id();
        let owner_path = owner.as_ref().map(|fd| {
            use std::os::fd::AsRawFd;
            format!("/proc/{me}/fd/{}", fd.as_raw_fd())
        });
        let netns_path = match m.spec["net_index"].as_u64() {
            Some(idx) => format!("/run/netns/{}", netns_name(idx)),
            None => format!("/proc/{child}/ns/net"),
        };
        let mut nft = tokio::process::Command::new("nsenter");
        if let Some(u) = &owner_path {
            nft.arg(format!("--user={u}")).arg("--preserve-credentials");
        }
        nft.arg(format!("--net={netns_path}"))
            .arg(sbin("nft"))
            .args(["-f", &rules_path]);
        let out = nft.output().await.map_err(CoreError::io("run nft"))?;
        if !out.status.success() {
            return Err(boot_err(format!(
                "packet rules: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        if restricted {
            self.egress_up(
                m,
                mdir,
                owner_path.as_deref(),
                &netns_path,
                exit_rx.as_ref(),
            )
            .await?;
        }
        let api = run.join("slirp.sock");
        let _ = std::fs::remove_file(&api);
        let slog =
            create_log(&mdir.join("logs/slirp.log")).map_err(CoreError::io("create slirp log"))?;
        let mut slirp = if owner_path.is_none() {
            // As root, also slirp4netns's own mount sandbox, inside a private copy of the
            // mount namespace: its sandbox's unmounts otherwise propagate through the shared
            // /run/netns and drop every named namespace on the host (seen here). For an
            // ordinary user it would bind its API socket after pivoting, out of our sight.
            let mut c = tokio::process::Command::new("unshare");
            c.args([
                "-m",
                "--propagation",
                "private",
                "slirp4netns",
                "--enable-sandbox",
            ]);
            c
        } else {
            tokio::process::Command::new("slirp4netns")
        };
        slirp.args([
            "--configure",
            "--mtu=65520",
            "--disable-host-loopback",
            "--enable-seccomp",
        ]);
        slirp.arg(format!("--exit-fd={FD_SLIRP_EXIT}"));
        slirp.arg(format!("--api-socket={}", api.display()));
        if let Some(u) = &owner_path {
            slirp.arg(format!("--userns-path={u}"));
        }
        slirp
            .args(["--netns-type=path", &netns_path, "tap0"])
            .env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(slog.try_clone().map_err(CoreError::io("log"))?)
            .stderr(slog)
            .process_group(0);
        if let Some(rx) = &exit_rx {
            pass_fd(&mut slirp, rx, FD_SLIRP_EXIT);
        }
        let mut sc = slirp.spawn().map_err(CoreError::io("start slirp4netns"))?;
        drop(exit_rx);
        // Reaped in the background: it exits when the supervisor does.
        tokio::spawn(async move {
            let _ = sc.wait().await;
        });
        // slirp4netns's API socket appears once it has configured tap0.
        let t0 = std::time::Instant::now();
        while !api.exists() {
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(boot_err(format!(
                    "slirp4netns did not start: {}",
                    log_tail(&mdir.join("logs/slirp.log"))
                )));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        if net == "slirp" {
            let hp = m.spec["host_port"].as_u64().unwrap_or(0);
            let up = m.spec["udp_port"].as_u64().unwrap_or(0);
            for (proto, host, guest) in [("tcp", hp, AGENT_PORT_NETNS as u64), ("udp", up, up)] {
                slirp_hostfwd(&api, proto, host, guest)
                    .await
                    .map_err(|e| boot_err(format!("slirp4netns {proto} forward: {e}")))?;
            }
        }
        std::fs::write(mdir.join("net/ready"), b"").map_err(CoreError::io("mark network ready"))?;
        Ok(())
    }

    /// Starts the egress filter (`porthole-agent egress-proxy`) in the machine's network
    /// namespace and nothing else of it: the coding agent can neither see nor signal it. It
    /// ends with the supervisor (the exit pipe slirp4netns watches too).
    async fn egress_up(
        &self,
        m: &Machine,
        mdir: &Path,
        owner_path: Option<&str>,
        netns_path: &str,
        exit_rx: Option<&std::os::fd::OwnedFd>,
    ) -> Result<()> {
        let boot_err = |reason: String| CoreError::Boot {
            name: m.name.clone(),
            reason,
        };
        let agent = agent_bin()?;
        let log = mdir.join("net/egress.jsonl");
        let mut c = tokio::process::Command::new("nsenter");
        if let Some(u) = owner_path {
            c.arg(format!("--user={u}")).arg("--preserve-credentials");
        }
        c.arg(format!("--net={netns_path}"))
            .arg(&agent)
            .arg("egress-proxy")
            .arg("--listen")
            .arg(format!("127.0.0.1:{EGRESS_PROXY_PORT}"))
            .arg("--log")
            .arg(&log);
        if let Some(mode) = m.spec["egress"]["mode"].as_str() {
            c.arg("--mode").arg(mode);
        }
        for a in m.spec["egress"]["allow"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
        {
            c.arg(format!("--allow={a}"));
        }
        let plog = create_log(&mdir.join("logs/egress.log"))
            .map_err(CoreError::io("create egress log"))?;
        c.env_clear()
            .stdin(std::process::Stdio::null())
            .stdout(plog.try_clone().map_err(CoreError::io("log"))?)
            .stderr(plog)
            .process_group(0);
        if let Some(rx) = exit_rx {
            c.arg(format!("--exit-fd={FD_SLIRP_EXIT}"));
            pass_fd(&mut c, rx, FD_SLIRP_EXIT);
        }
        let mut child = c
            .spawn()
            .map_err(CoreError::io("start the egress filter"))?;
        // It creates its log once it listens: nothing inside sends a packet before that.
        let t0 = std::time::Instant::now();
        while !log.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(boot_err(format!(
                    "the egress filter exited ({st}): {}",
                    log_tail(&mdir.join("logs/egress.log"))
                )));
            }
            if t0.elapsed() > Duration::from_secs(10) {
                return Err(boot_err("the egress filter did not start in 10 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        tokio::spawn(async move {
            let _ = child.wait().await;
        });
        Ok(())
    }

    /// Writes the machine's per-boot files: token copies for the sandbox's /run, the X cookie,
    /// the seccomp programs; owned by the sandbox's host uid where that differs from ours.
    fn prepare_run_dir(&self, m: &mut Machine, mdir: &Path, ms: &Machines) -> Result<()> {
        let run = mdir.join("run");
        let _ = std::fs::remove_dir_all(&run);
        let _ = std::fs::remove_dir_all(mdir.join("net"));
        crate::machine::create_private_dir(&run)?;
        // Readable inside (the init waits for `ready` in it); it holds nothing else.
        std::fs::create_dir_all(mdir.join("net")).map_err(CoreError::io("create net dir"))?;
        crate::machine::write_private(&run.join("token"), ms.token(m)?.as_bytes())?;
        crate::machine::write_private(&run.join("agent-token"), ms.agent_token(m)?.as_bytes())?;
        crate::machine::write_private(&run.join("xauth"), &xauth_file(&random_cookie()))?;
        #[cfg(all(target_os = "linux", target_arch = "x86_64"))]
        {
            use super::seccomp;
            match (
                seccomp::deny_filter(),
                seccomp::clone3_filter(),
                seccomp::supervisor_filter(),
            ) {
                (Ok(d), Ok(c), Ok(sup)) => {
                    std::fs::write(run.join("seccomp-deny.bpf"), seccomp::to_bytes(&d))
                        .map_err(CoreError::io("write seccomp filter"))?;
                    std::fs::write(run.join("seccomp-supervisor.bpf"), seccomp::to_bytes(&sup))
                        .map_err(CoreError::io("write seccomp filter"))?;
                    std::fs::write(run.join("seccomp-clone3.bpf"), seccomp::to_bytes(&c))
                        .map_err(CoreError::io("write seccomp filter"))?;
                    m.spec["seccomp"] =
                        json!({"applied": true, "denied": seccomp::DENIED.len() + 3});
                }
                (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
                    m.spec["seccomp"] = json!({"applied": false, "reason": e});
                }
            }
        }
        #[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
        {
            m.spec["seccomp"] = json!({"applied": false, "reason": "seccomp filters are built for x86_64 Linux only"});
        }
        let ws = m.spec["workspace"].as_str().map(str::to_string);
        if let (Some(uid), Some(ws)) = (m.spec["sandbox_uid"].as_u64(), ws.as_deref()) {
            // As root the machine works as a uid of its own: it gets the workspace for its
            // lifetime, and destroy gives it back to whoever owned it.
            use std::os::unix::fs::MetadataExt;
            let meta = std::fs::metadata(ws).map_err(CoreError::io(format!("workspace {ws}")))?;
            if meta.uid() != uid as u32 {
                m.spec["workspace_owner"] = json!([meta.uid(), meta.gid()]);
                chown_tree(Path::new(ws), Some((uid as u32, uid as u32)))?;
            }
        }
        if let Some(uid) = m.spec["sandbox_uid"].as_u64() {
            // The sandbox's uid reads its token copies and cookie and writes its own dirs;
            // the host's key files stay root's.
            for rel in ["home", "agent", "logs"] {
                chown(&mdir.join(rel), uid as u32)?;
            }
        }
        Ok(())
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
        crate::machine::create_private_dir(&mdir)?;
        for d in ["home", "agent", "logs"] {
            std::fs::create_dir_all(mdir.join(d))
                .map_err(CoreError::io(format!("create {}", mdir.join(d).display())))?;
        }
        self.prepare_run_dir(m, &mdir, ms)?;
        if m.spec["sandbox_uid"].is_u64() {
            // The mount point of the supervisor's private view (empty on the host).
            std::fs::create_dir_all(SANDBOX_SRC)
                .map_err(CoreError::io(format!("create {SANDBOX_SRC}")))?;
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
        // Fixed when the machine is made: the file lives in the workspace, which the coding
        // agent can edit, so a restart must not read a looser policy from it.
        if !m.spec["egress"].is_object() {
            m.spec["egress"] = Self::egress_spec(m)?;
        }
        std::fs::write(mdir.join("init.sh"), Self::init_script(&m.spec))
            .map_err(CoreError::io("write init.sh"))?;
        let fds: &[u32] = if m.spec["seccomp"]["applied"] == true {
            &[FD_SECCOMP_DENY, FD_SECCOMP_CLONE3]
        } else {
            &[]
        };
        let args = Self::bwrap_args(m, &m.spec, &mdir, &agent, fds);
        let script = Self::supervisor_script(m, &m.spec, &mdir, &agent, &args);
        std::fs::write(mdir.join("run/supervise.sh"), script)
            .map_err(CoreError::io("write supervise.sh"))?;
        let log = create_log(&mdir.join("logs/sandbox.log"))
            .map_err(CoreError::io("create sandbox log"))?;
        let mut cmd = tokio::process::Command::new("/bin/bash");
        cmd.arg(mdir.join("run/supervise.sh"))
            // Nothing of the caller's environment reaches the sandbox, not even bubblewrap's
            // own /proc/1/environ.
            .env_clear()
            .env(
                "PATH",
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            )
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(CoreError::io("log"))?)
            .stderr(log)
            .process_group(0);
        let exit_rx = if m.spec["network"] != "host" {
            let (rx, tx) = pipe().map_err(CoreError::io("make slirp4netns's exit pipe"))?;
            pass_fd(&mut cmd, &tx, FD_SLIRP_EXIT);
            Some((rx, tx))
        } else {
            None
        };
        let limits = super::limits::Limits::from_env()?;
        let mut child = cmd
            .spawn()
            .map_err(CoreError::io("start the sandbox's supervisor"))?;
        // Only the supervisor keeps the write end.
        let exit_rx = exit_rx.map(|(rx, _tx)| rx);
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
        // Reap the supervisor when it exits, so a dead sandbox is seen as dead (not a zombie).
        tokio::spawn(async move {
            let st = child.wait().await;
            *ex.lock().unwrap() = Some(format!(
                "sandbox exited ({})",
                st.map(|s| s.to_string()).unwrap_or_default()
            ));
        });
        if let Err(e) = self.network_up(m, &mdir, exit_rx).await {
            self.kill(m).await;
            return Err(e);
        }
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
            // SAFETY: signalling the supervisor's process group, which we created; its trap
            // kills bubblewrap, and --die-with-parent takes the PID namespace down with it.
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
        // --new-session took the sandbox out of the supervisor's group: end whatever is left
        // in the PID namespace through its PID 1 (bubblewrap's child), by the pid it reported.
        let child = self.state.machine(&m.name).join("run/child.pid");
        if let Some(c) = std::fs::read_to_string(&child)
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            if pid_alive(c as i64) {
                // SAFETY: SIGKILL to the PID namespace's init ends every process in it.
                unsafe { libc::kill(c, libc::SIGKILL) };
            }
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
        // A machine booted from an image keeps its root filesystem's state too (what its
        // install step wrote there); one from the snapshot skips the build.
        let rootfs = self.state.machine(&m.name).join("rootfs");
        if m.spec["image"].is_object() && rootfs.is_dir() {
            if let Err(e) = copy_rootfs(&rootfs, &dir.join("rootfs"), None).await {
                let _ = std::fs::remove_dir_all(dir);
                return Err(e);
            }
        }
        Ok(
            json!({"workspace": m.spec["workspace"], "env": m.spec["env"], "display_size": m.spec["display_size"], "image": m.spec["image"]}),
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
            // `loopback` is the old name of the host's network; both say they are not isolated.
            Some("host") | Some("loopback") => "host",
            Some("netns") => {
                if !is_root() || which("ip").is_none() {
                    return Err(CoreError::Missing("--network netns needs root and iproute2; without them every machine gets its own namespace through slirp4netns (the default)".into()));
                }
                "netns"
            }
            Some("slirp") => "slirp",
            Some(other) => {
                return Err(CoreError::Invalid(format!(
                    "--network {other}: expected netns (root), slirp (any user), or host (not isolated: the machine shares the host's network)"
                )))
            }
            None if is_root() && which("ip").is_some() => "netns",
            None => "slirp",
        };
        if network != "host" {
            for (bin, pkg) in [("slirp4netns", "slirp4netns"), ("nft", "nftables")] {
                if which(bin).is_none() && !Path::new(&sbin(bin)).exists() {
                    return Err(CoreError::Missing(format!("{bin} is not installed: every machine gets a private network, which needs it: sudo apt-get install {pkg} (or run packaging/install-deps.sh), or pass --network host for a machine that is not isolated")));
                }
            }
        }
        // The environment's image (Cursor's `build` or `image`), built or found before the
        // create lock: a build can take minutes, and other creates need not wait for it. A
        // machine from a snapshot carries its image's root in the snapshot.
        let env_file = spec.env_path.clone().or_else(|| {
            workspace
                .as_deref()
                .and_then(crate::environments::find_in_repo)
        });
        let image = match (&env_file, &spec.from_snapshot) {
            (Some(f), None) => {
                let env = crate::environments::load(f)?;
                match crate::image::source(&env, f)? {
                    Some(src) => {
                        let name = m.name.clone();
                        let report = |l: &str| ms.report(&name, "create", l);
                        Some(crate::image::prepare(&self.state, &src, &report).await?)
                    }
                    None => None,
                }
            }
            _ => None,
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
        if is_root() {
            s["sandbox_uid"] = json!(sandbox_uid_for(display));
        }
        s["isolated"] = json!(network != "host");
        if let Some(c) = env_file
            .as_deref()
            .and_then(|f| crate::environments::load(f).ok())
            .and_then(|e| e.chrome_executable_path)
        {
            s["chrome"] = json!(c);
        }
        let url = match network {
            "netns" => {
                let idx = Self::pick_net_index(ms).await?;
                s["net_index"] = json!(idx);
                s["listen"] = json!(format!("10.213.{idx}.2:{AGENT_PORT_NETNS}"));
                format!("http://10.213.{idx}.2:{AGENT_PORT_NETNS}")
            }
            "slirp" => {
                // The agent listens on slirp's guest address; the host reaches it through
                // slirp4netns's forwards on 127.0.0.1.
                let port = free_port("127.0.0.1")?;
                s["host_port"] = json!(port);
                s["udp_port"] = json!(free_udp_port()?);
                s["listen"] = json!(format!("10.0.2.100:{AGENT_PORT_NETNS}"));
                format!("http://127.0.0.1:{port}")
            }
            _ => {
                let port = free_port("127.0.0.1")?;
                s["listen"] = json!(format!("127.0.0.1:{port}"));
                format!("http://127.0.0.1:{port}")
            }
        };
        m.spec = s;
        m.agent_url = Some(url);
        crate::machine::create_private_dir(&ms.state.keys())?;
        crate::machine::write_private(&m.token_path, random_token().as_bytes())?;
        crate::machine::write_private(&m.agent_token_path(), random_token().as_bytes())?;
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
            if path.join("rootfs").is_dir() {
                ms.report(
                    &m.name,
                    "create",
                    "restoring the image's root filesystem from the snapshot",
                );
                copy_rootfs(
                    &path.join("rootfs"),
                    &mdir.join("rootfs"),
                    m.spec["sandbox_uid"].as_u64(),
                )
                .await?;
                let (_, _, meta) = ms.snapshot_info(snap).await?;
                m.spec["image"] = meta["image"].clone();
            }
            m.spec["snapshot"] = json!(snap);
        }
        // Saved before booting, so a concurrent create sees this display and network as taken.
        ms.save(m).await?;
        drop(_lock);
        if let Some(img) = &image {
            ms.report(
                &m.name,
                "create",
                "copying the image's root filesystem for the machine",
            );
            std::fs::create_dir_all(&mdir).map_err(CoreError::io("create machine dir"))?;
            copy_rootfs(
                &img.rootfs,
                &mdir.join("rootfs"),
                m.spec["sandbox_uid"].as_u64(),
            )
            .await?;
            m.spec["image"] = img.summary();
            ms.save(m).await?;
        }
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
        if let (Some(ws), Some([u, g])) = (
            m.spec["workspace"].as_str(),
            m.spec["workspace_owner"].as_array().map(|a| {
                [
                    a.first().and_then(Value::as_u64).unwrap_or(0),
                    a.get(1).and_then(Value::as_u64).unwrap_or(0),
                ]
            }),
        ) {
            let _ = chown_tree(Path::new(ws), Some((u as u32, g as u32)));
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn machine(spec: Value) -> Machine {
        Machine {
            name: "m1".into(),
            provider: crate::machine::ProviderKind::Local,
            status: "creating".into(),
            agent_url: None,
            token_path: PathBuf::from("/state/keys/m1.token"),
            pid: None,
            spec,
            error: None,
            created_at: 0,
            isolated: None,
        }
    }

    fn args(spec: Value) -> Vec<String> {
        let m = machine(spec);
        LocalSandbox::bwrap_args(
            &m,
            &m.spec,
            Path::new("/st/m1"),
            Path::new("/bin/agent"),
            &[FD_SECCOMP_DENY, FD_SECCOMP_CLONE3],
        )
    }

    fn has(a: &[String], w: &[&str]) -> bool {
        a.windows(w.len())
            .any(|x| x.iter().zip(w).all(|(l, r)| l == r))
    }

    #[test]
    fn init_puts_what_the_coding_agent_runs_in_the_workload_sandbox() {
        let s = LocalSandbox::init_script(&json!({"seccomp": {"applied": true}, "browser": true}));
        assert!(
            s.contains("--workload-sandbox --workload-seccomp /run/porthole/seccomp-workload.bpf"),
            "{s}"
        );
        // The browser is started by the agent, in the workload, not beside it by the init.
        assert!(s.contains(" --start 'exec chromium "), "{s}");
        assert_eq!(s.matches("chromium --no-sandbox").count(), 1, "{s}");
        let s = LocalSandbox::init_script(&json!({"seccomp": {"applied": false}}));
        assert!(
            s.contains("--workload-sandbox") && !s.contains("--workload-seccomp"),
            "{s}"
        );
        assert!(!s.contains("chromium"), "{s}");
    }

    /// Each row: a spec, then argument sequences that must (true) or must not (false) appear.
    #[test]
    fn bwrap_argument_table() {
        let rows: Vec<(Value, Vec<(&[&str], bool)>)> = vec![
            (
                json!({"network": "netns", "workspace": "/w"}),
                vec![
                    (&["--unshare-user"], true),
                    (&["--cap-drop", "ALL"], true),
                    (&["--new-session"], true),
                    (&["--die-with-parent"], true),
                    // The agent builds the workload's namespaces in here; the workload's own
                    // filter refuses new user namespaces.
                    (&["--disable-userns"], false),
                    (&["--clearenv"], true),
                    (&["--add-seccomp-fd", "10"], true),
                    (&["--add-seccomp-fd", "11"], true),
                    // A bind over /proc/sys here breaks the workload sandbox's /proc.
                    (&["--ro-bind", "/proc/sys", "/proc/sys"], false),
                    (&["--ro-bind", "/usr", "/usr"], true),
                    (&["--bind", "/w", "/workspace"], true),
                    (&["--bind", "/st/m1/home", "/home/porthole"], true),
                    // The named namespace is the network; bubblewrap makes none of its own.
                    (&["--unshare-net"], false),
                ],
            ),
            (
                json!({"network": "slirp"}),
                vec![
                    (&["--unshare-net"], true),
                    (&["--chdir", "/home/porthole"], true),
                ],
            ),
            (
                // As root, sources come from the supervisor's private view.
                json!({"network": "netns", "sandbox_uid": 2100000100u64, "workspace": "/w"}),
                vec![
                    (
                        &["--bind", "/run/porthole-sandbox/workspace", "/workspace"],
                        true,
                    ),
                    (
                        &["--bind", "/run/porthole-sandbox/home", "/home/porthole"],
                        true,
                    ),
                    (&["--bind", "/w", "/workspace"], false),
                ],
            ),
            (
                json!({"network": "host"}),
                vec![(&["--unshare-net"], false), (&["--unshare-user"], true)],
            ),
            (
                json!({"network": "slirp", "extra_binds": ["/r/.git"]}),
                vec![
                    (&["--ro-bind", "/r/.git", "/r/.git"], true),
                    (&["--bind", "/r/.git", "/r/.git"], false),
                ],
            ),
        ];
        for (spec, want) in rows {
            let a = args(spec.clone());
            for (seq, present) in want {
                assert_eq!(
                    has(&a, seq),
                    present,
                    "{spec}: {seq:?} present={present}\n{a:?}"
                );
            }
            // Only allowlisted variables are set, and none of ours leaks through.
            let set: Vec<&String> = a
                .windows(2)
                .filter(|w| w[0] == "--setenv")
                .map(|w| &w[1])
                .collect();
            for k in &set {
                assert!(
                    ["PATH", "HOME", "USER", "LANG", "XAUTHORITY", "RUST_LOG"]
                        .contains(&k.as_str()),
                    "{k} is not on the allowlist"
                );
            }
            assert_eq!(a.last().map(String::as_str), Some("/run/porthole/init.sh"));
        }
    }

    #[test]
    fn supervisor_quotes_and_switches_uid_as_root() {
        let m = machine(
            json!({"network": "netns", "net_index": 3, "sandbox_uid": 2100000100u64, "seccomp": {"applied": true}, "workspace": "/it's here"}),
        );
        let a = LocalSandbox::bwrap_args(
            &m,
            &m.spec,
            Path::new("/st/m1"),
            Path::new("/bin/agent"),
            &[10, 11],
        );
        let s = LocalSandbox::supervisor_script(
            &m,
            &m.spec,
            Path::new("/st/m1"),
            Path::new("/bin/agent"),
            &a,
        );
        assert!(
            s.contains("ip netns exec porthole-3 unshare -m --propagation private"),
            "{s}"
        );
        assert!(
            s.contains("setpriv --reuid=2100000100 --regid=2100000100 --clear-groups"),
            "{s}"
        );
        assert!(s.contains("/it'"), "{s}");
        assert!(s.contains("10<'/st/m1/run/seccomp-supervisor.bpf'"), "{s}");
        assert!(s.contains("15<'/st/m1/run/seccomp-deny.bpf'"), "{s}");
        // bubblewrap (and so the sandbox) never holds slirp4netns's exit pipe.
        assert!(s.contains(" 30>&- &"), "{s}");
        let u = machine(json!({"network": "host"}));
        let s = LocalSandbox::supervisor_script(
            &u,
            &u.spec,
            Path::new("/st/m1"),
            Path::new("/bin/agent"),
            &[],
        );
        assert!(!s.contains("setpriv") && !s.contains("seccomp"), "{s}");
    }

    #[test]
    fn packet_rules_refuse_host_addresses() {
        let r = LocalSandbox::nft_rules(&["192.168.1.5".into(), "2001:db8::1".into()], None);
        assert!(r.contains("ct state established,related accept"));
        assert!(r.contains("ip daddr { 10.213.0.0/16, 169.254.0.0/16, 10.0.2.2 } drop"));
        assert!(r.contains("ip daddr { 192.168.1.5 } drop"));
        assert!(r.contains("ip6 daddr { 2001:db8::1 } drop"));
        // Established first: replies to the host's connections (the agent's) still pass.
        assert!(r.find("established").unwrap() < r.find("drop").unwrap());
        assert!(!r.contains("redirect") && !r.contains("dport 53"), "{r}");
        // Restricted: DNS to the resolvers only (port 53 to anywhere is a tunnel), after the
        // host's addresses; every other TCP to the filter; the rest dropped.
        let r = LocalSandbox::nft_rules(&["192.168.1.5".into()], Some(&["10.255.255.53".into()]));
        assert!(
            r.contains("ip daddr { 10.255.255.53 } udp dport 53 accept"),
            "{r}"
        );
        assert!(
            r.contains("ip daddr { 10.255.255.53 } tcp dport 53 accept"),
            "{r}"
        );
        assert!(
            !r.lines()
                .any(|l| l.trim().starts_with("udp dport 53")
                    || l.trim().starts_with("tcp dport 53")),
            "{r}"
        );
        assert!(
            r.find("ip daddr { 192.168.1.5 } drop").unwrap() < r.find("meta mark").unwrap(),
            "{r}"
        );
        assert!(
            r.contains("meta nfproto ipv4 meta l4proto tcp redirect to :15001"),
            "{r}"
        );
        assert!(r.contains("    drop\n  }\n  chain nat_out"), "{r}");
    }

    #[test]
    fn logs_the_sandbox_planted_are_neither_followed_nor_read() {
        let d = tempfile::tempdir().unwrap();
        let victim = d.path().join("victim");
        std::fs::write(&victim, "precious\nERROR secret line\n").unwrap();
        let log = d.path().join("sandbox.log");
        std::os::unix::fs::symlink(&victim, &log).unwrap();
        // Reading through the link gives nothing of the target.
        assert_eq!(log_tail(&log), "");
        // Creating the log replaces the link; the target is untouched.
        let mut f = create_log(&log).unwrap();
        std::io::Write::write_all(&mut f, b"fresh\n").unwrap();
        assert_eq!(
            std::fs::read_to_string(&victim).unwrap(),
            "precious\nERROR secret line\n"
        );
        assert!(!std::fs::symlink_metadata(&log)
            .unwrap()
            .file_type()
            .is_symlink());
        // A link to an endless device is not read.
        let z = d.path().join("zero.log");
        std::os::unix::fs::symlink("/dev/zero", &z).unwrap();
        assert_eq!(log_tail(&z), "");
        // A long log is read from its end only.
        let big = d.path().join("big.log");
        std::fs::write(
            &big,
            format!("first line\n{}last line\n", "filler\n".repeat(30_000)),
        )
        .unwrap();
        let t = log_tail(&big);
        assert!(
            t.ends_with("filler | last line") && !t.contains("first"),
            "{t}"
        );
    }

    #[test]
    fn xauth_file_layout() {
        let f = xauth_file(&[7u8; 16]);
        assert_eq!(&f[..2], &[0xff, 0xff]);
        assert_eq!(&f[2..6], &[0, 0, 0, 0]);
        assert_eq!(&f[6..8], &[0, 18]);
        assert_eq!(&f[8..26], b"MIT-MAGIC-COOKIE-1");
        assert_eq!(&f[26..28], &[0, 16]);
        assert_eq!(&f[28..], &[7u8; 16]);
    }
}
