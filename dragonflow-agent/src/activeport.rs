//! The detection way (README: "Shared VIPs: detection way"): which port holds a shared allowed-address-pair
//! IP, recorded in etcd as `<prefix>activeport/<lswitch>/<ip>` so that every agent forwards
//! to, and answers ARP/ND with, that port only.
//!
//! - **Claims.** The datapath raises a ring-buffer event (`garp.rs` hands it here as a
//!   [`Sighting`]) for a GARP, an ARP reply or an unsolicited NA for a watched AAP IP, from
//!   a port that lists it, after port security passed. When the IP is shared (listed as a
//!   single-IP AAP by ≥ 2 ports of the network) and the network's effective mode is
//!   `detection` (`lswitch.aap_mode`, else this agent's `--aap-mode`), the agent hosting
//!   the port claims the key with one etcd transaction comparing the key's mod_revision
//!   (0: create if absent), attached to the chassis lease (a dead chassis loses its claims
//!   with its record). A sighting from the port that already holds the key, with the same
//!   MAC, on our lease, writes nothing.
//! - **Dampening.** The first claim of a key is immediate. A move that comes within the
//!   current back-off of the previous move (any agent's) waits until the back-off has run
//!   out; the back-off starts at `--claim-backoff-ms` ([`BACKOFF_MIN`], 1 s, by default)
//!   after a move, doubles each time moves keep coming within twice the back-off, up to ten
//!   times the first ([`BACKOFF_MAX`], 10 s), and falls back to the first after a quiet
//!   gap of twice the back-off (OVN's 1 s → 10 s claim back-off).
//! - **History.** Every claim and removal appends a record (who, when, why) to a bounded
//!   list under `<prefix>activeport-log/<lswitch>/<ip>` (not leased: it outlives the
//!   claim), in the same transaction, guarded by that key's mod_revision too.
//! - **Removal.** The agent that made a claim removes it (transaction comparing
//!   mod_revision) when the AAP leaves the port, the port is deleted or moves to another
//!   chassis or network, or the holder stops answering probes; a dead chassis' claims go
//!   with its lease, and the agents that host another holder of the IP record that in the
//!   history (`lease_lost`).
//! - **Liveness probes.** Every `--probe-interval-ms` the agent sends, into the tap of each
//!   local active holder, an ARP request for the IP (unicast to the holder's MAC, sender IP
//!   0.0.0.0 as an RFC 5227 probe, so the VM learns no neighbour and answers only for an
//!   address it owns) or, for IPv6, a DAD-style neighbour solicitation. The VM's answer is
//!   an ARP reply (or an unsolicited NA to all-nodes) that the datapath turns into an event
//!   like any other: any sighting from the holder counts as an answer. The ARP reply is
//!   addressed to [`PROBE_MAC`], which no port has, so after raising the event the datapath
//!   drops it as `unknown_unicast` (the event is emitted once the frame is decided, whatever
//!   the outcome). After `--probe-misses` unanswered probes in a row the entry is removed
//!   (`probe_loss`) and forwarding falls back to the broadcast way.
//! - **Restart.** A restarted agent (or a new etcd session) moves its still-valid claims to
//!   its new lease (compare mod_revision) before the old lease expires, keeping `since`;
//!   the probes then re-validate them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Client, Compare, CompareOp, KeyValue, PutOptions, Txn, TxnOp};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeMetric as _},
    metrics::MetricType,
};
use serde::{Deserialize, Serialize};
use tokio::{
    sync::{mpsc, watch},
    time,
};
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    datapath::sys,
    etcd::{paged, session::Session},
    nb::{ACTIVE_PORT_SEGMENT, AapMode, ActivePort, LPort, MacAddr},
    obs::{
        metrics::{self, Family},
        state::Shared,
    },
    reconcile::NbSnapshot,
};

/// Key segment of the claim history (`<prefix>activeport-log/<lswitch>/<ip>`).
pub const HISTORY_SEGMENT: &str = "activeport-log";
/// Records kept per key (oldest dropped first).
pub const HISTORY_MAX: usize = 32;
/// Back-off after a move (see the module doc).
/// The first back-off by default (`--claim-backoff-ms`).
pub const BACKOFF_MIN: Duration = Duration::from_millis(crate::config::DEFAULT_CLAIM_BACKOFF_MS);
/// The back-off grows up to this many times the first.
const BACKOFF_GROWTH: u32 = 10;
/// The largest back-off by default.
pub const BACKOFF_MAX: Duration =
    Duration::from_millis(crate::config::DEFAULT_CLAIM_BACKOFF_MS * BACKOFF_GROWTH as u64);
/// Source MAC of the probes (locally administered; no port may use it, see the module
/// doc: the VM's answer is addressed to it and dropped after raising its event).
pub const PROBE_MAC: MacAddr = MacAddr([0x02, 0xdf, 0x00, 0x00, 0x00, 0x01]);
/// Attempts of a claim or removal transaction that lost a race before giving up (the next
/// sighting or probe tries again).
const TXN_ATTEMPTS: usize = 3;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// Sightings queued between `garp` and this task; beyond that they are dropped (counted).
pub const SIGHTINGS_QUEUE: usize = 1024;

/// One datapath event, as `garp` hands it over.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sighting {
    /// `bpf_ktime_get_ns` when the datapath saw the frame (CLOCK_MONOTONIC).
    pub ts_ns: u64,
    pub ifindex: u32,
    /// The port of the tap ("" when the agent does not know it yet).
    pub lport: String,
    pub net_id: u32,
    pub ip: IpAddr,
    pub mac: MacAddr,
    /// `dragonflow_common::event::GARP_OP_*`.
    pub op: u16,
}

/// Why a holder changed: the `reason` of an entry and the `why` of a history record.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Why {
    /// A gratuitous ARP (op=request, spa=tpa).
    Garp,
    /// An ARP reply (op=reply) for the IP.
    ArpReply,
    /// An unsolicited IPv6 neighbour advertisement.
    UnsolicitedNa,
    /// The holder stopped answering the liveness probes.
    ProbeLoss,
    /// The AAP was removed from the holder.
    AapRemoved,
    /// The holder's port was deleted.
    PortGone,
    /// The holder's port moved to another chassis or network.
    PortMoved,
    /// The claiming chassis' lease expired (agent dead or cut from etcd).
    LeaseLost,
}

impl Why {
    pub const fn name(self) -> &'static str {
        match self {
            Why::Garp => "garp",
            Why::ArpReply => "arp_reply",
            Why::UnsolicitedNa => "unsolicited_na",
            Why::ProbeLoss => "probe_loss",
            Why::AapRemoved => "aap_removed",
            Why::PortGone => "port_gone",
            Why::PortMoved => "port_moved",
            Why::LeaseLost => "lease_lost",
        }
    }

    /// The claim reason of a datapath event.
    pub fn of_op(op: u16) -> Why {
        use dragonflow_common::event::{GARP_OP_ARP_REPLY, GARP_OP_ND_NA};
        match op {
            GARP_OP_ARP_REPLY => Why::ArpReply,
            GARP_OP_ND_NA => Why::UnsolicitedNa,
            _ => Why::Garp,
        }
    }
}

/// What happened to the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Claimed,
    Released,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Unix time, ms.
    pub at_ms: u64,
    pub event: Event,
    /// The holder claimed or released.
    pub port: String,
    pub mac: MacAddr,
    /// The holder's chassis.
    pub chassis: String,
    pub why: Why,
    /// The agent (chassis) that wrote the record.
    pub by: String,
}

/// Appends `r`, keeping the last [`HISTORY_MAX`] records.
pub fn push_history(h: &mut Vec<HistoryRecord>, r: HistoryRecord) {
    h.push(r);
    if h.len() > HISTORY_MAX {
        let extra = h.len() - HISTORY_MAX;
        h.drain(..extra);
    }
}

/// `<prefix>activeport/<lswitch>/<ip>`.
pub fn active_key(prefix: &str, lswitch: &str, ip: IpAddr) -> String {
    format!("{prefix}{ACTIVE_PORT_SEGMENT}/{lswitch}/{ip}")
}

/// `<prefix>activeport-log/<lswitch>/<ip>`.
pub fn history_key(prefix: &str, lswitch: &str, ip: IpAddr) -> String {
    format!("{prefix}{HISTORY_SEGMENT}/{lswitch}/{ip}")
}

/// `<prefix>activeport/`, the range every claim lives in.
pub fn active_prefix(prefix: &str) -> String {
    format!("{prefix}{ACTIVE_PORT_SEGMENT}/")
}

/// Splits `<prefix>activeport/<lswitch>/<ip>`: `None` for keys of other kinds, `Err` for a
/// malformed activeport key.
pub fn parse_active_key(prefix: &str, key: &str) -> Option<Result<(String, IpAddr), String>> {
    let rest = key.strip_prefix(prefix)?;
    let rest = rest.strip_prefix(ACTIVE_PORT_SEGMENT)?.strip_prefix('/')?;
    // lswitch ids never contain '/', IPs never do either.
    Some(match rest.split_once('/') {
        Some((ls, ip)) if !ls.is_empty() => ip
            .parse::<IpAddr>()
            .map(|ip| (ls.to_string(), ip))
            .map_err(|_| format!("key {key}: {ip:?} is not an IP address")),
        _ => Err(format!("key {key}: expected activeport/<lswitch>/<ip>")),
    })
}

/// Decodes one `activeport/` record: the JSON must be an [`ActivePort`] naming the same
/// lswitch and IP as its key, a non-empty port and chassis, a unicast MAC.
pub fn decode_active(lswitch: &str, ip: IpAddr, value: &[u8]) -> Result<ActivePort, String> {
    let a: ActivePort =
        serde_json::from_slice(value).map_err(|e| format!("malformed JSON: {e}"))?;
    if a.lswitch != lswitch || a.ip != ip {
        return Err(format!(
            "the record names {}/{}, not the lswitch and IP of its key",
            a.lswitch, a.ip
        ));
    }
    if a.port.is_empty() || a.chassis.is_empty() {
        return Err("empty port or chassis".into());
    }
    if a.mac.is_multicast() || a.mac.is_zero() {
        return Err(format!("{} is not a unicast MAC", a.mac));
    }
    Ok(a)
}

/// The mode that applies to `lswitch` on this agent: its override, else ours.
pub fn effective_mode(nb: &NbSnapshot, lswitch: &str, own: AapMode) -> AapMode {
    nb.lswitches
        .get(lswitch)
        .and_then(|l| l.aap_mode)
        .unwrap_or(own)
}

/// Whether `port` lists `ip` as a single-IP AAP with `mac`.
pub fn lists(port: &LPort, ip: IpAddr, mac: MacAddr) -> bool {
    port.allowed_address_pairs
        .iter()
        .any(|a| a.ip_address.is_host() && a.ip_address.addr == ip && port.aap_mac(a) == mac)
}

/// The ports of `lswitch` listing `ip` as a single-IP AAP (any MAC), by id.
pub fn holders<'a>(nb: &'a NbSnapshot, lswitch: &str, ip: IpAddr) -> Vec<&'a LPort> {
    nb.lports
        .values()
        .map(|p| &**p)
        .filter(|p| p.lswitch == lswitch)
        .filter(|p| {
            p.allowed_address_pairs
                .iter()
                .any(|a| a.ip_address.is_host() && a.ip_address.addr == ip)
        })
        .collect()
}

/// What a sighting means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// From the port that holds the key with that MAC: proof of life (probe answered).
    Holder { lswitch: String },
    /// Claim the key for the port.
    Claim { lswitch: String, why: Why },
    /// Nothing to do, and why (for the debug log).
    Ignore(&'static str),
}

/// Judges a sighting against the NB snapshot (pure; see the module doc).
pub fn judge(me: &str, own_mode: AapMode, nb: &NbSnapshot, s: &Sighting) -> Verdict {
    let Some(port) = nb.lports.get(&s.lport) else {
        return Verdict::Ignore("unknown port");
    };
    if port.chassis.as_deref() != Some(me) {
        return Verdict::Ignore("port not bound to this chassis");
    }
    let Some(ls) = nb.lswitches.get(&port.lswitch) else {
        return Verdict::Ignore("unknown lswitch");
    };
    if ls.segmentation_id != s.net_id {
        return Verdict::Ignore("event from another network than the port's");
    }
    if !lists(port, s.ip, s.mac) {
        return Verdict::Ignore("not a single-IP AAP of the port with that MAC");
    }
    let lswitch = port.lswitch.clone();
    if let Some(a) = nb.active_ports.get(&(lswitch.clone(), s.ip))
        && a.port == port.id
        && a.mac == s.mac
    {
        return Verdict::Holder { lswitch };
    }
    if effective_mode(nb, &lswitch, own_mode) != AapMode::Detection {
        return Verdict::Ignore("broadcast way on this network");
    }
    if holders(nb, &lswitch, s.ip).len() < 2 {
        return Verdict::Ignore("not shared (one port lists it)");
    }
    Verdict::Claim {
        lswitch,
        why: Why::of_op(s.op),
    }
}

/// Why a local claim must go, if it must (pure).
pub fn stale(me: &str, nb: &NbSnapshot, a: &ActivePort) -> Option<Why> {
    let Some(port) = nb.lports.get(&a.port) else {
        return Some(Why::PortGone);
    };
    if port.chassis.as_deref() != Some(me) || port.lswitch != a.lswitch {
        return Some(Why::PortMoved);
    }
    if !lists(port, a.ip, a.mac) {
        return Some(Why::AapRemoved);
    }
    None
}

/// Flap dampening of one key (see the module doc).
#[derive(Clone, Debug)]
pub struct Damper {
    /// The first back-off (`--claim-backoff-ms`).
    first: Duration,
    backoff: Duration,
    last_move: Option<Instant>,
    /// The holder last seen (port, since_ms): a repeat of it is not a move.
    holder: Option<(String, u64)>,
}

impl Default for Damper {
    fn default() -> Self {
        Damper::new(BACKOFF_MIN)
    }
}

impl Damper {
    pub fn new(first: Duration) -> Self {
        Damper {
            first,
            backoff: Duration::ZERO,
            last_move: None,
            holder: None,
        }
    }

    /// When the next move may happen (`None`: now).
    pub fn ready_at(&self, now: Instant) -> Option<Instant> {
        let at = self.last_move? + self.backoff;
        (at > now).then_some(at)
    }

    /// Records the holder seen in etcd (or just written); returns whether it is a move.
    pub fn observe(&mut self, port: &str, since_ms: u64, now: Instant) -> bool {
        if self
            .holder
            .as_ref()
            .is_some_and(|(p, s)| p == port && *s == since_ms)
        {
            return false;
        }
        self.holder = Some((port.to_string(), since_ms));
        self.backoff = match self.last_move {
            Some(t) if now.saturating_duration_since(t) < self.backoff * 2 => {
                (self.backoff * 2).min(self.first * BACKOFF_GROWTH)
            }
            _ => self.first,
        };
        self.last_move = Some(now);
        true
    }

    /// The key has no holder any more (a later claim of the same holder is a move).
    pub fn cleared(&mut self) {
        self.holder = None;
    }

    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// Whether forgetting this key would change a later decision: it has a holder, or its
    /// last move is recent enough to defer or to grow the next back-off.
    pub fn remembers(&self, now: Instant) -> bool {
        self.holder.is_some()
            || self
                .last_move
                .is_some_and(|t| now.saturating_duration_since(t) < self.backoff * 2)
    }
}

// ---------------------------------------------------------------------------------------
// Metrics.

/// Upper bounds (seconds) of the latency histograms.
const BUCKETS: [f64; 11] = [
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// A latency histogram with [`BUCKETS`].
#[derive(Debug)]
pub struct Histogram(prometheus_client::metrics::histogram::Histogram);

impl Default for Histogram {
    fn default() -> Self {
        Histogram(prometheus_client::metrics::histogram::Histogram::new(
            BUCKETS,
        ))
    }
}

impl Histogram {
    pub fn observe(&self, d: Duration) {
        self.0.observe(d.as_secs_f64());
    }

    fn encode(&self, enc: &mut DescriptorEncoder, name: &str, help: &str) -> fmt::Result {
        self.0
            .encode(enc.encode_descriptor(name, help, None, MetricType::Histogram)?)
    }
}

/// Counters of the detection way (`dragonflow_activeport_*`).
#[derive(Debug, Default)]
pub struct Stats {
    /// Claims written (created or moved).
    pub claims: AtomicU64,
    /// Sightings from the holder itself: nothing written.
    pub claims_noop: AtomicU64,
    /// Claim or removal transactions that lost a compare (someone else wrote first).
    pub conflicts: AtomicU64,
    /// Moves deferred by the flap dampening.
    pub dampened: AtomicU64,
    /// Claims moved to a new lease (agent restart, new etcd session).
    pub reattached: AtomicU64,
    /// Entries removed by this agent, by why.
    pub removed: [AtomicU64; 8],
    pub probes_sent: AtomicU64,
    pub probes_answered: AtomicU64,
    pub probes_expired: AtomicU64,
    /// Probe frames the kernel refused.
    pub probe_errors: AtomicU64,
    /// Failed etcd calls (claims, removals, history).
    pub etcd_errors: AtomicU64,
    /// Sightings lost because this task was behind.
    pub sightings_dropped: AtomicU64,
    /// Entries in etcd, and those held by local ports.
    pub entries: AtomicU64,
    pub local_entries: AtomicU64,
    /// Datapath event → claim committed in etcd.
    pub claim_latency: Histogram,
    /// The etcd round trips of a claim (read + write transaction).
    pub claim_etcd: Histogram,
}

const ALL_WHY: [Why; 8] = [
    Why::Garp,
    Why::ArpReply,
    Why::UnsolicitedNa,
    Why::ProbeLoss,
    Why::AapRemoved,
    Why::PortGone,
    Why::PortMoved,
    Why::LeaseLost,
];

impl Stats {
    fn removed(&self, why: Why) {
        if let Some(i) = ALL_WHY.iter().position(|w| *w == why) {
            self.removed[i].fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Read at scrape time (registered by `main.rs` in the `/metrics` registry).
impl Collector for Stats {
    fn encode(&self, mut enc: DescriptorEncoder) -> fmt::Result {
        let v = |a: &AtomicU64| a.load(Ordering::Relaxed);
        for (name, help, a) in [
            (
                "dragonflow_activeport_claims_total",
                "Active-port claims written to etcd (created or moved).",
                &self.claims,
            ),
            (
                "dragonflow_activeport_claims_noop_total",
                "Sightings from the port already holding the IP (nothing written).",
                &self.claims_noop,
            ),
            (
                "dragonflow_activeport_claim_conflicts_total",
                "Claim/removal transactions that lost the mod_revision compare to another writer.",
                &self.conflicts,
            ),
            (
                "dragonflow_activeport_dampened_total",
                "Moves deferred by flap dampening.",
                &self.dampened,
            ),
            (
                "dragonflow_activeport_reattached_total",
                "Claims moved to this agent's new lease (restart, new etcd session).",
                &self.reattached,
            ),
        ] {
            metrics::single(&mut enc, MetricType::Counter, name, help, v(a))?;
        }
        let mut f = Family::counter(
            &mut enc,
            "dragonflow_activeport_removed_total",
            "Active-port entries removed by this agent, by reason (lease_lost: another chassis' claim gone with its lease, recorded in the history by this agent).",
        )?;
        for (w, a) in ALL_WHY.iter().zip(&self.removed) {
            if matches!(w, Why::Garp | Why::ArpReply | Why::UnsolicitedNa) {
                continue;
            }
            f.sample(&[("why", w.name())], v(a))?;
        }
        let mut f = Family::counter(
            &mut enc,
            "dragonflow_activeport_probes_total",
            "Liveness probes of local active holders.",
        )?;
        for (outcome, a) in [
            ("sent", &self.probes_sent),
            ("answered", &self.probes_answered),
            ("expired", &self.probes_expired),
            ("send_error", &self.probe_errors),
        ] {
            f.sample(&[("outcome", outcome)], v(a))?;
        }
        for (kind, name, help, a) in [
            (
                MetricType::Counter,
                "dragonflow_activeport_etcd_errors_total",
                "Failed etcd calls of the detection way (retried by the next sighting or probe).",
                &self.etcd_errors,
            ),
            (
                MetricType::Counter,
                "dragonflow_activeport_sightings_dropped_total",
                "Datapath events the detection task was too busy to take.",
                &self.sightings_dropped,
            ),
            (
                MetricType::Gauge,
                "dragonflow_activeport_entries",
                "activeport/ entries in etcd (all networks).",
                &self.entries,
            ),
            (
                MetricType::Gauge,
                "dragonflow_activeport_local_entries",
                "activeport/ entries held by ports of this chassis (probed).",
                &self.local_entries,
            ),
        ] {
            metrics::single(&mut enc, kind, name, help, v(a))?;
        }
        self.claim_latency.encode(
            &mut enc,
            "dragonflow_activeport_claim_seconds",
            "From the datapath seeing the GARP/ARP reply/NA to the claim committed in etcd.",
        )?;
        self.claim_etcd.encode(
            &mut enc,
            "dragonflow_activeport_claim_etcd_seconds",
            "etcd round trips of one claim (read transaction + compare-and-put transaction).",
        )
    }
}

// ---------------------------------------------------------------------------------------
// Probe frames and their socket.

/// An ARP request for `ip`, unicast to `dst` from [`PROBE_MAC`] with sender IP 0.0.0.0
/// (RFC 5227 probe), padded to the Ethernet minimum.
pub fn arp_probe(dst: MacAddr, ip: Ipv4Addr) -> Vec<u8> {
    let mut f = Vec::with_capacity(60);
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&PROBE_MAC.0);
    f.extend_from_slice(&[0x08, 0x06]); // ARP
    f.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, 1]); // Ethernet/IPv4, request
    f.extend_from_slice(&PROBE_MAC.0); // sha
    f.extend_from_slice(&[0, 0, 0, 0]); // spa: a probe
    f.extend_from_slice(&[0; 6]); // tha
    f.extend_from_slice(&ip.octets()); // tpa
    f.resize(60, 0);
    f
}

/// A DAD-style neighbour solicitation for `ip` (source `::`, no options, to the
/// solicited-node group), unicast to `dst` at the Ethernet layer. A node owning `ip`
/// defends it with an NA to all-nodes without the solicited flag: the datapath's
/// "unsolicited NA" event.
pub fn ns_probe(dst: MacAddr, ip: Ipv6Addr) -> Vec<u8> {
    let t = ip.octets();
    let group = Ipv6Addr::new(
        0xff02,
        0,
        0,
        0,
        0,
        1,
        0xff00 | u16::from(t[13]),
        u16::from_be_bytes([t[14], t[15]]),
    );
    let mut icmp = vec![135u8, 0, 0, 0, 0, 0, 0, 0];
    icmp.extend_from_slice(&t);
    // Checksum over the pseudo-header (src ::, dst group, length, next header 58).
    let mut sum: u32 = 0;
    let mut add = |b: &[u8]| {
        for c in b.chunks(2) {
            sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
        }
    };
    add(&group.octets());
    add(&(icmp.len() as u32).to_be_bytes());
    add(&[0, 0, 0, 58]);
    add(&icmp);
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let csum = !(sum as u16);
    icmp[2..4].copy_from_slice(&csum.to_be_bytes());

    let mut f = Vec::with_capacity(14 + 40 + icmp.len());
    f.extend_from_slice(&dst.0);
    f.extend_from_slice(&PROBE_MAC.0);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(icmp.len() as u16).to_be_bytes());
    f.extend_from_slice(&[58, 255]); // ICMPv6, hop limit 255 (RFC 4861)
    f.extend_from_slice(&[0; 16]);
    f.extend_from_slice(&group.octets());
    f.extend_from_slice(&icmp);
    f
}

/// A send-only AF_PACKET socket: frames written with it leave a tap toward its VM.
pub struct Prober {
    fd: OwnedFd,
}

impl Prober {
    pub fn new() -> io::Result<Self> {
        // Protocol 0: the socket receives nothing.
        // SAFETY: plain syscall; the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh fd nobody else owns.
        Ok(Prober {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn send(&self, ifindex: u32, frame: &[u8]) -> io::Result<()> {
        // SAFETY: all-zero is a valid sockaddr_ll.
        let mut sa: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sa.sll_family = libc::AF_PACKET as u16;
        sa.sll_ifindex = ifindex as i32;
        sa.sll_halen = 6;
        sa.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sa as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// etcd.

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error("etcd {what}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {0}: timed out after {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("no etcd session (claims resume when the agent is connected again)")]
    NoSession,
}

async fn call<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ActiveError> {
    match time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|source| ActiveError::Etcd { what, source }),
        Err(_) => Err(ActiveError::Timeout(what)),
    }
}

/// The claim and the history of one key, as read in one transaction.
struct Current {
    entry: Option<(ActivePort, KeyValue)>,
    /// mod_revision of the claim key (0: absent).
    entry_rev: i64,
    history: Vec<HistoryRecord>,
    history_rev: i64,
}

async fn read(client: &mut Client, key: &Key, ak: &str, hk: &str) -> Result<Current, ActiveError> {
    let resp = call(
        "read activeport",
        client.txn(Txn::new().and_then([TxnOp::get(ak, None), TxnOp::get(hk, None)])),
    )
    .await?;
    let mut kvs = resp.op_responses().into_iter().map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    let (a, h) = (kvs.next().flatten(), kvs.next().flatten());
    // An undecodable record is replaced like an absent one, but under its revision.
    let entry_rev = a.as_ref().map_or(0, |kv| kv.mod_revision());
    let entry = a.and_then(|kv| {
        decode_active(&key.0, key.1, kv.value())
            .ok()
            .map(|e| (e, kv))
    });
    Ok(Current {
        entry,
        entry_rev,
        history: h
            .as_ref()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            .unwrap_or_default(),
        history_rev: h.as_ref().map_or(0, |kv| kv.mod_revision()),
    })
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

// ---------------------------------------------------------------------------------------
// The task.

type Key = (String, IpAddr);

/// A claim deferred by the dampening.
#[derive(Clone, Debug)]
struct Pending {
    at: Instant,
    sighting: Sighting,
}

/// Channels the task listens to.
pub struct Inputs {
    pub sightings: mpsc::Receiver<Sighting>,
    /// The controller's NB snapshot after each change (taps already reconciled).
    pub snapshots: watch::Receiver<Option<Arc<NbSnapshot>>>,
    /// `sync`'s etcd session.
    pub sessions: watch::Receiver<Option<Session>>,
    /// This task's counters (also bumped by the GARP reader for what it drops).
    pub stats: Arc<Stats>,
}

struct Detector {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    nb: Arc<NbSnapshot>,
    have_nb: bool,
    session: Option<Session>,
    /// A new session (lease) whose claims have not been moved to it yet.
    reattach: bool,
    damp: BTreeMap<Key, Damper>,
    pending: BTreeMap<Key, Pending>,
    /// Unanswered probes per local active key.
    probes: BTreeMap<Key, u32>,
    prober: Option<Prober>,
}

/// Runs until the process ends.
pub async fn run(cfg: Arc<Config>, shared: Arc<Shared>, mut inputs: Inputs) {
    let prober = if cfg.probe_interval_ms == 0 {
        info!("liveness probes off (--probe-interval-ms 0)");
        None
    } else {
        match Prober::new() {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(
                    "cannot open an AF_PACKET socket for liveness probes ({e}; needs CAP_NET_RAW): \
                     active ports are not probed, only GARPs, AAP changes and leases move them"
                );
                None
            }
        }
    };
    let mut d = Detector {
        cfg: cfg.clone(),
        shared,
        stats: inputs.stats.clone(),
        nb: Arc::new(NbSnapshot::default()),
        have_nb: false,
        session: None,
        reattach: false,
        damp: BTreeMap::new(),
        pending: BTreeMap::new(),
        probes: BTreeMap::new(),
        prober,
    };
    let period = Duration::from_millis(cfg.probe_interval_ms.max(1));
    let mut tick = time::interval(period);
    tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
    let far = || time::Instant::now() + Duration::from_secs(3600);
    loop {
        let next = d
            .pending
            .values()
            .map(|p| time::Instant::from_std(p.at))
            .min()
            .unwrap_or_else(far);
        tokio::select! {
            s = inputs.sightings.recv() => match s {
                Some(s) => d.on_sighting(s).await,
                None => return,
            },
            r = inputs.snapshots.changed() => {
                if r.is_err() {
                    return;
                }
                let snap = inputs.snapshots.borrow_and_update().clone();
                if let Some(snap) = snap {
                    d.on_snapshot(snap).await;
                }
            }
            r = inputs.sessions.changed() => {
                if r.is_err() {
                    return;
                }
                d.session = inputs.sessions.borrow_and_update().clone();
                d.reattach = d.session.is_some();
            }
            _ = tick.tick(), if d.prober.is_some() => d.probe().await,
            _ = time::sleep_until(next) => d.retry_pending().await,
        }
        if d.reattach && d.have_nb && d.session.is_some() {
            d.reattach = false;
            if let Err(e) = d.reattach_claims().await {
                warn!(
                    "moving claims to the new lease: {}",
                    crate::report::Chain(&e)
                );
                d.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                d.reattach = true;
            }
        }
    }
}

impl Detector {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn me(&self) -> &str {
        &self.cfg.chassis
    }

    async fn on_sighting(&mut self, s: Sighting) {
        if !self.have_nb {
            return;
        }
        match judge(self.me(), self.cfg.aap_mode, &self.nb, &s) {
            Verdict::Ignore(why) => {
                debug!(lport = %s.lport, ip = %s.ip, "sighting ignored: {why}");
            }
            Verdict::Holder { lswitch } => {
                let key = (lswitch, s.ip);
                if let Some(n) = self.probes.get_mut(&key)
                    && *n > 0
                {
                    *n = 0;
                    self.stats().probes_answered.fetch_add(1, Ordering::Relaxed);
                }
                // A move deferred for another port stays deferred, not dropped: an answer
                // to a probe is no announcement, and the dampening only delays moves.
                self.stats().claims_noop.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Claim { lswitch, why } => {
                let key = (lswitch, s.ip);
                let now = Instant::now();
                match self
                    .damp
                    .entry(key.clone())
                    .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                    .ready_at(now)
                {
                    None => self.claim(&key, &s, why).await,
                    Some(at) => {
                        if self
                            .pending
                            .insert(
                                key.clone(),
                                Pending {
                                    at,
                                    sighting: s.clone(),
                                },
                            )
                            .is_none()
                        {
                            self.stats().dampened.fetch_add(1, Ordering::Relaxed);
                            info!(
                                lswitch = %key.0,
                                ip = %key.1,
                                lport = %s.lport,
                                wait_ms = at.saturating_duration_since(now).as_millis() as u64,
                                "claim dampened (the IP moved recently)"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Claims deferred by the dampening whose time has come, re-judged against the
    /// current snapshot.
    async fn retry_pending(&mut self) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| p.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            match judge(self.me(), self.cfg.aap_mode, &self.nb, &p.sighting) {
                Verdict::Claim { lswitch, why } if lswitch == key.0 => {
                    match self
                        .damp
                        .entry(key.clone())
                        .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                        .ready_at(now)
                    {
                        None => self.claim(&key, &p.sighting, why).await,
                        Some(at) => {
                            self.pending.insert(key, Pending { at, ..p });
                        }
                    }
                }
                v => debug!(lswitch = %key.0, ip = %key.1, "deferred claim dropped: {v:?}"),
            }
        }
    }

    /// Claims `key` for the sighting's port (compare-and-put with the history).
    async fn claim(&mut self, key: &Key, s: &Sighting, why: Why) {
        let Some(sess) = self.session.clone() else {
            warn!(lswitch = %key.0, ip = %key.1, lport = %s.lport, "cannot claim: {}", ActiveError::NoSession);
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        for _ in 0..TXN_ATTEMPTS {
            let t0 = Instant::now();
            let cur = match read(&mut client, key, &ak, &hk).await {
                Ok(c) => c,
                Err(e) => return self.etcd_failed("claim", key, &e),
            };
            if let Some((e, kv)) = &cur.entry
                && e.port == s.lport
                && e.mac == s.mac
                && e.chassis == self.cfg.chassis
                && kv.lease() == sess.lease
            {
                self.stats().claims_noop.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if let Some((e, _)) = &cur.entry
                && e.port != s.lport
            {
                // A holder our snapshot did not know yet: someone moved it just now, a
                // move that counts for the dampening (a known holder changes nothing, and
                // the caller has checked the back-off against it).
                let now = Instant::now();
                let damp = self
                    .damp
                    .entry(key.clone())
                    .or_insert_with(|| Damper::new(self.cfg.claim_backoff));
                if damp.observe(&e.port, e.since_ms, now)
                    && let Some(at) = damp.ready_at(now)
                {
                    self.stats().dampened.fetch_add(1, Ordering::Relaxed);
                    self.pending.insert(
                        key.clone(),
                        Pending {
                            at,
                            sighting: s.clone(),
                        },
                    );
                    return;
                }
            }
            let entry = ActivePort {
                lswitch: key.0.clone(),
                ip: key.1,
                port: s.lport.clone(),
                mac: s.mac,
                chassis: self.cfg.chassis.clone(),
                since_ms: now_ms(),
                reason: why.name().to_string(),
            };
            let mut history = cur.history;
            push_history(
                &mut history,
                HistoryRecord {
                    at_ms: entry.since_ms,
                    event: Event::Claimed,
                    port: entry.port.clone(),
                    mac: entry.mac,
                    chassis: entry.chassis.clone(),
                    why,
                    by: self.cfg.chassis.clone(),
                },
            );
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(ak.as_str(), CompareOp::Equal, cur.entry_rev),
                    Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
                ])
                .and_then([
                    TxnOp::put(
                        ak.as_str(),
                        serde_json::to_vec(&entry).expect("serialisable"),
                        Some(PutOptions::new().with_lease(sess.lease)),
                    ),
                    TxnOp::put(
                        hk.as_str(),
                        serde_json::to_vec(&history).expect("serialisable"),
                        None,
                    ),
                ]);
            let resp = match call("claim txn", client.txn(txn)).await {
                Ok(r) => r,
                Err(e) => return self.etcd_failed("claim", key, &e),
            };
            let etcd = t0.elapsed();
            if !resp.succeeded() {
                self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
                debug!(lswitch = %key.0, ip = %key.1, "claim lost a race; re-reading");
                continue;
            }
            let latency = Duration::from_nanos(sys::monotonic_ns().saturating_sub(s.ts_ns));
            let st = self.stats();
            st.claims.fetch_add(1, Ordering::Relaxed);
            st.claim_etcd.observe(etcd);
            st.claim_latency.observe(latency);
            self.damp
                .entry(key.clone())
                .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                .observe(&entry.port, entry.since_ms, Instant::now());
            self.probes.remove(key);
            info!(
                lswitch = %key.0,
                ip = %key.1,
                lport = %entry.port,
                mac = %entry.mac,
                why = why.name(),
                previous = cur.entry.as_ref().map_or("-", |(e, _)| e.port.as_str()),
                etcd_ms = format_args!("{:.2}", etcd.as_secs_f64() * 1e3),
                since_event_ms = format_args!("{:.2}", latency.as_secs_f64() * 1e3),
                "claimed active port"
            );
            return;
        }
        warn!(lswitch = %key.0, ip = %key.1, "claim gave up after {TXN_ATTEMPTS} lost races");
    }

    fn etcd_failed(&self, what: &str, key: &Key, e: &ActiveError) {
        self.stats().etcd_errors.fetch_add(1, Ordering::Relaxed);
        warn!(lswitch = %key.0, ip = %key.1, "{what}: {}", crate::report::Chain(e));
    }

    /// Removes `key` if `port` still holds it, recording why.
    async fn release(&mut self, key: &Key, port: &str, why: Why) {
        let Some(sess) = self.session.clone() else {
            debug!(lswitch = %key.0, ip = %key.1, "cannot release now: no etcd session");
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        for _ in 0..TXN_ATTEMPTS {
            let cur = match read(&mut client, key, &ak, &hk).await {
                Ok(c) => c,
                Err(e) => return self.etcd_failed("release", key, &e),
            };
            let Some((e, _)) = &cur.entry else { return };
            if e.port != port {
                return;
            }
            let mut history = cur.history;
            push_history(
                &mut history,
                HistoryRecord {
                    at_ms: now_ms(),
                    event: Event::Released,
                    port: e.port.clone(),
                    mac: e.mac,
                    chassis: e.chassis.clone(),
                    why,
                    by: self.cfg.chassis.clone(),
                },
            );
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(ak.as_str(), CompareOp::Equal, cur.entry_rev),
                    Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
                ])
                .and_then([
                    TxnOp::delete(ak.as_str(), None),
                    TxnOp::put(
                        hk.as_str(),
                        serde_json::to_vec(&history).expect("serialisable"),
                        None,
                    ),
                ]);
            match call("release txn", client.txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    self.stats().removed(why);
                    if why == Why::ProbeLoss {
                        self.stats().probes_expired.fetch_add(1, Ordering::Relaxed);
                    }
                    self.probes.remove(key);
                    if let Some(d) = self.damp.get_mut(key) {
                        d.cleared();
                    }
                    info!(lswitch = %key.0, ip = %key.1, lport = port, why = why.name(), "removed active port (broadcast way until the next claim)");
                    return;
                }
                Ok(_) => {
                    self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return self.etcd_failed("release", key, &e),
            }
        }
    }

    /// Appends `lease_lost` to the history of a claim that vanished without a removal
    /// record (its chassis' lease expired).
    async fn record_lease_lost(&mut self, key: &Key, gone: &ActivePort) {
        let Some(sess) = self.session.clone() else {
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        let cur = match read(&mut client, key, &ak, &hk).await {
            Ok(c) => c,
            Err(e) => return self.etcd_failed("history", key, &e),
        };
        if cur.entry_rev != 0
            || !cur.history.last().is_some_and(|r| {
                r.event == Event::Claimed && r.port == gone.port && r.chassis == gone.chassis
            })
        {
            return; // re-claimed, or removed with a record already
        }
        let mut history = cur.history;
        push_history(
            &mut history,
            HistoryRecord {
                at_ms: now_ms(),
                event: Event::Released,
                port: gone.port.clone(),
                mac: gone.mac,
                chassis: gone.chassis.clone(),
                why: Why::LeaseLost,
                by: self.cfg.chassis.clone(),
            },
        );
        let txn = Txn::new()
            .when([
                Compare::version(ak.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
            ])
            .and_then([TxnOp::put(
                hk.as_str(),
                serde_json::to_vec(&history).expect("serialisable"),
                None,
            )]);
        match call("history txn", client.txn(txn)).await {
            Ok(r) if r.succeeded() => {
                self.stats().removed(Why::LeaseLost);
                info!(lswitch = %key.0, ip = %key.1, lport = %gone.port, chassis = %gone.chassis, "active port lost with its chassis' lease");
            }
            // Another agent recorded it first, or it was claimed again: nothing to add.
            Ok(_) => {}
            Err(e) => self.etcd_failed("history", key, &e),
        }
    }

    async fn on_snapshot(&mut self, snap: Arc<NbSnapshot>) {
        let old = std::mem::replace(&mut self.nb, snap);
        let first = !self.have_nb;
        self.have_nb = true;
        let now = Instant::now();
        // Moves seen in etcd feed the dampening (ours were recorded when written).
        for (key, a) in &self.nb.active_ports {
            self.damp
                .entry(key.clone())
                .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                .observe(&a.port, a.since_ms, now);
        }
        let me = self.cfg.chassis.clone();
        let mut lost = Vec::new();
        if !first {
            for (key, a) in &old.active_ports {
                if self.nb.active_ports.contains_key(key) {
                    continue;
                }
                if let Some(d) = self.damp.get_mut(key) {
                    d.cleared();
                }
                // Those who may take over record the loss of a lease; so does the loser.
                let candidate = holders(&self.nb, &key.0, key.1)
                    .iter()
                    .any(|p| p.chassis.as_deref() == Some(me.as_str()));
                if candidate || a.chassis == me {
                    lost.push((key.clone(), a.clone()));
                }
            }
        }
        self.damp
            .retain(|k, d| d.remembers(now) || self.pending.contains_key(k));
        for (key, a) in lost {
            self.record_lease_lost(&key, &a).await;
        }
        self.release_stale().await;
        self.count_entries();
    }

    /// Removes local claims whose port no longer qualifies.
    async fn release_stale(&mut self) {
        let me = self.cfg.chassis.clone();
        let stale: Vec<(Key, String, Why)> = self
            .nb
            .active_ports
            .iter()
            .filter(|(_, a)| a.chassis == me)
            .filter_map(|(k, a)| stale(&me, &self.nb, a).map(|w| (k.clone(), a.port.clone(), w)))
            .collect();
        for (key, port, why) in stale {
            self.release(&key, &port, why).await;
        }
    }

    fn count_entries(&self) {
        let me = self.me();
        self.stats()
            .entries
            .store(self.nb.active_ports.len() as u64, Ordering::Relaxed);
        self.stats().local_entries.store(
            self.nb
                .active_ports
                .values()
                .filter(|a| a.chassis == me)
                .count() as u64,
            Ordering::Relaxed,
        );
    }

    /// One probe round (see the module doc); also retries removals that failed.
    async fn probe(&mut self) {
        if !self.have_nb {
            return;
        }
        self.release_stale().await;
        let me = self.cfg.chassis.clone();
        let taps = self.shared.taps.by_lport();
        let local: Vec<(Key, ActivePort)> = self
            .nb
            .active_ports
            .iter()
            .filter(|(_, a)| a.chassis == me && stale(&me, &self.nb, a).is_none())
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        let keep: BTreeSet<Key> = local.iter().map(|(k, _)| k.clone()).collect();
        self.probes.retain(|k, _| keep.contains(k));
        let misses = self.cfg.probe_misses.max(1);
        for (key, a) in local {
            let n = self.probes.entry(key.clone()).or_insert(0);
            if *n >= misses {
                info!(lswitch = %key.0, ip = %key.1, lport = %a.port, misses, "active port does not answer probes");
                self.release(&key, &a.port, Why::ProbeLoss).await;
                continue;
            }
            *n += 1;
            // A holder whose tap is gone (VM stopped, port still bound) cannot answer:
            // the probe counts as sent and unanswered.
            let Some(&ifindex) = taps.get(&a.port) else {
                continue;
            };
            let frame = match a.ip {
                IpAddr::V4(ip) => arp_probe(a.mac, ip),
                IpAddr::V6(ip) => ns_probe(a.mac, ip),
            };
            let Some(prober) = &self.prober else { return };
            match prober.send(ifindex, &frame) {
                Ok(()) => {
                    self.stats.probes_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.probe_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(lport = %a.port, ifindex, "probe not sent: {e}");
                }
            }
        }
    }

    /// Moves this chassis' valid claims to the current lease (keeping `since`), and
    /// removes the invalid ones.
    async fn reattach_claims(&mut self) -> Result<(), ActiveError> {
        let Some(sess) = self.session.clone() else {
            return Err(ActiveError::NoSession);
        };
        let mut client = sess.client.clone();
        let range = call(
            "range get activeport",
            paged::get_prefix(&mut paged::kv(&client), &active_prefix(&self.cfg.prefix)),
        )
        .await?;
        let me = self.cfg.chassis.clone();
        for kv in &range.kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Ok((ls, ip))) = parse_active_key(&self.cfg.prefix, &key) else {
                continue;
            };
            let Ok(a) = decode_active(&ls, ip, kv.value()) else {
                continue;
            };
            if a.chassis != me || kv.lease() == sess.lease {
                continue;
            }
            if let Some(why) = stale(&me, &self.nb, &a) {
                self.release(&(ls, ip), &a.port, why).await;
                continue;
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    kv.value().to_vec(),
                    Some(PutOptions::new().with_lease(sess.lease)),
                )]);
            let r = call("reattach txn", client.txn(txn)).await?;
            if r.succeeded() {
                self.stats().reattached.fetch_add(1, Ordering::Relaxed);
                info!(lswitch = %ls, ip = %ip, lport = %a.port, "claim moved to this agent's lease (kept, probes re-validate it)");
            } else {
                self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::{AllowedAddressPair, LSwitch};

    const VIP: &str = "192.0.2.100";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    fn port(id: &str, chassis: &str, m: &str, aaps: &[&str]) -> LPort {
        LPort {
            id: id.into(),
            lswitch: "net1".into(),
            mac: mac(m),
            fixed_ips: vec![],
            allowed_address_pairs: aaps
                .iter()
                .map(|a| AllowedAddressPair {
                    ip_address: a.parse().unwrap(),
                    mac_address: None,
                })
                .collect(),
            port_security_enabled: true,
            security_groups: vec![],
            chassis: Some(chassis.into()),
            ifname: None,
            device_owner: String::new(),
            admin_state_up: true,
        }
    }

    fn nb(mode: Option<AapMode>, ports: Vec<LPort>) -> NbSnapshot {
        NbSnapshot {
            lswitches: BTreeMap::from([(
                "net1".into(),
                LSwitch {
                    id: "net1".into(),
                    name: String::new(),
                    segmentation_id: 100,
                    mtu: 1450,
                    aap_mode: mode,
                },
            )]),
            lports: ports
                .into_iter()
                .map(|p| (p.id.clone(), std::sync::Arc::new(p)))
                .collect(),
            ..Default::default()
        }
    }

    fn sighting(lport: &str, m: &str, op: u16) -> Sighting {
        Sighting {
            ts_ns: 0,
            ifindex: 7,
            lport: lport.into(),
            net_id: 100,
            ip: ip(VIP),
            mac: mac(m),
            op,
        }
    }

    fn active(port: &str, m: &str, chassis: &str) -> ActivePort {
        ActivePort {
            lswitch: "net1".into(),
            ip: ip(VIP),
            port: port.into(),
            mac: mac(m),
            chassis: chassis.into(),
            since_ms: 1,
            reason: "garp".into(),
        }
    }

    const M1: &str = "fa:16:3e:00:00:01";
    const M2: &str = "fa:16:3e:00:00:02";

    fn shared_vip() -> Vec<LPort> {
        vec![port("p1", "hv1", M1, &[VIP]), port("p2", "hv2", M2, &[VIP])]
    }

    #[test]
    fn claims_only_shared_vips_in_detection_mode() {
        use dragonflow_common::event::{GARP_OP_ARP_REPLY, GARP_OP_ARP_REQUEST, GARP_OP_ND_NA};
        let d = nb(None, shared_vip());
        let s = sighting("p1", M1, GARP_OP_ARP_REQUEST);
        assert_eq!(
            judge("hv1", AapMode::Detection, &d, &s),
            Verdict::Claim {
                lswitch: "net1".into(),
                why: Why::Garp
            }
        );
        assert_eq!(
            judge("hv1", AapMode::Broadcast, &d, &s),
            Verdict::Ignore("broadcast way on this network")
        );
        // The lswitch override wins over the agent's mode, both ways.
        let d2 = nb(Some(AapMode::Detection), shared_vip());
        assert!(matches!(
            judge("hv1", AapMode::Broadcast, &d2, &s),
            Verdict::Claim { .. }
        ));
        let d3 = nb(Some(AapMode::Broadcast), shared_vip());
        assert!(matches!(
            judge("hv1", AapMode::Detection, &d3, &s),
            Verdict::Ignore(_)
        ));
        // Reasons follow the op.
        for (op, why) in [
            (GARP_OP_ARP_REPLY, Why::ArpReply),
            (GARP_OP_ND_NA, Why::UnsolicitedNa),
        ] {
            assert_eq!(
                judge("hv1", AapMode::Detection, &d, &sighting("p1", M1, op)),
                Verdict::Claim {
                    lswitch: "net1".into(),
                    why
                }
            );
        }
        // Not shared: one port lists it.
        let single = nb(None, vec![port("p1", "hv1", M1, &[VIP])]);
        assert!(matches!(
            judge("hv1", AapMode::Detection, &single, &s),
            Verdict::Ignore(_)
        ));
        // Only the chassis hosting the port claims; unknown ports, foreign MACs and other
        // networks' events are ignored.
        assert!(matches!(
            judge("hv2", AapMode::Detection, &d, &s),
            Verdict::Ignore(_)
        ));
        assert!(matches!(
            judge("hv1", AapMode::Detection, &d, &sighting("nope", M1, 1)),
            Verdict::Ignore(_)
        ));
        assert!(matches!(
            judge("hv1", AapMode::Detection, &d, &sighting("p1", M2, 1)),
            Verdict::Ignore(_)
        ));
        let mut other_net = s.clone();
        other_net.net_id = 200;
        assert!(matches!(
            judge("hv1", AapMode::Detection, &d, &other_net),
            Verdict::Ignore(_)
        ));
        // A CIDR AAP never takes part.
        let cidr = nb(
            None,
            vec![
                port("p1", "hv1", M1, &["192.0.2.0/24"]),
                port("p2", "hv2", M2, &[VIP]),
            ],
        );
        assert!(matches!(
            judge("hv1", AapMode::Detection, &cidr, &s),
            Verdict::Ignore(_)
        ));
    }

    #[test]
    fn holder_sightings_are_proof_of_life_in_any_mode() {
        let mut d = nb(None, shared_vip());
        d.active_ports
            .insert(("net1".into(), ip(VIP)), active("p1", M1, "hv1"));
        for mode in [AapMode::Broadcast, AapMode::Detection] {
            assert_eq!(
                judge("hv1", mode, &d, &sighting("p1", M1, 2)),
                Verdict::Holder {
                    lswitch: "net1".into()
                }
            );
        }
        // The other holder's sighting is a move.
        let mut d2 = d.clone();
        d2.lports
            .get_mut("p2")
            .map(std::sync::Arc::make_mut)
            .unwrap()
            .chassis = Some("hv1".into());
        assert!(matches!(
            judge("hv1", AapMode::Detection, &d2, &sighting("p2", M2, 1)),
            Verdict::Claim { .. }
        ));
    }

    #[test]
    fn stale_claims() {
        let d = nb(None, shared_vip());
        assert_eq!(stale("hv1", &d, &active("p1", M1, "hv1")), None);
        assert_eq!(
            stale("hv1", &d, &active("gone", M1, "hv1")),
            Some(Why::PortGone)
        );
        assert_eq!(
            stale("hv1", &d, &active("p2", M2, "hv1")),
            Some(Why::PortMoved)
        );
        let mut d2 = d.clone();
        d2.lports
            .get_mut("p1")
            .map(std::sync::Arc::make_mut)
            .unwrap()
            .allowed_address_pairs
            .clear();
        assert_eq!(
            stale("hv1", &d2, &active("p1", M1, "hv1")),
            Some(Why::AapRemoved)
        );
        // Same IP listed with another MAC: the claimed pair is gone.
        assert_eq!(
            stale("hv1", &d, &active("p1", M2, "hv1")),
            Some(Why::AapRemoved)
        );
    }

    #[test]
    fn dampening_first_back_off_is_configurable() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Damper::new(Duration::from_millis(250));
        assert!(d.observe("p1", 1, s(0)));
        assert_eq!(d.ready_at(s(100)), Some(s(250)));
        for (i, at) in [250, 750, 1750, 3750, 7750].into_iter().enumerate() {
            d.observe(if i % 2 == 0 { "p2" } else { "p1" }, i as u64 + 2, s(at));
        }
        assert_eq!(
            d.backoff(),
            Duration::from_millis(2500),
            "capped at 10x the first"
        );
    }

    #[test]
    fn dampening_backs_off_and_resets() {
        let t0 = Instant::now();
        let s = |ms: u64| t0 + Duration::from_millis(ms);
        let mut d = Damper::default();
        assert_eq!(d.ready_at(t0), None, "first claim immediate");
        assert!(d.observe("p1", 1, s(0)));
        assert!(!d.observe("p1", 1, s(5)), "the same holder is not a move");
        assert_eq!(d.backoff(), BACKOFF_MIN);
        // A move 300 ms later waits for the 1 s back-off…
        assert_eq!(d.ready_at(s(300)), Some(s(1000)));
        // …and, done then, doubles it.
        assert!(d.observe("p2", 2, s(1000)));
        assert_eq!(d.backoff(), Duration::from_secs(2));
        assert_eq!(d.ready_at(s(1100)), Some(s(3000)));
        d.observe("p1", 3, s(3000));
        d.observe("p2", 4, s(7000));
        d.observe("p1", 5, s(15_000));
        assert_eq!(d.backoff(), BACKOFF_MAX, "capped at 10 s");
        d.observe("p2", 6, s(25_000));
        assert_eq!(d.backoff(), BACKOFF_MAX);
        // A quiet gap of twice the back-off resets it.
        assert!(d.observe("p1", 7, s(46_000)));
        assert_eq!(d.backoff(), BACKOFF_MIN);
        // Moves a few seconds apart (failovers) never wait.
        let mut d = Damper::default();
        for i in 0..10u64 {
            let at = s(i * 2500);
            assert_eq!(d.ready_at(at), None, "failover {i}");
            d.observe(if i % 2 == 0 { "p1" } else { "p2" }, i, at);
        }
        // A holder that went away and came back is a move.
        d.cleared();
        assert!(d.observe("p2", 9, s(30_000)));
    }

    #[test]
    fn keys_and_records() {
        let p = "/dragonflow/";
        let k = active_key(p, "net1", ip(VIP));
        assert_eq!(k, "/dragonflow/activeport/net1/192.0.2.100");
        assert_eq!(parse_active_key(p, &k), Some(Ok(("net1".into(), ip(VIP)))));
        let k6 = active_key(p, "net1", ip("2001:db8::100"));
        assert_eq!(
            parse_active_key(p, &k6),
            Some(Ok(("net1".into(), ip("2001:db8::100"))))
        );
        assert_eq!(
            history_key(p, "net1", ip(VIP)),
            "/dragonflow/activeport-log/net1/192.0.2.100"
        );
        assert_eq!(parse_active_key(p, "/dragonflow/lport/p1"), None);
        assert_eq!(
            parse_active_key(p, "/dragonflow/activeport-log/net1/1.2.3.4"),
            None
        );
        assert!(matches!(
            parse_active_key(p, "/dragonflow/activeport/net1/nope"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_active_key(p, "/dragonflow/activeport/net1"),
            Some(Err(_))
        ));

        let good = serde_json::to_vec(&active("p1", M1, "hv1")).unwrap();
        assert_eq!(
            decode_active("net1", ip(VIP), &good).unwrap(),
            active("p1", M1, "hv1")
        );
        assert!(
            decode_active("net2", ip(VIP), &good).is_err(),
            "key mismatch"
        );
        assert!(decode_active("net1", ip("192.0.2.1"), &good).is_err());
        assert!(decode_active("net1", ip(VIP), b"{").is_err());
        let bcast = serde_json::to_vec(&active("p1", "ff:ff:ff:ff:ff:ff", "hv1")).unwrap();
        assert!(decode_active("net1", ip(VIP), &bcast).is_err());
        let no_port = serde_json::to_vec(&active("", M1, "hv1")).unwrap();
        assert!(decode_active("net1", ip(VIP), &no_port).is_err());
    }

    #[test]
    fn history_is_bounded_and_readable() {
        let mut h = Vec::new();
        for i in 0..(HISTORY_MAX as u64 + 5) {
            push_history(
                &mut h,
                HistoryRecord {
                    at_ms: i,
                    event: if i % 2 == 0 {
                        Event::Claimed
                    } else {
                        Event::Released
                    },
                    port: "p1".into(),
                    mac: mac(M1),
                    chassis: "hv1".into(),
                    why: Why::ProbeLoss,
                    by: "hv2".into(),
                },
            );
        }
        assert_eq!(h.len(), HISTORY_MAX);
        assert_eq!(h[0].at_ms, 5, "oldest dropped first");
        let json = serde_json::to_value(&h[0]).unwrap();
        assert_eq!(json["why"], "probe_loss");
        assert_eq!(json["event"], "released");
        assert_eq!(json["mac"], M1);
        for w in ALL_WHY {
            assert_eq!(serde_json::to_value(w).unwrap(), w.name());
        }
    }

    #[test]
    fn probe_frames() {
        let f = arp_probe(mac(M1), "192.0.2.100".parse().unwrap());
        assert_eq!(f.len(), 60);
        assert_eq!(&f[..6], &mac(M1).0);
        assert_eq!(&f[6..12], &PROBE_MAC.0);
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[20..22], &[0, 1], "request");
        assert_eq!(&f[22..28], &PROBE_MAC.0, "sha");
        assert_eq!(&f[28..32], &[0, 0, 0, 0], "spa 0: a probe");
        assert_eq!(&f[38..42], &[192, 0, 2, 100], "tpa");
        assert!(!PROBE_MAC.is_multicast());

        let f = ns_probe(mac(M2), "2001:db8::100".parse().unwrap());
        assert_eq!(f.len(), 14 + 40 + 24);
        assert_eq!(&f[12..14], &[0x86, 0xdd]);
        assert_eq!(f[20], 58);
        assert_eq!(f[21], 255);
        assert_eq!(&f[22..38], &[0; 16], "source ::");
        assert_eq!(
            &f[38..54],
            &"ff02::1:ff00:100".parse::<Ipv6Addr>().unwrap().octets()
        );
        assert_eq!(f[54], 135);
        // The checksum verifies: summing the pseudo-header and message gives 0xffff.
        let mut sum: u32 = 0;
        let mut add = |b: &[u8]| {
            for c in b.chunks(2) {
                sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
            }
        };
        add(&f[22..54]);
        add(&24u32.to_be_bytes());
        add(&[0, 0, 0, 58]);
        add(&f[54..]);
        while sum > 0xffff {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        assert_eq!(sum, 0xffff);
    }

    #[test]
    fn stats_render() {
        let stats = Arc::new(Stats::default());
        stats.claim_latency.observe(Duration::from_micros(1500));
        stats.claim_latency.observe(Duration::from_millis(30));
        stats.removed(Why::ProbeLoss);
        stats.claims.fetch_add(3, Ordering::Relaxed);
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register_collector(Box::new(stats));
        let o = metrics::encode(&registry);
        for line in [
            "# TYPE dragonflow_activeport_claim_seconds histogram",
            "dragonflow_activeport_claim_seconds_bucket{le=\"0.001\"} 0",
            "dragonflow_activeport_claim_seconds_bucket{le=\"0.002\"} 1",
            "dragonflow_activeport_claim_seconds_bucket{le=\"0.05\"} 2",
            "dragonflow_activeport_claim_seconds_bucket{le=\"+Inf\"} 2",
            "dragonflow_activeport_claim_seconds_count 2",
            "dragonflow_activeport_claim_etcd_seconds_count 0",
            "# TYPE dragonflow_activeport_claims_total counter",
            "dragonflow_activeport_claims_total 3",
            "dragonflow_activeport_removed_total{why=\"probe_loss\"} 1",
            "dragonflow_activeport_removed_total{why=\"lease_lost\"} 0",
            "dragonflow_activeport_probes_total{outcome=\"send_error\"} 0",
            "# TYPE dragonflow_activeport_entries gauge",
        ] {
            assert!(o.lines().any(|l| l == line), "{line} in\n{o}");
        }
        assert!(!o.contains("why=\"garp\""));
        let sum: f64 = o
            .lines()
            .find_map(|l| l.strip_prefix("dragonflow_activeport_claim_seconds_sum "))
            .expect("sum")
            .parse()
            .expect("number");
        assert!((sum - 0.0315).abs() < 1e-9, "{sum}");
    }
}
