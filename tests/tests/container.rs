//! guard as the DaemonSet runs it: its own image (`cargo xtask image`) in a privileged
//! container on the host's PID namespace, with the DaemonSet's mounts and nothing of the
//! host's filesystem besides: the daemon enters the host's mount namespace, so a host path
//! rule names the host's object, and agents on the host and in other containers are held to
//! it. Killing the container leaves the pinned programs enforcing; starting it again adopts
//! them. A real engine (podman, from Debian's packages) runs every container.

#[allow(dead_code, reason = "shared with the network tests")]
#[path = "network_support/mod.rs"]
mod network_support;

use std::{
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use guard_tests::{
    Daemon,
    container::{Container, Image, guard_image, podman},
    output, output_text, wait_for,
};
use network_support::{CLIENT, Listener, Net};
use serde_json::Value;

fn policy(db: &str, protected: &Path) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: node }}\nspec:\n\
         \x20 agents:\n    - {{ name: claude-code, env: [\"CLAUDECODE=1\"] }}\n\
         \x20 endpoints:\n    - {{ name: production, ips: [{db}], ports: [5432], action: deny }}\n\
         \x20 paths:\n    - {{ name: host-data, paths: [\"{}\"], access: [write, delete], \
         action: deny }}\n",
        protected.display()
    )
}

/// guard's image run the way `deploy/` runs it: privileged, the host's PID and network
/// namespaces, the policy directory read-only at /etc/guard, and the directories of the API
/// socket and the event log at the same paths inside (for the CLI in the container). The
/// daemon's own paths are the test daemon's, so that nothing collides with a host's guard.
fn start_guard(d: &Daemon) -> Container {
    let dir = d.dir.path().display().to_string();
    let env = d
        .env()
        .into_iter()
        .map(|(k, v)| format!("{k}={}", v.display()))
        .chain([format!("GUARD_DNS_SERVER={}", guard_tests::NO_DNS)]);
    let mut args: Vec<String> = [
        "--privileged",
        "--pid=host",
        "--network=host",
        "-v",
        &format!("{dir}:/etc/guard:ro"),
        "-v",
        &format!("{dir}:{dir}"),
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    args.extend(env.flat_map(|e| ["-e".to_owned(), e]));
    args.extend([
        guard_image(),
        "daemon".into(),
        "--policy".into(),
        "/etc/guard/policy.yaml".into(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    Container::start(&args)
}

/// The status of the daemon in `c`, once it serves (from the host's CLI). The container's
/// first process stays in the container as the daemon's parent.
fn serving(d: &Daemon, c: &Container) -> Value {
    wait_for(
        "the daemon in the container to serve",
        Duration::from_secs(90),
        || {
            let first = c.pid();
            assert!(first != 0, "the guard container stopped:\n{}", c.logs());
            let st = d.status_json()?;
            let pid = st["daemon_pid"].as_u64()?;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let parent = status.lines().find_map(|l| l.strip_prefix("PPid:"))?.trim();
            (parent == first.to_string()).then_some(st)
        },
    )
}

/// A connect to the production listener; `agent` marks the client as Claude Code's.
fn connect(db: &str, agent: bool) -> String {
    let mut c = Command::new("python3");
    c.args(["-c", CLIENT, "tcp", db, "5432"]);
    if agent {
        c.env("CLAUDECODE", "1");
    }
    let out = output(c);
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines().next().unwrap_or_default().to_owned()
}

fn sh(script: &str, agent: bool) -> Output {
    let mut c = Command::new("sh");
    c.args(["-c", script]);
    if agent {
        c.env("CLAUDECODE", "1");
    }
    output(c)
}

fn decisions(d: &Daemon, rule: &str) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|e| e["rule"] == rule && (e["result"] == "denied" || e["result"] == "killed"))
        .collect()
}

/// What this tier does to a delete under the rule: refused (bpf-lsm), or kill-on-detect
/// (the fallback tier: the offender dies, the name is gone), as `guard status` says.
struct Deletes {
    enforced: bool,
}

impl Deletes {
    fn of(rule: &Value) -> Self {
        let layer = rule["layers"]
            .as_array()
            .and_then(|l| {
                l.iter()
                    .find(|l| l["covers"].as_str().is_some_and(|c| c.contains("delete")))
            })
            .unwrap_or_else(|| panic!("no layer covers deletes: {rule}"));
        let status = layer["status"].as_str().unwrap_or_default();
        assert!(
            status == "enforced" || status == "kill-on-detect",
            "deletes are {status} on this tier: {layer}"
        );
        Self {
            enforced: status == "enforced",
        }
    }

    /// Delete a fresh file of the protected directory with `rm`, and see the tier's answer.
    fn check(&self, dir: &Path, from: &str, rm: impl FnOnce(&str) -> Output) {
        let victim = dir.join(format!("victim-{from}"));
        std::fs::write(&victim, "v").unwrap();
        let out = rm(&victim.display().to_string());
        let text = output_text(&out);
        if self.enforced {
            assert!(
                !out.status.success() && victim.exists(),
                "{from} delete refused: {text}"
            );
        } else {
            use std::os::unix::process::ExitStatusExt as _;
            let killed = out.status.signal() == Some(9) || out.status.code() == Some(137);
            assert!(killed, "{from}: the deleting agent is killed: {text}");
        }
    }
}

#[test]
fn guards_image_enforces_the_hosts_paths_and_restarts_on_its_pins() {
    let net = Net::new();
    let _listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let data = tempfile::tempdir().expect("tempdir");
    let protected = data.path().join("protected");
    std::fs::create_dir(&protected).unwrap();
    std::fs::write(protected.join("keep"), "data\n").unwrap();
    let d = Daemon::prepare(Some(&policy(&net.a, &protected)));
    let c = start_guard(&d);
    let st = serving(&d, &c);

    // The daemon sees the host: the rule's directory exists only on the host, not in the
    // container's filesystem.
    assert_eq!(st["view"]["view"], "host", "{}", st["view"]);
    assert_eq!(st["view"]["container"], "podman", "{}", st["view"]);
    let rule = st["path_rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == "host-data"))
        .unwrap_or_else(|| panic!("no host-data rule in {}", st["path_rules"]));
    assert!(
        rule["missing"].as_array().is_some_and(Vec::is_empty) && rule["object_count"] == 1,
        "the host's directory is resolved: {rule}"
    );

    // The CLI in the container and the host's agree.
    let inside = c.exec(&["/usr/local/bin/guard", "status", "-o", "json"]);
    let inside: Value = serde_json::from_slice(&inside.stdout).unwrap_or_else(|e| {
        panic!(
            "guard status in the container: {e}: {}",
            output_text(&inside)
        )
    });
    for key in [
        "daemon_pid",
        "tier",
        "enforcing",
        "policy",
        "policy_generation",
        "view",
    ] {
        assert_eq!(inside[key], st[key], "{key} inside and outside");
    }

    // A recognised agent on the host: denied at the listener and at the host directory;
    // the same commands untagged are not.
    assert_eq!(
        connect(&net.a, true),
        "err 1",
        "the agent's connect is refused"
    );
    assert_eq!(
        connect(&net.a, false),
        "ok",
        "an untagged connect goes through"
    );
    let deletes = Deletes::of(rule);
    let keep = protected.join("keep");
    let k = keep.display();
    assert!(!sh(&format!("echo x >> {k}"), true).status.success());
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "data\n");
    deletes.check(&protected, "host", |victim| {
        sh(&format!("rm -f {victim}"), true)
    });
    let fresh = protected.join("fresh");
    let out = sh(
        &format!(
            "echo y > {} && rm {k}.untagged-victim 2>/dev/null; true",
            fresh.display()
        ),
        false,
    );
    assert!(
        out.status.success() && fresh.exists(),
        "untagged write: {}",
        output_text(&out)
    );
    let e = wait_for("the connect decision", Duration::from_secs(10), || {
        decisions(&d, "production").into_iter().next()
    });
    assert!(
        e["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
        "the decision carries ancestry: {e}"
    );
    wait_for(
        "the host directory's decisions",
        Duration::from_secs(10),
        || {
            let n = decisions(&d, "host-data").len();
            (n >= 2).then_some(())
        },
    );

    // An agent in a workload container, with the host directory bind-mounted: the rule
    // follows the objects, not the path, so /data in the container is protected too.
    let workload = Image::busybox();
    let mount = format!("{}:/data", protected.display());
    let run = |agent: bool, script: &str| -> Output {
        let mut c = podman();
        c.args(["run", "--rm", "--network=host", "-v", &mount])
            .args(guard_tests::container::run_flags());
        if agent {
            c.args(["-e", "CLAUDECODE=1"]);
        }
        c.args([&workload.tag, "sh", "-c", script]);
        output(c)
    };
    let before = decisions(&d, "host-data").len();
    let out = run(true, "echo x >> /data/keep && echo written");
    assert!(
        !output_text(&out).contains("written"),
        "{}",
        output_text(&out)
    );
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "data\n");
    deletes.check(&protected, "container", |victim| {
        let name = Path::new(victim)
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        run(true, &format!("exec rm /data/{name}"))
    });
    let out = run(
        true,
        &format!("nc -w 3 {} 5432 </dev/null && echo connected", net.a),
    );
    assert!(
        !output_text(&out).contains("connected"),
        "{}",
        output_text(&out)
    );
    let out = run(false, "echo z > /data/other && rm /data/other && echo done");
    assert!(
        output_text(&out).contains("done"),
        "an unmatched container: {}",
        output_text(&out)
    );
    wait_for("the container's decisions", Duration::from_secs(10), || {
        (decisions(&d, "host-data").len() >= before + 2).then_some(())
    });

    // Killed, the pins keep enforcing; started again, the daemon adopts them.
    c.kill();
    assert!(d.status_json().is_none(), "the daemon is gone");
    assert_eq!(
        connect(&net.a, true),
        "err 1",
        "enforced with the daemon gone"
    );
    assert_eq!(connect(&net.a, false), "ok");
    c.restart();
    let again = serving(&d, &c);
    assert_eq!(again["enforcing"], true, "{again}");
    assert_eq!(again["view"]["view"], "host");
    assert_eq!(connect(&net.a, true), "err 1");
    assert!(!sh(&format!("echo x >> {k}"), true).status.success());
    assert_eq!(std::fs::read_to_string(&keep).unwrap(), "data\n");
}
