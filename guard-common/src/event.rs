//! Kernel → user events and counters.

use crate::{ProcKey, agent::NAME_LEN};

/// Event kinds: stable, gapped ids.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// A process became an agent root at exec.
    AgentExec = 1,
    /// A tagged process exec'd (a new program inside an agent tree).
    TaggedExec = 2,
    /// A tagged process exited (the whole thread group).
    TaggedExit = 3,
    /// A tagged process forked a new process, which inherited the tag.
    TaggedFork = 4,
    /// The tag map could not take a process that must be tagged ([`ProcessEvent`], `proc` that
    /// process): a tagged parent's new child (`ppid` the parent) or an agent recognised at
    /// exec (`script` names the agent's script, if any). It must not run untagged:
    /// `exit_code` is 1 when the kernel killed it, 0 when the daemon must.
    TagMapFull = 5,
    /// A process was tagged because it is in an agent's cgroup: it joined it, or forked or
    /// exec'd there untagged ([`ProcessEvent`], `reason` [`crate::agent::recognised::CGROUP`]).
    AgentCgroup = 6,
    /// An endpoint rule decided a connect or sendmsg of a tagged process
    /// ([`crate::net::NetEvent`]).
    NetConnect = 60,
    /// A tagged process modified (wrote, deleted, renamed) a protected file or directory
    /// ([`crate::file::FileEvent`]).
    FileChange = 40,
    /// A tagged process opened a protected volume's block device ([`crate::file::FileEvent`]).
    FileDevice = 41,
    /// An open of a protected object by a tagged process, decided in userspace (fanotify
    /// permission events); never in a ring buffer.
    FileOpen = 42,
    /// A tagged process went for the daemon: signalled or traced it
    /// ([`crate::selfprot::SelfEvent`]), or asked its API for something it may not have
    /// (decided in userspace).
    SelfProtect = 80,
    /// A tagged process reached into a process or terminal outside its tree, or used a
    /// capability of the ceiling ([`crate::deputy::DeputyEvent`]).
    Deputy = 90,
    /// A tagged process opened a file for reading that is not known clean
    /// ([`crate::secret::SecretRead`]): the daemon scans it for secrets.
    SecretRead = 100,
    /// An administrator froze, thawed or killed an agent tree (`guard freeze`), or the
    /// daemon stopped a held tree's process again; made in userspace, never in a ring buffer.
    Response = 110,
    /// A request for a human (`action: ask`) was opened, approved, denied or expired; made in
    /// userspace, never in a ring buffer.
    Request = 111,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::AgentExec),
            2 => Some(Self::TaggedExec),
            3 => Some(Self::TaggedExit),
            4 => Some(Self::TaggedFork),
            5 => Some(Self::TagMapFull),
            6 => Some(Self::AgentCgroup),
            60 => Some(Self::NetConnect),
            40 => Some(Self::FileChange),
            41 => Some(Self::FileDevice),
            42 => Some(Self::FileOpen),
            80 => Some(Self::SelfProtect),
            90 => Some(Self::Deputy),
            100 => Some(Self::SecretRead),
            110 => Some(Self::Response),
            111 => Some(Self::Request),
            _ => None,
        }
    }
}

/// Header common to every event.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct EventHeader {
    pub kind: u32,
    pub agent_id: u32,
    /// Boot-time clock, ns.
    pub time_ns: u64,
    /// The process the event is about.
    pub proc: ProcKey,
    /// Its agent root.
    pub root: ProcKey,
    /// Parent tgid at the time of the event.
    pub ppid: u32,
    pub uid: u32,
}
const _: () = assert!(core::mem::size_of::<EventHeader>() == 56);

/// `AgentExec`, `TaggedExec`, `TaggedExit`, `TaggedFork`, `TagMapFull` (for a fork, `proc`
/// is the child and `ppid` the parent; for a fork refused at `task_alloc`, [`FORK_REFUSED`]
/// in `exit_code`, `proc` is the parent, which has no child).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ProcessEvent {
    pub header: EventHeader,
    pub comm: [u8; 16],
    /// Script or module argument that matched (AgentExec of an interpreter), else empty.
    pub script: [u8; NAME_LEN],
    /// Exit code (TaggedExit).
    pub exit_code: i32,
    /// Why an agent exec's root was recognised ([`crate::agent::recognised`]); 0 otherwise.
    pub reason: u32,
}
const _: () = assert!(core::mem::size_of::<ProcessEvent>() == 112);

/// `exit_code` of a `TagMapFull` record: the child was killed in the kernel…
pub const CHILD_KILLED: i32 = 1;
/// …or the fork itself was refused (bpf-lsm `task_alloc`); 0: the daemon kills the child.
pub const FORK_REFUSED: i32 = 2;

/// Per-CPU counters in [`crate::maps::COUNTERS`].
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    /// An event could not be reserved in the ring buffer.
    EventsDropped = 0,
    /// A tag could not be stored (map full); a child it was for is killed
    /// ([`EventKind::TagMapFull`]).
    TagInsertFailed = 1,
    /// A program hit an internal error and did nothing.
    ProbeErrors = 2,
    /// Tags copied at fork.
    Forks = 3,
    /// Roots recognised at exec.
    AgentExecs = 4,
    /// Connections and datagrams of tagged processes failed with EPERM by an endpoint rule.
    NetDenied = 5,
    /// Connections and datagrams of tagged processes allowed and recorded (audit).
    NetAudited = 6,
    /// Kills scheduled by a kill or kill-tree endpoint rule.
    NetKillsScheduled = 7,
    /// SIGKILLs sent by a network hook or a kill program (before the system call returns).
    NetKillsSent = 8,
    /// A kill could not be scheduled or sent (the operation was still denied).
    NetKillFailed = 9,
    /// A network hook hit an internal error and let the operation through (fail open).
    NetFailOpen = 10,
    /// Processes the tag map could not take (a tagged parent's child, an agent at exec),
    /// killed in the kernel before they ran on.
    ChildrenKilled = 11,
    /// Execs whose environment was longer than the marker scan reads
    /// ([`crate::agent::ENV_SCAN_MAX_VARS`], [`crate::agent::ENV_SCAN_MAX_BYTES`]): a
    /// marker past that point was not seen.
    EnvScanTruncated = 12,
}

pub const COUNTER_NAMES: [&str; 13] = [
    "events_dropped",
    "tag_insert_failed",
    "probe_errors",
    "forks_tagged",
    "agent_execs",
    "net_denied",
    "net_audited",
    "net_kills_scheduled",
    "net_kills_sent",
    "net_kill_failed",
    "net_fail_open",
    "untaggable_killed",
    "env_scan_truncated",
];
const _: () = assert!(COUNTER_NAMES.len() == Counter::EnvScanTruncated as usize + 1);
const _: () = assert!(COUNTER_NAMES.len() <= crate::maps::COUNTERS_MAX as usize);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers only.
    unsafe impl aya::Pod for super::EventHeader {}
    unsafe impl aya::Pod for super::ProcessEvent {}
}
