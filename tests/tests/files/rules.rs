//! Actions and rule kinds beyond deny: kill-tree, exec rules, whole volumes, reloads.

use std::{fs, process::Command, time::Duration};

use guard_tests::{Daemon, wait_for};

use super::harness::*;

#[test]
fn a_kill_tree_rule_kills_the_whole_agent_tree_before_the_open_returns() {
    let home = tempfile::tempdir().unwrap();
    let cred = home.path().join("token");
    fs::write(&cred, SECRET).unwrap();
    let d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: token, paths: [\"{}\"], access: [read], action: kill-tree }}",
        cred.display()
    )));
    let agent = Agent::new();
    let pidfile = home.path().join("sibling");
    let out = agent.sh(&format!(
        "sleep 60 & echo $! > {}; cat {}; echo \"after=$?\"; wait",
        pidfile.display(),
        cred.display()
    ));
    use std::os::unix::process::ExitStatusExt as _;
    assert_eq!(
        out.status.signal(),
        Some(9),
        "the agent shell is killed: {out:?}"
    );
    assert!(!text(&out.stdout).contains(SECRET));
    if guard_tests::lsm_tier() {
        // The LSM program refuses the open and kills `cat` in its own context; the rest of
        // the tree is killed by the daemon right after (an LSM program can signal only the
        // current task on 6.1/6.12), so the shell may still report cat's death.
        let stdout = text(&out.stdout);
        assert!(
            !stdout.contains("after=") || stdout.contains("after=137"),
            "cat was not killed: {out:?}"
        );
    } else {
        assert!(
            !text(&out.stdout).contains("after="),
            "the shell ran on: {out:?}"
        );
    }
    let sibling: u32 = fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    wait_for("the sibling to die", Duration::from_secs(5), || {
        (!guard_tests::alive(sibling)).then_some(())
    });
    let ev = wait_for("the event", Duration::from_secs(5), || {
        file_events(&d, "token").into_iter().next()
    });
    assert_eq!(ev["result"], "killed");
    assert_eq!(ev["action"], "kill-tree");
}

#[test]
fn an_exec_rule_refuses_to_run_a_protected_binary() {
    let dir = tempfile::tempdir().unwrap();
    let tool = dir.path().join("prodctl");
    fs::copy("/bin/true", &tool).unwrap();
    let d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: prod-tools, paths: [\"{}\"], access: [exec], action: deny }}",
        tool.display()
    )));
    let out = Agent::new().sh(&format!("{}; echo \"exit=$?\"", tool.display()));
    assert!(text(&out.stdout).contains("exit=126"), "{out:?}");
    assert!(
        guard_tests::lsm_tier() || text(&out.stderr).contains("denied by rule prod-tools"),
        "{out:?}"
    );
    // Reading it is not executing it; untagged processes run it.
    let out = Agent::new().sh(&format!("cat {} > /dev/null", tool.display()));
    assert!(out.status.success(), "{out:?}");
    assert!(Command::new(&tool).status().unwrap().success());
    let ev = wait_for("the event", Duration::from_secs(5), || {
        file_events(&d, "prod-tools").into_iter().next()
    });
    let hook = if guard_tests::lsm_tier() {
        "lsm_file_open"
    } else {
        "fanotify_open_exec_perm"
    };
    assert_eq!(ev["hook"], hook);
    assert_eq!(ev["object"]["operation"], "exec");
}

#[test]
fn a_policy_reload_swaps_path_rules() {
    let home = tempfile::tempdir().unwrap();
    let cred = home.path().join("token");
    fs::write(&cred, SECRET).unwrap();
    let d = Daemon::start_with_policy(&one_rule(
        "{ name: other, paths: [/nonexistent/guard-test], access: [read], action: deny }",
    ));
    let agent = Agent::new();
    assert!(
        agent
            .sh(&format!("cat {}", cred.display()))
            .status
            .success()
    );
    let policy = d.policy.clone().unwrap();
    d.admin_writes(
        &policy,
        &one_rule(&format!(
            "{{ name: token, paths: [\"{}\"], access: [read], action: deny }}",
            cred.display()
        )),
    );
    wait_for("the new rule", Duration::from_secs(10), || {
        let st = d.status_json()?;
        st["path_rules"]
            .as_array()?
            .iter()
            .any(|r| r["name"] == "token" && r["object_count"] == 1)
            .then_some(())
    });
    let out = agent.sh(&format!("cat {}", cred.display()));
    assert!(!out.status.success(), "{out:?}");
    d.admin_writes(
        &policy,
        &one_rule(
            "{ name: other, paths: [/nonexistent/guard-test], access: [read], action: deny }",
        ),
    );
    wait_for("the rule to go", Duration::from_secs(10), || {
        agent
            .sh(&format!("cat {}", cred.display()))
            .status
            .success()
            .then_some(())
    });
}

#[test]
fn a_rule_on_the_mount_point_protects_the_whole_volume_through_any_mount() {
    let vol = Volume::new();
    let d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: volume, paths: [\"{}\"], access: [write, delete], action: deny }}",
        vol.mnt.display()
    )));
    let rule = path_rule(&d, "volume");
    assert!(
        rule["objects"][0].as_str().unwrap().contains("(volume "),
        "the mount point is a whole volume: {rule}"
    );
    let before = snapshot(&vol.mnt);
    // The same filesystem reached through a bind mount of a subdirectory elsewhere.
    let elsewhere = tempfile::tempdir().unwrap();
    let bind = Bind(elsewhere.path().join("db"));
    fs::create_dir(&bind.0).unwrap();
    nix::mount::mount(
        Some(&vol.db()),
        &bind.0,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let agent = Agent::new();
    let lsm = d.assert_tier() == "bpf-lsm";
    if let Some(why) = guard_tests::kill_on_detect_unavailable(&d.status_json().unwrap()) {
        println!("NOT RUN on this kernel's fallback tier: {why}");
        return;
    }
    let refused = guard_tests::file_changes_refused(&d.status_json().unwrap());
    // Creating a file is a change of the volume's root directory: refused by path_mknod
    // (bpf-lsm), or kill-on-detect (fallback: the empty file exists, nothing is written to
    // it).
    let out = agent.sh(&format!(
        "echo x > {}/new-top-level-file",
        vol.mnt.display()
    ));
    use std::os::unix::process::ExitStatusExt as _;
    if refused {
        assert!(
            !out.status.success() && out.status.signal().is_none(),
            "{out:?}"
        );
        assert!(!vol.mnt.join("new-top-level-file").exists());
    } else {
        assert_eq!(out.status.signal(), Some(9), "{out:?}");
        assert_eq!(fs::read(vol.mnt.join("new-top-level-file")).unwrap(), b"");
    }
    for script in [
        format!("echo x > {}/PG_VERSION", bind.0.display()),
        format!(
            "dd if=/dev/zero of={}/base/1/16384 bs=1 count=1 conv=notrunc",
            bind.0.display()
        ),
    ] {
        let out = agent.sh(&script);
        assert!(!out.status.success(), "{script}: {out:?}");
        assert!(
            lsm || text(&out.stderr).contains("denied by rule volume"),
            "{script}: {out:?}"
        );
    }
    let out = agent.sh(&format!(
        "rm -rf {}/base; echo \"exit=$?\"; sleep 0.5",
        bind.0.display()
    ));
    let after = snapshot(&vol.mnt);
    let lost = changed(&before, &after);
    if refused {
        assert!(text(&out.stdout).contains("exit=1"), "{out:?}");
        assert_eq!(lost, Vec::<String>::new());
        return;
    }
    assert!(text(&out.stdout).contains("exit=137"), "{out:?}");
    assert_eq!(lost.len(), 1, "{lost:?}");
    // Only the one created-then-refused file may be new on the volume.
    let added: Vec<&String> = after.keys().filter(|k| !before.contains_key(*k)).collect();
    assert!(added.len() <= 1, "{added:?}");
}

/// A glob rule's object moved away from the pattern by a tagged process (denied on bpf-lsm;
/// on the fallback tier the mover is killed and the file has moved): the rule's next
/// resolution (a new match appearing, as `**/` rules also get every 60 s) keeps it, so it
/// stays unreadable to the agent where it now is.
#[test]
fn a_moved_object_stays_protected_through_a_rule_refresh() {
    let home = tempfile::tempdir().unwrap();
    let (a, b) = (home.path().join("a"), home.path().join("b"));
    fs::create_dir_all(&a).unwrap();
    fs::create_dir_all(&b).unwrap();
    let token = a.join("token.txt");
    fs::write(&token, SECRET).unwrap();
    let d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: tokens, paths: [\"{}/token*\"], access: [read], action: deny }}",
        a.display()
    )));
    let agent = Agent::new();
    let moved = b.join("notes.txt");
    let out = agent.sh(&format!("mv {} {}", token.display(), moved.display()));
    let names = protected_names(&d, "tokens");
    assert_eq!(
        !out.status.success(),
        names,
        "moving a protected name: {out:?}"
    );
    if names && guard_tests::file_changes_refused(&d.status_json().unwrap()) {
        // Refused: move it as the administrator would, to test the refresh all the same.
        fs::rename(&token, &moved).unwrap();
    }
    assert!(moved.exists());
    // A new match makes the daemon resolve the rule again.
    fs::write(a.join("token-2.txt"), "new").unwrap();
    wait_for(
        "the new match to be protected",
        Duration::from_secs(10),
        || {
            let out = agent.sh(&format!("cat {}", a.join("token-2.txt").display()));
            (!out.status.success()).then_some(())
        },
    );
    let out = agent.sh(&format!("cat {}", moved.display()));
    assert!(
        !text(&out.stdout).contains(SECRET),
        "the moved token leaked"
    );
    assert!(!out.status.success());
    // Untagged, it reads.
    assert_eq!(fs::read_to_string(&moved).unwrap(), SECRET);
    // And it is still a protected name: removing it is refused (bpf-lsm) or kills the
    // remover (fallback; the file is then gone).
    let out = agent.sh(&format!("rm -f {}", moved.display()));
    assert_eq!(
        !out.status.success(),
        names,
        "rm of the moved token: {out:?}"
    );
}

/// A protected file moved away from its rule's path (by the agent where the kernel lets the
/// rename happen, else as an administrator would) stays protected after a daemon restart and
/// a policy reload: the pinned identity set finds it by file handle where it is now. Changing
/// the rule drops it from the set.
#[test]
fn a_moved_object_stays_protected_across_a_restart_and_a_reload() {
    let home = tempfile::tempdir().unwrap();
    let secret = home.path().join("secret.txt");
    fs::write(&secret, SECRET).unwrap();
    let rule = |access: &str| {
        one_rule(&format!(
            "{{ name: secret, paths: [\"{}\"], access: [{access}], action: deny }}",
            secret.display()
        ))
    };
    let mut d = Daemon::start_with_policy(&rule("read"));
    let agent = Agent::new();
    let moved = home.path().join("elsewhere.txt");
    agent.sh(&format!("mv {} {}", secret.display(), moved.display()));
    if !moved.exists() {
        fs::rename(&secret, &moved).unwrap();
    }
    let unreadable = |d: &Daemon, what: &str| {
        let out = agent.sh(&format!("cat {}", moved.display()));
        assert!(
            !out.status.success() && !text(&out.stdout).contains(SECRET),
            "{what}: the moved secret was read: {out:?}\n{}",
            d.log()
        );
    };
    unreadable(&d, "before the restart");

    d.restart();
    unreadable(&d, "after a restart");

    d.reload();
    // The path rules are resolved again on a thread of their own after the generation.
    std::thread::sleep(Duration::from_secs(1));
    unreadable(&d, "after a reload");
    assert_eq!(
        fs::read_to_string(&moved).unwrap(),
        SECRET,
        "untagged reads"
    );

    // The administrator changes the rule: its old objects leave the set.
    fs::write(d.policy.as_ref().unwrap(), rule("write")).unwrap();
    d.reload();
    wait_for(
        "the moved file to be readable",
        Duration::from_secs(10),
        || {
            let out = agent.sh(&format!("cat {}", moved.display()));
            text(&out.stdout).contains(SECRET).then_some(())
        },
    );
}

/// The directory above a protected file is renamed by the agent (not a protected name
/// itself): the file inside keeps its protection where it went, before and after a restart.
#[test]
fn a_protected_file_stays_protected_when_its_directory_is_moved() {
    let home = tempfile::tempdir().unwrap();
    let cfg = home.path().join("cfg");
    fs::create_dir_all(&cfg).unwrap();
    fs::write(cfg.join("secret.txt"), SECRET).unwrap();
    let mut d = Daemon::start_with_policy(&one_rule(&format!(
        "{{ name: secret, paths: [\"{}\"], access: [read], action: deny }}",
        cfg.join("secret.txt").display()
    )));
    let agent = Agent::new();
    let moved_dir = home.path().join("cfg-moved");
    let out = agent.sh(&format!("mv {} {}", cfg.display(), moved_dir.display()));
    assert!(
        out.status.success(),
        "the directory is not a protected name: {out:?}"
    );
    let moved = moved_dir.join("secret.txt");
    let unreadable = |what: &str| {
        let out = agent.sh(&format!("cat {}", moved.display()));
        assert!(
            !out.status.success() && !text(&out.stdout).contains(SECRET),
            "{what}: the secret was read through the moved directory: {out:?}"
        );
    };
    unreadable("after the move");
    d.restart();
    unreadable("after a restart");
    assert_eq!(
        fs::read_to_string(&moved).unwrap(),
        SECRET,
        "untagged reads"
    );
}
