//! Process tracking: the tag of an agent tree is copied to every child at fork, set at exec
//! when a known agent starts, and dropped when the thread group dies.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, generated},
    macros::btf_tracepoint,
    programs::BtfTracePointContext,
};
use guard_common::{
    ProcKey, Tag,
    agent::{COMM_LEN, NAME_LEN, NameKey},
    event::{Counter, EventKind, ProcessEvent},
    maps::EVENTS_WAKE_BYTES,
    offsets::KernelOffsets,
    tag_flags,
};

use crate::{
    ctx::{current_ppid, current_tgid, forget_daemon_pid, header, kill_current, kill_task, traced},
    kernel::Task,
    maps::{
        AGENT_EXES, AGENT_SCRIPTS, ARGS_LEN, EVENTS, INTERPRETERS, SCRATCH, Scratch, TAGS, count,
        offsets,
    },
};

const MASK: usize = ARGS_LEN - 1;
/// How many arguments after argv[0] are examined to find an interpreter's script.
const MAX_ARGS: u32 = 6;
/// How many path components of a script are looked up.
const MAX_COMPONENTS: u32 = 8;

#[btf_tracepoint(function = "sched_process_fork")]
pub fn guard_fork(ctx: BtfTracePointContext) -> i32 {
    traced(try_fork(&ctx))
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn guard_exec(_ctx: BtfTracePointContext) -> i32 {
    traced(try_exec())
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

fn try_fork(ctx: &BtfTracePointContext) -> Result<(), i32> {
    // Runs in the parent's context before the child is first scheduled.
    let parent_tgid = current_tgid();
    let Some(tag) = TAGS.get_ptr(parent_tgid) else {
        return Ok(());
    };
    // SAFETY: map value pointer from a successful lookup.
    let tag = unsafe { *tag };
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
        flags: tag.flags | tag_flags::INHERITED,
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
            i32::from(killed),
            &[0; NAME_LEN],
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
        &[0; NAME_LEN],
    );
    Ok(())
}

fn try_exec() -> Result<(), i32> {
    let tgid = current_tgid();
    if let Some(tag) = TAGS.get_ptr(tgid) {
        // A tagged tree that execs another agent keeps its original root.
        // SAFETY: map value pointer from a successful lookup.
        let tag = unsafe { *tag };
        let key = ProcKey::new(tgid, tag.start_ns);
        emit(
            EventKind::TaggedExec,
            &tag,
            key,
            current_ppid(),
            0,
            &[0; NAME_LEN],
        );
        return Ok(());
    }
    let comm = bpf_get_current_comm()?;
    let comm_key = NameKey::new(&comm, COMM_LEN - 1);
    let mut script = [0u8; NAME_LEN];
    let agent_id = match AGENT_EXES.get_ptr(&comm_key) {
        // SAFETY: map value pointer from a successful lookup.
        Some(id) => unsafe { *id },
        None => {
            if INTERPRETERS.get_ptr(&comm_key).is_none() {
                return Ok(());
            }
            match match_script(&mut script)? {
                Some(id) => id,
                None => return Ok(()),
            }
        }
    };
    let o = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let task = Task::current();
    let key = task.key(&o)?;
    forget_daemon_pid(tgid);
    let tag = Tag {
        root: key,
        agent_id,
        flags: tag_flags::FROM_EXEC,
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
            &script,
        );
        return Ok(());
    }
    count(Counter::AgentExecs);
    emit(EventKind::AgentExec, &tag, key, ppid, 0, &script);
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
        &[0; NAME_LEN],
    );
    super::net::forget_pending_kill(tgid);
    super::guard_self::forget_tracer(tgid);
    TAGS.remove(tgid)?;
    Ok(())
}

/// Find the agent an interpreter runs from its arguments (`node …/claude-code/cli.js`,
/// `python3 -m aider`), following `guard_common::agent::{script_arg, script_candidates}`.
///
/// Loop state lives in the per-CPU scratch value (volatile accesses), not in registers, so
/// that the verifier sees the same register state at every loop head and prunes: a
/// byte-by-byte scan with data-dependent state in registers exceeds its complexity limit.
#[inline(always)]
fn match_script(matched: &mut [u8; NAME_LEN]) -> Result<Option<u32>, i32> {
    let o: KernelOffsets = offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let (arg_start, arg_end) = Task::current().args(&o)?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run.
    let sc = unsafe { &mut *scratch };

    // 1. Find the script argument: skip argv[0] and options, take the one after `-m`.
    let mut ptr = arg_start;
    let mut script: Option<(u64, usize)> = None;
    let mut next_is_module = false;
    let mut argn = 0u32;
    while argn <= MAX_ARGS {
        if ptr >= arg_end {
            break;
        }
        // SAFETY: the helper checks the user address and bounds the copy by the buffer.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                sc.args.as_mut_ptr().cast(),
                ARGS_LEN as u32,
                ptr as *const _,
            )
        };
        if n <= 0 {
            break;
        }
        let n = n as u64;
        if argn > 0 {
            let len = (n - 1) as usize;
            let (c0, c1) = (sc.args[0], sc.args[1]);
            if next_is_module || (len > 0 && c0 != b'-') {
                script = Some((ptr, len));
                break;
            }
            if len == 2 && c1 == b'm' {
                next_is_module = true;
            } else if len == 2 && (c1 == b'c' || c1 == b'e') {
                return Ok(None);
            }
        }
        ptr += n;
        argn += 1;
    }
    let Some((base, len)) = script else {
        return Ok(None);
    };
    if len == 0 || len > MASK {
        return Ok(None);
    }

    // 2. Scan it backwards, looking up each path component, and for the basename also its
    // stem (`cli.js` → `cli`) and first dotted part (`aider.main` → `aider`).
    sc.state.end = len as u64;
    sc.state.comp = 0;
    sc.state.first_dot = 0;
    sc.state.last_dot = 0;
    sc.state.found = 0;
    let mut k = 0usize;
    while k < MASK {
        if k >= len {
            break;
        }
        let i = (len - 1 - k) & MASK;
        let c = sc.args[i];
        if c == b'.' && vread(&sc.state.comp) == 0 && i > 0 {
            if vread(&sc.state.last_dot) == 0 {
                vwrite(&mut sc.state.last_dot, i as u64);
            }
            vwrite(&mut sc.state.first_dot, i as u64);
        }
        if c == b'/' {
            if component(sc, base, (i + 1) as u64, matched) {
                break;
            }
            vwrite(&mut sc.state.end, i as u64);
            let comp = vread(&sc.state.comp) + 1;
            vwrite(&mut sc.state.comp, comp);
            if comp >= MAX_COMPONENTS as u64 {
                break;
            }
        }
        k += 1;
    }
    if vread(&sc.state.found) == 0 && vread(&sc.state.comp) < MAX_COMPONENTS as u64 {
        component(sc, base, 0, matched);
    }
    let found = vread(&sc.state.found);
    Ok((found != 0).then(|| vread(&sc.state.agent) as u32))
}

#[inline(always)]
fn vread(v: &u64) -> u64 {
    // SAFETY: a valid reference; volatile keeps the value in memory for the verifier.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn vwrite(v: &mut u64, x: u64) {
    // SAFETY: a valid reference.
    unsafe { core::ptr::write_volatile(v, x) }
}

/// Look up the component `[start, state.end)` of the script at user address `base`; for the
/// basename also its stem and first dotted part. Records a match in the scratch state.
#[inline(always)]
fn component(sc: &mut Scratch, base: u64, start: u64, matched: &mut [u8; NAME_LEN]) -> bool {
    let end = vread(&sc.state.end);
    if lookup_user(sc, base, start, end, matched) {
        return true;
    }
    if vread(&sc.state.comp) == 0 {
        let last = vread(&sc.state.last_dot);
        let first = vread(&sc.state.first_dot);
        if last > start && lookup_user(sc, base, start, last, matched) {
            return true;
        }
        if first > start && first != last && lookup_user(sc, base, start, first, matched) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn lookup_user(
    sc: &mut Scratch,
    base: u64,
    start: u64,
    end: u64,
    matched: &mut [u8; NAME_LEN],
) -> bool {
    if end <= start {
        return false;
    }
    let size = core::cmp::min(end - start, (NAME_LEN - 1) as u64) as u32;
    sc.key = NameKey {
        bytes: [0; NAME_LEN],
    };
    // SAFETY: the helper checks the user address; size is at most NAME_LEN - 1.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            sc.key.bytes.as_mut_ptr().cast(),
            size & (NAME_LEN as u32 - 1),
            (base + start) as *const _,
        )
    };
    if ret != 0 {
        return false;
    }
    let Some(id) = AGENT_SCRIPTS.get_ptr(&sc.key) else {
        return false;
    };
    *matched = sc.key.bytes;
    // SAFETY: map value pointer from a successful lookup.
    vwrite(&mut sc.state.agent, u64::from(unsafe { *id }));
    vwrite(&mut sc.state.found, 1);
    true
}

/// `bpf_ringbuf_submit` flags for a fork or exit record: no wakeup until
/// [`EVENTS_WAKE_BYTES`] are queued (the reader also drains on a timer).
#[inline(always)]
fn lifecycle_wakeup() -> u64 {
    const BPF_RB_NO_WAKEUP: u64 = 1;
    const BPF_RB_AVAIL_DATA: u64 = 0;
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= EVENTS_WAKE_BYTES {
        0
    } else {
        BPF_RB_NO_WAKEUP
    }
}

#[inline(always)]
fn emit(
    kind: EventKind,
    tag: &Tag,
    proc: ProcKey,
    ppid: u32,
    exit_code: i32,
    script: &[u8; NAME_LEN],
) {
    let Some(mut entry) = EVENTS.reserve::<ProcessEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    entry.write(ProcessEvent {
        header: header(kind, tag, proc, ppid),
        comm,
        script: *script,
        exit_code,
        _pad: 0,
    });
    // Commands (exec) are evidence a reviewer follows live: they wake the reader at once.
    let flags = match kind {
        EventKind::TaggedFork | EventKind::TaggedExit => lifecycle_wakeup(),
        _ => 0,
    };
    entry.submit(flags);
}
