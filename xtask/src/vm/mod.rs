//! `cargo xtask vm-test`: prove the enforcement tiers on kernels other than the development
//! one. Debian's 6.1 and 6.12 cloud kernels boot under qemu (TCG) with an initramfs holding
//! static (musl) builds of `guard` and of the integration tests, the host programs the tests
//! drive, busybox for the rest, and the few kernel modules they need; the guest's `/init` runs
//! the tier checks and every selected integration test, one machine-readable result line each
//! on the serial console. Each kernel boots twice: with `bpf` in `lsm=` (the BPF LSM tier must
//! be in force) and without it (the fallback tier).
//!
//! Integration tests are found by name: every test of every file in `tests/tests/` runs unless
//! `--test FILE` or a `-- FILTER` narrows the selection, so new network, file and
//! self-protection tests are picked up without touching this module. In the guest the tests
//! see `GUARD_VM=1` and `GUARD_EXPECT_TIER=bpf-lsm|fallback`.

pub mod binaries;
mod guest;
mod host;
mod init;
mod layout;
mod modules;
mod report;
mod rootfs;
pub mod tools;

use std::{
    fs, io,
    path::{Path, PathBuf},
    sync::Mutex,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use clap::ValueEnum;

use self::{
    guest::Outcome,
    host::Series,
    init::{Plan, Step},
};
use crate::{setup, util};

/// LSMs on the guest's command line; the BPF LSM tier adds `bpf`.
const LSM_BASE: &str = "lockdown,capability,landlock,yama";

/// Integration tests that cannot run in the guest, by `FILE::TEST` prefix, with the reason.
/// They are listed as not run in every report — never counted as passed.
const NOT_IN_GUEST: &[(&str, &str)] = &[
    (
        "events::flood_every_event_is_logged_or_counted_as_dropped",
        "under software emulation the flood cannot outrun the event reader, so the drop path it \
         proves is never taken; it runs natively in `cargo xtask test`",
    ),
    (
        "deputies::executors::at_jobs",
        "at and atd are not in the guest's initramfs; the path rules they meet are proven in \
         the guest by the files tests; it runs natively in `cargo xtask test`",
    ),
    (
        "deputies::tunnels::a_destination_nat",
        "iptables is not in the guest's initramfs; on bpf-lsm a root agent cannot add the rule \
         (the capability ceiling), and the fallback tier's check after NAT runs natively in \
         `cargo xtask test`",
    ),
    (
        "secret_taint::nat_cannot_turn",
        "iptables is not in the guest's initramfs (the test adds the NAT rule with it); the \
         guest's fallback boots load the check after NAT it rests on (status `after_nat`), and \
         it runs natively in `cargo xtask test`",
    ),
    (
        "deputies::executors::startup_files",
        "a host-side check of the built-in path rules (the path rules themselves are proven in \
         the guest by the files tests); it runs natively in `cargo xtask test`",
    ),
    (
        "recognition::the_real_agent_clis",
        "the agents' CLIs from npm (900 MB) are not in the guest's initramfs; recognition by \
         executable and script, which they exercise, is kernel-independent and the other \
         recognition tests run in the guest; it runs natively in `cargo xtask test`",
    ),
];

#[derive(clap::Args)]
pub struct Args {
    /// Kernel series to boot.
    #[arg(long, value_enum, default_value_t = KernelArg::All)]
    kernel: KernelArg,
    /// Tier to prove: bpf-lsm (bpf in lsm=), fallback (bpf left out of lsm=) or all.
    #[arg(long, value_enum, default_value_t = TierArg::All)]
    tier: TierArg,
    /// Integration-test file to run (tests/tests/FILE.rs); repeatable. Default: every file.
    #[arg(long = "test", value_name = "FILE")]
    tests: Vec<String>,
    /// Also run this shell command in the guest as a step (passes when it exits 0); for
    /// looking at a kernel by hand. Repeatable.
    #[arg(long, value_name = "CMD")]
    exec: Vec<String>,
    /// Leave out tests whose `FILE::TEST` name contains this; repeatable.
    #[arg(long, value_name = "SUBSTR")]
    skip: Vec<String>,
    /// Only the tier checks, no integration tests.
    #[arg(long)]
    checks_only: bool,
    /// Boot this many guests at once (each is one busy host core under emulation).
    #[arg(long, default_value_t = 1, value_name = "N")]
    jobs: usize,
    /// Kill a guest step (check or test) after this many seconds.
    #[arg(long, default_value_t = 300, value_name = "SECS")]
    step_timeout: u32,
    /// Build guard and the tests with the dev profile instead of release (quicker to build,
    /// about five times slower to load programs under emulation).
    #[arg(long)]
    debug: bool,
    /// Show that the harness fails: the tier checks expect the other tier, and the tests run
    /// with a guard whose daemon policy recognises no agent and denies nothing.
    #[arg(long)]
    inject_failure: bool,
    /// Run the smoke selection ([`SMOKE`]): the core enforcement tests on every boot, in
    /// about a quarter of the full matrix's time. `cargo xtask test` runs this.
    #[arg(long)]
    smoke: bool,
    /// Run only tests whose `FILE::TEST` name contains one of these (after `--`).
    #[arg(last = true, value_name = "FILTER")]
    filters: Vec<String>,
}

/// The tests `--smoke` (and so `cargo xtask test`) runs on each kernel and tier: the tier
/// each daemon enforces with, tagging across every escape (the exit tracker differs per
/// kernel), a full tag map (killed in the kernel or by the daemon), environment markers
/// read at exec (the bounded scan), install paths and cgroups, denied and killed connects, IPv6 and the IPv4 it carries, raw sockets, refused
/// opens and credential reads, destructive tools, and a hostile agent tree.
pub const SMOKE: &[&str] = &[
    "foundation::status_reports_the_probed_tier",
    "tagging::guard_run_and_every_escape",
    "tagging::a_full_tag_map_kills",
    "recognition::a_marker_past_the_scan_limit",
    "recognition::an_agent_installed_by_path",
    "recognition::everything_in_an_agents_cgroup",
    "network::tagged_tools_get_eperm",
    "network::kill_leaves_the_offender_dead",
    "network::ipv6_and_ipv4_mapped_destinations",
    "network::unix_socket_spellings",
    "network::raw_and_packet_sockets",
    "files::opens_for_writing_are_denied",
    "files::destructive_tools",
    "files::credential_reads_are_denied",
    "self_protection::a_hostile_root_agent_tree",
    "deputies::processes::processes_and_terminals_outside_the_tree",
    "deputies::processes::root_agents_stay_under_the_capability_ceiling",
    "deputies::deferred::files_an_agent_wrote_stay_its",
    "secrets::the_secrets_an_agent_reads_are_inventoried",
    "secret_taint::the_chain_from_a_token_read_to_an_api_call_is_broken",
    "incident::a_frozen_tree_stays_frozen",
    "incident::a_hold_rule_freezes_the_tree",
    "approvals::an_approved_request_lets_the_retry_through",
    "approvals::a_path_rule_that_asks",
    "deputies::deferred::git_reading_a_config",
];

/// Smoke tests a kernel series' boots (or one of its tiers: `Some`) leave out, and why: each
/// one's kernel paths are proven on that boot by another smoke test, or on an older kernel
/// with the same hooks; 6.1's bpf-lsm boot (its verifier under software emulation doubles
/// every daemon start) and the 6.12 fallback boot after it set the matrix's time.
const SMOKE_LEFT_OUT: &[(Series, Option<Tier>, &str, &str)] = &[
    (
        Series::V6_1,
        None,
        "deputies::deferred::git_reading_a_config",
        "git running a hook an agent wrote is the exec of a file an agent wrote, which \
         deferred::files_an_agent_wrote proves on 6.1; 6.12 runs it",
    ),
    (
        Series::V6_1,
        None,
        "incident::a_hold_rule_freezes_the_tree",
        "a hold stops the offender with the signal helper at the hook where \
         network::kill_leaves_the_offender_dead kills, and freezes the rest of the tree as \
         incident::a_frozen_tree_stays_frozen does, both proven on 6.1; 6.12 runs it",
    ),
    (
        Series::V6_1,
        None,
        "secrets::the_secrets_an_agent_reads_are_inventoried",
        "the read reports and scans it proves are the first half of \
         secret_taint::the_chain_from_a_token_read, which runs on 6.1 (6.1's fallback tier has \
         no read hook at all, as status says); 6.12 runs it",
    ),
    (
        Series::V6_1,
        None,
        "approvals::a_path_rule_that_asks",
        "a file approval is the refused open of files::opens_for_writing plus the exception \
         lookup of approvals::an_approved_request, both proven on 6.1; 6.12 runs it",
    ),
    (
        Series::V6_1,
        None,
        "files::credential_reads_are_denied",
        "a refused read is the open hook (file_open, or fanotify's permission event) on the \
         inode identity that files::opens_for_writing proves on 6.1; every spelling (links, \
         /proc/self/root) reaches the same inode before a hook runs; 6.12 runs it",
    ),
    (
        Series::V6_1,
        None,
        "network::ipv6_and_ipv4_mapped_destinations",
        "the connect programs every 6.1 boot loads and verifies, run with IPv4 by \
         network::tagged_tools_get_eperm; their IPv6 and mapped-address parsing is the same \
         program code on every kernel; 6.12 runs it",
    ),
    (
        Series::V6_12,
        Some(Tier::Fallback),
        "network::kill_leaves_the_offender_dead",
        "6.12's fallback tier kills as 6.1's does (no kfunc before 6.13: deny, then the \
         daemon's pidfd kill), proven on 6.1/fallback; the host's tier runs it on the newest",
    ),
    (
        Series::V6_12,
        Some(Tier::Fallback),
        "approvals::an_approved_request_lets_the_retry_through",
        "the exception lookup is the cgroup connect program 6.1/fallback proves it with; the \
         host's tier runs it on the newest kernel",
    ),
    (
        Series::V6_12,
        Some(Tier::Fallback),
        "files::opens_for_writing_are_denied",
        "fanotify permission events, as on 6.1/fallback, which proves it; the host's tier runs \
         it on the newest kernel",
    ),
    (
        Series::V6_12,
        Some(Tier::Fallback),
        "files::destructive_tools",
        "fanotify and, before 6.13, no ctime tracepoints: the hooks 6.1/fallback proves it \
         with; the host's tier runs it on the newest kernel",
    ),
    (
        Series::V6_12,
        Some(Tier::Fallback),
        "network::raw_and_packet_sockets",
        "the cgroup sock_create program 6.1/fallback proves it with; the host's tier runs it \
         on the newest kernel",
    ),
];

/// The planned tests the `series`/`tier` boot leaves out.
fn left_out(plan: &Plan, args: &Args, series: Series, tier: Tier) -> Vec<(String, &'static str)> {
    if !args.smoke {
        return Vec::new();
    }
    plan.steps
        .iter()
        .filter_map(|s| match s {
            Step::Test { id, .. } => Some(id),
            _ => None,
        })
        .filter_map(|id| {
            SMOKE_LEFT_OUT
                .iter()
                .find(|(s, t, prefix, _)| {
                    *s == series && t.is_none_or(|t| t == tier) && id.starts_with(prefix)
                })
                .map(|(_, _, _, why)| (id.clone(), *why))
        })
        .collect()
}

impl Args {
    /// The smoke matrix with `jobs` guests at once: both kernels, both tiers.
    pub fn smoke(jobs: usize) -> Self {
        Self {
            kernel: KernelArg::All,
            tier: TierArg::All,
            tests: Vec::new(),
            exec: Vec::new(),
            skip: Vec::new(),
            checks_only: false,
            jobs,
            step_timeout: 300,
            debug: false,
            inject_failure: false,
            smoke: true,
            filters: Vec::new(),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum KernelArg {
    #[value(name = "6.1")]
    V6_1,
    #[value(name = "6.12")]
    V6_12,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum TierArg {
    BpfLsm,
    Fallback,
    All,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Tier {
    BpfLsm,
    Fallback,
}

impl Tier {
    fn name(self) -> &'static str {
        match self {
            Self::BpfLsm => "bpf-lsm",
            Self::Fallback => "fallback",
        }
    }

    fn lsm(self) -> String {
        match self {
            Self::BpfLsm => format!("{LSM_BASE},bpf"),
            Self::Fallback => LSM_BASE.to_owned(),
        }
    }
}

/// One boot's identity and outcome.
pub struct Run {
    pub label: String,
    pub outcome: Outcome,
    /// Steps this boot left out by plan (see [`SMOKE_LEFT_OUT`]), with the reason.
    pub left_out: Vec<(String, &'static str)>,
}

pub fn vm_test(args: &Args) -> Result<()> {
    let start = Instant::now();
    let series: Vec<Series> = match args.kernel {
        KernelArg::V6_1 => vec![Series::V6_1],
        KernelArg::V6_12 => vec![Series::V6_12],
        KernelArg::All => Series::ALL.to_vec(),
    };
    let tiers: Vec<Tier> = match args.tier {
        TierArg::BpfLsm => vec![Tier::BpfLsm],
        TierArg::Fallback => vec![Tier::Fallback],
        TierArg::All => vec![Tier::BpfLsm, Tier::Fallback],
    };

    setup::setup()?;
    let t = Instant::now();
    let Prepared { tools, kernels } = prepare(&series)?;
    let kernel_time = t.elapsed();
    let t = Instant::now();
    let bins = binaries::build(!args.debug)?;
    let build_time = t.elapsed();

    let (plan, not_run) = plan(args, &bins)?;
    let tests = plan
        .steps
        .iter()
        .filter(|s| matches!(s, Step::Test { .. }))
        .count();
    println!(
        "[vm plan] {} checks and {tests} integration tests per boot{}",
        plan.steps.len() - tests,
        if not_run.is_empty() {
            String::new()
        } else {
            format!(", {} not runnable in the guest", not_run.len())
        }
    );

    let t = Instant::now();
    let dir = util::target_dir().join("vm");
    fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let (tree, notes) = layout::tree(&bins, &plan, &tools.busybox)?;
    for n in &notes {
        println!("[vm initramfs] {n}");
    }
    let common = dir.join("initramfs.cpio.gz");
    let size = tree.write_gz(&common, &dir)?;
    println!(
        "[vm initramfs] {} ({} MiB, {} MiB unpacked)",
        common.display(),
        fs::metadata(&common)?.len() >> 20,
        size >> 20,
    );
    let mut initrds = Vec::new();
    for k in &kernels {
        initrds.push(with_modules(&common, k, &dir)?);
    }
    let initramfs_time = t.elapsed();
    println!("[vm initramfs] built in {}", util::secs(initramfs_time));

    let mut boots = Vec::new();
    for (k, initrd) in kernels.iter().zip(&initrds) {
        for tier in &tiers {
            let label = format!("{}/{}", k.series.name(), tier.name());
            println!("[{label}] {} with lsm={}", k.package, tier.lsm());
            let left_out = left_out(&plan, args, k.series, *tier);
            let skip = if left_out.is_empty() {
                String::new()
            } else {
                let ids: Vec<&str> = left_out.iter().map(|(id, _)| id.as_str()).collect();
                format!(" {}={}", init::SKIP_PARAM, ids.join(","))
            };
            boots.push(guest::Boot {
                left_out,
                qemu: tools.qemu.clone(),
                log: dir.join(format!("{}-{}.log", k.series.name(), tier.name())),
                label,
                vmlinuz: k.vmlinuz.clone(),
                initrd: initrd.clone(),
                append: format!(
                    "console=ttyS0 lsm={} panic=-1 {}={}{skip}",
                    tier.lsm(),
                    init::TIER_PARAM,
                    tier.name()
                ),
                boot_timeout: Duration::from_secs(120),
                step_timeout: Duration::from_secs(u64::from(args.step_timeout)),
            });
        }
    }
    let runs = boot_all(&boots, args.jobs.max(1))?;

    let failed = report::print(&plan, &not_run, &runs);
    let boot_sum: Duration = runs.iter().map(|r| r.outcome.total).sum();
    println!(
        "\nvm-test took {} (build {}, host tools and kernels {}, initramfs {}, {} boots {} summed, {} at a time)",
        util::secs(start.elapsed()),
        util::secs(build_time),
        util::secs(kernel_time),
        util::secs(initramfs_time),
        runs.len(),
        util::secs(boot_sum),
        args.jobs.max(1)
    );
    if args.inject_failure {
        println!("(--inject-failure: failures were injected on purpose; this run must fail)");
    }
    if failed > 0 {
        bail!(
            "vm-test: {failed} failure(s); the console logs are in {}",
            dir.display()
        );
    }
    Ok(())
}

/// What every boot needs from outside the workspace.
pub struct Prepared {
    tools: tools::Tools,
    kernels: Vec<host::Kernel>,
}

/// Fetch (or find in the cache) everything `vm-test` needs from outside the workspace: qemu and
/// busybox, the musl target and the kernels. Cheap when cached, so `cargo xtask test` calls it
/// before the long tiers to fail early, and `vm-test` calls it again.
pub fn prepare(series: &[Series]) -> Result<Prepared> {
    let tools = tools::ensure().context("vm host tools (qemu, busybox)")?;
    println!("[vm host] {}", tools.note);
    println!(
        "[vm build] {}",
        binaries::ensure_musl_target().context("the musl target for static guest binaries")?
    );
    let kernels = series
        .iter()
        .map(|s| host::fetch_kernel(*s).with_context(|| format!("kernel {}", s.name())))
        .collect::<Result<Vec<_>>>()?;
    for k in &kernels {
        let how = if k.downloaded { "downloaded" } else { "cached" };
        println!(
            "[vm kernel {}] {} ({how}: {})",
            k.series.name(),
            k.package,
            k.vmlinuz.display()
        );
    }
    Ok(Prepared { tools, kernels })
}

/// Every kernel series the smoke matrix boots.
pub fn prepare_smoke() -> Result<()> {
    prepare(&Series::ALL).map(drop)
}

/// Run the boots, `jobs` at a time; results in the order of `boots`.
fn boot_all(boots: &[guest::Boot], jobs: usize) -> Result<Vec<Run>> {
    let next = Mutex::new(0..boots.len());
    let done: Mutex<Vec<(usize, Result<Outcome>)>> = Mutex::new(Vec::new());
    thread::scope(|scope| {
        for _ in 0..jobs.min(boots.len()) {
            scope.spawn(|| {
                loop {
                    let Some(i) = next.lock().expect("not poisoned").next() else {
                        return;
                    };
                    let b = &boots[i];
                    let outcome = guest::run(b);
                    if let Ok(o) = &outcome {
                        println!(
                            "[{}] {} in {} (console log: {})",
                            b.label,
                            if o.error.is_some() {
                                "guest FAILED"
                            } else {
                                "guest done"
                            },
                            util::secs(o.total),
                            b.log.display()
                        );
                    }
                    done.lock().expect("not poisoned").push((i, outcome));
                }
            });
        }
    });
    let mut done = done.into_inner().expect("not poisoned");
    done.sort_by_key(|(i, _)| *i);
    done.into_iter()
        .map(|(i, outcome)| {
            Ok(Run {
                label: boots[i].label.clone(),
                outcome: outcome?,
                left_out: boots[i].left_out.clone(),
            })
        })
        .collect()
}

/// The shared initramfs followed by a second archive with this kernel's modules (the kernel
/// unpacks concatenated archives in order).
fn with_modules(common: &Path, k: &host::Kernel, dir: &Path) -> Result<PathBuf> {
    let mut t = rootfs::Tree::default();
    let names = modules::add(&mut t, &k.modules)
        .with_context(|| format!("kernel modules of {}", k.package))?;
    let extra = dir.join(format!("modules-{}.cpio.gz", k.series.name()));
    t.write_gz(&extra, dir)?;
    let initrd = dir.join(format!("initramfs-{}.cpio.gz", k.series.name()));
    fs::copy(common, &initrd)?;
    let mut out = fs::OpenOptions::new().append(true).open(&initrd)?;
    io::copy(&mut fs::File::open(&extra)?, &mut out)?;
    fs::remove_file(&extra)?;
    println!(
        "[vm initramfs {}] + modules {}",
        k.series.name(),
        if names.is_empty() {
            "(none needed)".to_owned()
        } else {
            names.join(" ")
        }
    );
    Ok(initrd)
}

/// The steps of every boot, and the selected tests that cannot run in the guest.
fn plan(args: &Args, bins: &binaries::Binaries) -> Result<(Plan, Vec<(String, &'static str)>)> {
    let expect_other = args.inject_failure;
    let mut steps = vec![
        Step::Check {
            id: "check::probe-tier".into(),
            mode: "probe",
            expect_other,
        },
        Step::Check {
            id: "check::daemon-tier".into(),
            mode: "daemon",
            expect_other,
        },
    ];
    for (i, command) in args.exec.iter().enumerate() {
        let id = format!("exec::{}", i + 1);
        steps.push(Step::Shell {
            id,
            command: command.clone(),
        });
    }
    let mut not_run = Vec::new();
    if !args.checks_only {
        for file in &args.tests {
            if !bins.tests.iter().any(|(name, _)| name == file) {
                let known: Vec<&str> = bins.tests.iter().map(|(n, _)| n.as_str()).collect();
                bail!(
                    "no integration-test file `{file}`; known: {}",
                    known.join(", ")
                );
            }
        }
        for (file, binary) in &bins.tests {
            if !args.tests.is_empty() && !args.tests.contains(file) {
                continue;
            }
            for name in binaries::list_tests(binary)? {
                let id = format!("{file}::{name}");
                if args.skip.iter().any(|f| id.contains(f.as_str())) {
                    continue;
                }
                if !args.filters.is_empty() && !args.filters.iter().any(|f| id.contains(f.as_str()))
                {
                    continue;
                }
                if args.smoke && !SMOKE.iter().any(|f| id.starts_with(f)) {
                    continue;
                }
                if let Some((_, why)) = NOT_IN_GUEST.iter().find(|(p, _)| id.starts_with(p)) {
                    not_run.push((id, *why));
                    continue;
                }
                let binary = binary.to_string_lossy().into_owned();
                steps.push(Step::Test { id, binary, name });
            }
        }
        if steps.len() == 2 + args.exec.len() && not_run.is_empty() {
            bail!("the filters {:?} select no integration test", args.filters);
        }
    }
    let guard_bin = if args.inject_failure {
        init::DENY_NOTHING_GUARD
    } else {
        init::GUARD
    };
    Ok((
        Plan {
            steps,
            timeout_secs: args.step_timeout,
            guard_bin,
        },
        not_run,
    ))
}
