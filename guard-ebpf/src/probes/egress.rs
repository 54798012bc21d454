//! The check after NAT: a tagged process's connect or sendmsg was decided on the address it
//! asked for, before the netfilter hooks ran. A NAT rule (`iptables -t nat … DNAT`, which a
//! root agent can add) may send the packet elsewhere. `cgroup_skb/egress` runs after NAT and
//! sees the real destination: a packet of a tagged socket (remembered in the socket's own
//! storage at its connect or sendmsg) whose destination changed is decided again, and dropped
//! where a rule denies the new one. An untagged socket has no storage: its packets cost one
//! pointer test.
//!
//! A tree that read a secret meets the secrets rule here too: NAT cannot turn an allow-listed
//! destination into another.
//!
//! A drop cannot kill (a packet may leave in softirq context, where the current task is
//! anyone's): the connection never opens (a TCP connect times out) and the event says so.

use aya_ebpf::{
    helpers::generated, macros::cgroup_skb, maps::lpm_trie::Key, programs::SkBuffContext,
};
use guard_common::{
    ProcKey,
    net::{AF_INET, AF_INET6, Ip4Data, Ip6Data, TaggedSocket, hook, proto_class},
};

use super::net::{ALLOW, DENY, Dest, carried_v4, decide_rewritten};
use crate::maps::{NET_SOCKETS, NET4, NET6};

const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

#[cgroup_skb(egress)]
pub fn guard_egress(ctx: SkBuffContext) -> i32 {
    // SAFETY: `sk` is a field of the program's own context, read as the verifier allows.
    let sk = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return ALLOW;
    }
    // SAFETY: the helper takes a socket from the context and the storage map; with no value
    // and no flags it only looks (request and time-wait sockets have none: null).
    let sock = unsafe {
        generated::bpf_sk_storage_get(
            core::ptr::from_ref(&NET_SOCKETS).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            0,
        )
    }
    .cast::<TaggedSocket>();
    if sock.is_null() {
        return ALLOW;
    }
    // SAFETY: a non-null pointer from the helper is the socket's storage.
    let sock = unsafe { *sock };
    check(&ctx, &sock).unwrap_or(ALLOW)
}

/// The packet's real destination (network header first: cgroup skb programs start there).
#[inline(always)]
fn check(ctx: &SkBuffContext, sock: &TaggedSocket) -> Result<i32, i32> {
    let first: u8 = ctx.load(0).map_err(|_| -1)?;
    let (family, addr, proto, l4) = match first >> 4 {
        4 => {
            let a: [u8; 4] = ctx.load(16).map_err(|_| -1)?;
            let proto: u8 = ctx.load(9).map_err(|_| -1)?;
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a);
            (AF_INET, addr, proto, usize::from(first & 0x0f) * 4)
        }
        6 => {
            let a: [u8; 16] = ctx.load(24).map_err(|_| -1)?;
            let proto: u8 = ctx.load(6).map_err(|_| -1)?;
            (AF_INET6, a, proto, 40)
        }
        _ => return Ok(ALLOW),
    };
    if proto != IPPROTO_TCP && proto != IPPROTO_UDP {
        return Ok(ALLOW);
    }
    let port = u16::from_be(ctx.load::<u16>(l4 + 2).map_err(|_| -1)?);
    if family == sock.family && addr == sock.addr && u32::from(port) == sock.port {
        return Ok(ALLOW);
    }
    let sock_type = if proto == IPPROTO_TCP {
        SOCK_STREAM
    } else {
        SOCK_DGRAM
    };
    let mut dest = Dest {
        family,
        addr,
        port,
        class: proto_class(sock_type, u32::from(proto)),
    };
    let set = if family == AF_INET {
        NET4.get(Key::new(
            32,
            Ip4Data {
                addr: [addr[0], addr[1], addr[2], addr[3]],
            },
        ))
    } else if let Some(ip) = carried_v4(&addr) {
        dest.family = AF_INET;
        dest.addr = [0; 16];
        dest.addr[..4].copy_from_slice(&ip);
        NET4.get(Key::new(32, Ip4Data { addr: ip }))
    } else {
        NET6.get(Key::new(128, Ip6Data { addr, _pad: [0; 4] }))
    };
    let hook = if dest.family == AF_INET {
        hook::EGRESS4
    } else {
        hook::EGRESS6
    };
    let proc = ProcKey::new(sock.tgid, sock.tag.start_ns);
    Ok(if decide_rewritten(sock, proc, set, &dest, hook) == DENY {
        DENY
    } else {
        ALLOW
    })
}
