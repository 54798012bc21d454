//! What the webhook (`spec.notify.webhook`) hears: every step of a request, and what happens
//! to an agent tree that waits for a human — a hold froze it, a human or the hold's timeout
//! thawed or killed it. Command lines stay on the node: redaction knows token formats, not
//! every password someone typed as an argument; approvers read them with `guard requests`.

use super::{Request, Requests, now};
use crate::respond::TreeNote;

impl Requests {
    /// Tell the webhook that request `r` was `result` (opened, approved, denied, expired).
    pub(super) fn notify(&self, r: &Request, result: &str) {
        let Some((_, n)) = self.0.notifier.lock().expect("notifier lock").clone() else {
            return;
        };
        let node = crate::events::pipeline::hostname();
        let mut r = r.clone();
        r.argv.clear();
        for a in &mut r.ancestry {
            a.argv.clear();
        }
        let doc = serde_json::json!({
            "source": "guard",
            "event": format!("request.{result}"),
            "node": node,
            "time": now(),
            "request": r,
            "approve": format!("guard approve {}", r.id),
            "deny": format!("guard deny {}", r.id),
        });
        let asks = if r.family == guard_common::net::FAMILY_FILE {
            "asks for"
        } else {
            "asks to reach"
        };
        let text = format!(
            "guard on {node}: request {id} {result}: {agent} (pid {pid}, {comm}) {asks} {dest} \
             (rule {rule}). Approve: `guard approve {id}`; deny: `guard deny {id}`",
            id = r.id,
            agent = r.agent,
            pid = r.pid,
            comm = crate::respond::sanitize(&r.comm),
            dest = r.destination,
            rule = r.rule,
        );
        n.send(&doc, &text);
    }

    /// Tell the webhook what happened to an agent tree (`tree.frozen`, `tree.thawed`,
    /// `tree.killed`), with the commands that decide a held one.
    pub fn notify_tree(&self, t: &TreeNote) {
        let Some((_, n)) = self.0.notifier.lock().expect("notifier lock").clone() else {
            return;
        };
        let node = crate::events::pipeline::hostname();
        let agent = self.0.names.lock().expect("names lock").name(t.agent_id);
        // `PID:START_NS`: the root even after its pid is reused.
        let root = format!("{}:{}", t.root.tgid, t.root.start_ns);
        let doc = serde_json::json!({
            "source": "guard",
            "event": format!("tree.{}", t.what),
            "node": node,
            "time": now(),
            "tree": {
                "root_pid": t.root.tgid,
                "root_start_ns": t.root.start_ns,
                "agent": agent,
                "by": t.by,
                "detail": t.detail,
            },
            "thaw": format!("guard thaw {root}"),
            "kill": format!("guard kill {root}"),
        });
        let mut text = format!(
            "guard on {node}: agent tree {pid} ({agent}) {what} by {by}",
            pid = t.root.tgid,
            what = t.what,
            by = t.by,
        );
        if let Some(d) = &t.detail {
            text.push_str(&format!(": {d}"));
        }
        if t.what == "frozen" {
            text.push_str(&format!(
                ". Thaw: `guard thaw {root}`; kill: `guard kill {root}`"
            ));
        }
        n.send(&doc, &text);
    }
}
