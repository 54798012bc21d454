//! Types shared by guard's kernel programs and its userspace.
//!
//! This crate is the only definition of every layout that crosses the kernel/user boundary.
//! Everything is `#[repr(C)]` with explicit padding, and each size is asserted at compile time.
#![no_std]

pub mod agent;
pub mod decision;
pub mod deputy;
pub mod event;
pub mod file;
pub mod maps;
pub mod net;
pub mod offsets;
pub mod secret;
pub mod selfprot;
pub mod taint;

/// Identity of a process: pids are reused, `(tgid, start)` is not.
///
/// `start_ns` is the process start time on the boot-time clock, rounded down to the
/// 10 ms clock tick that `/proc/PID/stat` reports, so that the kernel and `/proc`
/// agree on the same key.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProcKey {
    pub tgid: u32,
    pub _pad: u32,
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<ProcKey>() == 16);

/// Nanoseconds in one `/proc` clock tick (USER_HZ = 100 on every Linux ABI).
pub const NS_PER_TICK: u64 = 10_000_000;

/// The tag-map key no process can have (tgids stay below `kernel.pid_max`, at most 2²²): the
/// bpf-lsm `task_alloc` program inserts it for an instant to learn whether the map can take
/// one more entry. Whoever lists the map skips it.
pub const PROBE_TGID: u32 = u32::MAX;

impl ProcKey {
    pub const fn new(tgid: u32, start_ns: u64) -> Self {
        Self {
            tgid,
            _pad: 0,
            start_ns: start_ns - start_ns % NS_PER_TICK,
        }
    }

    /// The root of a tree that is an agent's cgroup: tgid 0 and the cgroup's id (not a time,
    /// so not rounded).
    pub const fn cgroup(id: u64) -> Self {
        Self {
            tgid: 0,
            _pad: 0,
            start_ns: id,
        }
    }
}

/// How a process came to be tagged.
pub mod tag_flags {
    /// The root was started by `guard run`.
    pub const FROM_RUN: u32 = 1 << 0;
    /// The root was recognised at exec by the kernel.
    pub const FROM_EXEC: u32 = 1 << 1;
    /// The process was found from `/proc` when the daemon started.
    pub const FROM_SEED: u32 = 1 << 2;
    /// The process inherited its tag at fork.
    pub const INHERITED: u32 = 1 << 3;
    /// With [`FROM_EXEC`] or [`FROM_SEED`]: the root was recognised by an environment
    /// marker (else by its executable or script).
    pub const BY_ENV: u32 = 1 << 4;
    /// With [`FROM_EXEC`] or [`FROM_SEED`]: the root was recognised by the script an
    /// interpreter runs.
    pub const BY_SCRIPT: u32 = 1 << 5;
    /// With [`FROM_EXEC`] or [`FROM_SEED`]: the root was recognised by its executable's file
    /// (`agents[].paths`).
    pub const BY_PATH: u32 = 1 << 6;
    /// The process is in an agent's cgroup (`agents[].cgroups`); its root is the cgroup.
    pub const BY_CGROUP: u32 = 1 << 7;
    /// `guard run` has tagged itself and is still setting up the tree (its mount namespace,
    /// dropping capabilities) before it execs the command: the capability ceiling leaves it
    /// alone. Cleared when it execs; never inherited.
    pub const SETUP: u32 = 1 << 8;
    /// The root runs a file an agent wrote (deferred execution); `agent_id` is that agent's.
    pub const DEFERRED: u32 = 1 << 9;
}

/// The tag of a process that belongs to an agent tree. Keyed by tgid in [`maps::TAGS`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tag {
    /// The agent root this process descends from.
    pub root: ProcKey,
    /// Index of the agent in the policy's `agents:` list (stable across reloads by name).
    pub agent_id: u32,
    /// [`tag_flags`].
    pub flags: u32,
    /// Start time of the tagged process itself (same clock as [`ProcKey::start_ns`]), so a
    /// reader can tell a live entry from one whose pid was reused.
    pub start_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Tag>() == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are repr(C) with explicit padding and no invalid bit patterns.
    unsafe impl aya::Pod for super::ProcKey {}
    unsafe impl aya::Pod for super::Tag {}
    unsafe impl aya::Pod for super::agent::NameKey {}
    unsafe impl aya::Pod for super::agent::EnvKey {}
    unsafe impl aya::Pod for super::agent::Recognition {}
    unsafe impl aya::Pod for super::agent::AgentPath {}
    unsafe impl aya::Pod for super::agent::ScriptPath {}
    unsafe impl aya::Pod for super::offsets::KernelOffsets {}
    unsafe impl aya::Pod for super::offsets::UnixOffsets {}
    unsafe impl aya::Pod for super::offsets::FileOffsets {}
    unsafe impl aya::Pod for super::offsets::LsmOffsets {}
    unsafe impl aya::Pod for super::file::FileKey {}
    unsafe impl aya::Pod for super::file::DevKey {}
    unsafe impl aya::Pod for super::file::FileRule {}
    unsafe impl aya::Pod for super::file::FileIdentity {}
    unsafe impl aya::Pod for super::file::FileEvent {}
}
