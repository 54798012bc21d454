//! Scalar values of a policy, each checked while it is read: a bad value is reported by the
//! parser at its own line and column, and the model only ever holds valid values.

use std::{fmt, marker::PhantomData, net::IpAddr};

use ipnet::IpNet;
use serde::de::{self, Deserialize, Deserializer, Visitor};

use super::error::Problem;

/// A value read from one YAML scalar. Plain scalars such as `443` or `true` are read as their
/// text, so names like `1password` need no quotes.
pub(crate) trait Scalar: Sized {
    const EXPECTING: &'static str;
    fn parse(text: &str) -> Result<Self, Problem>;
}

struct ScalarVisitor<T>(PhantomData<T>);

impl<T: Scalar> Visitor<'_> for ScalarVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(T::EXPECTING)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        // Raised inside the visitor so serde_yaml_ng stamps it with the scalar's position.
        T::parse(v).map_err(E::custom)
    }
}

pub(crate) fn deserialize_one<'de, D: Deserializer<'de>, T: Scalar>(d: D) -> Result<T, D::Error> {
    d.deserialize_str(ScalarVisitor(PhantomData))
}

/// `deserialize_with` for a list of foreign scalar types (`IpNet`, `IpAddr`).
pub(crate) fn scalars<'de, D: Deserializer<'de>, T: Scalar>(d: D) -> Result<Vec<T>, D::Error> {
    struct One<T>(T);
    impl<'de, T: Scalar> Deserialize<'de> for One<T> {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            deserialize_one(d).map(One)
        }
    }
    Ok(Vec::<One<T>>::deserialize(d)?
        .into_iter()
        .map(|o| o.0)
        .collect())
}

macro_rules! scalar_newtype {
    ($($ty:ident),* $(,)?) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                deserialize_one(d)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    )*};
}

scalar_newtype!(
    Name,
    Program,
    EnvMarker,
    CgroupPattern,
    Hostname,
    UnixSocket
);

/// Name of a rule or an agent: `[a-z0-9][a-z0-9-_.]*`, at most 63 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Name(String);

impl Name {
    pub const MAX_LEN: usize = 63;

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Scalar for Name {
    const EXPECTING: &'static str = "a name";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadName {
                name: text.to_owned(),
                reason,
            })
        };
        let Some(first) = text.bytes().next() else {
            return bad("it is empty");
        };
        if text.len() > Self::MAX_LEN {
            return bad("it is longer than 63 bytes");
        }
        if !(first.is_ascii_lowercase() || first.is_ascii_digit()) {
            return bad("it must start with a lower-case letter or a digit");
        }
        if !text.bytes().all(|c| {
            c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'-' | b'_' | b'.')
        }) {
            return bad("it contains a character other than a-z, 0-9, '-', '_' or '.'");
        }
        Ok(Self(text.to_owned()))
    }
}

/// An executable basename or a script name, as the kernel compares it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Program(String);

impl Program {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Scalar for Program {
    const EXPECTING: &'static str = "a program name";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadProgram {
                name: text.to_owned(),
                reason,
            })
        };
        if text.is_empty() {
            bad("it is empty")
        } else if text.contains('/') {
            bad("it contains '/': give the basename (claude), not a path")
        } else if text.contains('\0') {
            bad("it contains a NUL byte")
        } else if text == "." || text == ".." {
            bad("it is not a file name")
        } else {
            Ok(Self(text.to_owned()))
        }
    }
}

/// An environment marker: `NAME=VALUE` (that value exactly), `NAME=PREFIX*` (a value that
/// starts with `PREFIX`) or `NAME=*` (any value). The name always matches exactly, so
/// `AGENT=*` does not match `AGENT_ID`.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct EnvMarker(String);

impl EnvMarker {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl Scalar for EnvMarker {
    const EXPECTING: &'static str = "an environment marker (NAME=VALUE)";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadEnvMarker {
                text: text.to_owned(),
                reason,
            })
        };
        let Some((name, value, prefix)) = guard_common::agent::split_marker(text.as_bytes()) else {
            return bad("expected NAME=VALUE, NAME=PREFIX* or NAME=*");
        };
        let name_ok = name
            .first()
            .is_some_and(|c| c.is_ascii_alphabetic() || *c == b'_')
            && name.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'_');
        if !name_ok {
            return bad("the name must be letters, digits and '_', not starting with a digit");
        }
        if value.contains(&0) {
            return bad("it contains a NUL byte");
        }
        if value.iter().any(|c| matches!(c, b'*' | b'?' | b'[')) {
            return bad(
                "only a trailing '*' is supported: the kernel compares the value, or a prefix of it",
            );
        }
        if guard_common::agent::EnvKey::marker(name, value, prefix).is_none() {
            return bad(if prefix {
                "it is longer than 63 bytes, which the kernel compares"
            } else {
                "it is longer than 62 bytes: the kernel compares 63 bytes and the end of the value"
            });
        }
        Ok(Self(text.to_owned()))
    }
}

/// A cgroup v2 path as `/proc/PID/cgroup` shows it (`/system.slice/ci-runner.service`), with
/// globs in its components (`*`, `?`, `[…]`) and `**` for any number of components.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CgroupPattern(String);

impl CgroupPattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Does the cgroup at `path` (absolute, from the cgroup2 root) match?
    pub fn matches(&self, path: &str) -> bool {
        cgroup_match(self.0.as_str(), path)
    }
}

/// [`CgroupPattern::matches`] on the pattern's text.
pub fn cgroup_match(pattern: &str, path: &str) -> bool {
    fn parts(s: &str) -> Vec<&str> {
        s.split('/').filter(|p| !p.is_empty()).collect()
    }
    fn go(p: &[&str], c: &[&str]) -> bool {
        match p.split_first() {
            None => c.is_empty(),
            Some((&"**", rest)) => (0..=c.len()).any(|i| go(rest, &c[i..])),
            Some((head, rest)) => c
                .split_first()
                .is_some_and(|(first, tail)| super::glob_match(head, first) && go(rest, tail)),
        }
    }
    go(&parts(pattern), &parts(path))
}

impl Scalar for CgroupPattern {
    const EXPECTING: &'static str = "a cgroup path (/system.slice/ci-runner.service)";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadCgroup {
                text: text.to_owned(),
                reason,
            })
        };
        if !text.starts_with('/') {
            return bad("it must start with '/': the path as /proc/PID/cgroup shows it");
        }
        if text.starts_with("/sys/fs/cgroup") {
            return bad("give the path inside the cgroup hierarchy, without /sys/fs/cgroup");
        }
        if text.contains('\0') {
            return bad("it contains a NUL byte");
        }
        if text.split('/').any(|p| p == "." || p == "..") {
            return bad("it contains a '.' or '..' component");
        }
        Ok(Self(text.to_owned()))
    }
}

/// A DNS name, resolved and refreshed by the daemon, or `@list`, a named host list
/// (`hostlists.rs`). Stored lower-case without a trailing dot.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Hostname(String);

impl Hostname {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The DNS names it stands for: itself, or every host of its list.
    pub fn names(&self) -> Vec<String> {
        match self.0.strip_prefix('@').and_then(super::hostlists::lookup) {
            Some(hosts) => hosts.iter().map(|h| (*h).to_owned()).collect(),
            None => vec![self.0.clone()],
        }
    }
}

impl Scalar for Hostname {
    const EXPECTING: &'static str = "a host name";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadHost {
                text: text.to_owned(),
                reason,
            })
        };
        if let Some(list) = text.strip_prefix('@') {
            return match super::hostlists::lookup(list) {
                Some(_) => Ok(Self(text.to_owned())),
                None => Err(Problem::UnknownHostList {
                    text: text.to_owned(),
                    known: super::hostlists::names(),
                }),
            };
        }
        if text.contains("://") {
            return bad("hosts take a DNS name, not a URL: drop the scheme");
        }
        if text.chars().any(char::is_whitespace) {
            return bad("it contains whitespace");
        }
        if text.trim_matches(['[', ']']).parse::<IpAddr>().is_ok() {
            return Err(Problem::HostIsIp {
                text: text.to_owned(),
            });
        }
        if text.contains('/') {
            return bad("it contains '/': hosts take a DNS name, not a URL");
        }
        if text.contains(':') {
            return bad("it contains ':': put the port under ports:");
        }
        if text.contains('*') {
            return bad("wildcards cannot be resolved: list each name");
        }
        let name = text.strip_suffix('.').unwrap_or(text);
        if name.is_empty() {
            return bad("it is empty");
        }
        if name.len() > 253 {
            return bad("it is longer than 253 bytes");
        }
        for label in name.split('.') {
            if label.is_empty() {
                return bad("it has an empty label");
            }
            if label.len() > 63 {
                return bad("a label is longer than 63 bytes");
            }
            if !label
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return bad("it contains a character other than a-z, 0-9, '-', '_' or '.'");
            }
            if label.starts_with('-') || label.ends_with('-') {
                return bad("a label starts or ends with '-'");
            }
        }
        if name
            .rsplit('.')
            .next()
            .is_some_and(|tld| tld.bytes().all(|c| c.is_ascii_digit()))
        {
            return bad("its last label is numeric: is this a malformed IP address?");
        }
        Ok(Self(name.to_ascii_lowercase()))
    }
}

/// A unix socket: an absolute path, or `@name` for an abstract socket.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnixSocket(String);

impl UnixSocket {
    /// Longest name that fits `sun_path` (108 bytes, with the NUL terminator or the leading
    /// NUL of an abstract name).
    pub const MAX_LEN: usize = 107;

    pub fn as_str(&self) -> &str {
        &self.0
    }

    pub fn is_abstract(&self) -> bool {
        self.0.starts_with('@')
    }
}

impl Scalar for UnixSocket {
    const EXPECTING: &'static str = "a unix socket path";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadUnixSocket {
                text: text.to_owned(),
                reason,
            })
        };
        let name_len = text.strip_prefix('@').map_or(text.len(), str::len);
        if text == "@" {
            bad("the abstract name is empty")
        } else if !(text.starts_with('/') || text.starts_with('@')) {
            bad("it is relative")
        } else if text.contains('\0') {
            bad("it contains a NUL byte")
        } else if name_len > Self::MAX_LEN {
            bad("it is longer than 107 bytes and does not fit sun_path")
        } else {
            Ok(Self(text.to_owned()))
        }
    }
}

/// A port or an inclusive port range. Written `443` or `"8000-8100"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    fn parse(text: &str) -> Result<Self, Problem> {
        let port = |s: &str| -> Result<u16, Problem> {
            let s = s.trim();
            if s.is_empty() || !s.bytes().all(|c| c.is_ascii_digit()) {
                return Err(Problem::BadPort {
                    text: text.to_owned(),
                });
            }
            match s.parse::<u32>() {
                Ok(n @ 1..=65535) => Ok(n as u16),
                _ => Err(Problem::PortOutOfRange {
                    text: text.to_owned(),
                }),
            }
        };
        let (start, end) = match text.split_once('-') {
            Some((a, b)) => (port(a)?, port(b)?),
            None => {
                let p = port(text)?;
                (p, p)
            }
        };
        if start > end {
            return Err(Problem::ReversedPortRange {
                text: text.to_owned(),
            });
        }
        Ok(Self { start, end })
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}", self.start)
        } else {
            write!(f, "{}-{}", self.start, self.end)
        }
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PortRange;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port (443) or a port range (\"8000-8100\")")
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortRange, E> {
                PortRange::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortRange, E> {
                Err(E::custom(Problem::PortOutOfRange {
                    text: v.to_string(),
                }))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortRange, E> {
                PortRange::parse(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

impl Scalar for IpNet {
    const EXPECTING: &'static str = "a CIDR network";

    fn parse(text: &str) -> Result<Self, Problem> {
        let bad = |reason| {
            Err(Problem::BadCidr {
                text: text.to_owned(),
                reason,
            })
        };
        let Some((addr, prefix)) = text.split_once('/') else {
            return bad(
                "no prefix length: write it as ADDRESS/LENGTH, or list a single address under ips:",
            );
        };
        let Ok(addr) = addr.parse::<IpAddr>() else {
            return bad("the address is not an IPv4 or IPv6 address");
        };
        let Ok(prefix) = prefix.parse::<u8>() else {
            return bad("the prefix length is not a number");
        };
        IpNet::new(addr, prefix).map_err(|_| Problem::CidrPrefixTooLong {
            text: text.to_owned(),
            max: if addr.is_ipv4() { 32 } else { 128 },
        })
    }
}

impl Scalar for IpAddr {
    const EXPECTING: &'static str = "an IP address";

    fn parse(text: &str) -> Result<Self, Problem> {
        text.parse().map_err(|_| Problem::BadIp {
            text: text.to_owned(),
        })
    }
}

/// A Linux capability, written `CAP_SYS_ADMIN` (case-insensitive; the `CAP_` prefix may be
/// left out).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Capability(u8);

/// Capability names by number (`include/uapi/linux/capability.h`, up to Linux 6.x).
const CAPABILITIES: [&str; 41] = [
    "CHOWN",
    "DAC_OVERRIDE",
    "DAC_READ_SEARCH",
    "FOWNER",
    "FSETID",
    "KILL",
    "SETGID",
    "SETUID",
    "SETPCAP",
    "LINUX_IMMUTABLE",
    "NET_BIND_SERVICE",
    "NET_BROADCAST",
    "NET_ADMIN",
    "NET_RAW",
    "IPC_LOCK",
    "IPC_OWNER",
    "SYS_MODULE",
    "SYS_RAWIO",
    "SYS_CHROOT",
    "SYS_PTRACE",
    "SYS_PACCT",
    "SYS_ADMIN",
    "SYS_BOOT",
    "SYS_NICE",
    "SYS_RESOURCE",
    "SYS_TIME",
    "SYS_TTY_CONFIG",
    "MKNOD",
    "LEASE",
    "AUDIT_WRITE",
    "AUDIT_CONTROL",
    "SETFCAP",
    "MAC_OVERRIDE",
    "MAC_ADMIN",
    "SYSLOG",
    "WAKE_ALARM",
    "BLOCK_SUSPEND",
    "AUDIT_READ",
    "PERFMON",
    "BPF",
    "CHECKPOINT_RESTORE",
];

impl Capability {
    /// The capability number (`CAP_SYS_ADMIN` = 21).
    pub fn number(self) -> u8 {
        self.0
    }

    /// The capability numbered `n`, if there is one.
    pub fn from_number(n: u8) -> Option<Self> {
        (usize::from(n) < CAPABILITIES.len()).then_some(Self(n))
    }

    /// What `guard run` drops when the policy has no `selfProtection` section: what an agent
    /// never needs and an escape always does (remount, detach programs, load modules,
    /// ptrace other processes, reconfigure the network, raw device I/O).
    pub fn default_drops() -> Vec<Self> {
        [
            "SYS_ADMIN",
            "BPF",
            "PERFMON",
            "SYS_PTRACE",
            "SYS_MODULE",
            "NET_ADMIN",
            "SYS_RAWIO",
        ]
        .iter()
        .filter_map(|n| CAPABILITIES.iter().position(|c| c == n))
        .filter_map(|i| u8::try_from(i).ok())
        .map(Self)
        .collect()
    }
}

impl fmt::Display for Capability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "CAP_{}", CAPABILITIES[usize::from(self.0)])
    }
}

impl Scalar for Capability {
    const EXPECTING: &'static str = "a capability name";

    fn parse(text: &str) -> Result<Self, Problem> {
        let upper = text.to_ascii_uppercase();
        let bare = upper.strip_prefix("CAP_").unwrap_or(&upper);
        CAPABILITIES
            .iter()
            .position(|c| *c == bare)
            .and_then(|i| u8::try_from(i).ok())
            .map(Self)
            .ok_or_else(|| Problem::BadCapability {
                text: text.to_owned(),
            })
    }
}

impl<'de> Deserialize<'de> for Capability {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        deserialize_one(d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(Name::parse("prod-db_2.x").is_ok());
        assert!(Name::parse(&"a".repeat(63)).is_ok());
        for bad in ["", "Prod", "-x", "a b", &"a".repeat(64)] {
            assert!(
                matches!(Name::parse(bad), Err(Problem::BadName { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn cgroup_patterns() {
        let m = |p: &str, c: &str| CgroupPattern::parse(p).unwrap().matches(c);
        assert!(m(
            "/system.slice/ci-runner.service",
            "/system.slice/ci-runner.service"
        ));
        assert!(!m("/system.slice/ci-runner.service", "/system.slice"));
        assert!(m(
            "/system.slice/ci-*.service",
            "/system.slice/ci-7.service"
        ));
        assert!(m(
            "/kubepods.slice/**/agent-*.scope",
            "/kubepods.slice/a/b/agent-1.scope"
        ));
        assert!(m("/kubepods.slice/**", "/kubepods.slice"));
        assert!(!m("/kubepods.slice/*", "/kubepods.slice/a/b"));
        for bad in ["system.slice", "/sys/fs/cgroup/x", "/a/../b"] {
            assert!(CgroupPattern::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_markers() {
        for good in ["CURSOR_AGENT=1", "AGENT=*", "ROLE=agent-*", "_X=", "A1=b c"] {
            assert!(EnvMarker::parse(good).is_ok(), "{good}");
        }
        for bad in [
            "CURSOR_AGENT",
            "=1",
            "1A=x",
            "A-B=1",
            "A=*x",
            "A=x?",
            "A=[ab]",
        ] {
            assert!(EnvMarker::parse(bad).is_err(), "{bad}");
        }
        assert!(EnvMarker::parse(&format!("A={}", "x".repeat(61))).is_err());
        assert!(EnvMarker::parse(&format!("A={}*", "x".repeat(61))).is_ok());
    }

    #[test]
    fn programs() {
        assert!(Program::parse("cursor-agent").is_ok());
        for bad in ["", "/usr/bin/claude", "bin/x", ".."] {
            assert!(Program::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports() {
        assert_eq!(
            PortRange::parse("443"),
            Ok(PortRange {
                start: 443,
                end: 443
            })
        );
        assert_eq!(
            PortRange::parse("8000-8100"),
            Ok(PortRange {
                start: 8000,
                end: 8100
            })
        );
        assert!(matches!(
            PortRange::parse("9000-80"),
            Err(Problem::ReversedPortRange { .. })
        ));
        for out in ["0", "65536", "1-70000"] {
            assert!(
                matches!(PortRange::parse(out), Err(Problem::PortOutOfRange { .. })),
                "{out}"
            );
        }
        for bad in ["http", "-5", "1-", "1-2-3", "+5"] {
            assert!(
                matches!(PortRange::parse(bad), Err(Problem::BadPort { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn hosts() {
        assert_eq!(
            Hostname::parse("Backboard.Railway.app.").unwrap().as_str(),
            "backboard.railway.app"
        );
        assert!(Hostname::parse("localhost").is_ok());
        assert!(matches!(
            Hostname::parse("10.0.0.1"),
            Err(Problem::HostIsIp { .. })
        ));
        assert!(matches!(
            Hostname::parse("::1"),
            Err(Problem::HostIsIp { .. })
        ));
        for bad in [
            "https://api.railway.app",
            "api.railway.app:443",
            "a b.com",
            "*.example.com",
            "a..b",
            "-a.com",
            "10.0.0.999",
            "api.railway.app/graphql",
            "",
        ] {
            assert!(
                matches!(Hostname::parse(bad), Err(Problem::BadHost { .. })),
                "{bad}"
            );
        }
    }

    #[test]
    fn unix_sockets() {
        assert!(UnixSocket::parse("/run/docker.sock").is_ok_and(|s| !s.is_abstract()));
        assert!(UnixSocket::parse("@guard").is_ok_and(|s| s.is_abstract()));
        for bad in ["run/docker.sock", "@", "", &format!("/{}", "x".repeat(107))] {
            assert!(UnixSocket::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cidrs_and_ips() {
        assert_eq!(
            IpNet::parse("10.20.0.0/16"),
            Ok("10.20.0.0/16".parse().unwrap())
        );
        assert!(matches!(
            IpNet::parse("10.0.0.0/33"),
            Err(Problem::CidrPrefixTooLong { max: 32, .. })
        ));
        assert!(matches!(
            IpNet::parse("10.0.0.1"),
            Err(Problem::BadCidr { .. })
        ));
        assert!(matches!(
            IpNet::parse("10.0.0/8"),
            Err(Problem::BadCidr { .. })
        ));
        assert!(IpAddr::parse("fd00:ec2::254").is_ok());
        assert!(IpAddr::parse("10.0.0.0/8").is_err());
    }

    #[test]
    fn capabilities() {
        let c = Capability::parse("cap_sys_admin").unwrap();
        assert_eq!((c.number(), c.to_string().as_str()), (21, "CAP_SYS_ADMIN"));
        assert_eq!(Capability::parse("BPF").unwrap().number(), 39);
        assert!(Capability::parse("CAP_ROOT").is_err());
    }
}
