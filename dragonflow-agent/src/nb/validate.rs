//! Neutron's validation rules for NB objects, each with its own error message.
//!
//! Two layers:
//! - per-object rules ([`validate_lport`], [`validate_lswitch`], [`validate_subnet`],
//!   [`validate_chassis`]) that look at one record only; the agent applies them to every
//!   record it reads ([`decode`]) so one malformed record is logged, counted and skipped
//!   instead of reaching the datapath;
//! - referential rules ([`validate_lport_refs`], [`validate_subnet_refs`]) that need the
//!   record's neighbours (its lswitch, subnets, other ports); the CLI applies them on
//!   create/update, as Neutron's API server does. The agent does not: a record that was
//!   valid when written must not become unreadable because a neighbour changed.
//!
//! The text parsers ([`parse_mac`], [`parse_aap`], …) turn operator input into model types
//! with the same messages, so the CLI and the decoder speak alike.

use std::{
    collections::HashSet,
    net::{IpAddr, Ipv4Addr},
};

use serde::{Deserialize, Serialize};

use super::{
    AllowedAddressPair, Chassis, EtherType, IpPrefix, Kind, LPort, LRouter, LRouterPort, LSwitch,
    MacAddr, SecGroup, SecGroupRule, Subnet,
    conflicts::{self, PortConflict},
};

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

/// A rule an NB object breaks. Messages do not name the object: callers prefix
/// `"<kind> <id>: "` (see [`DecodeError`] and the CLI).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ValidationError {
    #[error("{what} {id:?} is invalid: {reason}")]
    InvalidId {
        what: &'static str,
        id: String,
        reason: &'static str,
    },
    #[error("{value:?} is not a MAC address (expected six hex pairs like fa:16:3e:00:00:01)")]
    InvalidMac { value: String },
    #[error("MAC address {mac} is a multicast address; a port MAC must be unicast")]
    PortMacMulticast { mac: MacAddr },
    #[error("MAC address 00:00:00:00:00:00 is not a valid port MAC")]
    PortMacZero,
    #[error("fixed IP {value:?} is not an IP address")]
    InvalidFixedIp { value: String },
    #[error("fixed IP {ip} is {reason} and cannot be assigned to a port")]
    FixedIpNotUsable { ip: IpAddr, reason: &'static str },
    #[error("fixed IP {ip} is listed twice")]
    DuplicateFixedIp { ip: IpAddr },
    #[error("allowed address pair {value} is not an IP address or CIDR")]
    InvalidAapIp { value: String },
    #[error("allowed address pair {ip}: {value:?} is not a MAC address")]
    InvalidAapMac { ip: String, value: String },
    #[error("allowed address pair {given} has host bits set; did you mean {network}?")]
    AapHostBitsSet { given: String, network: String },
    #[error("allowed address pair {ip} is {reason} and cannot be a packet source")]
    AapAddressNotUsable { ip: IpPrefix, reason: &'static str },
    #[error("allowed address pair {ip}: MAC {mac} is a multicast address")]
    AapMacMulticast { ip: IpPrefix, mac: MacAddr },
    #[error("allowed address pair {ip}: MAC 00:00:00:00:00:00 is not valid")]
    AapMacZero { ip: IpPrefix },
    #[error("allowed address pair {ip},{mac} is listed twice")]
    DuplicateAap { ip: IpPrefix, mac: MacAddr },
    #[error(
        "allowed address pair {ip} would let the port claim every address; \
         it is refused unless allow_any_aap is set"
    )]
    AapMatchesAnyAddress { ip: IpPrefix },
    #[error("allowed address pairs require port security to be enabled")]
    AapRequiresPortSecurity,
    #[error(
        "{count} allowed address pairs exceed the maximum of {max} (max_allowed_address_pairs)"
    )]
    TooManyAaps { count: usize, max: usize },
    #[error("security groups ({groups}) need port security; remove them or enable port security")]
    SecurityGroupsWithoutPortSecurity { groups: String },
    #[error("security group {id} is listed twice")]
    DuplicateSecurityGroup { id: String },
    #[error("interface name {ifname:?} is invalid: {reason}")]
    InvalidIfname {
        ifname: String,
        reason: &'static str,
    },
    #[error(
        "the default tap name {tap:?} derived from the port id is not a valid interface \
         name ({reason}); set ifname"
    )]
    InvalidDerivedIfname { tap: String, reason: &'static str },
    #[error("device_owner is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    DeviceOwnerTooLong { len: usize },
    #[error(
        "segmentation_id {value} is out of range 1..={MAX_VNI} \
         (a 24-bit VXLAN VNI; 0 is reserved)"
    )]
    SegmentationIdOutOfRange { value: u32 },
    #[error(
        "mtu {value} is out of range {MIN_MTU}..={MAX_MTU} \
         (68 is the IPv4 minimum; 9000 plus VXLAN overhead must fit jumbo frames)"
    )]
    MtuOutOfRange { value: u16 },
    #[error("name is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    NameTooLong { len: usize },
    #[error("{value:?} is not a CIDR (expected e.g. 192.0.2.0/24 or 2001:db8::/64)")]
    InvalidCidr { value: String },
    #[error("cidr {given} has host bits set; did you mean {network}?")]
    CidrHostBitsSet { given: String, network: String },
    #[error("cidr {cidr} has prefix length 0; a subnet cannot span the whole address space")]
    CidrPrefixZero { cidr: IpPrefix },
    #[error("ip_version {value} is invalid; it must be 4 or 6")]
    InvalidIpVersion { value: u8 },
    #[error("ip_version {ip_version} does not match cidr {cidr}")]
    IpVersionMismatch { ip_version: u8, cidr: IpPrefix },
    #[error("gateway {value:?} is not an IP address")]
    InvalidGateway { value: String },
    #[error("gateway {gateway} is not inside cidr {cidr}")]
    GatewayOutsideCidr { gateway: IpAddr, cidr: IpPrefix },
    #[error("gateway {gateway} is the {which} address of {cidr}")]
    GatewayReserved {
        gateway: IpAddr,
        cidr: IpPrefix,
        which: &'static str,
    },
    #[error("tunnel_ip {ip} is {reason}")]
    TunnelIpNotUsable { ip: IpAddr, reason: &'static str },
    // Referential rules (need neighbours; see validate_lport_refs / validate_subnet_refs).
    #[error("lswitch {lswitch} does not exist")]
    LSwitchNotFound { lswitch: String },
    #[error("fixed IP {ip} is not in any subnet of lswitch {lswitch} ({subnets})")]
    FixedIpOutsideSubnets {
        ip: IpAddr,
        lswitch: String,
        subnets: String,
    },
    #[error("fixed IP {ip} is the gateway of subnet {subnet}")]
    FixedIpIsGateway { ip: IpAddr, subnet: String },
    /// The port collides with another port (same MAC, fixed IP or tap; see `conflicts`).
    #[error(transparent)]
    PortConflict(#[from] PortConflict),
    #[error("cidr {cidr} overlaps subnet {other} ({other_cidr}) on lswitch {lswitch}")]
    SubnetOverlap {
        cidr: IpPrefix,
        other: String,
        other_cidr: IpPrefix,
        lswitch: String,
    },
    #[error(
        "IPv6 subnet {cidr} needs an MTU of at least {IPV6_MIN_MTU}; lswitch {lswitch} has {mtu}"
    )]
    Ipv6MtuTooSmall {
        cidr: IpPrefix,
        lswitch: String,
        mtu: u16,
    },
    #[error(
        "lswitch mtu {mtu} is below {IPV6_MIN_MTU}, the IPv6 minimum, and it has IPv6 subnet {subnet}"
    )]
    MtuTooSmallForIpv6 { mtu: u16, subnet: String },
    // Routers.
    #[error("router interface {iface}: MAC {mac} is not a unicast MAC")]
    RouterMacNotUnicast { iface: String, mac: MacAddr },
    #[error(
        "router interface {iface}: ip {ip} needs the subnet's prefix length \
         (e.g. 192.0.2.1/24 or 2001:db8:1::1/64)"
    )]
    RouterIpNoPrefix { iface: String, ip: IpPrefix },
    #[error("router interface {iface}: ip {ip} is {reason}")]
    RouterIpNotUsable {
        iface: String,
        ip: IpPrefix,
        reason: &'static str,
    },
    #[error(
        "router interface {iface}: {ip} and {other} are both IPv{version}; an interface has at \
         most one address per family (one IPv4, one IPv6)"
    )]
    RouterIpFamilyTwice {
        iface: String,
        ip: IpPrefix,
        other: IpPrefix,
        version: u8,
    },
    #[error("router interface id {iface} is listed twice")]
    DuplicateRouterInterface { iface: String },
    #[error(
        "router already has interface {other} on lswitch {lswitch} (one interface per lswitch)"
    )]
    RouterLSwitchTwice { lswitch: String, other: String },
    #[error("router interfaces {iface} and {other} have the same MAC {mac}")]
    RouterMacTwice {
        iface: String,
        other: String,
        mac: MacAddr,
    },
    #[error("router interfaces {iface} and {other} have the same IP {ip}")]
    RouterIpTwice {
        iface: String,
        other: String,
        ip: IpAddr,
    },
    #[error(
        "router interface {iface}: ip {ip} is not a subnet of lswitch {lswitch} ({subnets}); \
         use an address inside one of them with its prefix length"
    )]
    RouterIpOutsideSubnets {
        iface: String,
        ip: IpPrefix,
        lswitch: String,
        subnets: String,
    },
    #[error(
        "router interface {iface}: {what} {value} is already used by {other} on lswitch {lswitch}"
    )]
    RouterAddressInUse {
        iface: String,
        what: &'static str,
        value: String,
        other: String,
        lswitch: String,
    },
    // Security groups.
    /// Wraps a rule's problem with the rule's id.
    #[error("rule {rule}: {source}")]
    SgRule {
        rule: String,
        #[source]
        source: Box<ValidationError>,
    },
    #[error("rule id {id} is listed twice")]
    SgRuleIdTwice { id: String },
    #[error("protocol {value:?} is invalid: {reason}")]
    SgProtocol { value: String, reason: &'static str },
    #[error("protocol {protocol} is IPv6 only; the rule's ethertype is IPv4")]
    SgProtocolNotIpv4 { protocol: String },
    #[error(
        "port_range_min/port_range_max need a protocol (tcp or udp for ports, icmp or icmpv6 \
         for type and code)"
    )]
    SgPortsWithoutProtocol,
    #[error(
        "protocol {protocol} has no ports we match: port_range_min/port_range_max apply to tcp \
         and udp (ports) and icmp/icmpv6 (type and code)"
    )]
    SgPortsNotMatched { protocol: String },
    #[error("{field} {value} is out of range 1..=65535")]
    SgPortOutOfRange { field: &'static str, value: u32 },
    #[error(
        "port_range_min and port_range_max go together for tcp/udp (the same value for one port)"
    )]
    SgPortRangeIncomplete,
    #[error("port_range_min {min} is greater than port_range_max {max}")]
    SgPortRangeInverted { min: u32, max: u32 },
    #[error("{field} {value} is out of range 0..=255 (ICMP {what})")]
    SgIcmpOutOfRange {
        field: &'static str,
        value: u32,
        what: &'static str,
    },
    #[error("port_range_max (ICMP code) needs port_range_min (ICMP type)")]
    SgIcmpCodeWithoutType,
    #[error("remote_ip_prefix and remote_group_id are mutually exclusive; give one or neither")]
    SgRemoteBoth,
    #[error("remote_ip_prefix {prefix} is not an {ethertype} prefix (the rule's ethertype)")]
    SgRemoteFamily { prefix: IpPrefix, ethertype: String },
    #[error("remote_ip_prefix {given} has host bits set; did you mean {network}?")]
    SgRemoteHostBits { given: String, network: String },
    #[error("security group {id} does not exist")]
    SecurityGroupNotFound { id: String },
    #[error("remote_group_id {id} does not exist")]
    RemoteGroupNotFound { id: String },
}

/// Why a record read from etcd was refused.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error("{kind} {id}: malformed JSON: {source}")]
    Json {
        kind: &'static str,
        id: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("{kind} {id}: {source}")]
    Invalid {
        kind: &'static str,
        id: String,
        #[source]
        source: Box<ValidationError>,
    },
    #[error("{kind} {key_id}: the record names itself {record_id:?}, not the id in its key")]
    KeyMismatch {
        kind: &'static str,
        key_id: String,
        record_id: String,
    },
}

impl DecodeError {
    /// The id taken from the record's key.
    pub fn id(&self) -> &str {
        match self {
            DecodeError::Json { id, .. } | DecodeError::Invalid { id, .. } => id,
            DecodeError::KeyMismatch { key_id, .. } => key_id,
        }
    }
}

/// Any NB object, as returned by [`decode`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NbObject {
    Chassis(Chassis),
    LSwitch(LSwitch),
    Subnet(Subnet),
    LPort(LPort),
    LRouter(LRouter),
    SecGroup(SecGroup),
}

impl NbObject {
    pub fn kind(&self) -> Kind {
        match self {
            NbObject::Chassis(_) => Kind::Chassis,
            NbObject::LSwitch(_) => Kind::LSwitch,
            NbObject::Subnet(_) => Kind::Subnet,
            NbObject::LPort(_) => Kind::LPort,
            NbObject::LRouter(_) => Kind::LRouter,
            NbObject::SecGroup(_) => Kind::SecGroup,
        }
    }
    pub fn id(&self) -> &str {
        match self {
            NbObject::Chassis(c) => &c.name,
            NbObject::LSwitch(o) => &o.id,
            NbObject::Subnet(o) => &o.id,
            NbObject::LPort(o) => &o.id,
            NbObject::LRouter(o) => &o.id,
            NbObject::SecGroup(o) => &o.id,
        }
    }
}

/// An NB record type: its kind, its id and its per-object rules.
pub trait NbRecord: Serialize + for<'de> Deserialize<'de> + Clone {
    const KIND: Kind;
    fn id(&self) -> &str;
    fn validate(&self, opts: &ValidationOptions) -> Result<(), ValidationError>;
    fn into_object(self) -> NbObject;
}

impl NbRecord for Chassis {
    const KIND: Kind = Kind::Chassis;
    fn id(&self) -> &str {
        &self.name
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_chassis(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::Chassis(self)
    }
}

impl NbRecord for LSwitch {
    const KIND: Kind = Kind::LSwitch;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lswitch(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::LSwitch(self)
    }
}

impl NbRecord for Subnet {
    const KIND: Kind = Kind::Subnet;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_subnet(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::Subnet(self)
    }
}

impl NbRecord for LPort {
    const KIND: Kind = Kind::LPort;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, opts: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lport(self, opts)
    }
    fn into_object(self) -> NbObject {
        NbObject::LPort(self)
    }
}

impl NbRecord for LRouter {
    const KIND: Kind = Kind::LRouter;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_lrouter(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::LRouter(self)
    }
}

impl NbRecord for SecGroup {
    const KIND: Kind = Kind::SecGroup;
    fn id(&self) -> &str {
        &self.id
    }
    fn validate(&self, _: &ValidationOptions) -> Result<(), ValidationError> {
        validate_secgroup(self)
    }
    fn into_object(self) -> NbObject {
        NbObject::SecGroup(self)
    }
}

/// Parses and validates one record read from etcd with default [`ValidationOptions`].
/// `id` is the id segment of its key (see [`super::parse_key`]); the record must name
/// itself the same.
pub fn decode(kind: Kind, id: &str, bytes: &[u8]) -> Result<NbObject, DecodeError> {
    decode_with(kind, id, bytes, &ValidationOptions::default())
}

/// [`decode`] with explicit options.
pub fn decode_with(
    kind: Kind,
    id: &str,
    bytes: &[u8],
    opts: &ValidationOptions,
) -> Result<NbObject, DecodeError> {
    Ok(match kind {
        Kind::Chassis => decode_as::<Chassis>(id, bytes, opts)?.into_object(),
        Kind::LSwitch => decode_as::<LSwitch>(id, bytes, opts)?.into_object(),
        Kind::Subnet => decode_as::<Subnet>(id, bytes, opts)?.into_object(),
        Kind::LPort => decode_as::<LPort>(id, bytes, opts)?.into_object(),
        Kind::LRouter => decode_as::<LRouter>(id, bytes, opts)?.into_object(),
        Kind::SecGroup => decode_as::<SecGroup>(id, bytes, opts)?.into_object(),
    })
}

/// [`decode_with`] for a statically known type.
pub fn decode_as<T: NbRecord>(
    id: &str,
    bytes: &[u8],
    opts: &ValidationOptions,
) -> Result<T, DecodeError> {
    let kind = T::KIND.segment();
    let obj: T = serde_json::from_slice(bytes).map_err(|source| DecodeError::Json {
        kind,
        id: id.to_string(),
        source,
    })?;
    if obj.id() != id {
        return Err(DecodeError::KeyMismatch {
            kind,
            key_id: id.to_string(),
            record_id: obj.id().to_string(),
        });
    }
    obj.validate(opts).map_err(|source| DecodeError::Invalid {
        kind,
        id: id.to_string(),
        source: Box::new(source),
    })?;
    Ok(obj)
}

// ---------------------------------------------------------------------------------------
// Text parsers (operator input)

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

// ---------------------------------------------------------------------------------------
// Per-object rules

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
fn ifname_problem(name: &str) -> Option<&'static str> {
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

fn check_aap_host_bits(p: &IpPrefix) -> Result<(), ValidationError> {
    if p.network() != p.addr {
        return Err(ValidationError::AapHostBitsSet {
            given: format!("{}/{}", p.addr, p.len),
            network: format!("{}/{}", p.network(), p.len),
        });
    }
    Ok(())
}

fn check_cidr_host_bits(p: &IpPrefix) -> Result<(), ValidationError> {
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
fn unusable_source(ip: &IpAddr) -> Option<&'static str> {
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
fn unusable_aap(p: &IpPrefix) -> Option<&'static str> {
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
/// [`validate_secgroup`]; an unparsable protocol reads as any.
pub fn rule_protocol(rule: &SecGroupRule) -> Option<u8> {
    rule.protocol
        .as_deref()
        .and_then(|p| parse_protocol(p, rule.ethertype).ok().flatten())
}

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

// ---------------------------------------------------------------------------------------
// Referential rules (create/update through the CLI / NB API)

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

    fn port() -> LPort {
        serde_json::from_str(
            r#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01","fixed_ips":["192.0.2.11"]}"#,
        )
        .unwrap()
    }
    fn ls() -> LSwitch {
        LSwitch {
            id: "ls1".into(),
            name: "net".into(),
            segmentation_id: 100,
            mtu: 1450,
            aap_mode: None,
        }
    }
    fn subnet(id: &str, cidr: &str, gw: Option<&str>) -> Subnet {
        let cidr: IpPrefix = cidr.parse().unwrap();
        Subnet {
            id: id.into(),
            lswitch: "ls1".into(),
            ip_version: if cidr.addr.is_ipv4() { 4 } else { 6 },
            cidr,
            gateway_ip: gw.map(|g| g.parse().unwrap()),
        }
    }
    fn opts() -> ValidationOptions {
        ValidationOptions::default()
    }
    fn aap(s: &str) -> AllowedAddressPair {
        parse_aap(s).unwrap()
    }
    fn with_aaps(list: &[&str]) -> LPort {
        let mut p = port();
        p.allowed_address_pairs = list.iter().map(|s| aap(s)).collect();
        p
    }
    #[track_caller]
    fn msg(r: Result<(), ValidationError>) -> String {
        r.expect_err("expected a validation error").to_string()
    }

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

    fn rule(json: &str) -> SecGroupRule {
        serde_json::from_str(json).unwrap()
    }

    fn group(rules: Vec<SecGroupRule>) -> SecGroup {
        SecGroup {
            id: "sg1".into(),
            name: "web".into(),
            rules,
        }
    }

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

    #[test]
    fn secgroup_decoding() {
        let json =
            br#"{"id":"sg1","rules":[{"id":"r1","direction":"sideways","ethertype":"IPv4"}]}"#;
        let e = decode(Kind::SecGroup, "sg1", json).unwrap_err().to_string();
        assert!(
            e.starts_with("secgroup sg1: malformed JSON: direction \"sideways\" is invalid: use ingress or egress"),
            "{e}"
        );
        let json =
            br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv5"}]}"#;
        let e = decode(Kind::SecGroup, "sg1", json).unwrap_err().to_string();
        assert!(
            e.contains("ethertype \"IPv5\" is invalid: use IPv4 or IPv6"),
            "{e}"
        );
        let json = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
            "protocol":"tcp","port_range_min":22,"port_range_max":22}]}"#;
        let NbObject::SecGroup(g) = decode(Kind::SecGroup, "sg1", json).unwrap() else {
            panic!()
        };
        assert_eq!(rule_protocol(&g.rules[0]), Some(PROTO_TCP));
        // The record shape of the brief, nulls included.
        let v = serde_json::to_value(&g).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id":"sg1","name":"","rules":[{"id":"r1","direction":"ingress",
                "ethertype":"IPv4","protocol":"tcp","port_range_min":22,"port_range_max":22,
                "remote_ip_prefix":null,"remote_group_id":null}]})
        );
        assert_eq!(serde_json::from_value::<SecGroup>(v).unwrap(), g);
    }

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
    fn decoding() {
        let json = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"192.0.2.100"}]}"#;
        let NbObject::LPort(p) = decode(Kind::LPort, "p1", json).unwrap() else {
            panic!()
        };
        assert!(p.port_security_enabled);
        assert_eq!(p.aap_mac(&p.allowed_address_pairs[0]), p.mac);

        let e = decode(Kind::LPort, "p2", json).unwrap_err();
        assert!(matches!(e, DecodeError::KeyMismatch { .. }), "{e}");
        assert_eq!(e.id(), "p2");

        let e = decode(Kind::LPort, "p1", b"{not json").unwrap_err();
        assert!(matches!(e, DecodeError::Json { .. }));
        assert!(e.to_string().starts_with("lport p1: malformed JSON: "));

        let bad_ip = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"192.0.2.300"}]}"#;
        assert!(matches!(
            decode(Kind::LPort, "p1", bad_ip),
            Err(DecodeError::Json { .. })
        ));

        let insecure = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "port_security_enabled":false,
            "allowed_address_pairs":[{"ip_address":"192.0.2.100"}]}"#;
        let e = decode(Kind::LPort, "p1", insecure).unwrap_err();
        assert_eq!(
            e.to_string(),
            "lport p1: allowed address pairs require port security to be enabled"
        );

        let ls = br#"{"id":"ls1","segmentation_id":100}"#;
        let NbObject::LSwitch(s) = decode(Kind::LSwitch, "ls1", ls).unwrap() else {
            panic!()
        };
        assert_eq!(s.mtu, 1450);
        let e = decode(Kind::LSwitch, "ls1", br#"{"id":"ls1","segmentation_id":0}"#).unwrap_err();
        assert!(matches!(e, DecodeError::Invalid { .. }));

        let sn = br#"{"id":"s1","lswitch":"ls1","cidr":"192.0.2.0/24","ip_version":4}"#;
        assert_eq!(decode(Kind::Subnet, "s1", sn).unwrap().kind(), Kind::Subnet);
        let ch = br#"{"name":"hv1","tunnel_ip":"198.18.0.1"}"#;
        assert_eq!(decode(Kind::Chassis, "hv1", ch).unwrap().id(), "hv1");

        // Options reach the rules.
        let any = br#"{"id":"p1","lswitch":"ls1","mac":"fa:16:3e:00:00:01",
            "allowed_address_pairs":[{"ip_address":"0.0.0.0/0"}]}"#;
        assert!(decode(Kind::LPort, "p1", any).is_err());
        let o = ValidationOptions {
            allow_any_aap: true,
            ..opts()
        };
        decode_with(Kind::LPort, "p1", any, &o).unwrap();
    }

    #[test]
    fn serde_shape_round_trips() {
        let p = with_aaps(&["192.0.2.100", "198.51.100.0/24,fa:16:3e:00:00:99"]);
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(
            v["allowed_address_pairs"][0],
            serde_json::json!({"ip_address": "192.0.2.100"})
        );
        assert_eq!(
            v["allowed_address_pairs"][1],
            serde_json::json!({"ip_address": "198.51.100.0/24", "mac_address": "fa:16:3e:00:00:99"})
        );
        let back: LPort = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }

    #[test]
    fn keys() {
        assert_eq!(
            super::super::key("/dragonflow/", Kind::LPort, "p1"),
            "/dragonflow/lport/p1"
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/subnet/s1"),
            Some((Kind::Subnet, "s1"))
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/activeport/ls1/x"),
            None
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/other/lport/p1"),
            None
        );
    }

    fn rport(id: &str, ls: &str, mac: &str, ip: &str) -> LRouterPort {
        LRouterPort {
            id: id.into(),
            lswitch: ls.into(),
            mac: mac.parse().unwrap(),
            ip: ip.parse().unwrap(),
            extra_ips: vec![],
        }
    }

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

    #[test]
    fn lrouter_decodes() {
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24"}]}"#;
        let NbObject::LRouter(r) = decode(Kind::LRouter, "r1", json).unwrap() else {
            panic!("not a router")
        };
        assert_eq!(r.ports[0].ip.len, 24);
        assert!(
            r.ports[0].extra_ips.is_empty(),
            "records without extra_ips still read"
        );
        assert!(decode(Kind::LRouter, "r2", json).is_err());
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24","extra_ips":["2001:db8:1::1/64"]}]}"#;
        let NbObject::LRouter(r) = decode(Kind::LRouter, "r1", json).unwrap() else {
            panic!("not a router")
        };
        assert_eq!(r.ports[0].addrs().count(), 2);
        let json = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"ls1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24","extra_ips":["192.0.2.2/24"]}]}"#;
        assert!(
            decode(Kind::LRouter, "r1", json)
                .unwrap_err()
                .to_string()
                .contains("at most one address per family")
        );
        assert_eq!(
            super::super::parse_key("/dragonflow/", "/dragonflow/lrouter/r1"),
            Some((Kind::LRouter, "r1"))
        );
    }
}
