//! Self-protection on kernels without BPF LSM: kill-on-detect for signals and ptrace aimed at
//! the daemon by tagged processes.
//!
//! - A signal to any thread of the daemon from a tagged process (`signal_generate`, in the
//!   sender's context): the sender gets SIGKILL before the system call returns, and the
//!   signal is counted per number so that the daemon ignores a SIGTERM, SIGINT or SIGHUP it
//!   did not get from someone entitled to send it. A stop signal is remembered: when it is
//!   delivered (`signal_deliver`, in the daemon's context) the daemon sends itself SIGCONT.
//!   SIGKILL itself cannot be refused here: the daemon dies, the pinned programs keep
//!   enforcing, and the restarted daemon records the event from the pinned ring buffer.
//! - ptrace: `PTRACE_SEIZE` sends no signal, but as soon as a traced daemon thread stops for
//!   its tracer, the daemon sends the tracer SIGCHLD (`CLD_TRAPPED`/`CLD_STOPPED`, in the
//!   daemon's context). A tagged receiver of that SIGCHLD is marked, and killed when it waits
//!   (`sched_process_wait`, in its own context): `strace -p` and `gdb -p` die at their first
//!   wait, and the daemon thread resumes when the tracer is gone. `PTRACE_ATTACH` sends
//!   SIGSTOP and is caught at once by the first rule.
//!
//! - bpf(): a tagged process whose `bpf()` call checks a capability in the initial user
//!   namespace (`cap_capable`, Linux ≥ 6.13, in the caller's context) is killed before the
//!   call returns to it. Every way to guard's maps and links goes through such a check:
//!   `BPF_OBJ_GET` of a pin (the pin directory is mode 000, so root needs
//!   `CAP_DAC_READ_SEARCH` to walk into it), `BPF_*_GET_FD_BY_ID` (`CAP_SYS_ADMIN`).
//!
//! The daemon's tgid comes from a pinned map the daemon writes when it starts or adopts the
//! pins. Internal errors do nothing and are counted (`probe_errors`).

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_uid_gid, bpf_probe_read_kernel, generated},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use guard_common::{
    ProcKey, Tag,
    decision::outcome,
    event::{Counter, EventKind},
    file::nr,
    selfprot::{CLD_STOPPED, CLD_TRAPPED, SIGNAL_SLOTS, STOP_PENDING_SLOT, SelfEvent, op},
};

use crate::{
    ctx::{
        current_ppid, current_syscall, current_tgid, daemon_tgid, header, kill_current, tagged,
        traced,
    },
    kernel::Task,
    maps::{EVENTS, SELF_SIGNALS, SELF_TRACERS, TAGS, count, offsets, self_offsets},
};

const SIGCHLD: u32 = 17;
const SIGCONT: u32 = 18;
const SIGSTOP: u32 = 19;
const SIGTSTP: u32 = 20;
const SIGTTIN: u32 = 21;
const SIGTTOU: u32 = 22;

/// `signal_generate(sig, info, task, group, result)`.
#[btf_tracepoint(function = "signal_generate")]
pub fn guard_self_signal(ctx: BtfTracePointContext) -> i32 {
    traced(try_signal(&ctx))
}

/// `signal_deliver(sig, info, ka)`, in the receiving task's context.
#[btf_tracepoint(function = "signal_deliver")]
pub fn guard_self_deliver(ctx: BtfTracePointContext) -> i32 {
    let sig = ctx.arg::<u64>(0) as u32;
    if !is_stop(sig) {
        return 0;
    }
    let daemon = daemon_tgid();
    if daemon == 0 || current_tgid() != daemon {
        return 0;
    }
    let Some(slot) = SELF_SIGNALS.get_ptr_mut(STOP_PENDING_SLOT) else {
        return 0;
    };
    // SAFETY: pointer to an array slot from a successful lookup.
    unsafe {
        if core::ptr::read_volatile(slot) == 0 {
            return 0;
        }
        core::ptr::write_volatile(slot, 0);
        generated::bpf_send_signal(SIGCONT);
    }
    0
}

/// `cap_capable(cred, target_ns, capable_ns, cap, ret)`, in the checking task's context.
#[btf_tracepoint(function = "cap_capable")]
pub fn guard_self_cap(ctx: BtfTracePointContext) -> i32 {
    traced(try_cap(&ctx))
}

fn try_cap(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let Some(caller) = tagged() else {
        return Ok(());
    };
    let so = self_offsets();
    if so.valid == 0 {
        return Err(-1);
    }
    let syscall = current_syscall(so.task_flags, so.regs_syscall).0;
    if syscall != nr::BPF {
        super::deputy::capability_used(
            &caller,
            ctx.arg::<*const u8>(1),
            ctx.arg::<u64>(3) as i32,
            ctx.arg::<u64>(4) as i32,
            syscall,
        );
        return Ok(());
    }
    // A capability of a user namespace the process made for itself (a sandbox) says nothing
    // about guard's objects.
    let ns = ctx.arg::<*const u8>(1);
    // SAFETY: bpf_probe_read_kernel validates the address.
    let level: u32 =
        unsafe { bpf_probe_read_kernel(ns.wrapping_add(so.userns_level as usize) as *const u32)? };
    if level != 0 {
        return Ok(());
    }
    let cap = ctx.arg::<u64>(3) as u32;
    kill_and_record(
        &caller.tag,
        caller.key(),
        current_ppid(),
        op::BPF_CAP,
        cap,
        daemon_tgid(),
    );
    Ok(())
}

/// `sched_process_wait(pid)`, in the waiter's context.
#[btf_tracepoint(function = "sched_process_wait")]
pub fn guard_self_wait(_ctx: BtfTracePointContext) -> i32 {
    traced(try_wait())
}

#[inline(always)]
fn is_stop(sig: u32) -> bool {
    matches!(sig, SIGSTOP | SIGTSTP | SIGTTIN | SIGTTOU)
}

fn try_signal(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let daemon = daemon_tgid();
    if daemon == 0 {
        return Ok(());
    }
    let sig = ctx.arg::<u64>(0) as u32;
    let me = current_tgid();
    if me == daemon {
        return if sig == SIGCHLD {
            tracer_notified(ctx, daemon)
        } else {
            Ok(())
        };
    }
    let Some(tag) = TAGS.get_ptr(me) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let target = Task(ctx.arg::<*const u8>(2));
    if target.tgid(&o)? != daemon {
        return Ok(());
    }
    if sig < SIGNAL_SLOTS
        && let Some(slot) = SELF_SIGNALS.get_ptr_mut(sig)
    {
        // SAFETY: the array slot lives as long as the map; one atomic BPF add.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
    }
    if is_stop(sig)
        && let Some(slot) = SELF_SIGNALS.get_ptr_mut(STOP_PENDING_SLOT)
    {
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(slot, 1) };
    }
    let me_task = Task::current();
    kill_and_record(
        &tag,
        me_task.key(&o)?,
        me_task.parent_tgid(&o).unwrap_or(0),
        op::SIGNAL,
        sig,
        daemon,
    );
    Ok(())
}

/// The daemon sends SIGCHLD to `task`: a tagged receiver that is told a daemon thread
/// stopped or trapped is tracing it (or is its parent — a tagged process may not start the
/// daemon either).
fn tracer_notified(ctx: &BtfTracePointContext, daemon: u32) -> Result<(), i32> {
    let o = offsets();
    let so = self_offsets();
    if o.valid == 0 || so.valid == 0 {
        return Err(-1);
    }
    let target = Task(ctx.arg::<*const u8>(2));
    let tgid = target.tgid(&o)?;
    let Some(tag) = TAGS.get_ptr(tgid) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
    let info = ctx.arg::<*const u8>(1);
    if info.is_null() {
        return Ok(());
    }
    // SAFETY: bpf_probe_read_kernel validates the address.
    let code: i32 =
        unsafe { bpf_probe_read_kernel(info.add(so.siginfo_code as usize) as *const i32)? };
    if code != CLD_TRAPPED && code != CLD_STOPPED {
        return Ok(());
    }
    let key = target.key(&o)?;
    SELF_TRACERS.insert(&tgid, &key.start_ns, 0)?;
    emit(
        &tag,
        key,
        target.parent_tgid(&o).unwrap_or(0),
        u32::MAX,
        false,
        op::TRACED,
        SIGCHLD,
        daemon,
        outcome::KILL_SCHEDULED,
    );
    Ok(())
}

fn try_wait() -> Result<(), i32> {
    let me = current_tgid();
    let Some(start) = SELF_TRACERS.get_ptr(me) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let start = unsafe { *start };
    SELF_TRACERS.remove(&me)?;
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let task = Task::current();
    let key = task.key(&o)?;
    if key.start_ns != start {
        // The pid was reused.
        return Ok(());
    }
    let Some(tag) = TAGS.get_ptr(me) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
    kill_and_record(
        &tag,
        key,
        task.parent_tgid(&o).unwrap_or(0),
        op::TRACER_KILLED,
        0,
        daemon_tgid(),
    );
    Ok(())
}

/// SIGKILL the current process, a tagged offender, and record what it did (`what`,
/// `signal`) to daemon `target` and whether the kill went out.
#[inline(always)]
fn kill_and_record(tag: &Tag, proc: ProcKey, ppid: u32, what: u32, signal: u32, target: u32) {
    let result = if kill_current() {
        outcome::KILLED
    } else {
        outcome::KILL_FAILED
    };
    let uid = bpf_get_current_uid_gid() as u32;
    emit(tag, proc, ppid, uid, true, what, signal, target, result);
}

/// Drop a tracer mark of `tgid` (its process is gone). Called by the exit tracker.
#[inline(always)]
pub fn forget_tracer(tgid: u32) {
    let _ = SELF_TRACERS.remove(&tgid);
}

#[expect(
    clippy::too_many_arguments,
    reason = "one flat record; a builder costs stack"
)]
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one event's fields")]
pub(super) fn emit(
    tag: &Tag,
    proc: ProcKey,
    ppid: u32,
    uid: u32,
    current_comm: bool,
    what: u32,
    signal: u32,
    target_tgid: u32,
    result: u32,
) {
    let Some(mut entry) = EVENTS.reserve::<SelfEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let comm = if current_comm {
        bpf_get_current_comm().unwrap_or([0; 16])
    } else {
        [0; 16]
    };
    let mut header = header(EventKind::SelfProtect, tag, proc, ppid);
    header.uid = uid;
    entry.write(SelfEvent {
        header,
        comm,
        op: what,
        signal,
        target_tgid,
        outcome: result,
    });
    entry.submit(crate::maps::wake_now());
}
