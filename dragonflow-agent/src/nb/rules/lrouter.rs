//! Rules of a router on its own and of one of its interfaces.

use std::net::IpAddr;

use super::*;
use crate::nb::{IpPrefix, LRouter, LRouterPort, error::ValidationError};

/// A router on its own: ids, and per interface a unicast MAC and usable addresses with a
/// real prefix (the connected routes), at most one per family; the interface ids,
/// lswitches (one interface per lswitch: a dual-stack network gets one interface with an
/// IPv4 and an IPv6 address), MACs and IPs are unique within the router.
pub fn validate_lrouter(r: &LRouter) -> Result<(), ValidationError> {
    check_id("lrouter id", &r.id)?;
    if r.name.len() > MAX_ID_LEN {
        return Err(ValidationError::NameTooLong { len: r.name.len() });
    }
    for (i, p) in r.ports.iter().enumerate() {
        validate_lrouter_port(p)?;
        for o in &r.ports[..i] {
            if o.lswitch == p.lswitch {
                return Err(ValidationError::RouterLSwitchTwice {
                    lswitch: p.lswitch.clone(),
                    other: o.id.clone(),
                });
            }
            if o.id == p.id {
                return Err(ValidationError::DuplicateRouterInterface {
                    iface: p.id.clone(),
                });
            }
            if o.mac == p.mac {
                return Err(ValidationError::RouterMacTwice {
                    iface: p.id.clone(),
                    other: o.id.clone(),
                    mac: p.mac,
                });
            }
            if let Some(a) = p.addrs().find(|a| o.addrs().any(|b| b.addr == a.addr)) {
                return Err(ValidationError::RouterIpTwice {
                    iface: p.id.clone(),
                    other: o.id.clone(),
                    ip: a.addr,
                });
            }
        }
    }
    Ok(())
}

pub fn validate_lrouter_port(p: &LRouterPort) -> Result<(), ValidationError> {
    check_id("router interface id", &p.id)?;
    check_id("lswitch id", &p.lswitch)?;
    if p.mac.is_zero() || p.mac.is_multicast() {
        return Err(ValidationError::RouterMacNotUnicast {
            iface: p.id.clone(),
            mac: p.mac,
        });
    }
    let addrs: Vec<&IpPrefix> = p.addrs().collect();
    for (i, ip) in addrs.iter().enumerate() {
        validate_router_addr(&p.id, ip)?;
        if let Some(other) = addrs[..i]
            .iter()
            .find(|o| o.addr.is_ipv4() == ip.addr.is_ipv4())
        {
            return Err(ValidationError::RouterIpFamilyTwice {
                iface: p.id.clone(),
                ip: **ip,
                other: **other,
                version: if ip.addr.is_ipv4() { 4 } else { 6 },
            });
        }
    }
    Ok(())
}

/// One interface address: a real prefix and a usable unicast address in it.
fn validate_router_addr(iface: &str, ip: &IpPrefix) -> Result<(), ValidationError> {
    if ip.is_host() || ip.len == 0 {
        return Err(ValidationError::RouterIpNoPrefix {
            iface: iface.to_string(),
            ip: *ip,
        });
    }
    let unusable = unusable_source(&ip.addr).or_else(|| match ip.addr {
        // IPv4 prefixes of /30 and larger reserve their first and last address.
        IpAddr::V4(a) if ip.len <= 30 => {
            let host = u32::from(a) & (u32::MAX >> ip.len);
            if host == 0 {
                Some("the network address of its prefix")
            } else if host == u32::MAX >> ip.len {
                Some("the broadcast address of its prefix")
            } else {
                None
            }
        }
        _ => None,
    });
    if let Some(reason) = unusable {
        return Err(ValidationError::RouterIpNotUsable {
            iface: iface.to_string(),
            ip: *ip,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::fixtures::*;

    #[test]
    fn lrouter_rules() {
        let mut r = LRouter {
            id: "r1".into(),
            name: "edge".into(),
            ports: vec![
                rport("r1-a", "ls1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                rport("r1-b", "ls2", "fa:16:3e:00:01:02", "2001:db8:1::1/64"),
            ],
        };
        validate_lrouter(&r).unwrap();
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ports"][0]["ip"], "192.0.2.1/24");
        assert_eq!(serde_json::from_value::<LRouter>(v).unwrap(), r);

        let msg = |r: &LRouter| validate_lrouter(r).unwrap_err().to_string();
        let mut bad = r.clone();
        bad.ports[1].mac = "01:00:5e:00:00:01".parse().unwrap();
        assert_eq!(
            msg(&bad),
            "router interface r1-b: MAC 01:00:5e:00:00:01 is not a unicast MAC"
        );
        let mut bad = r.clone();
        bad.ports[0].ip = "192.0.2.1".parse().unwrap();
        assert!(msg(&bad).contains("needs the subnet's prefix length"));
        let mut bad = r.clone();
        bad.ports[0].ip = "192.0.2.0/24".parse().unwrap();
        assert!(msg(&bad).contains("network address"), "{}", msg(&bad));
        let mut bad = r.clone();
        bad.ports[0].ip = "127.0.0.1/8".parse().unwrap();
        assert!(msg(&bad).contains("loopback"));
        let mut bad = r.clone();
        bad.ports[1].lswitch = "ls1".into();
        assert_eq!(
            msg(&bad),
            "router already has interface r1-a on lswitch ls1 (one interface per lswitch)"
        );
        let mut bad = r.clone();
        bad.ports[1].mac = bad.ports[0].mac;
        assert!(msg(&bad).contains("have the same MAC"));
        let mut bad = r.clone();
        bad.ports[1].ip = "192.0.2.1/25".parse().unwrap();
        assert!(msg(&bad).contains("have the same IP 192.0.2.1"));
        let mut bad = r.clone();
        bad.ports[1].id = "r1-a".into();
        assert!(msg(&bad).contains("listed twice"));
        r.id = "a/b".into();
        assert!(validate_lrouter(&r).is_err());
    }

    /// One interface with an IPv4 and an IPv6 address (dual stack); one per family.
    #[test]
    fn lrouter_dual_stack() {
        let mut r = LRouter {
            id: "r1".into(),
            name: String::new(),
            ports: vec![
                rport("r1-a", "ls1", "fa:16:3e:00:01:01", "192.0.2.1/24"),
                rport("r1-b", "ls2", "fa:16:3e:00:01:02", "2001:db8:2::1/64"),
            ],
        };
        r.ports[0].extra_ips = vec!["2001:db8:1::1/64".parse().unwrap()];
        r.ports[1].extra_ips = vec!["198.51.100.1/24".parse().unwrap()];
        validate_lrouter(&r).unwrap();
        assert_eq!(
            r.ports[0]
                .addrs()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["192.0.2.1/24", "2001:db8:1::1/64"]
        );
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["ports"][0]["ip"], "192.0.2.1/24");
        assert_eq!(
            v["ports"][0]["extra_ips"],
            serde_json::json!(["2001:db8:1::1/64"])
        );
        assert_eq!(serde_json::from_value::<LRouter>(v).unwrap(), r);
        // A single-address interface is written as before dual stack (no extra_ips key).
        let single = rport("r1-a", "ls1", "fa:16:3e:00:01:01", "192.0.2.1/24");
        let v = serde_json::to_value(&single).unwrap();
        assert!(v.get("extra_ips").is_none(), "{v}");

        let msg = |r: &LRouter| validate_lrouter(r).unwrap_err().to_string();
        let mut bad = r.clone();
        bad.ports[0].extra_ips = vec!["192.0.2.2/24".parse().unwrap()];
        assert_eq!(
            msg(&bad),
            "router interface r1-a: 192.0.2.2/24 and 192.0.2.1/24 are both IPv4; an interface \
             has at most one address per family (one IPv4, one IPv6)"
        );
        let mut bad = r.clone();
        bad.ports[0]
            .extra_ips
            .push("2001:db8:1::2/64".parse().unwrap());
        assert!(msg(&bad).contains("are both IPv6"), "{}", msg(&bad));
        let mut bad = r.clone();
        bad.ports[0].extra_ips = vec!["192.0.2.1/24".parse().unwrap()];
        assert!(msg(&bad).contains("are both IPv4"), "{}", msg(&bad));
        // Every address obeys the per-address rules.
        let mut bad = r.clone();
        bad.ports[0].extra_ips = vec!["2001:db8:1::1".parse().unwrap()];
        assert!(msg(&bad).contains("needs the subnet's prefix length"));
        let mut bad = r.clone();
        bad.ports[0].extra_ips = vec!["ff02::1/64".parse().unwrap()];
        assert!(msg(&bad).starts_with("router interface r1-a: ip ff02::1/64 is"));
        // Extra addresses are unique across the router's interfaces too.
        let mut bad = r.clone();
        bad.ports[1].ip = "2001:db8:1::1/64".parse().unwrap();
        assert!(
            msg(&bad).contains("have the same IP 2001:db8:1::1"),
            "{}",
            msg(&bad)
        );
    }
}
