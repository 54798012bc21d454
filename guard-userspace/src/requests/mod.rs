//! Requests for a human (`action: ask`): the kernel (or the daemon's fanotify answer) refused
//! a tagged tree's connect or file operation as it would for `deny`; the daemon opens a
//! request, the reason line gives its id, and an approver's `guard approve ID --for 15m`
//! installs a time-limited exception in the kernel (`GUARD_NET_EXCEPTIONS`: tree root or
//! process, rule, destination or file object and access → deadline, checked by the kernel
//! itself at every decision) so that the retry goes through. Expired exceptions are removed
//! and recorded. Every step is a `request` event.
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

use guard_common::{
    ProcKey,
    event::EventKind,
    net::{ExceptionKey, exception_scope},
};
use serde::{Deserialize, Serialize};

use crate::events::{Ancestor, Decision, Decoded, Object, OnBuilt, pipeline::EventSink};

/// Shortest and longest approval.
pub const MIN_FOR: Duration = Duration::from_secs(1);
pub const MAX_FOR: Duration = Duration::from_secs(24 * 3600);
/// Open requests kept; the oldest go first beyond this (each one was an event).
const OPEN_MAX: usize = 1024;
/// New requests a tree may open in a minute.
pub const PER_TREE_PER_MINUTE: u32 = 20;

/// How far an approval reaches.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// The process that asked, alone (while it runs: a retry by a new process asks again).
    Process,
    /// The agent tree that asked (by its root).
    #[default]
    Tree,
    /// Every tree of the same agent running now.
    Agent,
}

impl Scope {
    /// As `--scope` and the JSON name it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Process => "process",
            Scope::Tree => "tree",
            Scope::Agent => "agent",
        }
    }
}

/// Where a request stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "lowercase")]
pub enum State {
    Open,
    Approved {
        by_uid: u32,
        until: String,
        #[serde(default)]
        scope: Scope,
        #[serde(skip)]
        deadline_ns: u64,
        /// The roots of the trees the exception covers (the process, with `scope: process`).
        #[serde(skip)]
        roots: Vec<ProcKey>,
    },
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
    /// The process that asked.
    pub pid: u32,
    #[serde(default)]
    pub start_ns: u64,
    #[serde(default)]
    pub ppid: u32,
    pub comm: String,
    /// Its command line (secrets redacted): read as the request opened, else the event
    /// pipeline's copy, if it had one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// Its ancestors, nearest first, through the agent root.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    pub rule: String,
    pub rule_id: u32,
    /// `ADDR:PORT` (with the host name a rule resolved, if any), `unix:PATH`, or for a path
    /// rule the operation (`open of PATH for write`).
    pub destination: String,
    pub family: u32,
    pub port: u32,
    pub addr: [u8; 16],
    #[serde(flatten)]
    pub state: State,
}

impl Request {
    /// The exception key for `who`: a tree's root, or with [`Scope::Process`] a process.
    fn key(&self, who: ProcKey, scope: Scope) -> ExceptionKey {
        ExceptionKey {
            root: who,
            rule_id: self.rule_id,
            family: self.family,
            port: self.port,
            scope: match scope {
                Scope::Process => exception_scope::PROCESS,
                Scope::Tree | Scope::Agent => exception_scope::TREE,
            },
            addr: self.addr,
        }
    }

    /// The key under which the request is open: its tree, rule and destination.
    fn open_key(&self) -> ExceptionKey {
        self.key(self.root(), Scope::Tree)
    }

    fn root(&self) -> ProcKey {
        ProcKey::new(self.root_pid, self.root_start_ns)
    }

    /// The process that asked.
    pub fn process(&self) -> ProcKey {
        ProcKey::new(self.pid, self.start_ns)
    }
}

/// What a denial of an `ask` rule asks about.
pub struct Asked {
    pub root: ProcKey,
    pub agent_id: u32,
    /// The process that asked, and its parent.
    pub proc: ProcKey,
    pub ppid: u32,
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
    /// The daemon's runtime: requests are opened from plain threads too (file decisions).
    rt: OnceLock<tokio::runtime::Handle>,
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
    rate: Rate,
}

/// New requests per tree in a minute: an agent looping over destinations cannot flood the
/// approvers (or the webhook).
#[derive(Default)]
struct Rate(HashMap<ProcKey, (std::time::Instant, u32)>);

impl Rate {
    const WINDOW: Duration = Duration::from_secs(60);

    /// One more request of the tree of `root` at `now`, if its minute allows it.
    fn allows(&mut self, root: ProcKey, now: std::time::Instant) -> bool {
        if self.0.len() > OPEN_MAX {
            self.0
                .retain(|_, (since, _)| now.duration_since(*since) < Self::WINDOW);
        }
        let (since, count) = self.0.entry(root).or_insert((now, 0));
        if now.duration_since(*since) >= Self::WINDOW {
            (*since, *count) = (now, 0);
        }
        *count += 1;
        *count <= PER_TREE_PER_MINUTE
    }
}

impl Requests {
    /// Where request events go, once the pipeline runs.
    /// Called inside the daemon's runtime.
    pub fn set_sink(&self, sink: EventSink) {
        let _ = self.0.sink.set(sink);
        let _ = self.0.rt.set(tokio::runtime::Handle::current());
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

    /// The request for `a`: the open one for the same tree, rule and destination, or a new
    /// one (an event). Its id, or `None` when the tree opened [`PER_TREE_PER_MINUTE`]
    /// requests in the last minute already (the denial stands; nobody is asked).
    pub fn open(&self, a: Asked) -> Option<u64> {
        let agent = self.0.names.lock().expect("names lock").name(a.agent_id);
        let mut r = Request {
            id: 0,
            opened: now(),
            agent,
            agent_id: a.agent_id,
            root_pid: a.root.tgid,
            root_start_ns: a.root.start_ns,
            pid: a.proc.tgid,
            start_ns: a.proc.start_ns,
            ppid: a.ppid,
            comm: a.comm,
            argv: Vec::new(),
            ancestry: Vec::new(),
            rule: a.rule,
            rule_id: a.rule_id,
            destination: a.destination,
            family: a.family,
            port: a.port,
            addr: a.addr,
            state: State::Open,
        };
        let key = r.open_key();
        // Asked again (an agent retrying): the open request, without reading `/proc`.
        if let Some(&open) = self.0.list.lock().expect("requests lock").open.get(&key) {
            return Some(open);
        }
        r.argv = argv_of(a.proc);
        let mut l = self.0.list.lock().expect("requests lock");
        if let Some(&open) = l.open.get(&key) {
            return Some(open);
        }
        if !l.rate.allows(a.root, std::time::Instant::now()) {
            drop(l);
            tracing::warn!(
                root = a.root.tgid,
                "requests: too many from this tree; not asked"
            );
            return None;
        }
        l.next += 1;
        r.id = l.next;
        l.open.insert(key, r.id);
        l.by_id.insert(r.id, r.clone());
        while l.by_id.len() > OPEN_MAX {
            let Some((&old, _)) = l.by_id.iter().find(|(_, r)| r.state == State::Open) else {
                break;
            };
            if let Some(r) = l.by_id.remove(&old) {
                l.open.remove(&r.open_key());
            }
        }
        // Not under the lock: the event's save takes it.
        drop(l);
        self.emit(&r, "ask", "opened", u32::MAX, "");
        Some(r.id)
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

    /// The exception keys of `r` for each of `who` (tree roots, or the process that asked).
    pub fn keys(r: &Request, scope: Scope, who: &[ProcKey]) -> Vec<ExceptionKey> {
        who.iter().map(|k| r.key(*k, scope)).collect()
    }

    /// The exception keys an approved request installed.
    pub fn installed(r: &Request) -> Vec<ExceptionKey> {
        match &r.state {
            State::Approved { roots, scope, .. } => Self::keys(r, *scope, roots),
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
        (scope, roots): (Scope, Vec<ProcKey>),
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
            scope,
            deadline_ns,
            roots,
        };
        let r = r.clone();
        l.open.remove(&r.open_key());
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
        l.open.remove(&r.open_key());
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

    /// What the event of its opening showed of the process that asked (its command line and
    /// ancestry, from the process tree): kept with request `id`, which the webhook then
    /// announces.
    fn describe(&self, id: u64, e: &crate::events::Event) {
        let mut l = self.0.list.lock().expect("requests lock");
        let Some(r) = l.by_id.get_mut(&id) else {
            return;
        };
        if let Some(p) = e.process.as_ref().filter(|_| r.argv.is_empty()) {
            r.argv.clone_from(&p.argv);
        }
        r.ancestry.clone_from(&e.ancestry);
        let r = r.clone();
        drop(l);
        self.save();
        self.notify(&r, "opened");
    }

    /// An event, the file and the webhook for a change of `r`; never called under the lock.
    /// An opening is announced once the pipeline has described the process that asked.
    fn emit(&self, r: &Request, action: &str, result: &str, uid: u32, reason: &str) {
        self.save();
        let opening = result == "opened";
        let Some(sink) = self.0.sink.get() else {
            self.notify(r, result);
            return;
        };
        if !opening {
            self.notify(r, result);
        }
        let root = r.root();
        // The opening is about the process that asked (the pipeline adds its command line
        // and ancestry); the answers are about the tree. No parent is given: this record can
        // overtake the kernel's exec record of that process, and with a parent the pipeline
        // would settle for a bare entry at once instead of looking again once it is read.
        let proc = if opening { r.process() } else { root };
        let header = guard_common::event::EventHeader {
            kind: EventKind::Request as u32,
            agent_id: r.agent_id,
            time_ns: crate::clock::boot_ns(),
            proc,
            root,
            ppid: 0,
            uid,
        };
        let mut d = Decoded::new(EventKind::Request, header);
        if opening {
            let (me, id) = (self.clone(), r.id);
            d.on_built = Some(OnBuilt::new(move |e| me.describe(id, e)));
        }
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
        if let Some(rt) = self.0.rt.get() {
            rt.spawn(async move {
                sink.submit(d).await;
            });
        }
    }
}

/// The command line of `proc` (secrets redacted), read now: the kernel's records carry none,
/// and a process refused a connection may exit within milliseconds. Empty when it is gone.
fn argv_of(proc: ProcKey) -> Vec<String> {
    use crate::proctree::ProcSource;
    crate::proctree::Procfs
        .read(proc.tgid)
        .filter(|s| s.key == proc)
        .map(|s| s.details.argv)
        .unwrap_or_default()
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

mod announce;
mod store;
#[cfg(test)]
mod tests;
