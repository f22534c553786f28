//! The app's side of the live view: a WHEP client (webrtc-rs) that receives the agent's H.264
//! stream and hands whole access units to the UI, which decodes them with WebCodecs.
//!
//! WebKitGTK has no RTCPeerConnection, so the Rust side is the peer; it never decodes video.
//! RTP is depacketized by hand per timestamp and emitted on the marker bit (a sample builder
//! would hold each frame until the next one starts); on a sequence gap we drop until the next
//! keyframe and send PLI.

use crate::agent::AgentClient;
use crate::error::{CoreError, Result};
use bytes::Bytes;
use porthole_proto::{AgentMessage, Event};
use std::sync::{Arc, Mutex};
use std::time::Duration;
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
}

impl LiveFrame {
    /// The UI's binary frame: u8 flags (bit 0 keyframe), 3 pad, u32 LE t_ms, u32 LE RTP
    /// timestamp, u32 reserved, then the access unit (Annex-B).
    pub fn to_wire(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(16 + self.data.len());
        v.push(self.keyframe as u8);
        v.extend_from_slice(&[0, 0, 0]);
        v.extend_from_slice(&(self.t_ms.unwrap_or(0) as u32).to_le_bytes());
        v.extend_from_slice(&self.rtp_timestamp.to_le_bytes());
        v.extend_from_slice(&0u32.to_le_bytes());
        v.extend_from_slice(&self.data);
        v
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
}

impl LiveSession {
    /// Connects to the agent; `on_frame` gets each access unit, `on_event` each timeline event.
    pub async fn connect(
        client: AgentClient,
        on_frame: impl Fn(LiveFrame) + Send + Sync + 'static,
        on_event: impl Fn(Event) + Send + Sync + 'static,
    ) -> Result<Self> {
        Self::connect_at(client, None, on_frame, on_event).await
    }

    /// As `connect`, at most `max_fps` frames a second (a grid tile: the agent encodes a
    /// separate, cheaper stream at that rate).
    pub async fn connect_at(
        client: AgentClient,
        max_fps: Option<u32>,
        on_frame: impl Fn(LiveFrame) + Send + Sync + 'static,
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
        let api = APIBuilder::new()
            .with_media_engine(m)
            .with_interceptor_registry(registry)
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
        let on_frame = Arc::new(on_frame);
        let pc_weak = Arc::downgrade(&pc);
        pc.on_track(Box::new(move |track, _, _| {
            let (on_frame, clock, pc_weak) = (on_frame.clone(), clock.clone(), pc_weak.clone());
            tokio::spawn(async move {
                let mut asm = Assembler::default();
                while let Ok((pkt, _)) = track.read_rtp().await {
                    let h = &pkt.header;
                    match asm.push(h.sequence_number, h.timestamp, h.marker, &pkt.payload) {
                        Assembled::Frame(data, keyframe) => {
                            let t_ms = clock.lock().unwrap().map(|(rtp, t)| {
                                (t as i64 + (h.timestamp.wrapping_sub(rtp) as i32 as i64) / 90)
                                    .max(0) as u64
                            });
                            on_frame(LiveFrame {
                                data,
                                keyframe,
                                rtp_timestamp: h.timestamp,
                                t_ms,
                            });
                        }
                        Assembled::Lost => {
                            if let Some(pc) = pc_weak.upgrade() {
                                let pli = PictureLossIndication {
                                    sender_ssrc: 0,
                                    media_ssrc: track.ssrc(),
                                };
                                let _ = pc.write_rtcp(&[Box::new(pli)]).await;
                            }
                        }
                        Assembled::None => {}
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
        let (answer, location) = client.whep(&sdp, max_fps).await?;
        pc.set_remote_description(RTCSessionDescription::answer(answer).map_err(err)?)
            .await
            .map_err(err)?;
        Ok(Self {
            pc,
            dc,
            location,
            client,
        })
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

    #[test]
    fn wire_header() {
        let f = LiveFrame {
            data: Bytes::from_static(&[0, 0, 0, 1, 0x65]),
            keyframe: true,
            rtp_timestamp: 7,
            t_ms: Some(1234),
        };
        let w = f.to_wire();
        assert_eq!(w[0], 1);
        assert_eq!(u32::from_le_bytes(w[4..8].try_into().unwrap()), 1234);
        assert_eq!(u32::from_le_bytes(w[8..12].try_into().unwrap()), 7);
        assert_eq!(&w[16..], &[0, 0, 0, 1, 0x65]);
    }
}
