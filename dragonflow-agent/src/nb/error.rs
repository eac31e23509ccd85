//! Why an NB record is refused: the rule it breaks ([`ValidationError`]) or why it could not
//! be read at all ([`DecodeError`]).

use std::net::IpAddr;

use super::{
    IpPrefix, MacAddr,
    conflicts::PortConflict,
    rules::{IPV6_MIN_MTU, MAX_ID_LEN, MAX_MTU, MAX_VNI, MIN_MTU},
};

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
