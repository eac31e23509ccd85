//! Ground layer: header parsing. This file holds the Ethernet header, the protocol
//! constants of every stage and the small L4 checks; `ipv4`, `ipv6`, `arp` and `nd` hold
//! what no sender may put on the wire, whoever vouches for its source (port security adds
//! the source checks, the tunnel program uses them alone); `l3` the IP header facts the
//! security-group stage judges by.
//!
//! May import: `ctx` and `dragonflow_common`. This file imports none of its submodules,
//! and the submodules import each other one way only (`ipv6` uses `nd`, `l3` uses `ipv6`).
//! Row numbers cite docs/THREATS.md, "What a VM may try".

use dragonflow_common::verdict::DropReason;

use crate::ctx::{Pkt, be16_at, load};

pub(crate) mod arp;
pub(crate) mod ipv4;
pub(crate) mod ipv6;
pub(crate) mod l3;
pub(crate) mod nd;

pub(crate) const ETH_HLEN: usize = 14;

pub(crate) const ETH_P_IP: u16 = 0x0800;
pub(crate) const ETH_P_ARP: u16 = 0x0806;
pub(crate) const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q (also priority-tagged frames, VID 0).
pub(crate) const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad service tag (QinQ outer).
pub(crate) const ETH_P_8021AD: u16 = 0x88a8;
/// Pre-standard QinQ outer tag.
pub(crate) const ETH_P_QINQ_9100: u16 = 0x9100;

pub(crate) const IPPROTO_ICMP: u8 = 1;
pub(crate) const IPPROTO_TCP: u8 = 6;
pub(crate) const IPPROTO_UDP: u8 = 17;
pub(crate) const IPPROTO_ICMPV6: u8 = 58;

pub(crate) const IPV4_HLEN: usize = 20;
pub(crate) const IPV6_HLEN: usize = 40;
pub(crate) const TCP_HLEN: usize = 20;
pub(crate) const UDP_HLEN: usize = 8;
pub(crate) const ICMP_HLEN: usize = 8;

/// Upper bound of any header offset we read. Legitimate chains are far shorter; the bound
/// keeps packet offsets provably small for the verifier (it gives up on ranges beyond
/// 64 KiB) and matches what the TC hook pulls into the linear area.
pub(crate) const MAX_HDR_OFF: usize = 512;

/// The Ethernet header fields the pipeline uses.
#[derive(Clone, Copy, Default)]
pub(crate) struct Eth {
    /// Destination MAC (the forwarding stage's key).
    pub dst: [u8; 6],
    /// The destination MAC as loaded (bytes 0..4 and 4..6, memory order), for L2 keys.
    pub dst_w: (u32, u16),
    pub src: [u8; 6],
    /// The source MAC as loaded: bytes 0..4 and 4..6 in memory order (for building map
    /// keys with word stores on the fast path).
    pub src_w: (u32, u16),
    /// Host order.
    pub proto: u16,
}

/// Parses the Ethernet header: untagged IPv4, IPv6 and ARP only (rows 9, 12, 13).
#[inline(always)]
pub(crate) fn eth(pkt: &Pkt) -> Result<Eth, DropReason> {
    let eth = eth_any(pkt)?;
    check_proto(eth.proto)?;
    Ok(eth)
}

/// The Ethernet header, whatever its ethertype (frames of ports without port security).
#[inline(always)]
pub(crate) fn eth_any(pkt: &Pkt) -> Result<Eth, DropReason> {
    let h = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
    let src_w = (load::<u32, ETH_HLEN>(h, 6), load::<u16, ETH_HLEN>(h, 10));
    let [a, b, c, d] = src_w.0.to_ne_bytes();
    let [e, f] = src_w.1.to_ne_bytes();
    let dst_w = (load::<u32, ETH_HLEN>(h, 0), load::<u16, ETH_HLEN>(h, 4));
    let [g, i, j, k] = dst_w.0.to_ne_bytes();
    let [l, m] = dst_w.1.to_ne_bytes();
    Ok(Eth {
        dst: [g, i, j, k, l, m],
        dst_w,
        src: [a, b, c, d, e, f],
        src_w,
        proto: be16_at(h, 12),
    })
}

/// Untagged IPv4, IPv6 and ARP only (rows 9, 12, 13).
#[inline(always)]
pub(crate) fn check_proto(proto: u16) -> Result<(), DropReason> {
    match proto {
        ETH_P_IP | ETH_P_IPV6 | ETH_P_ARP => Ok(()),
        ETH_P_8021Q | ETH_P_8021AD | ETH_P_QINQ_9100 => Err(DropReason::VlanTagged),
        _ => Err(DropReason::BadEthertype),
    }
}

/// Broadcast or multicast (the group bit of the first octet).
#[inline(always)]
pub(crate) const fn is_group(mac: &[u8; 6]) -> bool {
    mac[0] & 1 != 0
}

/// MAC equality without a `bcmp` call (BPF has no libc).
#[inline(always)]
pub(crate) fn mac_eq(a: &[u8; 6], b: &[u8; 6]) -> bool {
    (a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3]) | (a[4] ^ b[4]) | (a[5] ^ b[5])
        == 0
}

#[inline(always)]
pub(crate) fn ip6_is_unspecified(a: &[u8; 16]) -> bool {
    let mut d = 0u8;
    let mut i = 0;
    while i < 16 {
        d |= a[i];
        i += 1;
    }
    d == 0
}

/// The TCP header at `l4` is complete (doff >= 5, all of it before `l3_end`).
#[inline(always)]
pub(crate) fn tcp_ok(
    pkt: &Pkt,
    l4: usize,
    l3_end: usize,
    err: DropReason,
) -> Result<(), DropReason> {
    let t = pkt.bytes::<TCP_HLEN>(l4).ok_or(err)?;
    let doff = (crate::ctx::u8_at(t, 12) >> 4) as usize * 4;
    if doff < TCP_HLEN || l4 + doff > l3_end {
        return Err(err);
    }
    Ok(())
}

/// The UDP header at `l4`, complete before `l3_end`: (source port, destination port).
#[inline(always)]
pub(crate) fn udp_ports(
    pkt: &Pkt,
    l4: usize,
    l3_end: usize,
    err: DropReason,
) -> Result<(u16, u16), DropReason> {
    let u = pkt.bytes::<UDP_HLEN>(l4).ok_or(err)?;
    if l4 + UDP_HLEN > l3_end {
        return Err(err);
    }
    Ok((be16_at(u, 0), be16_at(u, 2)))
}

/// An ICMP/ICMPv6 header of `ICMP_HLEN`/4 bytes at `l4`, complete before `l3_end`.
#[inline(always)]
pub(crate) fn icmp_ok(
    pkt: &Pkt,
    l4: usize,
    l3_end: usize,
    err: DropReason,
) -> Result<(), DropReason> {
    if pkt.bytes::<ICMP_HLEN>(l4).is_none() || l4 + ICMP_HLEN > l3_end {
        return Err(err);
    }
    Ok(())
}

/// Folds a 64-bit one's complement sum to 16 bits (not complemented).
#[inline(always)]
pub(crate) fn csum_fold(sum: u64) -> u16 {
    let mut s = (sum & 0xffff_ffff) + (sum >> 32);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3 incremental update of an Internet checksum when one 16-bit word of the
/// covered data changes from `old` to `new`: `HC' = ~(~HC + ~m + m')`. Byte-order neutral:
/// pass the checksum and both words as loaded from the packet (memory order) and store the
/// result the same way.
#[inline(always)]
pub(crate) fn csum_replace2(csum: u16, old: u16, new: u16) -> u16 {
    !csum_fold(u64::from(!csum) + u64::from(!old) + u64::from(new))
}
