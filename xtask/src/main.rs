//! `cargo xtask`: set up the eBPF toolchain, build and run guard, and run every test tier.
//!
//! ```text
//! cargo xtask setup                 nightly + rust-src + a bpf-linker matching nightly's LLVM
//! cargo xtask build [--release]     setup, then build the guard binary
//! cargo xtask run [--release] [-- ARGS]   build, then exec `guard daemon ARGS` (root)
//! cargo xtask test [-- EXTRA]       unit tests, then privileged integration tests (root)
//! cargo xtask bench [--quick]       what guard costs the host, vs no guard and auditd (root)
//! cargo xtask image [--tag T]       OCI image of the static guard binary, loaded into podman
//! cargo xtask vm-test [--kernel 6.1|6.12|all]   tiers and integration tests in qemu guests
//! cargo xtask fmt-check | lint      rustfmt / clippy, warnings denied
//! ```

mod agent_clis;
mod apt;
mod bench;
mod image;
mod kube;
mod setup;
mod test;
mod util;
mod vm;

use std::{ffi::OsString, os::unix::process::CommandExt as _, process::ExitCode};

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test guard", version)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what building guard needs: the nightly toolchain, rust-src and a bpf-linker
    /// built against nightly's LLVM (cached; fast when everything is present).
    Setup,
    /// Set up, then `cargo build -p guard-userspace`; prints the binary's path.
    Build {
        /// Build with the release profile.
        #[arg(long)]
        release: bool,
    },
    /// Build, then exec `guard daemon ARGS…` (needs root).
    Run {
        /// Build and run the release binary.
        #[arg(long)]
        release: bool,
        /// Arguments for `guard daemon` (after `--`).
        #[arg(last = true)]
        args: Vec<OsString>,
    },
    /// Unit tests, then the privileged integration tests against the running kernel (needs root).
    Test {
        /// Leave out the VM matrix (the BPF LSM and fallback tiers on Linux 6.1 and 6.12
        /// under qemu), which takes about 15 minutes; CI always runs it.
        #[arg(long)]
        no_vm: bool,
        /// Extra arguments for the integration test harness (after `--`), e.g. a test name filter.
        #[arg(last = true)]
        extra: Vec<OsString>,
    },
    /// Measure what guard costs the host, against no guard and auditd; prints a table and
    /// writes <target>/bench/bench.json (needs root).
    Bench {
        /// A short development run (about a minute): fewer rounds, shorter loops.
        #[arg(long)]
        quick: bool,
        /// Number of rounds (each runs every configuration once); default 9, or 2 with --quick.
        #[arg(long)]
        rounds: Option<usize>,
        /// Skip the auditd comparison.
        #[arg(long)]
        no_auditd: bool,
        /// Measure this guard binary instead of building one (release) from the workspace.
        #[arg(long, value_name = "PATH")]
        guard_bin: Option<std::path::PathBuf>,
    },
    /// Build an OCI image of the static (musl, release) guard binary offline and load it into
    /// the local podman (installed, with runc, when missing); tags it TAG and <repo>:latest.
    Image {
        /// Container engine: podman, or docker when its daemon answers and podman is absent.
        #[arg(long, value_enum, default_value = "auto")]
        engine: image::EngineChoice,
        /// The image's tag [default: localhost/guard:<workspace version>].
        #[arg(long)]
        tag: Option<String>,
        /// Import again even when the loaded image already holds this binary.
        #[arg(long)]
        force: bool,
    },
    /// Boot Debian's 6.1 and 6.12 cloud kernels under qemu (TCG), with BPF LSM on and off,
    /// and run the tier checks and the integration tests inside (static musl builds).
    VmTest(vm::Args),
    /// `cargo fmt --check`.
    FmtCheck,
    /// `cargo clippy --workspace --exclude guard-ebpf --all-targets -- -D warnings` (the eBPF
    /// crate only builds for the BPF target, through build.rs).
    Lint,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match dispatch(cli.cmd) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("\nerror: {e}");
            for cause in e.chain().skip(1) {
                eprintln!("  caused by: {cause}");
            }
            ExitCode::FAILURE
        }
    }
}

/// The name server every daemon the tests and the bench start asks (unless one is named): the
/// discard port on loopback, where nothing answers. Host rules (the default policy's
/// `@control-planes`) then stay unresolved, and no query leaves the machine.
const NO_DNS: &str = "127.0.0.1:9";

fn dispatch(cmd: Cmd) -> Result<()> {
    if matches!(cmd, Cmd::Test { .. } | Cmd::VmTest(_) | Cmd::Bench { .. })
        && std::env::var_os("GUARD_DNS_SERVER").is_none()
    {
        // SAFETY: set once at start, before any thread is spawned.
        unsafe { std::env::set_var("GUARD_DNS_SERVER", NO_DNS) };
    }
    match cmd {
        Cmd::Setup => setup::setup().map(drop),
        Cmd::Build { release } => {
            setup::setup()?;
            let bin = build(release)?;
            println!("{}", bin.display());
            Ok(())
        }
        Cmd::Run { release, args } => run(release, args),
        Cmd::Test { no_vm, extra } => {
            if no_vm && std::env::var("CI").is_ok_and(|v| v == "true" || v == "1") {
                anyhow::bail!("--no-vm is for development: CI runs the VM matrix too");
            }
            test::test(&extra, !no_vm)
        }
        Cmd::Image { engine, tag, force } => image::image(&image::Options { engine, tag, force }),
        Cmd::VmTest(args) => vm::vm_test(&args),
        Cmd::Bench {
            quick,
            rounds,
            no_auditd,
            guard_bin,
        } => bench::bench(&bench::Options {
            quick,
            rounds,
            no_auditd,
            guard_bin,
        }),
        Cmd::FmtCheck => util::run(
            util::cargo().args(["fmt", "--check"]),
            "run `cargo fmt` and commit the result",
        )
        .context("fmt-check failed"),
        Cmd::Lint => util::run(
            util::cargo().args([
                "clippy",
                "--workspace",
                "--exclude",
                "guard-ebpf",
                "--all-targets",
                "--",
                "-D",
                "warnings",
            ]),
            "fix the warnings above (or run `cargo clippy --fix`)",
        )
        .context("lint failed"),
    }
}

/// `cargo build -p guard-userspace [--release]`; returns the guard binary's path.
fn build(release: bool) -> Result<std::path::PathBuf> {
    let mut cmd = util::cargo();
    cmd.args(["build", "-p", "guard-userspace", "--bin", "guard"]);
    if release {
        cmd.arg("--release");
    }
    util::run(
        &mut cmd,
        "fix the compiler errors above; for eBPF build errors check `cargo xtask setup`",
    )
    .context("build step (cargo build -p guard-userspace) failed")?;
    let bin = util::guard_bin(release);
    if !bin.is_file() {
        bail!(
            "build step: cargo succeeded but {} does not exist (is the target directory \
             configured somewhere xtask does not look?)",
            bin.display()
        );
    }
    Ok(bin)
}

fn run(release: bool, args: Vec<OsString>) -> Result<()> {
    if !util::is_root() {
        bail!(
            "`guard daemon` needs root: it loads eBPF programs and attaches them to cgroups\n  \
             what to do: sudo -E env \"PATH=$PATH\" cargo xtask run{} -- …",
            if release { " --release" } else { "" }
        );
    }
    setup::setup()?;
    let bin = build(release)?;
    let mut cmd = std::process::Command::new(&bin);
    cmd.arg("daemon").args(&args);
    println!("exec {}", util::show(&cmd));
    // exec replaces this process, so signals (Ctrl-C, SIGTERM) go straight to guard.
    let err = cmd.exec();
    Err(err).with_context(|| format!("run step: cannot exec {}", bin.display()))
}
