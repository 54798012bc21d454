//! Recognition at exec: which agent, if any, a new image is. By its cgroup, its executable's
//! name (`comm`), where its executable is installed, the script an interpreter runs, or an
//! environment marker its parent set for it, in that order. The caller ([`super::process`])
//! turns a match into a root's tag.

mod env;
mod installed;
mod script;

use guard_common::agent::{NAME_LEN, NameKey, recognised};

use crate::{
    kernel::Task,
    maps::{AGENT_EXES, INTERPRETERS, RECOGNITION, offsets},
};
use env::match_env;
pub use installed::cgroup_agent;
use installed::match_path;
use script::match_script;

/// The agent the current exec starts, why, and what matched (a script name, the start of an
/// environment variable, or the executable's file name).
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
    // A file an agent wrote: the script this exec runs, or the image itself.
    if let Some(agent_id) = super::taint::at_exec(bprm, &mut matched) {
        return Ok(Some(Match {
            agent_id,
            reason: recognised::DEFERRED,
            matched,
            cgroup: 0,
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

#[inline(always)]
pub(super) fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

#[inline(always)]
pub(super) fn vread(v: &u64) -> u64 {
    // SAFETY: a valid reference; volatile keeps the value in memory for the verifier.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
pub(super) fn vwrite(v: &mut u64, x: u64) {
    // SAFETY: a valid reference.
    unsafe { core::ptr::write_volatile(v, x) }
}
