//! Security groups, the agent's half (pure, like `reconcile`): from the NB snapshot and
//! the local programmed ports, the entries of `df_ident_v1`, `df_ident_lpm_v1` and
//! `df_policy_v1` as `dragonflow_common::sg` documents them.
//!
//! ## Selectors, members, identities
//! - A **selector** is what a rule of a local port names as its remote: a remote group, or
//!   a `remote_ip_prefix`. Only selectors used by the rules of ports programmed on this
//!   chassis are computed (identities are chassis-local). A `/0` prefix is "any address of
//!   the rule's family", like a rule without a remote.
//! - The **members** of a group are the fixed IPs, the single-IP allowed address pairs and
//!   the CIDR allowed address pairs of every port listing the group, bound or not, on any
//!   chassis and any network (Neutron/ipset semantics: by IP only; membership is NB state).
//! - Every member address or prefix and every rule prefix is an **entry** with the
//!   selectors that name it directly. Entries nest (a member inside a rule prefix, a host
//!   inside a CIDR AAP), so each entry carries the union of its own selectors and those of
//!   every entry containing it: the datapath's longest-prefix match then returns, for any
//!   address, exactly the set of selectors containing it (a longer entry containing the
//!   address would have been the match).
//! - The **identity** of an entry is a number for (family, that set); identities are per
//!   family, so a rule of one ethertype is only expanded over identities of its family.
//!   Numbers are kept across recomputations (see [`Identities`]).
//! - Host entries (/32, /128) go to the exact map `df_ident_v1`, the others to the LPM
//!   `df_ident_lpm_v1`; the datapath tries the exact one first.
//!
//! ## Policy entries
//! One rule of a local port becomes, per identity containing its selector (or the
//! family's [`ident_any`] without a remote), one LPM entry per port block: a port range is
//! split into prefix-aligned blocks; ICMP matches the type (and code) in `dport`; a rule
//! for any protocol stops the prefix before `proto`. Every entry is an allow.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::Arc,
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    sg::{
        IDENT_FIXED_BITS, IDENT_MAX_ALLOCATED, IDENT_WORLD, IdentKey, POLICY_PORT_BITS,
        POLICY_PROTO_BITS, PolicyKey, PolicyValue,
    },
};
use serde::Serialize;

pub use self::engine::{SgEngine, SgKeys, SgSummary};
use crate::{
    desired::reconcile::MapEntries,
    nb::{
        IpPrefix, LPort, NbSnapshot, SecGroupRule,
        protocol::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, rule_protocol},
    },
};

mod engine;

/// What a rule names as its remote (see the module documentation).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Selector {
    Group(String),
    Prefix(IpPrefix),
}

/// Key of the `df_ident_lpm_v1` trie: prefix length (including [`IDENT_FIXED_BITS`]) and
/// the data (host bits cleared).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct IdentLpmKey {
    pub prefix_len: u32,
    pub key: IdentKey,
}

/// Key of the `df_policy_v1` trie: prefix length and the data (bits past the prefix zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyLpmKey {
    pub prefix_len: u32,
    pub key: PolicyKey,
}

/// The security-group entries of a chassis.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SgEntries {
    pub ident: BTreeMap<IdentKey, u32>,
    pub ident_lpm: BTreeMap<IdentLpmKey, u32>,
    pub policy: BTreeMap<PolicyLpmKey, PolicyValue>,
}

/// A local port's security groups as computed (for /state).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SgPortView {
    pub lport: String,
    pub ifindex: u32,
    pub security_groups: Vec<String>,
    /// Rules of its groups (both directions).
    pub rules: usize,
    /// Entries in `df_policy_v1` for its tap.
    pub policy_entries: usize,
}

/// The result of [`compute`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SgState {
    pub entries: SgEntries,
    /// Ports with port security on, by id (port-security-off ports have no groups).
    pub ports: Vec<SgPortView>,
    /// Distinct identities in use.
    pub identities: usize,
    /// Problems worth a log line (a port naming a group that does not exist).
    pub warnings: BTreeSet<String>,
}

/// Identity numbers by (family, selector set), kept across recomputations so that a
/// change only rewrites the entries it concerns.
///
/// A number is never reused for another set while the agent runs (a freed number could
/// otherwise carry the old set's policy and the new set's addresses during one write);
/// `next` only grows. At start the numbers found in the adopted maps are offered as hints
/// ([`Identities::adopt`]) for the first computation, so a restarted agent rewrites
/// nothing when nothing changed.
#[derive(Clone, Debug, Default)]
pub struct Identities {
    by_set: BTreeMap<(u8, Vec<Selector>), u32>,
    /// The numbers of `by_set`.
    in_use: HashSet<u32>,
    next: u32,
    hints: HashMap<IdentLpmKey, u32>,
    /// During a full computation: the numbers it gave out (they replace `by_set`).
    round: Option<Round>,
}

/// The numbers given out by one full computation (they replace [`Identities::by_set`]).
#[derive(Clone, Debug, Default)]
struct Round {
    by_set: BTreeMap<(u8, Vec<Selector>), u32>,
    nums: HashSet<u32>,
}

impl Identities {
    /// Offers the numbers the maps hold (from a previous agent) for the next computation.
    pub fn adopt(&mut self, ident: &BTreeMap<IdentKey, u32>, lpm: &BTreeMap<IdentLpmKey, u32>) {
        self.hints = ident
            .iter()
            .map(|(k, v)| (host_lpm_key(k), *v))
            .chain(lpm.iter().map(|(k, v)| (*k, *v)))
            .filter(|(_, v)| is_allocatable(*v))
            .collect();
        let top = self.hints.values().copied().max().unwrap_or(0);
        self.next = self.next.max(top);
    }

    /// The number of `set` (family `family`), allocating one for a new set; `entry` is an
    /// entry with that set (its adopted number is preferred). `None` when the numbers ran
    /// out outside a full computation (which starts them over).
    fn number(&mut self, family: u8, set: Vec<Selector>, entry: &IdentLpmKey) -> Option<u32> {
        let key = (family, set);
        let taken = |ids: &Self, n: &u32| {
            ids.in_use.contains(n) || ids.round.as_ref().is_some_and(|r| r.nums.contains(n))
        };
        let n = match self.by_set.get(&key) {
            Some(&n) => n,
            None => match self.hints.get(entry).copied().filter(|h| !taken(self, h)) {
                Some(h) => h,
                None => {
                    if self.next >= IDENT_MAX_ALLOCATED - 1 {
                        self.round.as_ref()?;
                        // Four billion allocations: start over (one full rewrite).
                        self.next = 0;
                        self.by_set.clear();
                        self.in_use.clear();
                    }
                    loop {
                        self.next += 1;
                        if !taken(self, &self.next) {
                            break self.next;
                        }
                    }
                }
            },
        };
        match &mut self.round {
            Some(r) => {
                r.by_set.insert(key, n);
                r.nums.insert(n);
            }
            None => {
                self.by_set.insert(key, n);
                self.in_use.insert(n);
            }
        }
        Some(n)
    }

    /// Retires the number of a set no entry has any more (it is not reused).
    fn forget(&mut self, family: u8, set: Vec<Selector>) {
        if let Some(n) = self.by_set.remove(&(family, set)) {
            self.in_use.remove(&n);
        }
    }

    /// A full computation starts: sets it does not number again are forgotten.
    fn begin_round(&mut self) {
        self.round = Some(Round::default());
    }

    fn end_round(&mut self) {
        if let Some(r) = self.round.take() {
            self.by_set = r.by_set;
            self.in_use = r.nums;
        }
        self.hints.clear();
    }
}

fn is_allocatable(n: u32) -> bool {
    n != IDENT_WORLD && n < IDENT_MAX_ALLOCATED
}

/// The `df_ident_v1` key of a host, as the LPM key it would have (hint lookups).
fn host_lpm_key(k: &IdentKey) -> IdentLpmKey {
    let bits = if k.family == FAMILY_V6 { 128 } else { 32 };
    IdentLpmKey {
        prefix_len: IDENT_FIXED_BITS + bits,
        key: *k,
    }
}

pub fn ident_key(ip: IpAddr) -> IdentKey {
    let mut key = IdentKey::default();
    match ip {
        IpAddr::V4(a) => {
            key.family = FAMILY_V4;
            key.ip[..4].copy_from_slice(&a.octets());
        }
        IpAddr::V6(a) => {
            key.family = FAMILY_V6;
            key.ip = a.octets();
        }
    }
    key
}

/// The LPM key of a prefix, host bits cleared.
pub fn ident_lpm_key(p: &IpPrefix) -> IdentLpmKey {
    IdentLpmKey {
        prefix_len: IDENT_FIXED_BITS + u32::from(p.len),
        key: ident_key(p.network()),
    }
}

fn family(ip: &IpAddr) -> u8 {
    match ip {
        IpAddr::V4(_) => FAMILY_V4,
        IpAddr::V6(_) => FAMILY_V6,
    }
}

/// An address as a number and its bit width (IPv4 in the low 32 bits).
fn bits(ip: &IpAddr) -> (u128, u8) {
    match ip {
        IpAddr::V4(a) => (u128::from(u32::from(*a)), 32),
        IpAddr::V6(a) => (u128::from(*a), 128),
    }
}

/// `addr` with all but the first `len` of its `width` bits cleared.
fn mask(addr: u128, len: u8, width: u8) -> u128 {
    if len == 0 {
        0
    } else {
        let keep = u128::MAX << (128 - u32::from(len));
        (addr << (128 - u32::from(width))) & keep
    }
}

/// `Some(prefix)` for a selector of a real prefix; `None` when the rule has no remote or a
/// /0 prefix (any address of its family).
fn rule_selector(rule: &SecGroupRule) -> Option<Selector> {
    if let Some(g) = &rule.remote_group_id {
        return Some(Selector::Group(g.clone()));
    }
    match rule.remote_ip_prefix {
        Some(p) if p.len > 0 => Some(Selector::Prefix(IpPrefix {
            addr: p.network(),
            len: p.len,
        })),
        _ => None,
    }
}

fn rule_family(rule: &SecGroupRule) -> u8 {
    match rule.ethertype {
        crate::nb::EtherType::IPv4 => FAMILY_V4,
        crate::nb::EtherType::IPv6 => FAMILY_V6,
    }
}

/// A debugging tag for the entries of a rule: the same 32-bit FNV-1a as router ids, of
/// `<group>/<rule>`.
pub fn rule_tag(group: &str, rule: &str) -> u32 {
    crate::desired::hash::fnv1a(&format!("{group}/{rule}"))
}

/// The (protocol, dport, prefix length) blocks of a rule: one per prefix-aligned port
/// block, one for ICMP type/code, or one for the whole protocol.
pub fn l4_blocks(rule: &SecGroupRule) -> Vec<(u8, [u8; 2], u32)> {
    let Some(proto) = rule_protocol(rule) else {
        return vec![(0, [0, 0], POLICY_PROTO_BITS)];
    };
    let (min, max) = (rule.port_range_min, rule.port_range_max);
    match proto {
        PROTO_TCP | PROTO_UDP => match (min, max) {
            (Some(min), Some(max)) => port_blocks(min as u16, max as u16)
                .into_iter()
                .map(|(start, k)| {
                    (
                        proto,
                        start.to_be_bytes(),
                        POLICY_PORT_BITS + 16 - u32::from(k),
                    )
                })
                .collect(),
            _ => vec![(proto, [0, 0], POLICY_PORT_BITS)],
        },
        PROTO_ICMP | PROTO_ICMPV6 => match (min, max) {
            (Some(t), Some(c)) => vec![(proto, [t as u8, c as u8], POLICY_PORT_BITS + 16)],
            (Some(t), None) => vec![(proto, [t as u8, 0], POLICY_PORT_BITS + 8)],
            _ => vec![(proto, [0, 0], POLICY_PORT_BITS)],
        },
        _ => vec![(proto, [0, 0], POLICY_PORT_BITS)],
    }
}

/// `min..=max` as prefix-aligned blocks `(start, k)` of 2^k ports, fewest first-fit.
pub fn port_blocks(min: u16, max: u16) -> Vec<(u16, u8)> {
    let (mut s, e) = (u32::from(min), u32::from(max));
    let mut out = Vec::new();
    while s <= e {
        // The largest block aligned at s that does not pass e.
        let mut k = if s == 0 {
            16
        } else {
            s.trailing_zeros().min(16)
        };
        while s + (1 << k) - 1 > e {
            k -= 1;
        }
        out.push((s as u16, k as u8));
        s += 1 << k;
    }
    out
}

/// Computes the security-group entries for `ports` (tap ifindex, port) bound here and
/// programmed; ports with port security off are skipped (no groups, never judged).
pub fn compute(nb: &NbSnapshot, ports: &[(u32, &LPort)], ids: &mut Identities) -> SgState {
    compute_with(nb, ports, nb.lports.values(), ids)
}

/// [`compute`] with the ports whose addresses may be remote-group members given: any
/// superset of the members of the groups the local ports' rules name.
pub fn compute_with<'a>(
    nb: &NbSnapshot,
    ports: &[(u32, &LPort)],
    members: impl IntoIterator<Item = &'a Arc<LPort>>,
    ids: &mut Identities,
) -> SgState {
    let mut out = MapEntries::default();
    let (_, summary) = SgEngine::default().compute(nb, ports, None, || members, ids, &mut out);
    SgState {
        entries: SgEntries {
            ident: out.ident,
            ident_lpm: out.ident_lpm,
            policy: out.policy,
        },
        ports: Arc::unwrap_or_clone(summary.ports),
        identities: summary.identities,
        warnings: summary.warnings,
    }
}

#[cfg(test)]
pub(crate) mod tests;
