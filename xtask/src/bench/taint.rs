//! The secrets rule's hold on a tree after a first read (`guard-bench taint-window`): a tagged
//! process reads a new file and connects until allowed, against a daemon whose policy denies
//! tainted trees and that sees reads (the fallback tier's read tracepoints are turned on). The
//! window is the scan's round trip: the kernel's report, the daemon's scan, its answer.

use std::{ffi::OsString, path::Path, time::Duration};

use anyhow::{Context as _, Result};

use super::{
    json::Json,
    stats::{Summary, duration_ns},
    workloads::{Launcher, field, run_with_timeout},
};

pub struct TaintWindow {
    /// The timed open of each new file (a tagged first read).
    pub first_open_ns: Vec<f64>,
    /// From the end of the read to the first allowed connect.
    pub window_ns: Vec<f64>,
    /// Connects denied while pending, over all samples.
    pub denied: u64,
}

pub fn measure(launcher: &Launcher<'_>, dir: &Path, samples: u64) -> Result<TaintWindow> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let cmd = launcher.command(vec![
        "taint-window".into(),
        samples.to_string().into(),
        OsString::from(dir),
    ]);
    let out = run_with_timeout(cmd, Duration::from_secs(120))?;
    let list = |k: &str| -> Vec<f64> {
        field(&out.stdout, k)
            .unwrap_or("")
            .split(',')
            .filter_map(|s| s.parse().ok())
            .collect()
    };
    let w = TaintWindow {
        first_open_ns: list("first_open_ns"),
        window_ns: list("window_ns"),
        denied: field(&out.stdout, "denied")
            .and_then(|v| v.parse().ok())
            .context("no denied= in guard-bench's output")?,
    };
    anyhow::ensure!(!w.window_ns.is_empty(), "no samples: {}", out.stdout);
    Ok(w)
}

pub fn text(w: &Result<TaintWindow, String>) -> String {
    let w = match w {
        Ok(w) => w,
        Err(why) => return format!("secrets rule hold after a first read: not measured: {why}\n"),
    };
    let (Some(open), Some(win)) = (Summary::of(&w.first_open_ns), Summary::of(&w.window_ns)) else {
        return "secrets rule hold after a first read: no samples\n".into();
    };
    format!(
        "secrets rule hold after a first read (read → connect allowed; the scan's round trip): \
         median {}, max {} ({} samples, {} connects denied meanwhile); a tagged first open: \
         median {}\n",
        duration_ns(win.median),
        duration_ns(win.max),
        win.n,
        w.denied,
        duration_ns(open.median),
    )
}

pub fn json(w: &Result<TaintWindow, String>) -> Json {
    match w {
        Err(why) => Json::obj().with("error", why.as_str()),
        Ok(w) => {
            let mut j = Json::obj()
                .with(
                    "what",
                    "a tagged process reads a new file (no secret) and connects to a loopback \
                     listener until allowed; the secrets rule denies while the file's scan is \
                     pending",
                )
                .with("denied_while_pending", w.denied);
            if let Some(s) = Summary::of(&w.window_ns) {
                j.set("window", s.json_ns(&w.window_ns));
            }
            if let Some(s) = Summary::of(&w.first_open_ns) {
                j.set("first_open", s.json_ns(&w.first_open_ns));
            }
            j
        }
    }
}
