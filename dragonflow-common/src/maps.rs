//! Map names and capacities. Names are what the maps are pinned under in
//! `<pin_root>/dragonflow/<chassis>/`; bump the `_vN` suffix when a layout changes.
//! BPF object names are limited to 15 characters.

/// ifindex (u32) → [`crate::port::PortConfig`]. A tap with no entry is dropped (fail closed).
pub const PORTS: &str = "df_ports_v1";
pub const PORTS_MAX: u32 = 65_536;

/// [`crate::addr::AddrKey`] → [`crate::addr::AddrValue`]: exact (ifindex, MAC, IP) pairs a
/// port may send from: the fixed pairs, the single-IP AAPs and the IPv6 link-local
/// addresses derived from the allowed MACs.
pub const ADDRS: &str = "df_addrs_v2";
pub const ADDRS_MAX: u32 = 262_144;

/// LPM trie over [`crate::addr::AddrKey`] for CIDR allowed address pairs. The key's fixed
/// part (ifindex, MAC, family) is matched exactly by adding [`crate::addr::LPM_FIXED_BITS`]
/// to the prefix length. Consulted only for ports flagged
/// [`crate::port::PORT_F_CIDR_AAP`].
pub const CIDRS: &str = "df_cidrs_v2";
pub const CIDRS_MAX: u32 = 65_536;

/// [`crate::addr::MacKey`] → u32 flags: every MAC a port may send from. Consulted on the
/// slow path only, to tell a spoofed MAC from a spoofed IP, and for frames without an IP
/// source (DHCPDISCOVER, DAD, ARP probes).
pub const MACS: &str = "df_macs_v1";
pub const MACS_MAX: u32 = 131_072;

/// Per-CPU u64 counters indexed by [`crate::verdict::stat_index`].
pub const STATS: &str = "df_stats_v2";

/// Ring buffer of [`crate::event::GarpEvent`].
pub const GARP_EVENTS: &str = "df_garp_ev_v1";
pub const GARP_EVENTS_BYTES: u32 = 256 * 1024;

/// Ring buffer of [`crate::event::DropEvent`]: sampled drops for `dfctl monitor`.
pub const DROP_EVENTS: &str = "df_drop_ev_v1";
pub const DROP_EVENTS_BYTES: u32 = 256 * 1024;

/// Array[1] of [`crate::event::MonitorConfig`]: whether (and how fast) the datapath emits
/// drop events; set by the agent while a monitor client is connected.
pub const MONITOR: &str = "df_monitor_v1";

/// Per-CPU Array[1] of [`crate::event::DropRate`]: each CPU's drop-event window.
pub const DROP_RATE: &str = "df_drop_rl_v1";

/// Per-CPU hash u32 tap ifindex → [`crate::event::PortStats`]: each port's passes and
/// drops by reason and direction. The agent creates a port's entry when it attaches its
/// tap and deletes it on detach; the datapath only updates existing entries (a tap without
/// one is not counted per port). Not preallocated: memory only for the ports there are.
pub const PORT_STATS: &str = "df_port_stats_v1";
pub const PORT_STATS_MAX: u32 = PORTS_MAX;

/// LRU [`crate::event::GarpRateKey`] → u64 last event time (ns, bpf_ktime_get_ns): the
/// per (port, IP) rate limit of GARP events.
pub const GARP_RATE: &str = "df_garp_rl_v1";
pub const GARP_RATE_MAX: u32 = 65_536;

/// [`crate::fwd::L2Key`] → [`crate::fwd::L2Dest`]: every port MAC (and router interface
/// MAC) of every network with a port on this chassis, local or remote.
pub const L2: &str = "df_l2_v1";
pub const L2_MAX: u32 = 262_144;

/// [`crate::fwd::NeighKey`] → [`crate::fwd::NeighValue`]: IP → MAC per network, for the
/// ARP/ND responder and the L3 stage.
pub const NEIGH: &str = "df_neigh_v1";
pub const NEIGH_MAX: u32 = 262_144;

/// net_id (u32) → [`crate::fwd::FloodList`].
pub const FLOOD: &str = "df_flood_v1";
pub const FLOOD_NETS_MAX: u32 = 16_384;

/// LPM [`crate::fwd::RouteKey`] → [`crate::fwd::RouteDest`]: each router's connected
/// subnets.
pub const ROUTES: &str = "df_routes_v1";
pub const ROUTES_MAX: u32 = 65_536;

/// Array[1] of [`crate::fwd::ChassisConfig`].
pub const CONFIG: &str = "df_config_v1";

/// DEVMAP_HASH ifindex → ifindex of local taps, for XDP redirects.
pub const DEVMAP: &str = "df_devmap_v1";
pub const DEVMAP_MAX: u32 = 65_536;

/// [`crate::sg::CtKey`] → [`crate::sg::CtValue`]: connection tracking of the security
/// groups. A plain hash, not an LRU: a full table drops new flows (`ct_full`) instead of
/// letting one VM's flood evict other VMs' established flows. The agent collects expired
/// entries.
pub const CT: &str = "df_ct_v1";
pub const CT_MAX: u32 = 262_144;

/// LRU [`crate::sg::FragKey`] → [`crate::sg::FragValue`]: first fragments seen, so later
/// fragments can be judged by the first one's ports. An evicted entry only drops later
/// fragments (fail closed).
pub const FRAG: &str = "df_frag_v1";
pub const FRAG_MAX: u32 = 16_384;

/// [`crate::sg::IdentKey`] → u32 identity: exact host addresses (fixed IPs, single-IP
/// AAPs) of remote-group members.
pub const IDENT: &str = "df_ident_v1";
pub const IDENT_MAX: u32 = 262_144;

/// LPM over [`crate::sg::IdentKey`] → u32 identity: CIDR members (AAP CIDRs) and rule
/// prefixes (`remote_ip_prefix`).
pub const IDENT_LPM: &str = "df_ident_lpm_v1";
pub const IDENT_LPM_MAX: u32 = 65_536;

/// LPM over [`crate::sg::PolicyKey`] → [`crate::sg::PolicyValue`]: the allow rules of the
/// local ports, per identity.
pub const POLICY: &str = "df_policy_v1";
pub const POLICY_MAX: u32 = 262_144;

/// [`crate::fwd::GroupKey`] → [`crate::fwd::Group`]: the holders of each shared
/// allowed-address-pair MAC and IP (broadcast way), referenced by L2 entries of kind
/// `DEST_GROUP` and neighbours flagged `NEIGH_F_SHARED`.
pub const GROUPS: &str = "df_groups_v1";
pub const GROUPS_MAX: u32 = 16_384;

/// Array[1] of [`crate::limits::Limits`]: the per-port limits (flood rate, conntrack
/// quota). Apart from [`CONFIG`] so that neither layout has to change with the other: a
/// renamed config map would start empty on upgrade, with forwarding and security groups
/// off on live taps until the agent's first write; an empty limits map only means no
/// limits until then.
pub const LIMITS: &str = "df_limits_v1";

/// LRU u32 tap ifindex → u64 theoretical arrival time of the port's flood bucket (ns,
/// bpf_ktime_get_ns; see [`crate::limits`]). Made by the datapath on a port's first
/// flooded frame; an LRU so that buckets of removed ports cannot pile up (a tap reusing
/// an ifindex at worst starts with the previous bucket, which refills within
/// burst / rate seconds).
pub const FLOOD_RL: &str = "df_flood_rl_v1";
pub const FLOOD_RL_MAX: u32 = PORTS_MAX;

/// u32 tap ifindex → [`crate::limits::CtCount`]: conntrack entries the datapath inserted
/// and deleted per port (made on a port's first counted entry; removed by the agent's
/// collector once the tap has no port and no counted entry left).
pub const CT_COUNT: &str = "df_ct_count_v1";
/// u32 tap ifindex → [`crate::limits::CtFreed`]: counted conntrack entries the agent's
/// collector deleted per port (its only writer); removed with [`CT_COUNT`]'s entry.
pub const CT_FREED: &str = "df_ct_freed_v1";
pub const CT_COUNT_MAX: u32 = PORTS_MAX;

/// PROG_ARRAY of the programs the pipeline tail-calls, filled by the agent after it
/// loads them (index [`PROG_AAP_GROUP`]). Pinned so that its entries outlive the agent
/// process (a prog array is emptied when its last user reference goes).
pub const PROGS: &str = "df_progs_v1";
pub const PROGS_MAX: u32 = 4;
/// Index of [`progs::AAP_GROUP_TC`] in [`PROGS`].
pub const PROG_AAP_GROUP: u32 = 0;

/// [`crate::fwd::TunPeerKey`] → u32 `TUN_F_*`: the live chassis that may send frames of
/// each network hosted here (slow path of the tunnel program: names the drop reason).
pub const TUN_PEERS: &str = "df_tun_peers_v1";
pub const TUN_PEERS_MAX: u32 = 65_536;

/// [`crate::fwd::TunSrcKey`] → u32 `TUN_F_*`: every (network, chassis, source MAC) the
/// tunnel program admits (see `fwd::TunSrcKey`); filled for the networks hosted here.
pub const TUN_SRCS: &str = "df_tun_srcs_v1";
pub const TUN_SRCS_MAX: u32 = 262_144;

/// Array[1] of `[u32; 2]` (VNI, outer IPv4 source as a word in network order): the tunnel
/// key [`progs::BENCH_FROM_TUNNEL_TC`] uses. Micro-benchmark only (in the benchmark
/// build's object only); not pinned.
pub const BENCH_TUN: &str = "df_bench_tun";

/// Every map the agent pins and adopts, in one list (for cleanup and metrics). A pinned
/// map whose name is not here is a leftover of an older layout: the agent removes it.
pub const ALL: &[&str] = &[
    PORTS,
    ADDRS,
    CIDRS,
    MACS,
    STATS,
    GARP_EVENTS,
    GARP_RATE,
    DROP_EVENTS,
    MONITOR,
    DROP_RATE,
    PORT_STATS,
    L2,
    NEIGH,
    FLOOD,
    ROUTES,
    CONFIG,
    DEVMAP,
    CT,
    FRAG,
    IDENT,
    IDENT_LPM,
    POLICY,
    GROUPS,
    PROGS,
    TUN_PEERS,
    TUN_SRCS,
    LIMITS,
    FLOOD_RL,
    CT_COUNT,
    CT_FREED,
];

/// Capacity of a map by name, for fill-level metrics (`None` for arrays/ring buffers).
pub fn capacity(name: &str) -> Option<u32> {
    match name {
        PORTS => Some(PORTS_MAX),
        ADDRS => Some(ADDRS_MAX),
        CIDRS => Some(CIDRS_MAX),
        MACS => Some(MACS_MAX),
        GARP_RATE => Some(GARP_RATE_MAX),
        L2 => Some(L2_MAX),
        NEIGH => Some(NEIGH_MAX),
        FLOOD => Some(FLOOD_NETS_MAX),
        ROUTES => Some(ROUTES_MAX),
        DEVMAP => Some(DEVMAP_MAX),
        CT => Some(CT_MAX),
        FRAG => Some(FRAG_MAX),
        IDENT => Some(IDENT_MAX),
        IDENT_LPM => Some(IDENT_LPM_MAX),
        POLICY => Some(POLICY_MAX),
        GROUPS => Some(GROUPS_MAX),
        TUN_PEERS => Some(TUN_PEERS_MAX),
        TUN_SRCS => Some(TUN_SRCS_MAX),
        FLOOD_RL => Some(FLOOD_RL_MAX),
        CT_COUNT | CT_FREED => Some(CT_COUNT_MAX),
        PORT_STATS => Some(PORT_STATS_MAX),
        _ => None,
    }
}

/// Program names in the object (the Rust function names of the entry points).
pub mod progs {
    /// The from-VM pipeline attached as XDP on a tap.
    pub const FROM_VM_XDP: &str = "df_from_vm_xdp";
    /// The same pipeline attached as TC (tcx ingress) on a tap.
    pub const FROM_VM_TC: &str = "df_from_vm_tc";
    /// Former tcx ingress companion of the XDP hook on veth taps: drops frames whose 802.1Q
    /// tag was offloaded into skb metadata, which an XDP program cannot see. Kept in the
    /// object for compatibility; with forwarding the companion is [`FROM_VM_TC`] (it
    /// drops such frames too, and finishes what XDP hands off).
    pub const VLAN_GUARD_TC: &str = "df_vlan_guard";
    /// tcx ingress on `df-vxlan`: frames from other chassis, delivered by (VNI, dst MAC).
    pub const FROM_TUNNEL_TC: &str = "df_from_tunnel";
    // The stubs and `BENCH_FROM_TUNNEL_TC` exist only in the benchmark build's object
    // (dragonflow-ebpf's feature `bench-progs`), never in the agent's.
    /// Micro-benchmark floor: an XDP program that only returns XDP_PASS.
    pub const STUB_XDP_PASS: &str = "df_stub_xdp_pass";
    /// Micro-benchmark floor: a TC program that only returns TC_ACT_OK.
    pub const STUB_TC_OK: &str = "df_stub_tc_ok";
    /// Micro-benchmark floor of a local delivery from XDP: devmap redirect to the ingress
    /// ifindex (which must be in `df_devmap_v1`).
    pub const STUB_XDP_REDIRECT: &str = "df_stub_xdp_redirect";
    /// Micro-benchmark floor of a local delivery from TC: bpf_redirect to the ingress
    /// ifindex.
    pub const STUB_TC_REDIRECT: &str = "df_stub_tc_redirect";
    /// Micro-benchmark only, never attached: [`FROM_TUNNEL_TC`] with its tunnel key read
    /// from [`super::BENCH_TUN`] (a test run cannot give a frame tunnel metadata).
    pub const BENCH_FROM_TUNNEL_TC: &str = "df_bench_from_tunnel";
    /// Tail-called by `df_from_vm_tc` and `df_from_tunnel` (through [`super::PROGS`] at
    /// [`super::PROG_AAP_GROUP`]): the copies of a frame to the holders of
    /// a shared allowed-address-pair address (broadcast way). Never attached.
    pub const AAP_GROUP_TC: &str = "df_aap_group";
}

/// Load-time globals (`EbpfLoader::set_global`), read-only in the datapath.
pub mod globals {
    /// Minimum interval between two GARP events for the same (port, IP), in ns.
    pub const GARP_MIN_INTERVAL_NS: &str = "GARP_MIN_INTERVAL_NS";
    pub const GARP_MIN_INTERVAL_NS_DEFAULT: u64 = 200_000_000;
}
