//! QEMU VMs: a reproducible guest image (qcow2 base, kernel, initramfs) shared by all
//! machines, a per-machine qcow2 overlay, and a read-only seed disk carrying the guest agent
//! and the guest's init. The agent is reached through forwarded loopback ports (TCP for HTTP,
//! one UDP port for WebRTC); the host talks to the guest's init over a virtio-serial port to
//! hand it a token and an identity, and to QEMU over QMP to pause and save it.
//!
//! The guest is hostile: it reaches this host only through the ports the host forwards to its
//! agent, and its outbound traffic goes out, with the confinement done outside the VM (see "The
//! VM's network, from the host's side" below): nftables rules on QEMU's cgroup and the taps as
//! root, QEMU in namespaces of its own behind slirp4netns otherwise. A workspace is shared with
//! `security_model=mapped-xattr`, and every path in an option string is escaped.
//!
//! Snapshots: `disk` copies the overlay (new machines get an overlay on top of it: a chain);
//! `memory` also saves the running VM's RAM and devices by migrating to a file, so a clone
//! resumes with Xvfb and Chromium already up, and gets a fresh token, hostname, machine-id and
//! entropy before it is handed out.

use super::{agent_bin, free_port, pid_alive, which, Provider};
use crate::error::{CoreError, Result};
use crate::machine::{hex, random_token, CreateSpec, Machine, Machines, ProviderKind};
use crate::paths::StateDir;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

/// The image recipe; its sha256 names the cached image, so a changed recipe is a new image.
const RECIPE: &str = include_str!("../../../../packaging/guest-image/build.sh");
/// PID 1 of the guest, shipped on the seed disk.
const GUEST_INIT: &str = include_str!("../../../../packaging/guest-image/init.sh");
const GUEST_AGENT_PORT: u16 = 7300;

pub struct Qemu {
    state: StateDir,
}

/// A built guest image.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub hash: String,
}

impl Image {
    pub fn rootfs(&self) -> PathBuf {
        self.dir.join("rootfs.qcow2")
    }
    pub fn kernel(&self) -> PathBuf {
        self.dir.join("vmlinuz")
    }
    pub fn initrd(&self) -> PathBuf {
        self.dir.join("initrd.img")
    }
}

pub fn recipe_hash() -> String {
    hex(&Sha256::digest(RECIPE.as_bytes()))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> CoreError {
    CoreError::io(what)
}

/// Which accelerator to use: `PORTHOLE_QEMU_ACCEL`, else the platform's hypervisor when it can
/// boot a stock kernel, else TCG. PVM-backed KVM (nested clouds) cannot: it fails with an
/// emulation error, so it counts as no KVM.
pub fn pick_accel() -> (String, String) {
    if let Ok(a) = std::env::var("PORTHOLE_QEMU_ACCEL") {
        if !a.is_empty() {
            return (a, "set by PORTHOLE_QEMU_ACCEL".into());
        }
    }
    if cfg!(target_os = "macos") {
        return ("hvf".into(), "macOS Hypervisor.framework".into());
    }
    if cfg!(target_os = "windows") {
        return ("whpx".into(), "Windows Hypervisor Platform".into());
    }
    let kvm_usable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !kvm_usable {
        return (
            "tcg".into(),
            "no usable /dev/kvm: software emulation (slow)".into(),
        );
    }
    if Path::new("/sys/module/kvm_pvm").exists() {
        return (
            "tcg".into(),
            "/dev/kvm is PVM-backed and cannot boot a stock kernel: software emulation (slow)"
                .into(),
        );
    }
    ("kvm".into(), "KVM".into())
}

/// A minimal QMP client: one command at a time, events skipped.
struct Qmp {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Qmp {
    async fn connect(sock: &Path) -> Result<Self> {
        let s = UnixStream::connect(sock)
            .await
            .map_err(io(format!("connect to QEMU's monitor {}", sock.display())))?;
        let (r, w) = s.into_split();
        let mut q = Self {
            r: BufReader::new(r),
            w,
        };
        q.read_reply().await?; // greeting
        q.exec("qmp_capabilities", json!({})).await?;
        Ok(q)
    }

    async fn connect_retry(sock: &Path, deadline: Duration) -> Result<Self> {
        let start = std::time::Instant::now();
        loop {
            match Self::connect(sock).await {
                Ok(q) => return Ok(q),
                Err(e) if start.elapsed() > deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn read_reply(&mut self) -> Result<Value> {
        loop {
            let mut line = String::new();
            if self
                .r
                .read_line(&mut line)
                .await
                .map_err(io("read from QEMU's monitor"))?
                == 0
            {
                return Err(CoreError::Invalid("QEMU closed its monitor".into()));
            }
            let v: Value = serde_json::from_str(&line).unwrap_or(Value::Null);
            if v.get("event").is_some() {
                continue;
            }
            if let Some(e) = v.get("error") {
                return Err(CoreError::Invalid(format!(
                    "QEMU: {}",
                    e["desc"].as_str().unwrap_or("error")
                )));
            }
            return Ok(v);
        }
    }

    async fn exec(&mut self, cmd: &str, args: Value) -> Result<Value> {
        let msg = json!({"execute": cmd, "arguments": args}).to_string() + "\n";
        self.w
            .write_all(msg.as_bytes())
            .await
            .map_err(io("write to QEMU's monitor"))?;
        Ok(self.read_reply().await?["return"].clone())
    }
}

/// The guest's control port: `key value` lines to its init, `ok ...` lines back.
struct Ctl {
    r: BufReader<tokio::net::unix::OwnedReadHalf>,
    w: tokio::net::unix::OwnedWriteHalf,
}

impl Ctl {
    async fn connect(sock: &Path, deadline: Duration) -> Result<Self> {
        let start = std::time::Instant::now();
        loop {
            match UnixStream::connect(sock).await {
                Ok(s) => {
                    let (r, w) = s.into_split();
                    return Ok(Self {
                        r: BufReader::new(r),
                        w,
                    });
                }
                Err(e) if start.elapsed() > deadline => {
                    return Err(CoreError::io(format!(
                        "connect to the guest control socket {}",
                        sock.display()
                    ))(e));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn send(&mut self, lines: &[(&str, String)]) -> Result<()> {
        let mut s = String::new();
        for (k, v) in lines {
            s.push_str(&format!("{k} {v}\n"));
        }
        self.w
            .write_all(s.as_bytes())
            .await
            .map_err(io("write to the guest control port"))
    }

    /// Waits for `ok WHAT` from the guest's init.
    async fn expect(
        &mut self,
        what: &str,
        timeout: Duration,
        alive: &(dyn Fn() -> Option<String> + Sync),
    ) -> Result<()> {
        let fut = async {
            loop {
                let mut line = String::new();
                if self
                    .r
                    .read_line(&mut line)
                    .await
                    .map_err(io("read the guest control port"))?
                    == 0
                {
                    return Err(CoreError::Invalid("the guest control port closed".into()));
                }
                if line.trim() == format!("ok {what}") {
                    return Ok(());
                }
            }
        };
        tokio::select! {
            r = tokio::time::timeout(timeout, fut) => r.map_err(|_| CoreError::Invalid(format!("the guest did not answer '{what}' within {}s", timeout.as_secs())))?,
            reason = async { loop { if let Some(r) = alive() { break r; } tokio::time::sleep(Duration::from_millis(100)).await; } } => Err(CoreError::Invalid(reason)),
        }
    }
}

impl Qemu {
    pub fn new(state: StateDir) -> Self {
        Self { state }
    }

    /// Where images are cached: `$PORTHOLE_IMAGE_DIR`, else the state directory's `images/`.
    pub fn images_dir(&self) -> PathBuf {
        std::env::var_os("PORTHOLE_IMAGE_DIR")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
            .unwrap_or_else(|| self.state.images())
    }

    fn check_tools() -> Result<()> {
        for (bin, pkg) in [
            ("qemu-system-x86_64", "qemu-system-x86"),
            ("qemu-img", "qemu-utils"),
            ("mkfs.ext4", "e2fsprogs"),
        ] {
            if which(bin).is_none() {
                return Err(CoreError::Missing(format!("{bin} is not installed: sudo apt-get install {pkg} (or run packaging/install-deps.sh)")));
            }
        }
        Ok(())
    }

    /// The cached image for this recipe, checked; `None` when it was never built.
    pub fn cached_image(&self) -> Result<Option<Image>> {
        let hash = recipe_hash();
        let dir = self.images_dir().join(&hash);
        if !dir.exists() {
            return Ok(None);
        }
        let img = Image {
            dir: dir.clone(),
            hash: hash.clone(),
        };
        let stamp = std::fs::read_to_string(dir.join("recipe.sha256")).unwrap_or_default();
        if stamp.trim() != hash {
            return Err(CoreError::Invalid(format!(
                "the guest image in {} does not match this version's recipe (sha256 {}): remove it and create again to rebuild",
                dir.display(),
                &hash[..12]
            )));
        }
        for f in [img.kernel(), img.initrd()] {
            if std::fs::metadata(&f).map(|m| m.len() == 0).unwrap_or(true) {
                return Err(CoreError::Invalid(format!("the guest image is damaged: {} is missing or empty; remove {} and create again", f.display(), dir.display())));
            }
        }
        let mut magic = [0u8; 4];
        let ok = std::fs::File::open(img.rootfs())
            .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
            .is_ok();
        if !ok || &magic != b"QFI\xfb" {
            return Err(CoreError::Invalid(format!(
                "the guest image is damaged: {} is not a qcow2 file; remove {} and create again",
                img.rootfs().display(),
                dir.display()
            )));
        }
        Ok(Some(img))
    }

    /// The image, built first when missing (minutes; the recipe's lines go to stderr and to
    /// `report`).
    pub async fn ensure_image(&self, report: &(dyn Fn(&str) + Sync)) -> Result<Image> {
        if let Some(img) = self.cached_image()? {
            return Ok(img);
        }
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return Err(CoreError::Missing(format!(
                "no guest image yet and building one needs root (debootstrap): run once `sudo PORTHOLE_IMAGE_DIR={} porthole machine create --provider qemu ...` or `sudo packaging/guest-image/build.sh {}/{}`",
                self.images_dir().display(),
                self.images_dir().display(),
                recipe_hash()
            )));
        }
        for (bin, pkg) in [("debootstrap", "debootstrap")] {
            if which(bin).is_none() {
                return Err(CoreError::Missing(format!(
                    "building the guest image needs {bin}: sudo apt-get install {pkg}"
                )));
            }
        }
        let root = self.images_dir();
        std::fs::create_dir_all(&root).map_err(io(format!("create {}", root.display())))?;
        // The script hashes itself as `build.sh` beside it: write it under that name.
        let script = root.join("build.sh");
        std::fs::write(&script, RECIPE).map_err(io("write the image recipe"))?;
        let dest = root.join(recipe_hash());
        eprintln!(
            "porthole: building the QEMU guest image into {} (a few minutes, once)",
            dest.display()
        );
        report("building the guest image (a few minutes, once)");
        let mut child = tokio::process::Command::new("bash")
            .arg(&script)
            .arg(&dest)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(io("run the image recipe"))?;
        // The recipe's stdout is its progress ("[k/n] what" and the tools' chatter): echoed for
        // the CLI, reported for the app.
        let mut lines = BufReader::new(child.stdout.take().expect("piped stdout")).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            eprintln!("{line}");
            if !line.trim().is_empty() {
                report(&line);
            }
        }
        let st = child.wait().await.map_err(io("run the image recipe"))?;
        let _ = std::fs::remove_file(&script);
        if !st.success() {
            return Err(CoreError::Invalid(format!(
                "building the guest image failed ({st}); see the lines above"
            )));
        }
        self.cached_image()?
            .ok_or_else(|| CoreError::Invalid("the image build finished but left no image".into()))
    }

    /// The read-only seed disk with this agent binary and init, shared by every machine that
    /// uses the same pair (a memory snapshot needs the very same disk to resume).
    fn ensure_seed(&self) -> Result<PathBuf> {
        let agent = agent_bin()?;
        let md = std::fs::metadata(&agent).map_err(io(format!("stat {}", agent.display())))?;
        let mut h = Sha256::new();
        h.update(GUEST_INIT.as_bytes());
        h.update(
            format!(
                "{}:{}:{}:{}",
                agent.display(),
                md.len(),
                md.mtime_nsec() + md.mtime() * 1_000_000_000,
                md.ino()
            )
            .as_bytes(),
        );
        let key = &hex(&h.finalize())[..16];
        let dir = self.images_dir().join("seeds");
        let img = dir.join(format!("{key}.img"));
        if img.exists() {
            return Ok(img);
        }
        let tmp = dir.join(format!("{key}.tmp.{}", std::process::id()));
        std::fs::create_dir_all(&tmp).map_err(io(format!("create {}", tmp.display())))?;
        std::fs::copy(&agent, tmp.join("porthole-agent"))
            .map_err(io("copy the agent onto the seed disk"))?;
        std::fs::write(tmp.join("init.sh"), GUEST_INIT).map_err(io("write init.sh"))?;
        std::fs::set_permissions(tmp.join("init.sh"), std::fs::Permissions::from_mode(0o755))
            .map_err(io("chmod init.sh"))?;
        let size_mb = md.len() / (1 << 20) + 64;
        let raw = dir.join(format!("{key}.img.{}", std::process::id()));
        let out = std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "phseed", "-d"])
            .arg(&tmp)
            .arg(&raw)
            .arg(format!("{size_mb}M"))
            .output()
            .map_err(io("run mkfs.ext4"))?;
        let _ = std::fs::remove_dir_all(&tmp);
        if !out.status.success() {
            let _ = std::fs::remove_file(&raw);
            return Err(CoreError::Invalid(format!(
                "make the seed disk: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        std::fs::rename(&raw, &img).map_err(io("publish the seed disk"))?;
        Ok(img)
    }

    /// QEMU's command line. Every path goes into an option string through [`opt_path`]
    /// (commas doubled), so no file or directory name can add options of its own.
    fn qemu_args(&self, m: &Machine, mdir: &Path, img: &Image) -> Result<Vec<String>> {
        let s = &m.spec;
        let accel = s["accel"].as_str().unwrap_or("tcg");
        let (hp, up) = (
            s["host_port"].as_u64().unwrap_or(0),
            s["udp_port"].as_u64().unwrap_or(0),
        );
        let tap = s["tap_index"].as_u64();
        let seed = Path::new(s["seed"].as_str().unwrap_or_default());
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("porthole-{}", opt_escape(&m.name)),
            "-machine".into(),
            // `-kernel`/`-initrd` would take their paths verbatim; as machine properties they
            // go through the same escaping as every other path.
            format!(
                "q35,kernel={},initrd={}",
                opt_path(&img.kernel())?,
                opt_path(&img.initrd())?
            ),
            "-accel".into(),
            if accel == "tcg" {
                "tcg,thread=multi".into()
            } else {
                opt_escape(accel)
            },
            "-cpu".into(),
            if accel == "tcg" {
                "max".into()
            } else {
                "host".into()
            },
            "-smp".into(),
            s["cpus"].as_u64().unwrap_or(2).to_string(),
            "-m".into(),
            s["memory_mb"].as_u64().unwrap_or(2048).to_string(),
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 init=/usr/sbin/porthole-init quiet panic=-1".into(),
            "-drive".into(),
            format!(
                "file={},if=virtio,format=qcow2,cache=writeback,discard=unmap",
                opt_path(&mdir.join("disk.qcow2"))?
            ),
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", opt_path(seed)?),
            // QEMU's user network: the guest's outbound traffic (and DNS). What of the host it
            // could reach through it is cut off outside the guest: see `host_filter`. No IPv6.
            "-netdev".into(),
            match tap {
                // Outbound only: the host reaches the guest through the tap.
                Some(_) => "user,id=n0,ipv6=off".to_string(),
                None => {
                    // Inside its own namespaces (not root) the VM's ports are forwarded on to it
                    // from the host's loopback by slirp4netns.
                    let at = if s["user_netns"] == true {
                        USERNET_NS_ADDR
                    } else {
                        "127.0.0.1"
                    };
                    format!("user,id=n0,ipv6=off,hostfwd=tcp:{at}:{hp}-:{GUEST_AGENT_PORT},hostfwd=udp:{at}:{up}-:{up}")
                }
            },
            "-device".into(),
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!(
                "socket,id=ctl,path={},server=on,wait=off",
                opt_path(&mdir.join("ctl.sock"))?
            ),
            "-device".into(),
            "virtserialport,chardev=ctl,name=org.porthole.ctl".into(),
            "-chardev".into(),
            format!(
                "socket,id=qmp,path={},server=on,wait=off",
                opt_path(&mdir.join("qmp.sock"))?
            ),
            "-mon".into(),
            "chardev=qmp,mode=control".into(),
            "-chardev".into(),
            format!(
                "file,id=console,path={}",
                opt_path(&mdir.join("logs/console.log"))?
            ),
            "-serial".into(),
            "chardev:console".into(),
            "-display".into(),
            "none".into(),
            "-no-reboot".into(),
        ];
        if let Some(idx) = tap {
            a.extend([
                "-netdev".into(),
                format!("tap,id=n1,ifname={},script=no,downscript=no", tap_name(idx)),
            ]);
            a.extend([
                "-device".into(),
                "virtio-net-pci,netdev=n1,mac=52:54:00:70:68:01".into(),
            ]);
        }
        if let Some(ws) = s["workspace"].as_str() {
            // `mapped-xattr`: files the guest creates are plain files of QEMU's user on the
            // host (0644, directories 0755); the owner, mode, device numbers and symlink-ness
            // the guest asked for live in `user.virtfs.*` attributes the guest cannot reach
            // directly. So guest root can make no setuid file, device node, symlink or
            // chown'd file with a meaning on the host (`none` and `passthrough` apply them
            // for real). The guest's init mounts it as 9p2000.L, which works with any model.
            a.push("-virtfs".into());
            a.push(format!(
                "local,path={},mount_tag=workspace,security_model=mapped-xattr,fmode=0644,dmode=0755,id=ws",
                opt_path(Path::new(ws))?
            ));
        }
        Ok(a)
    }

    /// Starts QEMU for `m` (cold, or resuming `incoming` memory state) and hands the guest its
    /// identity; returns once the agent answers with the machine's own token.
    async fn boot(&self, ms: &Machines, m: &mut Machine, incoming: Option<&Path>) -> Result<()> {
        Self::check_tools()?;
        let img = self.cached_image()?.ok_or_else(|| {
            CoreError::Missing(
                "the guest image is gone from the cache; create the machine again".into(),
            )
        })?;
        let mdir = self.state.machine(&m.name);
        for f in ["ctl.sock", "qmp.sock"] {
            let _ = std::fs::remove_file(mdir.join(f));
        }
        if let Some(idx) = m.spec["tap_index"].as_u64() {
            tap_down(idx).await;
            tap_up(idx).await.map_err(|e| CoreError::Boot {
                name: m.name.clone(),
                reason: format!("tap device: {e}"),
            })?;
            m.agent_url = Some(format!("http://10.215.{idx}.2:{GUEST_AGENT_PORT}"));
        } else {
            // Ports are picked per boot: a restored clone must not collide with its source.
            m.spec["host_port"] = json!(free_port("127.0.0.1")?);
            m.spec["udp_port"] = json!(free_udp_port()?);
            m.agent_url = Some(format!("http://127.0.0.1:{}", m.spec["host_port"]));
        }
        // The guest must not reach this host (see "The VM's network, from the host's side"):
        // the confinement is in place before QEMU runs a single guest instruction, or the VM
        // does not start.
        let name = m.name.clone();
        let boot_err = |e: CoreError| CoreError::Boot {
            name: name.clone(),
            reason: e.to_string(),
        };
        let filter = if super::local::is_root() {
            m.spec["user_netns"] = json!(false);
            Some(host_filter().await.map_err(boot_err)?)
        } else {
            check_user_net_tools().map_err(boot_err)?;
            m.spec["user_netns"] = json!(true);
            None
        };
        m.spec["isolated"] = json!(true);
        let mut args = self.qemu_args(m, &mdir, &img)?;
        if let Some(mem) = incoming {
            args.push("-incoming".into());
            args.push(format!("exec:cat {}", shell_quote(&mem.to_string_lossy())));
        }
        std::fs::create_dir_all(mdir.join("logs")).map_err(io("create the machine's logs dir"))?;
        let log_path = mdir.join("logs/qemu.log");
        let log = std::fs::File::create(&log_path).map_err(io("create qemu.log"))?;
        let op = if m.status == "creating" {
            "create"
        } else {
            "start"
        };
        let accel = m.spec["accel"].as_str().unwrap_or("tcg").to_string();
        ms.report(
            &m.name,
            op,
            &match incoming {
                Some(_) => format!("restoring the VM's memory snapshot ({accel})"),
                None => format!(
                    "booting the VM ({accel}{})",
                    if accel == "tcg" {
                        ", emulated: ~15 s"
                    } else {
                        ""
                    }
                ),
            },
        );
        let mut cmd = match &filter {
            Some(f) => {
                let mut c = tokio::process::Command::new("qemu-system-x86_64");
                c.args(&args)
                    .stdin(std::process::Stdio::null())
                    .stdout(log.try_clone().map_err(io("log"))?);
                f.confine(&mut c);
                c
            }
            None => user_net_command(&mdir, &args)?,
        };
        cmd.stderr(log).process_group(0);
        let mut child = cmd.spawn().map_err(io("start qemu-system-x86_64"))?;
        let holder = (child.stdin.take(), child.stdout.take());
        m.pid = child.id().map(|p| p as i64);
        ms.save(m).await?;
        let exited = std::sync::Arc::new(std::sync::Mutex::new(None::<String>));
        let ex = exited.clone();
        tokio::spawn(async move {
            let st = child.wait().await;
            *ex.lock().unwrap() = Some(format!(
                "QEMU exited ({})",
                st.map(|s| s.to_string()).unwrap_or_default()
            ));
        });
        let console = mdir.join("logs/console.log");
        let alive = || {
            exited.lock().unwrap().clone().map(|e| {
                format!(
                    "{e}: {} {}",
                    super::local::log_tail(&log_path),
                    super::local::log_tail(&console)
                )
            })
        };
        let r = async {
            let boot_timeout = Duration::from_secs(if m.spec["accel"] == "tcg" { 240 } else { 60 });
            if let (Some(stdin), Some(stdout)) = holder {
                user_net_attach(m, &mdir, stdin, stdout, &alive).await?;
            }
            if incoming.is_some() {
                // The source was paused when it was saved, so the clone loads paused: wait for
                // the state to be in, then run it.
                let mut qmp =
                    Qmp::connect_retry(&mdir.join("qmp.sock"), Duration::from_secs(10)).await?;
                let start = std::time::Instant::now();
                loop {
                    let st = qmp.exec("query-status", json!({})).await?;
                    match st["status"].as_str().unwrap_or("") {
                        "inmigrate" | "" => {}
                        "running" => break,
                        _ => {
                            qmp.exec("cont", json!({})).await?;
                            break;
                        }
                    }
                    if let Some(r) = alive() {
                        return Err(CoreError::Boot {
                            name: m.name.clone(),
                            reason: r,
                        });
                    }
                    if start.elapsed() > boot_timeout {
                        return Err(CoreError::Boot {
                            name: m.name.clone(),
                            reason: "loading the memory snapshot did not finish".into(),
                        });
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            let mut ctl = Ctl::connect(&mdir.join("ctl.sock"), Duration::from_secs(10)).await?;
            let token = ms.token(m)?;
            let mut seed = [0u8; 32];
            rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut seed);
            let s = &m.spec;
            let mut lines = vec![("token", token)];
            // The only token the guest's terminals, exec and MCP configs see (machines made
            // before two tokens existed have none, and keep one).
            if let Ok(t) = ms.agent_token(m) {
                lines.push(("agent-token", t));
            }
            lines.extend([
                ("hostname", m.name.clone()),
                (
                    "machine-id",
                    s["machine_id"].as_str().unwrap_or_default().to_string(),
                ),
                ("seed", hex(&seed)),
                (
                    "udp",
                    s["udp_port"]
                        .as_u64()
                        .map(|p| p.to_string())
                        .unwrap_or_default(),
                ),
                (
                    "size",
                    format!(
                        "{}x{}",
                        s["width"].as_u64().unwrap_or(1280),
                        s["height"].as_u64().unwrap_or(800)
                    ),
                ),
                (
                    "browser",
                    (if s["browser"] == true { "1" } else { "0" }).into(),
                ),
                ("idle", (if s["idle"] == true { "1" } else { "0" }).into()),
                (
                    "workspace",
                    (if s["workspace"].is_string() { "1" } else { "0" }).into(),
                ),
                ("fresh", (if incoming.is_some() { "1" } else { "0" }).into()),
            ]);
            match s["tap_index"].as_u64() {
                Some(idx) => lines.push(("tap-ip", format!("10.215.{idx}.2/30"))),
                // Peers on this host reach the forwarded UDP port on loopback (the app's
                // webrtc-rs peer includes loopback candidates; browsers do not: use root mode).
                None => lines.push(("public-ip", "127.0.0.1".into())),
            }
            if let Some(ds) = s["display_size"].as_str() {
                lines.push(("display-size", ds.to_string()));
            }
            if let Some(st) = s["stall_after"].as_u64() {
                lines.push(("stall", st.to_string()));
            }
            lines.push(("go", String::new()));
            ctl.send(&lines).await?;
            ctl.expect("go", boot_timeout, &alive)
                .await
                .map_err(|e| CoreError::Boot {
                    name: m.name.clone(),
                    reason: e.to_string(),
                })?;
            ms.wait_ready(m, boot_timeout, alive).await?;
            // The health check needs no token: prove this agent takes the machine's own one.
            ms.client(m)?.get("/v1/control").await.map(|_| ())
        }
        .await;
        if let Err(e) = r {
            self.kill(m).await;
            return Err(e);
        }
        Ok(())
    }

    async fn kill(&self, m: &Machine) {
        if let Some(pid) = m.pid {
            // SAFETY: signalling the process group we created for this VM.
            unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
            for _ in 0..100 {
                if !pid_alive(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        if let Some(idx) = m.spec["tap_index"].as_u64() {
            tap_down(idx).await;
        }
    }

    async fn pick_tap_index(ms: &Machines) -> Result<u64> {
        let used: Vec<u64> = ms
            .list()
            .await?
            .iter()
            .filter_map(|m| m.spec["tap_index"].as_u64())
            .collect();
        (1..=250)
            .find(|i| {
                !used.contains(i)
                    && !Path::new(&format!("/sys/class/net/{}", tap_name(*i))).exists()
            })
            .ok_or_else(|| {
                CoreError::Invalid(
                    "no free tap index (250 QEMU machines with their own network exist)".into(),
                )
            })
    }

    /// Saves the machine: `disk` (the overlay) or `memory` (overlay + RAM and device state).
    /// The machine keeps running afterwards.
    pub async fn snapshot(
        &self,
        ms: &Machines,
        m: &Machine,
        dir: &Path,
        memory: bool,
    ) -> Result<Value> {
        if m.status != "running" || m.pid.is_none_or(|p| !pid_alive(p)) {
            return Err(CoreError::Invalid(format!(
                "machine '{}' is not running; start it before taking a snapshot",
                m.name
            )));
        }
        if memory && m.spec["workspace"].is_string() {
            return Err(CoreError::Invalid(
                "a memory snapshot cannot include a shared host workspace (QEMU cannot migrate a mounted 9p share): take a disk snapshot (--disk-only)".into(),
            ));
        }
        let mdir = self.state.machine(&m.name);
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
        ms.report(&m.name, "snapshot", "flushing the guest's disks");
        let mut ctl = Ctl::connect(&mdir.join("ctl.sock"), Duration::from_secs(5)).await?;
        ctl.send(&[("sync", String::new())]).await?;
        ctl.expect("sync", Duration::from_secs(30), &|| None)
            .await?;
        drop(ctl);
        let mut qmp = Qmp::connect(&mdir.join("qmp.sock")).await?;
        qmp.exec("stop", json!({})).await?;
        let r = async {
            if memory {
                let mem = dir.join("memory");
                qmp.exec(
                    "migrate",
                    json!({"uri": format!("exec:cat > {}", shell_quote(&mem.to_string_lossy()))}),
                )
                .await?;
                let mut last = Instant::now();
                loop {
                    let st = qmp.exec("query-migrate", json!({})).await?;
                    if last.elapsed() >= Duration::from_millis(500) {
                        last = Instant::now();
                        let (done, total) = (
                            st["ram"]["transferred"].as_u64().unwrap_or(0),
                            st["ram"]["total"].as_u64().unwrap_or(0),
                        );
                        if total > 0 {
                            ms.report(
                                &m.name,
                                "snapshot",
                                &format!("saving memory: {} of {} MiB", done >> 20, total >> 20),
                            );
                        }
                    }
                    match st["status"].as_str().unwrap_or("") {
                        "completed" => break,
                        "failed" | "cancelled" => {
                            return Err(CoreError::Invalid(format!(
                                "saving the VM's memory failed: {}",
                                st["error-desc"].as_str().unwrap_or("unknown")
                            )))
                        }
                        _ => tokio::time::sleep(Duration::from_millis(50)).await,
                    }
                }
            }
            ms.report(&m.name, "snapshot", "copying the disk");
            let out = tokio::process::Command::new("cp")
                .args(["--sparse=always", "--reflink=auto"])
                .arg(mdir.join("disk.qcow2"))
                .arg(dir.join("disk.qcow2"))
                .output()
                .await
                .map_err(io("cp"))?;
            if !out.status.success() {
                return Err(CoreError::Invalid(format!(
                    "copy the disk: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                )));
            }
            Ok(())
        }
        .await;
        let resumed = qmp.exec("cont", json!({})).await;
        if let Err(e) = r {
            let _ = std::fs::remove_dir_all(dir);
            return Err(e);
        }
        resumed?;
        let s = &m.spec;
        Ok(json!({
            "kind": if memory { "memory" } else { "disk" },
            "image": s["image"], "seed": s["seed"], "cpus": s["cpus"], "memory_mb": s["memory_mb"],
            "accel": s["accel"], "width": s["width"], "height": s["height"], "browser": s["browser"],
            "display_size": s["display_size"], "workspace": s["workspace"], "env": s["env"],
        }))
    }
}

fn tap_name(idx: u64) -> String {
    format!("phq{idx}")
}

/// A tap device with 10.215.N.1/30 on the host side; the guest takes 10.215.N.2. Needed for
/// WebRTC from browsers on this host: QEMU's user network rewrites the host's own address to
/// its gateway alias and answers on loopback, so a peer bound to a real address never hears
/// back. The HTTP API is then on 10.215.N.2, reachable from this host only.
async fn tap_up(idx: u64) -> Result<()> {
    let t = tap_name(idx);
    super::local::run("ip", &["tuntap", "add", "dev", &t, "mode", "tap"]).await?;
    super::local::run(
        "ip",
        &["addr", "add", &format!("10.215.{idx}.1/30"), "dev", &t],
    )
    .await?;
    super::local::run("ip", &["link", "set", &t, "up"]).await
}

async fn tap_down(idx: u64) {
    let _ = super::local::run("ip", &["link", "del", &tap_name(idx)]).await;
}

/// The workspace share (`security_model=mapped-xattr`) keeps what the guest set in user
/// extended attributes: a filesystem without them would fail every file the guest creates.
fn check_xattrs(dir: &Path) -> Result<()> {
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return Ok(());
    };
    let name = c"user.porthole.probe";
    // SAFETY: NUL-terminated strings and a 1-byte buffer that outlive the calls.
    let r = unsafe { libc::setxattr(c.as_ptr(), name.as_ptr(), b"1".as_ptr().cast(), 1, 0) };
    if r == 0 {
        // SAFETY: as above.
        unsafe { libc::removexattr(c.as_ptr(), name.as_ptr()) };
        return Ok(());
    }
    match std::io::Error::last_os_error().raw_os_error() {
        Some(libc::ENOTSUP) => Err(CoreError::Invalid(format!(
            "workspace {}: its filesystem has no user extended attributes, which the VM's share needs (it keeps the guest's owners and modes there, never on the host's files); use a directory on ext4, xfs or btrfs",
            dir.display()
        ))),
        // Not ours to label (EPERM/EACCES): nothing learned, QEMU will say.
        _ => Ok(()),
    }
}

/// A value for a QEMU option string (`key=value,key=value`): QEMU reads `,,` as one literal
/// comma, so every comma is doubled; nothing else is special in a value.
fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// A path for a QEMU option string, escaped; a path that is not UTF-8 cannot be handed to QEMU
/// faithfully and is refused, naming it.
fn opt_path(p: &Path) -> Result<String> {
    p.to_str().map(opt_escape).ok_or_else(|| {
        CoreError::Invalid(format!(
            "{}: QEMU cannot be given a path that is not valid UTF-8; rename it or use another directory",
            p.display()
        ))
    })
}

// -- The VM's network, from the host's side ------------------------------------------------
//
// The coding agent in the guest is hostile and may be root there, so nothing inside the guest
// (its init's firewall rules included) can be what keeps it off the host: it is confined from
// outside, where it has no say.
//
// QEMU's user network (slirp) turns every connection the guest opens into an ordinary socket of
// the QEMU process on the host, and maps the gateway 10.0.2.2 (every 10.0.2.x but the DNS
// alias) to the host's 127.0.0.1. QEMU 7.2 cannot switch that off: libslirp's
// `disable_host_loopback` is not exposed, `restrict=on` also cuts the outbound traffic the
// agent needs, and `host=`/`net=` only move the alias. And even without the alias, a socket on
// the host reaches every service listening on the host's own addresses. So, when Porthole runs
// as root:
// - QEMU runs in the cgroup `porthole-qemu` (joined between fork and exec, before any socket
//   exists), and the nftables table `inet porthole_qemu` rejects, for sockets of that cgroup,
//   every new connection to an address of this host (loopback, every interface's address, the
//   taps' host sides), to link-local addresses (the cloud metadata service 169.254.169.254) and
//   to the other machines' networks (10.213/16 sandboxes, 10.215/16 VMs). DNS to a resolver on
//   this host (slirp forwards the guest's 10.0.2.3 there; often 127.0.0.53) is the one
//   exception. Packets on connections the host opened (the forwarded agent ports, TCP and UDP)
//   are `established` and pass. Outbound traffic to anywhere else is untouched.
// - The tap (10.215.N.0/30, the host's way to the agent and WebRTC): from `phq*` only packets of
//   connections the host opened are accepted, and nothing is forwarded to or from a tap, so the
//   guest can neither open a connection to the host through it nor route through the host.
// - Before QEMU starts, a probe from inside the cgroup connects to a listener on 127.0.0.1: if
//   it gets through, the filter does not work here and the VM is refused (fail closed).
// The guest cannot undo any of it: the rules and the cgroup live in the host's kernel, outside
// the VM; a guest (root or not) only ever sends packets to QEMU.

const NFT_TABLE: &str = "porthole_qemu";
const VM_CGROUP: &str = "porthole-qemu";

/// The host-side filter a VM's QEMU runs under (see above): its cgroup's `cgroup.procs`.
struct HostFilter {
    procs: std::ffi::CString,
}

impl HostFilter {
    /// Makes the child join the filtered cgroup between fork and exec.
    fn confine(&self, cmd: &mut tokio::process::Command) {
        let procs = self.procs.clone();
        // SAFETY: between fork and exec the closure only calls open, write and close (async
        // signal safe) on a path allocated before the fork; `last_os_error` does not allocate.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // "0": the writing process itself.
                let n = libc::write(fd, b"0".as_ptr().cast(), 1);
                let e = std::io::Error::last_os_error();
                libc::close(fd);
                if n != 1 {
                    return Err(e);
                }
                Ok(())
            });
        }
    }
}

/// The cgroup v2 hierarchy as this process sees it: its mount point and how deep the mounted
/// root is in the hierarchy (0 unless a container shows only part of it).
fn cgroup2_mount() -> Option<(PathBuf, usize)> {
    let mi = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mi.lines().find_map(|l| {
        let (pre, post) = l.split_once(" - ")?;
        if post.split_whitespace().next()? != "cgroup2" {
            return None;
        }
        let f: Vec<&str> = pre.split_whitespace().collect();
        let depth = f.get(3)?.split('/').filter(|c| !c.is_empty()).count();
        // mountinfo escapes blanks as octal (\040).
        let mnt = f
            .get(4)?
            .replace("\\040", " ")
            .replace("\\011", "\t")
            .replace("\\134", "\\");
        Some((PathBuf::from(mnt), depth))
    })
}

/// The ruleset of `inet porthole_qemu`, replacing whatever version of it is loaded (one
/// transaction). `cgroup` is the path as nft resolves it (relative to /sys/fs/cgroup), `level`
/// its depth in the hierarchy.
fn nft_ruleset(cgroup: &str, level: usize) -> String {
    format!(
        r#"table inet {NFT_TABLE}
delete table inet {NFT_TABLE}
table inet {NFT_TABLE} {{
  chain output {{
    type filter hook output priority filter; policy accept;
    socket cgroupv2 level {level} "{cgroup}" jump vm
  }}
  chain vm {{
    ct state established,related accept
    fib daddr type local meta l4proto {{ tcp, udp }} th dport 53 accept
    fib daddr type {{ local, broadcast, multicast }} counter reject
    ip daddr {{ 169.254.0.0/16, 10.213.0.0/16, 10.215.0.0/16 }} counter reject
    ip6 daddr {{ fe80::/10, fc00::/7 }} counter reject
  }}
  chain input {{
    type filter hook input priority filter; policy accept;
    iifname "phq*" ct state established,related accept
    iifname "phq*" counter reject with icmpx admin-prohibited
  }}
  chain forward {{
    type filter hook forward priority filter; policy accept;
    iifname "phq*" counter reject with icmpx admin-prohibited
    oifname "phq*" counter reject with icmpx admin-prohibited
  }}
}}
"#
    )
}

/// Loads the host-side filter for VMs and proves it works (see above). Needs root.
async fn host_filter() -> Result<HostFilter> {
    if which("nft").is_none() {
        return Err(CoreError::Missing(
            "keeping a VM off this host's services needs nftables: sudo apt-get install nftables (or run packaging/install-deps.sh)".into(),
        ));
    }
    let (mnt, depth) = cgroup2_mount().ok_or_else(|| {
        CoreError::Missing(
            "keeping a VM off this host's services needs the cgroup v2 hierarchy mounted (systemd hosts have it at /sys/fs/cgroup)".into(),
        )
    })?;
    let dir = mnt.join(VM_CGROUP);
    match std::fs::create_dir(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => {
            return Err(CoreError::io(format!(
                "create the cgroup {}",
                dir.display()
            ))(e))
        }
    }
    // nft resolves the path under /sys/fs/cgroup.
    let rel = match dir.strip_prefix("/sys/fs/cgroup") {
        Ok(r) => r.display().to_string(),
        Err(_) => format!("../../..{}", dir.display()),
    };
    let mut nft = tokio::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("run nft"))?;
    let mut stdin = nft.stdin.take().expect("piped stdin");
    stdin
        .write_all(nft_ruleset(&rel, depth + 1).as_bytes())
        .await
        .map_err(io("write to nft"))?;
    drop(stdin);
    let out = nft.wait_with_output().await.map_err(io("run nft"))?;
    if !out.status.success() {
        return Err(CoreError::Invalid(format!(
            "loading the nftables rules that keep VMs off this host failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let procs = std::ffi::CString::new(dir.join("cgroup.procs").as_os_str().as_bytes())
        .map_err(|_| CoreError::Invalid(format!("{}: a NUL in the cgroup path", dir.display())))?;
    let f = HostFilter { procs };
    probe_filter(&f, &dir).await?;
    Ok(f)
}

/// A process in the cgroup must not reach a listener on 127.0.0.1, and the same probe outside
/// it must (else the probe proves nothing).
async fn probe_filter(f: &HostFilter, dir: &Path) -> Result<()> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(io("bind a probe listener"))?;
    let port = l.local_addr().map_err(io("bind a probe listener"))?.port();
    let probe = |confined: bool| {
        let mut c = tokio::process::Command::new("bash");
        c.arg("-c")
            .arg(format!("exec 3<>/dev/tcp/127.0.0.1/{port}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        if confined {
            f.confine(&mut c);
        }
        async move {
            tokio::time::timeout(Duration::from_secs(10), c.status())
                .await
                .map_err(|_| CoreError::Invalid("the VM network filter's probe hung".into()))?
                .map_err(io("run the VM network filter's probe (bash)"))
        }
    };
    if !probe(false).await?.success() {
        return Err(CoreError::Invalid(format!(
            "cannot check the filter that keeps VMs off this host: bash could not connect to 127.0.0.1:{port} even outside {}",
            dir.display()
        )));
    }
    if probe(true).await?.success() {
        return Err(CoreError::Invalid(format!(
            "the nftables rules meant to keep VMs off this host do not apply here (a probe in the cgroup {} reached 127.0.0.1:{port}); refusing to start a VM that could reach this host's services",
            dir.display()
        )));
    }
    drop(l);
    Ok(())
}

// Not root: no nftables or cgroups of the host's to use. QEMU then runs in user, network and
// mount namespaces of its own (`unshare`), where Porthole is root and the guest is not:
// - its only way out is slirp4netns with `--disable-host-loopback` (its gateway 10.216.0.2
//   does not lead to the host's 127.0.0.1), which also forwards the agent's TCP and UDP ports
//   from the host's 127.0.0.1 in;
// - the namespace's own nftables table rejects every new connection to the host's addresses
//   (every IPv4 address of every interface when the machine boots), to the slirp4netns network
//   but its DNS, to link-local addresses and to the other machines' networks, and all IPv6;
// - /etc/resolv.conf, in the namespace only, names slirp4netns's DNS (the host's resolver is
//   often on 127.0.0.53, which the namespace cannot see).
// The guest cannot undo it: the namespaces, the rules and slirp4netns are processes and kernel
// state of the host user's, outside the VM. (Addresses the host gains after the machine boots
// are not in the list until it boots again.)

/// The namespace's side of slirp4netns, and its network.
const USERNET_NS_ADDR: &str = "10.216.0.100";
const USERNET_CIDR: &str = "10.216.0.0/24";
const USERNET_DNS: &str = "10.216.0.3";

fn check_user_net_tools() -> Result<()> {
    for (bin, pkg) in [
        ("slirp4netns", "slirp4netns"),
        ("nft", "nftables"),
        ("unshare", "util-linux"),
    ] {
        if which(bin).is_none() {
            return Err(CoreError::Missing(format!(
                "keeping a VM off this host's services without root needs {bin}: sudo apt-get install {pkg} (or run packaging/install-deps.sh)"
            )));
        }
    }
    Ok(())
}

/// Every IPv4 address of this host's interfaces but loopback (which the namespace cannot reach).
fn host_ipv4_addrs() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    let mut ifs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we walk read-only and free once.
    unsafe {
        if libc::getifaddrs(&mut ifs) != 0 {
            return out;
        }
        let mut p = ifs;
        while !p.is_null() {
            let a = (*p).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                if !ip.is_loopback() && !out.contains(&ip) {
                    out.push(ip);
                }
            }
            p = (*p).ifa_next;
        }
        libc::freeifaddrs(ifs);
    }
    out
}

/// The namespace's nftables table (see above).
fn user_net_ruleset(host: &[std::net::Ipv4Addr]) -> String {
    let mut refuse = vec![
        USERNET_CIDR.to_string(),
        "169.254.0.0/16".into(),
        "10.213.0.0/16".into(),
        "10.215.0.0/16".into(),
    ];
    refuse.extend(host.iter().map(|a| a.to_string()));
    format!(
        r#"table inet porthole_vm {{
  chain output {{
    type filter hook output priority filter; policy accept;
    ct state established,related accept
    ip daddr {USERNET_DNS} meta l4proto {{ tcp, udp }} th dport 53 accept
    fib daddr type {{ local, broadcast, multicast }} counter reject
    ip daddr {{ {} }} counter reject
    meta nfproto ipv6 counter reject
  }}
}}
"#,
        refuse.join(", ")
    )
}

/// `unshare` into new user (Porthole's user as root), network and mount namespaces, where a
/// shell loads the rules, points /etc/resolv.conf at slirp4netns's DNS, says `ready`, and waits
/// for `go` (slirp4netns attached, ports forwarded) before it becomes QEMU.
fn user_net_command(mdir: &Path, args: &[String]) -> Result<tokio::process::Command> {
    let net = mdir.join("net");
    std::fs::create_dir_all(&net).map_err(io(format!("create {}", net.display())))?;
    let rules = net.join("rules.nft");
    std::fs::write(&rules, user_net_ruleset(&host_ipv4_addrs()))
        .map_err(io(format!("write {}", rules.display())))?;
    let resolv = net.join("resolv.conf");
    std::fs::write(&resolv, format!("nameserver {USERNET_DNS}\n"))
        .map_err(io(format!("write {}", resolv.display())))?;
    const SCRIPT: &str = r#"nft -f "$1" || { echo "porthole: the VM's network rules did not load" >&2; exit 1; }
mount --bind "$2" /etc/resolv.conf || echo "porthole: /etc/resolv.conf not replaced: the guest may have no DNS" >&2
shift 2
echo ready
read -r go && [ "$go" = go ] || exit 1
exec "$@" </dev/null >&2"#;
    let mut c = tokio::process::Command::new("unshare");
    c.args([
        "--user",
        "--map-root-user",
        "--net",
        "--mount",
        "--",
        "sh",
        "-c",
        SCRIPT,
        "sh",
    ])
    .arg(&rules)
    .arg(&resolv)
    .arg("qemu-system-x86_64")
    .args(args)
    .stdin(std::process::Stdio::piped())
    .stdout(std::process::Stdio::piped());
    Ok(c)
}

/// One request to slirp4netns's API socket.
async fn slirp4netns_api(sock: &Path, req: Value) -> Result<Value> {
    let mut s = UnixStream::connect(sock)
        .await
        .map_err(io(format!("connect to slirp4netns at {}", sock.display())))?;
    s.write_all(req.to_string().as_bytes())
        .await
        .map_err(io("write to slirp4netns"))?;
    s.shutdown().await.map_err(io("write to slirp4netns"))?;
    let mut out = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut s, &mut out)
        .await
        .map_err(io("read from slirp4netns"))?;
    let v: Value = serde_json::from_slice(&out).unwrap_or(Value::Null);
    if let Some(e) = v.get("error") {
        return Err(CoreError::Invalid(format!("slirp4netns: {e}")));
    }
    Ok(v)
}

/// Waits for the namespaces, attaches slirp4netns, forwards the agent's ports, and lets QEMU
/// start.
async fn user_net_attach(
    m: &Machine,
    mdir: &Path,
    mut stdin: tokio::process::ChildStdin,
    stdout: tokio::process::ChildStdout,
    alive: &(dyn Fn() -> Option<String> + Sync),
) -> Result<()> {
    let fail = |reason: String| CoreError::Boot {
        name: m.name.clone(),
        reason,
    };
    let pid = m.pid.ok_or_else(|| fail("no QEMU process".into()))?;
    let mut lines = BufReader::new(stdout).lines();
    match tokio::time::timeout(Duration::from_secs(20), lines.next_line()).await {
        Ok(Ok(Some(l))) if l.trim() == "ready" => {}
        _ => {
            tokio::time::sleep(Duration::from_millis(200)).await;
            return Err(fail(alive().unwrap_or_else(|| {
                "the VM's namespaces did not come up (unshare --user --net --mount)".into()
            })));
        }
    }
    let api = mdir.join("net/slirp4netns.sock");
    let _ = std::fs::remove_file(&api);
    let log = std::fs::File::create(mdir.join("logs/slirp4netns.log"))
        .map_err(io("create slirp4netns.log"))?;
    // In QEMU's process group: stopping the machine ends both.
    tokio::process::Command::new("slirp4netns")
        .args(["--configure", "--mtu=65520", "--disable-host-loopback"])
        .arg(format!("--cidr={USERNET_CIDR}"))
        .arg("--api-socket")
        .arg(&api)
        .arg(pid.to_string())
        .arg("tap0")
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().map_err(io("log"))?)
        .stderr(log)
        .process_group(pid as i32)
        .spawn()
        .map_err(io("start slirp4netns"))?;
    let start = Instant::now();
    loop {
        if slirp4netns_api(&api, json!({"execute": "list_hostfwd"}))
            .await
            .is_ok()
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(20) {
            return Err(fail(format!(
                "slirp4netns did not come up: {}",
                super::local::log_tail(&mdir.join("logs/slirp4netns.log"))
            )));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for (proto, key) in [("tcp", "host_port"), ("udp", "udp_port")] {
        let port = m.spec[key].as_u64().unwrap_or(0);
        slirp4netns_api(
            &api,
            json!({"execute": "add_hostfwd", "arguments": {"proto": proto, "host_addr": "127.0.0.1",
                "host_port": port, "guest_addr": USERNET_NS_ADDR, "guest_port": port}}),
        )
        .await
        .map_err(|e| fail(format!("forward the agent's {proto} port {port}: {e}")))?;
    }
    stdin
        .write_all(b"go\n")
        .await
        .map_err(|e| fail(format!("start QEMU in its namespaces: {e}")))?;
    Ok(())
}

fn free_udp_port() -> Result<u16> {
    let s = std::net::UdpSocket::bind(("127.0.0.1", 0)).map_err(io("find a free UDP port"))?;
    Ok(s.local_addr().map_err(io("find a free UDP port"))?.port())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

fn env_number(k: &str, default: u64) -> Result<u64> {
    match std::env::var(k) {
        Ok(v) if !v.is_empty() => v
            .parse()
            .map_err(|_| CoreError::Invalid(format!("{k}={v}: expected a whole number"))),
        _ => Ok(default),
    }
}

impl Provider for Qemu {
    async fn create(&self, ms: &Machines, spec: &CreateSpec, m: &mut Machine) -> Result<()> {
        Self::check_tools()?;
        let mdir = self.state.machine(&m.name);
        if mdir.exists() {
            let _ = std::fs::remove_dir_all(&mdir);
        }
        let snapshot = match &spec.from_snapshot {
            Some(snap) => {
                let (path, kind, sspec) = ms.snapshot_info(snap).await?;
                if kind != ProviderKind::Qemu {
                    return Err(CoreError::Invalid(format!(
                        "snapshot '{snap}' is a {} snapshot; use --provider {}",
                        kind.as_str(),
                        kind.as_str()
                    )));
                }
                Some((snap.clone(), path, sspec))
            }
            None => None,
        };
        let network = match spec.network.as_deref() {
            Some("loopback") => "loopback",
            Some("tap") => {
                if !super::local::is_root() || which("ip").is_none() {
                    return Err(CoreError::Missing("--network tap needs root (or CAP_NET_ADMIN) and iproute2; use --network loopback".into()));
                }
                "tap"
            }
            Some(other) => {
                return Err(CoreError::Invalid(format!(
                    "--network {other}: expected loopback or tap for a qemu machine"
                )))
            }
            None if super::local::is_root() && which("ip").is_some() => "tap",
            None => "loopback",
        };
        let img = self
            .ensure_image(&|l: &str| ms.report(&spec.name, "create", l))
            .await?;
        let (accel, why) = pick_accel();
        let workspace = match &spec.workspace {
            Some(w) => {
                let w =
                    std::fs::canonicalize(w).map_err(io(format!("workspace {}", w.display())))?;
                opt_path(&w)?;
                check_xattrs(&w)?;
                Some(w)
            }
            None => None,
        };
        let (w, h) = spec.display_size.unwrap_or((1280, 800));
        let mut mid = [0u8; 16];
        rand::RngCore::fill_bytes(&mut rand::thread_rng(), &mut mid);
        let mut s = json!({
            "image": img.hash, "accel": accel, "accel_reason": why,
            "cpus": env_number("PORTHOLE_QEMU_CPUS", 2)?, "memory_mb": env_number("PORTHOLE_QEMU_MEMORY_MB", 2048)?,
            "width": w, "height": h, "browser": spec.browser, "idle": spec.idle,
            "workspace": workspace, "machine_id": hex(&mid), "network": network,
            "env": spec.env_path.as_ref().map(|p| std::fs::canonicalize(p).unwrap_or(p.clone())),
        });
        if let Some(secs) = std::env::var("PORTHOLE_STALL_AFTER")
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
        {
            s["stall_after"] = json!(secs);
        }
        std::fs::create_dir_all(&mdir).map_err(io(format!("create {}", mdir.display())))?;
        let mut incoming = None;
        let backing = match &snapshot {
            Some((name, path, sspec)) => {
                if sspec["image"] != json!(img.hash) {
                    return Err(CoreError::Invalid(format!("snapshot '{name}' was taken on another guest image; create a fresh machine")));
                }
                // A memory snapshot resumes exactly the hardware it was saved from.
                for k in [
                    "seed",
                    "cpus",
                    "memory_mb",
                    "width",
                    "height",
                    "browser",
                    "display_size",
                ] {
                    s[k] = sspec[k].clone();
                }
                s["snapshot"] = json!(name);
                if sspec["kind"] == "memory" {
                    if sspec["accel"] != json!(accel) {
                        return Err(CoreError::Invalid(format!(
                            "snapshot '{name}' holds a {} VM and this host would run {accel}: memory snapshots resume only on the same accelerator",
                            sspec["accel"].as_str().unwrap_or("?")
                        )));
                    }
                    if !Path::new(s["seed"].as_str().unwrap_or_default()).exists() {
                        return Err(CoreError::Invalid(format!(
                            "snapshot '{name}' needs its seed disk {}, which is gone",
                            s["seed"]
                        )));
                    }
                    incoming = Some(path.join("memory"));
                } else {
                    s["seed"] = json!(self.ensure_seed()?);
                }
                path.join("disk.qcow2")
            }
            None => {
                s["seed"] = json!(self.ensure_seed()?);
                img.rootfs()
            }
        };
        let out = tokio::process::Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "qcow2", "-b"])
            .arg(&backing)
            .arg(mdir.join("disk.qcow2"))
            .output()
            .await
            .map_err(io("run qemu-img"))?;
        if !out.status.success() {
            return Err(CoreError::Invalid(format!(
                "create the machine's disk: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        m.spec = s;
        ms.state.create_keys()?;
        crate::machine::write_private(&m.token_path, random_token().as_bytes())?;
        crate::machine::write_private(&m.agent_token_path(), random_token().as_bytes())?;
        // Two creates must not pick the same tap: hold the lock until the row is saved.
        let lock = super::local::CreateLock::acquire(&ms.state.root().join(".create.lock"))?;
        if network == "tap" {
            m.spec["tap_index"] = json!(Self::pick_tap_index(ms).await?);
        }
        ms.save(m).await?;
        drop(lock);
        self.boot(ms, m, incoming.as_deref()).await
    }

    async fn start(&self, ms: &Machines, m: &mut Machine) -> Result<()> {
        self.kill(m).await;
        self.boot(ms, m, None).await
    }

    /// Asks the guest to power off (the agent finalizes its recording), then forces it.
    async fn stop(&self, m: &mut Machine) -> Result<()> {
        let mdir = self.state.machine(&m.name);
        if let Some(pid) = m.pid.filter(|p| pid_alive(*p)) {
            if let Ok(mut ctl) =
                Ctl::connect(&mdir.join("ctl.sock"), Duration::from_millis(500)).await
            {
                let _ = ctl.send(&[("poweroff", String::new())]).await;
                for _ in 0..300 {
                    if !pid_alive(pid) {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
        self.kill(m).await;
        m.pid = None;
        Ok(())
    }

    async fn destroy(&self, m: &Machine) -> Result<()> {
        self.kill(m).await;
        let mdir = self.state.machine(&m.name);
        if mdir.exists() {
            std::fs::remove_dir_all(&mdir).map_err(io(format!("remove {}", mdir.display())))?;
        }
        Ok(())
    }

    fn dead_reason(&self, m: &Machine) -> Option<String> {
        let pid = m.pid?;
        if pid_alive(pid) {
            return None;
        }
        let mdir = self.state.machine(&m.name);
        Some(
            format!(
                "QEMU exited: {} {}",
                super::local::log_tail(&mdir.join("logs/qemu.log")),
                super::local::log_tail(&mdir.join("logs/console.log"))
            )
            .trim()
            .to_string(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU's option-string rule, for checking: `,` separates, `,,` is a literal comma.
    fn parse_opts(s: &str) -> Vec<String> {
        let (mut out, mut cur, mut it) = (Vec::new(), String::new(), s.chars().peekable());
        while let Some(c) = it.next() {
            if c == ',' {
                if it.peek() == Some(&',') {
                    it.next();
                    cur.push(',');
                } else {
                    out.push(std::mem::take(&mut cur));
                }
            } else {
                cur.push(c);
            }
        }
        out.push(cur);
        out
    }

    #[test]
    fn commas_in_paths_are_doubled_so_they_add_no_options() {
        for (path, escaped) in [
            ("/plain/path", "/plain/path"),
            ("/a,b", "/a,,b"),
            (
                "/ws,readonly=off,security_model=passthrough",
                "/ws,,readonly=off,,security_model=passthrough",
            ),
            ("/x,,y", "/x,,,,y"),
            ("/trailing,", "/trailing,,"),
            (",/lead", ",,/lead"),
            ("/sp ace/é=ü", "/sp ace/é=ü"),
        ] {
            assert_eq!(opt_path(Path::new(path)).unwrap(), escaped, "{path}");
            // Read back by QEMU's rule: one value, the very path.
            assert_eq!(
                parse_opts(&format!("path={escaped}")),
                [format!("path={path}")],
                "{path}"
            );
        }
        let bad = std::ffi::OsStr::from_bytes(b"/ws/\xff\xfe");
        let e = opt_path(Path::new(bad)).unwrap_err().to_string();
        assert!(e.contains("/ws/") && e.contains("UTF-8"), "{e}");
    }

    #[test]
    fn every_path_in_the_command_line_is_escaped_and_the_share_is_mapped() {
        let d = tempfile::tempdir().unwrap();
        let evil = ",id=x,security_model=none";
        let state = d.path().join(format!("state{evil}"));
        let q = Qemu::new(StateDir::at(&state));
        let img = Image {
            dir: d.path().join(format!("img{evil}")),
            hash: "h".into(),
        };
        let ws = d.path().join(format!("ws{evil}"));
        let seed = d.path().join(format!("seed{evil}.img"));
        let m = Machine {
            name: "vm1".into(),
            provider: ProviderKind::Qemu,
            status: "creating".into(),
            agent_url: None,
            token_path: state.join("keys/vm1.token"),
            pid: None,
            spec: json!({"accel": "tcg", "host_port": 5000, "udp_port": 5001,
                "seed": seed, "workspace": ws}),
            isolated: None,
            error: None,
            created_at: 0,
        };
        let mdir = q.state.machine(&m.name);
        let args = q.qemu_args(&m, &mdir, &img).unwrap();
        let paths = [
            img.kernel(),
            img.initrd(),
            mdir.join("disk.qcow2"),
            seed.clone(),
            mdir.join("ctl.sock"),
            mdir.join("qmp.sock"),
            mdir.join("logs/console.log"),
            ws.clone(),
        ];
        for p in &paths {
            let p = p.to_str().unwrap();
            // Exactly one option string holds it, and QEMU reads it back whole.
            let holders: Vec<&String> =
                args.iter().filter(|a| a.contains(&opt_escape(p))).collect();
            assert_eq!(holders.len(), 1, "{p} in {args:?}");
            let opts = parse_opts(holders[0]);
            assert!(
                opts.iter()
                    .any(|o| o.split_once('=').is_some_and(|(_, v)| v == p)),
                "{p} not read back from {:?}: {opts:?}",
                holders[0]
            );
            assert!(
                !opts.iter().any(|o| o == "id=x"),
                "{p} injected an option: {opts:?}"
            );
        }
        // Nothing takes a path verbatim (the legacy `file:`/`unix:` forms, -kernel, -initrd).
        for legacy in ["-kernel", "-initrd", "-qmp"] {
            assert!(!args.iter().any(|a| a == legacy), "{legacy} in {args:?}");
        }
        assert!(
            !args
                .iter()
                .any(|a| a.starts_with("file:") || a.starts_with("unix:")),
            "{args:?}"
        );
        let virtfs = &args[args.iter().position(|a| a == "-virtfs").unwrap() + 1];
        let opts = parse_opts(virtfs);
        assert!(
            opts.contains(&"security_model=mapped-xattr".to_string()),
            "{opts:?}"
        );
        assert_eq!(
            opts.iter()
                .filter(|o| o.starts_with("security_model="))
                .count(),
            1
        );
        let net = &args[args.iter().position(|a| a == "-netdev").unwrap() + 1];
        let opts = parse_opts(net);
        assert!(opts.contains(&"ipv6=off".to_string()), "{opts:?}");
        assert!(
            opts.contains(&"hostfwd=tcp:127.0.0.1:5000-:7300".to_string()),
            "{opts:?}"
        );
        assert!(
            !opts.iter().any(|o| o.starts_with("restrict=")
                || o.starts_with("guestfwd=")
                || o.starts_with("smb=")),
            "{opts:?}"
        );
    }

    #[test]
    fn the_host_filter_rejects_the_vm_cgroup_and_the_taps() {
        let r = nft_ruleset("porthole-qemu", 1);
        for rule in [
            "delete table inet porthole_qemu",
            r#"socket cgroupv2 level 1 "porthole-qemu" jump vm"#,
            "ct state established,related accept",
            "fib daddr type { local, broadcast, multicast } counter reject",
            "169.254.0.0/16",
            r#"iifname "phq*" ct state established,related accept"#,
            r#"iifname "phq*" counter reject"#,
            r#"oifname "phq*" counter reject"#,
        ] {
            assert!(r.contains(rule), "{rule} missing from\n{r}");
        }
        // Replies first, then the DNS exception, then the refusals.
        let at = |x: &str| r.find(x).unwrap();
        assert!(at("established,related accept") < at("th dport 53 accept"));
        assert!(at("th dport 53 accept") < at("fib daddr type {"));
        // The syntax, checked by nft itself where it can (root).
        if super::super::local::is_root() && which("nft").is_some() {
            let mut c = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), nft_ruleset(".", 1).as_bytes())
                .unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft -c: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    #[test]
    fn an_ordinary_users_vm_namespace_refuses_the_hosts_addresses() {
        let host = ["192.0.2.7".parse().unwrap(), "10.215.3.1".parse().unwrap()];
        let r = user_net_ruleset(&host);
        for rule in [
            "ct state established,related accept",
            "ip daddr 10.216.0.3 meta l4proto { tcp, udp } th dport 53 accept",
            "fib daddr type { local, broadcast, multicast } counter reject",
            "10.216.0.0/24, 169.254.0.0/16, 10.213.0.0/16, 10.215.0.0/16, 192.0.2.7, 10.215.3.1 }",
            "meta nfproto ipv6 counter reject",
        ] {
            assert!(r.contains(rule), "{rule} missing from\n{r}");
        }
        let at = |x: &str| r.find(x).unwrap();
        assert!(at("th dport 53 accept") < at("fib daddr type {"));
        // The syntax, checked by nft itself where it can (root; the table is never loaded).
        if super::super::local::is_root() && which("nft").is_some() {
            let mut c = std::process::Command::new("nft")
                .args(["-c", "-f", "-"])
                .stdin(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
            std::io::Write::write_all(&mut c.stdin.take().unwrap(), r.as_bytes()).unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "nft -c: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert!(!host_ipv4_addrs().iter().any(|a| a.is_loopback()));
    }

    /// As root: the real filter, loaded, keeps a process of the VM cgroup off a listener on
    /// 127.0.0.1 (and on this host's other addresses) while others reach it.
    #[tokio::test]
    async fn the_host_filter_keeps_the_vm_cgroup_off_this_hosts_listeners() {
        if !super::super::local::is_root() || which("nft").is_none() {
            eprintln!("skipped: needs root and nft");
            return;
        }
        let f = host_filter().await.unwrap();
        let l = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let try_connect = |addr: String, confined: bool| {
            let mut c = tokio::process::Command::new("bash");
            c.arg("-c").arg(format!("exec 3<>/dev/tcp/{addr}/{port}"));
            c.stderr(std::process::Stdio::null());
            if confined {
                f.confine(&mut c);
            }
            async move { c.status().await.unwrap().success() }
        };
        let mut addrs = vec!["127.0.0.1".to_string(), "127.0.0.2".to_string()];
        // This host's own non-loopback address, when it has one.
        if let Ok(u) = std::net::UdpSocket::bind("0.0.0.0:0") {
            if u.connect("192.0.2.1:9").is_ok() {
                if let Ok(a) = u.local_addr() {
                    addrs.push(a.ip().to_string());
                }
            }
        }
        for a in addrs {
            assert!(
                try_connect(a.clone(), false).await,
                "{a}: unreachable even unconfined"
            );
            assert!(
                !try_connect(a.clone(), true).await,
                "{a}: reached from the VM cgroup"
            );
        }
    }

    #[test]
    fn recipe_hash_names_the_recipe() {
        assert_eq!(recipe_hash().len(), 64);
        assert_ne!(recipe_hash(), hex(&Sha256::digest(b"")));
    }

    #[test]
    fn a_stale_or_damaged_image_is_refused_with_the_reason() {
        let d = tempfile::tempdir().unwrap();
        let q = Qemu::new(StateDir::at(d.path()));
        std::env::remove_var("PORTHOLE_IMAGE_DIR");
        assert!(q.cached_image().unwrap().is_none());
        let dir = d.path().join("images").join(recipe_hash());
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("recipe.sha256"), "0000").unwrap();
        assert!(q
            .cached_image()
            .unwrap_err()
            .to_string()
            .contains("does not match"));
        std::fs::write(dir.join("recipe.sha256"), recipe_hash()).unwrap();
        std::fs::write(dir.join("vmlinuz"), "k").unwrap();
        std::fs::write(dir.join("initrd.img"), "i").unwrap();
        std::fs::write(dir.join("rootfs.qcow2"), "not qcow2").unwrap();
        assert!(q
            .cached_image()
            .unwrap_err()
            .to_string()
            .contains("not a qcow2"));
        std::fs::write(dir.join("rootfs.qcow2"), b"QFI\xfb....").unwrap();
        assert_eq!(q.cached_image().unwrap().unwrap().hash, recipe_hash());
    }
}
