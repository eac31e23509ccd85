//! Multi-destination groups: the broadcast way for shared allowed-address-pair addresses
//! (issue 5; README: "Shared VIPs"). An address several ports of a network list — a VIP two
//! keepalived VMs share, a VRRP virtual MAC — has a group in `df_groups_v1`, keyed by the
//! address itself (`GroupKey::mac` / `GroupKey::ip`), listing its holders: local taps and,
//! once per (chassis, MAC), remote chassis.
//!
//! Who uses it:
//! - L2: a frame to a shared MAC (L2 entry `DEST_GROUP`) goes to every holder unchanged
//!   ([`BY_DST_MAC`]);
//! - the responder: an ARP request or NS for a shared IP (`NEIGH_F_SHARED`) is not
//!   answered and not flooded: it goes, unchanged, to the holders only ([`BY_TARGET`]);
//! - a packet to a shared IP — switched (to a MAC flagged `L2_F_SHARED_IP`: a holder's)
//!   or routed — goes to every holder, each copy with that holder's MAC for the IP
//!   ([`BY_DST_IP`] with [`REWRITE`]).
//!
//! The copies are made by their own program, `df_aap_group`, which `df_from_vm_tc` and
//! `df_from_tunnel` tail-call ([`tail_call`]) once they have decided the frame goes to a
//! group: up to `GROUP_MAX` copies, each judged by the holder's ingress security groups,
//! are verified once there, with their own stack and instruction budget, instead of
//! inside every path of the pipeline (which is at the verifier's limits). The caller
//! passes what it decided in `skb->cb` ([`tail_call`]); the group program finds the group again
//! from the frame (its destination MAC, ARP/NS target or destination IP, unchanged by
//! routing) and `net_id`.
//!
//! Every copy is a `bpf_clone_redirect`; every local copy passes the destination-side
//! policy (`policy::to_port`); the ingress tap never gets one; from the tunnel (`vxlan` =
//! 0) only local holders are served: the sending chassis already sent one copy per chassis
//! (split horizon, as flooding). The original is dropped, as for a flood, and one outcome
//! is counted by the group program in the caller's direction (the caller already counted
//! the port-security path).

use aya_ebpf::programs::TcContext;
use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        DEST_LOCAL, DEST_REMOTE, GROUP_M_F_FIRST, GROUP_MAX, Group, GroupKey, NEIGH_F_ACTIVE,
        NEIGH_F_SHARED, NeighKey, NeighValue,
    },
    maps::PROG_AAP_GROUP,
    verdict::{Direction, DropReason, PassPath},
};

use crate::{
    config,
    ctx::{PacketCtx, Pkt, arr_at, be16_at, ip6_bytes, load, load_ip6, u8_at},
    fwd::{
        flood::{clone_redirect, copy_outcome},
        l2, responder, tunnel,
    },
    maps::{GROUPS, NEIGH, PROGS},
    parse::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, IPPROTO_ICMPV6, IPV4_HLEN, IPV6_HLEN,
        nd::ND_NEIGHBOR_SOLICIT,
    },
    report,
    sg::{Sg, policy},
    trace,
};

/// [`Call::how`]: the group of the frame's destination MAC (a shared MAC).
pub(crate) const BY_DST_MAC: u32 = 0;
/// The group of the IP an ARP request / NS asks for.
pub(crate) const BY_TARGET: u32 = 1;
/// The group of the packet's destination IP.
pub(crate) const BY_DST_IP: u32 = 2;
const BY_MASK: u32 = 0xff;
/// Each copy gets its member's MAC as destination, every member one copy (a packet to a
/// shared IP); without it the frame goes unchanged once per tap/chassis.
pub(crate) const REWRITE: u32 = 1 << 8;
/// Called from the tunnel program: outcomes count under `from_tunnel`.
pub(crate) const FROM_TUNNEL: u32 = 1 << 9;
/// A routed packet: the outcome is `Routed` (else `AapGroup`).
pub(crate) const ROUTED: u32 = 1 << 10;

/// `how` asks the holders of a shared IP who has it (an ARP request / NS, [`BY_TARGET`]):
/// flood-like, unlike a packet to the address.
#[inline(always)]
pub(crate) const fn is_question(how: u32) -> bool {
    how & BY_MASK == BY_TARGET
}

/// The neighbour entry of the packet's destination IP when it is a shared AAP IP of
/// `net_id` (a frame to a MAC flagged `L2_F_SHARED_IP`): `NEIGH_F_SHARED` (the broadcast
/// way: to every holder) or `NEIGH_F_ACTIVE` (the detection way: to the active holder's
/// MAC, `mac`). Unicast neighbour solicitations (NUD) are left alone: like a unicast ARP
/// request, they check that the MAC's owner is alive.
#[inline(always)]
pub(crate) fn dst_vip(pkt: &Pkt, proto: u16, net_id: u32) -> Option<&'static NeighValue> {
    let key = dst_ip_key(pkt, proto, net_id)?;
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    let n = NEIGH.get_ptr(key).map(|v| unsafe { &*v })?;
    (n.flags & (NEIGH_F_SHARED | NEIGH_F_ACTIVE) != 0).then_some(n)
}

/// The neighbour entry of `key` is a shared AAP IP.
#[inline(always)]
pub(crate) fn shared(key: &NeighKey) -> bool {
    // SAFETY: a map value stays valid for the program run; only the flags are read.
    NEIGH
        .get_ptr(key)
        .is_some_and(|v| unsafe { (*v).flags } & NEIGH_F_SHARED != 0)
}

/// The neighbour key of the packet's destination IP (`None` for a unicast NS).
#[inline(always)]
fn dst_ip_key(pkt: &Pkt, proto: u16, net_id: u32) -> Option<NeighKey> {
    match proto {
        ETH_P_IP => {
            let h = pkt.bytes::<IPV4_HLEN>(ETH_HLEN)?;
            let [a, b, c, d] = load::<u32, IPV4_HLEN>(h, 16).to_ne_bytes();
            Some(NeighKey {
                net_id,
                family: FAMILY_V4,
                _pad: [0; 3],
                ip: [a, b, c, d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            })
        }
        ETH_P_IPV6 => {
            let h = pkt.bytes::<IPV6_HLEN>(ETH_HLEN)?;
            if u8_at(h, 6) == IPPROTO_ICMPV6 {
                let t = pkt.bytes::<1>(ETH_HLEN + IPV6_HLEN)?;
                if u8_at(t, 0) == ND_NEIGHBOR_SOLICIT {
                    return None;
                }
            }
            Some(NeighKey {
                net_id,
                family: FAMILY_V6,
                _pad: [0; 3],
                ip: ip6_bytes(load_ip6(h, 24)),
            })
        }
        _ => None,
    }
}

/// TC: hands the frame to `df_aap_group` (see the module docs): the group of `net_id`
/// found by `how` (`BY_*` | `REWRITE` | `FROM_TUNNEL` | `ROUTED`), never copied back into
/// `ingress` (the sender's tap; 0 from the tunnel), remote holders through `vxlan` (0:
/// local holders only). The call travels in `skb->cb[0..4]` (preserved across a tail
/// call; TC programs may use it freely). Returns only if the tail call failed (the agent
/// has not filled `df_progs_v1`): `RedirectFailed`.
#[inline(always)]
pub(crate) fn tail_call(
    ctx: &TcContext,
    net_id: u32,
    how: u32,
    ingress: u32,
    vxlan: u32,
) -> DropReason {
    let skb = ctx.skb.skb;
    // SAFETY: the context of this run; `cb` is the program's scratch area in TC.
    unsafe {
        (*skb).cb[0] = net_id;
        (*skb).cb[1] = how;
        (*skb).cb[2] = ingress;
        (*skb).cb[3] = vxlan;
    }
    // SAFETY: the context of this run and an index below the array's size. Returns only
    // on failure.
    unsafe { PROGS.tail_call(ctx, PROG_AAP_GROUP) };
    DropReason::RedirectFailed
}

/// The group program (`df_aap_group`): reads the call, makes the copies, counts the
/// outcome in the caller's direction. The caller drops the original.
#[inline(always)]
pub(crate) fn run(ctx: &TcContext) {
    let skb = ctx.skb.skb;
    // SAFETY: as in `tail_call`.
    let (net_id, how, ingress, vxlan) =
        unsafe { ((*skb).cb[0], (*skb).cb[1], (*skb).cb[2], (*skb).cb[3]) };
    let dir = if how & FROM_TUNNEL != 0 {
        Direction::FromTunnel
    } else {
        Direction::FromVm
    };
    let Some(mut sg) = Sg::new(ingress, config::chassis()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        report::drop(ctx, ingress, dir, DropReason::SgDenied);
        return;
    };
    match copies(ctx, net_id, how, ingress, vxlan, &mut sg) {
        Ok(()) => {
            let path = if how & ROUTED != 0 {
                PassPath::Routed
            } else {
                PassPath::AapGroup
            };
            report::pass(dir, path);
        }
        Err(reason) => {
            // An ingress refusal of the only holder was counted `to_vm` by `sg`: only
            // its event then.
            if sg.counted(reason) {
                report::drop_event_only(ctx, sg.counted_port(), Direction::ToVm, reason);
            } else {
                report::drop(ctx, ingress, dir, reason);
            }
        }
    }
}

/// The copies (see [`run`]).
#[inline(always)]
fn copies(
    ctx: &TcContext,
    net_id: u32,
    how: u32,
    ingress: u32,
    vxlan: u32,
    sg: &mut Sg,
) -> Result<(), DropReason> {
    let pkt = ctx.pkt();
    let h = pkt.bytes::<ETH_HLEN>(0).ok_or(DropReason::EthTruncated)?;
    let frame_dst: [u8; 6] = arr_at(h, 0);
    let proto = be16_at(h, 12);
    let by = how & BY_MASK;
    let key = if by == BY_DST_MAC {
        GroupKey::mac(net_id, frame_dst)
    } else {
        let n = if by == BY_TARGET {
            responder::target_key(&pkt, proto, net_id)
        } else {
            dst_ip_key(&pkt, proto, net_id)
        };
        GroupKey::ip(&n.ok_or(DropReason::NoHolder)?)
    };
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    let g: &Group = GROUPS
        .get_ptr(key)
        .map(|p| unsafe { &*p })
        .ok_or(DropReason::NoHolder)?;
    if !l2::mtu_ok(ctx, &pkt, proto, g.mtu) {
        return Err(DropReason::MtuExceeded);
    }
    // Before the first clone or store: the holders' ingress rules judge this flow.
    sg.prepare(ctx, proto);
    // Packet pointers are invalid after the first clone or store: nothing below reads
    // the frame.
    let rewrite = how & REWRITE != 0;
    let n = g.len as usize;
    // Flags, not counters: the verifier prunes loop states only when these agree, so
    // they must take few values. The reason of a refused copy is parked in `cb[4]` (the
    // verifier does not track context memory): kept in a register, each of the reasons
    // the policy can return would be a distinct state at every iteration.
    let mut sent = false;
    // The copies' results OR-ed together (see `flood::copy_outcome`).
    let mut rcs: i64 = 0;
    let skb = ctx.skb.skb;
    // SAFETY: the context of this run (see `tail_call`).
    unsafe { (*skb).cb[4] = DropReason::NoHolder as u32 };
    // One tunnel key for every remote copy, initialised before the loop: `tunnel::set_key`
    // builds a fresh one on the stack per call, and stack contents that differ between
    // iterations that sent to a chassis and those that did not kept the verifier from
    // pruning loop states (5x the instructions).
    let mut key = tunnel::key(net_id);
    let mask = trace::send_mask();
    let mut i = 0;
    // A constant bound for the verifier; `n` ends it early.
    while i < GROUP_MAX {
        if i >= n {
            break;
        }
        let m = &g.members[i];
        i += 1;
        if !rewrite && m.flags & GROUP_M_F_FIRST == 0 {
            continue;
        }
        let to = if m.kind == DEST_LOCAL {
            if m.ifindex == ingress {
                continue;
            }
            let dst = if rewrite { &m.mac } else { &frame_dst };
            if let Err(r) = policy::to_port(m.ifindex, dst, &m.mac, sg) {
                // SAFETY: as above.
                unsafe { (*skb).cb[4] = r as u32 };
                continue;
            }
            m.ifindex
        } else if m.kind == DEST_REMOTE && vxlan != 0 {
            // The tunnel key is per-CPU state copied into each clone (see `flood::flood`).
            if tunnel::set_key_to(ctx, &mut key, m.remote_ip).is_err() {
                rcs |= -1;
                continue;
            }
            vxlan
        } else {
            continue;
        };
        if rewrite && ctx.store(0, &m.mac, 0).is_err() {
            rcs |= -1;
            continue;
        }
        let rc = clone_redirect(ctx, to, mask);
        if rc == 0 {
            sent = true;
        }
        rcs |= rc;
    }
    if rcs != 0 {
        copy_outcome(rcs)
    } else if !sent {
        // SAFETY: as above.
        let r = unsafe { (*skb).cb[4] };
        Err(DropReason::from_u32(r).unwrap_or(DropReason::NoHolder))
    } else {
        Ok(())
    }
}
