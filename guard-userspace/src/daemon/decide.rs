//! Answers to requests (`guard approve`, `guard deny`): who may answer — root or
//! `spec.approvers`, identified by the kernel (`SO_PEERCRED` and the caller's live process),
//! never a tagged process — and the kernel exceptions an approval installs and its expiry
//! removes (see `requests.rs`).

use std::{path::Path, time::Duration};

use aya::maps::{HashMap, MapData};
use guard_common::{PROBE_TGID, ProcKey, net::ExceptionKey};
use tracing::{info, warn};

use super::{Shared, caller::Caller};
use crate::{
    api::Reply,
    requests::{MAX_FOR, MIN_FOR, Request, Requests, Scope},
};

/// How long an approval lasts when `--for` is not given.
const DEFAULT_FOR: Duration = Duration::from_secs(15 * 60);

type Exceptions = HashMap<MapData, ExceptionKey, u64>;

fn exceptions(maps_dir: &Path) -> Result<Exceptions, String> {
    crate::loader::open_pinned_hash(maps_dir, guard_common::maps::NET_EXCEPTIONS)
        .map_err(|(name, e)| format!("opening {name}: {e}"))
}

/// The caller, if it may answer requests: its uid.
pub(super) fn approver(state: &Shared, caller: &Caller, uid: u32) -> Result<u32, String> {
    let pid = caller.live_pid()?;
    if super::is_tagged(state, pid) {
        return Err("a tagged process may not approve or deny requests".into());
    }
    let st = state.lock().expect("state lock");
    if uid == 0 {
        return Ok(uid);
    }
    let a = &st.approvers;
    let named = |who: &str, id: u32, by_name: &dyn Fn(&str) -> Option<u32>| {
        who.parse::<u32>().ok().or_else(|| by_name(who)) == Some(id)
    };
    let user = |n: &str| {
        nix::unistd::User::from_name(n)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    };
    let group = |n: &str| {
        nix::unistd::Group::from_name(n)
            .ok()
            .flatten()
            .map(|g| g.gid.as_raw())
    };
    if a.users.iter().any(|u| named(u, uid, &user)) {
        return Ok(uid);
    }
    let gids = groups_of(pid);
    if a.groups
        .iter()
        .any(|g| gids.iter().any(|gid| named(g, *gid, &group)))
    {
        return Ok(uid);
    }
    Err(format!(
        "uid {uid} is not an approver (spec.approvers lists who may answer requests, besides \
         root)"
    ))
}

/// The primary and supplementary groups of `pid` (`/proc/PID/status`).
pub(super) fn groups_of(pid: i32) -> Vec<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        if let Some(v) = line.strip_prefix("Gid:") {
            out.extend(
                v.split_whitespace()
                    .take(2)
                    .filter_map(|g| g.parse::<u32>().ok()),
            );
        }
        if let Some(v) = line.strip_prefix("Groups:") {
            out.extend(v.split_whitespace().filter_map(|g| g.parse::<u32>().ok()));
        }
    }
    out
}

fn requests(state: &Shared) -> Result<Requests, String> {
    let st = state.lock().expect("state lock");
    st.net
        .as_ref()
        .map(|n| n.requests())
        .ok_or_else(|| "the daemon has no policy in force yet".to_owned())
}

/// `guard requests`.
pub(super) fn list(state: &Shared) -> Reply<Vec<Request>> {
    let names = state.lock().expect("state lock").names.clone();
    match requests(state) {
        Ok(r) => Reply::ok(
            r.list()
                .into_iter()
                .map(|mut q| {
                    q.agent = names.name(q.agent_id);
                    q
                })
                .collect(),
        ),
        Err(e) => Reply::err(e),
    }
}

/// `guard approve ID`.
pub(super) fn approve(
    state: &Shared,
    caller: &Caller,
    uid: u32,
    id: u64,
    for_secs: Option<u64>,
    scope: Scope,
    reason: Option<&str>,
) -> Reply<Request> {
    match approver(state, caller, uid) {
        Ok(by) => approve_as(state, by, id, for_secs, scope, reason),
        Err(e) => Reply::err(e),
    }
}

/// Approve request `id` on behalf of `by`, who was found to be an approver (by the API's
/// peer credentials, or by the review page's approver token).
pub(super) fn approve_as(
    state: &Shared,
    by: u32,
    id: u64,
    for_secs: Option<u64>,
    scope: Scope,
    reason: Option<&str>,
) -> Reply<Request> {
    let run = || -> Result<Request, String> {
        let dur = for_secs.map_or(DEFAULT_FOR, Duration::from_secs);
        if !(MIN_FOR..=MAX_FOR).contains(&dur) {
            return Err(format!(
                "--for {}s is out of range: an approval lasts from {}s to {}h",
                dur.as_secs(),
                MIN_FOR.as_secs(),
                MAX_FOR.as_secs() / 3600
            ));
        }
        let reqs = requests(state)?;
        let r = reqs.to_approve(id)?;
        let maps_dir = state.lock().expect("state lock").kernel.maps_dir();
        let who = match scope {
            Scope::Process => vec![live_process(&r)?],
            Scope::Tree => vec![ProcKey::new(r.root_pid, r.root_start_ns)],
            Scope::Agent => roots_of(&maps_dir, r.agent_id)?,
        };
        let deadline = crate::clock::boot_ns() + dur.as_nanos() as u64;
        let mut map = exceptions(&maps_dir)?;
        for key in Requests::keys(&r, scope, &who) {
            map.insert(key, deadline, 0)
                .map_err(|e| format!("installing the exception: {e}"))?;
        }
        reqs.approved(id, by, deadline, (scope, who), reason.unwrap_or_default());
        info!(id, uid = by, secs = dur.as_secs(), "request approved");
        reqs.to_list_entry(id)
            .ok_or_else(|| format!("request {id} is gone"))
    };
    match run() {
        Ok(r) => Reply::ok(r),
        Err(e) => Reply::err(e),
    }
}

/// The process that asked `r`, if it still runs: a process-scoped approval of a process that
/// is gone would never be used (its retry is a new process, which asks again).
fn live_process(r: &Request) -> Result<ProcKey, String> {
    let key = r.process();
    if crate::respond::same_process(key.tgid, key.start_ns) {
        Ok(key)
    } else {
        Err(format!(
            "process {} that asked request {} has exited: approve its tree (--scope tree) or \
             wait for the retry's request",
            r.pid, r.id
        ))
    }
}

/// Every root of a tree of agent `agent_id` running now.
fn roots_of(maps_dir: &Path, agent_id: u32) -> Result<Vec<ProcKey>, String> {
    let tags = crate::loader::open_pinned_tags(maps_dir)
        .map_err(|(name, e)| format!("opening {name}: {e}"))?;
    let mut roots: Vec<ProcKey> = tags
        .iter()
        .filter_map(Result::ok)
        .filter(|(pid, t)| *pid != PROBE_TGID && t.agent_id == agent_id)
        .map(|(_, t)| t.root)
        .collect();
    roots.sort_by_key(|k| (k.tgid, k.start_ns));
    roots.dedup();
    Ok(roots)
}

/// `guard deny ID`.
pub(super) fn deny(
    state: &Shared,
    caller: &Caller,
    uid: u32,
    id: u64,
    reason: Option<&str>,
) -> Reply<Request> {
    match approver(state, caller, uid) {
        Ok(by) => deny_as(state, by, id, reason),
        Err(e) => Reply::err(e),
    }
}

/// Deny request `id` on behalf of `by`, an approver.
pub(super) fn deny_as(state: &Shared, by: u32, id: u64, reason: Option<&str>) -> Reply<Request> {
    match requests(state).and_then(|r| r.deny(id, by, reason.unwrap_or_default())) {
        Ok(r) => Reply::ok(r),
        Err(e) => Reply::err(e),
    }
}

/// Remove expired exceptions from the kernel (the kernel already ignores them past their
/// deadline) and record each expiry.
pub(super) async fn expire_forever(state: Shared) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let Ok(reqs) = requests(&state) else { continue };
        let expired = reqs.expire(crate::clock::boot_ns());
        if expired.is_empty() {
            continue;
        }
        let maps_dir = state.lock().expect("state lock").kernel.maps_dir();
        match exceptions(&maps_dir) {
            Ok(mut map) => {
                for r in &expired {
                    for key in Requests::installed(r) {
                        let _ = map.remove(&key);
                    }
                }
            }
            Err(e) => warn!(error = %e, "cannot remove expired exceptions"),
        }
    }
}
