//! Recognition at exec: which agent, if any, a new image is. By its executable's name
//! (`comm`), by the script an interpreter runs, or by an environment marker its parent set
//! for it. The caller ([`super::process`]) turns a match into a root's tag.

use aya_ebpf::helpers::generated;
use guard_common::{
    agent::{
        CGROUP_WALK_MAX, ENV_FILTER_BITS, ENV_KEY_LEN, ENV_SCAN_MAX_BYTES, ENV_SCAN_MAX_VARS,
        NAME_LEN, NameKey, PATH_WALK_MAX, Recognition, SCRIPT_PATH_LEN, env_filter_bit, recognised,
    },
    event::Counter,
    file::FileKey,
    offsets::KernelOffsets,
};

use crate::{
    kernel::Task,
    maps::{
        AGENT_CGROUPS, AGENT_ENV, AGENT_EXES, AGENT_PATHS, AGENT_SCRIPT_PATHS, AGENT_SCRIPTS,
        ARGS_LEN, INTERPRETERS, RECOGNITION, SCRATCH, Scratch, count, file_offsets, offsets,
    },
};

const MASK: usize = ARGS_LEN - 1;
/// How many arguments after argv[0] are examined to find an interpreter's script.
const MAX_ARGS: u32 = 6;
/// How many path components of a script are looked up.
const MAX_COMPONENTS: u32 = 8;
/// Reads of the environment scan: one per variable, one more per [`ARGS_LEN`] - 1 bytes of
/// a long one. Enough for [`ENV_SCAN_MAX_VARS`] variables in [`ENV_SCAN_MAX_BYTES`].
const ENV_READS: u32 = ENV_SCAN_MAX_VARS + (ENV_SCAN_MAX_BYTES / (ARGS_LEN as u64 - 1)) as u32 + 1;

/// The agent the current exec starts, why, and what matched (a script name or the start of
/// an environment variable).
pub struct Match {
    pub agent_id: u32,
    pub reason: u32,
    pub matched: [u8; NAME_LEN],
    /// For [`recognised::CGROUP`], the agent's cgroup: the root of the tree (else 0).
    pub cgroup: u64,
}

/// Recognise the image the current task has just exec'd (`bprm`: its `linux_binprm`).
#[inline(always)]
pub fn recognise(comm: &[u8; 16], bprm: *const u8) -> Result<Option<Match>, i32> {
    let comm_key = NameKey::new(comm, guard_common::agent::COMM_LEN - 1);
    let mut matched = [0u8; NAME_LEN];
    // Everything in an agent's cgroup is that agent, whatever it runs.
    if let Ok(cgrp) = Task::current().dfl_cgroup(&offsets())
        && let Some((agent_id, cgroup)) = cgroup_agent(cgrp)
    {
        return Ok(Some(Match {
            agent_id,
            reason: recognised::CGROUP,
            matched,
            cgroup,
        }));
    }
    if let Some(id) = AGENT_EXES.get_ptr(&comm_key) {
        // SAFETY: map value pointer from a successful lookup.
        let agent_id = unsafe { *id };
        return Ok(Some(Match {
            agent_id,
            reason: recognised::EXECUTABLE,
            matched,
            cgroup: 0,
        }));
    }
    let settings = RECOGNITION.get_ptr(0);
    // SAFETY: map value pointer from a successful lookup.
    let paths = settings.map_or(0, |s| unsafe { (*s).paths });
    if paths != 0
        && let Some(agent_id) = match_path(bprm, &mut matched)
    {
        return Ok(Some(Match {
            agent_id,
            reason: recognised::PATH,
            matched,
            cgroup: 0,
        }));
    }
    if INTERPRETERS.get_ptr(&comm_key).is_some()
        && let Some((agent_id, reason)) = match_script(&mut matched)?
    {
        return Ok(Some(Match {
            agent_id,
            reason,
            matched,
            cgroup: 0,
        }));
    }
    match match_env(&mut matched)? {
        Some(agent_id) => Ok(Some(Match {
            agent_id,
            reason: recognised::ENV,
            matched,
            cgroup: 0,
        })),
        None => Ok(None),
    }
}

/// The agent whose cgroup `cgrp` (a default-hierarchy `struct cgroup *`) is, or is below, and
/// that cgroup's id. Fails open (counted) on a read error.
#[inline(always)]
pub fn cgroup_agent(cgrp: *const u8) -> Option<(u32, u64)> {
    let settings = RECOGNITION.get_ptr(0)?;
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*settings).cgroups } == 0 {
        return None;
    }
    match walk_cgroups(cgrp) {
        Ok(found) => found,
        Err(_) => {
            count(Counter::ProbeErrors);
            None
        }
    }
}

#[inline(always)]
fn walk_cgroups(cgrp: *const u8) -> Result<Option<(u32, u64)>, i32> {
    let o = offsets();
    if o.valid == 0 || o.cgroup_kn == 0 {
        return Err(-1);
    }
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run.
    let sc = unsafe { &mut *scratch };
    vwrite(&mut sc.env_state.cgroup_agent, 0);
    let mut c = cgrp;
    let mut level = 0u32;
    while level <= CGROUP_WALK_MAX {
        if c.is_null() {
            break;
        }
        let kn: *const u8 = read(c, o.cgroup_kn)?;
        let id: u64 = read(kn, o.kernfs_node_id)?;
        if let Some(agent) = AGENT_CGROUPS.get_ptr(&id) {
            // SAFETY: map value pointer from a successful lookup.
            vwrite(
                &mut sc.env_state.cgroup_agent,
                u64::from(unsafe { *agent }) + 1,
            );
            vwrite(&mut sc.env_state.cgroup_id, id);
            break;
        }
        c = read(c, o.cgroup_parent)?;
        level += 1;
    }
    let agent = vread(&sc.env_state.cgroup_agent);
    Ok((agent != 0).then(|| ((agent - 1) as u32, vread(&sc.env_state.cgroup_id))))
}

/// Find the agent installed at the executable's file, or at a directory above it
/// ([`AGENT_PATHS`]); `matched` gets the file's name. Fails open (counted) on a read error.
#[inline(always)]
fn match_path(bprm: *const u8, matched: &mut [u8; NAME_LEN]) -> Option<u32> {
    match walk_path(bprm, matched) {
        Ok(found) => found,
        Err(_) => {
            count(Counter::ProbeErrors);
            None
        }
    }
}

#[inline(always)]
fn walk_path(bprm: *const u8, matched: &mut [u8; NAME_LEN]) -> Result<Option<u32>, i32> {
    let o = offsets();
    let fo = file_offsets();
    if o.valid == 0 || fo.valid == 0 || o.bprm_file == 0 {
        return Err(-1);
    }
    let file: *const u8 = read(bprm, o.bprm_file)?;
    let dentry: *const u8 = read(file, o.file_dentry)?;
    let inode: *const u8 = read(dentry, fo.dentry_inode)?;
    let sb: *const u8 = read(inode, fo.inode_sb)?;
    let dev: u32 = read(sb, fo.sb_dev)?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run.
    let sc = unsafe { &mut *scratch };
    // The match goes through scratch memory, not out of the loop: one verifier state for
    // the rest of the program instead of one per depth.
    vwrite(&mut sc.env_state.path_agent, 0);
    let mut d = dentry;
    let mut depth = 0u32;
    while depth <= PATH_WALK_MAX {
        let inode: *const u8 = read(d, fo.dentry_inode)?;
        if inode.is_null() {
            break;
        }
        let ino: u64 = read(inode, fo.inode_ino)?;
        if let Some(p) = AGENT_PATHS.get_ptr(&FileKey::new(dev, ino)) {
            // SAFETY: map value pointer from a successful lookup.
            let p = unsafe { *p };
            if depth <= p.max_depth {
                vwrite(&mut sc.env_state.path_agent, u64::from(p.agent_id) + 1);
                break;
            }
        }
        let parent: *const u8 = read(d, fo.dentry_parent)?;
        // The root of a filesystem is its own parent.
        if parent.is_null() || parent == d {
            break;
        }
        d = parent;
        depth += 1;
    }
    let agent = vread(&sc.env_state.path_agent);
    if agent == 0 {
        return Ok(None);
    }
    if let Ok(name) = read::<*const u8>(dentry, fo.dentry_name) {
        // SAFETY: the helper checks the kernel address and bounds the copy by the buffer.
        unsafe {
            generated::bpf_probe_read_kernel_str(
                matched.as_mut_ptr().cast(),
                NAME_LEN as u32,
                name as *const _,
            )
        };
    }
    Ok(Some((agent - 1) as u32))
}

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

/// Find an environment marker in the new image's environment: each variable's first
/// [`ENV_KEY_LEN`] bytes are looked up in [`AGENT_ENV`] (longest prefix wins). Bounded by
/// [`ENV_SCAN_MAX_VARS`] and [`ENV_SCAN_MAX_BYTES`]; a scan stopped by a bound is counted
/// ([`Counter::EnvScanTruncated`]) and finds nothing past it (fails open).
#[inline(always)]
fn match_env(matched: &mut [u8; NAME_LEN]) -> Result<Option<u32>, i32> {
    let Some(settings) = RECOGNITION.get_ptr(0) else {
        return Ok(None);
    };
    // SAFETY: map value pointer from a successful lookup.
    let settings = unsafe { &*settings };
    if settings.env_markers == 0 {
        return Ok(None);
    }
    let o: KernelOffsets = offsets();
    if o.valid == 0 || o.mm_env_start == 0 {
        return Err(-1);
    }
    let (start, end) = Task::current().env(&o)?;
    let scratch = SCRATCH.get_ptr_mut(0).ok_or(-1)?;
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run.
    let sc = unsafe { &mut *scratch };
    let limit = core::cmp::min(end, start.saturating_add(ENV_SCAN_MAX_BYTES));
    vwrite(&mut sc.env_state.ptr, start);
    vwrite(&mut sc.env_state.vars, 0);
    vwrite(&mut sc.env_state.rest, 0);
    vwrite(&mut sc.env_state.agent, 0);
    vwrite(&mut sc.env_state.limit, limit);
    // bpf_loop: the verifier checks the callback once, where a bounded loop of this many
    // turns cost a quarter of a second of verification at every start (more on 6.1).
    // SAFETY: `env_turn` has the callback signature; it takes no context.
    unsafe {
        generated::bpf_loop(
            ENV_READS,
            env_turn as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    let agent = vread(&sc.env_state.agent);
    if agent != 0 {
        let mut k = 0;
        while k < NAME_LEN {
            matched[k] = sc.env.data.bytes[k];
            k += 1;
        }
        return Ok(Some((agent - 1) as u32));
    }
    let ptr = vread(&sc.env_state.ptr);
    if ptr < end && (ptr >= limit || vread(&sc.env_state.vars) >= u64::from(ENV_SCAN_MAX_VARS)) {
        count(Counter::EnvScanTruncated);
    }
    Ok(None)
}

/// One turn of the environment scan's `bpf_loop`: 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn env_turn(_index: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    let Some(settings) = RECOGNITION.get_ptr(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run; the
    // settings are a map value from a successful lookup.
    let (sc, settings) = unsafe { (&mut *scratch, &*settings) };
    let limit = vread(&sc.env_state.limit);
    i64::from(!env_step(sc, limit, settings))
}

/// The filter in front of the trie: false when no marker starts with the variable's first 4
/// bytes (`n` counts the variable's bytes read, NUL included).
#[inline(always)]
fn could_be_marker(sc: &Scratch, n: u32, settings: &Recognition) -> bool {
    if settings.env_unfiltered != 0 || n < 5 {
        return true;
    }
    let b = &sc.env.data.bytes;
    let bit = env_filter_bit(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
    let word = settings.env_first4[((bit / 64) & (ENV_FILTER_BITS as u32 / 64 - 1)) as usize];
    word & (1 << (bit % 64)) != 0
}

/// One read of the environment scan. Returns false when the scan is over: a match, the end
/// of the block or of the bounds, or a read that failed.
#[inline(always)]
fn env_step(sc: &mut Scratch, limit: u64, settings: &Recognition) -> bool {
    let ptr = vread(&sc.env_state.ptr);
    if ptr >= limit || vread(&sc.env_state.vars) >= u64::from(ENV_SCAN_MAX_VARS) {
        return false;
    }
    if vread(&sc.env_state.rest) != 0 {
        // The tail of a long variable: only its end matters.
        // SAFETY: the helper checks the user address and bounds the copy by the buffer.
        let n = unsafe {
            generated::bpf_probe_read_user_str(
                sc.args.as_mut_ptr().cast(),
                ARGS_LEN as u32,
                ptr as *const _,
            )
        };
        if n <= 0 {
            return false;
        }
        if n as usize == ARGS_LEN {
            vwrite(&mut sc.env_state.ptr, ptr + ARGS_LEN as u64 - 1);
        } else {
            vwrite(&mut sc.env_state.ptr, ptr + n as u64);
            vwrite(&mut sc.env_state.rest, 0);
            let vars = vread(&sc.env_state.vars) + 1;
            vwrite(&mut sc.env_state.vars, vars);
        }
        return true;
    }
    // SAFETY: as above; the key holds ENV_KEY_LEN bytes.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            sc.env.data.bytes.as_mut_ptr().cast(),
            ENV_KEY_LEN as u32,
            ptr as *const _,
        )
    };
    if n <= 0 {
        return false;
    }
    let n = (n as u32) & (ENV_KEY_LEN as u32 * 2 - 1);
    if could_be_marker(sc, n, settings) {
        sc.env.prefix_len = n * 8;
        if let Some(id) = AGENT_ENV.get(&sc.env) {
            vwrite(&mut sc.env_state.agent, u64::from(*id) + 1);
            return false;
        }
    }
    if n as usize == ENV_KEY_LEN {
        // Cut at the key's length (or exactly that long): read on to its end.
        vwrite(&mut sc.env_state.ptr, ptr + ENV_KEY_LEN as u64 - 1);
        vwrite(&mut sc.env_state.rest, 1);
    } else {
        vwrite(&mut sc.env_state.ptr, ptr + u64::from(n));
        let vars = vread(&sc.env_state.vars) + 1;
        vwrite(&mut sc.env_state.vars, vars);
    }
    true
}

/// Find the agent an interpreter runs from its arguments (`node …/claude-code/cli.js`,
/// `python3 -m aider`), following `guard_common::agent::{script_arg, script_candidates}`.
///
/// Loop state lives in the per-CPU scratch value (volatile accesses), not in registers, so
/// that the verifier sees the same register state at every loop head and prunes: a
/// byte-by-byte scan with data-dependent state in registers exceeds its complexity limit.
#[inline(always)]
fn match_script(matched: &mut [u8; NAME_LEN]) -> Result<Option<(u32, u32)>, i32> {
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
    if let Some(agent) = match_script_path(sc, base) {
        return Ok(Some((agent, recognised::PATH)));
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
    Ok((found != 0).then(|| (vread(&sc.state.agent) as u32, recognised::SCRIPT)))
}

/// The agent installed where an interpreter's script is, by the script's absolute path as
/// written (an `agents[].paths` directory or file; [`AGENT_SCRIPT_PATHS`]).
#[inline(always)]
fn match_script_path(sc: &mut Scratch, base: u64) -> Option<u32> {
    let settings = RECOGNITION.get_ptr(0)?;
    // SAFETY: map value pointer from a successful lookup.
    if unsafe { (*settings).script_paths } == 0 {
        return None;
    }
    // SAFETY: the helper checks the user address and bounds the copy by the key's data.
    let n = unsafe {
        generated::bpf_probe_read_user_str(
            sc.script_path.data.bytes.as_mut_ptr().cast(),
            SCRIPT_PATH_LEN as u32,
            base as *const _,
        )
    };
    if n <= 1 || sc.script_path.data.bytes[0] != b'/' {
        return None;
    }
    sc.script_path.prefix_len = ((n as u32) & (SCRIPT_PATH_LEN as u32 * 2 - 1)) * 8;
    AGENT_SCRIPT_PATHS.get(&sc.script_path).copied()
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
    // Through memory and masked after: the compiler cannot drop the mask (it would know the
    // bound) and then spill the size where an older verifier loses it.
    vwrite(
        &mut sc.state.size,
        core::cmp::min(end - start, (NAME_LEN - 1) as u64),
    );
    sc.key = NameKey {
        bytes: [0; NAME_LEN],
    };
    let size = (vread(&sc.state.size) as u32) & (NAME_LEN as u32 - 1);
    // SAFETY: the helper checks the user address; size is at most NAME_LEN - 1.
    let ret = unsafe {
        generated::bpf_probe_read_user(
            sc.key.bytes.as_mut_ptr().cast(),
            size,
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
