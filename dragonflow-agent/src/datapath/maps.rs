//! Typed access to the pinned maps: read everything back (adoption), write a diff.

use std::collections::BTreeMap;

use aya::maps::{HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray, lpm_trie::Key};
use dragonflow_common::{
    addr::{AddrKey, AddrValue, MacKey},
    event::GarpRateKey,
    maps,
    port::PortConfig,
    verdict::STATS_LEN,
};
use tracing::{debug, warn};

use crate::{
    reconcile::{CidrKey, EntriesDiff, MapEntries},
    report::Chain,
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
        out
    }

    /// Writes `diff`, updating `actual` to what the maps hold afterwards. Returns the
    /// number of failed operations (each logged).
    ///
    /// Order matters because the datapath passes a frame on an exact `ADDRS` hit without
    /// reading `PORTS` (the fast path): an address entry must never outlive its port's
    /// entry, nor exist while the port has port security off. So the port entry is
    /// written first and removed last, and addresses are removed before it.
    pub fn apply(&mut self, diff: &EntriesDiff, actual: &mut MapEntries) -> usize {
        let mut errors = 0;
        let mut check = |r: Result<(), MapError>, what: &str| -> bool {
            match r {
                Ok(()) => true,
                Err(e) => {
                    warn!("map write failed ({what}): {}", Chain(&e));
                    errors += 1;
                    false
                }
            }
        };

        if let Some(m) = &mut self.ports {
            for (k, v) in &diff.ports.upsert {
                if check(m.insert(k, v, 0), maps::PORTS) {
                    actual.ports.insert(*k, *v);
                }
            }
        }
        if let Some(m) = &mut self.addrs {
            for (k, v) in &diff.addrs.upsert {
                if check(m.insert(k, v, 0), maps::ADDRS) {
                    actual.addrs.insert(*k, *v);
                }
            }
        }
        if let Some(m) = &mut self.cidrs {
            for (k, v) in &diff.cidrs.upsert {
                if check(m.insert(&Key::new(k.prefix_len, k.key), v, 0), maps::CIDRS) {
                    actual.cidrs.insert(*k, *v);
                }
            }
        }
        if let Some(m) = &mut self.macs {
            for (k, v) in &diff.macs.upsert {
                if check(m.insert(k, v, 0), maps::MACS) {
                    actual.macs.insert(*k, *v);
                }
            }
        }
        if let Some(m) = &mut self.addrs {
            for k in &diff.addrs.remove {
                if check(ignore_missing(m.remove(k)), maps::ADDRS) {
                    actual.addrs.remove(k);
                }
            }
        }
        if let Some(m) = &mut self.cidrs {
            for k in &diff.cidrs.remove {
                if check(
                    ignore_missing(m.remove(&Key::new(k.prefix_len, k.key))),
                    maps::CIDRS,
                ) {
                    actual.cidrs.remove(k);
                }
            }
        }
        if let Some(m) = &mut self.macs {
            for k in &diff.macs.remove {
                if check(ignore_missing(m.remove(k)), maps::MACS) {
                    actual.macs.remove(k);
                }
            }
        }
        if let Some(m) = &mut self.ports {
            for k in &diff.ports.remove {
                if check(ignore_missing(m.remove(k)), maps::PORTS) {
                    actual.ports.remove(k);
                }
            }
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
    ])
}
