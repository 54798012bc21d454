//! Incident response on a running agent tree: `guard freeze|thaw|kill ROOT` from root, never
//! from a tagged process; each is an event (`response`). Held trees stay stopped: a task
//! stops again any process of one that runs (see `respond/hold.rs`).

use std::path::PathBuf;

use aya::maps::{HashMap, MapData};
use guard_common::{PROBE_TGID, ProcKey, Tag};
use tracing::{info, warn};

use super::{Shared, caller::Caller};
use crate::{
    api::{Reply, TreeAction, TreeReply},
    respond::hold::{self, TreeReport},
};

type Tags = HashMap<MapData, u32, Tag>;

/// The root `spec` names: `PID` (the root's pid, as `guard ps` shows it) or `PID:START_NS`.
pub fn resolve_root(tags: &Tags, spec: &str) -> Result<(ProcKey, u32), String> {
    let (pid, start) = crate::export::parse_root(spec).map_err(|e| e.to_string())?;
    let mut roots: Vec<(ProcKey, u32)> = tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(tgid, t)| *tgid != PROBE_TGID && t.root.tgid == pid)
        .filter(|(_, t)| start.is_none_or(|s| ProcKey::new(pid, s) == t.root))
        .map(|(_, t)| (t.root, t.agent_id))
        .collect();
    roots.sort_by_key(|(k, _)| k.start_ns);
    roots.dedup_by_key(|(k, _)| *k);
    match roots.as_slice() {
        [one] => Ok(*one),
        [] => Err(format!(
            "no agent tree has root {spec} (guard ps lists the roots; a tree with no process \
             left is gone)"
        )),
        many => Err(format!(
            "pid {pid} is the root of {} trees (the pid was reused): give one as {}",
            many.len(),
            many.iter()
                .map(|(k, _)| format!("{pid}:{}", k.start_ns))
                .collect::<Vec<_>>()
                .join(" or ")
        )),
    }
}

/// `guard freeze|thaw|kill ROOT`.
pub(super) async fn tree(
    state: &Shared,
    caller: &Caller,
    uid: u32,
    action: TreeAction,
    spec: &str,
) -> Reply<TreeReply> {
    if uid != 0 {
        return Reply::err(format!("only root may {} an agent tree", action.name()));
    }
    if caller.pid().is_some_and(|pid| super::is_tagged(state, pid)) {
        return Reply::err(format!(
            "a tagged process may not {} an agent tree",
            action.name()
        ));
    }
    tree_as(state, uid, action, spec).await
}

/// `guard freeze|thaw|kill ROOT` on behalf of `uid`, who was found to be allowed (root on the
/// API socket, or the review page's approver token).
pub(super) async fn tree_as(
    state: &Shared,
    uid: u32,
    action: TreeAction,
    spec: &str,
) -> Reply<TreeReply> {
    let (maps_dir, names, sink, requests) = {
        let st = state.lock().expect("state lock");
        let requests = st.net.as_ref().map(|n| n.requests());
        (
            st.kernel.maps_dir(),
            st.names.clone(),
            st.sink.clone(),
            requests,
        )
    };
    let spec = spec.to_owned();
    let done = tokio::task::spawn_blocking(move || -> Result<_, String> {
        let (tags, mut held) = hold::maps(&maps_dir)?;
        let (root, agent_id) = resolve_root(&tags, &spec)?;
        let report = match action {
            TreeAction::Freeze => hold::freeze(&tags, &mut held, root)
                .map_err(|e| format!("marking the tree held: {e}"))?,
            TreeAction::Thaw => {
                if held.get(&root, 0).is_err() {
                    return Err(format!("the tree of root {spec} is not frozen"));
                }
                hold::thaw(&tags, &mut held, root)
            }
            TreeAction::Kill => hold::kill(&tags, &mut held, root),
        };
        Ok((root, agent_id, report))
    })
    .await;
    let (root, agent_id, report) = match done {
        Ok(Ok(r)) => r,
        Ok(Err(why)) => return Reply::err(why),
        Err(e) => return Reply::err(format!("the {} failed: {e}", action.name())),
    };
    info!(
        root = root.tgid,
        action = action.name(),
        ?report,
        "agent tree response"
    );
    if let Some(sink) = sink {
        sink.submit(hold::event(root, agent_id, uid, action.name(), &report))
            .await;
    }
    if let Some(r) = requests {
        r.notify_tree(&crate::respond::TreeNote {
            root,
            agent_id,
            what: match action {
                TreeAction::Freeze => "frozen",
                TreeAction::Thaw => "thawed",
                TreeAction::Kill => "killed",
            },
            by: format!("uid {uid}"),
            detail: None,
        });
    }
    Reply::ok(TreeReply {
        root_pid: root.tgid,
        root_start_ns: root.start_ns,
        agent: names.name(agent_id),
        action,
        report,
    })
}

/// Keep held trees stopped, and forget held trees that are gone.
pub(super) async fn keep_held(state: Shared, maps_dir: PathBuf) {
    let mut tick = tokio::time::interval(hold::RESTOP_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let dir = maps_dir.clone();
        let found = tokio::task::spawn_blocking(move || {
            let (tags, mut held) = hold::maps(&dir).ok()?;
            // Nothing held: nothing to look at (the common case).
            held.keys().next()?.ok()?;
            let again = hold::restop(&tags, &held);
            hold::forget_gone(&tags, &mut held);
            Some(again)
        })
        .await;
        let Ok(Some(again)) = found else { continue };
        if again.is_empty() {
            continue;
        }
        let sink = state.lock().expect("state lock").sink.clone();
        for (root, pid) in again {
            warn!(
                root = root.tgid,
                pid, "a process of a held tree ran: stopped again"
            );
            let report = TreeReport {
                processes: 1,
                signalled: 1,
                passes: 1,
                left: 0,
            };
            if let Some(sink) = &sink {
                let mut d = hold::event(root, u32::MAX, u32::MAX, "stop-again", &report);
                if let Some(o) = d.object.as_mut() {
                    o.path = Some(format!(
                        "process {pid} of the held agent tree of root {}",
                        root.tgid
                    ));
                }
                sink.submit(d).await;
            }
        }
    }
}
