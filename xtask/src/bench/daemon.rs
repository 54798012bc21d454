//! A `guard daemon` the bench starts and owns: its own socket, event log and pin directory
//! under /sys/fs/bpf. Dropping it stops the daemon (by pid), removes its pins with
//! `guard daemon --uninstall` and deletes the pin directory.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, bail};

use super::json::Json;

pub struct Daemon {
    child: Option<Child>,
    guard: PathBuf,
    pub dir: PathBuf,
    pub pin_dir: PathBuf,
    pub event_log: PathBuf,
    socket: PathBuf,
    /// From spawning the process to the first `guard status` that says enforcing.
    pub start_to_enforcing: Duration,
    /// The daemon's start-up log messages and when each came, in seconds after the spawn.
    pub phases: Vec<(String, f64)>,
}

/// How often `guard status` is asked while waiting for the daemon.
pub const POLL: Duration = Duration::from_millis(5);

impl Daemon {
    /// Start `guard daemon [--policy POLICY]` with its files in `dir`, pinning under `pin_dir`,
    /// and wait until `guard status` says it is enforcing.
    pub fn start(
        guard: &Path,
        policy: Option<&Path>,
        dir: PathBuf,
        pin_dir: PathBuf,
    ) -> Result<Self> {
        Self::start_with(guard, policy, dir, pin_dir, &[])
    }

    /// [`Self::start`] with extra `guard daemon` arguments.
    pub fn start_with(
        guard: &Path,
        policy: Option<&Path>,
        dir: PathBuf,
        pin_dir: PathBuf,
        args: &[&str],
    ) -> Result<Self> {
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log = fs::File::create(dir.join("daemon.log"))?;
        let mut d = Self {
            child: None,
            guard: guard.to_path_buf(),
            socket: dir.join("guard.sock"),
            event_log: dir.join("events.jsonl"),
            dir,
            pin_dir,
            start_to_enforcing: Duration::ZERO,
            phases: Vec::new(),
        };
        let mut cmd = d.cli();
        cmd.arg("daemon")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(p) = policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.args(args);
        let start = Instant::now();
        let spawned_at = unix_ns(SystemTime::now());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {} daemon", guard.display()))?;
        let pid = child.id();
        d.child = Some(child);
        loop {
            if let Some(status) = d.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!(
                    "guard daemon (pid {pid}) exited with {status} before enforcing; its log:\n{}",
                    d.log_tail()
                );
            }
            let enforcing = d.status().is_some_and(|s| {
                s.get("daemon_pid").and_then(Json::as_f64) == Some(f64::from(pid))
                    && s.get("enforcing").and_then(Json::as_bool) == Some(true)
            });
            if enforcing {
                d.start_to_enforcing = start.elapsed();
                let log = fs::read_to_string(d.dir.join("daemon.log")).unwrap_or_default();
                d.phases = phases(&log, spawned_at);
                return Ok(d);
            }
            if start.elapsed() > Duration::from_secs(60) {
                bail!(
                    "guard daemon (pid {pid}) was not enforcing after 60 s; its log:\n{}",
                    d.log_tail()
                );
            }
            std::thread::sleep(POLL);
        }
    }

    /// Environment pointing a `guard` command at this daemon.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("GUARD_SOCKET", self.socket.clone()),
            ("GUARD_PIN_DIR", self.pin_dir.clone()),
            ("GUARD_EVENT_LOG", self.event_log.clone()),
        ]
    }

    /// A `guard` command aimed at this daemon.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(&self.guard);
        c.envs(self.env()).env_remove("RUST_BACKTRACE");
        c
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// `guard status -o json`, or None when the daemon does not answer.
    pub fn status(&self) -> Option<Json> {
        let out = self
            .cli()
            .args(["status", "-o", "json"])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()?;
        Json::parse(&String::from_utf8_lossy(&out.stdout))
            .ok()
            .filter(|v| v.get("daemon_pid").is_some())
    }

    /// A kernel counter from `guard status` (`counters: [[name, value], …]`).
    pub fn counter(&self, name: &str) -> Option<u64> {
        counter(&self.status()?, name)
    }

    /// The event log and its rotated copies (`events.jsonl.1`, …).
    fn event_log_files(&self) -> Vec<PathBuf> {
        let (Some(dir), Some(name)) = (self.event_log.parent(), self.event_log.file_name()) else {
            return Vec::new();
        };
        let name = name.to_string_lossy().into_owned();
        fs::read_dir(dir).map_or_else(
            |_| Vec::new(),
            |d| {
                d.flatten()
                    .filter(|e| {
                        let n = e.file_name().to_string_lossy().into_owned();
                        n == name
                            || n.strip_prefix(&name)
                                .and_then(|r| r.strip_prefix('.'))
                                .is_some_and(|r| r.parse::<u32>().is_ok())
                    })
                    .map(|e| e.path())
                    .collect()
            },
        )
    }

    /// Lines in the event log, rotated copies included.
    pub fn events_logged(&self) -> u64 {
        self.event_log_files()
            .iter()
            .filter_map(|p| fs::read(p).ok())
            .map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64)
            .sum()
    }

    /// Bytes in the event log, rotated copies included.
    pub fn event_log_bytes(&self) -> u64 {
        self.event_log_files()
            .iter()
            .filter_map(|p| fs::metadata(p).ok())
            .map(|m| m.len())
            .sum()
    }

    pub fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("daemon.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

fn unix_ns(t: SystemTime) -> i128 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// `(message, seconds after spawned_at)` of each JSON log line of the daemon's start-up.
fn phases(log: &str, spawned_at: i128) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| Json::parse(l).ok())
        .filter_map(|v| {
            let at = rfc3339_ns(v.get("timestamp")?.as_str()?)?;
            let msg = v.get("fields")?.get("message")?.as_str()?.to_string();
            Some((msg, (at - spawned_at) as f64 / 1e9))
        })
        .collect()
}

/// Unix nanoseconds of a UTC RFC 3339 time as tracing writes it
/// (`2026-11-21T13:24:49.909770Z`).
fn rfc3339_ns(t: &str) -> Option<i128> {
    let t = t.strip_suffix('Z')?;
    let (date, time) = t.split_once('T')?;
    let mut d = date.split('-').map(|p| p.parse::<i64>().ok());
    let (y, m, day) = (d.next()??, d.next()??, d.next()??);
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let mut h = hms.split(':').map(|p| p.parse::<i64>().ok());
    let (hh, mm, ss) = (h.next()??, h.next()??, h.next()??);
    let frac_ns: i64 = format!("{frac:0<9}").get(..9)?.parse().ok()?;
    // Howard Hinnant's days_from_civil.
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss;
    Some(i128::from(secs) * 1_000_000_000 + i128::from(frac_ns))
}

/// `counters: [[name, value], …]` of a status reply.
pub fn counter(status: &Json, name: &str) -> Option<u64> {
    status
        .get("counters")?
        .as_array()?
        .iter()
        .filter_map(Json::as_array)
        .find(|pair| pair.first().and_then(Json::as_str) == Some(name))
        .and_then(|pair| pair.get(1)?.as_f64())
        .map(|v| v as u64)
}

/// Send `sig` to a process this bench started, by pid (std has only SIGKILL).
pub fn signal(pid: u32, sig: &str) {
    let _ = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Stop a child we started: `sig`, then SIGKILL if it is still there after `grace`; reap it.
pub fn stop(child: &mut Child, sig: &str, grace: Duration) {
    if child.try_wait().ok().flatten().is_some() {
        return;
    }
    signal(child.id(), sig);
    let start = Instant::now();
    while start.elapsed() < grace {
        if child.try_wait().ok().flatten().is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            stop(&mut child, "TERM", Duration::from_secs(5));
        }
        let _ = self
            .cli()
            .args(["daemon", "--uninstall"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = fs::remove_dir_all(&self.pin_dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_counter_from_status() {
        let status = Json::parse(
            r#"{"daemon_pid": 1, "counters": [["events_dropped", 7], ["forks_tagged", 3]]}"#,
        )
        .unwrap();
        assert_eq!(counter(&status, "events_dropped"), Some(7));
        assert_eq!(counter(&status, "forks_tagged"), Some(3));
        assert_eq!(counter(&status, "nope"), None);
    }

    #[test]
    fn start_up_phases_from_the_log() {
        assert_eq!(rfc3339_ns("1970-01-01T00:00:01.5Z"), Some(1_500_000_000));
        assert_eq!(
            rfc3339_ns("2000-03-01T00:00:00Z"),
            Some(951_868_800 * 1_000_000_000)
        );
        let log = r#"{"timestamp":"2026-11-21T13:24:49.909770Z","level":"INFO","fields":{"message":"policy parsed"}}
not json
{"timestamp":"2026-11-21T13:24:51.991077Z","level":"INFO","fields":{"message":"serving API"}}"#;
        let spawned = rfc3339_ns("2026-11-21T13:24:49.901848Z").unwrap();
        let p = phases(log, spawned);
        assert_eq!(p.len(), 2);
        assert_eq!(p[1].0, "serving API");
        assert!((p[1].1 - 2.089229).abs() < 1e-6);
    }
}
