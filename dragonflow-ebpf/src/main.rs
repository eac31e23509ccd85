//! Kernel programs of the Dragonflow eBPF datapath: this file holds the entry points only
//! (the programs the agent attaches or tail-calls), `pipeline` what they run.
//!
//! The from-VM pipeline is written once over [`ctx::PacketCtx`] and attached either as XDP
//! (`df_from_vm_xdp`) or as TC/tcx ingress (`df_from_vm_tc`) on a VM's tap; see the README
//! ("XDP or TC") for the trade-off. Every frame ends in exactly one counter slot.
//!
//! # Layers
//!
//! Lowest first; a module imports only modules of its own layer or below, never one above,
//! and no two modules import each other. A layer check reads this table (one
//! `module path: layer` per line between the markers):
//!
//! <!-- layers -->
//! - `ctx`: ground
//! - `maps`: ground
//! - `config`: ground
//! - `limits`: ground
//! - `trace`: ground
//! - `stats`: ground
//! - `events`: ground
//! - `report`: ground
//! - `parse`: ground
//! - `parse::arp`: ground
//! - `parse::ipv4`: ground
//! - `parse::nd`: ground
//! - `parse::ipv6`: ground
//! - `parse::l3`: ground
//! - `portsec::port`: stage
//! - `portsec::arp`: stage
//! - `portsec::ipv4`: stage
//! - `portsec::nd`: stage
//! - `portsec::ipv6`: stage
//! - `portsec`: stage
//! - `sg::flow`: stage
//! - `sg::ct`: stage
//! - `sg::frag`: stage
//! - `sg`: stage
//! - `sg::policy`: stage
//! - `fwd::verdict`: forwarding
//! - `fwd::l2`: forwarding
//! - `fwd::tunnel`: forwarding
//! - `fwd::responder`: forwarding
//! - `fwd::l3`: forwarding
//! - `fwd::flood`: forwarding
//! - `fwd::group`: forwarding
//! - `fwd`: forwarding
//! - `pipeline`: entry
//! - `bench`: entry
//! - `main`: entry
//! <!-- /layers -->
//!
//! - **ground**: the hook abstraction (`ctx`, no stage in it), the maps, counters,
//!   configuration lookups, limits, GARP events and header parsing (`parse`). Knows no
//!   stage.
//! - **stage**: port security (`portsec`) and the security groups (`sg`). A stage imports
//!   only ground; the two stages never import each other (what port security learns for
//!   the security groups travels in a ground type, `parse::l3::L3`).
//! - **forwarding**: the forwarding stage (`fwd`), a stage that may also use the
//!   security-group stage's public face (`sg::Sg`, `sg::Hook`, `sg::policy::to_port`),
//!   since every delivery ends in the receiver's ingress rules. Never port security.
//! - **entry**: `main` (entry points), `pipeline` (what they run), `bench` (the benchmark
//!   build's extra programs, feature `bench-progs`).
//!
//! Within a layer, imports go one way too: the table lists every module after each one it
//! imports, so a module may import only those above it (a folder's `mod.rs` is the module
//! of the folder's name: `parse` comes first because its children use its constants,
//! `portsec`, `sg` and `fwd` after the children they compose).
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: the BPF target has no compare-and-swap, so the stable
// atomics offer no read-modify-write (see `limits`).
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "core_intrinsics: see above")]

#[cfg(feature = "bench-progs")]
mod bench;
mod config;
mod ctx;
mod events;
mod fwd;
mod limits;
mod maps;
mod parse;
mod pipeline;
mod portsec;
mod report;
mod sg;
mod stats;
mod trace;

use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use dragonflow_common::{
    port::PORT_F_PORT_SECURITY,
    trace::{FWD_BACK, FWD_FLOOD, FWD_GROUP, FWD_HANDOFF, FWD_KERNEL, FWD_LOCAL, FWD_TUNNEL},
    verdict::{Direction, DropReason},
};

use crate::{
    ctx::PacketCtx,
    fwd::{group, tunnel, verdict::Fwd},
    maps::DEVMAP,
    parse::is_group,
    pipeline::{decided, drop_from_vm},
    portsec::PortCache,
    sg::Sg,
};

/// The from-VM pipeline as XDP on the tap. Local deliveries (devmap) and replies (XDP_TX)
/// are finished here; tunnel, flood and routed frames are handed off (XDP_PASS, uncounted)
/// to `df_from_vm_tc`, attached as this hook's tcx companion when forwarding is on.
///
/// `#[inline(always)]` (kept by the macro on the body it wraps): without it LLVM leaves
/// the large body a BPF-to-BPF subprogram of the section's entry stub, a call and a
/// fresh stack frame on every packet (~0.3x of the stub on the allowed-IPv4 path).
#[xdp]
#[inline(always)]
pub(crate) fn df_from_vm_xdp(ctx: XdpContext) -> u32 {
    trace::begin_xdp(&ctx);
    let mut port = PortCache::new(ctx.ifindex());
    let Some(mut sg) = Sg::new(ctx.ifindex(), config::chassis()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        report::drop(&ctx, ctx.ifindex(), Direction::FromVm, DropReason::SgDenied);
        return xdp_action::XDP_DROP;
    };
    let pass = match pipeline::from_vm(&ctx, &mut port, &mut sg) {
        Ok(pass) => pass,
        Err((allowed, reason)) => {
            decided(&mut port, allowed);
            drop_from_vm(&ctx, &sg, port.ifindex(), reason);
            return xdp_action::XDP_DROP;
        }
    };
    let (path, action) = match pass.fwd {
        Fwd::Handoff | Fwd::Tunnel { .. } | Fwd::Flood { .. } | Fwd::Group { .. } => {
            // Not a decision: the TC companion decides, counts and raises events.
            trace::fwd(FWD_HANDOFF, 0, 0, 0);
            return xdp_action::XDP_PASS;
        }
        Fwd::Kernel => {
            trace::fwd(FWD_KERNEL, 0, 0, 0);
            decided(&mut port, None);
            report::pass(Direction::FromVm, pass.path);
            return xdp_action::XDP_PASS;
        }
        Fwd::Local { ifindex, path } => (
            path,
            // A trace runs under BPF_PROG_TEST_RUN, which does not carry out redirects.
            {
                trace::fwd(FWD_LOCAL, ifindex, 0, 0);
                // The devmap is keyed by the tap's ifindex; a tap missing there (agent
                // behind) cannot be reached from XDP.
                DEVMAP
                    .redirect(ifindex, 0)
                    .map_err(|_| DropReason::RedirectFailed)
            },
        ),
        Fwd::Back(path) => {
            trace::fwd(FWD_BACK, ctx.ifindex(), 0, 0);
            (path, Ok(xdp_action::XDP_TX))
        }
    };
    decided(&mut port, Some(pass.path));
    match action {
        Ok(a) => {
            report::pass(Direction::FromVm, path);
            a
        }
        Err(reason) => {
            report::drop(&ctx, port.ifindex(), Direction::FromVm, reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The from-VM pipeline as TC (tcx ingress) on the tap; also XDP's companion (see
/// `df_from_vm_xdp`). `#[inline(always)]`: see `df_from_vm_xdp`.
#[classifier]
#[inline(always)]
pub(crate) fn df_from_vm_tc(ctx: TcContext) -> i32 {
    trace::begin_tc(&ctx);
    let mut port = PortCache::new(ctx.ifindex());
    let Some(mut sg) = Sg::new(ctx.ifindex(), config::chassis()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        report::drop(&ctx, ctx.ifindex(), Direction::FromVm, DropReason::SgDenied);
        return TC_ACT_SHOT;
    };
    let pass = match pipeline::from_vm(&ctx, &mut port, &mut sg) {
        Ok(pass) => pass,
        Err((allowed, reason)) => {
            decided(&mut port, allowed);
            drop_from_vm(&ctx, &sg, port.ifindex(), reason);
            return TC_ACT_SHOT;
        }
    };
    decided(&mut port, Some(pass.path));
    let out = match pass.fwd {
        Fwd::Kernel => {
            trace::fwd(FWD_KERNEL, 0, 0, 0);
            return TC_ACT_OK;
        }
        // A trace runs under BPF_PROG_TEST_RUN, which does not carry out redirects.
        Fwd::Local { ifindex, path } => {
            trace::fwd(FWD_LOCAL, ifindex, 0, 0);
            fwd::redirect(ifindex).map(|a| (path, a))
        }
        Fwd::Back(path) => {
            trace::fwd(FWD_BACK, port.ifindex(), 0, 0);
            fwd::redirect(port.ifindex()).map(|a| (path, a))
        }
        Fwd::Tunnel {
            vni,
            remote_ip,
            vxlan,
            path,
        } => {
            trace::fwd(FWD_TUNNEL, vxlan, vni, u32::from_ne_bytes(remote_ip));
            fwd::to_tunnel(&ctx, vni, remote_ip, vxlan).map(|a| (path, a))
        }
        Fwd::Flood { net_id, vxlan } => {
            trace::fwd(FWD_FLOOD, vxlan, net_id, 0);
            // Re-read: the forwarding stage may not keep packet pointers across helpers.
            let pkt = ctx.pkt();
            match parse::eth(&pkt) {
                // The sender's egress rules first (XDP never gets here: it hands off),
                // then its flood bucket: only what would be copied is charged.
                Ok(eth) => sg
                    .egress(&ctx, eth.proto, is_group(&eth.dst))
                    .and_then(|()| limits::flood(port.ifindex()))
                    .and_then(|()| {
                        fwd::flood::flood(
                            &ctx,
                            &pkt,
                            eth.proto,
                            &eth.dst,
                            net_id,
                            port.ifindex(),
                            vxlan,
                            &mut sg,
                        )
                    })
                    .map(|p| (p, TC_ACT_SHOT)),
                Err(r) => Err(r),
            }
        }
        Fwd::Group { net_id, how } => {
            trace::fwd(FWD_GROUP, 0, net_id, how);
            // Re-read, as for a flood; the sender's egress rules first. A question for a
            // shared IP is copied to its holders like a flood: it passes the sender's
            // flood bucket too (packets to the VIP itself do not).
            let pkt = ctx.pkt();
            match parse::eth(&pkt) {
                Ok(eth) => sg
                    .egress(&ctx, eth.proto, is_group(&eth.dst))
                    .and_then(|()| {
                        if group::is_question(how) {
                            limits::flood(port.ifindex())
                        } else {
                            Ok(())
                        }
                    })
                    .and_then(|()| {
                        let vxlan = config::forwarding().map_or(0, |c| c.vxlan_ifindex);
                        // Returns only when the tail call failed.
                        Err(group::tail_call(&ctx, net_id, how, port.ifindex(), vxlan))
                    }),
                Err(r) => Err(r),
            }
        }
        // Only XDP hands off.
        Fwd::Handoff => Err(DropReason::RedirectFailed),
    };
    match out {
        Ok((path, action)) => {
            report::pass(Direction::FromVm, path);
            action
        }
        Err(reason) => {
            drop_from_vm(&ctx, &sg, port.ifindex(), reason);
            TC_ACT_SHOT
        }
    }
}

/// The copies of a frame to the holders of a shared allowed-address-pair address
/// (broadcast way), tail-called by `df_from_vm_tc` and `df_from_tunnel` through
/// `df_progs_v1` (see `fwd::group`); counts the outcome in the caller's direction and drops
/// the original. Never attached.
#[classifier]
pub(crate) fn df_aap_group(ctx: TcContext) -> i32 {
    group::run(&ctx);
    TC_ACT_SHOT
}

/// tcx ingress on `df-vxlan`: frames from other chassis, admitted (`fwd::tunnel::admit`) and
/// delivered by (VNI, destination MAC) into local taps only. Everything is counted under
/// `Direction::FromTunnel`.
#[classifier]
pub(crate) fn df_from_tunnel(ctx: TcContext) -> i32 {
    trace::begin_tc(&ctx);
    pipeline::from_tunnel(&ctx, tunnel::received(&ctx))
}

/// tcx-ingress companion of `df_from_vm_xdp` on veth taps: drops frames whose VLAN tag
/// was offloaded into skb metadata (`vlan_present`), which XDP cannot see. Untagged frames
/// go on untouched and uncounted (the XDP program already counted them). A tagged frame
/// was counted by XDP under its pass path too; this drop adds `vlan_tagged`.
#[classifier]
pub(crate) fn df_vlan_guard(ctx: TcContext) -> i32 {
    // Never traced (the trace runs the pipeline programs), but every entry resets the
    // run slot (see `trace`).
    trace::begin_tc(&ctx);
    if !ctx.vlan_tag_in_meta() {
        return TC_ACT_OK;
    }
    // Same rule as the TC pipeline: ports without port security may send anything.
    if let Some(port) = config::port(ctx.ifindex())
        && !port.has(PORT_F_PORT_SECURITY)
    {
        return TC_ACT_OK;
    }
    report::drop(
        &ctx,
        ctx.ifindex(),
        Direction::FromVm,
        DropReason::VlanTagged,
    );
    TC_ACT_SHOT
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // A reachable panic must fail verification loudly, not run.
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
