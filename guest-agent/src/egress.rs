//! The egress filter of a machine whose environment restricts outbound traffic
//! (`egressMode` / `egressAllowlist`), and the `egress` events it leads to.
//!
//! Enforced outside the sandbox: core starts `porthole-agent egress-proxy` in the machine's
//! network namespace but not in its user, PID or mount namespaces (nothing inside can see,
//! signal or reconfigure it), and installs packet rules from outside that redirect every new
//! TCP connection from inside to it and drop every other new packet but DNS. The proxy reads
//! the original destination (`SO_ORIGINAL_DST`), the TLS SNI or the HTTP Host name, lets the
//! connection through only when the allowlist names the destination, and writes one JSON
//! line per decision (host and port, never payload) to a file the guest agent turns into
//! `egress` events. Its own outbound sockets carry a firewall mark (`SO_MARK` needs
//! CAP_NET_ADMIN over the namespace, which the proxy has as its owner and nothing inside has),
//! the one thing the rules let out.
//!
//! Names are checked against the destination, not trusted: a name passes only when it
//! resolves to the address the client was connecting to, so a forged SNI or Host header
//! reaches nothing the allowlist does not name (domain fronting to an allowed name still
//! reaches that name's own servers only).

use serde_json::json;
use std::io::Write;
use std::net::{SocketAddr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub use porthole_envfile::egress::Policy;

/// The mark the rules let out: the proxy's own connections.
pub const MARK: u32 = 0x7068;

/// The server name of a TLS ClientHello (RFC 8446 4.1.2, RFC 6066 3), if `b` starts with one.
pub fn sni(b: &[u8]) -> Option<String> {
    // Record header: type 22 (handshake), version, length; then handshake type 1.
    if b.len() < 5 || b[0] != 22 {
        return None;
    }
    let hs = b.get(5..)?;
    if *hs.first()? != 1 {
        return None;
    }
    let mut p = 4 + 2 + 32; // handshake header, client version, random
    let sid = *hs.get(p)? as usize;
    p += 1 + sid;
    let cs = u16::from_be_bytes([*hs.get(p)?, *hs.get(p + 1)?]) as usize;
    p += 2 + cs;
    let comp = *hs.get(p)? as usize;
    p += 1 + comp;
    let ext_len = u16::from_be_bytes([*hs.get(p)?, *hs.get(p + 1)?]) as usize;
    p += 2;
    let end = (p + ext_len).min(hs.len());
    while p + 4 <= end {
        let ty = u16::from_be_bytes([hs[p], hs[p + 1]]);
        let len = u16::from_be_bytes([hs[p + 2], hs[p + 3]]) as usize;
        let data = hs.get(p + 4..p + 4 + len)?;
        if ty == 0 {
            // server_name_list: length, then (type 0 = host_name, length, name)
            let mut q = 2;
            while q + 3 <= data.len() {
                let nlen = u16::from_be_bytes([data[q + 1], data[q + 2]]) as usize;
                let name = data.get(q + 3..q + 3 + nlen)?;
                if data[q] == 0 {
                    return std::str::from_utf8(name).ok().map(str::to_string);
                }
                q += 3 + nlen;
            }
            return None;
        }
        p += 4 + len;
    }
    None
}

/// The Host header of an HTTP/1 request, without its port.
pub fn http_host(b: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(b).ok()?;
    let (head, _) = text.split_once("\r\n\r\n").unwrap_or((text, ""));
    head.lines().skip(1).find_map(|l| {
        let (k, v) = l.split_once(':')?;
        if !k.trim().eq_ignore_ascii_case("host") {
            return None;
        }
        let v = v.trim();
        let host = if let Some(rest) = v.strip_prefix('[') {
            rest.split_once(']')?.0
        } else {
            v.rsplit_once(':').map(|(h, _)| h).unwrap_or(v)
        };
        Some(host.to_string())
    })
}

/// Where a redirected connection was going (netfilter's SO_ORIGINAL_DST, IPv4).
fn original_dst(s: &tokio::net::TcpStream) -> std::io::Result<SocketAddr> {
    const SO_ORIGINAL_DST: libc::c_int = 80;
    let mut a: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `a`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_IP,
            SO_ORIGINAL_DST,
            &mut a as *mut _ as *mut libc::c_void,
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(SocketAddr::V4(SocketAddrV4::new(
        u32::from_be(a.sin_addr.s_addr).into(),
        u16::from_be(a.sin_port),
    )))
}

/// The decision log: one JSON line per refused connection and per first allowed one of a
/// destination (npm opens hundreds to the same registry).
struct Log {
    file: Mutex<std::fs::File>,
    seen: Mutex<std::collections::HashSet<(String, u16)>>,
    /// When each refused destination was last written: at most one line per destination
    /// every [`REFUSED_EVERY`], so a loop of refused connects cannot flood the host's disk.
    refused: Mutex<std::collections::HashMap<(String, u16), std::time::Instant>>,
}

const REFUSED_EVERY: Duration = Duration::from_secs(10);
/// Connections the filter serves at once; past it, new ones wait in the backlog.
const MAX_CONNECTIONS: usize = 512;

impl Log {
    fn record(&self, host: &str, port: u16, allowed: bool) {
        let key = (host.chars().take(255).collect::<String>(), port);
        if allowed && !self.seen.lock().unwrap().insert(key.clone()) {
            return;
        }
        if !allowed {
            let mut r = self.refused.lock().unwrap();
            let now = std::time::Instant::now();
            if r.get(&key)
                .is_some_and(|t| now.duration_since(*t) < REFUSED_EVERY)
            {
                return;
            }
            if r.len() > 10_000 {
                r.clear();
            }
            r.insert(key.clone(), now);
        }
        let host = key.0.as_str();
        let line = json!({"host": host, "port": port, "allowed": allowed}).to_string();
        let _ = writeln!(self.file.lock().unwrap(), "{line}");
    }
}

async fn handle(mut c: tokio::net::TcpStream, policy: Arc<Policy>, log: Arc<Log>) {
    let Ok(dst) = original_dst(&c) else { return };
    // The first bytes name the destination (TLS and HTTP clients speak first); 3 s is what
    // a client that waits for the server to speak gets before it is refused.
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    let name = loop {
        let got = tokio::time::timeout_at(deadline, c.read(&mut buf[n..])).await;
        match got {
            Ok(Ok(0)) | Ok(Err(_)) => break None,
            Ok(Ok(k)) => n += k,
            Err(_) => break None,
        }
        if let Some(h) = sni(&buf[..n]).or_else(|| http_host(&buf[..n])) {
            break Some(h);
        }
        if n == buf.len() {
            break None;
        }
    };
    let ip = dst.ip().to_string();
    let host = name.clone().unwrap_or_else(|| ip.clone());
    let allowed = policy.allows(&ip)
        || match &name {
            Some(h) if policy.allows(h) => tokio::net::lookup_host((h.as_str(), dst.port()))
                .await
                .map(|mut addrs| addrs.any(|a| a.ip() == dst.ip()))
                .unwrap_or(false),
            _ => false,
        };
    log.record(&host, dst.port(), allowed);
    if !allowed {
        return;
    }
    let Ok(sock) = tokio::net::TcpSocket::new_v4() else {
        return;
    };
    let mark = MARK;
    // SAFETY: setsockopt with a u32 value.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_MARK,
            &mark as *const u32 as *const libc::c_void,
            4,
        );
    }
    let Ok(Ok(mut up)) = tokio::time::timeout(Duration::from_secs(10), sock.connect(dst)).await
    else {
        return;
    };
    if up.write_all(&buf[..n]).await.is_err() {
        return;
    }
    let _ = tokio::io::copy_bidirectional(&mut c, &mut up).await;
}

/// `porthole-agent egress-proxy`: serves until `exit_fd` (a pipe whose write end only the
/// machine's supervisor holds) reads EOF, so it ends with the machine.
pub fn proxy_main(
    listen: SocketAddr,
    policy: Policy,
    log: &Path,
    exit_fd: Option<i32>,
) -> anyhow::Result<()> {
    use anyhow::Context;
    let policy = Arc::new(policy);
    let log_path = log.to_path_buf();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let l = tokio::net::TcpListener::bind(listen)
            .await
            .with_context(|| format!("egress proxy cannot listen on {listen}"))?;
        // Created once listening: core waits for the file before the machine may send.
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("egress log {}", log_path.display()))?;
        let log = Arc::new(Log {
            file: Mutex::new(file),
            seen: Mutex::new(Default::default()),
            refused: Mutex::new(Default::default()),
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        let exit = async move {
            let Some(fd) = exit_fd else {
                return std::future::pending::<()>().await;
            };
            use std::os::fd::FromRawFd;
            // SAFETY: the descriptor was handed to us for this, and nothing else uses it.
            let f = unsafe { std::fs::File::from_raw_fd(fd) };
            let _ = tokio::task::spawn_blocking(move || {
                let mut f = f;
                let mut b = [0u8; 1];
                let _ = std::io::Read::read(&mut f, &mut b);
            })
            .await;
        };
        tokio::pin!(exit);
        loop {
            tokio::select! {
                _ = &mut exit => return Ok(()),
                a = l.accept() => match a {
                    Ok((c, _)) => {
                        let Ok(slot) = slots.clone().acquire_owned().await else { return Ok(()) };
                        let (p, lg) = (policy.clone(), log.clone());
                        tokio::spawn(async move {
                            let _slot = slot;
                            handle(c, p, lg).await;
                        });
                    }
                    // Out of descriptors and the like: back off rather than spin.
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
    })
}

/// Turns the proxy's decision log into `egress` events (the agent tails it from the start:
/// the file is per boot).
pub fn spawn_follower(app: Arc<crate::app::App>, path: PathBuf) {
    tokio::spawn(async move {
        let mut pos = 0u64;
        let mut rest = String::new();
        loop {
            if let Ok(mut f) = tokio::fs::File::open(&path).await {
                use tokio::io::AsyncSeekExt;
                if f.seek(std::io::SeekFrom::Start(pos)).await.is_ok() {
                    let mut chunk = String::new();
                    if let Ok(k) = f.read_to_string(&mut chunk).await {
                        pos += k as u64;
                        rest.push_str(&chunk);
                    }
                }
            }
            while let Some(i) = rest.find('\n') {
                let line: String = rest.drain(..=i).collect();
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(&line) {
                    app.timeline.emit(
                        porthole_proto::Actor::System,
                        "egress",
                        json!({"host": v["host"], "port": v["port"], "allowed": v["allowed"]}),
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ClientHello as a real client sends it (curl 7.88 to example.com), trimmed to the
    /// fields the parser walks.
    fn client_hello(name: &str) -> Vec<u8> {
        let mut ext = Vec::new();
        let n = name.as_bytes();
        let mut list = vec![0u8];
        list.extend((n.len() as u16).to_be_bytes());
        list.extend(n);
        let mut sni_data = (list.len() as u16).to_be_bytes().to_vec();
        sni_data.extend(list);
        // a supported_versions extension first, so the parser has to skip one
        ext.extend([0x00, 0x2b, 0x00, 0x03, 0x02, 0x03, 0x04]);
        ext.extend([0x00, 0x00]);
        ext.extend((sni_data.len() as u16).to_be_bytes());
        ext.extend(sni_data);
        let mut body = vec![0x03, 0x03];
        body.extend([7u8; 32]);
        body.push(32);
        body.extend([9u8; 32]);
        body.extend([0x00, 0x02, 0x13, 0x01]);
        body.extend([0x01, 0x00]);
        body.extend((ext.len() as u16).to_be_bytes());
        body.extend(ext);
        let mut hs = vec![0x01, 0x00];
        hs.extend((body.len() as u16).to_be_bytes());
        hs.extend(body);
        let mut rec = vec![0x16, 0x03, 0x01];
        rec.extend((hs.len() as u16).to_be_bytes());
        rec.extend(hs);
        rec
    }

    #[test]
    fn names_from_the_first_bytes() {
        assert_eq!(
            sni(&client_hello("api.github.com")).as_deref(),
            Some("api.github.com")
        );
        let full = client_hello("api.github.com");
        // A hello cut short names nothing yet (the proxy reads more).
        assert_eq!(sni(&full[..full.len() - 4]), None);
        assert_eq!(sni(b"GET / HTTP/1.1\r\n"), None);
        for (req, want) in [
            (
                "GET / HTTP/1.1\r\nHost: example.com\r\n\r\n",
                Some("example.com"),
            ),
            (
                "GET / HTTP/1.1\r\nhost: example.com:8080\r\n\r\n",
                Some("example.com"),
            ),
            ("GET / HTTP/1.1\r\nHost: [::1]:80\r\n\r\n", Some("::1")),
            ("GET / HTTP/1.1\r\nUser-Agent: x\r\n", None),
        ] {
            assert_eq!(http_host(req.as_bytes()).as_deref(), want, "{req:?}");
        }
    }
}
