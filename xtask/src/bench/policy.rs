//! The generated 1,000-rule policy and the auditd rules that watch the same things.
//!
//! Endpoint rules cover documentation and benchmark address ranges (10.100.0.0/16 and up,
//! 198.18.0.0/15, 2001:db8::/32) with ports and protocols, and two rules on loopback that the
//! workloads never match: TCP ports 20–1023 (denied; the workloads use ephemeral ports, so a
//! tagged workload goes through the whole lookup and port match, and is allowed), and the
//! kill-latency target. Path rules protect files and directories the bench creates on the
//! same file system as the workloads' file, plus a few `**/name` patterns. The secrets rule
//! denies (a tree that read a secret, or whose first read is being scanned).

use std::{
    fmt::Write as _,
    fs,
    net::SocketAddrV4,
    path::{Path, PathBuf},
};

use anyhow::{Context as _, Result};

/// Rules in the generated policy.
pub const RULES: usize = 1000;
/// Endpoint rules among them (the kernel holds at most 256 per policy generation); the rest
/// are path rules.
pub const ENDPOINT_RULES: usize = 200;
/// The `kill` rule's destination used for kill latency (nothing listens there).
pub const KILL_TARGET: &str = "127.0.0.3:9";
/// A destination the loopback deny rule covers (nothing listens there): the decision flood.
pub const DENIED_TARGET: &str = "127.0.0.4:80";
/// Every this many path rules, one is a `**/name` pattern instead of absolute paths.
const PATTERN_EVERY: usize = 80;

pub struct Generated {
    pub policy: PathBuf,
    pub audit_rules: PathBuf,
    pub endpoint_rules: usize,
    pub path_rules: usize,
    pub audit_watches: usize,
}

/// Write the policy (and the protected files it names) and the equivalent auditd rules
/// under `dir`.
pub fn generate(dir: &Path) -> Result<Generated> {
    let protected = dir.join("protected");
    let kill: SocketAddrV4 = KILL_TARGET.parse().expect("valid constant");
    let mut y = String::from(
        "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata:\n  name: bench-1000-rules\n\
         spec:\n  mode: enforce\n  agents:\n\
         \x20   - { name: claude-code, executables: [claude], scripts: [claude, claude-code] }\n\
         \x20   - { name: codex, executables: [codex], scripts: [codex] }\n\
         \x20   - { name: aider, executables: [aider], scripts: [aider] }\n\
         \x20   - { name: cursor, env: [CURSOR_AGENT=1, CURSOR_EXTENSION_HOST_ROLE=agent-exec] }\n\
         \x20   - { name: copilot, env: [COPILOT_AGENT=1, AI_AGENT=github_copilot_vscode_agent] }\n\
         \x20   - { name: markers, env: [CLAUDECODE=1, GEMINI_CLI=1, AI_AGENT=*, AGENT=*] }\n\
         \x20 endpoints:\n",
    );
    let _ = writeln!(
        y,
        "    - {{ name: bench-kill-target, ips: [{}], ports: [{}], protocol: tcp, action: kill }}",
        kill.ip(),
        kill.port()
    );
    y.push_str(
        "    - { name: bench-loopback-privileged, cidrs: [127.0.0.0/8], ports: [\"20-1023\"], \
         protocol: tcp, action: deny }\n",
    );
    for i in 0..ENDPOINT_RULES - 2 {
        let ports = match i % 4 {
            0 => "[5432]",
            1 => "[\"8000-8100\"]",
            2 => "[443, 6443]",
            _ => "[]",
        };
        let protocol = ["tcp", "udp", "any"][i % 3];
        let action = ["deny", "audit", "kill", "deny"][i % 4];
        let mode = if i % 5 == 4 { ", mode: audit" } else { "" };
        let _ = writeln!(
            y,
            "    - {{ name: ep-{i:03}, cidrs: [10.{}.{}.0/24, \"2001:db8:{i:x}::/48\"], \
             ips: [198.18.{}.{}], ports: {ports}, protocol: {protocol}, action: {action}{mode} }}",
            100 + i / 256,
            i % 256,
            i / 250,
            i % 250 + 1,
        );
    }
    y.push_str("  paths:\n");
    let mut audit = String::from(
        "# auditd rules equivalent to the bench's 1,000-rule guard policy.\n-D\n-b 8192\n-f 1\n\
         -a always,exit -F arch=b64 -S connect,sendto,sendmsg -k guard-bench-net\n\
         -a always,exit -F arch=b64 -S execve,execveat -k guard-bench-exec\n",
    );
    let mut watches = 0;
    let path_rules = RULES - ENDPOINT_RULES;
    for r in 0..path_rules {
        let (access, perms) = match r % 3 {
            0 => ("[read]", "r"),
            1 => ("[write, delete]", "wa"),
            _ => ("[delete]", "wa"),
        };
        let action = ["deny", "audit", "kill-tree"][r % 3];
        if r % PATTERN_EVERY == PATTERN_EVERY - 1 {
            // No auditd equivalent: a watch needs a path.
            let _ = writeln!(
                y,
                "    - {{ name: path-{r:03}, paths: [\"**/.env.bench-{r}\"], access: {access}, \
                 action: {action} }}"
            );
            continue;
        }
        let root = protected.join(format!("r{r:03}"));
        let data = root.join("data");
        let secret = root.join("secret.txt");
        fs::create_dir_all(&data).with_context(|| format!("creating {}", data.display()))?;
        fs::write(&secret, "bench secret\n")?;
        let _ = writeln!(
            y,
            "    - {{ name: path-{r:03}, paths: [{}, {}], access: {access}, action: {action} }}",
            data.display(),
            secret.display()
        );
        for p in [&data, &secret] {
            let _ = writeln!(audit, "-w {} -p {perms} -k guard-bench-file", p.display());
            watches += 1;
        }
    }
    // The secrets rule denies, so a tree is held while a first read's scan is pending.
    y.push_str("  secrets: { taint: deny }\n");
    let policy = dir.join("policy-1000.yaml");
    fs::write(&policy, y)?;
    let audit_rules = dir.join("audit-1000.rules");
    fs::write(&audit_rules, audit)?;
    Ok(Generated {
        policy,
        audit_rules,
        endpoint_rules: ENDPOINT_RULES,
        path_rules,
        audit_watches: watches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_a_thousand_rules() {
        let dir = std::env::temp_dir().join(format!("guard-bench-policy-{}", std::process::id()));
        let g = generate(&dir).unwrap();
        let yaml = fs::read_to_string(&g.policy).unwrap();
        let rules = yaml
            .lines()
            .filter(|l| {
                l.trim_start().starts_with("- { name: ")
                    && !l.contains("executables")
                    && !l.contains("env:")
            })
            .count();
        assert_eq!(rules, RULES);
        assert_eq!(g.endpoint_rules + g.path_rules, RULES);
        let audit = fs::read_to_string(&g.audit_rules).unwrap();
        assert_eq!(
            audit.lines().filter(|l| l.starts_with("-w ")).count(),
            g.audit_watches
        );
        fs::remove_dir_all(&dir).unwrap();
    }
}
