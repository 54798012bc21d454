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
//!
//! aya's `fentry` macro discards a program's return value, so the sections are written here;
//! the loader loads these programs by hand with the modify-return attach type.

use core::ffi::c_void;

use aya_ebpf::programs::FEntryContext;
use guard_common::net::hook;

use super::lsm::{bpf_call, unix_may_send, unix_stream_connect};

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
