//! HTTP client for a machine's guest agent (contracts.md), with optional TLS pinned to a
//! certificate fingerprint for remote hosts.

use crate::error::{CoreError, Result};
use porthole_proto::{EventPage, Health};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;

#[derive(Clone, Debug)]
pub struct AgentClient {
    pub url: String,
    token: String,
    http: reqwest::Client,
}

/// Accepts exactly one certificate, by SHA-256 of its DER (self-signed agents on remote hosts).
#[derive(Debug)]
struct Pinned {
    sha256: Vec<u8>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        use sha2::Digest;
        if sha2::Sha256::digest(end_entity.as_ref()).as_slice() == self.sha256.as_slice() {
            Ok(rustls::client::danger::ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(
                "certificate fingerprint does not match the pinned one".into(),
            ))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// Parses `AA:BB:...` or plain hex SHA-256 fingerprints.
pub fn parse_fingerprint(s: &str) -> Result<Vec<u8>> {
    let hex: String = s.chars().filter(|c| *c != ':').collect();
    if hex.len() != 64 {
        return Err(CoreError::Invalid(format!(
            "fingerprint {s}: expected a SHA-256 (64 hex digits, colons allowed)"
        )));
    }
    (0..32)
        .map(|i| u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| CoreError::Invalid(format!("fingerprint {s}: not hexadecimal")))
}

impl AgentClient {
    pub fn new(url: &str, token: &str, fingerprint: Option<&str>) -> Result<Self> {
        static PROVIDER: std::sync::Once = std::sync::Once::new();
        PROVIDER.call_once(|| {
            let _ = rustls::crypto::ring::default_provider().install_default();
        });
        let url = url.trim_end_matches('/').to_string();
        let mut b = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .no_proxy();
        if url.starts_with("https://") {
            let provider = Arc::new(rustls::crypto::ring::default_provider());
            let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
                .with_safe_default_protocol_versions()
                .map_err(|e| CoreError::Invalid(e.to_string()))?;
            let cfg = match fingerprint {
                Some(f) => builder
                    .dangerous()
                    .with_custom_certificate_verifier(Arc::new(Pinned { sha256: parse_fingerprint(f)?, provider }))
                    .with_no_client_auth(),
                None => {
                    return Err(CoreError::Invalid(format!(
                        "{url}: an https agent needs --fingerprint SHA256 (printed by the agent's install script)"
                    )))
                }
            };
            b = b.tls_backend_preconfigured(cfg);
        }
        let http = b
            .build()
            .map_err(|e| CoreError::Invalid(format!("http client: {e}")))?;
        Ok(Self {
            url,
            token: token.to_string(),
            http,
        })
    }

    fn err(&self, m: impl std::fmt::Display) -> CoreError {
        CoreError::Agent {
            url: self.url.clone(),
            message: m.to_string(),
        }
    }

    async fn check(&self, r: reqwest::Response) -> Result<reqwest::Response> {
        if r.status().is_success() {
            return Ok(r);
        }
        let status = r.status();
        let body: Value = r.json().await.unwrap_or(Value::Null);
        let msg = body["error"]["message"].as_str().map(String::from);
        Err(self.err(match (status.as_u16(), msg) {
            (401, _) => "the agent refused the token (401): check the machine's token".to_string(),
            (_, Some(m)) => format!("{status}: {m}"),
            (_, None) => format!("answered {status} without a Porthole error body: is something else (a proxy?) listening at this address?"),
        }))
    }

    pub async fn health(&self) -> Result<Health> {
        let r = self
            .http
            .get(format!("{}/v1/health", self.url))
            .timeout(Duration::from_secs(3))
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        let r = self.check(r).await?;
        r.json().await.map_err(|e| self.err(e))
    }

    /// An authenticated GET that answered 2xx.
    async fn get_ok(&self, path: &str) -> Result<reqwest::Response> {
        let r = self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        self.check(r).await
    }

    pub async fn get(&self, path: &str) -> Result<Value> {
        self.get_ok(path)
            .await?
            .json()
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn get_bytes(&self, path: &str) -> Result<bytes::Bytes> {
        self.get_ok(path)
            .await?
            .bytes()
            .await
            .map_err(|e| self.err(e))
    }

    pub async fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        self.check(r).await?.json().await.map_err(|e| self.err(e))
    }

    pub async fn events(&self, after: u64, limit: usize) -> Result<EventPage> {
        let v = self
            .get(&format!("/v1/events?after={after}&limit={limit}"))
            .await?;
        serde_json::from_value(v).map_err(|e| self.err(e))
    }

    /// Bytes `from..` of a recording part (a Range request); empty when nothing new.
    /// Appends part `part` of recording `id` from byte `from` to `out`, as it arrives (never
    /// the whole part in memory), refusing more than `room` bytes: the guest is not trusted
    /// to say how big its recording is. Returns the bytes written; what was written before an
    /// error is a true prefix, so the next sync resumes after it.
    pub async fn video_to(
        &self,
        id: &str,
        part: u32,
        from: u64,
        out: &mut std::fs::File,
        room: u64,
    ) -> Result<u64> {
        use std::io::Write;
        let r = self
            .http
            .get(format!("{}/v1/recordings/{id}/video?part={part}", self.url))
            .bearer_auth(&self.token)
            .header("Range", format!("bytes={from}-"))
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        if r.status().as_u16() == 416 {
            return Ok(0);
        }
        let mut r = self.check(r).await?;
        let mut n = 0u64;
        while let Some(chunk) = r.chunk().await.map_err(|e| self.err(e))? {
            n += chunk.len() as u64;
            if n > room {
                return Err(self.err(format!(
                    "recording {id} part {part} is larger than the {} MiB a part may be (PORTHOLE_SYNC_MAX_PART_MB): not synced further",
                    (from + room) >> 20
                )));
            }
            out.write_all(&chunk)
                .map_err(CoreError::io(format!("write recording {id} part {part}")))?;
        }
        Ok(n)
    }

    /// WHEP: posts an SDP offer, returns (answer, resource location).
    /// Offers SDP for a stream, at most `max_fps` frames a second when given.
    pub async fn whep(&self, offer: &str, max_fps: Option<u32>) -> Result<(String, String)> {
        let q = max_fps.map(|f| format!("?max_fps={f}")).unwrap_or_default();
        let r = self
            .http
            .post(format!("{}/v1/whep{q}", self.url))
            .bearer_auth(&self.token)
            .header("Content-Type", "application/sdp")
            .body(offer.to_string())
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        let r = self.check(r).await?;
        let loc = r
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        Ok((r.text().await.map_err(|e| self.err(e))?, loc))
    }

    pub async fn delete(&self, path: &str) -> Result<()> {
        let r = self
            .http
            .delete(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(|e| self.err(describe(&e)))?;
        self.check(r).await.map(|_| ())
    }
}

/// A connection error in words: refused, timed out, or the TLS pin failing.
fn describe(e: &reqwest::Error) -> String {
    use std::error::Error;
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s = format!("{s}: {inner}");
        src = inner.source();
    }
    if s.contains("fingerprint") {
        "TLS certificate does not match the pinned fingerprint (wrong host, or the agent's certificate changed)".into()
    } else if e.is_connect() {
        format!("cannot connect ({s})")
    } else if e.is_timeout() {
        "timed out".into()
    } else {
        s
    }
}
