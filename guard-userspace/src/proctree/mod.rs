//! The process tree: who begat whom, kept long enough to explain an event about a process
//! whose parents have already exited.
//!
//! Seeded from `/proc` at start and fed by the kernel's fork/exec/exit events of tagged
//! processes; processes the kernel does not report (untagged ancestors of an agent root) are
//! read from `/proc` when first needed. An exited process stays for [`TreeConfig::exited_ttl`]
//! or until [`TreeConfig::max_entries`] forces the oldest exited out; untracked entries (no
//! exit event will come) are swept by checking `/proc`. Memory is thus bounded by the live
//! tagged processes (bounded by the kernel's tag map) plus `max_entries`.
//!
//! [`ProcTreeHandle`] runs the tree as an actor: a task owning it, a request channel and
//! one-shot replies.

mod procfs;

pub use procfs::{ProcSource, Procfs, Snapshot, container_id, parse_cgroup};

use std::{
    collections::{BTreeMap, VecDeque},
    sync::Arc,
    time::{Duration, Instant},
};

use guard_common::ProcKey;

/// What is known of a process. Shared between a parent and the children it forked until one
/// of them execs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Details {
    pub comm: String,
    pub exe: Option<String>,
    pub argv: Vec<String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
}

#[derive(Clone, Debug)]
struct Node {
    /// The parent that forked it, when known.
    parent: Option<ProcKey>,
    /// Parent pid when first seen (0: a top of the tree, like init).
    ppid: u32,
    details: Arc<Details>,
    /// The kernel reports this process's exit (it is tagged).
    tracked: bool,
    exited: bool,
}

#[derive(Clone, Copy, Debug)]
pub struct TreeConfig {
    pub exited_ttl: Duration,
    pub max_entries: usize,
    /// How often untracked entries are checked against `/proc`.
    pub sweep_every: Duration,
}

impl Default for TreeConfig {
    fn default() -> Self {
        Self {
            exited_ttl: Duration::from_secs(60),
            max_entries: 65_536,
            sweep_every: Duration::from_secs(30),
        }
    }
}

/// One member of an ancestry.
#[derive(Clone, Debug)]
pub struct Member {
    pub key: ProcKey,
    pub details: Arc<Details>,
    pub exited: bool,
}

/// A process and its ancestry, parent first.
#[derive(Clone, Debug)]
pub struct Context {
    pub process: Member,
    pub ancestry: Vec<Member>,
    /// False when the chain stops at an unknown ancestor before the top (init).
    pub complete: bool,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeStats {
    pub live: usize,
    pub exited: usize,
    /// Exited entries dropped before their time to stay within `max_entries`.
    pub evicted: u64,
}

/// A change the kernel reported.
#[derive(Clone, Debug)]
pub enum Update {
    Fork {
        child: ProcKey,
        parent_tgid: u32,
        comm: String,
    },
    Exec {
        key: ProcKey,
        ppid: u32,
        comm: String,
    },
    Exit {
        key: ProcKey,
    },
}

impl Update {
    pub fn key(&self) -> ProcKey {
        match self {
            Self::Fork { child, .. } => *child,
            Self::Exec { key, .. } | Self::Exit { key } => *key,
        }
    }
}

const MAX_DEPTH: usize = 256;

pub struct ProcTree {
    nodes: BTreeMap<(u32, u64), Node>,
    /// Exited entries, oldest exit first.
    exited: VecDeque<(Instant, ProcKey)>,
    config: TreeConfig,
    source: Box<dyn ProcSource>,
    evicted: u64,
    last_sweep: Option<Instant>,
}

fn k(key: ProcKey) -> (u32, u64) {
    (key.tgid, key.start_ns)
}

fn key_of((tgid, start_ns): (u32, u64)) -> ProcKey {
    ProcKey {
        tgid,
        _pad: 0,
        start_ns,
    }
}

impl ProcTree {
    pub fn new(config: TreeConfig, source: Box<dyn ProcSource>) -> Self {
        Self {
            nodes: BTreeMap::new(),
            exited: VecDeque::new(),
            config,
            source,
            evicted: 0,
            last_sweep: None,
        }
    }

    /// [`Self::sweep`] when `sweep_every` has passed since the last one.
    pub fn sweep_due(&mut self, now: Instant) {
        if self
            .last_sweep
            .is_none_or(|t| now.duration_since(t) >= self.config.sweep_every)
        {
            self.last_sweep = Some(now);
            self.sweep(now);
        }
    }

    /// Learn every live process from the source.
    pub fn seed(&mut self) {
        let all = self.source.all();
        let by_pid: std::collections::HashMap<u32, ProcKey> =
            all.iter().map(|s| (s.key.tgid, s.key)).collect();
        for s in all {
            if self.nodes.len() >= self.config.max_entries {
                break;
            }
            let parent = by_pid.get(&s.ppid).copied();
            self.nodes.entry(k(s.key)).or_insert(Node {
                parent,
                ppid: s.ppid,
                details: Arc::new(s.details),
                tracked: false,
                exited: false,
            });
        }
    }

    pub fn stats(&self) -> TreeStats {
        TreeStats {
            live: self.nodes.len().saturating_sub(self.exited.len()),
            exited: self.exited.len(),
            evicted: self.evicted,
        }
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The live process `pid` that started no later than `at_ns`, read from the source (with
    /// its ancestors) when unknown. The latest such entry is the only candidate: if it has
    /// exited, any older one has too.
    fn resolve(&mut self, pid: u32, at_ns: u64, depth: usize) -> Option<ProcKey> {
        if pid == 0 || depth > MAX_DEPTH {
            return None;
        }
        // The latest process with that pid started by `at_ns`: the parent of a process that
        // started then, even if it has exited since (its record may be read after its exit),
        // unless a live process took the pid over in between.
        let known = self
            .nodes
            .range((pid, 0)..=(pid, at_ns))
            .next_back()
            .map(|(&key, node)| (key_of(key), node.exited));
        if let Some((key, false)) = known {
            return Some(key);
        }
        let after = known.map_or(0, |(key, _)| key.start_ns);
        let live = self
            .source
            .read(pid)
            .filter(|s| s.key.start_ns <= at_ns && s.key.start_ns > after);
        let Some(snap) = live else {
            return known.map(|(key, _)| key);
        };
        let parent = self.resolve(snap.ppid, snap.key.start_ns, depth + 1);
        self.insert(snap.key, parent, snap.ppid, Arc::new(snap.details), false);
        Some(snap.key)
    }

    fn insert(
        &mut self,
        key: ProcKey,
        parent: Option<ProcKey>,
        ppid: u32,
        details: Arc<Details>,
        tracked: bool,
    ) {
        self.nodes.insert(
            k(key),
            Node {
                parent,
                ppid,
                details,
                tracked,
                exited: false,
            },
        );
    }

    /// Apply a kernel event.
    pub fn apply(&mut self, update: Update, now: Instant) {
        match update {
            Update::Fork {
                child,
                parent_tgid,
                comm,
            } => {
                let parent = self.resolve(parent_tgid, child.start_ns, 0);
                // At fork the child is a copy of its parent.
                let details = match parent.and_then(|p| self.nodes.get(&k(p))) {
                    Some(p) if p.details.comm == comm => p.details.clone(),
                    Some(p) => Arc::new(Details {
                        comm,
                        ..(*p.details).clone()
                    }),
                    None => Arc::new(Details {
                        comm,
                        ..Details::default()
                    }),
                };
                self.insert(child, parent, parent_tgid, details, true);
            }
            Update::Exec { key, ppid, comm } => {
                let fresh = self.source.read(key.tgid).filter(|s| s.key == key);
                let known = self
                    .nodes
                    .get(&k(key))
                    .map(|n| (n.parent, n.ppid, n.details.clone()));
                let (parent, ppid) = match &known {
                    Some((p, pp, _)) => (*p, *pp),
                    None => (self.resolve(ppid, key.start_ns, 0), ppid),
                };
                let details = match (fresh, known) {
                    (Some(s), _) => s.details,
                    // Gone before we could look: keep what survives an exec.
                    (None, Some((_, _, old))) => Details {
                        comm,
                        exe: None,
                        argv: Vec::new(),
                        ..(*old).clone()
                    },
                    (None, None) => Details {
                        comm,
                        ..Details::default()
                    },
                };
                self.insert(key, parent, ppid, Arc::new(details), true);
            }
            Update::Exit { key } => self.mark_exited(key, now),
        }
        self.prune(now);
    }

    fn mark_exited(&mut self, key: ProcKey, now: Instant) {
        if let Some(n) = self.nodes.get_mut(&k(key))
            && !n.exited
        {
            n.exited = true;
            self.exited.push_back((now, key));
        }
    }

    /// Drop exited entries past their time, and the oldest exited while over capacity.
    pub fn prune(&mut self, now: Instant) {
        while let Some(&(at, key)) = self.exited.front() {
            let expired = now.duration_since(at) > self.config.exited_ttl;
            if !expired && self.nodes.len() <= self.config.max_entries {
                break;
            }
            self.exited.pop_front();
            if self.nodes.remove(&k(key)).is_some() && !expired {
                self.evicted += 1;
            }
        }
    }

    /// Check untracked entries (no exit event will come for them) against the source.
    pub fn sweep(&mut self, now: Instant) {
        let untracked: Vec<ProcKey> = self
            .nodes
            .iter()
            .filter(|(_, n)| !n.tracked && !n.exited)
            .map(|(&key, _)| key_of(key))
            .collect();
        for key in untracked {
            if !self.source.alive(key) {
                self.mark_exited(key, now);
            }
        }
        self.prune(now);
    }

    /// `key` and its ancestry. Reads `/proc` for a process never heard of.
    pub fn context(&mut self, key: ProcKey) -> Option<Context> {
        self.context_or_parent(key, None)
    }

    /// [`Self::context`]; when the process is unknown and already gone (a short-lived
    /// offender whose decision came in ahead of its lifecycle events), the record's parent
    /// pid and command name still give it a place under its live ancestors.
    pub fn context_or_parent(&mut self, key: ProcKey, hint: Option<&Hint>) -> Option<Context> {
        if !self.nodes.contains_key(&k(key)) {
            match (self.source.read(key.tgid).filter(|s| s.key == key), hint) {
                (Some(s), _) => {
                    let parent = self.resolve(s.ppid, key.start_ns, 0);
                    self.insert(key, parent, s.ppid, Arc::new(s.details), true);
                }
                (None, Some(h)) if h.ppid != 0 => {
                    let parent = self.resolve(h.ppid, key.start_ns, 0)?;
                    let details = Details {
                        comm: h.comm.clone(),
                        ..Details::default()
                    };
                    self.insert(key, Some(parent), h.ppid, Arc::new(details), false);
                }
                (None, _) => return None,
            }
        }
        let member = |key: ProcKey, n: &Node| Member {
            key,
            details: n.details.clone(),
            exited: n.exited,
        };
        let mut node = self.nodes.get(&k(key))?;
        let process = member(key, node);
        let mut ancestry = Vec::new();
        let complete = loop {
            let Some(parent) = node.parent else {
                break node.ppid == 0;
            };
            let Some(n) = self.nodes.get(&k(parent)) else {
                break false;
            };
            if ancestry.len() >= MAX_DEPTH {
                break false;
            }
            ancestry.push(member(parent, n));
            node = n;
        };
        Some(Context {
            process,
            ancestry,
            complete,
        })
    }
}

/// What a kernel record says of its process, for [`ProcTree::context_or_parent`].
#[derive(Clone, Debug, Default)]
pub struct Hint {
    pub ppid: u32,
    pub comm: String,
}

#[cfg(test)]
mod tests;
