//! Objects by file handle, and the mounts a handle is opened against. A handle
//! (`name_to_handle_at`) names an inode with its generation, wherever the object is moved;
//! `open_by_handle_at` opens it again through a directory of its filesystem. The identity set
//! of path rules (`files`) and the secret scan of files agents read (`events`) both open
//! objects this way.

use std::{
    ffi::{CStr, OsString},
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use guard_common::file::{HANDLE_MAX, kernel_dev};

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub major: u32,
    pub minor: u32,
    /// The path within the filesystem that is mounted (`/` for the whole filesystem).
    pub root: PathBuf,
    pub mount_point: PathBuf,
}

/// Parse `/proc/self/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split(' ').collect();
            let (major, minor) = f.get(2)?.split_once(':')?;
            Some(Mount {
                major: major.parse().ok()?,
                minor: minor.parse().ok()?,
                root: PathBuf::from(unescape(f.get(3)?)),
                mount_point: PathBuf::from(unescape(f.get(4)?)),
            })
        })
        .collect()
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    OsString::from_vec(out)
}

/// Every mount of this process's namespace.
pub fn mounts() -> Vec<Mount> {
    parse_mountinfo(&std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default())
}

impl Mount {
    /// The device in the kernel's encoding (`s_dev`).
    pub fn kernel_dev(&self) -> u32 {
        kernel_dev(self.major, self.minor)
    }
}

/// A `struct file_handle` with room for [`HANDLE_MAX`] bytes.
#[repr(C)]
pub struct Handle {
    header: libc::file_handle,
    bytes: [u8; HANDLE_MAX],
}

impl Handle {
    /// A handle of `handle_type` with `bytes` (at most [`HANDLE_MAX`] are kept).
    pub fn new(handle_type: i32, bytes: &[u8]) -> Self {
        let len = bytes.len().min(HANDLE_MAX);
        let mut h = Self {
            header: libc::file_handle {
                handle_bytes: len as u32,
                handle_type,
                f_handle: [],
            },
            bytes: [0; HANDLE_MAX],
        };
        h.bytes[..len].copy_from_slice(&bytes[..len]);
        h
    }

    /// The handle of the object at `path` (symlinks not followed).
    pub fn of(path: &CStr) -> io::Result<Self> {
        let mut h = Self::new(0, &[0; HANDLE_MAX]);
        let mut mount_id: libc::c_int = 0;
        // SAFETY: `h` is a file_handle header followed by HANDLE_MAX bytes, as its
        // handle_bytes says; the path is NUL-terminated.
        let r = unsafe {
            libc::name_to_handle_at(
                libc::AT_FDCWD,
                path.as_ptr(),
                (&raw mut h).cast(),
                &raw mut mount_id,
                0,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(h)
    }

    /// Its type and bytes.
    pub fn parts(&self) -> (i32, &[u8]) {
        let len = (self.header.handle_bytes as usize).min(HANDLE_MAX);
        (self.header.handle_type, &self.bytes[..len])
    }

    /// Open the object through `dir`, a directory of its filesystem, with `flags`.
    pub fn open(&mut self, dir: &Path, flags: libc::c_int) -> io::Result<OwnedFd> {
        let dir = std::fs::File::open(dir)?;
        // SAFETY: a directory descriptor we own and a file_handle the kernel reads within its
        // handle_bytes; the returned descriptor is owned below.
        let fd =
            unsafe { libc::open_by_handle_at(dir.as_raw_fd(), (&raw mut *self).cast(), flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nobody else owns.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }
}
