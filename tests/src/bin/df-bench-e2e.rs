//! End-to-end benchmark between two VMs on one hypervisor, measured side by side in one
//! run: 64-byte UDP packets per second (trafgen) and TCP throughput (iperf3, one stream)
//! through
//!   - `bridge`: a Linux bridge, no filtering (the machine's ceiling for this topology);
//!   - `bridge+nftables`: the bridge with Neutron-style anti-spoofing and conntrack rules
//!     (br_netfilter + an inet table, as Neutron's hybrid iptables firewall does);
//!   - `dragonflow tc` / `dragonflow xdp`: our agent with the pipeline on each hook
//!     (allowed frames handed to the same bridge in this first stage).
//!
//! Prints a markdown table; `cargo xtask bench` runs it.

use std::{
    thread,
    time::{Duration, Instant},
};

use tests::harness::{Cloud, Hook, Netns, ping, wait_until};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Bridge,
    BridgeNft,
    Dragonflow(Hook),
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Bridge => "bridge (no filter)",
            Setup::BridgeNft => "bridge + nftables (Neutron-like)",
            Setup::Dragonflow(Hook::Tc) => "dragonflow, tc hook",
            Setup::Dragonflow(Hook::Xdp) => "dragonflow, xdp hook",
        }
    }
}

const MAC1: &str = "fa:16:3e:00:01:01";
const MAC2: &str = "fa:16:3e:00:01:02";
const IP1: &str = "192.0.2.11";
const IP2: &str = "192.0.2.12";

fn main() {
    // df-bench-e2e [SECS] [bridge|nft|tc|xdp ...]
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let setups: Vec<Setup> = [
        ("bridge", Setup::Bridge),
        ("nft", Setup::BridgeNft),
        ("tc", Setup::Dragonflow(Hook::Tc)),
        ("xdp", Setup::Dragonflow(Hook::Xdp)),
    ]
    .into_iter()
    .filter(|(n, _)| only.is_empty() || only.contains(n))
    .map(|(_, s)| s)
    .collect();
    let mut rows = Vec::new();
    for s in setups {
        eprintln!("== {} ==", s.name());
        let (pps, gbps) = measure(s, secs);
        eprintln!("   {:.3} Mpps, {:.2} Gbit/s", pps / 1e6, gbps);
        rows.push((s, pps, gbps));
    }
    let (base_pps, base_gbps) = rows
        .iter()
        .find(|r| r.0 == Setup::BridgeNft)
        .or(rows.first())
        .map(|r| (r.1, r.2))
        .expect("at least one setup measured");
    println!("\n### End to end, VM → VM on one hypervisor ({secs} s per figure)\n");
    println!("| path | 64-byte UDP | vs bridge+nft | TCP, 1 stream | vs bridge+nft |");
    println!("|---|---|---|---|---|");
    for (s, pps, gbps) in rows {
        println!(
            "| {} | {:.3} Mpps | {:.2}× | {:.2} Gbit/s | {:.2}× |",
            s.name(),
            pps / 1e6,
            pps / base_pps,
            gbps,
            gbps / base_gbps
        );
    }
}

fn measure(setup: Setup, secs: u64) -> (f64, f64) {
    let mut cloud = Cloud::new();
    let hook = match setup {
        Setup::Dragonflow(h) => h,
        _ => Hook::Tc,
    };
    let hv = cloud.add_hypervisor("hv1", hook);
    if let Setup::Dragonflow(_) = setup {
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1500");
        cloud.dfctl("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24");
        cloud.dfctl(&format!(
            "lport create p1 --lswitch net1 --mac {MAC1} --fixed-ip {IP1} --chassis hv1 --ifname tapb1"
        ));
        cloud.dfctl(&format!(
            "lport create p2 --lswitch net1 --mac {MAC2} --fixed-ip {IP2} --chassis hv1 --ifname tapb2"
        ));
    }
    cloud.add_vm(hv, "vm1", "tapb1", MAC1, &[&format!("{IP1}/24")]);
    cloud.add_vm(hv, "vm2", "tapb2", MAC2, &[&format!("{IP2}/24")]);
    match setup {
        Setup::Dragonflow(_) => cloud.start_agent(hv),
        Setup::BridgeNft => nftables_port_security(&cloud.hvs[hv].ns),
        Setup::Bridge => {}
    }
    let (vm1, vm2) = (&cloud.vms[0].ns, &cloud.vms[1].ns);
    wait_until("vm1 reaches vm2", Duration::from_secs(15), || {
        ping(vm1, IP2, 1)
    });
    let pps = udp_pps(vm1, vm2, secs);
    let gbps = tcp_gbps(vm1, vm2, secs);
    (pps, gbps)
}

/// Anti-spoofing per port in a bridge table and a stateful forward filter in an inet
/// table seen through br_netfilter: the shape of Neutron's iptables hybrid firewall.
fn nftables_port_security(hv: &Netns) {
    hv.exec("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    let rules = format!(
        "table bridge dfps {{\n\
         \tchain portsec {{\n\
         \t\ttype filter hook forward priority 0; policy accept;\n\
         \t\tiifname \"tapb1\" ether saddr != {MAC1} drop\n\
         \t\tiifname \"tapb1\" ip saddr != {IP1} ether type ip drop\n\
         \t\tiifname \"tapb2\" ether saddr != {MAC2} drop\n\
         \t\tiifname \"tapb2\" ip saddr != {IP2} ether type ip drop\n\
         \t}}\n\
         }}\n\
         table inet dfsg {{\n\
         \tchain sg {{\n\
         \t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tip saddr {{ {IP1}, {IP2} }} accept\n\
         \t}}\n\
         }}\n"
    );
    let path = std::env::temp_dir().join(format!("{}-nft.conf", hv.name));
    std::fs::write(&path, rules).expect("write nft rules");
    hv.exec(&format!("nft -f {}", path.display()));
    let _ = std::fs::remove_file(path);
}

fn rx_packets(ns: &Netns) -> u64 {
    let out = ns.exec("cat /sys/class/net/eth0/statistics/rx_packets");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("rx_packets")
}

/// 64-byte frames (60 + FCS) from vm1 to vm2 with trafgen; the rate is what vm2's eth0
/// receives during the middle of the run (warm-up and tail excluded).
fn udp_pps(vm1: &Netns, vm2: &Netns, secs: u64) -> f64 {
    let mac2 = MAC2;
    let conf = format!(
        "{{ eth(da={mac2}, sa={MAC1}), ipv4(saddr={IP1}, daddr={IP2}, ttl=64), \
         udp(sport=4000, dport=9), fill(0x00, 18) }}\n"
    );
    let path = std::env::temp_dir().join(format!("{}-trafgen.cfg", vm1.name));
    std::fs::write(&path, conf).expect("trafgen conf");
    // vm2 answers nothing (no ICMP unreachable storm back through the datapath).
    vm2.exec("sysctl -qw net.ipv4.icmp_ratelimit=0");
    vm2.exec("sysctl -qw net.ipv4.icmp_msgs_per_sec=0");
    let mut trafgen = vm1
        .command("trafgen")
        .args(["--dev", "eth0", "--conf"])
        .arg(&path)
        .args(["--cpu", "0", "-q"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("spawn trafgen (apt-get install netsniff-ng)");
    thread::sleep(Duration::from_secs(1)); // warm-up, not readiness: excluded from the figure
    let (t0, r0) = (Instant::now(), rx_packets(vm2));
    thread::sleep(Duration::from_secs(secs));
    let (t1, r1) = (Instant::now(), rx_packets(vm2));
    let _ = trafgen.kill();
    let _ = trafgen.wait();
    let _ = std::fs::remove_file(path);
    (r1 - r0) as f64 / (t1 - t0).as_secs_f64()
}

fn tcp_gbps(vm1: &Netns, vm2: &Netns, secs: u64) -> f64 {
    let mut server = vm2
        .command("iperf3")
        .args(["-s", "-1", "-B", IP2])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn iperf3");
    let mut out = None;
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(10) {
        let o = vm1.try_exec(&format!("iperf3 -c {IP2} -t {secs} -J"));
        if o.status.success() {
            out = Some(o);
            break;
        }
        thread::sleep(Duration::from_millis(100)); // server not listening yet
    }
    let _ = server.kill();
    let _ = server.wait();
    let out = out.expect("iperf3 client never connected");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("iperf3 JSON");
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .unwrap_or_else(|| panic!("no bits_per_second in iperf3 output: {v}"))
        / 1e9
}
