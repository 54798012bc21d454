//! Which agent trees read a secret, and what it was: the daemon's side of the taint the kernel
//! enforces (`guard_common::secret`). The kernel knows *that* a tree is tainted; this table
//! knows *why*, for the reason line of a denial and for `guard status`.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use guard_common::ProcKey;

/// The first secret a tree read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Cause {
    /// The file, as the daemon found it again.
    pub path: String,
    pub detector: String,
    pub fingerprint: String,
}

/// Tainted trees by root, shared by the scan (which writes) and the network responder (which
/// names the cause in its reason line).
#[derive(Clone, Debug, Default)]
pub struct Taints(Arc<Mutex<HashMap<ProcKey, Cause>>>);

impl Taints {
    /// Record that the tree of `root` read `cause`; `true` if the tree was not tainted yet.
    pub fn taint(&self, root: ProcKey, cause: Cause) -> bool {
        let mut t = self.0.lock().expect("taints lock");
        if t.contains_key(&root) {
            return false;
        }
        t.insert(root, cause);
        true
    }

    pub fn cause(&self, root: ProcKey) -> Option<Cause> {
        self.0.lock().expect("taints lock").get(&root).cloned()
    }

    /// Forget trees that are gone.
    pub fn retain(&self, mut alive: impl FnMut(&ProcKey) -> bool) {
        self.0.lock().expect("taints lock").retain(|k, _| alive(k));
    }

    pub fn len(&self) -> usize {
        self.0.lock().expect("taints lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
