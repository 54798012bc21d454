//! Policy integrity: the daemon never applies a policy file that a tagged process changed.
//!
//! It goes by two facts the offender cannot rewrite:
//! - the kernel's count of changes of the policy file by tagged processes (the internal
//!   `guard:policy` rule's change detector counts in the offender's context, before the
//!   change is visible), against the count an administrator has answered, kept in the pinned
//!   self-protection state so that a restarted daemon knows it too;
//! - the directories of the configured path, by device and inode, as they were when the
//!   policy in force was applied: a directory swapped in under the file changes them.
//!
//! A change of the file is applied on its own only when neither moved, and only where the
//! kernel refuses (bpf-lsm) or detects (the change detectors, Linux ≥ 6.13) a tagged
//! process's change of it. An explicit apply (a
//! SIGHUP or `guard policy apply` from an untagged root process, or a start with
//! `--policy-reviewed`) answers both: what the file says now is what the administrator wants.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use aya::maps::{Map, MapData, PerCpuArray};
use guard_common::{file::counter, maps};

use crate::selfprot::SelfMaps;

/// What the last apply saw.
pub struct Integrity {
    path: PathBuf,
    dirs: Vec<(u64, u64)>,
    /// The file as an administrator last applied it (device, inode, hash of its content).
    applied: Option<(u64, u64, u64)>,
}

/// Why a policy file is not applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// Tagged processes changed it this many times since an administrator last applied it.
    ChangedByTagged(u32),
    /// A directory on its path is another one than at the last apply.
    DirectoryReplaced(PathBuf),
    /// Nothing on this kernel refuses or detects a tagged process's change of the file.
    Unwatched,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ChangedByTagged(n) => write!(
                f,
                "tagged processes changed the policy file ({n} change(s) seen by the kernel, \
                 see `guard events --rule guard:policy`)"
            ),
            Self::DirectoryReplaced(d) => write!(
                f,
                "the directory {} was replaced since the policy in force was applied",
                d.display()
            ),
            Self::Unwatched => f.write_str(UNWATCHED),
        }
    }
}

impl Integrity {
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            dirs: dir_ids(path),
            applied: None,
        }
    }

    /// The file is still exactly what an administrator applied last (its watcher fires
    /// after the explicit apply that answered the change): nothing to do.
    pub fn is_as_applied(&self) -> bool {
        self.applied.is_some() && stamp(&self.path) == self.applied
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Why the file may not be applied on its own, when it may not. `watched`: the kernel
    /// refuses (bpf-lsm) or detects (the change detectors) a tagged process's change of it.
    pub fn check(&self, pin_dir: &Path, seen: u32, watched: bool) -> Option<Untrusted> {
        if !watched {
            return Some(Untrusted::Unwatched);
        }
        let changes = tagged_changes(pin_dir).wrapping_sub(seen);
        if changes != 0 {
            return Some(Untrusted::ChangedByTagged(changes));
        }
        let now = dir_ids(&self.path);
        self.path
            .ancestors()
            .skip(1)
            .zip(self.dirs.iter().zip(&now))
            .find(|(_, (was, is))| was != is)
            .map(|(dir, _)| Untrusted::DirectoryReplaced(dir.to_path_buf()))
    }

    /// An administrator applied the file as it is now.
    pub fn acknowledge(&mut self, pin_dir: &Path, guard_self: Option<&mut SelfMaps>) {
        self.dirs = dir_ids(&self.path);
        self.applied = stamp(&self.path);
        if let Some(s) = guard_self
            && let Err(e) = s.set_policy_changes_seen(tagged_changes(pin_dir))
        {
            tracing::error!(error = %e, "cannot record the acknowledged policy changes");
        }
    }
}

/// Why changes apply only when an administrator says so, where nothing watches the file.
pub const UNWATCHED: &str = "this kernel cannot tell whether a tagged process changed the \
    policy file (no BPF LSM, and no ctime tracepoints before Linux 6.13), so a change of it \
    is applied only by `guard policy apply` or SIGHUP from an untagged process";

/// The kernel's count of policy file changes by tagged processes (0 where file protection
/// is not loaded: there is then no detector, and status says so).
pub fn tagged_changes(pin_dir: &Path) -> u32 {
    let path = pin_dir.join("maps").join(maps::FILE_COUNTERS);
    let Ok(data) = MapData::from_pin(&path) else {
        return 0;
    };
    let Ok(counters) = PerCpuArray::<MapData, u64>::try_from(Map::PerCpuArray(data)) else {
        return 0;
    };
    let total: u64 = counters
        .get(&counter::POLICY_CHANGED, 0)
        .map(|v| v.iter().sum())
        .unwrap_or(0);
    total as u32
}

/// What identifies one version of the file: device, inode and a hash of its content (a
/// policy file is small; timestamps are too coarse on some kernels to tell two writes apart).
fn stamp(path: &Path) -> Option<(u64, u64, u64)> {
    use std::hash::{Hash, Hasher};
    let m = std::fs::metadata(path).ok()?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::fs::read(path).ok()?.hash(&mut h);
    Some((m.dev(), m.ino(), h.finish()))
}

/// Device and inode of each directory above `path`, nearest first (lstat: a symlinked
/// directory is its link).
fn dir_ids(path: &Path) -> Vec<(u64, u64)> {
    path.ancestors()
        .skip(1)
        .filter(|d| !d.as_os_str().is_empty())
        .map(|d| {
            std::fs::symlink_metadata(d)
                .map(|m| (m.dev(), m.ino()))
                .unwrap_or((0, 0))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_swapped_directory_is_named() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("etc");
        std::fs::create_dir(&dir).unwrap();
        let file = dir.join("policy.yaml");
        std::fs::write(&file, "x").unwrap();
        let pins = root.path().join("no-pins");
        let integrity = Integrity::new(&file);
        assert_eq!(integrity.check(&pins, 0, true), None);
        assert_eq!(integrity.check(&pins, 0, false), Some(Untrusted::Unwatched));
        // The file replaced in place of its directory entry: not a directory change.
        std::fs::write(dir.join("new"), "y").unwrap();
        std::fs::rename(dir.join("new"), &file).unwrap();
        assert_eq!(integrity.check(&pins, 0, true), None);
        std::fs::rename(&dir, root.path().join("etc.old")).unwrap();
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(&file, "evil").unwrap();
        assert_eq!(
            integrity.check(&pins, 0, true),
            Some(Untrusted::DirectoryReplaced(dir.clone()))
        );
    }
}
