//! Which mount namespace the daemon sees the host through.
//!
//! Policy paths (`~/.kube/config`, a volume's mount point, an agent's install path), home
//! directories, devices, cgroup paths, the pin directory, the API socket and the event log
//! all mean the host's objects. A daemon in a container (the DaemonSet, `podman run`) would
//! otherwise resolve them in the container's own filesystem, where `~/.kube/config` is not
//! the node's file. So, while the process is still single-threaded (`setns` of a mount
//! namespace refuses a multi-threaded caller), the daemon enters the mount and cgroup
//! namespaces of the host's PID 1 (or, where PID 1 is out of reach, of the nearest ancestor
//! outside the container), which it sees through the host's PID namespace. The container's
//! first process stays behind as the daemon's parent, for the runtime's `exec` sessions.
//!
//! Entering is better than reading the host through `/proc/1/root/…`: absolute symlinks,
//! `/etc/passwd`, mountinfo and `/proc/PID/cgroup` all mean what they mean on the host, with
//! no second spelling of every path. What stays in the container is reached through a
//! directory descriptor opened before entering: the policy file (a ConfigMap mount).

use std::{
    fs,
    os::{
        fd::{AsFd as _, IntoRawFd as _},
        unix::fs::MetadataExt as _,
    },
    path::{Path, PathBuf},
};

use nix::sched::{CloneFlags, setns};
use serde::{Deserialize, Serialize};

/// `guard daemon --view`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ViewChoice {
    /// The host's view when the daemon runs in a container, else its own.
    #[default]
    Auto,
    /// Enter the mount and cgroup namespaces of PID 1, or refuse to start.
    Host,
    /// Resolve everything in the daemon's own mount namespace.
    Own,
}

/// What `guard status` says about the view (`view`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostView {
    /// `host` (the host's mount namespace) or `container` (the daemon's own, inside one) or
    /// `own` (not in a container: the host's already).
    pub view: String,
    /// How, in words.
    pub detail: String,
    /// The container the daemon runs in, as its runtime marks it (`podman`, `docker`,
    /// `kubernetes`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
}

/// The outcome of [`enter`].
#[derive(Debug)]
pub struct Entered {
    pub view: HostView,
    /// The policy file, spelled so that it still opens after entering.
    pub policy: Option<PathBuf>,
    /// The daemon's own files (policy, binary) are in the container, not on the host: path
    /// rules cannot name them.
    pub own_files_outside: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ViewError {
    #[error(
        "guard daemon runs in a {0} container whose PID 1 is its own: the host is out of \
         view (run it with the host's PID namespace: `--pid=host`, `hostPID: true`), or \
         pass --view own to resolve paths in the container"
    )]
    NoHostPid(String),
    #[error("entering the host's {what} namespace: {source}")]
    Setns {
        what: &'static str,
        #[source]
        source: nix::Error,
    },
    #[error("opening {path}: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Choose the view and enter it. Call before any thread is started.
pub fn enter(choice: ViewChoice, policy: Option<&Path>) -> Result<Entered, ViewError> {
    let container = container_marker();
    let own = |view: &str, detail: String| Entered {
        view: HostView {
            view: view.into(),
            detail,
            container: container.clone(),
        },
        policy: policy.map(Path::to_path_buf),
        own_files_outside: false,
    };
    match (choice, &container, host_process()) {
        (ViewChoice::Own, Some(c), _) => Ok(own(
            "container",
            format!("the {c} container's own mount namespace (--view own)"),
        )),
        (ViewChoice::Own | ViewChoice::Auto, None, _) => Ok(own(
            "own",
            "this process's mount namespace (not in a container)".into(),
        )),
        (ViewChoice::Host | ViewChoice::Auto, _, Found::Host(host)) => {
            enter_host(container, host, policy)
        }
        (ViewChoice::Auto, Some(c), Found::Pid1IsOurs) if !in_initial_pid_namespace() => {
            Err(ViewError::NoHostPid(c.clone()))
        }
        // A marker left in a machine image built from a container image (`/.dockerenv`),
        // with PID 1 in this mount namespace or nothing outside it in reach: the host.
        (ViewChoice::Host | ViewChoice::Auto, _, Found::Pid1IsOurs | Found::Shared) => Ok(own(
            "host",
            "this process shares the host's mount namespace (no process outside it in reach)"
                .into(),
        )),
    }
}

/// Whether this process is in the kernel's first PID namespace (its inode number is fixed:
/// `PROC_PID_INIT_INO`), where PID 1 is the host's init and not a container's first process.
fn in_initial_pid_namespace() -> bool {
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO)
}

/// Where the host's namespaces are, from this process.
#[derive(Debug)]
enum Found {
    /// A process in the host's namespaces, which this one is not in.
    Host(HostProcess),
    /// PID 1 is in this mount namespace: the host's, or a container's own first process.
    Pid1IsOurs,
    /// PID 1 is out of reach and every ancestor shares this mount namespace.
    Shared,
}

/// A process in the host's namespaces that this one is not in.
#[derive(Debug)]
struct HostProcess {
    pid: u32,
    /// How it was chosen, for status.
    how: String,
}

/// The host's PID 1 when this process may read its namespaces, else the nearest ancestor
/// outside this mount namespace (the runtime's monitor, conmon or containerd-shim: a
/// sandbox may refuse access to PID 1).
fn host_process() -> Found {
    let Some(ours) = mount_ns(std::process::id()) else {
        return Found::Shared;
    };
    if let Some(ns) = mount_ns(1) {
        return if ns == ours {
            Found::Pid1IsOurs
        } else {
            Found::Host(HostProcess {
                pid: 1,
                how: "PID 1".into(),
            })
        };
    }
    let mut pid = std::os::unix::process::parent_id();
    while pid > 1 {
        if mount_ns(pid).is_some_and(|ns| ns != ours) {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            return Found::Host(HostProcess {
                pid,
                how: format!(
                    "pid {pid} ({}), the nearest ancestor outside the container (PID 1's \
                     namespaces are not readable here)",
                    comm.trim()
                ),
            });
        }
        let Some(parent) = parent_of(pid) else { break };
        pid = parent;
    }
    Found::Shared
}

/// The mount namespace of `pid` as `(dev, inode)`, if readable.
fn mount_ns(pid: u32) -> Option<(u64, u64)> {
    let m = fs::metadata(format!("/proc/{pid}/ns/mnt")).ok()?;
    Some((m.dev(), m.ino()))
}

fn parent_of(pid: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("PPid:"))?;
    line["PPid:".len()..].trim().parse().ok()
}

/// Enter the cgroup and mount namespaces of `host`, keeping the policy reachable.
fn enter_host(
    container: Option<String>,
    host: HostProcess,
    policy: Option<&Path>,
) -> Result<Entered, ViewError> {
    // The policy's directory, held open: a ConfigMap swaps `..data` inside it, so the
    // directory (not the file) is what must stay reachable.
    let policy = policy.map(keep_reachable).transpose()?;
    if container.is_some() {
        stay_behind_in_the_container();
    }
    for (what, flag) in [
        ("cgroup", CloneFlags::CLONE_NEWCGROUP),
        ("mnt", CloneFlags::CLONE_NEWNS),
    ] {
        let path = PathBuf::from(format!("/proc/{}/ns/{what}", host.pid));
        let ns = fs::File::open(&path).map_err(|source| ViewError::Open { path, source })?;
        setns(ns.as_fd(), flag).map_err(|source| ViewError::Setns { what, source })?;
    }
    let inside = container.as_deref().unwrap_or("another mount namespace");
    Ok(Entered {
        view: HostView {
            view: "host".into(),
            detail: format!(
                "entered the mount and cgroup namespaces of {} from {inside}: paths, home \
                 directories, devices and cgroups are the host's",
                host.how
            ),
            container,
        },
        policy,
        own_files_outside: true,
    })
}

/// Fork; the parent stays in the container's namespaces and returns only by exiting with the
/// daemon's status. A runtime starts `exec` sessions (`kubectl exec`, `podman exec`, exec
/// probes) in the namespaces of the container's first process: if that process entered the
/// host's, `guard status` in the container would look for its binary on the host.
fn stay_behind_in_the_container() {
    use nix::{
        sys::{
            signal::{SigSet, Signal, kill},
            wait::{WaitStatus, waitpid},
        },
        unistd::{ForkResult, fork},
    };
    let forwarded = [
        Signal::SIGTERM,
        Signal::SIGINT,
        Signal::SIGHUP,
        Signal::SIGCHLD,
    ];
    let mut set = SigSet::empty();
    for sig in forwarded {
        set.add(sig);
    }
    // Blocked before the fork so that no signal is lost in between; the child unblocks.
    let _ = set.thread_block();
    // SAFETY: the process is single-threaded here (see `enter`).
    match unsafe { fork() } {
        Ok(ForkResult::Child) => {
            let _ = set.thread_unblock();
        }
        Ok(ForkResult::Parent { child }) => loop {
            match set.wait() {
                Ok(Signal::SIGCHLD) => match waitpid(child, None) {
                    Ok(WaitStatus::Exited(_, code)) => std::process::exit(code),
                    Ok(WaitStatus::Signaled(_, sig, _)) => std::process::exit(128 + sig as i32),
                    _ => {}
                },
                Ok(sig) => {
                    let _ = kill(child, sig);
                }
                Err(_) => {}
            }
        },
        // Without a fork the daemon still runs, as the container's first process.
        Err(e) => {
            let _ = set.thread_unblock();
            tracing::warn!(error = %e, "cannot fork a process to stay in the container");
        }
    }
}

/// `/proc/self/fd/N/NAME` for `path`, with its directory held open as descriptor N.
fn keep_reachable(path: &Path) -> Result<PathBuf, ViewError> {
    let path = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = path.parent().unwrap_or(Path::new("/"));
    let name = path.file_name().unwrap_or_default();
    let fd = fs::File::open(dir).map_err(|source| ViewError::Open {
        path: dir.to_path_buf(),
        source,
    })?;
    // Held for the daemon's lifetime: the policy is read again on every reload.
    let fd = fd.into_raw_fd();
    Ok(PathBuf::from(format!("/proc/self/fd/{fd}")).join(name))
}

/// The container runtime that marks this process's filesystem or environment, if any.
pub fn container_marker() -> Option<String> {
    if std::env::var_os("KUBERNETES_SERVICE_HOST").is_some() {
        return Some("kubernetes".into());
    }
    if Path::new("/run/.containerenv").exists() {
        return Some("podman".into());
    }
    if Path::new("/.dockerenv").exists() {
        return Some("docker".into());
    }
    std::env::var("container").ok().filter(|c| !c.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_policy_stays_reachable_through_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("policy.yaml");
        fs::write(&file, "x").unwrap();
        let kept = keep_reachable(&file).unwrap();
        assert!(kept.starts_with("/proc/self/fd/"), "{}", kept.display());
        assert_eq!(fs::read_to_string(&kept).unwrap(), "x");
    }

    #[test]
    fn outside_a_container_the_view_is_our_own() {
        if container_marker().is_some() {
            return;
        }
        let e = enter(ViewChoice::Auto, Some(Path::new("/etc/guard/policy.yaml"))).unwrap();
        assert_eq!(e.view.view, "own");
        assert!(!e.own_files_outside);
        assert_eq!(
            e.policy.as_deref(),
            Some(Path::new("/etc/guard/policy.yaml"))
        );
    }
}
