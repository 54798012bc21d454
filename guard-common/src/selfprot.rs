//! Self-protection on kernels without BPF LSM (guard-ebpf `probes/guard_self.rs`): signals and
//! ptrace aimed at the daemon by tagged processes.

use crate::event::EventHeader;

/// Index 0 of [`crate::maps::SELF_STATE`]: what the programs protect. The daemon writes it
/// when it starts or adopts the pins.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfState {
    /// tgid of the running daemon (0: none yet).
    pub daemon_tgid: u32,
    /// The count of policy changes by tagged processes
    /// ([`crate::file::counter::POLICY_CHANGED`]) that an administrator has answered (an
    /// explicit apply): while the count is ahead, no policy file change is applied.
    pub policy_changes_seen: u32,
}
const _: () = assert!(core::mem::size_of::<SelfState>() == 8);

/// Slots of [`crate::maps::SELF_SIGNALS`]: per signal number, how many times a tagged process
/// sent that signal to the daemon (the daemon ignores a termination signal it counts here).
pub const SIGNAL_SLOTS: u32 = 65;
/// Slot of [`crate::maps::SELF_SIGNALS`] set while a stop signal from a tagged process is on
/// its way to the daemon: the daemon resumes itself (SIGCONT) when it is delivered.
pub const STOP_PENDING_SLOT: u32 = 0;

/// What a tagged process did to the daemon.
pub mod op {
    /// Sent it a signal (`signal` says which).
    pub const SIGNAL: u32 = 1;
    /// Traced it: a daemon thread stopped for a tracer (`PTRACE_SEIZE` + interrupt, or
    /// `PTRACE_ATTACH`); the tracer is killed at its next wait.
    pub const TRACED: u32 = 2;
    /// The tracer was killed when it waited for the daemon.
    pub const TRACER_KILLED: u32 = 3;
    /// bpf-lsm tier: a signal refused by `task_kill` (`signal` says which).
    pub const LSM_SIGNAL: u32 = 4;
    /// bpf-lsm tier: ptrace, `/proc/PID/mem` or `process_vm_*` access refused by
    /// `ptrace_access_check` (`signal` holds the `PTRACE_MODE_*` bits).
    pub const LSM_PTRACE: u32 = 5;
    /// bpf-lsm tier: a `bpf()` call refused (`signal` holds the command).
    pub const LSM_BPF: u32 = 6;
    /// A `bpf()` call that checked a capability (`signal` holds it): opening a pin (the pin
    /// directory is mode 000, so root needs `CAP_DAC_READ_SEARCH`), a map or link by id
    /// (`CAP_SYS_ADMIN`), loading a program. The caller is killed (`cap_capable`, ≥ 6.13).
    pub const BPF_CAP: u32 = 7;
    /// bpf-lsm tier: a `SIGCONT` to a process of a held (frozen) agent tree refused by
    /// `task_kill` (`target_tgid` is that process, not the daemon).
    pub const LSM_THAW: u32 = 8;
    /// Fallback tier: a `bpf()` call refused by the `fmod_ret` program on `security_bpf`
    /// (`signal` holds the command).
    pub const FMOD_BPF: u32 = 9;
    /// Fallback tier: ptrace, `/proc/PID/mem` or `process_vm_*` access refused by the
    /// `fmod_ret` program on `security_ptrace_access_check` (`signal` holds the mode bits).
    pub const FMOD_PTRACE: u32 = 10;
}

/// `EventKind::SelfProtect`.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SelfEvent {
    pub header: EventHeader,
    pub comm: [u8; 16],
    /// [`op`].
    pub op: u32,
    pub signal: u32,
    /// tgid of the daemon it aimed at.
    pub target_tgid: u32,
    /// [`crate::decision::outcome`].
    pub outcome: u32,
}
const _: () = assert!(core::mem::size_of::<SelfEvent>() == 88);

/// Offsets for the self-protection programs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SelfOffsets {
    /// `kernel_siginfo.si_code`.
    pub siginfo_code: u32,
    /// Non-zero once filled in by the loader.
    pub valid: u32,
    /// `task_struct.flags`.
    pub task_flags: u32,
    /// The system call number in `pt_regs` (`orig_ax`), `u32::MAX` where unknown.
    pub regs_syscall: u32,
    /// `user_namespace.level` (0: the initial namespace).
    pub userns_level: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SelfOffsets>() == 24);

/// `si_code` of the SIGCHLD a tracee sends its tracer when it stops for it.
pub const CLD_TRAPPED: i32 = 4;
pub const CLD_STOPPED: i32 = 5;

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers only.
    unsafe impl aya::Pod for super::SelfState {}
    unsafe impl aya::Pod for super::SelfEvent {}
    unsafe impl aya::Pod for super::SelfOffsets {}
}
