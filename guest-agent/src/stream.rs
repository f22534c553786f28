//! WebRTC fan-out: WHEP viewers, one shared RTP track per codec, PLI → keyframe.
//!
//! We packetize ourselves onto a `TrackLocalStaticRTP` rather than writing samples: the RTP
//! timestamp is then the real capture time (frames come on damage, not on a tick, and Chromium's
//! jitter buffer grows when durations lie), the `clock` message can name the exact timestamp of
//! a frame, and every packet carries playout-delay min=max=0 so the receiver renders at once.
//! All viewers of one codec are bindings of one track: one packetization, same packets.

use crate::encode::Codec;
use crate::pipeline::{DemandGuard, Pipeline, SourceFactory};
use bytes::Bytes;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use webrtc::api::interceptor_registry::register_default_interceptors;
use webrtc::api::media_engine::MediaEngine;
use webrtc::api::setting_engine::SettingEngine;
use webrtc::api::{APIBuilder, API};
use webrtc::ice_transport::ice_server::RTCIceServer;
use webrtc::interceptor::registry::Registry;
use webrtc::peer_connection::configuration::RTCConfiguration;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp::codecs::{h264::H264Payloader, vp8::Vp8Payloader};
use webrtc::rtp::extension::playout_delay_extension::PlayoutDelayExtension;
use webrtc::rtp::extension::HeaderExtension;
use webrtc::rtp::packetizer::Payloader;
use webrtc::rtp_transceiver::rtp_codec::{
    RTCRtpCodecCapability, RTCRtpCodecParameters, RTCRtpHeaderExtensionCapability, RTPCodecType,
};
use webrtc::rtp_transceiver::RTCPFeedback;
use webrtc::track::track_local::track_local_static_rtp::TrackLocalStaticRTP;
use webrtc::track::track_local::TrackLocal;

const MTU: usize = 1200;
const PLAYOUT_DELAY_URI: &str = "http://www.webrtc.org/experiments/rtp-hdrext/playout-delay";
const H264_FMTP: &str = "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f";

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The offer is not usable SDP, or offers nothing we can send.
    #[error("bad offer: {0}")]
    BadOffer(String),
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::Error),
    #[error("no such viewer: {0}")]
    NoViewer(String),
    /// A limit (`--max-viewers`, `--max-pipelines`) is reached: the code, and what to do.
    #[error("{1}")]
    Busy(&'static str, String),
    #[error("{0}")]
    Internal(String),
}

/// How much the hub serves at once (`--max-viewers`, `--max-pipelines`).
#[derive(Debug, Clone, Copy)]
pub struct HubLimits {
    pub max_viewers: usize,
    pub max_pipelines: usize,
}

impl Default for HubLimits {
    fn default() -> Self {
        Self {
            max_viewers: 16,
            max_pipelines: 4,
        }
    }
}

/// Network settings for ICE (remote hosts need a public address and a fixed port).
#[derive(Debug, Clone, Default)]
pub struct IceConfig {
    pub ice_servers: Vec<String>,
    /// Long-term credentials for the `turn:`/`turns:` servers (coturn's `user=NAME:PASSWORD`).
    pub ice_username: Option<String>,
    pub ice_credential: Option<String>,
    /// Public IP to advertise for host candidates (1:1 NAT, as on cloud VMs).
    pub public_ip: Option<String>,
    /// One UDP port for all viewers, so a single firewall rule suffices.
    pub udp_port: Option<u16>,
}

/// The last frame written on a track: its capture time and RTP timestamp.
#[derive(Debug, Clone, Copy)]
pub struct ClockPoint {
    pub captured_at: Instant,
    pub rtp_timestamp: u32,
}

struct Outbound {
    pipeline: Pipeline,
    track: Arc<TrackLocalStaticRTP>,
    clock: Arc<Mutex<Option<ClockPoint>>>,
}

pub struct Viewer {
    pub id: String,
    pub codec: Codec,
    /// The frame-rate cap of the pipeline it is bound to.
    pub fps: u32,
    pub pc: Arc<RTCPeerConnection>,
    /// Both descriptions as negotiated, kept for diagnosing a failure (after one, the peer
    /// connection no longer lists its candidates).
    pub offer_sdp: String,
    pub answer_sdp: String,
    _demand: DemandGuard,
}

pub struct StreamHub {
    api: API,
    ice: IceConfig,
    max_fps: u32,
    source: Arc<SourceFactory>,
    /// One capture → encode → packetize chain per (codec, frame-rate cap): viewers asking for
    /// the same pair share it; a grid tile at 5 fps costs a sixth of a full-rate encode.
    outbound: Mutex<HashMap<(Codec, u32), Arc<Outbound>>>,
    viewers: Mutex<HashMap<String, Arc<Viewer>>>,
    limits: Mutex<HubLimits>,
}

fn feedback() -> Vec<RTCPFeedback> {
    [("nack", ""), ("nack", "pli"), ("ccm", "fir")]
        .iter()
        .map(|(t, p)| RTCPFeedback {
            typ: t.to_string(),
            parameter: p.to_string(),
        })
        .collect()
}

fn capability(codec: Codec) -> RTCRtpCodecCapability {
    match codec {
        Codec::H264 => RTCRtpCodecCapability {
            mime_type: "video/H264".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: H264_FMTP.into(),
            rtcp_feedback: feedback(),
        },
        Codec::Vp8 => RTCRtpCodecCapability {
            mime_type: "video/VP8".into(),
            clock_rate: 90_000,
            channels: 0,
            sdp_fmtp_line: String::new(),
            rtcp_feedback: feedback(),
        },
    }
}

/// The codec we send to an offer: H.264 when offered (packetization-mode 1), else VP8.
pub fn choose_codec(offer_sdp: &str) -> Result<Codec, StreamError> {
    let lower = offer_sdp.to_ascii_lowercase();
    if !lower.lines().any(|l| l.starts_with("m=video")) {
        return Err(StreamError::BadOffer(
            "the offer has no video m-line (add a recvonly video transceiver)".into(),
        ));
    }
    if lower.contains(" h264/90000") {
        Ok(Codec::H264)
    } else if lower.contains(" vp8/90000") {
        Ok(Codec::Vp8)
    } else {
        Err(StreamError::BadOffer(
            "the offer has neither H264 nor VP8 video".into(),
        ))
    }
}

impl StreamHub {
    pub fn new(ice: IceConfig, max_fps: u32, source: SourceFactory) -> Result<Self, StreamError> {
        let mut m = MediaEngine::default();
        // Both common constrained-baseline profile ids, so Chromium and Firefox match exactly.
        for (pt, fmtp) in [
            (102u8, H264_FMTP),
            (
                106,
                "level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42001f",
            ),
        ] {
            let mut cap = capability(Codec::H264);
            cap.sdp_fmtp_line = fmtp.into();
            m.register_codec(
                RTCRtpCodecParameters {
                    capability: cap,
                    payload_type: pt,
                    ..Default::default()
                },
                RTPCodecType::Video,
            )?;
        }
        m.register_codec(
            RTCRtpCodecParameters {
                capability: capability(Codec::Vp8),
                payload_type: 96,
                ..Default::default()
            },
            RTPCodecType::Video,
        )?;
        m.register_header_extension(
            RTCRtpHeaderExtensionCapability {
                uri: PLAYOUT_DELAY_URI.into(),
            },
            RTPCodecType::Video,
            None,
        )?;
        let registry = register_default_interceptors(Registry::new(), &mut m)?;
        let mut s = SettingEngine::default();
        s.set_include_loopback_candidate(true);
        s.set_ice_multicast_dns_mode(webrtc::ice::mdns::MulticastDnsMode::QueryOnly);
        if let Some(ip) = &ice.public_ip {
            s.set_nat_1to1_ips(
                vec![ip.clone()],
                webrtc::ice_transport::ice_candidate_type::RTCIceCandidateType::Host,
            );
        }
        if let Some(port) = ice.udp_port {
            let sock = std::net::UdpSocket::bind(("0.0.0.0", port))
                .map_err(|e| StreamError::Internal(format!("UDP port {port}: {e}")))?;
            sock.set_nonblocking(true)
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            let sock = tokio::net::UdpSocket::from_std(sock)
                .map_err(|e| StreamError::Internal(e.to_string()))?;
            s.set_udp_network(webrtc::ice::udp_network::UDPNetwork::Muxed(
                webrtc::ice::udp_mux::UDPMuxDefault::new(webrtc::ice::udp_mux::UDPMuxParams::new(
                    sock,
                )),
            ));
        }
        let api = APIBuilder::new()
            .with_media_engine(m)
            .with_interceptor_registry(registry)
            .with_setting_engine(s)
            .build();
        Ok(Self {
            api,
            ice,
            max_fps,
            source: Arc::new(source),
            outbound: Mutex::new(HashMap::new()),
            viewers: Mutex::new(HashMap::new()),
            limits: Mutex::new(HubLimits::default()),
        })
    }

    pub fn set_limits(&self, l: HubLimits) {
        *self.limits.lock().unwrap() = l;
    }

    /// The pipeline for a codec, started on first use (the recorder uses H.264's).
    pub fn pipeline(&self, codec: Codec) -> Result<Pipeline, StreamError> {
        self.pipeline_at(codec, self.max_fps)
    }

    /// The pipeline at a frame-rate cap (a viewer's `fps`).
    pub fn pipeline_at(&self, codec: Codec, fps: u32) -> Result<Pipeline, StreamError> {
        Ok(self.outbound(codec, fps)?.pipeline.clone())
    }

    fn outbound(&self, codec: Codec, fps: u32) -> Result<Arc<Outbound>, StreamError> {
        let mut map = self.outbound.lock().unwrap();
        if let Some(o) = map.get(&(codec, fps)) {
            return Ok(o.clone());
        }
        // Each (codec, rate) is an encode of its own: a caller asking for every rate from 1 to
        // 30 would run thirty. Pipelines nobody watches cost nothing and do not count.
        let max = self.limits.lock().unwrap().max_pipelines;
        let busy: Vec<String> = map
            .iter()
            .filter(|(_, o)| o.pipeline.active())
            .map(|((c, f), _)| format!("{} at {f} fps", c.name()))
            .collect();
        if busy.len() >= max {
            return Err(StreamError::Busy(
                "too_many_pipelines",
                format!(
                    "{} encodes run already ({}; --max-pipelines {max}): ask for a rate one of them uses",
                    busy.len(),
                    busy.join(", ")
                ),
            ));
        }
        let src = self.source.clone();
        let pipeline = Pipeline::spawn(codec, fps, Box::new(move || src()))
            .map_err(|e| StreamError::Internal(e.to_string()))?;
        let track = Arc::new(TrackLocalStaticRTP::new(
            capability(codec),
            "screen".into(),
            "porthole".into(),
        ));
        let clock = Arc::new(Mutex::new(None));
        tokio::spawn(packetize(pipeline.clone(), track.clone(), clock.clone()));
        let o = Arc::new(Outbound {
            pipeline,
            track,
            clock,
        });
        map.insert((codec, fps), o.clone());
        Ok(o)
    }

    pub fn pipelines(&self) -> Vec<Pipeline> {
        self.outbound
            .lock()
            .unwrap()
            .values()
            .map(|o| o.pipeline.clone())
            .collect()
    }

    /// Something changed the screen (our own input): capture now on every running pipeline.
    pub fn nudge(&self) {
        for p in self.pipelines() {
            if p.active() {
                p.nudge();
            }
        }
    }

    pub fn clock(&self, codec: Codec, fps: u32) -> Option<ClockPoint> {
        self.outbound
            .lock()
            .unwrap()
            .get(&(codec, fps))
            .and_then(|o| *o.clock.lock().unwrap())
    }

    pub fn ice(&self) -> &IceConfig {
        &self.ice
    }

    pub fn viewer_count(&self) -> usize {
        self.viewers.lock().unwrap().len()
    }

    pub fn viewer(&self, id: &str) -> Option<Arc<Viewer>> {
        self.viewers.lock().unwrap().get(id).cloned()
    }

    /// Answers a WHEP offer. The answer carries all our host candidates (gathered in
    /// milliseconds on a LAN), so no trickle is needed.
    pub async fn add_viewer(
        &self,
        offer_sdp: String,
        max_fps: Option<u32>,
    ) -> Result<Arc<Viewer>, StreamError> {
        let codec = choose_codec(&offer_sdp)?;
        let fps = max_fps.map_or(self.max_fps, |f| f.clamp(1, self.max_fps));
        let max = self.limits.lock().unwrap().max_viewers;
        let n = self.viewer_count();
        if n >= max {
            return Err(StreamError::Busy(
                "too_many_viewers",
                format!("{n} viewers are connected (--max-viewers {max}): close one (DELETE its WHEP resource) and try again"),
            ));
        }
        let offer = RTCSessionDescription::offer(offer_sdp)
            .map_err(|e| StreamError::BadOffer(e.to_string()))?;
        // STUN servers need no credentials; TURN servers get the configured ones.
        let (turn, stun): (Vec<String>, Vec<String>) = self
            .ice
            .ice_servers
            .iter()
            .cloned()
            .partition(|u| u.starts_with("turn:") || u.starts_with("turns:"));
        let mut ice_servers = Vec::new();
        if !stun.is_empty() {
            ice_servers.push(RTCIceServer {
                urls: stun,
                ..Default::default()
            });
        }
        if !turn.is_empty() {
            ice_servers.push(RTCIceServer {
                urls: turn,
                username: self.ice.ice_username.clone().unwrap_or_default(),
                credential: self.ice.ice_credential.clone().unwrap_or_default(),
            });
        }
        let pc = Arc::new(
            self.api
                .new_peer_connection(RTCConfiguration {
                    ice_servers,
                    ..Default::default()
                })
                .await?,
        );
        match self.negotiate(&pc, codec, fps, offer).await {
            Ok(v) => Ok(v),
            Err(e) => {
                let _ = pc.close().await;
                Err(e)
            }
        }
    }

    async fn negotiate(
        &self,
        pc: &Arc<RTCPeerConnection>,
        codec: Codec,
        fps: u32,
        offer: RTCSessionDescription,
    ) -> Result<Arc<Viewer>, StreamError> {
        let out = self.outbound(codec, fps)?;
        let sender = pc
            .add_track(out.track.clone() as Arc<dyn TrackLocal + Send + Sync>)
            .await?;
        let pipeline = out.pipeline.clone();
        // PLI/FIR from this viewer → keyframe for all (they share the encode). Reading RTCP also
        // drives the interceptors (NACK responder, reports).
        tokio::spawn(async move {
            while let Ok((pkts, _)) = sender.read_rtcp().await {
                for p in pkts {
                    let any = p.as_any();
                    if any.is::<PictureLossIndication>() || any.is::<FullIntraRequest>() {
                        pipeline.request_keyframe();
                    }
                }
            }
        });
        pc.set_remote_description(offer)
            .await
            .map_err(|e| StreamError::BadOffer(e.to_string()))?;
        let answer = pc
            .create_answer(None)
            .await
            .map_err(|e| StreamError::BadOffer(e.to_string()))?;
        let mut gathered = pc.gathering_complete_promise().await;
        pc.set_local_description(answer).await?;
        let _ = tokio::time::timeout(Duration::from_secs(2), gathered.recv()).await;
        let id = uuid::Uuid::new_v4().simple().to_string();
        let viewer = Arc::new(Viewer {
            id: id.clone(),
            codec,
            fps,
            pc: pc.clone(),
            offer_sdp: pc
                .remote_description()
                .await
                .map(|d| d.sdp)
                .unwrap_or_default(),
            answer_sdp: pc
                .local_description()
                .await
                .map(|d| d.sdp)
                .unwrap_or_default(),
            _demand: out.pipeline.demand(),
        });
        self.viewers.lock().unwrap().insert(id, viewer.clone());
        Ok(viewer)
    }

    pub fn answer_sdp(viewer: &Viewer) -> impl std::future::Future<Output = Option<String>> + '_ {
        async move { viewer.pc.local_description().await.map(|d| d.sdp) }
    }

    /// Drops a viewer; its pipeline stops when it was the last one.
    pub async fn remove_viewer(&self, id: &str) -> Result<(), StreamError> {
        let v = self
            .viewers
            .lock()
            .unwrap()
            .remove(id)
            .ok_or_else(|| StreamError::NoViewer(id.to_string()))?;
        let _ = v.pc.close().await;
        Ok(())
    }
}

async fn packetize(
    pipeline: Pipeline,
    track: Arc<TrackLocalStaticRTP>,
    clock: Arc<Mutex<Option<ClockPoint>>>,
) {
    let mut rx = pipeline.subscribe();
    let mut payloader: Box<dyn Payloader + Send> = match pipeline.codec() {
        Codec::H264 => Box::new(H264Payloader::default()),
        Codec::Vp8 => Box::new(Vp8Payloader::default()),
    };
    let epoch = Instant::now();
    let base_ts: u32 = rand::random();
    let mut seq: u16 = rand::random();
    let ssrc = 0; // each binding writes its own SSRC
    let ext = [HeaderExtension::PlayoutDelay(PlayoutDelayExtension {
        min_delay: 0,
        max_delay: 0,
    })];
    loop {
        let pkt = match rx.recv().await {
            Ok(p) => p,
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!(dropped = n, "RTP writer fell behind; asking for a keyframe");
                pipeline.request_keyframe();
                continue;
            }
            Err(_) => return,
        };
        let ts = base_ts.wrapping_add(
            (pkt.captured_at.saturating_duration_since(epoch).as_micros() as u64 * 9 / 100) as u32,
        );
        let payloads = match payloader.payload(MTU, &pkt.frame.data) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!("packetize: {e}");
                continue;
            }
        };
        let n = payloads.len();
        for (i, payload) in payloads.into_iter().enumerate() {
            let p = webrtc::rtp::packet::Packet {
                header: webrtc::rtp::header::Header {
                    version: 2,
                    marker: i + 1 == n,
                    sequence_number: seq,
                    timestamp: ts,
                    ssrc,
                    ..Default::default()
                },
                payload: Bytes::from(payload),
            };
            seq = seq.wrapping_add(1);
            if let Err(e) = track.write_rtp_with_extensions(&p, &ext).await {
                tracing::debug!("write_rtp: {e}");
            }
        }
        *clock.lock().unwrap() = Some(ClockPoint {
            captured_at: pkt.captured_at,
            rtp_timestamp: ts,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codec_choice() {
        let h264 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96 102\r\na=rtpmap:96 VP8/90000\r\na=rtpmap:102 H264/90000\r\n";
        assert_eq!(choose_codec(h264).unwrap(), Codec::H264);
        let vp8 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\na=rtpmap:96 VP8/90000\r\n";
        assert_eq!(choose_codec(vp8).unwrap(), Codec::Vp8);
        let audio = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=rtpmap:111 opus/48000/2\r\n";
        assert!(choose_codec(audio)
            .unwrap_err()
            .to_string()
            .contains("no video"));
        let av1 = "v=0\r\nm=video 9 UDP/TLS/RTP/SAVPF 45\r\na=rtpmap:45 AV1/90000\r\n";
        assert!(choose_codec(av1)
            .unwrap_err()
            .to_string()
            .contains("neither H264 nor VP8"));
    }
}

/// One `a=candidate` line, the parts a diagnosis needs.
#[derive(Debug, Clone, PartialEq)]
struct Cand {
    ip: String,
    port: u16,
    kind: String,
    proto: String,
}

fn candidates(sdp: &str) -> Vec<Cand> {
    sdp.lines()
        .filter_map(|l| l.trim().strip_prefix("a=candidate:"))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let typ = f.iter().position(|x| *x == "typ")?;
            Some(Cand {
                proto: f.get(2)?.to_ascii_lowercase(),
                ip: f.get(4)?.to_string(),
                port: f.get(5)?.parse().ok()?,
                kind: f.get(typ + 1)?.to_string(),
            })
        })
        .collect()
}

fn is_private(ip: &str) -> bool {
    match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(v)) => {
            v.is_private()
                || v.is_loopback()
                || v.is_link_local()
                || (v.octets()[0] == 100 && (64..128).contains(&v.octets()[1]))
        }
        Ok(std::net::IpAddr::V6(v)) => {
            v.is_loopback()
                || (v.segments()[0] & 0xfe00) == 0xfc00
                || (v.segments()[0] & 0xffc0) == 0xfe80
        }
        Err(_) => false,
    }
}

/// Why a viewer's connection most likely failed and what to change, from the candidates both
/// sides offered and the agent's ICE settings (webrtc-rs keeps no per-pair check counters, so
/// this reasons from addresses, not packets). Shown to the user as the `stream` failed event.
pub fn diagnose_ice_failure(local_sdp: &str, remote_sdp: &str, ice: &IceConfig) -> String {
    let local: Vec<Cand> = candidates(local_sdp)
        .into_iter()
        .filter(|c| c.proto == "udp")
        .collect();
    let remote: Vec<Cand> = candidates(remote_sdp)
        .into_iter()
        .filter(|c| c.proto == "udp")
        .collect();
    let ours = {
        let mut v: Vec<String> = local
            .iter()
            .map(|c| format!("{}:{}", c.ip, c.port))
            .collect();
        v.dedup();
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    let relay = local.iter().chain(&remote).any(|c| c.kind == "relay");
    if local.is_empty() {
        return "the agent offered no UDP candidates: it has no usable network interface, or its --udp-port could not be bound".into();
    }
    if remote.is_empty() {
        return format!(
            "the viewer offered no UDP candidates (its browser or network blocks UDP, or it sent candidates only after the offer); the agent offered {ours}. Allow UDP, or add a TURN server reachable over TCP/TLS (--ice-server turn:...)"
        );
    }
    if relay {
        return format!("the connection failed even through a TURN relay: check the TURN server's address and credentials (--ice-server) and that it is reachable from both sides; the agent offered {ours}");
    }
    if remote.iter().all(|c| c.ip.ends_with(".local")) && !local.iter().all(|c| is_private(&c.ip)) {
        return format!("the viewer hid its addresses behind mDNS names (.local), which resolve only on its own LAN; the agent offered {ours}. Use a TURN server (--ice-server) or a viewer on the same network");
    }
    match (&ice.public_ip, ice.udp_port) {
        (Some(ip), Some(port)) => format!(
            "viewers could not reach UDP {ip}:{port}: allow inbound UDP {port} to this host (firewall, cloud security group) and check that --public-ip {ip} is the address viewers use"
        ),
        (Some(ip), None) => format!(
            "viewers could not reach {ip} on the agent's random UDP ports ({ours}): pin one with --udp-port N and allow inbound UDP N to this host"
        ),
        (None, _) if local.iter().all(|c| is_private(&c.ip)) && remote.iter().any(|c| !is_private(&c.ip) && !c.ip.ends_with(".local")) => format!(
            "the agent offered only private addresses ({ours}) and the viewer is on another network: start the agent with --public-ip ADDRESS (the one viewers reach) and --udp-port N with inbound UDP N allowed, or add a TURN server (--ice-server)"
        ),
        (None, _) => format!(
            "no candidate pair connected; the agent offered {ours} and the viewer {}. If they are on different networks, start the agent with --public-ip and --udp-port (allow that UDP port) or add a TURN server (--ice-server)",
            {
                let mut v: Vec<String> = remote.iter().map(|c| format!("{}:{}", c.ip, c.port)).collect();
                v.dedup();
                v.join(", ")
            }
        ),
    }
}

#[cfg(test)]
mod diagnose_tests {
    use super::*;

    fn sdp(cands: &[&str]) -> String {
        cands
            .iter()
            .map(|c| format!("a=candidate:1 1 udp 2130706431 {c}\r\n"))
            .collect()
    }

    /// Data-driven: (agent candidates, viewer candidates, public ip, udp port) → words the
    /// diagnosis must contain.
    fn check(
        local: &[&str],
        remote: &[&str],
        public_ip: Option<&str>,
        udp_port: Option<u16>,
        expect: &[&str],
    ) {
        let ice = IceConfig {
            public_ip: public_ip.map(Into::into),
            udp_port,
            ..Default::default()
        };
        let d = diagnose_ice_failure(&sdp(local), &sdp(remote), &ice);
        for e in expect {
            assert!(d.contains(e), "diagnosis {d:?} lacks {e:?}");
        }
    }

    #[test]
    fn diagnoses() {
        check(
            &["10.0.2.15 5000 typ host"],
            &["203.0.113.9 6000 typ srflx"],
            None,
            None,
            &["only private addresses", "10.0.2.15:5000", "--public-ip"],
        );
        check(
            &["198.51.100.4 7001 typ host"],
            &["203.0.113.9 6000 typ srflx"],
            Some("198.51.100.4"),
            Some(7001),
            &["UDP 198.51.100.4:7001", "allow inbound UDP 7001"],
        );
        check(
            &["198.51.100.4 41234 typ host"],
            &["203.0.113.9 6000 typ host"],
            Some("198.51.100.4"),
            None,
            &["--udp-port"],
        );
        check(
            &["198.51.100.4 7001 typ host"],
            &["abc.local 6000 typ host"],
            None,
            None,
            &["mDNS"],
        );
        check(
            &["10.0.0.2 7001 typ host", "192.0.2.7 50000 typ relay"],
            &["203.0.113.9 6000 typ srflx"],
            None,
            None,
            &["TURN relay"],
        );
        check(
            &["10.0.0.2 7001 typ host"],
            &[],
            None,
            None,
            &["viewer offered no UDP candidates"],
        );
        check(
            &[],
            &["10.0.0.3 7001 typ host"],
            None,
            None,
            &["agent offered no UDP candidates"],
        );
        check(
            &["10.0.0.2 7001 typ host"],
            &["10.0.0.3 7001 typ host"],
            None,
            None,
            &["10.0.0.2:7001", "10.0.0.3:7001"],
        );
    }
}
