//! The port behind the tap and its allowed (MAC, IP) pairs, shared by the ethertype
//! checks of port security.
//!
//! Lookup precedence, cheapest first:
//! 1. exact `AddrKey{ifindex, MAC, family, IP}` in `df_addrs_v2` — the fast path, one hash
//!    lookup (fixed IPs, single-IP AAPs, link-local addresses);
//! 2. only for ports flagged `PORT_F_CIDR_AAP`: the LPM trie `df_cidrs_v2`, with the fixed
//!    part (ifindex, MAC, family) matched exactly by `LPM_FIXED_BITS`;
//! 3. on a miss, `df_macs_v1` only to name the reason (spoofed MAC vs spoofed IP).
//!
//! The port itself (`df_ports_v1`) is looked up lazily ([`PortCache`]): an exact address
//! hit proves the port exists with port security on, because the agent writes address
//! entries only for such ports (after the port entry, and removes them before it). So an
//! allowed frame costs one hash lookup; measured, a second one (the port) made the
//! allowed IPv4 path ~4.5x an XDP_PASS stub instead of <3x. Every path that needs the
//! port's MAC or flags, and every drop (see `portsec::security_drop`), looks the port up.

use aya_ebpf::maps::lpm_trie::Key;
use dragonflow_common::{
    addr::{AddrKey, FAMILY_V4, LPM_FIXED_BITS, MacKey},
    port::{PORT_F_CIDR_AAP, PORT_F_PORT_SECURITY, PortConfig},
    verdict::DropReason,
};

use crate::{
    config,
    ctx::{ip6_bytes, ip6_words},
    events::{self, PendingGarp},
    maps::{ADDRS, CIDRS, MACS},
    parse::{Eth, mac_eq},
};

/// The port of the frame being judged, looked up at most once and only when needed; and
/// what port security learnt on the way that later stages use: the network (from the
/// address hit, so the fast path needs no port lookup) and a GARP event to emit once the
/// frame is decided (see `events`).
pub(crate) struct PortCache {
    ifindex: u32,
    looked_up: bool,
    port: Option<&'static PortConfig>,
    /// `net_id` of the allowed address pair that matched, if `has_net`.
    net_id: u32,
    has_net: bool,
    /// A GARP event raised by the ARP/ND checks (if `has_garp`), emitted by
    /// [`PortCache::flush_garp`] (see `events::PendingGarp`).
    garp: PendingGarp,
    has_garp: bool,
    // Plain fields, not `Option`s: LLVM spills the undefined payload of a `None` where
    // paths merge, and the verifier rejects reading it ("!read_ok").
}

impl PortCache {
    #[inline(always)]
    pub(crate) const fn new(ifindex: u32) -> Self {
        PortCache {
            ifindex,
            looked_up: false,
            port: None,
            net_id: 0,
            has_net: false,
            garp: PendingGarp::NONE,
            has_garp: false,
        }
    }

    /// The frame's network: from the address pair that allowed it, else from the port
    /// (paths that allowed it without an address hit looked the port up anyway).
    #[inline(always)]
    pub(crate) fn net_id(&mut self) -> Result<u32, DropReason> {
        if self.has_net {
            return Ok(self.net_id);
        }
        self.get().map(|p| p.net_id).ok_or(DropReason::UnknownPort)
    }

    #[inline(always)]
    pub(crate) const fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// The port, if the tap has one.
    #[inline(always)]
    pub(crate) fn get(&mut self) -> Option<&'static PortConfig> {
        if !self.looked_up {
            self.port = config::port(self.ifindex);
            self.looked_up = true;
        }
        self.port
    }

    /// The port, when it exists with port security on. Otherwise `UnknownPort`, which
    /// the entry point turns into the right outcome (unknown port, or no port security).
    #[inline(always)]
    pub(crate) fn secured(&mut self) -> Result<&'static PortConfig, DropReason> {
        match self.get() {
            Some(p) if p.has(PORT_F_PORT_SECURITY) => Ok(p),
            _ => Err(DropReason::UnknownPort),
        }
    }

    /// Raises a GARP event for the frame being judged: emitted by
    /// [`PortCache::flush_garp`] once the frame is decided by this program.
    #[inline(always)]
    pub(crate) fn raise_garp(&mut self, family: u8, ip: [u8; 16], mac: [u8; 6], op: u16) {
        self.garp = PendingGarp {
            family,
            ip: ip6_words(ip),
            mac,
            op,
        };
        self.has_garp = true;
    }

    /// Emits the frame's pending GARP event, if any (see `events::emit`).
    #[inline(always)]
    pub(crate) fn flush_garp(&mut self) {
        if self.has_garp {
            self.has_garp = false;
            let g = self.garp;
            events::emit(self, g.family, ip6_bytes(g.ip), g.mac, g.op);
        }
    }
}

impl events::Sender for PortCache {
    #[inline(always)]
    fn ifindex(&self) -> u32 {
        self.ifindex
    }

    #[inline(always)]
    fn secured(&mut self) -> Result<&'static PortConfig, DropReason> {
        PortCache::secured(self)
    }
}

/// The fast-path key for the frame's Ethernet source and `ip` (as loaded words), built
/// with word stores: `AddrKey` is seven naturally aligned `u32`s (ifindex, MAC 0..4,
/// MAC 4..6 + family + pad, IP).
#[inline(always)]
pub(super) fn src_key(ifindex: u32, eth: &Eth, family: u8, ip: [u32; 4]) -> AddrKey {
    let [a, b] = eth.src_w.1.to_ne_bytes();
    let words = [
        ifindex,
        eth.src_w.0,
        u32::from_ne_bytes([a, b, family, 0]),
        ip[0],
        ip[1],
        ip[2],
        ip[3],
    ];
    // SAFETY: AddrKey is #[repr(C)], 28 bytes of integers and byte arrays with explicit
    // padding, alignment 4: every bit pattern is valid and the layout is the words above.
    unsafe { core::mem::transmute::<[u32; 7], AddrKey>(words) }
}

/// `ADDR_F_*` flags of an allowed (MAC, IP) pair of the port (exact, then CIDR), if any.
#[inline(always)]
pub(super) fn lookup_pair(port: &mut PortCache, key: &AddrKey) -> Option<u32> {
    if let Some(v) = ADDRS.get_ptr(key) {
        // SAFETY: map value pointer, valid for this run.
        let v = unsafe { &*v };
        port.net_id = v.net_id;
        port.has_net = true;
        return Some(v.flags);
    }
    if let Ok(cfg) = port.secured()
        && cfg.has(PORT_F_CIDR_AAP)
    {
        let bits = if key.family == FAMILY_V4 { 32 } else { 128 };
        if let Some(v) = CIDRS.get(Key::new(LPM_FIXED_BITS + bits, *key)) {
            port.net_id = v.net_id;
            port.has_net = true;
            return Some(v.flags);
        }
    }
    None
}

/// The source check: the pair's flags, or why it is not allowed.
#[inline(always)]
pub(super) fn check_src(port: &mut PortCache, key: &AddrKey) -> Result<u32, DropReason> {
    match lookup_pair(port, key) {
        Some(flags) => Ok(flags),
        None => Err(miss_reason(port.secured()?, key.ifindex, &key.mac)),
    }
}

/// A MAC the port may use (its own or an AAP's) makes a miss an IP spoof; any other MAC
/// is a MAC spoof.
#[inline(always)]
fn miss_reason(port: &PortConfig, ifindex: u32, mac: &[u8; 6]) -> DropReason {
    if mac_eq(mac, &port.mac) || MACS.get_ptr(MacKey::new(ifindex, *mac)).is_some() {
        DropReason::SrcIpSpoof
    } else {
        DropReason::SrcMacSpoof
    }
}
