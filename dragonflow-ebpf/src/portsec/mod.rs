//! Stage: port security, the first stage of the from-VM pipeline. [`check`] judges a
//! frame by its ethertype (`ipv4`, `ipv6` with `nd`, `arp`: the header sanity of `parse`,
//! then the source checks); `port` holds the port lookup (fail closed) and the (MAC, IP)
//! pair check they share; this file the dispatch and the port's say on a drop
//! ([`security_drop`]).
//!
//! May import: the ground layer only (`ctx`, `config`, `maps`, `events`, `parse`, ...),
//! never another stage. What it learns for the security-group stage it writes into a
//! ground type (`parse::l3::L3`).
//!
use aya_log_ebpf::debug;
use dragonflow_common::{
    port::PORT_F_PORT_SECURITY,
    verdict::{DropReason, PassPath},
};

pub(crate) use self::port::PortCache;
use crate::{
    ctx::{PacketCtx, Pkt},
    parse::{ETH_P_IP, ETH_P_IPV6, Eth, l3::L3},
};

mod arp;
mod ipv4;
mod ipv6;
mod nd;
mod port;

/// Port security by ethertype. The fast path of an allowed IPv4 frame: Ethernet and IPv4
/// sanity, one `df_addrs_v2` lookup. `l3` receives the IP header facts the security-group
/// stage needs, when it is on.
#[inline(always)]
pub(crate) fn check(
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

/// The port's say on a port-security drop: `Ok(reason)` to drop, `Err(NoPortSecurity)`
/// when the port lets everything through. A drop on a tap without a port is
/// `UnknownPort` (fail closed).
#[inline(always)]
pub(crate) fn security_drop<C: PacketCtx>(
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
