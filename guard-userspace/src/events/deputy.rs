//! Decoding no-deputies records ([`DeputyEvent`]): a tagged process reaching into a process
//! or terminal outside its tree, or using a capability of the ceiling.

use guard_common::{
    decision::Outcome,
    deputy::{DeputyEvent, TIOCSTI, op, ptrace_mode},
    event::EventKind,
};

use super::{Decision, DecodeCtx, DecodeError, Decoded, Object, c_str, read_pod};
use crate::policy::{Action, Mode};

/// Rule names of the built-in rules these records are about.
pub const RULE_PROCESS_ACCESS: &str = "guard:process-access";
pub const RULE_TERMINAL_INPUT: &str = "guard:terminal-input";
pub const RULE_CAPABILITIES: &str = "guard:capability-ceiling";

/// Decode a [`DeputyEvent`].
pub fn decode(raw: &[u8], _ctx: &DecodeCtx<'_>) -> Result<Decoded, DecodeError> {
    let ev: DeputyEvent = read_pod(raw)?;
    let mut d = Decoded::new(EventKind::Deputy, ev.header);
    let comm = c_str(&ev.comm);
    d.comm = (!comm.is_empty()).then_some(comm);
    let outcome = Outcome::from_id(ev.outcome);
    let killed = outcome != Outcome::Denied;
    let (rule, hook, path, operation) = match ev.op {
        op::PROCESS_ACCESS => (
            RULE_PROCESS_ACCESS,
            "lsm_ptrace_access_check",
            Some(process(ev.target_tgid)),
            access_mode(ev.detail),
        ),
        op::TERMINAL_INPUT => (
            RULE_TERMINAL_INPUT,
            "lsm_file_ioctl",
            None,
            if ev.detail == TIOCSTI {
                "TIOCSTI".to_owned()
            } else {
                "TIOCLINUX".to_owned()
            },
        ),
        _ => (
            RULE_CAPABILITIES,
            if killed { "cap_capable" } else { "lsm_capable" },
            None,
            super::selfprot::cap_name(ev.detail),
        ),
    };
    d.decision = Some(Decision {
        rule: rule.to_owned(),
        rule_id: None,
        action: if killed { Action::Kill } else { Action::Deny }.to_string(),
        mode: Some(Mode::Enforce.to_string()),
        result: outcome.name().to_owned(),
        hook: Some(hook.to_owned()),
    });
    d.object = Some(Object {
        path,
        dev: None,
        ino: None,
        operation: Some(match ev.syscall {
            nr if nr >= 0 => format!("{operation} in system call {nr}"),
            _ => operation,
        }),
    });
    Ok(d)
}

/// `process PID (comm)`, the comm read now (the process may be gone).
fn process(tgid: u32) -> String {
    match std::fs::read_to_string(format!("/proc/{tgid}/comm")) {
        Ok(comm) => format!("process {tgid} ({})", comm.trim_end()),
        Err(_) => format!("process {tgid}"),
    }
}

/// What a `PTRACE_MODE_*` check was for.
fn access_mode(mode: u32) -> String {
    if mode & ptrace_mode::ATTACH != 0 {
        "attach (ptrace, /proc/PID/mem, process_vm_*, pidfd_getfd)".to_owned()
    } else {
        "read (/proc/PID/environ, maps, fd, stack)".to_owned()
    }
}
