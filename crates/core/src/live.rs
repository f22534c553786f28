//! The app's side of the live view: a WHEP client (webrtc-rs) that receives the agent's H.264
//! stream and hands whole access units to the UI, which decodes them with WebCodecs.
//!
//! WebKitGTK has no RTCPeerConnection, so the Rust side is the peer; it never decodes video.
//! RTP is depacketized by hand per timestamp and emitted on the marker bit (a sample builder
//! would hold each frame until the next one starts).
//!
//! Loss: packets go through `Reorder` first, which holds a gap open for `NACK_WAIT` while
//! webrtc-rs's NACK generator asks for the missing packets and the agent's responder resends
//! them. Only a gap still open after that reaches the `Assembler` as loss; it then drops until
//! the next keyframe and sends one PLI. (Milestone 1 declared loss on any gap: each sent a PLI,
//! the keyframe burst overflowed the socket buffer, and more loss followed.)

use crate::agent::AgentClient;
use crate::error::{CoreError, Result};
use bytes::Bytes;
use porthole_proto::{AgentMessage, Event};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::APIBuilder;
use webrtc::data_channel::RTCDataChannel;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::codecs::h264::H264Packet;
use webrtc::rtp::packetizer::Depacketizer;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTPCodecType,
};
use webrtc::rtp_transceiver::rtp_transceiver_direction::RTCRtpTransceiverDirection;
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::rtp_transceiver::RTCRtpTransceiverInit;

/// One encoded picture for the UI.
#[derive(Debug, Clone)]
pub struct LiveFrame {
    pub data: Bytes,
    pub keyframe: bool,
    pub rtp_timestamp: u32,
    /// Session clock of the frame, once a `clock` message has paired the two clocks.
    pub t_ms: Option<u64>,
    /// When the app had the whole frame (Unix ms; 0 for replay): the bench's split timings.
    pub received_unix_ms: u64,
}

impl LiveFrame {
    /// The UI's binary frame: u8 flags (bit 0 keyframe), 3 pad, u32 LE t_ms, u32 LE RTP
    /// timestamp, u32 LE received (Unix ms, low 32 bits), then the access unit (Annex-B).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.data.len());
        v.push(self.keyframe as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&(self.t_ms.unwrap_or(0) as u32).to_le_bytes());
        v.extend_from_slice(&self.rtp_timestamp.to_le_bytes());
        v.extend_from_slice(&(self.received_unix_ms as u32).to_le_bytes());
        v.extend_from_slice(&self.data);
        v
    }
}

/// How long a sequence gap stays open for a retransmission. webrtc-rs's NACK generator runs
/// every 100 ms; on loopback and LAN a resent packet arrives within a few ms of the NACK.
pub const NACK_WAIT: Duration = Duration::from_millis(150);
/// Packets held behind a gap at most (a 1280x800 keyframe is about 150 packets).
const MAX_HELD: usize = 1024;

/// One RTP packet as the assembler needs it.
#[derive(Debug, Clone, PartialEq)]
pub struct Packet {
    pub seq: u16,
    pub ts: u32,
    pub marker: bool,
    pub payload: Bytes,
}

/// Puts packets back in sequence order, waiting up to `NACK_WAIT` for a missing one.
#[derive(Default)]
pub struct Reorder {
    next: Option<u16>,
    held: BTreeMap<u16, Packet>,
    gap_since: Option<Instant>,
}

impl Reorder {
    /// Takes one packet; returns the packets now in order (none while a gap waits).
    pub fn push(&mut self, p: Packet, now: Instant) -> Vec<Packet> {
        let next = *self.next.get_or_insert(p.seq);
        let d = p.seq.wrapping_sub(next) as i16;
        if d < 0 {
            return vec![]; // a duplicate or a retransmission that came too late
        }
        self.held.insert(p.seq, p);
        if d > 0 && self.gap_since.is_none() {
            self.gap_since = Some(now);
        }
        self.drain(now)
    }

    /// When the open gap gives up, if one is open (for the reader's timeout).
    pub fn deadline(&self) -> Option<Instant> {
        self.gap_since.map(|t| t + NACK_WAIT)
    }

    /// The packets in order from `next`; past a gap only once it has waited long enough.
    pub fn drain(&mut self, now: Instant) -> Vec<Packet> {
        let mut out = vec![];
        let Some(mut next) = self.next else {
            return out;
        };
        let start = next;
        loop {
            if let Some(p) = self.held.remove(&next) {
                next = next.wrapping_add(1);
                out.push(p);
                continue;
            }
            if self.held.is_empty() {
                self.gap_since = None;
                break;
            }
            if next != start && out.last().is_some_and(|p| p.seq.wrapping_add(1) == next) {
                // Moved on to a different missing packet: its wait starts now.
                self.gap_since = Some(now);
            }
            let expired = self.gap_since.is_some_and(|t| now >= t + NACK_WAIT);
            if !(expired || self.held.len() > MAX_HELD) {
                self.gap_since.get_or_insert(now);
                break;
            }
            // Give up on the gap: skip to the oldest held packet (the assembler sees the jump).
            next = *self
                .held
                .keys()
                .min_by_key(|s| s.wrapping_sub(next))
                .expect("not empty");
            self.gap_since = None;
        }
        self.next = Some(next);
        out
    }
}

/// Assembles access units from RTP packets of one stream.
#[derive(Default)]
pub struct Assembler {
    depack: H264Packet,
    ts: Option<u32>,
    buf: Vec<u8>,
    last_seq: Option<u16>,
    /// After a loss: drop until a keyframe arrives.
    broken: bool,
    /// After a loss: drop the rest of the damaged frame (up to its marker packet). Its tail
    /// may hold IDR slices without the SPS/PPS before them: not a frame a decoder can start on.
    resync: bool,
}

pub fn is_keyframe(au: &[u8]) -> bool {
    let mut i = 0;
    while i + 3 < au.len() {
        if au[i] == 0 && au[i + 1] == 0 && au[i + 2] == 1 {
            let t = au[i + 3] & 0x1f;
            if t == 5 || t == 7 {
                return true;
            }
            i += 3;
        } else {
            i += 1;
        }
    }
    false
}

fn has_nal(au: &[u8], nal_type: u8) -> bool {
    au.windows(4)
        .any(|w| w[0] == 0 && w[1] == 0 && w[2] == 1 && w[3] & 0x1f == nal_type)
}

pub enum Assembled {
    Frame(Bytes, bool),
    /// A gap: ask for a keyframe.
    Lost,
    None,
}

impl Assembler {
    pub fn push(&mut self, seq: u16, ts: u32, marker: bool, payload: &Bytes) -> Assembled {
        let mut lost = false;
        if let Some(prev) = self.last_seq {
            if seq != prev.wrapping_add(1) {
                lost = true;
            }
        }
        self.last_seq = Some(seq);
        if lost {
            self.buf.clear();
            self.ts = None;
            self.broken = true;
            self.resync = true;
            // A fragmented NAL may have been cut: start the depacketizer afresh.
            self.depack = H264Packet::default();
        }
        if self.resync {
            if marker {
                self.resync = false;
            }
            return Assembled::Lost;
        }
        if self.ts != Some(ts) {
            self.buf.clear();
            self.ts = Some(ts);
        }
        match self.depack.depacketize(payload) {
            Ok(nals) => self.buf.extend_from_slice(&nals),
            Err(_) => {
                self.buf.clear();
                self.broken = true;
                return Assembled::Lost;
            }
        }
        if !marker {
            return if lost {
                Assembled::Lost
            } else {
                Assembled::None
            };
        }
        let au = Bytes::from(std::mem::take(&mut self.buf));
        self.ts = None;
        let key = is_keyframe(&au);
        // Recover only on a keyframe that carries its parameter sets (ours always do).
        if self.broken && !(key && has_nal(&au, 7)) {
            return Assembled::Lost;
        }
        self.broken = false;
        if au.is_empty() {
            return Assembled::None;
        }
        Assembled::Frame(au, key)
    }
}

pub struct LiveSession {
    pub pc: Arc<RTCPeerConnection>,
    pub dc: Arc<RTCDataChannel>,
    pub location: String,
    client: AgentClient,
    want_key: Arc<tokio::sync::Notify>,
}

/// Keyframe requests closer together than this are merged.
const PLI_GAP: Duration = Duration::from_millis(300);

fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl LiveSession {
    /// Connects to the agent; `on_frame` gets each access unit (and returns true when whoever
    /// takes the frames lost some: the agent is asked for a keyframe), `on_event` each timeline
    /// event.
    pub async fn connect(
        client: AgentClient,
        on_frame: impl Fn(LiveFrame) -> bool + Send + Sync + 'static,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::connect_at(client, None, on_frame, on_event).await
    }

    /// As `connect`, at most `max_fps` frames a second (a grid tile: the agent encodes a
    /// separate, cheaper stream at that rate).
    pub async fn connect_at(
        client: AgentClient,
        max_fps: Option<u32>,
        on_frame: impl Fn(LiveFrame) -> bool + Send + Sync + 'static,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Self> {
        let err = |e: webrtc::Error| CoreError::Agent {
            url: client.url.clone(),
            message: format!("webrtc: {e}"),
        };
        let mut m = MediaEngine::default();
        let fb = [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
            .iter()
            .map(|(t, p)| RTCPFeedback {
                typ: t.to_string(),
                parameter: p.to_string(),
            })
            .collect::<Vec<_>>();
        m.register_codec(
            RTCRtpCodecParameters {
                capability: RTCRtpCodecCapability {
                    mime_type: "video/H264".into(),
                    clock_rate: 90_000,
                    channels: 0,
                    sdp_fmtp_line:
                        "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f"
                            .into(),
                    rtcp_feedback: fb,
                },
                payload_type: 102,
                ..Default::default()
            },
            RTPCodecType::Video,
        )
        .map_err(err)?;
        let registry = register_default_interceptors(Registry::new(), &mut m).map_err(err)?;
        // A cut link or a dead agent is noticed in ~2 s (webrtc-rs's defaults: 5 s disconnected,
        // 25 s failed), so the view can say "reconnecting" and start again on its own.
        let mut se = webrtc::api::setting_engine::SettingEngine::default();
        se.set_ice_timeouts(
            Some(Duration::from_secs(2)),
            Some(Duration::from_secs(4)),
            Some(Duration::from_millis(500)),
        );
        let api = APIBuilder::new()
            .with_media_engine(m)
            .with_interceptor_registry(registry)
            .with_setting_engine(se)
            .build();
        let pc = Arc::new(
            api.new_peer_connection(RTCConfiguration::default())
                .await
                .map_err(err)?,
        );
        pc.add_transceiver_from_kind(
            RTPCodecType::Video,
            Some(RTCRtpTransceiverInit {
                direction: RTCRtpTransceiverDirection::Recvonly,
                send_encodings: vec![],
            }),
        )
        .await
        .map_err(err)?;
        let dc = pc
            .create_data_channel("porthole", None)
            .await
            .map_err(err)?;
        // RTP timestamp ↔ session clock, from the agent's `clock` messages.
        let clock: Arc<Mutex<Option<(u32, u64)>>> = Arc::new(Mutex::new(None));
        let c2 = clock.clone();
        let on_event = Arc::new(on_event);
        let on_link = on_event.clone();
        dc.on_message(Box::new(move |msg| {
            let (clock, on_event) = (c2.clone(), on_event.clone());
            Box::pin(async move {
                match serde_json::from_slice::<AgentMessage>(&msg.data) {
                    Ok(AgentMessage::Clock {
                        t_ms,
                        rtp_timestamp,
                    }) => *clock.lock().unwrap() = Some((rtp_timestamp, t_ms)),
                    Ok(AgentMessage::Event(e)) => on_event(e),
                    // Not a timeline entry (seq 0): text copied in the guest while we hold
                    // control, for the UI to put on this computer's clipboard.
                    Ok(AgentMessage::Clipboard { text }) => on_event(Event {
                        seq: 0,
                        t_ms: 0,
                        actor: porthole_proto::Actor::System,
                        kind: "clipboard".into(),
                        data: serde_json::json!({ "text": text }),
                    }),
                    _ => {}
                }
            })
        }));
        // The link's state for the UI (not a timeline entry: seq 0, kind `link`).
        pc.on_peer_connection_state_change(Box::new(move |st| {
            use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
            let state = match st {
                S::Connected => "connected",
                S::Disconnected => "disconnected",
                S::Failed => "failed",
                _ => return Box::pin(async {}),
            };
            on_link(Event {
                seq: 0,
                t_ms: 0,
                actor: porthole_proto::Actor::System,
                kind: "link".into(),
                data: serde_json::json!({ "state": state }),
            });
            Box::pin(async {})
        }));
        let on_frame = Arc::new(on_frame);
        let pc_weak = Arc::downgrade(&pc);
        let want_key = Arc::new(tokio::sync::Notify::new());
        let want_key2 = want_key.clone();
        pc.on_track(Box::new(move |track, _, _| {
            let (on_frame, clock) = (on_frame.clone(), clock.clone());
            let want_key = want_key2.clone();
            let ssrc = track.ssrc();
            // Keyframe requests (loss here, a page that fell behind, a decoder restart in the
            // UI) go out as PLI, at most one per `PLI_GAP`: a keyframe is a burst of ~150
            // packets, and asking again before the last one arrived only adds bursts.
            let pli_weak = pc_weak.clone();
            let asked = want_key.clone();
            tokio::spawn(async move {
                use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState as S;
                let mut last: Option<Instant> = None;
                loop {
                    // Ends with the session: checked every 2 s while nobody asks.
                    tokio::select! {
                        _ = asked.notified() => {}
                        _ = tokio::time::sleep(Duration::from_secs(2)) => {
                            match pli_weak.upgrade() {
                                Some(pc) if pc.connection_state() != S::Closed => continue,
                                _ => return,
                            }
                        }
                    }
                    let Some(pc) = pli_weak.upgrade() else { return };
                    if pc.connection_state() == S::Closed {
                        return;
                    }
                    if let Some(t) = last {
                        let since = t.elapsed();
                        if since < PLI_GAP {
                            tokio::time::sleep(PLI_GAP - since).await;
                        }
                    }
                    last = Some(Instant::now());
                    let pli = PictureLossIndication {
                        sender_ssrc: 0,
                        media_ssrc: ssrc,
                    };
                    let _ = pc.write_rtcp(&[Box::new(pli)]).await;
                }
            });
            tokio::spawn(async move {
                let mut asm = Assembler::default();
                let mut order = Reorder::default();
                loop {
                    let wait = order
                        .deadline()
                        .map(|d| d.saturating_duration_since(Instant::now()))
                        .unwrap_or(Duration::from_secs(3600));
                    let ready = match tokio::time::timeout(wait, track.read_rtp()).await {
                        Ok(Ok((pkt, _))) => {
                            let h = &pkt.header;
                            let p = Packet {
                                seq: h.sequence_number,
                                ts: h.timestamp,
                                marker: h.marker,
                                payload: pkt.payload.clone(),
                            };
                            order.push(p, Instant::now())
                        }
                        Ok(Err(_)) => return,
                        Err(_) => order.drain(Instant::now()),
                    };
                    for p in ready {
                        match asm.push(p.seq, p.ts, p.marker, &p.payload) {
                            Assembled::Frame(data, keyframe) => {
                                let t_ms = clock.lock().unwrap().map(|(rtp, t)| {
                                    (t as i64 + (p.ts.wrapping_sub(rtp) as i32 as i64) / 90).max(0)
                                        as u64
                                });
                                let lost = on_frame(LiveFrame {
                                    data,
                                    keyframe,
                                    rtp_timestamp: p.ts,
                                    t_ms,
                                    received_unix_ms: unix_ms(),
                                });
                                if lost {
                                    want_key.notify_one();
                                }
                            }
                            Assembled::Lost => want_key.notify_one(),
                            Assembled::None => {}
                        }
                    }
                }
            });
            Box::pin(async {})
        }));
        let offer = pc.create_offer(None).await.map_err(err)?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(offer).await.map_err(err)?;
        let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
        let sdp = pc
            .local_description()
            .await
            .map(|d| d.sdp)
            .unwrap_or_default();
        // A failed start must not leave the peer's ICE tasks and sockets behind (the view
        // retries every second while an agent is down).
        let (answer, location) = match client.whep(&sdp, max_fps).await {
            Ok(a) => a,
            Err(e) => {
                let _ = pc.close().await;
                return Err(e);
            }
        };
        let remote = match RTCSessionDescription::answer(answer) {
            Ok(d) => pc.set_remote_description(d).await,
            Err(e) => Err(e),
        };
        if let Err(e) = remote {
            let _ = client.delete(&location).await;
            let _ = pc.close().await;
            return Err(err(e));
        }
        Ok(Self {
            pc,
            dc,
            location,
            client,
            want_key,
        })
    }

    /// Asks the agent for a keyframe (the UI restarted its decoder).
    pub fn request_keyframe(&self) {
        self.want_key.notify_one();
    }

    /// Sends a data-channel message (`pointer`, `key`, `control`, ...).
    pub async fn send(&self, msg: &serde_json::Value) -> Result<()> {
        self.dc
            .send_text(msg.to_string())
            .await
            .map(|_| ())
            .map_err(|e| CoreError::Agent {
                url: self.client.url.clone(),
                message: format!("data channel: {e}"),
            })
    }

    pub async fn close(&self) {
        if !self.location.is_empty() {
            let _ = self.client.delete(&self.location).await;
        }
        let _ = self.pc.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fu_a(nal_type: u8, start: bool, end: bool, body: &[u8]) -> Bytes {
        let mut v = vec![
            0x7c,
            (if start { 0x80 } else { 0 }) | (if end { 0x40 } else { 0 }) | nal_type,
        ];
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn assembles_on_marker_and_recovers_after_loss() {
        let mut a = Assembler::default();
        // Keyframe: SPS single NAL, then an IDR split in two FU-A fragments.
        assert!(matches!(
            a.push(1, 100, false, &Bytes::from_static(&[0x67, 1, 2])),
            Assembled::None
        ));
        assert!(matches!(
            a.push(2, 100, false, &fu_a(5, true, false, &[9, 9])),
            Assembled::None
        ));
        match a.push(3, 100, true, &fu_a(5, false, true, &[8])) {
            Assembled::Frame(au, key) => {
                assert!(key);
                assert_eq!(
                    &au[..],
                    &[0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x65, 9, 9, 8]
                );
            }
            _ => panic!("expected a frame"),
        }
        // A delta frame, then a gap (seq 5 missing): dropped until the next keyframe.
        assert!(matches!(
            a.push(4, 200, true, &Bytes::from_static(&[0x41, 7, 7, 7])),
            Assembled::Frame(_, false)
        ));
        assert!(matches!(
            a.push(6, 300, true, &Bytes::from_static(&[0x41, 7, 7, 7])),
            Assembled::Lost
        ));
        assert!(matches!(
            a.push(7, 400, true, &Bytes::from_static(&[0x41, 7, 7, 7])),
            Assembled::Lost
        ));
        // An IDR without its SPS/PPS cannot restart a decoder: still dropped.
        assert!(matches!(
            a.push(8, 500, true, &Bytes::from_static(&[0x65, 1, 1, 1])),
            Assembled::Lost
        ));
        assert!(matches!(
            a.push(9, 600, false, &Bytes::from_static(&[0x67, 1, 2])),
            Assembled::None
        ));
        assert!(matches!(
            a.push(10, 600, true, &Bytes::from_static(&[0x65, 1, 1, 1])),
            Assembled::Frame(_, true)
        ));
    }

    #[test]
    fn a_keyframe_cut_in_the_middle_is_dropped_whole() {
        let mut a = Assembler::default();
        assert!(matches!(
            a.push(1, 100, false, &Bytes::from_static(&[0x67, 1, 2])),
            Assembled::None
        ));
        assert!(matches!(
            a.push(2, 100, false, &fu_a(5, true, false, &[9, 9])),
            Assembled::None
        ));
        // seq 3 (the IDR's middle) is lost; 4 and 5 are its tail: no frame from them.
        assert!(matches!(
            a.push(4, 100, false, &fu_a(5, false, false, &[8])),
            Assembled::Lost
        ));
        assert!(matches!(
            a.push(5, 100, true, &fu_a(5, false, true, &[7])),
            Assembled::Lost
        ));
        // The next frame is a delta: still waiting for a keyframe.
        assert!(matches!(
            a.push(6, 200, true, &Bytes::from_static(&[0x41, 7])),
            Assembled::Lost
        ));
        // A whole keyframe: decoding resumes.
        assert!(matches!(
            a.push(7, 300, false, &Bytes::from_static(&[0x67, 1, 2])),
            Assembled::None
        ));
        match a.push(8, 300, true, &fu_a(5, true, true, &[1])) {
            Assembled::Frame(au, true) => {
                assert_eq!(&au[..], &[0, 0, 0, 1, 0x67, 1, 2, 0, 0, 0, 1, 0x65, 1])
            }
            _ => panic!("expected the keyframe"),
        }
    }

    fn pkt(seq: u16) -> Packet {
        Packet {
            seq,
            ts: seq as u32,
            marker: false,
            payload: Bytes::new(),
        }
    }

    /// Each case: packets in arrival order (`seq` or `wait` = time passes beyond NACK_WAIT),
    /// and the sequence numbers handed on, in order.
    #[test]
    fn reorder_waits_for_a_resent_packet_then_gives_up() {
        fn check(arrivals: &[Option<u16>], want: &[u16]) {
            let mut r = Reorder::default();
            let mut now = Instant::now();
            let mut got = vec![];
            for a in arrivals {
                match a {
                    Some(seq) => got.extend(r.push(pkt(*seq), now)),
                    None => {
                        now += NACK_WAIT + Duration::from_millis(1);
                        got.extend(r.drain(now));
                    }
                }
                now += Duration::from_millis(1);
            }
            let got: Vec<u16> = got.iter().map(|p| p.seq).collect();
            assert_eq!(got, want, "arrivals {arrivals:?}");
        }
        let s = Some;
        // In order: straight through.
        check(&[s(1), s(2), s(3)], &[1, 2, 3]);
        // 2 resent after 3 and 4 (a NACK answered): nothing lost, order restored.
        check(&[s(1), s(3), s(4), s(2), s(5)], &[1, 2, 3, 4, 5]);
        // 2 never comes: after the wait, 3 and 4 go on (the assembler sees the jump).
        check(&[s(1), s(3), s(4), None, s(5)], &[1, 3, 4, 5]);
        // Duplicates and a resend that came after the gap was given up: dropped.
        check(&[s(1), s(1), s(3), None, s(2), s(4)], &[1, 3, 4]);
        // Across the u16 wrap.
        check(&[s(65534), s(0), s(65535), s(1)], &[65534, 65535, 0, 1]);
        // Two gaps: each waits its own turn (4 is awaited from when 2 filled the first).
        check(&[s(1), s(3), s(6), s(2), None, s(7)], &[1, 2, 3, 6, 7]);
        check(&[s(1), s(3), s(6), s(2), s(7)], &[1, 2, 3]);
    }

    #[test]
    fn reorder_deadline_only_while_a_gap_is_open() {
        let mut r = Reorder::default();
        let t = Instant::now();
        r.push(pkt(1), t);
        assert_eq!(r.deadline(), None);
        r.push(pkt(3), t);
        assert_eq!(r.deadline(), Some(t + NACK_WAIT));
        r.push(pkt(2), t);
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn wire_header() {
        let f = LiveFrame {
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            keyframe: true,
            rtp_timestamp: 7,
            t_ms: Some(1234),
            received_unix_ms: 0x1_0000_0009,
        };
        let w = f.to_wire();
        assert_eq!(w[0], 1);
        assert_eq!(u32::from_le_bytes(w[4..8].try_into().unwrap()), 1234);
        assert_eq!(u32::from_le_bytes(w[8..12].try_into().unwrap()), 7);
        assert_eq!(u32::from_le_bytes(w[12..16].try_into().unwrap()), 9);
        assert_eq!(&w[16..], &[0, 0, 0, 1, 0x65]);
    }
}
