//! A real VM on every hook (issue 15): Debian's cloud kernel booted by qemu (TCG) with
//! virtio-net on a real tap, offloads at their defaults (`tests::guest`), behind the real
//! agent, next to namespace VMs. One guest per hook, every check in it (a boot costs
//! seconds under TCG):
//!
//! ```text
//!   net1 VNI 100  192.0.2.0/24  2001:db8:1::/64   r1 .1 / ::1   detection way (lswitch)
//!   net2 VNI 200  198.51.100.0/24                 r1 .1
//!   hv1: guest g (net1 .16, tap "tapg", qemu), a1 (net1 .10), c1 (net2 .10)
//!   hv2: a2 (net1 .20, over VXLAN)
//!   g and a1 both list the VIP 192.0.2.100 (shared, detection way)
//! ```
//!
//! Checks: ping local, over VXLAN and routed; TCP bulk both ways (IPv4 and IPv6 locally,
//! IPv4 over VXLAN and routed) with an md5 of what arrived, and no checksum errors counted
//! by either receiver, and no `mtu_exceeded` drop (the guest sends 64 KB TSO super-frames
//! and leaves checksums to offload); a spoofed source dropped, then allowed once it is a
//! live AAP; a GARP event; a VIP failover between the guest and a namespace VM; no
//! `redirect_failed` from boot on.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use tests::{
    framework::{
        hook::Hook,
        http::{metric, metric_sum},
        netns::Netns,
        process::{wait_for, wait_until},
        python::python_command,
    },
    guest::{Guest, GuestSpec},
    harness::{Cloud, HvOpts, Hypervisor, VmOpts, ping},
};

const READY: Duration = Duration::from_secs(60);

const G_MAC: &str = "fa:16:3e:0f:00:16";
const G_IP4: &str = "192.0.2.16";
const G_IP6: &str = "2001:db8:1::16";
const VIP: &str = "192.0.2.100";
/// The address the guest first spoofs, then gets as a live allowed address pair.
const EXTRA: &str = "192.0.2.77";
/// Bytes per bulk transfer: enough for many 64 KB TSO super-frames.
const BULK: usize = 4 << 20;

struct NsVm {
    name: &'static str,
    hv: usize,
    net: &'static str,
    mac: &'static str,
    ip4: &'static str,
    ip6: &'static str,
    extra: &'static str,
}

const A1: NsVm = NsVm {
    name: "a1",
    hv: 0,
    net: "net1",
    mac: "fa:16:3e:0f:00:10",
    ip4: "192.0.2.10",
    ip6: "2001:db8:1::10",
    extra: "--aap 192.0.2.100",
};
const A2: NsVm = NsVm {
    name: "a2",
    hv: 1,
    net: "net1",
    mac: "fa:16:3e:0f:00:20",
    ip4: "192.0.2.20",
    ip6: "2001:db8:1::20",
    extra: "",
};
const C1: NsVm = NsVm {
    name: "c1",
    hv: 0,
    net: "net2",
    mac: "fa:16:3e:0f:02:10",
    ip4: "198.51.100.10",
    ip6: "2001:db8:2::10",
    extra: "",
};
const NS_VMS: [&NsVm; 3] = [&A1, &A2, &C1];

/// The cloud, its namespace VMs (in `NS_VMS` order) and the guest.
struct World {
    // Field order is drop order: the guest (qemu, tap) before the cloud.
    guest: Guest,
    cloud: Cloud,
}

impl World {
    fn new(hook: Hook, xdp_mode: &str) -> World {
        let mut cloud = Cloud::new();
        for name in ["hv1", "hv2"] {
            let hv = cloud.add_hypervisor_opts(name, hook, HvOpts { bridge: false });
            let mut args = vec!["--forwarding".to_string()];
            if hook == Hook::Xdp {
                args.extend(["--xdp-mode".to_string(), xdp_mode.to_string()]);
            }
            cloud.hvs[hv].extra_agent_args = args;
        }
        cloud.dfctl("lrouter create r1 --name r1");
        let nets = [
            ("net1", 100, "192.0.2", "2001:db8:1", "fa:16:3e:00:01:01"),
            ("net2", 200, "198.51.100", "2001:db8:2", "fa:16:3e:00:02:01"),
        ];
        for (id, vni, v4, v6, rmac) in nets {
            cloud.dfctl(&format!(
                "lswitch create {id} --vni {vni} --mtu 1450 --aap-mode detection"
            ));
            cloud.dfctl(&format!(
                "subnet create {id}-v4 --lswitch {id} --cidr {v4}.0/24 --gateway {v4}.1"
            ));
            cloud.dfctl(&format!(
                "subnet create {id}-v6 --lswitch {id} --cidr {v6}::/64 --gateway {v6}::1"
            ));
            cloud.dfctl(&format!(
                "lrouter add-interface r1 --lswitch {id} --mac {rmac} --ip {v4}.1/24 --ip {v6}::1/64"
            ));
        }
        for v in NS_VMS {
            cloud.dfctl(&format!(
                "lport create p{} --lswitch {} --mac {} --fixed-ip {} --fixed-ip {} {} --chassis hv{} --ifname tap{}",
                v.name,
                v.net,
                v.mac,
                v.ip4,
                v.ip6,
                v.extra,
                v.hv + 1,
                v.name
            ));
            let (gw4, gw6) = gateways(v.ip4, v.ip6);
            cloud.add_vm_opts(
                v.hv,
                v.name,
                &format!("tap{}", v.name),
                v.mac,
                &[&format!("{}/24", v.ip4), &format!("{}/64", v.ip6)],
                &VmOpts::with_gateways(&[&gw4, &gw6]),
            );
        }
        cloud.dfctl(&format!(
            "lport create pg --lswitch net1 --mac {G_MAC} --fixed-ip {G_IP4} --fixed-ip {G_IP6} --aap {VIP} --chassis hv1 --ifname tapg"
        ));
        for i in 0..cloud.hvs.len() {
            cloud.start_agent(i);
        }
        for hv in &cloud.hvs {
            wait_until(&format!("forwarding on {}", hv.name), READY, || {
                metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0)
            });
        }
        // The VM boots while the agent runs, as in production: its tap appears, the agent
        // attaches the pipeline and fills the maps while the guest's kernel comes up.
        let guest = Guest::boot(
            &cloud.hvs[0],
            GuestSpec {
                name: "g".into(),
                tap: "tapg".into(),
                mac: G_MAC.into(),
                ip4: format!("{G_IP4}/24"),
                ip6: format!("{G_IP6}/64"),
                gw4: "192.0.2.1".into(),
                gw6: "2001:db8:1::1".into(),
                mtu: 1450,
            },
        );
        eprintln!(
            "[{}] guest booted in {:.1} s",
            hook.as_str(),
            guest.boot_time.as_secs_f64()
        );
        World { guest, cloud }
    }

    fn ns(&self, v: &NsVm) -> &Netns {
        let i = NS_VMS.iter().position(|x| x.name == v.name).expect("VM");
        &self.cloud.vms[i].ns
    }

    fn hv(&self, i: usize) -> &Hypervisor {
        &self.cloud.hvs[i]
    }

    /// The from-VM drops of `reason` summed over both chassis.
    fn drops(&self, reason: &str) -> f64 {
        self.cloud
            .hvs
            .iter()
            .map(|h| {
                h.counter("from_vm", "drop", reason) + h.counter("from_tunnel", "drop", reason)
            })
            .sum()
    }

    /// Every non-zero datapath counter, for failure messages.
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

    /// The guest pings `ip` (once, polled until it answers or the deadline).
    #[track_caller]
    fn guest_pings(&self, ip: &str) {
        let six = if ip.contains(':') { "-6" } else { "-4" };
        let start = Instant::now();
        while self
            .guest
            .sh_status(
                &format!("ping {six} -c 1 -W 1 {ip}"),
                Duration::from_secs(10),
            )
            .0
            != 0
        {
            assert!(
                start.elapsed() < READY,
                "the guest does not ping {ip}; counters:\n{}",
                self.counters()
            );
        }
    }
}

/// r1's addresses on the network of `ip4`/`ip6`.
fn gateways(ip4: &str, ip6: &str) -> (String, String) {
    let (n4, _) = ip4.rsplit_once('.').expect("ipv4");
    let (n6, _) = ip6.rsplit_once("::").expect("ipv6");
    (format!("{n4}.1"), format!("{n6}::1"))
}

/// Checksum errors a network stack counted: TCP's InCsumErrors (IPv4 and IPv6 share the
/// TCP MIB in /proc/net/snmp), UDP's and ICMP's, and /proc/net/snmp6's UDP and ICMPv6.
fn csum_errors(snmp: &str, snmp6: &str) -> u64 {
    let mut total = 0;
    let lines: Vec<&str> = snmp.lines().collect();
    for pair in lines.chunks(2) {
        if let [head, vals] = pair {
            for (k, v) in head.split_whitespace().zip(vals.split_whitespace()) {
                if k == "InCsumErrors" {
                    total += v.parse::<u64>().unwrap_or(0);
                }
            }
        }
    }
    for l in snmp6.lines() {
        let mut it = l.split_whitespace();
        if let (Some(k), Some(v)) = (it.next(), it.next())
            && k.ends_with("InCsumErrors")
        {
            total += v.parse::<u64>().unwrap_or(0);
        }
    }
    total
}

fn ns_csum_errors(ns: &Netns) -> u64 {
    let snmp = String::from_utf8_lossy(&ns.exec("cat /proc/net/snmp").stdout).into_owned();
    let snmp6 = String::from_utf8_lossy(&ns.exec("cat /proc/net/snmp6").stdout).into_owned();
    csum_errors(&snmp, &snmp6)
}

fn guest_csum_errors(g: &Guest) -> u64 {
    csum_errors(&g.sh("cat /proc/net/snmp"), &g.sh("cat /proc/net/snmp6"))
}

/// `bulk.py recv` in a namespace: spawned, returns once it listens.
fn bulk_receiver(ns: &Netns, bind: &str, port: u16) -> Child {
    let mut c = python_command(ns, "bulk.py")
        .args(["recv", "--bind", bind, "--port", &port.to_string()])
        .args(["--len", &BULK.to_string(), "--timeout", "30"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bulk.py recv");
    let mut line = String::new();
    let stdout = c.stdout.as_mut().expect("stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line)
        .expect("bulk.py recv");
    assert_eq!(line.trim(), "listening", "bulk.py recv did not listen");
    c
}

/// "<bytes> <md5>" from a bulk.py that has finished, or what it complained about.
fn bulk_result(c: Child) -> Result<String, String> {
    let out = c.wait_with_output().expect("bulk.py");
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(format!(
            "bulk.py failed: {text}{}",
            err.lines().last().unwrap_or("")
        ));
    }
    Ok(text.lines().last().unwrap_or("").trim().to_string())
}

/// The guest's "<bytes> <md5>" of a file.
fn guest_digest(g: &Guest, path: &str) -> String {
    let out = g.sh(&format!("wc -c < {path}; md5sum {path}"));
    let mut it = out.split_whitespace();
    format!("{} {}", it.next().unwrap_or(""), it.next().unwrap_or(""))
}

/// TCP from the guest to `peer_ip` in `ns` and back, `BULK` bytes each way, checked by
/// md5 on both ends.
fn bulk_both_ways(w: &World, ns: &Netns, peer_ip: &str, what: &str, port: u16) {
    // Guest → namespace VM: busybox nc sends the guest's random file.
    let rx = bulk_receiver(ns, peer_ip, port);
    let (st, out) = w.guest.sh_status(
        &format!("timeout 40 nc {peer_ip} {port} < /tmp/bulk"),
        Duration::from_secs(120),
    );
    let got = bulk_result(rx);
    let sent = guest_digest(&w.guest, "/tmp/bulk");
    assert_eq!(
        got,
        Ok(sent),
        "{what}: guest → {peer_ip} (nc exit {st}: {out}); checksum errors counted by the \
         peer: {}, by the guest: {}; counters:\n{}",
        ns_csum_errors(ns),
        guest_csum_errors(&w.guest),
        w.counters()
    );
    // Namespace VM → guest: busybox nc listens in the background; bulk.py connects
    // (retrying while refused: that is the readiness poll) and sends.
    w.guest.sh(&format!(
        "rm -f /tmp/rx; (timeout 40 nc -l -p {port} > /tmp/rx &)"
    ));
    let dst = w.guest_ip_for(peer_ip);
    let tx = python_command(ns, "bulk.py")
        .args(["send", "--host", &dst, "--port", &port.to_string()])
        .args(["--len", &BULK.to_string(), "--seed", &port.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn bulk.py send");
    let sent = bulk_result(tx).unwrap_or_else(|e| {
        panic!(
            "{what}: {peer_ip} → guest: {e}; checksum errors in the guest: {}; counters:\n{}",
            guest_csum_errors(&w.guest),
            w.counters()
        )
    });
    let got = wait_for(
        &format!("{what}: {BULK} bytes in the guest"),
        Duration::from_secs(60),
        || {
            let d = guest_digest(&w.guest, "/tmp/rx");
            d.starts_with(&format!("{BULK} ")).then_some(d)
        },
    );
    assert_eq!(
        got,
        sent,
        "{what}: {peer_ip} → guest; counters:\n{}",
        w.counters()
    );
}

impl World {
    /// The guest's address of the family of `peer_ip`.
    fn guest_ip_for(&self, peer_ip: &str) -> String {
        if peer_ip.contains(':') { G_IP6 } else { G_IP4 }.to_string()
    }
}

/// The port holding `VIP` in etcd (detection way), if any.
fn active_port(cloud: &Cloud) -> Option<String> {
    let out = cloud.etcdctl(&[
        "get",
        &format!("/dragonflow/activeport/net1/{VIP}"),
        "--print-value-only",
    ]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["port"].as_str().map(String::from)
}

/// ICMP echo requests the guest's stack received.
fn guest_in_echos(g: &Guest) -> u64 {
    let snmp = g.sh("cat /proc/net/snmp");
    let lines: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Icmp:")).collect();
    let (head, vals) = (lines[0], lines[1]);
    head.split_whitespace()
        .zip(vals.split_whitespace())
        .find(|(k, _)| *k == "InEchos")
        .and_then(|(_, v)| v.parse().ok())
        .expect("Icmp InEchos")
}

fn real_guest(hook: Hook, xdp_mode: &str) {
    let t0 = Instant::now();
    let w = World::new(hook, xdp_mode);
    let tag = format!("[{} {xdp_mode}]", hook.as_str());
    let hv1 = w.hv(0);

    // Reachability: local, over VXLAN, routed; IPv6 once DAD is done.
    w.guest_pings(A1.ip4);
    w.guest_pings(A2.ip4);
    w.guest_pings(C1.ip4);
    wait_until("the guest's IPv6 address leaves DAD", READY, || {
        !w.guest.sh("ip -6 addr show dev eth0").contains("tentative")
    });
    w.guest_pings(A1.ip6);
    assert!(
        ping(w.ns(&A1), G_IP4, 3),
        "{tag} a1 does not ping the guest"
    );
    assert!(
        ping(w.ns(&A2), G_IP4, 3),
        "{tag} a2 does not ping the guest"
    );
    assert!(
        ping(w.ns(&C1), G_IP4, 3),
        "{tag} c1 does not ping the guest"
    );
    // The agent made only the guest's tap (tun) an XDP redirect target; a1 and c1 sit
    // behind veth taps, which XDP hands to TC.
    assert_eq!(
        metric(
            &hv1.metrics(),
            "dragonflow_map_entries",
            &[("map", "df_devmap_v1")]
        ),
        Some(1.0),
        "{tag} df_devmap_v1 must hold the guest's tun tap only"
    );
    // Everything the guest sent at boot (DAD, MLD, router solicitations) went somewhere:
    // none of it failed a redirect.
    assert_eq!(
        hv1.counter("from_vm", "drop", "redirect_failed"),
        0.0,
        "{tag} redirect_failed since boot; counters:\n{}",
        w.counters()
    );

    // Bulk TCP: the guest's default offloads (partial checksums, TSO super-frames).
    let mtu_before = w.drops("mtu_exceeded");
    w.guest
        .sh(&format!("head -c {BULK} /dev/urandom > /tmp/bulk"));
    let t_bulk = Instant::now();
    bulk_both_ways(&w, w.ns(&A1), A1.ip4, "local IPv4", 5001);
    bulk_both_ways(&w, w.ns(&A1), A1.ip6, "local IPv6", 5002);
    bulk_both_ways(&w, w.ns(&A2), A2.ip4, "VXLAN IPv4", 5003);
    bulk_both_ways(&w, w.ns(&C1), C1.ip4, "routed IPv4", 5004);
    let bulk_secs = t_bulk.elapsed().as_secs_f64();
    eprintln!(
        "{tag} 8 transfers of {} MiB in {bulk_secs:.1} s ({:.0} Mbit/s on average, TCG guest)",
        BULK >> 20,
        8.0 * BULK as f64 * 8.0 / bulk_secs / 1e6
    );
    assert_eq!(
        guest_csum_errors(&w.guest),
        0,
        "{tag} checksum errors in the guest"
    );
    for v in NS_VMS {
        assert_eq!(
            ns_csum_errors(w.ns(v)),
            0,
            "{tag} checksum errors in {}",
            v.name
        );
    }
    assert_eq!(
        w.drops("mtu_exceeded"),
        mtu_before,
        "{tag} GSO super-frames dropped as MTU violations; counters:\n{}",
        w.counters()
    );

    // A spoofed source is dropped; the same address as a live AAP passes.
    w.guest.sh(&format!("ip addr add {EXTRA}/32 dev eth0"));
    let spoofs = hv1.counter("from_vm", "drop", "src_ip_spoof");
    let (st, _) = w.guest.sh_status(
        &format!("ping -c 1 -W 1 -I {EXTRA} {}", A1.ip4),
        Duration::from_secs(10),
    );
    assert_ne!(st, 0, "{tag} a spoofed echo was answered");
    hv1.wait_counter(
        ("from_vm", "drop", "src_ip_spoof"),
        spoofs,
        1.0,
        Duration::from_secs(5),
    )
    .unwrap_or_else(|e| panic!("{tag} {e}"));
    w.cloud.dfctl(&format!("lport update pg --add-aap {EXTRA}"));
    let start = Instant::now();
    while w
        .guest
        .sh_status(
            &format!("ping -c 1 -W 1 -I {EXTRA} {}", A1.ip4),
            Duration::from_secs(10),
        )
        .0
        != 0
    {
        assert!(
            start.elapsed() < READY,
            "{tag} the live AAP {EXTRA} is not allowed"
        );
    }

    // Shared VIP, detection way: a1 announces it first, then fails over to the guest.
    let a1 = w.ns(&A1);
    a1.exec(&format!("ip addr add {VIP}/32 dev eth0"));
    let garps = hv1.counter_event("garp_sent");
    let start = Instant::now();
    while active_port(&w.cloud).as_deref() != Some("pa1") {
        a1.exec(&format!("arping -U -c 1 -I eth0 -s {VIP} {VIP}"));
        assert!(start.elapsed() < READY, "{tag} a1 never became active");
    }
    a1.exec(&format!("ip addr del {VIP}/32 dev eth0"));
    w.guest.sh(&format!("ip addr add {VIP}/32 dev eth0"));
    let start = Instant::now();
    while active_port(&w.cloud).as_deref() != Some("pg") {
        w.guest
            .sh(&format!("arping -U -c 1 -I eth0 -s {VIP} {VIP}"));
        assert!(
            start.elapsed() < READY,
            "{tag} the guest's GARP never made it active; counters:\n{}",
            w.counters()
        );
    }
    assert!(
        hv1.counter_event("garp_sent") >= garps + 2.0,
        "{tag} GARP events: a1's and the guest's"
    );
    // A client over VXLAN reaches the VIP at the guest now.
    let a2 = w.ns(&A2);
    let echos = guest_in_echos(&w.guest);
    let start = Instant::now();
    loop {
        a2.exec(&format!("ip neigh flush {VIP}"));
        if ping(a2, VIP, 1) && guest_in_echos(&w.guest) > echos {
            break;
        }
        assert!(
            start.elapsed() < READY,
            "{tag} a2 does not reach the VIP at the guest"
        );
    }

    assert_eq!(
        hv1.counter("from_vm", "drop", "redirect_failed"),
        0.0,
        "{tag} redirect_failed; counters:\n{}",
        w.counters()
    );
    eprintln!(
        "{tag} boot {:.1} s, whole test {:.1} s",
        w.guest.boot_time.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );
}

trait Events {
    fn counter_event(&self, event: &str) -> f64;
}

impl Events for Hypervisor {
    /// `dragonflow_datapath_events_total{direction="from_vm",event=…}`.
    fn counter_event(&self, event: &str) -> f64 {
        metric_sum(
            &self.metrics(),
            "dragonflow_datapath_events_total",
            &[("direction", "from_vm"), ("event", event)],
        )
    }
}

#[test]
fn real_guest_tc() {
    real_guest(Hook::Tc, "native");
}

#[test]
fn real_guest_xdp_native() {
    real_guest(Hook::Xdp, "native");
}

#[test]
fn real_guest_xdp_skb() {
    real_guest(Hook::Xdp, "skb");
}
