//! No deputies: a tagged process reaching into a process or terminal outside its tree, or
//! using a capability of the ceiling (guard-ebpf `probes/deputy.rs`).

use crate::event::EventHeader;

/// What a tagged process did.
pub mod op {
    /// ptrace, `/proc/PID/mem`, `/proc/PID/environ`, `process_vm_*`, `pidfd_getfd` on a
    /// process outside its tree (`detail`: the `PTRACE_MODE_*` bits).
    pub const PROCESS_ACCESS: u32 = 1;
    /// `TIOCSTI` or `TIOCLINUX` on a terminal (`detail`: the ioctl command).
    pub const TERMINAL_INPUT: u32 = 2;
    /// A capability of the ceiling, in the initial user namespace (`detail`: the capability).
    pub const CAPABILITY: u32 = 3;
}

/// `EventKind::Deputy`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct DeputyEvent {
    pub header: EventHeader,
    pub comm: [u8; 16],
    /// [`op`].
    pub op: u32,
    pub detail: u32,
    /// tgid of the process reached (process access), else 0.
    pub target_tgid: u32,
    /// [`crate::decision::outcome`].
    pub outcome: u32,
    /// The system call the caller was in (-1: unknown).
    pub syscall: i64,
}
const _: () = assert!(core::mem::size_of::<DeputyEvent>() == 96);

/// `PTRACE_MODE_*` bits of `ptrace_access_check`.
pub mod ptrace_mode {
    pub const READ: u32 = 0x01;
    pub const ATTACH: u32 = 0x02;
    /// A check whose failure is not an event (`ps`, `top` reading `/proc/PID/stat`).
    pub const NOAUDIT: u32 = 0x04;
}

/// ioctl commands that push input into a terminal.
pub const TIOCSTI: u32 = 0x5412;
pub const TIOCLINUX: u32 = 0x541C;

/// A slot of [`crate::maps::CAP_CEILING`]: a bit per capability.
pub type CapMask = u64;
/// Slot of the capabilities the bpf-lsm `capable` hook refuses.
pub const CEILING_REFUSE: u32 = 0;
/// Slot of the capabilities whose use `cap_capable` kills (the fallback tier; empty on bpf-lsm,
/// where the tracepoint also sees checks the LSM hook then refuses).
pub const CEILING_KILL: u32 = 1;

/// How long a refusal of one (caller, target) pair is not recorded again: a tool walking
/// `/proc` (`lsof`) would otherwise record one event per file of every process.
pub const REPEAT_NS: u64 = 1_000_000_000;

/// Whether system call `nr` is an operation of capability `cap` of its own, not an incidental
/// check (memory accounting asks for `CAP_SYS_ADMIN` on every mmap): the fallback tier kills a
/// tagged caller granted a capability of the ceiling in these. x86-64 numbers; a match, not a
/// table, because the kernel programs cannot follow pointers stored in read-only data.
pub const fn cap_operation(cap: u32, nr: i64) -> bool {
    match cap {
        // CAP_NET_ADMIN: netlink (routes, links, nftables NAT) and iptables-legacy setsockopt.
        12 => matches!(nr, 46 | 54),
        // CAP_SYS_MODULE: init_module, delete_module, finit_module.
        16 => matches!(nr, 175 | 176 | 313),
        // CAP_SYS_RAWIO: iopl, ioperm.
        17 => matches!(nr, 172 | 173),
        // CAP_SYS_PTRACE: ptrace, process_vm_readv/writev, pidfd_getfd.
        19 => matches!(nr, 101 | 310 | 311 | 438),
        // CAP_SYS_ADMIN: mount, umount2, pivot_root, setns, unshare, open_tree, move_mount,
        // fsopen, fsconfig, fsmount, fspick, mount_setattr.
        21 => matches!(
            nr,
            165 | 166 | 155 | 308 | 272 | 428 | 429 | 430 | 431 | 432 | 433 | 442
        ),
        // CAP_PERFMON: perf_event_open.
        38 => nr == 298,
        // CAP_BPF: bpf.
        39 => nr == 321,
        _ => false,
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers only.
    unsafe impl aya::Pod for super::DeputyEvent {}
}
