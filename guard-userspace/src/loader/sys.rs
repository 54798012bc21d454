//! The one `bpf(2)` wrapper, on aya-obj's `bpf_attr`, and the few commands aya 0.14 does not
//! offer for our use: link creation for attach types it lacks, pinning a raw descriptor, and
//! opening a pin.

use std::{
    ffi::CString,
    fs, io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

pub use aya_obj::generated::{bpf_attach_type, bpf_attr, bpf_cmd, bpf_insn, bpf_prog_type};

/// A zeroed `union bpf_attr`: all-zero is valid for every member and is what the kernel
/// expects in each field a command does not use.
pub fn zeroed_attr() -> bpf_attr {
    // SAFETY: bpf_attr is a union of plain integer structs.
    unsafe { std::mem::zeroed() }
}

/// `bpf(cmd, attr)`; the kernel's return value (a new descriptor for the commands that make
/// one, else 0) or the errno.
pub fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<i64> {
    let size = size_of::<bpf_attr>();
    // SAFETY: `attr` is an initialised bpf_attr of `size` bytes, exclusively borrowed for the
    // call; the pointers in it reference buffers that the caller keeps alive across it.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd as libc::c_long, attr as *mut _, size) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(ret)
}

/// [`sys_bpf`] for the commands that return a new descriptor.
pub fn sys_bpf_fd(cmd: bpf_cmd, attr: &mut bpf_attr) -> io::Result<OwnedFd> {
    let fd = sys_bpf(cmd, attr)?;
    let fd = i32::try_from(fd).map_err(|_| io::Error::other("descriptor out of range"))?;
    // SAFETY: the command returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `BPF_LINK_CREATE` attaching `prog` to the cgroup `target`. Flags are 0: a cgroup link is
/// always multi-program, and the kernel refuses any flag here.
pub fn link_create(
    prog: BorrowedFd<'_>,
    target: BorrowedFd<'_>,
    attach: bpf_attach_type,
) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: BPF_LINK_CREATE reads this member; it holds only integers.
    let link = unsafe { &mut attr.link_create };
    link.__bindgen_anon_1.prog_fd = prog.as_raw_fd() as u32;
    link.__bindgen_anon_2.target_fd = target.as_raw_fd() as u32;
    link.attach_type = attach as u32;
    sys_bpf_fd(bpf_cmd::BPF_LINK_CREATE, &mut attr)
}

/// `BPF_RAW_TRACEPOINT_OPEN` without a name: the link of a tracing program (`fentry`,
/// `fexit`, `fmod_ret`) to the kernel function it was loaded for.
pub fn tracing_link(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = zeroed_attr();
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN reads this member; it holds only integers (name 0).
    let open = unsafe { &mut attr.raw_tracepoint };
    open.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf_fd(bpf_cmd::BPF_RAW_TRACEPOINT_OPEN, &mut attr)
}

/// `BPF_OBJ_PIN`: pin the object behind `fd` at `path`.
pub fn obj_pin(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
    let c = c_path(path)?;
    let mut attr = zeroed_attr();
    // SAFETY: BPF_OBJ_PIN reads this member; `c` outlives the call.
    let pin = unsafe { &mut attr.__bindgen_anon_4 };
    pin.pathname = c.as_ptr() as u64;
    pin.bpf_fd = fd.as_raw_fd() as u32;
    sys_bpf(bpf_cmd::BPF_OBJ_PIN, &mut attr).map(drop)
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
pub fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let c = c_path(path)?;
    let mut attr = zeroed_attr();
    // SAFETY: BPF_OBJ_GET reads this member; `c` outlives the call.
    let get = unsafe { &mut attr.__bindgen_anon_4 };
    get.pathname = c.as_ptr() as u64;
    sys_bpf_fd(bpf_cmd::BPF_OBJ_GET, &mut attr)
}

/// A link to pin: aya's, or a descriptor from [`link_create`].
pub enum Link {
    Aya(aya::programs::links::FdLink),
    Raw(OwnedFd),
}

/// Pin `link` at `path`, replacing an older pin atomically: pinned beside it first (bpffs
/// refuses names with a dot, hence `NAME_new`), then renamed over it, so the old link is
/// detached only after the new one is attached and pinned.
pub fn pin_replacing(link: Link, path: &Path) -> io::Result<()> {
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    let _ = fs::remove_file(&tmp);
    match link {
        Link::Aya(link) => drop(link.pin(&tmp).map_err(io::Error::other)?),
        Link::Raw(fd) => obj_pin(fd.as_fd(), &tmp)?,
    }
    fs::rename(&tmp, path)
}

/// The id of the program behind the link pinned at `path` (`BPF_OBJ_GET_INFO_BY_FD`).
pub fn link_program_id(path: &Path) -> io::Result<u32> {
    let link = obj_get(path)?;
    // SAFETY: bpf_link_info is plain integers and unions of them; all-zero is valid.
    let mut info: aya_obj::generated::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut attr = zeroed_attr();
    // SAFETY: BPF_OBJ_GET_INFO_BY_FD reads this member; `info` outlives the call and is as
    // large as `info_len` says.
    let get = unsafe { &mut attr.info };
    get.bpf_fd = link.as_raw_fd() as u32;
    get.info_len = size_of::<aya_obj::generated::bpf_link_info>() as u32;
    get.info = (&raw mut info) as u64;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)?;
    Ok(info.prog_id)
}
