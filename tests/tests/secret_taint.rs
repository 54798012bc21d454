//! The chain of the incident, replayed: an agent finds a platform token in an unrelated file of
//! its project, a tool process reads it and exits, and a later command of the same agent tree
//! calls the platform's API with it. guard taints the tree that read the secret, from its root,
//! and the secrets rule denies its calls to anything but its allow-list — naming the file. A
//! tree that read nothing, and untagged processes, are not affected.

#[allow(dead_code, reason = "shared with the file tests; this uses the volume")]
#[path = "files/harness.rs"]
mod harness;
#[allow(dead_code, reason = "shared with the network tests")]
#[path = "network_support/mod.rs"]
mod network_support;

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use guard_tests::{Daemon, Proc, output, unique, wait_for};
use network_support::{DNS, Net};
use serde_json::Value;

/// The control plane the token is for (a name of `@control-planes`), served in the test's
/// namespace and resolved by the test's name server.
const API: &str = "backboard.railway.app";
/// The allow-list's destination (a package registry, say), served in the namespace too.
const REGISTRY: &str = "registry.test";

/// An HTTPS server on `addr:443` in the namespace, with a certificate made for the test.
fn https(net: &Net, dir: &Path, addr: &str) -> Proc {
    let (key, cert, conf) = (
        dir.join("key.pem"),
        dir.join("cert.pem"),
        dir.join("openssl.cnf"),
    );
    if !cert.exists() {
        // A configuration of its own: the test guests carry the openssl program only.
        std::fs::write(&conf, "[req]\ndistinguished_name = dn\n[dn]\n").unwrap();
        let out = output({
            let mut c = Command::new("openssl");
            c.env("OPENSSL_CONF", &conf)
                .args(["req", "-config"])
                .arg(&conf)
                .args(["-x509", "-newkey", "ec", "-pkeyopt"])
                .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
                .args(["-subj", "/CN=guard-test", "-keyout"])
                .arg(&key)
                .arg("-out")
                .arg(&cert);
            c
        });
        assert!(out.status.success(), "openssl req: {out:?}");
    }
    // `ready` once the server accepts (bash's /dev/tcp, from inside the namespace).
    let script = format!(
        "OPENSSL_CONF={} openssl s_server -quiet -www -accept {addr}:443 -cert {} -key {} & \
         until (exec 3<>/dev/tcp/{addr}/443) 2>/dev/null; do sleep 0.05; done; \
         echo ready; wait",
        conf.display(),
        cert.display(),
        key.display()
    );
    net.spawn_ready("bash", &["-c", &script])
}

/// `curl` of `https://HOST/` pinned to `addr` (no name lookup leaves the test), printing the
/// HTTP code and curl's exit status as `CODE rc=N`.
fn curl(host: &str, addr: &str, extra: &str) -> String {
    format!(
        "curl -sk -m 5 -o /dev/null -w '%{{http_code}}' --resolve {host}:443:{addr} {extra} \
         https://{host}/; echo \" rc=$?\""
    )
}

fn policy(registry: &str) -> String {
    format!(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: taint }}\nspec:\n\
         \x20 agents:\n    - {{ name: claude-code, executables: [claude] }}\n\
         \x20 endpoints:\n\
         \x20   - {{ name: control-planes, hosts: [\"@control-planes\"], ports: [443], action: audit }}\n\
         \x20 secrets:\n    taint: deny\n    allow:\n\
         \x20     - {{ name: registry, ips: [{registry}], ports: [443] }}\n"
    )
}

/// A GitHub-format token, different in every run (36 letters and digits after `ghp_`).
fn token() -> String {
    let seed = unique("taint");
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    let body: String = (0..36)
        .map(|i| {
            for b in seed.bytes().chain([i as u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789"[(h % 57) as usize] as char
        })
        .collect();
    format!("ghp_{body}")
}

struct Setup {
    net: Net,
    daemon: Daemon,
    _servers: Vec<Proc>,
    _dns: Proc,
    vol: harness::Volume,
    proj: PathBuf,
    notes: PathBuf,
    token: String,
    claude: PathBuf,
    _dir: tempfile::TempDir,
}

/// The namespace with the API, the registry and the name server; the daemon; a project on a
/// real filesystem with a token in its notes; an agent executable. `None` where no read path
/// is scanned on this kernel (said in the output).
fn setup() -> Option<Setup> {
    let net = Net::new();
    let dir = tempfile::tempdir().unwrap();
    let servers = vec![
        https(&net, dir.path(), &net.a),
        https(&net, dir.path(), &net.b),
    ];
    let answer = dir.path().join("answer");
    std::fs::write(&answer, &net.a).unwrap();
    let dns = net.spawn_ready(
        "python3",
        &["-c", DNS, &net.a, API, answer.to_str().unwrap()],
    );
    // SAFETY: these tests run one at a time; nothing else reads or writes the environment
    // while the daemon is spawned.
    unsafe { std::env::set_var("GUARD_DNS_SERVER", format!("{}:53", net.a)) };
    let daemon = Daemon::start_with_args(Some(&policy(&net.b)), &["--fallback-read-scan"]);
    // SAFETY: as above.
    unsafe { std::env::remove_var("GUARD_DNS_SERVER") };
    daemon.assert_tier();
    let st = daemon.status_json().expect("status");
    let reads = st["secret_reads"].as_str().unwrap_or_default().to_owned();
    let taint = st["secret_taint"].as_str().unwrap_or_default().to_owned();
    if reads.starts_with("not covered") {
        // 6.1 without BPF LSM has no page-cache read tracepoints: nothing sees a read.
        assert_eq!(st["tier"], "fallback", "{reads}");
        assert!(taint.starts_with("not-loaded"), "{taint}");
        println!("NOT RUN: the secrets rule on this kernel: {taint}");
        return None;
    }
    assert!(taint.starts_with("enforced (deny)"), "{taint}");

    let vol = harness::Volume::new();
    let proj = vol.mnt.join("proj");
    std::fs::create_dir_all(proj.join("src")).unwrap();
    std::fs::write(proj.join("src/main.rs"), "fn main() {}\n").unwrap();
    let token = token();
    let notes = proj.join("notes.txt");
    std::fs::write(&notes, format!("deploy notes\nrailway via gh: {token}\n")).unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();
    Some(Setup {
        net,
        daemon,
        _servers: servers,
        _dns: dns,
        vol,
        proj,
        notes,
        token,
        claude,
        _dir: dir,
    })
}

fn events(d: &Daemon, f: impl Fn(&Value) -> bool) -> Vec<Value> {
    d.events().into_iter().filter(|e| f(e)).collect()
}

fn rule_is(e: &Value, rules: &[&str]) -> bool {
    rules.iter().any(|r| e["rule"] == *r)
}

/// `CODE rc=N` lines of a script's output, by the label before them.
fn results(out: &str) -> Vec<(String, String)> {
    out.lines()
        .filter_map(|l| {
            let (label, rest) = l.split_once(": ")?;
            Some((label.to_owned(), rest.trim().to_owned()))
        })
        .collect()
}

#[test]
fn the_chain_from_a_token_read_to_an_api_call_is_broken() {
    let Some(s) = setup() else { return };
    let (a, b) = (s.net.a.clone(), s.net.b.clone());
    let go = s.vol.mnt.join(unique("go"));
    let done = s.vol.mnt.join(unique("done"));
    // The agent's stderr is a file the test can read while the tree runs: the reason line goes
    // to the nearest live process of the tree (curl exits at once), so the shell waits until
    // the test has seen it.
    let err_file = s.vol.mnt.join(unique("stderr"));
    // The agent: a tool reads the token and exits; the same command line then uses it (the
    // hard case: read and call at once); later, after the scan, another command calls the
    // API; the allow-listed registry still works.
    let script = format!(
        "grep -rl ghp_ . >/dev/null\n\
         T=$(grep -o 'ghp_[A-Za-z0-9]*' notes.txt); echo -n 'chain: '; {chain}\n\
         until [ -e {go} ]; do sleep 0.05; done\n\
         echo -n 'later: '; {later}\n\
         echo -n 'registry: '; {registry}\n\
         i=0; until [ -e {done} ] || [ $i -ge 400 ]; do sleep 0.05; i=$((i+1)); done\n",
        chain = curl(API, &a, "-H \"Authorization: token $T\""),
        go = go.display(),
        later = curl(API, &a, ""),
        registry = curl(REGISTRY, &b, ""),
        done = done.display(),
    );
    let mut agent = Command::new(&s.claude);
    agent
        .current_dir(&s.proj)
        .args(["-c", &script])
        .stdout(std::process::Stdio::piped())
        .stderr(std::fs::File::create(&err_file).unwrap());
    let mut agent = Proc::spawn(agent);
    let root = agent.pid();

    // The inventory names the file, the detector and the fingerprint.
    let read = wait_for("the token's read", Duration::from_secs(15), || {
        events(&s.daemon, |e| {
            e["kind"] == "secret_read" && e["root"]["pid"] == root
        })
        .into_iter()
        .find(|e| e["object"]["path"] == s.notes.to_str().unwrap())
    });
    assert_eq!(read["secrets"][0]["detector"], "github-token", "{read}");
    std::fs::write(&go, "").unwrap();

    // Two denials by the secrets rule, the first possibly its pending form (the scan's
    // answer had not come back yet), the last the rule itself; each names the destination
    // and the tree, and the reason line names the file and the detector.
    let denials = wait_for("the two denials", Duration::from_secs(10), || {
        let evs = events(&s.daemon, |e| {
            e["kind"] == "net_connect"
                && rule_is(e, &["guard:secrets", "guard:secrets-pending"])
                && e["root"]["pid"] == root
        });
        (evs.len() >= 2).then_some(evs)
    });
    let reason = "by rule guard:secrets: this agent read a secret (github-token fp:";
    let stderr = wait_for("the reason line", Duration::from_secs(10), || {
        std::fs::read_to_string(&err_file)
            .ok()
            .filter(|t| t.contains(reason))
    });
    std::fs::write(&done, "").unwrap();
    agent.wait_timeout(Duration::from_secs(30));
    let mut stdout = String::new();
    use std::io::Read as _;
    agent
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let got = results(&stdout);
    let of = |label: &str| {
        got.iter()
            .find(|(l, _)| l == label)
            .map(|(_, r)| r.clone())
            .unwrap_or_else(|| panic!("no {label} line: {stdout}\n{stderr}"))
    };
    // curl exits 7 when connect fails (EPERM), before a byte is sent.
    assert_eq!(of("chain"), "000 rc=7", "{stdout}\n{stderr}");
    assert_eq!(of("later"), "000 rc=7", "{stdout}\n{stderr}");
    assert_eq!(of("registry"), "200 rc=0", "{stdout}\n{stderr}");
    for e in &denials {
        assert_eq!(e["result"], "denied", "{e}");
        assert_eq!(e["destination"]["address"], a.as_str(), "{e}");
        assert!(
            e["ancestry"]
                .as_array()
                .unwrap()
                .iter()
                .any(|p| p["pid"] == root),
            "{e}"
        );
    }
    assert_eq!(denials.last().unwrap()["rule"], "guard:secrets");
    assert!(
        stderr.contains(reason) && stderr.contains(s.notes.to_str().unwrap()),
        "the reason line names the file and the detector: {stderr}"
    );

    // "Which credentials did this agent touch?"
    let out = output({
        let mut c = s.daemon.guard();
        c.args(["events", "--summary", "--kind", "secret", "-o", "json"]);
        c
    });
    let summary: Value = serde_json::from_slice(&out.stdout).expect("summary JSON");
    assert!(
        summary["secrets"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["agent"] == "claude-code"
                && r["detector"] == "github-token"
                && r["file"] == s.notes.to_str().unwrap()
                && r["fingerprint"] == read["secrets"][0]["fingerprint"]),
        "{summary}"
    );

    // Another agent tree that read nothing reaches the same API (its rule only audits).
    let mut other = Command::new(&s.claude);
    other.args(["-c", &format!("echo -n 'other: '; {}", curl(API, &a, ""))]);
    let out = output(other);
    assert_eq!(
        results(&String::from_utf8_lossy(&out.stdout))[0].1,
        "200 rc=0"
    );
    // Untagged processes read and call freely.
    let mut human = Command::new("bash");
    human.current_dir(&s.proj).args([
        "-c",
        &format!(
            "cat notes.txt >/dev/null; echo -n 'human: '; {}",
            curl(API, &a, "")
        ),
    ]);
    let out = output(human);
    assert_eq!(
        results(&String::from_utf8_lossy(&out.stdout))[0].1,
        "200 rc=0"
    );
    assert!(
        events(&s.daemon, |e| e["kind"] == "secret_read"
            && e["root"]["pid"] != root)
        .is_empty(),
        "only the agent's reads are inventoried"
    );

    let log = std::fs::read_to_string(&s.daemon.event_log).unwrap();
    assert!(
        !log.contains(&s.token[4..]),
        "the event log holds the token"
    );
    assert!(
        !s.daemon.log().contains(&s.token[4..]),
        "the daemon's log holds it"
    );
    let st = s.daemon.status_json().unwrap();
    assert!(
        st["secret_taint"]
            .as_str()
            .unwrap()
            .contains("1 trees tainted now"),
        "{}",
        st["secret_taint"]
    );
}

#[test]
fn a_guard_run_tree_that_read_a_secret_is_tainted_too() {
    let Some(s) = setup() else { return };
    let a = s.net.a.clone();
    let mut run = s.daemon.guard();
    run.current_dir(&s.proj).args([
        "run",
        "--",
        "bash",
        "-c",
        &format!(
            "cat notes.txt >/dev/null; sleep 1; echo -n 'run: '; {}",
            curl(API, &a, "")
        ),
    ]);
    let out = output(run);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(results(&stdout)[0].1, "000 rc=7", "{out:?}");
    let e = wait_for("the denial", Duration::from_secs(10), || {
        events(&s.daemon, |e| {
            e["kind"] == "net_connect" && e["rule"] == "guard:secrets"
        })
        .into_iter()
        .next()
    });
    assert_eq!(e["agent"], "guard-run", "{e}");
    assert_eq!(e["result"], "denied", "{e}");
}

#[test]
fn nat_cannot_turn_an_allowed_destination_into_another_for_a_tainted_tree() {
    let Some(s) = setup() else { return };
    let st = s.daemon.status_json().unwrap();
    let after_nat = st["network"]["after_nat"].as_str().unwrap_or("").to_owned();
    if s.daemon.assert_tier() == "bpf-lsm" {
        // No root agent can add a NAT rule there (the capability ceiling refuses NET_ADMIN),
        // and status says the check after NAT is not loaded.
        assert!(after_nat.starts_with("not checked"), "{after_nat}");
        println!("NOT RUN: the check after NAT on this tier: {after_nat}");
        return;
    }
    assert!(after_nat.starts_with("enforced"), "{after_nat}");
    let (a, b) = (s.net.a.clone(), s.net.b.clone());
    let tag = format!("guard-test-{}", std::process::id());
    let _nat = guard_tests::netns::NatRule::add(&[
        "-d",
        &b,
        "-p",
        "tcp",
        "--dport",
        "443",
        "-m",
        "comment",
        "--comment",
        &tag,
        "-j",
        "DNAT",
        "--to-destination",
        &format!("{a}:443"),
    ]);
    // The agent reads the token, then calls the allow-listed registry, which a NAT rule (as a
    // root agent could add on kernels before 6.13) rewrites into the API.
    let mut via = Command::new(&s.claude);
    via.current_dir(&s.proj).args([
        "-c",
        &format!(
            "cat notes.txt >/dev/null; sleep 1; {}",
            curl(REGISTRY, &b, "-m 3")
        ),
    ]);
    let out = output(via);
    let got = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        got.starts_with("000 rc="),
        "the rewritten connection never opened: {got}"
    );
    let e = wait_for("the drop after NAT", Duration::from_secs(10), || {
        events(&s.daemon, |e| {
            e["kind"] == "net_connect" && e["rule"] == "guard:secrets" && e["hook"] == "egress4"
        })
        .into_iter()
        .next()
    });
    assert_eq!(e["destination"]["address"], a.as_str(), "{e}");
    assert_eq!(e["result"], "denied", "{e}");
    // Untagged, the same NAT'd call reaches the API.
    let mut human = Command::new("bash");
    human.args(["-c", &curl(REGISTRY, &b, "")]);
    let out = output(human);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "200 rc=0");
}
