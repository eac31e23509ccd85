//! Referential rules: a record against its neighbours (its lswitch, subnets, other ports,
//! groups). The CLI applies them on create/update, as Neutron's API server does. The agent
//! does not: a record that was valid when written must not become unreadable because a
//! neighbour changed.

use super::{
    LPort, LRouter, LRouterPort, LSwitch, SecGroup, Subnet, conflicts, error::ValidationError,
    rules::*,
};

/// A new router interface against its neighbours: its lswitch exists; when the lswitch
/// has subnets, each of the interface's prefixes is one of them (the connected route must
/// be the subnet the VMs use); its MAC and IPs are not used by a port or another router's
/// interface on that lswitch.
pub fn validate_lrouter_port_refs(
    router: &str,
    port: &LRouterPort,
    lswitch: Option<&LSwitch>,
    subnets: &[Subnet],
    ports: &[LPort],
    routers: &[LRouter],
) -> Result<(), ValidationError> {
    let Some(ls) = lswitch else {
        return Err(ValidationError::LSwitchNotFound {
            lswitch: port.lswitch.clone(),
        });
    };
    let subnets: Vec<&Subnet> = subnets.iter().filter(|s| s.lswitch == ls.id).collect();
    if !subnets.is_empty()
        && let Some(ip) = port.addrs().find(|ip| {
            !subnets
                .iter()
                .any(|s| s.cidr.len == ip.len && s.cidr.contains(&ip.addr))
        })
    {
        return Err(ValidationError::RouterIpOutsideSubnets {
            iface: port.id.clone(),
            ip: *ip,
            lswitch: ls.id.clone(),
            subnets: subnets
                .iter()
                .map(|s| s.cidr.to_string())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    let in_use = |what: &'static str, value: String, other: String| {
        Err(ValidationError::RouterAddressInUse {
            iface: port.id.clone(),
            what,
            value,
            other,
            lswitch: ls.id.clone(),
        })
    };
    for p in ports.iter().filter(|p| p.lswitch == ls.id) {
        if p.mac == port.mac {
            return in_use("MAC", port.mac.to_string(), format!("lport {}", p.id));
        }
        if let Some(ip) = port.addrs().find(|ip| p.fixed_ips.contains(&ip.addr)) {
            return in_use("IP", ip.addr.to_string(), format!("lport {}", p.id));
        }
    }
    for r in routers {
        for o in r.ports.iter().filter(|o| o.lswitch == ls.id) {
            if r.id == router && o.id == port.id {
                continue;
            }
            let other = format!("router {} interface {}", r.id, o.id);
            if o.mac == port.mac {
                return in_use("MAC", port.mac.to_string(), other);
            }
            if let Some(ip) = port.addrs().find(|a| o.addrs().any(|b| b.addr == a.addr)) {
                return in_use("IP", ip.addr.to_string(), other);
            }
        }
    }
    Ok(())
}

/// A port against its neighbours, as Neutron's API server checks it:
/// - its lswitch must exist;
/// - when the lswitch has subnets, every fixed IP must lie in one of them (Neutron's
///   InvalidIpForNetwork; rejected rather than warned so a typo never yields a port whose
///   traffic the datapath then drops); with no subnets any address is accepted;
/// - a fixed IP may not be a subnet's gateway unless the port is a router port
///   (`device_owner` starting with `network:router`);
/// - it does not conflict with another port ([`conflicts`]: MAC and fixed IPs unique
///   within the lswitch, no single-IP pair on another port's fixed IP, one port per tap
///   of a chassis).
///
/// `subnets` and `ports` may hold objects of any lswitch; `ports` may include `port`
/// itself (matched by id and skipped).
pub fn validate_lport_refs(
    port: &LPort,
    lswitch: Option<&LSwitch>,
    subnets: &[Subnet],
    ports: &[LPort],
) -> Result<(), ValidationError> {
    let Some(ls) = lswitch else {
        return Err(ValidationError::LSwitchNotFound {
            lswitch: port.lswitch.clone(),
        });
    };
    let subnets: Vec<&Subnet> = subnets.iter().filter(|s| s.lswitch == ls.id).collect();
    let router_port = port.device_owner.starts_with("network:router");
    for ip in &port.fixed_ips {
        if !subnets.is_empty() && !subnets.iter().any(|s| s.cidr.contains(ip)) {
            return Err(ValidationError::FixedIpOutsideSubnets {
                ip: *ip,
                lswitch: ls.id.clone(),
                subnets: subnets
                    .iter()
                    .map(|s| s.cidr.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
        if !router_port && let Some(s) = subnets.iter().find(|s| s.gateway_ip == Some(*ip)) {
            return Err(ValidationError::FixedIpIsGateway {
                ip: *ip,
                subnet: s.id.clone(),
            });
        }
    }
    conflicts::check_port(port, ports)?;
    Ok(())
}

/// A subnet against its neighbours: its lswitch exists, an IPv6 subnet needs an MTU of at
/// least 1280, and it does not overlap another subnet of the same lswitch (Neutron refuses
/// overlapping CIDRs on one network: a destination must map to one subnet).
pub fn validate_subnet_refs(
    subnet: &Subnet,
    lswitch: Option<&LSwitch>,
    subnets: &[Subnet],
) -> Result<(), ValidationError> {
    let Some(ls) = lswitch else {
        return Err(ValidationError::LSwitchNotFound {
            lswitch: subnet.lswitch.clone(),
        });
    };
    if subnet.ip_version == 6 && ls.mtu < IPV6_MIN_MTU {
        return Err(ValidationError::Ipv6MtuTooSmall {
            cidr: subnet.cidr,
            lswitch: ls.id.clone(),
            mtu: ls.mtu,
        });
    }
    for other in subnets
        .iter()
        .filter(|o| o.lswitch == ls.id && o.id != subnet.id)
    {
        if other.cidr.contains(&subnet.cidr.addr) || subnet.cidr.contains(&other.cidr.addr) {
            return Err(ValidationError::SubnetOverlap {
                cidr: subnet.cidr,
                other: other.id.clone(),
                other_cidr: other.cidr,
                lswitch: ls.id.clone(),
            });
        }
    }
    Ok(())
}

/// An lswitch update against its subnets (the MTU may not drop below IPv6's minimum while
/// it has an IPv6 subnet).
pub fn validate_lswitch_refs(ls: &LSwitch, subnets: &[Subnet]) -> Result<(), ValidationError> {
    if ls.mtu < IPV6_MIN_MTU
        && let Some(s) = subnets
            .iter()
            .find(|s| s.lswitch == ls.id && s.ip_version == 6)
    {
        return Err(ValidationError::MtuTooSmallForIpv6 {
            mtu: ls.mtu,
            subnet: s.id.clone(),
        });
    }
    Ok(())
}

/// A port's groups exist (Neutron refuses a port naming an unknown group).
pub fn validate_lport_secgroups(port: &LPort, groups: &[SecGroup]) -> Result<(), ValidationError> {
    match port
        .security_groups
        .iter()
        .find(|id| !groups.iter().any(|g| &g.id == *id))
    {
        Some(id) => Err(ValidationError::SecurityGroupNotFound { id: id.clone() }),
        None => Ok(()),
    }
}

/// A group's remote groups exist (itself counts: `default` refers to itself).
pub fn validate_secgroup_refs(
    group: &SecGroup,
    groups: &[SecGroup],
) -> Result<(), ValidationError> {
    for r in &group.rules {
        if let Some(id) = &r.remote_group_id
            && *id != group.id
            && !groups.iter().any(|g| &g.id == id)
        {
            return Err(ValidationError::SgRule {
                rule: r.id.clone(),
                source: Box::new(ValidationError::RemoteGroupNotFound { id: id.clone() }),
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{fixtures::*, parse::*};

    #[test]
    fn secgroup_refs() {
        let g = group(vec![rule(
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","remote_group_id":"other"}"#,
        )]);
        assert_eq!(
            msg(validate_secgroup_refs(&g, &[])),
            "rule r1: remote_group_id other does not exist"
        );
        let other = SecGroup {
            id: "other".into(),
            name: String::new(),
            rules: vec![],
        };
        validate_secgroup_refs(&g, std::slice::from_ref(&other)).unwrap();
        let own = group(vec![rule(
            r#"{"id":"r1","direction":"ingress","ethertype":"IPv4","remote_group_id":"sg1"}"#,
        )]);
        validate_secgroup_refs(&own, &[]).unwrap();
        let mut p = port();
        p.security_groups = vec!["other".into(), "sg9".into()];
        assert_eq!(
            msg(validate_lport_secgroups(&p, &[other])),
            "security group sg9 does not exist"
        );
    }

    #[test]
    fn lport_refs() {
        let p = port();
        assert_eq!(
            validate_lport_refs(&p, None, &[], &[])
                .unwrap_err()
                .to_string(),
            "lswitch ls1 does not exist"
        );
        // No subnets: any fixed IP.
        validate_lport_refs(&p, Some(&ls()), &[], &[]).unwrap();
        let subs = [subnet("s1", "198.51.100.0/24", Some("198.51.100.1"))];
        assert_eq!(
            validate_lport_refs(&p, Some(&ls()), &subs, &[])
                .unwrap_err()
                .to_string(),
            "fixed IP 192.0.2.11 is not in any subnet of lswitch ls1 (198.51.100.0/24)"
        );
        // Subnets of other lswitches do not count.
        let mut other_ls = subnet("s2", "192.0.2.0/24", None);
        other_ls.lswitch = "ls2".into();
        assert!(validate_lport_refs(&p, Some(&ls()), &[subs[0].clone(), other_ls], &[]).is_err());
        let subs = [subnet("s1", "192.0.2.0/24", Some("192.0.2.1"))];
        validate_lport_refs(&p, Some(&ls()), &subs, std::slice::from_ref(&p)).unwrap();

        let mut gw = port();
        gw.fixed_ips = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(
            validate_lport_refs(&gw, Some(&ls()), &subs, &[])
                .unwrap_err()
                .to_string(),
            "fixed IP 192.0.2.1 is the gateway of subnet s1"
        );
        gw.device_owner = "network:router_interface".into();
        validate_lport_refs(&gw, Some(&ls()), &subs, &[]).unwrap();

        let mut other = port();
        other.id = "p2".into();
        other.mac = parse_mac("fa:16:3e:00:00:02").unwrap();
        assert_eq!(
            validate_lport_refs(&p, Some(&ls()), &subs, &[other.clone()])
                .unwrap_err()
                .to_string(),
            "fixed IP 192.0.2.11 is already used by lport p2 on lswitch ls1"
        );
        other.fixed_ips = vec!["192.0.2.12".parse().unwrap()];
        validate_lport_refs(&p, Some(&ls()), &subs, &[other.clone()]).unwrap();
        other.mac = p.mac;
        assert_eq!(
            validate_lport_refs(&p, Some(&ls()), &subs, &[other.clone()])
                .unwrap_err()
                .to_string(),
            "MAC address fa:16:3e:00:00:01 is already used by lport p2 on lswitch ls1"
        );
        // Other lswitch: no conflict.
        other.lswitch = "ls2".into();
        validate_lport_refs(&p, Some(&ls()), &subs, &[other]).unwrap();
    }

    #[test]
    fn subnet_refs() {
        let s = subnet("s1", "192.0.2.0/24", None);
        assert!(matches!(
            validate_subnet_refs(&s, None, &[]),
            Err(ValidationError::LSwitchNotFound { .. })
        ));
        validate_subnet_refs(&s, Some(&ls()), std::slice::from_ref(&s)).unwrap();
        let inner = subnet("s2", "192.0.2.128/25", None);
        assert_eq!(
            validate_subnet_refs(&inner, Some(&ls()), std::slice::from_ref(&s))
                .unwrap_err()
                .to_string(),
            "cidr 192.0.2.128/25 overlaps subnet s1 (192.0.2.0/24) on lswitch ls1"
        );
        let outer = subnet("s3", "192.0.0.0/16", None);
        assert!(validate_subnet_refs(&outer, Some(&ls()), std::slice::from_ref(&s)).is_err());
        validate_subnet_refs(
            &subnet("s4", "198.51.100.0/24", None),
            Some(&ls()),
            std::slice::from_ref(&s),
        )
        .unwrap();
        let v6 = subnet("s6", "2001:db8::/64", None);
        validate_subnet_refs(&v6, Some(&ls()), &[s]).unwrap();
        let small = LSwitch { mtu: 1000, ..ls() };
        assert_eq!(
            validate_subnet_refs(&v6, Some(&small), &[])
                .unwrap_err()
                .to_string(),
            "IPv6 subnet 2001:db8::/64 needs an MTU of at least 1280; lswitch ls1 has 1000"
        );
        assert!(validate_lswitch_refs(&small, &[v6]).is_err());
        validate_lswitch_refs(&small, &[subnet("s1", "192.0.2.0/24", None)]).unwrap();
    }

    #[test]
    fn lrouter_refs_dual_stack() {
        let mut p = rport("r1-a", "ls1", "fa:16:3e:00:01:01", "192.0.2.1/24");
        p.extra_ips = vec!["2001:db8:1::1/64".parse().unwrap()];
        let refs = |subs: &[Subnet], ports: &[LPort], routers: &[LRouter]| {
            validate_lrouter_port_refs("r1", &p, Some(&ls()), subs, ports, routers)
        };
        let v4 = subnet("s4", "192.0.2.0/24", Some("192.0.2.1"));
        let v6 = subnet("s6", "2001:db8:1::/64", None);
        refs(&[], &[], &[]).unwrap();
        refs(&[v4.clone(), v6.clone()], &[], &[]).unwrap();
        // Each address must be inside a subnet of the lswitch when it has subnets.
        assert_eq!(
            refs(std::slice::from_ref(&v4), &[], &[])
                .unwrap_err()
                .to_string(),
            "router interface r1-a: ip 2001:db8:1::1/64 is not a subnet of lswitch ls1 \
             (192.0.2.0/24); use an address inside one of them with its prefix length"
        );
        assert!(
            refs(&[v6], &[], &[])
                .unwrap_err()
                .to_string()
                .contains("192.0.2.1/24")
        );
        let mut vm = port();
        vm.fixed_ips = vec!["2001:db8:1::1".parse().unwrap()];
        assert_eq!(
            refs(&[], &[vm], &[]).unwrap_err().to_string(),
            "router interface r1-a: IP 2001:db8:1::1 is already used by lport p1 on lswitch ls1"
        );
        // Another router's interface holding the IPv6 address (as its first or extra one).
        let mut o = rport("r2-a", "ls1", "fa:16:3e:00:02:01", "192.0.2.2/24");
        o.extra_ips = vec!["2001:db8:1::1/64".parse().unwrap()];
        let other = LRouter {
            id: "r2".into(),
            name: String::new(),
            ports: vec![o],
        };
        assert_eq!(
            refs(&[], &[], &[other]).unwrap_err().to_string(),
            "router interface r1-a: IP 2001:db8:1::1 is already used by router r2 interface \
             r2-a on lswitch ls1"
        );
    }

    #[test]
    fn lrouter_refs() {
        let p = rport("r1-a", "ls1", "fa:16:3e:00:01:01", "192.0.2.1/24");
        let refs = |subs: &[Subnet], ports: &[LPort], routers: &[LRouter]| {
            validate_lrouter_port_refs("r1", &p, Some(&ls()), subs, ports, routers)
        };
        assert_eq!(
            validate_lrouter_port_refs("r1", &p, None, &[], &[], &[])
                .unwrap_err()
                .to_string(),
            "lswitch ls1 does not exist"
        );
        refs(&[], &[], &[]).unwrap();
        refs(&[subnet("s1", "192.0.2.0/24", Some("192.0.2.1"))], &[], &[]).unwrap();
        assert!(
            refs(&[subnet("s1", "198.51.100.0/24", None)], &[], &[])
                .unwrap_err()
                .to_string()
                .contains("is not a subnet of lswitch ls1 (198.51.100.0/24)")
        );
        // Same network, other prefix length: refused too.
        assert!(refs(&[subnet("s1", "192.0.2.0/25", None)], &[], &[]).is_err());
        let mut vm = port();
        vm.fixed_ips = vec!["192.0.2.1".parse().unwrap()];
        assert_eq!(
            refs(&[], &[vm.clone()], &[]).unwrap_err().to_string(),
            "router interface r1-a: IP 192.0.2.1 is already used by lport p1 on lswitch ls1"
        );
        vm.fixed_ips.clear();
        vm.mac = p.mac;
        assert!(
            refs(&[], &[vm], &[])
                .unwrap_err()
                .to_string()
                .contains("MAC")
        );
        let other = LRouter {
            id: "r2".into(),
            name: String::new(),
            ports: vec![rport("r2-a", "ls1", "fa:16:3e:00:02:01", "192.0.2.1/24")],
        };
        assert!(
            refs(&[], &[], &[other])
                .unwrap_err()
                .to_string()
                .contains("router r2 interface r2-a")
        );
        // The router's own interface (an update) does not conflict with itself.
        let me = LRouter {
            id: "r1".into(),
            name: String::new(),
            ports: vec![p.clone()],
        };
        refs(&[], &[], &[me]).unwrap();
    }
}
