//! Issue: enforcement that survives crashes, reloads and a hostile agent tree — the parts
//! that do not need enforcement rules: capability drops, fail-closed start, policy reloads.

use std::{process::Command, time::Duration};

use guard_tests::{Daemon, as_nobody, output, wait_for, world_executable_guard};

fn status_line(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn guard_run_drops_escape_capabilities_even_for_root() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let script = format!(
        "grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status; mount -t tmpfs none {} && echo MOUNTED; exit 0",
        target.display()
    );
    let out = output({
        let mut c = d.guard();
        c.args(["run", "--", "sh", "-c", &script]);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let bnd = u64::from_str_radix(&status_line(&text, "CapBnd:"), 16).unwrap();
    let eff = u64::from_str_radix(&status_line(&text, "CapEff:"), 16).unwrap();
    for (name, cap) in [
        ("SYS_ADMIN", 21),
        ("BPF", 39),
        ("PERFMON", 38),
        ("SYS_PTRACE", 19),
        ("SYS_MODULE", 16),
        ("NET_ADMIN", 12),
        ("SYS_RAWIO", 17),
    ] {
        assert_eq!(
            bnd & (1 << cap),
            0,
            "CAP_{name} left the bounding set: {text}"
        );
        assert_eq!(eff & (1 << cap), 0, "CAP_{name} is not effective: {text}");
    }
    assert_ne!(
        bnd & (1 << 0),
        0,
        "CAP_CHOWN stays: only escape capabilities are dropped"
    );
    assert!(
        !text.contains("MOUNTED"),
        "a root agent could mount: {text}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(target.to_str().unwrap()));

    // The same command untagged keeps its capabilities.
    let out = output({
        let mut c = Command::new("sh");
        c.args(["-c", "grep CapBnd /proc/self/status"]);
        c
    });
    let bnd = u64::from_str_radix(
        &status_line(&String::from_utf8_lossy(&out.stdout), "CapBnd:"),
        16,
    )
    .unwrap();
    assert_ne!(bnd & (1 << 21), 0);
}

#[test]
fn guard_run_for_an_unprivileged_user_blocks_setuid_escalation() {
    let d = Daemon::start();
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let guard = world_executable_guard();
    let out = output({
        let mut c = Command::new(&guard.path);
        c.envs(d.env())
            .args(["run", "--", "grep", "NoNewPrivs", "/proc/self/status"]);
        as_nobody(&mut c);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status_line(&String::from_utf8_lossy(&out.stdout), "NoNewPrivs:"),
        "1"
    );
}

const GOOD: &str = r#"
apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: { name: gen-a }
spec:
  agents:
    - { name: claude-code, executables: [claude] }
"#;

#[test]
fn a_bad_policy_change_is_rejected_and_the_old_one_stays_in_force() {
    let d = Daemon::start_with_policy(GOOD);
    let policy = d.policy.clone().unwrap();
    let st = d.status_json().unwrap();
    assert_eq!(st["policy"], "gen-a");
    let generation = st["policy_generation"].as_u64().unwrap();

    // A typo: rejected with file, line and column; the old generation stays.
    d.admin_writes(&policy, &GOOD.replace("executables", "executabels"));
    let st = wait_for(
        "the bad policy to be rejected",
        Duration::from_secs(10),
        || d.status_json().filter(|s| s["policy_rejected"].is_string()),
    );
    let why = st["policy_rejected"].as_str().unwrap();
    assert!(
        why.contains("policy.yaml:7:") && why.contains("executabels"),
        "{why}"
    );
    assert_eq!(st["policy_generation"].as_u64().unwrap(), generation);
    assert_eq!(st["policy"], "gen-a");
    // Recognition from the old generation still works.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/sleep", dir.path().join("claude")).unwrap();
    let p = guard_tests::Proc::spawn({
        let mut c = Command::new(dir.path().join("claude"));
        c.arg("30");
        c
    });
    let pid = p.pid();
    wait_for("claude to be tagged", Duration::from_secs(10), || {
        d.tag_of(pid)
    });

    // A good change is installed as the next generation; SIGHUP also reloads.
    d.admin_writes(&policy, &GOOD.replace("gen-a", "gen-b"));
    let st = wait_for(
        "the good policy to be installed",
        Duration::from_secs(10),
        || d.status_json().filter(|s| s["policy"] == "gen-b"),
    );
    assert_eq!(st["policy_generation"].as_u64().unwrap(), generation + 1);
    assert!(st["policy_rejected"].is_null());
    d.sighup();
    wait_for("SIGHUP to reload", Duration::from_secs(10), || {
        d.status_json()
            .filter(|s| s["policy_generation"].as_u64() == Some(generation + 2))
    });
}

// --- Reload storm: no generation, valid or not, lets a probe through.

#[expect(
    dead_code,
    reason = "shared with the network tests; the storm uses the namespace and listener only"
)]
mod network_support;

/// A tagged prober: connects to ADDR:PORT and opens FILE for writing in a loop until STOP
/// exists, then writes its counts to OUT. Touches OUT.ready after the first round.
const PROBER: &str = r#"
import errno, json, os, socket, sys, time
addr, port, path, stop, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
c = dict(rounds=0, connected=0, eperm=0, other=0, file_eperm=0, file_opened=0, file_other=0)
while not os.path.exists(stop):
    s = socket.socket()
    s.settimeout(5)
    try:
        s.connect((addr, port))
        c["connected"] += 1
    except OSError as e:
        c["eperm" if e.errno == errno.EPERM else "other"] += 1
    finally:
        s.close()
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_APPEND))
        c["file_opened"] += 1
    except OSError as e:
        c["file_eperm" if e.errno == errno.EPERM else "file_other"] += 1
    c["rounds"] += 1
    if c["rounds"] == 1:
        open(out + ".ready", "w").close()
    time.sleep(0.005)
with open(out + ".tmp", "w") as f:
    json.dump(c, f)
os.replace(out + ".tmp", out)
"#;

fn storm_policy(n: usize, addr: &str, ledger: &std::path::Path) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: {{ name: storm-{n} }}
spec:
  agents:
    - {{ name: claude-code, executables: [claude] }}
  endpoints:
    - {{ name: prod-db, ips: [{addr}], ports: [5432], action: deny }}
    - {{ name: extra-{n}, cidrs: [10.99.{m}.0/24], ports: [{port}], action: deny }}
  paths:
    - {{ name: ledger, paths: [{ledger}], access: [write, delete], action: deny }}
",
        m = n % 250,
        port = 1000 + n,
        ledger = ledger.display()
    )
}

/// Broken variants of a valid policy, each rejected for a different reason.
fn broken(valid: &str, n: usize) -> String {
    match n % 5 {
        0 => valid.replace("executables", "executabels"),
        1 => valid.replace("10.99.", "10.299."),
        2 => valid.replace("action: deny }\n  paths", "action: obliterate }\n  paths"),
        3 => valid.replace("ports: [5432]", "ports: [5432"),
        _ => valid.replace("kind: GuardPolicy", "kind: GuardPolice"),
    }
}

#[test]
fn a_reload_storm_never_lets_a_tagged_probe_through() {
    use network_support::{Listener, Net, assert_ok, client};

    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let dir = tempfile::tempdir().unwrap();
    let ledger = dir.path().join("ledger.db");
    std::fs::write(&ledger, "balance 100\n").unwrap();
    let d = Daemon::start_with_policy(&storm_policy(0, &net.a, &ledger));
    let policy = d.policy.clone().unwrap();

    let (stop, out) = (dir.path().join("stop"), dir.path().join("counts.json"));
    // An agent recognised at exec (python3 under the name `claude`): no private mount
    // namespace, so the ledger is protected by the daemon's reloaded rules alone.
    let claude = dir.path().join("claude");
    std::os::unix::fs::symlink("/usr/bin/python3", &claude).unwrap();
    let mut prober = guard_tests::Proc::spawn({
        let mut c = Command::new(&claude);
        c.args([
            "-c",
            PROBER,
            &net.a,
            "5432",
            ledger.to_str().unwrap(),
            stop.to_str().unwrap(),
            out.to_str().unwrap(),
        ])
        .stderr(std::process::Stdio::null());
        c
    });
    wait_for("the prober to be tagged", Duration::from_secs(10), || {
        d.tag_of(prober.pid())
    });
    let ready = out.with_extension("json.ready");
    wait_for("the prober's first round", Duration::from_secs(20), || {
        ready.exists().then_some(())
    });

    let mut valid_loads = 0u64;
    let mut rejected = 0;
    let mut last_valid = 0;
    for i in 1..=100usize {
        let valid = storm_policy(i, &net.a, &ledger);
        let hup = i % 10 == 0 || i % 10 == 5;
        if i % 2 == 0 {
            d.admin_writes(&policy, &valid);
            let st = wait_for(
                &format!("generation storm-{i} to be installed"),
                Duration::from_secs(20),
                || {
                    d.status_json().filter(|s| {
                        s["policy"] == format!("storm-{i}").as_str()
                            && s["policy_rejected"].is_null()
                    })
                },
            );
            valid_loads += 1;
            last_valid = i;
            if hup {
                let g = st["policy_generation"].as_u64().unwrap();
                d.sighup();
                wait_for("SIGHUP to reload", Duration::from_secs(20), || {
                    d.status_json()
                        .filter(|s| s["policy_generation"].as_u64() == Some(g + 1))
                });
                valid_loads += 1;
            }
        } else {
            let before = d.log().matches("policy rejected").count();
            d.admin_writes(&policy, &broken(&valid, i));
            let st = wait_for(
                &format!("change {i} to be rejected"),
                Duration::from_secs(20),
                || d.status_json().filter(|s| s["policy_rejected"].is_string()),
            );
            let why = st["policy_rejected"].as_str().unwrap();
            assert!(why.contains("policy.yaml"), "change {i}: {why}");
            assert_eq!(
                st["policy"],
                format!("storm-{last_valid}").as_str(),
                "change {i} is ignored: {st}"
            );
            rejected += 1;
            if hup {
                d.sighup();
                wait_for(
                    "SIGHUP of a bad policy to be rejected again",
                    Duration::from_secs(20),
                    || (d.log().matches("policy rejected").count() >= before + 2).then_some(()),
                );
                let st = d.status_json().unwrap();
                assert!(st["policy_rejected"].is_string());
                assert_eq!(st["policy"], format!("storm-{last_valid}").as_str());
            }
        }
    }
    assert_eq!(rejected, 50);

    std::fs::write(&stop, "").unwrap();
    let counts: serde_json::Value =
        wait_for("the prober's counts", Duration::from_secs(30), || {
            serde_json::from_str(&std::fs::read_to_string(&out).ok()?).ok()
        });
    prober.wait_timeout(Duration::from_secs(10));
    let n = |k: &str| counts[k].as_u64().unwrap();
    assert!(n("rounds") > 0, "{counts}");
    assert_eq!(n("connected"), 0, "a probe got through: {counts}");
    assert_eq!(n("other"), 0, "every probe failed with EPERM: {counts}");
    assert_eq!(n("eperm"), n("rounds"), "{counts}");
    assert_eq!(
        n("file_opened"),
        0,
        "the ledger opened for writing: {counts}"
    );
    assert_eq!(n("file_eperm"), n("rounds"), "{counts}");
    assert_eq!(
        listener.count("tcp:5432"),
        0,
        "the listener accepted a tagged probe"
    );
    assert_eq!(std::fs::read_to_string(&ledger).unwrap(), "balance 100\n");

    // The last valid generation is the one in force, with every valid load counted.
    let st = d.status_json().unwrap();
    assert_eq!(st["policy"], "storm-100");
    assert!(st["policy_rejected"].is_null());
    assert_eq!(st["policy_generation"].as_u64().unwrap(), 1 + valid_loads);
    let rules: Vec<&str> = st["path_rules"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert!(rules.contains(&"ledger"), "{rules:?}");
    // Untagged, the same destination is reachable: the rule is for agents only.
    assert_ok(&client(None, "tcp", &net.a, 5432), "untagged");
    wait_for("the untagged connection", Duration::from_secs(10), || {
        (listener.count("tcp:5432") == 1).then_some(())
    });
    eprintln!(
        "storm: {} probes (connect + open for write), 0 through; {valid_loads} valid loads, {rejected} rejected",
        n("rounds")
    );
}

// --- A hostile agent tree, running as root with every capability, goes for the daemon.

/// `claude -c SCRIPT`: bash under an agent's name, recognised and tagged at exec (so it keeps
/// root's capabilities, unlike a `guard run` tree).
fn agent_shell(claude: &std::path::Path, script: &str) -> std::process::Output {
    let mut c = Command::new(claude);
    c.args(["-c", script]);
    output(c)
}

fn killed(out: &std::process::Output) -> bool {
    use std::os::unix::process::ExitStatusExt;
    out.status.signal() == Some(9)
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{:?}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Wait for an event of `kind` matching `f`, with its ancestry.
fn event(d: &Daemon, what: &str, f: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let e = wait_for(what, Duration::from_secs(15), || {
        d.events().into_iter().find(|e| f(e))
    });
    assert!(
        e["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
        "{what}: the event carries the ancestry: {e}"
    );
    e
}

/// A self-protection refusal recorded by `hook` (with the offender's ancestry).
/// `rm -rf` of the pin directory refused in the kernel: it fails with EPERM, every link pin
/// is still there, and the refusal is recorded (checked while the daemon runs).
/// The daemon's link pins, sorted (`None` while the directory is gone).
fn link_pins(d: &Daemon) -> Option<Vec<String>> {
    let mut l: Vec<String> = std::fs::read_dir(d.pin_dir.join("links"))
        .ok()?
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    l.sort();
    Some(l)
}

fn pins_refused(d: &Daemon, out: &std::process::Output, links_before: &[String], running: bool) {
    assert!(
        !killed(out) && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "rm -rf pins: {}",
        text(out)
    );
    assert_eq!(
        link_pins(d).as_deref(),
        Some(links_before),
        "a link pin was removed"
    );
    if running {
        event(d, "the refused pin removal", |e| {
            e["kind"] == "file_change"
                && e["rule"] == "guard:pins"
                && e["result"] == "denied"
                && e["hook"]
                    .as_str()
                    .is_some_and(|h| h.starts_with("security_path_"))
        });
    }
}

fn refusal(d: &Daemon, what: &str, hook: &str) {
    event(d, what, |e| {
        e["kind"] == "self_protect" && e["hook"] == hook && e["result"] == "denied"
    });
}

fn proc_state(pid: u32) -> Vec<(char, u32)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).unwrap();
    tasks
        .filter_map(Result::ok)
        .filter_map(|t| std::fs::read_to_string(t.path().join("status")).ok())
        .map(|s| {
            let field = |k: &str| {
                s.lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(|v| v.trim().to_string())
                    .unwrap_or_default()
            };
            (
                field("State:").chars().next().unwrap_or('?'),
                field("TracerPid:").parse().unwrap_or(0),
            )
        })
        .collect()
}

/// Every thread of `pid` runs (not stopped) and is not traced.
fn free(pid: u32) -> Option<()> {
    proc_state(pid)
        .iter()
        .all(|(state, tracer)| *state != 'T' && *state != 't' && *tracer == 0)
        .then_some(())
}

fn api_request(socket: &std::path::Path, line: &str) -> String {
    format!(
        "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); s.connect(\"{}\"); s.sendall(b\"{}\\n\"); print(s.recv(4096).decode())'",
        socket.display(),
        line.replace('"', "\\\"")
    )
}

/// The bpf-lsm tier refuses every attempt in the kernel: nobody needs to die, the daemon is
/// never signalled or traced, nothing is removed or rewritten.
fn hostile_tree_on_the_lsm_tier(
    d: &Daemon,
    claude: &std::path::Path,
    policy: &std::path::Path,
    policy_text: &str,
) {
    let pid = d.pid();
    for sig in ["TERM", "KILL", "STOP"] {
        let out = agent_shell(claude, &format!("kill -{sig} {pid}; echo \"exit=$?\""));
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("exit=1"),
            "kill -{sig}: {}",
            text(&out)
        );
        event(d, &format!("the SIG{sig} event"), |e| {
            e["kind"] == "self_protect"
                && e["hook"] == "lsm_task_kill"
                && e["result"] == "denied"
                && e["object"]["operation"] == format!("signal SIG{sig}").as_str()
        });
        assert!(d.status_json().is_some_and(|s| s["daemon_pid"] == pid));
    }
    // PTRACE_ATTACH and PTRACE_SEIZE (gdb -p, strace -p), and /proc/PID/mem.
    for (label, req) in [("PTRACE_ATTACH", 16), ("PTRACE_SEIZE", 0x4206)] {
        let out = agent_shell(
            claude,
            &format!(
                "python3 -c 'import ctypes, os; r = ctypes.CDLL(None, use_errno=True).ptrace({req}, {pid}, 0, 0); print(\"ptrace\", r, ctypes.get_errno())'"
            ),
        );
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("ptrace -1 1"),
            "{label}: {}",
            text(&out)
        );
    }
    let out = agent_shell(claude, &format!("cat /proc/{pid}/mem; echo \"exit=$?\""));
    assert!(
        !String::from_utf8_lossy(&out.stdout).contains("exit=0"),
        "/proc/PID/mem: {}",
        text(&out)
    );
    // The capability ceiling may refuse CAP_SYS_PTRACE first (the capability LSM asks for it
    // before the BPF LSM's ptrace_access_check runs): refused either way, and recorded.
    event(d, "the ptrace event", |e| {
        e["result"] == "denied"
            && (e["hook"] == "lsm_ptrace_access_check"
                || (e["rule"] == "guard:capability-ceiling"
                    && e["object"]["operation"]
                        .as_str()
                        .is_some_and(|o| o.contains("CAP_SYS_PTRACE"))))
    });
    assert!(
        free(pid).is_some(),
        "the daemon is neither stopped nor traced"
    );
    // bpf(): BPF_PROG_GET_NEXT_ID, harmless, and refused all the same.
    let out = agent_shell(
        claude,
        "python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); a = ctypes.create_string_buffer(16); print(\"bpf\", l.syscall(321, 11, a, 16), ctypes.get_errno())'",
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("bpf -1 1"),
        "bpf(): {}",
        text(&out)
    );
    event(d, "the bpf event", |e| {
        e["hook"] == "lsm_bpf" && e["result"] == "denied"
    });
    // Pins, policy and log: refused by the path hooks; every link is still pinned.
    let links = d.pin_dir.join("links");
    let before = std::fs::read_dir(&links).unwrap().count();
    let out = agent_shell(
        claude,
        &format!("rm -rf {}; echo \"exit=$?\"", d.pin_dir.display()),
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("exit=1"),
        "rm -rf pins: {}",
        text(&out)
    );
    assert_eq!(std::fs::read_dir(&links).unwrap().count(), before);
    let out = agent_shell(claude, &format!("echo '{{}}' > {}", policy.display()));
    assert!(!out.status.success(), "policy overwrite: {}", text(&out));
    assert_eq!(std::fs::read_to_string(policy).unwrap(), policy_text);
    let log = d.dir.path().join("events.jsonl");
    let lines = d.events().len();
    let out = agent_shell(claude, &format!(": > {}", log.display()));
    assert!(!out.status.success(), "log truncation: {}", text(&out));
    assert!(d.events().len() >= lines, "the event log kept its lines");
    // The API refuses anything but status, ps and tagging yourself.
    let out = agent_shell(claude, &api_request(&d.socket, r#"{"op":"untag"}"#));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(r#""ok":false"#),
        "untag: {}",
        text(&out)
    );
    // Untagged root is not affected.
    let out = Command::new("kill")
        .args(["-0", &pid.to_string()])
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn a_hostile_root_agent_tree_cannot_stop_blind_or_rewrite_the_daemon() {
    let mut d = Daemon::start_with_policy(GOOD);
    d.keep_pins = false;
    let policy = d.policy.clone().unwrap();
    let policy_text = std::fs::read_to_string(&policy).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let pid = d.pid();
    let links_before = link_pins(&d).expect("the link pins");
    if d.assert_tier() == "bpf-lsm" {
        return hostile_tree_on_the_lsm_tier(&d, &claude, &policy, &policy_text);
    }
    let st = d.status_json().unwrap();
    let hooks = st["self_protection"]["hooks"].as_array().unwrap().len();
    let bpf_cover = st["self_protection"]["bpf"].as_str().unwrap().to_owned();
    // Where the kernel takes fmod_ret programs, bpf() is refused (security_bpf); else the
    // cap_capable tracepoint (from 6.13) kills; without either, status says bpf() is not
    // covered.
    let bpf_refused = bpf_cover.starts_with("enforced");
    let bpf_killed = bpf_cover.starts_with("kill");
    if std::env::var_os("GUARD_VM").is_some() {
        // The VM matrix's kernels take trampoline programs.
        assert!(bpf_refused, "{bpf_cover}");
    }
    if bpf_killed {
        assert_eq!(hooks, 4, "self-protection hooks attached: {st}");
    }
    if !bpf_killed && !bpf_refused {
        assert_eq!(hooks, 3, "self-protection hooks attached: {st}");
        assert!(
            bpf_cover.starts_with("not covered") && bpf_cover.contains("6.13"),
            "{bpf_cover}"
        );
    }
    // A long-lived agent tree, to check adoption after the daemon is killed.
    let mut sleeper = guard_tests::Proc::spawn({
        let mut c = Command::new(&claude);
        c.args(["-c", "sleep 600"]);
        c
    });
    let sleeper_tag = wait_for(
        "the long-lived agent to be tagged",
        Duration::from_secs(10),
        || d.tag_of(sleeper.pid()),
    );

    // 1. Termination, stop and user signals: the sender dies, the daemon carries on.
    for sig in ["TERM", "INT", "HUP", "USR1", "STOP"] {
        let out = agent_shell(&claude, &format!("kill -{sig} {pid}; echo survived"));
        assert!(killed(&out), "kill -{sig}: {}", text(&out));
        assert!(!String::from_utf8_lossy(&out.stdout).contains("survived"));
        event(&d, &format!("the SIG{sig} event"), |e| {
            e["kind"] == "self_protect"
                && e["result"] == "killed"
                && e["object"]["operation"] == format!("signal SIG{sig}").as_str()
        });
        wait_for("the daemon to run on", Duration::from_secs(10), || {
            free(pid)
        });
        assert!(d.status_json().is_some_and(|s| s["daemon_pid"] == pid));
    }

    // 2. Tracing the daemon. Where the kernel takes fmod_ret programs,
    // security_ptrace_access_check refuses it outright (EPERM, nothing happens).
    let ptrace_refused = st["deputies"]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "guard:process-access"))
        .and_then(|r| r["mechanism"].as_str())
        .is_some_and(|m| m.starts_with("enforced: fmod_ret"));
    if std::env::var_os("GUARD_VM").is_some() {
        assert!(ptrace_refused, "{}", st["deputies"]);
    }
    if ptrace_refused {
        let out = agent_shell(
            &claude,
            &format!(
                "strace -f -p {pid} -o /dev/null; python3 -c 'import ctypes; l = ctypes.CDLL(None, use_errno=True); print(\"attach\", l.ptrace(16, {pid}, 0, 0), ctypes.get_errno(), flush=True)'; echo survived"
            ),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            stdout.contains("attach -1 1\n") && stdout.contains("survived"),
            "ptrace of the daemon: {}",
            text(&out)
        );
        refusal(&d, "the ptrace refusal", "security_ptrace_access_check");
        assert!(
            free(pid).is_some(),
            "the daemon is neither stopped nor traced"
        );
    }
    if !ptrace_refused {
        // strace -p (PTRACE_SEIZE): the tracer dies at its first wait; the daemon resumes.
        let out = agent_shell(
            &claude,
            &format!("strace -f -p {pid} -o /dev/null; echo survived"),
        );
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("survived")
                || String::from_utf8_lossy(&out.stderr).contains("Killed"),
            "strace: {}",
            text(&out)
        );
        // Where the kernel has the cap_capable tracepoint, the capability ceiling may kill the
        // tracer first, in its ptrace call: killed either way, and recorded.
        event(&d, "the tracer's kill", |e| {
            e["result"] == "killed"
                && e["process"]["comm"] == "strace"
                && ((e["kind"] == "self_protect" && e["hook"] == "sched_process_wait")
                    || (e["rule"] == "guard:capability-ceiling"
                        && e["object"]["operation"]
                            .as_str()
                            .is_some_and(|o| o.contains("CAP_SYS_PTRACE"))))
        });
        wait_for("the daemon to be untraced", Duration::from_secs(10), || {
            free(pid)
        });
        // PTRACE_ATTACH (as gdb does): the SIGSTOP it sends gives it away at once.
        let out = agent_shell(
            &claude,
            &format!(
                "python3 -c 'import ctypes; print(ctypes.CDLL(None).ptrace(16, {pid}, 0, 0), flush=True); import time; time.sleep(5)'"
            ),
        );
        assert!(killed(&out), "PTRACE_ATTACH: {}", text(&out));
        wait_for("the daemon to be untraced", Duration::from_secs(10), || {
            free(pid)
        });
        assert!(d.status_json().is_some_and(|s| s["daemon_pid"] == pid));
    }

    // 3. bpf(): the tag map by its pin or by id, to delete the agent's own tag. Refused at
    // security_bpf where the kernel takes fmod_ret programs; else the call's capability check
    // kills the caller before it has the descriptor.
    let grab = dir.path().join("bpf.py");
    std::fs::write(&grab, BPF_GRAB).unwrap();
    let tags_pin = d.pin_dir.join("maps/GUARD_TAGS");
    if bpf_refused || bpf_killed {
        for how in ["pin", "id"] {
            let out = agent_shell(
                &claude,
                &format!(
                    "python3 {} {how} {} delete",
                    grab.display(),
                    tags_pin.display()
                ),
            );
            let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
            if bpf_refused {
                assert!(
                    !killed(&out) && stdout.contains("fd -1"),
                    "bpf() by {how}: {}",
                    text(&out)
                );
            } else {
                assert!(
                    killed(&out) && !stdout.contains("fd "),
                    "bpf() by {how}: {}",
                    text(&out)
                );
            }
        }
        if bpf_refused {
            refusal(&d, "the bpf() refusal", "security_bpf");
        } else {
            event(&d, "the bpf() kill", |e| {
                e["kind"] == "self_protect" && e["hook"] == "cap_capable" && e["result"] == "killed"
            });
        }
        assert!(
            d.tag_of(sleeper.pid()).is_some(),
            "the tree is still tagged"
        );
        // Untagged root opens the same pin.
        let out = output({
            let mut c = Command::new("python3");
            c.args([grab.to_str().unwrap(), "pin", tags_pin.to_str().unwrap()]);
            c
        });
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            stdout.starts_with("fd ") && !stdout.starts_with("fd -"),
            "untagged: {}",
            text(&out)
        );
    }

    if let Some(why) = guard_tests::kill_on_detect_unavailable(&d.status_json().unwrap()) {
        println!("pins, policy and log steps NOT RUN on this kernel's fallback tier: {why}");
        return;
    }
    // 4. Removing the pins: refused where the fallback tier refuses file changes in the
    // kernel; elsewhere rm dies at its first unlink and the pin is put back at once.
    let fmod_refuses =
        !guard_tests::lsm_tier() && guard_tests::file_changes_refused(&d.status_json().unwrap());
    let out = agent_shell(&claude, &format!("rm -rf {}", d.pin_dir.display()));
    if fmod_refuses {
        pins_refused(&d, &out, &links_before, true);
    } else {
        assert!(killed(&out), "rm -rf pins: {}", text(&out));
        event(&d, "the pin removal", |e| {
            e["kind"] == "file_change" && e["rule"] == "guard:pins" && e["result"] == "killed"
        });
        let restored = wait_for("the pin to be put back", Duration::from_secs(10), || {
            d.events()
                .into_iter()
                .find(|e| e["hook"] == "pin-keeper" && e["result"] == "restored")
        });
        eprintln!("pin put back: {}", restored["object"]["path"]);
    }
    wait_for("every link pinned", Duration::from_secs(10), || {
        (link_pins(&d)? == links_before).then_some(())
    });

    // 5. The policy and the event log: opens for writing fail with EPERM.
    for (what, script) in [
        (
            "overwrite the policy",
            format!("echo 'kind: x' > {}", policy.display()),
        ),
        (
            "truncate the event log",
            format!("truncate -s 0 {}", d.event_log.display()),
        ),
        (
            "empty the event log",
            format!(": > {}", d.event_log.display()),
        ),
    ] {
        let out = agent_shell(&claude, &format!("{script} && echo WROTE"));
        assert!(
            !String::from_utf8_lossy(&out.stdout).contains("WROTE")
                && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{what}: {}",
            text(&out)
        );
    }
    assert_eq!(std::fs::read_to_string(&policy).unwrap(), policy_text);
    event(&d, "the policy write", |e| {
        e["kind"] == "file_open" && e["rule"] == "guard:policy" && e["result"] == "denied"
    });
    event(&d, "the event log write", |e| {
        e["kind"] == "file_open" && e["rule"] == "guard:event-log" && e["result"] == "denied"
    });
    assert!(d.events().len() > 10, "the event log kept its lines");

    // 6. The API: anything but the read-only calls is refused, and recorded.
    for req in [
        r#"{"op":"untag","pid":1}"#,
        r#"{"op":"reload","policy":"/tmp/evil.yaml"}"#,
    ] {
        let out = agent_shell(&claude, &api_request(&d.socket, req));
        let reply = String::from_utf8_lossy(&out.stdout);
        assert!(reply.contains(r#""ok":false"#), "{req}: {}", text(&out));
    }
    event(&d, "the refused API calls", |e| {
        e["kind"] == "self_protect"
            && e["hook"] == "api"
            && e["result"] == "denied"
            && e["object"]["operation"]
                .as_str()
                .is_some_and(|o| o.contains("reload"))
    });
    assert!(
        d.tag_of(sleeper.pid()).is_some(),
        "nothing untagged the agent"
    );

    // 7. Untagged root doing the same (where it does no harm) is not affected.
    let out = output({
        let mut c = Command::new("timeout");
        c.args([
            "-s",
            "INT",
            "2",
            "strace",
            "-p",
            &pid.to_string(),
            "-o",
            "/dev/null",
        ]);
        c
    });
    assert!(!killed(&out), "untagged strace: {}", text(&out));
    wait_for("the daemon to be untraced", Duration::from_secs(10), || {
        free(pid)
    });
    std::fs::write(&policy, &policy_text).unwrap();
    let out = output({
        let mut c = Command::new("bash");
        c.args([
            "-c",
            &format!(
                "kill -USR1 {pid} && {}",
                api_request(&d.socket, r#"{"op":"untag"}"#)
            ),
        ]);
        c
    });
    assert!(out.status.success(), "untagged: {}", text(&out));
    assert!(d.status_json().is_some_and(|s| s["daemon_pid"] == pid));
    let api_events = d
        .events()
        .into_iter()
        .filter(|e| e["hook"] == "api")
        .count();
    assert_eq!(api_events, 2, "untagged API calls are not agent events");

    // 8. kill -9: the sender dies too, the daemon cannot refuse SIGKILL. Enforcement stays
    // pinned; a restart adopts the tags and records what happened from the pinned ring.
    let out = agent_shell(&claude, &format!("kill -9 {pid}; echo survived"));
    assert!(killed(&out), "kill -9: {}", text(&out));
    wait_for("the daemon to die", Duration::from_secs(10), || {
        (!guard_tests::alive(pid)).then_some(())
    });
    d.signal_and_reap(nix::sys::signal::Signal::SIGKILL);
    let out = agent_shell(&claude, &format!("rm -rf {}", d.pin_dir.display()));
    if fmod_refuses {
        pins_refused(&d, &out, &links_before, false);
    } else {
        assert!(
            killed(&out),
            "with the daemon down, pins are still protected: {}",
            text(&out)
        );
    }
    d.spawn();
    let new_pid = d.pid();
    let tag = wait_for(
        "the agent's tag after the restart",
        Duration::from_secs(10),
        || d.tag_of(sleeper.pid()),
    );
    assert_eq!(tag["root_pid"], sleeper_tag["root_pid"], "{tag}");
    // The killer exited before this daemon started, so its ancestry is not known here; the
    // record names it, its parent and its agent root.
    let e = wait_for(
        "the SIGKILL event, read after the restart",
        Duration::from_secs(15),
        || {
            d.events().into_iter().find(|e| {
                e["kind"] == "self_protect" && e["object"]["operation"] == "signal SIGKILL"
            })
        },
    );
    assert_eq!(e["result"], "killed", "{e}");
    assert_eq!(e["agent"], "claude-code", "{e}");
    assert!(e["process"]["ppid"].as_u64().is_some_and(|p| p > 0), "{e}");
    assert_eq!(e["root"]["pid"], e["process"]["pid"], "{e}");
    let out = agent_shell(&claude, &format!("kill -TERM {new_pid}; echo survived"));
    assert!(
        killed(&out),
        "the restarted daemon is protected: {}",
        text(&out)
    );
    assert!(d.status_json().is_some_and(|s| s["daemon_pid"] == new_pid));
    let st = d.status_json().unwrap();
    assert_eq!(st["problems"].as_array().map(Vec::len), Some(0), "{st}");
    let _ = sleeper.child.kill();
}

/// `bpf.py pin PATH` or `bpf.py id`: get a descriptor of guard's tag map (`BPF_OBJ_GET` of its
/// pin, or the first map id with `BPF_MAP_GET_FD_BY_ID`) and delete this process's tag.
const BPF_GRAB: &str = r#"
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
attr = ctypes.create_string_buffer(128)
if sys.argv[1] == "pin":
    path = ctypes.create_string_buffer(sys.argv[2].encode())
    ctypes.c_uint64.from_buffer(attr, 0).value = ctypes.addressof(path)
    fd = libc.syscall(321, 7, attr, 128)
else:
    libc.syscall(321, 12, attr, 128)
    by_id = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(by_id, 0).value = ctypes.c_uint32.from_buffer(attr, 4).value
    fd = libc.syscall(321, 14, by_id, 128)
print("fd", fd, flush=True)
if fd >= 0 and len(sys.argv) > 3:
    key = ctypes.c_uint32(os.getpid())
    op = ctypes.create_string_buffer(128)
    ctypes.c_uint32.from_buffer(op, 0).value = fd
    ctypes.c_uint64.from_buffer(op, 8).value = ctypes.addressof(key)
    print("delete", libc.syscall(321, 3, op, 128), flush=True)
"#;

fn generation(d: &Daemon) -> (u64, String) {
    let st = d.status_json().expect("status");
    (
        st["policy_generation"].as_u64().unwrap(),
        st["policy"].as_str().unwrap().to_owned(),
    )
}

/// A policy file changed by a tagged process (replaced by a rename, rewritten by `sed -i`,
/// appended to) is never applied: on bpf-lsm, and on the fallback tier where the kernel takes
/// `fmod_ret` programs, the change is refused; elsewhere on the fallback tier it is killed
/// after the fact, and the daemon keeps the policy in force, says why in status and
/// an event, and waits for an untagged root `guard policy apply`. A daemon restarted on such a
/// file refuses to start until told the file was reviewed.
#[test]
fn a_policy_changed_by_a_tagged_process_is_not_applied() {
    let mut d = Daemon::start_with_policy(GOOD);
    d.keep_pins = false;
    let policy = d.policy.clone().unwrap();
    let dir = policy.parent().unwrap().to_path_buf();
    let agent_dir = tempfile::tempdir().unwrap();
    let claude = agent_dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let (gen0, name0) = generation(&d);
    assert_eq!(name0, "gen-a");
    let tampers = [
        format!(
            "cd {} && sed 's/gen-a/gen-evil/' policy.yaml > tmp && mv -f tmp policy.yaml",
            dir.display()
        ),
        format!("sed -i 's/gen-a/gen-evil/' {}", policy.display()),
        format!(
            "echo 'metadata: {{ name: gen-evil }}' >> {}",
            policy.display()
        ),
    ];
    for script in &tampers {
        agent_shell(&claude, script);
        let mut run = d.guard();
        run.args(["run", "--", "bash", "-c", script]);
        output(run);
    }
    // Longer than the watcher's settle time.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        generation(&d),
        (gen0, "gen-a".to_owned()),
        "a tampered policy applied"
    );
    let lsm = d.assert_tier() == "bpf-lsm";
    // Refused in the kernel: bpf-lsm, or the fallback tier's fmod_ret programs (renames) with
    // the fanotify layer (opens for writing).
    let refused = guard_tests::file_changes_refused(&d.status_json().unwrap());
    let watched = d.file_changes_apply();
    if !watched {
        // No BPF LSM and no change detectors (before 6.13): nothing tells who changed the
        // file, so no change applies on its own; status says so.
        assert!(!lsm);
        println!(
            "policy file changes on this kernel: {}",
            d.status_json().unwrap()["self_protection"]["policy_changes"]
        );
        std::fs::write(&policy, GOOD.replace("gen-a", "gen-b")).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(generation(&d).1, "gen-a");
    } else if !refused {
        let st = d.status_json().unwrap();
        let why = st["policy_rejected"].as_str().unwrap_or_default();
        assert!(why.contains("tagged processes changed"), "{st}");
        // The change itself, with who made it; then the daemon's refusal to apply it.
        event(&d, "the tagged change of the policy", |e| {
            e["kind"] == "file_change" && e["rule"] == "guard:policy" && e["result"] == "killed"
        });
        wait_for("the refused apply", Duration::from_secs(10), || {
            d.events().into_iter().find(|e| {
                e["kind"] == "self_protect"
                    && e["rule"] == "guard:policy"
                    && e["hook"] == "policy-watch"
                    && e["result"] == "denied"
            })
        });
        // An administrator's own edit waits for the explicit apply too: the file may still
        // hold what the agent wrote.
        std::fs::write(&policy, GOOD.replace("gen-a", "gen-b")).unwrap();
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(generation(&d).1, "gen-a");
    } else {
        assert!(std::fs::read_to_string(&policy).unwrap().contains("gen-a"));
        std::fs::write(&policy, GOOD.replace("gen-a", "gen-b")).unwrap();
    }
    // `guard policy apply` from an agent is refused and recorded; from untagged root it applies.
    let mut apply = Command::new(&claude);
    apply
        .args([
            "-c",
            &format!("{} policy apply", guard_tests::guard_bin().display()),
        ])
        .envs(d.env());
    let out = output(apply);
    assert!(!out.status.success(), "a tagged apply: {}", text(&out));
    let mut apply = d.guard();
    apply.args(["policy", "apply", policy.to_str().unwrap()]);
    let out = output(apply);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(generation(&d).1, "gen-b");
    // Acknowledged: the next untagged edit applies on its own again.
    d.admin_writes(&policy, &GOOD.replace("gen-a", "gen-c"));
    wait_for("an untagged edit to apply", Duration::from_secs(10), || {
        (generation(&d).1 == "gen-c").then_some(())
    });
    if refused || !watched {
        return;
    }

    // A restart on a file a tagged process changed meanwhile is refused, naming why.
    agent_shell(&claude, &tampers[0].replace("gen-a", "gen-c"));
    d.keep_pins = true;
    d.signal_and_reap(nix::sys::signal::Signal::SIGTERM);
    let mut start = d.guard();
    start.args(["daemon", "--policy", policy.to_str().unwrap()]);
    let out = output(start);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("--policy-reviewed"),
        "{err}"
    );
    d.args.push("--policy-reviewed".into());
    d.spawn();
    d.keep_pins = false;
    assert_eq!(generation(&d).1, "gen-evil", "the reviewed file applies");
}
