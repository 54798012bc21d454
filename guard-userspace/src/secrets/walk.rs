//! `guard secrets scan`: the detectors over a tree, with throughput — what the inventory of a
//! project looks like before an agent reads it, and the numbers the bench reports.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Instant,
};

use serde::Serialize;

use super::{
    Key,
    file::{self, Scanned},
};

/// One finding with its file (never the secret).
#[derive(Clone, Debug, Serialize)]
pub struct Located {
    pub path: PathBuf,
    pub line: u32,
    pub detector: &'static str,
    pub fingerprint: String,
}

/// What a scan of one or more trees read and found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub files: u64,
    pub bytes: u64,
    /// Skipped: a NUL byte near the start.
    pub binary: u64,
    /// Scanned up to [`file::MAX_BYTES`] only.
    pub truncated: u64,
    /// Could not be opened or read (named in `unreadable_paths`, the first 20).
    pub unreadable: u64,
    pub unreadable_paths: Vec<PathBuf>,
    pub seconds: f64,
    /// CPU time of this process (user and system) over the scan.
    pub cpu_seconds: f64,
    pub mb_per_s: f64,
    pub files_per_s: f64,
    pub by_detector: BTreeMap<&'static str, u64>,
    pub findings: Vec<Located>,
}

/// Scan every regular file under `roots` (symlinks not followed).
pub fn scan(roots: &[PathBuf], key: &Key) -> Report {
    let started = Instant::now();
    let cpu_before = cpu_seconds();
    let mut r = Report::default();
    for root in roots {
        for entry in walkdir::WalkDir::new(root).follow_links(false) {
            match entry {
                Ok(e) if e.file_type().is_file() => scan_one(e.path(), key, &mut r),
                Ok(_) => {}
                Err(e) => unreadable(&mut r, e.path().unwrap_or(root)),
            }
        }
    }
    r.seconds = started.elapsed().as_secs_f64();
    r.cpu_seconds = cpu_seconds() - cpu_before;
    if r.seconds > 0.0 {
        r.mb_per_s = r.bytes as f64 / 1e6 / r.seconds;
        r.files_per_s = r.files as f64 / r.seconds;
    }
    r
}

fn scan_one(path: &Path, key: &Key, r: &mut Report) {
    let scanned = file::open(path).and_then(|f| file::scan_file(&f, key));
    match scanned {
        Ok((
            _,
            Scanned::Text {
                findings,
                bytes,
                truncated,
            },
        )) => {
            r.files += 1;
            r.bytes += bytes;
            r.truncated += u64::from(truncated);
            for f in findings {
                *r.by_detector.entry(f.detector).or_default() += 1;
                r.findings.push(Located {
                    path: path.to_owned(),
                    line: f.line,
                    detector: f.detector,
                    fingerprint: f.fingerprint,
                });
            }
        }
        Ok((_, Scanned::Binary)) => r.binary += 1,
        Ok((_, Scanned::NotRegular)) => {}
        Err(_) => unreadable(r, path),
    }
}

/// User and system CPU time of this process so far.
fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return 0.0;
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn unreadable(r: &mut Report, path: &Path) {
    r.unreadable += 1;
    if r.unreadable_paths.len() < 20 {
        r.unreadable_paths.push(path.to_owned());
    }
}

/// The key `guard secrets scan` uses: the daemon's (so fingerprints match its events) where
/// this user can read it, else one of its own.
pub fn cli_key(event_log: &Path) -> anyhow::Result<(Key, &'static str)> {
    Ok(match Key::load(&Key::path_for(event_log)) {
        Ok(k) => (k, "the daemon's key: fingerprints match its events"),
        Err(_) => (
            Key::random()?,
            "a key of this run only: fingerprints do not match the daemon's events",
        ),
    })
}
