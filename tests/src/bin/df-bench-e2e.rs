//! End-to-end benchmark between two VMs on one hypervisor, measured side by side in one
//! run: 64-byte UDP packets per second (trafgen) and TCP throughput (iperf3, one stream)
//! through
//!   - `bridge`: a Linux bridge, no filtering;
//!   - `bridge+nftables`: the bridge with Neutron-style anti-spoofing and conntrack rules
//!     (br_netfilter + an inet table, as Neutron's hybrid iptables firewall does);
//!   - `tc stub` / `xdp stub`: no bridge, a redirect-only program on each tap sending its
//!     frames straight into the other tap (the limit of this machine for that hook);
//!   - `dragonflow tc` / `dragonflow xdp`: our agent, no bridge: the program switches
//!     tap → tap after port security (security groups off: `--security-groups=false`);
//!   - with security groups: `bridge+nftables+SG` adds Neutron's security-group rules in
//!     nftables (conntrack `established,related accept`, per-port egress and ingress
//!     chains, the remote group as a set) and `dragonflow … + SG` is our agent with its
//!     default, security groups on; both enforce the same rules: the `default` group
//!     (egress anything; ingress from members of `default`) plus ingress TCP 5201.
//!
//! Each dragonflow row is compared with bridge+nftables and with its own hook's stub;
//! each security-group row with bridge+nftables+SG and with the same path without
//! security groups. Every setup is measured in each of `--rounds` (default 3) interleaved
//! rounds and each figure is the median (the machine may be shared: a burst of load then
//! skews one round of every setup, not every round of one). Prints two markdown tables
//! with the load average around the run; `cargo xtask bench` runs it.
//!
//! VMs behind the XDP hook get GRO on and an XDP_PASS program on eth0 (native XDP redirect
//! or XDP_TX into a veth only delivers when the receiver has NAPI, and XDP_TX only when it
//! has an XDP program) and checksum offload off (an XDP redirect drops the skb's
//! partial-checksum state; README: "XDP or TC"), for the stub and for our program alike.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

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
use tests::{
    framework::{hook::Hook, http::metric, netns::Netns, process::wait_until},
    harness::{Cloud, HvOpts, VmOpts, agent_has_flag, iperf3, ping},
};

/// `sg`: security groups enforced (nftables rules or our agent's default).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    Bridge,
    BridgeNft { sg: bool },
    Stub(Hook),
    Dragonflow { hook: Hook, sg: bool },
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Bridge => "bridge (no filter)",
            Setup::BridgeNft { sg: false } => "bridge + nftables (Neutron-like)",
            Setup::BridgeNft { sg: true } => "bridge + nftables + SG (Neutron-like)",
            Setup::Stub(Hook::Tc) => "tc redirect stub",
            Setup::Dragonflow {
                hook: Hook::Tc,
                sg: false,
            } => "dragonflow, tc hook",
            Setup::Dragonflow {
                hook: Hook::Tc,
                sg: true,
            } => "dragonflow, tc hook + SG",
            Setup::Stub(Hook::Xdp) => "xdp redirect stub",
            Setup::Dragonflow {
                hook: Hook::Xdp,
                sg: false,
            } => "dragonflow, xdp hook",
            Setup::Dragonflow {
                hook: Hook::Xdp,
                sg: true,
            } => "dragonflow, xdp hook + SG",
        }
    }

    fn sg(self) -> bool {
        matches!(
            self,
            Setup::BridgeNft { sg: true } | Setup::Dragonflow { sg: true, .. }
        )
    }

    /// The same path without security groups.
    fn without_sg(self) -> Setup {
        match self {
            Setup::BridgeNft { .. } => Setup::BridgeNft { sg: false },
            Setup::Dragonflow { hook, .. } => Setup::Dragonflow { hook, sg: false },
            s => s,
        }
    }
}

const MAC1: &str = "fa:16:3e:00:01:01";
const MAC2: &str = "fa:16:3e:00:01:02";
const IP1: &str = "192.0.2.11";
const IP2: &str = "192.0.2.12";
const TAP1: &str = "tapb1";
const TAP2: &str = "tapb2";
/// iperf3's port: the one TCP port rule of the security-group setups.
const IPERF_PORT: u16 = 5201;

fn main() {
    // df-bench-e2e [SECS] [--rounds N] [bridge|nft|nft-sg|tc-stub|tc|tc-sg|xdp-stub|xdp|xdp-sg ...]
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let rounds: usize = match args.iter().position(|a| a == "--rounds") {
        Some(i) => {
            let n = args.get(i + 1).and_then(|s| s.parse().ok());
            args.drain(i..(i + 2).min(args.len()));
            n.filter(|n| *n > 0).unwrap_or_else(|| {
                eprintln!("--rounds takes a positive number");
                std::process::exit(2)
            })
        }
        None => 3,
    };
    let secs: u64 = args.first().and_then(|s| s.parse().ok()).unwrap_or(5);
    let only: Vec<&str> = args.iter().skip(1).map(String::as_str).collect();
    let df = |hook, sg| Setup::Dragonflow { hook, sg };
    let setups: Vec<Setup> = [
        ("bridge", Setup::Bridge),
        ("nft", Setup::BridgeNft { sg: false }),
        ("nft-sg", Setup::BridgeNft { sg: true }),
        ("tc-stub", Setup::Stub(Hook::Tc)),
        ("tc", df(Hook::Tc, false)),
        ("tc-sg", df(Hook::Tc, true)),
        ("xdp-stub", Setup::Stub(Hook::Xdp)),
        ("xdp", df(Hook::Xdp, false)),
        ("xdp-sg", df(Hook::Xdp, true)),
    ]
    .into_iter()
    .filter(|(n, _)| only.is_empty() || only.contains(n))
    .map(|(_, s)| s)
    .collect();
    // Rounds interleave the setups, so a burst of load from elsewhere on the machine hits
    // one round of every setup rather than every round of one; each figure is the median.
    let load0 = loadavg();
    let mut samples: Vec<(Vec<f64>, Vec<f64>)> = vec![(Vec::new(), Vec::new()); setups.len()];
    for round in 1..=rounds {
        for (s, (pps_v, gbps_v)) in setups.iter().zip(samples.iter_mut()) {
            eprintln!("== {} (round {round}/{rounds}) ==", s.name());
            let (pps, gbps) = measure(*s, secs);
            eprintln!("   {:.3} Mpps, {:.2} Gbit/s", pps / 1e6, gbps);
            pps_v.push(pps);
            gbps_v.push(gbps);
        }
    }
    let load1 = loadavg();
    let rows: Vec<(Setup, f64, f64)> = setups
        .iter()
        .zip(&samples)
        .map(|(s, (p, g))| {
            eprintln!(
                "{}: UDP {} Mpps, TCP {} Gbit/s",
                s.name(),
                spread(p, 1e6),
                spread(g, 1.0)
            );
            (*s, median(p), median(g))
        })
        .collect();
    println!(
        "\nEach figure: median of {rounds} interleaved round(s) of {secs} s. Load average (1, 5, 15 min) before: {load0}; after: {load1}."
    );
    let find = |want: Setup| rows.iter().find(|r| r.0 == want).map(|r| (r.1, r.2));
    let ratio =
        |x: f64, of: Option<f64>| of.map_or("–".to_string(), |b| format!("{:.2}×", x / b));

    let base = find(Setup::BridgeNft { sg: false });
    println!("\n### End to end, VM → VM on one hypervisor\n");
    println!(
        "| path | 64-byte UDP | vs bridge+nft | vs own stub | TCP, 1 stream | vs bridge+nft | vs own stub |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &(s, pps, gbps) in rows.iter().filter(|r| !r.0.sg()) {
        let stub = match s {
            Setup::Dragonflow { hook, .. } => find(Setup::Stub(hook)),
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

    if rows.iter().any(|r| r.0.sg()) {
        let base = find(Setup::BridgeNft { sg: true });
        println!(
            "\n### With security groups (`default` group + ingress TCP {IPERF_PORT}), same run\n"
        );
        println!(
            "| path | 64-byte UDP | vs bridge+nft+SG | vs same path without SG | TCP, 1 stream | vs bridge+nft+SG | vs same path without SG |"
        );
        println!("|---|---|---|---|---|---|---|");
        for &(s, pps, gbps) in rows.iter().filter(|r| r.0.sg()) {
            let plain = find(s.without_sg());
            println!(
                "| {} | {:.3} Mpps | {} | {} | {:.2} Gbit/s | {} | {} |",
                s.name(),
                pps / 1e6,
                ratio(pps, base.map(|b| b.0)),
                ratio(pps, plain.map(|b| b.0)),
                gbps,
                ratio(gbps, base.map(|b| b.1)),
                ratio(gbps, plain.map(|b| b.1)),
            );
        }
    }
}

fn median(v: &[f64]) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The samples of one figure, for stderr: "median (min–max)".
fn spread(v: &[f64], unit: f64) -> String {
    let (lo, hi) = v
        .iter()
        .fold((f64::MAX, f64::MIN), |(lo, hi), x| (lo.min(*x), hi.max(*x)));
    format!(
        "{:.3} ({:.3}–{:.3})",
        median(v) / unit,
        lo / unit,
        hi / unit
    )
}

/// The first three fields of /proc/loadavg: how busy the machine was (other work skews
/// every figure; the ratios of one run cancel only what all setups shared).
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

fn measure(setup: Setup, secs: u64) -> (f64, f64) {
    let mut cloud = Cloud::new();
    let (hook, bridge) = match setup {
        Setup::Bridge | Setup::BridgeNft { .. } => (Hook::Tc, true),
        Setup::Stub(h) | Setup::Dragonflow { hook: h, .. } => (h, false),
    };
    let hv = cloud.add_hypervisor_opts("hv1", hook, HvOpts { bridge });
    if let Setup::Dragonflow { sg, .. } = setup {
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1500");
        cloud.dfctl("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24");
        // No --security-group: both ports get `default` (created by dfctl on first use).
        cloud.dfctl(&format!(
            "lport create p1 --lswitch net1 --mac {MAC1} --fixed-ip {IP1} --chassis hv1 --ifname {TAP1}"
        ));
        cloud.dfctl(&format!(
            "lport create p2 --lswitch net1 --mac {MAC2} --fixed-ip {IP2} --chassis hv1 --ifname {TAP2}"
        ));
        if sg {
            cloud.dfctl(&format!(
                "secgroup rule-add default --direction ingress --ethertype ipv4 --protocol tcp --port-min {IPERF_PORT} --port-max {IPERF_PORT}"
            ));
        }
    }
    let opts = VmOpts {
        xdp_stub_napi: matches!(setup, Setup::Stub(Hook::Xdp)),
        ..VmOpts::default()
    };
    cloud.add_vm_opts(hv, "vm1", TAP1, MAC1, &[&format!("{IP1}/24")], &opts);
    cloud.add_vm_opts(hv, "vm2", TAP2, MAC2, &[&format!("{IP2}/24")], &opts);
    let mut _stub = None;
    match setup {
        Setup::Dragonflow { sg, .. } => {
            let mut args = vec!["--forwarding".to_string()];
            // Security groups are the agent's default; the plain rows measure without.
            if !sg && agent_has_flag("--security-groups") {
                args.push("--security-groups=false".into());
            }
            cloud.hvs[hv].extra_agent_args = args;
            cloud.start_agent(hv);
            let h = &cloud.hvs[hv];
            wait_until("forwarding enabled", Duration::from_secs(30), || {
                metric(&h.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0)
            });
        }
        Setup::BridgeNft { sg: false } => nftables_port_security(&cloud.hvs[hv].ns),
        Setup::BridgeNft { sg: true } => nftables_security_groups(&cloud.hvs[hv].ns),
        Setup::Stub(h) => _stub = Some(Stub::attach(&cloud, hv, h)),
        Setup::Bridge => {}
    }
    let (vm1, vm2) = (&cloud.vms[0].ns, &cloud.vms[1].ns);
    wait_until("vm1 reaches vm2", Duration::from_secs(15), || {
        ping(vm1, IP2, 1)
    });
    let pps = udp_pps(vm1, vm2, secs);
    let gbps = tcp_gbps(vm1, vm2, secs);
    if setup.sg() {
        sg_engaged(setup, &cloud);
    }
    (pps, gbps)
}

/// A redirect-only program on both taps, crossing them over: what tap1's VM sends goes
/// out of tap2 to the other VM, and back. Detached on drop.
enum Stub {
    /// `df_stub_xdp_redirect` from our object: a devmap redirect keyed by the ingress
    /// ifindex, the same helper our XDP hook delivers with; the devmap maps each tap to
    /// the other.
    Xdp(#[expect(dead_code, reason = "held: dropping it detaches the programs")] Ebpf),
    /// `bpf_redirect(<other tap>, 0)` as a three-instruction tcx ingress program per tap.
    /// Our object's `df_stub_tc_redirect` redirects to the ingress ifindex itself (a
    /// hairpin, right for BPF_PROG_TEST_RUN), which cannot cross two taps over, so the
    /// target is an immediate here.
    Tc(#[expect(dead_code, reason = "held: dropping them detaches the links")] Vec<OwnedFd>),
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
    use tests::framework::rawbpf::{self, insn};
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

/// The same anti-spoofing, then Neutron's security groups for both ports in the `default`
/// group plus ingress TCP 5201, as its iptables firewall lays them out: conntrack first
/// (`established,related` accepted, `invalid` dropped), then the sending port's egress
/// chain and the receiving port's ingress chain, the remote group as a set of its
/// members' addresses (Neutron's ipset), default drop.
///
/// nftables has no `physdev` match: through br_netfilter the inet hooks see the bridge as
/// the interface. So the bridge table (which sees the taps) marks each frame with its
/// input port (low nibble) and output port (high nibble), and the inet table dispatches
/// on the mark, as Neutron dispatches on `--physdev-in` / `--physdev-out`.
fn nftables_security_groups(hv: &Netns) {
    hv.exec("sysctl -qw net.bridge.bridge-nf-call-iptables=1");
    let mut rules = String::from(
        "table bridge dfps {\n\tchain portsec {\n\t\ttype filter hook forward priority -200; policy accept;\n",
    );
    let ports = [(TAP1, MAC1, IP1, 1), (TAP2, MAC2, IP2, 2)];
    for (tap, mac, ip, _) in ports {
        rules += &format!(
            "\t\tiifname \"{tap}\" ether saddr != {mac} drop\n\t\tiifname \"{tap}\" ip saddr != {ip} ether type ip drop\n"
        );
    }
    for (tap, _, _, n) in ports {
        rules += &format!("\t\tiifname \"{tap}\" meta mark set meta mark | {n:#x}\n");
        rules += &format!(
            "\t\toifname \"{tap}\" meta mark set meta mark | {:#x}\n",
            n << 4
        );
    }
    rules += "\t}\n}\n";
    rules += &format!(
        "table inet dfsg {{\n\tset sg_default_v4 {{ type ipv4_addr; elements = {{ {IP1}, {IP2} }} }}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority 0; policy drop;\n\
         \t\tct state established,related accept\n\
         \t\tct state invalid drop\n\
         \t\tmeta mark & 0x0f vmap {{ 0x1 : jump egress_p1, 0x2 : jump egress_p2 }}\n\
         \t\tmeta mark & 0xf0 vmap {{ 0x10 : jump ingress_p1, 0x20 : jump ingress_p2 }}\n\
         \t}}\n"
    );
    for n in [1, 2] {
        // default: egress any IPv4 / IPv6 (then on to the receiver's ingress chain).
        rules += &format!(
            "\tchain egress_p{n} {{\n\t\tmeta nfproto {{ ipv4, ipv6 }} return\n\t\tdrop\n\t}}\n"
        );
        // default: ingress from the group's members; plus TCP 5201 from anywhere.
        rules += &format!(
            "\tchain ingress_p{n} {{\n\t\tip saddr @sg_default_v4 counter accept\n\t\ttcp dport {IPERF_PORT} accept\n\t\tdrop\n\t}}\n"
        );
    }
    rules += "}\n";
    let path = std::env::temp_dir().join(format!("{}-nft-sg.conf", hv.name));
    std::fs::write(&path, rules).expect("write nft rules");
    hv.exec(&format!("nft -f {}", path.display()));
    let _ = std::fs::remove_file(path);
}

/// Evidence that the security groups judged the measured traffic (a figure from a setup
/// whose rules were bypassed would mean nothing): the new flows our datapath tracked and
/// the packets it passed as established, or what nftables' member-set rule accepted.
fn sg_engaged(setup: Setup, cloud: &Cloud) {
    let hv = &cloud.hvs[0];
    let (what, n) = match setup {
        Setup::Dragonflow { .. } => {
            let m = hv.metrics();
            let ev = |e: &str| {
                tests::framework::http::metric_sum(
                    &m,
                    "dragonflow_datapath_events_total",
                    &[("event", e)],
                )
            };
            eprintln!(
                "   security groups: ct_new {}, ct_established {}",
                ev("ct_new"),
                ev("ct_established")
            );
            ("conntrack entries created (ct_new)", ev("ct_new"))
        }
        _ => {
            let out = hv.ns.exec("nft list chain inet dfsg ingress_p2");
            let text = String::from_utf8_lossy(&out.stdout);
            let n = text
                .split_whitespace()
                .skip_while(|w| *w != "packets")
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            eprintln!(
                "   security groups: vm2's ingress chain accepted {n} packets by the member set"
            );
            ("packets accepted by the member-set rule", n)
        }
    };
    assert!(
        n > 0.0,
        "{}: security groups not engaged: no {what}",
        setup.name()
    );
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
