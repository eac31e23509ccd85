//! What each port claims for itself alone, and which port holds each claim when two
//! collide: the agent's refusal of conflicting ports (README: "Invalid and conflicting
//! records").
//!
//! A port claims its fixed IPs and its single-IP allowed address pairs in its network, and
//! its (chassis, tap) binding. Two ports collide on an address when at least one of them
//! has it as a fixed IP (an AAP shared by several ports is a shared VIP, not a conflict),
//! and on a binding always. The older port holds the claim: lower etcd create_revision,
//! then lower id, so every agent, restarted or not, decides alike whatever the order it
//! learnt the ports in. A port that does not hold all its claims is refused.
//!
//! The index is incremental: a change looks at the ports of the changed port's network
//! and chassis, never the whole cloud.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    fmt,
    net::IpAddr,
    sync::Arc,
};

use crate::nb::LPort;

/// One thing a port holds for itself alone.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Claim {
    /// An IP in a network (fixed IP, or a single-IP allowed address pair).
    Addr { lswitch: String, ip: IpAddr },
    /// A tap device on a chassis.
    Tap { chassis: String, tap: String },
}

impl fmt::Display for Claim {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Claim::Addr { lswitch, ip } => write!(f, "IP {ip} in lswitch {lswitch}"),
            Claim::Tap { chassis, tap } => write!(f, "tap {tap} on chassis {chassis}"),
        }
    }
}

/// How a port holds an address: a fixed IP collides with any other holder, an allowed
/// address pair only with a fixed IP.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Use {
    Fixed,
    Aap,
    Binding,
}

/// A claim a port does not hold, and the older port that does.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conflict {
    pub claim: Claim,
    pub holder: String,
}

/// What one port claims, kept compact (a cloud has 100,000 of them): the claims are
/// rebuilt from this when asked for.
#[derive(Debug)]
struct Filed {
    id: Arc<str>,
    created: i64,
    lswitch: Arc<str>,
    fixed: Box<[IpAddr]>,
    /// Single-IP allowed address pairs.
    aaps: Box<[IpAddr]>,
    binding: Option<(Arc<str>, Box<str>)>,
}

/// A claim as [`Filed`] holds it (names interned: equal names are the same pointer).
#[derive(Clone, Copy)]
enum Held<'a> {
    Addr(&'a Arc<str>, IpAddr),
    Tap(&'a Arc<str>, &'a str),
}

impl Filed {
    fn of(id: &str, created: i64, p: &LPort, names: &mut Names) -> Self {
        Filed {
            id: Arc::from(id),
            created,
            lswitch: names.get(&p.lswitch),
            fixed: p.fixed_ips.clone().into_boxed_slice(),
            aaps: super::single_ip_aaps(p).collect(),
            binding: p
                .chassis
                .as_deref()
                .map(|c| (names.get(c), p.tap_name().into_boxed_str())),
        }
    }

    /// Its claims: addresses by (IP, use) — a fixed IP before the same IP as an AAP — then
    /// the binding (the order [`ClaimIndex::conflict`] reports the first of).
    fn claims(&self) -> Vec<(Held<'_>, Use)> {
        let mut addrs: Vec<(IpAddr, Use)> = self
            .fixed
            .iter()
            .map(|ip| (*ip, Use::Fixed))
            .chain(self.aaps.iter().map(|ip| (*ip, Use::Aap)))
            .collect();
        addrs.sort();
        addrs.dedup();
        let mut out: Vec<(Held<'_>, Use)> = addrs
            .into_iter()
            .map(|(ip, how)| (Held::Addr(&self.lswitch, ip), how))
            .collect();
        if let Some((chassis, tap)) = &self.binding {
            out.push((Held::Tap(chassis, tap), Use::Binding));
        }
        out
    }

    /// How this port holds `claim`, if it does: `Fixed` wins over `Aap` (a fixed IP also
    /// listed as an AAP is held exclusively).
    fn holds(&self, claim: Held<'_>) -> Option<Use> {
        match claim {
            Held::Addr(lswitch, ip) if Arc::ptr_eq(lswitch, &self.lswitch) => {
                if self.fixed.contains(&ip) {
                    Some(Use::Fixed)
                } else if self.aaps.contains(&ip) {
                    Some(Use::Aap)
                } else {
                    None
                }
            }
            Held::Tap(chassis, tap) => self
                .binding
                .as_ref()
                .filter(|(c, t)| Arc::ptr_eq(c, chassis) && **t == *tap)
                .map(|_| Use::Binding),
            Held::Addr(..) => None,
        }
    }

    /// Whether this port is a rival of a holder of `claim` as `how`: any holder of a fixed
    /// IP or a binding; only an exclusive holder of an allowed address pair.
    fn rivals(&self, claim: Held<'_>, how: Use) -> bool {
        match self.holds(claim) {
            Some(Use::Aap) => how != Use::Aap,
            Some(_) => true,
            None => false,
        }
    }
}

fn claim_of(h: Held<'_>) -> Claim {
    match h {
        Held::Addr(lswitch, ip) => Claim::Addr {
            lswitch: lswitch.to_string(),
            ip,
        },
        Held::Tap(chassis, tap) => Claim::Tap {
            chassis: chassis.to_string(),
            tap: tap.to_string(),
        },
    }
}

/// Equal names share one allocation.
#[derive(Debug, Default)]
struct Names(HashMap<Arc<str>, ()>);

impl Names {
    fn get(&mut self, s: &str) -> Arc<str> {
        if let Some((k, _)) = self.0.get_key_value(s) {
            return k.clone();
        }
        let k: Arc<str> = Arc::from(s);
        self.0.insert(k.clone(), ());
        k
    }
}

/// Every valid port's claims. Rivals are found among the ports of the same network (for
/// an address) or chassis (for a tap): the work of a change grows with those, not with
/// the cloud, and the index costs a few dozen bytes a port beyond the claims themselves.
#[derive(Debug, Default)]
pub struct ClaimIndex {
    /// Filed ports by slot (a freed slot is reused).
    slots: Vec<Option<Filed>>,
    free: Vec<usize>,
    ports: HashMap<Arc<str>, usize>,
    by_net: HashMap<Arc<str>, HashSet<usize>>,
    by_chassis: HashMap<Arc<str>, HashSet<usize>>,
    names: Names,
}

fn unfile(map: &mut HashMap<Arc<str>, HashSet<usize>>, at: &Arc<str>, slot: usize) {
    if let Some(set) = map.get_mut(at) {
        set.remove(&slot);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

impl ClaimIndex {
    /// The other ports that may hold one of `f`'s claims (some twice).
    fn neighbours<'a>(&'a self, f: &'a Filed) -> impl Iterator<Item = &'a Filed> {
        let net = self.by_net.get(&f.lswitch).into_iter().flatten();
        let chassis = f
            .binding
            .as_ref()
            .and_then(|(c, _)| self.by_chassis.get(c))
            .into_iter()
            .flatten();
        net.chain(chassis)
            .filter_map(|&i| self.slots[i].as_ref())
            .filter(|o| !Arc::ptr_eq(&o.id, &f.id) && o.id != f.id)
    }

    /// The ports whose standing a port holding `f`'s claims affects.
    fn touched_by(&self, f: &Filed, out: &mut BTreeSet<String>) {
        let claims = f.claims();
        for o in self.neighbours(f) {
            if claims.iter().any(|&(claim, how)| o.rivals(claim, how)) {
                out.insert(o.id.to_string());
            }
        }
    }

    /// Sets what port `id` claims (`None`: nothing, the port is gone or invalid), created
    /// at etcd revision `created`. Returns the other ports whose standing this may change.
    pub fn set(&mut self, id: &str, port: Option<(i64, &LPort)>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        if let Some(slot) = self.ports.remove(id) {
            let old = self.slots[slot].take().expect("filed");
            self.free.push(slot);
            unfile(&mut self.by_net, &old.lswitch, slot);
            if let Some((c, _)) = &old.binding {
                unfile(&mut self.by_chassis, c, slot);
            }
            self.touched_by(&old, &mut touched);
        }
        if let Some((created, p)) = port {
            let f = Filed::of(id, created, p, &mut self.names);
            self.touched_by(&f, &mut touched);
            let slot = match self.free.pop() {
                Some(i) => i,
                None => {
                    self.slots.push(None);
                    self.slots.len() - 1
                }
            };
            self.by_net
                .entry(f.lswitch.clone())
                .or_default()
                .insert(slot);
            if let Some((c, _)) = &f.binding {
                self.by_chassis.entry(c.clone()).or_default().insert(slot);
            }
            self.ports.insert(f.id.clone(), slot);
            self.slots[slot] = Some(f);
        }
        touched.remove(id);
        touched
    }

    fn filed(&self, id: &str) -> Option<&Filed> {
        self.ports.get(id).and_then(|&i| self.slots[i].as_ref())
    }

    /// The create_revision port `id` was indexed with, if it is.
    pub fn created(&self, id: &str) -> Option<i64> {
        self.filed(id).map(|f| f.created)
    }

    /// The first claim of port `id` an older port holds, if any.
    pub fn conflict(&self, id: &str) -> Option<Conflict> {
        let f = self.filed(id)?;
        let me = (f.created, &*f.id);
        let claims = f.claims();
        // The oldest older rival of each claim, in one pass over the neighbours.
        let mut best: Vec<Option<(i64, &str)>> = vec![None; claims.len()];
        for o in self.neighbours(f) {
            let age = (o.created, &*o.id);
            if age >= me {
                continue;
            }
            for (i, &(claim, how)) in claims.iter().enumerate() {
                if o.rivals(claim, how) && best[i].is_none_or(|b| age < b) {
                    best[i] = Some(age);
                }
            }
        }
        claims.iter().zip(best).find_map(|(&(claim, _), b)| {
            b.map(|(_, holder)| Conflict {
                claim: claim_of(claim),
                holder: holder.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{AllowedAddressPair, IpPrefix};

    fn port(id: &str, fixed: &str, aap: Option<&str>, tap: Option<&str>) -> LPort {
        LPort {
            id: id.into(),
            lswitch: "n1".into(),
            mac: "fa:16:3e:00:00:01".parse().unwrap(),
            fixed_ips: vec![fixed.parse().unwrap()],
            allowed_address_pairs: aap
                .map(|a| AllowedAddressPair {
                    ip_address: a.parse::<IpPrefix>().unwrap(),
                    mac_address: None,
                })
                .into_iter()
                .collect(),
            port_security_enabled: true,
            security_groups: vec![],
            chassis: tap.map(|_| "hv1".into()),
            ifname: tap.map(Into::into),
            device_owner: String::new(),
            admin_state_up: true,
        }
    }

    fn holder(ix: &ClaimIndex, id: &str) -> Option<String> {
        ix.conflict(id).map(|c| c.holder)
    }

    #[test]
    fn the_older_port_holds_a_fixed_ip_whatever_the_order() {
        let a = port("a", "192.0.2.5", None, None);
        let b = port("b", "192.0.2.5", None, None);
        for order in [[("a", 5, &a), ("b", 9, &b)], [("b", 9, &b), ("a", 5, &a)]] {
            let mut ix = ClaimIndex::default();
            for (id, rev, p) in order {
                ix.set(id, Some((rev, p)));
            }
            assert_eq!(holder(&ix, "a"), None);
            let c = ix.conflict("b").unwrap();
            assert_eq!(c.holder, "a");
            assert_eq!(c.claim.to_string(), "IP 192.0.2.5 in lswitch n1");
        }
        // Same revision: the lower id.
        let mut ix = ClaimIndex::default();
        ix.set("b", Some((5, &b)));
        assert_eq!(ix.set("a", Some((5, &a))), BTreeSet::from(["b".into()]));
        assert_eq!(holder(&ix, "b").as_deref(), Some("a"));
        // The holder goes: the other is touched, and free.
        assert_eq!(ix.set("a", None), BTreeSet::from(["b".into()]));
        assert_eq!(holder(&ix, "b"), None);
    }

    #[test]
    fn aaps_collide_with_fixed_ips_only() {
        let mut ix = ClaimIndex::default();
        let vip1 = port("a", "192.0.2.5", Some("192.0.2.100"), None);
        let vip2 = port("b", "192.0.2.6", Some("192.0.2.100"), None);
        let cidr = port("c", "192.0.2.7", Some("192.0.2.0/24"), None);
        ix.set("a", Some((1, &vip1)));
        // Another holder of the VIP touches no one: shared VIPs are not conflicts.
        assert!(ix.set("b", Some((2, &vip2))).is_empty());
        ix.set("c", Some((3, &cidr)));
        assert_eq!(
            [holder(&ix, "a"), holder(&ix, "b"), holder(&ix, "c")],
            [None, None, None]
        );
        // A younger port taking the VIP as its fixed IP loses to both holders.
        let d = port("d", "192.0.2.100", None, None);
        assert_eq!(
            ix.set("d", Some((4, &d))),
            BTreeSet::from(["a".into(), "b".into()])
        );
        assert_eq!(holder(&ix, "d").as_deref(), Some("a"));
        // An older one wins: both AAP holders lose.
        ix.set("d", Some((0, &d)));
        assert_eq!(holder(&ix, "a").as_deref(), Some("d"));
        assert_eq!(holder(&ix, "b").as_deref(), Some("d"));
    }

    #[test]
    fn bindings_collide() {
        let mut ix = ClaimIndex::default();
        ix.set("a", Some((1, &port("a", "192.0.2.5", None, Some("tapx")))));
        ix.set("b", Some((2, &port("b", "192.0.2.6", None, Some("tapx")))));
        let c = ix.conflict("b").unwrap();
        assert_eq!(
            (c.holder.as_str(), c.claim.to_string()),
            ("a", "tap tapx on chassis hv1".to_string())
        );
        // Moving off the tap frees it.
        ix.set("b", Some((2, &port("b", "192.0.2.6", None, Some("tapy")))));
        assert_eq!(holder(&ix, "b"), None);
    }
}
