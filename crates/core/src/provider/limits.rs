//! Resource limits for local sandboxes, through cgroups where the host lets us create them
//! (root, or a delegated subtree): memory, process count and CPU. cgroup v2 when the unified
//! hierarchy carries the controllers, else the v1 controller mounts; otherwise the sandbox runs
//! unlimited and its spec says why. Limits come from `PORTHOLE_SANDBOX_MEMORY_MB` (default
//! 4096), `PORTHOLE_SANDBOX_PIDS` (default 4096) and `PORTHOLE_SANDBOX_CPUS` (default: none).

use crate::error::{CoreError, Result};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

const ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    pub memory_bytes: u64,
    pub pids: u64,
    /// CPUs' worth of time (1.5 = one and a half cores), if limited.
    pub cpus: Option<f64>,
}

impl Limits {
    pub fn from_env() -> Result<Self> {
        let num = |k: &str, d: f64| -> Result<f64> {
            match std::env::var(k) {
                Ok(v) if !v.is_empty() => {
                    v.parse::<f64>().ok().filter(|x| *x > 0.0).ok_or_else(|| {
                        CoreError::Invalid(format!("{k}={v}: expected a positive number"))
                    })
                }
                _ => Ok(d),
            }
        };
        let cpus = num("PORTHOLE_SANDBOX_CPUS", 0.0).ok().filter(|c| *c > 0.0);
        if let Ok(v) = std::env::var("PORTHOLE_SANDBOX_CPUS") {
            if !v.is_empty() && cpus.is_none() {
                return Err(CoreError::Invalid(format!(
                    "PORTHOLE_SANDBOX_CPUS={v}: expected a positive number"
                )));
            }
        }
        Ok(Self {
            memory_bytes: (num("PORTHOLE_SANDBOX_MEMORY_MB", 4096.0)? * 1024.0 * 1024.0) as u64,
            pids: num("PORTHOLE_SANDBOX_PIDS", 4096.0)? as u64,
            cpus,
        })
    }
}

fn write(p: &Path, v: &str) -> std::io::Result<()> {
    std::fs::write(p, v)
}

fn v2_available() -> bool {
    std::fs::read_to_string(format!("{ROOT}/cgroup.controllers"))
        .is_ok_and(|c| c.contains("memory") && c.contains("pids"))
}

/// Directories this sandbox's cgroups live in (one for v2; one per controller for v1).
fn dirs(name: &str) -> Vec<PathBuf> {
    if v2_available() {
        vec![PathBuf::from(format!("{ROOT}/porthole/{name}"))]
    } else {
        ["memory", "pids", "cpu"]
            .iter()
            .map(|c| PathBuf::from(format!("{ROOT}/{c}/porthole/{name}")))
            .collect()
    }
}

/// Puts `pids` (the sandbox's first process, before it forks much) under the limits. Returns
/// what was applied, or why nothing was, for the machine's spec.
pub fn apply(name: &str, pids: &[i32], l: Limits) -> Value {
    let r = if v2_available() {
        apply_v2(name, pids, l)
    } else {
        apply_v1(name, pids, l)
    };
    match r {
        Ok(v) => v,
        Err(e) => {
            remove(name);
            json!({"applied": false, "reason": format!("no cgroup for the sandbox ({e}); it runs without limits")})
        }
    }
}

fn apply_v2(name: &str, pids: &[i32], l: Limits) -> std::io::Result<Value> {
    let parent = PathBuf::from(format!("{ROOT}/porthole"));
    std::fs::create_dir_all(&parent)?;
    // Controllers must be enabled on the way down; the root cgroup may hold processes.
    let _ = write(
        Path::new(&format!("{ROOT}/cgroup.subtree_control")),
        "+memory +pids +cpu",
    );
    let _ = write(&parent.join("cgroup.subtree_control"), "+memory +pids +cpu");
    let dir = parent.join(name);
    std::fs::create_dir_all(&dir)?;
    write(&dir.join("memory.max"), &l.memory_bytes.to_string())?;
    write(&dir.join("pids.max"), &l.pids.to_string())?;
    if let Some(c) = l.cpus {
        write(
            &dir.join("cpu.max"),
            &format!("{} 100000", (c * 100_000.0) as u64),
        )?;
    }
    for p in pids {
        write(&dir.join("cgroup.procs"), &p.to_string())?;
    }
    Ok(
        json!({"applied": true, "cgroup": "v2", "path": dir, "memory_max": l.memory_bytes, "pids_max": l.pids, "cpus": l.cpus}),
    )
}

fn apply_v1(name: &str, pids: &[i32], l: Limits) -> std::io::Result<Value> {
    let mut paths = Vec::new();
    for (ctl, files) in [
        (
            "memory",
            vec![("memory.limit_in_bytes", l.memory_bytes.to_string())],
        ),
        ("pids", vec![("pids.max", l.pids.to_string())]),
        (
            "cpu",
            match l.cpus {
                Some(c) => vec![
                    ("cpu.cfs_period_us", "100000".to_string()),
                    ("cpu.cfs_quota_us", ((c * 100_000.0) as u64).to_string()),
                ],
                None => vec![],
            },
        ),
    ] {
        if ctl == "cpu" && files.is_empty() {
            continue;
        }
        let dir = PathBuf::from(format!("{ROOT}/{ctl}/porthole/{name}"));
        std::fs::create_dir_all(&dir)?;
        for (f, v) in files {
            write(&dir.join(f), &v)?;
        }
        for p in pids {
            write(&dir.join("cgroup.procs"), &p.to_string())?;
        }
        paths.push(dir);
    }
    Ok(
        json!({"applied": true, "cgroup": "v1", "paths": paths, "memory_max": l.memory_bytes, "pids_max": l.pids, "cpus": l.cpus}),
    )
}

/// Moves every process of the process group `pgid` into the cgroups `limits` names: the
/// first process may have forked before it was moved, and its children stay where they were
/// born. Called again once the sandbox is up; anything started later inherits.
pub fn adopt_group(limits: &Value, pgid: i32) {
    let ds = applied_dirs(limits);
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return;
    };
    for e in entries.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        // SAFETY: getpgid has no memory preconditions.
        if unsafe { libc::getpgid(pid) } == pgid {
            for d in &ds {
                let _ = write(&d.join("cgroup.procs"), &pid.to_string());
            }
        }
    }
}

/// Removes the cgroups a spec's `limits` names (after the processes are gone; an empty
/// cgroup is a directory that `rmdir` deletes). By path, so a renamed (claimed) machine works.
pub fn remove_applied(limits: &Value) {
    remove_dirs(&applied_dirs(limits));
}

/// The cgroup directories a spec's `limits` records (`path` for v2, `paths` for v1).
fn applied_dirs(limits: &Value) -> Vec<PathBuf> {
    let mut ds: Vec<PathBuf> = limits["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p.as_str().map(PathBuf::from))
        .collect();
    if let Some(p) = limits["path"].as_str() {
        ds.push(PathBuf::from(p));
    }
    ds
}

fn remove(name: &str) {
    remove_dirs(&dirs(name));
}

fn remove_dirs(ds: &[PathBuf]) {
    for d in ds {
        for _ in 0..50 {
            if !d.exists() || std::fs::remove_dir(&d).is_ok() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_from_the_environment_are_checked() {
        // One test touches these variables, so no other test races it.
        std::env::set_var("PORTHOLE_SANDBOX_MEMORY_MB", "512");
        std::env::set_var("PORTHOLE_SANDBOX_CPUS", "1.5");
        let l = Limits::from_env().unwrap();
        assert_eq!(l.memory_bytes, 512 * 1024 * 1024);
        assert_eq!(l.cpus, Some(1.5));
        assert_eq!(l.pids, 4096);
        std::env::set_var("PORTHOLE_SANDBOX_MEMORY_MB", "lots");
        assert!(Limits::from_env()
            .unwrap_err()
            .to_string()
            .contains("PORTHOLE_SANDBOX_MEMORY_MB=lots"));
        std::env::set_var("PORTHOLE_SANDBOX_MEMORY_MB", "512");
        std::env::set_var("PORTHOLE_SANDBOX_CPUS", "-1");
        assert!(Limits::from_env()
            .unwrap_err()
            .to_string()
            .contains("PORTHOLE_SANDBOX_CPUS=-1"));
        std::env::remove_var("PORTHOLE_SANDBOX_MEMORY_MB");
        std::env::remove_var("PORTHOLE_SANDBOX_CPUS");
    }
}
