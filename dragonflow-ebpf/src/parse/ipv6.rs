//! The IPv6 header, its extension-header chain and the upper-layer header behind it: what
//! no sender may put on the wire, whoever vouches for its source (docs/THREATS.md, "What a
//! VM may try": rogue router (row 6), rogue DHCP server (7), fragment evasion (10),
//! truncation (13)). Port security (`portsec::ipv6`) adds the source and ND checks; frames
//! from the tunnel get only this ([`sanity`]).

use dragonflow_common::verdict::DropReason;

use crate::{
    ctx::{Pkt, be16_at, u8_at},
    parse::{
        ETH_HLEN, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV6_HLEN, MAX_HDR_OFF, nd, tcp_ok,
        udp_ports,
    },
};

const NEXTHDR_HOP: u8 = 0;
const NEXTHDR_ROUTING: u8 = 43;
const NEXTHDR_FRAGMENT: u8 = 44;
const NEXTHDR_AUTH: u8 = 51;
const NEXTHDR_DEST: u8 = 60;

/// Extension headers we walk; a longer chain is dropped (fail closed).
const MAX_EXT_HDRS: usize = 6;

const DHCPV6_CLIENT: u16 = 546;
const DHCPV6_SERVER: u16 = 547;

/// Where the upper-layer header is.
#[derive(Clone, Copy)]
pub(crate) struct Chain {
    /// Upper-layer protocol.
    pub nh: u8,
    /// Offset of its header.
    pub off: usize,
    /// A fragment header was seen.
    pub fragmented: bool,
    /// A non-first fragment: there is no upper-layer header to look at.
    pub later_fragment: bool,
    /// `fragmented`: offset of the fragment header, whose other fields (M flag,
    /// identification) `parse::l3::v6_facts` reads only when security groups need them
    /// (kept out of this struct: the allowed-IPv6 fast path pays for every field).
    pub frag_hdr: usize,
}

/// The header, chain and upper-layer sanity of `portsec::ipv6::check` (router
/// advertisements and redirects, ND in fragments, DHCPv6 server replies included) without
/// the source and ND checks. For frames from the tunnel (see `ipv4::sanity`).
#[inline(always)]
pub(crate) fn sanity(pkt: &Pkt) -> Result<(), DropReason> {
    let (h, l3_end) = header(pkt)?;
    let chain = walk(pkt, u8_at(h, 6), l3_end)?;
    if chain.later_fragment {
        return Ok(());
    }
    if chain.nh == IPPROTO_ICMPV6 {
        return nd::icmpv6_type(pkt, chain.off, chain.fragmented, l3_end).map(|_| ());
    }
    transport(pkt, &chain, l3_end)
}

/// The fixed IPv6 header, sane (row 13): (header, end of the payload).
#[inline(always)]
pub(crate) fn header(pkt: &Pkt) -> Result<(*const [u8; IPV6_HLEN], usize), DropReason> {
    let h = pkt
        .bytes::<IPV6_HLEN>(ETH_HLEN)
        .ok_or(DropReason::Ipv6Malformed)?;
    let l3_end = ETH_HLEN + IPV6_HLEN + be16_at(h, 4) as usize;
    if u8_at(h, 0) >> 4 != 6 || l3_end > pkt.len {
        return Err(DropReason::Ipv6Malformed);
    }
    Ok((h, l3_end))
}

/// TCP and UDP of an unfragmented packet or a first fragment: the header complete (RFC
/// 7112: a first fragment must carry it whole; rows 10, 13), no DHCPv6 server reply
/// (row 7).
#[inline(always)]
pub(crate) fn transport(pkt: &Pkt, chain: &Chain, l3_end: usize) -> Result<(), DropReason> {
    let err = if chain.fragmented {
        DropReason::Ipv6HeaderChain
    } else {
        DropReason::L4Malformed
    };
    match chain.nh {
        IPPROTO_UDP => {
            let (sport, dport) = udp_ports(pkt, chain.off, l3_end, err)?;
            if sport == DHCPV6_SERVER && dport == DHCPV6_CLIENT {
                return Err(DropReason::Dhcpv6Server);
            }
        }
        IPPROTO_TCP => tcp_ok(pkt, chain.off, l3_end, err)?,
        _ => {}
    }
    Ok(())
}

/// Walks at most `MAX_EXT_HDRS` extension headers to the upper-layer header.
#[inline(always)]
pub(crate) fn walk(pkt: &Pkt, first: u8, l3_end: usize) -> Result<Chain, DropReason> {
    let err = DropReason::Ipv6HeaderChain;
    let mut nh = first;
    let mut off = ETH_HLEN + IPV6_HLEN;
    let mut fragmented = false;
    let mut frag_hdr = 0;
    // One more round than headers allowed: that round only finds the upper layer.
    for i in 0..=MAX_EXT_HDRS {
        let len = match nh {
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST if i < MAX_EXT_HDRS => {
                let e = pkt.bytes::<2>(off).ok_or(err)?;
                nh = u8_at(e, 0);
                (u8_at(e, 1) as usize + 1) * 8
            }
            NEXTHDR_AUTH if i < MAX_EXT_HDRS => {
                let e = pkt.bytes::<2>(off).ok_or(err)?;
                nh = u8_at(e, 0);
                (u8_at(e, 1) as usize + 2) * 4
            }
            NEXTHDR_FRAGMENT if i < MAX_EXT_HDRS => {
                let e = pkt.bytes::<8>(off).ok_or(err)?;
                nh = u8_at(e, 0);
                fragmented = true;
                frag_hdr = off;
                if be16_at(e, 2) & 0xfff8 != 0 {
                    return Ok(Chain {
                        nh,
                        off: off + 8,
                        fragmented,
                        later_fragment: true,
                        frag_hdr,
                    });
                }
                8
            }
            NEXTHDR_HOP | NEXTHDR_ROUTING | NEXTHDR_DEST | NEXTHDR_AUTH | NEXTHDR_FRAGMENT => {
                return Err(err);
            }
            _ => {
                return Ok(Chain {
                    nh,
                    off,
                    fragmented,
                    later_fragment: false,
                    frag_hdr,
                });
            }
        };
        off += len;
        // Verifier: keeps `off` bounded; semantics: the chain must fit the payload.
        if off > MAX_HDR_OFF || off > l3_end {
            return Err(err);
        }
    }
    Err(err)
}
