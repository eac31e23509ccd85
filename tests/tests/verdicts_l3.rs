//! Verdict table of the ARP/ND responder and the distributed router through
//! BPF_PROG_TEST_RUN, on both from-VM hooks: seeded maps (a port on network A, a peer on A,
//! a destination on network B, router 7 with an interface on each), the input frame, the
//! expected action, the output frame checked byte by byte (checksums also verified
//! independently) and the exact counter slots that moved. Needs root.
//!
//! The XDP hook answers broadcast/multicast ARP and NS itself (XDP_TX). Everything else
//! here — routed frames, echo to the router, unicast ARP/NS to the router MAC, requests
//! the responder leaves alone (flooded) — XDP hands off untouched and uncounted (XDP_PASS)
//! to its tcx companion `df_from_vm_tc`, which decides. For the XDP hook each such case
//! therefore checks the hand-off and then runs the TC program on the untouched frame, as
//! the kernel does on a tap with both attached: the outcome of the XDP deployment.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        CFG_F_FORWARDING, ChassisConfig, DEST_LOCAL, DEST_ROUTER, L2Dest, L2Key, NEIGH_F_FIXED,
        NEIGH_F_ROUTER, NeighValue, RouteDest, RouteKey,
    },
    verdict::{Direction, DropReason, PassPath, Stat},
};
use tests::{
    fixtures::{
        addresses::{hex, neigh4, neigh6, pad4},
        frames::*,
        seeding::SecuredPort,
    },
    framework::{
        hook::Hook,
        test_run::{Datapath, LO_IFINDEX, actions},
    },
    verdict::{self, Coverage, covered_by},
};

const IF: u32 = LO_IFINDEX;
/// The destination port's tap on network B (TC's bpf_redirect only records the target,
/// so it need not exist).
const DST_IF: u32 = 1000;
const NET_A: u32 = 42;
const NET_B: u32 = 43;
const ROUTER: u32 = 7;

const VM_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x10];
const PEER_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x20];
const DST_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0xb, 0x20];
const RA_MAC: [u8; 6] = [0x02, 0xdf, 0xee, 0, 0, 0x0a];
const RB_MAC: [u8; 6] = [0x02, 0xdf, 0xee, 0, 0, 0x0b];

const VM4: [u8; 4] = [192, 0, 2, 10];
const PEER4: [u8; 4] = [192, 0, 2, 20];
const GW4_A: [u8; 4] = [192, 0, 2, 1];
const UNKNOWN4: [u8; 4] = [192, 0, 2, 99];
const DST4: [u8; 4] = [198, 51, 100, 20];
const GW4_B: [u8; 4] = [198, 51, 100, 1];
const NONEIGH4: [u8; 4] = [198, 51, 100, 99];
const NOROUTE4: [u8; 4] = [203, 0, 113, 5];
const ZERO4: [u8; 4] = [0; 4];

const VM6: [u8; 16] = v6(0xa, 0x10);
const PEER6: [u8; 16] = v6(0xa, 0x20);
const GW6_A: [u8; 16] = v6(0xa, 1);
const UNKNOWN6: [u8; 16] = v6(0xa, 0x99);
const DST6: [u8; 16] = v6(0xb, 0x20);
const GW6_B: [u8; 16] = v6(0xb, 1);
const NONEIGH6: [u8; 16] = v6(0xb, 0x99);
const NOROUTE6: [u8; 16] = v6(0xc, 5);
const ZERO6: [u8; 16] = [0; 16];

/// 2001:db8:<net>::<host>
const fn v6(net: u8, host: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, net, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

fn route_key(family: u8, ip: [u8; 16]) -> RouteKey {
    RouteKey {
        router_id: ROUTER,
        family,
        _pad: [0; 3],
        ip,
    }
}

/// SETUP: forwarding on; the VM's port on network A (fixed IPv4/IPv6 and link-local);
/// neighbours on A (the VM, a peer, the router's interface) and on B (a destination
/// port, the router's interface); router 7 with 192.0.2.0/24 + 2001:db8:a::/64 on A and
/// 198.51.100.0/24 + 2001:db8:b::/64 on B; L2: the router MAC on A, the destination port
/// on B (a local tap).
fn seed(dp: &mut Datapath) {
    dp.clear();
    dp.clear_fwd();
    dp.set_config(ChassisConfig {
        flags: CFG_F_FORWARDING,
        ..ChassisConfig::default()
    });
    // XDP answers ARP/NS (XDP_TX) only out of taps it can deliver to, those in the devmap
    // (a tun device in production); `responder_needs_xdp_target` covers the others.
    dp.add_devmap(IF);
    SecuredPort {
        ifindex: IF,
        net_id: NET_A,
        mac: VM_MAC,
        ip4: &[VM4],
        ip6: &[VM6],
    }
    .seed(dp);

    let fixed = |mac| NeighValue {
        mac,
        flags: NEIGH_F_FIXED,
    };
    let router = |mac| NeighValue {
        mac,
        flags: NEIGH_F_ROUTER,
    };
    dp.add_neigh(neigh4(NET_A, VM4), fixed(VM_MAC));
    dp.add_neigh(neigh4(NET_A, PEER4), fixed(PEER_MAC));
    dp.add_neigh(neigh4(NET_A, GW4_A), router(RA_MAC));
    dp.add_neigh(neigh4(NET_B, DST4), fixed(DST_MAC));
    dp.add_neigh(neigh4(NET_B, GW4_B), router(RB_MAC));
    dp.add_neigh(neigh6(NET_A, VM6), fixed(VM_MAC));
    dp.add_neigh(neigh6(NET_A, PEER6), fixed(PEER_MAC));
    dp.add_neigh(neigh6(NET_A, GW6_A), router(RA_MAC));
    dp.add_neigh(neigh6(NET_B, DST6), fixed(DST_MAC));
    dp.add_neigh(neigh6(NET_B, GW6_B), router(RB_MAC));

    let on = |net_id, mac| RouteDest {
        net_id,
        mac,
        _pad: [0; 2],
    };
    dp.add_route(
        route_key(FAMILY_V4, pad4([192, 0, 2, 0])),
        24,
        on(NET_A, RA_MAC),
    );
    dp.add_route(
        route_key(FAMILY_V4, pad4([198, 51, 100, 0])),
        24,
        on(NET_B, RB_MAC),
    );
    dp.add_route(route_key(FAMILY_V6, v6(0xa, 0)), 64, on(NET_A, RA_MAC));
    dp.add_route(route_key(FAMILY_V6, v6(0xb, 0)), 64, on(NET_B, RB_MAC));

    dp.add_l2(
        L2Key::new(NET_A, RA_MAC),
        L2Dest {
            kind: DEST_ROUTER,
            router_id: ROUTER,
            mtu: 1500,
            ..L2Dest::default()
        },
    );
    dp.add_l2(
        L2Key::new(NET_B, DST_MAC),
        L2Dest {
            kind: DEST_LOCAL,
            ifindex: DST_IF,
            mtu: 1500,
            ..L2Dest::default()
        },
    );
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    Pass(PassPath),
    Drop(DropReason),
}
use Expect::{Drop as D, Pass as P};

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// The port-security path that lets the frame in (counted besides the outcome).
    allowed: PassPath,
    expect: Expect,
    /// The frame after the program; `None`: unchanged.
    out: Option<Vec<u8>>,
}

fn case(
    name: &'static str,
    frame: Vec<u8>,
    allowed: PassPath,
    expect: Expect,
    out: Option<Vec<u8>>,
) -> Case {
    Case {
        name,
        frame,
        allowed,
        expect,
        out,
    }
}

fn arp_frame(
    dst: [u8; 6],
    op: u16,
    sha: [u8; 6],
    spa: [u8; 4],
    tha: [u8; 6],
    tpa: [u8; 4],
) -> Vec<u8> {
    eth(dst, sha, ETH_P_ARP, &arp(op, sha, spa, tha, tpa))
}

/// An ARP reply as the responder must build it from a request by `VM_MAC`/`spa`.
fn arp_reply(mac: [u8; 6], ip: [u8; 4], spa: [u8; 4]) -> Vec<u8> {
    eth(VM_MAC, mac, ETH_P_ARP, &arp(2, mac, ip, VM_MAC, spa))
}

/// An NS from the VM for `target` to `dst`, with SLLA.
fn ns_frame(eth_dst: [u8; 6], src: [u8; 16], dst: [u8; 16], target: [u8; 16]) -> Vec<u8> {
    let msg = with_icmpv6_checksum(src, dst, &ns(target, &lla_opt(1, VM_MAC)));
    eth(
        eth_dst,
        VM_MAC,
        ETH_P_IPV6,
        &ipv6(src, dst, IPPROTO_ICMPV6, 255, &msg),
    )
}

/// The NA the responder must build for `target` owned by `mac`, to `dst`.
fn na_frame(mac: [u8; 6], flags: u8, target: [u8; 16], dst: [u8; 16]) -> Vec<u8> {
    let msg = with_icmpv6_checksum(target, dst, &na(flags, target, &lla_opt(2, mac)));
    eth(
        VM_MAC,
        mac,
        ETH_P_IPV6,
        &ipv6(target, dst, IPPROTO_ICMPV6, 255, &msg),
    )
}

fn v4_udp(ttl: u8, dst: [u8; 4]) -> Vec<u8> {
    eth(
        RA_MAC,
        VM_MAC,
        ETH_P_IP,
        &ipv4_ttl(ttl, VM4, dst, IPPROTO_UDP, &udp(40000, 5001, b"routed")),
    )
}

fn v6_udp(hop: u8, dst: [u8; 16]) -> Vec<u8> {
    eth(
        RA_MAC,
        VM_MAC,
        ETH_P_IPV6,
        &ipv6(VM6, dst, IPPROTO_UDP, hop, &udp(40000, 5001, b"routed")),
    )
}

fn ping4(ttl: u8, dst: [u8; 4]) -> Vec<u8> {
    eth(
        RA_MAC,
        VM_MAC,
        ETH_P_IP,
        &ipv4_ttl(
            ttl,
            VM4,
            dst,
            IPPROTO_ICMP,
            &icmp_echo_msg(8, 0x77, 3, b"abcdefgh"),
        ),
    )
}

fn pong4(src: [u8; 4]) -> Vec<u8> {
    eth(
        VM_MAC,
        RA_MAC,
        ETH_P_IP,
        &ipv4_ttl(
            64,
            src,
            VM4,
            IPPROTO_ICMP,
            &icmp_echo_msg(0, 0x77, 3, b"abcdefgh"),
        ),
    )
}

fn ping6(hop: u8, dst: [u8; 16]) -> Vec<u8> {
    let msg = with_icmpv6_checksum(VM6, dst, &icmpv6_echo_msg(128, 0x66, 9, b"abcdefgh"));
    eth(
        RA_MAC,
        VM_MAC,
        ETH_P_IPV6,
        &ipv6(VM6, dst, IPPROTO_ICMPV6, hop, &msg),
    )
}

fn pong6(src: [u8; 16]) -> Vec<u8> {
    let msg = with_icmpv6_checksum(src, VM6, &icmpv6_echo_msg(129, 0x66, 9, b"abcdefgh"));
    eth(
        VM_MAC,
        RA_MAC,
        ETH_P_IPV6,
        &ipv6(src, VM6, IPPROTO_ICMPV6, 64, &msg),
    )
}

/// The routed version of a frame built by `v4_udp`/`v6_udp`.
fn routed(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[0..6].copy_from_slice(&DST_MAC);
    f[6..12].copy_from_slice(&RB_MAC);
    f
}

const NA_R: u8 = 0x80;
const NA_S: u8 = 0x40;
const NA_O: u8 = 0x20;

fn cases() -> Vec<Case> {
    let bcast = BROADCAST;
    let snm = |ip| ipv6_mcast_mac(solicited_node(ip));
    vec![
        // --- ARP responder (broadcast requests)
        case(
            "ARP request for a port's IP: answered with the port's MAC",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], PEER4),
            PassPath::Arp,
            P(PassPath::ArpResponder),
            Some(arp_reply(PEER_MAC, PEER4, VM4)),
        ),
        case(
            "ARP request for the router interface IP: answered with the router MAC",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], GW4_A),
            PassPath::Arp,
            P(PassPath::ArpResponder),
            Some(arp_reply(RA_MAC, GW4_A, VM4)),
        ),
        case(
            "ARP probe (spa 0.0.0.0) for a peer's IP: answered (as the owner would)",
            arp_frame(bcast, 1, VM_MAC, ZERO4, [0; 6], PEER4),
            PassPath::Arp,
            P(PassPath::ArpResponder),
            Some(arp_reply(PEER_MAC, PEER4, ZERO4)),
        ),
        case(
            "ARP request for an unknown IP: not answered, flooded",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], UNKNOWN4),
            PassPath::Arp,
            P(PassPath::Flood),
            None,
        ),
        case(
            "ARP probe for the VM's own IP: not answered (no false conflict), flooded",
            arp_frame(bcast, 1, VM_MAC, ZERO4, [0; 6], VM4),
            PassPath::Arp,
            P(PassPath::Flood),
            None,
        ),
        case(
            "gratuitous ARP: not answered, flooded",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], VM4),
            PassPath::Arp,
            P(PassPath::Flood),
            None,
        ),
        case(
            "ARP request for an IP of another network: not answered, flooded",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], DST4),
            PassPath::Arp,
            P(PassPath::Flood),
            None,
        ),
        case(
            "unicast ARP to the router MAC (gateway refresh): answered",
            arp_frame(RA_MAC, 1, VM_MAC, VM4, RA_MAC, GW4_A),
            PassPath::Arp,
            P(PassPath::ArpResponder),
            Some(arp_reply(RA_MAC, GW4_A, VM4)),
        ),
        case(
            "ARP reply to the router MAC: nothing to answer, never routed",
            arp_frame(RA_MAC, 2, VM_MAC, VM4, RA_MAC, GW4_A),
            PassPath::Arp,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        // Only the addresses of the network a request arrives on are answered (issue 10),
        // whether it is broadcast or sent to the router MAC; never routed.
        case(
            "unicast ARP to the router MAC for a port of network B: not answered, dropped",
            arp_frame(RA_MAC, 1, VM_MAC, VM4, RA_MAC, DST4),
            PassPath::Arp,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        case(
            "unicast ARP to the router MAC for its interface on network B: not answered",
            arp_frame(RA_MAC, 1, VM_MAC, VM4, RA_MAC, GW4_B),
            PassPath::Arp,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        case(
            "unicast ARP to the router MAC for a peer on A: answered as a broadcast one",
            arp_frame(RA_MAC, 1, VM_MAC, VM4, RA_MAC, PEER4),
            PassPath::Arp,
            P(PassPath::ArpResponder),
            Some(arp_reply(PEER_MAC, PEER4, VM4)),
        ),
        case(
            "ARP request for the router's interface on network B: not answered, flooded in A",
            arp_frame(bcast, 1, VM_MAC, VM4, [0; 6], GW4_B),
            PassPath::Arp,
            P(PassPath::Flood),
            None,
        ),
        // --- ND responder
        case(
            "NS (solicited-node) for a port's IPv6: NA S|O with TLLA",
            ns_frame(snm(PEER6), VM6, solicited_node(PEER6), PEER6),
            PassPath::Nd,
            P(PassPath::NdResponder),
            Some(na_frame(PEER_MAC, NA_S | NA_O, PEER6, VM6)),
        ),
        case(
            "NS for the router interface IPv6: NA R|S|O",
            ns_frame(snm(GW6_A), VM6, solicited_node(GW6_A), GW6_A),
            PassPath::Nd,
            P(PassPath::NdResponder),
            Some(na_frame(RA_MAC, NA_R | NA_S | NA_O, GW6_A, VM6)),
        ),
        case(
            "NS from the link-local address: NA to the link-local address",
            ns_frame(
                snm(PEER6),
                dragonflow_common::addr::link_local_from_mac(VM_MAC),
                solicited_node(PEER6),
                PEER6,
            ),
            PassPath::Nd,
            P(PassPath::NdResponder),
            Some(na_frame(
                PEER_MAC,
                NA_S | NA_O,
                PEER6,
                dragonflow_common::addr::link_local_from_mac(VM_MAC),
            )),
        ),
        case(
            "unicast NS to the router MAC (NUD of the gateway): answered",
            ns_frame(RA_MAC, VM6, GW6_A, GW6_A),
            PassPath::Nd,
            P(PassPath::NdResponder),
            Some(na_frame(RA_MAC, NA_R | NA_S | NA_O, GW6_A, VM6)),
        ),
        case(
            "unicast NS to the router MAC for a port of network B: not answered, not routed",
            ns_frame(RA_MAC, VM6, DST6, DST6),
            PassPath::Nd,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        case(
            "unicast NS to the router MAC for its interface on network B: not answered",
            ns_frame(RA_MAC, VM6, GW6_B, GW6_B),
            PassPath::Nd,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        case(
            "NS to the router's address on A for a port of network B: not answered",
            ns_frame(RA_MAC, VM6, GW6_A, DST6),
            PassPath::Nd,
            D(DropReason::RouterNeighUnanswered),
            None,
        ),
        case(
            "unicast NS to the router MAC for a peer on A (to its address): answered",
            ns_frame(RA_MAC, VM6, PEER6, PEER6),
            PassPath::Nd,
            P(PassPath::NdResponder),
            Some(na_frame(PEER_MAC, NA_S | NA_O, PEER6, VM6)),
        ),
        case(
            "NS (solicited-node) for a port of network B: not answered, flooded in A",
            ns_frame(snm(DST6), VM6, solicited_node(DST6), DST6),
            PassPath::Nd,
            P(PassPath::Flood),
            None,
        ),
        case(
            "NS (solicited-node) for the router's interface on network B: flooded in A",
            ns_frame(snm(GW6_B), VM6, solicited_node(GW6_B), GW6_B),
            PassPath::Nd,
            P(PassPath::Flood),
            None,
        ),
        case(
            "NS for an unknown IPv6: not answered, flooded",
            ns_frame(snm(UNKNOWN6), VM6, solicited_node(UNKNOWN6), UNKNOWN6),
            PassPath::Nd,
            P(PassPath::Flood),
            None,
        ),
        case(
            "DAD (NS from ::) for the VM's own IPv6: not answered, flooded",
            eth(
                snm(VM6),
                VM_MAC,
                ETH_P_IPV6,
                &ipv6(
                    ZERO6,
                    solicited_node(VM6),
                    IPPROTO_ICMPV6,
                    255,
                    &with_icmpv6_checksum(ZERO6, solicited_node(VM6), &ns(VM6, &[])),
                ),
            ),
            PassPath::Ipv6Unspecified,
            P(PassPath::Flood),
            None,
        ),
        case(
            "NS without SLLA: not answered (reply would change the length), flooded",
            eth(
                snm(PEER6),
                VM_MAC,
                ETH_P_IPV6,
                &ipv6(
                    VM6,
                    solicited_node(PEER6),
                    IPPROTO_ICMPV6,
                    255,
                    &with_icmpv6_checksum(VM6, solicited_node(PEER6), &ns(PEER6, &[])),
                ),
            ),
            PassPath::Nd,
            P(PassPath::Flood),
            None,
        ),
        case(
            "NS to a multicast group other than the target's: not answered, flooded",
            ns_frame(snm(UNKNOWN6), VM6, solicited_node(UNKNOWN6), PEER6),
            PassPath::Nd,
            P(PassPath::Flood),
            None,
        ),
        // --- L3: routed
        case(
            "IPv4 routed to a port on network B: MACs rewritten, TTL-1, checksum",
            v4_udp(64, DST4),
            PassPath::Ipv4,
            P(PassPath::Routed),
            Some(routed(&eth(
                RA_MAC,
                VM_MAC,
                ETH_P_IP,
                &ipv4_ttl(63, VM4, DST4, IPPROTO_UDP, &udp(40000, 5001, b"routed")),
            ))),
        ),
        case(
            "IPv4 routed with TTL 2: leaves with TTL 1",
            v4_udp(2, DST4),
            PassPath::Ipv4,
            P(PassPath::Routed),
            Some(routed(&eth(
                RA_MAC,
                VM_MAC,
                ETH_P_IP,
                &ipv4_ttl(1, VM4, DST4, IPPROTO_UDP, &udp(40000, 5001, b"routed")),
            ))),
        ),
        case(
            "IPv6 routed to a port on network B: MACs rewritten, hop limit-1",
            v6_udp(64, DST6),
            PassPath::Ipv6,
            P(PassPath::Routed),
            Some(routed(&v6_udp(63, DST6))),
        ),
        case(
            "IPv4 TTL 1",
            v4_udp(1, DST4),
            PassPath::Ipv4,
            D(DropReason::TtlExceeded),
            None,
        ),
        case(
            "IPv4 TTL 0",
            v4_udp(0, DST4),
            PassPath::Ipv4,
            D(DropReason::TtlExceeded),
            None,
        ),
        case(
            "IPv6 hop limit 1",
            v6_udp(1, DST6),
            PassPath::Ipv6,
            D(DropReason::TtlExceeded),
            None,
        ),
        case(
            "IPv4 no route",
            v4_udp(64, NOROUTE4),
            PassPath::Ipv4,
            D(DropReason::NoRoute),
            None,
        ),
        case(
            "IPv6 no route",
            v6_udp(64, NOROUTE6),
            PassPath::Ipv6,
            D(DropReason::NoRoute),
            None,
        ),
        case(
            "IPv6 to a link-local address via the router: no route",
            v6_udp(64, dragonflow_common::addr::link_local_from_mac(PEER_MAC)),
            PassPath::Ipv6,
            D(DropReason::NoRoute),
            None,
        ),
        case(
            "IPv4 no neighbour",
            v4_udp(64, NONEIGH4),
            PassPath::Ipv4,
            D(DropReason::NoNeighbor),
            None,
        ),
        case(
            "IPv6 no neighbour",
            v6_udp(64, NONEIGH6),
            PassPath::Ipv6,
            D(DropReason::NoNeighbor),
            None,
        ),
        // --- L3: to the router itself
        case(
            "ping the router interface IP",
            ping4(64, GW4_A),
            PassPath::Ipv4,
            P(PassPath::RouterEcho),
            Some(pong4(GW4_A)),
        ),
        case(
            "ping the router's interface on the other network",
            ping4(64, GW4_B),
            PassPath::Ipv4,
            P(PassPath::RouterEcho),
            Some(pong4(GW4_B)),
        ),
        case(
            "ping the router with TTL 1: answered (for the router itself)",
            ping4(1, GW4_A),
            PassPath::Ipv4,
            P(PassPath::RouterEcho),
            Some(pong4(GW4_A)),
        ),
        case(
            "ping6 the router interface IPv6",
            ping6(64, GW6_A),
            PassPath::Ipv6,
            P(PassPath::RouterEcho),
            Some(pong6(GW6_A)),
        ),
        case(
            "ping6 the router's interface on the other network",
            ping6(255, GW6_B),
            PassPath::Ipv6,
            P(PassPath::RouterEcho),
            Some(pong6(GW6_B)),
        ),
        case(
            "UDP to the router interface IP: no service",
            v4_udp(64, GW4_A),
            PassPath::Ipv4,
            D(DropReason::NoRoute),
            None,
        ),
        case(
            "UDP to the router interface IPv6: no service",
            v6_udp(64, GW6_A),
            PassPath::Ipv6,
            D(DropReason::NoRoute),
            None,
        ),
        case(
            "fragmented echo to the router: not answered",
            eth(
                RA_MAC,
                VM_MAC,
                ETH_P_IP,
                &ipv4_with(
                    &V4 {
                        frag: 0x2000,
                        ..V4::default()
                    },
                    VM4,
                    GW4_A,
                    IPPROTO_ICMP,
                    &icmp_echo_msg(8, 1, 1, &[0x55; 32]),
                ),
            ),
            PassPath::Ipv4,
            D(DropReason::NoRoute),
            None,
        ),
    ]
}

fn slot(s: Stat) -> usize {
    verdict::slot(Direction::FromVm, s)
}

fn is_responder(e: Expect) -> bool {
    matches!(
        e,
        Expect::Pass(PassPath::ArpResponder | PassPath::NdResponder)
    )
}

/// The TC action of an outcome in these fixtures.
fn tc_action(e: Expect) -> u32 {
    match e {
        // Replies go back out of the ingress tap, routed frames into the destination tap.
        Expect::Pass(
            PassPath::ArpResponder
            | PassPath::NdResponder
            | PassPath::RouterEcho
            | PassPath::Routed,
        ) => actions::TC_ACT_REDIRECT,
        // Flooding sends clones and drops the original.
        Expect::Pass(PassPath::Flood) | Expect::Drop(_) => actions::TC_ACT_SHOT,
        Expect::Pass(p) => panic!("no action for {p:?} in this table"),
    }
}

/// Runs `hook`'s program once: (action, output, counters that moved).
fn run(dp: &Datapath, hook: Hook, frame: &[u8]) -> (u32, Vec<u8>, Vec<(usize, u64)>) {
    let o = verdict::run(dp, hook, frame);
    (o.action, o.out, o.moved)
}

fn check(dp: &mut Datapath, hook: Hook, c: &Case) {
    let ctx = format!("[{}] {}", hook.as_str(), c.name);
    seed(dp);
    let outcome = match c.expect {
        Expect::Pass(p) => Stat::Pass(p),
        Expect::Drop(r) => Stat::Drop(r),
    };
    let mut want_moved = vec![(slot(Stat::Pass(c.allowed)), 1), (slot(outcome), 1)];
    want_moved.sort();
    let want_out = c.out.clone().unwrap_or_else(|| c.frame.clone());

    let group = c.frame[0] & 1 == 1;
    let (action, out, moved) = if hook == Hook::Xdp && group && is_responder(c.expect) {
        // Answered by XDP itself.
        let (a, out, moved) = run(dp, Hook::Xdp, &c.frame);
        assert_eq!(a, actions::XDP_TX, "{ctx}: XDP_TX expected");
        (actions::TC_ACT_REDIRECT, out, moved)
    } else {
        if hook == Hook::Xdp {
            let (a, out, moved) = run(dp, Hook::Xdp, &c.frame);
            assert_eq!(
                (a, moved.as_slice()),
                (actions::XDP_PASS, &[][..]),
                "{ctx}: XDP must hand the frame off (XDP_PASS) uncounted"
            );
            assert_eq!(out, c.frame, "{ctx}: XDP hands off the frame untouched");
        }
        run(dp, Hook::Tc, &c.frame)
    };
    assert_eq!(
        (action, &moved),
        (tc_action(c.expect), &want_moved),
        "{ctx}: expected {:?} after {:?}; got action {action} and slots {moved:?}",
        c.expect,
        c.allowed
    );
    assert_eq!(
        out,
        want_out,
        "{ctx}: output frame\n got  {}\n want {}",
        hex(&out),
        hex(&want_out)
    );
    if c.out.is_some() {
        verify_checksums(&ctx, &out);
    }
}

/// Independent checksum verification of a rewritten frame: the IPv4 header sum, the
/// ICMP sum, and the ICMPv6 sum over the pseudo-header.
fn verify_checksums(ctx: &str, f: &[u8]) {
    let proto = u16::from_be_bytes([f[12], f[13]]);
    match proto {
        ETH_P_IP => {
            let ihl = usize::from(f[14] & 0x0f) * 4;
            assert_eq!(checksum(&f[14..14 + ihl]), 0, "{ctx}: IPv4 header checksum");
            let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
            if f[14 + 9] == IPPROTO_ICMP {
                assert_eq!(checksum(&f[14 + ihl..14 + tot]), 0, "{ctx}: ICMP checksum");
            }
        }
        ETH_P_IPV6 if f[14 + 6] == IPPROTO_ICMPV6 => {
            let plen = usize::from(u16::from_be_bytes([f[18], f[19]]));
            let src: [u8; 16] = f[22..38].try_into().unwrap();
            let dst: [u8; 16] = f[38..54].try_into().unwrap();
            let msg = &f[54..54 + plen];
            assert_eq!(
                icmpv6_checksum(src, dst, msg),
                u16::from_be_bytes([msg[2], msg[3]]),
                "{ctx}: ICMPv6 checksum"
            );
        }
        _ => {}
    }
}

#[test]
fn responder_and_l3_both_hooks() {
    let mut dp = Datapath::load();
    let cases = cases();
    for hook in Hook::BOTH {
        let mut covered = Coverage::new();
        for c in &cases {
            check(&mut dp, hook, c);
            covered.record(match c.expect {
                Expect::Pass(p) => Stat::Pass(p),
                Expect::Drop(r) => Stat::Drop(r),
            });
        }
        covered.assert_covers(hook, covered_by("verdicts_l3"));
    }
}

/// XDP answers ARP/NS (XDP_TX) only out of a tap in the devmap, where XDP frames are
/// delivered (tun); from any other tap (a veth, whose peer needs NAPI for an XDP_TX) it
/// hands the request, untouched and uncounted, to the TC companion, which answers it.
#[test]
fn responder_needs_xdp_target() {
    let mut dp = Datapath::load();
    seed(&mut dp);
    dp.remove_devmap(IF);
    for frame in [
        arp_frame(BROADCAST, 1, VM_MAC, VM4, [0; 6], PEER4),
        ns_frame(
            ipv6_mcast_mac(solicited_node(PEER6)),
            VM6,
            solicited_node(PEER6),
            PEER6,
        ),
    ] {
        let (action, out, moved) = run(&dp, Hook::Xdp, &frame);
        assert_eq!(
            (action, moved.as_slice()),
            (actions::XDP_PASS, &[][..]),
            "[xdp] handed off, uncounted"
        );
        assert_eq!(out, frame, "[xdp] untouched");
        let (action, out, _) = run(&dp, Hook::Tc, &frame);
        assert_eq!(action, actions::TC_ACT_REDIRECT, "[tc] answered");
        assert_ne!(out, frame, "[tc] rewritten into the answer");
    }
}

/// Without `CFG_F_FORWARDING` nothing is answered or routed: frames go up the stack
/// untouched, as before the forwarding stage.
#[test]
fn forwarding_off_neither_answers_nor_routes() {
    let mut dp = Datapath::load();
    for hook in Hook::BOTH {
        seed(&mut dp);
        dp.set_config(ChassisConfig::default());
        for frame in [
            arp_frame(BROADCAST, 1, VM_MAC, VM4, [0; 6], PEER4),
            v4_udp(64, DST4),
            ping4(64, GW4_A),
        ] {
            let (action, out, _) = run(&dp, hook, &frame);
            let pass = match hook {
                Hook::Xdp => actions::XDP_PASS,
                Hook::Tc => actions::TC_ACT_OK,
            };
            assert_eq!(action, pass, "[{}]", hook.as_str());
            assert_eq!(out, frame, "[{}] untouched", hook.as_str());
        }
    }
}
