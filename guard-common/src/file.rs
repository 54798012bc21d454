//! File protection: the layouts of the protected-object maps and of [`FileEvent`], and the
//! pure logic the kernel programs and userspace share.
//!
//! Objects are matched by identity, `(device, inode)`, never by path:
//! - [`crate::maps::FILE_OBJECTS`] holds the protected objects of path rules: files,
//!   directories (which cover every object below them, found by walking `d_parent`), and
//!   whole volumes (`ino == 0`).
//! - [`crate::maps::FILE_DEVICES`] holds the block devices behind protected volumes, keyed by
//!   `major:minor`, so a raw open of any device node with those numbers is refused.
//!
//! Devices are in the kernel's internal encoding (`MKDEV`: major << 20 | minor), which is what
//! `super_block.s_dev` holds; userspace converts `st_dev` with [`kernel_dev`].

/// Access bits, the same as the policy's (`read`, `write`, `delete`, `exec`).
pub mod access {
    pub const READ: u32 = 1;
    pub const WRITE: u32 = 2;
    pub const DELETE: u32 = 4;
    pub const EXEC: u32 = 8;
}

/// Indexes of [`crate::maps::FILE_COUNTERS`].
pub mod counter {
    /// Modifications of protected objects by tagged processes answered with SIGKILL.
    pub const KILLS: u32 = 0;
    /// Modifications recorded by audit rules.
    pub const AUDITED: u32 = 1;
    /// Raw block device opens refused.
    pub const DEVICE_DENIED: u32 = 2;
    /// A file program hit an internal error and did nothing.
    pub const ERRORS: u32 = 3;
    /// A file event could not be reserved in the ring buffer.
    pub const EVENTS_DROPPED: u32 = 4;
    /// A signal could not be sent.
    pub const KILL_FAILED: u32 = 5;
    pub const LSM_DENIED: u32 = 6;
    /// Changes of the policy file (rule [`super::POLICY_RULE_ID`]) by tagged processes: the
    /// daemon applies no policy file change while this is ahead of what it acknowledged.
    pub const POLICY_CHANGED: u32 = 7;
}
/// Id of guard's internal rule protecting its policy file (internal rules take ids from here
/// up, far above any policy's).
pub const POLICY_RULE_ID: u32 = 0xffff_0000;
pub const COUNTER_NAMES: [&str; 8] = [
    "file_kills",
    "file_audited",
    "file_device_denied",
    "file_probe_errors",
    "file_events_dropped",
    "file_kill_failed",
    "file_lsm_denied",
    "policy_changed_by_tagged",
];

/// Key of [`crate::maps::FILE_OBJECTS`]: one object, or with `ino == 0` a whole volume.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    /// Kernel encoding (see [`kernel_dev`]).
    pub dev: u32,
    pub _pad: u32,
    pub ino: u64,
}
const _: () = assert!(core::mem::size_of::<FileKey>() == 16);

impl FileKey {
    pub const fn new(dev: u32, ino: u64) -> Self {
        Self { dev, _pad: 0, ino }
    }
}

/// Bytes of a file handle kept in a [`FileIdentity`] (the handles of ext4, xfs, btrfs and tmpfs
/// are 8 to 40 bytes).
pub const HANDLE_MAX: usize = 64;

/// Value of [`crate::maps::FILE_IDENTITIES`]: how the daemon finds a protected object again
/// after a restart or a reload, wherever it was moved: its file handle (`name_to_handle_at`,
/// which includes the inode's generation, so a reused inode number does not match) and a
/// fingerprint of the rule it is protected for. Written and read by the daemon only.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    /// Fingerprint of the rule (its name, access, action, mode and paths).
    pub rule: u64,
    pub handle_type: i32,
    pub handle_len: u32,
    pub handle: [u8; HANDLE_MAX],
    /// 1 for a directory, 0 for a file.
    pub is_dir: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FileIdentity>() == 88);

/// Key of [`crate::maps::FILE_DEVICES`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DevKey {
    pub major: u32,
    pub minor: u32,
}
const _: () = assert!(core::mem::size_of::<DevKey>() == 8);

/// What protects one object: the rules on it, merged.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FileRule {
    /// Rule id reported in events: the strongest enforcing rule, else the first audit rule.
    pub rule_id: u32,
    /// [`access`] bits that enforcing rules protect (the offender is killed or denied).
    pub enforce: u32,
    /// [`access`] bits that audit rules only record.
    pub audit: u32,
    /// [`crate::decision::action`] of `rule_id`.
    pub action: u32,
}
const _: () = assert!(core::mem::size_of::<FileRule>() == 16);

impl FileRule {
    /// Merge `other` into `self`: masks add up, the strongest enforcing action reports.
    pub fn merge(&mut self, other: &FileRule) {
        let rank = |r: &FileRule| if r.enforce == 0 { 0 } else { r.action };
        if rank(other) > rank(self) || (self.enforce == 0 && self.audit == 0) {
            self.rule_id = other.rule_id;
            self.action = other.action;
        }
        self.enforce |= other.enforce;
        self.audit |= other.audit;
    }
}

pub const NAME_LEN: usize = 64;
pub const TARGET_LEN: usize = 128;

/// A decision of a file program (kinds `FileChange` and `FileDevice`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct FileEvent {
    pub header: crate::event::EventHeader,
    /// Device of the object (kernel encoding).
    pub dev: u32,
    /// [`crate::decision::outcome`].
    pub outcome: u32,
    /// The inode that changed (0 for a device open).
    pub ino: u64,
    /// The protected object that matched: the inode itself, an ancestor directory, or 0 for
    /// a whole volume or a device.
    pub root_ino: u64,
    pub rule_id: u32,
    /// [`access`] bits of the operation.
    pub access: u32,
    /// [`crate::decision::action`] of the rule.
    pub action: u32,
    /// The system call in progress (-1: none or unknown, e.g. an io_uring worker).
    pub syscall: i32,
    /// Levels between the changed inode and the protected directory that matched.
    pub depth: u32,
    /// Device opens: major and minor; otherwise 0.
    pub major: u32,
    pub minor: u32,
    /// `i_mode` of the changed inode (file type and permissions).
    pub mode: u32,
    /// The BPF LSM hook that decided ([`lsm_hook`]); 0 for the fallback tier's programs.
    pub hook: u32,
    pub _pad: u32,
    pub comm: [u8; 16],
    /// Name of the changed inode's dentry.
    pub name: [u8; NAME_LEN],
    /// The system call's path argument, as the process spelled it.
    pub target: [u8; TARGET_LEN],
}
const _: () = assert!(core::mem::size_of::<FileEvent>() == 328);

/// The kernel's `dev_t` encoding (`MKDEV`) of `major:minor`.
/// The BPF LSM hook of a [`FileEvent`] (its `hook` field).
pub mod lsm_hook {
    pub const NONE: u32 = 0;
    pub const FILE_OPEN: u32 = 1;
    pub const FILE_TRUNCATE: u32 = 2;
    pub const PATH_UNLINK: u32 = 3;
    pub const PATH_RMDIR: u32 = 4;
    pub const PATH_RENAME: u32 = 5;
    pub const PATH_TRUNCATE: u32 = 6;
    pub const PATH_LINK: u32 = 7;
    pub const PATH_MKNOD: u32 = 8;
    pub const PATH_MKDIR: u32 = 9;
    pub const PATH_SYMLINK: u32 = 10;
    pub const PATH_CHMOD: u32 = 11;
    pub const PATH_CHOWN: u32 = 12;
    /// Set on a hook id when the fallback tier's `fmod_ret` program of the `security_*`
    /// function that calls the hook decided (the same decision, named for what ran).
    pub const FMOD: u32 = 0x100;

    /// The event's `hook` name.
    pub const fn name(hook: u32) -> &'static str {
        if hook & FMOD != 0 {
            return fmod_name(hook & !FMOD);
        }
        match hook {
            FILE_OPEN => "lsm_file_open",
            FILE_TRUNCATE => "lsm_file_truncate",
            PATH_UNLINK => "lsm_path_unlink",
            PATH_RMDIR => "lsm_path_rmdir",
            PATH_RENAME => "lsm_path_rename",
            PATH_TRUNCATE => "lsm_path_truncate",
            PATH_LINK => "lsm_path_link",
            PATH_MKNOD => "lsm_path_mknod",
            PATH_MKDIR => "lsm_path_mkdir",
            PATH_SYMLINK => "lsm_path_symlink",
            PATH_CHMOD => "lsm_path_chmod",
            PATH_CHOWN => "lsm_path_chown",
            _ => "lsm",
        }
    }

    const fn fmod_name(hook: u32) -> &'static str {
        match hook {
            FILE_TRUNCATE => "security_file_truncate",
            PATH_UNLINK => "security_path_unlink",
            PATH_RMDIR => "security_path_rmdir",
            PATH_RENAME => "security_path_rename",
            PATH_TRUNCATE => "security_path_truncate",
            PATH_LINK => "security_path_link",
            PATH_MKNOD => "security_path_mknod",
            PATH_MKDIR => "security_path_mkdir",
            PATH_SYMLINK => "security_path_symlink",
            PATH_CHMOD => "security_path_chmod",
            PATH_CHOWN => "security_path_chown",
            _ => "security_path",
        }
    }
}

pub const fn kernel_dev(major: u32, minor: u32) -> u32 {
    (major << 20) | (minor & 0xf_ffff)
}

/// A userspace `st_dev` (glibc's encoding, as `major(3)`/`minor(3)` read it) in the kernel's.
pub const fn kernel_dev_of(st_dev: u64) -> u32 {
    let major = ((st_dev >> 32) & 0xffff_f000) | ((st_dev >> 8) & 0xfff);
    let minor = ((st_dev >> 12) & 0xffff_ff00) | (st_dev & 0xff);
    kernel_dev(major as u32, minor as u32)
}

/// `(major, minor)` of a kernel-encoded device.
pub const fn dev_parts(dev: u32) -> (u32, u32) {
    (dev >> 20, dev & 0xf_ffff)
}

/// x86-64 system call numbers the file programs and the fanotify layer tell apart.
pub mod nr {
    pub const OPEN: i64 = 2;
    pub const TRUNCATE: i64 = 76;
    pub const FTRUNCATE: i64 = 77;
    pub const RENAME: i64 = 82;
    pub const RMDIR: i64 = 84;
    pub const CREAT: i64 = 85;
    pub const LINK: i64 = 86;
    pub const UNLINK: i64 = 87;
    pub const EXECVE: i64 = 59;
    pub const USELIB: i64 = 134;
    pub const OPENAT: i64 = 257;
    pub const UNLINKAT: i64 = 263;
    pub const RENAMEAT: i64 = 264;
    pub const LINKAT: i64 = 265;
    pub const OPEN_BY_HANDLE_AT: i64 = 304;
    pub const RENAMEAT2: i64 = 316;
    pub const EXECVEAT: i64 = 322;
    pub const BPF: i64 = 321;
    pub const IO_URING_ENTER: i64 = 426;
    pub const OPENAT2: i64 = 437;
}

/// Access bits of a modification of a protected inode (its ctime changed) made during system
/// call `syscall`: unlink and rmdir delete, rename deletes (the old name) and writes (the new
/// one), anything else writes. An unknown call (-1, io_uring) counts as both.
pub const fn change_access(syscall: i64) -> u32 {
    match syscall {
        nr::UNLINK | nr::UNLINKAT | nr::RMDIR => access::DELETE,
        nr::RENAME | nr::RENAMEAT | nr::RENAMEAT2 | nr::IO_URING_ENTER => {
            access::DELETE | access::WRITE
        }
        s if s < 0 => access::DELETE | access::WRITE,
        _ => access::WRITE,
    }
}

/// Which argument register holds the path a modifying system call names: 0 (first) or 1
/// (second, after a directory fd), or `None`.
pub const fn path_arg(syscall: i64) -> Option<u32> {
    match syscall {
        nr::UNLINK | nr::RMDIR | nr::RENAME | nr::TRUNCATE | nr::CREAT | nr::LINK | nr::OPEN => {
            Some(0)
        }
        nr::UNLINKAT | nr::RENAMEAT | nr::RENAMEAT2 | nr::LINKAT | nr::OPENAT | nr::OPENAT2 => {
            Some(1)
        }
        _ => None,
    }
}

const O_ACCMODE: u64 = 0o3;
const O_WRONLY: u64 = 0o1;
const O_RDWR: u64 = 0o2;
const O_TRUNC: u64 = 0o1000;

/// Access bits of an open with `flags`: the access mode, and `O_TRUNC` writes.
pub const fn open_flags_access(flags: u64) -> u32 {
    let mut a = match flags & O_ACCMODE {
        O_WRONLY => access::WRITE,
        O_RDWR => access::READ | access::WRITE,
        // O_RDONLY, and 3 (which the kernel treats as "no access, ioctl only").
        _ => access::READ,
    };
    if flags & O_TRUNC != 0 {
        a |= access::WRITE;
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn st_dev_in_the_kernels_encoding() {
        // glibc makedev(8, 1) and makedev(259, 70000).
        assert_eq!(kernel_dev_of(0x801), kernel_dev(8, 1));
        let big = ((70000u64 & !0xff) << 12) | (70000 & 0xff) | ((259 & 0xfff) << 8);
        assert_eq!(kernel_dev_of(big), kernel_dev(259, 70000));
    }
    use crate::decision::action;

    #[test]
    fn devices_round_trip() {
        assert_eq!(kernel_dev(7, 3), (7 << 20) | 3);
        assert_eq!(dev_parts(kernel_dev(259, 70_000)), (259, 70_000));
        assert_eq!(dev_parts(kernel_dev(8, 1)), (8, 1));
    }

    #[test]
    fn change_classes() {
        assert_eq!(change_access(nr::UNLINKAT), access::DELETE);
        assert_eq!(change_access(nr::RMDIR), access::DELETE);
        assert_eq!(change_access(nr::RENAMEAT2), access::DELETE | access::WRITE);
        assert_eq!(change_access(nr::TRUNCATE), access::WRITE);
        assert_eq!(change_access(-1), access::DELETE | access::WRITE);
        assert_eq!(path_arg(nr::UNLINKAT), Some(1));
        assert_eq!(path_arg(nr::UNLINK), Some(0));
        assert_eq!(path_arg(1), None);
    }

    #[test]
    fn open_flags() {
        assert_eq!(open_flags_access(0), access::READ);
        assert_eq!(open_flags_access(0o1 | 0o100 | 0o1000), access::WRITE);
        assert_eq!(open_flags_access(0o2), access::READ | access::WRITE);
        assert_eq!(open_flags_access(0o1000), access::READ | access::WRITE);
        assert_eq!(open_flags_access(0x441), access::WRITE);
    }

    #[test]
    fn merge_keeps_the_strongest_enforcing_rule() {
        let mut r = FileRule {
            rule_id: 3,
            enforce: 0,
            audit: access::READ,
            action: action::AUDIT,
        };
        r.merge(&FileRule {
            rule_id: 5,
            enforce: access::WRITE,
            audit: 0,
            action: action::DENY,
        });
        assert_eq!(
            (r.rule_id, r.enforce, r.audit),
            (5, access::WRITE, access::READ)
        );
        r.merge(&FileRule {
            rule_id: 6,
            enforce: access::DELETE,
            audit: 0,
            action: action::KILL_TREE,
        });
        assert_eq!((r.rule_id, r.action), (6, action::KILL_TREE));
        r.merge(&FileRule {
            rule_id: 7,
            enforce: access::DELETE,
            audit: 0,
            action: action::DENY,
        });
        assert_eq!(r.rule_id, 6);
    }
}
