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

use super::LPort;

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

/// Everything `p` claims.
pub fn claims_of(p: &LPort) -> BTreeSet<(Claim, Use)> {
    let addr = |ip| Claim::Addr {
        lswitch: p.lswitch.clone(),
        ip,
    };
    let mut out: BTreeSet<(Claim, Use)> = p
        .fixed_ips
        .iter()
        .map(|&ip| (addr(ip), Use::Fixed))
        .collect();
    out.extend(
        p.allowed_address_pairs
            .iter()
            .filter(|a| a.ip_address.is_host())
            .map(|a| (addr(a.ip_address.addr), Use::Aap)),
    );
    if let Some(chassis) = &p.chassis {
        out.insert((
            Claim::Tap {
                chassis: chassis.clone(),
                tap: p.tap_name(),
            },
            Use::Binding,
        ));
    }
    out
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
    created: i64,
    lswitch: Arc<str>,
    fixed: Box<[IpAddr]>,
    /// Single-IP allowed address pairs.
    aaps: Box<[IpAddr]>,
    binding: Option<(Arc<str>, Box<str>)>,
}

impl Filed {
    fn of(created: i64, p: &LPort, names: &mut Names) -> Self {
        Filed {
            created,
            lswitch: names.get(&p.lswitch),
            fixed: p.fixed_ips.clone().into_boxed_slice(),
            aaps: p
                .allowed_address_pairs
                .iter()
                .filter(|a| a.ip_address.is_host())
                .map(|a| a.ip_address.addr)
                .collect(),
            binding: p
                .chassis
                .as_deref()
                .map(|c| (names.get(c), p.tap_name().into_boxed_str())),
        }
    }

    /// Its claims in the order of [`claims_of`].
    fn claims(&self) -> BTreeSet<(Claim, Use)> {
        let addr = |ip: &IpAddr| Claim::Addr {
            lswitch: self.lswitch.to_string(),
            ip: *ip,
        };
        let mut out: BTreeSet<(Claim, Use)> =
            self.fixed.iter().map(|ip| (addr(ip), Use::Fixed)).collect();
        out.extend(self.aaps.iter().map(|ip| (addr(ip), Use::Aap)));
        if let Some((chassis, tap)) = &self.binding {
            out.insert((
                Claim::Tap {
                    chassis: chassis.to_string(),
                    tap: tap.to_string(),
                },
                Use::Binding,
            ));
        }
        out
    }

    /// How this port holds `claim`, if it does: `Fixed` wins over `Aap` (a fixed IP also
    /// listed as an AAP is held exclusively).
    fn holds(&self, claim: &Claim) -> Option<Use> {
        match claim {
            Claim::Addr { lswitch, ip } if *lswitch == *self.lswitch => {
                if self.fixed.contains(ip) {
                    Some(Use::Fixed)
                } else if self.aaps.contains(ip) {
                    Some(Use::Aap)
                } else {
                    None
                }
            }
            Claim::Tap { chassis, tap } => self
                .binding
                .as_ref()
                .filter(|(c, t)| **c == **chassis && **t == **tap)
                .map(|_| Use::Binding),
            Claim::Addr { .. } => None,
        }
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
    ports: HashMap<Arc<str>, Filed>,
    by_net: HashMap<Arc<str>, HashSet<Arc<str>>>,
    by_chassis: HashMap<Arc<str>, HashSet<Arc<str>>>,
    names: Names,
}

fn unfile(map: &mut HashMap<Arc<str>, HashSet<Arc<str>>>, at: &Arc<str>, id: &str) {
    if let Some(set) = map.get_mut(at) {
        set.remove(id);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

impl ClaimIndex {
    /// The other ports that may hold one of `f`'s claims.
    fn neighbours<'a>(&'a self, f: &'a Filed) -> impl Iterator<Item = (&'a Arc<str>, &'a Filed)> {
        let net = self.by_net.get(&f.lswitch).into_iter().flatten();
        let chassis = f
            .binding
            .as_ref()
            .and_then(|(c, _)| self.by_chassis.get(c))
            .into_iter()
            .flatten();
        net.chain(chassis)
            .filter_map(|id| self.ports.get(id).map(|p| (id, p)))
    }

    /// The ports whose standing a port holding `claims` affects: every exclusive holder of
    /// one of them, and for a fixed IP or a binding the AAP holders too.
    fn touched_by(&self, id: &str, f: &Filed, out: &mut BTreeSet<String>) {
        let claims = f.claims();
        for (other, o) in self.neighbours(f) {
            if &**other == id {
                continue;
            }
            let hit = claims.iter().any(|(claim, how)| match o.holds(claim) {
                Some(Use::Aap) => *how != Use::Aap,
                Some(_) => true,
                None => false,
            });
            if hit {
                out.insert(other.to_string());
            }
        }
    }

    /// Sets what port `id` claims (`None`: nothing, the port is gone or invalid), created
    /// at etcd revision `created`. Returns the other ports whose standing this may change.
    pub fn set(&mut self, id: &str, port: Option<(i64, &LPort)>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        if let Some((key, old)) = self.ports.remove_entry(id) {
            unfile(&mut self.by_net, &old.lswitch, id);
            if let Some((c, _)) = &old.binding {
                unfile(&mut self.by_chassis, c, id);
            }
            self.touched_by(&key, &old, &mut touched);
        }
        if let Some((created, p)) = port {
            let f = Filed::of(created, p, &mut self.names);
            self.touched_by(id, &f, &mut touched);
            let key: Arc<str> = Arc::from(id);
            self.by_net
                .entry(f.lswitch.clone())
                .or_default()
                .insert(key.clone());
            if let Some((c, _)) = &f.binding {
                self.by_chassis
                    .entry(c.clone())
                    .or_default()
                    .insert(key.clone());
            }
            self.ports.insert(key, f);
        }
        touched.remove(id);
        touched
    }

    /// The create_revision port `id` was indexed with, if it is.
    pub fn created(&self, id: &str) -> Option<i64> {
        self.ports.get(id).map(|f| f.created)
    }

    /// The first claim of port `id` an older port holds, if any.
    pub fn conflict(&self, id: &str) -> Option<Conflict> {
        let f = self.ports.get(id)?;
        let me = (f.created, id);
        let claims = f.claims();
        claims.iter().find_map(|(claim, how)| {
            self.neighbours(f)
                .filter(|(other, _)| &***other != id)
                .filter(|(_, o)| match o.holds(claim) {
                    // An AAP holder is a rival only of a fixed IP.
                    Some(Use::Aap) => *how != Use::Aap,
                    Some(_) => true,
                    None => false,
                })
                .map(|(other, o)| (o.created, &**other))
                .filter(|age| *age < me)
                .min()
                .map(|(_, holder)| Conflict {
                    claim: claim.clone(),
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
