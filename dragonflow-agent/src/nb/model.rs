//! NB objects as stored in etcd. Keys: `<prefix><kind>/<id>` (see [`Kind`]).
//! Validation (Neutron's rules) lives in `rules/` (per object), `refs.rs` (referential) and `decode.rs`; these types only describe shape.

use std::net::IpAddr;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{IpPrefix, MacAddr};

/// How traffic for a shared allowed-address-pair IP is forwarded (the blueprint's two ways).
/// The same spelling in etcd (serde), on the command line and in the TOML file (clap).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    Serialize,
    Deserialize,
    JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum AapMode {
    /// To every port that lists the IP.
    #[default]
    Broadcast,
    /// Only to the port detected as active (GARP / ARP reply seen in the datapath).
    Detection,
}

/// `chassis/<name>`: one hypervisor, written by its agent under an etcd lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Chassis {
    pub name: String,
    /// Underlay address VXLAN tunnels to this chassis are sent to.
    pub tunnel_ip: IpAddr,
    #[serde(default)]
    pub aap_mode: AapMode,
    /// Agent version.
    #[serde(default)]
    pub version: String,
    /// The agent instance that owns this record (see `instance`): another agent with the
    /// same chassis name refuses to start while this record is alive.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub instance: String,
}

/// `lswitch/<id>`: a logical switch (Neutron network).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LSwitch {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// VXLAN VNI (1..=16777215); also the network key in the datapath.
    pub segmentation_id: u32,
    /// MTU of the network (VM side); default 1450 leaves room for VXLAN on a 1500 underlay.
    #[serde(default = "default_mtu")]
    pub mtu: u16,
    /// Per-network override of the agent's `aap_mode`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aap_mode: Option<AapMode>,
}

pub const fn default_mtu() -> u16 {
    1450
}

/// `subnet/<id>`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Subnet {
    pub id: String,
    pub lswitch: String,
    pub cidr: IpPrefix,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway_ip: Option<IpAddr>,
    /// 4 or 6; must match `cidr`.
    pub ip_version: u8,
}

/// One allowed address pair (Neutron `allowed_address_pairs` entry).
#[derive(
    Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, JsonSchema,
)]
pub struct AllowedAddressPair {
    /// An IP (a /32 or /128 host prefix) or a CIDR.
    pub ip_address: IpPrefix,
    /// Defaults to the port's MAC when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_address: Option<MacAddr>,
}

/// `lport/<id>`: a logical port (Neutron port).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LPort {
    pub id: String,
    pub lswitch: String,
    pub mac: MacAddr,
    #[serde(default)]
    pub fixed_ips: Vec<IpAddr>,
    #[serde(default)]
    pub allowed_address_pairs: Vec<AllowedAddressPair>,
    #[serde(default = "default_true")]
    pub port_security_enabled: bool,
    #[serde(default)]
    pub security_groups: Vec<String>,
    /// Binding: the chassis hosting the VM (None = unbound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis: Option<String>,
    /// Binding: the tap device name on that chassis (default: `tap` + first 11 chars of id).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ifname: Option<String>,
    #[serde(default)]
    pub device_owner: String,
    /// Neutron's `admin_state_up`: false = the port's traffic is dropped (and counted) and
    /// its status reported `admin-down`. Records written before the field read as up, and
    /// an up port is written without it, exactly as before (older readers see no change).
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    // schemars leaves a default out when it would not be serialised; writers need it.
    #[schemars(extend("default" = true))]
    pub admin_state_up: bool,
}

const fn default_true() -> bool {
    true
}

const fn is_true(b: &bool) -> bool {
    *b
}

impl LPort {
    /// The tap name on the hypervisor: the binding's `ifname`, else Neutron's convention
    /// (`tap` + the first 11 characters of the port id, within IFNAMSIZ).
    pub fn tap_name(&self) -> String {
        match &self.ifname {
            Some(n) => n.clone(),
            None => format!("tap{}", self.id.chars().take(11).collect::<String>()),
        }
    }

    /// The MAC an allowed address pair is used with.
    pub fn aap_mac(&self, aap: &AllowedAddressPair) -> MacAddr {
        aap.mac_address.unwrap_or(self.mac)
    }
}

/// `lrouter/<id>`: a distributed logical router (Neutron router). Every chassis routes
/// between its interfaces' networks locally (README: "How a packet flows").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LRouter {
    pub id: String,
    #[serde(default)]
    pub name: String,
    /// Interfaces, at most one per lswitch.
    #[serde(default)]
    pub ports: Vec<LRouterPort>,
}

/// One router interface: the router's MAC and addresses on one lswitch.
///
/// An interface carries one address per family at most: an IPv4 and an IPv6 address on a
/// dual-stack network (Neutron's two subnets on one network). The first address is `ip`,
/// the other `extra_ips`; records written before dual stack (only `ip`) read unchanged,
/// and a single-address interface is written exactly as before (no `extra_ips` key), so
/// older readers still see its first address. Use [`LRouterPort::addrs`] to visit all.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct LRouterPort {
    pub id: String,
    pub lswitch: String,
    pub mac: MacAddr,
    /// The (first) interface address with the prefix length of its subnet
    /// (`192.0.2.1/24`, `2001:db8:1::1/64`): the connected route is the prefix, the
    /// address answers ARP/ND and ping.
    pub ip: IpPrefix,
    /// Further addresses of the interface, same form as `ip`; with the validation's
    /// one-per-family rule, at most one (the other family's).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra_ips: Vec<IpPrefix>,
}

impl LRouterPort {
    /// Every address of the interface: `ip`, then `extra_ips`.
    pub fn addrs(&self) -> impl Iterator<Item = &IpPrefix> {
        std::iter::once(&self.ip).chain(&self.extra_ips)
    }
}

/// `activeport/<lswitch>/<ip>`: the port detected as holding a shared allowed-address-pair
/// IP (the detection way, see the README). Written by the agent of the chassis hosting that
/// port, under its lease (a dead chassis loses its claims), with an etcd transaction that
/// compares the key's mod_revision; read by every agent, which points L2, L3 and the
/// ARP/ND responder at `port`/`mac`. Not an NB object operators write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct ActivePort {
    pub lswitch: String,
    pub ip: IpAddr,
    /// The lport now holding the IP.
    pub port: String,
    /// The MAC the holder uses for the IP (its AAP MAC, e.g. a VRRP virtual MAC).
    pub mac: MacAddr,
    /// Chassis whose agent made the claim.
    pub chassis: String,
    /// When the claim was made (Unix time, ms).
    pub since_ms: u64,
    /// Why: `garp`, `arp_reply`, `unsolicited_na`, …
    pub reason: String,
}

pub const ACTIVE_PORT_SEGMENT: &str = "activeport";

/// `portstatus/<lport id>`: what the datapath of the chassis hosting a port does with it,
/// written by that chassis' agent under its lease (a dead chassis' records vanish with
/// it) and read by the Neutron driver, which sets the Neutron port ACTIVE only for
/// `attached` (docs/neutron.md: "Port status"). Not an NB object operators write.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PortStatus {
    /// The chassis whose agent wrote the record; a reader ignores a record from a chassis
    /// the port is not bound to (a stale one from before a migration).
    pub chassis: String,
    pub state: PortState,
    /// When the port entered `state`, RFC 3339 in UTC (`2026-12-03T16:52:29Z`).
    pub since: String,
    /// Human-readable detail, e.g. why an attach failed; empty for `attached`.
    #[serde(default)]
    pub reason: String,
}

/// The states of a [`PortStatus`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum PortState {
    /// The tap exists and the port's programs and map entries are installed: port
    /// security, security groups and forwarding are enforced.
    Attached,
    /// The tap exists but the agent could not install the port's current policy (e.g. a
    /// map is full): its traffic is dropped rather than passed unchecked.
    FailClosed,
    /// The tap exists but attaching the programs failed.
    AttachFailed,
    /// `admin_state_up` is false: the port's traffic is dropped and counted.
    AdminDown,
}

pub const PORT_STATUS_SEGMENT: &str = "portstatus";

/// Each local port's [`PortState`] and its reason, by lport id, as the controller sees
/// them; the port status task turns them into [`PortStatus`] records. A port whose tap
/// does not exist yet has none.
pub type PortStates = std::collections::BTreeMap<String, (PortState, String)>;

/// `secgroup/<id>`: a security group (Neutron `security_group`): allow rules only; a
/// port's groups together say what it may send and receive (see `crate::desired::secgroups`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct SecGroup {
    pub id: String,
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub rules: Vec<SecGroupRule>,
}

/// One rule of a [`SecGroup`] (Neutron `security_group_rule`), in Neutron's field names.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub struct SecGroupRule {
    pub id: String,
    pub direction: RuleDirection,
    pub ethertype: EtherType,
    /// `None` = any protocol; else a name (`tcp`, `udp`, `icmp`, `icmpv6`, …) or a number
    /// `"0"`..`"255"` (see `protocol::parse_protocol`).
    #[serde(default)]
    pub protocol: Option<String>,
    /// TCP/UDP: first port of the range; ICMP: the type.
    #[serde(default)]
    pub port_range_min: Option<u32>,
    /// TCP/UDP: last port of the range; ICMP: the code.
    #[serde(default)]
    pub port_range_max: Option<u32>,
    /// The remote side's addresses; at most one of this and `remote_group_id`; neither
    /// means any address of the rule's ethertype.
    #[serde(default)]
    pub remote_ip_prefix: Option<IpPrefix>,
    /// The remote side is any member of this group (fixed IPs and allowed address pairs
    /// of every port listing it).
    #[serde(default)]
    pub remote_group_id: Option<String>,
}

/// Direction of a security-group rule, seen from the VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum RuleDirection {
    /// Traffic to the VM.
    Ingress,
    /// Traffic from the VM.
    Egress,
}

impl RuleDirection {
    pub const fn as_str(self) -> &'static str {
        match self {
            RuleDirection::Ingress => "ingress",
            RuleDirection::Egress => "egress",
        }
    }
}

impl TryFrom<String> for RuleDirection {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ingress" => Ok(RuleDirection::Ingress),
            "egress" => Ok(RuleDirection::Egress),
            _ => Err(format!("direction {s:?} is invalid: use ingress or egress")),
        }
    }
}

/// Spelled as Neutron writes it; the decoder also accepts other letter cases.
impl JsonSchema for RuleDirection {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "RuleDirection".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": ["ingress", "egress"] })
    }
}

impl From<RuleDirection> for String {
    fn from(d: RuleDirection) -> String {
        d.as_str().to_string()
    }
}

/// Address family of a security-group rule (Neutron spells it `IPv4` / `IPv6`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EtherType {
    IPv4,
    IPv6,
}

impl EtherType {
    pub const fn as_str(self) -> &'static str {
        match self {
            EtherType::IPv4 => "IPv4",
            EtherType::IPv6 => "IPv6",
        }
    }
    /// The family of an address.
    pub const fn of(ip: &IpAddr) -> EtherType {
        match ip {
            IpAddr::V4(_) => EtherType::IPv4,
            IpAddr::V6(_) => EtherType::IPv6,
        }
    }
}

impl TryFrom<String> for EtherType {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "ipv4" => Ok(EtherType::IPv4),
            "ipv6" => Ok(EtherType::IPv6),
            _ => Err(format!("ethertype {s:?} is invalid: use IPv4 or IPv6")),
        }
    }
}

/// Spelled as Neutron writes it; the decoder also accepts other letter cases.
impl JsonSchema for EtherType {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "EtherType".into()
    }
    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({ "type": "string", "enum": ["IPv4", "IPv6"] })
    }
}

impl From<EtherType> for String {
    fn from(e: EtherType) -> String {
        e.as_str().to_string()
    }
}

/// Object kinds and their etcd key segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Chassis,
    LSwitch,
    Subnet,
    LPort,
    LRouter,
    SecGroup,
}

impl Kind {
    pub const ALL: [Kind; 6] = [
        Kind::Chassis,
        Kind::LSwitch,
        Kind::Subnet,
        Kind::LPort,
        Kind::LRouter,
        Kind::SecGroup,
    ];

    pub const fn segment(self) -> &'static str {
        match self {
            Kind::Chassis => "chassis",
            Kind::LSwitch => "lswitch",
            Kind::Subnet => "subnet",
            Kind::LPort => "lport",
            Kind::LRouter => "lrouter",
            Kind::SecGroup => "secgroup",
        }
    }

    pub fn from_segment(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.segment() == s)
    }
}

pub const DEFAULT_PREFIX: &str = "/dragonflow/";

/// `<prefix><kind>/<id>`.
pub fn key(prefix: &str, kind: Kind, id: &str) -> String {
    format!("{prefix}{}/{id}", kind.segment())
}

/// Splits `<prefix><kind>/<id>` back into its parts; `None` for keys of other kinds.
pub fn parse_key<'a>(prefix: &str, key: &'a str) -> Option<(Kind, &'a str)> {
    let rest = key.strip_prefix(prefix)?;
    let (seg, id) = rest.split_once('/')?;
    Some((Kind::from_segment(seg)?, id))
}
