//! What guard's programs cost per operation, from the kernel's own accounting: with
//! `kernel.bpf_stats_enabled=1`, every program's run count and run time, read from `guard
//! status` before and after one run of each workload, untagged and tagged. Unlike the ratios,
//! this does not drown in the noise of a shared 2-vCPU machine; it leaves out what the hooks
//! cost the kernel around the programs (the socket lock of a cgroup sendmsg hook, fanotify).

use std::{collections::BTreeMap, fs};

use anyhow::{Context as _, Result};

use super::{
    daemon::Daemon,
    json::Json,
    stats::round1,
    workloads::{self, Fixtures, Launcher, Workload},
};

const STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// Turns `kernel.bpf_stats_enabled` on, and back to what it was on drop.
struct StatsOn(String);

impl StatsOn {
    fn new() -> Result<Self> {
        let was = fs::read_to_string(STATS).with_context(|| format!("reading {STATS}"))?;
        fs::write(STATS, "1").with_context(|| format!("writing {STATS}"))?;
        Ok(Self(was.trim().to_owned()))
    }
}

impl Drop for StatsOn {
    fn drop(&mut self) {
        let _ = fs::write(STATS, &self.0);
    }
}

/// One workload, untagged or tagged: guard's programs' time per operation, in total and by
/// program.
pub struct Row {
    pub workload: Workload,
    pub tagged: bool,
    pub ns_per_op: f64,
    pub by_program: Vec<(String, f64)>,
}

/// `(runs, run_ns)` by program name, from `guard status`.
fn snapshot(d: &Daemon) -> BTreeMap<String, (f64, f64)> {
    let Some(st) = d.status() else {
        return BTreeMap::new();
    };
    st.get("programs")
        .and_then(Json::as_array)
        .unwrap_or_default()
        .iter()
        .filter_map(|p| {
            let name = p.get("name")?.as_str()?.to_owned();
            let runs = p.get("runs")?.as_f64()?;
            let ns = p.get("run_ns")?.as_f64()?;
            Some((name, (runs, ns)))
        })
        .collect()
}

/// Run every system-call workload once untagged and once tagged under `daemon`.
pub fn measure(
    daemon: &Daemon,
    untagged: &Launcher<'_>,
    tagged: &Launcher<'_>,
    fx: &Fixtures,
    iters: &BTreeMap<Workload, u64>,
) -> Result<Vec<Row>> {
    let _on = StatsOn::new()?;
    let mut rows = Vec::new();
    for w in workloads::ALL.into_iter().filter(|w| !w.is_job()) {
        for (is_tagged, launcher) in [(false, untagged), (true, tagged)] {
            let n = iters[&w];
            let before = snapshot(daemon);
            launcher
                .run(w, fx, n)
                .with_context(|| format!("{} with bpf_stats", w.name()))?;
            let after = snapshot(daemon);
            let mut by_program: Vec<(String, f64)> = after
                .iter()
                .map(|(name, (_, ns))| {
                    let was = before.get(name).map_or(0.0, |(_, b)| *b);
                    (name.clone(), (ns - was) / n as f64)
                })
                .filter(|(_, per_op)| *per_op > 0.05)
                .collect();
            by_program.sort_by(|a, b| b.1.total_cmp(&a.1));
            rows.push(Row {
                workload: w,
                tagged: is_tagged,
                ns_per_op: by_program.iter().map(|(_, v)| v).sum(),
                by_program,
            });
        }
    }
    Ok(rows)
}

pub fn json(rows: &Result<Vec<Row>, String>) -> Json {
    match rows {
        Ok(rows) => Json::obj()
            .with(
                "what",
                "guard's eBPF programs' run time per operation (kernel.bpf_stats_enabled), \
                 1,000-rule policy, one run of each workload untagged and tagged",
            )
            .with(
                "rows",
                Json::Arr(
                    rows.iter()
                        .map(|r| {
                            Json::obj()
                                .with("workload", r.workload.name())
                                .with("tagged", r.tagged)
                                .with("ns_per_op", round1(r.ns_per_op))
                                .with(
                                    "by_program",
                                    Json::Arr(
                                        r.by_program
                                            .iter()
                                            .map(|(p, v)| {
                                                Json::obj()
                                                    .with("program", p.as_str())
                                                    .with("ns_per_op", round1(*v))
                                            })
                                            .collect(),
                                    ),
                                )
                        })
                        .collect(),
                ),
            ),
        Err(why) => Json::obj()
            .with("available", false)
            .with("reason", why.as_str()),
    }
}

/// Lines for the text report.
pub fn text(rows: &Result<Vec<Row>, String>) -> String {
    let mut out = String::from("guard's programs per operation (bpf_stats, 1,000 rules):\n");
    match rows {
        Ok(rows) => {
            for r in rows {
                let top: Vec<String> = r
                    .by_program
                    .iter()
                    .take(3)
                    .map(|(p, v)| format!("{p} {v:.1}"))
                    .collect();
                out.push_str(&format!(
                    "  {:<14} {:<8} {:>7.1} ns/op  ({})\n",
                    r.workload.name(),
                    if r.tagged { "tagged" } else { "untagged" },
                    r.ns_per_op,
                    if top.is_empty() {
                        "no guard program ran".to_owned()
                    } else {
                        top.join(", ")
                    }
                ));
            }
        }
        Err(why) => out.push_str(&format!("  not measured: {why}\n")),
    }
    out
}
