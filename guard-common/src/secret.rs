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

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers and byte arrays only.
    unsafe impl aya::Pod for super::FileVersion {}
    unsafe impl aya::Pod for super::SecretRead {}
}
