//! Machine start-up benchmark: claim → agent ready and claim → first video frame, for a cold
//! local sandbox, a sandbox from a snapshot, a warm-pool claim, and (with `--qemu`) a cold QEMU
//! VM, a VM resumed from a memory snapshot and a warm-pool claim of such VMs. Also the memory
//! of an idle machine. Medians over `--runs` (default 5; QEMU 3) in a temporary state dir.
//! With `--image` (root, podman): a local sandbox from an environment's Dockerfile — a cold
//! build + boot (a Dockerfile no cache has seen), a cached create (the same Dockerfile), and a
//! create from a snapshot of an image machine. The base image is busybox alone, imported.
//!
//! "First frame" is the first complete H.264 access unit (a keyframe) assembled by the app's
//! own WebRTC client (`live::LiveSession`, what the desktop app uses); decoding it adds ~2 ms.
//!
//! cargo run -p porthole-core --example machine_bench [-- --runs 5 --qemu --image]
//! (needs the porthole-agent binary: PORTHOLE_AGENT_BIN or next to this example's target dir;
//! QEMU needs the guest image: PORTHOLE_IMAGE_DIR, built on first use as root.)

use porthole_core::live::LiveSession;
use porthole_core::machine::{CreateSpec, Machine, Machines, ProviderKind};
use porthole_core::paths::StateDir;
use std::time::{Duration, Instant};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[v.len() / 2]
}

/// Connects the app's WebRTC client and waits for the first keyframe: ms since `t0`.
async fn first_frame(ms: &Machines, m: &Machine, t0: Instant) -> f64 {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let live = LiveSession::connect(
        ms.client(m).expect("client"),
        move |f| {
            if f.keyframe {
                let _ = tx.send(());
            }
            false
        },
        |_| {},
    )
    .await
    .expect("live connect");
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("no frame within 30 s");
    let t = t0.elapsed().as_secs_f64() * 1000.0;
    live.close().await;
    t
}

/// Resident memory of a machine's processes (its process group), in MiB: PSS where readable.
fn idle_mib(m: &Machine) -> f64 {
    let Some(pgid) = m.pid else { return f64::NAN };
    let mut kib = 0u64;
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: getpgid has no memory preconditions.
        if unsafe { libc::getpgid(pid) } != pgid as i32 {
            continue;
        }
        let roll = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
        kib += roll
            .lines()
            .find(|l| l.starts_with("Pss:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
    }
    kib as f64 / 1024.0
}

struct Row {
    what: &'static str,
    ready: Vec<f64>,
    frame: Vec<f64>,
}

impl Row {
    fn new(what: &'static str) -> Self {
        Self {
            what,
            ready: vec![],
            frame: vec![],
        }
    }
    fn print(&mut self) {
        println!(
            "{:<34} n={:<2} claim→ready p50 {:>8.0} ms   claim→first frame p50 {:>8.0} ms",
            self.what,
            self.ready.len(),
            median(&mut self.ready),
            median(&mut self.frame)
        );
    }
}

async fn measure(ms: &Machines, row: &mut Row, spec: CreateSpec) -> Machine {
    let t0 = Instant::now();
    let m = ms.create(spec).await.expect("create");
    row.ready.push(t0.elapsed().as_secs_f64() * 1000.0);
    row.frame.push(first_frame(ms, &m, t0).await);
    m
}

async fn bench(ms: &Machines, kind: ProviderKind, runs: usize) {
    let p = kind.as_str();
    let spec = |name: String| CreateSpec {
        name,
        provider: Some(kind),
        ..Default::default()
    };
    let mut cold = Row::new(if kind == ProviderKind::Qemu {
        "qemu cold (TCG here)"
    } else {
        "local sandbox cold"
    });
    let mut idle = vec![];
    for i in 0..runs {
        let m = measure(ms, &mut cold, spec(format!("{p}-cold-{i}"))).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        if let Some(fresh) = ms.get(&m.name).await.ok() {
            idle.push(idle_mib(&fresh));
        }
        if i + 1 < runs {
            ms.destroy(&m.name).await.expect("destroy");
        }
    }
    cold.print();
    println!(
        "{:<34} idle machine memory p50 {:.0} MiB (PSS of its process group)",
        "",
        median(&mut idle)
    );

    let src = format!("{p}-cold-{}", runs - 1);
    ms.snapshot(&src, &format!("{p}-snap"))
        .await
        .expect("snapshot");
    if kind == ProviderKind::Qemu {
        // One VM at a time on small machines.
        ms.stop(&src).await.expect("stop");
    }
    let mut snap = Row::new(if kind == ProviderKind::Qemu {
        "qemu from memory snapshot"
    } else {
        "local sandbox from snapshot"
    });
    for i in 0..runs {
        let mut s = spec(format!("{p}-snap-{i}"));
        s.from_snapshot = Some(format!("{p}-snap"));
        let m = measure(ms, &mut snap, s).await;
        ms.destroy(&m.name).await.expect("destroy");
    }
    snap.print();

    let mut pool = Row::new(if kind == ProviderKind::Qemu {
        "qemu warm-pool claim"
    } else {
        "local warm-pool claim"
    });
    for i in 0..runs {
        porthole_core::pool::fill(ms, &format!("{p}-snap"), 1)
            .await
            .expect("pool fill");
        let t0 = Instant::now();
        let (m, _) =
            porthole_core::pool::claim(ms, &format!("{p}-snap"), &format!("{p}-claim-{i}"))
                .await
                .expect("claim");
        pool.ready.push(t0.elapsed().as_secs_f64() * 1000.0);
        pool.frame.push(first_frame(ms, &m, t0).await);
        ms.destroy(&m.name).await.expect("destroy");
    }
    pool.print();
    for m in ms.list().await.unwrap() {
        let _ = ms.destroy(&m.name).await;
    }
}

/// A repository whose `.cursor/environment.json` builds `dockerfile`.
fn image_repo(root: &std::path::Path, name: &str, dockerfile: &str) -> std::path::PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join(".cursor")).unwrap();
    std::fs::write(dir.join(".cursor/Dockerfile"), dockerfile).unwrap();
    std::fs::write(
        dir.join(".cursor/environment.json"),
        r#"{"build": {"dockerfile": "Dockerfile", "context": "."}}"#,
    )
    .unwrap();
    dir
}

async fn bench_image(ms: &Machines, work: &std::path::Path, runs: usize) {
    let sh = |c: &str| {
        let st = std::process::Command::new("sh")
            .args(["-c", c])
            .status()
            .unwrap();
        assert!(st.success(), "{c}");
    };
    let base = format!("localhost/porthole-bench-base:{}", std::process::id());
    let root = work.join("base");
    sh(&format!(
        "mkdir -p {r}/bin {r}/etc {r}/tmp && cp /bin/busybox {r}/bin/ && for a in $(/bin/busybox --list); do [ $a = busybox ] || ln -s busybox {r}/bin/$a; done && tar -C {r} -c . | podman import - {base} >/dev/null",
        r = root.display()
    ));
    let spec = |name: String, ws: std::path::PathBuf| CreateSpec {
        name,
        provider: Some(ProviderKind::Local),
        workspace: Some(ws),
        ..Default::default()
    };
    let df = |tag: &str| {
        format!("FROM {base}\nRUN echo {tag} > /etc/bench && mkdir -p /usr/local/bin && cp /bin/busybox /usr/local/bin/tool\n")
    };
    let mut cold = Row::new("image: cold build + boot");
    for i in 0..runs {
        let ws = image_repo(
            work,
            &format!("cold-{i}"),
            &df(&format!("cold-{i}-{}", std::process::id())),
        );
        let m = measure(ms, &mut cold, spec(format!("img-cold-{i}"), ws)).await;
        ms.destroy(&m.name).await.expect("destroy");
    }
    cold.print();
    let mut cached = Row::new("image: cached create");
    for i in 0..runs {
        let ws = image_repo(work, &format!("cached-{i}"), &df("cached"));
        let m = measure(ms, &mut cached, spec(format!("img-cached-{i}"), ws)).await;
        if i + 1 < runs {
            ms.destroy(&m.name).await.expect("destroy");
        }
    }
    cached.print();
    ms.snapshot(&format!("img-cached-{}", runs - 1), "img-snap")
        .await
        .expect("snapshot");
    let mut snap = Row::new("image: from snapshot");
    for i in 0..runs {
        let ws = work.join(format!("cached-{}", runs - 1));
        let mut s = spec(format!("img-snap-{i}"), ws);
        s.from_snapshot = Some("img-snap".into());
        let m = measure(ms, &mut snap, s).await;
        ms.destroy(&m.name).await.expect("destroy");
    }
    snap.print();
    for m in ms.list().await.unwrap() {
        let _ = ms.destroy(&m.name).await;
    }
    sh(&format!(
        "podman rmi -f {base} >/dev/null 2>&1; podman image prune -f >/dev/null 2>&1 || true"
    ));
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let runs = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(5usize);
    let qemu = args.iter().any(|a| a == "--qemu");
    let dir = tempfile::tempdir().unwrap();
    let ms = Machines::open(StateDir::at(dir.path()))
        .await
        .expect("state");
    println!(
        "machine_bench: {runs} runs each, state in {}",
        dir.path().display()
    );
    if args.iter().any(|a| a == "--image") {
        bench_image(&ms, dir.path(), runs).await;
        if args.iter().any(|a| a == "--image-only") {
            return;
        }
    }
    bench(&ms, ProviderKind::Local, runs).await;
    if qemu {
        bench(&ms, ProviderKind::Qemu, runs.min(3)).await;
    }
}
