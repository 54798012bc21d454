//! `action: ask` on path rules: the operation is refused (by the kernel, or by the daemon for
//! a fanotify open) and a request opens for the tree, the rule, the object and the access;
//! an approval is a `GUARD_NET_EXCEPTIONS` entry (family [`FAMILY_FILE`]) that the kernel's
//! file decisions check themselves, and that the fanotify answer checks here.

use aya::maps::{HashMap, MapData};
use guard_common::{
    ProcKey,
    net::{ExceptionKey, FAMILY_FILE, exception_scope, file_object},
};

use super::report::Decision;
use crate::requests::{Asked, Requests};

/// The approvals, and where requests go.
pub struct Asking {
    pub requests: Requests,
    /// `None` when the pinned map cannot be opened (then nothing is approved here).
    exceptions: Option<HashMap<MapData, ExceptionKey, u64>>,
}

impl Asking {
    pub fn new(requests: Requests, maps_dir: &std::path::Path) -> Self {
        let exceptions =
            crate::loader::open_pinned_hash(maps_dir, guard_common::maps::NET_EXCEPTIONS)
                .map_err(|(name, e)| {
                    tracing::warn!(map = name, error = %e, "file approvals cannot be checked");
                })
                .ok();
        Self {
            requests,
            exceptions,
        }
    }

    /// Whether a live approval covers `d` (its tree, or its process alone).
    pub fn approved(&self, d: &Decision) -> bool {
        let Some(map) = &self.exceptions else {
            return false;
        };
        let now = crate::clock::boot_ns();
        let process = ProcKey::new(d.tgid, d.tag.start_ns);
        [
            (d.tag.root, exception_scope::TREE),
            (process, exception_scope::PROCESS),
        ]
        .into_iter()
        .any(|(root, scope)| {
            map.get(&key(d, root, scope), 0)
                .is_ok_and(|deadline| deadline > now)
        })
    }

    /// Open (or find) the request of `d`; its id (`None`: the tree asked too often).
    pub fn ask(&self, d: &Decision) -> Option<u64> {
        self.requests.open(Asked {
            root: d.tag.root,
            agent_id: d.tag.agent_id,
            proc: ProcKey::new(d.tgid, d.tag.start_ns),
            ppid: d.ppid,
            comm: d.comm.clone(),
            rule: d.rule.clone(),
            rule_id: d.rule_id,
            family: FAMILY_FILE,
            port: d.access,
            addr: file_object(d.dev, d.ino),
            destination: d.what(),
        })
    }
}

/// The key an approval of `d` for `root` (a tree's root or, with the process scope, the
/// process) has: what the kernel looks up for the same operation.
fn key(d: &Decision, root: ProcKey, scope: u32) -> ExceptionKey {
    ExceptionKey {
        root,
        rule_id: d.rule_id,
        family: FAMILY_FILE,
        port: d.access,
        scope,
        addr: file_object(d.dev, d.ino),
    }
}
