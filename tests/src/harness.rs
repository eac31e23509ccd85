//! Simulated hypervisors and VMs in network namespaces, with real etcd and real agent
//! processes. Every object is a guard that removes what it made on `Drop`, also when the
//! test panics, so a failed run leaves no namespace, link, mount or process behind.
//!
//! Topology (one [`Cloud`]):
//!
//! ```text
//!   ns <p>-ul  (underlay)   br-ul 198.18.0.1/24, etcd on 198.18.0.1:2379
//!      │ veth ul-<hv> ── eth-ul (198.18.0.1x/24)
//!   ns <p>-<hv> (hypervisor) agent, bpffs pins, br-int (delivers allowed frames, issue 2)
//!      │ tap<port>  (veth "tap": program on its ingress = what the VM sends)
//!   ns <p>-<vm> (VM)        eth0 with the port's MAC and IPs
//! ```
//!
//! Names: every namespace starts with `dft-` so `cargo xtask test` can sweep leftovers of a
//! killed run; interface names stay within IFNAMSIZ (15).

use std::{
    fmt::Write as _,
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant},
};

use crate::framework::{
    etcd::{ETCD_IP, Etcd},
    hook::Hook,
    http::{metric, metric_sum},
    netns::Netns,
    pin::Bpffs,
    process::{agent_bin, cmd, dfctl_bin, unique_prefix},
};

/// A hypervisor: a namespace joined to the underlay, with br-int and its own bpffs.
pub struct Hypervisor {
    pub name: String,
    pub ns: Netns,
    pub tunnel_ip: String,
    pub bpffs: Bpffs,
    pub metrics_addr: String,
    agent: Option<Child>,
    agent_log: PathBuf,
    pub hook: Hook,
    pub extra_agent_args: Vec<String>,
    /// Environment the agent starts with besides the test's (e.g. `NOTIFY_SOCKET`).
    pub extra_agent_env: Vec<(String, String)>,
}

impl Hypervisor {
    /// The agent's metrics endpoint inside the hypervisor namespace.
    pub const METRICS: &str = "127.0.0.1:9465";

    /// `GET /metrics` text (panics if the agent does not answer).
    pub fn metrics(&self) -> String {
        let (s, body) = self
            .ns
            .http_get(&self.metrics_addr, "/metrics")
            .unwrap_or_else(|| panic!("agent on {} does not answer /metrics", self.name));
        assert_eq!(s, 200, "/metrics status");
        body
    }

    /// One datapath counter: drops by reason, or passes by path.
    pub fn drops(&self, reason: &str) -> f64 {
        metric(
            &self.metrics(),
            "dragonflow_datapath_packets_total",
            &[
                ("direction", "from_vm"),
                ("verdict", "drop"),
                ("reason", reason),
            ],
        )
        .unwrap_or_else(|| panic!("no drop counter for reason {reason}"))
    }

    pub fn passes(&self, path: &str) -> f64 {
        metric(
            &self.metrics(),
            "dragonflow_datapath_packets_total",
            &[
                ("direction", "from_vm"),
                ("verdict", "pass"),
                ("path", path),
            ],
        )
        .unwrap_or_else(|| panic!("no pass counter for path {path}"))
    }

    /// Starts (or restarts) the agent process and waits for /healthz.
    pub fn start_agent(&mut self, etcd_endpoint: &str) {
        assert!(
            self.agent.is_none(),
            "agent already running on {}",
            self.name
        );
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.agent_log)
            .expect("agent log");
        let child = self
            .ns
            .command(agent_bin())
            .args(["--chassis", &self.name, "--etcd-endpoints", etcd_endpoint])
            .args(["--tunnel-ip", &self.tunnel_ip, "--hook", self.hook.as_str()])
            .arg("--bpffs")
            .arg(&self.bpffs.path)
            // The instance id survives restarts of this hypervisor's agent, not the test.
            .arg("--state-dir")
            .arg(self.agent_log.with_extension("state"))
            .args(["--metrics-addr", &self.metrics_addr])
            .args(&self.extra_agent_args)
            .envs(self.extra_agent_env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info,dragonflow_agent=debug")
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn agent");
        self.agent = Some(child);
        self.wait_healthy();
    }

    pub fn wait_healthy(&mut self) {
        let start = Instant::now();
        loop {
            if let Some(c) = self.agent.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!(
                    "agent on {} exited ({status}); log:\n{}",
                    self.name,
                    self.agent_log()
                );
            }
            if self
                .ns
                .http_get(&self.metrics_addr, "/healthz")
                .is_some_and(|(s, _)| s == 200)
            {
                return;
            }
            if start.elapsed() > Duration::from_secs(60) {
                panic!(
                    "agent on {} not healthy after 60 s; log:\n{}",
                    self.name,
                    self.agent_log()
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGKILL the agent (pins keep the datapath running).
    pub fn kill_agent(&mut self) {
        if let Some(mut c) = self.agent.take() {
            // `ip netns exec` execs the agent, so this pid is the agent itself.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn agent_log(&self) -> String {
        fs::read_to_string(&self.agent_log).unwrap_or_default()
    }

    /// The running agent's pid (`ip netns exec` execs the agent, so it is the agent's).
    pub fn agent_pid(&self) -> Option<u32> {
        self.agent.as_ref().map(Child::id)
    }
}

impl Drop for Hypervisor {
    fn drop(&mut self) {
        self.kill_agent();
        if thread::panicking() {
            eprintln!("---- agent log of {} ----\n{}", self.name, self.agent_log());
        }
        let _ = fs::remove_file(&self.agent_log);
        let _ = fs::remove_dir_all(self.agent_log.with_extension("state"));
    }
}

/// A VM: a namespace whose eth0 is the far end of a tap in its hypervisor.
pub struct Vm {
    pub ns: Netns,
    /// The tap's name in the hypervisor namespace.
    pub tap: String,
    pub mac: String,
}

/// A whole simulated cloud: underlay + etcd + hypervisors + VMs. Drop order: VMs, then
/// hypervisors (agents, bpffs), then etcd and the underlay.
pub struct Cloud {
    pub prefix: String,
    pub vms: Vec<Vm>,
    pub hvs: Vec<Hypervisor>,
    pub etcd: Etcd,
    pub ul: Netns,
}

impl Cloud {
    pub fn new() -> Self {
        let prefix = unique_prefix();
        let ul = Netns::new(&format!("{prefix}-ul"));
        ul.exec("ip link add br-ul type bridge");
        ul.exec(&format!("ip addr add {ETCD_IP}/24 dev br-ul"));
        ul.exec("ip link set br-ul up");
        let etcd = Etcd::start_in(&ul);
        Cloud {
            prefix,
            vms: Vec::new(),
            hvs: Vec::new(),
            etcd,
            ul,
        }
    }

    /// Adds a hypervisor `name` (namespace `<prefix>-<name>`) with underlay address
    /// 198.18.0.(10+i) and br-int. Its agent is not started yet.
    pub fn add_hypervisor(&mut self, name: &str, hook: Hook) -> usize {
        let i = self.hvs.len();
        let ns = Netns::new(&format!("{}-{name}", self.prefix));
        let tunnel_ip = format!("198.18.0.{}", 10 + i);
        let ul_if = format!("ul{}{i}", &self.prefix[3..]);
        let ul_if: String = ul_if.chars().take(15).collect();
        cmd(&format!(
            "ip link add {ul_if} type veth peer name eth-ul netns {}",
            ns.name
        ));
        cmd(&format!("ip link set {ul_if} netns {}", self.ul.name));
        self.ul.exec(&format!("ip link set {ul_if} master br-ul"));
        self.ul.exec(&format!("ip link set {ul_if} up"));
        ns.exec(&format!("ip addr add {tunnel_ip}/24 dev eth-ul"));
        ns.exec("ip link set eth-ul up");
        ns.exec("ip link add br-int type bridge");
        ns.exec("ip link set br-int up");
        let tag = format!("{}-{name}", self.prefix);
        let bpffs = Bpffs::new(&tag);
        let agent_log = std::env::temp_dir().join(format!("{tag}-agent.log"));
        let _ = fs::remove_file(&agent_log);
        self.hvs.push(Hypervisor {
            name: name.to_string(),
            ns,
            tunnel_ip,
            bpffs,
            metrics_addr: Hypervisor::METRICS.to_string(),
            agent: None,
            agent_log,
            hook,
            extra_agent_args: Vec::new(),
            extra_agent_env: Vec::new(),
        });
        i
    }

    pub fn start_agent(&mut self, hv: usize) {
        let ep = self.etcd.endpoints();
        self.hvs[hv].start_agent(&ep);
    }

    /// Adds a VM behind a veth "tap" `tap` on hypervisor `hv`, with `mac` and addresses
    /// (`192.0.2.10/24`, `2001:db8::10/64`) and default [`VmOpts`]. The tap joins br-int
    /// when the hypervisor has one. IPv6 DAD is disabled so addresses are usable at once.
    pub fn add_vm(&mut self, hv: usize, name: &str, tap: &str, mac: &str, addrs: &[&str]) -> usize {
        self.add_vm_opts(hv, name, tap, mac, addrs, &VmOpts::default())
    }

    /// Runs `dfctl` against this cloud's etcd (from the underlay namespace); panics on
    /// failure. Arguments are whitespace-separated.
    #[track_caller]
    pub fn dfctl(&self, args: &str) -> String {
        let out = self.try_dfctl(args);
        if !out.status.success() {
            panic!(
                "dfctl {args} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn try_dfctl(&self, args: &str) -> Output {
        self.ul
            .command(dfctl_bin())
            .args(["--etcd-endpoints", &self.etcd.endpoints()])
            .args(args.split_whitespace())
            .output()
            .expect("spawn dfctl")
    }
}

impl Default for Cloud {
    fn default() -> Self {
        Self::new()
    }
}

/// `ping -c N -W 1 -i 0.05 ip` from a namespace; true when every reply came back.
pub fn ping(ns: &Netns, ip: &str, count: u32) -> bool {
    let six = if ip.contains(':') { "-6" } else { "-4" };
    ns.try_exec(&format!("ping {six} -q -n -c {count} -i 0.05 -W 1 {ip}"))
        .status
        .success()
}

/// Formats a list of lines for assertion messages.
pub fn lines(v: &[String]) -> String {
    let mut s = String::new();
    for l in v {
        let _ = writeln!(s, "  {l}");
    }
    s
}

// ---- Additions for the port-security integration tests (tests/tests/). ----

impl Cloud {
    /// `etcdctl` (v3 API, Debian's etcd-client) against this cloud's etcd, run in the
    /// underlay namespace; the output whatever the exit status. Used to write records the
    /// CLI would refuse (malformed NB input) and to read what agents registered.
    pub fn etcdctl(&self, args: &[&str]) -> Output {
        self.ul
            .command("etcdctl")
            .env("ETCDCTL_API", "3")
            .args([
                "--endpoints",
                &self.etcd.endpoints(),
                "--command-timeout=5s",
            ])
            .args(args)
            .output()
            .expect("spawn etcdctl (is etcd-client installed? run `cargo xtask setup`)")
    }
}

// ---- Additions for the forwarding integration tests (issue 3). ----

/// Options of a hypervisor.
#[derive(Clone, Copy, Debug)]
pub struct HvOpts {
    /// Keep br-int (issue 2: the bridge delivered allowed frames). Without it our programs
    /// are the only way frames get from one tap to another (issue 3).
    pub bridge: bool,
}

impl Default for HvOpts {
    fn default() -> Self {
        HvOpts { bridge: true }
    }
}

/// Options of a VM. Nothing here changes what the VM's kernel does with its offloads: the
/// datapath must be correct for a VM as it comes (checksum offload, TSO, GRO at their
/// defaults), on every hook.
#[derive(Clone, Debug, Default)]
pub struct VmOpts {
    /// eth0's MTU (the tap keeps 1500, so an oversized frame reaches the datapath, which
    /// must drop and count it rather than leave it to the kernel).
    pub mtu: Option<u32>,
    /// Default gateways (`192.0.2.1`, `2001:db8:1::1`), routes added on eth0.
    pub gateways: Vec<String>,
    /// Only for the benchmark of the bare XDP redirect stub (`df-bench-e2e`), which
    /// redirects into veth peers as the datapath never does: a veth delivers an XDP
    /// redirect only when its peer runs NAPI, so this turns GRO on in the VM and loads an
    /// XDP_PASS program on its eth0 (veth_xdp_flush also checks the peer's xdp_prog for
    /// XDP_TX). The datapath hands frames for veth taps to TC instead (the agent puts
    /// only tun taps in its devmap), so no test sets this.
    pub xdp_stub_napi: bool,
}

impl VmOpts {
    /// A VM with MTU 1450 (VXLAN overhead, the networks' MTU) and the given gateways; the
    /// same on every hook.
    pub fn with_gateways(gateways: &[&str]) -> Self {
        VmOpts {
            mtu: Some(1450),
            gateways: gateways.iter().map(|g| g.to_string()).collect(),
            xdp_stub_napi: false,
        }
    }
}

impl Hypervisor {
    /// Whether this hypervisor has br-int.
    pub fn has_bridge(&self) -> bool {
        self.ns
            .try_exec("test -e /sys/class/net/br-int")
            .status
            .success()
    }

    /// One datapath counter (0 when the series is absent): `direction` is `from_vm`,
    /// `to_vm` or `from_tunnel`, `verdict` `drop` (then `name` is a reason) or `pass`
    /// (then a path).
    pub fn counter(&self, direction: &str, verdict: &str, name: &str) -> f64 {
        let key = if verdict == "drop" { "reason" } else { "path" };
        metric_sum(
            &self.metrics(),
            "dragonflow_datapath_packets_total",
            &[("direction", direction), ("verdict", verdict), (key, name)],
        )
    }

    /// `GET /state` as JSON (`Value::Null` when the agent does not answer).
    pub fn state(&self) -> serde_json::Value {
        self.ns
            .http_get(&self.metrics_addr, "/state")
            .and_then(|(_, b)| serde_json::from_str(&b).ok())
            .unwrap_or(serde_json::Value::Null)
    }

    /// True while the agent process this guard started is alive.
    pub fn agent_running(&mut self) -> bool {
        self.agent
            .as_mut()
            .is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }
}

/// Whether the agent binary knows a command-line flag (features land one by one).
pub fn agent_has_flag(flag: &str) -> bool {
    let out = Command::new(agent_bin())
        .arg("--help")
        .output()
        .expect("agent --help");
    String::from_utf8_lossy(&out.stdout).contains(flag)
}

impl Cloud {
    /// [`Cloud::add_hypervisor`] with options: `bridge: false` removes br-int.
    pub fn add_hypervisor_opts(&mut self, name: &str, hook: Hook, opts: HvOpts) -> usize {
        let i = self.add_hypervisor(name, hook);
        if !opts.bridge {
            self.hvs[i].ns.exec("ip link del br-int");
        }
        i
    }

    /// [`Cloud::add_vm`] with options; the tap joins br-int only if the hypervisor has one.
    pub fn add_vm_opts(
        &mut self,
        hv: usize,
        name: &str,
        tap: &str,
        mac: &str,
        addrs: &[&str],
        opts: &VmOpts,
    ) -> usize {
        let bridge = self.hvs[hv].has_bridge();
        let hvns = &self.hvs[hv].ns;
        let ns = Netns::new(&format!("{}-{name}", self.prefix));
        ns.exec("sysctl -qw net.ipv6.conf.all.accept_dad=0");
        ns.exec("sysctl -qw net.ipv6.conf.default.accept_dad=0");
        hvns.exec(&format!(
            "ip link add {tap} type veth peer name eth0 netns {}",
            ns.name
        ));
        ns.exec(&format!("ip link set eth0 address {mac}"));
        if let Some(mtu) = opts.mtu {
            ns.exec(&format!("ip link set eth0 mtu {mtu}"));
        }
        if opts.xdp_stub_napi {
            ns.exec("ethtool -K eth0 gro on");
        }
        for a in addrs {
            ns.exec(&format!("ip addr add {a} dev eth0 nodad"));
        }
        ns.exec("ip link set eth0 up");
        if opts.xdp_stub_napi {
            let pin = self.hvs[hv]
                .bpffs
                .path
                .join(format!("{}-xdp-pass", ns.name));
            let ifindex = ns.ifindex("eth0");
            ns.within(|| xdp_pass_pinned(ifindex, &pin));
        }
        for g in &opts.gateways {
            let six = if g.contains(':') { "-6" } else { "-4" };
            ns.exec(&format!("ip {six} route add default via {g} dev eth0"));
        }
        if bridge {
            hvns.exec(&format!("ip link set {tap} master br-int"));
        }
        hvns.exec(&format!("ip link set {tap} up"));
        self.vms.push(Vm {
            ns,
            tap: tap.to_string(),
            mac: mac.to_string(),
        });
        self.vms.len() - 1
    }
}

/// One frame seen by a [`Capture`]: tcpdump's summary line and the frame's bytes from the
/// Ethernet header on.
#[derive(Clone, Debug)]
pub struct Frame {
    pub line: String,
    pub bytes: Vec<u8>,
}

impl Frame {
    /// Whether `needle` occurs anywhere in the frame (a test's unique payload).
    pub fn contains(&self, needle: &[u8]) -> bool {
        !needle.is_empty() && self.bytes.windows(needle.len()).any(|w| w == needle)
    }

    /// The outer IPv4 destination, when the frame is untagged IPv4.
    pub fn ipv4_dst(&self) -> Option<[u8; 4]> {
        (self.bytes.get(12..14)? == [0x08, 0x00]).then(|| {
            let d = self.bytes.get(30..34)?;
            Some([d[0], d[1], d[2], d[3]])
        })?
    }
}

/// A tcpdump running in a namespace until dropped, its output (summary lines and hex of
/// each whole frame) kept in a file that [`Capture::frames`] parses at any time.
pub struct Capture {
    child: Child,
    out: PathBuf,
    err: PathBuf,
    pub what: String,
}

static CAPTURE_SEQ: AtomicU32 = AtomicU32::new(0);

impl Capture {
    /// `tcpdump -i <iface> [-Q <dir>] <filter>` in `ns`; returns once tcpdump listens.
    /// `dir` is `in`, `out` or `inout`.
    pub fn start(ns: &Netns, iface: &str, dir: &str, filter: &str) -> Capture {
        let n = CAPTURE_SEQ.fetch_add(1, Ordering::Relaxed);
        let base = std::env::temp_dir().join(format!("{}-{iface}-cap{n}", ns.name));
        let out = base.with_extension("txt");
        let err = base.with_extension("err");
        let child = ns
            .command("tcpdump")
            .args(["-i", iface, "-Q", dir, "-l", "-U", "-nn", "-e", "-xx"])
            .args(["-s", "0"])
            .args(filter.split_whitespace())
            .stdout(fs::File::create(&out).expect("capture file"))
            .stderr(fs::File::create(&err).expect("capture err file"))
            .spawn()
            .expect("spawn tcpdump");
        let mut cap = Capture {
            child,
            out,
            err,
            what: format!("{iface}@{} ({dir}) {filter}", ns.name),
        };
        let start = Instant::now();
        loop {
            let e = fs::read_to_string(&cap.err).unwrap_or_default();
            if e.contains("listening on") {
                break;
            }
            if let Ok(Some(st)) = cap.child.try_wait() {
                panic!("tcpdump {} exited ({st}): {e}", cap.what);
            }
            if start.elapsed() > Duration::from_secs(10) {
                panic!("tcpdump {} not listening after 10 s: {e}", cap.what);
            }
            thread::sleep(Duration::from_millis(20));
        }
        cap
    }

    /// Every frame captured so far.
    pub fn frames(&self) -> Vec<Frame> {
        let text = fs::read_to_string(&self.out).unwrap_or_default();
        let mut frames: Vec<Frame> = Vec::new();
        for l in text.lines() {
            let t = l.trim_start();
            if l.starts_with(char::is_whitespace) && t.starts_with("0x") {
                if let (Some(f), Some((_, hex))) = (frames.last_mut(), t.split_once(':')) {
                    for word in hex.split_whitespace() {
                        let mut i = 0;
                        while i + 2 <= word.len() {
                            if let Ok(b) = u8::from_str_radix(&word[i..i + 2], 16) {
                                f.bytes.push(b);
                            }
                            i += 2;
                        }
                    }
                }
            } else if !t.is_empty() {
                frames.push(Frame {
                    line: l.to_string(),
                    bytes: Vec::new(),
                });
            }
        }
        frames
    }

    /// How many captured frames carry `payload`.
    pub fn count(&self, payload: &[u8]) -> usize {
        self.frames().iter().filter(|f| f.contains(payload)).count()
    }

    /// Polls until at least `n` frames carry `payload`; false at the deadline.
    pub fn wait_count(&self, payload: &[u8], n: usize, timeout: Duration) -> bool {
        let start = Instant::now();
        loop {
            if self.count(payload) >= n {
                return true;
            }
            if start.elapsed() > timeout {
                return false;
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// The summary lines, for assertion messages.
    pub fn summary(&self) -> String {
        let f = self.frames();
        let mut s = format!("{} frame(s) on {}:\n", f.len(), self.what);
        for x in f.iter().take(40) {
            let _ = writeln!(s, "  {}", x.line);
        }
        s
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_file(&self.out);
        let _ = fs::remove_file(&self.err);
    }
}

/// iperf3 for `secs` seconds from `client` to `server_ip` (a server started in `server`
/// for one test); bits per second received, or `Err` with iperf3's complaint.
pub fn iperf3(client: &Netns, server: &Netns, server_ip: &str, secs: u32) -> Result<f64, String> {
    let mut srv = server
        .command("iperf3")
        .args(["-s", "-1", "-B", server_ip])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn iperf3 server");
    let start = Instant::now();
    let mut last = String::new();
    let res = loop {
        let o = client.try_exec(&format!(
            "iperf3 -c {server_ip} -t {secs} -J --connect-timeout 2000"
        ));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
        // iperf3 -J may exit 0 with an "error" in its JSON.
        if o.status.success() && v["error"].is_null() {
            break v["end"]["sum_received"]["bits_per_second"]
                .as_f64()
                .ok_or_else(|| format!("no bits_per_second: {v}"));
        }
        last = v["error"]
            .as_str()
            .map(String::from)
            .unwrap_or_else(|| String::from_utf8_lossy(&o.stderr).into_owned());
        // "connection refused" until the server listens: poll; anything else is the answer.
        if !last.contains("refused") || start.elapsed() > Duration::from_secs(10) {
            break Err(last.clone());
        }
        thread::sleep(Duration::from_millis(100));
    };
    let _ = srv.kill();
    let _ = srv.wait();
    res.map_err(|e| if e.is_empty() { last } else { e })
}

/// Loads `r0 = XDP_PASS; exit`, links it to `ifindex` (in the calling thread's namespace)
/// and pins the link at `pin` (a bpffs path), so it lives until that bpffs is unmounted or
/// the device goes away.
fn xdp_pass_pinned(ifindex: u32, pin: &Path) {
    use crate::framework::rawbpf;
    let prog = rawbpf::load(rawbpf::PROG_TYPE_XDP, 0, &rawbpf::ret(2), "dft_xdp_pass");
    let link = rawbpf::link(&prog, ifindex, rawbpf::ATTACH_XDP);
    rawbpf::pin(&link, pin);
}

// ---- Additions for the security-group integration tests (issue 4). ----

impl Hypervisor {
    /// Polls [`Hypervisor::counter`] until it has grown by at least `n` from `before`;
    /// the growth, or `Err` with what it reached at the deadline.
    pub fn wait_counter(
        &self,
        (direction, verdict, name): (&str, &str, &str),
        before: f64,
        n: f64,
        timeout: Duration,
    ) -> Result<f64, String> {
        let start = Instant::now();
        loop {
            let grown = self.counter(direction, verdict, name) - before;
            if grown >= n {
                return Ok(grown);
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{}: counter {direction}/{verdict}/{name} grew by {grown} (want ≥ {n}) within {timeout:?}",
                    self.name
                ));
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}
