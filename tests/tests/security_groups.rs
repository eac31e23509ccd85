//! Security groups end to end (issue 4, item 6): hypervisor namespaces joined by an
//! underlay, an agent on each with its defaults (forwarding in eBPF, security groups on),
//! no bridge, VMs in namespaces on one dual-stack network, and real flows between them:
//! kernel TCP/UDP sockets and ping, crafted frames (scapy) for rows 10 and 14 of docs/THREATS.md.
//! Every flow is tried on the same chassis and across chassis (VXLAN), IPv4 and IPv6, and
//! every test runs for both hooks (`xdp::<case>`, `tc::<case>`).
//!
//! ```text
//!   net1 VNI 100, MTU 1450   192.0.2.0/24, 2001:db8::/64
//!   hv1 (198.18.0.10)        VMs named in each test, `hv: 0`
//!   hv2 (198.18.0.11)        `hv: 1`
//! ```
//!
//! Where a verdict is judged (README.md, "Security groups"): egress at the
//! sender's port (counted `from_vm` on the sender's chassis), ingress at the receiver's
//! port (counted `to_vm` on the receiver's chassis), both after port security. A denial is
//! asserted twice: `sg_denied` grows in that direction on that chassis (and not in the
//! other), and the receiver never gets the datagram/frame — decided after a fence, a later
//! allowed packet over the same path, never after a sleep.
//!
//! Each VM runs `tests/scripts/sgctl.py`, which serves TCP 8080 (echo), UDP 8081 (echo),
//! TCP 9999 (echo: a port no rule opens, so a refused connection is the datapath's, not a
//! closed port) and TCP 5001 (counts a bulk stream), and opens client flows on request.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    fixtures::addresses::unique,
    framework::{
        hook::Hook,
        http::metric,
        netns::Netns,
        process::{poll_until, wait_until},
        python::{JsonChild, python_command},
    },
    harness::{Capture, Cloud, HvOpts, Hypervisor, VmOpts, ping},
};

/// Chassis known, taps attached, first rules in place.
const READY: Duration = Duration::from_secs(30);
/// A dfctl change reaching every chassis' datapath.
const APPLY: Duration = Duration::from_secs(15);
/// A counter catching up with a packet already sent.
const COUNT: Duration = Duration::from_secs(3);
/// Removing a rule stops the established flows it allowed "within a second" (issue 4);
/// the slack covers the poll period and a loaded 2-CPU machine.
const CUT_WITHIN: Duration = Duration::from_millis(1000);
const CUT_SLACK: Duration = Duration::from_millis(500);

const TCP_ECHO: u16 = 8080;
const UDP_ECHO: u16 = 8081;
const TCP_CLOSED: u16 = 9999;
const TCP_STREAM: u16 = 5001;

/// Egress judged at the sender, ingress at the receiver.
const EGRESS: &str = "from_vm";
const INGRESS: &str = "to_vm";

#[derive(Clone, Copy, Debug)]
struct VmDef {
    /// VM namespace `<prefix>-<name>`, port `p<name>`, tap `tap<name>`.
    name: &'static str,
    /// Index of the hypervisor (0 = hv1).
    hv: usize,
    mac: &'static str,
    ip4: &'static str,
    ip6: &'static str,
    /// Extra `dfctl lport create` arguments: groups, AAPs, `--no-port-security`.
    args: &'static str,
    /// Extra addresses on the VM's eth0 (the AAP IPs it really uses).
    addrs: &'static [&'static str],
}

impl VmDef {
    const fn new(name: &'static str, hv: usize, n: u8, args: &'static str) -> VmDef {
        VmDef {
            name,
            hv,
            mac: MACS[n as usize],
            ip4: IP4S[n as usize],
            ip6: IP6S[n as usize],
            args,
            addrs: &[],
        }
    }

    const fn with_addrs(self, addrs: &'static [&'static str]) -> VmDef {
        VmDef { addrs, ..self }
    }

    fn ip(&self, v6: bool) -> &'static str {
        if v6 { self.ip6 } else { self.ip4 }
    }
}

const MACS: [&str; 8] = [
    "fa:16:3e:04:00:10",
    "fa:16:3e:04:00:11",
    "fa:16:3e:04:00:12",
    "fa:16:3e:04:00:13",
    "fa:16:3e:04:00:14",
    "fa:16:3e:04:00:15",
    "fa:16:3e:04:00:16",
    "fa:16:3e:04:00:17",
];
const IP4S: [&str; 8] = [
    "192.0.2.10",
    "192.0.2.11",
    "192.0.2.12",
    "192.0.2.13",
    "192.0.2.14",
    "192.0.2.15",
    "192.0.2.16",
    "192.0.2.17",
];
const IP6S: [&str; 8] = [
    "2001:db8::10",
    "2001:db8::11",
    "2001:db8::12",
    "2001:db8::13",
    "2001:db8::14",
    "2001:db8::15",
    "2001:db8::16",
    "2001:db8::17",
];

fn fam(v6: bool) -> &'static str {
    if v6 { "IPv6" } else { "IPv4" }
}

/// `tests/scripts/sgctl.py` in one VM.
struct SgCtl {
    helper: JsonChild,
}

impl SgCtl {
    fn spawn(ns: &Netns, name: &str) -> SgCtl {
        let helper = JsonChild::spawn(&format!("sgctl in {name}"), python_command(ns, "sgctl.py"));
        let ctl = SgCtl { helper };
        let ready = ctl.helper.recv(Duration::from_secs(30));
        assert_eq!(ready["ready"], json!(true), "sgctl in {name}: {ready}");
        for (proto, port, echo) in [
            ("tcp", TCP_ECHO, true),
            ("udp", UDP_ECHO, true),
            ("tcp", TCP_CLOSED, true),
            ("tcp", TCP_STREAM, false),
        ] {
            ctl.call(json!({"op": "listen", "proto": proto, "port": port, "echo": echo}));
        }
        ctl
    }

    /// One request/response; panics when sgctl reports an error.
    #[track_caller]
    fn call(&self, req: Value) -> Value {
        let r = self.helper.call(&req, Duration::from_secs(30));
        assert_eq!(r["ok"], json!(true), "{}: {req} -> {r}", self.helper.what);
        r
    }

    /// TCP connect to `dst:port` (from `src` if given), one echo round trip.
    fn tcp(&self, dst: &str, port: u16, src: Option<&str>, timeout: f64) -> Value {
        self.call(
            json!({"op": "tcp_connect", "dst": dst, "port": port, "src": src,
                         "timeout": timeout, "payload": unique("tcp")}),
        )
    }

    /// Whether a TCP connection to the echo port opens and echoes.
    fn tcp_ok(&self, dst: &str, src: Option<&str>) -> bool {
        self.tcp(dst, TCP_ECHO, src, 2.0)["echoed"] == json!(true)
    }

    /// One UDP datagram to `dst`'s echo port; whether the echo came back within `wait`.
    fn udp(&self, dst: &str, src: Option<&str>, payload: &str, size: usize, wait: f64) -> Value {
        self.call(
            json!({"op": "udp_send", "dst": dst, "port": UDP_ECHO, "src": src,
                         "payload": payload, "size": size, "wait": wait}),
        )
    }

    fn udp_echoed(&self, dst: &str, src: Option<&str>) -> bool {
        self.udp(dst, src, &unique("udp"), 0, 1.0)["reply"] == json!(true)
    }

    /// The datagrams received on the UDP echo port that start with `tag`: (length, source).
    fn udp_got(&self, tag: &str) -> Vec<(u64, String)> {
        let s = self.call(json!({"op": "stats", "proto": "udp", "port": UDP_ECHO}));
        s["datagrams"]
            .as_array()
            .expect("datagrams")
            .iter()
            .filter(|d| d[0].as_str().is_some_and(|t| t.starts_with(tag)))
            .map(|d| {
                (
                    d[1].as_u64().expect("len"),
                    d[2].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// Bytes received so far on the stream port.
    fn stream_bytes(&self) -> u64 {
        self.call(json!({"op": "stats", "proto": "tcp", "port": TCP_STREAM}))["bytes"]
            .as_u64()
            .expect("bytes")
    }

    fn craft(&self, req: Value) {
        self.call(req);
    }
}

/// The cloud of one test: net1 on `nhv` hypervisors, the groups made by `setup` (dfctl
/// commands) and the VMs, each with its sgctl.
struct Sg {
    /// Dropped before the cloud (fields drop in declaration order).
    ctl: Vec<SgCtl>,
    defs: Vec<VmDef>,
    cloud: Cloud,
}

impl Sg {
    fn new(hook: Hook, nhv: usize, setup: &[&str], defs: &[VmDef]) -> Sg {
        let mut cloud = Cloud::new();
        for i in 0..nhv {
            cloud.add_hypervisor_opts(&format!("hv{}", i + 1), hook, HvOpts { bridge: false });
        }
        cloud.dfctl("lswitch create net1 --vni 100 --mtu 1450");
        cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24");
        cloud.dfctl("subnet create net1-v6 --lswitch net1 --cidr 2001:db8::/64");
        for c in setup {
            cloud.dfctl(c);
        }
        for d in defs {
            cloud.dfctl(&format!(
                "lport create p{} --lswitch net1 --mac {} --fixed-ip {} --fixed-ip {} --chassis hv{} --ifname tap{} {}",
                d.name,
                d.mac,
                d.ip4,
                d.ip6,
                d.hv + 1,
                d.name,
                d.args
            ));
            let a4 = format!("{}/24", d.ip4);
            let a6 = format!("{}/64", d.ip6);
            let mut addrs = vec![a4.as_str(), a6.as_str()];
            addrs.extend(d.addrs);
            cloud.add_vm_opts(
                d.hv,
                d.name,
                &format!("tap{}", d.name),
                d.mac,
                &addrs,
                &VmOpts::with_gateways(&[]),
            );
        }
        // No flags: forwarding in the datapath and security groups are the defaults.
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
        let ctl = defs
            .iter()
            .zip(&cloud.vms)
            .map(|(d, vm)| SgCtl::spawn(&vm.ns, d.name))
            .collect();
        Sg {
            ctl,
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

    fn ctl(&self, d: &VmDef) -> &SgCtl {
        &self.ctl[self.idx(d)]
    }

    fn vm(&self, d: &VmDef) -> &Netns {
        &self.cloud.vms[self.idx(d)].ns
    }

    fn hv(&self, d: &VmDef) -> &Hypervisor {
        &self.cloud.hvs[d.hv]
    }

    /// `dfctl secgroup rule-add …`: the new rule's id.
    fn rule_add(&self, args: &str) -> String {
        let out = self.cloud.dfctl(&format!("secgroup rule-add {args}"));
        out.split_whitespace()
            .last()
            .unwrap_or_else(|| panic!("secgroup rule-add {args} printed no rule id"))
            .to_string()
    }

    /// Every non-zero datapath counter of every chassis, for failure messages.
    fn counters(&self) -> String {
        let mut s = String::new();
        for hv in &self.cloud.hvs {
            for l in hv.metrics().lines().filter(|l| {
                (l.starts_with("dragonflow_datapath_packets_total{")
                    || l.starts_with("dragonflow_datapath_events_total{"))
                    && !l.ends_with(" 0")
            }) {
                s.push_str(&format!("  {}: {l}\n", hv.name));
            }
        }
        s
    }

    /// Polls until `from` gets UDP echoes from `to` in both families (the path is up and
    /// the rules are in place).
    #[track_caller]
    fn wait_udp(&self, from: &VmDef, to: &VmDef) {
        for v6 in [false, true] {
            let ok = poll_until(READY, || self.ctl(from).udp_echoed(to.ip(v6), None));
            assert!(
                ok,
                "{} never got a UDP echo from {} ({}) within {READY:?}; counters:\n{}",
                from.name,
                to.name,
                to.ip(v6),
                self.counters()
            );
        }
    }

    /// Asserts that `send` (which sends one or more packets from `from` to `to`) is denied
    /// by security groups in `dir`: `sg_denied` grows by at least `n` on the judging
    /// chassis in that direction and not in the other, and, after `fence`, `arrived` says
    /// nothing came through.
    #[track_caller]
    #[expect(
        clippy::too_many_arguments,
        reason = "one denial case: who, which way, how often, and the three steps that send, fence and look"
    )]
    fn denied(
        &self,
        what: &str,
        from: &VmDef,
        to: &VmDef,
        dir: &str,
        n: f64,
        send: impl FnOnce(),
        fence: impl FnOnce(),
        arrived: impl FnOnce() -> bool,
    ) {
        let judge = if dir == EGRESS {
            self.hv(from)
        } else {
            self.hv(to)
        };
        let (other_hv, other_dir) = if dir == EGRESS {
            (self.hv(to), INGRESS)
        } else {
            (self.hv(from), EGRESS)
        };
        let before = judge.counter(dir, "drop", "sg_denied");
        let other_before = other_hv.counter(other_dir, "drop", "sg_denied");
        send();
        if let Err(e) = judge.wait_counter((dir, "drop", "sg_denied"), before, n, COUNT) {
            panic!("{what}: {e}; counters:\n{}", self.counters());
        }
        fence();
        assert!(!arrived(), "{what}: denied, yet it reached {}", to.name);
        let other = other_hv.counter(other_dir, "drop", "sg_denied") - other_before;
        assert_eq!(
            other, 0.0,
            "{what}: also counted as sg_denied {other_dir} on {} (should be judged {dir} only)",
            other_hv.name
        );
    }
}

// ---------------------------------------------------------------------------------------
// Allowed, denied (each direction, each place it is judged), replies.

/// `client`: the Neutron default rules only (egress anything, no ingress). `server`:
/// ingress TCP 8080, UDP 8081, ICMP and ICMPv6 from anywhere. `mute`: no rule at all.
const CLIENT_SERVER: &[&str] = &[
    "secgroup create client --name client",
    "secgroup create server --name server",
    "secgroup rule-add server --direction ingress --ethertype ipv4 --protocol tcp --port-min 8080 --port-max 8080",
    "secgroup rule-add server --direction ingress --ethertype ipv6 --protocol tcp --port-min 8080 --port-max 8080",
    "secgroup rule-add server --direction ingress --ethertype ipv4 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add server --direction ingress --ethertype ipv6 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add server --direction ingress --ethertype ipv4 --protocol icmp",
    "secgroup rule-add server --direction ingress --ethertype ipv6 --protocol icmpv6",
    "secgroup create mute --name mute --no-default-rules",
];

const CL: VmDef = VmDef::new("cl", 0, 0, "--security-group client");
const SV1: VmDef = VmDef::new("sv1", 0, 1, "--security-group server");
const SV2: VmDef = VmDef::new("sv2", 1, 2, "--security-group server");
const MU: VmDef = VmDef::new("mu", 0, 3, "--security-group mute");

/// The client opens TCP, UDP and ICMP flows to servers on its chassis and across, and
/// their replies reach it; the servers cannot open anything toward the client (ingress,
/// judged on the client's chassis); the client cannot reach a port the servers' rules do
/// not open (ingress, judged on the server's chassis); a port without egress rules cannot
/// send at all (egress, judged on its own chassis) until an egress rule is added.
fn allow_deny(hook: Hook) {
    let t = Sg::new(hook, 2, CLIENT_SERVER, &[CL, SV1, SV2, MU]);
    let cl = t.ctl(&CL);
    for sv in [&SV1, &SV2] {
        t.wait_udp(&CL, sv);
        let s = t.ctl(sv);
        for v6 in [false, true] {
            let f = fam(v6);
            // Allowed, and the replies come back (stateful).
            assert!(
                cl.tcp_ok(sv.ip(v6), None),
                "{f}: client → {} TCP {TCP_ECHO}: no echo",
                sv.name
            );
            assert!(
                cl.udp_echoed(sv.ip(v6), None),
                "{f}: client → {} UDP {UDP_ECHO}: no echo",
                sv.name
            );
            assert!(
                ping(t.vm(&CL), sv.ip(v6), 3),
                "{f}: client pings {}: replies lost",
                sv.name
            );

            // The server may not open anything toward the client.
            let r = s.tcp(CL.ip(v6), TCP_ECHO, None, 1.0);
            assert_eq!(
                r["connected"],
                json!(false),
                "{f}: {} opened TCP to the client: {r}",
                sv.name
            );
            let tag = unique("sv-to-cl");
            t.denied(
                &format!("{f}: UDP {} → client", sv.name),
                sv,
                &CL,
                INGRESS,
                1.0,
                || {
                    s.udp(CL.ip(v6), None, &tag, 0, 0.0);
                },
                // The echo of a client request travels server → client after it.
                || assert!(cl.udp_echoed(sv.ip(v6), None), "{f}: fence echo lost"),
                || !cl.udp_got(&tag).is_empty(),
            );
            assert!(
                !ping(t.vm(sv), CL.ip(v6), 1),
                "{f}: {} pings the client",
                sv.name
            );

            // A port the server's rules do not open: judged at the server's ingress.
            t.denied(
                &format!("{f}: TCP client → {}:{TCP_CLOSED}", sv.name),
                &CL,
                sv,
                INGRESS,
                1.0,
                || {
                    let r = cl.tcp(sv.ip(v6), TCP_CLOSED, None, 1.0);
                    assert_eq!(r["connected"], json!(false), "{f}: {r}");
                },
                || assert!(cl.tcp_ok(sv.ip(v6), None), "{f}: fence connection failed"),
                || {
                    t.ctl(sv)
                        .call(json!({"op": "stats", "proto": "tcp", "port": TCP_CLOSED}))["conns"]
                        != json!(0)
                },
            );
        }
    }

    // No egress rule: the mute port's packets are judged (and dropped) at its own port.
    let mu = t.ctl(&MU);
    for sv in [&SV1, &SV2] {
        for v6 in [false, true] {
            let f = fam(v6);
            let tag = unique("mute");
            t.denied(
                &format!("{f}: UDP mute → {} (no egress rule)", sv.name),
                &MU,
                sv,
                EGRESS,
                1.0,
                || {
                    mu.udp(sv.ip(v6), None, &tag, 0, 0.0);
                },
                || assert!(cl.udp_echoed(sv.ip(v6), None), "{f}: fence lost"),
                || !t.ctl(sv).udp_got(&tag).is_empty(),
            );
        }
    }
    for e in ["ipv4", "ipv6"] {
        t.rule_add(&format!(
            "mute --direction egress --ethertype {e} --protocol udp --port-min {UDP_ECHO} --port-max {UDP_ECHO}"
        ));
    }
    for sv in [&SV1, &SV2] {
        for v6 in [false, true] {
            assert!(
                poll_until(APPLY, || mu.udp_echoed(sv.ip(v6), None)),
                "{}: mute → {} UDP still denied {APPLY:?} after its egress rule was added",
                fam(v6),
                sv.name
            );
        }
    }
    // Only that rule: TCP from the mute port is still denied.
    let r = mu.tcp(SV1.ip4, TCP_ECHO, None, 1.0);
    assert_eq!(r["connected"], json!(false), "mute → sv1 TCP: {r}");
}

// ---------------------------------------------------------------------------------------
// Removing a rule cuts the established flows it allowed.

const SVC: &[&str] = &["secgroup create svc --name svc"];
/// No `--security-group`: the port gets `default` (egress anything).
const SRC: VmDef = VmDef::new("src", 0, 0, "");
const DST1: VmDef = VmDef::new("dst1", 0, 1, "--security-group svc");
const DST2: VmDef = VmDef::new("dst2", 1, 2, "--security-group svc");

/// A bulk TCP stream allowed only by an ingress rule of the receiver stops delivering
/// within a second of `dfctl secgroup rule-delete` (the established entry is re-judged at
/// its next packet and deleted), is counted as `sg_denied` at the receiver, and resumes
/// once the rule is back (retransmissions judged by the rules, untracked).
fn rule_removal_cuts_stream(hook: Hook) {
    let t = Sg::new(hook, 2, SVC, &[SRC, DST1, DST2]);
    let src = t.ctl(&SRC);
    let mut cuts = Vec::new();
    for dst in [&DST1, &DST2] {
        for v6 in [false, true] {
            let f = fam(v6);
            let e = if v6 { "ipv6" } else { "ipv4" };
            let rule = format!(
                "svc --direction ingress --ethertype {e} --protocol tcp --port-min {TCP_STREAM} --port-max {TCP_STREAM}"
            );
            let id = t.rule_add(&rule);
            let d = t.ctl(dst);
            let hv = t.hv(dst);
            // The rule is in place once a connection opens.
            let connected = poll_until(APPLY, || {
                src.tcp(dst.ip(v6), TCP_STREAM, None, 0.5)["connected"] == json!(true)
            });
            assert!(
                connected,
                "{f}: src → {} TCP {TCP_STREAM} never opened",
                dst.name
            );
            src.call(json!({"op": "stream_start", "dst": dst.ip(v6), "port": TCP_STREAM}));
            let b0 = d.stream_bytes();
            assert!(
                poll_until(READY, || d.stream_bytes() > b0 + (8 << 20)),
                "{f}: the stream src → {} does not flow",
                dst.name
            );
            let denied0 = hv.counter(INGRESS, "drop", "sg_denied");

            let t0 = Instant::now();
            t.cloud.dfctl(&format!("secgroup rule-delete svc {id}"));
            let written = t0.elapsed();
            // Watch the receiver's byte count: the last time it moved is the cut.
            let (mut last, mut last_change) = (d.stream_bytes(), t0.elapsed());
            let quiet = Duration::from_secs(1);
            let deadline = Duration::from_secs(10);
            while t0.elapsed() - last_change < quiet && t0.elapsed() < deadline {
                thread::sleep(Duration::from_millis(10));
                let now = d.stream_bytes();
                if now != last {
                    (last, last_change) = (now, t0.elapsed());
                }
            }
            eprintln!(
                "[{}] {f} src → {}: rule-delete written after {written:?}, the receiver's last byte arrived at most {last_change:?} after the command started",
                hook.as_str(),
                dst.name
            );
            assert!(
                t0.elapsed() - last_change >= quiet,
                "{f}: the stream src → {} still delivers {deadline:?} after its rule was deleted",
                dst.name
            );
            assert!(
                last_change <= CUT_WITHIN + CUT_SLACK,
                "{f}: the stream src → {} stopped {last_change:?} after rule-delete (want ≤ {CUT_WITHIN:?} + {CUT_SLACK:?} polling slack)",
                dst.name
            );
            hv.wait_counter((INGRESS, "drop", "sg_denied"), denied0, 1.0, COUNT)
                .unwrap_or_else(|e| panic!("{f}: the cut stream is not counted: {e}"));
            cuts.push(last_change);

            // The rule back: the sender's retransmissions are judged by it and pass.
            let id = t.rule_add(&rule);
            let b1 = d.stream_bytes();
            assert!(
                poll_until(Duration::from_secs(20), || d.stream_bytes()
                    > b1 + (1 << 20)),
                "{f}: the stream src → {} did not resume after the rule was added back",
                dst.name
            );
            let r = src.call(json!({"op": "stream_stop"}));
            assert!(r["err"].is_null(), "{f}: stream to {}: {r}", dst.name);
            t.cloud.dfctl(&format!("secgroup rule-delete svc {id}"));
        }
    }
    eprintln!("[{}] rule removal cut times: {cuts:?}", hook.as_str());
}

// ---------------------------------------------------------------------------------------
// Remote groups: members by fixed IP, AAP IP and AAP CIDR, on every chassis; live changes.

/// `db` accepts TCP 8080 and UDP 8081 from members of `web` only.
const WEB_DB: &[&str] = &[
    "secgroup create web --name web",
    "secgroup create db --name db",
    "secgroup rule-add db --direction ingress --ethertype ipv4 --protocol tcp --port-min 8080 --port-max 8080 --remote-group web",
    "secgroup rule-add db --direction ingress --ethertype ipv6 --protocol tcp --port-min 8080 --port-max 8080 --remote-group web",
    "secgroup rule-add db --direction ingress --ethertype ipv4 --protocol udp --port-min 8081 --port-max 8081 --remote-group web",
    "secgroup rule-add db --direction ingress --ethertype ipv6 --protocol udp --port-min 8081 --port-max 8081 --remote-group web",
];
/// A member of `web` that also sends from its allowed address pairs.
const WEB: VmDef = VmDef::new(
    "web",
    0,
    0,
    "--security-group web --aap 192.0.2.100 --aap 2001:db8::100 --aap 203.0.113.0/28",
)
.with_addrs(&["192.0.2.100/32", "2001:db8::100/128", "203.0.113.5/32"]);
/// Not a member (the `default` group: no `--security-group`).
const OUT: VmDef = VmDef::new("out", 0, 1, "");
const DB1: VmDef = VmDef::new("db1", 0, 2, "--security-group db");
const DB2: VmDef = VmDef::new("db2", 1, 3, "--security-group db");
const AAP4: &str = "192.0.2.100";
const AAP6: &str = "2001:db8::100";

fn remote_group_membership(hook: Hook) {
    let t = Sg::new(hook, 2, WEB_DB, &[WEB, OUT, DB1, DB2]);
    let (web, out) = (t.ctl(&WEB), t.ctl(&OUT));
    for db in [&DB1, &DB2] {
        t.wait_udp(&WEB, db);
        let d = t.ctl(db);
        for v6 in [false, true] {
            let f = fam(v6);
            let aap = if v6 { AAP6 } else { AAP4 };
            // A member, from its fixed IP and from its AAP IP: allowed, replies return.
            assert!(
                web.tcp_ok(db.ip(v6), None),
                "{f}: member web → {} TCP from its fixed IP",
                db.name
            );
            assert!(
                web.tcp_ok(db.ip(v6), Some(aap)),
                "{f}: member web → {} TCP from its AAP {aap}",
                db.name
            );
            let tag = unique("aap");
            let r = web.udp(db.ip(v6), Some(aap), &tag, 0, 2.0);
            assert_eq!(
                r["reply"],
                json!(true),
                "{f}: member web → {} UDP from its AAP {aap}: {r}",
                db.name
            );
            let got = d.udp_got(&tag);
            assert!(
                got.iter().any(|(_, s)| s == aap),
                "{f}: {} got {got:?}, want a datagram from {aap}",
                db.name
            );

            // Not a member: denied at the db port's ingress.
            let r = out.tcp(db.ip(v6), TCP_ECHO, None, 1.0);
            assert_eq!(
                r["connected"],
                json!(false),
                "{f}: non-member out → {} TCP: {r}",
                db.name
            );
            let tag = unique("out");
            t.denied(
                &format!("{f}: UDP non-member out → {}", db.name),
                &OUT,
                db,
                INGRESS,
                1.0,
                || {
                    out.udp(db.ip(v6), None, &tag, 0, 0.0);
                },
                || assert!(web.udp_echoed(db.ip(v6), None), "{f}: fence lost"),
                || !d.udp_got(&tag).is_empty(),
            );
        }
        // A CIDR AAP makes every address inside it a member (one way: db has no route
        // back to 203.0.113.0/28, the datagram's arrival is the proof).
        let tag = unique("cidr");
        web.udp(db.ip4, Some("203.0.113.5"), &tag, 0, 0.0);
        assert!(
            poll_until(COUNT, || !d.udp_got(&tag).is_empty()),
            "UDP web → {} from 203.0.113.5 (inside its AAP 203.0.113.0/28) never arrived; counters:\n{}",
            db.name,
            t.counters()
        );
    }

    // Membership changes live: out joins web (keeping default), then leaves it.
    t.cloud
        .dfctl("lport update pout --security-group default --security-group web");
    let t0 = Instant::now();
    for db in [&DB1, &DB2] {
        for v6 in [false, true] {
            assert!(
                poll_until(APPLY, || out.udp_echoed(db.ip(v6), None)),
                "{}: out → {} still denied {APPLY:?} after out joined web; counters:\n{}",
                fam(v6),
                db.name,
                t.counters()
            );
            assert!(
                out.tcp_ok(db.ip(v6), None),
                "{}: out → {} TCP after joining web",
                fam(v6),
                db.name
            );
        }
    }
    eprintln!(
        "[{}] joining web took effect on both chassis within {:?}",
        hook.as_str(),
        t0.elapsed()
    );
    t.cloud.dfctl("lport update pout --security-group default");
    let t0 = Instant::now();
    for db in [&DB1, &DB2] {
        for v6 in [false, true] {
            assert!(
                poll_until(APPLY, || !out.udp_echoed(db.ip(v6), None)),
                "{}: out → {} still allowed {APPLY:?} after out left web",
                fam(v6),
                db.name
            );
        }
    }
    eprintln!(
        "[{}] leaving web: denied again on both chassis, checked within {:?} (a denial is a 1 s wait for an echo)",
        hook.as_str(),
        t0.elapsed()
    );

    // An AAP added live to a member is a member address at once.
    t.cloud.dfctl("lport update pweb --add-aap 192.0.2.102");
    t.vm(&WEB).exec("ip addr add 192.0.2.102/32 dev eth0");
    for db in [&DB1, &DB2] {
        assert!(
            poll_until(APPLY, || web.udp_echoed(db.ip4, Some("192.0.2.102"))),
            "web → {} from the AAP 192.0.2.102 added live: never allowed",
            db.name
        );
    }
}

/// The CLI side of the contract that needs no datapath: default group, refused combinations,
/// a group in use cannot be deleted.
#[test]
fn secgroup_cli_contract() {
    let cloud = Cloud::new();
    cloud.dfctl("lswitch create net1 --vni 100");
    cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24");
    cloud.dfctl("secgroup create web --name web");
    cloud.dfctl("lport create p1 --lswitch net1 --mac fa:16:3e:04:01:01 --fixed-ip 192.0.2.21 --chassis hv1 --ifname tap1 --security-group web");
    // No --security-group: the port gets `default`, created on demand with Neutron's rules.
    cloud.dfctl("lport create p2 --lswitch net1 --mac fa:16:3e:04:01:02 --fixed-ip 192.0.2.22 --chassis hv1 --ifname tap2");
    let nb = |key: &str| -> Value {
        let o = cloud.etcdctl(&["get", &format!("/dragonflow/{key}"), "--print-value-only"]);
        serde_json::from_slice(&o.stdout)
            .unwrap_or_else(|e| panic!("NB {key}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
    };
    assert_eq!(
        nb("lport/p2")["security_groups"],
        json!(["default"]),
        "port without --security-group"
    );
    assert_eq!(nb("lport/p1")["security_groups"], json!(["web"]));
    let default = nb("secgroup/default");
    let rules = default["rules"].as_array().expect("rules");
    for (dir, eth, remote) in [
        ("egress", "IPv4", Value::Null),
        ("egress", "IPv6", Value::Null),
        ("ingress", "IPv4", json!("default")),
        ("ingress", "IPv6", json!("default")),
    ] {
        assert!(
            rules.iter().any(|r| r["direction"] == json!(dir)
                && r["ethertype"] == json!(eth)
                && r["protocol"].is_null()
                && r["remote_ip_prefix"].is_null()
                && r["remote_group_id"] == remote),
            "default group lacks {dir} {eth} from {remote}: {default}"
        );
    }
    assert_eq!(rules.len(), 4, "default group rules: {default}");
    let web = nb("secgroup/web");
    assert_eq!(
        web["rules"].as_array().map(Vec::len),
        Some(2),
        "a new group has the two default egress rules: {web}"
    );

    // Port security off with a security group: refused as Neutron does (exit 2).
    let o = cloud.try_dfctl("lport create p3 --lswitch net1 --mac fa:16:3e:04:01:03 --fixed-ip 192.0.2.23 --chassis hv1 --ifname tap3 --no-port-security --security-group web");
    assert_eq!(
        o.status.code(),
        Some(2),
        "--no-port-security with --security-group: {o:?}"
    );

    // A group in use cannot be deleted, and the refusal names the port.
    let o = cloud.try_dfctl("secgroup delete web");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!o.status.success(), "deleting web while p1 uses it: {text}");
    assert!(text.contains("p1"), "the refusal should name p1: {text}");
    assert!(
        nb("secgroup/web")["id"] == json!("web"),
        "web deleted anyway"
    );
    cloud.dfctl("lport update p1 --no-security-groups");
    cloud.dfctl("secgroup delete web");
    let o = cloud.etcdctl(&["get", "/dragonflow/secgroup/web", "--print-value-only"]);
    assert!(
        o.stdout.is_empty(),
        "secgroup/web still in the NB after delete"
    );

    // Rules show up in `secgroup show` with their ids, and go away by id.
    cloud.dfctl("secgroup create tmp --name tmp");
    let id = cloud
        .dfctl(
            "secgroup rule-add tmp --direction ingress --protocol tcp --port-min 22 --port-max 22",
        )
        .split_whitespace()
        .last()
        .expect("rule id")
        .to_string();
    assert!(
        cloud.dfctl("secgroup show tmp").contains(&id),
        "secgroup show tmp lists {id}"
    );
    cloud.dfctl(&format!("secgroup rule-delete tmp {id}"));
    assert!(
        !cloud.dfctl("secgroup show tmp").contains(&id),
        "rule {id} still listed after rule-delete"
    );
}

// ---------------------------------------------------------------------------------------
// docs/THREATS.md row 14: "established-looking" packets without a conntrack entry.

/// The client has no ingress rule. Crafted from a server: a SYN-ACK, an ACK with data, a
/// UDP "reply" and an ICMP echo reply the client never asked for, and an ICMP echo request
/// with the id of the client's own ping (matching its entry in reverse) — each judged as
/// new at the client's ingress, denied, counted, never delivered. Crafted from the client:
/// a TCP ACK without SYN to an open port passes (judged by the server's rules, untracked)
/// and to a closed one is denied.
fn stateful_confusion(hook: Hook) {
    let t = Sg::new(hook, 2, CLIENT_SERVER, &[CL, SV1, SV2]);
    let cl = t.ctl(&CL);
    let cap_cl = Capture::start(t.vm(&CL), "eth0", "in", "");
    for sv in [&SV1, &SV2] {
        t.wait_udp(&CL, sv);
        let s = t.ctl(sv);
        let cap_sv = Capture::start(t.vm(sv), "eth0", "in", "");
        for v6 in [false, true] {
            let f = fam(v6);
            // A crafted frame: `kind` from `from` to `to` carrying `payload`, plus the
            // kind's fields in `extra`.
            let frame = |kind: &str, from: &VmDef, to: &VmDef, payload: &str, extra: Value| {
                let mut req = json!({"op": "craft", "kind": kind, "dst_mac": to.mac,
                                     "src": from.ip(v6), "dst": to.ip(v6), "payload": payload});
                if let (Some(r), Value::Object(x)) = (req.as_object_mut(), extra) {
                    r.extend(x);
                }
                req
            };
            // A real connection first: the client's replies come back.
            assert!(cl.tcp_ok(sv.ip(v6), None), "{f}: client → {} TCP", sv.name);

            let marks: Vec<String> = (0..4).map(|i| unique(&format!("row14-{i}"))).collect();
            // Client ports below the ephemeral range (32768–60999): no real connection of
            // the client can own them.
            let frames = [
                frame(
                    "tcp",
                    sv,
                    &CL,
                    &marks[0],
                    json!({"sport": TCP_ECHO, "dport": 31000, "flags": "SA", "seq": 5000, "ack": 1001}),
                ),
                frame(
                    "tcp",
                    sv,
                    &CL,
                    &marks[1],
                    json!({"sport": TCP_ECHO, "dport": 31000, "flags": "A", "seq": 5001, "ack": 1001}),
                ),
                frame(
                    "udp",
                    sv,
                    &CL,
                    &marks[2],
                    json!({"sport": UDP_ECHO, "dport": 31001}),
                ),
                frame(
                    "echo",
                    sv,
                    &CL,
                    &marks[3],
                    json!({"type": "reply", "id": 0x4243, "seq": 1}),
                ),
            ];
            t.denied(
                &format!(
                    "{f}: unsolicited SYN-ACK, ACK, UDP reply, echo reply {} → client",
                    sv.name
                ),
                sv,
                &CL,
                INGRESS,
                4.0,
                || frames.iter().for_each(|fr| s.craft(fr.clone())),
                || assert!(cl.udp_echoed(sv.ip(v6), None), "{f}: fence lost"),
                || marks.iter().any(|m| cap_cl.count(m.as_bytes()) > 0),
            );

            // The client pings the server with id 0x4244: the reply comes back…
            let ping_mark = unique("echo-req");
            cl.craft(frame("echo", &CL, sv, &ping_mark, json!({"id": 0x4244})));
            assert!(
                cap_cl.wait_count(ping_mark.as_bytes(), 1, COUNT),
                "{f}: the echo reply of {} to the client's crafted ping never arrived:\n{}",
                sv.name,
                cap_cl.summary()
            );
            // …but a request from the server with the same id is a new flow toward the
            // client, not a match of the client's entry.
            let rev_mark = unique("echo-rev");
            let rev = frame("echo", sv, &CL, &rev_mark, json!({"id": 0x4244}));
            t.denied(
                &format!(
                    "{f}: echo request {} → client with the id of the client's ping",
                    sv.name
                ),
                sv,
                &CL,
                INGRESS,
                1.0,
                || s.craft(rev),
                || assert!(cl.udp_echoed(sv.ip(v6), None), "{f}: fence lost"),
                || cap_cl.count(rev_mark.as_bytes()) > 0,
            );

            // From the client: an ACK with no SYN to the open port is judged by the
            // server's ingress rules and passes (untracked); to a closed port it is denied.
            let open_mark = unique("ack-open");
            let ack = frame(
                "tcp",
                &CL,
                sv,
                &open_mark,
                json!({"sport": 31002, "dport": TCP_ECHO, "flags": "A", "seq": 7000, "ack": 1}),
            );
            cl.craft(ack);
            assert!(
                cap_sv.wait_count(open_mark.as_bytes(), 1, COUNT),
                "{f}: an ACK without SYN to {}:{TCP_ECHO} (allowed by its rules) never arrived:\n{}",
                sv.name,
                cap_sv.summary()
            );
            let closed_mark = unique("ack-closed");
            let ack = frame(
                "tcp",
                &CL,
                sv,
                &closed_mark,
                json!({"sport": 31003, "dport": TCP_CLOSED, "flags": "A", "seq": 7000, "ack": 1}),
            );
            t.denied(
                &format!("{f}: ACK without SYN client → {}:{TCP_CLOSED}", sv.name),
                &CL,
                sv,
                INGRESS,
                1.0,
                || cl.craft(ack),
                || assert!(cl.udp_echoed(sv.ip(v6), None), "{f}: fence lost"),
                || cap_sv.count(closed_mark.as_bytes()) > 0,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// Issue 10: ICMP errors as a security-group bypass.

/// `oneflow`: egress UDP 8081 only (IPv4 and IPv6), no ingress (replies come back by
/// conntrack).
const ONEFLOW: &[&str] = &[
    "secgroup create server --name server",
    "secgroup rule-add server --direction ingress --ethertype ipv4 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add server --direction ingress --ethertype ipv6 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add server --direction ingress --ethertype ipv4 --protocol icmp",
    "secgroup rule-add server --direction ingress --ethertype ipv6 --protocol icmpv6",
    "secgroup create oneflow --name oneflow --no-default-rules",
    "secgroup rule-add oneflow --direction egress --ethertype ipv4 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add oneflow --direction egress --ethertype ipv6 --protocol udp --port-min 8081 --port-max 8081",
];
const OF: VmDef = VmDef::new("of", 0, 0, "--security-group oneflow");
const OPEER: VmDef = VmDef::new("opeer", 0, 1, "--security-group server");
/// Third parties (they would even take ICMP from anyone as a new message).
const OT1: VmDef = VmDef::new("ot1", 0, 2, "--security-group server");
const OT2: VmDef = VmDef::new("ot2", 1, 3, "--security-group server");

/// A VM whose egress allows one UDP flow opens it, then sends third VMs (same chassis and
/// across) a port unreachable quoting that flow's answer: not related (it is not
/// addressed to the quoted packet's source), so judged by the sender's egress rules as a
/// new ICMP message — denied, counted `sg_denied` egress, never delivered. IPv4 and IPv6.
fn icmp_error_to_a_third_party(hook: Hook) {
    let t = Sg::new(hook, 2, ONEFLOW, &[OF, OPEER, OT1, OT2]);
    let of = t.ctl(&OF);
    for third in [&OT1, &OT2] {
        t.wait_udp(&OF, third);
        let cap = Capture::start(t.vm(third), "eth0", "in", "");
        for v6 in [false, true] {
            let f = fam(v6);
            // The one flow, from a known port: its answer is what the error quotes.
            let r = of.call(
                json!({"op": "udp_send", "dst": OPEER.ip(v6), "port": UDP_ECHO,
                                   "sport": 40500, "payload": unique("oneflow"), "wait": 2.0}),
            );
            assert_eq!(r["reply"], json!(true), "{f}: the allowed flow to the peer");
            let mark = unique("icmp-err");
            let err = json!({"op": "craft", "kind": "icmp_error", "dst_mac": third.mac,
                             "src": OF.ip(v6), "dst": third.ip(v6),
                             "qsrc": OPEER.ip(v6), "qdst": OF.ip(v6),
                             "qsport": UDP_ECHO, "qdport": 40500, "payload": mark});
            t.denied(
                &format!(
                    "{f}: port unreachable about the peer's answer → {}",
                    third.name
                ),
                &OF,
                third,
                EGRESS,
                1.0,
                || of.craft(err),
                || assert!(of.udp_echoed(third.ip(v6), None), "{f}: fence lost"),
                || cap.count(mark.as_bytes()) > 0,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------
// docs/THREATS.md row 10: fragments.

/// `frag`: ingress UDP 8081, TCP 8080, ICMP/ICMPv6 from anywhere.
const FRAG: &[&str] = &[
    "secgroup create frag --name frag",
    "secgroup rule-add frag --direction ingress --ethertype ipv4 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add frag --direction ingress --ethertype ipv6 --protocol udp --port-min 8081 --port-max 8081",
    "secgroup rule-add frag --direction ingress --ethertype ipv4 --protocol tcp --port-min 8080 --port-max 8080",
    "secgroup rule-add frag --direction ingress --ethertype ipv6 --protocol tcp --port-min 8080 --port-max 8080",
    "secgroup rule-add frag --direction ingress --ethertype ipv4 --protocol icmp",
    "secgroup rule-add frag --direction ingress --ethertype ipv6 --protocol icmpv6",
];
/// Port security on (`default`): its fragments are judged at its egress first.
const FA: VmDef = VmDef::new("fa", 0, 0, "");
/// Port security off: no security group at its port, its fragments are judged at the
/// receiver's ingress.
const FC: VmDef = VmDef::new("fc", 0, 1, "--no-port-security");
const FB1: VmDef = VmDef::new("fb1", 0, 2, "--security-group frag");
const FB2: VmDef = VmDef::new("fb2", 1, 3, "--security-group frag");

/// Legitimately fragmented datagrams (the kernel fragments a 3000-byte UDP datagram and a
/// 3000-byte ping on the 1450-byte MTU) pass both ways and are reassembled; a later
/// fragment without its first, a tiny first fragment and an overlapping fragment are
/// dropped and counted — at the sender's egress (port with security groups) or at the
/// receiver's ingress (sender without port security).
fn fragments(hook: Hook) {
    let t = Sg::new(hook, 2, FRAG, &[FA, FC, FB1, FB2]);
    for rx in [&FB1, &FB2] {
        let r = t.ctl(rx);
        let cap = Capture::start(t.vm(rx), "eth0", "in", "");
        for tx in [&FA, &FC] {
            t.wait_udp(tx, rx);
            let s = t.ctl(tx);
            for v6 in [false, true] {
                let f = format!("{} {} → {}", fam(v6), tx.name, rx.name);
                // Legit: fragmented both ways, reassembled by both kernels.
                let tag = unique("big");
                let res = s.udp(rx.ip(v6), None, &tag, 3000, 3.0);
                let got = r.udp_got(&tag);
                assert!(
                    got.iter().any(|(len, _)| *len == 3000),
                    "{f}: a 3000-byte UDP datagram (fragmented) not reassembled by the receiver: got {got:?}; counters:\n{}",
                    t.counters()
                );
                assert!(
                    res["reply"] == json!(true) && res["reply_len"] == json!(3000),
                    "{f}: the echo of a 3000-byte UDP datagram (fragmented by the receiver) did not come back: {res}; counters:\n{}",
                    t.counters()
                );
                let six = if v6 { "-6" } else { "-4" };
                let o = t.vm(tx).try_exec(&format!(
                    "ping {six} -q -n -M dont -s 3000 -c 2 -i 0.2 -W 2 {}",
                    rx.ip(v6)
                ));
                assert!(
                    o.status.success(),
                    "{f}: 3000-byte ping (fragmented): {}",
                    String::from_utf8_lossy(&o.stdout)
                );

                // Attacks. Judged at the sender's egress when it has security groups.
                let (judge, dir) = if tx.args.contains("--no-port-security") {
                    (t.hv(rx), INGRESS)
                } else {
                    (t.hv(tx), EGRESS)
                };
                let craft = |kind: &str, dport: u16, mark: &str, id: u32| {
                    s.craft(json!({"op": "craft", "kind": kind, "dst_mac": rx.mac,
                                   "src": tx.ip(v6), "dst": rx.ip(v6), "dport": dport,
                                   "payload": mark, "id": id}));
                };
                let fence = || assert!(s.udp_echoed(rx.ip(v6), None), "{f}: fence lost");
                let mut cases: Vec<(&str, u16, &[&str])> = vec![
                    ("frag_no_first", UDP_ECHO, &["frag_no_first"]),
                    ("frag_overlap", UDP_ECHO, &["frag_overlap"]),
                ];
                // A tiny first fragment (TCP header cut short): `frag_tiny`, whoever
                // judges it (port security refuses it as such too); for IPv6 a first
                // fragment without the whole upper-layer header is a header-chain
                // violation (RFC 7112).
                let tiny: &[&str] = if v6 {
                    &["ipv6_header_chain"]
                } else {
                    &["frag_tiny"]
                };
                cases.push(("frag_tiny", TCP_ECHO, tiny));
                for (i, (kind, dport, reasons)) in cases.into_iter().enumerate() {
                    let mark = unique(kind);
                    let before: Vec<f64> = reasons
                        .iter()
                        .map(|r| judge.counter(dir, "drop", r))
                        .collect();
                    craft(
                        kind,
                        dport,
                        &mark,
                        0x7100 + i as u32 + if v6 { 16 } else { 0 },
                    );
                    let start = Instant::now();
                    let counted = poll_until(COUNT, || {
                        reasons
                            .iter()
                            .zip(&before)
                            .any(|(r, b)| judge.counter(dir, "drop", r) > *b)
                    });
                    assert!(
                        counted,
                        "{f}: {kind}: none of {reasons:?} counted {dir} on {} within {:?}; counters:\n{}",
                        judge.name,
                        start.elapsed(),
                        t.counters()
                    );
                    fence();
                    assert_eq!(
                        cap.count(mark.as_bytes()),
                        0,
                        "{f}: {kind}: the attack fragment reached the receiver:\n{}",
                        cap.summary()
                    );
                }
            }
        }
    }
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
    allow_deny,
    rule_removal_cuts_stream,
    remote_group_membership,
    stateful_confusion,
    fragments,
    icmp_error_to_a_third_party,
);
