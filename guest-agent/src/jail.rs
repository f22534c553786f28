//! The workload's identity: the uid the coding agent's processes (exec, environment steps,
//! tmux and its terminals, git on the workspace) run as, when the machine gives the agent one
//! of its own (`serve --workload-uid`).
//!
//! Why a second uid: evidence the coding agent can edit is not evidence. With the workload on
//! another uid than `porthole-agent`, it cannot write the agent's data directory (0700: the
//! recording, `events.jsonl`, `meta.json`, the token copies), nor signal or ptrace the
//! recorder. The agent keeps CAP_SETUID/CAP_SETGID (given by the sandbox) only to drop to that
//! uid in each child before exec; the child ends with no capabilities.
//!
//! A process-wide setting (set once at start) rather than a handle threaded everywhere: every
//! spawn site must use it, and a forgotten argument would silently run the workload as the
//! agent.

use std::sync::OnceLock;

static WORKLOAD: OnceLock<(u32, u32)> = OnceLock::new();

/// Called once by `serve` with `--workload-uid/--workload-gid`.
pub fn set_workload(uid: u32, gid: u32) {
    let _ = WORKLOAD.set((uid, gid));
}

/// The workload's (uid, gid), if it has one of its own.
pub fn workload() -> Option<(u32, u32)> {
    WORKLOAD.get().copied()
}

/// Makes `cmd` run as the workload: supplementary groups dropped, gid and uid switched, and
/// ambient capabilities cleared so the program starts with none.
pub fn as_workload(cmd: &mut tokio::process::Command) {
    if let Some((uid, gid)) = workload() {
        // SAFETY: only async-signal-safe calls (prctl, setgroups, setresgid, setresuid)
        // between fork and exec.
        unsafe {
            cmd.pre_exec(move || drop_to(uid, gid));
        }
    }
}

/// The same for a `std::process::Command`.
pub fn as_workload_std(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    if let Some((uid, gid)) = workload() {
        // SAFETY: as in [`as_workload`].
        unsafe {
            cmd.pre_exec(move || drop_to(uid, gid));
        }
    }
}

fn drop_to(uid: u32, gid: u32) -> std::io::Result<()> {
    let check = |r: libc::c_int| {
        if r != 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(())
        }
    };
    // SAFETY: plain syscalls on this (child) process's own credentials.
    unsafe {
        check(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0))?;
        check(libc::setgroups(0, std::ptr::null()))?;
        check(libc::setresgid(gid, gid, gid))?;
        check(libc::setresuid(uid, uid, uid))?;
    }
    Ok(())
}
