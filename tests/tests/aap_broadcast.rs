//! Shared allowed-address-pair addresses end to end (issue 5): the broadcast way, and the
//! forwarding side of the detection way (an `activeport/` entry written directly, as the
//! detecting agent would). Hypervisor namespaces joined by an underlay, each with its
//! agent and no bridge; two VMs on different chassis share a VIP with their own MACs, two
//! others share a second VIP with a VRRP virtual MAC; a client on a third chassis in the
//! same network, a client on another network behind the distributed router, and a
//! bystander (a port of the network that holds nothing) next to the holders. Under the
//! detection way, clients whose neighbour cache still names a holder that is not the
//! active one reach the active one only (`detection_stale_cache`). Every test runs for
//! both hooks (`xdp::<case>`, `tc::<case>`).
//!
//! ```text
//!   net1 VNI 100  192.0.2.0/24, 2001:db8:1::/64   r1 192.0.2.1     (fa:16:3e:0c:01:01)
//!   net2 VNI 200  198.51.100.0/24                 r1 198.51.100.1  (fa:16:3e:0c:02:01)
//!   VIP  192.0.2.100 + 2001:db8:1::100, own MACs: v1 (hv1 .11), v2 (hv2 .12)
//!   VIP2 192.0.2.200 with VRRP MAC 00:00:5e:00:01:2a: w1 (hv1 .21), w2 (hv2 .22)
//!   hv1: v1, w1, n (bystander .31)     hv2: v2, w2     hv3: c (client .40), r (net2 .40)
//! ```
//!
//! What a VM did or did not receive is read from a tcpdump inside it; "did not" is decided
//! after a fence: a later broadcast from the same sender reached the same VM, so an earlier
//! frame would have too.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::{Duration, Instant};

use tests::{
    fixtures::addresses::{ip_bytes, mac_bytes, unique},
    framework::{
        hook::Hook,
        http::metric,
        netns::Netns,
        process::{run, wait_until},
        python::{PYTHON, python_command},
    },
    harness::{Capture, Cloud, Frame, HvOpts, VmOpts, ping},
};

const READY: Duration = Duration::from_secs(30);
const FENCE: Duration = Duration::from_secs(5);

const VIP: &str = "192.0.2.100";
const VIP6: &str = "2001:db8:1::100";
const VIP2: &str = "192.0.2.200";
const VRRP_MAC: &str = "00:00:5e:00:01:2a";
const R1_NET1: &str = "fa:16:3e:0c:01:01";
const R1_NET2: &str = "fa:16:3e:0c:02:01";
const BCAST: &str = "ff:ff:ff:ff:ff:ff";
const BCAST4: &str = "192.0.2.255";

#[derive(Clone, Copy)]
struct VmDef {
    /// Namespace `<prefix>-<name>`, port `p<name>`, tap `tap<name>`.
    name: &'static str,
    hv: usize,
    net: &'static str,
    mac: &'static str,
    ip4: &'static str,
    /// IPv6 address on net1 ("" on net2).
    ip6: &'static str,
    /// `--aap` arguments of its port.
    aaps: &'static [&'static str],
}

const V1: VmDef = VmDef {
    name: "v1",
    hv: 0,
    net: "net1",
    mac: "fa:16:3e:0c:00:11",
    ip4: "192.0.2.11",
    ip6: "2001:db8:1::11",
    aaps: &["192.0.2.100", "2001:db8:1::100"],
};
const V2: VmDef = VmDef {
    name: "v2",
    hv: 1,
    net: "net1",
    mac: "fa:16:3e:0c:00:12",
    ip4: "192.0.2.12",
    ip6: "2001:db8:1::12",
    aaps: &["192.0.2.100", "2001:db8:1::100"],
};
const W1: VmDef = VmDef {
    name: "w1",
    hv: 0,
    net: "net1",
    mac: "fa:16:3e:0c:00:21",
    ip4: "192.0.2.21",
    ip6: "2001:db8:1::21",
    aaps: &["192.0.2.200,00:00:5e:00:01:2a"],
};
const W2: VmDef = VmDef {
    name: "w2",
    hv: 1,
    net: "net1",
    mac: "fa:16:3e:0c:00:22",
    ip4: "192.0.2.22",
    ip6: "2001:db8:1::22",
    aaps: &["192.0.2.200,00:00:5e:00:01:2a"],
};
const N: VmDef = VmDef {
    name: "n",
    hv: 0,
    net: "net1",
    mac: "fa:16:3e:0c:00:31",
    ip4: "192.0.2.31",
    ip6: "2001:db8:1::31",
    aaps: &[],
};
const C: VmDef = VmDef {
    name: "c",
    hv: 2,
    net: "net1",
    mac: "fa:16:3e:0c:00:40",
    ip4: "192.0.2.40",
    ip6: "2001:db8:1::40",
    aaps: &[],
};
const R: VmDef = VmDef {
    name: "r",
    hv: 2,
    net: "net2",
    mac: "fa:16:3e:0c:02:40",
    ip4: "198.51.100.40",
    ip6: "",
    aaps: &[],
};
const ALL: [VmDef; 7] = [V1, V2, W1, W2, N, C, R];

struct Topo {
    cloud: Cloud,
}

impl Topo {
    /// The topology above; `net1_mode`: `--aap-mode` of net1's lswitch record (None: the
    /// agents' default, broadcast); `agent_args` for every agent.
    fn new(hook: Hook, net1_mode: Option<&str>, agent_args: &[&str]) -> Topo {
        let mut cloud = Cloud::new();
        for i in 0..3 {
            let hv =
                cloud.add_hypervisor_opts(&format!("hv{}", i + 1), hook, HvOpts { bridge: false });
            cloud.hvs[hv].extra_agent_args = ["--forwarding"]
                .iter()
                .chain(agent_args)
                .map(|s| s.to_string())
                .collect();
        }
        let mode = net1_mode.map_or(String::new(), |m| format!(" --aap-mode {m}"));
        cloud.dfctl(&format!("lswitch create net1 --vni 100 --mtu 1450{mode}"));
        cloud.dfctl("lswitch create net2 --vni 200 --mtu 1450");
        cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
        cloud.dfctl(
            "subnet create net1-v6 --lswitch net1 --cidr 2001:db8:1::/64 --gateway 2001:db8:1::1",
        );
        cloud.dfctl(
            "subnet create net2-v4 --lswitch net2 --cidr 198.51.100.0/24 --gateway 198.51.100.1",
        );
        cloud.dfctl("lrouter create r1 --name r1");
        cloud.dfctl(&format!(
            "lrouter add-interface r1 --lswitch net1 --mac {R1_NET1} --ip 192.0.2.1/24 --ip 2001:db8:1::1/64"
        ));
        cloud.dfctl(&format!(
            "lrouter add-interface r1 --lswitch net2 --mac {R1_NET2} --ip 198.51.100.1/24"
        ));
        for d in ALL {
            let mut args = format!(
                "lport create p{} --lswitch {} --mac {} --fixed-ip {} --chassis hv{} --ifname tap{}",
                d.name,
                d.net,
                d.mac,
                d.ip4,
                d.hv + 1,
                d.name
            );
            if !d.ip6.is_empty() {
                args.push_str(&format!(" --fixed-ip {}", d.ip6));
            }
            for a in d.aaps {
                args.push_str(&format!(" --aap {a}"));
            }
            cloud.dfctl(&args);
            let (gw4, len4) = if d.net == "net1" {
                ("192.0.2.1", 24)
            } else {
                ("198.51.100.1", 24)
            };
            let mut addrs = vec![format!("{}/{len4}", d.ip4)];
            let mut gws = vec![gw4];
            if !d.ip6.is_empty() {
                addrs.push(format!("{}/64", d.ip6));
                gws.push("2001:db8:1::1");
            }
            let addrs: Vec<&str> = addrs.iter().map(String::as_str).collect();
            cloud.add_vm_opts(
                d.hv,
                d.name,
                &format!("tap{}", d.name),
                d.mac,
                &addrs,
                &VmOpts::with_gateways(&gws),
            );
        }
        for i in 0..3 {
            cloud.start_agent(i);
        }
        for hv in &cloud.hvs {
            wait_until(
                &format!("dragonflow_forwarding_enabled 1 on {}", hv.name),
                READY,
                || metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0),
            );
        }
        Topo { cloud }
    }

    fn vm(&self, d: &VmDef) -> &Netns {
        let i = ALL.iter().position(|x| x.name == d.name).expect("VM");
        &self.cloud.vms[i].ns
    }

    fn capture(&self, d: &VmDef) -> Capture {
        Capture::start(self.vm(d), "eth0", "in", "")
    }

    /// Crafted UDP frames from `from` (see fwdsend.py).
    fn send(&self, from: &VmDef, dst_mac: &str, dst_ip: &str, payload: &str) {
        let src = if dst_ip.contains(':') {
            from.ip6
        } else {
            from.ip4
        };
        let mut c = python_command(self.vm(from), "fwdsend.py");
        c.args(["--dst-mac", dst_mac, "--dst-ip", dst_ip, "--src-ip", src])
            .args(["--payload", payload]);
        run(&mut c);
    }

    /// Waits until every chassis has installed the shared addresses of net1 in `way` (and,
    /// for the detection way, `active` as the active port of `addr`).
    fn wait_way(&self, addr: &str, way: &str, active: Option<&str>) {
        for hv in &self.cloud.hvs {
            wait_until(
                &format!(
                    "{} forwards {addr} the {way} way (active {active:?})",
                    hv.name
                ),
                READY,
                || {
                    let st = hv.state();
                    st["networks"].as_array().is_some_and(|nets| {
                        nets.iter().any(|n| {
                            n["lswitch"] == "net1"
                                && n["shared"].as_array().is_some_and(|sh| {
                                    sh.iter().any(|s| {
                                        s["address"] == addr
                                            && s["way"] == way
                                            && s["active_port"].as_str() == active
                                    })
                                })
                        })
                    })
                },
            );
        }
    }

    /// Every non-zero datapath counter of every chassis, for failure messages.
    fn counters(&self) -> String {
        let mut s = String::new();
        for hv in &self.cloud.hvs {
            for l in hv.metrics().lines().filter(|l| {
                l.starts_with("dragonflow_datapath_packets_total{") && !l.ends_with(" 0")
            }) {
                s.push_str(&format!("  {}: {l}\n", hv.name));
            }
        }
        s
    }

    /// Waits until `from` pings `ip`.
    fn wait_ping(&self, from: &VmDef, ip: &str) {
        let ns = self.vm(from);
        let start = Instant::now();
        while !ping(ns, ip, 1) {
            assert!(
                start.elapsed() < READY,
                "{} does not ping {ip} after {READY:?}",
                from.name
            );
        }
    }

    /// A broadcast from `from` that every VM of net1 receives: once `to`'s capture has it,
    /// anything `from` sent before would have arrived too.
    fn fence(&self, from: &VmDef, caps: &[(&VmDef, &Capture)]) {
        let p = unique("fence");
        self.send(from, BCAST, BCAST4, &p);
        for (d, cap) in caps {
            assert!(
                cap.wait_count(p.as_bytes(), 1, FENCE),
                "fence broadcast from {} never reached {}:\n{}",
                from.name,
                d.name,
                cap.summary()
            );
        }
    }
}

/// An ARP request (broadcast, not gratuitous) asking for `ip`.
fn is_arp_request_for(f: &Frame, ip: &str) -> bool {
    let b = &f.bytes;
    b.len() >= 42
        && b[12..14] == [0x08, 0x06]
        && b[20..22] == [0, 1]
        && b[28..32] != b[38..42]
        && b[38..42] == ip_bytes(ip)[..]
}

/// A neighbour solicitation (no extension headers) whose target is `ip`.
fn is_ns_for(f: &Frame, ip: &str) -> bool {
    let b = &f.bytes;
    b.len() >= 78
        && b[12..14] == [0x86, 0xdd]
        && b[20] == 58
        && b[54] == 135
        && b[62..78] == ip_bytes(ip)[..]
}

/// Frames carrying `payload`, as (destination MAC, source MAC).
fn carriers(cap: &Capture, payload: &str) -> Vec<(Vec<u8>, Vec<u8>)> {
    cap.frames()
        .iter()
        .filter(|f| f.contains(payload.as_bytes()) && f.bytes.len() >= 12)
        .map(|f| (f.bytes[0..6].to_vec(), f.bytes[6..12].to_vec()))
        .collect()
}

/// Waits until `cap` holds `n` frames with `payload`; panics with the capture otherwise.
#[track_caller]
fn expect_copies(cap: &Capture, who: &str, payload: &str, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    assert!(
        cap.wait_count(payload.as_bytes(), n, FENCE),
        "{who} should receive {n} frame(s) with {payload}:\n{}",
        cap.summary()
    );
    carriers(cap, payload)
}

/// The broadcast way: ARP/NS for a shared VIP reach its holders only (the responder does
/// not answer, the bystander never sees them); switched, routed and VRRP-MAC traffic
/// reaches every holder, each copy with the holder's own MAC for the VIP.
fn broadcast_way(hook: Hook) {
    let t = Topo::new(hook, None, &[]);
    for d in [V1, V2] {
        d_addr(&t, &d, VIP, 32);
        d_addr(&t, &d, VIP6, 128);
    }
    t.wait_way(VIP, "broadcast", None);
    t.wait_way(VIP2, "broadcast", None);
    t.wait_way(VRRP_MAC, "broadcast", None);
    for to in [V1.ip4, N.ip4, "192.0.2.1"] {
        t.wait_ping(&C, to);
    }
    t.wait_ping(&R, V2.ip4);

    let caps: Vec<(&VmDef, Capture)> = [V1, V2, W1, W2, N]
        .iter()
        .map(|d| (d, t.capture(d)))
        .collect();
    let cap = |name: &str| &caps.iter().find(|(d, _)| d.name == name).expect("cap").1;
    let hv3 = &t.cloud.hvs[2];
    let group0 = hv3.counter("from_vm", "pass", "aap_group");
    let resp0 = hv3.counter("from_vm", "pass", "arp_responder");

    // ARP for the VIP: both holders are asked and answer with their own MACs.
    let c = t.vm(&C);
    c.exec("ip neigh flush dev eth0");
    let o = c.try_exec(&format!("arping -b -c 2 -w 5 -I eth0 {VIP}"));
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        text.contains(V1.mac) && text.contains(V2.mac),
        "arping {VIP}: want answers from both holders ({} and {}):\n{text}",
        V1.mac,
        V2.mac
    );
    // NS for the IPv6 VIP: the kernel resolves it before the first echo.
    assert!(ping(c, VIP6, 2), "c → {VIP6}");
    // (Captures reach the file up to a second late: poll.)
    for d in [&V1, &V2] {
        for (what, ip) in [("ARP request", VIP), ("NS", VIP6)] {
            let seen = |f: &Frame| {
                if ip == VIP {
                    is_arp_request_for(f, ip)
                } else {
                    is_ns_for(f, ip)
                }
            };
            let start = Instant::now();
            while !cap(d.name).frames().iter().any(seen) {
                assert!(
                    start.elapsed() < FENCE,
                    "{} never saw the {what} for {ip}:\n{}{}",
                    d.name,
                    cap(d.name).summary(),
                    t.counters()
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
    assert!(
        hv3.counter("from_vm", "pass", "aap_group") - group0 >= 3.0,
        "ARP and NS for the VIPs counted aap_group on the client's chassis"
    );
    assert_eq!(
        hv3.counter("from_vm", "pass", "arp_responder"),
        resp0,
        "the responder never answers for a shared VIP"
    );

    // Switched: sent to v1's MAC, for the VIP: both holders, each with its own MAC.
    let p = unique("switched");
    t.send(&C, V1.mac, VIP, &p);
    for d in [&V1, &V2] {
        let got = expect_copies(cap(d.name), d.name, &p, 1);
        assert_eq!(got.len(), 1, "{}: one copy", d.name);
        assert_eq!(got[0].0, mac_bytes(d.mac), "{}: its own MAC", d.name);
        assert_eq!(got[0].1, mac_bytes(C.mac), "{}: from the client", d.name);
    }

    // Routed from net2: both holders, destination MAC theirs, source the router's.
    let p2 = unique("routed");
    t.send(&R, R1_NET2, VIP, &p2);
    for d in [&V1, &V2] {
        let got = expect_copies(cap(d.name), d.name, &p2, 1);
        assert_eq!(
            got,
            vec![(mac_bytes(d.mac), mac_bytes(R1_NET1))],
            "{}",
            d.name
        );
    }

    // The VRRP MAC: switched and routed to VIP2 reach both of its holders, unchanged.
    let p3 = unique("vrrp");
    t.send(&C, VRRP_MAC, VIP2, &p3);
    let p4 = unique("vrrp-routed");
    t.send(&R, R1_NET2, VIP2, &p4);
    for d in [&W1, &W2] {
        let got = expect_copies(cap(d.name), d.name, &p3, 1);
        assert_eq!(
            got,
            vec![(mac_bytes(VRRP_MAC), mac_bytes(C.mac))],
            "{}",
            d.name
        );
        let got = expect_copies(cap(d.name), d.name, &p4, 1);
        assert_eq!(
            got,
            vec![(mac_bytes(VRRP_MAC), mac_bytes(R1_NET1))],
            "{}",
            d.name
        );
    }
    // ARP for VIP2 (nobody configured it, so nobody answers): asked of w1 and w2 only.
    let _ = c.try_exec(&format!("arping -b -c 1 -w 2 -I eth0 {VIP2}"));
    for d in [&W1, &W2] {
        wait_until(
            &format!("{} sees the ARP for {VIP2}", d.name),
            FENCE,
            || {
                cap(d.name)
                    .frames()
                    .iter()
                    .any(|f| is_arp_request_for(f, VIP2))
            },
        );
    }

    // The bystander next to the holders saw none of it; nor did the other pair.
    t.fence(&C, &[(&N, cap("n")), (&V1, cap("v1")), (&W1, cap("w1"))]);
    let n = cap("n");
    let leaked: Vec<String> = n
        .frames()
        .iter()
        .filter(|f| {
            is_arp_request_for(f, VIP)
                || is_arp_request_for(f, VIP2)
                || is_ns_for(f, VIP6)
                || [&p, &p2, &p3, &p4].iter().any(|x| f.contains(x.as_bytes()))
        })
        .map(|f| f.line.clone())
        .collect();
    assert!(
        leaked.is_empty(),
        "the bystander received traffic for the shared addresses:\n{}",
        leaked.join("\n")
    );
    for (d, other) in [(&W1, &p), (&W2, &p2), (&V1, &p3), (&V2, &p4)] {
        assert_eq!(
            cap(d.name).count(other.as_bytes()),
            0,
            "{} got {other}",
            d.name
        );
    }
}

/// Adds `ip/len` to a VM's eth0 (the VM uses its allowed address pair).
fn d_addr(t: &Topo, d: &VmDef, ip: &str, len: u8) {
    t.vm(d)
        .exec(&format!("ip addr add {ip}/{len} dev eth0 nodad"));
}

/// `activeport/net1/<ip>` as the detecting agent writes it (no lease here: nothing
/// expires it but us).
fn put_active(t: &Topo, ip: &str, port: &str, mac: &str, chassis: &str) {
    let v = serde_json::json!({
        "lswitch": "net1",
        "ip": ip,
        "port": port,
        "mac": mac,
        "chassis": chassis,
        "since_ms": 1,
        "reason": "garp",
    });
    let o = t.cloud.etcdctl(&[
        "put",
        &format!("/dragonflow/activeport/net1/{ip}"),
        &v.to_string(),
    ]);
    assert!(
        o.status.success(),
        "etcdctl put: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The detection way's forwarding side: with an active entry every chassis answers ARP for
/// the VIP with the active port's MAC and sends routed and VRRP-MAC traffic to the active
/// port only; without one (removed), the broadcast way again.
fn detection_pointers(hook: Hook) {
    // Probes off: only the entries this test writes decide.
    let t = Topo::new(hook, Some("detection"), &["--probe-interval-ms", "0"]);
    d_addr(&t, &V2, VIP, 32);
    t.wait_way(VIP, "broadcast", None);
    for to in [V1.ip4, "192.0.2.1"] {
        t.wait_ping(&C, to);
    }
    t.wait_ping(&R, V2.ip4);

    put_active(&t, VIP, "pv2", V2.mac, "hv2");
    put_active(&t, VIP2, "pw1", VRRP_MAC, "hv1");
    t.wait_way(VIP, "detection", Some("pv2"));
    t.wait_way(VIP2, "detection", Some("pw1"));
    t.wait_way(VRRP_MAC, "detection", Some("pw1"));

    let caps: Vec<(&VmDef, Capture)> = [V1, V2, W1, W2].iter().map(|d| (d, t.capture(d))).collect();
    let cap = |name: &str| &caps.iter().find(|(d, _)| d.name == name).expect("cap").1;
    let hv3 = &t.cloud.hvs[2];
    let resp0 = hv3.counter("from_vm", "pass", "arp_responder");

    // ARP for the VIP: answered on the client's chassis with the active port's MAC.
    let c = t.vm(&C);
    c.exec("ip neigh flush dev eth0");
    let o = c.try_exec(&format!("arping -b -c 2 -w 5 -I eth0 {VIP}"));
    let text = String::from_utf8_lossy(&o.stdout).to_lowercase();
    assert!(
        o.status.success() && text.contains(V2.mac) && !text.contains(V1.mac),
        "arping {VIP}: want answers with the active port's MAC {} only:\n{text}",
        V2.mac
    );
    assert!(
        hv3.counter("from_vm", "pass", "arp_responder") - resp0 >= 2.0,
        "answered by the responder"
    );

    // Routed and switched traffic: the active port only.
    let p = unique("routed");
    t.send(&R, R1_NET2, VIP, &p);
    let p2 = unique("vrrp");
    t.send(&C, VRRP_MAC, VIP2, &p2);
    let p3 = unique("vrrp-routed");
    t.send(&R, R1_NET2, VIP2, &p3);
    let got = expect_copies(cap("v2"), "v2", &p, 1);
    assert_eq!(got, vec![(mac_bytes(V2.mac), mac_bytes(R1_NET1))]);
    let got = expect_copies(cap("w1"), "w1", &p2, 1);
    assert_eq!(got, vec![(mac_bytes(VRRP_MAC), mac_bytes(C.mac))]);
    expect_copies(cap("w1"), "w1", &p3, 1);
    t.fence(&C, &[(&V1, cap("v1")), (&W2, cap("w2"))]);
    assert_eq!(cap("v1").count(p.as_bytes()), 0, "v1 (not active) got {p}");
    for x in [&p2, &p3] {
        assert_eq!(cap("w2").count(x.as_bytes()), 0, "w2 (not active) got {x}");
    }
    assert!(
        !cap("v1")
            .frames()
            .iter()
            .any(|f| is_arp_request_for(f, VIP)),
        "the ARP for {VIP} was answered, never forwarded"
    );

    // The entries go: the broadcast way again, both holders receive.
    for ip in [VIP, VIP2] {
        let o = t
            .cloud
            .etcdctl(&["del", &format!("/dragonflow/activeport/net1/{ip}")]);
        assert!(o.status.success());
    }
    t.wait_way(VIP, "broadcast", None);
    t.wait_way(VRRP_MAC, "broadcast", None);
    let p4 = unique("routed-again");
    t.send(&R, R1_NET2, VIP, &p4);
    let p5 = unique("vrrp-again");
    t.send(&C, VRRP_MAC, VIP2, &p5);
    for (d, x) in [(&V1, &p4), (&V2, &p4), (&W1, &p5), (&W2, &p5)] {
        expect_copies(cap(d.name), d.name, x, 1);
    }
}

/// A UDP datagram to `ip` through `d`'s own stack (its neighbour cache picks the MAC).
fn udp_via_stack(t: &Topo, d: &VmDef, ip: &str, payload: &str) {
    const SEND: &str = "import socket, sys
a = sys.argv[1]
s = socket.socket(socket.AF_INET6 if ':' in a else socket.AF_INET, socket.SOCK_DGRAM)
s.sendto(sys.argv[2].encode(), (a, 9))
";
    let mut c = t.vm(d).command(PYTHON);
    c.args(["-c", SEND, ip, payload]);
    run(&mut c);
}

/// Points `d`'s neighbour entry for `ip` at `mac`, as a cache from before a failover.
fn stale(t: &Topo, d: &VmDef, ip: &str, mac: &str) {
    t.vm(d).exec(&format!(
        "ip neigh replace {ip} lladdr {mac} dev eth0 nud permanent"
    ));
}

/// The detection way with clients whose neighbour cache still names a holder that is not
/// the active one (issue 10): their packets for the VIP reach the active holder only,
/// readdressed on the sender's chassis — the backup on another chassis than the sender
/// (c on hv3) or on the same one (n on hv1, next to v1), the active holder remote or next
/// to the sender (after a move to v1) — IPv4 and IPv6, and a ping through the stale entry
/// is answered by the active holder.
fn detection_stale_cache(hook: Hook) {
    let t = Topo::new(hook, Some("detection"), &["--probe-interval-ms", "0"]);
    d_addr(&t, &V2, VIP, 32);
    d_addr(&t, &V2, VIP6, 128);
    t.wait_way(VIP, "broadcast", None);
    t.wait_ping(&C, V1.ip4);
    t.wait_ping(&N, V2.ip4);
    put_active(&t, VIP, "pv2", V2.mac, "hv2");
    put_active(&t, VIP6, "pv2", V2.mac, "hv2");
    t.wait_way(VIP, "detection", Some("pv2"));
    t.wait_way(VIP6, "detection", Some("pv2"));
    let (cap1, cap2) = (t.capture(&V1), t.capture(&V2));
    for d in [&C, &N] {
        stale(&t, d, VIP, V1.mac);
        stale(&t, d, VIP6, V1.mac);
    }
    // Through the stale entry, the active holder answers (the backup, which does not
    // hold the address, would drop it).
    t.wait_ping(&C, VIP);

    let check = |active: (&VmDef, &Capture), backup: (&VmDef, &Capture), to: &[&str]| {
        let mut sent = Vec::new();
        for from in [&C, &N] {
            for ip in to {
                let p = unique(&format!("stale-{}", from.name));
                udp_via_stack(&t, from, ip, &p);
                sent.push((from, p));
            }
        }
        for (from, p) in &sent {
            let got = expect_copies(active.1, active.0.name, p, 1);
            assert_eq!(
                got,
                vec![(mac_bytes(active.0.mac), mac_bytes(from.mac))],
                "{p}: readdressed to the active holder {}\n{}",
                active.0.name,
                t.counters()
            );
        }
        for from in [&C, &N] {
            t.fence(from, &[active, backup]);
        }
        for (_, p) in &sent {
            assert_eq!(
                backup.1.count(p.as_bytes()),
                0,
                "{} (not active) got {p}\n{}",
                backup.0.name,
                t.counters()
            );
        }
    };
    check((&V2, &cap2), (&V1, &cap1), &[VIP, VIP6]);

    // The VIP moves to v1 (next to n); the caches now name v2.
    put_active(&t, VIP, "pv1", V1.mac, "hv1");
    t.wait_way(VIP, "detection", Some("pv1"));
    for d in [&C, &N] {
        stale(&t, d, VIP, V2.mac);
    }
    check((&V1, &cap1), (&V2, &cap2), &[VIP]);
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

for_both_hooks!(broadcast_way, detection_pointers, detection_stale_cache);
