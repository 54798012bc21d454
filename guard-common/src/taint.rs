//! Deferred execution: files a tagged process wrote are remembered by identity, and a process
//! that later runs one (directly, through `#!`, or as an interpreter's script) becomes the root
//! of a tree attributed to the agent that wrote it (guard-ebpf `probes/taint.rs`).

use crate::{ProcKey, agent::NAME_LEN};

/// Value of [`crate::maps::TAINTED`], keyed by the file's [`crate::file::FileKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Taint {
    /// The root of the tree that wrote it.
    pub root: ProcKey,
    pub agent_id: u32,
    /// `inode.i_generation` when it was written: an inode number reused by another file is
    /// another file.
    pub generation: u32,
    /// Boot time of the last write.
    pub time_ns: u64,
}
const _: () = assert!(core::mem::size_of::<Taint>() == 32);

/// Value of [`crate::maps::DEFERRED_PENDING`], keyed by tgid: an exec of an agent-written
/// script seen by `bprm_check_security`, for the exec tracker to make a root of.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Deferred {
    pub agent_id: u32,
    pub _pad: u32,
    /// The script's file name.
    pub name: [u8; NAME_LEN],
}
const _: () = assert!(core::mem::size_of::<Deferred>() == 40);

/// What a reader (value of [`crate::maps::TAINT_READERS`], keyed by `comm`) becomes tagged
/// for when it opens an agent-written file.
pub mod reader {
    /// Any agent-written file: an interpreter runs what it reads.
    pub const ANY: u32 = 1;
    /// An agent-written `.git/config`: git acts on it (`core.fsmonitor`, `core.hooksPath`,
    /// aliases).
    pub const GIT_CONFIG: u32 = 2;
}

/// The readers: interpreters, which run the files they read, and git.
pub const READERS: [(&str, u32); 24] = [
    ("sh", reader::ANY),
    ("bash", reader::ANY),
    ("dash", reader::ANY),
    ("zsh", reader::ANY),
    ("fish", reader::ANY),
    ("ksh", reader::ANY),
    ("python", reader::ANY),
    ("python2", reader::ANY),
    ("python3", reader::ANY),
    ("python3.9", reader::ANY),
    ("python3.10", reader::ANY),
    ("python3.11", reader::ANY),
    ("python3.12", reader::ANY),
    ("python3.13", reader::ANY),
    ("python3.14", reader::ANY),
    ("node", reader::ANY),
    ("deno", reader::ANY),
    ("bun", reader::ANY),
    ("perl", reader::ANY),
    ("ruby", reader::ANY),
    ("php", reader::ANY),
    ("lua", reader::ANY),
    ("tclsh", reader::ANY),
    ("git", reader::GIT_CONFIG),
];

#[cfg(feature = "user")]
mod pod {
    // SAFETY: repr(C), explicit padding, integers only.
    unsafe impl aya::Pod for super::Taint {}
}
