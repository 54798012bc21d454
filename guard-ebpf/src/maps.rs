//! Every map and global of guard's kernel programs. Names and sizes come from guard-common.

use aya_ebpf::{
    macros::map,
    maps::{HashMap, PerCpuArray, RingBuf},
};
use guard_common::{
    Tag,
    agent::NameKey,
    event::Counter,
    maps::{AGENT_NAMES_MAX, COUNTERS_MAX, EVENTS_BYTES, TAGS_MAX},
    offsets::KernelOffsets,
};

/// tgid → tag of every process in an agent tree. Pinned: tags outlive the daemon.
///
/// A tgid-keyed hash rather than task storage: it works in every program type on every
/// kernel we target (task storage is not usable from cgroup sock_addr programs before 6.18's
/// relaxations), userspace can read, seed and list it by pid without pidfds, and a lookup is
/// one hash probe keyed by `bpf_get_current_pid_tgid`. Entries are removed when the thread
/// group dies.
#[map(name = "GUARD_TAGS")]
pub static TAGS: HashMap<u32, Tag> = HashMap::pinned(TAGS_MAX, 0);

#[map(name = "GUARD_AGENT_EXES")]
pub static AGENT_EXES: HashMap<NameKey, u32> = HashMap::pinned(AGENT_NAMES_MAX, 0);

#[map(name = "GUARD_AGENT_SCRIPTS")]
pub static AGENT_SCRIPTS: HashMap<NameKey, u32> = HashMap::pinned(AGENT_NAMES_MAX, 0);

#[map(name = "GUARD_INTERPRETERS")]
pub static INTERPRETERS: HashMap<NameKey, u32> = HashMap::pinned(64, 0);

#[map(name = "GUARD_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

#[map(name = "GUARD_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_MAX, 0);

/// Scratch space too large for the 512-byte stack.
#[map(name = "GUARD_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

pub const ARGS_LEN: usize = 256;

#[repr(C)]
pub struct Scratch {
    pub args: [u8; ARGS_LEN],
    pub key: NameKey,
    pub state: ScanState,
}

/// Loop state of the script scan, kept in memory rather than registers.
#[repr(C)]
pub struct ScanState {
    pub end: u64,
    pub comp: u64,
    pub first_dot: u64,
    pub last_dot: u64,
    pub found: u64,
    pub agent: u64,
}

/// Struct offsets of the running kernel, set by the loader from BTF.
#[unsafe(no_mangle)]
static GUARD_OFFSETS: KernelOffsets = KernelOffsets {
    task_pid: 0,
    task_tgid: 0,
    task_start_boottime: 0,
    task_mm: 0,
    task_real_parent: 0,
    mm_arg_start: 0,
    mm_arg_end: 0,
    task_exit_code: 0,
    valid: 0,
    _pad: 0,
};

/// tgid of the daemon; programs never act against it.
#[unsafe(no_mangle)]
static GUARD_DAEMON_TGID: u32 = 0;

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_OFFSETS) }
}

#[inline(always)]
#[expect(dead_code, reason = "used by the enforcement probes")]
pub fn daemon_tgid() -> u32 {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_DAEMON_TGID) }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}
