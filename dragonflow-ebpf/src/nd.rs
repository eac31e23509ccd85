//! ICMPv6 from a VM (ATTACKS 5, 6): router advertisements and redirects dropped wherever
//! they hide, ND in fragments dropped (RFC 6980), NS/NA target and link-layer options
//! checked, DAD and MLD reports from `::` allowed for the port's own addresses/MAC, and
//! unsolicited NAs for watched addresses reported as GARP events.

use dragonflow_common::{
    addr::{ADDR_F_WATCH, AddrKey, FAMILY_V6},
    event::GARP_OP_ND_NA,
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, u8_at},
    events,
    ipv6::{Chain, MAX_HDR_OFF},
    parse::{Eth, ip6_is_unspecified, mac_eq},
    portsec::{PortCache, check_src, lookup_pair},
};

const MLD_REPORT: u8 = 131;
const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
const ND_NEIGHBOR_SOLICIT: u8 = 135;
const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
const MLD2_REPORT: u8 = 143;

/// NS/NA: type, code, checksum, flags/reserved, target.
const ND_MSG_LEN: usize = 24;
const ND_OPT_SOURCE_LL: u8 = 1;
const ND_OPT_TARGET_LL: u8 = 2;
/// NA "solicited" flag (first byte after the checksum).
const NA_F_SOLICITED: u8 = 0x40;
/// Options we walk (legitimate NS/NA carry one or two: LLA, DAD nonce); a message with
/// more is dropped, so an LLA option cannot hide behind padding options.
const MAX_ND_OPTS: usize = 6;
/// ND messages are only valid with hop limit 255 (RFC 4861 §7.1): they were not routed.
const ND_HOP_LIMIT: u8 = 255;

#[inline(always)]
pub fn icmpv6(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    key: &AddrKey,
    hop_limit: u8,
    chain: &Chain,
    l3_end: usize,
) -> Result<PassPath, DropReason> {
    let l4 = chain.off;
    match icmpv6_type(pkt, chain, l3_end)? {
        ND_NEIGHBOR_SOLICIT => ns(pkt, port, eth, key, hop_limit, l4, l3_end),
        ND_NEIGHBOR_ADVERT => na(pkt, port, eth, key, hop_limit, l4, l3_end),
        // RFC 3590/4862: MLD reports (and RS, RFC 4861 §6.3.7) may come from `::` before
        // the VM has an address; only from the port's own MAC.
        MLD_REPORT | MLD2_REPORT | ND_ROUTER_SOLICIT
            if ip6_is_unspecified(&key.ip) && mac_eq(&eth.src, &port.secured()?.mac) =>
        {
            Ok(PassPath::Ipv6Unspecified)
        }
        _ => {
            check_src(port, key)?;
            Ok(PassPath::Ipv6)
        }
    }
}

/// The type of an ICMPv6 message no sender may send, whoever vouches for its source: its
/// header in bounds, no ND in a fragment (RFC 6980), no router advertisement or redirect.
/// Also the whole ICMPv6 sanity of frames from the tunnel (see `ipv6::sanity`).
#[inline(always)]
pub fn icmpv6_type(pkt: &Pkt, chain: &Chain, l3_end: usize) -> Result<u8, DropReason> {
    let l4 = chain.off;
    let err = if chain.fragmented {
        DropReason::Ipv6HeaderChain
    } else {
        DropReason::L4Malformed
    };
    let h = pkt.bytes::<4>(l4).ok_or(err)?;
    if l4 + 4 > l3_end {
        return Err(err);
    }
    let ty = u8_at(h, 0);
    if chain.fragmented && (ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&ty) {
        return Err(DropReason::Ipv6HeaderChain);
    }
    match ty {
        ND_ROUTER_ADVERT | ND_REDIRECT => Err(DropReason::RouterAdvert),
        ty => Ok(ty),
    }
}

/// The fixed part of an NS/NA (type .. target), in bounds and inside the IPv6 payload,
/// sent with hop limit 255 as RFC 4861 requires (anything less was forwarded: spoofed).
#[inline(always)]
fn nd_msg(
    pkt: &Pkt,
    hop_limit: u8,
    l4: usize,
    l3_end: usize,
) -> Result<*const [u8; ND_MSG_LEN], DropReason> {
    let m = pkt.bytes::<ND_MSG_LEN>(l4).ok_or(DropReason::L4Malformed)?;
    if l4 + ND_MSG_LEN > l3_end {
        return Err(DropReason::L4Malformed);
    }
    if hop_limit != ND_HOP_LIMIT {
        return Err(DropReason::NdSpoof);
    }
    Ok(m)
}

/// Neighbour solicitation: DAD from `::` only for a target the (port, Ethernet source)
/// owns, without SLLA (RFC 4861 §7.1.1); otherwise the source check and SLLA = Ethernet
/// source.
#[inline(always)]
fn ns(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    key: &AddrKey,
    hop_limit: u8,
    l4: usize,
    l3_end: usize,
) -> Result<PassPath, DropReason> {
    let m = nd_msg(pkt, hop_limit, l4, l3_end)?;
    if ip6_is_unspecified(&key.ip) {
        let target = AddrKey::v6(key.ifindex, eth.src, arr_at(m, 8));
        if lookup_pair(port, &target).is_none()
            || lla_options(pkt, l4 + ND_MSG_LEN, l3_end, ND_OPT_SOURCE_LL, &eth.src)?
        {
            return Err(DropReason::NdSpoof);
        }
        return Ok(PassPath::Ipv6Unspecified);
    }
    check_src(port, key)?;
    lla_options(pkt, l4 + ND_MSG_LEN, l3_end, ND_OPT_SOURCE_LL, &eth.src)?;
    Ok(PassPath::Nd)
}

/// Neighbour advertisement: the source check, then the target must be an allowed pair
/// with the Ethernet source and TLLA = Ethernet source. Unsolicited NAs for watched
/// targets raise a GARP event.
#[inline(always)]
fn na(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    key: &AddrKey,
    hop_limit: u8,
    l4: usize,
    l3_end: usize,
) -> Result<PassPath, DropReason> {
    let m = nd_msg(pkt, hop_limit, l4, l3_end)?;
    check_src(port, key)?;
    let target = AddrKey::v6(key.ifindex, eth.src, arr_at(m, 8));
    let flags = lookup_pair(port, &target).ok_or(DropReason::NdSpoof)?;
    lla_options(pkt, l4 + ND_MSG_LEN, l3_end, ND_OPT_TARGET_LL, &eth.src)?;
    if u8_at(m, 4) & NA_F_SOLICITED == 0 && flags & ADDR_F_WATCH != 0 {
        events::garp(port, FAMILY_V6, target.ip, eth.src, GARP_OP_ND_NA);
    }
    Ok(PassPath::Nd)
}

/// Walks the ND options from `off` to `l3_end`: every option of type `want` (source or
/// target link-layer address) must carry `mac`; malformed options, or more than
/// `MAX_ND_OPTS`, are a spoof attempt. Returns whether such an option was present.
#[inline(always)]
fn lla_options(
    pkt: &Pkt,
    off: usize,
    l3_end: usize,
    want: u8,
    mac: &[u8; 6],
) -> Result<bool, DropReason> {
    let err = DropReason::NdSpoof;
    let mut off = off;
    let mut present = false;
    for _ in 0..MAX_ND_OPTS {
        if off >= l3_end {
            return Ok(present);
        }
        // Verifier: bounds the option offset (see MAX_HDR_OFF).
        if off > MAX_HDR_OFF {
            return Err(err);
        }
        // Every option is a multiple of 8 bytes; an Ethernet LLA option is exactly 8.
        let o = pkt.bytes::<8>(off).ok_or(err)?;
        let len = u8_at(o, 1) as usize * 8;
        if len == 0 || off + len > l3_end {
            return Err(err);
        }
        if u8_at(o, 0) == want {
            if len != 8 || !mac_eq(&arr_at(o, 2), mac) {
                return Err(err);
            }
            present = true;
        }
        off += len;
    }
    if off >= l3_end { Ok(present) } else { Err(err) }
}
