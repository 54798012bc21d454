//! Network enforcement, end to end: the real programs attached at the cgroup v2 root, real
//! tools (curl, python3, bash /dev/tcp, nc, io_uring) run tagged through `guard run` and
//! untagged, against real listeners in a network namespace each test creates. Traffic only
//! ever goes to that namespace.
//!
//! Run as root with `--test-threads=1` (the DNS test sets the daemon's environment).

mod network_support;

use std::{
    net::{Ipv4Addr, Ipv6Addr},
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use guard_tests::{Daemon, Proc, output, unique, wait_for};
use network_support::*;

#[test]
fn tagged_tools_get_eperm_and_nothing_reaches_the_listener() {
    let net = Net::new();
    let port = 5432;
    let listener = Listener::start(&net, &[format!("tcp:{port}:{}", net.a)]);
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, cidrs: [{}/32], ports: [{port}], action: deny }}\n",
        net.a
    )));
    let url = format!("http://{}:{port}/", net.a);
    let dev_tcp = format!(
        "exec 3<>/dev/tcp/{}/{port} && echo GET >&3 && cat <&3",
        net.a
    );
    let port_s = port.to_string();
    let tools: Vec<(&str, Vec<&str>)> = vec![
        // -v: curl names the errno only in its verbose log.
        ("curl", vec!["curl", "-sSv", "--max-time", "5", &url]),
        (
            "python3",
            vec!["python3", "-c", CLIENT, "tcp", &net.a, &port_s],
        ),
        ("bash /dev/tcp", vec!["bash", "-c", &dev_tcp]),
        ("nc", vec!["nc", "-v", "-w", "3", "-N", &net.a, &port_s]),
    ];

    let capture = Capture::start(&net, &format!("tcp port {port}"));
    for (name, args) in &tools {
        let out = run(Some(&daemon), args);
        let all = text(&out);
        assert!(
            all.contains("Operation not permitted") || stdout(&out).starts_with("err 1\n"),
            "tagged {name} should get EPERM:\n{all}"
        );
        assert!(
            !out.status.success() || *name == "python3",
            "tagged {name}: {all}"
        );
    }
    assert_eq!(listener.count(&format!("tcp:{port}")), 0);
    assert_eq!(capture.packets(), 0, "no packet may leave a tagged connect");
    let evs = net_events(&daemon, tools.len(), |e| e["rule"] == "prod-db");
    let e = &evs[0];
    assert_eq!(e["destination"]["address"], net.a.as_str());
    assert_eq!(e["destination"]["port"], port);
    assert_eq!(e["destination"]["family"], "ipv4");
    assert_eq!(e["destination"]["protocol"], "tcp");
    assert_eq!(
        (&e["action"], &e["result"]),
        (&"deny".into(), &"denied".into())
    );
    assert_eq!(e["hook"], hook("connect4"));
    assert!(counter(&daemon, "net_denied") >= tools.len() as u64);

    // The same commands untagged reach the listener.
    let capture = Capture::start(&net, &format!("tcp port {port}"));
    for (name, args) in &tools {
        let out = run(None, args);
        assert!(
            !text(&out).contains("Operation not permitted") && !stdout(&out).starts_with("err"),
            "untagged {name} must not be blocked:\n{}",
            text(&out)
        );
    }
    assert_eq!(listener.count(&format!("tcp:{port}")), tools.len() as u64);
    assert!(capture.packets() > 0, "the capture sees untagged traffic");
}

#[test]
fn ipv6_and_ipv4_mapped_destinations() {
    let net = Net::new();
    let listener = Listener::start(
        &net,
        &[
            format!("tcp:5432:{}", net.a),
            format!("tcp:5432:{}", net.a6),
        ],
    );
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-v6, cidrs: [\"{}/64\"], action: deny }}\n\
         \x20   - {{ name: prod-v4, ips: [{}], ports: [5432], action: deny }}\n",
        net.a6, net.a
    )));
    assert_eperm(&client(Some(&daemon), "tcp", &net.a6, 5432), "tagged IPv6");
    let mapped = format!("::ffff:{}", net.a);
    assert_eperm(
        &client(Some(&daemon), "tcp", &mapped, 5432),
        "tagged IPv4-mapped IPv6",
    );
    assert_eq!(listener.count("tcp:5432"), 0);
    let evs = net_events(&daemon, 2, |_| true);
    let v6 = evs
        .iter()
        .find(|e| e["rule"] == "prod-v6")
        .expect("v6 event");
    assert_eq!(v6["destination"]["family"], "ipv6");
    assert_eq!(v6["destination"]["address"], net.a6.as_str());
    assert_eq!(v6["hook"], hook("connect6"));
    let m = evs
        .iter()
        .find(|e| e["rule"] == "prod-v4")
        .expect("mapped event");
    assert_eq!(
        m["destination"]["family"], "ipv4",
        "mapped is matched as IPv4"
    );
    assert_eq!(m["destination"]["address"], net.a.as_str());
    assert_eq!(m["hook"], hook("connect6"));

    assert_ok(&client(None, "tcp", &net.a6, 5432), "untagged IPv6");
    assert_ok(&client(None, "tcp", &mapped, 5432), "untagged mapped");
    assert_eq!(listener.count("tcp:5432"), 2);

    // NAT64 and IPv4-compatible spellings carry the IPv4 address: its rules apply. Nothing
    // routes them here, so an untagged attempt fails otherwise (never with EPERM).
    let v4: Ipv4Addr = net.a.parse().expect("IPv4");
    let local_use: Vec<String> = [48, 56, 64, 96]
        .into_iter()
        .map(|len| nat64_local_use(v4, len))
        .collect();
    let translated = [format!("64:ff9b::{}", net.a), format!("::{}", net.a)];
    for carried in translated.iter().chain(&local_use) {
        assert_eperm(&client(Some(&daemon), "tcp", carried, 5432), carried);
        let untagged = client(None, "tcp", carried, 5432);
        assert!(
            !stdout(&untagged).starts_with("err 1\n"),
            "untagged {carried} is not refused by guard: {}",
            text(&untagged)
        );
    }
    let evs = net_events(&daemon, 3 + local_use.len(), |e| e["rule"] == "prod-v4");
    let addresses: Vec<&str> = evs
        .iter()
        .filter_map(|e| e["destination"]["address"].as_str())
        .collect();
    assert_eq!(
        addresses.iter().filter(|a| **a == net.a).count(),
        3,
        "the mapped and the two translated spellings are matched as the IPv4 address: {evs:?}"
    );
    for spelling in &local_use {
        let want: Ipv6Addr = spelling.parse().expect("IPv6");
        assert!(
            addresses
                .iter()
                .any(|a| a.parse::<Ipv6Addr>().ok() == Some(want)),
            "the local-use NAT64 spelling {spelling} met the IPv4 rule: {evs:?}"
        );
    }
    assert_eq!(listener.count("tcp:5432"), 2);
}

/// `v4` under NAT64's local-use prefix `64:ff9b:1::/48` (RFC 8215) as RFC 6052 lays it out
/// for a network-specific prefix of `len` bits (the octet at bits 64–71 stays zero).
fn nat64_local_use(v4: Ipv4Addr, len: u8) -> String {
    let at: [usize; 4] = match len {
        48 => [6, 7, 9, 10],
        56 => [7, 9, 10, 11],
        64 => [9, 10, 11, 12],
        _ => [12, 13, 14, 15],
    };
    let mut b = [0u8; 16];
    b[..6].copy_from_slice(&[0, 0x64, 0xff, 0x9b, 0, 1]);
    for (octet, pos) in v4.octets().into_iter().zip(at) {
        b[pos] = octet;
    }
    Ipv6Addr::from(b).to_string()
}

#[test]
fn udp_sendto_without_connect_and_protocol_match() {
    let net = Net::new();
    let listener = Listener::start(
        &net,
        &[
            format!("udp:5353:{}", net.a),
            format!("tcp:5353:{}", net.a),
            format!("udp:5353:{}", net.a6),
        ],
    );
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-dns, ips: [{}, \"{}\"], ports: [5353], protocol: udp }}\n",
        net.a, net.a6
    )));
    assert_eperm(&client(Some(&daemon), "udp", &net.a, 5353), "tagged sendto");
    assert_eperm(
        &client(Some(&daemon), "udp", &net.a6, 5353),
        "tagged sendto v6",
    );
    let mapped = format!("::ffff:{}", net.a);
    assert_eperm(
        &client(Some(&daemon), "udp", &mapped, 5353),
        "tagged sendto mapped",
    );
    assert_eperm(
        &client(Some(&daemon), "udpconn", &net.a, 5353),
        "tagged connected UDP",
    );
    // The rule is for UDP: TCP to the same port is allowed.
    assert_ok(&client(Some(&daemon), "tcp", &net.a, 5353), "tagged TCP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listener.count("udp:5353"), 0);
    let evs = net_events(&daemon, 4, |e| e["rule"] == "prod-dns");
    assert!(evs.iter().any(|e| e["hook"] == hook("sendmsg4")));
    assert!(evs.iter().any(|e| e["hook"] == hook("sendmsg6")));
    assert!(evs.iter().all(|e| e["destination"]["protocol"] == "udp"));

    assert_ok(&client(None, "udp", &net.a, 5353), "untagged sendto");
    assert_ok(&client(None, "udp", &net.a6, 5353), "untagged sendto v6");
    wait_for("untagged datagrams", Duration::from_secs(5), || {
        (listener.count("udp:5353") == 2).then_some(())
    });
}

#[test]
fn tcp_fast_open_and_io_uring_connect() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, ips: [{}], ports: [5432] }}\n",
        net.a
    )));
    assert_eperm(&client(Some(&daemon), "tfo", &net.a, 5432), "tagged TFO");
    let uring = env!("CARGO_BIN_EXE_guard-uring-connect");
    let dest = format!("{}:5432", net.a);
    for extra in [None, Some("--async")] {
        let mut args = vec![uring, dest.as_str()];
        args.extend(extra);
        let out = run(Some(&daemon), &args);
        assert_eq!(
            stdout(&out),
            "err 1\n",
            "tagged io_uring {extra:?}: {}",
            text(&out)
        );
    }
    assert_eq!(listener.count("tcp:5432"), 0);
    net_events(&daemon, 3, |e| e["rule"] == "prod-db");

    assert_ok(&client(None, "tfo", &net.a, 5432), "untagged TFO");
    let out = run(None, &[uring, &dest]);
    assert_eq!(stdout(&out), "ok\n", "untagged io_uring: {}", text(&out));
    wait_for("untagged connections", Duration::from_secs(5), || {
        (listener.count("tcp:5432") == 2).then_some(())
    });
}

#[test]
fn hostname_rule_follows_dns_changes() {
    let net = Net::new();
    let listener = Listener::start(
        &net,
        &[format!("tcp:5432:{}", net.a), format!("tcp:5432:{}", net.b)],
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let answer = dir.path().join("answer");
    std::fs::write(&answer, &net.a).unwrap();
    let _dns = net.spawn_ready(
        "python3",
        &["-c", DNS, &net.a, "db.prod.test", answer.to_str().unwrap()],
    );
    // SAFETY: the network tests run with --test-threads=1; nothing else reads or writes the
    // environment while the daemon is spawned.
    unsafe { std::env::set_var("GUARD_DNS_SERVER", format!("{}:53", net.a)) };
    let daemon = Daemon::start_with_policy(&policy(
        "    - { name: prod-api, hosts: [db.prod.test], ports: [5432], action: deny }\n",
    ));
    // SAFETY: as above.
    unsafe { std::env::remove_var("GUARD_DNS_SERVER") };

    assert_eperm(
        &client(Some(&daemon), "tcp", &net.a, 5432),
        "resolved address",
    );
    assert_ok(&client(Some(&daemon), "tcp", &net.b, 5432), "other address");
    let evs = net_events(&daemon, 1, |e| e["rule"] == "prod-api");
    assert_eq!(evs[0]["destination"]["host"], "db.prod.test");

    // The name moves: after re-resolution the new address is blocked, the old one freed.
    std::fs::write(&answer, &net.b).unwrap();
    wait_for(
        "the new address to be blocked",
        Duration::from_secs(30),
        || {
            let out = client(Some(&daemon), "tcp", &net.b, 5432);
            stdout(&out).starts_with("err 1\n").then_some(())
        },
    );
    assert_ok(&client(Some(&daemon), "tcp", &net.a, 5432), "old address");
    let evs = net_events(&daemon, 2, |e| e["rule"] == "prod-api");
    assert!(
        evs.iter()
            .any(|e| e["destination"]["address"] == net.b.as_str()
                && e["destination"]["host"] == "db.prod.test"),
        "{evs:?}"
    );
    assert!(listener.count("tcp:5432") >= 2);
}

/// What status says unix socket rules cover.
fn unix_coverage(daemon: &Daemon) -> String {
    let unix = daemon.status_json().unwrap()["network"]["unix"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    // Every kernel the suite runs on has a unix hook: cgroup unix programs (≥ 6.7), BPF LSM
    // or the fmod_ret peer check.
    assert!(!unix.starts_with("not-loaded"), "unix socket rules: {unix}");
    unix
}

/// A unix socket server in a temp dir reached through a symlinked directory, plus an
/// abstract socket and a datagram socket.
#[test]
fn unix_socket_rules() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&real, &link).unwrap();
    let sock = real.join("app.sock");
    let dgram = real.join("dgram.sock");
    let abstract_name = format!("@{}", unique("guard-test"));
    let counts = dir.path().join("count");
    let server = UnixServer::start(
        &counts,
        &[
            format!("stream={}", sock.display()),
            format!("stream={abstract_name}"),
            format!("dgram={}", dgram.display()),
        ],
    );
    let count = || server.count();
    // The rule names the socket through the symlink; the kernel also gets the resolved path.
    let daemon = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: unix-test }}\n\
         spec:\n  agents:\n    - {{ name: claude-code, executables: [claude] }}\n  \
         endpoints:\n    - {{ name: runtime-sock, unix: [\"{}\", \"{abstract_name}\", \"{}\"], \
         action: deny }}\n",
        link.join("app.sock").display(),
        link.join("dgram.sock").display(),
    ));
    let unix = unix_coverage(&daemon);
    assert!(unix.starts_with("enforced"), "{unix}");
    // Before Linux 6.7 without BPF LSM only the socket file is decided (fmod_ret of
    // security_unix_*): status names abstract names as not covered.
    let abstract_covered = !unix.contains("Abstract names are not covered");
    let s = |p: &Path| p.to_str().unwrap().to_owned();
    let agent_dir = tempfile::tempdir().unwrap();
    let claude = agent_dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    let mut targets = vec![
        ("resolved path", "unix", s(&sock)),
        ("configured path", "unix", s(&link.join("app.sock"))),
        ("datagram", "unixdgram", s(&dgram)),
    ];
    if abstract_covered {
        targets.push(("abstract", "unix", abstract_name.clone()));
    }
    for (what, mode, addr) in &targets {
        // A recognised agent: refused.
        let mut c = Command::new(&claude);
        c.args(["-c", &format!("python3 -c \"$CLIENT\" {mode} {addr} 0")])
            .env("CLIENT", CLIENT);
        assert_eperm(&output(c), &format!("agent, {what}"));
        // A guard run tree: refused, or (a socket file, where only the file the kernel
        // resolves is decided) masked in its mount namespace: never connected.
        let out = client(Some(&daemon), mode, addr, 0);
        assert!(
            stdout(&out).starts_with("err "),
            "guard run, {what}: {}",
            text(&out)
        );
    }
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(count(), 0, "no connection reached the server");
    let evs = net_events(&daemon, targets.len(), |e| {
        e["rule"] == "runtime-sock" && e["process"]["comm"] == "python3"
    });
    assert!(
        !abstract_covered
            || evs
                .iter()
                .any(|e| e["destination"]["unix_path"] == abstract_name.as_str())
    );
    assert!(
        evs.iter()
            .any(|e| e["destination"]["unix_path"] == s(&sock).as_str())
    );
    let dgram_hook = if abstract_covered {
        hook("sendmsg_unix")
    } else {
        "unix_may_send"
    };
    assert!(evs.iter().any(|e| e["hook"] == dgram_hook), "{evs:?}");
    assert!(evs.iter().all(|e| e["destination"]["family"] == "unix"));

    assert_ok(&client(None, "unix", &s(&sock), 0), "untagged path");
    assert_ok(
        &client(None, "unix", &abstract_name, 0),
        "untagged abstract",
    );
    assert_ok(
        &client(None, "unixdgram", &s(&dgram), 0),
        "untagged datagram",
    );
    wait_for("untagged unix connections", Duration::from_secs(5), || {
        (count() == 3).then_some(())
    });
    drop(server);
}

/// Every spelling of a denied socket path — relative to the cwd, repeated slashes, `.`, `..`,
/// `/proc/self/root`, `/proc/self/cwd`, a symlink and a hard link the agent makes — for a
/// recognised agent and a `guard run` tree. bpf-lsm decides on the socket file the kernel
/// resolved: all are refused. The fallback tier sees names only: the spellings the kernel
/// resolves from the name are refused by their last component; status names what it does
/// not cover for recognised agents (links the agent makes), and `guard run` trees reach no
/// spelling (the file is masked). Untagged processes connect through every spelling.
#[test]
fn unix_socket_spellings_all_meet_the_rule() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real");
    std::fs::create_dir(&real).unwrap();
    let sock = real.join("app.sock");
    let counts = dir.path().join("count");
    let server = UnixServer::start(&counts, &[format!("stream={}", sock.display())]);
    let count = || server.count();
    let daemon = Daemon::start_with_policy(&format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: unix-test }}\n\
         spec:\n  agents:\n    - {{ name: claude-code, executables: [claude] }}\n  \
         endpoints:\n    - {{ name: runtime-sock, unix: [\"{}\"], action: deny }}\n",
        sock.display()
    ));
    let coverage = unix_coverage(&daemon);
    let lsm = daemon.assert_tier() == "bpf-lsm";
    // BPF LSM, or the fallback tier's fmod_ret peer check: the socket file decides.
    let by_file = coverage.contains("whatever spelling, symlink, hard link");
    assert_eq!(
        by_file,
        lsm || coverage.contains("fmod_ret of security_unix"),
        "{coverage}"
    );
    if std::env::var_os("GUARD_VM").is_some() {
        // The VM kernels take trampoline programs: the peer check is required there.
        assert!(by_file, "{coverage}");
    }
    let links = tempfile::tempdir().unwrap();
    let (r, sk, l) = (real.display(), sock.display(), links.path().display());
    let cases = [
        (
            "relative",
            format!("cd {r} && python3 -c \"$CLIENT\" unix app.sock 0"),
        ),
        (
            "repeated slashes",
            format!("python3 -c \"$CLIENT\" unix {r}//app.sock 0"),
        ),
        (
            "dot",
            format!("python3 -c \"$CLIENT\" unix {r}/./app.sock 0"),
        ),
        (
            "dot dot",
            format!("python3 -c \"$CLIENT\" unix {r}/../real/app.sock 0"),
        ),
        (
            "/proc/self/root",
            format!("python3 -c \"$CLIENT\" unix /proc/self/root{sk} 0"),
        ),
        (
            "/proc/self/cwd",
            format!("cd {r} && python3 -c \"$CLIENT\" unix /proc/self/cwd/app.sock 0"),
        ),
        (
            "symlink",
            format!("ln -sf {sk} {l}/sym-$$ && python3 -c \"$CLIENT\" unix {l}/sym-$$ 0"),
        ),
        (
            "hard link",
            format!("ln {sk} {l}/hard-$$ && python3 -c \"$CLIENT\" unix {l}/hard-$$ 0"),
        ),
    ];
    let agent_dir = tempfile::tempdir().unwrap();
    let claude = agent_dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    for (what, script) in &cases {
        // A recognised agent.
        let mut c = Command::new(&claude);
        c.args(["-c", script]).env("CLIENT", CLIENT);
        let out = output(c);
        let link = what.contains("link");
        if *what == "hard link" && by_file {
            // The socket file is a protected name (guard:socket-files): the link is refused.
            assert_eq!(out.status.code(), Some(1), "agent, {what}: {}", text(&out));
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("Operation not permitted")
                    && !stdout(&out).contains("ok\n"),
                "agent, {what}: {}",
                text(&out)
            );
        } else if by_file || !link {
            assert_eperm(&out, &format!("agent, {what}"));
        } else if *what == "hard link" {
            // The socket file is a protected name (guard:socket-files): the change detectors
            // kill the linker before `ln` returns, so nothing connects through its link.
            assert_eq!(
                out.status.code(),
                Some(137),
                "agent, {what}: {}",
                text(&out)
            );
            assert!(
                !stdout(&out).contains("ok\n"),
                "agent, {what}: {}",
                text(&out)
            );
            assert!(
                coverage.contains("hard links: the linker is killed"),
                "{coverage}"
            );
            wait_for("the linker's kill", Duration::from_secs(10), || {
                daemon.events().into_iter().find(|e| {
                    e["rule"] == "guard:socket-files"
                        && e["result"] == "killed"
                        && e["object"]["operation"] == "link"
                })
            });
        } else {
            let named = if *what == "symlink" {
                "symlinks"
            } else {
                "hard links"
            };
            assert!(
                coverage.contains(named),
                "status must name {named}: {coverage}"
            );
        }
        // A guard run tree: refused or masked, never connected.
        let mut c = daemon.guard();
        c.args(["run", "--", "bash", "-c", script])
            .env("CLIENT", CLIENT);
        let out = output(c);
        assert!(
            !stdout(&out).contains("ok\n"),
            "guard run, {what}: connected\n{}",
            text(&out)
        );
        // Untagged.
        let mut c = Command::new("bash");
        c.args(["-c", script]).env("CLIENT", CLIENT);
        assert_ok(&output(c), &format!("untagged, {what}"));
    }
    if by_file && !lsm {
        // Refused by name where the cgroup programs see it (≥ 6.7), else, and for the
        // symlink, by the socket file the kernel resolved (the hard link is never made).
        let evs = net_events(&daemon, cases.len() - 1, |e| {
            e["rule"] == "runtime-sock"
                && (e["hook"] == "connect_unix" || e["hook"] == "unix_stream_connect")
        });
        assert!(
            evs.iter()
                .filter(|e| e["hook"] == "unix_stream_connect")
                .count()
                >= 1
                && evs.iter().all(|e| e["destination"]["unix_path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with("app.sock"))
                    && !e["ancestry"].as_array().unwrap().is_empty()),
            "{evs:?}"
        );
    }
    if !by_file {
        // Refused by name: each event names the spelling the agent used.
        let evs = net_events(&daemon, cases.len() - 2, |e| {
            e["rule"] == "runtime-sock" && e["hook"] == "connect_unix"
        });
        assert!(
            evs.iter().all(|e| e["destination"]["unix_path"]
                .as_str()
                .is_some_and(|p| p.ends_with("app.sock"))
                && !e["ancestry"].as_array().unwrap().is_empty()),
            "{evs:?}"
        );
    }
    if lsm {
        // Every spelling but the hard link, which is never made.
        let evs = net_events(&daemon, cases.len() - 1, |e| {
            e["rule"] == "runtime-sock" && e["hook"] == "lsm_unix_stream_connect"
        });
        assert!(
            evs.iter()
                .all(|e| e["destination"]["unix_path"] == sk.to_string().as_str()
                    && !e["ancestry"].as_array().unwrap().is_empty()),
            "{evs:?}"
        );
        wait_for("untagged connections", Duration::from_secs(5), || {
            (count() == cases.len() as u64).then_some(())
        });
    }
    drop(server);
}

#[test]
fn kill_leaves_the_offender_dead_and_the_socket_unconnected() {
    // `auto` is the cheapest way this kernel allows (in place on 6.18, fexit on 6.1/6.12);
    // `sys-exit` is the way of last resort, proven here on every kernel too.
    for way in ["auto", "sys-exit"] {
        kill_with(way);
    }
}

fn kill_with(way: &str) {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let daemon = Daemon::start_with_args(
        Some(&policy(&format!(
            "    - {{ name: prod-db, ips: [{}], ports: [5432], action: kill }}\n",
            net.a
        ))),
        &["--kill-via", way],
    );
    let status = daemon.status_json().expect("status");
    let kill = status["network"]["kill"].as_str().unwrap_or_default();
    assert!(
        kill.starts_with("SIGKILL") && !kill.contains("none attached"),
        "--kill-via {way}: {kill}"
    );
    let out = run(
        Some(&daemon),
        &["python3", "-c", CLIENT, "tcp", &net.a, "5432", "1"],
    );
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "--kill-via {way}: killed by SIGKILL: {}",
        text(&out)
    );
    assert_eq!(
        stdout(&out),
        "",
        "the offender never ran again: {}",
        text(&out)
    );
    assert_eq!(listener.count("tcp:5432"), 0);
    let evs = net_events(&daemon, 1, |e| e["rule"] == "prod-db");
    assert_eq!(
        (&evs[0]["action"], &evs[0]["result"]),
        (&"kill".into(), &"killed".into())
    );
    wait_for("the kill counter", Duration::from_secs(5), || {
        (counter(&daemon, "net_kills_sent") >= 1).then_some(())
    });

    // io_uring from a worker thread: the whole process dies, worker and all.
    let uring = env!("CARGO_BIN_EXE_guard-uring-connect");
    let dest = format!("{}:5432", net.a);
    let out = run(Some(&daemon), &[uring, &dest, "--async"]);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "io_uring offender killed: {}",
        text(&out)
    );
    assert_eq!(listener.count("tcp:5432"), 0);
}

#[test]
fn kill_tree_kills_the_tree_and_spares_the_untagged_parent() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, ips: [{}], ports: [5432], action: kill-tree }}\n",
        net.a
    )));
    let dir = tempfile::tempdir().expect("tempdir");
    let pids = dir.path().join("pids");
    let guard = guard_tests::guard_bin();
    // parent (untagged) → guard run → bash (root) → sleeps, a setsid'd sleeper, python.
    let tree = format!(
        "sleep 300 & echo $! >> {p}; setsid sleep 300 & echo $! >> {p}; echo $$ >> {p}; \
         python3 -c \"$CLIENT\" tcp {a} 5432; sleep 300",
        p = pids.display(),
        a = net.a,
    );
    let parent_script = format!(
        "{} run -- bash -c \"$TREE\"; echo parent-alive-$?",
        guard.display()
    );
    let mut cmd = Command::new("bash");
    cmd.args(["-c", &parent_script])
        .env("TREE", &tree)
        .env("CLIENT", CLIENT)
        .envs(daemon.env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut parent = Proc::spawn(cmd);
    let status = parent.wait_timeout(Duration::from_secs(20));
    let mut out = String::new();
    std::io::Read::read_to_string(parent.child.stdout.as_mut().unwrap(), &mut out).unwrap();
    assert!(status.success(), "untagged parent survived: {out}");
    assert!(
        out.contains("parent-alive-137"),
        "the tree root died by SIGKILL: {out}"
    );
    let members: Vec<u32> = std::fs::read_to_string(&pids)
        .unwrap()
        .lines()
        .map(|l| l.parse().unwrap())
        .collect();
    assert_eq!(members.len(), 3);
    let _cleanup = guard_tests::KillOnDrop(members.clone());
    wait_for(
        "every process of the tree to die",
        Duration::from_secs(10),
        || {
            members
                .iter()
                .all(|p| !guard_tests::alive(*p))
                .then_some(())
        },
    );
    assert_eq!(listener.count("tcp:5432"), 0);
    let evs = net_events(&daemon, 1, |e| e["rule"] == "prod-db");
    assert_eq!(evs[0]["action"], "kill-tree");
}

#[test]
fn reason_line_reaches_the_parent_and_never_blocks_the_daemon() {
    let net = Net::new();
    let _listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, ips: [{}], ports: [5432], action: deny }}\n",
        net.a
    )));
    let expected = format!(
        "guard: connect to {}:5432 denied by rule prod-db (ask your security team for an \
         exception: guard events --rule prod-db)",
        net.a
    );
    // The tagged process stays alive for a moment: its own stderr gets the line.
    let out = run(
        Some(&daemon),
        &["python3", "-c", CLIENT, "tcp", &net.a, "5432", "1.5"],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(&expected),
        "{}",
        text(&out)
    );
    // curl exits at once: the line reaches the shell's stderr, the same stream.
    let curl = format!("curl -sSv --max-time 3 http://{}:5432/; sleep 1.5", net.a);
    let out = run(Some(&daemon), &["bash", "-c", &curl]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("Operation not permitted"), "{}", text(&out));
    assert!(err.contains(&expected), "{}", text(&out));

    // A regular file the tree keeps writing to: the line lands where the offender writes next,
    // whole, and none of the tree's own lines is overwritten.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("stderr");
    let busy = format!(
        "for i in $(seq 1 150); do echo \"own line $i\" >&2; sleep 0.01; done & \
         python3 -c \"$CLIENT\" tcp {} 5432 1.5; wait",
        net.a
    );
    let mut c = daemon.guard();
    c.args(["run", "--", "bash", "-c", &busy])
        .env("CLIENT", CLIENT)
        .stderr(std::fs::File::create(&path).unwrap());
    let out = output(c);
    assert!(stdout(&out).starts_with("err 1"), "{}", text(&out));
    let written = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(lines.contains(&expected.as_str()), "{written}");
    for i in 1..=150 {
        assert!(
            lines.contains(&format!("own line {i}").as_str()),
            "{written}"
        );
    }
    assert_eq!(lines.len(), 151, "{written}");

    // Closed stderr, and a full stderr pipe nobody reads: the daemon goes on.
    let closed = format!("exec 2>&-; python3 -c \"$CLIENT\" tcp {} 5432 1", net.a);
    let mut c = daemon.guard();
    c.args(["run", "--", "bash", "-c", &closed])
        .env("CLIENT", CLIENT);
    let out = output(c);
    assert!(stdout(&out).starts_with("err 1"), "{}", text(&out));
    let full = format!(
        "head -c 70000 /dev/zero >&2 & sleep 0.5; python3 -c \"$CLIENT\" tcp {} 5432 2",
        net.a
    );
    let mut c = daemon.guard();
    c.args(["run", "--", "bash", "-c", &full])
        .env("CLIENT", CLIENT)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut stuck = Proc::spawn(c);
    std::thread::sleep(Duration::from_millis(1500));
    let t = std::time::Instant::now();
    assert!(daemon.status_json().is_some(), "the daemon answers");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "the daemon is not stuck writing to a full pipe"
    );
    let before = net_events(&daemon, 4, |e| e["rule"] == "prod-db").len();
    assert_eperm(
        &client(Some(&daemon), "tcp", &net.a, 5432),
        "after a full pipe",
    );
    net_events(&daemon, before + 1, |e| e["rule"] == "prod-db");
    drop(stuck.child.stderr.take());
    drop(stuck);
}

#[test]
fn audit_mode_allows_and_records() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, cidrs: [{}/24], ports: [5432], action: kill, mode: audit }}\n",
        net.a
    )));
    assert_ok(
        &client(Some(&daemon), "tcp", &net.a, 5432),
        "audited connect",
    );
    let evs = net_events(&daemon, 1, |e| e["rule"] == "prod-db");
    assert_eq!(
        (&evs[0]["mode"], &evs[0]["result"]),
        (&"audit".into(), &"allowed".into())
    );
    wait_for("the connection", Duration::from_secs(5), || {
        (listener.count("tcp:5432") == 1).then_some(())
    });
}

#[test]
fn enforcement_outlives_the_daemon_and_a_restart_adopts_it() {
    let net = Net::new();
    let listener = Listener::start(&net, &[format!("tcp:5432:{}", net.a)]);
    let mut daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-db, ips: [{}], ports: [5432], action: deny }}\n",
        net.a
    )));
    let dir = tempfile::tempdir().expect("tempdir");
    let (trigger, result) = (dir.path().join("go"), dir.path().join("result"));
    // A tagged shell that connects only when told to, after the daemon is gone.
    let script = format!(
        "while [ ! -e {t} ]; do sleep 0.05; done; python3 -c \"$CLIENT\" tcp {a} 5432 > {r}; sleep 300",
        t = trigger.display(),
        r = result.display(),
        a = net.a
    );
    let mut c = daemon.guard();
    c.args(["run", "--", "bash", "-c", &script])
        .env("CLIENT", CLIENT)
        .stderr(Stdio::null());
    let _waiter = Proc::spawn(c);
    wait_for("the waiter to be tagged", Duration::from_secs(10), || {
        daemon
            .ps()
            .iter()
            .any(|p| p["comm"] == "bash")
            .then_some(())
    });
    daemon.signal_and_reap(nix::sys::signal::Signal::SIGKILL);
    std::fs::write(&trigger, "").unwrap();
    let out = wait_for("the waiter's attempt", Duration::from_secs(10), || {
        std::fs::read_to_string(&result)
            .ok()
            .filter(|s| s.contains('\n'))
    });
    assert!(
        out.starts_with("err 1"),
        "denied while no daemon runs: {out}"
    );
    assert_eq!(listener.count("tcp:5432"), 0);

    // A new daemon on the same pins keeps the rules in force and replaces the links.
    daemon.spawn();
    assert_eperm(
        &client(Some(&daemon), "tcp", &net.a, 5432),
        "after the restart",
    );
    // Every network program the daemon reports (cgroup hooks, with the unix pair where the
    // kernel has them, the unix peer check where it takes fmod_ret programs, and sock_create;
    // or the LSM socket hooks) has exactly one link pin,
    // replaced in place.
    let st = daemon.status_json().unwrap();
    let programs: Vec<String> = st["network"]["programs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_owned())
        .collect();
    assert!(programs.len() >= 2, "{st}");
    let links: Vec<String> = std::fs::read_dir(daemon.pin_dir.join("links"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| {
            n.starts_with("guard_connect")
                || n.starts_with("guard_sendmsg")
                || n == "guard_sock_create"
                || n == "guard_egress"
                || n.starts_with("guard_lsm_socket")
                || n.starts_with("guard_peer_unix")
        })
        .collect();
    let mut sorted = links.clone();
    sorted.sort();
    let mut want = programs.clone();
    want.sort();
    assert_eq!(sorted, want, "one pinned link per network hook");
    assert_eq!(listener.count("tcp:5432"), 0);
}

#[test]
fn raw_and_packet_sockets_cannot_carry_traffic_past_the_endpoint_rules() {
    let net = Net::new();
    let port = 5353;
    let listener = Listener::start(&net, &[format!("udp:{port}:{}", net.a)]);
    // rawSockets is not written: the default is deny.
    let daemon = Daemon::start_with_policy(&policy(&format!(
        "    - {{ name: prod-dns, ips: [{}], ports: [{port}], protocol: udp, action: deny }}\n",
        net.a
    )));
    let lsm = guard_tests::lsm_tier();
    let status = daemon.status_json().expect("status");
    let coverage = status["network"]["raw_sockets"]
        .as_str()
        .unwrap_or_default();
    assert!(
        coverage.starts_with("enforced"),
        "raw-socket rule: {status}"
    );
    let raw = |d: Option<&Daemon>, mode: &str| {
        run(d, &["python3", "-c", RAW, mode, &net.a, &port.to_string()])
    };

    let capture = Capture::start(&net, &format!("udp port {port}"));
    // A datagram the endpoint rule refuses through a UDP socket…
    assert_eperm(&client(Some(&daemon), "udp", &net.a, port), "tagged UDP");
    // …and the same datagram hand-made on a raw socket: refused at socket().
    assert_eperm(&raw(Some(&daemon), "udp4"), "tagged raw IPv4 socket");
    assert_eperm(&raw(Some(&daemon), "raw6"), "tagged raw IPv6 socket");
    let mut expected = 2;
    if lsm {
        assert_eperm(&raw(Some(&daemon), "packet"), "tagged packet socket");
        expected += 1;
    } else {
        assert!(
            coverage.contains("AF_PACKET") && coverage.contains("not covered"),
            "the fallback tier must say packet sockets are not covered: {coverage}"
        );
        println!(
            "NOT RUN on the fallback tier: packet sockets (cgroup sock_create never sees them)"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(listener.count(&format!("udp:{port}")), 0);
    assert_eq!(
        capture.packets(),
        0,
        "no packet may leave a tagged raw socket"
    );

    let evs = net_events(&daemon, expected, |e| e["rule"] == "guard:raw-sockets");
    let create = if lsm {
        "lsm_socket_create"
    } else {
        "sock_create"
    };
    for e in &evs {
        assert_eq!(e["hook"], create, "{e}");
        assert_eq!(
            (&e["action"], &e["result"]),
            (&"deny".into(), &"denied".into()),
            "{e}"
        );
        assert!(e["destination"]["address"].is_null(), "{e}");
        assert!(
            e["ancestry"].as_array().is_some_and(|a| !a.is_empty()),
            "ancestry: {e}"
        );
    }
    let kinds: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            let d = &e["destination"];
            (
                d["family"].as_str().unwrap_or_default().to_owned(),
                d["protocol"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert!(kinds.contains(&("ipv4".into(), "raw".into())), "{kinds:?}");
    assert!(kinds.contains(&("ipv6".into(), "raw".into())), "{kinds:?}");
    if lsm {
        assert!(
            kinds.contains(&("packet".into(), "packet".into())),
            "{kinds:?}"
        );
    }

    // Untagged, the same raw datagram reaches the listener: the denial was the rule's.
    assert_ok(&raw(None, "udp4"), "untagged raw IPv4 socket");
    assert_ok(&raw(None, "raw6"), "untagged raw IPv6 socket");
    assert_ok(&raw(None, "packet"), "untagged packet socket");
    wait_for("the untagged raw datagram", Duration::from_secs(5), || {
        (listener.count(&format!("udp:{port}")) == 1).then_some(())
    });
}

/// The hook a decision names: the fallback tier's cgroup program, or on the bpf-lsm tier the
/// LSM hook that sees every family.
fn hook(fallback: &'static str) -> &'static str {
    match (guard_tests::lsm_tier(), fallback.starts_with("connect")) {
        (false, _) => fallback,
        (true, true) => "lsm_socket_connect",
        (true, false) => "lsm_socket_sendmsg",
    }
}
