//! Shared VIPs proven with real keepalived (issue 5, items 3–5): two VMs on different
//! chassis share a VIP as an allowed address pair and run keepalived (VRRPv3, unicast
//! adverts); clients on a third chassis reach it from the same network and, through the
//! distributed router, from another subnet. Every scenario of the two ways runs with the
//! agents in `--aap-mode broadcast` and in `--aap-mode detection`.
//!
//! The topology (`tests::vrrp::vip_cloud`): m1 on hv1 (keepalived priority 150, the
//! master) and m2 on hv2 (priority 100) share 192.0.2.100 on net1; c1 (net1) and c2 (net2,
//! through router r1) on hv3 are the clients.
//!
//! Who received the clients' VIP traffic is read from a tcpdump on each holder's eth0;
//! "received none" is decided after a fence: once each client's ping to that holder's own
//! address (the same path) has arrived, the VIP pings sent before it would have too.
//! Failovers, claims and expiries are polled with deadlines, never slept for.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    process::Stdio,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use tests::{
    framework::{
        http::{metric, metric_sum},
        netns::Netns,
        process::{run, wait_until},
        python::python_command,
    },
    harness::{Capture, Cloud, Hypervisor, ping},
    vrrp::{
        C1, CLIENTS, HOLDERS, Keepalived, M1, M2, VIP, VRID, VmDef, VrrpConf, has_addr,
        route_vip_via_vmac, vip_cloud, vm,
    },
};

const READY: Duration = Duration::from_secs(30);
/// Adverts every 0.5 s: a silent master is replaced after ~1.7 s; long enough that a busy
/// 2-CPU test machine does not fail over by accident.
const ADVERT: f64 = 0.5;
/// Pings per client in one traffic round.
const N: usize = 10;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Mode {
    Broadcast,
    Detection,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Broadcast => "broadcast",
            Mode::Detection => "detection",
        }
    }
}

/// The topology above, agents running in `mode`.
struct Vip {
    mode: Mode,
    /// The VIP's AAP MAC is the VRRP virtual MAC on both ports (keepalived `use_vmac`),
    /// else each port's own MAC.
    vmac: bool,
    cloud: Cloud,
    /// keepalived of m1, m2 (when started).
    ka: [Option<Keepalived>; 2],
}

impl Vip {
    fn new(mode: Mode, vmac: bool, agent_args: &[&str]) -> Vip {
        Vip {
            mode,
            vmac,
            cloud: vip_cloud(mode.as_str(), vmac, agent_args),
            ka: [None, None],
        }
    }

    fn vm(&self, d: &VmDef) -> &Netns {
        vm(&self.cloud, d)
    }

    fn hv(&self, d: &VmDef) -> &Hypervisor {
        &self.cloud.hvs[d.hv]
    }

    fn conf(&self, me: &VmDef, peer: &VmDef, priority: u8) -> VrrpConf {
        VrrpConf::for_vip(me, peer, priority, ADVERT, self.vmac)
    }

    /// keepalived on m1 (priority 150) and m2 (100); returns once m1 is master (holds the
    /// VIP) and m2 is backup.
    fn start_keepalived(&mut self) {
        let k1 = Keepalived::start(self.vm(&M1), &self.conf(&M1, &M2, 150));
        let k2 = Keepalived::start(self.vm(&M2), &self.conf(&M2, &M1, 100));
        self.ka = [Some(k1), Some(k2)];
        if self.vmac {
            for h in HOLDERS {
                route_vip_via_vmac(self.vm(h), h, VRID);
            }
        }
        wait_until("m1 master (holds the VIP), m2 backup", READY, || {
            has_addr(self.vm(&M1), VIP) && !has_addr(self.vm(&M2), VIP)
        });
    }

    fn keepalived(&mut self, holder: usize) -> &mut Keepalived {
        self.ka[holder].as_mut().expect("keepalived started")
    }

    /// The active entry of the VIP as `dfctl aap list` shows it (`None`: none).
    fn active(&self) -> Option<Value> {
        self.active_of(VIP)
    }

    /// The active entry of a shared IP of net1.
    fn active_of(&self, ip: &str) -> Option<Value> {
        let rows: Value =
            serde_json::from_str(&self.cloud.dfctl("--output json aap list --lswitch net1"))
                .expect("aap list JSON");
        rows.as_array()
            .expect("rows")
            .iter()
            .find(|r| r["ip"] == ip)
            .and_then(|r| (!r["active"].is_null()).then(|| r["active"].clone()))
    }

    /// Waits until the VIP's active port is `port` (`None`: no entry).
    #[track_caller]
    fn wait_active(&self, port: Option<&str>) -> Option<Value> {
        let start = Instant::now();
        loop {
            let a = self.active();
            if a.as_ref().map(|a| a["port"].as_str().unwrap_or_default()) == port {
                return a;
            }
            if start.elapsed() > READY {
                panic!(
                    "active port of {VIP}: want {port:?}, have {a:?} after {READY:?}\n{}\nhistory:\n{}",
                    self.cloud.dfctl("aap list"),
                    self.cloud
                        .try_dfctl(&format!("aap history net1 {VIP}"))
                        .stdout
                        .iter()
                        .map(|&b| b as char)
                        .collect::<String>()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// The VIP's history records (oldest first).
    fn history(&self) -> Vec<Value> {
        let out = self
            .cloud
            .try_dfctl(&format!("--output json aap history net1 {VIP}"));
        if !out.status.success() {
            return Vec::new();
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .expect("history JSON")
            .as_array()
            .cloned()
            .unwrap_or_default()
    }

    /// Waits until `client` pings the VIP.
    #[track_caller]
    fn wait_reach(&self, client: &VmDef) {
        let start = Instant::now();
        while !ping(self.vm(client), VIP, 1) {
            if start.elapsed() > READY {
                panic!(
                    "{} cannot ping the VIP {VIP} after {READY:?} ({} way); aap list:\n{}\ncounters:\n{}",
                    client.name,
                    self.mode.as_str(),
                    self.cloud.dfctl("aap list"),
                    self.counters()
                );
            }
        }
    }

    /// Non-zero datapath counters of every chassis, for failure messages.
    fn counters(&self) -> String {
        let mut s = String::new();
        for hv in &self.cloud.hvs {
            for l in hv.metrics().lines().filter(|l| {
                (l.starts_with("dragonflow_datapath_packets_total{")
                    || l.starts_with("dragonflow_activeport_"))
                    && !l.ends_with(" 0")
                    && !l.contains("_bucket")
            }) {
                s.push_str(&format!("  {}: {l}\n", hv.name));
            }
        }
        s
    }

    /// Each client pings the VIP `N` times while both holders (those whose link is up)
    /// capture; returns, per holder (m1, m2), the echo requests to the VIP received from
    /// each client (c1, c2), counted after each client's fence (a ping to that holder's
    /// own address, over the same path) has arrived.
    fn traffic(&self, holders_up: [bool; 2]) -> [[usize; 2]; 2] {
        let caps: Vec<Option<Capture>> = HOLDERS
            .iter()
            .zip(holders_up)
            .map(|(h, up)| {
                up.then(|| {
                    Capture::start(
                        self.vm(h),
                        "eth0",
                        "in",
                        &format!(
                            "icmp[icmptype] == icmp-echo and (dst host {VIP} or dst host {})",
                            h.ip
                        ),
                    )
                })
            })
            .collect();
        for c in CLIENTS {
            // Replies come from the master; the count is read from the captures.
            self.vm(c)
                .try_exec(&format!("ping -q -n -c {N} -i 0.02 -W 1 {VIP}"));
        }
        let mut out = [[0; 2]; 2];
        for (i, (h, cap)) in HOLDERS.iter().zip(&caps).enumerate() {
            let Some(cap) = cap else { continue };
            for (j, c) in CLIENTS.iter().enumerate() {
                let fenced = |cap: &Capture| echo_count(cap, c.ip, h.ip) >= 1;
                let start = Instant::now();
                while !fenced(cap) {
                    assert!(
                        start.elapsed() < READY,
                        "fence {} → {} never arrived:\n{}",
                        c.name,
                        h.name,
                        cap.summary()
                    );
                    self.vm(c)
                        .try_exec(&format!("ping -q -n -c 1 -W 1 {}", h.ip));
                }
                out[i][j] = echo_count(cap, c.ip, VIP);
            }
        }
        eprintln!(
            "{} way: VIP echo requests received (from c1, c2): m1 {:?}, m2 {:?}",
            self.mode.as_str(),
            out[0],
            out[1]
        );
        out
    }

    /// Asserts who got the clients' VIP traffic: `master` got all of it; the other holder
    /// (if its link is up) got none in the detection way and all of it in the broadcast
    /// way, which delivers every packet for a shared VIP to every holder: routed (the
    /// router's neighbour entry for the VIP is the holders' group), to a shared VRRP MAC,
    /// and even to one holder's own MAC (a client that resolved the VIP to the master).
    #[track_caller]
    fn assert_receivers(&self, got: [[usize; 2]; 2], master: usize, other_up: bool) {
        let other = 1 - master;
        assert_eq!(
            got[master],
            [N, N],
            "{} (master) must get every VIP ping of c1 and c2 ({} way); counters:\n{}",
            HOLDERS[master].name,
            self.mode.as_str(),
            self.counters()
        );
        if !other_up {
            return;
        }
        let want = match self.mode {
            Mode::Detection => [0, 0],
            Mode::Broadcast => [N, N],
        };
        assert_eq!(
            got[other],
            want,
            "{} (not master) got {:?} of the VIP pings of (c1, c2), want {want:?} in the {} way",
            HOLDERS[other].name,
            got[other],
            self.mode.as_str()
        );
    }

    /// In the detection way, waits for `port` to be active (claimed by a GARP from its
    /// own chassis); in the broadcast way, checks that nobody claims (after the master's
    /// GARP has reached its agent).
    fn check_claim(&self, holder: &VmDef) {
        let port = format!("p{}", holder.name);
        match self.mode {
            Mode::Detection => {
                let a = self.wait_active(Some(&port)).expect("active");
                assert_eq!(a["chassis"], format!("hv{}", holder.hv + 1));
                let want_mac = if self.vmac {
                    VrrpConf::vmac(VRID)
                } else {
                    holder.mac.to_string()
                };
                assert_eq!(a["mac"], want_mac, "the MAC the holder announced");
                let h = self.history();
                let last = h.last().expect("a history record");
                assert_eq!(
                    (
                        last["event"].as_str(),
                        last["port"].as_str(),
                        last["why"].as_str()
                    ),
                    (Some("claimed"), Some(port.as_str()), Some("garp")),
                    "history: {h:?}"
                );
            }
            Mode::Broadcast => {
                let hv = self.hv(holder);
                wait_until(
                    &format!("{}'s GARP for the VIP seen by its agent", holder.name),
                    READY,
                    || {
                        hv.ns
                            .http_get(&hv.metrics_addr, "/garp")
                            .is_some_and(|(_, b)| b.contains(VIP))
                    },
                );
                assert_eq!(self.active(), None, "the broadcast way claims nothing");
                assert_eq!(
                    metric(&hv.metrics(), "dragonflow_activeport_claims_total", &[]),
                    Some(0.0)
                );
            }
        }
    }
}

/// Echo requests to `dst` from `src` in a capture.
fn echo_count(cap: &Capture, src: &str, dst: &str) -> usize {
    let (s, d) = (ip4(src), ip4(dst));
    cap.frames()
        .iter()
        .filter(|f| {
            let b = &f.bytes;
            b.len() >= 35
                && b[12..14] == [0x08, 0x00]
                && b[23] == 1
                && b[26..30] == s
                && b[30..34] == d
                && b[14 + usize::from(b[14] & 0x0f) * 4] == 8
        })
        .count()
}

fn ip4(s: &str) -> [u8; 4] {
    s.parse::<std::net::Ipv4Addr>().expect("ipv4").octets()
}

fn counter(hv: &Hypervisor, name: &str, labels: &[(&str, &str)]) -> f64 {
    metric_sum(&hv.metrics(), name, labels)
}

/// `garp.py` in a VM namespace.
fn send_garp(ns: &Netns, args: &[&str]) {
    let mut c = python_command(ns, "garp.py");
    c.args(args);
    run(&mut c);
}

/// A gratuitous ARP for the VIP from holder `d`, which has it configured (`arping -U`: the
/// frame leaves at once, where a scapy process first spends a second importing), sent
/// again until its hypervisor reports it. The datapath reports one event per (port, IP)
/// per `--garp-min-interval-ms` (200 ms), and the agent's probe of an active holder draws
/// an ARP reply from it every second: a single GARP landing within 200 ms of such a reply
/// is counted but not reported (one run in five). keepalived repeats its own for the same
/// reason.
fn announce(t: &Vip, d: &VmDef) {
    let hv = t.hv(d);
    let reported = || counter(hv, "dragonflow_garp_events_total", &[("op", "arp_request")]);
    let before = reported();
    wait_until(
        "the holder's GARP reported by its hypervisor",
        READY,
        || {
            t.vm(d)
                .exec(&format!("arping -U -q -c 1 -I eth0 -s {VIP} {VIP}"));
            reported() > before
        },
    );
}

/// Stop the master's keepalived (SIGTERM: a priority-0 advert, VIP removed) → the backup
/// takes over → the clients' traffic reaches the new master.
fn keepalived_stop(mode: Mode, vmac: bool) {
    let mut t = Vip::new(mode, vmac, &[]);
    t.start_keepalived();
    t.check_claim(&M1);
    for c in CLIENTS {
        t.wait_reach(c);
    }
    if vmac {
        let n = t.vm(&C1).exec(&format!("ip neigh show {VIP}"));
        let n = String::from_utf8_lossy(&n.stdout).to_lowercase();
        assert!(
            n.contains(&VrrpConf::vmac(VRID)),
            "c1 resolves the VIP to the VRRP MAC: {n}"
        );
    }
    t.assert_receivers(t.traffic([true, true]), 0, true);

    t.keepalived(0).stop();
    wait_until("m2 takes the VIP over", READY, || {
        has_addr(t.vm(&M2), VIP) && !has_addr(t.vm(&M1), VIP)
    });
    t.check_claim(&M2);
    for c in CLIENTS {
        t.wait_reach(c);
    }
    t.assert_receivers(t.traffic([true, true]), 1, true);
}

/// Cut the master's link (its VM-side interface down) → the backup stops hearing adverts
/// and takes over → the clients' traffic reaches it.
fn link_cut(mode: Mode) {
    let mut t = Vip::new(mode, false, &[]);
    t.start_keepalived();
    t.check_claim(&M1);
    for c in CLIENTS {
        t.wait_reach(c);
    }
    t.assert_receivers(t.traffic([true, true]), 0, true);

    t.vm(&M1).exec("ip link set eth0 down");
    wait_until("m2 takes the VIP over", READY, || has_addr(t.vm(&M2), VIP));
    t.check_claim(&M2);
    for c in CLIENTS {
        t.wait_reach(c);
    }
    t.assert_receivers(t.traffic([false, true]), 1, false);
    assert!(t.keepalived(0).running(), "m1's keepalived still runs");
}

/// The master stops answering ARP (nft drops its ARP replies; it keeps its VIP, its
/// adverts and its pings): after `--probe-misses` unanswered probes its agent removes
/// the entry (`probe_loss`) and forwarding falls back to the broadcast way.
fn detection_probe_expiry() {
    let mut t = Vip::new(Mode::Detection, false, &[]);
    t.start_keepalived();
    t.check_claim(&M1);
    let hv1 = t.hv(&M1);
    let answered = |hv: &Hypervisor| {
        counter(
            hv,
            "dragonflow_activeport_probes_total",
            &[("outcome", "answered")],
        )
    };
    wait_until("m1 answers two probes", READY, || answered(hv1) >= 2.0);
    assert_eq!(
        t.active().expect("active")["port"],
        "pm1",
        "answered probes keep the entry"
    );
    for c in CLIENTS {
        t.wait_reach(c);
    }
    t.assert_receivers(t.traffic([true, true]), 0, true);

    let m1 = t.vm(&M1);
    m1.exec("nft add table arp dft");
    m1.exec("nft add chain arp dft out { type filter hook output priority 0 ; }");
    m1.exec("nft add rule arp dft out arp operation reply drop");
    t.wait_active(None);
    let h = t.history();
    let last = h.last().expect("history");
    assert_eq!(
        (
            last["event"].as_str(),
            last["port"].as_str(),
            last["why"].as_str(),
            last["by"].as_str()
        ),
        (
            Some("released"),
            Some("pm1"),
            Some("probe_loss"),
            Some("hv1")
        ),
        "history: {h:?}"
    );
    let hv1 = t.hv(&M1);
    assert!(
        counter(
            hv1,
            "dragonflow_activeport_probes_total",
            &[("outcome", "expired")]
        ) >= 1.0
    );
    assert_eq!(
        counter(
            hv1,
            "dragonflow_activeport_removed_total",
            &[("why", "probe_loss")]
        ),
        1.0
    );
    // Broadcast way again: the clients' pings reach both holders (m1, still master with
    // its VIP, answers them).
    for c in CLIENTS {
        t.wait_reach(c);
    }
    let got = t.traffic([true, true]);
    assert_eq!(
        got,
        [[N, N], [N, N]],
        "VIP pings after the expiry reach both holders"
    );
    assert_eq!(t.active(), None, "nothing re-claimed the VIP");
}

/// docs/THREATS.md rows 4 and 4b: a GARP for the VIP from a port that does not list it is dropped
/// (`arp_spoof`) and moves nothing; one from a port that lists it moves the VIP; a quick
/// move back is dampened.
fn detection_rogue_and_listed_garps() {
    // A first back-off of 4 s (1 s by default): "straight back" below must land within it
    // however slow the machine is (a loaded 2-core CI took more than 1 s between the two
    // announcements). Both holders have the VIP configured at once here (no keepalived),
    // which no real pair does; on a loaded CI the active one's answers to the liveness
    // probes were seen to pause for a few seconds after the other announced it, and three
    // misses released it before the dampened move back (8 s) — probes are not what this
    // test is about, so it allows ten.
    let t = Vip::new(
        Mode::Detection,
        false,
        &["--claim-backoff-ms", "4000", "--probe-misses", "10"],
    );
    // No keepalived: the VIP on both holders answers the probes; GARPs are crafted.
    for h in HOLDERS {
        t.vm(h).exec(&format!("ip addr add {VIP}/32 dev eth0"));
    }
    announce(&t, &M1);
    let first = t.wait_active(Some("pm1")).expect("active");

    let hv3 = t.hv(&C1);
    let spoof = hv3.drops("arp_spoof");
    send_garp(t.vm(&C1), &["--ip", VIP]);
    wait_until("the rogue GARP dropped as arp_spoof on hv3", READY, || {
        hv3.drops("arp_spoof") > spoof
    });
    let after = t.active().expect("still active");
    assert_eq!(after, first, "a rogue GARP moves nothing");
    assert_eq!(t.history().len(), 1, "and writes no history");
    assert!(
        !hv3.ns
            .http_get(&hv3.metrics_addr, "/garp")
            .is_some_and(|(_, b)| b.contains(VIP)),
        "no GARP event for the rogue frame"
    );

    // A listed port moves it…
    announce(&t, &M2);
    t.wait_active(Some("pm2"));
    // …and moving it straight back (well within the back-off) is dampened, then done.
    let hv1 = t.hv(&M1);
    let dampened = counter(hv1, "dragonflow_activeport_dampened_total", &[]);
    announce(&t, &M1);
    t.wait_active(Some("pm1"));
    assert!(
        counter(hv1, "dragonflow_activeport_dampened_total", &[]) > dampened,
        "the move back within the back-off was dampened"
    );
    let h = t.history();
    let seq: Vec<(&str, &str)> = h
        .iter()
        .map(|r| {
            (
                r["port"].as_str().unwrap_or_default(),
                r["event"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        seq,
        [("pm1", "claimed"), ("pm2", "claimed"), ("pm1", "claimed")],
        "history: {h:?}"
    );
    let claims: f64 = t
        .cloud
        .hvs
        .iter()
        .map(|hv| counter(hv, "dragonflow_activeport_claims_total", &[]))
        .sum();
    assert_eq!(claims, 3.0, "three claims written in all");
}

/// The AAP is removed from the active port: its agent removes the entry (`aap_removed`).
fn detection_aap_removed() {
    let mut t = Vip::new(Mode::Detection, false, &[]);
    t.start_keepalived();
    t.check_claim(&M1);
    t.cloud
        .dfctl(&format!("lport update pm1 --remove-aap {VIP}"));
    t.wait_active(None);
    let h = t.history();
    let last = h.last().expect("history");
    assert_eq!(
        (
            last["event"].as_str(),
            last["port"].as_str(),
            last["why"].as_str()
        ),
        (Some("released"), Some("pm1"), Some("aap_removed")),
        "history: {h:?}"
    );
    assert_eq!(
        counter(
            t.hv(&M1),
            "dragonflow_activeport_removed_total",
            &[("why", "aap_removed")]
        ),
        1.0
    );
}

/// The active holder's agent is killed (-9) and started again: the entry stays (moved to
/// the new agent's lease before the old lease expires), and traffic continues.
fn detection_agent_restart() {
    // A 12 s lease (6 s by default): the new agent must take the claim over before the old
    // lease runs out, and a loaded 2-core CI once took 6.2 s to start it.
    let mut t = Vip::new(Mode::Detection, false, &["--lease-ttl", "12"]);
    t.start_keepalived();
    let before = t.wait_active(Some("pm1")).expect("active");
    for c in CLIENTS {
        t.wait_reach(c);
    }
    let chassis_key = "/dragonflow/chassis/hv1";
    let active_key = format!("/dragonflow/activeport/net1/{VIP}");
    let old_lease = lease_of(&t.cloud, chassis_key).expect("hv1's lease");
    assert_eq!(
        lease_of(&t.cloud, &active_key),
        Some(old_lease),
        "claimed under hv1's lease"
    );

    // Pings from both clients for the whole restart.
    let pingers: Vec<_> = CLIENTS
        .iter()
        .map(|c| {
            t.vm(c)
                .command("ping")
                .args(["-q", "-n", "-i", "0.05", "-w", "12", "-W", "1", VIP])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn ping")
        })
        .collect();
    t.cloud.hvs[0].kill_agent();
    t.cloud.start_agent(0);
    wait_until(
        "hv1's new agent moved the claim to its lease",
        READY,
        || {
            counter(
                &t.cloud.hvs[0],
                "dragonflow_activeport_reattached_total",
                &[],
            ) >= 1.0
        },
    );
    let new_lease = lease_of(&t.cloud, chassis_key).expect("hv1's new lease");
    assert_ne!(new_lease, old_lease);
    // The old lease runs out (--lease-ttl, 12 s): the entry must outlive it.
    wait_until("the killed agent's lease to expire", READY, || {
        let out = t
            .cloud
            .etcdctl(&["lease", "timetolive", &format!("{old_lease:x}")]);
        String::from_utf8_lossy(&out.stdout).contains("already expired")
    });
    let after = t.active().expect("the entry survived the restart");
    assert_eq!(after, before, "same holder, same since");
    assert_eq!(lease_of(&t.cloud, &active_key), Some(new_lease));
    for (c, p) in CLIENTS.iter().zip(pingers) {
        let out = p.wait_with_output().expect("ping");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (sent, recv) = ping_stats(&text);
        assert!(
            sent > 100 && recv * 100 >= sent * 95,
            "{} → VIP across the agent restart: {recv}/{sent} replies\n{text}",
            c.name
        );
    }
    assert!(
        t.history().len() == 1,
        "no move in the history: {:?}",
        t.history()
    );
}

/// The lease a key is attached to.
fn lease_of(cloud: &Cloud, key: &str) -> Option<i64> {
    let out = cloud.etcdctl(&["get", key, "-w", "json"]);
    let v: Value = serde_json::from_slice(&out.stdout).ok()?;
    v["kvs"][0]["lease"].as_i64()
}

/// The active holder's chassis dies (its agent killed, not restarted): the claim goes
/// with its lease, and the agent of the other holder records `lease_lost`.
fn detection_dead_chassis() {
    let mut t = Vip::new(Mode::Detection, false, &["--lease-ttl", "3"]);
    t.start_keepalived();
    t.check_claim(&M1);
    t.cloud.hvs[0].kill_agent();
    t.wait_active(None);
    wait_until("hv2 records the lost lease", READY, || {
        t.history().last().is_some_and(|r| {
            r["event"] == "released" && r["why"] == "lease_lost" && r["port"] == "pm1"
        })
    });
    let h = t.history();
    assert_eq!(
        h.last().expect("history")["by"],
        "hv2",
        "recorded by the agent hosting the other holder: {h:?}"
    );
    assert_eq!(h.len(), 2, "one claim, one loss: {h:?}");
    assert_eq!(
        counter(
            t.hv(&M2),
            "dragonflow_activeport_removed_total",
            &[("why", "lease_lost")]
        ),
        1.0
    );
}

/// An IPv6 VIP: an unsolicited neighbour advertisement claims it, the DAD-style neighbour
/// solicitations of the probes are answered (the holder defends its address with an NA),
/// and when the address goes the probes expire the entry.
fn detection_ipv6() {
    const VIP6: &str = "2001:db8:1::100";
    let t = Vip::new(Mode::Detection, false, &[]);
    for h in HOLDERS {
        t.cloud
            .dfctl(&format!("lport update p{} --add-aap {VIP6}", h.name));
    }
    let m1 = t.vm(&M1);
    m1.exec(&format!("ip -6 addr add {VIP6}/64 dev eth0 nodad"));
    send_garp(m1, &["--ip", VIP6]);
    let start = Instant::now();
    let a = loop {
        if let Some(a) = t.active_of(VIP6) {
            break a;
        }
        assert!(
            start.elapsed() < READY,
            "no claim of {VIP6}:
{}",
            t.cloud.dfctl("aap list")
        );
        thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        (a["port"].as_str(), a["reason"].as_str()),
        (Some("pm1"), Some("unsolicited_na"))
    );
    let hv1 = t.hv(&M1);
    let answered = || {
        counter(
            hv1,
            "dragonflow_activeport_probes_total",
            &[("outcome", "answered")],
        )
    };
    wait_until("m1 answers two IPv6 probes", READY, || answered() >= 2.0);
    m1.exec(&format!("ip -6 addr del {VIP6}/64 dev eth0"));
    wait_until("the IPv6 entry expires", READY, || {
        t.active_of(VIP6).is_none()
    });
    assert_eq!(
        counter(
            hv1,
            "dragonflow_activeport_removed_total",
            &[("why", "probe_loss")]
        ),
        1.0
    );
}

/// (transmitted, received) from ping's summary line.
fn ping_stats(text: &str) -> (usize, usize) {
    let line = text
        .lines()
        .find(|l| l.contains("transmitted"))
        .unwrap_or_default();
    let num = |key: &str| {
        line.split(',')
            .find(|p| p.contains(key))
            .and_then(|p| p.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    (num("transmitted"), num("received"))
}

#[test]
fn broadcast_stop_master() {
    keepalived_stop(Mode::Broadcast, false);
}
#[test]
fn detection_stop_master() {
    keepalived_stop(Mode::Detection, false);
}
#[test]
fn broadcast_cut_master_link() {
    link_cut(Mode::Broadcast);
}
#[test]
fn detection_cut_master_link() {
    link_cut(Mode::Detection);
}
#[test]
fn broadcast_vrrp_virtual_mac() {
    keepalived_stop(Mode::Broadcast, true);
}
#[test]
fn detection_vrrp_virtual_mac() {
    keepalived_stop(Mode::Detection, true);
}
#[test]
fn detection_expiry_after_missed_probes() {
    detection_probe_expiry();
}
#[test]
fn detection_rogue_garp_moves_nothing() {
    detection_rogue_and_listed_garps();
}
#[test]
fn detection_aap_removed_while_active() {
    detection_aap_removed();
}
#[test]
fn detection_agent_restart_keeps_entry() {
    detection_agent_restart();
}
#[test]
fn detection_dead_chassis_loses_claims() {
    detection_dead_chassis();
}
#[test]
fn detection_ipv6_vip_claimed_probed_expired() {
    detection_ipv6();
}

#[test]
fn ping_summary_parses() {
    assert_eq!(
        ping_stats("--- x ---\n240 packets transmitted, 238 received, 0% packet loss"),
        (240, 238)
    );
}
