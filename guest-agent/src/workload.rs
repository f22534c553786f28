//! The workload sandbox: where everything the coding agent runs lives (`exec`, the
//! environment's steps and terminals, its browser, git over its repository), apart from
//! porthole-agent, the X server and the recorder.
//!
//! Why: they used to share one uid and one PID namespace, so the coding agent could SIGSTOP the
//! recorder, rewrite `events.jsonl`, the video or `meta.json` before sync, or kill
//! porthole-agent and listen on its port to catch the operator token from the next request.
//!
//! How (`--workload-sandbox`): porthole-agent starts one *holder*, bubblewrap with a user and a
//! PID namespace of its own whose pid 1 is `porthole-agent reap` (the init of that namespace:
//! nothing inside can signal it, and when it dies everything inside dies), in a mount namespace
//! where the data directory is an empty tmpfs except `terminals/` (the FIFOs and tmux's socket).
//! Every workload process is started through `porthole-agent workload-exec`, a trampoline that
//! joins the holder's user, mount and PID namespaces, drops every capability, sets
//! no_new_privs and installs the workload's seccomp filter before it execs. From inside,
//! porthole-agent has no PID, its data directory is not there, and ptrace is refused.
//!
//! Not a second uid: an ordinary user can map only its own uid into a user namespace (two need
//! newuidmap and an /etc/subuid range), while nested namespaces work the same as root and as an
//! ordinary user. One holder, joined, rather than a sandbox per command: an agent's `exec` must
//! see and stop the dev server its terminal started (`pkill`, `lsof -t -i:3000`).

use std::ffi::{CString, OsStr, OsString};
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};

/// Where the trampoline finds the holder's namespaces (user, mount, PID), in that order.
const JOIN_FDS: [RawFd; 3] = [3, 4, 5];

pub struct Workload {
    sandbox: Option<Sandbox>,
}

struct Sandbox {
    exe: PathBuf,
    seccomp: Option<PathBuf>,
    /// Kept at descriptors >= 10 so the pre-exec `dup2` onto 3..5 never clobbers one of them.
    ns: [OwnedFd; 3],
    _holder: std::sync::Mutex<std::process::Child>,
}

impl Workload {
    /// Workload processes are plain children (the agent outside a sandbox: tests, a QEMU
    /// guest whose kernel is the boundary).
    pub fn direct() -> Self {
        Workload { sandbox: None }
    }

    pub fn sandboxed(&self) -> bool {
        self.sandbox.is_some()
    }

    /// Starts the holder. `seccomp`: the workload's filter (bubblewrap's format: the kernel's
    /// `struct sock_filter` array), applied to the holder and to every process joined to it.
    pub fn start(data_dir: &Path, seccomp: Option<&Path>) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let terminals = data_dir.join("terminals");
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&terminals)
            .map_err(|e| format!("{}: {e}", terminals.display()))?;
        let (info_r, info_w) = pipe()?;
        let filter = seccomp
            .map(|p| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()?;
        let mut args: Vec<OsString> = Vec::new();
        for a in holder_args(data_dir, filter.is_some()) {
            args.push(a);
        }
        args.push(exe.clone().into());
        args.push("reap".into());
        let mut cmd = std::process::Command::new("bwrap");
        // pid 1 inside is readable by everything there: it gets no environment at all.
        cmd.args(&args)
            .stdin(std::process::Stdio::null())
            .env_clear()
            .process_group(0);
        let (w, f) = (info_w.as_raw_fd(), filter.as_ref().map(|f| f.as_raw_fd()));
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                if libc::dup2(w, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some(f) = f {
                    if libc::dup2(f, 4) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .map_err(|e| format!("bwrap: {e} (is bubblewrap installed?)"))?;
        drop(info_w);
        drop(filter);
        // bubblewrap writes `{"child-pid": N, ...}` once the namespaces exist; the holder keeps
        // a copy of the write end, so read up to the closing brace rather than to EOF.
        let mut info = Vec::new();
        let mut r = std::fs::File::from(info_r);
        let mut buf = [0u8; 256];
        while !info.contains(&b'}') {
            match r.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => info.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(format!("bwrap --info-fd: {e}")),
            }
        }
        let v: serde_json::Value = serde_json::from_slice(&info).map_err(|_| {
            format!(
                "the workload sandbox did not start (bwrap said {:?})",
                String::from_utf8_lossy(&info)
            )
        })?;
        let pid = v["child-pid"]
            .as_u64()
            .ok_or("bwrap --info-fd gave no child-pid")?;
        // The child is reported before it has built its mounts: wait until it runs the reaper,
        // which bubblewrap execs last.
        let want: Vec<u8> = [exe.as_os_str().as_bytes(), b"\0reap\0"].concat();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .as_deref()
            != Some(&want[..])
        {
            if std::time::Instant::now() > deadline {
                return Err("the workload sandbox did not start its pid 1 in 10 s".into());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let open = |kind: &str| -> Result<OwnedFd, String> {
            let p = format!("/proc/{pid}/ns/{kind}");
            let f = std::fs::File::open(&p).map_err(|e| format!("{p}: {e}"))?;
            // SAFETY: F_DUPFD_CLOEXEC returns a new descriptor we own.
            let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
            if fd < 0 {
                return Err(format!("{p}: {}", std::io::Error::last_os_error()));
            }
            // The holder must really be elsewhere: joining our own namespaces would run the
            // workload beside porthole-agent and say nothing.
            let ours =
                std::fs::metadata(format!("/proc/self/ns/{kind}")).map_err(|e| e.to_string())?;
            let theirs = std::fs::metadata(&p).map_err(|e| e.to_string())?;
            if std::os::unix::fs::MetadataExt::ino(&ours)
                == std::os::unix::fs::MetadataExt::ino(&theirs)
            {
                return Err(format!(
                    "the workload's {kind} namespace is porthole-agent's"
                ));
            }
            // SAFETY: fd is a fresh descriptor from fcntl.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        };
        let ns = [open("user")?, open("mnt")?, open("pid")?];
        let w = Workload {
            sandbox: Some(Sandbox {
                exe,
                seccomp: seccomp.map(Path::to_path_buf),
                ns,
                _holder: std::sync::Mutex::new(child),
            }),
        };
        // bubblewrap reports the child before it has built the mounts: prove the sandbox
        // runs a program before anything relies on it.
        let out = w
            .command_std("true")
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("workload probe: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "the workload sandbox does not run programs ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(w)
    }

    /// A command that runs `program` as workload: in the sandbox when there is one. Callers
    /// add arguments, environment, directory and stdio as to any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command_std(program))
    }

    pub fn command_std(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        let Some(sb) = &self.sandbox else {
            return std::process::Command::new(program);
        };
        let mut c = std::process::Command::new(&sb.exe);
        c.arg("workload-exec");
        if let Some(s) = &sb.seccomp {
            c.arg("--seccomp").arg(s);
        }
        c.arg("--").arg(program);
        let fds = [
            sb.ns[0].as_raw_fd(),
            sb.ns[1].as_raw_fd(),
            sb.ns[2].as_raw_fd(),
        ];
        // SAFETY: dup2 only; the descriptors live as long as the App that owns this Workload.
        unsafe {
            c.pre_exec(move || {
                for (from, to) in fds.iter().zip(JOIN_FDS) {
                    if libc::dup2(*from, to) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        c
    }
}

/// bubblewrap's arguments for the holder, before the program. Paths are porthole-agent's own
/// view: the workload sees the same tree, minus the data directory.
pub fn holder_args(data_dir: &Path, seccomp: bool) -> Vec<OsString> {
    let uid = unsafe { libc::getuid() }.to_string();
    let gid = unsafe { libc::getgid() }.to_string();
    let data = data_dir.as_os_str().to_owned();
    let terminals = data_dir.join("terminals").into_os_string();
    let mut a: Vec<OsString> = [
        "--unshare-user",
        "--unshare-pid",
        "--as-pid-1",
        "--uid",
        &uid,
        "--gid",
        &gid,
        "--cap-drop",
        "ALL",
        "--die-with-parent",
        // The same tree (the X socket directory, /tmp, the workspace, the home), and the
        // same IPC namespace (X's MIT-SHM), but its own /proc: a PID namespace's.
        "--bind",
        "/",
        "/",
        // The machine's /dev as it is: `--dev` would mount a devpts, for which bubblewrap
        // nests a second user namespace, and the one we join would map the workload to uid 0.
        "--dev-bind",
        "/dev",
        "/dev",
        "--proc",
        "/proc",
        "--ro-bind",
        "/proc/sys",
        "/proc/sys",
        "--info-fd",
        "3",
    ]
    .iter()
    .map(OsString::from)
    .collect();
    if seccomp {
        a.extend(["--add-seccomp-fd", "4"].map(OsString::from));
    }
    a.push("--tmpfs".into());
    a.push(data);
    a.push("--bind".into());
    a.push(terminals.clone());
    a.push(terminals);
    a.push("--".into());
    a
}

fn pipe() -> Result<(OwnedFd, OwnedFd), String> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(format!("pipe: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn die(what: &str) -> ! {
    eprintln!(
        "porthole-agent workload-exec: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(126)
}

/// `porthole-agent workload-exec [--seccomp F] -- PROGRAM ARGS...`, with the holder's
/// namespaces at descriptors 3, 4 and 5. Runs before any thread exists (setns into a user
/// namespace refuses multithreaded callers).
pub fn exec_main(seccomp: Option<PathBuf>, argv: Vec<OsString>) -> ! {
    // A process group of our own, first: `kill(0, sig)` reaches the caller's whole group
    // whatever the PID namespace, and porthole-agent's group holds the X server and the
    // holder (a hostile `core.fsmonitor` under a git started without a group of its own
    // could SIGSTOP the recorder).
    unsafe { libc::setpgid(0, 0) };
    if argv.is_empty() {
        eprintln!("porthole-agent workload-exec: no program");
        std::process::exit(2);
    }
    // Read before joining: the mount namespace inside hides where it lives.
    let filter = match seccomp.map(std::fs::read).transpose() {
        Ok(f) => f,
        Err(e) => {
            eprintln!("porthole-agent workload-exec: seccomp filter: {e}");
            std::process::exit(126)
        }
    };
    if filter
        .as_ref()
        .is_some_and(|f| f.is_empty() || f.len() % 8 != 0)
    {
        eprintln!("porthole-agent workload-exec: the seccomp filter is not a BPF program");
        std::process::exit(126);
    }
    let cwd = std::env::current_dir().ok();
    for (fd, flag) in
        JOIN_FDS
            .iter()
            .zip([libc::CLONE_NEWUSER, libc::CLONE_NEWNS, libc::CLONE_NEWPID])
    {
        // SAFETY: plain syscalls on descriptors handed to us.
        if unsafe { libc::setns(*fd, flag) } != 0 {
            die("joining the workload sandbox");
        }
        unsafe { libc::close(*fd) };
    }
    // Joining a mount namespace moves the root and the directory to its root.
    if let Some(d) = cwd {
        let c = CString::new(d.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::chdir(c.as_ptr()) } != 0 {
            die(&format!("chdir {}", d.display()));
        }
    }
    // SAFETY: single-threaded, so fork is safe; the child only makes syscalls, then execs.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        if std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOMEM) {
            eprintln!("porthole-agent workload-exec: the workload sandbox has ended (its pid 1 exited); restart the machine");
            std::process::exit(126);
        }
        die("fork");
    }
    if pid == 0 {
        unsafe {
            // Dies with the trampoline, which is what porthole-agent waits on and kills.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            // The trampoline is outside this PID namespace, so it reads as pid 0; had it died
            // already, the holder's pid 1 would have adopted us.
            if libc::getppid() != 0 {
                libc::_exit(137);
            }
        }
        drop_privileges(filter.as_deref());
        let err = std::process::Command::new(&argv[0]).args(&argv[1..]).exec();
        eprintln!("{}: {err}", argv[0].to_string_lossy());
        std::process::exit(if err.kind() == std::io::ErrorKind::NotFound {
            127
        } else {
            126
        });
    }
    // The child shares our process group: a signal porthole-agent sends the group reaches it
    // directly, and its exit is ours.
    unsafe {
        for s in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP, libc::SIGQUIT] {
            libc::signal(s, libc::SIG_IGN);
        }
    }
    let mut status = 0;
    loop {
        // SAFETY: waiting on our own child.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            die("waitpid");
        }
    }
    if libc::WIFEXITED(status) {
        std::process::exit(libc::WEXITSTATUS(status));
    }
    let sig = libc::WTERMSIG(status);
    unsafe {
        libc::signal(sig, libc::SIG_DFL);
        libc::raise(sig);
    }
    std::process::exit(128 + sig)
}

/// No capabilities (bounding, ambient, permitted), no_new_privs, then the filter: the last
/// step, since the filter itself refuses what the others need.
fn drop_privileges(filter: Option<&[u8]>) {
    unsafe {
        for cap in 0..64 {
            libc::prctl(libc::PR_CAPBSET_DROP, cap, 0, 0, 0);
        }
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        );
        #[repr(C)]
        struct Header {
            version: u32,
            pid: i32,
        }
        #[repr(C)]
        struct Data {
            effective: u32,
            permitted: u32,
            inheritable: u32,
        }
        let h = Header {
            version: 0x2008_0522, // _LINUX_CAPABILITY_VERSION_3
            pid: 0,
        };
        let d = [
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
            Data {
                effective: 0,
                permitted: 0,
                inheritable: 0,
            },
        ];
        if libc::syscall(libc::SYS_capset, &h as *const Header, d.as_ptr()) != 0 {
            die("capset");
        }
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
            die("no_new_privs");
        }
        if let Some(f) = filter {
            let prog = libc::sock_fprog {
                len: (f.len() / 8) as u16,
                filter: f.as_ptr() as *mut libc::sock_filter,
            };
            if libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog,
            ) != 0
            {
                die("seccomp");
            }
        }
    }
}

/// `porthole-agent reap`: pid 1 of the holder's PID namespace. It installs no signal handler,
/// so the kernel drops every signal sent to it from inside; it only reaps orphans.
pub fn reap_main() -> ! {
    unsafe {
        libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32);
        // Nothing inside may open its memory or descriptors.
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    loop {
        let mut st = 0;
        // SAFETY: reaping any child of ours.
        if unsafe { libc::waitpid(-1, &mut st, 0) } < 0 {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holder_hides_the_data_dir_but_its_terminals() {
        let a: Vec<String> = holder_args(Path::new("/run/porthole/agent"), true)
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let s = a.join(" ");
        for want in [
            "--unshare-user --unshare-pid --as-pid-1",
            "--cap-drop ALL",
            "--die-with-parent",
            "--proc /proc --ro-bind /proc/sys /proc/sys",
            "--dev-bind /dev /dev",
            "--add-seccomp-fd 4",
            "--tmpfs /run/porthole/agent --bind /run/porthole/agent/terminals /run/porthole/agent/terminals --",
        ] {
            assert!(s.contains(want), "{want} missing: {s}");
        }
        // The data dir's tmpfs comes after the root bind (bubblewrap applies in order).
        let bind_root = s.find("--bind / /").unwrap();
        assert!(bind_root < s.find("--tmpfs /run/porthole/agent").unwrap());
        assert!(
            !s.contains("--unshare-ipc"),
            "X's MIT-SHM needs the IPC namespace: {s}"
        );
        // --dev makes bubblewrap nest a user namespace: the joined one would map us to uid 0.
        assert!(!a.iter().any(|x| x == "--dev"), "{s}");
        assert!(!holder_args(Path::new("/d"), false)
            .iter()
            .any(|x| x == "--add-seccomp-fd"));
    }
}
