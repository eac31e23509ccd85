//! The forwarding state of one network: L2 and neighbour entries of its ports, the flood
//! list, the routes of the router interfaces on it; tunnel admission and shared addresses
//! come from `admission` and `aap`.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use dragonflow_common::fwd::{
    DEST_LOCAL, DEST_REMOTE, DEST_ROUTER, FLOOD_MAX, FloodDest, FloodList, L2Dest, L2Key,
    NEIGH_F_FIXED, NEIGH_F_ROUTER, NeighValue, RouteDest,
};

use super::{
    NetPart, NetworkView,
    aap::{NetFill, Owners, aaps, claim, disagreement, mode_name},
    admission::admission,
    context::Context,
    neigh_key, route_key,
};
use crate::{
    desired::reconcile::MapEntries,
    nb::{LPort, MacAddr, NbSnapshot},
};

/// The forwarding state of network `net` (`ls`) with `ports`, given `hosts`: the remote
/// chassis hosting each network ([`Context::hosts`]) — only those its routers connect
/// are read.
pub(crate) fn network(
    ctx: &Context,
    nb: &NbSnapshot,
    net: &str,
    ports: &[&LPort],
    hosts: &BTreeMap<String, BTreeSet<[u8; 4]>>,
) -> NetPart {
    let mut entries = MapEntries::default();
    let e = &mut entries;
    let mut flood_overflow = None;
    let ls = &nb.lswitches[net];
    let (net_id, mtu) = (ls.segmentation_id, ls.mtu);
    let mut view = NetworkView {
        lswitch: net.to_string(),
        net_id,
        ..Default::default()
    };
    // Who claimed an L2 MAC / a neighbour IP first (for the clash warnings).
    let mut l2_owner: BTreeMap<MacAddr, String> = BTreeMap::new();
    let mut neigh_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut warnings = BTreeSet::new();
    let mut warn = |what: String| {
        warnings.insert(format!("lswitch {net}: {what}"));
    };

    for &(rid, r, rp) in ctx.ifaces.get(net).map(Vec::as_slice).unwrap_or_default() {
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
        if chassis == ctx.me {
            ctx.local.get(p.id.as_str()).map(|&ifindex| L2Dest {
                kind: DEST_LOCAL,
                mtu,
                ifindex,
                ..Default::default()
            })
        } else {
            ctx.remote.get(chassis).map(|&remote_ip| L2Dest {
                kind: DEST_REMOTE,
                mtu,
                remote_ip,
                ..Default::default()
            })
        }
    };
    // Own MACs and fixed IPs first, so that an AAP never displaces them.
    let mut remote_hosts: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
    let mut locals: Vec<u32> = Vec::new();
    // MAC → the ports its L2 entry leads to (own MACs here; AAP MACs in `aaps`).
    let mut reach: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
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
            reach.entry(p.mac).or_default().insert(&p.id);
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
    let fill = NetFill {
        net,
        net_id,
        mtu,
        mode: ls.aap_mode.unwrap_or(ctx.my_mode),
        ports,
        dest_of: &dest_of,
    };
    view.aap_mode = fill.mode;
    let owners = Owners {
        l2: &mut l2_owner,
        neigh: &mut neigh_owner,
        reach: &mut reach,
    };
    aaps(&fill, &nb.active_ports, e, owners, &mut warn, &mut view);
    if let Some(modes) = disagreement(nb, ls, ports) {
        warn(format!(
            "live chassis hosting its ports would forward its shared allowed-address-pair \
             addresses differently ({}); give the network one mode with `aap_mode` in its \
             lswitch record (it overrides every agent's --aap-mode)",
            modes
                .iter()
                .map(|(c, m)| format!("{c}: {}", mode_name(*m)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        view.aap_mode_disagreement = modes;
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
            flood_overflow = Some(dests.len());
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
        let routed = ctx.ifaces.get(net).map(Vec::as_slice).unwrap_or_default();
        admission(net_id, ports, routed, hosts, &ctx.remote, e);
    }
    NetPart {
        entries,
        view: Arc::new(view),
        warnings,
        flood_overflow,
    }
}
