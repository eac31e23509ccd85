//! IP fragments (docs/THREATS.md, "What a VM may try", row 10) for the security-group
//! stage: the first fragment of a datagram carries the L4 header; what it said (ports,
//! ICMP type/code, how much L4 data it carried) is recorded in `df_frag_v1` per (port,
//! direction, datagram) when it passes, and the later fragments are judged with it:
//! - no (fresh) record → `frag_no_first` (the first was dropped, evicted, never seen, or
//!   the fragments come out of order: fail closed);
//! - a later fragment starting inside the first's L4 data → `frag_overlap` (RFC 1858: it
//!   would rewrite the header the rules judged);
//! - the tiny first fragment (L4 header cut short) is refused before this, by `flow`
//!   (and by port security for senders that have it).

// Keys and values by reference into the scratch on purpose (see `sg`).
#![expect(
    clippy::needless_borrows_for_generic_args,
    reason = "keys and values by reference into the scratch (see `sg`)"
)]

use aya_ebpf::helpers::bpf_ktime_get_coarse_ns;
use dragonflow_common::{
    sg::{FRAG_TIMEOUT_NS, FragKey, FragValue},
    verdict::DropReason,
};

use crate::{maps::FRAG, sg::flow::Flow, trace};

/// The datagram of `f` seen by port `ifindex` in `dir`. Word stores: `FragKey` is eleven
/// naturally aligned `u32`s.
#[inline(always)]
fn key(out: &mut FragKey, ifindex: u32, dir: u8, f: &Flow) {
    let words = [
        ifindex,
        u32::from_ne_bytes([dir, f.family, f.proto, 0]),
        f.frag_id,
        f.src[0],
        f.src[1],
        f.src[2],
        f.src[3],
        f.dst[0],
        f.dst[1],
        f.dst[2],
        f.dst[3],
    ];
    // SAFETY: FragKey is #[repr(C)], 44 bytes of integers and byte arrays with explicit
    // padding, alignment 4: the layout is the words above.
    *out = unsafe { core::mem::transmute::<[u32; 11], FragKey>(words) };
}

/// What the first fragment of a later fragment's datagram recorded, or why the later
/// fragment is dropped. `k`: scratch memory for the key.
#[inline(always)]
pub(super) fn first(
    k: &mut FragKey,
    ifindex: u32,
    dir: u8,
    f: &Flow,
    now: u64,
) -> Result<&'static FragValue, DropReason> {
    key(k, ifindex, dir, f);
    let Some(v) = FRAG.get_ptr(&*k) else {
        return Err(DropReason::FragNoFirst);
    };
    // SAFETY: map value pointer, valid for the rest of the run (RCU). An LRU entry may
    // be reused meanwhile by another CPU: at worst this fragment is judged by another
    // datagram's first fragment, then by the conntrack/rules like any packet.
    let v = unsafe { &*v };
    if now.saturating_sub(v.last_seen_ns) > FRAG_TIMEOUT_NS {
        return Err(DropReason::FragNoFirst);
    }
    if f.frag_off < u32::from(v.first_len) {
        return Err(DropReason::FragOverlap);
    }
    Ok(v)
}

/// Records a first fragment that passed (`f.frag_off` holds the L4 bytes it carried).
/// `k`, `v`: scratch memory for the key and value. A failed insert (LRU: never for lack
/// of room) only drops the later fragments.
#[inline(always)]
pub(super) fn record(k: &mut FragKey, v: &mut FragValue, ifindex: u32, dir: u8, f: &Flow) {
    key(k, ifindex, dir, f);
    *v = FragValue {
        sport: f.sport,
        dport: f.dport,
        first_len: f.frag_off as u16,
        rule_port: f.rule_port,
        // SAFETY: helper without arguments.
        last_seen_ns: unsafe { bpf_ktime_get_coarse_ns() },
    };
    if !trace::on() {
        let _ = FRAG.insert(&*k, &*v, 0);
    }
}
