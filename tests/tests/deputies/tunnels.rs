//! Tunnels and NAT: a listener that forwards to a protected endpoint is that endpoint, and a
//! destination NAT rewrote is decided again.

use super::*;
use guard_tests::netns::NatRule;

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

/// A listener that accepts and holds what it accepted.
const LISTENER: &str = r#"
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen(8)
print("ready", flush=True)
held = []
while True:
    held.append(s.accept())
"#;

/// A stand-in for `kubectl port-forward` (run through a link named `kubectl`): it holds a
/// connection to its server (here the protected endpoint, as a real one holds one to the API
/// server; the listener answers and hangs up, so it connects again) and listens.
const KUBECTL: &str = r#"
import socket, sys, threading
port, host = int(sys.argv[2].split(":")[0]), sys.argv[3]
def server():
    while True:
        try:
            u = socket.create_connection((host, 5432))
            while u.recv(4096):
                pass
            u.close()
        except OSError:
            pass
threading.Thread(target=server, daemon=True).start()
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen(8)
print("ready", flush=True)
held = []
while True:
    c, _ = s.accept()
    held.append(c)
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
    let [p_socat, p_ssh, p_relay, p_socks, p_kube] = free_ports::<5>();
    let socat = Proc::spawn({
        let mut c = Command::new("socat");
        c.arg(format!(
            "TCP-LISTEN:{p_socat},bind=127.0.0.1,fork,reuseaddr"
        ))
        .arg(format!("TCP:{db}:5432"));
        c
    });
    // ssh sessions to the test's sshd, kept open: a local forward and a SOCKS proxy.
    let ssh = |args: String| {
        let mut c = Command::new("bash");
        c.args(["-c", &format!("exec {}", sshd.ssh(&args))]);
        Proc::spawn(c)
    };
    let tunnel = ssh(format!("-N -L {p_ssh}:{db}:5432 root@127.0.0.1"));
    let socks = ssh(format!("-N -D 127.0.0.1:{p_socks} root@127.0.0.1"));
    let kube_dir = tempfile::tempdir().unwrap();
    let kubectl = kube_dir.path().join("kubectl");
    std::os::unix::fs::symlink("/usr/bin/python3", &kubectl).unwrap();
    let (kube, _) = ready({
        let mut c = Command::new(&kubectl);
        c.args([
            "-c",
            KUBECTL,
            "port-forward",
            &format!("{p_kube}:5432"),
            &db,
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
    let d = wait_found(&daemon, "the five forwarders found", |d| {
        d["forwarders"].as_array().is_some_and(|f| f.len() >= 5)
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
    assert!(fwd.contains("to any destination (SOCKS)"), "{fwd}");
    assert!(
        fwd.contains("kubectl (pid") && fwd.contains("by its arguments and connections"),
        "{fwd}"
    );
    assert!(
        fwd.contains("python3") && fwd.contains("by its connections"),
        "{fwd}"
    );
    agents_refused_through(&daemon, &[p_socat, p_ssh, p_relay, p_socks, p_kube]);
    let evs = denied_events(&daemon, "prod-db", 10);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("forwarder"))),
        "{evs:#?}"
    );
    assert!(
        evs.iter().any(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("any destination (SOCKS)"))),
        "{evs:#?}"
    );
    // The human's own SOCKS proxy still leads where the human asks.
    the_human_still_gets_through(&listener, &db, &[p_socat, p_ssh], p_socks);
    drop((held, relay, tunnel, socat, socks, kube));
}

/// Forwards no argument shows: an ssh client whose `LocalForward` is in its configuration
/// file, one given a forward at run time through its control socket, which is itself closed
/// to agents, and a cloud's tunnel client; and a SOCKS proxy (microsocks), which leads
/// wherever its client asks.
#[test]
fn forwarders_configured_in_files_or_at_run_time_and_proxies_lead_anywhere() {
    let ProdDb {
        _net,
        db,
        listener,
        daemon,
    } = ProdDb::start();
    let sshd = Sshd::start();
    let dir = tempfile::tempdir().unwrap();
    let [p_cfg, p_mux, p_proxy, p_sql] = free_ports::<4>();
    let config = dir.path().join("ssh_config");
    std::fs::write(
        &config,
        format!(
            "Host tunnelhost\n  HostName 127.0.0.1\n  Port {}\n  User root\n  IdentityFile {}\n\
             \x20 BatchMode yes\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n\
             \x20 LogLevel ERROR\n  LocalForward 127.0.0.1:{p_cfg} {db}:5432\n",
            sshd.port,
            sshd.key.display()
        ),
    )
    .unwrap();
    let from_file = Proc::spawn({
        let mut c = Command::new("ssh");
        c.arg("-F").arg(&config).args(["-N", "tunnelhost"]);
        c
    });
    let control = dir.path().join("cm");
    let master = Proc::spawn({
        let mut c = Command::new("bash");
        c.args([
            "-c",
            &format!(
                "exec {}",
                sshd.ssh(&format!(
                    "-N -o ControlMaster=yes -o ControlPath={} root@127.0.0.1",
                    control.display()
                ))
            ),
        ]);
        c
    });
    wait_for("the control socket", Duration::from_secs(10), || {
        control.exists().then_some(())
    });
    let added = untagged(&sshd.ssh(&format!(
        "-o ControlPath={} -O forward -L 127.0.0.1:{p_mux}:{db}:5432 root@127.0.0.1",
        control.display()
    )));
    assert!(added.status.success(), "ssh -O forward: {}", text(&added));
    let proxy = Proc::spawn({
        let mut c = Command::new("microsocks");
        c.args(["-i", "127.0.0.1", "-p", &p_proxy.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        c
    });
    // A cloud's tunnel client (its arguments name an instance, not an address): a listener
    // run through a link named like Cloud SQL's auth proxy.
    let sql_dir = tempfile::tempdir().unwrap();
    let cloud_sql = sql_dir.path().join("cloud-sql-proxy");
    std::os::unix::fs::symlink("/usr/bin/python3", &cloud_sql).unwrap();
    let (sql, _) = ready({
        let mut c = Command::new(&cloud_sql);
        c.args(["-c", LISTENER, &p_sql.to_string()]);
        c
    });
    let d = wait_found(
        &daemon,
        "the forwards, the proxy and the control socket",
        |d| {
            let fwd = d["forwarders"].to_string();
            let unsaid = fwd
                .matches("a destination its arguments do not say")
                .count();
            unsaid >= 3
                && found_has(d, "proxies", &format!("127.0.0.1:{p_proxy}"))
                && found_has(d, "ssh", &control.display().to_string())
        },
    );
    let fwd = d["forwarders"].to_string();
    assert!(
        fwd.contains(&format!("ssh (pid {})", from_file.child.id()))
            && fwd.contains(&format!("ssh (pid {})", master.child.id()))
            && fwd.contains(&format!("cloud-sql-proxy (pid {})", sql.child.id()))
            && fwd.contains("found by its listeners"),
        "{fwd}"
    );
    agents_refused_through(&daemon, &[p_cfg, p_mux, p_proxy, p_sql]);
    let evs = denied_events(&daemon, "prod-db", 6);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("do not say"))),
        "{evs:#?}"
    );
    let evs = denied_events(&daemon, "guard:executors/proxies", 2);
    assert!(
        evs.iter().all(|e| e["destination"]["deputy"]
            .as_str()
            .is_some_and(|d| d.contains("microsocks"))
            && e["ancestry"].as_array().is_some_and(|a| !a.is_empty())),
        "{evs:#?}"
    );
    // The human's open connection runs nothing for an agent: its control socket is closed to
    // tagged processes (`ssh -S SOCKET host CMD` would run CMD on the remote host, no login).
    let check = format!(
        "ssh -o ControlPath={} -O check root@127.0.0.1 2>&1",
        control.display()
    );
    for (side, out) in Sides::new().run(&daemon, &check) {
        assert!(
            !out.status.success() && text(&out).contains("Operation not permitted"),
            "{side}: used the human's ssh connection\n{}",
            text(&out)
        );
    }
    denied_events(&daemon, "guard:executors/ssh", 2);
    let out = untagged(&check);
    assert!(out.status.success(), "untagged -O check: {}", text(&out));
    // The human's forwards and proxy still lead where the human asks.
    the_human_still_gets_through(&listener, &db, &[p_cfg, p_mux], p_proxy);
    drop((sql, proxy, master, from_file));
}

/// Untagged connections through each of `ports` and through the SOCKS proxy on `socks` all
/// reach the database.
fn the_human_still_gets_through(listener: &Listener, db: &str, ports: &[u16], socks: u16) {
    let before = listener.count("tcp:5432");
    for port in ports {
        assert_ok(
            &untagged(&format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {port}")),
            "untagged",
        );
    }
    untagged(&format!(
        "curl -s -m 5 -x socks5://127.0.0.1:{socks} http://{db}:5432/"
    ));
    wait_for(
        "the untagged connections to arrive",
        Duration::from_secs(10),
        || (listener.count("tcp:5432") > before + ports.len() as u64).then_some(()),
    );
}

/// Both kinds of tagged tree are refused a connection through each of `ports`.
fn agents_refused_through(daemon: &Daemon, ports: &[u16]) {
    let sides = Sides::new();
    for port in ports {
        for (side, out) in sides.run(
            daemon,
            &format!("python3 -c \"$CLIENT\" tcp 127.0.0.1 {port}"),
        ) {
            assert_eperm(&out, &format!("{side} through port {port}"));
        }
    }
}

/// An `iptables -t nat` rule in the host's OUTPUT chain, deleted on drop.
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
