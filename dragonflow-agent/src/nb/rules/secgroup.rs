//! Rules of a security group on its own, as Neutron's API checks them.

use std::collections::HashSet;

use super::*;
use crate::nb::{EtherType, SecGroup, SecGroupRule, error::ValidationError, protocol::*};

/// A group on its own: ids, name, and every rule as Neutron's API checks it (protocol
/// names/numbers and ethertype, port ranges only where we match them and inside
/// 1..=65535, ICMP type/code inside 0..=255 with no code without a type, one remote at
/// most, of the rule's family, without host bits), rule ids unique.
pub fn validate_secgroup(g: &SecGroup) -> Result<(), ValidationError> {
    check_id("secgroup id", &g.id)?;
    if g.name.len() > MAX_ID_LEN {
        return Err(ValidationError::NameTooLong { len: g.name.len() });
    }
    let mut seen = HashSet::new();
    for r in &g.rules {
        check_id("rule id", &r.id)?;
        if !seen.insert(r.id.as_str()) {
            return Err(ValidationError::SgRuleIdTwice { id: r.id.clone() });
        }
        validate_secgroup_rule(r).map_err(|e| ValidationError::SgRule {
            rule: r.id.clone(),
            source: Box::new(e),
        })?;
    }
    Ok(())
}

/// One rule (the id aside).
pub fn validate_secgroup_rule(r: &SecGroupRule) -> Result<(), ValidationError> {
    let proto = match &r.protocol {
        Some(p) => parse_protocol(p, r.ethertype)?,
        None => None,
    };
    let (min, max) = (r.port_range_min, r.port_range_max);
    if min.is_some() || max.is_some() {
        match proto {
            None => return Err(ValidationError::SgPortsWithoutProtocol),
            Some(PROTO_TCP | PROTO_UDP) => {
                let (Some(min), Some(max)) = (min, max) else {
                    return Err(ValidationError::SgPortRangeIncomplete);
                };
                for (field, value) in [("port_range_min", min), ("port_range_max", max)] {
                    if !(1..=65535).contains(&value) {
                        return Err(ValidationError::SgPortOutOfRange { field, value });
                    }
                }
                if min > max {
                    return Err(ValidationError::SgPortRangeInverted { min, max });
                }
            }
            Some(PROTO_ICMP | PROTO_ICMPV6) => {
                if min.is_none() {
                    return Err(ValidationError::SgIcmpCodeWithoutType);
                }
                for (field, value, what) in [
                    ("port_range_min", min, "type"),
                    ("port_range_max", max, "code"),
                ] {
                    if let Some(value) = value
                        && value > 255
                    {
                        return Err(ValidationError::SgIcmpOutOfRange { field, value, what });
                    }
                }
            }
            Some(_) => {
                return Err(ValidationError::SgPortsNotMatched {
                    protocol: r.protocol.clone().unwrap_or_default(),
                });
            }
        }
    }
    if r.remote_ip_prefix.is_some() && r.remote_group_id.is_some() {
        return Err(ValidationError::SgRemoteBoth);
    }
    if let Some(p) = &r.remote_ip_prefix {
        if EtherType::of(&p.addr) != r.ethertype {
            return Err(ValidationError::SgRemoteFamily {
                prefix: *p,
                ethertype: r.ethertype.as_str().to_string(),
            });
        }
        if p.network() != p.addr {
            return Err(ValidationError::SgRemoteHostBits {
                given: format!("{}/{}", p.addr, p.len),
                network: format!("{}/{}", p.network(), p.len),
            });
        }
    }
    if let Some(g) = &r.remote_group_id {
        check_id("remote_group_id", g)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::fixtures::*;

    #[track_caller]
    fn rule_msg(json: &str) -> String {
        msg(validate_secgroup(&group(vec![rule(json)])))
    }

    #[test]
    fn secgroup_rules() {
        let ok = [
            r#"{"id":"r1","direction":"egress","ethertype":"IPv4"}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv6","protocol":"tcp",
                "port_range_min":22,"port_range_max":22,"remote_ip_prefix":"2001:db8::/32"}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"17",
                "port_range_min":1,"port_range_max":65535,"remote_group_id":"sg1"}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"icmp",
                "port_range_min":8}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv6","protocol":"icmp",
                "port_range_min":128,"port_range_max":0}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv6","protocol":"ipv6-icmp"}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"ipv4","protocol":"any"}"#,
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"sctp",
                "remote_ip_prefix":"192.0.2.7"}"#,
        ];
        for j in ok {
            validate_secgroup(&group(vec![rule(j)])).unwrap_or_else(|e| panic!("{j}: {e}"));
        }
        let cases = [
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"tcpp"}"#,
                "rule r1: protocol \"tcpp\" is invalid: use tcp, udp, icmp, icmpv6, sctp, any or a protocol number 1..=255",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"256"}"#,
                "rule r1: protocol \"256\" is invalid: a protocol number is 1..=255",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"0"}"#,
                "rule r1: protocol \"0\" is invalid: 0 is not a transport protocol; omit it (or use any) for every protocol",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"icmpv6"}"#,
                "rule r1: protocol icmpv6 is IPv6 only; the rule's ethertype is IPv4",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","port_range_min":1,"port_range_max":2}"#,
                "rule r1: port_range_min/port_range_max need a protocol (tcp or udp for ports, icmp or icmpv6 for type and code)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"gre","port_range_min":1,"port_range_max":2}"#,
                "rule r1: protocol gre has no ports we match: port_range_min/port_range_max apply to tcp and udp (ports) and icmp/icmpv6 (type and code)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"tcp","port_range_min":0,"port_range_max":2}"#,
                "rule r1: port_range_min 0 is out of range 1..=65535",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"tcp","port_range_min":1,"port_range_max":65536}"#,
                "rule r1: port_range_max 65536 is out of range 1..=65535",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"udp","port_range_min":80}"#,
                "rule r1: port_range_min and port_range_max go together for tcp/udp (the same value for one port)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"udp","port_range_min":81,"port_range_max":80}"#,
                "rule r1: port_range_min 81 is greater than port_range_max 80",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"icmp","port_range_min":256}"#,
                "rule r1: port_range_min 256 is out of range 0..=255 (ICMP type)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"icmp","port_range_min":3,"port_range_max":256}"#,
                "rule r1: port_range_max 256 is out of range 0..=255 (ICMP code)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","protocol":"icmp","port_range_max":0}"#,
                "rule r1: port_range_max (ICMP code) needs port_range_min (ICMP type)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","remote_ip_prefix":"192.0.2.0/24","remote_group_id":"sg1"}"#,
                "rule r1: remote_ip_prefix and remote_group_id are mutually exclusive; give one or neither",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv6","remote_ip_prefix":"192.0.2.0/24"}"#,
                "rule r1: remote_ip_prefix 192.0.2.0/24 is not an IPv6 prefix (the rule's ethertype)",
            ),
            (
                r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","remote_ip_prefix":"192.0.2.9/24"}"#,
                "rule r1: remote_ip_prefix 192.0.2.9/24 has host bits set; did you mean 192.0.2.0/24?",
            ),
            (
                r#"{"id":"r 1","direction":"ingress","ethertype":"IPv4"}"#,
                "rule id \"r 1\" is invalid: it must not contain whitespace or control characters",
            ),
        ];
        for (j, want) in cases {
            assert_eq!(rule_msg(j), want, "{j}");
        }
        let r = rule(r#"{"id":"r1","direction":"egress","ethertype":"IPv4"}"#);
        assert_eq!(
            msg(validate_secgroup(&group(vec![r.clone(), r]))),
            "rule id r1 is listed twice"
        );
        let mut g = group(vec![]);
        g.id = "a/b".into();
        assert!(msg(validate_secgroup(&g)).starts_with("secgroup id \"a/b\" is invalid"));
    }
}
