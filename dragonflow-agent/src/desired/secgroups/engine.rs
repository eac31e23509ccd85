//! The security-group entries kept up to date member by member.
//!
//! At cloud scale the members of the groups a chassis's rules name are thousands of ports
//! on other chassis, and one of them changing is the common event. Recomputing every
//! entry for it costs work that grows with the cloud; this keeps what the last
//! computation found and redoes only what the change touches:
//! - the entries of the changed port's old and new addresses (and, for a CIDR, the entries
//!   nested inside it, which inherit its selectors);
//! - the identities whose sets appear or disappear, and the policy entries of exactly
//!   those identities (a policy key carries its identity, so an identity owns its keys).
//!
//! A change on the local side — which ports are programmed here, their groups, the rules
//! of those groups — recomputes everything (its cost grows with the local ports), and so
//! does any computation without a list of changed ports. Both paths run the same code:
//! the full one starts from nothing and adds every member.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
    sync::Arc,
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    maps,
    sg::{DIR_EGRESS, DIR_INGRESS, PolicyKey, PolicyValue, ident_any},
};

use super::{
    IdentLpmKey, Identities, PolicyLpmKey, Selector, SgPortView, bits, family, ident_lpm_key,
    l4_blocks, mask, rule_family, rule_selector, rule_tag,
};
use crate::{
    desired::reconcile::MapEntries,
    nb::{IpPrefix, LPort, NbSnapshot, RuleDirection, SecGroup},
};

/// An entry: a member address or prefix, or a rule prefix, with its family.
type Entry = (u8, IpPrefix);

/// One rule of a local port, ready to expand over identities.
#[derive(Debug)]
struct LocalRule {
    ifindex: u32,
    family: u8,
    /// Index into `Local::used`; `None` for "any address of the family".
    selector: Option<usize>,
    dir: u8,
    tag: u32,
    blocks: Vec<(u8, [u8; 2], u32)>,
}

/// The local side: what the programmed ports' rules ask for. Unchanged between two
/// computations, the members alone decide what changes.
#[derive(Debug, Default)]
struct Local {
    /// (tap ifindex, port id, its groups) of the programmed ports with port security.
    ports: Vec<(u32, String, Vec<String>)>,
    /// The records of those groups as computed (`None`: the group does not exist).
    groups: BTreeMap<String, Option<SecGroup>>,
    used: Vec<Selector>,
    /// Group id → its selector index.
    group_selector: HashMap<String, usize>,
    rules: Vec<LocalRule>,
    /// Selector index → the rules naming it (indexes into `rules`).
    by_selector: HashMap<usize, Vec<usize>>,
    views: Vec<SgPortView>,
    warnings: BTreeSet<String>,
}

impl Local {
    fn of(nb: &NbSnapshot, ports: &[(u32, &LPort)]) -> Local {
        let mut l = Local::default();
        let mut used: BTreeSet<Selector> = BTreeSet::new();
        let mut named: Vec<(u32, &str, &crate::nb::SecGroupRule)> = Vec::new();
        for &(ifindex, port) in ports {
            if !port.port_security_enabled {
                continue;
            }
            l.ports
                .push((ifindex, port.id.clone(), port.security_groups.clone()));
            let mut view = SgPortView {
                lport: port.id.clone(),
                ifindex,
                security_groups: port.security_groups.clone(),
                ..Default::default()
            };
            for gid in &port.security_groups {
                let g = nb.secgroups.get(gid);
                l.groups.insert(gid.clone(), g.cloned());
                let Some(g) = g else {
                    l.warnings.insert(format!(
                        "lport {}: security group {gid} does not exist; its rules are not \
                         applied (the port only gets what its other groups allow)",
                        port.id
                    ));
                    continue;
                };
                for r in &g.rules {
                    named.push((ifindex, g.id.as_str(), r));
                    used.extend(rule_selector(r));
                    view.rules += 1;
                }
            }
            l.views.push(view);
        }
        l.used = used.into_iter().collect();
        let index: HashMap<&Selector, usize> =
            l.used.iter().enumerate().map(|(i, s)| (s, i)).collect();
        for (i, s) in l.used.iter().enumerate() {
            if let Selector::Group(g) = s {
                l.group_selector.insert(g.clone(), i);
            }
        }
        for (ifindex, gid, rule) in named {
            let selector = rule_selector(rule).map(|s| index[&s]);
            if let Some(s) = selector {
                l.by_selector.entry(s).or_default().push(l.rules.len());
            }
            l.rules.push(LocalRule {
                ifindex,
                family: rule_family(rule),
                selector,
                dir: match rule.direction {
                    RuleDirection::Egress => DIR_EGRESS,
                    RuleDirection::Ingress => DIR_INGRESS,
                },
                tag: rule_tag(gid, &rule.id),
                blocks: l4_blocks(rule),
            });
        }
        l
    }

    /// Whether `ports` and their groups are still what this was computed from.
    fn same(&self, nb: &NbSnapshot, ports: &[(u32, &LPort)]) -> bool {
        let mut mine = self.ports.iter();
        for &(ifindex, port) in ports {
            if !port.port_security_enabled {
                continue;
            }
            match mine.next() {
                Some((i, id, groups))
                    if *i == ifindex && *id == port.id && *groups == port.security_groups => {}
                _ => return false,
            }
        }
        mine.next().is_none()
            && self
                .groups
                .iter()
                .all(|(gid, g)| nb.secgroups.get(gid) == g.as_ref())
    }
}

/// A member port as last added: its record (compared by pointer) and what it gave.
#[derive(Debug)]
struct Member {
    port: Arc<LPort>,
    entries: Vec<Entry>,
    selectors: Vec<usize>,
}

/// What an entry resolved to: its full selector set and that set's identity.
#[derive(Debug, Clone, PartialEq)]
struct Resolved {
    set: Vec<usize>,
    ident: u32,
}

/// The security-group keys one computation may have changed: `None` means any.
#[derive(Debug, Default)]
pub struct SgKeys {
    pub ident: BTreeSet<dragonflow_common::sg::IdentKey>,
    pub ident_lpm: BTreeSet<IdentLpmKey>,
    pub policy: BTreeSet<PolicyLpmKey>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub struct SgEngine {
    local: Local,
    members: HashMap<String, Member>,
    /// Entry → its own selectors, each with the number of members (or rule prefixes)
    /// naming it there.
    own: HashMap<Entry, BTreeMap<usize, u32>>,
    /// The entries in address order (family, network bits, length): what a CIDR contains.
    order: BTreeSet<(u8, u128, u8)>,
    /// Prefix lengths in use per family (index 0: IPv4), with their entry counts.
    lens: [BTreeMap<u8, u32>; 2],
    resolved: HashMap<Entry, Resolved>,
    /// (family, set) → (identity, entries with that set).
    sets: HashMap<(u8, Vec<usize>), (u32, usize)>,
    /// Policy entries per tap (the /state view).
    policy_per_tap: HashMap<u32, usize>,
    /// The ports' view as last summarised (rebuilt only when a count changed).
    views: Option<Arc<Vec<SgPortView>>>,
    primed: bool,
}

fn fam_slot(fam: u8) -> usize {
    usize::from(fam == FAMILY_V6)
}

/// The member entries of a port (fixed IPs as hosts, AAPs as given).
fn port_entries(port: &LPort) -> Vec<Entry> {
    port.fixed_ips
        .iter()
        .map(|ip| IpPrefix::host(*ip))
        .chain(port.allowed_address_pairs.iter().map(|a| IpPrefix {
            addr: a.ip_address.network(),
            len: a.ip_address.len,
        }))
        .map(|p| (family(&p.addr), p))
        .collect()
}

impl SgEngine {
    /// Brings `out`'s security-group maps, `sg_ports`, `sg_identities` and warnings up to
    /// date for the programmed `ports`. `changed` lists the port ids whose records changed
    /// since the last computation (`None`: unknown, recompute all); `members` gives every
    /// port that may be a member of a group the rules name, and is only called for a full
    /// computation. Returns the keys that may differ, or `None` after a full computation.
    pub fn compute<'a, I>(
        &mut self,
        nb: &NbSnapshot,
        ports: &[(u32, &LPort)],
        changed: Option<&BTreeSet<String>>,
        members: impl FnOnce() -> I,
        ids: &mut Identities,
        out: &mut MapEntries,
    ) -> (Option<SgKeys>, SgSummary)
    where
        I: IntoIterator<Item = &'a Arc<LPort>>,
    {
        let incremental = self.primed && self.local.same(nb, ports);
        let keys = match changed {
            Some(changed) if incremental => {
                let mut keys = SgKeys::default();
                let mut touched = BTreeSet::new();
                for id in changed {
                    let now = nb.lports.get(id).filter(|p| self.is_member(p));
                    self.set_member(id, now, &mut touched);
                }
                if self.resolve(touched, ids, out, Some(&mut keys)) {
                    Some(keys)
                } else {
                    self.full(nb, ports, members(), ids, out);
                    None
                }
            }
            _ => {
                self.full(nb, ports, members(), ids, out);
                None
            }
        };
        (keys, self.summary(out))
    }

    fn full<'a>(
        &mut self,
        nb: &NbSnapshot,
        ports: &[(u32, &LPort)],
        members: impl IntoIterator<Item = &'a Arc<LPort>>,
        ids: &mut Identities,
        out: &mut MapEntries,
    ) {
        *self = SgEngine {
            local: Local::of(nb, ports),
            primed: true,
            ..Default::default()
        };
        out.ident.clear();
        out.ident_lpm.clear();
        out.policy.clear();
        let mut touched = BTreeSet::new();
        for i in 0..self.local.used.len() {
            if let Selector::Prefix(p) = &self.local.used[i] {
                let e = (family(&p.addr), *p);
                self.add_own(e, i, &mut touched);
            }
        }
        for port in members {
            if self.is_member(port) && !self.members.contains_key(&port.id) {
                self.set_member(&port.id, Some(port), &mut touched);
            }
        }
        // Numbers of sets no longer present are forgotten (never reused); the adopted
        // hints serve this first computation only.
        ids.begin_round();
        let resolved = self.resolve(touched, ids, out, None);
        debug_assert!(resolved, "a full computation starts numbering afresh");
        ids.end_round();
        // Rules without a remote: the family's "any" identity.
        for r in &self.local.rules {
            if r.selector.is_none() {
                insert_policy(out, r, ident_any(r.family), None, &mut self.policy_per_tap);
            }
        }
    }

    fn is_member(&self, port: &LPort) -> bool {
        port.security_groups
            .iter()
            .any(|g| self.local.group_selector.contains_key(g))
    }

    /// Replaces what member `id` gave (nothing when `now` is `None`).
    fn set_member(&mut self, id: &str, now: Option<&Arc<LPort>>, touched: &mut BTreeSet<Entry>) {
        if let (Some(old), Some(new)) = (self.members.get(id), now)
            && Arc::ptr_eq(&old.port, new)
        {
            return;
        }
        if let Some(old) = self.members.remove(id) {
            for e in &old.entries {
                for &s in &old.selectors {
                    self.remove_own(*e, s, touched);
                }
            }
        }
        if let Some(port) = now {
            let selectors: Vec<usize> = port
                .security_groups
                .iter()
                .filter_map(|g| self.local.group_selector.get(g).copied())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            let entries = port_entries(port);
            for e in &entries {
                for &s in &selectors {
                    self.add_own(*e, s, touched);
                }
            }
            self.members.insert(
                id.to_string(),
                Member {
                    port: port.clone(),
                    entries,
                    selectors,
                },
            );
        }
    }

    fn add_own(&mut self, e: Entry, s: usize, touched: &mut BTreeSet<Entry>) {
        let own = self.own.entry(e).or_insert_with(|| {
            let (a, w) = bits(&e.1.addr);
            self.order.insert((e.0, mask(a, e.1.len, w), e.1.len));
            *self.lens[fam_slot(e.0)].entry(e.1.len).or_default() += 1;
            BTreeMap::new()
        });
        let n = own.entry(s).or_default();
        *n += 1;
        if *n == 1 {
            touched.insert(e);
        }
    }

    fn remove_own(&mut self, e: Entry, s: usize, touched: &mut BTreeSet<Entry>) {
        let Some(own) = self.own.get_mut(&e) else {
            return;
        };
        if let Some(n) = own.get_mut(&s) {
            *n -= 1;
            if *n == 0 {
                own.remove(&s);
                touched.insert(e);
            }
        }
        if own.is_empty() {
            self.own.remove(&e);
            let (a, w) = bits(&e.1.addr);
            self.order.remove(&(e.0, mask(a, e.1.len, w), e.1.len));
            let lens = &mut self.lens[fam_slot(e.0)];
            if let Some(n) = lens.get_mut(&e.1.len) {
                *n -= 1;
                if *n == 0 {
                    lens.remove(&e.1.len);
                }
            }
        }
    }

    /// The full set of an entry: its own selectors and those of every entry containing it.
    fn set_of(&self, e: &Entry) -> Vec<usize> {
        let mut set: BTreeSet<usize> = self.own[e].keys().copied().collect();
        let (a, w) = bits(&e.1.addr);
        for (&len, _) in self.lens[fam_slot(e.0)].range(..e.1.len) {
            let outer = IpPrefix {
                addr: addr_of(e.0, mask(a, len, w), w),
                len,
            };
            if let Some(o) = self.own.get(&(e.0, outer)) {
                set.extend(o.keys().copied());
            }
        }
        set.into_iter().collect()
    }

    /// Re-resolves the `touched` entries (and those nested in touched prefixes), renumbers
    /// what changed and patches `out`. With `keys`, notes every key written or removed.
    /// False when identity numbers ran out (the caller recomputes all).
    fn resolve(
        &mut self,
        touched: BTreeSet<Entry>,
        ids: &mut Identities,
        out: &mut MapEntries,
        mut keys: Option<&mut SgKeys>,
    ) -> bool {
        // A prefix's selectors reach every entry inside it.
        let mut affected = touched.clone();
        for e in &touched {
            if e.1.is_host() {
                continue;
            }
            let (a, w) = bits(&e.1.addr);
            let net = mask(a, e.1.len, w);
            // `mask` aligns the bits at the top: the prefix's last address sets every bit
            // after its length.
            let last = net | u128::MAX.checked_shr(u32::from(e.1.len)).unwrap_or(0);
            for &(f, n, len) in self.order.range((e.0, net, 0)..=(e.0, last, u8::MAX)) {
                if len > e.1.len {
                    affected.insert((
                        f,
                        IpPrefix {
                            addr: addr_of(f, n, w),
                            len,
                        },
                    ));
                }
            }
        }
        // New sets of the affected entries; counts moved before any identity is judged
        // gone, so a set that one entry leaves and another takes keeps its number.
        let mut changes: Vec<(Entry, Option<Vec<usize>>)> = Vec::new();
        let mut fresh: BTreeMap<(u8, Vec<usize>), Entry> = BTreeMap::new();
        for e in affected {
            let new = self.own.contains_key(&e).then(|| self.set_of(&e));
            let old = self.resolved.get(&e).map(|r| &r.set);
            if old == new.as_ref() {
                continue;
            }
            if let Some(old) = old {
                let key = (e.0, old.clone());
                if let Some(u) = self.sets.get_mut(&key) {
                    u.1 -= 1;
                }
            }
            if let Some(set) = &new {
                let key = (e.0, set.clone());
                match self.sets.get_mut(&key) {
                    Some(u) => u.1 += 1,
                    None => {
                        fresh.entry(key.clone()).or_insert(e);
                        self.sets.insert(key, (0, 1));
                    }
                }
            }
            changes.push((e, new));
        }
        // Identities no entry has any more: their policy goes, their numbers are retired.
        let gone: Vec<(u8, Vec<usize>)> = self
            .sets
            .iter()
            .filter(|(k, u)| u.1 == 0 && !fresh.contains_key(*k))
            .map(|(k, _)| k.clone())
            .collect();
        for key in gone {
            let (ident, _) = self.sets.remove(&key).expect("present");
            self.policy_of(&key, ident, out, keys.as_deref_mut(), false);
            ids.forget(key.0, self.selectors(&key.1));
        }
        for (key, first) in fresh {
            let Some(n) = ids.number(key.0, self.selectors(&key.1), &ident_lpm_key(&first.1))
            else {
                return false;
            };
            self.sets.get_mut(&key).expect("fresh").0 = n;
            self.policy_of(&key, n, out, keys.as_deref_mut(), true);
        }
        for (e, new) in changes {
            let lpm = ident_lpm_key(&e.1);
            match new {
                Some(set) => {
                    let ident = self.sets[&(e.0, set.clone())].0;
                    if e.1.is_host() {
                        out.ident.insert(lpm.key, ident);
                    } else {
                        out.ident_lpm.insert(lpm, ident);
                    }
                    self.resolved.insert(e, Resolved { set, ident });
                }
                None => {
                    if e.1.is_host() {
                        out.ident.remove(&lpm.key);
                    } else {
                        out.ident_lpm.remove(&lpm);
                    }
                    self.resolved.remove(&e);
                }
            }
            if let Some(k) = keys.as_deref_mut() {
                if e.1.is_host() {
                    k.ident.insert(lpm.key);
                } else {
                    k.ident_lpm.insert(lpm);
                }
            }
        }
        true
    }

    fn selectors(&self, set: &[usize]) -> Vec<Selector> {
        set.iter().map(|&i| self.local.used[i].clone()).collect()
    }

    /// Adds (or removes) the policy entries of identity `ident` of `set`: every local
    /// rule of its family naming one of the set's selectors, per port block.
    fn policy_of(
        &mut self,
        set: &(u8, Vec<usize>),
        ident: u32,
        out: &mut MapEntries,
        mut keys: Option<&mut SgKeys>,
        add: bool,
    ) {
        self.views = None;
        for s in &set.1 {
            let Some(rules) = self.local.by_selector.get(s) else {
                continue;
            };
            for &r in rules {
                let r = &self.local.rules[r];
                if r.family != set.0 {
                    continue;
                }
                if add {
                    insert_policy(out, r, ident, keys.as_deref_mut(), &mut self.policy_per_tap);
                } else {
                    for k in policy_keys(r, ident) {
                        if out.policy.remove(&k).is_some() {
                            *self.policy_per_tap.entry(r.ifindex).or_default() -= 1;
                        }
                        if let Some(keys) = keys.as_deref_mut() {
                            keys.policy.insert(k);
                        }
                    }
                }
            }
        }
    }

    fn summary(&mut self, out: &MapEntries) -> SgSummary {
        let mut warnings = self.local.warnings.clone();
        for (map, n, cap) in [
            (maps::IDENT, out.ident.len(), maps::IDENT_MAX),
            (maps::IDENT_LPM, out.ident_lpm.len(), maps::IDENT_LPM_MAX),
            (maps::POLICY, out.policy.len(), maps::POLICY_MAX),
        ] {
            if n > cap as usize {
                warnings.insert(format!(
                    "{map} needs {n} entries but holds {cap}: the writes beyond it fail \
                     (counted in dragonflow_map_write_errors_total) and what they would \
                     allow is denied"
                ));
            }
        }
        let ports = self
            .views
            .get_or_insert_with(|| {
                Arc::new(
                    self.local
                        .views
                        .iter()
                        .map(|v| SgPortView {
                            policy_entries: self
                                .policy_per_tap
                                .get(&v.ifindex)
                                .copied()
                                .unwrap_or(0),
                            ..v.clone()
                        })
                        .collect(),
                )
            })
            .clone();
        SgSummary {
            ports,
            identities: self.sets.len(),
            warnings,
        }
    }
}

/// What a computation reports besides the map entries.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SgSummary {
    pub ports: Arc<Vec<SgPortView>>,
    pub identities: usize,
    pub warnings: BTreeSet<String>,
}

fn addr_of(fam: u8, bits: u128, width: u8) -> IpAddr {
    let v = if width == 128 {
        bits
    } else {
        bits >> (128 - u32::from(width))
    };
    if fam == FAMILY_V4 {
        IpAddr::V4((v as u32).into())
    } else {
        IpAddr::V6(v.into())
    }
}

fn policy_keys(r: &LocalRule, ident: u32) -> impl Iterator<Item = PolicyLpmKey> + '_ {
    r.blocks
        .iter()
        .map(move |&(proto, dport, prefix_len)| PolicyLpmKey {
            prefix_len,
            key: PolicyKey {
                ifindex: r.ifindex,
                ident,
                dir: r.dir,
                proto,
                dport,
            },
        })
}

/// Several rules may allow the same thing: one entry, the lowest tag, the same every time.
fn insert_policy(
    out: &mut MapEntries,
    r: &LocalRule,
    ident: u32,
    mut keys: Option<&mut SgKeys>,
    per_tap: &mut HashMap<u32, usize>,
) {
    for k in policy_keys(r, ident) {
        match out.policy.get_mut(&k) {
            Some(v) => v.rule = v.rule.min(r.tag),
            None => {
                out.policy.insert(k, PolicyValue { rule: r.tag });
                *per_tap.entry(r.ifindex).or_default() += 1;
            }
        }
        if let Some(keys) = keys.as_deref_mut() {
            keys.policy.insert(k);
        }
    }
}
