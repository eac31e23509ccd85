//! The forwarding half of the desired state (pure, like `reconcile`): from the NB
//! snapshot, the local ports' taps and the live chassis records, the entries of
//! `df_l2_v1`, `df_neigh_v1`, `df_flood_v1`, `df_groups_v1`, `df_routes_v1` and
//! `df_devmap_v1`.
//!
//! Fill rules (issues 3 and 5):
//! - every lswitch of the snapshot with at least one port or router interface is
//!   installed; the controller passes the part of the cloud this chassis depends on
//!   (`scope`): the networks of its local ports and those their routers connect, which
//!   are all a VM here can send to or route to;
//! - L2 (network, MAC): a bound port's MAC → `DEST_LOCAL{tap ifindex}` when it is bound
//!   here and its tap is programmed, `DEST_REMOTE{tunnel_ip}` when bound to another chassis
//!   whose `chassis/` record exists (a chassis without a record — stopped, or its lease
//!   expired — contributes nothing: its ports are unknown unicast until it is back). An
//!   allowed-address-pair MAC exactly one port of the network uses gets its port's
//!   destination. A router interface MAC → `DEST_ROUTER{router_id}`. `mtu` is always the
//!   network's.
//! - neighbours (network, IP) → MAC: router interface IPs (`NEIGH_F_ROUTER`); fixed IPs of
//!   ports that have an L2 destination (`NEIGH_F_FIXED`: the responder only answers for
//!   addresses it can deliver to); single-IP AAPs listed by exactly one port of the
//!   network, with that AAP's MAC, when that MAC's L2 entry leads to the port
//!   (`NEIGH_F_AAP`). First writer wins on a clash: router interfaces, then fixed IPs,
//!   then AAPs, each in id order. (A port's own MAC and fixed IPs are never shared: an
//!   AAP naming them does not displace them.)
//! - shared allowed-address-pair addresses — a MAC several ports list (a VRRP virtual MAC
//!   00:00:5e:00:01:xx), a single-IP AAP several ports list (a keepalived VIP) — follow
//!   the network's effective AAP mode: the lswitch's `aap_mode` if set, else this agent's
//!   (the one it publishes in its `chassis/` record):
//!   - **broadcast way** (and the detection way without a valid active port): a shared
//!     MAC's L2 entry is `DEST_GROUP`, its group (`GroupKey::mac`) one member per local
//!     holder's tap and one per other chassis hosting holders (that chassis resolves the
//!     same key to its own local holders). A shared IP's neighbour is `NEIGH_F_SHARED`
//!     (never answered; an ARP request / NS for it goes to the holders only, never
//!     flooded), its group (`GroupKey::ip`) one member per (holder tap, MAC) and per
//!     (chassis, MAC) with the holder's MAC for the IP, so a routed or switched packet
//!     reaches every holder with its own MAC; the L2 entries of those MACs get
//!     `L2_F_SHARED_IP` (a packet to a holder's MAC is checked for the shared IP). An IP
//!     group with no reachable holder is installed empty: ARP for it is dropped
//!     (`no_holder`), not flooded. Groups are cut at `GROUP_MAX` (locals first, warned);
//!   - **detection way** with an `activeport/<lswitch>/<ip>` entry whose port still lists
//!     that (IP, MAC) pair and has a destination from here (bound to a live chassis, tap
//!     programmed if local): the IP's neighbour is the active MAC (`NEIGH_F_AAP |
//!     NEIGH_F_ACTIVE`, answered by the responder), and if that MAC is shared its L2 entry
//!     is the active port's destination (two IPs active on different ports with one shared
//!     MAC: the first IP wins, warned). The L2 entries of the MACs the holders list the IP
//!     with get `L2_F_SHARED_IP`, as in the broadcast way: a packet for the IP sent to
//!     another holder's MAC (a client's cache from before a failover) is readdressed to
//!     the active MAC. Routed and switched traffic then reaches the active port only. Any
//!     other entry is ignored (warned) and the address goes the broadcast way.
//!
//!   When the live chassis hosting a network's ports publish different modes and the
//!   lswitch does not override, they would forward its shared addresses differently: a
//!   warning (logged once, `dragonflow_aap_mode_disagreements`, `/state`).
//! - flood lists, per network with a programmed local port: the local taps (by port id),
//!   then one `DEST_REMOTE` per other live chassis hosting bound ports of the network (by
//!   chassis name, one per tunnel IP). Longer than `FLOOD_MAX`: cut to the first
//!   `FLOOD_MAX` (locals first), reported in [`Desired::flood_overflow`].
//! - routes: per router interface, its prefix (host bits cleared) under the router's id
//!   → {net_id of its lswitch, interface MAC}.
//! - devmap: every programmed local tap → itself; the controller then keeps only the tun
//!   taps (`datapath::sys::is_tun`), the ones native XDP can deliver into.
//! - tunnel admission (issue 10), per network with a flood list (a programmed local
//!   port; frames of other networks have nowhere to go here): `df_tun_peers_v1` (network,
//!   tunnel IP) for every live chassis other than this one hosting bound ports of the
//!   network (`TUN_F_PORT`) or of a network a router connects it to (`TUN_F_ROUTER`:
//!   distributed routing sends from any such chassis); `df_tun_srcs_v1` (network, tunnel
//!   IP, MAC) for the MACs each may send from: a port's own and allowed-address-pair MACs
//!   whose L2 entry leads to that chassis, a shared allowed-address-pair MAC from every
//!   holder's chassis, the router interface MAC from every routing chassis. A MAC whose L2
//!   entry is a local port's is never admitted (a spoof), nor anything of a chassis
//!   whose record has gone (stopped, lease expired): its entries leave with it. The own
//!   MAC of a port without port security is flagged `TUN_F_UNSECURED` (its frames skip
//!   the sanity checks that its own chassis did not apply either).
//!
//! Router ids: the datapath keys routes by a u32; [`router_id`] derives it from the
//! router's id string with 32-bit FNV-1a, so every chassis computes the same number with
//! no coordination. Two routers hashing alike are detected here: the one with the lower id
//! keeps the number, the other is skipped with a warning (renaming either resolves it).

mod aap;
mod admission;
mod context;
mod network;
#[cfg(test)]
mod tests;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

pub use aap::mode_name;
pub use admission::{peer_key, src_key};
pub(crate) use context::Context;
use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{NeighKey, ROUTE_FIXED_BITS, RouteKey},
};
pub(crate) use network::network;
use serde::Serialize;

use crate::{
    desired::{
        hash::fnv1a,
        reconcile::{Desired, MapEntries, RouteLpmKey},
    },
    nb::{AapMode, IpPrefix, LPort, NbSnapshot},
};

/// The datapath's id of a router: 32-bit FNV-1a of its id string (see [`fnv1a`]; never 0,
/// so that a zeroed `L2Dest` never names a router).
pub fn router_id(id: &str) -> u32 {
    fnv1a(id)
}

/// What one network looks like from this chassis (for /state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct NetworkView {
    pub lswitch: String,
    pub net_id: u32,
    /// Local ports of the network whose taps are programmed.
    pub local_ports: Vec<String>,
    /// Live chassis hosting ports of the network (not this one).
    pub remote_chassis: Vec<String>,
    /// Routers with an interface on it.
    pub routers: Vec<String>,
    /// Destinations in its flood list (`None`: no local port, so no flood list here).
    pub flood_len: Option<usize>,
    /// The AAP mode this chassis applies to the network (the lswitch's override, else
    /// this agent's `--aap-mode`).
    pub aap_mode: AapMode,
    /// When the live chassis hosting its ports would not all use the same mode: each one's
    /// (the warning also goes to the log and `dragonflow_aap_mode_disagreements`).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub aap_mode_disagreement: BTreeMap<String, AapMode>,
    /// Allowed-address-pair MACs and IPs several ports of the network list.
    pub shared: Vec<SharedView>,
}

/// A shared allowed-address-pair address of a network, as this chassis forwards it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SharedView {
    /// The IP or MAC.
    pub address: String,
    /// `ip` or `mac`.
    pub kind: &'static str,
    /// Every port of the network that lists it.
    pub holders: Vec<String>,
    /// `broadcast`: copies to every reachable holder; `detection`: to the active port only
    /// (a detection-mode network without a valid active entry shows `broadcast`).
    pub way: AapMode,
    /// The detected active port (detection way).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub active_port: Option<String>,
    /// The holders that traffic for it reaches from this chassis (bound to a live chassis;
    /// local ones with their tap programmed).
    pub delivered_to: Vec<String>,
}

/// The IPv4 a chassis record's tunnel_ip gives the datapath, or why it cannot be used.
pub fn tunnel_v4(ip: IpAddr) -> Result<[u8; 4], &'static str> {
    match ip {
        IpAddr::V6(_) => Err("IPv6 (the VXLAN underlay is IPv4 only for now)"),
        IpAddr::V4(a) if a.is_unspecified() || a.is_loopback() || a.is_multicast() => {
            Err("not an address another chassis can reach")
        }
        IpAddr::V4(a) if a.is_broadcast() => Err("not an address another chassis can reach"),
        IpAddr::V4(a) => Ok(a.octets()),
    }
}

pub fn neigh_key(net_id: u32, ip: IpAddr) -> NeighKey {
    let (family, ip) = ip16(ip);
    NeighKey {
        net_id,
        family,
        _pad: [0; 3],
        ip,
    }
}

/// The LPM key of a router interface's connected prefix (host bits cleared: the trie
/// would keep them, and a later read-back must compare equal).
pub fn route_key(router_id: u32, prefix: &IpPrefix) -> RouteLpmKey {
    let (family, ip) = ip16(prefix.network());
    RouteLpmKey {
        prefix_len: ROUTE_FIXED_BITS + u32::from(prefix.len),
        key: RouteKey {
            router_id,
            family,
            _pad: [0; 3],
            ip,
        },
    }
}

fn ip16(ip: IpAddr) -> (u8, [u8; 16]) {
    match ip {
        IpAddr::V4(a) => {
            let mut b = [0u8; 16];
            b[..4].copy_from_slice(&a.octets());
            (FAMILY_V4, b)
        }
        IpAddr::V6(a) => (FAMILY_V6, a.octets()),
    }
}

/// One network's share of the forwarding state: its entries (every key of them carries
/// its network: L2, neighbours, flood list, shared-address groups, tunnel admission — and
/// the routes of the router interfaces on it), its view and its warnings.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NetPart {
    pub entries: MapEntries,
    /// Shared with `Desired::networks` and the /state view: copied per change otherwise.
    pub view: Arc<NetworkView>,
    pub warnings: BTreeSet<String>,
    /// Destinations wanted when its flood list is cut to `FLOOD_MAX`.
    pub flood_overflow: Option<usize>,
}

/// Fills the forwarding maps of `out` (whose port entries and local port states
/// `reconcile::desired` has computed) and its network views, for every network of `nb`.
pub(crate) fn compute(me: &str, nb: &NbSnapshot, out: &mut Desired) {
    let ctx = Context::new(me, nb, &out.local_ports, nb.lrouters.values());
    let mut ports_by_net: BTreeMap<&str, Vec<&LPort>> = BTreeMap::new();
    for p in nb.lports.values() {
        if nb.lswitches.contains_key(&p.lswitch) {
            ports_by_net.entry(&p.lswitch).or_default().push(p);
        }
    }
    let nets: BTreeSet<&str> = ports_by_net.keys().copied().chain(ctx.routed()).collect();
    let hosts: BTreeMap<String, BTreeSet<[u8; 4]>> = ports_by_net
        .iter()
        .map(|(n, ports)| (n.to_string(), ctx.hosts(ports)))
        .collect();
    let parts: Vec<NetPart> = nets
        .into_iter()
        .map(|net| {
            let ports = ports_by_net.get(net).map(Vec::as_slice).unwrap_or_default();
            network(&ctx, nb, net, ports, &hosts)
        })
        .collect();
    let (warnings, remote, devmap) = (ctx.warnings.clone(), ctx.remote_chassis(), ctx.devmap());
    for part in parts {
        out.add(part);
    }
    out.warnings.extend(warnings);
    out.remote_chassis = remote;
    out.entries.devmap.extend(devmap);
}
