//! Deferred execution, from userspace: the process that runs a file an agent wrote is told why
//! it is contained (the kernel made it a root of that agent; see guard-ebpf `probes/taint.rs`).

use guard_common::{
    agent::recognised,
    event::{EventKind, ProcessEvent},
};

use crate::events::{Responder, c_str, read_pod};

/// Writes one line to a deferred root's stderr.
pub struct DeferredNotice;

impl Responder for DeferredNotice {
    fn respond(&self, raw: &[u8]) {
        let Ok(ev) = read_pod::<ProcessEvent>(raw) else {
            return;
        };
        if ev.header.kind != EventKind::AgentExec as u32 || ev.reason != recognised::DEFERRED {
            return;
        }
        let line = notice(&c_str(&ev.script));
        let proc = ev.header.proc;
        let parent = ev.header.ppid;
        tokio::task::spawn_blocking(move || {
            // A process that has exited already (a denied command usually exits at once) is
            // told through its parent, the shell it was run from: the same terminal.
            let told = crate::respond::tell(proc.tgid, proc.start_ns, &line)
                .or_else(|_| crate::respond::tell_parent(parent, &line));
            if let Err(e) = told {
                tracing::debug!(pid = proc.tgid, error = %e, "deferred notice not written");
            }
        });
    }
}

/// The line a deferred root gets.
pub fn notice(file: &str) -> String {
    format!(
        "guard: {file} was written by an AI agent: this process runs it, so guard contains it \
         like that agent (`guard ps` shows the tree, `guard events --kind agent_exec` why)"
    )
}
