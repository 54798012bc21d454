//! The policy resource as written: a Kubernetes-style `GuardPolicy`, so the same file is a
//! ConfigMap now and a CRD later. Unknown fields are errors; every scalar is checked as it is
//! read (see `values.rs`), cross-field rules are checked in `validate.rs`.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use ipnet::IpNet;
use serde::Deserialize;

use super::{
    builtin::{Executors, StartupFiles},
    error::Warning,
    pattern::PathSpec,
    values::{
        Capability, CgroupPattern, EnvMarker, Hostname, Name, PortRange, Program, UnixSocket,
        scalars,
    },
};

/// A parsed and validated policy. Obtain it with [`Policy::from_yaml`], [`Policy::load`] or
/// [`Policy::embedded_default`].
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Policy {
    pub api_version: ApiVersion,
    pub kind: Kind,
    pub metadata: Metadata,
    pub spec: Spec,
    /// Warnings found while loading, with their locations.
    #[serde(skip)]
    pub(crate) warnings: Vec<Warning>,
}

/// The only `apiVersion` this guard reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum ApiVersion {
    #[serde(rename = "guard.dev/v1alpha1")]
    V1Alpha1,
}

/// The only `kind` this guard reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
pub enum Kind {
    GuardPolicy,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Metadata {
    pub name: String,
    /// Accepted so a manifest applied to a cluster loads unchanged; not used.
    #[serde(default)]
    pub namespace: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Spec {
    /// Mode of every rule that does not set its own.
    #[serde(default)]
    pub mode: Mode,
    #[serde(default)]
    pub agents: Vec<Agent>,
    #[serde(default)]
    pub endpoints: Vec<EndpointRule>,
    #[serde(default)]
    pub paths: Vec<PathRule>,
    #[serde(default)]
    pub self_protection: Option<SelfProtection>,
    /// What a tagged process gets for creating a raw IPv4/IPv6 socket or a packet socket:
    /// either writes its own headers, past every endpoint rule. `spec.mode` applies.
    #[serde(default)]
    pub raw_sockets: BuiltinAction,
    /// The built-in rule set `guard:executors` (see `builtin.rs`).
    #[serde(default)]
    pub executors: Executors,
    /// The built-in rule set `guard:startup-files`.
    #[serde(default)]
    pub startup_files: StartupFiles,
    /// The secrets rule: what an agent tree that read a secret meets on the network.
    #[serde(default)]
    pub secrets: Secrets,
    /// Who may approve or deny the requests of `ask` rules, besides root.
    #[serde(default)]
    pub approvers: Approvers,
    /// What becomes of a tree a `hold` rule froze when nobody decides.
    #[serde(default)]
    pub hold: Hold,
    /// Who hears of requests as they open and are decided.
    #[serde(default)]
    pub notify: Notify,
}

/// `spec.notify`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notify {
    #[serde(default)]
    pub webhook: Option<Webhook>,
}

/// `spec.notify.webhook`: every request's opening, approval, denial and expiry is POSTed to
/// `url`, signed with HMAC-SHA256 when `secretFile` names a key.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Webhook {
    /// `http://HOST[:PORT]/PATH`.
    pub url: String,
    #[serde(default)]
    pub format: WebhookFormat,
    /// A file holding the HMAC key (its first line), readable by root only; read when the
    /// webhook starts (at start, and when `spec.notify` changes). Without it, deliveries
    /// are unsigned.
    #[serde(default)]
    pub secret_file: Option<std::path::PathBuf>,
    /// How long one delivery may take (`5s`; 1 s to 60 s).
    #[serde(
        default = "Webhook::default_timeout",
        deserialize_with = "webhook_timeout"
    )]
    pub timeout: std::time::Duration,
    /// Further attempts after a failed one, with doubling waits from 1 s (0 to 10).
    #[serde(default = "Webhook::default_retries")]
    pub retries: u8,
    /// Deliveries waiting at most; past it new ones are dropped and counted (1 to 10000).
    #[serde(default = "Webhook::default_queue")]
    pub queue: u16,
}

impl Webhook {
    fn default_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(5)
    }
    fn default_retries() -> u8 {
        3
    }
    fn default_queue() -> u16 {
        256
    }
}

fn webhook_timeout<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    let t = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!("{text:?} is not a duration such as 5s: {e}"))
    })?;
    if !(1..=60).contains(&t.as_secs()) {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is out of range: a delivery may take from 1s to 60s"
        )));
    }
    Ok(t)
}

/// Host, port and path of a webhook URL this build can deliver to (`http://` only).
pub fn webhook_target(url: &str) -> Result<(String, u16, String), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e| format!("not a URL ({e}); write http://HOST[:PORT]/PATH"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(
                "https is not supported by this build (it has no TLS): deliver to a \
                        relay over http on the node, such as a local proxy that forwards to \
                        the https endpoint"
                    .into(),
            );
        }
        _ => return Err("write http://HOST[:PORT]/PATH".into()),
    }
    let host = uri
        .host()
        .filter(|h| !h.is_empty())
        .ok_or("the URL has no host")?
        .trim_matches(['[', ']'])
        .to_owned();
    let path = uri
        .path_and_query()
        .map_or("/".to_owned(), |p| p.as_str().to_owned());
    Ok((host, uri.port_u16().unwrap_or(80), path))
}

/// The body a webhook gets.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WebhookFormat {
    /// guard's own JSON document.
    #[default]
    Json,
    /// `{"text": …}`, as Slack's incoming webhooks (and Mattermost, Rocket.Chat) take it.
    Slack,
}

/// `spec.hold`: a tree a `hold` rule froze is thawed or killed after `timeout` if nobody
/// decided (`guard thaw ROOT`, `guard kill ROOT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hold {
    /// `10m`, `90s`, `1h` (1 s to 24 h).
    #[serde(default = "Hold::default_timeout", deserialize_with = "hold_timeout")]
    pub timeout: std::time::Duration,
    #[serde(default)]
    pub then: HoldThen,
}

fn hold_timeout<'de, D: serde::Deserializer<'de>>(d: D) -> Result<std::time::Duration, D::Error> {
    let text = String::deserialize(d)?;
    let t = humantime::parse_duration(&text).map_err(|e| {
        serde::de::Error::custom(format!(
            "{text:?} is not a duration such as 10m or 90s: {e}"
        ))
    })?;
    if !(1..=24 * 3600).contains(&t.as_secs()) {
        return Err(serde::de::Error::custom(format!(
            "{text:?} is out of range: a hold lasts from 1s to 24h"
        )));
    }
    Ok(t)
}

impl Hold {
    fn default_timeout() -> std::time::Duration {
        std::time::Duration::from_secs(600)
    }
}

impl Default for Hold {
    fn default() -> Self {
        Self {
            timeout: Self::default_timeout(),
            then: HoldThen::Kill,
        }
    }
}

/// What a hold's timeout does.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HoldThen {
    #[default]
    Kill,
    Thaw,
}

/// `spec.approvers`: users (names or uids) and groups (names or gids) whose untagged
/// processes may answer requests (`guard approve`, `guard deny`). Root always may; a tagged
/// process never may, whoever runs it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Approvers {
    #[serde(default)]
    pub users: Vec<String>,
    #[serde(default)]
    pub groups: Vec<String>,
}

/// `spec.secrets`. What agents read is scanned for credentials wherever the tier can see
/// reads (`guard status` says where); a tree that read one is *tainted*, from its root, for
/// as long as it lives.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Secrets {
    /// What a tainted tree's connect or send to an IP destination not on `allow` gets
    /// (`allow`: nothing; the reads are still inventoried).
    #[serde(default = "BuiltinAction::audit")]
    pub taint: BuiltinAction,
    /// Overrides `spec.mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Destinations a tainted tree may still reach: package registries, the repository's
    /// git remote. Never overrides an endpoint rule.
    #[serde(default)]
    pub allow: Vec<Destinations>,
}

impl Default for Secrets {
    fn default() -> Self {
        Self {
            taint: BuiltinAction::Audit,
            mode: None,
            allow: Vec::new(),
        }
    }
}

/// IP destinations, in the forms of an endpoint rule.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Destinations {
    pub name: Name,
    #[serde(default, deserialize_with = "scalars")]
    pub cidrs: Vec<IpNet>,
    #[serde(default, deserialize_with = "scalars")]
    pub ips: Vec<IpAddr>,
    #[serde(default)]
    pub hosts: Vec<Hostname>,
    /// Empty: every port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
}

/// The action of a built-in rule (`spec.rawSockets`, an entry of `spec.executors`…), or
/// `allow` to turn the rule off.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BuiltinAction {
    #[default]
    Deny,
    Kill,
    KillTree,
    Audit,
    Allow,
}

impl BuiltinAction {
    fn audit() -> Self {
        Self::Audit
    }

    /// The rule's action; `None` for `allow`.
    pub fn action(self) -> Option<Action> {
        match self {
            Self::Deny => Some(Action::Deny),
            Self::Kill => Some(Action::Kill),
            Self::KillTree => Some(Action::KillTree),
            Self::Audit => Some(Action::Audit),
            Self::Allow => None,
        }
    }
}

/// `enforce`: rules act as written. `audit`: rules only record what they would have done.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Audit,
}

/// What a rule does to a matching operation of a tagged process.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Action {
    /// Fail the operation with EPERM.
    #[default]
    Deny,
    /// Deny, then SIGKILL the offending process.
    Kill,
    /// Deny, then kill every process of the agent tree.
    KillTree,
    /// Allow and record.
    Audit,
    /// Deny now and open a request for a human (`guard requests`, `guard approve`): an
    /// approval lets the tree retry, for a time. Endpoint rules only.
    Ask,
    /// Deny, and freeze the whole agent tree until a human thaws or kills it (`guard thaw`,
    /// `guard kill`); `spec.hold` says what happens when nobody does. Endpoint rules only.
    Hold,
    /// An entry of the secrets allow-list: exempts its destinations from the secrets rule,
    /// and decides nothing else. Never written in a policy's own rules.
    #[serde(skip_deserializing)]
    Allow,
}

impl Action {
    /// How strong the action is where several rules match: the strongest decides.
    pub fn strength(self) -> u8 {
        match self {
            Action::Allow | Action::Audit => 0,
            Action::Ask => 1,
            Action::Deny => 2,
            Action::Hold => 3,
            Action::Kill => 4,
            Action::KillTree => 5,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    #[default]
    Any,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Access {
    Read,
    Write,
    /// unlink, rmdir, rename away, truncate.
    Delete,
    Exec,
}

/// A known agent: a process that execs one of `executables` (compared with the kernel's
/// `comm`, at most 15 bytes), or an interpreter (`node`, `python3`, …) running one of
/// `scripts`, becomes the root of a tagged tree.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    pub name: Name,
    #[serde(default)]
    pub executables: Vec<Program>,
    #[serde(default)]
    pub scripts: Vec<Program>,
    /// Environment markers: a process exec'd with one becomes the root of a tree.
    #[serde(default)]
    pub env: Vec<EnvMarker>,
    /// Where the agent is installed: an executable that is one of these files, or below one
    /// of these directories (globs name entries of a directory; `~` is every home).
    #[serde(default)]
    pub paths: Vec<PathSpec>,
    /// Cgroups that are the agent as a whole (a CI runner's unit, an agent pod): every process
    /// in one, or in a cgroup below it, is tagged, and so is every process that joins.
    #[serde(default)]
    pub cgroups: Vec<CgroupPattern>,
    /// Containers that are the agent as a whole: every process in a matching container is
    /// tagged (`kubectl exec` and `docker exec` sessions into it too).
    #[serde(default)]
    pub containers: Vec<ContainerSelector>,
}

/// A container by what its runtime reports: every field given must match (globs; `labels`:
/// each named label must be present with a matching value). `name` is the runtime's name or
/// the Kubernetes container name; `namespace` and `pod` are Kubernetes', where known.
#[derive(
    Clone, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Deserialize, serde::Serialize,
)]
#[serde(deny_unknown_fields)]
pub struct ContainerSelector {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub labels: std::collections::BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
}

impl ContainerSelector {
    /// Whether the selector names anything at all.
    pub fn is_empty(&self) -> bool {
        self.image.is_none()
            && self.name.is_none()
            && self.labels.is_empty()
            && self.namespace.is_none()
            && self.pod.is_none()
    }
}

/// Network destinations tagged processes must not reach.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EndpointRule {
    pub name: Name,
    #[serde(default, deserialize_with = "scalars")]
    pub cidrs: Vec<IpNet>,
    #[serde(default, deserialize_with = "scalars")]
    pub ips: Vec<IpAddr>,
    /// Resolved (and refreshed) by the daemon, never here.
    #[serde(default)]
    pub hosts: Vec<Hostname>,
    /// Empty: every port.
    #[serde(default)]
    pub ports: Vec<PortRange>,
    #[serde(default)]
    pub protocol: Protocol,
    #[serde(default)]
    pub unix: Vec<UnixSocket>,
    #[serde(default)]
    pub action: Action,
    /// Overrides `spec.mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// Files and directories tagged processes must not access in the listed ways.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    pub name: Name,
    pub paths: Vec<PathSpec>,
    pub access: Vec<Access>,
    #[serde(default)]
    pub action: Action,
    /// Overrides `spec.mode`.
    #[serde(default)]
    pub mode: Option<Mode>,
}

/// Capabilities removed from the agent roots guard starts (`guard run`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct SelfProtection {
    #[serde(default)]
    pub drop_capabilities: Vec<Capability>,
}

impl Policy {
    /// Warnings found when the policy was loaded (empty for a policy built in code).
    pub fn warnings(&self) -> &[Warning] {
        &self.warnings
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Enforce => "enforce",
            Self::Audit => "audit",
        })
    }
}

/// The policy accepts the actions implemented so far; the kernel records and the event schema
/// use the shared vocabulary.
impl From<Action> for guard_common::decision::Action {
    fn from(a: Action) -> Self {
        match a {
            Action::Deny => Self::Deny,
            Action::Kill => Self::Kill,
            Action::KillTree => Self::KillTree,
            Action::Audit => Self::Audit,
            Action::Ask => Self::Ask,
            Action::Hold => Self::Hold,
            Action::Allow => Self::Allow,
        }
    }
}

impl Action {
    /// The id kernel rule maps carry.
    pub fn id(self) -> u32 {
        guard_common::decision::Action::from(self).id()
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(guard_common::decision::Action::from(*self).name())
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Tcp => "tcp",
            Self::Udp => "udp",
            Self::Any => "any",
        })
    }
}

impl fmt::Display for Access {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad(match self {
            Self::Read => "read",
            Self::Write => "write",
            Self::Delete => "delete",
            Self::Exec => "exec",
        })
    }
}

impl fmt::Display for ApiVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("guard.dev/v1alpha1")
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.pad("GuardPolicy")
    }
}
