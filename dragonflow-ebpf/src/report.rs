//! The funnel of what a decided frame leaves behind for operators: its global counter
//! slot (`stats`), its port's counters (`df_port_stats_v1`) and, for a drop while a
//! monitor client listens, a drop event (`df_drop_ev_v1`, `dfctl monitor`). Every entry
//! point counts its outcome through [`pass`] / [`drop`] (drops only per port, see
//! [`pass`]); the security-group stage counts
//! its `to_vm` drops through [`port_drop`]. `PORT_STATS`, `DROP_EVENTS` and `DROP_RATE`
//! are touched nowhere else, so the trace mode (`trace`: a traced frame must leave nothing
//! behind) is honoured here, at the top of [`port_count_at`] and of [`event`]; the global
//! slot notes itself (`stats`).
//!
//! Cost: nothing on a pass beyond its global slot. A drop adds one per-CPU hash lookup
//! of the tap (a missing entry is skipped: the agent makes one per managed tap, the
//! datapath never inserts) and one array lookup (`df_monitor_v1`); only when a client
//! listens does it call the global function that reads the clock, applies the per-CPU
//! rate limit and copies the frame's first bytes into the ring buffer — verified once, not
//! at every drop site.
//!
//! Ground layer. May import `ctx`, `maps`, `stats`, `trace`.

use aya_ebpf::{
    bindings::{__sk_buff, xdp_md},
    helpers::{bpf_ktime_get_ns, bpf_skb_load_bytes, bpf_xdp_load_bytes},
    programs::{TcContext, XdpContext},
};
use dragonflow_common::{
    event::{DROP_EVENT_FRAME, DropEvent, MON_F_DROPS, PORT_STATS_PER_DIR},
    verdict::{Direction, DropReason, EventStat, PassPath, Stat, stat_index},
};

use crate::{
    maps::{DROP_EVENTS, DROP_RATE, MONITOR, PORT_STATS},
    stats, trace,
};

/// A hook whose frame a drop event can copy (through the hook's global function).
pub(crate) trait Frame {
    /// Emits the drop event of `ifindex` (`what`: direction << 8 | reason).
    fn drop_event(&self, ifindex: u32, what: u32);
}

impl Frame for XdpContext {
    #[inline(always)]
    fn drop_event(&self, ifindex: u32, what: u32) {
        df_drop_event_xdp(self.ctx, ifindex, what);
    }
}

impl Frame for TcContext {
    #[inline(always)]
    fn drop_event(&self, ifindex: u32, what: u32) {
        df_drop_event_tc(self.skb.skb, ifindex, what);
    }
}

/// A frame allowed in `dir` by `path` (its outcome slot). Not counted per port: a
/// per-CPU hash lookup on every allowed frame measured +8 to +15 % on the allowed-IPv4
/// fast path (docs/BENCHMARKS.md); the agent reports a port's frames from the kernel's
/// own counters of its tap instead.
#[inline(always)]
pub(crate) fn pass(dir: Direction, path: PassPath) {
    stats::pass_in(dir, path);
}

/// A frame of `ifindex` dropped in `dir`: every counter and, while a monitor client
/// listens, an event.
#[inline(always)]
pub(crate) fn drop<F: Frame>(ctx: &F, ifindex: u32, dir: Direction, reason: DropReason) {
    stats::drop_in(dir, reason);
    port_count(ifindex, dir, reason as u32);
    event(ctx, ifindex, dir, reason);
}

/// A drop whose counters were already made ([`port_drop`], the security-group stage's
/// `to_vm` drop): only its event.
#[inline(always)]
pub(crate) fn drop_event_only<F: Frame>(ctx: &F, ifindex: u32, dir: Direction, reason: DropReason) {
    event(ctx, ifindex, dir, reason);
}

/// A drop counted without the frame at hand (the security-group stage's ingress): the
/// global slot and the port's; the delivering program raises its event. Through the
/// global [`df_port_drop`]: the copy loops (flood, group) reach it once per copy, and
/// inline, its trace checks were verified again on every iteration of every path (the
/// same cost `trace` measured for the global slot alone: `df_aap_group` 266k -> 527k).
#[inline(always)]
pub(crate) fn port_drop(ifindex: u32, dir: Direction, reason: DropReason) {
    df_port_drop(
        ifindex,
        stat_index(dir, Stat::Drop(reason)),
        dir as u64 * PORT_STATS_PER_DIR as u64 + reason as u64,
    );
}

/// [`port_drop`]'s counting (`stat`: the global slot, `slot`: the port's), verified once.
/// `slot` is 64-bit: a 32-bit one is zero-extended once for the bounds check and again,
/// in another register, for the access, and the verifier cannot tie the two.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_port_drop(ifindex: u32, stat: u32, slot: u64) -> u32 {
    stats::bump_at(stat);
    port_count_at(ifindex, slot as usize);
    0
}

/// The start of every drop event: a traced run raises none (it must leave nothing behind,
/// and `BPF_PROG_TEST_RUN` would put a frame a VM never sent in front of operators).
#[inline(always)]
fn event<F: Frame>(ctx: &F, ifindex: u32, dir: Direction, reason: DropReason) {
    if trace::on() {
        return;
    }
    match MONITOR.get(0) {
        Some(m) if m.flags & MON_F_DROPS != 0 => {
            ctx.drop_event(ifindex, ((dir as u32) << 8) | reason as u32)
        }
        _ => {}
    }
}

/// The only writer of `PORT_STATS`: the drop reason's slot (slot 0, passes, is left to
/// the agent's view, see [`pass`]).
#[inline(always)]
fn port_count(ifindex: u32, dir: Direction, slot: u32) {
    port_count_at(
        ifindex,
        (dir as u32 * PORT_STATS_PER_DIR as u32 + slot) as usize,
    );
}

/// [`port_count`] at the value's index `i` (`direction * PORT_STATS_PER_DIR + slot`). A
/// traced run counts nothing here: its global slot is noted by `stats`.
#[inline(always)]
fn port_count_at(ifindex: u32, i: usize) {
    if trace::on() {
        return;
    }
    if let Some(p) = PORT_STATS.get_ptr_mut(ifindex) {
        // SAFETY: this CPU's value of an existing entry, valid for this run.
        if let Some(c) = unsafe { (*p).c.get_mut(i) } {
            *c += 1;
        }
    }
}

/// Nanoseconds of a rate window.
const WINDOW_NS: u64 = 1_000_000_000;

/// The drop event of a TC program, as a *global* BPF function: verified once (from its
/// BTF signature) instead of at every drop site on every path of the caller.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_drop_event_tc(skb: *mut __sk_buff, ifindex: u32, what: u32) -> u32 {
    if skb.is_null() {
        return 1;
    }
    // SAFETY: the program's context (BTF argument).
    let len = unsafe { (*skb).len };
    emit(ifindex, what, len, |buf, n| {
        // SAFETY: `buf` is `n <= DROP_EVENT_FRAME` bytes of a reserved ring-buffer record.
        unsafe { bpf_skb_load_bytes(skb.cast(), 0, buf, n) }
    })
}

/// [`df_drop_event_tc`] for XDP.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_drop_event_xdp(xdp: *mut xdp_md, ifindex: u32, what: u32) -> u32 {
    if xdp.is_null() {
        return 1;
    }
    // SAFETY: the program's context (BTF argument).
    let len = unsafe { (*xdp).data_end.wrapping_sub((*xdp).data) };
    emit(ifindex, what, len, |buf, n| {
        // SAFETY: as in `df_drop_event_tc`.
        unsafe { bpf_xdp_load_bytes(xdp, 0, buf, n) }
    })
}

#[inline(always)]
fn emit(
    ifindex: u32,
    what: u32,
    len: u32,
    load: impl FnOnce(*mut core::ffi::c_void, u32) -> i64,
) -> u32 {
    // A number, not a `Direction`: LLVM turns a conversion into a table lookup the
    // verifier cannot bound.
    let dir = what >> 8;
    if dir > Direction::FromTunnel as u32 {
        return 1;
    }
    let Some(m) = MONITOR.get(0) else { return 1 };
    let rate = u64::from(m.rate);
    let Some(w) = DROP_RATE.get_ptr_mut(0) else {
        return 1;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    // SAFETY: this CPU's slot, valid for this run (a program does not migrate mid-run).
    let w = unsafe { &mut *w };
    if now.wrapping_sub(w.window_ns) >= WINDOW_NS {
        w.window_ns = now;
        w.sent = 0;
    }
    if w.sent >= rate {
        stats::event_at(dir, EventStat::DropEventRateLimited);
        return 0;
    }
    let Some(mut entry) = DROP_EVENTS.reserve::<DropEvent>(0) else {
        stats::event_at(dir, EventStat::DropEventRingFull);
        return 0;
    };
    let e = entry.as_mut_ptr();
    // Written field by field: a `DropEvent` on the stack would not fit next to the
    // caller's frame.
    // SAFETY: `e` is a reserved record of `size_of::<DropEvent>()` bytes.
    unsafe {
        (*e).ts_ns = now;
        (*e).ifindex = ifindex;
        (*e).direction = dir;
        (*e).reason = what & 0xff;
        (*e).frame_len = len;
        (*e)._pad = 0;
        // Read back: otherwise LLVM tests `len != 0` on the packet pointers it came from
        // (XDP), which tells the verifier nothing about the length it passes.
        let len = core::ptr::read_volatile(&raw const (*e).frame_len);
        let n = if len > DROP_EVENT_FRAME as u32 {
            DROP_EVENT_FRAME as u32
        } else {
            len
        };
        let mut captured = 0;
        if n > 0 && load((*e).frame.as_mut_ptr().cast(), n) == 0 {
            captured = n;
        }
        (*e).captured = captured;
    }
    entry.submit(0);
    w.sent += 1;
    stats::event_at(dir, EventStat::DropEventSent);
    0
}
