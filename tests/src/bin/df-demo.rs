//! `cargo xtask demo`: one simulated hypervisor with three VMs in network namespaces, a
//! real etcd and a real agent. Shows legitimate traffic passing, allowed address pairs
//! being honoured live, and spoofs being dropped with their counters. Ctrl-C (or
//! `--duration`) removes every namespace, link, pin and process it made.

use std::{
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use tests::harness::{Cloud, Hook, Hypervisor, metric, ping, wait_until};

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

fn counter(hv: &Hypervisor, verdict: &str, label: (&str, &str)) -> f64 {
    metric(
        &hv.metrics(),
        "dragonflow_datapath_packets_total",
        &[("direction", "from_vm"), ("verdict", verdict), label],
    )
    .unwrap_or(0.0)
}

fn main() {
    let args = parse_args();
    // SAFETY: the handler only stores to an atomic.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }

    step("Starting etcd (temporary data dir) in an underlay namespace");
    let mut cloud = Cloud::new();
    println!(
        "    etcd at {} (namespace {})",
        cloud.etcd.endpoint(),
        cloud.ul.name
    );

    step(&format!(
        "Creating hypervisor hv1 with its agent (hook = {})",
        args.hook.as_str()
    ));
    let hv = cloud.add_hypervisor("hv1", args.hook);

    step("Creating the network and ports through dfctl");
    for c in [
        "lswitch create net1 --name demo-net --vni 100 --mtu 1450",
        "subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1",
        "lport create web1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11 \
         --aap 192.0.2.100 --chassis hv1 --ifname tapweb1",
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --aap 192.0.2.100 --chassis hv1 --ifname tapweb2",
        "lport create client --lswitch net1 --mac fa:16:3e:00:00:03 --fixed-ip 192.0.2.13 \
         --chassis hv1 --ifname tapclient",
    ] {
        println!(
            "    $ dfctl {}",
            c.split_whitespace().collect::<Vec<_>>().join(" ")
        );
        cloud.dfctl(c);
    }
    print!("{}", cloud.dfctl("lport list"));

    step(
        "Booting VMs web1, web2 (sharing the VIP 192.0.2.100 as an allowed address pair) and client",
    );
    // web1 holds the VIP; it also configures an address it was never given (192.0.2.66).
    cloud.add_vm(
        hv,
        "web1",
        "tapweb1",
        "fa:16:3e:00:00:01",
        &["192.0.2.11/24", "192.0.2.100/32"],
    );
    cloud.add_vm(
        hv,
        "web2",
        "tapweb2",
        "fa:16:3e:00:00:02",
        &["192.0.2.12/24"],
    );
    cloud.add_vm(
        hv,
        "client",
        "tapclient",
        "fa:16:3e:00:00:03",
        &["192.0.2.13/24"],
    );
    cloud.vms[0].ns.exec("ip addr add 192.0.2.66/32 dev eth0");
    cloud.start_agent(hv);
    println!(
        "    agent healthy; metrics on {} inside {}",
        Hypervisor::METRICS,
        cloud.hvs[hv].ns.name
    );

    let (web1, client) = (&cloud.vms[0].ns, &cloud.vms[2].ns);
    let hv1 = &cloud.hvs[hv];

    step("Legitimate traffic: client -> web1 fixed IP, client -> VIP held by web1");
    wait_until("client reaches web1", Duration::from_secs(10), || {
        ping(client, "192.0.2.11", 1)
    });
    println!(
        "    ping 192.0.2.11: {}",
        if ping(client, "192.0.2.11", 3) {
            "ok"
        } else {
            "FAILED"
        }
    );
    println!(
        "    ping 192.0.2.100 (VIP): {}",
        if ping(client, "192.0.2.100", 3) {
            "ok"
        } else {
            "FAILED"
        }
    );
    println!(
        "    passed ipv4 so far: {}",
        counter(hv1, "pass", ("path", "ipv4"))
    );

    step("Spoof: web1 sends from 192.0.2.66, an address that is neither fixed nor an AAP");
    let before = counter(hv1, "drop", ("reason", "src_ip_spoof"));
    let ok = web1
        .try_exec("ping -q -c 3 -i 0.2 -W 1 -I 192.0.2.66 192.0.2.13")
        .status
        .success();
    let after = counter(hv1, "drop", ("reason", "src_ip_spoof"));
    println!(
        "    ping -I 192.0.2.66: {}",
        if ok {
            "answered (UNEXPECTED)"
        } else {
            "no answer"
        }
    );
    println!(
        "    dragonflow_datapath_packets_total{{verdict=\"drop\",reason=\"src_ip_spoof\"}}: {before} -> {after}"
    );

    step("Allowed address pairs are live: add 192.0.2.66 to web1, then remove it");
    cloud.dfctl("lport update web1 --add-aap 192.0.2.66");
    let t = Instant::now();
    wait_until("AAP takes effect", Duration::from_secs(10), || {
        web1.try_exec("ping -q -c 1 -W 1 -I 192.0.2.66 192.0.2.13")
            .status
            .success()
    });
    println!(
        "    after --add-aap: ping -I 192.0.2.66 answered ({} ms to take effect)",
        t.elapsed().as_millis()
    );
    cloud.dfctl("lport update web1 --remove-aap 192.0.2.66");
    wait_until("AAP removal takes effect", Duration::from_secs(10), || {
        !web1
            .try_exec("ping -q -c 1 -W 1 -I 192.0.2.66 192.0.2.13")
            .status
            .success()
    });
    println!("    after --remove-aap: dropped again");

    step("Gratuitous ARP for the VIP from web1 (what keepalived sends on failover)");
    web1.try_exec("arping -q -U -c 2 -I eth0 192.0.2.100");
    let garp = wait_until_some_garp(&cloud);
    print!("{garp}");

    step("Datapath verdict counters (non-zero), from GET /metrics");
    for l in hv1.metrics().lines() {
        if l.starts_with("dragonflow_datapath_packets_total") && !l.ends_with(" 0") {
            println!("    {l}");
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
            println!("    ip netns exec {} ping 192.0.2.100", client.name);
            while !STOP.load(Ordering::SeqCst) {
                thread::sleep(Duration::from_millis(100));
            }
        }
    }
    step("Cleaning up: agent, VMs, hypervisor, bpffs pins, etcd and its data dir");
    drop(cloud);
    println!("    done");
}

fn wait_until_some_garp(cloud: &Cloud) -> String {
    let agent = format!("http://{}", Hypervisor::METRICS);
    let hv = &cloud.hvs[0];
    let mut out = String::new();
    let found = (0..100).any(|_| {
        let o = hv
            .ns
            .command(tests::harness::dfctl_bin())
            .args(["garp", "list", "--agent", &agent])
            .output();
        if let Ok(o) = o
            && o.status.success()
        {
            out = String::from_utf8_lossy(&o.stdout).into_owned();
            if out.contains("192.0.2.100") {
                return true;
            }
        }
        thread::sleep(Duration::from_millis(100));
        false
    });
    if !found {
        out.push_str("    (no GARP event seen yet)\n");
    }
    out
}
