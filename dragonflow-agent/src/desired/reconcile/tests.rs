use dragonflow_common::addr::FAMILY_V6;

use super::*;
use crate::nb::AllowedAddressPair;

const MAC: &str = "fa:16:3e:00:00:01";

fn ls(id: &str, vni: u32) -> LSwitch {
    LSwitch {
        id: id.into(),
        name: id.into(),
        segmentation_id: vni,
        mtu: 1450,
        aap_mode: None,
    }
}

fn port(id: &str, chassis: &str) -> LPort {
    LPort {
        id: id.into(),
        lswitch: "net1".into(),
        mac: MAC.parse().unwrap(),
        fixed_ips: vec!["192.0.2.10".parse().unwrap()],
        allowed_address_pairs: vec![],
        port_security_enabled: true,
        security_groups: vec![],
        chassis: Some(chassis.into()),
        ifname: None,
        device_owner: String::new(),
        admin_state_up: true,
    }
}

fn aap(ip: &str, mac: Option<&str>) -> AllowedAddressPair {
    AllowedAddressPair {
        ip_address: ip.parse().unwrap(),
        mac_address: mac.map(|m| m.parse().unwrap()),
    }
}

fn snapshot(ports: Vec<LPort>) -> NbSnapshot {
    NbSnapshot {
        lswitches: BTreeMap::from([("net1".into(), ls("net1", 100))]),
        lports: ports
            .into_iter()
            .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
            .collect(),
        ..Default::default()
    }
}

fn taps(list: &[(&str, u32)]) -> BTreeMap<String, u32> {
    list.iter().map(|(n, i)| (n.to_string(), *i)).collect()
}

fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn v4(i: u32, m: &str, ip: &str) -> AddrKey {
    addr_key(i, mac(m), ip.parse().unwrap())
}

fn ll(i: u32, m: &str) -> AddrKey {
    AddrKey::v6(i, mac(m).0, link_local_from_mac(mac(m).0))
}

#[test]
fn fixed_ip_port() {
    let d = desired(
        "hv1",
        &snapshot(vec![port("p1", "hv1")]),
        &taps(&[("tapp1", 7)]),
    );
    let e = &d.entries;
    assert_eq!(
        e.ports[&7],
        PortConfig {
            net_id: 100,
            flags: PORT_F_PORT_SECURITY,
            mac: mac(MAC).0,
            mtu: 1450
        }
    );
    assert_eq!(e.addrs.len(), 2);
    assert_eq!(e.addrs[&v4(7, MAC, "192.0.2.10")].flags, ADDR_F_FIXED);
    assert_eq!(e.addrs[&ll(7, MAC)].flags, ADDR_F_LINK_LOCAL);
    assert_eq!(ll(7, MAC).family, FAMILY_V6);
    assert_eq!(ll(7, MAC).ip[..2], [0xfe, 0x80]);
    assert!(e.cidrs.is_empty());
    assert_eq!(
        e.macs,
        BTreeMap::from([(MacKey::new(7, mac(MAC).0), MAC_F_PORT)])
    );
    assert_eq!(d.local_ports[0].state, PortState::Programmed { ifindex: 7 });
    assert_eq!(d.tap_ports["tapp1"], "p1");
}

#[test]
fn host_aaps_with_own_and_default_mac() {
    let mut p = port("p1", "hv1");
    p.fixed_ips.push("2001:db8::10".parse().unwrap());
    p.allowed_address_pairs = vec![
        aap("192.0.2.100", None),
        aap("192.0.2.101", Some("00:00:5e:00:01:01")),
        aap("2001:db8::100", Some("00:00:5e:00:01:01")),
    ];
    let d = desired("hv1", &snapshot(vec![p]), &taps(&[("tapp1", 3)]));
    let e = &d.entries;
    assert_eq!(
        e.ports[&3].flags, PORT_F_PORT_SECURITY,
        "host AAPs only: no CIDR flag"
    );
    assert_eq!(
        e.addrs[&v4(3, MAC, "192.0.2.100")].flags,
        ADDR_F_AAP | ADDR_F_WATCH
    );
    let vrrp = "00:00:5e:00:01:01";
    assert_eq!(
        e.addrs[&v4(3, vrrp, "192.0.2.101")].flags,
        ADDR_F_AAP | ADDR_F_WATCH
    );
    assert_eq!(
        e.addrs[&addr_key(3, mac(vrrp), "2001:db8::100".parse().unwrap())].flags,
        ADDR_F_AAP | ADDR_F_WATCH
    );
    assert_eq!(
        e.addrs[&addr_key(3, mac(MAC), "2001:db8::10".parse().unwrap())].flags,
        ADDR_F_FIXED
    );
    // One link-local per distinct MAC.
    assert_eq!(e.addrs[&ll(3, MAC)].flags, ADDR_F_LINK_LOCAL);
    assert_eq!(e.addrs[&ll(3, vrrp)].flags, ADDR_F_LINK_LOCAL);
    assert_eq!(e.addrs.len(), 7);
    assert_eq!(e.macs.len(), 2);
    assert_eq!(e.macs[&MacKey::new(3, mac(MAC).0)], MAC_F_PORT | MAC_F_AAP);
    assert_eq!(e.macs[&MacKey::new(3, mac(vrrp).0)], MAC_F_AAP);
}

#[test]
fn aap_equal_to_fixed_ip_merges_flags() {
    let mut p = port("p1", "hv1");
    p.allowed_address_pairs = vec![aap("192.0.2.10", None)];
    let d = desired("hv1", &snapshot(vec![p]), &taps(&[("tapp1", 3)]));
    assert_eq!(
        d.entries.addrs[&v4(3, MAC, "192.0.2.10")].flags,
        ADDR_F_FIXED | ADDR_F_AAP | ADDR_F_WATCH
    );
}

#[test]
fn cidr_aap() {
    let mut p = port("p1", "hv1");
    p.allowed_address_pairs = vec![
        aap("198.51.100.77/24", None),
        aap("2001:db8:1::/64", Some("fa:16:3e:00:00:99")),
    ];
    let d = desired("hv1", &snapshot(vec![p]), &taps(&[("tapp1", 9)]));
    let e = &d.entries;
    assert_eq!(e.ports[&9].flags, PORT_F_PORT_SECURITY | PORT_F_CIDR_AAP);
    let k4 = CidrKey {
        prefix_len: LPM_FIXED_BITS + 24,
        key: v4(9, MAC, "198.51.100.0"),
    };
    assert_eq!(e.cidrs[&k4].flags, ADDR_F_AAP, "host bits cleared");
    let k6 = CidrKey {
        prefix_len: LPM_FIXED_BITS + 64,
        key: addr_key(9, mac("fa:16:3e:00:00:99"), "2001:db8:1::".parse().unwrap()),
    };
    assert_eq!(e.cidrs[&k6].flags, ADDR_F_AAP);
    assert_eq!(e.cidrs.len(), 2);
    // CIDR AAPs are never watched and never in the exact map (apart from link-locals).
    assert!(e.addrs.values().all(|v| v.flags & ADDR_F_WATCH == 0));
    assert!(e.addrs.contains_key(&ll(9, "fa:16:3e:00:00:99")));
    assert_eq!(e.macs.len(), 2);
}

#[test]
fn port_security_off() {
    let mut p = port("p1", "hv1");
    p.port_security_enabled = false;
    let d = desired("hv1", &snapshot(vec![p]), &taps(&[("tapp1", 4)]));
    assert_eq!(d.entries.ports[&4].flags, 0);
    assert_eq!(d.entries.ports[&4].net_id, 100);
    assert!(d.entries.addrs.is_empty() && d.entries.cidrs.is_empty() && d.entries.macs.is_empty());
}

#[test]
fn unknown_lswitch_skipped() {
    let mut p = port("p1", "hv1");
    p.lswitch = "nope".into();
    let d = desired(
        "hv1",
        &snapshot(vec![p, port("p2", "hv1")]),
        &taps(&[("tapp1", 4), ("tapp2", 5)]),
    );
    assert_eq!(d.local_ports[0].state, PortState::UnknownLSwitch);
    assert_eq!(d.count("unknown_lswitch"), 1);
    assert!(!d.entries.ports.contains_key(&4));
    assert!(
        d.entries.ifindexes().iter().all(|&i| i == 5),
        "the other port still works"
    );
}

/// `admin_state_up = false`: the port keeps its tap (managed, fail closed) but gets no
/// entry keyed by its tap (forwarding uses only programmed ports).
#[test]
fn admin_down_port_gets_no_entries() {
    let mut down = port("p1", "hv1");
    down.admin_state_up = false;
    let d = desired(
        "hv1",
        &snapshot(vec![down, port("p2", "hv1")]),
        &taps(&[("tapp1", 4), ("tapp2", 5)]),
    );
    assert_eq!(d.local_ports[0].state, PortState::AdminDown);
    assert_eq!(d.count("admin_down"), 1);
    assert!(!d.tap_ports.contains_key("tapp1"));
    assert_eq!(
        d.entries.ifindexes(),
        BTreeSet::from([5]),
        "only the port that is up has entries"
    );
}

#[test]
fn remote_and_unbound_ports_ignored() {
    let mut unbound = port("p3", "hv1");
    unbound.chassis = None;
    let d = desired(
        "hv1",
        &snapshot(vec![port("p2", "hv2"), unbound]),
        &taps(&[("tapp2", 4), ("tapp3", 5)]),
    );
    assert_eq!(d.entries, MapEntries::default());
    assert!(d.local_ports.is_empty());
}

#[test]
fn missing_tap_and_explicit_ifname() {
    let mut p = port("p1", "hv1");
    p.ifname = Some("vm-eth".into());
    let d = desired(
        "hv1",
        &snapshot(vec![p, port("p2", "hv1")]),
        &taps(&[("vm-eth", 11)]),
    );
    assert_eq!(
        d.local_ports[0].state,
        PortState::Programmed { ifindex: 11 }
    );
    assert_eq!(d.local_ports[1].state, PortState::NoTap);
    assert_eq!(d.entries.ifindexes(), BTreeSet::from([11]));
}

#[test]
fn tap_conflict_first_id_wins() {
    let mut a = port("a", "hv1");
    a.ifname = Some("tapx".into());
    let mut b = port("b", "hv1");
    b.ifname = Some("tapx".into());
    let d = desired("hv1", &snapshot(vec![b, a]), &taps(&[("tapx", 2)]));
    assert_eq!(d.tap_ports["tapx"], "a");
    assert_eq!(
        d.local_ports[1].state,
        PortState::TapConflict { with: "a".into() }
    );
}

#[test]
fn diff_add_remove_change() {
    let desired = BTreeMap::from([(1u32, 10u32), (2, 20), (3, 30)]);
    let actual = BTreeMap::from([(2u32, 20u32), (3, 31), (4, 40)]);
    let d = diff(&desired, &actual);
    assert_eq!(d.upsert, vec![(1, 10), (3, 30)]);
    assert_eq!(d.remove, vec![4]);
    assert!(diff(&desired, &desired).is_empty());
}

#[test]
fn diff_of_entries_after_aap_change_and_ifindex_reuse() {
    let nb = |aaps: Vec<AllowedAddressPair>| {
        let mut p = port("p1", "hv1");
        p.allowed_address_pairs = aaps;
        snapshot(vec![p])
    };
    let before = desired(
        "hv1",
        &nb(vec![aap("192.0.2.100", None)]),
        &taps(&[("tapp1", 3)]),
    );
    let after = desired(
        "hv1",
        &nb(vec![aap("192.0.2.101", None)]),
        &taps(&[("tapp1", 3)]),
    );
    let d = after.entries.diff(&before.entries);
    assert_eq!(
        d.addrs.upsert,
        vec![(
            v4(3, MAC, "192.0.2.101"),
            AddrValue {
                flags: ADDR_F_AAP | ADDR_F_WATCH,
                net_id: 100,
            }
        )]
    );
    assert_eq!(d.addrs.remove, vec![v4(3, MAC, "192.0.2.100")]);
    assert!(d.ports.is_empty() && d.macs.is_empty() && d.cidrs.is_empty());
    // The responder follows the AAP (it is the port's only one).
    assert_eq!(d.neigh.upsert.len(), 1);
    assert_eq!(
        d.neigh.remove,
        vec![forwarding::neigh_key(100, "192.0.2.100".parse().unwrap())]
    );
    assert!(d.l2.is_empty() && d.flood.is_empty() && d.devmap.is_empty());
    assert_eq!(d.counts(), (2, 2));

    // tapp1 is gone and another port's tap got ifindex 3: nothing of p1 survives.
    let mut other = port("p9", "hv1");
    other.mac = mac("fa:16:3e:00:00:09");
    other.fixed_ips = vec!["192.0.2.99".parse().unwrap()];
    let reused = desired("hv1", &snapshot(vec![other]), &taps(&[("tapp9", 3)]));
    let d = reused.entries.diff(&before.entries);
    let mut after_apply = before.entries.clone();
    for (k, v) in d.addrs.upsert {
        after_apply.addrs.insert(k, v);
    }
    for k in d.addrs.remove {
        after_apply.addrs.remove(&k);
    }
    assert_eq!(after_apply.addrs, reused.entries.addrs);
    assert_eq!(d.ports.upsert[0].1.mac, mac("fa:16:3e:00:00:09").0);
}

#[test]
fn hold_keeps_one_taps_entries() {
    let mut p2 = port("p2", "hv1");
    p2.mac = mac("fa:16:3e:00:00:02");
    p2.fixed_ips = vec!["192.0.2.20".parse().unwrap()];
    let actual = desired(
        "hv1",
        &snapshot(vec![port("p1", "hv1"), p2.clone()]),
        &taps(&[("tapp1", 3), ("tapp2", 4)]),
    )
    .entries;
    // p1's record went bad: only p2 is desired, p1's entries are held.
    let mut d = desired(
        "hv1",
        &snapshot(vec![p2]),
        &taps(&[("tapp1", 3), ("tapp2", 4)]),
    );
    d.entries.hold(&actual, 3);
    let diff = d.entries.diff(&actual);
    // Everything but the flood list (which drops the held tap).
    assert_eq!(diff.counts(), (1, 0), "{diff:?}");
    assert_eq!(diff.flood.upsert[0].1.len, 1);
}

#[test]
fn retain_ifindex() {
    let d = desired(
        "hv1",
        &snapshot(vec![port("p1", "hv1"), port("p2", "hv1")]),
        &taps(&[("tapp1", 3), ("tapp2", 4)]),
    );
    let mut e = d.entries.clone();
    e.retain_ifindex(|i| i != 3);
    assert_eq!(e.ifindexes(), BTreeSet::from([4]));
}
