//! Connection tracking (`df_ct_v1`): keys oriented from the judged port, expiry and the
//! state machine. The policy side (what may create an entry, revalidation) is in `sg`.

use dragonflow_common::sg::{
    CT_REPLIED, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT, CT_UNREPLIED,
    CtKey, CtValue, DIR_EGRESS, ct_timeout_secs,
};

use crate::{parse::IPPROTO_TCP, sg::flow::Flow};

const NS_PER_S: u64 = 1_000_000_000;

/// Writes into `out` the key of a packet of port `ifindex` travelling in `dir` from `src`
/// to `dst`: local = the port's side (source of an egress packet, destination of an
/// ingress one), so both directions of a connection find one entry. Word stores: `CtKey`
/// is eleven naturally aligned `u32`s.
#[expect(
    clippy::too_many_arguments,
    reason = "inlined; the verifier tracks each scalar (a struct would go through the stack)"
)]
#[inline(always)]
pub(super) fn key(
    out: &mut CtKey,
    ifindex: u32,
    family: u8,
    proto: u8,
    dir: u8,
    src: &[u32; 4],
    dst: &[u32; 4],
    sport: u16,
    dport: u16,
) {
    let (local, remote, lport, rport) = if dir == DIR_EGRESS {
        (src, dst, sport, dport)
    } else {
        (dst, src, dport, sport)
    };
    let [l0, l1] = lport.to_ne_bytes();
    let [r0, r1] = rport.to_ne_bytes();
    // Word by word, each stored as soon as it is loaded: building the whole key in
    // registers first made LLVM spill them (stack the verifier counts, see `sg`).
    let w = (out as *mut CtKey).cast::<u32>();
    // SAFETY: CtKey is #[repr(C)], 44 bytes of integers and byte arrays with explicit
    // padding, alignment 4 (see the size assertion): eleven u32 words, written in order
    // (ifindex; family, proto, lport; rport, pad; local; remote).
    unsafe {
        w.write(ifindex);
        w.add(1).write(u32::from_ne_bytes([family, proto, l0, l1]));
        w.add(2).write(u32::from_ne_bytes([r0, r1, 0, 0]));
        let mut i = 0;
        while i < 4 {
            w.add(3 + i).write(local[i]);
            w.add(7 + i).write(remote[i]);
            i += 1;
        }
    }
}

/// Past its state's timeout (`sg::ct_timeout_secs`, as the agent's collector): counts as
/// absent. `last_seen_ns` may be a little ahead of `now` (another CPU): not expired.
#[inline(always)]
pub(super) fn expired(v: &CtValue, now: u64) -> bool {
    now.saturating_sub(v.last_seen_ns) > ct_timeout_secs(v.state) * NS_PER_S
}

/// The state after a packet of `f` (`reply`: not in the origin direction). TCP:
/// SYN_SENT → ESTABLISHED at the first answer; a FIN → CLOSING, a second FIN (from
/// either side: the entry has no room to remember whose) or a RST → CLOSED. Others:
/// UNREPLIED → REPLIED at the first answer.
#[inline(always)]
pub(super) fn next_state(state: u8, f: &Flow, reply: bool) -> u8 {
    if f.proto == IPPROTO_TCP {
        if f.tcp_rst() {
            CT_TCP_CLOSED
        } else if f.tcp_fin() {
            if state == CT_TCP_CLOSING || state == CT_TCP_CLOSED {
                CT_TCP_CLOSED
            } else {
                CT_TCP_CLOSING
            }
        } else if state == CT_TCP_SYN_SENT && reply {
            CT_TCP_ESTABLISHED
        } else {
            state
        }
    } else if reply && state == CT_UNREPLIED {
        CT_REPLIED
    } else {
        state
    }
}

/// A TCP SYN for a tuple whose connection is closing or closed is a new connection
/// (port reuse): judged as new, not let through on the old entry.
#[inline(always)]
pub(super) fn reopens(state: u8, f: &Flow) -> bool {
    f.proto == IPPROTO_TCP
        && f.tcp_syn_only()
        && (state == CT_TCP_CLOSING || state == CT_TCP_CLOSED)
}

/// The state of a new entry.
#[inline(always)]
pub(super) const fn initial_state(proto: u8) -> u8 {
    if proto == IPPROTO_TCP {
        CT_TCP_SYN_SENT
    } else {
        CT_UNREPLIED
    }
}
