//! The load step of start-up: the object and its trackers, the tier (bpf-lsm when asked for
//! or offered and every LSM program attaches, else fallback), then each subsystem's programs
//! and maps. The old tier's link pins are replaced only once the new tier's are in place, so
//! enforcement never has a gap.

use tracing::{error, info, warn};

use super::DaemonError;
use crate::{
    btf::{Offsets, Vmlinux},
    kernel::{Kernel, KernelError, LoadOptions, Loading, Tier, TierChoice},
    loader::{
        Attacher, FamilyAttached,
        table::{self, Family},
    },
    lsm::LsmAttached,
    net, selfprot,
};

/// Everything the load step attached, by value: the kernel handle and each subsystem's maps.
pub struct Loaded {
    pub kernel: Kernel,
    pub net: net::NetMaps,
    pub net_attached: net::Attached,
    pub files: Option<crate::files::Loaded>,
    pub guard_self: Option<selfprot::SelfMaps>,
    pub self_attached: selfprot::SelfAttached,
}

/// Load and attach everything the tier and the subsystems need.
pub fn load(
    pin_dir: &std::path::Path,
    choice: TierChoice,
    lsm_available: bool,
    opts: &LoadOptions,
) -> Result<Loaded, DaemonError> {
    let vmlinux = Vmlinux::read()?;
    let offsets = Offsets::read(&vmlinux)?;
    let daemon_tgid = std::process::id();
    let mut loading = Loading::load(pin_dir, &offsets, opts)?;
    let (links_dir, maps_dir) = (loading.links_dir(), loading.maps_dir());
    let mut at = loading.attacher(&links_dir, &vmlinux);

    let (lsm, lsm_error) = select_tier(&mut at, &links_dir, choice, lsm_available, &offsets);
    if let (TierChoice::BpfLsm, Some(e)) = (choice, &lsm_error) {
        return Err(KernelError::Lsm(e.clone()).into());
    }
    let net_attached = match &lsm {
        Some(lsm) => net::Attached {
            programs: guard_common::maps::lsm_programs::NET
                .iter()
                .map(|(p, _)| *p)
                .collect(),
            unix_missing: None,
            unix_peer_missing: None,
            lsm: lsm.hooks.iter().any(|h| h == "socket_connect"),
            raw: net::RawCoverage::All,
            egress_missing: None,
        },
        None => net::attach(&mut at, &offsets)?,
    };
    // The unix programs are relocated against every map of the object: maps are taken only
    // after them.
    let net = net::take_maps(at.ebpf(), &maps_dir)?;
    let files = crate::files::kernel::load(&mut at, &offsets, lsm.as_ref());
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
    let mut guard_self = selfprot::SelfMaps::take(at.ebpf())
        .map_err(|(name, source)| KernelError::Map { name, source })?;
    guard_self
        .set_daemon(daemon_tgid)
        .map_err(|source| KernelError::Map {
            name: guard_common::maps::SELF_STATE,
            source,
        })?;
    let self_attached = selfprot::attach(&mut at, offsets.self_error.clone(), lsm.is_none());
    let secret_reads = attach_secret_reads(&mut at, lsm.is_some(), opts.fallback_read_scan);
    let (deferred, deputy_fmod) = if lsm.is_some() {
        (Vec::new(), Vec::new())
    } else {
        (
            attach_fallback(&mut at, Family::Deferred),
            attach_fallback(&mut at, Family::Deputy),
        )
    };
    drop(at);
    let mut kernel = loading.finish(tier, lsm, lsm_error)?;
    kernel.secret_reads = secret_reads;
    kernel.deferred = deferred;
    kernel.deputy_fmod = deputy_fmod;
    report(&kernel, &net_attached, &self_attached);
    Ok(Loaded {
        kernel,
        net,
        net_attached,
        files,
        guard_self: Some(guard_self),
        self_attached,
    })
}

/// What reports the files agents read to the secret scan: the bpf-lsm tier's `file_open`
/// program, else, when asked for, the page cache's read tracepoints (each that attaches);
/// otherwise `off:` or `not covered:` and why.
fn attach_secret_reads(at: &mut Attacher<'_>, lsm: bool, fallback: bool) -> String {
    if lsm {
        return "lsm/file_open".to_owned();
    }
    if !fallback {
        return "off on the fallback tier: its read tracepoints run for every read on the host \
                (about 100–200 ns each where the bench measured them); `guard daemon \
                --fallback-read-scan` turns them on"
            .to_owned();
    }
    let FamilyAttached { attached, failed } = at.attach_family(Family::SecretReads);
    for f in &failed {
        warn!("a read path is not scanned for secrets: {f}");
    }
    let hooks: Vec<String> = attached.iter().map(table::Row::hook).collect();
    match (hooks.is_empty(), failed.is_empty()) {
        (true, _) => format!("not covered: {}", failed.join("; ")),
        (false, true) => hooks.join(", "),
        (false, false) => format!("{} (not covered: {})", hooks.join(", "), failed.join("; ")),
    }
}

/// The programs of a fallback-tier `family` that attach (their hooks); a failure is logged,
/// and status then says what is not covered. A hook the kernel lacks is no failure.
fn attach_fallback(at: &mut Attacher<'_>, family: Family) -> Vec<String> {
    let FamilyAttached { attached, failed } = at.attach_family(family);
    for f in &failed {
        warn!("{}: not attached: {f}", family.label());
    }
    attached.iter().map(table::Row::hook).collect()
}

/// The bpf-lsm tier where it is asked for or offered and every LSM program attaches; `None`
/// (fallback) otherwise, with the reason when it was asked for or offered.
fn select_tier(
    at: &mut Attacher<'_>,
    links_dir: &std::path::Path,
    choice: TierChoice,
    lsm_available: bool,
    offsets: &Offsets,
) -> (Option<LsmAttached>, Option<String>) {
    match choice {
        TierChoice::Fallback => (None, None),
        _ if !lsm_available => (
            None,
            (choice == TierChoice::BpfLsm)
                .then(|| "BPF LSM is not active on this kernel (see guard status)".to_owned()),
        ),
        _ if offsets.lsm.valid == 0 || offsets.file.valid == 0 => (
            None,
            Some("kernel BTF lacks a struct field the LSM programs read".to_owned()),
        ),
        _ => match crate::lsm::attach(at, links_dir) {
            Ok(a) => (Some(a), None),
            Err(e) => (None, Some(e)),
        },
    }
}

fn report(kernel: &Kernel, net: &net::Attached, guard_self: &selfprot::SelfAttached) {
    if let Some(e) = &kernel.lsm_error {
        error!(error = %e, "the bpf-lsm tier is NOT enforcing; the fallback tier enforces instead");
    }
    match &guard_self.error {
        None => info!(hooks = ?guard_self.attached, "self-protection attached"),
        Some(e) => error!(error = %e, "self-protection is NOT fully attached"),
    }
    match (&net.unix_missing, net.unix_peer()) {
        (Some(why), false) => warn!("unix socket rules are not enforced: {why}"),
        (Some(why), true) => warn!("abstract unix socket names are not covered: {why}"),
        _ => {}
    }
    if let Some(why) = &net.unix_peer_missing {
        warn!(
            "unix socket rules hold for names only (not for links made to a socket): the peer \
             check is not attached: {why}"
        );
    }
}
