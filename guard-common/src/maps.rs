//! Map names and sizes, shared so both sides agree by construction.

/// tgid → [`crate::Tag`]: every process of every agent tree.
pub const TAGS: &str = "GUARD_TAGS";
pub const TAGS_MAX: u32 = 65_536;

/// comm (executable basename, 15 bytes max) → agent id.
pub const AGENT_EXES: &str = "GUARD_AGENT_EXES";
/// script or module basename, or a directory component of the script path → agent id.
pub const AGENT_SCRIPTS: &str = "GUARD_AGENT_SCRIPTS";
/// comm of interpreters whose first script argument names the agent → 1.
pub const INTERPRETERS: &str = "GUARD_INTERPRETERS";
pub const AGENT_NAMES_MAX: u32 = 1024;
/// LPM trie of environment markers ([`crate::agent::EnvKey`]) → agent id.
pub const AGENT_ENV: &str = "GUARD_AGENT_ENV";
/// [`crate::file::FileKey`] of an installed agent's file or directory →
/// [`crate::agent::AgentPath`].
pub const AGENT_PATHS: &str = "GUARD_AGENT_PATHS";
/// LPM trie of the absolute paths an interpreter's script may have to be an installed agent
/// ([`crate::agent::ScriptPath`]) → agent id.
pub const AGENT_SCRIPT_PATHS: &str = "GUARD_AGENT_SCRIPT_PATHS";
/// Cgroup id (default hierarchy) of an agent's cgroup → agent id.
pub const AGENT_CGROUPS: &str = "GUARD_AGENT_CGROUPS";
/// One [`crate::agent::Recognition`]: the settings of recognition at exec.
pub const RECOGNITION: &str = "GUARD_RECOGNITION";

/// Kernel → user events.
pub const EVENTS: &str = "GUARD_EVENTS";
pub const EVENTS_BYTES: u32 = 1 << 22;
/// Fork and exit records wake the reader only once this much is
/// queued: each wakeup costs a self-IPI, about 11 µs on a virtual machine (measured with
/// bpf_stats: `guard_fork` 12.4 µs a run with a wakeup per record, 1.05 µs without), which
/// made every tagged fork 25% slower. Decisions and reads to scan still wake the reader at
/// once: the ring wakes it only for a record at its position, so the first of them after
/// records that woke nobody forces the wake-up ([`EVENTS_UNWOKEN`]); an exec wakes a reader
/// that has read everything. The reader also drains every [`EVENTS_DRAIN_MS`].
pub const EVENTS_WAKE_BYTES: u64 = (EVENTS_BYTES / 16) as u64;
/// One `u32`: nonzero while records submitted without a wake-up wait in [`EVENTS`].
pub const EVENTS_UNWOKEN: &str = "GUARD_EVENTS_UNWOKEN";
/// The reader drains the ring at least this often (the latency bound of lifecycle records).
pub const EVENTS_DRAIN_MS: u64 = 50;

/// Per-CPU counters, indexed by [`crate::event::Counter`].
pub const COUNTERS: &str = "GUARD_COUNTERS";
pub const COUNTERS_MAX: u32 = 16;

/// Struct offsets read from the running kernel's BTF at load time.
pub const OFFSETS_GLOBAL: &str = "GUARD_OFFSETS";
/// `u32`, 1 where the kernel lets cgroup socket programs call `bpf_send_signal` (probed at
/// start; 6.18 does, 6.1 and 6.12 do not): `kill` rules SIGKILL from the program that denies,
/// and no kill program is loaded.
pub const KILL_IN_PLACE_GLOBAL: &str = "GUARD_KILL_IN_PLACE";
/// `u32`, 1 where the loader rewrote the object's [`KFUNC_SIGNAL_TASK`] calls into calls of
/// the kernel's `bpf_send_signal_task` (Linux ≥ 6.13): the fork tracker kills a child the
/// tag map cannot take before the child first runs.
pub const SIGNAL_TASK_GLOBAL: &str = "GUARD_SIGNAL_TASK";
/// The helper id the eBPF code calls in place of the `bpf_send_signal_task` kfunc, which aya
/// cannot relocate: no helper has it, and the loader rewrites every call of it (or leaves it
/// in code the frozen [`SIGNAL_TASK_GLOBAL`] makes dead).
pub const KFUNC_SIGNAL_TASK: u32 = 0x4755_0001;

/// LPM trie of IPv4 prefixes → [`crate::net::RuleSet`].
pub const NET4: &str = "GUARD_NET4";
/// LPM trie of IPv6 prefixes → [`crate::net::RuleSet`].
pub const NET6: &str = "GUARD_NET6";
pub const NET_PREFIXES_MAX: u32 = 16_384;
/// [`crate::net::UnixKey`] → [`crate::net::RuleSet`].
pub const NET_UNIX: &str = "GUARD_NET_UNIX";
pub const NET_UNIX_MAX: u32 = 1024;
/// Rule slot → [`crate::net::NetRule`], two generations of
/// [`crate::net::RULES_PER_GENERATION`] slots.
pub const NET_RULES: &str = "GUARD_NET_RULES";
/// One [`crate::net::NetRule`]: the raw-socket rule (generation 0: none).
pub const NET_RAW: &str = "GUARD_NET_RAW";
/// tgid → [`crate::net::PendingKill`]: processes to SIGKILL before their system call returns
/// (kernels whose cgroup programs cannot send signals).
pub const NET_PENDING_KILLS: &str = "GUARD_NET_PENDING_KILLS";
pub const NET_PENDING_KILLS_MAX: u32 = 4096;
/// One `u64`: number of entries in [`NET_PENDING_KILLS`], so that the kill programs cost one
/// array read for everyone while no kill is pending.
pub const NET_PENDING_COUNT: &str = "GUARD_NET_PENDING_COUNT";

/// Socket-local storage of [`crate::net::TaggedSocket`]: the sockets of tagged processes, for
/// the check after NAT.
pub const NET_SOCKETS: &str = "GUARD_NET_SOCKETS";

/// [`crate::secret::FileVersion`] → [`crate::secret::verdict`]: file versions tagged processes
/// opened for reading, and what the daemon's scan found in them (LRU: the oldest go).
pub const SECRET_SEEN: &str = "GUARD_SECRET_SEEN";
pub const SECRET_SEEN_MAX: u32 = 65_536;

/// Root [`crate::ProcKey`] → [`crate::secret::TreeReads`]: what each agent tree read, as the
/// kernel counts it (written by the kernel only). Pinned, as the tags are.
pub const TREE_READS: &str = "GUARD_TREE_READS";
/// Root [`crate::ProcKey`] → [`crate::secret::TreeVerdict`]: the daemon's answers (written by
/// the daemon only). Pinned.
pub const TREE_VERDICTS: &str = "GUARD_TREE_VERDICTS";
/// A tree per tagged process at most, so neither map is full before the tag map is.
pub const TREES_MAX: u32 = TAGS_MAX;
/// Two [`crate::net::NetRule`]s: the secrets rule and its pending form
/// ([`crate::net::SECRETS_SLOT`], [`crate::net::SECRETS_PENDING_SLOT`]); generation 0: off.
pub const NET_SECRETS: &str = "GUARD_NET_SECRETS";

/// [`crate::net::ExceptionKey`] → boot-time deadline: approved requests of `ask` rules
/// (`guard approve`). Pinned: a restarted daemon keeps live exceptions.
pub const NET_EXCEPTIONS: &str = "GUARD_NET_EXCEPTIONS";
pub const NET_EXCEPTIONS_MAX: u32 = 4096;

/// Root [`crate::ProcKey`] → boot time it was frozen: agent trees an administrator froze
/// (`guard freeze`). Pinned. On bpf-lsm, no tagged process may send a process of a held tree
/// `SIGCONT`.
pub const HELD: &str = "GUARD_HELD";
pub const HELD_MAX: u32 = 1024;

/// Offsets of `bpf_sock_addr_kern` and `sockaddr_un` for the unix socket programs.
pub const UNIX_OFFSETS_GLOBAL: &str = "GUARD_UNIX_OFFSETS";

/// One [`crate::deputy::CapMask`]: the capabilities refused to tagged processes.
pub const CAP_CEILING: &str = "GUARD_CAP_CEILING";
/// `(caller tgid << 32) | target tgid, capability or ioctl` → boot time of the last recorded
/// refusal ([`crate::deputy::REPEAT_NS`]).
pub const DEPUTY_SEEN: &str = "GUARD_DEPUTY_SEEN";
pub const DEPUTY_SEEN_MAX: u32 = 4096;

/// [`crate::file::FileKey`] → [`crate::taint::Taint`]: files tagged processes wrote. Pinned;
/// the oldest are forgotten first when it is full.
pub const TAINTED: &str = "GUARD_TAINTED";
pub const TAINTED_MAX: u32 = 65_536;
/// comm → [`crate::taint::reader`]: programs that act on the agent-written files they read.
pub const TAINT_READERS: &str = "GUARD_TAINT_READERS";
/// tgid → [`crate::taint::Deferred`]: an exec of an agent-written script, between
/// `bprm_check_security` and the exec tracker.
pub const DEFERRED_PENDING: &str = "GUARD_DEFERRED_PENDING";

/// Program names (the function names in guard-ebpf).
pub mod programs {
    pub const FORK: &str = "guard_fork";
    pub const EXEC: &str = "guard_exec";
    pub const EXIT: &str = "guard_exit";
    pub const EXIT_NO_GROUP_DEAD: &str = "guard_exit_compat";
    pub const CONNECT4: &str = "guard_connect4";
    pub const CONNECT6: &str = "guard_connect6";
    pub const SENDMSG4: &str = "guard_sendmsg4";
    pub const SENDMSG6: &str = "guard_sendmsg6";
    /// Loaded by guard itself with the unix attach types (aya 0.14 has none).
    pub const CONNECT_UNIX: &str = "guard_connect_unix";
    pub const SENDMSG_UNIX: &str = "guard_sendmsg_unix";
    /// cgroup `sock_create`: raw IPv4/IPv6 sockets.
    pub const SOCK_CREATE: &str = "guard_sock_create";
    /// `fexit` of the kernel functions that run the cgroup socket programs: send the pending
    /// kills where the cgroup programs cannot signal themselves.
    pub const KILL_AFTER_SOCK_ADDR: &str = "guard_kill_after_sock_addr";
    pub const KILL_AFTER_SOCK_CREATE: &str = "guard_kill_after_sock_create";
    /// `tp_btf/sys_exit`: the same, where the kernel refuses fexit programs.
    pub const SYS_EXIT: &str = "guard_sys_exit";
    /// `tp_btf/cgroup_attach_task`: a process that joins an agent's cgroup is tagged.
    pub const CGROUP_JOIN: &str = "guard_cgroup_join";
    /// cgroup `skb` egress: packets of tagged sockets whose destination NAT rewrote.
    pub const EGRESS: &str = "guard_egress";
    /// The page cache's read tracepoints (fallback tier): tagged reads, for the secret scan
    /// (the bpf-lsm tier's `file_open` program reports them itself). `read(2)` and friends,
    /// and the two ways a mapped file is read.
    pub const SECRET_READ: &str = "guard_secret_read";
    pub const SECRET_MAP_PAGES: &str = "guard_secret_map_pages";
    pub const SECRET_FAULT: &str = "guard_secret_fault";
    pub const SECRET_READS: [(&str, &str); 3] = [
        (SECRET_READ, "mm_filemap_get_pages"),
        (SECRET_MAP_PAGES, "mm_filemap_map_pages"),
        (SECRET_FAULT, "mm_filemap_fault"),
    ];
    /// Deferred execution on the fallback tier: `fentry` of the functions that call the LSM
    /// hooks the bpf-lsm tier uses for it (they run whatever LSMs are enabled). A tracing
    /// program cannot refuse, and need not: these record writes and tag.
    pub const DEFERRED_OPEN: &str = "guard_deferred_open";
    pub const DEFERRED_EXEC: &str = "guard_deferred_exec";
    pub const DEFERRED: [(&str, &str); 2] = [
        (DEFERRED_OPEN, "security_file_open"),
        (DEFERRED_EXEC, "security_bprm_check"),
    ];
    /// The unix peer on the fallback tier: `fmod_ret` of the functions that call the LSM
    /// hooks `unix_stream_connect` and `unix_may_send`, running the bpf-lsm tier's decision
    /// on the socket file the kernel resolved. A non-zero return is the function's result:
    /// the program refuses without BPF LSM in the kernel's LSM list.
    pub const PEER_UNIX_CONNECT: &str = "guard_peer_unix_connect";
    pub const PEER_UNIX_SEND: &str = "guard_peer_unix_send";
    pub const PEER_UNIX: [(&str, &str); 2] = [
        (PEER_UNIX_CONNECT, "security_unix_stream_connect"),
        (PEER_UNIX_SEND, "security_unix_may_send"),
    ];
    /// `fmod_ret` of `security_bpf` on the fallback tier: every `bpf()` call of a tagged
    /// process refused, as the bpf-lsm tier's `bpf` hook does.
    pub const SELF_BPF: &str = "guard_fmod_bpf";
    pub const SELF_BPF_FUNCTION: &str = "security_bpf";
    /// `fmod_ret` on the fallback tier: no deputies (process access, keystrokes into
    /// terminals), as the bpf-lsm tier's `ptrace_access_check` and `file_ioctl` hooks do.
    pub const DEPUTY_PTRACE: &str = "guard_fmod_ptrace";
    pub const DEPUTY_IOCTL: &str = "guard_fmod_ioctl";
    pub const DEPUTY_IOCTL_COMPAT: &str = "guard_fmod_ioctl_compat";
    pub const DEPUTY: [(&str, &str); 3] = [
        (DEPUTY_PTRACE, "security_ptrace_access_check"),
        (DEPUTY_IOCTL, "security_file_ioctl"),
        (DEPUTY_IOCTL_COMPAT, "security_file_ioctl_compat"),
    ];
}

/// [`crate::offsets::LsmOffsets`] global.
pub const LSM_OFFSETS_GLOBAL: &str = "GUARD_LSM_OFFSETS";

/// The BPF LSM programs (the bpf-lsm tier): `(program, hook)`. Each replaces what the
/// fallback tier does with a cgroup program, fanotify or kill-on-detect.
pub mod lsm_programs {
    pub const SOCKET_CONNECT: &str = "guard_lsm_socket_connect";
    pub const SOCKET_SENDMSG: &str = "guard_lsm_socket_sendmsg";
    pub const SOCKET_CREATE: &str = "guard_lsm_socket_create";
    pub const UNIX_STREAM_CONNECT: &str = "guard_lsm_unix_stream_connect";
    pub const UNIX_MAY_SEND: &str = "guard_lsm_unix_may_send";
    pub const FILE_OPEN: &str = "guard_lsm_file_open";
    pub const FILE_TRUNCATE: &str = "guard_lsm_file_truncate";
    pub const PATH_UNLINK: &str = "guard_lsm_path_unlink";
    pub const PATH_RMDIR: &str = "guard_lsm_path_rmdir";
    pub const PATH_RENAME: &str = "guard_lsm_path_rename";
    pub const PATH_RENAME_TO: &str = "guard_lsm_path_rename_to";
    pub const PATH_TRUNCATE: &str = "guard_lsm_path_truncate";
    pub const PATH_LINK: &str = "guard_lsm_path_link";
    pub const PATH_LINK_TO: &str = "guard_lsm_path_link_to";
    pub const PATH_MKNOD: &str = "guard_lsm_path_mknod";
    pub const PATH_MKDIR: &str = "guard_lsm_path_mkdir";
    pub const PATH_SYMLINK: &str = "guard_lsm_path_symlink";
    pub const PATH_CHMOD: &str = "guard_lsm_path_chmod";
    pub const PATH_CHOWN: &str = "guard_lsm_path_chown";
    pub const TASK_KILL: &str = "guard_lsm_task_kill";
    pub const PTRACE_ACCESS_CHECK: &str = "guard_lsm_ptrace_access_check";
    pub const BPF: &str = "guard_lsm_bpf";
    pub const FILE_IOCTL: &str = "guard_lsm_file_ioctl";
    pub const FILE_IOCTL_COMPAT: &str = "guard_lsm_file_ioctl_compat";
    pub const CAPABLE: &str = "guard_lsm_capable";
    pub const BPRM_CHECK: &str = "guard_lsm_bprm_check";
    pub const TASK_ALLOC: &str = "guard_lsm_task_alloc";

    /// No deputies: keystrokes into terminals, the capability ceiling (process access is the
    /// self-protection hook `ptrace_access_check`, which decides both), and no untagged
    /// child: a fork the tag map cannot take is refused.
    pub const DEPUTY: [(&str, &str); 5] = [
        (FILE_IOCTL, "file_ioctl"),
        (FILE_IOCTL_COMPAT, "file_ioctl_compat"),
        (CAPABLE, "capable"),
        (BPRM_CHECK, "bprm_check_security"),
        (TASK_ALLOC, "task_alloc"),
    ];

    /// The self-protection hooks.
    pub const SELF: [(&str, &str); 3] = [
        (TASK_KILL, "task_kill"),
        (PTRACE_ACCESS_CHECK, "ptrace_access_check"),
        (BPF, "bpf"),
    ];

    /// The network hooks.
    pub const NET: [(&str, &str); 5] = [
        (SOCKET_CONNECT, "socket_connect"),
        (SOCKET_SENDMSG, "socket_sendmsg"),
        (SOCKET_CREATE, "socket_create"),
        (UNIX_STREAM_CONNECT, "unix_stream_connect"),
        (UNIX_MAY_SEND, "unix_may_send"),
    ];
    /// The file hooks. `file_truncate` exists from Linux 6.2 (before, `ftruncate` and
    /// `O_TRUNC` go through `path_truncate`); it is attached where the kernel has it.
    /// `path_rename` and `path_link` have two programs each (source and destination side).
    pub const FILE: [(&str, &str); 14] = [
        (FILE_OPEN, "file_open"),
        (FILE_TRUNCATE, "file_truncate"),
        (PATH_UNLINK, "path_unlink"),
        (PATH_RMDIR, "path_rmdir"),
        (PATH_RENAME, "path_rename"),
        (PATH_RENAME_TO, "path_rename"),
        (PATH_TRUNCATE, "path_truncate"),
        (PATH_LINK, "path_link"),
        (PATH_LINK_TO, "path_link"),
        (PATH_MKNOD, "path_mknod"),
        (PATH_MKDIR, "path_mkdir"),
        (PATH_SYMLINK, "path_symlink"),
        (PATH_CHMOD, "path_chmod"),
        (PATH_CHOWN, "path_chown"),
    ];
    /// Hooks a kernel may lack without a gap (another hook covers the same operations).
    pub const OPTIONAL: [&str; 2] = ["file_truncate", "file_ioctl_compat"];
}

// --- File protection (probes/file.rs). Pinned: kill-on-detect and the device rule keep
// applying while no daemon runs.

/// [`crate::file::FileKey`] → [`crate::file::FileRule`]: protected objects and volumes.
pub const FILE_OBJECTS: &str = "GUARD_FILE_OBJECTS";
pub const FILE_OBJECTS_MAX: u32 = 65_536;
/// [`crate::file::FileKey`] → [`crate::file::FileIdentity`]: the protected objects as the
/// daemon can open them again (no program reads it; pinned so that a restarted daemon finds
/// a moved object).
pub const FILE_IDENTITIES: &str = "GUARD_FILE_IDS";
/// [`crate::file::DevKey`] → [`crate::file::FileRule`]: block devices behind protected volumes.
pub const FILE_DEVICES: &str = "GUARD_FILE_DEVICES";
pub const FILE_DEVICES_MAX: u32 = 1024;
/// Kernel → user [`crate::file::FileEvent`]s.
pub const FILE_EVENTS: &str = "GUARD_FILE_EVENTS";
pub const FILE_EVENTS_BYTES: u32 = 1 << 20;
/// Per-CPU counters, indexed by [`crate::file::counter`].
pub const FILE_COUNTERS: &str = "GUARD_FILE_COUNTERS";
pub const FILE_COUNTERS_MAX: u32 = 8;
/// tgid → start time of a process already sent SIGKILL (LRU): one kill, one event.
pub const FILE_KILLED: &str = "GUARD_FILE_KILLED";
pub const FILE_KILLED_MAX: u32 = 4096;
/// [`crate::offsets::FileOffsets`] global.
pub const FILE_OFFSETS_GLOBAL: &str = "GUARD_FILE_OFFSETS";

/// File program names (the function names in guard-ebpf) and their attach points.
pub mod file_programs {
    /// `tp_btf/ctime_ns_xchg`: a multigrain filesystem (ext4, xfs, btrfs, tmpfs) stamped a
    /// new ctime on an inode.
    pub const CTIME_XCHG: &str = "guard_file_ctime";
    /// `tp_btf/ctime_xchg_skip`: the same, when the new ctime equals the old one.
    pub const CTIME_SKIP: &str = "guard_file_ctime_skip";
    /// `tp_btf/inode_set_ctime_to_ts`: any other filesystem set an inode's ctime.
    pub const CTIME_SET: &str = "guard_file_ctime_set";
    /// `cgroup/dev` on the cgroup v2 root: raw opens of protected block devices.
    pub const DEVICE: &str = "guard_file_device";
    /// (program, tracepoint) of the change detectors.
    pub const TRACEPOINTS: [(&str, &str); 3] = [
        (CTIME_XCHG, "ctime_ns_xchg"),
        (CTIME_SKIP, "ctime_xchg_skip"),
        (CTIME_SET, "inode_set_ctime_to_ts"),
    ];

    /// The bpf-lsm tier's path decisions on the fallback tier: `fmod_ret` of the functions
    /// that call the LSM path hooks (`security_path_*`, `security_file_truncate`), refusing
    /// in the kernel what the change detectors can only kill after the fact. `rename` and
    /// `link` have two programs each (source and destination side), as on bpf-lsm.
    pub const REFUSE_UNLINK: &str = "guard_fmod_unlink";
    pub const REFUSE_RMDIR: &str = "guard_fmod_rmdir";
    pub const REFUSE_RENAME: &str = "guard_fmod_rename";
    pub const REFUSE_RENAME_TO: &str = "guard_fmod_rename_to";
    pub const REFUSE_TRUNCATE: &str = "guard_fmod_truncate";
    pub const REFUSE_FTRUNCATE: &str = "guard_fmod_ftruncate";
    pub const REFUSE_LINK: &str = "guard_fmod_link";
    pub const REFUSE_LINK_TO: &str = "guard_fmod_link_to";
    pub const REFUSE_MKNOD: &str = "guard_fmod_mknod";
    pub const REFUSE_MKDIR: &str = "guard_fmod_mkdir";
    pub const REFUSE_SYMLINK: &str = "guard_fmod_symlink";
    pub const REFUSE_CHMOD: &str = "guard_fmod_chmod";
    pub const REFUSE_CHOWN: &str = "guard_fmod_chown";
    /// (program, kernel function). `security_file_truncate` exists from Linux 6.2 (before,
    /// `ftruncate` and `O_TRUNC` go through `security_path_truncate`).
    pub const REFUSE: [(&str, &str); 13] = [
        (REFUSE_UNLINK, "security_path_unlink"),
        (REFUSE_RMDIR, "security_path_rmdir"),
        (REFUSE_RENAME, "security_path_rename"),
        (REFUSE_RENAME_TO, "security_path_rename"),
        (REFUSE_TRUNCATE, "security_path_truncate"),
        (REFUSE_FTRUNCATE, "security_file_truncate"),
        (REFUSE_LINK, "security_path_link"),
        (REFUSE_LINK_TO, "security_path_link"),
        (REFUSE_MKNOD, "security_path_mknod"),
        (REFUSE_MKDIR, "security_path_mkdir"),
        (REFUSE_SYMLINK, "security_path_symlink"),
        (REFUSE_CHMOD, "security_path_chmod"),
        (REFUSE_CHOWN, "security_path_chown"),
    ];
    /// Kernel functions a kernel may lack without a gap.
    pub const REFUSE_OPTIONAL: [&str; 1] = ["security_file_truncate"];
}

// --- Self-protection (probes/guard_self.rs). Pinned: holds while the daemon restarts.

/// Index 0: [`crate::selfprot::SelfState`].
pub const SELF_STATE: &str = "GUARD_SELF_STATE";
/// Per signal number: count of signals tagged processes sent the daemon (see
/// [`crate::selfprot::SIGNAL_SLOTS`]).
pub const SELF_SIGNALS: &str = "GUARD_SELF_SIGNALS";
/// tgid → start time of a tagged tracer of the daemon, killed at its next wait.
pub const SELF_TRACERS: &str = "GUARD_SELF_TRACERS";
pub const SELF_TRACERS_MAX: u32 = 1024;
/// [`crate::selfprot::SelfOffsets`] global.
pub const SELF_OFFSETS_GLOBAL: &str = "GUARD_SELF_OFFSETS";

/// Self-protection program names and their tracepoints.
pub mod self_programs {
    /// `tp_btf/signal_generate`: a signal to the daemon from a tagged process, or a SIGCHLD
    /// from the daemon to a tagged tracer.
    pub const SIGNAL: &str = "guard_self_signal";
    /// `tp_btf/signal_deliver`: the daemon resumes itself after a stop signal a tagged process
    /// sent.
    pub const DELIVER: &str = "guard_self_deliver";
    /// `tp_btf/sched_process_wait`: a tagged tracer of the daemon is killed when it waits.
    pub const WAIT: &str = "guard_self_wait";
    /// `tp_btf/cap_capable` (Linux ≥ 6.13): a tagged process whose `bpf()` call checks a
    /// capability in the initial user namespace is killed.
    pub const CAP: &str = "guard_self_cap";
    pub const TRACEPOINTS: [(&str, &str); 4] = [
        (SIGNAL, "signal_generate"),
        (DELIVER, "signal_deliver"),
        (WAIT, "sched_process_wait"),
        (CAP, "cap_capable"),
    ];
}

/// One `u32`: the layout version of the pinned maps, written by the daemon that created them.
/// A daemon refuses pins of another layout instead of reading them with the wrong structs.
pub const LAYOUT: &str = "GUARD_LAYOUT";
/// Bump whenever a pinned map's key, value or meaning changes. Pins from before the stamp
/// existed count as layout 1.
pub const LAYOUT_VERSION: u32 = 2;

/// Per-CPU scratch space of the kernel programs (never touched by userspace).
pub const SCRATCH: &str = "GUARD_SCRATCH";
/// Per-CPU record of the last file-rule hit (kernel programs only).
pub const FILE_HIT: &str = "GUARD_FILE_HIT";

/// Every map of the kernel object, by name. guard-ebpf's `#[map(name = …)]` takes a literal,
/// so a rootless test compares the compiled object with this list.
pub const ALL: [&str; 43] = [
    EVENTS_UNWOKEN,
    TAGS,
    AGENT_EXES,
    AGENT_SCRIPTS,
    INTERPRETERS,
    AGENT_ENV,
    AGENT_PATHS,
    AGENT_SCRIPT_PATHS,
    AGENT_CGROUPS,
    RECOGNITION,
    EVENTS,
    COUNTERS,
    NET4,
    NET6,
    NET_UNIX,
    NET_RULES,
    NET_RAW,
    NET_PENDING_KILLS,
    NET_PENDING_COUNT,
    FILE_OBJECTS,
    FILE_IDENTITIES,
    FILE_DEVICES,
    FILE_EVENTS,
    FILE_COUNTERS,
    FILE_KILLED,
    SELF_STATE,
    SELF_SIGNALS,
    SELF_TRACERS,
    SCRATCH,
    FILE_HIT,
    LAYOUT,
    CAP_CEILING,
    DEPUTY_SEEN,
    TAINTED,
    TAINT_READERS,
    DEFERRED_PENDING,
    NET_SOCKETS,
    SECRET_SEEN,
    TREE_READS,
    TREE_VERDICTS,
    NET_SECRETS,
    HELD,
    NET_EXCEPTIONS,
];

/// Every global the loader sets, by name.
pub const GLOBALS: [&str; 7] = [
    OFFSETS_GLOBAL,
    KILL_IN_PLACE_GLOBAL,
    SIGNAL_TASK_GLOBAL,
    UNIX_OFFSETS_GLOBAL,
    LSM_OFFSETS_GLOBAL,
    FILE_OFFSETS_GLOBAL,
    SELF_OFFSETS_GLOBAL,
];

/// Every program of the kernel object, by function name.
pub const ALL_PROGRAMS: [&str; 75] = [
    programs::FORK,
    programs::EXEC,
    programs::CGROUP_JOIN,
    programs::EXIT,
    programs::EXIT_NO_GROUP_DEAD,
    programs::CONNECT4,
    programs::CONNECT6,
    programs::SENDMSG4,
    programs::SENDMSG6,
    programs::CONNECT_UNIX,
    programs::SENDMSG_UNIX,
    programs::SOCK_CREATE,
    programs::EGRESS,
    programs::SECRET_READ,
    programs::SECRET_MAP_PAGES,
    programs::SECRET_FAULT,
    programs::DEFERRED_OPEN,
    programs::DEFERRED_EXEC,
    programs::PEER_UNIX_CONNECT,
    programs::PEER_UNIX_SEND,
    programs::SELF_BPF,
    programs::DEPUTY_PTRACE,
    programs::DEPUTY_IOCTL,
    programs::DEPUTY_IOCTL_COMPAT,
    programs::KILL_AFTER_SOCK_ADDR,
    programs::KILL_AFTER_SOCK_CREATE,
    programs::SYS_EXIT,
    lsm_programs::SOCKET_CONNECT,
    lsm_programs::SOCKET_SENDMSG,
    lsm_programs::SOCKET_CREATE,
    lsm_programs::UNIX_STREAM_CONNECT,
    lsm_programs::UNIX_MAY_SEND,
    lsm_programs::FILE_OPEN,
    lsm_programs::FILE_TRUNCATE,
    lsm_programs::PATH_UNLINK,
    lsm_programs::PATH_RMDIR,
    lsm_programs::PATH_RENAME,
    lsm_programs::PATH_RENAME_TO,
    lsm_programs::PATH_TRUNCATE,
    lsm_programs::PATH_LINK,
    lsm_programs::PATH_LINK_TO,
    lsm_programs::PATH_MKNOD,
    lsm_programs::PATH_MKDIR,
    lsm_programs::PATH_SYMLINK,
    lsm_programs::PATH_CHMOD,
    lsm_programs::PATH_CHOWN,
    lsm_programs::TASK_KILL,
    lsm_programs::PTRACE_ACCESS_CHECK,
    lsm_programs::BPF,
    lsm_programs::FILE_IOCTL,
    lsm_programs::FILE_IOCTL_COMPAT,
    lsm_programs::CAPABLE,
    lsm_programs::BPRM_CHECK,
    lsm_programs::TASK_ALLOC,
    file_programs::CTIME_XCHG,
    file_programs::CTIME_SKIP,
    file_programs::CTIME_SET,
    file_programs::DEVICE,
    file_programs::REFUSE_UNLINK,
    file_programs::REFUSE_RMDIR,
    file_programs::REFUSE_RENAME,
    file_programs::REFUSE_RENAME_TO,
    file_programs::REFUSE_TRUNCATE,
    file_programs::REFUSE_FTRUNCATE,
    file_programs::REFUSE_LINK,
    file_programs::REFUSE_LINK_TO,
    file_programs::REFUSE_MKNOD,
    file_programs::REFUSE_MKDIR,
    file_programs::REFUSE_SYMLINK,
    file_programs::REFUSE_CHMOD,
    file_programs::REFUSE_CHOWN,
    self_programs::SIGNAL,
    self_programs::DELIVER,
    self_programs::WAIT,
    self_programs::CAP,
];
