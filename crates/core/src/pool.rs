//! The warm pool: machines booted from a snapshot with their agent idle (no session), so a
//! claim only renames one and starts its session: no boot on the critical path.

use crate::error::{CoreError, Result};
use crate::machine::{CreateSpec, Machine, Machines, ProviderKind};
use serde_json::{json, Value};
use std::os::unix::process::CommandExt;
use std::time::Instant;

fn pooled(m: &Machine, snapshot: &str) -> bool {
    m.spec["pool"].as_str() == Some(snapshot) && m.status == "running"
}

/// Boots pool machines until `size` are ready.
pub async fn fill(ms: &Machines, snapshot: &str, size: usize) -> Result<Value> {
    let (_, kind, spec) = ms.snapshot_info(snapshot).await?;
    let have = ms
        .list()
        .await?
        .iter()
        .filter(|m| pooled(m, snapshot))
        .count();
    let mut created = Vec::new();
    for _ in have..size {
        let name = format!("pool-{snapshot}-{:06x}", rand::random::<u32>() & 0xff_ffff);
        let mut m = ms
            .create(CreateSpec {
                name: name.clone(),
                provider: Some(kind),
                from_snapshot: Some(snapshot.to_string()),
                workspace: spec["workspace"].as_str().map(Into::into),
                idle: true,
                ..Default::default()
            })
            .await?;
        m.spec["pool"] = json!(snapshot);
        m.spec["pool_size"] = json!(size);
        ms.save(&m).await?;
        created.push(name);
    }
    Ok(json!({"snapshot": snapshot, "ready": have.max(size), "created": created}))
}

/// Hands out a pooled machine as `name` and starts its session; returns it and the claim time
/// in ms. The pool is refilled by a background `porthole pool fill` process.
pub async fn claim(ms: &Machines, snapshot: &str, name: &str) -> Result<(Machine, u64)> {
    crate::machine::valid_name(name)?;
    let t0 = Instant::now();
    if ms.get(name).await.is_ok() {
        return Err(CoreError::MachineExists(name.to_string()));
    }
    let m = ms
        .list()
        .await?
        .into_iter()
        .find(|m| pooled(m, snapshot))
        .ok_or_else(|| CoreError::Invalid(format!("the pool for '{snapshot}' is empty; fill it with: porthole pool fill --snapshot {snapshot} --size N")))?;
    let old = m.name.clone();
    let new_token = ms.state.keys().join(format!("{name}.token"));
    // The sandbox has its token and directories bound by inode, and QEMU holds its disk open
    // and its sockets move with the directory: renaming them is safe.
    std::fs::rename(&m.token_path, &new_token).map_err(CoreError::io("rename token"))?;
    let agent_token = m.agent_token_path();
    if agent_token.exists() {
        std::fs::rename(
            &agent_token,
            ms.state.keys().join(format!("{name}.agent-token")),
        )
        .map_err(CoreError::io("rename agent token"))?;
    }
    if m.provider != ProviderKind::Remote {
        std::fs::rename(ms.state.machine(&old), ms.state.machine(name))
            .map_err(CoreError::io("rename machine dir"))?;
    }
    let mut spec = m.spec.clone();
    let size = spec["pool_size"].as_u64().unwrap_or(1);
    spec.as_object_mut().map(|o| o.remove("pool"));
    spec["claimed_from"] = json!(snapshot);
    sqlx::query("UPDATE machines SET name = ?, token_path = ?, spec = ? WHERE name = ?")
        .bind(name)
        .bind(new_token.to_string_lossy().to_string())
        .bind(spec.to_string())
        .bind(&old)
        .execute(&ms.store.pool)
        .await?;
    let m = ms.get(name).await?;
    ms.client(&m)?.post("/v1/sessions", &json!({})).await?;
    let ms_taken = t0.elapsed().as_millis() as u64;
    refill_in_background(snapshot, size as usize);
    Ok((m, ms_taken))
}

fn refill_in_background(snapshot: &str, size: usize) {
    let Ok(exe) = std::env::current_exe() else {
        return;
    };
    if exe.file_name().is_some_and(|n| n == "porthole") {
        let _ = std::process::Command::new(exe)
            .args([
                "pool",
                "fill",
                "--snapshot",
                snapshot,
                "--size",
                &size.to_string(),
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .process_group(0)
            .spawn();
    }
}
