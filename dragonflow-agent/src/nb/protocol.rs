//! IP protocol numbers and the names a security-group rule may spell them with.

use super::{EtherType, SecGroupRule, error::ValidationError};

/// IP protocol numbers of the names a rule may use (Neutron's names; `icmp` in an IPv6
/// rule means ICMPv6, as in Neutron).
const PROTOCOL_NAMES: &[(&str, u8)] = &[
    ("icmp", 1),
    ("tcp", 6),
    ("udp", 17),
    ("dccp", 33),
    ("gre", 47),
    ("esp", 50),
    ("ah", 51),
    ("icmpv6", 58),
    ("ipv6-icmp", 58),
    ("ospf", 89),
    ("pim", 103),
    ("vrrp", 112),
    ("sctp", 132),
    ("udplite", 136),
];
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// A rule's `protocol` as an IP protocol number for `ethertype`; `None` = any protocol
/// (absent, or `any`). `icmp` in an IPv6 rule is ICMPv6. Refuses unknown names, numbers
/// above 255 and 0 (not a transport protocol: "any" is spelt by omitting it).
pub fn parse_protocol(value: &str, ethertype: EtherType) -> Result<Option<u8>, ValidationError> {
    let bad = |reason| ValidationError::SgProtocol {
        value: value.to_string(),
        reason,
    };
    let v = value.trim().to_ascii_lowercase();
    if v == "any" {
        return Ok(None);
    }
    let n = if let Some(&(_, n)) = PROTOCOL_NAMES.iter().find(|(name, _)| *name == v) {
        if n == PROTO_ICMP && ethertype == EtherType::IPv6 {
            PROTO_ICMPV6
        } else {
            n
        }
    } else if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        match v.parse::<u8>() {
            Ok(0) => {
                return Err(bad(
                    "0 is not a transport protocol; omit it (or use any) for every protocol",
                ));
            }
            Ok(n) => n,
            Err(_) => return Err(bad("a protocol number is 1..=255")),
        }
    } else {
        return Err(bad(
            "use tcp, udp, icmp, icmpv6, sctp, any or a protocol number 1..=255",
        ));
    };
    if n == PROTO_ICMPV6 && ethertype == EtherType::IPv4 {
        return Err(ValidationError::SgProtocolNotIpv4 {
            protocol: value.to_string(),
        });
    }
    Ok(Some(n))
}

/// The rule's protocol number (`None` = any). The rule must have passed
/// [`super::rules::validate_secgroup`]; an unparsable protocol reads as any.
pub fn rule_protocol(rule: &SecGroupRule) -> Option<u8> {
    rule.protocol
        .as_deref()
        .and_then(|p| parse_protocol(p, rule.ethertype).ok().flatten())
}
