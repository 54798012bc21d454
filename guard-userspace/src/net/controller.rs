//! The network controller: owns the rule maps, installs each policy generation, keeps
//! hostname rules resolved, and responds to the kernel's network decisions.
//!
//! ## Swapping rules
//! A generation is installed in three steps: (1) its rules are written into its own half of
//! the rule array (the half the live trie entries do not point at), (2) every trie and unix
//! entry of the new plan is written (inserted or overwritten), (3) entries the new plan does
//! not have are deleted. Every lookup sees one whole rule set, old or new, for its
//! destination. During (2) some destinations already have the new rules and others still the
//! old ones; until (3) ends, a destination that the new policy drops is still enforced with
//! the old rules. No destination of both policies is ever unprotected. For hostname rules
//! this is what keeps the old addresses in force until the new set is installed.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use aya::maps::lpm_trie::Key;
use aya::maps::{HashMap, MapData};
use guard_common::{
    Tag,
    net::{
        Ip4Data, Ip6Data, RAW_RULE_ID, SECRETS_PENDING_RULE_ID, SECRETS_PENDING_SLOT,
        SECRETS_RULE_ID, SECRETS_SLOT, UnixKey,
    },
};
use hickory_resolver::TokioResolver;
use tokio::{sync::Notify, task::JoinSet, time::Instant};
use tracing::{info, warn};

use super::{
    NetError, NetMaps,
    deputies::{self, Protected, ScanContext},
    dns,
    plan::{self, Plan, UnixKeyBytes},
    unix_files,
};
use crate::{
    deputies::{Forwarder, Found},
    policy::{
        CompiledEndpointRule, CompiledPolicy, CompiledRawRule, CompiledSecrets, RAW_RULE_NAME,
        SECRETS_PENDING_RULE_NAME, SECRETS_RULE_NAME,
    },
    secrets::Taints,
};

/// How the controller finds names.
#[derive(Clone, Debug, Default)]
pub struct NetConfig {
    /// Name server for hostname rules; the system's when `None`.
    pub dns_server: Option<SocketAddr>,
}

impl NetConfig {
    /// From the environment (`GUARD_DNS_SERVER`).
    pub fn from_env() -> Result<Self, dns::DnsError> {
        Ok(Self {
            dns_server: dns::server_from_env()?,
        })
    }
}

/// Resolution state of one host of one rule.
#[derive(Clone, Debug)]
struct HostState {
    addrs: BTreeSet<IpAddr>,
    /// When to resolve again.
    due: Instant,
}

struct State {
    maps: RuleMaps,
    rules: Vec<CompiledEndpointRule>,
    /// `spec.rawSockets` (`None`: allow).
    raw: Option<CompiledRawRule>,
    /// `spec.secrets`.
    secrets: Option<CompiledSecrets>,
    /// `(rule id, host)` → addresses in force.
    hosts: BTreeMap<(u32, String), HostState>,
    generation: u32,
    /// Rule names by generation (the last [`NAMES_KEPT`]), for events decoded after a reload.
    /// Generations with the same names share one map, so a reload storm costs nothing.
    names: BTreeMap<u32, Arc<BTreeMap<u32, String>>>,
    /// The socket file of each unix name, as installed.
    unix_files: BTreeMap<String, Option<(u32, u64)>>,
    /// Executors and forwarders on the host, as last found.
    found: Found,
    /// The forwarders behind each rule made for them (see [`deputies::rules`]).
    tunnels: BTreeMap<u32, Vec<Forwarder>>,
}

/// The maps the controller writes (the tag map is kept apart, for kill-tree).
struct RuleMaps {
    net4: aya::maps::LpmTrie<MapData, Ip4Data, guard_common::net::RuleSet>,
    net6: aya::maps::LpmTrie<MapData, Ip6Data, guard_common::net::RuleSet>,
    unix: HashMap<MapData, UnixKey, guard_common::net::RuleSet>,
    rules: aya::maps::Array<MapData, guard_common::net::NetRule>,
    raw: aya::maps::Array<MapData, guard_common::net::NetRule>,
    secrets: aya::maps::Array<MapData, guard_common::net::NetRule>,
}

/// Shared handle on the controller.
#[derive(Clone)]
pub struct NetHandle {
    state: Arc<Mutex<State>>,
    pub(super) tags: Arc<HashMap<MapData, u32, Tag>>,
    resolver: Arc<Result<TokioResolver, String>>,
    wake: Arc<Notify>,
    /// Reason lines written lately (one per process and rule a second).
    pub(super) reasons: Arc<Mutex<crate::respond::Throttle>>,
    /// Why each tainted tree is tainted, for the secrets rule's reason line.
    pub(super) taints: Taints,
    /// Requests of `ask` rules.
    pub(super) requests: crate::requests::Requests,
    /// Where decisions made here are logged, once the pipeline runs.
    pub(super) sink: Arc<std::sync::OnceLock<crate::events::pipeline::EventSink>>,
    /// Freezes the trees `hold` rules name.
    pub(super) holder: crate::respond::Holder,
}

/// How long applying a policy waits for its new host names to resolve.
const APPLY_WAITS_FOR_DNS: Duration = Duration::from_secs(2);

/// Generations whose rule names are kept: enough that an event decoded behind a burst of
/// reloads (each one a generation) still names its rule.
const NAMES_KEPT: usize = 256;

impl NetHandle {
    /// Take the rule maps, leaving the rules pinned there in force until [`Self::apply`]
    /// installs the next generation, and start the DNS refresher.
    pub fn new(
        maps: NetMaps,
        config: &NetConfig,
        taints: Taints,
        requests: crate::requests::Requests,
        holder: crate::respond::Holder,
    ) -> Result<Self, NetError> {
        // A host without /etc/resolv.conf still enforces address and unix rules; host rules
        // then stay unresolved, with the reason, until the daemon is restarted with a resolver.
        let resolver = dns::resolver(config.dns_server).map_err(|e| {
            warn!(error = %e, "no DNS resolver: endpoint host rules cannot be resolved");
            e.to_string()
        });
        let NetMaps {
            net4,
            net6,
            unix,
            rules,
            raw,
            secrets,
            tags,
        } = maps;
        let maps = RuleMaps {
            net4,
            net6,
            unix,
            rules,
            raw,
            secrets,
        };
        let generation = current_generation(&maps) + 1;
        let handle = Self {
            tags: Arc::new(tags),
            state: Arc::new(Mutex::new(State {
                maps,
                rules: Vec::new(),
                raw: None,
                secrets: None,
                hosts: BTreeMap::new(),
                generation: generation - 1,
                names: BTreeMap::new(),
                unix_files: BTreeMap::new(),
                found: Found::default(),
                tunnels: BTreeMap::new(),
            })),
            resolver: Arc::new(resolver),
            wake: Arc::new(Notify::new()),
            reasons: Arc::default(),
            taints,
            requests,
            sink: Arc::default(),
            holder,
        };
        tokio::spawn(handle.clone().refresh_forever());
        tokio::spawn(handle.clone().recheck_unix_files());
        tokio::spawn(handle.clone().discover_forever());
        Ok(handle)
    }

    /// Install a policy's endpoint rules as the next generation. Hosts not known yet are
    /// resolved before the swap (each query bounded by [`dns::QUERY_TIMEOUT`]); hosts kept
    /// from the previous policy keep their addresses.
    pub async fn apply(&self, policy: &CompiledPolicy) -> Result<(), NetError> {
        let wanted: BTreeSet<(u32, String)> = policy
            .endpoints
            .iter()
            .flat_map(|r| r.hosts.iter().map(|h| (r.id, h.clone())))
            .collect();
        let known: BTreeSet<(u32, String)> = {
            let st = self.state.lock().expect("net state");
            st.hosts.keys().cloned().collect()
        };
        let fresh = self
            .resolve_all(
                wanted.difference(&known).cloned().collect(),
                Some(APPLY_WAITS_FOR_DNS),
            )
            .await;
        let mut st = self.state.lock().expect("net state");
        st.hosts.retain(|k, _| wanted.contains(k));
        st.hosts.extend(fresh);
        st.rules = policy.endpoints.clone();
        st.raw = policy.raw_sockets;
        st.secrets = Some(policy.secrets.clone());
        self.holder.set_settings(policy.hold);
        let generation = st.generation + 1;
        install(&mut st, generation)?;
        drop(st);
        self.wake.notify_one();
        Ok(())
    }

    /// Resolve `(rule, host)` pairs concurrently; failures get no addresses and are due for
    /// a retry. With a `deadline`, the pairs not answered by then are left to the refresher
    /// (due at once), so that a name server that does not answer cannot hold up a policy.
    async fn resolve_all(
        &self,
        pairs: Vec<(u32, String)>,
        deadline: Option<Duration>,
    ) -> Vec<((u32, String), HostState)> {
        let mut pending: BTreeSet<(u32, String)> = pairs.iter().cloned().collect();
        let mut set = JoinSet::new();
        for (rule, host) in pairs {
            let resolver = self.resolver.clone();
            set.spawn(async move {
                let r = match &*resolver {
                    Ok(resolver) => dns::resolve(resolver, &host).await,
                    Err(reason) => Err(dns::DnsError::NoResolver {
                        host: host.clone(),
                        reason: reason.clone(),
                    }),
                };
                ((rule, host), r)
            });
        }
        let mut out = Vec::new();
        let until = deadline.map(|d| tokio::time::Instant::now() + d);
        loop {
            let joined = match until {
                Some(until) => match tokio::time::timeout_at(until, set.join_next()).await {
                    Ok(joined) => joined,
                    Err(_) => break,
                },
                None => set.join_next().await,
            };
            let Some(joined) = joined else { break };
            let Ok((key, r)) = joined else { continue };
            pending.remove(&key);
            let state = match r {
                Ok((addrs, ttl)) => {
                    info!(host = %key.1, addrs = ?addrs, ttl_s = ttl.as_secs(), "resolved endpoint host");
                    HostState {
                        addrs,
                        due: Instant::now() + ttl,
                    }
                }
                Err(e) => {
                    warn!(error = %e, "endpoint host not resolved; retrying");
                    HostState {
                        addrs: BTreeSet::new(),
                        due: Instant::now() + dns::RETRY,
                    }
                }
            };
            out.push((key, state));
        }
        if !pending.is_empty() {
            warn!(
                hosts = pending.len(),
                "endpoint hosts not resolved in time: the policy is in force without them until \
                 they are"
            );
        }
        out.extend(pending.into_iter().map(|key| {
            (
                key,
                HostState {
                    addrs: BTreeSet::new(),
                    due: Instant::now(),
                },
            )
        }));
        out
    }

    /// Re-resolve each host when its answer expires; reinstall when an address set changes.
    async fn refresh_forever(self) {
        loop {
            let next = {
                let st = self.state.lock().expect("net state");
                st.hosts.values().map(|h| h.due).min()
            };
            match next {
                Some(due) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(due) => {}
                        () = self.wake.notified() => continue,
                    }
                }
                None => {
                    self.wake.notified().await;
                    continue;
                }
            }
            let now = Instant::now();
            let due: Vec<(u32, String)> = {
                let st = self.state.lock().expect("net state");
                let due = st.hosts.iter().filter(|(_, h)| h.due <= now);
                due.map(|(k, _)| k.clone()).collect()
            };
            let fresh = self.resolve_all(due, None).await;
            let mut st = self.state.lock().expect("net state");
            let mut changed = false;
            for (key, new) in fresh {
                let Some(old) = st.hosts.get_mut(&key) else {
                    continue; // dropped by a reload meanwhile
                };
                if new.addrs.is_empty() {
                    // Failed: keep the addresses in force, retry later.
                    old.due = new.due;
                    continue;
                }
                if new.addrs != old.addrs {
                    info!(host = %key.1, old = ?old.addrs, new = ?new.addrs, "endpoint host moved");
                    changed = true;
                }
                *old = new;
            }
            if changed {
                let generation = st.generation + 1;
                if let Err(e) = install(&mut st, generation) {
                    warn!(error = %e, "reinstalling endpoint rules after re-resolution failed");
                }
            }
        }
    }

    /// Look at the unix socket files again and again; reinstall when one was replaced (a
    /// new socket file is a new identity) or appeared.
    async fn recheck_unix_files(self) {
        let mut tick = tokio::time::interval(unix_files::RECHECK);
        loop {
            tick.tick().await;
            let mut st = self.state.lock().expect("net state");
            if st.generation == 0 || unix_files::files_of(st.unix_files.keys()) == st.unix_files {
                continue;
            }
            info!("a unix socket file of an endpoint rule changed; reinstalling");
            let generation = st.generation + 1;
            if let Err(e) = install(&mut st, generation) {
                warn!(error = %e, "reinstalling endpoint rules for a new socket file failed");
            }
        }
    }

    /// Look at the host again and again for executors and forwarders; reinstall when what is
    /// there changed.
    async fn discover_forever(self) {
        let mut tick = tokio::time::interval(crate::deputies::RESCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.discover_now().await;
        }
    }

    /// Look at the host once, and reinstall if what is there changed: at once, where a new
    /// listener of the daemon's own must be covered before it serves.
    pub async fn discover_now(&self) {
        let (ctx, previous) = {
            let st = self.state.lock().expect("net state");
            if st.generation == 0 {
                return;
            }
            let ctx = ScanContext {
                protected: Protected::new(&st.rules, &resolved(&st)),
                tags: self.tags.clone(),
            };
            (ctx, st.found.clone())
        };
        let scan = move || crate::deputies::scan(&ctx, &previous);
        let Ok(found) = tokio::task::spawn_blocking(scan).await else {
            return;
        };
        let mut st = self.state.lock().expect("net state");
        if found == st.found {
            return;
        }
        info!(
            servers = found.servers.values().map(Vec::len).sum::<usize>(),
            forwarders = found.forwarders.len(),
            "executors or forwarders on the host changed; reinstalling"
        );
        st.found = found;
        let generation = st.generation + 1;
        if let Err(e) = install(&mut st, generation) {
            warn!(error = %e, "reinstalling endpoint rules for the executors found failed");
        }
    }

    /// What the last host scan found, and the forwarders that lead to protected endpoints.
    pub fn found(&self) -> (Found, Vec<(String, Forwarder)>) {
        let st = self.state.lock().expect("net state");
        let names = st.names.get(&st.generation);
        let tunnels = st
            .tunnels
            .iter()
            .flat_map(|(id, list)| {
                let name = names.and_then(|n| n.get(id)).cloned().unwrap_or_default();
                list.iter().map(move |f| (name.clone(), f.clone()))
            })
            .collect();
        (st.found.clone(), tunnels)
    }

    /// `spec.secrets` in force, and the taints.
    pub fn secrets(&self) -> (Option<CompiledSecrets>, Taints) {
        let st = self.state.lock().expect("net state");
        (st.secrets.clone(), self.taints.clone())
    }

    /// The requests of `ask` rules.
    pub fn requests(&self) -> crate::requests::Requests {
        self.requests.clone()
    }

    /// The tag map (a second handle on its pin).
    pub fn tag_map(&self) -> Arc<HashMap<MapData, u32, Tag>> {
        Arc::clone(&self.tags)
    }

    /// Name of rule `id` of `generation`.
    pub fn rule_name(&self, generation: u32, id: u32) -> Option<String> {
        let st = self.state.lock().expect("net state");
        st.names.get(&generation)?.get(&id).cloned()
    }

    /// The host of rule `id` that resolved to `addr`, if any (of any rule, for the secrets
    /// rule, which names no hosts of its own).
    pub fn host_for(&self, id: u32, addr: IpAddr) -> Option<String> {
        let st = self.state.lock().expect("net state");
        let addr = crate::policy::canonical_addr(addr);
        let any = id == SECRETS_RULE_ID || id == SECRETS_PENDING_RULE_ID;
        st.hosts
            .iter()
            .find(|((rule, _), h)| {
                (any || *rule == id)
                    && h.addrs
                        .iter()
                        .any(|a| crate::policy::canonical_addr(*a) == addr)
            })
            .map(|((_, host), _)| host.clone())
    }
}

/// The addresses in force of each rule's hosts.
fn resolved(st: &State) -> BTreeMap<u32, BTreeSet<IpAddr>> {
    st.hosts
        .iter()
        .fold(BTreeMap::new(), |mut acc, ((rule, _), h)| {
            acc.entry(*rule)
                .or_insert_with(BTreeSet::new)
                .extend(&h.addrs);
            acc
        })
}

/// Highest generation written in the rule array (0 when empty): a restarted daemon continues
/// from it, so it never overwrites the half the pinned entries use.
fn current_generation(maps: &RuleMaps) -> u32 {
    (0..guard_common::net::RULE_SLOTS_TOTAL)
        .filter_map(|i| maps.rules.get(&i, 0).ok())
        .map(|r| r.generation)
        .max()
        .unwrap_or(0)
}

/// Compile and install generation `generation` of `st` (see the module docs for the order).
fn install(st: &mut State, generation: u32) -> Result<(), NetError> {
    let resolved = resolved(st);
    let protected = Protected::new(&st.rules, &resolved);
    let (rules, tunnels) = deputies::rules(&st.rules, &st.found, &protected);
    // The socket files as this plan saw them, for the recheck to compare with.
    let mut files = BTreeMap::new();
    let targets = |name: &str| {
        let t = unix_files::targets(name);
        files.insert(name.to_owned(), t.file);
        t
    };
    let plan = plan::plan(&rules, &resolved, targets, generation)?;
    st.unix_files = files;
    st.tunnels = tunnels;
    write_plan(&mut st.maps, &plan)?;
    let raw = plan::raw_rule(st.raw.as_ref(), generation);
    st.maps
        .raw
        .set(0, raw, 0)
        .map_err(map_err(guard_common::maps::NET_RAW))?;
    let [secrets, pending] = plan::secrets_rules(st.secrets.as_ref(), generation);
    for (slot, rule) in [(SECRETS_SLOT, secrets), (SECRETS_PENDING_SLOT, pending)] {
        st.maps
            .secrets
            .set(slot, rule, 0)
            .map_err(map_err(guard_common::maps::NET_SECRETS))?;
    }
    st.generation = generation;
    let mut names: BTreeMap<u32, String> = rules.iter().map(|r| (r.id, r.name.clone())).collect();
    names.insert(RAW_RULE_ID, RAW_RULE_NAME.to_owned());
    names.insert(SECRETS_RULE_ID, SECRETS_RULE_NAME.to_owned());
    names.insert(
        SECRETS_PENDING_RULE_ID,
        SECRETS_PENDING_RULE_NAME.to_owned(),
    );
    let names = match st.names.last_key_value() {
        Some((_, last)) if **last == names => Arc::clone(last),
        _ => Arc::new(names),
    };
    st.names.insert(generation, names);
    while st.names.len() > NAMES_KEPT {
        st.names.pop_first();
    }
    info!(
        generation,
        v4 = plan.v4.len(),
        v6 = plan.v6.len(),
        unix = plan.unix.len(),
        "endpoint rules installed"
    );
    Ok(())
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> NetError {
    move |source| NetError::Map { name, source }
}

fn write_plan(maps: &mut RuleMaps, plan: &Plan) -> Result<(), NetError> {
    use guard_common::maps::{NET_RULES, NET_UNIX, NET4, NET6};
    for (slot, rule) in &plan.rules {
        maps.rules.set(*slot, rule, 0).map_err(map_err(NET_RULES))?;
    }
    for (net, set) in &plan.v4 {
        let (len, addr) = plan::v4_key(net);
        let key = Key::new(len, Ip4Data { addr });
        maps.net4.insert(&key, set, 0).map_err(map_err(NET4))?;
    }
    for (net, set) in &plan.v6 {
        let (len, addr) = plan::v6_key(net);
        let key = Key::new(len, Ip6Data { addr, _pad: [0; 4] });
        maps.net6.insert(&key, set, 0).map_err(map_err(NET6))?;
    }
    for (key, set) in &plan.unix {
        let key: UnixKey = (*key).into();
        maps.unix.insert(key, set, 0).map_err(map_err(NET_UNIX))?;
    }
    // Stale entries last.
    let stale4: Vec<Key<Ip4Data>> = maps
        .net4
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            plan::v4_net(k.prefix_len(), k.data().addr).is_none_or(|n| !plan.v4.contains_key(&n))
        })
        .collect();
    for k in stale4 {
        maps.net4.remove(&k).map_err(map_err(NET4))?;
    }
    let stale6: Vec<Key<Ip6Data>> = maps
        .net6
        .keys()
        .filter_map(Result::ok)
        .filter(|k| {
            plan::v6_net(k.prefix_len(), k.data().addr).is_none_or(|n| !plan.v6.contains_key(&n))
        })
        .collect();
    for k in stale6 {
        maps.net6.remove(&k).map_err(map_err(NET6))?;
    }
    let stale_unix: Vec<UnixKey> = maps
        .unix
        .keys()
        .filter_map(Result::ok)
        .filter(|k| !plan.unix.contains_key(&UnixKeyBytes::from(*k)))
        .collect();
    for k in stale_unix {
        maps.unix.remove(&k).map_err(map_err(NET_UNIX))?;
    }
    Ok(())
}

impl crate::events::net::NetLabels for NetHandle {
    fn rule_name(&self, generation: u32, id: u32) -> Option<String> {
        NetHandle::rule_name(self, generation, id)
    }
    fn host_for(&self, id: u32, addr: std::net::IpAddr) -> Option<String> {
        NetHandle::host_for(self, id, addr)
    }
    fn deputy(&self, id: u32, dest: (Option<IpAddr>, u16, Option<&str>)) -> Option<String> {
        let st = self.state.lock().expect("net state");
        let kind = st
            .rules
            .iter()
            .find(|r| r.id == id)
            .and_then(|r| r.discover);
        deputies::describe(id, kind, dest, &st.found, &st.tunnels)
    }
}

/// Network enforcement acts on its decisions (reason line, kill-tree) as soon as they are read.
impl crate::events::Responder for NetHandle {
    fn respond(&self, raw: &[u8]) {
        NetHandle::respond(self, raw);
    }
}
