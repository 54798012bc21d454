//! Network enforcement from userspace: attaching the cgroup sock_addr programs, compiling the
//! policy's `endpoints:` into the rule maps, keeping hostname rules resolved, and acting on
//! the kernel's decisions (the reason line on the offender's stderr, kill-tree).
//!
//! - [`attach`] attaches the fallback tier's cgroup programs (`connect4/6`, `sendmsg4/6`,
//!   `sock_create`, and the unix programs where the kernel has them) through the loader.
//! - [`plan`] turns rules and resolved addresses into map contents (pure, unit-tested).
//! - [`controller::NetHandle`] owns the maps, installs plans, runs the DNS refresher and
//!   responds to events.

pub mod controller;
pub mod deputies;
pub mod deputy_status;
pub mod dns;
pub mod plan;
mod respond;
pub mod unix_files;

use std::path::Path;

use aya::{
    Ebpf,
    maps::{Array, HashMap, LpmTrie, MapData, MapError},
};
use guard_common::{
    Tag, maps,
    net::{Ip4Data, Ip6Data, NetRule, RuleSet, UnixKey},
};

pub use controller::{NetConfig, NetHandle};

use crate::btf::Offsets;
use crate::loader::{
    Attacher,
    table::{self, Family, Kind},
    take_map,
};

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("program {name}: {source}")]
    Attach {
        name: &'static str,
        #[source]
        source: crate::loader::AttachError,
    },
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

/// The maps of network enforcement, owned by the [`NetHandle`].
pub struct NetMaps {
    pub net4: LpmTrie<MapData, Ip4Data, RuleSet>,
    pub net6: LpmTrie<MapData, Ip6Data, RuleSet>,
    pub unix: HashMap<MapData, UnixKey, RuleSet>,
    pub rules: Array<MapData, NetRule>,
    /// The raw-socket rule (one entry).
    pub raw: Array<MapData, NetRule>,
    /// The secrets rule and its pending form.
    pub secrets: Array<MapData, NetRule>,
    /// A second handle on the tag map (from its pin), for kill-tree.
    pub tags: HashMap<MapData, u32, Tag>,
}

/// What [`attach`] attached.
#[derive(Clone, Debug, Default)]
pub struct Attached {
    /// Program names attached to the cgroup.
    pub programs: Vec<&'static str>,
    /// Why the cgroup unix programs (names) are not attached, if they are not.
    pub unix_missing: Option<String>,
    /// Why the fallback tier's unix peer programs (`fmod_ret`) are not attached, if they are
    /// not ([`Attached::unix_peer`]).
    pub unix_peer_missing: Option<String>,
    /// The programs are the bpf-lsm tier's `socket_connect`/`socket_sendmsg`.
    pub lsm: bool,
    /// What the raw-socket rule covers (`guard status`).
    pub raw: RawCoverage,
    /// Why the check after NAT (`cgroup_skb/egress`) is not attached, if it is not.
    pub egress_missing: Option<String>,
}

impl Attached {
    /// The fallback tier's unix peer programs are attached (both of them): unix rules hold
    /// for the socket file the kernel resolved, whatever name led to it.
    pub fn unix_peer(&self) -> bool {
        !self.lsm && self.unix_peer_missing.is_none()
    }
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

/// Attach the fallback tier's network programs to the cgroup v2 root. The raw-socket
/// program is optional (its absence is reported in [`Attached::raw`]); the unix programs are
/// attached where the kernel has unix hooks (≥ 6.7), their absence reported in
/// [`Attached::unix_missing`]; the unix peer programs where the kernel takes `fmod_ret`
/// programs, their absence reported in [`Attached::unix_peer_missing`]; any other failure is
/// an error.
pub fn attach(at: &mut Attacher<'_>, offsets: &Offsets) -> Result<Attached, NetError> {
    let mut attached = Attached {
        raw: RawCoverage::Inet,
        ..Attached::default()
    };
    for row in table::family(Family::Net) {
        if matches!(row.kind, Kind::Unix(_)) && offsets.unix.valid == 0 {
            attached.unix_missing =
                Some("this kernel has no unix sock_addr hooks (needs Linux >= 6.7)".into());
            continue;
        }
        if matches!(row.kind, Kind::FModRet(_)) && offsets.lsm.valid * offsets.file.valid == 0 {
            attached.unix_peer_missing =
                Some("kernel BTF lacks a struct field the unix peer check reads".into());
            continue;
        }
        match (at.attach(&row), row.kind) {
            (Ok(()), _) => attached.programs.push(row.name),
            (Err(e), Kind::FModRet(_)) => {
                // Both or neither: the peer check stands only with both programs.
                attached
                    .unix_peer_missing
                    .get_or_insert_with(|| format!("{}: {e}", row.hook()));
            }
            (Err(e), Kind::SockCreate) => attached.raw = RawCoverage::Missing(e.to_string()),
            (Err(e), Kind::Egress) => attached.egress_missing = Some(e.to_string()),
            (Err(source), _) => {
                return Err(NetError::Attach {
                    name: row.name,
                    source,
                });
            }
        }
    }
    Ok(attached)
}

/// Take the network maps out of `ebpf`; the tag map is opened again from its pin.
pub fn take_maps(ebpf: &mut Ebpf, maps_dir: &Path) -> Result<NetMaps, NetError> {
    let err = |(name, source)| NetError::Map { name, source };
    Ok(NetMaps {
        net4: take_map(ebpf, maps::NET4).map_err(err)?,
        net6: take_map(ebpf, maps::NET6).map_err(err)?,
        unix: take_map(ebpf, maps::NET_UNIX).map_err(err)?,
        rules: take_map(ebpf, maps::NET_RULES).map_err(err)?,
        raw: take_map(ebpf, maps::NET_RAW).map_err(err)?,
        secrets: take_map(ebpf, maps::NET_SECRETS).map_err(err)?,
        tags: crate::loader::open_pinned_tags(maps_dir).map_err(err)?,
    })
}
