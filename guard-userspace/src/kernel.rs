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
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf},
};
use guard_common::{
    Tag,
    agent::{EnvKey, NameKey},
    event::COUNTER_NAMES,
    maps::{self, programs},
};

use crate::btf::Offsets;
use crate::killer::{KillChoice, KillVia};
use crate::loader::{
    AttachError, Attacher, OBJECT, kfunc,
    table::{self, Family},
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

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("pin directory {path}: {source}")]
    PinDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("kill rules: {0}")]
    KillWay(String),
    #[error("loading guard's eBPF object: {0}")]
    Load(#[source] aya::EbpfError),
    #[error("preparing guard's eBPF object: {0}")]
    Object(String),
    #[error("reading kernel BTF: {0}")]
    Btf(#[source] aya::BtfError),
    #[error("program {name}: {source}")]
    Attach {
        name: &'static str,
        #[source]
        source: AttachError,
    },
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("the bpf-lsm tier was asked for and cannot enforce: {0}")]
    Lsm(String),
    #[error(
        "the maps pinned in {dir} have layout {found}, this guard uses layout {want}: they \
         cannot be read with this version's structures. Stop the old daemon, run `guard daemon \
         --uninstall --pin-dir {parent}` (enforcement stops until this daemon starts), then \
         start this one",
        dir = .dir.display(),
        parent = .dir.parent().unwrap_or(.dir).display()
    )]
    Layout { dir: PathBuf, found: u32, want: u32 },
}

/// The program behind the tracker pinned as `pin_name`: kernels before 6.16 pass no
/// `group_dead` to `sched_process_exit` (a program reading it is rejected), and get the variant
/// that reads `signal->live` instead.
fn tracker_program(pin_name: &'static str, exit_params: Option<usize>) -> &'static str {
    if pin_name != programs::EXIT {
        return pin_name;
    }
    match exit_params {
        Some(n) if n < 3 => programs::EXIT_NO_GROUP_DEAD,
        _ => programs::EXIT,
    }
}

/// The object in the kernel with its trackers attached, while the start-up attaches the
/// tier's and the subsystems' programs through [`Loading::attacher`] and takes their maps;
/// [`Loading::finish`] then takes the trackers' maps.
pub struct Loading {
    pin_dir: PathBuf,
    ebpf: Ebpf,
    btf: Btf,
    /// The object `ebpf` was loaded from (kfunc calls patched for this kernel).
    object: Vec<u8>,
    kill_via: KillVia,
    tag_map: TagMapInfo,
}

/// What the load step is asked for besides the tier.
#[derive(Clone, Copy, Debug)]
pub struct LoadOptions {
    pub kill: KillChoice,
    /// The probe's answer: cgroup programs may call `bpf_send_signal`.
    pub cgroup_can_signal: bool,
    /// Entries of the tag map when it is created (a pinned map keeps its size).
    pub tag_map_size: u32,
    /// On the fallback tier, attach the page cache's read tracepoints for the secret scan
    /// (every read on the host then pays for a program run).
    pub fallback_read_scan: bool,
}

/// The tag map as loaded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TagMapInfo {
    /// Its `max_entries`: the pinned map's, when one was reused.
    pub size: u32,
    /// A child the map cannot take is killed by the fork tracker before it runs
    /// (`bpf_send_signal_task`); otherwise the daemon kills it on the event.
    pub kernel_kills_children: bool,
}

impl Loading {
    /// Load the programs (reusing pinned maps), attach the trackers and pin their links, and
    /// load the kill programs of the first way of `kill` the kernel takes (attached later,
    /// while a policy kills). `cgroup_can_signal` is the probe's answer.
    pub fn load(
        pin_dir: &Path,
        offsets: &Offsets,
        opts: &LoadOptions,
    ) -> Result<Self, KernelError> {
        let candidates = KillVia::candidates(opts.kill, opts.cgroup_can_signal);
        if candidates == [KillVia::InPlace] && !opts.cgroup_can_signal {
            return Err(KernelError::KillWay(
                "--kill-via in-place: this kernel's verifier refuses bpf_send_signal in cgroup \
                 programs (see `guard status`, feature cgroup-send-signal)"
                    .into(),
            ));
        }
        let maps_dir = pin_dir.join("maps");
        let links_dir = pin_dir.join("links");
        for dir in [pin_dir, &maps_dir, &links_dir] {
            fs::create_dir_all(dir).map_err(|source| KernelError::PinDir {
                path: dir.to_path_buf(),
                source,
            })?;
        }
        check_layout(&maps_dir)?;
        remove_stale_links(&links_dir);
        let in_place = u32::from(candidates == [KillVia::InPlace]);
        let btf = Btf::from_sys_fs().map_err(KernelError::Btf)?;
        let object = kfunc::patch(OBJECT, &btf).map_err(KernelError::Object)?;
        let signal_task = u32::from(object.signal_task);
        let mut ebpf = EbpfLoader::new()
            .default_map_pin_directory(&maps_dir)
            .map_max_entries(maps::TAGS, opts.tag_map_size)
            .override_global(maps::OFFSETS_GLOBAL, &offsets.kernel, true)
            .override_global(maps::KILL_IN_PLACE_GLOBAL, &in_place, true)
            .override_global(maps::SIGNAL_TASK_GLOBAL, &signal_task, true)
            .override_global(maps::LSM_OFFSETS_GLOBAL, &offsets.lsm, true)
            .override_global(maps::UNIX_OFFSETS_GLOBAL, &offsets.unix, true)
            .override_global(maps::FILE_OFFSETS_GLOBAL, &offsets.file, true)
            .override_global(maps::SELF_OFFSETS_GLOBAL, &offsets.selfp, true)
            .load(&object.bytes)
            .map_err(KernelError::Load)?;
        stamp_layout(&maps_dir)?;
        let tag_map = TagMapInfo {
            size: map_size(&mut ebpf, maps::TAGS)?,
            kernel_kills_children: object.signal_task,
        };
        let mut loading = Self {
            pin_dir: pin_dir.to_path_buf(),
            ebpf,
            btf,
            object: object.bytes,
            kill_via: KillVia::InPlace,
            tag_map,
        };
        let links_dir = loading.links_dir();
        let mut at = Attacher::new(
            &mut loading.ebpf,
            &loading.btf,
            &links_dir,
            None,
            &loading.object,
        );
        // Before anything attaches: a way of killing the kernel refuses stops the start here.
        let kill_via = load_kill_way(&mut at, candidates)?;
        for row in table::family(Family::Tracker) {
            if row.name != tracker_program(row.pin, offsets.exit_params) {
                continue;
            }
            at.attach(&row).map_err(|source| KernelError::Attach {
                name: row.name,
                source,
            })?;
        }
        loading.kill_via = kill_via;
        Ok(loading)
    }

    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }

    pub fn maps_dir(&self) -> PathBuf {
        maps_dir(&self.pin_dir)
    }

    /// Attaches further rows of the loader table and lets the subsystems take their maps.
    pub fn attacher<'a>(
        &'a mut self,
        links_dir: &'a Path,
        vmlinux: &'a crate::btf::Vmlinux,
    ) -> Attacher<'a> {
        Attacher::new(
            &mut self.ebpf,
            &self.btf,
            links_dir,
            Some(vmlinux),
            &self.object,
        )
    }

    /// Take the trackers' maps; `tier` is the tier that enforces.
    pub fn finish(
        mut self,
        tier: Tier,
        lsm: Option<crate::lsm::LsmAttached>,
        lsm_error: Option<String>,
    ) -> Result<Kernel, KernelError> {
        let ebpf = &mut self.ebpf;
        fill_taint_readers(ebpf)?;
        Ok(Kernel {
            tags: take_map(ebpf, maps::TAGS)?,
            agent_exes: take_map(ebpf, maps::AGENT_EXES)?,
            agent_scripts: take_map(ebpf, maps::AGENT_SCRIPTS)?,
            interpreters: take_map(ebpf, maps::INTERPRETERS)?,
            agent_env: take_map(ebpf, maps::AGENT_ENV)?,
            agent_paths: take_map(ebpf, maps::AGENT_PATHS)?,
            agent_cgroups: take_map(ebpf, maps::AGENT_CGROUPS)?,
            agent_script_paths: take_map(ebpf, maps::AGENT_SCRIPT_PATHS)?,
            recognition: take_map(ebpf, maps::RECOGNITION)?,
            counters: take_map(ebpf, maps::COUNTERS)?,
            cap_ceiling: take_map(ebpf, maps::CAP_CEILING)?,
            events: Some(take_map(ebpf, maps::EVENTS)?),
            held: take_map(ebpf, maps::HELD)?,
            secret_maps: Some(SecretMaps {
                seen: take_map(ebpf, maps::SECRET_SEEN)?,
                reads: take_map(ebpf, maps::TREE_READS)?,
                verdicts: take_map(ebpf, maps::TREE_VERDICTS)?,
            }),
            pin_dir: self.pin_dir,
            tier,
            lsm,
            lsm_error,
            kill_via: self.kill_via,
            tag_map: self.tag_map,
            keeper: None,
            secret_reads: String::new(),
            deferred: Vec::new(),
            deputy_fmod: Vec::new(),
            _ebpf: self.ebpf,
        })
    }
}

/// Where the maps of the pins under `pin_dir` are.
pub fn maps_dir(pin_dir: &Path) -> PathBuf {
    pin_dir.join("maps")
}

/// The maps of the secret scan (`guard_common::secret`).
pub struct SecretMaps {
    /// The verdict on each file version agents read.
    pub seen: HashMap<MapData, guard_common::secret::FileVersion, u32>,
    /// What each tree read, as the kernel counts it (read only here).
    pub reads: HashMap<MapData, guard_common::ProcKey, guard_common::secret::TreeReads>,
    /// The daemon's answers, by tree.
    pub verdicts: HashMap<MapData, guard_common::ProcKey, guard_common::secret::TreeVerdict>,
}

/// The programs that act on the agent-written files they read (deferred execution).
fn fill_taint_readers(ebpf: &mut Ebpf) -> Result<(), KernelError> {
    let mut readers: HashMap<MapData, NameKey, u32> = take_map(ebpf, maps::TAINT_READERS)?;
    for (comm, kind) in guard_common::taint::READERS {
        let key = NameKey::new(comm.as_bytes(), guard_common::agent::COMM_LEN - 1);
        readers
            .insert(key, kind, 0)
            .map_err(|source| KernelError::Map {
                name: maps::TAINT_READERS,
                source,
            })?;
    }
    Ok(())
}

/// Loaded and attached programs plus handles to the trackers' maps.
pub struct Kernel {
    pin_dir: PathBuf,
    pub tags: HashMap<MapData, u32, Tag>,
    pub agent_exes: HashMap<MapData, NameKey, u32>,
    pub agent_scripts: HashMap<MapData, NameKey, u32>,
    pub interpreters: HashMap<MapData, NameKey, u32>,
    pub agent_env: LpmTrie<MapData, EnvKey, u32>,
    pub agent_paths: HashMap<MapData, guard_common::file::FileKey, guard_common::agent::AgentPath>,
    pub agent_cgroups: HashMap<MapData, u64, u32>,
    pub agent_script_paths: LpmTrie<MapData, guard_common::agent::ScriptPath, u32>,
    pub recognition: Array<MapData, guard_common::agent::Recognition>,
    pub counters: PerCpuArray<MapData, u64>,
    /// The capabilities refused to tagged processes (pinned).
    cap_ceiling: Array<MapData, guard_common::deputy::CapMask>,
    events: Option<RingBuf<MapData>>,
    /// The secret scan's maps.
    secret_maps: Option<SecretMaps>,
    /// Agent trees frozen by `guard freeze` (pinned).
    pub held: HashMap<MapData, guard_common::ProcKey, u64>,
    /// The tier that enforces: `BpfLsm` when the LSM programs are attached.
    pub tier: Tier,
    /// What the bpf-lsm tier attached (when it enforces).
    pub lsm: Option<crate::lsm::LsmAttached>,
    /// Why the bpf-lsm tier is not enforcing although it was asked for.
    pub lsm_error: Option<String>,
    /// How the fallback tier's cgroup programs kill.
    pub kill_via: KillVia,
    pub tag_map: TagMapInfo,
    /// Puts removed pins back; told before the daemon removes a pin itself.
    pub keeper: Option<std::sync::Arc<crate::pins::PinKeeper>>,
    /// What reports the files agents read to the secret scan (`guard status`).
    pub secret_reads: String,
    /// The fallback tier's deferred-execution hooks that attached (`fentry/…`).
    pub deferred: Vec<String>,
    /// The fallback tier's no-deputies hooks that attached (`fmod_ret/…`).
    pub deputy_fmod: Vec<String>,
    /// Keeps the programs' file descriptors for the daemon's lifetime.
    _ebpf: Ebpf,
}

impl Kernel {
    pub fn pin_dir(&self) -> &Path {
        &self.pin_dir
    }

    /// Where the maps are pinned.
    pub fn maps_dir(&self) -> PathBuf {
        maps_dir(&self.pin_dir)
    }

    /// Whether the kill programs are attached (their links are pinned).
    pub fn killer_attached(&self) -> bool {
        let links = self.pin_dir.join("links");
        self.kill_via
            .programs()
            .iter()
            .all(|name| links.join(name).exists())
    }

    /// Refuse tagged processes `caps` in the initial user namespace (the capability ceiling:
    /// bpf-lsm `capable`, fallback kill-on-detect in `cap_capable`).
    pub fn set_cap_ceiling(&mut self, caps: &[u8]) -> Result<(), KernelError> {
        use guard_common::deputy::{CEILING_KILL, CEILING_REFUSE};
        let mask = caps
            .iter()
            .filter(|c| **c < 64)
            .fold(0u64, |m, c| m | (1u64 << c));
        let kill = if self.tier == Tier::Fallback { mask } else { 0 };
        let err = |source| KernelError::Map {
            name: maps::CAP_CEILING,
            source,
        };
        self.cap_ceiling.set(CEILING_REFUSE, mask, 0).map_err(err)?;
        self.cap_ceiling.set(CEILING_KILL, kill, 0).map_err(err)
    }

    /// Attach (`on`) or detach the kill programs. Attach before installing rules that kill;
    /// detach only after the last such rule is gone. The bpf-lsm tier kills from its own
    /// programs and never needs them.
    pub fn set_killer(&mut self, on: bool) -> Result<(), KernelError> {
        let on = on && self.tier == Tier::Fallback;
        for row in table::family(Family::Killer) {
            let pin = self.pin_dir.join("links").join(row.pin);
            let wanted = on && self.kill_via.programs().contains(&row.name);
            if wanted == pin.exists() {
                continue;
            }
            if !wanted {
                if let Some(k) = &self.keeper {
                    k.release(&pin);
                }
                fs::remove_file(&pin)
                    .map_err(|source| KernelError::PinDir { path: pin, source })?;
                continue;
            }
            crate::loader::attach_loaded(&mut self._ebpf, &row, &pin).map_err(|source| {
                KernelError::Attach {
                    name: row.name,
                    source,
                }
            })?;
        }
        Ok(())
    }

    /// The event ring buffer (once).
    pub fn take_events(&mut self) -> Option<RingBuf<MapData>> {
        self.events.take()
    }

    /// The secret scan's maps, for the event pipeline.
    pub fn take_secret_maps(&mut self) -> Option<SecretMaps> {
        self.secret_maps.take()
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

/// The layout of the maps pinned in `maps_dir`: `None` when nothing is pinned there yet, 1
/// for pins from before the stamp existed.
pub fn pinned_layout(maps_dir: &Path) -> Option<u32> {
    let pinned = fs::read_dir(maps_dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| e.file_name().to_string_lossy().starts_with("GUARD_"));
    if !pinned {
        return None;
    }
    let version = MapData::from_pin(maps_dir.join(maps::LAYOUT))
        .ok()
        .and_then(|m| Array::<MapData, u32>::try_from(aya::maps::Map::Array(m)).ok())
        .and_then(|a| a.get(&0, 0).ok());
    Some(version.unwrap_or(1))
}

/// Refuse pins of another layout before aya reuses them.
fn check_layout(maps_dir: &Path) -> Result<(), KernelError> {
    match pinned_layout(maps_dir) {
        Some(found) if found != maps::LAYOUT_VERSION => Err(KernelError::Layout {
            dir: maps_dir.to_path_buf(),
            found,
            want: maps::LAYOUT_VERSION,
        }),
        _ => Ok(()),
    }
}

/// Write this version's layout into the (new or reused) pinned stamp.
fn stamp_layout(maps_dir: &Path) -> Result<(), KernelError> {
    let err = |source| KernelError::Map {
        name: maps::LAYOUT,
        source,
    };
    let data = MapData::from_pin(maps_dir.join(maps::LAYOUT)).map_err(err)?;
    let mut stamp = Array::<MapData, u32>::try_from(aya::maps::Map::Array(data)).map_err(err)?;
    stamp.set(0, maps::LAYOUT_VERSION, 0).map_err(err)
}

/// `max_entries` of map `name` as the kernel has it.
fn map_size(ebpf: &mut Ebpf, name: &'static str) -> Result<u32, KernelError> {
    let err = |source| KernelError::Map { name, source };
    let map = ebpf.map(name).ok_or(KernelError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    })?;
    let info = match map {
        aya::maps::Map::HashMap(d) => d.info().map_err(err)?,
        _ => return Err(err(MapError::InvalidName { name: name.into() })),
    };
    Ok(info.max_entries())
}

fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, KernelError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    crate::loader::take_map(ebpf, name).map_err(|(name, source)| KernelError::Map { name, source })
}

/// Load the kill programs of the first of `candidates` the kernel takes.
fn load_kill_way(at: &mut Attacher<'_>, candidates: &[KillVia]) -> Result<KillVia, KernelError> {
    let mut refused = Vec::new();
    for &via in candidates {
        let loaded = via.programs().iter().try_for_each(|name| {
            let row = table::row(name).expect("kill programs are in the loader table");
            at.load_only(&row)
                .map_err(|e| format!("{}: {e}", row.hook()))
        });
        match loaded {
            Ok(()) => {
                if !refused.is_empty() {
                    tracing::info!(?via, refused = ?refused, "kill programs: using a slower way");
                }
                return Ok(via);
            }
            Err(e) => refused.push(e),
        }
    }
    let asked = match candidates {
        [only] => format!("--kill-via {}", only.name()),
        _ => "no way of killing loads".into(),
    };
    Err(KernelError::KillWay(format!(
        "{asked}: the kernel refuses {}",
        refused.join("; ")
    )))
}

/// Unpin links of programs this build does not have (an older version's): they would stay
/// attached, unseen by status and never replaced.
fn remove_stale_links(links_dir: &Path) {
    let known: Vec<&str> = table::table().iter().map(|r| r.pin).collect();
    for entry in fs::read_dir(links_dir).into_iter().flatten().flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if !known.contains(&name.as_ref()) && !name.ends_with("_new") {
            match fs::remove_file(entry.path()) {
                Ok(()) => tracing::info!(link = %name, "unpinned a program of an older version"),
                Err(e) => tracing::warn!(link = %name, error = %e, "cannot unpin a stale program"),
            }
        }
    }
}

/// Remove every pin guard created (maps and links): enforcement stops.
pub fn uninstall(pin_dir: &Path) -> io::Result<bool> {
    if !pin_dir.exists() {
        return Ok(false);
    }
    fs::remove_dir_all(pin_dir)?;
    Ok(true)
}
