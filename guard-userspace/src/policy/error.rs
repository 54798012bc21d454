//! Errors and warnings of a policy. Every message names the file, the line, the column and the
//! field: `policy.yaml:12:7: spec.endpoints[1].ports[0]: port range "9000-80" is reversed`.

use std::{fmt, io, path::PathBuf};

/// Where something is in a policy source: `policy.yaml:12:7`. Line and column count from 1;
/// line 0 means the position is unknown (only the origin is shown).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub origin: String,
    pub line: usize,
    pub column: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            f.write_str(&self.origin)
        } else {
            write!(f, "{}:{}:{}", self.origin, self.line, self.column)
        }
    }
}

/// One finding at one field: `kind` is a [`Problem`] (an error) or a [`Note`] (a warning).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Diagnostic<K> {
    pub at: Location,
    /// The field, as serde_yaml_ng spells paths: `spec.endpoints[1].ports[0]`.
    pub field: String,
    pub kind: K,
}

/// A warning: the policy loads, but something in it probably does not do what its author meant.
pub type Warning = Diagnostic<Note>;

impl<K: fmt::Display> fmt::Display for Diagnostic<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}: {}", self.at, self.field, self.kind)
    }
}

/// Why a policy was rejected. The policy in force stays in force.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The policy file could not be read.
    #[error("{}: cannot read policy: {error}", path.display())]
    Io { path: PathBuf, error: io::Error },
    /// The source holds nothing but blank lines and comments.
    #[error("{origin}: the policy is empty")]
    Empty { origin: String },
    /// The YAML does not parse, or does not fit the schema (unknown field, wrong type, unknown
    /// variant, or a value that fails its own check such as a reversed port range).
    #[error("{at}: {message}")]
    Yaml {
        at: Location,
        /// The parser's message without its trailing position (which is in `at`).
        message: String,
        error: serde_yaml_ng::Error,
    },
    /// The policy parses but is inconsistent (duplicate names, a rule that matches nothing…).
    /// Holds at least one diagnostic, in source order of the checks.
    #[error("{}", Lines(.0))]
    Invalid(Vec<Diagnostic<Problem>>),
}

impl PolicyError {
    pub(crate) fn yaml(origin: &str, error: serde_yaml_ng::Error) -> Self {
        let full = error.to_string();
        let (at, message) = match error.location() {
            Some(loc) => {
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                let at = Location {
                    origin: origin.to_owned(),
                    line: loc.line(),
                    column: loc.column(),
                };
                (at, full.replacen(&suffix, "", 1))
            }
            None => {
                let at = Location {
                    origin: origin.to_owned(),
                    line: 0,
                    column: 0,
                };
                (at, full)
            }
        };
        Self::Yaml { at, message, error }
    }

    /// Where the (first) error is, when known.
    pub fn location(&self) -> Option<&Location> {
        match self {
            Self::Io { .. } | Self::Empty { .. } => None,
            Self::Yaml { at, .. } => Some(at),
            Self::Invalid(diags) => diags.first().map(|d| &d.at),
        }
    }
}

struct Lines<'a, K>(&'a [Diagnostic<K>]);

impl<K: fmt::Display> fmt::Display for Lines<'_, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{d}")?;
        }
        Ok(())
    }
}

/// What is wrong with one value or one part of a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error(
        "invalid name {name:?}: {reason} (names are 1-63 bytes of a-z, 0-9, '-', '_' and '.', starting with a letter or digit)"
    )]
    BadName { name: String, reason: &'static str },
    #[error(
        "invalid metadata.name {name:?}: {reason} (a lower-case DNS subdomain, at most 253 bytes)"
    )]
    BadResourceName { name: String, reason: &'static str },
    #[error("invalid program name {name:?}: {reason}")]
    BadProgram { name: String, reason: &'static str },
    #[error("invalid cgroup {text:?}: {reason}")]
    BadCgroup { text: String, reason: &'static str },
    #[error("invalid environment marker {text:?}: {reason}")]
    BadEnvMarker { text: String, reason: &'static str },
    #[error("invalid port {text:?}: expected a port (443) or a range (\"8000-8100\")")]
    BadPort { text: String },
    #[error("port {text:?} is out of range 1-65535")]
    PortOutOfRange { text: String },
    #[error("port range {text:?} is reversed")]
    ReversedPortRange { text: String },
    #[error("invalid CIDR {text:?}: {reason}")]
    BadCidr { text: String, reason: &'static str },
    #[error("invalid CIDR {text:?}: prefix length is longer than {max}")]
    CidrPrefixTooLong { text: String, max: u8 },
    #[error("invalid IP address {text:?}{}", if text.contains('/') { " (networks go under cidrs:)" } else { "" })]
    BadIp { text: String },
    #[error("invalid host {text:?}: {reason}")]
    BadHost { text: String, reason: &'static str },
    #[error("unknown host list {text:?} (known: {known})")]
    UnknownHostList { text: String, known: String },
    #[error("host {text:?} is an IP address: list it under ips:")]
    HostIsIp { text: String },
    #[error(
        "invalid unix socket {text:?}: {reason} (an absolute path such as /run/docker.sock, or @name for an abstract socket)"
    )]
    BadUnixSocket { text: String, reason: &'static str },
    #[error(
        "relative path {text:?}: paths are absolute (/var/lib/postgresql), in every home (~/.kube/config) or a file name in any directory (\"**/.env.production\")"
    )]
    RelativePath { text: String },
    #[error("invalid path {text:?}: {reason}")]
    BadPath { text: String, reason: &'static str },
    #[error("unknown capability {text:?} (expected a name such as CAP_SYS_ADMIN)")]
    BadCapability { text: String },
    #[error("duplicate rule name {name:?} (first used at {first})")]
    DuplicateRule { name: String, first: String },
    #[error("duplicate agent name {name:?} (first used at {first})")]
    DuplicateAgent { name: String, first: String },
    #[error("{what} {name:?} is already listed by agent {agent:?}")]
    DuplicateProgram {
        what: &'static str,
        name: String,
        agent: String,
    },
    #[error(
        "agent path {path:?} names a file in any directory: give the directory it is installed \
         in, or list the name under executables"
    )]
    AgentPathAnywhere { path: String },
    #[error("webhook {url:?}: {reason}")]
    BadWebhook { url: String, reason: String },
    #[error("{value} is out of range: {range}")]
    OutOfRange { value: String, range: String },
    #[error("agent matches nothing: give executables, scripts, env, paths, cgroups or containers")]
    AgentMatchesNothing,
    #[error(
        "container selector names nothing and would make every container an agent: give \
         image, name, labels, namespace or pod"
    )]
    ContainerSelectsAll,
    #[error("endpoint rule matches nothing: give at least one of cidrs, ips, hosts or unix")]
    EndpointMatchesNothing,
    #[error("allow-list entry matches nothing: give at least one of cidrs, ips or hosts")]
    AllowMatchesNothing,
    #[error("path rule matches nothing: paths is empty")]
    NoPaths,
    #[error("access is empty: give at least one of read, write, delete, exec")]
    EmptyAccess,
}

/// A warning about one value or one part of a policy.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Note {
    #[error(
        "executable {name:?} is longer than 15 bytes: the kernel matches the process name (comm), so only {kept:?} is compared"
    )]
    ExecutableTruncated { name: String, kept: String },
    #[error("script {name:?} is longer than {max} bytes: only {kept:?} is compared")]
    ScriptTruncated {
        name: String,
        kept: String,
        max: usize,
    },
    #[error("CIDR {text:?} has host bits set: it is read as {network}")]
    CidrHostBits { text: String, network: String },
    #[error("ports and protocol do not apply to unix sockets, and this rule lists no IP targets")]
    PortsWithoutIpTargets,
}

/// Where a field path is in `src`: 1-based (line, column) of its value.
///
/// serde_yaml_ng 0.10 has no spans in `Value` and none in the typed API either, so this walks
/// the document again with a `DeserializeSeed` that follows `field` and fails on purpose when it
/// reaches the value: serde_yaml_ng then stamps the error with the exact position of that
/// value (the position of a scalar, or the opening of a mapping or sequence). That is the
/// parser's own position, so flow style, quoting, comments and anchors are all handled. When
/// the field is absent (a missing key), the nearest present ancestor is returned instead.
/// Best effort: `None` only when not even the document root can be found.
pub(crate) fn locate(src: &str, field: &str) -> Option<(usize, usize)> {
    let segs = parse_field(field);
    (0..=segs.len())
        .rev()
        .find_map(|n| locate_exact(src, &segs[..n]))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Seg<'a> {
    Key(&'a str),
    Index(usize),
}

/// `spec.endpoints[1].ports[0]` → `[Key(spec), Key(endpoints), Index(1), Key(ports), Index(0)]`.
/// Keys of the schema contain neither '.' nor '['.
fn parse_field(field: &str) -> Vec<Seg<'_>> {
    let mut segs = Vec::new();
    for part in field.split('.').filter(|p| !p.is_empty()) {
        let mut rest = part;
        if let Some(open) = rest.find('[') {
            if open > 0 {
                segs.push(Seg::Key(&rest[..open]));
            }
            rest = &rest[open..];
            while let Some(tail) = rest.strip_prefix('[') {
                let Some(close) = tail.find(']') else { break };
                match tail[..close].parse() {
                    Ok(i) => segs.push(Seg::Index(i)),
                    Err(_) => break,
                }
                rest = &tail[close + 1..];
            }
        } else {
            segs.push(Seg::Key(rest));
        }
    }
    segs
}

/// Message of the deliberate error; contains a NUL so no real message can equal it.
const FOUND: &str = "\0guard-policy-locate";

fn locate_exact(src: &str, segs: &[Seg<'_>]) -> Option<(usize, usize)> {
    use serde::de::DeserializeSeed;
    let de = serde_yaml_ng::Deserializer::from_str(src);
    match Seek(segs).deserialize(de) {
        Ok(()) => None,
        Err(e) if e.to_string().contains(FOUND) => e.location().map(|l| (l.line(), l.column())),
        Err(_) => None,
    }
}

/// Follows the remaining path; errors with [`FOUND`] on the value at its end.
struct Seek<'a>(&'a [Seg<'a>]);

impl<'de> serde::de::DeserializeSeed<'de> for Seek<'_> {
    type Value = ();
    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl Seek<'_> {
    fn leaf<E: serde::de::Error>(&self) -> Result<(), E> {
        if self.0.is_empty() {
            Err(E::custom(FOUND))
        } else {
            Ok(())
        }
    }
}

macro_rules! seek_scalars {
    ($($method:ident($ty:ty)),* $(,)?) => {$(
        fn $method<E: serde::de::Error>(self, _: $ty) -> Result<(), E> {
            self.leaf()
        }
    )*};
}

impl<'de> serde::de::Visitor<'de> for Seek<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any value")
    }

    seek_scalars!(
        visit_bool(bool),
        visit_i64(i64),
        visit_u64(u64),
        visit_i128(i128),
        visit_u128(u128),
        visit_f64(f64),
        visit_str(&str),
    );

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.leaf()
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(FOUND));
        };
        while let Some(key) = map.next_key::<serde_yaml_ng::Value>()? {
            if matches!(first, Seg::Key(k) if key.as_str() == Some(k)) {
                return map.next_value_seed(Seek(rest));
            }
            map.next_value::<serde::de::IgnoredAny>()?;
        }
        Ok(())
    }

    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Some((first, rest)) = self.0.split_first() else {
            return Err(serde::de::Error::custom(FOUND));
        };
        let mut i = 0;
        loop {
            if *first == Seg::Index(i) {
                return seq.next_element_seed(Seek(rest)).map(|_| ());
            }
            if seq.next_element::<serde::de::IgnoredAny>()?.is_none() {
                return Ok(());
            }
            i += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: &str = "\
# comment
spec:
  endpoints:
    - name: a
      ports: [443]
    - { name: b, ports: [1, \"9000-80\"] }
  paths:
    - name: c
      paths:
        - /x
";

    #[test]
    fn parses_field_paths() {
        assert_eq!(
            parse_field("spec.endpoints[1].ports[0]"),
            [
                Seg::Key("spec"),
                Seg::Key("endpoints"),
                Seg::Index(1),
                Seg::Key("ports"),
                Seg::Index(0)
            ]
        );
        assert_eq!(parse_field(""), []);
    }

    #[test]
    fn locates_block_and_flow_values() {
        assert_eq!(locate(SRC, "spec.endpoints[0].name"), Some((4, 13)));
        assert_eq!(locate(SRC, "spec.endpoints[0].ports[0]"), Some((5, 15)));
        assert_eq!(locate(SRC, "spec.endpoints[1]"), Some((6, 7)));
        assert_eq!(locate(SRC, "spec.endpoints[1].ports[1]"), Some((6, 29)));
        assert_eq!(locate(SRC, "spec.paths[0].paths[0]"), Some((10, 11)));
    }

    #[test]
    fn missing_fields_fall_back_to_the_nearest_ancestor() {
        assert_eq!(locate(SRC, "spec.endpoints[0].access"), Some((4, 7)));
        assert_eq!(locate(SRC, "spec.endpoints[7]"), Some((4, 5)));
    }

    #[test]
    fn display_names_origin_line_column_and_field() {
        let d = Diagnostic {
            at: Location {
                origin: "policy.yaml".into(),
                line: 12,
                column: 7,
            },
            field: "spec.endpoints[1].ports[0]".into(),
            kind: Problem::ReversedPortRange {
                text: "9000-80".into(),
            },
        };
        assert_eq!(
            d.to_string(),
            "policy.yaml:12:7: spec.endpoints[1].ports[0]: port range \"9000-80\" is reversed"
        );
    }
}
