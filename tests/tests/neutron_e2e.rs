//! Neutron end to end (issue 13, item 7): Neutron's API in process (ML2 with the
//! dragonflow_ebpf driver, sqlite, `tests/scripts/neutron_e2e.py` in the Neutron venv)
//! creates two networks with a subnet each, a router between them and ports bound to two
//! simulated hypervisors; real agents in namespaces enforce them; the VMs ping each other
//! across the chassis and through the router; a spoofed packet is dropped; an allowed address pair added through Neutron's API starts passing;
//! the ports turn ACTIVE in Neutron through the agents' `portstatus/` records.
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
        process::{poll_until, wait_until},
        python::{JsonChild, script},
    },
    harness::{Cloud, HvOpts, VmOpts, ping},
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

#[test]
fn neutron_e2e_ports_enforced_by_agents_turn_active() {
    let mut cloud = Cloud::new();
    let mut cmd = cloud.ul.command(venv_python());
    cmd.arg(script("neutron_e2e.py"))
        .env("DFE_ETCD_ENDPOINT", cloud.etcd.endpoints());
    let neutron = Neutron(JsonChild::spawn("neutron (neutron_e2e.py)", cmd));
    let prefix = neutron.call(json!({"op": "setup"}))["prefix"]
        .as_str()
        .expect("prefix")
        .to_string();

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
    // Ports in a group made through the API, which admits its members: the group
    // Neutron creates implicitly (`default`) reaches the driver only through the
    // maintenance worker, which this test does not run.
    let sg = neutron.call(json!({"op": "secgroup"}))["id"].clone();
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

    // Enforced: a and b (default security group, which admits its members) reach each
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
fn ping_from(ns: &tests::framework::netns::Netns, src: &str, dst: &str, count: u32) -> bool {
    ns.try_exec(&format!(
        "ping -4 -q -n -c {count} -i 0.05 -W 1 -I {src} {dst}"
    ))
    .status
    .success()
}
