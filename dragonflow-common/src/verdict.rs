//! Every outcome of the datapath, counted. Drop reasons are one enum; a retired reason
//! keeps its number reserved (never reuse a value: dashboards and pinned counters key on it).
//!
//! Counters live in one per-CPU array ([`crate::maps::STATS`]) of `u64` packet counts,
//! indexed by [`stat_index`]: `direction * STATS_PER_DIR + slot`, where drop reasons take
//! slots `0..64`, allowed paths `64..96` and event outcomes `96..128`.
//!
//! ## Counting convention (per program that decides a frame)
//! Every frame a program *decides* ends in exactly one **outcome** slot:
//! - a [`DropReason`];
//! - a forwarding path ([`PassPath::is_forwarding`]: `L2Local`, `L2Tunnel`, `Flood`,
//!   `Routed`, `ArpResponder`, `NdResponder`, `RouterEcho`) — where it went;
//! - with forwarding off (`fwd::CFG_F_FORWARDING` unset), its port-security path
//!   (`NoPortSecurity` … `Ipv6Unspecified`): it went to the hypervisor's stack.
//!
//! With forwarding on, a from-VM frame that passed port security ALSO counts its
//! port-security path (why it was allowed), whatever forwarding then decided (a forwarding
//! path or a drop such as `UnknownUnicast`). So with forwarding on, per direction:
//! frames decided = Σ drops + Σ forwarding paths, and Σ security paths = frames that
//! passed port security. Metrics: both kinds are `verdict="pass"` samples, told apart by
//! their `path` label ([`PassPath::is_forwarding`] says which kind a path is).
//!
//! A frame that XDP hands to its TC companion (tunnel, flood, routed: XDP cannot finish
//! them) is not decided by XDP and counts nothing there; the TC companion counts it.
//! Flood copies are not frames: one `Flood` per original; likewise the copies to the
//! holders of a shared allowed-address-pair address: one `AapGroup` (or `Routed`) per
//! original, and XDP hands such frames to TC. Destination-side policy
//! outcomes are counted in the direction of the program that delivers (from_vm for local
//! senders, from_tunnel for remote ones); `ToVm` is reserved for the security-group stage.

/// Where the packet was going.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Sent by a local VM (tap ingress).
    FromVm = 0,
    /// Delivered to a local VM (destination-side policy).
    ToVm = 1,
    /// Arrived from another chassis on the VXLAN device.
    FromTunnel = 2,
}
pub const DIRECTIONS: [Direction; 3] = [Direction::FromVm, Direction::ToVm, Direction::FromTunnel];

impl Direction {
    pub const fn name(self) -> &'static str {
        match self {
            Direction::FromVm => "from_vm",
            Direction::ToVm => "to_vm",
            Direction::FromTunnel => "from_tunnel",
        }
    }
}

macro_rules! named_enum {
    ($(#[$m:meta])* $name:ident { $($(#[$vm:meta])* $v:ident = $n:literal => $s:literal,)* }) => {
        $(#[$m])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $name { $($(#[$vm])* $v = $n,)* }
        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$v,)*];
            /// Stable snake_case name, used as the metrics label.
            pub const fn name(self) -> &'static str { match self { $($name::$v => $s,)* } }
            pub fn from_u32(v: u32) -> Option<Self> { match v { $($n => Some($name::$v),)* _ => None } }
        }
    };
}

named_enum! {
    /// Why a frame was dropped. Rows of the threat table (docs/THREATS.md) in brackets.
    DropReason {
        /// No port is known for this tap yet (fail closed until the agent fills the maps).
        UnknownPort = 1 => "unknown_port",
        /// Shorter than an Ethernet header [13].
        EthTruncated = 2 => "eth_truncated",
        /// 802.1Q/802.1ad/QinQ or priority tag, in the frame or in skb metadata [9].
        VlanTagged = 3 => "vlan_tagged",
        /// Not IPv4, IPv6 or ARP (LLDP, PPPoE, MPLS, …) [12].
        BadEthertype = 4 => "bad_ethertype",
        /// Source MAC is neither the port's nor an allowed address pair's [1, 8].
        SrcMacSpoof = 5 => "src_mac_spoof",
        /// Source IP not among the fixed IPs / AAPs for that source MAC [2].
        SrcIpSpoof = 6 => "src_ip_spoof",
        /// ARP with htype≠1, ptype≠IPv4, hlen≠6, plen≠4, unknown op or truncated [13].
        ArpMalformed = 7 => "arp_malformed",
        /// ARP sender hardware address ≠ Ethernet source [3].
        ArpShaMismatch = 8 => "arp_sha_mismatch",
        /// ARP (sha, spa) is not an allowed pair [3, 4].
        ArpSpoof = 9 => "arp_spoof",
        /// ARP probe (spa 0.0.0.0) from a MAC other than the port's [3].
        ArpProbeSpoof = 10 => "arp_probe_spoof",
        /// IPv4 with ihl<5, ihl*4>tot_len, tot_len>frame, or truncated [11, 13].
        Ipv4Malformed = 11 => "ipv4_malformed",
        /// IPv6 header truncated or payload length beyond the frame [13].
        Ipv6Malformed = 12 => "ipv6_malformed",
        /// TCP/UDP/ICMP header truncated, TCP doff<5 [13].
        L4Malformed = 13 => "l4_malformed",
        /// DHCP server reply (UDP 67→68) from a VM [7].
        DhcpServer = 14 => "dhcp_server",
        /// DHCPv6 server reply (UDP 547→546) from a VM [7].
        Dhcpv6Server = 15 => "dhcpv6_server",
        /// ICMPv6 router advertisement (or redirect) from a VM, anywhere in the header chain [6].
        RouterAdvert = 16 => "router_advert",
        /// NS/NA target or link-layer option not the port's, DAD for a foreign address [5].
        NdSpoof = 17 => "nd_spoof",
        /// Neighbour discovery in a fragment (RFC 6980), or an IPv6 first fragment without
        /// the full header chain, or a chain longer than we parse [6, 10].
        Ipv6HeaderChain = 18 => "ipv6_header_chain",
        /// Source 0.0.0.0 that is not a DHCPDISCOVER/REQUEST with chaddr = port MAC [2].
        DhcpClientSpoof = 19 => "dhcp_client_spoof",
        /// Unicast to a MAC no port or router of the network has (no learning, no
        /// flooding of unknown unicast) [8].
        UnknownUnicast = 20 => "unknown_unicast",
        /// Larger than the destination network's MTU (never silently truncated).
        MtuExceeded = 21 => "mtu_exceeded",
        /// Routed packet with TTL / hop limit ≤ 1 [15].
        TtlExceeded = 22 => "ttl_exceeded",
        /// Sent to a router MAC for a destination no interface of the router covers.
        NoRoute = 23 => "no_route",
        /// Routed to an address no port of the destination network has.
        NoNeighbor = 24 => "no_neighbor",
        /// Destination-side policy: the frame is not for the port's MAC (or broadcast).
        DstMacMismatch = 25 => "dst_mac_mismatch",
        /// From the tunnel with a VNI no local network has.
        UnknownVni = 26 => "unknown_vni",
        /// A remote destination but no tunnel device is configured on this chassis.
        NoTunnel = 27 => "no_tunnel",
        /// bpf_redirect / clone failed (destination gone between lookup and send).
        RedirectFailed = 28 => "redirect_failed",
        /// From the tunnel to a destination that is not a local port.
        TunnelNotLocal = 29 => "tunnel_not_local",
        /// No security-group rule of the port allows the new flow (direction `from_vm`:
        /// egress rules of the sender; `to_vm`: ingress rules of the receiver) [14].
        SgDenied = 30 => "sg_denied",
        /// The conntrack table is full: a new flow that the rules allow is dropped
        /// (fail closed, like Linux's nf_conntrack; established flows are unaffected).
        CtFull = 31 => "ct_full",
        /// A non-first fragment with no tracked first fragment (or a first fragment we
        /// could not track) [10].
        FragNoFirst = 32 => "frag_no_first",
        /// A first fragment too short to hold the whole L4 header (RFC 1858) [10].
        FragTiny = 33 => "frag_tiny",
        /// A fragment overlapping the L4 data of the first fragment (RFC 1858) [10].
        FragOverlap = 34 => "frag_overlap",
        /// For a shared allowed-address-pair address (an ARP request / NS for a shared IP,
        /// a packet to a shared IP or MAC), and no holder to deliver to but the sender
        /// (holders unbound, on dead chassis, or not local when it came from the tunnel).
        /// Never flooded instead: a shared IP is not asked of the whole network.
        NoHolder = 35 => "no_holder",
        /// From the tunnel, a packet for a shared VIP forwarded the detection way, sent to
        /// a holder that is not the active one, whose active holder is not on this chassis
        /// (a frame from another chassis never goes back into the tunnel). Locally sent
        /// packets are readdressed to the active holder instead, wherever it is.
        InactiveHolder = 36 => "inactive_holder",
        /// ARP or neighbour discovery sent to a router MAC and not answered: the address
        /// asked for is not on the network the request came from (a port or a router
        /// interface of another network: ARP and ND are link-local), or it is no request
        /// the responder answers in place (an ARP reply, an NA, DAD). Never routed, never
        /// flooded.
        RouterNeighUnanswered = 37 => "router_neigh_unanswered",
        // 38..=39 reserved for the shared-AAP stage (issue 5).
        /// From the tunnel: the outer source IP is not the `tunnel_ip` of a live chassis
        /// hosting the frame's network (a port of it bound there, or of a network a router
        /// connects it to), or the VNI's network is hosted but the frame cannot be
        /// attributed (truncated before its source MAC).
        TunnelUnknownPeer = 40 => "tunnel_unknown_peer",
        /// From the tunnel, from a live chassis of the network: the inner source MAC is
        /// not a MAC a port of that network bound to that chassis may send from (its own,
        /// an allowed address pair's, a shared one it holds), nor a router interface MAC
        /// of the network routed there; a MAC of this chassis' own ports is a spoof.
        TunnelSrcMac = 41 => "tunnel_src_mac",
        /// A broadcast/multicast frame (or an ARP request / NS for a shared IP) over the
        /// sending port's flood rate limit (`dragonflow_common::limits`); what the
        /// responder answers is never limited.
        FloodRateLimited = 42 => "flood_rate_limited",
        /// A new flow of a port that already holds its quota of conntrack entries in
        /// that origin direction (`dragonflow_common::limits`): only the port's own new
        /// flows drop; its established flows and other ports are unaffected.
        CtPortQuota = 43 => "ct_port_quota",
        /// A flood or group copy that the destination device refused (a positive return
        /// of bpf_clone_redirect: dropped by the device's queue): a tap no VM has opened
        /// yet (no carrier while qemu starts, so its queue drops everything) or whose VM
        /// does not keep up (queue full). The other copies were sent.
        DestRefused = 46 => "dest_refused",
    }
}

named_enum! {
    /// Frames allowed, by the path that allowed them.
    PassPath {
        /// Port security disabled on the port.
        NoPortSecurity = 0 => "no_port_security",
        Ipv4 = 1 => "ipv4",
        Ipv6 = 2 => "ipv6",
        Arp = 3 => "arp",
        /// DHCPDISCOVER/REQUEST from 0.0.0.0 with chaddr = port MAC.
        DhcpDiscover = 4 => "dhcp_discover",
        /// IPv6 NS/NA that passed the target and link-layer checks.
        Nd = 5 => "nd",
        /// DAD NS or MLD report from :: (RFC 4862).
        Ipv6Unspecified = 6 => "ipv6_unspecified",
        /// Delivered into a tap on this chassis.
        L2Local = 7 => "l2_local",
        /// Sent through the VXLAN tunnel to another chassis.
        L2Tunnel = 8 => "l2_tunnel",
        /// Broadcast/multicast copied to the network's other ports and chassis.
        Flood = 9 => "flood",
        /// Routed by the distributed router (then delivered locally or tunnelled).
        Routed = 10 => "routed",
        /// ARP request answered by the datapath.
        ArpResponder = 11 => "arp_responder",
        /// IPv6 neighbour solicitation answered by the datapath.
        NdResponder = 12 => "nd_responder",
        /// ICMP/ICMPv6 echo to a router interface answered by the datapath.
        RouterEcho = 13 => "router_echo",
        /// Switched to the holders of a shared allowed-address-pair address (broadcast
        /// way): a frame to a shared MAC, a packet to a shared IP, an ARP request / NS for a
        /// shared IP; one copy per holder (see the counting convention: copies are not
        /// frames). A routed packet to a shared IP counts `routed`.
        AapGroup = 14 => "aap_group",
    }
}

impl PassPath {
    /// A forwarding outcome (where the frame went) rather than the port-security check
    /// that allowed it; see the module docs.
    pub const fn is_forwarding(self) -> bool {
        self as u32 >= PassPath::L2Local as u32
    }
}

named_enum! {
    /// Side counters that are not outcomes: GARP events and security-group/conntrack
/// activity (counted in the direction that judged: `from_vm` egress, `to_vm` ingress).
    EventStat {
        /// Pushed to the ring buffer.
        GarpSent = 0 => "garp_sent",
        /// Suppressed by the per (port, IP) rate limit.
        GarpRateLimited = 1 => "garp_rate_limited",
        /// The ring buffer was full: the event is lost (the frame is still forwarded).
        GarpRingFull = 2 => "garp_ring_full",
        /// Security groups: a new flow was allowed by a rule (and tracked).
        CtNew = 3 => "ct_new",
        /// Security groups: a packet of a tracked flow (either way) passed.
        CtEstablished = 4 => "ct_established",
        /// Security groups: an ICMP error about a tracked flow passed.
        CtRelated = 5 => "ct_related",
        /// Security groups: an entry from an older policy generation was re-judged
        /// against the current rules (and kept or deleted).
        CtRevalidated = 6 => "ct_revalidated",
        /// Security groups: a new flow allowed by a rule but not tracked (TCP without SYN,
        /// group destination) — judged again at its next packet.
        CtUntracked = 7 => "ct_untracked",
        /// Security groups: exempt traffic (ARP, ND, DHCP client/server) passed.
        SgExempt = 8 => "sg_exempt",
        /// A drop event pushed to the monitor ring buffer (`dfctl monitor`).
        DropEventSent = 9 => "drop_event_sent",
        /// A drop event suppressed by the per-CPU rate limit of the monitor.
        DropEventRateLimited = 10 => "drop_event_rate_limited",
        /// The monitor ring buffer was full: the drop event is lost.
        DropEventRingFull = 11 => "drop_event_ring_full",
    }
}

pub const STATS_PER_DIR: u32 = 128;
pub const STATS_LEN: u32 = STATS_PER_DIR * DIRECTIONS.len() as u32;
const DROP_BASE: u32 = 0;
const PASS_BASE: u32 = 64;
const EVENT_BASE: u32 = 96;

/// One counter slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    Drop(DropReason),
    Pass(PassPath),
    Event(EventStat),
}

/// Index into [`crate::maps::STATS`].
#[inline(always)]
pub const fn stat_index(dir: Direction, stat: Stat) -> u32 {
    let slot = match stat {
        Stat::Drop(r) => DROP_BASE + r as u32,
        Stat::Pass(p) => PASS_BASE + p as u32,
        Stat::Event(e) => EVENT_BASE + e as u32,
    };
    dir as u32 * STATS_PER_DIR + slot
}

const _: () = {
    // Every enum must fit its slot range.
    let mut i = 0;
    while i < DropReason::ALL.len() {
        assert!((DropReason::ALL[i] as u32) < PASS_BASE - DROP_BASE);
        i += 1;
    }
    let mut i = 0;
    while i < PassPath::ALL.len() {
        assert!((PassPath::ALL[i] as u32) < EVENT_BASE - PASS_BASE);
        i += 1;
    }
    let mut i = 0;
    while i < EventStat::ALL.len() {
        assert!((EventStat::ALL[i] as u32) < STATS_PER_DIR - EVENT_BASE);
        i += 1;
    }
};
