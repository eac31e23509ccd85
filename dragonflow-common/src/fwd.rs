//! Forwarding state: L2 (network, MAC) → where, IP → MAC (responder and L3), flood lists,
//! multi-destination groups of shared allowed-address-pair addresses (the broadcast way),
//! distributed-router routes, and the chassis-wide tunnel configuration.
//!
//! A network is keyed by its VNI (`net_id` = the logical switch's segmentation_id), so
//! the same key names it on every chassis and in the VXLAN header.

/// [`L2Dest::kind`]: a port on this chassis, reached through its tap.
pub const DEST_LOCAL: u8 = 1;
/// A port on another chassis, reached through the VXLAN device toward `remote_ip`.
pub const DEST_REMOTE: u8 = 2;
/// A distributed router's interface MAC on this network: route on this chassis.
pub const DEST_ROUTER: u8 = 3;
/// A MAC several ports of the network list (e.g. a VRRP virtual MAC shared as an allowed
/// address pair), broadcast way: one copy to each holder, from the group
/// [`GroupKey::mac`]`(net_id, MAC)` in [`crate::maps::GROUPS`] (see [`Group`]).
pub const DEST_GROUP: u8 = 4;

/// [`L2Dest::flags`]: a port behind this MAC holds a shared allowed-address-pair IP with
/// it. An IPv4/IPv6 frame to this MAC is first looked up by its destination IP in
/// `df_neigh_v1`: if that IP is shared and forwarded the broadcast way
/// ([`NEIGH_F_SHARED`]), the frame goes to every holder of the IP (a client that resolved
/// the VIP to one holder's MAC still reaches all of them); if it is the VIP of an active
/// holder (detection way, [`NEIGH_F_ACTIVE`]) and this MAC is not the active one, the
/// frame is readdressed to the active MAC (a client whose cache still names another
/// holder reaches the active one only). Unflagged MACs never pay for that lookup.
pub const L2_F_SHARED_IP: u8 = 1 << 0;

/// Key of [`crate::maps::L2`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct L2Key {
    pub net_id: u32,
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<L2Key>() == 12);

impl L2Key {
    #[inline(always)]
    pub const fn new(net_id: u32, mac: [u8; 6]) -> Self {
        Self {
            net_id,
            mac,
            _pad: [0; 2],
        }
    }
}

/// Value of [`crate::maps::L2`]: where frames to (network, MAC) go.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct L2Dest {
    /// `DEST_*`.
    pub kind: u8,
    /// `L2_F_*` (was padding: entries written before it existed read as 0).
    pub flags: u8,
    /// MTU of the destination network (payload bytes after the Ethernet header);
    /// larger frames are dropped and counted, never truncated.
    pub mtu: u16,
    /// DEST_LOCAL: the destination tap's ifindex.
    pub ifindex: u32,
    /// DEST_REMOTE: the destination chassis' tunnel IPv4, network byte order as in the
    /// packet (the program converts for bpf_skb_set_tunnel_key, which takes host order).
    pub remote_ip: [u8; 4],
    /// DEST_ROUTER: the router's id (key of [`crate::maps::ROUTES`]).
    pub router_id: u32,
}
const _: () = assert!(core::mem::size_of::<L2Dest>() == 16);

/// [`NeighValue::flags`]: the address is a router interface's (answer ping to it).
pub const NEIGH_F_ROUTER: u16 = 1 << 0;
/// The address is a port's fixed IP.
pub const NEIGH_F_FIXED: u16 = 1 << 1;
/// The address is a single-IP allowed address pair: of exactly one port of the network,
/// or, for an IP several ports list, of the port detected as active (detection way, with
/// [`NEIGH_F_ACTIVE`]). Answered by the responder like a fixed IP.
pub const NEIGH_F_AAP: u16 = 1 << 2;
/// The address is an allowed-address-pair IP several ports of the network list, forwarded
/// the broadcast way: `mac` is zero; the ARP/ND responder does not answer it, and ARP
/// requests / neighbour solicitations for it go to its holders only (never flooded to the
/// network); a routed or switched packet to it goes to every holder, each copy with that
/// holder's MAC for the IP. The holders are the group [`GroupKey::ip`]`(net_id, IP)`.
pub const NEIGH_F_SHARED: u16 = 1 << 3;
/// With [`NEIGH_F_AAP`]: an allowed-address-pair IP several ports of the network list,
/// forwarded the detection way: `mac` is the active holder's MAC for it, and only the
/// active holder gets packets for it — a packet for it switched to another holder's MAC
/// (flagged [`L2_F_SHARED_IP`]) is readdressed to `mac`, wherever that holder is.
pub const NEIGH_F_ACTIVE: u16 = 1 << 4;

/// Key of [`crate::maps::NEIGH`]: an IP in a network.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NeighKey {
    pub net_id: u32,
    /// [`crate::addr::FAMILY_V4`] or [`crate::addr::FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// IPv4 in the first 4 bytes (network order), rest zero; or the IPv6 address.
    pub ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<NeighKey>() == 24);

/// Value of [`crate::maps::NEIGH`]: the MAC that owns the IP (the ARP/ND responder's
/// answer; the L3 stage's destination MAC).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NeighValue {
    pub mac: [u8; 6],
    /// `NEIGH_F_*`.
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<NeighValue>() == 8);

/// Destinations a broadcast/multicast frame of one network is copied to, at most.
/// A bounded loop in the datapath: the verifier needs a constant bound. Networks with
/// more local ports + remote chassis than this are refused by the agent (logged, counted).
pub const FLOOD_MAX: usize = 64;

/// One flood destination.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FloodDest {
    /// [`DEST_LOCAL`] or [`DEST_REMOTE`].
    pub kind: u32,
    /// DEST_LOCAL: the tap (skipped when it is the frame's own ingress tap).
    pub ifindex: u32,
    /// DEST_REMOTE: the chassis' tunnel IPv4 (network order); one entry per chassis
    /// hosting ports of the network, never one per remote port.
    pub remote_ip: [u8; 4],
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<FloodDest>() == 16);

/// Value of [`crate::maps::FLOOD`], keyed by net_id (u32). Replaced whole by the agent,
/// so the datapath always sees a consistent list.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FloodList {
    /// Valid entries in `dests`.
    pub len: u32,
    /// MTU of the network (same meaning as [`L2Dest::mtu`]).
    pub mtu: u16,
    pub _pad: u16,
    pub dests: [FloodDest; FLOOD_MAX],
}
const _: () = assert!(core::mem::size_of::<FloodList>() == 8 + 16 * FLOOD_MAX);

impl Default for FloodList {
    fn default() -> Self {
        Self {
            len: 0,
            mtu: 0,
            _pad: 0,
            dests: [FloodDest::default(); FLOOD_MAX],
        }
    }
}

/// [`GroupKey::kind`]: the group of a shared MAC ([`DEST_GROUP`]).
pub const GROUP_K_MAC: u8 = 0;
// An IP group's kind is its family, `crate::addr::FAMILY_V4` / `FAMILY_V6`.

/// Key of [`crate::maps::GROUPS`]: the shared address a group delivers for. Derived from
/// the address itself, so a group needs no id: the datapath finds the group of an L2
/// entry ([`DEST_GROUP`]) or of a neighbour ([`NEIGH_F_SHARED`]) from the same (network,
/// address) it looked up.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub net_id: u32,
    /// [`GROUP_K_MAC`], or the IP's family.
    pub kind: u8,
    pub _pad: [u8; 3],
    /// The MAC in the first 6 bytes (rest zero); an IPv4 in the first 4 bytes (network
    /// order, rest zero); or the IPv6 address. Laid out as [`NeighKey::ip`].
    pub addr: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<GroupKey>() == 24);
const _: () = assert!(core::mem::size_of::<GroupKey>() == core::mem::size_of::<NeighKey>());

impl GroupKey {
    /// The group of a shared MAC.
    #[inline(always)]
    pub const fn mac(net_id: u32, mac: [u8; 6]) -> Self {
        let mut addr = [0u8; 16];
        addr[0] = mac[0];
        addr[1] = mac[1];
        addr[2] = mac[2];
        addr[3] = mac[3];
        addr[4] = mac[4];
        addr[5] = mac[5];
        Self {
            net_id,
            kind: GROUP_K_MAC,
            _pad: [0; 3],
            addr,
        }
    }

    /// The group of a shared IP: the same bytes as its neighbour key.
    #[inline(always)]
    pub const fn ip(n: &NeighKey) -> Self {
        Self {
            net_id: n.net_id,
            kind: n.family,
            _pad: [0; 3],
            addr: n.ip,
        }
    }
}

/// Members of one group, at most. A bounded loop in the datapath, like [`FLOOD_MAX`]; a
/// VIP is typically held by two or three VMs. Longer groups are cut by the agent (locals
/// first; logged).
pub const GROUP_MAX: usize = 16;

/// [`GroupMember::flags`]: the first member naming its destination (tap, or remote
/// chassis). A frame forwarded unchanged (an ARP request or NS for a shared IP, a frame
/// to a shared MAC) is copied once per destination, to these members only; a packet to a
/// shared IP is copied to every member, each with its own `mac`.
pub const GROUP_M_F_FIRST: u8 = 1 << 0;

/// One holder of a shared address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GroupMember {
    /// [`DEST_LOCAL`] or [`DEST_REMOTE`].
    pub kind: u8,
    /// `GROUP_M_F_*`.
    pub flags: u8,
    /// The holder's MAC for the address: the destination MAC of a copy of a packet to a
    /// shared IP (a remote chassis resolves it with its own L2 entry). For a MAC group,
    /// the shared MAC.
    pub mac: [u8; 6],
    /// DEST_LOCAL: the holder's tap.
    pub ifindex: u32,
    /// DEST_REMOTE: the chassis' tunnel IPv4 (network order). One member per (chassis,
    /// MAC), never one per remote port: the remote chassis delivers to its own holders.
    pub remote_ip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<GroupMember>() == 16);

/// Value of [`crate::maps::GROUPS`]. Replaced whole by the agent (a consistent list).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Group {
    /// Valid entries in `members`.
    pub len: u32,
    /// MTU of the network (same meaning as [`L2Dest::mtu`]).
    pub mtu: u16,
    pub _pad: u16,
    /// Local members first, then remote ones.
    pub members: [GroupMember; GROUP_MAX],
}
const _: () = assert!(core::mem::size_of::<Group>() == 8 + 16 * GROUP_MAX);

impl Default for Group {
    fn default() -> Self {
        Self {
            len: 0,
            mtu: 0,
            _pad: 0,
            members: [GroupMember::default(); GROUP_MAX],
        }
    }
}

/// Key of [`crate::maps::ROUTES`] (LPM): prefix length = [`ROUTE_FIXED_BITS`] + IP prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RouteKey {
    pub router_id: u32,
    pub family: u8,
    pub _pad: [u8; 3],
    pub ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<RouteKey>() == 24);
pub const ROUTE_FIXED_BITS: u32 = 64;
const _: () = assert!(core::mem::offset_of!(RouteKey, ip) * 8 == ROUTE_FIXED_BITS as usize);

/// Value of [`crate::maps::ROUTES`]: a router interface's connected subnet.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RouteDest {
    /// The network the subnet is on.
    pub net_id: u32,
    /// The router interface's MAC on that network (the routed frame's new source MAC).
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<RouteDest>() == 12);

/// Value of [`crate::maps::CONFIG`] at index 0: chassis-wide settings the agent writes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChassisConfig {
    /// ifindex of `df-vxlan` (external/collect-metadata mode) in the agent's namespace;
    /// 0 = no tunnel (remote destinations are dropped as `no_tunnel`).
    pub vxlan_ifindex: u32,
    /// This chassis' tunnel IPv4 (network order). Frames from the tunnel claiming it as
    /// source are dropped by admission: the agent never admits its own address as a peer
    /// ([`TunPeerKey`]), so they count `tunnel_unknown_peer`.
    pub local_ip: [u8; 4],
    pub flags: u32,
    /// Security-group policy generation: bumped by the agent after every change of rules,
    /// memberships or identities. A conntrack entry from another generation is re-judged
    /// against the rules at its next packet (see `sg`).
    pub policy_gen: u32,
}
const _: () = assert!(core::mem::size_of::<ChassisConfig>() == 16);

/// [`ChassisConfig::flags`]: the forwarding stage is active. Without it the from-VM
/// pipeline hands allowed frames to the hypervisor's stack (XDP_PASS / TC_ACT_OK) as before
/// issue 3; the agent sets it once it has filled the forwarding maps.
pub const CFG_F_FORWARDING: u32 = 1;

/// [`ChassisConfig::flags`]: security groups are enforced (egress at the sender, ingress
/// at the receiver, with conntrack). Without it only port security applies (Neutron's
/// `firewall_driver = noop`).
pub const CFG_F_SECURITY_GROUPS: u32 = 2;

/// Key of [`crate::maps::TUN_PEERS`]: a chassis, by its tunnel IPv4, that may send frames
/// of a network to this one: it is live (its `chassis/` record exists) and hosts the
/// network (a port of it is bound there) or a network a router connects it to (it routes
/// into it). Consulted only to name the drop reason of a frame [`TunSrcKey`] refuses.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunPeerKey {
    pub net_id: u32,
    /// The chassis' tunnel IPv4 (network order), the outer source of its VXLAN frames.
    pub remote_ip: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<TunPeerKey>() == 8);

/// Key of [`crate::maps::TUN_SRCS`]: a source MAC a live chassis may send frames of a
/// network from. The tunnel program admits a frame only on an exact hit of (VNI, outer
/// source, inner source MAC): one lookup on the fast path, which also proves the peer
/// (the agent writes source entries only for peers it also writes to `TUN_PEERS`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TunSrcKey {
    pub net_id: u32,
    /// As [`TunPeerKey::remote_ip`].
    pub remote_ip: [u8; 4],
    pub mac: [u8; 6],
    pub _pad: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<TunSrcKey>() == 16);

impl TunSrcKey {
    pub const fn new(net_id: u32, remote_ip: [u8; 4], mac: [u8; 6]) -> Self {
        Self {
            net_id,
            remote_ip,
            mac,
            _pad: [0; 2],
        }
    }
}

/// Value bits of [`crate::maps::TUN_PEERS`] and [`crate::maps::TUN_SRCS`] (`u32`).
/// The chassis hosts ports of the network / the MAC is such a port's (own or allowed
/// address pair, shared ones included).
pub const TUN_F_PORT: u32 = 1 << 0;
/// The chassis routes into the network / the MAC is a router interface's on it.
pub const TUN_F_ROUTER: u32 = 1 << 1;
/// Sources only: the MAC is the own MAC of a port without port security, which may
/// legitimately send what port security refuses (tags, any ethertype, DHCP server replies,
/// router advertisements, odd headers): its frames skip the tunnel program's sanity
/// checks, exactly as the sending chassis let them through. Read by the datapath.
pub const TUN_F_UNSECURED: u32 = 1 << 2;
