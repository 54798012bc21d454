//! Deferred execution: a file a tagged process wrote stays its agent's, and whoever runs it
//! later runs the agent's code, so that process becomes the root of a tree attributed to the
//! agent (`deferred`).
//!
//! - Writes: bpf-lsm `file_open` for writing (the caller's own opens, refused ones not); on
//!   the fallback tier `fentry` of `security_file_open` (the function that calls that hook)
//!   and the ctime tracepoints where the kernel has them (every change of an inode's ctime by
//!   a tagged process: writes, creations, chmod). The file is remembered by device, inode and
//!   generation.
//! - Runs: the exec tracker checks the image an exec runs (a binary; both tiers). bpf-lsm
//!   `bprm_check_security` sees each file an exec runs in turn, so a `#!` script (whose file
//!   the exec has let go of by the time the tracker runs) is seen there and handed to the
//!   tracker. bpf-lsm `file_open` makes an untagged interpreter that opens an agent-written
//!   file (`python3 x.py`, `bash x.sh`, `source x`) a root, and git one that opens an
//!   agent-written `.git/config`. The fallback tier runs the same two decisions from `fentry`
//!   of `security_bprm_check` and `security_file_open`, which call those hooks.

use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_ktime_get_boot_ns, generated},
    macros::{fentry, lsm},
    programs::{FEntryContext, LsmContext},
};
use guard_common::{
    agent::{COMM_LEN, NAME_LEN, NameKey, recognised},
    event::Counter,
    file::FileKey,
    taint::{Deferred, Taint, reader},
};

use super::{process::make_root, recognise::Match};
use crate::{
    ctx::{Caller, current_tgid, is_tagged, tagged},
    maps::{DEFERRED_PENDING, TAINT_READERS, TAINTED, count, file_offsets, lsm_offsets, offsets},
};

const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;

/// Whether a filesystem (by `s_magic`) stores files people write and run: disk filesystems,
/// tmpfs, overlay, network and FUSE ones. Pseudo filesystems are not (a pidfd is a regular
/// file of pidfs, shared by everyone who opens that process).
#[inline(always)]
fn stores_files(magic: u32) -> bool {
    matches!(
        magic,
        0xEF53 // ext2, ext3, ext4
            | 0x5846_5342 // xfs
            | 0x9123_683E // btrfs
            | 0xCA45_1A4E // bcachefs
            | 0x0102_1994 // tmpfs
            | 0x794C_7630 // overlayfs
            | 0xF2F5_2010 // f2fs
            | 0x2FC1_2FC1 // zfs
            | 0x6969 // nfs
            | 0xFE53_4D42 // smb2
            | 0xFF53_4D42 // cifs
            | 0x6573_5546 // fuse
            | 0x4D44 // vfat
            | 0x2011_BAB0 // exfat
            | 0x7366_746E // ntfs3
            | 0x3153_464A // jfs
            | 0x5265_4973 // reiserfs
    )
}

#[inline(always)]
fn read<T>(base: *const u8, off: u32) -> Result<T, i32> {
    // SAFETY: bpf_probe_read_kernel validates the address.
    unsafe { aya_ebpf::helpers::bpf_probe_read_kernel(base.wrapping_add(off as usize) as *const T) }
}

/// Identity and generation of a regular file's `inode`; `None` for anything else.
#[inline(always)]
fn identity(inode: *const u8) -> Result<Option<(FileKey, u32)>, i32> {
    let fo = file_offsets();
    if fo.valid == 0 {
        return Err(-1);
    }
    let mode: u16 = read(inode, fo.inode_mode)?;
    if mode & S_IFMT != S_IFREG {
        return Ok(None);
    }
    let sb: *const u8 = read(inode, fo.inode_sb)?;
    let magic: u32 = read(sb, fo.sb_magic)?;
    if !stores_files(magic) {
        return Ok(None);
    }
    let dev: u32 = read(sb, fo.sb_dev)?;
    let ino: u64 = read(inode, fo.inode_ino)?;
    let generation: u32 = read(inode, fo.inode_generation)?;
    Ok(Some((FileKey::new(dev, ino), generation)))
}

/// `caller` wrote (or created, or changed) `inode`: remember it as its agent's.
#[inline(always)]
pub fn wrote(caller: &Caller, inode: *const u8) {
    match identity(inode) {
        Ok(Some((key, generation))) => {
            let taint = Taint {
                root: caller.tag.root,
                agent_id: caller.tag.agent_id,
                generation,
                // SAFETY: helper without arguments.
                time_ns: unsafe { bpf_ktime_get_boot_ns() },
            };
            let _ = TAINTED.insert(&key, &taint, 0);
        }
        Ok(None) => {}
        Err(_) => count(Counter::ProbeErrors),
    }
}

/// The taint of `inode`, when an agent wrote this very file.
#[inline(always)]
fn taint_of(inode: *const u8) -> Option<Taint> {
    let (key, generation) = identity(inode).ok()??;
    let t = TAINTED.get_ptr(&key)?;
    // SAFETY: map value pointer from a successful lookup.
    let t = unsafe { *t };
    (t.generation == generation).then_some(t)
}

/// The file name of `dentry` into `out`.
#[inline(always)]
fn name_of(dentry: *const u8, out: &mut [u8; NAME_LEN]) {
    let fo = file_offsets();
    if let Ok(name) = read::<*const u8>(dentry, fo.dentry_name) {
        // SAFETY: the helper checks the kernel address and bounds the copy by the buffer.
        unsafe {
            generated::bpf_probe_read_kernel_str(
                out.as_mut_ptr().cast(),
                NAME_LEN as u32,
                name as *const _,
            )
        };
    }
}

/// `bprm_check_security(struct linux_binprm *bprm)`, once per file an exec runs (a `#!`
/// script, then its interpreter): an agent-written one is handed to the exec tracker.
#[lsm(hook = "bprm_check_security")]
pub fn guard_lsm_bprm_check(ctx: LsmContext) -> i32 {
    exec_checked(ctx.arg(0));
    0
}

/// The fallback tier's `bprm_check_security`: `fentry` of `security_bprm_check`, which calls
/// the LSM hook whatever LSMs the kernel runs.
#[fentry(function = "security_bprm_check")]
pub fn guard_deferred_exec(ctx: FEntryContext) -> i32 {
    exec_checked(ctx.arg(0));
    0
}

/// The fallback tier's `file_open`: `fentry` of `security_file_open`. A tagged process's
/// opens for writing are remembered; an untagged reader of agent-written code becomes a
/// root, as on the bpf-lsm tier. Nothing is refused here: path rules are fanotify's.
#[fentry(function = "security_file_open")]
pub fn guard_deferred_open(ctx: FEntryContext) -> i32 {
    let file: *const u8 = ctx.arg(0);
    match tagged() {
        None => reader_opened(file),
        Some(caller) => opened_for_writing(&caller, file),
    }
    0
}

#[inline(always)]
fn exec_checked(bprm: *const u8) {
    if !is_tagged() && pending_from(bprm).is_err() {
        count(Counter::ProbeErrors);
    }
}

/// A tagged open (fallback): remember the file when it is opened for writing or truncated.
#[inline(never)]
fn opened_for_writing(caller: &Caller, file: *const u8) {
    use super::lsm::{FMODE_WRITE, O_TRUNC};
    let lo = lsm_offsets();
    if lo.valid == 0 {
        count(Counter::ProbeErrors);
        return;
    }
    let (Ok(mode), Ok(flags)) = (
        read::<u32>(file, lo.file_mode),
        read::<u32>(file, lo.file_flags),
    ) else {
        count(Counter::ProbeErrors);
        return;
    };
    if mode & FMODE_WRITE == 0 && flags & O_TRUNC == 0 {
        return;
    }
    match read::<*const u8>(file, lo.file_inode) {
        Ok(inode) => wrote(caller, inode),
        Err(_) => count(Counter::ProbeErrors),
    }
}

fn pending_from(bprm: *const u8) -> Result<(), i32> {
    let o = offsets();
    if o.valid == 0 || o.bprm_file == 0 {
        return Err(-1);
    }
    let file: *const u8 = read(bprm, o.bprm_file)?;
    let dentry: *const u8 = read(file, o.file_dentry)?;
    let inode: *const u8 = read(dentry, file_offsets().dentry_inode)?;
    let Some(t) = taint_of(inode) else {
        return Ok(());
    };
    let mut pending = Deferred {
        agent_id: t.agent_id,
        _pad: 0,
        name: [0; NAME_LEN],
    };
    name_of(dentry, &mut pending.name);
    DEFERRED_PENDING
        .insert(&current_tgid(), &pending, 0)
        .map_err(|_| -1)
}

/// The exec tracker's question for an untagged exec: does it run a file an agent wrote (a
/// script `bprm_check_security` saw, or the image itself)? `matched` gets its name.
#[inline(always)]
pub fn at_exec(bprm: *const u8, matched: &mut [u8; NAME_LEN]) -> Option<u32> {
    let tgid = current_tgid();
    if let Some(p) = DEFERRED_PENDING.get_ptr(&tgid) {
        // SAFETY: map value pointer from a successful lookup.
        let p = unsafe { *p };
        let _ = DEFERRED_PENDING.remove(&tgid);
        *matched = p.name;
        return Some(p.agent_id);
    }
    let o = offsets();
    if o.valid == 0 || o.bprm_file == 0 {
        return None;
    }
    let file: *const u8 = read(bprm, o.bprm_file).ok()?;
    let dentry: *const u8 = read(file, o.file_dentry).ok()?;
    let inode: *const u8 = read(dentry, file_offsets().dentry_inode).ok()?;
    let t = taint_of(inode)?;
    name_of(dentry, matched);
    Some(t.agent_id)
}

/// An untagged process opened `file` (bpf-lsm `file_open`): an interpreter reading a file an
/// agent wrote, or git reading an agent-written `.git/config`, becomes a root of that agent.
/// A BPF subprogram: its frame is not added to the tagged path's.
#[inline(never)]
pub fn reader_opened(file: *const u8) {
    let Ok(comm) = bpf_get_current_comm() else {
        return;
    };
    let Some(kind) = TAINT_READERS.get_ptr(&NameKey::new(&comm, COMM_LEN - 1)) else {
        return;
    };
    // SAFETY: map value pointer from a successful lookup.
    let kind = unsafe { *kind };
    let lo = lsm_offsets();
    let (Ok(inode), Ok(dentry)) = (
        read::<*const u8>(file, lo.file_inode),
        read::<*const u8>(file, lo.file_dentry),
    ) else {
        return;
    };
    let Some(t) = taint_of(inode) else {
        return;
    };
    let mut found = Match {
        agent_id: t.agent_id,
        reason: recognised::DEFERRED,
        matched: [0; NAME_LEN],
        cgroup: 0,
    };
    name_of(dentry, &mut found.matched);
    let acts_on = if kind == reader::GIT_CONFIG {
        is_git_config(dentry, &found.matched)
    } else {
        is_code(inode, &found.matched)
    };
    if !acts_on {
        return;
    }
    if make_root(&found).is_err() {
        count(Counter::ProbeErrors);
    }
}

/// Whether an interpreter reading `inode`, named `name`, runs it: it is executable, or named
/// like code (`.sh`, `.py`, `.js`, …). A data file an interpreter reads (`< notes.txt`,
/// `json.load`) is not code, and its reader stays untagged.
#[inline(always)]
fn is_code(inode: *const u8, name: &[u8; NAME_LEN]) -> bool {
    let mode: u16 = read(inode, file_offsets().inode_mode).unwrap_or(0);
    // direnv has bash source `.envrc` when the human enters the directory.
    if mode & 0o111 != 0 || &name[..7] == b".envrc\0" {
        return true;
    }
    // The extension: what follows the last '.', up to the NUL.
    let mut dot = NAME_LEN;
    let mut end = NAME_LEN;
    let mut i = 0;
    while i < NAME_LEN {
        match name[i] {
            0 => {
                end = i;
                break;
            }
            b'.' => dot = i,
            _ => {}
        }
        i += 1;
    }
    if dot >= end {
        return false;
    }
    let mut ext = [0u8; 4];
    let mut j = 0;
    while j < 4 && dot + 1 + j < end {
        ext[j] = name[dot + 1 + j];
        j += 1;
    }
    if end - dot - 1 > 4 {
        return false;
    }
    matches!(
        &ext,
        b"sh\0\0"
            | b"bash"
            | b"zsh\0"
            | b"py\0\0"
            | b"js\0\0"
            | b"mjs\0"
            | b"cjs\0"
            | b"ts\0\0"
            | b"rb\0\0"
            | b"pl\0\0"
            | b"pm\0\0"
            | b"php\0"
            | b"lua\0"
            | b"tcl\0"
    )
}

/// Whether `dentry`, named `name`, is `.git/config`.
#[inline(always)]
fn is_git_config(dentry: *const u8, name: &[u8; NAME_LEN]) -> bool {
    if &name[..7] != b"config\0" {
        return false;
    }
    let mut parent = [0u8; NAME_LEN];
    match read::<*const u8>(dentry, file_offsets().dentry_parent) {
        Ok(p) => name_of(p, &mut parent),
        Err(_) => return false,
    }
    &parent[..5] == b".git\0"
}
