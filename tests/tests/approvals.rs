//! Ask a human: an `ask` rule denies a tagged tree's connect and opens a request; an
//! approver's `guard approve` lets that tree's retry through until the approval expires (the
//! kernel checks the deadline itself); a tagged process or a user who is not an approver
//! cannot approve; `guard deny` closes a request. Every step is a `request` event.

#[allow(dead_code, reason = "shared with the network tests")]
#[path = "network_support/mod.rs"]
mod network_support;

use std::{path::Path, process::Command, time::Duration};

use guard_tests::{
    Daemon, Proc, as_nobody, output, output_text, wait_for, webhook::HookServer,
    world_executable_guard,
};
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
/// outcome (`ok` or `err ERRNO`) to `outN`; each client lingers 0.3 s (as a tool reporting
/// its error does), so its command line can be read.
fn agent(dir: &Path, db: &str, attempts: u32) -> Proc {
    let claude = dir.join("claude");
    if !claude.exists() {
        std::fs::copy("/bin/bash", &claude).unwrap();
    }
    let d = dir.display();
    let script = format!(
        "for i in $(seq 1 {attempts}); do until [ -e {d}/go$i ]; do sleep 0.05; done; \
         python3 -c \"$CLIENT\" tcp {db} 5432 0.3 > {d}/out$i 2>> {d}/reasons; done"
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
    // The request names the process that asked: its command line and its ancestry.
    let open = wait_for("the request's process", Duration::from_secs(10), || {
        requests(&d)
            .into_iter()
            .find(|r| r["root_pid"] == root && r["argv"].is_array())
    });
    let argv: Vec<&str> = open["argv"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        argv[0].ends_with("python3") && argv.contains(&"tcp"),
        "{open}"
    );
    let ancestry = open["ancestry"].as_array().unwrap();
    assert!(
        ancestry
            .iter()
            .any(|a| a["pid"] == root && a["agent_root"] == true),
        "{open}"
    );
    let table = output_text(&d.cli(&["requests"]));
    assert!(
        table.contains("$ ") && table.contains(&format!("{root} claude (agent root)")),
        "{table}"
    );
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
    // The client that asked has exited: a process approval would cover nothing.
    wait_for("the first client to exit", Duration::from_secs(10), || {
        let out = std::fs::read_to_string(dir.path().join("out1")).ok()?;
        out.contains("after").then_some(())
    });
    std::thread::sleep(Duration::from_millis(100));
    for (args, says) in [
        (vec!["approve", "999999"], "no request 999999"),
        (vec!["approve", &id, "--for", "25h"], "out of range"),
        (vec!["approve", &id, "--scope", "process"], "has exited"),
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

/// A tree of `claude` that writes `attemptN` into `target` each time a `goN` file appears,
/// writing `ok` or `err` to `outN`. The writer lingers 0.3 s with its stderr in `reasons`,
/// where a kernel decision's reason line arrives after the refused call has returned.
fn writer(dir: &Path, target: &Path, attempts: u32) -> Proc {
    let claude = dir.join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let (d, t) = (dir.display(), target.display());
    let script = format!(
        "for i in $(seq 1 {attempts}); do until [ -e {d}/go$i ]; do sleep 0.05; done; \
         if I=$i bash -c 'echo attempt$I > {t}; r=$?; sleep 0.3; exit $r' 2>> {d}/reasons; \
         then echo ok > {d}/out$i; \
         else echo err > {d}/out$i; fi; done"
    );
    let mut c = Command::new(&claude);
    c.args(["-c", &script]);
    Proc::spawn(c)
}

#[test]
fn a_path_rule_that_asks_lets_the_approved_write_through() {
    let vault = tempfile::tempdir().unwrap();
    let config = vault.path().join("config");
    std::fs::write(&config, "original").unwrap();
    let d = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: ask }}\nspec:\n\
         \x20 agents:\n    - {{ name: claude-code, executables: [claude] }}\n\
         \x20 paths:\n    - {{ name: prod-config, paths: [\"{}\"], access: [write], \
         action: ask }}\n",
        vault.path().display()
    ));
    let (dir, other_dir) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let tree = writer(dir.path(), &config, 2);
    assert_eq!(attempt(dir.path(), 1), "err", "an ask rule refuses at once");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "original");
    let open = wait_for("the request", Duration::from_secs(10), || {
        requests(&d)
            .into_iter()
            .find(|r| r["root_pid"] == tree.pid())
    });
    assert_eq!(open["rule"], "prod-config", "{open}");
    assert!(
        open["destination"]
            .as_str()
            .is_some_and(|t| t.contains(&config.display().to_string()) && t.contains("write")),
        "{open}"
    );
    let id = open["id"].as_u64().unwrap().to_string();
    wait_for("the reason line", Duration::from_secs(10), || {
        let r = std::fs::read_to_string(dir.path().join("reasons")).ok()?;
        r.contains(&format!("(request {id})")).then_some(())
    });

    let out = d.cli(&["approve", &id, "--for", "60s"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert_eq!(
        attempt(dir.path(), 2),
        "ok",
        "the approved tree's retry writes"
    );
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "attempt2\n");
    // Another tree of the same agent was not approved; an untagged writer never asks.
    let other = writer(other_dir.path(), &config, 1);
    assert_eq!(attempt(other_dir.path(), 1), "err");
    drop(other);
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "attempt2\n");
    std::fs::write(&config, "by a human").unwrap();
    let evs = wait_for("the file decisions", Duration::from_secs(10), || {
        let evs: Vec<Value> = d
            .events()
            .into_iter()
            .filter(|e| e["rule"] == "prod-config" && e["root"]["pid"] == tree.pid())
            .collect();
        let has = |r: &str| evs.iter().any(|e| e["action"] == "ask" && e["result"] == r);
        (has("denied") && has("allowed")).then_some(evs)
    });
    assert!(
        evs.iter()
            .all(|e| !e["ancestry"].as_array().unwrap().is_empty()),
        "{evs:?}"
    );
    drop(tree);
}

/// A long-lived process of the tree: a connect, then another once `again` appears in `dir`;
/// the outcomes in `first` and `second`.
const ASKER: &str = r#"
import os, socket, sys, time
addr, port, d = sys.argv[1], int(sys.argv[2]), sys.argv[3]
def attempt():
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((addr, port))
        return "ok"
    except OSError as e:
        return "err %d" % e.errno
    finally:
        s.close()
open(d + "/first", "w").write(attempt())
while not os.path.exists(d + "/again"):
    time.sleep(0.05)
open(d + "/second", "w").write(attempt())
"#;

#[test]
fn a_process_approval_covers_that_process_alone() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let d = Daemon::start_with_policy(&policy(&net.a));
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let p = dir.path().display();
    let db = &net.a;
    // The asker, then (once it is done) another process of the same tree.
    let script = format!(
        "python3 -c \"$ASKER\" {db} 5432 {p} 2>/dev/null; \
         python3 -c \"$CLIENT\" tcp {db} 5432 > {p}/third 2>/dev/null"
    );
    let mut c = Command::new(&claude);
    c.env("ASKER", ASKER)
        .env("CLIENT", CLIENT)
        .args(["-c", &script]);
    let tree = Proc::spawn(c);
    let read = |name: &str| {
        let f = dir.path().join(name);
        wait_for(name, Duration::from_secs(15), || {
            std::fs::read_to_string(&f).ok().filter(|t| !t.is_empty())
        })
    };
    assert_eq!(read("first"), "err 1");
    let open = wait_for("the request", Duration::from_secs(10), || {
        requests(&d)
            .into_iter()
            .find(|r| r["root_pid"] == tree.pid())
    });
    let id = open["id"].as_u64().unwrap().to_string();
    let asker = open["pid"].as_u64().unwrap();
    assert_ne!(
        asker,
        u64::from(tree.pid()),
        "the python process asked, not the root"
    );
    let out = d.cli(&["approve", &id, "--scope", "process", "--for", "60s"]);
    assert!(out.status.success(), "{}", output_text(&out));
    assert!(
        output_text(&out).contains("approved for the process"),
        "{}",
        output_text(&out)
    );
    std::fs::write(dir.path().join("again"), "").unwrap();
    assert_eq!(
        read("second"),
        "ok",
        "the approved process's retry goes through"
    );
    assert_eq!(
        read("third").lines().next().unwrap_or_default(),
        "err 1",
        "another process of the same tree was not approved"
    );
    wait_for("the connection", Duration::from_secs(5), || {
        (listener.count("tcp:5432") == 1).then_some(())
    });
    let approved = requests(&d)
        .into_iter()
        .find(|r| r["id"].as_u64().unwrap().to_string() == id)
        .unwrap();
    assert_eq!(approved["scope"], "process", "{approved}");
    drop(tree);
}

/// HMAC-SHA256 of `TIMESTAMP.BODY` under `key`, as a receiver checks it (python's hmac).
fn expected_signature(key: &str, timestamp: &str, body: &str) -> String {
    let mut c = Command::new("python3");
    c.args([
        "-c",
        "import hmac, hashlib, sys; print(hmac.new(sys.argv[1].encode(), \
         (sys.argv[2] + '.' + sys.argv[3]).encode(), hashlib.sha256).hexdigest())",
        key,
        timestamp,
        body,
    ]);
    String::from_utf8_lossy(&output(c).stdout).trim().to_owned()
}

fn with_webhook(db: &str, port: &str, path: &str, key: &Path, format: &str) -> String {
    format!(
        "{}  notify:\n    webhook: {{ url: \"http://127.0.0.1:{port}{path}\", format: {format}, \
         secretFile: \"{}\", timeout: 2s, retries: 1 }}\n",
        policy(db),
        key.display()
    )
}

#[test]
fn every_request_reaches_the_webhook_signed_and_failed_deliveries_are_counted() {
    let net = Net::new();
    let _listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let dir = tempfile::tempdir().unwrap();
    let (key, hooks) = (dir.path().join("hook.key"), dir.path().join("hooks.jsonl"));
    std::fs::write(&key, "s3cret-hmac-key\n").unwrap();
    let server = HookServer::start(hooks);
    let port = server.port.clone();
    let d = Daemon::start_with_policy(&with_webhook(&net.a, &port, "/hook", &key, "json"));

    // Opened: a signed JSON document naming the request and how to answer it.
    let tree = agent(dir.path(), &net.a, 2);
    assert_eq!(attempt(dir.path(), 1), "err 1");
    let opened = wait_for(
        "the opened request's webhook",
        Duration::from_secs(15),
        || {
            server.deliveries().into_iter().find(|h| {
                h["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("request.opened"))
            })
        },
    );
    let body = opened["body"].as_str().unwrap();
    let doc: Value = serde_json::from_str(body).unwrap();
    assert_eq!(opened["path"], "/hook");
    assert_eq!(doc["request"]["agent"], "claude-code", "{doc}");
    assert_eq!(doc["request"]["rule"], "prod-db", "{doc}");
    assert_eq!(doc["request"]["root_pid"], tree.pid(), "{doc}");
    assert_eq!(doc["request"]["destination"], format!("{}:5432", net.a));
    let id = doc["request"]["id"].as_u64().unwrap();
    assert_eq!(doc["approve"], format!("guard approve {id}"));
    // Who asked, by process: the ancestry reaches the agent root (names, no command lines).
    assert!(
        doc["request"]["ancestry"].as_array().is_some_and(|a| a
            .iter()
            .any(|p| p["pid"] == tree.pid() && p["agent_root"] == true)),
        "{doc}"
    );
    assert!(
        !body.contains("CLIENT") && !body.contains("argv"),
        "no command line: {body}"
    );
    let ts = opened["headers"]["x-guard-timestamp"]
        .as_str()
        .unwrap_or_default();
    assert_eq!(
        opened["headers"]["x-guard-signature-256"],
        format!("sha256={}", expected_signature("s3cret-hmac-key", ts, body)),
        "{opened}"
    );

    // Approved: another delivery; status counts them.
    let out = d.cli(&["approve", &id.to_string(), "--for", "1m"]);
    assert!(out.status.success(), "{}", output_text(&out));
    wait_for("the approval's webhook", Duration::from_secs(15), || {
        server
            .deliveries()
            .iter()
            .any(|h| {
                h["body"]
                    .as_str()
                    .is_some_and(|b| b.contains("request.approved"))
            })
            .then_some(())
    });
    let st = wait_for("two deliveries in status", Duration::from_secs(10), || {
        d.status_json()
            .filter(|s| s["notify"]["delivered"].as_u64() >= Some(2))
    });
    assert_eq!(st["notify"]["signed"], true, "{}", st["notify"]);
    assert_eq!(st["notify"]["failed"], 0, "{}", st["notify"]);

    // A receiver that fails: retried, then counted as failed with the answer in status. The
    // chat format carries the same request as text.
    d.admin_writes(
        d.policy.as_ref().unwrap(),
        &with_webhook(&net.a, &port, "/fail", &key, "slack"),
    );
    wait_for("the new webhook", Duration::from_secs(10), || {
        d.status_json()
            .filter(|s| s["notify"]["format"] == "slack")
            .map(drop)
    });
    let other = tempfile::tempdir().unwrap();
    let _tree2 = agent(other.path(), &net.a, 1);
    assert_eq!(attempt(other.path(), 1), "err 1");
    let st = wait_for("the failed delivery", Duration::from_secs(20), || {
        d.status_json().filter(|s| s["notify"]["failed"] == 1)
    });
    let error = st["notify"]["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains("500") && error.contains("2 attempts"),
        "{error}"
    );
    let fails: Vec<Value> = server
        .deliveries()
        .into_iter()
        .filter(|h| h["path"] == "/fail")
        .collect();
    assert_eq!(fails.len(), 2, "one attempt and one retry: {fails:?}");
    let text: Value = serde_json::from_str(fails[0]["body"].as_str().unwrap()).unwrap();
    assert!(
        text["text"]
            .as_str()
            .is_some_and(|t| t.contains("guard approve")),
        "{text}"
    );
}

#[test]
fn requests_outlive_a_daemon_restart_while_their_trees_do() {
    let net = Net::new();
    let _listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let mut d = Daemon::start_with_policy(&policy(&net.a));
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let mut tree_a = agent(a.path(), &net.a, 2);
    let _tree_b = agent(b.path(), &net.a, 2);
    assert_eq!(attempt(a.path(), 1), "err 1");
    assert_eq!(attempt(b.path(), 1), "err 1");
    let ids = |d: &Daemon| -> Vec<(u32, String)> {
        requests(d)
            .iter()
            .map(|r| {
                (
                    r["root_pid"].as_u64().unwrap_or(0) as u32,
                    r["state"].as_str().unwrap_or("").to_owned(),
                )
            })
            .collect()
    };
    let both = wait_for("both requests", Duration::from_secs(10), || {
        let r = requests(&d);
        (r.len() == 2).then_some(r)
    });
    let id_of = |root: u32| {
        both.iter()
            .find(|r| r["root_pid"] == root)
            .and_then(|r| r["id"].as_u64())
            .unwrap()
            .to_string()
    };
    let (id_a, id_b) = (id_of(tree_a.pid()), id_of(_tree_b.pid()));
    let out = d.cli(&["approve", &id_b, "--for", "10m"]);
    assert!(out.status.success(), "{}", output_text(&out));

    // Restarted: the open request and the approval are back, and the open one can still be
    // approved.
    d.restart();
    let mut after = ids(&d);
    after.sort();
    let mut want = vec![
        (tree_a.pid(), "open".to_owned()),
        (_tree_b.pid(), "approved".to_owned()),
    ];
    want.sort();
    assert_eq!(after, want, "{}", d.log());
    assert!(d.log().contains("taken back"), "{}", d.log());
    assert_eq!(
        attempt(b.path(), 2),
        "ok",
        "the approval still lets b through"
    );

    // A's tree ends: the next daemon drops its request and says so.
    let _ = tree_a.child.kill();
    let _ = tree_a.child.wait();
    wait_for("tree a to be gone", Duration::from_secs(10), || {
        (!std::path::Path::new(&format!("/proc/{}", tree_a.pid())).exists()).then_some(())
    });
    d.restart();
    let left = ids(&d);
    assert_eq!(
        left,
        vec![(_tree_b.pid(), "approved".to_owned())],
        "{}",
        d.log()
    );
    let out = d.cli(&["approve", &id_a]);
    assert!(
        output_text(&out).contains(&format!("no request {id_a}")),
        "{}",
        output_text(&out)
    );
}
