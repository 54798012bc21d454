//! Issue: tag AI-agent process trees in the kernel, inescapably.
//! Real processes, real programs loaded into the running kernel.

use std::{path::Path, process::Command, time::Duration};

use guard_tests::{Daemon, KillOnDrop, Proc, alive, descendants, output, read_pid_file, wait_for};
use nix::sys::signal::Signal;
use serde_json::Value;

const ESCAPE: &str = env!("CARGO_BIN_EXE_guard-escape");

fn root_of(tag: &Value) -> (u64, u64) {
    (
        tag["root_pid"].as_u64().unwrap(),
        tag["root_start_ns"].as_u64().unwrap(),
    )
}

fn tagged_count(d: &Daemon) -> u64 {
    d.status_json().expect("status")["tagged_processes"]
        .as_u64()
        .unwrap()
}

#[test]
fn guard_run_and_every_escape_stay_tagged_while_untagged_siblings_do_not() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let mut pids = KillOnDrop(Vec::new());
    for mode in ["double-fork", "daemonize", "vfork", "clone3", "thread-fork"] {
        let tagged_file = dir.path().join(format!("{mode}.tagged"));
        let mut launcher = d.run_tagged(&[ESCAPE, mode, tagged_file.to_str().unwrap()]);
        let root = launcher.pid();
        let pid = read_pid_file(&tagged_file);
        pids.0.push(pid);
        let tag = d
            .tag_of(pid)
            .unwrap_or_else(|| panic!("{mode}: pid {pid} is not tagged"));
        assert_eq!(tag["agent"], "guard-run", "{mode}");
        assert_eq!(
            root_of(&tag).0,
            u64::from(root),
            "{mode}: keeps the launcher as root"
        );
        assert!(launcher.wait_timeout(Duration::from_secs(10)).success());

        // The same escape, not started by guard run: nothing is tagged.
        let untagged_file = dir.path().join(format!("{mode}.untagged"));
        let mut sibling = Proc::spawn({
            let mut c = Command::new(ESCAPE);
            c.args([mode, untagged_file.to_str().unwrap()]);
            c
        });
        let pid = read_pid_file(&untagged_file);
        pids.0.push(pid);
        assert!(
            d.tag_of(pid).is_none(),
            "{mode}: untagged sibling {pid} got tagged"
        );
        assert!(d.tag_of(sibling.pid()).is_none());
        sibling.wait_timeout(Duration::from_secs(10));
    }

    // Shell escapes: setsid, nohup … &, exec of a copied and renamed binary, env -i.
    let script = format!(
        "cp /bin/sleep {d}/renamed; \
         setsid sleep 120 & echo $! > {d}/setsid; \
         nohup sleep 120 >/dev/null 2>&1 & echo $! > {d}/nohup; \
         {d}/renamed 120 & echo $! > {d}/renamed.pid; \
         env -i /bin/sh -c 'sleep 120 & echo $! > {d}/envi' ; \
         wait",
        d = dir.path().display()
    );
    let shell = d.run_tagged(&["bash", "-c", &script]);
    for f in ["setsid", "nohup", "renamed.pid", "envi"] {
        let pid = read_pid_file(&dir.path().join(f));
        pids.0.push(pid);
        let tag = d
            .tag_of(pid)
            .unwrap_or_else(|| panic!("{f}: pid {pid} is not tagged"));
        assert_eq!(root_of(&tag).0, u64::from(shell.pid()), "{f}");
    }
    let untagged = output({
        let mut c = Command::new("bash");
        c.args(["-c", "setsid sleep 5 & echo $!"]);
        c
    });
    let pid: u32 = String::from_utf8_lossy(&untagged.stdout)
        .trim()
        .parse()
        .unwrap();
    pids.0.push(pid);
    assert!(d.tag_of(pid).is_none(), "untagged setsid sleep got tagged");
}

#[test]
fn ten_thousand_short_lived_tagged_processes_leave_no_tags_behind() {
    let d = Daemon::start();
    let before = tagged_count(&d);
    let forks_before = counter(&d, "forks_tagged");
    let mut p = d.run_tagged(&["bash", "-c", "for i in $(seq 10000); do /bin/true; done"]);
    assert!(p.wait_timeout(Duration::from_secs(300)).success());
    let forks = counter(&d, "forks_tagged") - forks_before;
    assert!(forks >= 10_000, "only {forks} forks were tagged");
    wait_for("the tag map to drain", Duration::from_secs(10), || {
        (tagged_count(&d) == before).then_some(())
    });
    assert_eq!(counter(&d, "tag_insert_failed"), 0);
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

const POLICY: &str = r#"
apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: { name: tagging-test }
spec:
  agents:
    - { name: claude-code, executables: [claude], scripts: [claude, claude-code] }
    - { name: aider, executables: [aider], scripts: [aider] }
"#;

#[test]
fn agents_are_recognised_at_exec_without_guard_run() {
    let d = Daemon::start_with_policy(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    std::fs::copy("/bin/sleep", p.join("claude")).unwrap();
    std::fs::copy("/bin/sleep", p.join("claudette")).unwrap();
    std::fs::write(p.join("aider.py"), "import time\ntime.sleep(60)\n").unwrap();
    std::fs::write(p.join("helper.py"), "import time\ntime.sleep(60)\n").unwrap();
    std::fs::create_dir_all(p.join("mods/aider")).unwrap();
    std::fs::write(
        p.join("mods/aider/__main__.py"),
        "import time\ntime.sleep(60)\n",
    )
    .unwrap();
    let spawn = |prog: &Path, args: &[&str]| {
        let mut c = Command::new(prog);
        c.args(args).env("PYTHONPATH", p.join("mods"));
        Proc::spawn(c)
    };
    // The real interpreter, not a version-manager shim script in front of it.
    let py = real_python3();
    let py = py.as_path();
    let cases: Vec<(Proc, Option<&str>)> = vec![
        (spawn(&p.join("claude"), &["60"]), Some("claude-code")),
        (spawn(&p.join("claudette"), &["60"]), None),
        (
            spawn(py, &[p.join("aider.py").to_str().unwrap()]),
            Some("aider"),
        ),
        (spawn(py, &[p.join("helper.py").to_str().unwrap()]), None),
        (spawn(py, &["-m", "aider"]), Some("aider")),
        (
            spawn(py, &["-c", "import time; time.sleep(60)", "aider"]),
            None,
        ),
    ];
    let mut node_cases = Vec::new();
    if which("node") {
        let pkg = p.join("lib/node_modules/@anthropic-ai/claude-code");
        std::fs::create_dir_all(&pkg).unwrap();
        std::fs::create_dir_all(p.join("app")).unwrap();
        let js = "setTimeout(() => {}, 60000);\n";
        std::fs::write(pkg.join("cli.js"), js).unwrap();
        std::fs::write(p.join("app/cli.js"), js).unwrap();
        node_cases.push((
            spawn(Path::new("node"), &[pkg.join("cli.js").to_str().unwrap()]),
            Some("claude-code"),
        ));
        node_cases.push((
            spawn(Path::new("node"), &[p.join("app/cli.js").to_str().unwrap()]),
            None,
        ));
    } else {
        assert!(
            !guard_tests::under_ci(),
            "node is on every machine of this kind; CI must test it"
        );
        println!("SKIPPED node script recognition: node is not installed");
    }
    // Wait until every expected agent is tagged; then the others had time too.
    for (proc, want) in cases.iter().chain(node_cases.iter()) {
        if want.is_some() {
            let pid = proc.pid();
            wait_for(
                &format!("{} to be tagged", proc_cmdline(pid)),
                Duration::from_secs(10),
                || d.tag_of(pid),
            );
        }
    }
    for (proc, want) in cases.iter().chain(node_cases.iter()) {
        let tag = d.tag_of(proc.pid());
        let args = proc_cmdline(proc.pid());
        match want {
            Some(agent) => {
                let tag = tag.unwrap_or_else(|| panic!("{args} is not tagged"));
                assert_eq!(tag["agent"], *agent, "{args}");
                assert_eq!(
                    root_of(&tag).0,
                    u64::from(proc.pid()),
                    "{args} is its own root"
                );
            }
            None => assert!(tag.is_none(), "{args} was tagged but is no agent"),
        }
    }
    let events = d.events();
    let claude = cases[0].0.pid();
    assert!(
        events.iter().any(|e| e["kind"] == "agent_exec"
            && e["process"]["pid"] == claude
            && e["agent"] == "claude-code"),
        "no agent_exec event for claude: {events:?}"
    );
    // An agent exec inside a tagged tree keeps the original root.
    let mut outer = d.run_tagged(&[p.join("claude").to_str().unwrap(), "0"]);
    let root = outer.pid();
    assert!(outer.wait_timeout(Duration::from_secs(5)).success());
    // Events are written asynchronously: wait for the line rather than race the pipeline.
    let inner = wait_for("the tagged_exec event", Duration::from_secs(10), || {
        d.events()
            .into_iter()
            .rev()
            .find(|e| e["process"]["pid"] == root && e["kind"] == "tagged_exec")
    });
    assert_eq!(inner["agent"], "guard-run");
    assert_eq!(inner["root"]["pid"], root);
}

fn real_python3() -> std::path::PathBuf {
    let out = output({
        let mut c = Command::new("python3");
        c.args(["-c", "import sys; print(sys.executable)"]);
        c
    });
    assert!(out.status.success(), "python3 is installed");
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    std::fs::canonicalize(exe).expect("python3 executable")
}

fn which(prog: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn proc_cmdline(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .replace('\0', " ")
}

#[test]
fn agent_tree_running_before_the_daemon_is_tagged_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let bash_as_claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &bash_as_claude).unwrap();
    // Forks continuously while the daemon starts.
    let tree = Proc::spawn({
        let mut c = Command::new(&bash_as_claude);
        c.args([
            "-c",
            "while :; do (sleep 0.3; sleep 0.3) & sleep 0.01; done",
        ]);
        c
    });
    std::thread::sleep(Duration::from_millis(300));
    let d = Daemon::start_with_policy(POLICY);
    let root = tree.pid();
    let tag = d
        .tag_of(root)
        .expect("the pre-existing agent root is tagged");
    assert_eq!(tag["agent"], "claude-code");
    for round in 0..5 {
        // Descendants first: every pid listed existed before the tag map was read.
        let pids = descendants(root);
        let ps = d.ps();
        for pid in pids {
            let tagged = ps.iter().any(|p| p["pid"] == pid);
            if !tagged && alive(pid) {
                panic!("round {round}: descendant {pid} of the agent root is not tagged");
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn sigkilled_daemon_leaves_tags_and_trackers_and_a_restart_adopts_them() {
    let mut d = Daemon::start();
    d.keep_pins = true;
    let dir = tempfile::tempdir().unwrap();
    let go = dir.path().join("go");
    let script = format!(
        "sleep 120 & echo $! > {d}/before; while [ ! -e {g} ]; do sleep 0.05; done; sleep 120 & echo $! > {d}/during; wait",
        d = dir.path().display(),
        g = go.display()
    );
    let shell = d.run_tagged(&["bash", "-c", &script]);
    let before = read_pid_file(&dir.path().join("before"));
    let _kill = KillOnDrop(vec![before]);
    let root = root_of(&d.tag_of(before).expect("tagged before the crash"));

    let links_before: Vec<String> = d.status_json().unwrap()["trackers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    for t in ["guard_exec", "guard_exit", "guard_fork"] {
        assert!(links_before.iter().any(|l| l == t), "{t} attached");
    }
    d.signal_and_reap(Signal::SIGKILL);
    // While no daemon runs, the pinned trackers still tag new children.
    std::fs::write(&go, "").unwrap();
    let during = read_pid_file(&dir.path().join("during"));
    let _kill2 = KillOnDrop(vec![during]);
    d.keep_pins = false;
    d.spawn();
    for pid in [before, during, shell.pid()] {
        let tag = d
            .tag_of(pid)
            .unwrap_or_else(|| panic!("pid {pid} lost its tag across the restart"));
        assert_eq!(root_of(&tag), root, "pid {pid} kept its root");
    }
    let roots: std::collections::HashSet<(u64, u64)> = d.ps().iter().map(root_of).collect();
    assert_eq!(roots.len(), 1, "duplicate roots after restart: {roots:?}");
    let st = d.status_json().unwrap();
    let links: Vec<String> = st["trackers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        links, links_before,
        "the restart replaced each link pin once: no duplicates, none lost"
    );
    let pinned = std::fs::read_dir(d.pin_dir.join("links")).unwrap().count();
    assert_eq!(pinned, links_before.len());
}

/// With the tag map full, a tagged parent's new child and a newly recognised agent are
/// killed, never left to run untagged; untagged processes are not affected. The map is made
/// small here: at its default size (`kernel.pid_max`) it cannot fill.
#[test]
fn a_full_tag_map_kills_what_it_cannot_tag() {
    const SIZE: u64 = 16;
    let d = Daemon::start_with_args(Some(POLICY), &["--tag-map-size", &SIZE.to_string()]);
    let st = d.status_json().expect("status");
    assert_eq!(st["tag_map"]["size"], SIZE, "{st}");
    let when_full = st["tag_map"]["when_full"].as_str().unwrap().to_owned();
    let way = if when_full.contains("fork is refused") {
        Refusal::ForkRefused
    } else if when_full.contains("in the kernel") {
        Refusal::KilledInKernel
    } else {
        Refusal::KilledByDaemon
    };
    if guard_tests::lsm_tier() {
        assert_eq!(
            way,
            Refusal::ForkRefused,
            "bpf-lsm refuses the fork: {when_full}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    // A forker that takes a refused fork as it is (bash would retry it with sleeps).
    let forks = format!("python3 -c '{FORKER}'");

    // A recognised agent, then a `guard run` tree, each forking past the map's size.
    let agent = Proc::spawn({
        let mut c = Command::new(&claude);
        c.args(["-c", &forks]);
        c
    });
    assert_children_tagged_or_refused(&d, &agent, way);

    // While the map is full: an agent exec'd anywhere is killed, and `guard run` refuses.
    let mut late = Command::new(&claude);
    late.args(["-c", "echo ran"]);
    let out = output(late);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(9),
        "an agent the map cannot take is killed: {out:?}"
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("ran"));
    let mut run = d.guard();
    run.args(["run", "--", "echo", "ran"]);
    let out = output(run);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("tag map is full"), "{err}");

    // Untagged processes fork as they like meanwhile.
    let untagged = Proc::spawn({
        let mut c = Command::new("bash");
        c.args(["-c", &forks]);
        c
    });
    wait_for("40 untagged children", Duration::from_secs(10), || {
        (descendants(untagged.pid()).len() == 40).then_some(())
    });
    drop(untagged);
    drop(agent);
    wait_for("the tag map to drain", Duration::from_secs(10), || {
        (tagged_count(&d) == 0).then_some(())
    });

    let tree = d.run_tagged(&["bash", "-c", &forks]);
    assert_children_tagged_or_refused(&d, &tree, way);
}

/// Forks 40 children that sleep (a refused fork is skipped) and waits for them.
const FORKER: &str = "import os, time
kids = []
for i in range(40):
    try:
        pid = os.fork()
    except BlockingIOError:
        continue
    if pid == 0:
        time.sleep(30)
        os._exit(0)
    kids.append(pid)
for k in kids:
    os.waitpid(k, 0)
";

/// How this kernel and tier keep a tagged parent from growing an untagged child.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Refusal {
    /// bpf-lsm `task_alloc`: the fork fails with EAGAIN.
    ForkRefused,
    /// The fork tracker kills the child before it runs (Linux ≥ 6.13).
    KilledInKernel,
    /// The daemon kills the child from the event.
    KilledByDaemon,
}

/// Every live descendant of `root` is tagged, and the forks the map could not take were
/// refused, or their children killed, and recorded with their ancestry.
fn assert_children_tagged_or_refused(d: &Daemon, root: &Proc, way: Refusal) {
    let before = refused(d, root.pid()).len();
    let events = wait_for("tag_map_full events", Duration::from_secs(10), || {
        let evs = refused(d, root.pid());
        (evs.len() > before).then_some(evs)
    });
    // Give the tree time to finish forking; then nothing it runs is untagged.
    std::thread::sleep(Duration::from_millis(500));
    let ps = d.ps();
    let live = descendants(root.pid());
    for pid in &live {
        assert!(
            ps.iter().any(|p| p["pid"] == *pid) || !alive(*pid),
            "descendant {pid} of {} runs untagged",
            root.pid()
        );
    }
    assert!(live.len() < 40, "{} children ran", live.len());
    let e = &events[0];
    assert_eq!(e["rule"], "tag-map-full", "{e}");
    assert!(!e["ancestry"].as_array().unwrap().is_empty(), "{e}");
    if way == Refusal::ForkRefused {
        assert_eq!(e["action"], "deny", "{e}");
        assert_eq!(e["hook"], "task_alloc", "{e}");
        assert_eq!(e["result"], "denied", "{e}");
        assert_eq!(e["process"]["pid"], root.pid(), "the forker: {e}");
        return;
    }
    assert_eq!(e["action"], "kill", "{e}");
    assert_eq!(e["hook"], "sched_process_fork", "{e}");
    assert_eq!(
        e["result"],
        if way == Refusal::KilledInKernel {
            "killed"
        } else {
            "kill-scheduled"
        },
        "{e}"
    );
    let child = e["process"]["pid"].as_u64().unwrap() as u32;
    wait_for(
        "the refused child to be gone",
        Duration::from_secs(5),
        || (!alive(child)).then_some(()),
    );
}

/// `tag_map_full` events of `parent`'s children, or of its own refused forks.
fn refused(d: &Daemon, parent: u32) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|e| {
            e["kind"] == "tag_map_full"
                && (e["process"]["ppid"] == parent
                    || (e["hook"] == "task_alloc" && e["process"]["pid"] == parent))
        })
        .collect()
}
