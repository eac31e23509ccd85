//! Allowed-address pairs: unique, shared (broadcast way), detection way.

use super::*;

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
    // The shared VIP: never answered, delivered to its holders.
    assert_eq!(
        neigh(&d, 100, "192.0.2.100"),
        Some(NeighValue {
            mac: [0; 6],
            flags: NEIGH_F_SHARED
        }),
    );
    assert_eq!(d.entries.neigh.len(), 5);
    // Own MACs stay unicast; only MACs of holders of a shared IP are flagged.
    assert_eq!(l2(&d, 100, 1).unwrap().flags, 0);
    assert_eq!(d.entries.l2[&L2Key::new(100, aa.0)].flags, 0);
}

/// A VRRP MAC listed by five ports (two here, two on hv2, one on hv3, one unbound) and
/// a VIP two of them list with it: groups with one member per local tap and one per
/// chassis, locals first.
#[test]
fn shared_mac_broadcast_group() {
    let mut ports = Vec::new();
    for (id, n, hv) in [
        ("a", 1, Some("hv1")),
        ("b", 2, Some("hv2")),
        ("c", 3, Some("hv2")),
        ("d", 4, Some("hv3")),
        ("e", 5, None),
        ("f", 6, Some("hv1")),
    ] {
        let mut p = port(id, "n1", n, hv);
        p.allowed_address_pairs = vec![aap("192.0.2.200", Some(VRRP))];
        if id == "a" || id == "b" {
            p.allowed_address_pairs.push(aap("192.0.2.100", Some(VRRP)));
        }
        ports.push(p);
    }
    let d = run(&nb(ports, vec![]), &[("tapa", 7), ("tapf", 9)]);
    let vrrp = mac(VRRP);
    assert_eq!(
        d.entries.l2[&L2Key::new(100, vrrp.0)],
        L2Dest {
            kind: DEST_GROUP,
            mtu: 1450,
            flags: L2_F_SHARED_IP,
            ..Default::default()
        },
        "a shared MAC goes to its group (and a shared IP uses it)"
    );
    assert_eq!(
        group_of(&d, GroupKey::mac(100, vrrp.0)),
        vec![
            (DEST_LOCAL, F, vrrp, 7, [0; 4]),
            (DEST_LOCAL, F, vrrp, 9, [0; 4]),
            (DEST_REMOTE, F, vrrp, 0, HV2),
            (DEST_REMOTE, F, vrrp, 0, HV3),
        ]
    );
    assert_eq!(d.entries.groups[&GroupKey::mac(100, vrrp.0)].mtu, 1450);
    // Every port lists .200: shared too, one member per tap and per chassis.
    assert_eq!(neigh(&d, 100, "192.0.2.200").unwrap().flags, NEIGH_F_SHARED);
    assert_eq!(group_of(&d, ip_group(100, "192.0.2.200")).len(), 4);
    assert_eq!(
        group_of(&d, ip_group(100, "192.0.2.100")),
        vec![
            (DEST_LOCAL, F, vrrp, 7, [0; 4]),
            (DEST_REMOTE, F, vrrp, 0, HV2),
        ]
    );
    let view = &d.networks[0];
    assert_eq!(view.aap_mode, AapMode::Broadcast);
    let shared: Vec<(&str, &str, AapMode)> = view
        .shared
        .iter()
        .map(|s| (s.kind, s.address.as_str(), s.way))
        .collect();
    assert_eq!(
        shared,
        vec![
            ("mac", "00:00:5e:00:01:07", AapMode::Broadcast),
            ("ip", "192.0.2.100", AapMode::Broadcast),
            ("ip", "192.0.2.200", AapMode::Broadcast),
        ]
    );
    assert_eq!(view.shared[0].holders, vec!["a", "b", "c", "d", "e", "f"]);
    assert_eq!(view.shared[0].delivered_to, vec!["a", "b", "c", "d", "f"]);
}

/// A VIP two ports list with their own MACs, and one two ports on hv2 list with
/// their own MACs: one copy per (chassis, MAC), the first per chassis flagged.
#[test]
fn shared_ip_own_macs() {
    let mut a = port("a", "n1", 1, Some("hv1"));
    let mut b = port("b", "n1", 2, Some("hv2"));
    let mut c = port("c", "n1", 3, Some("hv2"));
    let other = port("z", "n1", 9, Some("hv2"));
    a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
    b.allowed_address_pairs = vec![aap("192.0.2.100", None), aap("2001:db8::100", None)];
    c.allowed_address_pairs = vec![aap("2001:db8::100", None)];
    let d = run(&nb(vec![a, b, c, other], vec![]), &[("tapa", 7)]);
    let m = |n: u8| MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]);
    assert_eq!(
        group_of(&d, ip_group(100, "192.0.2.100")),
        vec![
            (DEST_LOCAL, F, m(1), 7, [0; 4]),
            (DEST_REMOTE, F, m(2), 0, HV2),
        ]
    );
    assert_eq!(
        group_of(&d, ip_group(100, "2001:db8::100")),
        vec![
            (DEST_REMOTE, F, m(2), 0, HV2),
            (DEST_REMOTE, 0, m(3), 0, HV2),
        ],
        "one copy per holder MAC, the frame itself once per chassis"
    );
    for n in [1, 2, 3] {
        assert_eq!(l2(&d, 100, n).unwrap().flags, L2_F_SHARED_IP, "port {n}");
        assert_ne!(l2(&d, 100, n).unwrap().kind, DEST_GROUP);
    }
    assert_eq!(l2(&d, 100, 9).unwrap().flags, 0, "not a holder");
    assert_eq!(
        neigh(&d, 100, "2001:db8::100").unwrap().flags,
        NEIGH_F_SHARED
    );
    assert_eq!(d.entries.groups.len(), 2, "own MACs are never groups");
}

/// A shared VIP none of whose holders is reachable still gets its (empty) group: ARP
/// for it must not be flooded to the network.
#[test]
fn shared_ip_without_reachable_holder() {
    let mut a = port("a", "n1", 1, Some("hv9")); // dead chassis
    let mut b = port("b", "n1", 2, None);
    let c = port("c", "n1", 3, Some("hv1"));
    a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
    b.allowed_address_pairs = vec![aap("192.0.2.100", None)];
    let d = run(&nb(vec![a, b, c], vec![]), &[("tapc", 5)]);
    assert_eq!(neigh(&d, 100, "192.0.2.100").unwrap().flags, NEIGH_F_SHARED);
    assert!(group_of(&d, ip_group(100, "192.0.2.100")).is_empty());
    assert!(d.networks[0].shared[0].delivered_to.is_empty());
}

#[test]
fn group_cut_at_group_max() {
    let mut ports = Vec::new();
    let mut taps = Vec::new();
    for i in 0..(GROUP_MAX as u8 + 2) {
        let id = format!("p{i:02}");
        let mut p = port(&id, "n1", i + 1, Some("hv1"));
        p.allowed_address_pairs = vec![aap("192.0.2.250", None)];
        ports.push(p);
        taps.push((format!("tap{id}"), 100 + u32::from(i)));
    }
    let taps: Vec<(&str, u32)> = taps.iter().map(|(t, i)| (t.as_str(), *i)).collect();
    let d = run(&nb(ports, vec![]), &taps);
    assert_eq!(group_of(&d, ip_group(100, "192.0.2.250")).len(), GROUP_MAX);
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("shared IP 192.0.2.250 has 18 destinations")),
        "{:?}",
        d.warnings
    );
}

fn active(net: &str, ip: &str, port: &str, mac: &str) -> ((String, IpAddr), ActivePort) {
    (
        (net.into(), ip.parse().unwrap()),
        ActivePort {
            lswitch: net.into(),
            ip: ip.parse().unwrap(),
            port: port.into(),
            mac: mac.parse().unwrap(),
            chassis: "hv2".into(),
            since_ms: 1,
            reason: "garp".into(),
        },
    )
}

/// Two keepalived pairs: VIP .100 with own MACs on a (here) and b (hv2), VIP .101
/// with the VRRP MAC on c (here) and e (hv2).
fn vrrp_pairs() -> NbSnapshot {
    let mut a = port("a", "n1", 1, Some("hv1"));
    let mut b = port("b", "n1", 2, Some("hv2"));
    let mut c = port("c", "n1", 3, Some("hv1"));
    let mut e = port("e", "n1", 5, Some("hv2"));
    a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
    b.allowed_address_pairs = vec![aap("192.0.2.100", None)];
    c.allowed_address_pairs = vec![aap("192.0.2.101", Some(VRRP))];
    e.allowed_address_pairs = vec![aap("192.0.2.101", Some(VRRP))];
    let mut n = nb(vec![a, b, c, e], vec![]);
    n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Detection);
    n
}

const VRRP_TAPS: &[(&str, u32)] = &[("tapa", 7), ("tapc", 8)];

/// The detection way points the responder and L2 at the active port; without an active
/// entry the broadcast way applies.
#[test]
fn detection_points_at_the_active_port() {
    let mut n = vrrp_pairs();
    let d = run(&n, VRRP_TAPS);
    assert_eq!(d.networks[0].aap_mode, AapMode::Detection);
    assert_eq!(
        neigh(&d, 100, "192.0.2.100").unwrap().flags,
        NEIGH_F_SHARED,
        "no active entry yet: broadcast"
    );
    assert_eq!(d.entries.l2[&L2Key::new(100, mac(VRRP).0)].kind, DEST_GROUP);

    n.active_ports.extend([
        active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
        active("n1", "192.0.2.101", "e", VRRP),
    ]);
    let d = run(&n, VRRP_TAPS);
    assert_eq!(
        neigh(&d, 100, "192.0.2.100"),
        Some(NeighValue {
            mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
            flags: NEIGH_F_AAP | NEIGH_F_ACTIVE
        }),
        "answered with the active port's MAC"
    );
    assert_eq!(
        neigh(&d, 100, "192.0.2.101"),
        Some(NeighValue {
            mac: mac(VRRP).0,
            flags: NEIGH_F_AAP | NEIGH_F_ACTIVE
        })
    );
    assert_eq!(
        d.entries.l2[&L2Key::new(100, mac(VRRP).0)],
        L2Dest {
            kind: DEST_REMOTE,
            flags: L2_F_SHARED_IP,
            mtu: 1450,
            remote_ip: HV2,
            ..Default::default()
        },
        "the shared MAC leads to the active port"
    );
    assert!(d.entries.groups.is_empty(), "{:?}", d.entries.groups);
    // The MACs the holders list a VIP with are checked for it (a packet for .100 to
    // a's MAC is readdressed to b's); the others (c's and e's own) are not.
    let flagged: BTreeSet<u8> = (1..=5)
        .filter(|i| {
            d.entries
                .l2
                .get(&L2Key::new(100, [0xfa, 0x16, 0x3e, 0, 0, *i]))
                .is_some_and(|v| v.flags == L2_F_SHARED_IP)
        })
        .collect();
    assert_eq!(flagged, BTreeSet::from([1, 2]));
    let view = &d.networks[0];
    assert!(view.shared.iter().all(|s| s.way == AapMode::Detection));
    assert_eq!(view.shared[0].active_port.as_deref(), Some("e"));

    // The active holder moves here: the MAC follows.
    n.active_ports
        .extend([active("n1", "192.0.2.101", "c", VRRP)]);
    let d2 = run(&n, VRRP_TAPS);
    assert_eq!(d2.entries.l2[&L2Key::new(100, mac(VRRP).0)].ifindex, 8);
    let diff = d2.entries.diff(&d.entries);
    assert_eq!((diff.l2.upsert.len(), diff.neigh.upsert.len()), (1, 0));
}

/// An active entry that no longer holds (the pair is gone from the port, the port
/// is on a dead chassis, another network, the network is in broadcast mode) is
/// ignored: the broadcast way.
#[test]
fn detection_ignores_stale_entries() {
    let base = vrrp_pairs();
    for (what, entry, tweak) in [
        (
            "port does not list that MAC",
            active("n1", "192.0.2.100", "b", VRRP),
            None,
        ),
        (
            "port does not list that IP",
            active("n1", "192.0.2.100", "c", VRRP),
            None,
        ),
        (
            "unknown port",
            active("n1", "192.0.2.100", "nope", "fa:16:3e:00:00:02"),
            None,
        ),
        (
            "holder on a dead chassis",
            active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
            Some("dead"),
        ),
        (
            "broadcast network",
            active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
            Some("broadcast"),
        ),
    ] {
        let mut n = base.clone();
        n.active_ports.extend([entry]);
        match tweak {
            Some("dead") => {
                n.chassis.remove("hv2");
            }
            Some(_) => n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Broadcast),
            None => {}
        }
        let d = run(&n, VRRP_TAPS);
        assert_eq!(
            neigh(&d, 100, "192.0.2.100").unwrap().flags,
            NEIGH_F_SHARED,
            "{what}"
        );
        if tweak.is_none() {
            assert!(
                d.warnings
                    .iter()
                    .any(|w| w.contains("activeport 192.0.2.100")),
                "{what}: {:?}",
                d.warnings
            );
        }
    }
}

/// The effective mode: the lswitch override, else the mode this agent publishes in its
/// chassis record. Live chassis hosting ports of a network without override that
/// publish different modes are reported.
#[test]
fn aap_mode_and_disagreement() {
    let mut n = vrrp_pairs();
    n.lswitches.get_mut("n1").unwrap().aap_mode = None;
    n.active_ports
        .extend([active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02")]);
    let d = run(&n, VRRP_TAPS);
    assert_eq!(d.networks[0].aap_mode, AapMode::Broadcast);
    assert_eq!(neigh(&d, 100, "192.0.2.100").unwrap().flags, NEIGH_F_SHARED);
    assert!(d.networks[0].aap_mode_disagreement.is_empty());

    // hv1 (this agent) publishes detection: it points at b; hv2 still broadcasts.
    n.chassis.get_mut("hv1").unwrap().aap_mode = AapMode::Detection;
    let d = run(&n, VRRP_TAPS);
    assert_eq!(d.networks[0].aap_mode, AapMode::Detection);
    assert_eq!(
        neigh(&d, 100, "192.0.2.100").unwrap().flags,
        NEIGH_F_AAP | NEIGH_F_ACTIVE
    );
    assert_eq!(
        d.networks[0].aap_mode_disagreement,
        BTreeMap::from([
            ("hv1".to_string(), AapMode::Detection),
            ("hv2".to_string(), AapMode::Broadcast)
        ])
    );
    assert!(
        d.warnings
            .iter()
            .any(|w| w.contains("lswitch n1") && w.contains("hv1: detection, hv2: broadcast")),
        "{:?}",
        d.warnings
    );
    // n2 has no ports: nothing to disagree about.
    assert!(d.warnings.iter().all(|w| !w.contains("lswitch n2")));

    // The lswitch override makes them agree.
    n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Broadcast);
    let d = run(&n, VRRP_TAPS);
    assert_eq!(d.networks[0].aap_mode, AapMode::Broadcast);
    assert!(d.networks[0].aap_mode_disagreement.is_empty());
    assert!(d.warnings.iter().all(|w| !w.contains("differently")));
}

/// Broadcast way across a change: a holder moving to another chassis rewrites the
/// groups, and a VIP losing its second holder becomes an ordinary AAP again.
#[test]
fn groups_follow_the_holders() {
    let mut n = vrrp_pairs();
    n.lswitches.get_mut("n1").unwrap().aap_mode = None;
    let before = run(&n, VRRP_TAPS);
    n.lports
        .get_mut("b")
        .map(std::sync::Arc::make_mut)
        .unwrap()
        .chassis = Some("hv3".into());
    let moved = run(&n, VRRP_TAPS);
    let diff = moved.entries.diff(&before.entries);
    assert_eq!(diff.groups.upsert.len(), 1, "{diff:?}");
    assert_eq!(diff.groups.upsert[0].1.members[1].remote_ip, HV3);
    n.lports
        .get_mut("b")
        .map(std::sync::Arc::make_mut)
        .unwrap()
        .allowed_address_pairs
        .clear();
    let single = run(&n, VRRP_TAPS);
    assert_eq!(
        neigh(&single, 100, "192.0.2.100").unwrap().flags,
        NEIGH_F_AAP
    );
    let diff = single.entries.diff(&moved.entries);
    assert_eq!(diff.groups.remove, vec![ip_group(100, "192.0.2.100")]);
    assert_eq!(l2(&single, 100, 1).unwrap().flags, 0, "flag cleared");
}
