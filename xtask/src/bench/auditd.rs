//! The comparison: auditd (the Debian package, installed when missing) with rules that watch
//! what the 1,000-rule guard policy watches. The bench starts its own auditd in the
//! foreground with the package's default configuration, only the log moved to a temp dir.
//!
//! auditd and its rules stay loaded for the whole run, and auditing is switched on only while
//! the auditd configuration is measured. Two reasons:
//! - removing ~1,600 watch rules took the kernel 10–20 s here (`auditctl -D`),
//!   far too long to repeat every round;
//! - once audit has ever been enabled, the kernel gives every new task an audit context and
//!   sends its system calls through the slow path, even with audit disabled again. Outside
//!   the auditd sessions the bench therefore holds a `-a never,task` rule, so the other
//!   configurations' processes run as on a host where audit was never on.
//!
//! On drop: delete the rules, stop that auditd by pid, restore the kernel's audit settings
//! (enabled, failure, backlog and rate limits) as they were. A bench killed before that
//! (SIGKILL, Ctrl-C) leaves its rules loaded: `auditctl -D` removes them.

use std::{
    ffi::OsStr,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

const DEFAULT_CONF: &str = "/etc/audit/auditd.conf";

/// The kernel's audit settings (`auditctl -s`) we change and restore.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AuditState {
    pub enabled: u32,
    pub failure: u32,
    pub pid: u32,
    pub rate_limit: u32,
    pub backlog_limit: u32,
}

impl AuditState {
    pub fn read() -> Result<Self> {
        let out = util::output(
            Command::new("auditctl").arg("-s"),
            "auditctl needs root and the initial user namespace",
        )?;
        Ok(Self::parse(&String::from_utf8_lossy(&out.stdout)))
    }

    fn parse(text: &str) -> Self {
        let mut s = Self::default();
        for line in text.lines() {
            let mut it = line.split_whitespace();
            let (Some(k), Some(v)) = (it.next(), it.next().and_then(|v| v.parse().ok())) else {
                continue;
            };
            match k {
                "enabled" => s.enabled = v,
                "failure" => s.failure = v,
                "pid" => s.pid = v,
                "rate_limit" => s.rate_limit = v,
                "backlog_limit" => s.backlog_limit = v,
                _ => {}
            }
        }
        s
    }
}

/// Make auditd usable: install the package when missing, and check that no audit daemon we
/// did not start is registered with the kernel. Returns what the install did, or why the
/// auditd configuration must be skipped.
pub fn prepare() -> std::result::Result<(String, AuditState), String> {
    let mut note = "auditd already installed".to_string();
    if which::which("auditd").is_err() || which::which("auditctl").is_err() {
        println!("[bench] auditd is not installed; installing the Debian package `auditd`");
        crate::apt::install(&["auditd"], "apt-get install auditd")
            .map_err(|e| format!("installing the auditd package failed: {e:#}"))?;
        note = "auditd installed by the bench with apt-get".into();
    }
    if let Some(pid) = running("auditd") {
        return Err(format!(
            "an auditd the bench did not start is running (pid {pid}); the bench only stops \
             processes it started"
        ));
    }
    let state = AuditState::read().map_err(|e| format!("auditctl -s failed: {e:#}"))?;
    if state.enabled == 2 {
        return Err("the kernel's audit configuration is locked (enabled 2)".into());
    }
    if state.pid != 0 {
        return Err(format!(
            "another audit daemon (pid {}) is registered with the kernel",
            state.pid
        ));
    }
    Ok((note, state))
}

/// The pid of a process whose comm is `name`, if any.
fn running(name: &str) -> Option<u32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: u32 = e.file_name().to_str()?.parse().ok()?;
        let comm = fs::read_to_string(e.path().join("comm")).ok()?;
        (comm.trim() == name).then_some(pid)
    })
}

pub struct Auditd {
    child: Option<Child>,
    saved: AuditState,
    pub log: PathBuf,
    pub rules_loaded: usize,
    active: bool,
}

impl Auditd {
    /// Start auditd with the package's configuration (log in `dir`), load `rules`, and leave
    /// auditing off (see the module documentation) until [`Auditd::activate`].
    pub fn start(dir: &Path, rules: &Path, saved: &AuditState) -> Result<Self> {
        let conf_dir = dir.join("etc");
        fs::create_dir_all(&conf_dir)?;
        let log = dir.join("audit.log");
        let default = fs::read_to_string(DEFAULT_CONF)
            .with_context(|| format!("reading the package's {DEFAULT_CONF}"))?;
        fs::write(conf_dir.join("auditd.conf"), conf(&default, &log))?;
        let out = fs::File::create(dir.join("auditd.out"))?;
        let child = Command::new("auditd")
            .arg("-n")
            .arg("-c")
            .arg(&conf_dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("cannot start auditd")?;
        let pid = child.id();
        let mut a = Self {
            child: Some(child),
            saved: saved.clone(),
            log,
            rules_loaded: 0,
            active: true,
        };
        let start = Instant::now();
        loop {
            if let Some(st) = a.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "auditd exited with {st}: {}",
                    fs::read_to_string(dir.join("auditd.out")).unwrap_or_default()
                );
            }
            if AuditState::read().is_ok_and(|s| s.pid == pid) {
                break;
            }
            if start.elapsed() > Duration::from_secs(15) {
                bail!("auditd (pid {pid}) did not register with the kernel within 15 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        auditctl(&[OsStr::new("-R"), rules.as_os_str()]).context("loading the audit rules")?;
        let listed = util::output(Command::new("auditctl").arg("-l"), "auditctl -l")?;
        a.rules_loaded = String::from_utf8_lossy(&listed.stdout)
            .lines()
            .filter(|l| l.starts_with('-'))
            .count();
        a.quiet()?;
        Ok(a)
    }

    /// Audit new processes: drop the `never,task` rule, enable auditing.
    pub fn activate(&mut self) -> Result<()> {
        if !self.active {
            auditctl(&["-d", "never,task"].map(OsStr::new))?;
            auditctl(&["-e", "1"].map(OsStr::new))?;
            self.active = true;
        }
        Ok(())
    }

    /// Stop auditing: disable, and keep audit contexts off new processes.
    pub fn quiet(&mut self) -> Result<()> {
        if self.active {
            auditctl(&["-e", "0"].map(OsStr::new))?;
            auditctl(&["-A", "never,task"].map(OsStr::new))?;
            self.active = false;
        }
        Ok(())
    }

    /// Bytes in the audit log (and its rotated copy).
    pub fn log_bytes(&self) -> u64 {
        let rotated = PathBuf::from(format!("{}.1", self.log.display()));
        [&self.log, &rotated]
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }
}

fn auditctl(args: &[&OsStr]) -> Result<()> {
    util::output(
        Command::new("auditctl").args(args),
        "check `auditctl -s` and `auditctl -l`",
    )
    .map(drop)
}

/// The package's configuration with the log moved to `log` and bounded to two 64 MB files.
fn conf(default: &str, log: &Path) -> String {
    let overrides = [
        ("log_file", log.display().to_string()),
        ("max_log_file", "64".into()),
        ("num_logs", "2".into()),
        ("max_log_file_action", "ROTATE".into()),
    ];
    let mut out: Vec<String> = default
        .lines()
        .filter(|l| {
            let key = l.split('=').next().unwrap_or("").trim();
            !overrides.iter().any(|(k, _)| *k == key)
        })
        .map(str::to_string)
        .collect();
    out.extend(overrides.iter().map(|(k, v)| format!("{k} = {v}")));
    out.join("\n") + "\n"
}

impl Drop for Auditd {
    fn drop(&mut self) {
        let quiet = |args: &[&str]| {
            let _ = Command::new("auditctl")
                .args(args)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        };
        println!("[bench] removing the audit rules (the kernel takes a while for watches)");
        quiet(&["-D"]);
        if let Some(mut child) = self.child.take() {
            super::daemon::stop(&mut child, "TERM", Duration::from_secs(10));
        }
        let s = &self.saved;
        quiet(&["-b", &s.backlog_limit.to_string()]);
        quiet(&["-r", &s.rate_limit.to_string()]);
        quiet(&["-f", &s.failure.to_string()]);
        quiet(&["-e", &s.enabled.to_string()]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_auditctl_status() {
        let s = AuditState::parse(
            "enabled 1\nfailure 1\npid 812\nrate_limit 0\nbacklog_limit 8192\nlost 0\n\
             backlog 0\nbacklog_wait_time 60000\n",
        );
        assert_eq!(
            s,
            AuditState {
                enabled: 1,
                failure: 1,
                pid: 812,
                rate_limit: 0,
                backlog_limit: 8192
            }
        );
    }

    #[test]
    fn conf_moves_the_log() {
        let c = conf(
            "log_file = /var/log/audit/audit.log\nflush = INCREMENTAL_ASYNC\nnum_logs = 5\n",
            Path::new("/tmp/x/audit.log"),
        );
        assert!(c.contains("log_file = /tmp/x/audit.log"));
        assert!(c.contains("flush = INCREMENTAL_ASYNC"));
        assert!(!c.contains("num_logs = 5"));
        assert!(c.contains("num_logs = 2"));
    }
}
