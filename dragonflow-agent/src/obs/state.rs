//! The state the agent's tasks publish, read by `/state`, `/healthz` and the metrics.
//!
//! The controller publishes what it last computed ([`View`]) and the taps it manages
//! ([`Taps`], which the GARP reader and the detection way also use to find a tap's
//! port); the etcd session its connection and revision; the conntrack collector its
//! counters through [`CtReport`].

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, RwLock,
        atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering},
    },
};

use serde::Serialize;

use crate::{
    config::Hook,
    datapath::{StatsMaps, capacity::MapOverflow},
    desired::{
        forwarding::NetworkView,
        reconcile::{LocalPort, PortState},
        secgroups::SgPortView,
    },
    nb::{Kind, cache::InvalidCounter},
    obs::{garp::GarpTable, monitor::Hub},
};

/// How a tap is doing.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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

/// The taps the controller manages, as it last saw them: the one place that says which
/// port a tap carries (`/state`, the metrics, the GARP reader, the detection way).
#[derive(Debug, Default)]
pub struct Taps {
    taps: RwLock<Vec<TapView>>,
}

impl Taps {
    /// Replaces the table (the controller, after each scan).
    pub fn publish(&self, taps: Vec<TapView>) {
        *self.taps.write().expect("lock") = taps;
    }

    pub fn all(&self) -> Vec<TapView> {
        self.taps.read().expect("lock").clone()
    }

    /// (ifname, lport id) of the tap with this ifindex, "" for what is unknown.
    pub fn port_of(&self, ifindex: u32) -> (String, String) {
        self.taps
            .read()
            .expect("lock")
            .iter()
            .find(|t| t.ifindex == ifindex)
            .map(|t| (t.ifname.clone(), t.lport.clone().unwrap_or_default()))
            .unwrap_or_default()
    }

    /// lport id → ifindex of every tap that carries a port.
    pub fn by_lport(&self) -> BTreeMap<String, u32> {
        self.taps
            .read()
            .expect("lock")
            .iter()
            .filter_map(|t| Some((t.lport.clone()?, t.ifindex)))
            .collect()
    }
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
                PortState::Programmed { ifindex } => Some(ifindex),
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

/// What the conntrack collector reports (implemented by the collector's shared state;
/// read at scrape time, so the per-port use is as fresh as the datapath's counters).
pub trait CtReport: Send + Sync {
    /// Entries counted by the last scan.
    fn entries(&self) -> u64;
    /// Entries the agent deleted because they expired, and because their tap lost its
    /// port.
    fn deleted(&self) -> (u64, u64);
    /// Entries each tap holds now, per origin slot (egress, ingress).
    fn port_use(&self) -> BTreeMap<u32, [u64; 2]>;
}

/// Unit tests have no conntrack collector: nothing counted.
#[cfg(test)]
struct NoCt;

#[cfg(test)]
impl CtReport for NoCt {
    fn entries(&self) -> u64 {
        0
    }
    fn deleted(&self) -> (u64, u64) {
        (0, 0)
    }
    fn port_use(&self) -> BTreeMap<u32, [u64; 2]> {
        BTreeMap::new()
    }
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

/// One port's counters from the datapath (`df_port_stats_v1`), with its tap and
/// conntrack use: `/state`'s `port_stats`, `dfctl port status`.
#[derive(Clone, Debug, Serialize)]
pub struct PortStatsView {
    pub ifindex: u32,
    pub tap: String,
    pub lport: String,
    /// `TapState` name, "" when the controller does not know the tap (any more).
    pub tap_state: &'static str,
    /// Frames the VM sent, as the kernel counts them on its tap (`rx_packets`; `None`
    /// when unreadable). The datapath does not count passes per port (it would cost the
    /// fast path a lookup, docs/BENCHMARKS.md).
    pub frames_from_vm: Option<u64>,
    /// `frames_from_vm` minus the port's `from_vm` drops: the frames it let through.
    pub passes_from_vm: Option<u64>,
    /// Drops by direction and reason (only reasons with drops).
    pub drops: BTreeMap<&'static str, BTreeMap<&'static str, u64>>,
    pub drops_total: u64,
    /// Conntrack entries in use, by origin direction.
    pub ct_egress: u64,
    pub ct_ingress: u64,
}

/// Everything the HTTP endpoints and the tasks share.
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
    pub taps: Taps,
    /// The per-CPU datapath counters, read at scrape time.
    pub stats: Mutex<StatsMaps>,
    pub garp: Mutex<GarpTable>,
    pub ct: Arc<dyn CtReport>,
    /// The live event stream (`GET /monitor`).
    pub monitor: Hub,
    /// Ports named in `dragonflow_port_drops_top` (`--port-drops-top-k`).
    pub port_drops_top_k: AtomicUsize,
    /// `POST /trace`, once the datapath is loaded (`datapath::trace`).
    pub tracer: std::sync::OnceLock<Arc<crate::datapath::trace::Tracer>>,
}

/// The cache of NB objects counts the records it refuses here.
impl InvalidCounter for Shared {
    fn count_invalid(&self, kind: Kind) {
        Shared::count_invalid(self, kind);
    }
    fn count_invalid_named(&self, segment: &'static str) {
        Shared::count_invalid_named(self, segment);
    }
}

impl Shared {
    pub fn new(chassis: String, hook: Hook, stats: StatsMaps, ct: Arc<dyn CtReport>) -> Self {
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
            taps: Taps::default(),
            stats: Mutex::new(stats),
            garp: Mutex::new(GarpTable::default()),
            ct,
            monitor: Hub::default(),
            port_drops_top_k: AtomicUsize::new(10),
            tracer: std::sync::OnceLock::new(),
        }
    }

    /// No datapath, no conntrack collector.
    #[cfg(test)]
    pub fn for_tests() -> Self {
        Self::new(
            "test".into(),
            Hook::Tc,
            StatsMaps::default(),
            Arc::new(NoCt),
        )
    }

    pub fn count_invalid(&self, kind: Kind) {
        self.count_invalid_named(kind.segment());
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
        self.invalid_named(kind.segment())
    }

    pub fn invalid_named(&self, segment: &str) -> u64 {
        self.invalid
            .lock()
            .expect("lock")
            .get(segment)
            .copied()
            .unwrap_or(0)
    }

    /// Every tap's conntrack use, largest first (its larger origin, then ifindex).
    pub fn ct_port_use(&self) -> Vec<CtPortUse> {
        let mut rows: Vec<CtPortUse> = self
            .ct
            .port_use()
            .into_iter()
            .map(|(ifindex, [egress, ingress])| {
                let (tap, lport) = self.taps.port_of(ifindex);
                CtPortUse {
                    ifindex,
                    tap,
                    lport,
                    egress,
                    ingress,
                }
            })
            .collect();
        rows.sort_by_key(|r| (std::cmp::Reverse(r.egress.max(r.ingress)), r.ifindex));
        rows
    }

    /// Every port's counters (taps with an entry in `df_port_stats_v1`), by ifindex.
    pub fn port_stats(&self) -> Vec<PortStatsView> {
        use dragonflow_common::{
            event::PORT_STATS_PER_DIR,
            verdict::{DIRECTIONS, Direction, DropReason},
        };
        let raw = self.stats.lock().expect("lock").read_port_stats();
        let taps = self.taps.all();
        let ct = self.ct.port_use();
        raw.into_iter()
            .map(|(ifindex, c)| {
                let tap = taps.iter().find(|t| t.ifindex == ifindex);
                let mut drops = BTreeMap::new();
                let mut drops_total = 0;
                let mut drops_from_vm = 0;
                for d in DIRECTIONS {
                    let base = d as usize * PORT_STATS_PER_DIR;
                    let mut by: BTreeMap<&'static str, u64> = BTreeMap::new();
                    for r in DropReason::ALL {
                        let n = c.get(base + *r as usize).copied().unwrap_or(0);
                        if n > 0 {
                            by.insert(r.name(), n);
                            drops_total += n;
                            if d == Direction::FromVm {
                                drops_from_vm += n;
                            }
                        }
                    }
                    drops.insert(d.name(), by);
                }
                let [ct_egress, ct_ingress] = ct.get(&ifindex).copied().unwrap_or([0, 0]);
                let ifname = tap.map(|t| t.ifname.clone()).unwrap_or_default();
                let frames_from_vm = crate::datapath::sys::rx_packets(&ifname);
                PortStatsView {
                    ifindex,
                    tap: ifname,
                    frames_from_vm,
                    passes_from_vm: frames_from_vm.map(|f| f.saturating_sub(drops_from_vm)),
                    lport: tap.and_then(|t| t.lport.clone()).unwrap_or_default(),
                    tap_state: tap.map_or("", |t| t.state.name()),
                    drops,
                    drops_total,
                    ct_egress,
                    ct_ingress,
                }
            })
            .collect()
    }

    /// The `/state` document.
    pub fn state_json(&self) -> String {
        let view = self.view.lock().expect("lock").clone();
        let doc = StateDoc {
            chassis: &self.chassis,
            hook: self.hook.as_str(),
            synced: self.synced.load(Ordering::Relaxed),
            etcd_connected: self.etcd_connected.load(Ordering::Relaxed),
            etcd_revision: self.etcd_revision.load(Ordering::Relaxed),
            taps: self.taps.all(),
            ct_port_use: self.ct_port_use(),
            port_stats: self.port_stats(),
            view: &view,
        };
        serde_json::to_string_pretty(&doc).expect("serialisable")
    }
}

#[derive(Serialize)]
struct StateDoc<'a> {
    chassis: &'a str,
    hook: &'static str,
    synced: bool,
    etcd_connected: bool,
    etcd_revision: i64,
    taps: Vec<TapView>,
    #[serde(flatten)]
    view: &'a View,
    /// Conntrack entries per tap and origin direction, largest first.
    ct_port_use: Vec<CtPortUse>,
    /// Per-port counters of the datapath.
    port_stats: Vec<PortStatsView>,
}
