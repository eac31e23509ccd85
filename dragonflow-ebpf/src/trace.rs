//! Ground layer: the trace mode (`dragonflow_common::trace`, docs/DESIGN.md "Tracing a
//! packet"). Every program entry decides once, from its own context, whether this run is
//! a trace ([`begin_tc`], [`begin_xdp`]) and writes that into this CPU's run slot; every
//! side effect asks [`on`] and, when tracing, notes instead of acting. Imports `maps`
//! only.
//!
//! Why a per-CPU run slot and not a value carried in registers: a flag the verifier can
//! see as a constant would be tracked precisely at every branch on it, and each program
//! would be verified twice (traced and not); a load from map memory is an unknown scalar
//! at every check, so the traced branches join the others at once. The slot is not a
//! global that outlives a run: every entry point overwrites it from its own context before
//! anything reads it, and runs do not interleave on a CPU (XDP, TC and `BPF_PROG_TEST_RUN`
//! all run with bottom halves off — the same ground the security-group stage's scratch
//! slot stands on).

use aya_ebpf::{
    bindings::BPF_F_RDONLY_PROG,
    macros::map,
    maps::{Array, PerCpuArray},
    programs::{TcContext, XdpContext},
};
use dragonflow_common::trace::{TRACE_STATS_MAX, TraceRecord, XDP_META_LEN};

/// The agent's token (see `dragonflow_common::trace::TRACE_KEY`); read-only here.
#[map(name = "df_trace_key_v1")]
static TRACE_KEY: Array<u64> = Array::with_max_entries(1, BPF_F_RDONLY_PROG);

/// The record of the traced run (`dragonflow_common::trace::TRACE`).
#[map(name = "df_trace_v1")]
static TRACE: Array<TraceRecord> = Array::with_max_entries(1, 0);

/// This CPU's current run: non-zero while a traced run is running. Private.
#[map(name = "df_trace_run")]
static TRACE_RUN: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// A TC entry point (not a tail-called program: it continues its caller's run): a trace
/// when `cb[0..2]` hold the token, which only `BPF_PROG_TEST_RUN`'s `ctx_in` sets (a
/// frame from a tap or the tunnel never carries the agent's random 64 bits there).
#[inline(always)]
pub(crate) fn begin_tc(ctx: &TcContext) {
    // SAFETY: skb points at the kernel's __sk_buff for this run.
    let (lo, hi) = unsafe { ((*ctx.skb.skb).cb[0], (*ctx.skb.skb).cb[1]) };
    begin(u64::from(lo) | (u64::from(hi) << 32));
}

/// The XDP entry point: a trace when the frame's metadata area holds the token. Frames
/// from a tap have no metadata (only an XDP program could add it, and ours is the only
/// one), so only `BPF_PROG_TEST_RUN` (`xdp_md.data` in `ctx_in`) can put it there.
#[inline(always)]
pub(crate) fn begin_xdp(ctx: &XdpContext) {
    let (meta, data) = (ctx.metadata(), ctx.data());
    let candidate = if meta + XDP_META_LEN as usize <= data {
        // SAFETY: 8 bytes inside the metadata area, bounds-checked above.
        unsafe { core::ptr::read_unaligned(meta as *const u64) }
    } else {
        0
    };
    begin(candidate);
}

#[inline(always)]
fn begin(candidate: u64) {
    let traced = candidate != 0 && TRACE_KEY.get(0).is_some_and(|k| *k == candidate);
    if let Some(run) = TRACE_RUN.get_ptr_mut(0) {
        // SAFETY: this CPU's slot, valid for this run.
        unsafe { *run = u32::from(traced) };
    }
    if traced && let Some(r) = record() {
        // SAFETY: map value pointer, valid for this run.
        unsafe { (*r).runs += 1 };
    }
}

/// This run is a trace: change nothing, note instead.
#[inline(always)]
pub(crate) fn on() -> bool {
    // SAFETY: this CPU's slot, valid for this run.
    TRACE_RUN.get_ptr(0).is_some_and(|r| unsafe { *r } != 0)
}

/// The record, while tracing.
#[inline(always)]
pub(crate) fn record() -> Option<*mut TraceRecord> {
    TRACE.get_ptr_mut(0)
}

/// While tracing: notes the counter slot `index` instead of moving it (true). The check
/// is inline (one per-CPU load on the fast path); the note is [`df_trace_stat`].
#[inline(always)]
pub(crate) fn stat(index: u32) -> bool {
    if !on() {
        return false;
    }
    df_trace_stat(index);
    true
}

/// Notes a counter slot (see [`stat`]). A *global* BPF function, as every note here: the
/// verifier checks its body once instead of on every path of every counting site, and the
/// traced branch adds only a call to the caller's paths.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_trace_stat(index: u32) -> u32 {
    if let Some(r) = record() {
        // SAFETY: map value pointer, valid for this run; only the (serialized) trace
        // writes it.
        unsafe {
            let n = (*r).n_stats as usize;
            if n < TRACE_STATS_MAX {
                (*r).stats[n] = index;
                (*r).n_stats = n as u32 + 1;
            }
        }
    }
    0
}

/// While tracing: notes the forwarding decision (`dragonflow_common::trace::FWD_*`).
#[inline(always)]
pub(crate) fn fwd(kind: u32, out_ifindex: u32, vni: u32, remote_ip: u32) {
    if on() {
        df_trace_fwd(kind, out_ifindex, vni, remote_ip);
    }
}

/// Notes the forwarding decision (see [`fwd`]; global: see [`df_trace_stat`]).
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_trace_fwd(
    kind: u32,
    out_ifindex: u32,
    vni: u32,
    remote_ip: u32,
) -> u32 {
    if let Some(r) = record() {
        // SAFETY: as in `df_trace_stat`.
        unsafe {
            (*r).fwd = kind;
            (*r).out_ifindex = out_ifindex;
            (*r).vni = vni;
            (*r).remote_ip = remote_ip;
        }
    }
    0
}

/// The mask of a copy's target and result ([`fwd::flood::clone_redirect`]): all ones in
/// a real run, 0 in a trace. A trace must send no copy (`BPF_PROG_TEST_RUN` would transmit
/// a clone); masking the target to ifindex 0, which no device has, makes
/// `bpf_clone_redirect` fail before it clones, and masking its result makes that failure
/// look like a sent copy. Arithmetic, not a branch: the copy loops (flood, group) are the
/// programs' most expensive part to verify, and a branch in them split their states (a
/// branch there took `df_aap_group` from 266k verified instructions past the 1M limit).
/// Read once per frame, before a loop.
///
/// [`fwd::flood::clone_redirect`]: crate::fwd::flood::clone_redirect
#[inline(always)]
pub(crate) fn send_mask() -> u32 {
    // SAFETY: this CPU's slot, valid for this run.
    TRACE_RUN
        .get_ptr(0)
        .map_or(u32::MAX, |r| unsafe { *r }.wrapping_sub(1))
}
