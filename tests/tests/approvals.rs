//! Ask a human: an `ask` rule denies a tagged tree's connect and opens a request; an
//! approver's `guard approve` lets that tree's retry through until the approval expires (the
//! kernel checks the deadline itself); a tagged process or a user who is not an approver
//! cannot approve; `guard deny` closes a request. Every step is a `request` event.

#[allow(dead_code, reason = "shared with the network tests")]
#[path = "network_support/mod.rs"]
mod network_support;

use std::{path::Path, process::Command, time::Duration};

use guard_tests::{Daemon, Proc, as_nobody, output, output_text, wait_for, world_executable_guard};
use network_support::{CLIENT, Listener, Net};
use serde_json::Value;

fn policy(db: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: ask }}\nspec:\n\
         \x20 agents:\n    - {{ name: claude-code, executables: [claude] }}\n\
         \x20 endpoints:\n    - {{ name: prod-db, ips: [{db}], ports: [5432], action: ask }}\n"
    )
}

/// An agent tree that makes one connect attempt each time a `goN` file appears, writing the
/// outcome (`ok` or `err ERRNO`) to `outN`.
fn agent(dir: &Path, db: &str, attempts: u32) -> Proc {
    let claude = dir.join("claude");
    if !claude.exists() {
        std::fs::copy("/bin/bash", &claude).unwrap();
    }
    let d = dir.display();
    let script = format!(
        "for i in $(seq 1 {attempts}); do until [ -e {d}/go$i ]; do sleep 0.05; done; \
         python3 -c \"$CLIENT\" tcp {db} 5432 > {d}/out$i 2>> {d}/reasons; done"
    );
    let mut c = Command::new(&claude);
    c.env("CLIENT", CLIENT).args(["-c", &script]);
    Proc::spawn(c)
}

/// Attempt `i` of the agent in `dir`: its first line.
fn attempt(dir: &Path, i: u32) -> String {
    std::fs::write(dir.join(format!("go{i}")), "").unwrap();
    wait_for(&format!("attempt {i}"), Duration::from_secs(15), || {
        let text = std::fs::read_to_string(dir.join(format!("out{i}"))).ok()?;
        text.lines().next().map(str::to_owned)
    })
}

fn requests(d: &Daemon) -> Vec<Value> {
    let out = d.cli(&["requests", "-o", "json"]);
    assert!(out.status.success(), "{}", output_text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn request_events(d: &Daemon) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|e| e["kind"] == "request")
        .collect()
}

#[test]
fn an_approved_request_lets_the_retry_through_until_it_expires() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let d = Daemon::start_with_policy(&policy(&net.a));
    let dir = tempfile::tempdir().unwrap();
    let other_dir = tempfile::tempdir().unwrap();
    let tree = agent(dir.path(), &net.a, 4);
    let root = tree.pid();

    assert_eq!(
        attempt(dir.path(), 1),
        "err 1",
        "an ask rule denies at once"
    );
    let open = wait_for("the request", Duration::from_secs(10), || {
        requests(&d).into_iter().find(|r| r["root_pid"] == root)
    });
    assert_eq!(open["state"], "open", "{open}");
    assert_eq!(open["rule"], "prod-db", "{open}");
    assert_eq!(open["agent"], "claude-code", "{open}");
    assert_eq!(open["destination"], format!("{}:5432", net.a), "{open}");
    let id = open["id"].as_u64().unwrap().to_string();
    let reasons = wait_for("the reason line", Duration::from_secs(10), || {
        let r = std::fs::read_to_string(dir.path().join("reasons")).ok()?;
        r.contains("a human was asked").then_some(r)
    });
    assert!(reasons.contains(&format!("(request {id})")), "{reasons}");

    // Nobody but an approver, and never a tagged process, may answer.
    let public = world_executable_guard();
    let mut c = Command::new(&public.path);
    c.envs(d.env()).args(["approve", &id]);
    as_nobody(&mut c);
    let out = output(c);
    assert!(
        output_text(&out).contains("not an approver"),
        "{}",
        output_text(&out)
    );
    let mut run = d.guard();
    run.args(["run", "--"])
        .arg(guard_tests::guard_bin())
        .args(["approve", &id]);
    let out = output(run);
    assert!(
        output_text(&out).contains("a tagged process may not approve"),
        "{}",
        output_text(&out)
    );
    for (args, says) in [
        (vec!["approve", "999999"], "no request 999999"),
        (vec!["approve", &id, "--for", "25h"], "out of range"),
    ] {
        let out = d.cli(&args);
        assert!(
            !out.status.success() && output_text(&out).contains(says),
            "{}",
            output_text(&out)
        );
    }
    assert_eq!(listener.count("tcp:5432"), 0, "nothing got through");

    let out = d.cli(&[
        "approve",
        &id,
        "--for",
        "4s",
        "--reason",
        "migration window",
    ]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        attempt(dir.path(), 2),
        "ok",
        "the approved tree's retry goes through"
    );
    wait_for("the connection", Duration::from_secs(5), || {
        (listener.count("tcp:5432") == 1).then_some(())
    });
    // Another tree of the same agent was not approved.
    let other = agent(other_dir.path(), &net.a, 1);
    assert_eq!(attempt(other_dir.path(), 1), "err 1");
    drop(other);

    // After the deadline the kernel refuses again, and a new request is opened.
    std::thread::sleep(Duration::from_secs(5));
    assert_eq!(attempt(dir.path(), 3), "err 1", "the approval expired");
    let again = wait_for("a new request", Duration::from_secs(10), || {
        requests(&d)
            .into_iter()
            .find(|r| r["root_pid"] == root && r["state"] == "open")
    });
    let id2 = again["id"].as_u64().unwrap().to_string();
    assert_ne!(id2, id);
    let out = d.cli(&["deny", &id2, "--reason", "not now"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        requests(&d)
            .iter()
            .all(|r| r["id"].as_u64().unwrap().to_string() != id2)
    );
    assert_eq!(attempt(dir.path(), 4), "err 1");

    let evs = wait_for("the request events", Duration::from_secs(10), || {
        let evs = request_events(&d);
        let has = |a: &str| {
            evs.iter()
                .any(|e| e["action"] == a && e["root"]["pid"] == root)
        };
        (has("ask") && has("approve") && has("expire") && has("deny")).then_some(evs)
    });
    let approve = evs.iter().find(|e| e["action"] == "approve").unwrap();
    assert!(
        approve["object"]["operation"]
            .as_str()
            .unwrap()
            .contains("migration window"),
        "{approve}"
    );
    // Untagged processes never meet the rule.
    let out = output({
        let mut c = Command::new("python3");
        c.args(["-c", CLIENT, "tcp", &net.a, "5432"]);
        c
    });
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("ok"));
    drop(tree);
}
