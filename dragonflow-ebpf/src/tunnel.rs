//! VXLAN tunnel metadata (TC only: XDP cannot set or read it). `df-vxlan` is an
//! external/collect-metadata device: the VNI and the remote chassis travel as the skb's
//! tunnel key, set before redirecting to the device and read on arrival.

use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dragonflow_common::verdict::DropReason;

/// TTL of the outer IPv4 header.
const TUNNEL_TTL: u8 = 64;

/// Sets the tunnel key of the skb: VNI = `vni`, toward `remote_ip` (network order as
/// stored in the maps; the helper takes host order).
#[inline(always)]
pub fn set_key(ctx: &TcContext, vni: u32, remote_ip: [u8; 4]) -> Result<(), DropReason> {
    set_key_to(ctx, &mut key(vni), remote_ip)
}

/// A tunnel key for VNI `vni`, without a destination yet (see [`set_key_to`]).
#[inline(always)]
pub fn key(vni: u32) -> bpf_tunnel_key {
    // SAFETY: bpf_tunnel_key is plain integers; all-zero is its "unset" value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.tunnel_ttl = TUNNEL_TTL;
    key
}

/// Sets the skb's tunnel key to `key` toward `remote_ip`. For a loop sending to several
/// chassis: one key made before the loop keeps the stack the same at every iteration,
/// which the verifier needs to prune the loop's states.
#[inline(always)]
pub fn set_key_to(
    ctx: &TcContext,
    key: &mut bpf_tunnel_key,
    remote_ip: [u8; 4],
) -> Result<(), DropReason> {
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(remote_ip);
    // SAFETY: valid skb and a key of the size we pass.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 {
        Err(DropReason::RedirectFailed)
    } else {
        Ok(())
    }
}

/// The VNI of a frame that arrived through the tunnel; `None` without (IPv4) tunnel
/// metadata — e.g. a frame injected by BPF_PROG_TEST_RUN, or on a device that is not in
/// collect-metadata mode.
#[inline(always)]
pub fn vni(ctx: &TcContext) -> Option<u32> {
    // SAFETY: as above.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: valid skb, key buffer of the size we pass.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 { None } else { Some(key.tunnel_id) }
}
