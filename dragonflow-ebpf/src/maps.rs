//! The maps, exactly as named and sized in `dragonflow_common::maps` (the `#[map]` macro
//! needs a literal name; the verdict tests open every map by the common constant, so a
//! mismatch fails them). All pinned by name: the agent adopts them from its pin dir.
//!
//! Ground layer: every map the agent shares. Maps private to one part of the crate live
//! with it (the security-group stage's scratch slot in `sg`, the benchmark's tunnel key in
//! `bench`). Imports nothing of this crate.

use aya_ebpf::{
    macros::map,
    maps::{Array, DevMapHash, HashMap, LpmTrie, LruHashMap, PerCpuArray, ProgramArray, RingBuf},
};
use dragonflow_common::{
    addr::{AddrKey, AddrValue, MacKey},
    event::GarpRateKey,
    fwd::{
        ChassisConfig, FloodList, Group, GroupKey, L2Dest, L2Key, NeighKey, NeighValue, RouteDest,
        RouteKey, TunPeerKey, TunSrcKey,
    },
    limits::{CtCount, CtFreed, Limits},
    maps::{
        ADDRS_MAX, CIDRS_MAX, CT_COUNT_MAX, CT_MAX, DEVMAP_MAX, FLOOD_NETS_MAX, FLOOD_RL_MAX,
        FRAG_MAX, GARP_EVENTS_BYTES, GARP_RATE_MAX, GROUPS_MAX, IDENT_LPM_MAX, IDENT_MAX, L2_MAX,
        MACS_MAX, NEIGH_MAX, POLICY_MAX, PORTS_MAX, PROGS_MAX, ROUTES_MAX, TUN_PEERS_MAX,
        TUN_SRCS_MAX,
    },
    port::PortConfig,
    sg::{CtKey, CtValue, FragKey, FragValue, IdentKey, PolicyKey, PolicyValue},
    verdict::STATS_LEN,
};

/// ifindex → port configuration.
#[map(name = "df_ports_v1")]
pub(crate) static PORTS: HashMap<u32, PortConfig> = HashMap::pinned(PORTS_MAX, 0);

/// Exact (ifindex, MAC, IP) pairs a port may send from.
#[map(name = "df_addrs_v2")]
pub(crate) static ADDRS: HashMap<AddrKey, AddrValue> = HashMap::pinned(ADDRS_MAX, 0);

/// CIDR allowed address pairs (LPM; `BPF_F_NO_PREALLOC` is added by aya-ebpf).
#[map(name = "df_cidrs_v2")]
pub(crate) static CIDRS: LpmTrie<AddrKey, AddrValue> = LpmTrie::pinned(CIDRS_MAX, 0);

/// Every MAC a port may send from (slow path: picks the drop reason).
#[map(name = "df_macs_v1")]
pub(crate) static MACS: HashMap<MacKey, u32> = HashMap::pinned(MACS_MAX, 0);

/// Per-CPU packet counters, `dragonflow_common::verdict::stat_index`.
#[map(name = "df_stats_v2")]
pub(crate) static STATS: PerCpuArray<u64> = PerCpuArray::pinned(STATS_LEN, 0);

/// GARP events for the agent.
#[map(name = "df_garp_ev_v1")]
pub(crate) static GARP_EVENTS: RingBuf = RingBuf::pinned(GARP_EVENTS_BYTES, 0);

/// Last GARP event time per (port, IP).
#[map(name = "df_garp_rl_v1")]
pub(crate) static GARP_RATE: LruHashMap<GarpRateKey, u64> = LruHashMap::pinned(GARP_RATE_MAX, 0);

/// (network, MAC) → local tap, remote chassis or router.
#[map(name = "df_l2_v1")]
pub(crate) static L2: HashMap<L2Key, L2Dest> = HashMap::pinned(L2_MAX, 0);

/// (network, IP) → MAC: the ARP/ND responder's answers and the L3 stage's next hop.
#[map(name = "df_neigh_v1")]
pub(crate) static NEIGH: HashMap<NeighKey, NeighValue> = HashMap::pinned(NEIGH_MAX, 0);

/// net_id → the network's flood list (replaced whole by the agent). An entry exists for
/// every network with a port on this chassis: its absence means "unknown network".
#[map(name = "df_flood_v1")]
pub(crate) static FLOOD: HashMap<u32, FloodList> = HashMap::pinned(FLOOD_NETS_MAX, 0);

/// Each router's connected subnets (LPM).
#[map(name = "df_routes_v1")]
pub(crate) static ROUTES: LpmTrie<RouteKey, RouteDest> = LpmTrie::pinned(ROUTES_MAX, 0);

/// Chassis-wide configuration, index 0.
#[map(name = "df_config_v1")]
pub(crate) static CONFIG: Array<ChassisConfig> = Array::pinned(1, 0);

/// Local taps for XDP redirects (key = value = the tap's ifindex).
#[map(name = "df_devmap_v1")]
pub(crate) static DEVMAP: DevMapHash = DevMapHash::pinned(DEVMAP_MAX, 0);

/// Connection tracking of the security groups (see `dragonflow_common::sg`).
#[map(name = "df_ct_v1")]
pub(crate) static CT: HashMap<CtKey, CtValue> = HashMap::pinned(CT_MAX, 0);

/// First fragments seen, for judging the later fragments of a datagram.
#[map(name = "df_frag_v1")]
pub(crate) static FRAG: LruHashMap<FragKey, FragValue> = LruHashMap::pinned(FRAG_MAX, 0);

/// Exact host address → identity (remote-group members).
#[map(name = "df_ident_v1")]
pub(crate) static IDENT: HashMap<IdentKey, u32> = HashMap::pinned(IDENT_MAX, 0);

/// Prefix → identity (CIDR members, rule prefixes).
#[map(name = "df_ident_lpm_v1")]
pub(crate) static IDENT_LPM: LpmTrie<IdentKey, u32> = LpmTrie::pinned(IDENT_LPM_MAX, 0);

/// (port, identity, direction, protocol, port block) → allow.
#[map(name = "df_policy_v1")]
pub(crate) static POLICY: LpmTrie<PolicyKey, PolicyValue> = LpmTrie::pinned(POLICY_MAX, 0);

/// Holders of each shared allowed-address-pair MAC and IP (broadcast way), see
/// `dragonflow_common::fwd::Group`.
#[map(name = "df_groups_v1")]
pub(crate) static GROUPS: HashMap<GroupKey, Group> = HashMap::pinned(GROUPS_MAX, 0);

/// Tail-call targets (`dragonflow_common::maps::PROGS`), filled by the agent.
#[map(name = "df_progs_v1")]
pub(crate) static PROGS: ProgramArray = ProgramArray::pinned(PROGS_MAX, 0);

/// (network, chassis) pairs allowed to send through the tunnel (slow path: names the
/// drop reason), see `dragonflow_common::fwd::TunPeerKey`.
#[map(name = "df_tun_peers_v1")]
pub(crate) static TUN_PEERS: HashMap<TunPeerKey, u32> = HashMap::pinned(TUN_PEERS_MAX, 0);

/// (network, chassis, source MAC) admitted from the tunnel, see
/// `dragonflow_common::fwd::TunSrcKey`.
#[map(name = "df_tun_srcs_v1")]
pub(crate) static TUN_SRCS: HashMap<TunSrcKey, u32> = HashMap::pinned(TUN_SRCS_MAX, 0);

/// Per-port limits (`dragonflow_common::limits`), index 0.
#[map(name = "df_limits_v1")]
pub(crate) static LIMITS: Array<Limits> = Array::pinned(1, 0);

/// Each port's flood bucket: its theoretical arrival time (see `limits`).
#[map(name = "df_flood_rl_v1")]
pub(crate) static FLOOD_RL: LruHashMap<u32, u64> = LruHashMap::pinned(FLOOD_RL_MAX, 0);

/// Conntrack entries the datapath inserted and deleted, per port.
#[map(name = "df_ct_count_v1")]
pub(crate) static CT_COUNT: HashMap<u32, CtCount> = HashMap::pinned(CT_COUNT_MAX, 0);

/// Counted conntrack entries the agent deleted, per port (read only here).
#[map(name = "df_ct_freed_v1")]
pub(crate) static CT_FREED: HashMap<u32, CtFreed> = HashMap::pinned(CT_COUNT_MAX, 0);
