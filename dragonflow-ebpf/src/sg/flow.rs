//! The flow of a frame as the security-group stage sees it (family, protocol, addresses,
//! ports or ICMP type/code/identifier, TCP flags, fragment facts, the inner header of an
//! ICMP error), parsed once per program run and shared by both sides: the sender's egress
//! and the receiver's ingress judge the same [`Flow`] (routing changes neither addresses
//! nor ports).
//!
//! The L3 part ([`L3`], `parse::l3`) comes from port security when the sender has it
//! (`portsec::ipv4::check`, `portsec::ipv6::check` fill it while validating the header);
//! otherwise (`parse::l3::l3`: frames from the tunnel, from ports without port security)
//! the stage parses and validates it. The L4 part ([`build`]) is read only when security
//! groups are on.

use dragonflow_common::{addr::FAMILY_V4, verdict::DropReason};

use crate::{
    ctx::{Pkt, be16_at, load, load_ip6, u8_at},
    parse::{
        ETH_HLEN, ICMP_HLEN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP, IPV4_HLEN,
        IPV6_HLEN, MAX_HDR_OFF, TCP_HLEN, UDP_HLEN,
        l3::{FRAG_FIRST, FRAG_LATER, FRAG_NONE, L3},
    },
};

pub(super) const IPPROTO_DCCP: u8 = 33;
pub(super) const IPPROTO_SCTP: u8 = 132;
pub(super) const IPPROTO_UDPLITE: u8 = 136;

const TCP_FIN: u8 = 0x01;
const TCP_SYN: u8 = 0x02;
const TCP_RST: u8 = 0x04;
const TCP_ACK: u8 = 0x10;

const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_DEST_UNREACH: u8 = 3;
const ICMP_ECHO_REQUEST: u8 = 8;
const ICMP_TIME_EXCEEDED: u8 = 11;
const ICMP_PARAMETER_PROB: u8 = 12;
/// ICMPv6 errors are types 1 (unreachable) to 4 (parameter problem).
const ICMPV6_ERROR_MAX: u8 = 4;
pub(super) const ICMPV6_ECHO_REQUEST: u8 = 128;
const ICMPV6_ECHO_REPLY: u8 = 129;
/// MLD query/report/done, RS, RA, NS, NA (130..=136) and MLDv2 report (143): exempt.
const ICMPV6_ND_FIRST: u8 = 130;
const ICMPV6_ND_LAST: u8 = 136;
const ICMPV6_MLD2_REPORT: u8 = 143;

const BOOTPS: u16 = 67;
const BOOTPC: u16 = 68;
const DHCPV6_CLIENT: u16 = 546;
const DHCPV6_SERVER: u16 = 547;

/// [`Flow::flags`]: the egress rules do not apply (DHCP/DHCPv6 client → server, ND/MLD).
pub(super) const F_EXEMPT_EGRESS: u8 = 1 << 0;
/// The ingress rules do not apply (DHCP/DHCPv6 server → client, ND/MLD/RA).
pub(super) const F_EXEMPT_INGRESS: u8 = 1 << 1;
/// Conntrack is consulted (TCP, UDP, ICMP echo, other protocols; not other ICMP).
pub(super) const F_TRACK: u8 = 1 << 2;
/// An allowed miss creates an entry: TCP SYN without ACK, UDP, ICMP echo request, other
/// protocols — never a later fragment (no L4 header: its first fragment created it).
pub(super) const F_CREATE: u8 = 1 << 3;
/// An ICMP error with a complete inner header, addressed to the quoted packet's source
/// (`to_quoted_source`): `inner_*` is the offending packet, which travelled the opposite
/// way; a conntrack hit on it passes the error (`ct_related`).
pub(super) const F_ICMP_ERROR: u8 = 1 << 4;

/// One frame's flow. Addresses and ports are kept as loaded (memory order; ports and
/// `rule_port` are network-order bytes), the form map keys are built from.
#[derive(Clone, Copy)]
pub(super) struct Flow {
    /// IPv4: `[addr, 0, 0, 0]`.
    pub src: [u32; 4],
    pub dst: [u32; 4],
    /// Conntrack ports: TCP/UDP/SCTP/DCCP/UDP-Lite ports; ICMP echo request
    /// `(identifier, 0)`, echo reply `(0, identifier)` (so a request and the reply it
    /// answers give the same [`dragonflow_common::sg::CtKey`], and a request each way
    /// two different ones: docs/THREATS.md, "What a VM may try", row 14); otherwise 0.
    pub sport: u16,
    pub dport: u16,
    /// What the rules match ([`dragonflow_common::sg::PolicyKey::dport`]): the
    /// destination port, ICMP `[type, code]`, otherwise 0.
    pub rule_port: u16,
    pub family: u8,
    pub proto: u8,
    /// `F_*`.
    pub flags: u8,
    /// TCP flags (0 for a later fragment).
    pub tcp_flags: u8,
    /// `FRAG_*`.
    pub frag: u8,
    /// `F_ICMP_ERROR`: protocol of the inner packet.
    pub inner_proto: u8,
    /// Fragments: identification (see [`L3::frag_id`]).
    pub frag_id: u32,
    /// `FRAG_LATER`: byte offset of the data; `FRAG_FIRST`: bytes of L4 data carried.
    pub frag_off: u32,
    /// `F_ICMP_ERROR`: the inner packet's addresses and conntrack ports.
    pub inner_src: [u32; 4],
    pub inner_dst: [u32; 4],
    pub inner_sport: u16,
    pub inner_dport: u16,
}

impl Flow {
    /// A frame the rules never see (not IP): exempt both ways. Only the fields the stage
    /// reads for an exempt frame are written (no whole-struct zeroing: bpf-linker turns
    /// that into a byte-loop `memset` call, which also costs the verifier dearly).
    #[inline(always)]
    pub(super) fn set_not_ip(&mut self) {
        self.family = 0;
        self.flags = F_EXEMPT_EGRESS | F_EXEMPT_INGRESS;
        self.frag = FRAG_NONE;
    }

    #[inline(always)]
    pub(super) const fn tcp_syn_only(&self) -> bool {
        self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    #[inline(always)]
    pub(super) const fn tcp_rst(&self) -> bool {
        self.tcp_flags & TCP_RST != 0
    }

    #[inline(always)]
    pub(super) const fn tcp_fin(&self) -> bool {
        self.tcp_flags & TCP_FIN != 0
    }
}

/// Protocols whose first 4 L4 bytes are source and destination port, and the length of
/// their fixed header (a first fragment shorter than that is `frag_tiny`).
#[inline(always)]
pub(super) const fn ports_hlen(proto: u8) -> Option<usize> {
    match proto {
        IPPROTO_TCP => Some(TCP_HLEN),
        IPPROTO_UDP | IPPROTO_UDPLITE => Some(UDP_HLEN),
        IPPROTO_SCTP | IPPROTO_DCCP => Some(12),
        _ => None,
    }
}

/// The flow of an IP frame whose [`L3`] is known, written into `f` (every field the stage
/// reads; `inner_*` only for ICMP errors). Errors:
/// an L4 header shorter than its protocol's (`l4_malformed`; in a first fragment
/// `frag_tiny` for IPv4, `ipv6_header_chain` for IPv6, RFC 1858 / RFC 7112).
#[inline(always)]
pub(super) fn build(pkt: &Pkt, l3: &L3, f: &mut Flow) -> Result<(), DropReason> {
    f.family = l3.family;
    f.proto = l3.proto;
    f.flags = 0;
    f.frag = l3.frag;
    f.frag_id = l3.frag_id;
    f.frag_off = u32::from(l3.frag_off);
    f.sport = 0;
    f.dport = 0;
    f.rule_port = 0;
    f.tcp_flags = 0;
    if l3.family == FAMILY_V4 {
        let h = pkt
            .bytes::<IPV4_HLEN>(ETH_HLEN)
            .ok_or(DropReason::Ipv4Malformed)?;
        f.src = [load::<u32, IPV4_HLEN>(h, 12), 0, 0, 0];
        f.dst = [load::<u32, IPV4_HLEN>(h, 16), 0, 0, 0];
    } else {
        let h = pkt
            .bytes::<IPV6_HLEN>(ETH_HLEN)
            .ok_or(DropReason::Ipv6Malformed)?;
        f.src = load_ip6(h, 8);
        f.dst = load_ip6(h, 24);
    }
    if l3.frag == FRAG_LATER {
        // No L4 header: `sg` fills the ports from the first fragment.
        f.flags = F_TRACK;
        return Ok(());
    }
    // Verifier: a bounded offset (port security and `l3` never produce a larger one).
    let l4 = l3.l4 as usize;
    let l3_end = l3.l3_end as usize;
    if l4 > MAX_HDR_OFF || l4 > l3_end {
        return Err(DropReason::L4Malformed);
    }
    let short = if l3.frag != FRAG_FIRST {
        DropReason::L4Malformed
    } else if l3.family == FAMILY_V4 {
        DropReason::FragTiny
    } else {
        DropReason::Ipv6HeaderChain
    };
    f.frag_off = (l3_end - l4) as u32;
    if let Some(hlen) = ports_hlen(l3.proto) {
        let p = pkt.bytes::<4>(l4).ok_or(short)?;
        if l4 + hlen > l3_end {
            return Err(short);
        }
        f.sport = load::<u16, 4>(p, 0);
        f.dport = load::<u16, 4>(p, 2);
        f.rule_port = f.dport;
        f.flags = F_TRACK | F_CREATE;
        if l3.proto == IPPROTO_TCP {
            let t = pkt.bytes::<TCP_HLEN>(l4).ok_or(short)?;
            f.tcp_flags = u8_at(t, 13);
            if !f.tcp_syn_only() {
                f.flags = F_TRACK;
            }
        } else if l3.proto == IPPROTO_UDP {
            f.flags |= dhcp_exemption(l3.family, f.sport, f.dport);
        }
        return Ok(());
    }
    if l3.proto == IPPROTO_ICMP || l3.proto == IPPROTO_ICMPV6 {
        let m = pkt.bytes::<ICMP_HLEN>(l4).ok_or(short)?;
        if l4 + ICMP_HLEN > l3_end {
            return Err(short);
        }
        let type_code = load::<u16, ICMP_HLEN>(m, 0);
        let id = load::<u16, ICMP_HLEN>(m, 4);
        f.rule_port = type_code;
        let ty = u8_at(m, 0);
        f.flags = icmp_flags(l3.family, ty);
        if f.flags & F_TRACK != 0 {
            if is_echo_request(l3.family, ty) {
                f.sport = id;
            } else {
                f.dport = id;
            }
        } else if f.flags & F_ICMP_ERROR != 0
            && (l3.frag != FRAG_NONE || !inner(pkt, l4, f) || !to_quoted_source(f))
        {
            // No usable inner header, or not addressed to the quoted packet's source:
            // judged as a new ICMP message.
            f.flags = 0;
        }
        return Ok(());
    }
    // Other protocols: tracked by addresses alone.
    f.flags = F_TRACK | F_CREATE;
    Ok(())
}

/// `F_*` of an ICMP/ICMPv6 message of type `ty`: echo request (tracked, creates), echo
/// reply (tracked: the answer to a request), errors (related), ND/MLD (exempt), others
/// (judged by the rules at every packet).
#[inline(always)]
pub(super) const fn icmp_flags(family: u8, ty: u8) -> u8 {
    if family == FAMILY_V4 {
        match ty {
            ICMP_ECHO_REQUEST => F_TRACK | F_CREATE,
            ICMP_ECHO_REPLY => F_TRACK,
            ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROB => F_ICMP_ERROR,
            _ => 0,
        }
    } else {
        match ty {
            ICMPV6_ECHO_REQUEST => F_TRACK | F_CREATE,
            ICMPV6_ECHO_REPLY => F_TRACK,
            1..=ICMPV6_ERROR_MAX => F_ICMP_ERROR,
            ICMPV6_ND_FIRST..=ICMPV6_ND_LAST | ICMPV6_MLD2_REPORT => {
                F_EXEMPT_EGRESS | F_EXEMPT_INGRESS
            }
            _ => 0,
        }
    }
}

#[inline(always)]
const fn is_echo_request(family: u8, ty: u8) -> bool {
    if family == FAMILY_V4 {
        ty == ICMP_ECHO_REQUEST
    } else {
        ty == ICMPV6_ECHO_REQUEST
    }
}

/// DHCP client ↔ server (Neutron lets every port reach its DHCP server and hear back).
#[inline(always)]
const fn dhcp_exemption(family: u8, sport: u16, dport: u16) -> u8 {
    let (client, server) = if family == FAMILY_V4 {
        (BOOTPC.to_be(), BOOTPS.to_be())
    } else {
        (DHCPV6_CLIENT.to_be(), DHCPV6_SERVER.to_be())
    };
    if sport == client && dport == server {
        F_EXEMPT_EGRESS
    } else if sport == server && dport == client {
        F_EXEMPT_INGRESS
    } else {
        0
    }
}

/// The flags of a later fragment, judged by its first fragment's ports (TCP flags
/// unknown: never creates; exemptions as the first fragment's).
#[inline(always)]
pub(super) fn later_flags(f: &Flow, sport: u16, dport: u16, rule_port: u16) -> u8 {
    if ports_hlen(f.proto).is_some() {
        if f.proto == IPPROTO_UDP {
            return F_TRACK | dhcp_exemption(f.family, sport, dport);
        }
        return F_TRACK;
    }
    if f.proto == IPPROTO_ICMP || f.proto == IPPROTO_ICMPV6 {
        // The type is the first byte of `rule_port` (network order).
        let ty = rule_port.to_ne_bytes()[0];
        return icmp_flags(f.family, ty) & !(F_CREATE | F_ICMP_ERROR);
    }
    F_TRACK
}

/// An ICMP error can be about a flow only if it goes back to the quoted packet's source
/// (Linux conntrack's check of the outer destination against the original source): an
/// error about A's flow is for A, whoever sends it. Otherwise it is an ICMP message of its
/// own, judged by the rules on both sides (issue 10: a VM that opened one allowed flow
/// sent errors quoting it to third parties, which passed as `ct_related`).
///
/// The outer *source* is not compared with the quoted destination: a router on the path
/// (a VM forwarding the flow, or any router beyond a gateway VM: traceroute's "time
/// exceeded", PMTUD's "fragmentation needed" / "packet too big") reports from its own
/// address, which can be any. What bounds it instead (see `sg`): the sender passed port
/// security (the outer source is its own), and its egress passes the error as related
/// only if the quoted packet reached its own port (tracked there): a VM reports only
/// about packets it received or forwarded, and only to their source.
#[inline(always)]
fn to_quoted_source(f: &Flow) -> bool {
    let (d, s) = (&f.dst, &f.inner_src);
    (d[0] ^ s[0]) | (d[1] ^ s[1]) | (d[2] ^ s[2]) | (d[3] ^ s[3]) == 0
}

/// Parses the packet an ICMP error quotes (RFC 792 / 4443: its IP header and at least 8
/// bytes of L4) into `f.inner_*`. False when it is not all there.
#[inline(always)]
fn inner(pkt: &Pkt, l4: usize, f: &mut Flow) -> bool {
    let ip = l4 + ICMP_HLEN;
    let (proto, l4i) = if f.family == FAMILY_V4 {
        let Some(h) = pkt.bytes::<IPV4_HLEN>(ip) else {
            return false;
        };
        let vihl = u8_at(h, 0);
        let hlen = (vihl & 0x0f) as usize * 4;
        if vihl >> 4 != 4 || hlen < IPV4_HLEN || be16_at(h, 6) & 0x1fff != 0 {
            return false;
        }
        f.inner_src = [load::<u32, IPV4_HLEN>(h, 12), 0, 0, 0];
        f.inner_dst = [load::<u32, IPV4_HLEN>(h, 16), 0, 0, 0];
        (u8_at(h, 9), ip + hlen)
    } else {
        let Some(h) = pkt.bytes::<IPV6_HLEN>(ip) else {
            return false;
        };
        if u8_at(h, 0) >> 4 != 6 {
            return false;
        }
        f.inner_src = load_ip6(h, 8);
        f.inner_dst = load_ip6(h, 24);
        (u8_at(h, 6), ip + IPV6_HLEN)
    };
    let Some(p) = pkt.bytes::<8>(l4i) else {
        return false;
    };
    f.inner_proto = proto;
    f.inner_sport = 0;
    f.inner_dport = 0;
    if ports_hlen(proto).is_some() {
        f.inner_sport = load::<u16, 8>(p, 0);
        f.inner_dport = load::<u16, 8>(p, 2);
    } else if proto == IPPROTO_ICMP || proto == IPPROTO_ICMPV6 {
        let ty = u8_at(p, 0);
        let id = load::<u16, 8>(p, 4);
        if is_echo_request(f.family, ty) {
            f.inner_sport = id;
        } else {
            f.inner_dport = id;
        }
    }
    true
}
