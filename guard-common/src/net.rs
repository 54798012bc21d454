//! Network enforcement: the layouts of the endpoint maps and of [`NetEvent`], and the pure
//! matching logic that the kernel programs and userspace share.
//!
//! Lookup path of a tagged process's `connect`/`sendmsg`:
//! 1. The destination address is looked up in an LPM trie ([`crate::maps::NET4`] or
//!    [`crate::maps::NET6`]; an IPv4-mapped IPv6 address goes to the IPv4 trie). A unix socket
//!    name is looked up in [`crate::maps::NET_UNIX`] by its [`UnixKey`].
//! 2. The value is a [`RuleSet`]: the rule slots that cover that prefix. Userspace copies the
//!    slots of every shorter covering prefix into each longer one, so the longest-prefix match
//!    never hides a broader rule, and orders them strongest first.
//! 3. Each slot indexes [`crate::maps::NET_RULES`]; the first [`NetRule`] whose protocol and
//!    ports match decides.

/// Port ranges a rule holds; a rule with more ranges is rejected by the loader.
pub const PORT_RANGES_MAX: usize = 8;
/// Rule slots one prefix or unix name can name.
pub const RULE_SLOTS_MAX: usize = 16;
/// Rule slots of one policy generation; [`crate::maps::NET_RULES`] holds two generations so
/// that a reload never rewrites a slot that live trie entries still point at.
pub const RULES_PER_GENERATION: u32 = 256;
pub const RULE_SLOTS_TOTAL: u32 = 2 * RULES_PER_GENERATION;
const _: () = assert!(RULE_SLOTS_TOTAL.is_power_of_two());
/// Bytes of `sockaddr_un.sun_path`.
pub const UNIX_PATH_LEN: usize = 108;

use crate::decision::action;

/// `mode` of a [`NetRule`]: an audit-mode rule only records.
pub mod mode {
    pub const ENFORCE: u32 = 0;
    pub const AUDIT: u32 = 1;
}

/// Protocol classes of a rule (`PROTO_ANY` matches every class) and of a [`NetEvent`].
pub mod proto {
    pub const ANY: u32 = 0;
    pub const TCP: u32 = 1;
    pub const UDP: u32 = 2;
    pub const OTHER: u32 = 3;
    /// Events only: a raw IPv4/IPv6 socket (`SOCK_RAW`), see [`raw_class`].
    pub const RAW: u32 = 4;
    /// Events only: a packet socket (`AF_PACKET`).
    pub const PACKET: u32 = 5;
}

/// The hook that made a decision.
pub mod hook {
    pub const CONNECT4: u32 = 1;
    pub const CONNECT6: u32 = 2;
    pub const SENDMSG4: u32 = 3;
    pub const SENDMSG6: u32 = 4;
    pub const CONNECT_UNIX: u32 = 5;
    pub const SENDMSG_UNIX: u32 = 6;
    /// BPF LSM `socket_connect` / `socket_sendmsg` (any family).
    pub const LSM_CONNECT: u32 = 7;
    pub const LSM_SENDMSG: u32 = 8;
    /// cgroup `sock_create` (raw IPv4/IPv6 sockets).
    pub const SOCK_CREATE: u32 = 9;
    /// BPF LSM `socket_create` (raw IPv4/IPv6 and packet sockets).
    pub const LSM_SOCKET_CREATE: u32 = 10;
    /// BPF LSM `unix_stream_connect` / `unix_may_send`: the peer the kernel resolved, matched
    /// by the identity of its socket file.
    pub const LSM_UNIX_STREAM_CONNECT: u32 = 11;
    pub const LSM_UNIX_MAY_SEND: u32 = 12;
    /// cgroup `skb` egress: a packet of a tagged socket whose destination was rewritten after
    /// the connect or sendmsg hook saw it (NAT), checked again.
    pub const EGRESS4: u32 = 13;
    pub const EGRESS6: u32 = 14;
    /// The fallback tier's `fmod_ret` of `security_unix_stream_connect` /
    /// `security_unix_may_send`: the same decision as [`LSM_UNIX_STREAM_CONNECT`] /
    /// [`LSM_UNIX_MAY_SEND`] without BPF LSM.
    pub const PEER_UNIX_STREAM_CONNECT: u32 = 15;
    pub const PEER_UNIX_MAY_SEND: u32 = 16;
}

/// Rule id of the internal raw-socket rule (`spec.rawSockets`), kept in
/// [`crate::maps::NET_RAW`]: a raw IP or packet socket writes its own headers, so it would
/// carry traffic past every endpoint rule.
pub const RAW_RULE_ID: u32 = 0xffff_0100;

/// Key of [`crate::maps::NET_EXCEPTIONS`]: an approved request of an `ask` rule — who
/// (a tree by its root, or one process: [`exception_scope`]), the rule and the destination
/// (family, address, port; zero address and port for a unix socket: the rule's every name).
/// The value is the boot-time deadline in ns.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExceptionKey {
    /// The tree's root ([`exception_scope::TREE`]) or the process ([`exception_scope::PROCESS`]).
    pub root: crate::ProcKey,
    pub rule_id: u32,
    pub family: u32,
    pub port: u32,
    pub scope: u32,
    pub addr: [u8; 16],
}

/// [`ExceptionKey::family`] of an approval of a file operation: `port` holds the
/// [`crate::file::access`] bits approved and `addr` the object ([`file_object`]).
pub const FAMILY_FILE: u32 = 0xf11e;

/// [`ExceptionKey::addr`] of the file object `(dev, ino)` (kernel `dev_t` encoding).
#[inline(always)]
pub const fn file_object(dev: u32, ino: u64) -> [u8; 16] {
    let d = dev.to_le_bytes();
    let i = ino.to_le_bytes();
    [
        d[0], d[1], d[2], d[3], i[0], i[1], i[2], i[3], i[4], i[5], i[6], i[7], 0, 0, 0, 0,
    ]
}

/// What [`ExceptionKey::root`] names. A process-scoped key never matches the tree the same
/// process is the root of: the scope is part of the key.
pub mod exception_scope {
    /// Every process of the tree whose root is `root`.
    pub const TREE: u32 = 0;
    /// The process `root` alone.
    pub const PROCESS: u32 = 1;
}
const _: () = assert!(core::mem::size_of::<ExceptionKey>() == 48);

/// Rule id of the secrets rule (`spec.secrets.taint`), slot [`SECRETS_SLOT`] of
/// [`crate::maps::NET_SECRETS`]: what an agent tree that read a secret meets on the network.
pub const SECRETS_RULE_ID: u32 = 0xffff_0200;
/// Rule id of the same rule while a file the tree read is still being scanned, slot
/// [`SECRETS_PENDING_SLOT`]: it denies (never kills), and only when the secrets rule blocks.
pub const SECRETS_PENDING_RULE_ID: u32 = 0xffff_0201;
pub const SECRETS_SLOT: u32 = 0;
pub const SECRETS_PENDING_SLOT: u32 = 1;

pub const AF_UNIX: u32 = 1;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
pub const AF_PACKET: u32 = 17;

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;
const SOCK_RAW: u32 = 3;
/// Obsolete packet interface (`socket(AF_INET, SOCK_PACKET, …)`).
const SOCK_PACKET: u32 = 10;
/// The type bits of a socket type (the rest are `SOCK_NONBLOCK`/`SOCK_CLOEXEC`).
const SOCK_TYPE_MASK: u32 = 0xf;
const IPPROTO_TCP: u32 = 6;
const IPPROTO_UDP: u32 = 17;
const IPPROTO_UDPLITE: u32 = 136;
const IPPROTO_MPTCP: u32 = 262;

/// Data of an IPv4 trie key (aya's LPM `Key` adds the `u32` prefix length: 8 bytes).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ip4Data {
    pub addr: [u8; 4],
}
const _: () = assert!((4 + core::mem::size_of::<Ip4Data>()).is_multiple_of(8));

/// Data of an IPv6 trie key, padded so the whole key is 24 bytes. The padding is always zero
/// and lookups use a prefix length of at most 128, so it never takes part in a match.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Ip6Data {
    pub addr: [u8; 16],
    pub _pad: [u8; 4],
}
const _: () = assert!((4 + core::mem::size_of::<Ip6Data>()).is_multiple_of(8));

/// A port range, inclusive, host byte order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub start: u16,
    pub end: u16,
}

/// One endpoint rule as the kernel applies it. Indexed by slot in [`crate::maps::NET_RULES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetRule {
    /// The policy's rule id (what events report).
    pub rule_id: u32,
    /// Policy generation that wrote this slot; 0 = unused.
    pub generation: u32,
    /// [`crate::decision::action`].
    pub action: u32,
    /// [`mode`].
    pub mode: u32,
    /// [`proto`] class the rule applies to.
    pub protocol: u32,
    /// Number of valid `ports`; 0 = every port.
    pub nports: u32,
    pub ports: [PortRange; PORT_RANGES_MAX],
}
const _: () = assert!(core::mem::size_of::<NetRule>() == 56);

/// The rule slots covering one prefix or unix name, strongest rule first.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RuleSet {
    pub count: u32,
    pub slots: [u32; RULE_SLOTS_MAX],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<RuleSet>() == 72);

/// Key of a unix socket name: `len` bytes of `sun_path`, the rest zero. A path name ends at
/// its first NUL; an abstract name starts with a NUL and is exactly `addrlen - 2` bytes long.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct UnixKey {
    pub len: u32,
    pub path: [u8; UNIX_PATH_LEN],
}
const _: () = assert!(core::mem::size_of::<UnixKey>() == 112);

impl Default for UnixKey {
    fn default() -> Self {
        Self {
            len: 0,
            path: [0; UNIX_PATH_LEN],
        }
    }
}

/// [`UnixKey::len`] of a key that names a socket file by identity ([`UnixKey::inode`]):
/// above any name's length, so never equal to a name's key.
pub const UNIX_INODE_KEY: u32 = u32::MAX;

/// [`UnixKey::len`] of a key that names socket paths by their last component
/// ([`UnixKey::last_name`]): above any name's length, never equal to a name's key.
pub const UNIX_LAST_NAME_KEY: u32 = u32::MAX - 1;

/// FNV-1a, 64 bits: the hash of a path's last component.
const FNV_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

/// 1 when `a == b`, else 0 (both below 2^63).
#[inline(always)]
const fn eq(a: u64, b: u64) -> u64 {
    (a ^ b).wrapping_sub(1) >> 63
}

impl UnixKey {
    /// The key of every spelling the kernel resolves otherwise than as written whose last
    /// component hashes to `hash` ([`Self::last_component`]): how the fallback tier's unix
    /// programs meet a protected socket under a spelling they cannot resolve.
    #[inline(always)]
    pub fn last_name(hash: u64) -> Self {
        Self::last_name_of(hash, 1)
    }

    /// [`Self::last_name`] with the "resolved otherwise" bit as a number (0 or 1), in the
    /// key: the kernel programs never branch on it (a branch would make the verifier track
    /// every byte of the loop that computed it, and explore each path).
    #[inline(always)]
    fn last_name_of(hash: u64, odd: u64) -> Self {
        let mut key = Self {
            len: UNIX_LAST_NAME_KEY,
            path: [0; UNIX_PATH_LEN],
        };
        let h = hash.to_le_bytes();
        let mut n = 0;
        while n < 8 {
            key.path[n] = h[n];
            n += 1;
        }
        key.path[8] = odd as u8;
        key
    }

    /// The [`Self::last_name`] key a name is looked up under when it misses: it matches only
    /// when the name is resolved otherwise than as written. `None` for abstract names and
    /// identity keys.
    #[inline(always)]
    pub fn other_spelling(&self) -> Option<Self> {
        let (hash, odd) = self.hash_last()?;
        Some(Self::last_name_of(hash, odd))
    }

    /// Of a normalised path name ([`Self::normalise`]): the hash of its last component, and
    /// whether the kernel resolves the name otherwise than as written — relative to the cwd,
    /// repeated slashes, `.` or `..` components, or under `/proc` (`/proc/*/root`,
    /// `/proc/*/cwd`). Such a spelling of a protected socket can only be recognised by its
    /// last component. `None` for abstract names and identity keys.
    pub fn last_component(&self) -> Option<(u64, bool)> {
        let (hash, odd) = self.hash_last()?;
        Some((hash, odd != 0))
    }

    /// [`Self::last_component`], the flag as 0 or 1.
    ///
    /// The loop stops at the name's end (its first NUL: [`Self::normalise`] zeroes the rest)
    /// and never compares the index with `len`: a comparison with the length would make the
    /// verifier keep one state per possible length.
    #[inline(always)]
    fn hash_last(&self) -> Option<(u64, u64)> {
        if self.len == 0 || self.len > UNIX_PATH_LEN as u32 || self.path[0] == 0 {
            return None;
        }
        let p = &self.path;
        let proc_prefix = b"/proc/";
        let mut under_proc = 1u64;
        let mut i = 0;
        while i < proc_prefix.len() {
            under_proc &= eq(u64::from(p[i]), u64::from(proc_prefix[i]));
            i += 1;
        }
        let mut odd = u64::from(p[0] != b'/') | under_proc;
        let mut hash = FNV_BASIS;
        // The bytes before the current one; a name starts after a virtual slash.
        let (mut p1, mut p2, mut p3) = (b'/', b'/', b'/');
        let mut i = 0usize;
        while i < UNIX_PATH_LEN {
            let c = p[i];
            if c == b'/' || c == 0 {
                // The component that ends here: `.` or `..`.
                if p1 == b'.' && (p2 == b'/' || (p2 == b'.' && p3 == b'/')) {
                    odd = 1;
                }
                if c == 0 {
                    break;
                }
                if p1 == b'/' && i > 0 {
                    odd = 1;
                }
                hash = FNV_BASIS;
            } else {
                hash = (hash ^ u64::from(c)).wrapping_mul(FNV_PRIME);
            }
            p3 = p2;
            p2 = p1;
            p1 = c;
            i += 1;
        }
        Some((hash, odd))
    }

    /// The key of the socket file with device `dev` (kernel encoding) and inode `ino`, as
    /// the bpf-lsm tier's unix hooks look it up: every spelling, symlink and hard link of a
    /// path reaches the same file.
    #[inline(always)]
    pub fn inode(dev: u32, ino: u64) -> Self {
        let mut key = Self {
            len: UNIX_INODE_KEY,
            path: [0; UNIX_PATH_LEN],
        };
        let d = dev.to_le_bytes();
        let i = ino.to_le_bytes();
        key.path[0] = d[0];
        key.path[1] = d[1];
        key.path[2] = d[2];
        key.path[3] = d[3];
        let mut n = 0;
        while n < 8 {
            key.path[4 + n] = i[n];
            n += 1;
        }
        key
    }

    /// Turn the raw `sun_path` bytes in `self.path` (of which the caller supplied
    /// `name_len = addrlen - offsetof(sun_path)`) into the canonical key, in place.
    ///
    /// Branch-free on the bytes: the kernel programs keep the key on the stack, where a
    /// branch per byte would make the verifier explore one path per possible name length.
    #[inline(always)]
    pub fn normalise(&mut self, name_len: u32) {
        let name_len = if name_len as usize > UNIX_PATH_LEN {
            UNIX_PATH_LEN as u32
        } else {
            name_len
        };
        // 1 when the name is abstract (non-empty, leading NUL), else 0.
        let first = u32::from(self.path[0]);
        let is_abstract = (first.wrapping_sub(1) >> 31) & (0u32.wrapping_sub(name_len) >> 31);
        // 1 once the name has ended.
        let mut stopped = 0u32;
        let mut len = 0u32;
        let mut i = 0usize;
        while i < UNIX_PATH_LEN {
            let c = u32::from(self.path[i]);
            let past_len = ((i as u32).wrapping_sub(name_len) >> 31) ^ 1; // i >= name_len
            let nul = (c.wrapping_sub(1) >> 31) & (is_abstract ^ 1); // c == 0 on a path
            stopped |= past_len | nul;
            self.path[i] &= (stopped as u8).wrapping_sub(1);
            len += stopped ^ 1;
            i += 1;
        }
        self.len = len;
    }

    /// The key of a configured name: `/path` or `@abstract`. `None` if it does not fit.
    pub fn from_name(name: &[u8]) -> Option<Self> {
        let mut key = Self::default();
        let (lead, body) = match name.first() {
            Some(b'@') => (1usize, name.split_at(1).1),
            _ => (0, name),
        };
        if lead + body.len() > UNIX_PATH_LEN || (lead == 0 && body.is_empty()) {
            return None;
        }
        let mut i = 0;
        while i < body.len() {
            key.path[lead + i] = body[i];
            i += 1;
        }
        key.normalise((lead + body.len()) as u32);
        Some(key)
    }
}

/// Value of [`crate::maps::NET_PENDING_KILLS`], keyed by tgid: the process is sent SIGKILL
/// the next time one of its threads leaves a system call.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PendingKill {
    /// Start time of the process ([`crate::ProcKey::start_ns`]), so a reused pid is spared.
    pub start_ns: u64,
    pub rule_id: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<PendingKill>() == 16);

/// Kernel → user: a decision of an endpoint rule (`EventKind::NetConnect`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct NetEvent {
    pub header: crate::event::EventHeader,
    pub comm: [u8; 16],
    /// [`hook`].
    pub hook: u32,
    /// `AF_INET`, `AF_INET6` or `AF_UNIX` of the destination as matched (an IPv4-mapped IPv6
    /// destination is reported as `AF_INET`).
    pub family: u32,
    /// [`proto`] class of the socket.
    pub protocol: u32,
    /// Destination port, host byte order.
    pub port: u32,
    /// Destination address: 4 bytes for IPv4, 16 for IPv6.
    pub addr: [u8; 16],
    pub rule_id: u32,
    /// [`crate::decision::action`] of the rule.
    pub action: u32,
    /// [`mode`] of the rule.
    pub mode: u32,
    /// [`crate::decision::outcome`].
    pub result: u32,
    /// Unix socket name ([`UnixKey`] form): `unix_len` bytes of `unix_path`.
    pub unix_len: u32,
    /// Policy generation of the rule (names the rule across reloads).
    pub generation: u32,
    pub unix_path: [u8; UNIX_PATH_LEN],
    pub _pad2: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<NetEvent>() == 240);

/// The protocol class of a socket from the `type` and `protocol` of `bpf_sock_addr`.
#[inline(always)]
pub fn proto_class(sock_type: u32, protocol: u32) -> u32 {
    match protocol {
        IPPROTO_TCP | IPPROTO_MPTCP => proto::TCP,
        IPPROTO_UDP | IPPROTO_UDPLITE => proto::UDP,
        0 => match sock_type {
            SOCK_STREAM => proto::TCP,
            SOCK_DGRAM => proto::UDP,
            _ => proto::OTHER,
        },
        _ => proto::OTHER,
    }
}

/// The [`proto`] class of a new socket the raw-socket rule covers: [`proto::RAW`] for a raw
/// IPv4/IPv6 socket, [`proto::PACKET`] for a packet socket; `None` for every other socket
/// (ICMP datagram sockets included: they cannot carry TCP or UDP).
#[inline(always)]
pub fn raw_class(family: u32, sock_type: u32) -> Option<u32> {
    let ty = sock_type & SOCK_TYPE_MASK;
    match family {
        AF_PACKET => Some(proto::PACKET),
        AF_INET | AF_INET6 if ty == SOCK_RAW || ty == SOCK_PACKET => Some(proto::RAW),
        _ => None,
    }
}

/// Does `port` fall in the first `nports` ranges (all ports when `nports` is 0)?
#[inline(always)]
pub fn port_in_ranges(ranges: &[PortRange; PORT_RANGES_MAX], nports: u32, port: u16) -> bool {
    if nports == 0 {
        return true;
    }
    let mut i = 0;
    while i < PORT_RANGES_MAX {
        if i as u32 >= nports {
            break;
        }
        if ranges[i].start <= port && port <= ranges[i].end {
            return true;
        }
        i += 1;
    }
    false
}

impl NetRule {
    /// Does this rule apply to a socket of protocol class `class` sending to `port`?
    /// Unix names match on the name alone (`check_ports` false).
    #[inline(always)]
    pub fn matches(&self, class: u32, port: u16, check_ports: bool) -> bool {
        if self.generation == 0 {
            return false;
        }
        if !check_ports {
            return true;
        }
        (self.protocol == proto::ANY || self.protocol == class)
            && port_in_ranges(&self.ports, self.nports, port)
    }

    /// Does the rule block the operation (enforce mode and an action other than audit)?
    #[inline(always)]
    pub fn blocks(&self) -> bool {
        self.mode == mode::ENFORCE && self.action != action::AUDIT && self.action != action::ALLOW
    }

    /// Is the rule an entry of the secrets allow-list (`spec.secrets.allow`)? It decides
    /// nothing by itself: it exempts a destination from the secrets rule.
    #[inline(always)]
    pub fn exempts(&self) -> bool {
        self.action == action::ALLOW
    }

    /// Does the rule kill the offender (kill or kill-tree, enforced)?
    #[inline(always)]
    pub fn kills(&self) -> bool {
        self.blocks() && (self.action == action::KILL || self.action == action::KILL_TREE)
    }

    /// Precedence when several rules match one destination: enforced before audit, then
    /// kill-tree, kill, hold, deny, ask, audit, and the allow-list's exemptions last. Higher is
    /// stronger.
    pub fn strength(&self) -> u32 {
        let by_action = match self.action {
            action::KILL_TREE => 6,
            action::KILL => 5,
            action::HOLD => 4,
            action::DENY => 3,
            action::ASK => 2,
            action::ALLOW => return 0,
            _ => 1,
        };
        if self.blocks() {
            10 + by_action
        } else {
            by_action
        }
    }
}

/// The four big-endian words of an IPv6 address. The checks below compare words, not bytes:
/// a few branches each, which keeps the 6.1 verifier's walk of the LSM connect program small.
#[inline(always)]
fn words(addr: &[u8; 16]) -> [u32; 4] {
    let w = |i: usize| u32::from_be_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    [w(0), w(4), w(8), w(12)]
}

/// The IPv4 address an IPv6 address reaches through translation: NAT64's well-known prefix
/// (`64:ff9b::a.b.c.d`, RFC 6052) and the IPv4-compatible form (`::a.b.c.d`, not `::` or
/// `::1`). Unlike a mapped address, it is an IPv6 address in its own right too: rules on the
/// IPv4 address apply first, then rules on the IPv6 one.
#[inline(always)]
pub fn v4_translated(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let [w0, w1, w2, w3] = words(addr);
    let nat64 = w0 == 0x0064_ff9b;
    let compat = w0 == 0 && w3 >> 24 != 0;
    ((nat64 || compat) && w1 == 0 && w2 == 0).then(|| w3.to_be_bytes())
}

/// The IPv4 address inside an IPv4-mapped IPv6 address (`::ffff:a.b.c.d`).
#[inline(always)]
pub fn v4_mapped(addr: &[u8; 16]) -> Option<[u8; 4]> {
    let [w0, w1, w2, w3] = words(addr);
    (w0 == 0 && w1 == 0 && w2 == 0x0000_ffff).then(|| w3.to_be_bytes())
}

/// Value of [`crate::maps::NET_SOCKETS`], stored with the socket: a tagged process's socket
/// and the destination its connect or last sendmsg was decided on.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct TaggedSocket {
    pub tag: crate::Tag,
    pub tgid: u32,
    /// [`AF_INET`] or [`AF_INET6`] (IPv4-mapped destinations as [`AF_INET`]).
    pub family: u32,
    /// IPv4 in the first four bytes, else IPv6.
    pub addr: [u8; 16],
    pub port: u32,
    /// The process's uid, for the check after NAT's events: a cgroup skb program may not ask
    /// for the current uid on every kernel (6.12 refuses the helper there), and a packet is
    /// not always sent in its process's context.
    pub uid: u32,
    pub comm: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<TaggedSocket>() == 80);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers and byte arrays only.
    unsafe impl aya::Pod for super::Ip4Data {}
    unsafe impl aya::Pod for super::Ip6Data {}
    unsafe impl aya::Pod for super::NetRule {}
    unsafe impl aya::Pod for super::ExceptionKey {}
    unsafe impl aya::Pod for super::RuleSet {}
    unsafe impl aya::Pod for super::UnixKey {}
    unsafe impl aya::Pod for super::PendingKill {}
    unsafe impl aya::Pod for super::NetEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(name: &str) -> Option<(u64, bool)> {
        UnixKey::from_name(name.as_bytes())
            .unwrap()
            .last_component()
    }

    #[test]
    fn spellings_the_kernel_resolves_are_known_by_their_last_component() {
        let (plain, odd) = last("/var/run/docker.sock").unwrap();
        assert!(!odd);
        for spelling in [
            "docker.sock",
            "./docker.sock",
            "../run/docker.sock",
            "/var/run//docker.sock",
            "//var/run/docker.sock",
            "/var/./run/docker.sock",
            "/var/tmp/../run/docker.sock",
            "/proc/self/root/var/run/docker.sock",
            "/proc/1/cwd/docker.sock",
        ] {
            assert_eq!(last(spelling), Some((plain, true)), "{spelling}");
        }
        // Written as the kernel reads it: no other spelling to catch.
        assert_eq!(last("/tmp/x/docker.sock"), Some((plain, false)));
        assert!(!last("/run/.hidden/a..b/c.sock").unwrap().1);
        assert_ne!(last("/var/run/docker.socket").unwrap().0, plain);
        assert_eq!(last("@abstract"), None);
        assert_eq!(UnixKey::inode(1, 2).last_component(), None);
        assert_ne!(
            UnixKey::last_name(plain),
            UnixKey::from_name(b"/x").unwrap()
        );
        let odd = UnixKey::from_name(b"./docker.sock").unwrap();
        assert_eq!(odd.other_spelling(), Some(UnixKey::last_name(plain)));
        let plain_key = UnixKey::from_name(b"/var/run/docker.sock").unwrap();
        assert_ne!(plain_key.other_spelling(), Some(UnixKey::last_name(plain)));
    }

    fn rule(protocol: u32, ports: &[(u16, u16)]) -> NetRule {
        let mut r = NetRule {
            rule_id: 7,
            generation: 1,
            action: action::DENY,
            mode: mode::ENFORCE,
            protocol,
            nports: ports.len() as u32,
            ports: [PortRange::default(); PORT_RANGES_MAX],
        };
        for (i, (start, end)) in ports.iter().enumerate() {
            r.ports[i] = PortRange {
                start: *start,
                end: *end,
            };
        }
        r
    }

    #[test]
    fn ports_and_protocols() {
        let r = rule(proto::TCP, &[(80, 81), (443, 443), (8000, 9000)]);
        for (port, yes) in [
            (80, true),
            (81, true),
            (82, false),
            (443, true),
            (444, false),
            (8000, true),
            (9000, true),
            (9001, false),
            (0, false),
        ] {
            assert_eq!(r.matches(proto::TCP, port, true), yes, "port {port}");
        }
        assert!(!r.matches(proto::UDP, 443, true));
        assert!(r.matches(proto::UDP, 443, false), "unix names ignore ports");
        let any = rule(proto::ANY, &[]);
        assert!(any.matches(proto::UDP, 1, true) && any.matches(proto::OTHER, 65535, true));
        let unused = NetRule::default();
        assert!(!unused.matches(proto::TCP, 1, false));
        // Ranges past nports are ignored even when set.
        let mut r = rule(proto::ANY, &[(1, 1)]);
        r.ports[1] = PortRange { start: 5, end: 5 };
        assert!(!r.matches(proto::TCP, 5, true));
    }

    #[test]
    fn protocol_classes() {
        assert_eq!(proto_class(SOCK_STREAM, IPPROTO_TCP), proto::TCP);
        assert_eq!(raw_class(AF_INET, SOCK_RAW), Some(proto::RAW));
        assert_eq!(raw_class(AF_INET6, SOCK_RAW | 0o2000000), Some(proto::RAW));
        assert_eq!(raw_class(AF_PACKET, SOCK_DGRAM), Some(proto::PACKET));
        assert_eq!(raw_class(AF_INET, SOCK_DGRAM), None);
        assert_eq!(raw_class(AF_INET, SOCK_STREAM), None);
        assert_eq!(raw_class(AF_UNIX, SOCK_RAW), None);
        assert_eq!(proto_class(SOCK_STREAM, IPPROTO_MPTCP), proto::TCP);
        assert_eq!(proto_class(SOCK_DGRAM, IPPROTO_UDP), proto::UDP);
        assert_eq!(proto_class(SOCK_STREAM, 0), proto::TCP);
        assert_eq!(proto_class(SOCK_DGRAM, 1 /* ICMP */), proto::OTHER);
        assert_eq!(proto_class(3 /* RAW */, 0), proto::OTHER);
    }

    #[test]
    fn mapped_addresses() {
        let mut a = [0u8; 16];
        a[10] = 0xff;
        a[11] = 0xff;
        a[12..].copy_from_slice(&[10, 20, 0, 5]);
        assert_eq!(v4_mapped(&a), Some([10, 20, 0, 5]));
        a[0] = 0x20;
        assert_eq!(v4_mapped(&a), None);
        let mut compat = [0u8; 16];
        compat[15] = 1;
        assert_eq!(v4_mapped(&compat), None, "::1 is not mapped");
        assert_eq!(v4_translated(&compat), None, "::1 is not IPv4-compatible");
        compat[12..].copy_from_slice(&[10, 20, 0, 5]);
        assert_eq!(v4_translated(&compat), Some([10, 20, 0, 5]));
        let mut nat64 = [0u8; 16];
        nat64[..4].copy_from_slice(&[0, 0x64, 0xff, 0x9b]);
        nat64[12..].copy_from_slice(&[169, 254, 169, 254]);
        assert_eq!(v4_translated(&nat64), Some([169, 254, 169, 254]));
        nat64[8] = 1;
        assert_eq!(v4_translated(&nat64), None, "outside 64:ff9b::/96");
        assert_eq!(v4_translated(&a), None, "mapped is not translated");
    }

    #[test]
    fn precedence() {
        let mut deny = rule(proto::ANY, &[]);
        let mut kill = deny;
        kill.action = action::KILL;
        let mut audit_kill = kill;
        audit_kill.mode = mode::AUDIT;
        assert!(kill.strength() > deny.strength());
        assert!(deny.strength() > audit_kill.strength());
        assert!(kill.kills() && !audit_kill.kills() && !audit_kill.blocks());
        deny.action = action::AUDIT;
        assert!(!deny.blocks());
    }

    #[test]
    fn unix_keys() {
        let path = UnixKey::from_name(b"/run/docker.sock").unwrap();
        assert_eq!(path.len, 16);
        assert_eq!(&path.path[..16], b"/run/docker.sock");
        assert!(path.path[16..].iter().all(|b| *b == 0));
        // What the kernel sees: the path, a NUL, garbage after it, addrlen past the NUL.
        let mut raw = UnixKey::default();
        raw.path[..16].copy_from_slice(b"/run/docker.sock");
        raw.path[17..20].copy_from_slice(b"xyz");
        raw.normalise(30);
        assert_eq!(raw, path);
        // No NUL: addrlen bounds it.
        let mut raw = UnixKey::default();
        raw.path[..20].copy_from_slice(b"/run/docker.sockjunk");
        raw.normalise(16);
        assert_eq!(raw, path);

        let abs = UnixKey::from_name(b"@guard-test").unwrap();
        assert_eq!(abs.len, 11);
        assert_eq!(&abs.path[..11], b"\0guard-test");
        let mut raw = UnixKey::default();
        raw.path[..11].copy_from_slice(b"\0guard-test");
        raw.path[11] = b'!';
        raw.normalise(11);
        assert_eq!(raw, abs);
        // An abstract name that is longer (even by a NUL) is another socket.
        let mut raw = UnixKey::default();
        raw.path[..11].copy_from_slice(b"\0guard-test");
        raw.normalise(12);
        assert_ne!(raw, abs);

        // Abstract names may hold NULs; they are part of the name.
        let mut raw = UnixKey::default();
        raw.path[..5].copy_from_slice(b"\0a\0b!");
        raw.normalise(4);
        assert_eq!((raw.len, &raw.path[..5]), (4, &b"\0a\0b\0"[..]));
        // Empty (an unnamed socket): nothing.
        let mut raw = UnixKey::default();
        raw.path[0] = b'x';
        raw.normalise(0);
        assert_eq!(raw, UnixKey::default());

        assert!(UnixKey::from_name(b"").is_none());
        assert!(UnixKey::from_name(&[b'/'; 109]).is_none());
        assert!(UnixKey::from_name(&[b'/'; 108]).is_some());
    }
}
