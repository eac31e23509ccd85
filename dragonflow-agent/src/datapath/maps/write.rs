//! Writing a diff into the maps: upserts and removals in an order the datapath can follow,
//! with failures remembered per map until it is written again.

use std::collections::{BTreeMap, BTreeSet};

use aya::maps::{MapError, lpm_trie::Key};
use dragonflow_common::maps;
use tracing::{debug, info, warn};

use super::{
    super::capacity::{self},
    Maps,
};
use crate::{
    desired::reconcile::{Diff, EntriesDiff, MapEntries},
    report::Chain,
};

impl Maps {
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
    pub(super) fn write_diff(
        &mut self,
        diff: &EntriesDiff,
        actual: &mut MapEntries,
        failures: &mut Failures,
    ) {
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

    /// Logs each map's failed writes once (again only when the error changes, and once
    /// when writes to it succeed again); returns the number of failed operations.
    pub(super) fn report_failures(&mut self, f: Failures) -> usize {
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
}

/// Failed writes of one [`Maps::apply`], per map: how many, and the first error.
#[derive(Default)]
pub(super) struct Failures {
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
pub(super) fn upsert<K: Ord + Clone, V: Clone, E: std::error::Error + 'static>(
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
pub(super) fn remove<K: Ord, V>(
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
pub(super) fn new_keys(diff: &EntriesDiff, actual: &MapEntries) -> BTreeMap<&'static str, u64> {
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
pub(super) fn split(removals: &mut EntriesDiff, upserts: &mut EntriesDiff) {
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

pub(super) fn ignore_missing(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        r => r,
    }
}

pub(super) fn log_err<T>(name: &'static str) -> impl Fn(Result<T, MapError>) -> Option<T> {
    move |r| {
        r.map_err(|e| warn!(map = name, "cannot read entry: {}", Chain(&e)))
            .ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::capacity::Capacities;

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
