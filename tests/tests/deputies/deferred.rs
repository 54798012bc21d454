//! Deferred execution: files an agent wrote stay its when someone else runs them.

use super::*;

/// A connect to `ADDR:5432` through the python client, as a `#!` script.
fn client_script(addr: &str) -> String {
    format!("#!/bin/sh\nexec python3 -c \"$CLIENT\" tcp {addr} 5432\n")
}

/// The client as python code to give an interpreter.
fn client_py(addr: &str) -> String {
    format!("import sys\nsys.argv = ['client', 'tcp', '{addr}', '5432']\n{CLIENT}")
}

#[test]
fn files_an_agent_wrote_stay_its_when_someone_else_runs_them() {
    let ProdDb {
        _net,
        db,
        listener,
        daemon,
    } = ProdDb::start();
    daemon.assert_tier();
    let deferred = rule_status(&daemon, "guard:deferred-execution");
    let mechanism = deferred["mechanism"].as_str().unwrap().to_owned();
    // bpf-lsm, and the fallback tier's fentry programs: binaries, scripts and readers;
    // the ctime tracepoints alone: binaries.
    let scripts = mechanism.starts_with("enforced");
    let binaries = scripts || mechanism.starts_with("partly");
    println!("guard:deferred-execution on this tier: {mechanism}");
    assert_fentry_or_why(&daemon, &mechanism);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    let sides = Sides::new();
    // The agent builds a tool (a copy of curl), writes a hook and a python job.
    let (hook, job) = (client_script(&db), client_py(&db));
    let files = [("HOOK", hook.as_str()), ("JOB", job.as_str())];
    let write = |suffix: &str| {
        format!(
            "cp /usr/bin/curl {d}/fetch{suffix} && printf '%s' \"$HOOK\" > {d}/hook{suffix} && \
             chmod +x {d}/hook{suffix} && printf '%s' \"$JOB\" > {d}/job{suffix}.py"
        )
    };
    let out = bash_with(&sides.claude, &write(""), &files);
    assert!(out.status.success(), "the agent's writes: {}", text(&out));
    // The same files, written by the human.
    let out = bash_with(Path::new("bash"), &write("-own"), &files);
    assert!(out.status.success(), "the human's writes: {}", text(&out));

    // From a shell that outlives it, as in a terminal: a denied curl exits at once, and the
    // notice then goes to the shell it was run from.
    let fetch = |name: &str| {
        human(&format!(
            "{d}/{name} -s -m 3 -o /dev/null http://{db}:5432/; s=$?; sleep 1; exit $s"
        ))
    };
    let before = listener.count("tcp:5432");
    // A binary the agent built: its runner is the agent's, on every tier that records writes.
    let out = fetch("fetch");
    if binaries {
        assert_eq!(
            out.status.code(),
            Some(7),
            "the agent's binary connected: {}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("written by an AI agent"),
            "the runner is told why: {}",
            text(&out)
        );
        let ev = wait_for("the deferred root's event", Duration::from_secs(10), || {
            daemon.events().into_iter().find(|e| {
                e["kind"] == "agent_exec"
                    && e["recognised"]["by"] == "deferred"
                    && e["recognised"]["matched"] == "fetch"
            })
        });
        assert_eq!(ev["agent"], "claude-code", "{ev}");
        assert!(!ev["ancestry"].as_array().unwrap().is_empty(), "{ev}");
    } else {
        assert!(mechanism.starts_with("not-covered"), "{mechanism}");
    }
    assert!(
        fetch("fetch-own").status.success(),
        "the human's own binary"
    );

    // A #! script and a script given to an interpreter.
    let hook = human(&format!("{d}/hook"));
    let job = human(&format!("python3 {d}/job.py"));
    if scripts {
        assert_eperm(&hook, "the agent's #! script");
        assert_eperm(&job, "the agent's python script");
        wait_for("the script roots' events", Duration::from_secs(10), || {
            let matched: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["recognised"]["by"] == "deferred")
                .map(|e| e["recognised"]["matched"].clone())
                .collect();
            (matched.contains(&Value::from("hook")) && matched.contains(&Value::from("job.py")))
                .then_some(())
        });
    } else {
        let st = daemon.status_json().unwrap();
        let nc = st["deputies"]["not_covered"].to_string();
        assert!(nc.contains("agent-written script"), "{nc}");
    }
    assert_ok(
        &human(&format!("{d}/hook-own")),
        "the human's own #! script",
    );
    assert_ok(
        &human(&format!("python3 {d}/job-own.py")),
        "the human's own python script",
    );
    // Nothing the agent wrote reached the endpoint; the human's own files did.
    wait_for("the human's connections", Duration::from_secs(10), || {
        (listener.count("tcp:5432") >= before + 3).then_some(())
    });
}

#[test]
fn git_reading_a_config_an_agent_wrote_runs_contained() {
    let ProdDb {
        _net,
        db,
        listener: _listener,
        daemon,
    } = ProdDb::start();
    let tier = daemon.assert_tier();
    let mechanism = rule_status(&daemon, "guard:deferred-execution")["mechanism"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        tier != "bpf-lsm" || mechanism.starts_with("enforced"),
        "{mechanism}"
    );
    assert_fentry_or_why(&daemon, &mechanism);
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display().to_string();
    for repo in ["theirs", "mine"] {
        let out = human(&format!("git init -q {d}/{repo}"));
        assert!(out.status.success(), "git init: {}", text(&out));
    }
    // core.fsmonitor: a command git runs on `git status`. The agent sets it in its repository
    // (git config writes .git/config), the human in their own.
    let hook =
        |out: &str| format!("sh -c 'python3 -c \"$CLIENT\" tcp {db} 5432 > {d}/{out}; exit 1'");
    let sides = Sides::new();
    for (program, repo) in [
        (sides.claude.as_path(), "theirs"),
        (Path::new("bash"), "mine"),
    ] {
        let out = bash_with(
            program,
            &format!("git -C {d}/{repo} config core.fsmonitor \"$HOOK\""),
            &[("HOOK", &hook(&format!("{repo}.out")))],
        );
        assert!(out.status.success(), "git config in {repo}: {}", text(&out));
    }
    // The human's `git status` in each.
    let _ = human(&format!("git -C {d}/theirs status"));
    let _ = human(&format!("git -C {d}/mine status"));
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(
        read("mine.out").starts_with("ok"),
        "the human's own fsmonitor: {:?}",
        read("mine.out")
    );
    if mechanism.starts_with("enforced") {
        assert!(
            read("theirs.out").starts_with("err 1"),
            "the agent's fsmonitor ran uncontained: {:?}",
            read("theirs.out")
        );
        let ev = wait_for("git's deferred root", Duration::from_secs(10), || {
            daemon.events().into_iter().find(|e| {
                e["recognised"]["by"] == "deferred" && e["recognised"]["matched"] == "config"
            })
        });
        assert_eq!(ev["agent"], "claude-code", "{ev}");
    } else {
        let st = daemon.status_json().unwrap();
        let nc = st["deputies"]["not_covered"].to_string();
        assert!(nc.contains(".git/config"), "{nc}");
    }
}

/// The guests' Debian kernels allow `fentry` on `security_file_open` and
/// `security_bprm_check`: there the fallback tier covers scripts and readers. A kernel that
/// refuses it (this machine's) leaves the reason in the daemon's log.
fn assert_fentry_or_why(daemon: &Daemon, mechanism: &str) {
    if mechanism.starts_with("enforced") {
        return;
    }
    assert!(
        std::env::var_os("GUARD_VM").is_none(),
        "the guest kernel allows fentry, yet: {mechanism}"
    );
    assert!(
        daemon.log().contains("deferred execution: not attached"),
        "{mechanism}, and the daemon's log does not say why:\n{}",
        daemon.log()
    );
}
