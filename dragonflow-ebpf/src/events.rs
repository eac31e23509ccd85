//! GARP events: a gratuitous ARP, an ARP reply or an unsolicited NA for a watched address
//! goes to the agent over a ring buffer, at most once per `GARP_MIN_INTERVAL_NS` per
//! (port, IP). The frame itself is forwarded whatever happens to the event.
//!
//! Ground layer: the event record port security raises ([`PendingGarp`]) and its
//! emission ([`emit`]). Port security keeps the pending record for the frame being judged
//! and emits it once the frame is decided (`portsec::PortCache::flush_garp`). May import
//! `ctx`, `maps`, `stats`, `trace`.

use aya_ebpf::{Global, helpers::bpf_ktime_get_ns};
use dragonflow_common::{
    event::{GarpEvent, GarpRateKey},
    maps::globals::GARP_MIN_INTERVAL_NS_DEFAULT,
    port::PortConfig,
    verdict::{DropReason, EventStat},
};

use crate::{
    maps::{GARP_EVENTS, GARP_RATE},
    stats, trace,
};

/// Load-time global (`dragonflow_common::maps::globals::GARP_MIN_INTERVAL_NS`).
#[unsafe(no_mangle)]
static GARP_MIN_INTERVAL_NS: Global<u64> = Global::new(GARP_MIN_INTERVAL_NS_DEFAULT);

/// A GARP event raised by the ARP/ND checks of port security, emitted only when the
/// program decides the frame (not when XDP hands it to its TC companion, which raises it
/// again itself). Every frame starts with this record zeroed (the verifier rejects reading
/// stack LLVM may copy while it is undefined), so it must cost nothing to zero: the address
/// is held as words, not `[u8; 16]`. bpf-linker passes `--bpf-expand-memcpy-in-order`,
/// under which LLVM turns the zeroing of a byte array into a call to a byte-at-a-time
/// `memset` subprogram; with `[u8; 16]` that call ran on every packet (measured: most of
/// the TC allowed-IPv4 regression, 3.7x -> 3.0x the stub).
#[derive(Clone, Copy, Default)]
pub(crate) struct PendingGarp {
    pub family: u8,
    /// Memory order, see `ctx::ip6_words`.
    pub ip: [u32; 4],
    pub mac: [u8; 6],
    pub op: u16,
}

/// What [`emit`] needs of the sending port (`portsec::PortCache`, which looks the port up
/// only when asked). A trait rather than the two values: looking the port up inside
/// `emit`, as when `emit` took the port cache itself, keeps the code LLVM emits (and the
/// verifier's work) as it was; passing the values changed it (measured: +8,000 verified
/// instructions in `df_from_vm_tc`).
pub(crate) trait Sender {
    fn ifindex(&self) -> u32;
    /// The port, when it exists with port security on.
    fn secured(&mut self) -> Result<&'static PortConfig, DropReason>;
}

impl PendingGarp {
    /// Nothing pending (the record every frame starts with).
    pub(crate) const NONE: Self = PendingGarp {
        family: 0,
        ip: [0; 4],
        mac: [0; 6],
        op: 0,
    };
}

/// Emits one event of `port` unless rate-limited; counts what happened.
#[inline(always)]
pub(crate) fn emit<S: Sender>(port: &mut S, family: u8, ip: [u8; 16], mac: [u8; 6], op: u16) {
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
    if trace::on() {
        // A trace raises no event and leaves the rate limit as it is: it only says the
        // event would have been sent.
        stats::event(EventStat::GarpSent);
        return;
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
