//! The guest's root file system: a tree of entries written as a `cpio -H newc` archive through
//! `gzip -1` (the kernel unpacks it into its rootfs). Host binaries the tests drive (bash,
//! python3, …) go in with the shared libraries `ldd` names, at the host's paths, so they run
//! unchanged; busybox provides every other command.

use std::{
    collections::BTreeMap,
    fs,
    io::{self, Write},
    os::unix::fs::PermissionsExt as _,
    path::{Component, Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

/// One file system object in the guest.
enum Entry {
    Dir(u32),
    /// Contents copied from a host file (`strip`ped when `strip`).
    File {
        from: PathBuf,
        mode: u32,
        strip: bool,
    },
    Data {
        bytes: Vec<u8>,
        mode: u32,
    },
    Symlink(String),
    CharDev(u32, u32),
}

/// The guest tree, ordered so that every directory comes before what it holds.
#[derive(Default)]
pub struct Tree {
    entries: BTreeMap<PathBuf, Entry>,
}

impl Tree {
    pub fn dir(&mut self, path: impl AsRef<Path>, mode: u32) {
        self.insert(path.as_ref(), Entry::Dir(mode));
    }

    pub fn data(&mut self, path: impl AsRef<Path>, bytes: impl Into<Vec<u8>>, mode: u32) {
        let bytes = bytes.into();
        self.insert(path.as_ref(), Entry::Data { bytes, mode });
    }

    pub fn symlink(&mut self, path: impl AsRef<Path>, target: &str) {
        self.insert(path.as_ref(), Entry::Symlink(target.to_owned()));
    }

    pub fn char_dev(&mut self, path: impl AsRef<Path>, major: u32, minor: u32) {
        self.insert(path.as_ref(), Entry::CharDev(major, minor));
    }

    /// A host file at guest path `path`, debug info stripped (our big Rust binaries).
    pub fn stripped(&mut self, path: impl AsRef<Path>, from: &Path) {
        let from = from.to_path_buf();
        self.insert(
            path.as_ref(),
            Entry::File {
                from,
                mode: 0o755,
                strip: true,
            },
        );
    }

    /// A host file at guest path `path`, copied as it is.
    pub fn file(&mut self, path: impl AsRef<Path>, from: &Path, mode: u32) {
        let from = from.to_path_buf();
        self.insert(
            path.as_ref(),
            Entry::File {
                from,
                mode,
                strip: false,
            },
        );
    }

    pub fn contains(&self, path: &Path) -> bool {
        self.entries.contains_key(path)
    }

    fn insert(&mut self, path: &Path, entry: Entry) {
        let mut parent = PathBuf::from("/");
        if let Some(dir) = path.parent() {
            for c in dir
                .components()
                .filter(|c| matches!(c, Component::Normal(_)))
            {
                parent.push(c);
                self.entries
                    .entry(parent.clone())
                    .or_insert(Entry::Dir(0o755));
            }
        }
        self.entries.insert(path.to_path_buf(), entry);
    }

    /// A host file or symlink chain at its own path: each symlink is kept as a symlink (in
    /// its directory's canonical location, so merged-/usr aliases resolve as on the host)
    /// and the file it ends at is copied.
    pub fn host_path(&mut self, path: &Path) -> Result<()> {
        let mut path = path.to_path_buf();
        for _ in 0..16 {
            let dir = path.parent().context("a host path has a parent")?;
            let name = path.file_name().context("a host path has a name")?;
            let here = fs::canonicalize(dir)
                .with_context(|| format!("cannot resolve {}", dir.display()))?
                .join(name);
            let meta = fs::symlink_metadata(&here)
                .with_context(|| format!("cannot stat {}", here.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&here)?;
                self.symlink(&here, &target.to_string_lossy());
                path = here.parent().expect("has a parent").join(target);
                continue;
            }
            if !self.contains(&here) {
                let mode = meta.permissions().mode() & 0o7777;
                let from = here.clone();
                self.insert(
                    &here,
                    Entry::File {
                        from,
                        mode,
                        strip: false,
                    },
                );
            }
            return Ok(());
        }
        bail!("too many symlinks at {}", path.display())
    }

    /// A dynamically linked host program and every shared library `ldd` says it loads.
    pub fn host_program(&mut self, path: &Path) -> Result<()> {
        self.host_path(path)?;
        self.shared_libraries(&[path.to_path_buf()])
    }

    /// The shared libraries of the given ELF files, by `ldd` (several at once).
    pub fn shared_libraries(&mut self, files: &[PathBuf]) -> Result<()> {
        if files.is_empty() {
            return Ok(());
        }
        let out = Command::new("ldd")
            .args(files)
            .stderr(Stdio::null())
            .output()
            .context("cannot run ldd (package libc-bin)")?;
        // With several files ldd prints a `FILE:` header for each and their libraries
        // indented below; the header lines are not libraries.
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if !line.starts_with(char::is_whitespace) {
                continue;
            }
            let lib = match line.split_once("=>") {
                Some((_, rest)) => rest.trim(),
                None => line.trim(),
            };
            let lib = lib.split_whitespace().next().unwrap_or_default();
            if lib.starts_with('/') {
                self.host_path(Path::new(lib))?;
            }
        }
        Ok(())
    }

    /// The host directory `dir` recursively, skipping names `skip` rejects.
    pub fn host_dir(&mut self, dir: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<Vec<PathBuf>> {
        let mut elf = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in fs::read_dir(&d).with_context(|| format!("cannot read {}", d.display()))? {
                let path = e?.path();
                if skip(&path) {
                    continue;
                }
                let Ok(meta) = fs::metadata(&path) else {
                    continue; // a dangling symlink
                };
                if meta.is_dir() {
                    stack.push(path);
                } else {
                    if path.extension().is_some_and(|x| x == "so") {
                        elf.push(path.clone());
                    }
                    self.host_path(&path)?;
                }
            }
        }
        Ok(elf)
    }

    /// Write the archive to `out`, compressed by `gzip -1`; returns its uncompressed size.
    pub fn write_gz(&self, out: &Path, scratch: &Path) -> Result<u64> {
        let file =
            fs::File::create(out).with_context(|| format!("cannot create {}", out.display()))?;
        let mut gzip = Command::new("gzip")
            .arg("-1")
            .stdin(Stdio::piped())
            .stdout(file)
            .spawn()
            .context("cannot run gzip")?;
        let mut stdin = io::BufWriter::with_capacity(1 << 20, gzip.stdin.take().expect("piped"));
        let mut cpio = Cpio {
            out: &mut stdin,
            ino: 1,
            written: 0,
        };
        for (path, entry) in &self.entries {
            let name = path.strip_prefix("/").unwrap_or(path);
            if name.as_os_str().is_empty() {
                continue;
            }
            let name = name.to_string_lossy();
            match entry {
                Entry::Dir(mode) => cpio.entry(&name, 0o040_000 | mode, 0, &[])?,
                Entry::Data { bytes, mode } => cpio.entry(&name, 0o100_000 | mode, 0, bytes)?,
                Entry::Symlink(target) => cpio.entry(&name, 0o120_777, 0, target.as_bytes())?,
                Entry::CharDev(major, minor) => {
                    cpio.entry(&name, 0o020_600, (*major << 8) | minor, &[])?;
                }
                Entry::File { from, mode, strip } => {
                    let bytes = if *strip {
                        stripped(from, scratch)?
                    } else {
                        fs::read(from)?
                    };
                    cpio.entry(&name, 0o100_000 | mode, 0, &bytes)?;
                }
            }
        }
        cpio.entry("TRAILER!!!", 0, 0, &[])?;
        let written = cpio.written;
        stdin.flush()?;
        drop(stdin);
        let status = gzip.wait()?;
        if !status.success() {
            bail!("gzip failed ({status})");
        }
        Ok(written)
    }
}

/// `strip --strip-debug` into a scratch file and read it back; the unstripped bytes when
/// `strip` is not installed.
fn stripped(from: &Path, scratch: &Path) -> Result<Vec<u8>> {
    let tmp = scratch.join(format!("strip-{}", std::process::id()));
    let ok = Command::new("strip")
        .args(["--strip-debug", "-o"])
        .arg(&tmp)
        .arg(from)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    let bytes = if ok { fs::read(&tmp)? } else { fs::read(from)? };
    let _ = fs::remove_file(&tmp);
    Ok(bytes)
}

/// A `newc` (SVR4 without CRC) cpio writer.
struct Cpio<'a, W: Write> {
    out: &'a mut W,
    ino: u32,
    written: u64,
}

impl<W: Write> Cpio<'_, W> {
    fn entry(&mut self, name: &str, mode: u32, rdev: u32, data: &[u8]) -> io::Result<()> {
        let namesize = name.len() + 1;
        let size = u32::try_from(data.len()).map_err(|_| io::Error::other("file over 4 GiB"))?;
        let nlink = if mode & 0o170_000 == 0o040_000 { 2 } else { 1 };
        let fields = [
            self.ino,
            mode,
            0, // uid
            0, // gid
            nlink,
            0, // mtime: reproducible archives
            size,
            0, // dev major
            0, // dev minor
            rdev >> 8,
            rdev & 0xff,
            namesize as u32,
            0, // check
        ];
        self.ino += 1;
        let mut header = String::from("070701");
        for f in fields {
            header.push_str(&format!("{f:08x}"));
        }
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, b: &[u8]) -> io::Result<()> {
        self.written += b.len() as u64;
        self.out.write_all(b)
    }

    fn pad(&mut self) -> io::Result<()> {
        let n = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..n as usize])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_parents_come_first() {
        let mut t = Tree::default();
        t.data("/a/b/c", b"hello".to_vec(), 0o644);
        t.symlink("/a/l", "b/c");
        let names: Vec<_> = t.entries.keys().map(|p| p.display().to_string()).collect();
        assert_eq!(names, ["/a", "/a/b", "/a/b/c", "/a/l"]);
        let mut buf = Vec::new();
        let mut c = Cpio {
            out: &mut buf,
            ino: 1,
            written: 0,
        };
        c.entry("a/b/c", 0o100_644, 0, b"hello").unwrap();
        assert_eq!(buf.len() % 4, 0);
        assert!(buf.starts_with(b"070701"));
        // 110-byte header + "a/b/c\0" = 116, aligned; then 5 bytes of data padded to 8.
        assert_eq!(buf.len(), 116 + 8);
        assert_eq!(&buf[94..102], b"00000006", "namesize field");
    }
}
