//! Decoding self-protection records ([`SelfEvent`]) into the event log's JSON.

use guard_common::{
    decision::Outcome,
    event::EventKind,
    selfprot::{SelfEvent, op},
};

use super::{Decision, DecodeCtx, DecodeError, Decoded, Object, c_str, read_pod};
use crate::policy::{Action, Mode};

/// Name of the rule in self-protection events.
pub const RULE: &str = "guard-self-protection";
/// Name of the rule that keeps a held (frozen) tree held.
pub const HOLD_RULE: &str = "guard:hold";

/// Decode a [`SelfEvent`].
pub fn decode(raw: &[u8], _ctx: &DecodeCtx<'_>) -> Result<Decoded, DecodeError> {
    let ev: SelfEvent = read_pod(raw)?;
    let mut d = Decoded::new(EventKind::SelfProtect, ev.header);
    let comm = c_str(&ev.comm);
    d.comm = (!comm.is_empty()).then_some(comm);
    let (operation, hook) = match ev.op {
        op::SIGNAL => (
            format!("signal {}", signal_name(ev.signal)),
            "signal_generate",
        ),
        op::TRACED => ("ptrace".to_owned(), "signal_generate"),
        op::TRACER_KILLED => ("ptrace".to_owned(), "sched_process_wait"),
        op::LSM_SIGNAL => (
            format!("signal {}", signal_name(ev.signal)),
            "lsm_task_kill",
        ),
        op::LSM_PTRACE => ("ptrace".to_owned(), "lsm_ptrace_access_check"),
        op::FMOD_PTRACE => ("ptrace".to_owned(), "security_ptrace_access_check"),
        op::LSM_BPF => (format!("bpf command {}", ev.signal), "lsm_bpf"),
        op::FMOD_BPF => (format!("bpf command {}", ev.signal), "security_bpf"),
        op::BPF_CAP => (
            format!("bpf() needing capability {}", cap_name(ev.signal)),
            "cap_capable",
        ),
        op::LSM_THAW => ("signal SIGCONT".to_owned(), "lsm_task_kill"),
        other => (format!("op-{other}"), "unknown"),
    };
    if ev.op == op::SIGNAL || ev.op == op::LSM_SIGNAL || ev.op == op::LSM_THAW {
        d.signal = i32::try_from(ev.signal).ok();
    }
    let outcome = Outcome::from_id(ev.outcome);
    let denied = outcome == Outcome::Denied;
    d.decision = Some(Decision {
        rule: if ev.op == op::LSM_THAW {
            HOLD_RULE
        } else {
            RULE
        }
        .to_owned(),
        rule_id: None,
        action: if denied { Action::Deny } else { Action::Kill }.to_string(),
        mode: Some(Mode::Enforce.to_string()),
        result: outcome.name().to_owned(),
        hook: Some(hook.to_owned()),
    });
    d.object = Some(Object {
        path: Some(
            if matches!(ev.op, op::LSM_BPF | op::FMOD_BPF | op::BPF_CAP) {
                "bpf()".to_owned()
            } else if ev.op == op::LSM_THAW {
                format!("process {} of a held agent tree", ev.target_tgid)
            } else {
                format!("guard daemon (pid {})", ev.target_tgid)
            },
        ),
        dev: None,
        ino: None,
        operation: Some(operation),
    });
    Ok(d)
}

/// `CAP_*` name of capability number `cap`.
pub(super) fn cap_name(cap: u32) -> String {
    u8::try_from(cap)
        .ok()
        .and_then(crate::policy::Capability::from_number)
        .map_or_else(|| format!("capability {cap}"), |c| c.to_string())
}

fn signal_name(sig: u32) -> String {
    i32::try_from(sig)
        .ok()
        .and_then(|s| nix::sys::signal::Signal::try_from(s).ok())
        .map_or_else(|| sig.to_string(), |s| s.as_str().to_owned())
}
