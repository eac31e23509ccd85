//! Failover latency of a shared VIP (issue 5, item 6), measured side by side in one run:
//!   - `bridge`: the two keepalived VMs and the client on a plain Linux bridge (the bridge
//!     learns the VRRP MAC's new port from the new master's gratuitous ARP);
//!   - `dragonflow, broadcast way` and `dragonflow, detection way`: the shared-VIP topology
//!     of the tests (`tests::vrrp::vip_cloud`: m1 on hv1, m2 on hv2, clients c1 on net1 and
//!     c2 on net2 through the distributed router, both on hv3), agents in that mode.
//!
//! Both holders run keepalived (VRRPv3, adverts every 0.1 s, unicast, `use_vmac`: the VIP's
//! AAP MAC is the VRRP virtual MAC, `nopreempt`), each client sends a UDP datagram to
//! the VIP every millisecond (a thread of this process inside the client's namespace). One failover: the master's link is cut (its VM-side interface down: the
//! VM neither sends nor receives, as when it dies; keepalived goes to FAULT and drops the
//! VIP), the backup takes over when adverts stop (keepalived's own advert-driven failover);
//! then the link comes back and the old master stays backup (nopreempt), and the next
//! failover goes the other way. (Killing keepalived instead leaves the VIP configured on
//! the old master, which keeps answering the clients from the VRRP MAC: on the bridge its
//! replies pull the MAC's FDB entry back, a split brain rather than a failover.) The
//! captures are on the new master's tap (hypervisor side; on the bridge, its bridge port)
//! and give, per failover:
//!   - keepalived: the link cut → the new master's first gratuitous ARP leaving its tap;
//!   - the datapath and control plane: that GARP → the first packet of each client
//!     delivered into the new master's tap;
//!   - in the detection way, from the new master's agent: datapath event → claim committed
//!     in etcd (`dragonflow_activeport_claim_seconds`) and the etcd round trips inside it
//!     (`dragonflow_activeport_claim_etcd_seconds`).
//!
//! Failovers are at least 2.5 s apart, so the claim dampening (which backs off only when
//! moves come within twice its 1 s back-off) never delays one. Usage:
//! `df-bench-failover [FAILOVERS [bridge|broadcast|detection]…]` (default: 20 failovers in
//! each setup); prints markdown.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    fs,
    net::UdpSocket,
    os::fd::AsRawFd as _,
    path::PathBuf,
    process::Child,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use tests::{
    framework::{
        http::metric,
        netns::Netns,
        process::{cmd, unique_prefix, wait_until},
    },
    harness::{Cloud, ping},
    vrrp::{
        C1, CLIENTS, HOLDERS, Keepalived, M1, M2, VIP, VRID, VmDef, VrrpConf, has_addr,
        route_vip_via_vmac, vip_cloud, vm,
    },
};

/// keepalived advert interval (s): the backup takes over after 3 × 0.1 s + skew.
const ADVERT: f64 = 0.1;
/// Minimum time between two failovers (moves): above twice the 1 s claim back-off.
const SPACING: Duration = Duration::from_millis(2500);
const DEADLINE: Duration = Duration::from_secs(20);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    Bridge,
    Broadcast,
    Detection,
}

impl Setup {
    fn name(self) -> &'static str {
        match self {
            Setup::Bridge => "Linux bridge (keepalived alone)",
            Setup::Broadcast => "dragonflow, broadcast way",
            Setup::Detection => "dragonflow, detection way",
        }
    }
}

/// The bridge baseline: m1, m2 and c1 behind veths on one bridge in its own namespace.
struct BridgeBed {
    vms: Vec<Netns>,
    br: Netns,
}

impl BridgeBed {
    fn new() -> Self {
        let prefix = unique_prefix();
        let br = Netns::new(&format!("{prefix}-br"));
        br.exec("ip link add br0 type bridge");
        br.exec("ip link set br0 up");
        let mut vms = Vec::new();
        for d in [&M1, &M2, &C1] {
            let ns = Netns::new(&format!("{prefix}-{}", d.name));
            cmd(&format!(
                "ip link add tap{} netns {} type veth peer name eth0 netns {}",
                d.name, br.name, ns.name
            ));
            ns.exec(&format!("ip link set eth0 address {}", d.mac));
            ns.exec(&format!("ip addr add {}/24 dev eth0", d.ip));
            ns.exec("ip link set eth0 up");
            br.exec(&format!("ip link set tap{} master br0", d.name));
            br.exec(&format!("ip link set tap{} up", d.name));
            vms.push(ns);
        }
        BridgeBed { vms, br }
    }
}

enum Bed {
    Bridge(BridgeBed),
    // Boxed: a whole cloud (hypervisors, VMs, etcd members) is much larger than the bridge.
    Cloud(Box<Cloud>),
}

impl Bed {
    fn vm(&self, d: &VmDef) -> &Netns {
        match self {
            Bed::Bridge(b) => {
                let i = [&M1, &M2, &C1]
                    .iter()
                    .position(|x| x.name == d.name)
                    .expect("a VM of the bridge bed");
                &b.vms[i]
            }
            Bed::Cloud(c) => vm(c, d),
        }
    }

    /// The namespace holding `d`'s tap.
    fn tap_ns(&self, d: &VmDef) -> &Netns {
        match self {
            Bed::Bridge(b) => &b.br,
            Bed::Cloud(c) => &c.hvs[d.hv].ns,
        }
    }

    fn clients(&self) -> Vec<&'static VmDef> {
        match self {
            Bed::Bridge(_) => vec![&C1],
            Bed::Cloud(_) => CLIENTS.to_vec(),
        }
    }

    /// (claim seconds sum, count, etcd seconds sum, count) of `d`'s agent.
    fn claim_metrics(&self, d: &VmDef) -> Option<[f64; 4]> {
        let Bed::Cloud(c) = self else { return None };
        let m = c.hvs[d.hv].metrics();
        let g = |n: &str| metric(&m, n, &[]).unwrap_or(0.0);
        Some([
            g("dragonflow_activeport_claim_seconds_sum"),
            g("dragonflow_activeport_claim_seconds_count"),
            g("dragonflow_activeport_claim_etcd_seconds_sum"),
            g("dragonflow_activeport_claim_etcd_seconds_count"),
        ])
    }
}

/// A tcpdump with epoch timestamps (`-tt`), its lines kept in a file.
struct TsCapture {
    child: Child,
    out: PathBuf,
}

impl TsCapture {
    fn start(ns: &Netns, iface: &str, filter: &str) -> Self {
        let base = std::env::temp_dir().join(format!("{}-{iface}-failover", ns.name));
        let out = base.with_extension("txt");
        let err = base.with_extension("err");
        let child = ns
            .command("tcpdump")
            .args(["-i", iface, "-Q", "inout", "-tt", "-nn", "-e", "-l", "-U"])
            .args(filter.split_whitespace())
            .stdout(fs::File::create(&out).expect("capture file"))
            .stderr(fs::File::create(&err).expect("capture err"))
            .spawn()
            .expect("spawn tcpdump");
        wait_until("tcpdump listening", Duration::from_secs(10), || {
            fs::read_to_string(&err).is_ok_and(|e| e.contains("listening on"))
        });
        let _ = fs::remove_file(err);
        TsCapture { child, out }
    }

    /// (epoch seconds, line) of every frame so far.
    fn lines(&self) -> Vec<(f64, String)> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (ts, _) = l.split_once(' ')?;
                Some((ts.parse().ok()?, l.to_string()))
            })
            .collect()
    }
}

impl Drop for TsCapture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.out);
    }
}

fn now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A gratuitous ARP for the VIP (spa = tpa = VIP; the probes say `tell 0.0.0.0`, the
/// clients `tell <their IP>`).
fn is_garp(line: &str) -> bool {
    line.contains(&format!("Request who-has {VIP} ")) && line.contains(&format!("tell {VIP},"))
}

/// A client datagram (`192.0.2.13.40000 > 192.0.2.100.9: UDP, length 12`).
fn is_echo_from(line: &str, client: &VmDef) -> bool {
    line.contains(&format!(" {}.", client.ip)) && line.contains(&format!("> {VIP}.{PORT}: UDP"))
}

/// Destination port of the clients' datagrams (discard).
const PORT: u16 = 9;

/// A thread inside a client's namespace sending a datagram to the VIP every millisecond
/// until dropped.
struct Sender {
    stop: Arc<AtomicBool>,
    handle: Option<thread::JoinHandle<()>>,
}

impl Sender {
    fn start(ns: &Netns) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = format!("/var/run/netns/{}", ns.name);
        let flag = stop.clone();
        let handle = thread::spawn(move || {
            let file = fs::File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns on a valid netns fd affects only this thread.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            let sock = UdpSocket::bind("0.0.0.0:0").expect("udp socket");
            let to = format!("{VIP}:{PORT}");
            let mut next = Instant::now();
            while !flag.load(Ordering::Relaxed) {
                // Errors (no route or neighbour yet, full queue) are part of a failover.
                let _ = sock.send_to(b"dft-failover", &to);
                next += Duration::from_millis(1);
                if let Some(d) = next.checked_duration_since(Instant::now()) {
                    thread::sleep(d);
                } else {
                    next = Instant::now();
                }
            }
        });
        Sender {
            stop,
            handle: Some(handle),
        }
    }
}

impl Drop for Sender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One failover's figures (ms).
#[derive(Clone, Debug, Default)]
struct Sample {
    keepalived: f64,
    /// Per client of the bed, in order.
    deliver: Vec<Option<f64>>,
    claim: Option<f64>,
    etcd: Option<f64>,
}

fn run_setup(setup: Setup, failovers: usize) -> Vec<Sample> {
    eprintln!("== {}", setup.name());
    let bed = match setup {
        Setup::Bridge => Bed::Bridge(BridgeBed::new()),
        Setup::Broadcast => Bed::Cloud(Box::new(vip_cloud("broadcast", true, &[]))),
        Setup::Detection => Bed::Cloud(Box::new(vip_cloud("detection", true, &[]))),
    };
    let conf = |me: &VmDef, peer: &VmDef, prio: u8| VrrpConf {
        nopreempt: true,
        ..VrrpConf::for_vip(me, peer, prio, ADVERT, true)
    };
    let confs = [conf(&M1, &M2, 150), conf(&M2, &M1, 100)];
    let ka = [
        Keepalived::start(bed.vm(&M1), &confs[0]),
        Keepalived::start(bed.vm(&M2), &confs[1]),
    ];
    for h in HOLDERS {
        route_vip_via_vmac(bed.vm(h), h, VRID);
    }
    wait_until("m1 master, m2 backup", DEADLINE, || {
        has_addr(bed.vm(&M1), VIP) && !has_addr(bed.vm(&M2), VIP)
    });
    for c in bed.clients() {
        let start = Instant::now();
        while !ping(bed.vm(c), VIP, 1) {
            assert!(
                start.elapsed() < DEADLINE,
                "{}: {} cannot ping the VIP",
                setup.name(),
                c.name
            );
        }
    }
    // A datagram every millisecond from each client for the whole run.
    let _senders: Vec<Sender> = bed
        .clients()
        .iter()
        .map(|c| Sender::start(bed.vm(c)))
        .collect();

    let mut samples = Vec::new();
    let mut master = 0usize;
    let mut last_move = Instant::now();
    for i in 0..failovers {
        let (old, new) = (master, 1 - master);
        let (old_d, new_d) = (HOLDERS[old], HOLDERS[new]);
        if let Some(rest) = SPACING.checked_sub(last_move.elapsed()) {
            thread::sleep(rest);
        }
        let cap = TsCapture::start(
            bed.tap_ns(new_d),
            &format!("tap{}", new_d.name),
            &format!("arp or ( udp and dst host {VIP} and dst port {PORT} )"),
        );
        let before = bed.claim_metrics(new_d);
        let backups_before = ka[old].log().matches("Entering BACKUP STATE").count();
        let t_cut = now();
        bed.vm(old_d).exec("ip link set eth0 down");
        // The new master's GARP, then each client's first packet after it.
        let clients = bed.clients();
        let start = Instant::now();
        let (t_garp, firsts) = loop {
            let lines = cap.lines();
            let garp = lines
                .iter()
                .find(|(t, l)| *t >= t_cut && is_garp(l))
                .map(|(t, _)| *t);
            if let Some(g) = garp {
                let firsts: Vec<Option<f64>> = clients
                    .iter()
                    .map(|c| {
                        lines
                            .iter()
                            .find(|(t, l)| *t >= g && is_echo_from(l, c))
                            .map(|(t, _)| *t)
                    })
                    .collect();
                if firsts.iter().all(Option::is_some) || start.elapsed() > DEADLINE {
                    break (g, firsts);
                }
            } else if start.elapsed() > DEADLINE {
                panic!(
                    "{}: failover {i}: no GARP from {} within {DEADLINE:?}",
                    setup.name(),
                    new_d.name
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let mut s = Sample {
            keepalived: (t_garp - t_cut) * 1e3,
            deliver: firsts
                .iter()
                .map(|f| f.map(|t| (t - t_garp) * 1e3))
                .collect(),
            ..Default::default()
        };
        if setup == Setup::Detection {
            let b = before.expect("metrics");
            let mut after = b;
            wait_until("the new master's claim counted", DEADLINE, || {
                after = bed.claim_metrics(new_d).expect("metrics");
                after[1] > b[1] && after[3] > b[3]
            });
            s.claim = Some((after[0] - b[0]) / (after[1] - b[1]) * 1e3);
            s.etcd = Some((after[2] - b[2]) / (after[3] - b[3]) * 1e3);
        }
        last_move = Instant::now();
        eprintln!(
            "  failover {i:2} → {}: keepalived {:.0} ms, delivered after GARP {:?} ms, claim {:?} ms, etcd {:?} ms",
            new_d.name, s.keepalived, s.deliver, s.claim, s.etcd
        );
        samples.push(s);
        drop(cap);
        // The old master's link comes back; it stays backup (nopreempt).
        bed.vm(old_d).exec("ip link set eth0 up");
        wait_until(&format!("{} back as backup", old_d.name), DEADLINE, || {
            ka[old].log().matches("Entering BACKUP STATE").count() > backups_before
                && !has_addr(bed.vm(old_d), VIP)
        });
        route_vip_via_vmac(bed.vm(old_d), old_d, VRID);
        master = new;
    }
    samples
}

/// Nearest-rank percentile.
fn pct(v: &[f64], q: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

fn cell(v: &[f64]) -> String {
    if v.is_empty() {
        return "—".into();
    }
    format!("{:.1} / {:.1}", pct(v, 0.5), pct(v, 0.99))
}

fn main() {
    let failovers: usize = std::env::args()
        .nth(1)
        .map(|a| a.parse().expect("FAILOVERS must be a number"))
        .unwrap_or(20);
    assert!(
        failovers >= 1,
        "at least one failover per setup (the issue asks for 20)"
    );
    // Optional setup names after the count (bridge, broadcast, detection): all by default.
    let named: Vec<String> = std::env::args().skip(2).collect();
    let setups: Vec<Setup> = [Setup::Bridge, Setup::Broadcast, Setup::Detection]
        .into_iter()
        .filter(|s| {
            named.is_empty()
                || named
                    .iter()
                    .any(|n| s.name().to_lowercase().contains(&n.to_lowercase()))
        })
        .collect();
    let results: Vec<(Setup, Vec<Sample>)> = setups
        .iter()
        .map(|&s| (s, run_setup(s, failovers)))
        .collect();

    println!(
        "{failovers} failovers per setup; keepalived VRRPv3, advert_int {ADVERT} s, unicast, \
         use_vmac, nopreempt; master's link cut; clients send a datagram every 1 ms; \
         percentiles nearest-rank (p99 of 20 = the worst).\n"
    );
    println!(
        "| setup | keepalived: link cut → new master's GARP (p50 / p99 ms) | GARP → first packet of c1 (same network) at the new master | GARP → first packet of c2 (routed) | of which: datapath event → claim committed in etcd | of which: etcd round trips | lost |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (setup, samples) in &results {
        let col = |f: &dyn Fn(&Sample) -> Option<f64>| -> Vec<f64> {
            samples.iter().filter_map(f).collect()
        };
        let k = col(&|s| Some(s.keepalived));
        let d1 = col(&|s| s.deliver.first().copied().flatten());
        let d2 = col(&|s| s.deliver.get(1).copied().flatten());
        let claim = col(&|s| s.claim);
        let etcd = col(&|s| s.etcd);
        let lost: usize = samples
            .iter()
            .map(|s| s.deliver.iter().filter(|d| d.is_none()).count())
            .sum();
        println!(
            "| {} | {} | {} | {} | {} | {} | {lost} |",
            setup.name(),
            cell(&k),
            cell(&d1),
            if *setup == Setup::Bridge {
                "—".into()
            } else {
                cell(&d2)
            },
            cell(&claim),
            cell(&etcd)
        );
    }
    println!();
    for (setup, samples) in &results {
        if *setup != Setup::Detection {
            continue;
        }
        // Where the time goes in the detection way: claim (event → etcd commit), then the
        // watch to the client's chassis, its reconciliation and map write, then the next
        // ping (≤ 1 ms).
        let rest: Vec<f64> = samples
            .iter()
            .filter_map(|s| Some(s.deliver.first().copied().flatten()? - s.claim?))
            .collect();
        println!(
            "Detection way, GARP → c1 packet split: claim committed {} ms (etcd {} ms), then \
             watch → client chassis' maps → next packet {} ms (p50 / p99).",
            cell(&samples.iter().filter_map(|s| s.claim).collect::<Vec<_>>()),
            cell(&samples.iter().filter_map(|s| s.etcd).collect::<Vec<_>>()),
            cell(&rest)
        );
    }
}
