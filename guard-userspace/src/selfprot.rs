//! Self-protection of the daemon on kernels without BPF LSM.
//!
//! - Kernel (guard-ebpf `probes/guard_self.rs`, pinned): a tagged process that signals the
//!   daemon is killed before its system call returns; a tagged tracer is killed at its first
//!   wait; a stop signal from a tagged process is undone (the daemon sends itself SIGCONT).
//! - Process: the daemon is not dumpable (no core dumps, no ptrace or `/proc/PID/mem` for
//!   anyone without `CAP_SYS_PTRACE`), ignores the signals it has no use for, and ignores a
//!   SIGTERM, SIGINT or SIGHUP that the kernel counted as coming from a tagged process.
//! - Files: the policy, the event log, the daemon binary and the pin directory are protected
//!   by internal path rules (see [`internal_rules`]); removed pins are pinned again from the
//!   descriptors the daemon holds ([`crate::pins`]).
//! - `guard run` trees: a seccomp filter denies `bpf`, and `ptrace`, `process_vm_*`, `kill`,
//!   `tgkill`, `pidfd_open` aimed at the daemon ([`crate::seccomp`]).

use std::path::PathBuf;

use aya::{
    Ebpf,
    maps::{Array, MapData, MapError},
};
use guard_common::{
    event::EventKind,
    maps::{self, self_programs},
    selfprot::SelfState,
};
use serde::{Deserialize, Serialize};

use crate::{
    events::{Decision, Decoded, Object},
    loader::{
        Attacher,
        table::{self, Family, Kind},
    },
    policy::{Action, CompiledPathRule, Mode, PathSpec},
};

pub use crate::events::selfprot::RULE;

/// What attached, and why not the rest.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SelfAttached {
    /// Tracepoints attached.
    pub attached: Vec<String>,
    /// Tracepoints this kernel does not have (`cap_capable` before 6.13).
    #[serde(default)]
    pub unavailable: Vec<String>,
    pub error: Option<String>,
    /// Fallback tier: `bpf()` of tagged processes is refused (`fmod_ret` of `security_bpf`).
    #[serde(default)]
    pub bpf_refused: bool,
    /// Why it is not, on the fallback tier.
    #[serde(default)]
    pub bpf_missing: Option<String>,
}

impl SelfAttached {
    /// Everything the kernel has is attached.
    pub fn complete(&self) -> bool {
        self.attached.len() + self.unavailable.len() == self_programs::TRACEPOINTS.len()
    }

    /// What stops a tagged process from reaching guard's maps and links with `bpf()`.
    pub fn bpf_coverage(&self, tier: crate::kernel::Tier) -> String {
        if tier == crate::kernel::Tier::BpfLsm {
            return "enforced: every bpf() call of a tagged process is refused (lsm/bpf)".into();
        }
        if self.bpf_refused {
            return "enforced: every bpf() call of a tagged process is refused (fmod_ret of \
                    security_bpf, the function that runs the LSM bpf hook)"
                .into();
        }
        if self.attached.iter().any(|h| h == "cap_capable") {
            return "kill: a tagged process whose bpf() call needs a capability dies before it \
                    returns (cap_capable); opening a pin needs one (the pin directory is mode \
                    000), and so does reaching a map or link by id"
                .into();
        }
        format!(
            "not covered: a tagged root process can open guard's pinned maps and links with \
             bpf() (this kernel has no cap_capable tracepoint, Linux 6.13, and the fmod_ret \
             program on security_bpf is not attached: {}); guard run trees cannot (seccomp)",
            self.bpf_missing.as_deref().unwrap_or("not tried")
        )
    }
}

/// The self-protection maps the daemon writes and reads.
pub struct SelfMaps {
    state: Array<MapData, SelfState>,
    signals: Array<MapData, u64>,
}

impl SelfMaps {
    pub fn take(ebpf: &mut Ebpf) -> Result<Self, (&'static str, MapError)> {
        use crate::loader::take_map as take;
        Ok(Self {
            state: take(ebpf, maps::SELF_STATE)?,
            signals: take(ebpf, maps::SELF_SIGNALS)?,
        })
    }

    fn read_state(&self) -> SelfState {
        self.state.get(&0, 0).unwrap_or_default()
    }

    /// Protect `tgid` from now on (a restarted daemon takes over from the old one).
    pub fn set_daemon(&mut self, tgid: u32) -> Result<(), MapError> {
        let state = SelfState {
            daemon_tgid: tgid,
            ..self.read_state()
        };
        self.state.set(0, state, 0)
    }

    /// The count of policy changes by tagged processes an administrator has answered.
    pub fn policy_changes_seen(&self) -> u32 {
        self.read_state().policy_changes_seen
    }

    pub fn set_policy_changes_seen(&mut self, n: u32) -> Result<(), MapError> {
        let state = SelfState {
            policy_changes_seen: n,
            ..self.read_state()
        };
        self.state.set(0, state, 0)
    }

    /// How many times tagged processes sent the daemon `sig`.
    pub fn tagged_signals(&self, sig: i32) -> u64 {
        u32::try_from(sig)
            .ok()
            .and_then(|s| self.signals.get(&s, 0).ok())
            .unwrap_or(0)
    }
}

/// Attach the self-protection programs. Failures are reported, not returned: `guard
/// status` says what is missing.
/// On the fallback tier (`fallback`), also the `fmod_ret` program that refuses tagged
/// processes `bpf()`, where the kernel takes it.
pub fn attach(
    at: &mut Attacher<'_>,
    offsets_error: Option<String>,
    fallback: bool,
) -> SelfAttached {
    let mut a = SelfAttached::default();
    let mut errors: Vec<String> = offsets_error
        .map(|e| format!("kernel BTF: {e}"))
        .into_iter()
        .collect();
    for row in table::family(Family::SelfProtect) {
        let Kind::TpBtf(tracepoint) = row.kind else {
            continue;
        };
        match at.attach(&row) {
            Ok(()) => a.attached.push(tracepoint.to_owned()),
            Err(crate::loader::AttachError::NoHook) => a.unavailable.push(tracepoint.to_owned()),
            Err(e) => errors.push(format!("{}: {e}", row.hook())),
        }
    }
    if !errors.is_empty() {
        a.error = Some(errors.join("; "));
    }
    for row in table::family(Family::SelfBpf).iter().filter(|_| fallback) {
        match at.attach(row) {
            Ok(()) => a.bpf_refused = true,
            Err(e) => a.bpf_missing = Some(format!("{}: {e}", row.hook())),
        }
    }
    a
}

/// A userspace decision about the daemon's API: a tagged caller asked for something other
/// than the read-only calls and tagging itself.
pub fn api_denied(header: guard_common::event::EventHeader, what: &str) -> Decoded {
    let mut d = Decoded::new(EventKind::SelfProtect, header);
    d.decision = Some(Decision {
        rule: RULE.to_owned(),
        rule_id: None,
        action: Action::Deny.to_string(),
        mode: Some(Mode::Enforce.to_string()),
        result: "denied".to_owned(),
        hook: Some("api".to_owned()),
    });
    d.object = Some(Object {
        path: Some("guard API socket".to_owned()),
        dev: None,
        ino: None,
        operation: Some(what.to_owned()),
    });
    d
}

/// A pin put back by the pin keeper, as an event.
pub fn pin_restored(r: &crate::pins::Restored) -> Decoded {
    daemon_decision(
        RULE_PINS,
        "restore",
        if r.ok { "restored" } else { "restore-failed" },
        "pin-keeper",
        &r.path,
        "delete",
    )
}

/// `dev.tty.legacy_tiocsti` found at 1 again and set back to 0 (or not), as an event.
pub fn tiocsti_restored(ok: bool) -> Decoded {
    daemon_decision(
        crate::events::deputy::RULE_TERMINAL_INPUT,
        "restore",
        if ok { "restored" } else { "restore-failed" },
        "sysctl-keeper",
        std::path::Path::new(crate::tiocsti::SYSCTL),
        "set to 1 (TIOCSTI allowed again)",
    )
}

/// A change of the policy file the daemon did not apply on its own, as an event.
pub fn policy_refused(path: &std::path::Path, why: &str) -> Decoded {
    daemon_decision(
        RULE_POLICY,
        "deny",
        "denied",
        "policy-watch",
        path,
        &format!("apply a changed policy file: {why}"),
    )
}

/// An event for a decision the daemon made on its own, about no process.
fn daemon_decision(
    rule: &str,
    action: &str,
    result: &str,
    hook: &str,
    path: &std::path::Path,
    operation: &str,
) -> Decoded {
    let header = guard_common::event::EventHeader {
        kind: EventKind::SelfProtect as u32,
        agent_id: u32::MAX,
        time_ns: crate::clock::boot_ns(),
        proc: guard_common::ProcKey::default(),
        root: guard_common::ProcKey::default(),
        ppid: 0,
        uid: u32::MAX,
    };
    let mut d = Decoded::new(EventKind::SelfProtect, header);
    d.decision = Some(Decision {
        rule: rule.to_owned(),
        rule_id: None,
        action: action.to_owned(),
        mode: Some(Mode::Enforce.to_string()),
        result: result.to_owned(),
        hook: Some(hook.to_owned()),
    });
    d.object = Some(Object {
        path: Some(path.display().to_string()),
        dev: None,
        ino: None,
        operation: Some(operation.to_owned()),
    });
    d
}

/// Signals the daemon has no use for, whose default action would end or stop it: ignored.
/// (A real fault still kills it: the kernel resets an ignored synchronous fault signal.)
const IGNORED_SIGNALS: [libc::c_int; 13] = [
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGVTALRM,
    libc::SIGPROF,
    libc::SIGIO,
    libc::SIGPWR,
    libc::SIGSTKFLT,
    libc::SIGXCPU,
    libc::SIGXFSZ,
    libc::SIGQUIT,
    libc::SIGTSTP,
    libc::SIGTTIN,
];

/// Harden the daemon process: not dumpable, and deaf to signals it does not use. Call before
/// any thread starts.
pub fn harden_process() -> std::io::Result<()> {
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    for sig in IGNORED_SIGNALS
        .into_iter()
        .chain([libc::SIGTTOU])
        .chain(libc::SIGRTMIN() + 2..=libc::SIGRTMAX())
    {
        // SAFETY: installing SIG_IGN has no preconditions.
        unsafe { libc::signal(sig, libc::SIG_IGN) };
    }
    Ok(())
}

/// Tells a termination or reload signal a tagged process sent (counted by the kernel) from
/// one an administrator sent.
pub struct SignalSources {
    seen: [u64; 3],
}

/// The signals the daemon acts on.
pub const HANDLED: [i32; 3] = [libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

impl SignalSources {
    pub fn new(maps: Option<&SelfMaps>) -> Self {
        let mut seen = [0; 3];
        if let Some(m) = maps {
            for (slot, sig) in seen.iter_mut().zip(HANDLED) {
                *slot = m.tagged_signals(sig);
            }
        }
        Self { seen }
    }

    /// Whether the latest `sig` came from a tagged process (and should be ignored).
    pub fn from_tagged(&mut self, maps: Option<&SelfMaps>, sig: i32) -> bool {
        let (Some(m), Some(i)) = (maps, HANDLED.iter().position(|s| *s == sig)) else {
            return false;
        };
        let now = m.tagged_signals(sig);
        let tagged = now > self.seen[i];
        self.seen[i] = now;
        tagged
    }
}

/// Names of the internal rules, shown by `guard status` like the policy's own.
pub const RULE_POLICY: &str = "guard:policy";
pub const RULE_EVENT_LOG: &str = "guard:event-log";
pub const RULE_BINARY: &str = "guard:binary";
pub const RULE_PINS: &str = "guard:pins";
pub const RULE_UI_TOKENS: &str = "guard:ui-tokens";
/// Ids of internal rules start here, far above any policy's; each rule keeps its id (the
/// policy's is the one the kernel counts changes of).
pub const FIRST_INTERNAL_ID: u32 = guard_common::file::POLICY_RULE_ID;

/// What guard protects of itself, whatever the policy says.
pub struct OwnFiles {
    pub policy: Option<PathBuf>,
    pub event_log: PathBuf,
    pub binary: Option<PathBuf>,
    pub pin_dir: PathBuf,
    /// The review page's token files (`--ui-addr`): not even read by a tagged process.
    pub ui_tokens: Option<PathBuf>,
}

/// Internal path rules: write and delete of guard's own files denied to tagged processes
/// (opens for writing fail with EPERM; delete, rename and truncate kill on detect).
pub fn internal_rules(own: &OwnFiles) -> Vec<CompiledPathRule> {
    let mut log_paths = vec![own.event_log.display().to_string()];
    if let (Some(dir), Some(name)) = (own.event_log.parent(), own.event_log.file_name()) {
        // Rotated logs: events.jsonl.1, events.jsonl.2, …
        log_paths.push(format!("{}/{}.*", dir.display(), name.to_string_lossy()));
    }
    let changes = crate::policy::WRITE | crate::policy::DELETE;
    let shown = |p: &Option<PathBuf>| p.iter().map(|p| p.display().to_string()).collect();
    let rules: Vec<(&str, Vec<String>, u32)> = vec![
        (RULE_POLICY, shown(&own.policy), changes),
        (RULE_EVENT_LOG, log_paths, changes),
        (RULE_BINARY, shown(&own.binary), changes),
        (RULE_PINS, vec![own.pin_dir.display().to_string()], changes),
        (
            RULE_UI_TOKENS,
            shown(&own.ui_tokens),
            changes | crate::policy::READ,
        ),
    ];
    rules
        .into_iter()
        .zip(FIRST_INTERNAL_ID..)
        .filter(|((_, paths, _), _)| !paths.is_empty())
        .map(|((name, paths, access), id)| CompiledPathRule {
            id,
            name: name.to_owned(),
            access,
            action: Action::Deny,
            mode: Mode::Enforce,
            paths: paths
                .into_iter()
                .filter_map(|p| PathSpec::internal(&p))
                .collect(),
        })
        .collect()
}

/// Whether `name` is an internal rule's.
pub fn is_internal(name: &str) -> bool {
    name.starts_with("guard:")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_rules_cover_guards_own_files() {
        let rules = internal_rules(&OwnFiles {
            policy: Some("/etc/guard/policy.yaml".into()),
            event_log: "/var/log/guard/events.jsonl".into(),
            binary: Some("/usr/local/bin/guard".into()),
            pin_dir: "/sys/fs/bpf/guard".into(),
            ui_tokens: Some("/run/guard/ui".into()),
        });
        let names: Vec<&str> = rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            [
                RULE_POLICY,
                RULE_EVENT_LOG,
                RULE_BINARY,
                RULE_PINS,
                RULE_UI_TOKENS
            ]
        );
        assert_eq!(rules[4].access & crate::policy::READ, crate::policy::READ);
        assert!(rules[..4].iter().all(|r| r.id >= FIRST_INTERNAL_ID
            && r.mode == Mode::Enforce
            && r.access == crate::policy::WRITE | crate::policy::DELETE));
        let log: Vec<&str> = rules[1].paths.iter().map(PathSpec::as_str).collect();
        assert_eq!(
            log,
            [
                "/var/log/guard/events.jsonl",
                "/var/log/guard/events.jsonl.*"
            ]
        );
        // Without a policy file (embedded default) there is no policy rule.
        let rules = internal_rules(&OwnFiles {
            policy: None,
            event_log: "/l/e".into(),
            binary: None,
            pin_dir: "/p".into(),
            ui_tokens: None,
        });
        assert_eq!(rules.len(), 2);
    }
}
