//! Network enforcement from userspace: attaching the cgroup sock_addr programs, compiling the
//! policy's `endpoints:` into the rule maps, keeping hostname rules resolved, and acting on
//! the kernel's decisions (the reason line on the offender's stderr, kill-tree).
//!
//! - [`attach`] (called by `Kernel::load`) loads `connect4/6` and `sendmsg4/6` with aya, the
//!   unix programs with guard's own loader (`unix.rs`), attaches everything to the cgroup v2
//!   root and pins the links.
//! - [`plan`] turns rules and resolved addresses into map contents (pure, unit-tested).
//! - [`controller::NetHandle`] owns the maps, installs plans, runs the DNS refresher and
//!   responds to events.

pub mod controller;
pub mod dns;
pub mod plan;
pub mod unix;

use std::{
    fs::File,
    io,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError},
    programs::{CgroupAttachMode, CgroupSock, CgroupSockAddr, ProgramError, links::FdLink},
};
use guard_common::{
    Tag,
    maps::{self, programs},
    net::{Ip4Data, Ip6Data, NetRule, RuleSet, UnixKey},
    offsets::{UNIX_CTX_READ, UnixOffsets},
};

pub use controller::{NetConfig, NetHandle};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("no cgroup v2 mount: the network hooks attach to the cgroup v2 root")]
    NoCgroup2,
    #[error("cgroup v2 root {path}: {source}")]
    Cgroup {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("program {name}: {source}")]
    Program {
        name: &'static str,
        #[source]
        source: ProgramError,
    },
    #[error("unix socket programs: {0}")]
    UnixObject(String),
    #[error("unix socket program {name} refused by the kernel ({}):\n{log}", errno_name(*.errno))]
    UnixLoad {
        name: &'static str,
        errno: i32,
        log: String,
    },
    #[error("attaching unix socket program {name} to the cgroup: {}", errno_name(*.errno))]
    UnixAttach { name: &'static str, errno: i32 },
    #[error("pinning link {path}: {}", errno_name(*.errno))]
    Pin { path: PathBuf, errno: i32 },
    #[error("pinning link {path}: {source}")]
    PinLink {
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
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(transparent)]
    Dns(#[from] dns::DnsError),
}

fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno);
    format!("{e:?}: {}", e.desc())
}

/// The maps of network enforcement, owned by the [`NetHandle`].
pub struct NetMaps {
    pub net4: LpmTrie<MapData, Ip4Data, RuleSet>,
    pub net6: LpmTrie<MapData, Ip6Data, RuleSet>,
    pub unix: HashMap<MapData, UnixKey, RuleSet>,
    pub rules: Array<MapData, NetRule>,
    /// The raw-socket rule (one entry).
    pub raw: Array<MapData, NetRule>,
    /// A second handle on the tag map (from its pin), for kill-tree.
    pub tags: HashMap<MapData, u32, Tag>,
}

/// What [`attach`] attached.
#[derive(Clone, Debug, Default)]
pub struct Attached {
    /// Program names attached to the cgroup.
    pub programs: Vec<&'static str>,
    /// Why the unix programs are not attached, if they are not.
    pub unix_missing: Option<String>,
    /// The programs are the bpf-lsm tier's `socket_connect`/`socket_sendmsg`.
    pub lsm: bool,
    /// What the raw-socket rule covers (`guard status`).
    pub raw: RawCoverage,
}

/// Which new sockets the raw-socket rule sees on this tier.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum RawCoverage {
    /// BPF LSM `socket_create`: raw IPv4/IPv6 and packet sockets.
    #[default]
    All,
    /// cgroup `sock_create`: raw IPv4/IPv6 sockets; packet sockets never reach it.
    Inet,
    /// The program did not load or attach: why.
    Missing(String),
}

impl RawCoverage {
    /// For `guard status`.
    pub fn describe(&self) -> String {
        match self {
            Self::All => "enforced (raw IPv4/IPv6 and packet sockets, LSM socket_create)".into(),
            Self::Inet => "enforced for raw IPv4/IPv6 sockets (cgroup sock_create); packet \
                           sockets (AF_PACKET) are not covered without BPF LSM"
                .into(),
            Self::Missing(why) => format!("not-loaded: {why}"),
        }
    }
}

/// The IP hooks and their aya programs.
const INET_PROGRAMS: [&str; 4] = [
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
];

/// Offsets the unix programs need, from the running kernel's BTF; `valid == 0` when the
/// kernel has no unix sock_addr hooks (no `bpf_sock_addr_kern.uaddrlen`, Linux < 6.7).
pub fn unix_offsets() -> UnixOffsets {
    let Ok(btf) = btf_rs::Btf::from_file(crate::btf::VMLINUX_BTF) else {
        return UnixOffsets::default();
    };
    let off = |s, m| crate::btf::member_offset(&btf, s, m).ok();
    match (
        off("bpf_sock_addr_kern", "uaddr"),
        off("bpf_sock_addr_kern", "uaddrlen"),
        off("sockaddr_un", "sun_path"),
    ) {
        (Some(ctx_uaddr), Some(ctx_uaddrlen), Some(sun_path))
            if ctx_uaddr + 8 <= UNIX_CTX_READ && ctx_uaddrlen + 4 <= UNIX_CTX_READ =>
        {
            UnixOffsets {
                ctx_uaddr,
                ctx_uaddrlen,
                sun_path,
                valid: 1,
            }
        }
        _ => UnixOffsets::default(),
    }
}

/// Load the network programs of `ebpf`, attach them to the cgroup v2 root and pin their
/// links under `links_dir`. Must run before maps are taken out of `ebpf`. The unix programs
/// are optional (kernel ≥ 6.7): their absence is reported in [`Attached::unix_missing`]; any
/// other failure is an error.
pub fn attach(
    ebpf: &mut Ebpf,
    object: &[u8],
    links_dir: &Path,
    unix: &UnixOffsets,
    replace_link_pin: impl Fn(FdLink, &Path) -> Result<(), NetError>,
) -> Result<Attached, NetError> {
    let root = crate::probe::find_cgroup2().ok_or(NetError::NoCgroup2)?;
    let cgroup = File::open(&root).map_err(|source| NetError::Cgroup {
        path: root.clone(),
        source,
    })?;
    let mut attached = Attached::default();
    for name in INET_PROGRAMS {
        let err = |source| NetError::Program { name, source };
        let prog: &mut CgroupSockAddr = ebpf
            .program_mut(name)
            .ok_or(ProgramError::NotLoaded)
            .and_then(TryInto::try_into)
            .map_err(err)?;
        prog.load().map_err(err)?;
        let id = prog
            .attach(&cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        let link: FdLink = prog.take_link(id).map_err(err)?.try_into().map_err(
            |e: aya::programs::links::LinkError| {
                err(ProgramError::IOError(io::Error::other(e.to_string())))
            },
        )?;
        replace_link_pin(link, &links_dir.join(name))?;
        attached.programs.push(name);
    }
    attached.raw = match attach_sock_create(ebpf, &cgroup, links_dir, &replace_link_pin) {
        Ok(()) => {
            attached.programs.push(programs::SOCK_CREATE);
            RawCoverage::Inet
        }
        Err(e) => RawCoverage::Missing(e.to_string()),
    };
    if unix.valid == 0 {
        attached.unix_missing =
            Some("this kernel has no unix sock_addr hooks (needs Linux >= 6.7)".into());
        return Ok(attached);
    }
    for (name, link) in unix::load_and_attach(object, ebpf, &cgroup)? {
        unix::replace_pin(&link, &links_dir.join(name))?;
        attached.programs.push(name);
    }
    Ok(attached)
}

/// The raw-socket program on the cgroup root. Optional: a kernel that refuses it leaves
/// the raw-socket rule `not-loaded` (reported), not the daemon down.
fn attach_sock_create(
    ebpf: &mut Ebpf,
    cgroup: &File,
    links_dir: &Path,
    replace_link_pin: &impl Fn(FdLink, &Path) -> Result<(), NetError>,
) -> Result<(), NetError> {
    let name = programs::SOCK_CREATE;
    let err = |source| NetError::Program { name, source };
    let prog: &mut CgroupSock = ebpf
        .program_mut(name)
        .ok_or(ProgramError::NotLoaded)
        .and_then(TryInto::try_into)
        .map_err(err)?;
    prog.load().map_err(err)?;
    let id = prog.attach(cgroup, CgroupAttachMode::Single).map_err(err)?;
    let link: FdLink = prog.take_link(id).map_err(err)?.try_into().map_err(
        |e: aya::programs::links::LinkError| {
            err(ProgramError::IOError(io::Error::other(e.to_string())))
        },
    )?;
    replace_link_pin(link, &links_dir.join(name))
}

/// Take the network maps out of `ebpf`; the tag map is opened again from its pin.
pub fn take_maps(ebpf: &mut Ebpf, maps_dir: &Path) -> Result<NetMaps, NetError> {
    fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, NetError>
    where
        T: TryFrom<aya::maps::Map, Error = MapError>,
    {
        let map = ebpf.take_map(name).ok_or(NetError::NoMap { name })?;
        T::try_from(map).map_err(|source| NetError::Map { name, source })
    }
    let tags_err = |source| NetError::Map {
        name: maps::TAGS,
        source,
    };
    let tags = MapData::from_pin(maps_dir.join(maps::TAGS)).map_err(tags_err)?;
    Ok(NetMaps {
        net4: take(ebpf, maps::NET4)?,
        net6: take(ebpf, maps::NET6)?,
        unix: take(ebpf, maps::NET_UNIX)?,
        rules: take(ebpf, maps::NET_RULES)?,
        raw: take(ebpf, maps::NET_RAW)?,
        tags: HashMap::try_from(aya::maps::Map::HashMap(tags)).map_err(tags_err)?,
    })
}
