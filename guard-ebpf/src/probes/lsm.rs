//! The bpf-lsm tier: BPF LSM programs that refuse a tagged process's operation before it
//! happens, in the kernel, whether or not the daemon runs. Loaded instead of the fallback
//! tier's cgroup sock_addr programs, fanotify permission events and kill-on-detect
//! tracepoints when the kernel runs BPF LSM (`lsm=…,bpf`).
//!
//! - Network: `socket_connect` and `socket_sendmsg` see the destination of every connect,
//!   `sendto`/`sendmsg` with an address (UDP without connect, TCP Fast Open) and io_uring
//!   connect, for IPv4, IPv6 (v4-mapped matched as IPv4) and unix sockets alike, and decide
//!   with the same rule maps as the cgroup programs. `kill` is a SIGKILL sent right here.
//!   `socket_create` puts raw IPv4/IPv6 and packet sockets under the raw-socket rule.
//! - Files: `file_open` (read, write, `O_TRUNC`, exec), `path_unlink`, `path_rmdir`,
//!   `path_rename`, `path_truncate`/`file_truncate`, `path_link`, `path_mknod` (which
//!   `open(O_CREAT)` goes through), `path_mkdir`, `path_symlink`, `path_chmod` and
//!   `path_chown` match the object by identity (device + inode, its ancestors, its volume),
//!   as the kill-on-detect programs do, and refuse with EPERM: nothing is lost.
//!
//! - Self-protection: `task_kill` and `ptrace_access_check` (which also guards
//!   `/proc/PID/mem` and `process_vm_*`) refuse a tagged process anything aimed at the daemon,
//!   and `bpf` refuses tagged processes every `bpf()` call.
//!
//! Struct fields are read at offsets from the running kernel's BTF (`LsmOffsets`,
//! `FileOffsets`), so one build runs on 6.1, 6.12 and 6.18. Untagged processes cost one map
//! lookup; internal errors allow and are counted.

use aya_ebpf::{macros::lsm, maps::lpm_trie::Key, programs::LsmContext};
use guard_common::{
    file::{access, counter, lsm_hook},
    net::{
        AF_INET, AF_INET6, AF_UNIX, Ip4Data, Ip6Data, UNIX_PATH_LEN, UnixKey, hook, proto_class,
        raw_class,
    },
};

use super::{
    file::{lsm_decide, read},
    net::{ALLOW, Dest, Kill, carried_v4, decide, decide_inet, decide_raw},
};
use crate::ctx::{Caller, daemon_tgid, forget, is_tagged, tagged};
use crate::maps::{NET_UNIX, NET4, NET6, count, count_file, file_offsets, lsm_offsets};
use guard_common::event::Counter;

const EPERM: i32 = 1;
const FMODE_READ: u32 = 0x1;
pub(super) const FMODE_WRITE: u32 = 0x2;
const FMODE_EXEC: u32 = 0x20;
pub(super) const O_TRUNC: u32 = 0o1000;
/// `__FMODE_EXEC` in `f_flags`.
const FMODE_EXEC_FLAG: u32 = 0x20;

// --- Network.

/// `socket_connect(struct socket *sock, struct sockaddr *address, int addrlen)`.
#[lsm(hook = "socket_connect")]
pub fn guard_lsm_socket_connect(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let addr: *const u8 = ctx.arg(1);
    let len: i32 = ctx.arg(2);
    net_verdict(try_net(sock, addr, len, hook::LSM_CONNECT))
}

/// `socket_sendmsg(struct socket *sock, struct msghdr *msg, int size)`: only a message with
/// a destination address is decided (a connected socket's was decided at connect).
#[lsm(hook = "socket_sendmsg")]
pub fn guard_lsm_socket_sendmsg(ctx: LsmContext) -> i32 {
    let sock: *const u8 = ctx.arg(0);
    let msg: *const u8 = ctx.arg(1);
    if !is_tagged() {
        return 0;
    }
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return net_verdict(Err(-1));
    }
    let Ok(name) = read::<*const u8>(msg, lo.msghdr_name) else {
        return net_verdict(Err(-1));
    };
    if name.is_null() {
        return 0;
    }
    let Ok(len) = read::<i32>(msg, lo.msghdr_namelen) else {
        return net_verdict(Err(-1));
    };
    net_verdict(try_net(sock, name, len, hook::LSM_SENDMSG))
}

/// `socket_create(int family, int type, int protocol, int kern)`: a tagged process creating
/// a raw IPv4/IPv6 socket or a packet socket meets the raw-socket rule. Sockets the kernel
/// makes for itself (`kern`) are not the process's.
#[lsm(hook = "socket_create")]
pub fn guard_lsm_socket_create(ctx: LsmContext) -> i32 {
    let Some(caller) = tagged() else {
        return 0;
    };
    let family: i32 = ctx.arg(0);
    let sock_type: i32 = ctx.arg(1);
    let kern: i32 = ctx.arg(3);
    if kern != 0 {
        return 0;
    }
    let Some(class) = raw_class(family as u32, sock_type as u32) else {
        return 0;
    };
    net_verdict(Ok(decide_raw(
        &caller,
        family as u32,
        class,
        hook::LSM_SOCKET_CREATE,
        Kill::Now,
    )))
}

/// `unix_stream_connect(struct sock *sock, struct sock *other, struct sock *newsk)`: the
/// listening socket the kernel found, whatever spelling, symlink or hard link led to it.
#[lsm(hook = "unix_stream_connect")]
pub fn guard_lsm_unix_stream_connect(ctx: LsmContext) -> i32 {
    unix_stream_connect(ctx.arg(1), hook::LSM_UNIX_STREAM_CONNECT)
}

/// `unix_may_send(struct socket *sock, struct socket *other)`: the peer of a datagram.
#[lsm(hook = "unix_may_send")]
pub fn guard_lsm_unix_may_send(ctx: LsmContext) -> i32 {
    unix_may_send(ctx.arg(1), hook::LSM_UNIX_MAY_SEND)
}

/// The decision on a stream connect to `other` (a `struct sock`): 0 or `-EPERM`. Shared with
/// the fallback tier's `fmod_ret` program (`probes/modify_return.rs`).
#[inline(always)]
pub(super) fn unix_stream_connect(other: *const u8, hook: u32) -> i32 {
    net_verdict(try_unix_peer(other, SOCK_STREAM, hook))
}

/// The decision on a datagram to `other` (a `struct socket`): 0 or `-EPERM`.
#[inline(always)]
pub(super) fn unix_may_send(other: *const u8, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    let lo = lsm_offsets();
    if lo.valid == 0 || other.is_null() {
        return net_verdict(Err(-1));
    }
    match read::<*const u8>(other, lo.socket_sk) {
        Ok(sk) => net_verdict(try_unix_peer(sk, SOCK_DGRAM, hook)),
        Err(e) => net_verdict(Err(e)),
    }
}

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// Decide on a unix peer `peer` (a `struct sock` that is a `unix_sock`) by the identity of
/// the socket file it is bound to; an abstract or unbound peer is left to the name rules.
#[inline(always)]
fn try_unix_peer(peer: *const u8, sock_type: u32, hook: u32) -> Result<i32, i32> {
    let Some(caller) = tagged() else {
        return Ok(ALLOW);
    };
    let (lo, fo) = (lsm_offsets(), file_offsets());
    if lo.valid == 0 || fo.valid == 0 {
        return Err(-1);
    }
    if peer.is_null() {
        return Ok(ALLOW);
    }
    let dentry: *const u8 = read(peer, lo.unix_sock_dentry)?;
    if dentry.is_null() {
        return Ok(ALLOW);
    }
    let inode: *const u8 = read(dentry, fo.dentry_inode)?;
    if inode.is_null() {
        return Ok(ALLOW);
    }
    let sb: *const u8 = read(inode, fo.inode_sb)?;
    let key = UnixKey::inode(read(sb, fo.sb_dev)?, read(inode, fo.inode_ino)?);
    #[expect(
        clippy::needless_borrows_for_generic_args,
        reason = "a by-value key would be one more 112-byte copy on the 512-byte stack"
    )]
    let Some(set) = NET_UNIX.get_ptr(&key) else {
        return Ok(ALLOW);
    };
    // The event names the path the peer was bound to.
    let mut name = UnixKey::default();
    let addr: *const u8 = read(peer, lo.unix_sock_addr)?;
    if !addr.is_null() {
        let len: i32 = read(addr, lo.unix_address_len)?;
        // SAFETY: the helper checks the source address and writes exactly UNIX_PATH_LEN
        // bytes into the key.
        let ret = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                name.path.as_mut_ptr().cast(),
                UNIX_PATH_LEN as u32,
                addr.wrapping_add(lo.unix_address_name as usize + 2).cast(),
            )
        };
        if ret == 0 {
            name.normalise((len - 2).max(0) as u32);
        }
    }
    let dest = Dest {
        family: AF_UNIX,
        addr: [0; 16],
        port: 0,
        class: proto_class(sock_type, 0),
    };
    // SAFETY: map value pointer from a successful lookup.
    let set = unsafe { &*set };
    Ok(decide(&caller, set, &dest, hook, Some(&name), Kill::Now))
}

#[inline(always)]
fn net_verdict(r: Result<i32, i32>) -> i32 {
    match r {
        Ok(v) if v == ALLOW => 0,
        Ok(_) => -EPERM,
        Err(_) => {
            count(Counter::NetFailOpen);
            0
        }
    }
}

#[inline(always)]
fn try_net(sock: *const u8, addr: *const u8, len: i32, hook: u32) -> Result<i32, i32> {
    let Some(caller) = tagged() else {
        return Ok(ALLOW);
    };
    if addr.is_null() {
        return Ok(ALLOW);
    }
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return Err(-1);
    }
    let len = if len < 0 { 0 } else { len as u32 };
    let family = u32::from(read::<u16>(addr, 0)?);
    let sock_type: i16 = read(sock, lo.socket_type)?;
    let sk: *const u8 = read(sock, lo.socket_sk)?;
    let protocol = if sk.is_null() {
        0
    } else {
        u32::from(read::<u16>(sk, lo.sock_protocol)?)
    };
    let mut dest = Dest {
        family: AF_INET,
        addr: [0; 16],
        port: 0,
        class: proto_class(sock_type as u32, protocol),
    };
    if family == AF_UNIX {
        if len <= 2 {
            return Ok(ALLOW);
        }
        let mut key = UnixKey::default();
        // The address is the kernel's copy in a `sockaddr_storage` (128 bytes): the path
        // buffer after the family always lies inside it.
        // SAFETY: the helper checks the source address and writes exactly UNIX_PATH_LEN
        // bytes into the key.
        let ret = unsafe {
            aya_ebpf::helpers::generated::bpf_probe_read_kernel(
                key.path.as_mut_ptr().cast(),
                UNIX_PATH_LEN as u32,
                addr.wrapping_add(2).cast(),
            )
        };
        if ret != 0 {
            return Err(ret as i32);
        }
        key.normalise(len - 2);
        #[expect(
            clippy::needless_borrows_for_generic_args,
            reason = "a by-value key would be one more 112-byte copy on the 512-byte stack"
        )]
        let Some(set) = NET_UNIX.get_ptr(&key) else {
            return Ok(ALLOW);
        };
        dest.family = AF_UNIX;
        // SAFETY: map value pointer from a successful lookup.
        let set = unsafe { &*set };
        return Ok(decide(&caller, set, &dest, hook, Some(&key), Kill::Now));
    }
    let set = if family == AF_INET {
        if len < 8 {
            return Ok(ALLOW);
        }
        dest.port = u16::from_be(read::<u16>(addr, 2)?);
        let ip: [u8; 4] = read(addr, 4)?;
        dest.addr = [
            ip[0], ip[1], ip[2], ip[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        NET4.get(Key::new(32, Ip4Data { addr: ip }))
    } else if family == AF_INET6 {
        if len < 24 {
            return Ok(ALLOW);
        }
        dest.port = u16::from_be(read::<u16>(addr, 2)?);
        let ip: [u8; 16] = read(addr, 8)?;
        match carried_v4(&ip) {
            Some(v4) => {
                dest.addr = [
                    v4[0], v4[1], v4[2], v4[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
                ];
                NET4.get(Key::new(32, Ip4Data { addr: v4 }))
            }
            None => {
                dest.family = AF_INET6;
                dest.addr = ip;
                NET6.get(Key::new(
                    128,
                    Ip6Data {
                        addr: ip,
                        _pad: [0; 4],
                    },
                ))
            }
        }
    } else {
        // AF_UNSPEC (disconnect) and families no rule can name.
        return Ok(ALLOW);
    };
    // One verifier state for every path here (see `forget` and `net::try_inet`).
    let set = set.copied();
    let dest = forget(&dest);
    Ok(decide_inet(&caller, set.as_ref(), &dest, hook, Kill::Now))
}

// --- Files.

// Every file hook fails open on an internal error (an unreadable kernel pointer, no offsets)
// and counts it (`file_errors` in `guard status`): refusing would break the host's own
// processes for a fault of guard's.

/// An internal error in a file hook: allow, counted.
#[inline(always)]
fn file_error() -> i32 {
    count_file(counter::ERRORS);
    0
}

/// The dentry of a `const struct path *` (null for a null path).
#[inline(always)]
fn path_dentry(path: *const u8) -> Result<*const u8, i32> {
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return Err(-1);
    }
    if path.is_null() {
        return Ok(core::ptr::null());
    }
    read::<*const u8>(path, lo.path_dentry)
}

/// The inode of a dentry (null for a negative dentry or a null one).
#[inline(always)]
fn dentry_inode(dentry: *const u8) -> Result<*const u8, i32> {
    let o = file_offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    if dentry.is_null() {
        return Ok(core::ptr::null());
    }
    read::<*const u8>(dentry, o.dentry_inode)
}

/// Decide on the object behind `dentry`.
#[inline(always)]
pub(super) fn on_dentry(dentry: *const u8, want: u32, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    match dentry_inode(dentry) {
        Ok(inode) => lsm_decide(inode, dentry, want, hook),
        Err(_) => file_error(),
    }
}

/// Decide on the object behind a `const struct path *`.
#[inline(always)]
pub(super) fn on_path(path: *const u8, want: u32, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    match path_dentry(path) {
        Ok(dentry) => on_dentry(dentry, want, hook),
        Err(_) => file_error(),
    }
}

/// Decide on creating the entry `dentry` in the directory `dir`.
#[inline(always)]
pub(super) fn on_create(dir: *const u8, dentry: *const u8, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    match path_dentry(dir).and_then(dentry_inode) {
        Ok(dir_inode) => lsm_decide(dir_inode, dentry, access::WRITE, hook),
        Err(_) => file_error(),
    }
}

/// Decide on an opened or truncated `struct file *`.
#[inline(always)]
pub(super) fn on_file(file: *const u8, want: u32, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return file_error();
    }
    match (
        read::<*const u8>(file, lo.file_inode),
        read::<*const u8>(file, lo.file_dentry),
    ) {
        (Ok(inode), Ok(dentry)) => lsm_decide(inode, dentry, want, hook),
        _ => file_error(),
    }
}

/// `file_open(struct file *file)`: reads, writes (and `O_TRUNC`) and exec opens.
#[lsm(hook = "file_open")]
pub fn guard_lsm_file_open(ctx: LsmContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    match tagged() {
        // An untagged reader of a file an agent wrote may be running the agent's code.
        None => {
            super::taint::reader_opened(file);
            0
        }
        Some(caller) => {
            let verdict = tagged_open(&caller, file);
            if verdict == 0 {
                // After the decision, in a subprogram of its own: the stack of a chain of
                // calls is counted whole.
                super::secret::file_opened(&caller, file);
            }
            verdict
        }
    }
}

/// A tagged process's open: decided on the object, and its writes remembered. A function of
/// its own (a BPF subprogram), like the reader's path: each keeps its own stack frame, and the
/// two together would exceed the 512 bytes a program may use.
#[inline(never)]
fn tagged_open(caller: &Caller, file: *const u8) -> i32 {
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return file_error();
    }
    let mode: u32 = read(file, lo.file_mode).unwrap_or(FMODE_READ | FMODE_WRITE);
    let flags: u32 = read(file, lo.file_flags).unwrap_or(O_TRUNC);
    let mut want = 0;
    if mode & FMODE_READ != 0 {
        want |= access::READ;
    }
    if mode & FMODE_WRITE != 0 || flags & O_TRUNC != 0 {
        want |= access::WRITE;
    }
    // `f_mode` carries FMODE_EXEC on recent kernels; before (6.1) only `f_flags` has the
    // exec open's `__FMODE_EXEC`.
    if mode & FMODE_EXEC != 0 || flags & FMODE_EXEC_FLAG != 0 {
        want |= access::EXEC;
    }
    let verdict = on_file(file, want, lsm_hook::FILE_OPEN);
    if verdict == 0
        && want & access::WRITE != 0
        && let Ok(inode) = read::<*const u8>(file, lo.file_inode)
    {
        super::taint::wrote(caller, inode);
    }
    verdict
}

/// `file_truncate(struct file *file)` (Linux ≥ 6.2): `ftruncate` and `O_TRUNC`.
#[lsm(hook = "file_truncate")]
pub fn guard_lsm_file_truncate(ctx: LsmContext) -> i32 {
    on_file(ctx.arg(0), access::WRITE, lsm_hook::FILE_TRUNCATE)
}

/// `path_unlink(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_unlink")]
pub fn guard_lsm_path_unlink(ctx: LsmContext) -> i32 {
    on_dentry(ctx.arg(1), access::DELETE, lsm_hook::PATH_UNLINK)
}

/// `path_rmdir(const struct path *dir, struct dentry *dentry)`.
#[lsm(hook = "path_rmdir")]
pub fn guard_lsm_path_rmdir(ctx: LsmContext) -> i32 {
    on_dentry(ctx.arg(1), access::DELETE, lsm_hook::PATH_RMDIR)
}

/// `path_rename(old_dir, old_dentry, new_dir, new_dentry[, flags])`: moving an object away
/// deletes it from where it was. (The destination side is [`guard_lsm_path_rename_to`], a
/// second program on the same hook: one decision per program keeps each within the 6.1
/// verifier's budget.)
#[lsm(hook = "path_rename")]
pub fn guard_lsm_path_rename(ctx: LsmContext) -> i32 {
    on_dentry(ctx.arg(1), access::DELETE, lsm_hook::PATH_RENAME)
}

/// `path_rename`, destination side: an entry appearing in a protected directory is a write
/// of it, and a replaced object is deleted.
#[lsm(hook = "path_rename")]
pub fn guard_lsm_path_rename_to(ctx: LsmContext) -> i32 {
    on_target(ctx.arg(2), ctx.arg(3), lsm_hook::PATH_RENAME)
}

/// Decide on the entry `dentry` of directory `dir` being created or replaced: the replaced
/// object itself (delete or write), then the directory and its ancestors (write).
#[inline(always)]
pub(super) fn on_target(dir: *const u8, dentry: *const u8, hook: u32) -> i32 {
    if !is_tagged() {
        return 0;
    }
    match dentry_inode(dentry) {
        Ok(existing) if existing.is_null() => on_create(dir, dentry, hook),
        Ok(existing) => lsm_decide(existing, dentry, access::WRITE | access::DELETE, hook),
        Err(_) => file_error(),
    }
}

/// `path_truncate(const struct path *path)`: `truncate(2)` (and on kernels without
/// `file_truncate`, `ftruncate` and `O_TRUNC`).
#[lsm(hook = "path_truncate")]
pub fn guard_lsm_path_truncate(ctx: LsmContext) -> i32 {
    on_path(ctx.arg(0), access::WRITE, lsm_hook::PATH_TRUNCATE)
}

/// `path_link(struct dentry *old_dentry, const struct path *new_dir, struct dentry *new)`:
/// a new name for a protected object is a write of it (it would outlive a rename of the
/// original).
#[lsm(hook = "path_link")]
pub fn guard_lsm_path_link(ctx: LsmContext) -> i32 {
    on_dentry(ctx.arg(0), access::WRITE, lsm_hook::PATH_LINK)
}

/// `path_link`, destination side (a second program on the hook): a new entry in a protected
/// directory is a write of the directory.
#[lsm(hook = "path_link")]
pub fn guard_lsm_path_link_to(ctx: LsmContext) -> i32 {
    on_create(ctx.arg(1), ctx.arg(2), lsm_hook::PATH_LINK)
}

/// `path_mknod(dir, dentry, mode, dev)`: also every `open(O_CREAT)` of a new file.
#[lsm(hook = "path_mknod")]
pub fn guard_lsm_path_mknod(ctx: LsmContext) -> i32 {
    on_create(ctx.arg(0), ctx.arg(1), lsm_hook::PATH_MKNOD)
}

/// `path_mkdir(dir, dentry, mode)`.
#[lsm(hook = "path_mkdir")]
pub fn guard_lsm_path_mkdir(ctx: LsmContext) -> i32 {
    on_create(ctx.arg(0), ctx.arg(1), lsm_hook::PATH_MKDIR)
}

/// `path_symlink(dir, dentry, old_name)`.
#[lsm(hook = "path_symlink")]
pub fn guard_lsm_path_symlink(ctx: LsmContext) -> i32 {
    on_create(ctx.arg(0), ctx.arg(1), lsm_hook::PATH_SYMLINK)
}

/// `path_chmod(const struct path *path, umode_t mode)`.
#[lsm(hook = "path_chmod")]
pub fn guard_lsm_path_chmod(ctx: LsmContext) -> i32 {
    on_path(ctx.arg(0), access::WRITE, lsm_hook::PATH_CHMOD)
}

/// `path_chown(const struct path *path, kuid_t uid, kgid_t gid)`.
#[lsm(hook = "path_chown")]
pub fn guard_lsm_path_chown(ctx: LsmContext) -> i32 {
    on_path(ctx.arg(0), access::WRITE, lsm_hook::PATH_CHOWN)
}

// --- Self-protection.

/// Record a refused attempt on the daemon (or a `bpf()` call) by the current, tagged process.
#[inline(always)]
fn refuse_self(tag: &guard_common::Tag, what: u32, detail: u32, daemon: u32) {
    let o = crate::maps::offsets();
    if o.valid == 0 {
        return;
    }
    let me = crate::kernel::Task::current();
    let Ok(key) = me.key(&o) else { return };
    super::guard_self::emit(
        tag,
        key,
        me.parent_tgid(&o).unwrap_or(0),
        aya_ebpf::helpers::bpf_get_current_uid_gid() as u32,
        true,
        what,
        detail,
        daemon,
        guard_common::decision::outcome::DENIED,
    );
}

/// Whether `task` belongs to the daemon, seen from a tagged current process.
#[inline(always)]
fn targets_daemon(task: *const u8) -> Option<(guard_common::Tag, u32)> {
    let Caller { tag, .. } = tagged()?;
    let daemon = daemon_tgid();
    if daemon == 0 {
        return None;
    }
    let o = crate::maps::offsets();
    let target = if o.valid == 0 {
        Err(-1)
    } else {
        crate::kernel::Task(task).tgid(&o)
    };
    match target {
        Ok(tgid) if tgid == daemon => Some((tag, daemon)),
        Ok(_) => None,
        // Fail open, counted.
        Err(_) => {
            count(Counter::ProbeErrors);
            None
        }
    }
}

/// `task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const struct cred
/// *cred)`: no signal from a tagged process reaches the daemon (signal 0, the existence
/// probe, is allowed).
/// No tagged process may thaw a held (frozen) agent tree: `SIGCONT` to one of its processes
/// is refused too.
#[lsm(hook = "task_kill")]
pub fn guard_lsm_task_kill(ctx: LsmContext) -> i32 {
    let sig: i32 = ctx.arg(2);
    if sig == 0 {
        return 0;
    }
    match targets_daemon(ctx.arg(0)) {
        Some((tag, daemon)) => {
            refuse_self(
                &tag,
                guard_common::selfprot::op::LSM_SIGNAL,
                sig as u32,
                daemon,
            );
            -EPERM
        }
        None if sig == SIGCONT => thaw_of_held(ctx.arg(0)),
        None => 0,
    }
}

const SIGCONT: i32 = 18;

/// A tagged process sends `SIGCONT` to `task`: refused when `task` belongs to a held tree.
#[inline(always)]
fn thaw_of_held(task: *const u8) -> i32 {
    let Some(Caller { tag, .. }) = tagged() else {
        return 0;
    };
    let o = crate::maps::offsets();
    if o.valid == 0 {
        return 0;
    }
    let Ok(target) = crate::kernel::Task(task).tgid(&o) else {
        count(Counter::ProbeErrors);
        return 0;
    };
    // SAFETY: map value pointer from a successful lookup; a plain struct copy.
    let Some(target_tag) = crate::maps::TAGS.get_ptr(target).map(|t| unsafe { *t }) else {
        return 0;
    };
    if crate::maps::HELD.get_ptr(&target_tag.root).is_none() {
        return 0;
    }
    refuse_self(
        &tag,
        guard_common::selfprot::op::LSM_THAW,
        SIGCONT as u32,
        target,
    );
    -EPERM
}

/// `ptrace_access_check(struct task_struct *child, unsigned int mode)`: attach, seize,
/// `/proc/PID/mem`, `environ`, `process_vm_*` and `pidfd_getfd`, on the daemon (self-
/// protection) and on any process outside the caller's tree (no deputies).
#[lsm(hook = "ptrace_access_check")]
pub fn guard_lsm_ptrace_access_check(ctx: LsmContext) -> i32 {
    ptrace_access_check(
        ctx.arg(0),
        ctx.arg(1),
        guard_common::selfprot::op::LSM_PTRACE,
    )
}

/// Access to `child` in `mode` (`PTRACE_MODE_*`): refused for a tagged caller aiming at the
/// daemon (recorded as `op`) or outside its tree. Shared with the fallback tier's `fmod_ret`
/// program (`probes/modify_return.rs`).
#[inline(always)]
pub(super) fn ptrace_access_check(child: *const u8, mode: u32, op: u32) -> i32 {
    match targets_daemon(child) {
        Some((tag, daemon)) => {
            refuse_self(&tag, op, mode, daemon);
            -EPERM
        }
        None => super::deputy::process_access(child, mode),
    }
}

/// `bpf(int cmd, union bpf_attr *attr, unsigned int size[, bool kernel])`: tagged processes
/// load, attach, detach and read nothing.
#[lsm(hook = "bpf")]
pub fn guard_lsm_bpf(ctx: LsmContext) -> i32 {
    bpf_call(ctx.arg(0), guard_common::selfprot::op::LSM_BPF)
}

/// A `bpf()` call with command `cmd`: refused (`-EPERM`, recorded as `op`) for a tagged
/// process. Shared with the fallback tier's `fmod_ret` program (`probes/modify_return.rs`).
#[inline(always)]
pub(super) fn bpf_call(cmd: i32, op: u32) -> i32 {
    let Some(Caller { tag, .. }) = tagged() else {
        return 0;
    };
    refuse_self(&tag, op, cmd as u32, daemon_tgid());
    -EPERM
}
