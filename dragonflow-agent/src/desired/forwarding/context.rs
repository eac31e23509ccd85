//! What the fill of every network shares: the live chassis, the local taps, the router
//! interfaces per network, and the warnings that concern no single network.

use std::collections::{BTreeMap, BTreeSet};

use super::{router_id, tunnel_v4};
use crate::{
    desired::reconcile::{LocalPort, PortState},
    nb::{AapMode, LPort, LRouter, LRouterPort, NbSnapshot},
};

/// What the fill of every network needs beyond the network itself: the live chassis,
/// the local ports' taps and the routers.
pub(crate) struct Context<'a> {
    pub(super) me: &'a str,
    /// This agent's AAP mode is the one it publishes in its chassis record (written before
    /// the first read of etcd), so it is judged by the same rule as every other chassis'.
    pub(super) my_mode: AapMode,
    /// Live chassis we can tunnel to.
    pub(super) remote: BTreeMap<&'a str, [u8; 4]>,
    /// Programmed local ports → their taps' ifindex.
    pub(super) local: BTreeMap<&'a str, u32>,
    /// Router interfaces by lswitch (routers with collision-checked ids).
    pub(super) ifaces: BTreeMap<&'a str, Vec<(u32, &'a LRouter, &'a LRouterPort)>>,
    /// Problems that concern no single network (chassis records, router ids).
    pub warnings: BTreeSet<String>,
}

impl<'a> Context<'a> {
    /// `routers`: those whose networks are being filled (in id order, for the collision
    /// rule).
    pub(crate) fn new(
        me: &'a str,
        nb: &'a NbSnapshot,
        local_ports: &'a [LocalPort],
        routers: impl IntoIterator<Item = &'a LRouter>,
    ) -> Self {
        let mut warnings = BTreeSet::new();
        // Live chassis we can tunnel to.
        let my_ip = nb.chassis.get(me).and_then(|c| tunnel_v4(c.tunnel_ip).ok());
        // This agent's AAP mode is the one it publishes in its chassis record (written before
        // the first read of etcd), so it is judged by the same rule as every other chassis'.
        let my_mode = nb.chassis.get(me).map(|c| c.aap_mode).unwrap_or_default();
        let mut remote: BTreeMap<&str, [u8; 4]> = BTreeMap::new();
        for (name, c) in &nb.chassis {
            if name == me {
                continue;
            }
            match tunnel_v4(c.tunnel_ip) {
                Ok(ip) if Some(ip) == my_ip => {
                    warnings.insert(format!(
                        "chassis {name} has this chassis' tunnel_ip {}; ignored",
                        c.tunnel_ip
                    ));
                }
                Ok(ip) => {
                    remote.insert(name, ip);
                }
                Err(why) => {
                    warnings.insert(format!(
                        "chassis {name}: tunnel_ip {} is {why}; its ports are unreachable from here",
                        c.tunnel_ip
                    ));
                }
            }
        }
        let local: BTreeMap<&str, u32> = local_ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Programmed { ifindex } => Some((p.id.as_str(), ifindex)),
                _ => None,
            })
            .collect();

        // Routers, with collision-checked ids.
        let mut ids: BTreeMap<u32, &str> = BTreeMap::new();
        let mut ifaces: BTreeMap<&str, Vec<(u32, &LRouter, &LRouterPort)>> = BTreeMap::new();
        for r in routers {
            let rid = router_id(&r.id);
            if let Some(other) = ids.get(&rid) {
                warnings.insert(format!(
                    "lrouter {} has the same datapath id ({rid:#x}, FNV-1a of the id) as lrouter \
                     {other}; it is not installed: rename one of them",
                    r.id
                ));
                continue;
            }
            ids.insert(rid, &r.id);
            for rp in &r.ports {
                if nb.lswitches.contains_key(&rp.lswitch) {
                    ifaces.entry(&rp.lswitch).or_default().push((rid, r, rp));
                } else {
                    warnings.insert(format!(
                        "lrouter {} interface {} is on unknown lswitch {}; skipped",
                        r.id, rp.id, rp.lswitch
                    ));
                }
            }
        }

        Context {
            me,
            my_mode,
            remote,
            local,
            ifaces,
            warnings,
        }
    }

    /// Live chassis other than this one that can be tunnelled to.
    pub(crate) fn remote_chassis(&self) -> Vec<String> {
        self.remote.keys().map(|s| s.to_string()).collect()
    }

    /// lswitches with a router interface.
    pub(crate) fn routed(&self) -> impl Iterator<Item = &'a str> + '_ {
        self.ifaces.keys().copied()
    }

    /// The devmap: every programmed local tap → itself.
    pub(crate) fn devmap(&self) -> BTreeMap<u32, u32> {
        self.local.values().map(|&i| (i, i)).collect()
    }

    /// Tunnel IPs of the live remote chassis hosting bound ports among `ports`: what the
    /// tunnel admission of the networks routed with theirs depends on.
    pub(crate) fn hosts(&self, ports: &[&LPort]) -> BTreeSet<[u8; 4]> {
        ports
            .iter()
            .filter_map(|p| p.chassis.as_deref())
            .filter(|c| *c != self.me)
            .filter_map(|c| self.remote.get(c).copied())
            .collect()
    }
}
