//! The forwarding half of the desired state (pure, like `reconcile.rs`): from the NB
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

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        DEST_GROUP, DEST_LOCAL, DEST_REMOTE, DEST_ROUTER, FLOOD_MAX, FloodDest, FloodList,
        GROUP_M_F_FIRST, GROUP_MAX, Group, GroupKey, GroupMember, L2_F_SHARED_IP, L2Dest, L2Key,
        NEIGH_F_AAP, NEIGH_F_ACTIVE, NEIGH_F_FIXED, NEIGH_F_ROUTER, NEIGH_F_SHARED, NeighKey,
        NeighValue, ROUTE_FIXED_BITS, RouteDest, RouteKey, TUN_F_PORT, TUN_F_ROUTER,
        TUN_F_UNSECURED, TunPeerKey, TunSrcKey,
    },
};
use serde::Serialize;

use crate::{
    nb::{AapMode, ActivePort, IpPrefix, LPort, LRouter, LRouterPort, LSwitch, MacAddr},
    reconcile::{Desired, LocalPort, MapEntries, NbSnapshot, PortState, RouteLpmKey},
};

/// The datapath's id of a router: 32-bit FNV-1a of its id string (0 is mapped to 1 so
/// that a zeroed `L2Dest` never names a router).
pub fn router_id(id: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in id.as_bytes() {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == 0 { 1 } else { h }
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

/// What the fill of every network needs beyond the network itself: the live chassis,
/// the local ports' taps and the routers.
pub(crate) struct Context<'a> {
    me: &'a str,
    /// This agent's AAP mode is the one it publishes in its chassis record (written before
    /// the first read of etcd), so it is judged by the same rule as every other chassis'.
    my_mode: AapMode,
    /// Live chassis we can tunnel to.
    remote: BTreeMap<&'a str, [u8; 4]>,
    /// Programmed local ports → their taps' ifindex.
    local: BTreeMap<&'a str, u32>,
    /// Router interfaces by lswitch (routers with collision-checked ids).
    ifaces: BTreeMap<&'a str, Vec<(u32, &'a LRouter, &'a LRouterPort)>>,
    /// Problems that concern no single network (chassis records, router ids).
    pub warnings: BTreeSet<String>,
}

impl<'a> Context<'a> {
    /// `routers`: those whose networks are being filled (in id order, for the collision
    /// rule).
    pub(crate) fn new(
        me: &'a str,
        nb: &'a NbSnapshot,
        local_ports: &'a [LocalPort],
        routers: impl IntoIterator<Item = &'a LRouter>,
    ) -> Self {
        let mut warnings = BTreeSet::new();
        // Live chassis we can tunnel to.
        let my_ip = nb.chassis.get(me).and_then(|c| tunnel_v4(c.tunnel_ip).ok());
        // This agent's AAP mode is the one it publishes in its chassis record (written before
        // the first read of etcd), so it is judged by the same rule as every other chassis'.
        let my_mode = nb.chassis.get(me).map(|c| c.aap_mode).unwrap_or_default();
        let mut remote: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
        for (name, c) in &nb.chassis {
            if name == me {
                continue;
            }
            match tunnel_v4(c.tunnel_ip) {
                Ok(ip) if Some(ip) == my_ip => {
                    warnings.insert(format!(
                        "chassis {name} has this chassis' tunnel_ip {}; ignored",
                        c.tunnel_ip
                    ));
                }
                Ok(ip) => {
                    remote.insert(name, ip);
                }
                Err(why) => {
                    warnings.insert(format!(
                        "chassis {name}: tunnel_ip {} is {why}; its ports are unreachable from here",
                        c.tunnel_ip
                    ));
                }
            }
        }
        let local: BTreeMap<&str, u32> = local_ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Programmed { ifindex } => Some((p.id.as_str(), ifindex)),
                _ => None,
            })
            .collect();

        // Routers, with collision-checked ids.
        let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
        let mut ifaces: BTreeMap<&str, Vec<(u32, &LRouter, &LRouterPort)>> = BTreeMap::new();
        for r in routers {
            let rid = router_id(&r.id);
            if let Some(other) = ids.get(&rid) {
                warnings.insert(format!(
                    "lrouter {} has the same datapath id ({rid:#x}, FNV-1a of the id) as lrouter \
                     {other}; it is not installed: rename one of them",
                    r.id
                ));
                continue;
            }
            ids.insert(rid, &r.id);
            for rp in &r.ports {
                if nb.lswitches.contains_key(&rp.lswitch) {
                    ifaces.entry(&rp.lswitch).or_default().push((rid, r, rp));
                } else {
                    warnings.insert(format!(
                        "lrouter {} interface {} is on unknown lswitch {}; skipped",
                        r.id, rp.id, rp.lswitch
                    ));
                }
            }
        }

        Context {
            me,
            my_mode,
            remote,
            local,
            ifaces,
            warnings,
        }
    }

    /// Live chassis other than this one that can be tunnelled to.
    pub(crate) fn remote_chassis(&self) -> Vec<String> {
        self.remote.keys().map(|s| s.to_string()).collect()
    }

    /// lswitches with a router interface.
    pub(crate) fn routed(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.ifaces.keys().copied()
    }

    /// The devmap: every programmed local tap → itself.
    pub(crate) fn devmap(&self) -> BTreeMap<u32, u32> {
        self.local.values().map(|&i| (i, i)).collect()
    }

    /// Tunnel IPs of the live remote chassis hosting bound ports among `ports`: what the
    /// tunnel admission of the networks routed with theirs depends on.
    pub(crate) fn hosts(&self, ports: &[&LPort]) -> BTreeSet<[u8; 4]> {
        ports
            .iter()
            .filter_map(|p| p.chassis.as_deref())
            .filter(|c| *c != self.me)
            .filter_map(|c| self.remote.get(c).copied())
            .collect()
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

/// The forwarding state of network `net` (`ls`) with `ports`, given `hosts`: the remote
/// chassis hosting each network ([`Context::hosts`]) — only those its routers connect
/// are read.
pub(crate) fn network(
    ctx: &Context,
    nb: &NbSnapshot,
    net: &str,
    ports: &[&LPort],
    hosts: &BTreeMap<String, BTreeSet<[u8; 4]>>,
) -> NetPart {
    let mut entries = MapEntries::default();
    let e = &mut entries;
    let mut flood_overflow = None;
    let ls = &nb.lswitches[net];
    let (net_id, mtu) = (ls.segmentation_id, ls.mtu);
    let mut view = NetworkView {
        lswitch: net.to_string(),
        net_id,
        ..Default::default()
    };
    // Who claimed an L2 MAC / a neighbour IP first (for the clash warnings).
    let mut l2_owner: BTreeMap<MacAddr, String> = BTreeMap::new();
    let mut neigh_owner: BTreeMap<IpAddr, String> = BTreeMap::new();
    let mut warnings = BTreeSet::new();
    let mut warn = |what: String| {
        warnings.insert(format!("lswitch {net}: {what}"));
    };

    for &(rid, r, rp) in ctx.ifaces.get(net).map(Vec::as_slice).unwrap_or_default() {
        let who = format!("lrouter {} interface {}", r.id, rp.id);
        let dest = L2Dest {
            kind: DEST_ROUTER,
            mtu,
            router_id: rid,
            ..Default::default()
        };
        if claim(&mut l2_owner, rp.mac, &who, &mut warn, "MAC") {
            e.l2.insert(L2Key::new(net_id, rp.mac.0), dest);
        }
        // Every address of the interface (IPv4 and IPv6 on a dual-stack network):
        // answered for (ARP/ND, ping) and its prefix routed to this network.
        for ip in rp.addrs() {
            if claim(&mut neigh_owner, ip.addr, &who, &mut warn, "IP") {
                e.neigh.insert(
                    neigh_key(net_id, ip.addr),
                    NeighValue {
                        mac: rp.mac.0,
                        flags: NEIGH_F_ROUTER,
                    },
                );
            }
            e.routes.insert(
                route_key(rid, ip),
                RouteDest {
                    net_id,
                    mac: rp.mac.0,
                    _pad: [0; 2],
                },
            );
        }
        view.routers.push(r.id.clone());
    }

    let dest_of = |p: &LPort| -> Option<L2Dest> {
        let chassis = p.chassis.as_deref()?;
        if chassis == ctx.me {
            ctx.local.get(p.id.as_str()).map(|&ifindex| L2Dest {
                kind: DEST_LOCAL,
                mtu,
                ifindex,
                ..Default::default()
            })
        } else {
            ctx.remote.get(chassis).map(|&remote_ip| L2Dest {
                kind: DEST_REMOTE,
                mtu,
                remote_ip,
                ..Default::default()
            })
        }
    };
    // Own MACs and fixed IPs first, so that an AAP never displaces them.
    let mut remote_hosts: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
    let mut locals: Vec<u32> = Vec::new();
    // MAC → the ports its L2 entry leads to (own MACs here; AAP MACs in `aaps`).
    let mut reach: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
    for p in ports {
        let Some(dest) = dest_of(p) else { continue };
        let chassis = p.chassis.as_deref().unwrap_or_default();
        if dest.kind == DEST_LOCAL {
            locals.push(dest.ifindex);
            view.local_ports.push(p.id.clone());
        } else {
            remote_hosts.insert(chassis, dest.remote_ip);
        }
        let who = format!("lport {}", p.id);
        if claim(&mut l2_owner, p.mac, &who, &mut warn, "MAC") {
            e.l2.insert(L2Key::new(net_id, p.mac.0), dest);
            reach.entry(p.mac).or_default().insert(&p.id);
        }
        for ip in &p.fixed_ips {
            if claim(&mut neigh_owner, *ip, &who, &mut warn, "IP") {
                e.neigh.insert(
                    neigh_key(net_id, *ip),
                    NeighValue {
                        mac: p.mac.0,
                        flags: NEIGH_F_FIXED,
                    },
                );
            }
        }
    }
    let fill = NetFill {
        net,
        net_id,
        mtu,
        mode: ls.aap_mode.unwrap_or(ctx.my_mode),
        ports,
        dest_of: &dest_of,
    };
    view.aap_mode = fill.mode;
    let owners = Owners {
        l2: &mut l2_owner,
        neigh: &mut neigh_owner,
        reach: &mut reach,
    };
    aaps(&fill, &nb.active_ports, e, owners, &mut warn, &mut view);
    if let Some(modes) = disagreement(nb, ls, ports) {
        warn(format!(
            "live chassis hosting its ports would forward its shared allowed-address-pair \
             addresses differently ({}); give the network one mode with `aap_mode` in its \
             lswitch record (it overrides every agent's --aap-mode)",
            modes
                .iter()
                .map(|(c, m)| format!("{c}: {}", mode_name(*m)))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        view.aap_mode_disagreement = modes;
    }

    view.remote_chassis = remote_hosts.keys().map(|s| s.to_string()).collect();
    if !locals.is_empty() {
        let mut dests: Vec<FloodDest> = locals
            .iter()
            .map(|&ifindex| FloodDest {
                kind: u32::from(DEST_LOCAL),
                ifindex,
                ..Default::default()
            })
            .collect();
        let mut seen_ips = BTreeSet::new();
        for ip in remote_hosts.values() {
            if seen_ips.insert(*ip) {
                dests.push(FloodDest {
                    kind: u32::from(DEST_REMOTE),
                    remote_ip: *ip,
                    ..Default::default()
                });
            }
        }
        if dests.len() > FLOOD_MAX {
            flood_overflow = Some(dests.len());
            dests.truncate(FLOOD_MAX);
        }
        let mut list = FloodList {
            len: dests.len() as u32,
            mtu,
            ..Default::default()
        };
        list.dests[..dests.len()].copy_from_slice(&dests);
        e.flood.insert(net_id, list);
        view.flood_len = Some(dests.len());
        let routed = ctx.ifaces.get(net).map(Vec::as_slice).unwrap_or_default();
        admission(net_id, ports, routed, hosts, &ctx.remote, e);
    }
    NetPart {
        entries,
        view: Arc::new(view),
        warnings,
        flood_overflow,
    }
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

/// Tunnel admission of one network hosted here (see the module docs): the live chassis
/// that may send its frames (`tun_peers`) and the source MACs each may use
/// (`tun_srcs`), from the network's ports (`ports`), its router interfaces (`routed`), the
/// chassis hosting every network those routers connect (`hosts`) and the live remote
/// chassis (`remote`); `e.l2` already holds the network's L2 entries.
fn admission(
    net_id: u32,
    ports: &[&LPort],
    routed: &[(u32, &LRouter, &LRouterPort)],
    hosts: &BTreeMap<String, BTreeSet<[u8; 4]>>,
    remote: &BTreeMap<&str, [u8; 4]>,
    e: &mut MapEntries,
) {
    let bound_to = |p: &LPort| p.chassis.as_deref().and_then(|c| remote.get(c)).copied();
    // An allowed-address-pair MAC several ports list (a VRRP MAC): whichever holder's
    // chassis sends it, under either AAP way. A port's own MAC is never shared (its owner
    // keeps it, as in L2).
    let own: BTreeSet<MacAddr> = ports.iter().map(|p| p.mac).collect();
    let mut aap_users: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
    for p in ports {
        for a in &p.allowed_address_pairs {
            aap_users.entry(p.aap_mac(a)).or_default().insert(&p.id);
        }
    }
    let l2_of =
        |l2: &BTreeMap<L2Key, L2Dest>, mac: MacAddr| l2.get(&L2Key::new(net_id, mac.0)).copied();
    for p in ports {
        let Some(ip) = bound_to(p) else { continue };
        *e.tun_peers.entry(peer_key(net_id, ip)).or_default() |= TUN_F_PORT;
        let macs =
            std::iter::once(p.mac).chain(p.allowed_address_pairs.iter().map(|a| p.aap_mac(a)));
        for mac in macs {
            // The MAC's L2 entry leads to this chassis (its own MAC, a MAC only it lists,
            // or the active holder's under the detection way)...
            let leads_here =
                l2_of(&e.l2, mac).is_some_and(|d| d.kind == DEST_REMOTE && d.remote_ip == ip);
            // ... or several ports share it. A MAC whose entry is a local port's or a
            // router's is not this chassis' to send.
            let shared = !own.contains(&mac)
                && aap_users.get(&mac).is_some_and(|u| u.len() > 1)
                && l2_of(&e.l2, mac).is_none_or(|d| d.kind != DEST_ROUTER);
            if !(leads_here || shared) {
                continue;
            }
            let mut f = TUN_F_PORT;
            if !p.port_security_enabled && mac == p.mac {
                f |= TUN_F_UNSECURED;
            }
            *e.tun_srcs.entry(src_key(net_id, ip, mac)).or_default() |= f;
        }
    }
    // Distributed routing: a chassis hosting ports of any network of a router sends
    // routed frames into each of them, from the router's MAC there.
    for &(rid, r, rp) in routed {
        if !l2_of(&e.l2, rp.mac).is_some_and(|d| d.kind == DEST_ROUTER && d.router_id == rid) {
            continue;
        }
        for other in &r.ports {
            for &ip in hosts.get(other.lswitch.as_str()).into_iter().flatten() {
                *e.tun_peers.entry(peer_key(net_id, ip)).or_default() |= TUN_F_ROUTER;
                *e.tun_srcs.entry(src_key(net_id, ip, rp.mac)).or_default() |= TUN_F_ROUTER;
            }
        }
    }
}

pub fn peer_key(net_id: u32, remote_ip: [u8; 4]) -> TunPeerKey {
    TunPeerKey { net_id, remote_ip }
}

pub fn src_key(net_id: u32, remote_ip: [u8; 4], mac: MacAddr) -> TunSrcKey {
    TunSrcKey::new(net_id, remote_ip, mac.0)
}

/// What the allowed-address-pair fill of one network needs from [`compute`].
struct NetFill<'a> {
    net: &'a str,
    net_id: u32,
    mtu: u16,
    /// The network's effective mode on this chassis.
    mode: AapMode,
    ports: &'a [&'a LPort],
    /// Where frames to a port go from this chassis (`None`: unbound, dead chassis, no tap).
    dest_of: &'a dyn Fn(&LPort) -> Option<L2Dest>,
}

/// Who holds what so far in one network.
struct Owners<'a, 'p> {
    /// L2 MAC → who claimed it (for clash warnings).
    l2: &'a mut BTreeMap<MacAddr, String>,
    /// Neighbour IP → who claimed it.
    neigh: &'a mut BTreeMap<IpAddr, String>,
    /// MAC → the ports its L2 entry leads to.
    reach: &'a mut BTreeMap<MacAddr, BTreeSet<&'p str>>,
}

/// The effective AAP mode names, as in etcd and on the command line.
pub fn mode_name(m: AapMode) -> &'static str {
    match m {
        AapMode::Broadcast => "broadcast",
        AapMode::Detection => "detection",
    }
}

/// The allowed-address-pair entries of one network (see the module docs): unique AAP MACs
/// and IPs like fixed ones; shared ones the broadcast way (groups) or, under the
/// detection way with a valid active entry, pointed at the active port.
fn aaps<'p>(
    f: &NetFill<'p>,
    active: &BTreeMap<(String, IpAddr), ActivePort>,
    e: &mut MapEntries,
    own: Owners<'_, 'p>,
    warn: &mut impl FnMut(String),
    view: &mut NetworkView,
) {
    let net_id = f.net_id;
    let by_id: BTreeMap<&str, &LPort> = f.ports.iter().map(|p| (p.id.as_str(), *p)).collect();
    // Every MAC a port may send from, and every single-IP AAP with its (port, MAC) pairs;
    // bound or not: a VIP is shared even if one holder is unbound.
    let mut mac_users: BTreeMap<MacAddr, BTreeSet<&str>> = BTreeMap::new();
    let mut vip_users: BTreeMap<IpAddr, BTreeSet<(&str, MacAddr)>> = BTreeMap::new();
    for p in f.ports {
        mac_users.entry(p.mac).or_default().insert(&p.id);
        for a in &p.allowed_address_pairs {
            let mac = p.aap_mac(a);
            mac_users.entry(mac).or_default().insert(&p.id);
            if a.ip_address.is_host() {
                vip_users
                    .entry(a.ip_address.addr)
                    .or_default()
                    .insert((&p.id, mac));
            }
        }
    }
    let holders_of = |pairs: &BTreeSet<(&str, MacAddr)>| -> Vec<String> {
        let ids: BTreeSet<&str> = pairs.iter().map(|(p, _)| *p).collect();
        ids.into_iter().map(String::from).collect()
    };

    // Detection way: the active entries that still hold (the port lists the (IP, MAC)
    // pair and is reachable). Anything else falls back to the broadcast way.
    let mut active_ip: BTreeMap<IpAddr, (&LPort, MacAddr, L2Dest)> = BTreeMap::new();
    if f.mode == AapMode::Detection {
        for (ip, pairs) in &vip_users {
            let Some(a) = active.get(&(f.net.to_string(), *ip)) else {
                continue;
            };
            let holder = by_id
                .get(a.port.as_str())
                .filter(|p| pairs.contains(&(p.id.as_str(), a.mac)))
                .and_then(|p| (f.dest_of)(p).map(|d| (*p, d)));
            match holder {
                Some((p, d)) => {
                    active_ip.insert(*ip, (p, a.mac, d));
                }
                None => warn(format!(
                    "activeport {ip} names lport {} with {}, which does not list that pair or \
                     is unreachable from here; forwarded the broadcast way",
                    a.port, a.mac
                )),
            }
        }
    }
    // A shared MAC used by an active holder is pointed at it (the first IP wins).
    let mut mac_pointer: BTreeMap<MacAddr, (&LPort, L2Dest, IpAddr)> = BTreeMap::new();
    for (ip, (p, mac, d)) in &active_ip {
        if mac_users.get(mac).is_none_or(|u| u.len() < 2) || own.l2.contains_key(mac) {
            continue;
        }
        match mac_pointer.get(mac) {
            Some((q, _, first)) if q.id != p.id => warn(format!(
                "shared MAC {mac} is active on lport {} (for {first}) and on lport {} (for \
                 {ip}); it follows lport {}",
                q.id, p.id, q.id
            )),
            Some(_) => {}
            None => {
                mac_pointer.insert(*mac, (p, *d, *ip));
            }
        }
    }

    // Shared MACs (a port's own MAC is never shared: its owner keeps it).
    for (mac, users) in &mac_users {
        if users.len() < 2 || own.l2.contains_key(mac) {
            continue;
        }
        let key = L2Key::new(net_id, mac.0);
        let mut sv = SharedView {
            address: mac.to_string(),
            kind: "mac",
            holders: users.iter().map(|s| s.to_string()).collect(),
            way: AapMode::Broadcast,
            active_port: None,
            delivered_to: Vec::new(),
        };
        if let Some((p, d, _)) = mac_pointer.get(mac) {
            own.l2.insert(*mac, format!("lport {} (active)", p.id));
            own.reach.entry(*mac).or_default().insert(&p.id);
            e.l2.insert(key, *d);
            sv.way = AapMode::Detection;
            sv.active_port = Some(p.id.clone());
            sv.delivered_to = vec![p.id.clone()];
        } else {
            let members: Vec<(&str, L2Dest, MacAddr)> = users
                .iter()
                .filter_map(|id| (f.dest_of)(by_id[id]).map(|d| (*id, d, *mac)))
                .collect();
            if !members.is_empty() {
                let what = format!("shared MAC {mac}");
                e.groups.insert(
                    GroupKey::mac(net_id, mac.0),
                    group(&members, f.mtu, &what, warn),
                );
                e.l2.insert(
                    key,
                    L2Dest {
                        kind: DEST_GROUP,
                        mtu: f.mtu,
                        ..Default::default()
                    },
                );
                own.l2.insert(*mac, format!("the holders of {what}"));
                let reach = own.reach.entry(*mac).or_default();
                for (id, _, _) in &members {
                    reach.insert(id);
                    sv.delivered_to.push(id.to_string());
                }
            }
        }
        view.shared.push(sv);
    }
    // AAP MACs of exactly one port: like its own MAC.
    for p in f.ports {
        let Some(dest) = (f.dest_of)(p) else { continue };
        for a in &p.allowed_address_pairs {
            let mac = p.aap_mac(a);
            if mac_users.get(&mac).is_some_and(|u| u.len() == 1) && !own.l2.contains_key(&mac) {
                own.l2.insert(mac, format!("lport {}", p.id));
                own.reach.entry(mac).or_default().insert(&p.id);
                e.l2.insert(L2Key::new(net_id, mac.0), dest);
            }
        }
    }

    // Single-IP AAPs. A fixed IP or a router interface keeps its address.
    for (ip, pairs) in &vip_users {
        if own.neigh.contains_key(ip) {
            continue;
        }
        let holders = holders_of(pairs);
        let nkey = neigh_key(net_id, *ip);
        if let Some((p, mac, _)) = active_ip.get(ip)
            && reaches(own.reach, &p.id, mac)
        {
            own.neigh.insert(*ip, format!("lport {} (active)", p.id));
            let shared = holders.len() > 1;
            e.neigh.insert(
                nkey,
                NeighValue {
                    mac: mac.0,
                    flags: if shared {
                        NEIGH_F_AAP | NEIGH_F_ACTIVE
                    } else {
                        NEIGH_F_AAP
                    },
                },
            );
            if shared {
                flag_holder_macs(e, net_id, pairs, own.reach);
                view.shared.push(SharedView {
                    address: ip.to_string(),
                    kind: "ip",
                    holders,
                    way: AapMode::Detection,
                    active_port: Some(p.id.clone()),
                    delivered_to: vec![p.id.clone()],
                });
            }
            continue;
        }
        if holders.len() == 1 {
            // Answered with the first of its MACs that leads to the port.
            if let Some((p, mac)) = pairs.iter().find(|(p, m)| reaches(own.reach, p, m)) {
                own.neigh.insert(*ip, format!("lport {p}"));
                e.neigh.insert(
                    nkey,
                    NeighValue {
                        mac: mac.0,
                        flags: NEIGH_F_AAP,
                    },
                );
            }
            continue;
        }
        // The broadcast way: never answered, never flooded; copies to every reachable
        // holder (an empty group still keeps ARP for it from being flooded).
        let members: Vec<(&str, L2Dest, MacAddr)> = pairs
            .iter()
            .filter_map(|(id, mac)| (f.dest_of)(by_id[id]).map(|d| (*id, d, *mac)))
            .collect();
        let what = format!("shared IP {ip}");
        e.groups
            .insert(GroupKey::ip(&nkey), group(&members, f.mtu, &what, warn));
        e.neigh.insert(
            nkey,
            NeighValue {
                mac: [0; 6],
                flags: NEIGH_F_SHARED,
            },
        );
        own.neigh.insert(*ip, format!("the holders of {what}"));
        flag_holder_macs(e, net_id, pairs, own.reach);
        let mut delivered: Vec<String> = members.iter().map(|(id, _, _)| id.to_string()).collect();
        delivered.dedup();
        view.shared.push(SharedView {
            address: ip.to_string(),
            kind: "ip",
            holders,
            way: AapMode::Broadcast,
            active_port: None,
            delivered_to: delivered,
        });
    }
}

/// The L2 entry of `mac` leads to `port`.
fn reaches(reach: &BTreeMap<MacAddr, BTreeSet<&str>>, port: &str, mac: &MacAddr) -> bool {
    reach.get(mac).is_some_and(|s| s.contains(port))
}

/// Packets to the MAC a holder lists a shared IP with are checked for that IP (see
/// `L2_F_SHARED_IP`): the L2 entries of those MACs (a holder's, or a shared MAC's) are
/// flagged. `pairs`: the (port, MAC) pairs listing the IP.
fn flag_holder_macs(
    e: &mut MapEntries,
    net_id: u32,
    pairs: &BTreeSet<(&str, MacAddr)>,
    reach: &BTreeMap<MacAddr, BTreeSet<&str>>,
) {
    for (id, mac) in pairs {
        if let Some(d) = e.l2.get_mut(&L2Key::new(net_id, mac.0))
            && (d.kind == DEST_GROUP || reaches(reach, id, mac))
        {
            d.flags |= L2_F_SHARED_IP;
        }
    }
}

/// A group of `members` (port, destination, MAC for the address), locals first, without
/// duplicate (tap or chassis, MAC) copies; the first member of each tap/chassis flagged
/// `GROUP_M_F_FIRST`. More than `GROUP_MAX` distinct members: cut, with a warning.
fn group(
    members: &[(&str, L2Dest, MacAddr)],
    mtu: u16,
    what: &str,
    warn: &mut impl FnMut(String),
) -> Group {
    let mut out: Vec<GroupMember> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut first = BTreeSet::new();
    let locals = members.iter().filter(|m| m.1.kind == DEST_LOCAL);
    let remotes = members.iter().filter(|m| m.1.kind == DEST_REMOTE);
    for (_, d, mac) in locals.chain(remotes) {
        // A tap is named by its ifindex, a chassis by its tunnel IP.
        let at = (d.kind, d.ifindex, d.remote_ip);
        if !seen.insert((at, *mac)) {
            continue;
        }
        out.push(GroupMember {
            kind: d.kind,
            flags: if first.insert(at) { GROUP_M_F_FIRST } else { 0 },
            mac: mac.0,
            ifindex: d.ifindex,
            remote_ip: d.remote_ip,
        });
    }
    if out.len() > GROUP_MAX {
        warn(format!(
            "{what} has {} destinations; only the first {GROUP_MAX} (local ones first) get \
             copies",
            out.len()
        ));
        out.truncate(GROUP_MAX);
    }
    let mut g = Group {
        len: out.len() as u32,
        mtu,
        ..Default::default()
    };
    g.members[..out.len()].copy_from_slice(&out);
    g
}

/// The live chassis hosting bound ports of the network and the AAP mode each would use
/// for it, when they are not all the same (`None` when they agree or the lswitch
/// overrides the mode).
fn disagreement(
    nb: &NbSnapshot,
    ls: &LSwitch,
    ports: &[&LPort],
) -> Option<BTreeMap<String, AapMode>> {
    if ls.aap_mode.is_some() {
        return None;
    }
    let modes: BTreeMap<String, AapMode> = ports
        .iter()
        .filter_map(|p| p.chassis.as_deref())
        .filter_map(|c| nb.chassis.get(c).map(|r| (c.to_string(), r.aap_mode)))
        .collect();
    let first = modes.values().next()?;
    modes.values().any(|m| m != first).then_some(modes)
}

/// Records `who` as the owner of `key` unless someone already is (then warns, returns
/// false).
fn claim<K: Ord + Copy + std::fmt::Display>(
    owners: &mut BTreeMap<K, String>,
    key: K,
    who: &str,
    warn: &mut impl FnMut(String),
    what: &str,
) -> bool {
    match owners.get(&key) {
        Some(first) => {
            warn(format!(
                "{what} {key} of {who} is also {first}'s; {first} keeps it"
            ));
            false
        }
        None => {
            owners.insert(key, who.to_string());
            true
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::{
        nb::{AllowedAddressPair, Chassis},
        reconcile::{Desired, desired},
    };

    fn ls(id: &str, vni: u32) -> LSwitch {
        LSwitch {
            id: id.into(),
            name: String::new(),
            segmentation_id: vni,
            mtu: 1450,
            aap_mode: None,
        }
    }

    fn port(id: &str, net: &str, n: u8, chassis: Option<&str>) -> LPort {
        LPort {
            id: id.into(),
            lswitch: net.into(),
            mac: MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]),
            fixed_ips: vec![format!("192.0.2.{n}").parse().unwrap()],
            allowed_address_pairs: vec![],
            port_security_enabled: true,
            security_groups: vec![],
            chassis: chassis.map(Into::into),
            ifname: None,
            device_owner: String::new(),
            admin_state_up: true,
        }
    }

    fn chassis(name: &str, ip: &str) -> (String, Chassis) {
        (
            name.into(),
            Chassis {
                name: name.into(),
                tunnel_ip: ip.parse().unwrap(),
                aap_mode: Default::default(),
                version: String::new(),
                instance: String::new(),
            },
        )
    }

    fn aap(ip: &str, mac: Option<&str>) -> AllowedAddressPair {
        AllowedAddressPair {
            ip_address: ip.parse().unwrap(),
            mac_address: mac.map(|m| m.parse().unwrap()),
        }
    }

    fn nb(ports: Vec<LPort>, routers: Vec<LRouter>) -> NbSnapshot {
        NbSnapshot {
            lswitches: BTreeMap::from([("n1".into(), ls("n1", 100)), ("n2".into(), ls("n2", 200))]),
            lports: ports
                .into_iter()
                .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
                .collect(),
            lrouters: routers.into_iter().map(|r| (r.id.clone(), r)).collect(),
            chassis: BTreeMap::from([
                chassis("hv1", "198.18.0.1"),
                chassis("hv2", "198.18.0.2"),
                chassis("hv3", "198.18.0.3"),
            ]),
            ..Default::default()
        }
    }

    fn run(nb: &NbSnapshot, taps: &[(&str, u32)]) -> Desired {
        let taps = taps.iter().map(|(n, i)| (n.to_string(), *i)).collect();
        desired("hv1", nb, &taps)
    }

    fn l2(d: &Desired, net: u32, n: u8) -> Option<L2Dest> {
        d.entries
            .l2
            .get(&L2Key::new(net, [0xfa, 0x16, 0x3e, 0, 0, n]))
            .copied()
    }

    fn neigh(d: &Desired, net: u32, ip: &str) -> Option<NeighValue> {
        d.entries
            .neigh
            .get(&neigh_key(net, ip.parse().unwrap()))
            .copied()
    }

    #[test]
    fn l2_local_remote_dead_and_unbound() {
        let mut n = nb(
            vec![
                port("a", "n1", 1, Some("hv1")),
                port("b", "n1", 2, Some("hv2")),
                port("c", "n1", 3, Some("hv9")), // no chassis record: dead
                port("d", "n1", 4, None),
                port("e", "n1", 5, Some("hv1")), // tap missing
            ],
            vec![],
        );
        let d = run(&n, &[("tapa", 7)]);
        assert_eq!(
            l2(&d, 100, 1),
            Some(L2Dest {
                kind: DEST_LOCAL,
                mtu: 1450,
                ifindex: 7,
                ..Default::default()
            })
        );
        assert_eq!(
            l2(&d, 100, 2),
            Some(L2Dest {
                kind: DEST_REMOTE,
                mtu: 1450,
                remote_ip: [198, 18, 0, 2],
                ..Default::default()
            })
        );
        assert_eq!(l2(&d, 100, 3), None);
        assert_eq!(l2(&d, 100, 4), None);
        assert_eq!(l2(&d, 100, 5), None);
        assert_eq!(d.entries.l2.len(), 2);
        // Only reachable ports are answered for.
        assert_eq!(
            neigh(&d, 100, "192.0.2.2"),
            Some(NeighValue {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
                flags: NEIGH_F_FIXED
            })
        );
        assert_eq!(neigh(&d, 100, "192.0.2.3"), None);
        assert_eq!(d.entries.neigh.len(), 2);
        assert_eq!(d.entries.devmap, BTreeMap::from([(7, 7)]));
        assert_eq!(d.remote_chassis, vec!["hv2", "hv3"]);
        let view = &d.networks[0];
        assert_eq!(
            (
                view.local_ports.clone(),
                view.remote_chassis.clone(),
                view.flood_len
            ),
            (vec!["a".to_string()], vec!["hv2".to_string()], Some(2))
        );

        // hv2's lease expires: its ports vanish from L2 and from the flood list.
        n.chassis.remove("hv2");
        let d2 = run(&n, &[("tapa", 7)]);
        assert_eq!(l2(&d2, 100, 2), None);
        assert_eq!(d2.entries.flood[&100].len, 1);
        let diff = d2.entries.diff(&d.entries);
        assert_eq!(diff.l2.remove.len(), 1);
        assert_eq!(diff.flood.upsert.len(), 1);
    }

    #[test]
    fn ipv6_or_loopback_underlay_skipped_with_a_warning() {
        let mut n = nb(vec![port("b", "n1", 2, Some("hv2"))], vec![]);
        n.chassis
            .insert("hv2".into(), chassis("hv2", "2001:db8::2").1);
        let d = run(&n, &[]);
        assert!(d.entries.l2.is_empty());
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("chassis hv2") && w.contains("IPv6")),
            "{:?}",
            d.warnings
        );
        n.chassis
            .insert("hv2".into(), chassis("hv2", "127.0.0.1").1);
        assert!(run(&n, &[]).entries.l2.is_empty());
    }

    #[test]
    fn flood_lists() {
        let n = nb(
            vec![
                port("a", "n1", 1, Some("hv1")),
                port("b", "n1", 2, Some("hv1")),
                port("c", "n1", 3, Some("hv2")),
                port("d", "n1", 4, Some("hv2")),
                port("e", "n1", 5, Some("hv3")),
                port("f", "n2", 6, Some("hv2")), // no local port on n2
            ],
            vec![],
        );
        let d = run(&n, &[("tapa", 7), ("tapb", 8)]);
        let f = &d.entries.flood[&100];
        assert_eq!((f.len, f.mtu), (4, 1450));
        let kinds: Vec<(u32, u32, [u8; 4])> = f.dests[..4]
            .iter()
            .map(|x| (x.kind, x.ifindex, x.remote_ip))
            .collect();
        assert_eq!(
            kinds,
            vec![
                (u32::from(DEST_LOCAL), 7, [0; 4]),
                (u32::from(DEST_LOCAL), 8, [0; 4]),
                (u32::from(DEST_REMOTE), 0, [198, 18, 0, 2]),
                (u32::from(DEST_REMOTE), 0, [198, 18, 0, 3]),
            ]
        );
        assert!(!d.entries.flood.contains_key(&200));
        // n2 is still installed (a VM here may route to it).
        assert!(l2(&d, 200, 6).is_some());
        assert!(d.flood_overflow.is_empty());
    }

    #[test]
    fn flood_overflow_keeps_the_first_flood_max() {
        let mut n = nb(vec![], vec![]);
        let mut taps = Vec::new();
        for i in 0..70u8 {
            let id = format!("p{i:02}");
            n.lports
                .insert(id.clone(), port(&id, "n1", i + 1, Some("hv1")).into());
            taps.push((format!("tap{id}"), 100 + u32::from(i)));
        }
        let taps: Vec<(&str, u32)> = taps.iter().map(|(t, i)| (t.as_str(), *i)).collect();
        let d = run(&n, &taps);
        let f = &d.entries.flood[&100];
        assert_eq!(f.len as usize, FLOOD_MAX);
        assert_eq!(f.dests[0].ifindex, 100);
        assert_eq!(f.dests[FLOOD_MAX - 1].ifindex, 100 + FLOOD_MAX as u32 - 1);
        assert_eq!(d.flood_overflow, BTreeMap::from([(100, 70)]));
        assert_eq!(d, run(&n, &taps), "deterministic");
    }

    #[test]
    fn aaps_unique_and_shared() {
        let vrrp = "00:00:5e:00:01:01";
        let mut a = port("a", "n1", 1, Some("hv1"));
        let mut b = port("b", "n1", 2, Some("hv2"));
        a.allowed_address_pairs = vec![
            aap("192.0.2.100", Some(vrrp)),                // shared IP and MAC
            aap("192.0.2.101", None),                      // only a's, own MAC
            aap("192.0.2.102", Some("fa:16:3e:00:00:aa")), // only a's, own AAP MAC
            aap("198.51.100.0/24", None),                  // CIDR: never a neighbour
            aap("192.0.2.2", None),                        // b's fixed IP: b keeps it
        ];
        b.allowed_address_pairs = vec![aap("192.0.2.100", Some(vrrp))];
        let d = run(&nb(vec![a, b], vec![]), &[("tapa", 7)]);
        assert_eq!(
            neigh(&d, 100, "192.0.2.101"),
            Some(NeighValue {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 1],
                flags: NEIGH_F_AAP
            })
        );
        let aa: MacAddr = "fa:16:3e:00:00:aa".parse().unwrap();
        assert_eq!(
            d.entries.l2[&L2Key::new(100, aa.0)].ifindex,
            7,
            "a unique AAP MAC goes where its port is"
        );
        assert_eq!(neigh(&d, 100, "192.0.2.102").unwrap().mac, aa.0);
        assert_eq!(neigh(&d, 100, "192.0.2.2").unwrap().flags, NEIGH_F_FIXED);
        assert_eq!(
            neigh(&d, 100, "192.0.2.2").unwrap().mac,
            [0xfa, 0x16, 0x3e, 0, 0, 2]
        );
        // The shared VIP: never answered, delivered to its holders.
        assert_eq!(
            neigh(&d, 100, "192.0.2.100"),
            Some(NeighValue {
                mac: [0; 6],
                flags: NEIGH_F_SHARED
            }),
        );
        assert_eq!(d.entries.neigh.len(), 5);
        // Own MACs stay unicast; only MACs of holders of a shared IP are flagged.
        assert_eq!(l2(&d, 100, 1).unwrap().flags, 0);
        assert_eq!(d.entries.l2[&L2Key::new(100, aa.0)].flags, 0);
    }

    const VRRP: &str = "00:00:5e:00:01:07";

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn group_of(d: &Desired, key: GroupKey) -> Vec<(u8, u8, MacAddr, u32, [u8; 4])> {
        let g = d
            .entries
            .groups
            .get(&key)
            .unwrap_or_else(|| panic!("no group {key:?}: {:?}", d.entries.groups.keys()));
        g.members[..g.len as usize]
            .iter()
            .map(|m| (m.kind, m.flags, MacAddr(m.mac), m.ifindex, m.remote_ip))
            .collect()
    }

    fn ip_group(net: u32, ip: &str) -> GroupKey {
        GroupKey::ip(&neigh_key(net, ip.parse().unwrap()))
    }

    const HV2: [u8; 4] = [198, 18, 0, 2];
    const HV3: [u8; 4] = [198, 18, 0, 3];
    const F: u8 = GROUP_M_F_FIRST;

    /// A VRRP MAC listed by five ports (two here, two on hv2, one on hv3, one unbound) and
    /// a VIP two of them list with it: groups with one member per local tap and one per
    /// chassis, locals first.
    #[test]
    fn shared_mac_broadcast_group() {
        let mut ports = Vec::new();
        for (id, n, hv) in [
            ("a", 1, Some("hv1")),
            ("b", 2, Some("hv2")),
            ("c", 3, Some("hv2")),
            ("d", 4, Some("hv3")),
            ("e", 5, None),
            ("f", 6, Some("hv1")),
        ] {
            let mut p = port(id, "n1", n, hv);
            p.allowed_address_pairs = vec![aap("192.0.2.200", Some(VRRP))];
            if id == "a" || id == "b" {
                p.allowed_address_pairs.push(aap("192.0.2.100", Some(VRRP)));
            }
            ports.push(p);
        }
        let d = run(&nb(ports, vec![]), &[("tapa", 7), ("tapf", 9)]);
        let vrrp = mac(VRRP);
        assert_eq!(
            d.entries.l2[&L2Key::new(100, vrrp.0)],
            L2Dest {
                kind: DEST_GROUP,
                mtu: 1450,
                flags: L2_F_SHARED_IP,
                ..Default::default()
            },
            "a shared MAC goes to its group (and a shared IP uses it)"
        );
        assert_eq!(
            group_of(&d, GroupKey::mac(100, vrrp.0)),
            vec![
                (DEST_LOCAL, F, vrrp, 7, [0; 4]),
                (DEST_LOCAL, F, vrrp, 9, [0; 4]),
                (DEST_REMOTE, F, vrrp, 0, HV2),
                (DEST_REMOTE, F, vrrp, 0, HV3),
            ]
        );
        assert_eq!(d.entries.groups[&GroupKey::mac(100, vrrp.0)].mtu, 1450);
        // Every port lists .200: shared too, one member per tap and per chassis.
        assert_eq!(neigh(&d, 100, "192.0.2.200").unwrap().flags, NEIGH_F_SHARED);
        assert_eq!(group_of(&d, ip_group(100, "192.0.2.200")).len(), 4);
        assert_eq!(
            group_of(&d, ip_group(100, "192.0.2.100")),
            vec![
                (DEST_LOCAL, F, vrrp, 7, [0; 4]),
                (DEST_REMOTE, F, vrrp, 0, HV2),
            ]
        );
        let view = &d.networks[0];
        assert_eq!(view.aap_mode, AapMode::Broadcast);
        let shared: Vec<(&str, &str, AapMode)> = view
            .shared
            .iter()
            .map(|s| (s.kind, s.address.as_str(), s.way))
            .collect();
        assert_eq!(
            shared,
            vec![
                ("mac", "00:00:5e:00:01:07", AapMode::Broadcast),
                ("ip", "192.0.2.100", AapMode::Broadcast),
                ("ip", "192.0.2.200", AapMode::Broadcast),
            ]
        );
        assert_eq!(view.shared[0].holders, vec!["a", "b", "c", "d", "e", "f"]);
        assert_eq!(view.shared[0].delivered_to, vec!["a", "b", "c", "d", "f"]);
    }

    /// A VIP two ports list with their own MACs, and one two ports on hv2 list with
    /// their own MACs: one copy per (chassis, MAC), the first per chassis flagged.
    #[test]
    fn shared_ip_own_macs() {
        let mut a = port("a", "n1", 1, Some("hv1"));
        let mut b = port("b", "n1", 2, Some("hv2"));
        let mut c = port("c", "n1", 3, Some("hv2"));
        let other = port("z", "n1", 9, Some("hv2"));
        a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
        b.allowed_address_pairs = vec![aap("192.0.2.100", None), aap("2001:db8::100", None)];
        c.allowed_address_pairs = vec![aap("2001:db8::100", None)];
        let d = run(&nb(vec![a, b, c, other], vec![]), &[("tapa", 7)]);
        let m = |n: u8| MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]);
        assert_eq!(
            group_of(&d, ip_group(100, "192.0.2.100")),
            vec![
                (DEST_LOCAL, F, m(1), 7, [0; 4]),
                (DEST_REMOTE, F, m(2), 0, HV2),
            ]
        );
        assert_eq!(
            group_of(&d, ip_group(100, "2001:db8::100")),
            vec![
                (DEST_REMOTE, F, m(2), 0, HV2),
                (DEST_REMOTE, 0, m(3), 0, HV2),
            ],
            "one copy per holder MAC, the frame itself once per chassis"
        );
        for n in [1, 2, 3] {
            assert_eq!(l2(&d, 100, n).unwrap().flags, L2_F_SHARED_IP, "port {n}");
            assert_ne!(l2(&d, 100, n).unwrap().kind, DEST_GROUP);
        }
        assert_eq!(l2(&d, 100, 9).unwrap().flags, 0, "not a holder");
        assert_eq!(
            neigh(&d, 100, "2001:db8::100").unwrap().flags,
            NEIGH_F_SHARED
        );
        assert_eq!(d.entries.groups.len(), 2, "own MACs are never groups");
    }

    /// A shared VIP none of whose holders is reachable still gets its (empty) group: ARP
    /// for it must not be flooded to the network.
    #[test]
    fn shared_ip_without_reachable_holder() {
        let mut a = port("a", "n1", 1, Some("hv9")); // dead chassis
        let mut b = port("b", "n1", 2, None);
        let c = port("c", "n1", 3, Some("hv1"));
        a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
        b.allowed_address_pairs = vec![aap("192.0.2.100", None)];
        let d = run(&nb(vec![a, b, c], vec![]), &[("tapc", 5)]);
        assert_eq!(neigh(&d, 100, "192.0.2.100").unwrap().flags, NEIGH_F_SHARED);
        assert!(group_of(&d, ip_group(100, "192.0.2.100")).is_empty());
        assert!(d.networks[0].shared[0].delivered_to.is_empty());
    }

    #[test]
    fn group_cut_at_group_max() {
        let mut ports = Vec::new();
        let mut taps = Vec::new();
        for i in 0..(GROUP_MAX as u8 + 2) {
            let id = format!("p{i:02}");
            let mut p = port(&id, "n1", i + 1, Some("hv1"));
            p.allowed_address_pairs = vec![aap("192.0.2.250", None)];
            ports.push(p);
            taps.push((format!("tap{id}"), 100 + u32::from(i)));
        }
        let taps: Vec<(&str, u32)> = taps.iter().map(|(t, i)| (t.as_str(), *i)).collect();
        let d = run(&nb(ports, vec![]), &taps);
        assert_eq!(group_of(&d, ip_group(100, "192.0.2.250")).len(), GROUP_MAX);
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("shared IP 192.0.2.250 has 18 destinations")),
            "{:?}",
            d.warnings
        );
    }

    fn active(net: &str, ip: &str, port: &str, mac: &str) -> ((String, IpAddr), ActivePort) {
        (
            (net.into(), ip.parse().unwrap()),
            ActivePort {
                lswitch: net.into(),
                ip: ip.parse().unwrap(),
                port: port.into(),
                mac: mac.parse().unwrap(),
                chassis: "hv2".into(),
                since_ms: 1,
                reason: "garp".into(),
            },
        )
    }

    /// Two keepalived pairs: VIP .100 with own MACs on a (here) and b (hv2), VIP .101
    /// with the VRRP MAC on c (here) and e (hv2).
    fn vrrp_pairs() -> NbSnapshot {
        let mut a = port("a", "n1", 1, Some("hv1"));
        let mut b = port("b", "n1", 2, Some("hv2"));
        let mut c = port("c", "n1", 3, Some("hv1"));
        let mut e = port("e", "n1", 5, Some("hv2"));
        a.allowed_address_pairs = vec![aap("192.0.2.100", None)];
        b.allowed_address_pairs = vec![aap("192.0.2.100", None)];
        c.allowed_address_pairs = vec![aap("192.0.2.101", Some(VRRP))];
        e.allowed_address_pairs = vec![aap("192.0.2.101", Some(VRRP))];
        let mut n = nb(vec![a, b, c, e], vec![]);
        n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Detection);
        n
    }

    const VRRP_TAPS: &[(&str, u32)] = &[("tapa", 7), ("tapc", 8)];

    /// The detection way points the responder and L2 at the active port; without an active
    /// entry the broadcast way applies.
    #[test]
    fn detection_points_at_the_active_port() {
        let mut n = vrrp_pairs();
        let d = run(&n, VRRP_TAPS);
        assert_eq!(d.networks[0].aap_mode, AapMode::Detection);
        assert_eq!(
            neigh(&d, 100, "192.0.2.100").unwrap().flags,
            NEIGH_F_SHARED,
            "no active entry yet: broadcast"
        );
        assert_eq!(d.entries.l2[&L2Key::new(100, mac(VRRP).0)].kind, DEST_GROUP);

        n.active_ports.extend([
            active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
            active("n1", "192.0.2.101", "e", VRRP),
        ]);
        let d = run(&n, VRRP_TAPS);
        assert_eq!(
            neigh(&d, 100, "192.0.2.100"),
            Some(NeighValue {
                mac: [0xfa, 0x16, 0x3e, 0, 0, 2],
                flags: NEIGH_F_AAP | NEIGH_F_ACTIVE
            }),
            "answered with the active port's MAC"
        );
        assert_eq!(
            neigh(&d, 100, "192.0.2.101"),
            Some(NeighValue {
                mac: mac(VRRP).0,
                flags: NEIGH_F_AAP | NEIGH_F_ACTIVE
            })
        );
        assert_eq!(
            d.entries.l2[&L2Key::new(100, mac(VRRP).0)],
            L2Dest {
                kind: DEST_REMOTE,
                flags: L2_F_SHARED_IP,
                mtu: 1450,
                remote_ip: HV2,
                ..Default::default()
            },
            "the shared MAC leads to the active port"
        );
        assert!(d.entries.groups.is_empty(), "{:?}", d.entries.groups);
        // The MACs the holders list a VIP with are checked for it (a packet for .100 to
        // a's MAC is readdressed to b's); the others (c's and e's own) are not.
        let flagged: BTreeSet<u8> = (1..=5)
            .filter(|i| {
                d.entries
                    .l2
                    .get(&L2Key::new(100, [0xfa, 0x16, 0x3e, 0, 0, *i]))
                    .is_some_and(|v| v.flags == L2_F_SHARED_IP)
            })
            .collect();
        assert_eq!(flagged, BTreeSet::from([1, 2]));
        let view = &d.networks[0];
        assert!(view.shared.iter().all(|s| s.way == AapMode::Detection));
        assert_eq!(view.shared[0].active_port.as_deref(), Some("e"));

        // The active holder moves here: the MAC follows.
        n.active_ports
            .extend([active("n1", "192.0.2.101", "c", VRRP)]);
        let d2 = run(&n, VRRP_TAPS);
        assert_eq!(d2.entries.l2[&L2Key::new(100, mac(VRRP).0)].ifindex, 8);
        let diff = d2.entries.diff(&d.entries);
        assert_eq!((diff.l2.upsert.len(), diff.neigh.upsert.len()), (1, 0));
    }

    /// An active entry that no longer holds (the pair is gone from the port, the port
    /// is on a dead chassis, another network, the network is in broadcast mode) is
    /// ignored: the broadcast way.
    #[test]
    fn detection_ignores_stale_entries() {
        let base = vrrp_pairs();
        for (what, entry, tweak) in [
            (
                "port does not list that MAC",
                active("n1", "192.0.2.100", "b", VRRP),
                None,
            ),
            (
                "port does not list that IP",
                active("n1", "192.0.2.100", "c", VRRP),
                None,
            ),
            (
                "unknown port",
                active("n1", "192.0.2.100", "nope", "fa:16:3e:00:00:02"),
                None,
            ),
            (
                "holder on a dead chassis",
                active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
                Some("dead"),
            ),
            (
                "broadcast network",
                active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02"),
                Some("broadcast"),
            ),
        ] {
            let mut n = base.clone();
            n.active_ports.extend([entry]);
            match tweak {
                Some("dead") => {
                    n.chassis.remove("hv2");
                }
                Some(_) => n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Broadcast),
                None => {}
            }
            let d = run(&n, VRRP_TAPS);
            assert_eq!(
                neigh(&d, 100, "192.0.2.100").unwrap().flags,
                NEIGH_F_SHARED,
                "{what}"
            );
            if tweak.is_none() {
                assert!(
                    d.warnings
                        .iter()
                        .any(|w| w.contains("activeport 192.0.2.100")),
                    "{what}: {:?}",
                    d.warnings
                );
            }
        }
    }

    /// The effective mode: the lswitch override, else the mode this agent publishes in its
    /// chassis record. Live chassis hosting ports of a network without override that
    /// publish different modes are reported.
    #[test]
    fn aap_mode_and_disagreement() {
        let mut n = vrrp_pairs();
        n.lswitches.get_mut("n1").unwrap().aap_mode = None;
        n.active_ports
            .extend([active("n1", "192.0.2.100", "b", "fa:16:3e:00:00:02")]);
        let d = run(&n, VRRP_TAPS);
        assert_eq!(d.networks[0].aap_mode, AapMode::Broadcast);
        assert_eq!(neigh(&d, 100, "192.0.2.100").unwrap().flags, NEIGH_F_SHARED);
        assert!(d.networks[0].aap_mode_disagreement.is_empty());

        // hv1 (this agent) publishes detection: it points at b; hv2 still broadcasts.
        n.chassis.get_mut("hv1").unwrap().aap_mode = AapMode::Detection;
        let d = run(&n, VRRP_TAPS);
        assert_eq!(d.networks[0].aap_mode, AapMode::Detection);
        assert_eq!(
            neigh(&d, 100, "192.0.2.100").unwrap().flags,
            NEIGH_F_AAP | NEIGH_F_ACTIVE
        );
        assert_eq!(
            d.networks[0].aap_mode_disagreement,
            BTreeMap::from([
                ("hv1".to_string(), AapMode::Detection),
                ("hv2".to_string(), AapMode::Broadcast)
            ])
        );
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("lswitch n1") && w.contains("hv1: detection, hv2: broadcast")),
            "{:?}",
            d.warnings
        );
        // n2 has no ports: nothing to disagree about.
        assert!(d.warnings.iter().all(|w| !w.contains("lswitch n2")));

        // The lswitch override makes them agree.
        n.lswitches.get_mut("n1").unwrap().aap_mode = Some(AapMode::Broadcast);
        let d = run(&n, VRRP_TAPS);
        assert_eq!(d.networks[0].aap_mode, AapMode::Broadcast);
        assert!(d.networks[0].aap_mode_disagreement.is_empty());
        assert!(d.warnings.iter().all(|w| !w.contains("differently")));
    }

    /// Broadcast way across a change: a holder moving to another chassis rewrites the
    /// groups, and a VIP losing its second holder becomes an ordinary AAP again.
    #[test]
    fn groups_follow_the_holders() {
        let mut n = vrrp_pairs();
        n.lswitches.get_mut("n1").unwrap().aap_mode = None;
        let before = run(&n, VRRP_TAPS);
        n.lports
            .get_mut("b")
            .map(std::sync::Arc::make_mut)
            .unwrap()
            .chassis = Some("hv3".into());
        let moved = run(&n, VRRP_TAPS);
        let diff = moved.entries.diff(&before.entries);
        assert_eq!(diff.groups.upsert.len(), 1, "{diff:?}");
        assert_eq!(diff.groups.upsert[0].1.members[1].remote_ip, HV3);
        n.lports
            .get_mut("b")
            .map(std::sync::Arc::make_mut)
            .unwrap()
            .allowed_address_pairs
            .clear();
        let single = run(&n, VRRP_TAPS);
        assert_eq!(
            neigh(&single, 100, "192.0.2.100").unwrap().flags,
            NEIGH_F_AAP
        );
        let diff = single.entries.diff(&moved.entries);
        assert_eq!(diff.groups.remove, vec![ip_group(100, "192.0.2.100")]);
        assert_eq!(l2(&single, 100, 1).unwrap().flags, 0, "flag cleared");
    }

    fn router(id: &str, ifaces: &[(&str, &str, &str)]) -> LRouter {
        LRouter {
            id: id.into(),
            name: String::new(),
            ports: ifaces
                .iter()
                .map(|(net, mac, ip)| LRouterPort {
                    id: format!("{id}-{net}"),
                    lswitch: net.to_string(),
                    mac: mac.parse().unwrap(),
                    ip: ip.parse().unwrap(),
                    extra_ips: vec![],
                })
                .collect(),
        }
    }

    #[test]
    fn routers() {
        let r = router(
            "r1",
            &[
                ("n1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                ("n2", "fa:16:3e:00:01:02", "2001:db8:1::1/64"),
                ("gone", "fa:16:3e:00:01:03", "203.0.113.1/24"),
            ],
        );
        let d = run(
            &nb(vec![port("a", "n1", 1, Some("hv1"))], vec![r]),
            &[("tapa", 7)],
        );
        let rid = router_id("r1");
        assert_eq!(
            d.entries.l2[&L2Key::new(200, [0xfa, 0x16, 0x3e, 0, 1, 2])],
            L2Dest {
                kind: DEST_ROUTER,
                mtu: 1450,
                router_id: rid,
                ..Default::default()
            },
            "a network with only a router interface is installed"
        );
        assert_eq!(neigh(&d, 100, "192.0.2.1").unwrap().flags, NEIGH_F_ROUTER);
        assert_eq!(
            neigh(&d, 200, "2001:db8:1::1").unwrap().flags,
            NEIGH_F_ROUTER
        );
        let k4 = route_key(rid, &"192.0.2.1/24".parse().unwrap());
        assert_eq!(k4.prefix_len, ROUTE_FIXED_BITS + 24);
        assert_eq!(k4.key.ip[..4], [192, 0, 2, 0], "host bits cleared");
        assert_eq!(k4.key.family, FAMILY_V4);
        assert_eq!(
            d.entries.routes[&k4],
            RouteDest {
                net_id: 100,
                mac: [0xfa, 0x16, 0x3e, 0, 1, 1],
                _pad: [0; 2]
            }
        );
        let k6 = route_key(rid, &"2001:db8:1::1/64".parse().unwrap());
        assert_eq!(k6.prefix_len, ROUTE_FIXED_BITS + 64);
        assert_eq!(d.entries.routes[&k6].net_id, 200);
        assert_eq!(d.entries.routes.len(), 2);
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("unknown lswitch gone"))
        );
        assert_eq!(d.networks[0].routers, vec!["r1"]);
    }

    /// A dual-stack interface (one IPv4 and one IPv6 address on one lswitch): one L2
    /// entry for its MAC, a neighbour and a route entry for each address.
    #[test]
    fn dual_stack_interface() {
        let mut r = router(
            "r1",
            &[
                ("n1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                ("n2", "fa:16:3e:00:01:02", "198.51.100.1/24"),
            ],
        );
        r.ports[0].extra_ips = vec!["2001:db8:1::1/64".parse().unwrap()];
        r.ports[1].extra_ips = vec!["2001:db8:2::1/64".parse().unwrap()];
        let d = run(&nb(vec![], vec![r]), &[]);
        let rid = router_id("r1");
        let mac1 = [0xfa, 0x16, 0x3e, 0, 1, 1];
        let mac2 = [0xfa, 0x16, 0x3e, 0, 1, 2];
        assert_eq!(d.entries.l2.len(), 2, "one L2 entry per interface MAC");
        assert_eq!(d.entries.l2[&L2Key::new(100, mac1)].kind, DEST_ROUTER);
        for (net, ip, mac) in [
            (100, "192.0.2.1", mac1),
            (100, "2001:db8:1::1", mac1),
            (200, "198.51.100.1", mac2),
            (200, "2001:db8:2::1", mac2),
        ] {
            assert_eq!(
                neigh(&d, net, ip),
                Some(NeighValue {
                    mac,
                    flags: NEIGH_F_ROUTER
                }),
                "{ip}"
            );
        }
        assert_eq!(d.entries.neigh.len(), 4);
        for (prefix, net, mac) in [
            ("192.0.2.1/24", 100, mac1),
            ("2001:db8:1::1/64", 100, mac1),
            ("198.51.100.1/24", 200, mac2),
            ("2001:db8:2::1/64", 200, mac2),
        ] {
            assert_eq!(
                d.entries.routes[&route_key(rid, &prefix.parse().unwrap())],
                RouteDest {
                    net_id: net,
                    mac,
                    _pad: [0; 2]
                },
                "{prefix}"
            );
        }
        assert_eq!(d.entries.routes.len(), 4);
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        assert_eq!(d.networks.len(), 2);
    }

    #[test]
    fn router_ids_are_stable_and_collisions_detected() {
        assert_eq!(router_id(""), 0x811c_9dc5);
        assert_eq!(router_id("a"), 0xe40c_292c);
        assert_eq!(router_id("costarring"), router_id("liquid"));
        let d = run(
            &nb(
                vec![],
                vec![
                    router("costarring", &[("n1", "fa:16:3e:00:01:01", "192.0.2.1/24")]),
                    router("liquid", &[("n2", "fa:16:3e:00:01:02", "198.51.100.1/24")]),
                ],
            ),
            &[],
        );
        assert_eq!(d.entries.routes.len(), 1);
        assert!(d.entries.routes.keys().all(|k| k.key.ip[0] == 192));
        assert!(
            d.warnings
                .iter()
                .any(|w| w.contains("lrouter liquid has the same datapath id"))
        );
    }

    /// Tunnel admission: which live chassis may send which source MACs of a network hosted
    /// here, and how the entries follow a chassis' record and a port's binding.
    #[test]
    fn tunnel_admission() {
        let m = |n: u8| MacAddr([0xfa, 0x16, 0x3e, 0, 0, n]);
        let mut a = port("a", "n1", 1, Some("hv1"));
        let mut b = port("b", "n1", 2, Some("hv2"));
        a.allowed_address_pairs = vec![aap("192.0.2.100", Some(VRRP))];
        b.allowed_address_pairs = vec![aap("192.0.2.100", Some(VRRP))];
        let c = port("c", "n2", 3, Some("hv3"));
        let e = port("e", "n1", 5, Some("hv9")); // no chassis record: dead
        let mut f = port("f", "n1", 6, Some("hv2"));
        f.port_security_enabled = false;
        f.fixed_ips.clear();
        // Claims a's MAC from hv2: a's own (local) MAC is never admitted from the tunnel.
        let x = port("x", "n1", 1, Some("hv2"));
        let r = router(
            "r1",
            &[
                ("n1", "fa:16:3e:00:01:01", "192.0.2.254/24"),
                ("n2", "fa:16:3e:00:01:02", "198.51.100.1/24"),
            ],
        );
        let mut n = nb(vec![a, b, c, e, f, x], vec![r]);
        let d = run(&n, &[("tapa", 7)]);
        let rm1 = mac("fa:16:3e:00:01:01");
        let src = |ip, mac: MacAddr| src_key(100, ip, mac);
        assert_eq!(
            d.entries.tun_peers,
            BTreeMap::from([
                // hv2 hosts ports of n1 (and so routes into it too); hv3 only routes into
                // n1 from n2; hv9 is dead; n2 has no port here: nothing for it.
                (peer_key(100, HV2), TUN_F_PORT | TUN_F_ROUTER),
                (peer_key(100, HV3), TUN_F_ROUTER),
            ])
        );
        assert_eq!(
            d.entries.tun_srcs,
            BTreeMap::from([
                (src(HV2, m(2)), TUN_F_PORT),
                (src(HV2, mac(VRRP)), TUN_F_PORT),
                (src(HV2, m(6)), TUN_F_PORT | TUN_F_UNSECURED),
                (src(HV2, rm1), TUN_F_ROUTER),
                (src(HV3, rm1), TUN_F_ROUTER),
            ]),
            "b's own MAC, the VRRP MAC b shares with a, f's MAC (no port security), the \
             router's MAC on n1 from both routing chassis; never a's MAC (local)"
        );

        // hv2's record goes (lease expired): everything it could send goes with it.
        let before = d.entries.clone();
        n.chassis.remove("hv2");
        let gone = run(&n, &[("tapa", 7)]);
        let diff = gone.entries.diff(&before);
        assert_eq!(diff.tun_peers.remove, vec![peer_key(100, HV2)]);
        assert_eq!(diff.tun_srcs.remove.len(), 4, "{diff:?}");
        assert!(diff.tun_srcs.remove.iter().all(|k| k.remote_ip == HV2));
        assert!(diff.tun_peers.upsert.is_empty() && diff.tun_srcs.upsert.is_empty());

        // Back, and b unbound: its MAC (and its share of the VRRP MAC) leave; f stays.
        n.chassis.extend([chassis("hv2", "198.18.0.2")]);
        n.lports
            .get_mut("b")
            .map(std::sync::Arc::make_mut)
            .unwrap()
            .chassis = None;
        let unbound = run(&n, &[("tapa", 7)]);
        assert!(!unbound.entries.tun_srcs.contains_key(&src(HV2, m(2))));
        assert!(!unbound.entries.tun_srcs.contains_key(&src(HV2, mac(VRRP))));
        assert!(unbound.entries.tun_srcs.contains_key(&src(HV2, m(6))));

        // No local port in n1 any more: no admission for n1 at all.
        let none = run(&n, &[]);
        assert!(none.entries.tun_peers.is_empty() && none.entries.tun_srcs.is_empty());
    }
}
