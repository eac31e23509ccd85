//! Forwarding in eBPF end to end (issue 3, item 6): hypervisor namespaces joined by an
//! underlay, each with its agent, its `df-vxlan` device and NO bridge (our programs are
//! the only way a frame gets from one tap to another), VMs on every hypervisor, two
//! dual-stack networks joined by one distributed router r1 (one interface per network with
//! an IPv4 and an IPv6 address, as Neutron's router port on a network with two subnets).
//! Every test builds its own cloud and runs for both hooks (`xdp::<case>`, `tc::<case>`).
//!
//! ```text
//!   net1 VNI 100  192.0.2.0/24     r1 192.0.2.1     (fa:16:3e:00:01:01)
//!                 2001:db8:1::/64  r1 2001:db8:1::1  (same interface)
//!   net2 VNI 200  198.51.100.0/24  r1 198.51.100.1  (fa:16:3e:00:02:01)
//!                 2001:db8:2::/64  r1 2001:db8:2::1  (same interface)
//!   hv1 (198.18.0.10): a1 (net1 .10), b1 (net1 .11), c1 (net2 .10)
//!   hv2 (198.18.0.11): a2 (net1 .20), c2 (net2 .20)
//!   hv3 (198.18.0.12): a3 (net1 .30)                 (only the chassis-loss test)
//! ```
//!
//! What a VM did or did not receive is read from a tcpdump inside its namespace
//! ([`Capture`]); "did not" is decided after a fence: a later frame over the same or a
//! longer path has arrived, so the earlier one would have too. No fixed sleeps.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use tests::{
    fixtures::addresses::{ip_bytes, mac_bytes, unique},
    framework::{
        hook::Hook,
        http::metric,
        netns::Netns,
        process::{run, wait_until},
        python::python_command,
    },
    harness::{Capture, Cloud, Frame, HvOpts, Hypervisor, VmOpts, agent_has_flag, iperf3, ping},
};

const READY: Duration = Duration::from_secs(30);
const FENCE: Duration = Duration::from_secs(5);
const COUNT: Duration = Duration::from_secs(3);

struct Net {
    id: &'static str,
    vni: u32,
    cidr4: &'static str,
    cidr6: &'static str,
    gw4: &'static str,
    gw6: &'static str,
    /// Router r1's interface MAC on this network (the gateway MAC for both families).
    rmac: &'static str,
    bcast4: &'static str,
}

const NET1: Net = Net {
    id: "net1",
    vni: 100,
    cidr4: "192.0.2.0/24",
    cidr6: "2001:db8:1::/64",
    gw4: "192.0.2.1",
    gw6: "2001:db8:1::1",
    rmac: "fa:16:3e:00:01:01",
    bcast4: "192.0.2.255",
};
const NET2: Net = Net {
    id: "net2",
    vni: 200,
    cidr4: "198.51.100.0/24",
    cidr6: "2001:db8:2::/64",
    gw4: "198.51.100.1",
    gw6: "2001:db8:2::1",
    rmac: "fa:16:3e:00:02:01",
    bcast4: "198.51.100.255",
};

#[derive(Clone, Copy)]
struct VmDef {
    /// VM namespace `<prefix>-<name>`, port `p<name>`, tap `tap<name>`.
    name: &'static str,
    /// Index of the hypervisor (0 = hv1).
    hv: usize,
    net: &'static Net,
    mac: &'static str,
    ip4: &'static str,
    ip6: &'static str,
}

const A1: VmDef = VmDef {
    name: "a1",
    hv: 0,
    net: &NET1,
    mac: "fa:16:3e:01:00:10",
    ip4: "192.0.2.10",
    ip6: "2001:db8:1::10",
};
const B1: VmDef = VmDef {
    name: "b1",
    hv: 0,
    net: &NET1,
    mac: "fa:16:3e:01:00:11",
    ip4: "192.0.2.11",
    ip6: "2001:db8:1::11",
};
const C1: VmDef = VmDef {
    name: "c1",
    hv: 0,
    net: &NET2,
    mac: "fa:16:3e:02:00:10",
    ip4: "198.51.100.10",
    ip6: "2001:db8:2::10",
};
const A2: VmDef = VmDef {
    name: "a2",
    hv: 1,
    net: &NET1,
    mac: "fa:16:3e:01:00:20",
    ip4: "192.0.2.20",
    ip6: "2001:db8:1::20",
};
const C2: VmDef = VmDef {
    name: "c2",
    hv: 1,
    net: &NET2,
    mac: "fa:16:3e:02:00:20",
    ip4: "198.51.100.20",
    ip6: "2001:db8:2::20",
};
const A3: VmDef = VmDef {
    name: "a3",
    hv: 2,
    net: &NET1,
    mac: "fa:16:3e:01:00:30",
    ip4: "192.0.2.30",
    ip6: "2001:db8:1::30",
};

const UNKNOWN_MAC: &str = "fa:16:3e:99:99:99";
const BCAST: &str = "ff:ff:ff:ff:ff:ff";

/// The two-network, n-hypervisor cloud with the given VMs, agents running and forwarding
/// enabled on every chassis.
struct Fwd {
    defs: Vec<VmDef>,
    cloud: Cloud,
}

impl Fwd {
    fn new(hook: Hook, nhv: usize, defs: &[VmDef]) -> Fwd {
        Self::with_args(hook, nhv, defs, &[])
    }

    fn with_args(hook: Hook, nhv: usize, defs: &[VmDef], agent_args: &[&str]) -> Fwd {
        let mut cloud = Cloud::new();
        for i in 0..nhv {
            let hv =
                cloud.add_hypervisor_opts(&format!("hv{}", i + 1), hook, HvOpts { bridge: false });
            // Forwarding in the datapath is opt-in (the issue-2 suite keeps its bridge).
            cloud.hvs[hv].extra_agent_args = ["--forwarding"]
                .iter()
                .chain(agent_args)
                .map(|s| s.to_string())
                .collect();
        }
        cloud.dfctl("lrouter create r1 --name r1");
        for n in [&NET1, &NET2] {
            cloud.dfctl(&format!(
                "lswitch create {} --vni {} --mtu 1450",
                n.id, n.vni
            ));
            cloud.dfctl(&format!(
                "subnet create {}-v4 --lswitch {} --cidr {} --gateway {}",
                n.id, n.id, n.cidr4, n.gw4
            ));
            cloud.dfctl(&format!(
                "subnet create {}-v6 --lswitch {} --cidr {} --gateway {}",
                n.id, n.id, n.cidr6, n.gw6
            ));
            let len6 = n.cidr6.split('/').nth(1).expect("prefix");
            let len4 = n.cidr4.split('/').nth(1).expect("prefix");
            cloud.dfctl(&format!(
                "lrouter add-interface r1 --lswitch {} --mac {} --ip {}/{len4} --ip {}/{len6}",
                n.id, n.rmac, n.gw4, n.gw6
            ));
        }
        for d in defs {
            cloud.dfctl(&format!(
                "lport create p{} --lswitch {} --mac {} --fixed-ip {} --fixed-ip {} --chassis hv{} --ifname tap{}",
                d.name,
                d.net.id,
                d.mac,
                d.ip4,
                d.ip6,
                d.hv + 1,
                d.name
            ));
            let a4 = format!("{}/{}", d.ip4, d.net.cidr4.split('/').nth(1).unwrap());
            let a6 = format!("{}/{}", d.ip6, d.net.cidr6.split('/').nth(1).unwrap());
            let opts = VmOpts::with_gateways(&[d.net.gw4, d.net.gw6]);
            cloud.add_vm_opts(
                d.hv,
                d.name,
                &format!("tap{}", d.name),
                d.mac,
                &[&a4, &a6],
                &opts,
            );
        }
        for i in 0..nhv {
            cloud.start_agent(i);
        }
        for hv in &cloud.hvs {
            wait_until(
                &format!("dragonflow_forwarding_enabled 1 on {}", hv.name),
                READY,
                || metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0),
            );
        }
        Fwd {
            defs: defs.to_vec(),
            cloud,
        }
    }

    fn idx(&self, d: &VmDef) -> usize {
        self.defs
            .iter()
            .position(|x| x.name == d.name)
            .unwrap_or_else(|| panic!("VM {} not in this topology", d.name))
    }

    fn vm(&self, d: &VmDef) -> &Netns {
        &self.cloud.vms[self.idx(d)].ns
    }

    fn hv(&self, d: &VmDef) -> &Hypervisor {
        &self.cloud.hvs[d.hv]
    }

    /// Waits until `from` pings `ip` (the path is up: chassis, tunnel, neighbours known).
    #[track_caller]
    fn wait_ping(&self, from: &VmDef, ip: &str) {
        let ns = self.vm(from);
        let start = Instant::now();
        while !ping(ns, ip, 1) {
            if start.elapsed() > READY {
                // What the sender gets back, for the failure message.
                let cap = Capture::start(ns, "eth0", "inout", "");
                ping(ns, ip, 2);
                panic!(
                    "{} does not ping {ip} after {READY:?}; datapath counters:\n{}{}",
                    from.name,
                    self.counters(),
                    cap.summary()
                );
            }
        }
    }

    /// Every non-zero datapath counter of every chassis, for failure messages.
    fn counters(&self) -> String {
        let mut s = String::new();
        for hv in &self.cloud.hvs {
            let m = hv.metrics();
            for l in m.lines().filter(|l| {
                l.starts_with("dragonflow_datapath_packets_total{") && !l.ends_with(" 0")
            }) {
                s.push_str(&format!("  {}: {l}\n", hv.name));
            }
        }
        for (d, vm) in self.defs.iter().zip(&self.cloud.vms) {
            let hv = &self.cloud.hvs[d.hv].ns;
            for (side, out) in [
                ("tap", hv.try_exec(&format!("ethtool -S {}", vm.tap))),
                ("eth0", vm.ns.try_exec("ethtool -S eth0")),
            ] {
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                let nz: Vec<&str> = text
                    .lines()
                    .skip(1)
                    .map(str::trim)
                    .filter(|l| !l.ends_with(": 0"))
                    .collect();
                s.push_str(&format!("  {} {side}: {}\n", d.name, nz.join(", ")));
            }
        }
        s
    }

    /// A capture of everything `d` receives on eth0.
    fn capture(&self, d: &VmDef) -> Capture {
        Capture::start(self.vm(d), "eth0", "in", "")
    }

    /// Sends UDP frames from `from` (see fwdsend.py).
    fn send(&self, from: &VmDef, dst_mac: &str, dst_ip: &str, payload: &str, extra: &[&str]) {
        let src = if dst_ip.contains(':') {
            from.ip6
        } else {
            from.ip4
        };
        let mut c = python_command(self.vm(from), "fwdsend.py");
        c.args(["--dst-mac", dst_mac, "--dst-ip", dst_ip, "--src-ip", src])
            .args(["--payload", payload])
            .args(extra);
        run(&mut c);
    }
}

/// Polls until counter (direction, verdict, name) on `hv` grew by `n` from `before`.
#[track_caller]
fn wait_counter(hv: &Hypervisor, dir: &str, verdict: &str, name: &str, before: f64, n: f64) {
    let start = Instant::now();
    loop {
        let now = hv.counter(dir, verdict, name);
        if now - before >= n {
            return;
        }
        if start.elapsed() > COUNT {
            panic!(
                "{}: counter {dir}/{verdict}/{name} grew by {} (want ≥ {n}) within {COUNT:?}",
                hv.name,
                now - before
            );
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// A broadcast ARP request asking for `ip`. (A unicast request to the owner's MAC, the
/// kernel's neighbour-reachability probe, is switched to the owner: it checks that the
/// VM itself is alive, so the datapath must not answer it for the VM.)
fn is_arp_request_for(f: &Frame, ip: &str) -> bool {
    let b = &f.bytes;
    b.len() >= 42
        && b[0..6] == [0xff; 6]
        && b[12..14] == [0x08, 0x06]
        && b[20..22] == [0, 1]
        && b[38..42] == ip_bytes(ip)
}

/// A multicast IPv6 neighbour solicitation whose target is `ip` (no extension headers);
/// unicast ones are reachability probes, as for ARP.
fn is_ns_for(f: &Frame, ip: &str) -> bool {
    let b = &f.bytes;
    b.len() >= 78
        && b[0..2] == [0x33, 0x33]
        && b[12..14] == [0x86, 0xdd]
        && b[20] == 58
        && b[54] == 135
        && b[62..78] == ip_bytes(ip)
}

/// ping, arping (same network only) and a 2 s iperf3 from `from` to `to`; `path` is the
/// from-VM pass path expected on the sender's chassis.
fn connectivity(t: &Fwd, from: &VmDef, to: &VmDef, path: &str) {
    let (src, hv) = (t.vm(from), t.hv(from));
    t.wait_ping(from, to.ip4);
    t.wait_ping(from, to.ip6);
    let before = hv.counter("from_vm", "pass", path);
    assert!(
        ping(src, to.ip4, 10),
        "{} → {}: IPv4 ping lost replies",
        from.name,
        to.name
    );
    assert!(
        ping(src, to.ip6, 10),
        "{} → {}: IPv6 ping lost replies",
        from.name,
        to.name
    );
    wait_counter(hv, "from_vm", "pass", path, before, 20.0);
    if std::ptr::eq(from.net, to.net) {
        src.exec("ip neigh flush dev eth0");
        let o = src.try_exec(&format!("arping -c 2 -w 5 -I eth0 {}", to.ip4));
        let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(
            o.status.success() && text.contains(&to.mac.to_lowercase()),
            "{} arping {}: want a reply with {}; got ({}):\n{text}",
            from.name,
            to.ip4,
            to.mac,
            o.status
        );
    }
    let bps = iperf3(src, t.vm(to), to.ip4, 2)
        .unwrap_or_else(|e| panic!("iperf3 {} → {}: {e}", from.name, to.name));
    eprintln!(
        "iperf3 {} → {} ({path}): {:.2} Gbit/s",
        from.name,
        to.name,
        bps / 1e9
    );
    assert!(
        bps > 10e6,
        "iperf3 {} → {}: only {bps} bit/s",
        from.name,
        to.name
    );
}

fn l2_same_chassis(hook: Hook) {
    let t = Fwd::new(hook, 1, &[A1, B1]);
    connectivity(&t, &A1, &B1, "l2_local");
    connectivity(&t, &B1, &A1, "l2_local");
}

fn l2_across_chassis(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, A2]);
    connectivity(&t, &A1, &A2, "l2_tunnel");
    connectivity(&t, &A2, &A1, "l2_tunnel");
}

fn l3_same_chassis(hook: Hook) {
    let t = Fwd::new(hook, 1, &[A1, C1]);
    connectivity(&t, &A1, &C1, "routed");
    connectivity(&t, &C1, &A1, "routed");
}

fn l3_across_chassis(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, C2]);
    connectivity(&t, &A1, &C2, "routed");
    connectivity(&t, &C2, &A1, "routed");
}

/// Ping to the router's interface addresses is answered by the datapath, and ARP for the
/// gateway is answered with the router's MAC.
fn router_interface(hook: Hook) {
    let t = Fwd::new(hook, 1, &[A1, C1]);
    for d in [&A1, &C1] {
        let (ns, hv) = (t.vm(d), t.hv(d));
        t.wait_ping(d, d.net.gw4);
        t.wait_ping(d, d.net.gw6);
        let before = hv.counter("from_vm", "pass", "router_echo");
        assert!(
            ping(ns, d.net.gw4, 5),
            "{}: ping {} lost replies",
            d.name,
            d.net.gw4
        );
        assert!(
            ping(ns, d.net.gw6, 5),
            "{}: ping {} lost replies",
            d.name,
            d.net.gw6
        );
        wait_counter(hv, "from_vm", "pass", "router_echo", before, 10.0);
        let o = ns.try_exec(&format!("arping -c 1 -w 5 -I eth0 {}", d.net.gw4));
        let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(
            o.status.success() && text.contains(d.net.rmac),
            "{}: arping the gateway {} should answer {}: {text}",
            d.name,
            d.net.gw4,
            d.net.rmac
        );
    }
}

/// ARP requests and neighbour solicitations for a known IP are answered on the sender's
/// chassis and never reach the owner (same chassis and across chassis).
fn responder(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, B1, A2]);
    let (a1, hv1) = (t.vm(&A1), t.hv(&A1));
    for to in [&B1, &A2] {
        t.wait_ping(&A1, to.ip4);
        t.wait_ping(&A1, to.ip6);
    }
    let caps = [t.capture(&B1), t.capture(&A2)];
    let (arp0, nd0) = (
        hv1.counter("from_vm", "pass", "arp_responder"),
        hv1.counter("from_vm", "pass", "nd_responder"),
    );
    a1.exec("ip -4 neigh flush dev eth0");
    a1.exec("ip -6 neigh flush dev eth0");
    // -b: broadcast every request (iputils arping turns to unicast after a reply).
    for to in [&B1, &A2] {
        let o = a1.try_exec(&format!("arping -b -c 2 -w 5 -I eth0 {}", to.ip4));
        let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
        assert!(
            o.status.success() && text.contains(to.mac),
            "arping {} ({}) from a1: want replies from {}: {text}",
            to.ip4,
            to.name,
            to.mac
        );
        // The kernel resolves the address with a multicast NS first.
        assert!(
            ping(a1, to.ip6, 1),
            "a1 → {} over IPv6 after a neighbour flush",
            to.ip6
        );
        let n = a1.exec(&format!("ip -6 neigh show {}", to.ip6));
        let n = String::from_utf8_lossy(&n.stdout).to_lowercase();
        assert!(
            n.contains(to.mac),
            "a1's neighbour entry for {}: {n}",
            to.ip6
        );
    }
    // Fence: a broadcast sent after every request; once it is in, a flooded request
    // would be too.
    let fence = unique("fence");
    t.send(&A1, BCAST, NET1.bcast4, &fence, &[]);
    for (cap, to) in caps.iter().zip([&B1, &A2]) {
        assert!(
            cap.wait_count(fence.as_bytes(), 1, FENCE),
            "fence broadcast never reached {}:\n{}",
            to.name,
            cap.summary()
        );
        let leaked: Vec<String> = cap
            .frames()
            .into_iter()
            .filter(|f| is_arp_request_for(f, to.ip4) || is_ns_for(f, to.ip6))
            .map(|f| f.line)
            .collect();
        assert!(
            leaked.is_empty(),
            "requests for {}'s addresses reached it (should be answered on hv1):\n{}",
            to.name,
            leaked.join("\n")
        );
    }
    wait_counter(hv1, "from_vm", "pass", "arp_responder", arp0, 4.0);
    wait_counter(hv1, "from_vm", "pass", "nd_responder", nd0, 2.0);
}

/// A broadcast and an IPv6 multicast reach every other VM of the network exactly once, on
/// both chassis, and nothing of another network or the sender itself.
fn broadcast_once(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, B1, A2, C1, C2]);
    t.wait_ping(&A1, A2.ip4);
    t.wait_ping(&A1, C2.ip4);
    let hv1 = t.hv(&A1);
    let caps: Vec<(VmDef, Capture)> = [A1, B1, A2, C1, C2]
        .into_iter()
        .map(|d| (d, t.capture(&d)))
        .collect();
    let flood0 = hv1.counter("from_vm", "pass", "flood");
    let (b, m) = (unique("bcast"), unique("mcast"));
    t.send(&A1, BCAST, NET1.bcast4, &b, &[]);
    t.send(&A1, "33:33:00:00:00:01", "ff02::1", &m, &[]);
    let fence = unique("fence");
    t.send(&A1, BCAST, NET1.bcast4, &fence, &[]);
    for (d, cap) in &caps {
        if d.name == "b1" || d.name == "a2" {
            assert!(
                cap.wait_count(fence.as_bytes(), 1, FENCE),
                "fence broadcast never reached {}:\n{}",
                d.name,
                cap.summary()
            );
        }
    }
    wait_counter(hv1, "from_vm", "pass", "flood", flood0, 3.0);
    for (d, cap) in &caps {
        let want = usize::from(d.name == "b1" || d.name == "a2");
        for (what, p) in [("broadcast", &b), ("multicast", &m)] {
            assert_eq!(
                cap.count(p.as_bytes()),
                want,
                "{what} from a1: copies received by {}\n{}",
                d.name,
                cap.summary()
            );
        }
    }
}

/// A frame to a MAC nobody has is dropped and counted, not flooded.
fn unknown_unicast(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, B1, A2]);
    t.wait_ping(&A1, B1.ip4);
    t.wait_ping(&A1, A2.ip4);
    let hv1 = t.hv(&A1);
    let caps = [(B1, t.capture(&B1)), (A2, t.capture(&A2))];
    let before = hv1.counter("from_vm", "drop", "unknown_unicast");
    let u = unique("unknown");
    t.send(&A1, UNKNOWN_MAC, "192.0.2.99", &u, &["--count", "3"]);
    wait_counter(hv1, "from_vm", "drop", "unknown_unicast", before, 3.0);
    for (d, cap) in &caps {
        let fence = unique("fence");
        t.send(&A1, d.mac, d.ip4, &fence, &[]);
        assert!(
            cap.wait_count(fence.as_bytes(), 1, FENCE),
            "fence never reached {}:\n{}",
            d.name,
            cap.summary()
        );
        assert_eq!(
            cap.count(u.as_bytes()),
            0,
            "unknown unicast reached {}:\n{}",
            d.name,
            cap.summary()
        );
    }
}

/// Routed with TTL/hop limit 1: dropped and counted; with 5: delivered with 4, source MAC
/// the router's on the destination network, destination MAC the port's.
fn ttl(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, C2]);
    t.wait_ping(&A1, C2.ip4);
    t.wait_ping(&A1, C2.ip6);
    let hv1 = t.hv(&A1);
    let cap = t.capture(&C2);
    for (dst, ttl_off, gw_mac, out_mac) in [
        (C2.ip4, 14 + 8, NET1.rmac, NET2.rmac),
        (C2.ip6, 14 + 7, NET1.rmac, NET2.rmac),
    ] {
        let before = hv1.counter("from_vm", "drop", "ttl_exceeded");
        let (p1, p5) = (unique("ttl1"), unique("ttl5"));
        t.send(&A1, gw_mac, dst, &p1, &["--ttl", "1"]);
        t.send(&A1, gw_mac, dst, &p5, &["--ttl", "5"]);
        wait_counter(hv1, "from_vm", "drop", "ttl_exceeded", before, 1.0);
        assert!(
            cap.wait_count(p5.as_bytes(), 1, FENCE),
            "TTL 5 to {dst} never reached c2:\n{}",
            cap.summary()
        );
        assert_eq!(
            cap.count(p1.as_bytes()),
            0,
            "TTL 1 to {dst} was delivered:\n{}",
            cap.summary()
        );
        let f = cap
            .frames()
            .into_iter()
            .find(|f| f.contains(p5.as_bytes()))
            .expect("frame");
        assert_eq!(
            f.bytes[ttl_off], 4,
            "TTL/hop limit after one hop (to {dst}): {}",
            f.line
        );
        assert_eq!(
            f.bytes[0..6],
            mac_bytes(C2.mac)[..],
            "routed dst MAC: {}",
            f.line
        );
        assert_eq!(
            f.bytes[6..12],
            mac_bytes(out_mac)[..],
            "routed src MAC: {}",
            f.line
        );
    }
}

/// The network MTU (1450) is honoured: a 1450-byte IP packet passes, a 1500-byte one sent
/// by a VM whose MTU was raised is dropped and counted (same chassis and across).
fn mtu(hook: Hook) {
    let t = Fwd::new(hook, 2, &[A1, B1, A2]);
    let (a1, hv1) = (t.vm(&A1), t.hv(&A1));
    for to in [&B1, &A2] {
        t.wait_ping(&A1, to.ip4);
        let o = a1.try_exec(&format!("ping -M do -s 1422 -c 3 -i 0.1 -W 2 {}", to.ip4));
        assert!(
            o.status.success(),
            "1450-byte ping a1 → {}: {}",
            to.name,
            String::from_utf8_lossy(&o.stdout)
        );
    }
    a1.exec("ip link set eth0 mtu 1500");
    for to in [&B1, &A2] {
        let before = hv1.counter("from_vm", "drop", "mtu_exceeded");
        let o = a1.try_exec(&format!("ping -M do -s 1472 -c 2 -i 0.1 -W 1 {}", to.ip4));
        assert!(
            !o.status.success(),
            "1500-byte ping a1 → {} was answered",
            to.name
        );
        wait_counter(hv1, "from_vm", "drop", "mtu_exceeded", before, 2.0);
        let o = a1.try_exec(&format!("ping -M do -s 1422 -c 2 -i 0.1 -W 2 {}", to.ip4));
        assert!(
            o.status.success(),
            "1450-byte ping a1 → {} after the MTU change",
            to.name
        );
    }
}

/// Ports deleted in etcd (one on the sender's chassis, one across) stop receiving within
/// a deadline; the others keep working.
fn deleted_port(hook: Hook) {
    const DEADLINE: Duration = Duration::from_secs(10);
    let t = Fwd::new(hook, 2, &[A1, B1, A2, C2]);
    for ip in [B1.ip4, A2.ip4, C2.ip4] {
        t.wait_ping(&A1, ip);
    }
    let (cb, ca, cc) = (t.capture(&B1), t.capture(&A2), t.capture(&C2));
    t.cloud.dfctl("lport delete pb1");
    t.cloud.dfctl("lport delete pa2");
    let t0 = Instant::now();
    let mut stopped = [None, None];
    while stopped.iter().any(Option::is_none) && t0.elapsed() < DEADLINE {
        let (pb, pa, f) = (unique("to-b1"), unique("to-a2"), unique("fence"));
        t.send(&A1, B1.mac, B1.ip4, &pb, &[]);
        t.send(&A1, A2.mac, A2.ip4, &pa, &[]);
        // Routed to c2 on hv2: through the tunnel after both probes.
        t.send(&A1, NET1.rmac, C2.ip4, &f, &[]);
        assert!(
            cc.wait_count(f.as_bytes(), 1, FENCE),
            "fence to c2 lost:\n{}",
            cc.summary()
        );
        for (i, (cap, p)) in [(&cb, &pb), (&ca, &pa)].into_iter().enumerate() {
            if stopped[i].is_none() && cap.count(p.as_bytes()) == 0 {
                stopped[i] = Some(t0.elapsed());
            }
        }
    }
    eprintln!(
        "deleted ports stopped receiving after: b1 {:?}, a2 {:?}",
        stopped[0], stopped[1]
    );
    assert!(
        stopped[0].is_some(),
        "b1 (same chassis) still receives {DEADLINE:?} after its port was deleted:\n{}",
        cb.summary()
    );
    assert!(
        stopped[1].is_some(),
        "a2 (other chassis) still receives {DEADLINE:?} after its port was deleted:\n{}",
        ca.summary()
    );
    assert!(
        ping(t.vm(&A1), C2.ip4, 3),
        "a1 → c2 broken by deleting other ports"
    );
}

/// A chassis whose agent is killed (kill -9) leaves the flood lists of the others once its
/// lease expires: hv1 stops sending VXLAN copies of broadcasts to it, and keeps sending
/// them to hv3.
fn dead_chassis(hook: Hook) {
    let lease: u64 = if agent_has_flag("--lease-ttl") { 3 } else { 10 };
    let args: Vec<String> = if lease == 3 {
        vec!["--lease-ttl".into(), "3".into()]
    } else {
        vec![]
    };
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut t = Fwd::with_args(hook, 3, &[A1, A2, A3], &args);
    t.wait_ping(&A1, A2.ip4);
    t.wait_ping(&A1, A3.ip4);
    let (hv2_ip, hv3_ip) = (
        ip_bytes(&t.cloud.hvs[1].tunnel_ip),
        ip_bytes(&t.cloud.hvs[2].tunnel_ip),
    );
    let ul = Capture::start(&t.cloud.hvs[0].ns, "eth-ul", "out", "udp port 4789");
    // Copies of broadcast `p` toward (hv2, hv3), once the one to hv3 has left.
    let copies = |p: &str| {
        assert!(
            ul.wait_count(p.as_bytes(), 1, FENCE),
            "no VXLAN copy of a broadcast left hv1:\n{}",
            ul.summary()
        );
        let to = |ip: &[u8]| {
            ul.frames()
                .iter()
                .filter(|f| f.contains(p.as_bytes()) && f.ipv4_dst().is_some_and(|d| d[..] == *ip))
                .count()
        };
        wait_until("the copy to hv3", FENCE, || to(&hv3_ip) >= 1);
        (to(&hv2_ip), to(&hv3_ip))
    };
    let p = unique("bcast");
    t.send(&A1, BCAST, NET1.bcast4, &p, &[]);
    assert_eq!(
        copies(&p),
        (1, 1),
        "copies to (hv2, hv3) with every chassis alive:\n{}",
        ul.summary()
    );

    t.cloud.hvs[1].kill_agent();
    let t0 = Instant::now();
    let deadline = Duration::from_secs(lease + 15);
    let mut gone = None;
    while gone.is_none() && t0.elapsed() < deadline {
        let p = unique("bcast");
        t.send(&A1, BCAST, NET1.bcast4, &p, &[]);
        let (to2, to3) = copies(&p);
        assert_eq!(to3, 1, "copies to hv3 (alive) of one broadcast");
        if to2 == 0 {
            gone = Some(t0.elapsed());
        }
    }
    let listed = t.cloud.dfctl("chassis list");
    eprintln!(
        "hv2 left hv1's flooding {gone:?} after kill -9 (lease {lease} s); chassis list now:\n{listed}"
    );
    let gone = gone.unwrap_or_else(|| {
        panic!(
            "hv1 still floods to hv2 {deadline:?} after hv2's agent was killed (lease {lease} s); chassis list:\n{listed}\nhv1 /state: {}",
            t.cloud.hvs[0].state()
        )
    });
    assert!(
        gone >= Duration::from_secs(lease.saturating_sub(1)),
        "hv2 removed after {gone:?}, before its lease ({lease} s) could expire"
    );
    assert!(ping(t.vm(&A1), A3.ip4, 3), "a1 → a3 after hv2 died");
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

for_both_hooks!(
    l2_same_chassis,
    l2_across_chassis,
    l3_same_chassis,
    l3_across_chassis,
    router_interface,
    responder,
    broadcast_once,
    unknown_unicast,
    ttl,
    mtu,
    deleted_port,
    dead_chassis,
);
