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
//! aya's `fentry` macro discards a program's return value, so [`fmod_ret!`] writes the
//! sections; the loader loads these programs by hand with the modify-return attach type.

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

/// A modify-return program on kernel function `$function`: `$name(ctx)` returns `$body`, its
/// non-zero value the function's result. `$body` reads the function's arguments with
/// `ctx.arg(n)`.
macro_rules! fmod_ret {
    ($(#[$doc:meta])* $name:ident, $function:literal, |$ctx:ident| $body:expr) => {
        $(#[$doc])*
        #[unsafe(no_mangle)]
        #[unsafe(link_section = concat!("fentry/", $function))]
        pub fn $name(ctx: *mut c_void) -> i32 {
            let $ctx = FEntryContext::new(ctx);
            $body
        }
    };
}

fmod_ret!(
    /// `(struct sock *sock, struct sock *other, struct sock *newsk)`.
    guard_peer_unix_connect,
    "security_unix_stream_connect",
    |ctx| unix_stream_connect(ctx.arg(1), hook::PEER_UNIX_STREAM_CONNECT)
);
fmod_ret!(
    /// `(struct socket *sock, struct socket *other)`.
    guard_peer_unix_send,
    "security_unix_may_send",
    |ctx| unix_may_send(ctx.arg(1), hook::PEER_UNIX_MAY_SEND)
);
fmod_ret!(
    /// `(int cmd, union bpf_attr *attr, unsigned int size[, bool kernel])`.
    guard_fmod_bpf,
    "security_bpf",
    |ctx| bpf_call(ctx.arg(0), guard_common::selfprot::op::FMOD_BPF)
);
fmod_ret!(
    /// `(struct task_struct *child, unsigned int mode)`.
    guard_fmod_ptrace,
    "security_ptrace_access_check",
    |ctx| ptrace_access_check(
        ctx.arg(0),
        ctx.arg(1),
        guard_common::selfprot::op::FMOD_PTRACE
    )
);
fmod_ret!(
    /// `(struct file *file, unsigned int cmd, unsigned long arg)`.
    guard_fmod_ioctl,
    "security_file_ioctl",
    |ctx| terminal_input(ctx.arg(1))
);
fmod_ret!(
    /// The same for 32-bit callers (Linux ≥ 6.7; before, `security_file_ioctl` saw them).
    guard_fmod_ioctl_compat,
    "security_file_ioctl_compat",
    |ctx| terminal_input(ctx.arg(1))
);

// --- Files: the bpf-lsm tier's path decisions (`probes/lsm.rs`), named for the function.

/// The hook id of an event decided here.
const fn fmod(hook: u32) -> u32 {
    hook | lsm_hook::FMOD
}

fmod_ret!(
    /// `(const struct path *dir, struct dentry *dentry)`.
    guard_fmod_unlink,
    "security_path_unlink",
    |ctx| on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_UNLINK))
);
fmod_ret!(
    /// `(const struct path *dir, struct dentry *dentry)`.
    guard_fmod_rmdir,
    "security_path_rmdir",
    |ctx| on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_RMDIR))
);
fmod_ret!(
    /// `(old_dir, old_dentry, new_dir, new_dentry, flags)`: the source side.
    guard_fmod_rename,
    "security_path_rename",
    |ctx| on_dentry(ctx.arg(1), access::DELETE, fmod(lsm_hook::PATH_RENAME))
);
fmod_ret!(
    /// The destination side (a second program on the function, as on bpf-lsm).
    guard_fmod_rename_to,
    "security_path_rename",
    |ctx| on_target(ctx.arg(2), ctx.arg(3), fmod(lsm_hook::PATH_RENAME))
);
fmod_ret!(
    /// `(const struct path *path)`.
    guard_fmod_truncate,
    "security_path_truncate",
    |ctx| on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_TRUNCATE))
);
fmod_ret!(
    /// `(struct file *file)` (Linux ≥ 6.2).
    guard_fmod_ftruncate,
    "security_file_truncate",
    |ctx| on_file(ctx.arg(0), access::WRITE, fmod(lsm_hook::FILE_TRUNCATE))
);
fmod_ret!(
    /// `(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new_dentry)`:
    /// a new name for a protected object.
    guard_fmod_link,
    "security_path_link",
    |ctx| on_dentry(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_LINK))
);
fmod_ret!(
    /// The destination side: a new entry in a protected directory.
    guard_fmod_link_to,
    "security_path_link",
    |ctx| on_create(ctx.arg(1), ctx.arg(2), fmod(lsm_hook::PATH_LINK))
);
fmod_ret!(
    /// `(dir, dentry, mode, dev)`: also every `open(O_CREAT)` of a new file.
    guard_fmod_mknod,
    "security_path_mknod",
    |ctx| on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_MKNOD))
);
fmod_ret!(
    /// `(dir, dentry, mode)`.
    guard_fmod_mkdir,
    "security_path_mkdir",
    |ctx| on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_MKDIR))
);
fmod_ret!(
    /// `(dir, dentry, old_name)`.
    guard_fmod_symlink,
    "security_path_symlink",
    |ctx| on_create(ctx.arg(0), ctx.arg(1), fmod(lsm_hook::PATH_SYMLINK))
);
fmod_ret!(
    /// `(const struct path *path, umode_t mode)`.
    guard_fmod_chmod,
    "security_path_chmod",
    |ctx| on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_CHMOD))
);
fmod_ret!(
    /// `(const struct path *path, kuid_t uid, kgid_t gid)`.
    guard_fmod_chown,
    "security_path_chown",
    |ctx| on_path(ctx.arg(0), access::WRITE, fmod(lsm_hook::PATH_CHOWN))
);
