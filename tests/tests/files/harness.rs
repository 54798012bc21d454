//! Helpers of the file tests: the loop-mounted volume, byte-for-byte snapshots, the agent
//! shell, policies and event lookups.

use std::{
    collections::BTreeMap,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::Duration,
};

use guard_tests::{Daemon, require_root, wait_for};
use serde_json::Value;
use tempfile::TempDir;

pub const URING_OPEN: &str = env!("CARGO_BIN_EXE_guard-uring-open");
/// The agent's executable name (comm holds at most 15 bytes).
pub const AGENT: &str = "guardfileagent";
pub const SECRET: &str = "railway-token-0123456789abcdef";

pub fn run(cmd: &str, args: &[&str]) -> Output {
    let out = Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A loop-mounted ext4 image with a database and backups; unmounted and detached on drop.
pub struct Volume {
    pub dir: TempDir,
    pub image: PathBuf,
    pub mnt: PathBuf,
    pub loopdev: String,
}

impl Volume {
    pub fn new() -> Self {
        require_root();
        let dir = tempfile::Builder::new()
            .prefix("guard-vol-")
            .tempdir()
            .expect("tempdir");
        let image = dir.path().join("prod.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        run(
            "dd",
            &[
                "if=/dev/zero",
                &format!("of={}", image.display()),
                "bs=1M",
                "count=48",
                "status=none",
            ],
        );
        run("mkfs.ext4", &["-q", "-F", image.to_str().unwrap()]);
        let out = run("losetup", &["-f", "--show", image.to_str().unwrap()]);
        let loopdev = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        let v = Self {
            dir,
            image,
            mnt,
            loopdev,
        };
        run("mount", &[&v.loopdev, v.mnt.to_str().unwrap()]);
        for (path, size) in [
            ("database/PG_VERSION", 3),
            ("database/global/pg_control", 8192),
            ("database/base/1/16384", 24_576),
            ("database/base/1/16385", 8192),
            ("database/base/5/2600", 16_384),
            ("database/pg_wal/000000010000000000000001", 65_536),
            ("backups/daily/db-2026-11-20.sql.gz", 40_000),
            ("backups/daily/db-2026-11-21.sql.gz", 41_000),
            ("backups/weekly/db-2026-w46.sql.gz", 50_000),
        ] {
            let p = v.mnt.join(path);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            let data: Vec<u8> = (0..size)
                .map(|i: usize| (i.wrapping_mul(31) ^ path.len()) as u8)
                .collect();
            fs::write(&p, data).unwrap();
        }
        v
    }

    pub fn db(&self) -> PathBuf {
        self.mnt.join("database")
    }

    pub fn backups(&self) -> PathBuf {
        self.mnt.join("backups")
    }

    /// `(major, minor)` of the loop device.
    pub fn numbers(&self) -> (u32, u32) {
        let text = fs::read_to_string(format!(
            "/sys/class/block/{}/dev",
            Path::new(&self.loopdev)
                .file_name()
                .unwrap()
                .to_string_lossy()
        ))
        .unwrap();
        let (a, b) = text.trim().split_once(':').unwrap();
        (a.parse().unwrap(), b.parse().unwrap())
    }
}

impl Drop for Volume {
    fn drop(&mut self) {
        let mnt = self.mnt.to_str().unwrap_or_default().to_owned();
        let ok = Command::new("umount")
            .arg(&mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").args(["-l", &mnt]).status();
        }
        let _ = Command::new("losetup").args(["-d", &self.loopdev]).status();
        let _ = &self.dir;
    }
}

/// Every entry below `root`: `None` for a directory, the bytes of a file.
pub type Snapshot = BTreeMap<String, Option<Vec<u8>>>;

pub fn snapshot(root: &Path) -> Snapshot {
    let mut out = Snapshot::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.map(Result::unwrap) {
            let p = e.path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            if rel == "lost+found" {
                continue;
            }
            if e.file_type().unwrap().is_dir() {
                out.insert(rel, None);
                stack.push(p);
            } else {
                out.insert(rel, Some(fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// Entries of `before` that are missing or different in `after`.
pub fn changed(before: &Snapshot, after: &Snapshot) -> Vec<String> {
    before
        .iter()
        .filter(|(k, v)| after.get(*k) != Some(*v))
        .map(|(k, _)| k.clone())
        .collect()
}

/// Put back everything of `snap` below `root` (as an untagged process) and drop the rest.
pub fn restore(root: &Path, snap: &Snapshot) {
    for (rel, v) in snap {
        let p = root.join(rel);
        match v {
            None => fs::create_dir_all(&p).unwrap(),
            Some(data) => {
                fs::create_dir_all(p.parent().unwrap()).unwrap();
                if fs::read(&p).ok().as_ref() != Some(data) {
                    fs::write(&p, data).unwrap();
                }
            }
        }
    }
    assert_eq!(&snapshot(root), snap, "restore");
}

/// A copy of bash named like the policy's agent: what it runs is tagged at exec.
pub struct Agent {
    pub _dir: TempDir,
    pub path: PathBuf,
}

impl Agent {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("guard-agent-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join(AGENT);
        fs::copy("/bin/bash", &path).unwrap();
        Self { _dir: dir, path }
    }

    /// Run `script` with the agent's shell.
    pub fn sh(&self, script: &str) -> Output {
        Command::new(&self.path)
            .args(["-c", script])
            .stdin(Stdio::null())
            .output()
            .expect("agent shell")
    }
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

pub fn policy(v: &Volume, cred: &Path, missing: &Path, audited: &Path) -> String {
    format!(
        r#"apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: {{ name: files-test }}
spec:
  agents:
    - {{ name: test-agent, executables: [{AGENT}] }}
  paths:
    - {{ name: prod-volume, paths: ["{}", "{}"], access: [write, delete], action: deny }}
    - {{ name: credentials, paths: ["{}"], access: [read], action: deny }}
    - {{ name: not-yet, paths: ["{}"], access: [read], action: deny }}
    - {{ name: audit-creds, paths: ["{}"], access: [read], action: deny, mode: audit }}
"#,
        v.db().display(),
        v.backups().display(),
        cred.display(),
        missing.display(),
        audited.display()
    )
}

/// A volume, a credential file, and a daemon protecting them.
pub struct Setup {
    pub vol: Volume,
    pub home: TempDir,
    pub cred: PathBuf,
    pub missing: PathBuf,
    pub audited: PathBuf,
    pub daemon: Daemon,
    pub agent: Agent,
}

pub fn setup() -> Setup {
    let vol = Volume::new();
    let home = tempfile::Builder::new()
        .prefix("guard-home-")
        .tempdir()
        .unwrap();
    let cred = home.path().join(".railway/config.json");
    fs::create_dir_all(cred.parent().unwrap()).unwrap();
    fs::write(&cred, SECRET).unwrap();
    let missing = home.path().join(".kube/config");
    let audited = home.path().join(".netrc");
    fs::write(&audited, "machine x login y password audited-secret").unwrap();
    let daemon = Daemon::start_with_policy(&policy(&vol, &cred, &missing, &audited));
    daemon.assert_tier();
    Setup {
        vol,
        home,
        cred,
        missing,
        audited,
        daemon,
        agent: Agent::new(),
    }
}

pub fn path_rule(d: &Daemon, name: &str) -> Value {
    let st = d.status_json().expect("status");
    st["path_rules"]
        .as_array()
        .expect("path_rules in guard status")
        .iter()
        .find(|r| r["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no path rule {name} in {st}"))
}

/// Whether rule `name`'s objects are protected names on this kernel (renames and unlinks
/// refused or killed); where not, status says `not-loaded` for that layer.
pub fn protected_names(d: &Daemon, name: &str) -> bool {
    let rule = path_rule(d, name);
    let layer = rule["layers"]
        .as_array()
        .and_then(|ls| {
            ls.iter().find(|l| {
                l["covers"]
                    .as_str()
                    .is_some_and(|c| c.starts_with("protected name") || c.starts_with("delete"))
            })
        })
        .unwrap_or_else(|| panic!("rule {name} shows no protected-name layer: {rule}"));
    layer["status"] != "not-loaded"
}

/// File events of the daemon's log for `rule`.
pub fn file_events(d: &Daemon, rule: &str) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|e| e["kind"].as_str().is_some_and(|k| k.starts_with("file_")) && e["rule"] == rule)
        .collect()
}

/// At least `n` file events of `rule` matching `pred` (the pipeline writes them shortly after
/// the decision).
pub fn events_with(d: &Daemon, rule: &str, n: usize, pred: impl Fn(&Value) -> bool) -> Vec<Value> {
    wait_for(
        &format!("{n} events of rule {rule}"),
        Duration::from_secs(10),
        || {
            let e: Vec<Value> = file_events(d, rule)
                .into_iter()
                .filter(|e| pred(e))
                .collect();
            (e.len() >= n).then_some(e)
        },
    )
}

/// A policy with one rule, for the tests that need another action or access.
pub fn one_rule(rule: &str) -> String {
    format!(
        r#"apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: {{ name: files-one }}
spec:
  agents:
    - {{ name: test-agent, executables: [{AGENT}] }}
  paths:
    - {rule}
"#
    )
}

/// A bind mount, unmounted on drop.
pub struct Bind(pub PathBuf);

impl Drop for Bind {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}
