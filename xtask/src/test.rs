//! `cargo xtask test`: every test tier, in order, with a summary of what ran. Integration tests
//! need root; without it they are reported as not run and the command fails (never a silent skip).

use std::{ffi::OsString, time::Instant};

use anyhow::{Context as _, Result, bail};

use crate::{setup, util};

const UNIT: &str = "unit tests";
const TOOLS: &str = "test tools";
const BINARY: &str = "guard binary";
const IMAGE: &str = "containers";
const INTEGRATION: &str = "integration tests";
const VM_HOST: &str = "vm host";
const VM: &str = "vm matrix (smoke)";

/// Outcome of each tier, printed at the end whatever happened.
#[derive(Default)]
struct Summary {
    rows: Vec<(&'static str, String)>,
}

impl Summary {
    fn record(&mut self, tier: &'static str, outcome: impl Into<String>) {
        self.rows.push((tier, outcome.into()));
    }

    /// Run one tier, recording "passed (time)" or "FAILED".
    fn tier<T>(&mut self, tier: &'static str, f: impl FnOnce() -> Result<T>) -> Result<T> {
        let start = Instant::now();
        let result = f();
        let took = util::secs(start.elapsed());
        match &result {
            Ok(_) => self.record(tier, format!("passed ({took})")),
            Err(_) => self.record(tier, format!("FAILED ({took})")),
        }
        result
    }

    fn print(&self, all: &[&'static str]) {
        println!("\n== cargo xtask test summary ==");
        for tier in all {
            let outcome = self
                .rows
                .iter()
                .find(|(t, _)| t == tier)
                .map_or("not run", |(_, o)| o.as_str());
            println!("  {tier:<18} {outcome}");
        }
    }
}

pub fn test(extra: &[OsString], vm: bool) -> Result<()> {
    let all = [
        "setup",
        TOOLS,
        VM_HOST,
        UNIT,
        BINARY,
        IMAGE,
        INTEGRATION,
        VM,
    ];
    let mut summary = Summary::default();
    let result = run_tiers(extra, vm, &mut summary).and_then(|()| {
        if !vm {
            summary.record(VM, "not run (--no-vm)");
            return Ok(());
        }
        println!("\n== vm matrix: the bpf-lsm and fallback tiers on Linux 6.1 and 6.12 ==");
        summary.tier(VM, || {
            crate::vm::vm_test(&crate::vm::Args::smoke(2)).context("the vm matrix failed")
        })
    });
    summary.print(&all);
    result
}

fn run_tiers(extra: &[OsString], vm: bool, summary: &mut Summary) -> Result<()> {
    let root = util::is_root();
    summary.tier("setup", setup::setup)?;

    match setup::ensure_test_tools(root) {
        Ok(tools) => {
            println!("[test tools] {tools}");
            summary.record(TOOLS, tools);
        }
        Err(e) => {
            summary.record(TOOLS, "FAILED");
            return Err(e.context("test tools step failed"));
        }
    }

    if root {
        match crate::agent_clis::ensure() {
            Ok(note) => println!("[agent clis] {note}"),
            Err(e) => {
                summary.record(TOOLS, "FAILED");
                return Err(e.context("the agents' command-line tools could not be installed"));
            }
        }
    }

    // Everything the VM matrix needs from outside (qemu, busybox, kernels) is fetched now, so
    // that a machine that cannot have it fails in seconds, not after the integration tests.
    if vm && root {
        println!("\n== vm host: qemu, busybox and kernels for the vm matrix ==");
        summary.tier(VM_HOST, || {
            crate::vm::prepare_smoke().context(
                "the vm matrix cannot run on this machine (see above; `--no-vm` leaves it out \
                 outside CI)",
            )
        })?;
    } else if vm {
        // Without root the integration tiers cannot run either; the unit tests still do.
        summary.record(VM_HOST, "not run (needs root)");
    } else {
        summary.record(VM_HOST, "not run (--no-vm)");
    }

    println!("\n== unit tests (no root needed) ==");
    summary.tier(UNIT, || {
        util::run(
            util::cargo().args([
                "test",
                "--workspace",
                "--exclude",
                "guard-ebpf",
                "--exclude",
                "guard-tests",
            ]),
            "fix the failing unit tests above",
        )
        .context("unit tests failed")
    })?;

    if !root {
        summary.record(BINARY, "not run (needs root for the integration tests)");
        summary.record(INTEGRATION, "NOT RUN: needs root");
        bail!(
            "integration tests need root: they load eBPF programs into the running kernel and \
             attach them to cgroups; the unit tests passed, but the suite is incomplete\n  \
             what to do: run as root, e.g. sudo -E env \"PATH=$PATH\" cargo xtask test"
        );
    }

    println!("\n== guard binary for the integration tests ==");
    let bin = summary.tier(BINARY, || {
        util::run(
            util::cargo().args(["build", "-p", "guard-userspace", "--bin", "guard"]),
            "fix the compiler errors above; for eBPF build errors check `cargo xtask setup`",
        )
        .context("building the guard binary failed")?;
        let bin = util::guard_bin(false);
        if !bin.is_file() {
            bail!("cargo succeeded but {} does not exist", bin.display());
        }
        Ok(bin)
    })?;

    // The container tests run guard's own image (the static release build the VM matrix
    // uses too) and a workload image made from a static busybox, and validate the manifests.
    println!("\n== containers: guard's image, a static busybox, the manifests' validator ==");
    let (image, busybox, validator) = summary.tier(IMAGE, || {
        let image = crate::image::ensure_image().context("building guard's image")?;
        let busybox = crate::vm::tools::ensure()
            .context("a static busybox for the workload containers")?
            .busybox;
        let validator = crate::kube::ensure_validator()?;
        Ok((image, busybox, validator))
    })?;

    println!(
        "\n== integration tests (root, GUARD_BIN={}) ==",
        bin.display()
    );
    summary.tier(INTEGRATION, || {
        util::run(
            util::cargo()
                // Every test file runs even when one fails, so that a run reports them all.
                .args([
                    "test",
                    "-p",
                    "guard-tests",
                    "--no-fail-fast",
                    "--",
                    "--test-threads=1",
                ])
                .args(extra)
                .env("GUARD_BIN", &bin)
                .env("GUARD_IMAGE", &image)
                .env("GUARD_BUSYBOX", &busybox)
                .env("GUARD_KUBE_VALIDATE", &validator)
                .env(crate::agent_clis::ENV, crate::agent_clis::dir()),
            "fix the failing integration tests above",
        )
        .context("integration tests failed")
    })?;
    report_kernel_skips(&bin);
    Ok(())
}

/// Name, in the output, each kernel feature this machine lacks and the tests therefore could
/// not exercise (the only skips allowed: features every required check depends on fail the
/// tests instead, under CI).
fn report_kernel_skips(bin: &std::path::Path) {
    let out = std::process::Command::new(bin)
        .args(["status", "-o", "json"])
        .env("GUARD_SOCKET", "/nonexistent/guard-xtask-probe.sock")
        .output();
    let Ok(out) = out else { return };
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout) else {
        println!("kernel probe: no JSON from `guard status -o json`");
        return;
    };
    let tier = v["probe"]["tier"].as_str().unwrap_or("?");
    println!("\n== kernel features (tier: {tier}) ==");
    for f in v["probe"]["features"].as_array().into_iter().flatten() {
        if f["status"] != "available" {
            let name = f["name"].as_str().unwrap_or("?");
            let detail = f["detail"].as_str().unwrap_or("");
            let what = if name == "bpf-lsm" {
                "bpf-lsm tier"
            } else {
                name
            };
            println!("SKIPPED: {what} — this kernel: {detail}");
        }
    }
}
