//! Distributed L3 routing (issue 3 item 3), on the sender's chassis: a frame sent to a
//! router interface MAC (the caller found `DEST_ROUTER` with `router_id`) is routed here
//! and handed back for L2 delivery on the destination network.
//!
//! Order of the checks (as a Linux router: route lookup, then local delivery, then the
//! forwarding checks), two lookups on the routed path:
//! 1. `df_routes_v1` LPM (router_id, family, destination) → the connected subnet's
//!    network and the router's MAC on it; miss → `NoRoute`;
//! 2. `df_neigh_v1` (that network, destination) → the destination's MAC;
//! 3. the destination is a router interface IP (`NEIGH_F_ROUTER`, of any interface of
//!    this router): ICMP/ICMPv6 echo requests are answered in place (`RouterEcho`, even
//!    with TTL 1, as a router answers a ping to itself); anything else addressed to the
//!    router is dropped as `NoRoute` (there is no local stack behind a distributed
//!    router: no TCP/UDP services, no fragmented echo);
//! 4. TTL / hop limit ≤ 1 → `TtlExceeded` (dropped and counted; no ICMP time exceeded
//!    is generated, so traceroute shows `*` for the router hop);
//! 5. no neighbour → `NoNeighbor` (no port of the destination network has that IP;
//!    there is no ARP/ND resolution by the router: the agent knows every port);
//! 6. rewrite: source MAC = the router's MAC on the destination network, destination MAC
//!    = the neighbour's, TTL − 1 with an RFC 1624 incremental IPv4 header checksum update
//!    (IPv6: hop limit − 1, no header checksum). L4 checksums are untouched (no address
//!    changes).
//!
//! A destination that is a shared allowed-address-pair IP (`NEIGH_F_SHARED`, the broadcast
//! way) has no one MAC: the packet is rewritten the same way but returned as
//! [`L3Out::Group`], and the group program sends one copy to each holder with that
//! holder's MAC as destination (`group`).
//!
//! Unicast ARP requests and NS sent to the router MAC (a VM refreshing its gateway's entry:
//! Linux's PROBE state, NUD) reach this stage rather than the responder, which the
//! forwarding stage consults for group destinations only. They are answered here through
//! `responder::respond` on the network the request arrived on, `net_id`
//! (`ArpResponder` / `NdResponder`, as a reply); left unanswered, the VM's entry for its
//! gateway would fail every few minutes and drop traffic until the next broadcast
//! resolution. Only that network's addresses are answered, as for a broadcast request:
//! an address of another network — a port there, or the router's own interface there — is
//! not, since ARP and ND are link-local (issue 10: a unicast ARP to the router MAC on
//! network A for a port of network B was answered with that port's MAC). Whatever ARP or
//! ND the router MAC does not answer (another network's address, an ARP reply, an NA, a
//! solicitation of a shape not answered in place) is dropped as
//! `router_neigh_unanswered`: never routed (a routed NS would be an ND message in another
//! network) and never flooded.
//!
//! Destinations outside every connected subnet of the router (including IPv6 link-local
//! and multicast) have no route: the router has no default route in this issue.

use aya_ebpf::maps::lpm_trie::Key;
use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        NEIGH_F_ROUTER, NEIGH_F_SHARED, NeighKey, NeighValue, ROUTE_FIXED_BITS, RouteDest, RouteKey,
    },
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, be16_at, ip6_bytes, load, load_ip6, store, store_ip6, store_mac, u8_at},
    fwd::responder::{self, Asked},
    maps::{NEIGH, ROUTES},
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Eth, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6,
        IPV4_HLEN, IPV6_HLEN, csum_replace2,
    },
};

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// Neighbour discovery: router solicitation (133) to redirect (137).
const ND_FIRST: u8 = 133;
const ND_LAST: u8 = 137;
/// TTL / hop limit of the router's own replies (Linux's default).
const REPLY_TTL: u8 = 64;

/// What routing made of a frame sent to a router MAC.
#[derive(Clone, Copy)]
pub(crate) enum L3Out {
    /// Rewritten (MACs, TTL, checksum): deliver by L2 lookup of (net_id, dst_mac).
    Deliver { net_id: u32, dst_mac: [u8; 6] },
    /// Rewritten (source MAC, TTL, checksum) for a shared IP on `net_id`: one copy to
    /// each of its holders, with the holder's MAC as destination (`group::BY_DST_IP`).
    Group { net_id: u32 },
    /// Rewritten into a reply to the sender (echo to a router interface): send back out
    /// of the ingress tap.
    Reply(PassPath),
}

/// Routes a frame sent to the MAC of router `router_id` on network `net_id` (the frame's;
/// see the module docs).
#[inline(always)]
pub(crate) fn route(
    pkt: &Pkt,
    eth: &Eth,
    router_id: u32,
    net_id: u32,
) -> Result<L3Out, DropReason> {
    match eth.proto {
        ETH_P_IP => route_v4(pkt, eth, router_id),
        ETH_P_IPV6 => route_v6(pkt, eth, router_id, net_id),
        // ARP to the router MAC: only ever answered, on the network it came from.
        ETH_P_ARP => answer(pkt, eth, net_id),
        _ => Err(DropReason::NoRoute),
    }
}

/// ARP / ND sent to the router MAC on `net_id`: the responder's answer for an address of
/// that network, as a reply; anything else is dropped (see the module docs).
#[inline(always)]
fn answer(pkt: &Pkt, eth: &Eth, net_id: u32) -> Result<L3Out, DropReason> {
    match responder::respond(pkt, eth, net_id) {
        Asked::Answered(path) => Ok(L3Out::Reply(path)),
        // A shared IP asked of the router's MAC: not the router's to answer.
        Asked::Holders | Asked::No => Err(DropReason::RouterNeighUnanswered),
    }
}

/// LPM over the router's connected subnets, then the neighbour on the subnet's network.
#[inline(always)]
fn lookup(
    router_id: u32,
    family: u8,
    ip: [u8; 16],
) -> Result<(RouteDest, Option<NeighValue>), DropReason> {
    let bits = if family == FAMILY_V4 { 32 } else { 128 };
    let key = Key::new(
        ROUTE_FIXED_BITS + bits,
        RouteKey {
            router_id,
            family,
            _pad: [0; 3],
            ip,
        },
    );
    let rt = *ROUTES.get(&key).ok_or(DropReason::NoRoute)?;
    // SAFETY: a map value stays valid for the program run; copied out at once.
    let n = NEIGH
        .get_ptr(NeighKey {
            net_id: rt.net_id,
            family,
            _pad: [0; 3],
            ip,
        })
        .map(|v| unsafe { *v });
    Ok((rt, n))
}

/// Next-hop MACs: source = the router on the destination network, destination = the
/// neighbour.
#[inline(always)]
fn rewrite_eth(pkt: &Pkt, rt: &RouteDest, dst: &[u8; 6]) -> Result<(), DropReason> {
    // Verifier only: the caller parsed the Ethernet header from this very packet.
    let e = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
    store_mac(e, 0, dst);
    store_mac(e, 6, &rt.mac);
    Ok(())
}

/// Reply addressing: back to the sender, from the router MAC it sent to.
#[inline(always)]
fn swap_eth(pkt: &Pkt, eth: &Eth) -> Result<(), DropReason> {
    // Verifier only, as above.
    let e = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
    let router_mac: [u8; 6] = arr_at(e, 0);
    store_mac(e, 0, &eth.src);
    store_mac(e, 6, &router_mac);
    Ok(())
}

#[inline(always)]
fn route_v4(pkt: &Pkt, eth: &Eth, router_id: u32) -> Result<L3Out, DropReason> {
    let h = pkt
        .bytes::<IPV4_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv4Malformed)?;
    // Port security validated the header; ports without port security did not, and the
    // echo path needs the IHL.
    let vihl = u8_at(h, 0);
    if vihl >> 4 != 4 || vihl & 0x0f < 5 {
        return Err(DropReason::Ipv4Malformed);
    }
    let [d0, d1, d2, d3] = load::<u32, IPV4_HLEN>(h, 16).to_ne_bytes();
    let ip = [d0, d1, d2, d3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let (rt, n) = lookup(router_id, FAMILY_V4, ip)?;
    if let Some(n) = n
        && n.flags & NEIGH_F_ROUTER != 0
    {
        return echo_v4(pkt, eth, vihl);
    }
    let ttl_proto = load::<u16, IPV4_HLEN>(h, 8);
    let [ttl, proto] = ttl_proto.to_ne_bytes();
    if ttl <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let n = n.ok_or(DropReason::NoNeighbor)?;
    let new = u16::from_ne_bytes([ttl - 1, proto]);
    store(h, 10, csum_replace2(load(h, 10), ttl_proto, new));
    store(h, 8, new);
    rewrite_eth(pkt, &rt, &n.mac)?;
    Ok(out(rt.net_id, &n))
}

/// The routed frame's delivery: by L2 lookup of the neighbour's MAC, or, for a shared
/// IP, to its holders (the destination MAC, zero in a shared neighbour, is set per copy).
#[inline(always)]
fn out(net_id: u32, n: &NeighValue) -> L3Out {
    if n.flags & NEIGH_F_SHARED != 0 {
        L3Out::Group { net_id }
    } else {
        L3Out::Deliver {
            net_id,
            dst_mac: n.mac,
        }
    }
}

/// ICMP echo request to a router interface → echo reply, in place: addresses swapped
/// (the header checksum does not change for a swap), TTL reset, type 8 → 0 with both
/// checksums updated incrementally.
#[inline(always)]
fn echo_v4(pkt: &Pkt, eth: &Eth, vihl: u8) -> Result<L3Out, DropReason> {
    let h = pkt
        .bytes::<IPV4_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv4Malformed)?;
    // A fragmented echo cannot be answered in place (the other fragments would have to
    // be reassembled): to the router and not a plain echo → NoRoute.
    if u8_at(h, 9) != IPPROTO_ICMP || be16_at(h, 6) & 0x3fff != 0 {
        return Err(DropReason::NoRoute);
    }
    // ihl ≤ 15: a bounded offset for the verifier.
    let hlen = (vihl & 0x0f) as usize * 4;
    let l4 = ETH_HLEN + hlen;
    let i = pkt.bytes::<ICMP_HLEN>(l4).ok_or(DropReason::L4Malformed)?;
    if ETH_HLEN + (be16_at(h, 2) as usize) < l4 + ICMP_HLEN {
        return Err(DropReason::L4Malformed);
    }
    let type_code = load::<u16, ICMP_HLEN>(i, 0);
    let [ty, code] = type_code.to_ne_bytes();
    if ty != ICMP_ECHO_REQUEST || code != 0 {
        return Err(DropReason::NoRoute);
    }
    let reply = u16::from_ne_bytes([ICMP_ECHO_REPLY, 0]);
    store(i, 2, csum_replace2(load(i, 2), type_code, reply));
    store(i, 0, reply);

    let ttl_proto = load::<u16, IPV4_HLEN>(h, 8);
    let [_, proto] = ttl_proto.to_ne_bytes();
    let new = u16::from_ne_bytes([REPLY_TTL, proto]);
    store(h, 10, csum_replace2(load(h, 10), ttl_proto, new));
    store(h, 8, new);
    let (src, dst) = (load::<u32, IPV4_HLEN>(h, 12), load::<u32, IPV4_HLEN>(h, 16));
    store(h, 12, dst);
    store(h, 16, src);
    swap_eth(pkt, eth)?;
    Ok(L3Out::Reply(PassPath::RouterEcho))
}

#[inline(always)]
fn route_v6(pkt: &Pkt, eth: &Eth, router_id: u32, net_id: u32) -> Result<L3Out, DropReason> {
    let h = pkt
        .bytes::<IPV6_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv6Malformed)?;
    if u8_at(h, 0) >> 4 != 6 {
        return Err(DropReason::Ipv6Malformed);
    }
    // Neighbour discovery is link-local: answered on this network or dropped, whatever
    // its destination address, never routed (see the module docs).
    if u8_at(h, 6) == IPPROTO_ICMPV6
        && let Some(m) = pkt.bytes::<1>(ETH_HLEN + IPV6_HLEN)
        && (ND_FIRST..=ND_LAST).contains(&u8_at(m, 0))
    {
        return answer(pkt, eth, net_id);
    }
    let dst = load_ip6(h, 24);
    let (rt, n) = lookup(router_id, FAMILY_V6, ip6_bytes(dst))?;
    if let Some(n) = n
        && n.flags & NEIGH_F_ROUTER != 0
    {
        return echo_v6(pkt, eth, dst);
    }
    let hop = u8_at(h, 7);
    if hop <= 1 {
        return Err(DropReason::TtlExceeded);
    }
    let n = n.ok_or(DropReason::NoNeighbor)?;
    store(h, 7, hop - 1);
    rewrite_eth(pkt, &rt, &n.mac)?;
    Ok(out(rt.net_id, &n))
}

/// ICMPv6 echo request to a router interface → echo reply, in place. The ICMPv6 checksum
/// covers the pseudo-header, whose sum a swap of source and destination does not change;
/// only the type word changes (128 → 129). Echo behind extension headers is not
/// answered (`NoRoute`).
#[inline(always)]
fn echo_v6(pkt: &Pkt, eth: &Eth, dst: [u32; 4]) -> Result<L3Out, DropReason> {
    let h = pkt
        .bytes::<IPV6_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv6Malformed)?;
    if u8_at(h, 6) != IPPROTO_ICMPV6 {
        return Err(DropReason::NoRoute);
    }
    let l4 = ETH_HLEN + IPV6_HLEN;
    let i = pkt.bytes::<ICMP_HLEN>(l4).ok_or(DropReason::L4Malformed)?;
    if (be16_at(h, 4) as usize) < ICMP_HLEN {
        return Err(DropReason::L4Malformed);
    }
    let type_code = load::<u16, ICMP_HLEN>(i, 0);
    let [ty, code] = type_code.to_ne_bytes();
    if ty != ICMPV6_ECHO_REQUEST || code != 0 {
        return Err(DropReason::NoRoute);
    }
    let reply = u16::from_ne_bytes([ICMPV6_ECHO_REPLY, 0]);
    store(i, 2, csum_replace2(load(i, 2), type_code, reply));
    store(i, 0, reply);
    store(h, 7, REPLY_TTL);
    let src = load_ip6(h, 8);
    store_ip6(h, 8, dst);
    store_ip6(h, 24, src);
    swap_eth(pkt, eth)?;
    Ok(L3Out::Reply(PassPath::RouterEcho))
}
