//! Recognition of the script an interpreter runs: by name (`agents[].scripts`) and by its
//! absolute path (`agents[].paths`).

use aya_ebpf::helpers::generated;
use guard_common::{
    agent::{NAME_LEN, NameKey, SCRIPT_PATH_LEN, recognised},
    offsets::KernelOffsets,
};

use super::{vread, vwrite};
use crate::{
    kernel::Task,
    maps::{AGENT_SCRIPT_PATHS, AGENT_SCRIPTS, ARGS_LEN, RECOGNITION, SCRATCH, Scratch, offsets},
};

const MASK: usize = ARGS_LEN - 1;
/// How many arguments after argv[0] are examined to find an interpreter's script.
const MAX_ARGS: u32 = 6;
/// How many path components of a script are looked up.
const MAX_COMPONENTS: u32 = 8;

/// Find the agent an interpreter runs from its arguments (`node …/claude-code/cli.js`,
/// `python3 -m aider`), following `guard_common::agent::{script_arg, script_candidates}`.
///
/// Loop state lives in the per-CPU scratch value (volatile accesses), where the `bpf_loop`
/// callback finds it.
#[inline(always)]
pub(super) fn match_script(matched: &mut [u8; NAME_LEN]) -> Result<Option<(u32, u32)>, i32> {
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
    // stem (`cli.js` → `cli`) and first dotted part (`aider.main` → `aider`). A `bpf_loop`:
    // the verifier checks one turn, where a bounded loop of this many turns made this the
    // costliest program to load (190k verified instructions, most of every start's time).
    sc.state.end = len as u64;
    sc.state.comp = 0;
    sc.state.first_dot = 0;
    sc.state.last_dot = 0;
    sc.state.found = 0;
    vwrite(&mut sc.state.len, len as u64);
    vwrite(&mut sc.state.base, base);
    // SAFETY: `script_turn` has the callback signature; it takes no context.
    unsafe {
        generated::bpf_loop(
            MASK as u32,
            script_turn as *mut core::ffi::c_void,
            core::ptr::null_mut(),
            0,
        )
    };
    if vread(&sc.state.found) == 0 && vread(&sc.state.comp) < MAX_COMPONENTS as u64 {
        component(sc, base, 0);
    }
    if vread(&sc.state.found) == 0 {
        return Ok(None);
    }
    // The key last looked up is the one that matched: the scan stops there.
    *matched = sc.key.bytes;
    Ok(Some((vread(&sc.state.agent) as u32, recognised::SCRIPT)))
}

/// One turn of the backward scan's `bpf_loop` (byte `k` from the end): 0 to go on, 1 to stop.
#[inline(never)]
extern "C" fn script_turn(k: u32, _ctx: *mut core::ffi::c_void) -> i64 {
    let Some(scratch) = SCRATCH.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: per-CPU scratch value, exclusive on this CPU for the program's run.
    let sc = unsafe { &mut *scratch };
    i64::from(!script_step(sc, k as usize))
}

/// Byte `k` from the end of the script argument: a dot of the basename is remembered, a
/// slash ends a component, which is looked up. False when the scan is over.
#[inline(always)]
fn script_step(sc: &mut Scratch, k: usize) -> bool {
    let len = vread(&sc.state.len) as usize;
    if k >= len {
        return false;
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
        let base = vread(&sc.state.base);
        if component(sc, base, (i + 1) as u64) {
            return false;
        }
        vwrite(&mut sc.state.end, i as u64);
        let comp = vread(&sc.state.comp) + 1;
        vwrite(&mut sc.state.comp, comp);
        if comp >= MAX_COMPONENTS as u64 {
            return false;
        }
    }
    true
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

/// Look up the component `[start, state.end)` of the script at user address `base`; for the
/// basename also its stem and first dotted part. Records a match in the scratch state.
#[inline(always)]
fn component(sc: &mut Scratch, base: u64, start: u64) -> bool {
    let end = vread(&sc.state.end);
    if lookup_user(sc, base, start, end) {
        return true;
    }
    if vread(&sc.state.comp) == 0 {
        let last = vread(&sc.state.last_dot);
        let first = vread(&sc.state.first_dot);
        if last > start && lookup_user(sc, base, start, last) {
            return true;
        }
        if first > start && first != last && lookup_user(sc, base, start, first) {
            return true;
        }
    }
    false
}

#[inline(always)]
fn lookup_user(sc: &mut Scratch, base: u64, start: u64, end: u64) -> bool {
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
    // SAFETY: map value pointer from a successful lookup.
    vwrite(&mut sc.state.agent, u64::from(unsafe { *id }));
    vwrite(&mut sc.state.found, 1);
    true
}
