//! The identity set: every object a rule protects, as the daemon can open it again after a
//! restart or a reload, wherever it was moved.
//!
//! A rule resolves its paths afresh when the daemon starts or the policy is applied, and a
//! protected object that a tagged process moved away is no longer at any of those paths. So
//! each protected file and directory is also kept in a pinned map as a file handle
//! (`name_to_handle_at`: it names the inode with its generation, so a deleted object whose
//! inode number was reused does not match) with a fingerprint of its rule. When a rule with
//! the same fingerprint resolves again, the objects it covered are opened by handle
//! (`open_by_handle_at`) and protected where they are now. A changed rule has another
//! fingerprint: its old objects are dropped, which is how an administrator prunes the set.

use std::{
    ffi::CString,
    io,
    os::{fd::AsRawFd, unix::ffi::OsStrExt, unix::fs::MetadataExt},
    path::Path,
};

use std::collections::BTreeMap;

use guard_common::file::{FileIdentity, FileKey, HANDLE_MAX};
use tracing::info;

use super::{
    Shared,
    engine::Engine,
    resolve::{Kind, Mount, Object},
};
use crate::{fshandle::Handle, policy::CompiledPathRule};

/// Fingerprint of a rule: FNV-1a over what makes it the same rule (stable across daemon
/// versions, unlike the standard hasher).
pub fn fingerprint(rule: &CompiledPathRule) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |bytes: &[u8]| {
        for b in bytes.iter().chain([&0xffu8]) {
            h ^= u64::from(*b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    };
    eat(rule.name.as_bytes());
    eat(&rule.access.to_le_bytes());
    eat(rule.action.to_string().as_bytes());
    eat(rule.mode.to_string().as_bytes());
    let mut paths: Vec<String> = rule.paths.iter().map(|p| format!("{p:?}")).collect();
    paths.sort();
    for p in paths {
        eat(p.as_bytes());
    }
    h
}

/// The identity of `o`, protected for the rule with fingerprint `rule`; `None` where the
/// filesystem gives no handles (some FUSE and overlay setups) or `o` is not a file or a
/// directory.
pub fn of(o: &Object, rule: u64) -> Option<FileIdentity> {
    let is_dir = match o.kind {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Volume | Kind::Backing => return None,
    };
    let c = CString::new(o.path.as_os_str().as_bytes()).ok()?;
    let buf = Handle::of(&c).ok()?;
    let (handle_type, bytes) = buf.parts();
    let mut handle = [0u8; HANDLE_MAX];
    handle[..bytes.len()].copy_from_slice(bytes);
    Some(FileIdentity {
        rule,
        handle_type,
        handle_len: bytes.len() as u32,
        handle,
        is_dir,
        _pad: 0,
    })
}

/// Open the object `key`/`id` again, wherever it is now: the object at its present path, or
/// an error (`ESTALE` once it is deleted).
pub fn reopen(key: FileKey, id: &FileIdentity, mounts: &[Mount]) -> io::Result<Object> {
    let mount = mounts
        .iter()
        .find(|m| m.kernel_dev() == key.dev)
        .ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "its filesystem is not mounted"))?;
    let len = (id.handle_len as usize).min(HANDLE_MAX);
    let fd =
        Handle::new(id.handle_type, &id.handle[..len]).open(&mount.mount_point, libc::O_PATH)?;
    let path = std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    let meta = std::fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd()))?;
    if meta.ino() != key.ino || path_is_deleted(&path) {
        return Err(io::Error::from_raw_os_error(libc::ESTALE));
    }
    Ok(Object {
        path,
        dev: key.dev,
        ino: key.ino,
        kind: if id.is_dir == 1 {
            Kind::Dir
        } else {
            Kind::File
        },
    })
}

fn path_is_deleted(path: &Path) -> bool {
    path.as_os_str().as_bytes().ends_with(b" (deleted)")
}

impl Engine {
    /// The objects rule `i` covered before this engine (a restart, a reload) that its paths
    /// no longer lead to: opened again by handle where they are now. Deleted ones leave the
    /// set.
    pub(super) fn found_again(&self, i: usize, found: &[Object], mounts: &[Mount]) -> Vec<Object> {
        let fingerprint = self.rules[i].fingerprint;
        let mine: Vec<(FileKey, FileIdentity)> = {
            let mut remembered = self.remembered.lock().expect("remembered lock");
            let (mine, rest) = remembered
                .drain(..)
                .partition(|(_, id)| id.rule == fingerprint);
            *remembered = rest;
            mine
        };
        mine.into_iter()
            .filter(|(k, _)| !found.iter().any(|o| (o.dev, o.ino) == (k.dev, k.ino)))
            .filter_map(|(k, id)| match reopen(k, &id, mounts) {
                Ok(o) => {
                    info!(rule = %self.rules[i].name, path = %o.path.display(), "a protected object was moved; still protected where it is");
                    Some(o)
                }
                Err(e) => {
                    info!(rule = %self.rules[i].name, error = %e, "a protected object is gone");
                    None
                }
            })
            .collect()
    }

    /// Keep the pinned identity set to the objects of the rules in force: add what is new,
    /// keep what is known (a moved object's old path gives no handle any more), drop the rest.
    pub(super) fn sync_identities(&self, maps: &mut super::kernel::FileMaps) {
        let current = super::kernel::entries(&maps.identities);
        let mut wanted: BTreeMap<FileKey, FileIdentity> = BTreeMap::new();
        {
            let state = self.state.lock().expect("state lock");
            for (rule, st) in self.rules.iter().zip(state.iter()) {
                if !rule.enforcing() {
                    continue;
                }
                for o in &st.targets.objects {
                    let key = FileKey::new(o.dev, o.ino);
                    if wanted.contains_key(&key) {
                        continue;
                    }
                    let known = current
                        .get(&key)
                        .filter(|id| id.rule == rule.fingerprint)
                        .copied();
                    if let Some(id) = known.or_else(|| of(o, rule.fingerprint)) {
                        wanted.insert(key, id);
                    }
                }
            }
        }
        super::kernel::sync_map(
            &mut maps.identities,
            &current,
            &wanted,
            "protected object's identity",
        );
    }
}

/// The pinned identity set, read once by a new engine.
pub(super) fn remembered(shared: &Shared) -> Vec<(FileKey, FileIdentity)> {
    let kernel = shared.kernel.lock().expect("kernel lock");
    kernel.as_ref().map_or_else(Vec::new, |m| {
        super::kernel::entries(&m.identities).into_iter().collect()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_moved_file_is_found_by_its_handle_and_a_deleted_one_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, "x").unwrap();
        let meta = std::fs::metadata(&path).unwrap();
        let key = FileKey::new(super::super::resolve::kernel_dev_of(meta.dev()), meta.ino());
        let o = Object {
            path: path.clone(),
            dev: key.dev,
            ino: key.ino,
            kind: Kind::File,
        };
        let Some(id) = of(&o, 7) else {
            // A filesystem without handles (some container overlays): nothing to check.
            return;
        };
        let mounts = super::super::resolve::parse_mountinfo(
            &std::fs::read_to_string("/proc/self/mountinfo").unwrap(),
        );
        let moved = dir.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        let found = reopen(key, &id, &mounts).unwrap();
        assert_eq!(found.path, std::fs::canonicalize(&moved).unwrap());
        std::fs::remove_file(&moved).unwrap();
        assert!(reopen(key, &id, &mounts).is_err());
    }
}
