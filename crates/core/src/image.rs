//! Machine images from an environment file: Cursor's `build` (a Dockerfile, by path or by
//! contents, and its context) or `image` (a name in podman's local storage), made with podman
//! and unpacked once per image id into the state directory, for a provider to boot from.
//!
//! Why podman only builds and unpacks: `podman build --isolation chroot` runs a Dockerfile's
//! `RUN` steps on these machines, but `podman run` does not start a container here (crun:
//! setrlimit refused; the default runtime: cgroups in hybrid mode), and a machine is Porthole's
//! sandbox anyway: the image's root becomes the root of everything the coding agent runs,
//! while the X server, porthole-agent and the recorder stay on Porthole's side of the boundary.
//!
//! Caching, two levels: a build key (the Dockerfile's text and the context's paths, sizes,
//! modes and mtimes) names the image `localhost/porthole-env:<key>`, so an unchanged
//! Dockerfile runs no build step at all; podman's own layer cache covers a changed one. The
//! unpacked root filesystem is kept per image id (`images/oci/<id>/rootfs`).

use crate::error::{CoreError, Result};
use crate::paths::StateDir;
use porthole_envfile::PortholeEnvironment;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use tokio::io::AsyncBufReadExt;

/// Where a machine's image comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    Dockerfile {
        file: PathBuf,
        context: PathBuf,
    },
    Contents {
        text: String,
        context: PathBuf,
    },
    /// A name podman already has (`podman images`): nothing can be pulled from here.
    Named(String),
}

/// An image ready to boot from.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// podman's image id (sha256 hex).
    pub id: String,
    /// What the machine's row shows: the build's tag or the `image` name.
    pub name: String,
    /// The unpacked root filesystem (shared: providers copy it, never write to it).
    pub rootfs: PathBuf,
    /// The image's `ENV` (`NAME=value`), for everything run in it.
    pub env: Vec<String>,
    /// Build steps run now (0 when the build key or podman's layers had everything).
    pub steps_run: usize,
    pub steps_total: usize,
    pub duration_ms: u64,
    pub warnings: Vec<String>,
}

impl Prepared {
    /// The summary a machine keeps in its spec (and hands its agent for the `build` step).
    pub fn summary(&self) -> serde_json::Value {
        serde_json::json!({
            "id": self.id, "name": self.name, "env": self.env,
            "steps_run": self.steps_run, "steps_total": self.steps_total,
            "duration_ms": self.duration_ms, "warnings": self.warnings,
        })
    }
}

/// The image an environment file asks for, with its paths resolved and checked; None when it
/// asks for none. Errors name the field (`build.context: ...`).
pub fn source(env: &PortholeEnvironment, env_file: &Path) -> Result<Option<Source>> {
    let file_dir = env_file.parent().map(Path::to_path_buf).unwrap_or_default();
    let hidden = file_dir
        .file_name()
        .is_some_and(|n| n == ".cursor" || n == ".porthole" || n == ".devcontainer");
    let repo = if hidden {
        file_dir.parent().map(Path::to_path_buf).unwrap_or_default()
    } else {
        file_dir.clone()
    };
    if let Some(b) = &env.build {
        let r = b.resolve(&repo, &file_dir);
        if !r.context.is_dir() {
            return Err(CoreError::Invalid(format!(
                "build.context: {} is not a directory (paths are relative to {})",
                r.context.display(),
                file_dir.display()
            )));
        }
        return Ok(Some(match (r.dockerfile, &b.dockerfile_contents) {
            (Some(file), _) => {
                if !file.is_file() {
                    return Err(CoreError::Invalid(format!(
                        "build.dockerfile: {} does not exist (paths are relative to {})",
                        file.display(),
                        file_dir.display()
                    )));
                }
                Source::Dockerfile {
                    file,
                    context: r.context,
                }
            }
            (None, Some(text)) => Source::Contents {
                text: text.clone(),
                context: r.context,
            },
            (None, None) => {
                return Err(CoreError::Invalid(
                    "build: needs dockerfile (a path) or dockerfileContents".into(),
                ))
            }
        }));
    }
    Ok(env.image.clone().map(Source::Named))
}

/// podman, or a message that says how to get it (and, for an ordinary user, what rootless
/// builds need).
pub fn check_podman() -> Result<()> {
    if crate::provider::which("podman").is_none() {
        return Err(CoreError::Missing(
            "this environment builds its machine from a Dockerfile (build) or an image, which needs podman: sudo apt-get install podman (or run packaging/install-deps.sh)".into(),
        ));
    }
    // SAFETY: getuid cannot fail.
    let uid = unsafe { libc::getuid() };
    if uid != 0 {
        // Rootless podman maps the image's users to a subordinate uid range of the user's.
        let user = std::env::var("USER").unwrap_or_default();
        let ranged = std::fs::read_to_string("/etc/subuid")
            .unwrap_or_default()
            .lines()
            .any(|l| {
                let who = l.split(':').next().unwrap_or("");
                !who.is_empty() && (who == user || who == uid.to_string())
            });
        if crate::provider::which("newuidmap").is_none() || !ranged {
            return Err(CoreError::Missing(format!(
                "podman builds as an ordinary user need newuidmap and a subordinate uid range: sudo apt-get install uidmap && sudo usermod --add-subuids 100000-165535 --add-subgids 100000-165535 {} (or run porthole as root)",
                if user.is_empty() { "$USER" } else { &user }
            )));
        }
    }
    Ok(())
}

/// Where podman runs. A Dockerfile is the repository's, and the coding agent may have written
/// it (a machine's workspace is writable from inside): its `RUN` steps must not run as host
/// root. So as root podman runs in a user namespace of Porthole's own, whose uids 0-65535 are
/// host uids [`BUILD_UID_BASE`]..+65536 (no passwd entry, nothing on the host but the build
/// store), with a store of its own under the state directory; base images the host's podman
/// holds are copied in (`podman save` / `podman load`). As an ordinary user, the user's
/// rootless podman, which maps the same way through /etc/subuid.
pub struct Engine {
    /// The build store and its configuration (root), else None (the user's podman).
    mapped: Option<PathBuf>,
}

/// The first host uid of the build namespace (below the sandboxes' 2100000000 + display).
pub const BUILD_UID_BASE: u32 = 2_000_000_000;
const BUILD_UIDS: u32 = 65_536;

/// Where the build namespace sees its store (and, under `ctx`, the build context): bound there
/// by the child itself, so the state directory's 0700 parents need not be walkable by the
/// build's uid.
const INSIDE: &str = "/run/porthole-build";

impl Engine {
    pub fn new(state: &StateDir) -> Result<Self> {
        check_podman()?;
        // SAFETY: getuid cannot fail.
        if unsafe { libc::getuid() } != 0 {
            return Ok(Engine { mapped: None });
        }
        let dir = state.images().join("podman");
        for d in [
            "graph", "run", "tmp", "static", "volumes", "xdg", "xfer", "ctx", "unpack",
        ] {
            std::fs::create_dir_all(dir.join(d))
                .map_err(CoreError::io(format!("create {}", dir.join(d).display())))?;
            std::os::unix::fs::chown(dir.join(d), Some(BUILD_UID_BASE), Some(BUILD_UID_BASE))
                .map_err(CoreError::io("chown the build store"))?;
        }
        std::fs::create_dir_all(INSIDE).map_err(CoreError::io(format!("create {INSIDE}")))?;
        // vfs: no overlay mount needed inside the namespace; `lock_type = file`: the shared
        // memory locks of the host's podman are root's.
        let storage = format!(
            "[storage]\ndriver = \"vfs\"\nrunroot = \"{INSIDE}/run\"\ngraphroot = \"{INSIDE}/graph\"\n"
        );
        let engine = format!(
            "[engine]\nevents_logger = \"none\"\nlock_type = \"file\"\ntmp_dir = \"{INSIDE}/tmp\"\nstatic_dir = \"{INSIDE}/static\"\nvolume_path = \"{INSIDE}/volumes\"\ncgroup_manager = \"cgroupfs\"\n"
        );
        std::fs::write(dir.join("storage.conf"), storage)
            .map_err(CoreError::io("write storage.conf"))?;
        std::fs::write(dir.join("containers.conf"), engine)
            .map_err(CoreError::io("write containers.conf"))?;
        Ok(Engine { mapped: Some(dir) })
    }

    /// A path of the store as the build namespace sees it (the real one without a namespace).
    fn inside(&self, real: &Path) -> PathBuf {
        match &self.mapped {
            Some(d) => match real.strip_prefix(d) {
                Ok(rel) => Path::new(INSIDE).join(rel),
                Err(_) => real.to_path_buf(),
            },
            None => real.to_path_buf(),
        }
    }

    /// The real path of a path inside the build namespace's store.
    fn outside(&self, inside: &Path) -> PathBuf {
        match (&self.mapped, inside.strip_prefix(INSIDE)) {
            (Some(d), Ok(rel)) => d.join(rel),
            _ => inside.to_path_buf(),
        }
    }

    /// `podman ARGS`, in the build namespace when there is one.
    fn podman(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("podman");
        c.args(args)
            .stdin(std::process::Stdio::null())
            .kill_on_drop(true);
        self.env(&mut c);
        c
    }

    /// The build namespace's environment: its store and configuration, nothing of ours.
    fn env(&self, c: &mut tokio::process::Command) {
        if self.mapped.is_some() {
            c.env_clear()
                .env(
                    "PATH",
                    "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                )
                .env("HOME", format!("{INSIDE}/tmp"))
                .env("XDG_RUNTIME_DIR", format!("{INSIDE}/xdg"))
                .env("CONTAINERS_STORAGE_CONF", format!("{INSIDE}/storage.conf"))
                .env("CONTAINERS_CONF", format!("{INSIDE}/containers.conf"));
        }
    }

    fn spawn(&self, c: tokio::process::Command) -> Result<tokio::process::Child> {
        self.spawn_with(c, None)
    }

    /// Starts `c`. In the build namespace, the child first takes a mount namespace of its own
    /// (as root) and binds the store at [`INSIDE`] and `context` read-only at `INSIDE/ctx`;
    /// then a new user and mount namespace, and waits (before exec, while it holds that
    /// namespace's capabilities) until this process, root outside, has written its uid and gid
    /// maps; then it becomes uid 0 inside, host uid [`BUILD_UID_BASE`]. A thread writes the
    /// maps: `spawn` itself blocks until the child has exec'd.
    fn spawn_with(
        &self,
        mut c: tokio::process::Command,
        context: Option<&Path>,
    ) -> Result<tokio::process::Child> {
        let Some(store) = &self.mapped else {
            return c.spawn().map_err(CoreError::io("run podman"));
        };
        let cstr = |p: &Path| {
            std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| CoreError::Invalid(format!("{}: a NUL in the path", p.display())))
        };
        let (store_c, inside_c, root_c) = (
            cstr(store)?,
            cstr(Path::new(INSIDE))?,
            cstr(Path::new("/"))?,
        );
        let ctx = match context {
            Some(x) => Some((cstr(x)?, cstr(&Path::new(INSIDE).join("ctx"))?)),
            None => None,
        };
        let (tmp_c, vartmp_c, tmpfs_c) = (
            cstr(Path::new("/tmp"))?,
            cstr(Path::new("/var/tmp"))?,
            cstr(Path::new("tmpfs"))?,
        );
        let tmp_opts = std::ffi::CString::new("mode=1777").unwrap_or_default();
        let (pid_r, pid_w) = pipe()?;
        let (go_r, go_w) = pipe()?;
        let writer = std::thread::spawn(move || -> std::io::Result<()> {
            use std::io::{Read, Write};
            let mut r = std::fs::File::from(pid_r);
            let mut b = [0u8; 4];
            r.read_exact(&mut b)?;
            let pid = i32::from_ne_bytes(b);
            let map = format!("0 {BUILD_UID_BASE} {BUILD_UIDS}\n");
            std::fs::write(format!("/proc/{pid}/uid_map"), &map)?;
            std::fs::write(format!("/proc/{pid}/gid_map"), &map)?;
            std::fs::File::from(go_w).write_all(b"g")
        });
        use std::os::fd::AsRawFd;
        let (pw, gr) = (pid_w.as_raw_fd(), go_r.as_raw_fd());
        // SAFETY: only async-signal-safe calls between fork and exec; the strings were made
        // before the fork.
        unsafe {
            c.pre_exec(move || {
                let e = std::io::Error::last_os_error;
                let none = std::ptr::null::<libc::c_char>();
                if libc::unshare(libc::CLONE_NEWNS) != 0
                    || libc::mount(
                        none,
                        root_c.as_ptr(),
                        none,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) != 0
                    || libc::mount(
                        store_c.as_ptr(),
                        inside_c.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(e());
                }
                if let Some((src, dst)) = &ctx {
                    if libc::mount(
                        src.as_ptr(),
                        dst.as_ptr(),
                        none,
                        libc::MS_BIND | libc::MS_REC,
                        std::ptr::null(),
                    ) != 0
                        || libc::mount(
                            none,
                            dst.as_ptr(),
                            none,
                            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                            std::ptr::null(),
                        ) != 0
                    {
                        return Err(e());
                    }
                }
                // Temporary directories of its own: podman's re-executed helpers find their
                // runtime directory under /tmp by owner, and a stale one of another uid there
                // fails the build ("neither XDG_RUNTIME_DIR nor HOME was set non-empty").
                for (d, opts) in [(&tmp_c, &tmp_opts), (&vartmp_c, &tmp_opts)] {
                    if libc::mount(
                        tmpfs_c.as_ptr(),
                        d.as_ptr(),
                        tmpfs_c.as_ptr(),
                        libc::MS_NOSUID | libc::MS_NODEV,
                        opts.as_ptr().cast(),
                    ) != 0
                    {
                        return Err(e());
                    }
                }
                if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
                    return Err(e());
                }
                let pid = libc::getpid().to_ne_bytes();
                if libc::write(pw, pid.as_ptr().cast(), 4) != 4 {
                    return Err(e());
                }
                let mut b = 0u8;
                if libc::read(gr, (&mut b as *mut u8).cast(), 1) != 1 {
                    return Err(std::io::Error::other("the uid map was not written"));
                }
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setresgid(0, 0, 0) != 0
                    || libc::setresuid(0, 0, 0) != 0
                {
                    return Err(e());
                }
                Ok(())
            });
        }
        let child = c.spawn();
        drop(pid_w);
        drop(go_r);
        let mapped = writer
            .join()
            .map_err(|_| CoreError::Invalid("uid map writer panicked".into()))?;
        let child = child.map_err(CoreError::io("run podman in the build namespace"))?;
        mapped.map_err(CoreError::io("write the build namespace's uid map"))?;
        Ok(child)
    }

    async fn out(&self, args: &[&str]) -> Result<String> {
        let mut c = self.podman(args);
        c.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped());
        let out = self
            .spawn(c)?
            .wait_with_output()
            .await
            .map_err(CoreError::io("run podman"))?;
        if !out.status.success() {
            return Err(CoreError::Build(format!(
                "podman {}: {}",
                args.first().unwrap_or(&""),
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    async fn ok(&self, args: &[&str]) -> Result<bool> {
        let mut c = self.podman(args);
        c.stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        Ok(self
            .spawn(c)?
            .wait()
            .await
            .map_err(CoreError::io("run podman"))?
            .success())
    }

    /// Whether the image is in the engine's store; as root, copied in from the host's
    /// podman when only that has it.
    async fn have(&self, name: &str, progress: &(dyn Fn(&str) + Sync)) -> Result<bool> {
        if self.ok(&["image", "exists", "--", name]).await? {
            return Ok(true);
        }
        let Some(d) = &self.mapped else {
            return Ok(false);
        };
        let host = |args: &[&str]| {
            let mut c = tokio::process::Command::new("podman");
            c.args(args)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::piped());
            c
        };
        if !host(&["image", "exists", "--", name])
            .status()
            .await
            .map_err(CoreError::io("run podman"))?
            .success()
        {
            return Ok(false);
        }
        progress(&format!(
            "copying {name} from the host's podman into the build store"
        ));
        let tar = d.join("xfer").join(format!("{}.tar", std::process::id()));
        let tar_s = tar.to_string_lossy().into_owned();
        let _ = std::fs::remove_file(&tar);
        let out = host(&["save", "-o", &tar_s, "--", name])
            .output()
            .await
            .map_err(CoreError::io("podman save"))?;
        if !out.status.success() {
            return Err(CoreError::Build(format!(
                "podman save {name}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        let _ = std::os::unix::fs::chown(&tar, Some(BUILD_UID_BASE), Some(BUILD_UID_BASE));
        let inside = self.inside(&tar).to_string_lossy().into_owned();
        let loaded = self.out(&["load", "-i", &inside]).await;
        let _ = std::fs::remove_file(&tar);
        loaded?;
        Ok(self.ok(&["image", "exists", "--", name]).await?)
    }
}

fn pipe() -> Result<(std::os::fd::OwnedFd, std::os::fd::OwnedFd)> {
    use std::os::fd::FromRawFd;
    let mut fds = [0; 2];
    // SAFETY: pipe2 fills two descriptors we then own.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(CoreError::io("pipe")(std::io::Error::last_os_error()));
    }
    // SAFETY: fresh descriptors from pipe2.
    Ok(unsafe {
        (
            std::os::fd::OwnedFd::from_raw_fd(fds[0]),
            std::os::fd::OwnedFd::from_raw_fd(fds[1]),
        )
    })
}

/// The images a Dockerfile starts from (`FROM name`), without earlier stages and `scratch`.
fn bases(dockerfile: &str) -> Vec<String> {
    let mut stages: Vec<String> = Vec::new();
    let mut out = Vec::new();
    for line in dockerfile.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        if w.first().is_some_and(|x| x.eq_ignore_ascii_case("FROM")) {
            let Some(img) = w[1..].iter().find(|x| !x.starts_with("--")) else {
                continue;
            };
            // An earlier stage's name is not an image.
            if *img != "scratch"
                && !img.contains('$')
                && !stages.contains(&img.to_lowercase())
                && !out.contains(&img.to_string())
            {
                out.push(img.to_string());
            }
            if let Some(i) = w.iter().position(|x| x.eq_ignore_ascii_case("AS")) {
                if let Some(n) = w.get(i + 1) {
                    stages.push(n.to_lowercase());
                }
            }
        }
    }
    out
}

/// Builds (or finds) the image and unpacks its root filesystem. `progress` gets one line per
/// build step and per stage.
pub async fn prepare(
    state: &StateDir,
    src: &Source,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<Prepared> {
    let eng = Engine::new(state)?;
    let started = std::time::Instant::now();
    let dir = state.images().join("oci");
    crate::paths::ensure_private_dir(&state.images())?;
    std::fs::create_dir_all(&dir).map_err(CoreError::io(format!("create {}", dir.display())))?;
    let mut warnings = Vec::new();
    let (name, steps_run, steps_total) = match src {
        Source::Named(n) => {
            if !eng.have(n, progress).await? {
                return Err(CoreError::Invalid(format!(
                    "image: '{n}' is not in podman's local storage, and nothing can be pulled here: podman load -i FILE (or podman pull {n} where a registry is reachable), or use build"
                )));
            }
            (n.clone(), 0, 0)
        }
        Source::Dockerfile { context, .. } | Source::Contents { context, .. } => {
            let text = match src {
                Source::Dockerfile { file, .. } => std::fs::read_to_string(file).map_err(
                    CoreError::io(format!("build.dockerfile {}", file.display())),
                )?,
                Source::Contents { text, .. } => text.clone(),
                Source::Named(_) => unreachable!(),
            };
            warnings.extend(copies_whole_context(&text, context, file_repo_root(src)));
            for w in &warnings {
                progress(&format!("warning: {w}"));
            }
            let key = build_key(&text, context)?;
            let tag = format!("localhost/porthole-env:{}", &key[..20]);
            if eng.ok(&["image", "exists", &tag]).await? {
                progress(&format!(
                    "image {tag}: unchanged Dockerfile and context, no build"
                ));
                (tag, 0, 0)
            } else {
                let path = match src {
                    Source::Dockerfile { file, .. } => file.clone(),
                    _ => {
                        let p = dir.join(format!("{key}.Dockerfile"));
                        std::fs::write(&p, &text)
                            .map_err(CoreError::io(format!("write {}", p.display())))?;
                        p
                    }
                };
                for b in bases(&text) {
                    // A base only the host's podman has is copied in; one nobody has is
                    // podman's error to report, at its step.
                    eng.have(&b, progress).await?;
                }
                let (run, total) = build(&eng, &path, context, &tag, progress).await?;
                (tag, run, total)
            }
        }
    };
    let id = eng
        .out(&["image", "inspect", "--format", "{{.Id}}", &name])
        .await?
        .trim()
        .to_string();
    if id.is_empty() || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(CoreError::Invalid(format!(
            "podman gave no image id for {name}"
        )));
    }
    let env_json = eng
        .out(&[
            "image",
            "inspect",
            "--format",
            "{{json .Config.Env}}",
            &name,
        ])
        .await?;
    let env: Vec<String> = serde_json::from_str(env_json.trim()).unwrap_or_default();
    let rootfs = unpack(&eng, &dir, &id, progress).await?;
    Ok(Prepared {
        id,
        name,
        rootfs,
        env,
        steps_run,
        steps_total,
        duration_ms: started.elapsed().as_millis() as u64,
        warnings,
    })
}

fn file_repo_root(src: &Source) -> Option<&Path> {
    match src {
        Source::Dockerfile { file, .. } => file.parent().and_then(Path::parent),
        _ => None,
    }
}

/// Cursor's rule, as a warning: the image holds system dependencies; the workspace is mounted,
/// not copied in. A `COPY .`/`ADD .` of a context that is the repository bakes it in.
fn copies_whole_context(dockerfile: &str, context: &Path, repo: Option<&Path>) -> Vec<String> {
    let is_repo = context.join(".git").exists()
        || repo.is_some_and(|r| r == context)
        || context.join(".cursor").is_dir();
    if !is_repo {
        return Vec::new();
    }
    let mut out = Vec::new();
    for (i, line) in dockerfile.lines().enumerate() {
        let words: Vec<&str> = line.split_whitespace().collect();
        let Some(op) = words.first() else { continue };
        if !(op.eq_ignore_ascii_case("COPY") || op.eq_ignore_ascii_case("ADD")) {
            continue;
        }
        let srcs: Vec<&str> = words[1..]
            .iter()
            .filter(|w| !w.starts_with("--"))
            .copied()
            .collect();
        if srcs.len() >= 2
            && srcs[..srcs.len() - 1]
                .iter()
                .any(|s| matches!(*s, "." | "./" | "*" | "./*"))
        {
            out.push(format!(
                "Dockerfile line {}: `{}` copies the whole repository into the image; the image should hold system dependencies only (the workspace is mounted at /workspace, never baked in)",
                i + 1,
                line.trim()
            ));
        }
    }
    out
}

/// What decides whether a build must run: the Dockerfile and the context's tree (`.git` left
/// out): paths, modes and contents, so an identical checkout elsewhere reuses the image; past
/// [`HASHED_BYTES`] of contents, sizes and mtimes stand in for the rest (a context that is a
/// whole repository with its dependencies). Podman compares contents layer by layer anyway.
/// A Dockerfile that reads nothing of its context (no `COPY`, `ADD` or `RUN --mount`) is keyed
/// by its text alone: a context that is the repository changes with every install.
fn build_key(dockerfile: &str, context: &Path) -> Result<String> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let mut h = Sha256::new();
    h.update(b"porthole-image-v2\0");
    h.update(dockerfile.as_bytes());
    h.update(b"\0");
    let reads_context = dockerfile.lines().any(|l| {
        let w: Vec<&str> = l.split_whitespace().collect();
        match w.first() {
            Some(op) if op.eq_ignore_ascii_case("COPY") || op.eq_ignore_ascii_case("ADD") => {
                // COPY --from=stage reads another stage, not the context.
                !w.iter().any(|x| x.starts_with("--from"))
            }
            Some(op) if op.eq_ignore_ascii_case("RUN") => {
                w.iter().any(|x| x.starts_with("--mount"))
            }
            _ => false,
        }
    });
    if !reads_context {
        return Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect());
    }
    let mut stack = vec![context.to_path_buf()];
    let mut entries: Vec<(String, std::fs::Metadata, PathBuf)> = Vec::new();
    while let Some(d) = stack.pop() {
        let rd = std::fs::read_dir(&d)
            .map_err(CoreError::io(format!("build.context {}", d.display())))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.file_name().is_some_and(|n| n == ".git") {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            let rel = p
                .strip_prefix(context)
                .unwrap_or(&p)
                .to_string_lossy()
                .into_owned();
            if m.is_dir() {
                stack.push(p.clone());
            }
            entries.push((rel, m, p));
        }
    }
    entries.sort_by(|a, b| a.0.cmp(&b.0));
    let mut budget = HASHED_BYTES;
    let mut buf = vec![0u8; 64 * 1024];
    for (rel, m, p) in entries {
        h.update(format!("{rel}\0{:o}\0", m.mode()).as_bytes());
        if m.file_type().is_symlink() {
            h.update(
                std::fs::read_link(&p)
                    .unwrap_or_default()
                    .as_os_str()
                    .as_encoded_bytes(),
            );
        } else if m.is_file() && m.len() <= budget {
            budget -= m.len();
            if let Ok(mut f) = std::fs::File::open(&p) {
                while let Ok(n) = f.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
            }
        } else if m.is_file() {
            h.update(format!("{}\0{}.{}", m.len(), m.mtime(), m.mtime_nsec()).as_bytes());
        }
        h.update(b"\n");
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

/// Context bytes read for the build key before sizes and mtimes stand in.
const HASHED_BYTES: u64 = 64 << 20;

/// `podman build`, its output read line by line: `STEP k/n: INSTRUCTION` becomes progress, and a
/// failure names its step, its command and the log's tail.
async fn build(
    eng: &Engine,
    dockerfile: &Path,
    context: &Path,
    tag: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<(usize, usize)> {
    // In the build namespace, the context is bound at INSIDE/ctx and the Dockerfile is read
    // from a copy in the store (its own directory may be closed to the build's uid).
    let (df, ctx) = match &eng.mapped {
        Some(store) => {
            let copy = store.join("xfer").join(format!(
                "{}-{}.Dockerfile",
                std::process::id(),
                tag.rsplit(':').next().unwrap_or("x")
            ));
            std::fs::copy(dockerfile, &copy).map_err(CoreError::io(format!(
                "build.dockerfile {}",
                dockerfile.display()
            )))?;
            (eng.inside(&copy), PathBuf::from(INSIDE).join("ctx"))
        }
        None => (dockerfile.to_path_buf(), context.to_path_buf()),
    };
    let (dfs, ctxs) = (df.to_string_lossy(), ctx.to_string_lossy());
    let mut c = eng.podman(&[
        "build",
        "--isolation",
        "chroot",
        "--layers",
        "-f",
        &dfs,
        "-t",
        tag,
        "--",
        &ctxs,
    ]);
    c.stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut child = eng.spawn_with(c, Some(context))?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    for r in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        tokio::spawn(async move {
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(l)) = lines.next_line().await {
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
    }
    drop(tx);
    let mut tail: std::collections::VecDeque<String> = Default::default();
    // (instruction, whether podman said it used its cache), in order.
    let mut steps: Vec<(String, bool)> = Vec::new();
    let mut total = 0;
    while let Some(l) = rx.recv().await {
        if let Some((k, n, instr)) = parse_step(&l) {
            total = n;
            steps.push((instr.to_string(), false));
            progress(&format!("build step {k}/{n}: {instr}"));
        } else if l.starts_with("--> Using cache") {
            if let Some(s) = steps.last_mut() {
                s.1 = true;
            }
        }
        if tail.len() == 40 {
            tail.pop_front();
        }
        tail.push_back(l);
    }
    let status = child.wait().await.map_err(CoreError::io("podman build"))?;
    if eng.mapped.is_some() {
        let _ = std::fs::remove_file(eng.outside(&df));
    }
    if !status.success() {
        let step = steps.last().map(|s| s.0.as_str()).unwrap_or("?");
        let log: Vec<&str> = tail.iter().map(String::as_str).collect();
        return Err(CoreError::Build(format!(
            "the Dockerfile failed at step {}/{total} (`{step}`), {status}; its log ends:\n{}",
            steps.len(),
            log.join("\n")
        )));
    }
    let run = steps
        .iter()
        .filter(|(s, cached)| !cached && !s.starts_with("FROM"))
        .count();
    Ok((run, total))
}

/// `STEP 2/3: RUN make` → (2, 3, "RUN make").
fn parse_step(line: &str) -> Option<(usize, usize, &str)> {
    let rest = line.strip_prefix("STEP ")?;
    let (frac, instr) = rest.split_once(": ")?;
    let (k, n) = frac.split_once('/')?;
    Some((k.parse().ok()?, n.parse().ok()?, instr))
}

/// The image's root filesystem, unpacked once per id: `podman create` (nothing runs) and
/// `podman export` into a temporary directory renamed into place when complete.
async fn unpack(
    eng: &Engine,
    dir: &Path,
    id: &str,
    progress: &(dyn Fn(&str) + Sync),
) -> Result<PathBuf> {
    let done = dir.join(id);
    let rootfs = done.join("rootfs");
    if rootfs.is_dir() {
        return Ok(rootfs);
    }
    progress(&format!("unpacking image {}", &id[..12.min(id.len())]));
    // In the store when there is a build namespace (the build's uid writes it there), which
    // is on the state directory's filesystem, so the rename below is atomic.
    let tmp = match &eng.mapped {
        Some(store) => store
            .join("unpack")
            .join(format!("{id}.tmp-{}", std::process::id())),
        None => dir.join(format!("{id}.tmp-{}", std::process::id())),
    };
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(tmp.join("rootfs")).map_err(CoreError::io("create image dir"))?;
    if eng.mapped.is_some() {
        std::os::unix::fs::chown(&tmp, Some(BUILD_UID_BASE), Some(BUILD_UID_BASE))
            .map_err(CoreError::io("chown the image dir"))?;
        // Unpacked in the build namespace too: a hostile archive (a symlink, then a file
        // through it) writes as the build's unprivileged uid, never as root.
        std::os::unix::fs::chown(
            tmp.join("rootfs"),
            Some(BUILD_UID_BASE),
            Some(BUILD_UID_BASE),
        )
        .map_err(CoreError::io("chown the image dir"))?;
    }
    let cname = format!(
        "porthole-export-{}-{}",
        &id[..12.min(id.len())],
        std::process::id()
    );
    let _ = eng.ok(&["rm", "-f", &cname]).await;
    // A command is required to create a container from an image without CMD; it never runs.
    eng.out(&["create", "--name", &cname, id, "/bin/true"])
        .await?;
    let mut cmd = tokio::process::Command::new("bash");
    cmd.args([
        "-c",
        "set -o pipefail; podman export -- \"$1\" | tar -x --no-same-owner -C \"$2\" --exclude='dev/*' --exclude='./dev/*'",
        "porthole-unpack",
        &cname,
    ])
    .arg(eng.inside(&tmp.join("rootfs")))
    .stdin(std::process::Stdio::null())
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .kill_on_drop(true);
    eng.env(&mut cmd);
    let out = match eng.spawn(cmd) {
        Ok(ch) => ch
            .wait_with_output()
            .await
            .map_err(CoreError::io("podman export")),
        Err(e) => Err(e),
    };
    let _ = eng.ok(&["rm", "-f", &cname]).await;
    let out = out?;
    if !out.status.success() {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(CoreError::Build(format!(
            "unpacking image {id}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    match std::fs::rename(&tmp, &done) {
        Ok(()) => {}
        // Another create unpacked the same image meanwhile: theirs is as good.
        Err(_) if rootfs.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(CoreError::io("move the unpacked image into place")(e)),
    }
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_are_read_off_podmans_output() {
        let check = |line: &str, want: Option<(usize, usize, &str)>| {
            assert_eq!(parse_step(line), want, "{line}")
        };
        check(
            "STEP 2/3: RUN make && make install",
            Some((2, 3, "RUN make && make install")),
        );
        check(
            "STEP 1/1: FROM localhost/base",
            Some((1, 1, "FROM localhost/base")),
        );
        check("STEP x/3: RUN", None);
        check("--> Using cache 26f1bbfeb8c", None);
        check("step 1/2: RUN x", None);
    }

    #[test]
    fn base_images_are_read_off_from_lines() {
        let check = |df: &str, want: &[&str]| assert_eq!(bases(df), want, "{df}");
        check("FROM localhost/base\nRUN x\n", &["localhost/base"]);
        check(
            "from --platform=linux/amd64 debian:12 AS build\nFROM build\nFROM alpine\n",
            &["debian:12", "alpine"],
        );
        check("FROM scratch\nFROM ${BASE}\n", &[]);
        check("FROM a\nFROM a\n", &["a"]);
    }

    #[test]
    fn copying_the_repository_in_is_warned_about() {
        let repo = tempfile::tempdir().unwrap();
        std::fs::create_dir(repo.path().join(".git")).unwrap();
        let sub = tempfile::tempdir().unwrap();
        let check = |df: &str, ctx: &Path, warned: bool| {
            assert_eq!(
                !copies_whole_context(df, ctx, None).is_empty(),
                warned,
                "{df}"
            )
        };
        check("FROM x\nCOPY . /app\n", repo.path(), true);
        check("FROM x\ncopy --chown=1 ./ /app\n", repo.path(), true);
        check("FROM x\nADD * /src/\n", repo.path(), true);
        check("FROM x\nCOPY package.json /app/\n", repo.path(), false);
        // A context of its own (e.g. .cursor/) holds only what the image needs.
        check("FROM x\nCOPY . /app\n", sub.path(), false);
        check("FROM x\nRUN cp . /x\n", repo.path(), false);
    }

    #[test]
    fn the_build_key_follows_the_dockerfile_and_the_context() {
        let ctx = tempfile::tempdir().unwrap();
        std::fs::write(ctx.path().join("a"), "1").unwrap();
        let df = "FROM x\nCOPY a /a\n";
        let k1 = build_key(df, ctx.path()).unwrap();
        assert_eq!(k1, build_key(df, ctx.path()).unwrap());
        assert_ne!(k1, build_key("FROM y\nCOPY a /a\n", ctx.path()).unwrap());
        // Without COPY/ADD the context does not matter (it is often the whole repository).
        let plain = build_key("FROM x\nRUN make\n", ctx.path()).unwrap();
        std::fs::write(ctx.path().join("b"), "2").unwrap();
        assert_eq!(plain, build_key("FROM x\nRUN make\n", ctx.path()).unwrap());
        assert_ne!(
            plain,
            build_key("FROM x\nRUN --mount=type=bind,target=/s make\n", ctx.path()).unwrap()
        );
        let k2 = build_key(df, ctx.path()).unwrap();
        assert_ne!(k1, k2);
        // Contents, not times: the same files checked out elsewhere are the same image.
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("b"), "2").unwrap();
        std::fs::write(other.path().join("a"), "1").unwrap();
        assert_eq!(k2, build_key(df, other.path()).unwrap());
        std::fs::write(other.path().join("a"), "3").unwrap();
        assert_ne!(k2, build_key(df, other.path()).unwrap());
        // .git is not the image's business.
        std::fs::create_dir(ctx.path().join(".git")).unwrap();
        std::fs::write(ctx.path().join(".git/HEAD"), "x").unwrap();
        assert_eq!(k2, build_key(df, ctx.path()).unwrap());
    }
}
