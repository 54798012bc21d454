//! `guard run` trees: the mount-namespace layer, for root and unprivileged callers, holds
//! with the daemon stopped.

use std::{fs, os::unix::fs::PermissionsExt as _, process::Command, time::Duration};

use guard_tests::{Daemon, wait_for};
use nix::sys::signal::Signal;

use super::harness::*;

#[test]
fn guard_run_trees_keep_their_mount_namespace_layer_with_the_daemon_stopped() {
    let mut s = setup();
    let before = snapshot(&s.vol.mnt);
    let dir = tempfile::tempdir().unwrap();
    let (go, done, out) = (
        dir.path().join("go"),
        dir.path().join("done"),
        dir.path().join("out"),
    );
    let script = format!(
        "exec > {out} 2>&1; while [ ! -e {go} ]; do sleep 0.05; done; \
         rm -rf {db}; echo \"rm=$?\"; echo x > {db}/PG_VERSION; echo \"echo=$?\"; \
         mv {bk} {bk}.gone; echo \"mv=$?\"; cat {cred}; echo \"cat=$?\"; touch {done}",
        out = out.display(),
        go = go.display(),
        db = s.vol.db().display(),
        bk = s.vol.backups().display(),
        cred = s.cred.display(),
        done = done.display(),
    );
    let mut tree = s.daemon.run_tagged(&["bash", "-c", &script]);
    let pid = tree.pid();
    let own_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
    wait_for(
        "guard run to enter its mount namespace",
        Duration::from_secs(10),
        || {
            fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .filter(|ns| *ns != own_ns)
        },
    );
    s.daemon.signal_and_reap(Signal::SIGTERM);
    fs::write(&go, "").unwrap();
    wait_for("the tree to finish", Duration::from_secs(20), || {
        done.exists().then_some(())
    });
    assert!(tree.wait_timeout(Duration::from_secs(10)).success());
    let log = fs::read_to_string(&out).unwrap();
    assert!(log.contains("Read-only file system"), "{log}");
    for step in ["rm=1", "echo=1", "mv=1", "cat=0"] {
        assert!(log.contains(step), "{step} in {log}");
    }
    assert!(
        !log.contains(SECRET),
        "the masked credential was read: {log}"
    );
    assert_eq!(
        changed(&before, &snapshot(&s.vol.mnt)),
        Vec::<String>::new()
    );
    assert_eq!(fs::read_to_string(&s.cred).unwrap(), SECRET);
}

#[test]
fn an_unprivileged_guard_run_tree_gets_a_locked_mount_namespace() {
    let dir = tempfile::tempdir().unwrap();
    fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let cred = dir.path().join("token");
    fs::write(&cred, SECRET).unwrap();
    fs::set_permissions(&cred, fs::Permissions::from_mode(0o644)).unwrap();
    let data = dir.path().join("data");
    fs::create_dir(&data).unwrap();
    fs::write(data.join("rows"), "1,2,3").unwrap();
    for p in [&data, &data.join("rows")] {
        fs::set_permissions(p, fs::Permissions::from_mode(0o777)).unwrap();
    }
    let mut d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: token, paths: [\"{}\"], access: [read], action: deny }}\n    - {{ name: data, paths: [\"{}\"], access: [write, delete], action: deny }}",
        cred.display(),
        data.display()
    )));
    fs::set_permissions(d.dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let guard = guard_tests::world_executable_guard();
    let (go, out) = (dir.path().join("go"), dir.path().join("out"));
    fs::write(&out, "").unwrap();
    fs::set_permissions(&out, fs::Permissions::from_mode(0o666)).unwrap();
    let script = format!(
        "exec >> {out} 2>&1; while [ ! -e {go} ]; do sleep 0.05; done; \
         cat {cred}; echo \"cat=$?\"; echo x > {data}/rows; echo \"write=$?\"; \
         rm -rf {data}; echo \"rm=$?\"; umount -l {cred}; echo done",
        out = out.display(),
        go = go.display(),
        cred = cred.display(),
        data = data.display(),
    );
    let mut c = Command::new(&guard.path);
    c.envs(d.env()).args(["run", "--", "sh", "-c", &script]);
    guard_tests::as_nobody(&mut c);
    let mut tree = guard_tests::Proc::spawn(c);
    let pid = tree.pid();
    let own_ns = fs::read_link("/proc/self/ns/mnt").unwrap();
    wait_for(
        "the tree's own mount namespace",
        Duration::from_secs(10),
        || {
            fs::read_link(format!("/proc/{pid}/ns/mnt"))
                .ok()
                .filter(|ns| *ns != own_ns)
        },
    );
    d.signal_and_reap(Signal::SIGTERM);
    fs::write(&go, "").unwrap();
    assert!(tree.wait_timeout(Duration::from_secs(20)).success());
    let log = fs::read_to_string(&out).unwrap();
    assert!(log.contains("done"), "{log}");
    assert!(!log.contains(SECRET), "{log}");
    assert!(
        log.contains("cat=0") && log.contains("Read-only file system"),
        "{log}"
    );
    assert_eq!(fs::read_to_string(data.join("rows")).unwrap(), "1,2,3");
    assert_eq!(fs::read_to_string(&cred).unwrap(), SECRET);
}
