//! A remote host: any Linux machine already running the guest agent, added by URL and token
//! (https with a pinned certificate fingerprint). Nothing to boot or tear down here.

use super::Provider;
use crate::agent::AgentClient;
use crate::error::{CoreError, Result};
use crate::machine::{CreateSpec, Machine, Machines};
use serde_json::json;

pub struct RemoteHost;

impl Provider for RemoteHost {
    async fn create(&self, ms: &Machines, spec: &CreateSpec, m: &mut Machine) -> Result<()> {
        let url = spec.url.as_deref().ok_or_else(|| {
            CoreError::Invalid(
                "--provider remote needs --url http[s]://host:port and --token-file PATH".into(),
            )
        })?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(CoreError::Invalid(format!(
                "--url {url}: expected http://host:port or https://host:port"
            )));
        }
        let clear_over_network = url
            .strip_prefix("http://")
            .is_some_and(|rest| !is_loopback_authority(rest));
        if clear_over_network && !spec.insecure_http {
            return Err(CoreError::Invalid(format!(
                "--url {url}: plain http to another host sends the machine's token, secrets and \
                 screen in clear; use https:// with --fingerprint (the agent's certificate), or, \
                 on a network you trust, say so with --insecure-http"
            )));
        }
        let tf = spec.token_file.as_ref().ok_or_else(|| {
            CoreError::Invalid(
                "--provider remote needs --token-file PATH (the agent's token)".into(),
            )
        })?;
        let token = std::fs::read_to_string(tf)
            .map_err(CoreError::io(format!("read token file {}", tf.display())))?;
        let token = token.trim();
        if token.is_empty() {
            return Err(CoreError::Invalid(format!(
                "token file {} is empty",
                tf.display()
            )));
        }
        let client = AgentClient::new(url, token, spec.fingerprint.as_deref())?;
        let h = client.health().await?;
        // /v1/health needs no token: prove the token works before calling the host added.
        client.get("/v1/control").await?;
        ms.state.create_keys()?;
        crate::machine::write_private(&m.token_path, token.as_bytes())?;
        m.agent_url = Some(url.trim_end_matches('/').to_string());
        m.spec = json!({"fingerprint": spec.fingerprint, "agent_version": h.version, "problems": h.problems});
        if clear_over_network {
            // Said wherever the machine is listed, like `"isolated": false`.
            m.spec["insecure_http"] = json!(true);
        }
        Ok(())
    }

    async fn start(&self, ms: &Machines, m: &mut Machine) -> Result<()> {
        ms.client(m)?.health().await.map(|_| ())
    }

    async fn stop(&self, _m: &mut Machine) -> Result<()> {
        Ok(())
    }

    async fn destroy(&self, _m: &Machine) -> Result<()> {
        Ok(())
    }

    fn dead_reason(&self, _m: &Machine) -> Option<String> {
        None
    }
}

/// Whether `host[:port][/...]` names this machine: only then may plain http carry a token.
/// A name other than `localhost` is not trusted to resolve to loopback (DNS is not ours).
fn is_loopback_authority(rest: &str) -> bool {
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::is_loopback_authority;

    #[test]
    fn only_loopback_may_be_plain_http() {
        for (authority, loopback) in [
            ("127.0.0.1:7300", true),
            ("127.9.9.9:1/v1", true),
            ("localhost:7300", true),
            ("LOCALHOST", true),
            ("[::1]:7300", true),
            ("10.0.0.5:7300", false),
            ("192.168.1.2", false),
            ("[::ffff:10.0.0.1]:7300", false),
            ("localhost.evil.example:7300", false),
            ("127.0.0.1.nip.io:7300", false),
            ("example.com/127.0.0.1:1", false),
            ("", false),
        ] {
            assert_eq!(is_loopback_authority(authority), loopback, "{authority}");
        }
    }
}
