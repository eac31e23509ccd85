//! The control plane at cloud scale (issue 11, item 2), measured side by side in one run:
//! a **large** northbound (default 100,000 ports, 1,000 chassis records, 500 networks,
//! 1,000 security groups with remote-group rules, 100 routers, 200 ports bound to this
//! hypervisor on real tap devices) and a **small** one (100 ports, 20 of them local), each
//! with its own etcd and its own agent, in their own namespaces.
//!
//! Per setup: the initial sync (agent start → `/healthz` 200, i.e. the whole northbound
//! read and written to the maps), the agent's peak and current RSS, its idle CPU (user +
//! system time over an idle window while both agents idle), and the latency of one NB
//! change reaching the datapath: an allowed address pair added to (then removed from) a
//! local port's record, from just before the etcd write returns until the entry is in
//! (gone from) the pinned `df_addrs` map, read with bpf(2) the way the datapath sees it.
//! Changes alternate between the two setups (large, small, large, …) so both see the same
//! machine noise; percentiles are over every change.
//!
//! The large topology, chosen to be a plausible cloud rather than a kind one: every network
//! has 200 ports spread over the 1,000 chassis; routers connect 5 consecutive networks each;
//! the 200 local ports sit on 20 networks (10 each), so this agent needs the 4,000 ports of
//! those 20 networks (and the members of the groups its ports' rules name); every port has
//! one IPv4 and one IPv6 fixed address, one single-IP allowed address pair and two security
//! groups; every group allows ssh from anywhere, everything from its own members and http
//! from the members of the next group.
//!
//! Usage: `df-bench-scale [--ports N] [--rounds R] [--idle-secs S]`; prints markdown.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    fs,
    os::fd::AsRawFd as _,
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use aya::maps::{HashMap as BpfHashMap, Map, MapData};
use dragonflow_common::{
    addr::{AddrKey, AddrValue},
    maps::ADDRS,
};
use etcd_client::{Client, Txn, TxnOp};
use serde_json::{Value, json};
use tests::{
    framework::{
        etcd::{ETCD_IP, ETCD_PORT},
        hook::Hook,
    },
    harness::Cloud,
};

const PREFIX: &str = "/dragonflow/";
/// etcd's default `--max-txn-ops`.
const TXN_OPS: usize = 128;
const CHASSIS: &str = "hv0";

#[derive(Clone, Copy, Debug)]
struct Shape {
    ports: usize,
    chassis: usize,
    networks: usize,
    groups: usize,
    /// Networks holding the local ports, `local_per_net` each.
    local_nets: usize,
    local_per_net: usize,
    /// Networks per router.
    router_span: usize,
}

impl Shape {
    fn large(ports: usize) -> Self {
        Shape {
            ports,
            chassis: 1_000,
            networks: 500,
            groups: 1_000,
            local_nets: 20,
            local_per_net: 10,
            router_span: 5,
        }
    }

    fn small() -> Self {
        Shape {
            ports: 100,
            chassis: 10,
            networks: 2,
            groups: 4,
            local_nets: 2,
            local_per_net: 10,
            router_span: 2,
        }
    }

    fn per_net(&self) -> usize {
        self.ports / self.networks
    }

    fn local(&self) -> usize {
        self.local_nets * self.local_per_net
    }
}

fn mac(n: usize) -> String {
    format!(
        "fa:16:3e:{:02x}:{:02x}:{:02x}",
        (n >> 16) & 0xff,
        (n >> 8) & 0xff,
        n & 0xff
    )
}

fn port_id(n: usize) -> String {
    format!("{n:08x}-5ca1-4e00-8000-{:012x}", n * 7919)
}

fn tap(k: usize) -> String {
    format!("tapsc{k}")
}

/// A port: `net`'s `slot`-th, bound to `chassis` (and a tap when local).
fn port(shape: &Shape, net: usize, slot: usize, chassis: &str, ifname: Option<&str>) -> Value {
    let n = net * shape.per_net() + slot;
    // IPv4 subnets overlap between networks (tenants reuse 192.0.2.0/24), IPv6 ones do not.
    let g1 = (net * 2) % shape.groups;
    let g2 = (net * 2 + 1) % shape.groups;
    let mut p = json!({
        "id": port_id(n),
        "lswitch": format!("net{net}"),
        "mac": mac(n + 1),
        "fixed_ips": [format!("192.0.2.{}", slot + 10), format!("2001:db8:{net:x}::{:x}", slot + 10)],
        "allowed_address_pairs": [{"ip_address": format!("198.51.100.{}", slot % 200 + 10)}],
        "port_security_enabled": true,
        "security_groups": [format!("sg{g1}"), format!("sg{g2}")],
        "chassis": chassis,
        "device_owner": "compute:nova",
    });
    if let Some(i) = ifname {
        p["ifname"] = json!(i);
    }
    p
}

/// Every NB record of `shape`, as (key, JSON).
fn northbound(shape: &Shape) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut put = |kind: &str, id: &str, v: Value| {
        out.push((format!("{PREFIX}{kind}/{id}"), v.to_string()));
    };
    for c in 1..shape.chassis {
        let name = format!("c{c}");
        put(
            "chassis",
            &name,
            json!({"name": name, "tunnel_ip": format!("198.18.{}.{}", 4 + c / 250, c % 250 + 1)}),
        );
    }
    for net in 0..shape.networks {
        let id = format!("net{net}");
        put(
            "lswitch",
            &id,
            json!({"id": id, "segmentation_id": 1000 + net, "mtu": 1450}),
        );
    }
    for g in 0..shape.groups {
        let id = format!("sg{g}");
        let rule = |rid: &str, dir: &str, eth: &str, extra: Value| {
            let mut r = json!({"id": format!("{id}-{rid}"), "direction": dir, "ethertype": eth});
            r.as_object_mut()
                .expect("object")
                .extend(extra.as_object().expect("object").clone());
            r
        };
        put(
            "secgroup",
            &id,
            json!({"id": id, "rules": [
                rule("ssh", "ingress", "IPv4", json!({"protocol": "tcp", "port_range_min": 22, "port_range_max": 22, "remote_ip_prefix": "0.0.0.0/0"})),
                rule("self4", "ingress", "IPv4", json!({"remote_group_id": id})),
                rule("self6", "ingress", "IPv6", json!({"remote_group_id": id})),
                rule("http", "ingress", "IPv4", json!({"protocol": "tcp", "port_range_min": 80, "port_range_max": 80, "remote_group_id": format!("sg{}", (g + 1) % shape.groups)})),
                rule("out4", "egress", "IPv4", json!({})),
                rule("out6", "egress", "IPv6", json!({})),
            ]}),
        );
    }
    for r in 0..shape.networks.div_ceil(shape.router_span) {
        let id = format!("router{r}");
        let ports: Vec<Value> = (r * shape.router_span
            ..((r + 1) * shape.router_span).min(shape.networks))
            .map(|net| {
                json!({"id": format!("{id}-if{net}"), "lswitch": format!("net{net}"),
                       "mac": mac(0xf00000 + net), "ip": "192.0.2.1/24"})
            })
            .collect();
        // One router per tenant: the tenants' IPv4 subnets overlap, so each router gets
        // IPv6 interfaces (distinct per network) besides the first network's IPv4 one.
        let ports: Vec<Value> = ports
            .into_iter()
            .enumerate()
            .map(|(i, mut p)| {
                let net = r * shape.router_span + i;
                p["ip"] = json!(format!("2001:db8:{net:x}::1/64"));
                p
            })
            .collect();
        put("lrouter", &id, json!({"id": id, "ports": ports}));
    }
    let mut local = 0;
    for net in 0..shape.networks {
        for slot in 0..shape.per_net() {
            let n = net * shape.per_net() + slot;
            let (chassis, ifname) = if net < shape.local_nets && slot < shape.local_per_net {
                local += 1;
                (CHASSIS.to_string(), Some(tap(local - 1)))
            } else {
                (format!("c{}", 1 + (n * 7) % (shape.chassis - 1)), None)
            };
            put(
                "lport",
                &port_id(n),
                port(shape, net, slot, &chassis, ifname.as_deref()),
            );
        }
    }
    out
}

/// What a setup's worker thread (inside its underlay namespace, where its etcd is) does.
enum Job {
    /// Writes these records (transactions of `TXN_OPS` puts).
    Write(Vec<(String, String)>),
    /// Puts one record and waits until `key` is (`present`) or is not in the map.
    Change {
        key: String,
        value: String,
        entry: AddrKey,
        present: bool,
    },
}

struct Worker {
    jobs: mpsc::Sender<(Job, mpsc::Sender<Duration>)>,
}

impl Worker {
    /// A thread in `ns` owning an etcd client and the pinned address map at `addrs_pin`
    /// (opened once the agent has created it).
    fn start(ns: String, addrs_pin: std::path::PathBuf) -> Self {
        let (tx, rx) = mpsc::channel::<(Job, mpsc::Sender<Duration>)>();
        thread::spawn(move || {
            let path = format!("/var/run/netns/{ns}");
            let file = fs::File::open(&path).expect("netns");
            // SAFETY: setns on a valid netns fd affects only this thread (and the runtime
            // below is single-threaded, on this thread).
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let mut client = rt
                .block_on(Client::connect(
                    [format!("http://{ETCD_IP}:{ETCD_PORT}")],
                    None,
                ))
                .expect("etcd");
            let mut map: Option<BpfHashMap<MapData, AddrKey, AddrValue>> = None;
            for (job, done) in rx {
                match job {
                    Job::Write(records) => {
                        let t = Instant::now();
                        rt.block_on(async {
                            for chunk in records.chunks(TXN_OPS) {
                                let ops: Vec<TxnOp> = chunk
                                    .iter()
                                    .map(|(k, v)| TxnOp::put(k.as_str(), v.as_str(), None))
                                    .collect();
                                client.txn(Txn::new().and_then(ops)).await.expect("txn");
                            }
                        });
                        let _ = done.send(t.elapsed());
                    }
                    Job::Change {
                        key,
                        value,
                        entry,
                        present,
                    } => {
                        let map = map.get_or_insert_with(|| {
                            let data = MapData::from_pin(&addrs_pin).expect("pinned df_addrs");
                            BpfHashMap::try_from(Map::HashMap(data)).expect("hash map")
                        });
                        let t = Instant::now();
                        rt.block_on(client.put(key, value, None)).expect("put");
                        let deadline = t + Duration::from_secs(30);
                        while map.get(&entry, 0).is_ok() != present {
                            assert!(Instant::now() < deadline, "change not applied in 30 s");
                            thread::sleep(Duration::from_micros(200));
                        }
                        let _ = done.send(t.elapsed());
                    }
                }
            }
        });
        Worker { jobs: tx }
    }

    fn run(&self, job: Job) -> Duration {
        let (tx, rx) = mpsc::channel();
        self.jobs.send((job, tx)).expect("worker alive");
        rx.recv().expect("worker finished the job")
    }
}

struct Setup {
    name: &'static str,
    shape: Shape,
    cloud: Cloud,
    worker: Worker,
    write: Duration,
    sync: Duration,
    latencies: Vec<Duration>,
}

impl Setup {
    fn new(name: &'static str, shape: Shape) -> Self {
        let mut cloud = Cloud::new();
        let hv = cloud.add_hypervisor(CHASSIS, Hook::Tc);
        let h = &mut cloud.hvs[hv];
        for k in 0..shape.local() {
            h.ns.exec(&format!("ip tuntap add dev {} mode tap", tap(k)));
            h.ns.exec(&format!("ip link set {} up", tap(k)));
        }
        let pin = h
            .bpffs
            .path
            .join("dragonflow")
            .join(CHASSIS)
            .join("maps")
            .join(ADDRS);
        let worker = Worker::start(cloud.ul.name.clone(), pin);
        let write = worker.run(Job::Write(northbound(&shape)));
        let t = Instant::now();
        cloud.start_agent(hv);
        let sync = t.elapsed();
        Setup {
            name,
            shape,
            cloud,
            worker,
            write,
            sync,
            latencies: Vec::new(),
        }
    }

    /// Adds (`present`) or removes the allowed address pair 203.0.113.`x` on local port `k`.
    fn change(&mut self, k: usize, x: u8, present: bool) {
        let s = &self.shape;
        let (net, slot) = (k / s.local_per_net, k % s.local_per_net);
        let n = net * s.per_net() + slot;
        let mut p = port(s, net, slot, CHASSIS, Some(&tap(k)));
        let ip = format!("203.0.113.{x}");
        if present {
            p["allowed_address_pairs"]
                .as_array_mut()
                .expect("array")
                .push(json!({"ip_address": ip}));
        }
        let ifindex = self.cloud.hvs[0].ns.ifindex(&tap(k));
        let m = mac(n + 1);
        let mac_bytes: Vec<u8> = m
            .split(':')
            .map(|b| u8::from_str_radix(b, 16).expect("hex"))
            .collect();
        let entry = AddrKey::v4(
            ifindex,
            mac_bytes.try_into().expect("6 bytes"),
            [203, 0, 113, x],
        );
        let d = self.worker.run(Job::Change {
            key: format!("{PREFIX}lport/{}", port_id(n)),
            value: p.to_string(),
            entry,
            present,
        });
        self.latencies.push(d);
    }

    fn pid(&self) -> u32 {
        self.cloud.hvs[0].agent_pid().expect("agent running")
    }
}

fn proc_status(pid: u32, field: &str) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &s[s.rfind(')').expect("comm") + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1e3
}

fn arg(args: &[String], name: &str, default: usize) -> usize {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.parse()
                .unwrap_or_else(|_| panic!("{name} wants a number"))
        })
        .unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let ports = arg(&args, "--ports", 100_000);
    let rounds = arg(&args, "--rounds", 100);
    let idle = arg(&args, "--idle-secs", 30);
    // Built (or found current) before anything is timed.
    let _ = tests::framework::process::agent_bin();

    let mut setups = [
        Setup::new("large", Shape::large(ports)),
        Setup::new("small", Shape::small()),
    ];
    // Let both settle (the first rescans after start), then measure idle CPU side by side.
    thread::sleep(Duration::from_secs(2));
    let tick = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    let before: Vec<u64> = setups.iter().map(|s| cpu_ticks(s.pid())).collect();
    thread::sleep(Duration::from_secs(idle as u64));
    let idle_cpu: Vec<f64> = setups
        .iter()
        .zip(&before)
        .map(|(s, b)| (cpu_ticks(s.pid()) - b) as f64 / tick / idle as f64 * 100.0)
        .collect();

    for r in 0..rounds {
        let x = (r % 200 + 10) as u8;
        for s in setups.iter_mut() {
            let k = r % s.shape.local();
            s.change(k, x, true);
        }
        for s in setups.iter_mut() {
            let k = r % s.shape.local();
            s.change(k, x, false);
        }
    }

    println!(
        "| setup | ports | NB write | initial sync | change p50 | change p99 | RSS peak | RSS now | idle CPU |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let mut p99 = Vec::new();
    for (s, cpu) in setups.iter_mut().zip(&idle_cpu) {
        let pid = s.pid();
        let (p50, p99v) = (pct(&mut s.latencies, 0.5), pct(&mut s.latencies, 0.99));
        p99.push(p99v);
        println!(
            "| {} | {} | {:.1} s | {:.2} s | {p50:.1} ms | {p99v:.1} ms | {} MiB | {} MiB | {cpu:.2} % |",
            s.name,
            s.shape.ports,
            s.write.as_secs_f64(),
            s.sync.as_secs_f64(),
            proc_status(pid, "VmHWM:") / 1024,
            proc_status(pid, "VmRSS:") / 1024,
        );
    }
    println!(
        "\nchange p99, large / small: **{:.2}×** ({} changes each, interleaved)",
        p99[0] / p99[1],
        2 * rounds
    );
}
