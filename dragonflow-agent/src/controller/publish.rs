//! What the controller publishes for /state.

use std::collections::BTreeMap;

use dragonflow_common::fwd::CFG_F_SECURITY_GROUPS;

use super::Controller;
use crate::{
    datapath::{self},
    desired::reconcile::{Desired, PortState},
    nb::model::{self, PortStates},
    obs::state::{PortView, TapState, TapView, TunnelView},
};

impl Controller {
    pub(super) fn publish(&self, managed: &BTreeMap<String, u32>, desired: Option<&Desired>) {
        let mut links_by_if: BTreeMap<&str, Vec<&'static str>> = BTreeMap::new();
        for (ifname, kind, _) in self.links.done() {
            links_by_if.entry(ifname).or_default().push(kind.suffix());
        }
        // An idle rescan (`desired` None) computed nothing because neither the NB nor the
        // interfaces changed: every tap still carries the port it had.
        let kept: BTreeMap<String, String> = match desired {
            Some(_) => BTreeMap::new(),
            None => (self.shared.taps.all().into_iter())
                .filter_map(|t| Some((t.ifname, t.lport?)))
                .collect(),
        };
        let taps = managed
            .iter()
            .map(|(ifname, &ifindex)| {
                let error = self.attach_errors.get(ifname).map(|(_, _, m)| m.clone());
                let state = if error.is_some() {
                    TapState::AttachFailed
                } else if self.actual.ports.contains_key(&ifindex) {
                    TapState::Attached
                } else {
                    TapState::FailClosed
                };
                TapView {
                    ifname: ifname.clone(),
                    ifindex,
                    lport: match desired {
                        Some(d) => d.tap_ports.get(ifname).cloned(),
                        None => kept.get(ifname).cloned(),
                    },
                    state,
                    links: links_by_if
                        .get(ifname.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    error,
                }
            })
            .collect::<Vec<_>>();
        let mut view = self.shared.view.lock().expect("lock");
        if let Some(d) = desired {
            view.ports = d.local_ports.iter().map(PortView::from).collect();
            view.networks = d.networks.clone();
            view.remote_chassis = d.remote_chassis.clone();
        }
        if let Some(tx) = &self.port_states {
            let now = port_states(&view.ports, &taps);
            tx.send_if_modified(|old| {
                let changed = *old != now;
                if changed {
                    *old = now;
                }
                changed
            });
        }
        self.shared.taps.publish(taps);
        view.tunnel = self.cfg.tunnel_dev.as_ref().map(|name| TunnelView {
            name: name.clone(),
            ifindex: self.tunnel_ifindex,
            error: self.tunnel_error.as_ref().map(|(_, m)| m.clone()),
        });
        view.invalid_records = self.nb.invalid.clone();
        view.entries = datapath::maps::entry_counts(&self.actual);
        view.security_groups.enabled = self
            .actual
            .config
            .get(&0)
            .is_some_and(|c| c.flags & CFG_F_SECURITY_GROUPS != 0);
        view.security_groups.policy_gen = self.policy_gen;
        if let Some(d) = desired {
            view.security_groups.identities = d.sg_identities;
            view.security_groups.ports = d.sg_ports.clone();
        }
    }
}

/// Each local port's state for its port status record, from the ports the controller last
/// computed and its taps as they are now: a programmed port is what its tap is; a port
/// administratively down, or on an unknown lswitch, whose tap exists is admin-down or
/// fail closed (its tap has no entries); a port with no tap, or whose tap another port
/// holds, has no state.
fn port_states(ports: &[PortView], taps: &[TapView]) -> PortStates {
    let by_name: BTreeMap<&str, &TapView> = taps.iter().map(|t| (t.ifname.as_str(), t)).collect();
    ports
        .iter()
        .filter_map(|p| {
            let tap = by_name.get(p.tap.as_str())?;
            let name = p.state;
            let state = if name == PortState::AdminDown.name() {
                (
                    model::PortState::AdminDown,
                    "admin_state_up is false".to_string(),
                )
            } else if name == PortState::UnknownLSwitch.name() {
                (
                    model::PortState::FailClosed,
                    format!("unknown lswitch {}", p.lswitch),
                )
            } else if p.ifindex.is_some() && tap.lport.as_deref() == Some(p.id.as_str()) {
                match tap.state {
                    TapState::Attached => (model::PortState::Attached, String::new()),
                    TapState::FailClosed => (
                        model::PortState::FailClosed,
                        "its entries are not in the maps (see /state map_overflow)".to_string(),
                    ),
                    TapState::AttachFailed => (
                        model::PortState::AttachFailed,
                        tap.error.clone().unwrap_or_default(),
                    ),
                }
            } else {
                return None;
            };
            Some((p.id.clone(), state))
        })
        .collect()
}
