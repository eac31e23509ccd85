//! The one task that owns the datapath: it turns NB events and tap changes into attached
//! programs and map entries.
//!
//! Order of things, so that a restarted agent never cuts traffic:
//! 1. adopt: pinned maps were reused at load time; pinned links are adopted (their program
//!    atomically replaced) as soon as their tap is seen; new taps get the pipeline at once,
//!    with no entries, so they are dropped (fail closed) until their port is known;
//! 2. sync: nothing is written to the maps before the first full read of etcd;
//! 3. prune: only then are stale entries and pins of vanished taps removed; afterwards every
//!    change is a diff against what the maps hold, never a flush.
//!
//! A tap keeps its program while it exists, even if its port goes away: a VM whose port
//! was deleted must not get an unfiltered tap.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::Ebpf;
use tokio::{sync::mpsc, time};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    datapath::{self, LinkKind, Links, Maps, Outcome, links::LinkError},
    metrics::{PortView, Shared, TapState, TapView},
    netlink,
    reconcile::{self, Desired, MapEntries, PortState},
    report::Chain,
    sync::{DecodeOptions, NbCache, NbEvent},
};

/// Safety-net rescan of interfaces, in case a netlink message was missed.
const RESCAN: Duration = Duration::from_secs(10);
/// A tap whose attachment failed is retried no more often than this (each attempt itself
/// causes netlink link events, which must not turn into a busy loop).
const ATTACH_RETRY: Duration = Duration::from_secs(5);

pub struct Controller {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    ebpf: Ebpf,
    maps: Maps,
    links: Links,
    /// Mirror of what the maps hold (read back at start, then kept by every write).
    actual: MapEntries,
    nb: NbCache,
    decode: DecodeOptions,
    /// The first full NB snapshot has been received.
    have_snapshot: bool,
    ifaces: BTreeMap<String, u32>,
    /// ifname → (ifindex, when it failed, why): taps whose pipeline is not attached.
    attach_errors: BTreeMap<String, (u32, Instant, String)>,
    warned: BTreeSet<String>,
    last_ports: BTreeMap<String, PortState>,
    /// Highest etcd revision received; published once the maps reflect it.
    revision: i64,
}

impl Controller {
    pub fn new(cfg: Arc<Config>, shared: Arc<Shared>, ebpf: Ebpf, maps: Maps) -> Self {
        let actual = maps.read_all();
        info!(
            ports = actual.ports.len(),
            addrs = actual.addrs.len(),
            cidrs = actual.cidrs.len(),
            macs = actual.macs.len(),
            "adopted pinned maps"
        );
        let links = Links::new(cfg.links_dir(), cfg.xdp_mode);
        let decode = DecodeOptions {
            max_allowed_address_pairs: cfg.max_allowed_address_pairs,
            allow_any_aap: cfg.allow_any_aap,
        };
        Controller {
            cfg,
            shared,
            ebpf,
            maps,
            links,
            actual,
            nb: NbCache::default(),
            decode,
            have_snapshot: false,
            ifaces: BTreeMap::new(),
            attach_errors: BTreeMap::new(),
            warned: BTreeSet::new(),
            last_ports: BTreeMap::new(),
            revision: 0,
        }
    }

    /// Runs until `shutdown` resolves.
    pub async fn run(
        mut self,
        mut nb_rx: mpsc::Receiver<NbEvent>,
        mut link_rx: mpsc::Receiver<()>,
        shutdown: impl Future<Output = ()>,
    ) {
        self.reconcile(true, false);
        let mut tick = time::interval(RESCAN);
        tick.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
        tokio::pin!(shutdown);
        loop {
            let mut rescan = false;
            let mut nb_changed = false;
            tokio::select! {
                _ = &mut shutdown => break,
                ev = nb_rx.recv() => match ev {
                    Some(ev) => nb_changed |= self.on_nb(ev),
                    None => break,
                },
                _ = link_rx.recv() => rescan = true,
                _ = tick.tick() => rescan = true,
            }
            // Coalesce whatever else is queued into one reconciliation.
            while let Ok(ev) = nb_rx.try_recv() {
                nb_changed |= self.on_nb(ev);
            }
            while link_rx.try_recv().is_ok() {
                rescan = true;
            }
            if rescan || nb_changed {
                self.reconcile(rescan, nb_changed);
            }
        }
        info!(
            "shutting down; pinned links and maps stay in place so VM traffic keeps flowing \
             (a restarted agent adopts them; `dragonflow-agent --cleanup` removes them)"
        );
    }

    /// Returns whether the NB state may have changed.
    fn on_nb(&mut self, ev: NbEvent) -> bool {
        match ev {
            NbEvent::Snapshot { revision, kvs } => {
                self.revision = revision;
                let changed = self
                    .nb
                    .load(&self.cfg.prefix, &kvs, &self.decode, &self.shared);
                debug!(changed, "snapshot loaded");
                let first = !self.have_snapshot;
                self.have_snapshot = true;
                info!(
                    revision,
                    keys = kvs.len(),
                    lswitches = self.nb.snapshot.lswitches.len(),
                    lports = self.nb.snapshot.lports.len(),
                    "{}",
                    if first {
                        "initial sync from etcd"
                    } else {
                        "resync from etcd"
                    }
                );
                // Always reconcile after a full read, changed or not: this is the diff that
                // repairs anything missed.
                true
            }
            NbEvent::Changes { revision, changes } => {
                self.revision = self.revision.max(revision);
                debug!(revision, n = changes.len(), "watch events");
                let changed = self
                    .nb
                    .apply(&self.cfg.prefix, &changes, &self.decode, &self.shared);
                debug!(changed, "watch events applied");
                // Reconcile even when no valid object changed: /state shows invalid records.
                true
            }
            NbEvent::Disconnected => false,
        }
    }

    /// Taps this agent puts the pipeline on: local ports' taps, names matching the tap
    /// prefix, and anything that already carries one of our pinned links.
    fn managed(&self, pinned: &BTreeSet<String>) -> BTreeMap<String, u32> {
        let local_taps: BTreeSet<String> = self
            .nb
            .snapshot
            .lports
            .values()
            .filter(|p| p.chassis.as_deref() == Some(self.cfg.chassis.as_str()))
            .map(|p| p.tap_name())
            .collect();
        let prefix = self.cfg.tap_prefix.as_str();
        self.ifaces
            .iter()
            .filter(|(name, _)| {
                (!prefix.is_empty() && name.starts_with(prefix))
                    || local_taps.contains(*name)
                    || pinned.contains(*name)
            })
            .map(|(n, i)| (n.clone(), *i))
            .collect()
    }

    fn reconcile(&mut self, rescan: bool, nb_changed: bool) {
        if rescan {
            match netlink::scan() {
                Ok(ifaces) => self.ifaces = ifaces,
                Err(e) => warn!("{}", Chain(&e)),
            }
        }
        let pins = self.links.pins().unwrap_or_else(|e| {
            warn!("{}", Chain(&e));
            Vec::new()
        });
        let pinned: BTreeSet<String> = pins.iter().map(|p| p.ifname.clone()).collect();
        let managed = self.managed(&pinned);
        for (ifname, &ifindex) in &managed {
            self.ensure_tap(ifname, ifindex);
        }
        self.attach_errors.retain(|n, _| managed.contains_key(n));

        let desired = if self.have_snapshot {
            let mut d = reconcile::desired(&self.cfg.chassis, &self.nb.snapshot, &self.ifaces);
            // Invalid port records with no last good version: keep their taps as they are.
            for (key, (chassis, tap)) in &self.nb.held_taps {
                if chassis == &self.cfg.chassis
                    && !d.tap_ports.contains_key(tap)
                    && let Some(&ifindex) = self.ifaces.get(tap)
                {
                    debug!(
                        key,
                        tap, "invalid port record: keeping the tap's entries as they are"
                    );
                    d.entries.hold(&self.actual, ifindex);
                }
            }
            self.maps.mask(&mut d.entries);
            self.write(&d, nb_changed);
            // Prune: pins of taps that no longer exist (their links are already defunct).
            for pin in &pins {
                if !self.ifaces.contains_key(&pin.ifname) {
                    info!(ifname = %pin.ifname, kind = pin.kind.suffix(), "tap gone; removing its pinned link");
                    datapath::links::remove_pin(&pin.path);
                    self.links.forget(&pin.ifname);
                }
            }
            // `dragonflow_etcd_revision` >= R means the maps reflect etcd revision R: tests
            // and operators can wait on it after a write.
            self.shared
                .etcd_revision
                .store(self.revision, Ordering::Relaxed);
            if !self.shared.synced.swap(true, Ordering::Relaxed) {
                info!("first full sync applied to the datapath; healthy");
            }
            Some(d)
        } else {
            None
        };
        self.publish(&managed, desired.as_ref());
    }

    fn ensure_tap(&mut self, ifname: &str, ifindex: u32) {
        if let Some((i, at, _)) = self.attach_errors.get(ifname)
            && *i == ifindex
            && at.elapsed() < ATTACH_RETRY
        {
            return;
        }
        let hook = self.cfg.hook;
        let mut errors = Vec::new();
        for &kind in LinkKind::for_hook(hook) {
            match self.links.ensure(&mut self.ebpf, ifname, ifindex, kind) {
                Ok(Outcome::Unchanged) => {}
                Ok(Outcome::Adopted) => info!(
                    ifname,
                    ifindex,
                    "adopted pinned {} link (program replaced atomically)",
                    kind.suffix()
                ),
                Ok(Outcome::Attached) => {
                    info!(ifname, ifindex, "attached {} pipeline", kind.suffix())
                }
                Err(LinkError::ProgramMissing(p)) if kind == LinkKind::VlanGuard => {
                    if self.warned.insert(p.to_string()) {
                        warn!(
                            "{p} is not in the eBPF object: VLAN tags in skb metadata are not checked on XDP taps"
                        );
                    }
                }
                Err(e) => errors.push(Chain(&e).to_string()),
            }
        }
        if !errors.is_empty() {
            let msg = errors.join("; ");
            if self.attach_errors.get(ifname).map(|(_, _, m)| m) != Some(&msg) {
                error!(ifname, ifindex, "tap NOT fully protected: {msg}");
            }
            self.attach_errors
                .insert(ifname.to_string(), (ifindex, Instant::now(), msg));
        } else {
            self.attach_errors.remove(ifname);
            // Switching hooks across restarts: the old hook goes only once the new one runs.
            let n = self.links.remove(ifname, &datapath::other_kinds(hook));
            if n > 0 {
                info!(ifname, "detached {n} link(s) of the previous hook");
            }
        }
    }

    fn write(&mut self, d: &Desired, nb_changed: bool) {
        let diff = d.entries.diff(&self.actual);
        if !diff.is_empty() {
            let (up, rm) = diff.counts();
            let errors = self.maps.apply(&diff, &mut self.actual);
            self.shared
                .map_write_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
            info!(upserts = up, removals = rm, errors, "datapath maps updated");
        }
        if nb_changed || !diff.is_empty() {
            self.shared.sync_total.fetch_add(1, Ordering::Relaxed);
        }
        // Log port transitions once.
        let now: BTreeMap<String, PortState> = d
            .local_ports
            .iter()
            .map(|p| (p.id.clone(), p.state.clone()))
            .collect();
        for p in &d.local_ports {
            if self.last_ports.get(&p.id) != Some(&p.state) {
                match &p.state {
                    PortState::Programmed { ifindex } => {
                        info!(lport = %p.id, tap = %p.tap, ifindex, "port programmed")
                    }
                    PortState::NoTap => {
                        info!(lport = %p.id, tap = %p.tap, "port bound here, waiting for its tap")
                    }
                    PortState::UnknownLSwitch => {
                        warn!(lport = %p.id, lswitch = %p.lswitch, "port on an unknown lswitch skipped (its tap stays fail closed)")
                    }
                    PortState::TapConflict { with } => {
                        warn!(lport = %p.id, tap = %p.tap, "tap name already used by port {with}; port skipped")
                    }
                }
            }
        }
        for id in self.last_ports.keys() {
            if !now.contains_key(id) {
                info!(lport = %id, "port no longer bound here; its entries are removed");
            }
        }
        self.last_ports = now;
    }

    fn publish(&self, managed: &BTreeMap<String, u32>, desired: Option<&Desired>) {
        let mut links_by_if: BTreeMap<&str, Vec<&'static str>> = BTreeMap::new();
        for (ifname, kind, _) in self.links.done() {
            links_by_if.entry(ifname).or_default().push(kind.suffix());
        }
        let taps = managed
            .iter()
            .map(|(ifname, &ifindex)| {
                let error = self.attach_errors.get(ifname).map(|(_, _, m)| m.clone());
                let state = if error.is_some() {
                    TapState::AttachFailed
                } else if self.actual.ports.contains_key(&ifindex) {
                    TapState::Attached
                } else {
                    TapState::FailClosed
                };
                TapView {
                    ifname: ifname.clone(),
                    ifindex,
                    lport: desired.and_then(|d| d.tap_ports.get(ifname).cloned()),
                    state,
                    links: links_by_if
                        .get(ifname.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    error,
                }
            })
            .collect();
        let mut view = self.shared.view.lock().expect("lock");
        view.taps = taps;
        if let Some(d) = desired {
            view.ports = d.local_ports.iter().map(PortView::from).collect();
        }
        view.invalid_records = self.nb.invalid.clone();
        view.entries = datapath::maps::entry_counts(&self.actual);
    }
}
