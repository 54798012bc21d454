//! One loader for every program: the table ([`table`]) declares each program once, and
//! [`Attacher::attach`] is the only load → attach → pin sequence, whatever the kind (BTF
//! tracepoint, LSM hook, fentry/fexit, cgroup sock_addr/sock_create/device, and the unix
//! sock_addr and fmod_ret programs loaded by hand).
//! Subsystems say which rows they want and report the results their own way; nothing else
//! calls `program_mut`, `load`, `attach` or pins a link.

mod by_hand;
pub mod kfunc;
mod sys;
pub mod table;

use std::{
    fs::File,
    io,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Btf, Ebpf,
    maps::MapError,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupDevice, CgroupSkb, CgroupSkbAttachType, CgroupSock,
        CgroupSockAddr, FEntry, FExit, Lsm, ProgramError, links::FdLink,
    },
};
pub use sys::{
    Link, bpf_attach_type, link_create, link_program_id, obj_get, obj_pin, pin_replacing,
    sys_bpf_fd, tracing_link, zeroed_attr,
};
pub use table::{Family, Kind, Need, Row};

/// What [`Attacher::attach_family`] attached, and why not the rest.
#[derive(Debug, Default)]
pub struct FamilyAttached {
    pub attached: Vec<Row>,
    /// `hook: reason`, one per row that did not attach.
    pub failed: Vec<String>,
}

/// The compiled kernel object, embedded in the binary.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/guard"));

/// Why a program is not attached. `Display` gives the reason only; callers name the hook.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    #[error("the program is not in the object")]
    Missing,
    #[error("this kernel has no such hook")]
    NoHook,
    #[error("{0}")]
    Load(String),
    #[error("program refused by the kernel ({}){}", errno_name(*.errno), verifier_log(log))]
    ByHandLoad { errno: i32, log: String },
    #[error("attach: {0}")]
    Attach(String),
    #[error("pinning link {path}: {source}")]
    Pin {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("no cgroup v2 mount: the cgroup programs attach to the cgroup v2 root")]
    NoCgroup2,
    #[error("cgroup v2 root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("relocating the object for the programs loaded by hand: {0}")]
    ByHandObject(String),
}

/// The verifier's log after a colon, or nothing when the kernel refused before verifying.
fn verifier_log(log: &str) -> String {
    if log.trim().is_empty() {
        String::new()
    } else {
        format!(":\n{log}")
    }
}

fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{e:?}: {}", e.desc())
}

/// A program error with the verifier's log, if there is one.
pub fn verifier_text(e: &ProgramError) -> String {
    match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => format!("{io_error}\n{verifier_log}"),
        other => other.to_string(),
    }
}

/// Take map `name` out of `ebpf` as `T`.
pub fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, (&'static str, MapError)>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf
        .take_map(name)
        .ok_or((name, MapError::InvalidName { name: name.into() }))?;
    T::try_from(map).map_err(|e| (name, e))
}

/// The tag map, opened again from its pin (for subsystems that keep their own handle).
pub fn open_pinned_tags(
    maps_dir: &Path,
) -> Result<aya::maps::HashMap<aya::maps::MapData, u32, guard_common::Tag>, (&'static str, MapError)>
{
    open_pinned_hash(maps_dir, guard_common::maps::TAGS)
}

/// Hash map `name`, opened again from its pin under `maps_dir`.
pub fn open_pinned_hash<K: aya::Pod, V: aya::Pod>(
    maps_dir: &Path,
    name: &'static str,
) -> Result<aya::maps::HashMap<aya::maps::MapData, K, V>, (&'static str, MapError)> {
    let data = aya::maps::MapData::from_pin(maps_dir.join(name)).map_err(|e| (name, e))?;
    aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).map_err(|e| (name, e))
}

/// Load a cgroup program of aya type `$ty` and attach it to the cgroup v2 root.
macro_rules! cgroup_link {
    ($at:expr, $row:expr, $ty:ty $(, $attach_type:expr)?) => {{
        let cgroup = $at.cgroup()?;
        let prog: &mut $ty = program($at.ebpf, $row.name)?;
        prog.load()
            .map_err(|e| AttachError::Load(verifier_text(&e)))?;
        let id = prog
            .attach(&cgroup, $($attach_type,)? CgroupAttachMode::Single)
            .map_err(attach_err)?;
        let link: FdLink = prog
            .take_link(id)
            .map_err(attach_err)?
            .try_into()
            .map_err(attach_err)?;
        Link::Aya(link)
    }};
}

/// Attaches rows of the table to the running kernel and pins their links under `links_dir`.
pub struct Attacher<'a> {
    ebpf: &'a mut Ebpf,
    btf: &'a Btf,
    links_dir: &'a Path,
    cgroup: Option<File>,
    vmlinux: Option<&'a crate::btf::Vmlinux>,
    /// The object aya loaded (kfunc calls patched), for the programs loaded by hand.
    object: &'a [u8],
    by_hand: Option<aya_obj::Object>,
}

impl<'a> Attacher<'a> {
    /// `vmlinux` answers which LSM hooks the kernel has (needed for LSM rows only); `object`
    /// is the object `ebpf` was loaded from.
    pub fn new(
        ebpf: &'a mut Ebpf,
        btf: &'a Btf,
        links_dir: &'a Path,
        vmlinux: Option<&'a crate::btf::Vmlinux>,
        object: &'a [u8],
    ) -> Self {
        Self {
            ebpf,
            btf,
            links_dir,
            cgroup: None,
            vmlinux,
            object,
            by_hand: None,
        }
    }

    /// The object, for what the loader does not do (taking maps).
    pub fn ebpf(&mut self) -> &mut Ebpf {
        self.ebpf
    }

    /// Attach every row of `family`, in table order: the rows that attached, and `hook:
    /// reason` for each that did not. A hook the kernel lacks is no failure for a row that
    /// attaches only where its hook exists.
    pub fn attach_family(&mut self, family: Family) -> FamilyAttached {
        let mut out = FamilyAttached::default();
        for row in table::family(family) {
            match self.attach(&row) {
                Ok(()) => out.attached.push(row),
                Err(AttachError::NoHook) if row.need == Need::WhereHookExists => {}
                Err(e) => out.failed.push(format!("{}: {e}", row.hook())),
            }
        }
        out
    }

    /// Load `row`'s program, attach it and pin its link as `links/<row.pin>`, replacing an
    /// older pin atomically.
    pub fn attach(&mut self, row: &Row) -> Result<(), AttachError> {
        let link = match row.kind {
            Kind::TpBtf(_) | Kind::FExit(_) | Kind::FEntry(_) => {
                self.load_only(row)?;
                attached_link(self.ebpf, row)?
            }
            Kind::Lsm(hook) => {
                let vmlinux = self
                    .vmlinux
                    .ok_or_else(|| AttachError::Load("no kernel BTF to check LSM hooks".into()))?;
                if !vmlinux.has_lsm_hook(hook) {
                    return Err(AttachError::NoHook);
                }
                let prog: &mut Lsm = program(self.ebpf, row.name)?;
                prog.load(hook, self.btf)
                    .map_err(|e| AttachError::Load(verifier_text(&e)))?;
                let id = prog.attach().map_err(attach_err)?;
                Link::Aya(prog.take_link(id).map_err(attach_err)?.into())
            }
            // The aya cgroup program types share their API but no trait.
            Kind::SockAddr => cgroup_link!(self, row, CgroupSockAddr),
            Kind::SockCreate => cgroup_link!(self, row, CgroupSock),
            Kind::Egress => cgroup_link!(self, row, CgroupSkb, CgroupSkbAttachType::Egress),
            Kind::Device => {
                let cgroup = self.cgroup()?;
                let prog: &mut CgroupDevice = program(self.ebpf, row.name)?;
                prog.load()
                    .map_err(|e| AttachError::Load(verifier_text(&e)))?;
                // aya 0.14 cannot turn a cgroup device link into a pinnable FdLink.
                let fd = prog.fd().map_err(attach_err)?;
                let link = link_create(
                    fd.as_fd(),
                    cgroup.as_fd(),
                    bpf_attach_type::BPF_CGROUP_DEVICE,
                )
                .map_err(|e| AttachError::Attach(format!("bpf_link_create: {e}")))?;
                Link::Raw(link)
            }
            Kind::Unix(attach) => {
                let cgroup = self.cgroup()?;
                let prog = self.load_by_hand(row, by_hand::Target::Cgroup(attach))?;
                let link = link_create(prog.as_fd(), cgroup.as_fd(), attach)
                    .map_err(|e| AttachError::Attach(format!("attaching to the cgroup: {e}")))?;
                Link::Raw(link)
            }
            Kind::FModRet(function) => {
                let id = self
                    .btf
                    .id_by_type_name_kind(function, aya_obj::btf::BtfKind::Func)
                    .map_err(|_| AttachError::NoHook)?;
                let prog = self.load_by_hand(row, by_hand::Target::ModifyReturn(id))?;
                let link = tracing_link(prog.as_fd())
                    .map_err(|e| AttachError::Attach(format!("bpf_raw_tracepoint_open: {e}")))?;
                Link::Raw(link)
            }
        };
        let path = self.links_dir.join(row.pin);
        pin_replacing(link, &path).map_err(|source| AttachError::Pin { path, source })
    }

    /// Load `row`'s program without attaching it ([`attach_loaded`] attaches it later).
    pub fn load_only(&mut self, row: &Row) -> Result<(), AttachError> {
        let load_err = |e: ProgramError| AttachError::Load(verifier_text(&e));
        match row.kind {
            Kind::TpBtf(tp) => {
                let typedef = format!("btf_trace_{tp}");
                if self
                    .btf
                    .id_by_type_name_kind(&typedef, aya_obj::btf::BtfKind::Typedef)
                    .is_err()
                {
                    return Err(AttachError::NoHook);
                }
                let prog: &mut BtfTracePoint = program(self.ebpf, row.name)?;
                prog.load(tp, self.btf).map_err(load_err)
            }
            Kind::FExit(function) => {
                let prog: &mut FExit = program(self.ebpf, row.name)?;
                prog.load(function, self.btf).map_err(load_err)
            }
            Kind::FEntry(function) => {
                let prog: &mut FEntry = program(self.ebpf, row.name)?;
                prog.load(function, self.btf).map_err(load_err)
            }
            _ => Err(AttachError::Attach(
                "only tracing programs are loaded ahead of attaching".into(),
            )),
        }
    }

    /// Load `row`'s program from the object relocated against the loaded maps.
    fn load_by_hand(
        &mut self,
        row: &Row,
        target: by_hand::Target,
    ) -> Result<std::os::fd::OwnedFd, AttachError> {
        if self.by_hand.is_none() {
            let obj =
                by_hand::relocated(self.object, self.ebpf).map_err(AttachError::ByHandObject)?;
            self.by_hand = Some(obj);
        }
        let obj = self.by_hand.as_ref().expect("set above");
        by_hand::load(obj, row.name, target)
            .map_err(|(errno, log)| AttachError::ByHandLoad { errno, log })
    }

    fn cgroup(&mut self) -> Result<File, AttachError> {
        if self.cgroup.is_none() {
            let root = crate::paths::find_cgroup2().ok_or(AttachError::NoCgroup2)?;
            let file = File::open(&root).map_err(|source| AttachError::Cgroup {
                path: root.clone(),
                source,
            })?;
            self.cgroup = Some(file);
        }
        let file = self.cgroup.as_ref().expect("set above");
        file.try_clone().map_err(|source| AttachError::Cgroup {
            path: PathBuf::from("cgroup v2 root"),
            source,
        })
    }
}

/// What one attached program costs, from the kernel's own accounting (counted only while
/// `kernel.bpf_stats_enabled` is 1).
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ProgramCost {
    /// The link's pin name (the program's name in guard-ebpf, or its tracker pin).
    pub name: String,
    pub id: u32,
    pub runs: u64,
    pub run_ns: u64,
}

/// Whether the kernel is counting program run time (`kernel.bpf_stats_enabled`).
pub fn bpf_stats_enabled() -> bool {
    std::fs::read_to_string("/proc/sys/kernel/bpf_stats_enabled").is_ok_and(|s| s.trim() == "1")
}

/// The cost of every program linked under `links_dir`, by the program id of each link pin.
pub fn program_costs(links_dir: &Path) -> Vec<ProgramCost> {
    let mut by_id = std::collections::HashMap::new();
    for info in aya::programs::loaded_programs().flatten() {
        by_id.insert(info.id(), (info.run_count(), info.run_time()));
    }
    let mut out: Vec<ProgramCost> = std::fs::read_dir(links_dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            if name.ends_with("_new") {
                return None;
            }
            let id = link_program_id(&e.path()).ok()?;
            let (runs, time) = by_id.get(&id).copied().unwrap_or_default();
            Some(ProgramCost {
                name,
                id,
                runs,
                run_ns: u64::try_from(time.as_nanos()).unwrap_or(u64::MAX),
            })
        })
        .collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Attach a tracing program loaded earlier with [`Attacher::load_only`], pinning its link at
/// `path`.
pub fn attach_loaded(ebpf: &mut Ebpf, row: &Row, path: &Path) -> Result<(), AttachError> {
    let link = attached_link(ebpf, row)?;
    pin_replacing(link, path).map_err(|source| AttachError::Pin {
        path: path.to_path_buf(),
        source,
    })
}

/// Attach a loaded tracing program (`tp_btf`, `fexit`) and take its link.
fn attached_link(ebpf: &mut Ebpf, row: &Row) -> Result<Link, AttachError> {
    let link: FdLink = match row.kind {
        Kind::TpBtf(_) => {
            let prog: &mut BtfTracePoint = program(ebpf, row.name)?;
            let id = prog.attach().map_err(attach_err)?;
            prog.take_link(id).map_err(attach_err)?.into()
        }
        Kind::FExit(_) => {
            let prog: &mut FExit = program(ebpf, row.name)?;
            let id = prog.attach().map_err(attach_err)?;
            prog.take_link(id).map_err(attach_err)?.into()
        }
        Kind::FEntry(_) => {
            let prog: &mut FEntry = program(ebpf, row.name)?;
            let id = prog.attach().map_err(attach_err)?;
            prog.take_link(id).map_err(attach_err)?.into()
        }
        _ => return Err(AttachError::Attach("not a tracing program".into())),
    };
    Ok(Link::Aya(link))
}

fn program<'e, T>(ebpf: &'e mut Ebpf, name: &str) -> Result<&'e mut T, AttachError>
where
    &'e mut T: TryFrom<&'e mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf.program_mut(name).ok_or(AttachError::Missing)?;
    prog.try_into()
        .map_err(|e: ProgramError| AttachError::Attach(e.to_string()))
}

fn attach_err(e: impl std::fmt::Display) -> AttachError {
    AttachError::Attach(e.to_string())
}
