//! The detection way (README: "Shared VIPs: detection way"): which port holds a shared allowed-address-pair
//! IP, recorded in etcd as `<prefix>activeport/<lswitch>/<ip>` so that every agent forwards
//! to, and answers ARP/ND with, that port only.
//!
//! - **Claims.** The datapath raises a ring-buffer event (`reader` hands it here as a
//!   [`judge::Sighting`]) for a GARP, an ARP reply or an unsolicited NA for a watched AAP IP, from
//!   a port that lists it, after port security passed. When the IP is shared (listed as a
//!   single-IP AAP by ≥ 2 ports of the network) and the network's effective mode is
//!   `detection` (`lswitch.aap_mode`, else this agent's `--aap-mode`), the agent hosting
//!   the port claims the key with one etcd transaction comparing the key's mod_revision
//!   (0: create if absent), attached to the chassis lease (a dead chassis loses its claims
//!   with its record). A sighting from the port that already holds the key, with the same
//!   MAC, on our lease, writes nothing.
//! - **Dampening.** The first claim of a key is immediate. A move that comes within the
//!   current back-off of the previous move (any agent's) waits until the back-off has run
//!   out; the back-off starts at `--claim-backoff-ms` ([`judge::BACKOFF_MIN`], 1 s, by default)
//!   after a move, doubles each time moves keep coming within twice the back-off, up to ten
//!   times the first ([`judge::BACKOFF_MAX`], 10 s), and falls back to the first after a quiet
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
//!   addressed to [`probes::PROBE_MAC`], which no port has, so after raising the event the datapath
//!   drops it as `unknown_unicast` (the event is emitted once the frame is decided, whatever
//!   the outcome). After `--probe-misses` unanswered probes in a row the entry is removed
//!   (`probe_loss`) and forwarding falls back to the broadcast way.
//! - **Restart.** A restarted agent (or a new etcd session) moves its still-valid claims to
//!   its new lease (compare mod_revision) before the old lease expires, keeping `since`;
//!   the probes then re-validate them.

pub mod claims;
pub mod judge;
pub mod metrics;
pub mod probes;
pub mod reader;
pub mod task;
#[cfg(test)]
mod tests;
