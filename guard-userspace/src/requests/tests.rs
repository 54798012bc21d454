use super::*;

fn asked(root: u32, port: u32) -> Asked {
    Asked {
        root: ProcKey::new(root, 1_000_000_000),
        agent_id: 0,
        proc: ProcKey::new(root + 1, 2_000_000_000),
        ppid: root,
        comm: "curl".into(),
        rule: "prod-db".into(),
        rule_id: 3,
        family: guard_common::net::AF_INET,
        port,
        addr: [10, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        destination: format!("10.0.0.5:{port}"),
    }
}

#[test]
fn one_open_request_per_tree_rule_and_destination_until_answered() {
    let r = Requests::default();
    let a = r.open(asked(7, 5432)).unwrap();
    assert_eq!(
        r.open(asked(7, 5432)),
        Some(a),
        "asked again: the same request"
    );
    let b = r.open(asked(7, 6432)).unwrap();
    let c = r.open(asked(8, 5432)).unwrap();
    assert!(a != b && b != c && a != c);
    assert!(r.to_approve(99).unwrap_err().contains("no request 99"));
    let req = r.to_approve(a).unwrap();
    let root = ProcKey::new(7, 1_000_000_000);
    assert_eq!(Requests::keys(&req, Scope::Tree, &[root])[0].port, 5432);
    r.approved(a, 0, 5_000, (Scope::Tree, vec![root]), "");
    assert!(r.to_approve(a).unwrap_err().contains("already approved"));
    assert_eq!(Requests::installed(&r.to_list_entry(a).unwrap()).len(), 1);
    // Approved, the pair is free: a new denial (after expiry) opens a new request.
    assert_ne!(r.open(asked(7, 5432)), Some(a));
    assert!(r.deny(a, 0, "").unwrap_err().contains("is approved"));
    assert_eq!(r.deny(b, 0, "no").unwrap().id, b);
    let expired = r.expire(6_000);
    assert_eq!(expired.iter().map(|q| q.id).collect::<Vec<_>>(), [a]);
    assert!(r.list().iter().all(|q| q.id != a && q.id != b));
}

#[test]
fn a_tree_opens_a_bounded_number_of_requests_a_minute() {
    let r = Requests::default();
    let opened: Vec<Option<u64>> = (0..PER_TREE_PER_MINUTE + 5)
        .map(|i| r.open(asked(7, 1000 + i)))
        .collect();
    assert!(
        opened[..PER_TREE_PER_MINUTE as usize]
            .iter()
            .all(Option::is_some)
    );
    assert!(
        opened[PER_TREE_PER_MINUTE as usize..]
            .iter()
            .all(Option::is_none)
    );
    // An open request is still found, and another tree is not limited.
    assert_eq!(r.open(asked(7, 1000)), opened[0]);
    assert!(r.open(asked(8, 1000)).is_some());
    let mut rate = Rate::default();
    let t0 = std::time::Instant::now();
    let root = ProcKey::new(7, 1);
    for _ in 0..PER_TREE_PER_MINUTE {
        assert!(rate.allows(root, t0));
    }
    assert!(!rate.allows(root, t0));
    assert!(rate.allows(root, t0 + Rate::WINDOW), "a new minute");
}

#[test]
fn a_process_approval_is_keyed_apart_from_the_tree_it_roots() {
    let r = Requests::default();
    let id = r.open(asked(7, 5432)).unwrap();
    let req = r.to_approve(id).unwrap();
    let me = req.process();
    assert_eq!(me, ProcKey::new(8, 2_000_000_000));
    let process = Requests::keys(&req, Scope::Process, &[me])[0];
    assert_eq!(
        (process.root, process.scope),
        (me, exception_scope::PROCESS)
    );
    // The same process as the root of a tree: another key.
    let tree = Requests::keys(&req, Scope::Tree, &[me])[0];
    assert_eq!(tree.scope, exception_scope::TREE);
    assert_ne!(process, tree);
    r.approved(id, 0, 5_000, (Scope::Process, vec![me]), "");
    assert_eq!(
        Requests::installed(&r.to_list_entry(id).unwrap()),
        [process]
    );
    let saved = serde_json::to_value(r.to_list_entry(id).unwrap()).unwrap();
    assert_eq!(saved["scope"], "process");
}

#[test]
fn a_scope_is_named_as_its_json() {
    for s in [Scope::Process, Scope::Tree, Scope::Agent] {
        assert_eq!(serde_json::to_value(s).unwrap(), s.name());
    }
}
