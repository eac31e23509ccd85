//! The detection way's counters and latency histograms, read by a Prometheus collector
//! at scrape time.

use std::{
    fmt,
    sync::atomic::{AtomicU64, Ordering},
    time::Duration,
};

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::MetricType,
};

use super::judge::Why;
use crate::obs::metrics::{self, Family};

/// Upper bounds (seconds) of the latency histograms.
pub(super) const BUCKETS: [f64; 11] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Debug)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            BUCKETS,
        ))
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        self.0
            .encode(enc.encode_descriptor(name, help, None, MetricType::Histogram)?)
    }
}

/// Counters of the detection way (`dragonflow_activeport_*`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Claims written (created or moved).
    pub claims: AtomicU64,
    /// Sightings from the holder itself: nothing written.
    pub claims_noop: AtomicU64,
    /// Claim or removal transactions that lost a compare (someone else wrote first).
    pub conflicts: AtomicU64,
    /// Moves deferred by the flap dampening.
    pub dampened: AtomicU64,
    /// Claims moved to a new lease (agent restart, new etcd session).
    pub reattached: AtomicU64,
    /// Entries removed by this agent, by why.
    pub removed: [AtomicU64; 8],
    pub probes_sent: AtomicU64,
    pub probes_answered: AtomicU64,
    pub probes_expired: AtomicU64,
    /// Probe frames the kernel refused.
    pub probe_errors: AtomicU64,
    /// Failed etcd calls (claims, removals, history).
    pub etcd_errors: AtomicU64,
    /// Sightings lost because this task was behind.
    pub sightings_dropped: AtomicU64,
    /// Entries in etcd, and those held by local ports.
    pub entries: AtomicU64,
    pub local_entries: AtomicU64,
    /// Datapath event → claim committed in etcd.
    pub claim_latency: Histogram,
    /// The etcd round trips of a claim (read + write transaction).
    pub claim_etcd: Histogram,
}

pub(super) const ALL_WHY: [Why; 8] = [
    Why::Garp,
    Why::ArpReply,
    Why::UnsolicitedNa,
    Why::ProbeLoss,
    Why::AapRemoved,
    Why::PortGone,
    Why::PortMoved,
    Why::LeaseLost,
];

impl Stats {
    pub(super) fn removed(&self, why: Why) {
        if let Some(i) = ALL_WHY.iter().position(|w| *w == why) {
            self.removed[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read at scrape time (registered by `main.rs` in the `/metrics` registry).
impl Collector for Stats {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, a) in [
            (
                "dragonflow_activeport_claims_total",
                "Active-port claims written to etcd (created or moved).",
                &self.claims,
            ),
            (
                "dragonflow_activeport_claims_noop_total",
                "Sightings from the port already holding the IP (nothing written).",
                &self.claims_noop,
            ),
            (
                "dragonflow_activeport_claim_conflicts_total",
                "Claim/removal transactions that lost the mod_revision compare to another writer.",
                &self.conflicts,
            ),
            (
                "dragonflow_activeport_dampened_total",
                "Moves deferred by flap dampening.",
                &self.dampened,
            ),
            (
                "dragonflow_activeport_reattached_total",
                "Claims moved to this agent's new lease (restart, new etcd session).",
                &self.reattached,
            ),
        ] {
            metrics::single(&mut enc, MetricType::Counter, name, help, v(a))?;
        }
        let mut f = Family::counter(
            &mut enc,
            "dragonflow_activeport_removed_total",
            "Active-port entries removed by this agent, by reason (lease_lost: another chassis' claim gone with its lease, recorded in the history by this agent).",
        )?;
        for (w, a) in ALL_WHY.iter().zip(&self.removed) {
            if matches!(w, Why::Garp | Why::ArpReply | Why::UnsolicitedNa) {
                continue;
            }
            f.sample(&[("why", w.name())], v(a))?;
        }
        let mut f = Family::counter(
            &mut enc,
            "dragonflow_activeport_probes_total",
            "Liveness probes of local active holders.",
        )?;
        for (outcome, a) in [
            ("sent", &self.probes_sent),
            ("answered", &self.probes_answered),
            ("expired", &self.probes_expired),
            ("send_error", &self.probe_errors),
        ] {
            f.sample(&[("outcome", outcome)], v(a))?;
        }
        for (kind, name, help, a) in [
            (
                MetricType::Counter,
                "dragonflow_activeport_etcd_errors_total",
                "Failed etcd calls of the detection way (retried by the next sighting or probe).",
                &self.etcd_errors,
            ),
            (
                MetricType::Counter,
                "dragonflow_activeport_sightings_dropped_total",
                "Datapath events the detection task was too busy to take.",
                &self.sightings_dropped,
            ),
            (
                MetricType::Gauge,
                "dragonflow_activeport_entries",
                "activeport/ entries in etcd (all networks).",
                &self.entries,
            ),
            (
                MetricType::Gauge,
                "dragonflow_activeport_local_entries",
                "activeport/ entries held by ports of this chassis (probed).",
                &self.local_entries,
            ),
        ] {
            metrics::single(&mut enc, kind, name, help, v(a))?;
        }
        self.claim_latency.encode(
            &mut enc,
            "dragonflow_activeport_claim_seconds",
            "From the datapath seeing the GARP/ARP reply/NA to the claim committed in etcd.",
        )?;
        self.claim_etcd.encode(
            &mut enc,
            "dragonflow_activeport_claim_etcd_seconds",
            "etcd round trips of one claim (read transaction + compare-and-put transaction).",
        )
    }
}
