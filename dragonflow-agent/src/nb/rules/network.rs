//! Rules of a network on its own: lswitch, subnet, chassis.

use std::net::IpAddr;

use super::*;
use crate::nb::{Chassis, LSwitch, Subnet, error::ValidationError};

pub fn validate_lswitch(s: &LSwitch) -> Result<(), ValidationError> {
    check_id("lswitch id", &s.id)?;
    if s.name.len() > MAX_ID_LEN {
        return Err(ValidationError::NameTooLong { len: s.name.len() });
    }
    if !(1..=MAX_VNI).contains(&s.segmentation_id) {
        return Err(ValidationError::SegmentationIdOutOfRange {
            value: s.segmentation_id,
        });
    }
    if !(MIN_MTU..=MAX_MTU).contains(&s.mtu) {
        return Err(ValidationError::MtuOutOfRange { value: s.mtu });
    }
    Ok(())
}

pub fn validate_subnet(s: &Subnet) -> Result<(), ValidationError> {
    check_id("subnet id", &s.id)?;
    check_id("lswitch id", &s.lswitch)?;
    let version = match s.cidr.addr {
        IpAddr::V4(_) => 4,
        IpAddr::V6(_) => 6,
    };
    if s.ip_version != 4 && s.ip_version != 6 {
        return Err(ValidationError::InvalidIpVersion {
            value: s.ip_version,
        });
    }
    if s.ip_version != version {
        return Err(ValidationError::IpVersionMismatch {
            ip_version: s.ip_version,
            cidr: s.cidr,
        });
    }
    check_cidr_host_bits(&s.cidr)?;
    if s.cidr.len == 0 {
        return Err(ValidationError::CidrPrefixZero { cidr: s.cidr });
    }
    if let Some(gw) = s.gateway_ip {
        if !s.cidr.contains(&gw) {
            return Err(ValidationError::GatewayOutsideCidr {
                gateway: gw,
                cidr: s.cidr,
            });
        }
        // IPv4 subnets of /30 and larger reserve their first and last address (RFC 919);
        // /31 (RFC 3021) and /32 do not. IPv6 has no broadcast; its subnet-router anycast
        // address (the first) is allowed, as in Neutron.
        if let IpAddr::V4(_) = gw
            && s.cidr.len <= 30
        {
            let net = u32::from(match s.cidr.network() {
                IpAddr::V4(a) => a,
                IpAddr::V6(_) => unreachable!("version checked above"),
            });
            let bcast = net | (u32::MAX >> s.cidr.len);
            let g = match gw {
                IpAddr::V4(a) => u32::from(a),
                IpAddr::V6(_) => unreachable!(),
            };
            let which = if g == net {
                Some("network")
            } else if g == bcast {
                Some("broadcast")
            } else {
                None
            };
            if let Some(which) = which {
                return Err(ValidationError::GatewayReserved {
                    gateway: gw,
                    cidr: s.cidr,
                    which,
                });
            }
        }
    }
    Ok(())
}

pub fn validate_chassis(c: &Chassis) -> Result<(), ValidationError> {
    check_id("chassis name", &c.name)?;
    if let Some(reason) = unusable_source(&c.tunnel_ip) {
        return Err(ValidationError::TunnelIpNotUsable {
            ip: c.tunnel_ip,
            reason,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{fixtures::*, parse::*};

    #[test]
    fn lswitch() {
        validate_lswitch(&ls()).unwrap();
        for (vni, ok) in [(0, false), (1, true), (MAX_VNI, true), (MAX_VNI + 1, false)] {
            let s = LSwitch {
                segmentation_id: vni,
                ..ls()
            };
            assert_eq!(validate_lswitch(&s).is_ok(), ok, "{vni}");
        }
        assert_eq!(
            validate_lswitch(&LSwitch {
                segmentation_id: 0,
                ..ls()
            })
            .unwrap_err()
            .to_string(),
            "segmentation_id 0 is out of range 1..=16777215 (a 24-bit VXLAN VNI; 0 is reserved)"
        );
        for (mtu, ok) in [(67, false), (68, true), (9000, true), (9001, false)] {
            assert_eq!(
                validate_lswitch(&LSwitch { mtu, ..ls() }).is_ok(),
                ok,
                "{mtu}"
            );
        }
        assert!(
            validate_lswitch(&LSwitch { mtu: 9001, ..ls() })
                .unwrap_err()
                .to_string()
                .starts_with("mtu 9001 is out of range 68..=9000")
        );
        assert!(
            validate_lswitch(&LSwitch {
                id: "".into(),
                ..ls()
            })
            .is_err()
        );
        assert!(matches!(
            validate_lswitch(&LSwitch {
                name: "n".repeat(256),
                ..ls()
            }),
            Err(ValidationError::NameTooLong { len: 256 })
        ));
    }

    #[test]
    fn subnets() {
        validate_subnet(&subnet("s1", "192.0.2.0/24", Some("192.0.2.1"))).unwrap();
        validate_subnet(&subnet("s6", "2001:db8::/64", Some("2001:db8::1"))).unwrap();
        validate_subnet(&subnet("s6", "2001:db8::/64", Some("2001:db8::"))).unwrap();
        validate_subnet(&subnet("s31", "192.0.2.0/31", Some("192.0.2.0"))).unwrap();
        validate_subnet(&subnet("s1", "192.0.2.0/24", None)).unwrap();

        assert_eq!(
            parse_cidr("192.0.2.1/24").unwrap_err().to_string(),
            "cidr 192.0.2.1/24 has host bits set; did you mean 192.0.2.0/24?"
        );
        assert_eq!(
            parse_cidr("192.0.2.0").unwrap_err().to_string(),
            "\"192.0.2.0\" is not a CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/64)"
        );
        assert!(parse_cidr("192.0.2.0/40").is_err());
        assert_eq!(
            parse_gateway("gw").unwrap_err().to_string(),
            "gateway \"gw\" is not an IP address"
        );

        let mut s = subnet("s1", "192.0.2.0/24", None);
        s.ip_version = 6;
        assert_eq!(
            validate_subnet(&s).unwrap_err().to_string(),
            "ip_version 6 does not match cidr 192.0.2.0/24"
        );
        s.ip_version = 5;
        assert_eq!(
            validate_subnet(&s).unwrap_err().to_string(),
            "ip_version 5 is invalid; it must be 4 or 6"
        );
        let mut s = subnet("s1", "192.0.2.0/24", None);
        s.cidr = "192.0.2.7/24".parse().unwrap();
        assert!(matches!(
            validate_subnet(&s),
            Err(ValidationError::CidrHostBitsSet { .. })
        ));
        assert!(matches!(
            validate_subnet(&subnet("s", "0.0.0.0/0", None)),
            Err(ValidationError::CidrPrefixZero { .. })
        ));
        assert_eq!(
            validate_subnet(&subnet("s", "192.0.2.0/24", Some("198.51.100.1")))
                .unwrap_err()
                .to_string(),
            "gateway 198.51.100.1 is not inside cidr 192.0.2.0/24"
        );
        assert!(matches!(
            validate_subnet(&subnet("s", "192.0.2.0/24", Some("2001:db8::1"))),
            Err(ValidationError::GatewayOutsideCidr { .. })
        ));
        assert_eq!(
            validate_subnet(&subnet("s", "192.0.2.0/24", Some("192.0.2.255")))
                .unwrap_err()
                .to_string(),
            "gateway 192.0.2.255 is the broadcast address of 192.0.2.0/24"
        );
        assert!(matches!(
            validate_subnet(&subnet("s", "192.0.2.0/24", Some("192.0.2.0"))),
            Err(ValidationError::GatewayReserved {
                which: "network",
                ..
            })
        ));
    }

    #[test]
    fn chassis() {
        let c = Chassis {
            name: "hv1".into(),
            tunnel_ip: "198.18.0.1".parse().unwrap(),
            aap_mode: Default::default(),
            version: String::new(),
            instance: String::new(),
        };
        validate_chassis(&c).unwrap();
        let bad = Chassis {
            tunnel_ip: "0.0.0.0".parse().unwrap(),
            ..c.clone()
        };
        assert_eq!(
            validate_chassis(&bad).unwrap_err().to_string(),
            "tunnel_ip 0.0.0.0 is the unspecified address"
        );
        assert!(
            validate_chassis(&Chassis {
                name: "a/b".into(),
                ..c
            })
            .is_err()
        );
    }
}
