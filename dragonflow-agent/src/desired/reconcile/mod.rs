//! The pure heart of the agent: northbound snapshot + local taps → the map entries the
//! datapath should hold, and the difference from what it holds now.
//!
//! No I/O here: the controller feeds it what etcd and netlink said, and writes the diff
//! with the typed map writers in `datapath::maps`. Everything is keyed by ifindex, and the
//! ifindex comes from the *current* name → ifindex table, so a new tap that reuses an old
//! ifindex gets exactly its own port's entries: whatever the old tap left is in the
//! "actual" side only and is removed by the diff.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::Arc,
};

use dragonflow_common::{
    addr::{
        ADDR_F_AAP, ADDR_F_FIXED, ADDR_F_LINK_LOCAL, ADDR_F_WATCH, AddrKey, AddrValue,
        LPM_FIXED_BITS, MacKey, link_local_from_mac,
    },
    fwd::{
        ChassisConfig, DEST_LOCAL, FloodList, Group, GroupKey, L2Dest, L2Key, NeighKey, NeighValue,
        RouteDest, RouteKey, TunPeerKey, TunSrcKey,
    },
    port::{PORT_F_CIDR_AAP, PORT_F_PORT_SECURITY, PortConfig},
    sg::{IdentKey, PolicyValue},
};

use crate::{
    desired::{
        forwarding::{self, NetPart, NetworkView},
        secgroups::{IdentLpmKey, Identities, PolicyLpmKey, SgEngine, SgKeys, SgPortView},
    },
    nb::{IpPrefix, LPort, LSwitch, MacAddr, NbSnapshot},
};

/// `MACS` value bits: the MAC is the port's own / an AAP's (both may be set).
pub const MAC_F_PORT: u32 = ADDR_F_FIXED;
pub const MAC_F_AAP: u32 = ADDR_F_AAP;

/// Key of the CIDR LPM trie: prefix length (including [`LPM_FIXED_BITS`]) and the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrKey {
    pub prefix_len: u32,
    pub key: AddrKey,
}

/// Key of the routes LPM trie: prefix length (including `ROUTE_FIXED_BITS`) and the data.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RouteLpmKey {
    pub prefix_len: u32,
    pub key: RouteKey,
}

/// Every entry of the maps the agent owns.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct MapEntries {
    pub ports: BTreeMap<u32, PortConfig>,
    pub addrs: BTreeMap<AddrKey, AddrValue>,
    pub cidrs: BTreeMap<CidrKey, AddrValue>,
    pub macs: BTreeMap<MacKey, u32>,
    /// XDP redirect targets: tap ifindex → itself.
    pub devmap: BTreeMap<u32, u32>,
    pub neigh: BTreeMap<NeighKey, NeighValue>,
    pub routes: BTreeMap<RouteLpmKey, RouteDest>,
    pub l2: BTreeMap<L2Key, L2Dest>,
    pub flood: BTreeMap<u32, FloodList>,
    /// Holders of shared allowed-address-pair addresses (broadcast way).
    pub groups: BTreeMap<GroupKey, Group>,
    /// Tunnel admission (`forwarding`): live chassis per network hosted here …
    pub tun_peers: BTreeMap<TunPeerKey, u32>,
    /// … and the source MACs each may send from in it.
    pub tun_srcs: BTreeMap<TunSrcKey, u32>,
    /// `df_config_v1` (an array: index 0 only; never removed, only overwritten). Set by
    /// the controller, not by [`desired`], because it needs the tunnel device's ifindex.
    pub config: BTreeMap<u32, ChassisConfig>,
    /// Security groups (`secgroups.rs`): exact remote addresses → identity.
    pub ident: BTreeMap<IdentKey, u32>,
    /// Remote prefixes → identity.
    pub ident_lpm: BTreeMap<IdentLpmKey, u32>,
    /// Allow rules of the local ports, per identity.
    pub policy: BTreeMap<PolicyLpmKey, PolicyValue>,
}

impl MapEntries {
    /// Adds every entry of `other` (overwriting equal keys).
    pub fn extend(&mut self, other: MapEntries) {
        let MapEntries {
            ports,
            addrs,
            cidrs,
            macs,
            devmap,
            neigh,
            routes,
            l2,
            flood,
            groups,
            tun_peers,
            tun_srcs,
            config,
            ident,
            ident_lpm,
            policy,
        } = other;
        self.ports.extend(ports);
        self.addrs.extend(addrs);
        self.cidrs.extend(cidrs);
        self.macs.extend(macs);
        self.devmap.extend(devmap);
        self.neigh.extend(neigh);
        self.routes.extend(routes);
        self.l2.extend(l2);
        self.flood.extend(flood);
        self.groups.extend(groups);
        self.tun_peers.extend(tun_peers);
        self.tun_srcs.extend(tun_srcs);
        self.config.extend(config);
        self.ident.extend(ident);
        self.ident_lpm.extend(ident_lpm);
        self.policy.extend(policy);
    }

    /// Keeps only entries whose ifindex satisfies `keep`.
    pub fn retain_ifindex(&mut self, keep: impl Fn(u32) -> bool) {
        self.ports.retain(|i, _| keep(*i));
        self.addrs.retain(|k, _| keep(k.ifindex));
        self.cidrs.retain(|k, _| keep(k.key.ifindex));
        self.macs.retain(|k, _| keep(k.ifindex));
        self.devmap.retain(|i, _| keep(*i));
        self.l2
            .retain(|_, d| d.kind != DEST_LOCAL || keep(d.ifindex));
        self.policy.retain(|k, _| keep(k.key.ifindex));
    }

    /// Copies every entry of `ifindex` from `from` (used to keep a tap's entries as they
    /// are while its port record is invalid): its port-security entries, its devmap entry,
    /// the L2 entries pointing at it and the neighbour entries of those MACs. (Flood lists
    /// are recomputed without it: a held port keeps its unicast, not broadcast.)
    pub fn hold(&mut self, from: &MapEntries, ifindex: u32) {
        let mut kept = MapEntries {
            ports: from.ports.clone(),
            addrs: from.addrs.clone(),
            cidrs: from.cidrs.clone(),
            macs: from.macs.clone(),
            devmap: from.devmap.clone(),
            l2: from.l2.clone(),
            policy: from.policy.clone(),
            ..Default::default()
        };
        kept.retain_ifindex(|i| i == ifindex);
        kept.l2.retain(|_, d| d.kind == DEST_LOCAL);
        self.ports.extend(kept.ports);
        self.addrs.extend(kept.addrs);
        self.cidrs.extend(kept.cidrs);
        self.macs.extend(kept.macs);
        self.devmap.extend(kept.devmap);
        // Its rules as they were; identities they name that are no longer computed match
        // nothing (stricter, never looser).
        self.policy.extend(kept.policy);
        for (k, v) in &from.neigh {
            if kept.l2.contains_key(&L2Key::new(k.net_id, v.mac)) {
                self.neigh.entry(*k).or_insert(*v);
            }
        }
        for (k, v) in kept.l2 {
            self.l2.entry(k).or_insert(v);
        }
    }

    /// Every ifindex that has an entry in any map.
    pub fn ifindexes(&self) -> BTreeSet<u32> {
        self.ports
            .keys()
            .copied()
            .chain(self.addrs.keys().map(|k| k.ifindex))
            .chain(self.cidrs.keys().map(|k| k.key.ifindex))
            .chain(self.macs.keys().map(|k| k.ifindex))
            .chain(self.devmap.keys().copied())
            .collect()
    }

    /// [`MapEntries::diff`] where the network-keyed forwarding maps (neighbours, L2, flood
    /// lists, groups, tunnel admission) and the security-group maps may differ only at
    /// the keys `within` has.
    pub fn diff_within(&self, actual: &MapEntries, within: &MapEntries) -> EntriesDiff {
        let mut d = self.diff_only(actual, false);
        d.ident = diff_keys(&self.ident, &actual.ident, within.ident.keys());
        d.ident_lpm = diff_keys(&self.ident_lpm, &actual.ident_lpm, within.ident_lpm.keys());
        d.policy = diff_keys(&self.policy, &actual.policy, within.policy.keys());
        d.neigh = diff_keys(&self.neigh, &actual.neigh, within.neigh.keys());
        d.l2 = diff_keys(&self.l2, &actual.l2, within.l2.keys());
        d.flood = diff_keys(&self.flood, &actual.flood, within.flood.keys());
        d.groups = diff_keys(&self.groups, &actual.groups, within.groups.keys());
        d.tun_peers = diff_keys(&self.tun_peers, &actual.tun_peers, within.tun_peers.keys());
        d.tun_srcs = diff_keys(&self.tun_srcs, &actual.tun_srcs, within.tun_srcs.keys());
        d
    }

    pub fn diff(&self, actual: &MapEntries) -> EntriesDiff {
        self.diff_only(actual, true)
    }

    /// Every map, or (`forwarding` false) all but the network-keyed forwarding maps and
    /// the security-group maps.
    fn diff_only(&self, actual: &MapEntries, forwarding: bool) -> EntriesDiff {
        let mut config = diff(&self.config, &actual.config);
        // An array slot cannot be deleted; an unwanted config is simply left alone (the
        // controller always desires index 0 once synced).
        config.remove.clear();
        EntriesDiff {
            ports: diff(&self.ports, &actual.ports),
            addrs: diff(&self.addrs, &actual.addrs),
            cidrs: diff(&self.cidrs, &actual.cidrs),
            macs: diff(&self.macs, &actual.macs),
            devmap: diff(&self.devmap, &actual.devmap),
            neigh: diff_if(forwarding, &self.neigh, &actual.neigh),
            routes: diff(&self.routes, &actual.routes),
            l2: diff_if(forwarding, &self.l2, &actual.l2),
            flood: diff_if(forwarding, &self.flood, &actual.flood),
            groups: diff_if(forwarding, &self.groups, &actual.groups),
            tun_peers: diff_if(forwarding, &self.tun_peers, &actual.tun_peers),
            tun_srcs: diff_if(forwarding, &self.tun_srcs, &actual.tun_srcs),
            config,
            ident: diff_if(forwarding, &self.ident, &actual.ident),
            ident_lpm: diff_if(forwarding, &self.ident_lpm, &actual.ident_lpm),
            policy: diff_if(forwarding, &self.policy, &actual.policy),
        }
    }
}

/// [`diff`], or nothing when not `wanted`.
fn diff_if<K: Ord + Clone, V: PartialEq + Clone>(
    wanted: bool,
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Diff<K, V> {
    if wanted {
        diff(desired, actual)
    } else {
        Diff {
            upsert: Vec::new(),
            remove: Vec::new(),
        }
    }
}

/// [`diff`] of the keys in `keys` only.
pub fn diff_keys<'k, K: Ord + Clone + 'k, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
    keys: impl IntoIterator<Item = &'k K>,
) -> Diff<K, V> {
    let mut d = Diff {
        upsert: Vec::new(),
        remove: Vec::new(),
    };
    for k in keys {
        match (desired.get(k), actual.get(k)) {
            (Some(v), a) if a != Some(v) => d.upsert.push((k.clone(), v.clone())),
            (None, Some(_)) => d.remove.push(k.clone()),
            _ => {}
        }
    }
    d
}

/// What to write to one map: insert or overwrite `upsert`, delete `remove`.
#[derive(Clone, Debug, PartialEq)]
pub struct Diff<K, V> {
    pub upsert: Vec<(K, V)>,
    pub remove: Vec<K>,
}

impl<K, V> Diff<K, V> {
    pub fn is_empty(&self) -> bool {
        self.upsert.is_empty() && self.remove.is_empty()
    }
}

/// `desired` vs `actual`: entries missing or different in `actual` are upserted, entries
/// only in `actual` are removed.
pub fn diff<K: Ord + Clone, V: PartialEq + Clone>(
    desired: &BTreeMap<K, V>,
    actual: &BTreeMap<K, V>,
) -> Diff<K, V> {
    let upsert = desired
        .iter()
        .filter(|(k, v)| actual.get(*k) != Some(*v))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let remove = actual
        .keys()
        .filter(|k| !desired.contains_key(*k))
        .cloned()
        .collect();
    Diff { upsert, remove }
}

#[derive(Clone, Debug, PartialEq)]
pub struct EntriesDiff {
    pub ports: Diff<u32, PortConfig>,
    pub addrs: Diff<AddrKey, AddrValue>,
    pub cidrs: Diff<CidrKey, AddrValue>,
    pub macs: Diff<MacKey, u32>,
    pub devmap: Diff<u32, u32>,
    pub neigh: Diff<NeighKey, NeighValue>,
    pub routes: Diff<RouteLpmKey, RouteDest>,
    pub l2: Diff<L2Key, L2Dest>,
    pub flood: Diff<u32, FloodList>,
    pub groups: Diff<GroupKey, Group>,
    pub tun_peers: Diff<TunPeerKey, u32>,
    pub tun_srcs: Diff<TunSrcKey, u32>,
    pub config: Diff<u32, ChassisConfig>,
    pub ident: Diff<IdentKey, u32>,
    pub ident_lpm: Diff<IdentLpmKey, u32>,
    pub policy: Diff<PolicyLpmKey, PolicyValue>,
}

impl EntriesDiff {
    /// (upserts, removals) per map, in write order.
    fn sizes(&self) -> [(usize, usize); 16] {
        fn s<K, V>(d: &Diff<K, V>) -> (usize, usize) {
            (d.upsert.len(), d.remove.len())
        }
        [
            s(&self.ports),
            s(&self.addrs),
            s(&self.cidrs),
            s(&self.macs),
            s(&self.devmap),
            s(&self.neigh),
            s(&self.routes),
            s(&self.l2),
            s(&self.flood),
            s(&self.groups),
            s(&self.tun_peers),
            s(&self.tun_srcs),
            s(&self.config),
            s(&self.ident),
            s(&self.ident_lpm),
            s(&self.policy),
        ]
    }

    /// Whether any identity or policy entry changes (the policy generation must then be
    /// bumped once they are written).
    pub fn changes_policy(&self) -> bool {
        !(self.ident.is_empty() && self.ident_lpm.is_empty() && self.policy.is_empty())
    }
    pub fn is_empty(&self) -> bool {
        self.counts() == (0, 0)
    }
    /// (upserts, removals) over all maps.
    pub fn counts(&self) -> (usize, usize) {
        self.sizes()
            .iter()
            .fold((0, 0), |(u, r), (du, dr)| (u + du, r + dr))
    }
}

/// Why a local port has no entries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Entries desired for its tap.
    Programmed { ifindex: u32 },
    /// Its tap does not exist (yet).
    NoTap,
    /// Its lswitch is unknown: skipped (its tap, if any, stays fail closed).
    UnknownLSwitch,
    /// Another local port with a lower id claims the same tap name.
    TapConflict { with: String },
    /// `admin_state_up` is false: no entries, so its tap stays fail closed (everything
    /// it sends is dropped and counted) and nothing is forwarded to it.
    AdminDown,
}

impl PortState {
    pub const fn name(&self) -> &'static str {
        match self {
            PortState::Programmed { .. } => "programmed",
            PortState::NoTap => "no_tap",
            PortState::UnknownLSwitch => "unknown_lswitch",
            PortState::TapConflict { .. } => "tap_conflict",
            PortState::AdminDown => "admin_down",
        }
    }
}

/// A port bound to this chassis.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalPort {
    pub id: String,
    pub lswitch: String,
    pub tap: String,
    pub state: PortState,
}

/// The result of [`desired`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Desired {
    pub entries: MapEntries,
    /// Every port bound here, sorted by id.
    pub local_ports: Vec<LocalPort>,
    /// tap name → port id, for the taps that are programmed.
    pub tap_ports: BTreeMap<String, String>,
    /// Forwarding state per network (for /state).
    pub networks: Vec<Arc<NetworkView>>,
    /// Live chassis other than this one that can be tunnelled to.
    pub remote_chassis: Vec<String>,
    /// net_id → destinations wanted, for flood lists cut to `FLOOD_MAX`.
    pub flood_overflow: BTreeMap<u32, usize>,
    /// Problems in the NB state worth a log line (the controller logs each once).
    pub warnings: BTreeSet<String>,
    /// Security groups of the local ports with port security (for /state).
    pub sg_ports: Arc<Vec<SgPortView>>,
    /// Distinct security-group identities.
    pub sg_identities: usize,
}

impl Desired {
    /// Adds one network's forwarding state.
    pub fn add(&mut self, part: NetPart) {
        self.entries.extend(part.entries);
        if let Some(wanted) = part.flood_overflow {
            self.flood_overflow.insert(part.view.net_id, wanted);
        }
        self.networks.push(part.view);
        self.warnings.extend(part.warnings);
    }

    pub fn count(&self, state: &str) -> usize {
        self.local_ports
            .iter()
            .filter(|p| p.state.name() == state)
            .count()
    }
}

/// Computes the entries for every port bound to `chassis` whose tap is in `taps`
/// (name → ifindex), numbering security-group identities afresh (see [`desired_with`]).
pub fn desired(chassis: &str, nb: &NbSnapshot, taps: &BTreeMap<String, u32>) -> Desired {
    desired_with(chassis, nb, taps, &mut Identities::default())
}

/// [`desired`] with the agent's identity numbers, kept across calls so that a change only
/// rewrites the identities it concerns.
pub fn desired_with(
    chassis: &str,
    nb: &NbSnapshot,
    taps: &BTreeMap<String, u32>,
    identities: &mut Identities,
) -> Desired {
    let mut out = Desired::default();
    let local = nb
        .lports
        .values()
        .filter(|p| p.chassis.as_deref() == Some(chassis));
    local_ports(&mut out, nb, local, taps);
    forwarding::compute(chassis, nb, &mut out);
    security_groups(
        &mut out,
        nb,
        &mut SgEngine::default(),
        None,
        || nb.lports.values(),
        identities,
    );
    out
}

/// The ports bound here (`local`, in id order): their states, their taps, and the port
/// security entries of those whose tap is programmed.
pub fn local_ports<'a>(
    out: &mut Desired,
    nb: &NbSnapshot,
    local: impl IntoIterator<Item = &'a Arc<LPort>>,
    taps: &BTreeMap<String, u32>,
) {
    for port in local {
        let tap = port.tap_name();
        let state = if !nb.lswitches.contains_key(&port.lswitch) {
            PortState::UnknownLSwitch
        } else if let Some(other) = out.tap_ports.get(&tap) {
            PortState::TapConflict {
                with: other.clone(),
            }
        } else if !port.admin_state_up {
            PortState::AdminDown
        } else if let Some(&ifindex) = taps.get(&tap) {
            let ls = &nb.lswitches[&port.lswitch];
            port_entries(&mut out.entries, ifindex, port, ls);
            out.tap_ports.insert(tap.clone(), port.id.clone());
            PortState::Programmed { ifindex }
        } else {
            PortState::NoTap
        };
        out.local_ports.push(LocalPort {
            id: port.id.clone(),
            lswitch: port.lswitch.clone(),
            tap,
            state,
        });
    }
}

/// Brings the security-group entries of `out` up to date for its programmed local ports
/// (see `secgroups::SgEngine::compute` for `changed` and `members`); returns the keys
/// that may differ, `None` for any.
pub fn security_groups<'a, I>(
    out: &mut Desired,
    nb: &NbSnapshot,
    engine: &mut SgEngine,
    changed: Option<&BTreeSet<String>>,
    members: impl FnOnce() -> I,
    identities: &mut Identities,
) -> Option<SgKeys>
where
    I: IntoIterator<Item = &'a Arc<LPort>>,
{
    let programmed: Vec<(u32, &LPort)> = out
        .local_ports
        .iter()
        .filter_map(|p| match p.state {
            PortState::Programmed { ifindex } => Some((ifindex, &*nb.lports[&p.id])),
            _ => None,
        })
        .collect();
    let (keys, sg) = engine.compute(
        nb,
        &programmed,
        changed,
        members,
        identities,
        &mut out.entries,
    );
    out.warnings.extend(sg.warnings);
    out.sg_ports = sg.ports;
    out.sg_identities = sg.identities;
    keys
}

/// The entries of one port on tap `ifindex`.
///
/// With port security disabled only the port entry is written: the datapath then lets
/// every frame through without looking at the address maps (Neutron also refuses AAPs on
/// such ports).
pub fn port_entries(out: &mut MapEntries, ifindex: u32, port: &LPort, ls: &LSwitch) {
    let mut flags = 0;
    if port.port_security_enabled {
        flags |= PORT_F_PORT_SECURITY;
        if port
            .allowed_address_pairs
            .iter()
            .any(|a| !a.ip_address.is_host())
        {
            flags |= PORT_F_CIDR_AAP;
        }
    }
    out.ports.insert(
        ifindex,
        PortConfig {
            net_id: ls.segmentation_id,
            flags,
            mac: port.mac.0,
            mtu: ls.mtu,
        },
    );
    if !port.port_security_enabled {
        return;
    }

    let net_id = ls.segmentation_id;
    let mut add_addr = |mac: MacAddr, ip: IpAddr, f: u32| {
        let v = out.addrs.entry(addr_key(ifindex, mac, ip)).or_default();
        v.flags |= f;
        v.net_id = net_id;
    };
    for ip in &port.fixed_ips {
        add_addr(port.mac, *ip, ADDR_F_FIXED);
    }
    let mut macs = BTreeMap::from([(port.mac, MAC_F_PORT)]);
    for aap in &port.allowed_address_pairs {
        let mac = port.aap_mac(aap);
        *macs.entry(mac).or_default() |= MAC_F_AAP;
        if aap.ip_address.is_host() {
            add_addr(mac, aap.ip_address.addr, ADDR_F_AAP | ADDR_F_WATCH);
        } else {
            let key = cidr_key(ifindex, mac, &aap.ip_address);
            let v = out.cidrs.entry(key).or_default();
            v.flags |= ADDR_F_AAP;
            v.net_id = net_id;
        }
    }
    for (&mac, &f) in &macs {
        add_addr(
            mac,
            IpAddr::from(link_local_from_mac(mac.0)),
            ADDR_F_LINK_LOCAL,
        );
        out.macs.insert(MacKey::new(ifindex, mac.0), f);
    }
}

pub fn addr_key(ifindex: u32, mac: MacAddr, ip: IpAddr) -> AddrKey {
    match ip {
        IpAddr::V4(a) => AddrKey::v4(ifindex, mac.0, a.octets()),
        IpAddr::V6(a) => AddrKey::v6(ifindex, mac.0, a.octets()),
    }
}

/// The LPM key of a CIDR AAP, host bits cleared (the trie would keep them, and a later
/// read-back must compare equal).
pub fn cidr_key(ifindex: u32, mac: MacAddr, prefix: &IpPrefix) -> CidrKey {
    CidrKey {
        prefix_len: LPM_FIXED_BITS + u32::from(prefix.len),
        key: addr_key(ifindex, mac, prefix.network()),
    }
}

#[cfg(test)]
mod tests;
