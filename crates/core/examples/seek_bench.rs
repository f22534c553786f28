//! Replay seek benchmark: builds a 1-hour fragmented-MP4 recording quickly (a 60 s real H.264
//! encode at 1280x800, remuxed 60 times by stream copy), then measures opening its index and
//! seeking to random times (find the keyframe before t and read every access unit up to t, as
//! the UI needs them to show frame t).
//!
//! cargo run -p porthole-core --example seek_bench [-- --minutes 60 --seeks 200]

use porthole_core::replay::Index;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

fn pct(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |k: &str, d: u64| {
        args.iter()
            .position(|a| a == k)
            .and_then(|i| args.get(i + 1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(d)
    };
    let (minutes, seeks) = (arg("--minutes", 60), arg("--seeks", 200) as usize);
    let dir = std::env::temp_dir().join("porthole-seek-bench");
    std::fs::create_dir_all(&dir).unwrap();
    let short = dir.join("60s.mp4");
    let long = dir.join(format!("{minutes}min.mp4"));
    let ff = |args: &[&str]| {
        let ok = Command::new("ffmpeg")
            .args(["-v", "error", "-y"])
            .args(args)
            .status()
            .expect("ffmpeg")
            .success();
        assert!(ok, "ffmpeg {args:?}");
    };
    let t = Instant::now();
    if !short.exists() {
        ff(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc2=size=1280x800:rate=30:duration=60",
            "-c:v",
            "libx264",
            "-preset",
            "ultrafast",
            "-tune",
            "zerolatency",
            "-profile:v",
            "baseline",
            "-pix_fmt",
            "yuv420p",
            "-g",
            "60",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration",
            "1000000",
            short.to_str().unwrap(),
        ]);
    }
    if !long.exists() {
        ff(&[
            "-stream_loop",
            &(minutes - 1).to_string(),
            "-i",
            short.to_str().unwrap(),
            "-c",
            "copy",
            "-movflags",
            "frag_keyframe+empty_moov+default_base_moof",
            "-frag_duration",
            "1000000",
            long.to_str().unwrap(),
        ]);
    }
    println!(
        "synthesized {} ({:.0} MB) in {:.1} s",
        long.display(),
        std::fs::metadata(&long).unwrap().len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let mut opens = Vec::new();
    let mut ix = None;
    for _ in 0..5 {
        let t = Instant::now();
        ix = Some(Index::open(Path::new(&long)).unwrap());
        opens.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let ix = ix.unwrap();
    println!(
        "index: {} samples, {} keyframes, duration {:.1} min",
        ix.samples.len(),
        ix.keyframes_ms().len(),
        ix.duration_ms() as f64 / 60000.0
    );
    let mut f = std::fs::File::open(&long).unwrap();
    let mut lat = Vec::new();
    let mut frames = Vec::new();
    let mut seed = 0x9e3779b97f4a7c15u64;
    for _ in 0..seeks {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let target = seed % ix.duration_ms().max(1);
        let t = Instant::now();
        let k = ix.seek(target);
        let end = ix.samples.partition_point(|s| s.t_ms <= target).max(k + 1);
        let mut bytes = 0;
        for i in k..end {
            bytes += ix.read(&mut f, i).unwrap().len();
        }
        lat.push(t.elapsed().as_secs_f64() * 1000.0);
        frames.push((end - k) as f64);
        std::hint::black_box(bytes);
    }
    println!("open index: p50 {:.1} ms (5 runs)", pct(&mut opens, 0.5));
    println!("seek (keyframe + frames up to t): p50 {:.2} ms, p95 {:.2} ms over {seeks} random seeks; frames read p50 {:.0}",
        pct(&mut lat.clone(), 0.5), pct(&mut lat, 0.95), pct(&mut frames, 0.5));
    println!("target: seek <= 150 ms (index opened once per replay)");
}
