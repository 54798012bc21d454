//! The requests' file beside the API socket: what a restarted daemon takes back.

use guard_common::ProcKey;
use serde::{Deserialize, Serialize};

use super::{Request, Requests, State};

/// A request as its file keeps it: with what `guard requests` does not show.
#[derive(Serialize, Deserialize)]
struct Saved {
    request: Request,
    deadline_ns: u64,
    /// `(tgid, start_ns)` of each tree an approval covers.
    roots: Vec<(u32, u64)>,
}

impl Requests {
    /// Keep the requests in `file` from now on, after taking back what it holds: the open
    /// requests whose root still runs and the approved ones before their deadline. Returns
    /// how many were taken back and how many dropped.
    pub fn keep_in(&self, file: std::path::PathBuf) -> (usize, usize) {
        let saved: Vec<Saved> = std::fs::read(&file)
            .ok()
            .and_then(|t| serde_json::from_slice(&t).ok())
            .unwrap_or_default();
        let now = crate::clock::boot_ns();
        let mut l = self.0.list.lock().expect("requests lock");
        let (mut kept, mut dropped) = (0, 0);
        for s in saved {
            let mut r = s.request;
            l.next = l.next.max(r.id);
            let live = match &mut r.state {
                State::Open => {
                    r.root_pid == 0
                        || std::path::Path::new(&format!("/proc/{}", r.root_pid)).exists()
                }
                State::Approved {
                    deadline_ns, roots, ..
                } => {
                    *deadline_ns = s.deadline_ns;
                    *roots = s
                        .roots
                        .iter()
                        .map(|(tgid, start_ns)| ProcKey::new(*tgid, *start_ns))
                        .collect();
                    s.deadline_ns > now
                }
            };
            if !live {
                dropped += 1;
                continue;
            }
            if r.state == State::Open {
                l.open.insert(r.open_key(), r.id);
            }
            l.by_id.insert(r.id, r);
            kept += 1;
        }
        drop(l);
        let _ = self.0.store.set(file);
        self.save();
        (kept, dropped)
    }

    /// Write the requests to their file (whole, then renamed into place).
    pub(super) fn save(&self) {
        let Some(file) = self.0.store.get() else {
            return;
        };
        let saved: Vec<Saved> = self
            .0
            .list
            .lock()
            .expect("requests lock")
            .by_id
            .values()
            .map(|r| {
                let (deadline_ns, roots) = match &r.state {
                    State::Approved {
                        deadline_ns, roots, ..
                    } => (
                        *deadline_ns,
                        roots.iter().map(|k| (k.tgid, k.start_ns)).collect(),
                    ),
                    State::Open => (0, Vec::new()),
                };
                Saved {
                    request: r.clone(),
                    deadline_ns,
                    roots,
                }
            })
            .collect();
        let tmp = file.with_extension("json.tmp");
        let written = serde_json::to_vec(&saved)
            .map_err(std::io::Error::other)
            .and_then(|bytes| std::fs::write(&tmp, bytes))
            .and_then(|()| std::fs::rename(&tmp, file));
        if let Err(e) = written {
            tracing::warn!(file = %file.display(), error = %e, "requests not saved");
        }
    }
}
