//! The northbound as the agent holds it: the last good version of every object it uses.

use std::{collections::BTreeMap, net::IpAddr, sync::Arc};

use super::{ActivePort, Chassis, LPort, LRouter, LSwitch, SecGroup};

/// The northbound objects the datapath depends on (last good version of each).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NbSnapshot {
    pub lswitches: BTreeMap<String, LSwitch>,
    /// Shared with the snapshots derived from this one (`scope`), so that making one
    /// costs a pointer per port, not a copy.
    pub lports: BTreeMap<String, Arc<LPort>>,
    pub lrouters: BTreeMap<String, LRouter>,
    /// Live chassis (their records vanish with their agent's lease).
    pub chassis: BTreeMap<String, Chassis>,
    /// Detection way: the active holder of each shared AAP IP, by (lswitch id, IP), as
    /// claimed in `activeport/` (entries vanish with the claiming agent's lease).
    pub active_ports: BTreeMap<(String, IpAddr), ActivePort>,
    /// Security groups by id.
    pub secgroups: BTreeMap<String, SecGroup>,
}
