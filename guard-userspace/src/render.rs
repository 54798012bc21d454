//! Human output of the CLI: tables and trees.

use std::{collections::BTreeMap, fmt::Write as _};

use crate::{api::DaemonStatus, tags::TaggedProc};

/// Tagged processes as trees, one per agent root.
pub fn ps_tree(procs: &[TaggedProc]) -> String {
    let mut out = String::new();
    if procs.is_empty() {
        out.push_str("no tagged processes\n");
        return out;
    }
    let mut roots: BTreeMap<(u64, u32), Vec<&TaggedProc>> = BTreeMap::new();
    for p in procs {
        roots
            .entry((p.root_start_ns, p.root_pid))
            .or_default()
            .push(p);
    }
    for ((start, root), members) in roots {
        let agent = members.first().map_or("?", |p| p.agent.as_str());
        let why = members
            .iter()
            .find(|p| (p.pid == root || root == 0) && !p.recognised.is_empty())
            .map(|p| format!("  recognised by {}", p.recognised))
            .unwrap_or_default();
        let held = if members.iter().any(|p| p.held) {
            "  FROZEN (guard thaw)"
        } else {
            ""
        };
        let _ = writeln!(
            out,
            "{agent}  root {root}  started {:.2}s after boot  ({} processes){why}{held}",
            start as f64 / 1e9,
            members.len()
        );
        let pids: std::collections::HashSet<u32> = members.iter().map(|p| p.pid).collect();
        // Top of the tree: the root, or members whose parent is not tagged (reparented).
        let mut tops: Vec<&&TaggedProc> = members
            .iter()
            .filter(|p| p.pid == root || !pids.contains(&p.ppid))
            .collect();
        tops.sort_by_key(|p| (p.pid != root, p.start_ns));
        for top in tops {
            walk(&mut out, top, &members, 1);
        }
    }
    out
}

fn walk(out: &mut String, p: &TaggedProc, all: &[&TaggedProc], depth: usize) {
    let cmd = if p.argv.is_empty() {
        format!("[{}]", p.comm)
    } else {
        p.argv.join(" ")
    };
    let _ = writeln!(
        out,
        "{:indent$}{} {}  {}",
        "",
        p.pid,
        p.exe.as_deref().unwrap_or("-"),
        cmd,
        indent = depth * 2
    );
    if depth > 64 {
        return;
    }
    for c in all.iter().filter(|c| c.ppid == p.pid && c.pid != p.pid) {
        walk(out, c, all, depth + 1);
    }
}

pub fn status(st: &DaemonStatus, color: bool) -> String {
    let mut out = String::new();
    let yes = |b: bool| match (b, color) {
        (true, true) => "\x1b[32menforcing\x1b[0m",
        (true, false) => "enforcing",
        (false, true) => "\x1b[31mNOT ENFORCING\x1b[0m",
        (false, false) => "NOT ENFORCING",
    };
    let _ = writeln!(
        out,
        "daemon       pid {}  {}",
        st.daemon_pid,
        yes(st.enforcing)
    );
    let _ = writeln!(out, "tier         {}", st.tier);
    if !st.view.view.is_empty() {
        let _ = writeln!(out, "view         {}: {}", st.view.view, st.view.detail);
    }
    let _ = writeln!(
        out,
        "policy       {} (generation {})",
        st.policy, st.policy_generation
    );
    if let Some(why) = &st.policy_rejected {
        let _ = writeln!(out, "rejected     {why}");
    }
    let _ = writeln!(out, "trackers     {}", st.trackers.join(", "));
    let n = &st.network;
    if !n.tier.is_empty() {
        let _ = writeln!(out, "network      {}: {}", n.tier, n.programs.join(", "));
        let _ = writeln!(out, "  unix sockets  {}", n.unix);
        let _ = writeln!(out, "  raw sockets   {}", n.raw_sockets);
        let _ = writeln!(out, "  after NAT     {}", n.after_nat);
        let _ = writeln!(out, "  kill          {}", n.kill);
    }
    let _ = writeln!(out, "tagged       {} processes", st.tagged_processes);
    if let Some(n) = &st.notify {
        let _ = writeln!(
            out,
            "webhook      {} ({}, {}): {} delivered, {} failed, {} dropped, {} pending",
            n.url,
            n.format,
            if n.signed { "signed" } else { "unsigned" },
            n.delivered,
            n.failed,
            n.dropped,
            n.pending
        );
        if let Some(e) = &n.last_error {
            let _ = writeln!(out, "  last error  {e}");
        }
    }
    if st.held_trees > 0 {
        let _ = writeln!(
            out,
            "frozen       {} agent trees (guard ps shows them; guard thaw ROOT)",
            st.held_trees
        );
    }
    if let Some(t) = &st.tag_map {
        let _ = writeln!(
            out,
            "  tag map     {} of {} entries used; when full, {}",
            t.used, t.size, t.when_full
        );
        if let Some(w) = &t.warning {
            let _ = writeln!(out, "  warning     {w}");
        }
    }
    if !st.secret_reads.is_empty() {
        let _ = writeln!(
            out,
            "secrets      command lines are redacted; files agents read: {}",
            st.secret_reads
        );
    }
    if !st.secret_taint.is_empty() {
        let _ = writeln!(out, "  taint       {}", st.secret_taint);
    }
    if let Some(r) = &st.recognition {
        let _ = writeln!(
            out,
            "recognition  {} agents: {} executables, {} scripts, {} environment markers, {} \
             install paths ({} files and directories now)",
            r.agents, r.executables, r.scripts, r.env_markers, r.paths, r.paths_resolved
        );
        for c in &r.cgroups_matched {
            let _ = writeln!(out, "  cgroup      {c} (everything in it is the agent)");
        }
        for m in &r.paths_missing {
            let _ = writeln!(out, "  missing     {m} (no agent installed there yet)");
        }
        if r.containers > 0 {
            let _ = writeln!(
                out,
                "  containers  {} selectors; metadata: {}",
                r.containers, r.container_metadata
            );
        }
        let _ = writeln!(out, "  env scan    {}", r.env_scan);
        let _ = writeln!(out, "  IDE agents  {}", r.ide_agents);
        for n in &r.not_covered {
            let _ = writeln!(out, "  not covered {n}");
        }
    }
    if let Some(d) = &st.deputies {
        let _ = writeln!(out, "deputies     built-in rules ({})", d.discovery);
        for r in &d.rules {
            let _ = writeln!(
                out,
                "  {:30} {:16} ({}) {}: {}",
                r.name, r.state, r.set_by, r.covers, r.mechanism
            );
        }
        for (kind, list) in &d.found {
            for f in list {
                let _ = writeln!(out, "  found       {kind}: {f}");
            }
        }
        for f in &d.forwarders {
            let _ = writeln!(out, "  forwarder   {f}");
        }
        for n in &d.not_covered {
            let _ = writeln!(out, "  not covered {n}");
        }
    }
    for e in &st.internal_errors {
        let _ = writeln!(
            out,
            "on error     {:<22} {} ({}); {} so far ({})",
            e.hooks, e.on_error, e.effect, e.count, e.counter
        );
    }
    for (name, value) in &st.counters {
        let _ = writeln!(out, "counter      {name:<20} {value}");
    }
    if let Some(features) = st.probe.get("features").and_then(|f| f.as_array()) {
        let _ = writeln!(out, "kernel features:");
        for f in features {
            let s = |k: &str| f.get(k).and_then(|v| v.as_str()).unwrap_or("").to_string();
            let _ = writeln!(
                out,
                "  {:<24} {:<10} {}",
                s("name"),
                s("status"),
                s("detail")
            );
        }
    }
    if let Some(sp) = &st.self_protection {
        let _ = writeln!(
            out,
            "self-protection  hooks: {}; pins held: {}; own files: {} (path rules below)",
            if sp.hooks.is_empty() {
                "none".to_string()
            } else {
                sp.hooks.join(", ")
            },
            sp.pins_held,
            sp.internal_rules.join(", ")
        );
        if !sp.bpf.is_empty() {
            let _ = writeln!(out, "  bpf()       {}", sp.bpf);
        }
        if !sp.policy_changes.is_empty() {
            let _ = writeln!(out, "  policy file changes {}", sp.policy_changes);
        }
        if let Some(e) = &sp.error {
            let _ = writeln!(out, "  NOT ATTACHED: {e}");
        }
    }
    out.push_str(&crate::files::status::render(&st.path_rules));
    for p in &st.problems {
        let _ = writeln!(out, "PROBLEM      {p}");
    }
    for dir in &st.other_instances {
        let _ = writeln!(
            out,
            "WARNING      another guard instance is loaded (pins at {dir}): its programs run \
             too; `guard daemon --uninstall --pin-dir {dir}` removes it once it is stopped"
        );
    }
    out
}

/// `guard secrets scan`'s table: each finding, then what was read and how fast.
pub fn secrets_report(r: &crate::secrets::walk::Report, key_note: &str) -> String {
    let mut out = String::new();
    for f in &r.findings {
        let _ = writeln!(
            out,
            "{}:{}  {}  {}",
            f.path.display(),
            f.line,
            f.detector,
            f.fingerprint
        );
    }
    let _ = writeln!(
        out,
        "scanned {} files, {:.1} MB in {:.2} s ({:.1} MB/s, {:.0} files/s); skipped {} binary; \
         {} truncated at {} MiB; {} unreadable",
        r.files,
        r.bytes as f64 / 1e6,
        r.seconds,
        r.mb_per_s,
        r.files_per_s,
        r.binary,
        r.truncated,
        crate::secrets::file::MAX_BYTES >> 20,
        r.unreadable
    );
    let by: Vec<String> = r
        .by_detector
        .iter()
        .map(|(d, n)| format!("{d} {n}"))
        .collect();
    let _ = writeln!(
        out,
        "findings: {}",
        if by.is_empty() {
            "none".to_owned()
        } else {
            by.join(", ")
        }
    );
    let _ = writeln!(out, "fingerprints: {key_note}");
    out
}

/// `guard requests`: a line per request, then the command that asked and its ancestry.
pub fn requests_table(list: &[crate::requests::Request]) -> String {
    use crate::requests::State;
    let mut out = String::new();
    if list.is_empty() {
        out.push_str("no requests\n");
        return out;
    }
    let _ = writeln!(
        out,
        "{:>4}  {:<9} {:<14} {:>7} {:<16} {:<20} DESTINATION",
        "ID", "STATE", "AGENT", "ROOT", "PROCESS", "RULE"
    );
    for r in list {
        let (state, dest) = match &r.state {
            State::Open => ("open", r.destination.clone()),
            State::Approved { until, scope, .. } => (
                "approved",
                format!(
                    "{}  (approved for the {} until {until})",
                    r.destination,
                    scope.name()
                ),
            ),
        };
        let _ = writeln!(
            out,
            "{:>4}  {:<9} {:<14} {:>7} {:<16} {:<20} {dest}",
            r.id,
            state,
            r.agent,
            r.root_pid,
            format!("{} {}", r.pid, r.comm),
            r.rule,
        );
        if !r.argv.is_empty() {
            let _ = writeln!(
                out,
                "      $ {}",
                crate::respond::sanitize(&r.argv.join(" "))
            );
        }
        if !r.ancestry.is_empty() {
            let chain: Vec<String> = r
                .ancestry
                .iter()
                .map(|a| {
                    let root = if a.agent_root { " (agent root)" } else { "" };
                    format!("{} {}{root}", a.pid, crate::respond::sanitize(&a.comm))
                })
                .collect();
            let _ = writeln!(out, "      from {}", chain.join(" < "));
        }
    }
    out
}
