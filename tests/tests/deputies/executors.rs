//! The executors (built-in `guard:executors`) and startup files (`guard:startup-files`): a
//! tmux server, atd, a local sshd, an editor's IPC socket, a notebook kernel, rc files.

use super::*;

/// A tmux server with a shell in its only pane, killed (by its socket) on drop.
struct Tmux(PathBuf);

impl Tmux {
    fn start(tagged_by: Option<&Daemon>, sock: &Path) -> Self {
        let script = format!("tmux -S {} new-session -d -s s bash --norc", sock.display());
        let out = match tagged_by {
            Some(d) => {
                let mut c = d.guard();
                c.args(["run", "--", "bash", "-c", &script]);
                output(c)
            }
            None => untagged(&script),
        };
        assert!(out.status.success(), "tmux server: {}", text(&out));
        Self(sock.to_owned())
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .arg("-S")
            .arg(&self.0)
            .arg("kill-server")
            .output();
    }
}

fn send_keys(sock: &Path, line: &str) -> String {
    format!("tmux -S {} send-keys -t s '{line}' Enter", sock.display())
}

#[test]
fn a_terminal_server_outside_the_tree_refuses_the_agent_and_its_own_works() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let human = dir.path().join("human.sock");
    let _server = Tmux::start(None, &human);
    let found = wait_found(&daemon, "the human's tmux server found", |d| {
        found_has(d, "terminals", human.to_str().unwrap())
    });
    assert!(
        found["rules"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["name"] == "guard:executors/terminals" && r["state"] == "deny enforce"),
        "{found}"
    );
    let sides = Sides::new();
    for (side, out) in sides.run(
        &daemon,
        &send_keys(
            &human,
            &format!("touch {}/typed-by-agent", dir.path().display()),
        ),
    ) {
        assert!(
            !out.status.success(),
            "{side}: send-keys got through\n{}",
            text(&out)
        );
        assert!(
            String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
            "{side}: {}",
            text(&out)
        );
    }
    let evs = denied_events(&daemon, "guard:executors/terminals", 2);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("tmux"))
            && e["destination"]["unix_path"] == human.to_str().unwrap()
            && !e["ancestry"].as_array().unwrap().is_empty()),
        "{evs:#?}"
    );
    assert!(evs.iter().any(|e| e["agent"] == "claude-code"), "{evs:#?}");
    // The human's own keystrokes still reach their server.
    let out = untagged(&send_keys(
        &human,
        &format!("touch {}/typed-by-human", dir.path().display()),
    ));
    assert!(out.status.success(), "untagged: {}", text(&out));
    wait_for(
        "the human's command to run",
        Duration::from_secs(10),
        || dir.path().join("typed-by-human").exists().then_some(()),
    );
    assert!(!dir.path().join("typed-by-agent").exists());

    // An agent's own server, started in its tree, keeps working.
    let own = dir.path().join("own.sock");
    let _own = Tmux::start(Some(&daemon), &own);
    std::thread::sleep(2 * Duration::from_secs(1));
    let mut c = daemon.guard();
    c.args([
        "run",
        "--",
        "bash",
        "-c",
        &send_keys(&own, &format!("touch {}/own", dir.path().display())),
    ]);
    let out = output(c);
    assert!(out.status.success(), "own server: {}", text(&out));
    wait_for(
        "the agent's own server to run its command",
        Duration::from_secs(10),
        || dir.path().join("own").exists().then_some(()),
    );
}

/// `atd -f` started here (`None` when one runs already), stopped and its pid file removed on
/// drop.
struct Atd(Option<Proc>);

impl Atd {
    fn start() -> Self {
        let running = std::fs::read_to_string("/run/atd.pid")
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok())
            .is_some_and(guard_tests::alive);
        if running {
            return Self(None);
        }
        let _ = std::fs::remove_file("/run/atd.pid");
        let proc = Proc::spawn({
            let mut c = Command::new("atd");
            c.arg("-f");
            c
        });
        wait_for("atd's pid file", Duration::from_secs(5), || {
            Path::new("/run/atd.pid").exists().then_some(())
        });
        Self(Some(proc))
    }
}

impl Drop for Atd {
    fn drop(&mut self) {
        if self.0.take().is_some() {
            let _ = std::fs::remove_file("/run/atd.pid");
        }
    }
}

/// Removes the spool entries that appear during a test (a killed `at` leaves the job file it
/// was creating, inert: atd runs only files made executable).
struct SpoolCleanup(PathBuf, Vec<std::ffi::OsString>);

impl SpoolCleanup {
    fn new(dir: &Path) -> Self {
        Self(dir.to_owned(), Self::entries(dir))
    }

    fn entries(dir: &Path) -> Vec<std::ffi::OsString> {
        std::fs::read_dir(dir)
            .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
            .unwrap_or_default()
    }
}

impl Drop for SpoolCleanup {
    fn drop(&mut self) {
        for name in Self::entries(&self.0) {
            if !self.1.contains(&name) && name != ".SEQ" {
                let _ = std::fs::remove_file(self.0.join(name));
            }
        }
    }
}

#[test]
fn at_jobs_cannot_be_queued_by_an_agent() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let _atd = Atd::start();
    wait_path_rule(&daemon, "guard:executors/scheduler", "/var/spool/cron");
    let spool = Path::new("/var/spool/cron/atjobs");
    let _leftovers = SpoolCleanup::new(spool);
    let mark = |who: &str| {
        dir.path()
            .join(format!("ran-for-{}", who.replace(' ', "-")))
    };
    let sides = Sides::new();
    for (side, out) in sides.run(
        &daemon,
        &format!("echo 'touch {}' | at now", mark("agent").display()),
    ) {
        assert!(
            !out.status.success(),
            "{side}: at queued a job\n{}",
            text(&out)
        );
    }
    // Writing the spool directly (a root agent could) is refused as well.
    let job = spool.join(format!("a-guard-test-{}", std::process::id()));
    for (side, out) in sides.run(
        &daemon,
        &format!(
            "echo 'touch {}' > {}",
            mark("agent").display(),
            job.display()
        ),
    ) {
        assert!(
            !out.status.success(),
            "{side}: wrote the at spool\n{}",
            text(&out)
        );
    }
    let _ = std::fs::remove_file(&job);
    // An untagged user queues a job and atd runs it.
    let out = untagged(&format!(
        "echo 'touch {}' | at now",
        mark("human").display()
    ));
    assert!(out.status.success(), "untagged at: {}", text(&out));
    wait_for(
        "atd to run the human's job",
        Duration::from_secs(30),
        || mark("human").exists().then_some(()),
    );
    assert!(!mark("agent").exists());
    let evs: Vec<Value> = wait_for("scheduler events", Duration::from_secs(10), || {
        let evs: Vec<Value> = daemon
            .events()
            .into_iter()
            .filter(|e| e["rule"] == "guard:executors/scheduler")
            .collect();
        // The recognised agent's two attempts. guard run trees see the spool read-only and
        // the clients masked in their mount namespace: refused before any hook is reached.
        (evs.len() >= 2).then_some(evs)
    });
    assert!(evs.iter().any(|e| e["agent"] == "claude-code"), "{evs:#?}");
    assert!(
        evs.iter()
            .any(|e| e.to_string().contains("/var/spool/cron/atjobs")),
        "the spool is named: {evs:#?}"
    );
}

#[test]
fn a_local_sshd_is_closed_to_agents_on_its_own_port() {
    let dir = tempfile::tempdir().unwrap();
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let sshd = Sshd::start();
    let listen = format!("127.0.0.1:{}", sshd.port);
    wait_found(&daemon, "the test's sshd found", |d| {
        found_has(d, "sshd", &listen)
    });
    let sides = Sides::new();
    let cmd = |who: &str| {
        sshd.ssh(&format!(
            "root@127.0.0.1 touch {}/by-{who}",
            dir.path().display()
        ))
    };
    for (side, out) in sides.run(&daemon, &cmd("agent")) {
        assert!(
            !out.status.success(),
            "{side}: ssh got through\n{}",
            text(&out)
        );
    }
    // Any client, not only ssh: a plain connect is refused.
    for (side, out) in sides.run(
        &daemon,
        &format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {}", sshd.port),
    ) {
        assert_eperm(&out, side);
    }
    let evs = denied_events(&daemon, "guard:executors/sshd", 4);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("sshd"))),
        "{evs:#?}"
    );
    let out = untagged(&cmd("human"));
    assert!(out.status.success(), "untagged ssh: {}", text(&out));
    assert!(dir.path().join("by-human").exists());
    assert!(!dir.path().join("by-agent").exists());
}

#[test]
fn startup_files_are_read_only_to_agents() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("home");
    std::fs::create_dir_all(home.join(".ssh")).unwrap();
    for f in [".bashrc", ".profile", ".ssh/config", ".gitconfig"] {
        std::fs::write(home.join(f), "# the human's\n").unwrap();
    }
    let passwd = dir.path().join("passwd");
    std::fs::write(
        &passwd,
        format!("tester:x:1000:1000::{}:/bin/bash\n", home.display()),
    )
    .unwrap();
    let daemon = Daemon::start_with_env(&policy("    []\n"), &[("GUARD_PASSWD", &passwd)]);
    wait_path_rule(
        &daemon,
        "guard:startup-files/shell",
        home.join(".bashrc").to_str().unwrap(),
    );
    let mark = dir.path().join("ran");
    let line = format!("touch {}", mark.display());
    let sides = Sides::new();
    for target in [".bashrc", ".profile", ".ssh/config", ".gitconfig"] {
        let file = home.join(target);
        for (side, out) in sides.run(&daemon, &format!("echo '{line}' >> {}", file.display())) {
            assert!(
                !out.status.success(),
                "{side}: appended to {target}\n{}",
                text(&out)
            );
        }
        for (side, out) in sides.run(&daemon, &format!("echo '{line}' > {}", file.display())) {
            assert!(
                !out.status.success(),
                "{side}: rewrote {target}\n{}",
                text(&out)
            );
        }
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "# the human's\n");
    }
    // The human's next shell reads an rc file the agent could not touch.
    let mut c = Command::new("bash");
    c.args(["-i", "-c", "true"]).env("HOME", &home);
    let _ = output(c);
    assert!(!mark.exists());
    // The human edits their own files.
    let out = untagged(&format!(
        "echo 'alias ll=\"ls -l\"' >> {}",
        home.join(".bashrc").display()
    ));
    assert!(out.status.success(), "untagged: {}", text(&out));
    let evs: Vec<Value> = wait_for("startup-file events", Duration::from_secs(10), || {
        let evs: Vec<Value> = daemon
            .events()
            .into_iter()
            .filter(|e| {
                e["rule"]
                    .as_str()
                    .is_some_and(|r| r.starts_with("guard:startup-files/"))
            })
            .collect();
        // The recognised agent's attempts; guard run trees see the files read-only (EROFS).
        (evs.len() >= 8).then_some(evs)
    });
    assert!(evs.iter().any(|e| e["agent"] == "claude-code"), "{evs:#?}");
}

/// A loopback listener whose arguments say it is a Jupyter kernel (`-m ipykernel_launcher`).
const KERNEL: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
while True:
    s.accept()[0].close()
"#;

#[test]
fn an_editors_ipc_socket_and_a_notebook_kernel_refuse_the_agent() {
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let dir = tempfile::tempdir().unwrap();
    let ipc = format!("/tmp/vscode-ipc-guard-test-{}.sock", std::process::id());
    let _ipc_file = RemoveOnDrop(PathBuf::from(&ipc));
    let editor =
        network_support::UnixServer::start(&dir.path().join("count"), &[format!("stream={ipc}")]);
    let port = free_port();
    let _kernel = python_ready(&[KERNEL, &port.to_string(), "-m", "ipykernel_launcher"]);
    let listen = format!("127.0.0.1:{port}");
    wait_found(&daemon, "the editor's socket and the kernel found", |d| {
        found_has(d, "ide", &ipc) && found_has(d, "notebooks", &listen)
    });
    let sides = Sides::new();
    for script in [
        format!("python3 -c \"$CLIENT\" unix {ipc} 0"),
        format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {port}"),
    ] {
        for (side, out) in sides.run(&daemon, &script) {
            assert_eperm(&out, &format!("{side}: {script}"));
        }
        assert_ok(&untagged(&script), &format!("untagged: {script}"));
    }
    denied_events(&daemon, "guard:executors/ide", 2);
    denied_events(&daemon, "guard:executors/notebooks", 2);
    assert_eq!(
        editor.count(),
        1,
        "only the untagged connection reached the editor"
    );
}
