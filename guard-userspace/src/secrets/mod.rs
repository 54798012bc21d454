//! Credentials in what agents read and run: the detectors, a scanner over bytes, a keyed
//! fingerprint that names a secret without revealing it, and redaction of command lines.
//!
//! Nothing here ever returns or logs a secret: a finding carries its detector, where it is
//! and its fingerprint.

mod detectors;
pub mod file;
mod fingerprint;
pub mod taint;
pub mod walk;

use std::{ops::Range, sync::OnceLock};

use aho_corasick::AhoCorasick;
use regex::bytes::Regex;

pub use detectors::{Check, DETECTORS, Detector};
pub use fingerprint::Key;
pub use taint::{Cause, Taints};

/// One secret found: which detector, where (byte range in the scanned data, 1-based line)
/// and its fingerprint.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Finding {
    pub detector: &'static str,
    pub line: u32,
    #[serde(skip)]
    pub range: Range<usize>,
    pub fingerprint: String,
}

/// The detectors, compiled once.
pub struct Scanner {
    regexes: Vec<Regex>,
    keywords: AhoCorasick,
    /// Keyword pattern index → detector index.
    owner: Vec<usize>,
}

impl Scanner {
    fn new() -> Self {
        let regexes = DETECTORS
            .iter()
            .map(|d| {
                Regex::new(d.pattern)
                    .unwrap_or_else(|e| panic!("detector {}: bad pattern: {e}", d.name))
            })
            .collect();
        let mut owner = Vec::new();
        let mut words = Vec::new();
        for (i, d) in DETECTORS.iter().enumerate() {
            for k in d.keywords {
                owner.push(i);
                words.push(*k);
            }
        }
        let keywords = AhoCorasick::builder()
            .ascii_case_insensitive(true)
            .build(&words)
            .expect("keywords compile");
        Self {
            regexes,
            keywords,
            owner,
        }
    }

    /// The compiled detectors, shared by the daemon and the CLI.
    pub fn get() -> &'static Scanner {
        static SCANNER: OnceLock<Scanner> = OnceLock::new();
        SCANNER.get_or_init(Scanner::new)
    }

    /// Every secret in `data`, in order; where matches overlap, the earlier detector's wins.
    pub fn scan(&self, data: &[u8], key: &Key) -> Vec<Finding> {
        let mut wanted = vec![false; DETECTORS.len()];
        for m in self.keywords.find_overlapping_iter(data) {
            wanted[self.owner[m.pattern().as_usize()]] = true;
        }
        let mut found: Vec<(usize, Range<usize>)> = Vec::new();
        for (i, d) in DETECTORS.iter().enumerate().filter(|(i, _)| wanted[*i]) {
            for caps in self.regexes[i].captures_iter(data) {
                let Some(m) = caps
                    .name("s")
                    .or_else(|| caps.name("u"))
                    .or_else(|| caps.get(0))
                else {
                    continue;
                };
                let range = m.range();
                if !passes(d.check, m.as_bytes())
                    || found
                        .iter()
                        .any(|(_, r)| r.start < range.end && range.start < r.end)
                {
                    continue;
                }
                found.push((i, range));
            }
        }
        found.sort_by_key(|(_, r)| r.start);
        let mut line = 1u32;
        let mut counted = 0;
        found
            .into_iter()
            .map(|(i, range)| {
                line += count_newlines(&data[counted..range.start]);
                counted = range.start;
                Finding {
                    detector: DETECTORS[i].name,
                    line,
                    fingerprint: key.fingerprint(&data[range.clone()]),
                    range,
                }
            })
            .collect()
    }

    /// `text` with every secret replaced by `[secret:DETECTOR:FINGERPRINT]`, or `None` when
    /// it holds none.
    pub fn redact(&self, text: &str, key: &Key) -> Option<String> {
        let findings = self.scan(text.as_bytes(), key);
        if findings.is_empty() {
            return None;
        }
        let mut out = String::with_capacity(text.len());
        let mut at = 0;
        for f in findings {
            // Ranges come from byte patterns over UTF-8 input; keep them on char boundaries.
            let (start, end) = (
                floor_char(text, f.range.start),
                ceil_char(text, f.range.end),
            );
            if start < at {
                continue;
            }
            out.push_str(&text[at..start]);
            out.push_str(&format!("[secret:{}:{}]", f.detector, f.fingerprint));
            at = end;
        }
        out.push_str(&text[at..]);
        Some(out)
    }
}

static KEY: OnceLock<Key> = OnceLock::new();

/// Set the installation's fingerprint key (the daemon, at start, before it reads any command
/// line). Later calls change nothing.
pub fn install_key(key: Key) {
    let _ = KEY.set(key);
}

/// The installation's key, or where none was installed (tests, the CLI), one of this process.
pub fn key() -> &'static Key {
    KEY.get_or_init(|| Key::random().unwrap_or_else(|_| Key::of_process()))
}

/// Redact each argument of a command line (a secret may sit in one argument or straddle
/// `--flag=value`; each argument is scanned on its own and joined with its neighbour when
/// it is a bare option name, so `-H "Authorization: token …"` and `--password=…` are both
/// seen).
pub fn redact_argv(argv: &mut [String], key: &Key) {
    let scanner = Scanner::get();
    for i in 0..argv.len() {
        if let Some(r) = scanner.redact(&argv[i], key) {
            argv[i] = r;
            continue;
        }
        // `--token VALUE`: the name is in the previous argument.
        if i > 0 && argv[i - 1].starts_with('-') && !argv[i - 1].contains('=') {
            let joined = format!("{}={}", argv[i - 1], argv[i]);
            if let Some(r) = scanner.redact(&joined, key) {
                let value = r.split_once('=').map_or(r.as_str(), |(_, v)| v);
                argv[i] = value.to_owned();
            }
        }
    }
}

fn count_newlines(b: &[u8]) -> u32 {
    b.iter().filter(|c| **c == b'\n').count() as u32
}

fn floor_char(s: &str, mut i: usize) -> usize {
    while i > 0 && !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn ceil_char(s: &str, mut i: usize) -> usize {
    while i < s.len() && !s.is_char_boundary(i) {
        i += 1;
    }
    i
}

/// Whether a matched value is what its detector's check asks for.
fn passes(check: Check, value: &[u8]) -> bool {
    // Vendors' documentation keys say so (AWS's end in EXAMPLE).
    if value.windows(7).any(|w| w.eq_ignore_ascii_case(b"example")) {
        return false;
    }
    match check {
        Check::Format => true,
        Check::Random(bits) => {
            let letters = value.iter().any(u8::is_ascii_alphabetic);
            let digits = value.iter().any(u8::is_ascii_digit);
            letters
                && digits
                && entropy(value) >= f64::from(bits)
                && !placeholder(value)
                && !identifier_like(value)
        }
        Check::Password => !placeholder(value) && !is_variable(value),
    }
}

/// Shannon entropy in bits per byte.
pub fn entropy(value: &[u8]) -> f64 {
    if value.is_empty() {
        return 0.0;
    }
    let mut counts = [0u32; 256];
    for b in value {
        counts[usize::from(*b)] += 1;
    }
    let n = value.len() as f64;
    counts
        .iter()
        .filter(|c| **c > 0)
        .map(|c| {
            let p = f64::from(*c) / n;
            -p * p.log2()
        })
        .sum()
}

/// A name, not a value: `MSV1_0_CREDENTIAL_KEY`, `x25519_check_private_key_bytes`,
/// `PresentHistoryToken`, `self.next_token` — type annotations and code, which an assignment
/// pattern meets everywhere in source trees. Every `_`/`.`-separated part must read as words:
/// runs of two or more letters of one case (or a capital and lower case), or digits. A random
/// token breaks into one-letter pieces somewhere.
fn identifier_like(value: &[u8]) -> bool {
    if !value
        .iter()
        .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'.')
    {
        return false;
    }
    value
        .split(|c| *c == b'_' || *c == b'.')
        .all(|part| part.len() <= 3 || wordy(part))
}

fn wordy(part: &[u8]) -> bool {
    let mut i = 0;
    while i < part.len() {
        let start = i;
        let c = part[i];
        if c.is_ascii_digit() {
            while i < part.len() && part[i].is_ascii_digit() {
                i += 1;
            }
            continue;
        }
        if c.is_ascii_uppercase() && part.get(i + 1).is_some_and(u8::is_ascii_lowercase) {
            i += 1;
        }
        let upper = part[i].is_ascii_uppercase();
        while i < part.len()
            && part[i].is_ascii_alphabetic()
            && part[i].is_ascii_uppercase() == upper
        {
            // An upper-case run gives its last capital to a following lower-case word.
            if upper && part.get(i + 1).is_some_and(u8::is_ascii_lowercase) && i > start {
                break;
            }
            i += 1;
        }
        // One letter only at the start, before digits (`x25519`, `v2`).
        if i - start < 2 && !(start == 0 && part.get(i).is_some_and(u8::is_ascii_digit)) {
            return false;
        }
    }
    true
}

/// Documentation values and obvious stand-ins.
fn placeholder(value: &[u8]) -> bool {
    const WORDS: [&str; 14] = [
        "example",
        "xxxx",
        "changeme",
        "change_me",
        "placeholder",
        "your_",
        "your-",
        "dummy",
        "redacted",
        "password",
        "secret",
        "sample",
        "0000",
        "1234",
    ];
    let lower = value.to_ascii_lowercase();
    let lower = String::from_utf8_lossy(&lower);
    WORDS.iter().any(|w| lower.contains(w)) || lower.len() < 4
}

/// `${VAR}`, `$VAR`, `%(var)s`, `{{ var }}`, `<password>`: a reference, not a value.
fn is_variable(value: &[u8]) -> bool {
    matches!(value.first(), Some(b'$' | b'%' | b'{' | b'<' | b'*'))
}

#[cfg(test)]
mod tests;
