//! Loading the programs aya 0.14 cannot: the unix socket programs (`connect_unix`,
//! `sendmsg_unix`, Linux ≥ 6.7: aya has no `BPF_CGROUP_UNIX_CONNECT`/`BPF_CGROUP_UNIX_SENDMSG`
//! attach type) and modify-return (`fmod_ret`) programs, which it has no program type for.
//!
//! The programs are compiled with the others, in sections aya-obj parses (`cgroup/connect4`,
//! `fentry/…`; aya never loads them). Here the object is parsed again with aya-obj, its map
//! references are relocated against the file descriptors of the maps aya already created for
//! the loaded [`Ebpf`] (the same maps, globals included, so both sets of programs share
//! state), its calls are linked, and the result is loaded with `BPF_PROG_LOAD` and the
//! program type and expected attach type it is really for. The loader attaches and pins it
//! like every other link.

use std::{
    collections::HashSet,
    os::fd::{AsFd, AsRawFd, OwnedFd},
};

use aya::{Ebpf, maps::Map};
use aya_obj::Object;

use super::sys::{bpf_attach_type, bpf_cmd, bpf_insn, bpf_prog_type, sys_bpf_fd, zeroed_attr};

/// Verifier log size when a load fails (the log is retried with this buffer).
const LOG_SIZE: usize = 1 << 20;

/// The object relocated against `ebpf`'s maps, ready to load programs from.
pub fn relocated(object: &[u8], ebpf: &Ebpf) -> Result<Object, String> {
    let mut obj = Object::parse(object).map_err(|e| e.to_string())?;
    let maps: Vec<(String, i32)> = ebpf
        .maps()
        .map(|(name, map)| map_fd(map).map(|fd| (name.to_owned(), fd)))
        .collect::<Result<_, _>>()?;
    let text_sections: HashSet<usize> = obj.functions.keys().map(|(s, _)| *s).collect();
    let obj_maps: Vec<(String, aya_obj::Map)> = obj
        .maps
        .iter()
        .map(|(n, m)| (n.clone(), m.clone()))
        .collect();
    let mut pairs = Vec::new();
    for (name, map) in &obj_maps {
        // Every map the object defines was created by aya (globals included); one missing
        // here means it was taken out of the Ebpf before this ran.
        let fd = maps
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, fd)| *fd)
            .ok_or_else(|| format!("map {name} is not loaded"))?;
        pairs.push((name.as_str(), fd, map));
    }
    obj.relocate_maps(pairs.into_iter(), &text_sections)
        .map_err(|e| e.to_string())?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| e.to_string())?;
    Ok(obj)
}

/// What a program loaded by hand is for.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// A cgroup `sock_addr` program with this attach type.
    Cgroup(bpf_attach_type),
    /// `fmod_ret` of the kernel function with this BTF id.
    ModifyReturn(u32),
}

/// Load program `name` of the relocated object for `target`.
/// `Err((errno, verifier log tail))`.
pub fn load(obj: &Object, name: &'static str, target: Target) -> Result<OwnedFd, (i32, String)> {
    let prog = obj
        .programs
        .get(name)
        .ok_or((libc::ENOENT, format!("program {name} is missing")))?;
    let insns = &obj.functions[&prog.function_key()].instructions;
    prog_load(name, insns, target)
}

/// The descriptor of one of aya's maps.
fn map_fd(map: &Map) -> Result<i32, String> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::LruHashMap(d)
        | Map::SkStorage(d)
        | Map::Unsupported(d) => d,
        other => return Err(format!("unexpected map kind {other:?}")),
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

fn prog_load(
    name: &'static str,
    insns: &[bpf_insn],
    target: Target,
) -> Result<OwnedFd, (i32, String)> {
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = zeroed_attr();
        // SAFETY: BPF_PROG_LOAD reads this union member; the instructions, the license, the
        // name and the log outlive the syscall.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        match target {
            Target::Cgroup(attach) => {
                load.prog_type = bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32;
                load.expected_attach_type = attach as u32;
            }
            Target::ModifyReturn(btf_id) => {
                load.prog_type = bpf_prog_type::BPF_PROG_TYPE_TRACING as u32;
                load.expected_attach_type = bpf_attach_type::BPF_MODIFY_RETURN as u32;
                // A vmlinux function: no module BTF descriptor.
                load.attach_btf_id = btf_id;
            }
        }
        load.insns = insns.as_ptr() as u64;
        load.insn_cnt = u32::try_from(insns.len()).unwrap_or(u32::MAX);
        load.license = c"GPL".as_ptr() as u64;
        // The kernel keeps 15 bytes of the name.
        for (dst, src) in load.prog_name.iter_mut().zip(name.bytes().take(15)) {
            *dst = src as libc::c_char;
        }
        if let Some(log) = log {
            load.log_buf = log.as_mut_ptr() as u64;
            load.log_size = u32::try_from(log.len()).unwrap_or(u32::MAX);
            load.log_level = 1;
        }
        sys_bpf_fd(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(e) => {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            // Refused before verification (a kernel without trampolines says EPERM): a second
            // load for the log would say nothing more, and costs a verification.
            if errno != libc::EACCES && errno != libc::EINVAL {
                return Err((errno, String::new()));
            }
            let mut log = vec![0u8; LOG_SIZE];
            let _ = attempt(Some(&mut log));
            let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
            let text = String::from_utf8_lossy(&log[..end]);
            // The end of the log says why.
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            Err((errno, tail.into_iter().rev().collect::<Vec<_>>().join("\n")))
        }
    }
}
