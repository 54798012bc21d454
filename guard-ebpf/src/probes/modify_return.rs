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
//! - Files: `security_path_*` (unlink, rmdir, rename, truncate, link, mknod, mkdir, symlink,
//!   chmod, chown) and `security_file_truncate` refuse what the change detectors can only
//!   kill after the fact: protected objects and protected names keep every byte, and the
//!   kernels without the detectors' tracepoints (before 6.13) get them at all. Opens stay
//!   with the fanotify layer.
//!
//! aya's `fentry` macro discards a program's return value, so the sections are written here;
//! the loader loads these programs by hand with the modify-return attach type.

use core::ffi::c_void;

use aya_ebpf::programs::FEntryContext;
use guard_common::{
    file::{access, lsm_hook},
    net::hook,
};

use super::{
    deputy::terminal_input,
    lsm::{
        bpf_call, on_create, on_dentry, on_file, on_path, on_target, ptrace_access_check,
        unix_may_send, unix_stream_connect,
    },
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

// --- Files: the bpf-lsm tier's path decisions (`probes/lsm.rs`), named for the function.

/// The hook id of an event decided here.
const fn fmod(hook: u32) -> u32 {
    hook | lsm_hook::FMOD
}

/// `security_path_unlink(const struct path *dir, struct dentry *dentry)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_unlink")]
pub fn guard_fmod_unlink(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_UNLINK))
}

/// `security_path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_rmdir")]
pub fn guard_fmod_rmdir(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_RMDIR))
}

/// `security_path_rename(old_dir, old_dentry, new_dir, new_dentry, flags)`: the source side.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_rename")]
pub fn guard_fmod_rename(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_RENAME))
}

/// `security_path_rename`, destination side (a second program on the function).
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_rename")]
pub fn guard_fmod_rename_to(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_target(ctx.arg(2), ctx.arg(3), fmod(lsm_hook::PATH_RENAME))
}

/// `security_path_truncate(const struct path *path)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_truncate")]
pub fn guard_fmod_truncate(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_TRUNCATE))
}

/// `security_file_truncate(struct file *file)` (Linux ≥ 6.2).
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_file_truncate")]
pub fn guard_fmod_ftruncate(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_file(ctx.arg(0), access::WRITE, fmod(lsm_hook::FILE_TRUNCATE))
}

/// `security_path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry
/// *new_dentry)`: a new name for a protected object.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_link")]
pub fn guard_fmod_link(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_dentry(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_LINK))
}

/// `security_path_link`, destination side: a new entry in a protected directory.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_link")]
pub fn guard_fmod_link_to(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_create(ctx.arg(1), ctx.arg(2), fmod(lsm_hook::PATH_LINK))
}

/// `security_path_mknod(dir, dentry, mode, dev)`: also every `open(O_CREAT)` of a new file.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_mknod")]
pub fn guard_fmod_mknod(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_MKNOD))
}

/// `security_path_mkdir(dir, dentry, mode)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_mkdir")]
pub fn guard_fmod_mkdir(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_MKDIR))
}

/// `security_path_symlink(dir, dentry, old_name)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_symlink")]
pub fn guard_fmod_symlink(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_SYMLINK))
}

/// `security_path_chmod(const struct path *path, umode_t mode)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_chmod")]
pub fn guard_fmod_chmod(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_CHMOD))
}

/// `security_path_chown(const struct path *path, kuid_t uid, kgid_t gid)`.
#[unsafe(no_mangle)]
#[unsafe(link_section = "fentry/security_path_chown")]
pub fn guard_fmod_chown(ctx: *mut c_void) -> i32 {
    let ctx = FEntryContext::new(ctx);
    on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_CHOWN))
}
