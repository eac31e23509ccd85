//! `cargo xtask demo`: two simulated hypervisors joined over VXLAN, a real etcd and a
//! real agent on each (forwarding in eBPF, no Linux bridge anywhere), two networks joined
//! by a distributed router, VMs in network namespaces. Shows same-chassis, cross-chassis
//! and routed pings, ARP answered by the datapath, a spoof dropped with its counter,
//! allowed address pairs honoured live, a keepalived VIP shared by two VMs on two
//! hypervisors failing over in the detection way (the claim, the new active port and the
//! gap a pinging client saw), `dfctl monitor` showing a spoof as it happens, `dfctl trace`
//! naming the rule a denied packet lacks, and security groups: every port is
//! in the `default` group (egress anywhere, ingress from the group's members) until web3
//! moves to a group of its own, where a ping is denied (counted) until a rule allows it.
//! Ctrl-C (or `--duration`) removes every namespace, link, pin and process it made.
//!
//! ```text
//!   hv1 (198.18.0.10)  web1 192.0.2.11 (lists the VIP .100, keepalived master)
//!                      client 192.0.2.13            on net1 (VNI 100, detection way)
//!                      app 198.51.100.10            on net2 (VNI 200)
//!   hv2 (198.18.0.11)  web2 192.0.2.12 (lists the VIP .100, keepalived backup)
//!                      web3 192.0.2.14              on net1
//!   router r1: 192.0.2.1 on net1, 198.51.100.1 on net2 (every VM's default gateway)
//! ```
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use tests::{
    framework::{hook::Hook, http::metric, netns::Netns, process::wait_until},
    harness::{Cloud, HvOpts, Hypervisor, VmOpts, ping},
    vrrp::{Keepalived, VrrpConf},
};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

struct Args {
    hook: Hook,
    duration: Option<Duration>,
}

fn parse_args() -> Args {
    let mut args = Args {
        hook: Hook::Tc,
        duration: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--hook" => {
                args.hook = match it.next().as_deref() {
                    Some("xdp") => Hook::Xdp,
                    Some("tc") => Hook::Tc,
                    other => usage(&format!("--hook takes xdp or tc, not {other:?}")),
                }
            }
            "--duration" => {
                let secs: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| usage("--duration takes a number of seconds"));
                args.duration = Some(Duration::from_secs(secs));
            }
            "-h" | "--help" => usage(""),
            other => usage(&format!("unknown argument {other:?}")),
        }
    }
    args
}

fn usage(err: &str) -> ! {
    if !err.is_empty() {
        eprintln!("error: {err}");
    }
    eprintln!("usage: df-demo [--hook xdp|tc] [--duration SECS]");
    std::process::exit(2)
}

fn step(s: &str) {
    use std::io::IsTerminal as _;
    if std::io::stdout().is_terminal() {
        println!("\n\x1b[1m==> {s}\x1b[0m");
    } else {
        println!("\n==> {s}");
    }
}

fn counter(hv: &Hypervisor, direction: &str, verdict: &str, label: (&str, &str)) -> f64 {
    metric(
        &hv.metrics(),
        "dragonflow_datapath_packets_total",
        &[("direction", direction), ("verdict", verdict), label],
    )
    .unwrap_or(0.0)
}

/// A from-VM pass/forwarding path counter.
fn path(hv: &Hypervisor, name: &str) -> f64 {
    counter(hv, "from_vm", "pass", ("path", name))
}

fn ok(b: bool) -> &'static str {
    if b { "ok" } else { "FAILED" }
}

/// One VM of the demo.
struct VmDef {
    name: &'static str,
    hv: usize,
    net: &'static str,
    mac: &'static str,
    ip: &'static str,
    prefix: u8,
    gateway: &'static str,
    extra: &'static str,
}

const VMS: &[VmDef] = &[
    VmDef {
        name: "web1",
        hv: 0,
        net: "net1",
        mac: "fa:16:3e:00:00:01",
        ip: "192.0.2.11",
        prefix: 24,
        gateway: "192.0.2.1",
        extra: "--aap 192.0.2.100",
    },
    VmDef {
        name: "web2",
        hv: 1,
        net: "net1",
        mac: "fa:16:3e:00:00:02",
        ip: "192.0.2.12",
        prefix: 24,
        gateway: "192.0.2.1",
        extra: "--aap 192.0.2.100",
    },
    VmDef {
        name: "client",
        hv: 0,
        net: "net1",
        mac: "fa:16:3e:00:00:03",
        ip: "192.0.2.13",
        prefix: 24,
        gateway: "192.0.2.1",
        extra: "",
    },
    VmDef {
        name: "app",
        hv: 0,
        net: "net2",
        mac: "fa:16:3e:00:00:04",
        ip: "198.51.100.10",
        prefix: 24,
        gateway: "198.51.100.1",
        extra: "",
    },
    VmDef {
        name: "web3",
        hv: 1,
        net: "net1",
        mac: "fa:16:3e:00:00:05",
        ip: "192.0.2.14",
        prefix: 24,
        gateway: "192.0.2.1",
        extra: "",
    },
];

fn main() {
    let args = parse_args();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let mut failed = Vec::new();

    step("Starting etcd (temporary data dir) in an underlay namespace");
    let mut cloud = Cloud::new();
    println!(
        "    etcd at {} (namespace {})",
        cloud.etcd.endpoints(),
        cloud.ul.name
    );

    step(&format!(
        "Creating hypervisors hv1 and hv2 on the underlay 198.18.0.0/24, no Linux bridge (hook = {})",
        args.hook.as_str()
    ));
    for name in ["hv1", "hv2"] {
        cloud.add_hypervisor_opts(name, args.hook, HvOpts { bridge: false });
    }

    step("Creating two networks, a router between them and the ports, through dfctl");
    let mut cmds = vec![
        "lswitch create net1 --name front --vni 100 --mtu 1450 --aap-mode detection".to_string(),
        "subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1".into(),
        "lswitch create net2 --name back --vni 200 --mtu 1450".into(),
        "subnet create sub2 --lswitch net2 --cidr 198.51.100.0/24 --gateway 198.51.100.1".into(),
        "lrouter create r1 --name demo-router".into(),
        "lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 --ip 192.0.2.1/24".into(),
        "lrouter add-interface r1 --lswitch net2 --mac fa:16:3e:00:02:01 --ip 198.51.100.1/24"
            .into(),
    ];
    for v in VMS {
        cmds.push(format!(
            "lport create {} --lswitch {} --mac {} --fixed-ip {} {} --chassis hv{} --ifname tap{}",
            v.name,
            v.net,
            v.mac,
            v.ip,
            v.extra,
            v.hv + 1,
            v.name
        ));
    }
    for c in &cmds {
        println!(
            "    $ dfctl {}",
            c.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        cloud.dfctl(c);
    }
    print!("{}", cloud.dfctl("lport list"));

    step("Booting the VMs (default route via the router) and starting both agents");
    for v in VMS {
        let opts = VmOpts::with_gateways(&[v.gateway]);
        let addr = format!("{}/{}", v.ip, v.prefix);
        let mut addrs = vec![addr.as_str()];
        // web1 configures an address it was never given (.66); the VIP is keepalived's.
        if v.name == "web1" {
            addrs.push("192.0.2.66/32");
        }
        cloud.add_vm_opts(
            v.hv,
            v.name,
            &format!("tap{}", v.name),
            v.mac,
            &addrs,
            &opts,
        );
    }
    for hv in 0..cloud.hvs.len() {
        cloud.start_agent(hv);
    }
    for hv in &cloud.hvs {
        wait_until(
            &format!("forwarding on in {}'s datapath", hv.name),
            Duration::from_secs(30),
            || metric(&hv.metrics(), "dragonflow_forwarding_enabled", &[]) == Some(1.0),
        );
        println!(
            "    {}: agent healthy, forwarding in eBPF on; metrics on {} inside {}",
            hv.name,
            Hypervisor::METRICS,
            hv.ns.name
        );
    }

    let vm = |name: &str| {
        let i = VMS.iter().position(|v| v.name == name).expect("vm");
        &cloud.vms[i].ns
    };
    let (web1, web2, client, app, web3) =
        (vm("web1"), vm("web2"), vm("client"), vm("app"), vm("web3"));
    let (hv1, hv2) = (&cloud.hvs[0], &cloud.hvs[1]);
    let mut show = |what: &str, ok_: bool| {
        println!("    {what}: {}", ok(ok_));
        if !ok_ {
            failed.push(what.to_string());
        }
    };
    // The first ping of each path also waits for the other chassis to be known.
    let reach = |ns: &tests::framework::netns::Netns, ip: &str| {
        let t = Instant::now();
        while t.elapsed() < Duration::from_secs(20) {
            if ping(ns, ip, 1) {
                return ping(ns, ip, 3);
            }
        }
        false
    };

    step("Same chassis: client -> web1 (hv1 -> hv1), redirected tap to tap");
    let before = path(hv1, "l2_local");
    show("ping 192.0.2.11", reach(client, "192.0.2.11"));
    println!(
        "    hv1 from_vm l2_local: {before} -> {}",
        path(hv1, "l2_local")
    );

    step("Cross chassis: client (hv1) -> web3 (hv2), through df-vxlan with VNI 100");
    let (before, before2) = (
        path(hv1, "l2_tunnel"),
        counter(hv2, "from_tunnel", "pass", ("path", "l2_local")),
    );
    show("ping 192.0.2.14", reach(client, "192.0.2.14"));
    println!(
        "    hv1 from_vm l2_tunnel: {before} -> {}; hv2 from_tunnel l2_local: {before2} -> {}",
        path(hv1, "l2_tunnel"),
        counter(hv2, "from_tunnel", "pass", ("path", "l2_local"))
    );

    step(
        "Routed: client (net1) -> app (net2) through r1, and app -> web3 (routed, then tunnelled)",
    );
    let before = path(hv1, "routed");
    show(
        "ping 198.51.100.10 from client",
        reach(client, "198.51.100.10"),
    );
    show("ping 192.0.2.14 from app", reach(app, "192.0.2.14"));
    show(
        "ping the router's interface 192.0.2.1",
        reach(client, "192.0.2.1"),
    );
    println!(
        "    hv1 from_vm routed: {before} -> {}",
        path(hv1, "routed")
    );

    step("ARP answered by the datapath: client asks for web1's MAC (arping -b: broadcasts only)");
    let before = path(hv1, "arp_responder");
    let ok_ = client
        .try_exec("arping -q -b -c 3 -w 5 -I eth0 192.0.2.11")
        .status
        .success();
    let after = path(hv1, "arp_responder");
    show("arping -b 192.0.2.11 answered", ok_);
    show(
        "answered by the responder (counter moved by 3)",
        after - before >= 3.0,
    );
    println!(
        "    dragonflow_datapath_packets_total{{verdict=\"pass\",path=\"arp_responder\"}}: {before} -> {after}"
    );

    step("Spoof: web1 sends from 192.0.2.66, an address that is neither fixed nor an AAP");
    let before = counter(hv1, "from_vm", "drop", ("reason", "src_ip_spoof"));
    let answered = web1
        .try_exec("ping -q -c 3 -i 0.2 -W 1 -I 192.0.2.66 192.0.2.13")
        .status
        .success();
    let after = counter(hv1, "from_vm", "drop", ("reason", "src_ip_spoof"));
    show("ping -I 192.0.2.66 not answered", !answered);
    show("counted as src_ip_spoof", after > before);
    println!(
        "    dragonflow_datapath_packets_total{{verdict=\"drop\",reason=\"src_ip_spoof\"}}: {before} -> {after}"
    );
    println!("    $ dfctl monitor --port web1 --count 1   (on hv1, while web1 spoofs again)");
    let seen = monitor_one_spoof(hv1, web1);
    for l in seen.lines() {
        println!("    {l}");
    }
    show(
        "dfctl monitor shows the spoof (port web1, src_ip_spoof, 192.0.2.66)",
        seen.contains("web1") && seen.contains("src_ip_spoof") && seen.contains("192.0.2.66"),
    );

    step("Allowed address pairs are live: add 192.0.2.66 to web1, then remove it");
    let spoof_ping = || {
        web1.try_exec("ping -q -c 1 -W 1 -I 192.0.2.66 192.0.2.13")
            .status
            .success()
    };
    cloud.dfctl("lport update web1 --add-aap 192.0.2.66");
    let t = Instant::now();
    let added = (0..100).any(|_| spoof_ping());
    show(
        &format!(
            "after --add-aap: ping -I 192.0.2.66 answered ({} ms to take effect)",
            t.elapsed().as_millis()
        ),
        added,
    );
    cloud.dfctl("lport update web1 --remove-aap 192.0.2.66");
    let removed = (0..100).any(|_| !spoof_ping());
    show("after --remove-aap: dropped again", removed);

    step(
        "Shared VIP, detection way: keepalived on web1 (hv1, master) and web2 (hv2, backup) share 192.0.2.100",
    );
    let mut keepalived = [
        (web1, "web1", "192.0.2.11", 150),
        (web2, "web2", "192.0.2.12", 100),
    ]
    .map(|(ns, name, ip, priority)| {
        let peer = if ip == "192.0.2.11" {
            "192.0.2.12"
        } else {
            "192.0.2.11"
        };
        Keepalived::start(
            ns,
            &VrrpConf {
                name: name.into(),
                iface: "eth0".into(),
                vrid: 51,
                priority,
                advert_int: 1.0,
                src: Some(ip.into()),
                peers: vec![peer.into()],
                vips: vec!["192.0.2.100/24".into()],
                use_vmac: false,
                nopreempt: false,
            },
        )
    });
    let claimed = wait_active(&cloud, "web1");
    show(
        "web1's GARP claimed the VIP (active port web1 on hv1)",
        claimed,
    );
    print!("{}", cloud.dfctl("aap list --lswitch net1"));
    show(
        "client pings the VIP (answered by web1)",
        reach(client, "192.0.2.100"),
    );
    println!("    client pings the VIP every 50 ms; stopping keepalived on web1 (the master)");
    let pinger = Pinger::start(client, "192.0.2.100");
    // Some replies before the failover, so the gap is measured from a steady state.
    pinger.wait_replies(10);
    let t = Instant::now();
    keepalived[0].stop();
    let moved = wait_active(&cloud, "web2");
    show(
        &format!(
            "the VIP moved: active port web2 on hv2 ({} ms after the stop)",
            t.elapsed().as_millis()
        ),
        moved,
    );
    let replies_before = pinger.replies();
    pinger.wait_replies(replies_before + 10);
    let stats = pinger.finish();
    show(
        &format!(
            "client's pings continue through web2: {} sent, {} answered, longest gap {} ms",
            stats.sent, stats.received, stats.longest_gap_ms
        ),
        stats.received > replies_before && stats.longest_gap_ms < 10_000,
    );
    print!("{}", cloud.dfctl("aap history net1 192.0.2.100"));
    keepalived[1].stop();

    step("Security groups: every port so far is in `default` (dfctl gave it to them)");
    print!("{}", cloud.dfctl("secgroup show default"));
    let sg_cmds = [
        "secgroup create web --name web",
        "lport update web3 --security-group web",
    ];
    for c in sg_cmds {
        println!("    $ dfctl {c}");
        cloud.dfctl(c);
    }
    println!("    web3 (hv2) is now only in `web`: egress anywhere, no ingress rule yet");
    let denied = |hv: &Hypervisor| counter(hv, "to_vm", "drop", ("reason", "sg_denied"));
    let before = denied(hv2);
    // The change reaches hv2's datapath within moments: poll until the ping fails.
    let t = Instant::now();
    let cut = (0..100).any(|_| !ping(client, "192.0.2.14", 1));
    show(
        &format!(
            "client -> web3 ping denied at web3's port (seen {} ms after the change, the failed ping's 1 s wait included)",
            t.elapsed().as_millis()
        ),
        cut,
    );
    let after = denied(hv2);
    show(
        "counted on hv2 as sg_denied, direction to_vm",
        after > before,
    );
    println!(
        "    hv2 dragonflow_datapath_packets_total{{direction=\"to_vm\",verdict=\"drop\",reason=\"sg_denied\"}}: {before} -> {after}"
    );
    let c = "secgroup rule-add web --direction ingress --protocol icmp";
    println!("    $ dfctl {c}");
    println!("    rule {}", cloud.dfctl(c).trim());
    let t = Instant::now();
    let allowed = (0..100).any(|_| ping(client, "192.0.2.14", 1));
    show(
        &format!(
            "client -> web3 ping allowed by the new rule ({} ms to take effect)",
            t.elapsed().as_millis()
        ),
        allowed,
    );
    print!("{}", cloud.dfctl("secgroup show web"));
    // web3 is no longer in `default`: the client's ingress (members of `default` only)
    // does not admit what web3 opens; the replies to what the client opens pass.
    show(
        "web3 -> client ping denied (web3 left `default`)",
        !ping(web3, "192.0.2.13", 1),
    );
    println!(
        "    Why can web3 not reach web2 (both on hv2)? Trace it through hv2's loaded programs:"
    );
    println!("    $ dfctl trace --from web3 --dst 192.0.2.12 --proto tcp --dport 80");
    let trace = dfctl_on(
        hv2,
        &cloud.etcd.endpoints(),
        &[
            "trace",
            "--from",
            "web3",
            "--dst",
            "192.0.2.12",
            "--proto",
            "tcp",
            "--dport",
            "80",
        ],
    );
    for l in trace.lines() {
        println!("    {l}");
    }
    show(
        "the trace drops it as sg_denied and names the missing ingress rule of `default`",
        trace.contains("verdict: drop (sg_denied)")
            && trace.contains("no ingress rule of groups default"),
    );
    let events = |hv: &Hypervisor, event: &str| {
        tests::framework::http::metric_sum(
            &hv.metrics(),
            "dragonflow_datapath_events_total",
            &[("event", event)],
        )
    };
    for hv in [hv1, hv2] {
        println!(
            "    {}: conntrack new {}, established {}, sg_denied from_vm {} / to_vm {}",
            hv.name,
            events(hv, "ct_new"),
            events(hv, "ct_established"),
            counter(hv, "from_vm", "drop", ("reason", "sg_denied")),
            denied(hv)
        );
    }

    step("Datapath verdict counters (non-zero), from GET /metrics of each agent");
    for hv in &cloud.hvs {
        for l in hv.metrics().lines() {
            if l.starts_with("dragonflow_datapath_packets_total") && !l.ends_with(" 0") {
                println!("    {}: {l}", hv.name);
            }
        }
    }

    match args.duration {
        Some(d) => {
            step(&format!(
                "Running for {} s more (Ctrl-C to stop early)",
                d.as_secs()
            ));
            let end = Instant::now() + d;
            while Instant::now() < end && !STOP.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
        }
        None => {
            step("Demo running: explore with the commands below, Ctrl-C to clean up");
            println!(
                "    ip netns exec {} curl -s {}/metrics",
                hv1.ns.name,
                Hypervisor::METRICS
            );
            println!("    ip netns exec {} ping 198.51.100.10", client.name);
            println!("    ip netns exec {} ping 192.0.2.14", client.name);
            while !STOP.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    step("Cleaning up: agents, VMs, hypervisors, bpffs pins, etcd and its data dir");
    drop(cloud);
    println!("    done");
    if !failed.is_empty() {
        eprintln!("demo: {} step(s) failed: {failed:?}", failed.len());
        std::process::exit(1);
    }
}

/// `dfctl --etcd-endpoints <etcd> <args> --agent <hv's agent>` run in the hypervisor's namespace (where its agent
/// listens); stdout, or what went wrong.
fn dfctl_on(hv: &Hypervisor, etcd: &str, args: &[&str]) -> String {
    let o = hv
        .ns
        .command(tests::framework::process::dfctl_bin())
        .args(["--etcd-endpoints", etcd])
        .args(args)
        .args(["--agent", &format!("http://{}", Hypervisor::METRICS)])
        .output();
    match o {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        ),
        Err(e) => format!("dfctl: {e}"),
    }
}

/// Starts `dfctl monitor --port web1 --count 1` on hv1, then has web1 spoof (a ping from
/// 192.0.2.66) until the monitor has printed its event (20 s at most); its output.
fn monitor_one_spoof(hv: &Hypervisor, web1: &Netns) -> String {
    use std::io::Read as _;
    let child = hv
        .ns
        .command(tests::framework::process::dfctl_bin())
        .args(["monitor", "--port", "web1", "--count", "1"])
        .args(["--agent", &format!("http://{}", Hypervisor::METRICS)])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn();
    let Ok(mut child) = child else {
        return "dfctl monitor did not start".into();
    };
    let start = Instant::now();
    // The monitor switches the events on once connected: spoof until it has seen one.
    while start.elapsed() < Duration::from_secs(20) && matches!(child.try_wait(), Ok(None)) {
        web1.try_exec("ping -q -c 1 -W 1 -I 192.0.2.66 192.0.2.13");
    }
    let _ = child.kill();
    let _ = child.wait();
    let mut out = String::new();
    if let Some(mut so) = child.stdout.take() {
        let _ = so.read_to_string(&mut out);
    }
    out
}

/// Waits (30 s at most) until `port` is the active holder of the VIP on net1.
fn wait_active(cloud: &Cloud, port: &str) -> bool {
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(30) {
        let out = cloud.try_dfctl("--output json aap list --lswitch net1");
        if out.status.success()
            && let Ok(rows) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
            && rows.as_array().is_some_and(|rows| {
                rows.iter()
                    .any(|r| r["ip"] == "192.0.2.100" && r["active"]["port"] == port)
            })
        {
            return true;
        }
        thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A `ping -D` from a VM running in the background: its replies' timestamps give the
/// longest silence a client saw during a failover.
struct Pinger {
    child: std::process::Child,
    out: std::sync::Arc<std::sync::Mutex<String>>,
    reader: Option<thread::JoinHandle<()>>,
}

struct PingStats {
    sent: usize,
    received: usize,
    longest_gap_ms: u64,
}

impl Pinger {
    fn start(ns: &Netns, ip: &str) -> Pinger {
        use std::io::Read as _;
        let mut child = ns
            .command("ping")
            .args(["-D", "-n", "-i", "0.05", "-W", "1", ip])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn ping");
        let mut stdout = child.stdout.take().expect("ping stdout");
        let out = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let sink = out.clone();
        let reader = thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock()
                    .expect("ping output")
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Pinger {
            child,
            out,
            reader: Some(reader),
        }
    }

    fn text(&self) -> String {
        self.out.lock().expect("ping output").clone()
    }

    fn replies(&self) -> usize {
        self.text()
            .lines()
            .filter(|l| l.contains("bytes from"))
            .count()
    }

    /// Waits (30 s at most) for `n` replies in all.
    fn wait_replies(&self, n: usize) {
        let start = Instant::now();
        while self.replies() < n && start.elapsed() < Duration::from_secs(30) {
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops ping (SIGINT: it prints its summary) and reads its figures.
    fn finish(mut self) -> PingStats {
        // SAFETY: kill(2) of the child this guard started.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let _ = self.child.wait();
        if let Some(r) = self.reader.take() {
            let _ = r.join();
        }
        let text = self.text();
        let stamps: Vec<f64> = text
            .lines()
            .filter(|l| l.contains("bytes from"))
            .filter_map(|l| l.strip_prefix('[')?.split(']').next()?.parse().ok())
            .collect();
        let longest_gap_ms = stamps
            .windows(2)
            .map(|w| ((w[1] - w[0]) * 1000.0) as u64)
            .max()
            .unwrap_or(0);
        // "N packets transmitted, M received"
        let sent = text
            .lines()
            .find_map(|l| l.split(" packets transmitted").next()?.trim().parse().ok())
            .unwrap_or(0);
        PingStats {
            sent,
            received: stamps.len(),
            longest_gap_ms,
        }
    }
}

impl Drop for Pinger {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
