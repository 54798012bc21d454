//! Secrets in what agents run: guard records a credential by its detector and a keyed
//! fingerprint, never the credential itself — in the event log, in `guard ps`, in the
//! daemon's own log. The token is made at run time in a real platform's format.

use std::{os::unix::fs::PermissionsExt, process::Command, time::Duration};

use guard_tests::{Daemon, Proc, output, unique, wait_for};

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

/// A shell that holds `token` in its own command line and in a child's (`curl -H`), and
/// stays a few seconds so `guard ps` sees it (`; true`: bash would exec a last command in
/// its own place, and the command line with it).
fn script(token: &str) -> String {
    format!(
        "T={token}; curl -s -m 2 -H \"Authorization: token $T\" http://127.0.0.1:9/ >/dev/null; \
         sleep 4; true"
    )
}

#[test]
fn a_token_on_a_command_line_is_recorded_by_fingerprint_only() {
    let daemon = Daemon::start_with_policy(POLICY);
    let dir = tempfile::tempdir().unwrap();
    let claude = dir.path().join("claude");
    std::fs::copy("/bin/bash", &claude).unwrap();

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
            c.args(["run", "--", "bash", "-c", &script(&token)]);
            c
        } else {
            let mut c = Command::new(&claude);
            c.args(["-c", &script(&token)]);
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
