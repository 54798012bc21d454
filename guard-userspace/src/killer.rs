//! How the fallback tier carries out the `kill` decisions of its cgroup programs. Each way
//! SIGKILLs the offender in its own context before the denied system call returns; they differ
//! in what the kernel allows and in what they cost everyone else:
//!
//! 1. in place: the cgroup program that denies calls `bpf_send_signal` (kernels whose verifier
//!    accepts the helper there, probed at start). No further program, no cost.
//! 2. fexit: the cgroup program records a pending kill, and `fexit` programs on the kernel
//!    functions that ran it (`__cgroup_bpf_run_filter_sock_addr`, `…_sk`) send the signal.
//!    They run on socket address operations only, while a policy kills.
//! 3. sys_exit: the same from `tp_btf/sys_exit`, for kernels that refuse fexit programs too.
//!    While attached, every system call of every thread on the host takes the slow exit path.

use guard_common::maps::programs;

/// The way `guard daemon --kill-via` asks for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum KillChoice {
    /// The cheapest way the kernel allows.
    #[default]
    Auto,
    InPlace,
    Fexit,
    SysExit,
}

/// The way in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum KillVia {
    InPlace,
    Fexit,
    SysExit,
}

impl KillVia {
    /// The ways to try for `choice`, best first, given whether cgroup programs may signal.
    pub fn candidates(choice: KillChoice, cgroup_can_signal: bool) -> &'static [KillVia] {
        match choice {
            KillChoice::Auto if cgroup_can_signal => &[Self::InPlace],
            KillChoice::Auto => &[Self::Fexit, Self::SysExit],
            KillChoice::InPlace => &[Self::InPlace],
            KillChoice::Fexit => &[Self::Fexit],
            KillChoice::SysExit => &[Self::SysExit],
        }
    }

    /// The name `--kill-via` takes.
    pub fn name(self) -> &'static str {
        match self {
            Self::InPlace => "in-place",
            Self::Fexit => "fexit",
            Self::SysExit => "sys-exit",
        }
    }

    /// The kill programs this way attaches while a policy kills (rows of the loader table).
    pub fn programs(self) -> &'static [&'static str] {
        match self {
            Self::InPlace => &[],
            Self::Fexit => &[
                programs::KILL_AFTER_SOCK_ADDR,
                programs::KILL_AFTER_SOCK_CREATE,
            ],
            Self::SysExit => &[programs::SYS_EXIT],
        }
    }

    /// For `guard status`: who sends the SIGKILL.
    pub fn describe(self) -> &'static str {
        match self {
            Self::InPlace => {
                "SIGKILL from the cgroup program that denies, before the system call returns"
            }
            Self::Fexit => {
                "SIGKILL from fexit programs on the functions that ran the cgroup programs, \
                 before the system call returns"
            }
            Self::SysExit => {
                "SIGKILL from tp_btf/sys_exit before the system call returns (while attached, \
                 every system call on the host takes the slow path)"
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_prefers_the_cheapest_way() {
        assert_eq!(
            KillVia::candidates(KillChoice::Auto, true),
            &[KillVia::InPlace]
        );
        assert_eq!(
            KillVia::candidates(KillChoice::Auto, false),
            &[KillVia::Fexit, KillVia::SysExit]
        );
        assert!(KillVia::InPlace.programs().is_empty());
    }

    #[test]
    fn every_kill_program_is_a_killer_row() {
        for via in [KillVia::Fexit, KillVia::SysExit] {
            for name in via.programs() {
                let row = crate::loader::table::row(name).expect("in the loader table");
                assert_eq!(row.family, crate::loader::Family::Killer, "{name}");
            }
        }
    }
}
