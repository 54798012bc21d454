//! What the host scan found (`crate::deputies`), as endpoint targets: each built-in executor
//! rule gets the sockets and listeners of its kind, and each forwarder to a protected endpoint
//! becomes a rule of its own, with the action and mode of the endpoint's rule, covering the
//! addresses and port it listens on.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
};

use guard_common::net::PORT_RANGES_MAX;

use crate::{
    deputies::{self, Forwarder, Found},
    policy::{CompiledEndpointRule, Discover, FIRST_BUILTIN_ID, Protocol, canonical_addr},
};

/// First id of the rules made for forwarders.
pub const FIRST_TUNNEL_ID: u32 = 0xfffd_0000;

/// The policy's own endpoint rules with their resolved addresses: what counts as protected.
#[derive(Clone, Debug, Default)]
pub struct Protected {
    rules: Vec<(CompiledEndpointRule, BTreeSet<IpAddr>)>,
}

impl Protected {
    pub fn new(rules: &[CompiledEndpointRule], resolved: &BTreeMap<u32, BTreeSet<IpAddr>>) -> Self {
        Self {
            rules: rules
                .iter()
                .filter(|r| r.id < FIRST_BUILTIN_ID && r.protocol != Protocol::Udp)
                .map(|r| {
                    let addrs = resolved.get(&r.id).cloned().unwrap_or_default();
                    (r.clone(), addrs)
                })
                .collect(),
        }
    }

    /// The strongest rule a TCP connection to `host:port` meets; `host` is an address or a
    /// name one of the rules lists.
    pub fn rule_for(&self, host: &str, port: u16) -> Option<&CompiledEndpointRule> {
        let addr: Option<IpAddr> = host.parse().ok().map(canonical_addr);
        self.rules
            .iter()
            .filter(|(r, addrs)| {
                let port_ok =
                    r.ports.is_empty() || r.ports.iter().any(|&(a, b)| (a..=b).contains(&port));
                let target_ok = match addr {
                    Some(a) => {
                        r.networks.iter().any(|n| n.contains(&a))
                            || addrs.iter().any(|x| canonical_addr(*x) == a)
                    }
                    None => r.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)),
                };
                port_ok && target_ok
            })
            .map(|(r, _)| r)
            .max_by_key(|r| (r.mode == crate::policy::Mode::Enforce, strength(r.action)))
    }
}

/// What a host scan asks: the protected endpoints and the tag map.
pub struct ScanContext {
    pub protected: Protected,
    pub tags: std::sync::Arc<aya::maps::HashMap<aya::maps::MapData, u32, guard_common::Tag>>,
}

impl deputies::Context for ScanContext {
    fn tagged(&self, pid: u32) -> bool {
        self.tags.get(&pid, 0).is_ok()
    }
    fn protected(&self, addr: SocketAddr) -> bool {
        self.protected
            .rule_for(&addr.ip().to_string(), addr.port())
            .is_some()
    }
}

fn strength(a: crate::policy::Action) -> u8 {
    use crate::policy::Action;
    match a {
        Action::Audit => 0,
        Action::Deny => 1,
        Action::Kill => 2,
        Action::KillTree => 3,
    }
}

/// The rules to install: `base` with what was found added to the executor rules, then one
/// rule per protected rule that forwarders lead to. Also returns the forwarders of each added
/// rule.
pub fn rules(
    base: &[CompiledEndpointRule],
    found: &Found,
    protected: &Protected,
) -> (Vec<CompiledEndpointRule>, BTreeMap<u32, Vec<Forwarder>>) {
    let mut out = Vec::with_capacity(base.len());
    for r in base {
        let mut r = r.clone();
        match r.discover {
            Some(Discover::Terminals) => {
                r.unix
                    .extend(found.terminals.iter().map(|s| s.socket.clone()));
            }
            Some(Discover::SystemdUsers) => r.unix.extend(found.systemd_users.iter().cloned()),
            Some(Discover::Dbus) => r.unix.extend(found.dbus.iter().map(|s| s.socket.clone())),
            Some(Discover::Desktop) => {
                r.unix
                    .extend(found.desktop.iter().map(|s| s.socket.clone()));
            }
            Some(Discover::Ide) => r.unix.extend(found.ide.iter().map(|s| s.socket.clone())),
            Some(kind @ (Discover::Sshd | Discover::Notebooks)) => {
                let servers = if kind == Discover::Sshd {
                    &found.sshd
                } else {
                    &found.notebooks
                };
                let listeners: Vec<SocketAddr> = servers
                    .iter()
                    .filter_map(|s| s.socket.parse().ok())
                    .collect();
                out.extend(listener_rules(&r, &listeners, &found.local_addrs));
                continue;
            }
            None => {}
        }
        r.unix.sort();
        r.unix.dedup();
        out.push(r);
    }
    // One rule per protected rule, covering every forwarder that leads to it (a forking
    // forwarder's children share its listener).
    let mut by_rule: BTreeMap<u32, (&CompiledEndpointRule, Vec<&Forwarder>)> = BTreeMap::new();
    for f in &found.forwarders {
        if let Some(rule) = protected.rule_for(&f.to_host, f.to_port) {
            by_rule
                .entry(rule.id)
                .or_insert((rule, Vec::new()))
                .1
                .push(f);
        }
    }
    let mut tunnels = BTreeMap::new();
    for ((rule, forwarders), id) in by_rule.into_values().zip(FIRST_TUNNEL_ID..) {
        let mut derived = rule.clone();
        derived.id = id;
        derived.protocol = Protocol::Tcp;
        derived.hosts.clear();
        derived.unix.clear();
        let listeners: Vec<SocketAddr> = forwarders
            .iter()
            .flat_map(|f| f.listen.iter().copied())
            .collect();
        out.extend(listener_rules(&derived, &listeners, &found.local_addrs));
        tunnels.insert(id, forwarders.into_iter().cloned().collect());
    }
    (out, tunnels)
}

/// `template` covering the listeners (addresses as reached, their ports), split so that each
/// rule has at most the kernel's number of port ranges. No listener: no rule.
fn listener_rules(
    template: &CompiledEndpointRule,
    listeners: &[SocketAddr],
    local: &BTreeSet<IpAddr>,
) -> Vec<CompiledEndpointRule> {
    let mut ports: Vec<u16> = listeners.iter().map(SocketAddr::port).collect();
    ports.sort_unstable();
    ports.dedup();
    let mut networks: Vec<ipnet::IpNet> = listeners
        .iter()
        .flat_map(|l| deputies::reached_at(*l, local))
        .collect();
    networks.sort();
    networks.dedup();
    ports
        .chunks(PORT_RANGES_MAX)
        .map(|chunk| {
            let mut r = template.clone();
            r.ports = chunk.iter().map(|&p| (p, p)).collect();
            r.networks = networks.clone();
            r
        })
        .collect()
}

/// What a decision of `rule` about `dest` (an address and port, or a unix name) met: the
/// server or forwarder, in words, for the event.
pub fn describe(
    rule_id: u32,
    rule_name: &str,
    dest: (Option<IpAddr>, u16, Option<&str>),
    found: &Found,
    tunnels: &BTreeMap<u32, Vec<Forwarder>>,
) -> Option<String> {
    let (addr, port, unix) = dest;
    if let Some(list) = tunnels.get(&rule_id) {
        let f = list
            .iter()
            .find(|f| f.listen.iter().any(|l| l.port() == port))
            .or(list.first())?;
        return Some(format!(
            "forwarder {} (pid {}) to {}:{}, found by its {}",
            f.comm, f.pid, f.to_host, f.to_port, f.evidence
        ));
    }
    let servers = match rule_name {
        "guard:executors/terminals" => &found.terminals,
        "guard:executors/dbus" => &found.dbus,
        "guard:executors/desktop" => &found.desktop,
        "guard:executors/ide" => &found.ide,
        "guard:executors/sshd" | "guard:executors/notebooks" => {
            let list = if rule_name.ends_with("sshd") {
                &found.sshd
            } else {
                &found.notebooks
            };
            let s = list.iter().find(|s| {
                s.socket
                    .parse::<SocketAddr>()
                    .is_ok_and(|l| l.port() == port && addr.is_some())
            })?;
            return Some(format!(
                "{} (pid {}) listening on {}",
                s.comm, s.pid, s.socket
            ));
        }
        _ => return None,
    };
    let s = servers.iter().find(|s| Some(s.socket.as_str()) == unix)?;
    Some(if s.pid == 0 {
        s.comm.clone()
    } else {
        format!("{} (pid {})", s.comm, s.pid)
    })
}

/// `guard status`: the built-in rules against deputies, what the host has of each kind, and
/// what no rule here covers.
#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct DeputiesStatus {
    pub rules: Vec<BuiltinRuleStatus>,
    /// Servers and sockets found now, by kind (`terminals`, `systemd`, `dbus`, `sshd`).
    pub found: BTreeMap<String, Vec<String>>,
    /// Forwarders to a protected endpoint, denied as that endpoint.
    pub forwarders: Vec<String>,
    /// How the host is looked at, and the window that leaves.
    pub discovery: String,
    /// What an agent can still get an untagged process to do, by name.
    pub not_covered: Vec<String>,
}

#[derive(Clone, Debug, Default, serde::Serialize, serde::Deserialize)]
pub struct BuiltinRuleStatus {
    pub name: String,
    /// `deny enforce`, …, or `off`.
    pub state: String,
    /// The spec field that set it, or `default`.
    pub set_by: String,
    pub covers: String,
    /// How this tier enforces it (path rules: see their own status).
    pub mechanism: String,
}

/// The status of the built-in rules in `entries` and of what the last scan found.
pub fn status(
    entries: &[crate::policy::BuiltinEntry],
    found: &Found,
    tunnels: &[(String, Forwarder)],
    attached: &super::Attached,
    hooks: KernelHooks,
    ceiling: &[String],
) -> DeputiesStatus {
    let unix = if attached.lsm {
        "unix_stream_connect/unix_may_send on the socket file (bpf-lsm): enforced"
    } else if attached.unix_missing.is_some() {
        "not-loaded: this kernel has no unix socket hooks without BPF LSM"
    } else {
        "cgroup connect_unix/sendmsg_unix on the socket's path: enforced for the paths found \
         and the paths they resolve to"
    };
    let tcp = if attached.lsm {
        "socket_connect (bpf-lsm): enforced"
    } else {
        "cgroup connect4/connect6: enforced"
    };
    let mut rules = kernel_rules(hooks, ceiling);
    rules.extend(entries.iter().map(|e| {
        BuiltinRuleStatus {
            name: e.name.clone(),
            state: e
                .action
                .map_or_else(|| "off".to_owned(), |a| format!("{a} {}", e.mode)),
            set_by: e.set_by.clone(),
            covers: e.covers.to_owned(),
            mechanism: match e.name.as_str() {
                "guard:executors/sshd" | "guard:executors/notebooks" => tcp.to_owned(),
                n if n.starts_with("guard:executors/") && !n.ends_with("/scheduler") => {
                    unix.to_owned()
                }
                _ => "path rule (see path rules)".to_owned(),
            },
        }
    }));
    let servers = |list: &[crate::deputies::Server]| -> Vec<String> {
        list.iter()
            .map(|s| {
                if s.pid == 0 {
                    format!("{} {}", s.comm, s.socket)
                } else {
                    format!("{} (pid {}) {}", s.comm, s.pid, s.socket)
                }
            })
            .collect()
    };
    let mut found_by_kind = BTreeMap::new();
    found_by_kind.insert("terminals".to_owned(), servers(&found.terminals));
    found_by_kind.insert("systemd".to_owned(), found.systemd_users.clone());
    found_by_kind.insert("dbus".to_owned(), servers(&found.dbus));
    found_by_kind.insert("sshd".to_owned(), servers(&found.sshd));
    found_by_kind.insert("desktop".to_owned(), servers(&found.desktop));
    found_by_kind.insert("ide".to_owned(), servers(&found.ide));
    found_by_kind.insert("notebooks".to_owned(), servers(&found.notebooks));
    DeputiesStatus {
        rules,
        found: found_by_kind,
        forwarders: tunnels
            .iter()
            .map(|(rule, f)| {
                let listen: Vec<String> = f.listen.iter().map(ToString::to_string).collect();
                format!(
                    "{} (pid {}) on {} to {}:{} (rule {rule}, found by its {})",
                    f.comm,
                    f.pid,
                    listen.join(", "),
                    f.to_host,
                    f.to_port,
                    f.evidence
                )
            })
            .collect(),
        discovery: format!(
            "the host is looked at every {} s: a server or forwarder started since is not \
             covered until then",
            crate::deputies::RESCAN.as_secs()
        ),
        not_covered: not_covered(hooks),
    }
}

/// Which of the kernel hooks against process access, terminal input and capabilities run.
#[derive(Clone, Copy, Debug, Default)]
pub struct KernelHooks {
    /// bpf-lsm `ptrace_access_check` (process access).
    pub ptrace: bool,
    /// bpf-lsm `file_ioctl` (TIOCSTI, TIOCLINUX).
    pub ioctl: bool,
    /// bpf-lsm `capable` (the ceiling refused).
    pub capable: bool,
    /// fallback `tp_btf/cap_capable` (the ceiling's operations kill-on-detect).
    pub cap_capable: bool,
    /// bpf-lsm `bprm_check_security` and `file_open` (deferred execution: scripts, readers).
    pub bprm_check: bool,
    /// fallback ctime tracepoints (deferred execution: the writes of tagged processes).
    pub ctime: bool,
    /// fallback `cgroup_skb/egress` (destinations NAT rewrote are checked again).
    pub egress: bool,
}

/// The built-in rules decided in the kernel for every tagged process, with how this tier
/// decides them; `ceiling` names the capabilities (`selfProtection.dropCapabilities`).
fn kernel_rules(hooks: KernelHooks, ceiling: &[String]) -> Vec<BuiltinRuleStatus> {
    let caps = if ceiling.is_empty() {
        "none (selfProtection.dropCapabilities is empty)".to_owned()
    } else {
        ceiling.join(", ")
    };
    let rule = |name: &str, state: &str, covers: &str, mechanism: String| BuiltinRuleStatus {
        name: name.to_owned(),
        state: state.to_owned(),
        set_by: "built in".to_owned(),
        covers: covers.to_owned(),
        mechanism,
    };
    vec![
        rule(
            "guard:deferred-execution",
            "tag enforce",
            "a file an agent wrote, run later by anyone: directly, through #!, or as an \
             interpreter's code; git reading an agent-written .git/config",
            deferred_mechanism(hooks),
        ),
        rule(
            crate::events::deputy::RULE_PROCESS_ACCESS,
            "deny enforce",
            "ptrace, /proc/PID/mem, environ, maps and fd, process_vm_*, pidfd_getfd on a \
             process outside the agent's tree",
            if hooks.ptrace {
                "enforced: lsm/ptrace_access_check (checks ps and top make without auditing \
                 are left alone)"
                    .to_owned()
            } else {
                "not-covered for agents recognised at exec (no hook short of sys_enter); guard \
                 run trees lose CAP_SYS_PTRACE, so processes with more capabilities are out of \
                 their reach, same-user ones are not"
                    .to_owned()
            },
        ),
        rule(
            crate::events::deputy::RULE_TERMINAL_INPUT,
            "deny enforce",
            "TIOCSTI and TIOCLINUX keystrokes into any terminal",
            if hooks.ioctl {
                "enforced: lsm/file_ioctl and lsm/file_ioctl_compat".to_owned()
            } else {
                "not-covered for agents recognised at exec; guard run trees: refused by seccomp. \
                 dev.tty.legacy_tiocsti=0 takes TIOCSTI from every process without \
                 CAP_SYS_ADMIN"
                    .to_owned()
            },
        ),
        rule(
            crate::events::deputy::RULE_CAPABILITIES,
            if ceiling.is_empty() {
                "off"
            } else {
                "deny enforce"
            },
            &format!("{caps} in the initial user namespace (a sandbox's own namespace keeps them)"),
            if hooks.capable {
                "enforced: lsm/capable refuses them".to_owned()
            } else if hooks.cap_capable {
                "kill-on-detect: tp_btf/cap_capable kills a tagged process granted one in its \
                 own operation (mount, setns, unshare, netlink and iptables changes, module \
                 loads, ptrace, perf_event_open, bpf); the operation happens"
                    .to_owned()
            } else {
                "not-covered for agents recognised at exec (no cap_capable tracepoint before \
                 Linux 6.13); guard run trees drop them"
                    .to_owned()
            },
        ),
    ]
}

/// How this tier makes the runner of an agent-written file a root of that agent.
fn deferred_mechanism(hooks: KernelHooks) -> String {
    if hooks.bprm_check {
        "enforced: writes recorded at lsm/file_open (device, inode, generation); \
         lsm/bprm_check_security sees every file an exec runs (binaries and #! scripts), \
         lsm/file_open an untagged interpreter opening agent-written code (executable, or named \
         .sh, .py, .js, …) and git opening an agent-written .git/config"
            .to_owned()
    } else if hooks.ctime {
        "partly: writes recorded by the ctime tracepoints; an exec whose image an agent wrote \
         (a binary it built or copied) starts a root of that agent. Not covered without BPF \
         LSM: #! scripts (the exec has let go of the script's file by the time the exec \
         tracker runs) and scripts given to an interpreter"
            .to_owned()
    } else {
        "not-covered: this kernel has neither BPF LSM nor the ctime tracepoints (Linux >= \
         6.13) that see a tagged process's writes"
            .to_owned()
    }
}

/// Deputy channels no rule here stops for agents recognised at exec, on this tier.
fn not_covered(hooks: KernelHooks) -> Vec<String> {
    let mut out = Vec::new();
    if !hooks.ptrace {
        out.push(
            "ptrace, /proc/PID/mem and /proc/PID/environ, process_vm_readv/writev and \
             pidfd_getfd on untagged processes (guard:process-access needs BPF LSM)"
                .to_owned(),
        );
    }
    if !hooks.ioctl {
        out.push(
            "TIOCSTI and TIOCLINUX keystrokes into a terminal (guard:terminal-input needs BPF \
             LSM; guard run trees: seccomp)"
                .to_owned(),
        );
    }
    if !hooks.capable {
        out.push(if hooks.egress {
            "a NAT or routing change by a root agent recognised at exec takes effect before \
             the agent is killed (kill-on-detect); destinations NAT rewrites are checked again \
             at egress, so the rule cannot lead a tagged process to a denied endpoint"
                .to_owned()
        } else {
            "a NAT or routing change by a root agent recognised at exec takes effect before \
             the agent is killed, and a destination it rewrites is not checked again"
                .to_owned()
        });
    }
    if !hooks.bprm_check {
        out.push(
            "an agent-written script an untagged process runs later (a git hook, a generated \
             script, a script given to an interpreter) or a repository's .git/config git \
             reads: guard:deferred-execution needs BPF LSM for them"
                .to_owned(),
        );
    }
    out.extend(
        [
            "tunnels that do not say where they lead: kubectl port-forward, ssh -D (SOCKS) and \
             forwarders configured in a file (ssh_config LocalForward) until a connection \
             through them to a protected endpoint is seen",
            "servers and listeners in other network namespaces (containers): the host's \
             loopback is looked at",
            "the ssh-agent socket: an agent can sign with the human's keys (it is how agents \
             push over ssh); deny it with an endpoint rule on SSH_AUTH_SOCK's path",
            "an editor's workspace tasks (.vscode/tasks.json with runOn: folderOpen) the \
             editor runs when the folder is opened again",
        ]
        .map(str::to_owned),
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deputies::Server;
    use crate::policy::Policy;

    fn compiled(endpoints: &str) -> Vec<CompiledEndpointRule> {
        let src = format!(
            "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: t }}\nspec:\n  endpoints:\n{endpoints}"
        );
        Policy::from_yaml(&src, "t.yaml")
            .unwrap()
            .compile()
            .endpoints
    }

    #[test]
    fn servers_and_forwarders_become_targets() {
        let base = compiled(
            "    - { name: db, cidrs: [10.20.0.0/16], ports: [5432], action: kill }\n\
             \x20   - { name: api, hosts: [api.internal], action: deny }\n",
        );
        let mut resolved = BTreeMap::new();
        resolved.insert(1, ["10.30.0.9".parse().unwrap()].into_iter().collect());
        let protected = Protected::new(&base, &resolved);
        assert_eq!(protected.rule_for("10.20.1.1", 5432).unwrap().name, "db");
        assert!(protected.rule_for("10.20.1.1", 22).is_none());
        assert_eq!(protected.rule_for("API.internal", 80).unwrap().name, "api");
        assert_eq!(protected.rule_for("10.30.0.9", 80).unwrap().name, "api");
        let found = Found {
            terminals: vec![Server {
                pid: 7,
                comm: "tmux: server".into(),
                socket: "/tmp/tmux-0/default".into(),
            }],
            sshd: vec![Server {
                pid: 8,
                comm: "sshd".into(),
                socket: "127.0.0.1:2222".into(),
            }],
            forwarders: vec![Forwarder {
                pid: 9,
                comm: "socat".into(),
                listen: vec!["0.0.0.0:15432".parse().unwrap()],
                to_host: "10.20.0.5".into(),
                to_port: 5432,
                evidence: "arguments",
            }],
            local_addrs: ["10.9.0.2".parse().unwrap()].into_iter().collect(),
            ..Found::default()
        };
        let (rules, tunnels) = rules(&base, &found, &protected);
        let by_name = |n: &str| rules.iter().filter(|r| r.name == n).collect::<Vec<_>>();
        assert_eq!(
            by_name("guard:executors/terminals")[0].unix,
            ["/tmp/tmux-0/default"]
        );
        let sshd = by_name("guard:executors/sshd");
        assert_eq!(
            (sshd[0].ports.as_slice(), sshd[0].networks.len()),
            (&[(2222, 2222)][..], 1)
        );
        let db = by_name("db");
        assert_eq!(db.len(), 2, "the rule and its tunnel");
        let tunnel = db[1];
        assert_eq!(
            (tunnel.id, tunnel.ports.as_slice()),
            (FIRST_TUNNEL_ID, &[(15432, 15432)][..])
        );
        assert_eq!(tunnel.action, crate::policy::Action::Kill);
        assert!(tunnel.networks.contains(&"10.9.0.2/32".parse().unwrap()));
        assert_eq!(tunnels[&FIRST_TUNNEL_ID][0].pid, 9);
        assert_eq!(
            describe(FIRST_TUNNEL_ID, "db", (None, 15432, None), &found, &tunnels).unwrap(),
            "forwarder socat (pid 9) to 10.20.0.5:5432, found by its arguments"
        );
        assert_eq!(
            describe(
                0,
                "guard:executors/terminals",
                (None, 0, Some("/tmp/tmux-0/default")),
                &found,
                &tunnels
            )
            .unwrap(),
            "tmux: server (pid 7)"
        );
    }
}
