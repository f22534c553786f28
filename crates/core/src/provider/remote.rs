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
