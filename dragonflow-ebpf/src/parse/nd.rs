//! ICMPv6 and neighbour-discovery messages: what no sender may send, whoever vouches for
//! its source (docs/THREATS.md, "What a VM may try": rogue router (row 6), ND spoofing
//! (5)): router advertisements and redirects, ND in fragments (RFC 6980), NS/NA without
//! hop limit 255, malformed or misleading link-layer options. Port security
//! (`portsec::nd`) adds the target and address checks.

use dragonflow_common::verdict::DropReason;

use crate::{
    ctx::{Pkt, arr_at, u8_at},
    parse::{MAX_HDR_OFF, mac_eq},
};

pub(crate) const MLD_REPORT: u8 = 131;
pub(crate) const ND_ROUTER_SOLICIT: u8 = 133;
const ND_ROUTER_ADVERT: u8 = 134;
pub(crate) const ND_NEIGHBOR_SOLICIT: u8 = 135;
pub(crate) const ND_NEIGHBOR_ADVERT: u8 = 136;
const ND_REDIRECT: u8 = 137;
pub(crate) const MLD2_REPORT: u8 = 143;

/// NS/NA: type, code, checksum, flags/reserved, target.
pub(crate) const ND_MSG_LEN: usize = 24;
pub(crate) const ND_OPT_SOURCE_LL: u8 = 1;
pub(crate) const ND_OPT_TARGET_LL: u8 = 2;
/// NA "solicited" flag (first byte after the checksum).
pub(crate) const NA_F_SOLICITED: u8 = 0x40;
/// Options we walk (legitimate NS/NA carry one or two: LLA, DAD nonce); a message with
/// more is dropped, so an LLA option cannot hide behind padding options.
const MAX_ND_OPTS: usize = 6;
/// ND messages are only valid with hop limit 255 (RFC 4861 §7.1): they were not routed.
pub(crate) const ND_HOP_LIMIT: u8 = 255;

/// The type of an ICMPv6 message at `l4` (behind a fragment header if `fragmented`) no
/// sender may send, whoever vouches for its source: its header in bounds, no ND in a
/// fragment (RFC 6980), no router advertisement or redirect. Also the whole ICMPv6 sanity
/// of frames from the tunnel (see `ipv6::sanity`).
#[inline(always)]
pub(crate) fn icmpv6_type(
    pkt: &Pkt,
    l4: usize,
    fragmented: bool,
    l3_end: usize,
) -> Result<u8, DropReason> {
    let err = if fragmented {
        DropReason::Ipv6HeaderChain
    } else {
        DropReason::L4Malformed
    };
    let h = pkt.bytes::<4>(l4).ok_or(err)?;
    if l4 + 4 > l3_end {
        return Err(err);
    }
    let ty = u8_at(h, 0);
    if fragmented && (ND_ROUTER_SOLICIT..=ND_REDIRECT).contains(&ty) {
        return Err(DropReason::Ipv6HeaderChain);
    }
    match ty {
        ND_ROUTER_ADVERT | ND_REDIRECT => Err(DropReason::RouterAdvert),
        ty => Ok(ty),
    }
}

/// The fixed part of an NS/NA (type .. target), in bounds and inside the IPv6 payload,
/// sent with hop limit 255 as RFC 4861 requires (anything less was forwarded: spoofed).
#[inline(always)]
pub(crate) fn nd_msg(
    pkt: &Pkt,
    hop_limit: u8,
    l4: usize,
    l3_end: usize,
) -> Result<*const [u8; ND_MSG_LEN], DropReason> {
    let m = pkt.bytes::<ND_MSG_LEN>(l4).ok_or(DropReason::L4Malformed)?;
    if l4 + ND_MSG_LEN > l3_end {
        return Err(DropReason::L4Malformed);
    }
    if hop_limit != ND_HOP_LIMIT {
        return Err(DropReason::NdSpoof);
    }
    Ok(m)
}

/// Walks the ND options from `off` to `l3_end`: every option of type `want` (source or
/// target link-layer address) must carry `mac`; malformed options, or more than
/// `MAX_ND_OPTS`, are a spoof attempt. Returns whether such an option was present.
#[inline(always)]
pub(crate) fn lla_options(
    pkt: &Pkt,
    off: usize,
    l3_end: usize,
    want: u8,
    mac: &[u8; 6],
) -> Result<bool, DropReason> {
    let err = DropReason::NdSpoof;
    let mut off = off;
    let mut present = false;
    for _ in 0..MAX_ND_OPTS {
        if off >= l3_end {
            return Ok(present);
        }
        // Verifier: bounds the option offset (see MAX_HDR_OFF).
        if off > MAX_HDR_OFF {
            return Err(err);
        }
        // Every option is a multiple of 8 bytes; an Ethernet LLA option is exactly 8.
        let o = pkt.bytes::<8>(off).ok_or(err)?;
        let len = u8_at(o, 1) as usize * 8;
        if len == 0 || off + len > l3_end {
            return Err(err);
        }
        if u8_at(o, 0) == want {
            if len != 8 || !mac_eq(&arr_at(o, 2), mac) {
                return Err(err);
            }
            present = true;
        }
        off += len;
    }
    if off >= l3_end { Ok(present) } else { Err(err) }
}
