//! File protection: the policy's `paths:` rules enforced on volumes, directories and files by
//! identity (device and inode), for tagged processes only.
//!
//! Layers on a kernel without BPF LSM, each with its guarantee (`guard status` shows which
//! one covers which access of each rule, and whether it is attached):
//! - **enforced** — fanotify permission events (`perm.rs`): opens for reading, writing or
//!   truncation (`O_TRUNC`), reads through inherited descriptors and exec of protected
//!   objects fail with EPERM before anything happens. Inode marks follow the object through
//!   renames, hard links, symlinks, bind mounts and `/proc/self/root/...`. Lives in the
//!   daemon.
//! - **kill-on-detect** — the ctime tracepoints (`guard-ebpf/src/probes/file.rs`): unlink,
//!   rmdir, rename, truncate(2), chmod, create and link inside a protected object have no
//!   permission hook here; the kernel kills the offender before the system call returns, so
//!   at most one object per process is changed. Pinned: holds without the daemon.
//! - **enforced** for raw block devices behind protected volumes (cgroup device program),
//!   pinned.
//! - **enforced** for `guard run` trees by their private mount namespace (`mountns.rs`),
//!   which needs no daemon at all.
//!
//! Identity is kept current by `engine.rs` (a fanotify notification group); rules are
//! resolved by `resolve.rs`; decisions become events, stderr reasons and kills in `report.rs`.

pub mod access;
pub mod ask;
pub mod engine;
pub mod fanotify;
pub mod identity;
pub mod kernel;
pub mod mountns;
pub mod perm;
pub mod report;
pub mod resolve;
pub mod status;

use std::{
    collections::HashMap as StdHashMap,
    path::{Path, PathBuf},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{HashMap, MapData, MapError};
use guard_common::{
    Tag,
    agent::trim_nul,
    event::EventKind,
    file::{FileEvent, FileKey, access as bits, dev_parts},
};
use tracing::{error, info};

pub use kernel::{Attached, FileMaps};
pub use mountns::Protections;
pub use status::PathRuleStatus;

use engine::{Engine, RuleInfo};
use report::{Decision, Hook, Outcome};

use crate::{
    events::pipeline::EventSink,
    policy::{Action, CompiledPathRule},
};

#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error("map {name}: {source}")]
    Map {
        name: &'static str,
        #[source]
        source: MapError,
    },
    #[error("starting a file protection thread: {0}")]
    Thread(#[source] std::io::Error),
}

/// What the kernel loader hands over: the maps, and what attached.
pub struct Loaded {
    pub maps: FileMaps,
    pub attached: Attached,
}

pub struct FileConfig {
    /// The daemon's pin directory (the tag map is opened from its pin).
    pub pin_dir: PathBuf,
    /// Where `~` homes come from.
    pub passwd: PathBuf,
}

/// Work for the reporter thread.
pub enum Report {
    Decision(Decision),
    Kernel(EventKind, FileEvent),
}

/// Names for the kernel's ids: rules by id, protected objects by key.
#[derive(Default)]
pub struct Catalog {
    pub rules: StdHashMap<u32, RuleInfo>,
    pub objects: StdHashMap<FileKey, PathBuf>,
}

/// State shared by every engine and thread.
pub struct Shared {
    pub tags: HashMap<MapData, u32, Tag>,
    pub reports: Sender<Report>,
    pub kernel: Mutex<Option<FileMaps>>,
    pub catalog: Mutex<Catalog>,
    /// The daemon's event pipeline: it adds the process tree, writes and counts.
    pub sink: EventSink,
    /// The bpf-lsm tier's file hooks enforce (no fanotify permission events then).
    pub lsm: bool,
    /// Freezes the trees `hold` rules name.
    pub holder: crate::respond::Holder,
    /// Requests of `ask` rules, and their approvals.
    pub asking: ask::Asking,
}

/// The running file protection.
pub struct FileGuard {
    shared: Arc<Shared>,
    engine: Mutex<Arc<Engine>>,
    attached: Attached,
    passwd: PathBuf,
    /// One reload at a time; the sequence number of the rules applied last.
    reload_lock: Mutex<u64>,
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl FileGuard {
    /// Start file protection for `rules`. `loaded` is `None` when the kernel side is absent.
    pub fn start(
        cfg: FileConfig,
        loaded: Option<Loaded>,
        rules: &[CompiledPathRule],
        sink: EventSink,
        (holder, requests): (crate::respond::Holder, crate::requests::Requests),
    ) -> Result<Self, FileError> {
        let asking = ask::Asking::new(requests, &cfg.pin_dir.join("maps"));
        let tags = crate::loader::open_pinned_tags(&cfg.pin_dir.join("maps"))
            .map_err(|(name, source)| FileError::Map { name, source })?;
        let (tx, rx) = mpsc::channel();
        let stop = Arc::new(AtomicBool::new(false));
        let (mut maps, attached) = match loaded {
            Some(l) => (Some(l.maps), l.attached),
            None => (None, Attached::default()),
        };
        let ring = maps.as_mut().and_then(|m| m.events.take());
        let shared = Arc::new(Shared {
            tags,
            reports: tx.clone(),
            kernel: Mutex::new(maps),
            catalog: Mutex::new(Catalog::default()),
            sink,
            holder,
            asking,
            lsm: attached.lsm(),
        });
        let mut threads = Vec::new();
        if let Some(ring) = ring {
            let reader = kernel::spawn_reader(ring, tx.clone(), stop.clone());
            threads.push(reader.map_err(FileError::Thread)?);
        }
        {
            let shared = shared.clone();
            let stop = stop.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("guard-file-report".into())
                    .spawn(move || reporter(&shared, rx, &stop))
                    .map_err(FileError::Thread)?,
            );
        }
        let homes = read_homes(&cfg.passwd);
        let engine = Engine::build(rules, &homes, shared.clone());
        info!(
            rules = rules.len(),
            detectors = ?attached.detectors,
            device = attached.device,
            "file protection started"
        );
        if let Some(e) = &attached.detect_error {
            error!(error = %e, "kill-on-detect for delete/rename/truncate is NOT attached");
        }
        if let Some(e) = &attached.device_error {
            error!(error = %e, "raw block device protection is NOT attached");
        }
        Ok(Self {
            shared,
            engine: Mutex::new(engine),
            attached,
            passwd: cfg.passwd,
            reload_lock: Mutex::new(0),
            stop,
            threads,
        })
    }

    /// Apply new rules: the new engine is complete before the old one stops. `seq` orders
    /// reloads started from several threads: rules older than those applied are dropped.
    pub fn reload(&self, seq: u64, rules: &[CompiledPathRule]) {
        let mut last = self.reload_lock.lock().expect("reload lock");
        if seq <= *last {
            return;
        }
        *last = seq;
        let homes = read_homes(&self.passwd);
        let new = Engine::build(rules, &homes, self.shared.clone());
        let old = std::mem::replace(&mut *self.engine.lock().expect("engine lock"), new);
        old.stop();
    }

    pub fn attached(&self) -> &Attached {
        &self.attached
    }

    /// Per-rule status.
    pub fn status(&self) -> Vec<PathRuleStatus> {
        let engine = self.engine.lock().expect("engine lock").clone();
        let state = engine.state.lock().expect("state lock");
        engine
            .rules
            .iter()
            .zip(state.iter())
            .map(|(r, st)| {
                let group = engine.group.is_some() || r.perm_mask() == 0;
                status::rule_status(r, st, group, &self.attached)
            })
            .collect()
    }

    /// What `guard run` makes read-only or masks in its mount namespace.
    pub fn protections(&self) -> Protections {
        let engine = self.engine.lock().expect("engine lock").clone();
        let state = engine.state.lock().expect("state lock");
        let mut p = Protections::default();
        for (r, st) in engine.rules.iter().zip(state.iter()) {
            if !r.enforcing() {
                continue;
            }
            for o in &st.targets.objects {
                let is_dir = matches!(o.kind, resolve::Kind::Dir | resolve::Kind::Volume);
                if r.access & (bits::READ | bits::EXEC) != 0 {
                    p.masked.push((o.path.clone(), is_dir));
                } else if r.access & (bits::WRITE | bits::DELETE) != 0 {
                    p.readonly.push(o.path.clone());
                }
            }
        }
        p.masked.sort();
        p.masked.dedup();
        p.readonly.sort();
        p.readonly.dedup();
        p.readonly
            .retain(|ro| !p.masked.iter().any(|(m, _)| m == ro));
        p
    }

    /// The kernel counters of file protection, by name.
    pub fn counters(&self) -> Vec<(String, u64)> {
        let kernel = self.shared.kernel.lock().expect("kernel lock");
        kernel
            .as_ref()
            .map(|m| {
                m.counters()
                    .into_iter()
                    .map(|(n, v)| (n.to_owned(), v))
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Drop for FileGuard {
    fn drop(&mut self) {
        self.engine.lock().expect("engine lock").stop();
        self.stop.store(true, Ordering::Relaxed);
        for t in std::mem::take(&mut self.threads) {
            let _ = t.join();
        }
    }
}

fn read_homes(passwd: &Path) -> Vec<(u32, PathBuf)> {
    crate::policy::read_homes(passwd).unwrap_or_else(|_| vec![(0, PathBuf::from("/root"))])
}

/// The reporter thread: event lines, stderr reasons and kills for kernel decisions, and
/// kill-tree.
fn reporter(shared: &Shared, rx: Receiver<Report>, stop: &AtomicBool) {
    loop {
        let report = match rx.recv_timeout(Duration::from_millis(500)) {
            Ok(r) => r,
            Err(RecvTimeoutError::Timeout) if !stop.load(Ordering::Relaxed) => continue,
            Err(_) => return,
        };
        let d = match report {
            Report::Decision(d) => d,
            Report::Kernel(kind, ev) => {
                let mut d = kernel_decision(shared, kind, &ev);
                act_on_kernel_decision(shared, &mut d);
                d
            }
        };
        if d.action == Action::Hold && d.outcome != Outcome::Allowed {
            let what = d.what();
            shared
                .holder
                .hold(d.tag.root, d.tag.agent_id, &d.rule, &what);
        }
        // Kernel decisions; fanotify decisions kill the tree before they answer.
        if d.action == Action::KillTree
            && matches!(d.hook, Hook::Change | Hook::Device | Hook::Lsm(_))
            && matches!(d.outcome, Outcome::Killed | Outcome::Denied)
        {
            let r = crate::respond::kill_tree(&shared.tags, d.tag.root);
            info!(root = d.tag.root.tgid, killed = r.killed, passes = r.passes,
                survivors = r.survivors, rule = %d.rule, "kill-tree");
        }
        if !shared.sink.submit_blocking(d.to_decoded()) {
            return; // the daemon is stopping
        }
    }
}

/// Turn a kernel record into a decision, naming its rule and object.
fn kernel_decision(shared: &Shared, kind: EventKind, ev: &FileEvent) -> Decision {
    let h = ev.header;
    let catalog = shared.catalog.lock().expect("catalog lock");
    let rule = catalog.rules.get(&ev.rule_id);
    let text = |b: &[u8]| String::from_utf8_lossy(trim_nul(b)).into_owned();
    let name = text(&ev.name);
    let path = if kind == EventKind::FileDevice {
        device_name(ev.major, ev.minor)
    } else {
        let base = catalog
            .objects
            .get(&FileKey::new(ev.dev, ev.root_ino))
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| {
                let (a, b) = dev_parts(ev.dev);
                format!("<{a}:{b}:{}>", ev.root_ino)
            });
        let changed = match ev.depth {
            0 => base,
            1 => format!("{base}/{name}"),
            _ => format!("{base}/…/{name}"),
        };
        // A directory changed because an entry in it was removed, renamed or created: name
        // the entry.
        let entry = Path::new(trim_nul_str(&ev.target)).file_name();
        match entry {
            Some(e) if ev.mode & libc::S_IFMT == libc::S_IFDIR => {
                format!("{changed}/{}", e.to_string_lossy())
            }
            _ => changed,
        }
    };
    let target = text(&ev.target);
    // An LSM decision names the object by identity (dev, ino) and, for its path, the one the
    // process opened when it named it absolutely (the walk above only knows the protected
    // ancestor and the last component).
    let path = if ev.hook != guard_common::file::lsm_hook::NONE && target.starts_with('/') {
        target.clone()
    } else {
        path
    };
    Decision {
        hook: if kind == EventKind::FileDevice {
            Hook::Device
        } else if ev.hook != guard_common::file::lsm_hook::NONE {
            Hook::Lsm(ev.hook)
        } else {
            Hook::Change
        },
        time_ns: h.time_ns,
        tgid: h.proc.tgid,
        tag: Tag {
            root: h.root,
            agent_id: h.agent_id,
            flags: 0,
            start_ns: h.proc.start_ns,
        },
        ppid: h.ppid,
        uid: h.uid,
        comm: text(&ev.comm),
        rule_id: ev.rule_id,
        rule: rule.map_or_else(|| format!("rule-{}", ev.rule_id), |r| r.name.clone()),
        action: rule.map_or(Action::Deny, |r| r.action),
        mode: rule.map_or(crate::policy::Mode::Enforce, |r| r.mode),
        outcome: Outcome::from_id(ev.outcome),
        access: ev.access,
        path,
        dev: ev.dev,
        ino: ev.ino,
        syscall: (ev.syscall >= 0).then_some(i64::from(ev.syscall)),
        target: (!target.is_empty()).then_some(target),
        request: None,
    }
}

/// The offender's reason line (on its own stderr, or its parent's when it is already gone),
/// and the kill a device rule asks for.
fn act_on_kernel_decision(shared: &Shared, d: &mut Decision) {
    if d.outcome == Outcome::Allowed {
        return;
    }
    if d.hook == Hook::Device
        && d.outcome == Outcome::Denied
        && matches!(d.action, Action::Kill | Action::KillTree)
        && crate::respond::kill_process(d.tgid, d.tag.start_ns).unwrap_or(false)
    {
        d.outcome = Outcome::Killed;
    }
    if d.action == Action::Ask {
        d.request = shared.asking.ask(d);
    }
    let offender = guard_common::ProcKey::new(d.tgid, d.tag.start_ns);
    let _ = crate::respond::tell_nearest(&shared.tags, offender, d.ppid, d.tag.root, &d.reason());
}

fn trim_nul_str(b: &[u8]) -> &str {
    std::str::from_utf8(trim_nul(b)).unwrap_or("")
}

/// `/dev/NAME` of block device `major:minor`, else `major:minor`.
fn device_name(major: u32, minor: u32) -> String {
    std::fs::read_to_string(format!("/sys/dev/block/{major}:{minor}/uevent"))
        .ok()
        .and_then(|u| {
            u.lines()
                .find_map(|l| l.strip_prefix("DEVNAME=").map(|n| format!("/dev/{n}")))
        })
        .unwrap_or_else(|| format!("{major}:{minor}"))
}
