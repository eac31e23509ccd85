//! Rules of one port on its own: ids, MAC, fixed IPs, allowed address pairs, binding.

use std::collections::HashSet;

use super::*;
use crate::nb::{LPort, error::ValidationError};

pub fn validate_lport(p: &LPort, opts: &ValidationOptions) -> Result<(), ValidationError> {
    check_id("lport id", &p.id)?;
    check_id("lswitch id", &p.lswitch)?;
    if p.mac.is_zero() {
        return Err(ValidationError::PortMacZero);
    }
    if p.mac.is_multicast() {
        return Err(ValidationError::PortMacMulticast { mac: p.mac });
    }

    let mut seen = HashSet::new();
    for ip in &p.fixed_ips {
        if let Some(reason) = unusable_source(ip) {
            return Err(ValidationError::FixedIpNotUsable { ip: *ip, reason });
        }
        if !seen.insert(*ip) {
            return Err(ValidationError::DuplicateFixedIp { ip: *ip });
        }
    }

    let mut seen = HashSet::new();
    for sg in &p.security_groups {
        check_id("security group id", sg)?;
        if !seen.insert(sg.as_str()) {
            return Err(ValidationError::DuplicateSecurityGroup { id: sg.clone() });
        }
    }
    // Neutron (PortSecurityPortHasSecurityGroup): groups are enforced by port security, so
    // a port without it cannot honour them; refusing beats silently ignoring them.
    if !p.port_security_enabled && !p.security_groups.is_empty() {
        return Err(ValidationError::SecurityGroupsWithoutPortSecurity {
            groups: p.security_groups.join(", "),
        });
    }

    validate_aaps(p, opts)?;

    if let Some(c) = &p.chassis {
        check_id("chassis name", c)?;
    }
    match &p.ifname {
        Some(n) => check_ifname(n)?,
        // The default tap name only matters once the port is bound somewhere.
        None if p.chassis.is_some() => {
            let tap = p.tap_name();
            if let Some(reason) = ifname_problem(&tap) {
                return Err(ValidationError::InvalidDerivedIfname { tap, reason });
            }
        }
        None => {}
    }
    if p.device_owner.len() > MAX_ID_LEN {
        return Err(ValidationError::DeviceOwnerTooLong {
            len: p.device_owner.len(),
        });
    }
    Ok(())
}

fn validate_aaps(p: &LPort, opts: &ValidationOptions) -> Result<(), ValidationError> {
    let aaps = &p.allowed_address_pairs;
    if aaps.is_empty() {
        return Ok(());
    }
    // Neutron (AddressPairAndPortSecurityRequired): without port security nothing is
    // filtered, so the pairs would mean nothing.
    if !p.port_security_enabled {
        return Err(ValidationError::AapRequiresPortSecurity);
    }
    if aaps.len() > opts.max_allowed_address_pairs {
        return Err(ValidationError::TooManyAaps {
            count: aaps.len(),
            max: opts.max_allowed_address_pairs,
        });
    }
    let mut seen = HashSet::new();
    for aap in aaps {
        let ip = aap.ip_address;
        check_aap_host_bits(&ip)?;
        if ip.len == 0 && !opts.allow_any_aap {
            return Err(ValidationError::AapMatchesAnyAddress { ip });
        }
        if let Some(reason) = unusable_aap(&ip) {
            return Err(ValidationError::AapAddressNotUsable { ip, reason });
        }
        let mac = p.aap_mac(aap);
        if mac.is_zero() {
            return Err(ValidationError::AapMacZero { ip });
        }
        if mac.is_multicast() {
            return Err(ValidationError::AapMacMulticast { ip, mac });
        }
        // Duplicates compare the effective MAC: `ip` and `ip,<port mac>` are one pair.
        // A pair equal to the fixed (IP, MAC) is accepted, as Neutron does; it is redundant.
        if !seen.insert((ip, mac)) {
            return Err(ValidationError::DuplicateAap { ip, mac });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{AllowedAddressPair, MacAddr, fixtures::*, parse::*};

    #[test]
    fn good_port() {
        validate_lport(&port(), &opts()).unwrap();
        let mut p = with_aaps(&[
            "192.0.2.100",
            "198.51.100.0/24,fa:16:3e:00:00:99",
            "2001:db8::5",
        ]);
        p.security_groups = vec!["sg1".into()];
        p.chassis = Some("hv1".into());
        p.ifname = Some("tapweb1".into());
        validate_lport(&p, &opts()).unwrap();
    }

    #[test]
    fn ids() {
        for bad in ["", "a/b", "a b", "a\tb", &"x".repeat(256)] {
            let mut p = port();
            p.id = bad.to_string();
            assert!(matches!(
                validate_lport(&p, &opts()),
                Err(ValidationError::InvalidId { .. })
            ));
        }
        let mut p = port();
        p.id = "a/b".into();
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "lport id \"a/b\" is invalid: it must not contain '/' (ids are etcd key segments)"
        );
        let mut p = port();
        p.lswitch = String::new();
        assert!(msg(validate_lport(&p, &opts())).contains("lswitch id \"\" is invalid"));
        p = port();
        p.id = "3f1c6a2e-0d9b-4d4e-9b1e-6b9d5c2a7f10".into();
        validate_lport(&p, &opts()).unwrap();
    }

    #[test]
    fn port_mac() {
        assert_eq!(
            parse_mac("fa:16:3e:00:00:0g").unwrap_err().to_string(),
            "\"fa:16:3e:00:00:0g\" is not a MAC address (expected six hex pairs like fa:16:3e:00:00:01)"
        );
        for bad in [
            "",
            "fa:16:3e:00:00",
            "fa:16:3e:00:00:01:02",
            "fa163e000001",
            "f:16:3e:00:00:01",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_mac("FA-16-3E-00-00-01").unwrap().to_string(),
            "fa:16:3e:00:00:01"
        );
        let mut p = port();
        p.mac = parse_mac("01:00:5e:00:00:01").unwrap();
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "MAC address 01:00:5e:00:00:01 is a multicast address; a port MAC must be unicast"
        );
        p.mac = parse_mac("ff:ff:ff:ff:ff:ff").unwrap();
        assert!(matches!(
            validate_lport(&p, &opts()),
            Err(ValidationError::PortMacMulticast { .. })
        ));
        p.mac = MacAddr::default();
        assert_eq!(
            validate_lport(&p, &opts()),
            Err(ValidationError::PortMacZero)
        );
    }

    #[test]
    fn fixed_ips() {
        assert_eq!(
            parse_fixed_ip("192.0.2.300").unwrap_err().to_string(),
            "fixed IP \"192.0.2.300\" is not an IP address"
        );
        assert!(parse_fixed_ip("192.0.2.0/24").is_err());
        assert!(parse_fixed_ip("2001:db8::1").is_ok());
        for (bad, why) in [
            ("0.0.0.0", "the unspecified address"),
            ("::", "the unspecified address"),
            ("127.0.0.1", "a loopback address"),
            ("224.0.0.5", "a multicast address"),
            ("ff02::1", "a multicast address"),
            ("255.255.255.255", "the broadcast address"),
        ] {
            let mut p = port();
            p.fixed_ips = vec![bad.parse().unwrap()];
            assert_eq!(
                msg(validate_lport(&p, &opts())),
                format!("fixed IP {bad} is {why} and cannot be assigned to a port")
            );
        }
        let mut p = port();
        p.fixed_ips.push("192.0.2.11".parse().unwrap());
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "fixed IP 192.0.2.11 is listed twice"
        );
        p.fixed_ips = vec![];
        validate_lport(&p, &opts()).unwrap();
    }

    #[test]
    fn aap_rules() {
        // Host bits in a stored record (the parser already refuses them).
        let mut p = port();
        p.allowed_address_pairs = vec![AllowedAddressPair {
            ip_address: "192.0.2.5/24".parse().unwrap(),
            mac_address: None,
        }];
        assert!(matches!(
            validate_lport(&p, &opts()),
            Err(ValidationError::AapHostBitsSet { .. })
        ));

        // The MAC defaults to the port's; duplicates compare effective MACs.
        let p = with_aaps(&["192.0.2.100", "192.0.2.100,fa:16:3e:00:00:01"]);
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "allowed address pair 192.0.2.100,fa:16:3e:00:00:01 is listed twice"
        );
        // Same IP with two MACs is two pairs.
        validate_lport(
            &with_aaps(&["192.0.2.100", "192.0.2.100,00:00:5e:00:01:01"]),
            &opts(),
        )
        .unwrap();
        // Equal to the fixed pair: accepted (Neutron accepts it too; it is redundant).
        validate_lport(&with_aaps(&["192.0.2.11"]), &opts()).unwrap();

        assert_eq!(
            msg(validate_lport(
                &with_aaps(&["192.0.2.100,01:00:5e:00:00:01"]),
                &opts()
            )),
            "allowed address pair 192.0.2.100: MAC 01:00:5e:00:00:01 is a multicast address"
        );
        assert_eq!(
            msg(validate_lport(
                &with_aaps(&["192.0.2.100,00:00:00:00:00:00"]),
                &opts()
            )),
            "allowed address pair 192.0.2.100: MAC 00:00:00:00:00:00 is not valid"
        );
        for (bad, why) in [
            ("224.0.0.18", "a multicast address"),
            ("224.0.0.0/4", "a multicast prefix"),
            ("ff02::/16", "a multicast prefix"),
            ("127.0.0.0/8", "a loopback prefix"),
            ("0.0.0.0", "the unspecified address"),
        ] {
            assert_eq!(
                msg(validate_lport(&with_aaps(&[bad]), &opts())),
                format!("allowed address pair {bad} is {why} and cannot be a packet source")
            );
        }
        // A broad prefix merely starting at a reserved address is fine.
        validate_lport(&with_aaps(&["0.0.0.0/1", "128.0.0.0/2"]), &opts()).unwrap();

        // Port security required.
        let mut p = with_aaps(&["192.0.2.100"]);
        p.port_security_enabled = false;
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "allowed address pairs require port security to be enabled"
        );
    }

    #[test]
    fn aap_any_address() {
        for any in ["0.0.0.0/0", "::/0"] {
            let p = with_aaps(&[any]);
            assert_eq!(
                msg(validate_lport(&p, &opts())),
                format!(
                    "allowed address pair {any} would let the port claim every address; \
                     it is refused unless allow_any_aap is set"
                )
            );
            let o = ValidationOptions {
                allow_any_aap: true,
                ..opts()
            };
            validate_lport(&p, &o).unwrap();
        }
    }

    #[test]
    fn aap_limit() {
        let ten: Vec<String> = (0..10).map(|i| format!("192.0.2.{}", 100 + i)).collect();
        let ten: Vec<&str> = ten.iter().map(String::as_str).collect();
        validate_lport(&with_aaps(&ten), &opts()).unwrap();
        let mut eleven = ten.clone();
        eleven.push("192.0.2.200");
        assert_eq!(
            msg(validate_lport(&with_aaps(&eleven), &opts())),
            "11 allowed address pairs exceed the maximum of 10 (max_allowed_address_pairs)"
        );
        let o = ValidationOptions {
            max_allowed_address_pairs: 11,
            ..opts()
        };
        validate_lport(&with_aaps(&eleven), &o).unwrap();
        let o = ValidationOptions {
            max_allowed_address_pairs: 0,
            ..opts()
        };
        assert!(matches!(
            validate_lport(&with_aaps(&["192.0.2.1"]), &o),
            Err(ValidationError::TooManyAaps { count: 1, max: 0 })
        ));
    }

    #[test]
    fn security_groups() {
        let mut p = port();
        p.security_groups = vec!["sg1".into(), "sg2".into()];
        validate_lport(&p, &opts()).unwrap();
        p.port_security_enabled = false;
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "security groups (sg1, sg2) need port security; remove them or enable port security"
        );
        p.security_groups.clear();
        validate_lport(&p, &opts()).unwrap();
        p.port_security_enabled = true;
        p.security_groups = vec!["sg1".into(), "sg1".into()];
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "security group sg1 is listed twice"
        );
        p.security_groups = vec!["a/b".into()];
        assert!(matches!(
            validate_lport(&p, &opts()),
            Err(ValidationError::InvalidId { .. })
        ));
    }

    #[test]
    fn binding() {
        let mut p = port();
        p.chassis = Some("hv 1".into());
        assert!(msg(validate_lport(&p, &opts())).starts_with("chassis name \"hv 1\" is invalid"));
        p.chassis = Some("hv1".into());
        for bad in [
            "",
            "tap12345678901234",
            "tap/1",
            "tap:1",
            "tap 1",
            ".",
            "..",
        ] {
            p.ifname = Some(bad.into());
            assert!(
                matches!(
                    validate_lport(&p, &opts()),
                    Err(ValidationError::InvalidIfname { .. })
                ),
                "{bad:?}"
            );
        }
        p.ifname = Some("tap1234567890123".into());
        assert_eq!(
            msg(validate_lport(&p, &opts())),
            "interface name \"tap1234567890123\" is invalid: it must be at most 15 bytes (IFNAMSIZ - 1)"
        );
        p.ifname = Some("tap123456789012".into());
        validate_lport(&p, &opts()).unwrap();
        // Derived name: only checked when bound.
        p.ifname = None;
        p.id = "a:b".into();
        assert!(matches!(
            validate_lport(&p, &opts()),
            Err(ValidationError::InvalidDerivedIfname { .. })
        ));
        p.chassis = None;
        validate_lport(&p, &opts()).unwrap();
        p.device_owner = "x".repeat(256);
        assert!(matches!(
            validate_lport(&p, &opts()),
            Err(ValidationError::DeviceOwnerTooLong { .. })
        ));
    }
}
