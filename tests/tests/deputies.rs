//! No deputies: an agent cannot get an untagged process to act for it. Each attack runs from
//! a recognised agent (a shell named `claude`) and from a `guard run` tree, and fails; the
//! same action by an untagged process succeeds. Real tools: tmux, at with an atd the test
//! starts, openssh's sshd on loopback, socat, ssh -L, bash.

#[allow(
    dead_code,
    reason = "shared with the network tests; this file uses part"
)]
mod network_support;

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Output},
    time::Duration,
};

use guard_tests::{Daemon, Proc, output, wait_for};
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

/// A free loopback TCP port.
fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback TCP ports (held together while they are picked).
fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
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

/// A forwarder found by its connections: it accepts, then connects to `to` and holds both.
const RELAY: &str = r#"
import socket, sys, threading, time
port, host, dport = int(sys.argv[1]), sys.argv[2], int(sys.argv[3])
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(8)
print("ready", flush=True)
held = []
while True:
    c, _ = s.accept()
    u = socket.create_connection((host, dport))
    held.append((c, u))
"#;

#[test]
fn forwarders_to_a_protected_endpoint_are_that_endpoint() {
    let ProdDb {
        _net,
        db,
        listener,
        daemon,
    } = ProdDb::start();
    let sshd = Sshd::start();
    let [p_socat, p_ssh, p_relay] = free_ports::<3>();
    let socat = Proc::spawn({
        let mut c = Command::new("socat");
        c.arg(format!(
            "TCP-LISTEN:{p_socat},bind=127.0.0.1,fork,reuseaddr"
        ))
        .arg(format!("TCP:{db}:5432"));
        c
    });
    let tunnel = Proc::spawn({
        let mut c = Command::new("bash");
        c.args([
            "-c",
            &format!(
                "exec {}",
                sshd.ssh(&format!("-N -L {p_ssh}:{db}:5432 root@127.0.0.1"))
            ),
        ]);
        c
    });
    let (relay, _) = python_ready(&[RELAY, &p_relay.to_string(), &db, "5432"]);
    // The relay says nothing about where it leads until a connection goes through it.
    let held = Proc::spawn({
        let mut c = Command::new("python3");
        c.args(["-c", CLIENT, "tcp", "127.0.0.1", &p_relay.to_string(), "60"])
            .stdout(std::process::Stdio::null());
        c
    });
    let d = wait_found(&daemon, "the three forwarders found", |d| {
        d["forwarders"].as_array().is_some_and(|f| f.len() >= 3)
    });
    // The connection that showed where the relay leads closes within a second (the
    // listener answers and hangs up): the relay stays known while it runs and listens.
    std::thread::sleep(Duration::from_secs(3));
    let fwd = d["forwarders"].to_string();
    assert!(
        fwd.contains("socat") && fwd.contains("by its arguments"),
        "{fwd}"
    );
    assert!(fwd.contains("ssh (pid"), "{fwd}");
    assert!(
        fwd.contains("python3") && fwd.contains("by its connections"),
        "{fwd}"
    );
    let sides = Sides::new();
    for port in [p_socat, p_ssh, p_relay] {
        for (side, out) in sides.run(
            &daemon,
            &format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {port}"),
        ) {
            assert_eperm(&out, &format!("{side} through port {port}"));
        }
    }
    let evs = denied_events(&daemon, "prod-db", 6);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("forwarder"))),
        "{evs:#?}"
    );
    let before = listener.count("tcp:5432");
    for port in [p_socat, p_ssh] {
        assert_ok(
            &untagged(&format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {port}")),
            "untagged",
        );
    }
    wait_for(
        "the untagged connections to arrive",
        Duration::from_secs(10),
        || (listener.count("tcp:5432") >= before + 2).then_some(()),
    );
    drop((held, relay, tunnel, socat));
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

/// Reach into process `argv[1]` and push a keystroke into terminal `argv[2]`; one line per
/// attempt, `NAME denied` (EPERM or EACCES) or `NAME allowed` (anything else: a bogus address
/// is EFAULT after the permission check).
const REACH: &str = r#"
import ctypes, errno, fcntl, os, sys, termios
pid, tty = int(sys.argv[1]), sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def report(name, failed, err):
    refused = failed and err in (errno.EPERM, errno.EACCES)
    print(name, "denied" if refused else "allowed", flush=True)
r = libc.ptrace(0x4206, pid, 0, 0)  # PTRACE_SEIZE
report("ptrace", r != 0, ctypes.get_errno())
if r == 0:
    libc.ptrace(17, pid, 0, 0)  # PTRACE_DETACH
try:
    open("/proc/%d/environ" % pid, "rb").read()
    report("environ", False, 0)
except OSError as e:
    report("environ", True, e.errno)
class iovec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
buf = ctypes.create_string_buffer(8)
local, remote = iovec(ctypes.cast(buf, ctypes.c_void_p), 8), iovec(4096, 8)
r = libc.syscall(310, pid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
report("process_vm_readv", r < 0, ctypes.get_errno())
pidfd = libc.syscall(434, pid, 0)
r = libc.syscall(438, pidfd, 0, 0)
report("pidfd_getfd", r < 0, ctypes.get_errno())
fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
try:
    fcntl.ioctl(fd, termios.TIOCSTI, b"x")
    report("tiocsti", False, 0)
except OSError as e:
    report("tiocsti", True, e.errno)
"#;

/// A terminal the human has open: a pty pair held by an untagged process; its path.
fn human_terminal() -> (Proc, String) {
    python_ready(&[
        "import os, time\nm, s = os.openpty()\nprint(os.ttyname(s), flush=True)\ntime.sleep(600)",
    ])
}

/// `python3 -c CODE ARGS…`, untagged, once it printed its first line; the process and that
/// line.
fn python_ready(code_and_args: &[&str]) -> (Proc, String) {
    let mut c = Command::new("python3");
    c.arg("-c")
        .args(code_and_args)
        .stdout(std::process::Stdio::piped());
    let mut p = Proc::spawn(c);
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(p.child.stdout.take().unwrap()),
        &mut line,
    )
    .unwrap();
    (p, line.trim().to_owned())
}

fn reach_results(out: &Output) -> Vec<(String, String)> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(a, b)| (a.to_owned(), b.to_owned()))
        .collect()
}

fn rule_status(daemon: &Daemon, name: &str) -> Value {
    let st = daemon.status_json().expect("status");
    st["deputies"]["rules"]
        .as_array()
        .and_then(|r| r.iter().find(|r| r["name"] == name).cloned())
        .unwrap_or_else(|| panic!("no rule {name} in status: {}", st["deputies"]))
}

#[test]
fn processes_and_terminals_outside_the_tree_are_out_of_reach() {
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let lsm = daemon.assert_tier() == "bpf-lsm";
    let target = Proc::spawn({
        let mut c = Command::new("sleep");
        c.arg("600").env("HUMANS_TOKEN", "s3cret");
        c
    });
    let (_terminal, tty) = human_terminal();
    let script = format!("python3 -c \"$REACH\" {} {tty}", target.pid());
    let access = rule_status(&daemon, "guard:process-access");
    let input = rule_status(&daemon, "guard:terminal-input");
    let sides = Sides::new();
    for (side, out) in sides.run_with(&daemon, &script, &[("REACH", REACH)]) {
        let results = reach_results(&out);
        assert_eq!(results.len(), 5, "{side}: {}", text(&out));
        for (what, verdict) in &results {
            if lsm || side == "guard run" {
                // bpf-lsm refuses every one; a guard run tree lost the capabilities a root
                // target has more of, and seccomp takes TIOCSTI.
                assert_eq!(verdict, "denied", "{side}: {what}\n{}", text(&out));
            }
        }
    }
    if lsm {
        assert!(
            access["mechanism"]
                .as_str()
                .unwrap()
                .starts_with("enforced"),
            "{access}"
        );
        assert!(
            input["mechanism"].as_str().unwrap().starts_with("enforced"),
            "{input}"
        );
        let evs: Vec<Value> = wait_for("process-access events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["kind"] == "deputy" && e["rule"] == "guard:process-access")
                .collect();
            (evs.len() >= 2).then_some(evs)
        });
        let me = format!("process {} (sleep)", target.pid());
        assert!(
            evs.iter().all(|e| e["object"]["path"] == me.as_str()
                && e["result"] == "denied"
                && !e["ancestry"].as_array().unwrap().is_empty()),
            "{evs:#?}"
        );
        assert!(
            daemon
                .events()
                .iter()
                .any(|e| e["rule"] == "guard:terminal-input" && e["agent"] == "claude-code"),
            "a TIOCSTI event"
        );
    } else {
        // The fallback tier says what it does not stop for recognised agents.
        for r in [&access, &input] {
            assert!(
                r["mechanism"].as_str().unwrap().starts_with("not-covered"),
                "{r}"
            );
        }
        let st = daemon.status_json().unwrap();
        let nc = st["deputies"]["not_covered"].to_string();
        assert!(nc.contains("ptrace") && nc.contains("TIOCSTI"), "{nc}");
    }
    // Untagged, everything is allowed (root).
    let out = bash_with(Path::new("bash"), &script, &[("REACH", REACH)]);
    let results = reach_results(&out);
    assert_eq!(results.len(), 5, "untagged: {}", text(&out));
    assert!(
        results.iter().all(|(_, v)| v == "allowed"),
        "untagged: {}",
        text(&out)
    );
    // A process of the agent's own tree stays in reach.
    let own = format!("sleep 30 & child=$!; python3 -c \"$REACH\" $child {tty}; kill $child");
    let out = bash_with(&sides.claude, &own, &[("REACH", REACH)]);
    let results = reach_results(&out);
    assert_eq!(results.len(), 5, "own tree: {}", text(&out));
    // Keystrokes are refused into every terminal (bpf-lsm); the rest reaches the agent's
    // own child on every tier.
    assert!(
        results
            .iter()
            .all(|(what, v)| what == "tiocsti" || v == "allowed"),
        "own tree: {}",
        text(&out)
    );
}

#[test]
fn root_agents_stay_under_the_capability_ceiling() {
    let daemon = Daemon::start_with_policy(&policy("    []\n"));
    let tier = daemon.assert_tier();
    let ceiling = rule_status(&daemon, "guard:capability-ceiling");
    let mechanism = ceiling["mechanism"].as_str().unwrap().to_owned();
    let ns = guard_tests::netns::NetNs::new(&[], &[]);
    let sides = Sides::new();
    let link = |name: &str| {
        let out = output({
            let mut c = ns.command("ip");
            c.args(["link", "show", name]);
            c
        });
        out.status.success()
    };
    // A recognised root agent inside the namespace adds a link (CAP_NET_ADMIN).
    let mut c = ns.command(sides.claude.to_str().unwrap());
    c.args(["-c", "ip link add gva type veth peer name gvb"]);
    let out = output(c);
    if tier == "bpf-lsm" {
        assert!(mechanism.starts_with("enforced"), "{mechanism}");
        assert!(!out.status.success(), "{}", text(&out));
        assert!(!link("gva"), "the link was added");
        let evs: Vec<Value> = wait_for("capability events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["rule"] == "guard:capability-ceiling")
                .collect();
            (!evs.is_empty()).then_some(evs)
        });
        assert!(evs.iter().all(|e| e["result"] == "denied"), "{evs:#?}");
        assert!(
            evs.iter().any(|e| e["object"]["operation"]
                .as_str()
                .unwrap()
                .contains("CAP_NET_ADMIN")),
            "{evs:#?}"
        );
    } else if mechanism.starts_with("kill-on-detect") {
        // The agent dies in the call; the link was added first.
        use std::os::unix::process::ExitStatusExt;
        assert!(
            out.status.signal() == Some(9) || out.status.code() == Some(137),
            "{}",
            text(&out)
        );
        let evs: Vec<Value> = wait_for("capability events", Duration::from_secs(10), || {
            let evs: Vec<Value> = daemon
                .events()
                .into_iter()
                .filter(|e| e["rule"] == "guard:capability-ceiling" && e["result"] == "killed")
                .collect();
            (!evs.is_empty()).then_some(evs)
        });
        assert!(
            !evs[0]["ancestry"].as_array().unwrap().is_empty(),
            "{evs:#?}"
        );
    } else {
        assert!(mechanism.starts_with("not-covered"), "{mechanism}");
    }
    // A guard run tree has no CAP_NET_ADMIN to use.
    let mut c = ns.command(guard_tests::guard_bin().to_str().unwrap());
    c.envs(daemon.env()).args([
        "run", "--", "ip", "link", "add", "gvc", "type", "veth", "peer", "name", "gvd",
    ]);
    let out = output(c);
    assert!(
        !out.status.success() && !link("gvc"),
        "guard run: {}",
        text(&out)
    );
    // Untagged root does it.
    let out = output({
        let mut c = ns.command("ip");
        c.args(["link", "add", "gve", "type", "veth", "peer", "name", "gvf"]);
        c
    });
    assert!(
        out.status.success() && link("gve"),
        "untagged: {}",
        text(&out)
    );
}

/// A connect to `ADDR:5432` through the python client, as a `#!` script.
fn client_script(addr: &str) -> String {
    format!("#!/bin/sh\nexec python3 -c \"$CLIENT\" tcp {addr} 5432\n")
}

/// The client as python code to give an interpreter.
fn client_py(addr: &str) -> String {
    format!("import sys\nsys.argv = ['client', 'tcp', '{addr}', '5432']\n{CLIENT}")
}

/// Run `script` in bash, untagged: the human, later.
fn human(script: &str) -> Output {
    untagged(script)
}

#[test]
fn files_an_agent_wrote_stay_its_when_someone_else_runs_them() {
    let ProdDb {
        _net,
        db,
        listener,
        daemon,
    } = ProdDb::start();
    let tier = daemon.assert_tier();
    let deferred = rule_status(&daemon, "guard:deferred-execution");
    let mechanism = deferred["mechanism"].as_str().unwrap().to_owned();
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
    if tier == "bpf-lsm" || mechanism.starts_with("partly") {
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
    if tier == "bpf-lsm" {
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
    if tier == "bpf-lsm" {
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

/// Removes a file on drop.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// An `iptables -t nat` rule in the host's OUTPUT chain, deleted on drop.
struct NatRule(Vec<String>);

impl NatRule {
    fn add(spec: &[&str]) -> Self {
        let spec: Vec<String> = spec.iter().map(|s| (*s).to_owned()).collect();
        let out = output({
            let mut c = Command::new("iptables");
            c.args(["-t", "nat", "-A", "OUTPUT"]).args(&spec);
            c
        });
        assert!(out.status.success(), "iptables: {}", text(&out));
        Self(spec)
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D", "OUTPUT"])
            .args(&self.0)
            .output();
    }
}

#[test]
fn a_destination_nat_rewrote_is_decided_again() {
    let ProdDb {
        _net,
        db,
        listener,
        daemon,
    } = ProdDb::start();
    let st = daemon.status_json().unwrap();
    let after_nat = st["network"]["after_nat"].as_str().unwrap_or("").to_owned();
    if daemon.assert_tier() == "bpf-lsm" {
        // A root agent cannot add the rule there (the capability ceiling refuses NET_ADMIN).
        assert!(after_nat.starts_with("not checked"), "{after_nat}");
        return;
    }
    assert!(after_nat.starts_with("enforced"), "{after_nat}");
    // An address no rule names, in the namespace's subnet, rewritten into the database's.
    let decoy = {
        let mut parts: Vec<&str> = db.split('.').collect();
        parts[3] = "9";
        parts.join(".")
    };
    let tag = format!("guard-test-{}", std::process::id());
    let _nat = NatRule::add(&[
        "-d",
        &decoy,
        "-p",
        "tcp",
        "--dport",
        "5432",
        "-m",
        "comment",
        "--comment",
        &tag,
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{db}:5432"),
    ]);
    let before = listener.count("tcp:5432");
    let sides = Sides::new();
    for (side, out) in sides.run(&daemon, &format!("python3 -c \"$CLIENT\" tcp {decoy} 5432")) {
        assert!(
            !String::from_utf8_lossy(&out.stdout).starts_with("ok"),
            "{side}: reached the database through NAT\n{}",
            text(&out)
        );
    }
    assert_eq!(
        listener.count("tcp:5432"),
        before,
        "nothing reached the database"
    );
    let evs = net_events(&daemon, 2, |e| {
        e["rule"] == "prod-db" && e["hook"] == "egress4"
    });
    assert!(
        evs.iter()
            .all(|e| e["destination"]["address"] == db.as_str() && e["result"] == "denied"),
        "{evs:#?}"
    );
    assert_ok(
        &untagged(&format!("python3 -c \"$CLIENT\" tcp {decoy} 5432")),
        "untagged through NAT",
    );
}
