//! GARP events from the datapath (ring buffer `df_garp_ev_v1`): a log line, a counter and
//! the last one seen per (network, IP), served as JSON at `GET /garp`; each event is then
//! handed to the detection way (`activeport.rs`: claims in etcd, probe answers).

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
    time::{SystemTime, UNIX_EPOCH},
};

use aya::maps::{MapData, RingBuf};
use dragonflow_common::{
    addr::FAMILY_V4,
    event::{GARP_OP_ARP_REPLY, GARP_OP_ARP_REQUEST, GARP_OP_ND_NA, GarpEvent},
};
use serde::Serialize;
use tokio::{io::unix::AsyncFd, sync::mpsc};
use tracing::{debug, info, warn};

use crate::{activeport::Sighting, datapath::sys, metrics::Shared, nb::MacAddr};

/// Bound on the table (oldest entries are evicted first).
const TABLE_MAX: usize = 65_536;

/// One row of `GET /garp` (the dfctl CLI reads this shape).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct GarpEntry {
    pub ip: IpAddr,
    pub mac: MacAddr,
    pub ifname: String,
    pub lport: String,
    pub net_id: u32,
    pub op: &'static str,
    pub last_seen_unix_ms: u64,
    pub count: u64,
}

/// Last event per (net_id, ip), and totals per op.
#[derive(Debug, Default)]
pub struct GarpTable {
    entries: BTreeMap<(u32, IpAddr), GarpEntry>,
    pub by_op: BTreeMap<&'static str, u64>,
}

pub const OPS: [&str; 3] = ["arp_request", "arp_reply", "nd_na"];

pub fn op_name(op: u16) -> &'static str {
    match op {
        GARP_OP_ARP_REQUEST => "arp_request",
        GARP_OP_ARP_REPLY => "arp_reply",
        GARP_OP_ND_NA => "nd_na",
        _ => "unknown",
    }
}

pub fn event_ip(ev: &GarpEvent) -> IpAddr {
    if ev.family == FAMILY_V4 {
        IpAddr::V4(Ipv4Addr::new(ev.ip[0], ev.ip[1], ev.ip[2], ev.ip[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(ev.ip))
    }
}

/// Wall-clock ms of a `bpf_ktime_get_ns` (CLOCK_MONOTONIC) timestamp.
pub fn wall_ms(ts_ns: u64, mono_now_ns: u64, wall_now: SystemTime) -> u64 {
    let now_ms = wall_now
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    now_ms.saturating_sub(mono_now_ns.saturating_sub(ts_ns) / 1_000_000)
}

impl GarpTable {
    pub fn record(
        &mut self,
        ev: &GarpEvent,
        ifname: String,
        lport: String,
        seen_ms: u64,
    ) -> &GarpEntry {
        let op = op_name(ev.op);
        *self.by_op.entry(op).or_default() += 1;
        let ip = event_ip(ev);
        let key = (ev.net_id, ip);
        if !self.entries.contains_key(&key) && self.entries.len() >= TABLE_MAX {
            // Evict the stalest entry.
            if let Some(k) = self
                .entries
                .iter()
                .min_by_key(|(_, e)| e.last_seen_unix_ms)
                .map(|(k, _)| *k)
            {
                self.entries.remove(&k);
            }
        }
        let count = self.entries.get(&key).map_or(0, |e| e.count) + 1;
        let entry = GarpEntry {
            ip,
            mac: MacAddr(ev.mac),
            ifname,
            lport,
            net_id: ev.net_id,
            op,
            last_seen_unix_ms: seen_ms,
            count,
        };
        self.entries.insert(key, entry);
        &self.entries[&key]
    }

    pub fn rows(&self) -> Vec<GarpEntry> {
        self.entries.values().cloned().collect()
    }

    pub fn total(&self) -> u64 {
        self.by_op.values().sum()
    }
}

/// Consumes the ring buffer until the process ends; every event also goes to `detect`
/// (never blocking: when the detection task is behind, the event is counted as dropped).
pub async fn run(
    ring: RingBuf<MapData>,
    chassis: String,
    shared: Arc<Shared>,
    detect: Option<mpsc::Sender<Sighting>>,
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
                shared
                    .detect
                    .sightings_dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        guard.clear_ready();
    }
}

fn handle(ev: &GarpEvent, chassis: &str, shared: &Shared) -> Sighting {
    let (ifname, lport) = shared.port_of(ev.ifindex);
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

    fn ev(ip: [u8; 4], op: u16) -> GarpEvent {
        let mut a = [0u8; 16];
        a[..4].copy_from_slice(&ip);
        GarpEvent {
            ts_ns: 0,
            ifindex: 3,
            net_id: 100,
            ip: a,
            mac: [2, 0, 0, 0, 0, 1],
            op,
            family: FAMILY_V4,
            _pad: [0; 7],
        }
    }

    #[test]
    fn table_counts_and_last_seen() {
        let mut t = GarpTable::default();
        t.record(
            &ev([192, 0, 2, 100], GARP_OP_ARP_REQUEST),
            "tap1".into(),
            "p1".into(),
            10,
        );
        let e = t
            .record(
                &ev([192, 0, 2, 100], GARP_OP_ARP_REPLY),
                "tap2".into(),
                "p2".into(),
                20,
            )
            .clone();
        assert_eq!(e.count, 2);
        assert_eq!(e.lport, "p2");
        assert_eq!(e.op, "arp_reply");
        assert_eq!(e.last_seen_unix_ms, 20);
        t.record(
            &ev([192, 0, 2, 101], GARP_OP_ARP_REQUEST),
            "tap1".into(),
            "p1".into(),
            30,
        );
        assert_eq!(t.rows().len(), 2);
        assert_eq!(t.total(), 3);
        assert_eq!(t.by_op["arp_request"], 2);
        let json = serde_json::to_value(t.rows()).unwrap();
        assert_eq!(json[0]["ip"], "192.0.2.100");
        assert_eq!(json[0]["mac"], "02:00:00:00:00:01");
        for k in [
            "ip",
            "mac",
            "ifname",
            "lport",
            "net_id",
            "op",
            "last_seen_unix_ms",
            "count",
        ] {
            assert!(json[0].get(k).is_some(), "{k}");
        }
    }

    #[test]
    fn monotonic_to_wall() {
        let wall = UNIX_EPOCH + Duration::from_millis(1_000_000);
        // An event 250 ms before "now" on the monotonic clock.
        assert_eq!(wall_ms(5_000_000_000, 5_250_000_000, wall), 999_750);
        // Clock oddities never underflow.
        assert_eq!(wall_ms(10, 5, wall), 1_000_000);
    }
}
