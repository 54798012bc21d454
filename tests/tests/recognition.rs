//! Recognition of agents that guard does not start: by the environment markers agents set
//! for the commands they run (IDE agents' shells, CLIs' tool shells), read by the kernel at
//! exec, and the same markers on processes found running at start-up.

#[allow(
    dead_code,
    reason = "shared with the network tests; this uses the namespace, listener and client"
)]
mod network_support;

use std::{collections::BTreeMap, process::Command, time::Duration};

use guard_tests::{Daemon, Proc, output, read_pid_file, wait_for};
use network_support::{CLIENT, Listener, Net, counter, net_events};

/// A sleeping process with exactly `env` (no other variable), in the order of its names. It
/// outlives any test (dropped, it is killed): a daemon started after it may take more than a
/// minute to verify its programs under the VM matrix's emulation.
fn sleeper(env: &BTreeMap<String, String>) -> Proc {
    let mut c = Command::new("/bin/sleep");
    c.arg("3600").env_clear().envs(env);
    Proc::spawn(c)
}

/// An environment as `(name, value)` pairs.
type Env<'a> = &'a [(&'a str, &'a str)];

fn vars(list: &[(&str, &str)]) -> BTreeMap<String, String> {
    list.iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The agent each process was tagged as, once every expected one is tagged.
fn assert_tags(d: &Daemon, cases: &[(Proc, Option<&str>, String)]) {
    for (p, want, what) in cases {
        if want.is_some() {
            wait_for(what, Duration::from_secs(10), || d.tag_of(p.pid()));
        }
    }
    for (p, want, what) in cases {
        let tag = d.tag_of(p.pid());
        match want {
            Some(agent) => {
                let tag = tag.unwrap_or_else(|| panic!("{what}: not tagged"));
                assert_eq!(tag["agent"], *agent, "{what}");
                assert_eq!(tag["root_pid"], p.pid(), "{what}: its own root");
                assert!(
                    tag["recognised"]
                        .as_str()
                        .is_some_and(|r| r.starts_with("env marker")),
                    "{what}: {tag}"
                );
            }
            None => assert!(
                tag.is_none(),
                "{what}: tagged, but carries no marker: {tag:?}"
            ),
        }
    }
}

#[test]
fn the_default_policy_recognises_the_vendors_markers_and_nothing_near_them() {
    let d = Daemon::start();
    let cases: Vec<(Env, Option<&str>)> = vec![
        (&[("CURSOR_AGENT", "1")], Some("cursor")),
        (
            &[("CURSOR_EXTENSION_HOST_ROLE", "agent-exec")],
            Some("cursor"),
        ),
        (&[("COPILOT_AGENT", "1")], Some("copilot")),
        (
            &[("AI_AGENT", "github_copilot_vscode_agent")],
            Some("copilot"),
        ),
        (&[("CLINE_ACTIVE", "true")], Some("cline")),
        (&[("CLAUDECODE", "1")], Some("claude-code")),
        (&[("GEMINI_CLI", "1")], Some("gemini-cli")),
        (&[("OPENCODE", "1")], Some("opencode")),
        (&[("GOOSE_TERMINAL", "1")], Some("goose")),
        (&[("AGENT", "goose")], Some("goose")),
        (&[("AGENT", "amp")], Some("amp")),
        (&[("AGENT", "someone-new")], Some("ai-agent")),
        (&[("AI_AGENT", "other")], Some("ai-agent")),
        // Near misses: every Cursor terminal has a trace id; CI systems set AGENT_*.
        (&[("CURSOR_TRACE_ID", "abc")], None),
        (&[("AGENT_ID", "7"), ("AGENT_NAME", "ci")], None),
        (&[("CURSOR_AGENT", "0")], None),
        (&[("CLAUDECODE", "10")], None),
        (&[("XAGENT", "1"), ("PATH", "/usr/bin:/bin")], None),
    ];
    let procs: Vec<(Proc, Option<&str>, String)> = cases
        .iter()
        .map(|(env, want)| (sleeper(&vars(env)), *want, format!("{env:?}")))
        .collect();
    assert_tags(&d, &procs);
    let st = d.status_json().expect("status");
    let r = &st["recognition"];
    assert!(r["env_markers"].as_u64().unwrap_or(0) >= 10, "{r}");
    assert!(
        r["env_scan"]
            .as_str()
            .unwrap_or("")
            .contains("512 variables"),
        "{r}"
    );
    assert!(
        r["not_covered"]
            .to_string()
            .contains("IDE agent's own tools"),
        "status names what IDE recognition leaves out: {r}"
    );
    let events = d.events();
    let cursor = procs[0].0.pid();
    let exec = events
        .iter()
        .find(|e| e["kind"] == "agent_exec" && e["process"]["pid"] == cursor)
        .unwrap_or_else(|| panic!("no agent_exec event for the CURSOR_AGENT process"));
    assert_eq!(exec["recognised"]["by"], "env");
    assert_eq!(exec["recognised"]["matched"], "CURSOR_AGENT=1");
    assert!(exec["ancestry"].as_array().is_some_and(|a| !a.is_empty()));
}

/// Cursor runs the agent's commands in shells its pty host starts with `CURSOR_AGENT=1`; the
/// human's terminal is a sibling shell of the same editor without it.
#[test]
fn an_ide_agents_shell_is_contained_and_the_humans_terminal_beside_it_is_not() {
    let net = Net::new();
    let port = 5432;
    let listener = Listener::start(&net, &[format!("tcp:{port}:{}", net.a)]);
    let d = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: ide }}\nspec:\n  \
         agents:\n    - name: cursor\n      executables: [cursor-agent]\n      env: \
         [\"CURSOR_AGENT=1\", \"CURSOR_EXTENSION_HOST_ROLE=agent-exec\"]\n  endpoints:\n    \
         - {{ name: prod-db, cidrs: [{}/32], ports: [{port}], action: deny }}\n",
        net.a
    ));
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path();
    // The editor's pty host, by its process name. The default policy no longer makes the
    // editor an agent, and neither does this one.
    std::fs::copy("/bin/bash", p.join("cursor")).unwrap();
    std::fs::write(p.join("client.py"), CLIENT).unwrap();
    let shell = |marker: &str, name: &str| {
        format!(
            "{marker} bash -c 'echo $$ > {dir}/{name}.pid; \
             python3 {dir}/client.py tcp {addr} {port} > {dir}/{name}.py; \
             curl -sS --max-time 5 http://{addr}:{port}/ > {dir}/{name}.curl 2>&1; \
             touch {dir}/{name}.done; sleep 30' &",
            dir = p.display(),
            addr = net.a,
        )
    };
    let script = format!(
        "echo $$ > {dir}/host.pid; {agent} {human} wait",
        dir = p.display(),
        agent = shell("CURSOR_AGENT=1 CURSOR_TRACE_ID=t1", "agent"),
        human = shell("CURSOR_TRACE_ID=t1", "human"),
    );
    let mut host = Command::new(p.join("cursor"));
    host.args(["-c", &script]);
    let _host = Proc::spawn(host);
    let host_pid = read_pid_file(&p.join("host.pid"));
    let agent = read_pid_file(&p.join("agent.pid"));
    let human = read_pid_file(&p.join("human.pid"));
    // The reason line guard writes to a denied process's stderr may come before curl's own
    // message: wait for the shell to be past curl.
    let done = |name: &str| {
        let flag = p.join(format!("{name}.done"));
        wait_for(
            &format!("{name} shell to finish"),
            Duration::from_secs(15),
            || flag.exists().then_some(()),
        );
        std::fs::read_to_string(p.join(format!("{name}.curl"))).unwrap_or_default()
    };
    let agent_curl = done("agent");
    let human_curl = done("human");
    let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();

    // The agent's shell: both tools refused; the listener saw only the human's two.
    assert!(
        read("agent.py").starts_with("err 1"),
        "agent python3: {}",
        read("agent.py")
    );
    // The daemon's reason line reaches the same terminal while curl writes its error, and
    // may land inside curl's words: read curl's message without it.
    let curl_only = match agent_curl.find("guard: ") {
        Some(at) => {
            let end = agent_curl[at..]
                .find('\n')
                .map_or(agent_curl.len(), |e| at + e + 1);
            format!("{}{}", &agent_curl[..at], &agent_curl[end..])
        }
        None => agent_curl.clone(),
    };
    assert!(
        curl_only.contains("Couldn't connect") || curl_only.contains("not permitted"),
        "agent curl: {agent_curl}"
    );
    assert!(
        read("human.py").starts_with("ok"),
        "human python3: {}",
        read("human.py")
    );
    assert!(human_curl.contains("ok"), "human curl: {human_curl}");
    assert_eq!(
        listener.count(&format!("tcp:{port}")),
        2,
        "only the human's connections arrive"
    );

    let tag = d.tag_of(agent).expect("the agent's shell is tagged");
    assert_eq!(tag["agent"], "cursor");
    assert_eq!(tag["root_pid"], agent);
    assert!(
        d.tag_of(human).is_none(),
        "the human's terminal is not tagged"
    );
    assert!(d.tag_of(host_pid).is_none(), "the editor is not tagged");

    let evs = net_events(&d, 2, |e| e["rule"] == "prod-db");
    for e in &evs {
        assert_eq!(e["agent"], "cursor");
        assert_eq!(e["root"]["pid"], agent);
        let ancestry = e["ancestry"].as_array().expect("ancestry");
        assert!(
            ancestry
                .iter()
                .any(|a| a["pid"] == agent && a["agent_root"] == true),
            "the agent's shell is the root in the ancestry: {e}"
        );
        assert!(
            ancestry.iter().any(|a| a["pid"] == host_pid),
            "the editor is in the ancestry: {e}"
        );
    }
    let exec = d
        .events()
        .into_iter()
        .find(|e| e["kind"] == "agent_exec" && e["process"]["pid"] == agent)
        .expect("agent_exec of the agent's shell");
    assert_eq!(exec["recognised"]["matched"], "CURSOR_AGENT=1");
}

/// The scan reads the first 512 variables that start within the first 32 KiB of the
/// environment (guard_common::agent::ENV_SCAN_MAX_VARS, ENV_SCAN_MAX_BYTES). A marker past
/// either bound is not seen, and the scan that stopped is counted.
#[test]
fn a_marker_past_the_scan_limit_is_not_seen() {
    let d = Daemon::start_with_policy(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: { name: scan }\nspec:\n  \
         agents:\n    - { name: marked, env: [\"ZMARK=1\"] }\n",
    );
    let fillers = |n: usize| -> BTreeMap<String, String> {
        (0..n).map(|i| (format!("A{i:04}"), "x".into())).collect()
    };
    let with_marker = |mut env: BTreeMap<String, String>| {
        env.insert("ZMARK".into(), "1".into());
        env
    };
    // Names sort before ZMARK, and the environment is passed in name order.
    let long = |n: usize| vars(&[("A", &"x".repeat(n))]);
    let before = counter(&d, "env_scan_truncated");
    let cases = vec![
        (
            sleeper(&with_marker(fillers(511))),
            Some("marked"),
            "the 512th variable".to_owned(),
        ),
        (
            sleeper(&with_marker(fillers(512))),
            None,
            "the 513th variable".to_owned(),
        ),
        // "A=" + n bytes + NUL: the marker starts at byte n + 3.
        (
            sleeper(&with_marker(long(32764))),
            Some("marked"),
            "a marker at byte 32767".to_owned(),
        ),
        (
            sleeper(&with_marker(long(32765))),
            None,
            "a marker at byte 32768".to_owned(),
        ),
    ];
    assert_tags(&d, &cases);
    assert!(
        counter(&d, "env_scan_truncated") >= before + 2,
        "the two scans that stopped at a bound are counted"
    );
}

#[test]
fn a_marked_process_running_before_the_daemon_is_tagged_at_start_up() {
    let early = sleeper(&vars(&[("CLAUDECODE", "1"), ("PATH", "/usr/bin:/bin")]));
    let plain = sleeper(&vars(&[("PATH", "/usr/bin:/bin")]));
    // Let the exec finish before the daemon looks.
    std::thread::sleep(Duration::from_millis(200));
    let d = Daemon::start();
    let tag = d.tag_of(early.pid()).expect("tagged at start-up");
    assert_eq!(tag["agent"], "claude-code");
    assert_eq!(tag["root_pid"], early.pid());
    let why = tag["recognised"].as_str().unwrap_or_default();
    assert!(
        why.contains("CLAUDECODE=1") && why.contains("at start"),
        "{why}"
    );
    assert!(d.tag_of(plain.pid()).is_none());
    // And `guard ps` says why.
    let out = output({
        let mut c = d.guard();
        c.arg("ps");
        c
    });
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("recognised by env marker CLAUDECODE=1"),
        "{text}"
    );
}

/// Claude Code's native installer puts each version at `~/.local/share/claude/versions/<v>`
/// (the file's name is its version). `agents[].paths` names the directory; the kernel matches
/// the executable's file and directories by identity, however the file is reached.
#[test]
fn an_agent_installed_by_path_is_recognised_however_it_is_started() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let versions = d.join("share/claude/versions");
    std::fs::create_dir_all(&versions).unwrap();
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::create_dir_all(d.join("other")).unwrap();
    std::fs::create_dir_all(d.join("opt")).unwrap();
    for f in [
        versions.join("1.0.3"),
        d.join("other/1.0.3"),
        d.join("opt/agent-a"),
        d.join("opt/agentx"),
    ] {
        std::fs::copy("/bin/sleep", f).unwrap();
    }
    std::os::unix::fs::symlink(versions.join("1.0.3"), d.join("bin/cl")).unwrap();
    // A script an interpreter runs, installed under an agent's path, named like nothing.
    std::fs::create_dir_all(d.join("lib/agentjs")).unwrap();
    std::fs::create_dir_all(d.join("lib/otherjs")).unwrap();
    // Longer than any daemon start under emulation: each is killed when dropped.
    let js = "setTimeout(() => {}, 3600000);\n";
    std::fs::write(d.join("lib/agentjs/main.js"), js).unwrap();
    std::fs::write(d.join("lib/otherjs/main.js"), js).unwrap();
    let sleep = |prog: &std::path::Path, cwd: &std::path::Path| {
        let mut c = Command::new(prog);
        c.arg("3600").current_dir(cwd);
        Proc::spawn(c)
    };
    let node = |script: &std::path::Path| {
        let mut c = Command::new("node");
        c.arg(script);
        Proc::spawn(c)
    };
    // Running before the daemon: found at start-up by the same rule.
    let early = sleep(&versions.join("1.0.3"), d);
    std::thread::sleep(Duration::from_millis(200));
    let daemon = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: paths }}\nspec:\n  \
         agents:\n    - name: claude-native\n      paths: [\"{}/*\"]\n    - name: tool\n      \
         paths: [\"{}/opt/agent-*\"]\n    - name: js-agent\n      paths: [\"{}/lib/agentjs\"]\n",
        versions.display(),
        d.display(),
        d.display()
    ));
    let tag = daemon.tag_of(early.pid()).expect("tagged at start-up");
    assert_eq!(tag["agent"], "claude-native");
    assert!(
        tag["recognised"]
            .as_str()
            .is_some_and(|r| r.contains("install path")),
        "{tag}"
    );

    // A version the updater adds after the policy loaded: the directory is the identity.
    std::fs::copy("/bin/sleep", versions.join("1.0.4")).unwrap();
    let cases = vec![
        (
            sleep(&versions.join("1.0.3"), d),
            Some("claude-native"),
            "by full path",
        ),
        (
            sleep(&d.join("bin/cl"), d),
            Some("claude-native"),
            "through a symlink",
        ),
        (
            sleep(std::path::Path::new("./1.0.3"), &versions),
            Some("claude-native"),
            "relative to its directory",
        ),
        (
            sleep(&versions.join("1.0.4"), d),
            Some("claude-native"),
            "a version added later",
        ),
        (
            sleep(&d.join("opt/agent-a"), d),
            Some("tool"),
            "a glob's match",
        ),
        (
            sleep(&d.join("other/1.0.3"), d),
            None,
            "the same binary elsewhere",
        ),
        (
            sleep(&d.join("opt/agentx"), d),
            None,
            "a name the glob does not match",
        ),
        (
            node(&d.join("lib/agentjs/main.js")),
            Some("js-agent"),
            "a script under a path",
        ),
        (
            node(&d.join("lib/otherjs/main.js")),
            None,
            "the same script elsewhere",
        ),
    ];
    for (p, want, what) in &cases {
        match want {
            Some(agent) => {
                let tag = wait_for(what, Duration::from_secs(10), || daemon.tag_of(p.pid()));
                assert_eq!(tag["agent"], *agent, "{what}");
                assert_eq!(tag["root_pid"], p.pid(), "{what}: its own root");
            }
            None => assert!(daemon.tag_of(p.pid()).is_none(), "{what} was tagged"),
        }
    }
    // A file a glob names that appears later is found within the recheck (2 s).
    std::fs::copy("/bin/sleep", d.join("opt/agent-b")).unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let late = sleep(&d.join("opt/agent-b"), d);
    let tag = wait_for("agent-b tagged", Duration::from_secs(10), || {
        daemon.tag_of(late.pid())
    });
    assert_eq!(tag["agent"], "tool");
    let exec = wait_for("agent_exec of 1.0.4", Duration::from_secs(10), || {
        daemon
            .events()
            .into_iter()
            .find(|e| e["kind"] == "agent_exec" && e["process"]["pid"] == cases[3].0.pid())
    });
    assert_eq!(exec["recognised"]["by"], "path");
    assert_eq!(exec["recognised"]["matched"], "1.0.4");
    let st = daemon.status_json().expect("status");
    assert_eq!(st["recognition"]["paths"], 3, "{}", st["recognition"]);
}

/// Where `cargo xtask test` installed the agents' real CLIs from npm (xtask/src/agent_clis.rs).
fn agent_clis() -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("GUARD_AGENT_CLIS")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|h| std::path::Path::new(&h).join(".cache/guard/agent-clis"))
        })?;
    if dir.join("node_modules/.bin/claude").exists() {
        return Some(dir);
    }
    assert!(
        !guard_tests::under_ci(),
        "the agents' CLIs are not installed in {}: `cargo xtask test` installs them",
        dir.display()
    );
    println!(
        "SKIPPED the real agent CLIs: not installed in {} (`cargo xtask test` installs them)",
        dir.display()
    );
    None
}

/// Claude Code (a native binary behind `node_modules/.bin/claude`), Codex (a node launcher
/// that starts a musl binary) and Gemini CLI (a node script), installed from the npm registry,
/// each started through its `.bin` symlink, a symlink of our own and its full path.
#[test]
fn the_real_agent_clis_are_recognised_however_they_are_started() {
    let Some(clis) = agent_clis() else {
        return;
    };
    let d = Daemon::start();
    let nm = clis.join("node_modules");
    let tmp = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(nm.join(".bin/claude"), tmp.path().join("claude")).unwrap();
    std::os::unix::fs::symlink(nm.join(".bin/codex"), tmp.path().join("codex")).unwrap();
    let cases: Vec<(std::path::PathBuf, &str, &str, &str)> = vec![
        (
            nm.join(".bin/claude"),
            "claude-code",
            "executable",
            "Claude Code",
        ),
        (
            tmp.path().join("claude"),
            "claude-code",
            "executable",
            "Claude Code",
        ),
        (
            nm.join("@anthropic-ai/claude-code/bin/claude.exe"),
            "claude-code",
            "executable",
            "Claude Code",
        ),
        (nm.join(".bin/codex"), "codex", "executable", "codex-cli"),
        (tmp.path().join("codex"), "codex", "executable", "codex-cli"),
        (
            nm.join("@openai/codex/bin/codex.js"),
            "codex",
            "script",
            "codex-cli",
        ),
        (nm.join(".bin/gemini"), "gemini-cli", "executable", "0."),
        (
            nm.join("@google/gemini-cli/bundle/gemini.js"),
            "gemini-cli",
            "script",
            "0.",
        ),
    ];
    for (prog, agent, by, version) in &cases {
        let what = prog.display().to_string();
        let mut c = Command::new(prog);
        c.arg("--version").current_dir(tmp.path());
        let child = c
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("{what}: {e}"));
        let pid = child.id();
        let out = child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.contains(version),
            "{what}: {text}"
        );
        let exec = wait_for(
            &format!("agent_exec of {what}"),
            Duration::from_secs(10),
            || {
                d.events()
                    .into_iter()
                    .find(|e| e["kind"] == "agent_exec" && e["process"]["pid"] == pid)
            },
        );
        assert_eq!(exec["agent"], *agent, "{what}: {exec}");
        assert_eq!(exec["recognised"]["by"], *by, "{what}: {exec}");
        assert_eq!(exec["root"]["pid"], pid, "{what}");
        // Every program the tool started ran in its tree.
        for e in d.events().iter().filter(|e| {
            e["kind"] == "tagged_exec"
                && e["ancestry"]
                    .to_string()
                    .contains(&format!("\"pid\":{pid},"))
        }) {
            assert_eq!(e["root"]["pid"], pid, "{what}: {e}");
            assert_eq!(e["agent"], *agent, "{what}: {e}");
        }
    }
    // Codex's launcher starts its native binary: that exec is in the launcher's tree.
    let codex = d
        .events()
        .into_iter()
        .filter(|e| e["kind"] == "tagged_exec" && e["agent"] == "codex")
        .count();
    assert!(
        codex >= 2,
        "codex's native binary ran tagged, under the launcher"
    );
}

/// A cgroup on the default hierarchy this test creates (under the cgroup2 mount) and removes:
/// its processes are moved back to the root cgroup first.
struct TestCgroup {
    dir: std::path::PathBuf,
    root: std::path::PathBuf,
}

impl TestCgroup {
    fn new(name: &str) -> Self {
        let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .iter()
            .map(std::path::PathBuf::from)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup2 mount");
        let dir = root.join(name);
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("mkdir {}: {e}", dir.display()));
        Self { dir, root }
    }

    fn join(&self, pid: u32) {
        std::fs::write(self.dir.join("cgroup.procs"), pid.to_string())
            .unwrap_or_else(|e| panic!("moving {pid} into {}: {e}", self.dir.display()));
    }

    fn leave(&self, pid: u32) {
        let _ = std::fs::write(self.root.join("cgroup.procs"), pid.to_string());
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        for _ in 0..50 {
            let procs = std::fs::read_to_string(self.dir.join("cgroup.procs")).unwrap_or_default();
            for pid in procs.lines() {
                let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
            }
            if std::fs::remove_dir(&self.dir).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        eprintln!("could not remove {}", self.dir.display());
    }
}

/// A CI runner or an agent pod is an agent as a whole: everything in its cgroup is tagged,
/// what was there before the daemon, what joins later, what starts there; leaving does not
/// untag. A cgroup created after the policy loaded is found within the recheck.
#[test]
fn everything_in_an_agents_cgroup_is_the_agent() {
    let net = Net::new();
    let port = 5432;
    let listener = Listener::start(&net, &[format!("tcp:{port}:{}", net.a)]);
    let name = guard_tests::unique("guard-test-runner");
    let cg = TestCgroup::new(&name);
    let early = sleeper(&vars(&[]));
    cg.join(early.pid());
    let d = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: cg }}\nspec:\n  \
         agents:\n    - {{ name: ci-runner, cgroups: [\"/guard-test-runner-*\"] }}\n  \
         endpoints:\n    - {{ name: prod-db, cidrs: [{}/32], ports: [{port}], action: deny }}\n",
        net.a
    ));
    let tag = d
        .tag_of(early.pid())
        .expect("a process inside at start-up is tagged");
    assert_eq!(tag["agent"], "ci-runner");
    assert_eq!(tag["root_pid"], 0, "the root is the cgroup: {tag}");
    assert!(
        tag["recognised"]
            .as_str()
            .is_some_and(|r| r.contains(&name)),
        "{tag}"
    );

    // A process that joins later is tagged at once, and stays tagged when it leaves.
    let joiner = sleeper(&vars(&[]));
    assert!(d.tag_of(joiner.pid()).is_none());
    cg.join(joiner.pid());
    let tag = wait_for("the joiner tagged", Duration::from_secs(5), || {
        d.tag_of(joiner.pid())
    });
    assert_eq!(tag["agent"], "ci-runner");
    cg.leave(joiner.pid());
    assert!(
        d.tag_of(joiner.pid()).is_some(),
        "leaving the cgroup does not untag"
    );

    // A shell started inside (moved in before it runs anything): what it runs is refused; the
    // same commands from outside reach the listener.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("client.py"), CLIENT).unwrap();
    let script = format!(
        "python3 {} tcp {} {port}",
        dir.path().join("client.py").display(),
        net.a
    );
    let inside = {
        let mut c = Command::new("bash");
        let procs = cg.dir.join("cgroup.procs");
        c.args(["-c", &format!("echo $$ > {}; {script}", procs.display())]);
        output(c)
    };
    assert!(
        String::from_utf8_lossy(&inside.stdout).starts_with("err 1"),
        "inside the cgroup: {}",
        String::from_utf8_lossy(&inside.stdout)
    );
    let outside = output({
        let mut c = Command::new("bash");
        c.args(["-c", &script]);
        c
    });
    assert!(
        String::from_utf8_lossy(&outside.stdout).starts_with("ok"),
        "outside: {}",
        String::from_utf8_lossy(&outside.stdout)
    );
    assert_eq!(
        listener.count(&format!("tcp:{port}")),
        1,
        "only the outside connect arrives"
    );
    let evs = net_events(&d, 1, |e| e["rule"] == "prod-db");
    assert_eq!(evs[0]["agent"], "ci-runner");
    // The root of the tree is the cgroup.
    let cgroup_id = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(&cg.dir).unwrap());
    assert_eq!(evs[0]["root"]["pid"], 0, "{}", evs[0]);
    assert_eq!(evs[0]["root"]["cgroup_id"], cgroup_id, "{}", evs[0]);
    assert!(
        evs[0]["process"]["cgroup"]
            .as_str()
            .is_some_and(|c| c.contains(&name)),
        "{}",
        evs[0]
    );

    // A matching cgroup created after the policy loaded, with a process already inside.
    let later = TestCgroup::new(&guard_tests::unique("guard-test-runner"));
    let inside_later = sleeper(&vars(&[]));
    later.join(inside_later.pid());
    let tag = wait_for(
        "a process in a new matching cgroup tagged",
        Duration::from_secs(8),
        || d.tag_of(inside_later.pid()),
    );
    assert_eq!(tag["agent"], "ci-runner");
    // Nothing outside was tagged.
    let outsider = sleeper(&vars(&[]));
    assert!(d.tag_of(outsider.pid()).is_none());
    let st = d.status_json().expect("status");
    assert!(
        st["recognition"]["cgroups_matched"]
            .to_string()
            .contains(&name),
        "{}",
        st["recognition"]
    );
    drop(later);
}
