//! Freezing an agent tree for incident response (`guard freeze ROOT`), thawing it, and keeping
//! it frozen.
//!
//! Not the cgroup freezer: trees recognised at exec share their cgroup (a systemd service, a
//! pod, the human's session) with processes that are not theirs, which a cgroup freeze would
//! stop too. Each process of the tree is stopped on its own, with `SIGSTOP` through a pidfd
//! (which no process can catch or ignore), in passes until every member is stopped and no new
//! one appeared. The tree's root goes into the pinned `GUARD_HELD` map first: on bpf-lsm,
//! `task_kill` refuses `SIGCONT` from any tagged process to a process of a held tree, so the
//! tree cannot thaw itself and no other agent can thaw it; on the fallback tier the daemon
//! stops again, within [`RESTOP_EVERY`], any process of a held tree it finds running.

use std::{
    collections::HashSet,
    time::{Duration, Instant},
};

use std::path::Path;

use aya::maps::{HashMap, MapData};
use guard_common::{PROBE_TGID, ProcKey, Tag, event::EventKind};

use crate::events::{Decision, Decoded, Object};

/// Rule name of `response` events.
pub const RULE: &str = "guard:response";

use super::{same_process, signal_process};

/// The held trees (`GUARD_HELD`): root → boot time it was frozen.
pub type HeldMap = HashMap<MapData, ProcKey, u64>;
type Tags = HashMap<MapData, u32, Tag>;

/// How often the daemon looks for a process of a held tree that runs again.
pub const RESTOP_EVERY: Duration = Duration::from_millis(250);
/// Longest a freeze keeps sweeping for members that are not stopped yet.
const FREEZE_DEADLINE: Duration = Duration::from_secs(5);

/// What a freeze, thaw or kill did to a tree.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TreeReport {
    /// Processes of the tree when it was done.
    pub processes: usize,
    /// Processes signalled.
    pub signalled: usize,
    pub passes: usize,
    /// Processes still running (freeze) or still alive (kill) at the deadline.
    pub left: usize,
}

/// The live processes of the tree with root `root`.
pub fn members(tags: &Tags, root: ProcKey) -> Vec<(u32, Tag)> {
    tags.iter()
        .filter_map(Result::ok)
        .filter(|(pid, tag)| {
            *pid != PROBE_TGID && tag.root == root && same_process(*pid, tag.start_ns)
        })
        .collect()
}

/// Whether `pid` is stopped (or already dead): `/proc/PID/stat` state `T`, `t`, `Z` or `X`.
fn stopped(pid: u32) -> bool {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_or(true, |s| matches!(s.state, 'T' | 't' | 'Z' | 'X'))
}

/// Mark the tree held and stop every process of it, until all are stopped.
pub fn freeze(tags: &Tags, held: &mut HeldMap, root: ProcKey) -> std::io::Result<TreeReport> {
    held.insert(root, crate::clock::boot_ns(), 0)
        .map_err(std::io::Error::other)?;
    let mut report = TreeReport::default();
    let deadline = Instant::now() + FREEZE_DEADLINE;
    let mut signalled = HashSet::new();
    loop {
        report.passes += 1;
        let live = members(tags, root);
        let running: Vec<&(u32, Tag)> = live.iter().filter(|(pid, _)| !stopped(*pid)).collect();
        report.processes = live.len();
        report.left = running.len();
        if running.is_empty() || Instant::now() >= deadline {
            break;
        }
        for (pid, tag) in running {
            match signal_process(*pid, tag.start_ns, libc::SIGSTOP) {
                Ok(true) => {
                    signalled.insert(*pid);
                }
                Ok(false) => {}
                Err(e) => tracing::warn!(pid, error = %e, "freeze: cannot stop"),
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    report.signalled = signalled.len();
    Ok(report)
}

/// Release the tree: forget it in the kernel, then continue every process of it.
pub fn thaw(tags: &Tags, held: &mut HeldMap, root: ProcKey) -> TreeReport {
    let _ = held.remove(&root);
    let live = members(tags, root);
    let mut report = TreeReport {
        processes: live.len(),
        passes: 1,
        ..TreeReport::default()
    };
    for (pid, tag) in &live {
        match signal_process(*pid, tag.start_ns, libc::SIGCONT) {
            Ok(true) => report.signalled += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(pid, error = %e, "thaw: cannot continue"),
        }
    }
    report
}

/// Stop again every process of a held tree that runs (someone continued it, or it was
/// forked by a process between two passes of the freeze). Returns `(root, pid)` of each.
pub fn restop(tags: &Tags, held: &HeldMap) -> Vec<(ProcKey, u32)> {
    let roots: Vec<ProcKey> = held.keys().filter_map(Result::ok).collect();
    let mut out = Vec::new();
    for root in roots {
        for (pid, tag) in members(tags, root) {
            if !stopped(pid) && signal_process(pid, tag.start_ns, libc::SIGSTOP).unwrap_or(false) {
                out.push((root, pid));
            }
        }
    }
    out
}

/// Release the tree from the held map and kill all of it (the kill-tree sweep).
pub fn kill(tags: &Tags, held: &mut HeldMap, root: ProcKey) -> TreeReport {
    let _ = held.remove(&root);
    let k = super::kill_tree(tags, root);
    TreeReport {
        processes: k.killed + k.survivors,
        signalled: k.killed,
        passes: k.passes,
        left: k.survivors,
    }
}

/// Held roots whose tree has no process left: no longer held.
pub fn forget_gone(tags: &Tags, held: &mut HeldMap) {
    let roots: Vec<ProcKey> = held.keys().filter_map(Result::ok).collect();
    for root in roots {
        if members(tags, root).is_empty() {
            let _ = held.remove(&root);
        }
    }
}

/// The tag map and the held map, opened from their pins (each request its own handles: a
/// freeze takes seconds and must not hold the daemon's state).
pub fn maps(maps_dir: &Path) -> Result<(Tags, HeldMap), String> {
    let opening = |(name, e)| format!("opening {name}: {e}");
    let tags = crate::loader::open_pinned_tags(maps_dir).map_err(opening)?;
    let held =
        crate::loader::open_pinned_hash(maps_dir, guard_common::maps::HELD).map_err(opening)?;
    Ok((tags, held))
}

/// The `response` line of an action on the tree of `root`.
pub fn event(root: ProcKey, agent_id: u32, uid: u32, action: &str, r: &TreeReport) -> Decoded {
    let header = guard_common::event::EventHeader {
        kind: EventKind::Response as u32,
        agent_id,
        time_ns: crate::clock::boot_ns(),
        proc: root,
        root,
        ppid: 0,
        uid,
    };
    let mut d = Decoded::new(EventKind::Response, header);
    let result = match (action, r.left) {
        (_, n) if n > 0 => "partial",
        ("freeze", _) => "frozen",
        ("thaw", _) => "thawed",
        ("kill", _) => "killed",
        _ => "stopped-again",
    };
    d.decision = Some(Decision {
        rule: RULE.to_owned(),
        rule_id: None,
        action: action.to_owned(),
        mode: Some("enforce".to_owned()),
        result: result.to_owned(),
        hook: Some("api".to_owned()),
    });
    d.object = Some(Object {
        path: Some(format!("agent tree of root {}", root.tgid)),
        dev: None,
        ino: None,
        operation: Some(format!(
            "{} processes, {} signalled, {} left",
            r.processes, r.signalled, r.left
        )),
    });
    d
}
