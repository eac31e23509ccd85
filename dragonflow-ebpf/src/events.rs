//! GARP events: a gratuitous ARP, an ARP reply or an unsolicited NA for a watched address
//! goes to the agent over a ring buffer, at most once per `GARP_MIN_INTERVAL_NS` per
//! (port, IP). The frame itself is forwarded whatever happens to the event.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns};
use dragonflow_common::{
    event::{GarpEvent, GarpRateKey},
    maps::globals::GARP_MIN_INTERVAL_NS_DEFAULT,
    verdict::EventStat,
};

use crate::{
    ctx::{ip6_bytes, ip6_words},
    maps::{GARP_EVENTS, GARP_RATE},
    portsec::{PendingGarp, PortCache},
    stats,
};

/// Load-time global (`dragonflow_common::maps::globals::GARP_MIN_INTERVAL_NS`).
#[unsafe(no_mangle)]
static GARP_MIN_INTERVAL_NS: Global<u64> = Global::new(GARP_MIN_INTERVAL_NS_DEFAULT);

/// Raises an event for the frame being judged: emitted by [`flush`] once the frame is
/// decided by this program.
#[inline(always)]
pub fn garp(port: &mut PortCache, family: u8, ip: [u8; 16], mac: [u8; 6], op: u16) {
    port.garp = PendingGarp {
        family,
        ip: ip6_words(ip),
        mac,
        op,
    };
    port.has_garp = true;
}

/// Emits the frame's pending event, if any (see [`PortCache::garp`]).
#[inline(always)]
pub fn flush(port: &mut PortCache) {
    if port.has_garp {
        port.has_garp = false;
        let g = port.garp;
        emit(port, g.family, ip6_bytes(g.ip), g.mac, g.op);
    }
}

/// Emits one event unless rate-limited; counts what happened.
#[inline(always)]
fn emit(port: &mut PortCache, family: u8, ip: [u8; 16], mac: [u8; 6], op: u16) {
    // The event names the port's network; a port gone meanwhile raises none.
    let Ok(cfg) = port.secured() else { return };
    let ifindex = port.ifindex();
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let rk = GarpRateKey {
        ifindex,
        family,
        _pad: [0; 3],
        ip,
    };
    let last = GARP_RATE.get_ptr_mut(rk);
    if let Some(last) = last {
        // SAFETY: map value pointer, valid for this run. The first event for a key always
        // passes (no entry yet); races between CPUs at worst let two events through.
        if now.wrapping_sub(unsafe { *last }) < GARP_MIN_INTERVAL_NS.load() {
            stats::event(EventStat::GarpRateLimited);
            return;
        }
    }
    let Some(mut entry) = GARP_EVENTS.reserve::<GarpEvent>(0) else {
        // Not rate-limiting on a lost event: the next announcement may get through.
        stats::event(EventStat::GarpRingFull);
        return;
    };
    entry.write(GarpEvent {
        ts_ns: now,
        ifindex,
        net_id: cfg.net_id,
        ip,
        mac,
        op,
        family,
        _pad: [0; 7],
    });
    entry.submit(0);
    match last {
        // SAFETY: as above.
        Some(last) => unsafe { *last = now },
        None => {
            // Full LRU evicts the oldest; a failed insert only loses rate limiting.
            let _ = GARP_RATE.insert(rk, now, 0);
        }
    }
    stats::event(EventStat::GarpSent);
}
