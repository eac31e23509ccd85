//! Unit tests of the security-group computation.
use dragonflow_common::sg::{DIR_EGRESS, DIR_INGRESS, IDENT_ANY_V4, IDENT_ANY_V6, ident_any};

use super::*;
use crate::nb::{AllowedAddressPair, EtherType, RuleDirection, SecGroup};

fn port(id: &str, groups: &[&str], ips: &[&str], aaps: &[&str]) -> LPort {
    LPort {
        id: id.into(),
        lswitch: "net1".into(),
        mac: "fa:16:3e:00:00:01".parse().unwrap(),
        fixed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
        allowed_address_pairs: aaps
            .iter()
            .map(|a| AllowedAddressPair {
                ip_address: a.parse().unwrap(),
                mac_address: None,
            })
            .collect(),
        port_security_enabled: true,
        security_groups: groups.iter().map(|g| g.to_string()).collect(),
        chassis: None,
        ifname: None,
        device_owner: String::new(),
        admin_state_up: true,
    }
}

fn rule(id: &str, dir: RuleDirection, eth: EtherType) -> SecGroupRule {
    SecGroupRule {
        id: id.into(),
        direction: dir,
        ethertype: eth,
        protocol: None,
        port_range_min: None,
        port_range_max: None,
        remote_ip_prefix: None,
        remote_group_id: None,
    }
}

fn from_group(id: &str, g: &str) -> SecGroupRule {
    SecGroupRule {
        remote_group_id: Some(g.into()),
        ..rule(id, RuleDirection::Ingress, EtherType::IPv4)
    }
}

fn from_prefix(id: &str, p: &str) -> SecGroupRule {
    let p: IpPrefix = p.parse().unwrap();
    let eth = EtherType::of(&p.addr);
    SecGroupRule {
        remote_ip_prefix: Some(p),
        ..rule(id, RuleDirection::Ingress, eth)
    }
}

fn group(id: &str, rules: Vec<SecGroupRule>) -> SecGroup {
    SecGroup {
        id: id.into(),
        name: String::new(),
        rules,
    }
}

fn nb(ports: Vec<LPort>, groups: Vec<SecGroup>) -> NbSnapshot {
    NbSnapshot {
        lports: ports
            .into_iter()
            .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
            .collect(),
        secgroups: groups.into_iter().map(|g| (g.id.clone(), g)).collect(),
        ..Default::default()
    }
}

/// Computes with `local` (port id → ifindex) as the programmed local ports.
fn run(nb: &NbSnapshot, local: &[(&str, u32)], ids: &mut Identities) -> SgState {
    let ports: Vec<(u32, &LPort)> = local.iter().map(|(id, i)| (*i, &*nb.lports[*id])).collect();
    compute(nb, &ports, ids)
}

/// The identity the datapath would find for `ip`: exact, else longest prefix, else
/// world.
fn lookup(e: &SgEntries, ip: &str) -> u32 {
    let ip: IpAddr = ip.parse().unwrap();
    if let Some(&n) = e.ident.get(&ident_key(ip)) {
        return n;
    }
    let (a, w) = bits(&ip);
    e.ident_lpm
        .iter()
        .filter(|(k, _)| {
            k.key.family == family(&ip) && {
                let len = (k.prefix_len - IDENT_FIXED_BITS) as u8;
                let net: IpAddr = if w == 32 {
                    IpAddr::from(<[u8; 4]>::try_from(&k.key.ip[..4]).unwrap())
                } else {
                    IpAddr::from(k.key.ip)
                };
                mask(a, len, w) == mask(bits(&net).0, len, w)
            }
        })
        .max_by_key(|(k, _)| k.prefix_len)
        .map_or(IDENT_WORLD, |(_, v)| *v)
}

/// Whether the datapath would allow (ifindex, remote ip, dir, proto, dport) by LPM.
fn allowed(e: &SgEntries, ifindex: u32, ip: &str, dir: u8, proto: u8, dport: [u8; 2]) -> bool {
    let fam = family(&ip.parse().unwrap());
    let id = lookup(e, ip);
    [id, ident_any(fam)].into_iter().any(|ident| {
        e.policy.keys().any(|k| {
            let want = PolicyKey {
                ifindex,
                ident,
                dir,
                proto,
                dport,
            };
            let a = as_bits(&want);
            let b = as_bits(&k.key);
            let n = k.prefix_len as usize;
            a[..n] == b[..n]
        })
    })
}

fn as_bits(k: &PolicyKey) -> Vec<bool> {
    let mut bytes = Vec::new();
    bytes.extend_from_slice(&k.ifindex.to_ne_bytes());
    bytes.extend_from_slice(&k.ident.to_ne_bytes());
    bytes.push(k.dir);
    bytes.push(k.proto);
    bytes.extend_from_slice(&k.dport);
    bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| b & (1 << i) != 0))
        .collect()
}

#[test]
fn port_ranges_split_into_aligned_blocks() {
    assert_eq!(port_blocks(80, 80), vec![(80, 0)]);
    assert_eq!(port_blocks(1, 65535).len(), 16);
    assert_eq!(port_blocks(0, 65535), vec![(0, 16)]);
    assert_eq!(port_blocks(1024, 2047), vec![(1024, 10)]);
    assert_eq!(
        port_blocks(1000, 1010),
        vec![(1000, 3), (1008, 1), (1010, 0)]
    );
    // Blocks cover exactly the range, without overlap.
    for (min, max) in [(1u16, 65535u16), (3, 17), (8080, 8090), (65535, 65535)] {
        let mut covered = Vec::new();
        for (s, k) in port_blocks(min, max) {
            assert_eq!(u32::from(s) % (1 << k), 0, "aligned");
            covered.extend(u32::from(s)..u32::from(s) + (1 << k));
        }
        assert_eq!(
            covered,
            (u32::from(min)..=u32::from(max)).collect::<Vec<_>>()
        );
    }
}

#[test]
fn rule_without_remote_is_any_of_its_family() {
    let mut egress = rule("e4", RuleDirection::Egress, EtherType::IPv4);
    egress.protocol = Some("tcp".into());
    egress.port_range_min = Some(443);
    egress.port_range_max = Some(443);
    let n = nb(
        vec![port("p1", &["sg"], &["192.0.2.10"], &[])],
        vec![group("sg", vec![egress])],
    );
    let s = run(&n, &[("p1", 7)], &mut Identities::default());
    let e = &s.entries;
    assert!(e.ident.is_empty() && e.ident_lpm.is_empty());
    assert_eq!(e.policy.len(), 1);
    let k = e.policy.keys().next().unwrap();
    assert_eq!(k.key.ident, IDENT_ANY_V4);
    assert_eq!(k.prefix_len, POLICY_PORT_BITS + 16);
    assert!(allowed(
        e,
        7,
        "203.0.113.5",
        DIR_EGRESS,
        6,
        443u16.to_be_bytes()
    ));
    assert!(!allowed(
        e,
        7,
        "203.0.113.5",
        DIR_EGRESS,
        6,
        80u16.to_be_bytes()
    ));
    assert!(!allowed(
        e,
        7,
        "203.0.113.5",
        DIR_INGRESS,
        6,
        443u16.to_be_bytes()
    ));
    assert!(
        !allowed(e, 7, "2001:db8::5", DIR_EGRESS, 6, 443u16.to_be_bytes()),
        "v4 rule, v6 packet"
    );
    assert!(
        !allowed(e, 8, "203.0.113.5", DIR_EGRESS, 6, 443u16.to_be_bytes()),
        "other port"
    );
    assert_eq!(s.ports[0].policy_entries, 1);
    assert_eq!(s.ports[0].rules, 1);
}

#[test]
fn neutron_default_group() {
    let rules = vec![
        rule("e4", RuleDirection::Egress, EtherType::IPv4),
        rule("e6", RuleDirection::Egress, EtherType::IPv6),
        from_group("i4", "default"),
        SecGroupRule {
            remote_group_id: Some("default".into()),
            ..rule("i6", RuleDirection::Ingress, EtherType::IPv6)
        },
    ];
    let n = nb(
        vec![
            port("p1", &["default"], &["192.0.2.10", "2001:db8::10"], &[]),
            port("p2", &["default"], &["192.0.2.20"], &["2001:db8::/64"]),
            port("p3", &[], &["192.0.2.30"], &[]),
        ],
        vec![group("default", rules)],
    );
    let s = run(&n, &[("p1", 1), ("p3", 3)], &mut Identities::default());
    let e = &s.entries;
    // Members: v4 hosts of p1, p2; v6 host of p1 inside p2's v6 CIDR.
    assert_eq!(e.ident.len(), 3);
    assert_eq!(e.ident_lpm.len(), 1);
    let v4 = lookup(e, "192.0.2.20");
    let v6 = lookup(e, "2001:db8::99");
    assert_ne!(v4, v6, "identities are per family");
    assert_eq!(lookup(e, "2001:db8::10"), v6, "same set, same identity");
    assert_eq!(lookup(e, "192.0.2.30"), IDENT_WORLD);
    assert!(allowed(e, 1, "192.0.2.20", DIR_INGRESS, 6, [0, 22]));
    assert!(
        allowed(e, 1, "2001:db8::77", DIR_INGRESS, 17, [0, 53]),
        "AAP CIDR member"
    );
    assert!(
        !allowed(e, 1, "192.0.2.30", DIR_INGRESS, 6, [0, 22]),
        "not a member"
    );
    assert!(allowed(e, 1, "192.0.2.30", DIR_EGRESS, 6, [0, 22]));
    assert!(allowed(e, 1, "2001:db8:ff::1", DIR_EGRESS, 58, [128, 0]));
    // p3 has port security and no group: nothing allowed.
    assert!(!allowed(e, 3, "192.0.2.20", DIR_EGRESS, 6, [0, 22]));
    assert_eq!(s.ports.len(), 2);
    assert_eq!(s.ports[1].policy_entries, 0);
    assert_eq!(s.identities, 2);
}

#[test]
fn nested_prefixes_and_members_inside_rule_prefixes() {
    // sg "web": ingress from group "app", from 198.51.100.0/24 (tcp 80) and from
    // 198.51.100.128/25 (udp). App members: a fixed IP inside both prefixes, an AAP
    // CIDR straddling nothing, an AAP host outside.
    let mut wide = from_prefix("wide", "198.51.100.0/24");
    wide.protocol = Some("tcp".into());
    wide.port_range_min = Some(80);
    wide.port_range_max = Some(80);
    let mut narrow = from_prefix("narrow", "198.51.100.128/25");
    narrow.protocol = Some("udp".into());
    let n = nb(
        vec![
            port("web1", &["web"], &["192.0.2.10"], &[]),
            port(
                "app1",
                &["app"],
                &["198.51.100.200"],
                &["203.0.113.0/28", "192.0.2.99"],
            ),
        ],
        vec![
            group("web", vec![from_group("g", "app"), wide, narrow]),
            group("app", vec![]),
        ],
    );
    let s = run(&n, &[("web1", 5)], &mut Identities::default());
    let e = &s.entries;
    let member = "198.51.100.200";
    // The member is in every selector: from the group it may send anything, and
    // tcp/80 and udp from the prefixes.
    assert!(allowed(e, 5, member, DIR_INGRESS, 47, [0, 0]));
    // A non-member in the /25: udp and tcp/80, nothing else.
    assert!(allowed(e, 5, "198.51.100.129", DIR_INGRESS, 17, [0, 9]));
    assert!(allowed(e, 5, "198.51.100.129", DIR_INGRESS, 6, [0, 80]));
    assert!(!allowed(e, 5, "198.51.100.129", DIR_INGRESS, 6, [0, 81]));
    // In the /24 only: tcp/80 only.
    assert!(allowed(e, 5, "198.51.100.1", DIR_INGRESS, 6, [0, 80]));
    assert!(!allowed(e, 5, "198.51.100.1", DIR_INGRESS, 17, [0, 9]));
    // AAP CIDR and AAP host members.
    assert!(allowed(e, 5, "203.0.113.15", DIR_INGRESS, 1, [8, 0]));
    assert!(!allowed(e, 5, "203.0.113.16", DIR_INGRESS, 1, [8, 0]));
    assert!(allowed(e, 5, "192.0.2.99", DIR_INGRESS, 6, [1, 0]));
    // Identities: {app,/24,/25} for the member, {/24,/25}, {/24}, {app} (CIDR and
    // host share one).
    let ids: BTreeSet<u32> = e
        .ident
        .values()
        .chain(e.ident_lpm.values())
        .copied()
        .collect();
    assert_eq!(ids.len(), 4, "{e:?}");
    assert_eq!(lookup(e, "203.0.113.1"), lookup(e, "192.0.2.99"));
    assert_eq!(s.identities, 4);
}

#[test]
fn host_member_nested_in_member_cidr_of_another_group() {
    // g1 has an AAP CIDR; a g2 member lives inside it: its identity is {g1, g2}.
    let n = nb(
        vec![
            port("local", &["sg"], &["192.0.2.1"], &[]),
            port("a", &["g1"], &[], &["198.51.100.0/24"]),
            port("b", &["g2"], &["198.51.100.7"], &[]),
        ],
        vec![
            group(
                "sg",
                vec![
                    {
                        let mut r = from_group("from1", "g1");
                        r.protocol = Some("udp".into());
                        r
                    },
                    {
                        let mut r = from_group("from2", "g2");
                        r.protocol = Some("tcp".into());
                        r
                    },
                ],
            ),
            group("g1", vec![]),
            group("g2", vec![]),
        ],
    );
    let s = run(&n, &[("local", 2)], &mut Identities::default());
    let e = &s.entries;
    assert!(
        allowed(e, 2, "198.51.100.7", DIR_INGRESS, 17, [0, 1]),
        "via g1"
    );
    assert!(
        allowed(e, 2, "198.51.100.8", DIR_INGRESS, 17, [0, 1]),
        "via g1"
    );
    assert!(
        allowed(e, 2, "198.51.100.7", DIR_INGRESS, 6, [0, 1]),
        "via g2"
    );
    assert!(!allowed(e, 2, "198.51.100.8", DIR_INGRESS, 6, [0, 1]));
    assert_ne!(lookup(e, "198.51.100.7"), lookup(e, "198.51.100.8"));
}

#[test]
fn ipv6_rules_and_icmp() {
    let mut echo = from_prefix("echo6", "2001:db8::/32");
    echo.protocol = Some("icmp".into()); // IPv6 rule: ICMPv6
    echo.port_range_min = Some(128);
    let mut unreach = rule("unreach", RuleDirection::Ingress, EtherType::IPv4);
    unreach.protocol = Some("icmp".into());
    unreach.port_range_min = Some(3);
    unreach.port_range_max = Some(4);
    let n = nb(
        vec![port("p", &["sg"], &["2001:db8::1"], &[])],
        vec![group("sg", vec![echo, unreach])],
    );
    let s = run(&n, &[("p", 4)], &mut Identities::default());
    let e = &s.entries;
    assert!(allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [128, 0]));
    assert!(allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [128, 5]));
    assert!(!allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [129, 0]));
    assert!(!allowed(e, 4, "2001:db9::1", DIR_INGRESS, 58, [128, 0]));
    assert!(!allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 1, [128, 0]));
    assert!(allowed(e, 4, "203.0.113.1", DIR_INGRESS, 1, [3, 4]));
    assert!(!allowed(e, 4, "203.0.113.1", DIR_INGRESS, 1, [3, 3]));
    assert!(!allowed(e, 4, "2001:db8::9", DIR_INGRESS, 1, [3, 4]));
    assert_eq!(
        e.ident_lpm.keys().next().unwrap().prefix_len,
        IDENT_FIXED_BITS + 32
    );
    let k = e
        .policy
        .keys()
        .find(|k| k.key.ident == IDENT_ANY_V4)
        .unwrap();
    assert_eq!(k.prefix_len, POLICY_PORT_BITS + 16);
    assert!(!e.policy.keys().any(|k| k.key.ident == IDENT_ANY_V6));
}

#[test]
fn zero_prefix_is_any_and_port_security_off_is_skipped() {
    let n = nb(
        vec![
            port("p", &["sg"], &["192.0.2.1"], &[]),
            LPort {
                port_security_enabled: false,
                security_groups: vec![],
                ..port("open", &[], &["192.0.2.2"], &[])
            },
        ],
        vec![group("sg", vec![from_prefix("all", "0.0.0.0/0")])],
    );
    let s = run(&n, &[("p", 1), ("open", 2)], &mut Identities::default());
    assert!(s.entries.ident_lpm.is_empty());
    assert_eq!(s.entries.policy.len(), 1);
    assert_eq!(
        s.entries.policy.keys().next().unwrap().key.ident,
        IDENT_ANY_V4
    );
    assert_eq!(
        s.entries.policy.keys().next().unwrap().prefix_len,
        POLICY_PROTO_BITS
    );
    assert_eq!(s.ports.len(), 1);
}

#[test]
fn missing_group_warns_and_denies() {
    let n = nb(vec![port("p", &["nope"], &["192.0.2.1"], &[])], vec![]);
    let s = run(&n, &[("p", 1)], &mut Identities::default());
    assert!(s.entries.policy.is_empty());
    assert_eq!(s.warnings.len(), 1);
    assert!(
        s.warnings
            .iter()
            .next()
            .unwrap()
            .contains("security group nope does not exist")
    );
}

#[test]
fn numbering_is_stable_and_removal_forgets() {
    let groups = vec![
        group("sg", vec![from_group("a", "ga"), from_group("b", "gb")]),
        group("ga", vec![]),
        group("gb", vec![]),
    ];
    let ports = vec![
        port("local", &["sg"], &["192.0.2.1"], &[]),
        port("m1", &["ga"], &["192.0.2.11"], &[]),
        port("m2", &["gb"], &["192.0.2.12"], &[]),
    ];
    let mut ids = Identities::default();
    let before = run(
        &nb(ports.clone(), groups.clone()),
        &[("local", 1)],
        &mut ids,
    );
    let again = run(
        &nb(ports.clone(), groups.clone()),
        &[("local", 1)],
        &mut ids,
    );
    assert_eq!(before, again, "no churn");
    // m2 joins ga too: its identity changes to a new number; m1's stays.
    let mut ports2 = ports.clone();
    ports2[2].security_groups.push("ga".into());
    let after = run(&nb(ports2, groups.clone()), &[("local", 1)], &mut ids);
    let m1 = ident_key("192.0.2.11".parse().unwrap());
    let m2 = ident_key("192.0.2.12".parse().unwrap());
    assert_eq!(after.entries.ident[&m1], before.entries.ident[&m1]);
    assert_ne!(after.entries.ident[&m2], before.entries.ident[&m2]);
    assert!(after.entries.ident[&m2] > before.entries.ident.values().copied().max().unwrap());
    // m2 is still allowed (through both rules now).
    assert!(allowed(
        &after.entries,
        1,
        "192.0.2.12",
        DIR_INGRESS,
        6,
        [0, 1]
    ));
    // Removal: m1 leaves every group → no entry, no policy for it.
    let mut ports3 = ports.clone();
    ports3[1].security_groups.clear();
    let removed = run(&nb(ports3, groups), &[("local", 1)], &mut ids);
    assert!(!removed.entries.ident.contains_key(&m1));
    assert!(!allowed(
        &removed.entries,
        1,
        "192.0.2.11",
        DIR_INGRESS,
        6,
        [0, 1]
    ));
    // No rule names ga's identity any more: its policy entries are gone.
    assert!(removed.entries.policy.len() < after.entries.policy.len());
}

#[test]
fn adopted_numbers_are_reused_after_a_restart() {
    let groups = vec![
        group("sg", vec![from_group("a", "ga")]),
        group("ga", vec![]),
    ];
    let ports = vec![
        port("local", &["sg"], &["192.0.2.1"], &[]),
        port("m1", &["ga"], &["192.0.2.11"], &["198.51.100.0/24"]),
    ];
    let n = nb(ports, groups);
    // Numbers a fresh allocator would not pick.
    let mut first = Identities {
        next: 41,
        ..Default::default()
    };
    let before = run(&n, &[("local", 1)], &mut first);
    let mut restarted = Identities::default();
    restarted.adopt(&before.entries.ident, &before.entries.ident_lpm);
    let after = run(&n, &[("local", 1)], &mut restarted);
    assert_eq!(before.entries, after.entries);
    // A new set after that gets a number above the adopted ones.
    assert!(restarted.next >= 42);
}

#[test]
fn policy_size_does_not_grow_with_members() {
    // 10,000 members of one remote group: one identity, so one policy entry per rule
    // block, whatever the membership.
    let mut ports = vec![port("local", &["sg"], &["192.0.2.1"], &[])];
    for i in 0..10_000u32 {
        let ip = std::net::Ipv4Addr::from(0xc633_0000 + i).to_string(); // 198.51.x.y
        ports.push(port(&format!("m{i}"), &["members"], &[ip.as_str()], &[]));
    }
    let mut r = from_group("r", "members");
    r.protocol = Some("tcp".into());
    r.port_range_min = Some(1000);
    r.port_range_max = Some(1010);
    let n = nb(ports, vec![group("sg", vec![r]), group("members", vec![])]);
    let s = run(&n, &[("local", 1)], &mut Identities::default());
    assert_eq!(s.entries.ident.len(), 10_000);
    assert_eq!(s.identities, 1);
    assert_eq!(s.entries.policy.len(), port_blocks(1000, 1010).len());
}

#[test]
fn same_key_from_two_rules_keeps_one_tag() {
    let n = nb(
        vec![port("p", &["a", "b"], &["192.0.2.1"], &[])],
        vec![
            group("a", vec![rule("r", RuleDirection::Egress, EtherType::IPv4)]),
            group("b", vec![rule("r", RuleDirection::Egress, EtherType::IPv4)]),
        ],
    );
    let s = run(&n, &[("p", 1)], &mut Identities::default());
    assert_eq!(s.entries.policy.len(), 1);
    let tag = s.entries.policy.values().next().unwrap().rule;
    assert_eq!(tag, rule_tag("a", "r").min(rule_tag("b", "r")));
}

/// The security-group entries with each identity number replaced by the entries holding
/// it: numbers depend on the order they were handed out, what they group does not.
#[expect(clippy::type_complexity, reason = "a one-off comparison form")]
pub(crate) fn canonical(
    ident: &BTreeMap<IdentKey, u32>,
    ident_lpm: &BTreeMap<IdentLpmKey, u32>,
    policy: &BTreeMap<PolicyLpmKey, PolicyValue>,
) -> (
    BTreeMap<String, Vec<String>>,
    BTreeSet<(String, Vec<String>)>,
) {
    let mut holders: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for (k, n) in ident {
        holders.entry(*n).or_default().push(format!("{k:?}"));
    }
    for (k, n) in ident_lpm {
        holders.entry(*n).or_default().push(format!("{k:?}"));
    }
    let of = |n: u32| {
        holders
            .get(&n)
            .cloned()
            .unwrap_or_else(|| vec![format!("special {n}")])
    };
    let entries = ident
        .iter()
        .map(|(k, n)| (format!("{k:?}"), of(*n)))
        .chain(ident_lpm.iter().map(|(k, n)| (format!("{k:?}"), of(*n))))
        .collect();
    let policy = policy
        .iter()
        .map(|(k, v)| {
            let mut k = *k;
            let held = of(k.key.ident);
            k.key.ident = 0;
            (format!("{k:?} {v:?}"), held)
        })
        .collect();
    (entries, policy)
}

/// Member by member, the engine's patched entries equal a fresh computation: hosts,
/// nested CIDR pairs (a /24 holding a /26 holding hosts), rule prefixes around members,
/// members joining, leaving and moving between groups; identity numbers are never
/// reused for another set.
#[test]
fn engine_member_changes_equal_a_fresh_computation() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed % n) as usize
    };
    let cidrs = [
        "198.51.100.0/24",
        "198.51.100.0/26",
        "198.51.100.64/26",
        "2001:db8:5::/64",
    ];
    let member = |n: usize, next: &mut dyn FnMut(u64) -> usize| {
        let groups: Vec<String> = (0..next(3)).map(|_| format!("g{}", next(4))).collect();
        let g: Vec<&str> = groups.iter().map(String::as_str).collect();
        let ip = format!("198.51.100.{}", next(128));
        let ip6 = format!("2001:db8:5::{:x}", next(64));
        let mut aaps: Vec<&str> = Vec::new();
        if next(3) == 0 {
            aaps.push(cidrs[next(cidrs.len() as u64)]);
        }
        port(&format!("m{n}"), &g, &[ip.as_str(), ip6.as_str()], &aaps)
    };
    let mut ports: Vec<LPort> = (0..12).map(|n| member(n, &mut next)).collect();
    ports.push(port("local", &["g0", "g1"], &["192.0.2.10"], &[]));
    let groups = vec![
        group(
            "g0",
            vec![from_group("a", "g1"), from_prefix("b", "198.51.100.0/25")],
        ),
        group("g1", vec![from_group("a", "g2"), from_group("b", "g3")]),
        group("g2", vec![]),
        group("g3", vec![from_prefix("a", "198.51.100.96/27")]),
    ];
    let mut snap = nb(ports, groups);
    let mut engine = SgEngine::default();
    let mut ids = Identities::default();
    let mut out = MapEntries::default();
    let mut seen: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    let mut incremental = 0;
    for step in 0..400 {
        let mut changed = BTreeSet::new();
        if step > 0 {
            let n = next(12);
            let id = format!("m{n}");
            if next(6) == 0 {
                snap.lports.remove(&id);
            } else {
                snap.lports
                    .insert(id.clone(), std::sync::Arc::new(member(n, &mut next)));
            }
            changed.insert(id);
        }
        let local = [(7, &*snap.lports["local"])];
        let (keys, summary) = engine.compute(
            &snap,
            &local,
            Some(&changed),
            || snap.lports.values(),
            &mut ids,
            &mut out,
        );
        incremental += usize::from(keys.is_some());
        let fresh = compute(&snap, &local, &mut Identities::default());
        assert_eq!(
            canonical(&out.ident, &out.ident_lpm, &out.policy),
            canonical(
                &fresh.entries.ident,
                &fresh.entries.ident_lpm,
                &fresh.entries.policy
            ),
            "step {step}"
        );
        assert_eq!(*summary.ports, fresh.ports, "step {step}");
        assert_eq!(summary.identities, fresh.identities, "step {step}");
        // A number, once given to a set of entries' selectors, is never another set's.
        for (n, holders) in canonical_numbers(&out) {
            let first = seen.entry(n).or_insert_with(|| holders.clone());
            assert!(
                first == &holders || holders.is_empty(),
                "step {step}: identity {n} reused"
            );
        }
    }
    assert!(
        incremental > 350,
        "only {incremental} computations were incremental"
    );
}

/// Identity number → the sorted policy keys (identity cleared) naming it: what the
/// number means to the datapath.
fn canonical_numbers(out: &MapEntries) -> BTreeMap<u32, Vec<String>> {
    let mut m: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for k in out.policy.keys() {
        let mut c = *k;
        c.key.ident = 0;
        m.entry(k.key.ident).or_default().push(format!("{c:?}"));
    }
    m
}
