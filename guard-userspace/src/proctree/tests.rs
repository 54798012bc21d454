use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use guard_common::ProcKey;

use super::*;

/// A fake `/proc` the test changes as processes come and go.
#[derive(Clone, Default)]
struct Fake(Arc<Mutex<HashMap<u32, Snapshot>>>);

impl Fake {
    fn spawn(&self, pid: u32, start_s: u64, ppid: u32, exe: &str) -> ProcKey {
        let key = ProcKey::new(pid, start_s * 1_000_000_000);
        self.0.lock().unwrap().insert(
            pid,
            Snapshot {
                key,
                ppid,
                details: Details {
                    comm: exe.rsplit('/').next().unwrap().into(),
                    exe: Some(exe.into()),
                    argv: vec![exe.into()],
                    ..Details::default()
                },
            },
        );
        key
    }
    fn kill(&self, pid: u32) {
        self.0.lock().unwrap().remove(&pid);
    }
}

impl ProcSource for Fake {
    fn read(&self, pid: u32) -> Option<Snapshot> {
        self.0.lock().unwrap().get(&pid).cloned()
    }
    fn all(&self) -> Vec<Snapshot> {
        self.0.lock().unwrap().values().cloned().collect()
    }
}

fn host() -> Fake {
    let f = Fake::default();
    f.spawn(1, 1, 0, "/sbin/init");
    f.spawn(50, 2, 1, "/usr/sbin/sshd");
    f.spawn(60, 3, 50, "/bin/bash");
    f
}

/// The host, a seeded tree, and an agent (pid 100) started after the seed: the kernel reports
/// its exec, and /proc knows it.
fn host_with_agent() -> (Fake, ProcTree, ProcKey, Instant) {
    let f = host();
    let mut t = ProcTree::new(TreeConfig::default(), Box::new(f.clone()));
    t.seed();
    let now = Instant::now();
    let agent = f.spawn(100, 10, 60, "/usr/bin/claude");
    t.apply(
        Update::Exec {
            key: agent,
            ppid: 60,
            comm: "claude".into(),
        },
        now,
    );
    (f, t, agent, now)
}

fn pids(c: &Context) -> Vec<u32> {
    c.ancestry.iter().map(|m| m.key.tgid).collect()
}

#[test]
fn ancestry_survives_exits_before_the_event_is_read() {
    let (f, mut t, agent, now) = host_with_agent();
    // agent → child → grandchild, all of which exit before any of it is read: /proc never
    // sees the child or the grandchild.
    let child = ProcKey::new(101, 11_000_000_000);
    let grandchild = ProcKey::new(102, 12_000_000_000);
    let fork = |child, parent_tgid, comm: &str| Update::Fork {
        child,
        parent_tgid,
        comm: comm.into(),
    };
    t.apply(fork(child, 100, "claude"), now);
    t.apply(fork(grandchild, 101, "claude"), now);
    t.apply(
        Update::Exec {
            key: grandchild,
            ppid: 101,
            comm: "rm".into(),
        },
        now,
    );
    t.apply(Update::Exit { key: grandchild }, now);
    t.apply(Update::Exit { key: child }, now);
    f.kill(100);
    t.apply(Update::Exit { key: agent }, now);

    let c = t.context(grandchild).unwrap();
    assert_eq!(pids(&c), [101, 100, 60, 50, 1]);
    assert!(c.complete);
    assert!(c.process.exited);
    assert_eq!(c.process.details.comm, "rm");
    assert_eq!(
        c.process.details.exe, None,
        "exe after exec is unknown once gone"
    );
    // The child was a copy of the agent at fork.
    assert_eq!(
        c.ancestry[0].details.exe.as_deref(),
        Some("/usr/bin/claude")
    );
    assert!(c.ancestry[0].exited && c.ancestry[1].exited);
    assert_eq!(c.ancestry[1].details.argv, ["/usr/bin/claude"]);
    assert_eq!(c.ancestry[4].details.exe.as_deref(), Some("/sbin/init"));
}

#[test]
fn pid_reuse_does_not_confuse_parents() {
    let f = host();
    let mut t = ProcTree::new(TreeConfig::default(), Box::new(f.clone()));
    t.seed();
    let now = Instant::now();
    let old = f.spawn(200, 20, 60, "/bin/old");
    t.apply(
        Update::Exec {
            key: old,
            ppid: 60,
            comm: "old".into(),
        },
        now,
    );
    t.apply(Update::Exit { key: old }, now);
    // pid 200 is reused by a new agent whose child forks.
    let new = f.spawn(200, 30, 50, "/bin/new");
    t.apply(
        Update::Exec {
            key: new,
            ppid: 50,
            comm: "new".into(),
        },
        now,
    );
    let child = ProcKey::new(201, 31_000_000_000);
    t.apply(
        Update::Fork {
            child,
            parent_tgid: 200,
            comm: "new".into(),
        },
        now,
    );
    let c = t.context(child).unwrap();
    assert_eq!(c.ancestry[0].key, new);
    assert_eq!(pids(&c), [200, 50, 1]);
    // And the old one still explains its own events while kept.
    assert_eq!(pids(&t.context(old).unwrap()), [60, 50, 1]);
}

#[test]
fn unknown_ancestors_are_read_on_demand_and_gaps_are_flagged() {
    let f = host();
    let mut t = ProcTree::new(TreeConfig::default(), Box::new(f.clone()));
    // No seed: everything is learned on demand.
    let tool = f.spawn(300, 40, 60, "/usr/bin/psql");
    let c = t.context(tool).unwrap();
    assert_eq!(pids(&c), [60, 50, 1]);
    assert!(c.complete);
    // A fork whose parent is unknown anywhere: the chain is cut and says so.
    let orphan = ProcKey::new(400, 50_000_000_000);
    t.apply(
        Update::Fork {
            child: orphan,
            parent_tgid: 399,
            comm: "x".into(),
        },
        Instant::now(),
    );
    let c = t.context(orphan).unwrap();
    assert!(c.ancestry.is_empty());
    assert!(!c.complete);
}

#[test]
fn a_gone_process_first_seen_in_a_decision_is_placed_under_its_live_parent() {
    let f = host();
    let mut t = ProcTree::new(TreeConfig::default(), Box::new(f.clone()));
    // `truncate` was denied and exited before its fork and exec events were read.
    let gone = ProcKey::new(500, 60_000_000_000);
    assert!(t.context(gone).is_none(), "nothing is known without a hint");
    let hint = Hint {
        ppid: 60,
        comm: "truncate".into(),
    };
    let c = t.context_or_parent(gone, Some(&hint)).unwrap();
    assert_eq!(c.process.details.comm, "truncate");
    assert_eq!(pids(&c), [60, 50, 1]);
    assert!(c.complete);
    // A parent that is gone too leaves nothing to place it under.
    let lost = ProcKey::new(501, 61_000_000_000);
    let hint = Hint {
        ppid: 499,
        comm: "x".into(),
    };
    assert!(t.context_or_parent(lost, Some(&hint)).is_none());
}

#[test]
fn memory_is_bounded_by_ttl_capacity_and_sweeps() {
    let f = host();
    let config = TreeConfig {
        exited_ttl: Duration::from_secs(60),
        max_entries: 1000,
        sweep_every: Duration::from_secs(30),
    };
    let mut t = ProcTree::new(config, Box::new(f.clone()));
    t.seed();
    let start = Instant::now();
    let agent = f.spawn(100, 10, 60, "/usr/bin/claude");
    t.apply(
        Update::Exec {
            key: agent,
            ppid: 60,
            comm: "claude".into(),
        },
        start,
    );
    // A flood of short-lived children.
    for i in 0..10_000u32 {
        let child = ProcKey::new(1000 + i, 20_000_000_000 + u64::from(i) * 10_000_000);
        t.apply(
            Update::Fork {
                child,
                parent_tgid: 100,
                comm: "claude".into(),
            },
            start,
        );
        t.apply(Update::Exit { key: child }, start);
        assert!(t.len() <= 1001);
    }
    let s = t.stats();
    assert_eq!(s.live, 4);
    assert!(s.evicted >= 9000, "{s:?}");
    // The most recent exits are still there to explain late events.
    let last = ProcKey::new(1000 + 9999, 20_000_000_000 + 9999 * 10_000_000);
    assert_eq!(pids(&t.context(last).unwrap()), [100, 60, 50, 1]);
    // After the TTL they go; so do untracked processes that died unseen.
    f.kill(50);
    f.kill(60);
    t.sweep(start + Duration::from_secs(1));
    t.prune(start + Duration::from_secs(62));
    assert_eq!(t.stats().exited, 0);
    assert_eq!(t.len(), 2, "init and the live agent remain");
}

#[test]
fn a_gone_process_is_placed_under_its_exited_parent_but_not_under_a_pid_successor() {
    let (f, mut t, agent, now) = host_with_agent();
    // The agent exits, and its exit is read before a decision about its child, which is
    // gone too: the decision still names the agent and the agent's ancestors.
    f.kill(100);
    t.apply(Update::Exit { key: agent }, now);
    let child = ProcKey::new(101, 11_000_000_000);
    let hint = Hint {
        ppid: 100,
        comm: "truncate".into(),
    };
    let c = t.context_or_parent(child, Some(&hint)).expect("context");
    assert_eq!(pids(&c), vec![100, 60, 50, 1]);
    assert!(c.complete);

    // A later process that took pid 100 over is the parent of what it starts afterwards.
    let successor = f.spawn(100, 20, 60, "/bin/sh");
    let late = ProcKey::new(102, 21_000_000_000);
    let hint = Hint {
        ppid: 100,
        comm: "cat".into(),
    };
    let c = t.context_or_parent(late, Some(&hint)).expect("context");
    assert_eq!(c.ancestry[0].key, successor);
}
