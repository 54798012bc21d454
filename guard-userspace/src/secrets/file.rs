//! Scanning files: bounded in size, binary files skipped, each object version scanned once.

use std::{
    collections::{HashMap, VecDeque},
    fs::File,
    io::{self, Read},
    os::unix::fs::{MetadataExt, OpenOptionsExt},
    path::Path,
    sync::Arc,
};

use super::{Finding, Key, Scanner};

/// The longest prefix of a file that is scanned; a longer file's rest is not (counted as
/// truncated).
pub const MAX_BYTES: u64 = 4 << 20;
/// A NUL byte among the first this many bytes marks a binary file, which is not scanned.
const BINARY_PROBE: usize = 8 << 10;

/// One version of one object: a file written again is another version and is scanned again.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Version {
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
}

impl Version {
    pub fn of(m: &std::fs::Metadata) -> Self {
        Self {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
            ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
        }
    }
}

/// What a scan of one file found.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scanned {
    Text {
        findings: Vec<Finding>,
        bytes: u64,
        /// Bytes past [`MAX_BYTES`] were not read.
        truncated: bool,
    },
    /// Not scanned: a NUL byte near the start.
    Binary,
    /// Not scanned: not a regular file.
    NotRegular,
}

/// Scan a file the caller opened for it (see [`open`]), from its start.
pub fn scan_file(file: &File, key: &Key) -> io::Result<(Version, Scanned)> {
    let meta = file.metadata()?;
    let version = Version::of(&meta);
    if !meta.is_file() {
        return Ok((version, Scanned::NotRegular));
    }
    let want = meta.len().min(MAX_BYTES) as usize;
    let mut data = Vec::with_capacity(want);
    file.take(want as u64).read_to_end(&mut data)?;
    let probe = &data[..data.len().min(BINARY_PROBE)];
    if probe.contains(&0) {
        return Ok((version, Scanned::Binary));
    }
    Ok((
        version,
        Scanned::Text {
            findings: Scanner::get().scan(&data, key),
            bytes: data.len() as u64,
            truncated: meta.len() > MAX_BYTES,
        },
    ))
}

/// Open `path` for scanning: never blocks on a FIFO, never updates its access time where
/// the caller may avoid it.
pub fn open(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
}

/// Results by object version (a [`Version`], or the kernel's key of one), the oldest
/// forgotten first.
pub struct Cache<K = Version> {
    entries: HashMap<K, Arc<Scanned>>,
    order: VecDeque<K>,
    capacity: usize,
}

impl<K: Copy + Eq + std::hash::Hash> Cache<K> {
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: HashMap::with_capacity(capacity.min(4096)),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    pub fn get(&self, v: &K) -> Option<Arc<Scanned>> {
        self.entries.get(v).cloned()
    }

    pub fn insert(&mut self, v: K, s: Scanned) -> Arc<Scanned> {
        let s = Arc::new(s);
        if self.entries.insert(v, s.clone()).is_none() {
            self.order.push_back(v);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.entries.remove(&old);
                }
            }
        }
        s
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}
