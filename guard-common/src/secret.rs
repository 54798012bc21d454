//! Files agents read, for the secret scan: a tagged process's open for reading of a file
//! version the daemon has not yet found clean is reported (guard-ebpf `probes/secret.rs`), the
//! daemon scans it and keeps its verdict here, so that later opens of the same version cost
//! the kernel one lookup and the daemon nothing.

use crate::event::EventHeader;

/// One version of one file: key of [`crate::maps::SECRET_SEEN`]. A write changes the size or
/// the ctime, so a rewritten file is another version and is scanned again.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FileVersion {
    /// `s_dev` in the kernel's encoding.
    pub dev: u32,
    /// `inode.i_generation`: an inode number reused by another file is another file.
    pub generation: u32,
    pub ino: u64,
    pub size: i64,
    pub ctime_sec: i64,
    pub ctime_nsec: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FileVersion>() == 40);

/// Values of [`crate::maps::SECRET_SEEN`].
pub mod verdict {
    /// Reported, not scanned yet.
    pub const PENDING: u32 = 0;
    /// Scanned: nothing found (or not a file the scan reads: binary, empty).
    pub const CLEAN: u32 = 1;
    /// Scanned: a secret. Every tree that opens it is reported (the inventory).
    pub const SECRET: u32 = 2;
    /// The daemon could not open it again (logged once, with the reason): reported no more,
    /// as a clean one.
    pub const UNSCANNABLE: u32 = 3;
}

/// A tagged process opened a file version for reading that is not known clean.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct SecretRead {
    pub header: EventHeader,
    pub comm: [u8; 16],
    pub version: FileVersion,
    /// `super_block.s_magic`: which file-handle layout opens the file again.
    pub sb_magic: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<SecretRead>() == 120);

/// Value of [`crate::maps::TREE_READS`], keyed by the tree's root: written by the kernel only,
/// so that its counter needs no lock against the daemon.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeReads {
    /// Reads reported for a scan; the daemon answers each ([`TreeVerdict::answered`]). While
    /// it has answered fewer, the tree is *pending*: it may have read a secret.
    pub requested: u64,
    /// Nonzero once the tree opened a version already known to hold a secret: tainted at
    /// once, without waiting for the daemon.
    pub secret: u32,
    /// Nonzero once a read could not be reported (the event ring was full): tainted, since
    /// nobody will scan what it read.
    pub lost: u32,
}
const _: () = assert!(core::mem::size_of::<TreeReads>() == 16);

/// Value of [`crate::maps::TREE_VERDICTS`], keyed by the tree's root: written by the daemon
/// only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TreeVerdict {
    /// Reads scanned (see [`TreeReads::requested`]).
    pub answered: u64,
    /// Nonzero: a scan found a secret in what the tree read.
    pub tainted: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<TreeVerdict>() == 16);

/// What the secrets rule sees of a tree.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TreeState {
    /// Nothing it read holds a secret, as far as the scans have answered.
    Clean,
    /// A scan of something it read has not answered yet.
    Pending,
    /// It read a secret (or a read of it was lost).
    Tainted,
}

impl TreeState {
    #[inline(always)]
    pub fn of(reads: &TreeReads, verdict: Option<&TreeVerdict>) -> Self {
        let (answered, tainted) = verdict.map_or((0, 0), |v| (v.answered, v.tainted));
        if reads.secret != 0 || reads.lost != 0 || tainted != 0 {
            Self::Tainted
        } else if reads.requested > answered {
            Self::Pending
        } else {
            Self::Clean
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers and byte arrays only.
    unsafe impl aya::Pod for super::FileVersion {}
    unsafe impl aya::Pod for super::SecretRead {}
    unsafe impl aya::Pod for super::TreeReads {}
    unsafe impl aya::Pod for super::TreeVerdict {}
}
