//! QEMU VMs: a reproducible guest image (qcow2 base, kernel, initramfs) shared by all
//! machines, a per-machine qcow2 overlay, and a read-only seed disk carrying the guest agent
//! and the guest's init. The agent is reached through forwarded loopback ports (TCP for HTTP,
//! one UDP port for WebRTC); the host talks to the guest's init over a virtio-serial port to
//! hand it a token and an identity, and to QEMU over QMP to pause and save it.
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

    fn qemu_args(&self, m: &Machine, mdir: &Path, img: &Image) -> Vec<String> {
        let s = &m.spec;
        let accel = s["accel"].as_str().unwrap_or("tcg");
        let (hp, up) = (
            s["host_port"].as_u64().unwrap_or(0),
            s["udp_port"].as_u64().unwrap_or(0),
        );
        let tap = s["tap_index"].as_u64();
        let p = |x: &Path| x.to_string_lossy().to_string();
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("porthole-{}", m.name),
            "-machine".into(),
            "q35".into(),
            "-accel".into(),
            if accel == "tcg" { "tcg,thread=multi".into() } else { accel.to_string() },
            "-cpu".into(),
            if accel == "tcg" { "max".into() } else { "host".into() },
            "-smp".into(),
            s["cpus"].as_u64().unwrap_or(2).to_string(),
            "-m".into(),
            s["memory_mb"].as_u64().unwrap_or(2048).to_string(),
            "-kernel".into(),
            p(&img.kernel()),
            "-initrd".into(),
            p(&img.initrd()),
            "-append".into(),
            "root=/dev/vda rw console=ttyS0 init=/usr/sbin/porthole-init quiet panic=-1".into(),
            "-drive".into(),
            format!("file={},if=virtio,format=qcow2,cache=writeback,discard=unmap", p(&mdir.join("disk.qcow2"))),
            "-drive".into(),
            format!("file={},if=virtio,format=raw,readonly=on", s["seed"].as_str().unwrap_or_default()),
            "-netdev".into(),
            match tap {
                // Outbound only: the host reaches the guest through the tap.
                Some(_) => "user,id=n0".to_string(),
                None => format!("user,id=n0,hostfwd=tcp:127.0.0.1:{hp}-:{GUEST_AGENT_PORT},hostfwd=udp:127.0.0.1:{up}-:{up}"),
            },
            "-device".into(),
            "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56".into(),
            "-device".into(),
            "virtio-rng-pci".into(),
            "-device".into(),
            "virtio-serial-pci".into(),
            "-chardev".into(),
            format!("socket,id=ctl,path={},server=on,wait=off", p(&mdir.join("ctl.sock"))),
            "-device".into(),
            "virtserialport,chardev=ctl,name=org.porthole.ctl".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p(&mdir.join("qmp.sock"))),
            "-serial".into(),
            format!("file:{}", p(&mdir.join("logs/console.log"))),
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
            a.push("-virtfs".into());
            a.push(format!(
                "local,path={ws},mount_tag=workspace,security_model=none,id=ws"
            ));
        }
        a
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
        let mut args = self.qemu_args(m, &mdir, &img);
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
        let mut child = tokio::process::Command::new("qemu-system-x86_64")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().map_err(io("log"))?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(io("start qemu-system-x86_64"))?;
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
            let mut lines = vec![
                ("token", token),
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
            ];
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
                Some(std::fs::canonicalize(w).map_err(io(format!("workspace {}", w.display())))?)
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
        std::fs::create_dir_all(ms.state.keys()).map_err(io("create keys dir"))?;
        std::fs::write(&m.token_path, random_token()).map_err(io("write token"))?;
        std::fs::set_permissions(&m.token_path, std::fs::Permissions::from_mode(0o600))
            .map_err(io("chmod token"))?;
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
