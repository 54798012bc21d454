//! Issue: enforcement that survives crashes, reloads and a hostile agent tree — the parts
//! that do not need enforcement rules: capability drops, fail-closed start, policy reloads.

use std::{process::Command, time::Duration};

use guard_tests::{Daemon, as_nobody, output, wait_for, world_executable_guard};

fn status_line(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {key} in {text}"))
}

#[test]
fn guard_run_drops_escape_capabilities_even_for_root() {
    let d = Daemon::start();
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("mnt");
    std::fs::create_dir(&target).unwrap();
    let script = format!(
        "grep -E '^(CapBnd|CapEff|NoNewPrivs):' /proc/self/status; mount -t tmpfs none {} && echo MOUNTED; exit 0",
        target.display()
    );
    let out = output({
        let mut c = d.guard();
        c.args(["run", "--", "sh", "-c", &script]);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let bnd = u64::from_str_radix(&status_line(&text, "CapBnd:"), 16).unwrap();
    let eff = u64::from_str_radix(&status_line(&text, "CapEff:"), 16).unwrap();
    for (name, cap) in [
        ("SYS_ADMIN", 21),
        ("BPF", 39),
        ("PERFMON", 38),
        ("SYS_PTRACE", 19),
        ("SYS_MODULE", 16),
        ("NET_ADMIN", 12),
        ("SYS_RAWIO", 17),
    ] {
        assert_eq!(
            bnd & (1 << cap),
            0,
            "CAP_{name} left the bounding set: {text}"
        );
        assert_eq!(eff & (1 << cap), 0, "CAP_{name} is not effective: {text}");
    }
    assert_ne!(
        bnd & (1 << 0),
        0,
        "CAP_CHOWN stays: only escape capabilities are dropped"
    );
    assert!(
        !text.contains("MOUNTED"),
        "a root agent could mount: {text}"
    );
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(target.to_str().unwrap()));

    // The same command untagged keeps its capabilities.
    let out = output({
        let mut c = Command::new("sh");
        c.args(["-c", "grep CapBnd /proc/self/status"]);
        c
    });
    let bnd = u64::from_str_radix(
        &status_line(&String::from_utf8_lossy(&out.stdout), "CapBnd:"),
        16,
    )
    .unwrap();
    assert_ne!(bnd & (1 << 21), 0);
}

#[test]
fn guard_run_for_an_unprivileged_user_blocks_setuid_escalation() {
    let d = Daemon::start();
    std::fs::set_permissions(
        d.dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let guard = world_executable_guard();
    let out = output({
        let mut c = Command::new(&guard.path);
        c.envs(d.env())
            .args(["run", "--", "grep", "NoNewPrivs", "/proc/self/status"]);
        as_nobody(&mut c);
        c
    });
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        status_line(&String::from_utf8_lossy(&out.stdout), "NoNewPrivs:"),
        "1"
    );
}

const GOOD: &str = r#"
apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: { name: gen-a }
spec:
  agents:
    - { name: claude-code, executables: [claude] }
"#;

#[test]
fn a_bad_policy_change_is_rejected_and_the_old_one_stays_in_force() {
    let d = Daemon::start_with_policy(GOOD);
    let policy = d.policy.clone().unwrap();
    let st = d.status_json().unwrap();
    assert_eq!(st["policy"], "gen-a");
    let generation = st["policy_generation"].as_u64().unwrap();

    // A typo: rejected with file, line and column; the old generation stays.
    std::fs::write(&policy, GOOD.replace("executables", "executabels")).unwrap();
    let st = wait_for(
        "the bad policy to be rejected",
        Duration::from_secs(10),
        || d.status_json().filter(|s| s["policy_rejected"].is_string()),
    );
    let why = st["policy_rejected"].as_str().unwrap();
    assert!(
        why.contains("policy.yaml:7:") && why.contains("executabels"),
        "{why}"
    );
    assert_eq!(st["policy_generation"].as_u64().unwrap(), generation);
    assert_eq!(st["policy"], "gen-a");
    // Recognition from the old generation still works.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/sleep", dir.path().join("claude")).unwrap();
    let p = guard_tests::Proc::spawn({
        let mut c = Command::new(dir.path().join("claude"));
        c.arg("30");
        c
    });
    let pid = p.pid();
    wait_for("claude to be tagged", Duration::from_secs(10), || {
        d.tag_of(pid)
    });

    // A good change is installed as the next generation; SIGHUP also reloads.
    std::fs::write(&policy, GOOD.replace("gen-a", "gen-b")).unwrap();
    let st = wait_for(
        "the good policy to be installed",
        Duration::from_secs(10),
        || d.status_json().filter(|s| s["policy"] == "gen-b"),
    );
    assert_eq!(st["policy_generation"].as_u64().unwrap(), generation + 1);
    assert!(st["policy_rejected"].is_null());
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(d.pid() as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .unwrap();
    wait_for("SIGHUP to reload", Duration::from_secs(10), || {
        d.status_json()
            .filter(|s| s["policy_generation"].as_u64() == Some(generation + 2))
    });
}
