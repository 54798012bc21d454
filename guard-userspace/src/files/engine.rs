//! One generation of file protection: the rules resolved to objects, one fanotify permission
//! group holding the marks of every rule, the identity index that maps an event back to its
//! rules, the tracking group that keeps the marks current, and the threads answering them. A
//! policy reload builds a new engine before the old one stops, so there is no moment without
//! marks (while both exist, an open is answered by both).
//!
//! One permission group for all rules, not one per rule: fanotify groups are limited per user
//! (`fs.fanotify.max_user_groups`, 128 by default), a policy may hold hundreds of rules, and
//! one group means one answer per open. An event is attributed by identity: the inode it
//! names, the volume it is on, or (for a file under a marked directory) its parent
//! directory.
//!
//! Keeping current: a notification group (`FAN_CREATE | FAN_MOVED_TO | FAN_ONDIR`, reporting
//! directory handles and names) watches every directory of a protected subtree and the
//! nearest existing directory of each missing path or glob. A new or moved-in directory is
//! walked and marked at once; a name appearing where a rule waits re-resolves that rule. This
//! is event-driven rather than a timer because a timer leaves a window as long as its period
//! for a new subdirectory; the timer remains only for `**/name` patterns (every 60 s) and
//! after a queue overflow (a full re-resolution). Marks of directories moved out of a subtree
//! stay until the next reload (over-protection, never under-protection).

use std::{
    collections::{BTreeMap, HashMap as StdHashMap},
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant},
};

use guard_common::file::{DevKey, FileIdentity, FileKey, FileRule, access};
use tracing::{error, warn};

use super::{
    Shared,
    fanotify::{self, Group, HandleKey},
    perm,
    resolve::{self, Kind, Object, Targets},
};
use crate::policy::{Action, CompiledPathRule, Mode, PathPattern};

/// Most directory entries walked per protected subtree.
const WALK_MAX: usize = 500_000;
/// How often `**/name` patterns are searched again.
const RESCAN: Duration = Duration::from_secs(60);
/// Mark errors kept per rule for `guard status`.
const ERRORS_KEPT: usize = 8;

/// A path rule as the file guard applies it.
#[derive(Clone, Debug)]
pub struct RuleInfo {
    pub id: u32,
    pub name: String,
    pub access: u32,
    pub action: Action,
    pub mode: Mode,
    /// What makes it the same rule across reloads and restarts (its identity set).
    pub fingerprint: u64,
}

impl RuleInfo {
    pub fn new(r: &CompiledPathRule) -> Self {
        Self {
            id: r.id,
            name: r.name.clone(),
            access: r.access,
            action: r.action,
            mode: r.mode,
            fingerprint: super::identity::fingerprint(r),
        }
    }

    /// Does this rule act (deny or kill), rather than only record?
    pub fn enforcing(&self) -> bool {
        self.mode == Mode::Enforce && self.action != Action::Audit
    }

    /// The fanotify permission events this rule needs: opens for read and write, exec, and
    /// for enforced read rules reads through descriptors opened before the mark (or passed
    /// in from outside the tree).
    pub fn perm_mask(&self) -> u64 {
        let mut m = 0;
        if self.access & (access::READ | access::WRITE) != 0 {
            m |= libc::FAN_OPEN_PERM;
        }
        if self.access & access::EXEC != 0 {
            m |= libc::FAN_OPEN_EXEC_PERM;
        }
        if self.access & access::READ != 0 && self.enforcing() {
            m |= libc::FAN_ACCESS_PERM;
        }
        m
    }

    /// The kernel's view: what enforcing and audit rules protect. An enforcing rule's
    /// objects are protected names too, whatever its access: a tagged process may not rename
    /// or unlink them (moving a read-protected `~/.aws` away is how its protection would be
    /// left behind).
    pub fn kernel_rule(&self, bits: u32) -> FileRule {
        let code = self.action.id();
        let (enforce, audit) = if self.enforcing() {
            (bits | access::DELETE, 0)
        } else {
            (0, bits)
        };
        FileRule {
            rule_id: self.id,
            enforce,
            audit,
            action: code,
        }
    }
}

/// What one rule protects right now.
#[derive(Clone, Debug, Default)]
pub struct RuleState {
    pub targets: Targets,
    /// Inodes marked in the rule's permission group (directories and files).
    pub marked: usize,
    /// A subtree was larger than the walk limit: part of it is not marked.
    pub truncated: bool,
    pub errors: Vec<String>,
}

/// A directory the tracking group watches.
#[derive(Clone, Debug, Default)]
struct Watch {
    path: PathBuf,
    /// Rules whose subtree it is part of.
    subtree: Vec<usize>,
    /// Rules waiting for an entry matching a glob to appear in it.
    pending: Vec<(usize, String)>,
}

/// Which rules protect what, by identity.
#[derive(Debug, Default)]
pub struct Index {
    /// Marked directories (every directory of a subtree) and files, by `(dev, ino)`.
    pub objects: StdHashMap<FileKey, Vec<usize>>,
    /// Whole volumes by device.
    pub volumes: StdHashMap<u32, Vec<usize>>,
    /// Rules with subtree directories on a device: the answer when a file's parent cannot
    /// be found (conservative: those rules are considered).
    pub subtrees: StdHashMap<u32, Vec<usize>>,
}

impl Index {
    fn add(list: &mut Vec<usize>, rule: usize) {
        if !list.contains(&rule) {
            list.push(rule);
        }
    }
}

pub struct Engine {
    pub rules: Vec<RuleInfo>,
    patterns: Vec<Vec<PathPattern>>,
    /// The permission group (none when no rule needs permission events, or it failed).
    pub group: Option<Arc<Group>>,
    tracking: Option<Arc<Group>>,
    pub state: Mutex<Vec<RuleState>>,
    pub index: Mutex<Index>,
    watches: Mutex<StdHashMap<HandleKey, Watch>>,
    pub shared: Arc<Shared>,
    scan_roots: Vec<PathBuf>,
    /// The pinned identity set as this engine found it: objects of unchanged rules that are
    /// to be found again, wherever they were moved.
    pub(super) remembered: Mutex<Vec<(FileKey, FileIdentity)>>,
    stop: AtomicBool,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// Reader threads of the permission group (each read takes a distinct batch of events).
const READERS: usize = 2;

impl Engine {
    /// Resolve `rules`, create and mark the groups, start their threads and install the
    /// kernel's object and device maps.
    pub fn build(
        rules: &[CompiledPathRule],
        homes: &[(u32, PathBuf)],
        shared: Arc<Shared>,
    ) -> Arc<Self> {
        let infos: Vec<RuleInfo> = rules.iter().map(RuleInfo::new).collect();
        let mut state = vec![RuleState::default(); infos.len()];
        // On the bpf-lsm tier the LSM programs decide every access in the kernel: no
        // permission events (the tracking group still keeps identities current).
        let group = if !shared.lsm && infos.iter().any(|r| r.perm_mask() != 0) {
            match Group::permission() {
                Ok(g) => Some(Arc::new(g)),
                Err(e) => {
                    error!(error = %e, "fanotify permission group: path rules are NOT enforced on opens");
                    for st in &mut state {
                        st.errors.push(format!("fanotify permission group: {e}"));
                    }
                    None
                }
            }
        } else {
            None
        };
        let tracking = Group::tracking()
            .map(Arc::new)
            .map_err(|e| error!(error = %e, "fanotify tracking group; new directories will not be marked"))
            .ok();
        let remembered = super::identity::remembered(&shared);
        let engine = Arc::new(Self {
            patterns: rules.iter().map(|r| r.patterns(homes)).collect(),
            rules: infos,
            group,
            tracking,
            state: Mutex::new(state),
            index: Mutex::new(Index::default()),
            watches: Mutex::new(StdHashMap::new()),
            shared,
            scan_roots: homes.iter().map(|(_, h)| h.clone()).collect(),
            remembered: Mutex::new(remembered),
            stop: AtomicBool::new(false),
            threads: Mutex::new(Vec::new()),
        });
        // Readers first: the walks below open marked directories, which the readers answer.
        let mut threads = Vec::new();
        if let Some(g) = &engine.group {
            for n in 0..READERS {
                let (e, g) = (engine.clone(), g.clone());
                match std::thread::Builder::new()
                    .name(format!("guard-fanotify-{n}"))
                    .spawn(move || perm::serve(&e, &g))
                {
                    Ok(t) => threads.push(t),
                    Err(err) => error!(error = %err, "cannot start a fanotify reader"),
                }
            }
        }
        if engine.tracking.is_some() {
            let e = engine.clone();
            match std::thread::Builder::new()
                .name("guard-fanotify-track".into())
                .spawn(move || e.track())
            {
                Ok(t) => threads.push(t),
                Err(err) => error!(error = %err, "cannot start the tracking thread"),
            }
        }
        *engine.threads.lock().expect("threads lock") = threads;
        for i in 0..engine.rules.len() {
            engine.refresh(i);
        }
        engine.sync_kernel();
        engine
    }

    pub fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// Stop the threads and close the groups (pending permission events are allowed by the
    /// kernel when a group closes).
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
        let threads = std::mem::take(&mut *self.threads.lock().expect("threads lock"));
        for t in threads {
            let _ = t.join();
        }
    }

    /// The rules an event on object `key` (a directory when `is_dir`) may concern: its volume,
    /// itself, and its parent directory (`parent()` is asked only when needed). When the
    /// parent cannot be found, every rule with a subtree on that device is a candidate.
    pub fn rules_for(
        &self,
        key: FileKey,
        is_dir: bool,
        parent: impl FnOnce() -> Option<FileKey>,
    ) -> Vec<usize> {
        fn add(out: &mut Vec<usize>, list: Option<&Vec<usize>>) {
            for r in list.into_iter().flatten() {
                Index::add(out, *r);
            }
        }
        let mut out: Vec<usize> = Vec::new();
        {
            let index = self.index.lock().expect("index lock");
            add(&mut out, index.volumes.get(&key.dev));
            add(&mut out, index.objects.get(&key));
        }
        // A file's rules come from its directory; so do a new directory's until it is
        // marked itself.
        if !is_dir || out.is_empty() {
            let parent = parent();
            let index = self.index.lock().expect("index lock");
            match parent {
                Some(p) if p.dev == key.dev => add(&mut out, index.objects.get(&p)),
                _ => add(&mut out, index.subtrees.get(&key.dev)),
            }
        }
        out
    }

    /// Resolve rule `i` again and mark what is new.
    pub fn refresh(&self, i: usize) {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo")
            .map(|t| resolve::parse_mountinfo(&t))
            .unwrap_or_default();
        let mut targets = resolve::resolve(&self.patterns[i], &mounts, &self.scan_roots);
        targets
            .objects
            .extend(self.found_again(i, &targets.objects, &mounts));
        let mut st = RuleState {
            targets: targets.clone(),
            ..Default::default()
        };
        for o in &targets.objects {
            self.protect(i, o, &mut st);
        }
        for (dir, name) in &targets.watch {
            self.watch(dir, None, Some((i, name.clone())));
        }
        let mut all = self.state.lock().expect("state lock");
        // A refresh adds, never drops: an object the rule covered stays covered where it was
        // moved (its marks and kernel entry follow the inode), until the rule changes.
        let old = std::mem::take(&mut all[i].targets.objects);
        for o in old {
            let same = |n: &Object| (n.dev, n.ino, n.kind) == (o.dev, o.ino, o.kind);
            if !st.targets.objects.iter().any(same) {
                st.targets.objects.push(o);
            }
        }
        all[i] = st;
    }

    /// Mark object `o` for rule `i` and index it.
    fn protect(&self, i: usize, o: &Object, st: &mut RuleState) {
        let rule = &self.rules[i];
        let group = self.group.as_deref();
        let mask = rule.perm_mask();
        let reads = rule.access & access::READ != 0;
        let ondir = if reads { libc::FAN_ONDIR } else { 0 };
        let mut marked = Vec::new();
        let mut mark = |flags: u32, mask: u64, path: &std::path::Path| {
            let Some(g) = group.filter(|_| mask != 0) else {
                return true;
            };
            match g.mark(flags, mask, path) {
                Ok(()) => {
                    st.marked += 1;
                    true
                }
                Err(e) => {
                    if st.errors.len() < ERRORS_KEPT {
                        st.errors.push(format!("mark {}: {e}", path.display()));
                    }
                    false
                }
            }
        };
        match o.kind {
            Kind::File | Kind::Backing => {
                if mark(0, mask, &o.path) {
                    marked.push(FileKey::new(o.dev, o.ino));
                }
            }
            Kind::Volume => {
                mark(libc::FAN_MARK_FILESYSTEM, mask | ondir, &o.path);
                let mut index = self.index.lock().expect("index lock");
                Index::add(index.volumes.entry(o.dev).or_default(), i);
            }
            Kind::Dir => {
                let w = match resolve::walk(&o.path, reads, WALK_MAX) {
                    Ok(w) => w,
                    Err(e) => {
                        st.errors.push(format!("walk {}: {e}", o.path.display()));
                        return;
                    }
                };
                st.truncated |= w.truncated;
                let dev = resolve::kernel_dev_of(w.dev);
                for (d, ino) in &w.dirs {
                    if mark(0, mask | libc::FAN_EVENT_ON_CHILD | ondir, d) {
                        marked.push(FileKey::new(dev, *ino));
                    }
                    self.watch(d, Some(i), None);
                }
                for (f, ino) in &w.files {
                    if mark(0, mask, f) {
                        marked.push(FileKey::new(dev, *ino));
                    }
                }
                let mut index = self.index.lock().expect("index lock");
                Index::add(index.subtrees.entry(dev).or_default(), i);
            }
        }
        let mut index = self.index.lock().expect("index lock");
        for key in marked {
            Index::add(index.objects.entry(key).or_default(), i);
        }
    }

    /// Watch `dir` for new entries, as part of rule `subtree`'s subtree, or for an entry
    /// matching `pending`'s glob that rule waits for.
    fn watch(
        &self,
        dir: &std::path::Path,
        subtree: Option<usize>,
        pending: Option<(usize, String)>,
    ) {
        let Some(t) = &self.tracking else { return };
        let Ok(handle) = fanotify::handle_of(dir) else {
            return;
        };
        if let Err(e) = t.mark(
            0,
            libc::FAN_CREATE | libc::FAN_MOVED_TO | libc::FAN_ONDIR,
            dir,
        ) {
            warn!(dir = %dir.display(), error = %e, "cannot watch a directory for new entries");
            return;
        }
        let mut watches = self.watches.lock().expect("watches lock");
        let w = watches.entry(handle).or_insert_with(|| Watch {
            path: dir.to_path_buf(),
            ..Default::default()
        });
        if let Some(r) = subtree
            && !w.subtree.contains(&r)
        {
            w.subtree.push(r);
        }
        if let Some(p) = pending
            && !w.pending.contains(&p)
        {
            w.pending.push(p);
        }
    }

    /// The tracking thread: mark new directories of subtrees, resolve rules whose paths
    /// appear, search `**/name` patterns again from time to time.
    fn track(&self) {
        let Some(group) = self.tracking.clone() else {
            return;
        };
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_scan = Instant::now();
        while !self.stopped() {
            perm::wait_readable(&group, 200);
            loop {
                let n = match group.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) => {
                        error!(error = %e, "reading the fanotify tracking group");
                        return;
                    }
                };
                let mut refresh = Vec::new();
                for ev in fanotify::events(&buf[..n]) {
                    if ev.mask & libc::FAN_Q_OVERFLOW != 0 {
                        warn!("fanotify tracking queue overflowed; resolving every rule again");
                        refresh.extend(0..self.rules.len());
                        continue;
                    }
                    for entry in fanotify::dir_entries(ev.info) {
                        let watch = self
                            .watches
                            .lock()
                            .expect("watches lock")
                            .get(&entry.handle)
                            .cloned();
                        let Some(w) = watch else { continue };
                        let child = w.path.join(&entry.name);
                        for &r in &w.subtree {
                            self.created(r, &child);
                        }
                        let name = entry.name.to_string_lossy();
                        refresh.extend(
                            w.pending
                                .iter()
                                .filter(|(_, glob)| crate::policy::glob_match(glob, &name))
                                .map(|(r, _)| *r),
                        );
                    }
                }
                refresh.sort_unstable();
                refresh.dedup();
                if !refresh.is_empty() {
                    for r in refresh {
                        self.refresh(r);
                    }
                    self.sync_kernel();
                }
            }
            if last_scan.elapsed() >= RESCAN {
                last_scan = Instant::now();
                let any: Vec<usize> = {
                    let st = self.state.lock().expect("state lock");
                    (0..st.len())
                        .filter(|i| !st[*i].targets.any_dir.is_empty())
                        .collect()
                };
                if !any.is_empty() {
                    for r in any {
                        self.refresh(r);
                    }
                    self.sync_kernel();
                }
            }
        }
    }

    /// `path` appeared in a directory of rule `r`'s subtree.
    fn created(&self, r: usize, path: &std::path::Path) {
        let Ok(meta) = std::fs::symlink_metadata(path) else {
            return;
        };
        let reads = self.rules[r].access & access::READ != 0;
        if !(meta.is_dir() || reads && meta.is_file()) {
            return;
        }
        let o = Object {
            path: path.to_path_buf(),
            dev: resolve::kernel_dev_of(std::os::unix::fs::MetadataExt::dev(&meta)),
            ino: std::os::unix::fs::MetadataExt::ino(&meta),
            kind: if meta.is_dir() { Kind::Dir } else { Kind::File },
        };
        let mut st = RuleState::default();
        self.protect(r, &o, &mut st);
        let mut all = self.state.lock().expect("state lock");
        all[r].marked += st.marked;
        all[r].truncated |= st.truncated;
        for e in st.errors {
            if all[r].errors.len() < ERRORS_KEPT {
                all[r].errors.push(e);
            }
        }
    }

    /// Install the objects and devices of every rule in the kernel maps (new entries first,
    /// then stale ones removed) and the catalog that names them in events.
    pub fn sync_kernel(&self) {
        let mut objects: BTreeMap<FileKey, FileRule> = BTreeMap::new();
        let mut devices: BTreeMap<DevKey, FileRule> = BTreeMap::new();
        let mut names: StdHashMap<FileKey, PathBuf> = StdHashMap::new();
        {
            let state = self.state.lock().expect("state lock");
            for (rule, st) in self.rules.iter().zip(state.iter()) {
                let modify = rule.access & (access::WRITE | access::DELETE);
                for o in &st.targets.objects {
                    let key = match o.kind {
                        Kind::Volume => FileKey::new(o.dev, 0),
                        _ => FileKey::new(o.dev, o.ino),
                    };
                    names.entry(key).or_insert_with(|| o.path.clone());
                    // Every access: the LSM programs decide reads and execs too (the
                    // fallback tier's change detectors only act on write and delete bits).
                    if rule.access != 0 {
                        objects
                            .entry(key)
                            .or_default()
                            .merge(&rule.kernel_rule(rule.access));
                    }
                }
                let mut dev_bits = 0;
                if rule.access & access::READ != 0 {
                    dev_bits |= access::READ;
                }
                if modify != 0 {
                    dev_bits |= access::WRITE;
                }
                for &(major, minor) in &st.targets.devices {
                    if dev_bits != 0 {
                        devices
                            .entry(DevKey { major, minor })
                            .or_default()
                            .merge(&rule.kernel_rule(dev_bits));
                    }
                }
            }
        }
        {
            let mut catalog = self.shared.catalog.lock().expect("catalog lock");
            catalog.rules = self.rules.iter().map(|r| (r.id, r.clone())).collect();
            catalog.objects = names;
        }
        let mut kernel = self.shared.kernel.lock().expect("kernel lock");
        let Some(maps) = kernel.as_mut() else { return };
        let current = super::kernel::entries(&maps.objects);
        super::kernel::sync_map(&mut maps.objects, &current, &objects, "protected object");
        let current = super::kernel::entries(&maps.devices);
        super::kernel::sync_map(&mut maps.devices, &current, &devices, "protected device");
        self.sync_identities(maps);
    }
}
