//! The review page's view of the daemon ([`crate::ui::Backend`]): what it reads, and the
//! actions an approver's session may take, carried out as `guard approve`, `guard deny` and
//! `guard freeze|thaw|kill` are (the page has checked the role and the CSRF token).

use std::path::PathBuf;

use super::{Shared, decide, incident};
use crate::{
    api::{Reply, TreeAction},
    requests::{Request, Scope},
    tags::TaggedProc,
    ui::BoxFuture,
};

/// Actions from the page are recorded as root's: the approver token is root's to hand out.
const PAGE_UID: u32 = 0;

pub(super) struct UiView {
    pub state: Shared,
    pub event_log: PathBuf,
}

fn said<T>(reply: Reply<T>, done: impl FnOnce(T) -> String) -> Result<String, String> {
    reply.into_result().map(done)
}

/// The reason recorded with an answer given on the page.
fn reason_of(reason: &str) -> String {
    match reason.trim() {
        "" => "on the review page".to_owned(),
        r => format!("on the review page: {r}"),
    }
}

impl crate::ui::Backend for UiView {
    fn event_log(&self) -> PathBuf {
        self.event_log.clone()
    }

    fn tier(&self) -> String {
        self.state
            .lock()
            .expect("state lock")
            .kernel
            .tier
            .to_string()
    }

    fn mechanism(&self, rule: &str) -> String {
        let Some(st) = super::status::status(&self.state).data else {
            return String::new();
        };
        if let Some(p) = st.path_rules.iter().find(|p| p.name == rule) {
            let layers: Vec<String> = p
                .layers
                .iter()
                .map(|l| format!("{}: {} via {}", l.covers, l.status, l.via))
                .collect();
            return format!("{} ({})", p.status, layers.join("; "));
        }
        if let Some(b) = st
            .deputies
            .as_ref()
            .and_then(|d| d.rules.iter().find(|b| b.name == rule))
        {
            return format!("{} ({})", b.state, b.mechanism);
        }
        let n = &st.network;
        format!("{} tier: {}", n.tier, n.programs.join(", "))
    }

    fn processes(&self) -> Vec<TaggedProc> {
        let st = self.state.lock().expect("state lock");
        crate::tags::list(&st.kernel, &st.names, &st.agents)
    }

    fn requests(&self) -> Result<Vec<Request>, String> {
        decide::list(&self.state).into_result()
    }

    fn approve(
        &self,
        id: u64,
        for_secs: u64,
        scope: Scope,
        reason: String,
    ) -> Result<String, String> {
        let reason = reason_of(&reason);
        let reply = decide::approve_as(
            &self.state,
            PAGE_UID,
            id,
            Some(for_secs),
            scope,
            Some(&reason),
        );
        said(reply, |r| {
            format!("request {} approved for its {}", r.id, scope.name())
        })
    }

    fn deny(&self, id: u64, reason: String) -> Result<String, String> {
        let reply = decide::deny_as(&self.state, PAGE_UID, id, Some(&reason_of(&reason)));
        said(reply, |r| format!("request {} denied", r.id))
    }

    fn tree(&self, action: &'static str, root: String) -> BoxFuture<'_, Result<String, String>> {
        Box::pin(async move {
            let action = match action {
                "freeze" => TreeAction::Freeze,
                "thaw" => TreeAction::Thaw,
                _ => TreeAction::Kill,
            };
            let reply = incident::tree_as(&self.state, PAGE_UID, action, &root).await;
            said(reply, |r| {
                format!(
                    "{} the tree of root {} ({}): {} processes",
                    match action {
                        TreeAction::Freeze => "froze",
                        TreeAction::Thaw => "thawed",
                        TreeAction::Kill => "killed",
                    },
                    r.root_pid,
                    r.agent,
                    r.report.processes
                )
            })
        })
    }
}
