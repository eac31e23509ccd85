//! ICMPv6 from a VM (docs/THREATS.md, "What a VM may try", rows 5, 6): the message sanity
//! of `parse::nd` (router advertisements and redirects dropped wherever they hide, ND in
//! fragments dropped, link-layer options checked), NS/NA targets an allowed pair, DAD and
//! MLD reports from `::` allowed for the port's own addresses/MAC, and unsolicited NAs for
//! watched addresses reported as GARP events.

use dragonflow_common::{
    addr::{ADDR_F_WATCH, AddrKey, FAMILY_V6},
    event::GARP_OP_ND_NA,
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, u8_at},
    parse::{
        Eth, ip6_is_unspecified,
        ipv6::Chain,
        mac_eq,
        nd::{
            MLD_REPORT, MLD2_REPORT, NA_F_SOLICITED, ND_MSG_LEN, ND_NEIGHBOR_ADVERT,
            ND_NEIGHBOR_SOLICIT, ND_OPT_SOURCE_LL, ND_OPT_TARGET_LL, ND_ROUTER_SOLICIT,
            icmpv6_type, lla_options, nd_msg,
        },
    },
    portsec::port::{PortCache, check_src, lookup_pair},
};

#[inline(always)]
pub(super) fn icmpv6(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    key: &AddrKey,
    hop_limit: u8,
    chain: &Chain,
    l3_end: usize,
) -> Result<PassPath, DropReason> {
    let l4 = chain.off;
    match icmpv6_type(pkt, l4, chain.fragmented, l3_end)? {
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
        port.raise_garp(FAMILY_V6, target.ip, eth.src, GARP_OP_ND_NA);
    }
    Ok(PassPath::Nd)
}
