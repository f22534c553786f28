//! Providers: where a machine runs. One trait; the manager picks the implementation by kind.
//!
//! A provider brings a machine to the point where its guest agent answers, and takes it down
//! again without leaving anything behind. Everything after that (streaming, actions, sync)
//! goes through the agent's API and is the same for every provider.

pub mod limits;
pub mod local;
pub mod qemu;
pub mod remote;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub mod seccomp;

use crate::error::Result;
use crate::machine::{CreateSpec, Machine, Machines};

#[allow(async_fn_in_trait)]
pub trait Provider {
    /// Boots a new machine; fills in `agent_url`, `pid` and `spec`. On error the manager
    /// calls `destroy` to remove whatever was started.
    async fn create(&self, ms: &Machines, spec: &CreateSpec, m: &mut Machine) -> Result<()>;
    /// Boots a stopped machine again with the same identity.
    async fn start(&self, ms: &Machines, m: &mut Machine) -> Result<()>;
    async fn stop(&self, m: &mut Machine) -> Result<()>;
    /// Stops it and removes everything it owns (processes, network objects, files).
    async fn destroy(&self, m: &Machine) -> Result<()>;
    /// Why a machine recorded as running is not (its process died), if it is not.
    fn dead_reason(&self, m: &Machine) -> Option<String>;
}

/// Whether a process exists and is not a zombie.
pub fn pid_alive(pid: i64) -> bool {
    if pid <= 0 {
        return false;
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

pub fn which(bin: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(bin))
        .find(|p| p.is_file())
}

/// The guest agent binary: `$PORTHOLE_AGENT_BIN`, next to this executable, or on PATH.
pub fn agent_bin() -> Result<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("PORTHOLE_AGENT_BIN").map(std::path::PathBuf::from) {
        if p.is_file() {
            return Ok(p);
        }
        return Err(crate::error::CoreError::Missing(format!(
            "PORTHOLE_AGENT_BIN={} does not exist",
            p.display()
        )));
    }
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            let p = dir.join("porthole-agent");
            if p.is_file() {
                return Ok(p);
            }
        }
    }
    which("porthole-agent").ok_or_else(|| {
        crate::error::CoreError::Missing(
            "porthole-agent not found: build it (cargo build -p porthole-agent), install the porthole-agent package, or set PORTHOLE_AGENT_BIN".into(),
        )
    })
}

/// A free TCP port on an address (bound and released: good enough against other tools).
pub fn free_port(ip: &str) -> Result<u16> {
    let l = std::net::TcpListener::bind((ip, 0))
        .map_err(crate::error::CoreError::io("find a free port"))?;
    Ok(l.local_addr()
        .map_err(crate::error::CoreError::io("find a free port"))?
        .port())
}
