//! Network namespaces for tests: a namespace connected to the host by a veth pair, removed
//! on drop. Traffic only ever goes to these namespaces or loopback.

use std::process::{Command, Stdio};

use crate::unique;

/// A network namespace `name` with a veth pair: `host_if` in the root namespace and `ns_if`
/// inside, carrying the given addresses.
pub struct NetNs {
    pub name: String,
    pub host_if: String,
    pub ns_if: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl NetNs {
    /// Create a namespace; `host_addrs` and `ns_addrs` are CIDR strings for each end
    /// (e.g. `10.20.0.1/24` and `10.20.0.5/24`, or IPv6 ones).
    pub fn new(host_addrs: &[&str], ns_addrs: &[&str]) -> Self {
        let name = unique("gns");
        let tag = &name[name.len().saturating_sub(8)..];
        let n = Self {
            host_if: format!("gh{tag}").chars().take(15).collect(),
            ns_if: format!("gn{tag}").chars().take(15).collect(),
            name,
        };
        ip(&["netns", "add", &n.name]);
        ip(&[
            "link", "add", &n.host_if, "type", "veth", "peer", "name", &n.ns_if,
        ]);
        ip(&["link", "set", &n.ns_if, "netns", &n.name]);
        for a in host_addrs {
            let mut args = vec!["addr", "add", a, "dev", &n.host_if];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ip(&["link", "set", &n.host_if, "up"]);
        for a in ns_addrs {
            let mut args = vec!["-n", &n.name, "addr", "add", a, "dev", &n.ns_if];
            if a.contains(':') {
                args.push("nodad");
            }
            ip(&args);
        }
        ip(&["-n", &n.name, "link", "set", &n.ns_if, "up"]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
        n
    }

    /// A namespace with loopback alone: nothing in it reaches anything outside.
    pub fn loopback_only() -> Self {
        let n = Self {
            name: unique("gns"),
            host_if: String::new(),
            ns_if: String::new(),
        };
        ip(&["netns", "add", &n.name]);
        ip(&["-n", &n.name, "link", "set", "lo", "up"]);
        n
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if !self.host_if.is_empty() {
            let _ = Command::new("ip")
                .args(["link", "del", &self.host_if])
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// A destination NAT rule in the root namespace's `nat OUTPUT` chain (for the checks after
/// NAT), removed on drop. Tests give it a comment naming them and addresses of their own
/// namespace only.
pub struct NatRule(Vec<String>);

impl NatRule {
    pub fn add(spec: &[&str]) -> Self {
        let spec: Vec<String> = spec.iter().map(|s| (*s).to_owned()).collect();
        let out = Command::new("iptables")
            .args(["-t", "nat", "-A", "OUTPUT"])
            .args(&spec)
            .stdin(Stdio::null())
            .output()
            .expect("run iptables");
        assert!(
            out.status.success(),
            "iptables: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Self(spec)
    }
}

impl Drop for NatRule {
    fn drop(&mut self) {
        let _ = Command::new("iptables")
            .args(["-t", "nat", "-D", "OUTPUT"])
            .args(&self.0)
            .output();
    }
}
