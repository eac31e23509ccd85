//! Neutron's per-object rules for NB objects, each with its own error message: they look at
//! one record only; the agent applies them to every record it reads ([`super::decode`]).
//! The referential rules, which need a record's neighbours, are in [`super::refs`].

use std::net::{IpAddr, Ipv4Addr};

use serde::{Deserialize, Serialize};

use super::{IpPrefix, error::ValidationError};

mod lport;
mod lrouter;
mod network;
mod secgroup;

pub use lport::validate_lport;
pub use lrouter::{validate_lrouter, validate_lrouter_port};
pub use network::{validate_chassis, validate_lswitch, validate_subnet};
pub use secgroup::{validate_secgroup, validate_secgroup_rule};

/// Neutron's default for `max_allowed_address_pairs`.
pub const DEFAULT_MAX_ALLOWED_ADDRESS_PAIRS: usize = 10;
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// Smallest MTU: the IPv4 minimum every link must carry (RFC 791).
pub const MIN_MTU: u16 = 68;
/// Largest MTU: common jumbo-frame size; with the 50-byte VXLAN overhead it still fits the
/// 9216-byte frames most NICs and switches accept on the underlay.
pub const MAX_MTU: u16 = 9000;
/// IPv6 needs links of at least 1280 bytes (RFC 8200 §5); Neutron refuses IPv6 subnets on
/// smaller networks.
pub const IPV6_MIN_MTU: u16 = 1280;
/// Linux `IFNAMSIZ` minus the terminating NUL.
pub const MAX_IFNAME_LEN: usize = 15;
/// Upper bound for ids and names kept in etcd keys; generous (Neutron uses 36-char UUIDs
/// and 255-char names) but bounded.
pub const MAX_ID_LEN: usize = 255;

/// Knobs of the validation, as in Neutron's server configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ValidationOptions {
    /// Most allowed address pairs a port may have (Neutron's `max_allowed_address_pairs`,
    /// default 10). Each pair costs map entries on every chassis hosting the network.
    pub max_allowed_address_pairs: usize,
    /// Accept an allowed address pair of `0.0.0.0/0` or `::/0`. Off by default: such a
    /// pair lets the port send from, answer ARP for and be included in remote security
    /// groups under every address, which turns off anti-spoofing for that port and lets it
    /// claim any other port's IP (docs/THREATS.md, row 18). Use
    /// `port_security_enabled=false` when that is really what is meant.
    pub allow_any_aap: bool,
}

impl ValidationOptions {
    /// The policy knobs off (no pair limit, `0.0.0.0/0` accepted); every structural rule
    /// still applies. For displaying what is stored, not for deciding what to enforce.
    pub fn permissive() -> Self {
        Self {
            max_allowed_address_pairs: usize::MAX,
            allow_any_aap: true,
        }
    }
}

impl Default for ValidationOptions {
    fn default() -> Self {
        Self {
            max_allowed_address_pairs: DEFAULT_MAX_ALLOWED_ADDRESS_PAIRS,
            allow_any_aap: false,
        }
    }
}

/// An id used as an etcd key segment (`lport/<id>`): non-empty, no `/` (it would shift the
/// key's segments), no whitespace or control characters (they do not survive a shell or a
/// log line), at most [`MAX_ID_LEN`] bytes.
pub fn check_id(what: &'static str, id: &str) -> Result<(), ValidationError> {
    let reason = if id.is_empty() {
        "it must not be empty"
    } else if id.len() > MAX_ID_LEN {
        "it must be at most 255 bytes"
    } else if id.contains('/') {
        "it must not contain '/' (ids are etcd key segments)"
    } else if id.chars().any(|c| c.is_whitespace() || c.is_control()) {
        "it must not contain whitespace or control characters"
    } else {
        return Ok(());
    };
    Err(ValidationError::InvalidId {
        what,
        id: id.to_string(),
        reason,
    })
}

/// Linux's `dev_valid_name()`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
pub(super) fn ifname_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("it must not be empty")
    } else if name.len() > MAX_IFNAME_LEN {
        Some("it must be at most 15 bytes (IFNAMSIZ - 1)")
    } else if name == "." || name == ".." {
        Some("'.' and '..' are reserved")
    } else if name.contains('/') || name.contains(':') {
        Some("it must not contain '/' or ':'")
    } else if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        Some("it must not contain whitespace or control characters")
    } else {
        None
    }
}

pub fn check_ifname(name: &str) -> Result<(), ValidationError> {
    match ifname_problem(name) {
        None => Ok(()),
        Some(reason) => Err(ValidationError::InvalidIfname {
            ifname: name.to_string(),
            reason,
        }),
    }
}

pub(super) fn check_aap_host_bits(p: &IpPrefix) -> Result<(), ValidationError> {
    if p.network() != p.addr {
        return Err(ValidationError::AapHostBitsSet {
            given: format!("{}/{}", p.addr, p.len),
            network: format!("{}/{}", p.network(), p.len),
        });
    }
    Ok(())
}

pub(super) fn check_cidr_host_bits(p: &IpPrefix) -> Result<(), ValidationError> {
    if p.network() != p.addr {
        return Err(ValidationError::CidrHostBitsSet {
            given: format!("{}/{}", p.addr, p.len),
            network: format!("{}/{}", p.network(), p.len),
        });
    }
    Ok(())
}

/// Addresses that can never be a unicast source (so neither a port's own address nor an
/// allowed one).
pub(super) fn unusable_source(ip: &IpAddr) -> Option<&'static str> {
    if ip.is_unspecified() {
        Some("the unspecified address")
    } else if ip.is_loopback() {
        Some("a loopback address")
    } else if ip.is_multicast() {
        Some("a multicast address")
    } else if *ip == IpAddr::V4(Ipv4Addr::BROADCAST) {
        Some("the broadcast address")
    } else {
        None
    }
}

/// A single-address AAP is judged like a fixed IP; a CIDR is refused when it lies wholly
/// inside the multicast or loopback blocks (a CIDR such as 0.0.0.0/1 that merely starts at
/// a reserved address is fine; /0 is judged separately).
pub(super) fn unusable_aap(p: &IpPrefix) -> Option<&'static str> {
    if p.is_host() {
        return unusable_source(&p.addr);
    }
    let inside = |block: &str| {
        let b: IpPrefix = block.parse().expect("constant prefix");
        b.len <= p.len && b.contains(&p.addr)
    };
    if inside("224.0.0.0/4") || inside("ff00::/8") {
        Some("a multicast prefix")
    } else if inside("127.0.0.0/8") {
        Some("a loopback prefix")
    } else {
        None
    }
}
