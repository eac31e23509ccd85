//! Typed access to the pinned maps: read everything back (adoption), write a diff.

use std::collections::BTreeMap;

use aya::{
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, PerCpuHashMap,
        ProgramArray,
    },
    programs::SchedClassifier,
};
use dragonflow_common::{
    addr::{AddrKey, AddrValue, MacKey},
    event::{GarpRateKey, PortStats},
    fwd::{
        ChassisConfig, FloodList, Group, GroupKey, L2Dest, L2Key, NeighKey, NeighValue, RouteDest,
        RouteKey, TunPeerKey, TunSrcKey,
    },
    limits::{CtCount, CtFreed, Limits},
    maps,
    port::PortConfig,
    sg::{CtKey, CtValue, IdentKey, PolicyKey, PolicyValue},
    verdict::STATS_LEN,
};
use tracing::{debug, error, info, warn};

use super::capacity::{self, Capacities, Fit, MapOverflow};
use crate::{desired::reconcile::MapEntries, report::Chain};

mod read;
mod write;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "map {name} has an unexpected type or layout (a pinned map of an older layout? its name must change with its layout)"
    )]
    Layout {
        name: &'static str,
        #[source]
        source: MapError,
    },
}

/// The maps the agent writes. Each is optional so that an incomplete object (during
/// development) degrades to warnings instead of a crash.
#[derive(Default)]
pub struct Maps {
    pub ports: Option<HashMap<MapData, u32, PortConfig>>,
    pub addrs: Option<HashMap<MapData, AddrKey, AddrValue>>,
    pub cidrs: Option<LpmTrie<MapData, AddrKey, AddrValue>>,
    pub macs: Option<HashMap<MapData, MacKey, u32>>,
    pub devmap: Option<DevMapHash<MapData>>,
    pub neigh: Option<HashMap<MapData, NeighKey, NeighValue>>,
    pub routes: Option<LpmTrie<MapData, RouteKey, RouteDest>>,
    pub l2: Option<HashMap<MapData, L2Key, L2Dest>>,
    pub flood: Option<HashMap<MapData, u32, FloodList>>,
    pub groups: Option<HashMap<MapData, GroupKey, Group>>,
    pub tun_peers: Option<HashMap<MapData, TunPeerKey, u32>>,
    pub tun_srcs: Option<HashMap<MapData, TunSrcKey, u32>>,
    /// Tail-call targets (not entries of the desired state: see [`Maps::link_tail_calls`]).
    pub progs: Option<ProgramArray<MapData>>,
    pub config: Option<Array<MapData, ChassisConfig>>,
    pub ident: Option<HashMap<MapData, IdentKey, u32>>,
    pub ident_lpm: Option<LpmTrie<MapData, IdentKey, u32>>,
    pub policy: Option<LpmTrie<MapData, PolicyKey, PolicyValue>>,
    /// The conntrack table: not part of the desired state (the datapath fills it); the
    /// controller hands it to the garbage collector (`conntrack.rs`).
    pub ct: Option<HashMap<MapData, CtKey, CtValue>>,
    /// Per-port limits, written once at start ([`Maps::write_limits`]).
    pub limits: Option<Array<MapData, Limits>>,
    /// The per-port conntrack counters, handed to the collector with the table.
    pub ct_count: Option<HashMap<MapData, u32, CtCount>>,
    pub ct_freed: Option<HashMap<MapData, u32, CtFreed>>,
    /// Per-port counters: the agent makes an entry per managed tap and removes it when
    /// the tap goes ([`Maps::sync_port_stats`]); the datapath never inserts.
    pub port_stats: Option<PerCpuHashMap<MapData, u32, PortStats>>,
    /// Effective capacity of each map in `capacity::FILLED` (read from the kernel after
    /// loading: a map adopted from a previous agent keeps the size it was created with).
    /// A map missing here is not limited by [`Maps::fit`].
    pub capacity: Capacities,
    /// Maps over capacity at the last [`Maps::fit`] (what was last logged).
    overflow: BTreeMap<&'static str, MapOverflow>,
    /// Maps whose last write failed, with the error last logged.
    failing: BTreeMap<&'static str, String>,
}

/// The maps the metrics endpoint reads.
#[derive(Default)]
pub struct StatsMaps {
    pub stats: Option<PerCpuArray<MapData, u64>>,
    /// A second handle on `df_port_stats_v1` (the controller holds the writer's), read at
    /// scrape time.
    pub port_stats: Option<PerCpuHashMap<MapData, u32, PortStats>>,
    pub garp_rate: Option<HashMap<MapData, GarpRateKey, u64>>,
}

fn typed<T>(
    name: &'static str,
    map: Option<Map>,
    f: impl FnOnce(Map) -> Result<T, MapError>,
) -> Result<Option<T>, MapsError> {
    match map {
        None => {
            warn!(
                map = name,
                "map not in the eBPF object; the datapath is incomplete"
            );
            Ok(None)
        }
        Some(m) => f(m)
            .map(Some)
            .map_err(|source| MapsError::Layout { name, source }),
    }
}

impl Maps {
    /// Takes the agent's maps out of the loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Ok(Maps {
            ports: typed(maps::PORTS, ebpf.take_map(maps::PORTS), HashMap::try_from)?,
            addrs: typed(maps::ADDRS, ebpf.take_map(maps::ADDRS), HashMap::try_from)?,
            cidrs: typed(maps::CIDRS, ebpf.take_map(maps::CIDRS), LpmTrie::try_from)?,
            macs: typed(maps::MACS, ebpf.take_map(maps::MACS), HashMap::try_from)?,
            devmap: typed(
                maps::DEVMAP,
                ebpf.take_map(maps::DEVMAP),
                DevMapHash::try_from,
            )?,
            neigh: typed(maps::NEIGH, ebpf.take_map(maps::NEIGH), HashMap::try_from)?,
            routes: typed(maps::ROUTES, ebpf.take_map(maps::ROUTES), LpmTrie::try_from)?,
            l2: typed(maps::L2, ebpf.take_map(maps::L2), HashMap::try_from)?,
            flood: typed(maps::FLOOD, ebpf.take_map(maps::FLOOD), HashMap::try_from)?,
            groups: typed(maps::GROUPS, ebpf.take_map(maps::GROUPS), HashMap::try_from)?,
            tun_peers: typed(
                maps::TUN_PEERS,
                ebpf.take_map(maps::TUN_PEERS),
                HashMap::try_from,
            )?,
            tun_srcs: typed(
                maps::TUN_SRCS,
                ebpf.take_map(maps::TUN_SRCS),
                HashMap::try_from,
            )?,
            progs: typed(
                maps::PROGS,
                ebpf.take_map(maps::PROGS),
                ProgramArray::try_from,
            )?,
            config: typed(maps::CONFIG, ebpf.take_map(maps::CONFIG), Array::try_from)?,
            ident: typed(maps::IDENT, ebpf.take_map(maps::IDENT), HashMap::try_from)?,
            ident_lpm: typed(
                maps::IDENT_LPM,
                ebpf.take_map(maps::IDENT_LPM),
                LpmTrie::try_from,
            )?,
            policy: typed(maps::POLICY, ebpf.take_map(maps::POLICY), LpmTrie::try_from)?,
            ct: typed(maps::CT, ebpf.take_map(maps::CT), HashMap::try_from)?,
            limits: typed(maps::LIMITS, ebpf.take_map(maps::LIMITS), Array::try_from)?,
            ct_count: typed(
                maps::CT_COUNT,
                ebpf.take_map(maps::CT_COUNT),
                HashMap::try_from,
            )?,
            ct_freed: typed(
                maps::CT_FREED,
                ebpf.take_map(maps::CT_FREED),
                HashMap::try_from,
            )?,
            port_stats: typed(
                maps::PORT_STATS,
                ebpf.take_map(maps::PORT_STATS),
                PerCpuHashMap::try_from,
            )?,
            capacity: Capacities::new(),
            overflow: BTreeMap::new(),
            failing: BTreeMap::new(),
        })
    }

    /// Makes `df_port_stats_v1` hold an entry for exactly the taps in `taps` (their
    /// counters start at zero; an existing entry keeps its counts, so a restarted agent
    /// keeps them too).
    pub fn sync_port_stats(&mut self, taps: &std::collections::BTreeSet<u32>) {
        let Some(m) = self.port_stats.as_mut() else {
            return;
        };
        let have: Vec<u32> = m.keys().filter_map(Result::ok).collect();
        for k in &have {
            if !taps.contains(k)
                && let Err(e) = m.remove(k)
            {
                debug!(ifindex = k, "{}: {}", maps::PORT_STATS, Chain(&e));
            }
        }
        let Ok(ncpus) = aya::util::nr_cpus() else {
            return;
        };
        for &ifindex in taps {
            if have.contains(&ifindex) {
                continue;
            }
            let zeros = match aya::maps::PerCpuValues::try_from(vec![PortStats::default(); ncpus]) {
                Ok(v) => v,
                Err(e) => {
                    warn!("{}: {e}", maps::PORT_STATS);
                    return;
                }
            };
            // BPF_NOEXIST: never reset the counters of an entry made meanwhile.
            if let Err(e) = m.insert(ifindex, zeros, 1) {
                debug!(ifindex, "{}: {}", maps::PORT_STATS, Chain(&e));
            }
        }
    }

    /// Writes the per-port limits (`df_limits_v1[0]`); they apply from the next frame.
    pub fn write_limits(&mut self, limits: &Limits) -> Result<(), String> {
        let m = self
            .limits
            .as_mut()
            .ok_or_else(|| format!("map {} not in the eBPF object", maps::LIMITS))?;
        m.set(0, limits, 0)
            .map_err(|e| format!("cannot set {}[0]: {}", maps::LIMITS, Chain(&e)))
    }

    /// Loads the programs the pipeline tail-calls and puts them in `df_progs_v1` (the
    /// group program of the broadcast way at `PROG_AAP_GROUP`), replacing what a previous
    /// agent put there. Until this succeeds, a frame for the holders of a shared address
    /// is dropped as `redirect_failed`.
    pub fn link_tail_calls(&mut self, ebpf: &mut aya::Ebpf) -> Result<(), String> {
        let name = maps::progs::AAP_GROUP_TC;
        let array = self
            .progs
            .as_mut()
            .ok_or_else(|| format!("map {} not in the eBPF object", maps::PROGS))?;
        let prog: &mut SchedClassifier = ebpf
            .program_mut(name)
            .ok_or_else(|| format!("program {name} not in the eBPF object"))?
            .try_into()
            .map_err(|e| format!("program {name}: {}", Chain(&e)))?;
        if prog.fd().is_err() {
            prog.load()
                .map_err(|e| format!("cannot load {name}: {}", Chain(&e)))?;
        }
        let fd = prog
            .fd()
            .map_err(|e| format!("program {name}: {}", Chain(&e)))?;
        array.set(maps::PROG_AAP_GROUP, fd, 0).map_err(|e| {
            format!(
                "cannot set {}[{}]: {}",
                maps::PROGS,
                maps::PROG_AAP_GROUP,
                Chain(&e)
            )
        })
    }

    /// Cuts `desired` to what the maps can hold (`capacity::fit`, which documents what is
    /// kept) and logs the change of each map's overflow once: when it starts, when its
    /// need, capacity or kept count changes, and when it ends.
    pub fn fit(&mut self, desired: &mut MapEntries, actual: &MapEntries) -> Fit {
        let fit = capacity::fit(desired, actual, &self.capacity);
        let now: BTreeMap<&'static str, MapOverflow> =
            fit.overflow.iter().map(|o| (o.map, o.clone())).collect();
        for (map, o) in &now {
            if self.overflow.get(map) != Some(o) {
                error!(
                    map,
                    needed = o.needed,
                    capacity = o.capacity,
                    kept = o.kept,
                    ports_left_out = fit.ports_left_out.len(),
                    "map too small: {map} needs {} entries, capacity {}; only {} written \
                     (ports that do not fit whole stay fail closed; raise --map-capacity)",
                    o.needed,
                    o.capacity,
                    o.kept
                );
            }
        }
        for map in self.overflow.keys() {
            if !now.contains_key(map) {
                info!(map, "map no longer over capacity: every desired entry fits");
            }
        }
        self.overflow = now;
        fit
    }

    /// The subset of `desired` this object can hold (maps missing from an incomplete
    /// object are left out, so that the diff does not retry them forever).
    pub fn mask(&self, desired: &mut MapEntries) {
        if self.ports.is_none() {
            desired.ports.clear();
        }
        if self.addrs.is_none() {
            desired.addrs.clear();
        }
        if self.cidrs.is_none() {
            desired.cidrs.clear();
        }
        if self.macs.is_none() {
            desired.macs.clear();
        }
        if self.devmap.is_none() {
            desired.devmap.clear();
        }
        if self.neigh.is_none() {
            desired.neigh.clear();
        }
        if self.routes.is_none() {
            desired.routes.clear();
        }
        if self.l2.is_none() {
            desired.l2.clear();
        }
        if self.flood.is_none() {
            desired.flood.clear();
        }
        if self.groups.is_none() {
            desired.groups.clear();
        }
        if self.tun_peers.is_none() {
            desired.tun_peers.clear();
        }
        if self.tun_srcs.is_none() {
            desired.tun_srcs.clear();
        }
        if self.config.is_none() {
            desired.config.clear();
        }
        if self.ident.is_none() {
            desired.ident.clear();
        }
        if self.ident_lpm.is_none() {
            desired.ident_lpm.clear();
        }
        if self.policy.is_none() {
            desired.policy.clear();
        }
    }

    /// Whether the object has every security-group map (otherwise enforcement stays off:
    /// the datapath would deny everything without them).
    pub fn has_security_groups(&self) -> bool {
        self.ident.is_some() && self.ident_lpm.is_some() && self.policy.is_some()
    }

    /// Whether the object has every forwarding map (otherwise forwarding stays off).
    pub fn has_forwarding(&self) -> bool {
        self.devmap.is_some()
            && self.neigh.is_some()
            && self.routes.is_some()
            && self.l2.is_some()
            && self.flood.is_some()
            && self.groups.is_some()
            && self.tun_peers.is_some()
            && self.tun_srcs.is_some()
            && self.config.is_some()
    }
}

impl StatsMaps {
    pub fn take(ebpf: &mut aya::Ebpf, maps_dir: &std::path::Path) -> Result<Self, MapsError> {
        let port_stats = match MapData::from_pin(maps_dir.join(maps::PORT_STATS)) {
            Ok(md) => typed(
                maps::PORT_STATS,
                Some(Map::PerCpuHashMap(md)),
                PerCpuHashMap::try_from,
            )?,
            Err(e) => {
                warn!(
                    "cannot open {}: {}; no per-port counters",
                    maps::PORT_STATS,
                    Chain(&e)
                );
                None
            }
        };
        Ok(StatsMaps {
            port_stats,
            stats: typed(
                maps::STATS,
                ebpf.take_map(maps::STATS),
                PerCpuArray::try_from,
            )?,
            garp_rate: typed(
                maps::GARP_RATE,
                ebpf.take_map(maps::GARP_RATE),
                HashMap::try_from,
            )?,
        })
    }

    /// Each port's counters summed over CPUs (`event::PortStats` layout), by tap ifindex.
    pub fn read_port_stats(&self) -> BTreeMap<u32, Vec<u64>> {
        let mut out = BTreeMap::new();
        let Some(m) = &self.port_stats else {
            return out;
        };
        for item in m.iter() {
            let Ok((ifindex, per_cpu)) = item else {
                continue;
            };
            let mut sum = vec![0u64; PortStats::default().c.len()];
            for v in per_cpu.iter() {
                for (s, c) in sum.iter_mut().zip(v.c.iter()) {
                    *s += c;
                }
            }
            out.insert(ifindex, sum);
        }
        out
    }

    /// Every counter summed over CPUs, indexed like `verdict::stat_index` (zeros if the
    /// map is missing).
    pub fn read_stats(&self) -> Vec<u64> {
        let mut out = vec![0u64; STATS_LEN as usize];
        if let Some(m) = &self.stats {
            let n = m.len().min(STATS_LEN);
            for (i, slot) in out.iter_mut().enumerate().take(n as usize) {
                match m.get(&(i as u32), 0) {
                    Ok(v) => *slot = v.iter().sum(),
                    Err(e) => debug!("stats[{i}]: {}", Chain(&e)),
                }
            }
        }
        out
    }

    /// Entries of the GARP rate-limit LRU (bounded by its capacity).
    pub fn garp_rate_entries(&self) -> Option<u64> {
        self.garp_rate
            .as_ref()
            .map(|m| m.keys().take(maps::GARP_RATE_MAX as usize).count() as u64)
    }
}

/// Fill levels of the agent-owned maps from the in-memory mirror (no syscalls).
pub fn entry_counts(actual: &MapEntries) -> BTreeMap<&'static str, u64> {
    capacity::counts(actual)
}
