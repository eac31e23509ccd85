//! The Ethernet/IPv4 ARP header: what no sender may put on the wire, whoever vouches for
//! its source (docs/THREATS.md, "What a VM may try": ARP spoofing (row 3), truncation
//! (13)). Port security (`portsec::arp`) adds the pair checks; frames from the tunnel get
//! only this.

use dragonflow_common::verdict::DropReason;

use crate::{
    ctx::{Pkt, arr_at, be16_at, u8_at},
    parse::{ETH_HLEN, ETH_P_IP, Eth, mac_eq},
};

/// Ethernet/IPv4 ARP: 8-byte header + sha(6) spa(4) tha(6) tpa(4).
pub(crate) const ARP_LEN: usize = 28;
pub(crate) const ARPHRD_ETHER: u16 = 1;
pub(crate) const ARPOP_REQUEST: u16 = 1;
pub(crate) const ARPOP_REPLY: u16 = 2;

/// An Ethernet/IPv4 ARP request or reply, whole (row 13), whose sender hardware address is
/// the Ethernet source (row 3).
#[inline(always)]
pub(crate) fn sanity(pkt: &Pkt, eth: &Eth) -> Result<*const [u8; ARP_LEN], DropReason> {
    let a = pkt
        .bytes::<ARP_LEN>(ETH_HLEN)
        .ok_or(DropReason::ArpMalformed)?;
    let op = be16_at(a, 6);
    if be16_at(a, 0) != ARPHRD_ETHER
        || be16_at(a, 2) != ETH_P_IP
        || u8_at(a, 4) != 6
        || u8_at(a, 5) != 4
        || (op != ARPOP_REQUEST && op != ARPOP_REPLY)
    {
        return Err(DropReason::ArpMalformed);
    }
    if !mac_eq(&arr_at(a, 8), &eth.src) {
        return Err(DropReason::ArpShaMismatch);
    }
    Ok(a)
}
