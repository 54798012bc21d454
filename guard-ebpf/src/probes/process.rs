//! Process tracking: the tag of an agent tree is copied to every child at fork, set at exec
//! when a known agent starts, and dropped when the thread group dies.

use aya_ebpf::{
    helpers::bpf_get_current_comm,
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
};
use guard_common::{
    PROBE_TGID, ProcKey, Tag,
    agent::{NAME_LEN, recognised},
    event::{CHILD_KILLED, Counter, EventKind, FORK_REFUSED, ProcessEvent},
    maps::EVENTS_WAKE_BYTES,
    tag_flags,
};

use super::recognise::{Match, cgroup_agent, recognise};
use crate::{
    ctx::{
        current_ppid, current_tgid, daemon_tgid, forget_daemon_pid, header, kill_current,
        kill_task, traced,
    },
    kernel::Task,
    maps::{EVENTS, TAGS, count, offsets, submitted_unwoken, wake_now},
};

/// What a lifecycle record says beyond its header: nothing, an exit code, or a match.
const NOTHING: Match = Match {
    agent_id: 0,
    reason: 0,
    matched: [0; NAME_LEN],
    cgroup: 0,
};

#[btf_tracepoint(function = "sched_process_fork")]
pub fn guard_fork(ctx: BtfTracePointContext) -> i32 {
    traced(try_fork(&ctx))
}

/// `sched_process_exec(p, old_pid, bprm)`.
#[btf_tracepoint(function = "sched_process_exec")]
pub fn guard_exec(ctx: BtfTracePointContext) -> i32 {
    traced(try_exec(ctx.arg(2)))
}

/// `sched_process_exit(p, group_dead)` (kernels ≥ 6.16 pass `group_dead`).
#[btf_tracepoint(function = "sched_process_exit")]
pub fn guard_exit(ctx: BtfTracePointContext) -> i32 {
    let group_dead: u64 = ctx.arg(1);
    if group_dead & 1 == 0 {
        return 0;
    }
    traced(try_exit())
}

/// `sched_process_exit(p)` on kernels before 6.16, which pass no `group_dead`: the thread
/// group is dead once `signal->live`, decremented earlier in `do_exit`, has reached zero.
#[btf_tracepoint(function = "sched_process_exit")]
pub fn guard_exit_compat(_ctx: BtfTracePointContext) -> i32 {
    let o = offsets();
    if o.valid == 0 {
        count(Counter::ProbeErrors);
        return 0;
    }
    match Task::current().live_threads(&o) {
        Ok(0) => {}
        Ok(_) => return 0,
        Err(_) => {
            count(Counter::ProbeErrors);
            return 0;
        }
    }
    traced(try_exit())
}

/// `cgroup_attach_task(dst_cgrp, path, task, threadgroup)`, after the move: a process that
/// joins an agent's cgroup (or one below it) is tagged; one that leaves keeps its tag.
#[btf_tracepoint(function = "cgroup_attach_task")]
pub fn guard_cgroup_join(ctx: BtfTracePointContext) -> i32 {
    traced(try_join(&ctx))
}

fn try_join(ctx: &BtfTracePointContext) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let dst: *const u8 = ctx.arg(0);
    let task = Task(ctx.arg::<*const u8>(2));
    let tgid = task.tgid(&o)?;
    if TAGS.get_ptr(tgid).is_some() {
        return Ok(());
    }
    // The same event fires for moves on v1 hierarchies, whose ids are another numbering:
    // only a move that changed the task's default-hierarchy cgroup counts.
    if task.dfl_cgroup(&o)? != dst {
        return Ok(());
    }
    tag_in_cgroup(task, tgid, dst)?;
    Ok(())
}

/// Tag `task` (thread group `tgid`) if `cgrp`, its default-hierarchy cgroup, is an agent's or
/// below one: its root is the cgroup. Returns the tag.
#[inline(always)]
fn tag_in_cgroup(task: Task, tgid: u32, cgrp: *const u8) -> Result<Option<Tag>, i32> {
    let Some((agent_id, cgroup)) = cgroup_agent(cgrp) else {
        return Ok(None);
    };
    if tgid == daemon_tgid() {
        // The daemon's own cgroup may match a broad pattern: it never tags itself.
        return Ok(None);
    }
    let o = offsets();
    let key = task.key(&o)?;
    let tag = Tag {
        root: ProcKey::cgroup(cgroup),
        agent_id,
        flags: tag_flags::BY_CGROUP,
        start_ns: key.start_ns,
    };
    if TAGS.insert(tgid, tag, 0).is_err() {
        count(Counter::TagInsertFailed);
        return Ok(None);
    }
    let mut comm = [0u8; 16];
    // SAFETY: the helper checks the kernel address and bounds the copy by the buffer.
    unsafe {
        aya_ebpf::helpers::generated::bpf_probe_read_kernel_str(
            comm.as_mut_ptr().cast(),
            16,
            task.0.wrapping_add(o.task_comm as usize).cast(),
        )
    };
    let found = Match {
        agent_id,
        reason: recognised::CGROUP,
        matched: [0; NAME_LEN],
        cgroup,
    };
    let ppid = task.parent_tgid(&o).unwrap_or(0);
    emit_as(EventKind::AgentCgroup, &tag, key, ppid, 0, &found, comm);
    Ok(Some(tag))
}

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // Runs in the parent's context before the child is first scheduled.
    let parent_tgid = current_tgid();
    let tag = match TAGS.get_ptr(parent_tgid) {
        // SAFETY: map value pointer from a successful lookup.
        Some(tag) => unsafe { *tag },
        // An untagged process forking in an agent's cgroup (it was there before the cgroup's
        // id reached the map, and the daemon's scan has not tagged it yet): it and its child
        // join the agent now.
        None => {
            let task = Task::current();
            let Ok(cgrp) = task.dfl_cgroup(&offsets()) else {
                return Ok(());
            };
            match tag_in_cgroup(task, parent_tgid, cgrp)? {
                Some(tag) => tag,
                None => return Ok(()),
            }
        }
    };
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let child = Task(ctx.arg::<*const u8>(1));
    let child_tgid = child.tgid(&o)?;
    if child_tgid == parent_tgid {
        // A new thread: it shares the thread group's entry.
        return Ok(());
    }
    let child_key = child.key(&o)?;
    forget_daemon_pid(child_tgid);
    let new = Tag {
        root: tag.root,
        agent_id: tag.agent_id,
        flags: (tag.flags | tag_flags::INHERITED) & !tag_flags::SETUP,
        start_ns: child_key.start_ns,
    };
    if TAGS.insert(child_tgid, new, 0).is_err() {
        // The tree must not grow an untagged member. The child has not run yet, and is not
        // woken before this returns: the signal is pending when it first would.
        count(Counter::TagInsertFailed);
        let killed = kill_task(child.0);
        if killed {
            count(Counter::ChildrenKilled);
        }
        emit(
            EventKind::TagMapFull,
            &tag,
            child_key,
            parent_tgid,
            if killed { CHILD_KILLED } else { 0 },
            &NOTHING,
        );
        return Ok(());
    }
    count(Counter::Forks);
    emit(
        EventKind::TaggedFork,
        &tag,
        child_key,
        parent_tgid,
        0,
        &NOTHING,
    );
    Ok(())
}

const CLONE_THREAD: u64 = 0x0001_0000;
const BPF_NOEXIST: u64 = 1;
const E2BIG: i32 = 7;
const EAGAIN: i32 = 11;

/// `task_alloc(struct task_struct *task, unsigned long clone_flags)` (bpf-lsm tier): a tagged
/// process's fork that the tag map cannot take is refused with EAGAIN before the child exists,
/// instead of the child being killed after (which before Linux 6.13 only the daemon can do,
/// and which lets the child run until then). The map is asked by inserting the one key no
/// process has, and removing it again; the fork tracker's kill stays the backstop for a fork
/// that loses the last entry to another between here and there.
#[lsm(hook = "task_alloc")]
pub fn guard_lsm_task_alloc(ctx: LsmContext) -> i32 {
    let clone_flags: u64 = ctx.arg(1);
    if clone_flags & CLONE_THREAD != 0 {
        // A thread shares its group's entry.
        return 0;
    }
    let Some(caller) = crate::ctx::tagged() else {
        return 0;
    };
    match TAGS.insert(PROBE_TGID, caller.tag, BPF_NOEXIST) {
        Ok(()) => {
            let _ = TAGS.remove(PROBE_TGID);
            0
        }
        Err(e) if e == -E2BIG => {
            count(Counter::TagInsertFailed);
            emit(
                EventKind::TagMapFull,
                &caller.tag,
                caller.key(),
                current_ppid(),
                FORK_REFUSED,
                &NOTHING,
            );
            -EAGAIN
        }
        // Another fork is asking at this instant, or the kernel is short of memory: the
        // fork tracker decides.
        Err(_) => 0,
    }
}

fn try_exec(bprm: *const u8) -> Result<(), i32> {
    let tgid = current_tgid();
    if let Some(entry) = TAGS.get_ptr_mut(tgid) {
        // A tagged tree that execs another agent keeps its original root.
        // SAFETY: map value pointer from a successful lookup.
        let tag = unsafe { *entry };
        if tag.flags & tag_flags::SETUP != 0 {
            // `guard run` execs the command: its setup is over.
            // SAFETY: as above; only this process's own exec writes its flags.
            unsafe { (*entry).flags &= !tag_flags::SETUP };
        }
        let key = ProcKey::new(tgid, tag.start_ns);
        emit(
            EventKind::TaggedExec,
            &tag,
            key,
            current_ppid(),
            0,
            &NOTHING,
        );
        return Ok(());
    }
    let comm = bpf_get_current_comm()?;
    let Some(found) = recognise(&comm, bprm)? else {
        return Ok(());
    };
    make_root(&found)
}

/// Make the current, untagged process the root of a tree of `found`'s agent (or a member of
/// its cgroup's tree), and record it. A process the tag map cannot take is killed: an agent
/// that cannot be contained does not run.
pub(super) fn make_root(found: &Match) -> Result<(), i32> {
    let tgid = current_tgid();
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let task = Task::current();
    let key = task.key(&o)?;
    forget_daemon_pid(tgid);
    let root = if found.cgroup != 0 {
        ProcKey::cgroup(found.cgroup)
    } else {
        key
    };
    let by = match found.reason {
        recognised::CGROUP => tag_flags::BY_CGROUP,
        recognised::ENV => tag_flags::BY_ENV,
        recognised::SCRIPT => tag_flags::BY_SCRIPT,
        recognised::PATH => tag_flags::BY_PATH,
        recognised::DEFERRED => tag_flags::DEFERRED,
        _ => 0,
    };
    let tag = Tag {
        root,
        agent_id: found.agent_id,
        flags: tag_flags::FROM_EXEC | by,
        start_ns: key.start_ns,
    };
    let ppid = task.parent_tgid(&o).unwrap_or(0);
    if TAGS.insert(tgid, tag, 0).is_err() {
        // An agent that cannot be contained does not run.
        count(Counter::TagInsertFailed);
        let killed = kill_current();
        if killed {
            count(Counter::ChildrenKilled);
        }
        emit(
            EventKind::TagMapFull,
            &tag,
            key,
            ppid,
            i32::from(killed),
            found,
        );
        return Ok(());
    }
    count(Counter::AgentExecs);
    emit(EventKind::AgentExec, &tag, key, ppid, 0, found);
    Ok(())
}

fn try_exit() -> Result<(), i32> {
    let tgid = current_tgid();
    let Some(tag) = TAGS.get_ptr(tgid) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
    let o = offsets();
    let (ppid, code) = if o.valid != 0 {
        let task = Task::current();
        (
            task.parent_tgid(&o).unwrap_or(0),
            task.exit_code(&o).unwrap_or(0),
        )
    } else {
        (0, 0)
    };
    emit(
        EventKind::TaggedExit,
        &tag,
        ProcKey::new(tgid, tag.start_ns),
        ppid,
        code,
        &NOTHING,
    );
    super::net::forget_pending_kill(tgid);
    super::guard_self::forget_tracer(tgid);
    TAGS.remove(tgid)?;
    Ok(())
}

/// `bpf_ringbuf_submit` flags for a fork or exit record: no wakeup until
/// [`EVENTS_WAKE_BYTES`] are queued (the reader also drains on a timer).
#[inline(always)]
fn lifecycle_wakeup() -> u64 {
    const BPF_RB_AVAIL_DATA: u64 = 0;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS_WAKE_BYTES {
        wake_now()
    } else {
        submitted_unwoken()
    }
}

#[inline(always)]
fn emit(kind: EventKind, tag: &Tag, proc: ProcKey, ppid: u32, exit_code: i32, found: &Match) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit_as(kind, tag, proc, ppid, exit_code, found, comm);
}

/// [`emit`] with the `comm` of a task other than the current one.
#[inline(always)]
fn emit_as(
    kind: EventKind,
    tag: &Tag,
    proc: ProcKey,
    ppid: u32,
    exit_code: i32,
    found: &Match,
    comm: [u8; 16],
) {
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    entry.write(ProcessEvent {
        header: header(kind, tag, proc, ppid),
        comm,
        script: found.matched,
        exit_code,
        reason: found.reason,
    });
    // Commands (exec) are evidence a reviewer follows live: they wake a reader that has read
    // everything. After records that woke nobody (a fork) they are read on the reader's
    // timer, within 50 ms, rather than each forcing a wake-up: that self-IPI cost a tagged
    // exec about 17 µs (bpf_stats). Decisions and reads to scan force it (`wake_now`).
    let flags = match kind {
        EventKind::TaggedFork | EventKind::TaggedExit => lifecycle_wakeup(),
        _ => 0,
    };
    entry.submit(flags);
}
