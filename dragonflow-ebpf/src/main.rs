//! Kernel programs of the Dragonflow eBPF datapath.
//!
//! The from-VM pipeline is written once over [`ctx::PacketCtx`] and attached either as XDP
//! (`df_from_vm_xdp`) or as TC/tcx ingress (`df_from_vm_tc`) on a VM's tap; see
//! DESIGN.md §4 for the trade-off. Stages, one module each: `parse` (Ethernet), `portsec`
//! (port and address-pair lookups), `ipv4`, `ipv6`, `nd`, `arp`, `events` (GARP ring
//! buffer), `stats` (per-CPU counters). Every frame ends in exactly one counter slot.
#![no_std]
#![no_main]

mod arp;
mod ctx;
mod events;
mod ipv4;
mod ipv6;
// Called by the forwarding stage (being wired in; see fwd.rs).
#[allow(dead_code)]
mod l3;
mod maps;
mod nd;
mod parse;
mod portsec;
#[allow(dead_code)]
mod responder;
mod stats;
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
    verdict::{DropReason, PassPath},
};

use crate::{
    ctx::PacketCtx,
    parse::{ETH_P_IP, ETH_P_IPV6},
    portsec::PortCache,
    verdict::{Fwd, Pass},
};

/// The from-VM pipeline as XDP on the tap.
#[xdp]
pub fn df_from_vm_xdp(ctx: XdpContext) -> u32 {
    match try_from_vm(&ctx) {
        Ok(pass) => {
            stats::pass(pass.path);
            match pass.fwd {
                Fwd::Kernel => xdp_action::XDP_PASS,
            }
        }
        Err(reason) => {
            stats::drop(reason);
            xdp_action::XDP_DROP
        }
    }
}

/// The from-VM pipeline as TC (tcx ingress) on the tap.
#[classifier]
pub fn df_from_vm_tc(ctx: TcContext) -> i32 {
    match try_from_vm(&ctx) {
        Ok(pass) => {
            stats::pass(pass.path);
            match pass.fwd {
                Fwd::Kernel => TC_ACT_OK,
            }
        }
        Err(reason) => {
            stats::drop(reason);
            TC_ACT_SHOT
        }
    }
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

/// The verdict of the from-VM pipeline, with the port's say on drops: a drop on a tap
/// without a port is `UnknownPort` (fail closed), and a port without port security lets
/// everything through. Allowed frames were already proven to belong to a secured port
/// (see `portsec`), so the fast path never looks the port up.
#[inline(always)]
fn try_from_vm<C: PacketCtx + EbpfContext>(ctx: &C) -> Result<Pass, DropReason> {
    let mut port = PortCache::new(ctx.ifindex());
    match port_security(ctx, &mut port) {
        Ok(path) => Ok(Pass::kernel(path)),
        Err(reason) => match port.get() {
            None => {
                // Rare (a tap the agent has not configured yet); off unless
                // AYA_LOG_LEVEL says otherwise.
                debug!(ctx, "no port for ifindex {}", port.ifindex());
                Err(DropReason::UnknownPort)
            }
            Some(p) if !p.has(PORT_F_PORT_SECURITY) => Ok(Pass::kernel(PassPath::NoPortSecurity)),
            Some(_) => Err(reason),
        },
    }
}

/// Port security by ethertype. The fast path of an allowed IPv4 frame: Ethernet and IPv4
/// sanity, one `df_addrs_v2` lookup, then one counter in the entry point.
#[inline(always)]
fn port_security<C: PacketCtx>(ctx: &C, port: &mut PortCache) -> Result<PassPath, DropReason> {
    if ctx.vlan_tag_in_meta() {
        return Err(DropReason::VlanTagged);
    }
    let pkt = ctx.pkt();
    let eth = parse::eth(&pkt)?;
    match eth.proto {
        ETH_P_IP => ipv4::check(&pkt, port, &eth),
        ETH_P_IPV6 => ipv6::check(&pkt, port, &eth),
        // parse::eth lets nothing else through.
        _ => arp::check(&pkt, port, &eth),
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
