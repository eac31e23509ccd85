//! ARP and IPv6 ND responder (issue 3 item 2): requests for addresses the network knows
//! (`df_neigh_v1`: port fixed IPs, single-owner AAPs, router interface IPs) are answered
//! on this chassis by rewriting the request in place into the reply; the caller sends it
//! back out of the ingress tap (XDP_TX / TC redirect to the tap's egress). The request
//! never reaches the target.
//!
//! Runs after port security, so the requester's (sha, spa) / (source, SLLA) are its own.
//! Not answered (`Ok(None)`, forwarded normally, so the real owner still sees them):
//! - gratuitous ARP (spa == tpa): an announcement, not a question (the GARP event was
//!   raised by `portsec::arp`);
//! - requests whose answer would be the requester's own MAC: a VM probing or asking for
//!   its own address must not be told that someone owns it (RFC 5227 probes from the
//!   owner itself, at every boot);
//! - IPv6 DAD (NS from `::`): the owner answers DAD to all-nodes, which we do not
//!   synthesize; the flood reaches it;
//! - NS without exactly one source link-layer option (payload ≠ 24 + 8 bytes), or with
//!   extension headers: the reply is built in place with the frame's length unchanged,
//!   and an NS with SLLA has exactly the size of an NA with TLLA. Every NS a Linux,
//!   Windows or BSD host sends for address resolution or NUD carries the SLLA (RFC 4861
//!   §4.3 "MUST be included" on multicast; unicast NUD from Linux includes it too), so
//!   this is rare;
//! - NS to a destination that is neither the target nor its solicited-node group.
//!
//! ARP probes (spa 0.0.0.0) for an address another port owns ARE answered: that is what
//! the owner does (RFC 5227 §2.1.1 conflict detection) and it tells the prober the address
//! is taken. The reply then has tpa 0.0.0.0, as Linux's own reply to a probe.
//!
//! Shared allowed-address-pair IPs (`NEIGH_F_SHARED`, the broadcast way) are never
//! answered: which holder's MAC would be the answer? An ARP request (not a gratuitous one:
//! announcements are flooded, they update every client's cache) or an NS of any shape for
//! such an IP is returned as [`Asked::Holders`], and the forwarding stage delivers it,
//! unchanged, to the holders only (`group`): each holder answers for itself and no other
//! port of the network hears the question. Under the
//! detection way an IP with an active port is an ordinary `NEIGH_F_AAP` entry with the
//! active port's MAC, answered like any other.

use aya_ebpf::helpers::bpf_csum_diff;
use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{NEIGH_F_ROUTER, NEIGH_F_SHARED, NeighKey, NeighValue},
    verdict::PassPath,
};

use crate::{
    ctx::{Pkt, arr_at, be16_at, ip6_bytes, load, load_ip6, store, store_ip6, store_mac, u8_at},
    maps::NEIGH,
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, Eth, IPPROTO_ICMPV6, IPV6_HLEN,
        arp::{ARP_LEN, ARPHRD_ETHER, ARPOP_REPLY, ARPOP_REQUEST},
        csum_fold, mac_eq,
        nd::{
            NA_F_SOLICITED, ND_HOP_LIMIT, ND_MSG_LEN as NS_HLEN, ND_NEIGHBOR_ADVERT,
            ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL,
        },
    },
};

/// NS/NA + one 8-byte link-layer option.
const ND_LEN: usize = NS_HLEN + 8;
const NA_F_ROUTER: u8 = 0x80;
const NA_F_OVERRIDE: u8 = 0x20;

/// What the responder made of a frame.
#[derive(Clone, Copy)]
pub(crate) enum Asked {
    /// Rewritten in place into the reply (`ArpResponder` / `NdResponder`): send it back.
    Answered(PassPath),
    /// An ARP request / NS for a shared IP: deliver it unchanged to the IP's holders
    /// (`group::BY_TARGET`).
    Holders,
    /// Not for the responder (see the module docs): forward the frame unchanged.
    No,
}

/// Answers an ARP request or IPv6 NS for an address in `df_neigh_v1` of `net_id` by
/// rewriting the frame in place into the reply (see [`Asked`] and the module docs).
#[inline(always)]
pub(crate) fn respond(pkt: &Pkt, eth: &Eth, net_id: u32) -> Asked {
    match eth.proto {
        ETH_P_ARP => arp(pkt, eth, net_id),
        ETH_P_IPV6 => ns(pkt, eth, net_id),
        _ => Asked::No,
    }
}

/// The neighbour key of the IP an ARP request (not a gratuitous one) or an NS (any
/// shape) asks for, ethertype `proto`: how a group frame from the tunnel and the group
/// program find the holders of a shared target.
#[inline(always)]
pub(crate) fn target_key(pkt: &Pkt, proto: u16, net_id: u32) -> Option<NeighKey> {
    match proto {
        ETH_P_ARP => {
            let a = pkt.bytes::<ARP_LEN>(ETH_HLEN)?;
            let (spa, tpa) = arp_question(a)?;
            if spa == tpa {
                return None;
            }
            Some(key4(net_id, tpa))
        }
        ETH_P_IPV6 => Some(key6(net_id, ns_target(pkt)?)),
        _ => None,
    }
}

/// (spa, tpa) of an Ethernet/IPv4 ARP request, as memory-order words.
#[inline(always)]
fn arp_question(a: *const [u8; ARP_LEN]) -> Option<(u32, u32)> {
    // Port security validated the header already; re-checked because ports without port
    // security (and frames from the tunnel) reach the responder too (four compares).
    if be16_at(a, 0) != ARPHRD_ETHER
        || be16_at(a, 2) != ETH_P_IP
        || u8_at(a, 4) != 6
        || u8_at(a, 5) != 4
        || be16_at(a, 6) != ARPOP_REQUEST
    {
        return None;
    }
    Some((load::<u32, ARP_LEN>(a, 14), load::<u32, ARP_LEN>(a, 24)))
}

/// The target of an NS without extension headers (any shape after the target).
#[inline(always)]
fn ns_target(pkt: &Pkt) -> Option<[u32; 4]> {
    let h = pkt.bytes::<IPV6_HLEN>(ETH_HLEN)?;
    let m = pkt.bytes::<NS_HLEN>(ETH_HLEN + IPV6_HLEN)?;
    if u8_at(h, 6) != IPPROTO_ICMPV6 || u8_at(m, 0) != ND_NEIGHBOR_SOLICIT {
        return None;
    }
    Some(load_ip6(m, 8))
}

#[inline(always)]
fn key4(net_id: u32, ip: u32) -> NeighKey {
    let [t0, t1, t2, t3] = ip.to_ne_bytes();
    NeighKey {
        net_id,
        family: FAMILY_V4,
        _pad: [0; 3],
        ip: [t0, t1, t2, t3, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    }
}

#[inline(always)]
fn key6(net_id: u32, ip: [u32; 4]) -> NeighKey {
    NeighKey {
        net_id,
        family: FAMILY_V6,
        _pad: [0; 3],
        ip: ip6_bytes(ip),
    }
}

#[inline(always)]
fn neigh(key: &NeighKey) -> Option<NeighValue> {
    // SAFETY: a map value stays valid for the program run; copied out at once.
    NEIGH.get_ptr(key).map(|v| unsafe { *v })
}

#[inline(always)]
fn arp(pkt: &Pkt, eth: &Eth, net_id: u32) -> Asked {
    let Some(a) = pkt.bytes::<ARP_LEN>(ETH_HLEN) else {
        return Asked::No;
    };
    let Some((spa, tpa)) = arp_question(a) else {
        return Asked::No;
    };
    if spa == tpa {
        return Asked::No; // gratuitous: an announcement, for everyone
    }
    let Some(n) = neigh(&key4(net_id, tpa)) else {
        return Asked::No;
    };
    if n.flags & NEIGH_F_SHARED != 0 {
        return Asked::Holders;
    }
    let sha: [u8; 6] = arr_at(a, 8);
    if mac_eq(&n.mac, &sha) {
        return Asked::No; // the requester owns the address (e.g. its own RFC 5227 probe)
    }
    let Some(e) = pkt.bytes::<ETH_HLEN>(0) else {
        return Asked::No;
    };
    store_mac(e, 0, &eth.src);
    store_mac(e, 6, &n.mac);
    store(a, 6, ARPOP_REPLY.to_be());
    store_mac(a, 8, &n.mac);
    store(a, 14, tpa);
    store_mac(a, 18, &sha);
    store(a, 24, spa);
    Asked::Answered(PassPath::ArpResponder)
}

#[inline(always)]
fn ns(pkt: &Pkt, eth: &Eth, net_id: u32) -> Asked {
    let Some(target) = ns_target(pkt) else {
        return Asked::No;
    };
    let Some(n) = neigh(&key6(net_id, target)) else {
        return Asked::No;
    };
    // Any NS for a shared IP (DAD and SLLA-less ones included) goes to its holders.
    if n.flags & NEIGH_F_SHARED != 0 {
        return Asked::Holders;
    }
    match answer_ns(pkt, eth, &target, &n) {
        Some(path) => Asked::Answered(path),
        None => Asked::No,
    }
}

/// Rewrites an NS for `target` (owned by `n.mac`) into the NA, when it has the one shape
/// answered in place (see the module docs).
#[inline(always)]
fn answer_ns(pkt: &Pkt, eth: &Eth, target: &[u32; 4], n: &NeighValue) -> Option<PassPath> {
    let h = pkt.bytes::<IPV6_HLEN>(ETH_HLEN)?;
    let m = pkt.bytes::<ND_LEN>(ETH_HLEN + IPV6_HLEN)?;
    // Only the exact NS-with-SLLA shape, without extension headers (see the module docs);
    // port security already dropped NS with a hop limit ≠ 255 or a foreign SLLA.
    if u8_at(h, 7) != ND_HOP_LIMIT
        || be16_at(h, 4) as usize != ND_LEN
        || u8_at(m, 1) != 0
        || u8_at(m, 24) != ND_OPT_SOURCE_LL
        || u8_at(m, 25) != 1
    {
        return None;
    }
    let src = load_ip6(h, 8);
    if src[0] | src[1] | src[2] | src[3] == 0 {
        return None; // DAD
    }
    if !for_target(&load_ip6(h, 24), target) {
        return None;
    }
    if mac_eq(&n.mac, &eth.src) {
        return None; // the requester owns the address
    }
    let target = *target;

    let e = pkt.bytes::<ETH_HLEN>(0)?;
    store_mac(e, 0, &eth.src);
    store_mac(e, 6, &n.mac);
    // IPv6: version 6, traffic class and flow label 0; payload length, next header and
    // hop limit (255) stay; source = the target, destination = the soliciting node.
    store(h, 0, 0x6000_0000u32.to_be());
    store_ip6(h, 8, target);
    store_ip6(h, 24, src);
    // NA: R (router interface) | S | O, the same target, TLLA = the answered MAC.
    let flags = if n.flags & NEIGH_F_ROUTER != 0 {
        NA_F_ROUTER | NA_F_SOLICITED | NA_F_OVERRIDE
    } else {
        NA_F_SOLICITED | NA_F_OVERRIDE
    };
    store(m, 0, u16::from_ne_bytes([ND_NEIGHBOR_ADVERT, 0]));
    store(m, 2, 0u16);
    store(m, 4, u32::from_ne_bytes([flags, 0, 0, 0]));
    store(m, 24, u16::from_ne_bytes([ND_OPT_TARGET_LL, 1]));
    store_mac(m, 26, &n.mac);

    // ICMPv6 checksum over the pseudo-header (source, destination, upper-layer length,
    // next header) and the message. Source and destination sit right before the message
    // in the packet, so one bpf_csum_diff over those 64 contiguous bytes covers them all
    // but the length and next-header words, added here (in memory order, like the sum).
    let span = pkt.bytes::<{ 32 + ND_LEN }>(ETH_HLEN + 8)?;
    // SAFETY: `span` is a bounds-checked packet pointer of 64 bytes (a multiple of 4, as
    // the helper requires); `from` is empty. Available to XDP and TC programs.
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            span as *mut u32,
            (32 + ND_LEN) as u32,
            0,
        )
    };
    let pseudo = u64::from(u32::from_ne_bytes([0, 0, 0, ND_LEN as u8]))
        + u64::from(u32::from_ne_bytes([0, 0, 0, IPPROTO_ICMPV6]));
    // The helper returns the 32-bit sum (never negative; a negative return would be an
    // argument error, impossible with these constant sizes).
    store(m, 2, !csum_fold(sum as u32 as u64 + pseudo));
    Some(PassPath::NdResponder)
}

/// An NS is sent to the target itself (unicast NUD) or to its solicited-node multicast
/// group ff02::1:ffXX:XXXX (RFC 4861 §7.2.2). Addresses as memory-order words.
#[inline(always)]
fn for_target(dst: &[u32; 4], target: &[u32; 4]) -> bool {
    let [_, t13, t14, t15] = target[3].to_ne_bytes();
    let unicast =
        (dst[0] ^ target[0]) | (dst[1] ^ target[1]) | (dst[2] ^ target[2]) | (dst[3] ^ target[3]);
    let solicited = (dst[0] ^ u32::from_ne_bytes([0xff, 0x02, 0, 0]))
        | dst[1]
        | (dst[2] ^ u32::from_ne_bytes([0, 0, 0, 0x01]))
        | (dst[3] ^ u32::from_ne_bytes([0xff, t13, t14, t15]));
    unicast == 0 || solicited == 0
}
