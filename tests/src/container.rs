//! A real container engine for the container tests: podman from Debian's packages, with
//! the flags this kind of machine needs, images made offline from a directory, and
//! containers removed on drop.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::OnceLock,
};

use crate::{output_text, unique};

/// The image `cargo xtask image` built (`cargo xtask test` sets it).
pub const ENV_IMAGE: &str = "GUARD_IMAGE";
/// A static busybox for the workload image (`cargo xtask test` sets it).
pub const ENV_BUSYBOX: &str = "GUARD_BUSYBOX";

fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!(
            "{name} is not set: {what} (run the tests through `cargo xtask test`, which sets \
             it, or set it by hand)"
        )
    })
}

/// guard's own image.
pub fn guard_image() -> String {
    required_env(
        ENV_IMAGE,
        "the tag of guard's image, from `cargo xtask image`",
    )
}

/// `podman` with the global flags this machine needs: runc where the cgroup layout is not
/// pure cgroup v2 (crun refuses hybrid layouts), cgroupfs without systemd, events in a file.
pub fn podman() -> Command {
    let mut c = Command::new("podman");
    c.args(global_flags()).stdin(Stdio::null());
    c
}

fn global_flags() -> &'static [String] {
    static FLAGS: OnceLock<Vec<String>> = OnceLock::new();
    FLAGS.get_or_init(|| {
        let mut flags = vec![
            "--cgroup-manager=cgroupfs".to_owned(),
            "--events-backend=file".to_owned(),
        ];
        if !pure_cgroup2() {
            flags.push("--runtime=runc".to_owned());
        }
        flags
    })
}

fn pure_cgroup2() -> bool {
    nix::sys::statfs::statfs("/sys/fs/cgroup")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
}

/// `podman run` flags every container of the tests gets: podman asks for more open files and
/// processes than root may grant here (no CAP_SYS_RESOURCE), so the limits are the hard ones
/// (processes: no more than pid_max, which podman lowers its own limit to).
pub fn run_flags() -> Vec<String> {
    let pid_max: u64 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(32768);
    let nofile = hard_limit("Max open files").min(1 << 20);
    let nproc = hard_limit("Max processes").min(pid_max);
    vec![
        format!("--ulimit=nofile={nofile}:{nofile}"),
        format!("--ulimit=nproc={nproc}:{nproc}"),
    ]
}

/// The hard limit on the line of /proc/self/limits that starts with `name`.
fn hard_limit(name: &str) -> u64 {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("read /proc/self/limits");
    let line = limits
        .lines()
        .find(|l| l.starts_with(name))
        .unwrap_or_else(|| panic!("no {name:?} in /proc/self/limits"));
    let hard = line[name.len()..].split_whitespace().nth(1).unwrap_or("");
    hard.parse().unwrap_or(u64::MAX)
}

/// Run a podman command to completion; panics with its output when it fails.
pub fn podman_ok(args: &[&str]) -> Output {
    let out = podman().args(args).output().expect("run podman");
    assert!(
        out.status.success(),
        "podman {}: {}",
        args.join(" "),
        output_text(&out)
    );
    out
}

/// A container, removed (with its processes) on drop.
pub struct Container {
    pub name: String,
}

impl Container {
    /// `podman run -d --name NAME ARGS…` (ARGS: flags, image, command).
    pub fn start(args: &[&str]) -> Self {
        Self::start_with(&[], args)
    }

    /// [`Container::start`] with podman's global flags `global` (`--hooks-dir …`).
    pub fn start_with(global: &[&str], args: &[&str]) -> Self {
        let name = unique("guard-ct");
        let mut c = podman();
        c.args(global)
            .args(["run", "-d", "--name", &name])
            .args(run_flags())
            .args(args);
        let out = c.output().expect("run podman");
        let me = Self { name };
        assert!(
            out.status.success(),
            "podman run {}: {}",
            args.join(" "),
            output_text(&out)
        );
        me
    }

    /// The host PID of the container's first process (0 when it is not running).
    pub fn pid(&self) -> u32 {
        let out = podman_ok(&["inspect", "--format", "{{.State.Pid}}", &self.name]);
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0)
    }

    /// `podman exec NAME ARGS…`.
    pub fn exec(&self, args: &[&str]) -> Output {
        podman()
            .args(["exec", &self.name])
            .args(args)
            .output()
            .expect("run podman exec")
    }

    /// The container's own output so far.
    pub fn logs(&self) -> String {
        let out = podman().args(["logs", &self.name]).output();
        out.map(|o| output_text(&o)).unwrap_or_default()
    }

    /// SIGKILL everything in the container (it stays, stopped).
    pub fn kill(&self) {
        podman_ok(&["kill", "--signal", "KILL", &self.name]);
        let _ = podman().args(["wait", &self.name]).output();
    }

    pub fn restart(&self) {
        podman_ok(&["start", &self.name]);
    }
}

impl Drop for Container {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rm", "-f", "-t", "0", &self.name])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// An image made offline from a directory tree, removed on drop.
pub struct Image {
    pub tag: String,
}

impl Image {
    /// A workload image holding a static busybox as `/bin/sh` and its applets.
    pub fn busybox() -> Self {
        let busybox = PathBuf::from(required_env(ENV_BUSYBOX, "a static busybox binary"));
        let root = tempfile::tempdir().expect("tempdir");
        let bin = root.path().join("bin");
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::create_dir_all(root.path().join("tmp")).unwrap();
        std::fs::copy(&busybox, bin.join("busybox")).expect("copy busybox");
        for applet in [
            "sh", "echo", "cat", "rm", "sleep", "wget", "nc", "touch", "ls",
        ] {
            std::os::unix::fs::symlink("busybox", bin.join(applet)).unwrap();
        }
        Self::import(root.path())
    }

    fn import(root: &Path) -> Self {
        let tag = format!("localhost/{}:test", unique("guard-workload"));
        let mut tar = Command::new("tar")
            .args(["-C", root.to_str().unwrap(), "-c", "."])
            .stdout(Stdio::piped())
            .spawn()
            .expect("run tar");
        let out = podman()
            .args(["import", "--change", "CMD [\"/bin/sh\"]", "-", &tag])
            .stdin(tar.stdout.take().expect("tar stdout"))
            .output()
            .expect("run podman import");
        let tarred = tar.wait().expect("wait for tar");
        assert!(tarred.success(), "tar of the image's root: {tarred}");
        assert!(out.status.success(), "podman import: {}", output_text(&out));
        Self { tag }
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        let _ = podman()
            .args(["rmi", "-f", &self.tag])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// podman's Docker-compatible API (`podman system service`) on a socket of the test's,
/// stopped on drop.
pub struct PodmanApi {
    proc: crate::Proc,
    pub socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl PodmanApi {
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("podman.sock");
        let mut c = podman();
        c.args(["system", "service", "--time=0"])
            .arg(format!("unix://{}", socket.display()));
        let me = Self {
            proc: crate::Proc::spawn(c),
            socket,
            _dir: dir,
        };
        crate::wait_for("podman's API", std::time::Duration::from_secs(20), || {
            let out = Command::new("curl")
                .args(["-sf", "--unix-socket"])
                .arg(&me.socket)
                .arg("http://d/_ping")
                .output()
                .ok()?;
            out.status.success().then_some(())
        });
        me
    }
}

impl Drop for PodmanApi {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.proc.pid() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.proc.child.wait();
    }
}

/// A hooks directory for podman (`--hooks-dir`) with guard's `createRuntime` hook, aimed at
/// the daemon whose socket is `socket`: the deploy/podman hook with the test's paths.
pub fn hooks_dir(guard: &Path, socket: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let hook = serde_json::json!({
        "version": "1.0.0",
        "hook": {
            "path": guard,
            "args": ["guard", "oci-hook"],
            "env": [format!("GUARD_SOCKET={}", socket.display())],
        },
        "when": { "always": true },
        "stages": ["createRuntime"],
    });
    std::fs::write(dir.path().join("guard.json"), hook.to_string()).expect("write the hook");
    dir
}
