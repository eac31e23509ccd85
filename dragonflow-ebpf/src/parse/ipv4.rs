//! The IPv4 header and the L4 header behind it: what no sender may put on the wire,
//! whoever vouches for its source (docs/THREATS.md, "What a VM may try": header tricks
//! (row 11), truncation (13), the tiny first fragment (10), rogue DHCP server (7)). Port
//! security (`portsec::ipv4`) adds the source checks; frames from the tunnel get only
//! this ([`sanity`]).

use dragonflow_common::verdict::DropReason;

use crate::{
    ctx::{Pkt, be16_at, u8_at},
    parse::{
        ETH_HLEN, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, icmp_ok, tcp_ok, udp_ports,
    },
};

pub(crate) const BOOTPS: u16 = 67;
pub(crate) const BOOTPC: u16 = 68;

/// The header and L4 sanity of `portsec::ipv4::check` without the source checks. For
/// frames from the tunnel, whose source the tunnel program checks by other means (defence
/// in depth: the sending chassis ran the full check already).
#[inline(always)]
pub(crate) fn sanity(pkt: &Pkt) -> Result<(), DropReason> {
    let (h, hlen, tot) = header(pkt)?;
    l4(pkt, h, hlen, tot).map(|_| ())
}

/// The IPv4 header, sane (rows 11, 13): (header, header length, total length).
#[inline(always)]
pub(crate) fn header(pkt: &Pkt) -> Result<(*const [u8; IPV4_HLEN], usize, usize), DropReason> {
    let h = pkt
        .bytes::<IPV4_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv4Malformed)?;
    let vihl = u8_at(h, 0);
    let hlen = (vihl & 0x0f) as usize * 4;
    let tot = be16_at(h, 2) as usize;
    if vihl >> 4 != 4 || hlen < IPV4_HLEN || tot < hlen || ETH_HLEN + tot > pkt.len {
        return Err(DropReason::Ipv4Malformed);
    }
    Ok((h, hlen, tot))
}

/// The L4 header of a first fragment, complete (row 13; a first fragment too short for it
/// is the tiny-fragment attack, row 10), and no DHCP server reply (row 7): the UDP ports,
/// (0, 0) for anything else. Later fragments have no L4 header: judged on their L3 source
/// alone.
#[inline(always)]
pub(crate) fn l4(
    pkt: &Pkt,
    h: *const [u8; IPV4_HLEN],
    hlen: usize,
    tot: usize,
) -> Result<(u16, u16), DropReason> {
    let frag = be16_at(h, 6);
    if frag & 0x1fff != 0 {
        return Ok((0, 0));
    }
    // hlen <= 60, so l4 is a bounded offset the verifier can follow.
    let l4 = ETH_HLEN + hlen;
    let l3_end = ETH_HLEN + tot;
    // A first fragment too short for its L4 header is the tiny-fragment attack
    // (RFC 1858: the TCP flags would be in the second fragment, row 10).
    let err = if frag & 0x2000 != 0 {
        DropReason::FragTiny
    } else {
        DropReason::L4Malformed
    };
    match u8_at(h, 9) {
        IPPROTO_TCP => tcp_ok(pkt, l4, l3_end, err)?,
        IPPROTO_UDP => {
            let (sport, dport) = udp_ports(pkt, l4, l3_end, err)?;
            if sport == BOOTPS && dport == BOOTPC {
                return Err(DropReason::DhcpServer);
            }
            return Ok((sport, dport));
        }
        IPPROTO_ICMP => icmp_ok(pkt, l4, l3_end, err)?,
        _ => {}
    }
    Ok((0, 0))
}
