//! Kernel capability probe behind `guard status` and the daemon's start-up.
//!
//! Every feature is probed by trying it (load a trivial program, create a map, mount a
//! filesystem), never by reading the kernel config. Probes are independent and never panic: a
//! failure becomes a [`FeatureStatus::Missing`] row (the kernel said no) or a
//! [`FeatureStatus::Error`] row (the probe could not tell), with the errno in the detail.
//! Nothing is left behind: programs, links, maps and fanotify groups are closed, and filesystems
//! mounted only to look are unmounted and their temporary directories removed.

use std::{
    ffi::CString,
    fmt, fs, io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

use aya::{
    maps::MapType,
    programs::{ProgramError, ProgramType},
    sys::{BpfHelper, SyscallError, is_helper_supported, is_map_supported},
};
use aya_obj::{
    btf::{Btf, BtfKind, BtfType, Int, IntEncoding},
    generated::{BPF_F_NO_PREALLOC, bpf_attach_type as Attach, bpf_attr, bpf_cmd, bpf_prog_type},
};
use nix::{
    errno::Errno,
    mount::{MntFlags, MsFlags, mount, umount2},
    sys::statfs::{BPF_FS_MAGIC, statfs},
    unistd::{geteuid, mkdtemp, mkstemp},
};
use serde::Serialize;

/// Features guard cannot run without (feature names are a stable contract).
const REQUIRED: &str = "btf bpffs cgroup2 ring-buffer tp-btf cgroup-sock-addr lpm-trie \
                        fanotify-perm task-storage";
/// Kernel-internal `ENOTSUPP`, which leaks to user space from BPF trampoline code.
const ENOTSUPP: i32 = 524;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FeatureStatus {
    Available,
    Missing,
    Error,
}

#[derive(Clone, Debug, Serialize)]
pub struct Feature {
    pub name: &'static str,
    pub status: FeatureStatus,
    pub detail: String,
    pub required: bool,
}

/// The enforcement tier: BPF LSM hooks, or the cgroup/tracepoint/fanotify fallback.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    BpfLsm,
    Fallback,
}

#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    pub features: Vec<Feature>,
    pub cgroup2: Option<PathBuf>,
    pub lsm_list: Option<Vec<String>>,
    pub kernel_release: String,
    pub tier: Tier,
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// A filesystem operation (mkdir, statfs, mount, read) on `path` failed.
    #[error("{op} {}: {}", .path.display(), errno_text(*.errno))]
    Path {
        op: &'static str,
        path: PathBuf,
        errno: i32,
    },
    /// A syscall failed; for program loads `log` is the verifier's last line, if any.
    #[error("{call}: {}{}", errno_name(*.errno), verifier_suffix(.log))]
    Syscall {
        call: &'static str,
        errno: i32,
        log: String,
    },
}

impl ProbeError {
    fn sys(call: &'static str, errno: i32) -> Self {
        let log = String::new();
        Self::Syscall { call, errno, log }
    }

    /// Missing when the kernel refused outright, Error when the probe itself could not tell.
    fn status(&self) -> FeatureStatus {
        let (Self::Path { errno, .. } | Self::Syscall { errno, .. }) = self;
        match *errno {
            libc::EINVAL | libc::E2BIG | libc::EOPNOTSUPP | libc::ENODEV | ENOTSUPP => {
                FeatureStatus::Missing
            }
            // With every capability, EPERM/EACCES is the kernel's (or its hardening's) answer.
            libc::EPERM | libc::EACCES if geteuid().is_root() => FeatureStatus::Missing,
            _ => FeatureStatus::Error,
        }
    }
}

/// Builds a [`ProbeError::Path`] from a nix or std error.
fn at_path<E: Into<io::Error>>(op: &'static str, path: &Path) -> impl FnOnce(E) -> ProbeError {
    let path = path.to_owned();
    move |e| {
        let errno = e.into().raw_os_error().unwrap_or(libc::EIO);
        ProbeError::Path { op, path, errno }
    }
}

fn verifier_suffix(log: &str) -> String {
    match log.is_empty() {
        true => String::new(),
        false => format!(" (verifier: {log})"),
    }
}

/// `EPERM`, `ENOTSUPP`, or `errno N` for values nix does not know.
fn errno_name(errno: i32) -> String {
    match (errno, Errno::from_raw(errno)) {
        (ENOTSUPP, _) => "ENOTSUPP".to_owned(),
        (_, Errno::UnknownErrno) => format!("errno {errno}"),
        (_, e) => format!("{e:?}"),
    }
}

fn errno_text(errno: i32) -> String {
    format!("{} ({})", errno_name(errno), Errno::from_raw(errno).desc())
}

impl Feature {
    fn new(name: &'static str, status: FeatureStatus, detail: impl Into<String>) -> Self {
        let required = REQUIRED.split_whitespace().any(|r| r == name);
        let detail = detail.into();
        Self {
            name,
            status,
            detail,
            required,
        }
    }

    fn ok(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, FeatureStatus::Available, detail)
    }

    fn missing(name: &'static str, detail: impl Into<String>) -> Self {
        Self::new(name, FeatureStatus::Missing, detail)
    }

    fn failed(name: &'static str, err: &ProbeError) -> Self {
        Self::new(name, err.status(), err.to_string())
    }

    fn usable(&self) -> bool {
        self.status == FeatureStatus::Available
    }
}

impl fmt::Display for FeatureStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Available => "available",
            Self::Missing => "missing",
            Self::Error => "error",
        })
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::BpfLsm => "bpf-lsm",
            Self::Fallback => "fallback",
        })
    }
}

/// Probes every feature. With `mount_missing`, mounts bpffs at `bpffs_root` if it is not one.
pub fn probe(bpffs_root: &Path, mount_missing: bool) -> Probe {
    let kernel_release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned());
    let btf = Btf::from_sys_fs();
    let btf_feature = match &btf {
        Ok(_) => Feature::ok("btf", "/sys/kernel/btf/vmlinux parsed"),
        Err(e) => Feature::missing("btf", format!("/sys/kernel/btf/vmlinux: {e}")),
    };
    let btf = btf.ok();
    let (securityfs, lsm_list) = probe_mountable("securityfs", read_lsm_list);
    let cgroup2 = find_cgroup2();
    let cgroup2_feature = match &cgroup2 {
        Some(path) => Feature::ok("cgroup2", format!("mounted at {}", path.display())),
        None => Feature::missing("cgroup2", "no cgroup2 mount in /proc/self/mountinfo"),
    };
    let features = vec![
        btf_feature,
        probe_bpffs(bpffs_root, mount_missing),
        securityfs,
        probe_mountable("tracefs", |_| Ok(())).0,
        cgroup2_feature,
        probe_map("ring-buffer", MapType::RingBuf),
        probe_task_storage(),
        probe_map("lpm-trie", MapType::LpmTrie),
        probe_tp_btf(btf.as_ref()),
        probe_sock_addr("cgroup-sock-addr"),
        probe_sock_addr("cgroup-sock-addr-unix"),
        probe_bpf_lsm(btf.as_ref(), lsm_list.as_deref()),
        probe_fanotify(),
        probe_send_signal(),
        probe_cgroup_send_signal(),
    ];
    let lsm = features.iter().find(|f| f.name == "bpf-lsm");
    let tier = match lsm.is_some_and(Feature::usable) {
        true => Tier::BpfLsm,
        false => Tier::Fallback,
    };
    Probe {
        features,
        cgroup2,
        lsm_list,
        kernel_release,
        tier,
    }
}

fn is_bpffs(path: &Path) -> Result<bool, ProbeError> {
    let fs = statfs(path).map_err(at_path("cannot statfs", path))?;
    Ok(fs.filesystem_type() == BPF_FS_MAGIC)
}

/// Makes `root` a bpffs: creates the directory and mounts one there unless it already is one.
/// Returns whether it mounted one now.
pub fn ensure_bpffs(root: &Path) -> Result<bool, ProbeError> {
    fs::create_dir_all(root).map_err(at_path("cannot create directory", root))?;
    if is_bpffs(root)? {
        return Ok(false);
    }
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("bpf"), root, Some("bpf"), flags, Some("mode=0700"))
        .map_err(at_path("cannot mount bpffs at", root))?;
    Ok(true)
}

pub use crate::paths::find_cgroup2;
use crate::paths::mount_point_of;

fn probe_bpffs(root: &Path, mount_missing: bool) -> Feature {
    let at = root.display();
    let mounted_now = match mount_missing {
        true => ensure_bpffs(root),
        false => is_bpffs(root).map(|yes| !yes),
    };
    match mounted_now {
        Ok(true) if mount_missing => Feature::ok("bpffs", format!("mounted by guard at {at}")),
        Ok(true) => Feature::missing("bpffs", format!("not mounted at {at}")),
        Ok(false) => Feature::ok("bpffs", format!("mounted at {at}")),
        Err(e) => Feature::failed("bpffs", &e),
    }
}

fn temp_template() -> PathBuf {
    std::env::temp_dir().join("guard-probe-XXXXXX")
}

/// A filesystem mounted on a fresh temporary directory; unmounted and removed on drop.
struct TempMount(PathBuf);

impl TempMount {
    fn new(fstype: &'static str) -> Result<Self, ProbeError> {
        let dir = mkdtemp(&temp_template()).map_err(at_path("mkdtemp", &temp_template()))?;
        let flags = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV;
        match mount(Some(fstype), &dir, Some(fstype), flags, None::<&str>) {
            Ok(()) => Ok(Self(dir)),
            Err(e) => {
                let err = at_path("cannot mount a test instance at", &dir)(e);
                let _ = fs::remove_dir(&dir);
                Err(err)
            }
        }
    }
}

impl Drop for TempMount {
    fn drop(&mut self) {
        let dir = self.0.display();
        if let Err(e) = umount2(&self.0, MntFlags::MNT_DETACH) {
            tracing::warn!(%dir, "probe could not unmount its test mount: {e}");
        }
        if let Err(e) = fs::remove_dir(&self.0) {
            tracing::warn!(%dir, "probe could not remove its temporary directory: {e}");
        }
    }
}

/// Whether `fstype` is mounted (and where) or mountable (mounted on a temp dir, then undone);
/// `look` reads what it needs from the mount meanwhile.
fn probe_mountable<T>(
    fstype: &'static str,
    look: impl FnOnce(&Path) -> Result<T, ProbeError>,
) -> (Feature, Option<T>) {
    if let Some(at) = mount_point_of(fstype) {
        let detail = format!("mounted at {}", at.display());
        return (Feature::ok(fstype, detail), look(&at).ok());
    }
    match TempMount::new(fstype) {
        Ok(tmp) => (Feature::ok(fstype, "mountable"), look(&tmp.0).ok()),
        Err(e) => (Feature::failed(fstype, &e), None),
    }
}

fn read_lsm_list(securityfs: &Path) -> Result<Vec<String>, ProbeError> {
    let path = securityfs.join("lsm");
    let text = fs::read_to_string(&path).map_err(at_path("cannot read", &path))?;
    Ok(parse_lsm_list(&text))
}

/// Parses `/sys/kernel/security/lsm` ("lockdown,capability,bpf", no trailing newline).
fn parse_lsm_list(text: &str) -> Vec<String> {
    let names = text.split(',').map(str::trim).filter(|s| !s.is_empty());
    names.map(str::to_owned).collect()
}

fn probe_map(name: &'static str, map_type: MapType) -> Feature {
    match is_map_supported(map_type) {
        Ok(true) => Feature::ok(name, format!("{map_type:?} map created")),
        Ok(false) => Feature::missing(name, format!("kernel rejects {map_type:?} maps")),
        Err(e) => Feature::failed(name, &from_aya(&e)),
    }
}

fn from_aya(e: &SyscallError) -> ProbeError {
    ProbeError::sys(e.call, e.io_error.raw_os_error().unwrap_or(libc::EIO))
}

/// Creates a real task-storage map. aya's probe only checks that the kernel knows the type
/// (it provokes EBADF from the BTF lookup), because a real one needs BTF for its key and value.
fn probe_task_storage() -> Feature {
    const NAME: &str = "task-storage";
    let Err(e) = create_task_storage() else {
        return Feature::ok(NAME, "TaskStorage map created, with BTF");
    };
    match is_map_supported(MapType::TaskStorage) {
        Ok(true) => {
            let detail = format!("kernel knows TaskStorage, but creating one failed: {e}");
            Feature::new(NAME, e.status(), detail)
        }
        Ok(false) => Feature::missing(NAME, format!("kernel does not know TaskStorage: {e}")),
        Err(_) => Feature::failed(NAME, &e),
    }
}

fn create_task_storage() -> Result<(), ProbeError> {
    let mut btf = Btf::new();
    let name = btf.add_string("int");
    let int = btf.add_type(BtfType::Int(Int::new(name, 4, IntEncoding::Signed, 0)));
    let blob = btf.to_bytes();
    let mut attr = zeroed_attr();
    // SAFETY: BPF_BTF_LOAD reads this union member; `blob` outlives the syscall.
    let load = unsafe { &mut attr.__bindgen_anon_7 };
    load.btf = blob.as_ptr() as u64;
    load.btf_size = u32::try_from(blob.len()).unwrap_or(u32::MAX);
    let btf_fd = sys_bpf(bpf_cmd::BPF_BTF_LOAD, &mut attr, "BPF_BTF_LOAD")?;

    let mut attr = zeroed_attr();
    // SAFETY: BPF_MAP_CREATE reads this union member; all its fields are plain integers.
    let map = unsafe { &mut attr.__bindgen_anon_1 };
    map.map_type = MapType::TaskStorage as u32;
    (map.key_size, map.value_size, map.map_flags) = (4, 4, BPF_F_NO_PREALLOC);
    map.btf_fd = btf_fd.as_raw_fd() as u32;
    (map.btf_key_type_id, map.btf_value_type_id) = (int, int);
    sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr, "BPF_MAP_CREATE").map(drop)
}

use crate::loader::zeroed_attr;

/// bpf(2) for the commands that return a new file descriptor.
fn sys_bpf(cmd: bpf_cmd, attr: &mut bpf_attr, call: &'static str) -> Result<OwnedFd, ProbeError> {
    crate::loader::sys_bpf_fd(cmd, attr)
        .map_err(|e| ProbeError::sys(call, e.raw_os_error().unwrap_or(libc::EIO)))
}

/// Loads `r0 = ret; exit` as `prog_type`, with an expected attach type and BTF target.
fn load_prog(
    prog_type: bpf_prog_type,
    attach: Attach,
    btf_id: u32,
    ret: i32,
) -> Result<OwnedFd, ProbeError> {
    // BPF_ALU64|BPF_MOV|BPF_K (r0 = imm), then BPF_JMP|BPF_EXIT; registers and offsets are 0.
    let mut insns = [0u8; 16];
    insns[0] = 0xb7;
    insns[4..8].copy_from_slice(&ret.to_ne_bytes());
    insns[8] = 0x95;
    let mut log = [0u8; 4096];
    let mut attr = zeroed_attr();
    // SAFETY: BPF_PROG_LOAD reads this union member; `insns`, the license and `log` outlive
    // the syscall.
    let load = unsafe { &mut attr.__bindgen_anon_3 };
    (load.prog_type, load.expected_attach_type) = (prog_type as u32, attach as u32);
    (load.attach_btf_id, load.insns, load.insn_cnt) = (btf_id, insns.as_ptr() as u64, 2);
    load.license = c"GPL".as_ptr() as u64;
    (load.log_buf, load.log_size, load.log_level) = (log.as_mut_ptr() as u64, 4096, 1);
    sys_bpf(bpf_cmd::BPF_PROG_LOAD, &mut attr, "BPF_PROG_LOAD").map_err(|e| {
        let ProbeError::Syscall { call, errno, .. } = e else {
            return e;
        };
        let text = String::from_utf8_lossy(&log);
        let mut lines = text.trim_end_matches('\0').lines().map(str::trim).rev();
        let log = lines.find(|l| !l.is_empty()).unwrap_or_default().to_owned();
        ProbeError::Syscall { call, errno, log }
    })
}

/// Attaches a tracing or LSM program to its BTF target; the link detaches when dropped.
fn raw_tp_open(prog: &OwnedFd) -> Result<OwnedFd, ProbeError> {
    let mut attr = zeroed_attr();
    // SAFETY: BPF_RAW_TRACEPOINT_OPEN reads this member; name 0 means "the program's BTF target".
    let raw_tp = unsafe { &mut attr.raw_tracepoint };
    raw_tp.prog_fd = prog.as_raw_fd() as u32;
    sys_bpf(
        bpf_cmd::BPF_RAW_TRACEPOINT_OPEN,
        &mut attr,
        "BPF_RAW_TRACEPOINT_OPEN",
    )
}

fn btf_id(btf: Option<&Btf>, name: &str, kind: BtfKind) -> Result<u32, String> {
    let btf = btf.ok_or("needs vmlinux BTF")?;
    let id = btf.id_by_type_name_kind(name, kind);
    id.map_err(|_| format!("no {kind:?} {name} in vmlinux BTF"))
}

fn probe_tp_btf(btf: Option<&Btf>) -> Feature {
    const NAME: &str = "tp-btf";
    let id = match btf_id(btf, "btf_trace_sched_process_fork", BtfKind::Typedef) {
        Ok(id) => id,
        Err(why) => return Feature::missing(NAME, why),
    };
    let tracing = bpf_prog_type::BPF_PROG_TYPE_TRACING;
    let prog = load_prog(tracing, Attach::BPF_TRACE_RAW_TP, id, 0);
    match prog.and_then(|prog| raw_tp_open(&prog)) {
        Ok(_link) => Feature::ok(NAME, "tp_btf/sched_process_fork loaded and attached"),
        Err(e) => Feature::failed(NAME, &e),
    }
}

/// Loads a cgroup sock_addr program for each expected attach type of `name`.
fn probe_sock_addr(name: &'static str) -> Feature {
    let (attach_types, hint) = match name {
        "cgroup-sock-addr-unix" => (
            &[
                ("connect_unix", Attach::BPF_CGROUP_UNIX_CONNECT),
                ("sendmsg_unix", Attach::BPF_CGROUP_UNIX_SENDMSG),
            ][..],
            " (needs Linux >= 6.7)",
        ),
        _ => (
            &[
                ("connect4", Attach::BPF_CGROUP_INET4_CONNECT),
                ("connect6", Attach::BPF_CGROUP_INET6_CONNECT),
                ("sendmsg4", Attach::BPF_CGROUP_UDP4_SENDMSG),
                ("sendmsg6", Attach::BPF_CGROUP_UDP6_SENDMSG),
            ][..],
            "",
        ),
    };
    for &(label, attach) in attach_types {
        // Return 1 (allow): the verifier checks sock_addr return values.
        if let Err(e) = load_prog(bpf_prog_type::BPF_PROG_TYPE_CGROUP_SOCK_ADDR, attach, 0, 1) {
            let hint = match e.status() {
                FeatureStatus::Missing => hint,
                _ => "",
            };
            return Feature::new(name, e.status(), format!("{label}: {e}{hint}"));
        }
    }
    let labels: Vec<&str> = attach_types.iter().map(|(label, _)| *label).collect();
    Feature::ok(name, format!("{} programs load", labels.join(", ")))
}

/// BPF LSM works only if `bpf` is an active LSM and an LSM program both loads and attaches.
fn probe_bpf_lsm(btf: Option<&Btf>, lsm_list: Option<&[String]>) -> Feature {
    const NAME: &str = "bpf-lsm";
    let listed = lsm_list.map(|list| list.iter().any(|l| l == "bpf"));
    if let (Some(false), Some(list)) = (listed, lsm_list) {
        let list = list.join(",");
        return Feature::missing(NAME, format!("bpf not in the active LSM list ({list})"));
    }
    let id = match btf_id(btf, "bpf_lsm_file_open", BtfKind::Func) {
        Ok(id) => id,
        Err(why) => return Feature::missing(NAME, why),
    };
    let list = listed.map_or("LSM list unknown", |_| "bpf in LSM list");
    let prog = match load_prog(bpf_prog_type::BPF_PROG_TYPE_LSM, Attach::BPF_LSM_MAC, id, 0) {
        Ok(prog) => prog,
        Err(e) => {
            let why = e.to_string().replacen("BPF_PROG_LOAD: ", "", 1);
            let detail = format!("{list} but LSM program load refused: {why}");
            return Feature::new(NAME, e.status(), detail);
        }
    };
    match (raw_tp_open(&prog), listed) {
        (Ok(_link), Some(true)) => Feature::ok(NAME, "lsm/file_open loaded and attached"),
        (Ok(_link), _) => Feature::new(
            NAME,
            FeatureStatus::Error,
            "lsm/file_open loaded and attached, but the active LSM list is unreadable",
        ),
        (Err(e), _) => {
            let detail = format!("{list} but LSM program attach refused: {e}");
            Feature::new(NAME, e.status(), detail)
        }
    }
}

/// A content-class fanotify group can mark a file for open permission events.
fn probe_fanotify() -> Feature {
    const NAME: &str = "fanotify-perm";
    match try_fanotify() {
        Ok(()) => Feature::ok(NAME, "FAN_CLASS_CONTENT group set a FAN_OPEN_PERM mark"),
        Err(e) => Feature::failed(NAME, &e),
    }
}

fn try_fanotify() -> Result<(), ProbeError> {
    let flags = libc::FAN_CLASS_CONTENT | libc::FAN_CLOEXEC;
    // SAFETY: plain syscall with constant flags; it returns a new descriptor or -1.
    let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as libc::c_uint) };
    if fd < 0 {
        return Err(ProbeError::sys("fanotify_init", Errno::last_raw()));
    }
    // SAFETY: fanotify_init just returned this descriptor and nothing else owns it.
    let group = unsafe { OwnedFd::from_raw_fd(fd) };
    let (file, path) = mkstemp(&temp_template()).map_err(at_path("mkstemp", &temp_template()))?;
    drop(file);
    let mark = || {
        let path = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| ProbeError::sys("fanotify_mark", libc::EINVAL))?;
        let (fd, add, mask) = (group.as_raw_fd(), libc::FAN_MARK_ADD, libc::FAN_OPEN_PERM);
        // SAFETY: `fd` is a live fanotify group and `path` a NUL-terminated string.
        let ret = unsafe { libc::fanotify_mark(fd, add, mask, libc::AT_FDCWD, path.as_ptr()) };
        match ret {
            0 => Ok(()),
            _ => Err(ProbeError::sys("fanotify_mark", Errno::last_raw())),
        }
    };
    let result = mark();
    // Close the group first, so that nothing can block on a permission event for the file.
    drop(group);
    if let Err(e) = fs::remove_file(&path) {
        tracing::warn!(path = %path.display(), "probe could not remove its temporary file: {e}");
    }
    result
}

/// `bpf_send_signal` in raw tracepoint programs (tp_btf programs get the same helper set).
fn probe_send_signal() -> Feature {
    const NAME: &str = "bpf-send-signal";
    match is_helper_supported(ProgramType::RawTracePoint, BpfHelper::BPF_FUNC_send_signal) {
        Ok(true) => Feature::ok(NAME, "verifier accepts bpf_send_signal in raw tracepoints"),
        Ok(false) => Feature::missing(NAME, "verifier rejects bpf_send_signal"),
        Err(ProgramError::SyscallError(e)) => Feature::failed(NAME, &from_aya(&e)),
        Err(e) => Feature::new(NAME, FeatureStatus::Error, e.to_string()),
    }
}

/// Whether cgroup socket programs may call `bpf_send_signal` (newer kernels): then they
/// SIGKILL the offender themselves and no kill program is attached.
fn probe_cgroup_send_signal() -> Feature {
    const NAME: &str = "cgroup-send-signal";
    let both = [ProgramType::CgroupSockAddr, ProgramType::CgroupSock]
        .map(|t| is_helper_supported(t, BpfHelper::BPF_FUNC_send_signal));
    match both {
        [Ok(true), Ok(true)] => Feature::ok(
            NAME,
            "verifier accepts bpf_send_signal in cgroup sock_addr and sock_create programs: kill \
             rules SIGKILL from the program that denies",
        ),
        [Err(ProgramError::SyscallError(e)), _] | [_, Err(ProgramError::SyscallError(e))] => {
            Feature::failed(NAME, &from_aya(&e))
        }
        [Err(e), _] | [_, Err(e)] => Feature::new(NAME, FeatureStatus::Error, e.to_string()),
        _ => Feature::missing(
            NAME,
            "verifier rejects bpf_send_signal in cgroup programs: kill rules use the fexit kill \
             programs",
        ),
    }
}

impl Probe {
    pub fn get(&self, name: &str) -> Option<&Feature> {
        self.features.iter().find(|f| f.name == name)
    }

    pub fn is_available(&self, name: &str) -> bool {
        self.get(name).is_some_and(Feature::usable)
    }

    pub fn missing_required(&self) -> Vec<&Feature> {
        let missing = self.features.iter().filter(|f| f.required && !f.usable());
        missing.collect()
    }

    /// An aligned table for humans: feature, status, required, detail.
    pub fn render_table(&self, color: bool) -> String {
        use fmt::Write as _;
        let paint = |code: &str, text: String| match color {
            true => format!("\x1b[{code}m{text}\x1b[0m"),
            false => text,
        };
        let tier = paint("1", self.tier.to_string());
        let mut out = format!("kernel {}, tier {tier}\n", self.kernel_release);
        let cgroup2 = self.cgroup2.as_ref().map(|p| p.display().to_string());
        let lsms = self.lsm_list.as_ref().map(|l| l.join(","));
        let (cgroup2, lsms) = (cgroup2.as_deref(), lsms.as_deref());
        let (cgroup2, lsms) = (cgroup2.unwrap_or("not found"), lsms.unwrap_or("unknown"));
        let _ = writeln!(out, "cgroup2 {cgroup2}, LSMs {lsms}\n");
        let names = self.features.iter().map(|f| f.name.len());
        let width = names.fold(7, usize::max);
        let _ = writeln!(out, "{:width$}  STATUS       REQUIRED  DETAIL", "FEATURE");
        for f in &self.features {
            let (mark, code) = match (f.status, f.required) {
                (FeatureStatus::Available, _) => ('\u{2713}', "32"),
                (FeatureStatus::Missing, false) => ('\u{2717}', "33"),
                (FeatureStatus::Missing, true) => ('\u{2717}', "31"),
                (FeatureStatus::Error, _) => ('!', "31"),
            };
            let status = paint(code, format!("{mark} {:9}", f.status));
            let required = if f.required { "yes" } else { "no" };
            let (name, detail) = (f.name, &f.detail);
            let _ = writeln!(out, "{name:width$}  {status}  {required:8}  {detail}");
        }
        let missing: Vec<&str> = self.missing_required().iter().map(|f| f.name).collect();
        match missing.is_empty() {
            true => out.push_str("\nall required features available\n"),
            false => {
                let missing = paint("31", missing.join(", "));
                let _ = writeln!(out, "\nmissing required: {missing}");
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tier: Tier) -> Probe {
        let lsm = "bpf in LSM list but LSM program load refused: EPERM";
        let features = vec![
            Feature::ok("btf", "/sys/kernel/btf/vmlinux parsed"),
            Feature::missing("fanotify-perm", "fanotify_init: ENOSYS"),
            Feature::missing("bpf-lsm", lsm),
            Feature::new("tracefs", FeatureStatus::Error, "cannot mount: EIO"),
        ];
        let cgroup2 = Some("/sys/fs/cgroup/unified".into());
        let lsm_list = Some(vec!["capability".into(), "bpf".into()]);
        let kernel_release = "6.18.0-test".into();
        Probe {
            features,
            cgroup2,
            lsm_list,
            kernel_release,
            tier,
        }
    }

    #[test]
    fn lsm_list_parses() {
        let list = parse_lsm_list("lockdown,capability,landlock,yama,bpf");
        assert_eq!(list, ["lockdown", "capability", "landlock", "yama", "bpf"]);
        assert_eq!(parse_lsm_list("capability, bpf\n"), ["capability", "bpf"]);
        assert!(parse_lsm_list("").is_empty() && parse_lsm_list("\n").is_empty());
    }

    #[test]
    fn errors_name_the_errno() {
        let names = [libc::EPERM, ENOTSUPP, 99_999].map(errno_name);
        assert_eq!(names, ["EPERM", "ENOTSUPP", "errno 99999"]);
        let log = "Tracing programs must provide btf_id".to_owned();
        let (call, errno) = ("BPF_PROG_LOAD", libc::EINVAL);
        let e = ProbeError::Syscall { call, errno, log };
        let text = "BPF_PROG_LOAD: EINVAL (verifier: Tracing programs must provide btf_id)";
        assert_eq!(
            (e.to_string(), e.status()),
            (text.into(), FeatureStatus::Missing)
        );
        let e = ProbeError::sys("bpf", libc::EBADF);
        assert_eq!(
            (e.to_string(), e.status()),
            ("bpf: EBADF".into(), FeatureStatus::Error)
        );
        let e = at_path("cannot mount bpffs at", Path::new("/x"))(Errno::EBUSY);
        let text = "cannot mount bpffs at /x: EBUSY (Device or resource busy)";
        assert_eq!(e.to_string(), text);
    }

    #[test]
    fn required_flags_and_lookups() {
        let p = sample(Tier::Fallback);
        let required = |name| p.get(name).unwrap().required;
        assert!(required("btf") && required("fanotify-perm"));
        assert!(!required("bpf-lsm") && !required("tracefs"));
        assert!(p.is_available("btf") && !p.is_available("bpf-lsm") && !p.is_available("x"));
        let missing: Vec<_> = p.missing_required().iter().map(|f| f.name).collect();
        assert_eq!(missing, ["fanotify-perm"]);
    }

    #[test]
    fn table_is_aligned_and_plain_without_color() {
        let table = sample(Tier::Fallback).render_table(false);
        let expected = [
            "kernel 6.18.0-test, tier fallback\n",
            "cgroup2 /sys/fs/cgroup/unified, LSMs capability,bpf\n",
            "\u{2713} available",
            "\u{2717} missing ",
            "! error    ",
            "\nmissing required: fanotify-perm\n",
        ];
        for text in expected {
            assert!(table.contains(text), "{text:?} in\n{table}");
        }
        assert!(!table.contains('\x1b'), "{table}");
        let header = table.lines().find(|l| l.starts_with("FEATURE")).unwrap();
        let column = |line: &str, word| line.find(word).map(|b| line[..b].chars().count());
        let detail_at = column(header, "DETAIL");
        for detail in ["/sys/kernel", "fanotify_init", "bpf in LSM", "cannot mount"] {
            let row = table.lines().find(|l| l.contains(detail)).unwrap();
            assert_eq!(column(row, detail), detail_at, "{table}");
        }
    }

    #[test]
    fn table_colors_status_when_asked() {
        let table = sample(Tier::BpfLsm).render_table(true);
        let expected = [
            "tier \x1b[1mbpf-lsm\x1b[0m",
            "\x1b[32m\u{2713} available\x1b[0m",
            "\x1b[31m\u{2717} missing  \x1b[0m  yes",
            "\x1b[33m\u{2717} missing  \x1b[0m  no",
        ];
        for text in expected {
            assert!(table.contains(text), "{text:?} in\n{table}");
        }
    }

    #[test]
    fn json_is_stable() {
        let json = serde_json::to_value(sample(Tier::BpfLsm)).unwrap();
        let expected = serde_json::json!({
            "tier": "bpf-lsm",
            "kernel_release": "6.18.0-test",
            "cgroup2": "/sys/fs/cgroup/unified",
            "lsm_list": ["capability", "bpf"],
            "features": [
                {"name": "btf", "status": "available", "required": true,
                 "detail": "/sys/kernel/btf/vmlinux parsed"},
                {"name": "fanotify-perm", "status": "missing", "required": true,
                 "detail": "fanotify_init: ENOSYS"},
                {"name": "bpf-lsm", "status": "missing", "required": false,
                 "detail": "bpf in LSM list but LSM program load refused: EPERM"},
                {"name": "tracefs", "status": "error", "required": false,
                 "detail": "cannot mount: EIO"},
            ],
        });
        assert_eq!(json, expected);
        assert_eq!(serde_json::to_value(Tier::Fallback).unwrap(), "fallback");
    }

    /// Unmounts a test's bpffs even when the test panics.
    struct Unmount<'a>(&'a Path);

    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = umount2(self.0, MntFlags::MNT_DETACH);
        }
    }

    /// Privileged: needs root on the reference kernel (notes/kernel-and-toolchain.md).
    #[test]
    fn probe_finds_this_machines_features() {
        let dir = tempfile::tempdir().unwrap();
        let _unmount = Unmount(dir.path());
        let p = probe(dir.path(), true);
        eprintln!("{}", p.render_table(false));
        for name in REQUIRED.split_whitespace().chain(["cgroup-sock-addr-unix"]) {
            assert!(p.is_available(name), "{name}: {:?}", p.get(name));
        }
        let bpffs = &p.get("bpffs").unwrap().detail;
        assert!(bpffs.starts_with("mounted by guard at") && is_bpffs(dir.path()).unwrap());
        let lsm = p.get("bpf-lsm").unwrap();
        let refused = "bpf in LSM list but LSM program load refused: EPERM";
        assert_eq!(
            (lsm.status, lsm.detail.as_str()),
            (FeatureStatus::Missing, refused)
        );
        assert_eq!(
            (p.tier, p.cgroup2.clone()),
            (Tier::Fallback, find_cgroup2())
        );
        let lsm_list = p.lsm_list.unwrap_or_default();
        assert!(lsm_list.iter().any(|m| m == "bpf"), "{lsm_list:?}");
        let prefix = temp_template().with_file_name("guard-probe-");
        let entries = fs::read_dir(std::env::temp_dir()).unwrap();
        let mut leftovers = entries.map(|e| e.unwrap().path().into_os_string());
        let prefix = prefix.as_os_str().as_bytes();
        let leftover = leftovers.find(|p| p.as_bytes().starts_with(prefix));
        assert_eq!(leftover, None, "probe left a temporary file or directory");
    }

    #[test]
    fn ensure_bpffs_mounts_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("bpf");
        let _unmount = Unmount(&root);
        assert!(ensure_bpffs(&root).unwrap());
        assert!(!ensure_bpffs(&root).unwrap());
        assert!(is_bpffs(&root).unwrap());
    }

    #[test]
    fn ensure_bpffs_names_the_path_on_error() {
        let file = tempfile::NamedTempFile::new().unwrap();
        let root = file.path().join("bpf");
        let err = ensure_bpffs(&root).unwrap_err().to_string();
        let at = root.display();
        assert_eq!(
            err,
            format!("cannot create directory {at}: ENOTDIR (Not a directory)")
        );
    }
}
