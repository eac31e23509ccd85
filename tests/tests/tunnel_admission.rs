//! Tunnel admission end to end (issue 10, item 1, "VXLAN from anyone"): real agents and
//! etcd, two hypervisors with forwarding in eBPF, and a ROGUE host on the underlay bridge
//! that is no chassis. Every test runs for both hooks (`xdp::<case>`, `tc::<case>`).
//!
//! ```text
//!   net1 VNI 100  192.0.2.0/24   r1 192.0.2.1 (fa:16:3e:00:01:01)
//!   hv1 198.18.0.10: a1 (192.0.2.10)     hv2 198.18.0.11: a2 (192.0.2.20)
//!   rogue 198.18.0.66 on br-ul: sends VXLAN (UDP 4789) to hv1 with scapy-built frames
//! ```
//!
//! What a1 received is read from a tcpdump in its namespace; "did not receive" is decided
//! once hv1 counted the frame as dropped (the drop and a delivery are the same program
//! run) and a later legitimate frame from a2 arrived. No fixed sleeps.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::{Duration, Instant};

use tests::{
    fixtures::addresses::unique,
    framework::{
        hook::Hook,
        http::metric,
        netns::Netns,
        process::{cmd, run, wait_until},
        python::python_command,
    },
    harness::{Capture, Cloud, HvOpts, VmOpts, agent_has_flag, ping},
};

const READY: Duration = Duration::from_secs(30);
const FENCE: Duration = Duration::from_secs(5);
const COUNT: Duration = Duration::from_secs(5);

const VNI: u32 = 100;
const GW4: &str = "192.0.2.1";
const RMAC: &str = "fa:16:3e:00:01:01";
const A1_MAC: &str = "fa:16:3e:01:00:10";
const A1_IP: &str = "192.0.2.10";
const A2_MAC: &str = "fa:16:3e:01:00:20";
const A2_IP: &str = "192.0.2.20";
const ROGUE_IP: &str = "198.18.0.66";
const ROGUE_MAC: &str = "fa:16:3e:66:66:66";

struct Setup {
    cloud: Cloud,
    /// The rogue host's namespace (its veth into the underlay goes with it).
    rogue: Netns,
    lease: u64,
}

impl Setup {
    fn new(hook: Hook) -> Setup {
        let lease: u64 = if agent_has_flag("--lease-ttl") { 3 } else { 10 };
        let mut cloud = Cloud::new();
        for name in ["hv1", "hv2"] {
            let hv = cloud.add_hypervisor_opts(name, hook, HvOpts { bridge: false });
            let mut args = vec!["--forwarding".to_string()];
            if lease == 3 {
                args.extend(["--lease-ttl".to_string(), "3".to_string()]);
            }
            cloud.hvs[hv].extra_agent_args = args;
        }
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1450");
        cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
        cloud.dfctl("lrouter create r1 --name r1");
        cloud.dfctl(&format!(
            "lrouter add-interface r1 --lswitch net1 --mac {RMAC} --ip {GW4}/24"
        ));
        for (hv, name, mac, ip) in [(0, "a1", A1_MAC, A1_IP), (1, "a2", A2_MAC, A2_IP)] {
            cloud.dfctl(&format!(
                "lport create p{name} --lswitch net1 --mac {mac} --fixed-ip {ip} --chassis hv{} --ifname tap{name}",
                hv + 1
            ));
            let opts = VmOpts::with_gateways(&[GW4]);
            cloud.add_vm_opts(
                hv,
                name,
                &format!("tap{name}"),
                mac,
                &[&format!("{ip}/24")],
                &opts,
            );
        }
        for i in 0..2 {
            cloud.start_agent(i);
        }
        for hv in &cloud.hvs {
            wait_until(
                &format!("dragonflow_forwarding_enabled 1 on {}", hv.name),
                READY,
                || metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0),
            );
        }
        let rogue = rogue_host(&cloud);
        Setup {
            cloud,
            rogue,
            lease,
        }
    }

    fn a1(&self) -> &Netns {
        &self.cloud.vms[0].ns
    }

    fn a2(&self) -> &Netns {
        &self.cloud.vms[1].ns
    }

    fn wait_ping(&self, from: &Netns, ip: &str) {
        let start = Instant::now();
        while !ping(from, ip, 1) {
            assert!(
                start.elapsed() < READY,
                "{} does not ping {ip} after {READY:?}",
                from.name
            );
        }
    }

    /// The rogue sends one VXLAN datagram of `kind` to hv1 (see vxlan_inject.py).
    fn inject(&self, kind: &str, src_mac: &str, src_ip: &str, dst_ip: &str, payload: &str) {
        let hv1 = &self.cloud.hvs[0].tunnel_ip;
        let mut c = python_command(&self.rogue, "vxlan_inject.py");
        c.args(["--dst", hv1, "--vni", &VNI.to_string(), "--kind", kind])
            .args(["--src-mac", src_mac, "--dst-mac", A1_MAC])
            .args(["--src-ip", src_ip, "--dst-ip", dst_ip, "--payload", payload]);
        run(&mut c);
    }

    /// a2 sends a UDP frame with `payload` to a1 (through hv2's datapath and the tunnel).
    fn a2_sends(&self, payload: &str) {
        let mut c = python_command(self.a2(), "fwdsend.py");
        c.args(["--dst-mac", A1_MAC, "--dst-ip", A1_IP, "--src-ip", A2_IP])
            .args(["--payload", payload]);
        run(&mut c);
    }

    fn unknown_peer_drops(&self) -> f64 {
        self.cloud.hvs[0].counter("from_tunnel", "drop", "tunnel_unknown_peer")
    }
}

/// A host on the underlay bridge with an address in 198.18.0.0/15 that is no chassis.
fn rogue_host(cloud: &Cloud) -> Netns {
    let ns = Netns::new(&format!("{}-rogue", cloud.prefix));
    let ul_if: String = format!("ulr{}", &cloud.prefix[3..])
        .chars()
        .take(15)
        .collect();
    cmd(&format!(
        "ip link add {ul_if} type veth peer name eth-ul netns {}",
        ns.name
    ));
    cmd(&format!("ip link set {ul_if} netns {}", cloud.ul.name));
    cloud.ul.exec(&format!("ip link set {ul_if} master br-ul"));
    cloud.ul.exec(&format!("ip link set {ul_if} up"));
    ns.exec(&format!("ip link set eth-ul address {ROGUE_MAC}"));
    ns.exec(&format!("ip addr add {ROGUE_IP}/24 dev eth-ul"));
    ns.exec("ip link set eth-ul up");
    let hv1 = cloud.hvs[0].tunnel_ip.clone();
    wait_until("the rogue reaches hv1 on the underlay", READY, || {
        ping(&ns, &hv1, 1)
    });
    ns
}

/// a1's neighbour entry for `ip`, as `ip neigh` prints it.
fn neigh(vm: &Netns, ip: &str) -> String {
    String::from_utf8_lossy(&vm.exec(&format!("ip -4 neigh show {ip}")).stdout).into_owned()
}

/// The rogue host injects, as VNI 100 to hv1: gratuitous ARPs for the gateway and for
/// a2's IP with its own MAC, a DHCP server offer, a tagged frame, and a TCP SYN from a2's
/// MAC and IP (a peer a1's default group allows). None reaches a1, a1's neighbour entries
/// keep the true MACs, hv1 counts each as `tunnel_unknown_peer`; a2 (a real VM on the
/// other chassis) still reaches a1. Then hv2's agent dies: once its lease has expired,
/// hv1 stops admitting hv2's frames (its datapath still sends them).
fn rogue_underlay_host(hook: Hook) {
    let t = Setup::new(hook);
    t.wait_ping(t.a1(), A2_IP);
    // a1 knows its gateway and a2 by their real MACs.
    t.wait_ping(t.a1(), GW4);
    assert!(neigh(t.a1(), GW4).contains(RMAC), "{}", neigh(t.a1(), GW4));
    assert!(
        neigh(t.a1(), A2_IP).contains(A2_MAC),
        "{}",
        neigh(t.a1(), A2_IP)
    );

    let cap = Capture::start(t.a1(), "eth0", "in", "");
    let before = t.unknown_peer_drops();
    let attacks: Vec<(&str, &str, &str, String)> = vec![
        ("garp", ROGUE_MAC, GW4, unique("garp-gw")),
        ("garp", ROGUE_MAC, A2_IP, unique("garp-a2")),
        ("dhcp", ROGUE_MAC, GW4, unique("dhcp")),
        ("tagged", A2_MAC, A2_IP, unique("tagged")),
        ("tcp_syn", A2_MAC, A2_IP, unique("syn")),
    ];
    for (kind, mac, ip, mark) in &attacks {
        t.inject(kind, mac, ip, A1_IP, mark);
    }
    let n = attacks.len() as f64;
    t.cloud.hvs[0]
        .wait_counter(
            ("from_tunnel", "drop", "tunnel_unknown_peer"),
            before,
            n,
            COUNT,
        )
        .unwrap_or_else(|e| panic!("{e}\nhv1 metrics:\n{}", t.cloud.hvs[0].metrics()));
    // Fence: a2's frame, sent after them, arrives.
    let fence = unique("fence");
    t.a2_sends(&fence);
    assert!(
        cap.wait_count(fence.as_bytes(), 1, FENCE),
        "a2 → a1 (legitimate, across the tunnel) lost:\n{}",
        cap.summary()
    );
    for (kind, _, ip, mark) in &attacks {
        assert_eq!(
            cap.count(mark.as_bytes()),
            0,
            "the rogue's {kind} ({ip}) reached a1:\n{}",
            cap.summary()
        );
    }
    assert!(
        neigh(t.a1(), GW4).contains(RMAC) && !neigh(t.a1(), GW4).contains(ROGUE_MAC),
        "a1's gateway entry: {}",
        neigh(t.a1(), GW4)
    );
    assert!(
        !neigh(t.a1(), A2_IP).contains(ROGUE_MAC),
        "a1's entry for a2: {}",
        neigh(t.a1(), A2_IP)
    );
    assert!(ping(t.a1(), A2_IP, 3), "a1 → a2 after the attack");

    // hv2's chassis record goes with its lease (agent killed; its datapath keeps
    // forwarding with the maps it had): hv1 refuses what hv2 still sends.
    let mut t = t;
    t.cloud.hvs[1].kill_agent();
    let t0 = Instant::now();
    let deadline = Duration::from_secs(t.lease + 15);
    let refused = loop {
        let before = t.unknown_peer_drops();
        let p = unique("after-lease");
        t.a2_sends(&p);
        let counted = t.cloud.hvs[0]
            .wait_counter(
                ("from_tunnel", "drop", "tunnel_unknown_peer"),
                before,
                1.0,
                Duration::from_secs(1),
            )
            .is_ok();
        if counted && cap.count(p.as_bytes()) == 0 {
            break Some((t0.elapsed(), p));
        }
        if t0.elapsed() > deadline {
            break None;
        }
    };
    let (after, p) = refused.unwrap_or_else(|| {
        panic!(
            "hv1 still admits hv2's frames {deadline:?} after hv2's agent died (lease {} s); \
             chassis list:\n{}",
            t.lease,
            t.cloud.dfctl("chassis list")
        )
    });
    eprintln!(
        "hv1 refused hv2's frames {after:?} after hv2's agent died (lease {} s)",
        t.lease
    );
    assert!(
        after >= Duration::from_secs(t.lease.saturating_sub(1)),
        "refused after {after:?}, before hv2's lease ({} s) could expire",
        t.lease
    );
    // Still refused a moment later (not a transient): the payload never arrives.
    let again = unique("after-lease-again");
    let before = t.unknown_peer_drops();
    t.a2_sends(&again);
    t.cloud.hvs[0]
        .wait_counter(
            ("from_tunnel", "drop", "tunnel_unknown_peer"),
            before,
            1.0,
            COUNT,
        )
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        cap.count(again.as_bytes()) + cap.count(p.as_bytes()),
        0,
        "{}",
        cap.summary()
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

for_both_hooks!(rogue_underlay_host);
