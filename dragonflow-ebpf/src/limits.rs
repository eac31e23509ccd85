//! Per-port limits (issue 10): the flood bucket and the conntrack quota. What they limit,
//! why the bucket is shared by the CPUs and why the counts stay exact:
//! `dragonflow_common::limits`.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_ktime_get_ns};
use dragonflow_common::{
    limits::{CtCount, origin_slot},
    verdict::DropReason,
};

use crate::{
    maps::{CT_COUNT, CT_FREED, FLOOD_RL, LIMITS},
    trace,
};

/// `*p += v`, atomically. The result is not used, so this is a plain BPF_XADD (the BPF
/// target cannot return it without `-mcpu=v3`, and has no compare-and-swap either).
#[inline(always)]
fn add(p: *mut u64, v: u64) {
    // SAFETY: `p` points into a map value valid for this program run, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(p, v) };
}

/// The flood bucket of the sending port `ifindex` (a tap): 0 to flood the frame, else
/// `FloodRateLimited`. A *global* BPF function (scalars in, a scalar out): verified once,
/// not on every path of the pipeline that floods. No limit configured, or no bucket can be
/// made (cannot happen: an LRU makes room): 0.
#[unsafe(no_mangle)]
#[inline(never)]
pub(crate) extern "C" fn df_flood_admit(ifindex: u32) -> u32 {
    let Some(l) = LIMITS.get(0) else {
        return 0;
    };
    let (interval, tolerance) = (l.flood_interval_ns, l.flood_tolerance_ns);
    if interval == 0 {
        return 0;
    }
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let traced = trace::on();
    let p = match FLOOD_RL.get_ptr_mut(ifindex) {
        Some(p) => p,
        // A trace makes no bucket: a new one admits the frame.
        None if traced => return 0,
        None => {
            // A new bucket is full: its arrival time is now. Another CPU may make it
            // first (EEXIST): either is the same.
            let _ = FLOOD_RL.insert(ifindex, now, BPF_NOEXIST as u64);
            match FLOOD_RL.get_ptr_mut(ifindex) {
                Some(p) => p,
                None => return 0,
            }
        }
    };
    // SAFETY: a map value pointer, valid for this run; other CPUs add to it concurrently.
    let mut tat = unsafe { core::ptr::read_volatile(p) };
    if traced {
        // The same decision, without touching the bucket.
        let tat = if tat < now { now } else { tat };
        return if tat - now > tolerance {
            DropReason::FloodRateLimited as u32
        } else {
            0
        };
    }
    if tat < now {
        // The bucket is full (idle since): re-based on now, with a plain store (the
        // bounded race is in the common module's docs).
        // SAFETY: as above.
        unsafe { core::ptr::write_volatile(p, now) };
        tat = now;
    }
    if tat - now > tolerance {
        return DropReason::FloodRateLimited as u32;
    }
    add(p, interval);
    0
}

/// [`df_flood_admit`] as a `Result`.
#[inline(always)]
pub(crate) fn flood(ifindex: u32) -> Result<(), DropReason> {
    match df_flood_admit(ifindex) {
        0 => Ok(()),
        _ => Err(DropReason::FloodRateLimited),
    }
}

/// Before inserting a conntrack entry of port `ifindex` created in direction `origin`:
/// the port's counters (made if missing, from `zero`: scratch memory off the stack, zeroed
/// here), or `CtPortQuota` when
/// the port already holds its quota of entries of that origin. `Ok(None)` when no counter
/// can be made (the table of counters is full: cannot happen, it has a slot per possible
/// port): the entry is then inserted uncounted, and its deletion will not be counted
/// either.
#[inline(always)]
pub(crate) fn ct_admit(
    ifindex: u32,
    origin: u8,
    zero: &mut CtCount,
) -> Result<Option<*mut CtCount>, DropReason> {
    let c = match CT_COUNT.get_ptr_mut(ifindex) {
        Some(c) => c,
        // A trace makes no counters: a port without any holds no entry, under any quota.
        None if trace::on() => return Ok(None),
        None => {
            *zero = CtCount::default();
            let _ = CT_COUNT.insert(ifindex, zero, BPF_NOEXIST as u64);
            match CT_COUNT.get_ptr_mut(ifindex) {
                Some(c) => c,
                None => return Ok(None),
            }
        }
    };
    let quota = LIMITS.get(0).map_or(0, |l| l.ct_port_quota);
    if quota == 0 {
        return Ok(Some(c));
    }
    // SAFETY: map value pointers, valid for this run (read once each).
    let (created, removed, freed) = unsafe {
        let freed = CT_FREED.get_ptr(ifindex);
        if origin_slot(origin) == 0 {
            (
                (*c).created[0],
                (*c).removed[0],
                freed.map_or(0, |f| (*f).freed[0]),
            )
        } else {
            (
                (*c).created[1],
                (*c).removed[1],
                freed.map_or(0, |f| (*f).freed[1]),
            )
        }
    };
    if created.saturating_sub(removed).saturating_sub(freed) >= u64::from(quota) {
        return Err(DropReason::CtPortQuota);
    }
    Ok(Some(c))
}

/// A counted entry of origin `origin` was inserted, on the counters `c` of [`ct_admit`].
#[inline(always)]
pub(crate) fn ct_created(c: *mut CtCount, origin: u8) {
    if trace::on() {
        return;
    }
    // SAFETY: a map value pointer from `ct_admit`, valid for this run.
    unsafe {
        if origin_slot(origin) == 0 {
            add(core::ptr::addr_of_mut!((*c).created[0]), 1);
        } else {
            add(core::ptr::addr_of_mut!((*c).created[1]), 1);
        }
    }
}

/// The datapath deleted a counted entry of port `ifindex` created in direction `origin`.
#[inline(always)]
pub(crate) fn ct_removed(ifindex: u32, origin: u8) {
    if trace::on() {
        return;
    }
    if let Some(c) = CT_COUNT.get_ptr_mut(ifindex) {
        // SAFETY: a map value pointer, valid for this run.
        unsafe {
            if origin_slot(origin) == 0 {
                add(core::ptr::addr_of_mut!((*c).removed[0]), 1);
            } else {
                add(core::ptr::addr_of_mut!((*c).removed[1]), 1);
            }
        }
    }
}
