//! Small helpers shared by the xtask subcommands: running commands with useful errors, finding
//! the workspace and its target directory, and knowing whether we are root.

use std::{
    env,
    ffi::OsStr,
    path::{Path, PathBuf},
    process::{Command, Output},
};

use anyhow::{Context as _, Result, bail};

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// The cargo target directory the inner `cargo build` writes to: `$CARGO_TARGET_DIR`,
/// `$CARGO_BUILD_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    let root = workspace_root();
    for var in ["CARGO_TARGET_DIR", "CARGO_BUILD_TARGET_DIR"] {
        if let Some(dir) = env::var_os(var).filter(|d| !d.is_empty()) {
            let dir = PathBuf::from(dir);
            return if dir.is_absolute() {
                dir
            } else {
                env::current_dir().unwrap_or(root).join(dir)
            };
        }
    }
    root.join("target")
}

/// The `guard` binary for a profile.
pub fn guard_bin(release: bool) -> PathBuf {
    target_dir()
        .join(if release { "release" } else { "debug" })
        .join("guard")
}

/// A `cargo` command running in the workspace root (the rustup proxy, so that
/// `RUSTUP_TOOLCHAIN` set by the outer `cargo xtask` keeps applying).
pub fn cargo() -> Command {
    let mut cmd = Command::new("cargo");
    cmd.current_dir(workspace_root());
    cmd
}

/// Whether the effective user id is 0, read from /proc/self/status.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

/// A command as a user could type it again: the environment we set, the program, the args.
pub fn show(cmd: &Command) -> String {
    let mut parts: Vec<String> = cmd
        .get_envs()
        .filter_map(|(k, v)| v.map(|v| format!("{}={}", k.to_string_lossy(), quote(v))))
        .collect();
    parts.push(quote(cmd.get_program()));
    parts.extend(cmd.get_args().map(quote));
    parts.join(" ")
}

fn quote(s: &OsStr) -> String {
    let s = s.to_string_lossy();
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=:@+,%".contains(c))
    {
        s.into_owned()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// Run a command with inherited stdio; fail with the command and `hint` if it does not succeed.
pub fn run(cmd: &mut Command, hint: &str) -> Result<()> {
    let shown = show(cmd);
    let status = cmd
        .status()
        .with_context(|| format!("cannot start `{shown}`\n  what to do: {hint}"))?;
    if !status.success() {
        bail!("`{shown}` failed ({status})\n  what to do: {hint}");
    }
    Ok(())
}

/// Run a command capturing its output; fail (with its stderr) if it does not succeed.
pub fn output(cmd: &mut Command, hint: &str) -> Result<Output> {
    let shown = show(cmd);
    let out = cmd
        .output()
        .with_context(|| format!("cannot start `{shown}`\n  what to do: {hint}"))?;
    if !out.status.success() {
        bail!(
            "`{shown}` failed ({}): {}\n  what to do: {hint}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Seconds with one decimal, for progress lines.
pub fn secs(d: std::time::Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_quotes_what_needs_it() {
        let mut cmd = Command::new("cargo");
        cmd.env("RUSTFLAGS", "-C link-arg=x")
            .args(["install", "bpf-linker@0.13.0", "it's"]);
        assert_eq!(
            show(&cmd),
            r"RUSTFLAGS='-C link-arg=x' cargo install bpf-linker@0.13.0 'it'\''s'"
        );
    }

    #[test]
    fn workspace_root_holds_the_workspace_manifest() {
        assert!(workspace_root().join("Cargo.toml").is_file());
        assert!(workspace_root().join("xtask").is_dir());
    }
}
