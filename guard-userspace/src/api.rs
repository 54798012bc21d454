//! The daemon's API: JSON lines over a unix stream socket.
//!
//! The socket is world-connectable so that any user can ask to be contained: the only
//! state-changing call open to everyone, `tag`, tags the *calling* process (identified by
//! `SO_PEERCRED`, never by an argument), only ever adds a tag, and never changes the root of a
//! tagged process. Tagging yourself only takes rights away, so anyone may ask for it; nothing
//! may untag. The rest (`apply`, `tree`) is for root, and never for a tagged process.

use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::tags::TaggedProc;

/// A request, one JSON object per line.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    Status,
    Ps,
    /// Tag the calling process as an agent root (`guard run`).
    Tag {
        agent: Option<String>,
    },
    /// Apply the daemon's policy file as it is now (`guard policy apply`): root and untagged
    /// only. This is how a change that the daemon did not apply on its own (it came from a
    /// tagged process, or a directory on its path was replaced) is put in force after review.
    /// `policy`, when given, must be the daemon's policy file.
    Apply {
        #[serde(default)]
        policy: Option<PathBuf>,
    },
    /// Freeze, thaw or kill a whole agent tree (`guard freeze|thaw|kill ROOT`): root and
    /// untagged only. `root` is the root's pid as `guard ps` shows it, or `PID:START_NS`
    /// when that pid was reused.
    Tree {
        action: TreeAction,
        root: String,
    },
    /// The requests of `ask` rules, open and approved (`guard requests`).
    Requests,
    /// Approve a request (`guard approve ID`): approvers only, never a tagged process.
    Approve {
        id: u64,
        /// How long the exception lasts, in seconds (default 15 minutes).
        #[serde(default)]
        for_secs: Option<u64>,
        #[serde(default)]
        scope: crate::requests::Scope,
        #[serde(default)]
        reason: Option<String>,
    },
    /// Deny a request (`guard deny ID`): approvers only, never a tagged process.
    Deny {
        id: u64,
        #[serde(default)]
        reason: Option<String>,
    },
    /// A runtime is creating container `id` (`guard oci-hook`, before its first process
    /// runs): classify it now, so that an agent's container is tagged from its first
    /// instruction. The reply names the agent, if it is one. Never from a tagged process.
    ContainerCreated {
        id: String,
        pid: u32,
    },
}

/// What [`Request::Tree`] does to the tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TreeAction {
    Freeze,
    Thaw,
    Kill,
}

impl TreeAction {
    pub fn name(self) -> &'static str {
        match self {
            Self::Freeze => "freeze",
            Self::Thaw => "thaw",
            Self::Kill => "kill",
        }
    }
}

/// The reply to [`Request::Tree`].
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TreeReply {
    pub root_pid: u32,
    pub root_start_ns: u64,
    pub agent: String,
    pub action: TreeAction,
    pub report: crate::respond::hold::TreeReport,
}

/// A reply: `{"ok": true, …}` or `{"ok": false, "error": "…"}`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Reply<T> {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default = "Option::default", skip_serializing_if = "Option::is_none")]
    pub data: Option<T>,
}

impl<T> Reply<T> {
    pub fn ok(data: T) -> Self {
        Self {
            ok: true,
            error: None,
            data: Some(data),
        }
    }
    pub fn err(error: impl Into<String>) -> Self {
        Self {
            ok: false,
            error: Some(error.into()),
            data: None,
        }
    }

    /// The data of a reply that is ok, else its error.
    pub fn into_result(self) -> Result<T, String> {
        match (self.ok, self.data) {
            (true, Some(data)) => Ok(data),
            _ => Err(self.error.unwrap_or_else(|| "no reason given".into())),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TagReply {
    /// Whether the daemon's trackers (and rules) are attached: `guard run` refuses otherwise.
    pub enforcing: bool,
    pub agent: String,
    pub root_pid: u32,
    pub root_start_ns: u64,
    /// The caller was already in an agent tree and keeps its original root.
    pub already_tagged: bool,
    /// Capability numbers the caller must drop from its bounding set before it execs.
    #[serde(default)]
    pub drop_capabilities: Vec<u8>,
    /// Paths the caller makes read-only or masks in its own mount namespace.
    #[serde(default)]
    pub protections: Option<crate::files::Protections>,
    /// The daemon's pid, which the caller's seccomp filter protects.
    #[serde(default)]
    pub daemon_pid: u32,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PsReply {
    pub processes: Vec<TaggedProc>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DaemonStatus {
    pub daemon_pid: u32,
    pub enforcing: bool,
    /// The tier that enforces: `bpf-lsm` or `fallback`.
    pub tier: String,
    /// Why the bpf-lsm tier does not enforce on a kernel that offers it (or was asked for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tier_error: Option<String>,
    /// The mount namespace paths are resolved in (the host's, from a container).
    #[serde(default)]
    pub view: crate::hostview::HostView,
    /// What enforces endpoint rules.
    #[serde(default)]
    pub network: NetworkStatus,
    pub policy: String,
    pub policy_generation: u64,
    /// Why the last policy change was rejected (the previous generation stays in force).
    #[serde(default)]
    pub policy_rejected: Option<String>,
    pub trackers: Vec<String>,
    pub tagged_processes: usize,
    /// The tag map's size and what happens to a child it cannot take.
    #[serde(default)]
    pub tag_map: Option<crate::tagmap::TagMapStatus>,
    /// How agents are recognised, and what recognition does not cover.
    #[serde(default)]
    pub recognition: Option<crate::tags::RecognitionStatus>,
    /// Built-in rules against deputies (executors, startup files, forwarders).
    #[serde(default)]
    pub deputies: Option<crate::net::deputy_status::DeputiesStatus>,
    /// What reports the files agents read to the secret scan: `lsm/file_open`,
    /// `fentry/security_file_open`, or `not covered: …`.
    #[serde(default)]
    pub secret_reads: String,
    /// What the secrets rule does to an agent tree that read a secret, and on what.
    #[serde(default)]
    pub secret_taint: String,
    /// Agent trees frozen by `guard freeze`.
    #[serde(default)]
    pub held_trees: usize,
    /// The webhook of `spec.notify` and how its deliveries went.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify: Option<crate::notify::NotifyStatus>,
    pub counters: Vec<(String, u64)>,
    pub probe: serde_json::Value,
    /// Path rules: what protects each access of each rule, and what it resolved to.
    #[serde(default)]
    pub path_rules: Vec<crate::files::PathRuleStatus>,
    /// What protects the daemon itself.
    #[serde(default)]
    pub self_protection: Option<SelfProtectionStatus>,
    /// What is meant to be enforced but is not loaded; `guard status` exits 2 when any.
    #[serde(default)]
    pub problems: Vec<String>,
    /// Pin directories of other guard instances whose programs are loaded on this host.
    #[serde(default)]
    pub other_instances: Vec<String>,
    /// Every attached program and what it has cost (`bpf_stats` says whether the kernel is
    /// counting: `sysctl kernel.bpf_stats_enabled=1`).
    #[serde(default)]
    pub programs: Vec<crate::loader::ProgramCost>,
    #[serde(default)]
    pub bpf_stats: bool,
    /// What each family of attached programs does on an internal error, and how often it
    /// has happened.
    #[serde(default)]
    pub internal_errors: Vec<InternalErrors>,
}

/// `guard status`: a family of hooks and its behaviour on internal errors.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct InternalErrors {
    pub hooks: String,
    /// `allow` (fail open) or `deny` (fail closed).
    pub on_error: String,
    pub effect: String,
    pub counter: String,
    pub count: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SelfProtectionStatus {
    /// Tracepoints of the self-protection programs that are attached.
    pub hooks: Vec<String>,
    pub error: Option<String>,
    /// What stops a tagged process from reaching guard's maps and links with `bpf()`.
    #[serde(default)]
    pub bpf: String,
    /// When a change of the policy file is applied.
    #[serde(default)]
    pub policy_changes: String,
    /// Pinned maps and links the daemon holds (and pins again if removed).
    pub pins_held: usize,
    /// Path rules guard adds for its own files (shown among the path rules).
    pub internal_rules: Vec<String>,
}

/// What enforces endpoint rules (`guard status`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NetworkStatus {
    /// `bpf-lsm` (LSM `socket_connect`/`socket_sendmsg`) or `fallback` (cgroup sock_addr).
    pub tier: String,
    /// Attached programs.
    pub programs: Vec<String>,
    /// `enforced`, or `not-loaded: <why>` for unix socket rules.
    pub unix: String,
    /// What the raw-socket rule (`spec.rawSockets`) covers on this tier, or `not-loaded: <why>`.
    #[serde(default)]
    pub raw_sockets: String,
    /// How `kill` is carried out.
    pub kill: String,
    /// Whether a destination NAT rewrote after the connect hook is checked again.
    #[serde(default)]
    pub after_nat: String,
}

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the guard daemon is not running (cannot connect to {path}: {source})")]
    Connect {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("talking to the guard daemon at {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("the guard daemon sent a reply that could not be read: {0}")]
    Decode(#[source] serde_json::Error),
    #[error("the guard daemon refused: {0}")]
    Refused(String),
}

/// Send one request and read one reply.
pub fn call<T: for<'de> Deserialize<'de>>(socket: &Path, req: &Request) -> Result<T, ClientError> {
    let path = socket.display().to_string();
    let mut stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: path.clone(),
        source,
    })?;
    let io = |source| ClientError::Io {
        path: path.clone(),
        source,
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .map_err(io)?;
    let mut line = serde_json::to_string(req).map_err(ClientError::Decode)?;
    line.push('\n');
    stream.write_all(line.as_bytes()).map_err(io)?;
    let mut reply = String::new();
    BufReader::new(&stream).read_line(&mut reply).map_err(io)?;
    let reply: Reply<T> = serde_json::from_str(&reply).map_err(ClientError::Decode)?;
    reply.into_result().map_err(ClientError::Refused)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let tag = Request::Tag {
            agent: Some("claude-code".into()),
        };
        assert_eq!(
            serde_json::to_string(&tag).unwrap(),
            r#"{"op":"tag","agent":"claude-code"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"ps"}"#).unwrap(),
            Request::Ps
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"untag","pid":1}"#).is_err());
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"tree","action":"freeze","root":"42"}"#)
                .unwrap(),
            Request::Tree {
                action: TreeAction::Freeze,
                root: "42".into()
            }
        );
    }
}
