//! Pure verdicts of the detection way: what a sighting means (claim, ignore), which
//! claims went stale, who holds an IP, and the flap dampening of claims.

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use serde::{Deserialize, Serialize};

use crate::nb::{AapMode, ActivePort, LPort, MacAddr, NbSnapshot};

/// Back-off after a move (see the module doc).
/// The first back-off by default (`--claim-backoff-ms`).
pub const BACKOFF_MIN: Duration = Duration::from_millis(crate::config::DEFAULT_CLAIM_BACKOFF_MS);
/// The back-off grows up to this many times the first.
pub(super) const BACKOFF_GROWTH: u32 = 10;
/// The largest back-off by default.
pub const BACKOFF_MAX: Duration =
    Duration::from_millis(crate::config::DEFAULT_CLAIM_BACKOFF_MS * BACKOFF_GROWTH as u64);

/// One datapath event, as the GARP reader (`reader`) hands it over.
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
