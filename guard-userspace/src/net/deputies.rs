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
    deputies::{self, Dest, Forwarder, Found},
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
            .max_by_key(|r| strength(r))
    }

    /// The strongest rule a forwarder leading to `to` meets: for a SOCKS proxy, which
    /// reaches every protected endpoint, or a forward whose destination nothing here says,
    /// the strongest of them all.
    pub fn rule_to(&self, to: &Dest) -> Option<&CompiledEndpointRule> {
        match to {
            Dest::At { host, port } => self.rule_for(host, *port),
            Dest::Anywhere | Dest::Unsaid => self
                .rules
                .iter()
                .map(|(r, _)| r)
                .max_by_key(|r| strength(r)),
        }
    }
}

/// Enforcing before auditing, then by action.
fn strength(r: &CompiledEndpointRule) -> (bool, u8) {
    (r.mode == crate::policy::Mode::Enforce, r.action.strength())
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
            Some(kind) if kind.listeners() => {
                let listeners: Vec<SocketAddr> = found
                    .of(kind)
                    .iter()
                    .filter_map(|s| s.socket.parse().ok())
                    .collect();
                out.extend(listener_rules(&r, &listeners, &found.local_addrs));
                continue;
            }
            Some(kind) => r
                .unix
                .extend(found.of(kind).iter().map(|s| s.socket.clone())),
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
        if let Some(rule) = protected.rule_to(&f.to) {
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
    kind: Option<Discover>,
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
            "forwarder {} (pid {}) to {}, found by its {}",
            f.comm, f.pid, f.to, f.evidence
        ));
    }
    let kind = kind?;
    if kind.listeners() {
        let s = found.of(kind).iter().find(|s| {
            s.socket
                .parse::<SocketAddr>()
                .is_ok_and(|l| l.port() == port && addr.is_some())
        })?;
        return Some(format!(
            "{} (pid {}) listening on {}",
            s.comm, s.pid, s.socket
        ));
    }
    let s = found
        .of(kind)
        .iter()
        .find(|s| Some(s.socket.as_str()) == unix)?;
    Some(if s.pid == 0 {
        s.comm.clone()
    } else {
        format!("{} (pid {})", s.comm, s.pid)
    })
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
        // A SOCKS proxy reaches every protected endpoint: the strongest rule (kill).
        assert_eq!(protected.rule_to(&Dest::Anywhere).unwrap().name, "db");
        // So does a forward whose destination its arguments do not say.
        assert_eq!(protected.rule_to(&Dest::Unsaid).unwrap().name, "db");
        let server = |pid, comm: &str, socket: &str| Server {
            pid,
            comm: comm.into(),
            socket: socket.into(),
        };
        let found = Found {
            servers: [
                (
                    Discover::Terminals,
                    vec![server(7, "tmux: server", "/tmp/tmux-0/default")],
                ),
                (Discover::Sshd, vec![server(8, "sshd", "127.0.0.1:2222")]),
            ]
            .into_iter()
            .collect(),
            forwarders: vec![Forwarder {
                pid: 9,
                comm: "socat".into(),
                listen: vec!["0.0.0.0:15432".parse().unwrap()],
                to: Dest::At {
                    host: "10.20.0.5".into(),
                    port: 5432,
                },
                evidence: "arguments",
            }],
            local_addrs: ["10.9.0.2".parse().unwrap()].into_iter().collect(),
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
            describe(FIRST_TUNNEL_ID, None, (None, 15432, None), &found, &tunnels).unwrap(),
            "forwarder socat (pid 9) to 10.20.0.5:5432, found by its arguments"
        );
        assert_eq!(
            describe(
                0,
                Some(Discover::Terminals),
                (None, 0, Some("/tmp/tmux-0/default")),
                &found,
                &tunnels
            )
            .unwrap(),
            "tmux: server (pid 7)"
        );
    }
}
