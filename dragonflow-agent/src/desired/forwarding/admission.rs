//! Tunnel admission of a network hosted here: which remote chassis may send its frames
//! and with which source MACs.

use std::collections::{BTreeMap, BTreeSet};

use dragonflow_common::fwd::{
    DEST_REMOTE, DEST_ROUTER, L2Dest, L2Key, TUN_F_PORT, TUN_F_ROUTER, TUN_F_UNSECURED, TunPeerKey,
    TunSrcKey,
};

use crate::{
    desired::reconcile::MapEntries,
    nb::{LPort, LRouter, LRouterPort, MacAddr},
};

/// Tunnel admission of one network hosted here (see the module docs): the live chassis
/// that may send its frames (`tun_peers`) and the source MACs each may use
/// (`tun_srcs`), from the network's ports (`ports`), its router interfaces (`routed`), the
/// chassis hosting every network those routers connect (`hosts`) and the live remote
/// chassis (`remote`); `e.l2` already holds the network's L2 entries.
pub(super) fn admission(
    net_id: u32,
    ports: &[&LPort],
    routed: &[(u32, &LRouter, &LRouterPort)],
    hosts: &BTreeMap<String, BTreeSet<[u8; 4]>>,
    remote: &BTreeMap<&str, [u8; 4]>,
    e: &mut MapEntries,
) {
    let bound_to = |p: &LPort| p.chassis.as_deref().and_then(|c| remote.get(c)).copied();
    // An allowed-address-pair MAC several ports list (a VRRP MAC): whichever holder's
    // chassis sends it, under either AAP way. A port's own MAC is never shared (its owner
    // keeps it, as in L2).
    let own: BTreeSet<MacAddr> = ports.iter().map(|p| p.mac).collect();
    let mut aap_users: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
    for p in ports {
        for a in &p.allowed_address_pairs {
            aap_users.entry(p.aap_mac(a)).or_default().insert(&p.id);
        }
    }
    let l2_of =
        |l2: &BTreeMap<L2Key, L2Dest>, mac: MacAddr| l2.get(&L2Key::new(net_id, mac.0)).copied();
    for p in ports {
        let Some(ip) = bound_to(p) else { continue };
        *e.tun_peers.entry(peer_key(net_id, ip)).or_default() |= TUN_F_PORT;
        let macs =
            std::iter::once(p.mac).chain(p.allowed_address_pairs.iter().map(|a| p.aap_mac(a)));
        for mac in macs {
            // The MAC's L2 entry leads to this chassis (its own MAC, a MAC only it lists,
            // or the active holder's under the detection way)...
            let leads_here =
                l2_of(&e.l2, mac).is_some_and(|d| d.kind == DEST_REMOTE && d.remote_ip == ip);
            // ... or several ports share it. A MAC whose entry is a local port's or a
            // router's is not this chassis' to send.
            let shared = !own.contains(&mac)
                && aap_users.get(&mac).is_some_and(|u| u.len() > 1)
                && l2_of(&e.l2, mac).is_none_or(|d| d.kind != DEST_ROUTER);
            if !(leads_here || shared) {
                continue;
            }
            let mut f = TUN_F_PORT;
            if !p.port_security_enabled && mac == p.mac {
                f |= TUN_F_UNSECURED;
            }
            *e.tun_srcs.entry(src_key(net_id, ip, mac)).or_default() |= f;
        }
    }
    // Distributed routing: a chassis hosting ports of any network of a router sends
    // routed frames into each of them, from the router's MAC there.
    for &(rid, r, rp) in routed {
        if !l2_of(&e.l2, rp.mac).is_some_and(|d| d.kind == DEST_ROUTER && d.router_id == rid) {
            continue;
        }
        for other in &r.ports {
            for &ip in hosts.get(other.lswitch.as_str()).into_iter().flatten() {
                *e.tun_peers.entry(peer_key(net_id, ip)).or_default() |= TUN_F_ROUTER;
                *e.tun_srcs.entry(src_key(net_id, ip, rp.mac)).or_default() |= TUN_F_ROUTER;
            }
        }
    }
}

pub fn peer_key(net_id: u32, remote_ip: [u8; 4]) -> TunPeerKey {
    TunPeerKey { net_id, remote_ip }
}

pub fn src_key(net_id: u32, remote_ip: [u8; 4], mac: MacAddr) -> TunSrcKey {
    TunSrcKey::new(net_id, remote_ip, mac.0)
}
