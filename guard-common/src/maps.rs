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

/// Kernel → user events.
pub const EVENTS: &str = "GUARD_EVENTS";
pub const EVENTS_BYTES: u32 = 1 << 22;

/// Per-CPU counters, indexed by [`crate::event::Counter`].
pub const COUNTERS: &str = "GUARD_COUNTERS";
pub const COUNTERS_MAX: u32 = 16;

/// Struct offsets read from the running kernel's BTF at load time.
pub const OFFSETS_GLOBAL: &str = "GUARD_OFFSETS";
/// tgid of the daemon, which programs never act against.
pub const DAEMON_TGID_GLOBAL: &str = "GUARD_DAEMON_TGID";

/// Program names (the function names in guard-ebpf).
pub mod programs {
    pub const FORK: &str = "guard_fork";
    pub const EXEC: &str = "guard_exec";
    pub const EXIT: &str = "guard_exit";
    pub const EXIT_NO_GROUP_DEAD: &str = "guard_exit_compat";
}
