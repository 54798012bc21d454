//! The bench's report: a table on stdout, `bench.json` (and a timestamped copy) and
//! `bench.md` under `<target>/bench/`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    fs,
    process::Command,
    time::{SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result};

use super::{
    CONFIGS, Config, ConfigState, Results, json::Json, policy, stats::Summary, stats::duration_ns,
    stats::round1, stats::round3, workloads,
};
use crate::util;

/// Facts about the machine, and how busy it was while we measured.
#[derive(Default)]
pub struct Machine {
    kernel: String,
    cpus: usize,
    load_start: Vec<f64>,
    load_end: Vec<f64>,
    /// 1-minute load average after each configuration of each round.
    load_samples: Vec<f64>,
    /// `rustc` processes seen at the samples (someone else compiling).
    rustc_max: usize,
    /// bpffs entries of other guard instances (other people's tests) seen at the samples.
    foreign_pins: BTreeSet<String>,
}

impl Machine {
    pub fn start() -> Self {
        Self {
            kernel: fs::read_to_string("/proc/sys/kernel/osrelease")
                .unwrap_or_default()
                .trim()
                .to_string(),
            cpus: std::thread::available_parallelism().map_or(0, usize::from),
            load_start: loadavg(),
            ..Self::default()
        }
    }

    /// Sample load, compilers and foreign guard pins; `ours` prefixes our own pin dirs.
    pub fn sample(&mut self, ours: &str) {
        if let Some(l) = loadavg().first() {
            self.load_samples.push(*l);
        }
        self.rustc_max = self.rustc_max.max(count_comm("rustc"));
        if let Ok(dir) = fs::read_dir("/sys/fs/bpf") {
            for e in dir.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.contains("guard") && !name.starts_with(ours) {
                    self.foreign_pins.insert(name);
                }
            }
        }
    }

    pub fn finish(&mut self) {
        self.load_end = loadavg();
    }

    fn busy(&self) -> bool {
        let peak = self.load_samples.iter().copied().fold(0.0, f64::max);
        peak > 0.5 * self.cpus.max(1) as f64 || self.rustc_max > 0 || !self.foreign_pins.is_empty()
    }

    fn note(&self) -> String {
        let peak = self.load_samples.iter().copied().fold(0.0, f64::max);
        let mut parts = vec![format!(
            "{} CPUs, 1-min load {:.2} at start, peak {:.2}, {:.2} at end",
            self.cpus,
            self.load_start.first().unwrap_or(&0.0),
            peak,
            self.load_end.first().unwrap_or(&0.0)
        )];
        if self.rustc_max > 0 {
            parts.push(format!(
                "up to {} rustc processes of other builds were running",
                self.rustc_max
            ));
        }
        if !self.foreign_pins.is_empty() {
            parts.push(format!(
                "{} other guard instance(s) were loaded at some point ({}); their programs \
                 run for every process, baseline included",
                self.foreign_pins.len(),
                self.foreign_pins
                    .iter()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if self.busy() {
            parts.insert(
                0,
                "SHARED MACHINE: others were busy while this ran; figures are noisier than on \
                 an idle host"
                    .into(),
            );
        }
        parts.join("; ")
    }

    fn json(&self) -> Json {
        Json::obj()
            .with("kernel", self.kernel.as_str())
            .with("cpus", self.cpus)
            .with("loadavg_start", self.load_start.clone())
            .with("loadavg_end", self.load_end.clone())
            .with(
                "load1_samples",
                self.load_samples
                    .iter()
                    .map(|v| round1(*v))
                    .collect::<Vec<_>>(),
            )
            .with("other_rustc_processes_max", self.rustc_max)
            .with(
                "foreign_guard_pins",
                self.foreign_pins.iter().cloned().collect::<Vec<_>>(),
            )
            .with("shared_machine_busy", self.busy())
            .with("note", self.note())
    }
}

pub fn loadavg() -> Vec<f64> {
    fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|v| v.parse().ok())
        .collect()
}

fn count_comm(name: &str) -> usize {
    fs::read_dir("/proc").map_or(0, |d| {
        d.flatten()
            .filter(|e| fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == name))
            .count()
    })
}

/// Which figure of a run: wall-clock time, or CPU time of the workload and its children.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Measure {
    Wall,
    Cpu,
}

impl Measure {
    fn samples(self, r: &Results) -> &BTreeMap<(Config, workloads::Workload), Vec<f64>> {
        match self {
            Self::Wall => &r.samples,
            Self::Cpu => &r.cpu_samples,
        }
    }

    fn title(self) -> &'static str {
        match self {
            Self::Wall => "wall-clock time per op",
            Self::Cpu => "CPU time per op (workload process + children; waits for a CPU left out)",
        }
    }
}

fn summary(r: &Results, m: Measure, c: Config, w: workloads::Workload) -> Option<Summary> {
    Summary::of(m.samples(r).get(&(c, w))?)
}

fn ratio(r: &Results, m: Measure, c: Config, w: workloads::Workload) -> Option<f64> {
    Some(summary(r, m, c, w)?.median / summary(r, m, Config::Baseline, w)?.median)
}

fn column_note(r: &Results, c: Config) -> Option<String> {
    match &r.configs[&c] {
        ConfigState::Measured => None,
        ConfigState::Skipped(why) => Some(format!("skipped: {why}")),
        ConfigState::Failed(why) => Some(format!("failed: {why}")),
    }
}

fn cell(r: &Results, m: Measure, c: Config, w: workloads::Workload) -> (String, String) {
    if let Some(e) = r.errors.get(&(c, w)) {
        let short: String = e.chars().take(12).collect();
        return (format!("error: {short}…"), String::new());
    }
    let Some(s) = summary(r, m, c, w) else {
        return ("—".into(), String::new());
    };
    let main = match (c, ratio(r, m, c, w)) {
        (Config::Baseline, _) | (_, None) => duration_ns(s.median),
        (_, Some(x)) => format!("{} {x:.2}×", duration_ns(s.median)),
    };
    let range = format!("[{} – {}]", duration_ns(s.min), duration_ns(s.max));
    (main, range)
}

fn table(r: &Results, m: Measure) -> String {
    let cols = CONFIGS;
    let first = 20;
    let width = 24;
    let mut out = format!("{}: median, ×baseline, [min – max]\n", m.title());
    let _ = write!(out, "{:<first$}", "workload");
    for c in &cols {
        let _ = write!(out, "{:>width$}", c.name());
    }
    out.push('\n');
    for w in workloads::ALL {
        let cells: Vec<(String, String)> = cols.iter().map(|c| cell(r, m, *c, w)).collect();
        let _ = write!(out, "{:<first$}", w.label());
        for (main, _) in &cells {
            let _ = write!(out, "{main:>width$}");
        }
        out.push('\n');
        let _ = write!(out, "{:<first$}", "  min – max");
        for (_, range) in &cells {
            let _ = write!(out, "{range:>width$}");
        }
        out.push('\n');
    }
    out
}

fn column_notes(r: &Results) -> String {
    let mut out = String::new();
    for c in CONFIGS {
        if let Some(n) = column_note(r, c) {
            let _ = writeln!(out, "{}: {n}", c.name());
        }
    }
    out
}

fn markdown(r: &Results, m: Measure) -> String {
    let cols = CONFIGS;
    let mut out = format!(
        "{}, median of {} rounds:\n\n| workload |",
        m.title(),
        r.rounds
    );
    for c in &cols {
        let _ = write!(out, " {} |", c.name());
    }
    out.push_str("\n|---|");
    out.push_str(&"---:|".repeat(cols.len()));
    out.push('\n');
    for w in workloads::ALL {
        let _ = write!(out, "| {} |", w.label());
        for c in &cols {
            let (main, _) = cell(r, m, *c, w);
            let main = if column_note(r, *c).is_some() && main == "—" {
                "n/a".to_string()
            } else {
                main
            };
            let _ = write!(out, " {main} |");
        }
        out.push('\n');
    }
    out
}

fn extras_text(r: &Results) -> String {
    let mut out = String::new();
    match (&r.kill.unavailable, Summary::of(&r.kill.samples_ns)) {
        (None, Some(s)) => {
            let _ = writeln!(
                out,
                "kill latency (connect to a `kill` rule → offender reaped): median {}, min {}, \
                 max {} ({} samples)",
                duration_ns(s.median),
                duration_ns(s.min),
                duration_ns(s.max),
                s.n
            );
        }
        (why, _) => {
            let _ = writeln!(
                out,
                "kill latency: not available: {}",
                why.as_deref().unwrap_or("no samples")
            );
        }
    }
    out.push_str(&super::costs::text(&r.costs));
    out.push_str(&super::secrets::text(&r.secret_scan));
    out.push_str(&super::taint::text(&r.taint_window));
    for flood in [&r.flood, &r.decision_flood] {
        flood_text(&mut out, flood);
    }
    for (policy, samples) in &r.start_ns {
        if let Some(s) = Summary::of(samples) {
            let _ = writeln!(
                out,
                "start-to-enforcing ({policy} policy): median {}, min {}, max {} ({} starts; \
                 polled every {} ms)",
                duration_ns(s.median),
                duration_ns(s.min),
                duration_ns(s.max),
                s.n,
                super::daemon::POLL.as_millis()
            );
            let phases: Vec<String> = r
                .start_phases
                .get(policy)
                .into_iter()
                .flatten()
                .filter_map(|(m, v)| Some(format!("{m} {:.2} s", Summary::of(v)?.median)))
                .collect();
            if !phases.is_empty() {
                let _ = writeln!(
                    out,
                    "  daemon log, median after spawn: {}",
                    phases.join(", ")
                );
            }
        }
    }
    out
}

fn to_json(r: &Results, created: &str) -> Json {
    let mut configs = Vec::new();
    for c in CONFIGS {
        let (status, reason) = match &r.configs[&c] {
            ConfigState::Measured => ("measured", None),
            ConfigState::Skipped(w) => ("skipped", Some(w.clone())),
            ConfigState::Failed(w) => ("failed", Some(w.clone())),
        };
        configs.push(
            Json::obj()
                .with("name", c.name())
                .with("description", c.description())
                .with("status", status)
                .with("reason", reason),
        );
    }
    let mut workloads_json = Vec::new();
    for w in workloads::ALL {
        let mut results = Json::obj();
        for c in CONFIGS {
            let v = if let Some(e) = r.errors.get(&(c, w)) {
                Json::obj().with("error", e.as_str())
            } else if let (Some(samples), Some(s)) =
                (r.samples.get(&(c, w)), summary(r, Measure::Wall, c, w))
            {
                let mut v = s.json_ns(samples);
                v.set(
                    "ratio_to_baseline",
                    ratio(r, Measure::Wall, c, w).map(round3),
                );
                if let (Some(cpu), Some(cs)) =
                    (r.cpu_samples.get(&(c, w)), summary(r, Measure::Cpu, c, w))
                {
                    let mut j = cs.json_ns(cpu);
                    j.set(
                        "ratio_to_baseline",
                        ratio(r, Measure::Cpu, c, w).map(round3),
                    );
                    v.set("cpu", j);
                }
                v.set("iters_per_run", r.run_iters.get(&(c, w)).cloned());
                v
            } else {
                Json::Null
            };
            results.set(c.name(), v);
        }
        workloads_json.push(
            Json::obj()
                .with("name", w.name())
                .with("description", w.description())
                .with("iters_calibrated", r.iters[&w])
                .with("results", results),
        );
    }
    let mut start = Json::obj().with(
        "what",
        "from spawning `guard daemon` to the first `guard status` saying enforcing; phases: \
         median seconds after the spawn at which the daemon logged each start-up message",
    );
    for (policy, samples) in &r.start_ns {
        if let Some(s) = Summary::of(samples) {
            let mut v = s.json_ns(samples);
            let mut phases = Json::obj();
            for (msg, secs) in r.start_phases.get(policy).into_iter().flatten() {
                if let Some(p) = Summary::of(secs) {
                    phases.set(msg, round3(p.median));
                }
            }
            v.set("phases_median_secs", phases);
            start.set(policy, v);
        }
    }
    Json::obj()
        .with("schema", 1u32)
        .with("created", created)
        .with(
            "command",
            if r.quick {
                "cargo xtask bench --quick"
            } else {
                "cargo xtask bench"
            },
        )
        .with("guard", git_json(r))
        .with("machine", r.machine.json())
        .with(
            "run",
            Json::obj()
                .with("rounds", r.rounds)
                .with("rounds_planned", r.rounds_planned)
                .with(
                    "order",
                    "every round runs each configuration once, all workloads in turn; the \
                     configuration order is reversed every other round",
                )
                .with("build_secs", round1(r.build_secs))
                .with("run_secs", round1(r.run_secs))
                .with("warnings", r.warnings.iter().cloned().collect::<Vec<_>>()),
        )
        .with(
            "policy_1000",
            Json::obj()
                .with("endpoint_rules", r.policy.endpoint_rules)
                .with("path_rules", r.policy.path_rules)
                .with("kill_target", policy::KILL_TARGET)
                .with("audit_watches", r.policy.audit_watches)
                .with("audit_rules_loaded", r.audit_rules_loaded)
                .with("audit_log_bytes", r.audit_log_bytes)
                .with("auditd", r.auditd_note.as_str()),
        )
        .with("configs", Json::Arr(configs))
        .with("tagged_workloads_verified_in_log", r.tag_verified)
        .with("workloads", Json::Arr(workloads_json))
        .with("kill_latency", r.kill.json())
        .with("program_costs", super::costs::json(&r.costs))
        .with("secret_scan", super::secrets::json(&r.secret_scan))
        .with("taint_window", super::taint::json(&r.taint_window))
        .with("event_pipeline", flood_json(&r.flood))
        .with("decision_pipeline", flood_json(&r.decision_flood))
        .with("start_to_enforcing", start)
}

fn git_json(r: &Results) -> Json {
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(util::workspace_root())
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
    };
    Json::obj()
        .with("commit", git(&["rev-parse", "HEAD"]))
        .with(
            "uncommitted_changes",
            git(&["status", "--porcelain"]).map(|s| !s.is_empty()),
        )
        .with("binary", r.guard_binary.display().to_string())
        .with(
            "built_by_bench",
            if r.guard_prebuilt {
                "no: --guard-bin; the commit above is the workspace's, not necessarily the binary's"
            } else {
                "yes: release profile, from the workspace at the commit above"
            },
        )
}

pub fn write(r: &Results) -> Result<()> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (created, stamp) = utc(now);
    let dir = util::target_dir().join("bench");
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let json = to_json(r, &created).pretty();
    let latest = dir.join("bench.json");
    fs::write(&latest, &json)?;
    fs::write(dir.join(format!("bench-{stamp}.json")), &json)?;
    let md = format!(
        "{}\n{}\n{}{}\nmachine: {}\n",
        markdown(r, Measure::Wall),
        markdown(r, Measure::Cpu),
        column_notes(r),
        extras_text(r),
        r.machine.note()
    );
    fs::write(dir.join("bench.md"), &md)?;

    println!("\n== guard bench ({created}, {} rounds) ==", r.rounds);
    print!("{}", table(r, Measure::Wall));
    println!();
    print!("{}", table(r, Measure::Cpu));
    print!("{}", column_notes(r));
    println!();
    print!("{}", extras_text(r));
    if r.tag_verified == Some(false) {
        println!("WARNING: the tagged workloads' forks are not in the daemon's log");
    }
    for w in &r.warnings {
        println!("warning: {w}");
    }
    println!("machine: {}", r.machine.note());
    println!(
        "build {:.0} s, measurement {:.0} s",
        r.build_secs, r.run_secs
    );
    println!(
        "wrote {} (and bench-{stamp}.json, bench.md)",
        latest.display()
    );
    Ok(())
}

/// RFC 3339 and a compact file-name stamp, UTC, from Unix seconds.
fn utc(secs: u64) -> (String, String) {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let (h, m, s) = (rem / 3600, rem % 3600 / 60, rem % 60);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let mo = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(mo <= 2);
    (
        format!("{y:04}-{mo:02}-{d:02}T{h:02}:{m:02}:{s:02}Z"),
        format!("{y:04}{mo:02}{d:02}T{h:02}{m:02}{s:02}Z"),
    )
}

fn flood_text(out: &mut String, flood: &Result<super::extras::Flood, String>) {
    let f = match flood {
        Ok(f) => f,
        Err(why) => {
            let _ = writeln!(out, "event pipeline: not measured: {why}");
            return;
        }
    };
    let _ = writeln!(
        out,
        "event pipeline ({} {}): {} ops in {:.2} s; {} of {} events logged in {:.2} s = {:.0} \
         events/s, {:.0} bytes/event; kernel drops: {}",
        f.flooders,
        f.of.label(),
        f.ops,
        f.flood_secs,
        f.events_logged,
        f.events_expected,
        f.pipeline_secs,
        f.events_per_sec(),
        f.log_bytes as f64 / f.events_logged.max(1) as f64,
        f.events_dropped
            .map_or("unknown (no events_dropped counter)".into(), |d| d
                .to_string())
    );
    let _ = writeln!(
        out,
        "  daemon: VmRSS {} KiB idle → {} KiB peak; CPU {:.2} s = {:.0}% of one core{}",
        f.rss_idle_kib,
        f.rss_peak_kib,
        f.cpu_secs,
        f.cpu_percent(),
        f.cpu_us_per_event().map_or(String::new(), |us| format!(
            ", {us:.1} µs per event (≈ {:.0} events/s per core)",
            1e6 / us
        ))
    );
}

fn flood_json(flood: &Result<super::extras::Flood, String>) -> Json {
    match flood {
        Ok(f) => f.json(),
        Err(why) => Json::obj()
            .with("available", false)
            .with("reason", why.as_str()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0).0, "1970-01-01T00:00:00Z");
        assert_eq!(utc(951_782_400).0, "2000-02-29T00:00:00Z");
        assert_eq!(utc(1_767_225_599).1, "20251231T235959Z");
    }
}
