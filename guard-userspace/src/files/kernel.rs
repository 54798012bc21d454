//! The kernel half of file protection: attaching the change detectors (timestamp
//! tracepoints) and the block-device program, the maps they read, and the thread that drains
//! their events.

use std::{
    fs::File,
    os::fd::{AsFd as _, AsRawFd as _},
    path::Path,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
};

use aya::{
    Btf, Ebpf,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, CgroupDevice, ProgramError, links::FdLink},
};
use guard_common::{
    event::EventKind,
    file::{COUNTER_NAMES, DevKey, FileEvent, FileKey, FileRule},
    maps::{self, file_programs},
};
use serde::Serialize;

use super::FileError;

/// The file maps, owned by the file guard.
pub struct FileMaps {
    pub objects: HashMap<MapData, FileKey, FileRule>,
    pub devices: HashMap<MapData, DevKey, FileRule>,
    pub counters: PerCpuArray<MapData, u64>,
    pub events: Option<RingBuf<MapData>>,
}

/// What [`attach`] attached, and why not the rest.
#[derive(Clone, Debug, Default, Serialize, serde::Deserialize)]
pub struct Attached {
    /// Tracepoints of the change detectors that are attached.
    pub detectors: Vec<String>,
    pub detect_error: Option<String>,
    /// The block-device program is attached to the cgroup v2 root.
    pub device: bool,
    pub device_error: Option<String>,
    /// The bpf-lsm tier's file hooks, when it enforces (then there are no detectors and no
    /// fanotify permission events: the LSM programs refuse every access in the kernel).
    #[serde(default)]
    pub lsm: Vec<String>,
}

impl Attached {
    /// Kill-on-detect works: the detectors for multigrain filesystems (ext4, xfs, btrfs,
    /// tmpfs) and for the others are all attached.
    pub fn detects(&self) -> bool {
        self.detectors.len() == file_programs::TRACEPOINTS.len()
    }

    /// The bpf-lsm tier's file hooks enforce.
    pub fn lsm(&self) -> bool {
        !self.lsm.is_empty()
    }
}

/// Load and attach the file programs of `ebpf`, pinning their links under `links_dir`.
/// Failures are reported in [`Attached`], not returned: the fanotify layer works without them,
/// and `guard status` says what is missing.
pub fn attach(
    ebpf: &mut Ebpf,
    btf: &Btf,
    links_dir: &Path,
    pin: impl Fn(FdLink, &Path) -> Result<(), String>,
) -> Attached {
    let mut a = Attached::default();
    let mut errors = Vec::new();
    for (name, tracepoint) in file_programs::TRACEPOINTS {
        let result = (|| -> Result<(), String> {
            let prog: &mut BtfTracePoint = ebpf
                .program_mut(name)
                .ok_or(ProgramError::NotLoaded)
                .and_then(TryInto::try_into)
                .map_err(|e| e.to_string())?;
            prog.load(tracepoint, btf)
                .map_err(|e| crate::loader::verifier_text(&e))?;
            let id = prog.attach().map_err(|e| e.to_string())?;
            let link: FdLink = prog.take_link(id).map_err(|e| e.to_string())?.into();
            pin(link, &links_dir.join(name))
        })();
        match result {
            Ok(()) => a.detectors.push(tracepoint.to_owned()),
            Err(e) => errors.push(format!("tp_btf/{tracepoint}: {e}")),
        }
    }
    if !errors.is_empty() {
        a.detect_error = Some(errors.join("; "));
    }
    match attach_device(ebpf, links_dir) {
        Ok(()) => a.device = true,
        Err(e) => a.device_error = Some(e),
    }
    a
}

fn attach_device(ebpf: &mut Ebpf, links_dir: &Path) -> Result<(), String> {
    let root = crate::probe::find_cgroup2().ok_or("no cgroup v2 mount")?;
    let cgroup = File::open(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let prog: &mut CgroupDevice = ebpf
        .program_mut(file_programs::DEVICE)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(|e| e.to_string())?;
    prog.load().map_err(|e| crate::loader::verifier_text(&e))?;
    // aya 0.14 cannot turn a cgroup device link into a pinnable FdLink: create and pin the
    // link directly.
    let prog_fd = prog.fd().map_err(|e| e.to_string())?;
    let link = link_create(prog_fd.as_fd(), cgroup.as_fd(), BPF_CGROUP_DEVICE)
        .map_err(|e| format!("bpf_link_create: {e}"))?;
    replace_pin(&link, &links_dir.join(file_programs::DEVICE))
        .map_err(|e| format!("pinning the device link: {e}"))
}

/// `bpf_attach_type` of cgroup device programs.
const BPF_CGROUP_DEVICE: u32 = 6;

/// A zeroed `union bpf_attr` (large enough for every command used here).
type Attr = [u64; 16];

fn sys_bpf(cmd: libc::c_long, attr: &mut Attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a zeroed bpf_attr-sized buffer with the command's fields filled in.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.as_mut_ptr(), size_of::<Attr>()) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(r)
}

/// `BPF_LINK_CREATE` attaching `prog` to the cgroup `target` (flags 0: cgroup links are
/// always multi-program).
fn link_create(
    prog: std::os::fd::BorrowedFd<'_>,
    target: std::os::fd::BorrowedFd<'_>,
    attach_type: u32,
) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::fd::FromRawFd as _;
    let mut attr: Attr = [0; 16];
    // link_create: prog_fd u32, target_fd u32, attach_type u32, flags u32.
    attr[0] = u64::from(prog.as_raw_fd() as u32) | (u64::from(target.as_raw_fd() as u32) << 32);
    attr[1] = u64::from(attach_type);
    const BPF_LINK_CREATE: libc::c_long = 28;
    let fd = sys_bpf(BPF_LINK_CREATE, &mut attr)?;
    // SAFETY: a fresh link fd from the kernel, owned by nobody else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Pin `link` at `path`, replacing an older pin atomically (pin beside it, then rename).
fn replace_pin(link: &std::os::fd::OwnedFd, path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    let _ = std::fs::remove_file(&tmp);
    let c = std::ffi::CString::new(tmp.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut attr: Attr = [0; 16];
    // obj_pin: pathname u64, bpf_fd u32, file_flags u32.
    attr[0] = c.as_ptr() as u64;
    attr[1] = u64::from(link.as_raw_fd() as u32);
    const BPF_OBJ_PIN: libc::c_long = 6;
    sys_bpf(BPF_OBJ_PIN, &mut attr)?;
    std::fs::rename(&tmp, path)
}

/// Take the file maps out of `ebpf`.
pub fn take_maps(ebpf: &mut Ebpf) -> Result<FileMaps, FileError> {
    fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, FileError>
    where
        T: TryFrom<aya::maps::Map, Error = MapError>,
    {
        let map = ebpf.take_map(name).ok_or(FileError::NoMap { name })?;
        T::try_from(map).map_err(|source| FileError::Map { name, source })
    }
    Ok(FileMaps {
        objects: take(ebpf, maps::FILE_OBJECTS)?,
        devices: take(ebpf, maps::FILE_DEVICES)?,
        counters: take(ebpf, maps::FILE_COUNTERS)?,
        events: Some(take(ebpf, maps::FILE_EVENTS)?),
    })
}

impl FileMaps {
    /// Sum of each per-CPU counter, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .zip(0u32..)
            .map(|(name, i)| {
                let total = self
                    .counters
                    .get(&i, 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }
}

/// Decode a file event record.
pub fn decode(raw: &[u8]) -> Option<(EventKind, FileEvent)> {
    if raw.len() < size_of::<FileEvent>() {
        return None;
    }
    // SAFETY: length checked; FileEvent is plain old data, read unaligned.
    let ev: FileEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let kind = EventKind::from_u32(ev.header.kind)?;
    matches!(kind, EventKind::FileChange | EventKind::FileDevice).then_some((kind, ev))
}

/// Drain the file ring buffer on a dedicated thread until `stop`, sending each event.
pub fn spawn_reader(
    mut ring: RingBuf<MapData>,
    out: Sender<(EventKind, FileEvent)>,
    stop: Arc<AtomicBool>,
) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("guard-file-ring".into())
        .spawn(move || {
            let fd = ring.as_raw_fd();
            while !stop.load(Ordering::Relaxed) {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; a timeout so `stop` is seen.
                unsafe { libc::poll(&raw mut pfd, 1, 200) };
                while let Some(item) = ring.next() {
                    if let Some(ev) = decode(&item)
                        && out.send(ev).is_err()
                    {
                        return;
                    }
                }
            }
        })
}

/// Offsets for the file programs from the running kernel's BTF; unset (the programs then do
/// nothing) with the reason when they cannot be read.
pub fn offsets() -> (guard_common::offsets::FileOffsets, Option<String>) {
    match crate::btf::file_offsets(Path::new(crate::btf::VMLINUX_BTF)) {
        Ok(o) => (o, None),
        Err(e) => (Default::default(), Some(e.to_string())),
    }
}

/// Attach the file programs and take their maps (called by `Kernel::load` before the maps
/// are taken out of the object). `offsets_error` is why the offsets are unset, if they are.
pub fn load(
    ebpf: &mut Ebpf,
    btf: &Btf,
    links_dir: &Path,
    offsets_error: Option<String>,
    lsm: Option<&crate::lsm::LsmAttached>,
    pin: impl Fn(FdLink, &Path) -> Result<(), String>,
) -> Option<super::Loaded> {
    let mut attached = match lsm {
        Some(lsm) => {
            let mut a = Attached::default();
            match attach_device(ebpf, links_dir) {
                Ok(()) => a.device = true,
                Err(e) => a.device_error = Some(e),
            }
            let file: Vec<&str> = guard_common::maps::lsm_programs::FILE
                .iter()
                .map(|(_, h)| *h)
                .collect();
            a.lsm = lsm
                .hooks
                .iter()
                .filter(|h| file.contains(&h.as_str()))
                .cloned()
                .collect();
            a
        }
        None => attach(ebpf, btf, links_dir, pin),
    };
    if let Some(e) = offsets_error {
        attached.detect_error = Some(format!("kernel BTF: {e}"));
        attached.detectors.clear();
    }
    match take_maps(ebpf) {
        Ok(maps) => Some(super::Loaded { maps, attached }),
        Err(e) => {
            tracing::error!(error = %e, "file protection maps are missing; kernel layers off");
            None
        }
    }
}
