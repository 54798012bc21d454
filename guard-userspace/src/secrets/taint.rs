//! Which agent trees read a secret, and what: the daemon's side of the taint the kernel
//! enforces (`guard_common::secret`). The kernel knows *that* a tree is tainted; this table
//! knows *why*, for the reason line of a denial, and how long the daemon takes to answer a
//! read (the time a tree is pending), for `guard status`.

use std::{
    collections::{HashMap, VecDeque},
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

/// Tainted trees by root, shared by the scan (which writes) and the network responder and
/// status (which read).
#[derive(Clone, Debug, Default)]
pub struct Taints(Arc<Inner>);

#[derive(Debug, Default)]
struct Inner {
    causes: Mutex<HashMap<ProcKey, Cause>>,
    /// The last [`ANSWERS_KEPT`] answer times: from the kernel's record of a read to the
    /// daemon's answer.
    answers: Mutex<VecDeque<u64>>,
}

const ANSWERS_KEPT: usize = 256;

/// The pending time of the last reads: `(median, max, samples)`, ns.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AnswerTimes {
    pub median_ns: u64,
    pub max_ns: u64,
    pub samples: usize,
}

impl Taints {
    /// Record that the tree of `root` read `cause`; `true` if the tree was not tainted yet.
    pub fn taint(&self, root: ProcKey, cause: Cause) -> bool {
        let mut t = self.0.causes.lock().expect("taints lock");
        if t.contains_key(&root) {
            return false;
        }
        t.insert(root, cause);
        true
    }

    pub fn cause(&self, root: ProcKey) -> Option<Cause> {
        self.0
            .causes
            .lock()
            .expect("taints lock")
            .get(&root)
            .cloned()
    }

    /// Forget trees that are gone.
    pub fn retain(&self, mut alive: impl FnMut(&ProcKey) -> bool) {
        self.0
            .causes
            .lock()
            .expect("taints lock")
            .retain(|k, _| alive(k));
    }

    pub fn len(&self) -> usize {
        self.0.causes.lock().expect("taints lock").len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A read was answered `ns` after the kernel reported it.
    pub fn answered_after(&self, ns: u64) {
        let mut a = self.0.answers.lock().expect("answers lock");
        if a.len() == ANSWERS_KEPT {
            a.pop_front();
        }
        a.push_back(ns);
    }

    pub fn answer_times(&self) -> Option<AnswerTimes> {
        let mut v: Vec<u64> = self
            .0
            .answers
            .lock()
            .expect("answers lock")
            .iter()
            .copied()
            .collect();
        v.sort_unstable();
        Some(AnswerTimes {
            median_ns: *v.get(v.len() / 2)?,
            max_ns: *v.last()?,
            samples: v.len(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answer_times_keep_the_last_ones() {
        let t = Taints::default();
        assert_eq!(t.answer_times(), None);
        for ns in 1..=300u64 {
            t.answered_after(ns * 1000);
        }
        let a = t.answer_times().unwrap();
        assert_eq!((a.samples, a.max_ns, a.median_ns), (256, 300_000, 173_000));
    }
}
