//! QEMU VMs: qcow2 base image + per-machine overlay, the agent reached through a forwarded
//! loopback port. See ARCHITECTURE.md for status.

use super::Provider;
use crate::error::{CoreError, Result};
use crate::machine::{CreateSpec, Machine, Machines};
use crate::paths::StateDir;
use std::path::Path;

pub struct Qemu {
    state: StateDir,
}

impl Qemu {
    pub fn new(state: StateDir) -> Self {
        Self { state }
    }

    fn image(&self) -> std::path::PathBuf {
        self.state.images().join("porthole-guest-amd64.qcow2")
    }

    pub async fn snapshot(&self, _ms: &Machines, _m: &Machine, _snap: &str, _dir: &Path) -> Result<serde_json::Value> {
        Err(CoreError::Invalid("qemu snapshots need a running qemu machine, which this build cannot create yet".into()))
    }
}

impl Provider for Qemu {
    async fn create(&self, _ms: &Machines, _spec: &CreateSpec, _m: &mut Machine) -> Result<()> {
        if super::which("qemu-system-x86_64").is_none() {
            return Err(CoreError::Missing("qemu-system-x86_64 is not installed: sudo apt-get install qemu-system-x86 qemu-utils".into()));
        }
        Err(CoreError::Missing(format!(
            "no guest image at {}: the qemu provider is not finished in this version (use --provider local)",
            self.image().display()
        )))
    }
    async fn start(&self, ms: &Machines, m: &mut Machine) -> Result<()> {
        self.create(ms, &CreateSpec::default(), m).await
    }
    async fn stop(&self, _m: &mut Machine) -> Result<()> {
        Ok(())
    }
    async fn destroy(&self, _m: &Machine) -> Result<()> {
        Ok(())
    }
    fn dead_reason(&self, m: &Machine) -> Option<String> {
        m.pid.filter(|p| !super::pid_alive(*p)).map(|_| "qemu exited".into())
    }
}
