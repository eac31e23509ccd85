//! L2: (network, destination MAC) → destination, and the MTU rule.

use dragonflow_common::fwd::{L2Dest, L2Key};

use crate::{
    ctx::{PacketCtx, Pkt, u8_at},
    maps::{DEVMAP, L2},
    parse::{
        ETH_HLEN, ETH_P_ARP, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP,
        IPPROTO_UDP, IPV4_HLEN, IPV6_HLEN, UDP_HLEN,
    },
};

/// The L2 entry of (`net_id`, MAC given as loaded words, see `parse::Eth::dst_w`). The key
/// is built with word stores: `L2Key` is three naturally aligned `u32`s.
#[inline(always)]
pub(crate) fn lookup_w(net_id: u32, mac_w: (u32, u16)) -> Option<&'static L2Dest> {
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
pub(crate) fn lookup(net_id: u32, mac: &[u8; 6]) -> Option<&'static L2Dest> {
    // SAFETY: as above.
    L2.get_ptr(L2Key::new(net_id, *mac)).map(|p| unsafe { &*p })
}

/// The frame fits the destination network's MTU (`mtu` = payload bytes after the
/// Ethernet header; 0 = unchecked). A TC GSO super-frame is judged by the segments it
/// will become (`gso_size` + L3/L4 headers), not by its total length.
#[inline(always)]
pub(crate) fn mtu_ok<C: PacketCtx>(ctx: &C, pkt: &Pkt, proto: u16, mtu: u16) -> bool {
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

/// XDP: whether XDP may finish a frame itself (a devmap redirect into the local tap
/// `to`, or XDP_TX back out of it) rather than hand it, untouched and uncounted, to its TC
/// companion. Everything else is TC's, which keeps the skb's checksum and GSO state:
///
/// - **Offloaded checksums.** A VM's virtio-net header (NEEDS_CSUM, GSO type) is not part
///   of what XDP sees: tun runs native XDP on the bare frame (`tun_build_skb`) and applies
///   the header to the skb only on XDP_PASS; veth's XDP sees a CHECKSUM_PARTIAL skb as
///   bytes. A redirect turns the frame into an `xdp_frame` without that state, so a
///   partial checksum would arrive unfinished (measured with a real guest: TCP never
///   connects, the receiver counts TcpInCsumErrors). The checksum may sit anywhere the VM
///   chose (`csum_start`: TCP, UDP, or the inner header of a VM's own tunnel), so only
///   frames that carry no offloadable checksum are finished here: ARP, ICMP, and ICMPv6
///   directly after the IPv6 header. A frame XDP cannot parse goes to TC as well.
/// - **Longer than the MTU.** tun hands GSO super-frames (and generic XDP any skb) to XDP
///   whole, and XDP cannot see `gso_size`: TC judges them by their segments
///   (`mtu_ok`) and drops real violations as `mtu_exceeded`.
/// - **Taps XDP cannot deliver to.** The agent puts into `df_devmap_v1` only taps whose
///   driver takes XDP frames from any sender (tun). A veth delivers a redirected frame or
///   an XDP_TX only when its peer runs NAPI (GRO or an XDP program inside the VM), which
///   the datapath cannot see or rely on; and a tap the agent has not filled in yet (a VM
///   booting) is reached by TC's `bpf_redirect` through its ifindex.
#[inline(always)]
pub(crate) fn xdp_finishes(pkt: &Pkt, proto: u16, mtu: u16, to: u32) -> bool {
    if mtu != 0 && pkt.len - ETH_HLEN > mtu as usize {
        return false;
    }
    let no_l4_csum = match proto {
        ETH_P_ARP => true,
        ETH_P_IP => pkt
            .bytes::<IPV4_HLEN>(ETH_HLEN)
            .is_some_and(|h| u8_at(h, 9) == IPPROTO_ICMP),
        ETH_P_IPV6 => pkt
            .bytes::<IPV6_HLEN>(ETH_HLEN)
            .is_some_and(|h| u8_at(h, 6) == IPPROTO_ICMPV6),
        _ => false,
    };
    no_l4_csum && DEVMAP.get(to).is_some()
}
