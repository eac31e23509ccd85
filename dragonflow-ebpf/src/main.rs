//! Kernel programs of the Dragonflow eBPF datapath.
//!
//! The from-VM pipeline is written once over [`ctx::PacketCtx`] and attached either as XDP
//! (`df_from_vm_xdp`) or as TC/tcx ingress (`df_from_vm_tc`) on a VM's tap; see
//! the README ("XDP or TC") for the trade-off. Stages, one module each: `parse` (Ethernet), `portsec`
//! (port and address-pair lookups), `ipv4`, `ipv6`, `nd`, `arp`, `events` (GARP ring
//! buffer), `stats` (per-CPU counters). Every frame ends in exactly one counter slot.
#![no_std]
#![no_main]
// `core::intrinsics::atomic_xadd`: the BPF target has no compare-and-swap, so the stable
// atomics offer no read-modify-write (see `limits`).
#![feature(core_intrinsics)]
#![allow(internal_features)]

mod arp;
mod ct;
mod ctx;
mod events;
mod flow;
mod frag;
mod fwd;
mod group;
mod ipv4;
mod ipv6;
mod l2;
mod l3;
mod limits;
mod maps;
mod nd;
mod parse;
mod policy;
mod portsec;
mod responder;
mod sg;
mod stats;
mod tunnel;
mod verdict;

use aya_ebpf::{
    EbpfContext,
    bindings::{TC_ACT_OK, TC_ACT_SHOT, xdp_action},
    macros::{classifier, xdp},
    programs::{TcContext, XdpContext},
};
use aya_log_ebpf::debug;
use dragonflow_common::{
    port::PORT_F_PORT_SECURITY,
    verdict::{Direction, DropReason, PassPath},
};

use crate::{
    ctx::{PacketCtx, Pkt},
    flow::L3,
    maps::DEVMAP,
    parse::{ETH_P_IP, ETH_P_IPV6, Eth, is_group},
    portsec::PortCache,
    sg::Sg,
    verdict::{Fwd, Pass},
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
pub fn df_from_vm_xdp(ctx: XdpContext) -> u32 {
    let mut port = PortCache::new(ctx.ifindex());
    let Some(mut sg) = Sg::new(ctx.ifindex(), fwd::config()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        stats::drop(DropReason::SgDenied);
        return xdp_action::XDP_DROP;
    };
    let pass = match try_from_vm(&ctx, &mut port, &mut sg) {
        Ok(pass) => pass,
        Err((allowed, reason)) => {
            decided(&mut port, allowed);
            drop_from_vm(&sg, reason);
            return xdp_action::XDP_DROP;
        }
    };
    let (path, action) = match pass.fwd {
        Fwd::Handoff | Fwd::Tunnel { .. } | Fwd::Flood { .. } | Fwd::Group { .. } => {
            // Not a decision: the TC companion decides, counts and raises events.
            return xdp_action::XDP_PASS;
        }
        Fwd::Kernel => {
            decided(&mut port, None);
            stats::pass(pass.path);
            return xdp_action::XDP_PASS;
        }
        Fwd::Local { ifindex, path } => (
            path,
            // The devmap is keyed by the tap's ifindex; a tap missing there (agent
            // behind) cannot be reached from XDP.
            DEVMAP
                .redirect(ifindex, 0)
                .map_err(|_| DropReason::RedirectFailed),
        ),
        Fwd::Back(path) => (path, Ok(xdp_action::XDP_TX)),
    };
    decided(&mut port, Some(pass.path));
    match action {
        Ok(a) => {
            stats::pass(path);
            a
        }
        Err(reason) => {
            stats::drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The from-VM pipeline as TC (tcx ingress) on the tap; also XDP's companion (see
/// `df_from_vm_xdp`). `#[inline(always)]`: see `df_from_vm_xdp`.
#[classifier]
#[inline(always)]
pub fn df_from_vm_tc(ctx: TcContext) -> i32 {
    let mut port = PortCache::new(ctx.ifindex());
    let Some(mut sg) = Sg::new(ctx.ifindex(), fwd::config()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        stats::drop(DropReason::SgDenied);
        return TC_ACT_SHOT;
    };
    let pass = match try_from_vm(&ctx, &mut port, &mut sg) {
        Ok(pass) => pass,
        Err((allowed, reason)) => {
            decided(&mut port, allowed);
            drop_from_vm(&sg, reason);
            return TC_ACT_SHOT;
        }
    };
    decided(&mut port, Some(pass.path));
    let out = match pass.fwd {
        Fwd::Kernel => return TC_ACT_OK,
        Fwd::Local { ifindex, path } => fwd::redirect(ifindex).map(|a| (path, a)),
        Fwd::Back(path) => fwd::redirect(port.ifindex()).map(|a| (path, a)),
        Fwd::Tunnel {
            vni,
            remote_ip,
            vxlan,
            path,
        } => fwd::to_tunnel(&ctx, vni, remote_ip, vxlan).map(|a| (path, a)),
        Fwd::Flood { net_id, vxlan } => {
            // Re-read: the forwarding stage may not keep packet pointers across helpers.
            let pkt = ctx.pkt();
            match parse::eth(&pkt) {
                // The sender's egress rules first (XDP never gets here: it hands off),
                // then its flood bucket: only what would be copied is charged.
                Ok(eth) => sg
                    .egress(&ctx, eth.proto, is_group(&eth.dst))
                    .and_then(|()| limits::flood(port.ifindex()))
                    .and_then(|()| {
                        fwd::flood(
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
                        let vxlan = fwd::enabled().map_or(0, |c| c.vxlan_ifindex);
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
            stats::pass(path);
            action
        }
        Err(reason) => {
            drop_from_vm(&sg, reason);
            TC_ACT_SHOT
        }
    }
}

/// The copies of a frame to the holders of a shared allowed-address-pair address
/// (broadcast way), tail-called by `df_from_vm_tc` and `df_from_tunnel` through
/// `df_progs_v1` (see `group`); counts the outcome in the caller's direction and drops
/// the original. Never attached.
#[classifier]
pub fn df_aap_group(ctx: TcContext) -> i32 {
    group::run(&ctx);
    TC_ACT_SHOT
}

/// tcx ingress on `df-vxlan`: frames from other chassis, admitted (`tunnel::admit`) and
/// delivered by (VNI, destination MAC) into local taps only. Everything is counted under
/// `Direction::FromTunnel`.
#[classifier]
pub fn df_from_tunnel(ctx: TcContext) -> i32 {
    from_tunnel(&ctx, tunnel::received(&ctx))
}

/// Micro-benchmark only, never attached: `df_from_tunnel` with the tunnel key read from
/// `df_bench_tun` (which the benchmark fills) instead of the skb, because
/// BPF_PROG_TEST_RUN cannot give a frame tunnel metadata. Everything after the key is the
/// same code.
#[classifier]
pub fn df_bench_from_tunnel(ctx: TcContext) -> i32 {
    let rx = maps::BENCH_TUN.get(0).map(|k| tunnel::Received {
        vni: k[0],
        remote_w: k[1],
    });
    from_tunnel(&ctx, rx)
}

/// The tunnel program once its key is read (`None`: no IPv4 tunnel key).
#[inline(always)]
fn from_tunnel(ctx: &TcContext, rx: Option<tunnel::Received>) -> i32 {
    let Some(mut sg) = Sg::new(0, fwd::config()) else {
        // Unreachable (a per-CPU array of one entry); fail closed.
        stats::drop_in(Direction::FromTunnel, DropReason::SgDenied);
        return TC_ACT_SHOT;
    };
    match fwd::from_tunnel(ctx, rx, &mut sg) {
        Ok((path, action)) => {
            stats::pass_in(Direction::FromTunnel, path);
            action
        }
        Err(reason) => {
            // The receiver's ingress rules counted their own drop (under `to_vm`).
            if !sg.counted(reason) {
                stats::drop_in(Direction::FromTunnel, reason);
            }
            TC_ACT_SHOT
        }
    }
}

/// Counts a from-VM drop, unless it is the receiver's security-group drop that
/// `policy::to_port` counted under `to_vm` (see `sg`).
#[inline(always)]
fn drop_from_vm(sg: &Sg, reason: DropReason) {
    if !sg.counted(reason) {
        stats::drop(reason);
    }
}

/// This program decides the frame: count the port-security path that allowed it (if it
/// passed port security) and emit its pending GARP event. The outcome is counted by the
/// caller. See `dragonflow_common::verdict` for the counting convention.
#[inline(always)]
fn decided(port: &mut PortCache, allowed: Option<PassPath>) {
    if let Some(p) = allowed {
        stats::pass(p);
    }
    events::flush(port);
}

/// tcx-ingress companion of `df_from_vm_xdp` on veth taps: drops frames whose VLAN tag
/// was offloaded into skb metadata (`vlan_present`), which XDP cannot see. Untagged frames
/// go on untouched and uncounted (the XDP program already counted them). A tagged frame
/// was counted by XDP under its pass path too; this drop adds `vlan_tagged`.
#[classifier]
pub fn df_vlan_guard(ctx: TcContext) -> i32 {
    if !ctx.vlan_tag_in_meta() {
        return TC_ACT_OK;
    }
    // Same rule as the TC pipeline: ports without port security may send anything.
    if let Some(port) = portsec::port(ctx.ifindex())
        && !port.has(PORT_F_PORT_SECURITY)
    {
        return TC_ACT_OK;
    }
    stats::drop(DropReason::VlanTagged);
    TC_ACT_SHOT
}

/// Stub for the micro-benchmark: the cost floor of the XDP hook.
#[xdp]
pub fn df_stub_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

/// Stub for the micro-benchmark: the cost floor of the TC hook.
#[classifier]
pub fn df_stub_tc_ok(_ctx: TcContext) -> i32 {
    TC_ACT_OK
}

/// Stub for the micro-benchmark: the floor of an XDP local delivery, a devmap redirect to
/// the ingress ifindex (the benchmark puts it in `df_devmap_v1`).
#[xdp]
pub fn df_stub_xdp_redirect(ctx: XdpContext) -> u32 {
    DEVMAP
        .redirect(ctx.ifindex(), 0)
        .unwrap_or(xdp_action::XDP_DROP)
}

/// Stub for the micro-benchmark: the floor of a TC local delivery, bpf_redirect to the
/// ingress ifindex.
#[classifier]
pub fn df_stub_tc_redirect(ctx: TcContext) -> i32 {
    // SAFETY: plain helper call.
    unsafe { aya_ebpf::helpers::bpf_redirect(ctx.ifindex(), 0) as i32 }
}

/// The from-VM pipeline: port security, then (when on) forwarding. A drop carries the
/// port-security path when the frame had passed it (a forwarding drop). The port has its
/// say on port-security drops: a drop on a tap without a port is `UnknownPort` (fail
/// closed), and a port without port security lets everything through. Allowed frames
/// were already proven to belong to a secured port (see `portsec`), so the fast path
/// never looks the port up: the address hit also gives the network.
#[inline(always)]
fn try_from_vm<C: PacketCtx + EbpfContext>(
    ctx: &C,
    port: &mut PortCache,
    sg: &mut Sg,
) -> Result<Pass, (Option<PassPath>, DropReason)> {
    let pkt = ctx.pkt();
    // Eth fully defined on every path (a zeroed header when truncated): LLVM would
    // otherwise spill the undefined fields of an `Err`, which the verifier rejects
    // ("!read_ok") where the paths merge.
    let (eth, eth_err) = match parse::eth_any(&pkt) {
        Ok(eth) => (eth, None),
        Err(reason) => (Eth::default(), Some(reason)),
    };
    let checked = match eth_err {
        Some(reason) => Err(reason),
        None if ctx.vlan_tag_in_meta() => Err(DropReason::VlanTagged),
        None => {
            parse::check_proto(eth.proto).and_then(|()| port_security(&pkt, &eth, port, sg.l3()))
        }
    };
    let path = match checked {
        Ok(path) => path,
        Err(reason) => match security_drop(ctx, port, reason) {
            Ok(reason) => return Err((None, reason)),
            Err(pass) => pass,
        },
    };
    if path != PassPath::NoPortSecurity {
        sg.sender_secured();
    }
    let Some(cfg) = fwd::enabled() else {
        // To the hypervisor's stack: this program finishes the frame.
        sg.egress(ctx, eth.proto, is_group(&eth.dst))
            .map_err(|r| (Some(path), r))?;
        return Ok(Pass {
            path,
            fwd: Fwd::Kernel,
        });
    };
    let fwd = match eth_err {
        Some(reason) => Err(reason),
        None => port
            .net_id()
            .and_then(|net_id| fwd::from_vm(ctx, &pkt, &eth, net_id, cfg, sg)),
    }
    .map_err(|r| (Some(path), r))?;
    Ok(Pass { path, fwd })
}

/// The port's say on a port-security drop: `Ok(reason)` to drop, `Err(NoPortSecurity)`
/// when the port lets everything through.
#[inline(always)]
fn security_drop<C: PacketCtx + EbpfContext>(
    ctx: &C,
    port: &mut PortCache,
    reason: DropReason,
) -> Result<DropReason, PassPath> {
    match port.get() {
        None => {
            // Rare (a tap the agent has not configured yet); off unless
            // AYA_LOG_LEVEL says otherwise.
            debug!(ctx, "no port for ifindex {}", port.ifindex());
            Ok(DropReason::UnknownPort)
        }
        Some(p) if !p.has(PORT_F_PORT_SECURITY) => Err(PassPath::NoPortSecurity),
        Some(_) => Ok(reason),
    }
}

/// Port security by ethertype. The fast path of an allowed IPv4 frame: Ethernet and IPv4
/// sanity, one `df_addrs_v2` lookup.
#[inline(always)]
fn port_security(
    pkt: &Pkt,
    eth: &Eth,
    port: &mut PortCache,
    l3: Option<&mut L3>,
) -> Result<PassPath, DropReason> {
    match eth.proto {
        ETH_P_IP => ipv4::check(pkt, port, eth, l3),
        ETH_P_IPV6 => ipv6::check(pkt, port, eth, l3),
        // parse::eth lets nothing else through.
        _ => arp::check(pkt, port, eth),
    }
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
