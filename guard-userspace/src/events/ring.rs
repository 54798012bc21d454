//! The kernel side of the pipeline: draining the ring buffer (how full it is, is read by
//! [`crate::metrics::RingFill`]).
//!
//! The kernel never waits for us: a record that cannot be reserved is counted per CPU
//! (`events_dropped`) and the operation goes on. The reader drains everything available on
//! each wake-up and hands decoded records to the pipeline over a bounded queue; when the
//! pipeline falls behind, the queue fills, the reader waits, the ring fills, and the kernel
//! counts what it cannot queue. Memory stays bounded and nothing is lost silently.

use std::sync::Arc;

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
