//! What the page shows, kept in memory: the newest decisions of the event log, counts of
//! each rule's hits by hour, and the secrets found. One task reads the log once at start
//! (streaming, file by file) and then follows it; pages read the store, live streams
//! subscribe to it. The log stays the record: the export reads it whole.

use std::{
    collections::{BTreeMap, VecDeque},
    io::{BufRead, BufReader, Read},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use time::{OffsetDateTime, format_description::well_known::Rfc3339};
use tokio::sync::broadcast;

use crate::events::{Event, View, log_files, query::Follower, view_of};

/// Decisions held for the page (the newest); older ones are in the log (export). About
/// 2.5 KB each with ancestry (the line, and the slim event rows read).
pub const HELD: usize = 1_000;
/// Hours of per-rule hit counts kept.
pub const HOURS: usize = 24;
/// How often the log is looked at for new lines.
const POLL: Duration = Duration::from_millis(250);
/// Longest line taken from the log (a longer one is not an event guard wrote).
const MAX_LINE: u64 = 1 << 20;

/// A decision of the log, with its id (a digest of its line). `event` is what rows and
/// filters read, without the ancestry and command lines (most of a line's size): the whole
/// event is `line`, parsed again where a page shows it.
pub struct Entry {
    pub id: String,
    pub line: String,
    pub event: Event,
}

impl Entry {
    /// The whole event.
    pub fn full(&self) -> Event {
        serde_json::from_str(&self.line).unwrap_or_else(|_| self.event.clone())
    }
}

/// `e` without what rows and filters never read.
fn slim(mut e: Event) -> Event {
    e.ancestry = Vec::new();
    if let Some(p) = e.process.as_mut() {
        p.argv = Vec::new();
    }
    if let Some(r) = e.root.as_mut() {
        r.argv = Vec::new();
    }
    e
}

/// A rule's hits: by hour, the newest last, and in all.
#[derive(Clone, Debug, Default)]
pub struct Hits {
    pub by_hour: [u64; HOURS],
    pub total: u64,
    pub last: String,
}

/// A secret found in a file an agent read.
#[derive(Clone, Debug, Default)]
pub struct Secret {
    pub path: String,
    pub detector: String,
    pub fingerprint: String,
    pub agents: Vec<String>,
    pub reads: u64,
    pub last: String,
}

#[derive(Default)]
struct Inner {
    held: VecDeque<Arc<Entry>>,
    /// Hits by rule, and the hour (since the epoch) `by_hour`'s last slot is.
    hits: BTreeMap<String, Hits>,
    hour: i64,
    /// Secrets by (path, fingerprint).
    secrets: BTreeMap<(String, String), Secret>,
}

/// The store, shared by the pages and the follower task.
pub struct Store {
    inner: Mutex<Inner>,
    live: broadcast::Sender<Arc<Entry>>,
}

impl Default for Store {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            live: broadcast::channel(256).0,
        }
    }
}

/// Whether a line may be a decision, by its `kind` as guard writes it, without parsing the
/// whole line: most of a log that keeps lifecycle lines is those, and the first read at start
/// goes through all of it.
fn may_be_decision(line: &str) -> bool {
    const KEY: &str = "\"kind\":\"";
    let Some(at) = line.find(KEY) else {
        return true;
    };
    let rest = &line[at + KEY.len()..];
    let kind = rest.split('"').next().unwrap_or_default();
    view_of(kind) == View::Decisions
}

/// An event's id: a digest of its line (stable for as long as the log holds it).
pub fn id_of(line: &str) -> String {
    blake3::hash(line.as_bytes()).to_hex()[..16].to_owned()
}

fn hour_of(time: &str) -> Option<i64> {
    OffsetDateTime::parse(time, &Rfc3339)
        .ok()
        .map(|t| t.unix_timestamp().div_euclid(3600))
}

impl Store {
    /// The held decisions, oldest first.
    pub fn held(&self) -> Vec<Arc<Entry>> {
        self.inner
            .lock()
            .expect("store lock")
            .held
            .iter()
            .cloned()
            .collect()
    }

    pub fn find(&self, id: &str) -> Option<Arc<Entry>> {
        let inner = self.inner.lock().expect("store lock");
        inner.held.iter().rev().find(|e| e.id == id).cloned()
    }

    /// Each rule's hits, the last slot being the current hour.
    pub fn hits(&self) -> Vec<(String, Hits)> {
        let mut inner = self.inner.lock().expect("store lock");
        let now = OffsetDateTime::now_utc().unix_timestamp().div_euclid(3600);
        inner.advance(now);
        inner
            .hits
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    pub fn secrets(&self) -> Vec<Secret> {
        let inner = self.inner.lock().expect("store lock");
        inner.secrets.values().cloned().collect()
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Entry>> {
        self.live.subscribe()
    }

    /// Take one line of the log; `live`: tell the subscribers.
    fn take(&self, line: &str, live: bool) {
        if !may_be_decision(line) {
            return;
        }
        let Ok(event) = serde_json::from_str::<Event>(line) else {
            return;
        };
        if view_of(&event.kind) != View::Decisions {
            return;
        }
        // The line as the event reads back, so that an id does not depend on spacing.
        let line = serde_json::to_string(&event).unwrap_or_default();
        let entry = Arc::new(Entry {
            id: id_of(&line),
            line,
            event: slim(event),
        });
        self.inner.lock().expect("store lock").add(entry.clone());
        if live {
            let _ = self.live.send(entry);
        }
    }
}

impl Inner {
    fn add(&mut self, e: Arc<Entry>) {
        let ev = &e.event;
        if let (Some(rule), Some(hour)) = (&ev.rule, hour_of(&ev.time)) {
            self.advance(hour);
            let h = self.hits.entry(rule.clone()).or_default();
            let back = self.hour - hour;
            if (0..HOURS as i64).contains(&back) {
                h.by_hour[HOURS - 1 - back as usize] += 1;
            }
            h.total += 1;
            h.last.clone_from(&ev.time);
        }
        if !ev.secrets.is_empty() {
            let path = ev.object.as_ref().map(|o| o.short()).unwrap_or_default();
            for s in &ev.secrets {
                let found = self
                    .secrets
                    .entry((path.clone(), s.fingerprint.clone()))
                    .or_insert_with(|| Secret {
                        path: path.clone(),
                        detector: s.detector.clone(),
                        fingerprint: s.fingerprint.clone(),
                        ..Secret::default()
                    });
                found.reads += 1;
                found.last.clone_from(&ev.time);
                if !ev.agent.is_empty() && !found.agents.contains(&ev.agent) {
                    found.agents.push(ev.agent.clone());
                }
            }
        }
        if self.held.len() == HELD {
            self.held.pop_front();
        }
        self.held.push_back(e);
    }

    /// Move the hour window on to `hour` (never back).
    fn advance(&mut self, hour: i64) {
        if hour <= self.hour {
            return;
        }
        let shift = (hour - self.hour).min(HOURS as i64) as usize;
        for h in self.hits.values_mut() {
            h.by_hour.rotate_left(shift);
            h.by_hour[HOURS - shift..].fill(0);
        }
        self.hour = hour;
    }
}

/// Read the log into `store` (streaming), then follow it: on a thread of its own, for the
/// daemon's life.
pub fn follow(store: Arc<Store>, path: PathBuf) {
    let spawned = std::thread::Builder::new()
        .name("ui-log".into())
        .spawn(move || {
            let mut follower = Follower::at_end(&path).unwrap_or_else(|_| Follower::new(&path));
            let end = follower.position();
            for_each_line(&path, end, |line| store.take(line, false));
            loop {
                for line in follower.poll().unwrap_or_default() {
                    store.take(&line, true);
                }
                std::thread::sleep(POLL);
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "the review page cannot read the event log");
    }
}

/// Every line of the log's files, oldest first; of the live file, the first `live_end`
/// bytes (the follower reads on from there).
pub fn for_each_line(path: &Path, live_end: u64, mut f: impl FnMut(&str)) {
    for file in log_files(path) {
        let Ok(opened) = std::fs::File::open(&file) else {
            continue;
        };
        let limit = if file == path { live_end } else { u64::MAX };
        let mut reader = BufReader::new(opened.take(limit));
        let mut line = String::new();
        loop {
            line.clear();
            match (&mut reader).take(MAX_LINE).read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => f(line.trim_end_matches('\n')),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(kind: &str, rule: &str, time: &str) -> String {
        format!(
            r#"{{"schema":1,"time":"{time}","node":"n","kind":"{kind}","agent":"a","rule":"{rule}","action":"deny","result":"denied"}}"#
        )
    }

    #[test]
    fn decisions_are_held_and_counted_by_hour() {
        let s = Store::default();
        let now = OffsetDateTime::now_utc();
        let t = |h: i64| (now - time::Duration::hours(h)).format(&Rfc3339).unwrap();
        s.take(&line("net_connect", "db", &t(0)), false);
        s.take(&line("net_connect", "db", &t(2)), false);
        s.take(&line("tagged_fork", "", &t(0)), false);
        s.take(&line("file_open", "creds", &t(30)), false);
        assert_eq!(s.held().len(), 3, "lifecycle lines are not held");
        let hits: BTreeMap<String, Hits> = s.hits().into_iter().collect();
        assert_eq!(hits["db"].total, 2);
        assert_eq!(hits["db"].by_hour[HOURS - 1], 1);
        assert_eq!(hits["db"].by_hour[HOURS - 3], 1);
        assert_eq!(
            hits["creds"].by_hour.iter().sum::<u64>(),
            0,
            "older than the window"
        );
        let id = &s.held()[0].id;
        assert!(s.find(id).is_some());
    }

    #[test]
    fn lifecycle_lines_are_skipped_unparsed() {
        assert!(!may_be_decision(&line("tagged_fork", "", "t")));
        assert!(!may_be_decision(&line("agent_exec", "", "t")));
        assert!(may_be_decision(&line("net_connect", "db", "t")));
        assert!(may_be_decision("not guard's"));
    }

    #[test]
    fn the_held_window_is_bounded() {
        let s = Store::default();
        let t = OffsetDateTime::now_utc().format(&Rfc3339).unwrap();
        for i in 0..HELD + 10 {
            s.take(&line("net_connect", &format!("r{i}"), &t), false);
        }
        assert_eq!(s.held().len(), HELD);
        assert_eq!(s.held()[0].event.rule.as_deref(), Some("r10"));
    }
}
