//! A thin safe layer over fanotify(7): groups, marks, event records and responses.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
};

/// A fanotify group.
#[derive(Debug)]
pub struct Group {
    fd: OwnedFd,
}

impl Group {
    /// `fanotify_init(flags | FAN_CLOEXEC | FAN_NONBLOCK, event_f_flags)`.
    pub fn new(flags: u32, event_f_flags: u32) -> io::Result<Self> {
        // SAFETY: plain system call; the returned fd is owned below.
        let fd = unsafe {
            libc::fanotify_init(
                flags | libc::FAN_CLOEXEC | libc::FAN_NONBLOCK,
                event_f_flags,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd returned by the kernel, owned by nobody else.
        Ok(Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// A permission group: `FAN_CLASS_CONTENT`, unlimited queue and marks; event fds are
    /// opened read-only (they are only stat'ed and read as links). Events name the thread
    /// (`FAN_REPORT_TID`): its own system call says what it asks for.
    pub fn permission() -> io::Result<Self> {
        Self::new(
            libc::FAN_CLASS_CONTENT
                | libc::FAN_REPORT_TID
                | libc::FAN_UNLIMITED_QUEUE
                | libc::FAN_UNLIMITED_MARKS,
            (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as u32,
        )
    }

    /// A notification group reporting directory file handles and names (no event fds).
    pub fn tracking() -> io::Result<Self> {
        Self::new(
            libc::FAN_CLASS_NOTIF
                | libc::FAN_REPORT_DFID_NAME
                | libc::FAN_UNLIMITED_QUEUE
                | libc::FAN_UNLIMITED_MARKS,
            (libc::O_RDONLY | libc::O_CLOEXEC) as u32,
        )
    }

    pub fn fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }

    /// `fanotify_mark(FAN_MARK_ADD | flags, mask, AT_FDCWD, path)`.
    pub fn mark(&self, flags: u32, mask: u64, path: &Path) -> io::Result<()> {
        let c = CString::new(path.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        // SAFETY: `c` is a NUL-terminated path that outlives the call.
        let r = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | flags,
                mask,
                libc::AT_FDCWD,
                c.as_ptr(),
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Read pending events into `buf` (non-blocking); `Ok(0)` when there are none.
    pub fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            return match e.raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => Ok(0),
                _ => Err(e),
            };
        }
        Ok(n as usize)
    }

    /// Answer a permission event.
    pub fn respond(&self, event_fd: RawFd, allow: bool) -> io::Result<()> {
        let resp = libc::fanotify_response {
            fd: event_fd,
            response: if allow {
                libc::FAN_ALLOW
            } else {
                libc::FAN_DENY
            },
        };
        // SAFETY: `resp` is a valid fanotify_response for the duration of the call.
        let n = unsafe {
            libc::write(
                self.fd.as_raw_fd(),
                (&raw const resp).cast(),
                size_of::<libc::fanotify_response>(),
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// One event record of a read buffer.
#[derive(Debug)]
pub struct Event<'a> {
    pub mask: u64,
    /// The event's file (permission groups), owned: closed on drop. `None` for
    /// notification groups reporting file handles, and for queue overflows.
    pub fd: Option<OwnedFd>,
    /// The process; its thread in groups made with `FAN_REPORT_TID`.
    pub pid: i32,
    /// Information records after the metadata (file handles and names).
    pub info: &'a [u8],
}

/// Iterate the records of `buf[..len]`. Records of another metadata version end the walk.
pub fn events(buf: &[u8]) -> impl Iterator<Item = Event<'_>> {
    let meta = size_of::<libc::fanotify_event_metadata>();
    let mut off = 0usize;
    std::iter::from_fn(move || {
        if off + meta > buf.len() {
            return None;
        }
        // SAFETY: bounds checked; the record is plain old data, read unaligned.
        let m: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buf[off..].as_ptr().cast()) };
        let len = m.event_len as usize;
        if m.vers != libc::FANOTIFY_METADATA_VERSION || len < meta || off + len > buf.len() {
            return None;
        }
        let info = &buf[off + usize::from(m.metadata_len)..off + len];
        off += len;
        Some(Event {
            mask: m.mask,
            // SAFETY: the kernel installed this fd in our table for this event; it is ours.
            fd: (m.fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(m.fd) }),
            pid: m.pid,
            info,
        })
    })
}

/// A directory file handle and a name, from a `FAN_EVENT_INFO_TYPE_DFID_NAME` record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DirEntry {
    pub handle: HandleKey,
    pub name: std::ffi::OsString,
}

/// Identity of a directory as fanotify reports it: filesystem id and file handle.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct HandleKey {
    pub fsid: [i32; 2],
    pub handle_type: i32,
    pub handle: Vec<u8>,
}

/// The `DFID_NAME` records of an event's info.
pub fn dir_entries(info: &[u8]) -> Vec<DirEntry> {
    let mut out = Vec::new();
    let mut off = 0usize;
    while off + 4 <= info.len() {
        let kind = info[off];
        let len = usize::from(u16::from_ne_bytes([info[off + 2], info[off + 3]]));
        if len < 4 || off + len > info.len() {
            break;
        }
        let rec = &info[off..off + len];
        off += len;
        if kind != libc::FAN_EVENT_INFO_TYPE_DFID_NAME {
            continue;
        }
        // hdr(4) fsid(8) file_handle{handle_bytes u32, handle_type i32, f_handle[..]} name\0
        if rec.len() < 20 {
            continue;
        }
        let word = |at: usize| i32::from_ne_bytes([rec[at], rec[at + 1], rec[at + 2], rec[at + 3]]);
        let bytes = word(12) as usize;
        let start = 20;
        if start + bytes > rec.len() {
            continue;
        }
        let name = &rec[start + bytes..];
        let name = &name[..name.iter().position(|b| *b == 0).unwrap_or(name.len())];
        out.push(DirEntry {
            handle: HandleKey {
                fsid: [word(4), word(8)],
                handle_type: word(16),
                handle: rec[start..start + bytes].to_vec(),
            },
            name: std::ffi::OsStr::from_bytes(name).to_os_string(),
        });
    }
    out
}

/// The handle fanotify reports for the directory at `path`, and its filesystem id.
pub fn handle_of(path: &Path) -> io::Result<HandleKey> {
    const MAX_HANDLE: usize = 128;
    #[repr(C)]
    struct Handle {
        bytes: u32,
        kind: i32,
        data: [u8; MAX_HANDLE],
    }
    let c = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let mut h = Handle {
        bytes: MAX_HANDLE as u32,
        kind: 0,
        data: [0; MAX_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    // SAFETY: `h` is a file_handle with room for MAX_HANDLE bytes; `c` is NUL-terminated.
    let r = unsafe {
        libc::syscall(
            libc::SYS_name_to_handle_at,
            libc::AT_FDCWD,
            c.as_ptr(),
            &raw mut h,
            &raw mut mount_id,
            0,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut st: libc::statfs = {
        // SAFETY: statfs is plain old data; zero is a valid value.
        unsafe { std::mem::zeroed() }
    };
    // SAFETY: `c` is NUL-terminated and `st` is writable.
    if unsafe { libc::statfs(c.as_ptr(), &raw mut st) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fsid_t is two ints; its fields are private in libc.
    let fsid: [i32; 2] = unsafe { std::mem::transmute(st.f_fsid) };
    Ok(HandleKey {
        fsid,
        handle_type: h.kind,
        handle: h.data[..(h.bytes as usize).min(MAX_HANDLE)].to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dfid_name_record_parses() {
        let mut rec = vec![libc::FAN_EVENT_INFO_TYPE_DFID_NAME, 0, 0, 0];
        rec.extend(7i32.to_ne_bytes());
        rec.extend(9i32.to_ne_bytes());
        rec.extend(8u32.to_ne_bytes());
        rec.extend(1i32.to_ne_bytes());
        rec.extend([1, 2, 3, 4, 5, 6, 7, 8]);
        rec.extend(b"new\0\0\0");
        let len = rec.len() as u16;
        rec[2..4].copy_from_slice(&len.to_ne_bytes());
        let entries = dir_entries(&rec);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].name, "new");
        assert_eq!(entries[0].handle.fsid, [7, 9]);
        assert_eq!(entries[0].handle.handle, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn handles_of_a_directory_are_stable() {
        let dir = tempfile::tempdir().unwrap();
        let a = handle_of(dir.path()).unwrap();
        let b = handle_of(dir.path()).unwrap();
        assert_eq!(a, b);
        assert!(!a.handle.is_empty());
    }
}
