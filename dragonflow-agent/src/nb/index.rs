//! Who points at whom in the northbound: ports by network, by chassis and by security
//! group, routers by network. The agent works on the part of a cloud its local ports
//! depend on (see `scope`); these lookups let it find that part, and what one change
//! touches, without scanning every record of a 100,000-port cloud.
//!
//! The index remembers what it filed each record under, so an update needs only the new
//! version (or none, for a removal) and returns where the record was before.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    sync::Arc,
};

use super::{LPort, LRouter, NbSnapshot};

/// Ids are shared between the lookups (one allocation per record, not one per lookup).
pub type Id = Arc<str>;

/// Where a port is filed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortLinks {
    pub lswitch: Id,
    pub chassis: Option<Id>,
    pub groups: Vec<Id>,
}

#[derive(Debug, Default)]
pub struct NbIndex {
    ports_by_net: HashMap<Id, BTreeSet<Id>>,
    ports_by_chassis: HashMap<Id, BTreeSet<Id>>,
    ports_by_group: HashMap<Id, BTreeSet<Id>>,
    routers_by_net: HashMap<Id, BTreeSet<Id>>,
    ports: HashMap<Id, PortLinks>,
    /// The networks of each router's interfaces.
    routers: HashMap<Id, Vec<Id>>,
    /// Every name seen, so equal names share one allocation.
    names: HashSet<Id>,
}

fn file(map: &mut HashMap<Id, BTreeSet<Id>>, at: &Id, id: &Id) {
    map.entry(at.clone()).or_default().insert(id.clone());
}

fn unfile(map: &mut HashMap<Id, BTreeSet<Id>>, at: &Id, id: &str) {
    if let Some(set) = map.get_mut(at) {
        set.remove(id);
        if set.is_empty() {
            map.remove(at);
        }
    }
}

fn list<'a>(map: &'a HashMap<Id, BTreeSet<Id>>, at: &str) -> impl Iterator<Item = &'a Id> {
    map.get(at).into_iter().flatten()
}

impl NbIndex {
    /// The index of every port and router of `nb`.
    pub fn of(nb: &NbSnapshot) -> Self {
        let mut ix = NbIndex::default();
        for (id, p) in &nb.lports {
            ix.set_port(id, Some(p));
        }
        for (id, r) in &nb.lrouters {
            ix.set_router(id, Some(r));
        }
        ix
    }

    fn name(&mut self, s: &str) -> Id {
        if let Some(id) = self.names.get(s) {
            return id.clone();
        }
        let id: Id = Arc::from(s);
        self.names.insert(id.clone());
        id
    }

    /// Files port `id` as `port` says (`None`: removed). Returns where it was filed
    /// before, if anywhere.
    pub fn set_port(&mut self, id: &str, port: Option<&LPort>) -> Option<PortLinks> {
        let old = self.ports.remove(id);
        if let Some(o) = &old {
            unfile(&mut self.ports_by_net, &o.lswitch, id);
            if let Some(c) = &o.chassis {
                unfile(&mut self.ports_by_chassis, c, id);
            }
            for g in &o.groups {
                unfile(&mut self.ports_by_group, g, id);
            }
        }
        if let Some(p) = port {
            let key = self.name(id);
            let links = PortLinks {
                lswitch: self.name(&p.lswitch),
                chassis: p.chassis.as_deref().map(|c| self.name(c)),
                groups: p.security_groups.iter().map(|g| self.name(g)).collect(),
            };
            file(&mut self.ports_by_net, &links.lswitch, &key);
            if let Some(c) = &links.chassis {
                file(&mut self.ports_by_chassis, c, &key);
            }
            for g in &links.groups {
                file(&mut self.ports_by_group, g, &key);
            }
            self.ports.insert(key, links);
        } else {
            // Keep the name table from growing with records that come and go.
            self.names.remove(id);
        }
        old
    }

    /// Files router `id` (`None`: removed). Returns the networks it was on before.
    pub fn set_router(&mut self, id: &str, router: Option<&LRouter>) -> Vec<Id> {
        let old = self.routers.remove(id).unwrap_or_default();
        for n in &old {
            unfile(&mut self.routers_by_net, n, id);
        }
        if let Some(r) = router {
            let key = self.name(id);
            let nets: Vec<Id> = r.ports.iter().map(|p| self.name(&p.lswitch)).collect();
            for n in &nets {
                file(&mut self.routers_by_net, n, &key);
            }
            self.routers.insert(key, nets);
        }
        old
    }

    /// Where port `id` is filed.
    pub fn port(&self, id: &str) -> Option<&PortLinks> {
        self.ports.get(id)
    }

    pub fn ports_in(&self, lswitch: &str) -> impl Iterator<Item = &Id> {
        list(&self.ports_by_net, lswitch)
    }

    pub fn ports_on(&self, chassis: &str) -> impl Iterator<Item = &Id> {
        list(&self.ports_by_chassis, chassis)
    }

    pub fn members(&self, group: &str) -> impl Iterator<Item = &Id> {
        list(&self.ports_by_group, group)
    }

    pub fn routers_on(&self, lswitch: &str) -> impl Iterator<Item = &Id> {
        list(&self.routers_by_net, lswitch)
    }

    /// The networks router `id` has interfaces on.
    pub fn router_nets(&self, id: &str) -> &[Id] {
        self.routers.get(id).map(Vec::as_slice).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(id: &str, ls: &str, chassis: &str, groups: &[&str]) -> LPort {
        serde_json::from_value(serde_json::json!({
            "id": id, "lswitch": ls, "mac": "fa:16:3e:00:00:01", "chassis": chassis,
            "security_groups": groups,
        }))
        .expect("port")
    }

    fn ids<'a>(it: impl Iterator<Item = &'a Id>) -> Vec<&'a str> {
        it.map(|i| &**i).collect()
    }

    #[test]
    fn ports_move_between_networks_chassis_and_groups() {
        let mut ix = NbIndex::default();
        assert_eq!(
            ix.set_port("p1", Some(&port("p1", "n1", "hv1", &["g1"]))),
            None
        );
        ix.set_port("p2", Some(&port("p2", "n1", "hv2", &["g1", "g2"])));
        assert_eq!(ids(ix.ports_in("n1")), ["p1", "p2"]);
        assert_eq!(ids(ix.members("g1")), ["p1", "p2"]);
        // Moved: filed under the new places only, and the old ones are returned.
        let old = ix
            .set_port("p1", Some(&port("p1", "n2", "hv2", &[])))
            .expect("was filed");
        assert_eq!(&*old.lswitch, "n1");
        assert_eq!(old.chassis.as_deref(), Some("hv1"));
        assert_eq!(ids(ix.ports_in("n1")), ["p2"]);
        assert_eq!(ids(ix.ports_in("n2")), ["p1"]);
        assert_eq!(ids(ix.ports_on("hv2")), ["p1", "p2"]);
        assert!(ids(ix.ports_on("hv1")).is_empty());
        assert_eq!(ids(ix.members("g1")), ["p2"]);
        assert!(ix.set_port("p2", None).is_some());
        assert!(ix.members("g1").next().is_none());
        assert!(ix.ports_by_group.is_empty() && !ix.ports_by_net.contains_key("n1"));
    }

    #[test]
    fn routers_are_filed_by_network() {
        let r: LRouter = serde_json::from_value(serde_json::json!({
            "id": "r1", "ports": [
                {"id": "i1", "lswitch": "n1", "mac": "fa:16:3e:00:01:01", "ip": "192.0.2.1/24"},
                {"id": "i2", "lswitch": "n2", "mac": "fa:16:3e:00:01:02", "ip": "198.51.100.1/24"}
            ]
        }))
        .expect("router");
        let mut ix = NbIndex::default();
        assert!(ix.set_router("r1", Some(&r)).is_empty());
        assert_eq!(ids(ix.routers_on("n2")), ["r1"]);
        assert_eq!(ix.router_nets("r1").len(), 2);
        let old = ix.set_router("r1", None);
        assert_eq!(old.len(), 2);
        assert!(ix.routers_on("n1").next().is_none());
    }
}
