//! `guard events`: read the log (rotated files oldest first), follow it across rotations,
//! filter and summarise.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs::File,
    io::{self, Read, Seek, SeekFrom, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use serde::Serialize;
use time::{OffsetDateTime, format_description::well_known::Rfc3339};

use super::{Event, log_files, table};

#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("reading the event log {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("writing the output: {0}")]
    Write(#[source] io::Error),
}

/// Which events to show.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub action: Option<String>,
    pub agent: Option<String>,
    pub rule: Option<String>,
    pub kind: Option<String>,
    /// Only events at or after this time.
    pub since: Option<OffsetDateTime>,
    /// Without `kind`: decisions only, plus the commands agents ran, or everything.
    pub view: Shown,
}

/// `--kind K` matches kind K, and every kind of family K (`secret` is `secret_read` and the
/// secret kinds to come, `net` is `net_connect`).
fn kind_matches(want: &str, kind: &str) -> bool {
    kind == want
        || kind
            .strip_prefix(want)
            .is_some_and(|rest| rest.starts_with('_'))
}

/// What `guard events` shows when no `--kind` is asked for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Shown {
    /// Decisions, secrets found, lost events and self-protection: what a reviewer acts on.
    #[default]
    Decisions,
    /// Decisions and every command (exec) of the agents.
    Commands,
    /// Every line, process lifecycle included.
    All,
}

impl Filter {
    pub fn matches(&self, e: &Event) -> bool {
        let eq = |want: &Option<String>, got: Option<&str>| {
            want.as_deref().is_none_or(|w| got == Some(w))
        };
        eq(&self.action, e.action.as_deref())
            && eq(&self.agent, Some(e.agent.as_str()))
            && eq(&self.rule, e.rule.as_deref())
            && self
                .kind
                .as_deref()
                .is_none_or(|k| kind_matches(k, &e.kind))
            && (self.kind.is_some() || self.shows(super::view_of(&e.kind)))
            && self.since.is_none_or(|since| {
                OffsetDateTime::parse(&e.time, &Rfc3339).is_ok_and(|t| t >= since)
            })
    }

    fn shows(&self, view: super::View) -> bool {
        use super::View;
        match self.view {
            Shown::All => true,
            Shown::Commands => view != View::Lifecycle,
            Shown::Decisions => view == View::Decisions,
        }
    }

    fn describe(&self) -> String {
        let mut parts = Vec::new();
        for (name, v) in [
            ("action", &self.action),
            ("agent", &self.agent),
            ("rule", &self.rule),
            ("kind", &self.kind),
        ] {
            if let Some(v) = v {
                parts.push(format!("{name} {v}"));
            }
        }
        if let Some(s) = self.since {
            parts.push(format!("since {}", s.format(&Rfc3339).unwrap_or_default()));
        }
        parts.join(", ")
    }
}

/// A line of the log and its parsed event.
#[derive(Clone, Debug)]
pub struct Line {
    pub raw: String,
    pub event: Event,
}

fn parse(raw: &str) -> Option<Line> {
    let raw = raw.trim_end_matches('\n');
    if raw.is_empty() {
        return None;
    }
    serde_json::from_str(raw).ok().map(|event| Line {
        raw: raw.to_string(),
        event,
    })
}

/// Every event of the log, oldest first, across its rotated files; lines that are not events
/// are counted in the second value.
pub fn read_all(path: &Path) -> io::Result<(Vec<Event>, usize)> {
    let mut follower = match first_file(path, None) {
        Some(first) => Follower::from(path, &first)?,
        None => Follower::new(path),
    };
    let mut bad = 0;
    let mut out = Vec::new();
    for raw in follower.poll()? {
        match parse(&raw) {
            Some(l) => out.push(l.event),
            None => bad += 1,
        }
    }
    Ok((out, bad))
}

/// Counts of what a read went through.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReadStats {
    pub files: usize,
    pub lines: usize,
    /// Lines that were not events (a foreign file, a torn write).
    pub bad: usize,
}

/// The first file to read: the oldest one written to within the window.
fn first_file(path: &Path, since: Option<OffsetDateTime>) -> Option<PathBuf> {
    log_files(path).into_iter().find(|f| {
        since.is_none_or(|since| {
            // A file last written before the window holds nothing in it.
            std::fs::metadata(f)
                .and_then(|m| m.modified())
                .is_ok_and(|m| OffsetDateTime::from(m) >= since)
        })
    })
}

/// Reads the live file from a position and follows it across rotations: when the file it
/// reads has been renamed away, it drains it, then reads every newer rotated file in order
/// (found by inode), then the new live file. Only whole lines are returned.
pub struct Follower {
    path: PathBuf,
    file: Option<File>,
    ino: u64,
    pos: u64,
    partial: Vec<u8>,
}

/// How many rotated files are searched for the one being read.
const MAX_ROTATED: u32 = 1000;
/// Scans (2 ms apart) for a rotated file, or for the name of the next newer one, before the
/// reader concludes it was removed: a writer preempted in the middle of a rotation leaves a
/// gap for as long as it is off the CPU.
const ROTATION_RETRIES: u32 = 500;

impl Follower {
    /// Start at the beginning of the live file (it may not exist yet).
    pub fn new(path: &Path) -> Self {
        Self {
            path: path.to_path_buf(),
            file: None,
            ino: 0,
            pos: 0,
            partial: Vec::new(),
        }
    }

    /// Start at the end of the live file: only lines written from now on.
    pub fn at_end(path: &Path) -> io::Result<Self> {
        let mut f = Self::new(path);
        if f.open(path)? {
            f.pos = f
                .file
                .as_ref()
                .map_or(Ok(0), |file| file.metadata().map(|m| m.len()))?;
        }
        Ok(f)
    }

    /// How far into the file it reads it has read.
    pub fn position(&self) -> u64 {
        self.pos
    }

    /// Start at the beginning of `first`, one of the log's files, and read on from there to
    /// the live file, whatever rotations happen meanwhile.
    pub fn from(path: &Path, first: &Path) -> io::Result<Self> {
        let mut f = Self::new(path);
        f.open(first)?;
        Ok(f)
    }

    fn open(&mut self, path: &Path) -> io::Result<bool> {
        match File::open(path) {
            Ok(f) => {
                self.ino = f.metadata()?.ino();
                self.file = Some(f);
                self.pos = 0;
                self.partial.clear();
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The file that comes after the one with inode `drained`, now that it was rotated away,
    /// and that file's inode when it was looked at.
    fn next_path(&self, drained: u64) -> (PathBuf, Option<u64>) {
        let ino = |p: &Path| std::fs::metadata(p).map(|m| m.ino()).ok();
        // A rotation in progress renames the files one at a time, from the oldest: one name
        // may be missing for a moment, so the scan steps over a single gap, and a file not
        // found is looked for again before the reader gives up on it.
        for _ in 0..ROTATION_RETRIES {
            let mut missing = 0;
            for i in 1..=MAX_ROTATED {
                let p = super::log::numbered(&self.path, i);
                match ino(&p) {
                    Some(x) if x == drained && i == 1 => {
                        // The live file may not be there again yet: then it is opened (new,
                        // from its start) at the next poll.
                        return (self.path.clone(), ino(&self.path));
                    }
                    Some(x) if x == drained => {
                        let next = super::log::numbered(&self.path, i - 1);
                        match ino(&next) {
                            Some(want) => return (next, Some(want)),
                            // The gap of a rotation in progress is just above the newer
                            // file: wait until it has its name, else it would be skipped.
                            None => break,
                        }
                    }
                    Some(_) => missing = 0,
                    None if missing == 0 => missing = 1,
                    None => break,
                }
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        // Ours was removed (the reader fell more than the whole log behind): go live.
        (self.path.clone(), None)
    }

    /// New complete lines since the last call.
    pub fn poll(&mut self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        loop {
            if self.file.is_none() && !self.open(&self.path.clone())? {
                return Ok(out);
            }
            let f = self.file.as_mut().expect("opened above");
            if f.metadata()?.len() < self.pos {
                // Truncated in place: start over.
                self.pos = 0;
                self.partial.clear();
            }
            f.seek(SeekFrom::Start(self.pos))?;
            let mut buf = Vec::new();
            let n = f.read_to_end(&mut buf)?;
            self.pos += n as u64;
            self.partial.extend_from_slice(&buf);
            if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
                let rest = self.partial.split_off(end + 1);
                let whole = std::mem::replace(&mut self.partial, rest);
                out.extend(String::from_utf8_lossy(&whole).lines().map(str::to_string));
            }
            // Still the live file? Then that is all for now.
            match std::fs::metadata(&self.path) {
                Ok(m) if m.ino() == self.ino => return Ok(out),
                Err(_) => return Ok(out),
                Ok(_) => {}
            }
            // Rotated away: lines may have been appended between the read above and the
            // rename. Nothing is written to it after the rename, so one more read drains it.
            let f = self.file.as_mut().expect("opened above");
            f.seek(SeekFrom::Start(self.pos))?;
            let mut buf = Vec::new();
            let n = f.read_to_end(&mut buf)?;
            self.pos += n as u64;
            self.partial.extend_from_slice(&buf);
            if let Some(end) = self.partial.iter().rposition(|b| *b == b'\n') {
                let rest = self.partial.split_off(end + 1);
                let whole = std::mem::replace(&mut self.partial, rest);
                out.extend(String::from_utf8_lossy(&whole).lines().map(str::to_string));
            }
            // Drained a rotated file: on to the next newer one. A rotation between finding
            // it and opening it shifts every name by one: then the file opened is not the
            // one found, and the search runs again (from the drained file's inode).
            let drained = self.ino;
            let mut settled = false;
            for _ in 0..8 {
                let (next, want) = self.next_path(drained);
                if self.open(&next)? {
                    if want.is_none_or(|w| w == self.ino) {
                        settled = true;
                        break;
                    }
                } else if next == self.path {
                    // The live file is not there again yet: the next poll opens it.
                    break;
                }
            }
            if !settled && self.ino == drained {
                self.file = None;
            }
        }
    }
}

/// Counts by agent, rule and action.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct Summary {
    pub total: u64,
    pub by_agent: BTreeMap<String, u64>,
    pub by_rule: BTreeMap<String, u64>,
    pub by_action: BTreeMap<String, u64>,
    pub by_kind: BTreeMap<String, u64>,
    /// Per (agent, rule, action), most frequent first.
    pub rows: Vec<SummaryRow>,
    /// The credentials each agent touched (`secret_read` lines): per agent, secret and file.
    pub secrets: Vec<SecretRow>,
}

/// One credential an agent read: by detector and fingerprint, never the secret.
#[derive(Clone, Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretRow {
    pub agent: String,
    pub detector: String,
    pub fingerprint: String,
    pub file: String,
    /// `secret_read` lines (one per agent tree and file version).
    pub reads: u64,
    /// Agent trees (roots) that read it.
    pub trees: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct SummaryRow {
    pub agent: String,
    pub rule: String,
    pub action: String,
    pub count: u64,
}

const NONE: &str = "-";

#[derive(Default)]
pub struct SummaryBuilder {
    summary: Summary,
    rows: BTreeMap<(String, String, String), u64>,
    secrets: BTreeMap<SecretKey, (u64, BTreeSet<(u32, u64)>)>,
}

/// (agent, detector, fingerprint, file) of a secret read, counted with its reads and the
/// roots (pid, start) that read it.
type SecretKey = (String, String, String, String);

impl SummaryBuilder {
    pub fn add(&mut self, e: &Event) {
        let s = &mut self.summary;
        let agent = if e.agent.is_empty() { NONE } else { &e.agent };
        let rule = e.rule.as_deref().unwrap_or(NONE);
        let action = e.action.as_deref().unwrap_or(NONE);
        s.total += 1;
        *s.by_agent.entry(agent.into()).or_default() += 1;
        *s.by_rule.entry(rule.into()).or_default() += 1;
        *s.by_action.entry(action.into()).or_default() += 1;
        *s.by_kind.entry(e.kind.clone()).or_default() += 1;
        *self
            .rows
            .entry((agent.into(), rule.into(), action.into()))
            .or_default() += 1;
        let file = e.object.as_ref().and_then(|o| o.path.clone());
        let root = e.root.as_ref().map(|r| (r.pid, r.start_ns));
        for found in &e.secrets {
            let key = (
                agent.to_owned(),
                found.detector.clone(),
                found.fingerprint.clone(),
                file.clone().unwrap_or_else(|| NONE.into()),
            );
            let (reads, roots) = self.secrets.entry(key).or_default();
            *reads += 1;
            roots.extend(root);
        }
    }

    pub fn finish(mut self) -> Summary {
        let mut rows: Vec<SummaryRow> = self
            .rows
            .into_iter()
            .map(|((agent, rule, action), count)| SummaryRow {
                agent,
                rule,
                action,
                count,
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.count));
        self.summary.rows = rows;
        self.summary.secrets = self
            .secrets
            .into_iter()
            .map(
                |((agent, detector, fingerprint, file), (reads, roots))| SecretRow {
                    agent,
                    detector,
                    fingerprint,
                    file,
                    reads,
                    trees: roots.len() as u64,
                },
            )
            .collect();
        self.summary
    }
}

/// `guard events` options.
#[derive(Clone, Debug, Default)]
pub struct EventsArgs {
    pub filter: Filter,
    pub follow: bool,
    pub json: bool,
    pub summary: bool,
    /// Colour (only ever on a terminal).
    pub color: bool,
}

impl EventsArgs {
    /// `--since DURATION` as a cutoff from now.
    pub fn since(d: Duration) -> OffsetDateTime {
        OffsetDateTime::now_utc() - d
    }
}

const FOLLOW_POLL: Duration = Duration::from_millis(200);

/// Run `guard events` against the log at `path`, writing to `out`.
pub fn run(path: &Path, args: &EventsArgs, out: &mut dyn Write) -> Result<(), QueryError> {
    let w = QueryError::Write;
    let mut stats = ReadStats::default();
    let mut shown = Vec::new();
    let mut summary = SummaryBuilder::default();
    let keep = |l: Line, shown: &mut Vec<Line>, summary: &mut SummaryBuilder| {
        if args.filter.matches(&l.event) {
            if args.summary {
                summary.add(&l.event);
            } else {
                shown.push(l);
            }
        }
    };
    let read_err = |source| QueryError::Read {
        path: path.to_path_buf(),
        source,
    };
    let mut follower = match first_file(path, args.filter.since) {
        Some(first) => Follower::from(path, &first).map_err(read_err)?,
        None => Follower::new(path),
    };
    stats.files = log_files(path).len();
    for raw in follower.poll().map_err(read_err)? {
        stats.lines += 1;
        match parse(&raw) {
            Some(l) => keep(l, &mut shown, &mut summary),
            None => stats.bad += 1,
        }
    }
    if stats.bad > 0 {
        eprintln!(
            "guard: skipped {} line(s) of {} that are not events",
            stats.bad,
            path.display()
        );
    }
    if args.summary {
        let s = summary.finish();
        if args.json {
            writeln!(out, "{}", serde_json::to_string(&s).unwrap_or_default()).map_err(w)?;
        } else if s.total == 0 {
            writeln!(out, "{}", no_events(path, &args.filter, &stats)).map_err(w)?;
        } else {
            write!(out, "{}", table::summary(&s, args.color)).map_err(w)?;
        }
        return Ok(());
    }
    if args.json {
        for l in &shown {
            writeln!(out, "{}", l.raw).map_err(w)?;
        }
    } else if !shown.is_empty() {
        let events: Vec<&Event> = shown.iter().map(|l| &l.event).collect();
        write!(out, "{}", table::events(&events, args.color)).map_err(w)?;
    }
    if shown.is_empty() && !args.json {
        let msg = no_events(path, &args.filter, &stats);
        if args.follow {
            eprintln!("{msg}; following…");
        } else {
            writeln!(out, "{msg}").map_err(w)?;
        }
    }
    out.flush().map_err(w)?;
    if !args.follow {
        return Ok(());
    }
    if shown.is_empty() && !args.json {
        write!(out, "{}", table::follow_header(args.color)).map_err(w)?;
    }
    loop {
        std::thread::sleep(FOLLOW_POLL);
        for raw in follower.poll().map_err(read_err)? {
            let Some(l) = parse(&raw) else { continue };
            if !args.filter.matches(&l.event) {
                continue;
            }
            if args.json {
                writeln!(out, "{}", l.raw).map_err(w)?;
            } else {
                write!(out, "{}", table::follow_row(&l.event, args.color)).map_err(w)?;
            }
        }
        out.flush().map_err(w)?;
    }
}

fn no_events(path: &Path, filter: &Filter, stats: &ReadStats) -> String {
    let filters = filter.describe();
    let matching = if filters.is_empty() {
        String::new()
    } else {
        format!(" matching {filters}")
    };
    if stats.files == 0 {
        format!("no events{matching}: {} does not exist yet", path.display())
    } else {
        format!(
            "no events{matching} in {} ({} file(s), {} line(s))",
            path.display(),
            stats.files,
            stats.lines
        )
    }
}

#[cfg(test)]
mod tests;
