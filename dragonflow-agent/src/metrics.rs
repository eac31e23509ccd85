//! State shared between the agent's tasks, and the tiny HTTP/1.1 server that exposes it:
//!
//! - `GET /metrics`: Prometheus text;
//! - `GET /healthz`: 200 `ok` once the first full sync from etcd has been applied to the
//!   maps, 503 before; 503 `degraded: <map> needs N entries, capacity C` (a line per map)
//!   while a map cannot hold what is needed; 200 `degraded: …` while etcd is unreachable (the datapath keeps
//!   enforcing the last good state);
//! - `GET /garp`: JSON array of the last GARP seen per IP;
//! - `GET /state`: JSON of local ports, taps and sync state (for tests and operators).

use std::{
    collections::BTreeMap,
    fmt::Write as _,
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering},
    },
    time::Duration,
};

use dragonflow_common::{
    maps as names,
    verdict::{DIRECTIONS, DropReason, EventStat, PassPath, Stat, stat_index},
};
use serde::Serialize;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    time,
};
use tracing::debug;

use crate::{
    config::Hook,
    conntrack::CtShared,
    datapath::{StatsMaps, capacity::MapOverflow},
    garp::{self, GarpTable},
    nb::Kind,
    reconcile::{LocalPort, NetworkView},
    secgroups::SgPortView,
};

/// How a tap is doing.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TapState {
    /// The pipeline runs and the port's entries are in the maps.
    Attached,
    /// The pipeline runs with no port entries: everything the VM sends is dropped.
    FailClosed,
    /// The pipeline could not be attached (see the log): the tap is NOT protected.
    AttachFailed,
}

impl TapState {
    pub const ALL: [TapState; 3] = [
        TapState::Attached,
        TapState::FailClosed,
        TapState::AttachFailed,
    ];
    pub const fn name(&self) -> &'static str {
        match self {
            TapState::Attached => "attached",
            TapState::FailClosed => "fail_closed",
            TapState::AttachFailed => "attach_failed",
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TapView {
    pub ifname: String,
    pub ifindex: u32,
    pub lport: Option<String>,
    pub state: TapState,
    /// Pinned link kinds on it (`xdp`, `tc`, `vlan`).
    pub links: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortView {
    pub id: String,
    pub lswitch: String,
    pub tap: String,
    pub ifindex: Option<u32>,
    pub state: &'static str,
}

impl From<&LocalPort> for PortView {
    fn from(p: &LocalPort) -> Self {
        PortView {
            id: p.id.clone(),
            lswitch: p.lswitch.clone(),
            tap: p.tap.clone(),
            ifindex: match p.state {
                crate::reconcile::PortState::Programmed { ifindex } => Some(ifindex),
                _ => None,
            },
            state: p.state.name(),
        }
    }
}

/// The VXLAN device.
#[derive(Clone, Debug, Serialize)]
pub struct TunnelView {
    pub name: String,
    /// 0 while the device is missing or unusable.
    pub ifindex: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What the controller last computed, for /state and the gauges.
#[derive(Clone, Debug, Default, Serialize)]
pub struct View {
    pub ports: Vec<PortView>,
    pub taps: Vec<TapView>,
    /// Per network: local ports, remote chassis hosting its ports, flood list length.
    pub networks: Vec<Arc<NetworkView>>,
    /// Live chassis other than this one that VXLAN can reach.
    pub remote_chassis: Vec<String>,
    /// `None` with `--no-tunnel`.
    pub tunnel: Option<TunnelView>,
    /// NB keys whose value is invalid (key → reason).
    pub invalid_records: BTreeMap<String, String>,
    #[serde(skip)]
    pub entries: BTreeMap<&'static str, u64>,
    /// Effective capacity of the maps the agent fills (`datapath::capacity`).
    #[serde(skip)]
    pub capacity: BTreeMap<&'static str, u32>,
    /// Entries the NB state needs in each map the agent fills, before any cut.
    #[serde(skip)]
    pub needed: BTreeMap<&'static str, u64>,
    /// Maps that cannot hold what is needed (`/healthz` degraded while not empty).
    pub map_overflow: Vec<MapOverflow>,
    /// Security groups as enforced here.
    pub security_groups: SgView,
    /// The per-port limits in force (`--flood-rate`, `--flood-burst`, `--ct-port-quota`).
    pub limits: LimitsView,
}

/// The per-port limits written to `df_limits_v1` (0 = off).
#[derive(Clone, Debug, Default, Serialize)]
pub struct LimitsView {
    pub flood_rate: u32,
    pub flood_burst: u32,
    pub ct_port_quota: u32,
}

/// Conntrack entries one tap holds, per origin direction (for /state and the metrics).
#[derive(Clone, Debug, Serialize)]
pub struct CtPortUse {
    pub ifindex: u32,
    pub tap: String,
    pub lport: String,
    /// Flows the port opened (counted against its egress quota).
    pub egress: u64,
    /// Flows opened toward the port.
    pub ingress: u64,
}

/// Top users shown in the metrics (a bounded number of series, whatever the ports).
pub const CT_TOP_PORTS: usize = 5;
/// Share of the quota from which a port counts as near it.
const CT_NEAR_QUOTA: f64 = 0.8;

/// Every tap's conntrack use, largest first (its larger origin, then ifindex).
fn ct_port_use(shared: &Shared, view: &View) -> Vec<CtPortUse> {
    let mut rows: Vec<CtPortUse> = shared
        .ct
        .port_use()
        .into_iter()
        .map(|(ifindex, [egress, ingress])| {
            let tap = view.taps.iter().find(|t| t.ifindex == ifindex);
            CtPortUse {
                ifindex,
                tap: tap.map(|t| t.ifname.clone()).unwrap_or_default(),
                lport: tap.and_then(|t| t.lport.clone()).unwrap_or_default(),
                egress,
                ingress,
            }
        })
        .collect();
    rows.sort_by_key(|r| (std::cmp::Reverse(r.egress.max(r.ingress)), r.ifindex));
    rows
}

/// Security-group state of this chassis (for /state and the gauges).
#[derive(Clone, Debug, Default, Serialize)]
pub struct SgView {
    /// `CFG_F_SECURITY_GROUPS` is set in the datapath.
    pub enabled: bool,
    /// `ChassisConfig::policy_gen` last written.
    pub policy_gen: u32,
    /// Distinct identities (sets of remote groups and prefixes) in the maps.
    pub identities: usize,
    /// Local ports with port security: their groups and entry counts.
    pub ports: Arc<Vec<SgPortView>>,
}

/// Everything the HTTP server and the tasks share.
pub struct Shared {
    pub chassis: String,
    pub hook: Hook,
    /// The first full sync has been applied to the maps.
    pub synced: AtomicBool,
    pub etcd_connected: AtomicBool,
    pub etcd_revision: AtomicI64,
    pub sync_total: AtomicU64,
    pub map_write_errors: AtomicU64,
    /// `CFG_F_FORWARDING` is set in the datapath.
    pub forwarding_enabled: AtomicBool,
    /// Times a network's flood list had to be cut to FLOOD_MAX.
    pub flood_overflow_total: AtomicU64,
    /// Programs of this project on our devices that our pins did not hold, taken over or
    /// detached (`datapath::links::Foreign`).
    pub foreign_programs_replaced_total: AtomicU64,
    invalid: Mutex<BTreeMap<&'static str, u64>>,
    pub view: Mutex<View>,
    pub stats: Mutex<StatsMaps>,
    pub garp: Mutex<GarpTable>,
    /// Between the controller and the conntrack collector, with its counters.
    pub ct: Arc<CtShared>,
    /// Detection way (claims, dampening, probes).
    pub detect: crate::activeport::Stats,
}

impl Shared {
    pub fn new(chassis: String, hook: Hook, stats: StatsMaps) -> Self {
        Shared {
            chassis,
            hook,
            synced: AtomicBool::new(false),
            etcd_connected: AtomicBool::new(false),
            etcd_revision: AtomicI64::new(0),
            sync_total: AtomicU64::new(0),
            map_write_errors: AtomicU64::new(0),
            forwarding_enabled: AtomicBool::new(false),
            flood_overflow_total: AtomicU64::new(0),
            foreign_programs_replaced_total: AtomicU64::new(0),
            invalid: Mutex::new(BTreeMap::new()),
            view: Mutex::new(View::default()),
            stats: Mutex::new(stats),
            garp: Mutex::new(GarpTable::default()),
            ct: Arc::new(CtShared::default()),
            detect: crate::activeport::Stats::default(),
        }
    }

    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self::new("test".into(), Hook::Tc, StatsMaps::default())
    }

    pub fn count_invalid(&self, kind: Kind) {
        *self
            .invalid
            .lock()
            .expect("lock")
            .entry(kind.segment())
            .or_default() += 1;
    }

    /// [`Shared::count_invalid`] for records that are not an NB [`Kind`] (`activeport`).
    pub fn count_invalid_named(&self, segment: &'static str) {
        *self
            .invalid
            .lock()
            .expect("lock")
            .entry(segment)
            .or_default() += 1;
    }

    pub fn invalid_count(&self, kind: Kind) -> u64 {
        self.invalid
            .lock()
            .expect("lock")
            .get(kind.segment())
            .copied()
            .unwrap_or(0)
    }

    /// (ifname, lport id) of a tap, "" when unknown.
    pub fn port_of(&self, ifindex: u32) -> (String, String) {
        let view = self.view.lock().expect("lock");
        view.taps
            .iter()
            .find(|t| t.ifindex == ifindex)
            .map(|t| (t.ifname.clone(), t.lport.clone().unwrap_or_default()))
            .unwrap_or_default()
    }
}

/// Prometheus text exposition of everything.
pub fn render(shared: &Shared) -> String {
    let mut o = String::with_capacity(16 * 1024);
    let (counters, garp_rate) = {
        let stats = shared.stats.lock().expect("lock");
        (stats.read_stats(), stats.garp_rate_entries())
    };
    let get = |dir, stat| {
        counters
            .get(stat_index(dir, stat) as usize)
            .copied()
            .unwrap_or(0)
    };

    o.push_str("# HELP dragonflow_datapath_packets_total Frames judged by the datapath, by direction, verdict and drop reason or pass path (summed over CPUs).\n");
    o.push_str("# TYPE dragonflow_datapath_packets_total counter\n");
    for dir in DIRECTIONS {
        for r in DropReason::ALL {
            let _ = writeln!(
                o,
                "dragonflow_datapath_packets_total{{direction=\"{}\",verdict=\"drop\",reason=\"{}\"}} {}",
                dir.name(),
                r.name(),
                get(dir, Stat::Drop(*r))
            );
        }
        for p in PassPath::ALL {
            let _ = writeln!(
                o,
                "dragonflow_datapath_packets_total{{direction=\"{}\",verdict=\"pass\",path=\"{}\"}} {}",
                dir.name(),
                p.name(),
                get(dir, Stat::Pass(*p))
            );
        }
    }
    o.push_str("# HELP dragonflow_datapath_events_total Datapath side counters by the direction that counted them: GARP events (sent, rate limited, lost) and security-group/conntrack activity (from_vm = egress judging, to_vm = ingress judging).\n");
    o.push_str("# TYPE dragonflow_datapath_events_total counter\n");
    for dir in DIRECTIONS {
        for e in EventStat::ALL {
            let _ = writeln!(
                o,
                "dragonflow_datapath_events_total{{direction=\"{}\",event=\"{}\"}} {}",
                dir.name(),
                e.name(),
                get(dir, Stat::Event(*e))
            );
        }
    }

    let view = shared.view.lock().expect("lock").clone();
    o.push_str("# HELP dragonflow_map_entries Entries in each pinned map.\n# TYPE dragonflow_map_entries gauge\n");
    for (name, n) in &view.entries {
        let _ = writeln!(o, "dragonflow_map_entries{{map=\"{name}\"}} {n}");
    }
    if let Some(n) = garp_rate {
        let _ = writeln!(
            o,
            "dragonflow_map_entries{{map=\"{}\"}} {n}",
            names::GARP_RATE
        );
    }
    // Counted by the conntrack collector's last scan.
    let _ = writeln!(
        o,
        "dragonflow_map_entries{{map=\"{}\"}} {}",
        names::CT,
        shared.ct.entries.load(Ordering::Relaxed)
    );
    o.push_str("# HELP dragonflow_map_capacity Capacity (max_entries) of each pinned map (as the kernel has it for the maps the agent fills: --map-capacity, or the size of a map adopted from a previous agent).\n# TYPE dragonflow_map_capacity gauge\n");
    for name in names::ALL {
        if let Some(c) = view.capacity.get(name).copied().or(names::capacity(name)) {
            let _ = writeln!(o, "dragonflow_map_capacity{{map=\"{name}\"}} {c}");
        }
    }
    o.push_str("# HELP dragonflow_map_needed_entries Entries the northbound state needs in each map the agent fills (more than dragonflow_map_capacity: see dragonflow_map_overflow).\n# TYPE dragonflow_map_needed_entries gauge\n");
    for (name, n) in &view.needed {
        let _ = writeln!(o, "dragonflow_map_needed_entries{{map=\"{name}\"}} {n}");
    }
    o.push_str("# HELP dragonflow_map_overflow 1 while a map cannot hold what is needed (the agent keeps the entries that are safest to keep; /healthz is degraded).\n# TYPE dragonflow_map_overflow gauge\n");
    for name in view.needed.keys() {
        let over = view.map_overflow.iter().any(|m| m.map == *name);
        let _ = writeln!(
            o,
            "dragonflow_map_overflow{{map=\"{name}\"}} {}",
            u8::from(over)
        );
    }

    let gauge = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    };
    gauge(
        &mut o,
        "dragonflow_etcd_connected",
        "1 while the etcd session (lease, watch) is up.",
        shared.etcd_connected.load(Ordering::Relaxed) as u64,
    );
    gauge(
        &mut o,
        "dragonflow_etcd_revision",
        "etcd revision the datapath maps reflect (applied after the write).",
        shared.etcd_revision.load(Ordering::Relaxed).max(0) as u64,
    );
    gauge(
        &mut o,
        "dragonflow_synced",
        "1 once the first full sync has been applied to the maps.",
        shared.synced.load(Ordering::Relaxed) as u64,
    );
    gauge(
        &mut o,
        "dragonflow_forwarding_enabled",
        "1 once the datapath switches and routes itself (forwarding maps complete).",
        shared.forwarding_enabled.load(Ordering::Relaxed) as u64,
    );
    gauge(
        &mut o,
        "dragonflow_security_groups_enabled",
        "1 while security groups are enforced (CFG_F_SECURITY_GROUPS set, rules written).",
        view.security_groups.enabled as u64,
    );
    gauge(
        &mut o,
        "dragonflow_sg_policy_gen",
        "Policy generation: bumped after every rule/membership change written to the maps.",
        u64::from(view.security_groups.policy_gen),
    );
    gauge(
        &mut o,
        "dragonflow_sg_identities",
        "Distinct remote identities (sets of remote groups and prefixes) in the maps.",
        view.security_groups.identities as u64,
    );
    gauge(
        &mut o,
        "dragonflow_ct_entries",
        "Conntrack entries at the last garbage collection.",
        shared.ct.entries.load(Ordering::Relaxed),
    );
    render_limits(&mut o, shared, &view);
    o.push_str("# HELP dragonflow_ct_gc_deleted_total Conntrack entries removed by the agent, by reason (expired: idle past the state's timeout; port_gone: the tap lost its port).\n");
    o.push_str("# TYPE dragonflow_ct_gc_deleted_total counter\n");
    for (reason, v) in [
        ("expired", &shared.ct.deleted_expired),
        ("port_gone", &shared.ct.deleted_port_gone),
    ] {
        let _ = writeln!(
            o,
            "dragonflow_ct_gc_deleted_total{{reason=\"{reason}\"}} {}",
            v.load(Ordering::Relaxed)
        );
    }
    gauge(
        &mut o,
        "dragonflow_aap_mode_disagreements",
        "Networks whose live chassis would forward shared allowed-address-pair addresses with different AAP modes (no lswitch override); see the log and /state.",
        view.networks
            .iter()
            .filter(|n| !n.aap_mode_disagreement.is_empty())
            .count() as u64,
    );
    o.push_str("# HELP dragonflow_aap_shared_addresses Allowed-address-pair IPs and MACs several ports of a network list, by how this chassis forwards them (broadcast: to every holder; detection: to the active port).\n# TYPE dragonflow_aap_shared_addresses gauge\n");
    for way in [crate::nb::AapMode::Broadcast, crate::nb::AapMode::Detection] {
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
            let _ = writeln!(
                o,
                "dragonflow_aap_shared_addresses{{way=\"{}\",kind=\"{kind}\"}} {n}",
                crate::forwarding::mode_name(way)
            );
        }
    }
    gauge(
        &mut o,
        "dragonflow_remote_chassis",
        "Live chassis (records in etcd) other than this one that VXLAN can reach.",
        view.remote_chassis.len() as u64,
    );
    gauge(
        &mut o,
        "dragonflow_tunnel_up",
        "1 while the VXLAN device exists and is usable (0 also with --no-tunnel).",
        view.tunnel
            .as_ref()
            .is_some_and(|t| t.ifindex != 0 && t.error.is_none()) as u64,
    );
    gauge(
        &mut o,
        "dragonflow_local_ports",
        "Ports bound to this chassis.",
        view.ports.len() as u64,
    );

    o.push_str("# HELP dragonflow_ports Local ports by state.\n# TYPE dragonflow_ports gauge\n");
    for state in ["programmed", "no_tap", "unknown_lswitch", "tap_conflict"] {
        let n = view.ports.iter().filter(|p| p.state == state).count();
        let _ = writeln!(o, "dragonflow_ports{{state=\"{state}\"}} {n}");
    }
    o.push_str(
        "# HELP dragonflow_taps Managed tap devices by state.\n# TYPE dragonflow_taps gauge\n",
    );
    for state in TapState::ALL {
        let n = view.taps.iter().filter(|t| t.state == state).count();
        let _ = writeln!(o, "dragonflow_taps{{state=\"{}\"}} {n}", state.name());
    }

    o.push_str("# HELP dragonflow_nb_invalid_records_total Northbound records rejected (last good version kept).\n");
    o.push_str("# TYPE dragonflow_nb_invalid_records_total counter\n");
    {
        let invalid = shared.invalid.lock().expect("lock");
        let named = Kind::ALL
            .iter()
            .map(|k| k.segment())
            .chain([crate::nb::ACTIVE_PORT_SEGMENT]);
        for kind in named {
            let v = invalid.get(kind).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "dragonflow_nb_invalid_records_total{{kind=\"{kind}\"}} {v}"
            );
        }
    }
    let counter = |o: &mut String, name: &str, help: &str, v: u64| {
        let _ = write!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}\n"
        );
    };
    counter(
        &mut o,
        "dragonflow_sync_total",
        "Reconciliations that wrote the maps.",
        shared.sync_total.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "dragonflow_flood_overflow_total",
        "Times a network's flood list exceeded FLOOD_MAX destinations and was cut.",
        shared.flood_overflow_total.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "dragonflow_foreign_programs_replaced_total",
        "Programs of this project found on a device without this agent's pins (another \
         --bpffs, an older layout) and taken over or detached.",
        shared
            .foreign_programs_replaced_total
            .load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "dragonflow_map_write_errors_total",
        "Failed map updates (retried on the next reconciliation).",
        shared.map_write_errors.load(Ordering::Relaxed),
    );
    shared.detect.render(&mut o);
    o.push_str("# HELP dragonflow_garp_events_total GARP events received from the datapath, by ARP/ND op.\n");
    o.push_str("# TYPE dragonflow_garp_events_total counter\n");
    {
        let g = shared.garp.lock().expect("lock");
        for op in garp::OPS {
            let _ = writeln!(
                o,
                "dragonflow_garp_events_total{{op=\"{op}\"}} {}",
                g.by_op.get(op).copied().unwrap_or(0)
            );
        }
    }
    o
}

/// The limits in force, the top conntrack users (at most [`CT_TOP_PORTS`] series: labels
/// stay bounded however many ports there are) and how many are near their quota.
fn render_limits(o: &mut String, shared: &Shared, view: &View) {
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
        let _ = write!(o, "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {v}\n");
    }
    let rows = ct_port_use(shared, view);
    o.push_str("# HELP dragonflow_ct_port_top_entries Conntrack entries of the ports holding the most (rank 1 = most), per origin direction.\n# TYPE dragonflow_ct_port_top_entries gauge\n");
    for (rank, r) in rows.iter().take(CT_TOP_PORTS).enumerate() {
        for (origin, n) in [("egress", r.egress), ("ingress", r.ingress)] {
            let _ = writeln!(
                o,
                "dragonflow_ct_port_top_entries{{rank=\"{}\",lport=\"{}\",tap=\"{}\",origin=\"{origin}\"}} {n}",
                rank + 1,
                r.lport,
                r.tap
            );
        }
    }
    o.push_str("# HELP dragonflow_ct_ports_near_quota Ports holding at least this share of their conntrack quota in an origin direction (share=\"1\": at it, their new flows drop as ct_port_quota).\n# TYPE dragonflow_ct_ports_near_quota gauge\n");
    let quota = u64::from(l.ct_port_quota);
    for (label, share) in [("0.8", CT_NEAR_QUOTA), ("1", 1.0)] {
        let n = rows
            .iter()
            .filter(|r| quota > 0 && r.egress.max(r.ingress) as f64 >= share * quota as f64)
            .count();
        let _ = writeln!(o, "dragonflow_ct_ports_near_quota{{share=\"{label}\"}} {n}");
    }
}

#[derive(Serialize)]
struct StateDoc<'a> {
    chassis: &'a str,
    hook: &'static str,
    synced: bool,
    etcd_connected: bool,
    etcd_revision: i64,
    #[serde(flatten)]
    view: &'a View,
    /// Conntrack entries per tap and origin direction, largest first.
    ct_port_use: Vec<CtPortUse>,
}

pub fn state_json(shared: &Shared) -> String {
    let view = shared.view.lock().expect("lock").clone();
    let doc = StateDoc {
        chassis: &shared.chassis,
        hook: shared.hook.as_str(),
        synced: shared.synced.load(Ordering::Relaxed),
        etcd_connected: shared.etcd_connected.load(Ordering::Relaxed),
        etcd_revision: shared.etcd_revision.load(Ordering::Relaxed),
        ct_port_use: ct_port_use(shared, &view),
        view: &view,
    };
    serde_json::to_string_pretty(&doc).expect("serialisable")
}

/// Serves until the process ends.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) =
                        time::timeout(Duration::from_secs(10), handle(stream, &shared)).await
                    {
                        debug!(%peer, "http: {e}");
                    }
                });
            }
            Err(e) => {
                debug!("http accept: {e}");
                time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn handle(mut stream: TcpStream, shared: &Shared) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    // Read the request head (bounded); the body, if any, is ignored.
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > 16 * 1024 {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let mut parts = head.lines().next().unwrap_or("").split_whitespace();
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    let (status, ctype, body) = route(method, path, shared);
    let reason = match status {
        200 => "OK",
        404 => "Not Found",
        405 => "Method Not Allowed",
        503 => "Service Unavailable",
        _ => "",
    };
    let resp = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    if method != "HEAD" {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

pub fn route(method: &str, path: &str, shared: &Shared) -> (u16, &'static str, String) {
    const TEXT: &str = "text/plain; charset=utf-8";
    const PROM: &str = "text/plain; version=0.0.4; charset=utf-8";
    const JSON: &str = "application/json";
    if method != "GET" && method != "HEAD" {
        return (405, TEXT, "only GET\n".into());
    }
    match path {
        "/metrics" => (200, PROM, render(shared)),
        "/healthz" => {
            let overflow = shared.view.lock().expect("lock").map_overflow.clone();
            if !shared.synced.load(Ordering::Relaxed) {
                (503, TEXT, "not synced yet\n".into())
            } else if !overflow.is_empty() {
                // Not 200: some ports are left fail closed (or lose forwarding entries)
                // until the map is made larger, and a restart cannot fix that. Used as
                // a readiness probe, this holds a rolling update at this node; it must
                // not be a liveness probe (docs/deploy.md).
                let mut body = String::new();
                for m in &overflow {
                    let _ = writeln!(
                        body,
                        "degraded: {} needs {} entries, capacity {}",
                        m.map, m.needed, m.capacity
                    );
                }
                if !shared.etcd_connected.load(Ordering::Relaxed) {
                    body.push_str("degraded: etcd unreachable, enforcing the last good state\n");
                }
                (503, TEXT, body)
            } else if shared.etcd_connected.load(Ordering::Relaxed) {
                (200, TEXT, "ok\n".into())
            } else {
                // Still 200: the datapath is enforcing the last good state and must not be
                // restarted for an etcd outage; the body (and dragonflow_etcd_connected) says
                // it is not taking updates.
                (
                    200,
                    TEXT,
                    "degraded: etcd unreachable, enforcing the last good state\n".into(),
                )
            }
        }
        "/garp" => {
            let rows = shared.garp.lock().expect("lock").rows();
            (
                200,
                JSON,
                serde_json::to_string(&rows).expect("serialisable"),
            )
        }
        "/state" => (200, JSON, state_json(shared)),
        _ => (
            404,
            TEXT,
            "try /metrics, /healthz, /garp or /state\n".into(),
        ),
    }
}

/// Binds the HTTP listener (before anything else, so a port clash fails fast).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shared-address gauges come from the networks the controller last computed.
    #[test]
    fn aap_gauges() {
        use crate::{forwarding::SharedView, nb::AapMode};
        let s = Shared::for_tests();
        let shared = |kind, way| SharedView {
            address: String::new(),
            kind,
            holders: vec![],
            way,
            active_port: None,
            delivered_to: vec![],
        };
        s.view.lock().expect("lock").networks = vec![
            Arc::new(NetworkView {
                aap_mode_disagreement: BTreeMap::from([
                    ("hv1".to_string(), AapMode::Broadcast),
                    ("hv2".to_string(), AapMode::Detection),
                ]),
                shared: vec![
                    shared("ip", AapMode::Broadcast),
                    shared("ip", AapMode::Broadcast),
                    shared("mac", AapMode::Broadcast),
                ],
                ..Default::default()
            }),
            Arc::new(NetworkView {
                shared: vec![shared("ip", AapMode::Detection)],
                ..Default::default()
            }),
        ];
        let text = render(&s);
        for line in [
            "dragonflow_aap_mode_disagreements 1",
            "dragonflow_aap_shared_addresses{way=\"broadcast\",kind=\"ip\"} 2",
            "dragonflow_aap_shared_addresses{way=\"broadcast\",kind=\"mac\"} 1",
            "dragonflow_aap_shared_addresses{way=\"detection\",kind=\"ip\"} 1",
            "dragonflow_aap_shared_addresses{way=\"detection\",kind=\"mac\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
    }

    #[test]
    fn map_overflow_in_healthz_metrics_and_state() {
        let s = Shared::for_tests();
        s.synced.store(true, Ordering::Relaxed);
        s.etcd_connected.store(true, Ordering::Relaxed);
        {
            let mut v = s.view.lock().unwrap();
            v.capacity.insert(names::POLICY, 1000);
            v.needed.insert(names::POLICY, 1500);
            v.needed.insert(names::ADDRS, 7);
            v.map_overflow.push(MapOverflow {
                map: names::POLICY,
                needed: 1500,
                capacity: 1000,
                kept: 990,
            });
        }
        assert_eq!(
            route("GET", "/healthz", &s),
            (
                503,
                "text/plain; charset=utf-8",
                "degraded: df_policy_v1 needs 1500 entries, capacity 1000\n".into()
            )
        );
        let text = render(&s);
        for line in [
            "dragonflow_map_capacity{map=\"df_policy_v1\"} 1000",
            "dragonflow_map_capacity{map=\"df_addrs_v2\"} 262144",
            "dragonflow_map_needed_entries{map=\"df_policy_v1\"} 1500",
            "dragonflow_map_overflow{map=\"df_policy_v1\"} 1",
            "dragonflow_map_overflow{map=\"df_addrs_v2\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}");
        }
        let state: serde_json::Value = serde_json::from_str(&route("GET", "/state", &s).2).unwrap();
        assert_eq!(state["map_overflow"][0]["needed"], 1500);
        s.view.lock().unwrap().map_overflow.clear();
        assert_eq!(route("GET", "/healthz", &s).0, 200);
    }

    #[test]
    fn metrics_have_every_reason_and_healthz_waits_for_sync() {
        let s = Shared::for_tests();
        let text = render(&s);
        for r in DropReason::ALL {
            let line = format!(
                "dragonflow_datapath_packets_total{{direction=\"from_vm\",verdict=\"drop\",reason=\"{}\"}} 0",
                r.name()
            );
            assert!(text.contains(&line), "{line}");
        }
        assert!(text.contains("dragonflow_datapath_packets_total{direction=\"from_vm\",verdict=\"pass\",path=\"ipv4\"} 0"));
        assert!(text.contains(
            "dragonflow_datapath_events_total{direction=\"from_vm\",event=\"garp_sent\"} 0"
        ));
        assert!(text.contains("dragonflow_etcd_connected 0"));
        assert!(text.contains("dragonflow_nb_invalid_records_total{kind=\"lport\"} 0"));
        assert!(text.contains("dragonflow_taps{state=\"fail_closed\"} 0"));
        assert!(text.contains("dragonflow_map_capacity{map=\"df_addrs_v2\"} 262144"));
        assert!(text.contains("dragonflow_map_capacity{map=\"df_l2_v1\"} 262144"));
        assert!(text.contains("dragonflow_forwarding_enabled 0"));
        assert!(text.contains("dragonflow_security_groups_enabled 0"));
        assert!(text.contains("dragonflow_ct_entries 0"));
        assert!(text.contains("dragonflow_ct_gc_deleted_total{reason=\"port_gone\"} 0"));
        assert!(text.contains("dragonflow_map_entries{map=\"df_ct_v1\"} 0"));
        assert!(text.contains("dragonflow_map_capacity{map=\"df_policy_v1\"} 262144"));
        assert!(text.contains("dragonflow_nb_invalid_records_total{kind=\"secgroup\"} 0"));
        assert!(text.contains(
            "dragonflow_datapath_packets_total{direction=\"to_vm\",verdict=\"drop\",reason=\"sg_denied\"} 0"
        ));
        assert!(
            text.contains(
                "dragonflow_datapath_events_total{direction=\"to_vm\",event=\"ct_new\"} 0"
            )
        );
        assert!(text.contains("dragonflow_remote_chassis 0"));
        assert!(text.contains("dragonflow_flood_overflow_total 0"));
        assert!(text.contains("dragonflow_ct_port_quota 0"));
        assert!(text.contains("dragonflow_ct_ports_near_quota{share=\"0.8\"} 0"));
        assert!(text.contains(
            "dragonflow_datapath_packets_total{direction=\"from_vm\",verdict=\"drop\",reason=\"ct_port_quota\"} 0"
        ));
        assert_eq!(route("GET", "/healthz", &s).0, 503);
        s.synced.store(true, Ordering::Relaxed);
        assert_eq!(route("GET", "/healthz", &s).0, 200);
        assert!(
            route("GET", "/healthz", &s)
                .2
                .starts_with("degraded: etcd unreachable")
        );
        s.etcd_connected.store(true, Ordering::Relaxed);
        assert_eq!(route("GET", "/healthz", &s).2, "ok\n");
        assert_eq!(route("GET", "/garp", &s).2, "[]");
        assert_eq!(route("GET", "/nope", &s).0, 404);
        let state: serde_json::Value = serde_json::from_str(&route("GET", "/state", &s).2).unwrap();
        assert_eq!(state["chassis"], "test");
        assert!(state["taps"].is_array() && state["ports"].is_array());
        assert!(state["networks"].is_array() && state["remote_chassis"].is_array());
        assert!(state["ct_port_use"].is_array() && state["limits"]["ct_port_quota"] == 0);
    }
}
