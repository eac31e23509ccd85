//! Allowed-address pairs of one network: unique ones like fixed addresses, shared ones
//! the broadcast way (groups) or, under the detection way, pointed at the active port.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use dragonflow_common::fwd::{
    DEST_GROUP, DEST_LOCAL, DEST_REMOTE, GROUP_M_F_FIRST, GROUP_MAX, Group, GroupKey, GroupMember,
    L2_F_SHARED_IP, L2Dest, L2Key, NEIGH_F_AAP, NEIGH_F_ACTIVE, NEIGH_F_SHARED, NeighValue,
};

use super::{NetworkView, SharedView, neigh_key};
use crate::{
    desired::reconcile::MapEntries,
    nb::{AapMode, ActivePort, LPort, LSwitch, MacAddr, NbSnapshot},
};

/// What the allowed-address-pair fill of one network needs from [`compute`].
pub(super) struct NetFill<'a> {
    pub(super) net: &'a str,
    pub(super) net_id: u32,
    pub(super) mtu: u16,
    /// The network's effective mode on this chassis.
    pub(super) mode: AapMode,
    pub(super) ports: &'a [&'a LPort],
    /// Where frames to a port go from this chassis (`None`: unbound, dead chassis, no tap).
    pub(super) dest_of: &'a dyn Fn(&LPort) -> Option<L2Dest>,
}

/// Who holds what so far in one network.
pub(super) struct Owners<'a, 'p> {
    /// L2 MAC → who claimed it (for clash warnings).
    pub(super) l2: &'a mut BTreeMap<MacAddr, String>,
    /// Neighbour IP → who claimed it.
    pub(super) neigh: &'a mut BTreeMap<IpAddr, String>,
    /// MAC → the ports its L2 entry leads to.
    pub(super) reach: &'a mut BTreeMap<MacAddr, BTreeSet<&'p str>>,
}

/// The effective AAP mode names, as in etcd and on the command line.
pub fn mode_name(m: AapMode) -> &'static str {
    match m {
        AapMode::Broadcast => "broadcast",
        AapMode::Detection => "detection",
    }
}

/// The allowed-address-pair entries of one network (see the module docs): unique AAP MACs
/// and IPs like fixed ones; shared ones the broadcast way (groups) or, under the
/// detection way with a valid active entry, pointed at the active port.
pub(super) fn aaps<'p>(
    f: &NetFill<'p>,
    active: &BTreeMap<(String, IpAddr), ActivePort>,
    e: &mut MapEntries,
    own: Owners<'_, 'p>,
    warn: &mut impl FnMut(String),
    view: &mut NetworkView,
) {
    let net_id = f.net_id;
    let by_id: BTreeMap<&str, &LPort> = f.ports.iter().map(|p| (p.id.as_str(), *p)).collect();
    // Every MAC a port may send from, and every single-IP AAP with its (port, MAC) pairs;
    // bound or not: a VIP is shared even if one holder is unbound.
    let mut mac_users: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
    let mut vip_users: BTreeMap<IpAddr, BTreeSet<(&str, MacAddr)>> = BTreeMap::new();
    for p in f.ports {
        mac_users.entry(p.mac).or_default().insert(&p.id);
        for a in &p.allowed_address_pairs {
            let mac = p.aap_mac(a);
            mac_users.entry(mac).or_default().insert(&p.id);
            if a.ip_address.is_host() {
                vip_users
                    .entry(a.ip_address.addr)
                    .or_default()
                    .insert((&p.id, mac));
            }
        }
    }
    let holders_of = |pairs: &BTreeSet<(&str, MacAddr)>| -> Vec<String> {
        let ids: BTreeSet<&str> = pairs.iter().map(|(p, _)| *p).collect();
        ids.into_iter().map(String::from).collect()
    };

    // Detection way: the active entries that still hold (the port lists the (IP, MAC)
    // pair and is reachable). Anything else falls back to the broadcast way.
    let mut active_ip: BTreeMap<IpAddr, (&LPort, MacAddr, L2Dest)> = BTreeMap::new();
    if f.mode == AapMode::Detection {
        for (ip, pairs) in &vip_users {
            let Some(a) = active.get(&(f.net.to_string(), *ip)) else {
                continue;
            };
            let holder = by_id
                .get(a.port.as_str())
                .filter(|p| pairs.contains(&(p.id.as_str(), a.mac)))
                .and_then(|p| (f.dest_of)(p).map(|d| (*p, d)));
            match holder {
                Some((p, d)) => {
                    active_ip.insert(*ip, (p, a.mac, d));
                }
                None => warn(format!(
                    "activeport {ip} names lport {} with {}, which does not list that pair or \
                     is unreachable from here; forwarded the broadcast way",
                    a.port, a.mac
                )),
            }
        }
    }
    // A shared MAC used by an active holder is pointed at it (the first IP wins).
    let mut mac_pointer: BTreeMap<MacAddr, (&LPort, L2Dest, IpAddr)> = BTreeMap::new();
    for (ip, (p, mac, d)) in &active_ip {
        if mac_users.get(mac).is_none_or(|u| u.len() < 2) || own.l2.contains_key(mac) {
            continue;
        }
        match mac_pointer.get(mac) {
            Some((q, _, first)) if q.id != p.id => warn(format!(
                "shared MAC {mac} is active on lport {} (for {first}) and on lport {} (for \
                 {ip}); it follows lport {}",
                q.id, p.id, q.id
            )),
            Some(_) => {}
            None => {
                mac_pointer.insert(*mac, (p, *d, *ip));
            }
        }
    }

    // Shared MACs (a port's own MAC is never shared: its owner keeps it).
    for (mac, users) in &mac_users {
        if users.len() < 2 || own.l2.contains_key(mac) {
            continue;
        }
        let key = L2Key::new(net_id, mac.0);
        let mut sv = SharedView {
            address: mac.to_string(),
            kind: "mac",
            holders: users.iter().map(|s| s.to_string()).collect(),
            way: AapMode::Broadcast,
            active_port: None,
            delivered_to: Vec::new(),
        };
        if let Some((p, d, _)) = mac_pointer.get(mac) {
            own.l2.insert(*mac, format!("lport {} (active)", p.id));
            own.reach.entry(*mac).or_default().insert(&p.id);
            e.l2.insert(key, *d);
            sv.way = AapMode::Detection;
            sv.active_port = Some(p.id.clone());
            sv.delivered_to = vec![p.id.clone()];
        } else {
            let members: Vec<(&str, L2Dest, MacAddr)> = users
                .iter()
                .filter_map(|id| (f.dest_of)(by_id[id]).map(|d| (*id, d, *mac)))
                .collect();
            if !members.is_empty() {
                let what = format!("shared MAC {mac}");
                e.groups.insert(
                    GroupKey::mac(net_id, mac.0),
                    group(&members, f.mtu, &what, warn),
                );
                e.l2.insert(
                    key,
                    L2Dest {
                        kind: DEST_GROUP,
                        mtu: f.mtu,
                        ..Default::default()
                    },
                );
                own.l2.insert(*mac, format!("the holders of {what}"));
                let reach = own.reach.entry(*mac).or_default();
                for (id, _, _) in &members {
                    reach.insert(id);
                    sv.delivered_to.push(id.to_string());
                }
            }
        }
        view.shared.push(sv);
    }
    // AAP MACs of exactly one port: like its own MAC.
    for p in f.ports {
        let Some(dest) = (f.dest_of)(p) else { continue };
        for a in &p.allowed_address_pairs {
            let mac = p.aap_mac(a);
            if mac_users.get(&mac).is_some_and(|u| u.len() == 1) && !own.l2.contains_key(&mac) {
                own.l2.insert(mac, format!("lport {}", p.id));
                own.reach.entry(mac).or_default().insert(&p.id);
                e.l2.insert(L2Key::new(net_id, mac.0), dest);
            }
        }
    }

    // Single-IP AAPs. A fixed IP or a router interface keeps its address.
    for (ip, pairs) in &vip_users {
        if own.neigh.contains_key(ip) {
            continue;
        }
        let holders = holders_of(pairs);
        let nkey = neigh_key(net_id, *ip);
        if let Some((p, mac, _)) = active_ip.get(ip)
            && reaches(own.reach, &p.id, mac)
        {
            own.neigh.insert(*ip, format!("lport {} (active)", p.id));
            let shared = holders.len() > 1;
            e.neigh.insert(
                nkey,
                NeighValue {
                    mac: mac.0,
                    flags: if shared {
                        NEIGH_F_AAP | NEIGH_F_ACTIVE
                    } else {
                        NEIGH_F_AAP
                    },
                },
            );
            if shared {
                flag_holder_macs(e, net_id, pairs, own.reach);
                view.shared.push(SharedView {
                    address: ip.to_string(),
                    kind: "ip",
                    holders,
                    way: AapMode::Detection,
                    active_port: Some(p.id.clone()),
                    delivered_to: vec![p.id.clone()],
                });
            }
            continue;
        }
        if holders.len() == 1 {
            // Answered with the first of its MACs that leads to the port.
            if let Some((p, mac)) = pairs.iter().find(|(p, m)| reaches(own.reach, p, m)) {
                own.neigh.insert(*ip, format!("lport {p}"));
                e.neigh.insert(
                    nkey,
                    NeighValue {
                        mac: mac.0,
                        flags: NEIGH_F_AAP,
                    },
                );
            }
            continue;
        }
        // The broadcast way: never answered, never flooded; copies to every reachable
        // holder (an empty group still keeps ARP for it from being flooded).
        let members: Vec<(&str, L2Dest, MacAddr)> = pairs
            .iter()
            .filter_map(|(id, mac)| (f.dest_of)(by_id[id]).map(|d| (*id, d, *mac)))
            .collect();
        let what = format!("shared IP {ip}");
        e.groups
            .insert(GroupKey::ip(&nkey), group(&members, f.mtu, &what, warn));
        e.neigh.insert(
            nkey,
            NeighValue {
                mac: [0; 6],
                flags: NEIGH_F_SHARED,
            },
        );
        own.neigh.insert(*ip, format!("the holders of {what}"));
        flag_holder_macs(e, net_id, pairs, own.reach);
        let mut delivered: Vec<String> = members.iter().map(|(id, _, _)| id.to_string()).collect();
        delivered.dedup();
        view.shared.push(SharedView {
            address: ip.to_string(),
            kind: "ip",
            holders,
            way: AapMode::Broadcast,
            active_port: None,
            delivered_to: delivered,
        });
    }
}

/// The L2 entry of `mac` leads to `port`.
pub(super) fn reaches(
    reach: &BTreeMap<MacAddr, BTreeSet<&str>>,
    port: &str,
    mac: &MacAddr,
) -> bool {
    reach.get(mac).is_some_and(|s| s.contains(port))
}

/// Packets to the MAC a holder lists a shared IP with are checked for that IP (see
/// `L2_F_SHARED_IP`): the L2 entries of those MACs (a holder's, or a shared MAC's) are
/// flagged. `pairs`: the (port, MAC) pairs listing the IP.
pub(super) fn flag_holder_macs(
    e: &mut MapEntries,
    net_id: u32,
    pairs: &BTreeSet<(&str, MacAddr)>,
    reach: &BTreeMap<MacAddr, BTreeSet<&str>>,
) {
    for (id, mac) in pairs {
        if let Some(d) = e.l2.get_mut(&L2Key::new(net_id, mac.0))
            && (d.kind == DEST_GROUP || reaches(reach, id, mac))
        {
            d.flags |= L2_F_SHARED_IP;
        }
    }
}

/// A group of `members` (port, destination, MAC for the address), locals first, without
/// duplicate (tap or chassis, MAC) copies; the first member of each tap/chassis flagged
/// `GROUP_M_F_FIRST`. More than `GROUP_MAX` distinct members: cut, with a warning.
pub(super) fn group(
    members: &[(&str, L2Dest, MacAddr)],
    mtu: u16,
    what: &str,
    warn: &mut impl FnMut(String),
) -> Group {
    let mut out: Vec<GroupMember> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut first = BTreeSet::new();
    let locals = members.iter().filter(|m| m.1.kind == DEST_LOCAL);
    let remotes = members.iter().filter(|m| m.1.kind == DEST_REMOTE);
    for (_, d, mac) in locals.chain(remotes) {
        // A tap is named by its ifindex, a chassis by its tunnel IP.
        let at = (d.kind, d.ifindex, d.remote_ip);
        if !seen.insert((at, *mac)) {
            continue;
        }
        out.push(GroupMember {
            kind: d.kind,
            flags: if first.insert(at) { GROUP_M_F_FIRST } else { 0 },
            mac: mac.0,
            ifindex: d.ifindex,
            remote_ip: d.remote_ip,
        });
    }
    if out.len() > GROUP_MAX {
        warn(format!(
            "{what} has {} destinations; only the first {GROUP_MAX} (local ones first) get \
             copies",
            out.len()
        ));
        out.truncate(GROUP_MAX);
    }
    let mut g = Group {
        len: out.len() as u32,
        mtu,
        ..Default::default()
    };
    g.members[..out.len()].copy_from_slice(&out);
    g
}

/// The live chassis hosting bound ports of the network and the AAP mode each would use
/// for it, when they are not all the same (`None` when they agree or the lswitch
/// overrides the mode).
pub(super) fn disagreement(
    nb: &NbSnapshot,
    ls: &LSwitch,
    ports: &[&LPort],
) -> Option<BTreeMap<String, AapMode>> {
    if ls.aap_mode.is_some() {
        return None;
    }
    let modes: BTreeMap<String, AapMode> = ports
        .iter()
        .filter_map(|p| p.chassis.as_deref())
        .filter_map(|c| nb.chassis.get(c).map(|r| (c.to_string(), r.aap_mode)))
        .collect();
    let first = modes.values().next()?;
    modes.values().any(|m| m != first).then_some(modes)
}

/// Records `who` as the owner of `key` unless someone already is (then warns, returns
/// false).
pub(super) fn claim<K: Ord + Copy + std::fmt::Display>(
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
