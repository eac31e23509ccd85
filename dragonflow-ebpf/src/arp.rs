//! ARP from a VM (ATTACKS 3, 4, 13): header sanity, sha = Ethernet source, probes only from
//! the port MAC, (sha, spa) an allowed pair; GARPs and replies for watched addresses raise
//! events.

use dragonflow_common::{
    addr::{ADDR_F_WATCH, AddrKey, FAMILY_V4},
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, be16_at, u8_at},
    events,
    parse::{ETH_HLEN, ETH_P_IP, Eth, mac_eq},
    portsec::{PortCache, lookup_pair},
};

/// Ethernet/IPv4 ARP: 8-byte header + sha(6) spa(4) tha(6) tpa(4).
const ARP_LEN: usize = 28;
const ARPHRD_ETHER: u16 = 1;
const ARPOP_REQUEST: u16 = 1;
const ARPOP_REPLY: u16 = 2;

#[inline(always)]
pub fn check(pkt: &Pkt, port: &mut PortCache, eth: &Eth) -> Result<PassPath, DropReason> {
    let a = sanity(pkt, eth)?;
    let op = be16_at(a, 6);
    let sha: [u8; 6] = arr_at(a, 8);
    let spa: [u8; 4] = arr_at(a, 14);
    let tpa: [u8; 4] = arr_at(a, 24);
    let spa_u32 = u32::from_ne_bytes(spa);
    if spa_u32 == 0 {
        // RFC 5227 probe: only the port itself probes.
        return if mac_eq(&eth.src, &port.secured()?.mac) {
            Ok(PassPath::Arp)
        } else {
            Err(DropReason::ArpProbeSpoof)
        };
    }
    let key = AddrKey::v4(port.ifindex(), sha, spa);
    let flags = lookup_pair(port, &key).ok_or(DropReason::ArpSpoof)?;
    if flags & ADDR_F_WATCH != 0 && (op == ARPOP_REPLY || spa_u32 == u32::from_ne_bytes(tpa)) {
        events::garp(port, FAMILY_V4, key.ip, sha, op);
    }
    Ok(PassPath::Arp)
}

/// What no sender may put on the wire, whoever vouches for its source: an Ethernet/IPv4
/// ARP request or reply, whole [13], whose sender hardware address is the Ethernet source
/// [3]. Also the whole ARP sanity of frames from the tunnel (see `ipv4::sanity`).
#[inline(always)]
pub fn sanity(pkt: &Pkt, eth: &Eth) -> Result<*const [u8; ARP_LEN], DropReason> {
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
