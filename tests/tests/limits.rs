//! Per-port limits end to end (issue 10, items 3 and 4): two hypervisor namespaces joined
//! by an underlay, a real agent on each with small limits (so that a test lasts seconds),
//! no bridge, VMs in namespaces on one network. Every test runs for both hooks
//! (`xdp::<case>`, `tc::<case>`).
//!
//! ```text
//!   net1 VNI 100, MTU 1450, 192.0.2.0/24
//!   hv1: storm/filler (.10), local victim (.11), normal VM (.12)
//!   hv2: remote victim (.13)
//! ```
//!
//! - `arp_storm`: a VM floods ARP requests for addresses nobody has. The other VMs, on its
//!   chassis and across the tunnel, receive at most burst + rate × the storm's duration
//!   of them; the rest count as `flood_rate_limited`; a normal VM's ARP (answered by the
//!   responder) and ping still work meanwhile.
//! - `conntrack_quota`: a VM opens many new UDP flows (to the remote VM); it stops at its
//!   quota (`ct_port_quota`), its use is visible in `/state` and the metrics, other VMs'
//!   new flows still succeed, and so do the sink's own new flows (flows opened toward a
//!   port are counted apart from those it opens); when its port goes, its entries and
//!   its counters go too.
//!
//! Every count is taken after a fence (a later frame over the same path, waited for),
//! never after a sleep.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::{Duration, Instant};

use tests::{
    framework::{hook::Hook, http::metric, process::wait_until, python::python},
    harness::{Capture, Cloud, HvOpts, VmOpts, ping},
};

const READY: Duration = Duration::from_secs(30);
const COUNT: Duration = Duration::from_secs(10);

const FLOOD_RATE: u32 = 20;
const FLOOD_BURST: u32 = 30;
const STORM: u32 = 500;
const QUOTA: u32 = 40;

const MACS: [&str; 4] = [
    "fa:16:3e:0a:00:10",
    "fa:16:3e:0a:00:11",
    "fa:16:3e:0a:00:12",
    "fa:16:3e:0a:00:13",
];
const IPS: [&str; 4] = ["192.0.2.10", "192.0.2.11", "192.0.2.12", "192.0.2.13"];
/// (name, hypervisor index) of the VMs, in the order of `MACS`/`IPS`.
const VMS: [(&str, usize); 4] = [("storm", 0), ("local", 0), ("normal", 0), ("remote", 1)];

/// The cloud: net1, the four VMs, agents started with `args` on both chassis.
fn cloud(hook: Hook, args: &[&str]) -> Cloud {
    let mut cloud = Cloud::new();
    for i in 0..2 {
        let hv = cloud.add_hypervisor_opts(&format!("hv{}", i + 1), hook, HvOpts { bridge: false });
        cloud.hvs[hv].extra_agent_args = args.iter().map(|s| s.to_string()).collect();
    }
    cloud.dfctl("lswitch create net1 --vni 100 --mtu 1450");
    cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24");
    for (i, (name, hv)) in VMS.iter().enumerate() {
        cloud.dfctl(&format!(
            "lport create p{name} --lswitch net1 --mac {} --fixed-ip {} --chassis hv{} --ifname tap{name}",
            MACS[i],
            IPS[i],
            hv + 1
        ));
        cloud.add_vm_opts(
            *hv,
            name,
            &format!("tap{name}"),
            MACS[i],
            &[&format!("{}/24", IPS[i])],
            &VmOpts::with_gateways(&[]),
        );
    }
    for i in 0..2 {
        cloud.start_agent(i);
    }
    for hv in &cloud.hvs {
        wait_until(&format!("forwarding enabled on {}", hv.name), READY, || {
            metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0)
        });
    }
    // Both chassis know each other's ports: a unicast crosses the tunnel both ways.
    wait_until("storm reaches remote", READY, || {
        ping(&cloud.vms[0].ns, IPS[3], 1)
    });
    cloud
}

fn arp_storm(hook: Hook) {
    let cloud = cloud(
        hook,
        &[
            "--flood-rate",
            &FLOOD_RATE.to_string(),
            "--flood-burst",
            &FLOOD_BURST.to_string(),
        ],
    );
    let hv1 = &cloud.hvs[0];
    let (storm, local, normal, remote) =
        (&cloud.vms[0], &cloud.vms[1], &cloud.vms[2], &cloud.vms[3]);
    let filter = "arp or udp";
    let caps = [
        Capture::start(&local.ns, "eth0", "in", filter),
        Capture::start(&remote.ns, "eth0", "in", filter),
    ];
    // A full bucket to start from: the pings above flooded nothing but what the
    // responder does not answer (none), yet an ARP probe at boot may have; the bucket
    // refills in burst / rate seconds, far less than the setup took.
    let decided = |hv: &tests::harness::Hypervisor| {
        hv.counter("from_vm", "pass", "flood") + hv.counter("from_vm", "drop", "flood_rate_limited")
    };
    let before = decided(hv1);
    let limited_before = hv1.counter("from_vm", "drop", "flood_rate_limited");
    let started = Instant::now();
    let sent = python(
        &storm.ns,
        "storm.py",
        &[
            "arp",
            "--count",
            &STORM.to_string(),
            "--spa",
            IPS[0],
            "--targets",
            "192.0.2.200-250",
        ],
    );
    assert_eq!(sent.trim(), STORM.to_string(), "storm.py sent");
    // Every storm frame decided on hv1 (flooded or limited).
    wait_until("the storm decided on hv1", COUNT, || {
        decided(hv1) - before >= f64::from(STORM)
    });
    let storm_secs = started.elapsed().as_secs_f64();
    // Fence: a unicast from the storm VM to each victim, after the storm, same path.
    for (vm_ip, vm_mac) in [(IPS[1], MACS[1]), (IPS[3], MACS[3])] {
        python(
            &storm.ns,
            "fwdsend.py",
            &[
                "--dst-mac",
                vm_mac,
                "--src-ip",
                IPS[0],
                "--dst-ip",
                vm_ip,
                "--payload",
                "dft-fence",
            ],
        );
    }
    for cap in &caps {
        assert!(
            cap.wait_count(b"dft-fence", 1, COUNT),
            "fence not received:\n{}",
            cap.summary()
        );
    }
    // The storm's requests each victim got: burst + rate × duration at most (+1 for the
    // interval in progress, +2 for the CPUs that may race at the moment the bucket runs
    // dry, see dragonflow_common::limits).
    let most = f64::from(FLOOD_BURST) + f64::from(FLOOD_RATE) * storm_secs + 3.0;
    let storm_mac: Vec<u8> = MACS[0]
        .split(':')
        .map(|h| u8::from_str_radix(h, 16).unwrap())
        .collect();
    for cap in &caps {
        let got = cap
            .frames()
            .iter()
            .filter(|f| {
                f.bytes.len() >= 14
                    && f.bytes[12..14] == [0x08, 0x06]
                    && f.bytes[6..12] == storm_mac[..]
            })
            .count() as f64;
        assert!(
            got >= f64::from(FLOOD_BURST) && got <= most,
            "{}: {got} storm ARP requests received in {storm_secs:.2} s, want {FLOOD_BURST}..={most:.0}\n{}",
            cap.what,
            cap.summary()
        );
    }
    let limited = hv1.counter("from_vm", "drop", "flood_rate_limited") - limited_before;
    assert!(
        limited >= f64::from(STORM) - most,
        "flood_rate_limited grew by {limited} only"
    );
    // The normal VM meanwhile: its ARP is answered by the responder (never limited), its
    // ping works, and its own flood bucket is untouched by the storm.
    normal.ns.exec("ip neigh flush dev eth0");
    assert!(ping(&normal.ns, IPS[1], 2), "normal VM → local victim");
    assert!(ping(&normal.ns, IPS[3], 2), "normal VM → remote victim");
    let arping = normal
        .ns
        .try_exec(&format!("arping -c 2 -w 3 -I eth0 {}", IPS[3]));
    assert!(
        arping.status.success(),
        "arping from the normal VM: {}",
        String::from_utf8_lossy(&arping.stdout)
    );
    // The storm VM can still flood within its rate once the bucket has refilled.
    let flood_before = hv1.counter("from_vm", "pass", "flood");
    wait_until("the storm VM's bucket refilled", COUNT, || {
        python(
            &storm.ns,
            "storm.py",
            &[
                "arp",
                "--count",
                "1",
                "--spa",
                IPS[0],
                "--targets",
                "192.0.2.251-251",
            ],
        );
        hv1.counter("from_vm", "pass", "flood") > flood_before
    });
}

fn conntrack_quota(hook: Hook) {
    let cloud = cloud(hook, &["--ct-port-quota", &QUOTA.to_string()]);
    let hv1 = &cloud.hvs[0];
    let (filler, local, normal, remote) =
        (&cloud.vms[0], &cloud.vms[1], &cloud.vms[2], &cloud.vms[3]);
    // The default group lets members talk freely: each datagram is a new flow, tracked at
    // the filler's egress (hv1) and at the sink's ingress (hv2).
    let over = hv1.counter("from_vm", "drop", "ct_port_quota");
    let flows = 4 * QUOTA;
    let sent = python(
        &filler.ns,
        "storm.py",
        &[
            "udpflows",
            "--dst",
            IPS[3],
            "--port",
            "9",
            "--count",
            &flows.to_string(),
        ],
    );
    assert_eq!(sent.trim(), flows.to_string(), "storm.py sent");
    hv1.wait_counter(
        ("from_vm", "drop", "ct_port_quota"),
        over,
        f64::from(flows - QUOTA) - 2.0,
        COUNT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // Its use is visible: /state, the top-users metric, the count of ports at the quota.
    let state = hv1.state();
    let rows = state["ct_port_use"].as_array().expect("ct_port_use");
    let top = &rows[0];
    assert_eq!(top["tap"], "tapstorm", "largest user first: {state:#}");
    let egress = top["egress"].as_u64().unwrap();
    assert!(
        (u64::from(QUOTA)..=u64::from(QUOTA) + 2).contains(&egress),
        "filler's egress use {egress}, quota {QUOTA}"
    );
    let m = hv1.metrics();
    assert_eq!(
        metric(
            &m,
            "dragonflow_ct_port_top_entries",
            &[("rank", "1"), ("lport", "pstorm"), ("origin", "egress")]
        ),
        Some(egress as f64),
        "top users metric"
    );
    assert_eq!(
        metric(&m, "dragonflow_ct_ports_near_quota", &[("share", "1")]),
        Some(1.0)
    );
    assert_eq!(
        metric(&m, "dragonflow_ct_port_quota", &[]),
        Some(f64::from(QUOTA))
    );
    // The filler's next new flow is refused too (its own), another VM's flows are not:
    // ten new flows (ping identifiers) from the normal VM, local and across the tunnel.
    let before = hv1.counter("from_vm", "drop", "ct_port_quota");
    assert!(
        !ping(&filler.ns, IPS[1], 1),
        "the filler's new flow over its quota"
    );
    hv1.wait_counter(("from_vm", "drop", "ct_port_quota"), before, 1.0, COUNT)
        .unwrap_or_else(|e| panic!("{e}"));
    for i in 0..5 {
        assert!(ping(&normal.ns, IPS[1], 1), "normal → local, flow {i}");
        assert!(ping(&local.ns, IPS[2], 1), "local → normal, flow {i}");
    }
    // The sink took the filler's flows as ingress entries: its own flows out are counted
    // apart, and still open.
    for i in 0..5 {
        assert!(
            ping(&remote.ns, IPS[2], 1),
            "remote (the sink) → normal, flow {i}"
        );
    }
    // The filler's port goes: the collector purges its entries at once, counts them as
    // freed, and drops the tap's counters (no port, no entry left): nothing leaks.
    let port_gone = || {
        metric(
            &hv1.metrics(),
            "dragonflow_ct_gc_deleted_total",
            &[("reason", "port_gone")],
        )
        .unwrap_or(0.0)
    };
    let gone = port_gone();
    cloud.dfctl("lport delete pstorm");
    wait_until("the filler's counters removed", COUNT, || {
        hv1.state()["ct_port_use"]
            .as_array()
            .is_some_and(|rows| rows.iter().all(|r| r["tap"] != "tapstorm"))
    });
    let purged = port_gone() - gone;
    assert!(
        purged >= f64::from(QUOTA),
        "the filler's {QUOTA}+ entries purged (got {purged})"
    );
}

macro_rules! for_both_hooks {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test] fn $name() { super::$name(tests::framework::hook::Hook::Xdp) })*
        }
        mod tc {
            $(#[test] fn $name() { super::$name(tests::framework::hook::Hook::Tc) })*
        }
    };
}

for_both_hooks!(arp_storm, conntrack_quota);
