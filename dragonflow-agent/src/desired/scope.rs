//! The part of the northbound this chassis' datapath depends on (pure).
//!
//! A hypervisor needs, for its local ports: their networks, every network a router of
//! those networks connects (distributed routing sends to them from here), every port and
//! live chassis of those networks (L2 destinations, flood lists, tunnel admission, the
//! ARP/ND responder, shared VIPs), the security groups of its ports and the members of
//! the groups their rules name (remote-group rules), and the shared-VIP claims of those
//! networks. Nothing else of the cloud can change a verdict here, so the agent computes
//! its map entries from this part alone: its work grows with what its ports touch, not
//! with the cloud (README: "How the agent's cost grows with the cloud").

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr},
};

use crate::nb::{NbSnapshot, index::NbIndex};

/// Networks a local port of `me` is on, plus those their routers connect.
pub fn networks(me: &str, ix: &NbIndex) -> BTreeSet<String> {
    let local: BTreeSet<&str> = ix
        .ports_on(me)
        .filter_map(|id| ix.port(id))
        .map(|l| &*l.lswitch)
        .collect();
    let mut nets: BTreeSet<String> = local.iter().map(|s| s.to_string()).collect();
    for net in &local {
        for r in ix.routers_on(net) {
            nets.extend(ix.router_nets(r).iter().map(|n| n.to_string()));
        }
    }
    nets
}

/// The records of `nb` the datapath of `me` depends on (see the module docs).
pub fn scope(me: &str, nb: &NbSnapshot, ix: &NbIndex) -> NbSnapshot {
    let nets = networks(me, ix);
    let mut out = NbSnapshot::default();
    for net in &nets {
        if let Some(ls) = nb.lswitches.get(net) {
            out.lswitches.insert(net.clone(), ls.clone());
        }
        for id in ix.ports_in(net) {
            if let Some(p) = nb.lports.get(&**id) {
                out.lports.insert(id.to_string(), p.clone());
            }
        }
        for r in ix.routers_on(net) {
            if !out.lrouters.contains_key(&**r)
                && let Some(router) = nb.lrouters.get(&**r)
            {
                out.lrouters.insert(r.to_string(), router.clone());
            }
        }
        let from = (net.clone(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        for (k, a) in nb.active_ports.range(from..) {
            if &k.0 != net {
                break;
            }
            out.active_ports.insert(k.clone(), a.clone());
        }
    }
    // Security groups: those of the local ports, and the members of the groups their rules
    // name (their addresses are remote-group identities here).
    let mut groups: BTreeSet<&str> = BTreeSet::new();
    for id in ix.ports_on(me) {
        if let Some(l) = ix.port(id) {
            groups.extend(l.groups.iter().map(|g| &**g));
        }
    }
    let mut remote: BTreeSet<&str> = BTreeSet::new();
    for g in &groups {
        if let Some(sg) = nb.secgroups.get(*g) {
            out.secgroups.insert(g.to_string(), sg.clone());
            remote.extend(sg.rules.iter().filter_map(|r| r.remote_group_id.as_deref()));
        }
    }
    for g in remote {
        for id in ix.members(g) {
            if !out.lports.contains_key(&**id)
                && let Some(p) = nb.lports.get(&**id)
            {
                out.lports.insert(id.to_string(), p.clone());
            }
        }
    }
    // Every live chassis: a record that comes or goes changes only the entries of the
    // networks it hosts, and the list is small next to the ports.
    out.chassis = nb.chassis.clone();
    out
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeMap, sync::Arc};

    use super::*;
    use crate::{
        desired::reconcile::desired,
        nb::{Chassis, LPort, LRouter, LSwitch, SecGroup},
    };

    fn port(id: &str, ls: &str, chassis: &str, ip: &str, groups: &[&str]) -> (String, Arc<LPort>) {
        let n = id.trim_start_matches('p').parse::<u8>().expect("pN");
        (
            id.to_string(),
            serde_json::from_value(serde_json::json!({
                "id": id, "lswitch": ls, "mac": format!("fa:16:3e:00:00:{n:02x}"),
                "chassis": chassis, "fixed_ips": [ip], "security_groups": groups,
                "ifname": format!("tap{id}"),
            }))
            .map(Arc::new)
            .expect("port"),
        )
    }

    fn ls(id: &str, vni: u32) -> (String, LSwitch) {
        (
            id.to_string(),
            serde_json::from_value(serde_json::json!({"id": id, "segmentation_id": vni}))
                .expect("lswitch"),
        )
    }

    fn chassis(name: &str, ip: &str) -> (String, Chassis) {
        (
            name.to_string(),
            serde_json::from_value(serde_json::json!({"name": name, "tunnel_ip": ip}))
                .expect("chassis"),
        )
    }

    /// n1 (local) and n2 routed together; n3 unrelated except that p6 there is a member of
    /// g2, which g1 (a local port's group) names.
    fn cloud() -> NbSnapshot {
        let router: LRouter = serde_json::from_value(serde_json::json!({"id": "r1", "ports": [
            {"id": "i1", "lswitch": "n1", "mac": "fa:16:3e:00:01:01", "ip": "192.0.2.1/24"},
            {"id": "i2", "lswitch": "n2", "mac": "fa:16:3e:00:01:02", "ip": "198.51.100.1/24"}
        ]}))
        .expect("router");
        let g1: SecGroup = serde_json::from_value(serde_json::json!({"id": "g1", "rules": [
            {"id": "r1", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": "g2"}
        ]}))
        .expect("group");
        let g3: SecGroup =
            serde_json::from_value(serde_json::json!({"id": "g3", "rules": []})).expect("group");
        NbSnapshot {
            lswitches: BTreeMap::from([ls("n1", 10), ls("n2", 20), ls("n3", 30)]),
            lports: BTreeMap::from([
                port("p1", "n1", "hv1", "192.0.2.10", &["g1"]),
                port("p2", "n1", "hv2", "192.0.2.11", &[]),
                port("p3", "n2", "hv3", "198.51.100.10", &[]),
                port("p4", "n3", "hv4", "203.0.113.10", &["g3"]),
                port("p6", "n3", "hv5", "203.0.113.11", &["g2"]),
            ]),
            lrouters: BTreeMap::from([("r1".to_string(), router)]),
            chassis: BTreeMap::from([
                chassis("hv1", "198.18.0.1"),
                chassis("hv2", "198.18.0.2"),
                chassis("hv3", "198.18.0.3"),
                chassis("hv4", "198.18.0.4"),
                chassis("hv5", "198.18.0.5"),
            ]),
            secgroups: BTreeMap::from([("g1".to_string(), g1), ("g3".to_string(), g3)]),
            active_ports: BTreeMap::new(),
        }
    }

    #[test]
    fn scope_holds_what_local_ports_depend_on() {
        let nb = cloud();
        let s = scope("hv1", &nb, &NbIndex::of(&nb));
        assert_eq!(s.lswitches.keys().collect::<Vec<_>>(), ["n1", "n2"]);
        // p6 is there as a member of g2, but its network is not.
        assert_eq!(
            s.lports.keys().collect::<Vec<_>>(),
            ["p1", "p2", "p3", "p6"]
        );
        assert_eq!(s.lrouters.len(), 1);
        assert_eq!(s.chassis.len(), 5);
        assert_eq!(s.secgroups.keys().collect::<Vec<_>>(), ["g1"]);
    }

    /// The entries computed from the scope are exactly those computed from the whole cloud
    /// for everything a local port can reach.
    #[test]
    fn scope_gives_the_same_entries_for_local_networks() {
        let nb = cloud();
        let taps = BTreeMap::from([("tapp1".to_string(), 7)]);
        let full = desired("hv1", &nb, &taps);
        let part = desired("hv1", &scope("hv1", &nb, &NbIndex::of(&nb)), &taps);
        let n3 = 30;
        let mut want = full.entries.clone();
        want.l2.retain(|k, _| k.net_id != n3);
        want.neigh.retain(|k, _| k.net_id != n3);
        assert_eq!(part.entries, want);
        assert!(full.entries.l2.keys().any(|k| k.net_id == n3));
    }
}
