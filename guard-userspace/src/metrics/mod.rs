//! Prometheus metrics (`guard daemon --metrics-addr 127.0.0.1:9469`; off by default).
//!
//! Counters the daemon owns (events read, decisions, …) are kept in `prometheus-client`
//! families; what the kernel and the daemon's state own (per-CPU counters including drops,
//! ring-buffer fill, tagged processes, policy generation, hook status) is read at scrape time
//! by a collector through [`DaemonView`].

use std::{
    fmt,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric},
    metrics::{
        counter::{ConstCounter, Counter},
        family::Family,
        gauge::{ConstGauge, Gauge},
    },
    registry::Registry,
};

mod ring_fill;

pub use ring_fill::RingFill;

use crate::agents::AgentNames;

/// Status of one attached (or missing) hook.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookStatus {
    /// `tracking`, `bpf-lsm`, `fallback`, …
    pub tier: String,
    pub hook: String,
    /// `attached`, `enforced`, `kill-on-detect`, `audit-only`, `not-loaded`.
    pub status: String,
}

/// What the daemon and its kernel maps say right now.
#[derive(Clone, Debug, Default)]
pub struct KernelSnapshot {
    /// Per-CPU counters summed, by name (`guard_common::event::COUNTER_NAMES`).
    pub counters: Vec<(String, u64)>,
    pub tagged_processes: u64,
    /// Entries the tag map holds at most.
    pub tag_map_size: u64,
    pub policy_generation: u64,
    pub enforcing: bool,
    pub tier: String,
    pub hooks: Vec<HookStatus>,
}

/// The daemon's state as the event pipeline and the metrics see it.
pub trait DaemonView: Send + Sync + 'static {
    fn agent_names(&self) -> AgentNames;
    /// The kernel's cumulative count of events it could not queue.
    fn events_dropped(&self) -> u64;
    fn snapshot(&self) -> KernelSnapshot;
}

type Labels = Vec<(String, String)>;

/// Every metric of the daemon.
pub struct Metrics {
    registry: Registry,
    /// Events read from the ring buffer, by kind.
    pub events_read: Family<Labels, Counter>,
    pub events_written: Counter,
    pub log_write_errors: Counter,
    pub decode_errors: Counter,
    /// Events the kernel reported lost, as written to the log.
    pub events_lost_logged: Counter,
    pub decisions: Family<Labels, Counter>,
    /// Process-tree entries by state (`live`, `exited`).
    pub tree_entries: Family<Labels, Gauge>,
    pub tree_evicted: Gauge,
    ring: Arc<Mutex<Option<RingFill>>>,
}

impl Metrics {
    pub fn new(view: Arc<dyn DaemonView>) -> Self {
        let mut registry = Registry::default();
        let m = Self {
            events_read: Family::default(),
            events_written: Counter::default(),
            log_write_errors: Counter::default(),
            decode_errors: Counter::default(),
            events_lost_logged: Counter::default(),
            decisions: Family::default(),
            tree_entries: Family::default(),
            tree_evicted: Gauge::default(),
            ring: Arc::new(Mutex::new(None)),
            registry: Registry::default(),
        };
        registry.register(
            "guard_events_read",
            "Events read from the kernel ring buffer, by kind",
            m.events_read.clone(),
        );
        registry.register(
            "guard_events_written",
            "Event lines appended to the event log",
            m.events_written.clone(),
        );
        registry.register(
            "guard_event_log_write_errors",
            "Event lines that could not be written to the log",
            m.log_write_errors.clone(),
        );
        registry.register(
            "guard_event_decode_errors",
            "Ring-buffer records that could not be decoded",
            m.decode_errors.clone(),
        );
        registry.register(
            "guard_events_lost_logged",
            "Kernel event drops reported in the event log (events_lost lines)",
            m.events_lost_logged.clone(),
        );
        registry.register(
            "guard_decisions",
            "Enforcement decisions by rule, action and result",
            m.decisions.clone(),
        );
        registry.register(
            "guard_process_tree_entries",
            "Processes in the daemon's process-tree cache, by state",
            m.tree_entries.clone(),
        );
        registry.register(
            "guard_process_tree_evicted",
            "Exited processes dropped from the cache before their time to bound memory",
            m.tree_evicted.clone(),
        );
        registry.register_collector(Box::new(StateCollector {
            view,
            ring: m.ring.clone(),
        }));
        Self { registry, ..m }
    }

    /// Start reporting the fill of the event ring buffer.
    pub fn set_ring(&self, ring: RingFill) {
        *self.ring.lock().expect("ring lock") = Some(ring);
    }

    pub fn event_read(&self, kind: &str) {
        self.events_read
            .get_or_create(&vec![("kind".into(), kind.into())])
            .inc();
    }

    pub fn decision(&self, rule: &str, action: &str, result: &str) {
        self.decisions
            .get_or_create(&vec![
                ("rule".into(), rule.into()),
                ("action".into(), action.into()),
                ("result".into(), result.into()),
            ])
            .inc();
    }

    pub fn set_tree(&self, live: usize, exited: usize, evicted: u64) {
        for (state, n) in [("live", live), ("exited", exited)] {
            self.tree_entries
                .get_or_create(&vec![("state".into(), state.into())])
                .set(n as i64);
        }
        self.tree_evicted.set(evicted as i64);
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "encoding metrics");
        }
        out
    }
}

struct StateCollector {
    view: Arc<dyn DaemonView>,
    ring: Arc<Mutex<Option<RingFill>>>,
}

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

fn counter(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: u64,
) -> Result<(), fmt::Error> {
    let c = ConstCounter::new(value);
    c.encode(enc.encode_descriptor(name, help, None, c.metric_type())?)
}

fn gauge<V: prometheus_client::encoding::EncodeGaugeValue>(
    enc: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    value: V,
) -> Result<(), fmt::Error> {
    let g = ConstGauge::new(value);
    g.encode(enc.encode_descriptor(name, help, None, g.metric_type())?)
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> Result<(), fmt::Error> {
        let snap = self.view.snapshot();
        let dropped = snap
            .counters
            .iter()
            .find(|(n, _)| n == "events_dropped")
            .map_or(0, |(_, v)| *v);
        counter(
            &mut enc,
            "guard_events_dropped",
            "Events the kernel could not queue (ring buffer full), summed over CPUs",
            dropped,
        )?;
        {
            let c = ConstCounter::new(0u64);
            let mut family = enc.encode_descriptor(
                "guard_kernel",
                "guard's per-CPU kernel counters, summed over CPUs",
                None,
                c.metric_type(),
            )?;
            for (name, value) in &snap.counters {
                let labels = [("counter", name.as_str())];
                ConstCounter::new(*value).encode(family.encode_family(&labels)?)?;
            }
        }
        if let Some(ring) = self.ring.lock().expect("ring lock").as_ref() {
            gauge(
                &mut enc,
                "guard_ring_buffer_fill_ratio",
                "Bytes queued in the event ring buffer and not yet read, as a fraction of its size",
                ring.ratio(),
            )?;
            gauge(
                &mut enc,
                "guard_ring_buffer_size_bytes",
                "Size of the event ring buffer",
                ring.size(),
            )?;
        }
        gauge(
            &mut enc,
            "guard_tagged_processes",
            "Processes in agent trees (entries of the kernel tag map)",
            snap.tagged_processes,
        )?;
        gauge(
            &mut enc,
            "guard_tag_map_size",
            "Entries the tag map holds; past it, new tagged children are killed",
            snap.tag_map_size,
        )?;
        gauge(
            &mut enc,
            "guard_policy_generation",
            "Policy generation in force (1 at start, +1 per successful reload)",
            snap.policy_generation,
        )?;
        gauge(
            &mut enc,
            "guard_enforcing",
            "1 when the daemon's programs are attached and enforcing",
            u64::from(snap.enforcing),
        )?;
        {
            let g = ConstGauge::new(1u64);
            let mut family = enc.encode_descriptor(
                "guard_hook_status",
                "1 for each hook with its enforcement tier and status",
                None,
                g.metric_type(),
            )?;
            for h in &snap.hooks {
                let labels = [
                    ("tier", h.tier.as_str()),
                    ("hook", h.hook.as_str()),
                    ("status", h.status.as_str()),
                ];
                ConstGauge::new(1u64).encode(family.encode_family(&labels)?)?;
            }
        }
        {
            let g = ConstGauge::new(1u64);
            let mut family = enc.encode_descriptor(
                "guard_tier",
                "1 for the enforcement tier this node runs with",
                None,
                g.metric_type(),
            )?;
            let labels = [("tier", snap.tier.as_str())];
            ConstGauge::new(1u64).encode(family.encode_family(&labels)?)?;
        }
        if let Some(rss) = resident_bytes() {
            gauge(
                &mut enc,
                "guard_process_resident_memory_bytes",
                "Resident memory of the daemon",
                rss,
            )?;
        }
        Ok(())
    }
}

/// Resident set size of this process, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}

#[derive(Debug, thiserror::Error)]
#[error("metrics endpoint {addr}: {source}")]
pub struct MetricsError {
    pub addr: SocketAddr,
    #[source]
    pub source: std::io::Error,
}

/// Bind `addr` (an error if it cannot be bound) and serve `GET /metrics` on a task.
pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> Result<SocketAddr, MetricsError> {
    use axum::{Router, http::header, routing::get};
    let err = |source| MetricsError { addr, source };
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(err)?;
    let bound = listener.local_addr().map_err(err)?;
    let app = Router::new().route(
        "/metrics",
        get(move || {
            let metrics = metrics.clone();
            async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }
        }),
    );
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "metrics endpoint stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed;
    impl DaemonView for Fixed {
        fn agent_names(&self) -> AgentNames {
            AgentNames::default()
        }
        fn events_dropped(&self) -> u64 {
            7
        }
        fn snapshot(&self) -> KernelSnapshot {
            KernelSnapshot {
                counters: vec![("events_dropped".into(), 7), ("forks_tagged".into(), 3)],
                tagged_processes: 2,
                tag_map_size: 64,
                policy_generation: 4,
                enforcing: true,
                tier: "fallback".into(),
                hooks: vec![HookStatus {
                    tier: "tracking".into(),
                    hook: "guard_fork".into(),
                    status: "attached".into(),
                }],
            }
        }
    }

    #[test]
    fn exposes_daemon_and_kernel_metrics() {
        let m = Metrics::new(Arc::new(Fixed));
        m.event_read("tagged_fork");
        m.event_read("tagged_fork");
        m.decision("prod-db", "deny", "denied");
        m.set_tree(10, 3, 1);
        let text = m.encode();
        for line in [
            "guard_events_read_total{kind=\"tagged_fork\"} 2",
            "guard_decisions_total{rule=\"prod-db\",action=\"deny\",result=\"denied\"} 1",
            "guard_events_dropped_total 7",
            "guard_kernel_total{counter=\"forks_tagged\"} 3",
            "guard_tagged_processes 2",
            "guard_tag_map_size 64",
            "guard_policy_generation 4",
            "guard_hook_status{tier=\"tracking\",hook=\"guard_fork\",status=\"attached\"} 1",
            "guard_process_tree_entries{state=\"exited\"} 3",
            "guard_tier{tier=\"fallback\"} 1",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing {line:?} in\n{text}"
            );
        }
        assert!(text.ends_with("# EOF\n"));
    }
}
