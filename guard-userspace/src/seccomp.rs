//! The seccomp filter `guard run` installs for its tree, just before it execs the command: a
//! synchronous EPERM, held by the kernel for every descendant (seccomp filters are inherited
//! and cannot be removed), even for root and with the daemon stopped.
//!
//! Denied: `bpf` (a tagged tree has no business loading programs or opening guard's pins),
//! `ioctl(TIOCSTI)` and `ioctl(TIOCLINUX)` (keystrokes pushed into a terminal),
//! and, aimed at the daemon's pid, `kill` (also `kill(-1)` and its process group), `tgkill`,
//! `ptrace`, `pidfd_open`, `process_vm_readv` and `process_vm_writev`. `tkill` is denied
//! outright (obsolete; threads are signalled with `tgkill`). The pid is the daemon's when the
//! tree starts: a restarted daemon has another, which the kernel side still covers
//! (signals and tracers are killed on detect, and the daemon is not dumpable, which a tree
//! without `CAP_SYS_PTRACE` cannot get around).

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("no seccomp support for architecture {0}")]
    Arch(&'static str),
    #[error("building the seccomp filter: {0}")]
    Build(#[source] seccompiler::BackendError),
    #[error("compiling the seccomp filter: {0}")]
    Compile(#[source] seccompiler::BackendError),
    #[error("installing the seccomp filter: {0}")]
    Apply(#[source] seccompiler::Error),
}

/// The filter protecting `daemon_pid` (0: no daemon pid known; only `bpf` and `tkill`).
pub fn filter(daemon_pid: u32) -> Result<BpfProgram, SeccompError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| SeccompError::Arch(std::env::consts::ARCH))?;
    let build = SeccompError::Build;
    let eq = |arg: u8, value: u32| {
        SeccompCondition::new(
            arg,
            SeccompCmpArgLen::Dword,
            SeccompCmpOp::Eq,
            u64::from(value),
        )
        .and_then(|c| SeccompRule::new(vec![c]))
    };
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    // An empty rule list matches every call.
    rules.insert(libc::SYS_bpf, vec![]);
    rules.insert(libc::SYS_tkill, vec![]);
    // Keystrokes pushed into a terminal (the human's, read by their shell after the agent
    // exits): no agent needs them.
    rules.insert(
        libc::SYS_ioctl,
        vec![
            eq(1, guard_common::deputy::TIOCSTI).map_err(build)?,
            eq(1, guard_common::deputy::TIOCLINUX).map_err(build)?,
        ],
    );
    if daemon_pid != 0 {
        let pid = daemon_pid;
        let neg = (pid as i32).wrapping_neg() as u32;
        rules.insert(
            libc::SYS_kill,
            vec![
                eq(0, pid).map_err(build)?,
                eq(0, neg).map_err(build)?,
                eq(0, u32::MAX).map_err(build)?,
            ],
        );
        for (nr, arg) in [
            (libc::SYS_tgkill, 0),
            (libc::SYS_ptrace, 1),
            (libc::SYS_pidfd_open, 0),
            (libc::SYS_process_vm_readv, 0),
            (libc::SYS_process_vm_writev, 0),
        ] {
            rules.insert(nr, vec![eq(arg, pid).map_err(build)?]);
        }
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(libc::EPERM as u32),
        arch,
    )
    .map_err(build)?;
    filter.try_into().map_err(SeccompError::Compile)
}

/// Install the filter on the calling thread (needs `no_new_privs` or `CAP_SYS_ADMIN`, which
/// `guard run` has at this point: it sets the first for ordinary users, and root keeps its
/// effective capabilities until the exec).
pub fn install(daemon_pid: u32) -> Result<(), SeccompError> {
    let prog = filter(daemon_pid)?;
    if seccompiler::apply_filter(&prog).is_ok() {
        return Ok(());
    }
    // Neither (an ordinary user with an empty capability list to drop): no_new_privs, which
    // only takes rights away, makes the filter installable.
    // SAFETY: prctl with integer arguments.
    unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) };
    seccompiler::apply_filter(&prog).map_err(SeccompError::Apply)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_for_this_architecture() {
        assert!(!filter(1234).unwrap().is_empty());
        assert!(filter(0).unwrap().len() < filter(1234).unwrap().len());
    }
}
