//! The detection task: takes sightings, NB snapshots and etcd sessions, claims, releases
//! and probes.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use etcd_client::{Compare, CompareOp, PutOptions, Txn, TxnOp};
use tokio::{
    sync::{mpsc, watch},
    time,
};
use tracing::{debug, info, warn};

use super::{
    claims::{
        ActiveError, Event, HistoryRecord, Key, TXN_ATTEMPTS, call, now_ms, push_history, read,
    },
    judge::{Damper, Sighting, Verdict, Why, holders, judge, stale},
    metrics::Stats,
    probes::{Prober, arp_probe, ns_probe},
};
use crate::{
    config::Config,
    datapath::sys,
    etcd::{paged, session::Session},
    nb::{
        ActivePort, NbSnapshot,
        active::{active_key, active_prefix, decode_active, history_key, parse_active_key},
    },
    obs::state::Shared,
};

/// Sightings queued between the GARP reader and this task; beyond that they are dropped (counted).
pub const SIGHTINGS_QUEUE: usize = 1024;

/// A claim deferred by the dampening.
#[derive(Clone, Debug)]
pub(super) struct Pending {
    at: Instant,
    sighting: Sighting,
}

/// Channels the task listens to.
pub struct Inputs {
    pub sightings: mpsc::Receiver<Sighting>,
    /// The controller's NB snapshot after each change (taps already reconciled).
    pub snapshots: watch::Receiver<Option<Arc<NbSnapshot>>>,
    /// `sync`'s etcd session.
    pub sessions: watch::Receiver<Option<Session>>,
    /// This task's counters (also bumped by the GARP reader for what it drops).
    pub stats: Arc<Stats>,
}

pub(super) struct Detector {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    stats: Arc<Stats>,
    nb: Arc<NbSnapshot>,
    have_nb: bool,
    session: Option<Session>,
    /// A new session (lease) whose claims have not been moved to it yet.
    reattach: bool,
    damp: BTreeMap<Key, Damper>,
    pending: BTreeMap<Key, Pending>,
    /// Unanswered probes per local active key.
    probes: BTreeMap<Key, u32>,
    prober: Option<Prober>,
}

/// Runs until the process ends.
pub async fn run(cfg: Arc<Config>, shared: Arc<Shared>, mut inputs: Inputs) {
    let prober = if cfg.probe_interval_ms == 0 {
        info!("liveness probes off (--probe-interval-ms 0)");
        None
    } else {
        match Prober::new() {
            Ok(p) => Some(p),
            Err(e) => {
                warn!(
                    "cannot open an AF_PACKET socket for liveness probes ({e}; needs CAP_NET_RAW): \
                     active ports are not probed, only GARPs, AAP changes and leases move them"
                );
                None
            }
        }
    };
    let mut d = Detector {
        cfg: cfg.clone(),
        shared,
        stats: inputs.stats.clone(),
        nb: Arc::new(NbSnapshot::default()),
        have_nb: false,
        session: None,
        reattach: false,
        damp: BTreeMap::new(),
        pending: BTreeMap::new(),
        probes: BTreeMap::new(),
        prober,
    };
    let period = Duration::from_millis(cfg.probe_interval_ms.max(1));
    let mut tick = time::interval(period);
    tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
    let far = || time::Instant::now() + Duration::from_secs(3600);
    loop {
        let next = d
            .pending
            .values()
            .map(|p| time::Instant::from_std(p.at))
            .min()
            .unwrap_or_else(far);
        tokio::select! {
            s = inputs.sightings.recv() => match s {
                Some(s) => d.on_sighting(s).await,
                None => return,
            },
            r = inputs.snapshots.changed() => {
                if r.is_err() {
                    return;
                }
                let snap = inputs.snapshots.borrow_and_update().clone();
                if let Some(snap) = snap {
                    d.on_snapshot(snap).await;
                }
            }
            r = inputs.sessions.changed() => {
                if r.is_err() {
                    return;
                }
                d.session = inputs.sessions.borrow_and_update().clone();
                d.reattach = d.session.is_some();
            }
            _ = tick.tick(), if d.prober.is_some() => d.probe().await,
            _ = time::sleep_until(next) => d.retry_pending().await,
        }
        if d.reattach && d.have_nb && d.session.is_some() {
            d.reattach = false;
            if let Err(e) = d.reattach_claims().await {
                warn!(
                    "moving claims to the new lease: {}",
                    crate::report::Chain(&e)
                );
                d.stats.etcd_errors.fetch_add(1, Ordering::Relaxed);
                d.reattach = true;
            }
        }
    }
}

impl Detector {
    fn stats(&self) -> &Stats {
        &self.stats
    }

    fn me(&self) -> &str {
        &self.cfg.chassis
    }

    async fn on_sighting(&mut self, s: Sighting) {
        if !self.have_nb {
            return;
        }
        match judge(self.me(), self.cfg.aap_mode, &self.nb, &s) {
            Verdict::Ignore(why) => {
                debug!(lport = %s.lport, ip = %s.ip, "sighting ignored: {why}");
            }
            Verdict::Holder { lswitch } => {
                let key = (lswitch, s.ip);
                if let Some(n) = self.probes.get_mut(&key)
                    && *n > 0
                {
                    *n = 0;
                    self.stats().probes_answered.fetch_add(1, Ordering::Relaxed);
                }
                // A move deferred for another port stays deferred, not dropped: an answer
                // to a probe is no announcement, and the dampening only delays moves.
                self.stats().claims_noop.fetch_add(1, Ordering::Relaxed);
            }
            Verdict::Claim { lswitch, why } => {
                let key = (lswitch, s.ip);
                let now = Instant::now();
                match self
                    .damp
                    .entry(key.clone())
                    .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                    .ready_at(now)
                {
                    None => self.claim(&key, &s, why).await,
                    Some(at) => {
                        if self
                            .pending
                            .insert(
                                key.clone(),
                                Pending {
                                    at,
                                    sighting: s.clone(),
                                },
                            )
                            .is_none()
                        {
                            self.stats().dampened.fetch_add(1, Ordering::Relaxed);
                            info!(
                                lswitch = %key.0,
                                ip = %key.1,
                                lport = %s.lport,
                                wait_ms = at.saturating_duration_since(now).as_millis() as u64,
                                "claim dampened (the IP moved recently)"
                            );
                        }
                    }
                }
            }
        }
    }

    /// Claims deferred by the dampening whose time has come, re-judged against the
    /// current snapshot.
    async fn retry_pending(&mut self) {
        let now = Instant::now();
        let due: Vec<Key> = self
            .pending
            .iter()
            .filter(|(_, p)| p.at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            let Some(p) = self.pending.remove(&key) else {
                continue;
            };
            match judge(self.me(), self.cfg.aap_mode, &self.nb, &p.sighting) {
                Verdict::Claim { lswitch, why } if lswitch == key.0 => {
                    match self
                        .damp
                        .entry(key.clone())
                        .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                        .ready_at(now)
                    {
                        None => self.claim(&key, &p.sighting, why).await,
                        Some(at) => {
                            self.pending.insert(key, Pending { at, ..p });
                        }
                    }
                }
                v => debug!(lswitch = %key.0, ip = %key.1, "deferred claim dropped: {v:?}"),
            }
        }
    }

    /// Claims `key` for the sighting's port (compare-and-put with the history).
    async fn claim(&mut self, key: &Key, s: &Sighting, why: Why) {
        let Some(sess) = self.session.clone() else {
            warn!(lswitch = %key.0, ip = %key.1, lport = %s.lport, "cannot claim: {}", ActiveError::NoSession);
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        for _ in 0..TXN_ATTEMPTS {
            let t0 = Instant::now();
            let cur = match read(&mut client, key, &ak, &hk).await {
                Ok(c) => c,
                Err(e) => return self.etcd_failed("claim", key, &e),
            };
            if let Some((e, kv)) = &cur.entry
                && e.port == s.lport
                && e.mac == s.mac
                && e.chassis == self.cfg.chassis
                && kv.lease() == sess.lease
            {
                self.stats().claims_noop.fetch_add(1, Ordering::Relaxed);
                return;
            }
            if let Some((e, _)) = &cur.entry
                && e.port != s.lport
            {
                // A holder our snapshot did not know yet: someone moved it just now, a
                // move that counts for the dampening (a known holder changes nothing, and
                // the caller has checked the back-off against it).
                let now = Instant::now();
                let damp = self
                    .damp
                    .entry(key.clone())
                    .or_insert_with(|| Damper::new(self.cfg.claim_backoff));
                if damp.observe(&e.port, e.since_ms, now)
                    && let Some(at) = damp.ready_at(now)
                {
                    self.stats().dampened.fetch_add(1, Ordering::Relaxed);
                    self.pending.insert(
                        key.clone(),
                        Pending {
                            at,
                            sighting: s.clone(),
                        },
                    );
                    return;
                }
            }
            let entry = ActivePort {
                lswitch: key.0.clone(),
                ip: key.1,
                port: s.lport.clone(),
                mac: s.mac,
                chassis: self.cfg.chassis.clone(),
                since_ms: now_ms(),
                reason: why.name().to_string(),
            };
            let mut history = cur.history;
            push_history(
                &mut history,
                HistoryRecord {
                    at_ms: entry.since_ms,
                    event: Event::Claimed,
                    port: entry.port.clone(),
                    mac: entry.mac,
                    chassis: entry.chassis.clone(),
                    why,
                    by: self.cfg.chassis.clone(),
                },
            );
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(ak.as_str(), CompareOp::Equal, cur.entry_rev),
                    Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
                ])
                .and_then([
                    TxnOp::put(
                        ak.as_str(),
                        serde_json::to_vec(&entry).expect("serialisable"),
                        Some(PutOptions::new().with_lease(sess.lease)),
                    ),
                    TxnOp::put(
                        hk.as_str(),
                        serde_json::to_vec(&history).expect("serialisable"),
                        None,
                    ),
                ]);
            let resp = match call("claim txn", client.txn(txn)).await {
                Ok(r) => r,
                Err(e) => return self.etcd_failed("claim", key, &e),
            };
            let etcd = t0.elapsed();
            if !resp.succeeded() {
                self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
                debug!(lswitch = %key.0, ip = %key.1, "claim lost a race; re-reading");
                continue;
            }
            let latency = Duration::from_nanos(sys::monotonic_ns().saturating_sub(s.ts_ns));
            let st = self.stats();
            st.claims.fetch_add(1, Ordering::Relaxed);
            st.claim_etcd.observe(etcd);
            st.claim_latency.observe(latency);
            self.damp
                .entry(key.clone())
                .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                .observe(&entry.port, entry.since_ms, Instant::now());
            self.probes.remove(key);
            info!(
                lswitch = %key.0,
                ip = %key.1,
                lport = %entry.port,
                mac = %entry.mac,
                why = why.name(),
                previous = cur.entry.as_ref().map_or("-", |(e, _)| e.port.as_str()),
                etcd_ms = format_args!("{:.2}", etcd.as_secs_f64() * 1e3),
                since_event_ms = format_args!("{:.2}", latency.as_secs_f64() * 1e3),
                "claimed active port"
            );
            return;
        }
        warn!(lswitch = %key.0, ip = %key.1, "claim gave up after {TXN_ATTEMPTS} lost races");
    }

    fn etcd_failed(&self, what: &str, key: &Key, e: &ActiveError) {
        self.stats().etcd_errors.fetch_add(1, Ordering::Relaxed);
        warn!(lswitch = %key.0, ip = %key.1, "{what}: {}", crate::report::Chain(e));
    }

    /// Removes `key` if `port` still holds it, recording why.
    async fn release(&mut self, key: &Key, port: &str, why: Why) {
        let Some(sess) = self.session.clone() else {
            debug!(lswitch = %key.0, ip = %key.1, "cannot release now: no etcd session");
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        for _ in 0..TXN_ATTEMPTS {
            let cur = match read(&mut client, key, &ak, &hk).await {
                Ok(c) => c,
                Err(e) => return self.etcd_failed("release", key, &e),
            };
            let Some((e, _)) = &cur.entry else { return };
            if e.port != port {
                return;
            }
            let mut history = cur.history;
            push_history(
                &mut history,
                HistoryRecord {
                    at_ms: now_ms(),
                    event: Event::Released,
                    port: e.port.clone(),
                    mac: e.mac,
                    chassis: e.chassis.clone(),
                    why,
                    by: self.cfg.chassis.clone(),
                },
            );
            let txn = Txn::new()
                .when([
                    Compare::mod_revision(ak.as_str(), CompareOp::Equal, cur.entry_rev),
                    Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
                ])
                .and_then([
                    TxnOp::delete(ak.as_str(), None),
                    TxnOp::put(
                        hk.as_str(),
                        serde_json::to_vec(&history).expect("serialisable"),
                        None,
                    ),
                ]);
            match call("release txn", client.txn(txn)).await {
                Ok(r) if r.succeeded() => {
                    self.stats().removed(why);
                    if why == Why::ProbeLoss {
                        self.stats().probes_expired.fetch_add(1, Ordering::Relaxed);
                    }
                    self.probes.remove(key);
                    if let Some(d) = self.damp.get_mut(key) {
                        d.cleared();
                    }
                    info!(lswitch = %key.0, ip = %key.1, lport = port, why = why.name(), "removed active port (broadcast way until the next claim)");
                    return;
                }
                Ok(_) => {
                    self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => return self.etcd_failed("release", key, &e),
            }
        }
    }

    /// Appends `lease_lost` to the history of a claim that vanished without a removal
    /// record (its chassis' lease expired).
    async fn record_lease_lost(&mut self, key: &Key, gone: &ActivePort) {
        let Some(sess) = self.session.clone() else {
            return;
        };
        let mut client = sess.client.clone();
        let (ak, hk) = (
            active_key(&self.cfg.prefix, &key.0, key.1),
            history_key(&self.cfg.prefix, &key.0, key.1),
        );
        let cur = match read(&mut client, key, &ak, &hk).await {
            Ok(c) => c,
            Err(e) => return self.etcd_failed("history", key, &e),
        };
        if cur.entry_rev != 0
            || !cur.history.last().is_some_and(|r| {
                r.event == Event::Claimed && r.port == gone.port && r.chassis == gone.chassis
            })
        {
            return; // re-claimed, or removed with a record already
        }
        let mut history = cur.history;
        push_history(
            &mut history,
            HistoryRecord {
                at_ms: now_ms(),
                event: Event::Released,
                port: gone.port.clone(),
                mac: gone.mac,
                chassis: gone.chassis.clone(),
                why: Why::LeaseLost,
                by: self.cfg.chassis.clone(),
            },
        );
        let txn = Txn::new()
            .when([
                Compare::version(ak.as_str(), CompareOp::Equal, 0),
                Compare::mod_revision(hk.as_str(), CompareOp::Equal, cur.history_rev),
            ])
            .and_then([TxnOp::put(
                hk.as_str(),
                serde_json::to_vec(&history).expect("serialisable"),
                None,
            )]);
        match call("history txn", client.txn(txn)).await {
            Ok(r) if r.succeeded() => {
                self.stats().removed(Why::LeaseLost);
                info!(lswitch = %key.0, ip = %key.1, lport = %gone.port, chassis = %gone.chassis, "active port lost with its chassis' lease");
            }
            // Another agent recorded it first, or it was claimed again: nothing to add.
            Ok(_) => {}
            Err(e) => self.etcd_failed("history", key, &e),
        }
    }

    async fn on_snapshot(&mut self, snap: Arc<NbSnapshot>) {
        let old = std::mem::replace(&mut self.nb, snap);
        let first = !self.have_nb;
        self.have_nb = true;
        let now = Instant::now();
        // Moves seen in etcd feed the dampening (ours were recorded when written).
        for (key, a) in &self.nb.active_ports {
            self.damp
                .entry(key.clone())
                .or_insert_with(|| Damper::new(self.cfg.claim_backoff))
                .observe(&a.port, a.since_ms, now);
        }
        let me = self.cfg.chassis.clone();
        let mut lost = Vec::new();
        if !first {
            for (key, a) in &old.active_ports {
                if self.nb.active_ports.contains_key(key) {
                    continue;
                }
                if let Some(d) = self.damp.get_mut(key) {
                    d.cleared();
                }
                // Those who may take over record the loss of a lease; so does the loser.
                let candidate = holders(&self.nb, &key.0, key.1)
                    .iter()
                    .any(|p| p.chassis.as_deref() == Some(me.as_str()));
                if candidate || a.chassis == me {
                    lost.push((key.clone(), a.clone()));
                }
            }
        }
        self.damp
            .retain(|k, d| d.remembers(now) || self.pending.contains_key(k));
        for (key, a) in lost {
            self.record_lease_lost(&key, &a).await;
        }
        self.release_stale().await;
        self.count_entries();
    }

    /// Removes local claims whose port no longer qualifies.
    async fn release_stale(&mut self) {
        let me = self.cfg.chassis.clone();
        let stale: Vec<(Key, String, Why)> = self
            .nb
            .active_ports
            .iter()
            .filter(|(_, a)| a.chassis == me)
            .filter_map(|(k, a)| stale(&me, &self.nb, a).map(|w| (k.clone(), a.port.clone(), w)))
            .collect();
        for (key, port, why) in stale {
            self.release(&key, &port, why).await;
        }
    }

    fn count_entries(&self) {
        let me = self.me();
        self.stats()
            .entries
            .store(self.nb.active_ports.len() as u64, Ordering::Relaxed);
        self.stats().local_entries.store(
            self.nb
                .active_ports
                .values()
                .filter(|a| a.chassis == me)
                .count() as u64,
            Ordering::Relaxed,
        );
    }

    /// One probe round (see the module doc); also retries removals that failed.
    async fn probe(&mut self) {
        if !self.have_nb {
            return;
        }
        self.release_stale().await;
        let me = self.cfg.chassis.clone();
        let taps = self.shared.taps.by_lport();
        let local: Vec<(Key, ActivePort)> = self
            .nb
            .active_ports
            .iter()
            .filter(|(_, a)| a.chassis == me && stale(&me, &self.nb, a).is_none())
            .map(|(k, a)| (k.clone(), a.clone()))
            .collect();
        let keep: BTreeSet<Key> = local.iter().map(|(k, _)| k.clone()).collect();
        self.probes.retain(|k, _| keep.contains(k));
        let misses = self.cfg.probe_misses.max(1);
        for (key, a) in local {
            let n = self.probes.entry(key.clone()).or_insert(0);
            if *n >= misses {
                info!(lswitch = %key.0, ip = %key.1, lport = %a.port, misses, "active port does not answer probes");
                self.release(&key, &a.port, Why::ProbeLoss).await;
                continue;
            }
            *n += 1;
            // A holder whose tap is gone (VM stopped, port still bound) cannot answer:
            // the probe counts as sent and unanswered.
            let Some(&ifindex) = taps.get(&a.port) else {
                continue;
            };
            let frame = match a.ip {
                IpAddr::V4(ip) => arp_probe(a.mac, ip),
                IpAddr::V6(ip) => ns_probe(a.mac, ip),
            };
            let Some(prober) = &self.prober else { return };
            match prober.send(ifindex, &frame) {
                Ok(()) => {
                    self.stats.probes_sent.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => {
                    self.stats.probe_errors.fetch_add(1, Ordering::Relaxed);
                    debug!(lport = %a.port, ifindex, "probe not sent: {e}");
                }
            }
        }
    }

    /// Moves this chassis' valid claims to the current lease (keeping `since`), and
    /// removes the invalid ones.
    async fn reattach_claims(&mut self) -> Result<(), ActiveError> {
        let Some(sess) = self.session.clone() else {
            return Err(ActiveError::NoSession);
        };
        let mut client = sess.client.clone();
        let range = call(
            "range get activeport",
            paged::get_prefix(&mut paged::kv(&client), &active_prefix(&self.cfg.prefix)),
        )
        .await?;
        let me = self.cfg.chassis.clone();
        for kv in &range.kvs {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let Some(Ok((ls, ip))) = parse_active_key(&self.cfg.prefix, &key) else {
                continue;
            };
            let Ok(a) = decode_active(&ls, ip, kv.value()) else {
                continue;
            };
            if a.chassis != me || kv.lease() == sess.lease {
                continue;
            }
            if let Some(why) = stale(&me, &self.nb, &a) {
                self.release(&(ls, ip), &a.port, why).await;
                continue;
            }
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    key.as_str(),
                    CompareOp::Equal,
                    kv.mod_revision(),
                )])
                .and_then([TxnOp::put(
                    key.as_str(),
                    kv.value().to_vec(),
                    Some(PutOptions::new().with_lease(sess.lease)),
                )]);
            let r = call("reattach txn", client.txn(txn)).await?;
            if r.succeeded() {
                self.stats().reattached.fetch_add(1, Ordering::Relaxed);
                info!(lswitch = %ls, ip = %ip, lport = %a.port, "claim moved to this agent's lease (kept, probes re-validate it)");
            } else {
                self.stats().conflicts.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }
}
