//! Flooding and the copies of a frame: [`flood`] sends one copy of a group frame to every
//! destination of its network's flood list; [`clone_redirect`] and [`copy_outcome`] are
//! shared with the group program (`group`), which copies a frame to the holders of a
//! shared address.

use aya_ebpf::{helpers::bpf_clone_redirect, programs::TcContext};
use dragonflow_common::{
    fwd::{DEST_LOCAL, DEST_REMOTE, FLOOD_MAX},
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::Pkt,
    fwd::{l2, tunnel},
    maps::FLOOD,
    sg::{Sg, policy},
    trace,
};

/// TC: one copy of a group frame to every flood destination of `net_id` except the
/// ingress tap (`ingress`, 0 from the tunnel); remote chassis only when `vxlan` ≠ 0 (from
/// the tunnel it is 0: split horizon, a frame from another chassis never goes back into
/// the tunnel). The caller drops the original. No flood list: no copies.
/// `RedirectFailed` when any copy could not be sent (the others were). A local copy the
/// destination's ingress rules refuse is not sent (counted `to_vm` by `sg`).
#[inline(always)]
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the verifier tracks each scalar (a struct would go through the stack)"
)]
pub(crate) fn flood(
    ctx: &TcContext,
    pkt: &Pkt,
    proto: u16,
    dst: &[u8; 6],
    net_id: u32,
    ingress: u32,
    vxlan: u32,
    sg: &mut Sg,
) -> Result<PassPath, DropReason> {
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    let Some(list) = FLOOD.get_ptr(net_id).map(|p| unsafe { &*p }) else {
        return Ok(PassPath::Flood);
    };
    if !l2::mtu_ok(ctx, pkt, proto, list.mtu) {
        return Err(DropReason::MtuExceeded);
    }
    // Before the first clone: the copies' ingress rules judge this flow.
    sg.prepare(ctx, proto);
    // Packet pointers are invalid after the first clone: nothing below reads the frame.
    let n = list.len as usize;
    // The copies' bpf_clone_redirect results OR-ed together (see `copy_outcome`).
    let mut rcs: i64 = 0;
    // One tunnel key for every chassis, made before the loop: a key built on the stack
    // per copy left the stack different after chassis and tap iterations, which kept the
    // verifier from pruning the loop's states (see `tunnel::set_key_to`).
    let mut key = tunnel::key(net_id);
    let mask = trace::send_mask();
    let mut i = 0;
    // A constant bound for the verifier; `n` ends it early.
    while i < FLOOD_MAX {
        if i >= n {
            break;
        }
        let d = &list.dests[i];
        i += 1;
        rcs |= if d.kind == DEST_LOCAL as u32 {
            if d.ifindex == ingress || policy::to_port(d.ifindex, dst, dst, sg).is_err() {
                continue;
            }
            clone_redirect(ctx, d.ifindex, mask)
        } else if d.kind == DEST_REMOTE as u32 && vxlan != 0 {
            // The tunnel key is per-CPU state copied into each clone, which is transmitted
            // synchronously: setting it again for the next chassis is safe.
            match tunnel::set_key_to(ctx, &mut key, d.remote_ip) {
                Ok(()) => clone_redirect(ctx, vxlan, mask),
                Err(_) => -1,
            }
        } else {
            continue;
        };
    }
    copy_outcome(rcs).map(|()| PassPath::Flood)
}

/// `bpf_clone_redirect` of the frame to `ifindex`'s egress: 0 when sent, < 0 when it could
/// not be (no such device), > 0 when the device's queue dropped it. `mask`:
/// `trace::send_mask()` (a trace sends nothing and reads 0).
#[inline(always)]
pub(crate) fn clone_redirect(ctx: &TcContext, ifindex: u32, mask: u32) -> i64 {
    // SAFETY: plain helper call on this program's skb.
    let rc = unsafe { bpf_clone_redirect(ctx.skb.skb, ifindex & mask, 0) };
    rc & i64::from(mask as i32)
}

/// The outcome of a frame's copies (flood, shared-address group) from their
/// [`clone_redirect`] results OR-ed together: negative if any copy could not be sent (the
/// device is gone): `RedirectFailed`; else positive if a destination device refused one
/// (its queue dropped it, e.g. a tap no VM has opened yet): `DestRefused`, told apart
/// because it is not the datapath's fault and happens routinely while a VM boots.
///
/// Verifier: the loops accumulate one OR-ed scalar rather than a flag per outcome; two
/// flags multiplied the loop states the verifier could not prune (loading the object
/// took twice as long, measured).
#[inline(always)]
pub(crate) fn copy_outcome(rcs: i64) -> Result<(), DropReason> {
    if rcs < 0 {
        Err(DropReason::RedirectFailed)
    } else if rcs > 0 {
        Err(DropReason::DestRefused)
    } else {
        Ok(())
    }
}
