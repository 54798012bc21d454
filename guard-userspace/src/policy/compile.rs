//! The compiled form of a policy: what the loader turns into map entries. Pure: no IO, no DNS
//! (hosts stay names, `~` paths stay unexpanded until the loader supplies the homes).

use std::{
    fmt::Write as _,
    net::{IpAddr, Ipv6Addr},
    path::PathBuf,
};

use guard_common::agent::{COMM_LEN, NAME_LEN, NameKey, trim_nul};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use super::{
    builtin::{BuiltinEntry, Builtins, Discover, FIRST_BUILTIN_ID},
    error::Warning,
    model::{Access, Action, Mode, Policy, Protocol, Secrets},
    pattern::{PathPattern, PathSpec},
    values::{Capability, Hostname},
};

/// Access bits of a path rule.
pub const READ: u32 = 1;
pub const WRITE: u32 = 2;
pub const DELETE: u32 = 4;
pub const EXEC: u32 = 8;

impl Access {
    pub fn bit(self) -> u32 {
        match self {
            Self::Read => READ,
            Self::Write => WRITE,
            Self::Delete => DELETE,
            Self::Exec => EXEC,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// `metadata.name`.
    pub name: String,
    /// `spec.mode`; each rule carries its effective mode.
    pub mode: Mode,
    /// Agent `i` has id `i`.
    pub agents: Vec<CompiledAgent>,
    /// Rule ids are indexes over all rules: endpoints first, then paths.
    pub endpoints: Vec<CompiledEndpointRule>,
    pub paths: Vec<CompiledPathRule>,
    pub drop_capabilities: Vec<Capability>,
    /// `spec.rawSockets` (`None`: `allow`), named [`RAW_RULE_NAME`].
    pub raw_sockets: Option<CompiledRawRule>,
    /// Every entry of the built-in rule sets, on or off; the ones on are in `endpoints` and
    /// `paths` too, after the policy's own rules.
    pub builtin: Vec<BuiltinEntry>,
    /// `spec.approvers`.
    pub approvers: super::model::Approvers,
    /// `spec.hold`.
    pub hold: super::model::Hold,
    /// `spec.notify`.
    pub notify: super::model::Notify,
    /// `spec.secrets`; its allow-list is in `endpoints` too (action `allow`, ids from
    /// [`FIRST_SECRETS_ALLOW_ID`]).
    pub secrets: CompiledSecrets,
    pub warnings: Vec<Warning>,
}

/// Name of the internal raw-socket rule in events and `guard status`.
pub const RAW_RULE_NAME: &str = "guard:raw-sockets";

/// Names of the secrets rule and of its pending form in events and `guard status`.
pub const SECRETS_RULE_NAME: &str = "guard:secrets";
pub const SECRETS_PENDING_RULE_NAME: &str = "guard:secrets-pending";
/// Rule id of the first entry of the secrets allow-list (guard's internal range).
pub const FIRST_SECRETS_ALLOW_ID: u32 = 0xffff_0300;

/// The secrets rule: ids `guard_common::net::SECRETS_RULE_ID` and `SECRETS_PENDING_RULE_ID`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledSecrets {
    /// `None`: off (`taint: allow`).
    pub action: Option<Action>,
    /// Effective mode.
    pub mode: Mode,
    /// Names of the allow-list's entries, in order.
    pub allow: Vec<String>,
}

/// The raw-socket rule: id `guard_common::net::RAW_RULE_ID`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CompiledRawRule {
    pub action: Action,
    /// `spec.mode`.
    pub mode: Mode,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledAgent {
    pub id: u32,
    pub name: String,
    /// Keys compared with `comm` (at most `COMM_LEN - 1` bytes).
    pub executables: Vec<NameKey>,
    /// Keys compared with the script candidates of an interpreter (at most `NAME_LEN` bytes).
    pub scripts: Vec<NameKey>,
    /// Environment markers as written (`NAME=VALUE`, `NAME=PREFIX*`).
    pub env: Vec<String>,
    /// Install paths as written (`~` unexpanded).
    pub paths: Vec<String>,
    /// Cgroup patterns as written.
    pub cgroups: Vec<String>,
    /// Container selectors.
    pub containers: Vec<super::model::ContainerSelector>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledEndpointRule {
    pub id: u32,
    pub name: String,
    pub action: Action,
    /// Effective mode: the rule's own, else `spec.mode`.
    pub mode: Mode,
    pub protocol: Protocol,
    /// Inclusive ranges, sorted and merged; empty means every port.
    pub ports: Vec<(u16, u16)>,
    /// `cidrs` and `ips` (as /32 and /128), host bits cleared, IPv4-mapped IPv6 networks
    /// rewritten as IPv4, duplicates removed.
    pub networks: Vec<IpNet>,
    /// DNS names for the daemon to resolve and refresh into networks of this rule.
    pub hosts: Vec<String>,
    /// Unix socket paths; `@name` is an abstract socket.
    pub unix: Vec<String>,
    /// A built-in rule whose targets the daemon finds on the host, besides these.
    pub discover: Option<Discover>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CompiledPathRule {
    pub id: u32,
    pub name: String,
    /// [`READ`] | [`WRITE`] | [`DELETE`] | [`EXEC`].
    pub access: u32,
    pub action: Action,
    /// Effective mode: the rule's own, else `spec.mode`.
    pub mode: Mode,
    /// As written; `~` forms expand per home with [`CompiledPathRule::patterns`].
    pub paths: Vec<PathSpec>,
}

impl CompiledPathRule {
    /// Every pattern of this rule, `~` expanded once per home directory
    /// (see [`super::homes_from_passwd`]).
    pub fn patterns(&self, homes: &[(u32, PathBuf)]) -> Vec<PathPattern> {
        self.paths.iter().flat_map(|p| p.expand(homes)).collect()
    }
}

impl Policy {
    /// Compile into the form the loader installs.
    pub fn compile(&self) -> CompiledPolicy {
        let spec = &self.spec;
        let effective = |mode: Option<Mode>| mode.unwrap_or(spec.mode);
        let agents = spec
            .agents
            .iter()
            .zip(0u32..)
            .map(|(a, id)| CompiledAgent {
                id,
                name: a.name.to_string(),
                executables: a
                    .executables
                    .iter()
                    .map(|e| NameKey::new(e.as_str().as_bytes(), COMM_LEN - 1))
                    .collect(),
                scripts: a
                    .scripts
                    .iter()
                    .map(|s| NameKey::new(s.as_str().as_bytes(), NAME_LEN))
                    .collect(),
                env: a.env.iter().map(|m| m.as_str().to_owned()).collect(),
                paths: a.paths.iter().map(|p| p.as_str().to_owned()).collect(),
                cgroups: a.cgroups.iter().map(|c| c.as_str().to_owned()).collect(),
                containers: a.containers.clone(),
            })
            .collect();
        let endpoints: Vec<CompiledEndpointRule> = spec
            .endpoints
            .iter()
            .zip(0u32..)
            .map(|(r, id)| {
                let networks = dedup_networks(r.cidrs.iter().copied().chain(r.ips.iter().map(
                    |ip| IpNet::from(*ip), // /32 or /128
                )));
                CompiledEndpointRule {
                    id,
                    name: r.name.to_string(),
                    action: r.action,
                    mode: effective(r.mode),
                    protocol: r.protocol,
                    ports: merge_ports(r.ports.iter().map(|p| (p.start, p.end)).collect()),
                    networks,
                    hosts: r.hosts.iter().flat_map(Hostname::names).collect(),
                    unix: r.unix.iter().map(ToString::to_string).collect(),
                    discover: None,
                }
            })
            .collect();
        let first_path_id = u32::try_from(endpoints.len()).unwrap_or(u32::MAX);
        let paths = spec
            .paths
            .iter()
            .zip(first_path_id..)
            .map(|(r, id)| CompiledPathRule {
                id,
                name: r.name.to_string(),
                access: r.access.iter().fold(0, |mask, a| mask | a.bit()),
                action: r.action,
                mode: effective(r.mode),
                paths: r.paths.clone(),
            })
            .collect();
        let builtins = Builtins::compile(&spec.executors, &spec.startup_files, spec.mode);
        let mut endpoints = endpoints;
        endpoints.extend(builtins.endpoints);
        endpoints.extend(secrets_allow(&spec.secrets));
        let mut paths: Vec<CompiledPathRule> = paths;
        paths.extend(builtins.paths);
        paths.extend(socket_files(&endpoints));
        CompiledPolicy {
            name: self.metadata.name.clone(),
            mode: spec.mode,
            agents,
            endpoints,
            paths,
            builtin: builtins.entries,
            drop_capabilities: spec
                .self_protection
                .as_ref()
                .map_or_else(Capability::default_drops, |s| s.drop_capabilities.clone()),
            raw_sockets: spec.raw_sockets.action().map(|action| CompiledRawRule {
                action,
                mode: spec.mode,
            }),
            approvers: spec.approvers.clone(),
            hold: spec.hold,
            notify: spec.notify.clone(),
            secrets: CompiledSecrets {
                action: spec.secrets.taint.action(),
                mode: effective(spec.secrets.mode),
                allow: spec
                    .secrets
                    .allow
                    .iter()
                    .map(|d| d.name.to_string())
                    .collect(),
            },
            warnings: self.warnings.clone(),
        }
    }
}

/// The built-in path rule that keeps protected sockets where their rules name them.
pub const SOCKET_FILES_RULE: &str = "guard:socket-files";
/// Its id: in the built-in range, above every set's entries.
pub const SOCKET_FILES_ID: u32 = FIRST_BUILTIN_ID + 0xff00;

/// The socket files of the enforcing unix rules that refuse, as one path rule: a tagged
/// process may not link, rename, delete, chmod or chown them. A hard link or a move would
/// reach the socket under a name the rule does not know (the fallback tier's unix hooks see
/// names), and a socket moved away leaves its path free for the agent's own listener, which
/// the untagged clients of the real one would then talk to.
fn socket_files(endpoints: &[CompiledEndpointRule]) -> Option<CompiledPathRule> {
    let paths: std::collections::BTreeSet<&str> = endpoints
        .iter()
        .filter(|r| r.mode == Mode::Enforce && !matches!(r.action, Action::Audit | Action::Allow))
        .flat_map(|r| r.unix.iter())
        .map(String::as_str)
        .filter(|u| !u.starts_with('@'))
        .collect();
    (!paths.is_empty()).then(|| CompiledPathRule {
        id: SOCKET_FILES_ID,
        name: SOCKET_FILES_RULE.to_owned(),
        access: WRITE | DELETE,
        action: Action::Deny,
        mode: Mode::Enforce,
        paths: paths.into_iter().filter_map(PathSpec::internal).collect(),
    })
}

/// The secrets allow-list as endpoint rules whose action is `allow`: the kernel finds them
/// with the endpoint rules of a destination, and they only exempt it from the secrets rule.
fn secrets_allow(secrets: &Secrets) -> Vec<CompiledEndpointRule> {
    secrets
        .allow
        .iter()
        .zip(FIRST_SECRETS_ALLOW_ID..)
        .map(|(d, id)| CompiledEndpointRule {
            id,
            name: d.name.to_string(),
            action: Action::Allow,
            mode: Mode::Enforce,
            protocol: d.protocol,
            ports: merge_ports(d.ports.iter().map(|p| (p.start, p.end)).collect()),
            networks: dedup_networks(
                d.cidrs
                    .iter()
                    .copied()
                    .chain(d.ips.iter().map(|ip| IpNet::from(*ip))),
            ),
            hosts: d.hosts.iter().flat_map(Hostname::names).collect(),
            unix: Vec::new(),
            discover: None,
        })
        .collect()
}

/// Normalised networks, each once, in order.
fn dedup_networks(nets: impl Iterator<Item = IpNet>) -> Vec<IpNet> {
    let mut networks: Vec<IpNet> = Vec::new();
    for net in nets.map(normalise) {
        if !networks.contains(&net) {
            networks.push(net);
        }
    }
    networks
}

/// Clear host bits; an IPv6 network inside `::ffff:0:0/96` becomes the IPv4 network it maps.
pub fn normalise(net: IpNet) -> IpNet {
    let net = net.trunc();
    if let IpNet::V6(v6) = net
        && v6.prefix_len() >= 96
        && let Some(v4) = v6.addr().to_ipv4_mapped()
        && let Ok(mapped) = Ipv4Net::new(v4, v6.prefix_len() - 96)
    {
        return IpNet::V4(mapped);
    }
    net
}

/// The spellings of an IPv4 network under NAT64's local-use prefix `64:ff9b:1::/48`
/// (RFC 8215). An address alone does not tell which of RFC 6052's prefix lengths the
/// operator chose, so each is listed: /48, /56 and /64, where the IPv4 bits are split around
/// the `u` octet (bits 64–71, always zero), and /96 directly under the /48
/// (`64:ff9b:1::a.b.c.d`). The well-known prefix `64:ff9b::/96` is decoded in the kernel.
pub fn nat64_local(net: Ipv4Net) -> [Ipv6Net; 4] {
    const PREFIX: [u8; 6] = [0, 0x64, 0xff, 0x9b, 0, 1];
    // (prefix length, where the four IPv4 octets go, how many IPv4 bits come before the u
    // octet; for /96 the u octet is inside the prefix)
    const LAYOUTS: [(u8, [usize; 4], Option<u8>); 4] = [
        (48, [6, 7, 9, 10], Some(16)),
        (56, [7, 9, 10, 11], Some(8)),
        (64, [9, 10, 11, 12], Some(0)),
        (96, [12, 13, 14, 15], None),
    ];
    let octets = net.network().octets();
    let len = net.prefix_len();
    LAYOUTS.map(|(prefix_len, at, before_u)| {
        let mut addr = [0u8; 16];
        addr[..6].copy_from_slice(&PREFIX);
        for (octet, pos) in octets.iter().zip(at) {
            addr[pos] = *octet;
        }
        // The u octet is part of the match once the network's bits reach past it.
        let u = match before_u {
            Some(bits) if len > bits => 8,
            _ => 0,
        };
        Ipv6Net::new(Ipv6Addr::from(addr), prefix_len + len + u).expect("at most 128 bits")
    })
}

/// An address as the kernel should compare it: IPv4-mapped IPv6 addresses as IPv4.
pub fn canonical_addr(addr: IpAddr) -> IpAddr {
    match addr {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    }
}

fn merge_ports(mut ports: Vec<(u16, u16)>) -> Vec<(u16, u16)> {
    ports.sort_unstable();
    let mut merged: Vec<(u16, u16)> = Vec::with_capacity(ports.len());
    for (start, end) in ports {
        match merged.last_mut() {
            Some(last) if u32::from(start) <= u32::from(last.1) + 1 => last.1 = last.1.max(end),
            _ => merged.push((start, end)),
        }
    }
    merged
}

impl CompiledPolicy {
    /// Name of the rule with this id.
    pub fn rule_name(&self, id: u32) -> Option<&str> {
        let endpoints = self.endpoints.iter().map(|r| (r.id, &r.name));
        let paths = self.paths.iter().map(|r| (r.id, &r.name));
        endpoints
            .chain(paths)
            .find(|(i, _)| *i == id)
            .map(|(_, n)| n.as_str())
    }

    /// Human summary for `guard policy check`: counts, then one line per agent and per rule.
    pub fn summary(&self) -> String {
        let own_endpoints: Vec<&CompiledEndpointRule> = self
            .endpoints
            .iter()
            .filter(|r| r.id < FIRST_BUILTIN_ID)
            .collect();
        let own_paths: Vec<&CompiledPathRule> = self
            .paths
            .iter()
            .filter(|r| r.id < FIRST_BUILTIN_ID)
            .collect();
        let rules = own_endpoints.len() + own_paths.len();
        let recording = own_endpoints
            .iter()
            .map(|r| (r.action, r.mode))
            .chain(own_paths.iter().map(|r| (r.action, r.mode)))
            .filter(|(action, mode)| *action == Action::Audit || *mode == Mode::Audit)
            .count();
        let width = own_endpoints
            .iter()
            .map(|r| r.name.len())
            .chain(own_paths.iter().map(|r| r.name.len()))
            .chain(self.agents.iter().map(|a| a.name.len()))
            .max()
            .unwrap_or(0);
        let mut s = String::new();
        let _ = writeln!(s, "policy {:?}: mode {}", self.name, self.mode);
        let _ = writeln!(
            s,
            "{}, {}, {}; {} of {} only record (audit)",
            plural(self.agents.len(), "agent"),
            plural(own_endpoints.len(), "endpoint rule"),
            plural(own_paths.len(), "path rule"),
            recording,
            plural(rules, "rule"),
        );
        if !self.agents.is_empty() {
            s.push_str("agents:\n");
        }
        for a in &self.agents {
            let keys = |keys: &[NameKey]| {
                keys.iter()
                    .map(|k| String::from_utf8_lossy(trim_nul(&k.bytes)).into_owned())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let mut lists = Vec::new();
            if !a.executables.is_empty() {
                lists.push(format!("executables [{}]", keys(&a.executables)));
            }
            if !a.scripts.is_empty() {
                lists.push(format!("scripts [{}]", keys(&a.scripts)));
            }
            if !a.env.is_empty() {
                lists.push(format!("env [{}]", a.env.join(", ")));
            }
            if !a.paths.is_empty() {
                lists.push(format!("paths [{}]", a.paths.join(", ")));
            }
            if !a.cgroups.is_empty() {
                lists.push(format!("cgroups [{}]", a.cgroups.join(", ")));
            }
            if !a.containers.is_empty() {
                lists.push(format!("containers: {}", a.containers.len()));
            }
            let _ = writeln!(s, "  {:width$}  {}", a.name, lists.join(" "));
        }
        if !own_endpoints.is_empty() {
            s.push_str("endpoint rules:\n");
        }
        for r in &own_endpoints {
            let mut targets: Vec<String> = r.networks.iter().map(ToString::to_string).collect();
            targets.extend(r.hosts.iter().map(|h| format!("{h} (dns)")));
            targets.extend(r.unix.iter().map(|u| format!("unix:{u}")));
            let ports = if r.ports.is_empty() {
                "all ports".to_owned()
            } else {
                let list: Vec<String> = r
                    .ports
                    .iter()
                    .map(|&(a, b)| {
                        if a == b {
                            a.to_string()
                        } else {
                            format!("{a}-{b}")
                        }
                    })
                    .collect();
                format!("ports {}", list.join(","))
            };
            let _ = write!(
                s,
                "  #{:<3} {:width$}  {:9} {:7}  {}",
                r.id,
                r.name,
                r.action,
                r.mode,
                targets.join(", "),
            );
            if !(r.networks.is_empty() && r.hosts.is_empty()) {
                let protocol = match r.protocol {
                    Protocol::Any => "any protocol".to_owned(),
                    p => p.to_string(),
                };
                let _ = write!(s, " ({protocol}, {ports})");
            }
            s.push('\n');
        }
        if !own_paths.is_empty() {
            s.push_str("path rules:\n");
        }
        for r in &own_paths {
            let access: Vec<&str> = [
                (READ, "read"),
                (WRITE, "write"),
                (DELETE, "delete"),
                (EXEC, "exec"),
            ]
            .into_iter()
            .filter(|(bit, _)| r.access & bit != 0)
            .map(|(_, name)| name)
            .collect();
            let paths: Vec<String> = r
                .paths
                .iter()
                .map(|p| {
                    if p.pattern().is_pattern() {
                        format!("{p} (pattern)")
                    } else {
                        p.to_string()
                    }
                })
                .collect();
            let _ = writeln!(
                s,
                "  #{:<3} {:width$}  {:9} {:7}  {}: {}",
                r.id,
                r.name,
                r.action,
                r.mode,
                access.join(","),
                paths.join(", "),
            );
        }
        if !self.drop_capabilities.is_empty() {
            let caps: Vec<String> = self
                .drop_capabilities
                .iter()
                .map(ToString::to_string)
                .collect();
            let _ = writeln!(s, "self-protection: drop {}", caps.join(", "));
        }
        match &self.raw_sockets {
            Some(r) => {
                let _ = writeln!(
                    s,
                    "raw sockets: {} {} (raw IPv4/IPv6 and packet sockets, rule {RAW_RULE_NAME})",
                    r.action, r.mode
                );
            }
            None => {
                let _ = writeln!(s, "raw sockets: allowed (spec.rawSockets: allow)");
            }
        }
        match self.secrets.action {
            Some(a) => {
                let allow: Vec<String> = self
                    .endpoints
                    .iter()
                    .filter(|r| r.action == Action::Allow)
                    .map(|r| {
                        let mut targets: Vec<String> =
                            r.networks.iter().map(ToString::to_string).collect();
                        targets.extend(r.hosts.iter().cloned());
                        format!("{} [{}]", r.name, targets.join(", "))
                    })
                    .collect();
                let _ = writeln!(
                    s,
                    "secrets: an agent tree that read a secret: {a} {} except to {} (rules \
                     {SECRETS_RULE_NAME}, {SECRETS_PENDING_RULE_NAME})",
                    self.secrets.mode,
                    if allow.is_empty() {
                        "nothing".to_owned()
                    } else {
                        allow.join("; ")
                    }
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "secrets: reads inventoried, no taint (spec.secrets.taint: allow)"
                );
            }
        }
        s.push_str("built-in rules:\n");
        for e in &self.builtin {
            let state = match e.action {
                Some(a) => format!("{a:9} {:7}", e.mode),
                None => format!("{:17}", "off"),
            };
            let _ = writeln!(s, "  {:30} {state}  ({}) {}", e.name, e.set_by, e.covers);
        }
        if !self.warnings.is_empty() {
            let _ = writeln!(s, "{}:", plural(self.warnings.len(), "warning"));
        }
        for w in &self.warnings {
            let _ = writeln!(s, "  {w}");
        }
        s
    }
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("1 {word}")
    } else {
        format!("{n} {word}s")
    }
}

#[cfg(test)]
mod tests {

    use super::*;

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    #[test]
    fn mapped_ipv6_networks_become_ipv4() {
        assert_eq!(normalise(net("::ffff:10.0.0.0/104")), net("10.0.0.0/8"));
        assert_eq!(normalise(net("::ffff:10.1.2.3/128")), net("10.1.2.3/32"));
        assert_eq!(normalise(net("::ffff:0.0.0.0/96")), net("0.0.0.0/0"));
        // Wider than the mapped block, or not mapped at all: stays IPv6.
        assert_eq!(normalise(net("::/0")), net("::/0"));
        assert_eq!(normalise(net("2001:db8::/32")), net("2001:db8::/32"));
        assert_eq!(normalise(net("10.20.1.0/16")), net("10.20.0.0/16"));
        assert_eq!(
            canonical_addr("::ffff:169.254.169.254".parse().unwrap()),
            "169.254.169.254".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical_addr(IpAddr::V6(Ipv6Addr::LOCALHOST)),
            IpAddr::V6(Ipv6Addr::LOCALHOST)
        );
    }

    #[test]
    fn ports_merge() {
        assert_eq!(
            merge_ports(vec![
                (443, 443),
                (80, 80),
                (8000, 8100),
                (8050, 9000),
                (81, 81)
            ]),
            [(80, 81), (443, 443), (8000, 9000)]
        );
        assert_eq!(merge_ports(vec![(65535, 65535), (1, 65535)]), [(1, 65535)]);
        assert_eq!(merge_ports(vec![]), []);
    }

    #[test]
    fn compiles_ids_modes_keys_and_masks() {
        let policy = Policy::from_yaml(
            r#"
apiVersion: guard.dev/v1alpha1
kind: GuardPolicy
metadata: { name: t }
spec:
  mode: audit
  agents:
    - { name: a, executables: [a-very-long-executable], scripts: [a] }
    - { name: b, scripts: [b] }
  endpoints:
    - { name: e0, ips: ["::ffff:10.0.0.1", 10.0.0.1, "fd00::1"], cidrs: ["::ffff:10.0.0.0/104"], ports: [443, "80-81"], action: kill, mode: enforce }
    - { name: e1, hosts: [API.example.com], unix: ["@x"], protocol: tcp }
  paths:
    - { name: p0, paths: ["~/.netrc", "/srv/db"], access: [write, delete], action: kill-tree }
"#,
            "t.yaml",
        )
        .unwrap();
        let c = policy.compile();
        assert_eq!(c.agents[1].id, 1);
        assert_eq!(
            trim_nul(&c.agents[0].executables[0].bytes),
            b"a-very-long-exe"
        );
        assert_eq!(c.agents[0].scripts[0], NameKey::new(b"a", NAME_LEN));
        let e0 = &c.endpoints[0];
        assert_eq!(
            (e0.id, e0.action, e0.mode),
            (0, Action::Kill, Mode::Enforce)
        );
        assert_eq!(
            e0.networks,
            [net("10.0.0.0/8"), net("10.0.0.1/32"), net("fd00::1/128")]
        );
        assert_eq!(e0.ports, [(80, 81), (443, 443)]);
        let e1 = &c.endpoints[1];
        assert_eq!((e1.mode, e1.protocol), (Mode::Audit, Protocol::Tcp));
        assert_eq!(
            (e1.hosts.as_slice(), e1.unix.as_slice()),
            (&["api.example.com".to_owned()][..], &["@x".to_owned()][..])
        );
        let p0 = &c.paths[0];
        assert_eq!(
            (p0.id, p0.access, p0.action),
            (2, WRITE | DELETE, Action::KillTree)
        );
        assert_eq!(c.rule_name(2), Some("p0"));
        let homes = [
            (0, PathBuf::from("/root")),
            (1000, PathBuf::from("/home/u")),
        ];
        assert_eq!(
            p0.patterns(&homes),
            [
                PathPattern::Exact("/root/.netrc".into()),
                PathPattern::Exact("/home/u/.netrc".into()),
                PathPattern::Exact("/srv/db".into())
            ]
        );
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        let summary = c.summary();
        assert!(summary.contains("#0   e0  kill      enforce  10.0.0.0/8, 10.0.0.1/32, fd00::1/128 (any protocol, ports 80-81,443)"), "{summary}");
        assert!(
            summary.contains("api.example.com (dns), unix:@x (tcp, all ports)"),
            "{summary}"
        );
        assert!(summary.contains("kill-tree"), "{summary}");
        assert!(
            summary.contains("write,delete: ~/.netrc, /srv/db"),
            "{summary}"
        );
        assert!(
            summary.contains("t.yaml:8:32: spec.agents[0].executables[0]"),
            "{summary}"
        );
    }
    #[test]
    fn nat64_local_use_spellings_cover_each_prefix_length() {
        let metadata: Ipv4Net = "169.254.169.254/32".parse().unwrap();
        let nets = nat64_local(metadata);
        let contains = |a: &str| {
            nets.iter()
                .any(|n| n.contains(&a.parse::<Ipv6Addr>().unwrap()))
        };
        // 169.254 = a9fe, 169.254 = a9fe; u octet zero.
        assert!(contains("64:ff9b:1:a9fe:a9:fe00::"), "/48: {nets:?}");
        assert!(contains("64:ff9b:1:a9:fe:a9fe::"), "/56: {nets:?}");
        assert!(contains("64:ff9b:1:0:a9:fea9:fe00:0"), "/64: {nets:?}");
        assert!(contains("64:ff9b:1::169.254.169.254"), "/96: {nets:?}");
        assert!(!contains("64:ff9b:1:a9fe:1a9:fe00::"), "u octet not zero");
        assert!(!contains("64:ff9b:1::169.254.169.253"), "another address");
        assert!(
            !contains("64:ff9b::169.254.169.254"),
            "the well-known prefix is the kernel's"
        );
        let wide = nat64_local("10.0.0.0/8".parse().unwrap());
        assert_eq!(wide.map(|n| n.prefix_len()), [56, 64, 80, 104]);
    }
}
