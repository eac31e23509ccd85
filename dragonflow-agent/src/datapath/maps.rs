//! Typed access to the pinned maps: read everything back (adoption), write a diff.

use std::collections::{BTreeMap, BTreeSet};

use aya::{
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, ProgramArray,
        lpm_trie::Key,
    },
    programs::SchedClassifier,
};
use dragonflow_common::{
    addr::{AddrKey, AddrValue, MacKey},
    event::GarpRateKey,
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
use crate::{
    reconcile::{CidrKey, Diff, EntriesDiff, MapEntries, RouteLpmKey},
    report::Chain,
    secgroups::{IdentLpmKey, PolicyLpmKey},
};

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
            capacity: Capacities::new(),
            overflow: BTreeMap::new(),
            failing: BTreeMap::new(),
        })
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

    /// Everything the maps hold now (adopted from a previous agent, or written by us).
    /// Entries that cannot be read are skipped with a warning.
    pub fn read_all(&self) -> MapEntries {
        let mut out = MapEntries::default();
        if let Some(m) = &self.ports {
            out.ports = m.iter().filter_map(log_err(maps::PORTS)).collect();
        }
        if let Some(m) = &self.addrs {
            out.addrs = m.iter().filter_map(log_err(maps::ADDRS)).collect();
        }
        if let Some(m) = &self.cidrs {
            out.cidrs = m
                .iter()
                .filter_map(log_err(maps::CIDRS))
                .map(|(k, v)| {
                    (
                        CidrKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.macs {
            out.macs = m.iter().filter_map(log_err(maps::MACS)).collect();
        }
        if let Some(m) = &self.devmap {
            out.devmap = m
                .iter()
                .filter_map(log_err(maps::DEVMAP))
                .map(|(k, v)| (k, v.if_index))
                .collect();
        }
        if let Some(m) = &self.neigh {
            out.neigh = m.iter().filter_map(log_err(maps::NEIGH)).collect();
        }
        if let Some(m) = &self.routes {
            out.routes = m
                .iter()
                .filter_map(log_err(maps::ROUTES))
                .map(|(k, v)| {
                    (
                        RouteLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.l2 {
            out.l2 = m.iter().filter_map(log_err(maps::L2)).collect();
        }
        if let Some(m) = &self.flood {
            out.flood = m.iter().filter_map(log_err(maps::FLOOD)).collect();
        }
        if let Some(m) = &self.groups {
            out.groups = m.iter().filter_map(log_err(maps::GROUPS)).collect();
        }
        if let Some(m) = &self.tun_peers {
            out.tun_peers = m.iter().filter_map(log_err(maps::TUN_PEERS)).collect();
        }
        if let Some(m) = &self.tun_srcs {
            out.tun_srcs = m.iter().filter_map(log_err(maps::TUN_SRCS)).collect();
        }
        if let Some(m) = &self.ident {
            out.ident = m.iter().filter_map(log_err(maps::IDENT)).collect();
        }
        if let Some(m) = &self.ident_lpm {
            out.ident_lpm = m
                .iter()
                .filter_map(log_err(maps::IDENT_LPM))
                .map(|(k, v)| {
                    (
                        IdentLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.policy {
            out.policy = m
                .iter()
                .filter_map(log_err(maps::POLICY))
                .map(|(k, v)| {
                    (
                        PolicyLpmKey {
                            prefix_len: k.prefix_len(),
                            key: k.data(),
                        },
                        v,
                    )
                })
                .collect();
        }
        if let Some(m) = &self.config {
            // An all-zero slot is what a fresh array holds: nothing written yet.
            match m.get(&0, 0) {
                Ok(c) if c != ChassisConfig::default() => {
                    out.config.insert(0, c);
                }
                Ok(_) => {}
                Err(e) => warn!(map = maps::CONFIG, "cannot read entry: {}", Chain(&e)),
            }
        }
        out
    }

    /// Writes `diff`, updating `actual` to what the maps hold afterwards. Returns the
    /// number of failed operations (each logged).
    ///
    /// Order matters because the datapath follows references between maps:
    /// - it passes a frame on an exact `ADDRS` hit without reading `PORTS` (the fast path):
    ///   an address entry must never outlive its port's entry, nor exist while the port
    ///   has port security off. So the port entry is written first and removed last;
    /// - forwarding follows L2 → devmap/port (a local tap), L2 → routes → neighbours → L2
    ///   (a router), flood list → taps, L2 / neighbour → group (a shared AAP address),
    ///   and the config's flag turns forwarding on: so upserts go ports, addresses,
    ///   devmap, groups, neighbours, routes, L2, flood lists, config
    ///   (a destination exists before anything points at it), and removals go the other
    ///   way (nothing points at an entry when it disappears);
    /// - tunnel admission: the datapath reads a peer entry only to name the drop reason of
    ///   a source it does not find, so peers go in before their sources and out after
    ///   them (a source never exists without its peer); both before the config;
    /// - security groups: an address's identity is looked up, then the policy of that
    ///   identity, so policy upserts go before identity upserts, and identity removals
    ///   before policy removals. They go first of all: a new port has its rules before its
    ///   port entry makes the datapath judge it. (The controller bumps the policy
    ///   generation after this returns, once every change is in.)
    ///
    /// A failed write is logged once per map and error, not per entry and not again at
    /// the next retry (a full map is not one of them: [`Maps::fit`] cuts the desired
    /// state to the capacities first). When a map would hold more than its capacity
    /// between its upserts and its removals, every removal is written first, in the
    /// removal order below (deleting an allow entry early only makes the datapath
    /// stricter for a moment), then the upserts.
    pub fn apply(&mut self, diff: &EntriesDiff, actual: &mut MapEntries) -> usize {
        let mut failures = Failures::default();
        if capacity::needs_room_first(&new_keys(diff, actual), actual, &self.capacity) {
            debug!("a map is near its capacity: removals first");
            let mut removals = diff.clone();
            let mut upserts = diff.clone();
            split(&mut removals, &mut upserts);
            self.write_diff(&removals, actual, &mut failures);
            self.write_diff(&upserts, actual, &mut failures);
        } else {
            self.write_diff(diff, actual, &mut failures);
        }
        self.report_failures(failures)
    }

    /// [`Maps::apply`] without the bookkeeping: the writes in their order.
    fn write_diff(&mut self, diff: &EntriesDiff, actual: &mut MapEntries, failures: &mut Failures) {
        let failures = &mut *failures;

        if let Some(m) = &mut self.policy {
            upsert(
                failures,
                maps::POLICY,
                &diff.policy,
                &mut actual.policy,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.ident_lpm {
            upsert(
                failures,
                maps::IDENT_LPM,
                &diff.ident_lpm,
                &mut actual.ident_lpm,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.ident {
            upsert(
                failures,
                maps::IDENT,
                &diff.ident,
                &mut actual.ident,
                |k, v| m.insert(k, v, 0),
            );
        }

        if let Some(m) = &mut self.ports {
            upsert(
                failures,
                maps::PORTS,
                &diff.ports,
                &mut actual.ports,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.addrs {
            upsert(
                failures,
                maps::ADDRS,
                &diff.addrs,
                &mut actual.addrs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.cidrs {
            upsert(
                failures,
                maps::CIDRS,
                &diff.cidrs,
                &mut actual.cidrs,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.macs {
            upsert(
                failures,
                maps::MACS,
                &diff.macs,
                &mut actual.macs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.devmap {
            upsert(
                failures,
                maps::DEVMAP,
                &diff.devmap,
                &mut actual.devmap,
                |k, v| m.insert(*k, *v, None, 0),
            );
        }
        if let Some(m) = &mut self.groups {
            upsert(
                failures,
                maps::GROUPS,
                &diff.groups,
                &mut actual.groups,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.neigh {
            upsert(
                failures,
                maps::NEIGH,
                &diff.neigh,
                &mut actual.neigh,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.routes {
            upsert(
                failures,
                maps::ROUTES,
                &diff.routes,
                &mut actual.routes,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.l2 {
            upsert(failures, maps::L2, &diff.l2, &mut actual.l2, |k, v| {
                m.insert(k, v, 0)
            });
        }
        if let Some(m) = &mut self.flood {
            upsert(
                failures,
                maps::FLOOD,
                &diff.flood,
                &mut actual.flood,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.tun_peers {
            upsert(
                failures,
                maps::TUN_PEERS,
                &diff.tun_peers,
                &mut actual.tun_peers,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.tun_srcs {
            upsert(
                failures,
                maps::TUN_SRCS,
                &diff.tun_srcs,
                &mut actual.tun_srcs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.config {
            upsert(
                failures,
                maps::CONFIG,
                &diff.config,
                &mut actual.config,
                |k, v| m.set(*k, v, 0),
            );
        }

        if let Some(m) = &mut self.ident {
            remove(failures, maps::IDENT, &diff.ident, &mut actual.ident, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.ident_lpm {
            remove(
                failures,
                maps::IDENT_LPM,
                &diff.ident_lpm,
                &mut actual.ident_lpm,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }
        if let Some(m) = &mut self.policy {
            remove(
                failures,
                maps::POLICY,
                &diff.policy,
                &mut actual.policy,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }

        if let Some(m) = &mut self.tun_srcs {
            remove(
                failures,
                maps::TUN_SRCS,
                &diff.tun_srcs,
                &mut actual.tun_srcs,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.tun_peers {
            remove(
                failures,
                maps::TUN_PEERS,
                &diff.tun_peers,
                &mut actual.tun_peers,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.flood {
            remove(failures, maps::FLOOD, &diff.flood, &mut actual.flood, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.l2 {
            remove(failures, maps::L2, &diff.l2, &mut actual.l2, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.routes {
            remove(
                failures,
                maps::ROUTES,
                &diff.routes,
                &mut actual.routes,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }
        if let Some(m) = &mut self.neigh {
            remove(failures, maps::NEIGH, &diff.neigh, &mut actual.neigh, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.groups {
            remove(
                failures,
                maps::GROUPS,
                &diff.groups,
                &mut actual.groups,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.devmap {
            remove(
                failures,
                maps::DEVMAP,
                &diff.devmap,
                &mut actual.devmap,
                |k| m.remove(*k),
            );
        }
        if let Some(m) = &mut self.addrs {
            remove(failures, maps::ADDRS, &diff.addrs, &mut actual.addrs, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.cidrs {
            remove(failures, maps::CIDRS, &diff.cidrs, &mut actual.cidrs, |k| {
                m.remove(&Key::new(k.prefix_len, k.key))
            });
        }
        if let Some(m) = &mut self.macs {
            remove(failures, maps::MACS, &diff.macs, &mut actual.macs, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.ports {
            remove(failures, maps::PORTS, &diff.ports, &mut actual.ports, |k| {
                m.remove(k)
            });
        }
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

    /// Logs each map's failed writes once (again only when the error changes, and once
    /// when writes to it succeed again); returns the number of failed operations.
    fn report_failures(&mut self, f: Failures) -> usize {
        for (&map, (n, first)) in &f.failed {
            if self.failing.get(map) != Some(first) {
                warn!(
                    map,
                    failed = n,
                    "map writes failed: {first} (retried at each reconciliation; logged again \
                     only if the error changes)"
                );
                self.failing.insert(map, first.clone());
            }
        }
        for map in &f.touched {
            if !f.failed.contains_key(map) && self.failing.remove(map).is_some() {
                info!(map, "map writes succeed again");
            }
        }
        f.failed.values().map(|(n, _)| n).sum()
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

/// Failed writes of one [`Maps::apply`], per map: how many, and the first error.
#[derive(Default)]
struct Failures {
    failed: BTreeMap<&'static str, (usize, String)>,
    /// Maps that had something to write.
    touched: BTreeSet<&'static str>,
}

impl Failures {
    fn add(&mut self, name: &'static str, e: &(dyn std::error::Error + 'static)) {
        let f = self
            .failed
            .entry(name)
            .or_insert_with(|| (0, Chain(e).to_string()));
        f.0 += 1;
    }
}

/// Writes the upserts of one map, mirroring each success into `actual`.
fn upsert<K: Ord + Clone, V: Clone, E: std::error::Error + 'static>(
    failures: &mut Failures,
    name: &'static str,
    diff: &Diff<K, V>,
    actual: &mut BTreeMap<K, V>,
    mut write: impl FnMut(&K, &V) -> Result<(), E>,
) {
    if !diff.upsert.is_empty() {
        failures.touched.insert(name);
    }
    for (k, v) in &diff.upsert {
        match write(k, v) {
            Ok(()) => {
                actual.insert(k.clone(), v.clone());
            }
            Err(e) => failures.add(name, &e),
        }
    }
}

/// Deletes the removals of one map (an entry already gone counts as deleted).
fn remove<K: Ord, V>(
    failures: &mut Failures,
    name: &'static str,
    diff: &Diff<K, V>,
    actual: &mut BTreeMap<K, V>,
    mut delete: impl FnMut(&K) -> Result<(), MapError>,
) {
    if !diff.remove.is_empty() {
        failures.touched.insert(name);
    }
    for k in &diff.remove {
        match ignore_missing(delete(k)) {
            Ok(()) => {
                actual.remove(k);
            }
            Err(e) => failures.add(name, &e),
        }
    }
}

/// Keys each map's upserts add (not already in `actual`).
fn new_keys(diff: &EntriesDiff, actual: &MapEntries) -> BTreeMap<&'static str, u64> {
    fn n<K: Ord, V>(d: &Diff<K, V>, actual: &BTreeMap<K, V>) -> u64 {
        d.upsert
            .iter()
            .filter(|(k, _)| !actual.contains_key(k))
            .count() as u64
    }
    BTreeMap::from([
        (maps::PORTS, n(&diff.ports, &actual.ports)),
        (maps::ADDRS, n(&diff.addrs, &actual.addrs)),
        (maps::CIDRS, n(&diff.cidrs, &actual.cidrs)),
        (maps::MACS, n(&diff.macs, &actual.macs)),
        (maps::DEVMAP, n(&diff.devmap, &actual.devmap)),
        (maps::NEIGH, n(&diff.neigh, &actual.neigh)),
        (maps::ROUTES, n(&diff.routes, &actual.routes)),
        (maps::L2, n(&diff.l2, &actual.l2)),
        (maps::FLOOD, n(&diff.flood, &actual.flood)),
        (maps::GROUPS, n(&diff.groups, &actual.groups)),
        (maps::TUN_PEERS, n(&diff.tun_peers, &actual.tun_peers)),
        (maps::TUN_SRCS, n(&diff.tun_srcs, &actual.tun_srcs)),
        (maps::IDENT, n(&diff.ident, &actual.ident)),
        (maps::IDENT_LPM, n(&diff.ident_lpm, &actual.ident_lpm)),
        (maps::POLICY, n(&diff.policy, &actual.policy)),
    ])
}

/// Leaves only the removals in `removals` and only the upserts in `upserts` (both start
/// as copies of one diff).
fn split(removals: &mut EntriesDiff, upserts: &mut EntriesDiff) {
    macro_rules! each {
        ($($f:ident),*) => {$(
            removals.$f.upsert.clear();
            upserts.$f.remove.clear();
        )*};
    }
    each!(
        ports, addrs, cidrs, macs, devmap, neigh, routes, l2, flood, groups, tun_peers, tun_srcs,
        config, ident, ident_lpm, policy
    );
}

fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

fn log_err<T>(name: &'static str) -> impl Fn(Result<T, MapError>) -> Option<T> {
    move |r| {
        r.map_err(|e| warn!(map = name, "cannot read entry: {}", Chain(&e)))
            .ok()
    }
}

impl StatsMaps {
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, MapsError> {
        Ok(StatsMaps {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(map: &'static str, n: usize, msg: &str) -> Failures {
        let mut f = Failures::default();
        f.touched.insert(map);
        f.failed.insert(map, (n, msg.to_string()));
        f
    }

    #[test]
    fn a_failure_is_remembered_until_the_map_is_written_again() {
        let mut m = Maps::default();
        assert_eq!(m.report_failures(failed(maps::L2, 3, "EINVAL")), 3);
        assert_eq!(m.failing.get(maps::L2).map(String::as_str), Some("EINVAL"));
        // The same error again: counted, not logged again (the remembered text is it).
        assert_eq!(m.report_failures(failed(maps::L2, 3, "EINVAL")), 3);
        // A write to another map does not clear it; a clean write to it does.
        let mut other = Failures::default();
        other.touched.insert(maps::NEIGH);
        assert_eq!(m.report_failures(other), 0);
        assert!(m.failing.contains_key(maps::L2));
        let mut clean = Failures::default();
        clean.touched.insert(maps::L2);
        assert_eq!(m.report_failures(clean), 0);
        assert!(m.failing.is_empty());
    }

    #[test]
    fn overflow_state_follows_the_need() {
        use dragonflow_common::port::PortConfig;
        let mut m = Maps {
            capacity: Capacities::from([(maps::PORTS, 1)]),
            ..Default::default()
        };
        let two = || MapEntries {
            ports: BTreeMap::from([(3, PortConfig::default()), (4, PortConfig::default())]),
            ..Default::default()
        };
        let mut d = two();
        let fit = m.fit(&mut d, &MapEntries::default());
        assert_eq!(fit.overflow.len(), 1);
        assert_eq!(d.ports.len(), 1);
        assert!(m.overflow.contains_key(maps::PORTS));
        let mut d = MapEntries {
            ports: BTreeMap::from([(3, PortConfig::default())]),
            ..Default::default()
        };
        assert!(m.fit(&mut d, &MapEntries::default()).overflow.is_empty());
        assert!(m.overflow.is_empty(), "the end of the overflow is noticed");
    }
}
