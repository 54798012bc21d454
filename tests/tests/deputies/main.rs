//! No deputies: an agent cannot get an untagged process to act for it. Each attack runs from
//! a recognised agent (a shell named `claude`) and from a `guard run` tree, and fails; the
//! same action by an untagged process succeeds. Real tools: tmux, at with an atd the test
//! starts, openssh's sshd on loopback, socat, ssh -L, bash.

#[allow(
    dead_code,
    reason = "shared with the network tests; this file uses part"
)]
#[path = "../network_support/mod.rs"]
mod network_support;

mod deferred;
mod executors;
mod processes;
mod tunnels;

use std::{
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use guard_tests::{Daemon, Proc, free_port, free_ports, output, wait_for};
use network_support::{CLIENT, Listener, Net, assert_eperm, assert_ok, net_events, text};
use serde_json::Value;

fn policy(endpoints: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: deputies }}\n\
         spec:\n  agents:\n    - {{ name: claude-code, executables: [claude] }}\n\
         \x20 endpoints:\n{endpoints}"
    )
}

/// A production database in a network namespace (a listener on `db`:5432) and a daemon whose
/// policy denies it (rule `prod-db`).
struct ProdDb {
    _net: Net,
    db: String,
    listener: Listener,
    daemon: Daemon,
}

impl ProdDb {
    fn start() -> Self {
        let net = Net::new();
        let db = net.a.clone();
        let listener = Listener::start(&net, &["tcp:5432:0.0.0.0".to_owned()]);
        let daemon = Daemon::start_with_policy(&policy(&format!(
            "    - {{ name: prod-db, ips: [{db}], ports: [5432], action: deny }}\n"
        )));
        Self {
            _net: net,
            db,
            listener,
            daemon,
        }
    }
}

/// The two kinds of tagged tree, each running `script` in bash.
struct Sides {
    claude: PathBuf,
    _dir: tempfile::TempDir,
}

impl Sides {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let claude = dir.path().join("claude");
        std::fs::copy("/bin/bash", &claude).unwrap();
        Self { claude, _dir: dir }
    }

    /// `(side, output)` of `script` run by a recognised agent and by a `guard run` tree.
    fn run(&self, daemon: &Daemon, script: &str) -> Vec<(&'static str, Output)> {
        self.run_with(daemon, script, &[])
    }

    /// [`Self::run`] with more environment (scripts the command line names).
    fn run_with(
        &self,
        daemon: &Daemon,
        script: &str,
        env: &[(&str, &str)],
    ) -> Vec<(&'static str, Output)> {
        let mut agent = Command::new(&self.claude);
        agent.args(["-c", script]).env("CLIENT", CLIENT);
        let mut run = daemon.guard();
        run.args(["run", "--", "bash", "-c", script])
            .env("CLIENT", CLIENT);
        for (k, v) in env {
            agent.env(k, v);
            run.env(k, v);
        }
        vec![
            ("recognised agent", output(agent)),
            ("guard run", output(run)),
        ]
    }
}

fn untagged(script: &str) -> Output {
    bash_with(Path::new("bash"), script, &[])
}

/// `PROGRAM -c script` (bash, or a copy of it named like an agent) with the client script and
/// `env` in its environment.
fn bash_with(program: &Path, script: &str, env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(program);
    c.args(["-c", script]).env("CLIENT", CLIENT);
    for (k, v) in env {
        c.env(k, v);
    }
    output(c)
}

/// What `guard status` found of `kind` (`terminals`, `sshd`, …), once `f` accepts it.
fn wait_found(daemon: &Daemon, what: &str, f: impl Fn(&Value) -> bool) -> Value {
    wait_for(what, Duration::from_secs(15), || {
        let st = daemon.status_json()?;
        f(&st["deputies"]).then(|| st["deputies"].clone())
    })
}

fn found_has(d: &Value, kind: &str, needle: &str) -> bool {
    d["found"][kind].as_array().is_some_and(|l| {
        l.iter()
            .any(|s| s.as_str().is_some_and(|s| s.contains(needle)))
    })
}

fn denied_events(daemon: &Daemon, rule: &str, n: usize) -> Vec<Value> {
    net_events(daemon, n, |e| e["rule"] == rule && e["result"] != "allowed")
}

/// Wait until path rule `name` protects `path` (the daemon resolves path rules after it
/// serves its API).
fn wait_path_rule(daemon: &Daemon, name: &str, path: &str) {
    wait_for(
        &format!("{name} in force on {path}"),
        Duration::from_secs(20),
        || {
            let st = daemon.status_json()?;
            let rules = st["path_rules"].as_array()?;
            rules
                .iter()
                .any(|r| r["name"] == name && r.to_string().contains(path))
                .then_some(())
        },
    );
}

/// An sshd on 127.0.0.1:`port`, key authentication only, with a key for root.
struct Sshd {
    _proc: Proc,
    port: u16,
    key: PathBuf,
    privsep_made: bool,
    _dir: tempfile::TempDir,
}

impl Sshd {
    fn start() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        for name in ["host", "user"] {
            let out = output({
                let mut c = Command::new("ssh-keygen");
                c.args(["-q", "-t", "ed25519", "-N", "", "-f"])
                    .arg(d.join(name));
                c
            });
            assert!(out.status.success(), "ssh-keygen: {}", text(&out));
        }
        std::fs::copy(d.join("user.pub"), d.join("authorized_keys")).unwrap();
        let port = free_port();
        let config = d.join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {d}/host\n\
                 AuthorizedKeysFile {d}/authorized_keys\nStrictModes no\nUsePAM no\n\
                 PermitRootLogin prohibit-password\nPidFile {d}/sshd.pid\n\
                 AllowTcpForwarding yes\n",
                d = d.display()
            ),
        )
        .unwrap();
        let privsep = Path::new("/run/sshd");
        let privsep_made = !privsep.exists();
        if privsep_made {
            std::fs::create_dir(privsep).unwrap();
        }
        let mut c = Command::new("/usr/sbin/sshd");
        c.args(["-D", "-E"])
            .arg(d.join("sshd.log"))
            .arg("-f")
            .arg(&config);
        let proc = Proc::spawn(c);
        wait_for("sshd to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Self {
            _proc: proc,
            port,
            key: d.join("user"),
            privsep_made,
            _dir: dir,
        }
    }

    /// `ssh … root@127.0.0.1` with `args` after it.
    fn ssh(&self, args: &str) -> String {
        format!(
            "ssh -F /dev/null -p {} -i {} -o BatchMode=yes -o StrictHostKeyChecking=no \
             -o UserKnownHostsFile=/dev/null -o LogLevel=ERROR {args}",
            self.port,
            self.key.display()
        )
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        if self.privsep_made {
            let _ = std::fs::remove_dir("/run/sshd");
        }
    }
}

/// `python3 -c CODE ARGS…`, untagged, once it printed its first line; the process and that
/// line.
fn python_ready(code_and_args: &[&str]) -> (Proc, String) {
    let mut c = Command::new("python3");
    c.arg("-c").args(code_and_args);
    ready(c)
}

/// `c` started, once it printed its first line (which is returned).
fn ready(mut c: Command) -> (Proc, String) {
    c.stdout(std::process::Stdio::piped());
    let mut p = Proc::spawn(c);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(p.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (p, line.trim().to_owned())
}

fn rule_status(daemon: &Daemon, name: &str) -> Value {
    let st = daemon.status_json().expect("status");
    st["deputies"]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no rule {name} in status: {}", st["deputies"]))
}

/// Run `script` in bash, untagged: the human, later.
fn human(script: &str) -> Output {
    untagged(script)
}

/// Removes a file on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
