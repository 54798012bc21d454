//! Requests for a human (`action: ask`): the kernel denied a tagged tree's connect as it would
//! for `deny`; the daemon opens a request, the reason line gives its id, and an approver's
//! `guard approve ID --for 15m` installs a time-limited exception in the kernel
//! (`GUARD_NET_EXCEPTIONS`: tree root, rule, destination → deadline, checked by the kernel
//! itself at every connect) so that the tree's retry goes through. Expired exceptions are
//! removed and recorded. Every step is a `request` event.
//!
//! Requests are kept in a file beside the API socket (`requests.json`, on the runtime
//! tmpfs, so a reboot, which also ends every kernel exception, ends them too): a restarted
//! daemon takes back the open requests whose trees still run and the approved ones before
//! their deadline, and logs what it took back and dropped. Live exceptions are pinned and
//! outlive it either way, each ending at its deadline.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use guard_common::{ProcKey, event::EventKind, net::ExceptionKey};
use serde::{Deserialize, Serialize};

use crate::events::{Decision, Decoded, Object, pipeline::EventSink};

/// Shortest and longest approval.
pub const MIN_FOR: Duration = Duration::from_secs(1);
pub const MAX_FOR: Duration = Duration::from_secs(24 * 3600);
/// Open requests kept; the oldest go first beyond this (each one was an event).
const OPEN_MAX: usize = 1024;

/// How far an approval reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The agent tree that asked (by its root).
    #[default]
    Tree,
    /// Every tree of the same agent running now.
    Agent,
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    Open,
    Approved {
        by_uid: u32,
        until: String,
        #[serde(skip)]
        deadline_ns: u64,
        /// The roots of the trees the exception covers.
        #[serde(skip)]
        roots: Vec<ProcKey>,
    },
}

/// A request as its file keeps it: with what `guard requests` does not show.
#[derive(Serialize, Deserialize)]
struct Saved {
    request: Request,
    deadline_ns: u64,
    /// `(tgid, start_ns)` of each tree an approval covers.
    roots: Vec<(u32, u64)>,
}

/// One request, as `guard requests` lists it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub id: u64,
    pub opened: String,
    pub agent: String,
    pub agent_id: u32,
    pub root_pid: u32,
    pub root_start_ns: u64,
    pub pid: u32,
    pub comm: String,
    pub rule: String,
    pub rule_id: u32,
    /// `ADDR:PORT` (with the host name a rule resolved, if any) or `unix:PATH`.
    pub destination: String,
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    #[serde(flatten)]
    pub state: State,
}

impl Request {
    fn key(&self, root: ProcKey) -> ExceptionKey {
        ExceptionKey {
            root,
            rule_id: self.rule_id,
            family: self.family,
            port: self.port,
            _pad: 0,
            addr: self.addr,
        }
    }

    fn root(&self) -> ProcKey {
        ProcKey::new(self.root_pid, self.root_start_ns)
    }
}

/// What a denial of an `ask` rule asks about.
pub struct Asked {
    pub root: ProcKey,
    pub agent_id: u32,
    pub agent: String,
    pub pid: u32,
    pub comm: String,
    pub rule: String,
    pub rule_id: u32,
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    pub destination: String,
}

/// The open and approved requests, shared by the network responder (which opens them) and
/// the API (which decides them).
#[derive(Clone, Default)]
pub struct Requests(Arc<Inner>);

#[derive(Default)]
struct Inner {
    list: Mutex<List>,
    sink: OnceLock<EventSink>,
    /// Where the requests are kept across restarts.
    store: OnceLock<std::path::PathBuf>,
    /// Agent names by id, of the policy in force (a request names its agent).
    names: Mutex<crate::agents::AgentNames>,
    /// The webhook of the policy in force (`spec.notify.webhook`), if any.
    notifier: Mutex<Option<(crate::policy::Webhook, crate::notify::Notifier)>>,
}

#[derive(Default)]
struct List {
    next: u64,
    by_id: BTreeMap<u64, Request>,
    /// The open request of each (tree, rule, destination): asked again, it is the same one.
    open: HashMap<ExceptionKey, u64>,
}

impl Requests {
    /// Where request events go, once the pipeline runs.
    pub fn set_sink(&self, sink: EventSink) {
        let _ = self.0.sink.set(sink);
    }

    /// The agents' names from now on (a policy apply sets them).
    pub fn set_agent_names(&self, names: crate::agents::AgentNames) {
        *self.0.names.lock().expect("names lock") = names;
    }

    /// Deliver to `webhook` from now on (a policy apply sets it); the running one, with its
    /// counters, stays when the webhook did not change.
    pub fn configure_webhook(
        &self,
        webhook: Option<&crate::policy::Webhook>,
    ) -> Result<(), String> {
        let mut current = self.0.notifier.lock().expect("notifier lock");
        if current.as_ref().map(|(w, _)| w) == webhook {
            return Ok(());
        }
        *current = match webhook {
            Some(w) => Some((w.clone(), crate::notify::Notifier::start(w)?)),
            None => None,
        };
        Ok(())
    }

    /// The webhook's deliveries, for status.
    pub fn notify_status(&self) -> Option<crate::notify::NotifyStatus> {
        let n = self.0.notifier.lock().expect("notifier lock");
        n.as_ref().map(|(_, n)| n.status())
    }

    /// Tell the webhook that request `r` was `result` (opened, approved, denied, expired).
    fn notify(&self, r: &Request, result: &str) {
        let Some((_, n)) = self.0.notifier.lock().expect("notifier lock").clone() else {
            return;
        };
        let node = crate::events::pipeline::hostname();
        let doc = serde_json::json!({
            "source": "guard",
            "event": format!("request.{result}"),
            "node": node,
            "time": now(),
            "request": r,
            "approve": format!("guard approve {}", r.id),
            "deny": format!("guard deny {}", r.id),
        });
        let text = format!(
            "guard on {node}: request {id} {result}: {agent} (pid {pid}, {comm}) asks to reach \
             {dest} (rule {rule}). Approve: `guard approve {id}`; deny: `guard deny {id}`",
            id = r.id,
            agent = r.agent,
            pid = r.pid,
            comm = crate::respond::sanitize(&r.comm),
            dest = r.destination,
            rule = r.rule,
        );
        n.send(&doc, &text);
    }

    /// The request for `a`: the open one for the same tree, rule and destination, or a new
    /// one (an event). Returns its id.
    pub fn open(&self, a: Asked) -> u64 {
        let key = ExceptionKey {
            root: a.root,
            rule_id: a.rule_id,
            family: a.family,
            port: a.port,
            _pad: 0,
            addr: a.addr,
        };
        let mut l = self.0.list.lock().expect("requests lock");
        if let Some(id) = l.open.get(&key) {
            return *id;
        }
        l.next += 1;
        let id = l.next;
        let r = Request {
            id,
            opened: now(),
            agent: if a.agent.is_empty() {
                self.0.names.lock().expect("names lock").name(a.agent_id)
            } else {
                a.agent
            },
            agent_id: a.agent_id,
            root_pid: a.root.tgid,
            root_start_ns: a.root.start_ns,
            pid: a.pid,
            comm: a.comm,
            rule: a.rule,
            rule_id: a.rule_id,
            destination: a.destination,
            family: a.family,
            port: a.port,
            addr: a.addr,
            state: State::Open,
        };
        l.open.insert(key, id);
        l.by_id.insert(id, r.clone());
        while l.by_id.len() > OPEN_MAX {
            let Some((&old, _)) = l.by_id.iter().find(|(_, r)| r.state == State::Open) else {
                break;
            };
            if let Some(r) = l.by_id.remove(&old) {
                l.open.remove(&r.key(r.root()));
            }
        }
        // Not under the lock: the event's save takes it.
        drop(l);
        self.emit(&r, "ask", "opened", u32::MAX, "");
        id
    }

    /// Request `id` as listed.
    pub fn to_list_entry(&self, id: u64) -> Option<Request> {
        self.0
            .list
            .lock()
            .expect("requests lock")
            .by_id
            .get(&id)
            .cloned()
    }

    pub fn list(&self) -> Vec<Request> {
        self.0
            .list
            .lock()
            .expect("requests lock")
            .by_id
            .values()
            .cloned()
            .collect()
    }

    /// Approve request `id`: the kernel keys to install (one per tree of `roots`) and the
    /// deadline; the request is approved once the caller has installed them
    /// ([`Self::approved`]).
    pub fn to_approve(&self, id: u64) -> Result<Request, String> {
        let l = self.0.list.lock().expect("requests lock");
        match l.by_id.get(&id) {
            None => Err(format!("no request {id} (guard requests lists them)")),
            Some(r) if r.state != State::Open => Err(format!("request {id} is already approved")),
            Some(r) => Ok(r.clone()),
        }
    }

    /// The exception keys of `r` for each root of `roots`.
    pub fn keys(r: &Request, roots: &[ProcKey]) -> Vec<ExceptionKey> {
        roots.iter().map(|root| r.key(*root)).collect()
    }

    /// The exception keys an approved request installed.
    pub fn installed(r: &Request) -> Vec<ExceptionKey> {
        match &r.state {
            State::Approved { roots, .. } => Self::keys(r, roots),
            State::Open => Vec::new(),
        }
    }

    /// Record the approval of `id` (its keys for `roots` are in the kernel until
    /// `deadline_ns`).
    pub fn approved(
        &self,
        id: u64,
        by_uid: u32,
        deadline_ns: u64,
        roots: Vec<ProcKey>,
        reason: &str,
    ) {
        let mut l = self.0.list.lock().expect("requests lock");
        let Some(r) = l.by_id.get_mut(&id) else {
            return;
        };
        let left = Duration::from_nanos(deadline_ns.saturating_sub(crate::clock::boot_ns()));
        r.state = State::Approved {
            by_uid,
            until: rfc3339_in(left),
            deadline_ns,
            roots,
        };
        let r = r.clone();
        l.open.remove(&r.key(r.root()));
        drop(l);
        self.emit(&r, "approve", "approved", by_uid, reason);
    }

    /// Deny request `id`: closed, an event.
    pub fn deny(&self, id: u64, by_uid: u32, reason: &str) -> Result<Request, String> {
        let mut l = self.0.list.lock().expect("requests lock");
        let r = match l.by_id.get(&id) {
            None => return Err(format!("no request {id} (guard requests lists them)")),
            Some(r) if r.state != State::Open => {
                return Err(format!(
                    "request {id} is approved: its exception ends at its deadline"
                ));
            }
            Some(r) => r.clone(),
        };
        l.by_id.remove(&id);
        l.open.remove(&r.key(r.root()));
        drop(l);
        self.emit(&r, "deny", "denied", by_uid, reason);
        Ok(r)
    }

    /// Approved requests past their deadline: removed here (an event each) and returned, for
    /// the caller to remove their kernel keys.
    pub fn expire(&self, now_ns: u64) -> Vec<Request> {
        let mut l = self.0.list.lock().expect("requests lock");
        let due: Vec<u64> = l
            .by_id
            .values()
            .filter(
                |r| matches!(r.state, State::Approved { deadline_ns, .. } if deadline_ns <= now_ns),
            )
            .map(|r| r.id)
            .collect();
        let out: Vec<Request> = due.iter().filter_map(|id| l.by_id.remove(id)).collect();
        drop(l);
        for r in &out {
            self.emit(r, "expire", "expired", u32::MAX, "");
        }
        out
    }

    /// Keep the requests in `file` from now on, after taking back what it holds: the open
    /// requests whose root still runs and the approved ones before their deadline. Returns
    /// how many were taken back and how many dropped.
    pub fn keep_in(&self, file: std::path::PathBuf) -> (usize, usize) {
        let saved: Vec<Saved> = std::fs::read(&file)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        let now = crate::clock::boot_ns();
        let mut l = self.0.list.lock().expect("requests lock");
        let (mut kept, mut dropped) = (0, 0);
        for s in saved {
            let mut r = s.request;
            l.next = l.next.max(r.id);
            let live = match &mut r.state {
                State::Open => {
                    r.root_pid == 0
                        || std::path::Path::new(&format!("/proc/{}", r.root_pid)).exists()
                }
                State::Approved {
                    deadline_ns, roots, ..
                } => {
                    *deadline_ns = s.deadline_ns;
                    *roots = s
                        .roots
                        .iter()
                        .map(|(tgid, start_ns)| ProcKey::new(*tgid, *start_ns))
                        .collect();
                    s.deadline_ns > now
                }
            };
            if !live {
                dropped += 1;
                continue;
            }
            if r.state == State::Open {
                l.open.insert(r.key(r.root()), r.id);
            }
            l.by_id.insert(r.id, r);
            kept += 1;
        }
        drop(l);
        let _ = self.0.store.set(file);
        self.save();
        (kept, dropped)
    }

    /// Write the requests to their file (whole, then renamed into place).
    fn save(&self) {
        let Some(file) = self.0.store.get() else {
            return;
        };
        let saved: Vec<Saved> = self
            .0
            .list
            .lock()
            .expect("requests lock")
            .by_id
            .values()
            .map(|r| {
                let (deadline_ns, roots) = match &r.state {
                    State::Approved {
                        deadline_ns, roots, ..
                    } => (
                        *deadline_ns,
                        roots.iter().map(|k| (k.tgid, k.start_ns)).collect(),
                    ),
                    State::Open => (0, Vec::new()),
                };
                Saved {
                    request: r.clone(),
                    deadline_ns,
                    roots,
                }
            })
            .collect();
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "requests not saved");
        }
    }

    /// An event, the file and the webhook for a change of `r`; never called under the lock.
    fn emit(&self, r: &Request, action: &str, result: &str, uid: u32, reason: &str) {
        self.save();
        self.notify(r, result);
        let Some(sink) = self.0.sink.get() else {
            return;
        };
        let root = r.root();
        let header = guard_common::event::EventHeader {
            kind: EventKind::Request as u32,
            agent_id: r.agent_id,
            time_ns: crate::clock::boot_ns(),
            proc: root,
            root,
            ppid: 0,
            uid,
        };
        let mut d = Decoded::new(EventKind::Request, header);
        d.decision = Some(Decision {
            rule: r.rule.clone(),
            rule_id: Some(r.rule_id),
            action: action.to_owned(),
            mode: Some("enforce".to_owned()),
            result: result.to_owned(),
            hook: Some("api".to_owned()),
        });
        let mut what = format!("request {} from pid {} ({})", r.id, r.pid, r.comm);
        if let State::Approved { until, .. } = &r.state {
            what.push_str(&format!(", until {until}"));
        }
        if !reason.is_empty() {
            what.push_str(&format!(": {}", crate::respond::sanitize(reason)));
        }
        d.object = Some(Object {
            path: Some(r.destination.clone()),
            dev: None,
            ino: None,
            operation: Some(what),
        });
        let sink = sink.clone();
        tokio::spawn(async move {
            sink.submit(d).await;
        });
    }
}

/// `ADDR:PORT` of a destination, `[ADDR]:PORT` for IPv6.
pub fn destination(
    addr: Option<IpAddr>,
    port: u16,
    unix: Option<&str>,
    host: Option<&str>,
) -> String {
    match (unix, addr) {
        (Some(path), _) => format!("unix:{path}"),
        (None, Some(IpAddr::V6(a))) => with_host(format!("[{a}]:{port}"), host),
        (None, Some(a)) => with_host(format!("{a}:{port}"), host),
        (None, None) => "?".to_owned(),
    }
}

fn with_host(hostport: String, host: Option<&str>) -> String {
    match host {
        Some(h) => format!("{h} ({hostport})"),
        None => hostport,
    }
}

fn now() -> String {
    rfc3339_in(Duration::ZERO)
}

fn rfc3339_in(d: Duration) -> String {
    (time::OffsetDateTime::now_utc() + d)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn asked(root: u32, port: u32) -> Asked {
        Asked {
            root: ProcKey::new(root, 1_000_000_000),
            agent_id: 0,
            agent: String::new(),
            pid: root + 1,
            comm: "curl".into(),
            rule: "prod-db".into(),
            rule_id: 3,
            family: guard_common::net::AF_INET,
            port,
            addr: [10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            destination: format!("10.0.0.5:{port}"),
        }
    }

    #[test]
    fn one_open_request_per_tree_rule_and_destination_until_answered() {
        let r = Requests::default();
        let a = r.open(asked(7, 5432));
        assert_eq!(r.open(asked(7, 5432)), a, "asked again: the same request");
        let b = r.open(asked(7, 6432));
        let c = r.open(asked(8, 5432));
        assert!(a != b && b != c && a != c);
        assert!(r.to_approve(99).unwrap_err().contains("no request 99"));
        let req = r.to_approve(a).unwrap();
        let root = ProcKey::new(7, 1_000_000_000);
        assert_eq!(Requests::keys(&req, &[root])[0].port, 5432);
        r.approved(a, 0, 5_000, vec![root], "");
        assert!(r.to_approve(a).unwrap_err().contains("already approved"));
        assert_eq!(Requests::installed(&r.to_list_entry(a).unwrap()).len(), 1);
        // Approved, the pair is free: a new denial (after expiry) opens a new request.
        assert_ne!(r.open(asked(7, 5432)), a);
        assert!(r.deny(a, 0, "").unwrap_err().contains("is approved"));
        assert_eq!(r.deny(b, 0, "no").unwrap().id, b);
        let expired = r.expire(6_000);
        assert_eq!(expired.iter().map(|q| q.id).collect::<Vec<_>>(), [a]);
        assert!(r.list().iter().all(|q| q.id != a && q.id != b));
    }
}
