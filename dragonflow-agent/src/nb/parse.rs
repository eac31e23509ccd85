//! Text parsers that turn operator input into model types, with the messages of the
//! per-object rules, so the CLI and the decoder speak alike.

use std::net::IpAddr;

use super::{
    AllowedAddressPair, IpPrefix, MacAddr,
    error::ValidationError,
    rules::{check_aap_host_bits, check_cidr_host_bits},
};

pub fn parse_mac(s: &str) -> Result<MacAddr, ValidationError> {
    s.trim().parse().map_err(|_| ValidationError::InvalidMac {
        value: s.to_string(),
    })
}

pub fn parse_fixed_ip(s: &str) -> Result<IpAddr, ValidationError> {
    s.trim()
        .parse()
        .map_err(|_| ValidationError::InvalidFixedIp {
            value: s.to_string(),
        })
}

pub fn parse_gateway(s: &str) -> Result<IpAddr, ValidationError> {
    s.trim()
        .parse()
        .map_err(|_| ValidationError::InvalidGateway {
            value: s.to_string(),
        })
}

pub fn parse_cidr(s: &str) -> Result<IpPrefix, ValidationError> {
    if !s.contains('/') {
        return Err(ValidationError::InvalidCidr {
            value: s.to_string(),
        });
    }
    let p: IpPrefix = s.trim().parse().map_err(|_| ValidationError::InvalidCidr {
        value: s.to_string(),
    })?;
    check_cidr_host_bits(&p)?;
    Ok(p)
}

/// `IP[/LEN][,MAC]`, the syntax of `dfctl --aap` (and of Neutron's CLI
/// `--allowed-address ip-address=…,mac-address=…`, shortened).
pub fn parse_aap(s: &str) -> Result<AllowedAddressPair, ValidationError> {
    let (ip, mac) = match s.split_once(',') {
        Some((ip, mac)) => (ip.trim(), Some(mac.trim())),
        None => (s.trim(), None),
    };
    let ip_address: IpPrefix = ip.parse().map_err(|_| ValidationError::InvalidAapIp {
        value: ip.to_string(),
    })?;
    check_aap_host_bits(&ip_address)?;
    let mac_address = match mac {
        None => None,
        Some(m) => Some(m.parse().map_err(|_| ValidationError::InvalidAapMac {
            ip: ip.to_string(),
            value: m.to_string(),
        })?),
    };
    Ok(AllowedAddressPair {
        ip_address,
        mac_address,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aap_parsing() {
        assert_eq!(
            parse_aap("192.0.2.300").unwrap_err().to_string(),
            "allowed address pair 192.0.2.300 is not an IP address or CIDR"
        );
        assert!(matches!(
            parse_aap("192.0.2.0/33"),
            Err(ValidationError::InvalidAapIp { .. })
        ));
        assert!(matches!(
            parse_aap("2001:db8::/129"),
            Err(ValidationError::InvalidAapIp { .. })
        ));
        assert!(matches!(
            parse_aap("192.0.2.0/"),
            Err(ValidationError::InvalidAapIp { .. })
        ));
        assert_eq!(
            parse_aap("192.0.2.5/24").unwrap_err().to_string(),
            "allowed address pair 192.0.2.5/24 has host bits set; did you mean 192.0.2.0/24?"
        );
        assert_eq!(
            parse_aap("192.0.2.5,zz").unwrap_err().to_string(),
            "allowed address pair 192.0.2.5: \"zz\" is not a MAC address"
        );
        let a = parse_aap("192.0.2.5").unwrap();
        assert!(a.ip_address.is_host() && a.mac_address.is_none());
        let a = parse_aap("192.0.2.5/32,fa:16:3e:00:00:09").unwrap();
        assert_eq!(a.ip_address.to_string(), "192.0.2.5");
        assert_eq!(a.mac_address.unwrap().to_string(), "fa:16:3e:00:00:09");
        assert_eq!(
            parse_aap("2001:db8::/64").unwrap().ip_address.to_string(),
            "2001:db8::/64"
        );
    }
}
