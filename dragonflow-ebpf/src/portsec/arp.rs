//! ARP from a VM (docs/THREATS.md, "What a VM may try", rows 3, 4, 13): the header sanity
//! of `parse::arp`, probes only from the port MAC, (sha, spa) an allowed pair; GARPs and
//! replies for watched addresses raise events.

use dragonflow_common::{
    addr::{ADDR_F_WATCH, AddrKey, FAMILY_V4},
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{Pkt, arr_at, be16_at},
    parse::{
        Eth,
        arp::{ARPOP_REPLY, sanity},
        mac_eq,
    },
    portsec::port::{PortCache, lookup_pair},
};

#[inline(always)]
pub(super) fn check(pkt: &Pkt, port: &mut PortCache, eth: &Eth) -> Result<PassPath, DropReason> {
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
        port.raise_garp(FAMILY_V4, key.ip, sha, op);
    }
    Ok(PassPath::Arp)
}
