//! Figures beyond per-operation cost: kill latency, the event pipeline under a tagged fork
//! flood (events/s, drops, daemon RSS and CPU), and start-to-enforcing time (taken from
//! every daemon the bench starts, see `Daemon::start`).

use std::{
    fs,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use super::{
    daemon::Daemon,
    json::Json,
    policy::KILL_TARGET,
    stats::{Summary, round1, round3},
    workloads::{Launcher, field, run_with_timeout},
};

pub struct KillLatency {
    /// Why there is no figure (kills not carried out, the run failed, …).
    pub unavailable: Option<String>,
    pub samples_ns: Vec<f64>,
    /// How much the kernel's `net_kills_sent` counter grew during the measurement.
    pub kills_counted: Option<u64>,
}

impl KillLatency {
    pub fn unavailable(reason: impl Into<String>) -> Self {
        Self {
            unavailable: Some(reason.into()),
            samples_ns: Vec::new(),
            kills_counted: None,
        }
    }

    pub fn json(&self) -> Json {
        let mut j = Json::obj()
            .with("available", self.unavailable.is_none())
            .with("reason", self.unavailable.clone())
            .with(
                "what",
                format!(
                    "a tagged process connects to {KILL_TARGET}, the destination of a `kill` \
                     endpoint rule; time from just before connect() to waitpid() returning \
                     for it (SIGKILL)"
                ),
            )
            .with("net_kills_sent_delta", self.kills_counted);
        if let Some(s) = Summary::of(&self.samples_ns) {
            j.set("result", s.json_ns(&self.samples_ns));
        }
        j
    }
}

/// `guard run -- guard-bench kill-latency N 127.0.0.3:9` against `daemon`.
pub fn kill_latency(daemon: &Daemon, launcher: &Launcher<'_>, samples: u64) -> KillLatency {
    let kills_before = daemon.counter("net_kills_sent");
    let cmd = launcher.command(vec![
        "kill-latency".into(),
        samples.to_string().into(),
        KILL_TARGET.into(),
    ]);
    let out = match run_with_timeout(cmd, Duration::from_secs(120)) {
        Ok(out) => out,
        Err(e) => return KillLatency::unavailable(format!("the measurement failed: {e:#}")),
    };
    let outcome = field(&out.stdout, "outcome").unwrap_or("no output");
    let samples_ns: Vec<f64> = field(&out.stdout, "samples_ns")
        .unwrap_or("")
        .split(',')
        .filter_map(|s| s.parse().ok())
        .collect();
    let why = match outcome {
        "killed" => None,
        "returned-econnrefused" | "returned-connected" => Some(format!(
            "connect() to {KILL_TARGET}, the destination of a `kill` endpoint rule, was not \
             stopped ({outcome}): this guard build does not enforce endpoint rules yet"
        )),
        "returned-eperm" => Some(format!(
            "connect() to {KILL_TARGET} was denied (EPERM) but the process was not killed: \
             this guard build does not carry out `kill` actions yet"
        )),
        other => Some(format!("the tagged child ended unexpectedly ({other})")),
    };
    let kills_counted = daemon
        .counter("net_kills_sent")
        .zip(kills_before)
        .map(|(a, b)| a.saturating_sub(b));
    KillLatency {
        unavailable: why,
        samples_ns,
        kills_counted,
    }
}

/// What a flood is made of.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FloodOf {
    /// Tagged processes fork and reap children: two lifecycle events per child.
    Forks,
    /// Tagged processes connect to a denied loopback port: one decision each.
    DeniedConnects,
}

impl FloodOf {
    fn workload(self) -> Vec<std::ffi::OsString> {
        match self {
            Self::Forks => vec!["fork-exit".into()],
            Self::DeniedConnects => vec!["denied-connect".into()],
        }
    }

    fn args(self) -> Vec<std::ffi::OsString> {
        match self {
            Self::Forks => Vec::new(),
            Self::DeniedConnects => vec![super::policy::DENIED_TARGET.into()],
        }
    }

    fn events_per_op(self) -> u64 {
        match self {
            Self::Forks => 2,
            Self::DeniedConnects => 1,
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Self::Forks => "tagged fork loops; fork and exit lines",
            Self::DeniedConnects => "tagged denied-connect loops; decisions",
        }
    }

    fn what(self) -> &'static str {
        match self {
            Self::Forks => {
                "tagged processes (one per CPU) fork and reap children in a tight loop \
                 (guard-bench fork-exit); each child is two events (tagged_fork, tagged_exit)"
            }
            Self::DeniedConnects => {
                "tagged processes (one per CPU) connect to a loopback port a deny rule covers \
                 (guard-bench denied-connect); each connect is one decision (net_connect, denied)"
            }
        }
    }
}

pub struct Flood {
    pub of: FloodOf,
    /// Tagged loops running at once.
    pub flooders: usize,
    /// Forks or connects.
    pub ops: u64,
    pub events_expected: u64,
    pub events_logged: u64,
    /// Bytes the daemon appended to its log (rotated copies included).
    pub log_bytes: u64,
    pub events_dropped: Option<u64>,
    /// From the flood's start to the last line the daemon wrote.
    pub pipeline_secs: f64,
    pub flood_secs: f64,
    pub rss_idle_kib: u64,
    pub rss_peak_kib: u64,
    pub cpu_secs: f64,
}

impl Flood {
    pub fn events_per_sec(&self) -> f64 {
        self.events_logged as f64 / self.pipeline_secs.max(1e-9)
    }

    /// The daemon's CPU time per logged event; 1e6 / this is the rate one core could carry.
    pub fn cpu_us_per_event(&self) -> Option<f64> {
        (self.events_logged > 0).then(|| 1e6 * self.cpu_secs / self.events_logged as f64)
    }

    pub fn cpu_percent(&self) -> f64 {
        100.0 * self.cpu_secs / self.pipeline_secs.max(1e-9)
    }

    pub fn json(&self) -> Json {
        Json::obj()
            .with(
                "what",
                format!(
                    "{}; events_per_sec = events the daemon wrote / time from the flood's start \
                     to its last write to the log (ring buffer, decoding, process tree, JSON log)",
                    self.of.what()
                ),
            )
            .with("flooders", self.flooders)
            .with("ops", self.ops)
            .with("ops_per_sec", round1(self.ops as f64 / self.flood_secs))
            .with("events_expected", self.events_expected)
            .with("events_logged", self.events_logged)
            .with(
                "log_bytes_per_event",
                round1(self.log_bytes as f64 / self.events_logged.max(1) as f64),
            )
            .with("events_dropped_kernel", self.events_dropped)
            .with("events_per_sec", round1(self.events_per_sec()))
            .with("flood_secs", round3(self.flood_secs))
            .with("pipeline_secs", round3(self.pipeline_secs))
            .with(
                "daemon",
                Json::obj()
                    .with("rss_idle_kib", self.rss_idle_kib)
                    .with("rss_peak_kib", self.rss_peak_kib)
                    .with("cpu_secs", round3(self.cpu_secs))
                    .with("cpu_percent_of_one_core", round1(self.cpu_percent()))
                    .with("cpu_us_per_event", self.cpu_us_per_event().map(round3)),
            )
    }
}

/// Flood the event pipeline with `flooders` tagged fork loops at once (one per CPU pushes
/// harder than the daemon can follow on a small machine) and watch the daemon: its log, the
/// kernel's drop counter, VmRSS and utime+stime.
pub fn flood(
    daemon: &Daemon,
    launcher: &Launcher<'_>,
    of: FloodOf,
    ops: u64,
    flooders: usize,
) -> Result<Flood> {
    let pid = daemon.pid();
    let ticks = clock_ticks();
    let logged_before = daemon.events_logged();
    let bytes_before = daemon.event_log_bytes();
    let dropped_before = daemon.counter("events_dropped");
    let rss_idle_kib = rss_kib(pid).context("reading the daemon's VmRSS")?;
    let cpu_before = cpu_ticks(pid).context("reading the daemon's CPU time")?;
    let each = (ops / flooders as u64).max(1);
    let mut children = Vec::new();
    for _ in 0..flooders {
        let child = launcher
            .command(
                of.workload()
                    .into_iter()
                    .chain([each.to_string().into()])
                    .chain(of.args())
                    .collect(),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .context("starting a tagged fork flood")?;
        children.push(Flooder(Some(child)));
    }
    let start = Instant::now();
    let mut rss_peak_kib = rss_idle_kib;
    let mut size = daemon.event_log_bytes();
    let mut last_growth = start;
    let mut flood_end = None;
    loop {
        std::thread::sleep(Duration::from_millis(20));
        if let Some(kib) = rss_kib(pid) {
            rss_peak_kib = rss_peak_kib.max(kib);
        }
        let now_size = daemon.event_log_bytes();
        if now_size != size {
            size = now_size;
            last_growth = Instant::now();
        }
        if flood_end.is_none() {
            let mut running = 0;
            for f in &mut children {
                let Some(child) = f.0.as_mut() else { continue };
                match child.try_wait()? {
                    None => running += 1,
                    Some(status) if status.success() => {}
                    Some(status) => {
                        let mut err = String::new();
                        if let Some(e) = child.stderr.as_mut() {
                            let _ = std::io::Read::read_to_string(e, &mut err);
                        }
                        bail!("a tagged flood failed ({status}): {}", err.trim());
                    }
                }
            }
            if running == 0 {
                flood_end = Some(start.elapsed());
            }
        }
        if let Some(end) = flood_end
            && last_growth.elapsed() > Duration::from_millis(750)
            && start.elapsed() > end + Duration::from_millis(750)
        {
            break;
        }
        if start.elapsed() > Duration::from_secs(180) {
            bail!("the event flood did not settle within 180 s");
        }
    }
    let cpu_after = cpu_ticks(pid).context("reading the daemon's CPU time")?;
    let pipeline = last_growth.duration_since(start);
    let total = flooders as u64 * (each + (each / 10).max(1));
    Ok(Flood {
        of,
        flooders,
        ops: total,
        events_expected: of.events_per_op() * total,
        events_logged: daemon.events_logged().saturating_sub(logged_before),
        log_bytes: daemon.event_log_bytes().saturating_sub(bytes_before),
        events_dropped: daemon
            .counter("events_dropped")
            .zip(dropped_before)
            .map(|(a, b)| a.saturating_sub(b)),
        pipeline_secs: pipeline.as_secs_f64(),
        flood_secs: flood_end.unwrap_or(pipeline).as_secs_f64(),
        rss_idle_kib,
        rss_peak_kib,
        cpu_secs: cpu_after.saturating_sub(cpu_before) as f64 / ticks,
    })
}

/// A flood process we started; killed by pid (and reaped) if still running when dropped.
struct Flooder(Option<std::process::Child>);

impl Drop for Flooder {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take()
            && c.try_wait().ok().flatten().is_none()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// utime + stime of `pid`, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_cpu_ticks(&stat)
}

fn parse_cpu_ticks(stat: &str) -> Option<u64> {
    // Fields after "pid (comm) ": state is the first; utime and stime are the 12th and 13th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
}

/// `getconf CLK_TCK` (100 on every Linux we know of, which is the fallback).
fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_ticks_from_stat() {
        let stat = "4242 (guard (x) y) S 1 4242 4242 0 -1 4194560 1234 0 0 0 57 31 0 0 20 0 9 0";
        assert_eq!(parse_cpu_ticks(stat), Some(88));
    }
}
