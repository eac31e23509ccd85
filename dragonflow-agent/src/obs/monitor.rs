//! The live event stream of `GET /monitor` (`dfctl monitor`): drops the datapath reported
//! (decoded from the start of the frame) and the GARP events of the detection way, fanned
//! out to every connected client through a broadcast channel. The number of clients is
//! published ([`Hub::clients`]) so that the monitor task turns the datapath's drop events
//! on only while someone listens.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::Arc,
};

use dragonflow_common::verdict::{DIRECTIONS, DropReason};
use serde::Serialize;
use tokio::sync::{broadcast, watch};

use crate::nb::MacAddr;

/// Events kept for a slow client before it is told how many it lost.
const BACKLOG: usize = 4096;

/// One line of the stream.
#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// `drop` or `garp`.
    pub kind: &'static str,
    pub time_unix_ms: u64,
    pub ifindex: u32,
    pub ifname: String,
    /// The logical port on the tap ("" when none).
    pub port: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub frame_len: Option<u32>,
    #[serde(flatten)]
    pub headers: Headers,
}

/// What the first bytes of a frame say (every field optional: a truncated or foreign
/// frame says less).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Headers {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vlan: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ethertype: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proto: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub src_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dst_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub icmp_type: Option<u8>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_op: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_sender_mac: Option<MacAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_sender_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arp_target_ip: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nd_target: Option<IpAddr>,
}

/// A stream line as the broadcast carries it.
#[derive(Clone, Debug)]
pub enum Item {
    Event(Arc<Event>),
}

/// The stream's fan-out point, in [`crate::obs::state::Shared`].
pub struct Hub {
    tx: broadcast::Sender<Item>,
    clients: watch::Sender<usize>,
}

impl Default for Hub {
    fn default() -> Self {
        Hub {
            tx: broadcast::channel(BACKLOG).0,
            clients: watch::channel(0).0,
        }
    }
}

/// A connected client; the count of clients drops when it does.
pub struct Subscription {
    pub rx: broadcast::Receiver<Item>,
    clients: watch::Sender<usize>,
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.clients.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Hub {
    pub fn subscribe(&self) -> Subscription {
        let rx = self.tx.subscribe();
        self.clients.send_modify(|n| *n += 1);
        Subscription {
            rx,
            clients: self.clients.clone(),
        }
    }

    /// The number of connected clients, to wait on.
    pub fn clients(&self) -> watch::Receiver<usize> {
        self.clients.subscribe()
    }

    /// Sends to every client; never blocks (a client that is behind loses the oldest).
    pub fn publish(&self, ev: Event) {
        if self.clients.borrow().eq(&0) {
            return;
        }
        let _ = self.tx.send(Item::Event(Arc::new(ev)));
    }
}

/// What a client asked to see (`GET /monitor?...`).
#[derive(Clone, Debug, Default)]
pub struct Filter {
    /// Port id, tap name or ifindex.
    pub port: Option<String>,
    pub reason: Option<String>,
    pub direction: Option<String>,
    /// Kinds (`drop`, `garp`); empty: all.
    pub kinds: Vec<String>,
}

impl Filter {
    /// Parses the query values; an unknown reason, direction or kind is an error
    /// (a filter that can never match would show an empty stream).
    pub fn new(
        port: Option<String>,
        reason: Option<String>,
        direction: Option<String>,
        events: Option<String>,
    ) -> Result<Self, String> {
        let reason = reason.filter(|r| !r.is_empty());
        if let Some(r) = &reason
            && !DropReason::ALL.iter().any(|x| x.name() == r)
        {
            return Err(format!("unknown drop reason {r:?}"));
        }
        let direction = direction
            .filter(|d| !d.is_empty())
            .map(|d| d.replace('-', "_"));
        if let Some(d) = &direction
            && !DIRECTIONS.iter().any(|x| x.name() == d)
        {
            return Err(format!(
                "unknown direction {d:?} (from_vm, to_vm, from_tunnel)"
            ));
        }
        let mut kinds = Vec::new();
        for k in events.iter().flat_map(|e| e.split(',')) {
            let k = match k.trim() {
                "" => continue,
                "drop" | "drops" => "drop",
                "garp" | "garps" => "garp",
                other => return Err(format!("unknown event kind {other:?} (drops, garp)")),
            };
            kinds.push(k.to_string());
        }
        Ok(Filter {
            port: port.filter(|p| !p.is_empty()),
            reason,
            direction,
            kinds,
        })
    }

    pub fn matches(&self, e: &Event) -> bool {
        if !self.kinds.is_empty() && !self.kinds.iter().any(|k| k == e.kind) {
            return false;
        }
        if let Some(p) = &self.port
            && p != &e.port
            && p != &e.ifname
            && p != &e.ifindex.to_string()
        {
            return false;
        }
        if let Some(r) = &self.reason
            && e.reason != Some(r.as_str())
        {
            return false;
        }
        if let Some(d) = &self.direction
            && e.direction != Some(d.as_str())
        {
            return false;
        }
        true
    }
}

const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86dd;
const ETH_P_ARP: u16 = 0x0806;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88a8;

fn be16(b: &[u8], i: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(i)?, *b.get(i + 1)?]))
}

fn mac(b: &[u8], i: usize) -> Option<MacAddr> {
    Some(MacAddr(b.get(i..i + 6)?.try_into().ok()?))
}

fn v4(b: &[u8], i: usize) -> Option<IpAddr> {
    let a: [u8; 4] = b.get(i..i + 4)?.try_into().ok()?;
    Some(IpAddr::V4(Ipv4Addr::from(a)))
}

fn v6(b: &[u8], i: usize) -> Option<IpAddr> {
    let a: [u8; 16] = b.get(i..i + 16)?.try_into().ok()?;
    Some(IpAddr::V6(Ipv6Addr::from(a)))
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Decodes the headers of the first bytes of a frame (Ethernet, one or two VLAN tags,
/// IPv4/IPv6 with TCP/UDP ports or the ICMP type, ARP, the ND target).
pub fn decode(b: &[u8]) -> Headers {
    let mut h = Headers {
        dst_mac: mac(b, 0),
        src_mac: mac(b, 6),
        ..Default::default()
    };
    let mut off = 12;
    let Some(mut proto) = be16(b, off) else {
        return h;
    };
    while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        h.vlan = be16(b, off + 2).map(|t| t & 0x0fff);
        off += 4;
        match be16(b, off) {
            Some(p) => proto = p,
            None => return h,
        }
    }
    off += 2;
    h.ethertype = Some(match proto {
        ETH_P_IP => "ipv4".into(),
        ETH_P_IPV6 => "ipv6".into(),
        ETH_P_ARP => "arp".into(),
        p => format!("0x{p:04x}"),
    });
    let l4 = match proto {
        ETH_P_IP => {
            let Some(&vihl) = b.get(off) else { return h };
            h.src_ip = v4(b, off + 12);
            h.dst_ip = v4(b, off + 16);
            let Some(&p) = b.get(off + 9) else { return h };
            h.proto = Some(proto_name(p));
            // Later fragments carry no L4 header.
            let frag_off = be16(b, off + 6).unwrap_or(0) & 0x1fff;
            if frag_off != 0 {
                return h;
            }
            Some((p, off + usize::from(vihl & 0x0f) * 4))
        }
        ETH_P_IPV6 => {
            h.src_ip = v6(b, off + 8);
            h.dst_ip = v6(b, off + 24);
            let Some(&p) = b.get(off + 6) else { return h };
            h.proto = Some(proto_name(p));
            Some((p, off + 40))
        }
        ETH_P_ARP => {
            h.arp_op = be16(b, off + 6).map(|op| match op {
                1 => "request".to_string(),
                2 => "reply".to_string(),
                n => n.to_string(),
            });
            h.arp_sender_mac = mac(b, off + 8);
            h.arp_sender_ip = v4(b, off + 14);
            h.arp_target_ip = v4(b, off + 24);
            None
        }
        _ => None,
    };
    if let Some((p, at)) = l4 {
        match p {
            6 | 17 => {
                h.src_port = be16(b, at);
                h.dst_port = be16(b, at + 2);
            }
            1 => h.icmp_type = b.get(at).copied(),
            58 => {
                h.icmp_type = b.get(at).copied();
                // Neighbour solicitation / advertisement: the target follows 8 bytes in.
                if matches!(h.icmp_type, Some(135 | 136)) {
                    h.nd_target = v6(b, at + 8);
                }
            }
            _ => {}
        }
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_udp_arp_and_nd() {
        let mut f = vec![0u8; 60];
        f[0..6].copy_from_slice(&[2, 0, 0, 0, 0, 2]);
        f[6..12].copy_from_slice(&[2, 0, 0, 0, 0, 1]);
        f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        f[14] = 0x45;
        f[23] = 17;
        f[26..30].copy_from_slice(&[192, 0, 2, 99]);
        f[30..34].copy_from_slice(&[192, 0, 2, 2]);
        f[34..36].copy_from_slice(&1234u16.to_be_bytes());
        f[36..38].copy_from_slice(&53u16.to_be_bytes());
        let h = decode(&f);
        assert_eq!(h.src_mac, Some(MacAddr([2, 0, 0, 0, 0, 1])));
        assert_eq!(h.src_ip, Some("192.0.2.99".parse().unwrap()));
        assert_eq!(h.dst_ip, Some("192.0.2.2".parse().unwrap()));
        assert_eq!(h.proto.as_deref(), Some("udp"));
        assert_eq!((h.src_port, h.dst_port), (Some(1234), Some(53)));

        let mut a = vec![0u8; 42];
        a[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
        a[20..22].copy_from_slice(&1u16.to_be_bytes());
        a[22..28].copy_from_slice(&[2, 0, 0, 0, 0, 9]);
        a[28..32].copy_from_slice(&[192, 0, 2, 9]);
        a[38..42].copy_from_slice(&[192, 0, 2, 1]);
        let h = decode(&a);
        assert_eq!(h.arp_op.as_deref(), Some("request"));
        assert_eq!(h.arp_sender_ip, Some("192.0.2.9".parse().unwrap()));
        assert_eq!(h.arp_target_ip, Some("192.0.2.1".parse().unwrap()));

        let mut n = vec![0u8; 78];
        n[12..14].copy_from_slice(&0x86ddu16.to_be_bytes());
        n[20] = 58;
        n[54] = 135;
        n[62..78].copy_from_slice(&"2001:db8::5".parse::<Ipv6Addr>().unwrap().octets());
        let h = decode(&n);
        assert_eq!(h.nd_target, Some("2001:db8::5".parse().unwrap()));
        // Truncated: what is there, nothing invented.
        assert_eq!(decode(&f[..13]).ethertype, None);
    }

    #[test]
    fn filters() {
        assert!(Filter::new(None, Some("nope".into()), None, None).is_err());
        assert!(Filter::new(None, None, Some("sideways".into()), None).is_err());
        let f = Filter::new(
            Some("p1".into()),
            Some("src_ip_spoof".into()),
            Some("from-vm".into()),
            Some("drops".into()),
        )
        .unwrap();
        let mut e = Event {
            kind: "drop",
            time_unix_ms: 0,
            ifindex: 7,
            ifname: "tap1".into(),
            port: "p1".into(),
            direction: Some("from_vm"),
            reason: Some("src_ip_spoof"),
            frame_len: Some(60),
            headers: Headers::default(),
        };
        assert!(f.matches(&e));
        e.port = "p2".into();
        assert!(!f.matches(&e));
    }
}
