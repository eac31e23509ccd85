//! Destination-side policy: "ingress to this port". Every delivery into a local tap passes
//! through [`to_port`] — unicast from a local VM (L2 or routed), unicast from the tunnel,
//! every flood copy and every copy to the holders of a shared address: a port receives
//! only frames for its own MAC (or group frames), and only what its security groups'
//! ingress rules allow (see `sg`). Part of the security-group stage's public face: the
//! forwarding stage calls it for every delivery.

use dragonflow_common::verdict::DropReason;

use crate::{
    parse::{is_group, mac_eq},
    sg::Sg,
};

/// May a frame whose destination MAC is `frame_dst` go into the tap `ifindex`, reached by
/// the L2 entry of `entry_mac`? The caller has called `sg.prepare` while the frame was
/// readable (this never reads the packet: flood copies are judged after clones). Counts
/// nothing itself except security-group drops (`to_vm`, see `Sg::ingress`); the caller
/// counts the outcome.
#[inline(always)]
pub(crate) fn to_port(
    ifindex: u32,
    frame_dst: &[u8; 6],
    entry_mac: &[u8; 6],
    sg: &mut Sg,
) -> Result<(), DropReason> {
    // A unicast frame goes only to the port owning its destination MAC. For plain L2 this
    // is true by construction (the entry was found by the frame's MAC); for routed frames
    // it checks the L3 rewrite against the entry the delivery uses.
    let group = is_group(frame_dst);
    if !group && !mac_eq(frame_dst, entry_mac) {
        return Err(DropReason::DstMacMismatch);
    }
    sg.ingress(ifindex, group)
}
