//! Secrets in what agents read and run: guard records a credential by its detector and a
//! keyed fingerprint, never the credential itself — in the event log, in `guard ps`, in the
//! daemon's own log — and keeps an inventory of the secrets each agent tree read. Tokens are
//! made at run time in real platforms' formats.

#[allow(dead_code, reason = "shared with the file tests; this uses the volume")]
#[path = "files/harness.rs"]
mod harness;

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use guard_tests::{Daemon, Proc, output, unique, wait_for};
use serde_json::Value;

const POLICY: &str = "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\n\
    metadata: { name: secrets }\nspec:\n  agents:\n    - { name: claude-code, executables: [claude] }\n";

/// A GitHub token's shape (`ghp_` and 36 letters and digits), different in every run.
fn fake_token() -> String {
    let seed = blake_like(&unique("token"));
    format!("ghp_{seed}")
}

/// 36 letters and digits derived from `s` (no crate needed for a test value).
fn blake_like(s: &str) -> String {
    const A: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    (0..36)
        .map(|i| {
            for b in s.bytes().chain([i as u8]) {
                h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
            }
            A[(h % A.len() as u64) as usize] as char
        })
        .collect()
}

/// A shell that holds `token` in its own command line and in a child's (`curl -H`, to a
/// loopback listener that never answers, so curl lives its 2 s and its command line is read),
/// and stays a few seconds so `guard ps` sees it (`; true`: bash would exec a last command in
/// its own place, and the command line with it).
fn script(token: &str, port: u16) -> String {
    format!(
        "T={token}; curl -s -m 2 -H \"Authorization: token $T\" http://127.0.0.1:{port}/ \
         >/dev/null; sleep 2; true"
    )
}

#[test]
fn a_token_on_a_command_line_is_recorded_by_fingerprint_only() {
    let daemon = Daemon::start_with_policy(POLICY);
    // Accepts into its backlog, never answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = silent.local_addr().unwrap().port();
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();

    // Files agents read: scanned on the bpf-lsm tier; on the fallback tier only when asked
    // for (its read hooks tax every read on the host), and status says how to turn it on.
    let st = daemon.status_json().expect("status");
    let reads = st["secret_reads"].as_str().unwrap_or_default();
    if st["tier"] == "bpf-lsm" {
        assert_eq!(reads, "lsm/file_open");
    } else {
        assert!(
            reads.starts_with("off") && reads.contains("--fallback-read-scan"),
            "{reads}"
        );
    }

    let key = daemon.event_log.parent().unwrap().join("fingerprint.key");
    let mode = std::fs::metadata(&key)
        .expect("the daemon made its key")
        .permissions()
        .mode();
    assert_eq!(
        mode & 0o777,
        0o600,
        "the fingerprint key is the owner's only"
    );

    for side in ["recognised agent", "guard run"] {
        let token = fake_token();
        let mut cmd = if side == "guard run" {
            let mut c = daemon.guard();
            c.args(["run", "--", "bash", "-c", &script(&token, port)]);
            c
        } else {
            let mut c = Command::new(&claude);
            c.args(["-c", &script(&token, port)]);
            c
        };
        cmd.stdout(std::process::Stdio::null());
        let mut tree = Proc::spawn(cmd);
        // `guard ps` shows the shell's command line with the token replaced.
        let shown = wait_for(
            &format!("{side}: guard ps"),
            Duration::from_secs(10),
            || {
                let ps = serde_json::to_string(&daemon.ps()).unwrap();
                ps.contains("[secret:github-token:fp:").then_some(ps)
            },
        );
        assert!(
            !shown.contains(&token[4..]),
            "{side}: guard ps shows the token: {shown}"
        );
        tree.wait_timeout(Duration::from_secs(20));

        // curl's command line in the log (its `-H` argument carries the token itself) has
        // the marker; no line has the token.
        let lines = wait_for(
            &format!("{side}: exec lines"),
            Duration::from_secs(10),
            || {
                let text = std::fs::read_to_string(&daemon.event_log).unwrap_or_default();
                let marked: Vec<String> = text
                    .lines()
                    .filter(|l| l.contains("Authorization: token [secret:github-token:fp:"))
                    .map(str::to_owned)
                    .collect();
                (!marked.is_empty()).then_some(text)
            },
        );
        assert!(
            !lines.contains(&token[4..]),
            "{side}: the event log holds the token"
        );
        assert!(
            !daemon.log().contains(&token[4..]),
            "{side}: the daemon's own log holds the token"
        );

        // The same fingerprint names the token in a file scanned with the daemon's key.
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, format!("github: {token}\n")).unwrap();
        let scan = output({
            let mut c = daemon.guard();
            c.args(["secrets", "scan", "-o", "json"]).arg(&file);
            c
        });
        assert!(
            scan.status.success(),
            "{}",
            String::from_utf8_lossy(&scan.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&scan.stdout).unwrap();
        let fp = report["findings"][0]["fingerprint"]
            .as_str()
            .expect("one finding");
        assert!(
            lines.contains(&format!("[secret:github-token:{fp}]")),
            "{side}: the log's marker carries the scan's fingerprint {fp}"
        );
        assert!(!String::from_utf8_lossy(&scan.stdout).contains(&token[4..]));
    }
}

/// `secret_read` lines of the log.
fn secret_reads(d: &Daemon) -> Vec<Value> {
    d.events()
        .into_iter()
        .filter(|e| e["kind"] == "secret_read")
        .collect()
}

/// The fingerprints `guard secrets scan` (the daemon's key) gives the secrets of `file`.
fn scanned(d: &Daemon, file: &std::path::Path) -> Vec<String> {
    let out = output({
        let mut c = d.guard();
        c.args(["secrets", "scan", "-o", "json"]).arg(file);
        c
    });
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["fingerprint"].as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn the_secrets_an_agent_reads_are_inventoried_and_nothing_else_is() {
    let d = Daemon::start_with_args(Some(POLICY), &["--fallback-read-scan"]);
    let st = d.status_json().expect("status");
    let reads = st["secret_reads"].as_str().unwrap_or_default().to_owned();
    if reads.starts_with("not covered") {
        // Only where the kernel lacks every hook (6.1 without BPF LSM has no page-cache read
        // tracepoints); status says so.
        assert_eq!(st["tier"], "fallback", "{reads}");
        println!("NOT RUN: files agents read on this kernel: {reads}");
        return;
    }
    // A project on a real filesystem (tmpfs reads bypass the fallback tier's tracepoints).
    let vol = harness::Volume::new();
    let proj = vol.mnt.join("proj");
    std::fs::create_dir_all(proj.join("config")).unwrap();
    let token = fake_token();
    let password = format!("Pw{}", &blake_like("pw")[..14]);
    let notes = proj.join("notes.txt");
    std::fs::write(&notes, format!("todo\nthe CI token\ngithub {token}\n")).unwrap();
    let env = proj.join("config/prod.env");
    std::fs::write(
        &env,
        format!("DATABASE_URL=postgres://app:{password}@db.prod.internal:5432/app\n"),
    )
    .unwrap();
    std::fs::write(proj.join("README.md"), "nothing to see here\n").unwrap();
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();

    // A recognised agent greps the whole project (one command reads every file).
    let mut agent = Command::new(&claude);
    agent.current_dir(&proj).args([
        "-c",
        "cat README.md >/dev/null; grep -r -l token . >/dev/null; true",
    ]);
    assert!(output(agent).status.success());
    let in_proj = |e: &Value| {
        e["object"]["path"]
            .as_str()
            .is_some_and(|p| p.starts_with(proj.to_str().unwrap()))
    };
    let found = wait_for("the agent's secret reads", Duration::from_secs(10), || {
        let evs: Vec<Value> = secret_reads(&d).into_iter().filter(in_proj).collect();
        (evs.len() >= 2).then_some(evs)
    });
    let of = |path: &std::path::Path| {
        found
            .iter()
            .find(|e| e["object"]["path"] == path.to_str().unwrap())
            .unwrap_or_else(|| panic!("no secret_read of {}: {found:?}", path.display()))
            .clone()
    };
    let n = of(&notes);
    assert_eq!(n["agent"], "claude-code", "{n}");
    assert_eq!(n["rule"], "guard:secrets", "{n}");
    assert_eq!(n["secrets"][0]["detector"], "github-token", "{n}");
    assert_eq!(n["secrets"][0]["line"], 3, "{n}");
    assert_eq!(
        n["secrets"][0]["fingerprint"].as_str().unwrap(),
        scanned(&d, &notes)[0],
        "the inventory's fingerprint is the scan's"
    );
    let root = n["root"]["pid"].clone();
    assert!(
        n["ancestry"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["pid"] == root),
        "the agent root is among the reader's ancestors: {n}"
    );
    let e = of(&env);
    assert_eq!(
        e["secrets"][0]["detector"], "connection-string-password",
        "{e}"
    );
    assert_eq!(found.len(), 2, "README.md holds no secret: {found:?}");

    // A `guard run` tree reading the same file is another entry of the inventory.
    let mut run = d.guard();
    run.args(["run", "--", "cat"]).arg(&notes);
    assert!(output(run).status.success());
    let project_reads = || -> Vec<Value> { secret_reads(&d).into_iter().filter(in_proj).collect() };
    wait_for("the guard run tree's read", Duration::from_secs(10), || {
        let evs = project_reads();
        (evs.len() == 3 && evs[2]["agent"] == "guard-run").then_some(())
    });

    // A new token of the same length is another version of the file: scanned again.
    let token2 = fake_token();
    std::fs::write(&notes, format!("todo\nthe CI token\ngithub {token2}\n")).unwrap();
    let mut again = Command::new(&claude);
    again.args(["-c", &format!("cat {} >/dev/null; true", notes.display())]);
    assert!(output(again).status.success());
    let evs = wait_for("the new version's read", Duration::from_secs(10), || {
        let evs = project_reads();
        (evs.len() == 4).then_some(evs)
    });
    assert_eq!(
        evs[3]["secrets"][0]["fingerprint"].as_str().unwrap(),
        scanned(&d, &notes)[0]
    );
    assert_ne!(
        evs[3]["secrets"][0]["fingerprint"],
        n["secrets"][0]["fingerprint"]
    );

    // Untagged readers are not reported, and nothing logged holds a secret.
    let mut human = Command::new("bash");
    human
        .current_dir(&proj)
        .args(["-c", "cat notes.txt config/prod.env; grep -r token ."]);
    assert!(output(human).status.success());
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(
        project_reads().len(),
        4,
        "an untagged read is not inventoried"
    );
    let log = std::fs::read_to_string(&d.event_log).unwrap();
    for s in [&token[4..], &token2[4..], password.as_str()] {
        assert!(!log.contains(s), "the event log holds a secret");
        assert!(!d.log().contains(s), "the daemon's log holds a secret");
    }
}
