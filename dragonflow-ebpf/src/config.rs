//! Ground layer: the configuration the agent writes, as every stage reads it: the chassis
//! configuration (`df_config_v1[0]`) and the port behind a tap (`df_ports_v1`). May import
//! `maps` only.

use dragonflow_common::{
    fwd::{CFG_F_FORWARDING, ChassisConfig},
    port::PortConfig,
};

use crate::maps::{CONFIG, PORTS};

/// The chassis configuration (`df_config_v1[0]`).
#[inline(always)]
pub(crate) fn chassis() -> Option<&'static ChassisConfig> {
    CONFIG.get(0)
}

/// The chassis configuration, when forwarding is on.
#[inline(always)]
pub(crate) fn forwarding() -> Option<&'static ChassisConfig> {
    match chassis() {
        Some(c) if c.flags & CFG_F_FORWARDING != 0 => Some(c),
        _ => None,
    }
}

/// The port behind a tap, if any.
#[inline(always)]
pub(crate) fn port(ifindex: u32) -> Option<&'static PortConfig> {
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    PORTS.get_ptr(ifindex).map(|p| unsafe { &*p })
}
