//! Prometheus exposition (text format 0.0.4, by `prometheus-client`) of what the agent
//! publishes. Everything is read at scrape time by collectors: [`StateCollector`] reads
//! the per-CPU datapath counters and [`Shared`]; tasks that keep their own counters
//! register a collector of their own (the detection way), written with [`Family`].

use std::{
    fmt,
    sync::{Arc, atomic::Ordering},
};

use dragonflow_common::{
    maps as names,
    verdict::{DIRECTIONS, DropReason, EventStat, PassPath, Stat, stat_index},
};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{MetricType, counter::ConstCounter, gauge::ConstGauge},
    registry::Registry,
};

use crate::{
    desired::forwarding::mode_name,
    nb::{self, AapMode, Kind},
    obs::{
        garp,
        state::{Shared, TapState, View},
    },
};

/// The `Content-Type` of `/metrics`.
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Top users shown in the metrics (a bounded number of series, whatever the ports).
pub const CT_TOP_PORTS: usize = 5;
/// Share of the quota from which a port counts as near it.
const CT_NEAR_QUOTA: f64 = 0.8;

/// The registry `/metrics` serves, with the state collector in it; tasks add theirs
/// before the server starts.
pub fn registry(shared: Arc<Shared>) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(StateCollector(shared)));
    r
}

/// The text of a scrape.
pub fn encode(registry: &Registry) -> String {
    let mut o = String::with_capacity(16 * 1024);
    prometheus_text::encode(&mut o, registry).expect("writing to a String cannot fail");
    o
}

/// One metric family written by a collector: its samples follow, each with its labels.
/// `name` is the exposed name (a counter's ends in `_total`, which the encoder adds back).
pub struct Family<'a> {
    enc: prometheus_client::encoding::MetricEncoder<'a>,
    kind: MetricType,
}

impl<'a> Family<'a> {
    pub fn counter(
        enc: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
    ) -> Result<Self, fmt::Error> {
        let name = name.strip_suffix("_total").unwrap_or(name);
        Self::new(enc, name, help, MetricType::Counter)
    }

    pub fn gauge(
        enc: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
    ) -> Result<Self, fmt::Error> {
        Self::new(enc, name, help, MetricType::Gauge)
    }

    fn new(
        enc: &'a mut DescriptorEncoder<'_>,
        name: &'a str,
        help: &str,
        kind: MetricType,
    ) -> Result<Self, fmt::Error> {
        let enc = enc.encode_descriptor(name, help, None, kind)?;
        Ok(Family { enc, kind })
    }

    /// A sample with these labels.
    pub fn sample(&mut self, labels: &impl EncodeLabelSet, v: u64) -> fmt::Result {
        let enc = self.enc.encode_family(labels)?;
        match self.kind {
            MetricType::Counter => ConstCounter::new(v).encode(enc),
            _ => ConstGauge::new(v).encode(enc),
        }
    }

    /// The one sample of a family without labels.
    pub fn value(self, v: u64) -> fmt::Result {
        match self.kind {
            MetricType::Counter => ConstCounter::new(v).encode(self.enc),
            _ => ConstGauge::new(v).encode(self.enc),
        }
    }
}

/// A family with one unlabelled sample.
pub fn single(
    enc: &mut DescriptorEncoder<'_>,
    kind: MetricType,
    name: &str,
    help: &str,
    v: u64,
) -> fmt::Result {
    match kind {
        MetricType::Counter => Family::counter(enc, name, help)?.value(v),
        _ => Family::gauge(enc, name, help)?.value(v),
    }
}

/// Reads the datapath counters and the shared state at each scrape.
#[derive(Clone)]
pub struct StateCollector(pub Arc<Shared>);

impl fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let shared = &*self.0;
        datapath(&mut enc, shared)?;
        let view = shared.view.lock().expect("lock").clone();
        maps(&mut enc, shared, &view)?;
        status(&mut enc, shared, &view)?;
        limits(&mut enc, shared, &view)?;
        aap_and_ports(&mut enc, shared, &view)?;
        port_drops(&mut enc, shared)?;
        counters(&mut enc, shared)
    }
}

fn datapath(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let counters = shared.stats.lock().expect("lock").read_stats();
    let get = |dir, stat| {
        counters
            .get(stat_index(dir, stat) as usize)
            .copied()
            .unwrap_or(0)
    };
    let mut f = Family::counter(
        enc,
        "dragonflow_datapath_packets_total",
        "Frames judged by the datapath, by direction, verdict and drop reason or pass path (summed over CPUs).",
    )?;
    for dir in DIRECTIONS {
        for r in DropReason::ALL {
            let labels = [
                ("direction", dir.name()),
                ("verdict", "drop"),
                ("reason", r.name()),
            ];
            f.sample(&labels, get(dir, Stat::Drop(*r)))?;
        }
        for p in PassPath::ALL {
            let labels = [
                ("direction", dir.name()),
                ("verdict", "pass"),
                ("path", p.name()),
            ];
            f.sample(&labels, get(dir, Stat::Pass(*p)))?;
        }
    }
    let mut f = Family::counter(
        enc,
        "dragonflow_datapath_events_total",
        "Datapath side counters by the direction that counted them: GARP events (sent, rate limited, lost) and security-group/conntrack activity (from_vm = egress judging, to_vm = ingress judging).",
    )?;
    for dir in DIRECTIONS {
        for e in EventStat::ALL {
            let labels = [("direction", dir.name()), ("event", e.name())];
            f.sample(&labels, get(dir, Stat::Event(*e)))?;
        }
    }
    Ok(())
}

fn maps(enc: &mut DescriptorEncoder, shared: &Shared, view: &View) -> fmt::Result {
    let garp_rate = shared.stats.lock().expect("lock").garp_rate_entries();
    let mut f = Family::gauge(enc, "dragonflow_map_entries", "Entries in each pinned map.")?;
    for (name, n) in &view.entries {
        f.sample(&[("map", *name)], *n)?;
    }
    if let Some(n) = garp_rate {
        f.sample(&[("map", names::GARP_RATE)], n)?;
    }
    // Counted by the conntrack collector's last scan.
    f.sample(&[("map", names::CT)], shared.ct.entries())?;
    let mut f = Family::gauge(
        enc,
        "dragonflow_map_capacity",
        "Capacity (max_entries) of each pinned map (as the kernel has it for the maps the agent fills: --map-capacity, or the size of a map adopted from a previous agent).",
    )?;
    for name in names::ALL {
        if let Some(c) = view.capacity.get(name).copied().or(names::capacity(name)) {
            f.sample(&[("map", *name)], u64::from(c))?;
        }
    }
    let mut f = Family::gauge(
        enc,
        "dragonflow_map_needed_entries",
        "Entries the northbound state needs in each map the agent fills (more than dragonflow_map_capacity: see dragonflow_map_overflow).",
    )?;
    for (name, n) in &view.needed {
        f.sample(&[("map", *name)], *n)?;
    }
    let mut f = Family::gauge(
        enc,
        "dragonflow_map_overflow",
        "1 while a map cannot hold what is needed (the agent keeps the entries that are safest to keep; /healthz is degraded).",
    )?;
    for name in view.needed.keys() {
        let over = view.map_overflow.iter().any(|m| m.map == *name);
        f.sample(&[("map", *name)], u64::from(over))?;
    }
    Ok(())
}

fn status(enc: &mut DescriptorEncoder, shared: &Shared, view: &View) -> fmt::Result {
    let gauges = [
        (
            "dragonflow_etcd_connected",
            "1 while the etcd session (lease, watch) is up.",
            u64::from(shared.etcd_connected.load(Ordering::Relaxed)),
        ),
        (
            "dragonflow_etcd_revision",
            "etcd revision the datapath maps reflect (applied after the write).",
            shared.etcd_revision.load(Ordering::Relaxed).max(0) as u64,
        ),
        (
            "dragonflow_synced",
            "1 once the first full sync has been applied to the maps.",
            u64::from(shared.synced.load(Ordering::Relaxed)),
        ),
        (
            "dragonflow_forwarding_enabled",
            "1 once the datapath switches and routes itself (forwarding maps complete).",
            u64::from(shared.forwarding_enabled.load(Ordering::Relaxed)),
        ),
        (
            "dragonflow_security_groups_enabled",
            "1 while security groups are enforced (CFG_F_SECURITY_GROUPS set, rules written).",
            u64::from(view.security_groups.enabled),
        ),
        (
            "dragonflow_sg_policy_gen",
            "Policy generation: bumped after every rule/membership change written to the maps.",
            u64::from(view.security_groups.policy_gen),
        ),
        (
            "dragonflow_sg_identities",
            "Distinct remote identities (sets of remote groups and prefixes) in the maps.",
            view.security_groups.identities as u64,
        ),
        (
            "dragonflow_ct_entries",
            "Conntrack entries at the last garbage collection.",
            shared.ct.entries(),
        ),
    ];
    for (name, help, v) in gauges {
        single(enc, MetricType::Gauge, name, help, v)?;
    }
    Ok(())
}

/// The limits in force, the top conntrack users (at most [`CT_TOP_PORTS`] series: labels
/// stay bounded however many ports there are), how many are near their quota, and what
/// the collector deleted.
fn limits(enc: &mut DescriptorEncoder, shared: &Shared, view: &View) -> fmt::Result {
    let l = &view.limits;
    for (name, help, v) in [
        (
            "dragonflow_flood_rate_limit",
            "Flooded frames per second each port may send after its burst (0: no limit).",
            l.flood_rate,
        ),
        (
            "dragonflow_flood_burst_limit",
            "Flooded frames each port may send at once.",
            l.flood_burst,
        ),
        (
            "dragonflow_ct_port_quota",
            "Conntrack entries each port may hold per origin direction (0: no quota).",
            l.ct_port_quota,
        ),
    ] {
        single(enc, MetricType::Gauge, name, help, u64::from(v))?;
    }
    let rows = shared.ct_port_use();
    let mut f = Family::gauge(
        enc,
        "dragonflow_ct_port_top_entries",
        "Conntrack entries of the ports holding the most (rank 1 = most), per origin direction.",
    )?;
    for (rank, r) in rows.iter().take(CT_TOP_PORTS).enumerate() {
        let rank = (rank + 1).to_string();
        for (origin, n) in [("egress", r.egress), ("ingress", r.ingress)] {
            let labels = [
                ("rank", rank.as_str()),
                ("lport", r.lport.as_str()),
                ("tap", r.tap.as_str()),
                ("origin", origin),
            ];
            f.sample(&labels, n)?;
        }
    }
    let mut f = Family::gauge(
        enc,
        "dragonflow_ct_ports_near_quota",
        "Ports holding at least this share of their conntrack quota in an origin direction (share=\"1\": at it, their new flows drop as ct_port_quota).",
    )?;
    let quota = u64::from(l.ct_port_quota);
    for (label, share) in [("0.8", CT_NEAR_QUOTA), ("1", 1.0)] {
        let n = rows
            .iter()
            .filter(|r| quota > 0 && r.egress.max(r.ingress) as f64 >= share * quota as f64)
            .count();
        f.sample(&[("share", label)], n as u64)?;
    }
    let (expired, port_gone) = shared.ct.deleted();
    let mut f = Family::counter(
        enc,
        "dragonflow_ct_gc_deleted_total",
        "Conntrack entries removed by the agent, by reason (expired: idle past the state's timeout; port_gone: the tap lost its port).",
    )?;
    f.sample(&[("reason", "expired")], expired)?;
    f.sample(&[("reason", "port_gone")], port_gone)
}

/// The ports that drop most, without one series per port: the top K (`--port-drops-top-k`)
/// by drops, one series per (port, reason) of theirs, and the untruncated total.
fn port_drops(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let mut ports = shared.port_stats();
    let total: u64 = ports.iter().map(|p| p.drops_total).sum();
    ports.retain(|p| p.drops_total > 0);
    ports.sort_by_key(|p| (std::cmp::Reverse(p.drops_total), p.ifindex));
    ports.truncate(shared.port_drops_top_k.load(Ordering::Relaxed));
    let mut f = Family::gauge(
        enc,
        "dragonflow_port_drops_top",
        "Frames dropped by the ports that dropped most (the top --port-drops-top-k ports by drops since their tap was attached), by port (logical port id, else tap name), direction and reason.",
    )?;
    for p in &ports {
        let name = if p.lport.is_empty() { &p.tap } else { &p.lport };
        for (dir, reasons) in &p.drops {
            for (reason, n) in reasons {
                let labels = [
                    ("port", name.as_str()),
                    ("direction", dir),
                    ("reason", reason),
                ];
                f.sample(&labels, *n)?;
            }
        }
    }
    single(
        enc,
        MetricType::Counter,
        "dragonflow_port_drops_total",
        "Frames dropped by every port with per-port counters (all ports, not only the top ones).",
        total,
    )
}

fn aap_and_ports(enc: &mut DescriptorEncoder, shared: &Shared, view: &View) -> fmt::Result {
    single(
        enc,
        MetricType::Gauge,
        "dragonflow_aap_mode_disagreements",
        "Networks whose live chassis would forward shared allowed-address-pair addresses with different AAP modes (no lswitch override); see the log and /state.",
        view.networks
            .iter()
            .filter(|n| !n.aap_mode_disagreement.is_empty())
            .count() as u64,
    )?;
    let mut f = Family::gauge(
        enc,
        "dragonflow_aap_shared_addresses",
        "Allowed-address-pair IPs and MACs several ports of a network list, by how this chassis forwards them (broadcast: to every holder; detection: to the active port).",
    )?;
    for way in [AapMode::Broadcast, AapMode::Detection] {
        for kind in ["ip", "mac"] {
            let n: usize = view
                .networks
                .iter()
                .map(|net| {
                    net.shared
                        .iter()
                        .filter(|a| a.way == way && a.kind == kind)
                        .count()
                })
                .sum();
            f.sample(&[("way", mode_name(way)), ("kind", kind)], n as u64)?;
        }
    }
    let tunnel_up = view
        .tunnel
        .as_ref()
        .is_some_and(|t| t.ifindex != 0 && t.error.is_none());
    for (name, help, v) in [
        (
            "dragonflow_remote_chassis",
            "Live chassis (records in etcd) other than this one that VXLAN can reach.",
            view.remote_chassis.len() as u64,
        ),
        (
            "dragonflow_tunnel_up",
            "1 while the VXLAN device exists and is usable (0 also with --no-tunnel).",
            u64::from(tunnel_up),
        ),
        (
            "dragonflow_local_ports",
            "Ports bound to this chassis.",
            view.ports.len() as u64,
        ),
    ] {
        single(enc, MetricType::Gauge, name, help, v)?;
    }
    let mut f = Family::gauge(enc, "dragonflow_ports", "Local ports by state.")?;
    for state in ["programmed", "no_tap", "unknown_lswitch", "tap_conflict"] {
        let n = view.ports.iter().filter(|p| p.state == state).count();
        f.sample(&[("state", state)], n as u64)?;
    }
    let taps = shared.taps.all();
    let mut f = Family::gauge(enc, "dragonflow_taps", "Managed tap devices by state.")?;
    for state in TapState::ALL {
        let n = taps.iter().filter(|t| t.state == state).count();
        f.sample(&[("state", state.name())], n as u64)?;
    }
    Ok(())
}

fn counters(enc: &mut DescriptorEncoder, shared: &Shared) -> fmt::Result {
    let mut f = Family::counter(
        enc,
        "dragonflow_nb_invalid_records_total",
        "Northbound records rejected (last good version kept).",
    )?;
    let named = Kind::ALL
        .iter()
        .map(|k| k.segment())
        .chain([nb::ACTIVE_PORT_SEGMENT]);
    for kind in named {
        f.sample(&[("kind", kind)], shared.invalid_named(kind))?;
    }
    for (name, help, v) in [
        (
            "dragonflow_sync_total",
            "Reconciliations that wrote the maps.",
            &shared.sync_total,
        ),
        (
            "dragonflow_flood_overflow_total",
            "Times a network's flood list exceeded FLOOD_MAX destinations and was cut.",
            &shared.flood_overflow_total,
        ),
        (
            "dragonflow_foreign_programs_replaced_total",
            "Programs of this project found on a device without this agent's pins (another \
             --bpffs, an older layout) and taken over or detached.",
            &shared.foreign_programs_replaced_total,
        ),
        (
            "dragonflow_map_write_errors_total",
            "Failed map updates (retried on the next reconciliation).",
            &shared.map_write_errors,
        ),
    ] {
        single(
            enc,
            MetricType::Counter,
            name,
            help,
            v.load(Ordering::Relaxed),
        )?;
    }
    let by_op = shared.garp.lock().expect("lock").by_op.clone();
    let mut f = Family::counter(
        enc,
        "dragonflow_garp_events_total",
        "GARP events received from the datapath, by ARP/ND op.",
    )?;
    for op in garp::OPS {
        f.sample(&[("op", op)], by_op.get(op).copied().unwrap_or(0))?;
    }
    Ok(())
}
