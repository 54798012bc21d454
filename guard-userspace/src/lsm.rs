//! The bpf-lsm tier: loading, attaching and pinning guard's BPF LSM programs
//! (guard-ebpf/src/probes/lsm.rs).
//!
//! Chosen at start when the probe finds BPF LSM active. Either every required hook attaches
//! or none stays attached: a half-attached tier would enforce some rules in the kernel and
//! leave the rest to nobody. The caller then falls back to the cgroup, fanotify and
//! kill-on-detect hooks and says why.

use std::{fs, path::Path};

use crate::loader::{
    AttachError, Attacher,
    table::{self, Family, Kind, Need, Row, Serves},
};

/// What the bpf-lsm tier attached.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct LsmAttached {
    /// LSM hooks attached (`socket_connect`, `file_open`, …).
    pub hooks: Vec<String>,
    /// Optional hooks this kernel does not have (another hook covers them).
    pub absent: Vec<String>,
    /// Optional hooks that did not attach, with the kernel's reason (`guard status`).
    #[serde(default)]
    pub failed: Vec<String>,
}

/// The LSM rows of the loader table, network hooks first.
fn rows() -> Vec<Row> {
    [
        Family::LsmNet,
        Family::LsmFile,
        Family::LsmSelf,
        Family::LsmDeputy,
    ]
    .into_iter()
    .flat_map(table::family)
    .collect()
}

/// Attach every LSM program, pinning each link under `links_dir`. All or nothing: on a
/// failure every LSM link pinned here is removed again and the error names the hook and the
/// kernel's reason.
pub fn attach(at: &mut Attacher<'_>, links_dir: &Path) -> Result<LsmAttached, String> {
    let mut attached = LsmAttached::default();
    for row in rows() {
        let Kind::Lsm(hook) = row.kind else { continue };
        match at.attach(&row) {
            Ok(()) => {
                if !attached.hooks.iter().any(|h| h == hook) {
                    attached.hooks.push(hook.to_owned());
                }
            }
            Err(AttachError::NoHook) if row.need == Need::WhereHookExists => {
                attached.absent.push(hook.to_owned());
            }
            Err(e) if row.need == Need::Optional => {
                attached
                    .failed
                    .push(format!("{}: {}", row.hook(), log_tail(&e.to_string())));
            }
            Err(e) => {
                detach(links_dir);
                return Err(format!("{}: {}", row.hook(), log_tail(&e.to_string())));
            }
        }
    }
    Ok(attached)
}

/// Remove the pins of every LSM link under `links_dir` (they detach once the daemon's file
/// descriptors are closed too).
pub fn detach(links_dir: &Path) {
    for row in rows() {
        let _ = fs::remove_file(links_dir.join(row.pin));
    }
}

/// Remove the pins of the fallback tier's enforcement links (after the LSM links are
/// attached: there is no moment without enforcement).
pub fn remove_fallback_pins(links_dir: &Path) {
    // The fallback tier's enforcement programs (network, kill, kill-on-detect).
    for row in table::table()
        .into_iter()
        .filter(|r| r.family.serves() == Serves::Fallback)
    {
        let _ = fs::remove_file(links_dir.join(row.pin));
    }
}

/// The first line and the last lines of a verifier log: the reason is at the end, and a
/// complexity failure logs a million instructions before it.
fn log_tail(e: &str) -> String {
    let lines: Vec<&str> = e.lines().collect();
    if lines.len() <= 12 {
        return e.to_owned();
    }
    format!(
        "{}\n[… {} lines of verifier log …]\n{}",
        lines[0],
        lines.len() - 9,
        lines[lines.len() - 8..].join("\n")
    )
}
