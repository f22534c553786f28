//! The local sandbox's seccomp filters, compiled to classic BPF for bubblewrap's
//! `--add-seccomp-fd` (one program per fd; bubblewrap applies them all).
//!
//! Layered like Firecracker's jailer: the user namespace with no capabilities already makes
//! most of these calls fail; the filter makes them fail even if a capability were regained
//! (a kernel bug, a setuid helper), and closes what capabilities do not guard at all (TIOCSTI
//! into a terminal, `perf_event_open`, `bpf` where unprivileged BPF is allowed, new user
//! namespaces, which hand a process a fresh set of capabilities).
//!
//! Denylist, not allowlist: the sandbox runs arbitrary developer tooling (compilers, browsers,
//! language runtimes), whose syscall set nobody can enumerate.

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};
use std::collections::BTreeMap;

/// Syscalls refused with EPERM whatever their arguments, and why.
pub const DENIED: &[(&str, i64)] = &[
    // Mounts: remounting /usr read-write was the first escape found.
    ("mount", libc::SYS_mount),
    ("umount2", libc::SYS_umount2),
    ("pivot_root", libc::SYS_pivot_root),
    ("move_mount", libc::SYS_move_mount),
    ("open_tree", libc::SYS_open_tree),
    ("fsopen", libc::SYS_fsopen),
    ("fsconfig", libc::SYS_fsconfig),
    ("fsmount", libc::SYS_fsmount),
    ("fspick", libc::SYS_fspick),
    ("mount_setattr", libc::SYS_mount_setattr),
    // Namespaces: joining another one, or (below, by flags) making a user namespace.
    ("setns", libc::SYS_setns),
    // The kernel keyring is not namespaced.
    ("add_key", libc::SYS_add_key),
    ("request_key", libc::SYS_request_key),
    ("keyctl", libc::SYS_keyctl),
    // Kernel attack surface and host-wide observation.
    ("bpf", libc::SYS_bpf),
    ("perf_event_open", libc::SYS_perf_event_open),
    ("userfaultfd", libc::SYS_userfaultfd),
    ("io_uring_setup", libc::SYS_io_uring_setup),
    ("io_uring_enter", libc::SYS_io_uring_enter),
    ("io_uring_register", libc::SYS_io_uring_register),
    ("lookup_dcookie", libc::SYS_lookup_dcookie),
    ("syslog", libc::SYS_syslog),
    // Modules and kexec.
    ("init_module", libc::SYS_init_module),
    ("finit_module", libc::SYS_finit_module),
    ("delete_module", libc::SYS_delete_module),
    ("kexec_load", libc::SYS_kexec_load),
    ("kexec_file_load", libc::SYS_kexec_file_load),
    // Other processes' memory: the PID namespace limits whom, this removes how. The guest
    // agent shares the sandbox with the coding agent, so this also guards its tokens.
    ("ptrace", libc::SYS_ptrace),
    ("process_vm_readv", libc::SYS_process_vm_readv),
    ("process_vm_writev", libc::SYS_process_vm_writev),
    ("kcmp", libc::SYS_kcmp),
    // Host-wide state.
    ("reboot", libc::SYS_reboot),
    ("swapon", libc::SYS_swapon),
    ("swapoff", libc::SYS_swapoff),
    ("acct", libc::SYS_acct),
    ("quotactl", libc::SYS_quotactl),
    ("settimeofday", libc::SYS_settimeofday),
    ("clock_settime", libc::SYS_clock_settime),
    ("clock_adjtime", libc::SYS_clock_adjtime),
    ("adjtimex", libc::SYS_adjtimex),
    ("open_by_handle_at", libc::SYS_open_by_handle_at),
    ("name_to_handle_at", libc::SYS_name_to_handle_at),
    ("iopl", libc::SYS_iopl),
    ("ioperm", libc::SYS_ioperm),
    ("vhangup", libc::SYS_vhangup),
    ("uselib", libc::SYS_uselib),
    ("personality", libc::SYS_personality),
];

/// ioctls refused: typing into a terminal the sandbox shares with the host (TIOCSTI; this
/// kernel has `dev.tty.legacy_tiocsti=1`) and the console's equivalent (TIOCLINUX).
/// `--new-session` already detaches the sandbox from the caller's terminal.
const DENIED_IOCTLS: &[u64] = &[libc::TIOCSTI as u64, 0x541C /* TIOCLINUX */];

const CLONE_NEWUSER: u64 = libc::CLONE_NEWUSER as u64;

fn cond(arg: u8, op: SeccompCmpOp, v: u64) -> SeccompCondition {
    SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, v).expect("valid seccomp condition")
}

fn arch() -> TargetArch {
    if cfg!(target_arch = "aarch64") {
        TargetArch::aarch64
    } else {
        TargetArch::x86_64
    }
}

fn compile(rules: BTreeMap<i64, Vec<SeccompRule>>, errno: u32) -> Result<BpfProgram, String> {
    let f = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch(),
    )
    .map_err(|e| e.to_string())?;
    f.try_into()
        .map_err(|e: seccompiler::BackendError| e.to_string())
}

/// One rule per ioctl request in [`DENIED_IOCTLS`] (both filters refuse them).
fn ioctl_rules() -> Vec<SeccompRule> {
    DENIED_IOCTLS
        .iter()
        .map(|req| SeccompRule::new(vec![cond(1, SeccompCmpOp::Eq, *req)]).unwrap())
        .collect()
}

/// The EPERM filter: [`DENIED`], TIOCSTI/TIOCLINUX, and `clone`/`unshare` with CLONE_NEWUSER.
pub fn deny_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|(_, nr)| (*nr, vec![])).collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules());
    let newuser = || {
        SeccompRule::new(vec![cond(
            0,
            SeccompCmpOp::MaskedEq(CLONE_NEWUSER),
            CLONE_NEWUSER,
        )])
    };
    // x86_64 clone(flags, ...): flags are the first argument; unshare(flags) likewise.
    rules.insert(libc::SYS_clone, vec![newuser().unwrap()]);
    rules.insert(libc::SYS_unshare, vec![newuser().unwrap()]);
    compile(rules, libc::EPERM as u32)
}

/// What porthole-agent itself (and the X server beside it) may not do: [`DENIED`] less what
/// starting the workload sandbox takes (bubblewrap's mounts and user namespace, the
/// trampoline's `setns`). The workload gets [`deny_filter`] on top, from the agent; filters
/// stack, so the stricter one holds for everything the coding agent runs.
pub fn supervisor_filter() -> Result<BpfProgram, String> {
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = DENIED
        .iter()
        .filter(|(name, _)| !SUPERVISOR_ALLOWED.contains(name))
        .map(|(_, nr)| (*nr, vec![]))
        .collect();
    rules.insert(libc::SYS_ioctl, ioctl_rules());
    compile(rules, libc::EPERM as u32)
}

/// The calls [`supervisor_filter`] leaves to porthole-agent: building the workload sandbox.
pub const SUPERVISOR_ALLOWED: &[&str] = &[
    "mount",
    "umount2",
    "pivot_root",
    "move_mount",
    "open_tree",
    "fsopen",
    "fsconfig",
    "fsmount",
    "fspick",
    "mount_setattr",
    "setns",
];

/// clone3 passes its flags in a struct a filter cannot read: answer ENOSYS, so the C library
/// falls back to clone, whose flags the deny filter sees (what container runtimes do).
pub fn clone3_filter() -> Result<BpfProgram, String> {
    compile(
        BTreeMap::from([(libc::SYS_clone3, vec![])]),
        libc::ENOSYS as u32,
    )
}

/// A program as the kernel's `struct sock_filter` array, which is what bubblewrap reads.
pub fn to_bytes(p: &BpfProgram) -> Vec<u8> {
    let mut out = Vec::with_capacity(p.len() * 8);
    for i in p {
        out.extend_from_slice(&i.code.to_ne_bytes());
        out.push(i.jt);
        out.push(i.jf);
        out.extend_from_slice(&i.k.to_ne_bytes());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `prog` over one syscall the way the kernel would (a tiny cBPF interpreter over
    /// `struct seccomp_data`), so the rules are checked without installing them.
    fn run(prog: &BpfProgram, nr: i64, args: [u64; 6]) -> u32 {
        let audit = if cfg!(target_arch = "aarch64") {
            0xC00000B7u32
        } else {
            0xC000003Eu32
        };
        let mut data = Vec::new();
        data.extend_from_slice(&(nr as i32).to_ne_bytes());
        data.extend_from_slice(&audit.to_ne_bytes());
        data.extend_from_slice(&0u64.to_ne_bytes());
        for a in args {
            data.extend_from_slice(&a.to_ne_bytes());
        }
        let word =
            |off: u32| u32::from_ne_bytes(data[off as usize..off as usize + 4].try_into().unwrap());
        let (mut a, mut pc) = (0u32, 0usize);
        loop {
            let i = &prog[pc];
            pc += 1;
            match i.code {
                0x20 => a = word(i.k),                                         // ld [k]
                0x15 => pc += if a == i.k { i.jt } else { i.jf } as usize,     // jeq
                0x25 => pc += if a > i.k { i.jt } else { i.jf } as usize,      // jgt
                0x35 => pc += if a >= i.k { i.jt } else { i.jf } as usize,     // jge
                0x45 => pc += if a & i.k != 0 { i.jt } else { i.jf } as usize, // jset
                0x54 => a &= i.k,                                              // and
                0x05 => pc += i.k as usize,                                    // ja
                0x06 => return i.k,                                            // ret
                c => panic!("opcode {c:#x} not in this interpreter"),
            }
        }
    }

    const ALLOW: u32 = 0x7fff_0000;
    const EPERM: u32 = 0x0005_0000 | libc::EPERM as u32;

    /// Each row: syscall, arguments, what the deny filter answers.
    #[test]
    fn deny_filter_table() {
        let p = deny_filter().unwrap();
        let check = |what: &str, nr: i64, args: [u64; 6], want: u32| {
            assert_eq!(run(&p, nr, args), want, "{what}");
        };
        let z = [0u64; 6];
        check("mount", libc::SYS_mount, z, EPERM);
        check("umount2", libc::SYS_umount2, z, EPERM);
        check("keyctl", libc::SYS_keyctl, z, EPERM);
        check("bpf", libc::SYS_bpf, z, EPERM);
        check("perf_event_open", libc::SYS_perf_event_open, z, EPERM);
        check("init_module", libc::SYS_init_module, z, EPERM);
        check("kexec_load", libc::SYS_kexec_load, z, EPERM);
        check("ptrace", libc::SYS_ptrace, z, EPERM);
        check("setns", libc::SYS_setns, z, EPERM);
        check(
            "TIOCSTI",
            libc::SYS_ioctl,
            [0, libc::TIOCSTI as u64, 0, 0, 0, 0],
            EPERM,
        );
        check("TIOCLINUX", libc::SYS_ioctl, [0, 0x541C, 0, 0, 0, 0], EPERM);
        check(
            "TCGETS is fine",
            libc::SYS_ioctl,
            [0, libc::TCGETS as u64, 0, 0, 0, 0],
            ALLOW,
        );
        let newuser = libc::CLONE_NEWUSER as u64;
        check(
            "unshare(NEWUSER)",
            libc::SYS_unshare,
            [newuser, 0, 0, 0, 0, 0],
            EPERM,
        );
        check(
            "unshare(NEWUSER|NEWNS)",
            libc::SYS_unshare,
            [newuser | libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0],
            EPERM,
        );
        check(
            "unshare(NEWNS) alone",
            libc::SYS_unshare,
            [libc::CLONE_NEWNS as u64, 0, 0, 0, 0, 0],
            ALLOW,
        );
        check(
            "clone(NEWUSER)",
            libc::SYS_clone,
            [newuser | 17, 0, 0, 0, 0, 0],
            EPERM,
        );
        check(
            "fork-style clone",
            libc::SYS_clone,
            [17, 0, 0, 0, 0, 0],
            ALLOW,
        );
        check(
            "thread clone",
            libc::SYS_clone,
            [0x3d0f00, 0, 0, 0, 0, 0],
            ALLOW,
        );
        check("read", libc::SYS_read, z, ALLOW);
        check("openat", libc::SYS_openat, z, ALLOW);
        check("execve", libc::SYS_execve, z, ALLOW);
    }

    #[test]
    fn supervisor_filter_allows_building_the_workload_sandbox_only() {
        let p = supervisor_filter().unwrap();
        let z = [0u64; 6];
        let newuser = libc::CLONE_NEWUSER as u64;
        for (what, nr, args, want) in [
            ("mount", libc::SYS_mount, z, ALLOW),
            ("setns", libc::SYS_setns, z, ALLOW),
            ("pivot_root", libc::SYS_pivot_root, z, ALLOW),
            (
                "unshare(NEWUSER)",
                libc::SYS_unshare,
                [newuser, 0, 0, 0, 0, 0],
                ALLOW,
            ),
            ("ptrace", libc::SYS_ptrace, z, EPERM),
            ("process_vm_readv", libc::SYS_process_vm_readv, z, EPERM),
            ("keyctl", libc::SYS_keyctl, z, EPERM),
            ("bpf", libc::SYS_bpf, z, EPERM),
            ("init_module", libc::SYS_init_module, z, EPERM),
            (
                "TIOCSTI",
                libc::SYS_ioctl,
                [0, libc::TIOCSTI as u64, 0, 0, 0, 0],
                EPERM,
            ),
        ] {
            assert_eq!(run(&p, nr, args), want, "{what}");
        }
        for name in SUPERVISOR_ALLOWED {
            assert!(
                DENIED.iter().any(|(n, _)| n == name),
                "{name} is not in DENIED"
            );
        }
    }

    #[test]
    fn clone3_gets_enosys_so_libc_falls_back() {
        let p = clone3_filter().unwrap();
        assert_eq!(
            run(&p, libc::SYS_clone3, [0; 6]),
            0x0005_0000 | libc::ENOSYS as u32
        );
        assert_eq!(run(&p, libc::SYS_clone, [0; 6]), ALLOW);
    }

    #[test]
    fn bytes_are_the_kernel_layout() {
        let p = clone3_filter().unwrap();
        let b = to_bytes(&p);
        assert_eq!(b.len(), p.len() * 8);
        assert_eq!(u16::from_ne_bytes([b[0], b[1]]), p[0].code);
    }
}
