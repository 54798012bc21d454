//! Kernel events → enriched, durable JSON lines → `guard events`.
//!
//! The pipeline has three stages, each in its own module:
//! - **decode** (this module and one decoder per concern, e.g. [`process`]): a raw ring-buffer
//!   record becomes a [`Decoded`] — typed, no I/O. Adding an event kind is one decoder function
//!   and one arm in [`decode`].
//! - **enrich and write** ([`pipeline`]): the process tree ([`crate::proctree`]) adds the
//!   process, its ancestry to init, cgroup and container; the result is an [`Event`], appended
//!   to the rotating [`EventLog`].
//! - **review** ([`query`], [`table`]): `guard events` reads, follows, filters and summarises
//!   the log.

pub mod deputy;
mod log;
pub mod net;
pub mod pipeline;
pub mod process;
pub mod query;
pub mod ring;
mod schema;
pub mod secret;
pub mod selfprot;
pub mod table;

pub use log::{EventLog, LogConfig, log_files, parse_size};
pub use schema::{
    Ancestor, Decision, Destination, Event, Object, ProcessInfo, ProcessRef, RootRef, SecretFound,
};

use guard_common::event::{EventHeader, EventKind};
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::agents::AgentNames;

/// Version of the event schema; bumped on incompatible changes.
/// 2: fork and exit of tagged processes are folded into the process tree (written only with
/// `guard daemon --lifecycle-events`).
pub const SCHEMA: u32 = 2;

/// Which lines a kind belongs to in `guard events`: decisions (the default view), the
/// commands agents ran (`--commands`), or process lifecycle (`--all`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Decisions,
    Commands,
    Lifecycle,
}

/// The view a kind name belongs to.
pub fn view_of(kind: &str) -> View {
    match kind {
        "agent_exec" | "tagged_exec" => View::Commands,
        "tagged_fork" | "tagged_exit" => View::Lifecycle,
        _ => View::Decisions,
    }
}

/// `kind` of the line written when the kernel reports events it could not queue.
pub const KIND_EVENTS_LOST: &str = "events_lost";

/// The stable name of a kernel event kind, as written in the log and taken by `--kind`.
pub const fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::AgentExec => "agent_exec",
        EventKind::TaggedExec => "tagged_exec",
        EventKind::TaggedExit => "tagged_exit",
        EventKind::TaggedFork => "tagged_fork",
        EventKind::TagMapFull => "tag_map_full",
        EventKind::AgentCgroup => "agent_cgroup",
        EventKind::NetConnect => "net_connect",
        EventKind::FileChange => "file_change",
        EventKind::FileDevice => "file_device",
        EventKind::FileOpen => "file_open",
        EventKind::SelfProtect => "self_protect",
        EventKind::Response => "response",
        EventKind::Request => "request",
        EventKind::Deputy => "deputy",
        EventKind::SecretRead => "secret_read",
    }
}

/// Every kind name `guard events --kind` accepts.
pub fn kind_names() -> Vec<&'static str> {
    let mut names: Vec<&'static str> = (0..1024)
        .filter_map(EventKind::from_u32)
        .map(kind_name)
        .collect();
    names.push(KIND_EVENTS_LOST);
    names
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {got} bytes is shorter than the {want} bytes of its layout")]
    Short { got: usize, want: usize },
    #[error("unknown event kind {0}")]
    UnknownKind(u32),
    #[error("event kind {0:?} is not expected on this ring buffer")]
    OtherRing(EventKind),
}

/// Acts on a raw record as soon as it is read, before it is enriched and logged (e.g. telling
/// a denied process why, killing a tree). Called on the reader task: must not block.
pub trait Responder: Send + Sync + 'static {
    fn respond(&self, raw: &[u8]);
}

/// What decoders need besides the raw record.
pub struct DecodeCtx<'a> {
    pub clock: &'a Clock,
    pub agents: &'a AgentNames,
    /// Names of network rules and hosts, which the kernel records by id.
    pub net: &'a dyn net::NetLabels,
}

/// How an event changes the process tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifecycle {
    /// `header.proc` was forked by `header.ppid`.
    Fork,
    /// `header.proc` exec'd a new program (`agent_root`: and became an agent root).
    Exec { agent_root: bool },
    /// `header.proc` exited.
    Exit,
}

/// A decoded kernel record, before enrichment. Decoders fill what their layout carries and
/// leave the rest `None`; the pipeline adds everything that comes from the process tree.
#[derive(Clone, Debug)]
pub struct Decoded {
    pub kind: EventKind,
    pub header: EventHeader,
    /// `comm` of the current task when the event was emitted.
    pub comm: Option<String>,
    /// Process-tree effect (fork/exec/exit kinds only).
    pub lifecycle: Option<Lifecycle>,
    /// Rule, action and result (enforcement kinds only).
    pub decision: Option<Decision>,
    /// Network destination (network kinds).
    pub destination: Option<Destination>,
    /// File or other object (file kinds).
    pub object: Option<Object>,
    pub matched_script: Option<String>,
    /// Why an agent exec's root was recognised.
    pub recognised: Option<schema::Recognition>,
    pub exit_code: Option<i32>,
    /// The signal that ended the process.
    pub signal: Option<i32>,
    /// The pipeline already waited once for the process tree to learn this process.
    pub waited: bool,
    /// The kernel's report of a file read (`secret_read`), for the scan.
    pub secret_read: Option<guard_common::secret::SecretRead>,
    /// What the scan found: detector, fingerprint, line (never the secret).
    pub secrets: Vec<SecretFound>,
    /// Told the event this record became, once enriched.
    pub on_built: Option<OnBuilt>,
}

/// Called with the event a submitted record became: how a subsystem learns what the process
/// tree knew of the record's process (its command line, its ancestry).
#[derive(Clone)]
pub struct OnBuilt(std::sync::Arc<dyn Fn(&Event) + Send + Sync>);

impl OnBuilt {
    pub fn new(f: impl Fn(&Event) + Send + Sync + 'static) -> Self {
        Self(std::sync::Arc::new(f))
    }
}

impl std::fmt::Debug for OnBuilt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("OnBuilt")
    }
}

impl Decoded {
    /// A record with only the header filled in; decoders add their fields.
    pub fn new(kind: EventKind, header: EventHeader) -> Self {
        Self {
            kind,
            header,
            comm: None,
            lifecycle: None,
            decision: None,
            destination: None,
            object: None,
            matched_script: None,
            recognised: None,
            exit_code: None,
            signal: None,
            waited: false,
            secret_read: None,
            secrets: Vec::new(),
            on_built: None,
        }
    }
}

/// Decode one ring-buffer record. One arm per concern: adding a kind is a decoder function
/// in its module and an arm here.
pub fn decode(raw: &[u8], ctx: &DecodeCtx<'_>) -> Result<Decoded, DecodeError> {
    let header: EventHeader = read_pod(raw)?;
    let kind = EventKind::from_u32(header.kind).ok_or(DecodeError::UnknownKind(header.kind))?;
    match kind {
        EventKind::AgentExec
        | EventKind::TaggedExec
        | EventKind::TaggedExit
        | EventKind::TaggedFork
        | EventKind::TagMapFull
        | EventKind::AgentCgroup => process::decode(kind, raw, ctx),
        EventKind::NetConnect => net::decode_record(raw, ctx),
        EventKind::SelfProtect => selfprot::decode(raw, ctx),
        EventKind::Deputy => deputy::decode(raw, ctx),
        EventKind::SecretRead => secret::decode(raw),
        // Read by `files` from its own ring buffer (GUARD_FILE_EVENTS).
        // (FileOpen is decided in userspace and submitted to the pipeline directly.)
        EventKind::FileChange | EventKind::FileDevice | EventKind::FileOpen => {
            Err(DecodeError::OtherRing(kind))
        }
        // Made by the daemon itself (`daemon/incident.rs`).
        EventKind::Response | EventKind::Request => Err(DecodeError::UnknownKind(header.kind)),
    }
}

/// Copy a `T` out of the front of a record, checking its length.
pub fn read_pod<T: aya::Pod>(raw: &[u8]) -> Result<T, DecodeError> {
    let want = size_of::<T>();
    if raw.len() < want {
        return Err(DecodeError::Short {
            got: raw.len(),
            want,
        });
    }
    // SAFETY: the length is checked above; `T: Pod` is plain old data valid for any bytes;
    // read_unaligned copes with any alignment of the ring-buffer record.
    Ok(unsafe { std::ptr::read_unaligned(raw.as_ptr().cast::<T>()) })
}

/// Text of a NUL-padded kernel string.
pub fn c_str(bytes: &[u8]) -> String {
    String::from_utf8_lossy(guard_common::agent::trim_nul(bytes)).into_owned()
}

/// Converts the kernel's boot-time clock to wall-clock time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    realtime_minus_boottime_ns: i128,
}

impl Clock {
    pub fn now() -> Self {
        let ns = |id| {
            nix::time::clock_gettime(id)
                .map(|t| t.tv_sec() as i128 * 1_000_000_000 + t.tv_nsec() as i128)
                .unwrap_or(0)
        };
        let real = ns(nix::time::ClockId::CLOCK_REALTIME);
        let boot = ns(nix::time::ClockId::CLOCK_BOOTTIME);
        Self {
            realtime_minus_boottime_ns: real - boot,
        }
    }

    /// A clock with a fixed offset (tests).
    pub const fn with_offset(realtime_minus_boottime_ns: i128) -> Self {
        Self {
            realtime_minus_boottime_ns,
        }
    }

    /// RFC 3339 UTC time of a boot-time clock reading.
    pub fn rfc3339(&self, boot_ns: u64) -> String {
        let wall = boot_ns as i128 + self.realtime_minus_boottime_ns;
        OffsetDateTime::from_unix_timestamp_nanos(wall)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

/// RFC 3339 UTC time of now.
pub fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&Rfc3339)
        .unwrap_or_default()
}
