use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use super::{
    claims::{Event, HISTORY_MAX, HistoryRecord, push_history},
    judge::{BACKOFF_MAX, BACKOFF_MIN, Damper, Sighting, Verdict, Why, judge, stale},
    metrics::{ALL_WHY, Stats},
    probes::{PROBE_MAC, arp_probe, ns_probe},
};
use crate::{
    nb::{
        AapMode, ActivePort, AllowedAddressPair, LPort, LSwitch, MacAddr, NbSnapshot,
        active::{active_key, decode_active, history_key, parse_active_key},
    },
    obs::metrics,
};

const VIP: &str = "192.0.2.100";

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}
fn mac(s: &str) -> MacAddr {
    s.parse().unwrap()
}

fn port(id: &str, chassis: &str, m: &str, aaps: &[&str]) -> LPort {
    LPort {
        id: id.into(),
        lswitch: "net1".into(),
        mac: mac(m),
        fixed_ips: vec![],
        allowed_address_pairs: aaps
            .iter()
            .map(|a| AllowedAddressPair {
                ip_address: a.parse().unwrap(),
                mac_address: None,
            })
            .collect(),
        port_security_enabled: true,
        security_groups: vec![],
        chassis: Some(chassis.into()),
        ifname: None,
        device_owner: String::new(),
        admin_state_up: true,
    }
}

fn nb(mode: Option<AapMode>, ports: Vec<LPort>) -> NbSnapshot {
    NbSnapshot {
        lswitches: BTreeMap::from([(
            "net1".into(),
            LSwitch {
                id: "net1".into(),
                name: String::new(),
                segmentation_id: 100,
                mtu: 1450,
                aap_mode: mode,
            },
        )]),
        lports: ports
            .into_iter()
            .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
            .collect(),
        ..Default::default()
    }
}

fn sighting(lport: &str, m: &str, op: u16) -> Sighting {
    Sighting {
        ts_ns: 0,
        ifindex: 7,
        lport: lport.into(),
        net_id: 100,
        ip: ip(VIP),
        mac: mac(m),
        op,
    }
}

fn active(port: &str, m: &str, chassis: &str) -> ActivePort {
    ActivePort {
        lswitch: "net1".into(),
        ip: ip(VIP),
        port: port.into(),
        mac: mac(m),
        chassis: chassis.into(),
        since_ms: 1,
        reason: "garp".into(),
    }
}

const M1: &str = "fa:16:3e:00:00:01";
const M2: &str = "fa:16:3e:00:00:02";

fn shared_vip() -> Vec<LPort> {
    vec![port("p1", "hv1", M1, &[VIP]), port("p2", "hv2", M2, &[VIP])]
}

#[test]
fn claims_only_shared_vips_in_detection_mode() {
    use dragonflow_common::event::{GARP_OP_ARP_REPLY, GARP_OP_ARP_REQUEST, GARP_OP_ND_NA};
    let d = nb(None, shared_vip());
    let s = sighting("p1", M1, GARP_OP_ARP_REQUEST);
    assert_eq!(
        judge("hv1", AapMode::Detection, &d, &s),
        Verdict::Claim {
            lswitch: "net1".into(),
            why: Why::Garp
        }
    );
    assert_eq!(
        judge("hv1", AapMode::Broadcast, &d, &s),
        Verdict::Ignore("broadcast way on this network")
    );
    // The lswitch override wins over the agent's mode, both ways.
    let d2 = nb(Some(AapMode::Detection), shared_vip());
    assert!(matches!(
        judge("hv1", AapMode::Broadcast, &d2, &s),
        Verdict::Claim { .. }
    ));
    let d3 = nb(Some(AapMode::Broadcast), shared_vip());
    assert!(matches!(
        judge("hv1", AapMode::Detection, &d3, &s),
        Verdict::Ignore(_)
    ));
    // Reasons follow the op.
    for (op, why) in [
        (GARP_OP_ARP_REPLY, Why::ArpReply),
        (GARP_OP_ND_NA, Why::UnsolicitedNa),
    ] {
        assert_eq!(
            judge("hv1", AapMode::Detection, &d, &sighting("p1", M1, op)),
            Verdict::Claim {
                lswitch: "net1".into(),
                why
            }
        );
    }
    // Not shared: one port lists it.
    let single = nb(None, vec![port("p1", "hv1", M1, &[VIP])]);
    assert!(matches!(
        judge("hv1", AapMode::Detection, &single, &s),
        Verdict::Ignore(_)
    ));
    // Only the chassis hosting the port claims; unknown ports, foreign MACs and other
    // networks' events are ignored.
    assert!(matches!(
        judge("hv2", AapMode::Detection, &d, &s),
        Verdict::Ignore(_)
    ));
    assert!(matches!(
        judge("hv1", AapMode::Detection, &d, &sighting("nope", M1, 1)),
        Verdict::Ignore(_)
    ));
    assert!(matches!(
        judge("hv1", AapMode::Detection, &d, &sighting("p1", M2, 1)),
        Verdict::Ignore(_)
    ));
    let mut other_net = s.clone();
    other_net.net_id = 200;
    assert!(matches!(
        judge("hv1", AapMode::Detection, &d, &other_net),
        Verdict::Ignore(_)
    ));
    // A CIDR AAP never takes part.
    let cidr = nb(
        None,
        vec![
            port("p1", "hv1", M1, &["192.0.2.0/24"]),
            port("p2", "hv2", M2, &[VIP]),
        ],
    );
    assert!(matches!(
        judge("hv1", AapMode::Detection, &cidr, &s),
        Verdict::Ignore(_)
    ));
}

#[test]
fn holder_sightings_are_proof_of_life_in_any_mode() {
    let mut d = nb(None, shared_vip());
    d.active_ports
        .insert(("net1".into(), ip(VIP)), active("p1", M1, "hv1"));
    for mode in [AapMode::Broadcast, AapMode::Detection] {
        assert_eq!(
            judge("hv1", mode, &d, &sighting("p1", M1, 2)),
            Verdict::Holder {
                lswitch: "net1".into()
            }
        );
    }
    // The other holder's sighting is a move.
    let mut d2 = d.clone();
    d2.lports
        .get_mut("p2")
        .map(std::sync::Arc::make_mut)
        .unwrap()
        .chassis = Some("hv1".into());
    assert!(matches!(
        judge("hv1", AapMode::Detection, &d2, &sighting("p2", M2, 1)),
        Verdict::Claim { .. }
    ));
}

#[test]
fn stale_claims() {
    let d = nb(None, shared_vip());
    assert_eq!(stale("hv1", &d, &active("p1", M1, "hv1")), None);
    assert_eq!(
        stale("hv1", &d, &active("gone", M1, "hv1")),
        Some(Why::PortGone)
    );
    assert_eq!(
        stale("hv1", &d, &active("p2", M2, "hv1")),
        Some(Why::PortMoved)
    );
    let mut d2 = d.clone();
    d2.lports
        .get_mut("p1")
        .map(std::sync::Arc::make_mut)
        .unwrap()
        .allowed_address_pairs
        .clear();
    assert_eq!(
        stale("hv1", &d2, &active("p1", M1, "hv1")),
        Some(Why::AapRemoved)
    );
    // Same IP listed with another MAC: the claimed pair is gone.
    assert_eq!(
        stale("hv1", &d, &active("p1", M2, "hv1")),
        Some(Why::AapRemoved)
    );
}

#[test]
fn dampening_first_back_off_is_configurable() {
    let t0 = Instant::now();
    let s = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = Damper::new(Duration::from_millis(250));
    assert!(d.observe("p1", 1, s(0)));
    assert_eq!(d.ready_at(s(100)), Some(s(250)));
    for (i, at) in [250, 750, 1750, 3750, 7750].into_iter().enumerate() {
        d.observe(if i % 2 == 0 { "p2" } else { "p1" }, i as u64 + 2, s(at));
    }
    assert_eq!(
        d.backoff(),
        Duration::from_millis(2500),
        "capped at 10x the first"
    );
}

#[test]
fn dampening_backs_off_and_resets() {
    let t0 = Instant::now();
    let s = |ms: u64| t0 + Duration::from_millis(ms);
    let mut d = Damper::default();
    assert_eq!(d.ready_at(t0), None, "first claim immediate");
    assert!(d.observe("p1", 1, s(0)));
    assert!(!d.observe("p1", 1, s(5)), "the same holder is not a move");
    assert_eq!(d.backoff(), BACKOFF_MIN);
    // A move 300 ms later waits for the 1 s back-off…
    assert_eq!(d.ready_at(s(300)), Some(s(1000)));
    // …and, done then, doubles it.
    assert!(d.observe("p2", 2, s(1000)));
    assert_eq!(d.backoff(), Duration::from_secs(2));
    assert_eq!(d.ready_at(s(1100)), Some(s(3000)));
    d.observe("p1", 3, s(3000));
    d.observe("p2", 4, s(7000));
    d.observe("p1", 5, s(15_000));
    assert_eq!(d.backoff(), BACKOFF_MAX, "capped at 10 s");
    d.observe("p2", 6, s(25_000));
    assert_eq!(d.backoff(), BACKOFF_MAX);
    // A quiet gap of twice the back-off resets it.
    assert!(d.observe("p1", 7, s(46_000)));
    assert_eq!(d.backoff(), BACKOFF_MIN);
    // Moves a few seconds apart (failovers) never wait.
    let mut d = Damper::default();
    for i in 0..10u64 {
        let at = s(i * 2500);
        assert_eq!(d.ready_at(at), None, "failover {i}");
        d.observe(if i % 2 == 0 { "p1" } else { "p2" }, i, at);
    }
    // A holder that went away and came back is a move.
    d.cleared();
    assert!(d.observe("p2", 9, s(30_000)));
}

#[test]
fn keys_and_records() {
    let p = "/dragonflow/";
    let k = active_key(p, "net1", ip(VIP));
    assert_eq!(k, "/dragonflow/activeport/net1/192.0.2.100");
    assert_eq!(parse_active_key(p, &k), Some(Ok(("net1".into(), ip(VIP)))));
    let k6 = active_key(p, "net1", ip("2001:db8::100"));
    assert_eq!(
        parse_active_key(p, &k6),
        Some(Ok(("net1".into(), ip("2001:db8::100"))))
    );
    assert_eq!(
        history_key(p, "net1", ip(VIP)),
        "/dragonflow/activeport-log/net1/192.0.2.100"
    );
    assert_eq!(parse_active_key(p, "/dragonflow/lport/p1"), None);
    assert_eq!(
        parse_active_key(p, "/dragonflow/activeport-log/net1/1.2.3.4"),
        None
    );
    assert!(matches!(
        parse_active_key(p, "/dragonflow/activeport/net1/nope"),
        Some(Err(_))
    ));
    assert!(matches!(
        parse_active_key(p, "/dragonflow/activeport/net1"),
        Some(Err(_))
    ));

    let good = serde_json::to_vec(&active("p1", M1, "hv1")).unwrap();
    assert_eq!(
        decode_active("net1", ip(VIP), &good).unwrap(),
        active("p1", M1, "hv1")
    );
    assert!(
        decode_active("net2", ip(VIP), &good).is_err(),
        "key mismatch"
    );
    assert!(decode_active("net1", ip("192.0.2.1"), &good).is_err());
    assert!(decode_active("net1", ip(VIP), b"{").is_err());
    let bcast = serde_json::to_vec(&active("p1", "ff:ff:ff:ff:ff:ff", "hv1")).unwrap();
    assert!(decode_active("net1", ip(VIP), &bcast).is_err());
    let no_port = serde_json::to_vec(&active("", M1, "hv1")).unwrap();
    assert!(decode_active("net1", ip(VIP), &no_port).is_err());
}

#[test]
fn history_is_bounded_and_readable() {
    let mut h = Vec::new();
    for i in 0..(HISTORY_MAX as u64 + 5) {
        push_history(
            &mut h,
            HistoryRecord {
                at_ms: i,
                event: if i % 2 == 0 {
                    Event::Claimed
                } else {
                    Event::Released
                },
                port: "p1".into(),
                mac: mac(M1),
                chassis: "hv1".into(),
                why: Why::ProbeLoss,
                by: "hv2".into(),
            },
        );
    }
    assert_eq!(h.len(), HISTORY_MAX);
    assert_eq!(h[0].at_ms, 5, "oldest dropped first");
    let json = serde_json::to_value(&h[0]).unwrap();
    assert_eq!(json["why"], "probe_loss");
    assert_eq!(json["event"], "released");
    assert_eq!(json["mac"], M1);
    for w in ALL_WHY {
        assert_eq!(serde_json::to_value(w).unwrap(), w.name());
    }
}

#[test]
fn probe_frames() {
    let f = arp_probe(mac(M1), "192.0.2.100".parse().unwrap());
    assert_eq!(f.len(), 60);
    assert_eq!(&f[..6], &mac(M1).0);
    assert_eq!(&f[6..12], &PROBE_MAC.0);
    assert_eq!(&f[12..14], &[0x08, 0x06]);
    assert_eq!(&f[20..22], &[0, 1], "request");
    assert_eq!(&f[22..28], &PROBE_MAC.0, "sha");
    assert_eq!(&f[28..32], &[0, 0, 0, 0], "spa 0: a probe");
    assert_eq!(&f[38..42], &[192, 0, 2, 100], "tpa");
    assert!(!PROBE_MAC.is_multicast());

    let f = ns_probe(mac(M2), "2001:db8::100".parse().unwrap());
    assert_eq!(f.len(), 14 + 40 + 24);
    assert_eq!(&f[12..14], &[0x86, 0xdd]);
    assert_eq!(f[20], 58);
    assert_eq!(f[21], 255);
    assert_eq!(&f[22..38], &[0; 16], "source ::");
    assert_eq!(
        &f[38..54],
        &"ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(f[54], 135);
    // The checksum verifies: summing the pseudo-header and message gives 0xffff.
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&f[22..54]);
    add(&24u32.to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&f[54..]);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    assert_eq!(sum, 0xffff);
}

#[test]
fn stats_render() {
    let stats = Arc::new(Stats::default());
    stats.claim_latency.observe(Duration::from_micros(1500));
    stats.claim_latency.observe(Duration::from_millis(30));
    stats.removed(Why::ProbeLoss);
    stats.claims.fetch_add(3, Ordering::Relaxed);
    let mut registry = prometheus_client::registry::Registry::default();
    registry.register_collector(Box::new(stats));
    let o = metrics::encode(&registry);
    for line in [
        "# TYPE dragonflow_activeport_claim_seconds histogram",
        "dragonflow_activeport_claim_seconds_bucket{le=\"0.001\"} 0",
        "dragonflow_activeport_claim_seconds_bucket{le=\"0.002\"} 1",
        "dragonflow_activeport_claim_seconds_bucket{le=\"0.05\"} 2",
        "dragonflow_activeport_claim_seconds_bucket{le=\"+Inf\"} 2",
        "dragonflow_activeport_claim_seconds_count 2",
        "dragonflow_activeport_claim_etcd_seconds_count 0",
        "# TYPE dragonflow_activeport_claims_total counter",
        "dragonflow_activeport_claims_total 3",
        "dragonflow_activeport_removed_total{why=\"probe_loss\"} 1",
        "dragonflow_activeport_removed_total{why=\"lease_lost\"} 0",
        "dragonflow_activeport_probes_total{outcome=\"send_error\"} 0",
        "# TYPE dragonflow_activeport_entries gauge",
    ] {
        assert!(o.lines().any(|l| l == line), "{line} in\n{o}");
    }
    assert!(!o.contains("why=\"garp\""));
    let sum: f64 = o
        .lines()
        .find_map(|l| l.strip_prefix("dragonflow_activeport_claim_seconds_sum "))
        .expect("sum")
        .parse()
        .expect("number");
    assert!((sum - 0.0315).abs() < 1e-9, "{sum}");
}
