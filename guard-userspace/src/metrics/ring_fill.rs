//! How full the kernel's event ring buffer is, read at scrape time.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{MapData, RingBuf};

/// How full the ring buffer is, from its producer and consumer positions.
///
/// aya 0.14 does not expose them, so this maps the map's first two pages read-only — the
/// consumer position page and the producer position page — from a duplicate of its fd.
pub struct RingFill {
    base: NonNull<u8>,
    page: usize,
    size: u64,
    _fd: OwnedFd,
}

// SAFETY: the mapping is read-only shared memory that is only read with atomic loads; the
// pointer is valid until drop and not tied to a thread.
unsafe impl Send for RingFill {}
// SAFETY: as above; `&self` methods only perform atomic loads.
unsafe impl Sync for RingFill {}

impl RingFill {
    pub fn new(ring: &RingBuf<MapData>, size: u32) -> io::Result<Self> {
        let fd = ring.as_fd().try_clone_to_owned()?;
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page = usize::try_from(page).map_err(|_| io::Error::other("no page size"))?;
        // SAFETY: a new shared read-only mapping of two pages of a ring-buffer map fd, which
        // the kernel allows (only the consumer page may be mapped writable); the result is
        // checked before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                2 * page,
                libc::PROT_READ,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(ptr.cast::<u8>()).ok_or_else(|| io::Error::other("null map"))?;
        Ok(Self {
            base,
            page,
            size: u64::from(size),
            _fd: fd,
        })
    }

    /// `(consumer, producer)` positions.
    pub fn positions(&self) -> (u64, u64) {
        // SAFETY: both pages are mapped for the life of self; the kernel keeps each position
        // at the start of its page, 8-byte aligned, and updates it atomically.
        unsafe {
            let cons = &*self.base.as_ptr().cast::<AtomicU64>();
            let prod = &*self.base.as_ptr().add(self.page).cast::<AtomicU64>();
            (cons.load(Ordering::Acquire), prod.load(Ordering::Acquire))
        }
    }

    /// Bytes queued and not yet consumed, as a fraction of the ring's size.
    pub fn ratio(&self) -> f64 {
        let (cons, prod) = self.positions();
        prod.saturating_sub(cons) as f64 / self.size as f64
    }

    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for RingFill {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in new().
        unsafe { libc::munmap(self.base.as_ptr().cast(), 2 * self.page) };
    }
}
