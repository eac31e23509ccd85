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
//! The index is incremental: a change touches the ports sharing one of the changed port's
//! claims, never the whole cloud.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    net::IpAddr,
};

use super::LPort;

/// Which port is older: (etcd create_revision, id).
pub type Age = (i64, String);

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

/// The holders of one claim, oldest first, by how they hold it.
#[derive(Debug, Default)]
struct Holders {
    /// Fixed IPs and bindings.
    exclusive: BTreeSet<Age>,
    /// Allowed address pairs.
    shared: BTreeSet<Age>,
}

/// Every valid port's claims, indexed by claim.
#[derive(Debug, Default)]
pub struct ClaimIndex {
    ports: HashMap<String, (i64, BTreeSet<(Claim, Use)>)>,
    holders: HashMap<Claim, Holders>,
}

impl ClaimIndex {
    /// Sets what port `id` claims (`None`: nothing, the port is gone or invalid), created
    /// at etcd revision `created`. Returns the other ports whose standing this may change.
    pub fn set(&mut self, id: &str, port: Option<(i64, &LPort)>) -> BTreeSet<String> {
        let mut touched = BTreeSet::new();
        let new = port.map(|(created, p)| (created, claims_of(p)));
        if let Some((created, old)) = self.ports.remove(id) {
            let age = (created, id.to_string());
            for (claim, how) in old {
                let Some(h) = self.holders.get_mut(&claim) else {
                    continue;
                };
                h.exclusive.remove(&age);
                h.shared.remove(&age);
                touch(h, how, &mut touched);
                if h.exclusive.is_empty() && h.shared.is_empty() {
                    self.holders.remove(&claim);
                }
            }
        }
        if let Some((created, claims)) = new {
            let age = (created, id.to_string());
            for (claim, how) in &claims {
                let h = self.holders.entry(claim.clone()).or_default();
                touch(h, *how, &mut touched);
                match how {
                    Use::Aap => h.shared.insert(age.clone()),
                    Use::Fixed | Use::Binding => h.exclusive.insert(age.clone()),
                };
            }
            self.ports.insert(id.to_string(), (created, claims));
        }
        touched.remove(id);
        touched
    }

    /// The create_revision port `id` was indexed with, if it is.
    pub fn created(&self, id: &str) -> Option<i64> {
        self.ports.get(id).map(|(created, _)| *created)
    }

    /// The first claim of port `id` an older port holds, if any.
    pub fn conflict(&self, id: &str) -> Option<Conflict> {
        let (created, claims) = self.ports.get(id)?;
        let me = (*created, id.to_string());
        claims.iter().find_map(|(claim, how)| {
            let h = self.holders.get(claim)?;
            let mut rivals = vec![h.exclusive.first()];
            if *how != Use::Aap {
                rivals.push(h.shared.first());
            }
            let holder = rivals.into_iter().flatten().filter(|a| **a < me).min()?;
            Some(Conflict {
                claim: claim.clone(),
                holder: holder.1.clone(),
            })
        })
    }
}

/// Notes the holders of a claim whose standing a port holding it as `how` affects: all of
/// them for a fixed IP or a binding, only the exclusive ones for an AAP.
fn touch(h: &Holders, how: Use, touched: &mut BTreeSet<String>) {
    touched.extend(h.exclusive.iter().map(|a| a.1.clone()));
    if how != Use::Aap {
        touched.extend(h.shared.iter().map(|a| a.1.clone()));
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
