//! The loader table: every program of the object, declared once with its kind, the family that
//! attaches it, the tier it serves and whether the daemon can do without it. A new hook is a
//! row here plus its probe in guard-ebpf.

use guard_common::maps::{file_programs, lsm_programs, programs, self_programs};

use super::sys::bpf_attach_type;

/// How a program is loaded and attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// `tp_btf/<tracepoint>`.
    TpBtf(&'static str),
    /// `lsm/<hook>`.
    Lsm(&'static str),
    /// `fexit/<kernel function>`.
    FExit(&'static str),
    /// `fentry/<kernel function>`.
    FEntry(&'static str),
    /// `fmod_ret/<kernel function>` (a `security_*` function): compiled in an `fentry`
    /// section, loaded by hand with the modify-return attach type (`by_hand.rs`).
    FModRet(&'static str),
    /// cgroup `sock_addr` (connect4/6, sendmsg4/6) on the cgroup v2 root.
    SockAddr,
    /// cgroup `sock_create` on the cgroup v2 root.
    SockCreate,
    /// cgroup `skb` egress on the cgroup v2 root.
    Egress,
    /// cgroup `device` on the cgroup v2 root (a link aya 0.14 cannot pin: made by hand).
    Device,
    /// cgroup `sock_addr` for unix sockets (Linux ≥ 6.7), an attach type aya 0.14 lacks:
    /// loaded from the object by hand (`by_hand.rs`).
    Unix(bpf_attach_type),
}

/// Who attaches a program, and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// Process trackers: fork, exec, exit.
    Tracker,
    /// The fallback tier's kill programs, where the cgroup programs cannot signal: one way of
    /// `crate::killer` is loaded at start and attached while a policy kills.
    Killer,
    /// Fallback network hooks.
    Net,
    /// Fallback kill-on-detect for destructive file operations.
    FileDetect,
    /// Destructive file operations refused on the fallback tier (`fmod_ret`), as on bpf-lsm.
    FileRefuse,
    /// Raw block-device opens (both tiers).
    FileDevice,
    /// Signals and ptrace aimed at the daemon (both tiers).
    SelfProtect,
    /// `bpf()` of tagged processes refused on the fallback tier (`fmod_ret`).
    SelfBpf,
    /// The bpf-lsm tier's hooks.
    LsmNet,
    LsmFile,
    LsmSelf,
    /// No deputies on the bpf-lsm tier: keystrokes into terminals, the capability ceiling
    /// (process access is decided by the self-protection hook `ptrace_access_check`).
    LsmDeputy,
    /// Files tagged processes read, for the secret scan, on the fallback tier (the bpf-lsm
    /// tier's `file_open` program reports them itself).
    SecretReads,
    /// Deferred execution on the fallback tier: the writes of tagged processes, and whoever
    /// runs or interprets what they wrote (the bpf-lsm tier's own hooks do it there).
    Deferred,
    /// No deputies on the fallback tier (`fmod_ret`): process access and keystrokes into
    /// terminals, refused as on the bpf-lsm tier.
    Deputy,
}

/// What a family's programs do when they hit an internal error (an unreadable kernel pointer,
/// a full map, offsets missing), and the counter that counts it. Every one lets the operation
/// through: refusing would break the host's own processes for a fault of guard's, so each is
/// counted and shown in `guard status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct OnError {
    /// `allow` (fail open) or `deny` (fail closed).
    pub verdict: &'static str,
    /// What is lost when it happens.
    pub effect: &'static str,
    /// The counter (`guard status` counters) that counts it.
    pub counter: &'static str,
}

impl Family {
    pub fn on_error(self) -> OnError {
        let allow = |effect, counter| OnError {
            verdict: "allow",
            effect,
            counter,
        };
        match self {
            Self::Tracker => allow(
                "a fork or exec goes untagged (a fork into a full tag map is not an error: \
                 the child is killed, see tag map)",
                "probe_errors",
            ),
            Self::Killer => allow("the denied process is not killed", "net_kill_failed"),
            Self::Net | Self::LsmNet => allow("the connect or send goes through", "net_fail_open"),
            Self::FileDetect | Self::FileRefuse | Self::FileDevice | Self::LsmFile => {
                allow("the file operation goes through", "file_probe_errors")
            }
            Self::SelfProtect | Self::LsmSelf => {
                allow("the signal or trace is not stopped", "probe_errors")
            }
            Self::SelfBpf => allow("the bpf() call goes through", "probe_errors"),
            Self::LsmDeputy => allow("the keystroke or capability is not refused", "probe_errors"),
            Self::SecretReads => allow("a file read is not scanned for secrets", "probe_errors"),
            Self::Deferred => allow(
                "a write is not remembered, or the runner of an agent-written file goes untagged",
                "probe_errors",
            ),
            Self::Deputy => allow(
                "the process access or keystroke is not refused",
                "probe_errors",
            ),
        }
    }

    /// How `guard status` names the family.
    pub fn label(self) -> &'static str {
        match self {
            Self::Tracker => "process trackers",
            Self::Killer => "kill programs",
            Self::Net => "network (cgroup)",
            Self::LsmNet => "network (LSM)",
            Self::FileDetect => "file kill-on-detect",
            Self::FileRefuse => "files refused (fmod_ret)",
            Self::FileDevice => "raw block devices",
            Self::LsmFile => "files (LSM)",
            Self::SelfProtect => "self-protection",
            Self::SelfBpf => "bpf() refused (fmod_ret)",
            Self::LsmSelf => "self-protection (LSM)",
            Self::LsmDeputy => "no deputies (LSM)",
            Self::SecretReads => "secret scan of reads",
            Self::Deferred => "deferred execution",
            Self::Deputy => "no deputies (fmod_ret)",
        }
    }

    pub const ALL: [Self; 15] = [
        Self::Tracker,
        Self::Killer,
        Self::Net,
        Self::LsmNet,
        Self::FileDetect,
        Self::FileRefuse,
        Self::FileDevice,
        Self::LsmFile,
        Self::SelfProtect,
        Self::SelfBpf,
        Self::LsmSelf,
        Self::LsmDeputy,
        Self::SecretReads,
        Self::Deferred,
        Self::Deputy,
    ];
}

/// The tiers a program serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Serves {
    Both,
    BpfLsm,
    Fallback,
}

impl Family {
    pub fn serves(self) -> Serves {
        match self {
            Self::Tracker | Self::FileDevice | Self::SelfProtect => Serves::Both,
            Self::Killer
            | Self::Net
            | Self::FileDetect
            | Self::FileRefuse
            | Self::SecretReads
            | Self::Deferred
            | Self::SelfBpf
            | Self::Deputy => Serves::Fallback,
            Self::LsmNet | Self::LsmFile | Self::LsmSelf | Self::LsmDeputy => Serves::BpfLsm,
        }
    }
}

/// Whether the daemon can run without a program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// A failure stops the start (or, for the bpf-lsm tier, the tier).
    Required,
    /// A failure is reported in `guard status` and the rest goes on.
    Optional,
    /// Attached where the kernel has the hook; its absence is not a failure (another hook
    /// covers the same operations there).
    WhereHookExists,
}

/// One program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Row {
    /// Function name in guard-ebpf.
    pub name: &'static str,
    /// Link pin name under `links/` (the same except for program variants of one hook).
    pub pin: &'static str,
    pub kind: Kind,
    pub family: Family,
    pub need: Need,
}

impl Row {
    const fn new(name: &'static str, kind: Kind, family: Family, need: Need) -> Self {
        Self {
            name,
            pin: name,
            kind,
            family,
            need,
        }
    }

    /// How status and errors name the hook: `tp_btf/sched_process_exec`, `lsm/file_open`, …
    pub fn hook(&self) -> String {
        match self.kind {
            Kind::TpBtf(tp) => format!("tp_btf/{tp}"),
            Kind::Lsm(hook) => format!("lsm/{hook}"),
            Kind::FExit(function) => format!("fexit/{function}"),
            Kind::FEntry(function) => format!("fentry/{function}"),
            Kind::FModRet(function) => format!("fmod_ret/{function}"),
            Kind::SockAddr | Kind::Unix(_) => format!("cgroup/{}", self.name),
            Kind::SockCreate => "cgroup/sock_create".into(),
            Kind::Egress => "cgroup_skb/egress".into(),
            Kind::Device => "cgroup/dev".into(),
        }
    }
}

/// Every program of the object.
pub fn table() -> Vec<Row> {
    use Family as F;
    use Need::{Optional, Required, WhereHookExists};
    let mut rows = vec![
        Row::new(
            programs::FORK,
            Kind::TpBtf("sched_process_fork"),
            F::Tracker,
            Required,
        ),
        Row::new(
            programs::EXEC,
            Kind::TpBtf("sched_process_exec"),
            F::Tracker,
            Required,
        ),
        Row::new(
            programs::EXIT,
            Kind::TpBtf("sched_process_exit"),
            F::Tracker,
            Required,
        ),
        Row::new(
            programs::CGROUP_JOIN,
            Kind::TpBtf("cgroup_attach_task"),
            F::Tracker,
            Required,
        ),
        // Kernels before 6.16 pass no `group_dead`: this variant is pinned as the exit tracker.
        Row {
            pin: programs::EXIT,
            ..Row::new(
                programs::EXIT_NO_GROUP_DEAD,
                Kind::TpBtf("sched_process_exit"),
                F::Tracker,
                Required,
            )
        },
        Row::new(
            programs::KILL_AFTER_SOCK_ADDR,
            Kind::FExit("__cgroup_bpf_run_filter_sock_addr"),
            F::Killer,
            Required,
        ),
        Row::new(
            programs::KILL_AFTER_SOCK_CREATE,
            Kind::FExit("__cgroup_bpf_run_filter_sk"),
            F::Killer,
            Required,
        ),
        Row::new(
            programs::SYS_EXIT,
            Kind::TpBtf("sys_exit"),
            F::Killer,
            Required,
        ),
    ];
    for name in [
        programs::CONNECT4,
        programs::CONNECT6,
        programs::SENDMSG4,
        programs::SENDMSG6,
    ] {
        rows.push(Row::new(name, Kind::SockAddr, F::Net, Required));
    }
    rows.push(Row::new(
        programs::SOCK_CREATE,
        Kind::SockCreate,
        F::Net,
        Optional,
    ));
    rows.push(Row::new(programs::EGRESS, Kind::Egress, F::Net, Optional));
    for (name, tp) in programs::SECRET_READS {
        rows.push(Row::new(name, Kind::TpBtf(tp), F::SecretReads, Optional));
    }
    for (name, function) in programs::DEFERRED {
        rows.push(Row::new(
            name,
            Kind::FEntry(function),
            F::Deferred,
            Optional,
        ));
    }
    rows.push(Row::new(
        programs::CONNECT_UNIX,
        Kind::Unix(bpf_attach_type::BPF_CGROUP_UNIX_CONNECT),
        F::Net,
        WhereHookExists,
    ));
    rows.push(Row::new(
        programs::SENDMSG_UNIX,
        Kind::Unix(bpf_attach_type::BPF_CGROUP_UNIX_SENDMSG),
        F::Net,
        WhereHookExists,
    ));
    for (name, function) in programs::PEER_UNIX {
        rows.push(Row::new(
            name,
            Kind::FModRet(function),
            F::Net,
            WhereHookExists,
        ));
    }
    for (name, tp) in file_programs::TRACEPOINTS {
        rows.push(Row::new(name, Kind::TpBtf(tp), F::FileDetect, Optional));
    }
    for (name, function) in file_programs::REFUSE {
        let need = if file_programs::REFUSE_OPTIONAL.contains(&function) {
            WhereHookExists
        } else {
            Optional
        };
        rows.push(Row::new(name, Kind::FModRet(function), F::FileRefuse, need));
    }
    rows.push(Row::new(
        file_programs::DEVICE,
        Kind::Device,
        F::FileDevice,
        Optional,
    ));
    for (name, tp) in self_programs::TRACEPOINTS {
        rows.push(Row::new(name, Kind::TpBtf(tp), F::SelfProtect, Optional));
    }
    for (name, function) in programs::DEPUTY {
        let need = if name == programs::DEPUTY_IOCTL_COMPAT {
            WhereHookExists
        } else {
            Optional
        };
        rows.push(Row::new(name, Kind::FModRet(function), F::Deputy, need));
    }
    rows.push(Row::new(
        programs::SELF_BPF,
        Kind::FModRet(programs::SELF_BPF_FUNCTION),
        F::SelfBpf,
        WhereHookExists,
    ));
    for (family, list) in [
        (F::LsmNet, &lsm_programs::NET[..]),
        (F::LsmFile, &lsm_programs::FILE[..]),
        (F::LsmSelf, &lsm_programs::SELF[..]),
        (F::LsmDeputy, &lsm_programs::DEPUTY[..]),
    ] {
        for (name, hook) in list {
            let need = if lsm_programs::OPTIONAL.contains(hook) {
                WhereHookExists
            } else if family == F::LsmDeputy {
                // Newer hooks: the tier stands without them, and status says so.
                Optional
            } else {
                Required
            };
            rows.push(Row::new(name, Kind::Lsm(hook), family, need));
        }
    }
    rows
}

/// The rows of `family`, in table order.
pub fn family(family: Family) -> Vec<Row> {
    table().into_iter().filter(|r| r.family == family).collect()
}

/// The row of program `name`.
pub fn row(name: &str) -> Option<Row> {
    table().into_iter().find(|r| r.name == name)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_program_of_the_object_has_one_row() {
        let rows = table();
        let names: BTreeSet<&str> = rows.iter().map(|r| r.name).collect();
        assert_eq!(names.len(), rows.len(), "a program is declared twice");
        let all: BTreeSet<&str> = guard_common::maps::ALL_PROGRAMS.into_iter().collect();
        assert_eq!(names, all);
    }

    #[test]
    fn pins_are_unique_but_for_variants_of_one_hook() {
        let rows = table();
        for r in &rows {
            let sharing: Vec<&Row> = rows.iter().filter(|o| o.pin == r.pin).collect();
            assert!(
                sharing.len() == 1 || sharing.iter().all(|o| o.kind == r.kind),
                "{} shares its pin with another hook",
                r.name
            );
        }
    }
}
