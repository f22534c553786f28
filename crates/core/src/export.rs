//! Evidence export: a folder any browser opens (index.html with the clip, the timeline of
//! actions and logs with click-to-seek, screenshots at each action), plus `summary.md` to
//! paste into a pull request. Video is copied or cut with stream copy: never re-encoded.

use crate::error::{CoreError, Result};
use crate::machine::Machines;
use serde::Serialize;
use std::path::{Path, PathBuf};

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub dir: PathBuf,
    pub html: PathBuf,
    pub summary: PathBuf,
    pub events: usize,
    pub screenshots: usize,
    pub video: Option<PathBuf>,
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// One line describing an event for the timeline and the summary.
pub fn describe(e: &porthole_proto::Event) -> String {
    let d = &e.data;
    match e.kind.as_str() {
        "action" => {
            let a = d["action"].as_str().unwrap_or("?");
            let mut s = a.to_string();
            if let Some(c) = d["coordinate"].as_array() {
                s += &format!(
                    " at ({}, {})",
                    c.first().unwrap_or(&0.into()),
                    c.get(1).unwrap_or(&0.into())
                );
            }
            if let Some(t) = d["text"].as_str() {
                s += &format!(" \"{}\"", t.chars().take(60).collect::<String>());
            }
            s
        }
        "terminal" => format!(
            "[{}] {}",
            d["name"].as_str().unwrap_or(""),
            d["text"]
                .as_str()
                .unwrap_or("")
                .trim_end()
                .chars()
                .take(160)
                .collect::<String>()
        ),
        "step" => format!(
            "{} {}{}",
            d["step"].as_str().unwrap_or(""),
            d["state"].as_str().unwrap_or(""),
            d["exit_code"]
                .as_i64()
                .map(|c| format!(" (exit {c})"))
                .unwrap_or_default()
        ),
        "control" => format!("control: {}", d["action"].as_str().unwrap_or("")),
        "refused" => format!("refused: {}", d["reason"].as_str().unwrap_or("")),
        "input" => format!("human {}", d["device"].as_str().unwrap_or("input")),
        "exec" => format!(
            "exec `{}` → {}",
            d["command"].as_str().unwrap_or(""),
            d["exit_code"]
        ),
        "port" => format!("port {} {}", d["port"], d["state"].as_str().unwrap_or("")),
        other => other.to_string(),
    }
}

fn fmt_t(ms: u64) -> String {
    format!(
        "{:02}:{:02}.{:03}",
        ms / 60_000,
        (ms / 1000) % 60,
        ms % 1000
    )
}

pub async fn export(
    ms: &Machines,
    session: &str,
    out: &Path,
    from_ms: Option<u64>,
    to_ms: Option<u64>,
) -> Result<ExportReport> {
    let row: Option<(String, i64, i64)> =
        sqlx::query_as("SELECT machine, started_at, duration_ms FROM sessions WHERE id = ?")
            .bind(session)
            .fetch_optional(&ms.store.pool)
            .await?;
    let (machine, started_at, duration) = row.ok_or_else(|| {
        CoreError::Invalid(format!(
            "no synced session '{session}': run `porthole recordings sync MACHINE` first"
        ))
    })?;
    if let (Some(a), Some(b)) = (from_ms, to_ms) {
        if a >= b {
            return Err(CoreError::Invalid(format!(
                "--from-ms {a} must be before --to-ms {b}"
            )));
        }
    }
    let events = crate::sync::events(&ms.store, session, from_ms, to_ms).await?;
    std::fs::create_dir_all(out.join("screenshots"))
        .map_err(CoreError::io(format!("create {}", out.display())))?;
    let src = ms.state.recordings().join(session);
    // The clip: part 1, cut by stream copy when a range is asked for. A session whose display
    // changed size has more parts: they are joined into one video at part 1's size (re-encoded,
    // letterboxed), so a reviewer sees all of it.
    let part = src.join("video-0001.mp4");
    let mut video = None;
    let parts: Vec<PathBuf> = (1..)
        .map(|k| src.join(format!("video-{k:04}.mp4")))
        .take_while(|p| p.exists())
        .collect();
    if parts.len() > 1 {
        let dst = out.join("video.mp4");
        join_parts(&parts, from_ms, to_ms, &dst).await?;
        video = Some(dst);
    } else if part.exists() {
        let dst = out.join("video.mp4");
        if from_ms.is_none() && to_ms.is_none() {
            std::fs::copy(&part, &dst).map_err(CoreError::io("copy video"))?;
            video = Some(dst);
        } else {
            let mut c = tokio::process::Command::new("ffmpeg");
            c.args(["-v", "error", "-y"]);
            if let Some(f) = from_ms {
                c.args(["-ss", &format!("{:.3}", f as f64 / 1000.0)]);
            }
            c.arg("-i").arg(&part);
            duration_arg(&mut c, from_ms, to_ms);
            c.args(["-c", "copy", "-movflags", "+faststart"]).arg(&dst);
            run_ffmpeg(c, "cutting the clip").await?;
            video = Some(dst);
        }
    }
    let mut shots = 0;
    let mut rows = String::new();
    let mut md_steps = String::new();
    let offset = from_ms.unwrap_or(0);
    for e in &events {
        let mut imgs = String::new();
        if e.kind == "action" {
            for which in ["before", "after"] {
                let name = format!("{}-{which}.jpg", e.seq);
                let p = src.join("thumbs").join(&name);
                if p.exists() {
                    std::fs::copy(&p, out.join("screenshots").join(&name))
                        .map_err(CoreError::io("copy screenshot"))?;
                    imgs += &format!(
                        "<img src=\"screenshots/{name}\" alt=\"{which}\" title=\"{which}\">"
                    );
                    shots += 1;
                }
            }
            md_steps += &format!("- `{}` {}\n", fmt_t(e.t_ms), describe(e));
        }
        rows += &format!(
            "<tr class=\"{k}\" data-t=\"{t}\"><td class=\"t\">{ts}</td><td>{actor}</td><td>{k}</td><td>{d}{imgs}</td></tr>\n",
            k = esc(&e.kind),
            t = e.t_ms.saturating_sub(offset),
            ts = fmt_t(e.t_ms),
            actor = serde_json::to_value(e.actor).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default(),
            d = esc(&describe(e)),
        );
    }
    std::fs::write(
        out.join("events.json"),
        serde_json::to_vec_pretty(&events).unwrap_or_default(),
    )
    .map_err(CoreError::io("write events.json"))?;
    // The environment the machine ran (names of secrets only: values never leave the vault).
    if let Ok(m) = ms.get(&machine).await {
        if let Some(env) = m.spec["env"].as_str() {
            let _ = std::fs::copy(env, out.join("environment.json"));
        }
    }
    // The id came from the guest: escaped like everything else it sent.
    let title = esc(&format!("Porthole session {session}"));
    let html = format!(
        r#"<!doctype html><html><head><meta charset="utf-8"><title>{title}</title><style>
body{{font:14px system-ui,sans-serif;margin:0;background:#0f1115;color:#e6e6e6}}header{{padding:12px 20px;border-bottom:1px solid #2a2f3a}}
main{{display:grid;grid-template-columns:minmax(0,3fr) minmax(0,2fr);gap:16px;padding:16px 20px}}video{{width:100%;background:#000;border-radius:6px}}
table{{width:100%;border-collapse:collapse}}td{{padding:4px 6px;border-bottom:1px solid #222;vertical-align:top}}td.t{{font-family:monospace;color:#8ab4f8;cursor:pointer;white-space:nowrap}}
tr.action td{{color:#ffd27f}}tr.terminal td{{color:#b5c0cf;font-family:monospace;font-size:12px}}img{{height:60px;margin:4px 4px 0 0;border:1px solid #333;border-radius:3px}}
.list{{max-height:80vh;overflow:auto}}</style></head><body><header><h2 style="margin:0">{title}</h2>
<div>machine {machine} · started {started_at} (unix ms) · {dur} · {n} events · {shots} screenshots</div></header>
<main><div>{video_tag}</div><div class="list"><table>{rows}</table></div></main>
<script>document.querySelectorAll('tr[data-t]').forEach(r=>r.addEventListener('click',()=>{{const v=document.querySelector('video');if(v){{v.currentTime=r.dataset.t/1000;v.play()}}}}));</script>
</body></html>"#,
        machine = esc(&machine),
        dur = fmt_t(duration as u64),
        n = events.len(),
        video_tag = if video.is_some() {
            "<video src=\"video.mp4\" controls muted></video>"
        } else {
            "<p>No video recorded.</p>"
        },
    );
    let html_path = out.join("index.html");
    std::fs::write(&html_path, html).map_err(CoreError::io("write index.html"))?;
    let summary = format!(
        "## Porthole evidence: session `{session}`\n\nMachine `{machine}`, {dur} recorded, {n} events, {shots} screenshots.\n\n### Agent actions\n{steps}\nOpen `index.html` in the exported folder to replay the clip with the timeline (click a time to seek).\n",
        dur = fmt_t(duration as u64),
        n = events.len(),
        steps = if md_steps.is_empty() { "- (none)\n".to_string() } else { md_steps },
    );
    let summary_path = out.join("summary.md");
    std::fs::write(&summary_path, summary).map_err(CoreError::io("write summary.md"))?;
    Ok(ExportReport {
        dir: out.to_path_buf(),
        html: html_path,
        summary: summary_path,
        events: events.len(),
        screenshots: shots,
        video,
    })
}

/// Joins recording parts of different sizes into one H.264 MP4 at the first part's size.
async fn join_parts(
    parts: &[PathBuf],
    from_ms: Option<u64>,
    to_ms: Option<u64>,
    dst: &Path,
) -> Result<()> {
    let first = crate::replay::Index::open(&parts[0])?;
    let (w, h) = (first.width, first.height);
    let mut c = tokio::process::Command::new("ffmpeg");
    c.args(["-v", "error", "-y"]);
    for p in parts {
        c.arg("-i").arg(p);
    }
    let mut graph = String::new();
    for i in 0..parts.len() {
        graph += &format!(
            "[{i}:v]scale={w}:{h}:force_original_aspect_ratio=decrease,pad={w}:{h}:(ow-iw)/2:(oh-ih)/2,setsar=1[v{i}];"
        );
    }
    for i in 0..parts.len() {
        graph += &format!("[v{i}]");
    }
    graph += &format!("concat=n={}:v=1:a=0[out]", parts.len());
    c.args(["-filter_complex", &graph, "-map", "[out]"]);
    if let Some(f) = from_ms {
        c.args(["-ss", &format!("{:.3}", f as f64 / 1000.0)]);
    }
    duration_arg(&mut c, from_ms, to_ms);
    c.args([
        "-c:v",
        "libx264",
        "-preset",
        "veryfast",
        "-pix_fmt",
        "yuv420p",
        "-movflags",
        "+faststart",
    ])
    .arg(dst);
    run_ffmpeg(c, "joining the recording's parts").await
}

/// `-t` for a clip that ends at `to_ms` (from `from_ms`, else the start).
fn duration_arg(c: &mut tokio::process::Command, from_ms: Option<u64>, to_ms: Option<u64>) {
    if let Some(t) = to_ms {
        c.args([
            "-t",
            &format!("{:.3}", (t - from_ms.unwrap_or(0)) as f64 / 1000.0),
        ]);
    }
}

/// Runs ffmpeg; a failure names `what` and ffmpeg's own message.
async fn run_ffmpeg(mut c: tokio::process::Command, what: &str) -> Result<()> {
    let o = c
        .output()
        .await
        .map_err(CoreError::io("run ffmpeg (is it installed?)"))?;
    if !o.status.success() {
        return Err(CoreError::Invalid(format!(
            "{what} failed: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(p: &Path, size: &str, secs: u32) {
        let st = std::process::Command::new("ffmpeg")
            .args(["-v", "error", "-y", "-f", "lavfi", "-i"])
            .arg(format!("testsrc=size={size}:rate=30:duration={secs}"))
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-pix_fmt",
                "yuv420p",
                "-bf",
                "0",
            ])
            .args(["-movflags", "frag_keyframe+empty_moov+default_base_moof"])
            .arg(p)
            .status()
            .expect("ffmpeg");
        assert!(st.success());
    }

    fn probe(p: &Path) -> (u32, u32, f64) {
        let o = std::process::Command::new("ffprobe")
            .args(["-v", "error", "-select_streams", "v:0", "-show_entries"])
            .args(["stream=width,height:format=duration", "-of", "csv=p=0:nk=1"])
            .arg(p)
            .output()
            .expect("ffprobe");
        let text = String::from_utf8_lossy(&o.stdout);
        let v: Vec<&str> = text.split_whitespace().flat_map(|l| l.split(',')).collect();
        (
            v[0].parse().unwrap(),
            v[1].parse().unwrap(),
            v[2].parse().unwrap(),
        )
    }

    #[tokio::test]
    async fn parts_of_different_sizes_join_into_one_video_at_the_first_size() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (
            dir.path().join("video-0001.mp4"),
            dir.path().join("video-0002.mp4"),
        );
        part(&a, "320x240", 2);
        part(&b, "160x160", 1);
        let out = dir.path().join("video.mp4");
        join_parts(&[a.clone(), b.clone()], None, None, &out)
            .await
            .unwrap();
        let (w, h, d) = probe(&out);
        assert_eq!((w, h), (320, 240));
        assert!((d - 3.0).abs() < 0.2, "duration {d}");
        join_parts(&[a, b], Some(1500), Some(2500), &out)
            .await
            .unwrap();
        let (_, _, d) = probe(&out);
        assert!((d - 1.0).abs() < 0.2, "cut duration {d}");
    }
}
