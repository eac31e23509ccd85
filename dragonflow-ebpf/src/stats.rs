//! Counters: one per-CPU `u64` slot per outcome (Katran style), so every packet's fate is
//! visible to the agent's metrics. A traced run (`trace`) moves none: it notes them.

use dragonflow_common::verdict::{
    Direction, DropReason, EventStat, PassPath, STATS_PER_DIR, Stat, stat_index,
};

use crate::{maps::STATS, trace};

#[inline(always)]
fn bump(index: u32) {
    // A traced run notes the slot instead (see `trace`).
    if trace::stat(index) {
        return;
    }
    if let Some(p) = STATS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot of this CPU; BPF programs do not migrate mid-run.
        unsafe { *p += 1 };
    }
}

#[inline(always)]
pub(crate) fn pass(path: PassPath) {
    bump(stat_index(Direction::FromVm, Stat::Pass(path)));
}

#[inline(always)]
pub(crate) fn event(e: EventStat) {
    bump(stat_index(Direction::FromVm, Stat::Event(e)));
}

/// A drop (counted through `report`, which also counts it per port).
#[inline(always)]
pub(crate) fn drop_in(dir: Direction, reason: DropReason) {
    bump(stat_index(dir, Stat::Drop(reason)));
}

#[inline(always)]
pub(crate) fn pass_in(dir: Direction, path: PassPath) {
    bump(stat_index(dir, Stat::Pass(path)));
}

/// A side counter of another direction (the security-group stage counts in the
/// direction it judges: `to_vm` for ingress).
#[inline(always)]
pub(crate) fn event_in(dir: Direction, e: EventStat) {
    bump(stat_index(dir, Stat::Event(e)));
}

/// [`event_in`] with the direction as a number (`< 3`, checked by the caller).
#[inline(always)]
pub(crate) fn event_at(dir: u32, e: EventStat) {
    bump(dir * STATS_PER_DIR + stat_index(Direction::FromVm, Stat::Event(e)));
}

/// Moves (or, in a trace, notes) the slot `index` computed by the caller: for
/// `report`'s global function that counts the receiver's ingress drops.
#[inline(always)]
pub(crate) fn bump_at(index: u32) {
    bump(index);
}
