//! Decoder of the process-tracking kinds: fork, exec, agent exec, exit, and a fork the tag
//! map could not take.

use guard_common::{
    agent::recognised,
    decision::Outcome,
    event::{CHILD_KILLED, EventKind, FORK_REFUSED, ProcessEvent},
};

use super::{
    Decision, DecodeCtx, DecodeError, Decoded, Lifecycle, Object, c_str, read_pod,
    schema::Recognition,
};
use crate::policy::{Action, Mode};

/// Name of the rule in `tag_map_full` events.
pub const TAG_MAP_FULL_RULE: &str = "tag-map-full";

pub fn decode(kind: EventKind, raw: &[u8], _ctx: &DecodeCtx<'_>) -> Result<Decoded, DecodeError> {
    let ev: ProcessEvent = read_pod(raw)?;
    let mut d = Decoded::new(kind, ev.header);
    d.comm = Some(c_str(&ev.comm));
    if kind == EventKind::TagMapFull && ev.exit_code == FORK_REFUSED {
        // The fork never happened: the record is the parent's.
        d.decision = Some(Decision {
            rule: TAG_MAP_FULL_RULE.to_owned(),
            rule_id: None,
            action: Action::Deny.to_string(),
            mode: Some(Mode::Enforce.to_string()),
            result: Outcome::Denied.name().to_owned(),
            hook: Some("task_alloc".to_owned()),
        });
        d.object = Some(Object {
            path: None,
            dev: None,
            ino: None,
            operation: Some("fork".to_owned()),
        });
        return Ok(d);
    }
    if kind == EventKind::TagMapFull {
        // The process never joins the tree. A fork's child is a new tgid in a tree; an exec
        // is its own root.
        let fork = ev.header.proc != ev.header.root;
        let outcome = if ev.exit_code == CHILD_KILLED {
            Outcome::Killed
        } else {
            Outcome::KillScheduled
        };
        d.decision = Some(Decision {
            rule: TAG_MAP_FULL_RULE.to_owned(),
            rule_id: None,
            action: Action::Kill.to_string(),
            mode: Some(Mode::Enforce.to_string()),
            result: outcome.name().to_owned(),
            hook: Some(
                if fork {
                    "sched_process_fork"
                } else {
                    "sched_process_exec"
                }
                .to_owned(),
            ),
        });
        d.object = Some(Object {
            path: None,
            dev: None,
            ino: None,
            operation: Some(if fork {
                format!("fork of pid {}", ev.header.proc.tgid)
            } else {
                "agent exec".to_owned()
            }),
        });
        return Ok(d);
    }
    if kind == EventKind::AgentCgroup {
        // The process was there already: no change to the tree, only to its tag.
        d.recognised = Some(Recognition {
            by: recognised::name(ev.reason).to_owned(),
            matched: None,
        });
        return Ok(d);
    }
    d.lifecycle = Some(match kind {
        EventKind::TaggedFork => Lifecycle::Fork,
        EventKind::AgentExec => Lifecycle::Exec { agent_root: true },
        EventKind::TaggedExit => Lifecycle::Exit,
        _ => Lifecycle::Exec { agent_root: false },
    });
    let matched = c_str(&ev.script);
    let matched = (!matched.is_empty()).then_some(matched);
    if kind == EventKind::AgentExec {
        d.recognised = Some(Recognition {
            by: recognised::name(ev.reason).to_owned(),
            matched: matched.clone(),
        });
    }
    if ev.reason == recognised::SCRIPT {
        d.matched_script = matched;
    }
    if kind == EventKind::TaggedExit {
        // The kernel's exit_code is a wait status: the code in bits 8-15, or a signal.
        let status = ev.exit_code;
        match status & 0x7f {
            0 => d.exit_code = Some((status >> 8) & 0xff),
            sig => d.signal = Some(sig),
        }
    }
    Ok(d)
}

#[cfg(test)]
pub(crate) mod tests {
    use guard_common::{
        ProcKey,
        agent::NAME_LEN,
        event::{EventHeader, EventKind, ProcessEvent},
    };

    use super::super::{Clock, DecodeCtx, DecodeError, Lifecycle, decode};
    use crate::agents::{AgentNames, AgentSpec};

    pub(crate) fn raw(kind: EventKind, pid: u32, start_ns: u64, ppid: u32, comm: &str) -> Vec<u8> {
        let mut c = [0u8; 16];
        c[..comm.len()].copy_from_slice(comm.as_bytes());
        let mut script = [0u8; NAME_LEN];
        script[..6].copy_from_slice(b"claude");
        let ev = ProcessEvent {
            header: EventHeader {
                kind: kind as u32,
                agent_id: 1,
                time_ns: 5_000_000_000,
                proc: ProcKey::new(pid, start_ns),
                root: ProcKey::new(100, 1_000_000_000),
                ppid,
                uid: 1000,
            },
            comm: c,
            script,
            exit_code: 7 << 8,
            reason: guard_common::agent::recognised::SCRIPT,
        };
        // SAFETY: ProcessEvent is repr(C) plain old data with explicit padding.
        let bytes = unsafe {
            std::slice::from_raw_parts((&raw const ev).cast::<u8>(), size_of::<ProcessEvent>())
        };
        bytes.to_vec()
    }

    fn names() -> AgentNames {
        AgentNames::new(&[AgentSpec {
            id: 1,
            name: "claude-code".into(),
            executables: vec![],
            scripts: vec![],
            env: vec![],
            paths: vec![],
            cgroups: vec![],
            containers: vec![],
        }])
    }

    #[test]
    fn decodes_process_events() {
        let clock = Clock::with_offset(1_700_000_000_000_000_000);
        let names = names();
        let ctx = DecodeCtx {
            clock: &clock,
            agents: &names,
            net: &crate::events::net::NoLabels,
        };
        let d = decode(
            &raw(EventKind::TaggedFork, 200, 2_000_000_000, 100, "bash"),
            &ctx,
        )
        .unwrap();
        assert_eq!(d.kind, EventKind::TaggedFork);
        assert_eq!(d.lifecycle, Some(Lifecycle::Fork));
        assert_eq!(d.header.proc, ProcKey::new(200, 2_000_000_000));
        assert_eq!(d.header.ppid, 100);
        assert_eq!(d.comm.as_deref(), Some("bash"));
        assert_eq!(d.exit_code, None);
        assert_eq!(d.matched_script.as_deref(), Some("claude"));

        let d = decode(
            &raw(EventKind::TaggedExit, 200, 2_000_000_000, 1, "sh"),
            &ctx,
        )
        .unwrap();
        assert_eq!(d.lifecycle, Some(Lifecycle::Exit));
        assert_eq!((d.exit_code, d.signal), (Some(7), None));
        let mut killed = raw(EventKind::TaggedExit, 200, 2_000_000_000, 1, "sh");
        killed[108..112].copy_from_slice(&0i32.to_ne_bytes());
        killed[104..108].copy_from_slice(&9i32.to_ne_bytes());
        let d = decode(&killed, &ctx).unwrap();
        assert_eq!((d.exit_code, d.signal), (None, Some(9)));
        let d = decode(
            &raw(EventKind::AgentExec, 200, 2_000_000_000, 1, "sh"),
            &ctx,
        )
        .unwrap();
        assert_eq!(d.lifecycle, Some(Lifecycle::Exec { agent_root: true }));
        assert_eq!(clock.rfc3339(d.header.time_ns), "2023-11-14T22:13:25Z");
    }

    #[test]
    fn rejects_short_and_unknown_records() {
        let clock = Clock::with_offset(0);
        let names = names();
        let ctx = DecodeCtx {
            clock: &clock,
            agents: &names,
            net: &crate::events::net::NoLabels,
        };
        let full = raw(EventKind::TaggedExec, 1, 0, 0, "x");
        assert!(matches!(
            decode(&full[..40], &ctx),
            Err(DecodeError::Short { got: 40, .. })
        ));
        assert!(matches!(
            decode(&full[..60], &ctx),
            Err(DecodeError::Short { got: 60, want: 112 })
        ));
        let mut bad = full.clone();
        bad[..4].copy_from_slice(&999u32.to_ne_bytes());
        assert_eq!(
            decode(&bad, &ctx).unwrap_err(),
            DecodeError::UnknownKind(999)
        );
    }
}
