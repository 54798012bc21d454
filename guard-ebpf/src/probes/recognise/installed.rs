//! Recognition by where an agent is: its executable's file or a directory above it
//! (`agents[].paths`), and its cgroup (`agents[].cgroups`).

use aya_ebpf::helpers::generated;
use guard_common::{
    agent::{CGROUP_WALK_MAX, NAME_LEN, PATH_WALK_MAX},
    event::Counter,
    file::FileKey,
};

use super::{read, vread, vwrite};
use crate::maps::{AGENT_CGROUPS, AGENT_PATHS, RECOGNITION, SCRATCH, count, file_offsets, offsets};

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
pub(super) fn match_path(bprm: *const u8, matched: &mut [u8; NAME_LEN]) -> Option<u32> {
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
