//! The secret scanner over a real source tree (the cargo registry's sources on this machine):
//! throughput, CPU, and every finding by file and detector, so false positives are named.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result, bail};

use super::json::Json;

/// Runs over the same tree: the first may read from disk, the rest from the page cache.
const RUNS: usize = 3;

pub struct SecretScan {
    pub root: PathBuf,
    /// `(files, bytes, wall seconds, CPU seconds)` per run.
    pub runs: Vec<(u64, u64, f64, f64)>,
    pub binary: u64,
    pub by_detector: Vec<(String, u64)>,
    /// `path:line detector` of every finding of the last run.
    pub findings: Vec<String>,
}

fn registry() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| PathBuf::from("/root/.cargo"))
        .join("registry/src")
}

pub fn measure(guard: &Path) -> Result<SecretScan> {
    let root = registry();
    if !root.is_dir() {
        bail!("{} is not a directory", root.display());
    }
    let mut out = SecretScan {
        root: root.clone(),
        runs: Vec::new(),
        binary: 0,
        by_detector: Vec::new(),
        findings: Vec::new(),
    };
    for _ in 0..RUNS {
        let o = Command::new(guard)
            .args(["secrets", "scan", "-o", "json"])
            .arg(&root)
            .output()
            .context("running guard secrets scan")?;
        if !o.status.success() {
            bail!("guard secrets scan: {}", String::from_utf8_lossy(&o.stderr));
        }
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).context("its JSON")?;
        let n = |k: &str| v[k].as_u64().unwrap_or(0);
        let f = |k: &str| v[k].as_f64().unwrap_or(0.0);
        out.runs
            .push((n("files"), n("bytes"), f("seconds"), f("cpu_seconds")));
        out.binary = n("binary");
        out.by_detector = v["by_detector"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, c)| (k.clone(), c.as_u64().unwrap_or(0)))
            .collect();
        out.findings = v["findings"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|x| {
                let path = x["path"].as_str().unwrap_or("?");
                let short = Path::new(path)
                    .strip_prefix(&root)
                    .map_or(path.into(), |p| {
                        p.components()
                            .skip(1)
                            .collect::<PathBuf>()
                            .display()
                            .to_string()
                    });
                format!(
                    "{short}:{} {}",
                    x["line"],
                    x["detector"].as_str().unwrap_or("?")
                )
            })
            .collect();
    }
    Ok(out)
}

pub fn text(s: &Result<SecretScan, String>) -> String {
    let s = match s {
        Ok(s) => s,
        Err(why) => return format!("secret scan: not measured: {why}\n"),
    };
    let mut out = format!("secret scan over {}:\n", s.root.display());
    for (i, (files, bytes, wall, cpu)) in s.runs.iter().enumerate() {
        out.push_str(&format!(
            "  run {}: {files} files, {:.1} MB in {wall:.2} s wall, {cpu:.2} s CPU: {:.1} MB/s, \
             {:.0} files/s (per CPU second: {:.1} MB, {:.0} files)\n",
            i + 1,
            *bytes as f64 / 1e6,
            *bytes as f64 / 1e6 / wall.max(1e-9),
            *files as f64 / wall.max(1e-9),
            *bytes as f64 / 1e6 / cpu.max(1e-9),
            *files as f64 / cpu.max(1e-9),
        ));
    }
    let by: Vec<String> = s
        .by_detector
        .iter()
        .map(|(d, n)| format!("{d} {n}"))
        .collect();
    out.push_str(&format!(
        "  {} binary files skipped; findings: {}\n",
        s.binary,
        if by.is_empty() {
            "none".into()
        } else {
            by.join(", ")
        }
    ));
    for f in &s.findings {
        out.push_str(&format!("    {f}\n"));
    }
    out
}

pub fn json(s: &Result<SecretScan, String>) -> Json {
    match s {
        Err(why) => Json::obj().with("error", why.as_str()),
        Ok(s) => Json::obj()
            .with("root", s.root.display().to_string())
            .with(
                "runs",
                Json::Arr(
                    s.runs
                        .iter()
                        .map(|(files, bytes, wall, cpu)| {
                            Json::obj()
                                .with("files", *files)
                                .with("bytes", *bytes)
                                .with("wall_secs", *wall)
                                .with("cpu_secs", *cpu)
                        })
                        .collect(),
                ),
            )
            .with("binary_skipped", s.binary)
            .with(
                "by_detector",
                Json::Arr(
                    s.by_detector
                        .iter()
                        .map(|(d, n)| Json::obj().with("detector", d.as_str()).with("count", *n))
                        .collect(),
                ),
            )
            .with(
                "findings",
                Json::Arr(s.findings.iter().map(|f| Json::from(f.as_str())).collect()),
            ),
    }
}
