//! Neutron end to end (issue 13, item 7): Neutron's API in process (ML2 with the
//! dragonflow_ebpf driver, sqlite, `tests/scripts/neutron_e2e.py` in the Neutron venv)
//! creates two networks with a subnet each, a router between them and ports bound to two
//! simulated hypervisors; real agents in namespaces enforce them; the VMs ping each other
//! across the chassis and through the router; a spoofed packet is dropped; an allowed address pair added through Neutron's API starts passing;
//! the ports turn ACTIVE in Neutron through the agents' `portstatus/` records. A second
//! test: two ports sharing a VIP as an allowed address pair fail over in the detection
//! way, driven by real keepalived.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

#[expect(
    dead_code,
    reason = "constants shared with xtask's setup: this test needs the venv's place"
)]
#[path = "../src/neutron_venv.rs"]
mod neutron_venv;

use serde_json::{Value, json};
use tests::{
    framework::{
        hook::Hook,
        netns::Netns,
        process::{poll_until, wait_until},
        python::{JsonChild, script},
    },
    harness::{Cloud, HvOpts, VmOpts, ping},
    vrrp::{Keepalived, VIP, VRID, VrrpConf, has_addr},
};

/// Neutron's setUp loads the plugin and its extensions: seconds on a loaded machine.
const NEUTRON_CALL: Duration = Duration::from_secs(120);
const READY: Duration = Duration::from_secs(30);

fn venv_python() -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(neutron_venv::DIR)
        .join("bin/python");
    assert!(
        bin.exists(),
        "{} is missing: run `cargo xtask setup` (it creates the Neutron venv)",
        bin.display()
    );
    bin
}

struct Neutron(JsonChild);

impl Neutron {
    #[track_caller]
    fn call(&self, req: Value) -> Value {
        let v = self.0.call(&req, NEUTRON_CALL);
        assert!(v.get("error").is_none(), "neutron {req}: {v}");
        v
    }
}

impl Drop for Neutron {
    fn drop(&mut self) {
        // Its cleanups delete the prefix; a test already failing does not wait for it.
        if !std::thread::panicking() {
            let _ = self.0.call(&json!({"op": "quit"}), NEUTRON_CALL);
        }
    }
}

/// Neutron's API in a child process, set up: returns it and the NB key prefix its driver
/// writes under (the agents are started on it).
fn start_neutron(cloud: &Cloud) -> (Neutron, String) {
    let mut cmd = cloud.ul.command(venv_python());
    cmd.arg(script("neutron_e2e.py"))
        .env("DFE_ETCD_ENDPOINT", cloud.etcd.endpoints());
    let neutron = Neutron(JsonChild::spawn("neutron (neutron_e2e.py)", cmd));
    let prefix = neutron.call(json!({"op": "setup"}))["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();
    (neutron, prefix)
}

/// A security group made through the API, which admits its members (all protocols, so
/// VRRP too) and lets everything out. Not Neutron's implicit `default` group: under its
/// unit-test base that group is created without rules (Neutron makes them from its
/// default-rule templates, which a migration inserts and the test database, built from
/// the models, does not hold), so it would admit nothing.
fn member_secgroup(neutron: &Neutron) -> Value {
    neutron.call(json!({"op": "secgroup"}))["id"].clone()
}

#[test]
fn neutron_e2e_ports_enforced_by_agents_turn_active() {
    let mut cloud = Cloud::new();
    let (neutron, prefix) = start_neutron(&cloud);

    // Two chassis, agents on Neutron's prefix: their chassis records make the hosts
    // bindable.
    for name in ["hv1", "hv2"] {
        let hv = cloud.add_hypervisor_opts(name, Hook::Tc, HvOpts { bridge: false });
        cloud.hvs[hv].extra_agent_args = vec!["--prefix".into(), prefix.clone()];
        cloud.start_agent(hv);
    }

    let net = neutron.call(
        json!({"op": "network", "name": "net1", "cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}),
    );
    let net2 = neutron.call(
        json!({"op": "network", "name": "net2", "cidr": "198.51.100.0/24", "gateway": "198.51.100.1"}),
    );
    neutron.call(json!({"op": "router", "subnets": [net["subnet"], net2["subnet"]]}));
    let sg = member_secgroup(&neutron);
    let mut ports = Vec::new();
    for (host, n, ip) in [
        ("hv1", &net, "192.0.2.10"),
        ("hv2", &net, "192.0.2.11"),
        ("hv2", &net2, "198.51.100.12"),
    ] {
        let p = neutron.call(
            json!({"op": "port", "network": n["network"], "host": host, "ip": ip, "secgroup": sg}),
        );
        assert_eq!(p["vif_type"], "tap", "port bound on {host}: {p}");
        assert_eq!(
            p["status"], "DOWN",
            "a new port is DOWN until enforced: {p}"
        );
        ports.push(p);
    }
    let (a, b, c) = (&ports[0], &ports[1], &ports[2]);
    for (hv, name, p, gw) in [
        (0, "a", a, "192.0.2.1"),
        (1, "b", b, "192.0.2.1"),
        (1, "c", c, "198.51.100.1"),
    ] {
        let addr = format!("{}/24", p["ip"].as_str().unwrap());
        cloud.add_vm_opts(
            hv,
            name,
            p["tap"].as_str().unwrap(),
            p["mac"].as_str().unwrap(),
            &[&addr],
            &VmOpts::with_gateways(&[gw]),
        );
    }
    let (vm_a, vm_b) = (&cloud.vms[0].ns, &cloud.vms[1].ns);
    let (ip_a, ip_b) = (a["ip"].as_str().unwrap(), b["ip"].as_str().unwrap());
    let ip_c = c["ip"].as_str().unwrap();

    // Enforced: a and b (the group above, which admits its members) reach each
    // other across the chassis.
    if !poll_until(READY, || ping(vm_a, ip_b, 1)) {
        panic!(
            "a does not ping b across the chassis after {READY:?}; counters:\n{}",
            counters(&cloud)
        );
    }
    assert!(ping(vm_b, ip_a, 3), "b does not ping a");
    // Through the router: a (net1, hv1) to c (net2, hv2).
    wait_until("a pings c through the router", READY, || {
        ping(vm_a, ip_c, 1)
    });

    // ACTIVE in Neutron through the agents' portstatus records.
    let ids = json!([a["id"], b["id"], c["id"]]);
    let st = neutron.call(json!({"op": "wait_active", "ports": ids, "timeout": 30}));
    for p in [a, b, c] {
        let id = p["id"].as_str().unwrap();
        assert_eq!(st["status"][id], "ACTIVE", "{id}: {st}");
    }

    // A spoofed source: dropped and counted on a's chassis.
    let spoof = "192.0.2.99";
    vm_a.exec(&format!("ip addr add {spoof}/32 dev eth0"));
    let hv1 = &cloud.hvs[0];
    let before = hv1.drops("src_ip_spoof");
    assert!(
        !ping_from(vm_a, spoof, ip_b, 3),
        "a's spoofed {spoof} reaches b"
    );
    assert!(
        poll_until(Duration::from_secs(5), || hv1.drops("src_ip_spoof")
            > before),
        "the spoofed packets were not counted as src_ip_spoof"
    );

    // The same address as an allowed address pair through Neutron's API: it passes.
    neutron.call(json!({"op": "aap", "port": a["id"], "ip": spoof}));
    wait_until(
        "a's AAP address reaches b once Neutron allows it",
        READY,
        || ping_from(vm_a, spoof, ip_b, 1),
    );
}

/// Pings per traffic round to the VIP.
const N: u32 = 10;
/// keepalived adverts every 0.5 s: a silent master is replaced after ~1.7 s, slow enough
/// that a loaded 2-core machine does not fail over by accident.
const ADVERT: f64 = 0.5;

/// One VM of the shared-VIP test, its port made through Neutron's API.
struct Holder {
    port: Value,
    hv: &'static str,
}

impl Holder {
    fn id(&self) -> &str {
        self.port["id"].as_str().expect("port id")
    }
    fn ip(&self) -> &str {
        self.port["ip"].as_str().expect("port ip")
    }
    fn mac(&self) -> &str {
        self.port["mac"].as_str().expect("port mac")
    }
}

/// Issue 13, item 7's failover: two ports made through Neutron's API on two chassis share
/// the VIP as an allowed address pair; the agents run the detection way; real keepalived
/// in the two VMs makes m1 master; a client on a third chassis reaches the VIP at m1
/// only; m1's keepalived stops; the claim in etcd moves to m2 (written by hv2's agent
/// from m2's gratuitous ARP) and the client reaches m2 only.
#[test]
fn neutron_e2e_shared_vip_fails_over_in_detection_way() {
    let mut cloud = Cloud::new();
    let (neutron, prefix) = start_neutron(&cloud);
    for name in ["hv1", "hv2", "hv3"] {
        let hv = cloud.add_hypervisor_opts(name, Hook::Tc, HvOpts { bridge: false });
        cloud.hvs[hv].extra_agent_args = vec![
            "--prefix".into(),
            prefix.clone(),
            "--aap-mode".into(),
            "detection".into(),
        ];
        cloud.start_agent(hv);
    }
    let net = neutron.call(
        json!({"op": "network", "name": "net1", "cidr": "192.0.2.0/24", "gateway": "192.0.2.1"}),
    );
    let net_id = net["network"].as_str().expect("network id").to_string();
    let sg = member_secgroup(&neutron);
    let mut vms = Vec::new();
    for (hv, name, ip, aaps) in [
        ("hv1", "m1", "192.0.2.11", json!([VIP])),
        ("hv2", "m2", "192.0.2.12", json!([VIP])),
        ("hv3", "c1", "192.0.2.13", json!([])),
    ] {
        let p = neutron.call(json!({"op": "port", "network": net_id, "host": hv,
            "ip": ip, "secgroup": sg, "aaps": aaps}));
        assert_eq!(p["vif_type"], "tap", "port of {name} bound on {hv}: {p}");
        if name != "c1" {
            // Neutron's list as it is: the pair without a MAC got the port's own.
            assert_eq!(
                p["allowed_address_pairs"],
                json!([{"ip_address": VIP, "mac_address": p["mac"]}]),
                "{name}: {p}"
            );
        }
        let i = cloud.hvs.iter().position(|h| h.name == hv).expect("hv");
        cloud.add_vm_opts(
            i,
            name,
            p["tap"].as_str().expect("tap"),
            p["mac"].as_str().expect("mac"),
            &[&format!("{ip}/24")],
            &VmOpts::with_gateways(&["192.0.2.1"]),
        );
        vms.push(Holder { port: p, hv });
    }
    let (m1, m2, c1) = (&vms[0], &vms[1], &vms[2]);
    let ids = json!([m1.id(), m2.id(), c1.id()]);
    let st = neutron.call(json!({"op": "wait_active", "ports": ids, "timeout": 30}));
    for h in &vms {
        assert_eq!(st["status"][h.id()], "ACTIVE", "{}: {st}", h.id());
    }
    let ns = |i: usize| &cloud.vms[i].ns;
    let (ns_m1, ns_m2, ns_c1) = (ns(0), ns(1), ns(2));
    // The VIP's shared and served the detection way (no claim yet: nothing announced it).
    let row = aap_row(&cloud, &prefix, &net_id);
    assert_eq!(row["mode"], "detection", "{row}");
    let mut holders: Vec<&str> = row["holders"]
        .as_array()
        .expect("holders")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    holders.sort_unstable();
    let mut want = [format!("{}@hv1", m1.id()), format!("{}@hv2", m2.id())];
    want.sort_unstable();
    assert_eq!(holders, want, "the VIP's holders: {row}");
    assert!(
        row["active"].is_null(),
        "claimed before any announcement: {row}"
    );
    for h in [ns_m1, ns_m2] {
        count_vip_echoes(h);
    }

    let conf = |me: &Holder, peer: &Holder, name: &str, priority: u8| VrrpConf {
        name: name.to_string(),
        iface: "eth0".into(),
        vrid: VRID,
        priority,
        advert_int: ADVERT,
        src: Some(me.ip().to_string()),
        peers: vec![peer.ip().to_string()],
        vips: vec![format!("{VIP}/24")],
        use_vmac: false,
        nopreempt: false,
    };
    let mut k1 = Keepalived::start(ns_m1, &conf(m1, m2, "m1", 150));
    let _k2 = Keepalived::start(ns_m2, &conf(m2, m1, "m2", 100));
    wait_until("m1 master (holds the VIP), m2 backup", READY, || {
        has_addr(ns_m1, VIP) && !has_addr(ns_m2, VIP)
    });

    // m1's gratuitous ARPs: hv1's agent claims the VIP for m1's port.
    let claim = wait_claim(&cloud, &prefix, &net_id, m1);
    assert_eq!(claim["reason"], "garp", "{claim}");
    wait_reach(&cloud, &prefix, &net_id, ns_c1);
    assert_receivers(ns_c1, [(ns_m1, m1, N), (ns_m2, m2, 0)]);

    // The master stops (SIGTERM: a priority-0 advert, the VIP removed): m2 takes over,
    // announces, and hv2's agent moves the claim.
    k1.stop();
    wait_until("m2 takes the VIP over", READY, || {
        has_addr(ns_m2, VIP) && !has_addr(ns_m1, VIP)
    });
    let moved = wait_claim(&cloud, &prefix, &net_id, m2);
    assert_eq!(moved["reason"], "garp", "{moved}");
    let history = dfctl_json(&cloud, &prefix, &format!("aap history {net_id} {VIP}"));
    let seq: Vec<(&str, &str, &str)> = history
        .as_array()
        .expect("history rows")
        .iter()
        .map(|r| {
            (
                r["event"].as_str().unwrap_or_default(),
                r["port"].as_str().unwrap_or_default(),
                r["by"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seq,
        [("claimed", m1.id(), "hv1"), ("claimed", m2.id(), "hv2")],
        "history: {history}"
    );
    wait_reach(&cloud, &prefix, &net_id, ns_c1);
    assert_receivers(ns_c1, [(ns_m1, m1, 0), (ns_m2, m2, N)]);
}

/// The VIP's row of `dfctl aap list` for the network.
fn aap_row(cloud: &Cloud, prefix: &str, net: &str) -> Value {
    let rows = dfctl_json(cloud, prefix, &format!("aap list --lswitch {net}"));
    rows.as_array()
        .expect("aap list rows")
        .iter()
        .find(|r| r["ip"] == VIP)
        .unwrap_or_else(|| panic!("{VIP} is not a shared address of {net}: {rows}"))
        .clone()
}

/// `dfctl --output json` on Neutron's prefix.
fn dfctl_json(cloud: &Cloud, prefix: &str, args: &str) -> Value {
    let out = cloud.dfctl(&format!("--prefix {prefix} --output json {args}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("dfctl {args}: {e}: {out}"))
}

/// Waits until the VIP's claim in etcd (`activeport/<network>/<VIP>`, read raw) names
/// `holder`'s port, MAC and chassis; returns it.
#[track_caller]
fn wait_claim(cloud: &Cloud, prefix: &str, net: &str, holder: &Holder) -> Value {
    let key = format!("{prefix}activeport/{net}/{VIP}");
    let mut last = Value::Null;
    let found = poll_until(READY, || {
        let out = cloud.etcdctl(&["get", &key, "--print-value-only"]);
        let text = String::from_utf8_lossy(&out.stdout);
        last = serde_json::from_str(text.trim()).unwrap_or(Value::Null);
        last["port"] == holder.id()
    });
    assert!(
        found,
        "{key} does not name {} ({}) after {READY:?}: {last}\naap list: {}",
        holder.id(),
        holder.hv,
        aap_row(cloud, prefix, net)
    );
    assert_eq!(
        (last["mac"].as_str(), last["chassis"].as_str()),
        (Some(holder.mac()), Some(holder.hv)),
        "{key}: {last}"
    );
    // Every agent serves the claim: dfctl's view (the same key, through the NB decoder).
    assert_eq!(
        aap_row(cloud, prefix, net)["active"]["port"],
        holder.id(),
        "aap list after the claim"
    );
    last
}

/// Waits until the client pings the VIP.
#[track_caller]
fn wait_reach(cloud: &Cloud, prefix: &str, net: &str, client: &Netns) {
    let ok = poll_until(READY, || ping(client, VIP, 1));
    assert!(
        ok,
        "the client does not reach {VIP} after {READY:?}; aap list: {}\ncounters:\n{}",
        aap_row(cloud, prefix, net),
        counters(cloud)
    );
}

/// An nftables counter in a holder's namespace of the echo requests to the VIP arriving on
/// eth0 (prerouting: counted whether or not the VM holds the VIP at that moment).
fn count_vip_echoes(ns: &Netns) {
    ns.exec("nft add table ip dfe");
    ns.exec("nft add chain ip dfe pre { type filter hook prerouting priority -300 ; }");
    ns.exec(&format!(
        "nft add rule ip dfe pre iifname eth0 ip daddr {VIP} icmp type echo-request counter"
    ));
}

/// The count of [`count_vip_echoes`].
fn vip_echoes(ns: &Netns) -> u64 {
    let out = ns.exec("nft list chain ip dfe pre");
    let text = String::from_utf8_lossy(&out.stdout);
    text.split_once("counter packets ")
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no counter in {text}"))
}

/// The client pings the VIP `N` times, every reply back; each holder then has received
/// the number given for it of those echo requests (the active one all, the other none),
/// counted after a fence: the client's ping to that holder's own address, over the same
/// path, has come back, so a stray VIP copy sent before it has arrived too. The client's
/// neighbour entry for the VIP, resolved afresh, is the active holder's MAC (the
/// responder answers with the claimed MAC).
#[track_caller]
fn assert_receivers(client: &Netns, holders: [(&Netns, &Holder, u32); 2]) {
    let before: Vec<u64> = holders.iter().map(|(ns, _, _)| vip_echoes(ns)).collect();
    client.exec("ip neigh flush all");
    let out = client.try_exec(&format!("ping -4 -q -n -c {N} -i 0.05 -W 1 {VIP}"));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("{N} packets transmitted, {N} received")),
        "client → {VIP}: not every reply came back:\n{text}"
    );
    let neigh = client.exec(&format!("ip neigh show {VIP}"));
    let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
    let (_, active, _) = holders
        .iter()
        .find(|(_, _, n)| *n == N)
        .expect("an active holder");
    assert!(
        neigh.contains(active.mac()),
        "the client resolves {VIP} to {}'s MAC {}: {neigh}",
        active.hv,
        active.mac()
    );
    for ((ns, h, want), before) in holders.iter().zip(before) {
        wait_until(
            &format!("the client's fence ping to {} ({})", h.ip(), h.hv),
            READY,
            || ping(client, h.ip(), 1),
        );
        let got = vip_echoes(ns) - before;
        assert_eq!(
            got,
            u64::from(*want),
            "VIP echo requests received by the holder on {} (the {} one)",
            h.hv,
            if *want == N { "active" } else { "other" }
        );
    }
}

/// The non-zero datapath counters of every chassis, for failure messages.
fn counters(cloud: &Cloud) -> String {
    let mut out = String::new();
    for hv in &cloud.hvs {
        for l in hv.metrics().lines() {
            if l.starts_with("dragonflow_datapath_packets_total") && !l.ends_with(" 0") {
                out += &format!("{}: {l}\n", hv.name);
            }
        }
    }
    out
}

/// `ping` from source address `src`; true when every reply came back.
fn ping_from(ns: &Netns, src: &str, dst: &str, count: u32) -> bool {
    ns.try_exec(&format!(
        "ping -4 -q -n -c {count} -i 0.05 -W 1 -I {src} {dst}"
    ))
    .status
    .success()
}
