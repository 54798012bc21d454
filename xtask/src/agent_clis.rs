//! The agents' real command-line tools, from the npm registry, for the recognition tests:
//! installed under a private prefix in the cache (never globally), at pinned versions, and
//! only when what is there differs.

use std::{
    env, fs,
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context as _, Result};

use crate::util::{self, secs};

/// The packages and the versions the tests were written against.
pub const PACKAGES: &[(&str, &str)] = &[
    ("@anthropic-ai/claude-code", "2.1.332"),
    ("@openai/codex", "0.171.0"),
    ("@google/gemini-cli", "0.61.0"),
];

/// The variable that tells the tests where the tools are.
pub const ENV: &str = "GUARD_AGENT_CLIS";

/// `$GUARD_AGENT_CLIS`, else `$XDG_CACHE_HOME/guard/agent-clis`, else
/// `~/.cache/guard/agent-clis`.
pub fn dir() -> PathBuf {
    if let Some(dir) = env::var_os(ENV).filter(|d| !d.is_empty()) {
        return PathBuf::from(dir);
    }
    env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/var/cache"))
        .join("guard")
        .join("agent-clis")
}

fn installed_version(dir: &Path, package: &str) -> Option<String> {
    let text =
        fs::read_to_string(dir.join("node_modules").join(package).join("package.json")).ok()?;
    let v: serde_json::Value = serde_json::from_str(&text).ok()?;
    v["version"].as_str().map(str::to_owned)
}

/// Install the pinned packages under [`dir`] unless they are there.
pub fn ensure() -> Result<String> {
    let dir = dir();
    let missing: Vec<String> = PACKAGES
        .iter()
        .filter(|(p, v)| installed_version(&dir, p).as_deref() != Some(*v))
        .map(|(p, v)| format!("{p}@{v}"))
        .collect();
    if missing.is_empty() {
        return Ok(format!("ok (already present in {})", dir.display()));
    }
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    println!(
        "[agent clis] installing {} into {}",
        missing.join(" "),
        dir.display()
    );
    let start = Instant::now();
    util::run(
        Command::new("npm")
            .args([
                "install",
                "--no-audit",
                "--no-fund",
                "--loglevel=error",
                "--prefix",
            ])
            .arg(&dir)
            .args(&missing),
        "check network access to registry.npmjs.org (npm comes with node)",
    )
    .context("installing the agents' command-line tools from npm failed")?;
    Ok(format!(
        "installed {} in {}",
        missing.join(" "),
        secs(start.elapsed())
    ))
}
