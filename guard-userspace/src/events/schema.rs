//! One line of the event log: stable field names, extended but never renamed.
//!
//! ```json
//! {"schema":1,"time":"2026-11-21T12:00:01.5Z","node":"build-7","kind":"tagged_exec",
//!  "agent":"claude-code","rule":"prod-db","action":"kill","result":"killed",
//!  "process":{"pid":4242,"start_ns":81230000000,"ppid":4200,"comm":"psql",
//!             "exe":"/usr/bin/psql","argv":["psql","-h","10.20.0.5"],"cwd":"/src",
//!             "uid":1000,"user":"dev","cgroup":"/user.slice/…","container_id":"…"},
//!  "root":{"pid":4000,"start_ns":80000000000,"exe":"/usr/bin/node","argv":["node","…/claude"]},
//!  "ancestry":[{"pid":4200,…},{"pid":4000,…,"agent_root":true},…,{"pid":1,…}],
//!  "ancestry_complete":true,
//!  "destination":{"address":"10.20.0.5","port":5432,"family":"ipv4","protocol":"tcp"}}
//! ```
//! `rule`, `action`, `result`, `destination` and `object` appear on enforcement events;
//! `exit_code` on exits; `lost` and `dropped_total` on `events_lost` lines.

use serde::{Deserialize, Serialize};

fn is_false(b: &bool) -> bool {
    !*b
}

/// One line of the event log.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Event {
    pub schema: u32,
    /// RFC 3339, UTC.
    pub time: String,
    /// Hostname of the node.
    pub node: String,
    pub kind: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub agent: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rule_id: Option<u32>,
    /// What the rule says to do: `deny`, `kill`, `kill-tree`, `audit`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub action: Option<String>,
    /// `enforce`, or `audit` for a rule in audit mode.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// What happened: e.g. `denied`, `killed`, `allowed`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<String>,
    /// The kernel hook that decided.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hook: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessInfo>,
    /// The agent root of the process's tree.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub root: Option<RootRef>,
    /// Parent first, up to init: the lineage at fork time (a reparented process keeps the
    /// parent that created it here; `process.ppid` is its parent when the event was made).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ancestry: Vec<Ancestor>,
    /// False when an ancestor was unknown (the chain stops there).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ancestry_complete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<Destination>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object: Option<Object>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_script: Option<String>,
    /// Why the root of an `agent_exec` was recognised.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recognised: Option<Recognition>,
    /// Exit code of a process that exited.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// The signal that ended a process.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    /// `events_lost`: events the kernel could not queue since the previous report.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lost: Option<u64>,
    /// `events_lost`: the kernel's cumulative count since the pins were created.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dropped_total: Option<u64>,
    /// `secret_read`: what the file held (detector, keyed fingerprint, line; never the
    /// secret).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<SecretFound>,
}

/// A secret in a file an agent read.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SecretFound {
    pub detector: String,
    pub fingerprint: String,
    pub line: u32,
}

/// Why a process became an agent root.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Recognition {
    /// `executable`, `script` or `env` (an environment marker).
    pub by: String,
    /// The script name, or the start of the environment variable, that matched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched: Option<String>,
}

/// The process an event is about.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProcessInfo {
    pub pid: u32,
    /// With `pid`, the process key: boot-time start, rounded to the 10 ms clock tick.
    pub start_ns: u64,
    pub ppid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    pub uid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container_id: Option<String>,
    /// The container as its runtime names it (where it says).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::containers::ContainerInfo>,
}

/// A process by key.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_ns: u64,
}

/// The agent root by key, with what is known of it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct RootRef {
    pub pid: u32,
    pub start_ns: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// The root is an agent's cgroup (`agents[].cgroups`; `pid` is 0): its id, the inode
    /// of its directory on the cgroup2 mount. `process.cgroup` has the path.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cgroup_id: Option<u64>,
}

/// One ancestor of the process.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Ancestor {
    pub pid: u32,
    pub start_ns: u64,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    /// This ancestor is the agent root of the tree.
    #[serde(skip_serializing_if = "is_false")]
    pub agent_root: bool,
    /// It had exited when the event was recorded.
    #[serde(skip_serializing_if = "is_false")]
    pub exited: bool,
}

/// The rule that decided, what it says to do, and what happened.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    pub rule: String,
    /// The rule's id in the kernel's tables.
    pub rule_id: Option<u32>,
    /// `deny`, `kill`, `kill-tree`, `audit`.
    pub action: String,
    /// `enforce` or `audit` (a rule in audit mode allows and records).
    pub mode: Option<String>,
    /// `allowed`, `denied`, `killed`, `kill-failed`, …
    pub result: String,
    /// The kernel hook that decided: `connect4`, `sendmsg6`, `file_open`, …
    pub hook: Option<String>,
}

/// Where a network operation was going. Decoders fill what they know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Destination {
    /// IP address (IPv4-mapped IPv6 as IPv4); absent for unix sockets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// `ipv4`, `ipv6`, `unix`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub family: Option<String>,
    /// `tcp`, `udp`, `other`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
    /// Unix socket path (`@name` for an abstract one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unix_path: Option<String>,
    /// The host name of a `hosts:` rule that resolved to this address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The untagged process this destination leads to, as guard found it on the host: a
    /// terminal server, sshd, a bus, or a forwarder to a protected endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deputy: Option<String>,
}

/// The object of a file (or other) operation. Decoders fill what they know.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Object {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dev: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ino: Option<u64>,
    /// `read`, `write`, `delete`, `rename`, `truncate`, …
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<String>,
}

impl Destination {
    /// A short human form: `10.0.0.5:5432/tcp`, `[2001:db8::1]:443`, `/run/docker.sock`.
    pub fn short(&self) -> String {
        let mut s = match (&self.address, &self.unix_path) {
            (Some(a), _) if a.contains(':') && self.port.is_some() => format!("[{a}]"),
            (Some(a), _) => a.clone(),
            (None, Some(p)) => p.clone(),
            (None, None) => String::new(),
        };
        if let Some(p) = self.port {
            s.push_str(&format!(":{p}"));
        }
        if let Some(proto) = &self.protocol
            && self.unix_path.is_none()
        {
            s.push_str(&format!("/{proto}"));
        }
        if let Some(h) = &self.host {
            s = format!("{h} ({s})");
        }
        if let Some(d) = &self.deputy {
            s = format!("{s} via {d}");
        }
        s
    }
}

impl Object {
    pub fn short(&self) -> String {
        match (&self.path, self.dev, self.ino) {
            (Some(p), _, _) => p.clone(),
            (None, Some(d), Some(i)) => format!("dev {d} ino {i}"),
            _ => String::new(),
        }
    }
}
