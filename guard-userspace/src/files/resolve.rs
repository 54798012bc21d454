//! Path rules → the objects they protect, by identity: `(device, inode)` of each file,
//! directory (the root of a protected subtree) or volume (a mount point that is the root of
//! its filesystem), plus the block devices and loop-device image files behind them.
//!
//! Paths are followed the way an open would follow them (symlinks resolved) and canonicalised,
//! so a rule written through a symlink protects its target. A path that does not exist yet is
//! legal: it is reported as missing, with the nearest existing directory to watch for it.

use std::{
    collections::BTreeSet,
    fs, io,
    os::unix::fs::{FileTypeExt as _, MetadataExt as _},
    path::{Path, PathBuf},
};

use guard_common::file::kernel_dev;
use serde::Serialize;

use crate::policy::{PathPattern, glob_match};

/// What a protected object is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    File,
    /// A directory and everything below it on the same filesystem.
    Dir,
    /// A whole filesystem: the rule's path is its mount point.
    Volume,
    /// The image file behind a loop device that holds a protected object.
    Backing,
}

/// One protected object.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct Object {
    pub path: PathBuf,
    /// Kernel encoding of the device (see [`guard_common::file::kernel_dev`]).
    pub dev: u32,
    pub ino: u64,
    pub kind: Kind,
}

/// What one rule resolves to.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub objects: Vec<Object>,
    /// Block devices `(major, minor)` behind the objects' filesystems.
    pub devices: Vec<(u32, u32)>,
    /// Paths that do not exist (yet).
    pub missing: Vec<PathBuf>,
    /// Existing directories where an entry matching the glob would (re)appear: the parent of
    /// each rule path (recreated, or renamed into place), the nearest existing ancestor of a
    /// missing path, the directory of a glob.
    #[serde(skip)]
    pub watch: Vec<(PathBuf, String)>,
    /// `**/name` patterns, found by scanning `scan_roots`.
    #[serde(skip)]
    pub any_dir: Vec<String>,
}

pub use crate::fshandle::{Mount, parse_mountinfo};

/// Is `path` (canonical) the mount point of a whole filesystem with device `dev`?
pub fn is_volume_root(mounts: &[Mount], path: &Path, major: u32, minor: u32) -> bool {
    mounts
        .iter()
        .rev()
        .find(|m| m.mount_point == path)
        .is_some_and(|m| m.root == Path::new("/") && (m.major, m.minor) == (major, minor))
}

fn object(path: &Path, meta: &fs::Metadata, mounts: &[Mount]) -> Object {
    let (major, minor) = dev_numbers(meta.dev());
    let kind = if !meta.is_dir() {
        Kind::File
    } else if is_volume_root(mounts, path, major, minor) {
        Kind::Volume
    } else {
        Kind::Dir
    };
    Object {
        path: path.to_path_buf(),
        dev: kernel_dev(major, minor),
        ino: meta.ino(),
        kind,
    }
}

/// `(major, minor)` of a `st_dev`.
pub fn dev_numbers(st_dev: u64) -> (u32, u32) {
    (libc::major(st_dev), libc::minor(st_dev))
}

/// `st_dev` in the kernel's encoding (see [`kernel_dev`]), as the kernel maps key devices.
pub fn kernel_dev_of(st_dev: u64) -> u32 {
    guard_common::file::kernel_dev_of(st_dev)
}

/// Resolve `patterns` (one rule's, `~` expanded).
pub fn resolve(patterns: &[PathPattern], mounts: &[Mount], scan_roots: &[PathBuf]) -> Targets {
    let mut t = Targets::default();
    let mut objects = BTreeSet::new();
    for p in patterns {
        match p {
            PathPattern::Exact(path) => {
                match fs::canonicalize(path).and_then(|c| {
                    let m = fs::metadata(&c)?;
                    Ok((c, m))
                }) {
                    Ok((canon, meta)) => {
                        objects.insert(object(&canon, &meta, mounts));
                    }
                    Err(_) => t.missing.push(path.clone()),
                }
                if let Some(w) = watch_point(path) {
                    t.watch.push(w);
                }
            }
            PathPattern::Glob { dir, name } => match fs::canonicalize(dir) {
                Ok(canon) => {
                    for (path, meta) in matches_in(&canon, name) {
                        objects.insert(object(&path, &meta, mounts));
                    }
                    t.watch.push((canon, name.clone()));
                }
                Err(_) => {
                    t.missing.push(dir.join(name));
                    if let Some(w) = watch_point(dir) {
                        t.watch.push(w);
                    }
                }
            },
            PathPattern::AnyDir { name } => {
                t.any_dir.push(name.clone());
                for root in scan_roots {
                    for path in scan(root, name) {
                        if let Ok(meta) = fs::metadata(&path) {
                            objects.insert(object(&path, &meta, mounts));
                        }
                    }
                }
            }
        }
    }
    let mut devices = BTreeSet::new();
    let mut backing = BTreeSet::new();
    for o in &objects {
        let (major, minor) = guard_common::file::dev_parts(o.dev);
        for d in block_devices(major, minor) {
            devices.insert(d);
        }
        if let Some(image) = loop_backing_file(major, minor)
            && let Ok(meta) = fs::metadata(&image)
        {
            backing.insert(Object {
                path: image,
                dev: kernel_dev_of(meta.dev()),
                ino: meta.ino(),
                kind: Kind::Backing,
            });
        }
    }
    t.objects = objects.into_iter().chain(backing).collect();
    t.devices = devices.into_iter().collect();
    t.watch.sort();
    t.watch.dedup();
    t
}

/// Where `path` (or the first missing component on the way to it) would appear: its closest
/// existing ancestor directory, canonicalised, and the name of the next component.
fn watch_point(path: &Path) -> Option<(PathBuf, String)> {
    let mut child = path;
    for a in path.ancestors().skip(1) {
        if let Ok(c) = fs::canonicalize(a)
            && c.is_dir()
        {
            let name = child.file_name()?.to_string_lossy().into_owned();
            return Some((c, name));
        }
        child = a;
    }
    None
}

/// Entries of `dir` whose name matches `glob`, followed through symlinks.
fn matches_in(dir: &Path, glob: &str) -> Vec<(PathBuf, fs::Metadata)> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(Result::ok)
        .filter(|e| glob_match(glob, &e.file_name().to_string_lossy()))
        .filter_map(|e| {
            let canon = fs::canonicalize(e.path()).ok()?;
            let meta = fs::metadata(&canon).ok()?;
            Some((canon, meta))
        })
        .collect()
}

/// Directories `**/name` scans skip: large, and not where credentials live.
const SCAN_SKIP: [&str; 9] = [
    "node_modules",
    ".git",
    ".cache",
    "target",
    ".npm",
    ".cargo",
    ".rustup",
    ".pyenv",
    "snap",
];
/// How deep and how wide a `**/name` scan goes below each root.
const SCAN_DEPTH: usize = 8;
const SCAN_MAX_ENTRIES: usize = 200_000;

/// Files named like `name` (a glob) below `root`, without crossing filesystems.
pub fn scan(root: &Path, name: &str) -> Vec<PathBuf> {
    let Ok(meta) = fs::symlink_metadata(root) else {
        return Vec::new();
    };
    let dev = meta.dev();
    let mut out = Vec::new();
    let mut seen = 0usize;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    while let Some((dir, depth)) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > SCAN_MAX_ENTRIES {
                return out;
            }
            let fname = e.file_name();
            let Ok(ft) = e.file_type() else { continue };
            if glob_match(name, &fname.to_string_lossy()) && !ft.is_dir() {
                out.push(e.path());
            }
            if ft.is_dir()
                && depth + 1 < SCAN_DEPTH
                && !SCAN_SKIP.iter().any(|s| fname == *s)
                && e.metadata().is_ok_and(|m| m.dev() == dev)
            {
                stack.push((e.path(), depth + 1));
            }
        }
    }
    out
}

/// The block device `major:minor` (if it is one) and, for a partition, its whole disk.
pub fn block_devices(major: u32, minor: u32) -> Vec<(u32, u32)> {
    let sys = PathBuf::from(format!("/sys/dev/block/{major}:{minor}"));
    if !sys.exists() {
        return Vec::new();
    }
    let mut out = vec![(major, minor)];
    if sys.join("partition").exists()
        && let Ok(text) = fs::read_to_string(sys.join("../dev"))
        && let Some((a, b)) = text.trim().split_once(':')
        && let (Ok(a), Ok(b)) = (a.parse(), b.parse())
    {
        out.push((a, b));
    }
    out
}

/// The image file behind loop device `major:minor`.
pub fn loop_backing_file(major: u32, minor: u32) -> Option<PathBuf> {
    let text =
        fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/loop/backing_file")).ok()?;
    let path = PathBuf::from(text.trim_end_matches('\n'));
    path.is_absolute().then_some(path)
}

/// What a subtree walk found.
#[derive(Debug, Default)]
pub struct Walk {
    /// `st_dev` of the tree (a walk does not cross filesystems).
    pub dev: u64,
    /// Every directory with its inode, the root first.
    pub dirs: Vec<(PathBuf, u64)>,
    /// Regular files with their inodes (all of them when `all_files`, else only those with
    /// more than one link).
    pub files: Vec<(PathBuf, u64)>,
    /// The walk stopped at `max` entries.
    pub truncated: bool,
}

/// Walk the directory tree at `root` without crossing filesystems.
pub fn walk(root: &Path, all_files: bool, max: usize) -> io::Result<Walk> {
    let meta = fs::symlink_metadata(root)?;
    let mut w = Walk {
        dev: meta.dev(),
        ..Walk::default()
    };
    let mut stack = vec![(root.to_path_buf(), meta.ino())];
    let mut seen = 0usize;
    while let Some((dir, ino)) = stack.pop() {
        let entries = fs::read_dir(&dir);
        w.dirs.push((dir, ino));
        let Ok(entries) = entries else { continue };
        for e in entries.filter_map(Result::ok) {
            seen += 1;
            if seen > max {
                w.truncated = true;
                return Ok(w);
            }
            let Ok(meta) = e.metadata() else { continue };
            if meta.dev() != w.dev {
                continue;
            }
            let ft = meta.file_type();
            if ft.is_dir() {
                stack.push((e.path(), meta.ino()));
            } else if (ft.is_file() || ft.is_block_device()) && (all_files || meta.nlink() > 1) {
                w.files.push((e.path(), meta.ino()));
            }
        }
    }
    Ok(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_lines() {
        let text = "22 27 0:21 / /proc rw,relatime - proc proc rw\n\
                    98 27 7:0 / /mnt/prod\\040vol rw - ext4 /dev/loop0 rw\n\
                    99 27 7:0 /database /srv/db rw - ext4 /dev/loop0 rw\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 3);
        assert_eq!(m[1].mount_point, Path::new("/mnt/prod vol"));
        assert!(is_volume_root(&m, Path::new("/mnt/prod vol"), 7, 0));
        // A bind mount of a subdirectory is not the whole volume.
        assert!(!is_volume_root(&m, Path::new("/srv/db"), 7, 0));
        assert!(!is_volume_root(&m, Path::new("/proc/x"), 0, 21));
    }

    #[test]
    fn resolves_files_dirs_globs_and_missing_paths() {
        let dir = tempfile::tempdir().unwrap();
        let d = fs::canonicalize(dir.path()).unwrap();
        fs::create_dir(d.join("db")).unwrap();
        fs::write(d.join("db/data"), "x").unwrap();
        fs::write(d.join("id_rsa"), "k").unwrap();
        fs::write(d.join("id_ed25519"), "k").unwrap();
        fs::write(d.join("known_hosts"), "h").unwrap();
        std::os::unix::fs::symlink(d.join("db"), d.join("link")).unwrap();
        let mounts = parse_mountinfo(&fs::read_to_string("/proc/self/mountinfo").unwrap());
        let t = resolve(
            &[
                PathPattern::Exact(d.join("link")),
                PathPattern::Glob {
                    dir: d.clone(),
                    name: "id_*".into(),
                },
                PathPattern::Exact(d.join("nope/deeper")),
            ],
            &mounts,
            &[],
        );
        let paths: Vec<_> = t.objects.iter().map(|o| (o.path.clone(), o.kind)).collect();
        assert_eq!(
            paths,
            [
                (d.join("db"), Kind::Dir),
                (d.join("id_ed25519"), Kind::File),
                (d.join("id_rsa"), Kind::File)
            ]
        );
        assert_eq!(t.missing, [d.join("nope/deeper")]);
        assert_eq!(
            t.watch,
            [
                (d.clone(), "id_*".to_owned()),
                (d.clone(), "link".to_owned()),
                (d.clone(), "nope".to_owned())
            ]
        );
        let w = walk(&d, true, 100).unwrap();
        assert_eq!(w.dirs[0].0, d);
        assert!(w.files.iter().any(|(p, _)| *p == d.join("db/data")));
        assert_eq!(scan(&d, "id_r*"), [d.join("id_rsa")]);
    }
}
