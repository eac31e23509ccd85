//! End-to-end benchmark between two VMs on one hypervisor, measured side by side in one
//! run: 64-byte UDP packets per second (trafgen) and TCP throughput (iperf3, one stream)
//! through
//!   - `bridge`: a Linux bridge, no filtering;
//!   - `bridge+nftables`: the bridge with Neutron-style anti-spoofing and conntrack rules
//!     (br_netfilter + an inet table, as Neutron's hybrid iptables firewall does);
//!   - `tc stub` / `xdp stub`: no bridge, a redirect-only program on each tap sending its
//!     frames straight into the other tap (the limit of this machine for that hook);
//!   - `dragonflow tc` / `dragonflow xdp`: our agent, no bridge: the program switches
//!     tap → tap after port security.
//!
//! Each dragonflow row is compared with bridge+nftables and with its own hook's stub.
//! Prints a markdown table; `cargo xtask bench` runs it.
//!
//! VMs behind the XDP hook get GRO on and an XDP_PASS program on eth0 (native XDP redirect
//! or XDP_TX into a veth only delivers when the receiver has NAPI, and XDP_TX only when it
//! has an XDP program) and checksum offload off (an XDP redirect drops the skb's
//! partial-checksum state; DESIGN.md §4), for the stub and for our program alike.

use std::{
    os::fd::OwnedFd,
    thread,
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::xdp::DevMapHash,
    programs::{Xdp, XdpMode},
};
use dragonflow_agent::datapath::EBPF_OBJECT;
use dragonflow_common::maps::{self as names, progs};
use tests::harness::{Cloud, Hook, HvOpts, Netns, VmOpts, iperf3, metric, ping, wait_until};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Bridge,
    BridgeNft,
    Stub(Hook),
    Dragonflow(Hook),
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Bridge => "bridge (no filter)",
            Setup::BridgeNft => "bridge + nftables (Neutron-like)",
            Setup::Stub(Hook::Tc) => "tc redirect stub",
            Setup::Dragonflow(Hook::Tc) => "dragonflow, tc hook",
            Setup::Stub(Hook::Xdp) => "xdp redirect stub",
            Setup::Dragonflow(Hook::Xdp) => "dragonflow, xdp hook",
        }
    }
}

const MAC1: &str = "fa:16:3e:00:01:01";
const MAC2: &str = "fa:16:3e:00:01:02";
const IP1: &str = "192.0.2.11";
const IP2: &str = "192.0.2.12";
const TAP1: &str = "tapb1";
const TAP2: &str = "tapb2";

fn main() {
    // df-bench-e2e [SECS] [bridge|nft|tc-stub|tc|xdp-stub|xdp ...]
    let args: Vec<String> = std::env::args().skip(1).collect();
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let setups: Vec<Setup> = [
        ("bridge", Setup::Bridge),
        ("nft", Setup::BridgeNft),
        ("tc-stub", Setup::Stub(Hook::Tc)),
        ("tc", Setup::Dragonflow(Hook::Tc)),
        ("xdp-stub", Setup::Stub(Hook::Xdp)),
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
    let find = |want: Setup| rows.iter().find(|r| r.0 == want).map(|r| (r.1, r.2));
    let base = find(Setup::BridgeNft);
    let ratio =
        |x: f64, of: Option<f64>| of.map_or("–".to_string(), |b| format!("{:.2}×", x / b));
    println!("\n### End to end, VM → VM on one hypervisor ({secs} s per figure)\n");
    println!(
        "| path | 64-byte UDP | vs bridge+nft | vs own stub | TCP, 1 stream | vs bridge+nft | vs own stub |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(s, pps, gbps) in &rows {
        let stub = match s {
            Setup::Dragonflow(h) => find(Setup::Stub(h)),
            _ => None,
        };
        println!(
            "| {} | {:.3} Mpps | {} | {} | {:.2} Gbit/s | {} | {} |",
            s.name(),
            pps / 1e6,
            ratio(pps, base.map(|b| b.0)),
            ratio(pps, stub.map(|b| b.0)),
            gbps,
            ratio(gbps, base.map(|b| b.1)),
            ratio(gbps, stub.map(|b| b.1)),
        );
    }
}

fn measure(setup: Setup, secs: u64) -> (f64, f64) {
    let mut cloud = Cloud::new();
    let (hook, bridge) = match setup {
        Setup::Bridge | Setup::BridgeNft => (Hook::Tc, true),
        Setup::Stub(h) | Setup::Dragonflow(h) => (h, false),
    };
    let hv = cloud.add_hypervisor_opts("hv1", hook, HvOpts { bridge });
    if let Setup::Dragonflow(_) = setup {
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1500");
        cloud.dfctl("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24");
        cloud.dfctl(&format!(
            "lport create p1 --lswitch net1 --mac {MAC1} --fixed-ip {IP1} --chassis hv1 --ifname {TAP1}"
        ));
        cloud.dfctl(&format!(
            "lport create p2 --lswitch net1 --mac {MAC2} --fixed-ip {IP2} --chassis hv1 --ifname {TAP2}"
        ));
    }
    let opts = VmOpts {
        gro: hook == Hook::Xdp && !bridge,
        tx_csum_off: hook == Hook::Xdp && !bridge,
        xdp_pass: hook == Hook::Xdp && !bridge,
        ..VmOpts::default()
    };
    cloud.add_vm_opts(hv, "vm1", TAP1, MAC1, &[&format!("{IP1}/24")], &opts);
    cloud.add_vm_opts(hv, "vm2", TAP2, MAC2, &[&format!("{IP2}/24")], &opts);
    let mut _stub = None;
    match setup {
        Setup::Dragonflow(_) => {
            cloud.hvs[hv].extra_agent_args = vec!["--forwarding".into()];
            cloud.start_agent(hv);
            let h = &cloud.hvs[hv];
            wait_until("forwarding enabled", Duration::from_secs(30), || {
                metric(&h.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0)
            });
        }
        Setup::BridgeNft => nftables_port_security(&cloud.hvs[hv].ns),
        Setup::Stub(h) => _stub = Some(Stub::attach(&cloud, hv, h)),
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

/// A redirect-only program on both taps, crossing them over: what tap1's VM sends goes
/// out of tap2 to the other VM, and back. Detached on drop.
enum Stub {
    /// `df_stub_xdp_redirect` from our object: a devmap redirect keyed by the ingress
    /// ifindex, the same helper our XDP hook delivers with; the devmap maps each tap to
    /// the other.
    Xdp(#[allow(dead_code)] Ebpf),
    /// `bpf_redirect(<other tap>, 0)` as a three-instruction tcx ingress program per tap.
    /// Our object's `df_stub_tc_redirect` redirects to the ingress ifindex itself (a
    /// hairpin, right for BPF_PROG_TEST_RUN), which cannot cross two taps over, so the
    /// target is an immediate here.
    Tc(#[allow(dead_code)] Vec<OwnedFd>),
}

impl Stub {
    fn attach(cloud: &Cloud, hv: usize, hook: Hook) -> Stub {
        let h = &cloud.hvs[hv];
        let (if1, if2) = (h.ns.ifindex(TAP1), h.ns.ifindex(TAP2));
        let pins = h.bpffs.path.clone();
        match hook {
            Hook::Xdp => Stub::Xdp(h.ns.within(move || {
                let mut ebpf = EbpfLoader::new()
                    .default_map_pin_directory(&pins)
                    .override_global("AYA_LOG_LEVEL", &0u8, false)
                    .load(EBPF_OBJECT)
                    .unwrap_or_else(|e| panic!("load eBPF object: {e:#}"));
                {
                    let p: &mut Xdp = ebpf
                        .program_mut(progs::STUB_XDP_REDIRECT)
                        .unwrap_or_else(|| panic!("no {} in the object", progs::STUB_XDP_REDIRECT))
                        .try_into()
                        .expect("xdp program");
                    p.load()
                        .unwrap_or_else(|e| panic!("load {}: {e:#}", progs::STUB_XDP_REDIRECT));
                    for tap in [TAP1, TAP2] {
                        p.attach(tap, XdpMode::Driver)
                            .unwrap_or_else(|e| panic!("attach xdp stub to {tap}: {e:#}"));
                    }
                }
                let mut dm = DevMapHash::try_from(ebpf.map_mut(names::DEVMAP).expect("devmap"))
                    .expect("devmap hash");
                dm.insert(if1, if2, None, 0).expect("devmap tap1 → tap2");
                dm.insert(if2, if1, None, 0).expect("devmap tap2 → tap1");
                ebpf
            })),
            Hook::Tc => Stub::Tc(h.ns.within(move || {
                vec![tc_redirect_stub(if1, if2), tc_redirect_stub(if2, if1)]
                    .into_iter()
                    .flatten()
                    .collect()
            })),
        }
    }
}

/// Loads `r1 = target; r2 = 0; call bpf_redirect; exit` and links it at tcx ingress of
/// `ifindex` (in the calling thread's namespace); the program and link fds.
fn tc_redirect_stub(ifindex: u32, target: u32) -> [OwnedFd; 2] {
    use tests::rawbpf::{self, insn};
    const BPF_FUNC_REDIRECT: i32 = 23;
    let prog = [
        insn(0xb7, 1, 0, 0, target as i32), // mov64 r1, target
        insn(0xb7, 2, 0, 0, 0),             // mov64 r2, 0
        insn(0x85, 0, 0, 0, BPF_FUNC_REDIRECT),
        insn(0x95, 0, 0, 0, 0), // exit (r0 = TC_ACT_REDIRECT from the helper)
    ];
    let p = rawbpf::load(
        rawbpf::PROG_TYPE_SCHED_CLS,
        rawbpf::ATTACH_TCX_INGRESS,
        &prog,
        "dfb_tc_stub",
    );
    let l = rawbpf::link(&p, ifindex, rawbpf::ATTACH_TCX_INGRESS);
    [p, l]
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
/// Raises the host's default socket send buffer while it lives (restored on drop, also
/// on panic). trafgen cannot raise its own from inside a namespace, and with the default
/// (~208 KiB) its TX ring flush fails with EAGAIN — fatal to trafgen — as soon as frames
/// queue in a veth's XDP ring: the XDP setups then lost their senders mid-run.
struct WmemDefault {
    old: String,
}

impl WmemDefault {
    const PATH: &'static str = "/proc/sys/net/core/wmem_default";

    fn raise(bytes: u32) -> Self {
        let old = std::fs::read_to_string(Self::PATH).expect("read wmem_default");
        std::fs::write(Self::PATH, bytes.to_string()).expect("write wmem_default");
        WmemDefault { old }
    }
}

impl Drop for WmemDefault {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.old.trim());
    }
}

fn sender_pids(pgid: u32) -> usize {
    let out = std::process::Command::new("pgrep")
        .args(["-g", &pgid.to_string()])
        .output()
        .expect("pgrep");
    String::from_utf8_lossy(&out.stdout).lines().count()
}

fn eth0_stat(ns: &Netns, stat: &str) -> u64 {
    let out = ns.exec(&format!("cat /sys/class/net/eth0/statistics/{stat}"));
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect(stat)
}

/// 64-byte frames (60 + FCS) from vm1 to vm2 with trafgen, one sender process per CPU
/// (the same for every setup); the rate is what vm2's eth0 receives during the middle of
/// the run (warm-up excluded). Panics if a sender died during the window: a figure from
/// fewer senders would not compare with the others.
fn udp_pps(vm1: &Netns, vm2: &Netns, secs: u64) -> f64 {
    use std::os::unix::process::CommandExt as _;
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
    let cpus = thread::available_parallelism().map_or(2, |n| n.get());
    let _wmem = WmemDefault::raise(4 << 20);
    let mut trafgen = vm1
        .command("trafgen")
        .args(["--dev", "eth0", "--conf"])
        .arg(&path)
        .args(["--cpus", &cpus.to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .spawn()
        .expect("spawn trafgen (apt-get install netsniff-ng)");
    let pgid = trafgen.id();
    thread::sleep(Duration::from_secs(1)); // warm-up, not readiness: excluded from the figure
    let alive0 = sender_pids(pgid);
    let (t0, r0, d0) = (
        Instant::now(),
        rx_packets(vm2),
        eth0_stat(vm1, "tx_dropped"),
    );
    thread::sleep(Duration::from_secs(secs));
    let (t1, r1, d1) = (
        Instant::now(),
        rx_packets(vm2),
        eth0_stat(vm1, "tx_dropped"),
    );
    let alive1 = sender_pids(pgid);
    // trafgen forks its senders: kill the whole group, not only the parent.
    // SAFETY: signalling a process group we created.
    unsafe { libc::kill(-(pgid as i32), libc::SIGKILL) };
    let _ = trafgen.wait();
    let _ = std::fs::remove_file(path);
    assert!(
        alive1 >= alive0 && alive0 > 0,
        "trafgen senders died during the measurement ({alive0} -> {alive1} processes)"
    );
    let secs = (t1 - t0).as_secs_f64();
    eprintln!(
        "   offered but dropped at the sender's veth: {:.3} Mpps",
        (d1 - d0) as f64 / secs / 1e6
    );
    (r1 - r0) as f64 / secs
}

fn tcp_gbps(vm1: &Netns, vm2: &Netns, secs: u64) -> f64 {
    iperf3(vm1, vm2, IP2, secs as u32).unwrap_or_else(|e| panic!("iperf3: {e}")) / 1e9
}
