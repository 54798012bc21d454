//! Decoding network decisions ([`NetEvent`]) into the event log's JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use guard_common::{
    decision::{Action, Outcome},
    event::EventKind,
    net::{AF_INET, AF_INET6, AF_PACKET, AF_UNIX, NetEvent, hook, mode, proto},
};
use serde::Serialize;

use super::{Decision, DecodeCtx, DecodeError, Decoded, c_str, read_pod};

/// What the daemon knows beyond the kernel record: rule names and which host rule an
/// address came from.
pub trait NetLabels {
    /// Name of rule `id` of policy generation `generation`.
    fn rule_name(&self, generation: u32, id: u32) -> Option<String>;
    /// The host name of rule `id` that resolved to `addr`.
    fn host_for(&self, id: u32, addr: IpAddr) -> Option<String>;
    /// The server or forwarder a decision of rule `id` about `dest` (address, port, unix
    /// name) met, when it is one the daemon found on the host.
    fn deputy(&self, id: u32, dest: (Option<IpAddr>, u16, Option<&str>)) -> Option<String> {
        let _ = (id, dest);
        None
    }
}

/// No labels: rules are named by id.
pub struct NoLabels;

impl NetLabels for NoLabels {
    fn rule_name(&self, _: u32, _: u32) -> Option<String> {
        None
    }
    fn host_for(&self, _: u32, _: IpAddr) -> Option<String> {
        None
    }
}

/// The destination of a network decision.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Destination {
    /// IP address (IPv4-mapped IPv6 destinations as IPv4); absent for unix sockets.
    pub address: Option<String>,
    pub port: u16,
    /// `ipv4`, `ipv6` or `unix`.
    pub family: &'static str,
    /// `tcp`, `udp` or `other`; `stream`, `dgram` or `other` for unix sockets.
    pub protocol: &'static str,
    /// Unix socket path, `@name` for an abstract socket.
    pub unix_path: Option<String>,
    /// The host name of a `hosts:` rule that resolved to this address.
    pub host: Option<String>,
}

/// The network fields of an event line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct NetDetails {
    pub destination: Destination,
    /// Rule name (`#ID` when the rule's generation is no longer known).
    pub rule: String,
    pub rule_id: u32,
    /// `deny`, `kill`, `kill-tree`, `audit`.
    pub action: &'static str,
    /// `enforce` or `audit`.
    pub mode: &'static str,
    /// `allowed`, `denied`, `killed`, `kill-failed`.
    pub result: &'static str,
    /// `connect4`, `connect6`, `sendmsg4`, `sendmsg6`, `connect_unix`, `sendmsg_unix`.
    pub hook: &'static str,
    /// The untagged process the destination leads to, when guard found it on the host: a
    /// terminal server, sshd, a bus, a forwarder to a protected endpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deputy: Option<String>,
}

/// The record as a [`NetEvent`], if it is one.
pub fn raw_net_event(raw: &[u8]) -> Option<NetEvent> {
    if raw.len() < size_of::<NetEvent>() {
        return None;
    }
    // SAFETY: length checked; NetEvent is plain old data; read_unaligned copes with any
    // alignment of the ring-buffer record.
    let ev: NetEvent = unsafe { std::ptr::read_unaligned(raw.as_ptr().cast()) };
    (EventKind::from_u32(ev.header.kind) == Some(EventKind::NetConnect)).then_some(ev)
}

/// The unix socket name of `ev` as configured: a path, or `@name`.
fn unix_name(ev: &NetEvent) -> String {
    let len = (ev.unix_len as usize).min(ev.unix_path.len());
    let name = &ev.unix_path[..len];
    match name.split_first() {
        Some((0, rest)) => format!("@{}", String::from_utf8_lossy(rest)),
        _ => String::from_utf8_lossy(name).into_owned(),
    }
}

/// The network fields of `ev`.
pub fn details(ev: &NetEvent, labels: &dyn NetLabels) -> NetDetails {
    let new_socket = ev.protocol == proto::RAW || ev.protocol == proto::PACKET;
    let addr = match ev.family {
        _ if new_socket => None,
        AF_INET => {
            let a = ev.addr;
            Some(IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3])))
        }
        AF_INET6 => Some(IpAddr::V6(Ipv6Addr::from(ev.addr))),
        _ => None,
    };
    let destination = Destination {
        address: addr.map(|a| a.to_string()),
        port: ev.port as u16,
        family: match ev.family {
            AF_INET => "ipv4",
            AF_INET6 => "ipv6",
            AF_UNIX => "unix",
            AF_PACKET => "packet",
            _ => "other",
        },
        protocol: match (ev.family, ev.protocol) {
            (_, proto::RAW) => "raw",
            (_, proto::PACKET) => "packet",
            (AF_UNIX, proto::TCP) => "stream",
            (AF_UNIX, proto::UDP) => "dgram",
            (_, proto::TCP) => "tcp",
            (_, proto::UDP) => "udp",
            _ => "other",
        },
        unix_path: (ev.family == AF_UNIX).then(|| unix_name(ev)),
        host: addr.and_then(|a| labels.host_for(ev.rule_id, a)),
    };
    let rule = labels
        .rule_name(ev.generation, ev.rule_id)
        .unwrap_or_else(|| format!("#{}", ev.rule_id));
    let deputy = labels.deputy(
        ev.rule_id,
        (addr, destination.port, destination.unix_path.as_deref()),
    );
    NetDetails {
        destination,
        deputy,
        rule,
        rule_id: ev.rule_id,
        action: Action::from_id(ev.action).unwrap_or(Action::Audit).name(),
        mode: match ev.mode {
            mode::AUDIT => "audit",
            _ => "enforce",
        },
        result: Outcome::from_id(ev.result).name(),
        hook: match ev.hook {
            hook::CONNECT4 => "connect4",
            hook::CONNECT6 => "connect6",
            hook::SENDMSG4 => "sendmsg4",
            hook::SENDMSG6 => "sendmsg6",
            hook::CONNECT_UNIX => "connect_unix",
            hook::LSM_CONNECT => "lsm_socket_connect",
            hook::LSM_SENDMSG => "lsm_socket_sendmsg",
            hook::SOCK_CREATE => "sock_create",
            hook::LSM_SOCKET_CREATE => "lsm_socket_create",
            hook::LSM_UNIX_STREAM_CONNECT => "lsm_unix_stream_connect",
            hook::LSM_UNIX_MAY_SEND => "lsm_unix_may_send",
            hook::EGRESS4 => "egress4",
            hook::EGRESS6 => "egress6",
            hook::PEER_UNIX_STREAM_CONNECT => "unix_stream_connect",
            hook::PEER_UNIX_MAY_SEND => "unix_may_send",
            _ => "sendmsg_unix",
        },
    }
}

/// Decode a network decision (the pipeline adds the process, its ancestry and the rest).
pub fn decode_record(raw: &[u8], ctx: &DecodeCtx<'_>) -> Result<Decoded, DecodeError> {
    let ev: NetEvent = read_pod(raw)?;
    let n = details(&ev, ctx.net);
    let mut d = Decoded::new(EventKind::NetConnect, ev.header);
    d.comm = Some(c_str(&ev.comm));
    d.decision = Some(Decision {
        rule: n.rule,
        rule_id: Some(n.rule_id),
        action: n.action.into(),
        mode: Some(n.mode.into()),
        result: n.result.into(),
        hook: Some(n.hook.into()),
    });
    let dst = n.destination;
    d.destination = Some(super::Destination {
        address: dst.address,
        // A new raw or packet socket has no destination yet: only its family and kind.
        port: (dst.protocol != "raw" && dst.protocol != "packet").then_some(dst.port),
        family: Some(dst.family.into()),
        protocol: Some(dst.protocol.into()),
        unix_path: dst.unix_path,
        host: dst.host,
        deputy: n.deputy,
    });
    Ok(d)
}

#[cfg(test)]
mod tests {
    use guard_common::{ProcKey, event::EventHeader, net::UNIX_PATH_LEN};

    use super::*;

    fn event(family: u32, addr: [u8; 16]) -> NetEvent {
        NetEvent {
            header: EventHeader {
                kind: EventKind::NetConnect as u32,
                agent_id: 1,
                time_ns: 0,
                proc: ProcKey::new(u32::MAX, 0),
                root: ProcKey::new(u32::MAX, 0),
                ppid: 1,
                uid: 1000,
            },
            comm: *b"curl\0\0\0\0\0\0\0\0\0\0\0\0",
            hook: hook::CONNECT6,
            family,
            protocol: proto::TCP,
            port: 5432,
            addr,
            rule_id: 3,
            action: Action::Kill.id(),
            mode: mode::ENFORCE,
            result: Outcome::Killed.id(),
            unix_len: 0,
            generation: 7,
            unix_path: [0; UNIX_PATH_LEN],
            _pad2: [0; 4],
        }
    }

    struct Labels;
    impl NetLabels for Labels {
        fn rule_name(&self, generation: u32, id: u32) -> Option<String> {
            (generation == 7 && id == 3).then(|| "prod-db".to_owned())
        }
        fn host_for(&self, _: u32, addr: IpAddr) -> Option<String> {
            (addr.to_string() == "10.20.0.5").then(|| "db.prod".to_owned())
        }
    }

    fn bytes(ev: &NetEvent) -> Vec<u8> {
        // SAFETY: NetEvent is plain old data.
        unsafe {
            std::slice::from_raw_parts((ev as *const NetEvent).cast::<u8>(), size_of::<NetEvent>())
        }
        .to_vec()
    }

    #[test]
    fn decodes_ipv4_ipv6_and_unix() {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&[10, 20, 0, 5]);
        let ev = event(AF_INET, a);
        let clock = crate::events::Clock::now();
        let names = crate::agents::AgentNames::default();
        let ctx = DecodeCtx {
            clock: &clock,
            agents: &names,
            net: &Labels,
        };
        let d = crate::events::decode(&bytes(&ev), &ctx).unwrap();
        let line = crate::events::pipeline::build(&d, None, &names, "n", &clock, None);
        let json = serde_json::to_value(&line).unwrap();
        assert_eq!(json["kind"], "net_connect");
        assert_eq!(json["destination"]["address"], "10.20.0.5");
        assert_eq!(json["destination"]["host"], "db.prod");
        assert_eq!(json["destination"]["port"], 5432);
        assert_eq!(json["destination"]["family"], "ipv4");
        assert_eq!(json["rule"], "prod-db");
        assert_eq!(json["action"], "kill");
        assert_eq!(json["result"], "killed");
        assert_eq!(json["process"]["comm"], "curl");
        assert_eq!(json["mode"], "enforce");
        assert_eq!(json["hook"], "connect6");

        let mut v6 = [0u8; 16];
        v6[0] = 0xfd;
        v6[15] = 5;
        let d = details(&event(AF_INET6, v6), &NoLabels);
        assert_eq!(d.destination.address.as_deref(), Some("fd00::5"));
        assert_eq!(d.rule, "#3");

        let mut ev = event(AF_UNIX, [0; 16]);
        ev.unix_path[..4].copy_from_slice(b"\0abs");
        ev.unix_len = 4;
        assert_eq!(
            details(&ev, &NoLabels).destination.unix_path.as_deref(),
            Some("@abs")
        );
        assert!(raw_net_event(&bytes(&ev)[..100]).is_none());
    }
}
