//! GARP events from the datapath (ring buffer `df_garp_ev_v1`): a log line, a counter and
//! the last one seen per (network, IP), served as JSON at `GET /garp`; each event is then
//! handed to the detection way (`detect::task`: claims in etcd, probe answers).

use std::{
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use dragonflow_common::event::{GARP_OP_ARP_REPLY, GarpEvent};
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, info, warn};

use super::{judge::Sighting, metrics::Stats};
use crate::{
    datapath::sys,
    nb::MacAddr,
    obs::{garp::event_ip, state::Shared},
};

/// Wall-clock ms of a `bpf_ktime_get_ns` (CLOCK_MONOTONIC) timestamp.
pub fn wall_ms(ts_ns: u64, mono_now_ns: u64, wall_now: SystemTime) -> u64 {
    let now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now_ms.saturating_sub(mono_now_ns.saturating_sub(ts_ns) / 1_000_000)
}

/// Consumes the ring buffer until the process ends; every event also goes to `detect`
/// (never blocking: when the detection task is behind, the event is counted as dropped
/// in its `stats`).
pub async fn run(
    ring: RingBuf<MapData>,
    chassis: String,
    shared: Arc<Shared>,
    detect: Option<mpsc::Sender<Sighting>>,
    stats: Arc<Stats>,
) {
    // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long
    // as the AsyncFd owns the ring buffer.
    let mut fd = match unsafe { AsyncFd::register(ring) } {
        Ok(fd) => fd,
        Err(e) => {
            warn!("cannot poll the GARP ring buffer: {e}; GARP events disabled");
            return;
        }
    };
    loop {
        let mut guard = match fd.readable_mut().await {
            Ok(g) => g,
            Err(e) => {
                warn!("GARP ring buffer: {e}; GARP events disabled");
                return;
            }
        };
        let ring = guard.get_inner_mut();
        while let Some(item) = ring.next() {
            if item.len() < size_of::<GarpEvent>() {
                warn!(len = item.len(), "short GARP event ignored");
                continue;
            }
            // SAFETY: the length is checked; GarpEvent is plain old data; the ring buffer
            // gives no alignment guarantee beyond 8 bytes, so read unaligned anyway.
            let ev: GarpEvent = unsafe { std::ptr::read_unaligned(item.as_ptr().cast()) };
            drop(item);
            let s = handle(&ev, &chassis, &shared);
            if let Some(tx) = &detect
                && tx.try_send(s).is_err()
            {
                stats
                    .sightings_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        guard.clear_ready();
    }
}

fn handle(ev: &GarpEvent, chassis: &str, shared: &Shared) -> Sighting {
    let (ifname, lport) = shared.taps.port_of(ev.ifindex);
    let seen = wall_ms(ev.ts_ns, sys::monotonic_ns(), SystemTime::now());
    let sighting = Sighting {
        ts_ns: ev.ts_ns,
        ifindex: ev.ifindex,
        lport: lport.clone(),
        net_id: ev.net_id,
        ip: event_ip(ev),
        mac: MacAddr(ev.mac),
        op: ev.op,
    };
    let mut table = shared.garp.lock().expect("garp lock");
    let e = table.record(ev, ifname, lport, seen);
    // ARP replies are mostly answers to the detection way's liveness probes (one per
    // second per active holder): debug level; announcements stay at info.
    if ev.op == GARP_OP_ARP_REPLY {
        debug!(
            chassis,
            ifname = %e.ifname,
            lport = %e.lport,
            ip = %e.ip,
            mac = %e.mac,
            net_id = e.net_id,
            "ARP reply for an AAP IP seen"
        );
    } else {
        info!(
            chassis,
            ifname = %e.ifname,
            lport = %e.lport,
            ip = %e.ip,
            mac = %e.mac,
            op = e.op,
            net_id = e.net_id,
            "GARP seen"
        );
    }
    sighting
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn monotonic_to_wall() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_000_000);
        // An event 250 ms before "now" on the monotonic clock.
        assert_eq!(wall_ms(5_000_000_000, 5_250_000_000, wall), 999_750);
        // Clock oddities never underflow.
        assert_eq!(wall_ms(10, 5, wall), 1_000_000);
    }
}
