//! Files agents read, for the secret scan (`guard_common::secret`): a tagged process's open
//! for reading of a regular file whose version the daemon has not found clean is reported.
//! The first open of a version marks it pending; the daemon scans it and writes the verdict;
//! a clean version costs later opens one lookup and no record. On the bpf-lsm tier the
//! `file_open` program calls [`file_opened`]; on the fallback tier (where trampolines may be
//! refused) the page cache's read tracepoints do, for every read on the host through the page
//! cache (an untagged reader costs the tag lookup). tmpfs reads bypass them.
//!
//! Each reported read is counted for the reader's tree ([`TREE_READS`]) before the reader
//! gets its data, so the tree is *pending* until the daemon has answered; a version already
//! known to hold a secret taints the tree right here. The secrets rule (`probes/net.rs`) reads
//! both.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    helpers::bpf_get_current_comm, macros::btf_tracepoint, programs::BtfTracePointContext,
};
use guard_common::{
    ProcKey,
    event::{Counter, EventKind},
    secret::{FileVersion, SecretRead, TreeReads, verdict},
};

use super::file::read;
use crate::{
    ctx::{Caller, tagged},
    maps::{EVENTS, SECRET_SEEN, TREE_READS, count, file_offsets, lsm_offsets},
};

const BPF_NOEXIST: u64 = 1;

const S_IFMT: u16 = 0o170_000;
const S_IFREG: u16 = 0o100_000;
const FMODE_READ: u32 = 1;

/// `mm_filemap_get_pages(mapping, index, last_index)`: a `read(2)`, `pread`, `splice` or
/// `sendfile` through the page cache, in the reader's context.
#[btf_tracepoint(function = "mm_filemap_get_pages")]
pub fn guard_secret_read(ctx: BtfTracePointContext) -> i32 {
    read_mapping(&ctx)
}

/// `mm_filemap_map_pages(mapping, index, last_index)`: a mapped file read, pages mapped
/// around the fault.
#[btf_tracepoint(function = "mm_filemap_map_pages")]
pub fn guard_secret_map_pages(ctx: BtfTracePointContext) -> i32 {
    read_mapping(&ctx)
}

/// `mm_filemap_fault(mapping, index)`: a mapped file read, one page.
#[btf_tracepoint(function = "mm_filemap_fault")]
pub fn guard_secret_fault(ctx: BtfTracePointContext) -> i32 {
    read_mapping(&ctx)
}

/// A tagged process reads the page cache of `mapping` (the tracepoints' first argument).
#[inline(always)]
fn read_mapping(ctx: &BtfTracePointContext) -> i32 {
    let Some(caller) = tagged() else {
        return 0;
    };
    // The first argument of each of these tracepoints is a `struct address_space *`.
    let mapping: *const u8 = ctx.arg(0);
    let o = file_offsets();
    match read::<*const u8>(mapping, o.mapping_host) {
        Ok(inode) if o.valid != 0 && !inode.is_null() => opened(&caller, inode),
        _ => count(Counter::ProbeErrors),
    }
    0
}

/// A tagged process read `inode`. A subprogram: one copy for the three tracepoints.
#[inline(never)]
fn opened(caller: &Caller, inode: *const u8) {
    if try_opened(caller, inode).is_err() {
        count(Counter::ProbeErrors);
    }
}

/// A tagged process opened `file`: report it if it reads a file version not known clean.
/// A subprogram of its own: it runs after the `file_open` program's decision, beside it.
#[inline(never)]
pub fn file_opened(caller: &Caller, file: *const u8) {
    if try_file_opened(caller, file).is_err() {
        count(Counter::ProbeErrors);
    }
}

#[inline(always)]
fn try_file_opened(caller: &Caller, file: *const u8) -> Result<(), i32> {
    let lo = lsm_offsets();
    if lo.valid == 0 {
        return Err(-1);
    }
    let mode: u32 = read(file, lo.file_mode)?;
    if mode & FMODE_READ == 0 {
        return Ok(());
    }
    let inode: *const u8 = read(file, lo.file_inode)?;
    try_opened(caller, inode)
}

#[inline(always)]
fn try_opened(caller: &Caller, inode: *const u8) -> Result<(), i32> {
    let o = file_offsets();
    if o.valid == 0 {
        return Err(-1);
    }
    let mode: u16 = read(inode, o.inode_mode)?;
    if mode & S_IFMT != S_IFREG {
        return Ok(());
    }
    let size: i64 = read(inode, o.inode_size)?;
    if size <= 0 {
        return Ok(());
    }
    let sb: *const u8 = read(inode, o.inode_sb)?;
    let version = FileVersion {
        dev: read(sb, o.sb_dev)?,
        generation: read(inode, o.inode_generation)?,
        ino: read(inode, o.inode_ino)?,
        size,
        ctime_sec: read(inode, o.inode_ctime_sec)?,
        ctime_nsec: read(inode, o.inode_ctime_nsec)?,
        _pad: 0,
    };
    // SAFETY: map value pointer from a successful lookup.
    let known = SECRET_SEEN.get_ptr(&version).map(|v| unsafe { *v });
    let secret = match known {
        Some(verdict::CLEAN | verdict::UNSCANNABLE) => return Ok(()),
        Some(v) => v == verdict::SECRET,
        None => {
            let _ = SECRET_SEEN.insert(&version, &verdict::PENDING, 0);
            false
        }
    };
    let sb_magic: u32 = read(sb, o.sb_magic)?;
    let Some(tree) = tree_reads(&caller.tag.root) else {
        count(Counter::ProbeErrors);
        return Ok(());
    };
    let Some(mut entry) = EVENTS.reserve::<SecretRead>(0) else {
        count(Counter::EventsDropped);
        // Nobody will scan what it read: the tree counts as having read a secret.
        // SAFETY: map value pointer from a successful lookup; a plain store of a flag.
        unsafe { (*tree).lost = 1 };
        return Ok(());
    };
    // SAFETY: as above. Counted before the record is visible, so the tree is pending from
    // now until the daemon's answer; one atomic add, shared with every CPU.
    unsafe {
        if secret {
            (*tree).secret = 1;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(&raw mut (*tree).requested, 1);
    }
    entry.write(SecretRead {
        header: caller.header(EventKind::SecretRead),
        comm: bpf_get_current_comm().unwrap_or([0; 16]),
        version,
        sb_magic,
        _pad: 0,
    });
    entry.submit(crate::maps::wake_now());
    Ok(())
}

/// The read counts of the tree with root `root`, made on its first read.
#[inline(always)]
fn tree_reads(root: &ProcKey) -> Option<*mut TreeReads> {
    if let Some(tree) = TREE_READS.get_ptr_mut(root) {
        return Some(tree);
    }
    // Another CPU may have made it in between: NOEXIST keeps its count.
    let _ = TREE_READS.insert(root, &TreeReads::default(), BPF_NOEXIST);
    TREE_READS.get_ptr_mut(root)
}
