//! Records the validation tests share.

use super::{error::ValidationError, parse::parse_aap, rules::ValidationOptions, *};

pub(crate) fn port() -> LPort {
    serde_json::from_str(
        r#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01","fixed_ips":["192.0.2.11"]}"#,
    )
    .unwrap()
}

pub(crate) fn ls() -> LSwitch {
    LSwitch {
        id: "ls1".into(),
        name: "net".into(),
        segmentation_id: 100,
        mtu: 1450,
        aap_mode: None,
    }
}

pub(crate) fn subnet(id: &str, cidr: &str, gw: Option<&str>) -> Subnet {
    let cidr: IpPrefix = cidr.parse().unwrap();
    Subnet {
        id: id.into(),
        lswitch: "ls1".into(),
        ip_version: if cidr.addr.is_ipv4() { 4 } else { 6 },
        cidr,
        gateway_ip: gw.map(|g| g.parse().unwrap()),
    }
}

pub(crate) fn opts() -> ValidationOptions {
    ValidationOptions::default()
}

pub(crate) fn aap(s: &str) -> AllowedAddressPair {
    parse_aap(s).unwrap()
}

pub(crate) fn with_aaps(list: &[&str]) -> LPort {
    let mut p = port();
    p.allowed_address_pairs = list.iter().map(|s| aap(s)).collect();
    p
}

#[track_caller]
pub(crate) fn msg(r: Result<(), ValidationError>) -> String {
    r.expect_err("expected a validation error").to_string()
}

pub(crate) fn rule(json: &str) -> SecGroupRule {
    serde_json::from_str(json).unwrap()
}

pub(crate) fn group(rules: Vec<SecGroupRule>) -> SecGroup {
    SecGroup {
        id: "sg1".into(),
        name: "web".into(),
        rules,
    }
}

pub(crate) fn rport(id: &str, ls: &str, mac: &str, ip: &str) -> LRouterPort {
    LRouterPort {
        id: id.into(),
        lswitch: ls.into(),
        mac: mac.parse().unwrap(),
        ip: ip.parse().unwrap(),
        extra_ips: vec![],
    }
}
