//! bpf-lsm decisions on the fallback tier: `fmod_ret` programs on the kernel functions that
//! call the LSM hooks (`security_*`), running the bpf-lsm tier's own decision
//! (`probes/lsm.rs`). The kernel lets a modify-return program replace the result of any
//! `security_*` function, so a non-zero return refuses the operation with that error (the
//! function and every LSM behind it are skipped), with BPF LSM absent from the kernel's LSM
//! list. Where the kernel refuses trampoline programs, none of these loads and status says
//! what stays uncovered.
//!
//! - The unix peer: `security_unix_stream_connect` and `security_unix_may_send` run after
//!   the kernel resolved the peer, so every spelling of its name, a symlink, a hard link,
//!   `/proc/*/fd/N` or a bind mount lead to the same socket file, matched by device and inode.
//! - `security_bpf`: every `bpf()` call of a tagged process is refused, before the call's own
//!   capability checks.
//! - No deputies: `security_ptrace_access_check` (ptrace, `/proc/PID/mem`, `environ`,
//!   `process_vm_*`, `pidfd_getfd`) refuses a target outside the caller's tree or the daemon;
//!   `security_file_ioctl` and `security_file_ioctl_compat` refuse TIOCSTI and TIOCLINUX.
//!
//! aya's `fentry` macro discards a program's return value, so the sections are written here;
//! the loader loads these programs by hand with the modify-return attach type.

use core::ffi::c_void;

use aya_ebpf::programs::FEntryContext;
use guard_common::net::hook;

use super::{
    deputy::terminal_input,
    lsm::{bpf_call, ptrace_access_check, unix_may_send, unix_stream_connect},
};

/// `security_unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_unix_stream_connect")]
pub fn guard_peer_unix_connect(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    unix_stream_connect(ctx.arg(1), hook::PEER_UNIX_STREAM_CONNECT)
}

/// `security_unix_may_send(struct socket *sock, struct socket *other)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_unix_may_send")]
pub fn guard_peer_unix_send(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    unix_may_send(ctx.arg(1), hook::PEER_UNIX_MAY_SEND)
}

/// `security_bpf(int cmd, union bpf_attr *attr, unsigned int size[, bool kernel])`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_bpf")]
pub fn guard_fmod_bpf(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    bpf_call(ctx.arg(0), guard_common::selfprot::op::FMOD_BPF)
}

/// `security_ptrace_access_check(struct task_struct *child, unsigned int mode)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_ptrace_access_check")]
pub fn guard_fmod_ptrace(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    ptrace_access_check(
        ctx.arg(0),
        ctx.arg(1),
        guard_common::selfprot::op::FMOD_PTRACE,
    )
}

/// `security_file_ioctl(struct file *file, unsigned int cmd, unsigned long arg)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_file_ioctl")]
pub fn guard_fmod_ioctl(ctx: *mut c_void) -> i32 {
    terminal_input(FEntryContext::new(ctx).arg(1))
}

/// `security_file_ioctl_compat(struct file *file, unsigned int cmd, unsigned long arg)`
/// (Linux ≥ 6.7; before that `security_file_ioctl` saw 32-bit callers too).
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_file_ioctl_compat")]
pub fn guard_fmod_ioctl_compat(ctx: *mut c_void) -> i32 {
    terminal_input(FEntryContext::new(ctx).arg(1))
}
