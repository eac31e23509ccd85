//! Writing a diff of the desired entries into the maps, the policy generation and the
//! conntrack purge that follows a write.

use std::{collections::BTreeMap, sync::atomic::Ordering, time::Instant};

use dragonflow_common::fwd::{CFG_F_SECURITY_GROUPS, ChassisConfig};
use tracing::{debug, error, info, warn};

use super::Controller;
use crate::desired::{
    incremental::Scope,
    reconcile::{self, Desired, PortState},
};

impl Controller {
    pub(super) fn write(&mut self, d: &Desired, scope: &Scope, nb_changed: bool) {
        let diff = match scope {
            Scope::Full => d.entries.diff(&self.actual),
            Scope::Within(keys) => d.entries.diff_within(&self.actual, keys),
        };
        let mut errors = 0;
        // The collector must not take a tap that is getting its port for one without.
        self.ct.set_ports(
            d.entries
                .ports
                .keys()
                .chain(self.actual.ports.keys())
                .copied()
                .collect(),
        );
        if !diff.is_empty() {
            let (up, rm) = diff.counts();
            let sg_flag = |c: Option<&ChassisConfig>| c.map(|c| c.flags & CFG_F_SECURITY_GROUPS);
            let sg_flag_changes =
                sg_flag(self.actual.config.get(&0)) != sg_flag(d.entries.config.get(&0));
            errors = self.maps.apply(&diff, &mut self.actual);
            self.shared
                .map_write_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
            info!(upserts = up, removals = rm, errors, "datapath maps updated");
            if diff.changes_policy() || sg_flag_changes {
                self.bump_policy_gen();
            }
        }
        self.retry_write = (errors > 0).then(Instant::now);
        self.ct_after_write(d);
        // Forwarding goes on once, after a complete write of the forwarding maps (until
        // then allowed frames go to the kernel as in issue 2); it then stays on.
        if !self.forwarding_on && self.cfg.forwarding && errors == 0 && self.maps.has_forwarding() {
            self.forwarding_on = true;
            let only = |config| reconcile::MapEntries {
                config,
                ..Default::default()
            };
            let want = only(BTreeMap::from([(0, self.chassis_config())]));
            let diff = want.diff(&only(self.actual.config.clone()));
            let errors = self.maps.apply(&diff, &mut self.actual);
            if errors == 0 {
                info!("forwarding maps complete: forwarding in the datapath enabled");
            } else {
                self.forwarding_on = false;
                self.shared
                    .map_write_errors
                    .fetch_add(errors as u64, Ordering::Relaxed);
            }
        }
        self.shared
            .forwarding_enabled
            .store(self.forwarding_on, Ordering::Relaxed);
        for w in d.warnings.difference(&self.nb_warnings) {
            warn!("{w}");
        }
        self.nb_warnings = d.warnings.clone();
        for (net_id, wanted) in &d.flood_overflow {
            if self.flood_overflow.get(net_id) != Some(wanted) {
                error!(
                    net_id,
                    wanted,
                    max = dragonflow_common::fwd::FLOOD_MAX,
                    "flood list too long: only the first {} destinations (local taps first) get broadcasts",
                    dragonflow_common::fwd::FLOOD_MAX
                );
                self.shared
                    .flood_overflow_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flood_overflow = d.flood_overflow.clone();
        if nb_changed || !diff.is_empty() {
            self.shared.sync_total.fetch_add(1, Ordering::Relaxed);
        }
        // Log port transitions once.
        let now: BTreeMap<String, PortState> = d
            .local_ports
            .iter()
            .map(|p| (p.id.clone(), p.state.clone()))
            .collect();
        for p in &d.local_ports {
            if self.last_ports.get(&p.id) != Some(&p.state) {
                match &p.state {
                    PortState::Programmed { ifindex } => {
                        info!(lport = %p.id, tap = %p.tap, ifindex, "port programmed")
                    }
                    PortState::NoTap => {
                        info!(lport = %p.id, tap = %p.tap, "port bound here, waiting for its tap")
                    }
                    PortState::UnknownLSwitch => {
                        warn!(lport = %p.id, lswitch = %p.lswitch, "port on an unknown lswitch skipped (its tap stays fail closed)")
                    }
                    PortState::TapConflict { with } => {
                        warn!(lport = %p.id, tap = %p.tap, "tap name already used by port {with}; port skipped")
                    }
                    PortState::AdminDown => {
                        info!(lport = %p.id, tap = %p.tap, "port administratively down: its traffic is dropped")
                    }
                }
            }
        }
        for id in self.last_ports.keys() {
            if !now.contains_key(id) {
                info!(lport = %id, "port no longer bound here; its entries are removed");
            }
        }
        self.last_ports = now;
    }

    /// Every identity and policy change is in the maps: conntrack entries judged under an
    /// older policy are re-judged at their next packet from now on (that is how a removed
    /// rule cuts the flows it allowed). Written alone, after everything else.
    pub(super) fn bump_policy_gen(&mut self) {
        self.policy_gen = self.policy_gen.wrapping_add(1);
        let only = |config| reconcile::MapEntries {
            config,
            ..Default::default()
        };
        let mut want = only(BTreeMap::from([(0, self.chassis_config())]));
        self.maps.mask(&mut want);
        let diff = want.diff(&only(self.actual.config.clone()));
        let errors = self.maps.apply(&diff, &mut self.actual);
        if errors > 0 {
            // Retried by the next write that changes the policy; until then established
            // flows keep their verdicts.
            self.shared
                .map_write_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
        } else {
            debug!(
                policy_gen = self.policy_gen,
                "security-group policy generation bumped"
            );
        }
    }

    /// Tells the conntrack collector which taps have a port now, and to purge the entries
    /// of taps that lost their port or got another one (a new VM must not inherit flows).
    pub(super) fn ct_after_write(&mut self, d: &Desired) {
        self.ct
            .set_ports(self.actual.ports.keys().copied().collect());
        let owners: BTreeMap<u32, String> = d
            .local_ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Programmed { ifindex } => Some((ifindex, p.id.clone())),
                _ => None,
            })
            .collect();
        let purge: Vec<u32> = self
            .ct_owners
            .iter()
            .filter(|(i, id)| {
                !self.actual.ports.contains_key(i) || owners.get(i).is_some_and(|o| o != *id)
            })
            .map(|(i, _)| *i)
            .collect();
        if !purge.is_empty() {
            debug!(
                ?purge,
                "purging conntrack entries of taps that lost their port"
            );
            self.ct.purge(purge);
        }
        self.ct_owners = owners;
    }
}
