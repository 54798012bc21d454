//! The kernel side of the pipeline: draining the ring buffer, and reading how full it is.
//!
//! The kernel never waits for us: a record that cannot be reserved is counted per CPU
//! (`events_dropped`) and the operation goes on. The reader drains everything available on
//! each wake-up and hands decoded records to the pipeline over a bounded queue; when the
//! pipeline falls behind, the queue fills, the reader waits, the ring fills, and the kernel
//! counts what it cannot queue. Memory stays bounded and nothing is lost silently.

use std::{
    io,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    ptr::NonNull,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use aya::maps::{MapData, RingBuf};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::error;

use super::{Clock, DecodeCtx, Decoded, Responder, decode, net::NetLabels};
use crate::metrics::{DaemonView, Metrics};

/// Drain `ring` into `tx` until the pipeline goes away.
pub async fn read_ring(
    ring: RingBuf<MapData>,
    tx: mpsc::Sender<Decoded>,
    view: Arc<dyn DaemonView>,
    metrics: Arc<Metrics>,
    responders: Vec<Arc<dyn Responder>>,
    net: Arc<dyn NetLabels + Send + Sync>,
) {
    // SAFETY: the ring buffer owns its fd and lives inside the AsyncFd, so the fd stays open
    // and the same for as long as it is registered.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            error!(error = %e, "cannot poll the event ring buffer; events are not recorded");
            return;
        }
    };
    let mut batch = Vec::with_capacity(256);
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                error!(error = %e, "event ring buffer poll failed");
                return;
            }
        };
        let names = view.agent_names();
        let clock = Clock::now();
        loop {
            // Decode a batch while holding the ring, then hand it over without holding it.
            {
                let ctx = DecodeCtx {
                    clock: &clock,
                    agents: &names,
                    net: net.as_ref(),
                };
                let ring = guard.get_inner_mut();
                while batch.len() < batch.capacity() {
                    let Some(item) = ring.next() else { break };
                    for r in &responders {
                        r.respond(&item);
                    }
                    match decode(&item, &ctx) {
                        Ok(d) => batch.push(d),
                        Err(e) => {
                            metrics.decode_errors.inc();
                            tracing::warn!(error = %e, "undecodable event record");
                        }
                    }
                }
            }
            if batch.is_empty() {
                break;
            }
            for d in batch.drain(..) {
                if tx.send(d).await.is_err() {
                    return;
                }
            }
        }
        guard.clear_ready();
    }
}

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
