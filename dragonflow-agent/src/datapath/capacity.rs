//! Map capacities, and what the agent writes when the desired entries do not fit.
//!
//! A full BPF map refuses every new key (`E2BIG`/`ENOSPC`). Writing the whole desired
//! state anyway would fail on the same entries at every reconciliation, log each of them
//! and leave *which* entries made it to the order of the writes. Instead the controller
//! asks [`fit`] before it diffs: the desired entries are cut, deterministically and for
//! safety, to what every map can hold, and the cut is reported (`/healthz`, `/state`,
//! the metrics, one log line per map). The cut set is then an ordinary desired state:
//! its diff is empty until the need, a capacity or the entries change, so nothing is
//! retried in a loop.
//!
//! ## What is kept, and why that never fails open
//! Every map the agent fills is an allow-list or a lookup whose miss drops the frame (or
//! falls back to a shorter prefix that grants less), so a missing entry makes the
//! datapath stricter, never looser. The exceptions are references *between* maps, which
//! decide the order below:
//! - **per-port maps** (`df_ports_v1`, `df_addrs_v2`, `df_cidrs_v2`, `df_macs_v1`,
//!   `df_devmap_v1`, `df_policy_v1`, and the local `df_l2_v1` entries pointing at a tap):
//!   a port is kept **whole or not at all**. The datapath passes a frame on an exact
//!   address hit without reading the port entry, so an address entry without its port
//!   entry would skip the port's flags; a port with half its rules would be open to an
//!   arbitrary half of what it should be. A port left out has no entry at all (nor a place in
//!   a flood list or a shared-address group): its tap is dropped as `unknown_port` (fail
//!   closed) and `/state` shows it `fail_closed`.
//!   Ports already in the maps come first (a new port must not take a running VM's
//!   place), then by tap ifindex; a port is kept if all its entries fit in what is left
//!   of every per-port map (first fit: a smaller port after a big one may still fit).
//! - **removals are never cut**: an entry no longer desired is always deleted (that is
//!   what frees room), and when a map would overflow mid-write its removals go before any
//!   upsert (`Maps::apply`).
//! - **shared maps** (`df_ident_v1`, `df_ident_lpm_v1`, `df_neigh_v1`, `df_l2_v1`,
//!   `df_flood_v1`, `df_groups_v1`, `df_tun_peers_v1`, `df_tun_srcs_v1`): any subset is
//!   stricter than the whole. An identity entry carries the selectors of itself and of
//!   every prefix containing it, so a missing one leaves the address with the shorter
//!   match's selectors (a subset); a missing L2, neighbour, flood list, group or tunnel
//!   source drops the frames that needed it. Entries already in the maps are kept first
//!   (no churn of working entries), then in key order.
//! - **routes** (`df_routes_v1`): longer prefixes first. A missing longer route would
//!   send its addresses along a shorter one, into another network; a missing shorter
//!   route only leaves its addresses unrouted (dropped).

use std::collections::{BTreeMap, BTreeSet};

use dragonflow_common::{
    fwd::{DEST_LOCAL, FLOOD_MAX, FloodDest, GROUP_MAX, GroupMember},
    maps as names,
};
use serde::Serialize;

pub use crate::config::FILLED;
use crate::desired::reconcile::MapEntries;

/// Effective capacity (max_entries) per map name.
pub type Capacities = BTreeMap<&'static str, u32>;

/// The compiled-in capacities of [`FILLED`] (`dragonflow_common::maps`).
pub fn defaults() -> Capacities {
    FILLED
        .iter()
        .filter_map(|&n| names::capacity(n).map(|c| (n, c)))
        .collect()
}

/// One map that cannot hold what the NB state needs on this chassis.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MapOverflow {
    pub map: &'static str,
    /// Entries the desired state has for it.
    pub needed: u64,
    /// Its max_entries.
    pub capacity: u32,
    /// Entries written instead (see the module documentation for which).
    pub kept: u64,
}

/// What [`fit`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fit {
    /// Entries desired per map, before the cut (`dragonflow_map_needed_entries`).
    pub needed: BTreeMap<&'static str, u64>,
    /// Maps whose need exceeds their capacity, in name order.
    pub overflow: Vec<MapOverflow>,
    /// Taps whose port was left out whole (fail closed).
    pub ports_left_out: BTreeSet<u32>,
}

/// Entries per map, for every map in [`FILLED`].
pub fn counts(e: &MapEntries) -> BTreeMap<&'static str, u64> {
    BTreeMap::from([
        (names::PORTS, e.ports.len() as u64),
        (names::ADDRS, e.addrs.len() as u64),
        (names::CIDRS, e.cidrs.len() as u64),
        (names::MACS, e.macs.len() as u64),
        (names::DEVMAP, e.devmap.len() as u64),
        (names::NEIGH, e.neigh.len() as u64),
        (names::ROUTES, e.routes.len() as u64),
        (names::L2, e.l2.len() as u64),
        (names::FLOOD, e.flood.len() as u64),
        (names::GROUPS, e.groups.len() as u64),
        (names::TUN_PEERS, e.tun_peers.len() as u64),
        (names::TUN_SRCS, e.tun_srcs.len() as u64),
        (names::IDENT, e.ident.len() as u64),
        (names::IDENT_LPM, e.ident_lpm.len() as u64),
        (names::POLICY, e.policy.len() as u64),
    ])
}

/// The per-port maps, in the order of [`per_port_counts`]' arrays.
const PER_PORT: [&str; 6] = [
    names::PORTS,
    names::ADDRS,
    names::CIDRS,
    names::MACS,
    names::DEVMAP,
    names::POLICY,
];

/// Entries of each tap in each per-port map.
fn per_port_counts(e: &MapEntries) -> BTreeMap<u32, [u64; 6]> {
    let mut out: BTreeMap<u32, [u64; 6]> = BTreeMap::new();
    let mut add = |ifindex: u32, slot: usize| out.entry(ifindex).or_default()[slot] += 1;
    e.ports.keys().for_each(|&i| add(i, 0));
    e.addrs.keys().for_each(|k| add(k.ifindex, 1));
    e.cidrs.keys().for_each(|k| add(k.key.ifindex, 2));
    e.macs.keys().for_each(|k| add(k.ifindex, 3));
    e.devmap.keys().for_each(|&i| add(i, 4));
    e.policy.keys().for_each(|k| add(k.key.ifindex, 5));
    out
}

/// Cuts `desired` to what `caps` can hold (a map missing from `caps` is not limited),
/// as the module documentation says; `actual` is what the maps hold now (what is
/// already there is preferred, so that a new need does not evict working entries).
pub fn fit(desired: &mut MapEntries, actual: &MapEntries, caps: &Capacities) -> Fit {
    let needed = counts(desired);
    let cap = |name: &str| caps.get(name).map_or(u64::MAX, |&c| u64::from(c));
    let over: Vec<&'static str> = needed
        .iter()
        .filter(|(n, v)| **v > cap(n))
        .map(|(n, _)| *n)
        .collect();
    let mut fit = Fit {
        needed,
        ..Default::default()
    };
    if over.is_empty() {
        return fit;
    }

    if over.iter().any(|n| PER_PORT.contains(n)) {
        let mut left = PER_PORT.map(cap);
        let ports = per_port_counts(desired);
        let mut order: Vec<u32> = ports.keys().copied().collect();
        order.sort_by_key(|i| (!actual.ports.contains_key(i), *i));
        for ifindex in order {
            let need = ports[&ifindex];
            if need.iter().zip(&left).all(|(n, l)| n <= l) {
                for (l, n) in left.iter_mut().zip(need) {
                    *l -= n;
                }
            } else {
                fit.ports_left_out.insert(ifindex);
            }
        }
        let out = &fit.ports_left_out;
        desired.retain_ifindex(|i| !out.contains(&i));
        forget_taps(desired, out);
    }

    trim(&mut desired.ident, &actual.ident, cap(names::IDENT), |_| 0);
    trim(
        &mut desired.ident_lpm,
        &actual.ident_lpm,
        cap(names::IDENT_LPM),
        |_| 0,
    );
    trim(&mut desired.neigh, &actual.neigh, cap(names::NEIGH), |_| 0);
    trim(&mut desired.l2, &actual.l2, cap(names::L2), |_| 0);
    trim(&mut desired.flood, &actual.flood, cap(names::FLOOD), |_| 0);
    trim(
        &mut desired.groups,
        &actual.groups,
        cap(names::GROUPS),
        |_| 0,
    );
    trim(
        &mut desired.tun_peers,
        &actual.tun_peers,
        cap(names::TUN_PEERS),
        |_| 0,
    );
    trim(
        &mut desired.tun_srcs,
        &actual.tun_srcs,
        cap(names::TUN_SRCS),
        |_| 0,
    );
    // Longer prefixes first (the rank sorts before "already there").
    trim(
        &mut desired.routes,
        &actual.routes,
        cap(names::ROUTES),
        |k| u32::MAX - k.prefix_len,
    );

    let kept = counts(desired);
    fit.overflow = over
        .into_iter()
        .map(|map| MapOverflow {
            map,
            needed: fit.needed[map],
            capacity: caps[map],
            kept: kept[map],
        })
        .collect();
    fit
}

/// Takes the taps in `out` out of the flood lists and shared-address groups: nothing is
/// copied into a tap whose port has no entry (with security groups on, its missing port
/// entry already refuses it; with them off nothing else would).
fn forget_taps(e: &mut MapEntries, out: &BTreeSet<u32>) {
    let gone = |kind: u32, ifindex: u32| kind == u32::from(DEST_LOCAL) && out.contains(&ifindex);
    for list in e.flood.values_mut() {
        let n = (list.len as usize).min(FLOOD_MAX);
        let kept: Vec<FloodDest> = list.dests[..n]
            .iter()
            .filter(|d| !gone(d.kind, d.ifindex))
            .copied()
            .collect();
        list.dests = [FloodDest::default(); FLOOD_MAX];
        list.dests[..kept.len()].copy_from_slice(&kept);
        list.len = kept.len() as u32;
    }
    for group in e.groups.values_mut() {
        let n = (group.len as usize).min(GROUP_MAX);
        let kept: Vec<GroupMember> = group.members[..n]
            .iter()
            .filter(|m| !gone(u32::from(m.kind), m.ifindex))
            .copied()
            .collect();
        group.members = [GroupMember::default(); GROUP_MAX];
        group.members[..kept.len()].copy_from_slice(&kept);
        group.len = kept.len() as u32;
    }
}

/// Keeps at most `cap` entries of `desired`: by `rank`, then those already in `actual`,
/// then in key order.
fn trim<K: Ord + Clone, V>(
    desired: &mut BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
    cap: u64,
    rank: impl Fn(&K) -> u32,
) {
    let cap = usize::try_from(cap).unwrap_or(usize::MAX);
    if desired.len() <= cap {
        return;
    }
    let mut order: Vec<(u32, bool, K)> = desired
        .keys()
        .map(|k| (rank(k), !actual.contains_key(k), k.clone()))
        .collect();
    order.sort();
    let drop: BTreeSet<K> = order.into_iter().skip(cap).map(|(_, _, k)| k).collect();
    desired.retain(|k, _| !drop.contains(k));
}

/// Whether writing `desired` over `actual` needs the removals first: some map would
/// otherwise hold, between its upserts and its removals, more than its capacity.
pub fn needs_room_first(
    upserted_new: &BTreeMap<&'static str, u64>,
    actual: &MapEntries,
    caps: &Capacities,
) -> bool {
    let now = counts(actual);
    upserted_new.iter().any(|(name, new)| {
        caps.get(name)
            .is_some_and(|&c| now.get(name).copied().unwrap_or(0) + new > u64::from(c))
    })
}

#[cfg(test)]
mod tests {
    use dragonflow_common::{
        addr::{AddrKey, AddrValue},
        port::PortConfig,
        sg::{PolicyKey, PolicyValue},
    };

    use super::*;
    use crate::desired::secgroups::PolicyLpmKey;

    fn addr(ifindex: u32, n: u8) -> AddrKey {
        AddrKey {
            ifindex,
            ip: [192, 0, 2, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            ..Default::default()
        }
    }

    fn policy(ifindex: u32, dport: u16) -> PolicyLpmKey {
        PolicyLpmKey {
            prefix_len: 96,
            key: PolicyKey {
                ifindex,
                ident: 1,
                dir: 2,
                proto: 6,
                dport: dport.to_be_bytes(),
            },
        }
    }

    /// Port `ifindex` with `addrs` address entries and `rules` policy entries.
    fn port(e: &mut MapEntries, ifindex: u32, addrs: u8, rules: u16) {
        e.ports.insert(ifindex, PortConfig::default());
        for n in 0..addrs {
            e.addrs.insert(addr(ifindex, n), AddrValue::default());
        }
        for r in 0..rules {
            e.policy
                .insert(policy(ifindex, 1000 + r), PolicyValue { rule: 1 });
        }
    }

    fn caps(list: &[(&'static str, u32)]) -> Capacities {
        list.iter().copied().collect()
    }

    #[test]
    fn nothing_cut_when_everything_fits() {
        let mut d = MapEntries::default();
        port(&mut d, 3, 2, 5);
        let before = d.clone();
        let f = fit(
            &mut d,
            &MapEntries::default(),
            &caps(&[(names::POLICY, 5), (names::ADDRS, 2)]),
        );
        assert_eq!(d, before);
        assert!(f.overflow.is_empty());
        assert_eq!(f.needed[names::POLICY], 5);
        assert_eq!(f.needed[names::ADDRS], 2);
    }

    #[test]
    fn a_port_is_kept_whole_or_not_at_all() {
        let mut d = MapEntries::default();
        port(&mut d, 3, 1, 4);
        port(&mut d, 4, 1, 4);
        port(&mut d, 5, 1, 2);
        let f = fit(&mut d, &MapEntries::default(), &caps(&[(names::POLICY, 7)]));
        // 3 fits (4), 4 does not (8 > 7), 5 still does (6): first fit, by ifindex.
        assert_eq!(f.ports_left_out, BTreeSet::from([4]));
        assert_eq!(d.ports.keys().copied().collect::<Vec<_>>(), vec![3, 5]);
        assert!(
            d.addrs.keys().all(|k| k.ifindex != 4),
            "no address entry without its port"
        );
        assert!(d.policy.keys().all(|k| k.key.ifindex != 4));
        assert_eq!(
            f.overflow,
            vec![MapOverflow {
                map: names::POLICY,
                needed: 10,
                capacity: 7,
                kept: 6
            }]
        );
    }

    #[test]
    fn ports_already_in_the_maps_keep_their_place() {
        let mut actual = MapEntries::default();
        port(&mut actual, 9, 1, 4);
        let mut d = MapEntries::default();
        port(&mut d, 3, 1, 4);
        port(&mut d, 9, 1, 4);
        let f = fit(&mut d, &actual, &caps(&[(names::POLICY, 6)]));
        assert_eq!(
            f.ports_left_out,
            BTreeSet::from([3]),
            "the new port waits, not the running one"
        );
        // Deterministic: the same inputs cut the same way.
        let mut again = MapEntries::default();
        port(&mut again, 3, 1, 4);
        port(&mut again, 9, 1, 4);
        assert_eq!(fit(&mut again, &actual, &caps(&[(names::POLICY, 6)])), f);
        assert_eq!(again, d);
    }

    #[test]
    fn a_port_is_left_out_when_any_of_its_maps_is_full() {
        let mut d = MapEntries::default();
        port(&mut d, 3, 3, 1);
        port(&mut d, 4, 1, 1);
        let f = fit(&mut d, &MapEntries::default(), &caps(&[(names::ADDRS, 2)]));
        assert_eq!(f.ports_left_out, BTreeSet::from([3]));
        assert_eq!(
            d.policy.len(),
            1,
            "its policy goes with it although the policy map had room"
        );
        assert_eq!(f.overflow[0].map, names::ADDRS);
    }

    #[test]
    fn a_port_left_out_gets_no_flood_copies() {
        use dragonflow_common::fwd::{DEST_REMOTE, FloodList};
        let mut d = MapEntries::default();
        port(&mut d, 3, 1, 2);
        port(&mut d, 4, 1, 2);
        let mut list = FloodList::default();
        for (i, (kind, ifindex)) in [(DEST_LOCAL, 3), (DEST_LOCAL, 4), (DEST_REMOTE, 0)]
            .into_iter()
            .enumerate()
        {
            list.dests[i] = FloodDest {
                kind: u32::from(kind),
                ifindex,
                ..Default::default()
            };
        }
        list.len = 3;
        d.flood.insert(100, list);
        fit(&mut d, &MapEntries::default(), &caps(&[(names::POLICY, 3)]));
        let list = d.flood[&100];
        let dests: Vec<(u32, u32)> = list.dests[..list.len as usize]
            .iter()
            .map(|d| (d.kind, d.ifindex))
            .collect();
        assert_eq!(
            dests,
            vec![(u32::from(DEST_LOCAL), 3), (u32::from(DEST_REMOTE), 0)]
        );
    }

    #[test]
    fn shared_maps_keep_what_is_there_then_key_order() {
        let mut d = MapEntries::default();
        let mut actual = MapEntries::default();
        for n in 0..5u8 {
            let k = dragonflow_common::sg::IdentKey {
                family: 4,
                ip: [192, 0, 2, n, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                ..Default::default()
            };
            d.ident.insert(k, u32::from(n));
            if n == 4 {
                actual.ident.insert(k, 4);
            }
        }
        let f = fit(&mut d, &actual, &caps(&[(names::IDENT, 2)]));
        assert_eq!(d.ident.values().copied().collect::<Vec<_>>(), vec![0, 4]);
        assert!(f.ports_left_out.is_empty());
        assert_eq!(f.overflow[0].kept, 2);
    }

    #[test]
    fn routes_keep_longer_prefixes() {
        use crate::desired::reconcile::RouteLpmKey;
        let mut d = MapEntries::default();
        for len in [40, 56, 48] {
            d.routes.insert(
                RouteLpmKey {
                    prefix_len: len,
                    key: Default::default(),
                },
                Default::default(),
            );
        }
        fit(&mut d, &MapEntries::default(), &caps(&[(names::ROUTES, 2)]));
        let lens: Vec<u32> = d.routes.keys().map(|k| k.prefix_len).collect();
        assert_eq!(lens, vec![48, 56]);
    }

    #[test]
    fn room_first_only_when_a_write_would_pass_the_capacity() {
        let mut actual = MapEntries::default();
        port(&mut actual, 3, 1, 4);
        let c = caps(&[(names::POLICY, 6)]);
        assert!(!needs_room_first(
            &BTreeMap::from([(names::POLICY, 2)]),
            &actual,
            &c
        ));
        assert!(needs_room_first(
            &BTreeMap::from([(names::POLICY, 3)]),
            &actual,
            &c
        ));
        assert!(!needs_room_first(
            &BTreeMap::from([(names::L2, 300)]),
            &actual,
            &c
        ));
    }
}
