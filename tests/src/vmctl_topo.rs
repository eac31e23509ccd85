//! The port-security topology several suites share (port_security, agent_resilience,
//! foreign_pins, real_tap): a one-hypervisor topology built
//! through dfctl, a controller process per VM (`tests/scripts/vmctl.py`: crafted frames,
//! a sniffer, UDP sequence streams) and counter helpers.
//!
//! The hypervisor has no Linux bridge: the agent runs with its default, forwarding in the
//! datapath, so our programs are the only way a frame gets from one tap to another (issue
//! 3). Counting follows `dragonflow_common::verdict`: a frame that passed port security
//! counts its security path (`ipv4`, `arp`, …) AND its forwarding outcome (`l2_local`,
//! `flood`, `arp_responder`, …) or a forwarding drop (`unknown_unicast`, …); both kinds
//! are `verdict="pass"` samples, told apart by the path name.
//!
//! Verdicts are proven two ways: the datapath counter of the expected reason increments,
//! and the frame does (or does not) reach the peer VM. "Does not" is decided without
//! sleeping: after the frame, the sender sends a legitimate fence frame; once the fence
//! has arrived, the earlier frame would have arrived too.

use std::{
    collections::BTreeMap,
    thread,
    time::{Duration, Instant},
};

use crate::framework::{
    hook::Hook,
    http::metric,
    netns::Netns,
    process::wait_until,
    python::{JsonChild, python_command},
};
use crate::harness::{Cloud, HvOpts, Hypervisor, VmOpts, ping};
use serde_json::{Value, json};

/// The MAC no port owns, used by every MAC spoof.
pub const FOREIGN_MAC: &str = "fa:16:3e:66:66:66";
/// The VRRP virtual MAC used as an AAP MAC.
pub const VRRP_MAC: &str = "00:00:5e:00:01:01";
/// Where the agent serves /metrics, /healthz and /garp inside the hypervisor namespace.
pub const AGENT_URL: &str = "http://127.0.0.1:9465";

/// One VM and its port.
#[derive(Clone, Debug)]
pub struct VmSpec {
    /// Short name: VM namespace `<prefix>-<name>`, port `p<name>`, tap `tap<name>`.
    pub name: &'static str,
    pub mac: &'static str,
    pub ip4: &'static str,
    pub ip6: &'static str,
    /// Extra `dfctl lport create` arguments (`--aap …`, `--no-port-security`).
    pub extra: &'static str,
}

impl VmSpec {
    pub fn port(&self) -> String {
        format!("p{}", self.name)
    }
    pub fn tap(&self) -> String {
        format!("tap{}", self.name)
    }
}

pub const A: VmSpec = VmSpec {
    name: "a",
    mac: "fa:16:3e:00:00:0a",
    ip4: "192.0.2.10",
    ip6: "2001:db8::10",
    extra: "--aap 192.0.2.100 --aap 192.0.2.101,00:00:5e:00:01:01",
};
pub const B: VmSpec = VmSpec {
    name: "b",
    mac: "fa:16:3e:00:00:0b",
    ip4: "192.0.2.11",
    ip6: "2001:db8::11",
    extra: "",
};
pub const C: VmSpec = VmSpec {
    name: "c",
    mac: "fa:16:3e:00:00:0c",
    ip4: "192.0.2.12",
    ip6: "2001:db8::12",
    extra: "--no-port-security",
};

/// EUI-64 link-local address of a MAC (what the kernel configures and the agent allows).
pub fn link_local(mac: &str) -> String {
    let b: Vec<u8> = mac
        .split(':')
        .map(|x| u8::from_str_radix(x, 16).expect("mac"))
        .collect();
    format!(
        "fe80::{:02x}{:02x}:{:02x}ff:fe{:02x}:{:02x}{:02x}",
        b[0] ^ 2,
        b[1],
        b[2],
        b[3],
        b[4],
        b[5]
    )
}

/// A controller process (`vmctl.py`) inside one VM namespace.
pub struct Ctl {
    pub name: String,
    helper: JsonChild,
}

/// What one `send` wrote.
#[derive(Clone, Debug)]
pub struct Sent {
    pub n: u64,
    pub sigs: Vec<Option<String>>,
    pub src_macs: Vec<String>,
}

impl Ctl {
    /// Starts vmctl.py in `ns` (whose eth0 has `me`'s addresses) talking to `peer`.
    pub fn spawn(ns: &Netns, me: &VmSpec, peer: &VmSpec) -> Ctl {
        let mut c = python_command(ns, "vmctl.py");
        c.args(["--mac", me.mac, "--ip4", me.ip4, "--ip6", me.ip6])
            .args([
                "--peer-mac",
                peer.mac,
                "--peer-ip4",
                peer.ip4,
                "--peer-ip6",
                peer.ip6,
            ]);
        let ctl = Ctl {
            name: me.name.to_string(),
            helper: JsonChild::spawn(&format!("vmctl in VM {}", me.name), c),
        };
        let ready = ctl.helper.recv(Duration::from_secs(30));
        assert_eq!(
            ready["ready"],
            json!(true),
            "vmctl in {} did not start: {ready}",
            me.name
        );
        ctl
    }

    /// One request/response round trip.
    pub fn call(&self, req: Value) -> Value {
        self.helper.call(&req, Duration::from_secs(30))
    }

    /// Sends the frames of `case` (see vmctl.py); `Err` carries the kernel's refusal.
    pub fn try_send(&self, case: &str, args: Value) -> Result<Sent, String> {
        let r = self.call(json!({"op": "send", "case": case, "args": args}));
        if r["ok"] != json!(true) {
            return Err(r.to_string());
        }
        Ok(Sent {
            n: r["n"].as_u64().expect("n"),
            sigs: r["sigs"]
                .as_array()
                .expect("sigs")
                .iter()
                .map(|s| s.as_str().map(String::from))
                .collect(),
            src_macs: r["src_macs"]
                .as_array()
                .map(|v| {
                    v.iter()
                        .filter_map(|s| s.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    #[track_caller]
    pub fn send(&self, case: &str, args: Value) -> Sent {
        self.try_send(case, args)
            .unwrap_or_else(|e| panic!("VM {}: sending case {case} failed: {e}", self.name))
    }

    /// Which of these frames (by signature) this VM has received so far.
    pub fn seen(&self, sigs: &[Option<String>]) -> Vec<bool> {
        let r = self.call(json!({"op": "seen", "sigs": sigs}));
        r["seen"]
            .as_array()
            .unwrap_or_else(|| panic!("seen: {r}"))
            .iter()
            .map(|b| b.as_bool().unwrap_or(false))
            .collect()
    }

    /// Which of these frames (by signature) this VM has received carrying a VLAN tag, in
    /// its bytes or in skb metadata (PACKET_AUXDATA).
    pub fn seen_tagged(&self, sigs: &[Option<String>]) -> Vec<bool> {
        let r = self.call(json!({"op": "seen_tagged", "sigs": sigs}));
        r["seen"]
            .as_array()
            .unwrap_or_else(|| panic!("seen_tagged: {r}"))
            .iter()
            .map(|b| b.as_bool().unwrap_or(false))
            .collect()
    }

    /// How many ARP requests for `tpa` this VM has received so far.
    pub fn arp_requests_for(&self, tpa: &str) -> u64 {
        let r = self.call(json!({"op": "neigh_seen"}));
        r["arp_requests"]
            .as_array()
            .unwrap_or_else(|| panic!("neigh_seen: {r}"))
            .iter()
            .filter(|t| t.as_str() == Some(tpa))
            .count() as u64
    }

    /// Whether this VM has received an ARP reply saying `ip` is at `mac` (ARP) or a
    /// neighbour advertisement with target `ip` and TLLA `mac` (IPv6).
    pub fn got_neigh_answer(&self, ip: &str, mac: &str) -> bool {
        let r = self.call(json!({"op": "neigh_seen"}));
        let key = if ip.contains(':') {
            "na"
        } else {
            "arp_replies"
        };
        let want_ip: std::net::IpAddr = ip.parse().expect("ip");
        r[key]
            .as_array()
            .unwrap_or_else(|| panic!("neigh_seen: {r}"))
            .iter()
            .any(|p| {
                p[0].as_str().and_then(|s| s.parse().ok()) == Some(want_ip)
                    && p[1].as_str().is_some_and(|m| m.eq_ignore_ascii_case(mac))
            })
    }

    /// Polls until every frame of `sent` has been received here; false at the deadline.
    pub fn wait_seen(&self, sent: &Sent, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.seen(&sent.sigs).iter().all(|b| *b) {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Sends a legitimate frame from `fencer` to `receiver` and waits for it: after it, any
/// earlier frame from the same sender that was going to arrive has arrived. Panics when
/// the fence itself does not arrive (legitimate traffic is broken).
#[track_caller]
pub fn fence(fencer: &Ctl, receiver: &Ctl) {
    let f = fencer.send("udp4", json!({}));
    assert!(
        receiver.wait_seen(&f, Duration::from_secs(5)),
        "fence: a legitimate UDP frame from VM {} did not reach VM {} within 5 s",
        fencer.name,
        receiver.name
    );
}

/// Sends `case` from `sender`, fences from `fencer` and answers whether `receiver` got it.
pub fn probe_via(sender: &Ctl, fencer: &Ctl, receiver: &Ctl, case: &str, args: Value) -> bool {
    let s = sender.send(case, args);
    fence(fencer, receiver);
    receiver.seen(&s.sigs).iter().all(|b| *b)
}

/// [`probe_via`] with the sender as its own fence.
pub fn probe(sender: &Ctl, receiver: &Ctl, case: &str, args: Value) -> bool {
    probe_via(sender, sender, receiver, case, args)
}

/// The from-VM datapath counters: (verdict, reason-or-path) → packets.
pub type Counters = BTreeMap<(String, String), f64>;

pub fn parse_counters(text: &str) -> Counters {
    let mut out = Counters::new();
    for l in text
        .lines()
        .filter(|l| l.starts_with("dragonflow_datapath_packets_total{"))
    {
        let Some((series, value)) = l.rsplit_once(' ') else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = series
            .trim_start_matches("dragonflow_datapath_packets_total{")
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        if labels.get("direction") != Some(&"from_vm") {
            continue;
        }
        let (Some(verdict), Some(what)) = (
            labels.get("verdict"),
            labels.get("reason").or_else(|| labels.get("path")),
        ) else {
            continue;
        };
        *out.entry((verdict.to_string(), what.to_string()))
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

pub fn counters(hv: &Hypervisor) -> Counters {
    parse_counters(&hv.metrics())
}

/// Sum over `names` of the counters of `verdict` ("drop"/"pass"), absent = 0.
pub fn sum(c: &Counters, verdict: &str, names: &[&str]) -> f64 {
    names
        .iter()
        .map(|n| {
            c.get(&(verdict.to_string(), n.to_string()))
                .copied()
                .unwrap_or(0.0)
        })
        .sum()
}

/// The counters that changed between two snapshots, for failure messages.
pub fn diff(before: &Counters, after: &Counters) -> String {
    let mut s = String::new();
    for (k, v) in after {
        let d = v - before.get(k).copied().unwrap_or(0.0);
        if d != 0.0 {
            s.push_str(&format!("{}/{}+{} ", k.0, k.1, d));
        }
    }
    if s.is_empty() {
        "(no counter changed)".into()
    } else {
        s
    }
}

/// Polls until the counters of `verdict` over `names` grew by at least `n` since `before`;
/// `Err` with what did change otherwise.
pub fn wait_counted(
    hv: &Hypervisor,
    before: &Counters,
    verdict: &str,
    names: &[&str],
    n: f64,
    timeout: Duration,
) -> Result<Counters, String> {
    let start = Instant::now();
    loop {
        let now = counters(hv);
        if sum(&now, verdict, names) - sum(before, verdict, names) >= n {
            return Ok(now);
        }
        if start.elapsed() > timeout {
            let missing: Vec<&&str> = names
                .iter()
                .filter(|r| !now.contains_key(&(verdict.to_string(), r.to_string())))
                .collect();
            let note = if missing.is_empty() {
                String::new()
            } else {
                format!(" (series absent: {missing:?})")
            };
            return Err(format!(
                "expected {verdict} {names:?} to grow by {n} within {timeout:?}{note}; changed: {}",
                diff(before, &now)
            ));
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Adds a VM for `spec`-like addresses on hypervisor 0 of a [`Topo`] cloud (taps are never
/// bridged: the hypervisor has no br-int).
/// Default offloads on every hook: the datapath must not need the VM bent.
pub fn add_vm(cloud: &mut Cloud, name: &str, tap: &str, mac: &str, addrs: &[&str]) -> usize {
    cloud.add_vm_opts(0, name, tap, mac, addrs, &VmOpts::with_gateways(&[]))
}

/// `dragonflow_forwarding_enabled` of a hypervisor's agent (0 when absent).
pub fn forwarding_enabled(hv: &Hypervisor) -> f64 {
    metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]).unwrap_or(0.0)
}

/// The security group these suites give every port with port security.
///
/// Security groups are on by default (issue 4) and a port created without
/// `--security-group` gets `default`, whose ingress admits only the group's members'
/// addresses. The port-security and resilience suites send, legitimately, from addresses
/// no group lists (link-locals, 0.0.0.0 DHCP, a port without port security, addresses
/// made legitimate by an AAP live) and assert what port security and forwarding do with
/// them; so their ports allow everything both ways, IPv4 and IPv6, and the verdicts they
/// see stay port security's. Security groups have their own suite (security_groups.rs).
pub const ALLOW_ALL: &str = "allow-all";

/// Creates [`ALLOW_ALL`]: Neutron's default egress rules plus ingress any, both families.
pub fn create_allow_all(cloud: &Cloud) {
    cloud.dfctl(&format!("secgroup create {ALLOW_ALL} --name {ALLOW_ALL}"));
    for e in ["ipv4", "ipv6"] {
        cloud.dfctl(&format!(
            "secgroup rule-add {ALLOW_ALL} --direction ingress --ethertype {e}"
        ));
    }
}

/// `dfctl lport create` arguments for a spec's security groups: [`ALLOW_ALL`] unless the
/// port has no port security (then no group: the CLI refuses the combination).
pub fn secgroup_args(extra: &str) -> String {
    if extra.contains("--no-port-security") {
        String::new()
    } else {
        format!("--security-group {ALLOW_ALL}")
    }
}

/// A cloud with one hypervisor `hv1` (agent on `hook`, started with its defaults:
/// forwarding in the datapath, security groups on, and no Linux bridge in the
/// hypervisor), one network with an IPv4 and an IPv6 subnet, a port (in [`ALLOW_ALL`])
/// and a VM per spec, and a vmctl in every VM. VM 1 is everybody's peer; VM 0 is VM 1's
/// peer.
pub struct Topo {
    /// Dropped before the cloud (fields drop in declaration order).
    pub ctl: Vec<Ctl>,
    pub specs: Vec<VmSpec>,
    pub hook: Hook,
    pub cloud: Cloud,
}

impl Topo {
    pub fn new(hook: Hook, specs: &[VmSpec]) -> Topo {
        Self::with(hook, specs, |_| {})
    }

    /// Like [`Topo::new`]; `before_agent` runs after the VMs exist and before the agent.
    pub fn with(hook: Hook, specs: &[VmSpec], before_agent: impl FnOnce(&mut Cloud)) -> Topo {
        assert!(specs.len() >= 2);
        let mut cloud = Cloud::new();
        let hv = cloud.add_hypervisor_opts("hv1", hook, HvOpts { bridge: false });
        assert!(
            !cloud.hvs[hv].has_bridge(),
            "hv1 must have no br-int: frames move between taps only through the datapath"
        );
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1450");
        cloud.dfctl("subnet create sub4 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
        cloud.dfctl("subnet create sub6 --lswitch net1 --cidr 2001:db8::/64");
        create_allow_all(&cloud);
        for s in specs {
            cloud.dfctl(&format!(
                "lport create {} --lswitch net1 --mac {} --fixed-ip {} --fixed-ip {} --chassis hv1 --ifname {} {} {}",
                s.port(),
                s.mac,
                s.ip4,
                s.ip6,
                s.tap(),
                s.extra,
                secgroup_args(s.extra)
            ));
        }
        for s in specs {
            let a4 = format!("{}/24", s.ip4);
            let a6 = format!("{}/64", s.ip6);
            add_vm(&mut cloud, s.name, &s.tap(), s.mac, &[&a4, &a6]);
        }
        before_agent(&mut cloud);
        // No --forwarding flag: forwarding in the datapath is the agent's default.
        cloud.start_agent(hv);
        let t = Topo {
            ctl: Vec::new(),
            specs: specs.to_vec(),
            hook,
            cloud,
        };
        wait_until(
            "the agent turns forwarding on by default (dragonflow_forwarding_enabled 1)",
            Duration::from_secs(20),
            || forwarding_enabled(t.hv()) == 1.0,
        );
        let (a, b) = (&t.cloud.vms[0].ns, specs[1].ip4);
        wait_until(
            "VM a reaches VM b (legit IPv4 switched by the datapath)",
            Duration::from_secs(20),
            || ping(a, b, 1),
        );
        let mut t = t;
        for (i, s) in specs.iter().enumerate() {
            let peer = if i == 1 { &specs[0] } else { &specs[1] };
            let ctl = Ctl::spawn(&t.cloud.vms[i].ns, s, peer);
            t.ctl.push(ctl);
        }
        t
    }

    pub fn hv(&self) -> &Hypervisor {
        &self.cloud.hvs[0]
    }

    pub fn vm(&self, i: usize) -> &Netns {
        &self.cloud.vms[i].ns
    }

    /// GET from the agent inside the hypervisor namespace.
    pub fn agent_get(&self, path: &str) -> Option<(u16, String)> {
        self.hv().ns.http_get(&self.hv().metrics_addr, path)
    }
}

/// A tcx egress program on a VM's interface that pushes a VLAN tag into skb metadata
/// (`bpf_skb_vlan_push`), as a VLAN subinterface with tx-vlan offload would: the frame
/// reaches the tap with the tag in metadata, not in its bytes. (This kernel has no 8021q
/// module, so `ip link add … type vlan` is not available.) Detached on drop.
pub struct VlanPush {
    _prog: std::os::fd::OwnedFd,
    _link: std::os::fd::OwnedFd,
}

impl VlanPush {
    pub fn attach(ns: &Netns, ifname: &str, proto: u16, vid: u16) -> VlanPush {
        use crate::framework::rawbpf::{self, insn};
        const BPF_FUNC_SKB_VLAN_PUSH: i32 = 18;
        // r1 = skb (entry); r2 = htons(proto); r3 = vid; call skb_vlan_push; r0 = 0; exit
        let prog = [
            insn(0xb7, 2, 0, 0, i32::from(proto.to_be())),
            insn(0xb7, 3, 0, 0, i32::from(vid)),
            insn(0x85, 0, 0, 0, BPF_FUNC_SKB_VLAN_PUSH),
            insn(0xb7, 0, 0, 0, 0),
            insn(0x95, 0, 0, 0, 0),
        ];
        let ifindex = ns.ifindex(ifname);
        ns.within(move || {
            let p = rawbpf::load(
                rawbpf::PROG_TYPE_SCHED_CLS,
                rawbpf::ATTACH_TCX_EGRESS,
                &prog,
                "dft_vlan_push",
            );
            let l = rawbpf::link(&p, ifindex, rawbpf::ATTACH_TCX_EGRESS);
            VlanPush { _prog: p, _link: l }
        })
    }
}
