//! Stage: forwarding (README: "How a packet flows", step 6): after port security, where a
//! frame goes.
//!
//! Layer: a stage, above the security-group stage: imports the ground layer and the
//! security-group stage's public face (`sg::Sg`, `sg::Hook`, `sg::policy::to_port`: every
//! delivery into a tap passes the receiver's ingress rules), never port security. Its parts, one
//! way each: `l2` (lookups, MTU), `l3` (routing) over `responder` (ARP/ND answers),
//! `tunnel` (VXLAN metadata and admission), `flood` (flood lists and copies), `group`
//! (copies to the holders of a shared address, over `flood`), `verdict` (where an allowed
//! frame goes, [`verdict::Fwd`]); this file composes them and imports none back.
//!
//! From a VM, by destination MAC in the frame's network (`df_l2_v1`):
//! - group (broadcast/multicast): the ARP/ND responder first (`responder::respond`); if it
//!   does not answer, flood (`df_flood_v1`). Unicast ARP/NS are never answered, they are
//!   forwarded to the MAC they are addressed to like any unicast frame;
//! - `DEST_LOCAL`: MTU, destination-side policy (`policy::to_port`), into the tap;
//! - `DEST_REMOTE`: MTU, then through `df-vxlan` with VNI = net_id;
//! - `DEST_ROUTER`: `l3::route`, then a second L2 lookup of the rewritten destination
//!   (local or remote), or a reply back to the sender;
//! - no entry: `UnknownUnicast` (no learning, no flooding of unknown unicast).
//!
//! Shared allowed-address-pair addresses, the broadcast way (`group`): an ARP request or
//! NS for a shared IP goes to its holders only (`responder::Asked::Holders`); a frame to
//! a shared MAC (`DEST_GROUP`) to every holder of the MAC; an IP packet to a MAC flagged
//! `L2_F_SHARED_IP` whose destination IP is shared, and a routed packet to a shared IP
//! (`L3Out::Group`), to every holder of the IP with that holder's MAC: the group program,
//! tail-called (`Fwd::Group`, `group::tail_call`), makes the copies. Under the detection
//! way the agent points the entries at the active port instead (the responder and the
//! router answer with its MAC, a shared MAC leads to it), and an IP packet for the VIP
//! sent to another holder's MAC (flagged `L2_F_SHARED_IP`: a client that still has the
//! previous holder in its cache) is readdressed to the active MAC ([`readdress`]) and
//! delivered wherever the active holder is; from the tunnel only to a local one
//! (`InactiveHolder` otherwise: never back into the tunnel).
//!
//! XDP finishes local deliveries and replies itself and hands everything else to its TC
//! companion (`Fwd::Handoff`). From the tunnel ([`from_tunnel`]) only local deliveries
//! exist, of admitted frames (`tunnel::admit`): a frame from another chassis is never
//! sent back into the tunnel.

use aya_ebpf::{
    bindings::{TC_ACT_REDIRECT, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use dragonflow_common::{
    fwd::{
        ChassisConfig, DEST_GROUP, DEST_LOCAL, DEST_REMOTE, DEST_ROUTER, L2_F_SHARED_IP, L2Dest,
        NEIGH_F_SHARED,
    },
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::{PacketCtx, Pkt, arr_at, be16_at, store_mac},
    fwd::{flood::flood, l3::L3Out, responder::Asked, verdict::Fwd},
    maps::FLOOD,
    parse::{ETH_HLEN, Eth, is_group, mac_eq},
    sg::{Hook, Sg, policy},
};

pub(crate) mod flood;
pub(crate) mod group;
pub(crate) mod l2;
pub(crate) mod l3;
pub(crate) mod responder;
pub(crate) mod tunnel;
pub(crate) mod verdict;

/// Where a frame from a VM that passed port security goes.
#[inline(always)]
///
/// The sender's egress security-group rules (`sg`) are judged where this hook finishes
/// the frame, before the receiver's ingress: in [`unicast`], for replies of the router,
/// and by the TC entry point for floods and groups (never for what XDP hands off: its TC
/// companion judges it). ARP/NS answered by the responder are exempt.
pub(crate) fn from_vm<C: Hook>(
    ctx: &C,
    pkt: &Pkt,
    eth: &Eth,
    net_id: u32,
    cfg: &ChassisConfig,
    sg: &mut Sg,
) -> Result<Fwd, DropReason> {
    if is_group(&eth.dst) {
        // An answer goes back out of the ingress tap by XDP_TX: only where XDP delivers
        // (see `l2::xdp_finishes`); asked before the responder rewrites the frame.
        if C::IS_XDP && !l2::xdp_finishes(pkt, eth.proto, 0, ctx.ifindex()) {
            return Ok(Fwd::Handoff);
        }
        match responder::respond(pkt, eth, net_id) {
            Asked::Answered(path) => return Ok(Fwd::Back(path)),
            Asked::Holders => {
                return Ok(to_group::<C>(net_id, group::BY_TARGET));
            }
            Asked::No => {}
        }
        if C::IS_XDP {
            return Ok(Fwd::Handoff);
        }
        return Ok(Fwd::Flood {
            net_id,
            vxlan: cfg.vxlan_ifindex,
        });
    }
    let mut dest = l2::lookup_w(net_id, eth.dst_w).ok_or(DropReason::UnknownUnicast)?;
    // The MAC the frame goes to (from here on).
    let mut to = &eth.dst;
    // A holder's MAC: the packet may be for a shared IP (one extra lookup, only here).
    if dest.flags & L2_F_SHARED_IP != 0
        && let Some(vip) = group::dst_vip(pkt, eth.proto, net_id)
    {
        if vip.flags & NEIGH_F_SHARED != 0 {
            let how = group::BY_DST_IP | group::REWRITE;
            return Ok(to_group::<C>(net_id, how));
        }
        // Detection way: for the active holder only.
        if !mac_eq(&vip.mac, &eth.dst) {
            dest = l2::lookup(net_id, &vip.mac).ok_or(DropReason::UnknownUnicast)?;
            if C::IS_XDP
                && (dest.kind != DEST_LOCAL
                    || !l2::xdp_finishes(pkt, eth.proto, dest.mtu, dest.ifindex))
            {
                // Untouched: the TC companion decides it again (and readdresses it).
                // Asked here, before the rewrite: a hand-off never carries XDP's edits.
                return Ok(Fwd::Handoff);
            }
            readdress(pkt, &vip.mac)?;
            to = &vip.mac;
        }
    }
    if dest.kind == DEST_GROUP {
        return Ok(to_group::<C>(net_id, group::BY_DST_MAC));
    }
    if dest.kind != DEST_ROUTER {
        let path = if dest.kind == DEST_LOCAL {
            PassPath::L2Local
        } else {
            PassPath::L2Tunnel
        };
        return unicast(ctx, pkt, eth.proto, dest, net_id, to, to, cfg, path, sg);
    }
    if C::IS_XDP {
        // Routing rewrites the frame in place; if the result had to go to the tunnel, the
        // TC companion would see a frame from the router's MAC and drop it as spoofed. So
        // routed frames are TC's, whole.
        return Ok(Fwd::Handoff);
    }
    // Routing rewrites the frame: the flow is read before (the 5-tuple does not change).
    sg.prepare(ctx, eth.proto);
    match l3::route(pkt, eth, dest.router_id, net_id)? {
        L3Out::Reply(path) => {
            // An echo to the router: the sender's egress rules apply as to any packet.
            sg.egress(ctx, eth.proto, false)?;
            Ok(Fwd::Back(path))
        }
        L3Out::Group { net_id } => {
            let how = group::BY_DST_IP | group::REWRITE | group::ROUTED;
            Ok(to_group::<C>(net_id, how))
        }
        L3Out::Deliver { net_id, dst_mac } => {
            let dest = l2::lookup(net_id, &dst_mac).ok_or(DropReason::UnknownUnicast)?;
            // A neighbour whose MAC is shared (e.g. a VRRP MAC): to the MAC's holders.
            if dest.kind == DEST_GROUP {
                return Ok(to_group::<C>(net_id, group::BY_DST_MAC | group::ROUTED));
            }
            // What the rewritten frame really carries (in place: the packet view is
            // still valid), checked against the entry by the destination policy.
            let h = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
            let frame_dst: [u8; 6] = arr_at(h, 0);
            let proto = be16_at(h, 12);
            unicast(
                ctx,
                pkt,
                proto,
                dest,
                net_id,
                &frame_dst,
                &dst_mac,
                cfg,
                PassPath::Routed,
                sg,
            )
        }
    }
}

/// To the holders of a shared address of `net_id` found by `how` (`group::BY_*`); XDP
/// hands the frame to TC.
#[inline(always)]
fn to_group<C: PacketCtx>(net_id: u32, how: u32) -> Fwd {
    if C::IS_XDP {
        return Fwd::Handoff;
    }
    Fwd::Group { net_id, how }
}

/// A unicast delivery to a local tap or a remote chassis.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the verifier tracks each scalar (a struct would go through the stack)"
)]
#[inline(always)]
fn unicast<C: Hook>(
    ctx: &C,
    pkt: &Pkt,
    proto: u16,
    dest: &L2Dest,
    net_id: u32,
    frame_dst: &[u8; 6],
    entry_mac: &[u8; 6],
    cfg: &ChassisConfig,
    path: PassPath,
    sg: &mut Sg,
) -> Result<Fwd, DropReason> {
    match dest.kind {
        DEST_LOCAL => {
            // Before any judgement: what XDP hands off, TC judges once (conntrack, SG).
            if C::IS_XDP && !l2::xdp_finishes(pkt, proto, dest.mtu, dest.ifindex) {
                return Ok(Fwd::Handoff);
            }
            if !l2::mtu_ok(ctx, pkt, proto, dest.mtu) {
                return Err(DropReason::MtuExceeded);
            }
            sg.egress(ctx, proto, false)?;
            sg.prepare(ctx, proto);
            policy::to_port(dest.ifindex, frame_dst, entry_mac, sg)?;
            Ok(Fwd::Local {
                ifindex: dest.ifindex,
                path,
            })
        }
        DEST_REMOTE => {
            // XDP cannot see `gso_size`: its TC companion judges the MTU (a GSO
            // super-frame is within it when its segments are).
            if !C::IS_XDP && !l2::mtu_ok(ctx, pkt, proto, dest.mtu) {
                return Err(DropReason::MtuExceeded);
            }
            if cfg.vxlan_ifindex == 0 {
                return Err(DropReason::NoTunnel);
            }
            // XDP hands tunnel frames to its TC companion, which judges them.
            if !C::IS_XDP {
                sg.egress(ctx, proto, false)?;
            }
            Ok(Fwd::Tunnel {
                vni: net_id,
                remote_ip: dest.remote_ip,
                vxlan: cfg.vxlan_ifindex,
                path,
            })
        }
        // A router MAC as the destination of a routed frame: no router chains.
        _ => Err(DropReason::UnknownUnicast),
    }
}

/// TC: into the local tap `ifindex` (its egress = toward the VM).
#[inline(always)]
pub(crate) fn redirect(ifindex: u32) -> Result<i32, DropReason> {
    // SAFETY: plain helper call. With flags 0 it only records the target and returns
    // TC_ACT_REDIRECT; a target gone by then is dropped by the kernel after we return.
    let rc = unsafe { bpf_redirect(ifindex, 0) } as i32;
    if rc == TC_ACT_REDIRECT {
        Ok(rc)
    } else {
        Err(DropReason::RedirectFailed)
    }
}

/// TC: through the tunnel.
#[inline(always)]
pub(crate) fn to_tunnel(
    ctx: &TcContext,
    vni: u32,
    remote_ip: [u8; 4],
    vxlan: u32,
) -> Result<i32, DropReason> {
    tunnel::set_key(ctx, vni, remote_ip)?;
    redirect(vxlan)
}

/// The tunnel program: a frame from another chassis, admitted only from a live chassis of
/// its network, from a source MAC that chassis may use and sane (`tunnel::admit`), then
/// delivered by (VNI, destination MAC) to local taps only, each through its ingress
/// security-group rules (`sg`). `rx`: the frame's tunnel key (`tunnel::received`; `None`
/// without one). Returns the path and the TC action.
#[inline(always)]
pub(crate) fn from_tunnel(
    ctx: &TcContext,
    rx: Option<tunnel::Received>,
    sg: &mut Sg,
) -> Result<(PassPath, i32), DropReason> {
    let rx = rx.ok_or(DropReason::UnknownVni)?;
    let net_id = rx.vni;
    let pkt = ctx.pkt();
    // Only from a live chassis of the network, from a MAC it may send from, and sane.
    let eth = tunnel::admit(ctx, &pkt, &rx)?;
    let dst = eth.dst;
    let proto = eth.proto;
    // A group to deliver to: an ARP request / NS for a shared IP, or a frame to a shared
    // MAC; local holders only (split horizon: vxlan 0), the frame unchanged.
    let how = if is_group(&dst) {
        if FLOOD.get_ptr(net_id).is_none() {
            return Err(DropReason::UnknownVni);
        }
        if !responder::target_key(&pkt, proto, net_id).is_some_and(|k| group::shared(&k)) {
            let path = flood(ctx, &pkt, proto, &dst, net_id, 0, 0, sg)?;
            return Ok((path, TC_ACT_SHOT));
        }
        group::BY_TARGET
    } else {
        let Some(dest) = l2::lookup(net_id, &dst) else {
            // Slow path only: name the reason.
            return Err(if FLOOD.get_ptr(net_id).is_none() {
                DropReason::UnknownVni
            } else {
                DropReason::UnknownUnicast
            });
        };
        if dest.kind != DEST_GROUP {
            // A holder's MAC: under the detection way, the packet may be for a VIP another
            // holder is active for (see the module docs).
            if dest.flags & L2_F_SHARED_IP != 0
                && let Some(vip) = group::dst_vip(&pkt, proto, net_id)
                && vip.flags & NEIGH_F_SHARED == 0
                && !mac_eq(&vip.mac, &dst)
            {
                let active = l2::lookup(net_id, &vip.mac)
                    .filter(|d| d.kind == DEST_LOCAL)
                    .ok_or(DropReason::InactiveHolder)?;
                readdress(&pkt, &vip.mac)?;
                return deliver_local(ctx, &pkt, proto, &vip.mac, active, sg);
            }
            return deliver_local(ctx, &pkt, proto, &dst, dest, sg);
        }
        group::BY_DST_MAC
    };
    // Returns only when the tail call failed.
    Err(group::tail_call(
        ctx,
        net_id,
        how | group::FROM_TUNNEL,
        0,
        0,
    ))
}

/// Readdresses the frame to `mac` (a shared VIP's active holder, detection way).
#[inline(always)]
fn readdress(pkt: &Pkt, mac: &[u8; 6]) -> Result<(), DropReason> {
    let e = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
    store_mac(e, 0, mac);
    Ok(())
}

/// From the tunnel: into the local tap of `dest`.
#[inline(always)]
fn deliver_local(
    ctx: &TcContext,
    pkt: &Pkt,
    proto: u16,
    dst: &[u8; 6],
    dest: &L2Dest,
    sg: &mut Sg,
) -> Result<(PassPath, i32), DropReason> {
    if dest.kind != DEST_LOCAL {
        return Err(DropReason::TunnelNotLocal);
    }
    if !l2::mtu_ok(ctx, pkt, proto, dest.mtu) {
        return Err(DropReason::MtuExceeded);
    }
    sg.prepare(ctx, proto);
    policy::to_port(dest.ifindex, dst, dst, sg)?;
    Ok((PassPath::L2Local, redirect(dest.ifindex)?))
}
