//! The IP header facts the security-group stage judges by ([`L3`]): filled by port
//! security while it validates the header (`portsec::ipv4`, `portsec::ipv6`), or, for
//! frames whose sender has no port security (from the tunnel, from ports without it),
//! parsed and validated here ([`l3`]) as port security would.

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    verdict::DropReason,
};

use crate::{
    ctx::{Pkt, be16_at, load, u8_at},
    parse::{ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPV4_HLEN, IPV6_HLEN, ipv6},
};

/// [`L3::frag`]: not a fragment (IPv6 atomic fragments included).
pub(crate) const FRAG_NONE: u8 = 0;
/// The first fragment (offset 0, more fragments): carries the L4 header.
pub(crate) const FRAG_FIRST: u8 = 1;
/// A later fragment: no L4 header, judged by its first fragment's ports (`frag`).
pub(crate) const FRAG_LATER: u8 = 2;

/// What the IP header says: filled by port security while it validates the header, or
/// by [`l3`].
#[derive(Clone, Copy, Default)]
pub(crate) struct L3 {
    /// [`FAMILY_V4`] / [`FAMILY_V6`]; 0 = not filled (not IP, or not parsed yet).
    pub family: u8,
    /// Upper-layer protocol (after the IPv6 extension headers).
    pub proto: u8,
    /// `FRAG_*`.
    pub frag: u8,
    pub _pad: u8,
    /// Frame offset of the L4 header (meaningful unless `FRAG_LATER`; at most
    /// `parse::MAX_HDR_OFF`).
    pub l4: u16,
    /// `FRAG_LATER`: byte offset of this fragment's data in the datagram (< 64 KiB).
    pub frag_off: u16,
    /// Frame offset of the end of the IP payload.
    pub l3_end: u32,
    /// Fragments: IPv4 identification / IPv6 fragment identification, as loaded.
    pub frag_id: u32,
}

/// The IP header of a frame whose sender's port security did not parse it (frames from
/// the tunnel, from ports without port security): validated as port security would
/// (same reasons), since the receiver's rules must not judge garbage.
#[inline(always)]
pub(crate) fn l3(pkt: &Pkt, eth_proto: u16) -> Result<L3, DropReason> {
    match eth_proto {
        ETH_P_IP => l3_v4(pkt),
        ETH_P_IPV6 => l3_v6(pkt),
        _ => Ok(L3::default()),
    }
}

#[inline(always)]
fn l3_v4(pkt: &Pkt) -> Result<L3, DropReason> {
    let h = pkt
        .bytes::<IPV4_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv4Malformed)?;
    let vihl = u8_at(h, 0);
    let hlen = (vihl & 0x0f) as usize * 4;
    let tot = be16_at(h, 2) as usize;
    if vihl >> 4 != 4 || hlen < IPV4_HLEN || tot < hlen || ETH_HLEN + tot > pkt.len {
        return Err(DropReason::Ipv4Malformed);
    }
    Ok(v4_facts(h, hlen, tot))
}

/// The [`L3`] of a validated IPv4 header (`hlen` ≤ 60, `tot` ≥ `hlen`).
#[inline(always)]
pub(crate) fn v4_facts(h: *const [u8; IPV4_HLEN], hlen: usize, tot: usize) -> L3 {
    let fw = be16_at(h, 6);
    let off = (fw & 0x1fff) * 8;
    let frag = if off != 0 {
        FRAG_LATER
    } else if fw & 0x2000 != 0 {
        FRAG_FIRST
    } else {
        FRAG_NONE
    };
    L3 {
        family: FAMILY_V4,
        proto: u8_at(h, 9),
        frag,
        _pad: 0,
        l4: (ETH_HLEN + hlen) as u16,
        frag_off: off,
        l3_end: (ETH_HLEN + tot) as u32,
        frag_id: load::<u16, IPV4_HLEN>(h, 4) as u32,
    }
}

#[inline(always)]
fn l3_v6(pkt: &Pkt) -> Result<L3, DropReason> {
    let h = pkt
        .bytes::<IPV6_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv6Malformed)?;
    let l3_end = ETH_HLEN + IPV6_HLEN + be16_at(h, 4) as usize;
    if u8_at(h, 0) >> 4 != 6 || l3_end > pkt.len {
        return Err(DropReason::Ipv6Malformed);
    }
    let chain = ipv6::walk(pkt, u8_at(h, 6), l3_end)?;
    Ok(v6_facts(pkt, &chain, l3_end))
}

/// The [`L3`] of a walked IPv6 header chain (the fragment header is read again here, for
/// its M flag, offset and identification).
#[inline(always)]
pub(crate) fn v6_facts(pkt: &Pkt, chain: &ipv6::Chain, l3_end: usize) -> L3 {
    let (frag, frag_off, frag_id) = if !chain.fragmented {
        (FRAG_NONE, 0, 0)
    } else if let Some(e) = pkt.bytes::<8>(chain.frag_hdr) {
        // Offset (13 bits, in 8-byte units, above 3 flag bits) and M.
        let om = be16_at(e, 2);
        let off = om & 0xfff8;
        let frag = if off != 0 {
            FRAG_LATER
        } else if om & 1 != 0 {
            FRAG_FIRST
        } else {
            FRAG_NONE
        };
        (frag, off, load::<u32, 8>(e, 4))
    } else {
        // `walk` read it: unreachable. A later fragment without its first: dropped.
        (FRAG_LATER, 0, 0)
    };
    L3 {
        family: FAMILY_V6,
        proto: chain.nh,
        frag,
        _pad: 0,
        // `walk` bounds it by MAX_HDR_OFF.
        l4: chain.off as u16,
        frag_off,
        l3_end: l3_end as u32,
        frag_id,
    }
}
