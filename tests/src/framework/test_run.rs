//! BPF_PROG_TEST_RUN wrapper (verdict tables and micro-benchmarks).
//!
//! aya 0.14 has no `test_run` helper, so [`test_run`] issues the `bpf(2)` command itself.
//! [`Datapath`] loads the agent's embedded object ([`EBPF_OBJECT`]) the way the agent does
//! but without leaving pins behind, loads every program, and seeds/reads the maps by their
//! `dragonflow_common::maps` names.
//!
//! Kernel rules worth knowing (net/bpf/test_run.c):
//! - the frame must be at least 14 bytes (ETH_HLEN) for both hooks; XDP can still present
//!   a shorter packet by declaring the first bytes as metadata ([`xdp_ctx`]'s `meta_len`);
//! - XDP `ingress_ifindex` must name a real device with a registered rx queue (1 = lo);
//! - TC `ifindex` > 1 must be a real device; the skb's device (and so `skb->ifindex`)
//!   defaults to lo (1);
//! - nothing drains ring buffers, and `duration` is the mean ns per repetition.

use std::{
    ffi::CString,
    fs, io,
    os::fd::{AsFd as _, BorrowedFd},
    path::PathBuf,
    sync::atomic::{AtomicU32, Ordering},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::{
        Array, DevMapHash, HashMap, LpmTrie, MapData, PerCpuArray, PerCpuValues, RingBuf,
        lpm_trie::Key,
    },
    programs::{SchedClassifier, Xdp, tc::TcAttachType},
    util::nr_cpus,
};
use dragonflow_agent::datapath::EBPF_OBJECT;
use dragonflow_common::{
    addr::{AddrKey, AddrValue, FAMILY_V4, LPM_FIXED_BITS, MacKey},
    event::{GarpEvent, GarpRateKey},
    fwd::{
        ChassisConfig, FloodList, L2Dest, L2Key, NeighKey, NeighValue, ROUTE_FIXED_BITS, RouteDest,
        RouteKey, TunPeerKey, TunSrcKey,
    },
    limits::{CtCount, CtFreed, Limits},
    maps::{self as names, globals, progs},
    port::PortConfig,
    sg::{
        CtKey, CtValue, FragKey, FragValue, IDENT_FIXED_BITS, IdentKey, POLICY_PORT_BITS,
        POLICY_PROTO_BITS, PolicyKey, PolicyValue,
    },
    verdict::{Direction, STATS_LEN, Stat, stat_index},
};

use crate::framework::hook::Hook;

/// Programs in the object that [`Datapath`] loads.
pub const XDP_PROGS: &[&str] = &[progs::FROM_VM_XDP];
pub const TC_PROGS: &[&str] = &[
    progs::FROM_VM_TC,
    progs::VLAN_GUARD_TC,
    progs::FROM_TUNNEL_TC,
];
/// The stubs [`Datapath`] loads too in the benchmark build (feature `bench`: the agent's
/// object then has them, see the eBPF crate's `bench-progs`).
#[cfg(feature = "bench")]
const BENCH_XDP_PROGS: &[&str] = &[progs::STUB_XDP_PASS, progs::STUB_XDP_REDIRECT];
#[cfg(feature = "bench")]
const BENCH_TC_PROGS: &[&str] = &[progs::STUB_TC_OK, progs::STUB_TC_REDIRECT];
#[cfg(not(feature = "bench"))]
const BENCH_XDP_PROGS: &[&str] = &[];
#[cfg(not(feature = "bench"))]
const BENCH_TC_PROGS: &[&str] = &[];

/// ifindex of lo: the device test runs happen on (see the module docs).
pub const LO_IFINDEX: u32 = 1;

/// What one BPF_PROG_TEST_RUN returned.
#[derive(Clone, Debug)]
pub struct RunResult {
    /// The program's return value (XDP action / TC action).
    pub retval: u32,
    /// The frame after the program (as much as fit `data_out`).
    pub data_out: Vec<u8>,
    /// Mean ns per repetition, as measured by the kernel.
    pub duration_ns: u32,
}

/// Runs `prog` `repeat` times (0 = once) on `data_in` with the optional context, and
/// returns the verdict, up to `data_out_size` output bytes (0 = do not copy) and the mean
/// duration.
pub fn test_run(
    prog: BorrowedFd<'_>,
    data_in: &[u8],
    data_out_size: usize,
    ctx_in: Option<&[u8]>,
    repeat: u32,
) -> io::Result<RunResult> {
    let run = dragonflow_agent::datapath::sys::prog_test_run(
        prog,
        data_in,
        ctx_in,
        data_out_size,
        repeat,
    )?;
    Ok(RunResult {
        retval: run.retval,
        data_out: run.data_out,
        duration_ns: run.duration_ns,
    })
}

/// `struct xdp_md` for test runs: the frame arrives on `ifindex`; the first `meta_len`
/// bytes of the input (a multiple of 4, at most 32) are metadata, not packet.
pub fn xdp_ctx(ifindex: u32, meta_len: u32) -> Vec<u8> {
    // data, data_end (= input size, filled by the caller), data_meta, ingress_ifindex,
    // rx_queue_index, egress_ifindex
    let mut c = vec![0u8; 24];
    c[0..4].copy_from_slice(&meta_len.to_ne_bytes());
    c[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// `struct __sk_buff` for test runs, with only `ifindex` set.
pub fn skb_ctx(ifindex: u32) -> Vec<u8> {
    // len, pkt_type, mark, queue_mapping, protocol, vlan_present, vlan_tci, vlan_proto,
    // priority, ingress_ifindex, ifindex (offset 40). The kernel accepts a shorter context
    // than its struct and rejects non-zero fields it does not let us set.
    let mut c = vec![0u8; 48];
    c[40..44].copy_from_slice(&ifindex.to_ne_bytes());
    c
}

/// Load options for [`Datapath`].
#[derive(Clone, Copy, Debug, Default)]
pub struct LoadOptions {
    /// Overrides the `GARP_MIN_INTERVAL_NS` global (default: the object's default).
    pub garp_min_interval_ns: Option<u64>,
}

/// The eBPF object loaded for test runs: every program loaded, maps reachable by name.
pub struct Datapath {
    pub ebpf: Ebpf,
    garp_events: RingBuf<MapData>,
    ncpus: usize,
}

/// A bpffs mounted just for one load: the object's maps are declared pinned, so aya needs
/// a pin directory; unmounting it right after the load leaves no pin behind (the maps live
/// on through our fds).
struct ScratchBpffs(PathBuf);

impl ScratchBpffs {
    fn new() -> Self {
        static SEQ: AtomicU32 = AtomicU32::new(0);
        let n = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("df-testrun-{}-{n}", std::process::id()));
        fs::create_dir_all(&dir).expect("mkdir scratch bpffs");
        let c = CString::new(dir.to_str().expect("utf-8 tmp path")).unwrap();
        // SAFETY: valid NUL-terminated strings; plain mount(2).
        let rc = unsafe {
            libc::mount(
                c"bpf".as_ptr(),
                c.as_ptr(),
                c"bpf".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mount bpffs at {}: {} (are we root?)",
            dir.display(),
            io::Error::last_os_error()
        );
        ScratchBpffs(dir)
    }
}

impl Drop for ScratchBpffs {
    fn drop(&mut self) {
        let c = CString::new(self.0.to_str().unwrap()).unwrap();
        // SAFETY: plain umount2(2) of the directory we mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        let _ = fs::remove_dir(&self.0);
    }
}

impl Datapath {
    pub fn load() -> Self {
        Self::load_with(LoadOptions::default())
    }

    /// Loads [`EBPF_OBJECT`], or the object named by `DF_EBPF_OBJECT` (to iterate on the
    /// eBPF crate without rebuilding the agent).
    pub fn load_with(opts: LoadOptions) -> Self {
        let custom = std::env::var_os("DF_EBPF_OBJECT").map(|p| {
            fs::read(&p)
                .unwrap_or_else(|e| panic!("read DF_EBPF_OBJECT {}: {e}", p.to_string_lossy()))
        });
        let object: &[u8] = custom.as_deref().unwrap_or(EBPF_OBJECT);
        let pins = ScratchBpffs::new();
        let interval = opts.garp_min_interval_ns.unwrap_or_default();
        let mut loader = EbpfLoader::new();
        loader
            .default_map_pin_directory(&pins.0)
            .override_global(aya_log_level(), &0u8, false);
        if opts.garp_min_interval_ns.is_some() {
            loader.override_global(globals::GARP_MIN_INTERVAL_NS, &interval, true);
        }
        let mut ebpf = loader
            .load(object)
            .unwrap_or_else(|e| panic!("load eBPF object: {e:#}"));
        drop(pins);
        for name in XDP_PROGS.iter().chain(BENCH_XDP_PROGS) {
            let p: &mut Xdp = prog_mut(&mut ebpf, name).try_into().expect("xdp program");
            p.load()
                .unwrap_or_else(|e| panic!("load {name}: {}", verifier_error(&e)));
        }
        for name in TC_PROGS.iter().chain(BENCH_TC_PROGS) {
            let p: &mut SchedClassifier = prog_mut(&mut ebpf, name)
                .try_into()
                .expect("classifier program");
            p.load()
                .unwrap_or_else(|e| panic!("load {name}: {}", verifier_error(&e)));
        }
        let rb = ebpf
            .take_map(names::GARP_EVENTS)
            .expect("GARP ring buffer map");
        let garp_events = RingBuf::try_from(rb).expect("ring buffer");
        let ncpus = nr_cpus().expect("nr_cpus");
        Datapath {
            ebpf,
            garp_events,
            ncpus,
        }
    }

    /// fd of a loaded program.
    pub fn prog_fd(&self, name: &str) -> BorrowedFd<'_> {
        let p = self
            .ebpf
            .program(name)
            .unwrap_or_else(|| panic!("no program {name}"));
        p.fd()
            .unwrap_or_else(|e| panic!("{name} not loaded: {e}"))
            .as_fd()
    }

    /// Runs `prog` (of `hook`'s type) once on `frame` arriving on `ifindex`.
    pub fn run_prog(&self, prog: &str, hook: Hook, frame: &[u8], ifindex: u32) -> RunResult {
        self.run_prog_repeat(prog, hook, frame, ifindex, 1, frame.len() + 256)
    }

    /// As [`Datapath::run_prog`], `repeat` times, copying up to `out` bytes back.
    pub fn run_prog_repeat(
        &self,
        prog: &str,
        hook: Hook,
        frame: &[u8],
        ifindex: u32,
        repeat: u32,
        out: usize,
    ) -> RunResult {
        let ctx = match hook {
            Hook::Xdp => xdp_ctx(ifindex, 0),
            Hook::Tc => skb_ctx(ifindex),
        };
        let mut ctx = ctx;
        if hook == Hook::Xdp {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        }
        test_run(self.prog_fd(prog), frame, out, Some(&ctx), repeat)
            .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN {prog}: {e}"))
    }

    /// Runs the from-VM pipeline of `hook` once on `frame` from lo.
    pub fn run(&self, hook: Hook, frame: &[u8]) -> RunResult {
        self.run_prog(from_vm_prog(hook), hook, frame, LO_IFINDEX)
    }

    /// As [`Datapath::run`], returning the kernel's refusal instead of panicking (TC
    /// test runs refuse some malformed frames, e.g. an IPv4 ethertype with a truncated
    /// IPv4 header, that a tap can still deliver to a real tc hook).
    pub fn try_run(&self, hook: Hook, frame: &[u8]) -> io::Result<RunResult> {
        let mut ctx = match hook {
            Hook::Xdp => xdp_ctx(LO_IFINDEX, 0),
            Hook::Tc => skb_ctx(LO_IFINDEX),
        };
        if hook == Hook::Xdp {
            ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        }
        test_run(
            self.prog_fd(from_vm_prog(hook)),
            frame,
            frame.len() + 256,
            Some(&ctx),
            1,
        )
    }

    /// Runs the XDP pipeline on lo with the first `meta_len` bytes of `input` declared
    /// metadata: the only way to present a frame shorter than 14 bytes.
    pub fn run_xdp_meta(&self, input: &[u8], meta_len: u32) -> RunResult {
        let mut ctx = xdp_ctx(LO_IFINDEX, meta_len);
        ctx[4..8].copy_from_slice(&(input.len() as u32).to_ne_bytes());
        test_run(
            self.prog_fd(progs::FROM_VM_XDP),
            input,
            input.len() + 256,
            Some(&ctx),
            1,
        )
        .unwrap_or_else(|e| panic!("BPF_PROG_TEST_RUN with metadata: {e}"))
    }

    /// Empties every map (ports, addresses, CIDRs, MACs, rate limit, forwarding, security
    /// groups), zeroes the counters and drains the event ring.
    pub fn clear(&mut self) {
        clear_hash::<u32, PortConfig>(&mut self.ebpf, names::PORTS);
        clear_hash::<AddrKey, AddrValue>(&mut self.ebpf, names::ADDRS);
        clear_hash::<MacKey, u32>(&mut self.ebpf, names::MACS);
        clear_hash::<GarpRateKey, u64>(&mut self.ebpf, names::GARP_RATE);
        self.clear_fwd();
        self.clear_sg();
        self.clear_limits();
        {
            let mut m: LpmTrie<_, AddrKey, AddrValue> =
                LpmTrie::try_from(self.ebpf.map_mut(names::CIDRS).expect("cidrs")).expect("lpm");
            let keys: Vec<Key<AddrKey>> = m.keys().map(|k| k.expect("key")).collect();
            for k in keys {
                m.remove(&k).expect("remove");
            }
        }
        let mut stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map_mut(names::STATS).expect("stats")).expect("stats");
        for i in 0..STATS_LEN {
            let zero = PerCpuValues::try_from(vec![0u64; self.ncpus]).expect("per-cpu values");
            stats.set(i, zero, 0).expect("zero stats");
        }
        self.events();
    }

    pub fn add_port(&mut self, ifindex: u32, port: PortConfig) {
        let mut m: HashMap<_, u32, PortConfig> =
            HashMap::try_from(self.ebpf.map_mut(names::PORTS).expect("ports")).expect("ports");
        m.insert(ifindex, port, 0).expect("insert port");
    }

    pub fn add_addr(&mut self, key: AddrKey, flags: u32) {
        let mut m: HashMap<_, AddrKey, AddrValue> =
            HashMap::try_from(self.ebpf.map_mut(names::ADDRS).expect("addrs")).expect("addrs");
        m.insert(key, AddrValue { flags, net_id: 0 }, 0)
            .expect("insert addr");
    }

    /// A CIDR pair: `key.ip` is the prefix, `prefix_len` its length in bits.
    pub fn add_cidr(&mut self, key: AddrKey, prefix_len: u32, flags: u32) {
        let max = if key.family == FAMILY_V4 { 32 } else { 128 };
        assert!(prefix_len <= max);
        let mut m: LpmTrie<_, AddrKey, AddrValue> =
            LpmTrie::try_from(self.ebpf.map_mut(names::CIDRS).expect("cidrs")).expect("cidrs");
        m.insert(
            &Key::new(LPM_FIXED_BITS + prefix_len, key),
            AddrValue { flags, net_id: 0 },
            0,
        )
        .expect("insert cidr");
    }

    pub fn add_mac(&mut self, key: MacKey) {
        let mut m: HashMap<_, MacKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(names::MACS).expect("macs")).expect("macs");
        m.insert(key, 0, 0).expect("insert mac");
    }

    /// Every counter of the table, summed over CPUs.
    pub fn stats(&self) -> Vec<u64> {
        let stats: PerCpuArray<_, u64> =
            PerCpuArray::try_from(self.ebpf.map(names::STATS).expect("stats")).expect("stats");
        (0..STATS_LEN)
            .map(|i| stats.get(&i, 0).expect("stat").iter().sum())
            .collect()
    }

    /// One from-VM counter.
    pub fn stat(&self, stat: Stat) -> u64 {
        self.stats()[stat_index(Direction::FromVm, stat) as usize]
    }

    /// Drains the GARP ring buffer.
    pub fn events(&mut self) -> Vec<GarpEvent> {
        let mut v = Vec::new();
        while let Some(item) = self.garp_events.next() {
            assert_eq!(item.len(), size_of::<GarpEvent>(), "GARP event size");
            // SAFETY: GarpEvent is plain old data of exactly this size.
            v.push(unsafe { std::ptr::read_unaligned(item.as_ptr().cast::<GarpEvent>()) });
        }
        v
    }
}

/// The from-VM program of a hook.
pub fn from_vm_prog(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => progs::FROM_VM_XDP,
        Hook::Tc => progs::FROM_VM_TC,
    }
}

/// The stub program of a hook (XDP_PASS / TC_ACT_OK); benchmark build only.
#[cfg(feature = "bench")]
pub fn stub_prog(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => progs::STUB_XDP_PASS,
        Hook::Tc => progs::STUB_TC_OK,
    }
}

/// XDP_PASS / TC_ACT_OK.
pub fn pass_action(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => 2,
        Hook::Tc => 0,
    }
}

/// XDP_DROP / TC_ACT_SHOT.
pub fn drop_action(hook: Hook) -> u32 {
    match hook {
        Hook::Xdp => 1,
        Hook::Tc => 2,
    }
}

fn prog_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> &'a mut aya::programs::Program {
    ebpf.program_mut(name)
        .unwrap_or_else(|| panic!("no program {name} in the object"))
}

/// The verifier log, when that is what failed.
fn verifier_error(e: &aya::programs::ProgramError) -> String {
    match e {
        aya::programs::ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            format!("{io_error}\n{verifier_log}")
        }
        e => format!("{e:#}"),
    }
}

/// aya-log's level global (off in test runs).
fn aya_log_level() -> &'static str {
    "AYA_LOG_LEVEL"
}

/// Removes every entry of the hash map `name`.
fn clear_hash<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
    let mut m: HashMap<_, K, V> = HashMap::try_from(ebpf.map_mut(name).expect(name)).expect(name);
    let keys: Vec<K> = m.keys().map(|k| k.expect("key")).collect();
    for k in keys {
        m.remove(&k).expect("remove");
    }
}

// ---- Forwarding (issue 3) -------------------------------------------------------------

impl Datapath {
    /// Empties the forwarding maps (L2, neighbours, flood lists, tunnel admission, routes,
    /// devmap) and the chassis configuration (forwarding off). Part of [`Datapath::clear`].
    pub fn clear_fwd(&mut self) {
        clear_hash::<L2Key, L2Dest>(&mut self.ebpf, names::L2);
        clear_hash::<NeighKey, NeighValue>(&mut self.ebpf, names::NEIGH);
        clear_hash::<u32, FloodList>(&mut self.ebpf, names::FLOOD);
        clear_hash::<TunPeerKey, u32>(&mut self.ebpf, names::TUN_PEERS);
        clear_hash::<TunSrcKey, u32>(&mut self.ebpf, names::TUN_SRCS);
        {
            let mut m: LpmTrie<_, RouteKey, RouteDest> =
                LpmTrie::try_from(self.ebpf.map_mut(names::ROUTES).expect("routes")).expect("lpm");
            let keys: Vec<Key<RouteKey>> = m.keys().map(|k| k.expect("key")).collect();
            for k in keys {
                m.remove(&k).expect("remove");
            }
        }
        {
            let mut m = DevMapHash::try_from(self.ebpf.map_mut(names::DEVMAP).expect("devmap"))
                .expect("devmap");
            let keys: Vec<u32> = m.keys().map(|k| k.expect("key")).collect();
            for k in keys {
                m.remove(k).expect("remove");
            }
        }
        self.set_config(ChassisConfig::default());
    }

    /// `df_config_v1[0]`.
    pub fn set_config(&mut self, cfg: ChassisConfig) {
        let mut m: Array<_, ChassisConfig> =
            Array::try_from(self.ebpf.map_mut(names::CONFIG).expect("config")).expect("config");
        m.set(0, cfg, 0).expect("set config");
    }

    /// An exact address pair with its network (what the agent writes).
    pub fn add_addr_net(&mut self, key: AddrKey, flags: u32, net_id: u32) {
        let mut m: HashMap<_, AddrKey, AddrValue> =
            HashMap::try_from(self.ebpf.map_mut(names::ADDRS).expect("addrs")).expect("addrs");
        m.insert(key, AddrValue { flags, net_id }, 0)
            .expect("insert addr");
    }

    pub fn add_l2(&mut self, key: L2Key, dest: L2Dest) {
        let mut m: HashMap<_, L2Key, L2Dest> =
            HashMap::try_from(self.ebpf.map_mut(names::L2).expect("l2")).expect("l2");
        m.insert(key, dest, 0).expect("insert l2");
    }

    pub fn add_neigh(&mut self, key: NeighKey, v: NeighValue) {
        let mut m: HashMap<_, NeighKey, NeighValue> =
            HashMap::try_from(self.ebpf.map_mut(names::NEIGH).expect("neigh")).expect("neigh");
        m.insert(key, v, 0).expect("insert neigh");
    }

    /// A route: `key.ip` is the prefix, `prefix_len` its length in bits.
    pub fn add_route(&mut self, key: RouteKey, prefix_len: u32, dest: RouteDest) {
        let mut m: LpmTrie<_, RouteKey, RouteDest> =
            LpmTrie::try_from(self.ebpf.map_mut(names::ROUTES).expect("routes")).expect("routes");
        m.insert(&Key::new(ROUTE_FIXED_BITS + prefix_len, key), dest, 0)
            .expect("insert route");
    }

    pub fn set_flood(&mut self, net_id: u32, list: FloodList) {
        let mut m: HashMap<_, u32, FloodList> =
            HashMap::try_from(self.ebpf.map_mut(names::FLOOD).expect("flood")).expect("flood");
        m.insert(net_id, list, 0).expect("insert flood list");
    }

    /// Tunnel admission: the chassis `remote_ip` may send frames of `net_id` (`TUN_F_*`).
    pub fn add_tun_peer(&mut self, net_id: u32, remote_ip: [u8; 4], flags: u32) {
        let mut m: HashMap<_, TunPeerKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(names::TUN_PEERS).expect("tun peers"))
                .expect("tun peers");
        m.insert(TunPeerKey { net_id, remote_ip }, flags, 0)
            .expect("insert tunnel peer");
    }

    /// Tunnel admission: from `remote_ip`, frames of `net_id` with source `mac`.
    pub fn add_tun_src(&mut self, net_id: u32, remote_ip: [u8; 4], mac: [u8; 6], flags: u32) {
        let mut m: HashMap<_, TunSrcKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(names::TUN_SRCS).expect("tun srcs"))
                .expect("tun srcs");
        m.insert(TunSrcKey::new(net_id, remote_ip, mac), flags, 0)
            .expect("insert tunnel source");
    }

    /// Takes a tap out of the XDP devmap (as the agent does for taps XDP cannot deliver to).
    pub fn remove_devmap(&mut self, ifindex: u32) {
        let mut m = DevMapHash::try_from(self.ebpf.map_mut(names::DEVMAP).expect("devmap"))
            .expect("devmap");
        m.remove(ifindex)
            .unwrap_or_else(|e| panic!("devmap remove {ifindex}: {e}"));
    }

    /// Attaches `df_from_tunnel` to the tcx ingress of `dev`, a collect-metadata VXLAN
    /// device in the caller's namespace: a test run cannot give a frame tunnel metadata,
    /// so tunnel verdicts are taken from frames the real device decapsulated. Detached
    /// when the datapath is dropped.
    pub fn attach_from_tunnel(&mut self, dev: &str) {
        let p: &mut SchedClassifier = self
            .ebpf
            .program_mut(progs::FROM_TUNNEL_TC)
            .expect("tunnel program")
            .try_into()
            .expect("classifier");
        p.attach(dev, TcAttachType::Ingress)
            .unwrap_or_else(|e| panic!("attach the tunnel program to {dev}: {e}"));
    }

    /// A local tap in the XDP devmap (key = value = ifindex; the device must exist).
    pub fn add_devmap(&mut self, ifindex: u32) {
        let mut m = DevMapHash::try_from(self.ebpf.map_mut(names::DEVMAP).expect("devmap"))
            .expect("devmap");
        m.insert(ifindex, ifindex, None, 0)
            .unwrap_or_else(|e| panic!("devmap insert {ifindex}: {e}"));
    }

    /// One counter of `dir`.
    pub fn stat_in(&self, dir: Direction, stat: Stat) -> u64 {
        self.stats()[stat_index(dir, stat) as usize]
    }
}

/// The redirect-only stub of a hook (devmap redirect / bpf_redirect to the ingress);
/// benchmark build only.
#[cfg(feature = "bench")]
pub fn stub_redirect_prog(hook: Hook) -> &'static str {
    match hook {
        Hook::Xdp => progs::STUB_XDP_REDIRECT,
        Hook::Tc => progs::STUB_TC_REDIRECT,
    }
}

/// XDP_TX / TC_ACT_REDIRECT etc. for the forwarding tables.
pub mod actions {
    pub const XDP_DROP: u32 = 1;
    pub const XDP_PASS: u32 = 2;
    pub const XDP_TX: u32 = 3;
    pub const XDP_REDIRECT: u32 = 4;
    pub const TC_ACT_OK: u32 = 0;
    pub const TC_ACT_SHOT: u32 = 2;
    pub const TC_ACT_REDIRECT: u32 = 7;
}

// ---- Security groups (issue 4) --------------------------------------------------------

/// What a policy entry matches after the protocol (see `dragonflow_common::sg::PolicyKey`
/// for the prefix lengths).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ports {
    /// Any protocol (the prefix stops before `proto`).
    AnyProto,
    /// The protocol, every port (or every ICMP type).
    Any,
    /// The aligned block of `2^bits` destination ports starting at `base`.
    Block { base: u16, bits: u32 },
    /// One ICMP type, any code.
    IcmpType(u8),
    /// One ICMP type and code.
    IcmpTypeCode(u8, u8),
}

impl Ports {
    /// One destination port.
    pub const fn port(p: u16) -> Self {
        Ports::Block { base: p, bits: 0 }
    }
}

/// The `df_policy_v1` key of an allow rule of port `ifindex`.
pub fn policy_key(ifindex: u32, ident: u32, dir: u8, proto: u8, ports: Ports) -> Key<PolicyKey> {
    let (prefix, dport) = match ports {
        Ports::AnyProto => (POLICY_PROTO_BITS, [0, 0]),
        Ports::Any => (POLICY_PORT_BITS, [0, 0]),
        Ports::Block { base, bits } => {
            assert!(
                bits <= 16 && u32::from(base) % (1 << bits) == 0,
                "unaligned block"
            );
            (POLICY_PORT_BITS + 16 - bits, base.to_be_bytes())
        }
        Ports::IcmpType(t) => (POLICY_PORT_BITS + 8, [t, 0]),
        Ports::IcmpTypeCode(t, c) => (POLICY_PORT_BITS + 16, [t, c]),
    };
    let proto = if ports == Ports::AnyProto { 0 } else { proto };
    Key::new(
        prefix,
        PolicyKey {
            ifindex,
            ident,
            dir,
            proto,
            dport,
        },
    )
}

/// An identity key for `ip` (IPv4 in the first 4 bytes).
pub fn ident_key(family: u8, ip: [u8; 16]) -> IdentKey {
    IdentKey {
        family,
        _pad: [0; 3],
        ip,
    }
}

impl Datapath {
    /// Empties the security-group maps: conntrack, fragments, identities, policy. Part of
    /// [`Datapath::clear`].
    pub fn clear_sg(&mut self) {
        self.clear_conntrack();
        clear_hash::<IdentKey, u32>(&mut self.ebpf, names::IDENT);
        clear_lpm::<IdentKey, u32>(&mut self.ebpf, names::IDENT_LPM);
        clear_lpm::<PolicyKey, PolicyValue>(&mut self.ebpf, names::POLICY);
    }

    /// Empties the conntrack and fragment tables only (rules and identities stay).
    pub fn clear_conntrack(&mut self) {
        clear_hash::<CtKey, CtValue>(&mut self.ebpf, names::CT);
        clear_hash::<FragKey, FragValue>(&mut self.ebpf, names::FRAG);
    }

    /// A remote-group member: `ip` (exact) has identity `ident`.
    pub fn add_ident(&mut self, family: u8, ip: [u8; 16], ident: u32) {
        let mut m: HashMap<_, IdentKey, u32> =
            HashMap::try_from(self.ebpf.map_mut(names::IDENT).expect("ident")).expect("ident");
        m.insert(ident_key(family, ip), ident, 0)
            .expect("insert identity");
    }

    /// A prefix (CIDR member or rule prefix) with identity `ident`.
    pub fn add_ident_prefix(&mut self, family: u8, ip: [u8; 16], prefix_len: u32, ident: u32) {
        let mut m: LpmTrie<_, IdentKey, u32> =
            LpmTrie::try_from(self.ebpf.map_mut(names::IDENT_LPM).expect("ident lpm"))
                .expect("ident lpm");
        m.insert(
            &Key::new(IDENT_FIXED_BITS + prefix_len, ident_key(family, ip)),
            ident,
            0,
        )
        .expect("insert identity prefix");
    }

    /// An allow rule (see [`policy_key`]).
    pub fn add_policy(&mut self, key: Key<PolicyKey>) {
        let mut m: LpmTrie<_, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.ebpf.map_mut(names::POLICY).expect("policy")).expect("policy");
        m.insert(&key, PolicyValue { rule: 1 }, 0)
            .expect("insert policy");
    }

    pub fn remove_policy(&mut self, key: Key<PolicyKey>) {
        let mut m: LpmTrie<_, PolicyKey, PolicyValue> =
            LpmTrie::try_from(self.ebpf.map_mut(names::POLICY).expect("policy")).expect("policy");
        m.remove(&key).expect("remove policy");
    }

    /// Every conntrack entry.
    pub fn ct(&self) -> Vec<(CtKey, CtValue)> {
        let m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map(names::CT).expect("ct")).expect("ct");
        m.iter().map(|e| e.expect("ct entry")).collect()
    }

    /// Inserts a conntrack entry as the datapath would (`BPF_NOEXIST`); the error when
    /// the table is full.
    pub fn ct_insert(&mut self, key: CtKey, value: CtValue) -> Result<(), aya::maps::MapError> {
        let mut m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(names::CT).expect("ct")).expect("ct");
        m.insert(key, value, BPF_NOEXIST)
    }
}

/// `BPF_NOEXIST` (include/uapi/linux/bpf.h): create only.
const BPF_NOEXIST: u64 = 1;

/// Removes every entry of the LPM trie `name`.
fn clear_lpm<K: aya::Pod, V: aya::Pod>(ebpf: &mut Ebpf, name: &str) {
    let mut m: LpmTrie<_, K, V> = LpmTrie::try_from(ebpf.map_mut(name).expect(name)).expect(name);
    let keys: Vec<Key<K>> = m.keys().map(|k| k.expect("key")).collect();
    for k in keys {
        m.remove(&k).expect("remove");
    }
}

// ---- Per-port limits (issue 10) -------------------------------------------------------

impl Datapath {
    /// No limits, no flood bucket, no conntrack counter. Part of [`Datapath::clear`].
    pub fn clear_limits(&mut self) {
        self.set_limits(Limits::default());
        clear_hash::<u32, u64>(&mut self.ebpf, names::FLOOD_RL);
        clear_hash::<u32, CtCount>(&mut self.ebpf, names::CT_COUNT);
        clear_hash::<u32, CtFreed>(&mut self.ebpf, names::CT_FREED);
    }

    /// `df_limits_v1[0]`.
    pub fn set_limits(&mut self, l: Limits) {
        let mut m: Array<_, Limits> =
            Array::try_from(self.ebpf.map_mut(names::LIMITS).expect("limits")).expect("limits");
        m.set(0, l, 0).expect("set limits");
    }

    /// The flood bucket of a port: its theoretical arrival time (ns, CLOCK_MONOTONIC).
    pub fn flood_tat(&self, ifindex: u32) -> Option<u64> {
        let m: HashMap<_, u32, u64> =
            HashMap::try_from(self.ebpf.map(names::FLOOD_RL).expect("flood rl")).expect("lru");
        m.get(&ifindex, 0).ok()
    }

    /// Moves a port's flood bucket (e.g. back in time: time passed).
    pub fn set_flood_tat(&mut self, ifindex: u32, tat: u64) {
        let mut m: HashMap<_, u32, u64> =
            HashMap::try_from(self.ebpf.map_mut(names::FLOOD_RL).expect("flood rl")).expect("lru");
        m.insert(ifindex, tat, 0).expect("set flood bucket");
    }

    /// The datapath's conntrack counters of a port.
    pub fn ct_count(&self, ifindex: u32) -> Option<CtCount> {
        let m: HashMap<_, u32, CtCount> =
            HashMap::try_from(self.ebpf.map(names::CT_COUNT).expect("ct count")).expect("hash");
        m.get(&ifindex, 0).ok()
    }

    /// What the agent's collector writes after deleting counted entries of a port.
    pub fn set_ct_freed(&mut self, ifindex: u32, freed: CtFreed) {
        let mut m: HashMap<_, u32, CtFreed> =
            HashMap::try_from(self.ebpf.map_mut(names::CT_FREED).expect("ct freed")).expect("hash");
        m.insert(ifindex, freed, 0).expect("set freed");
    }

    /// Deletes one conntrack entry (as the agent's collector does).
    pub fn ct_remove(&mut self, key: &CtKey) {
        let mut m: HashMap<_, CtKey, CtValue> =
            HashMap::try_from(self.ebpf.map_mut(names::CT).expect("ct")).expect("ct");
        m.remove(key).expect("remove conntrack entry");
    }
}
