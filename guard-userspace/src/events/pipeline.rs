//! Enrich decoded records with the process tree and write them to the log.

use std::{
    collections::HashMap,
    sync::Arc,
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use guard_common::maps::EVENTS_BYTES;
use tokio::sync::mpsc;
use tracing::{error, warn};

use super::{
    Ancestor, Clock, Decoded, Event, EventLog, KIND_EVENTS_LOST, Lifecycle, ProcessInfo, Responder,
    RootRef, SCHEMA, kind_name, now_rfc3339, ring::read_ring,
};
use crate::{
    agents::AgentNames,
    metrics::{DaemonView, Metrics, RingFill},
    proctree::{Context, Hint, Member, ProcTree, Update},
};

/// Decoded records waiting for enrichment. Small: when the writer falls behind, records wait
/// in the kernel's ring buffer, not in our memory.
const QUEUE: usize = 1024;
/// Records turned into lines before they are written together.
const BATCH: usize = 256;
/// How often drops are checked, the log synced and gauges refreshed.
const TICK: Duration = Duration::from_secs(1);
/// How long a decision about a process the tree does not know waits for the kernel's records
/// of it: longer than the ring's drain interval (`guard_common::maps::EVENTS_DRAIN_MS`).
const WAIT_FOR_TREE: Duration = Duration::from_millis(150);
const USER_CACHE_MAX: usize = 4096;
/// Bytes of argv kept per ancestor on a line (the process itself keeps up to 4 KiB).
const ANCESTOR_ARGV_MAX: usize = 512;

/// `argv` cut to about `max` bytes.
fn bounded(argv: &[String], max: usize) -> Vec<String> {
    let mut used = 0;
    let mut out = Vec::new();
    for a in argv {
        if used + a.len() > max {
            let mut end = max.saturating_sub(used).min(a.len());
            while !a.is_char_boundary(end) {
                end -= 1;
            }
            out.push(format!("{}…", &a[..end]));
            break;
        }
        used += a.len() + 1;
        out.push(a.clone());
    }
    out
}

pub struct Pipeline {
    pub log: EventLog,
    /// The process tree, owned here: every kernel record passes through this task in order,
    /// so the tree needs no lock and no round trip to another task.
    pub tree: ProcTree,
    /// The scanner of files agents read.
    pub secrets: super::secret::SecretReads,
    pub view: Arc<dyn DaemonView>,
    pub metrics: Arc<Metrics>,
    /// The node's hostname, written on every line.
    pub node: String,
    /// Called with every raw record as soon as it is read.
    pub responders: Vec<Arc<dyn Responder>>,
    /// Names of network rules and hosts.
    pub net: Arc<dyn super::net::NetLabels + Send + Sync>,
    /// Write fork and exit lines too (they always update the process tree).
    pub lifecycle_lines: bool,
}

/// Lines waiting for the next write, and how many.
#[derive(Default)]
struct Lines {
    bytes: Vec<u8>,
    count: u64,
}

/// Submits events decided in userspace (e.g. fanotify permission events) to the same
/// enrichment, log and rotation as the kernel's records.
#[derive(Clone)]
pub struct EventSink(mpsc::Sender<Decoded>);

impl EventSink {
    /// From a plain thread; waits while the queue is full. False once the pipeline is gone.
    pub fn submit_blocking(&self, d: Decoded) -> bool {
        self.0.blocking_send(d).is_ok()
    }

    pub async fn submit(&self, d: Decoded) -> bool {
        self.0.send(d).await.is_ok()
    }
}

/// Start the reader and the writer.
pub fn spawn(ring: RingBuf<MapData>, pipeline: Pipeline) -> EventSink {
    match RingFill::new(&ring, EVENTS_BYTES) {
        Ok(fill) => pipeline.metrics.set_ring(fill),
        Err(e) => warn!(error = %e, "cannot map the ring buffer positions; no fill metric"),
    }
    let (tx, rx) = mpsc::channel(QUEUE);
    let sink = EventSink(tx.clone());
    tokio::spawn(read_ring(
        ring,
        tx,
        pipeline.view.clone(),
        pipeline.metrics.clone(),
        pipeline.responders.clone(),
        pipeline.net.clone(),
    ));
    tokio::spawn(pipeline.run(rx, sink.clone()));
    sink
}

impl Pipeline {
    async fn run(mut self, mut rx: mpsc::Receiver<Decoded>, again: EventSink) {
        self.tree.seed();
        let mut names = self.view.agent_names();
        let mut clock = Clock::now();
        let mut users = Users::default();
        let mut dropped_seen = self.view.events_dropped();
        let mut lines = Lines::default();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                d = rx.recv() => {
                    let Some(d) = d else { break };
                    // Whatever else is queued goes into the same write(2), up to a batch.
                    let mut next = Some(d);
                    let mut taken = 0;
                    while let Some(mut d) = next.take() {
                        taken += 1;
                        // A file an agent read: scanned here, logged only when it holds a
                        // secret (the inventory).
                        if d.secret_read.is_some() && !self.secrets.scan(&mut d) {
                            if taken < BATCH {
                                next = rx.try_recv().ok();
                            }
                            continue;
                        }
                        let ctx = match lifecycle_update(&d) {
                            Some(u) => {
                                let key = u.key();
                                self.tree.apply(u, Instant::now());
                                self.tree.context(key)
                            }
                            None => {
                                let hint = Hint {
                                    ppid: d.header.ppid,
                                    comm: d.comm.clone().unwrap_or_default(),
                                };
                                let ctx = self.tree.context_or_parent(d.header.proc, Some(&hint));
                                if ctx.is_none() && d.decision.is_some() && !d.waited {
                                    // A decision made in userspace (a fanotify answer) can
                                    // overtake the kernel's fork and exec records of a process
                                    // that is gone by now: look again once they are read.
                                    let mut later = d;
                                    later.waited = true;
                                    let again = again.clone();
                                    tokio::spawn(async move {
                                        tokio::time::sleep(WAIT_FOR_TREE).await;
                                        again.submit(later).await;
                                    });
                                    if taken < BATCH {
                                        next = rx.try_recv().ok();
                                    }
                                    continue;
                                }
                                ctx
                            }
                        };
                        let user = users.name(d.header.uid);
                        let event = build(&d, ctx.as_ref(), &names, &self.node, &clock, user);
                        if let Some(told) = &d.on_built {
                            (told.0)(&event);
                        }
                        self.metrics.event_read(&event.kind);
                        if let (Some(rule), Some(action), Some(result)) =
                            (&event.rule, &event.action, &event.result)
                        {
                            self.metrics.decision(rule, action, result);
                        }
                        let folded = matches!(d.lifecycle, Some(Lifecycle::Fork | Lifecycle::Exit));
                        if !folded || self.lifecycle_lines {
                            self.queue(&mut lines, &event);
                        }
                        if taken < BATCH {
                            next = rx.try_recv().ok();
                        }
                    }
                    self.flush(&mut lines);
                }
                _ = tick.tick() => {
                    names = self.view.agent_names();
                    clock = Clock::now();
                    let total = self.view.events_dropped();
                    if total > dropped_seen {
                        let lost = total - dropped_seen;
                        warn!(lost, total, "the kernel dropped events: the ring buffer was full");
                        self.write(&lost_event(&self.node, lost, total));
                        self.metrics.events_lost_logged.inc_by(lost);
                    }
                    dropped_seen = total;
                    if let Err(e) = self.log.sync() {
                        error!(error = %e, path = %self.log.path().display(), "cannot sync the event log");
                    }
                    self.tree.sweep_due(Instant::now());
                    self.secrets.sweep_due(Instant::now());
                    let s = self.tree.stats();
                    self.metrics.set_tree(s.live, s.exited, s.evicted);
                }
            }
        }
    }

    /// Add `event` to the lines of the next write.
    fn queue(&self, lines: &mut Lines, event: &Event) {
        match serde_json::to_writer(&mut lines.bytes, event) {
            Ok(()) => {
                lines.bytes.push(b'\n');
                lines.count += 1;
            }
            Err(e) => {
                self.metrics.log_write_errors.inc();
                error!(error = %e, "cannot serialise an event");
            }
        }
    }

    /// Write the queued lines with one write(2): a reader never sees half a line.
    fn flush(&mut self, lines: &mut Lines) {
        if lines.bytes.is_empty() {
            return;
        }
        match self.log.write_lines(&lines.bytes) {
            Ok(()) => {
                self.metrics.events_written.inc_by(lines.count);
            }
            Err(e) => {
                self.metrics.log_write_errors.inc();
                error!(error = %e, path = %self.log.path().display(), "cannot write events");
            }
        }
        lines.bytes.clear();
        lines.count = 0;
    }

    fn write(&mut self, event: &Event) {
        let mut lines = Lines::default();
        self.queue(&mut lines, event);
        self.flush(&mut lines);
    }
}

fn lifecycle_update(d: &Decoded) -> Option<Update> {
    let key = d.header.proc;
    let comm = d.comm.clone().unwrap_or_default();
    Some(match d.lifecycle? {
        Lifecycle::Fork => Update::Fork {
            child: key,
            parent_tgid: d.header.ppid,
            comm,
        },
        Lifecycle::Exec { .. } => Update::Exec {
            key,
            ppid: d.header.ppid,
            comm,
        },
        Lifecycle::Exit => Update::Exit { key },
    })
}

/// The `events_lost` line.
pub fn lost_event(node: &str, lost: u64, total: u64) -> Event {
    Event {
        schema: SCHEMA,
        time: now_rfc3339(),
        node: node.to_string(),
        kind: KIND_EVENTS_LOST.into(),
        lost: Some(lost),
        dropped_total: Some(total),
        ..Event::default()
    }
}

/// One log line from a decoded record and what the process tree knows.
pub fn build(
    d: &Decoded,
    ctx: Option<&Context>,
    names: &AgentNames,
    node: &str,
    clock: &Clock,
    user: Option<String>,
) -> Event {
    let h = &d.header;
    let details = ctx.map(|c| c.process.details.clone());
    let comm = d
        .comm
        .clone()
        .or_else(|| details.as_ref().map(|x| x.comm.clone()))
        .unwrap_or_default();
    let process = ProcessInfo {
        pid: h.proc.tgid,
        start_ns: h.proc.start_ns,
        ppid: h.ppid,
        comm,
        exe: details.as_ref().and_then(|x| x.exe.clone()),
        argv: details.as_ref().map(|x| x.argv.clone()).unwrap_or_default(),
        cwd: details.as_ref().and_then(|x| x.cwd.clone()),
        uid: h.uid,
        user,
        cgroup: details.as_ref().and_then(|x| x.cgroup.clone()),
        container_id: details.as_ref().and_then(|x| x.container_id.clone()),
        container: details.as_ref().and_then(|x| {
            let id = x.container_id.as_deref()?;
            Some(crate::containers::lookup(
                id,
                x.cgroup.as_deref().unwrap_or(""),
            ))
        }),
    };
    let ancestor = |m: &Member| Ancestor {
        pid: m.key.tgid,
        start_ns: m.key.start_ns,
        comm: m.details.comm.clone(),
        exe: m.details.exe.clone(),
        argv: bounded(&m.details.argv, ANCESTOR_ARGV_MAX),
        agent_root: m.key == h.root,
        exited: m.exited,
    };
    let ancestry: Vec<Ancestor> = ctx
        .map(|c| c.ancestry.iter().map(ancestor).collect())
        .unwrap_or_default();
    let root_member = ctx.and_then(|c| {
        std::iter::once(&c.process)
            .chain(c.ancestry.iter())
            .find(|m| m.key == h.root)
    });
    // A tree whose root is an agent's cgroup has `tgid` 0 and the cgroup's id.
    let cgroup_root = h.root.tgid == 0 && h.root.start_ns != 0;
    let root = RootRef {
        pid: h.root.tgid,
        start_ns: h.root.start_ns,
        exe: root_member.and_then(|m| m.details.exe.clone()),
        argv: root_member
            .map(|m| m.details.argv.clone())
            .unwrap_or_default(),
        cgroup_id: cgroup_root.then_some(h.root.start_ns),
    };
    let decision = d.decision.clone();
    Event {
        schema: SCHEMA,
        time: clock.rfc3339(h.time_ns),
        node: node.to_string(),
        kind: kind_name(d.kind).into(),
        // u32::MAX: an event of the daemon itself, about no agent.
        agent: if h.agent_id == u32::MAX {
            String::new()
        } else {
            names.name(h.agent_id)
        },
        rule: decision.as_ref().map(|x| x.rule.clone()),
        rule_id: decision.as_ref().and_then(|x| x.rule_id),
        action: decision.as_ref().map(|x| x.action.clone()),
        mode: decision.as_ref().and_then(|x| x.mode.clone()),
        hook: decision.as_ref().and_then(|x| x.hook.clone()),
        result: decision.map(|x| x.result),
        process: (h.proc.tgid != 0).then_some(process),
        root: (h.root.tgid != 0 || cgroup_root).then_some(root),
        ancestry,
        ancestry_complete: Some(ctx.is_some_and(|c| c.complete)),
        destination: d.destination.clone(),
        object: d.object.clone(),
        matched_script: d.matched_script.clone(),
        recognised: d.recognised.clone(),
        exit_code: d.exit_code,
        signal: d.signal,
        lost: None,
        dropped_total: None,
        secrets: d.secrets.clone(),
    }
}

/// User names by uid, looked up once.
#[derive(Default)]
struct Users(HashMap<u32, Option<String>>);

impl Users {
    fn name(&mut self, uid: u32) -> Option<String> {
        if self.0.len() >= USER_CACHE_MAX {
            self.0.clear();
        }
        self.0
            .entry(uid)
            .or_insert_with(|| {
                nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
                    .ok()
                    .flatten()
                    .map(|u| u.name)
            })
            .clone()
    }
}

/// The node's hostname (of the daemon's UTS namespace).
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use guard_common::{ProcKey, event::EventKind};

    use super::*;
    use crate::{
        agents::AgentSpec,
        events::{Decision, Destination},
        proctree::Details,
    };

    fn member(pid: u32, start_s: u64, exe: &str) -> Member {
        Member {
            key: ProcKey::new(pid, start_s * 1_000_000_000),
            details: Arc::new(Details {
                comm: exe.rsplit('/').next().unwrap().into(),
                exe: Some(exe.into()),
                argv: vec![exe.into(), "-x".into()],
                cwd: Some("/src".into()),
                uid: Some(1000),
                cgroup: Some("/user.slice".into()),
                container_id: None,
            }),
            exited: false,
        }
    }

    #[test]
    fn builds_an_enriched_line() {
        let raw = crate::events::process::tests::raw(
            EventKind::TaggedFork,
            102,
            12_000_000_000,
            101,
            "bash",
        );
        let names = AgentNames::new(&[AgentSpec {
            id: 1,
            name: "claude-code".into(),
            executables: vec![],
            scripts: vec![],
            env: vec![],
            paths: vec![],
            cgroups: vec![],
            containers: vec![],
        }]);
        let clock = Clock::with_offset(0);
        let ctx = crate::events::DecodeCtx {
            clock: &clock,
            agents: &names,
            net: &crate::events::net::NoLabels,
        };
        let mut d = crate::events::decode(&raw, &ctx).unwrap();
        d.decision = Some(Decision {
            rule: "prod-db".into(),
            action: "deny".into(),
            result: "denied".into(),
            ..Decision::default()
        });
        d.destination = Some(Destination {
            address: Some("10.20.0.5".into()),
            port: Some(5432),
            protocol: Some("tcp".into()),
            ..Destination::default()
        });
        let mut child = member(101, 11, "/bin/bash");
        child.exited = true;
        let context = Context {
            process: member(102, 12, "/bin/bash"),
            ancestry: vec![
                child,
                member(100, 1, "/usr/bin/claude"),
                member(1, 0, "/sbin/init"),
            ],
            complete: true,
        };
        let e = build(
            &d,
            Some(&context),
            &names,
            "node-1",
            &clock,
            Some("dev".into()),
        );
        assert_eq!(e.kind, "tagged_fork");
        assert_eq!(e.agent, "claude-code");
        assert_eq!(e.node, "node-1");
        assert_eq!(e.time, "1970-01-01T00:00:05Z");
        assert_eq!(e.rule.as_deref(), Some("prod-db"));
        let p = e.process.as_ref().unwrap();
        assert_eq!((p.pid, p.ppid, p.uid), (102, 101, 1000));
        assert_eq!(p.user.as_deref(), Some("dev"));
        assert_eq!(p.cwd.as_deref(), Some("/src"));
        let root = e.root.as_ref().unwrap();
        assert_eq!(root.pid, 100);
        assert_eq!(root.exe.as_deref(), Some("/usr/bin/claude"));
        let pids: Vec<u32> = e.ancestry.iter().map(|a| a.pid).collect();
        assert_eq!(pids, [101, 100, 1]);
        assert!(e.ancestry[0].exited);
        assert!(e.ancestry[1].agent_root && !e.ancestry[0].agent_root);
        assert_eq!(e.ancestry_complete, Some(true));

        // Round trip through the log's JSON.
        let line = serde_json::to_string(&e).unwrap();
        assert!(
            line.contains(r#""destination":{"address":"10.20.0.5","port":5432,"protocol":"tcp"}"#)
        );
        assert!(!line.contains("\"lost\""));
        let back: Event = serde_json::from_str(&line).unwrap();
        assert_eq!(back, e);
    }

    #[test]
    fn an_event_without_context_still_says_who() {
        let raw =
            crate::events::process::tests::raw(EventKind::TaggedExit, 7, 1_000_000_000, 1, "rm");
        let names = AgentNames::default();
        let clock = Clock::with_offset(0);
        let ctx = crate::events::DecodeCtx {
            clock: &clock,
            agents: &names,
            net: &crate::events::net::NoLabels,
        };
        let d = crate::events::decode(&raw, &ctx).unwrap();
        let e = build(&d, None, &names, "n", &clock, None);
        let p = e.process.unwrap();
        assert_eq!((p.pid, p.comm.as_str()), (7, "rm"));
        assert_eq!(e.exit_code, Some(7));
        assert_eq!(e.ancestry_complete, Some(false));
        let long = vec!["x".repeat(2000), "y".into()];
        let cut = bounded(&long, ANCESTOR_ARGV_MAX);
        assert_eq!(cut.len(), 1);
        assert_eq!(cut[0].len(), ANCESTOR_ARGV_MAX + '…'.len_utf8());
        let lost = serde_json::to_value(lost_event("n", 3, 10)).unwrap();
        assert_eq!(lost["kind"], "events_lost");
        assert_eq!(lost["lost"], 3);
        assert_eq!(lost["dropped_total"], 10);
        assert!(lost.get("process").is_none());
    }
}
