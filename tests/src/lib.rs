//! Harness for guard's privileged integration tests: they load the real programs into the
//! running kernel and drive real processes. Every resource a test creates (daemon, pins,
//! temp dirs, child processes, network namespaces, mounts) is owned by an RAII guard that
//! cleans up on drop, also when the test panics.
//!
//! Tests never skip silently: without root they fail with a message saying so.

pub mod container;
pub mod netns;
pub mod webhook;

use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread::sleep,
    time::{Duration, Instant},
};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde_json::Value;
use tempfile::TempDir;

/// Fail the test (never skip) unless running as root.
pub fn require_root() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "guard's integration tests load eBPF programs and need root: run them with `cargo xtask test` as root"
    );
}

/// Whether the run is under CI, where every kernel feature of this machine must be present.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// The tier the daemon must enforce with, when the environment says (`GUARD_EXPECT_TIER`,
/// set by the VM harness: `bpf-lsm` or `fallback`). On the development machine BPF LSM
/// programs are refused, so the daemon's tier there is `fallback`.
pub fn expected_tier() -> String {
    std::env::var("GUARD_EXPECT_TIER")
        .ok()
        .filter(|t| t == "bpf-lsm" || t == "fallback")
        .unwrap_or_else(|| "fallback".into())
}

/// Whether the tests run against the bpf-lsm tier (the LSM programs refuse operations in
/// the kernel: denials replace the fallback tier's kill-on-detect).
pub fn lsm_tier() -> bool {
    expected_tier() == "bpf-lsm"
}

/// Whether destructive file operations of tagged processes (unlink, rename, truncate,
/// chmod/chown, link, create) are refused in the kernel with EPERM, nothing lost: the bpf-lsm
/// tier's path hooks, or on the fallback tier the `fmod_ret` programs on the `security_path_*`
/// functions that run them, where the kernel takes trampoline programs. Elsewhere (this
/// machine's 6.18 refuses trampolines) the fallback tier kills on detection. Read from what
/// `guard status` says of the delete or protected-name layer of its path rules; the VM
/// matrix's kernels (6.1, 6.12) take trampolines, so there the fallback tier must refuse.
pub fn file_changes_refused(status: &Value) -> bool {
    if lsm_tier() {
        return true;
    }
    let refused = status["path_rules"].as_array().is_some_and(|rules| {
        rules.iter().any(|r| {
            r["layers"].as_array().is_some_and(|ls| {
                ls.iter().any(|l| {
                    l["covers"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("delete") || c.starts_with("protected name"))
                        && l["status"] == "enforced"
                        && l["via"].as_str().is_some_and(|v| v.contains("fmod_ret"))
                })
            })
        })
    });
    assert!(
        refused || std::env::var_os("GUARD_VM").is_none(),
        "the VM's kernels take fmod_ret programs, yet guard status does not say the fallback \
         tier refuses file changes: {}",
        status["path_rules"]
    );
    refused
}

/// The prefix of the `hook` of a file change refused in the kernel: `lsm_` (bpf-lsm) or
/// `security_` (the fallback tier's `fmod_ret` programs, named for the function).
pub fn refusal_hook_prefix() -> &'static str {
    if lsm_tier() { "lsm_" } else { "security_" }
}

/// In the VM matrix, on the fallback tier of a kernel with neither the ctime tracepoints
/// (before 6.13) nor the refusals: the reason, when `guard status` reports the delete layer
/// of some path rule `not-loaded` there. Never on the development machine, where the tests
/// must exercise it (it returns `None` and the test goes on to fail).
pub fn kill_on_detect_unavailable(status: &Value) -> Option<String> {
    std::env::var_os("GUARD_VM")?;
    let rules = status["path_rules"].as_array()?;
    rules.iter().find_map(|r| {
        r["layers"].as_array()?.iter().find_map(|l| {
            (l["covers"].as_str()?.starts_with("delete") && l["status"] == "not-loaded").then(|| {
                format!(
                    "kill-on-detect is not loaded on this kernel (guard status says so for rule {}: {})",
                    r["name"], l["via"]
                )
            })
        })
    })
}

/// The `guard` binary under test: `$GUARD_BIN`, else the workspace's debug build.
pub fn guard_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("GUARD_BIN") {
        return PathBuf::from(p);
    }
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/guard");
    assert!(
        p.exists(),
        "no guard binary at {} and GUARD_BIN is not set: run the tests with `cargo xtask test`",
        p.display()
    );
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process's resources.
/// A loopback TCP port nothing listens on now.
pub fn free_port() -> u16 {
    free_ports::<1>()[0]
}

/// `N` distinct free loopback TCP ports (held together while they are picked).
pub fn free_ports<const N: usize>() -> [u16; N] {
    let held: Vec<std::net::TcpListener> = (0..N)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    std::array::from_fn(|i| held[i].local_addr().unwrap().port())
}

pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `f` until it returns `Some`, or panic with `what` after `timeout` — four times as
/// long in the VM matrix, whose guests run under software emulation on a shared host (these
/// are bounds on liveness, never measurements of speed).
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let timeout = if std::env::var_os("GUARD_VM").is_some() {
        timeout * 4
    } else {
        timeout
    };
    let start = Instant::now();
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}"
        );
        sleep(Duration::from_millis(20));
    }
}

/// A `guard daemon` with its own socket, pin directory, event log and policy.
pub struct Daemon {
    pub dir: TempDir,
    pub socket: PathBuf,
    pub pin_dir: PathBuf,
    pub event_log: PathBuf,
    pub policy: Option<PathBuf>,
    /// Extra `guard daemon` arguments.
    pub args: Vec<String>,
    child: Option<Child>,
    /// Keep the pins after drop (for tests that restart a daemon on the same pins).
    pub keep_pins: bool,
    /// Extra environment of the daemon process.
    pub daemon_env: Vec<(String, PathBuf)>,
}

/// A name server address nothing answers at (the discard port on loopback).
pub const NO_DNS: &str = "127.0.0.1:9";

impl Daemon {
    /// Start a daemon on the embedded default policy.
    pub fn start() -> Self {
        Self::start_with(None)
    }

    /// Start a daemon on `policy_yaml`, written to a file in the daemon's temp dir.
    pub fn start_with_policy(policy_yaml: &str) -> Self {
        Self::start_with(Some(policy_yaml))
    }

    fn start_with(policy_yaml: Option<&str>) -> Self {
        Self::start_at(
            policy_yaml,
            PathBuf::from("/sys/fs/bpf").join(unique("guard-test")),
        )
    }

    /// Start a daemon on `policy_yaml` (or the embedded default) with extra daemon arguments.
    pub fn start_with_args(policy_yaml: Option<&str>, args: &[&str]) -> Self {
        Self::start_full(
            policy_yaml,
            PathBuf::from("/sys/fs/bpf").join(unique("guard-test")),
            args,
            &[],
        )
    }

    /// Start a daemon pinning under `pin_dir`.
    pub fn start_at(policy_yaml: Option<&str>, pin_dir: PathBuf) -> Self {
        Self::start_full(policy_yaml, pin_dir, &[], &[])
    }

    /// A daemon's directory, policy, socket, pin directory and event log, not started: for
    /// a test that starts the daemon elsewhere (in a container) on these same paths.
    pub fn prepare(policy_yaml: Option<&str>) -> Self {
        Self::prepare_full(
            policy_yaml,
            PathBuf::from("/sys/fs/bpf").join(unique("guard-test")),
            &[],
            &[],
        )
    }

    fn start_full(
        policy_yaml: Option<&str>,
        pin_dir: PathBuf,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        let mut d = Self::prepare_full(policy_yaml, pin_dir, args, env);
        d.spawn();
        d
    }

    fn prepare_full(
        policy_yaml: Option<&str>,
        pin_dir: PathBuf,
        args: &[&str],
        env: &[(&str, &Path)],
    ) -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("guard-test-")
            .tempdir()
            .expect("tempdir");
        let policy = policy_yaml.map(|y| {
            let p = dir.path().join("policy.yaml");
            std::fs::write(&p, y).expect("write policy");
            p
        });
        Self {
            socket: dir.path().join("guard.sock"),
            pin_dir,
            event_log: dir.path().join("events.jsonl"),
            policy,
            args: args.iter().map(|a| a.to_string()).collect(),
            dir,
            child: None,
            keep_pins: false,
            daemon_env: env
                .iter()
                .map(|(k, v)| ((*k).to_owned(), v.to_path_buf()))
                .collect(),
        }
    }

    /// Start a daemon on `policy_yaml` with extra environment (`GUARD_PASSWD`, …).
    pub fn start_with_env(policy_yaml: &str, env: &[(&str, &Path)]) -> Self {
        Self::start_full(
            Some(policy_yaml),
            PathBuf::from("/sys/fs/bpf").join(unique("guard-test")),
            &[],
            env,
        )
    }

    /// Environment that points a `guard` command at this daemon.
    pub fn env(&self) -> Vec<(&'static str, PathBuf)> {
        vec![
            ("GUARD_SOCKET", self.socket.clone()),
            ("GUARD_PIN_DIR", self.pin_dir.clone()),
            ("GUARD_EVENT_LOG", self.event_log.clone()),
        ]
    }

    /// Run `guard ARGS…` aimed at this daemon to completion.
    pub fn cli(&self, args: &[&str]) -> Output {
        let mut c = self.guard();
        c.args(args);
        output(c)
    }

    /// A `guard` command aimed at this daemon.
    pub fn guard(&self) -> Command {
        let mut c = Command::new(guard_bin());
        c.envs(self.env()).env_remove("RUST_BACKTRACE");
        c
    }

    /// (Re)start the daemon process on the same socket, pins and log.
    pub fn spawn(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("daemon.log")).expect("daemon log");
        let mut cmd = self.guard();
        cmd.arg("daemon")
            .stdout(log.try_clone().expect("dup"))
            .stderr(log);
        if let Some(p) = &self.policy {
            cmd.arg("--policy").arg(p);
        }
        cmd.args(&self.args);
        // Host rules (the default policy's `@control-planes`) are resolved by a name server on
        // loopback that answers nothing, unless a test runs its own: tests never send a query
        // past the machine.
        if std::env::var_os("GUARD_DNS_SERVER").is_none() {
            cmd.env("GUARD_DNS_SERVER", NO_DNS);
        }
        cmd.envs(self.daemon_env.iter().map(|(k, v)| (k, v)));
        let child = cmd.spawn().expect("spawn guard daemon");
        let pid = child.id();
        self.child = Some(child);
        // Loading and verifying every program takes a few seconds natively, and up to a
        // minute or two under the VM matrix's software emulation (6.1's verifier, bpf-lsm
        // tier): `wait_for` gives the VM four times this.
        let start_limit = Duration::from_secs(45);
        wait_for("the daemon to serve its API", start_limit, || {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!(
                    "guard daemon (pid {pid}) exited with {status}:\n{}",
                    self.log()
                );
            }
            self.status_json().filter(|s| s["daemon_pid"] == pid)
        });
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(Child::id).expect("daemon running")
    }

    /// The daemon's own log (stderr/stdout).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    /// `guard status -o json`, or None if the daemon does not answer.
    pub fn status_json(&self) -> Option<Value> {
        let out = self.guard().args(["status", "-o", "json"]).output().ok()?;
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()
            .filter(|v| v.get("daemon_pid").is_some())
    }

    /// The tier the daemon enforces with; asserts it is the one this run expects.
    pub fn assert_tier(&self) -> String {
        let status = wait_for("guard status", Duration::from_secs(30), || {
            self.status_json()
        });
        let tier = status["tier"].as_str().unwrap_or_default().to_owned();
        assert_eq!(
            tier,
            expected_tier(),
            "the daemon enforces with the wrong tier: {}",
            status["tier_error"]
        );
        tier
    }

    /// `guard ps -o json` processes.
    pub fn ps(&self) -> Vec<Value> {
        let out = self
            .guard()
            .args(["ps", "-o", "json"])
            .output()
            .expect("guard ps");
        assert!(
            out.status.success(),
            "guard ps failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let v: Value = serde_json::from_slice(&out.stdout).expect("ps json");
        v["processes"].as_array().cloned().unwrap_or_default()
    }

    /// The tag of `pid` as `guard ps` shows it.
    pub fn tag_of(&self, pid: u32) -> Option<Value> {
        self.ps().into_iter().find(|p| p["pid"] == pid)
    }

    /// Every whole line of the event log, parsed.
    pub fn events(&self) -> Vec<Value> {
        let text = std::fs::read_to_string(&self.event_log).unwrap_or_default();
        // The daemon may be in the middle of appending a line: whole lines only.
        text[..text.rfind('\n').map_or(0, |i| i + 1)]
            .lines()
            .map(|l| {
                serde_json::from_str(l).unwrap_or_else(|e| panic!("bad event line {l:?}: {e}"))
            })
            .collect()
    }

    /// Kill the daemon with `sig` and reap it; the pins stay.
    pub fn signal_and_reap(&mut self, sig: Signal) {
        if let Some(mut child) = self.child.take() {
            let _ = kill(Pid::from_raw(child.id() as i32), sig);
            let _ = child.wait();
        }
    }

    /// Stop the daemon (SIGTERM) and start it again on the same pins, socket, log and policy.
    pub fn restart(&mut self) {
        let keep = self.keep_pins;
        self.keep_pins = true;
        self.signal_and_reap(Signal::SIGTERM);
        self.spawn();
        self.keep_pins = keep;
    }

    /// Send the daemon SIGHUP (apply the policy file again).
    pub fn sighup(&self) {
        kill(Pid::from_raw(self.pid() as i32), Signal::SIGHUP).expect("SIGHUP the daemon");
    }

    /// Whether the daemon applies a change of its policy file on its own (where the kernel
    /// refuses or detects tagged changes of it); elsewhere an administrator applies it.
    pub fn file_changes_apply(&self) -> bool {
        let st = self.status_json().expect("status");
        let how = st["self_protection"]["policy_changes"]
            .as_str()
            .unwrap_or_default();
        !how.starts_with("this kernel cannot tell")
    }

    /// A change of the policy file as an administrator makes it: written, and applied with
    /// SIGHUP where the daemon does not apply file changes on its own.
    pub fn admin_writes(&self, policy: &Path, text: &str) {
        std::fs::write(policy, text).expect("write the policy");
        if !self.file_changes_apply() {
            self.sighup();
        }
    }

    /// The generation of the policy in force.
    pub fn generation(&self) -> u64 {
        self.status_json().expect("status")["policy_generation"]
            .as_u64()
            .expect("policy_generation in status")
    }

    /// SIGHUP, and wait until the next generation is in force.
    pub fn reload(&self) {
        let before = self.generation();
        self.sighup();
        wait_for("the reload", Duration::from_secs(10), || {
            (self.generation() > before).then_some(())
        });
    }

    /// `guard run -- args…` aimed at this daemon, as a spawned child in its own process group.
    pub fn run_tagged(&self, args: &[&str]) -> Proc {
        let mut c = self.guard();
        c.arg("run").arg("--").args(args);
        Proc::spawn(c)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.signal_and_reap(Signal::SIGTERM);
        if !self.keep_pins {
            let _ = Command::new(guard_bin())
                .envs(self.env())
                .args(["daemon", "--uninstall"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = std::fs::remove_dir_all(&self.pin_dir);
        }
    }
}

/// A child process in its own process group, killed (whole group) on drop.
pub struct Proc {
    pub child: Child,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Self {
        cmd.process_group(0).stdin(Stdio::null());
        Self {
            child: cmd.spawn().expect("spawn"),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Wait for exit with a timeout; panics on timeout.
    pub fn wait_timeout(&mut self, timeout: Duration) -> std::process::ExitStatus {
        wait_for("a child process to exit", timeout, || {
            self.child.try_wait().ok().flatten()
        })
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = kill(Pid::from_raw(-(self.child.id() as i32)), Signal::SIGKILL);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Kill every pid in `pids` (processes a test started that left its process group).
pub struct KillOnDrop(pub Vec<u32>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for pid in &self.0 {
            let _ = kill(Pid::from_raw(*pid as i32), Signal::SIGKILL);
        }
    }
}

/// Run a command to completion and return its output.
pub fn output(mut cmd: Command) -> Output {
    cmd.stdin(Stdio::null()).output().expect("run command")
}

/// Status, stdout and stderr of `o` in one string, for assertion messages.
pub fn output_text(o: &Output) -> String {
    format!(
        "{:?} {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Read a pid written by a test process into `file`, waiting for it.
pub fn read_pid_file(file: &Path) -> u32 {
    wait_for(
        &format!("a pid in {}", file.display()),
        Duration::from_secs(10),
        || std::fs::read_to_string(file).ok()?.trim().parse().ok(),
    )
}

/// Whether `pid` is alive (and not a zombie).
pub fn alive(pid: u32) -> bool {
    match procfs::process::Process::new(pid as i32).and_then(|p| p.stat()) {
        Ok(stat) => stat.state != 'Z',
        Err(_) => false,
    }
}

/// All live descendants of `pid` (by ppid, from /proc).
pub fn descendants(pid: u32) -> Vec<u32> {
    let procs: Vec<(u32, u32)> = procfs::process::all_processes()
        .expect("/proc")
        .filter_map(Result::ok)
        .filter_map(|p| p.stat().ok())
        .filter(|s| s.state != 'Z')
        .map(|s| (s.pid as u32, s.ppid as u32))
        .collect();
    let mut out = Vec::new();
    let mut frontier = vec![pid];
    while let Some(p) = frontier.pop() {
        for (child, parent) in &procs {
            if *parent == p && !out.contains(child) {
                out.push(*child);
                frontier.push(*child);
            }
        }
    }
    out
}

/// Run `cmd` as an unprivileged user (nobody).
pub fn as_nobody(cmd: &mut Command) -> &mut Command {
    cmd.uid(65534).gid(65534)
}

/// A copy of the guard binary that any user may execute (the build tree may sit in a
/// directory only root can enter); removed on drop.
pub struct PublicGuard {
    _dir: TempDir,
    pub path: PathBuf,
}

pub fn world_executable_guard() -> PublicGuard {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("guard-test-bin-")
        .tempdir()
        .expect("tempdir");
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = dir.path().join("guard");
    std::fs::copy(guard_bin(), &path).expect("copy guard");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    PublicGuard { _dir: dir, path }
}

/// Spawn `cmd` with piped stdout and read the first line as a pid.
pub fn spawn_reading_pid(mut cmd: Command) -> (Proc, u32) {
    cmd.stdout(Stdio::piped());
    let mut p = Proc::spawn(cmd);
    let stdout = p.child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line).expect("read");
    let pid = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("expected a pid, got {line:?}"));
    (p, pid)
}
