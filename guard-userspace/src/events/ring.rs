//! The kernel side of the pipeline: draining the ring buffer (how full it is, is read by
//! [`crate::metrics::RingFill`]).
//!
//! The kernel never waits for us: a record that cannot be reserved is counted per CPU
//! (`events_dropped`) and the operation goes on. The reader drains everything available on
//! each wake-up and hands decoded records to the pipeline over a bounded queue; when the
//! pipeline falls behind, the queue fills, the reader waits, the ring fills, and the kernel
//! counts what it cannot queue. Memory stays bounded and nothing is lost silently.

use std::{sync::Arc, time::Duration};

use guard_common::maps::EVENTS_DRAIN_MS;

use crate::agents::AgentNames;

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
    // Fork and exit records do not wake this reader until a share of the ring is queued (see
    // `EVENTS_WAKE_BYTES`): drain on a timer too.
    let mut drain = tokio::time::interval(Duration::from_millis(EVENTS_DRAIN_MS));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        let names = view.agent_names();
        let clock = Clock::now();
        let reader = Reader {
            clock: &clock,
            names: &names,
            net: &net,
            responders: &responders,
            metrics: &metrics,
            tx: &tx,
        };
        let open = tokio::select! {
            guard = fd.readable_mut() => match guard {
                Ok(mut g) => {
                    let open = reader.drain(g.get_inner_mut(), &mut batch).await;
                    g.clear_ready();
                    open
                }
                Err(e) => {
                    error!(error = %e, "event ring buffer poll failed");
                    false
                }
            },
            _ = drain.tick() => reader.drain(fd.get_mut(), &mut batch).await,
        };
        if !open {
            return;
        }
    }
}

/// What draining the ring needs.
struct Reader<'a> {
    clock: &'a Clock,
    names: &'a AgentNames,
    net: &'a Arc<dyn NetLabels + Send + Sync>,
    responders: &'a [Arc<dyn Responder>],
    metrics: &'a Metrics,
    tx: &'a mpsc::Sender<Decoded>,
}

impl Reader<'_> {
    /// Everything queued now, a batch at a time (decoded while holding the ring, handed over
    /// without holding it); false once the pipeline is gone.
    async fn drain(&self, ring: &mut RingBuf<MapData>, batch: &mut Vec<Decoded>) -> bool {
        loop {
            {
                // Not held across the sends below (it borrows a `dyn NetLabels`).
                let ctx = DecodeCtx {
                    clock: self.clock,
                    agents: self.names,
                    net: self.net.as_ref(),
                };
                decode_batch(ring, &ctx, self.responders, self.metrics, batch);
            }
            if batch.is_empty() {
                return true;
            }
            for d in batch.drain(..) {
                if self.tx.send(d).await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// Decode up to a batch of records, handing each raw record to the responders first.
fn decode_batch(
    ring: &mut RingBuf<MapData>,
    ctx: &DecodeCtx<'_>,
    responders: &[Arc<dyn Responder>],
    metrics: &Metrics,
    batch: &mut Vec<Decoded>,
) {
    while batch.len() < batch.capacity() {
        let Some(item) = ring.next() else { break };
        for r in responders {
            r.respond(&item);
        }
        match decode(&item, ctx) {
            Ok(d) => batch.push(d),
            Err(e) => {
                metrics.decode_errors.inc();
                tracing::warn!(error = %e, "undecodable event record");
            }
        }
    }
}
