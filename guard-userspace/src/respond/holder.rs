//! `action: hold` for every hook family: the kernel (or the daemon, for a fanotify open)
//! refused the operation; the holder freezes the agent tree as `guard freeze` does, and after
//! the policy's `spec.hold.timeout` thaws or kills it if nobody decided. Each step is a
//! `response` event and a webhook notification.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex, OnceLock},
};

use guard_common::ProcKey;
use tracing::info;

use super::hold as h;
use crate::{
    events::pipeline::EventSink,
    policy::{Hold, HoldThen},
};

/// What happened to an agent tree, for whoever is told (the webhook).
pub struct TreeNote {
    pub root: ProcKey,
    pub agent_id: u32,
    /// `frozen`, `thawed` or `killed`.
    pub what: &'static str,
    /// Who did it: `rule NAME` (a hold), `uid N` (`guard freeze|thaw|kill`), `timeout`.
    pub by: String,
    /// What the hold refused and what its timeout will do, for a hold.
    pub detail: Option<String>,
}

type Tell = Arc<dyn Fn(&TreeNote) + Send + Sync>;

/// Freezes the trees `hold` rules name; shared by the network and file responders.
#[derive(Clone)]
pub struct Holder {
    maps_dir: PathBuf,
    settings: Arc<Mutex<Hold>>,
    sink: Arc<OnceLock<EventSink>>,
    tell: Tell,
    /// Where the timers run: file decisions are answered on plain threads.
    rt: tokio::runtime::Handle,
}

impl Holder {
    /// A holder of the trees in the maps pinned in `maps_dir`, telling `tell` what it does.
    /// Must be created inside the daemon's runtime.
    pub fn new(maps_dir: PathBuf, tell: impl Fn(&TreeNote) + Send + Sync + 'static) -> Self {
        Self {
            maps_dir,
            settings: Arc::default(),
            sink: Arc::default(),
            tell: Arc::new(tell),
            rt: tokio::runtime::Handle::current(),
        }
    }

    /// Where hold events go, once the pipeline runs.
    pub fn set_sink(&self, sink: EventSink) {
        let _ = self.sink.set(sink);
    }

    /// `spec.hold` from now on (a policy apply sets it).
    pub fn set_settings(&self, hold: Hold) {
        *self.settings.lock().expect("hold settings lock") = hold;
    }

    pub fn settings(&self) -> Hold {
        *self.settings.lock().expect("hold settings lock")
    }

    /// Rule `rule` refused `what` to a process of the tree of `root`: freeze the tree (unless
    /// it is held already), and after the timeout thaw or kill it if nobody decided. Returns
    /// what the timeout will do, for the reason line. Never blocks the caller.
    pub fn hold(&self, root: ProcKey, agent_id: u32, rule: &str, what: &str) -> Hold {
        let settings = self.settings();
        let frozen = TreeNote {
            root,
            agent_id,
            what: "frozen",
            by: format!("rule {rule}"),
            detail: Some(format!(
                "it was refused {what}; unless someone decides within {}, it is {}",
                humantime::format_duration(settings.timeout),
                match settings.then {
                    HoldThen::Thaw => "thawed",
                    HoldThen::Kill => "killed",
                }
            )),
        };
        let me = self.clone();
        self.rt
            .spawn(async move { me.run(root, agent_id, settings, frozen).await });
        settings
    }

    async fn run(self, root: ProcKey, agent_id: u32, settings: Hold, frozen: TreeNote) {
        let dir = self.maps_dir.clone();
        let done = tokio::task::spawn_blocking(move || {
            let (tags, mut held) = h::maps(&dir).ok()?;
            if held.get(&root, 0).is_ok() {
                return None;
            }
            let report = h::freeze(&tags, &mut held, root).ok()?;
            Some((report, held.get(&root, 0).ok()?))
        })
        .await;
        let Ok(Some((report, since))) = done else {
            return;
        };
        info!(root = root.tgid, ?report, "hold: agent tree frozen");
        (self.tell)(&frozen);
        if let Some(s) = self.sink.get() {
            s.submit(h::event(root, agent_id, u32::MAX, "hold", &report))
                .await;
        }
        tokio::time::sleep(settings.timeout).await;
        let dir = self.maps_dir.clone();
        let decided = tokio::task::spawn_blocking(move || {
            let (tags, mut held) = h::maps(&dir).ok()?;
            // A human decided already (thawed or killed it), or it was held anew.
            if held.get(&root, 0).ok() != Some(since) {
                return None;
            }
            Some(match settings.then {
                HoldThen::Thaw => ("thaw", h::thaw(&tags, &mut held, root)),
                HoldThen::Kill => ("kill", h::kill(&tags, &mut held, root)),
            })
        })
        .await;
        let Ok(Some((action, report))) = decided else {
            return;
        };
        info!(root = root.tgid, action, "hold: nobody decided in time");
        (self.tell)(&TreeNote {
            root,
            agent_id,
            what: if action == "thaw" { "thawed" } else { "killed" },
            by: "timeout".to_owned(),
            detail: None,
        });
        if let Some(s) = self.sink.get() {
            let mut d = h::event(root, agent_id, u32::MAX, action, &report);
            if let Some(o) = d.object.as_mut() {
                o.operation = o
                    .operation
                    .take()
                    .map(|op| format!("{op} (hold timed out)"));
            }
            s.submit(d).await;
        }
    }
}
