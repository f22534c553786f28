//! The replay model: an index of every sample of a fragmented MP4 recording (time, offset,
//! size, keyframe) read from the `moof` boxes only, so seeking is a binary search plus reading
//! the access units from the preceding keyframe. Samples come back as Annex-B access units for
//! the UI's WebCodecs decoder (the same path as live); nothing is decoded here.

use crate::error::{CoreError, Result};
use bytes::Bytes;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub t_ms: u64,
    pub offset: u64,
    pub size: u32,
    pub keyframe: bool,
}

#[derive(Debug, Clone)]
pub struct Index {
    pub path: PathBuf,
    pub timescale: u32,
    pub width: u32,
    pub height: u32,
    /// SPS and PPS (without start codes), from `avcC`.
    pub parameter_sets: Vec<Vec<u8>>,
    pub nal_length_size: usize,
    pub samples: Vec<Sample>,
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}
fn be64(b: &[u8]) -> u64 {
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// Iterates the boxes in `data`: (type, body).
fn boxes(mut data: &[u8]) -> Vec<([u8; 4], &[u8])> {
    let mut out = Vec::new();
    while data.len() >= 8 {
        let mut size = be32(data) as usize;
        let ty = [data[4], data[5], data[6], data[7]];
        let mut hdr = 8;
        if size == 1 && data.len() >= 16 {
            size = be64(&data[8..]) as usize;
            hdr = 16;
        } else if size == 0 {
            size = data.len();
        }
        if size < hdr || size > data.len() {
            break;
        }
        out.push((ty, &data[hdr..size]));
        data = &data[size..];
    }
    out
}

fn find<'a>(data: &'a [u8], path: &[&[u8; 4]]) -> Option<&'a [u8]> {
    let (first, rest) = path.split_first()?;
    let (_, body) = boxes(data).into_iter().find(|(t, _)| t == *first)?;
    if rest.is_empty() {
        Some(body)
    } else {
        find(body, rest)
    }
}

struct Trex {
    duration: u32,
    size: u32,
    flags: u32,
}

fn parse_moov(moov: &[u8], ix: &mut Index) -> Result<Trex> {
    let bad = |m: &str| CoreError::Invalid(format!("{}: {m}", ix.path.display()));
    let mdhd = find(moov, &[b"trak", b"mdia", b"mdhd"]).ok_or_else(|| bad("no mdhd"))?;
    ix.timescale = if mdhd[0] == 1 {
        be32(&mdhd[20..])
    } else {
        be32(&mdhd[12..])
    };
    let stsd =
        find(moov, &[b"trak", b"mdia", b"minf", b"stbl", b"stsd"]).ok_or_else(|| bad("no stsd"))?;
    // stsd: version/flags(4) count(4), then sample entries.
    let entries = boxes(&stsd[8..]);
    let (ty, avc1) = entries.first().ok_or_else(|| bad("empty stsd"))?;
    if ty != b"avc1" && ty != b"avc3" {
        return Err(bad(&format!(
            "codec {} is not H.264",
            String::from_utf8_lossy(ty)
        )));
    }
    // VisualSampleEntry: 6 reserved + 2 dref + 16 pre-defined, then width/height, ... 78 bytes.
    ix.width = u16::from_be_bytes([avc1[24], avc1[25]]) as u32;
    ix.height = u16::from_be_bytes([avc1[26], avc1[27]]) as u32;
    if let Some(avcc) = find(&avc1[78..], &[b"avcC"]) {
        ix.nal_length_size = (avcc[4] & 3) as usize + 1;
        let mut p = 5;
        let nsps = (avcc[p] & 0x1f) as usize;
        p += 1;
        for _ in 0..nsps {
            let n = u16::from_be_bytes([avcc[p], avcc[p + 1]]) as usize;
            ix.parameter_sets.push(avcc[p + 2..p + 2 + n].to_vec());
            p += 2 + n;
        }
        let npps = avcc[p] as usize;
        p += 1;
        for _ in 0..npps {
            let n = u16::from_be_bytes([avcc[p], avcc[p + 1]]) as usize;
            ix.parameter_sets.push(avcc[p + 2..p + 2 + n].to_vec());
            p += 2 + n;
        }
    }
    let trex = find(moov, &[b"mvex", b"trex"]);
    Ok(match trex {
        Some(t) => Trex {
            duration: be32(&t[12..]),
            size: be32(&t[16..]),
            flags: be32(&t[20..]),
        },
        None => Trex {
            duration: 0,
            size: 0,
            flags: 0,
        },
    })
}

fn is_sync(flags: u32) -> bool {
    // sample_is_non_sync_sample is bit 16 of the sample flags.
    flags & 0x0001_0000 == 0
}

fn parse_moof(moof: &[u8], moof_start: u64, trex: &Trex, ix: &mut Index) {
    let Some(traf) = find(moof, &[b"traf"]) else {
        return;
    };
    let mut base = moof_start;
    let (mut def_dur, mut def_size, mut def_flags) = (trex.duration, trex.size, trex.flags);
    let mut t = 0u64;
    for (ty, b) in boxes(traf) {
        match &ty {
            b"tfhd" => {
                let fl = be32(b) & 0xff_ffff;
                let mut p = 8;
                if fl & 1 != 0 {
                    base = be64(&b[p..]);
                    p += 8;
                }
                if fl & 2 != 0 {
                    p += 4;
                }
                if fl & 8 != 0 {
                    def_dur = be32(&b[p..]);
                    p += 4;
                }
                if fl & 0x10 != 0 {
                    def_size = be32(&b[p..]);
                    p += 4;
                }
                if fl & 0x20 != 0 {
                    def_flags = be32(&b[p..]);
                }
            }
            b"tfdt" => {
                t = if b[0] == 1 {
                    be64(&b[4..])
                } else {
                    be32(&b[4..]) as u64
                }
            }
            b"trun" => {
                let fl = be32(b) & 0xff_ffff;
                let n = be32(&b[4..]) as usize;
                let mut p = 8;
                let mut off = base;
                if fl & 1 != 0 {
                    off = (base as i64 + be32(&b[p..]) as i32 as i64) as u64;
                    p += 4;
                }
                let mut first_flags = None;
                if fl & 4 != 0 {
                    first_flags = Some(be32(&b[p..]));
                    p += 4;
                }
                for i in 0..n {
                    let mut dur = def_dur;
                    let mut size = def_size;
                    let mut flags = if i == 0 {
                        first_flags.unwrap_or(def_flags)
                    } else {
                        def_flags
                    };
                    let mut cto = 0i64;
                    if fl & 0x100 != 0 {
                        dur = be32(&b[p..]);
                        p += 4;
                    }
                    if fl & 0x200 != 0 {
                        size = be32(&b[p..]);
                        p += 4;
                    }
                    if fl & 0x400 != 0 {
                        flags = be32(&b[p..]);
                        p += 4;
                    }
                    if fl & 0x800 != 0 {
                        cto = be32(&b[p..]) as i32 as i64;
                        p += 4;
                    }
                    let pts = (t as i64 + cto).max(0) as u64;
                    ix.samples.push(Sample {
                        t_ms: pts * 1000 / ix.timescale.max(1) as u64,
                        offset: off,
                        size,
                        keyframe: is_sync(flags),
                    });
                    off += size as u64;
                    t += dur as u64;
                }
            }
            _ => {}
        }
    }
}

impl Index {
    /// Reads the box headers of a recording part (moov and every moof; mdat is skipped).
    pub fn open(path: &Path) -> Result<Self> {
        let mut f = File::open(path).map_err(CoreError::io(format!("open {}", path.display())))?;
        let len = f.metadata().map_err(CoreError::io("stat"))?.len();
        let mut ix = Index {
            path: path.to_path_buf(),
            timescale: 0,
            width: 0,
            height: 0,
            parameter_sets: vec![],
            nal_length_size: 4,
            samples: vec![],
        };
        let mut trex = None;
        let mut pos = 0u64;
        let mut hdr = [0u8; 16];
        while pos + 8 <= len {
            f.seek(SeekFrom::Start(pos))
                .map_err(CoreError::io("seek"))?;
            if f.read_exact(&mut hdr[..8]).is_err() {
                break;
            }
            let mut size = be32(&hdr) as u64;
            let ty = [hdr[4], hdr[5], hdr[6], hdr[7]];
            let mut h = 8;
            if size == 1 {
                if f.read_exact(&mut hdr[8..16]).is_err() {
                    break;
                }
                size = be64(&hdr[8..]);
                h = 16;
            } else if size == 0 {
                size = len - pos;
            }
            if size < h || pos + size > len {
                // A box cut short by a crash: everything before it is usable.
                break;
            }
            if &ty == b"moov" || &ty == b"moof" {
                let mut body = vec![0u8; (size - h) as usize];
                f.read_exact(&mut body).map_err(CoreError::io("read box"))?;
                if &ty == b"moov" {
                    trex = Some(parse_moov(&body, &mut ix)?);
                } else if let Some(t) = &trex {
                    parse_moof(&body, pos, t, &mut ix);
                }
            }
            pos += size;
        }
        if trex.is_none() {
            return Err(CoreError::Invalid(format!(
                "{}: not an MP4 recording (no moov)",
                path.display()
            )));
        }
        // Samples whose data lies past the end (the mdat was cut short) cannot be read.
        ix.samples.retain(|s| s.offset + s.size as u64 <= len);
        Ok(ix)
    }

    pub fn duration_ms(&self) -> u64 {
        self.samples.last().map(|s| s.t_ms).unwrap_or(0)
    }

    pub fn keyframes_ms(&self) -> Vec<u64> {
        self.samples
            .iter()
            .filter(|s| s.keyframe)
            .map(|s| s.t_ms)
            .collect()
    }

    /// Index of the last keyframe at or before `t_ms` (the first sample if none).
    pub fn seek(&self, t_ms: u64) -> usize {
        let n = self.samples.partition_point(|s| s.t_ms <= t_ms);
        (0..n)
            .rev()
            .find(|&i| self.samples[i].keyframe)
            .unwrap_or(0)
    }

    /// Reads sample `i` as an Annex-B access unit (parameter sets prepended to keyframes).
    pub fn read(&self, f: &mut File, i: usize) -> Result<Bytes> {
        let s = self.samples[i];
        let mut raw = vec![0u8; s.size as usize];
        f.seek(SeekFrom::Start(s.offset))
            .map_err(CoreError::io("seek"))?;
        f.read_exact(&mut raw)
            .map_err(CoreError::io("read sample"))?;
        let mut out = Vec::with_capacity(raw.len() + 64);
        if s.keyframe {
            for ps in &self.parameter_sets {
                out.extend_from_slice(&[0, 0, 0, 1]);
                out.extend_from_slice(ps);
            }
        }
        let mut p = 0;
        let n = self.nal_length_size;
        while p + n <= raw.len() {
            let len = raw[p..p + n]
                .iter()
                .fold(0usize, |a, b| (a << 8) | *b as usize);
            p += n;
            if p + len > raw.len() {
                break;
            }
            out.extend_from_slice(&[0, 0, 0, 1]);
            out.extend_from_slice(&raw[p..p + len]);
            p += len;
        }
        Ok(Bytes::from(out))
    }
}

/// A whole recording: its parts (a new one each time the display size changed), each index
/// moved onto the session clock (the muxer starts every part at 0; the agent's `recording`
/// `part` events say where each one starts).
#[derive(Debug, Clone)]
pub struct Recording {
    pub parts: Vec<Index>,
}

impl Recording {
    /// Opens `video-0001.mp4`, `video-0002.mp4`, ... in `dir`. `starts[k]` is the session time of
    /// part k+1's first frame when known; otherwise a part starts where the one before ended.
    pub fn open(dir: &Path, starts: &[Option<u64>]) -> Result<Self> {
        let mut parts: Vec<Index> = Vec::new();
        for k in 1.. {
            let path = dir.join(format!("video-{k:04}.mp4"));
            if !path.exists() {
                break;
            }
            let mut ix = Index::open(&path)?;
            let start = starts
                .get(k - 1)
                .copied()
                .flatten()
                .or_else(|| parts.last().map(|p| p.duration_ms() + 1))
                .unwrap_or(0);
            for s in &mut ix.samples {
                s.t_ms += start;
            }
            parts.push(ix);
        }
        if parts.is_empty() {
            return Err(CoreError::Invalid(format!(
                "no recording in {} (sync the machine's recordings first)",
                dir.display()
            )));
        }
        Ok(Self { parts })
    }

    /// Part starts from a session's events: `recording` events with `state: part`.
    pub fn starts_from_events(events: &[porthole_proto::Event]) -> Vec<Option<u64>> {
        let mut starts = Vec::new();
        for e in events {
            if e.kind != "recording" || e.data["state"] != "part" {
                continue;
            }
            let Some(n) = e.data["part"].as_u64().filter(|&n| n >= 1) else {
                continue;
            };
            let n = n as usize;
            if starts.len() < n {
                starts.resize(n, None);
            }
            // Recordings made before agents said `start_t_ms`: part 1 stays at 0 as it was.
            starts[n - 1] = e.data["start_t_ms"].as_u64().or((n > 1).then_some(e.t_ms));
        }
        starts
    }

    pub fn duration_ms(&self) -> u64 {
        self.parts.iter().map(Index::duration_ms).max().unwrap_or(0)
    }

    pub fn keyframes_ms(&self) -> Vec<u64> {
        self.parts.iter().flat_map(Index::keyframes_ms).collect()
    }

    /// The part to start from for `t_ms`: the last one whose first frame is at or before it.
    fn part_at(&self, t_ms: u64) -> usize {
        self.parts
            .iter()
            .rposition(|p| p.samples.first().is_some_and(|s| s.t_ms <= t_ms))
            .unwrap_or(0)
    }

    /// Sends frames from the keyframe before `from_ms`, the ones before `from_ms` at once (the
    /// decoder needs them) and the rest paced at `speed`, on through the following parts (each
    /// starts with a keyframe and its own parameter sets), until the end, `stop`, or `send`
    /// fails.
    pub fn play(
        &self,
        from_ms: u64,
        speed: f64,
        stop: &std::sync::atomic::AtomicBool,
        mut send: impl FnMut(crate::live::LiveFrame) -> bool,
    ) -> Result<()> {
        let start = std::time::Instant::now();
        let first = self.part_at(from_ms);
        for (k, ix) in self.parts.iter().enumerate().skip(first) {
            let mut f = File::open(&ix.path).map_err(CoreError::io("open recording"))?;
            let from = if k == first { ix.seek(from_ms) } else { 0 };
            for i in from..ix.samples.len() {
                if stop.load(std::sync::atomic::Ordering::SeqCst) {
                    return Ok(());
                }
                let s = ix.samples[i];
                if s.t_ms > from_ms {
                    let due = std::time::Duration::from_secs_f64(
                        (s.t_ms - from_ms) as f64 / 1000.0 / speed,
                    );
                    if let Some(wait) = due.checked_sub(start.elapsed()) {
                        std::thread::sleep(wait);
                    }
                }
                let data = ix.read(&mut f, i)?;
                let frame = crate::live::LiveFrame {
                    data,
                    keyframe: s.keyframe,
                    rtp_timestamp: (s.t_ms * 90) as u32,
                    t_ms: Some(s.t_ms),
                    received_unix_ms: 0,
                };
                if !send(frame) {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real fragmented MP4 made by ffmpeg the way the agent's recorder muxes it.
    fn make(dir: &Path, secs: u32) -> PathBuf {
        make_at(&dir.join("rec.mp4"), "320x240", secs)
    }

    fn make_at(p: &Path, size: &str, secs: u32) -> PathBuf {
        let p = p.to_path_buf();
        let st = std::process::Command::new("ffmpeg")
            .args([
                "-v",
                "error",
                "-y",
                "-f",
                "lavfi",
                "-i",
                &format!("testsrc=size={size}:rate=30:duration={secs}"),
            ])
            .args([
                "-c:v",
                "libx264",
                "-preset",
                "ultrafast",
                "-profile:v",
                "baseline",
                "-pix_fmt",
                "yuv420p",
                "-g",
                "60",
                "-bf",
                "0",
            ])
            .args([
                "-movflags",
                "frag_keyframe+empty_moov+default_base_moof",
                "-frag_duration",
                "1000000",
            ])
            .arg(&p)
            .status()
            .expect("ffmpeg");
        assert!(st.success());
        p
    }

    fn part_event(part: u64, t_ms: u64, start: Option<u64>) -> porthole_proto::Event {
        let mut data = serde_json::json!({"state": "part", "part": part});
        if let Some(s) = start {
            data["start_t_ms"] = s.into();
        }
        porthole_proto::Event {
            seq: part,
            t_ms,
            actor: porthole_proto::Actor::System,
            kind: "recording".into(),
            data,
        }
    }

    #[test]
    fn part_starts_come_from_the_recording_events() {
        #[track_caller]
        fn check(events: &[porthole_proto::Event], want: &[Option<u64>]) {
            assert_eq!(Recording::starts_from_events(events), want);
        }
        check(&[], &[]);
        check(
            &[part_event(1, 70, Some(63)), part_event(2, 4000, Some(3959))],
            &[Some(63), Some(3959)],
        );
        // Older agents: part 1 at 0 as before, later parts at their event's time.
        check(
            &[part_event(1, 70, None), part_event(2, 4000, None)],
            &[None, Some(4000)],
        );
        // A missing event leaves a hole for Recording::open to fill.
        check(&[part_event(2, 4000, Some(3990))], &[None, Some(3990)]);
    }

    #[test]
    fn a_recording_plays_on_across_parts_of_different_sizes() {
        let dir = tempfile::tempdir().unwrap();
        make_at(&dir.path().join("video-0001.mp4"), "320x240", 3);
        make_at(&dir.path().join("video-0002.mp4"), "160x120", 2);
        let rec = Recording::open(dir.path(), &[Some(100), Some(3500)]).unwrap();
        assert_eq!(rec.parts.len(), 2);
        assert_eq!((rec.parts[1].width, rec.parts[1].height), (160, 120));
        assert_eq!(rec.parts[0].samples[0].t_ms, 100);
        assert_eq!(rec.parts[1].samples[0].t_ms, 3500);
        let d = rec.duration_ms();
        assert!((5400..=5500).contains(&d), "duration {d}");
        assert_eq!(rec.part_at(50), 0);
        assert_eq!(rec.part_at(3499), 0);
        assert_eq!(rec.part_at(3500), 1);

        let stop = std::sync::atomic::AtomicBool::new(false);
        let mut got: Vec<(u64, bool, usize)> = Vec::new();
        rec.play(2900, 8.0, &stop, |f| {
            got.push((f.t_ms.unwrap(), f.keyframe, f.data.len()));
            true
        })
        .unwrap();
        // From part 1's keyframe before 2900 (every 2 s: 2100), through part 2 to its end.
        assert_eq!(got[0].0, 2100, "{:?}", &got[..3]);
        assert!(got[0].1);
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0), "times go forward");
        let p2 = got
            .iter()
            .position(|g| g.0 >= 3500)
            .expect("frames of part 2");
        assert!(got[p2].1, "part 2 starts with a keyframe");
        assert!(got[p2 - 1].0 < 3200, "nothing between the parts");
        assert_eq!(got.last().unwrap().0, d);
        // Part 2's keyframe carries its own (smaller) SPS: a decoder can reconfigure.
        let sps = |ix: &Index| ix.parameter_sets[0].clone();
        assert_ne!(sps(&rec.parts[0]), sps(&rec.parts[1]));

        // A part with no start known follows the one before.
        let rec = Recording::open(dir.path(), &[None]).unwrap();
        assert_eq!(rec.parts[1].samples[0].t_ms, rec.parts[0].duration_ms() + 1);
        assert!(Recording::open(&dir.path().join("none"), &[]).is_err());
    }

    #[test]
    fn indexes_seeks_and_reads_annex_b() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), 6);
        let ix = Index::open(&p).unwrap();
        assert_eq!((ix.width, ix.height), (320, 240));
        assert_eq!(ix.samples.len(), 180);
        assert_eq!(ix.keyframes_ms(), vec![0, 2000, 4000]);
        assert!(ix.duration_ms() >= 5900);
        assert_eq!(ix.samples[ix.seek(3500)].t_ms, 2000);
        assert_eq!(ix.seek(0), 0);
        let mut f = File::open(&p).unwrap();
        let au = ix.read(&mut f, ix.seek(4100)).unwrap();
        assert!(
            crate::live::is_keyframe(&au),
            "a seek lands on a keyframe with SPS/PPS"
        );
        assert_eq!(&au[..4], &[0, 0, 0, 1]);
        assert_eq!(au[4] & 0x1f, 7);
    }

    #[test]
    fn a_file_cut_mid_fragment_keeps_what_is_whole() {
        let dir = tempfile::tempdir().unwrap();
        let p = make(dir.path(), 4);
        let full = Index::open(&p).unwrap().samples.len();
        let len = std::fs::metadata(&p).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&p).unwrap();
        f.set_len(len * 2 / 3).unwrap();
        let cut = Index::open(&p).unwrap();
        assert!(
            !cut.samples.is_empty() && cut.samples.len() < full,
            "{} of {full}",
            cut.samples.len()
        );
    }
}
