//! `guard export ROOT`: one agent tree's record for the security team's forensics, from the
//! event log (and the daemon's process list while the tree runs): the commands it ran, every
//! decision about it, the files and the secrets it touched, with timestamps. Secrets appear
//! by detector and fingerprint only, as in the log.

use std::{collections::BTreeSet, path::Path};

use serde::Serialize;

use crate::events::{Event, query};
use crate::tags::TaggedProc;

/// The bundle.
#[derive(Debug, Serialize)]
pub struct Bundle {
    pub root: RootId,
    pub agent: String,
    pub exported_at: String,
    pub node: String,
    /// Processes of the tree now (empty when it has ended or the daemon is not running).
    pub running: Vec<TaggedProc>,
    /// Every command it ran (`agent_exec`, `tagged_exec`), oldest first.
    pub commands: Vec<Command>,
    /// Every decision about it: denials, kills, audits, self-protection, responses.
    pub decisions: Vec<Event>,
    /// The files it touched that a rule or the secret scan saw.
    pub files: BTreeSet<String>,
    /// The secrets it read.
    pub secrets: Vec<SecretRead>,
    /// Every line of the log about the tree, as logged.
    pub events: Vec<Event>,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct RootId {
    pub pid: u32,
    pub start_ns: u64,
}

#[derive(Debug, Serialize)]
pub struct Command {
    pub time: String,
    pub pid: u32,
    pub ppid: u32,
    pub comm: String,
    pub exe: Option<String>,
    /// Empty when the process was gone before the daemon could read it (a short command).
    pub argv: Vec<String>,
    pub cwd: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct SecretRead {
    pub time: String,
    pub file: Option<String>,
    pub detector: String,
    pub fingerprint: String,
    pub pid: Option<u32>,
}

/// The bundle of the tree `spec` names (`PID` or `PID:START_NS`) in the log at `log`, with
/// `running` the daemon's process list, if it answered.
pub fn bundle(log: &Path, spec: &str, running: &[TaggedProc]) -> anyhow::Result<Bundle> {
    let (pid, start) = parse_root(spec)?;
    let (events, _) = query::read_all(log)?;
    let root_of = |e: &Event| {
        e.root.as_ref().map(|r| RootId {
            pid: r.pid,
            start_ns: r.start_ns,
        })
    };
    let roots: BTreeSet<RootId> = events
        .iter()
        .filter_map(root_of)
        .chain(running.iter().map(|p| RootId {
            pid: p.root_pid,
            start_ns: p.root_start_ns,
        }))
        .filter(|r| {
            r.pid == pid
                && start.is_none_or(|s| guard_common::ProcKey::new(pid, s).start_ns == r.start_ns)
        })
        .collect();
    let root = match roots.into_iter().collect::<Vec<_>>().as_slice() {
        [one] => *one,
        [] => anyhow::bail!(
            "no agent tree with root {spec} in {} or running now",
            log.display()
        ),
        many => anyhow::bail!(
            "pid {pid} was the root of {} trees: give one as {}",
            many.len(),
            many.iter()
                .map(|r| format!("{pid}:{}", r.start_ns))
                .collect::<Vec<_>>()
                .join(" or ")
        ),
    };
    let events: Vec<Event> = events
        .into_iter()
        .filter(|e| root_of(e) == Some(root))
        .collect();
    let running: Vec<TaggedProc> = running
        .iter()
        .filter(|p| p.root_pid == root.pid && p.root_start_ns == root.start_ns)
        .cloned()
        .collect();
    Ok(Bundle {
        root,
        agent: events
            .iter()
            .map(|e| e.agent.clone())
            .chain(running.iter().map(|p| p.agent.clone()))
            .find(|a| !a.is_empty())
            .unwrap_or_default(),
        exported_at: time::OffsetDateTime::now_utc()
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default(),
        node: events.first().map(|e| e.node.clone()).unwrap_or_default(),
        commands: events
            .iter()
            .filter(|e| e.kind == "agent_exec" || e.kind == "tagged_exec")
            .filter_map(|e| {
                let p = e.process.as_ref()?;
                Some(Command {
                    time: e.time.clone(),
                    pid: p.pid,
                    ppid: p.ppid,
                    comm: p.comm.clone(),
                    exe: p.exe.clone(),
                    argv: p.argv.clone(),
                    cwd: p.cwd.clone(),
                })
            })
            .collect(),
        decisions: events
            .iter()
            .filter(|e| e.rule.is_some() && e.kind != "secret_read")
            .cloned()
            .collect(),
        files: events
            .iter()
            .filter_map(|e| e.object.as_ref()?.path.clone())
            .filter(|p| p.starts_with('/'))
            .collect(),
        secrets: events
            .iter()
            .filter(|e| e.kind == "secret_read")
            .flat_map(|e| {
                e.secrets.iter().map(|s| SecretRead {
                    time: e.time.clone(),
                    file: e.object.as_ref().and_then(|o| o.path.clone()),
                    detector: s.detector.clone(),
                    fingerprint: s.fingerprint.clone(),
                    pid: e.process.as_ref().map(|p| p.pid),
                })
            })
            .collect(),
        running,
        events,
    })
}

/// `PID` or `PID:START_NS`.
pub fn parse_root(spec: &str) -> anyhow::Result<(u32, Option<u64>)> {
    let bad = || anyhow::anyhow!("{spec:?} is not a tree root: give its pid, or PID:START_NS");
    let (pid, start) = match spec.split_once(':') {
        Some((p, s)) => (p, Some(s.parse::<u64>().map_err(|_| bad())?)),
        None => (spec, None),
    };
    Ok((pid.parse().map_err(|_| bad())?, start))
}
