//! Port security: the port lookup (fail closed) and the (MAC, IP) pair check shared by the
//! IPv4, IPv6, ARP and ND stages.
//!
//! Lookup precedence, cheapest first:
//! 1. exact `AddrKey{ifindex, MAC, family, IP}` in `df_addrs_v1` — the fast path, one hash
//!    lookup (fixed IPs, single-IP AAPs, link-local addresses);
//! 2. only for ports flagged `PORT_F_CIDR_AAP`: the LPM trie `df_cidrs_v1`, with the fixed
//!    part (ifindex, MAC, family) matched exactly by `LPM_FIXED_BITS`;
//! 3. on a miss, `df_macs_v1` only to name the reason (spoofed MAC vs spoofed IP).

use aya_ebpf::maps::lpm_trie::Key;
use dragonflow_common::{
    addr::{AddrKey, FAMILY_V4, LPM_FIXED_BITS, MacKey},
    port::{PORT_F_CIDR_AAP, PortConfig},
    verdict::DropReason,
};

use crate::{
    maps::{ADDRS, CIDRS, MACS, PORTS},
    parse::mac_eq,
};

/// The port behind a tap; none yet means drop (fail closed until the agent is done).
#[inline(always)]
pub fn port(ifindex: u32) -> Result<&'static PortConfig, DropReason> {
    match PORTS.get_ptr(ifindex) {
        // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
        Some(p) => Ok(unsafe { &*p }),
        None => Err(DropReason::UnknownPort),
    }
}

/// `ADDR_F_*` flags of an allowed (MAC, IP) pair of the port (exact, then CIDR), if any.
#[inline(always)]
pub fn lookup_pair(port: &PortConfig, key: &AddrKey) -> Option<u32> {
    if let Some(v) = ADDRS.get_ptr(key) {
        // SAFETY: map value pointer, valid for this run.
        return Some(unsafe { (*v).flags });
    }
    if port.has(PORT_F_CIDR_AAP) {
        let bits = if key.family == FAMILY_V4 { 32 } else { 128 };
        if let Some(v) = CIDRS.get(Key::new(LPM_FIXED_BITS + bits, *key)) {
            return Some(v.flags);
        }
    }
    None
}

/// The source check: the pair's flags, or why it is not allowed.
#[inline(always)]
pub fn check_src(port: &PortConfig, key: &AddrKey) -> Result<u32, DropReason> {
    match lookup_pair(port, key) {
        Some(flags) => Ok(flags),
        None => Err(miss_reason(port, key.ifindex, &key.mac)),
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
