//! IPv4 from a VM: header sanity (ATTACKS 11, 13), DHCP server replies (7), DHCPDISCOVER
//! from 0.0.0.0 (2), then the source pair check (1, 2). The sanity alone ([`sanity`]) also
//! judges frames from the tunnel.

use dragonflow_common::{
    addr::FAMILY_V4,
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, be16_at, load, u8_at},
    flow::{self, L3},
    parse::{
        ETH_HLEN, Eth, IPPROTO_ICMP, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, UDP_HLEN, icmp_ok,
        mac_eq, tcp_ok, udp_ports,
    },
    portsec::{PortCache, check_src, src_key},
};

const BOOTPS: u16 = 67;
const BOOTPC: u16 = 68;
/// Offset of `chaddr` in a BOOTP/DHCP message (after op, htype, hlen, hops, xid, secs,
/// flags, ciaddr, yiaddr, siaddr, giaddr).
const BOOTP_CHADDR: usize = 28;

/// `l3` receives the header facts the security-group stage needs (see `flow`), when it
/// is on.
#[inline(always)]
pub fn check(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    l3: Option<&mut L3>,
) -> Result<PassPath, DropReason> {
    let (h, hlen, tot) = header(pkt)?;
    let src = load::<u32, IPV4_HLEN>(h, 12);
    let unspecified = src == 0;
    if let Some(l3) = l3 {
        *l3 = flow::v4_facts(h, hlen, tot);
    }
    let ports = l4(pkt, h, hlen, tot)?;
    if unspecified {
        // (68, 67) only comes back for the UDP header of a first fragment.
        if ports == (BOOTPC, BOOTPS) {
            return dhcp_client(pkt, port, eth, ETH_HLEN + hlen + UDP_HLEN, ETH_HLEN + tot);
        }
        return Err(DropReason::DhcpClientSpoof);
    }
    check_src(
        port,
        &src_key(port.ifindex(), eth, FAMILY_V4, [src, 0, 0, 0]),
    )?;
    Ok(PassPath::Ipv4)
}

/// What no sender may put on the wire, whoever vouches for its source: the header and L4
/// sanity of [`check`] without the source checks. For frames from the tunnel, whose
/// source the tunnel program checks by other means (defence in depth: the sending chassis
/// ran [`check`] already).
#[inline(always)]
pub fn sanity(pkt: &Pkt) -> Result<(), DropReason> {
    let (h, hlen, tot) = header(pkt)?;
    l4(pkt, h, hlen, tot).map(|_| ())
}

/// The IPv4 header, sane [11, 13]: (header, header length, total length).
#[inline(always)]
fn header(pkt: &Pkt) -> Result<(*const [u8; IPV4_HLEN], usize, usize), DropReason> {
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

/// The L4 header of a first fragment, complete [13] (a first fragment too short for it is
/// the tiny-fragment attack [10]), and no DHCP server reply [7]: the UDP ports, (0, 0)
/// for anything else. Later fragments have no L4 header: judged on their L3 source alone.
#[inline(always)]
fn l4(
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
    // (RFC 1858: the TCP flags would be in the second fragment) [10].
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

/// DHCPDISCOVER/REQUEST from 0.0.0.0: only the port's own MAC, as Ethernet source and
/// as BOOTP `chaddr`.
#[inline(always)]
fn dhcp_client(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    bootp: usize,
    l3_end: usize,
) -> Result<PassPath, DropReason> {
    let port = port.secured()?;
    let c = pkt
        .bytes::<6>(bootp + BOOTP_CHADDR)
        .ok_or(DropReason::DhcpClientSpoof)?;
    let chaddr: [u8; 6] = arr_at(c, 0);
    if bootp + BOOTP_CHADDR + 6 > l3_end
        || !mac_eq(&chaddr, &port.mac)
        || !mac_eq(&eth.src, &port.mac)
    {
        return Err(DropReason::DhcpClientSpoof);
    }
    Ok(PassPath::DhcpDiscover)
}
