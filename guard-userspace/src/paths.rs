//! Every default location, each overridable by a flag and an environment variable.

use std::path::PathBuf;

pub const POLICY: &str = "/etc/guard/policy.yaml";
pub const SOCKET: &str = "/run/guard/guard.sock";
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";
pub const PIN_DIR: &str = "/sys/fs/bpf/guard";
pub const EVENT_LOG: &str = "/var/log/guard/events.jsonl";
pub const CGROUP2_CANDIDATES: [&str; 2] = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"];

/// The first cgroup v2 mount in this process's mount namespace.
pub fn find_cgroup2() -> Option<PathBuf> {
    mount_point_of("cgroup2")
}

/// The first mount of `fs_type` in this process's mount namespace.
pub fn mount_point_of(fs_type: &str) -> Option<PathBuf> {
    let mounts = procfs::process::Process::myself().ok()?.mountinfo().ok()?;
    let mut mounts = mounts.into_iter();
    mounts.find(|m| m.fs_type == fs_type).map(|m| m.mount_point)
}

pub const ENV_POLICY: &str = "GUARD_POLICY";
pub const ENV_SOCKET: &str = "GUARD_SOCKET";
pub const ENV_PIN_DIR: &str = "GUARD_PIN_DIR";
pub const ENV_EVENT_LOG: &str = "GUARD_EVENT_LOG";
/// The passwd file whose home directories `~` in path rules means (default `/etc/passwd`):
/// for hosts whose users come from elsewhere (a directory service's export), and for tests.
pub const ENV_PASSWD: &str = "GUARD_PASSWD";

/// The passwd file `~` is read from.
pub fn passwd() -> PathBuf {
    std::env::var_os(ENV_PASSWD).map_or_else(|| "/etc/passwd".into(), PathBuf::from)
}

/// The locations one daemon (and the CLI talking to it) uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Paths {
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub event_log: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            socket: SOCKET.into(),
            pin_dir: PIN_DIR.into(),
            event_log: EVENT_LOG.into(),
        }
    }
}
