//! The real `dfctl` binary against a real etcd (started per test on free loopback ports,
//! killed by a Drop guard): CRUD, every validation error reaching the user with exit code 2,
//! referential checks, malformed records, etcd unreachable (exit 1, within the timeout) and
//! `garp list` against a stub agent.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    io::Write,
    net::TcpListener,
    process::Command,
    time::{Duration, Instant},
};

mod common;

use common::{DFCTL, Etcd, dfctl_at, free_port, stub_agent};

fn json(s: &str) -> serde_json::Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

#[test]
fn crud_round_trip() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --name demo-net --vni 100 --mtu 1450 --aap-mode detection");
    etcd.ok("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
    etcd.ok("subnet create sub6 --lswitch net1 --cidr 2001:db8::/64");
    etcd.ok(
        "lport create web1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11 \
         --aap 192.0.2.100 --chassis hv1 --ifname tapweb1",
    );
    etcd.ok("secgroup create sg1");
    etcd.ok(
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --fixed-ip 2001:db8::12 --aap 192.0.2.100 --aap 198.51.100.0/24,00:00:5e:00:01:01 \
         --security-group sg1 --device-owner compute:nova",
    );

    let ls = json(&etcd.ok("lswitch show net1"));
    assert_eq!(ls["segmentation_id"], 100);
    assert_eq!(ls["name"], "demo-net");
    assert_eq!(ls["aap_mode"], "detection");
    let list = etcd.ok("lswitch list");
    assert!(list.starts_with("ID"), "{list}");
    assert!(list.contains("net1") && list.contains("demo-net") && list.contains("detection"));

    let sn = json(&etcd.ok("subnet show sub6"));
    assert_eq!(sn["ip_version"], 6);
    assert_eq!(sn["cidr"], "2001:db8::/64");
    assert!(etcd.ok("subnet list").contains("192.0.2.0/24"));

    let p = json(&etcd.ok("lport show web2"));
    assert_eq!(
        p["fixed_ips"],
        serde_json::json!(["192.0.2.12", "2001:db8::12"])
    );
    assert_eq!(
        p["allowed_address_pairs"],
        serde_json::json!([
            {"ip_address": "192.0.2.100"},
            {"ip_address": "198.51.100.0/24", "mac_address": "00:00:5e:00:01:01"}
        ])
    );
    assert_eq!(p["port_security_enabled"], true);
    assert_eq!(p["security_groups"], serde_json::json!(["sg1"]));
    let list = etcd.ok("lport list");
    assert_eq!(list.lines().count(), 3, "{list}");
    assert!(list.contains("tapweb1") && list.contains("198.51.100.0/24,00:00:5e:00:01:01"));
    let arr = json(&etcd.ok("lport list --output json"));
    assert_eq!(arr.as_array().unwrap().len(), 2);
    assert_eq!(arr[0]["id"], "web1");

    // Updates: add then remove an AAP, replace fixed IPs, toggle port security.
    etcd.ok("lport update web1 --add-aap 192.0.2.66 --add-aap 203.0.113.0/28,fa:16:3e:00:00:77");
    let p = json(&etcd.ok("lport show web1"));
    assert_eq!(p["allowed_address_pairs"].as_array().unwrap().len(), 3);
    etcd.ok("lport update web1 --remove-aap 192.0.2.66 --remove-aap 203.0.113.0/28");
    let p = json(&etcd.ok("lport show web1"));
    assert_eq!(
        p["allowed_address_pairs"],
        serde_json::json!([{"ip_address": "192.0.2.100"}])
    );
    etcd.fails(
        "lport update web1 --remove-aap 192.0.2.66",
        2,
        "192.0.2.66 is not on the port",
    );
    etcd.ok("lport update web1 --fixed-ip 192.0.2.21 --chassis hv2 --ifname tapw1");
    let p = json(&etcd.ok("lport show web1"));
    assert_eq!(p["fixed_ips"], serde_json::json!(["192.0.2.21"]));
    assert_eq!(p["chassis"], "hv2");
    assert_eq!(p["ifname"], "tapw1");
    // web1 got the default group; Neutron refuses to turn port security off under it.
    etcd.fails(
        "lport update web1 --port-security false",
        2,
        "security groups (default) need port security",
    );
    etcd.ok(
        "lport update web1 --remove-aap 192.0.2.100 --port-security false --no-security-groups",
    );
    assert_eq!(
        json(&etcd.ok("lport show web1"))["port_security_enabled"],
        false
    );
    etcd.ok("lport update web1 --port-security true --add-aap 192.0.2.100 --unbind");
    let p = json(&etcd.ok("lport show web1"));
    assert_eq!(p["port_security_enabled"], true);
    assert!(p.get("chassis").is_none());

    // Deletes: an lswitch with ports and a subnet in use are refused.
    etcd.fails(
        "lswitch delete net1",
        2,
        "lswitch net1 still has ports (web1, web2)",
    );
    etcd.fails("subnet delete sub1", 2, "subnet sub1 still has ports");
    etcd.ok("lport delete web1");
    etcd.ok("lport delete web2");
    etcd.fails("lport delete web2", 2, "lport web2 not found");
    etcd.fails("lport show web2", 2, "lport web2 not found");
    etcd.ok("subnet delete sub1");
    etcd.ok("lswitch delete net1");
    etcd.fails("lswitch show net1", 2, "lswitch net1 not found");
    // The remaining subnet went with its lswitch.
    assert_eq!(etcd.ok("subnet list").lines().count(), 1);
    assert_eq!(json(&etcd.ok("lport list -o json")), serde_json::json!([]));
    etcd.fails("lswitch delete net1", 2, "lswitch net1 not found");
}

#[test]
fn validation_errors_reach_the_user() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    let port = "lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01";
    let cases: &[(String, &str)] = &[
        // lswitch
        (
            "lswitch create ls0 --vni 0".into(),
            "lswitch ls0: segmentation_id 0 is out of range",
        ),
        (
            "lswitch create ls0 --vni 16777216".into(),
            "segmentation_id 16777216 is out of range",
        ),
        (
            "lswitch create ls0 --vni 5 --mtu 67".into(),
            "mtu 67 is out of range 68..=9000",
        ),
        (
            "lswitch create ls0 --vni 5 --mtu 9001".into(),
            "mtu 9001 is out of range",
        ),
        (
            "lswitch create a/b --vni 5".into(),
            "it must not contain '/'",
        ),
        (
            "lswitch create net1 --vni 5".into(),
            "lswitch net1 already exists",
        ),
        // subnet
        (
            "subnet create s1 --lswitch net1 --cidr 192.0.2.1/24".into(),
            "subnet s1: cidr 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?",
        ),
        (
            "subnet create s1 --lswitch net1 --cidr 192.0.2.0".into(),
            "is not a CIDR",
        ),
        (
            "subnet create s1 --lswitch net1 --cidr 0.0.0.0/0".into(),
            "prefix length 0",
        ),
        (
            "subnet create s1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 198.51.100.1".into(),
            "gateway 198.51.100.1 is not inside cidr 192.0.2.0/24",
        ),
        (
            "subnet create s1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.255".into(),
            "is the broadcast address",
        ),
        (
            "subnet create s1 --lswitch net1 --cidr 192.0.2.0/24 --gateway x".into(),
            "gateway \"x\"",
        ),
        (
            "subnet create s1 --lswitch nope --cidr 192.0.2.0/24".into(),
            "lswitch nope does not exist",
        ),
        // lport: MACs
        (
            "lport create p1 --lswitch net1 --mac fa:16:3e:00:00".into(),
            "lport p1: \"fa:16:3e:00:00\" is not a MAC address",
        ),
        (
            "lport create p1 --lswitch net1 --mac 01:00:5e:00:00:01".into(),
            "must be unicast",
        ),
        (
            "lport create p1 --lswitch net1 --mac 00:00:00:00:00:00".into(),
            "not a valid port MAC",
        ),
        // lport: fixed IPs
        (
            format!("{port} --fixed-ip 192.0.2.300"),
            "fixed IP \"192.0.2.300\" is not an IP address",
        ),
        (
            format!("{port} --fixed-ip 224.0.0.1"),
            "is a multicast address",
        ),
        (
            format!("{port} --fixed-ip 192.0.2.5 --fixed-ip 192.0.2.5"),
            "listed twice",
        ),
        // lport: allowed address pairs
        (
            format!("{port} --aap 192.0.2.300"),
            "lport p1: allowed address pair 192.0.2.300 is not an IP address or CIDR",
        ),
        (
            format!("{port} --aap 192.0.2.0/33"),
            "is not an IP address or CIDR",
        ),
        (
            format!("{port} --aap 192.0.2.5/24"),
            "has host bits set; did you mean 192.0.2.0/24?",
        ),
        (
            format!("{port} --aap 192.0.2.5,zz"),
            "\"zz\" is not a MAC address",
        ),
        (
            format!("{port} --aap 192.0.2.5,01:00:5e:00:00:01"),
            "is a multicast address",
        ),
        (
            format!("{port} --aap 192.0.2.5,00:00:00:00:00:00"),
            "MAC 00:00:00:00:00:00 is not valid",
        ),
        (
            format!("{port} --aap 224.0.0.18"),
            "cannot be a packet source",
        ),
        (
            format!("{port} --aap 192.0.2.5 --aap 192.0.2.5,fa:16:3e:00:00:01"),
            "allowed address pair 192.0.2.5,fa:16:3e:00:00:01 is listed twice",
        ),
        (
            format!("{port} --aap 0.0.0.0/0"),
            "would let the port claim every address",
        ),
        (format!("{port} --aap ::/0"), "unless allow_any_aap is set"),
        (
            format!("{port} --aap 192.0.2.5 --no-port-security"),
            "allowed address pairs require port security to be enabled",
        ),
        (
            format!("{port} --security-group sg1 --no-port-security"),
            "security groups (sg1) need port security",
        ),
        (
            format!(
                "{port}{}",
                (0..11)
                    .map(|i| format!(" --aap 192.0.2.{}", 100 + i))
                    .collect::<String>()
            ),
            "11 allowed address pairs exceed the maximum of 10",
        ),
        // lport: binding and ids
        (
            format!("{port} --ifname tap1234567890123"),
            "at most 15 bytes",
        ),
        (
            format!("{port} --ifname tap:1"),
            "must not contain '/' or ':'",
        ),
        (
            format!("{port} --chassis a/b"),
            "chassis name \"a/b\" is invalid",
        ),
        (
            "lport create p/1 --lswitch net1 --mac fa:16:3e:00:00:01".into(),
            "lport id \"p/1\"",
        ),
        (
            "lport create p1 --lswitch nope --mac fa:16:3e:00:00:01".into(),
            "lswitch nope does not exist",
        ),
        (
            "lport update nope --add-aap 192.0.2.5".into(),
            "lport nope not found",
        ),
    ];
    for (args, msg) in cases {
        etcd.fails(args, 2, msg);
    }
    // Nothing invalid was written.
    assert_eq!(etcd.ok("lport list").lines().count(), 1);
    assert_eq!(etcd.ok("subnet list").lines().count(), 1);
    assert_eq!(etcd.ok("lswitch list").lines().count(), 2);

    // clap usage errors are exit 2 as well.
    let out = etcd.dfctl(&["lswitch", "create", "x", "--vni", "-1"]);
    assert_eq!(out.status.code(), Some(2));
    let out = etcd.dfctl(&["lport", "frobnicate"]);
    assert_eq!(out.status.code(), Some(2));
    let out = etcd.dfctl(&["lport", "update", "p1", "--port-security", "maybe"]);
    assert_eq!(out.status.code(), Some(2));

    // The options relax the rules.
    etcd.ok(&format!("{port} --aap 0.0.0.0/0 --allow-any-aap"));
    etcd.ok(&format!(
        "lport create p2 --lswitch net1 --mac fa:16:3e:00:00:02 --max-allowed-address-pairs 11{}",
        (0..11)
            .map(|i| format!(" --aap 192.0.2.{}", 100 + i))
            .collect::<String>()
    ));
    // ...but a later update under the default limit is refused.
    etcd.fails(
        "lport update p2 --add-aap 192.0.2.200",
        2,
        "12 allowed address pairs exceed the maximum of 10",
    );
    // A record written under relaxed options stays listable, but an update re-checks it
    // under the options of that invocation.
    assert!(etcd.ok("lport list").contains("0.0.0.0/0"));
    etcd.fails(
        "lport update p1 --chassis hv1",
        2,
        "unless allow_any_aap is set",
    );
    etcd.ok("lport update p1 --chassis hv1 --allow-any-aap");
    // Update-time rules.
    etcd.ok("lport create p3 --lswitch net1 --mac fa:16:3e:00:00:03 --aap 192.0.2.5");
    etcd.fails(
        "lport update p3 --port-security false --no-security-groups",
        2,
        "require port security",
    );
    etcd.fails(
        "lport update p3 --add-aap 192.0.2.300",
        2,
        "is not an IP address or CIDR",
    );
    etcd.fails(
        "lport update p3 --add-aap 192.0.2.5",
        2,
        "192.0.2.5,fa:16:3e:00:00:03 is listed twice",
    );
    etcd.fails(
        "lport update p3 --fixed-ip nope",
        2,
        "fixed IP \"nope\" is not an IP address",
    );
    etcd.fails(
        "lport update p3 --ifname a:b",
        2,
        "interface name \"a:b\" is invalid",
    );
    etcd.fails(
        "lport update p3 --security-group sg1 --port-security false --remove-aap 192.0.2.5",
        2,
        "need port security",
    );
    etcd.ok("lport update p3 --port-security false --remove-aap 192.0.2.5 --no-security-groups");
}

#[test]
fn referential_checks() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("lswitch create net2 --vni 200 --mtu 1000");
    // Without subnets any fixed IP is accepted.
    etcd.ok("lport create a --lswitch net1 --mac fa:16:3e:00:00:0a --fixed-ip 198.51.100.5");
    etcd.ok("lport delete a");
    etcd.ok("subnet create s1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
    etcd.fails(
        "subnet create s2 --lswitch net1 --cidr 192.0.2.128/25",
        2,
        "cidr 192.0.2.128/25 overlaps subnet s1 (192.0.2.0/24) on lswitch net1",
    );
    // The same CIDR on another lswitch is fine.
    etcd.ok("subnet create s3 --lswitch net2 --cidr 192.0.2.0/24");
    etcd.fails(
        "subnet create s6 --lswitch net2 --cidr 2001:db8::/64",
        2,
        "needs an MTU of at least 1280; lswitch net2 has 1000",
    );
    etcd.fails(
        "lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 198.51.100.5",
        2,
        "fixed IP 198.51.100.5 is not in any subnet of lswitch net1 (192.0.2.0/24)",
    );
    etcd.fails(
        "lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.1",
        2,
        "fixed IP 192.0.2.1 is the gateway of subnet s1",
    );
    etcd.ok(
        "lport create r1 --lswitch net1 --mac fa:16:3e:00:00:99 --fixed-ip 192.0.2.1 \
         --device-owner network:router_interface",
    );
    etcd.ok("lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11");
    etcd.fails(
        "lport create p2 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.12",
        2,
        "MAC address fa:16:3e:00:00:01 is already used by lport p1 on lswitch net1",
    );
    etcd.fails(
        "lport create p2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.11",
        2,
        "fixed IP 192.0.2.11 is already used by lport p1 on lswitch net1",
    );
    etcd.fails(
        "lport create p1 --lswitch net1 --mac fa:16:3e:00:00:03",
        2,
        "lport p1 already exists",
    );
    // Two ports may share an AAP (that is the point of AAPs) and a port on another lswitch may
    // reuse a MAC and IP.
    etcd.ok(
        "lport create p2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --aap 192.0.2.100",
    );
    etcd.ok("lport update p1 --add-aap 192.0.2.100");
    etcd.ok("lport create q1 --lswitch net2 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11");
    etcd.fails(
        "lport update p2 --fixed-ip 192.0.2.11",
        2,
        "fixed IP 192.0.2.11 is already used by lport p1",
    );
    etcd.fails(
        "lport update p2 --fixed-ip 203.0.113.5",
        2,
        "is not in any subnet",
    );
}

/// Issue 11 item 6: a port may not take another port's fixed IP as an allowed address pair
/// (nor a fixed IP another port holds as a pair), nor another port's tap on a chassis.
#[test]
fn port_conflicts_are_refused() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("lswitch create net2 --vni 200");
    etcd.ok(
        "lport create web1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11 \
         --aap 192.0.2.100 --chassis hv1 --ifname tapweb1",
    );
    etcd.fails(
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --aap 192.0.2.11",
        2,
        "lport web2: allowed address pair 192.0.2.11 is a fixed IP of lport web1 on lswitch net1",
    );
    etcd.fails(
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.100",
        2,
        "lport web2: fixed IP 192.0.2.100 is an allowed address pair of lport web1 on lswitch net1",
    );
    // Sharing the pair is what pairs are for; the same address on another network is
    // another address.
    etcd.ok(
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --aap 192.0.2.100",
    );
    etcd.ok(
        "lport create other --lswitch net2 --mac fa:16:3e:00:00:03 --fixed-ip 192.0.2.20 \
         --aap 192.0.2.11",
    );
    // Taps: the explicit ifname, on the same chassis, whatever the network.
    etcd.fails(
        "lport create web3 --lswitch net2 --mac fa:16:3e:00:00:04 --chassis hv1 --ifname tapweb1",
        2,
        "lport web3: tap tapweb1 on chassis hv1 is already bound to lport web1",
    );
    etcd.ok(
        "lport create web3 --lswitch net2 --mac fa:16:3e:00:00:04 --chassis hv2 --ifname tapweb1",
    );
    // The derived name: tap + the first 11 characters of the id.
    etcd.ok("lport create 0123456789abcdef --lswitch net1 --mac fa:16:3e:00:00:05 --chassis hv1");
    etcd.fails(
        "lport create 0123456789a-two --lswitch net1 --mac fa:16:3e:00:00:06 --chassis hv1",
        2,
        "tap tap0123456789a on chassis hv1 is already bound to lport 0123456789abcdef",
    );
    // Updates are checked the same way (and a port never conflicts with itself).
    etcd.fails(
        "lport update web3 --chassis hv1",
        2,
        "lport web3: tap tapweb1 on chassis hv1 is already bound to lport web1",
    );
    etcd.fails(
        "lport update web2 --add-aap 192.0.2.11",
        2,
        "allowed address pair 192.0.2.11 is a fixed IP of lport web1",
    );
    etcd.fails(
        "lport update web2 --fixed-ip 192.0.2.100",
        2,
        "fixed IP 192.0.2.100 is an allowed address pair of lport web1",
    );
    etcd.ok("lport update web1 --chassis hv1 --ifname tapweb1 --add-aap 192.0.2.101");
    // Nothing refused was written.
    let ports = json(&etcd.ok("lport list -o json"));
    let ids: Vec<&str> = ports
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["0123456789abcdef", "other", "web1", "web2", "web3"]);
    let web2 = json(&etcd.ok("lport show web2"));
    assert_eq!(
        web2["allowed_address_pairs"],
        serde_json::json!([{"ip_address": "192.0.2.100"}])
    );
    assert_eq!(web2["fixed_ips"], serde_json::json!(["192.0.2.12"]));
    assert_eq!(json(&etcd.ok("lport show web3"))["chassis"], "hv2");
}

#[test]
fn malformed_records_are_skipped_with_a_warning() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("lport create good --lswitch net1 --mac fa:16:3e:00:00:01");
    etcd.etcdctl_put("/dragonflow/lport/junk", "{not json");
    etcd.etcdctl_put(
        "/dragonflow/lport/bad",
        r#"{"id":"bad","lswitch":"net1","mac":"fa:16:3e:00:00:02","port_security_enabled":false,
            "allowed_address_pairs":[{"ip_address":"192.0.2.5"}]}"#,
    );
    let out = etcd.dfctl(&["lport", "list"]);
    assert!(out.status.success());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains("good") && !stdout.contains("junk") && !stdout.contains("bad"));
    assert!(stderr.contains("warning: skipping malformed record: lport junk: malformed JSON"));
    assert!(stderr.contains(
        "warning: skipping malformed record: lport bad: allowed address pairs require port security"
    ));
    // Showing a malformed record is an error of the database, not of the input.
    let out = etcd.dfctl(&["lport", "show", "junk"]);
    assert_eq!(out.status.code(), Some(1));
    // A prefix of our own keeps objects apart.
    let out = etcd.dfctl(&["--prefix", "/other", "lport", "list", "-o", "json"]);
    assert_eq!(
        json(&String::from_utf8_lossy(&out.stdout)),
        serde_json::json!([])
    );
}

#[test]
fn etcd_unreachable_fails_fast_with_exit_1() {
    // Nothing listens: connection refused.
    let port = free_port();
    let t = Instant::now();
    let out = dfctl_at(&format!("http://127.0.0.1:{port}"), &["lswitch", "list"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.starts_with("error: cannot reach etcd at http://127.0.0.1:"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );

    // Something accepts TCP but never speaks gRPC: the timeout ends it.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = silent.local_addr().unwrap();
    let t = Instant::now();
    let out = dfctl_at(
        &format!("http://{addr}"),
        &["--timeout", "2", "lswitch", "create", "x", "--vni", "5"],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("did not answer") || err.contains("cannot reach etcd"),
        "{err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(8),
        "took {:?}",
        t.elapsed()
    );
    drop(silent);

    // Validation happens before etcd is needed? No: the store is connected first, but a
    // usage error from clap never touches etcd.
    let out = dfctl_at(
        &format!("http://127.0.0.1:{port}"),
        &["lswitch", "create", "x"],
    );
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn garp_list() {
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis();
    let body: &'static str = format!(
        r#"[{{"ip":"192.0.2.100","mac":"fa:16:3e:00:00:01","ifname":"tapweb1","lport":"web1",
             "net_id":100,"op":"request","last_seen_unix_ms":{now_ms},"count":3}},
            {{"ip":"192.0.2.101","mac":"fa:16:3e:00:00:02","ifname":"tapweb2","lport":null,
             "net_id":100,"op":"reply","last_seen_unix_ms":{now_ms},"count":1}}]"#
    )
    .leak();
    for chunked in [false, true] {
        let agent = stub_agent(chunked, body);
        let out = Command::new(DFCTL)
            .args(["garp", "list", "--agent", &agent])
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 3, "{stdout}");
        assert!(
            lines[0].starts_with("IP") && lines[0].contains("LAST_SEEN"),
            "{stdout}"
        );
        assert!(
            lines[1].contains("192.0.2.100") && lines[1].contains("tapweb1"),
            "{stdout}"
        );
        assert!(
            lines[1].contains("web1") && lines[1].contains("request"),
            "{stdout}"
        );
        assert!(
            lines[1].contains("s ago") && lines[1].trim_end().ends_with('3'),
            "{stdout}"
        );
        assert!(
            lines[2].contains("192.0.2.101") && lines[2].contains(" - "),
            "{stdout}"
        );
        let out = Command::new(DFCTL)
            .args(["garp", "list", "--agent", &agent, "-o", "json"])
            .output()
            .unwrap();
        assert_eq!(
            json(&String::from_utf8_lossy(&out.stdout))
                .as_array()
                .unwrap()
                .len(),
            2
        );
    }
    // A wrong path prefix gets the 404 through.
    let agent = stub_agent(false, "[]");
    let out = Command::new(DFCTL)
        .args(["garp", "list", "--agent", &format!("{agent}/x")])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("404"));
    // Agent down: exit 1 with the reason.
    let out = Command::new(DFCTL)
        .args([
            "garp",
            "list",
            "--agent",
            &format!("http://127.0.0.1:{}", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: agent at http://127.0.0.1:"));
    // Not http: usage error.
    let out = Command::new(DFCTL)
        .args(["garp", "list", "--agent", "ftp://x"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn lrouter_lifecycle() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("lswitch create net2 --vni 200 --mtu 1450");
    etcd.ok("lswitch create net3 --vni 300");
    etcd.ok("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
    etcd.ok("subnet create sub2 --lswitch net2 --cidr 2001:db8:1::/64");
    etcd.ok(
        "lport create vm1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11 \
         --chassis hv1",
    );

    etcd.ok("lrouter create r1 --name edge");
    etcd.fails("lrouter create r1", 2, "lrouter r1 already exists");
    etcd.ok("lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 --ip 192.0.2.1/24");
    etcd.ok(
        "lrouter add-interface r1 --lswitch net2 --mac fa:16:3e:00:01:02 \
         --ip 2001:db8:1::1/64 --id r1-v6",
    );
    let r = json(&etcd.ok("lrouter show r1"));
    assert_eq!(r["name"], "edge");
    assert_eq!(
        r["ports"],
        serde_json::json!([
            {"id": "r1-net1", "lswitch": "net1", "mac": "fa:16:3e:00:01:01", "ip": "192.0.2.1/24"},
            {"id": "r1-v6", "lswitch": "net2", "mac": "fa:16:3e:00:01:02", "ip": "2001:db8:1::1/64"}
        ])
    );
    let list = etcd.ok("lrouter list");
    assert!(list.starts_with("ID"), "{list}");
    assert!(
        list.contains("r1-net1 net1 192.0.2.1/24 fa:16:3e:00:01:01"),
        "{list}"
    );
    assert_eq!(
        json(&etcd.ok("lrouter list -o json"))
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Refusals (exit 2, one line).
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:09 --ip 192.0.2.2/24",
        2,
        "router already has interface r1-net1 on lswitch net1",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net3 --mac fa:16:3e:00:01:01 --ip 203.0.113.1/24",
        2,
        "have the same MAC",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net3 --mac 01:00:5e:00:00:01 --ip 203.0.113.1/24",
        2,
        "is not a unicast MAC",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net3 --mac fa:16:3e:00:01:03 --ip 203.0.113.1",
        2,
        "needs the subnet's prefix length",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net3 --mac fa:16:3e:00:01:03 --ip nope/24",
        2,
        "is not IP/LEN",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch nope --mac fa:16:3e:00:01:03 --ip 203.0.113.1/24",
        2,
        "lswitch nope does not exist",
    );
    etcd.fails(
        "lrouter add-interface r9 --lswitch net3 --mac fa:16:3e:00:01:03 --ip 203.0.113.1/24",
        2,
        "lrouter r9 not found",
    );
    etcd.ok("lrouter create r2");
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:00:01 --ip 192.0.2.0/25",
        2,
        "network address",
    );
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:02:01 --ip 198.51.100.1/24",
        2,
        "is not a subnet of lswitch net1 (192.0.2.0/24)",
    );
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:00:01 --ip 192.0.2.2/24",
        2,
        "MAC fa:16:3e:00:00:01 is already used by lport vm1 on lswitch net1",
    );
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:02:01 --ip 192.0.2.11/24",
        2,
        "IP 192.0.2.11 is already used by lport vm1",
    );
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:02:01 --ip 192.0.2.1/24",
        2,
        "IP 192.0.2.1 is already used by router r1 interface r1-net1",
    );
    // Ports cannot take a router interface's MAC or address.
    etcd.fails(
        "lport create vm2 --lswitch net1 --mac fa:16:3e:00:01:01 --fixed-ip 192.0.2.12",
        2,
        "already used by lrouter r1 interface r1-net1",
    );
    etcd.fails(
        "lport update vm1 --fixed-ip 192.0.2.1",
        2,
        "fixed IP 192.0.2.1 is",
    );
    // An lswitch or subnet with router interfaces cannot go.
    etcd.fails(
        "lswitch delete net2",
        2,
        "lswitch net2 still has router interfaces (lrouter r1)",
    );
    etcd.fails("subnet delete sub2", 2, "still has router interfaces");

    etcd.ok("lrouter remove-interface r1 --lswitch net2");
    etcd.fails(
        "lrouter remove-interface r1 --lswitch net2",
        2,
        "it has no interface on lswitch net2",
    );
    assert_eq!(
        json(&etcd.ok("lrouter show r1"))["ports"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    etcd.ok("lswitch delete net2");
    etcd.ok("lrouter delete r1");
    etcd.ok("lrouter delete r2");
    etcd.fails("lrouter delete r1", 2, "lrouter r1 not found");
    etcd.fails("lrouter show r1", 2, "lrouter r1 not found");
    assert_eq!(
        json(&etcd.ok("lrouter list -o json")),
        serde_json::json!([])
    );
}

/// A router interface on a dual-stack network: `--ip` twice (one IPv4, one IPv6), each
/// inside a subnet of the lswitch; one address per family.
#[test]
fn lrouter_dual_stack_interface() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("subnet create sub4 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
    etcd.ok("subnet create sub6 --lswitch net1 --cidr 2001:db8:1::/64 --gateway 2001:db8:1::1");
    etcd.ok("lswitch create net2 --vni 200");
    etcd.ok("subnet create sub2 --lswitch net2 --cidr 198.51.100.0/24");
    etcd.ok("lrouter create r1");

    // --ip is required (clap's usage error, exit 2).
    let out = etcd.dfctl(&[
        "lrouter",
        "add-interface",
        "r1",
        "--lswitch",
        "net1",
        "--mac",
        "fa:16:3e:00:01:01",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ip <IP/LEN>"));
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 \
         --ip 192.0.2.1/24 --ip 192.0.2.2/24",
        2,
        "192.0.2.2/24 and 192.0.2.1/24 are both IPv4; an interface has at most one address \
         per family",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 \
         --ip 192.0.2.1/24 --ip 2001:db8:9::1/64",
        2,
        "ip 2001:db8:9::1/64 is not a subnet of lswitch net1",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 \
         --ip 192.0.2.1/24 --ip 2001:db8:1::1",
        2,
        "needs the subnet's prefix length",
    );
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 \
         --ip 192.0.2.1/24 --ip nope",
        2,
        "--ip \"nope\" is not IP/LEN",
    );
    // The order given is kept: the first address is `ip`, the other `extra_ips`.
    etcd.ok(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 \
         --ip 192.0.2.1/24 --ip 2001:db8:1::1/64",
    );
    etcd.ok("lrouter add-interface r1 --lswitch net2 --mac fa:16:3e:00:02:01 --ip 198.51.100.1/24");
    let r = json(&etcd.ok("lrouter show r1"));
    assert_eq!(
        r["ports"],
        serde_json::json!([
            {"id": "r1-net1", "lswitch": "net1", "mac": "fa:16:3e:00:01:01",
             "ip": "192.0.2.1/24", "extra_ips": ["2001:db8:1::1/64"]},
            {"id": "r1-net2", "lswitch": "net2", "mac": "fa:16:3e:00:02:01",
             "ip": "198.51.100.1/24"}
        ])
    );
    let list = etcd.ok("lrouter list");
    assert!(
        list.contains("r1-net1 net1 192.0.2.1/24,2001:db8:1::1/64 fa:16:3e:00:01:01"),
        "{list}"
    );

    // The IPv6 address is taken like the IPv4 one.
    etcd.ok("lrouter create r2");
    etcd.fails(
        "lrouter add-interface r2 --lswitch net1 --mac fa:16:3e:00:03:01 \
         --ip 192.0.2.3/24 --ip 2001:db8:1::1/64",
        2,
        "IP 2001:db8:1::1 is already used by router r1 interface r1-net1",
    );
    etcd.fails(
        "lport create vm1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 2001:db8:1::1 \
         --device-owner network:router_interface",
        2,
        "fixed IP 2001:db8:1::1 is already used by lrouter r1 interface r1-net1",
    );
    etcd.fails("subnet delete sub6", 2, "still has router interfaces");
    etcd.fails(
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:09 --ip 2001:db8:1::9/64",
        2,
        "router already has interface r1-net1 on lswitch net1",
    );

    etcd.ok("lrouter remove-interface r1 --lswitch net1");
    etcd.ok("subnet delete sub6");
    etcd.ok("lrouter delete r1");
    etcd.ok("lrouter delete r2");
}

/// The security-group CLI contract: groups with Neutron's default rules, rules with their
/// validation, the default group of new ports, refusals that name what is in the way.
#[test]
fn secgroup_lifecycle() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24");

    // A port with port security and no group gets `default`, created on the way.
    let out =
        etcd.ok("lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11");
    assert!(out.contains("created secgroup default"), "{out}");
    assert_eq!(
        json(&etcd.ok("lport show p1"))["security_groups"],
        serde_json::json!(["default"])
    );
    let d = json(&etcd.ok("secgroup show default -o json"));
    let rules: Vec<(String, String, serde_json::Value)> = d["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["direction"].as_str().unwrap().to_string(),
                r["ethertype"].as_str().unwrap().to_string(),
                r["remote_group_id"].clone(),
            )
        })
        .collect();
    assert_eq!(
        rules,
        vec![
            ("egress".into(), "IPv4".into(), serde_json::Value::Null),
            ("egress".into(), "IPv6".into(), serde_json::Value::Null),
            ("ingress".into(), "IPv4".into(), "default".into()),
            ("ingress".into(), "IPv6".into(), "default".into()),
        ]
    );
    // The second port finds it; no port security, no group.
    let out =
        etcd.ok("lport create p2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12");
    assert!(!out.contains("secgroup"), "{out}");
    etcd.ok("lport create p3 --lswitch net1 --mac fa:16:3e:00:00:03 --no-port-security");
    assert_eq!(
        json(&etcd.ok("lport show p3"))["security_groups"],
        serde_json::json!([])
    );
    etcd.fails(
        "lport create p4 --lswitch net1 --mac fa:16:3e:00:00:04 --no-port-security \
         --security-group default",
        2,
        "security groups (default) need port security",
    );
    etcd.fails(
        "lport create p4 --lswitch net1 --mac fa:16:3e:00:00:04 --security-group web",
        2,
        "lport p4: security group web does not exist",
    );

    // A new group: only the egress rules; --no-default-rules: none.
    etcd.ok("secgroup create web --name web-servers");
    assert_eq!(
        json(&etcd.ok("secgroup show web -o json"))["rules"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    etcd.ok("secgroup create locked --no-default-rules");
    assert!(
        json(&etcd.ok("secgroup show locked -o json"))["rules"]
            .as_array()
            .unwrap()
            .is_empty()
    );
    etcd.fails("secgroup create web", 2, "secgroup web already exists");

    // Rules: printed ids, one port from --port-min, ethertype from the prefix.
    let id = etcd.ok("secgroup rule-add web --direction ingress --protocol tcp --port-min 80");
    let id = id.trim();
    assert_eq!(id.len(), 36, "a UUID: {id}");
    assert_eq!(
        etcd.ok(
            "secgroup rule-add web --direction ingress --protocol tcp --port-min 22 \
             --remote-ip-prefix 2001:db8::/32 --id ssh6"
        )
        .trim(),
        "ssh6"
    );
    etcd.ok(
        "secgroup rule-add web --direction ingress --protocol icmp --port-min 8 \
         --remote-group default --id ping",
    );
    let web = json(&etcd.ok("secgroup show web -o json"));
    let r = web["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == id)
        .unwrap();
    assert_eq!(
        (
            &r["protocol"],
            &r["port_range_min"],
            &r["port_range_max"],
            &r["ethertype"]
        ),
        (
            &serde_json::json!("tcp"),
            &serde_json::json!(80),
            &serde_json::json!(80),
            &serde_json::json!("IPv4")
        )
    );
    let ssh = web["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["id"] == "ssh6")
        .unwrap();
    assert_eq!(ssh["ethertype"], "IPv6");
    assert_eq!(ssh["remote_ip_prefix"], "2001:db8::/32");
    let table = etcd.ok("secgroup show web");
    assert!(table.contains("secgroup web (web-servers)"), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("ping") && l.contains("type 8") && l.contains("group default")),
        "{table}"
    );
    etcd.fails(
        "secgroup rule-add web --direction ingress --protocol tcp --port-min 80 --port-max 80",
        2,
        &format!("rule {id} already allows exactly this"),
    );
    for (args, msg) in [
        ("--direction sideways", "direction \"sideways\" is invalid"),
        (
            "--direction ingress --ethertype ipv5",
            "ethertype \"ipv5\" is invalid",
        ),
        (
            "--direction ingress --protocol tcp --port-min 0",
            "port_range_min 0 is out of range 1..=65535",
        ),
        (
            "--direction ingress --protocol udp --port-min 90 --port-max 80",
            "port_range_min 90 is greater than port_range_max 80",
        ),
        (
            "--direction ingress --protocol icmp --port-max 1",
            "port_range_max (ICMP code) needs port_range_min (ICMP type)",
        ),
        (
            "--direction ingress --protocol icmp --port-min 300",
            "port_range_min 300 is out of range 0..=255 (ICMP type)",
        ),
        (
            "--direction ingress --port-min 80",
            "port_range_min/port_range_max need a protocol",
        ),
        (
            "--direction ingress --protocol gre --port-min 80",
            "protocol gre has no ports we match",
        ),
        (
            "--direction ingress --protocol icmpv6 --ethertype ipv4",
            "protocol icmpv6 is IPv6 only",
        ),
        (
            "--direction ingress --protocol tcpp",
            "protocol \"tcpp\" is invalid",
        ),
        (
            "--direction ingress --remote-ip-prefix 192.0.2.5/24",
            "remote_ip_prefix 192.0.2.5/24 has host bits set; did you mean 192.0.2.0/24?",
        ),
        (
            "--direction ingress --ethertype ipv6 --remote-ip-prefix 192.0.2.0/24",
            "remote_ip_prefix 192.0.2.0/24 is not an IPv6 prefix",
        ),
        (
            "--direction ingress --remote-group nope",
            "remote_group_id nope does not exist",
        ),
        (
            "--direction ingress --id ping",
            "rule id ping is listed twice",
        ),
    ] {
        etcd.fails(&format!("secgroup rule-add web {args}"), 2, msg);
    }
    etcd.fails(
        "secgroup rule-add nope --direction ingress",
        2,
        "secgroup nope not found",
    );

    // Ports use groups by update too.
    etcd.ok("lport update p2 --security-group web --security-group default");
    etcd.fails(
        "lport update p2 --security-group nope",
        2,
        "security group nope does not exist",
    );
    let list = etcd.ok("secgroup list");
    assert!(
        list.lines()
            .any(|l| l.starts_with("default") && l.contains("p1;p2")),
        "{list}"
    );
    assert!(
        list.lines()
            .any(|l| l.starts_with("web") && l.contains("web-servers") && l.contains("5")),
        "{list}"
    );

    // Deleting a group in use: refused, naming the ports, then the rules naming it.
    etcd.fails("secgroup delete web", 2, "secgroup web is used by lport p2");
    etcd.fails(
        "secgroup delete default",
        2,
        "secgroup default is used by lport p1, p2",
    );
    etcd.ok("lport update p1 --no-security-groups");
    etcd.ok("lport update p2 --security-group locked");
    etcd.fails(
        "secgroup delete default",
        2,
        "secgroup default is the remote group of secgroup web rule ping",
    );
    etcd.ok("secgroup rule-delete web ping");
    etcd.fails(
        "secgroup rule-delete web ping",
        2,
        "secgroup web: it has no rule ping",
    );
    etcd.ok("secgroup delete default");
    etcd.ok("secgroup delete web");
    etcd.fails("secgroup delete web", 2, "secgroup web not found");
    assert!(!etcd.ok("secgroup list").contains("web"));
}

/// A file for `dfctl apply` in a temp dir removed on Drop.
struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, text: &str) -> TempFile {
        let dir = std::env::temp_dir().join(format!("dfctl-apply-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        TempFile(path)
    }
    fn path(&self) -> &str {
        self.0.to_str().unwrap()
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

/// 40 networks of 250 ports each (10,000), half of them bound to hv1 under derived taps.
fn ten_thousand_ports() -> (Vec<serde_json::Value>, usize) {
    let mut records = Vec::new();
    for n in 0..40 {
        records.push(serde_json::json!({
            "kind": "lswitch", "id": format!("net{n}"), "segmentation_id": 1000 + n,
        }));
        records.push(serde_json::json!({
            "kind": "subnet", "id": format!("sub{n}"), "lswitch": format!("net{n}"),
            "cidr": "192.0.2.0/24", "gateway_ip": "192.0.2.1", "ip_version": 4,
        }));
    }
    for i in 0..10_000u32 {
        let (n, h) = (i / 250, i % 250);
        let mut port = serde_json::json!({
            "kind": "lport",
            "id": format!("p{i:05}"),
            "lswitch": format!("net{n}"),
            "mac": format!("fa:16:3e:00:{:02x}:{:02x}", i >> 8, i & 0xff),
            "fixed_ips": [format!("192.0.2.{}", h + 2)],
        });
        if i % 2 == 0 {
            port["chassis"] = "hv1".into();
        }
        records.push(port);
    }
    let n = records.len();
    (records, n)
}

/// Issue 11 item 9: `dfctl apply -f` writes 10,000 ports in transactions, all or nothing.
#[test]
fn apply_ten_thousand_ports() {
    let etcd = Etcd::start();
    let (records, n) = ten_thousand_ports();
    let file = TempFile::new("ports.json", &serde_json::to_string(&records).unwrap());
    let started = Instant::now();
    let out = etcd.ok(&format!("apply -f {}", file.path()));
    let took = started.elapsed();
    println!("dfctl apply: {n} records (10000 lports) in {took:.2?}: {out}");
    // Every port got the default group, which apply created with them.
    assert!(
        out.contains(&format!("{} created, 0 replaced, 0 unchanged", n + 1))
            && out.contains("secgroup default"),
        "{out}"
    );
    let listed = json(&etcd.ok("lport list -o json"));
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), 10_000);
    assert_eq!(
        listed[9_999]["fixed_ips"],
        serde_json::json!(["192.0.2.251"])
    );
    assert_eq!(listed[0]["security_groups"], serde_json::json!(["default"]));
    assert_eq!(etcd.ok("lport list").lines().count(), 10_001);
    json(&etcd.ok("secgroup show default -o json"));

    // Idempotent: the same file again writes nothing; a changed record is replaced.
    let out = etcd.ok(&format!("apply -f {}", file.path()));
    assert!(
        out.contains(&format!("0 created, 0 replaced, {n} unchanged")),
        "{out}"
    );
    let mut changed = records[80..83].to_vec();
    changed[0]["fixed_ips"] = serde_json::json!(["192.0.2.252", "192.0.2.253"]);
    let small = TempFile::new("change.json", &serde_json::to_string(&changed).unwrap());
    let out = etcd.ok(&format!("apply -f {} --max-txn-ops 2", small.path()));
    assert!(out.contains("0 created, 1 replaced, 2 unchanged"), "{out}");
    assert_eq!(
        json(&etcd.ok("lport show p00000"))["fixed_ips"],
        serde_json::json!(["192.0.2.252", "192.0.2.253"])
    );
}

/// One bad record and nothing is written; every bad record is named with its place and
/// reason (within the file and against etcd); YAML and standard input work.
#[test]
fn apply_refuses_whole_files_and_reads_yaml() {
    let etcd = Etcd::start();
    let yaml = TempFile::new(
        "net.yaml",
        r#"# a network, a group and two ports
- kind: lswitch
  id: net1
  segmentation_id: 100
- {kind: subnet, id: sub1, lswitch: net1, cidr: 192.0.2.0/24, gateway_ip: 192.0.2.1, ip_version: 4}
- kind: secgroup
  id: web
  rules:
    - {id: ssh, direction: ingress, ethertype: IPv4, protocol: tcp, port_range_min: 22, port_range_max: 22}
- kind: lport
  id: web1
  lswitch: net1
  mac: "fa:16:3e:00:00:01"
  fixed_ips: [192.0.2.11]
  allowed_address_pairs: [{ip_address: 192.0.2.100}]
  security_groups: [web]
  chassis: hv1
  ifname: tapweb1
- {kind: lport, id: web2, lswitch: net1, mac: "fa:16:3e:00:00:02", fixed_ips: [192.0.2.12], port_security_enabled: false}
"#,
    );
    let out = etcd.ok(&format!("apply -f {}", yaml.path()));
    assert!(out.contains("5 created, 0 replaced, 0 unchanged"), "{out}");
    assert!(!out.contains("secgroup default"), "{out}");
    let web1 = json(&etcd.ok("lport show web1"));
    assert_eq!(web1["security_groups"], serde_json::json!(["web"]));
    assert_eq!(web1["ifname"], "tapweb1");
    assert_eq!(
        json(&etcd.ok("secgroup show web -o json"))["rules"][0]["port_range_min"],
        22
    );

    let bad = TempFile::new(
        "bad.json",
        &serde_json::json!([
            {"kind": "lport", "id": "ok1", "lswitch": "net1", "mac": "fa:16:3e:00:00:10",
             "fixed_ips": ["192.0.2.20"], "port_security_enabled": false},
            {"kind": "lport", "id": "steal", "lswitch": "net1", "mac": "fa:16:3e:00:00:11",
             "fixed_ips": ["192.0.2.21"],
             "allowed_address_pairs": [{"ip_address": "192.0.2.11"}]},
            {"kind": "lport", "id": "tap1", "lswitch": "net1", "mac": "fa:16:3e:00:00:12",
             "chassis": "hv2", "ifname": "tapx", "port_security_enabled": false},
            {"kind": "lport", "id": "tap2", "lswitch": "net1", "mac": "fa:16:3e:00:00:13",
             "chassis": "hv2", "ifname": "tapx", "port_security_enabled": false},
            {"kind": "lport", "id": "lost", "lswitch": "net9", "mac": "fa:16:3e:00:00:14"},
            {"kind": "lport", "id": "typo", "lswitch": "net1", "mac": "fa:16:3e:00:00:15",
             "fixed_ip": ["192.0.2.22"]},
            {"kind": "chassis", "name": "hv1"},
            {"kind": "lswitch", "id": "net1", "segmentation_id": 0},
            {"kind": "lport", "id": "ok1", "lswitch": "net1", "mac": "fa:16:3e:00:00:16"},
        ])
        .to_string(),
    );
    let out = etcd.dfctl(&["apply", "-f", bad.path()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let lines: Vec<&str> = err.lines().collect();
    let name = bad.path();
    assert_eq!(
        lines,
        [
            format!("error: {name}: record 6 (lport typo): unknown field fixed_ip"),
            format!("error: {name}: record 7: kind chassis is written by the agents, not by apply"),
            format!(
                "error: {name}: record 8 (lswitch net1): segmentation_id 0 is out of range \
                 1..=16777215 (a 24-bit VXLAN VNI; 0 is reserved)"
            ),
            format!("error: {name}: 3 of 9 records are invalid; nothing was written"),
        ],
        "{err}"
    );
    // Without the malformed records, the referential ones are all named.
    let mut records: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(name).unwrap()).unwrap();
    records.drain(5..8);
    let bad = TempFile::new("bad2.json", &serde_json::to_string(&records).unwrap());
    let out = etcd.dfctl(&["apply", "-f", bad.path()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    let name = bad.path();
    for want in [
        format!(
            "error: {name}: record 2 (lport steal): allowed address pair 192.0.2.11 is a fixed \
             IP of lport web1 on lswitch net1"
        ),
        format!(
            "error: {name}: record 4 (lport tap2): tap tapx on chassis hv2 is already bound to \
             lport tap1"
        ),
        format!("error: {name}: record 5 (lport lost): lswitch net9 does not exist"),
        format!("error: {name}: record 6 (lport ok1): listed twice (first as record 1)"),
        format!("error: {name}: 4 of 6 records are invalid; nothing was written"),
    ] {
        assert!(
            err.lines().any(|l| l.starts_with(&want)),
            "missing {want:?} in:\n{err}"
        );
    }
    assert_eq!(err.lines().count(), 5, "{err}");
    let ids: Vec<String> = json(&etcd.ok("lport list -o json"))
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, ["web1", "web2"]);

    // Standard input, JSON by content; --dry-run writes nothing.
    let stdin_apply = |extra: &[&str], text: &str| {
        let mut child = Command::new(DFCTL)
            .args(["--etcd-endpoints", &etcd.endpoint, "apply", "-f", "-"])
            .args(extra)
            .env_remove("DRAGONFLOW_PREFIX")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn dfctl");
        child
            .stdin
            .take()
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    };
    let one = r#"[{"kind": "lport", "id": "web3", "lswitch": "net1",
                   "mac": "fa:16:3e:00:00:03", "port_security_enabled": false}]"#;
    let out = stdin_apply(&["--dry-run"], one);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains("stdin: valid; would write 1 created"),
        "{said}"
    );
    etcd.fails("lport show web3", 2, "lport web3 not found");
    let out = stdin_apply(&[], one);
    assert!(out.status.success(), "{out:?}");
    json(&etcd.ok("lport show web3"));
    etcd.fails(
        "apply -f /nonexistent/x.yaml",
        2,
        "cannot read /nonexistent/x.yaml",
    );
    let not_list = TempFile::new("obj.yaml", "kind: lswitch\nid: n\n");
    etcd.fails(
        &format!("apply -f {}", not_list.path()),
        2,
        "expected a list of records (each with a `kind`), found an object",
    );
}
