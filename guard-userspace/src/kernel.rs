//! Loading guard's kernel programs, attaching them and pinning everything under the bpffs
//! directory so that enforcement outlives the daemon.
//!
//! Layout under the pin directory: `maps/<MAP>` (shared with every later daemon: tags
//! survive restarts) and `links/<program>` (the attachments). A new daemon reuses the pinned
//! maps, attaches its programs, then atomically replaces each link pin, so there is never a
//! moment without an attached tracker.

use std::{
    fs, io,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf, EbpfLoader,
    maps::{HashMap, MapData, MapError, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, ProgramError, links::FdLink},
};
use guard_common::{
    Tag,
    agent::NameKey,
    event::COUNTER_NAMES,
    maps::{self, programs},
    offsets::KernelOffsets,
};

pub use crate::probe::Tier;

/// Which tier the daemon is asked to enforce with (`guard daemon --tier`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum TierChoice {
    /// bpf-lsm where the kernel runs BPF LSM and the programs attach, else fallback.
    #[default]
    Auto,
    /// bpf-lsm or refuse to start.
    BpfLsm,
    /// The fallback hooks even where BPF LSM is active.
    Fallback,
}

/// The compiled kernel object, embedded in the binary.
pub(crate) static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("loading guard's eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("reading kernel BTF: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("pinning link {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("map {name} is missing from the object")]
    NoMap { name: &'static str },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("network hooks: {0}")]
    Net(#[from] crate::net::NetError),
    #[error("the bpf-lsm tier was asked for and cannot enforce: {0}")]
    Lsm(String),
}

/// The tracker programs: tracepoint name and program name.
pub const TRACKERS: [(&str, &str); 3] = [
    ("sched_process_fork", programs::FORK),
    ("sched_process_exec", programs::EXEC),
    ("sched_process_exit", programs::EXIT),
];

/// The program behind the tracker pinned as `pin_name`: kernels before 6.16 pass no
/// `group_dead` to `sched_process_exit` (a program reading it is rejected), and get the variant
/// that reads `signal->live` instead.
fn tracker_program(pin_name: &'static str) -> &'static str {
    if pin_name != programs::EXIT {
        return pin_name;
    }
    match crate::btf::func_params(
        Path::new(crate::btf::VMLINUX_BTF),
        "btf_trace_sched_process_exit",
    ) {
        Some(n) if n < 3 => programs::EXIT_NO_GROUP_DEAD,
        _ => programs::EXIT,
    }
}

/// The program that carries out `kill` decisions of the cgroup hooks: `tp_btf/sys_exit` sends
/// SIGKILL in the offender's own context before it returns to user space. Any program on
/// `raw_syscalls:sys_exit` puts every thread of the host on the slow system-call path (about
/// 100 ns a call), so it is attached only while the policy has an enforced `kill` or
/// `kill-tree` endpoint rule.
pub const KILLER: (&str, &str) = ("sys_exit", programs::SYS_EXIT);

/// Loaded and attached programs plus handles to their maps.
pub struct Kernel {
    pin_dir: PathBuf,
    pub tags: HashMap<MapData, u32, Tag>,
    pub agent_exes: HashMap<MapData, NameKey, u32>,
    pub agent_scripts: HashMap<MapData, NameKey, u32>,
    pub interpreters: HashMap<MapData, NameKey, u32>,
    pub counters: PerCpuArray<MapData, u64>,
    events: Option<RingBuf<MapData>>,
    /// Network rule maps, until the network controller takes them.
    pub net: Option<crate::net::NetMaps>,
    /// What the network hooks attached.
    pub net_attached: crate::net::Attached,
    /// File protection maps and what attached, until the file guard takes them.
    pub files: Option<crate::files::Loaded>,
    /// The tier that enforces: `BpfLsm` when the LSM programs are attached.
    pub tier: Tier,
    /// What the bpf-lsm tier attached (when it enforces).
    pub lsm: Option<crate::lsm::LsmAttached>,
    /// Why the bpf-lsm tier is not enforcing although it was asked for.
    pub lsm_error: Option<String>,
    /// Self-protection maps (absent if the object lacks them) and what attached.
    pub guard_self: Option<crate::selfprot::SelfMaps>,
    pub self_attached: crate::selfprot::SelfAttached,
    /// Puts removed pins back; told before the daemon removes a pin itself.
    pub keeper: Option<std::sync::Arc<crate::pins::PinKeeper>>,
    /// Keeps the programs' file descriptors for the daemon's lifetime.
    _ebpf: Ebpf,
}

impl Kernel {
    /// Load the programs (reusing pinned maps), attach the trackers and pin their links.
    ///
    /// With `tier` [`TierChoice::BpfLsm`] or [`TierChoice::Auto`] on a kernel running BPF LSM
    /// (`lsm_available`), the LSM programs enforce and the fallback tier's enforcement hooks
    /// are not attached (their old pins are removed once the LSM links are in place). If
    /// they cannot attach, `Auto` falls back (and says why in `lsm_error`), `BpfLsm` fails.
    pub fn load(
        pin_dir: &Path,
        offsets: &KernelOffsets,
        daemon_tgid: u32,
        tier: TierChoice,
        lsm_available: bool,
    ) -> Result<Self, KernelError> {
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [pin_dir, &maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| KernelError::PinDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        let unix_offsets = crate::net::unix_offsets();
        let (file_offsets, file_offsets_error) = crate::files::kernel::offsets();
        let lsm_offsets =
            crate::btf::lsm_offsets(Path::new(crate::btf::VMLINUX_BTF)).unwrap_or_default();
        let (self_offsets, self_offsets_error) = crate::selfprot::offsets();
        let mut ebpf = EbpfLoader::new()
            .override_global(maps::LSM_OFFSETS_GLOBAL, &lsm_offsets, true)
            .default_map_pin_directory(&maps_dir)
            .override_global(maps::OFFSETS_GLOBAL, offsets, true)
            .override_global(maps::DAEMON_TGID_GLOBAL, &daemon_tgid, true)
            .override_global(maps::UNIX_OFFSETS_GLOBAL, &unix_offsets, true)
            .override_global(maps::FILE_OFFSETS_GLOBAL, &file_offsets, true)
            .override_global(maps::SELF_OFFSETS_GLOBAL, &self_offsets, true)
            .load(OBJECT)
            .map_err(KernelError::Load)?;
        let btf = Btf::from_sys_fs().map_err(KernelError::Btf)?;
        for (tracepoint, pin_name) in TRACKERS {
            let name = tracker_program(pin_name);
            let err = |source| KernelError::Program { name, source };
            let prog = tracepoint_program(&mut ebpf, name)?;
            prog.load(tracepoint, &btf).map_err(err)?;
            let id = prog.attach().map_err(err)?;
            let link: FdLink = prog.take_link(id).map_err(err)?.into();
            replace_link_pin(link, &links_dir.join(pin_name))?;
        }
        {
            let (tracepoint, name) = KILLER;
            let err = |source| KernelError::Program { name, source };
            let prog = tracepoint_program(&mut ebpf, name)?;
            prog.load(tracepoint, &btf).map_err(err)?;
        }
        let pin = |link, path: &Path| replace_link_pin(link, path).map_err(|e| e.to_string());
        let (lsm, lsm_error) = match tier {
            TierChoice::Fallback => (None, None),
            _ if !lsm_available => (
                None,
                (tier == TierChoice::BpfLsm)
                    .then(|| "BPF LSM is not active on this kernel (see guard status)".to_owned()),
            ),
            _ if lsm_offsets.valid == 0 || file_offsets.valid == 0 => (
                None,
                Some("kernel BTF lacks a struct field the LSM programs read".to_owned()),
            ),
            _ => match crate::lsm::attach(&mut ebpf, &btf, &links_dir, pin) {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(e)),
            },
        };
        if let (TierChoice::BpfLsm, Some(e)) = (tier, &lsm_error) {
            return Err(KernelError::Lsm(e.clone()));
        }
        let net_attached = if let Some(lsm) = &lsm {
            crate::net::Attached {
                programs: guard_common::maps::lsm_programs::NET
                    .iter()
                    .map(|(p, _)| *p)
                    .collect(),
                unix_missing: None,
                lsm: lsm.hooks.iter().any(|h| h == "socket_connect"),
                raw: crate::net::RawCoverage::All,
            }
        } else {
            crate::net::attach(
                &mut ebpf,
                OBJECT,
                &links_dir,
                &unix_offsets,
                |link, path| {
                    replace_link_pin(link, path).map_err(|e| crate::net::NetError::PinLink {
                        path: path.to_path_buf(),
                        source: Box::new(e),
                    })
                },
            )?
        };
        let net = crate::net::take_maps(&mut ebpf, &maps_dir)?;
        let files = crate::files::kernel::load(
            &mut ebpf,
            &btf,
            &links_dir,
            file_offsets_error,
            lsm.as_ref(),
            pin,
        );
        if lsm.is_some() {
            crate::lsm::remove_fallback_pins(&links_dir);
        } else {
            crate::lsm::detach(&links_dir);
        }
        let tier = if lsm.is_some() {
            Tier::BpfLsm
        } else {
            Tier::Fallback
        };
        // The daemon's tgid goes in before the programs attach: a restarted daemon takes over
        // from the old one at once.
        let mut guard_self = match crate::selfprot::SelfMaps::take(&mut ebpf) {
            Ok(m) => Some(m),
            Err((name, source)) => return Err(KernelError::Map { name, source }),
        };
        if let Some(m) = guard_self.as_mut() {
            m.set_daemon(daemon_tgid)
                .map_err(|source| KernelError::Map {
                    name: maps::SELF_STATE,
                    source,
                })?;
        }
        let self_attached = crate::selfprot::attach(
            &mut ebpf,
            &btf,
            &links_dir,
            self_offsets_error,
            |link, path| replace_link_pin(link, path).map_err(|e| e.to_string()),
        );
        Ok(Self {
            pin_dir: pin_dir.to_path_buf(),
            tags: take_map(&mut ebpf, maps::TAGS)?,
            agent_exes: take_map(&mut ebpf, maps::AGENT_EXES)?,
            agent_scripts: take_map(&mut ebpf, maps::AGENT_SCRIPTS)?,
            interpreters: take_map(&mut ebpf, maps::INTERPRETERS)?,
            counters: take_map(&mut ebpf, maps::COUNTERS)?,
            events: Some(take_map(&mut ebpf, maps::EVENTS)?),
            net: Some(net),
            net_attached,
            files,
            tier,
            lsm,
            lsm_error,
            guard_self,
            self_attached,
            keeper: None,
            _ebpf: ebpf,
        })
    }

    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Whether the kill program is attached (its link is pinned).
    pub fn killer_attached(&self) -> bool {
        self.pin_dir.join("links").join(KILLER.1).exists()
    }

    /// Attach (`on`) or detach the kill program. Attach before installing rules that kill;
    /// detach only after the last such rule is gone.
    /// The bpf-lsm tier kills from its own programs and never needs it.
    pub fn set_killer(&mut self, on: bool) -> Result<(), KernelError> {
        let on = on && self.tier == Tier::Fallback;
        let (_, name) = KILLER;
        let pin = self.pin_dir.join("links").join(name);
        if on == pin.exists() {
            return Ok(());
        }
        if !on {
            if let Some(k) = &self.keeper {
                k.release(&pin);
            }
            return fs::remove_file(&pin)
                .map_err(|source| KernelError::PinDir { path: pin, source });
        }
        let err = |source| KernelError::Program { name, source };
        let prog = tracepoint_program(&mut self._ebpf, name)?;
        let id = prog.attach().map_err(err)?;
        let link: FdLink = prog.take_link(id).map_err(err)?.into();
        replace_link_pin(link, &pin)
    }

    /// The event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// Sum of each per-CPU counter, by name.
    pub fn counters(&self) -> Vec<(&'static str, u64)> {
        COUNTER_NAMES
            .iter()
            .enumerate()
            .map(|(i, name)| {
                let total = self
                    .counters
                    .get(&(i as u32), 0)
                    .map(|v| v.iter().sum())
                    .unwrap_or(0);
                (*name, total)
            })
            .collect()
    }

    /// Names of the links pinned under the pin directory.
    pub fn pinned_links(pin_dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(pin_dir.join("links"))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .filter_map(|e| e.file_name().into_string().ok())
            .collect();
        names.sort();
        names
    }
}

/// The `tp_btf` program `name` of the object.
fn tracepoint_program<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut BtfTracePoint, KernelError> {
    ebpf.program_mut(name)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(|source| KernelError::Program { name, source })
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or(KernelError::NoMap { name })?;
    T::try_from(map).map_err(|source| KernelError::Map { name, source })
}

/// Pin `link` at `path`, replacing an older pin atomically: the old link is detached only
/// after the new one is attached and pinned.
fn replace_link_pin(link: FdLink, path: &Path) -> Result<(), KernelError> {
    // bpffs refuses names with a dot.
    let tmp = path.with_file_name(format!(
        "{}_new",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("link")
    ));
    let _ = fs::remove_file(&tmp);
    let pin_err = |source: Box<dyn std::error::Error + Send + Sync>| KernelError::Pin {
        path: path.to_path_buf(),
        source,
    };
    link.pin(&tmp).map_err(|e| pin_err(Box::new(e)))?;
    fs::rename(&tmp, path).map_err(|e| pin_err(Box::new(e)))?;
    Ok(())
}

/// Remove every pin guard created (maps and links): enforcement stops.
pub fn uninstall(pin_dir: &Path) -> io::Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(pin_dir)?;
    Ok(true)
}
