//! Per-port resource limits (issue 10): the flood rate limit and the conntrack quota.
//!
//! ## Flood rate limit
//! Frames the datapath copies to a whole network — broadcast, multicast, ARP requests and
//! neighbour solicitations the responder does not answer, gratuitous ARPs — and ARP
//! requests / NS for a shared allowed-address-pair IP (copied to its holders) pass a
//! per-port token bucket before any copy is made; over it they drop as
//! `flood_rate_limited`. What the responder answers is never limited (it costs one reply
//! to the sender, nothing to the network). Unicast, including copies of packets to a
//! shared VIP, is not limited: that is the VIP's traffic, bounded by its holders.
//!
//! The bucket is the generic cell rate algorithm (GCRA, a token bucket written as one
//! timestamp): a port's state is its *theoretical arrival time* `tat` in
//! [`FLOOD_RL`](crate::maps::FLOOD_RL); a frame at `now` passes when
//! `max(tat, now) - now <= tolerance` and then moves `tat` on by one `interval`
//! ([`flood_params`]). A full bucket passes `burst` frames back to back, then one every
//! `interval`.
//!
//! **Shared, not per-CPU.** A VM with a multi-queue NIC sends from several CPUs at once;
//! per-CPU buckets would give it `ncpus` × the rate and burst. The bucket is one value per
//! port, charged with an atomic add (BPF_XADD: the only read-modify-write the BPF target
//! compiles to without `-mcpu=v3`): every frame that passes adds its `interval`, so under
//! a storm the rate is exact whatever the number of CPUs. Two windows are not atomic and
//! are bounded: a check and its add are two steps (at most one extra frame per CPU racing
//! at the instant the bucket runs dry; the extra frames are still charged, so they are
//! paid back before the next one passes), and an idle bucket is re-based on `now` with a
//! plain store (an add racing with it is lost: one frame per CPU, only at the moment a
//! *full* bucket starts being used). Cost: the one cache line of the storming port moves
//! between the CPUs it sends from; other ports are untouched, and frames that are not
//! flooded never read it.
//!
//! ## Conntrack quota
//! A port may hold at most [`Limits::ct_port_quota`] entries of `df_ct_v1` *per origin
//! direction* (flows it opened — egress — and flows opened toward it — ingress — are
//! counted apart, so that a flood of new flows toward a port never takes the flows the
//! port opens itself). A new flow over it drops as `ct_port_quota`; established flows
//! never do. The table cannot be exhausted by fewer than
//! `CT_MAX / (2 × ct_port_quota)` ports (8 with the default).
//!
//! Counting is exact without any lock shared by the datapath and the agent, because each
//! counter has one kind of writer:
//! - [`CtCount`] in [`CT_COUNT`](crate::maps::CT_COUNT), the datapath's: `created` gets
//!   an atomic add when it inserts an entry, `removed` when it deletes one (a revalidated
//!   flow no rule allows any more);
//! - [`CtFreed`] in [`CT_FREED`](crate::maps::CT_FREED), the agent's (its conntrack
//!   collector is the only writer): the entries it deleted (expired, port gone).
//!
//! Use = `created - removed - freed`. Only entries flagged
//! [`CT_F_COUNTED`](crate::sg::CT_F_COUNTED) were counted, and only their deletion is
//! (entries older than the quota, or inserted when no counter could be made, stay out of
//! both sides). A deletion races with nothing: of two deleters of an entry exactly one
//! succeeds. The quota check and the add are two steps: CPUs inserting for the same port
//! at the same instant may take it over its quota by one entry each (never more, and the
//! count stays exact). When the agent deletes, the entry is gone before its `freed` is
//! written: the use reads high for that moment (stricter, never looser).

/// Value of [`crate::maps::LIMITS`] at index 0, written by the agent at start
/// (`--flood-rate`, `--flood-burst`, `--ct-port-quota`). All zero (a fresh map, or an
/// older agent) means no limit.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Limits {
    /// ns of bucket one flooded frame costs (10^9 / rate); 0 = no flood limit.
    pub flood_interval_ns: u64,
    /// How far ahead of now a port's `tat` may be for a frame to pass: (burst - 1) ×
    /// interval.
    pub flood_tolerance_ns: u64,
    /// Conntrack entries per port and origin direction; 0 = no quota (still counted).
    pub ct_port_quota: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<Limits>() == 24);

/// (interval, tolerance) of a bucket passing `burst` frames at once and `rate` frames per
/// second after (GCRA, see the module docs); `rate` 0 = off. `burst` is at least 1.
pub const fn flood_params(rate: u32, burst: u32) -> (u64, u64) {
    if rate == 0 {
        return (0, 0);
    }
    let interval = 1_000_000_000 / rate as u64;
    let burst = if burst == 0 { 1 } else { burst as u64 };
    (interval, (burst - 1) * interval)
}

/// Index of an origin direction (`sg::CT_ORIGIN_EGRESS` / `CT_ORIGIN_INGRESS`, 1 and 2)
/// in the per-origin counters.
#[inline(always)]
pub const fn origin_slot(origin: u8) -> usize {
    if origin == crate::sg::CT_ORIGIN_INGRESS {
        1
    } else {
        0
    }
}

/// Value of [`crate::maps::CT_COUNT`] (key: the port's tap ifindex): what the datapath
/// inserted and deleted, per origin ([`origin_slot`]). Monotonic; atomic adds only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtCount {
    pub created: [u64; 2],
    pub removed: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<CtCount>() == 32);

/// Value of [`crate::maps::CT_FREED`] (key: the port's tap ifindex): counted entries the
/// agent's collector deleted, per origin. Monotonic; written by the agent only.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CtFreed {
    pub freed: [u64; 2],
}
const _: () = assert!(core::mem::size_of::<CtFreed>() == 16);

/// Entries a port holds in origin slot `o`: created - removed - freed (never below 0: a
/// freed count written before the datapath's add is seen reads low for a moment).
#[inline(always)]
pub const fn ct_use(c: &CtCount, f: &CtFreed, o: usize) -> u64 {
    c.created[o]
        .saturating_sub(c.removed[o])
        .saturating_sub(f.freed[o])
}
