//! No deputies: a tagged process may not reach into a process or terminal outside its own
//! agent tree, nor use the capabilities of the ceiling in the initial user namespace.
//!
//! - bpf-lsm: `ptrace_access_check` (ptrace attach and seize, `/proc/PID/mem`, `environ`,
//!   `maps`, `fd`, `process_vm_*`, `pidfd_getfd`: one hook) refuses a target that is not in
//!   the caller's tree; checks made with `PTRACE_MODE_NOAUDIT` (`ps`, `top` reading
//!   `/proc/PID/stat`) are left alone. `file_ioctl` and `file_ioctl_compat` refuse `TIOCSTI`
//!   and `TIOCLINUX`. `capable` refuses the ceiling's capabilities in the initial user
//!   namespace (a sandbox's own user namespace keeps them).
//! - fallback: `cap_capable` (Linux ≥ 6.13) kills a tagged process that was granted a
//!   capability of the ceiling inside a system call that is that capability's operation
//!   (`guard_common::deputy::cap_operation`): the operation happens, the caller dies.
//!
//! A refusal is recorded once per (caller, target) a second: `lsof` walking `/proc` would
//! otherwise record one event per file of every process.

use aya_ebpf::{helpers::bpf_ktime_get_boot_ns, macros::lsm, programs::LsmContext};
use guard_common::{
    decision::outcome,
    deputy::{
        CEILING_KILL, CEILING_REFUSE, DeputyEvent, REPEAT_NS, TIOCLINUX, TIOCSTI, op, ptrace_mode,
    },
    event::{Counter, EventKind},
    tag_flags,
};

use crate::{
    ctx::{Caller, kill_current, tagged},
    kernel::Task,
    maps::{CAP_CEILING, DEPUTY_SEEN, EVENTS, TAGS, count, offsets, self_offsets},
};

const EPERM: i32 = 1;
/// `CAP_OPT_NOAUDIT` in `capable`'s `opts`.
const CAP_OPT_NOAUDIT: u32 = 0x2;

/// Whether `target` (a task) is outside `caller`'s tree: untagged, or another root's.
/// An unreadable target is inside (fail open, counted).
#[inline(always)]
pub fn outside_tree(caller: &Caller, target: *const u8) -> Option<u32> {
    let o = offsets();
    if o.valid == 0 {
        count(Counter::ProbeErrors);
        return None;
    }
    let Ok(tgid) = Task(target).tgid(&o) else {
        count(Counter::ProbeErrors);
        return None;
    };
    match TAGS.get_ptr(tgid) {
        // SAFETY: map value pointer from a successful lookup.
        Some(t) if unsafe { (*t).root } == caller.tag.root => None,
        _ => Some(tgid),
    }
}

/// The process-access half of `ptrace_access_check(child, mode)` (the hook's program also
/// guards the daemon): `-EPERM` for a tagged caller reaching outside its tree.
#[inline(always)]
pub fn process_access(child: *const u8, mode: u32) -> i32 {
    if mode & ptrace_mode::NOAUDIT != 0 {
        return 0;
    }
    let Some(caller) = tagged() else {
        return 0;
    };
    let Some(target) = outside_tree(&caller, child) else {
        return 0;
    };
    record(
        &caller,
        op::PROCESS_ACCESS,
        mode,
        target,
        outcome::DENIED,
        -1,
    );
    -EPERM
}

/// `file_ioctl(struct file *file, unsigned int cmd, unsigned long arg)`.
#[lsm(hook = "file_ioctl")]
pub fn guard_lsm_file_ioctl(ctx: LsmContext) -> i32 {
    terminal_input(ctx.arg(1))
}

/// `file_ioctl_compat(struct file *file, unsigned int cmd, unsigned long arg)` (32-bit
/// callers, Linux ≥ 6.7; before that `file_ioctl` saw them too).
#[lsm(hook = "file_ioctl_compat")]
pub fn guard_lsm_file_ioctl_compat(ctx: LsmContext) -> i32 {
    terminal_input(ctx.arg(1))
}

/// An ioctl `cmd` into a terminal: `-EPERM` for a tagged caller's TIOCSTI or TIOCLINUX.
/// Shared with the fallback tier's `fmod_ret` programs (`probes/modify_return.rs`).
#[inline(always)]
pub(super) fn terminal_input(cmd: u32) -> i32 {
    if cmd != TIOCSTI && cmd != TIOCLINUX {
        return 0;
    }
    let Some(caller) = tagged() else {
        return 0;
    };
    record(&caller, op::TERMINAL_INPUT, cmd, 0, outcome::DENIED, -1);
    -EPERM
}

/// `capable(const struct cred *cred, struct user_namespace *ns, int cap, unsigned int opts)`.
#[lsm(hook = "capable")]
pub fn guard_lsm_capable(ctx: LsmContext) -> i32 {
    let cap: i32 = ctx.arg(2);
    if !in_ceiling(CEILING_REFUSE, cap) {
        return 0;
    }
    let Some(caller) = tagged() else {
        return 0;
    };
    if caller.tag.flags & tag_flags::SETUP != 0 || !initial_namespace(ctx.arg(1)) {
        return 0;
    }
    let opts: u32 = ctx.arg(3);
    if opts & CAP_OPT_NOAUDIT == 0 {
        record(&caller, op::CAPABILITY, cap as u32, 0, outcome::DENIED, -1);
    }
    -EPERM
}

/// The fallback half of `cap_capable(cred, target_ns, capable_ns, cap, ret)`: a granted
/// capability of the ceiling, in its own operation, kills the caller.
#[inline(always)]
pub fn capability_used(caller: &Caller, target_ns: *const u8, cap: i32, ret: i32, nr: i64) {
    if ret != 0
        || caller.tag.flags & tag_flags::SETUP != 0
        || !in_ceiling(CEILING_KILL, cap)
        || !initial_namespace(target_ns)
    {
        return;
    }
    if !guard_common::deputy::cap_operation(cap as u32, nr) {
        return;
    }
    let result = if kill_current() {
        outcome::KILLED
    } else {
        outcome::KILL_FAILED
    };
    record(caller, op::CAPABILITY, cap as u32, 0, result, nr);
}

#[inline(always)]
fn in_ceiling(slot: u32, cap: i32) -> bool {
    (0..64).contains(&cap)
        && CAP_CEILING
            .get(slot)
            .is_some_and(|m| m & (1u64 << cap) != 0)
}

/// Whether `ns` is the initial user namespace (level 0); unreadable counts as not.
#[inline(always)]
fn initial_namespace(ns: *const u8) -> bool {
    let so = self_offsets();
    if so.valid == 0 {
        return false;
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    let level = unsafe {
        aya_ebpf::helpers::bpf_probe_read_kernel(
            ns.wrapping_add(so.userns_level as usize) as *const u32
        )
    };
    matches!(level, Ok(0))
}

/// Record a refusal (or kill), at most once per (caller, what, target) a [`REPEAT_NS`].
#[inline(always)]
fn record(caller: &Caller, what: u32, detail: u32, target: u32, result: u32, syscall: i64) {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let key = (u64::from(caller.tgid) << 32) | u64::from(target ^ (what << 24) ^ detail);
    if let Some(last) = DEPUTY_SEEN.get_ptr(&key)
        // SAFETY: map value pointer from a successful lookup.
        && now.saturating_sub(unsafe { *last }) < REPEAT_NS
    {
        return;
    }
    let _ = DEPUTY_SEEN.insert(&key, &now, 0);
    let Some(mut entry) = EVENTS.reserve::<DeputyEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    entry.write(DeputyEvent {
        header: caller.header(EventKind::Deputy),
        comm: aya_ebpf::helpers::bpf_get_current_comm().unwrap_or([0; 16]),
        op: what,
        detail,
        target_tgid: target,
        outcome: result,
        syscall,
    });
    entry.submit(crate::maps::wake_now());
}
