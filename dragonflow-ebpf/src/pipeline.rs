//! Entry layer: the pipelines the entry points in `main.rs` run, composed of the stages:
//! from a VM ([`from_vm`]: port security, then forwarding, with the security-group stage
//! judging where a frame is finished) and from the tunnel ([`from_tunnel`]), with the
//! counting every entry point shares. May import every layer below (ground and stages).

use aya_ebpf::{bindings::TC_ACT_SHOT, programs::TcContext};
use dragonflow_common::verdict::{Direction, DropReason, PassPath};

use crate::{
    config,
    fwd::{
        self, tunnel,
        verdict::{Fwd, Pass},
    },
    parse::{self, Eth, is_group},
    portsec::{self, PortCache},
    sg::{Hook, Sg},
    stats,
};

/// The from-VM pipeline: port security, then (when on) forwarding. A drop carries the
/// port-security path when the frame had passed it (a forwarding drop). The port has its
/// say on port-security drops (`portsec::security_drop`): a drop on a tap without a port
/// is `UnknownPort` (fail closed), and a port without port security lets everything
/// through. Allowed frames were already proven to belong to a secured port (see
/// `portsec`), so the fast path never looks the port up: the address hit also gives the
/// network.
#[inline(always)]
pub(crate) fn from_vm<C: Hook>(
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
            parse::check_proto(eth.proto).and_then(|()| portsec::check(&pkt, &eth, port, sg.l3()))
        }
    };
    let path = match checked {
        Ok(path) => path,
        Err(reason) => match portsec::security_drop(ctx, port, reason) {
            Ok(reason) => return Err((None, reason)),
            Err(pass) => pass,
        },
    };
    if path != PassPath::NoPortSecurity {
        sg.sender_secured();
    }
    let Some(cfg) = config::forwarding() else {
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

/// The tunnel program once its key is read (`None`: no IPv4 tunnel key).
#[inline(always)]
pub(crate) fn from_tunnel(ctx: &TcContext, rx: Option<tunnel::Received>) -> i32 {
    let Some(mut sg) = Sg::new(0, config::chassis()) else {
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
/// `sg::policy::to_port` counted under `to_vm` (see `sg`).
#[inline(always)]
pub(crate) fn drop_from_vm(sg: &Sg, reason: DropReason) {
    if !sg.counted(reason) {
        stats::drop(reason);
    }
}

/// This program decides the frame: count the port-security path that allowed it (if it
/// passed port security) and emit its pending GARP event. The outcome is counted by the
/// caller. See `dragonflow_common::verdict` for the counting convention.
#[inline(always)]
pub(crate) fn decided(port: &mut PortCache, allowed: Option<PassPath>) {
    if let Some(p) = allowed {
        stats::pass(p);
    }
    port.flush_garp();
}
