//! Recognition by an environment marker the agent set for the commands it runs
//! (`agents[].env`): a bounded scan of the new image's environment, one variable a turn of a
//! `bpf_loop`.

use aya_ebpf::helpers::generated;
use guard_common::{
    agent::{
        ENV_FILTER_BITS, ENV_KEY_LEN, ENV_SCAN_MAX_BYTES, ENV_SCAN_MAX_VARS, NAME_LEN, Recognition,
        env_filter_bit,
    },
    event::Counter,
    offsets::KernelOffsets,
};

use super::{vread, vwrite};
use crate::{
    kernel::Task,
    maps::{AGENT_ENV, ARGS_LEN, RECOGNITION, SCRATCH, Scratch, count, offsets},
};

/// Reads of the environment scan: one per variable, one more per [`ARGS_LEN`] - 1 bytes of
/// a long one. Enough for [`ENV_SCAN_MAX_VARS`] variables in [`ENV_SCAN_MAX_BYTES`].
const ENV_READS: u32 = ENV_SCAN_MAX_VARS + (ENV_SCAN_MAX_BYTES / (ARGS_LEN as u64 - 1)) as u32 + 1;

/// Find an environment marker in the new image's environment: each variable's first
/// [`ENV_KEY_LEN`] bytes are looked up in [`AGENT_ENV`] (longest prefix wins). Bounded by
/// [`ENV_SCAN_MAX_VARS`] and [`ENV_SCAN_MAX_BYTES`]; a scan stopped by a bound is counted
/// ([`Counter::EnvScanTruncated`]) and finds nothing past it (fails open).
#[inline(always)]
pub(super) fn match_env(matched: &mut [u8; NAME_LEN]) -> Result<Option<u32>, i32> {
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
