//! Typed access to the pinned maps: read everything back (adoption), write a diff.

use std::collections::BTreeMap;

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
use tracing::{debug, warn};

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
    pub fn apply(&mut self, diff: &EntriesDiff, actual: &mut MapEntries) -> usize {
        let mut errors = 0;

        if let Some(m) = &mut self.policy {
            upsert(
                &mut errors,
                maps::POLICY,
                &diff.policy,
                &mut actual.policy,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.ident_lpm {
            upsert(
                &mut errors,
                maps::IDENT_LPM,
                &diff.ident_lpm,
                &mut actual.ident_lpm,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.ident {
            upsert(
                &mut errors,
                maps::IDENT,
                &diff.ident,
                &mut actual.ident,
                |k, v| m.insert(k, v, 0),
            );
        }

        if let Some(m) = &mut self.ports {
            upsert(
                &mut errors,
                maps::PORTS,
                &diff.ports,
                &mut actual.ports,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.addrs {
            upsert(
                &mut errors,
                maps::ADDRS,
                &diff.addrs,
                &mut actual.addrs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.cidrs {
            upsert(
                &mut errors,
                maps::CIDRS,
                &diff.cidrs,
                &mut actual.cidrs,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.macs {
            upsert(
                &mut errors,
                maps::MACS,
                &diff.macs,
                &mut actual.macs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.devmap {
            upsert(
                &mut errors,
                maps::DEVMAP,
                &diff.devmap,
                &mut actual.devmap,
                |k, v| m.insert(*k, *v, None, 0),
            );
        }
        if let Some(m) = &mut self.groups {
            upsert(
                &mut errors,
                maps::GROUPS,
                &diff.groups,
                &mut actual.groups,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.neigh {
            upsert(
                &mut errors,
                maps::NEIGH,
                &diff.neigh,
                &mut actual.neigh,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.routes {
            upsert(
                &mut errors,
                maps::ROUTES,
                &diff.routes,
                &mut actual.routes,
                |k, v| m.insert(&Key::new(k.prefix_len, k.key), v, 0),
            );
        }
        if let Some(m) = &mut self.l2 {
            upsert(&mut errors, maps::L2, &diff.l2, &mut actual.l2, |k, v| {
                m.insert(k, v, 0)
            });
        }
        if let Some(m) = &mut self.flood {
            upsert(
                &mut errors,
                maps::FLOOD,
                &diff.flood,
                &mut actual.flood,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.tun_peers {
            upsert(
                &mut errors,
                maps::TUN_PEERS,
                &diff.tun_peers,
                &mut actual.tun_peers,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.tun_srcs {
            upsert(
                &mut errors,
                maps::TUN_SRCS,
                &diff.tun_srcs,
                &mut actual.tun_srcs,
                |k, v| m.insert(k, v, 0),
            );
        }
        if let Some(m) = &mut self.config {
            upsert(
                &mut errors,
                maps::CONFIG,
                &diff.config,
                &mut actual.config,
                |k, v| m.set(*k, v, 0),
            );
        }

        if let Some(m) = &mut self.ident {
            remove(
                &mut errors,
                maps::IDENT,
                &diff.ident,
                &mut actual.ident,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.ident_lpm {
            remove(
                &mut errors,
                maps::IDENT_LPM,
                &diff.ident_lpm,
                &mut actual.ident_lpm,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }
        if let Some(m) = &mut self.policy {
            remove(
                &mut errors,
                maps::POLICY,
                &diff.policy,
                &mut actual.policy,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }

        if let Some(m) = &mut self.tun_srcs {
            remove(
                &mut errors,
                maps::TUN_SRCS,
                &diff.tun_srcs,
                &mut actual.tun_srcs,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.tun_peers {
            remove(
                &mut errors,
                maps::TUN_PEERS,
                &diff.tun_peers,
                &mut actual.tun_peers,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.flood {
            remove(
                &mut errors,
                maps::FLOOD,
                &diff.flood,
                &mut actual.flood,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.l2 {
            remove(&mut errors, maps::L2, &diff.l2, &mut actual.l2, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.routes {
            remove(
                &mut errors,
                maps::ROUTES,
                &diff.routes,
                &mut actual.routes,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }
        if let Some(m) = &mut self.neigh {
            remove(
                &mut errors,
                maps::NEIGH,
                &diff.neigh,
                &mut actual.neigh,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.groups {
            remove(
                &mut errors,
                maps::GROUPS,
                &diff.groups,
                &mut actual.groups,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.devmap {
            remove(
                &mut errors,
                maps::DEVMAP,
                &diff.devmap,
                &mut actual.devmap,
                |k| m.remove(*k),
            );
        }
        if let Some(m) = &mut self.addrs {
            remove(
                &mut errors,
                maps::ADDRS,
                &diff.addrs,
                &mut actual.addrs,
                |k| m.remove(k),
            );
        }
        if let Some(m) = &mut self.cidrs {
            remove(
                &mut errors,
                maps::CIDRS,
                &diff.cidrs,
                &mut actual.cidrs,
                |k| m.remove(&Key::new(k.prefix_len, k.key)),
            );
        }
        if let Some(m) = &mut self.macs {
            remove(&mut errors, maps::MACS, &diff.macs, &mut actual.macs, |k| {
                m.remove(k)
            });
        }
        if let Some(m) = &mut self.ports {
            remove(
                &mut errors,
                maps::PORTS,
                &diff.ports,
                &mut actual.ports,
                |k| m.remove(k),
            );
        }
        errors
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

/// Writes the upserts of one map, mirroring each success into `actual`.
fn upsert<K: Ord + Clone, V: Clone, E: std::error::Error + 'static>(
    errors: &mut usize,
    name: &str,
    diff: &Diff<K, V>,
    actual: &mut BTreeMap<K, V>,
    mut write: impl FnMut(&K, &V) -> Result<(), E>,
) {
    for (k, v) in &diff.upsert {
        match write(k, v) {
            Ok(()) => {
                actual.insert(k.clone(), v.clone());
            }
            Err(e) => {
                warn!("map write failed ({name}): {}", Chain(&e));
                *errors += 1;
            }
        }
    }
}

/// Deletes the removals of one map (an entry already gone counts as deleted).
fn remove<K: Ord, V>(
    errors: &mut usize,
    name: &str,
    diff: &Diff<K, V>,
    actual: &mut BTreeMap<K, V>,
    mut delete: impl FnMut(&K) -> Result<(), MapError>,
) {
    for k in &diff.remove {
        match ignore_missing(delete(k)) {
            Ok(()) => {
                actual.remove(k);
            }
            Err(e) => {
                warn!("map write failed ({name}): {}", Chain(&e));
                *errors += 1;
            }
        }
    }
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
    BTreeMap::from([
        (maps::PORTS, actual.ports.len() as u64),
        (maps::ADDRS, actual.addrs.len() as u64),
        (maps::CIDRS, actual.cidrs.len() as u64),
        (maps::MACS, actual.macs.len() as u64),
        (maps::DEVMAP, actual.devmap.len() as u64),
        (maps::NEIGH, actual.neigh.len() as u64),
        (maps::ROUTES, actual.routes.len() as u64),
        (maps::L2, actual.l2.len() as u64),
        (maps::FLOOD, actual.flood.len() as u64),
        (maps::GROUPS, actual.groups.len() as u64),
        (maps::TUN_PEERS, actual.tun_peers.len() as u64),
        (maps::TUN_SRCS, actual.tun_srcs.len() as u64),
        (maps::IDENT, actual.ident.len() as u64),
        (maps::IDENT_LPM, actual.ident_lpm.len() as u64),
        (maps::POLICY, actual.policy.len() as u64),
    ])
}
