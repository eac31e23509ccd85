//! The desired map entries, kept up to date change by change (pure, like `reconcile`).
//!
//! `reconcile::desired_with` computes everything from a snapshot; at cloud scale that is
//! too much work for one changed port. This keeps the result of the last computation and
//! redoes only what a change touches:
//! - the local ports' own entries and the security groups are recomputed every time (their
//!   cost grows with the local ports and the members of the groups their rules name, not
//!   with the cloud);
//! - the forwarding state is kept per network (`forwarding::NetPart`: every key of it
//!   carries its network) and a network is recomputed only when its lswitch record, one of
//!   its ports, a router on it, a chassis hosting its ports or a shared-VIP claim in it
//!   changed — or when the chassis hosting a network routed with it changed (its tunnel
//!   admission lists them);
//! - only the keys of recomputed networks are compared with what the maps hold
//!   ([`Scope::Within`]); a full comparison ([`Scope::Full`]) follows any full
//!   recomputation (a read of all of etcd, new or gone taps, a retry).
//!
//! The outcome is the same as `desired_with` over `scope::scope` of the snapshot (tested
//! below on random change sequences); only the work differs.

use std::collections::{BTreeMap, BTreeSet};

use dragonflow_common::sg::PolicyValue;

use crate::{
    desired::{
        forwarding::{Context, NetPart, network},
        reconcile::{self, Desired, MapEntries, PortState},
        scope,
        secgroups::{Identities, SgEngine},
    },
    nb::{
        LPort, NbSnapshot,
        index::{Id, NbIndex},
    },
};

/// What changed in the northbound since the last computation.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Touched {
    /// Recompute everything (a full read of etcd).
    pub all: bool,
    /// lswitches whose record, ports, routers or shared-VIP claims changed.
    pub nets: BTreeSet<String>,
    /// Chassis whose record changed.
    pub chassis: BTreeSet<String>,
    /// Ports whose record changed (or came, or went).
    pub ports: BTreeSet<String>,
}

impl Touched {
    pub fn is_empty(&self) -> bool {
        !self.all && self.nets.is_empty() && self.chassis.is_empty() && self.ports.is_empty()
    }
}

/// Which keys of the desired entries may differ from the maps.
#[derive(Clone, Debug, PartialEq)]
pub enum Scope {
    /// Any key: compare everything.
    Full,
    /// The keys of the local ports' maps, of the routes, and of the forwarding and
    /// security-group maps those listed here (old and new entries of the recomputed
    /// networks, the security-group keys a member change touched).
    Within(Box<MapEntries>),
}

#[derive(Debug, Default)]
pub struct Incremental {
    desired: Desired,
    parts: BTreeMap<String, NetPart>,
    /// Tunnel IPs of the remote chassis hosting each network's ports.
    hosts: BTreeMap<String, BTreeSet<[u8; 4]>>,
    /// Programmed local ports → tap ifindex, at the last computation.
    local: BTreeMap<String, u32>,
    security_groups: SgEngine,
    primed: bool,
}

/// The maps whose keys carry their network (patched part by part).
fn remove_forwarding_keys(e: &mut MapEntries, of: &MapEntries) {
    for k in of.neigh.keys() {
        e.neigh.remove(k);
    }
    for k in of.l2.keys() {
        e.l2.remove(k);
    }
    for k in of.flood.keys() {
        e.flood.remove(k);
    }
    for k in of.groups.keys() {
        e.groups.remove(k);
    }
    for k in of.tun_peers.keys() {
        e.tun_peers.remove(k);
    }
    for k in of.tun_srcs.keys() {
        e.tun_srcs.remove(k);
    }
}

fn add_forwarding(e: &mut MapEntries, of: &MapEntries) {
    e.neigh.extend(of.neigh.iter().map(|(k, v)| (*k, *v)));
    e.l2.extend(of.l2.iter().map(|(k, v)| (*k, *v)));
    e.flood.extend(of.flood.iter().map(|(k, v)| (*k, *v)));
    e.groups.extend(of.groups.iter().map(|(k, v)| (*k, *v)));
    e.tun_peers
        .extend(of.tun_peers.iter().map(|(k, v)| (*k, *v)));
    e.tun_srcs.extend(of.tun_srcs.iter().map(|(k, v)| (*k, *v)));
}

fn clear_forwarding(e: &mut MapEntries) {
    e.neigh.clear();
    e.l2.clear();
    e.flood.clear();
    e.groups.clear();
    e.tun_peers.clear();
    e.tun_srcs.clear();
    e.routes.clear();
}

/// The ports of `net`, in id order (as `forwarding::compute` takes them).
fn ports_of<'a>(nb: &'a NbSnapshot, ix: &NbIndex, net: &str) -> Vec<&'a LPort> {
    ix.ports_in(net)
        .filter_map(|id| nb.lports.get(&**id).map(|p| &**p))
        .collect()
}

impl Incremental {
    /// The desired entries of `me` for `nb` (indexed by `ix`) and its `taps`, after the
    /// changes in `touched`; and which keys may differ from the previous result.
    pub fn compute(
        &mut self,
        me: &str,
        nb: &NbSnapshot,
        ix: &NbIndex,
        taps: &BTreeMap<String, u32>,
        identities: &mut Identities,
        touched: &Touched,
    ) -> (Desired, Scope) {
        let mut out = Desired::default();
        let local = ix.ports_on(me).filter_map(|id| nb.lports.get(&**id));
        reconcile::local_ports(&mut out, nb, local, taps);
        let programmed: BTreeMap<String, u32> = out
            .local_ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Programmed { ifindex } => Some((p.id.clone(), ifindex)),
                _ => None,
            })
            .collect();

        let in_scope: BTreeSet<String> = scope::networks(me, ix)
            .into_iter()
            .filter(|n| nb.lswitches.contains_key(n))
            .collect();
        let routers: BTreeSet<&str> = in_scope
            .iter()
            .flat_map(|n| ix.routers_on(n))
            .map(|r| &**r)
            .collect();
        let ctx = Context::new(
            me,
            nb,
            &out.local_ports,
            routers.iter().filter_map(|r| nb.lrouters.get(*r)),
        );
        let filled: BTreeSet<&str> = in_scope
            .iter()
            .map(String::as_str)
            .filter(|n| ix.ports_in(n).next().is_some() || ctx.routed().any(|r| r == *n))
            .collect();
        // Two lswitches with one segmentation id write the same keys: parts would not be
        // disjoint, so such a cloud is always recomputed whole (it is also warned about).
        let mut vnis = BTreeSet::new();
        let shared_vni = filled
            .iter()
            .any(|n| !vnis.insert(nb.lswitches[*n].segmentation_id));
        let full = touched.all
            || !self.primed
            || shared_vni
            || touched.chassis.contains(me)
            || programmed != self.local;

        let mut todo: BTreeSet<&str> = if full {
            filled.clone()
        } else {
            let mut t: BTreeSet<&str> = touched
                .nets
                .iter()
                .map(String::as_str)
                .filter(|n| filled.contains(n))
                .collect();
            for c in &touched.chassis {
                for id in ix.ports_on(c) {
                    if let Some(l) = ix.port(id)
                        && filled.contains(&*l.lswitch)
                    {
                        t.insert(filled.get(&*l.lswitch).expect("filled"));
                    }
                }
            }
            t.extend(filled.iter().filter(|n| !self.parts.contains_key(**n)));
            t
        };

        let mut within = MapEntries::default();
        let d = &mut self.desired;
        // Networks no longer hosted here.
        let gone: Vec<String> = self
            .parts
            .keys()
            .filter(|n| !filled.contains(n.as_str()))
            .cloned()
            .collect();
        for n in gone {
            if let Some(old) = self.parts.remove(&n) {
                remove_forwarding_keys(&mut d.entries, &old.entries);
                within.extend(old.entries);
            }
            self.hosts.remove(&n);
        }
        // Chassis hosting each network first: a change there reaches the networks routed
        // with it.
        let mut moved: Vec<&str> = Vec::new();
        for n in &todo {
            let h = ctx.hosts(&ports_of(nb, ix, n));
            if self.hosts.get(*n) != Some(&h) {
                self.hosts.insert(n.to_string(), h);
                moved.push(n);
            }
        }
        if !full {
            for n in moved {
                for r in ix.routers_on(n) {
                    for other in ix.router_nets(r) {
                        if let Some(o) = filled.get(&**other) {
                            todo.insert(o);
                        }
                    }
                }
            }
            for n in &todo {
                if !self.hosts.contains_key(*n) {
                    self.hosts
                        .insert(n.to_string(), ctx.hosts(&ports_of(nb, ix, n)));
                }
            }
        }
        if full {
            clear_forwarding(&mut d.entries);
        }
        for n in &todo {
            let part = network(&ctx, nb, n, &ports_of(nb, ix, n), &self.hosts);
            match self.parts.get(*n) {
                Some(old) if !full && *old == part => continue,
                Some(old) if !full => {
                    remove_forwarding_keys(&mut d.entries, &old.entries);
                    within.extend(old.entries.clone());
                }
                _ => {}
            }
            if !full {
                add_forwarding(&mut d.entries, &part.entries);
                within.extend(part.entries.clone());
            }
            self.parts.insert(n.to_string(), part);
        }
        if full {
            // In network order, as `forwarding::compute` fills them.
            for part in self.parts.values() {
                add_forwarding(&mut d.entries, &part.entries);
            }
        }
        // Routes are keyed by router, not by network: two interfaces of one router with the
        // same prefix would collide across parts, so they are rebuilt (they are few).
        d.entries.routes = self
            .parts
            .values()
            .flat_map(|p| p.entries.routes.iter().map(|(k, v)| (*k, *v)))
            .collect();

        // Everything else is recomputed.
        let (devmap, remote, warnings) = (ctx.devmap(), ctx.remote_chassis(), ctx.warnings);
        d.local_ports = out.local_ports;
        d.tap_ports = out.tap_ports;
        d.entries.ports = out.entries.ports;
        d.entries.addrs = out.entries.addrs;
        d.entries.cidrs = out.entries.cidrs;
        d.entries.macs = out.entries.macs;
        d.entries.config.clear();
        d.entries.devmap = devmap;
        d.remote_chassis = remote;
        d.warnings = warnings;
        d.networks = Vec::with_capacity(self.parts.len());
        d.flood_overflow.clear();
        for part in self.parts.values() {
            d.networks.push(part.view.clone());
            d.warnings.extend(part.warnings.iter().cloned());
            if let Some(wanted) = part.flood_overflow {
                d.flood_overflow.insert(part.view.net_id, wanted);
            }
        }
        // The groups the local ports' rules name, then their members (each once).
        let groups: BTreeSet<&str> = d
            .local_ports
            .iter()
            .filter_map(|p| nb.lports.get(&p.id))
            .flat_map(|p| p.security_groups.iter())
            .map(String::as_str)
            .collect();
        let remote: BTreeSet<&str> = groups
            .iter()
            .filter_map(|g| nb.secgroups.get(*g))
            .flat_map(|sg| sg.rules.iter().filter_map(|r| r.remote_group_id.as_deref()))
            .collect();
        let members = || {
            let mut members: BTreeSet<&Id> = BTreeSet::new();
            for g in remote {
                members.extend(ix.members(g));
            }
            members.into_iter().filter_map(|id| nb.lports.get(&**id))
        };
        let changed = (!full).then_some(&touched.ports);
        let sg_keys = reconcile::security_groups(
            d,
            nb,
            &mut self.security_groups,
            changed,
            members,
            identities,
        );

        self.local = programmed;
        self.primed = true;
        let scope = match sg_keys {
            Some(keys) if !full => {
                within.ident.extend(keys.ident.into_iter().map(|k| (k, 0)));
                within
                    .ident_lpm
                    .extend(keys.ident_lpm.into_iter().map(|k| (k, 0)));
                within.policy.extend(
                    keys.policy
                        .into_iter()
                        .map(|k| (k, PolicyValue { rule: 0 })),
                );
                Scope::Within(Box::new(within))
            }
            _ => Scope::Full,
        };
        (std::mem::take(&mut self.desired), scope)
    }

    /// Gives back the result of [`Incremental::compute`] (which the controller adjusted
    /// and wrote) so that the next computation patches it.
    pub fn restore(&mut self, desired: Desired) {
        self.desired = desired;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::{
        desired::reconcile::desired_with,
        nb::{Chassis, LRouter, LSwitch, SecGroup},
    };

    /// A small deterministic generator (no dependency for one test).
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: usize) -> usize {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            (self.0 % n as u64) as usize
        }
    }

    const NETS: usize = 6;
    const CHASSIS: [&str; 4] = ["hv1", "hv2", "hv3", "hv4"];

    fn port(rng: &mut Rng, n: usize) -> LPort {
        let net = rng.next(NETS);
        let chassis = CHASSIS[rng.next(CHASSIS.len())];
        let mut aaps = vec![];
        if rng.next(3) == 0 {
            // Shared between ports now and then (a VIP).
            aaps.push(serde_json::json!({"ip_address": format!("203.0.113.{}", rng.next(4) + 1)}));
        }
        let groups: Vec<String> = (0..rng.next(3))
            .map(|_| format!("g{}", rng.next(3)))
            .collect();
        serde_json::from_value(serde_json::json!({
            "id": format!("p{n:02}"), "lswitch": format!("n{net}"),
            "mac": format!("fa:16:3e:00:00:{n:02x}"), "chassis": chassis,
            "fixed_ips": [format!("192.0.2.{}", n + 10), format!("2001:db8:{net}::{n:x}")],
            "allowed_address_pairs": aaps, "security_groups": groups,
            "ifname": format!("tap{n}"), "port_security_enabled": true,
        }))
        .expect("port")
    }

    fn cloud(rng: &mut Rng) -> NbSnapshot {
        let mut nb = NbSnapshot::default();
        for i in 0..NETS {
            let ls: LSwitch = serde_json::from_value(
                serde_json::json!({"id": format!("n{i}"), "segmentation_id": 100 + i}),
            )
            .expect("ls");
            nb.lswitches.insert(format!("n{i}"), ls);
        }
        for (i, c) in CHASSIS.iter().enumerate() {
            let rec: Chassis = serde_json::from_value(
                serde_json::json!({"name": c, "tunnel_ip": format!("198.18.0.{}", i + 1)}),
            )
            .expect("chassis");
            nb.chassis.insert(c.to_string(), rec);
        }
        // r1: n0–n1–n2, r2: n3–n4; n5 alone.
        for (id, nets) in [("r1", &[0, 1, 2][..]), ("r2", &[3, 4][..])] {
            let ports: Vec<_> = nets
                .iter()
                .map(|n| {
                    serde_json::json!({"id": format!("{id}-{n}"), "lswitch": format!("n{n}"),
                    "mac": format!("fa:16:3e:00:01:{n:02x}"), "ip": format!("2001:db8:{n}::1/64")})
                })
                .collect();
            let r: LRouter =
                serde_json::from_value(serde_json::json!({"id": id, "ports": ports})).expect("r");
            nb.lrouters.insert(id.to_string(), r);
        }
        for g in 0..3 {
            let sg: SecGroup = serde_json::from_value(serde_json::json!({"id": format!("g{g}"), "rules": [
                {"id": "a", "direction": "ingress", "ethertype": "IPv4", "remote_group_id": format!("g{}", (g + 1) % 3)},
                {"id": "b", "direction": "egress", "ethertype": "IPv6"}
            ]}))
            .expect("sg");
            nb.secgroups.insert(format!("g{g}"), sg);
        }
        for n in 0..24 {
            let p = port(rng, n);
            nb.lports.insert(p.id.clone(), Arc::new(p));
        }
        nb
    }

    fn canonical_sg(e: &MapEntries) -> impl PartialEq + std::fmt::Debug + use<> {
        crate::desired::secgroups::tests::canonical(&e.ident, &e.ident_lpm, &e.policy)
    }

    /// After every random change, the incremental result equals a full computation over
    /// the scope, and the keys it says may differ cover every key that did.
    #[test]
    fn incremental_equals_full() {
        let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
        let mut nb = cloud(&mut rng);
        let taps: BTreeMap<String, u32> = (0..24).map(|n| (format!("tap{n}"), 100 + n)).collect();
        let mut ix = NbIndex::of(&nb);
        let mut inc = Incremental::default();
        let mut ids = Identities::default();
        let mut previous = MapEntries::default();
        let mut partial = 0;
        for step in 0..300 {
            let mut touched = Touched {
                all: step == 0,
                ..Default::default()
            };
            match rng.next(4) {
                // A port changes (moves, gets other addresses, groups, chassis) or goes.
                0 | 1 => {
                    let n = rng.next(30);
                    let id = format!("p{n:02}");
                    let new = (rng.next(5) != 0).then(|| Arc::new(port(&mut rng, n)));
                    match &new {
                        Some(p) => nb.lports.insert(id.clone(), p.clone()),
                        None => nb.lports.remove(&id),
                    };
                    if let Some(old) = ix.set_port(&id, new.as_deref()) {
                        touched.nets.insert(old.lswitch.to_string());
                    }
                    if let Some(p) = &new {
                        touched.nets.insert(p.lswitch.clone());
                    }
                    touched.ports.insert(id);
                }
                // A chassis goes or comes back.
                2 => {
                    let c = CHASSIS[1 + rng.next(3)];
                    if nb.chassis.remove(c).is_none() {
                        let fresh = cloud(&mut Rng(1));
                        nb.chassis.insert(c.to_string(), fresh.chassis[c].clone());
                    }
                    touched.chassis.insert(c.to_string());
                }
                // A group's rules change: no network is touched.
                _ => {
                    let g = format!("g{}", rng.next(3));
                    let sg = nb.secgroups.get_mut(&g).expect("group");
                    let r = &mut sg.rules[0];
                    r.remote_group_id = Some(format!("g{}", rng.next(3)));
                }
            }
            let (got, scope) = inc.compute("hv1", &nb, &ix, &taps, &mut ids, &touched);
            inc.restore(got.clone());
            let want = desired_with(
                "hv1",
                &scope::scope("hv1", &nb, &ix),
                &taps,
                &mut Identities::default(),
            );
            // Identity numbers depend on the order they were handed out: compare the rest.
            let strip = |mut e: MapEntries| {
                e.ident.clear();
                e.ident_lpm.clear();
                e.policy.clear();
                e
            };
            assert_eq!(
                strip(got.entries.clone()),
                strip(want.entries.clone()),
                "step {step}"
            );
            assert_eq!(got.local_ports, want.local_ports, "step {step}");
            assert_eq!(got.networks, want.networks, "step {step}");
            assert_eq!(got.warnings, want.warnings, "step {step}");
            assert_eq!(got.flood_overflow, want.flood_overflow, "step {step}");
            assert_eq!(
                canonical_sg(&got.entries),
                canonical_sg(&want.entries),
                "step {step}"
            );
            assert_eq!(got.sg_ports, want.sg_ports, "step {step}");
            assert_eq!(got.sg_identities, want.sg_identities, "step {step}");
            if let Scope::Within(keys) = &scope {
                partial += 1;
                let diff = got.entries.diff(&previous);
                let listed = |k: &dragonflow_common::fwd::L2Key| keys.l2.contains_key(k);
                for (k, _) in &diff.l2.upsert {
                    assert!(listed(k), "step {step}: l2 {k:?} changed but not listed");
                }
                for k in &diff.l2.remove {
                    assert!(listed(k), "step {step}: l2 {k:?} removed but not listed");
                }
                for (k, _) in &diff.neigh.upsert {
                    assert!(keys.neigh.contains_key(k), "step {step}: neigh {k:?}");
                }
                for (k, _) in &diff.tun_srcs.upsert {
                    assert!(keys.tun_srcs.contains_key(k), "step {step}: tun_srcs {k:?}");
                }
                for (k, _) in &diff.tun_peers.upsert {
                    assert!(
                        keys.tun_peers.contains_key(k),
                        "step {step}: tun_peers {k:?}"
                    );
                }
                for (k, _) in &diff.flood.upsert {
                    assert!(keys.flood.contains_key(k), "step {step}: flood {k:?}");
                }
                for (k, _) in &diff.groups.upsert {
                    assert!(keys.groups.contains_key(k), "step {step}: groups {k:?}");
                }
            }
            previous = got.entries;
        }
        assert!(
            partial > 100,
            "only {partial} of 300 steps were incremental"
        );
    }
}
