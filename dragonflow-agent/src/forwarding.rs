//! The forwarding half of the desired state (pure, like `reconcile.rs`): from the NB
//! snapshot, the local ports' taps and the live chassis records, the entries of
//! `df_l2_v1`, `df_neigh_v1`, `df_flood_v1`, `df_routes_v1` and `df_devmap_v1`.
//!
//! Fill rules (issue 3):
//! - every lswitch with at least one port or router interface is installed on every
//!   chassis (a VM here may send to, or route to, any port of it);
//! - L2 (network, MAC): a bound port's MAC → `DEST_LOCAL{tap ifindex}` when it is bound
//!   here and its tap is programmed, `DEST_REMOTE{tunnel_ip}` when bound to another chassis
//!   whose `chassis/` record exists (a chassis without a record — stopped, or its lease
//!   expired — contributes nothing: its ports are unknown unicast until it is back). An
//!   allowed-address-pair MAC is added with its port's destination when exactly one port
//!   of the network uses it; a MAC several ports share (a VRRP virtual MAC) is left out for
//!   now: which port gets it is the AAP-mode issue's decision. A router interface MAC →
//!   `DEST_ROUTER{router_id}`. `mtu` is always the network's.
//! - neighbours (network, IP) → MAC: router interface IPs (`NEIGH_F_ROUTER`); fixed IPs of
//!   ports that have an L2 destination (`NEIGH_F_FIXED`: the responder only answers for
//!   addresses it can deliver to); single-IP AAPs listed by exactly one port of the
//!   network, with that AAP's MAC, when that MAC has an L2 entry for the port
//!   (`NEIGH_F_AAP`). A VIP two ports share is not answered (the AAP-mode issue decides).
//!   First writer wins on a clash: router interfaces, then fixed IPs, then AAPs, each in
//!   id order.
//! - flood lists, per network with a programmed local port: the local taps (by port id),
//!   then one `DEST_REMOTE` per other live chassis hosting bound ports of the network (by
//!   chassis name, one per tunnel IP). Longer than `FLOOD_MAX`: cut to the first
//!   `FLOOD_MAX` (locals first), reported in [`Desired::flood_overflow`].
//! - routes: per router interface, its prefix (host bits cleared) under the router's id
//!   → {net_id of its lswitch, interface MAC}.
//! - devmap: every programmed local tap → itself.
//!
//! Router ids: the datapath keys routes by a u32; [`router_id`] derives it from the
//! router's id string with 32-bit FNV-1a, so every chassis computes the same number with
//! no coordination. Two routers hashing alike are detected here: the one with the lower id
//! keeps the number, the other is skipped with a warning (renaming either resolves it).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        DEST_LOCAL, DEST_REMOTE, DEST_ROUTER, FLOOD_MAX, FloodDest, FloodList, L2Dest, L2Key,
        NEIGH_F_AAP, NEIGH_F_FIXED, NEIGH_F_ROUTER, NeighKey, NeighValue, ROUTE_FIXED_BITS,
        RouteDest, RouteKey,
    },
};
use serde::Serialize;

use crate::{
    nb::{IpPrefix, LPort, LRouter, LRouterPort, MacAddr},
    reconcile::{Desired, NbSnapshot, PortState, RouteLpmKey},
};

/// The datapath's id of a router: 32-bit FNV-1a of its id string (0 is mapped to 1 so
/// that a zeroed `L2Dest` never names a router).
pub fn router_id(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 { 1 } else { h }
}

/// What one network looks like from this chassis (for /state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkView {
    pub lswitch: String,
    pub net_id: u32,
    /// Local ports of the network whose taps are programmed.
    pub local_ports: Vec<String>,
    /// Live chassis hosting ports of the network (not this one).
    pub remote_chassis: Vec<String>,
    /// Routers with an interface on it.
    pub routers: Vec<String>,
    /// Destinations in its flood list (`None`: no local port, so no flood list here).
    pub flood_len: Option<usize>,
}

/// The IPv4 a chassis record's tunnel_ip gives the datapath, or why it cannot be used.
pub fn tunnel_v4(ip: IpAddr) -> Result<[u8; 4], &'static str> {
    match ip {
        IpAddr::V6(_) => Err("IPv6 (the VXLAN underlay is IPv4 only for now)"),
        IpAddr::V4(a) if a.is_unspecified() || a.is_loopback() || a.is_multicast() => {
            Err("not an address another chassis can reach")
        }
        IpAddr::V4(a) if a.is_broadcast() => Err("not an address another chassis can reach"),
        IpAddr::V4(a) => Ok(a.octets()),
    }
}

pub fn neigh_key(net_id: u32, ip: IpAddr) -> NeighKey {
    let (family, ip) = ip16(ip);
    NeighKey {
        net_id,
        family,
        _pad: [0; 3],
        ip,
    }
}

/// The LPM key of a router interface's connected prefix (host bits cleared: the trie
/// would keep them, and a later read-back must compare equal).
pub fn route_key(router_id: u32, prefix: &IpPrefix) -> RouteLpmKey {
    let (family, ip) = ip16(prefix.network());
    RouteLpmKey {
        prefix_len: ROUTE_FIXED_BITS + u32::from(prefix.len),
        key: RouteKey {
            router_id,
            family,
            _pad: [0; 3],
            ip,
        },
    }
}

fn ip16(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

/// Fills the forwarding maps of `out` (whose port entries and local port states
/// `reconcile::desired` has computed) and its network views.
pub(crate) fn compute(me: &str, nb: &NbSnapshot, out: &mut Desired) {
    // Live chassis we can tunnel to.
    let my_ip = nb.chassis.get(me).and_then(|c| tunnel_v4(c.tunnel_ip).ok());
    let mut remote: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
    for (name, c) in &nb.chassis {
        if name == me {
            continue;
        }
        match tunnel_v4(c.tunnel_ip) {
            Ok(ip) if Some(ip) == my_ip => {
                out.warnings.insert(format!(
                    "chassis {name} has this chassis' tunnel_ip {}; ignored",
                    c.tunnel_ip
                ));
            }
            Ok(ip) => {
                remote.insert(name, ip);
            }
            Err(why) => {
                out.warnings.insert(format!(
                    "chassis {name}: tunnel_ip {} is {why}; its ports are unreachable from here",
                    c.tunnel_ip
                ));
            }
        }
    }
    out.remote_chassis = remote.keys().map(|s| s.to_string()).collect();

    let local: BTreeMap<&str, u32> = out
        .local_ports
        .iter()
        .filter_map(|p| match p.state {
            PortState::Programmed { ifindex } => Some((p.id.as_str(), ifindex)),
            _ => None,
        })
        .collect();

    // Routers, with collision-checked ids.
    let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
    let mut ifaces: BTreeMap<&str, Vec<(u32, &LRouter, &LRouterPort)>> = BTreeMap::new();
    for r in nb.lrouters.values() {
        let rid = router_id(&r.id);
        if let Some(other) = ids.get(&rid) {
            out.warnings.insert(format!(
                "lrouter {} has the same datapath id ({rid:#x}, FNV-1a of the id) as lrouter \
                 {other}; it is not installed: rename one of them",
                r.id
            ));
            continue;
        }
        ids.insert(rid, &r.id);
        for rp in &r.ports {
            if nb.lswitches.contains_key(&rp.lswitch) {
                ifaces.entry(&rp.lswitch).or_default().push((rid, r, rp));
            } else {
                out.warnings.insert(format!(
                    "lrouter {} interface {} is on unknown lswitch {}; skipped",
                    r.id, rp.id, rp.lswitch
                ));
            }
        }
    }

    let mut ports_by_net: BTreeMap<&str, Vec<&LPort>> = BTreeMap::new();
    for p in nb.lports.values() {
        if nb.lswitches.contains_key(&p.lswitch) {
            ports_by_net.entry(&p.lswitch).or_default().push(p);
        }
    }
    let nets: BTreeSet<&str> = ports_by_net.keys().chain(ifaces.keys()).copied().collect();

    let e = &mut out.entries;
    for net in nets {
        let ls = &nb.lswitches[net];
        let (net_id, mtu) = (ls.segmentation_id, ls.mtu);
        let ports = ports_by_net.get(net).map(Vec::as_slice).unwrap_or_default();
        let mut view = NetworkView {
            lswitch: net.to_string(),
            net_id,
            ..Default::default()
        };
        // Who claimed an L2 MAC / a neighbour IP first (for the clash warnings).
        let mut l2_owner: BTreeMap<MacAddr, String> = BTreeMap::new();
        let mut neigh_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
        let mut warn = |what: String| {
            out.warnings.insert(format!("lswitch {net}: {what}"));
        };

        for &(rid, r, rp) in ifaces.get(net).map(Vec::as_slice).unwrap_or_default() {
            let who = format!("lrouter {} interface {}", r.id, rp.id);
            let dest = L2Dest {
                kind: DEST_ROUTER,
                mtu,
                router_id: rid,
                ..Default::default()
            };
            if claim(&mut l2_owner, rp.mac, &who, &mut warn, "MAC") {
                e.l2.insert(L2Key::new(net_id, rp.mac.0), dest);
            }
            // Every address of the interface (IPv4 and IPv6 on a dual-stack network):
            // answered for (ARP/ND, ping) and its prefix routed to this network.
            for ip in rp.addrs() {
                if claim(&mut neigh_owner, ip.addr, &who, &mut warn, "IP") {
                    e.neigh.insert(
                        neigh_key(net_id, ip.addr),
                        NeighValue {
                            mac: rp.mac.0,
                            flags: NEIGH_F_ROUTER,
                        },
                    );
                }
                e.routes.insert(
                    route_key(rid, ip),
                    RouteDest {
                        net_id,
                        mac: rp.mac.0,
                        _pad: [0; 2],
                    },
                );
            }
            view.routers.push(r.id.clone());
        }

        let dest_of = |p: &LPort| -> Option<L2Dest> {
            let chassis = p.chassis.as_deref()?;
            if chassis == me {
                local.get(p.id.as_str()).map(|&ifindex| L2Dest {
                    kind: DEST_LOCAL,
                    mtu,
                    ifindex,
                    ..Default::default()
                })
            } else {
                remote.get(chassis).map(|&remote_ip| L2Dest {
                    kind: DEST_REMOTE,
                    mtu,
                    remote_ip,
                    ..Default::default()
                })
            }
        };
        // Every MAC a port of the network may send from, and every single-IP AAP, with the
        // ports using it (bound or not: a VIP is shared even if one holder is unbound).
        let mut mac_users: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
        let mut vip_users: BTreeMap<IpAddr, BTreeSet<&str>> = BTreeMap::new();
        for p in ports {
            mac_users.entry(p.mac).or_default().insert(&p.id);
            for a in &p.allowed_address_pairs {
                mac_users.entry(p.aap_mac(a)).or_default().insert(&p.id);
                if a.ip_address.is_host() {
                    vip_users
                        .entry(a.ip_address.addr)
                        .or_default()
                        .insert(&p.id);
                }
            }
        }

        // Own MACs and fixed IPs first, so that an AAP never displaces them.
        let mut remote_hosts: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
        let mut locals: Vec<u32> = Vec::new();
        for p in ports {
            let Some(dest) = dest_of(p) else { continue };
            let chassis = p.chassis.as_deref().unwrap_or_default();
            if dest.kind == DEST_LOCAL {
                locals.push(dest.ifindex);
                view.local_ports.push(p.id.clone());
            } else {
                remote_hosts.insert(chassis, dest.remote_ip);
            }
            let who = format!("lport {}", p.id);
            if claim(&mut l2_owner, p.mac, &who, &mut warn, "MAC") {
                e.l2.insert(L2Key::new(net_id, p.mac.0), dest);
            }
            for ip in &p.fixed_ips {
                if claim(&mut neigh_owner, *ip, &who, &mut warn, "IP") {
                    e.neigh.insert(
                        neigh_key(net_id, *ip),
                        NeighValue {
                            mac: p.mac.0,
                            flags: NEIGH_F_FIXED,
                        },
                    );
                }
            }
        }
        for p in ports {
            let Some(dest) = dest_of(p) else { continue };
            // MACs whose L2 entry leads to this port.
            let mut reachable = BTreeSet::from([p.mac]);
            for a in &p.allowed_address_pairs {
                let mac = p.aap_mac(a);
                if mac == p.mac || reachable.contains(&mac) {
                    continue;
                }
                if mac_users.get(&mac).is_some_and(|u| u.len() == 1) && !l2_owner.contains_key(&mac)
                {
                    l2_owner.insert(mac, format!("lport {}", p.id));
                    e.l2.insert(L2Key::new(net_id, mac.0), dest);
                    reachable.insert(mac);
                }
            }
            for a in &p.allowed_address_pairs {
                let (ip, mac) = (a.ip_address.addr, p.aap_mac(a));
                if a.ip_address.is_host()
                    && vip_users.get(&ip).is_some_and(|u| u.len() == 1)
                    && reachable.contains(&mac)
                    && !neigh_owner.contains_key(&ip)
                {
                    neigh_owner.insert(ip, format!("lport {}", p.id));
                    e.neigh.insert(
                        neigh_key(net_id, ip),
                        NeighValue {
                            mac: mac.0,
                            flags: NEIGH_F_AAP,
                        },
                    );
                }
            }
        }

        view.remote_chassis = remote_hosts.keys().map(|s| s.to_string()).collect();
        if !locals.is_empty() {
            let mut dests: Vec<FloodDest> = locals
                .iter()
                .map(|&ifindex| FloodDest {
                    kind: u32::from(DEST_LOCAL),
                    ifindex,
                    ..Default::default()
                })
                .collect();
            let mut seen_ips = BTreeSet::new();
            for ip in remote_hosts.values() {
                if seen_ips.insert(*ip) {
                    dests.push(FloodDest {
                        kind: u32::from(DEST_REMOTE),
                        remote_ip: *ip,
                        ..Default::default()
                    });
                }
            }
            if dests.len() > FLOOD_MAX {
                out.flood_overflow.insert(net_id, dests.len());
                dests.truncate(FLOOD_MAX);
            }
            let mut list = FloodList {
                len: dests.len() as u32,
                mtu,
                ..Default::default()
            };
            list.dests[..dests.len()].copy_from_slice(&dests);
            e.flood.insert(net_id, list);
            view.flood_len = Some(dests.len());
        }
        out.networks.push(view);
    }
    for &ifindex in local.values() {
        e.devmap.insert(ifindex, ifindex);
    }
}

/// Records `who` as the owner of `key` unless someone already is (then warns, returns
/// false).
fn claim<K: Ord + Copy + std::fmt::Display>(
    owners: &mut BTreeMap<K, String>,
    key: K,
    who: &str,
    warn: &mut impl FnMut(String),
    what: &str,
) -> bool {
    match owners.get(&key) {
        Some(first) => {
            warn(format!(
                "{what} {key} of {who} is also {first}'s; {first} keeps it"
            ));
            false
        }
        None => {
            owners.insert(key, who.to_string());
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        nb::{AllowedAddressPair, Chassis, LSwitch},
        reconcile::{Desired, desired},
    };

    fn ls(id: &str, vni: u32) -> LSwitch {
        LSwitch {
            id: id.into(),
            name: String::new(),
            segmentation_id: vni,
            mtu: 1450,
            aap_mode: None,
        }
    }

    fn port(id: &str, net: &str, n: u8, chassis: Option<&str>) -> LPort {
        LPort {
            id: id.into(),
            lswitch: net.into(),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]),
            fixed_ips: vec![format!("192.0.2.{n}").parse().unwrap()],
            allowed_address_pairs: vec![],
            port_security_enabled: true,
            security_groups: vec![],
            chassis: chassis.map(Into::into),
            ifname: None,
            device_owner: String::new(),
        }
    }

    fn chassis(name: &str, ip: &str) -> (String, Chassis) {
        (
            name.into(),
            Chassis {
                name: name.into(),
                tunnel_ip: ip.parse().unwrap(),
                aap_mode: Default::default(),
                version: String::new(),
            },
        )
    }

    fn aap(ip: &str, mac: Option<&str>) -> AllowedAddressPair {
        AllowedAddressPair {
            ip_address: ip.parse().unwrap(),
            mac_address: mac.map(|m| m.parse().unwrap()),
        }
    }

    fn nb(ports: Vec<LPort>, routers: Vec<LRouter>) -> NbSnapshot {
        NbSnapshot {
            lswitches: BTreeMap::from([("n1".into(), ls("n1", 100)), ("n2".into(), ls("n2", 200))]),
            lports: ports.into_iter().map(|p| (p.id.clone(), p)).collect(),
            lrouters: routers.into_iter().map(|r| (r.id.clone(), r)).collect(),
            chassis: BTreeMap::from([
                chassis("hv1", "198.18.0.1"),
                chassis("hv2", "198.18.0.2"),
                chassis("hv3", "198.18.0.3"),
            ]),
            ..Default::default()
        }
    }

    fn run(nb: &NbSnapshot, taps: &[(&str, u32)]) -> Desired {
        let taps = taps.iter().map(|(n, i)| (n.to_string(), *i)).collect();
        desired("hv1", nb, &taps)
    }

    fn l2(d: &Desired, net: u32, n: u8) -> Option<L2Dest> {
        d.entries
            .l2
            .get(&L2Key::new(net, [0xfa, 0x16, 0x3e, 0, 0, n]))
            .copied()
    }

    fn neigh(d: &Desired, net: u32, ip: &str) -> Option<NeighValue> {
        d.entries
            .neigh
            .get(&neigh_key(net, ip.parse().unwrap()))
            .copied()
    }

    #[test]
    fn l2_local_remote_dead_and_unbound() {
        let mut n = nb(
            vec![
                port("a", "n1", 1, Some("hv1")),
                port("b", "n1", 2, Some("hv2")),
                port("c", "n1", 3, Some("hv9")), // no chassis record: dead
                port("d", "n1", 4, None),
                port("e", "n1", 5, Some("hv1")), // tap missing
            ],
            vec![],
        );
        let d = run(&n, &[("tapa", 7)]);
        assert_eq!(
            l2(&d, 100, 1),
            Some(L2Dest {
                kind: DEST_LOCAL,
                mtu: 1450,
                ifindex: 7,
                ..Default::default()
            })
        );
        assert_eq!(
            l2(&d, 100, 2),
            Some(L2Dest {
                kind: DEST_REMOTE,
                mtu: 1450,
                remote_ip: [198, 18, 0, 2],
                ..Default::default()
            })
        );
        assert_eq!(l2(&d, 100, 3), None);
        assert_eq!(l2(&d, 100, 4), None);
        assert_eq!(l2(&d, 100, 5), None);
        assert_eq!(d.entries.l2.len(), 2);
        // Only reachable ports are answered for.
        assert_eq!(
            neigh(&d, 100, "192.0.2.2"),
            Some(NeighValue {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
                flags: NEIGH_F_FIXED
            })
        );
        assert_eq!(neigh(&d, 100, "192.0.2.3"), None);
        assert_eq!(d.entries.neigh.len(), 2);
        assert_eq!(d.entries.devmap, BTreeMap::from([(7, 7)]));
        assert_eq!(d.remote_chassis, vec!["hv2", "hv3"]);
        let view = &d.networks[0];
        assert_eq!(
            (
                view.local_ports.clone(),
                view.remote_chassis.clone(),
                view.flood_len
            ),
            (vec!["a".to_string()], vec!["hv2".to_string()], Some(2))
        );

        // hv2's lease expires: its ports vanish from L2 and from the flood list.
        n.chassis.remove("hv2");
        let d2 = run(&n, &[("tapa", 7)]);
        assert_eq!(l2(&d2, 100, 2), None);
        assert_eq!(d2.entries.flood[&100].len, 1);
        let diff = d2.entries.diff(&d.entries);
        assert_eq!(diff.l2.remove.len(), 1);
        assert_eq!(diff.flood.upsert.len(), 1);
    }

    #[test]
    fn ipv6_or_loopback_underlay_skipped_with_a_warning() {
        let mut n = nb(vec![port("b", "n1", 2, Some("hv2"))], vec![]);
        n.chassis
            .insert("hv2".into(), chassis("hv2", "2001:db8::2").1);
        let d = run(&n, &[]);
        assert!(d.entries.l2.is_empty());
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("chassis hv2") && w.contains("IPv6")),
            "{:?}",
            d.warnings
        );
        n.chassis
            .insert("hv2".into(), chassis("hv2", "127.0.0.1").1);
        assert!(run(&n, &[]).entries.l2.is_empty());
    }

    #[test]
    fn flood_lists() {
        let n = nb(
            vec![
                port("a", "n1", 1, Some("hv1")),
                port("b", "n1", 2, Some("hv1")),
                port("c", "n1", 3, Some("hv2")),
                port("d", "n1", 4, Some("hv2")),
                port("e", "n1", 5, Some("hv3")),
                port("f", "n2", 6, Some("hv2")), // no local port on n2
            ],
            vec![],
        );
        let d = run(&n, &[("tapa", 7), ("tapb", 8)]);
        let f = &d.entries.flood[&100];
        assert_eq!((f.len, f.mtu), (4, 1450));
        let kinds: Vec<(u32, u32, [u8; 4])> = f.dests[..4]
            .iter()
            .map(|x| (x.kind, x.ifindex, x.remote_ip))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (u32::from(DEST_LOCAL), 7, [0; 4]),
                (u32::from(DEST_LOCAL), 8, [0; 4]),
                (u32::from(DEST_REMOTE), 0, [198, 18, 0, 2]),
                (u32::from(DEST_REMOTE), 0, [198, 18, 0, 3]),
            ]
        );
        assert!(!d.entries.flood.contains_key(&200));
        // n2 is still installed (a VM here may route to it).
        assert!(l2(&d, 200, 6).is_some());
        assert!(d.flood_overflow.is_empty());
    }

    #[test]
    fn flood_overflow_keeps_the_first_flood_max() {
        let mut n = nb(vec![], vec![]);
        let mut taps = Vec::new();
        for i in 0..70u8 {
            let id = format!("p{i:02}");
            n.lports
                .insert(id.clone(), port(&id, "n1", i + 1, Some("hv1")));
            taps.push((format!("tap{id}"), 100 + u32::from(i)));
        }
        let taps: Vec<(&str, u32)> = taps.iter().map(|(t, i)| (t.as_str(), *i)).collect();
        let d = run(&n, &taps);
        let f = &d.entries.flood[&100];
        assert_eq!(f.len as usize, FLOOD_MAX);
        assert_eq!(f.dests[0].ifindex, 100);
        assert_eq!(f.dests[FLOOD_MAX - 1].ifindex, 100 + FLOOD_MAX as u32 - 1);
        assert_eq!(d.flood_overflow, BTreeMap::from([(100, 70)]));
        assert_eq!(d, run(&n, &taps), "deterministic");
    }

    #[test]
    fn aaps_unique_and_shared() {
        let vrrp = "00:00:5e:00:01:01";
        let mut a = port("a", "n1", 1, Some("hv1"));
        let mut b = port("b", "n1", 2, Some("hv2"));
        a.allowed_address_pairs = vec![
            aap("192.0.2.100", Some(vrrp)),                // shared IP and MAC
            aap("192.0.2.101", None),                      // only a's, own MAC
            aap("192.0.2.102", Some("fa:16:3e:00:00:aa")), // only a's, own AAP MAC
            aap("198.51.100.0/24", None),                  // CIDR: never a neighbour
            aap("192.0.2.2", None),                        // b's fixed IP: b keeps it
        ];
        b.allowed_address_pairs = vec![aap("192.0.2.100", Some(vrrp))];
        let d = run(&nb(vec![a, b], vec![]), &[("tapa", 7)]);
        let vrrp_mac: MacAddr = vrrp.parse().unwrap();
        assert!(!d.entries.l2.contains_key(&L2Key::new(100, vrrp_mac.0)));
        assert_eq!(
            neigh(&d, 100, "192.0.2.100"),
            None,
            "shared VIP not answered"
        );
        assert_eq!(
            neigh(&d, 100, "192.0.2.101"),
            Some(NeighValue {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                flags: NEIGH_F_AAP
            })
        );
        let aa: MacAddr = "fa:16:3e:00:00:aa".parse().unwrap();
        assert_eq!(
            d.entries.l2[&L2Key::new(100, aa.0)].ifindex,
            7,
            "a unique AAP MAC goes where its port is"
        );
        assert_eq!(neigh(&d, 100, "192.0.2.102").unwrap().mac, aa.0);
        assert_eq!(neigh(&d, 100, "192.0.2.2").unwrap().flags, NEIGH_F_FIXED);
        assert_eq!(
            neigh(&d, 100, "192.0.2.2").unwrap().mac,
            [0xfa, 0x16, 0x3e, 0, 0, 2]
        );
        assert_eq!(d.entries.neigh.len(), 4);
    }

    fn router(id: &str, ifaces: &[(&str, &str, &str)]) -> LRouter {
        LRouter {
            id: id.into(),
            name: String::new(),
            ports: ifaces
                .iter()
                .map(|(net, mac, ip)| LRouterPort {
                    id: format!("{id}-{net}"),
                    lswitch: net.to_string(),
                    mac: mac.parse().unwrap(),
                    ip: ip.parse().unwrap(),
                    extra_ips: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn routers() {
        let r = router(
            "r1",
            &[
                ("n1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                ("n2", "fa:16:3e:00:01:02", "2001:db8:1::1/64"),
                ("gone", "fa:16:3e:00:01:03", "203.0.113.1/24"),
            ],
        );
        let d = run(
            &nb(vec![port("a", "n1", 1, Some("hv1"))], vec![r]),
            &[("tapa", 7)],
        );
        let rid = router_id("r1");
        assert_eq!(
            d.entries.l2[&L2Key::new(200, [0xfa, 0x16, 0x3e, 0, 1, 2])],
            L2Dest {
                kind: DEST_ROUTER,
                mtu: 1450,
                router_id: rid,
                ..Default::default()
            },
            "a network with only a router interface is installed"
        );
        assert_eq!(neigh(&d, 100, "192.0.2.1").unwrap().flags, NEIGH_F_ROUTER);
        assert_eq!(
            neigh(&d, 200, "2001:db8:1::1").unwrap().flags,
            NEIGH_F_ROUTER
        );
        let k4 = route_key(rid, &"192.0.2.1/24".parse().unwrap());
        assert_eq!(k4.prefix_len, ROUTE_FIXED_BITS + 24);
        assert_eq!(k4.key.ip[..4], [192, 0, 2, 0], "host bits cleared");
        assert_eq!(k4.key.family, FAMILY_V4);
        assert_eq!(
            d.entries.routes[&k4],
            RouteDest {
                net_id: 100,
                mac: [0xfa, 0x16, 0x3e, 0, 1, 1],
                _pad: [0; 2]
            }
        );
        let k6 = route_key(rid, &"2001:db8:1::1/64".parse().unwrap());
        assert_eq!(k6.prefix_len, ROUTE_FIXED_BITS + 64);
        assert_eq!(d.entries.routes[&k6].net_id, 200);
        assert_eq!(d.entries.routes.len(), 2);
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("unknown lswitch gone"))
        );
        assert_eq!(d.networks[0].routers, vec!["r1"]);
    }

    /// A dual-stack interface (one IPv4 and one IPv6 address on one lswitch): one L2
    /// entry for its MAC, a neighbour and a route entry for each address.
    #[test]
    fn dual_stack_interface() {
        let mut r = router(
            "r1",
            &[
                ("n1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                ("n2", "fa:16:3e:00:01:02", "198.51.100.1/24"),
            ],
        );
        r.ports[0].extra_ips = vec!["2001:db8:1::1/64".parse().unwrap()];
        r.ports[1].extra_ips = vec!["2001:db8:2::1/64".parse().unwrap()];
        let d = run(&nb(vec![], vec![r]), &[]);
        let rid = router_id("r1");
        let mac1 = [0xfa, 0x16, 0x3e, 0, 1, 1];
        let mac2 = [0xfa, 0x16, 0x3e, 0, 1, 2];
        assert_eq!(d.entries.l2.len(), 2, "one L2 entry per interface MAC");
        assert_eq!(d.entries.l2[&L2Key::new(100, mac1)].kind, DEST_ROUTER);
        for (net, ip, mac) in [
            (100, "192.0.2.1", mac1),
            (100, "2001:db8:1::1", mac1),
            (200, "198.51.100.1", mac2),
            (200, "2001:db8:2::1", mac2),
        ] {
            assert_eq!(
                neigh(&d, net, ip),
                Some(NeighValue {
                    mac,
                    flags: NEIGH_F_ROUTER
                }),
                "{ip}"
            );
        }
        assert_eq!(d.entries.neigh.len(), 4);
        for (prefix, net, mac) in [
            ("192.0.2.1/24", 100, mac1),
            ("2001:db8:1::1/64", 100, mac1),
            ("198.51.100.1/24", 200, mac2),
            ("2001:db8:2::1/64", 200, mac2),
        ] {
            assert_eq!(
                d.entries.routes[&route_key(rid, &prefix.parse().unwrap())],
                RouteDest {
                    net_id: net,
                    mac,
                    _pad: [0; 2]
                },
                "{prefix}"
            );
        }
        assert_eq!(d.entries.routes.len(), 4);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(d.networks.len(), 2);
    }

    #[test]
    fn router_ids_are_stable_and_collisions_detected() {
        assert_eq!(router_id(""), 0x811c_9dc5);
        assert_eq!(router_id("a"), 0xe40c_292c);
        assert_eq!(router_id("costarring"), router_id("liquid"));
        let d = run(
            &nb(
                vec![],
                vec![
                    router("costarring", &[("n1", "fa:16:3e:00:01:01", "192.0.2.1/24")]),
                    router("liquid", &[("n2", "fa:16:3e:00:01:02", "198.51.100.1/24")]),
                ],
            ),
            &[],
        );
        assert_eq!(d.entries.routes.len(), 1);
        assert!(d.entries.routes.keys().all(|k| k.key.ip[0] == 192));
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("lrouter liquid has the same datapath id"))
        );
    }
}
