//! L2: (network, destination MAC) → destination, and the MTU rule.

use dragonflow_common::fwd::{L2Dest, L2Key};

use crate::{
    ctx::{PacketCtx, Pkt, u8_at},
    maps::L2,
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN,
    },
};

/// The L2 entry of (`net_id`, MAC given as loaded words, see `parse::Eth::dst_w`). The key
/// is built with word stores: `L2Key` is three naturally aligned `u32`s.
#[inline(always)]
pub fn lookup_w(net_id: u32, mac_w: (u32, u16)) -> Option<&'static L2Dest> {
    let [a, b] = mac_w.1.to_ne_bytes();
    let words = [net_id, mac_w.0, u32::from_ne_bytes([a, b, 0, 0])];
    // SAFETY: L2Key is #[repr(C)], 12 bytes of integers and byte arrays with explicit
    // padding, alignment 4: the layout is the words above.
    let key = unsafe { core::mem::transmute::<[u32; 3], L2Key>(words) };
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    L2.get_ptr(key).map(|p| unsafe { &*p })
}

/// The L2 entry of (`net_id`, `mac`).
#[inline(always)]
pub fn lookup(net_id: u32, mac: &[u8; 6]) -> Option<&'static L2Dest> {
    // SAFETY: as above.
    L2.get_ptr(L2Key::new(net_id, *mac)).map(|p| unsafe { &*p })
}

/// The frame fits the destination network's MTU (`mtu` = payload bytes after the
/// Ethernet header; 0 = unchecked). A TC GSO super-frame is judged by the segments it
/// will become (`gso_size` + L3/L4 headers), not by its total length.
#[inline(always)]
pub fn mtu_ok<C: PacketCtx>(ctx: &C, pkt: &Pkt, proto: u16, mtu: u16) -> bool {
    if mtu == 0 {
        return true;
    }
    let gso = ctx.gso_size() as usize;
    let payload = if gso == 0 {
        pkt.len - ETH_HLEN
    } else {
        gso + l3l4_hlen(pkt, proto)
    };
    payload <= mtu as usize
}

/// L3 + L4 header bytes of a GSO frame (TCP with options, or UDP; IPv6 extension headers
/// are not counted, which errs on the side of letting the frame through: the kernel
/// segments it anyway).
#[inline(always)]
fn l3l4_hlen(pkt: &Pkt, proto: u16) -> usize {
    let (l3, next) = match proto {
        ETH_P_IP => match pkt.bytes::<IPV4_HLEN>(ETH_HLEN) {
            // IHL is 4 bits: l3 <= 60, a bound the verifier follows.
            Some(h) => ((u8_at(h, 0) & 0x0f) as usize * 4, u8_at(h, 9)),
            None => return 0,
        },
        ETH_P_IPV6 => match pkt.bytes::<IPV6_HLEN>(ETH_HLEN) {
            Some(h) => (IPV6_HLEN, u8_at(h, 6)),
            None => return 0,
        },
        _ => return 0,
    };
    let l4 = match next {
        IPPROTO_TCP => match pkt.bytes::<20>(ETH_HLEN + l3) {
            Some(t) => (u8_at(t, 12) >> 4) as usize * 4,
            None => 0,
        },
        IPPROTO_UDP => UDP_HLEN,
        _ => 0,
    };
    l3 + l4
}
