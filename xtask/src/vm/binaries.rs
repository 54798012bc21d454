//! The static binaries that go into the guest: `guard` and the integration-test binaries of
//! `guard-tests` (plus its helper bins), built for `x86_64-unknown-linux-musl`. The eBPF object
//! is built by guard-userspace/build.rs for bpfel-unknown-none whatever the host target is.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{Context as _, Result, bail};

use crate::util;

/// The Rust target whose binaries are fully static (musl's libc is linked in).
pub const MUSL: &str = "x86_64-unknown-linux-musl";

/// What the build produced.
pub struct Binaries {
    pub guard: PathBuf,
    /// Integration-test binaries by test-file name (`tests/tests/NAME.rs`).
    pub tests: Vec<(String, PathBuf)>,
    /// guard-tests' helper bins; tests find them through `CARGO_BIN_EXE_*`, an absolute path
    /// fixed at compile time, so the guest holds them at exactly that path.
    pub helpers: Vec<PathBuf>,
    /// A static `true` (see `layout.rs`).
    pub static_true: PathBuf,
}

/// `rustup target add` the musl target when it is missing.
pub fn ensure_musl_target() -> Result<String> {
    let out = util::output(
        Command::new("rustup").args(["target", "list", "--installed"]),
        "install rustup (https://rustup.rs)",
    )?;
    if String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == MUSL)
    {
        return Ok(format!("ok ({MUSL} already installed)"));
    }
    util::run(
        Command::new("rustup").args(["target", "add", MUSL]),
        "check network access to static.rust-lang.org",
    )?;
    Ok(format!("added {MUSL}"))
}

/// Build the static guard binary for the musl target; returns its path. Shared by the VM
/// guests and the container image (`cargo xtask image`), so both use the same build.
pub fn build_guard(release: bool) -> Result<PathBuf> {
    let profile = if release { "release" } else { "debug" };
    let mut cmd = util::cargo();
    cmd.args([
        "build",
        "-p",
        "guard-userspace",
        "--bin",
        "guard",
        "--target",
        MUSL,
    ]);
    if release {
        cmd.arg("--release");
    }
    util::run(
        &mut cmd,
        "fix the compiler errors above; for eBPF build errors check `cargo xtask setup`",
    )
    .context("building the static guard binary failed")?;
    let guard = util::target_dir().join(MUSL).join(profile).join("guard");
    if !guard.is_file() {
        bail!("cargo succeeded but {} does not exist", guard.display());
    }
    Ok(guard)
}

/// Build guard and the integration tests for the musl target.
pub fn build(release: bool) -> Result<Binaries> {
    let guard = build_guard(release)?;

    let mut cmd = util::cargo();
    cmd.args([
        "test",
        "--no-run",
        "-p",
        "guard-tests",
        "--target",
        MUSL,
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    if release {
        cmd.arg("--release");
    }
    let shown = util::show(&cmd);
    let out = cmd
        .spawn()
        .and_then(std::process::Child::wait_with_output)
        .with_context(|| format!("cannot start `{shown}`"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({})\n  what to do: fix the errors above",
            out.status
        );
    }
    let mut tests = Vec::new();
    let mut helpers = Vec::new();
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        match Artifact::parse(line) {
            Some(a) if a.kind == "test" => tests.push((a.name, a.executable)),
            Some(a) if a.kind == "bin" && !a.test_profile => helpers.push(a.executable),
            _ => {}
        }
    }
    tests.sort();
    if tests.is_empty() {
        bail!("`{shown}` built no integration-test binary");
    }
    Ok(Binaries {
        guard,
        tests,
        helpers,
        static_true: static_true()?,
    })
}

/// `true` as a static musl program, built once into the target dir.
fn static_true() -> Result<PathBuf> {
    let dir = util::target_dir().join("vm");
    let out = dir.join("true");
    if out.is_file() {
        return Ok(out);
    }
    std::fs::create_dir_all(&dir)?;
    let src = dir.join("true.rs");
    std::fs::write(&src, "fn main() {}\n")?;
    util::run(
        Command::new("rustc")
            .args(["--edition", "2021", "--target", MUSL, "-C", "opt-level=s"])
            .args(["-C", "panic=abort", "-C", "strip=symbols", "-o"])
            .arg(&out)
            .arg(&src),
        "check that the musl target is installed (rustup target add x86_64-unknown-linux-musl)",
    )?;
    Ok(out)
}

/// The names of the tests in a libtest binary (`--list --format terse`; runs on the host).
pub fn list_tests(binary: &Path) -> Result<Vec<String>> {
    let out = util::output(
        Command::new(binary).args(["--list", "--format", "terse"]),
        "the test binary must run on the host to list its tests",
    )?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_owned)
        .collect())
}

/// The fields of one cargo `compiler-artifact` message we need, for guard-tests only.
#[derive(Debug, PartialEq, Eq)]
struct Artifact {
    kind: String,
    name: String,
    test_profile: bool,
    executable: PathBuf,
}

impl Artifact {
    /// Cargo writes one JSON object a line; xtask has no JSON dependency, and these fields
    /// are plain strings and booleans in a fixed, documented layout.
    fn parse(line: &str) -> Option<Self> {
        if json_str(line, "reason")? != "compiler-artifact"
            || !json_str(line, "package_id")?.contains("#guard-tests@")
        {
            return None;
        }
        let target = &line[line.find("\"target\":{")?..];
        let kind = target.find("\"kind\":[\"").map(|i| &target[i + 9..])?;
        let kind = kind[..kind.find('"')?].to_owned();
        let profile = &line[line.find("\"profile\":{")?..];
        let test_profile = profile[..profile.find('}')?].contains("\"test\":true");
        Some(Self {
            kind,
            name: json_str(target, "name")?,
            test_profile,
            executable: PathBuf::from(json_str(line, "executable")?),
        })
    }
}

/// The first string value of `"key":"…"` in `text`, with `\"` and `\\` unescaped.
fn json_str(text: &str, key: &str) -> Option<String> {
    let start = text.find(&format!("\"{key}\":\""))? + key.len() + 4;
    let mut out = String::new();
    let mut chars = text[start..].chars();
    while let Some(c) = chars.next() {
        match c {
            '"' => return Some(out),
            '\\' => out.push(chars.next()?),
            c => out.push(c),
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEST: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/tests#guard-tests@0.1.0","manifest_path":"/w/tests/Cargo.toml","target":{"kind":["test"],"crate_types":["bin"],"name":"tagging","src_path":"/w/tests/tests/tagging.rs","edition":"2024","doc":false,"doctest":false,"test":true},"profile":{"opt_level":"0","debuginfo":2,"debug_assertions":true,"overflow_checks":true,"test":true},"features":[],"filenames":["/t/deps/tagging-d31"],"executable":"/t/deps/tagging-d31","fresh":false}"#;

    #[test]
    fn reads_test_and_helper_artifacts() {
        let a = Artifact::parse(TEST).unwrap();
        assert_eq!(
            a,
            Artifact {
                kind: "test".into(),
                name: "tagging".into(),
                test_profile: true,
                executable: "/t/deps/tagging-d31".into(),
            }
        );
        let bin = TEST
            .replace(r#""kind":["test"]"#, r#""kind":["bin"]"#)
            .replace(r#""overflow_checks":true,"test":true"#, r#""test":false"#);
        let b = Artifact::parse(&bin).unwrap();
        assert_eq!((b.kind.as_str(), b.test_profile), ("bin", false));
    }

    #[test]
    fn ignores_other_packages_and_null_executables() {
        assert!(Artifact::parse(&TEST.replace("#guard-tests@", "#cfg-if@")).is_none());
        let lib = TEST.replace(
            r#""executable":"/t/deps/tagging-d31""#,
            r#""executable":null"#,
        );
        assert!(Artifact::parse(&lib).is_none());
        assert_eq!(json_str(r#"{"a":"x\"y"}"#, "a").as_deref(), Some("x\"y"));
    }
}
