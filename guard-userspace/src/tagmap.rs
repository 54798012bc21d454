//! The tag map's size, and what happens when it cannot take a tagged parent's new child: the
//! child must not run untagged. The fork tracker kills it in the kernel before it first runs
//! where the kernel has `bpf_send_signal_task` (Linux ≥ 6.13); elsewhere [`ChildKiller`]
//! kills it from the daemon as soon as the event is read.
//!
//! The map is keyed by tgid, and a tgid is below `kernel.pid_max`: a map of at least that
//! many entries cannot fill, so the default size is `pid_max` (within bounds).

use guard_common::{
    ProcKey,
    event::{EventKind, ProcessEvent},
    maps::TAGS_MAX,
};
use serde::Serialize;

use crate::{
    events::{Responder, read_pod},
    kernel::Kernel,
};

/// Smallest size accepted (tests use small maps to reach the full path).
pub const MIN_SIZE: u32 = 16;
/// Largest size accepted: the map allocates its entries as they are used, but its buckets
/// (16 bytes each) up front.
pub const MAX_SIZE: u32 = 1 << 22;
/// Largest default: hosts with a larger `pid_max` reach the full path only with more live
/// tagged processes than this.
const DEFAULT_CAP: u32 = 1 << 20;

/// `kernel.pid_max`.
pub fn pid_max() -> Option<u32> {
    std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The size a new tag map gets unless one is asked for: room for every possible tgid.
pub fn default_size() -> u32 {
    pid_max().unwrap_or(TAGS_MAX).clamp(TAGS_MAX, DEFAULT_CAP)
}

/// `--tag-map-size`: a number of entries within [`MIN_SIZE`]..=[`MAX_SIZE`].
pub fn parse_size(s: &str) -> Result<u32, String> {
    let n: u32 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of entries"))?;
    if !(MIN_SIZE..=MAX_SIZE).contains(&n) {
        return Err(format!(
            "{n} entries: the tag map takes {MIN_SIZE} to {MAX_SIZE}"
        ));
    }
    Ok(n)
}

/// Kills the child of a `tag_map_full` event that the kernel could not kill itself.
pub struct ChildKiller;

impl Responder for ChildKiller {
    fn respond(&self, raw: &[u8]) {
        let Ok(ev) = read_pod::<ProcessEvent>(raw) else {
            return;
        };
        if ev.header.kind != EventKind::TagMapFull as u32 || ev.exit_code != 0 {
            return;
        }
        let ProcKey { tgid, start_ns, .. } = ev.header.proc;
        if let Err(e) = crate::respond::kill_process(tgid, start_ns) {
            tracing::warn!(pid = tgid, error = %e, "cannot kill a child the tag map could not take");
        }
    }
}

/// The tag map in `guard status`.
#[derive(Clone, Debug, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct TagMapStatus {
    pub size: u32,
    /// Entries in use (tagged processes).
    pub used: u32,
    pub pid_max: Option<u32>,
    /// What happens to a tagged parent's child when the map is full.
    pub when_full: String,
    /// Set when the map can fill before the pid space does.
    pub warning: Option<String>,
}

/// The status of `kernel`'s tag map, `used` entries of it in use.
pub fn status(kernel: &Kernel, used: usize) -> TagMapStatus {
    let info = kernel.tag_map;
    let used = u32::try_from(used).unwrap_or(u32::MAX);
    let pid_max = pid_max();
    let refuses = kernel
        .lsm
        .as_ref()
        .is_some_and(|l| l.hooks.iter().any(|h| h == "task_alloc"));
    let when_full = if refuses && info.kernel_kills_children {
        "the fork is refused in the kernel (EAGAIN, lsm/task_alloc); a fork that takes the \
         last entry from another at the same instant has its child killed in the kernel \
         before it runs"
    } else if refuses {
        "the fork is refused in the kernel (EAGAIN, lsm/task_alloc); a fork that takes the \
         last entry from another at the same instant has its child killed by the daemon"
    } else if info.kernel_kills_children {
        "the child is killed in the kernel before it runs (bpf_send_signal_task)"
    } else {
        "the child is killed by the daemon when it reads the event (this kernel has no \
         bpf_send_signal_task, Linux 6.13): it may run briefly, and runs on while no daemon runs"
    };
    let warning = pid_max.filter(|&p| p > info.size).map(|p| {
        format!(
            "the tag map ({} entries) is smaller than kernel.pid_max ({p}): a tree with more \
             live processes than the map holds gets its new children killed",
            info.size
        )
    });
    TagMapStatus {
        size: info.size,
        used,
        pid_max,
        when_full: when_full.into(),
        warning,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_bounded_and_named_in_errors() {
        assert_eq!(parse_size("64"), Ok(64));
        assert!(parse_size("8").unwrap_err().contains("16 to"));
        assert!(parse_size("lots").unwrap_err().contains("not a number"));
        assert!(parse_size(&(MAX_SIZE + 1).to_string()).is_err());
        let d = default_size();
        assert!((TAGS_MAX..=DEFAULT_CAP).contains(&d));
        if let Some(p) = pid_max().filter(|&p| p <= DEFAULT_CAP) {
            assert!(d >= p, "the default map cannot fill before the pid space");
        }
    }
}
