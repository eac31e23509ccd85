//! Distributed L3 routing (issue 3 item 3). STUB: the body is written by the L3/responder
//! engineer; the signature is the contract `fwd.rs` calls.

use dragonflow_common::verdict::{DropReason, PassPath};

use crate::{ctx::Pkt, parse::Eth};

/// What routing made of a frame sent to a router MAC.
#[derive(Clone, Copy)]
pub enum L3Out {
    /// Rewritten (MACs, TTL, checksum): deliver by L2 lookup of (net_id, dst_mac).
    Deliver { net_id: u32, dst_mac: [u8; 6] },
    /// Rewritten into a reply to the sender (echo to a router interface): send back out
    /// of the ingress tap.
    Reply(PassPath),
}

/// Routes a frame sent to the MAC of router `router_id`.
#[inline(always)]
pub fn route(_pkt: &Pkt, _eth: &Eth, _router_id: u32) -> Result<L3Out, DropReason> {
    Err(DropReason::NoRoute)
}
