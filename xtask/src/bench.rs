//! `cargo xtask bench`: what guard costs the host, side by side with no guard and with auditd.
//!
//! Each workload is a tight loop in `guard-bench` (tests/src/bin/guard-bench.rs) that times
//! itself. Configurations are measured in rounds, one run of every workload per configuration
//! and round, and the order of the configurations is reversed every other round (A B C … C B A)
//! so that drift of a shared machine falls on every configuration alike. Every daemon the bench
//! starts uses the release `guard` binary, its own temp socket and log, and its own pin
//! directory under /sys/fs/bpf, removed afterwards; processes are stopped by their pid.
//!
//! Output: a table on stdout, and `<target>/bench/bench.json` (plus a timestamped copy and a
//! Markdown table, `bench.md`).

mod auditd;
mod costs;
mod daemon;
mod extras;
mod json;
mod policy;
mod report;
mod secrets;
mod stats;
mod taint;
mod workloads;

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use self::{
    auditd::Auditd,
    daemon::Daemon,
    extras::{Flood, FloodOf, KillLatency},
    workloads::{Fixtures, Launcher, Workload},
};
use crate::{setup, util};

pub struct Options {
    /// Fewer rounds and shorter runs (about a minute), for development.
    pub quick: bool,
    /// Override the number of rounds.
    pub rounds: Option<usize>,
    /// Skip the auditd configuration.
    pub no_auditd: bool,
    /// A guard binary to measure instead of building one.
    pub guard_bin: Option<PathBuf>,
}

/// How long and how often to measure.
struct Plan {
    rounds: usize,
    /// Target duration of one run of a system call loop.
    target: Duration,
    /// Target duration of one run of the build.
    job_target: Duration,
    kill_samples: u64,
    flood_forks: u64,
    /// No new round starts once the measurement would run past this (at least two rounds
    /// always run, so that every configuration is measured in both orders).
    budget: Duration,
}

impl Plan {
    fn new(o: &Options) -> Self {
        let (rounds, target, job_target, kill_samples, flood_forks, budget) = if o.quick {
            (2, 60, 300, 10, 5_000, 60)
        } else {
            (9, 200, 1_000, 50, 30_000, 450)
        };
        Self {
            rounds: o.rounds.unwrap_or(rounds).max(1),
            target: Duration::from_millis(target),
            job_target: Duration::from_millis(job_target),
            kill_samples,
            flood_forks,
            budget: Duration::from_secs(if o.rounds.is_some() { 3600 } else { budget }),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Config {
    Baseline,
    GuardDefault,
    Guard1k,
    Guard1kTagged,
    Auditd,
}

pub const CONFIGS: [Config; 5] = [
    Config::Baseline,
    Config::GuardDefault,
    Config::Guard1k,
    Config::Guard1kTagged,
    Config::Auditd,
];

impl Config {
    pub fn name(self) -> &'static str {
        match self {
            Self::Baseline => "baseline",
            Self::GuardDefault => "guard-default",
            Self::Guard1k => "guard-1k",
            Self::Guard1kTagged => "guard-1k-tagged",
            Self::Auditd => "auditd",
        }
    }

    pub fn description(self) -> &'static str {
        match self {
            Self::Baseline => "no guard, no audit rules",
            Self::GuardDefault => "guard daemon on the embedded default policy; caller untagged",
            Self::Guard1k => "guard daemon on the generated 1,000-rule policy; caller untagged",
            Self::Guard1kTagged => {
                "guard daemon on the generated 1,000-rule policy; the workload runs through \
                 `guard run --` (tagged) and only reaches allowed targets"
            }
            Self::Auditd => {
                "auditd (package defaults, log in a temp dir) with rules equivalent to the \
                 1,000-rule policy: connect/sendto/sendmsg and execve syscall rules, a watch \
                 per protected path"
            }
        }
    }
}

/// What stays set up while one configuration is measured.
enum Session {
    Nothing,
    Daemon(Daemon),
    /// Auditing switched on in the run-long auditd.
    Audit,
}

/// The state of a configuration over the run.
#[derive(Clone, Debug)]
pub enum ConfigState {
    Measured,
    /// Never run, and why.
    Skipped(String),
    /// Set-up failed (the first error).
    Failed(String),
}

/// Everything the report needs.
pub struct Results {
    pub quick: bool,
    /// Rounds completed (fewer than planned when the time budget ran out).
    pub rounds: usize,
    pub rounds_planned: usize,
    pub configs: BTreeMap<Config, ConfigState>,
    /// Calibrated iterations per run (without guard).
    pub iters: BTreeMap<Workload, u64>,
    /// Iterations of every run, per configuration and workload.
    pub run_iters: BTreeMap<(Config, Workload), Vec<u64>>,
    /// Wall-clock ns per op of every run.
    pub samples: BTreeMap<(Config, Workload), Vec<f64>>,
    /// CPU ns per op (workload process and children) of every run.
    pub cpu_samples: BTreeMap<(Config, Workload), Vec<f64>>,
    pub errors: BTreeMap<(Config, Workload), String>,
    pub warnings: BTreeSet<String>,
    /// Start-to-enforcing, ns, by policy.
    pub start_ns: BTreeMap<&'static str, Vec<f64>>,
    /// The daemon's start-up log messages, seconds after the spawn, by policy.
    pub start_phases: BTreeMap<&'static str, Vec<(String, Vec<f64>)>>,
    pub tag_verified: Option<bool>,
    pub kill: KillLatency,
    pub flood: std::result::Result<Flood, String>,
    /// The same with decisions (denied connects) instead of fork and exit lines.
    pub decision_flood: std::result::Result<Flood, String>,
    pub policy: policy::Generated,
    pub auditd_note: String,
    pub audit_rules_loaded: Option<usize>,
    /// Bytes auditd logged over all auditd runs.
    pub audit_log_bytes: Option<u64>,
    pub machine: report::Machine,
    pub build_secs: f64,
    pub run_secs: f64,
    pub guard_binary: PathBuf,
    pub guard_prebuilt: bool,
    /// guard's programs' run time per operation (bpf_stats).
    pub costs: Result<Vec<costs::Row>, String>,
    /// The secret scanner over the cargo registry's sources.
    pub secret_scan: Result<secrets::SecretScan, String>,
    pub taint_window: Result<taint::TaintWindow, String>,
}

pub fn bench(opts: &Options) -> Result<()> {
    if !util::is_root() {
        bail!(
            "the bench needs root: it loads guard's eBPF programs and runs auditd\n  \
             what to do: sudo -E env \"PATH=$PATH\" cargo xtask bench"
        );
    }
    let begin = Instant::now();
    let (guard, bench_bin) = build(opts.guard_bin.as_deref())?;
    let build_secs = begin.elapsed().as_secs_f64();
    let run_start = Instant::now();
    let plan = Plan::new(opts);
    let mut machine = report::Machine::start();
    let work = WorkDir::create()?;
    let fx = Fixtures::create(&work.0)?;
    let generated = policy::generate(&work.0).context("generating the 1,000-rule policy")?;

    let mut configs: BTreeMap<Config, ConfigState> = CONFIGS
        .iter()
        .map(|c| (*c, ConfigState::Measured))
        .collect();
    if let Err(e) = check_policy(&guard, &generated.policy) {
        let why = format!("guard rejects the generated 1,000-rule policy: {e}");
        configs.insert(Config::Guard1k, ConfigState::Skipped(why.clone()));
        configs.insert(Config::Guard1kTagged, ConfigState::Skipped(why));
    }
    let (auditd_note, audit_saved) = if opts.no_auditd {
        let why = "disabled with --no-auditd".to_string();
        configs.insert(Config::Auditd, ConfigState::Skipped(why.clone()));
        (why, None)
    } else {
        match auditd::prepare() {
            Ok((note, saved)) => (note, Some(saved)),
            Err(why) => {
                println!("[bench] skipping auditd: {why}");
                configs.insert(Config::Auditd, ConfigState::Skipped(why.clone()));
                (why, None)
            }
        }
    };
    // Started before anything is measured: from here on, processes outside the auditd
    // sessions get no audit context (see auditd.rs).
    let mut audit = match audit_saved {
        Some(saved) => {
            match Auditd::start(&work.0.join("auditd"), &generated.audit_rules, &saved) {
                Ok(a) => Some(a),
                Err(e) => {
                    println!("[bench] auditd did not start, dropping it: {e:#}");
                    configs.insert(Config::Auditd, ConfigState::Failed(format!("{e:#}")));
                    None
                }
            }
        }
        None => None,
    };

    let direct = Launcher {
        bench_bin: &bench_bin,
        tagged: None,
    };
    let mut iters = BTreeMap::new();
    for w in workloads::ALL {
        let target = if w.is_job() {
            plan.job_target
        } else {
            plan.target
        };
        let n = direct
            .calibrate(w, &fx, target)
            .with_context(|| format!("calibrating {} (no guard)", w.name()))?;
        iters.insert(w, n);
    }
    println!(
        "[bench] calibrated: {}",
        workloads::ALL
            .iter()
            .map(|w| format!("{} ×{}", w.name(), iters[w]))
            .collect::<Vec<_>>()
            .join(", ")
    );

    let mut r = Results {
        quick: opts.quick,
        rounds: 0,
        rounds_planned: plan.rounds,
        configs,
        iters,
        run_iters: BTreeMap::new(),
        samples: BTreeMap::new(),
        cpu_samples: BTreeMap::new(),
        errors: BTreeMap::new(),
        warnings: BTreeSet::new(),
        start_ns: BTreeMap::new(),
        start_phases: BTreeMap::new(),
        tag_verified: None,
        kill: KillLatency::unavailable("not measured"),
        costs: Err("not measured".into()),
        secret_scan: Err("not measured".into()),
        taint_window: Err("not measured".into()),
        flood: Err("not measured".into()),
        decision_flood: Err("not measured".into()),
        policy: generated,
        auditd_note,
        audit_rules_loaded: None,
        audit_log_bytes: None,
        machine: report::Machine::default(),
        build_secs,
        run_secs: 0.0,
        guard_binary: guard.clone(),
        guard_prebuilt: opts.guard_bin.is_some(),
    };
    let mut seq = 0;
    let mut last_round = Duration::ZERO;
    for round in 0..plan.rounds {
        if round >= 2 && run_start.elapsed() + last_round > plan.budget {
            let note = format!(
                "stopped after {round} of {} rounds: another round would end past the {} s \
                 budget (a busy machine)",
                plan.rounds,
                plan.budget.as_secs()
            );
            println!("[bench] {note}");
            r.warnings.insert(note);
            break;
        }
        r.rounds = round + 1;
        let round_start = Instant::now();
        let mut order: Vec<Config> = CONFIGS.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for c in order {
            if !matches!(r.configs[&c], ConfigState::Measured) {
                continue;
            }
            // No daemon of the bench runs here: any guard pins are another instance, whose
            // programs would tax this configuration too.
            let stray = stray_instances();
            if !stray.is_empty() {
                let note = format!(
                    "{} was measured with another guard instance loaded (pins at {}): its \
                     programs run on every configuration; stop it and run `guard daemon \
                     --uninstall --pin-dir DIR`",
                    c.name(),
                    stray
                        .iter()
                        .map(|p| p.display().to_string())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                println!("[bench] WARNING: {note}");
                r.warnings.insert(note);
            }
            seq += 1;
            let dir = work.0.join(format!("{}-{seq}", c.name()));
            let session = match open(c, &guard, &r.policy, &dir, audit.as_mut(), seq) {
                Ok(s) => s,
                Err(e) => {
                    println!("[bench] {}: set-up failed, dropping it: {e:#}", c.name());
                    r.configs.insert(c, ConfigState::Failed(format!("{e:#}")));
                    continue;
                }
            };
            let launcher = Launcher {
                bench_bin: &bench_bin,
                tagged: match (&session, c) {
                    (Session::Daemon(d), Config::Guard1kTagged) => Some((&guard, d.env())),
                    _ => None,
                },
            };
            measure_round(c, &launcher, &fx, &mut r)?;
            if let (Session::Audit, Some(a)) = (&session, audit.as_mut()) {
                a.quiet()
                    .context("switching auditing off after the auditd session")?;
                r.audit_rules_loaded = Some(a.rules_loaded);
            }
            machine.sample(&format!("guard-bench-{}-", std::process::id()));
            match &session {
                Session::Daemon(d) => {
                    let policy = if c == Config::GuardDefault {
                        "default"
                    } else {
                        "1000-rules"
                    };
                    record_start(&mut r, policy, d);
                    if c == Config::Guard1kTagged {
                        let seen = tagged_forks_logged(d);
                        r.tag_verified = Some(r.tag_verified.unwrap_or(true) && seen);
                    }
                }
                Session::Audit | Session::Nothing => {}
            }
            drop(session);
            println!(
                "[bench] round {}/{} {:<16} done ({} elapsed, load {:.2})",
                round + 1,
                plan.rounds,
                c.name(),
                util::secs(run_start.elapsed()),
                report::loadavg().first().copied().unwrap_or(0.0)
            );
        }
        last_round = round_start.elapsed();
    }

    extras(&guard, &bench_bin, &work.0, &fx, &plan, &mut r);
    taint_window(&guard, &bench_bin, &work.0, &mut r);
    println!("[bench] secret scan over the cargo registry's sources");
    r.secret_scan = secrets::measure(&guard).map_err(|e| format!("{e:#}"));
    r.audit_log_bytes = audit.as_ref().map(Auditd::log_bytes);
    drop(audit);
    machine.finish();
    r.machine = machine;
    r.run_secs = run_start.elapsed().as_secs_f64();
    report::write(&r)
}

/// Directories under the bpffs mount (three levels deep) holding a pinned guard process
/// tracker: guard instances whose programs are loaded.
fn stray_instances() -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from("/sys/fs/bpf"), 0)];
    while let Some((dir, depth)) = stack.pop() {
        if dir.join("links").join("guard_fork").exists() {
            found.push(dir);
            continue;
        }
        if depth >= 3 {
            continue;
        }
        for entry in fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                stack.push((entry.path(), depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Run every workload once under `c`; a failing workload is recorded, not fatal (except
/// without guard, where it means the bench itself is broken).
fn measure_round(c: Config, launcher: &Launcher<'_>, fx: &Fixtures, r: &mut Results) -> Result<()> {
    for w in workloads::ALL {
        if r.errors.contains_key(&(c, w)) {
            continue;
        }
        let iters = iters_for(r, c, w);
        r.run_iters.entry((c, w)).or_default().push(iters);
        match launcher.run(w, fx, iters) {
            Ok(s) => {
                for line in s.stderr.lines().filter(|l| l.contains("warning")) {
                    r.warnings
                        .insert(format!("{} / {}: {line}", c.name(), w.name()));
                }
                r.samples.entry((c, w)).or_default().push(s.ns_per_op);
                if let Some(cpu) = s.cpu_ns_per_op {
                    r.cpu_samples.entry((c, w)).or_default().push(cpu);
                }
            }
            Err(e) if c == Config::Baseline => {
                return Err(e.context(format!("{} without guard failed", w.name())));
            }
            Err(e) => {
                println!("[bench] {} / {} failed: {e:#}", c.name(), w.name());
                r.errors.insert((c, w), format!("{e:#}"));
            }
        }
    }
    Ok(())
}

/// Iterations of `w` under `c`: the calibrated count, divided by how much slower `c` was in
/// its earlier rounds when that is more than 1.5× (so a slow configuration such as auditd
/// does not take many times longer per round). Per-op figures do not depend on the count.
fn iters_for(r: &Results, c: Config, w: Workload) -> u64 {
    let base = r.iters[&w];
    let median = |c| stats::Summary::of(r.samples.get(&(c, w))?).map(|s| s.median);
    match (median(c), median(Config::Baseline)) {
        (Some(m), Some(b)) if b > 0.0 && m / b > 1.5 => ((base as f64 * b / m) as u64).max(1),
        _ => base,
    }
}

fn open(
    c: Config,
    guard: &Path,
    generated: &policy::Generated,
    dir: &Path,
    audit: Option<&mut Auditd>,
    seq: usize,
) -> Result<Session> {
    let pins = || {
        PathBuf::from(format!(
            "/sys/fs/bpf/guard-bench-{}-{seq}",
            std::process::id()
        ))
    };
    Ok(match c {
        Config::Baseline => Session::Nothing,
        Config::GuardDefault => Session::Daemon(Daemon::start(guard, None, dir.into(), pins())?),
        Config::Guard1k | Config::Guard1kTagged => Session::Daemon(Daemon::start(
            guard,
            Some(&generated.policy),
            dir.into(),
            pins(),
        )?),
        Config::Auditd => {
            audit.context("auditd is not running")?.activate()?;
            Session::Audit
        }
    })
}

/// The secrets rule's hold after a first read, against a daemon of its own on the 1,000-rule
/// policy (whose secrets rule denies) that sees reads on the fallback tier too.
fn taint_window(guard: &Path, bench_bin: &Path, work: &Path, r: &mut Results) {
    if matches!(r.configs[&Config::Guard1k], ConfigState::Skipped(_)) {
        r.taint_window =
            Err("the 1,000-rule policy (whose secrets rule denies) was rejected".into());
        return;
    }
    println!("[bench] secrets rule hold after a first read");
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/guard-bench-{}-taint",
        std::process::id()
    ));
    let daemon = match Daemon::start_with(
        guard,
        Some(&r.policy.policy),
        work.join("taint"),
        pins,
        &["--fallback-read-scan"],
    ) {
        Ok(d) => d,
        Err(e) => {
            r.taint_window = Err(format!("the daemon did not start: {e:#}"));
            return;
        }
    };
    let launcher = Launcher {
        bench_bin,
        tagged: Some((guard, daemon.env())),
    };
    r.taint_window =
        taint::measure(&launcher, &work.join("taint-window"), 50).map_err(|e| format!("{e:#}"));
}

/// Kill latency and the event flood, against one more daemon on the 1,000-rule policy (the
/// kill rule lives there), or on the default policy if that one was rejected.
fn extras(
    guard: &Path,
    bench_bin: &Path,
    work: &Path,
    fx: &Fixtures,
    plan: &Plan,
    r: &mut Results,
) {
    let policy_ok = !matches!(r.configs[&Config::Guard1k], ConfigState::Skipped(_));
    let policy = policy_ok.then_some(r.policy.policy.as_path());
    let pins = PathBuf::from(format!(
        "/sys/fs/bpf/guard-bench-{}-extras",
        std::process::id()
    ));
    // Fork and exit lines stand in for decisions in the flood: every one is decoded,
    // enriched with its ancestry and written, as a decision would be.
    let lines = ["--lifecycle-events"];
    let daemon = match Daemon::start_with(guard, policy, work.join("extras"), pins, &lines) {
        Ok(d) => d,
        Err(e) => {
            let why = format!("the daemon did not start: {e:#}");
            r.kill = KillLatency::unavailable(why.clone());
            r.costs = Err(why.clone());
            r.flood = Err(why.clone());
            r.decision_flood = Err(why);
            return;
        }
    };
    record_start(r, if policy_ok { "1000-rules" } else { "default" }, &daemon);
    let launcher = Launcher {
        bench_bin,
        tagged: Some((guard, daemon.env())),
    };
    r.kill = if policy_ok {
        println!("[bench] kill latency ({} samples)", plan.kill_samples);
        extras::kill_latency(&daemon, &launcher, plan.kill_samples)
    } else {
        KillLatency::unavailable("the 1,000-rule policy (which holds the kill rule) was rejected")
    };
    println!("[bench] program costs (bpf_stats)");
    let untagged = Launcher {
        bench_bin,
        tagged: None,
    };
    r.costs =
        costs::measure(&daemon, &untagged, &launcher, fx, &r.iters).map_err(|e| format!("{e:#}"));
    println!("[bench] event flood ({} tagged forks)", plan.flood_forks);
    let flooders = std::thread::available_parallelism().map_or(1, usize::from);
    let flood = |of, ops| {
        extras::flood(&daemon, &launcher, of, ops, flooders).map_err(|e| format!("{e:#}"))
    };
    r.flood = flood(FloodOf::Forks, plan.flood_forks);
    r.decision_flood = if policy_ok {
        println!(
            "[bench] decision flood ({} denied connects)",
            2 * plan.flood_forks
        );
        flood(FloodOf::DeniedConnects, 2 * plan.flood_forks)
    } else {
        Err("the 1,000-rule policy (which holds the loopback deny rule) was rejected".into())
    };
}

fn record_start(r: &mut Results, policy: &'static str, d: &Daemon) {
    r.start_ns
        .entry(policy)
        .or_default()
        .push(d.start_to_enforcing.as_nanos() as f64);
    let phases = r.start_phases.entry(policy).or_default();
    for (msg, secs) in &d.phases {
        match phases.iter_mut().find(|(m, _)| m == msg) {
            Some((_, v)) => v.push(*secs),
            None => phases.push((msg.clone(), vec![*secs])),
        }
    }
}

/// Whether the tagged workloads really ran tagged: their forks are in the daemon's log.
/// The tagged workload ran tagged: the daemon logged the exec of `guard-bench` in its tree.
fn tagged_forks_logged(d: &Daemon) -> bool {
    fs::read_to_string(&d.event_log).is_ok_and(|log| {
        log.lines()
            .any(|l| l.contains("\"tagged_exec\"") && l.contains("guard-bench"))
    })
}

fn check_policy(guard: &Path, policy: &Path) -> Result<()> {
    let out = Command::new(guard)
        .args(["policy", "check"])
        .arg(policy)
        .output()
        .context("running guard policy check")?;
    if !out.status.success() {
        let text = String::from_utf8_lossy(&out.stderr);
        let first: Vec<&str> = text.lines().take(5).collect();
        bail!("{}", first.join(" / "));
    }
    Ok(())
}

/// Release builds of `guard` (unless `prebuilt` is given) and `guard-bench`.
fn build(prebuilt: Option<&Path>) -> Result<(PathBuf, PathBuf)> {
    let mut args = vec![
        "build",
        "--release",
        "-p",
        "guard-tests",
        "--bin",
        "guard-bench",
    ];
    if prebuilt.is_none() {
        setup::setup()?;
        args.extend(["-p", "guard-userspace", "--bin", "guard"]);
    }
    println!(
        "\n== building {} (release) ==",
        if prebuilt.is_none() {
            "guard and guard-bench"
        } else {
            "guard-bench"
        }
    );
    util::run(
        util::cargo().args(&args),
        "fix the compiler errors above; for eBPF build errors check `cargo xtask setup`",
    )
    .context("build step failed")?;
    let dir = util::target_dir().join("release");
    let guard = match prebuilt {
        Some(p) => fs::canonicalize(p).with_context(|| format!("--guard-bin {}", p.display()))?,
        None => dir.join("guard"),
    };
    let bench = dir.join("guard-bench");
    for bin in [&guard, &bench] {
        if !bin.is_file() {
            bail!("cargo succeeded but {} does not exist", bin.display());
        }
    }
    Ok((guard, bench))
}

/// The bench's temp dir, removed on drop.
struct WorkDir(PathBuf);

impl WorkDir {
    fn create() -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("guard-bench-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
