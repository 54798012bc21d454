//! `cargo xtask setup`: the nightly toolchain with rust-src, and a bpf-linker built against that
//! nightly's own libLLVM. Every step checks first and only acts when something is missing, so a
//! second run takes well under a second.

use std::{
    fs,
    os::unix::fs::symlink,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result, anyhow, bail};
use xtask::toolchain::{self, BPF_LINKER_ENV, BPF_LINKER_VERSION, LinkerSource, NIGHTLY, Nightly};

use crate::util::{self, secs};

const STEPS: usize = 3;

/// Make sure everything needed to build guard is present; returns the nightly's facts.
pub fn setup() -> Result<Nightly> {
    let start = Instant::now();
    step(1, "nightly toolchain", ensure_nightly)?;
    step(2, "rust-src for nightly", ensure_rust_src)?;
    let nightly = Nightly::detect()
        .map_err(|e| anyhow!(e))
        .context("setup: cannot inspect the nightly toolchain")?;
    step(
        3,
        &format!("bpf-linker (LLVM {})", nightly.llvm_major),
        || ensure_bpf_linker(&nightly),
    )?;
    println!("setup: done in {}", secs(start.elapsed()));
    Ok(nightly)
}

/// Print `[setup N/3] name: outcome`, or name the failed step in the error.
fn step(n: usize, name: &str, f: impl FnOnce() -> Result<String>) -> Result<()> {
    let outcome = f().with_context(|| format!("setup step {n}/{STEPS} ({name}) failed"))?;
    println!("[setup {n}/{STEPS}] {name}: {outcome}");
    Ok(())
}

fn progress(n: usize, name: &str, what: &str) {
    println!("[setup {n}/{STEPS}] {name}: {what}");
}

fn ensure_nightly() -> Result<String> {
    let out = util::output(
        Command::new("rustup").args(["toolchain", "list"]),
        "install rustup (https://rustup.rs) and make sure it is on PATH",
    )?;
    if has_toolchain(&String::from_utf8_lossy(&out.stdout), NIGHTLY) {
        return Ok("ok (already present)".into());
    }
    progress(1, "nightly toolchain", "not installed; installing it");
    let start = Instant::now();
    util::run(
        Command::new("rustup").args([
            "toolchain",
            "install",
            NIGHTLY,
            "--profile",
            "minimal",
            "--component",
            "rust-src",
        ]),
        "check network access to static.rust-lang.org and free disk space in $RUSTUP_HOME",
    )?;
    Ok(format!("installed in {}", secs(start.elapsed())))
}

/// Whether `rustup toolchain list` names `name` for the host (`nightly-<triple>`, not a dated
/// `nightly-2026-…` one).
fn has_toolchain(list: &str, name: &str) -> bool {
    list.lines()
        .filter_map(|l| l.split_whitespace().next())
        .any(|t| {
            t == name
                || t.strip_prefix(name)
                    .and_then(|rest| rest.strip_prefix('-'))
                    .and_then(|rest| rest.chars().next())
                    .is_some_and(|c| !c.is_ascii_digit())
        })
}

fn ensure_rust_src() -> Result<String> {
    let out = util::output(
        Command::new("rustup").args(["component", "list", "--toolchain", NIGHTLY, "--installed"]),
        "check that `rustup toolchain list` shows the nightly toolchain",
    )?;
    let installed = String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.split_whitespace().next() == Some("rust-src"));
    if installed {
        return Ok("ok (already present)".into());
    }
    progress(2, "rust-src for nightly", "not installed; adding it");
    util::run(
        Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", NIGHTLY]),
        "check network access to static.rust-lang.org",
    )?;
    Ok("added".into())
}

fn step3_name(nightly: &Nightly) -> String {
    format!("bpf-linker (LLVM {})", nightly.llvm_major)
}

fn ensure_bpf_linker(nightly: &Nightly) -> Result<String> {
    let mut force = false;
    match toolchain::locate_bpf_linker(nightly) {
        Some((path, LinkerSource::Env)) => {
            return match linker_version(&path) {
                Ok(v) => Ok(format!(
                    "ok (already present: {v} at {} from ${BPF_LINKER_ENV})",
                    path.display()
                )),
                Err(e) => Err(e.context(format!(
                    "${BPF_LINKER_ENV}={} does not run\n  what to do: point {BPF_LINKER_ENV} at a \
                     working bpf-linker built for LLVM {}, or unset it so setup builds one",
                    path.display(),
                    nightly.llvm_major
                ))),
            };
        }
        Some((path, LinkerSource::Cached)) => match linker_version(&path) {
            Ok(v) => return Ok(format!("ok (already present: {v} at {})", path.display())),
            Err(e) => {
                println!(
                    "warning: the cached {} does not run ({e:#}); rebuilding it",
                    path.display()
                );
                force = true;
            }
        },
        Some((path, LinkerSource::Path)) => {
            let major = path_linker_llvm_major(&path);
            if major.as_deref() == Some(nightly.llvm_major.as_str()) {
                return Ok(format!(
                    "ok (already present: {} on PATH, LLVM {})",
                    path.display(),
                    nightly.llvm_major
                ));
            }
            println!(
                "warning: ignoring {} on PATH: its LLVM major version is {}, the {NIGHTLY} \
                 toolchain uses LLVM {}; building a matching one",
                path.display(),
                major.as_deref().unwrap_or("unknown"),
                nightly.llvm_major
            );
        }
        None => {}
    }
    build_bpf_linker(nightly, force)
}

/// `bpf-linker --version`, which must succeed.
fn linker_version(path: &Path) -> Result<String> {
    let shown = format!("{} --version", path.display());
    let out = Command::new(path)
        .arg("--version")
        .output()
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The LLVM major version of a bpf-linker found on PATH: from `--version` if it says, else from
/// the libLLVM it links dynamically. `None` if it does not run or we cannot tell.
fn path_linker_llvm_major(path: &Path) -> Option<String> {
    let version = linker_version(path).ok()?;
    if let Some(major) = llvm_major_in(&version) {
        return Some(major);
    }
    let ldd = Command::new("ldd").arg(path).output().ok()?;
    String::from_utf8_lossy(&ldd.stdout).lines().find_map(|l| {
        let name = l.split_whitespace().next()?;
        let rest = name
            .strip_prefix("libLLVM.so.")
            .or_else(|| name.strip_prefix("libLLVM-"))?;
        let major: String = rest.chars().take_while(char::is_ascii_digit).collect();
        (!major.is_empty()).then_some(major)
    })
}

/// The number following "LLVM" (optionally after "version") in a version string.
fn llvm_major_in(text: &str) -> Option<String> {
    let words: Vec<&str> = text
        .split_whitespace()
        .map(|w| w.trim_matches(|c: char| !c.is_ascii_alphanumeric() && c != '.'))
        .collect();
    let at = words.iter().position(|w| w.eq_ignore_ascii_case("llvm"))?;
    words[at + 1..]
        .iter()
        .find(|w| !w.eq_ignore_ascii_case("version"))
        .map(|w| {
            w.trim_start_matches('v')
                .chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .filter(|m| !m.is_empty())
}

/// Build bpf-linker from crates.io against the nightly's libLLVM into its cache directory.
fn build_bpf_linker(nightly: &Nightly, force: bool) -> Result<String> {
    let root = nightly.bpf_linker_root();
    let llvm = root.join("llvm");
    let lib = llvm.join("lib");
    fs::create_dir_all(&lib).with_context(|| format!("cannot create {}", lib.display()))?;
    let libllvm = nightly.libllvm().map_err(|e| anyhow!(e)).context(
        "the nightly toolchain has no libLLVM shared object\n  what to do: reinstall \
                  it with `rustup toolchain uninstall nightly && cargo xtask setup`",
    )?;
    let link = lib.join("libLLVM.so");
    if link.symlink_metadata().is_ok() {
        fs::remove_file(&link).with_context(|| format!("cannot replace {}", link.display()))?;
    }
    symlink(&libllvm, &link)
        .with_context(|| format!("cannot link {} -> {}", link.display(), libllvm.display()))?;

    let mut cmd = Command::new("cargo");
    cmd.current_dir(&root)
        .args([
            "install",
            &format!("bpf-linker@{BPF_LINKER_VERSION}"),
            "--locked",
            "--no-default-features",
            "--features",
            &format!("llvm-{}", nightly.llvm_major),
            "--root",
        ])
        .arg(&root);
    if force {
        cmd.arg("--force");
    }
    cmd.env("LLVM_PREFIX", &llvm).env(
        "RUSTFLAGS",
        format!(
            "-C link-arg=-Wl,-rpath,{}",
            nightly.sysroot.join("lib").display()
        ),
    );
    for var in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "CARGO_TARGET_DIR",
        "CARGO_BUILD_TARGET_DIR",
        "CARGO_ENCODED_RUSTFLAGS",
        "CARGO_BUILD_RUSTFLAGS",
    ] {
        cmd.env_remove(var);
    }
    progress(
        3,
        &step3_name(nightly),
        &format!(
            "building bpf-linker {BPF_LINKER_VERSION} against the {NIGHTLY} toolchain's LLVM {} \
             into {} (1-3 minutes)",
            nightly.llvm_major,
            root.display()
        ),
    );
    let start = Instant::now();
    util::run(
        &mut cmd,
        "check network access to crates.io (cargo install downloads bpf-linker and its \
         dependencies) and that a C compiler (cc) is installed; the compiler output is above",
    )?;
    let built = nightly.bpf_linker();
    let version = linker_version(&built).with_context(|| {
        format!(
            "the freshly built {} does not run\n  what to do: delete {} and run `cargo xtask \
                 setup` again; if it fails again, report the error above",
            built.display(),
            root.display()
        )
    })?;
    Ok(format!(
        "built {version} in {} at {}",
        secs(start.elapsed()),
        built.display()
    ))
}

/// Tools the integration tests use, and the Debian package providing each.
const TEST_TOOLS: &[(&str, &str)] = &[
    ("ip", "iproute2"),
    ("curl", "curl"),
    ("python3", "python3"),
    ("nc", "netcat-openbsd"),
    ("tcpdump", "tcpdump"),
    ("strace", "strace"),
    ("mkfs.ext4", "e2fsprogs"),
    // The HTTPS servers of the secrets tests (s_server) and their certificates.
    ("openssl", "openssl"),
    // The deputies the no-deputies tests start and attack through.
    ("tmux", "tmux"),
    ("atd", "at"),
    ("sshd", "openssh-server"),
    ("ssh", "openssh-client"),
    ("ssh-keygen", "openssh-client"),
    ("socat", "socat"),
    ("microsocks", "microsocks"),
    ("iptables", "iptables"),
    // Containers for guard's image (`cargo xtask image`). Debian's podman pulls in crun only,
    // which refuses a hybrid cgroup layout: runc is what podman runs here (see image.rs).
    ("podman", "podman"),
    ("runc", "runc"),
    // The review page's browser test: Debian's Chromium, driven over WebDriver.
    ("chromium", "chromium"),
    ("chromedriver", "chromium-driver"),
    // The agents' command-line tools come from the npm registry (see agent_clis.rs).
    ("npm", "npm"),
];

/// Make sure the tools the integration tests call are installed, with apt-get when missing.
/// Without root nothing is installed (the integration tests cannot run anyway): returns a note.
pub fn ensure_test_tools(root: bool) -> Result<String> {
    let missing = missing_tools();
    if missing.is_empty() {
        return Ok("ok (already present)".into());
    }
    let names: Vec<&str> = missing.iter().map(|(t, _)| *t).collect();
    // Only what is missing: an installed package is never upgraded or touched here.
    let mut packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    packages.dedup();
    let hint = format!(
        "check network access to the Debian mirror, or install them by hand: \
         apt-get install {}",
        packages.join(" ")
    );
    if !root {
        return Ok(format!(
            "missing {} (not installing: needs root; as root: apt-get install {})",
            names.join(", "),
            packages.join(" ")
        ));
    }
    println!(
        "[test tools] missing {}; installing {} with apt-get",
        names.join(", "),
        packages.join(" ")
    );
    let start = Instant::now();
    crate::apt::install(&packages, &hint)?;
    let still: Vec<&str> = missing_tools().iter().map(|(t, _)| *t).collect();
    if !still.is_empty() {
        bail!(
            "still missing after apt-get install: {}\n  what to do: {hint}",
            still.join(", ")
        );
    }
    Ok(format!(
        "installed {} in {}",
        packages.join(" "),
        secs(start.elapsed())
    ))
}

fn missing_tools() -> Vec<(&'static str, &'static str)> {
    TEST_TOOLS
        .iter()
        .copied()
        .filter(|(tool, _)| find_tool(tool).is_none())
        .collect()
}

/// `which`, plus the sbin directories a non-root PATH may lack (`ip`, `mkfs.ext4` live there).
fn find_tool(tool: &str) -> Option<PathBuf> {
    which::which(tool).ok().or_else(|| {
        ["/usr/sbin", "/sbin", "/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.is_file())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_host_nightly_not_a_dated_one() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
                    nightly-2026-05-19-x86_64-unknown-linux-gnu\n";
        assert!(!has_toolchain(list, "nightly"));
        let list = format!("{list}nightly-x86_64-unknown-linux-gnu\n");
        assert!(has_toolchain(&list, "nightly"));
        assert!(has_toolchain("nightly\n", "nightly"));
        assert!(!has_toolchain("nightlyish-x86_64\n", "nightly"));
    }

    #[test]
    fn reads_llvm_major_from_version_text() {
        assert_eq!(llvm_major_in("bpf-linker 0.13.0"), None);
        assert_eq!(
            llvm_major_in("bpf-linker 0.14.0 (LLVM 22.1.0)").as_deref(),
            Some("22")
        );
        assert_eq!(
            llvm_major_in("bpf-linker 1.0\nLLVM version 21.1.8").as_deref(),
            Some("21")
        );
    }
}
