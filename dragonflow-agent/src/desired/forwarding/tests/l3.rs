//! Routers and tunnel admission.

use super::*;

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

/// Tunnel admission: which live chassis may send which source MACs of a network hosted
/// here, and how the entries follow a chassis' record and a port's binding.
#[test]
fn tunnel_admission() {
    let m = |n: u8| MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]);
    let mut a = port("a", "n1", 1, Some("hv1"));
    let mut b = port("b", "n1", 2, Some("hv2"));
    a.allowed_address_pairs = vec![aap("192.0.2.100", Some(VRRP))];
    b.allowed_address_pairs = vec![aap("192.0.2.100", Some(VRRP))];
    let c = port("c", "n2", 3, Some("hv3"));
    let e = port("e", "n1", 5, Some("hv9")); // no chassis record: dead
    let mut f = port("f", "n1", 6, Some("hv2"));
    f.port_security_enabled = false;
    f.fixed_ips.clear();
    // Claims a's MAC from hv2: a's own (local) MAC is never admitted from the tunnel.
    let x = port("x", "n1", 1, Some("hv2"));
    let r = router(
        "r1",
        &[
            ("n1", "fa:16:3e:00:01:01", "192.0.2.254/24"),
            ("n2", "fa:16:3e:00:01:02", "198.51.100.1/24"),
        ],
    );
    let mut n = nb(vec![a, b, c, e, f, x], vec![r]);
    let d = run(&n, &[("tapa", 7)]);
    let rm1 = mac("fa:16:3e:00:01:01");
    let src = |ip, mac: MacAddr| src_key(100, ip, mac);
    assert_eq!(
        d.entries.tun_peers,
        BTreeMap::from([
            // hv2 hosts ports of n1 (and so routes into it too); hv3 only routes into
            // n1 from n2; hv9 is dead; n2 has no port here: nothing for it.
            (peer_key(100, HV2), TUN_F_PORT | TUN_F_ROUTER),
            (peer_key(100, HV3), TUN_F_ROUTER),
        ])
    );
    assert_eq!(
        d.entries.tun_srcs,
        BTreeMap::from([
            (src(HV2, m(2)), TUN_F_PORT),
            (src(HV2, mac(VRRP)), TUN_F_PORT),
            (src(HV2, m(6)), TUN_F_PORT | TUN_F_UNSECURED),
            (src(HV2, rm1), TUN_F_ROUTER),
            (src(HV3, rm1), TUN_F_ROUTER),
        ]),
        "b's own MAC, the VRRP MAC b shares with a, f's MAC (no port security), the \
         router's MAC on n1 from both routing chassis; never a's MAC (local)"
    );

    // hv2's record goes (lease expired): everything it could send goes with it.
    let before = d.entries.clone();
    n.chassis.remove("hv2");
    let gone = run(&n, &[("tapa", 7)]);
    let diff = gone.entries.diff(&before);
    assert_eq!(diff.tun_peers.remove, vec![peer_key(100, HV2)]);
    assert_eq!(diff.tun_srcs.remove.len(), 4, "{diff:?}");
    assert!(diff.tun_srcs.remove.iter().all(|k| k.remote_ip == HV2));
    assert!(diff.tun_peers.upsert.is_empty() && diff.tun_srcs.upsert.is_empty());

    // Back, and b unbound: its MAC (and its share of the VRRP MAC) leave; f stays.
    n.chassis.extend([chassis("hv2", "198.18.0.2")]);
    n.lports
        .get_mut("b")
        .map(std::sync::Arc::make_mut)
        .unwrap()
        .chassis = None;
    let unbound = run(&n, &[("tapa", 7)]);
    assert!(!unbound.entries.tun_srcs.contains_key(&src(HV2, m(2))));
    assert!(!unbound.entries.tun_srcs.contains_key(&src(HV2, mac(VRRP))));
    assert!(unbound.entries.tun_srcs.contains_key(&src(HV2, m(6))));

    // No local port in n1 any more: no admission for n1 at all.
    let none = run(&n, &[]);
    assert!(none.entries.tun_peers.is_empty() && none.entries.tun_srcs.is_empty());
}
