//! Security groups, the agent's half (pure, like `reconcile.rs`): from the NB snapshot and
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
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    maps,
    sg::{
        DIR_EGRESS, DIR_INGRESS, IDENT_FIXED_BITS, IDENT_MAX_ALLOCATED, IDENT_WORLD, IdentKey,
        POLICY_PORT_BITS, POLICY_PROTO_BITS, PolicyKey, PolicyValue, ident_any,
    },
};
use serde::Serialize;

use crate::{
    nb::{
        IpPrefix, LPort, RuleDirection, SecGroupRule,
        validate::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, rule_protocol},
    },
    reconcile::NbSnapshot,
};

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
}

/// The numbers given out by one computation (they replace [`Identities::by_set`]).
#[derive(Default)]
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
    /// entry with that set (its adopted number is preferred).
    fn number(
        &mut self,
        family: u8,
        set: Vec<Selector>,
        entry: &IdentLpmKey,
        round: &mut Round,
    ) -> u32 {
        let key = (family, set);
        let n = match self.by_set.get(&key) {
            Some(&n) => n,
            None => {
                let hinted = self
                    .hints
                    .get(entry)
                    .copied()
                    .filter(|h| !self.in_use.contains(h) && !round.nums.contains(h));
                match hinted {
                    Some(h) => h,
                    None => {
                        if self.next >= IDENT_MAX_ALLOCATED - 1 {
                            // Four billion allocations: start over (one full rewrite).
                            self.next = 0;
                            self.by_set.clear();
                            self.in_use.clear();
                        }
                        loop {
                            self.next += 1;
                            if !round.nums.contains(&self.next) {
                                break self.next;
                            }
                        }
                    }
                }
            }
        };
        round.by_set.insert(key, n);
        round.nums.insert(n);
        n
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
    crate::forwarding::router_id(&format!("{group}/{rule}"))
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
    compute_with(nb, ports, nb.lports.values().map(|p| &**p), ids)
}

/// [`compute`] with the ports whose addresses may be remote-group members given: any
/// superset of the members of the groups the local ports' rules name (the agent passes
/// exactly those, from its index, instead of every port of the cloud).
pub fn compute_with<'a>(
    nb: &NbSnapshot,
    ports: &[(u32, &LPort)],
    members: impl IntoIterator<Item = &'a LPort>,
    ids: &mut Identities,
) -> SgState {
    let mut out = SgState::default();

    // The rules of the local ports, and the selectors they use.
    let mut local: Vec<(u32, &str, &SecGroupRule)> = Vec::new();
    let mut used: BTreeSet<Selector> = BTreeSet::new();
    for &(ifindex, port) in ports {
        if !port.port_security_enabled {
            continue;
        }
        let mut view = SgPortView {
            lport: port.id.clone(),
            ifindex,
            security_groups: port.security_groups.clone(),
            ..Default::default()
        };
        for gid in &port.security_groups {
            let Some(g) = nb.secgroups.get(gid) else {
                out.warnings.insert(format!(
                    "lport {}: security group {gid} does not exist; its rules are not applied \
                     (the port only gets what its other groups allow)",
                    port.id
                ));
                continue;
            };
            for r in &g.rules {
                local.push((ifindex, g.id.as_str(), r));
                used.extend(rule_selector(r));
                view.rules += 1;
            }
        }
        out.ports.push(view);
    }

    // Selectors by index (sets of indexes are cheap to build and compare).
    let used: Vec<Selector> = used.into_iter().collect();
    let index: HashMap<&Selector, usize> = used.iter().enumerate().map(|(i, s)| (s, i)).collect();

    // Entries: (family, prefix) → the selectors naming it directly.
    let mut own: BTreeMap<(u8, IpPrefix), BTreeSet<usize>> = BTreeMap::new();
    for (i, sel) in used.iter().enumerate() {
        if let Selector::Prefix(p) = sel {
            own.entry((family(&p.addr), *p)).or_default().insert(i);
        }
    }
    for port in members {
        let groups: Vec<usize> = port
            .security_groups
            .iter()
            .filter_map(|g| index.get(&Selector::Group(g.clone())).copied())
            .collect();
        if groups.is_empty() {
            continue;
        }
        let members = port.fixed_ips.iter().map(|ip| IpPrefix::host(*ip)).chain(
            port.allowed_address_pairs.iter().map(|a| IpPrefix {
                addr: a.ip_address.network(),
                len: a.ip_address.len,
            }),
        );
        for p in members {
            own.entry((family(&p.addr), p))
                .or_default()
                .extend(groups.iter().copied());
        }
    }

    // Each entry also carries the selectors of every entry containing it: look its
    // network up at every shorter prefix length in use.
    let mut by_len: BTreeMap<u8, BTreeMap<u8, HashMap<u128, &BTreeSet<usize>>>> = BTreeMap::new();
    for ((fam, p), sels) in &own {
        let (a, w) = bits(&p.addr);
        by_len
            .entry(*fam)
            .or_default()
            .entry(p.len)
            .or_default()
            .insert(mask(a, p.len, w), sels);
    }
    let mut by_set: BTreeMap<(u8, Vec<usize>), Vec<IpPrefix>> = BTreeMap::new();
    for ((fam, p), sels) in &own {
        let (a, w) = bits(&p.addr);
        let mut set = sels.clone();
        for (&len, nets) in by_len[fam].range(..p.len) {
            if let Some(outer) = nets.get(&mask(a, len, w)) {
                set.extend(outer.iter());
            }
        }
        by_set
            .entry((*fam, set.into_iter().collect()))
            .or_default()
            .push(*p);
    }

    // One identity per (family, set).
    let mut round = Round::default();
    // (family, selector index) → identities containing it.
    let mut idents_of: HashMap<(u8, usize), BTreeSet<u32>> = HashMap::new();
    for ((fam, set), prefixes) in by_set {
        let sels = set.iter().map(|&i| used[i].clone()).collect();
        let n = ids.number(fam, sels, &ident_lpm_key(&prefixes[0]), &mut round);
        for p in &prefixes {
            let k = ident_lpm_key(p);
            if p.is_host() {
                out.entries.ident.insert(k.key, n);
            } else {
                out.entries.ident_lpm.insert(k, n);
            }
        }
        for i in set {
            idents_of.entry((fam, i)).or_default().insert(n);
        }
    }
    out.identities = round.by_set.len();
    // Sets gone from the NB state are forgotten; their numbers are not reused.
    ids.by_set = round.by_set;
    ids.in_use = round.nums;
    ids.hints.clear();

    // Policy: every rule over the identities of its selector.
    let none = BTreeSet::new();
    for (ifindex, gid, rule) in local {
        let fam = rule_family(rule);
        let any = BTreeSet::from([ident_any(fam)]);
        let idents = match rule_selector(rule) {
            None => &any,
            Some(sel) => idents_of.get(&(fam, index[&sel])).unwrap_or(&none),
        };
        let dir = match rule.direction {
            RuleDirection::Egress => DIR_EGRESS,
            RuleDirection::Ingress => DIR_INGRESS,
        };
        let tag = rule_tag(gid, &rule.id);
        let blocks = l4_blocks(rule);
        for &ident in idents {
            for &(proto, dport, prefix_len) in &blocks {
                let key = PolicyLpmKey {
                    prefix_len,
                    key: PolicyKey {
                        ifindex,
                        ident,
                        dir,
                        proto,
                        dport,
                    },
                };
                // Several rules may allow the same thing: keep one tag, the same every time.
                let v = out
                    .entries
                    .policy
                    .entry(key)
                    .or_insert(PolicyValue { rule: tag });
                v.rule = v.rule.min(tag);
            }
        }
    }
    for (map, n, cap) in [
        (maps::IDENT, out.entries.ident.len(), maps::IDENT_MAX),
        (
            maps::IDENT_LPM,
            out.entries.ident_lpm.len(),
            maps::IDENT_LPM_MAX,
        ),
        (maps::POLICY, out.entries.policy.len(), maps::POLICY_MAX),
    ] {
        if n > cap as usize {
            out.warnings.insert(format!(
                "{map} needs {n} entries but holds {cap}: the writes beyond it fail (counted in \
                 dragonflow_map_write_errors_total) and what they would allow is denied"
            ));
        }
    }
    for view in &mut out.ports {
        view.policy_entries = out
            .entries
            .policy
            .keys()
            .filter(|k| k.key.ifindex == view.ifindex)
            .count();
    }
    out
}

#[cfg(test)]
mod tests {
    use dragonflow_common::sg::{IDENT_ANY_V4, IDENT_ANY_V6};

    use super::*;
    use crate::nb::{AllowedAddressPair, EtherType, SecGroup};

    fn port(id: &str, groups: &[&str], ips: &[&str], aaps: &[&str]) -> LPort {
        LPort {
            id: id.into(),
            lswitch: "net1".into(),
            mac: "fa:16:3e:00:00:01".parse().unwrap(),
            fixed_ips: ips.iter().map(|i| i.parse().unwrap()).collect(),
            allowed_address_pairs: aaps
                .iter()
                .map(|a| AllowedAddressPair {
                    ip_address: a.parse().unwrap(),
                    mac_address: None,
                })
                .collect(),
            port_security_enabled: true,
            security_groups: groups.iter().map(|g| g.to_string()).collect(),
            chassis: None,
            ifname: None,
            device_owner: String::new(),
            admin_state_up: true,
        }
    }

    fn rule(id: &str, dir: RuleDirection, eth: EtherType) -> SecGroupRule {
        SecGroupRule {
            id: id.into(),
            direction: dir,
            ethertype: eth,
            protocol: None,
            port_range_min: None,
            port_range_max: None,
            remote_ip_prefix: None,
            remote_group_id: None,
        }
    }

    fn from_group(id: &str, g: &str) -> SecGroupRule {
        SecGroupRule {
            remote_group_id: Some(g.into()),
            ..rule(id, RuleDirection::Ingress, EtherType::IPv4)
        }
    }

    fn from_prefix(id: &str, p: &str) -> SecGroupRule {
        let p: IpPrefix = p.parse().unwrap();
        let eth = EtherType::of(&p.addr);
        SecGroupRule {
            remote_ip_prefix: Some(p),
            ..rule(id, RuleDirection::Ingress, eth)
        }
    }

    fn group(id: &str, rules: Vec<SecGroupRule>) -> SecGroup {
        SecGroup {
            id: id.into(),
            name: String::new(),
            rules,
        }
    }

    fn nb(ports: Vec<LPort>, groups: Vec<SecGroup>) -> NbSnapshot {
        NbSnapshot {
            lports: ports
                .into_iter()
                .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
                .collect(),
            secgroups: groups.into_iter().map(|g| (g.id.clone(), g)).collect(),
            ..Default::default()
        }
    }

    /// Computes with `local` (port id → ifindex) as the programmed local ports.
    fn run(nb: &NbSnapshot, local: &[(&str, u32)], ids: &mut Identities) -> SgState {
        let ports: Vec<(u32, &LPort)> =
            local.iter().map(|(id, i)| (*i, &*nb.lports[*id])).collect();
        compute(nb, &ports, ids)
    }

    /// The identity the datapath would find for `ip`: exact, else longest prefix, else
    /// world.
    fn lookup(e: &SgEntries, ip: &str) -> u32 {
        let ip: IpAddr = ip.parse().unwrap();
        if let Some(&n) = e.ident.get(&ident_key(ip)) {
            return n;
        }
        let (a, w) = bits(&ip);
        e.ident_lpm
            .iter()
            .filter(|(k, _)| {
                k.key.family == family(&ip) && {
                    let len = (k.prefix_len - IDENT_FIXED_BITS) as u8;
                    let net: IpAddr = if w == 32 {
                        IpAddr::from(<[u8; 4]>::try_from(&k.key.ip[..4]).unwrap())
                    } else {
                        IpAddr::from(k.key.ip)
                    };
                    mask(a, len, w) == mask(bits(&net).0, len, w)
                }
            })
            .max_by_key(|(k, _)| k.prefix_len)
            .map_or(IDENT_WORLD, |(_, v)| *v)
    }

    /// Whether the datapath would allow (ifindex, remote ip, dir, proto, dport) by LPM.
    fn allowed(e: &SgEntries, ifindex: u32, ip: &str, dir: u8, proto: u8, dport: [u8; 2]) -> bool {
        let fam = family(&ip.parse().unwrap());
        let id = lookup(e, ip);
        [id, ident_any(fam)].into_iter().any(|ident| {
            e.policy.keys().any(|k| {
                let want = PolicyKey {
                    ifindex,
                    ident,
                    dir,
                    proto,
                    dport,
                };
                let a = as_bits(&want);
                let b = as_bits(&k.key);
                let n = k.prefix_len as usize;
                a[..n] == b[..n]
            })
        })
    }

    fn as_bits(k: &PolicyKey) -> Vec<bool> {
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&k.ifindex.to_ne_bytes());
        bytes.extend_from_slice(&k.ident.to_ne_bytes());
        bytes.push(k.dir);
        bytes.push(k.proto);
        bytes.extend_from_slice(&k.dport);
        bytes
            .iter()
            .flat_map(|b| (0..8).rev().map(move |i| b & (1 << i) != 0))
            .collect()
    }

    #[test]
    fn port_ranges_split_into_aligned_blocks() {
        assert_eq!(port_blocks(80, 80), vec![(80, 0)]);
        assert_eq!(port_blocks(1, 65535).len(), 16);
        assert_eq!(port_blocks(0, 65535), vec![(0, 16)]);
        assert_eq!(port_blocks(1024, 2047), vec![(1024, 10)]);
        assert_eq!(
            port_blocks(1000, 1010),
            vec![(1000, 3), (1008, 1), (1010, 0)]
        );
        // Blocks cover exactly the range, without overlap.
        for (min, max) in [(1u16, 65535u16), (3, 17), (8080, 8090), (65535, 65535)] {
            let mut covered = Vec::new();
            for (s, k) in port_blocks(min, max) {
                assert_eq!(u32::from(s) % (1 << k), 0, "aligned");
                covered.extend(u32::from(s)..u32::from(s) + (1 << k));
            }
            assert_eq!(
                covered,
                (u32::from(min)..=u32::from(max)).collect::<Vec<_>>()
            );
        }
    }

    #[test]
    fn rule_without_remote_is_any_of_its_family() {
        let mut egress = rule("e4", RuleDirection::Egress, EtherType::IPv4);
        egress.protocol = Some("tcp".into());
        egress.port_range_min = Some(443);
        egress.port_range_max = Some(443);
        let n = nb(
            vec![port("p1", &["sg"], &["192.0.2.10"], &[])],
            vec![group("sg", vec![egress])],
        );
        let s = run(&n, &[("p1", 7)], &mut Identities::default());
        let e = &s.entries;
        assert!(e.ident.is_empty() && e.ident_lpm.is_empty());
        assert_eq!(e.policy.len(), 1);
        let k = e.policy.keys().next().unwrap();
        assert_eq!(k.key.ident, IDENT_ANY_V4);
        assert_eq!(k.prefix_len, POLICY_PORT_BITS + 16);
        assert!(allowed(
            e,
            7,
            "203.0.113.5",
            DIR_EGRESS,
            6,
            443u16.to_be_bytes()
        ));
        assert!(!allowed(
            e,
            7,
            "203.0.113.5",
            DIR_EGRESS,
            6,
            80u16.to_be_bytes()
        ));
        assert!(!allowed(
            e,
            7,
            "203.0.113.5",
            DIR_INGRESS,
            6,
            443u16.to_be_bytes()
        ));
        assert!(
            !allowed(e, 7, "2001:db8::5", DIR_EGRESS, 6, 443u16.to_be_bytes()),
            "v4 rule, v6 packet"
        );
        assert!(
            !allowed(e, 8, "203.0.113.5", DIR_EGRESS, 6, 443u16.to_be_bytes()),
            "other port"
        );
        assert_eq!(s.ports[0].policy_entries, 1);
        assert_eq!(s.ports[0].rules, 1);
    }

    #[test]
    fn neutron_default_group() {
        let rules = vec![
            rule("e4", RuleDirection::Egress, EtherType::IPv4),
            rule("e6", RuleDirection::Egress, EtherType::IPv6),
            from_group("i4", "default"),
            SecGroupRule {
                remote_group_id: Some("default".into()),
                ..rule("i6", RuleDirection::Ingress, EtherType::IPv6)
            },
        ];
        let n = nb(
            vec![
                port("p1", &["default"], &["192.0.2.10", "2001:db8::10"], &[]),
                port("p2", &["default"], &["192.0.2.20"], &["2001:db8::/64"]),
                port("p3", &[], &["192.0.2.30"], &[]),
            ],
            vec![group("default", rules)],
        );
        let s = run(&n, &[("p1", 1), ("p3", 3)], &mut Identities::default());
        let e = &s.entries;
        // Members: v4 hosts of p1, p2; v6 host of p1 inside p2's v6 CIDR.
        assert_eq!(e.ident.len(), 3);
        assert_eq!(e.ident_lpm.len(), 1);
        let v4 = lookup(e, "192.0.2.20");
        let v6 = lookup(e, "2001:db8::99");
        assert_ne!(v4, v6, "identities are per family");
        assert_eq!(lookup(e, "2001:db8::10"), v6, "same set, same identity");
        assert_eq!(lookup(e, "192.0.2.30"), IDENT_WORLD);
        assert!(allowed(e, 1, "192.0.2.20", DIR_INGRESS, 6, [0, 22]));
        assert!(
            allowed(e, 1, "2001:db8::77", DIR_INGRESS, 17, [0, 53]),
            "AAP CIDR member"
        );
        assert!(
            !allowed(e, 1, "192.0.2.30", DIR_INGRESS, 6, [0, 22]),
            "not a member"
        );
        assert!(allowed(e, 1, "192.0.2.30", DIR_EGRESS, 6, [0, 22]));
        assert!(allowed(e, 1, "2001:db8:ff::1", DIR_EGRESS, 58, [128, 0]));
        // p3 has port security and no group: nothing allowed.
        assert!(!allowed(e, 3, "192.0.2.20", DIR_EGRESS, 6, [0, 22]));
        assert_eq!(s.ports.len(), 2);
        assert_eq!(s.ports[1].policy_entries, 0);
        assert_eq!(s.identities, 2);
    }

    #[test]
    fn nested_prefixes_and_members_inside_rule_prefixes() {
        // sg "web": ingress from group "app", from 198.51.100.0/24 (tcp 80) and from
        // 198.51.100.128/25 (udp). App members: a fixed IP inside both prefixes, an AAP
        // CIDR straddling nothing, an AAP host outside.
        let mut wide = from_prefix("wide", "198.51.100.0/24");
        wide.protocol = Some("tcp".into());
        wide.port_range_min = Some(80);
        wide.port_range_max = Some(80);
        let mut narrow = from_prefix("narrow", "198.51.100.128/25");
        narrow.protocol = Some("udp".into());
        let n = nb(
            vec![
                port("web1", &["web"], &["192.0.2.10"], &[]),
                port(
                    "app1",
                    &["app"],
                    &["198.51.100.200"],
                    &["203.0.113.0/28", "192.0.2.99"],
                ),
            ],
            vec![
                group("web", vec![from_group("g", "app"), wide, narrow]),
                group("app", vec![]),
            ],
        );
        let s = run(&n, &[("web1", 5)], &mut Identities::default());
        let e = &s.entries;
        let member = "198.51.100.200";
        // The member is in every selector: from the group it may send anything, and
        // tcp/80 and udp from the prefixes.
        assert!(allowed(e, 5, member, DIR_INGRESS, 47, [0, 0]));
        // A non-member in the /25: udp and tcp/80, nothing else.
        assert!(allowed(e, 5, "198.51.100.129", DIR_INGRESS, 17, [0, 9]));
        assert!(allowed(e, 5, "198.51.100.129", DIR_INGRESS, 6, [0, 80]));
        assert!(!allowed(e, 5, "198.51.100.129", DIR_INGRESS, 6, [0, 81]));
        // In the /24 only: tcp/80 only.
        assert!(allowed(e, 5, "198.51.100.1", DIR_INGRESS, 6, [0, 80]));
        assert!(!allowed(e, 5, "198.51.100.1", DIR_INGRESS, 17, [0, 9]));
        // AAP CIDR and AAP host members.
        assert!(allowed(e, 5, "203.0.113.15", DIR_INGRESS, 1, [8, 0]));
        assert!(!allowed(e, 5, "203.0.113.16", DIR_INGRESS, 1, [8, 0]));
        assert!(allowed(e, 5, "192.0.2.99", DIR_INGRESS, 6, [1, 0]));
        // Identities: {app,/24,/25} for the member, {/24,/25}, {/24}, {app} (CIDR and
        // host share one).
        let ids: BTreeSet<u32> = e
            .ident
            .values()
            .chain(e.ident_lpm.values())
            .copied()
            .collect();
        assert_eq!(ids.len(), 4, "{e:?}");
        assert_eq!(lookup(e, "203.0.113.1"), lookup(e, "192.0.2.99"));
        assert_eq!(s.identities, 4);
    }

    #[test]
    fn host_member_nested_in_member_cidr_of_another_group() {
        // g1 has an AAP CIDR; a g2 member lives inside it: its identity is {g1, g2}.
        let n = nb(
            vec![
                port("local", &["sg"], &["192.0.2.1"], &[]),
                port("a", &["g1"], &[], &["198.51.100.0/24"]),
                port("b", &["g2"], &["198.51.100.7"], &[]),
            ],
            vec![
                group(
                    "sg",
                    vec![
                        {
                            let mut r = from_group("from1", "g1");
                            r.protocol = Some("udp".into());
                            r
                        },
                        {
                            let mut r = from_group("from2", "g2");
                            r.protocol = Some("tcp".into());
                            r
                        },
                    ],
                ),
                group("g1", vec![]),
                group("g2", vec![]),
            ],
        );
        let s = run(&n, &[("local", 2)], &mut Identities::default());
        let e = &s.entries;
        assert!(
            allowed(e, 2, "198.51.100.7", DIR_INGRESS, 17, [0, 1]),
            "via g1"
        );
        assert!(
            allowed(e, 2, "198.51.100.8", DIR_INGRESS, 17, [0, 1]),
            "via g1"
        );
        assert!(
            allowed(e, 2, "198.51.100.7", DIR_INGRESS, 6, [0, 1]),
            "via g2"
        );
        assert!(!allowed(e, 2, "198.51.100.8", DIR_INGRESS, 6, [0, 1]));
        assert_ne!(lookup(e, "198.51.100.7"), lookup(e, "198.51.100.8"));
    }

    #[test]
    fn ipv6_rules_and_icmp() {
        let mut echo = from_prefix("echo6", "2001:db8::/32");
        echo.protocol = Some("icmp".into()); // IPv6 rule: ICMPv6
        echo.port_range_min = Some(128);
        let mut unreach = rule("unreach", RuleDirection::Ingress, EtherType::IPv4);
        unreach.protocol = Some("icmp".into());
        unreach.port_range_min = Some(3);
        unreach.port_range_max = Some(4);
        let n = nb(
            vec![port("p", &["sg"], &["2001:db8::1"], &[])],
            vec![group("sg", vec![echo, unreach])],
        );
        let s = run(&n, &[("p", 4)], &mut Identities::default());
        let e = &s.entries;
        assert!(allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [128, 0]));
        assert!(allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [128, 5]));
        assert!(!allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 58, [129, 0]));
        assert!(!allowed(e, 4, "2001:db9::1", DIR_INGRESS, 58, [128, 0]));
        assert!(!allowed(e, 4, "2001:db8:1::1", DIR_INGRESS, 1, [128, 0]));
        assert!(allowed(e, 4, "203.0.113.1", DIR_INGRESS, 1, [3, 4]));
        assert!(!allowed(e, 4, "203.0.113.1", DIR_INGRESS, 1, [3, 3]));
        assert!(!allowed(e, 4, "2001:db8::9", DIR_INGRESS, 1, [3, 4]));
        assert_eq!(
            e.ident_lpm.keys().next().unwrap().prefix_len,
            IDENT_FIXED_BITS + 32
        );
        let k = e
            .policy
            .keys()
            .find(|k| k.key.ident == IDENT_ANY_V4)
            .unwrap();
        assert_eq!(k.prefix_len, POLICY_PORT_BITS + 16);
        assert!(!e.policy.keys().any(|k| k.key.ident == IDENT_ANY_V6));
    }

    #[test]
    fn zero_prefix_is_any_and_port_security_off_is_skipped() {
        let n = nb(
            vec![
                port("p", &["sg"], &["192.0.2.1"], &[]),
                LPort {
                    port_security_enabled: false,
                    security_groups: vec![],
                    ..port("open", &[], &["192.0.2.2"], &[])
                },
            ],
            vec![group("sg", vec![from_prefix("all", "0.0.0.0/0")])],
        );
        let s = run(&n, &[("p", 1), ("open", 2)], &mut Identities::default());
        assert!(s.entries.ident_lpm.is_empty());
        assert_eq!(s.entries.policy.len(), 1);
        assert_eq!(
            s.entries.policy.keys().next().unwrap().key.ident,
            IDENT_ANY_V4
        );
        assert_eq!(
            s.entries.policy.keys().next().unwrap().prefix_len,
            POLICY_PROTO_BITS
        );
        assert_eq!(s.ports.len(), 1);
    }

    #[test]
    fn missing_group_warns_and_denies() {
        let n = nb(vec![port("p", &["nope"], &["192.0.2.1"], &[])], vec![]);
        let s = run(&n, &[("p", 1)], &mut Identities::default());
        assert!(s.entries.policy.is_empty());
        assert_eq!(s.warnings.len(), 1);
        assert!(
            s.warnings
                .iter()
                .next()
                .unwrap()
                .contains("security group nope does not exist")
        );
    }

    #[test]
    fn numbering_is_stable_and_removal_forgets() {
        let groups = vec![
            group("sg", vec![from_group("a", "ga"), from_group("b", "gb")]),
            group("ga", vec![]),
            group("gb", vec![]),
        ];
        let ports = vec![
            port("local", &["sg"], &["192.0.2.1"], &[]),
            port("m1", &["ga"], &["192.0.2.11"], &[]),
            port("m2", &["gb"], &["192.0.2.12"], &[]),
        ];
        let mut ids = Identities::default();
        let before = run(
            &nb(ports.clone(), groups.clone()),
            &[("local", 1)],
            &mut ids,
        );
        let again = run(
            &nb(ports.clone(), groups.clone()),
            &[("local", 1)],
            &mut ids,
        );
        assert_eq!(before, again, "no churn");
        // m2 joins ga too: its identity changes to a new number; m1's stays.
        let mut ports2 = ports.clone();
        ports2[2].security_groups.push("ga".into());
        let after = run(&nb(ports2, groups.clone()), &[("local", 1)], &mut ids);
        let m1 = ident_key("192.0.2.11".parse().unwrap());
        let m2 = ident_key("192.0.2.12".parse().unwrap());
        assert_eq!(after.entries.ident[&m1], before.entries.ident[&m1]);
        assert_ne!(after.entries.ident[&m2], before.entries.ident[&m2]);
        assert!(after.entries.ident[&m2] > before.entries.ident.values().copied().max().unwrap());
        // m2 is still allowed (through both rules now).
        assert!(allowed(
            &after.entries,
            1,
            "192.0.2.12",
            DIR_INGRESS,
            6,
            [0, 1]
        ));
        // Removal: m1 leaves every group → no entry, no policy for it.
        let mut ports3 = ports.clone();
        ports3[1].security_groups.clear();
        let removed = run(&nb(ports3, groups), &[("local", 1)], &mut ids);
        assert!(!removed.entries.ident.contains_key(&m1));
        assert!(!allowed(
            &removed.entries,
            1,
            "192.0.2.11",
            DIR_INGRESS,
            6,
            [0, 1]
        ));
        // No rule names ga's identity any more: its policy entries are gone.
        assert!(removed.entries.policy.len() < after.entries.policy.len());
    }

    #[test]
    fn adopted_numbers_are_reused_after_a_restart() {
        let groups = vec![
            group("sg", vec![from_group("a", "ga")]),
            group("ga", vec![]),
        ];
        let ports = vec![
            port("local", &["sg"], &["192.0.2.1"], &[]),
            port("m1", &["ga"], &["192.0.2.11"], &["198.51.100.0/24"]),
        ];
        let n = nb(ports, groups);
        // Numbers a fresh allocator would not pick.
        let mut first = Identities {
            next: 41,
            ..Default::default()
        };
        let before = run(&n, &[("local", 1)], &mut first);
        let mut restarted = Identities::default();
        restarted.adopt(&before.entries.ident, &before.entries.ident_lpm);
        let after = run(&n, &[("local", 1)], &mut restarted);
        assert_eq!(before.entries, after.entries);
        // A new set after that gets a number above the adopted ones.
        assert!(restarted.next >= 42);
    }

    #[test]
    fn policy_size_does_not_grow_with_members() {
        // 10,000 members of one remote group: one identity, so one policy entry per rule
        // block, whatever the membership.
        let mut ports = vec![port("local", &["sg"], &["192.0.2.1"], &[])];
        for i in 0..10_000u32 {
            let ip = std::net::Ipv4Addr::from(0xc633_0000 + i).to_string(); // 198.51.x.y
            ports.push(port(&format!("m{i}"), &["members"], &[ip.as_str()], &[]));
        }
        let mut r = from_group("r", "members");
        r.protocol = Some("tcp".into());
        r.port_range_min = Some(1000);
        r.port_range_max = Some(1010);
        let n = nb(ports, vec![group("sg", vec![r]), group("members", vec![])]);
        let s = run(&n, &[("local", 1)], &mut Identities::default());
        assert_eq!(s.entries.ident.len(), 10_000);
        assert_eq!(s.identities, 1);
        assert_eq!(s.entries.policy.len(), port_blocks(1000, 1010).len());
    }

    #[test]
    fn same_key_from_two_rules_keeps_one_tag() {
        let n = nb(
            vec![port("p", &["a", "b"], &["192.0.2.1"], &[])],
            vec![
                group("a", vec![rule("r", RuleDirection::Egress, EtherType::IPv4)]),
                group("b", vec![rule("r", RuleDirection::Egress, EtherType::IPv4)]),
            ],
        );
        let s = run(&n, &[("p", 1)], &mut Identities::default());
        assert_eq!(s.entries.policy.len(), 1);
        let tag = s.entries.policy.values().next().unwrap().rule;
        assert_eq!(tag, rule_tag("a", "r").min(rule_tag("b", "r")));
    }
}
