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

/// An environment's image as the root of the coding agent's programs (`exec`, steps,
/// terminals): its root filesystem, a machine's own copy, and its `ENV`. Porthole's own tools
/// (the browser, git over the workspace) keep the machine's tree; tmux, which the terminals
/// need whatever the image holds, runs from that tree through its own dynamic loader.
#[derive(Clone, Debug)]
pub struct ImageRoot {
    /// The root filesystem, as porthole-agent sees it.
    pub root: PathBuf,
    /// `NAME=value`, the image's `ENV`.
    pub env: Vec<String>,
    /// Bound at the same path inside (the workspace).
    pub workspace: Option<PathBuf>,
}

/// Where the machine's `/usr` appears inside an image (tmux and its libraries come from it).
const HOST_USR: &str = "/.porthole/usr";
/// Porthole's commands inside an image (a `tmux` that runs the machine's).
const TOOLS: &str = "/.porthole/bin";

struct Sandbox {
    exe: PathBuf,
    seccomp: Option<PathBuf>,
    image: Option<ImageRoot>,
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
    pub fn start(
        data_dir: &Path,
        seccomp: Option<&Path>,
        image: Option<ImageRoot>,
    ) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("current_exe: {e}"))?;
        let terminals = data_dir.join("terminals");
        std::os::unix::fs::DirBuilderExt::mode(std::fs::DirBuilder::new().recursive(true), 0o700)
            .create(&terminals)
            .map_err(|e| format!("{}: {e}", terminals.display()))?;
        if image.is_some() {
            write_tools(&data_dir.join("tools"))?;
        }
        let (info_r, info_w) = pipe()?;
        let filter = seccomp
            .map(|p| std::fs::File::open(p).map_err(|e| format!("{}: {e}", p.display())))
            .transpose()?;
        let mut args: Vec<OsString> = Vec::new();
        for a in holder_args(data_dir, filter.is_some(), image.as_ref()) {
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
        let mut child = child;
        let want: Vec<u8> = [exe.as_os_str().as_bytes(), b"\0reap\0"].concat();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::fs::read(format!("/proc/{pid}/cmdline"))
            .ok()
            .as_deref()
            != Some(&want[..])
        {
            if let Ok(Some(st)) = child.try_wait() {
                return Err(format!("bwrap exited ({st}) before the workload's pid 1 ran; its error is in the log above"));
            }
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
                image,
                ns,
                _holder: std::sync::Mutex::new(child),
            }),
        };
        // bubblewrap reports the child before it has built the mounts: prove the sandbox
        // runs a program before anything relies on it (in the image too, if there is one).
        let probe = if w.image().is_some() {
            "/bin/sh"
        } else {
            "true"
        };
        let out = w
            .command_std(probe)
            .args(if w.image().is_some() {
                &["-c", "true"][..]
            } else {
                &[][..]
            })
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

    pub fn image(&self) -> Option<&ImageRoot> {
        self.sandbox.as_ref().and_then(|s| s.image.as_ref())
    }

    /// A command that runs `program` as workload: in the sandbox when there is one, in the
    /// environment's image when it has one (with the image's `ENV`). Callers add arguments,
    /// environment, directory and stdio as to any `Command`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.command_std(program))
    }

    pub fn command_std(&self, program: impl AsRef<OsStr>) -> std::process::Command {
        self.build(program, true)
    }

    /// As [`Workload::command`], but in the machine's tree even when the environment has an
    /// image: Porthole's own programs run by the workload (its browser, git).
    pub fn host_command(&self, program: impl AsRef<OsStr>) -> tokio::process::Command {
        tokio::process::Command::from(self.build(program, false))
    }

    /// The program a workload shell command names for one of Porthole's tools (`tmux`,
    /// `cat`): the machine's through the tools directory inside an image.
    pub fn tool(&self, name: &str) -> String {
        match self.image() {
            Some(_) => format!("{TOOLS}/{name}"),
            None => name.to_string(),
        }
    }

    /// tmux, whatever the image holds: the machine's, through the tools directory's wrapper.
    pub fn tmux(&self) -> tokio::process::Command {
        match self.image() {
            Some(_) => self.command(format!("{TOOLS}/tmux")),
            None => self.command("tmux"),
        }
    }

    fn build(&self, program: impl AsRef<OsStr>, in_image: bool) -> std::process::Command {
        let Some(sb) = &self.sandbox else {
            return std::process::Command::new(program);
        };
        let mut c = std::process::Command::new(&sb.exe);
        c.arg("workload-exec");
        if let Some(s) = &sb.seccomp {
            c.arg("--seccomp").arg(s);
        }
        if let (Some(img), true) = (&sb.image, in_image) {
            c.arg("--root").arg(&img.root);
            let mut path = None;
            for kv in &img.env {
                if let Some((k, v)) = kv.split_once('=') {
                    if k == "PATH" {
                        path = Some(v.to_string());
                    } else {
                        c.env(k, v);
                    }
                }
            }
            // The image's PATH (a Dockerfile's `ENV PATH=...`), then Porthole's tools.
            let path = path.unwrap_or_else(|| {
                "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()
            });
            c.env("PATH", format!("{path}:{TOOLS}"));
            if std::env::var_os("XAUTHORITY").is_some() {
                c.env("XAUTHORITY", format!("{TOOLS}/xauth"));
            }
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

/// The `tmux` an image's programs call (a pane's command waits on `tmux wait-for`): the
/// machine's tmux through the machine's dynamic loader and libraries under [`HOST_USR`], so
/// nothing of the image's libc is involved. Read-only inside (bound from the data directory).
fn write_tools(dir: &Path) -> Result<(), String> {
    let loader = if cfg!(target_arch = "aarch64") {
        "/lib/ld-linux-aarch64.so.1"
    } else {
        "/lib64/ld-linux-x86-64.so.2"
    };
    let real = std::fs::canonicalize(loader).map_err(|e| format!("{loader}: {e}"))?;
    let inside = |p: &Path| -> Result<String, String> {
        p.strip_prefix("/usr")
            .map(|r| format!("{HOST_USR}/{}", r.display()))
            .map_err(|_| format!("{} is not under /usr: Porthole's tools cannot run inside an image on this machine", p.display()))
    };
    let ld = inside(&real)?;
    let libdir = inside(real.parent().unwrap_or(Path::new("/usr/lib")))?;
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    // tmux, and the `cat` its panes' output goes through (busybox's cat sendfile()s from
    // tmux's socket and never hands over what it read).
    for tool in ["tmux", "cat"] {
        let bin = std::fs::canonicalize(format!("/usr/bin/{tool}"))
            .map_err(|e| format!("/usr/bin/{tool}: {e} (is it installed?)"))?;
        let script = format!(
            "#!/bin/sh\n# Written by porthole-agent: the machine's {tool}, whatever this image holds.\n\
             # tmux refuses to start without a UTF-8 locale, which an image may not have: the\n\
             # machine's, for tmux (its panes unset LOCPATH: the image's programs use the image's).\n\
             TERMINFO_DIRS=\"${{TERMINFO_DIRS:-}}:{HOST_USR}/share/terminfo:{HOST_USR}/lib/terminfo\" \
             LOCPATH={HOST_USR}/lib/locale exec {ld} --library-path {libdir}:{HOST_USR}/lib {} \"$@\"\n",
            inside(&bin)?
        );
        let f = dir.join(tool);
        std::fs::write(&f, script).map_err(|e| format!("{}: {e}", f.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("{}: {e}", f.display()))?;
    }
    // The display's cookie, for X clients the environment starts (a test runner's browser):
    // the workload reads it in the machine's tree anyway.
    if let Some(x) = std::env::var_os("XAUTHORITY") {
        let _ = std::fs::copy(&x, dir.join("xauth"));
    }
    Ok(())
}

/// bubblewrap's arguments for the holder, before the program. Paths are porthole-agent's own
/// view: the workload sees the same tree, minus the data directory. With an image, its root
/// gets what a machine's programs need at the same paths (devices, a /proc of the workload's
/// PID namespace, /tmp with the X socket, the home, the workspace, the terminals' FIFOs), the
/// machine's /usr under [`HOST_USR`] (the same tree the workload sees anyway) and Porthole's
/// tools; never the data directory.
pub fn holder_args(data_dir: &Path, seccomp: bool, image: Option<&ImageRoot>) -> Vec<OsString> {
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
    a.push(terminals.clone());
    if let Some(img) = image {
        let at = |p: &Path| -> OsString {
            let rel = p.strip_prefix("/").unwrap_or(p);
            img.root.join(rel).into_os_string()
        };
        let bind = |a: &mut Vec<OsString>, op: &str, src: &Path, dst: OsString| {
            a.extend([op.into(), src.as_os_str().to_owned(), dst]);
        };
        bind(
            &mut a,
            "--dev-bind",
            Path::new("/dev"),
            at(Path::new("/dev")),
        );
        bind(&mut a, "--bind", Path::new("/tmp"), at(Path::new("/tmp")));
        if let Some(home) = std::env::var_os("HOME").map(PathBuf::from) {
            bind(&mut a, "--bind-try", &home, at(&home));
        }
        if let Some(ws) = &img.workspace {
            bind(&mut a, "--bind", ws, at(ws));
        }
        // A data directory below one of those (/tmp, the home) is hidden there too.
        a.push("--tmpfs".into());
        a.push(at(data_dir));
        bind(
            &mut a,
            "--bind",
            Path::new(&terminals),
            at(Path::new(&terminals)),
        );
        for f in ["/etc/resolv.conf", "/etc/hosts"] {
            bind(&mut a, "--ro-bind-try", Path::new(f), at(Path::new(f)));
        }
        bind(
            &mut a,
            "--ro-bind",
            Path::new("/usr"),
            at(Path::new(HOST_USR)),
        );
        bind(
            &mut a,
            "--ro-bind",
            &data_dir.join("tools"),
            at(Path::new(TOOLS)),
        );
        a.push("--proc".into());
        a.push(at(Path::new("/proc")));
        bind(
            &mut a,
            "--ro-bind",
            Path::new("/proc/sys"),
            at(Path::new("/proc/sys")),
        );
    }
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
pub fn exec_main(seccomp: Option<PathBuf>, root: Option<PathBuf>, argv: Vec<OsString>) -> ! {
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
    // An image: its root for this program, while we still hold the namespace's capabilities
    // (the program gets none, so it cannot chroot back out).
    if let Some(r) = &root {
        let c = CString::new(r.as_os_str().as_bytes()).unwrap_or_default();
        // SAFETY: valid NUL-terminated path.
        if unsafe { libc::chroot(c.as_ptr()) } != 0 {
            die(&format!("chroot {}", r.display()));
        }
        unsafe { libc::chdir(c"/".as_ptr()) };
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
        let a: Vec<String> = holder_args(Path::new("/run/porthole/agent"), true, None)
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
        assert!(!holder_args(Path::new("/d"), false, None)
            .iter()
            .any(|x| x == "--add-seccomp-fd"));
    }

    #[test]
    fn an_image_root_gets_the_machines_parts_but_never_the_data_dir() {
        let img = ImageRoot {
            root: "/run/porthole/rootfs".into(),
            env: vec![],
            workspace: Some("/workspace".into()),
        };
        let a: Vec<String> = holder_args(Path::new("/run/porthole/agent"), true, Some(&img))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let s = a.join(" ");
        let r = "/run/porthole/rootfs";
        for want in [
            format!("--dev-bind /dev {r}/dev"),
            format!("--bind /tmp {r}/tmp"),
            format!("--bind /workspace {r}/workspace"),
            format!("--bind /run/porthole/agent/terminals {r}/run/porthole/agent/terminals"),
            format!("--ro-bind /usr {r}/.porthole/usr"),
            format!("--ro-bind /run/porthole/agent/tools {r}/.porthole/bin"),
            // A /proc of the workload's PID namespace, not porthole-agent's.
            format!("--proc {r}/proc --ro-bind /proc/sys {r}/proc/sys"),
        ] {
            assert!(s.contains(&want), "{want} missing: {s}");
        }
        for (i, x) in a.iter().enumerate() {
            if x.starts_with("--") && x.contains("bind") {
                let src = &a[i + 1];
                assert!(
                    !(src == "/run/porthole/agent"
                        || (src.starts_with("/run/porthole/agent/")
                            && !src.starts_with("/run/porthole/agent/terminals")
                            && !src.starts_with("/run/porthole/agent/tools"))),
                    "the data dir is bound into the image: {s}"
                );
                assert!(src != "/" || i < s.len(), "");
            }
        }
        // A data directory under /tmp is covered inside the image as well, before its
        // terminals come back.
        let t: Vec<String> = holder_args(Path::new("/tmp/agent"), false, Some(&img))
            .into_iter()
            .map(|s| s.to_string_lossy().into_owned())
            .collect();
        let ts = t.join(" ");
        let (tmp, cover, terms) = (
            ts.find(&format!("--bind /tmp {r}/tmp")).unwrap(),
            ts.find(&format!("--tmpfs {r}/tmp/agent")).unwrap(),
            ts.find(&format!(
                "--bind /tmp/agent/terminals {r}/tmp/agent/terminals"
            ))
            .unwrap(),
        );
        assert!(tmp < cover && cover < terms, "{ts}");
        // Only the tools directory, read-only.
        assert!(!s.contains(&format!("--bind /run/porthole/agent/tools")));
        assert!(
            !s.contains(&format!("--bind /proc {r}/proc")),
            "porthole-agent's /proc: {s}"
        );
    }
}
