//! Files agents read, scanned for secrets: the kernel reports a tagged process's open for
//! reading of a file version not known clean (`guard_common::secret`); the pipeline opens the
//! same object again (by file handle, or through the reader's descriptor), scans it, gives the
//! kernel its verdict and logs a `secret_read` line for each agent tree that read a secret —
//! the inventory of credentials each agent touched. Nothing is logged for clean files.
//!
//! Each report is answered for its tree (`TREE_VERDICTS`): until then the tree is pending,
//! and a secret found taints it (see the secrets rule in `guard-ebpf/src/probes/net.rs`).

use std::{
    collections::{HashMap, HashSet},
    fs::File,
    io,
    os::{fd::AsRawFd, unix::fs::MetadataExt},
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, MapData};
use guard_common::{
    ProcKey,
    file::kernel_dev_of,
    secret::{FileVersion, SecretRead, TreeVerdict, verdict},
};
use tracing::{info, warn};

use super::{Decision, DecodeError, Decoded, Object, c_str, read_pod, schema::SecretFound};
use crate::{
    fshandle::{self, Handle},
    kernel::SecretMaps,
    secrets::{
        self, Cause, Taints,
        file::{Cache, Scanned},
    },
};

/// Rule name of `secret_read` lines.
pub const RULE: &str = "guard:secrets";

pub fn decode(raw: &[u8]) -> Result<Decoded, DecodeError> {
    let ev: SecretRead = read_pod(raw)?;
    let mut d = Decoded::new(guard_common::event::EventKind::SecretRead, ev.header);
    d.comm = Some(c_str(&ev.comm));
    d.secret_read = Some(ev);
    Ok(d)
}

/// The pipeline's scanner of files agents read.
pub struct SecretReads {
    maps: Option<SecretMaps>,
    /// Why each tainted tree is tainted (shared with the network responder).
    taints: Taints,
    /// The tag map, to forget the trees that are gone.
    tags: Option<Arc<TagMap>>,
    /// The answers given to each tree (the kernel map's values, kept here too).
    answers: HashMap<ProcKey, TreeVerdict>,
    next_sweep: Instant,
    cache: Cache<FileVersion>,
    /// `(tree root, version)` already logged: an agent that reads a file a thousand times
    /// read it once, for the inventory.
    logged: HashSet<(ProcKey, FileVersion)>,
    /// A directory on each mounted filesystem, by kernel device number.
    mounts: HashMap<u32, PathBuf>,
    /// Versions that could not be opened again: logged once, whichever trees read them.
    unscannable: HashSet<FileVersion>,
}

pub type TagMap = BpfHashMap<MapData, u32, guard_common::Tag>;

/// Forget the logged pairs past this many (the inventory then logs a pair again).
const LOGGED_MAX: usize = 65_536;
/// How often the trees that are gone are forgotten.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

impl SecretReads {
    /// The scanner; `tags` lets it forget trees that are gone. Reads a previous daemon
    /// reported and never answered are answered now, unscanned: their records are lost, and
    /// the versions are scanned when they are read again (the verdicts were not pinned).
    pub fn new(maps: Option<SecretMaps>, taints: Taints, tags: Option<Arc<TagMap>>) -> Self {
        let mut answers = HashMap::new();
        if let Some(m) = maps.as_ref() {
            for (root, reads) in m.reads.iter().flatten() {
                let mut v = m.verdicts.get(&root, 0).unwrap_or_default();
                if v.answered < reads.requested {
                    warn!(
                        root = root.tgid,
                        unanswered = reads.requested - v.answered,
                        "reads reported to a previous daemon are not scanned"
                    );
                    v.answered = reads.requested;
                }
                answers.insert(root, v);
            }
        }
        let mut s = Self {
            maps,
            taints,
            tags,
            answers,
            next_sweep: Instant::now() + SWEEP_EVERY,
            cache: Cache::new(16_384),
            logged: HashSet::new(),
            mounts: HashMap::new(),
            unscannable: HashSet::new(),
        };
        let roots: Vec<ProcKey> = s.answers.keys().copied().collect();
        for root in roots {
            s.write_answer(root);
        }
        s
    }

    /// Scan what `d` reports, and answer the kernel for its tree; fills the event's object,
    /// decision and findings. `false`: nothing to log (clean, or already logged for this
    /// tree).
    pub fn scan(&mut self, d: &mut Decoded) -> bool {
        let root = d.header.root;
        let (log, secret) = self.inspect(d);
        if secret && let (Some(object), Some(first)) = (&d.object, d.secrets.first()) {
            let cause = Cause {
                path: object.path.clone().unwrap_or_else(|| "?".to_owned()),
                detector: first.detector.clone(),
                fingerprint: first.fingerprint.clone(),
            };
            if self.taints.taint(root, cause) {
                info!(root = root.tgid, "an agent tree read a secret: tainted");
            }
        }
        let answer = self.answers.entry(root).or_default();
        answer.answered += 1;
        answer.tainted |= u32::from(secret);
        self.write_answer(root);
        self.taints
            .answered_after(crate::clock::boot_ns().saturating_sub(d.header.time_ns));
        log
    }

    fn write_answer(&mut self, root: ProcKey) {
        let (Some(m), Some(v)) = (self.maps.as_mut(), self.answers.get(&root)) else {
            return;
        };
        if let Err(e) = m.verdicts.insert(root, *v, 0) {
            warn!(root = root.tgid, error = %e, "cannot answer the kernel for a tree's reads");
        }
    }

    /// Forget, in the kernel and here, the trees with no tagged process left.
    pub fn sweep_due(&mut self, now: Instant) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let Some(tags) = self.tags.as_ref() else {
            return;
        };
        let alive: HashSet<ProcKey> = tags.iter().flatten().map(|(_, t)| t.root).collect();
        let Some(m) = self.maps.as_mut() else {
            return;
        };
        let gone: Vec<ProcKey> = m
            .reads
            .keys()
            .flatten()
            .filter(|root| !alive.contains(root))
            .collect();
        for root in &gone {
            let _ = m.reads.remove(root);
            let _ = m.verdicts.remove(root);
            self.answers.remove(root);
        }
        self.taints.retain(|root| alive.contains(root));
    }

    /// `(log it, it holds a secret)`.
    fn inspect(&mut self, d: &mut Decoded) -> (bool, bool) {
        let Some(ev) = d.secret_read else {
            return (false, false);
        };
        let v = ev.version;
        if !self.logged.insert((d.header.root, v)) {
            return (false, false);
        }
        if self.logged.len() > LOGGED_MAX {
            self.logged.clear();
        }
        let (path, outcome) = match self.open(&ev, d.header.proc.tgid) {
            Ok((file, path)) => {
                let scanned = match self.cache.get(&v) {
                    Some(s) => Ok(s),
                    None => secrets::file::scan_file(&file, secrets::key())
                        .map(|(_, s)| self.cache.insert(v, s)),
                };
                (Some(path), scanned)
            }
            Err(e) => (None, Err(e)),
        };
        let (kernel_verdict, findings, note) = match &outcome {
            Ok(s) => match s.as_ref() {
                Scanned::Text { findings, .. } if !findings.is_empty() => {
                    (verdict::SECRET, findings.clone(), None)
                }
                _ => (verdict::CLEAN, Vec::new(), None),
            },
            Err(e) => (
                verdict::UNSCANNABLE,
                Vec::new(),
                Some(format!("not scanned: {e}")),
            ),
        };
        if let Some(m) = self.maps.as_mut() {
            let _ = m.seen.insert(v, kernel_verdict, 0);
        }
        if findings.is_empty() && note.is_none() {
            // Clean: the kernel reports it no more; nothing to remember for this tree.
            self.logged.remove(&(d.header.root, v));
            return (false, false);
        }
        if note.is_some() {
            if !self.unscannable.insert(v) {
                return (false, false);
            }
            if self.unscannable.len() > LOGGED_MAX {
                self.unscannable.clear();
            }
        }
        let secret = !findings.is_empty();
        d.object = Some(Object {
            path: path.map(|p| p.display().to_string()),
            dev: Some(u64::from(v.dev)),
            ino: Some(v.ino),
            operation: Some(note.unwrap_or_else(|| "read".to_owned())),
        });
        d.decision = Some(Decision {
            rule: RULE.to_owned(),
            rule_id: None,
            action: "audit".to_owned(),
            mode: Some("audit".to_owned()),
            result: "allowed".to_owned(),
            hook: Some("file_open".to_owned()),
        });
        d.secrets = findings
            .into_iter()
            .map(|f| SecretFound {
                detector: f.detector.to_owned(),
                fingerprint: f.fingerprint,
                line: f.line,
            })
            .collect();
        (true, secret)
    }

    /// The object the kernel saw, opened again: by file handle where the filesystem's layout
    /// is known, else through a descriptor of the reader that still holds it.
    fn open(&mut self, ev: &SecretRead, tgid: u32) -> io::Result<(File, PathBuf)> {
        let v = &ev.version;
        let file = match self.by_handle(ev) {
            Ok(f) => f,
            Err(handle_err) => by_reader(tgid, v).map_err(|_| handle_err)?,
        };
        let meta = file.metadata()?;
        if kernel_dev_of(meta.dev()) != v.dev || meta.ino() != v.ino {
            return Err(io::Error::other("the object was replaced"));
        }
        let path = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))?;
        Ok((file, path))
    }

    fn by_handle(&mut self, ev: &SecretRead) -> io::Result<File> {
        let v = &ev.version;
        let mut handle = handle_of(ev.sb_magic, v).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::Unsupported,
                format!(
                    "no file-handle layout for filesystem magic {:#x}",
                    ev.sb_magic
                ),
            )
        })?;
        if !self.mounts.contains_key(&v.dev) {
            self.mounts = mount_points();
        }
        let dir = self
            .mounts
            .get(&v.dev)
            .ok_or_else(|| io::Error::other("the filesystem is not mounted here"))?;
        let fd = handle.open(
            dir,
            libc::O_RDONLY | libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_CLOEXEC,
        )?;
        Ok(File::from(fd))
    }
}

/// The handle that opens inode `v` on a filesystem of `magic`: ext2/3/4 and XFS (32-bit
/// inode numbers) encode `{ino, generation}` (`FILEID_INO32_GEN`). (tmpfs opens a handle only
/// for an inode a handle was once made of.)
fn handle_of(magic: u32, v: &FileVersion) -> Option<Handle> {
    const FILEID_INO32_GEN: i32 = 1;
    match magic {
        0xEF53 | 0x5846_5342 => {
            let ino = u32::try_from(v.ino).ok()?;
            let mut bytes = [0u8; 8];
            bytes[..4].copy_from_slice(&ino.to_ne_bytes());
            bytes[4..].copy_from_slice(&v.generation.to_ne_bytes());
            Some(Handle::new(FILEID_INO32_GEN, &bytes))
        }
        _ => None,
    }
}

/// The object through the reader, while it still holds it: a descriptor, a mapping (a
/// mapped file, a shared library) or its executable.
fn by_reader(tgid: u32, v: &FileVersion) -> io::Result<File> {
    let is_it = |path: &std::path::Path| {
        std::fs::metadata(path).is_ok_and(|m| kernel_dev_of(m.dev()) == v.dev && m.ino() == v.ino)
    };
    for dir in ["fd", "map_files"] {
        let Ok(entries) = std::fs::read_dir(format!("/proc/{tgid}/{dir}")) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if is_it(&path) {
                return secrets::file::open(&path);
            }
        }
    }
    let exe = PathBuf::from(format!("/proc/{tgid}/exe"));
    if is_it(&exe) {
        return secrets::file::open(&exe);
    }
    Err(io::Error::other("the reader holds it no more"))
}

/// A directory of each mounted filesystem (its first mount point), by kernel device number.
fn mount_points() -> HashMap<u32, PathBuf> {
    let mut out = HashMap::new();
    for m in fshandle::mounts() {
        out.entry(m.kernel_dev()).or_insert(m.mount_point);
    }
    out
}
