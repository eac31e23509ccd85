//! Conntrack garbage collection. `df_ct_v1` is a plain hash (a full table drops new flows
//! as `ct_full` rather than evicting established ones), so the agent removes what is dead:
//! - entries idle for longer than their state's timeout (`sg::ct_timeout_secs`, compared
//!   with `last_seen_ns` on CLOCK_MONOTONIC, the clock of `bpf_ktime_get_ns`);
//! - entries of taps that no longer have a port (the VM left; a new tap reusing the
//!   ifindex must not inherit them). The controller wakes the collector at once when a
//!   port leaves its tap; otherwise it runs every `--ct-gc-interval` seconds.
//!
//! A scan reads the whole table first and deletes afterwards (deleting while iterating a
//! BPF hash restarts the iteration). An idle entry is read again right before its
//! deletion and kept if the datapath refreshed it meanwhile; the window left (a packet
//! between that read and the delete, at the very end of the timeout) costs the flow its
//! entry, which the next packet re-creates or re-judges.
//!
//! **Per-port quota.** The collector is the only writer of `df_ct_freed_v1`: after a scan
//! it adds, per port and origin, the counted entries (`CT_F_COUNTED`, as read right before
//! the deletion) it deleted; the datapath counts its own inserts and deletions in
//! `df_ct_count_v1`, so a port's use is exact without a lock (see
//! `dragonflow_common::limits`). Both counters of a tap go once the tap has had no port
//! for a whole scan and holds no entry any more (nothing can count for it then); a tap
//! that changes port keeps them, and they stay exact (its old entries are purged and
//! counted as freed).

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::maps::{HashMap, MapData};
use dragonflow_common::{
    limits::origin_slot,
    maps,
    sg::{CT_F_COUNTED, CtKey, CtValue, ct_timeout_secs},
};
use tokio::time;
use tracing::{debug, info, warn};

use crate::{
    datapath::ct::{CtShared, is_missing},
    obs::state::CtReport,
    report::Chain,
};

/// What `/state` and the metrics show of the collector (read at scrape time).
impl CtReport for CtShared {
    fn entries(&self) -> u64 {
        self.entries.load(Ordering::Relaxed)
    }

    fn deleted(&self) -> (u64, u64) {
        (
            self.deleted_expired.load(Ordering::Relaxed),
            self.deleted_port_gone.load(Ordering::Relaxed),
        )
    }

    fn port_use(&self) -> BTreeMap<u32, [u64; 2]> {
        CtShared::port_use(self)
    }
}

/// CLOCK_MONOTONIC in ns, the clock `bpf_ktime_get_ns` reads.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether an entry idle since `last_seen_ns` is past its state's timeout at `now_ns`.
pub fn expired(v: &CtValue, now_ns: u64) -> bool {
    let timeout_ns = ct_timeout_secs(v.state).saturating_mul(1_000_000_000);
    v.last_seen_ns.saturating_add(timeout_ns) < now_ns
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Why {
    Expired,
    PortGone,
}

/// The entries of one scan to delete, decided from what the scan read: `ports_before` is
/// the port set read before the scan, `ports_after` after it (a tap missing from both has
/// no port); `purge` taps go whatever the sets say.
fn doomed(
    entries: impl IntoIterator<Item = (CtKey, CtValue)>,
    now_ns: u64,
    ports_before: Option<&BTreeSet<u32>>,
    purge: &BTreeSet<u32>,
) -> (u64, Vec<(CtKey, CtValue, Why)>) {
    let mut n = 0;
    let mut out = Vec::new();
    for (k, v) in entries {
        n += 1;
        let gone =
            purge.contains(&k.ifindex) || ports_before.is_some_and(|p| !p.contains(&k.ifindex));
        if gone {
            out.push((k, v, Why::PortGone));
        } else if expired(&v, now_ns) {
            out.push((k, v, Why::Expired));
        }
    }
    (n, out)
}

/// One scan; returns the map for the next one.
fn scan(
    mut map: HashMap<MapData, CtKey, CtValue>,
    shared: &CtShared,
) -> HashMap<MapData, CtKey, CtValue> {
    let started = Instant::now();
    let purge = std::mem::take(&mut *shared.purge.lock().expect("lock"));
    let before = shared.ports();
    let now = monotonic_ns();
    let mut left: BTreeMap<u32, u64> = BTreeMap::new();
    let (n, mut doomed) = doomed(
        map.iter()
            .filter_map(|r| {
                r.map_err(|e| debug!(map = maps::CT, "cannot read entry: {}", Chain(&e)))
                    .ok()
            })
            .inspect(|(k, _)| *left.entry(k.ifindex).or_default() += 1),
        now,
        before.as_ref(),
        &purge,
    );
    // A tap that got a port during the scan is in the set published since.
    let after = shared.ports();
    doomed.retain(|(k, _, why)| {
        *why != Why::PortGone
            || purge.contains(&k.ifindex)
            || after.as_ref().is_some_and(|p| !p.contains(&k.ifindex))
    });
    let (mut expired_n, mut gone_n, mut errors) = (0u64, 0u64, 0u64);
    let mut freed: BTreeMap<u32, [u64; 2]> = BTreeMap::new();
    for (k, v, why) in doomed {
        // Read again: refreshed since (alive), or replaced in place by a counted entry.
        let now_v = match map.get(&k, 0) {
            Ok(now_v) => now_v,
            Err(_) => continue,
        };
        if why == Why::Expired && now_v.last_seen_ns != v.last_seen_ns {
            continue;
        }
        match map.remove(&k) {
            Ok(()) => {
                match why {
                    Why::Expired => expired_n += 1,
                    Why::PortGone => gone_n += 1,
                }
                left.entry(k.ifindex).and_modify(|n| *n -= 1);
                if now_v.flags & CT_F_COUNTED != 0 {
                    freed.entry(k.ifindex).or_default()[origin_slot(now_v.origin)] += 1;
                }
            }
            Err(e) if is_missing(&e) => {}
            Err(e) => {
                errors += 1;
                debug!(map = maps::CT, "cannot delete entry: {}", Chain(&e));
            }
        }
    }
    let no_port = |i: u32| {
        let without = |p: &Option<BTreeSet<u32>>| p.as_ref().is_some_and(|p| !p.contains(&i));
        without(&before) && without(&after)
    };
    shared.settle_quota(&freed, &left, no_port);
    if errors > 0 {
        warn!(
            map = maps::CT,
            errors, "conntrack collector could not delete some entries"
        );
    }
    let left = n - expired_n - gone_n;
    shared.entries.store(left, Ordering::Relaxed);
    shared
        .deleted_expired
        .fetch_add(expired_n, Ordering::Relaxed);
    shared
        .deleted_port_gone
        .fetch_add(gone_n, Ordering::Relaxed);
    shared.scans.fetch_add(1, Ordering::Relaxed);
    if expired_n + gone_n > 0 {
        debug!(
            entries = left,
            expired = expired_n,
            port_gone = gone_n,
            took_ms = started.elapsed().as_millis() as u64,
            "conntrack collected"
        );
    }
    map
}

/// Runs forever: a scan every `interval`, or at once when woken by [`CtShared::purge`].
pub async fn run(map: HashMap<MapData, CtKey, CtValue>, interval: Duration, shared: Arc<CtShared>) {
    info!(
        interval_s = interval.as_secs_f32(),
        "conntrack collector running"
    );
    let mut map = Some(map);
    loop {
        tokio::select! {
            _ = time::sleep(interval) => {}
            _ = shared.wake.notified() => {}
        }
        let m = map.take().expect("the map is back after every scan");
        let s = shared.clone();
        // A full table is 262144 entries, two syscalls each: off the async workers.
        match tokio::task::spawn_blocking(move || scan(m, &s)).await {
            Ok(m) => map = Some(m),
            Err(e) => {
                warn!("conntrack collector stopped: {e}");
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use dragonflow_common::sg::{CT_REPLIED, CT_TCP_CLOSED, CT_TCP_ESTABLISHED, CT_UNREPLIED};

    use super::*;

    const S: u64 = 1_000_000_000;

    fn entry(ifindex: u32, lport: u16, state: u8, last_seen_s: u64) -> (CtKey, CtValue) {
        (
            CtKey {
                ifindex,
                lport,
                ..Default::default()
            },
            CtValue {
                last_seen_ns: last_seen_s * S,
                state,
                ..Default::default()
            },
        )
    }

    #[test]
    fn timeouts_by_state() {
        let now = 100_000 * S;
        let (_, v) = entry(1, 1, CT_TCP_CLOSED, 100_000 - 11);
        assert!(expired(&v, now));
        let (_, v) = entry(1, 1, CT_TCP_CLOSED, 100_000 - 9);
        assert!(!expired(&v, now));
        let (_, v) = entry(1, 1, CT_TCP_ESTABLISHED, 100_000 - 3600);
        assert!(!expired(&v, now));
        let (_, v) = entry(1, 1, CT_UNREPLIED, 100_000 - 31);
        assert!(expired(&v, now));
        let (_, v) = entry(1, 1, CT_REPLIED, 100_000 - 31);
        assert!(!expired(&v, now));
        // An unknown state has no lifetime.
        let (_, v) = entry(1, 1, 0, 100_000);
        assert!(!expired(&v, now), "not before the next nanosecond");
        assert!(expired(&v, now + 1));
    }

    #[test]
    fn doomed_entries() {
        let now = 1000 * S;
        let entries = vec![
            entry(1, 1, CT_TCP_ESTABLISHED, 999),
            entry(1, 2, CT_UNREPLIED, 900),
            entry(2, 3, CT_TCP_ESTABLISHED, 999),
            entry(3, 4, CT_TCP_ESTABLISHED, 999),
        ];
        let ports = BTreeSet::from([1, 3]);
        let (n, d) = doomed(entries.clone(), now, Some(&ports), &BTreeSet::new());
        assert_eq!(n, 4);
        let got: Vec<(u16, Why)> = d.iter().map(|(k, _, w)| (k.lport, *w)).collect();
        assert_eq!(got, vec![(2, Why::Expired), (3, Why::PortGone)]);
        // No port set yet: only expiry.
        let (_, d) = doomed(entries.clone(), now, None, &BTreeSet::new());
        assert_eq!(d.len(), 1);
        // A purged tap goes even though it still has a port (reused by another port).
        let (_, d) = doomed(entries, now, Some(&ports), &BTreeSet::from([3]));
        let got: Vec<u16> = d.iter().map(|(k, _, _)| k.lport).collect();
        assert_eq!(got, vec![2, 3, 4]);
    }

    #[test]
    fn monotonic_clock_moves() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0 && b >= a);
    }
}
