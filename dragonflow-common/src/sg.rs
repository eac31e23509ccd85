//! Security groups and connection tracking: the layouts the datapath and the agent share.
//!
//! ## How a packet is judged (cost independent of the number of rules)
//! Egress (from a VM, after port security) is judged at the sending port, ingress (to a
//! VM) at the receiving port (`policy::to_port`), each on its own chassis:
//! 1. **Conntrack** `df_ct_v1`, keyed by the port and the flow *as seen from the port*
//!    ([`CtKey`]: local/remote address and port), so both directions of a connection find
//!    the same entry. A hit whose `policy_gen` equals the chassis' policy generation passes
//!    (established, reply, or ICMP error related to it). A hit from an older generation is
//!    re-judged once against the rules in the direction that created it (that is how a
//!    removed rule cuts established flows at their next packet) and refreshed or deleted.
//! 2. **Identity** of the remote address: exact host address in `df_ident_v1` (hash), on
//!    a miss the longest prefix in `df_ident_lpm_v1`; neither → [`IDENT_WORLD`]. An
//!    identity stands for the *set* of selectors (remote groups, rule prefixes) that
//!    contain the address; the agent computes these sets, so one lookup is enough.
//! 3. **Policy** `df_policy_v1` (LPM): ([`PolicyKey`]: port, identity, direction, protocol,
//!    destination port) — then the same with [`ident_any`]`(family)` (rules without a
//!    remote, per family: an IPv6 packet never matches an IPv4 rule). Every
//!    rule is an allow (Neutron has no deny), so there is no precedence to resolve: any
//!    match allows. Port ranges are split by the agent into prefix-aligned blocks; a rule
//!    for any protocol stops the prefix before `proto`.
//! 4. New flow allowed → a conntrack entry is created (TCP: only by a SYN; see
//!    [`CT_TCP_SYN_SENT`]). Denied → dropped as `sg_denied` in the judging direction.
//!
//! Exempt from security groups (port security vets them, Neutron allows them): ARP, IPv6
//! neighbour discovery/MLD/RS, DHCP and DHCPv6 client↔server.

/// No selector contains the address.
pub const IDENT_WORLD: u32 = 0;
/// In a [`PolicyKey`]: an IPv4 rule without a remote (any IPv4 address).
///
/// The "any" identity carries the family because the policy key has no ethertype: a
/// single `IDENT_ANY` would let an IPv6 packet match an IPv4-only rule (Neutron's
/// default group allows egress per ethertype). Identities the agent allocates for
/// addresses are per family already (an identity is a (family, selector set)), so only
/// "any" needs this. The datapath looks up [`ident_any`]`(family)` after the identity.
pub const IDENT_ANY_V4: u32 = u32::MAX;
/// In a [`PolicyKey`]: an IPv6 rule without a remote (any IPv6 address).
pub const IDENT_ANY_V6: u32 = u32::MAX - 1;
/// Identities the agent allocates for selector sets are below this.
pub const IDENT_MAX_ALLOCATED: u32 = u32::MAX - 2;

/// The "any" identity of a family ([`crate::addr::FAMILY_V4`] / [`crate::addr::FAMILY_V6`]).
#[inline(always)]
pub const fn ident_any(family: u8) -> u32 {
    if family == crate::addr::FAMILY_V6 {
        IDENT_ANY_V6
    } else {
        IDENT_ANY_V4
    }
}

/// Key of `df_ident_v1` (exact host address) and data part of the `df_ident_lpm_v1` key
/// (prefix length = [`IDENT_FIXED_BITS`] + IP prefix length).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IdentKey {
    /// [`crate::addr::FAMILY_V4`] or [`crate::addr::FAMILY_V6`].
    pub family: u8,
    pub _pad: [u8; 3],
    /// IPv4 in the first 4 bytes (network order), rest zero; or the IPv6 address.
    pub ip: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<IdentKey>() == 20);
pub const IDENT_FIXED_BITS: u32 = 32;
const _: () = assert!(core::mem::offset_of!(IdentKey, ip) * 8 == IDENT_FIXED_BITS as usize);

/// [`PolicyKey::dir`]: traffic leaving the VM (Neutron `egress`).
pub const DIR_EGRESS: u8 = 1;
/// Traffic entering the VM (Neutron `ingress`).
pub const DIR_INGRESS: u8 = 2;

/// Data part of the `df_policy_v1` LPM key. Prefix length:
/// - any protocol: [`POLICY_PROTO_BITS`];
/// - a protocol, every port (or ICMP any type): [`POLICY_PORT_BITS`];
/// - a port block of 2^k ports: `POLICY_PORT_BITS + 16 - k`;
/// - ICMP type: `POLICY_PORT_BITS + 8`; type and code: `POLICY_PORT_BITS + 16`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PolicyKey {
    /// The judged port's tap ifindex.
    pub ifindex: u32,
    /// Identity of the remote address, or [`ident_any`] of its family.
    pub ident: u32,
    /// [`DIR_EGRESS`] or [`DIR_INGRESS`].
    pub dir: u8,
    /// IP protocol number (TCP 6, UDP 17, ICMP 1, ICMPv6 58, …), IPv4 and IPv6 alike:
    /// ethertype is part of the identity (an IPv4 address never matches an IPv6 rule).
    pub proto: u8,
    /// Destination port, network byte order (big-endian bytes); ICMP: `[type, code]`.
    pub dport: [u8; 2],
}
const _: () = assert!(core::mem::size_of::<PolicyKey>() == 12);
/// Bits before `proto`: ifindex, ident, dir.
pub const POLICY_PROTO_BITS: u32 = 72;
/// Bits before `dport`.
pub const POLICY_PORT_BITS: u32 = 80;
const _: () = assert!(core::mem::offset_of!(PolicyKey, proto) * 8 == POLICY_PROTO_BITS as usize);
const _: () = assert!(core::mem::offset_of!(PolicyKey, dport) * 8 == POLICY_PORT_BITS as usize);

/// Value of `df_policy_v1`: an allow. `rule` is a hash of the rule id that produced the
/// entry (debugging: `dfctl`/`/state` show it), never used by the datapath.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PolicyValue {
    pub rule: u32,
}
const _: () = assert!(core::mem::size_of::<PolicyValue>() == 4);

/// Key of `df_ct_v1`: one connection of one port, oriented from the port (local =
/// the VM's side). Ports are in network byte order as in the packet. ICMP echo: the
/// identifier is `lport` when the VM sent the request, `rport` when it received it, so
/// a ping in each direction with the same id are two flows (docs/THREATS.md, row 14).
/// Protocols without ports: both 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CtKey {
    pub ifindex: u32,
    pub family: u8,
    pub proto: u8,
    pub lport: u16,
    pub rport: u16,
    pub _pad: u16,
    pub local: [u8; 16],
    pub remote: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<CtKey>() == 44);

/// [`CtValue::origin`]: the VM opened the flow (an egress rule allowed it).
pub const CT_ORIGIN_EGRESS: u8 = DIR_EGRESS;
/// The remote opened it (an ingress rule allowed it).
pub const CT_ORIGIN_INGRESS: u8 = DIR_INGRESS;

/// [`CtValue::state`]: TCP, SYN seen from the origin, no answer yet.
pub const CT_TCP_SYN_SENT: u8 = 1;
/// TCP, the other side answered.
pub const CT_TCP_ESTABLISHED: u8 = 2;
/// TCP, a FIN was seen.
pub const CT_TCP_CLOSING: u8 = 3;
/// TCP, a RST was seen, or FINs both ways.
pub const CT_TCP_CLOSED: u8 = 4;
/// UDP / ICMP / other: only the origin has sent.
pub const CT_UNREPLIED: u8 = 5;
/// UDP / ICMP / other: the other side answered.
pub const CT_REPLIED: u8 = 6;

/// Value of `df_ct_v1`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtValue {
    /// CLOCK_MONOTONIC time of the last packet, as the datapath reads it
    /// (bpf_ktime_get_coarse_ns: the coarse clock, at most a tick behind, is enough for
    /// second timeouts and cheaper per packet); refreshed at most every
    /// [`CT_REFRESH_NS`] to keep the cache line quiet.
    pub last_seen_ns: u64,
    /// `ChassisConfig::policy_gen` when the entry was last judged against the rules.
    pub policy_gen: u32,
    /// `CT_*` state.
    pub state: u8,
    /// [`CT_ORIGIN_EGRESS`] or [`CT_ORIGIN_INGRESS`].
    pub origin: u8,
    /// `CT_F_*` (was padding: entries written before it existed read as 0).
    pub flags: u16,
}
const _: () = assert!(core::mem::size_of::<CtValue>() == 16);

/// [`CtValue::flags`]: the entry is counted in its port's conntrack quota (see
/// [`crate::limits`]); only the deletion of such an entry is counted.
pub const CT_F_COUNTED: u16 = 1 << 0;

pub const CT_REFRESH_NS: u64 = 1_000_000_000;

/// How long an entry lives without packets, by state (seconds). Close to Cilium's
/// defaults; the agent's garbage collector and the datapath use the same table.
pub const fn ct_timeout_secs(state: u8) -> u64 {
    match state {
        CT_TCP_SYN_SENT => 60,
        CT_TCP_ESTABLISHED => 21_600,
        CT_TCP_CLOSING => 60,
        CT_TCP_CLOSED => 10,
        CT_UNREPLIED => 30,
        CT_REPLIED => 180,
        _ => 0,
    }
}

/// Key of `df_frag_v1`: the fragments of one IP datagram, seen by one port in one
/// direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FragKey {
    pub ifindex: u32,
    pub dir: u8,
    pub family: u8,
    pub proto: u8,
    pub _pad: u8,
    /// IPv4 identification (16 bits) or IPv6 fragment header identification.
    pub id: u32,
    pub src: [u8; 16],
    pub dst: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<FragKey>() == 44);

/// Value of `df_frag_v1`: what the first fragment carried, for the later ones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FragValue {
    /// L4 ports of the first fragment (network order), as the conntrack key uses them
    /// (ICMP echo: the identifier, see [`CtKey`]).
    pub sport: u16,
    pub dport: u16,
    /// Bytes of L4 data the first fragment carried: a later fragment starting before
    /// this overlaps it (RFC 1858) and is dropped.
    pub first_len: u16,
    /// The first fragment's [`PolicyKey::dport`] (network order; ICMP: `[type, code]`),
    /// for judging later fragments by the rules.
    pub rule_port: u16,
    pub last_seen_ns: u64,
}
const _: () = assert!(core::mem::size_of::<FragValue>() == 16);

/// Fragment entries older than this are ignored (and aged out of the LRU).
pub const FRAG_TIMEOUT_NS: u64 = 30_000_000_000;
