//! Kernel events → the durable JSON-lines log.

mod log;

pub use log::EventLog;

use guard_common::{
    agent::trim_nul,
    event::{EventKind, ProcessEvent},
};
use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use crate::tags::{AgentNames, ProcInfo};

/// Version of the event schema; bumped on incompatible changes.
pub const SCHEMA: u32 = 1;

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

    pub fn rfc3339(&self, boot_ns: u64) -> String {
        let wall = boot_ns as i128 + self.realtime_minus_boottime_ns;
        OffsetDateTime::from_unix_timestamp_nanos(wall)
            .ok()
            .and_then(|t| t.format(&Rfc3339).ok())
            .unwrap_or_default()
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub start_ns: u64,
}

/// One line of the event log.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    pub schema: u32,
    pub time: String,
    pub kind: &'static str,
    pub agent: String,
    pub process: ProcessRef,
    pub ppid: u32,
    pub uid: u32,
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub argv: Vec<String>,
    pub root: ProcessRef,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub matched_script: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

fn kind_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::AgentExec => "agent_exec",
        EventKind::TaggedExec => "tagged_exec",
        EventKind::TaggedExit => "tagged_exit",
        EventKind::TaggedFork => "tagged_fork",
    }
}

/// Decode a raw ring-buffer record.
pub fn decode(raw: &[u8], clock: &Clock, names: &AgentNames) -> Option<Event> {
    if raw.len() < size_of::<ProcessEvent>() {
        return None;
    }
    // SAFETY: length checked; ProcessEvent is plain old data; read_unaligned copes with any
    // alignment of the ring-buffer record.
    let ev: ProcessEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    let kind = EventKind::from_u32(ev.header.kind)?;
    let h = ev.header;
    let (exe, argv) = match kind {
        EventKind::AgentExec | EventKind::TaggedExec | EventKind::TaggedFork => {
            match ProcInfo::read(h.proc.tgid as i32) {
                Ok(p) if p.key().start_ns == h.proc.start_ns => (p.exe, p.argv),
                _ => (None, Vec::new()),
            }
        }
        EventKind::TaggedExit => (None, Vec::new()),
    };
    let script = trim_nul(&ev.script);
    Some(Event {
        schema: SCHEMA,
        time: clock.rfc3339(h.time_ns),
        kind: kind_name(kind),
        agent: names.name(h.agent_id),
        process: ProcessRef {
            pid: h.proc.tgid,
            start_ns: h.proc.start_ns,
        },
        ppid: h.ppid,
        uid: h.uid,
        comm: String::from_utf8_lossy(trim_nul(&ev.comm)).into_owned(),
        exe,
        argv,
        root: ProcessRef {
            pid: h.root.tgid,
            start_ns: h.root.start_ns,
        },
        matched_script: (!script.is_empty()).then(|| String::from_utf8_lossy(script).into_owned()),
        exit_code: (kind == EventKind::TaggedExit).then_some(ev.exit_code),
    })
}
