//! The contents of the network rule maps for a policy generation. Pure: the caller supplies
//! resolved host addresses and resolved unix socket paths.
//!
//! Rule slots: generation `g` uses slots `[(g % 2) * 256, (g % 2) * 256 + 256)` of the rule
//! array, so installing generation `g + 1` never rewrites a slot that generation `g`'s trie
//! entries still point at.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use guard_common::net::{
    NetRule, PORT_RANGES_MAX, PortRange, RULE_SLOTS_MAX, RULES_PER_GENERATION, RuleSet, UnixKey,
    mode, proto,
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

pub use super::unix_files::UnixTargets;

use crate::policy::{
    Action, CompiledEndpointRule, CompiledRawRule, CompiledSecrets, Mode, Protocol, canonical_addr,
    nat64_local, normalise,
};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PlanError {
    #[error("too many endpoint rules: {count} (at most {max})")]
    TooManyRules { count: usize, max: u32 },
    #[error(
        "endpoint rule {rule}: {count} port ranges, at most {max} fit in the kernel's rule \
         (merge them into wider ranges)"
    )]
    TooManyPorts {
        rule: String,
        count: usize,
        max: usize,
    },
    #[error(
        "{target}: {count} endpoint rules cover it, at most {max} can (merge rules that \
         share destinations)"
    )]
    TooManyRulesOnTarget {
        target: String,
        count: usize,
        max: usize,
    },
    #[error("endpoint rule {rule}: unix socket {name} does not fit sun_path")]
    UnixName { rule: String, name: String },
}

/// What the maps should hold.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub generation: u32,
    /// Slot → rule, for every slot of this generation's half (unused slots are default).
    pub rules: Vec<(u32, NetRule)>,
    pub v4: BTreeMap<Ipv4Net, RuleSet>,
    pub v6: BTreeMap<Ipv6Net, RuleSet>,
    pub unix: BTreeMap<UnixKeyBytes, RuleSet>,
}

/// A [`UnixKey`] as an ordered map key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct UnixKeyBytes(pub u32, pub [u8; guard_common::net::UNIX_PATH_LEN]);

impl From<UnixKey> for UnixKeyBytes {
    fn from(k: UnixKey) -> Self {
        Self(k.len, k.path)
    }
}

impl From<UnixKeyBytes> for UnixKey {
    fn from(k: UnixKeyBytes) -> Self {
        Self {
            len: k.0,
            path: k.1,
        }
    }
}

/// First slot of `generation`'s half of the rule array.
pub fn slot_base(generation: u32) -> u32 {
    (generation % 2) * RULES_PER_GENERATION
}

fn kernel_rule(rule: &CompiledEndpointRule, generation: u32) -> Result<NetRule, PlanError> {
    if rule.ports.len() > PORT_RANGES_MAX {
        return Err(PlanError::TooManyPorts {
            rule: rule.name.clone(),
            count: rule.ports.len(),
            max: PORT_RANGES_MAX,
        });
    }
    let mut ports = [PortRange::default(); PORT_RANGES_MAX];
    for (slot, &(start, end)) in ports.iter_mut().zip(&rule.ports) {
        *slot = PortRange { start, end };
    }
    Ok(NetRule {
        rule_id: rule.id,
        generation,
        action: action_code(rule.action),
        mode: mode_code(rule.mode),
        protocol: match rule.protocol {
            Protocol::Any => proto::ANY,
            Protocol::Tcp => proto::TCP,
            Protocol::Udp => proto::UDP,
        },
        nports: rule.ports.len() as u32,
        ports,
    })
}

fn action_code(a: Action) -> u32 {
    a.id()
}

fn mode_code(m: Mode) -> u32 {
    match m {
        Mode::Enforce => mode::ENFORCE,
        Mode::Audit => mode::AUDIT,
    }
}

/// The raw-socket rule's map entry for `generation`; generation 0 (no rule) for `allow`.
pub fn raw_rule(raw: Option<&CompiledRawRule>, generation: u32) -> NetRule {
    match raw {
        Some(r) => NetRule {
            rule_id: guard_common::net::RAW_RULE_ID,
            generation,
            action: action_code(r.action),
            mode: mode_code(r.mode),
            ..NetRule::default()
        },
        None => NetRule::default(),
    }
}

/// The secrets rule's two entries for `generation` (the rule, and its pending form: deny,
/// and only where the rule blocks); generation 0 (off) for `taint: allow`.
pub fn secrets_rules(secrets: Option<&CompiledSecrets>, generation: u32) -> [NetRule; 2] {
    let Some(CompiledSecrets {
        action: Some(action),
        mode,
        ..
    }) = secrets
    else {
        return [NetRule::default(); 2];
    };
    let rule = NetRule {
        rule_id: guard_common::net::SECRETS_RULE_ID,
        generation,
        action: action_code(*action),
        mode: mode_code(*mode),
        ..NetRule::default()
    };
    let pending = NetRule {
        rule_id: guard_common::net::SECRETS_PENDING_RULE_ID,
        action: action_code(Action::Deny),
        ..rule
    };
    [rule, pending]
}

/// Compute the map contents of `generation`.
///
/// `resolved` holds the current addresses of each rule's hosts (by rule id); `unix_targets`
/// returns what else a configured socket path stands for: the other spellings under which it
/// is reached (its resolved path when it goes through symlinks) and its socket file.
pub fn plan(
    rules: &[CompiledEndpointRule],
    resolved: &BTreeMap<u32, BTreeSet<IpAddr>>,
    mut unix_targets: impl FnMut(&str) -> UnixTargets,
    generation: u32,
) -> Result<Plan, PlanError> {
    if rules.len() > RULES_PER_GENERATION as usize {
        return Err(PlanError::TooManyRules {
            count: rules.len(),
            max: RULES_PER_GENERATION,
        });
    }
    let base = slot_base(generation);
    let mut kernel_rules = Vec::with_capacity(rules.len());
    let mut table: Vec<(u32, NetRule)> = (0..RULES_PER_GENERATION)
        .map(|i| (base + i, NetRule::default()))
        .collect();
    for (i, rule) in rules.iter().enumerate() {
        let k = kernel_rule(rule, generation)?;
        table[i].1 = k;
        kernel_rules.push((base + i as u32, k));
    }
    let strength = |slot: u32| {
        kernel_rules
            .iter()
            .find(|(s, _)| *s == slot)
            .map_or((0, 0), |(_, r)| (r.strength(), r.rule_id))
    };

    let mut nets: BTreeMap<IpNet, BTreeSet<u32>> = BTreeMap::new();
    let mut unix: BTreeMap<UnixKeyBytes, BTreeSet<u32>> = BTreeMap::new();
    for (i, rule) in rules.iter().enumerate() {
        let slot = base + i as u32;
        let addrs = resolved.get(&rule.id).into_iter().flatten();
        let host_nets = addrs.map(|a| IpNet::from(canonical_addr(*a)));
        for net in rule
            .networks
            .iter()
            .copied()
            .chain(host_nets)
            .map(normalise)
        {
            if let IpNet::V4(v4) = net {
                for v6 in nat64_local(v4) {
                    nets.entry(IpNet::V6(v6)).or_default().insert(slot);
                }
            }
            nets.entry(net).or_default().insert(slot);
        }
        for name in &rule.unix {
            let targets = unix_targets(name);
            if let Some((dev, ino)) = targets.file {
                unix.entry(UnixKey::inode(dev, ino).into())
                    .or_default()
                    .insert(slot);
            }
            let mut names = vec![name.clone()];
            names.extend(targets.aliases);
            for n in names {
                let key = UnixKey::from_name(n.as_bytes()).ok_or_else(|| PlanError::UnixName {
                    rule: rule.name.clone(),
                    name: n.clone(),
                })?;
                unix.entry(key.into()).or_default().insert(slot);
                // Spellings the fallback tier cannot resolve meet it by its last component.
                if let Some((hash, _)) = key.last_component() {
                    unix.entry(UnixKey::last_name(hash).into())
                        .or_default()
                        .insert(slot);
                }
            }
        }
    }
    // Longest-prefix match returns one entry: give each prefix the slots of every shorter
    // prefix that covers it.
    let covered: Vec<(IpNet, BTreeSet<u32>)> = nets
        .iter()
        .map(|(net, slots)| {
            let mut all = slots.clone();
            for (other, other_slots) in &nets {
                if other.prefix_len() < net.prefix_len() && other.contains(net) {
                    all.extend(other_slots);
                }
            }
            (*net, all)
        })
        .collect();

    let rule_set = |target: String, slots: &BTreeSet<u32>| {
        if slots.len() > RULE_SLOTS_MAX {
            return Err(PlanError::TooManyRulesOnTarget {
                target,
                count: slots.len(),
                max: RULE_SLOTS_MAX,
            });
        }
        let mut ordered: Vec<u32> = slots.iter().copied().collect();
        // Strongest first; ties by rule id, so the result is deterministic.
        ordered.sort_by_key(|s| {
            let (strength, id) = strength(*s);
            (std::cmp::Reverse(strength), id)
        });
        let mut set = RuleSet {
            count: ordered.len() as u32,
            ..RuleSet::default()
        };
        set.slots[..ordered.len()].copy_from_slice(&ordered);
        Ok(set)
    };
    let mut out = Plan {
        generation,
        rules: table,
        ..Plan::default()
    };
    for (net, slots) in covered {
        let set = rule_set(net.to_string(), &slots)?;
        match net {
            IpNet::V4(n) => out.v4.insert(n, set),
            IpNet::V6(n) => out.v6.insert(n, set),
        };
    }
    for (key, slots) in unix {
        let name = match key.1.get(..key.0 as usize) {
            Some(bytes) => String::from_utf8_lossy(bytes).into_owned(),
            None => "socket file".to_owned(),
        };
        out.unix
            .insert(key, rule_set(format!("unix:{name}"), &slots)?);
    }
    Ok(out)
}

/// `(prefix_len, address)` of a v4 trie key.
pub fn v4_key(net: &Ipv4Net) -> (u32, [u8; 4]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// `(prefix_len, address)` of a v6 trie key.
pub fn v6_key(net: &Ipv6Net) -> (u32, [u8; 16]) {
    (u32::from(net.prefix_len()), net.network().octets())
}

/// The network back from a v4 trie key.
pub fn v4_net(prefix_len: u32, addr: [u8; 4]) -> Option<Ipv4Net> {
    Ipv4Net::new(Ipv4Addr::from(addr), u8::try_from(prefix_len).ok()?).ok()
}

/// The network back from a v6 trie key.
pub fn v6_net(prefix_len: u32, addr: [u8; 16]) -> Option<Ipv6Net> {
    Ipv6Net::new(Ipv6Addr::from(addr), u8::try_from(prefix_len).ok()?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Policy;

    fn rules(yaml_endpoints: &str) -> Vec<CompiledEndpointRule> {
        let src = format!(
            "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: {{ name: t }}\nspec:\n  endpoints:\n{yaml_endpoints}"
        );
        let mut rules = Policy::from_yaml(&src, "t.yaml")
            .unwrap()
            .compile()
            .endpoints;
        rules.retain(|r| r.id < crate::policy::FIRST_BUILTIN_ID);
        rules
    }

    fn slots(set: &RuleSet) -> Vec<u32> {
        set.slots[..set.count as usize].to_vec()
    }

    #[test]
    fn covering_prefixes_propagate_and_strongest_comes_first() {
        let r = rules(
            "    - { name: wide, cidrs: [10.0.0.0/8], action: audit }\n\
             \x20   - { name: db, ips: [10.20.0.5], ports: [5432], action: kill }\n\
             \x20   - { name: mid, cidrs: [10.20.0.0/16], action: deny, mode: audit }\n\
             \x20   - { name: v6, cidrs: [\"fd00::/8\"], ips: [\"::ffff:10.30.0.1\"] }\n",
        );
        let p = plan(&r, &BTreeMap::new(), |_| UnixTargets::default(), 1).unwrap();
        let base = RULES_PER_GENERATION;
        assert_eq!(p.rules.len(), RULES_PER_GENERATION as usize);
        assert_eq!(p.rules[1].0, base + 1);
        assert_eq!(p.rules[1].1.action, Action::Kill.id());
        assert_eq!(p.rules[4].1, NetRule::default());
        let wide = &p.v4[&"10.0.0.0/8".parse().unwrap()];
        assert_eq!(slots(wide), [base]);
        let db = &p.v4[&"10.20.0.5/32".parse().unwrap()];
        // kill (enforced) > deny in audit mode vs audit action: audit-mode deny has strength
        // 2, the audit action 1.
        assert_eq!(slots(db), [base + 1, base + 2, base]);
        let mid = &p.v4[&"10.20.0.0/16".parse().unwrap()];
        assert_eq!(slots(mid), [base + 2, base]);
        // The mapped address went to the IPv4 trie (inside 10.0.0.0/8: `wide` covers it).
        assert_eq!(
            slots(&p.v4[&"10.30.0.1/32".parse().unwrap()]),
            [base + 3, base]
        );
        assert_eq!(slots(&p.v6[&"fd00::/8".parse().unwrap()]), [base + 3]);
        // Each IPv4 network is also listed under NAT64's local-use prefix, four spellings,
        // covered as its IPv4 network is.
        assert_eq!(p.v6.len(), 1 + 4 * 4);
        assert_eq!(
            slots(&p.v6[&"64:ff9b:1::10.20.0.5/128".parse().unwrap()]),
            [base + 1, base + 2, base]
        );
    }

    #[test]
    fn the_secrets_allow_list_comes_after_every_rule_and_decides_nothing() {
        let src = "apiVersion: guard.dev/v1alpha1\nkind: GuardPolicy\nmetadata: { name: t }\nspec:\n  \
                   endpoints:\n    - { name: audit-all, cidrs: [10.0.0.0/8], action: audit }\n  \
                   secrets:\n    taint: kill\n    allow: [{ name: reg, ips: [10.1.0.1], ports: [443] }]\n";
        let c = crate::policy::Policy::from_yaml(src, "t.yaml")
            .unwrap()
            .compile();
        let p = plan(
            &c.endpoints,
            &BTreeMap::new(),
            |_| UnixTargets::default(),
            2,
        )
        .unwrap();
        let reg = &p.v4[&"10.1.0.1/32".parse().unwrap()];
        let last = p.rules[reg.slots[reg.count as usize - 1] as usize].1;
        assert!(last.exempts() && !last.blocks(), "{last:?}");
        assert_eq!(p.rules[reg.slots[0] as usize].1.action, Action::Audit.id());
        let [rule, pending] = secrets_rules(Some(&c.secrets), 2);
        assert_eq!((rule.action, rule.generation), (Action::Kill.id(), 2));
        assert!(rule.kills());
        assert_eq!(pending.action, Action::Deny.id());
        assert_eq!(pending.rule_id, guard_common::net::SECRETS_PENDING_RULE_ID);
        assert!(pending.blocks() && !pending.kills());
    }

    #[test]
    fn resolved_hosts_and_unix_aliases() {
        let r = rules(
            "    - { name: api, hosts: [api.example.com], ports: [443] }\n\
             \x20   - { name: sock, unix: [/var/run/docker.sock, \"@abs\"] }\n",
        );
        let mut resolved = BTreeMap::new();
        resolved.insert(
            0,
            ["10.20.0.7", "fd00:20::7", "::ffff:10.20.0.8"]
                .iter()
                .map(|a| a.parse().unwrap())
                .collect(),
        );
        let targets = |p: &str| match p {
            "/var/run/docker.sock" => UnixTargets {
                aliases: vec!["/run/docker.sock".to_owned()],
                file: Some((0x0080_0001, 42)),
            },
            _ => UnixTargets::default(),
        };
        let p = plan(&r, &resolved, targets, 2).unwrap();
        assert_eq!(p.v4.len(), 2);
        assert!(p.v4.contains_key(&"10.20.0.8/32".parse().unwrap()));
        assert!(p.v6.contains_key(&"fd00:20::7/128".parse().unwrap()));
        assert_eq!(p.unix.len(), 5);
        let (hash, _) = UnixKey::from_name(b"docker.sock")
            .unwrap()
            .last_component()
            .unwrap();
        let key: UnixKeyBytes = UnixKey::last_name(hash).into();
        assert_eq!(
            slots(&p.unix[&key]),
            [1],
            "other spellings, by last component"
        );
        let key: UnixKeyBytes = UnixKey::from_name(b"/run/docker.sock").unwrap().into();
        assert_eq!(slots(&p.unix[&key]), [1]);
        let key: UnixKeyBytes = UnixKey::inode(0x0080_0001, 42).into();
        assert_eq!(slots(&p.unix[&key]), [1], "the socket file, by identity");
        let key: UnixKeyBytes = UnixKey::from_name(b"@abs").unwrap().into();
        assert_eq!(key.1[0], 0);
        assert!(p.unix.contains_key(&key));
    }

    #[test]
    fn limits_are_errors() {
        let r =
            rules("    - { name: p, ips: [10.0.0.1], ports: [1, 3, 5, 7, 9, 11, 13, 15, 17] }\n");
        assert!(matches!(
            plan(&r, &BTreeMap::new(), |_| UnixTargets::default(), 1),
            Err(PlanError::TooManyPorts { count: 9, .. })
        ));
        let many: String = (0..17)
            .map(|i| format!("    - {{ name: r{i}, cidrs: [10.0.0.0/8] }}\n"))
            .collect();
        let err = plan(
            &rules(&many),
            &BTreeMap::new(),
            |_| UnixTargets::default(),
            1,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "10.0.0.0/8: 17 endpoint rules cover it, at most 16 can (merge rules that share destinations)"
        );
    }

    #[test]
    fn keys_round_trip() {
        let n: Ipv4Net = "10.20.0.0/16".parse().unwrap();
        let (len, addr) = v4_key(&n);
        assert_eq!(v4_net(len, addr), Some(n));
        let n: Ipv6Net = "fd00:20::/64".parse().unwrap();
        let (len, addr) = v6_key(&n);
        assert_eq!(v6_net(len, addr), Some(n));
    }
}
