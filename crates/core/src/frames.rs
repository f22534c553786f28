//! The loopback WebSocket that carries encoded video from the app's Rust side to its webview.
//!
//! Why not a Tauri `Channel`: a channel message over 1 KB becomes an `eval` that makes the page
//! `fetch` the bytes over `ipc://`, served on the GTK main thread, about three main-loop
//! dispatches per frame, strictly in order, on the same thread that paints the window (issue 16:
//! capture → drawn p50 107 ms at 29 fps with WebKitWebProcess at 135% of a core). A WebSocket is
//! read by WebKit's network process and handed to the page as one message event.
//!
//! Architecture Invariant: only the app's own page can read a stream. The server listens on
//! 127.0.0.1 only; every stream URL carries the per-launch secret (32 random bytes, compared in
//! constant time) and a stream id that is good for one connection; the handshake's `Origin` must
//! be one the app was started with. A web page in a browser on the same host knows neither the
//! port's secret nor an id, and its Origin is refused anyway.
//!
//! Architecture Invariant: a slow reader never makes the app buffer without bound. Each stream
//! has a small queue; when it is full the sink drops frames up to the next keyframe and tells
//! its caller, who asks the agent for one (a dropped delta frame would leave the decoder drawing
//! on a broken reference). A socket that takes no frame for 10 s ends the stream. (WebKit's
//! network process reads the socket whatever the page's JS does, so a slow page shows up in the
//! decoder's queue instead: `ui/src/video/decoder.ts` restarts past 24 frames and asks for a
//! keyframe.) At most 64 connections may be in their handshake (2 s each) at once, and the
//! accept loop outlives accept errors: a local process cannot starve the app's live views.

use crate::error::{CoreError, Result};
use base64::Engine;
use bytes::Bytes;
use sha1::{Digest, Sha1};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

/// Frames queued per stream before the sink starts dropping to the next keyframe: about half a
/// second at 30 fps. More only adds latency once the page falls behind.
const QUEUE: usize = 16;
/// The handshake must fit in this (a browser's is about 500 bytes).
const MAX_HANDSHAKE: usize = 8 * 1024;
/// Connections allowed in their handshake at once (the app opens one per view).
const MAX_HANDSHAKES: usize = 64;
/// A frame the page's socket does not take within this ends the stream.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
const WS_GUID: &str = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11";

pub struct FrameServer {
    addr: SocketAddr,
    secret: String,
    origins: Vec<String>,
    next: AtomicU64,
    waiting: Mutex<HashMap<u64, mpsc::Receiver<Bytes>>>,
}

/// Where a stream's frames go; dropping it ends the stream (the page sees the socket close).
pub struct FrameSink {
    tx: mpsc::Sender<Bytes>,
    /// Set after a drop: everything up to the next keyframe is dropped too.
    skipping: AtomicBool,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Sent {
    Queued,
    /// The page is behind: this frame was dropped, and so will be the rest until a keyframe.
    /// `first` is true for the frame that started the drop (ask the agent for a keyframe once).
    Dropped {
        first: bool,
    },
    /// The page closed the stream.
    Closed,
}

impl FrameSink {
    /// Queues one frame without waiting (the live path: never hold up the RTP reader).
    pub fn send(&self, frame: Bytes, keyframe: bool) -> Sent {
        if self.tx.is_closed() {
            return Sent::Closed;
        }
        if self.skipping.load(Ordering::Relaxed) && !keyframe {
            return Sent::Dropped { first: false };
        }
        match self.tx.try_send(frame) {
            Ok(()) => {
                self.skipping.store(false, Ordering::Relaxed);
                Sent::Queued
            }
            Err(mpsc::error::TrySendError::Full(_)) => {
                let first = !self.skipping.swap(true, Ordering::Relaxed);
                Sent::Dropped { first }
            }
            Err(mpsc::error::TrySendError::Closed(_)) => Sent::Closed,
        }
    }

    /// Queues one frame, waiting for room (replay: it paces itself, nothing may be skipped).
    /// False once the page closed the stream. Not from inside the async runtime.
    pub fn send_blocking(&self, frame: Bytes) -> bool {
        self.tx.blocking_send(frame).is_ok()
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }
}

impl FrameServer {
    /// Listens on 127.0.0.1 (a free port); `origins` are the page origins allowed to connect.
    pub async fn start(origins: Vec<String>) -> Result<Arc<Self>> {
        let listener = TcpListener::bind(("127.0.0.1", 0))
            .await
            .map_err(CoreError::io("frame server: bind 127.0.0.1"))?;
        let addr = listener
            .local_addr()
            .map_err(CoreError::io("frame server: local address"))?;
        let mut key = [0u8; 32];
        rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut key);
        let secret: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let server = Arc::new(Self {
            addr,
            secret,
            origins,
            next: AtomicU64::new(1),
            waiting: Mutex::new(HashMap::new()),
        });
        let s = Arc::downgrade(&server);
        // Connections still in their handshake at once: a local process opening many and never
        // finishing must not use up the app's file descriptors (and so the accept loop).
        let handshakes = Arc::new(tokio::sync::Semaphore::new(MAX_HANDSHAKES));
        tokio::spawn(async move {
            loop {
                let sock = match listener.accept().await {
                    Ok((sock, _)) => sock,
                    Err(e) => {
                        // EMFILE and the like pass; the server must outlive them.
                        tracing::warn!("frame server: accept: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                };
                let Some(server) = s.upgrade() else { return };
                let Ok(permit) = handshakes.clone().try_acquire_owned() else {
                    continue; // dropped: too many half-open connections
                };
                tokio::spawn(async move {
                    if let Err(e) = server.serve(sock, permit).await {
                        tracing::debug!("frame server: {e}");
                    }
                });
            }
        });
        Ok(server)
    }

    /// A new stream: its sink and the URL the page opens (good for one connection).
    pub fn open(&self) -> (FrameSink, String) {
        self.sweep();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel(QUEUE);
        self.waiting.lock().unwrap().insert(id, rx);
        let url = format!("ws://{}/frames/{id}?key={}", self.addr, self.secret);
        (
            FrameSink {
                tx,
                skipping: AtomicBool::new(false),
            },
            url,
        )
    }

    /// Forgets streams whose sink is gone and that no page ever opened.
    fn sweep(&self) {
        self.waiting.lock().unwrap().retain(|_, rx| !rx.is_closed());
    }

    async fn serve(
        &self,
        mut sock: TcpStream,
        permit: tokio::sync::OwnedSemaphorePermit,
    ) -> std::io::Result<()> {
        // One frame per message, written as soon as it is queued: no Nagle delay.
        sock.set_nodelay(true)?;
        // A connection that never finishes its handshake is dropped, not kept forever.
        let req =
            tokio::time::timeout(std::time::Duration::from_secs(2), read_handshake(&mut sock))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
        let rx = match self.accept(&req) {
            Ok((id, key)) => {
                let rx = self.waiting.lock().unwrap().remove(&id);
                match rx {
                    Some(rx) => {
                        let accept = accept_key(&key);
                        sock.write_all(
                            format!(
                                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
                            )
                            .as_bytes(),
                        )
                        .await?;
                        rx
                    }
                    None => {
                        return refuse(&mut sock, 404, "no such stream (each is opened once)").await
                    }
                }
            }
            Err((status, why)) => return refuse(&mut sock, status, why).await,
        };
        drop(permit);
        self.sweep();
        pump(sock, rx).await
    }

    /// Checks a handshake: the stream id and the WebSocket key, or the status and why not.
    fn accept(&self, req: &str) -> std::result::Result<(u64, String), (u16, &'static str)> {
        let mut lines = req.split("\r\n");
        let line = lines.next().unwrap_or_default();
        let mut parts = line.split(' ');
        let (method, target) = (parts.next(), parts.next().unwrap_or_default());
        if method != Some("GET") {
            return Err((405, "GET only"));
        }
        let (path, query) = target.split_once('?').unwrap_or((target, ""));
        let key = query
            .split('&')
            .find_map(|kv| kv.strip_prefix("key="))
            .unwrap_or_default();
        if !constant_time_eq(key.as_bytes(), self.secret.as_bytes()) {
            return Err((403, "wrong or missing key"));
        }
        let mut origin = None;
        let mut ws_key = None;
        let mut upgrade = false;
        for h in lines {
            let Some((name, value)) = h.split_once(':') else {
                continue;
            };
            let value = value.trim();
            match name.trim().to_ascii_lowercase().as_str() {
                "origin" => origin = Some(value),
                "sec-websocket-key" => ws_key = Some(value.to_string()),
                "upgrade" => upgrade = value.eq_ignore_ascii_case("websocket"),
                _ => {}
            }
        }
        match origin {
            Some(o) if self.origins.iter().any(|a| a == o) => {}
            _ => return Err((403, "origin not allowed")),
        }
        let (Some(ws_key), true) = (ws_key, upgrade) else {
            return Err((400, "not a WebSocket handshake"));
        };
        let id = path
            .strip_prefix("/frames/")
            .and_then(|s| s.parse::<u64>().ok())
            .ok_or((404, "no such stream"))?;
        Ok((id, ws_key))
    }
}

async fn read_handshake(sock: &mut TcpStream) -> std::io::Result<String> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = sock.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.windows(4).any(|w| w == b"\r\n\r\n") {
            return Ok(String::from_utf8_lossy(&buf).into_owned());
        }
        if buf.len() > MAX_HANDSHAKE {
            return Err(std::io::Error::other("handshake too long"));
        }
    }
}

async fn refuse(sock: &mut TcpStream, status: u16, why: &str) -> std::io::Result<()> {
    let reason = match status {
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        _ => "Method Not Allowed",
    };
    let body = format!("{{\"error\":{{\"code\":\"frames_refused\",\"message\":\"{why}\"}}}}");
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    sock.write_all(resp.as_bytes()).await
}

/// Writes each queued frame as one binary message until the sink or the page goes away.
async fn pump(sock: TcpStream, mut rx: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    let (mut rd, mut wr) = sock.into_split();
    // The page sends nothing but a close frame; any read result ends the stream.
    let closed = async move {
        let mut b = [0u8; 256];
        loop {
            match rd.read(&mut b).await {
                Ok(0) | Err(_) => return,
                Ok(n) if b[..n].first().is_some_and(|h| h & 0x0f == 0x8) => return,
                Ok(_) => {}
            }
        }
    };
    tokio::pin!(closed);
    loop {
        tokio::select! {
            f = rx.recv() => match f {
                Some(f) => {
                    // Header and frame as they are: no copy of the frame on this path.
                    let write = async {
                        wr.write_all(&frame_header(f.len())).await?;
                        wr.write_all(&f).await
                    };
                    tokio::time::timeout(WRITE_TIMEOUT, write)
                        .await
                        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))??;
                }
                None => break,
            },
            _ = &mut closed => break,
        }
    }
    // Close frame, status 1000: the stream ended.
    let _ = wr.write_all(&[0x88, 2, 0x03, 0xe8]).await;
    Ok(())
}

/// A final, unmasked binary frame's header for `len` payload bytes (RFC 6455 5.2).
pub fn frame_header(len: usize) -> Vec<u8> {
    let mut h = vec![0x82];
    if len < 126 {
        h.push(len as u8);
    } else if len <= u16::MAX as usize {
        h.push(126);
        h.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        h.push(127);
        h.extend_from_slice(&(len as u64).to_be_bytes());
    }
    h
}

/// `Sec-WebSocket-Accept` for a client's key (RFC 6455 4.2.2).
pub fn accept_key(key: &str) -> String {
    let mut h = Sha1::new();
    h.update(key.as_bytes());
    h.update(WS_GUID.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(h.finalize())
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORIGIN: &str = "tauri://localhost";

    async fn handshake(url: &str, origin: Option<&str>) -> (TcpStream, String) {
        let rest = url.strip_prefix("ws://").unwrap();
        let (host, target) = rest.split_at(rest.find('/').unwrap());
        let mut s = TcpStream::connect(host).await.unwrap();
        let mut req = format!(
            "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n"
        );
        if let Some(o) = origin {
            req.push_str(&format!("Origin: {o}\r\n"));
        }
        req.push_str("\r\n");
        s.write_all(req.as_bytes()).await.unwrap();
        let mut head = Vec::new();
        let mut b = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            if s.read(&mut b).await.unwrap() == 0 {
                break;
            }
            head.push(b[0]);
        }
        (s, String::from_utf8(head).unwrap())
    }

    async fn read_message(s: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut h = [0u8; 2];
        s.read_exact(&mut h).await.unwrap();
        let len = match h[1] & 0x7f {
            126 => {
                let mut l = [0u8; 2];
                s.read_exact(&mut l).await.unwrap();
                u16::from_be_bytes(l) as usize
            }
            127 => {
                let mut l = [0u8; 8];
                s.read_exact(&mut l).await.unwrap();
                u64::from_be_bytes(l) as usize
            }
            n => n as usize,
        };
        let mut body = vec![0u8; len];
        s.read_exact(&mut body).await.unwrap();
        (h[0], body)
    }

    #[test]
    fn accept_key_is_rfc6455s_example() {
        assert_eq!(
            accept_key("dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }

    #[test]
    fn frame_header_lengths() {
        for (len, want) in [
            (5usize, vec![0x82, 5]),
            (125, vec![0x82, 125]),
            (126, vec![0x82, 126, 0, 126]),
            (65535, vec![0x82, 126, 0xff, 0xff]),
            (65536, vec![0x82, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            assert_eq!(frame_header(len), want, "len {len}");
        }
    }

    #[tokio::test]
    async fn frames_reach_the_page_in_order_whole() {
        let server = FrameServer::start(vec![ORIGIN.into()]).await.unwrap();
        let (sink, url) = server.open();
        let (mut s, head) = handshake(&url, Some(ORIGIN)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert!(head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="));
        let sizes = [3usize, 200, 70_000];
        for (i, n) in sizes.iter().enumerate() {
            assert_eq!(
                sink.send(Bytes::from(vec![i as u8; *n]), i == 0),
                Sent::Queued
            );
        }
        for (i, n) in sizes.iter().enumerate() {
            let (op, body) = read_message(&mut s).await;
            assert_eq!(op, 0x82);
            assert_eq!(body, vec![i as u8; *n]);
        }
        drop(sink);
        assert_eq!(read_message(&mut s).await, (0x88, vec![0x03, 0xe8]));
    }

    /// Every way in that is not the app's page with its URL: refused, no frame sent.
    #[tokio::test]
    async fn the_wrong_key_origin_or_stream_is_refused() {
        let server = FrameServer::start(vec![ORIGIN.into()]).await.unwrap();
        let (sink, url) = server.open();
        let wrong_key = url.replace("key=", "key=0");
        let no_key = url.split('?').next().unwrap().to_string();
        let other_stream = url.replace("/frames/1?", "/frames/7?");
        let cases: [(&str, &str, Option<&str>, &str); 5] = [
            ("wrong key", &wrong_key, Some(ORIGIN), "403"),
            ("no key", &no_key, Some(ORIGIN), "403"),
            (
                "a web page's origin",
                &url,
                Some("http://evil.example"),
                "403",
            ),
            ("no origin", &url, None, "403"),
            ("unknown stream", &other_stream, Some(ORIGIN), "404"),
        ];
        for (what, u, origin, status) in cases {
            let (_, head) = handshake(u, origin).await;
            assert!(
                head.starts_with(&format!("HTTP/1.1 {status}")),
                "{what}: {head}"
            );
        }
        // Still unopened: the right page gets it, once.
        let (_, head) = handshake(&url, Some(ORIGIN)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let (_, head) = handshake(&url, Some(ORIGIN)).await;
        assert!(head.starts_with("HTTP/1.1 404"), "second open: {head}");
        drop(sink);
    }

    #[tokio::test]
    async fn a_page_that_falls_behind_skips_to_the_next_keyframe() {
        let server = FrameServer::start(vec![ORIGIN.into()]).await.unwrap();
        let (sink, _url) = server.open();
        // Nobody reads: the queue fills.
        for i in 0..QUEUE {
            assert_eq!(sink.send(Bytes::from(vec![i as u8]), i == 0), Sent::Queued);
        }
        assert_eq!(
            sink.send(Bytes::from_static(b"d"), false),
            Sent::Dropped { first: true }
        );
        assert_eq!(
            sink.send(Bytes::from_static(b"d"), false),
            Sent::Dropped { first: false }
        );
        // A keyframe while still full: dropped, still waiting for the next one.
        assert_eq!(
            sink.send(Bytes::from_static(b"k"), true),
            Sent::Dropped { first: false }
        );
    }

    /// A local process holding many connections open without a handshake: they are cut off
    /// (the cap, then the 2 s timeout) and the page gets its stream afterwards.
    #[tokio::test]
    async fn half_open_connections_do_not_starve_the_page() {
        let server = FrameServer::start(vec![ORIGIN.into()]).await.unwrap();
        let (_sink, url) = server.open();
        let host = url
            .strip_prefix("ws://")
            .unwrap()
            .split('/')
            .next()
            .unwrap()
            .to_string();
        let mut idle = vec![];
        for _ in 0..(MAX_HANDSHAKES + 20) {
            idle.push(TcpStream::connect(&host).await.unwrap());
        }
        // Past the handshake timeout every one of them has been closed by the server.
        tokio::time::sleep(std::time::Duration::from_millis(2300)).await;
        for s in idle.iter_mut() {
            let mut b = [0u8; 1];
            let n = tokio::time::timeout(std::time::Duration::from_secs(2), s.read(&mut b))
                .await
                .expect("the server closes a half-open connection")
                .unwrap_or(0);
            assert_eq!(n, 0);
        }
        let (_, head) = handshake(&url, Some(ORIGIN)).await;
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    }

    #[tokio::test]
    async fn a_closed_page_stops_the_sink() {
        let server = FrameServer::start(vec![ORIGIN.into()]).await.unwrap();
        let (sink, url) = server.open();
        let (mut s, _) = handshake(&url, Some(ORIGIN)).await;
        // A masked close frame, as a browser sends it.
        s.write_all(&[0x88, 0x80, 1, 2, 3, 4]).await.unwrap();
        for _ in 0..100 {
            if sink.is_closed() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(sink.send(Bytes::from_static(b"x"), true), Sent::Closed);
    }
}
