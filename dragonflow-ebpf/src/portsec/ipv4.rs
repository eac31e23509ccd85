//! IPv4 from a VM: the header sanity of `parse::ipv4` (docs/THREATS.md, "What a VM may
//! try", rows 7, 10, 11, 13), DHCPDISCOVER from 0.0.0.0 (row 2), then the source pair check
//! (rows 1, 2).

use dragonflow_common::{
    addr::FAMILY_V4,
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, load},
    parse::{
        ETH_HLEN, Eth, IPV4_HLEN, UDP_HLEN,
        ipv4::{BOOTPC, BOOTPS, header, l4},
        l3::{self, L3},
        mac_eq,
    },
    portsec::port::{PortCache, check_src, src_key},
};

/// Offset of `chaddr` in a BOOTP/DHCP message (after op, htype, hlen, hops, xid, secs,
/// flags, ciaddr, yiaddr, siaddr, giaddr).
const BOOTP_CHADDR: usize = 28;

/// `l3` receives the header facts the security-group stage needs (see `parse::l3`), when
/// it is on.
#[inline(always)]
pub(super) fn check(
    pkt: &Pkt,
    port: &mut PortCache,
    eth: &Eth,
    l3: Option<&mut L3>,
) -> Result<PassPath, DropReason> {
    let (h, hlen, tot) = header(pkt)?;
    let src = load::<u32, IPV4_HLEN>(h, 12);
    let unspecified = src == 0;
    if let Some(l3) = l3 {
        *l3 = l3::v4_facts(h, hlen, tot);
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
