//! The state the controller and the conntrack collector share: which taps may hold
//! entries, which must be purged, the collector's counters and the datapath's per-port
//! quota counters (aya map handles, hence here).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Mutex, atomic::AtomicU64},
};

use aya::maps::{HashMap, MapData, MapError};
use dragonflow_common::{
    limits::{CtCount, CtFreed, ct_use},
    maps,
};
use tokio::sync::Notify;
use tracing::{debug, warn};

use crate::report::Chain;

/// What the controller tells the collector, and the collector's counters.
#[derive(Debug, Default)]
pub struct CtShared {
    /// Taps with a port entry (`None` until the controller has written once: until then
    /// no entry is removed for lack of a port).
    ports: Mutex<Option<BTreeSet<u32>>>,
    /// Taps whose entries must go at the next scan, whatever the port set says.
    pub(crate) purge: Mutex<BTreeSet<u32>>,
    pub(crate) wake: Notify,
    /// Entries counted by the last scan.
    pub entries: AtomicU64,
    /// Entries deleted because they expired.
    pub deleted_expired: AtomicU64,
    /// Entries deleted because their tap has no port any more.
    pub deleted_port_gone: AtomicU64,
    /// Completed scans.
    pub scans: AtomicU64,
    /// The quota counters (`None` if the object lacks them).
    quota: Mutex<Option<QuotaMaps>>,
}

/// The per-port conntrack counters: the datapath's, read here, and the collector's own.
pub struct QuotaMaps {
    pub count: HashMap<MapData, u32, CtCount>,
    pub freed: HashMap<MapData, u32, CtFreed>,
}

impl std::fmt::Debug for QuotaMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("QuotaMaps")
    }
}

impl CtShared {
    /// The taps that may hold entries. The controller publishes the union of what the
    /// maps hold and what it is about to write before writing, and what they hold after,
    /// so a tap that has a port entry at any moment of a scan is in the set read when the
    /// scan ends.
    pub fn set_ports(&self, ports: BTreeSet<u32>) {
        *self.ports.lock().expect("lock") = Some(ports);
    }

    /// Removes every entry of these taps now (their port left them).
    pub fn purge(&self, ifindexes: impl IntoIterator<Item = u32>) {
        let mut p = self.purge.lock().expect("lock");
        let before = p.len();
        p.extend(ifindexes);
        if p.len() != before {
            self.wake.notify_one();
        }
    }

    pub(crate) fn ports(&self) -> Option<BTreeSet<u32>> {
        self.ports.lock().expect("lock").clone()
    }

    /// Hands the quota counters to the collector (and to [`CtShared::port_use`]).
    pub fn set_quota_maps(&self, maps: QuotaMaps) {
        *self.quota.lock().expect("lock") = Some(maps);
    }

    /// Entries each tap holds, per origin slot (`limits::origin_slot`: egress, ingress),
    /// from the counters as they are now; taps without counters are left out.
    pub fn port_use(&self) -> BTreeMap<u32, [u64; 2]> {
        let q = self.quota.lock().expect("lock");
        let Some(q) = q.as_ref() else {
            return BTreeMap::new();
        };
        q.count
            .iter()
            .filter_map(|r| r.ok())
            .map(|(ifindex, c)| {
                let f = q.freed.get(&ifindex, 0).unwrap_or_default();
                (ifindex, [ct_use(&c, &f, 0), ct_use(&c, &f, 1)])
            })
            .collect()
    }

    /// After a scan: adds what it deleted to `freed`, and removes the counters of taps
    /// without a port (`gone`) that hold no entry any more (`left`: entries per tap).
    pub(crate) fn settle_quota(
        &self,
        freed: &BTreeMap<u32, [u64; 2]>,
        left: &BTreeMap<u32, u64>,
        gone: impl Fn(u32) -> bool,
    ) {
        let mut q = self.quota.lock().expect("lock");
        let Some(q) = q.as_mut() else {
            return;
        };
        for (&ifindex, d) in freed {
            let mut f = q.freed.get(&ifindex, 0).unwrap_or_default();
            f.freed[0] += d[0];
            f.freed[1] += d[1];
            if let Err(e) = q.freed.insert(ifindex, f, 0) {
                // The port's use reads high by these entries (stricter, never looser).
                warn!(
                    map = maps::CT_FREED,
                    ifindex,
                    "cannot count deleted conntrack entries: {}",
                    Chain(&e)
                );
            }
        }
        let stale: Vec<u32> = q
            .count
            .keys()
            .chain(q.freed.keys())
            .filter_map(|k| k.ok())
            .filter(|&i| gone(i) && left.get(&i).copied().unwrap_or(0) == 0)
            .collect::<BTreeSet<u32>>()
            .into_iter()
            .collect();
        for ifindex in stale {
            for r in [q.count.remove(&ifindex), q.freed.remove(&ifindex)] {
                if let Err(e) = r
                    && !is_missing(&e)
                {
                    debug!(ifindex, "cannot remove quota counters: {}", Chain(&e));
                }
            }
        }
    }
}

/// Whether a map error says the entry was already gone (a race with the datapath or the
/// other side of the collector, not a failure).
pub fn is_missing(e: &MapError) -> bool {
    match e {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}
