//! ARP and IPv6 ND responder (issue 3 item 2). STUB: the body is written by the L3/responder
//! engineer; the signature is the contract `fwd.rs` calls.

use dragonflow_common::verdict::{DropReason, PassPath};

use crate::{ctx::Pkt, parse::Eth};

/// ARP request or IPv6 NS for an address in df_neigh_v1 of `net_id`: the frame is
/// rewritten in place into the reply (to be sent back out of the ingress tap).
/// Ok(None): not answerable here, forward normally.
#[inline(always)]
pub fn respond(_pkt: &Pkt, _eth: &Eth, _net_id: u32) -> Result<Option<PassPath>, DropReason> {
    Ok(None)
}
