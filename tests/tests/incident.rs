//! Incident response on a running agent tree: `guard freeze` stops every process of it —
//! the one that double-forked out of its session included — and keeps it stopped against the
//! tree itself and any other agent; `guard thaw` continues it; `guard kill` ends all of it;
//! `guard export` writes its record. Only root, and never a tagged process, may do any of it.

use std::{path::Path, process::Command, time::Duration};

use guard_tests::{
    Daemon, Proc, alive, as_nobody, lsm_tier, output, output_text, wait_for, webhook::HookServer,
    world_executable_guard,
};
use serde_json::Value;

const POLICY: &str = "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\n\
    metadata: { name: incident }\nspec:\n  agents:\n    - { name: claude-code, executables: [claude] }\n\
    \x20 endpoints:\n    - { name: prod-db, ips: [127.0.0.2], ports: [5432], action: deny }\n";

/// `/proc/PID/stat` state.
fn state(pid: u32) -> char {
    procfs::process::Process::new(pid as i32)
        .and_then(|p| p.stat())
        .map_or('X', |s| s.state)
}

fn stopped(pid: u32) -> bool {
    matches!(state(pid), 'T' | 't')
}

/// SIGKILLs the processes it holds when dropped, whatever the test did: the runaways of these
/// tests leave their session, so killing the agent's process group would miss them.
struct Reaper(Vec<u32>);

impl Drop for Reaper {
    fn drop(&mut self) {
        for pid in &self.0 {
            // SAFETY: plain kill(2) of a pid this test started (or its descendant).
            unsafe { libc::kill(*pid as i32, libc::SIGKILL) };
        }
    }
}

/// The processes of the tree of `root`, from `guard ps`.
fn members(d: &Daemon, root: u32) -> Vec<u32> {
    d.ps()
        .iter()
        .filter(|p| p["root_pid"] == root)
        .filter_map(|p| p["pid"].as_u64())
        .map(|p| p as u32)
        .collect()
}

fn size(p: &Path) -> u64 {
    std::fs::metadata(p).map_or(0, |m| m.len())
}

/// An agent whose tree writes two tick files: one from a loop in the agent itself, one from
/// a loop that double-forked into a session of its own (reparented, out of the session).
fn agent(dir: &Path) -> (Proc, u32) {
    let claude = dir.join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let script = format!(
        "(setsid bash -c 'while :; do echo x >> {d}/away; sleep 0.05; done' &) ; \
         while :; do echo y >> {d}/here; sleep 0.05; done",
        d = dir.display()
    );
    let mut c = Command::new(&claude);
    c.args(["-c", &script]);
    let p = Proc::spawn(c);
    let pid = p.pid();
    (p, pid)
}

#[test]
fn a_frozen_tree_stays_frozen_until_thawed_and_kill_ends_all_of_it() {
    let d = Daemon::start_with_policy(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let (_agent, root) = agent(dir.path());
    let (here, away) = (dir.path().join("here"), dir.path().join("away"));
    let tree = wait_for("the tree and its runaway", Duration::from_secs(10), || {
        let m = members(&d, root);
        (m.len() >= 3 && size(&away) > 0 && size(&here) > 0).then_some(m)
    });
    let _reaper = Reaper(tree.clone());
    let mut bystander = Proc::spawn({
        let mut c = Command::new("sleep");
        c.arg("600");
        c
    });

    // Only root, and never a tagged process, may freeze.
    let public = world_executable_guard();
    let mut c = Command::new(&public.path);
    c.envs(d.env()).args(["freeze", &root.to_string()]);
    let out = output({
        as_nobody(&mut c);
        c
    });
    assert!(
        !out.status.success() && output_text(&out).contains("only root"),
        "{}",
        output_text(&out)
    );
    let mut run = d.guard();
    run.args(["run", "--"])
        .arg(guard_tests::guard_bin())
        .args(["freeze", &root.to_string()]);
    let out = output(run);
    assert!(
        !out.status.success() && output_text(&out).contains("tagged process may not freeze"),
        "{}",
        output_text(&out)
    );
    assert!(
        !tree.iter().any(|p| stopped(*p)),
        "a refused freeze stopped nothing"
    );

    let out = d.cli(&["freeze", &root.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let tree = members(&d, root);
    for pid in &tree {
        assert!(
            stopped(*pid),
            "{pid} runs after the freeze: {}",
            state(*pid)
        );
    }
    assert!(
        d.ps()
            .iter()
            .filter(|p| p["root_pid"] == root)
            .all(|p| p["held"] == true),
        "guard ps marks the tree frozen"
    );
    assert_eq!(d.status_json().unwrap()["held_trees"], 1);
    let (h, a) = (size(&here), size(&away));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        (size(&here), size(&away)),
        (h, a),
        "nothing of the tree ran"
    );
    assert!(
        !stopped(bystander.pid()),
        "an untagged process is not stopped"
    );

    // Another agent continues a frozen process: refused on bpf-lsm, stopped again on fallback.
    let victim = *tree.iter().find(|p| **p != root).unwrap();
    let mut other = Command::new(dir.path().join("claude"));
    other.args(["-c", &format!("kill -CONT {victim}")]);
    let out = output(other);
    if lsm_tier() {
        assert!(
            !out.status.success() && output_text(&out).contains("Operation not permitted"),
            "{}",
            output_text(&out)
        );
    }
    std::thread::sleep(Duration::from_millis(600));
    assert!(
        stopped(victim),
        "the held tree is stopped again: {}",
        state(victim)
    );
    let evs = wait_for("the refusal or the stop", Duration::from_secs(10), || {
        let evs: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| {
                (e["kind"] == "self_protect" && e["rule"] == "guard:hold")
                    || (e["kind"] == "response" && e["action"] == "stop-again")
            })
            .collect();
        // On bpf-lsm the refusal; members forked between two passes of the freeze may
        // have been stopped again before it, on either tier.
        let refused = evs.iter().any(|e| e["rule"] == "guard:hold");
        (refused || (!lsm_tier() && !evs.is_empty())).then_some(evs)
    });
    if lsm_tier() {
        let refusal = evs.iter().find(|e| e["rule"] == "guard:hold").unwrap();
        assert_eq!(refusal["result"], "denied", "{evs:?}");
    }

    let out = d.cli(&["thaw", &root.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the tree to run again", Duration::from_secs(10), || {
        (size(&here) > h && size(&away) > a).then_some(())
    });
    let out = d.cli(&["thaw", &root.to_string()]);
    assert!(
        output_text(&out).contains("is not frozen"),
        "{}",
        output_text(&out)
    );
    assert_eq!(d.status_json().unwrap()["held_trees"], 0);

    let out = d.cli(&["kill", &root.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for(
        "every process of the tree to die",
        Duration::from_secs(10),
        || tree.iter().all(|p| !alive(*p)).then_some(()),
    );
    assert!(alive(bystander.pid()), "the untagged process lives");
    let _ = bystander.child.kill();

    let responses = wait_for("the three responses", Duration::from_secs(10), || {
        let evs: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "response" && e["root"]["pid"] == root)
            .filter(|e| e["action"] != "stop-again")
            .collect();
        (evs.len() == 3).then_some(evs)
    });
    let actions: Vec<&str> = responses
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert_eq!(actions, ["freeze", "thaw", "kill"], "{responses:?}");
    assert_eq!(responses[0]["result"], "frozen");
    assert!(responses[0]["ancestry"].is_array(), "with its ancestry");
    let out = d.cli(&["freeze", "999999999"]);
    assert!(
        output_text(&out).contains("no agent tree has root"),
        "{}",
        output_text(&out)
    );
}

#[test]
fn an_exported_tree_holds_its_commands_and_decisions() {
    let d = Daemon::start_with_policy(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let (agent, root) = guard_tests::spawn_reading_pid({
        let mut c = Command::new(&claude);
        c.args([
            "-c",
            "echo $$; ls / >/dev/null; (exec 3<>/dev/tcp/127.0.0.2/5432) 2>/dev/null; sleep 600",
        ]);
        c
    });
    wait_for("the denial", Duration::from_secs(10), || {
        d.events()
            .into_iter()
            .find(|e| e["rule"] == "prod-db" && e["root"]["pid"] == root)
    });
    let out = d.cli(&["freeze", &root.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let file = dir.path().join("bundle.json");
    let out = d.cli(&["export", &root.to_string(), "-o", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", output_text(&out));
    let b: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(b["root"]["pid"], root, "{b}");
    assert_eq!(b["agent"], "claude-code");
    let commands = b["commands"].as_array().unwrap();
    assert!(commands.iter().any(|c| c["comm"] == "ls"), "{commands:?}");
    let decisions = b["decisions"].as_array().unwrap();
    assert!(
        decisions
            .iter()
            .any(|e| e["rule"] == "prod-db" && e["result"] == "denied"),
        "{decisions:?}"
    );
    assert!(
        decisions
            .iter()
            .any(|e| e["kind"] == "response" && e["action"] == "freeze"),
        "{decisions:?}"
    );
    assert!(
        b["running"]
            .as_array()
            .unwrap()
            .iter()
            .any(|p| p["pid"] == root),
        "the frozen tree is listed as running: {b}"
    );
    assert!(!b["events"].as_array().unwrap().is_empty());
    let out = d.cli(&["kill", &root.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    drop(agent);
}

/// An agent that, once `go` appears, runs `offence` (what a hold rule refuses), then keeps
/// ticking; with a runaway that double-forked out of its session.
fn holding_agent(dir: &Path, offence: &str) -> (Proc, u32) {
    let claude = dir.join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let script = format!(
        "(setsid bash -c 'while :; do echo x >> {d}/away; sleep 0.05; done' &) ; \
         until [ -e {d}/go ]; do sleep 0.05; done; \
         {offence}; \
         while :; do echo y >> {d}/here; sleep 0.05; done",
        d = dir.display()
    );
    let mut c = Command::new(&claude);
    // The whole tree's stderr: where the offender has exited before the daemon writes the
    // reason line (kernels whose programs cannot stop it at once), its parent gets it.
    c.args(["-c", &script])
        .stderr(std::fs::File::create(dir.join("reason")).unwrap());
    let p = Proc::spawn(c);
    let pid = p.pid();
    (p, pid)
}

#[test]
fn a_hold_rule_freezes_the_tree_until_a_human_decides_or_the_timeout_kills_it() {
    let hooks = tempfile::tempdir().unwrap();
    let hook = HookServer::start(hooks.path().join("hooks.jsonl"));
    // A third tree writes to a file a path rule holds.
    let (filed_dir, vault) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let victim = vault.path().join("victim");
    std::fs::write(&victim, "intact").unwrap();
    let d = Daemon::start_with_policy(&format!(
        "{POLICY}\x20   - {{ name: prod-admin, ips: [127.0.0.3], ports: [5432], action: hold }}\n\
         \x20 paths:\n    - {{ name: prod-files, paths: [\"{}\"], access: [write, delete], \
         action: hold }}\n\
         \x20 hold: {{ timeout: 6s, then: kill }}\n\
         \x20 notify: {{ webhook: {{ url: \"http://127.0.0.1:{}/hook\", format: json }} }}\n",
        vault.path().display(),
        hook.port
    ));
    let thawed_dir = tempfile::tempdir().unwrap();
    let killed_dir = tempfile::tempdir().unwrap();
    let connect = "(exec 3<>/dev/tcp/127.0.0.3/5432)";
    let (_a, thawed) = holding_agent(thawed_dir.path(), connect);
    let (_b, killed) = holding_agent(killed_dir.path(), connect);
    let (_c, filed) = holding_agent(
        filed_dir.path(),
        &format!("echo overwritten > {}", victim.display()),
    );
    let mut reaper = Reaper(Vec::new());
    for (dir, root) in [
        (thawed_dir.path(), thawed),
        (killed_dir.path(), killed),
        (filed_dir.path(), filed),
    ] {
        let m = wait_for("the tree and its runaway", Duration::from_secs(10), || {
            let m = members(&d, root);
            (m.len() >= 2 && size(&dir.join("away")) > 0).then_some(m)
        });
        reaper.0.extend(m);
        std::fs::write(dir.join("go"), "").unwrap();
    }
    for root in [thawed, killed, filed] {
        wait_for("the tree to be held", Duration::from_secs(10), || {
            let m = members(&d, root);
            (!m.is_empty() && m.iter().all(|p| stopped(*p))).then_some(())
        });
    }
    // Held: nothing of either tree runs any more.
    let here = thawed_dir.path().join("here");
    let sizes = || {
        [thawed_dir.path(), killed_dir.path()]
            .map(|p| (size(&p.join("here")), size(&p.join("away"))))
    };
    let before = sizes();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(sizes(), before, "the held trees do not run");
    let ran_before = size(&here);
    // The file tree: its write was refused, and a human ends it.
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "intact");
    let reason = wait_for(
        "the file hold's reason line",
        Duration::from_secs(10),
        || {
            let r = std::fs::read_to_string(filed_dir.path().join("reason")).ok()?;
            r.contains("prod-files").then_some(r)
        },
    );
    assert!(reason.contains("frozen until a human decides"), "{reason}");
    let filed_members = members(&d, filed);
    let out = d.cli(&["kill", &filed.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for(
        "the file tree to be killed",
        Duration::from_secs(10),
        || filed_members.iter().all(|p| !alive(*p)).then_some(()),
    );
    // An untagged process writes there as before.
    std::fs::write(&victim, "changed by a human").unwrap();

    let out = d.cli(&["thaw", &thawed.to_string()]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the thawed tree to run", Duration::from_secs(10), || {
        (size(&here) > ran_before).then_some(())
    });
    let reason = std::fs::read_to_string(thawed_dir.path().join("reason")).unwrap_or_default();
    assert!(reason.contains("frozen until a human decides"), "{reason}");

    // Nobody decides for the other one: the timeout kills all of it.
    let tree = members(&d, killed);
    wait_for(
        "the timeout to kill the tree",
        Duration::from_secs(20),
        || tree.iter().all(|p| !alive(*p)).then_some(()),
    );
    let evs = wait_for("the hold events", Duration::from_secs(10), || {
        let evs: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| e["kind"] == "response")
            .collect();
        let has = |root: u32, a: &str| {
            evs.iter()
                .any(|e| e["root"]["pid"] == root && e["action"] == a)
        };
        (has(thawed, "hold") && has(thawed, "thaw") && has(killed, "hold") && has(killed, "kill"))
            .then_some(evs)
    });
    assert!(
        evs.iter().any(|e| e["root"]["pid"] == killed
            && e["action"] == "kill"
            && e["object"]["operation"]
                .as_str()
                .unwrap()
                .contains("hold timed out")),
        "{evs:?}"
    );
    assert!(
        d.events().iter().any(|e| e["kind"] == "net_connect"
            && e["rule"] == "prod-admin"
            && e["action"] == "hold"
            && e["result"] == "denied"),
        "the denial is recorded"
    );
    assert!(alive(thawed), "the thawed tree lives on");

    // The webhook heard each hold, the human's thaw and the timeout's kill.
    let docs = wait_for("the trees' webhooks", Duration::from_secs(15), || {
        let docs = hook.documents();
        let has = |root: u32, event: &str, by: &str| {
            docs.iter().any(|d| {
                d["event"] == event
                    && d["tree"]["root_pid"] == root
                    && d["tree"]["by"].as_str().is_some_and(|b| b.starts_with(by))
            })
        };
        (has(thawed, "tree.frozen", "rule prod-admin")
            && has(killed, "tree.frozen", "rule prod-admin")
            && has(thawed, "tree.thawed", "uid 0")
            && has(killed, "tree.killed", "timeout")
            && has(filed, "tree.frozen", "rule prod-files")
            && has(filed, "tree.killed", "uid 0"))
        .then_some(docs)
    });
    let frozen = docs
        .iter()
        .find(|d| d["event"] == "tree.frozen" && d["tree"]["root_pid"] == killed)
        .unwrap();
    assert!(
        frozen["tree"]["detail"]
            .as_str()
            .is_some_and(|t| t.contains("127.0.0.3:5432") && t.contains("killed")),
        "{frozen}"
    );
    assert!(
        frozen["thaw"]
            .as_str()
            .is_some_and(|t| t.starts_with(&format!("guard thaw {killed}:"))),
        "{frozen}"
    );
}
