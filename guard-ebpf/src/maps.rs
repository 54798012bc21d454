//! Every map and global of guard's kernel programs. Names and sizes come from guard-common.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::{btf_map, map},
    maps::{Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
};
use guard_common::{
    Tag,
    agent::{AgentPath, ENV_KEY_LEN, EnvKey, NameKey, Recognition, ScriptPath},
    event::Counter,
    file::FileKey,
    maps::{
        AGENT_NAMES_MAX, COUNTERS_MAX, EVENTS_BYTES, NET_PENDING_KILLS_MAX, NET_PREFIXES_MAX,
        NET_UNIX_MAX, TAGS_MAX,
    },
    net::{Ip4Data, Ip6Data, NetRule, PendingKill, RULE_SLOTS_TOTAL, RuleSet, UnixKey},
    offsets::{KernelOffsets, UnixOffsets},
};

/// tgid → tag of every process in an agent tree. Pinned: tags outlive the daemon.
///
/// A tgid-keyed hash rather than task storage: it works in every program type on every
/// kernel we target (task storage is not usable from cgroup sock_addr programs before 6.18's
/// relaxations), userspace can read, seed and list it by pid without pidfds, and a lookup is
/// one hash probe keyed by `bpf_get_current_pid_tgid`. Entries are removed when the thread
/// group dies. Entries are allocated as they are used: the loader sizes the map to
/// `kernel.pid_max`, which a tgid-keyed map then cannot exceed.
#[map(name = "GUARD_TAGS")]
pub static TAGS: HashMap<u32, Tag> = HashMap::pinned(TAGS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "GUARD_AGENT_EXES")]
pub static AGENT_EXES: HashMap<NameKey, u32> = HashMap::pinned(AGENT_NAMES_MAX, 0);

#[map(name = "GUARD_AGENT_SCRIPTS")]
pub static AGENT_SCRIPTS: HashMap<NameKey, u32> = HashMap::pinned(AGENT_NAMES_MAX, 0);

#[map(name = "GUARD_INTERPRETERS")]
pub static INTERPRETERS: HashMap<NameKey, u32> = HashMap::pinned(64, 0);

/// Environment markers (`NAME=VALUE`, or a `NAME=VALUE` prefix) → agent id.
#[map(name = "GUARD_AGENT_ENV")]
pub static AGENT_ENV: LpmTrie<EnvKey, u32> = LpmTrie::pinned(AGENT_NAMES_MAX, BPF_F_NO_PREALLOC);

/// Files and directories agents are installed at → agent and depth.
#[map(name = "GUARD_AGENT_PATHS")]
pub static AGENT_PATHS: HashMap<FileKey, AgentPath> = HashMap::pinned(AGENT_NAMES_MAX, 0);

/// Absolute script paths (a directory's with its '/', a file's with its NUL) → agent id.
#[map(name = "GUARD_AGENT_SCRIPT_PATHS")]
pub static AGENT_SCRIPT_PATHS: LpmTrie<ScriptPath, u32> = LpmTrie::pinned(AGENT_NAMES_MAX, 0);

/// Agents' cgroups (ids on the default hierarchy) → agent id.
#[map(name = "GUARD_AGENT_CGROUPS")]
pub static AGENT_CGROUPS: HashMap<u64, u32> = HashMap::pinned(AGENT_NAMES_MAX, 0);

/// Settings of recognition at exec: one value.
#[map(name = "GUARD_RECOGNITION")]
pub static RECOGNITION: Array<Recognition> = Array::pinned(1, 0);

#[map(name = "GUARD_EVENTS")]
pub static EVENTS: RingBuf = RingBuf::pinned(EVENTS_BYTES, 0);

/// One value: nonzero while records submitted without a wake-up wait in [`EVENTS`].
#[map(name = "GUARD_EVENTS_UNWOKEN")]
pub static EVENTS_UNWOKEN: Array<u32> = Array::with_max_entries(1, 0);

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;

/// `bpf_ringbuf_submit` flags for an [`EVENTS`] record the reader should see at once (a
/// decision, an exec, a read to scan). The ring wakes its reader only for a record at the
/// reader's position; after a fork or exit record submitted without a wake-up
/// ([`submitted_unwoken`]), no later record is at that position, so the first one forces
/// the wake-up: one per such stretch, not one per record.
#[inline(always)]
pub fn wake_now() -> u64 {
    match EVENTS_UNWOKEN.get_ptr_mut(0) {
        // SAFETY: map value pointer from a successful lookup; a racing writer at worst costs
        // one wake-up more, or one less (the reader's timer drains then).
        Some(p) if unsafe { *p } != 0 => {
            unsafe { *p = 0 };
            BPF_RB_FORCE_WAKEUP
        }
        _ => 0,
    }
}

/// The flags for a record that need not wake the reader (it drains on a timer too), noted
/// for [`wake_now`].
#[inline(always)]
pub fn submitted_unwoken() -> u64 {
    if let Some(p) = EVENTS_UNWOKEN.get_ptr_mut(0) {
        // SAFETY: map value pointer from a successful lookup.
        unsafe { *p = 1 };
    }
    BPF_RB_NO_WAKEUP
}

#[map(name = "GUARD_COUNTERS")]
pub static COUNTERS: PerCpuArray<u64> = PerCpuArray::pinned(COUNTERS_MAX, 0);

/// Scratch space too large for the 512-byte stack.
/// The pinned maps' layout version (written and read by userspace only).
#[map(name = "GUARD_LAYOUT")]
pub static LAYOUT: Array<u32> = Array::pinned(1, 0);

#[map(name = "GUARD_SCRATCH")]
pub static SCRATCH: PerCpuArray<Scratch> = PerCpuArray::with_max_entries(1, 0);

pub const ARGS_LEN: usize = 256;

#[repr(C)]
pub struct Scratch {
    pub args: [u8; ARGS_LEN],
    pub key: NameKey,
    pub state: ScanState,
    /// The variable under test in the environment scan, as an [`AGENT_ENV`] key.
    pub env: aya_ebpf::maps::lpm_trie::Key<EnvKey>,
    /// An interpreter's script argument, as an [`AGENT_SCRIPT_PATHS`] key.
    pub script_path: aya_ebpf::maps::lpm_trie::Key<ScriptPath>,
    pub env_state: EnvState,
}

/// Loop state of the environment scan.
#[repr(C)]
pub struct EnvState {
    /// The next byte to read.
    pub ptr: u64,
    /// Variables fully passed.
    pub vars: u64,
    /// 1 while reading on through a variable longer than [`ENV_KEY_LEN`].
    pub rest: u64,
    /// The matched agent id + 1 (0: none yet).
    pub agent: u64,
    /// Where the scan stops: the end of the block or of the bytes it may read.
    pub limit: u64,
    /// The agent id + 1 an executable's file or directory matched (0: none).
    pub path_agent: u64,
    /// The agent id + 1 and the id of the cgroup a process is in or below (0: none).
    pub cgroup_agent: u64,
    pub cgroup_id: u64,
}

const _: () = assert!(ENV_KEY_LEN <= ARGS_LEN);

/// Loop state of the script scan, kept in memory rather than registers.
#[repr(C)]
pub struct ScanState {
    pub end: u64,
    pub comp: u64,
    pub first_dot: u64,
    pub last_dot: u64,
    pub found: u64,
    pub agent: u64,
    /// Bytes of the component being looked up.
    pub size: u64,
    /// The script argument: its length and user address.
    pub len: u64,
    pub base: u64,
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
    task_signal: 0,
    signal_live: 0,
    valid: 0,
    mm_env_start: 0,
    bprm_file: 0,
    file_dentry: 0,
    task_cgroups: 0,
    css_set_dfl_cgrp: 0,
    cgroup_kn: 0,
    kernfs_node_id: 0,
    cgroup_parent: 0,
    task_comm: 0,
};

/// 1 where the cgroup socket programs may call `bpf_send_signal` themselves. A frozen
/// read-only global: the verifier sees the constant and never checks the helper call on a
/// kernel that would refuse it.
#[unsafe(no_mangle)]
static GUARD_KILL_IN_PLACE: u32 = 0;

/// 1 where the loader turned the [`guard_common::maps::KFUNC_SIGNAL_TASK`] calls into
/// `bpf_send_signal_task` kfunc calls; frozen like [`GUARD_KILL_IN_PLACE`], so that elsewhere
/// the placeholder call is dead code.
#[unsafe(no_mangle)]
static GUARD_SIGNAL_TASK: u32 = 0;

#[inline(always)]
pub fn signal_task() -> bool {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_SIGNAL_TASK) != 0 }
}

#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_OFFSETS) }
}

#[inline(always)]
pub fn kill_in_place() -> bool {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_KILL_IN_PLACE) != 0 }
}

#[inline(always)]
pub fn count(counter: Counter) {
    if let Some(slot) = COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

// --- Network enforcement (probes/net.rs). Pinned: rules keep applying while no daemon runs.

#[map(name = "GUARD_NET4")]
pub static NET4: LpmTrie<Ip4Data, RuleSet> = LpmTrie::pinned(NET_PREFIXES_MAX, 0);

#[map(name = "GUARD_NET6")]
pub static NET6: LpmTrie<Ip6Data, RuleSet> = LpmTrie::pinned(NET_PREFIXES_MAX, 0);

#[map(name = "GUARD_NET_UNIX")]
pub static NET_UNIX: HashMap<UnixKey, RuleSet> = HashMap::pinned(NET_UNIX_MAX, 0);

#[map(name = "GUARD_NET_RULES")]
pub static NET_RULES: Array<NetRule> = Array::pinned(RULE_SLOTS_TOTAL, 0);

/// The raw-socket rule (`guard_common::net::RAW_RULE_ID`); generation 0: none.
#[map(name = "GUARD_NET_RAW")]
pub static NET_RAW: Array<NetRule> = Array::pinned(1, 0);

#[map(name = "GUARD_NET_PENDING_KILLS")]
pub static PENDING_KILLS: HashMap<u32, PendingKill> = HashMap::pinned(NET_PENDING_KILLS_MAX, 0);

#[map(name = "GUARD_NET_PENDING_COUNT")]
pub static PENDING_COUNT: Array<u64> = Array::pinned(1, 0);

/// Offsets for the unix programs, set by the loader from BTF.
#[unsafe(no_mangle)]
static GUARD_UNIX_OFFSETS: UnixOffsets = UnixOffsets {
    ctx_uaddr: 0,
    ctx_uaddrlen: 0,
    sun_path: 0,
    valid: 0,
};

#[inline(always)]
pub fn unix_offsets() -> UnixOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_UNIX_OFFSETS) }
}

// --- File protection (probes/file.rs). Pinned: kill-on-detect and the device rule keep
// applying while no daemon runs.

#[map(name = "GUARD_FILE_OBJECTS")]
pub static FILE_OBJECTS: aya_ebpf::maps::HashMap<
    guard_common::file::FileKey,
    guard_common::file::FileRule,
> = aya_ebpf::maps::HashMap::pinned(guard_common::maps::FILE_OBJECTS_MAX, 0);

/// Read and written by the daemon only (see `guard_common::maps::FILE_IDENTITIES`).
#[map(name = "GUARD_FILE_IDS")]
pub static FILE_IDENTITIES: aya_ebpf::maps::HashMap<
    guard_common::file::FileKey,
    guard_common::file::FileIdentity,
> = aya_ebpf::maps::HashMap::pinned(guard_common::maps::FILE_OBJECTS_MAX, BPF_F_NO_PREALLOC);

#[map(name = "GUARD_FILE_DEVICES")]
pub static FILE_DEVICES: aya_ebpf::maps::HashMap<
    guard_common::file::DevKey,
    guard_common::file::FileRule,
> = aya_ebpf::maps::HashMap::pinned(guard_common::maps::FILE_DEVICES_MAX, 0);

#[map(name = "GUARD_FILE_EVENTS")]
pub static FILE_EVENTS: RingBuf = RingBuf::pinned(guard_common::maps::FILE_EVENTS_BYTES, 0);

#[map(name = "GUARD_FILE_COUNTERS")]
pub static FILE_COUNTERS: PerCpuArray<u64> =
    PerCpuArray::pinned(guard_common::maps::FILE_COUNTERS_MAX, 0);

#[map(name = "GUARD_FILE_KILLED")]
pub static FILE_KILLED: aya_ebpf::maps::LruHashMap<u32, u64> =
    aya_ebpf::maps::LruHashMap::with_max_entries(guard_common::maps::FILE_KILLED_MAX, 0);

/// Scratch for the ancestor walk's match (see `probes::file::ancestors`).
#[map(name = "GUARD_FILE_HIT")]
pub static FILE_HIT: PerCpuArray<crate::probes::file::Hit> = PerCpuArray::with_max_entries(1, 0);

/// Offsets for the file programs, set by the loader from BTF.
#[unsafe(no_mangle)]
static GUARD_FILE_OFFSETS: guard_common::offsets::FileOffsets =
    guard_common::offsets::FileOffsets {
        inode_ino: 0,
        inode_sb: 0,
        inode_dentry: 0,
        sb_dev: 0,
        dentry_parent: 0,
        dentry_inode: 0,
        dentry_name: 0,
        dentry_alias: 0,
        task_flags: 0,
        regs_syscall: 0,
        regs_arg0: 0,
        regs_arg1: 0,
        valid: 0,
        inode_mode: 0,
        inode_generation: 0,
        sb_magic: 0,
        inode_size: 0,
        inode_ctime_sec: 0,
        inode_ctime_nsec: 0,
        mapping_host: 0,
        ctime_detectors: 0,
    };

#[inline(always)]
pub fn file_offsets() -> guard_common::offsets::FileOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_FILE_OFFSETS) }
}

#[inline(always)]
pub fn count_file(index: u32) {
    if let Some(slot) = FILE_COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

// --- BPF LSM tier (probes/lsm.rs).

/// Offsets for the LSM programs, set by the loader from BTF.
#[unsafe(no_mangle)]
static GUARD_LSM_OFFSETS: guard_common::offsets::LsmOffsets = guard_common::offsets::LsmOffsets {
    socket_type: 0,
    socket_sk: 0,
    sock_protocol: 0,
    msghdr_name: 0,
    msghdr_namelen: 0,
    file_inode: 0,
    file_mode: 0,
    file_flags: 0,
    file_dentry: 0,
    path_dentry: 0,
    valid: 0,
    unix_sock_dentry: 0,
    unix_sock_addr: 0,
    unix_address_len: 0,
    unix_address_name: 0,
    _pad: 0,
};

#[inline(always)]
pub fn lsm_offsets() -> guard_common::offsets::LsmOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_LSM_OFFSETS) }
}

// --- Self-protection (probes/guard_self.rs). Pinned: holds while the daemon restarts.

#[map(name = "GUARD_SELF_STATE")]
pub static SELF_STATE: Array<guard_common::selfprot::SelfState> = Array::pinned(1, 0);

#[map(name = "GUARD_SELF_SIGNALS")]
pub static SELF_SIGNALS: Array<u64> = Array::pinned(guard_common::selfprot::SIGNAL_SLOTS, 0);

#[map(name = "GUARD_SELF_TRACERS")]
pub static SELF_TRACERS: HashMap<u32, u64> =
    HashMap::pinned(guard_common::maps::SELF_TRACERS_MAX, 0);

/// Offsets for the self-protection programs, set by the loader from BTF.
#[unsafe(no_mangle)]
static GUARD_SELF_OFFSETS: guard_common::selfprot::SelfOffsets =
    guard_common::selfprot::SelfOffsets {
        siginfo_code: 0,
        valid: 0,
        task_flags: 0,
        regs_syscall: u32::MAX,
        userns_level: 0,
        _pad: 0,
    };

#[inline(always)]
pub fn self_offsets() -> guard_common::selfprot::SelfOffsets {
    // SAFETY: a global in .rodata, patched by the loader before load.
    unsafe { core::ptr::read_volatile(&GUARD_SELF_OFFSETS) }
}

/// The capabilities refused to tagged processes in the initial user namespace (one mask).
/// Pinned: the ceiling holds while no daemon runs.
#[map(name = "GUARD_CAP_CEILING")]
pub static CAP_CEILING: Array<guard_common::deputy::CapMask> = Array::pinned(2, 0);

/// When each (caller, target) refusal was last recorded.
#[map(name = "GUARD_DEPUTY_SEEN")]
pub static DEPUTY_SEEN: aya_ebpf::maps::LruHashMap<u64, u64> =
    aya_ebpf::maps::LruHashMap::with_max_entries(guard_common::maps::DEPUTY_SEEN_MAX, 0);

/// Files tagged processes wrote, by identity. Pinned: a file written before a restart is
/// still the agent's.
#[map(name = "GUARD_TAINTED")]
pub static TAINTED: aya_ebpf::maps::LruHashMap<FileKey, guard_common::taint::Taint> =
    aya_ebpf::maps::LruHashMap::pinned(guard_common::maps::TAINTED_MAX, 0);

/// comm → what an untagged reader of an agent-written file becomes tagged for.
#[map(name = "GUARD_TAINT_READERS")]
pub static TAINT_READERS: HashMap<NameKey, u32> = HashMap::pinned(64, 0);

/// tgid → an exec of an agent-written script, for the exec tracker.
#[map(name = "GUARD_DEFERRED_PENDING")]
pub static DEFERRED_PENDING: aya_ebpf::maps::LruHashMap<u32, guard_common::taint::Deferred> =
    aya_ebpf::maps::LruHashMap::with_max_entries(1024, 0);

/// The sockets of tagged processes and the destination they were allowed to: socket-local
/// storage, so the check after NAT costs an untagged packet one pointer test (the socket has
/// no storage) instead of a socket cookie and a hash lookup; it goes with the socket.
#[btf_map(name = "GUARD_NET_SOCKETS")]
pub static NET_SOCKETS: aya_ebpf::btf_maps::SkStorage<guard_common::net::TaggedSocket> =
    aya_ebpf::btf_maps::SkStorage::new();

/// File versions tagged processes opened for reading, and the daemon's verdict on each
/// (`guard_common::secret`). Not pinned: a new daemon scans again what it reads again.
#[map(name = "GUARD_SECRET_SEEN")]
pub static SECRET_SEEN: aya_ebpf::maps::LruHashMap<guard_common::secret::FileVersion, u32> =
    aya_ebpf::maps::LruHashMap::with_max_entries(guard_common::maps::SECRET_SEEN_MAX, 0);

/// What each agent tree read, by root: the kernel's count of reads it reported for a scan,
/// and whether the tree opened a version known to hold a secret (`guard_common::secret`).
/// Pinned: a tree stays tainted across a daemon restart.
#[map(name = "GUARD_TREE_READS")]
pub static TREE_READS: HashMap<guard_common::ProcKey, guard_common::secret::TreeReads> =
    HashMap::pinned(guard_common::maps::TREES_MAX, BPF_F_NO_PREALLOC);

/// The daemon's answers to those reads, by root. Pinned.
#[map(name = "GUARD_TREE_VERDICTS")]
pub static TREE_VERDICTS: HashMap<guard_common::ProcKey, guard_common::secret::TreeVerdict> =
    HashMap::pinned(guard_common::maps::TREES_MAX, BPF_F_NO_PREALLOC);

/// The secrets rule and its pending form (`guard_common::net::SECRETS_SLOT`); generation 0:
/// off.
#[map(name = "GUARD_NET_SECRETS")]
pub static NET_SECRETS: Array<NetRule> = Array::pinned(2, 0);

/// Agent trees an administrator froze, by root (`guard freeze`). Pinned.
#[map(name = "GUARD_HELD")]
pub static HELD: HashMap<guard_common::ProcKey, u64> =
    HashMap::pinned(guard_common::maps::HELD_MAX, 0);

/// Approved requests of `ask` rules (`guard_common::net::ExceptionKey` → deadline). Pinned.
#[map(name = "GUARD_NET_EXCEPTIONS")]
pub static NET_EXCEPTIONS: HashMap<guard_common::net::ExceptionKey, u64> =
    HashMap::pinned(guard_common::maps::NET_EXCEPTIONS_MAX, 0);
