//! The kernel half of file protection: attaching the change detectors (timestamp
//! tracepoints), the fallback tier's refusals (`fmod_ret` of the `security_path_*`
//! functions) and the block-device program, the maps they read, and the thread that drains
//! their events.

use std::{
    collections::BTreeMap,
    os::fd::AsRawFd as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
        mpsc::Sender,
    },
    thread::JoinHandle,
};

use aya::{
    Ebpf,
    maps::{HashMap, MapData, PerCpuArray, RingBuf},
};
use guard_common::{
    event::EventKind,
    file::{COUNTER_NAMES, DevKey, FileEvent, FileKey, FileRule},
    maps::{self, file_programs},
};
use serde::Serialize;

use super::FileError;
use crate::loader::{
    Attacher,
    table::{self, Family, Kind},
    take_map,
};

/// The entries of `map`.
pub fn entries<K: aya::Pod + Ord, V: aya::Pod>(map: &HashMap<MapData, K, V>) -> BTreeMap<K, V> {
    map.iter().filter_map(Result::ok).collect()
}

/// Make `map`, which holds `current`, hold `wanted`: new and changed entries first, then the
/// stale ones removed, so that an entry both have is never missing. `what` names an entry in
/// errors.
pub fn sync_map<K: aya::Pod + Ord, V: aya::Pod + PartialEq>(
    map: &mut HashMap<MapData, K, V>,
    current: &BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
    what: &str,
) {
    for (k, v) in wanted {
        if current.get(k) != Some(v)
            && let Err(e) = map.insert(k, v, 0)
        {
            tracing::error!(error = %e, "cannot install a {what} in the kernel map");
        }
    }
    for k in current.keys().filter(|k| !wanted.contains_key(k)) {
        let _ = map.remove(k);
    }
}

/// The file maps, owned by the file guard.
pub struct FileMaps {
    pub objects: HashMap<MapData, FileKey, FileRule>,
    /// The identity set (see [`super::identity`]).
    pub identities: HashMap<MapData, FileKey, guard_common::file::FileIdentity>,
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
    /// Fallback tier: the `fmod_ret` programs that refuse destructive operations (their
    /// kernel functions), and why the rest did not attach.
    #[serde(default)]
    pub refuse: Vec<String>,
    #[serde(default)]
    pub refuse_error: Option<String>,
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

    /// The fallback tier refuses deletes, renames, truncates, chmod/chown, links and creates
    /// in the kernel: every `fmod_ret` program the kernel has a function for is attached.
    pub fn refuses(&self) -> bool {
        !self.refuse.is_empty() && self.refuse_error.is_none()
    }

    /// Destructive operations are refused in the kernel (bpf-lsm, or the fallback tier's
    /// `fmod_ret` programs): nothing is lost.
    pub fn refused_in_kernel(&self) -> bool {
        self.lsm() || self.refuses()
    }
}

/// Attach the fallback tier's refusals (where the kernel takes `fmod_ret` programs and
/// `lsm_offsets` are known), the kill-on-detect programs and the block-device program.
/// Failures are reported in [`Attached`], not returned: the fanotify layer works without them,
/// and `guard status` says what is missing. The detectors stay beside the refusals: they also
/// see writes through descriptors opened earlier.
pub fn attach(at: &mut Attacher<'_>, lsm_offsets: bool) -> Attached {
    let mut a = attach_device(at);
    attach_refusals(at, lsm_offsets, &mut a);
    let mut errors = Vec::new();
    for row in table::family(Family::FileDetect) {
        let Kind::TpBtf(tracepoint) = row.kind else {
            continue;
        };
        match at.attach(&row) {
            Ok(()) => a.detectors.push(tracepoint.to_owned()),
            Err(e) => errors.push(format!("{}: {e}", row.hook())),
        }
    }
    if !errors.is_empty() {
        a.detect_error = Some(errors.join("; "));
    }
    a
}

fn attach_refusals(at: &mut Attacher<'_>, lsm_offsets: bool, a: &mut Attached) {
    if !lsm_offsets {
        a.refuse_error = Some("kernel BTF lacks a struct field the path programs read".into());
        return;
    }
    let attempt = at.attach_family(Family::FileRefuse);
    for row in &attempt.attached {
        if let Kind::FModRet(function) = row.kind
            && !a.refuse.iter().any(|f| f == function)
        {
            a.refuse.push(function.to_owned());
        }
    }
    if !attempt.failed.is_empty() {
        let errors = attempt.failed.join("; ");
        tracing::warn!("destructive file operations are not refused in the kernel: {errors}");
        a.refuse_error = Some(errors);
    }
}

/// Only the block-device program (both tiers).
fn attach_device(at: &mut Attacher<'_>) -> Attached {
    let mut a = Attached::default();
    for row in table::family(Family::FileDevice) {
        match at.attach(&row) {
            Ok(()) => a.device = true,
            Err(e) => a.device_error = Some(e.to_string()),
        }
    }
    a
}

/// Take the file maps out of `ebpf`.
pub fn take_maps(ebpf: &mut Ebpf) -> Result<FileMaps, FileError> {
    let err = |(name, source)| FileError::Map { name, source };
    Ok(FileMaps {
        objects: take_map(ebpf, maps::FILE_OBJECTS).map_err(err)?,
        identities: take_map(ebpf, maps::FILE_IDENTITIES).map_err(err)?,
        devices: take_map(ebpf, maps::FILE_DEVICES).map_err(err)?,
        counters: take_map(ebpf, maps::FILE_COUNTERS).map_err(err)?,
        events: Some(take_map(ebpf, maps::FILE_EVENTS).map_err(err)?),
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

/// Drain the file ring buffer on a dedicated thread until `stop`, handing each record to the
/// reporter.
pub fn spawn_reader(
    mut ring: RingBuf<MapData>,
    out: Sender<super::Report>,
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
                    if let Some((kind, ev)) = decode(&item)
                        && out.send(super::Report::Kernel(kind, ev)).is_err()
                    {
                        return;
                    }
                }
            }
        })
}

/// Attach the file programs and take their maps (before the maps are taken out of the
/// object). `offsets_error` is why the offsets are unset, if they are.
pub fn load(
    at: &mut Attacher<'_>,
    offsets: &crate::btf::Offsets,
    lsm: Option<&crate::lsm::LsmAttached>,
) -> Option<super::Loaded> {
    let mut attached = match lsm {
        Some(lsm) => {
            let mut a = attach_device(at);
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
        None => attach(at, offsets.lsm.valid * offsets.file.valid != 0),
    };
    if let Some(e) = &offsets.file_error {
        attached.detect_error = Some(format!("kernel BTF: {e}"));
        attached.detectors.clear();
    }
    match take_maps(at.ebpf()) {
        Ok(maps) => Some(super::Loaded { maps, attached }),
        Err(e) => {
            tracing::error!(error = %e, "file protection maps are missing; kernel layers off");
            None
        }
    }
}
