//! Issue: the audit trail — durable events with ancestry, `guard events`, metrics.
//! Real processes, real programs loaded into the running kernel.

use std::{
    collections::HashMap,
    fs::File,
    io::{Read, Write},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use guard_tests::{Daemon, Proc, alive, free_port, output, read_pid_file, wait_for};
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;

const FLOOD: &str = env!("CARGO_BIN_EXE_guard-flood");

/// `guard events -o json ARGS…`, parsed.
fn events_json(d: &Daemon, args: &[&str]) -> Vec<Value> {
    let out = output({
        let mut c = d.guard();
        c.args(["events", "-o", "json"]).args(args);
        c
    });
    assert!(
        out.status.success(),
        "guard events failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("bad line {l:?}: {e}")))
        .collect()
}

fn of_root(events: &[Value], root: u32) -> Vec<Value> {
    events
        .iter()
        .filter(|e| e["root"]["pid"] == root)
        .cloned()
        .collect()
}

fn kinds_of(events: &[Value], pid: u32) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["process"]["pid"] == pid)
        .map(|e| e["kind"].as_str().unwrap().to_string())
        .collect()
}

fn counter(d: &Daemon, name: &str) -> u64 {
    let st = d.status_json().expect("status");
    st["counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c[0] == name)
        .and_then(|c| c[1].as_u64())
        .unwrap_or_else(|| panic!("no counter {name} in {st}"))
}

fn signal(pid: u32, sig: Signal) {
    kill(Pid::from_raw(pid as i32), sig).expect("signal the daemon");
}

fn ancestry_pids(e: &Value) -> Vec<u64> {
    e["ancestry"]
        .as_array()
        .unwrap_or_else(|| panic!("no ancestry in {e}"))
        .iter()
        .map(|a| a["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn tagged_tree_events_carry_full_ancestry_even_for_processes_gone_before_they_were_read() {
    let d = Daemon::start_with_args(None, &["--lifecycle-events"]);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    let fifo = p.join("go");
    assert!(
        Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap()
            .success()
    );
    let script = format!(
        "read _ < {go}; ( echo $BASHPID > {d}/child; /bin/sh -c 'echo $$ > {d}/grandchild; exit 3'; true ); exit 0",
        go = fifo.display(),
        d = p.display()
    );
    let mut root = d.run_tagged(&["bash", "-c", &script]);
    let root_pid = root.pid();
    wait_for("the root's exec event", Duration::from_secs(10), || {
        d.events()
            .iter()
            .any(|e| e["kind"] == "tagged_exec" && e["process"]["pid"] == root_pid)
            .then_some(())
    });
    // Pause the daemon: the child and grandchild are born, exec and die before a single
    // event about them is read. Their ancestry can only come from the process-tree cache.
    let daemon = d.pid();
    signal(daemon, Signal::SIGSTOP);
    std::fs::write(&fifo, "go\n").unwrap();
    let status = root.wait_timeout(Duration::from_secs(10));
    let child = read_pid_file(&p.join("child"));
    let grandchild = read_pid_file(&p.join("grandchild"));
    assert!(status.success());
    assert!(!alive(child) && !alive(grandchild));
    signal(daemon, Signal::SIGCONT);
    let events = wait_for("the root's exit event", Duration::from_secs(10), || {
        let evs = of_root(&events_json(&d, &["--all"]), root_pid);
        evs.iter()
            .any(|e| e["kind"] == "tagged_exit" && e["process"]["pid"] == root_pid)
            .then_some(evs)
    });

    // Exactly the events of this tree.
    assert_eq!(kinds_of(&events, root_pid), ["tagged_exec", "tagged_exit"]);
    assert_eq!(kinds_of(&events, child), ["tagged_fork", "tagged_exit"]);
    assert_eq!(
        kinds_of(&events, grandchild),
        ["tagged_fork", "tagged_exec", "tagged_exit"]
    );
    assert_eq!(events.len(), 7, "{events:#?}");

    let me = u64::from(std::process::id());
    let expect_chain = |e: &Value, first: &[u64]| {
        let chain = ancestry_pids(e);
        assert_eq!(&chain[..first.len()], first, "ancestry of {e}");
        assert_eq!(chain.last(), Some(&1), "ancestry reaches init: {e}");
        assert_eq!(e["ancestry_complete"], true, "{e}");
    };
    let gc_exec = events
        .iter()
        .find(|e| e["kind"] == "tagged_exec" && e["process"]["pid"] == grandchild)
        .unwrap();
    expect_chain(gc_exec, &[u64::from(child), u64::from(root_pid), me]);
    assert_eq!(gc_exec["process"]["comm"], "sh");
    let parent = &gc_exec["ancestry"][0];
    assert!(
        parent["exe"].as_str().unwrap().ends_with("bash"),
        "{parent}"
    );
    let root_entry = &gc_exec["ancestry"][1];
    assert_eq!(root_entry["agent_root"], true);
    assert!(root_entry["exe"].as_str().unwrap().ends_with("bash"));
    assert_eq!(root_entry["argv"][2], script.as_str());
    assert!(gc_exec["ancestry"][2].get("agent_root").is_none());

    let gc_exit = events
        .iter()
        .find(|e| e["kind"] == "tagged_exit" && e["process"]["pid"] == grandchild)
        .unwrap();
    assert_eq!(gc_exit["exit_code"], 3);
    expect_chain(gc_exit, &[u64::from(child), u64::from(root_pid), me]);
    expect_chain(
        events
            .iter()
            .find(|e| e["kind"] == "tagged_fork" && e["process"]["pid"] == child)
            .unwrap(),
        &[u64::from(root_pid), me],
    );

    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap();
    for e in &events {
        assert_eq!(e["schema"], 2);
        assert_eq!(e["agent"], "guard-run");
        assert_eq!(e["node"], hostname.trim());
        assert_eq!(e["root"]["pid"], root_pid);
        assert_eq!(e["process"]["uid"], 0);
        assert_eq!(e["process"]["user"], "root");
        let t = e["time"].as_str().unwrap();
        assert!(t.ends_with('Z') && t.len() >= 20, "RFC 3339 UTC: {t}");
    }
    let root_exec = &events[0];
    assert_eq!(root_exec["process"]["argv"][0], "bash");
    assert!(root_exec["process"]["cwd"].is_string());
    assert!(root_exec["process"]["cgroup"].is_string());

    // Filters, the table, the summary.
    let exits = events_json(&d, &["--kind", "tagged_exit", "--agent", "guard-run"]);
    assert!(exits.iter().all(|e| e["kind"] == "tagged_exit"));
    assert!(exits.len() >= 3);
    assert_eq!(
        events_json(&d, &["--since", "1h", "--all"]).len(),
        d.events().len()
    );
    assert!(events_json(&d, &["--action", "deny", "--agent", "guard-run"]).is_empty());
    let table = output({
        let mut c = d.guard();
        c.args(["events", "--commands"]);
        c
    });
    assert!(table.status.success());
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.starts_with("TIME "), "{table}");
    assert!(!table.contains('\x1b'), "no colour off a terminal");
    assert!(
        table.contains(&format!("sh({child}) < bash({root_pid})*")),
        "{table}"
    );
    let summary = output({
        let mut c = d.guard();
        c.args(["events", "--summary", "--all", "-o", "json"]);
        c
    });
    let summary: Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert!(summary["by_agent"]["guard-run"].as_u64().unwrap() >= 7);
    let none = output({
        let mut c = d.guard();
        c.args(["events", "--agent", "nobody"]);
        c
    });
    assert!(none.status.success());
    let none = String::from_utf8(none.stdout).unwrap();
    assert!(
        none.starts_with("no events matching agent nobody in "),
        "{none}"
    );
}

/// The log's files: the live one and its rotations.
fn log_files(event_log: &Path) -> Vec<std::path::PathBuf> {
    let dir = event_log.parent().unwrap();
    let name = event_log.file_name().unwrap().to_str().unwrap().to_string();
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n == name
                    || n.strip_prefix(&format!("{name}."))
                        .is_some_and(|i| i.parse::<u32>().is_ok())
            })
        })
        .map(|e| e.path())
        .collect();
    files.sort();
    files
}

/// Bytes of all the log's files.
fn log_bytes(event_log: &Path) -> u64 {
    let dir = event_log.parent().unwrap();
    let name = event_log.file_name().unwrap().to_str().unwrap();
    std::fs::read_dir(dir)
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_str().is_some_and(|n| n.starts_with(name)))
        .map(|e| e.metadata().map(|m| m.len()).unwrap_or(0))
        .sum::<u64>()
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn wait_quiet(d: &Daemon) {
    let mut last = (u64::MAX, Instant::now());
    wait_for("the log to stop growing", Duration::from_secs(180), || {
        let now = log_bytes(&d.event_log);
        if now != last.0 {
            last = (now, Instant::now());
        }
        (last.1.elapsed() > Duration::from_secs(3)).then_some(())
    });
}

fn spawn_flood(d: &Daemon, secs: &str, workers: &str) -> Proc {
    let mut c = d.guard();
    c.args(["run", "--", FLOOD, secs, workers])
        .stdout(Stdio::piped());
    Proc::spawn(c)
}

fn flood_total(p: &mut Proc) -> u64 {
    let mut out = String::new();
    p.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(p.wait_timeout(Duration::from_secs(60)).success());
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("flood said {out:?}"))
}

#[test]
fn flood_every_event_is_logged_or_counted_as_dropped_and_memory_stays_bounded() {
    const WORKERS: u64 = 2;
    // No agent recognised at exec or from /proc: the only tagged tree is the flood's, so the
    // fork counter counts its forks alone.
    let d = Daemon::start_with_args(
        Some(
            "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: { name: flood }\n\
             spec: { agents: [] }\n",
        ),
        &[
            "--log-max-bytes",
            "64MiB",
            "--log-files",
            "100",
            "--lifecycle-events",
        ],
    );
    let dropped_before = counter(&d, "events_dropped");
    let forks_before = counter(&d, "forks_tagged");
    let daemon = d.pid();
    let rss_start = rss_kib(daemon);
    let mut flood = spawn_flood(&d, "10", &WORKERS.to_string());
    let root = flood.pid();
    let started = Instant::now();
    let mut rss_peak = rss_start;
    let mut paused = false;
    // Stop the reader from 2 s into the flood until it ends (8 s, however slow a loaded
    // machine forks) so that the ring buffer overflows for sure.
    while flood.child.try_wait().unwrap().is_none() {
        let t = started.elapsed();
        if !paused && t > Duration::from_secs(2) {
            signal(daemon, Signal::SIGSTOP);
            paused = true;
        }
        rss_peak = rss_peak.max(rss_kib(daemon));
        std::thread::sleep(Duration::from_millis(50));
    }
    signal(daemon, Signal::SIGCONT);
    let forked = flood_total(&mut flood);
    let flood_secs = started.elapsed().as_secs_f64();
    wait_quiet(&d);
    rss_peak = rss_peak.max(rss_kib(daemon));
    let rss_end = rss_kib(daemon);

    let all = events_json(&d, &["--all"]);
    let logged = of_root(&all, root).len() as u64;
    let dropped = counter(&d, "events_dropped") - dropped_before;
    let lost_lines: u64 = all
        .iter()
        .filter(|e| e["kind"] == "events_lost")
        .map(|e| e["lost"].as_u64().unwrap())
        .sum();
    // exec + exit of the root, fork + exit of each worker, fork + exit of each child.
    let attempts = 2 + 2 * WORKERS + 2 * forked;
    let files = log_files(&d.event_log).len();
    eprintln!(
        "flood: {forked} forks in {flood_secs:.1}s ({:.0}/s), {attempts} events: {logged} logged + \
         {dropped} dropped in the kernel (events_lost lines say {lost_lines}); {files} log files; \
         daemon RSS {rss_start} KiB at start, {rss_peak} KiB peak, {rss_end} KiB at end",
        forked as f64 / flood_secs
    );
    assert_eq!(logged + dropped, attempts, "nothing is lost silently");
    assert_eq!(lost_lines, dropped, "every drop is reported in the log");
    assert!(
        dropped > 0,
        "the paused reader must have made the kernel drop events"
    );
    assert_eq!(
        counter(&d, "forks_tagged") - forks_before,
        WORKERS + forked,
        "every fork was tagged"
    );
    assert_eq!(counter(&d, "tag_insert_failed"), 0);
    assert!(
        rss_peak < rss_start + 128 * 1024,
        "daemon memory grew from {rss_start} KiB to {rss_peak} KiB"
    );
}

#[test]
fn sigkill_mid_flood_leaves_only_whole_lines_and_a_restart_resumes() {
    let mut d = Daemon::start_with_args(None, &["--lifecycle-events"]);
    d.keep_pins = true;
    let mut flood = spawn_flood(&d, "5", "2");
    let root = flood.pid();
    wait_for("flood events in the log", Duration::from_secs(10), || {
        (log_bytes(&d.event_log) > 1 << 20).then_some(())
    });
    d.signal_and_reap(Signal::SIGKILL);
    let text = std::fs::read(&d.event_log).unwrap();
    assert_eq!(text.last(), Some(&b'\n'), "the log ends with a whole line");
    let lines: Vec<&[u8]> = text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .collect();
    for l in &lines {
        let v: Value = serde_json::from_slice(l)
            .unwrap_or_else(|e| panic!("torn line {:?}: {e}", String::from_utf8_lossy(l)));
        assert_eq!(v["schema"], 2);
    }
    eprintln!("after SIGKILL: {} whole lines", lines.len());
    let before = lines.len();
    // A new daemon on the same pins resumes reading the pinned ring buffer.
    d.keep_pins = false;
    d.spawn();
    flood_total(&mut flood);
    wait_for(
        "events logged by the new daemon",
        Duration::from_secs(60),
        || {
            let evs = d.events();
            (evs.len() > before && !of_root(&evs[before..], root).is_empty()).then_some(())
        },
    );
}

/// `GET /metrics` over plain HTTP/1.1: (content type, body).
fn scrape(port: u16) -> (String, String) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    s.read_to_string(&mut resp).unwrap();
    let (head, body) = resp.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let ctype = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-type:")
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_default();
    (ctype, body.to_string())
}

/// Prometheus text format: `name{labels} value` → value.
fn parse_metrics(body: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for line in body.lines() {
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_string(), value);
    }
    out
}

#[test]
fn metrics_endpoint_is_scraped_and_parsed() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let d = Daemon::start_with_args(None, &["--metrics-addr", &addr, "--lifecycle-events"]);
    let mut p = d.run_tagged(&["bash", "-c", "/bin/true; /bin/true; exit 0"]);
    let root = p.pid();
    assert!(p.wait_timeout(Duration::from_secs(10)).success());
    wait_for("the events", Duration::from_secs(10), || {
        (of_root(&d.events(), root).len() >= 8).then_some(())
    });
    let (ctype, body) = scrape(port);
    assert!(ctype.starts_with("application/openmetrics-text"), "{ctype}");
    assert!(body.ends_with("# EOF\n"));
    let m = parse_metrics(&body);
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in\n{body}"));
    assert!(get(r#"guard_events_read_total{kind="tagged_fork"}"#) >= 2.0);
    assert!(get(r#"guard_events_read_total{kind="tagged_exec"}"#) >= 3.0);
    assert!(get("guard_events_written_total") >= 8.0);
    assert_eq!(
        get("guard_events_dropped_total"),
        counter(&d, "events_dropped") as f64
    );
    assert_eq!(
        get(r#"guard_kernel_total{counter="forks_tagged"}"#),
        counter(&d, "forks_tagged") as f64
    );
    let fill = get("guard_ring_buffer_fill_ratio");
    assert!((0.0..=1.0).contains(&fill), "{fill}");
    assert_eq!(get("guard_ring_buffer_size_bytes"), 4_194_304.0);
    assert_eq!(get("guard_policy_generation"), 1.0);
    assert_eq!(get("guard_enforcing"), 1.0);
    assert!(get("guard_tagged_processes") >= 0.0);
    for hook in ["guard_fork", "guard_exec", "guard_exit"] {
        let k = format!(r#"guard_hook_status{{tier="tracking",hook="{hook}",status="attached"}}"#);
        assert_eq!(get(&k), 1.0);
    }
    assert!(get("guard_process_resident_memory_bytes") > 0.0);
    assert!(get(r#"guard_process_tree_entries{state="live"}"#) > 0.0);
}

#[test]
fn follow_reads_live_across_rotations_and_rotation_is_bounded() {
    let d = Daemon::start_with_args(
        None,
        &[
            "--log-max-bytes",
            "16K",
            "--log-files",
            "200",
            "--lifecycle-events",
        ],
    );
    let dir = tempfile::tempdir().unwrap();
    let out_path = dir.path().join("follow.out");
    let _follower = Proc::spawn({
        let mut c = d.guard();
        c.args(["events", "--follow", "--all", "-o", "json"])
            .stdout(File::create(&out_path).unwrap());
        c
    });
    let mut p = d.run_tagged(&["bash", "-c", "for i in $(seq 60); do /bin/true; done"]);
    let root = p.pid();
    assert!(p.wait_timeout(Duration::from_secs(30)).success());
    let logged = wait_for(
        "the root's exit in the log",
        Duration::from_secs(30),
        || {
            let evs = of_root(&events_json(&d, &["--all"]), root);
            evs.iter()
                .any(|e| e["kind"] == "tagged_exit" && e["process"]["pid"] == root)
                .then_some(evs)
        },
    );
    assert!(logged.len() >= 183, "{} events", logged.len());
    let files = log_files(&d.event_log);
    assert!(files.len() > 3, "the log rotated: {files:?}");
    for f in &files {
        assert!(std::fs::metadata(f).unwrap().len() <= 16 * 1024);
    }
    let followed = wait_for("the follower to catch up", Duration::from_secs(30), || {
        let text = std::fs::read_to_string(&out_path).unwrap_or_default();
        // The follower may be in the middle of writing its last line: whole lines only.
        let whole = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let evs: Vec<Value> = whole
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        let evs = of_root(&evs, root);
        (evs.len() >= logged.len()).then_some(evs)
    });
    assert_eq!(
        followed, logged,
        "the follower saw every event, in order, across rotations"
    );

    // Rotation keeps a bounded number of files.
    drop(d);
    let d = Daemon::start_with_args(None, &["--log-max-bytes", "8K", "--log-files", "3"]);
    let mut p = d.run_tagged(&["bash", "-c", "for i in $(seq 40); do /bin/true; done"]);
    assert!(p.wait_timeout(Duration::from_secs(30)).success());
    wait_quiet(&d);
    let files = log_files(&d.event_log);
    assert_eq!(files.len(), 3, "{files:?}");
    assert!(!events_json(&d, &["--all"]).is_empty());
}

#[test]
fn no_log_yet_is_not_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let out = output({
        let mut c = Command::new(guard_tests::guard_bin());
        c.env("GUARD_EVENT_LOG", dir.path().join("none.jsonl"))
            .args(["events", "--since", "10m"]);
        c
    });
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("no events matching since "), "{text}");
    assert!(text.contains("does not exist yet"), "{text}");
}

#[test]
fn network_denial_is_logged_with_its_rule_destination_and_ancestry() {
    let port = free_port();
    let policy = format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: events-net }}\nspec:\n  endpoints:\n    - {{ name: prod-db, cidrs: [127.0.0.2/32], ports: [{port}], action: deny }}\n"
    );
    let d = Daemon::start_with_policy(&policy);
    let script = format!("( exec 3<>/dev/tcp/127.0.0.2/{port} ) 2>/dev/null; echo $? ; true");
    let mut p = d.run_tagged(&["bash", "-c", &script]);
    let root = p.pid();
    assert!(p.wait_timeout(Duration::from_secs(10)).success());
    let denied = wait_for("the denial in the log", Duration::from_secs(10), || {
        let evs = events_json(&d, &["--action", "deny", "--rule", "prod-db"]);
        (!evs.is_empty()).then_some(evs)
    });
    assert_eq!(denied.len(), 1, "{denied:#?}");
    let e = &denied[0];
    assert_eq!(e["kind"], "net_connect");
    assert_eq!(e["result"], "denied");
    assert_eq!(e["destination"]["address"], "127.0.0.2");
    assert_eq!(e["destination"]["port"], port);
    assert_eq!(e["destination"]["protocol"], "tcp");
    assert_eq!(e["process"]["comm"], "bash");
    assert_eq!(e["root"]["pid"], root);
    let chain = ancestry_pids(e);
    assert_eq!(
        chain[0],
        u64::from(root),
        "the subshell's parent is the root"
    );
    assert_eq!(chain.last(), Some(&1));
    assert_eq!(e["ancestry"][0]["agent_root"], true);
    let summary = output({
        let mut c = d.guard();
        c.args(["events", "--summary", "-o", "json"]);
        c
    });
    let summary: Value = serde_json::from_slice(&summary.stdout).unwrap();
    assert_eq!(summary["by_rule"]["prod-db"], 1);
    assert_eq!(summary["by_action"]["deny"], 1);
}

#[test]
fn denials_of_each_kind_come_back_from_guard_events_with_their_ancestry() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let cred = dir.path().join("token");
    let vault = dir.path().join("vault");
    std::fs::write(&cred, "secret").unwrap();
    std::fs::create_dir(&vault).unwrap();
    std::fs::write(vault.join("victim"), "data").unwrap();
    let policy = format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: events-all }}\nspec:\n  \
         agents:\n    - {{ name: claude-code, executables: [claude] }}\n  \
         endpoints:\n    - {{ name: prod-db, cidrs: [127.0.0.2/32], ports: [{port}], action: deny }}\n  \
         paths:\n    - {{ name: creds, paths: [{cred}], access: [read], action: deny }}\n    \
         - {{ name: vault, paths: [{vault}], access: [delete], action: kill }}\n",
        cred = cred.display(),
        vault = vault.display()
    );
    let d = Daemon::start_with_policy(&policy);
    let no_detect = guard_tests::kill_on_detect_unavailable(&d.status_json().unwrap());
    if let Some(why) = &no_detect {
        println!("the vault (kill-on-detect) part NOT RUN on this kernel's fallback tier: {why}");
    }
    let expected_rules = if no_detect.is_some() { 2 } else { 3 };
    let script = format!(
        "( exec 3<>/dev/tcp/127.0.0.2/{port} ) 2>/dev/null; cat {cred} 2>/dev/null; rm -f {vault}/victim; true",
        cred = cred.display(),
        vault = vault.display()
    );
    // An agent recognised at exec (a `guard run` tree would also get the read-only mount
    // layer, which refuses the rm before the kill-on-detect hook sees it).
    let bash_as_claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &bash_as_claude).unwrap();
    let mut p = Proc::spawn({
        let mut c = Command::new(&bash_as_claude);
        c.args(["-c", &script]);
        c
    });
    let root = p.pid();
    assert!(p.wait_timeout(Duration::from_secs(20)).success());
    assert_eq!(std::fs::read_to_string(&cred).unwrap(), "secret");
    let decisions = wait_for("one decision per rule", Duration::from_secs(15), || {
        let evs: Vec<Value> = events_json(&d, &[])
            .into_iter()
            .filter(|e| e["rule"].is_string())
            .collect();
        let rules: std::collections::BTreeSet<String> = evs
            .iter()
            .map(|e| e["rule"].as_str().unwrap().to_string())
            .collect();
        (rules.len() == expected_rules).then_some(evs)
    });
    for (rule, kind, action) in [
        ("prod-db", "net_connect", "deny"),
        ("creds", "file_open", "deny"),
        ("vault", "file_change", "kill"),
    ] {
        if rule == "vault" && no_detect.is_some() {
            continue;
        }
        let mine: Vec<&Value> = decisions.iter().filter(|e| e["rule"] == rule).collect();
        assert_eq!(mine.len(), 1, "exactly one {rule} decision: {decisions:#?}");
        let e = mine[0];
        assert_eq!(e["kind"], kind, "{e}");
        assert_eq!(e["action"], action, "{e}");
        assert_eq!(e["root"]["pid"], root, "{e}");
        let chain = ancestry_pids(e);
        assert!(
            chain.contains(&u64::from(root)),
            "{rule}: ancestry reaches the root: {e}"
        );
        assert_eq!(chain.last(), Some(&1), "{rule}: and on to init: {e}");
    }
}
