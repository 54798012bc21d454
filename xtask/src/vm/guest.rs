//! One boot: qemu (TCG) with the kernel and the initramfs, the serial console on stdout,
//! parsed line by line into results (protocol in `init.rs`) and saved to a log. A guest that
//! stops making progress is killed and its running step reported as failed.

use std::{
    fs,
    io::{BufRead as _, BufReader, Write as _},
    path::PathBuf,
    process::Stdio,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};

use super::{init::MARK, tools::Qemu};

/// The result of one step as the guest reported it (or as the host decided, on a hang).
pub struct StepResult {
    pub id: String,
    pub passed: bool,
    pub millis: u64,
    pub why: String,
    pub notes: Vec<String>,
    pub output: Vec<String>,
}

/// What one boot produced.
pub struct Outcome {
    /// `uname -r` and the active LSM list, from the guest's `boot` line.
    pub release: Option<String>,
    pub lsm: Option<String>,
    /// From starting qemu to the guest's `boot` line.
    pub boot: Option<Duration>,
    pub total: Duration,
    pub results: Vec<StepResult>,
    /// Why the boot as a whole failed (hang, panic, no `done`), if it did.
    pub error: Option<String>,
}

pub struct Boot {
    pub label: String,
    /// Steps this boot leaves out (the guest's init skips them), with the reason.
    pub left_out: Vec<(String, &'static str)>,
    pub qemu: Qemu,
    pub vmlinuz: PathBuf,
    pub initrd: PathBuf,
    pub append: String,
    pub log: PathBuf,
    /// Longest wait for the `boot` line, and for each step's result after its `start`.
    pub boot_timeout: Duration,
    pub step_timeout: Duration,
}

enum Msg {
    Line(String),
    Eof,
}

pub fn run(b: &Boot) -> Result<Outcome> {
    let mut cmd = b.qemu.command();
    cmd.args([
        "-accel",
        "tcg",
        "-m",
        "1G",
        "-nodefaults",
        "-serial",
        "stdio",
    ])
    .args(["-display", "none", "-no-reboot", "-kernel"])
    .arg(&b.vmlinuz)
    .arg("-initrd")
    .arg(&b.initrd)
    .args(["-append", &b.append])
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut log =
        fs::File::create(&b.log).with_context(|| format!("cannot create {}", b.log.display()))?;
    writeln!(log, "# {}", crate::util::show(&cmd))?;
    let start = Instant::now();
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {}", b.qemu.program.display()))?;
    let (tx, rx) = mpsc::channel();
    for stream in [
        Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().expect("piped")),
    ] {
        let tx = tx.clone();
        thread::spawn(move || {
            let mut r = BufReader::new(stream);
            let mut buf = Vec::new();
            while r.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
                let line = String::from_utf8_lossy(&buf).trim_end().to_owned();
                if tx.send(Msg::Line(line)).is_err() {
                    return;
                }
                buf.clear();
            }
            let _ = tx.send(Msg::Eof);
        });
    }
    drop(tx);

    let mut p = Parser::new(&b.label);
    let mut deadline = start + b.boot_timeout;
    let mut eofs = 0;
    let mut error = None;
    while eofs < 2 {
        let wait = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(wait) {
            Ok(Msg::Line(line)) => {
                writeln!(log, "{line}")?;
                if p.feed(&line, start.elapsed()) {
                    deadline = Instant::now() + b.step_timeout + Duration::from_secs(30);
                }
            }
            Ok(Msg::Eof) => eofs += 1,
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                let _ = child.kill();
                let what = match (&p.boot, &p.running) {
                    (None, _) => format!("no boot line within {}s", b.boot_timeout.as_secs()),
                    (Some(_), Some(id)) => format!("{id} made no progress"),
                    (Some(_), None) => "no progress between steps".to_owned(),
                };
                error = Some(format!(
                    "guest killed after {:.0}s: {what}",
                    start.elapsed().as_secs_f64()
                ));
                writeln!(log, "# vm-test: {}", error.as_deref().unwrap_or_default())?;
                break;
            }
        }
    }
    let status = child.wait()?;
    if let Some(id) = p.running.take() {
        let why = error
            .clone()
            .unwrap_or_else(|| format!("guest ended mid-test (qemu {status})"));
        let millis = (start.elapsed().saturating_sub(p.started)).as_millis();
        p.finish(id, false, u64::try_from(millis).unwrap_or(u64::MAX), why);
    }
    if error.is_none() && !p.done {
        error = Some(format!(
            "guest ended before it reported `done` (qemu {status}; kernel panic or init died?)"
        ));
    }
    Ok(Outcome {
        release: p.release,
        lsm: p.lsm,
        boot: p.boot,
        total: start.elapsed(),
        results: p.results,
        error,
    })
}

/// Turns console lines into results, printing progress as they come.
struct Parser<'a> {
    label: &'a str,
    release: Option<String>,
    lsm: Option<String>,
    boot: Option<Duration>,
    running: Option<String>,
    /// When the running step started (console time since qemu started).
    started: Duration,
    notes: Vec<String>,
    output: Option<Vec<String>>,
    results: Vec<StepResult>,
    done: bool,
}

impl<'a> Parser<'a> {
    fn new(label: &'a str) -> Self {
        Self {
            label,
            release: None,
            lsm: None,
            boot: None,
            running: None,
            started: Duration::ZERO,
            notes: Vec::new(),
            output: None,
            results: Vec::new(),
            done: false,
        }
    }

    /// Feed one console line; true when it shows progress (resets the hang timer).
    fn feed(&mut self, line: &str, at: Duration) -> bool {
        let (before, msg) = match line.find(MARK) {
            Some(i) => (&line[..i], Some(&line[i + MARK.len()..])),
            None => (line, None),
        };
        if let Some(out) = &mut self.output
            && !before.is_empty()
        {
            out.push(before.to_owned());
        }
        let Some(msg) = msg else {
            return false;
        };
        let (verb, rest) = msg.split_once(' ').unwrap_or((msg, ""));
        match verb {
            "boot" => {
                let mut words = rest.split_whitespace();
                self.release = words.next().map(str::to_owned);
                self.lsm = words
                    .find_map(|w| w.strip_prefix("lsm="))
                    .map(str::to_owned);
                self.boot = Some(at);
                println!(
                    "[{}] booted {} in {:.1}s, active LSMs: {}",
                    self.label,
                    self.release.as_deref().unwrap_or("?"),
                    at.as_secs_f64(),
                    self.lsm.as_deref().unwrap_or("?")
                );
            }
            "start" => {
                self.running = Some(rest.to_owned());
                self.started = at;
                self.notes.clear();
            }
            "note" => self
                .notes
                .push(rest.split_once(' ').map_or(rest, |(_, n)| n).to_owned()),
            "output-begin" => self.output = Some(Vec::new()),
            "output-end" => {}
            "result" => {
                let mut w = rest.splitn(4, ' ');
                let id = w.next().unwrap_or_default().to_owned();
                let passed = w.next() == Some("pass");
                let millis = w.next().and_then(|m| m.parse().ok()).unwrap_or(0);
                let why = w.next().unwrap_or_default().to_owned();
                self.running = None;
                self.finish(id, passed, millis, why);
            }
            "done" => self.done = true,
            "warn" => println!("[{}] guest warning: {rest}", self.label),
            _ => return false,
        }
        true
    }

    fn finish(&mut self, id: String, passed: bool, millis: u64, why: String) {
        let notes = std::mem::take(&mut self.notes);
        let output = self.output.take().unwrap_or_default();
        println!(
            "[{}] {} {id} ({:.1}s){}{}",
            self.label,
            if passed { "pass" } else { "FAIL" },
            millis as f64 / 1000.0,
            if why.is_empty() {
                String::new()
            } else {
                format!(": {why}")
            },
            if notes.is_empty() {
                String::new()
            } else {
                format!(" [{}]", notes.join("; "))
            },
        );
        self.results.push(StepResult {
            id,
            passed,
            millis,
            why,
            notes,
            output,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_lines_become_results() {
        let mut p = Parser::new("t");
        let at = Duration::from_secs(4);
        assert!(!p.feed("[    0.000000] Linux version 6.12", at));
        assert!(p.feed(
            "@@guard-vm boot 6.12.9-cloud-amd64 lsm=capability,bpf tier=bpf-lsm",
            at
        ));
        assert!(p.feed("@@guard-vm start check::probe-tier", at));
        assert!(p.feed("@@guard-vm result check::probe-tier pass 812", at));
        assert!(p.feed("@@guard-vm start t::x", at));
        assert!(p.feed("@@guard-vm note t::x SKIPPED: node is not installed", at));
        assert!(p.feed("@@guard-vm output-begin t::x", at));
        assert!(!p.feed("thread 'x' panicked", at));
        // A kernel message glued in front of a protocol line does not hide it.
        assert!(p.feed("[ 9.1] audit: x@@guard-vm output-end t::x", at));
        assert!(p.feed("@@guard-vm result t::x fail 1500 exit status 101", at));
        assert!(p.feed("@@guard-vm done", at));
        assert_eq!(p.release.as_deref(), Some("6.12.9-cloud-amd64"));
        assert_eq!(p.lsm.as_deref(), Some("capability,bpf"));
        assert!(p.done && p.running.is_none());
        let [a, b] = &p.results[..] else {
            panic!("two results")
        };
        assert!(a.passed && a.millis == 812);
        assert!(!b.passed && b.why == "exit status 101");
        assert_eq!(b.notes, ["SKIPPED: node is not installed"]);
        assert_eq!(b.output, ["thread 'x' panicked", "[ 9.1] audit: x"]);
    }
}
