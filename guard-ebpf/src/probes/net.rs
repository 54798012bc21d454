//! Network enforcement: cgroup v2 sock_addr programs on `connect` and `sendmsg` (IPv4, IPv6,
//! unix), a `sock_create` program for raw sockets, and the programs that carry out kills
//! where the cgroup programs cannot.
//!
//! Every program starts with one lookup of the caller's tgid in the tag map and allows an
//! untagged caller straight away: that lookup is the whole cost for the rest of the host.
//! A tagged caller's destination is looked up in the rule maps (see `guard_common::net`).
//!
//! Returning 0 from a sock_addr program fails the system call with EPERM before anything is
//! sent. Where the kernel lets cgroup programs call `bpf_send_signal` (the loader probes it),
//! `kill` sends SIGKILL from the program that denies. Elsewhere `kill` records the process in
//! the pending-kill map, and an `fexit` program on the kernel function that ran the cgroup
//! programs sends SIGKILL, still in the offender's context and before the system call
//! returns. Neither costs the host anything per system call: the `fexit` runs on socket
//! address operations only, and only while a policy kills. Where the kernel refuses fexit
//! programs as well, a `sys_exit` program does the same at every system call exit. Internal
//! errors fail open and are counted
//! (`Counter::NetFailOpen`); a decision is never dropped silently: each one is an event, and
//! a lost event is counted.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::bpf_sock_addr,
    helpers::{bpf_get_current_comm, bpf_get_current_uid_gid, generated},
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, fexit},
    maps::lpm_trie::Key,
    programs::{BtfTracePointContext, FExitContext, SockAddrContext, SockContext},
};
use guard_common::{
    ProcKey,
    decision::outcome as result,
    event::{Counter, EventKind},
    net::{
        AF_INET, AF_INET6, AF_UNIX, Ip4Data, Ip6Data, NetEvent, NetRule, PendingKill,
        RULE_SLOTS_MAX, RULE_SLOTS_TOTAL, RuleSet, SECRETS_PENDING_SLOT, SECRETS_SLOT,
        TaggedSocket, UNIX_PATH_LEN, UnixKey, hook, proto_class, raw_class, v4_mapped,
        v4_translated,
    },
    offsets::UNIX_CTX_READ,
    secret::TreeState,
};

use crate::{
    ctx::{Caller, current_tgid, forget, kill_current, live, stop_current, tagged},
    maps::{
        EVENTS, NET_EXCEPTIONS, NET_RAW, NET_RULES, NET_SECRETS, NET_SOCKETS, NET_UNIX, NET4, NET6,
        PENDING_COUNT, PENDING_KILLS, TAGS, TREE_READS, TREE_VERDICTS, count, kill_in_place,
        unix_offsets,
    },
};

/// sock_addr verdicts.
pub(super) const ALLOW: i32 = 1;
pub(super) const DENY: i32 = 0;
const BPF_NOEXIST: u64 = 1;
const EEXIST: i32 = 17;

#[cgroup_sock_addr(connect4)]
pub fn guard_connect4(ctx: SockAddrContext) -> i32 {
    verdict(try_inet(&ctx, hook::CONNECT4))
}

#[cgroup_sock_addr(connect6)]
pub fn guard_connect6(ctx: SockAddrContext) -> i32 {
    verdict(try_inet(&ctx, hook::CONNECT6))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn guard_sendmsg4(ctx: SockAddrContext) -> i32 {
    verdict(try_inet(&ctx, hook::SENDMSG4))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn guard_sendmsg6(ctx: SockAddrContext) -> i32 {
    verdict(try_inet(&ctx, hook::SENDMSG6))
}

// aya 0.14 has no unix attach types. These two live in a section aya-obj understands and are
// never loaded by aya: guard's loader takes their relocated instructions and loads them with
// expected_attach_type BPF_CGROUP_UNIX_CONNECT / BPF_CGROUP_UNIX_SENDMSG itself.

#[cgroup_sock_addr(connect4)]
pub fn guard_connect_unix(ctx: SockAddrContext) -> i32 {
    verdict(try_unix(&ctx, hook::CONNECT_UNIX))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn guard_sendmsg_unix(ctx: SockAddrContext) -> i32 {
    verdict(try_unix(&ctx, hook::SENDMSG_UNIX))
}

/// `cgroup/sock_create`: a tagged process creating a raw IPv4/IPv6 socket, which writes its
/// own headers past every endpoint rule, meets the raw-socket rule. Runs for every new
/// IPv4/IPv6 socket on the host; an untagged creator costs one map lookup. (Packet sockets
/// never reach this hook: only the bpf-lsm tier's `socket_create` sees them.)
#[cgroup_sock(sock_create)]
pub fn guard_sock_create(ctx: SockContext) -> i32 {
    verdict(try_sock_create(&ctx))
}

#[inline(always)]
fn try_sock_create(ctx: &SockContext) -> Result<i32, i32> {
    let Some(caller) = tagged() else {
        return Ok(ALLOW);
    };
    // SAFETY: `ctx.sock` is the program's context; the verifier rewrites these loads into
    // reads of the new socket.
    let (family, sock_type) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.sock).family),
            core::ptr::read_volatile(&(*ctx.sock).type_),
        )
    };
    let Some(class) = raw_class(family, sock_type) else {
        return Ok(ALLOW);
    };
    Ok(decide_raw(
        &caller,
        family,
        class,
        hook::SOCK_CREATE,
        Kill::Pending,
    ))
}

/// `fexit` of `__cgroup_bpf_run_filter_sock_addr`, which ran the sock_addr programs of a
/// connect or sendmsg: SIGKILL a process with a pending kill in its own context, before the
/// system call returns. Every other caller pays one array read while no kill is pending.
#[fexit(function = "__cgroup_bpf_run_filter_sock_addr")]
pub fn guard_kill_after_sock_addr(_ctx: FExitContext) -> i32 {
    kill_if_pending();
    0
}

/// `fexit` of `__cgroup_bpf_run_filter_sk`, which ran the `sock_create` program.
#[fexit(function = "__cgroup_bpf_run_filter_sk")]
pub fn guard_kill_after_sock_create(_ctx: FExitContext) -> i32 {
    kill_if_pending();
    0
}

/// `raw_syscalls:sys_exit`, where the kernel refuses fexit programs too: the same kill at the
/// exit of every system call, which puts every thread of the host on the slow system-call
/// path while it is attached.
#[btf_tracepoint(function = "sys_exit")]
pub fn guard_sys_exit(_ctx: BtfTracePointContext) -> i32 {
    kill_if_pending();
    0
}

#[inline(always)]
fn kill_if_pending() {
    let Some(pending) = PENDING_COUNT.get_ptr(0) else {
        return;
    };
    // SAFETY: pointer to the array slot from a successful lookup.
    if unsafe { core::ptr::read_volatile(pending) } == 0 {
        return;
    }
    send_pending_kill();
}

#[inline(always)]
fn verdict(r: Result<i32, i32>) -> i32 {
    match r {
        Ok(v) => v,
        Err(_) => {
            count(Counter::NetFailOpen);
            ALLOW
        }
    }
}

/// The IPv4 address whose rules decide for IPv6 destination `addr`: the mapped address, or
/// the one NAT64 or the IPv4-compatible form carries when rules name it (else the IPv6
/// address is looked up as it is). One answer, so that every program has two paths to its
/// decision, not three: the 6.1 verifier's budget is tight for the LSM connect program.
#[inline(always)]
pub(super) fn carried_v4(addr: &[u8; 16]) -> Option<[u8; 4]> {
    if let Some(ip) = v4_mapped(addr) {
        return Some(ip);
    }
    let ip = v4_translated(addr)?;
    NET4.get(Key::new(32, Ip4Data { addr: ip }))?;
    Some(ip)
}

/// Where a tagged process is connecting or sending to.
#[derive(Clone, Copy)]
pub(super) struct Dest {
    pub family: u32,
    pub addr: [u8; 16],
    pub port: u16,
    pub class: u32,
}

/// How a `kill` decision is carried out.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Kill {
    /// A cgroup program: it signals the offender itself where the kernel allows it
    /// ([`kill_in_place`]), otherwise the kill programs above do when it returns.
    Pending,
    /// A BPF LSM program runs in the offender's context and signals it right away.
    Now,
}

#[inline(always)]
fn try_inet(ctx: &SockAddrContext, hook: u32) -> Result<i32, i32> {
    let Some(caller) = tagged() else {
        return Ok(ALLOW);
    };
    let sa = ctx.sock_addr;
    let mut dest = Dest {
        family: AF_INET,
        addr: [0; 16],
        port: u16::from_be(ctx_u32(sa, CtxField::Port) as u16),
        class: proto_class(ctx_u32(sa, CtxField::Type), ctx_u32(sa, CtxField::Protocol)),
    };
    let set = if hook == hook::CONNECT4 || hook == hook::SENDMSG4 {
        let ip = ctx_u32(sa, CtxField::Ip4).to_ne_bytes();
        dest.addr = [
            ip[0], ip[1], ip[2], ip[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        NET4.get(Key::new(32, Ip4Data { addr: ip }))
    } else {
        let mut addr = [0u8; 16];
        let mut i = 0;
        while i < 4 {
            let w = ctx_u32(sa, CtxField::Ip6(i)).to_ne_bytes();
            addr[4 * i] = w[0];
            addr[4 * i + 1] = w[1];
            addr[4 * i + 2] = w[2];
            addr[4 * i + 3] = w[3];
            i += 1;
        }
        match carried_v4(&addr) {
            Some(ip) => {
                dest.addr = [
                    ip[0], ip[1], ip[2], ip[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                NET4.get(Key::new(32, Ip4Data { addr: ip }))
            }
            None => {
                dest.family = AF_INET6;
                dest.addr = addr;
                NET6.get(Key::new(128, Ip6Data { addr, _pad: [0; 4] }))
            }
        }
    };
    // One verifier state for every path here (see `forget`): the rule set is a copy, as
    // pointers into two maps (NET4, NET6) never compare equal, and the destination forgotten.
    let set: Option<RuleSet> = set.copied();
    let dest = forget(&dest);
    remember(ctx, &caller, &dest);
    Ok(decide_inet(
        &caller,
        set.as_ref(),
        &dest,
        hook,
        Kill::Pending,
    ))
}

/// Remember a tagged process's socket and the destination decided here, for the check after
/// NAT (`probes/egress.rs`).
#[inline(always)]
fn remember(ctx: &SockAddrContext, caller: &Caller, dest: &Dest) {
    let mut sock = TaggedSocket {
        tag: caller.tag,
        tgid: caller.tgid,
        family: dest.family,
        addr: dest.addr,
        port: u32::from(dest.port),
        uid: bpf_get_current_uid_gid() as u32,
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
    };
    // SAFETY: the helper takes the context's own socket; a socket that already has storage
    // returns it, so the value is written either way.
    let stored = unsafe { NET_SOCKETS.get_or_insert_ptr_mut(ctx, Some(&mut sock)) };
    if !stored.is_null() {
        // SAFETY: a non-null pointer from the helper is the socket's storage.
        unsafe { *stored = sock };
    }
}

/// The check after NAT: the rewritten `dest` decided for `sock`'s process in the order of
/// [`decide_inet`] (an endpoint rule that blocks; the secrets rule for a tainted tree unless
/// allow-listed; an auditing rule), recorded; never a kill (see `probes/egress.rs`).
#[inline(always)]
pub(super) fn decide_rewritten(
    sock: &TaggedSocket,
    proc: ProcKey,
    set: Option<&RuleSet>,
    dest: &Dest,
    hook: u32,
) -> i32 {
    let found = match set {
        Some(set) => matching(set, dest),
        None => NO_SLOT,
    };
    let mut rule = NET_RULES.get(found & NO_SLOT).copied();
    if !rule.is_some_and(|r| r.blocks())
        && found & EXEMPT == 0
        && let Some(gate) = NET_SECRETS.get(secrets_slot(&sock.tag.root))
        && gate.blocks()
    {
        rule = Some(*gate);
    }
    let Some(rule) = rule else {
        return ALLOW;
    };
    let outcome = if rule.blocks() {
        count(Counter::NetDenied);
        result::DENIED
    } else {
        count(Counter::NetAudited);
        result::ALLOWED
    };
    let header = crate::ctx::header_as(EventKind::NetConnect, &sock.tag, proc, 0, sock.uid);
    emit_with(header, sock.comm, dest, hook, &rule, outcome, None);
    if outcome == result::ALLOWED {
        ALLOW
    } else {
        DENY
    }
}

#[inline(always)]
fn try_unix(ctx: &SockAddrContext, hook: u32) -> Result<i32, i32> {
    let Some(caller) = tagged() else {
        return Ok(ALLOW);
    };
    let uo = unix_offsets();
    if uo.valid == 0 || uo.ctx_uaddr > UNIX_CTX_READ - 8 || uo.ctx_uaddrlen > UNIX_CTX_READ - 4 {
        return Err(-1);
    }
    // On the stack, not in a per-CPU scratch map: a sock_addr program can be preempted by
    // another task's on the same CPU, which would overwrite shared scratch mid-lookup.
    let mut ctx_copy = [0u8; UNIX_CTX_READ as usize];
    let mut key = UnixKey::default();
    // The context of a sock_addr program is a `struct bpf_sock_addr_kern`; its `uaddr` and
    // `uaddrlen` have no `bpf_sock_addr` field, so copy the start of it (the verifier lets a
    // privileged program hand the context pointer to the helper) and read them at their BTF
    // offsets.
    // SAFETY: the helper checks the source address and writes at most the buffer's size.
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            ctx_copy.as_mut_ptr().cast(),
            UNIX_CTX_READ,
            ctx.sock_addr as *const _,
        )
    };
    if ret != 0 {
        return Err(ret as i32);
    }
    let uaddr_off = (uo.ctx_uaddr & (UNIX_CTX_READ - 8)) as usize;
    let len_off = (uo.ctx_uaddrlen & (UNIX_CTX_READ - 4)) as usize;
    // SAFETY: both offsets are masked inside `ctx`; unaligned reads of plain integers.
    let (uaddr, uaddrlen) = unsafe {
        (
            core::ptr::read_unaligned(ctx_copy.as_ptr().add(uaddr_off).cast::<u64>()),
            core::ptr::read_unaligned(ctx_copy.as_ptr().add(len_off).cast::<u32>()),
        )
    };
    if uaddr == 0 {
        return Err(-1);
    }
    // SAFETY: the helper checks the source address and writes exactly UNIX_PATH_LEN bytes.
    let ret = unsafe {
        generated::bpf_probe_read_kernel(
            key.path.as_mut_ptr().cast(),
            UNIX_PATH_LEN as u32,
            (uaddr + u64::from(uo.sun_path)) as *const _,
        )
    };
    if ret != 0 {
        return Err(ret as i32);
    }
    key.normalise(uaddrlen.saturating_sub(uo.sun_path));
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a by-value key would be one more 112-byte copy on the 512-byte stack"
    )]
    let set = match NET_UNIX.get_ptr(&key) {
        Some(set) => set,
        None => {
            let set = other_spelling(&key);
            if set.is_null() {
                return Ok(ALLOW);
            }
            set
        }
    };
    let sa = ctx.sock_addr;
    let dest = Dest {
        family: AF_UNIX,
        addr: [0; 16],
        port: 0,
        class: proto_class(ctx_u32(sa, CtxField::Type), ctx_u32(sa, CtxField::Protocol)),
    };
    // SAFETY: map value pointer from a successful lookup.
    let set = unsafe { &*set };
    Ok(decide(&caller, set, &dest, hook, Some(&key), Kill::Pending))
}

/// A name the kernel resolves otherwise than as written (relative to the cwd, `//`, `.` or
/// `..`, under `/proc`): the rules of protected sockets with the same last component. This
/// tier sees only the name, so such a spelling is decided by its last component (stricter
/// than the kernel's resolution, never looser); the bpf-lsm tier decides by the socket file.
/// Null when there is none (a plain pointer: what a BPF subprogram returns in a register).
#[inline(never)]
fn other_spelling(key: &UnixKey) -> *const RuleSet {
    match key.other_spelling() {
        Some(other) => NET_UNIX.get_ptr(&other).unwrap_or(core::ptr::null()),
        None => core::ptr::null(),
    }
}

/// The `bpf_sock_addr` fields the programs read. Each read is one 4-byte load, the only
/// access the verifier allows to them.
#[derive(Clone, Copy)]
enum CtxField {
    Ip4,
    Ip6(usize),
    Port,
    Type,
    Protocol,
}

#[inline(always)]
fn ctx_u32(sa: *mut bpf_sock_addr, field: CtxField) -> u32 {
    // SAFETY: `sa` is the program's context; the verifier rewrites these loads into reads of
    // the kernel's own context. Volatile keeps each one a single 4-byte load.
    unsafe {
        match field {
            CtxField::Ip4 => core::ptr::read_volatile(&(*sa).user_ip4),
            CtxField::Ip6(0) => core::ptr::read_volatile(&(*sa).user_ip6[0]),
            CtxField::Ip6(1) => core::ptr::read_volatile(&(*sa).user_ip6[1]),
            CtxField::Ip6(2) => core::ptr::read_volatile(&(*sa).user_ip6[2]),
            CtxField::Ip6(_) => core::ptr::read_volatile(&(*sa).user_ip6[3]),
            CtxField::Port => core::ptr::read_volatile(&(*sa).user_port),
            CtxField::Type => core::ptr::read_volatile(&(*sa).type_),
            CtxField::Protocol => core::ptr::read_volatile(&(*sa).protocol),
        }
    }
}

/// The first rule of `set` (strongest first) that applies to `dest`. The allow-list's
/// exemptions come last and decide nothing here.
#[inline(always)]
fn first_match(set: &RuleSet, dest: &Dest, check_ports: bool) -> Option<NetRule> {
    let mut i = 0;
    while i < RULE_SLOTS_MAX {
        if i as u32 >= set.count {
            break;
        }
        let slot = set.slots[i] & (RULE_SLOTS_TOTAL - 1);
        if let Some(rule) = NET_RULES.get(slot)
            && rule.matches(dest.class, dest.port, check_ports)
        {
            if rule.exempts() {
                return None;
            }
            return Some(*rule);
        }
        i += 1;
    }
    None
}

/// What of `set` applies to an IP destination, in one pass: the slot of the first rule that
/// decides ([`NO_SLOT`]: none), with [`EXEMPT`] set when the secrets allow-list exempts the
/// destination (the exemptions come last). One loop, not two: the 6.1 verifier walks the LSM
/// connect program's every path, and a second loop of sixteen lookups took it past its budget.
/// One integer, not a tuple or an `Option`: their unused halves are undefined registers, which
/// the verifier refuses to read.
#[inline(always)]
fn matching(set: &RuleSet, dest: &Dest) -> u32 {
    let mut first = NO_SLOT;
    let mut i = 0;
    while i < RULE_SLOTS_MAX {
        if i as u32 >= set.count {
            break;
        }
        let slot = set.slots[i] & (RULE_SLOTS_TOTAL - 1);
        if let Some(rule) = NET_RULES.get(slot)
            && rule.matches(dest.class, dest.port, true)
        {
            if rule.exempts() {
                return first | EXEMPT;
            }
            if first == NO_SLOT {
                first = slot;
            }
        }
        i += 1;
    }
    first
}

/// No slot: above every slot of the rule array.
const NO_SLOT: u32 = 0xffff;
const EXEMPT: u32 = 1 << 16;

/// An IPv4/IPv6 destination of a tagged process, in the order of precedence: an endpoint
/// rule that blocks; then, for a tree that read a secret, the secrets rule, unless the
/// destination is on its allow-list; then an endpoint rule that audits.
#[inline(always)]
pub(super) fn decide_inet(
    caller: &Caller,
    set: Option<&RuleSet>,
    dest: &Dest,
    hook: u32,
    kill: Kill,
) -> i32 {
    let found = match set {
        Some(set) => matching(set, dest),
        None => NO_SLOT,
    };
    let rule = NET_RULES.get(found & NO_SLOT).copied();
    if let Some(rule) = &rule
        && rule.blocks()
    {
        return apply(caller, rule, dest, hook, None, kill);
    }
    if found & EXEMPT == 0
        && let Some(gate) = NET_SECRETS.get(secrets_slot(&caller.tag.root))
    {
        let gate = *gate;
        return apply(caller, &gate, dest, hook, None, kill);
    }
    match rule {
        Some(rule) => apply(caller, &rule, dest, hook, None, kill),
        None => ALLOW,
    }
}

/// Which entry of [`NET_SECRETS`] applies to the tree with root `root` ([`NO_SLOT`]: none):
/// the secrets rule once the tree read a secret; its pending form (deny) while a scan of what
/// it read has not answered and the rule blocks. A subprogram of its own, verified apart from
/// the lookups around it.
#[inline(never)]
fn secrets_slot(root: &ProcKey) -> u32 {
    let Some(gate) = NET_SECRETS.get(SECRETS_SLOT) else {
        return NO_SLOT;
    };
    if gate.generation == 0 {
        return NO_SLOT;
    }
    let Some(reads) = TREE_READS.get_ptr(root) else {
        return NO_SLOT;
    };
    // SAFETY: map value pointers from successful lookups; plain integers.
    let state = unsafe { TreeState::of(&*reads, TREE_VERDICTS.get_ptr(root).map(|v| &*v)) };
    match state {
        TreeState::Tainted => SECRETS_SLOT,
        TreeState::Pending if gate.blocks() => SECRETS_PENDING_SLOT,
        _ => NO_SLOT,
    }
}

/// Apply the matching rule, record the decision and return the verdict.
#[inline(always)]
pub(super) fn decide(
    caller: &Caller,
    set: &RuleSet,
    dest: &Dest,
    hook: u32,
    unix: Option<&UnixKey>,
    kill: Kill,
) -> i32 {
    let Some(rule) = first_match(set, dest, unix.is_none()) else {
        return ALLOW;
    };
    apply(caller, &rule, dest, hook, unix, kill)
}

/// A tagged process is creating a socket of [`raw_class`] `class`: decide with the
/// raw-socket rule, if the policy has one.
#[inline(always)]
pub(super) fn decide_raw(caller: &Caller, family: u32, class: u32, hook: u32, kill: Kill) -> i32 {
    let Some(rule) = NET_RAW.get(0) else {
        return ALLOW;
    };
    if rule.generation == 0 {
        return ALLOW;
    }
    let rule = *rule;
    let dest = Dest {
        family,
        addr: [0; 16],
        port: 0,
        class,
    };
    apply(caller, &rule, &dest, hook, None, kill)
}

/// Carry out `rule` on the current operation, record the decision and return the verdict.
#[inline(always)]
fn apply(
    caller: &Caller,
    rule: &NetRule,
    dest: &Dest,
    hook: u32,
    unix: Option<&UnixKey>,
    kill: Kill,
) -> i32 {
    let outcome = if !rule.blocks() || approved(caller, rule, dest) != 0 {
        count(Counter::NetAudited);
        result::ALLOWED
    } else if rule.kills() && (kill == Kill::Now || kill_in_place()) {
        count(Counter::NetDenied);
        if kill_current() {
            count(Counter::NetKillsSent);
            result::KILLED
        } else {
            count(Counter::NetKillFailed);
            result::KILL_FAILED
        }
    } else if rule.kills() {
        count(Counter::NetDenied);
        if schedule_kill(caller, rule.rule_id) {
            count(Counter::NetKillsScheduled);
            result::KILLED
        } else {
            count(Counter::NetKillFailed);
            result::KILL_FAILED
        }
    } else {
        count(Counter::NetDenied);
        // A hold stops the offender before it returns, where the program may signal; the
        // daemon stops the rest of the tree.
        if rule.action == guard_common::decision::action::HOLD
            && (kill == Kill::Now || kill_in_place())
        {
            let _ = stop_current();
        }
        result::DENIED
    };
    emit(caller, dest, hook, rule, outcome, unix);
    if outcome == result::ALLOWED {
        ALLOW
    } else {
        DENY
    }
}

/// 1 when `rule` asks a human and an approval of it for the caller's tree, or for the caller
/// alone, and `dest` is live (its deadline, in the map, is still ahead): the operation goes
/// through, recorded. A subprogram: only `ask` rules pay for the lookups, and the verifier
/// walks it apart.
#[inline(never)]
fn approved(caller: &Caller, rule: &NetRule, dest: &Dest) -> u32 {
    use guard_common::net::exception_scope;
    if rule.action != guard_common::decision::action::ASK {
        return 0;
    }
    let mut key = guard_common::net::ExceptionKey {
        root: caller.tag.root,
        rule_id: rule.rule_id,
        family: dest.family,
        port: u32::from(dest.port),
        scope: exception_scope::TREE,
        addr: dest.addr,
    };
    if live(NET_EXCEPTIONS.get_ptr(&key)) {
        return 1;
    }
    key.root = caller.key();
    key.scope = exception_scope::PROCESS;
    u32::from(live(NET_EXCEPTIONS.get_ptr(&key)))
}

/// Record the caller for SIGKILL when the kernel function that ran the cgroup program returns.
#[inline(always)]
fn schedule_kill(caller: &Caller, rule_id: u32) -> bool {
    let pending = PendingKill {
        start_ns: caller.tag.start_ns,
        rule_id,
        _pad: 0,
    };
    match PENDING_KILLS.insert(caller.tgid, pending, BPF_NOEXIST) {
        Ok(()) => {
            adjust_pending(1);
            true
        }
        // Already pending (another thread got there first).
        Err(e) if e == -EEXIST => true,
        Err(_) => false,
    }
}

#[inline(always)]
fn adjust_pending(delta: u64) {
    if let Some(slot) = PENDING_COUNT.get_ptr_mut(0) {
        // SAFETY: the array slot lives as long as the map; the add is one atomic BPF
        // instruction, shared with every CPU. The old value is not used (BPF_ADD without
        // BPF_FETCH, which every BPF CPU version has).
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, delta) };
    }
}

/// Drop a pending kill of `tgid` (its process is gone). Called by the exit tracker.
#[inline(always)]
pub fn forget_pending_kill(tgid: u32) {
    let Some(pending) = PENDING_COUNT.get_ptr(0) else {
        return;
    };
    // SAFETY: pointer to the array slot from a successful lookup.
    if unsafe { core::ptr::read_volatile(pending) } == 0 {
        return;
    }
    if PENDING_KILLS.remove(tgid).is_ok() {
        adjust_pending(u64::MAX); // -1
    }
}

#[inline(always)]
fn send_pending_kill() {
    let tgid = current_tgid();
    let Some(pending) = PENDING_KILLS.get_ptr(tgid) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let pending = unsafe { *pending };
    // Spare a process that reused the pid: the offender was tagged with this start time.
    // SAFETY (closure body): map value pointer from a successful lookup.
    let same = TAGS
        .get_ptr(tgid)
        .is_some_and(|tag| unsafe { (*tag).start_ns } == pending.start_ns);
    if same {
        if !kill_current() {
            count(Counter::NetKillFailed);
            return; // retried at the next socket operation
        }
        count(Counter::NetKillsSent);
    }
    if PENDING_KILLS.remove(tgid).is_ok() {
        adjust_pending(u64::MAX); // -1
    }
}

#[inline(always)]
fn emit(
    caller: &Caller,
    dest: &Dest,
    hook: u32,
    rule: &NetRule,
    outcome: u32,
    unix: Option<&UnixKey>,
) {
    let comm = bpf_get_current_comm().unwrap_or([0; 16]);
    emit_with(
        caller.header(EventKind::NetConnect),
        comm,
        dest,
        hook,
        rule,
        outcome,
        unix,
    );
}

/// [`emit`] with the header and `comm` given (a packet may leave in another task's context).
#[inline(always)]
fn emit_with(
    header: guard_common::event::EventHeader,
    comm: [u8; 16],
    dest: &Dest,
    hook: u32,
    rule: &NetRule,
    outcome: u32,
    unix: Option<&UnixKey>,
) {
    let Some(mut entry) = EVENTS.reserve::<NetEvent>(0) else {
        count(Counter::EventsDropped);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved record of NetEvent's size; every field is written
    // before submit.
    unsafe {
        (*ev).header = header;
        (*ev).comm = comm;
        (*ev).hook = hook;
        (*ev).family = dest.family;
        (*ev).protocol = dest.class;
        (*ev).port = u32::from(dest.port);
        (*ev).addr = dest.addr;
        (*ev).rule_id = rule.rule_id;
        (*ev).action = rule.action;
        (*ev).mode = rule.mode;
        (*ev).result = outcome;
        (*ev).generation = rule.generation;
        (*ev)._pad2 = [0; 4];
        match unix {
            Some(key) => {
                (*ev).unix_len = key.len;
                (*ev).unix_path = key.path;
            }
            None => {
                (*ev).unix_len = 0;
                (*ev).unix_path = [0; UNIX_PATH_LEN];
            }
        }
    }
    entry.submit(crate::maps::wake_now());
}
