//! Loading the unix socket programs (`connect_unix`, `sendmsg_unix`, Linux ≥ 6.7), which aya
//! 0.14 cannot: it has no `BPF_CGROUP_UNIX_CONNECT`/`BPF_CGROUP_UNIX_SENDMSG` attach type.
//!
//! The programs are compiled with the others, in a `cgroup/connect4` section that aya-obj
//! parses (aya never loads them). Here the object is parsed again with aya-obj, its map
//! references are relocated against the file descriptors of the maps aya already created for
//! the loaded [`Ebpf`] (the same maps, globals included, so both sets of programs share
//! state), its calls are linked, and the result is loaded with `BPF_PROG_LOAD` and the unix
//! expected attach type, then attached to the cgroup with `BPF_LINK_CREATE` and pinned like
//! every other link.

use std::{
    collections::HashSet,
    ffi::CString,
    fs,
    os::{
        fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

use aya::{Ebpf, maps::Map};
use aya_obj::{
    Object,
    generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type},
};

use super::NetError;

/// Verifier log size when a load fails (the log is retried with this buffer).
const LOG_SIZE: usize = 1 << 20;

/// A loaded unix program: its name and attach type.
pub const PROGRAMS: [(&str, bpf_attach_type); 2] = [
    (
        guard_common::maps::programs::CONNECT_UNIX,
        bpf_attach_type::BPF_CGROUP_UNIX_CONNECT,
    ),
    (
        guard_common::maps::programs::SENDMSG_UNIX,
        bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG,
    ),
];

/// Load both unix programs and attach them to `cgroup`; returns each program's link.
pub fn load_and_attach(
    object: &[u8],
    ebpf: &Ebpf,
    cgroup: &impl AsFd,
) -> Result<Vec<(&'static str, OwnedFd)>, NetError> {
    let mut obj = Object::parse(object).map_err(|e| NetError::UnixObject(e.to_string()))?;
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
            .ok_or_else(|| NetError::UnixObject(format!("map {name} is not loaded")))?;
        pairs.push((name.as_str(), fd, map));
    }
    obj.relocate_maps(pairs.into_iter(), &text_sections)
        .map_err(|e| NetError::UnixObject(e.to_string()))?;
    obj.relocate_calls(&text_sections)
        .map_err(|e| NetError::UnixObject(e.to_string()))?;
    let mut links = Vec::new();
    for (name, attach) in PROGRAMS {
        let prog = obj
            .programs
            .get(name)
            .ok_or_else(|| NetError::UnixObject(format!("program {name} is missing")))?;
        let insns = &obj.functions[&prog.function_key()].instructions;
        let prog_fd = prog_load(name, insns, attach)?;
        let link = link_create(&prog_fd, cgroup, attach)
            .map_err(|errno| NetError::UnixAttach { name, errno })?;
        links.push((name, link));
    }
    Ok(links)
}

/// The descriptor of one of aya's maps.
fn map_fd(map: &Map) -> Result<i32, NetError> {
    let data = match map {
        Map::Array(d)
        | Map::HashMap(d)
        | Map::LpmTrie(d)
        | Map::PerCpuArray(d)
        | Map::PerCpuHashMap(d)
        | Map::RingBuf(d)
        | Map::LruHashMap(d)
        | Map::Unsupported(d) => d,
        other => {
            return Err(NetError::UnixObject(format!(
                "unexpected map kind {other:?}"
            )));
        }
    };
    Ok(data.fd().as_fd().as_raw_fd())
}

fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integer structs, for which all-zero is valid and is
    // what the kernel expects in every field a command does not use.
    unsafe { std::mem::zeroed() }
}

/// bpf(2) for the commands that return a new file descriptor; Err(errno).
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> Result<OwnedFd, i32> {
    let size = size_of::<bpf_attr>();
    // SAFETY: `attr` is an initialised bpf_attr of `size` bytes, exclusively borrowed for the
    // call; the pointers in it reference buffers that the caller keeps alive across it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut _, size) };
    match i32::try_from(ret) {
        // SAFETY: these commands return a new descriptor that nothing else owns.
        Ok(fd) if fd >= 0 => Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
        _ => Err(nix::errno::Errno::last_raw()),
    }
}

fn prog_load(
    name: &'static str,
    insns: &[bpf_insn],
    attach: bpf_attach_type,
) -> Result<OwnedFd, NetError> {
    let attempt = |log: Option<&mut Vec<u8>>| {
        let mut attr = zeroed_attr();
        // SAFETY: BPF_PROG_LOAD reads this union member; the instructions, the license, the
        // name and the log outlive the syscall.
        let load = unsafe { &mut attr.__bindgen_anon_3 };
        load.prog_type = bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR as u32;
        load.expected_attach_type = attach as u32;
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
        sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr)
    };
    match attempt(None) {
        Ok(fd) => Ok(fd),
        Err(errno) => {
            let mut log = vec![0u8; LOG_SIZE];
            let _ = attempt(Some(&mut log));
            let text = String::from_utf8_lossy(&log);
            let text = text.trim_end_matches('\0');
            // The end of the log says why.
            let tail: Vec<&str> = text.lines().rev().take(30).collect();
            let log = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
            Err(NetError::UnixLoad { name, errno, log })
        }
    }
}

fn link_create(
    prog: &OwnedFd,
    cgroup: &impl AsFd,
    attach: bpf_attach_type,
) -> Result<OwnedFd, i32> {
    let mut attr = zeroed_attr();
    // SAFETY: BPF_LINK_CREATE reads this member; it holds only integers.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.__bindgen_anon_2.target_fd = cgroup.as_fd().as_raw_fd() as u32;
    link.attach_type = attach as u32;
    // flags 0: a cgroup link is always "multi"; the kernel refuses any flag here.
    sys_bpf(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// Pin `link` at `path`, replacing an older pin atomically (as `kernel::replace_link_pin`).
pub fn replace_pin(link: &OwnedFd, path: &Path) -> Result<(), NetError> {
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    let _ = fs::remove_file(&tmp);
    let err = |errno| NetError::Pin {
        path: path.to_path_buf(),
        errno,
    };
    let c_tmp = CString::new(tmp.as_os_str().as_bytes()).map_err(|_| err(libc::EINVAL))?;
    let mut attr = zeroed_attr();
    // SAFETY: BPF_OBJ_PIN reads this member; `c_tmp` outlives the syscall.
    let pin = unsafe { &mut attr.__bindgen_anon_4 };
    pin.pathname = c_tmp.as_ptr() as u64;
    pin.bpf_fd = link.as_raw_fd() as u32;
    let size = size_of::<bpf_attr>();
    // SAFETY: as in `sys_bpf`; BPF_OBJ_PIN returns 0 or -1.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            bpf_cmd::BPF_OBJ_PIN as libc::c_long,
            &mut attr as *mut _,
            size,
        )
    };
    if ret != 0 {
        return Err(err(nix::errno::Errno::last_raw()));
    }
    fs::rename(&tmp, path).map_err(|e| err(e.raw_os_error().unwrap_or(libc::EIO)))
}
