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
    container::{Container, Image, PodmanApi, guard_image, hooks_dir, podman},
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

    // `guard run` on the host reaches the daemon in the container through the socket's
    // directory, and its tree is held to the rules.
    let mut c_run = d.guard();
    c_run.args(["run", "--", "python3", "-c", CLIENT, "tcp", &net.a, "5432"]);
    let out = output(c_run);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        text.lines().next(),
        Some("err 1"),
        "guard run: {}",
        output_text(&out)
    );

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

    // What the DaemonSet's memory request and limit are sized from.
    let pid = st["daemon_pid"].as_u64().unwrap_or(0);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss: Vec<&str> = status
        .lines()
        .filter(|l| l.starts_with("VmRSS") || l.starts_with("VmHWM"))
        .collect();
    eprintln!("guard daemon in its container: {}", rss.join(", "));

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

/// `podman [--hooks-dir H] run --rm --network=host [FLAGS] IMAGE sh -c SCRIPT`.
fn run_in(hooks: &Path, flags: &[&str], image: &str, script: &str) -> String {
    let mut c = podman();
    c.arg("--hooks-dir")
        .arg(hooks)
        .args(["run", "--rm", "--network=host"])
        .args(guard_tests::container::run_flags())
        .args(flags)
        .args([image, "sh", "-c", script]);
    output_text(&output(c))
}

/// A connect from busybox's nc to the production listener: `connected` or `refused`.
fn nc(db: &str) -> String {
    format!("nc -w 3 {db} 5432 </dev/null && echo connected || echo refused")
}

#[test]
fn containers_an_agent_selects_are_agents_from_their_first_instruction() {
    let net = Net::new();
    let _listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let api = PodmanApi::start();
    let agent_image = Image::busybox();
    let other_image = Image::busybox();
    let policy = format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: pods }}\nspec:\n\
         \x20 agents:\n\
         \x20   - {{ name: sandboxed, containers: [{{ image: \"{}\" }}] }}\n\
         \x20   - {{ name: labelled, containers: [{{ labels: {{ role: \"agent-*\" }} }}] }}\n\
         \x20 endpoints:\n    - {{ name: production, ips: [{}], ports: [5432], action: deny }}\n",
        agent_image.tag, net.a
    );
    let d = Daemon::start_with_env(&policy, &[("GUARD_CONTAINER_API", &api.socket)]);
    let st = d.status_json().expect("status");
    let meta = st["recognition"]["container_metadata"]
        .as_str()
        .unwrap_or("");
    assert!(meta.contains("(answers)"), "the API is seen: {meta}");
    let hooks = hooks_dir(&guard_tests::guard_bin(), &d.socket);

    // Selected by image: the hook has the container classified before its first process
    // runs, so that process's first connect is refused.
    let out = run_in(hooks.path(), &[], &agent_image.tag, &nc(&net.a));
    assert!(
        out.contains("refused") && !out.contains("connected"),
        "{out}"
    );
    // Another image, and the host: not agents.
    let out = run_in(hooks.path(), &[], &other_image.tag, &nc(&net.a));
    assert!(out.contains("connected"), "an unselected container: {out}");
    assert_eq!(connect(&net.a, false), "ok", "the host");

    // Selected by a label the API reports once the container runs: everything in it is the
    // agent, `podman exec` sessions too.
    let hooks_flag = hooks.path().display().to_string();
    let labelled = Container::start_with(
        &["--hooks-dir", &hooks_flag],
        &[
            "--network=host",
            "--label",
            "role=agent-7",
            &other_image.tag,
            "sleep",
            "120",
        ],
    );
    let tag = wait_for(
        "the labelled container's tag",
        Duration::from_secs(15),
        || {
            d.tag_of(labelled.pid())
                .filter(|t| t["agent"] == "labelled")
        },
    );
    assert_eq!(tag["agent"], "labelled", "{tag}");
    let exec = labelled.exec(&["sh", "-c", &nc(&net.a)]);
    let out = output_text(&exec);
    assert!(
        out.contains("refused") && !out.contains("connected"),
        "podman exec: {out}"
    );

    // The decisions name the container as the runtime does.
    let named = |f: &dyn Fn(&Value) -> bool| {
        wait_for(
            "a decision naming the container",
            Duration::from_secs(10),
            || {
                decisions(&d, "production")
                    .into_iter()
                    .find(|e| f(&e["process"]["container"]))
            },
        )
    };
    let e = named(&|c| c["image"] == agent_image.tag.as_str());
    let c = &e["process"]["container"];
    assert_eq!(c["runtime"], "podman", "{c}");
    assert_eq!(e["agent"], "sandboxed", "{e}");
    assert_eq!(c["id"], e["process"]["container_id"], "{e}");
    let e = named(&|c| c["labels"]["role"] == "agent-7");
    assert_eq!(
        e["process"]["container"]["name"],
        labelled.name.as_str(),
        "{e}"
    );
    assert_eq!(e["agent"], "labelled", "{e}");
}

/// The manifests validate against Kubernetes' schemas (strictly: an unknown field is an
/// error), run the image `cargo xtask image` builds the way the tests above run it, and carry
/// a policy guard accepts.
#[test]
fn the_manifests_validate_and_run_the_image_as_the_tests_do() {
    let validator = std::env::var("GUARD_KUBE_VALIDATE").unwrap_or_else(|_| {
        panic!("GUARD_KUBE_VALIDATE is not set: the kubernetes-validate program (cargo xtask test installs it)")
    });
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/kubernetes/guard.yaml");
    let validate = |file: &Path| {
        let mut c = Command::new(&validator);
        c.arg("--strict").arg(file);
        output(c)
    };
    let out = validate(&manifest);
    let text = output_text(&out);
    assert!(out.status.success(), "{text}");
    for resource in [
        "namespace/guard-system",
        "configmap/guard-policy",
        "daemonset/guard",
    ] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{text}"
        );
    }
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let typo = dir.path().join("typo.yaml");
    std::fs::write(&typo, yaml.replace("hostPID: true", "hostPid: true")).unwrap();
    assert!(
        !validate(&typo).status.success(),
        "a misspelt field is refused"
    );

    // What the container test runs: this image, privileged, the host's PID and network
    // namespaces, the policy at /etc/guard, and the socket's and log's directories.
    let image = guard_image();
    for line in [
        format!("image: {image}"),
        "hostPID: true".into(),
        "hostNetwork: true".into(),
        "privileged: true".into(),
        "mountPath: /etc/guard, readOnly: true".into(),
        "mountPath: /run/guard }".into(),
        "mountPath: /var/log/guard, readOnly: true".into(),
        "args: [\"daemon\", \"--policy\", \"/etc/guard/policy.yaml\"]".into(),
    ] {
        assert!(yaml.contains(&line), "the DaemonSet has {line:?}");
    }

    // The ConfigMap's policy.
    let block: String = yaml
        .split("policy.yaml: |\n")
        .nth(1)
        .and_then(|rest| rest.split("\n---").next())
        .expect("a policy.yaml block in the ConfigMap")
        .lines()
        .map(|l| format!("{}\n", l.strip_prefix("    ").unwrap_or(l)))
        .collect();
    let policy = dir.path().join("policy.yaml");
    std::fs::write(&policy, block).unwrap();
    let mut c = Command::new(guard_tests::guard_bin());
    c.args(["policy", "check"]).arg(&policy);
    let out = output(c);
    assert!(
        out.status.success(),
        "guard policy check: {}",
        output_text(&out)
    );
}
