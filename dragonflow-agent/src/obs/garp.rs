//! The last GARP (or ARP reply, or NA) the datapath reported per (network, IP), and the
//! totals per op: filled by the GARP reader, served at `GET /garp` and counted in
//! `dragonflow_garp_events_total`.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use dragonflow_common::{
    addr::FAMILY_V4,
    event::{GARP_OP_ARP_REPLY, GARP_OP_ARP_REQUEST, GARP_OP_ND_NA, GarpEvent},
};
use serde::Serialize;

use crate::nb::MacAddr;

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

#[cfg(test)]
mod tests {
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
}
