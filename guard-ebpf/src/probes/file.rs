//! File protection on kernels without BPF LSM: the parts the fanotify layer in userspace
//! cannot do.
//!
//! - Kill-on-detect. No permission hook covers unlink, rmdir, rename or truncate here, but
//!   every one of them (and chmod, chown, link, create, write) stamps a new ctime on the inode
//!   it changes or on its directory, in the context of the process doing it. The timestamp
//!   tracepoints hand us that inode; if it, one of its ancestors (walking `d_parent` from each
//!   of its dentries) or its volume is protected and the process is tagged, the process gets
//!   SIGKILL before the system call returns: `rm -rf` dies at its first unlink. The change
//!   itself has happened: at most one object is lost per process.
//! - Raw block devices. A `cgroup/dev` program refuses tagged opens (and mknod) of the block
//!   devices behind protected volumes, whatever the device node is called.
//!
//! One lookup of the tag map decides for untagged processes. Internal errors do nothing and
//! are counted (`file_probe_errors`); every decision is an event, a lost event is counted.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_probe_read_kernel, generated},
    macros::{btf_tracepoint, cgroup_device},
    programs::{BtfTracePointContext, DeviceContext},
};
use guard_common::{
    ProcKey, Tag,
    decision::{action, outcome},
    event::EventKind,
    file::{
        DevKey, FileEvent, FileKey, FileRule, NAME_LEN, POLICY_RULE_ID, TARGET_LEN, access,
        change_access, counter, kernel_dev, lsm_hook, path_arg,
    },
    net::{ExceptionKey, FAMILY_FILE, exception_scope, file_object},
    offsets::FileOffsets,
};

use crate::{
    ctx::{self, Caller, current_ppid, kill_current, live, stop_current, tagged},
    maps::{
        FILE_DEVICES, FILE_EVENTS, FILE_HIT, FILE_KILLED, FILE_OBJECTS, NET_EXCEPTIONS, count_file,
        file_offsets,
    },
};

/// Dentries of one inode examined (hard links).
const MAX_ALIASES: u32 = 4;
/// Ancestors examined above a changed inode.
const MAX_DEPTH: u32 = 48;
/// `bpf_cgroup_dev_ctx.access_type`: type in the low 16 bits, access in the high 16.
const DEVCG_DEV_BLOCK: u32 = 1;
const DEVCG_ACC_MKNOD: u32 = 1;
const DEVCG_ACC_READ: u32 = 2;
const DEVCG_ACC_WRITE: u32 = 4;

#[btf_tracepoint(function = "ctime_ns_xchg")]
pub fn guard_file_ctime(ctx: BtfTracePointContext) -> i32 {
    changed(ctx.arg(0))
}

#[btf_tracepoint(function = "ctime_xchg_skip")]
pub fn guard_file_ctime_skip(ctx: BtfTracePointContext) -> i32 {
    changed(ctx.arg(0))
}

#[btf_tracepoint(function = "inode_set_ctime_to_ts")]
pub fn guard_file_ctime_set(ctx: BtfTracePointContext) -> i32 {
    changed(ctx.arg(0))
}

#[cgroup_device]
pub fn guard_file_device(ctx: DeviceContext) -> i32 {
    match try_device(&ctx) {
        Ok(verdict) => verdict,
        Err(_) => {
            count_file(counter::ERRORS);
            1
        }
    }
}

#[inline(always)]
fn changed(inode: *const u8) -> i32 {
    if try_changed(inode).is_err() {
        count_file(counter::ERRORS);
    }
    0
}

#[inline(always)]
pub(super) fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

/// The protected object a change matched.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Hit {
    rule: FileRule,
    root_ino: u64,
    depth: u32,
    _pad: u32,
}

fn try_changed(inode: *const u8) -> Result<(), i32> {
    let Some(caller) = tagged() else {
        return Ok(());
    };
    // Whatever a tagged process changes is its agent's from now on (deferred execution).
    super::taint::wrote(&caller, inode);
    let Caller { tgid, tag } = caller;
    let o = file_offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let sb: *const u8 = read(inode, o.inode_sb)?;
    let dev: u32 = read(sb, o.sb_dev)?;
    let ino: u64 = read(inode, o.inode_ino)?;
    let Some(hit) = lookup(inode, dev, ino, &o)? else {
        return Ok(());
    };
    let (syscall, regs) = current_syscall(&o);
    let access = change_access(syscall);
    let enforce = hit.rule.enforce & access;
    if enforce == 0 && hit.rule.audit & access == 0 {
        return Ok(());
    }
    if enforce != 0 && hit.rule.rule_id == POLICY_RULE_ID {
        // Held in the kernel before the change is visible: the daemon's next look at the
        // file finds it counted.
        count_file(counter::POLICY_CHANGED);
    }
    // The key names the access the event reports, so the request asks for exactly it.
    let approved = enforce != 0
        && hit.rule.action == action::ASK
        && approved(
            &mut ask_key(&tag, &hit, dev, ino, access),
            ProcKey::new(tgid, tag.start_ns),
        ) != 0;
    let result = if enforce != 0 && !approved {
        // One kill, one event: the unlink that changed a directory also changes the file.
        // SAFETY (closure body): map value pointer from a successful lookup.
        if FILE_KILLED
            .get_ptr(&tgid)
            .is_some_and(|start| unsafe { *start } == tag.start_ns)
        {
            return Ok(());
        }
        if kill_current() {
            let _ = FILE_KILLED.insert(&tgid, &tag.start_ns, 0);
            count_file(counter::KILLS);
            outcome::KILLED
        } else {
            count_file(counter::KILL_FAILED);
            outcome::KILL_FAILED
        }
    } else {
        count_file(counter::AUDITED);
        outcome::ALLOWED
    };
    emit_change(&Change {
        tgid,
        tag: &tag,
        inode,
        entry: core::ptr::null(),
        dev,
        ino,
        hit: &hit,
        access,
        outcome: result,
        hook: lsm_hook::NONE,
        syscall,
        regs,
    });
    Ok(())
}

/// The approval an `ask` rule's request installs for the caller's tree doing `access` on the
/// object `(dev, ino)` (the request names the same object and access as the event).
#[inline(always)]
fn ask_key(tag: &Tag, hit: &Hit, dev: u32, ino: u64, access: u32) -> ExceptionKey {
    ExceptionKey {
        root: tag.root,
        rule_id: hit.rule.rule_id,
        family: FAMILY_FILE,
        port: access,
        scope: exception_scope::TREE,
        addr: file_object(dev, ino),
    }
}

/// 1 when the approval `key` of the tree, or the same for `process` alone, is live. A
/// subprogram: only `ask` rules pay for the lookups.
#[inline(never)]
fn approved(key: &mut ExceptionKey, process: ProcKey) -> u32 {
    if live(NET_EXCEPTIONS.get_ptr(&*key)) {
        return 1;
    }
    key.root = process;
    key.scope = exception_scope::PROCESS;
    u32::from(live(NET_EXCEPTIONS.get_ptr(&*key)))
}

/// A decision on a protected object, for its event.
pub(super) struct Change<'a> {
    pub tgid: u32,
    pub tag: &'a Tag,
    /// The inode the rule matched.
    pub inode: *const u8,
    /// The dentry of the entry operated on, when the hook names one (may be negative: a
    /// new entry); else the inode's first dentry is named.
    pub entry: *const u8,
    pub dev: u32,
    pub ino: u64,
    pub hit: &'a Hit,
    pub access: u32,
    pub outcome: u32,
    pub hook: u32,
    pub syscall: i64,
    pub regs: Option<*const u8>,
}

/// Record a decision on a protected object.
#[inline(always)]
pub(super) fn emit_change(c: &Change<'_>) {
    let o = file_offsets();
    let Some(mut entry) = FILE_EVENTS.reserve::<FileEvent>(0) else {
        count_file(counter::EVENTS_DROPPED);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points to a reserved record of FileEvent's size; every field is written
    // before submit (the string buffers are zeroed, then filled by the helpers, which bound
    // their writes by the sizes given).
    unsafe {
        header(ev, EventKind::FileChange, c.tgid, c.tag);
        (*ev).dev = c.dev;
        (*ev).outcome = c.outcome;
        (*ev).ino = c.ino;
        (*ev).root_ino = c.hit.root_ino;
        (*ev).rule_id = c.hit.rule.rule_id;
        (*ev).access = c.access;
        (*ev).action = c.hit.rule.action;
        (*ev).syscall = c.syscall as i32;
        (*ev).depth = c.hit.depth;
        (*ev).major = 0;
        (*ev).minor = 0;
        (*ev).mode = u32::from(read::<u16>(c.inode, o.inode_mode).unwrap_or(0));
        (*ev).hook = c.hook;
        (*ev)._pad = 0;
        // Only the first byte: the string helpers NUL-terminate what they copy (and zero the
        // buffer when they fail), and userspace reads up to the first NUL. Zeroing the whole
        // buffers is a loop the 6.1 verifier walks byte by byte.
        (*ev).name[0] = 0;
        (*ev).target[0] = 0;
        let dentry = if c.entry.is_null() {
            match read::<*const u8>(c.inode, o.inode_dentry) {
                Ok(first) if !first.is_null() => first.wrapping_sub(o.dentry_alias as usize),
                _ => core::ptr::null(),
            }
        } else {
            c.entry
        };
        if !dentry.is_null()
            && let Ok(name) = read::<*const u8>(dentry, o.dentry_name)
        {
            generated::bpf_probe_read_kernel_str(
                (*ev).name.as_mut_ptr().cast(),
                NAME_LEN as u32,
                name.cast(),
            );
        }
        if let (Some(arg), Some(regs)) = (path_arg(c.syscall), c.regs) {
            let off = if arg == 0 { o.regs_arg0 } else { o.regs_arg1 };
            if let Ok(ptr) = read::<u64>(regs, off) {
                generated::bpf_probe_read_user_str(
                    (*ev).target.as_mut_ptr().cast(),
                    TARGET_LEN as u32,
                    ptr as *const _,
                );
            }
        }
    }
    entry.submit(0);
}

/// A BPF LSM decision (probes/lsm.rs) on an operation of the current process on `inode`
/// (`entry`: the dentry operated on, if any) needing access `want`: 0 to allow, `-EPERM` to
/// refuse. Untagged processes cost one map lookup. Internal errors allow and are counted.
#[inline(always)]
pub(super) fn lsm_decide(inode: *const u8, entry: *const u8, want: u32, hook: u32) -> i32 {
    let Some(Caller { tgid, tag }) = tagged() else {
        return 0;
    };
    if inode.is_null() {
        return 0;
    }
    match try_lsm_decide(tgid, &tag, inode, entry, want, hook) {
        Ok(v) => v,
        Err(_) => {
            count_file(counter::ERRORS);
            0
        }
    }
}

const EPERM: i32 = 1;

#[inline(always)]
fn try_lsm_decide(
    tgid: u32,
    tag: &Tag,
    inode: *const u8,
    entry: *const u8,
    want: u32,
    hook: u32,
) -> Result<i32, i32> {
    let o = file_offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let sb: *const u8 = read(inode, o.inode_sb)?;
    let dev: u32 = read(sb, o.sb_dev)?;
    let ino: u64 = read(inode, o.inode_ino)?;
    // The hook names the dentry: walk its ancestors only (the path the process used),
    // rather than every alias of the inode.
    let hit = if entry.is_null() {
        lookup(inode, dev, ino, &o)?
    } else {
        lookup_entry(entry, dev, ino, &o)?
    };
    let Some(hit) = hit else {
        return Ok(0);
    };
    let enforce = hit.rule.enforce & want;
    let audit = hit.rule.audit & want;
    if enforce == 0 && audit == 0 {
        return Ok(0);
    }
    let approved = enforce != 0
        && hit.rule.action == action::ASK
        && approved(
            &mut ask_key(tag, &hit, dev, ino, enforce),
            ProcKey::new(tgid, tag.start_ns),
        ) != 0;
    let (verdict, result, access) = if enforce != 0 && !approved {
        if hit.rule.action == action::KILL || hit.rule.action == action::KILL_TREE {
            // The process is refused the operation as well.
            if kill_current() {
                count_file(counter::KILLS);
                (-EPERM, outcome::KILLED, enforce)
            } else {
                count_file(counter::KILL_FAILED);
                (-EPERM, outcome::KILL_FAILED, enforce)
            }
        } else {
            if hit.rule.action == action::HOLD {
                // Stopped before the refused call returns; the daemon freezes the rest of
                // the tree.
                let _ = stop_current();
            }
            count_file(counter::LSM_DENIED);
            (-EPERM, outcome::DENIED, enforce)
        }
    } else {
        if hook & lsm_hook::FMOD != 0 && o.ctime_detectors != 0 {
            // The change detectors record what is allowed to happen (see `FileOffsets`).
            return Ok(0);
        }
        count_file(counter::AUDITED);
        (0, outcome::ALLOWED, if approved { enforce } else { audit })
    };
    let (syscall, regs) = current_syscall(&o);
    emit_change(&Change {
        tgid,
        tag,
        inode,
        entry,
        dev,
        ino,
        hit: &hit,
        access,
        outcome: result,
        hook,
        syscall,
        regs,
    });
    Ok(verdict)
}

/// The protected object `inode` is, or lies under: its volume, itself, or an ancestor
/// directory of one of its dentries.
#[inline(always)]
pub(super) fn lookup(
    inode: *const u8,
    dev: u32,
    ino: u64,
    o: &FileOffsets,
) -> Result<Option<Hit>, i32> {
    if let Some(rule) = FILE_OBJECTS.get_ptr(&FileKey::new(dev, 0)) {
        // SAFETY: map value pointer from a successful lookup.
        let rule = unsafe { *rule };
        return Ok(Some(Hit {
            rule,
            root_ino: 0,
            depth: 0,
            _pad: 0,
        }));
    }
    if let Some(rule) = FILE_OBJECTS.get_ptr(&FileKey::new(dev, ino)) {
        // SAFETY: map value pointer from a successful lookup.
        let rule = unsafe { *rule };
        return Ok(Some(Hit {
            rule,
            root_ino: ino,
            depth: 0,
            _pad: 0,
        }));
    }
    let mut node: *const u8 = read(inode, o.inode_dentry)?;
    let mut alias = 0;
    while alias < MAX_ALIASES {
        if node.is_null() {
            break;
        }
        let dentry = node.wrapping_sub(o.dentry_alias as usize);
        if let Some(hit) = ancestors(dentry, dev, o)? {
            return Ok(Some(hit));
        }
        // `hlist_node.next` is its first field.
        node = read(node, 0)?;
        alias += 1;
    }
    Ok(None)
}

/// [`lookup`] for a known dentry (`ino` is its inode's, or its directory's for a new entry):
/// the volume, the inode, then the dentry's ancestors.
#[inline(always)]
fn lookup_entry(entry: *const u8, dev: u32, ino: u64, o: &FileOffsets) -> Result<Option<Hit>, i32> {
    if let Some(rule) = FILE_OBJECTS.get_ptr(&FileKey::new(dev, 0)) {
        // SAFETY: map value pointer from a successful lookup.
        let rule = unsafe { *rule };
        return Ok(Some(Hit {
            rule,
            root_ino: 0,
            depth: 0,
            _pad: 0,
        }));
    }
    if let Some(rule) = FILE_OBJECTS.get_ptr(&FileKey::new(dev, ino)) {
        // SAFETY: map value pointer from a successful lookup.
        let rule = unsafe { *rule };
        return Ok(Some(Hit {
            rule,
            root_ino: ino,
            depth: 0,
            _pad: 0,
        }));
    }
    ancestors(entry, dev, o)
}

#[inline(always)]
fn ancestors(dentry: *const u8, dev: u32, o: &FileOffsets) -> Result<Option<Hit>, i32> {
    // The match is written to per-CPU scratch and read back after the loop: returning it
    // from inside the loop would hand the rest of the program one verifier state per depth
    // (48 of them), which the 6.1 verifier cannot afford.
    let Some(slot) = FILE_HIT.get_ptr_mut(0) else {
        return Err(-1);
    };
    let mut d = dentry;
    let mut depth = 1;
    let mut found = false;
    while depth <= MAX_DEPTH {
        let parent: *const u8 = read(d, o.dentry_parent)?;
        // The root of a filesystem is its own parent.
        if parent.is_null() || parent == d {
            break;
        }
        let inode: *const u8 = read(parent, o.dentry_inode)?;
        if inode.is_null() {
            break;
        }
        let ino: u64 = read(inode, o.inode_ino)?;
        if let Some(rule) = FILE_OBJECTS.get_ptr(&FileKey::new(dev, ino)) {
            // SAFETY: map value pointer from a successful lookup; `slot` is this CPU's
            // scratch entry (programs do not nest on one CPU within this walk).
            unsafe {
                core::ptr::write_volatile(
                    slot,
                    Hit {
                        rule: *rule,
                        root_ino: ino,
                        depth,
                        _pad: 0,
                    },
                );
            }
            found = true;
            break;
        }
        d = parent;
        depth += 1;
    }
    if !found {
        return Ok(None);
    }
    // SAFETY: written above on this CPU.
    Ok(Some(unsafe { core::ptr::read_volatile(slot) }))
}

/// The system call the current task is in, and its saved registers; `(-1, None)` for an
/// io_uring worker or when the registers are unknown.
#[inline(always)]
fn current_syscall(o: &FileOffsets) -> (i64, Option<*const u8>) {
    crate::ctx::current_syscall(o.task_flags, o.regs_syscall)
}

fn try_device(ctx: &DeviceContext) -> Result<i32, i32> {
    // SAFETY: the program's context; the verifier rewrites these loads into reads of the
    // kernel's own context. Volatile keeps each one a single 4-byte load.
    let (access_type, major, minor) = unsafe {
        (
            core::ptr::read_volatile(&(*ctx.device).access_type),
            core::ptr::read_volatile(&(*ctx.device).major),
            core::ptr::read_volatile(&(*ctx.device).minor),
        )
    };
    if access_type & 0xffff != DEVCG_DEV_BLOCK {
        return Ok(1);
    }
    let Some(Caller { tgid, tag }) = tagged() else {
        return Ok(1);
    };
    let Some(rule) = FILE_DEVICES.get_ptr(&DevKey { major, minor }) else {
        return Ok(1);
    };
    // SAFETY: map value pointer from a successful lookup.
    let rule = unsafe { *rule };
    let acc = access_type >> 16;
    let mut want = 0;
    if acc & DEVCG_ACC_READ != 0 {
        want |= access::READ;
    }
    if acc & (DEVCG_ACC_WRITE | DEVCG_ACC_MKNOD) != 0 {
        want |= access::WRITE;
    }
    let enforce = rule.enforce & want;
    if enforce == 0 && rule.audit & want == 0 {
        return Ok(1);
    }
    let result = if enforce != 0 {
        count_file(counter::DEVICE_DENIED);
        outcome::DENIED
    } else {
        count_file(counter::AUDITED);
        outcome::ALLOWED
    };
    if let Some(mut entry) = FILE_EVENTS.reserve::<FileEvent>(0) {
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points to a reserved record of FileEvent's size; every field is
        // written before submit.
        unsafe {
            header(ev, EventKind::FileDevice, tgid, &tag);
            (*ev).dev = kernel_dev(major, minor);
            (*ev).outcome = result;
            (*ev).ino = 0;
            (*ev).root_ino = 0;
            (*ev).rule_id = rule.rule_id;
            (*ev).access = want;
            (*ev).action = rule.action;
            (*ev).syscall = -1;
            (*ev).depth = 0;
            (*ev).major = major;
            (*ev).minor = minor;
            (*ev).mode = 0;
            (*ev).hook = lsm_hook::NONE;
            (*ev)._pad = 0;
            (*ev).name = [0; NAME_LEN];
            (*ev).target = [0; TARGET_LEN];
        }
        entry.submit(0);
    } else {
        count_file(counter::EVENTS_DROPPED);
    }
    Ok(if enforce != 0 { 0 } else { 1 })
}

/// Write the common header of a file event.
///
/// # Safety
/// `ev` points to a reserved ring-buffer record of [`FileEvent`]'s size.
#[inline(always)]
unsafe fn header(ev: *mut FileEvent, kind: EventKind, tgid: u32, tag: &Tag) {
    let proc = ProcKey::new(tgid, tag.start_ns);
    // SAFETY: the caller guarantees `ev` is a writable FileEvent record.
    unsafe {
        (*ev).header = ctx::header(kind, tag, proc, current_ppid());
        (*ev).comm = bpf_get_current_comm().unwrap_or([0; 16]);
    }
}
