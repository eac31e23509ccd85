use std::collections::BTreeMap;

use dragonflow_common::fwd::{
    DEST_GROUP, DEST_LOCAL, DEST_REMOTE, DEST_ROUTER, FLOOD_MAX, GROUP_M_F_FIRST, GROUP_MAX,
    GroupKey, L2_F_SHARED_IP, L2Dest, L2Key, NEIGH_F_AAP, NEIGH_F_ACTIVE, NEIGH_F_FIXED,
    NEIGH_F_ROUTER, NEIGH_F_SHARED, NeighValue, RouteDest, TUN_F_PORT, TUN_F_ROUTER,
    TUN_F_UNSECURED,
};

use super::*;
use crate::{
    desired::reconcile::{Desired, desired},
    nb::{ActivePort, AllowedAddressPair, Chassis, LRouter, LRouterPort, LSwitch, MacAddr},
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
        admin_state_up: true,
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
            instance: String::new(),
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
        lports: ports
            .into_iter()
            .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
            .collect(),
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
            .insert(id.clone(), port(&id, "n1", i + 1, Some("hv1")).into());
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

const VRRP: &str = "00:00:5e:00:01:07";

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn group_of(d: &Desired, key: GroupKey) -> Vec<(u8, u8, MacAddr, u32, [u8; 4])> {
    let g = d
        .entries
        .groups
        .get(&key)
        .unwrap_or_else(|| panic!("no group {key:?}: {:?}", d.entries.groups.keys()));
    g.members[..g.len as usize]
        .iter()
        .map(|m| (m.kind, m.flags, MacAddr(m.mac), m.ifindex, m.remote_ip))
        .collect()
}

fn ip_group(net: u32, ip: &str) -> GroupKey {
    GroupKey::ip(&neigh_key(net, ip.parse().unwrap()))
}

const HV2: [u8; 4] = [198, 18, 0, 2];
const HV3: [u8; 4] = [198, 18, 0, 3];
const F: u8 = GROUP_M_F_FIRST;

mod aap;
mod l3;
