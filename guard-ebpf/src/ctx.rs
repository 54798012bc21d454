//! What every hook starts from and ends with, so that a hook is only its own logic: who is
//! calling ([`tagged`]: one tag-map lookup, and nothing more for an untagged process), the
//! header of the event it records ([`header`], [`Caller::header`]) and the kill
//! ([`kill_current`]).

use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
    bpf_probe_read_kernel, generated,
};
use guard_common::{
    ProcKey, Tag,
    event::{Counter, EventHeader, EventKind},
    maps::KFUNC_SIGNAL_TASK,
};

use crate::{
    kernel::Task,
    maps::{SELF_STATE, TAGS, count, offsets, signal_task},
};

const SIGKILL: u32 = 9;
/// `enum pid_type`: the whole thread group.
const PIDTYPE_TGID: u32 = 1;

#[inline(always)]
pub fn current_tgid() -> u32 {
    (bpf_get_current_pid_tgid() >> 32) as u32
}

/// The running daemon's tgid, 0 when none runs. One source for every program: the pinned
/// self-protection state, which the daemon writes when it starts and the trackers clear when a
/// process they tag holds that pid (the daemon is gone, and its pid must not exempt anyone).
#[inline(always)]
pub fn daemon_tgid() -> u32 {
    SELF_STATE.get(0).map_or(0, |s| s.daemon_tgid)
}

/// `tgid` is being tagged: if it holds the pid the daemon had, that daemon is gone.
#[inline(always)]
pub fn forget_daemon_pid(tgid: u32) {
    if let Some(state) = SELF_STATE.get_ptr_mut(0) {
        // SAFETY: the array slot lives as long as the map; a racing daemon start writes the
        // whole value, and a stale zero here only delays its exemption of itself.
        unsafe {
            if (*state).daemon_tgid == tgid {
                (*state).daemon_tgid = 0;
            }
        }
    }
}

/// A tagged process calling a hook.
#[derive(Clone, Copy)]
pub struct Caller {
    pub tgid: u32,
    pub tag: Tag,
}

impl Caller {
    #[inline(always)]
    pub fn key(&self) -> ProcKey {
        ProcKey::new(self.tgid, self.tag.start_ns)
    }

    /// The header of a record about the caller itself.
    #[inline(always)]
    pub fn header(&self, kind: EventKind) -> EventHeader {
        header(kind, &self.tag, self.key(), current_ppid())
    }
}

/// Whether the calling process is tagged: the cheap filter in front of a hook's own reads.
#[inline(always)]
pub fn is_tagged() -> bool {
    TAGS.get_ptr(current_tgid()).is_some()
}

/// The calling process when it is tagged and is not the daemon.
#[inline(always)]
pub fn tagged() -> Option<Caller> {
    let tgid = current_tgid();
    let tag = TAGS.get_ptr(tgid)?;
    if tgid == daemon_tgid() {
        return None;
    }
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
    Some(Caller { tgid, tag })
}

/// The current process's parent tgid (0 when it cannot be read).
#[inline(always)]
pub fn current_ppid() -> u32 {
    let o = offsets();
    if o.valid == 0 {
        return 0;
    }
    Task::current().parent_tgid(&o).unwrap_or(0)
}

/// An event header for `proc` of `tag`'s tree, recorded now by the current user.
#[inline(always)]
pub fn header(kind: EventKind, tag: &Tag, proc: ProcKey, ppid: u32) -> EventHeader {
    header_as(kind, tag, proc, ppid, bpf_get_current_uid_gid() as u32)
}

/// [`header`] with the user given: a program that may not ask for the current one (cgroup skb:
/// 6.12 refuses the helper there) passes the uid it recorded.
#[inline(always)]
pub fn header_as(kind: EventKind, tag: &Tag, proc: ProcKey, ppid: u32, uid: u32) -> EventHeader {
    EventHeader {
        kind: kind as u32,
        agent_id: tag.agent_id,
        // SAFETY: helper without preconditions.
        time_ns: unsafe { bpf_ktime_get_boot_ns() },
        proc,
        root: tag.root,
        ppid,
        uid,
    }
}

/// SIGKILL the current process (its whole thread group) in its own context: it never returns
/// to user space. `false` when the kernel refused (the caller counts it).
#[inline(always)]
pub fn kill_current() -> bool {
    // SAFETY: helper without memory arguments; signals the current process.
    unsafe { generated::bpf_send_signal(SIGKILL) == 0 }
}

/// SIGSTOP the current process in its own context: it stops before it returns to user
/// space (a `hold` rule; the daemon then stops the rest of its tree).
#[inline(always)]
pub fn stop_current() -> bool {
    // SAFETY: helper without memory arguments; signals the current process.
    unsafe { generated::bpf_send_signal(SIGSTOP) == 0 }
}

const SIGSTOP: u32 = 19;

/// SIGKILL the thread group of `task` (a trusted `task_struct` pointer the program was given,
/// not the current task) through the `bpf_send_signal_task` kfunc. `false` where the loader
/// could not provide the kfunc (before Linux 6.13) or the kernel refused.
#[inline(always)]
pub fn kill_task(task: *const u8) -> bool {
    if !signal_task() || task.is_null() {
        return false;
    }
    // SAFETY: the loader rewrites this call into `bpf_send_signal_task(task, sig, type,
    // value)` (it only runs when it did): the same calling convention as a helper.
    unsafe {
        let kfunc: unsafe extern "C" fn(*const u8, u32, u32, u64) -> i64 =
            core::mem::transmute(KFUNC_SIGNAL_TASK as usize);
        kfunc(task, SIGKILL, PIDTYPE_TGID, 0) == 0
    }
}

/// `task_struct.flags` bit of an io_uring worker (it runs no system call of its own).
const PF_IO_WORKER: u32 = 0x10;

/// The system call the current task is in, from the registers the kernel saved at entry
/// (`task_flags`, `regs_syscall`: offsets of `task_struct.flags` and of the number in
/// `pt_regs`), and those registers; `(-1, None)` for an io_uring worker or when unknown.
#[inline(always)]
pub fn current_syscall(task_flags: u32, regs_syscall: u32) -> (i64, Option<*const u8>) {
    // SAFETY: helper without arguments; returns the current task.
    let task = unsafe { generated::bpf_get_current_task_btf() };
    // SAFETY: bpf_probe_read_kernel validates the address.
    let flags: u32 = unsafe {
        bpf_probe_read_kernel((task as *const u8).wrapping_add(task_flags as usize).cast())
    }
    .unwrap_or(PF_IO_WORKER);
    if flags & PF_IO_WORKER != 0 || regs_syscall == u32::MAX {
        return (-1, None);
    }
    // SAFETY: `task` is the current task as a BTF pointer, which the helper requires.
    let regs = unsafe { generated::bpf_task_pt_regs(task) } as *const u8;
    // SAFETY: bpf_probe_read_kernel validates the address.
    match unsafe { bpf_probe_read_kernel(regs.wrapping_add(regs_syscall as usize).cast::<u64>()) } {
        Ok(nr) => (nr as i64, Some(regs)),
        Err(_) => (-1, None),
    }
}

/// The return value of a tracing program whose body returned `r`: always 0 (a tracepoint
/// cannot refuse anything), with an internal error counted as `probe_errors`.
#[inline(always)]
pub fn traced(r: Result<(), i32>) -> i32 {
    if r.is_err() {
        count(Counter::ProbeErrors);
    }
    0
}

/// An approval's deadline (a value of `NET_EXCEPTIONS`) is still ahead.
#[inline(always)]
pub fn live(deadline: Option<*const u64>) -> bool {
    // SAFETY: a map value pointer from a successful lookup; helper without preconditions.
    deadline.is_some_and(|d| unsafe { *d > bpf_ktime_get_boot_ns() })
}

/// A copy of `v` whose contents the verifier knows nothing about. Where several paths build
/// different values (an IPv4 or IPv6 destination, a match by name or by marker) and then run
/// the same decision and record, the verifier walks that tail once per distinct value unless
/// the values are forgotten first: this cut the IPv6 connect program from 133k verified
/// instructions to 25k. One helper call, on tagged paths only. `T` is plain data (integers
/// and arrays of them), for which all-zero bytes are a value.
#[inline(always)]
pub fn forget<T: Copy>(v: &T) -> T {
    let mut out = core::mem::MaybeUninit::<T>::zeroed();
    // SAFETY: `v` is a valid `T` on the stack, `out` has room for one; the helper copies
    // size_of::<T>() bytes, or zeroes `out` if it fails (it cannot for the program's own
    // stack). Either way `out` holds a plain-data `T`.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel(
            out.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
            (v as *const T).cast(),
        );
        out.assume_init()
    }
}
