//! What a configured unix socket name stands for besides itself: other spellings of the same
//! path (its resolved path, through symlinks and `..`), and the socket file it names, by
//! identity. The bpf-lsm tier decides on the peer the kernel resolved by that identity, so
//! every spelling, symlink and hard link of the path is the same socket; the fallback tier
//! only sees names.

use std::{
    collections::BTreeMap, os::unix::fs::FileTypeExt, os::unix::fs::MetadataExt, path::Path,
};

/// How often the socket files are looked at again: a daemon that restarts (docker,
/// containerd) binds a new file, with a new identity.
pub const RECHECK: std::time::Duration = std::time::Duration::from_secs(2);

/// The other keys of one configured name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct UnixTargets {
    /// Other spellings (the resolved path).
    pub aliases: Vec<String>,
    /// The socket file, `(device in the kernel's encoding, inode)`, when it exists.
    pub file: Option<(u32, u64)>,
}

/// The targets of `name` as the filesystem has them now.
pub fn targets(name: &str) -> UnixTargets {
    UnixTargets {
        aliases: aliases(name),
        file: socket_file(name),
    }
}

/// The socket file of each of `names` now, by name (to compare with what an install put in
/// the maps).
pub fn files_of<'a>(
    names: impl Iterator<Item = &'a String>,
) -> BTreeMap<String, Option<(u32, u64)>> {
    names.map(|n| (n.clone(), socket_file(n))).collect()
}

/// Other spellings of a configured socket path: its resolved path (symlinks, `..`) when
/// that differs. A socket that does not exist yet is resolved through its directory.
pub fn aliases(name: &str) -> Vec<String> {
    if name.starts_with('@') {
        return Vec::new();
    }
    let path = Path::new(name);
    let resolved = std::fs::canonicalize(path).ok().or_else(|| {
        let dir = std::fs::canonicalize(path.parent()?).ok()?;
        Some(dir.join(path.file_name()?))
    });
    match resolved {
        Some(r) if r != path => r.to_str().map(|s| vec![s.to_owned()]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// The socket file `name` leads to (following symlinks), if it is one.
fn socket_file(name: &str) -> Option<(u32, u64)> {
    if name.starts_with('@') {
        return None;
    }
    let m = std::fs::metadata(name).ok()?;
    if !m.file_type().is_socket() {
        return None;
    }
    Some((crate::files::resolve::kernel_dev_of(m.dev()), m.ino()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aliases_resolve_symlinked_directories() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        std::fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let real = std::fs::canonicalize(&real).unwrap();
        let name = link.join("x.sock");
        assert_eq!(
            aliases(name.to_str().unwrap()),
            [real.join("x.sock").to_str().unwrap().to_owned()]
        );
        assert!(aliases("@abstract").is_empty());
        assert!(aliases(real.join("x.sock").to_str().unwrap()).is_empty());
    }

    #[test]
    fn a_bound_socket_has_a_file_and_anything_else_has_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let _listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let file = targets(path.to_str().unwrap()).file.expect("a socket file");
        assert_eq!(targets(link.to_str().unwrap()).file, Some(file));
        assert_eq!(targets("@abstract").file, None);
        std::fs::write(dir.path().join("plain"), "x").unwrap();
        assert_eq!(
            targets(dir.path().join("plain").to_str().unwrap()).file,
            None
        );
    }
}
