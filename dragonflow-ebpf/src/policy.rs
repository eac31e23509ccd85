//! Destination-side policy: "ingress to this port". Every delivery into a local tap passes
//! through [`to_port`] — unicast from a local VM (L2 or routed), unicast from the tunnel,
//! and every flood copy. The security-group stage will fill it (ingress rules, conntrack);
//! today it enforces that a port receives only frames for its own MAC (or group frames).

use dragonflow_common::verdict::DropReason;

use crate::parse::{is_group, mac_eq};

/// May a frame whose destination MAC is `frame_dst` go into the tap `ifindex`, reached by
/// the L2 entry of `entry_mac`? Counts nothing: the caller counts the outcome.
#[inline(always)]
pub fn to_port(_ifindex: u32, frame_dst: &[u8; 6], entry_mac: &[u8; 6]) -> Result<(), DropReason> {
    // A unicast frame goes only to the port owning its destination MAC. For plain L2 this
    // is true by construction (the entry was found by the frame's MAC); for routed frames
    // it checks the L3 rewrite against the entry the delivery uses.
    if is_group(frame_dst) || mac_eq(frame_dst, entry_mac) {
        Ok(())
    } else {
        Err(DropReason::DstMacMismatch)
    }
}
