//! The end of a `vm-test` run: the output of every failed step, a test × boot matrix, what
//! could not run in the guest, and one line per boot.

use super::{
    Run,
    init::{Plan, Step},
};
use crate::util;

/// Print failures and the test × boot matrix; returns the number of failures.
pub fn print(plan: &Plan, not_run: &[(String, &str)], runs: &[Run]) -> usize {
    let mut failed = 0;
    for run in runs {
        for r in &run.outcome.results {
            if r.passed && r.output.is_empty() {
                continue;
            }
            let what = if r.passed {
                "output".to_owned()
            } else {
                format!("FAILED: {}", r.why)
            };
            println!("\n---- [{}] {} {what} ----", run.label, r.id);
            for line in &r.output {
                println!("  {line}");
            }
        }
    }
    let ids: Vec<&str> = plan
        .steps
        .iter()
        .map(|s| match s {
            Step::Check { id, .. } | Step::Shell { id, .. } | Step::Test { id, .. } => id.as_str(),
        })
        .collect();
    let width = ids.iter().map(|i| i.len()).max().unwrap_or(10).max(10);
    println!("\n== vm-test results ==");
    print!("{:width$}", "test");
    for run in runs {
        print!("  {:<15}", run.label);
    }
    println!();
    for id in &ids {
        print!("{id:width$}");
        for run in runs {
            let cell = match run.outcome.results.iter().find(|r| r.id == *id) {
                Some(r) if r.passed && r.notes.is_empty() => {
                    format!("pass {:.1}s", r.millis as f64 / 1e3)
                }
                Some(r) if r.passed => format!("pass* {:.1}s", r.millis as f64 / 1e3),
                Some(r) => {
                    failed += 1;
                    format!("FAIL {:.1}s", r.millis as f64 / 1e3)
                }
                None if run.left_out.iter().any(|(l, _)| l == id) => "left out".to_owned(),
                None => {
                    failed += 1;
                    "NOT REPORTED".to_owned()
                }
            };
            print!("  {cell:<15}");
        }
        println!();
    }
    for (id, why) in not_run {
        println!("{id:width$}  not run in the guest: {why}");
    }
    for run in runs {
        for (id, why) in &run.left_out {
            println!(
                "[{}] {id}: left out of this boot's smoke plan: {why}",
                run.label
            );
        }
    }
    let noted: Vec<String> = runs
        .iter()
        .flat_map(|run| {
            run.outcome
                .results
                .iter()
                .filter(|r| !r.notes.is_empty())
                .map(move |r| format!("  [{}] {}: {}", run.label, r.id, r.notes.join("; ")))
        })
        .collect();
    if !noted.is_empty() {
        println!("* printed SKIPPED or NOT RUN (shown for every test that did, passed or not):");
        for n in noted {
            println!("{n}");
        }
    }
    println!();
    for run in runs {
        let o = &run.outcome;
        let passed = o.results.iter().filter(|r| r.passed).count();
        println!(
            "{:<15} kernel {}, lsm={}, boot {}, {passed}/{} passed{}, {}{}",
            run.label,
            o.release.as_deref().unwrap_or("?"),
            o.lsm.as_deref().unwrap_or("?"),
            o.boot.map_or("-".to_owned(), util::secs),
            ids.len() - run.left_out.len(),
            if run.left_out.is_empty() {
                String::new()
            } else {
                format!(" ({} left out)", run.left_out.len())
            },
            util::secs(o.total),
            o.error
                .as_ref()
                .map_or(String::new(), |e| format!(" — {e}"))
        );
        if o.error.is_some() {
            failed += 1;
        }
    }
    failed
}
