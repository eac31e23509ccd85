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

mod publish;
mod taps;
mod write;

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, atomic::Ordering},
    time::{Duration, Instant},
};

use aya::Ebpf;
use dragonflow_common::{
    fwd::{CFG_F_FORWARDING, CFG_F_SECURITY_GROUPS, ChassisConfig},
    limits::{Limits, flood_params},
};
use tokio::{
    sync::{mpsc, watch},
    time,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    datapath::{self, LinkKind, Links, Maps},
    desired::{
        incremental::{Incremental, Scope, Touched},
        reconcile::{MapEntries, PortState},
        scope,
        secgroups::Identities,
    },
    etcd::session::NbEvent,
    nb::{
        AapMode, NbSnapshot,
        cache::{DecodeOptions, NbCache, NbDelta},
        index::NbIndex,
        lastgood::LastGood,
        model::PortStates,
    },
    netlink,
    obs::state::{LimitsView, Shared},
    report::Chain,
};

/// Safety-net rescan of interfaces, in case a netlink message was missed.
const RESCAN: Duration = Duration::from_secs(10);
/// A tap whose attachment failed is retried no more often than this (each attempt itself
/// causes netlink link events, which must not turn into a busy loop).
const ATTACH_RETRY: Duration = Duration::from_secs(5);

pub struct Controller {
    cfg: Arc<Config>,
    shared: Arc<Shared>,
    /// Between this controller and the conntrack collector.
    ct: Arc<datapath::ct::CtShared>,
    ebpf: Ebpf,
    maps: Maps,
    links: Links,
    /// Mirror of what the maps hold (read back at start, then kept by every write).
    actual: MapEntries,
    nb: NbCache,
    /// Ports and routers by network, chassis and group, kept with `nb`: what finds the
    /// part of the cloud this chassis depends on (`scope`) without scanning all of it.
    index: NbIndex,
    /// The interfaces the last computation of the entries saw: an unchanged rescan (every
    /// `RESCAN`, and every netlink event) computes nothing.
    computed_for: Option<BTreeMap<String, u32>>,
    /// When the last write that failed for some entries happened: it is retried once
    /// `ATTACH_RETRY` has passed, not at every rescan.
    retry_write: Option<Instant>,
    /// What the NB changes since the last computation touched.
    touched: Touched,
    /// The last write cut entries that did not fit their maps.
    cut: bool,
    /// The tun devices among `computed_for` (asked of sysfs only when it changes).
    tun_taps: BTreeSet<u32>,
    /// The desired entries, recomputed change by change.
    incremental: Incremental,
    decode: DecodeOptions,
    /// The first full NB snapshot has been received.
    have_snapshot: bool,
    ifaces: BTreeMap<String, u32>,
    /// ifname → (ifindex, when it failed, why): taps whose pipeline is not attached.
    attach_errors: BTreeMap<String, (u32, Instant, String)>,
    /// Devices that carried a program of this project not held by our pins when the agent
    /// started (`None` until looked for): managed like our pinned taps, so that a program
    /// with frozen maps never stays on them.
    foreign_taps: Option<BTreeSet<String>>,
    /// The pinned links as last listed (`None`: list again) and the taps last made sure
    /// of: a reconciliation for an NB change alone (no rescan, nothing attached since)
    /// lists and checks again only taps that became managed — a change then costs no
    /// file system walk per tap.
    pins_seen: Option<Arc<Vec<datapath::links::Pin>>>,
    ensured: BTreeMap<String, u32>,
    last_ports: BTreeMap<String, PortState>,
    /// Highest etcd revision received; published once the maps reflect it.
    revision: i64,
    /// ifindex of the VXLAN device (0: none, or not usable).
    tunnel_ifindex: u32,
    /// The device ifindex whose kind and state were checked.
    tunnel_checked: Option<u32>,
    /// Why the tunnel is not (fully) working, and when that was last tried.
    tunnel_error: Option<(Instant, String)>,
    /// `CFG_F_FORWARDING` is set in the datapath: the forwarding maps are complete.
    forwarding_on: bool,
    /// NB problems already logged (logged again only after they went away).
    nb_warnings: BTreeSet<String>,
    /// Networks whose flood list is cut to FLOOD_MAX (net_id → destinations wanted).
    flood_overflow: BTreeMap<u32, usize>,
    /// Where each new NB snapshot goes once it is reconciled (the detection way).
    snapshots: Option<watch::Sender<Option<Arc<NbSnapshot>>>>,
    /// Where each local port's state goes when it changes (the port status records).
    port_states: Option<watch::Sender<PortStates>>,
    /// Whether the last snapshot sent there had a network in the detection way or a
    /// claim: the detector needs snapshots only then (and one more when that ends).
    detection_fed: bool,
    /// Security-group identity numbers, kept across reconciliations (and adopted from the
    /// pinned maps at start) so that a change rewrites only what it concerns.
    identities: Identities,
    /// `ChassisConfig::policy_gen`, bumped after every write that changed identity or
    /// policy entries (adopted at start: it must never go back to a value live conntrack
    /// entries carry for an older policy).
    policy_gen: u32,
    /// `CFG_F_SECURITY_GROUPS` is wanted: `--security-groups` and the object has the maps.
    sg_on: bool,
    /// The port of each programmed tap: a tap that loses or changes its port has its
    /// conntrack entries purged.
    ct_owners: BTreeMap<u32, String>,
}

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        ct: Arc<datapath::ct::CtShared>,
        mut ebpf: Ebpf,
        mut maps: Maps,
    ) -> Self {
        let actual = maps.read_all();
        // Before any tap runs the new programs: their tail calls land in this program.
        if let Err(e) = maps.link_tail_calls(&mut ebpf) {
            error!(
                "{e}: frames for the holders of shared allowed-address-pair addresses are \
                 dropped (redirect_failed)"
            );
        }
        let mut identities = Identities::default();
        identities.adopt(&actual.ident, &actual.ident_lpm);
        let policy_gen = actual.config.get(&0).map_or(0, |c| c.policy_gen);
        let sg_on = cfg.security_groups && maps.has_security_groups();
        if cfg.security_groups && !sg_on {
            error!("the eBPF object lacks the security-group maps: security groups NOT enforced");
        }
        let (interval, tolerance) = flood_params(cfg.flood_rate, cfg.flood_burst);
        let limits = Limits {
            flood_interval_ns: interval,
            flood_tolerance_ns: tolerance,
            ct_port_quota: cfg.ct_port_quota,
            _pad: 0,
        };
        // Before any tap runs the new programs; a restart rewrites them (the flags win).
        match maps.write_limits(&limits) {
            Ok(()) => info!(
                flood_rate = cfg.flood_rate,
                flood_burst = cfg.flood_burst,
                ct_port_quota = cfg.ct_port_quota,
                "per-port limits set"
            ),
            Err(e) => error!("{e}: floods and conntrack entries are NOT limited per port"),
        }
        if let (Some(count), Some(freed)) = (maps.ct_count.take(), maps.ct_freed.take()) {
            ct.set_quota_maps(datapath::ct::QuotaMaps { count, freed });
        }
        {
            let mut view = shared.view.lock().expect("lock");
            view.limits = LimitsView {
                flood_rate: cfg.flood_rate,
                flood_burst: cfg.flood_burst,
                ct_port_quota: cfg.ct_port_quota,
            };
            view.capacity = maps.capacity.clone();
        }
        info!(
            ports = actual.ports.len(),
            addrs = actual.addrs.len(),
            cidrs = actual.cidrs.len(),
            macs = actual.macs.len(),
            "adopted pinned maps"
        );
        // A restarted agent keeps forwarding on if its predecessor had turned it on: the
        // adopted maps are complete, and the first write is a diff against them.
        let forwarding_on = cfg.forwarding
            && actual
                .config
                .get(&0)
                .is_some_and(|c| c.flags & CFG_F_FORWARDING != 0);
        if !cfg.tunnel_ip.is_ipv4() && cfg.tunnel_dev.is_some() {
            warn!(
                tunnel_ip = %cfg.tunnel_ip,
                "the VXLAN underlay is IPv4 only for now: other chassis cannot reach this one"
            );
        }
        let links = Links::new(cfg.links_dir(), cfg.xdp_mode);
        let decode = DecodeOptions {
            max_allowed_address_pairs: cfg.max_allowed_address_pairs,
            allow_any_aap: cfg.allow_any_aap,
        };
        let nb = NbCache::with_last_good(LastGood::open(&cfg.state_dir, &cfg.chassis));
        Controller {
            cfg,
            shared,
            ct,
            ebpf,
            maps,
            links,
            actual,
            nb,
            index: NbIndex::default(),
            computed_for: None,
            retry_write: None,
            touched: Touched::default(),
            cut: false,
            tun_taps: BTreeSet::new(),
            incremental: Incremental::default(),
            decode,
            have_snapshot: false,
            ifaces: BTreeMap::new(),
            attach_errors: BTreeMap::new(),
            foreign_taps: None,
            pins_seen: None,
            ensured: BTreeMap::new(),
            last_ports: BTreeMap::new(),
            revision: 0,
            tunnel_ifindex: 0,
            tunnel_checked: None,
            tunnel_error: None,
            forwarding_on,
            nb_warnings: BTreeSet::new(),
            flood_overflow: BTreeMap::new(),
            snapshots: None,
            port_states: None,
            detection_fed: false,
            identities,
            policy_gen,
            sg_on,
            ct_owners: BTreeMap::new(),
        }
    }

    /// Publishes every NB snapshot on `tx` after it has been written to the maps (and the
    /// taps in `Shared::taps` are current).
    pub fn publish_snapshots(&mut self, tx: watch::Sender<Option<Arc<NbSnapshot>>>) {
        self.snapshots = Some(tx);
    }

    /// Publishes each local port's state on `tx` whenever one changes (after the taps and
    /// the view are published).
    pub fn publish_port_states(&mut self, tx: watch::Sender<PortStates>) {
        self.port_states = Some(tx);
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
                let delta = self
                    .nb
                    .load(&self.cfg.prefix, &kvs, &self.decode, &self.shared);
                self.index = NbIndex::of(&self.nb.snapshot);
                self.touched.all = true;
                let keys = kvs.len();
                drop(kvs);
                // A full read allocates (and frees) about as much again as the cache it
                // fills; glibc keeps freed memory in its arenas unless asked to return it.
                // SAFETY: malloc_trim only releases free heap pages; no pointer is touched.
                unsafe { libc::malloc_trim(0) };
                debug!(changed = !delta.is_empty(), "snapshot loaded");
                let first = !self.have_snapshot;
                self.have_snapshot = true;
                info!(
                    revision,
                    keys,
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
                let delta = self
                    .nb
                    .apply(&self.cfg.prefix, &changes, &self.decode, &self.shared);
                self.touch(&delta);
                debug!(changed = !delta.is_empty(), "watch events applied");
                // Reconcile even when no valid object changed: /state shows invalid records.
                true
            }
            NbEvent::Disconnected => false,
        }
    }

    /// Taps this agent puts the pipeline on: local ports' taps, names matching the tap
    /// prefix, and anything that already carries one of our pinned links.
    fn managed(&self, pinned: &BTreeSet<&str>) -> BTreeMap<String, u32> {
        let local_taps: BTreeSet<String> = self
            .index
            .ports_on(&self.cfg.chassis)
            .filter_map(|id| self.nb.snapshot.lports.get(&**id))
            .map(|p| p.tap_name())
            .collect();
        let prefix = self.cfg.tap_prefix.as_str();
        let tunnel = self.cfg.tunnel_dev.as_deref();
        self.ifaces
            .iter()
            .filter(|(name, _)| Some(name.as_str()) != tunnel)
            .filter(|(name, _)| {
                (!prefix.is_empty() && name.starts_with(prefix))
                    || local_taps.contains(*name)
                    || pinned.contains(name.as_str())
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
        if rescan {
            self.pins_seen = None;
        }
        let pins = match &self.pins_seen {
            Some(p) => p.clone(),
            None => {
                let p = Arc::new(self.links.pins().unwrap_or_else(|e| {
                    warn!("{}", Chain(&e));
                    Vec::new()
                }));
                self.pins_seen = Some(p.clone());
                p
            }
        };
        self.ensure_tunnel(&pins);
        if self.foreign_taps.is_none() {
            self.foreign_taps = Some(self.find_foreign_taps());
        }
        // Taps are what carries from-VM links; the tunnel device's pin is not one.
        let pinned: BTreeSet<&str> = pins
            .iter()
            .filter(|p| p.kind != LinkKind::Tunnel)
            .map(|p| p.ifname.as_str())
            .chain(self.foreign_taps.iter().flatten().map(String::as_str))
            .collect();
        let managed = self.managed(&pinned);
        for (ifname, &ifindex) in &managed {
            if rescan
                || self.ensured.get(ifname) != Some(&ifindex)
                || self.attach_errors.contains_key(ifname)
            {
                self.ensure_tap(ifname, ifindex);
                // What it attached or replaced is pinned anew.
                self.pins_seen = None;
            }
        }
        if self.ensured != managed {
            self.ensured = managed.clone();
        }
        self.attach_errors.retain(|n, _| managed.contains_key(n));

        // Nothing to compute when neither the NB nor the interfaces changed since the last
        // computation (idle rescans), unless the last write left something to retry.
        let unchanged = !nb_changed
            && self.computed_for.as_ref() == Some(&self.ifaces)
            && self
                .retry_write
                .is_none_or(|at| at.elapsed() < ATTACH_RETRY);
        if self.have_snapshot && unchanged {
            self.publish(&managed, None);
            return;
        }
        let desired = if self.have_snapshot {
            if self.computed_for.as_ref() != Some(&self.ifaces) {
                self.tun_taps = self
                    .ifaces
                    .iter()
                    .filter(|(name, _)| datapath::sys::is_tun(name))
                    .map(|(_, &ifindex)| ifindex)
                    .collect();
                self.computed_for = Some(self.ifaces.clone());
            }
            let holding = self
                .nb
                .held_taps
                .values()
                .any(|(chassis, _)| chassis == &self.cfg.chassis);
            // A retry, or taps held as they are (their entries are merged in below), make
            // a full computation and comparison.
            let mut touched = std::mem::take(&mut self.touched);
            touched.all |= self.retry_write.is_some() || holding;
            let (mut d, scope) = self.incremental.compute(
                &self.cfg.chassis,
                &self.nb.snapshot,
                &self.index,
                &self.ifaces,
                &mut self.identities,
                &touched,
            );
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
            d.entries.config.insert(0, self.chassis_config());
            // The devmap holds only the taps native XDP can deliver into (tun): XDP hands
            // frames for any other tap to its TC companion (`l2::xdp_finishes`).
            d.entries.devmap.retain(|i, _| self.tun_taps.contains(i));
            self.maps.mask(&mut d.entries);
            // What the maps cannot hold is cut here, safest entries kept, and reported:
            // a full map is never written entry by entry at every reconciliation.
            let fit = self.maps.fit(&mut d.entries, &self.actual);
            let cut = !fit.overflow.is_empty() || !fit.ports_left_out.is_empty();
            {
                let mut view = self.shared.view.lock().expect("lock");
                view.needed = fit.needed;
                view.map_overflow = fit.overflow;
            }
            // A cut (or the end of one) changes entries of networks no change touched:
            // compare everything now, and recompute everything next time (the cut entries
            // are missing from what the next computation patches).
            let scope = if cut || self.cut { Scope::Full } else { scope };
            self.touched.all |= cut;
            self.cut = cut;
            self.write(&d, &scope, nb_changed);
            // Prune: pins of taps that no longer exist (their links are already defunct).
            for pin in pins.iter() {
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
                // systemd's Type=notify (deploy/dragonflow-agent.service): started means
                // enforcing. A no-op without $NOTIFY_SOCKET; a failed send only delays
                // systemd's view, never the datapath, so it is logged and ignored.
                if let Err(e) = sd_notify::notify(&[sd_notify::NotifyState::Ready]) {
                    warn!("telling systemd READY=1 failed: {e}");
                }
            }
            Some(d)
        } else {
            None
        };
        self.publish(&managed, desired.as_ref());
        if let Some(d) = desired {
            self.incremental.restore(d);
            if nb_changed && let Some(tx) = &self.snapshots {
                // The detection way judges claims against the same part of the cloud. A
                // cloud without it anywhere and without claims to release skips the copy
                // (it is a cost per change).
                let detection = self.cfg.aap_mode == AapMode::Detection
                    || !self.nb.snapshot.active_ports.is_empty()
                    || self
                        .nb
                        .snapshot
                        .lswitches
                        .values()
                        .any(|l| l.aap_mode == Some(AapMode::Detection));
                if detection || self.detection_fed {
                    let scoped = scope::scope(&self.cfg.chassis, &self.nb.snapshot, &self.index);
                    tx.send_replace(Some(Arc::new(scoped)));
                }
                self.detection_fed = detection;
            }
        }
    }

    /// Files what `delta` changed in the index and notes what it touches.
    fn touch(&mut self, delta: &NbDelta) {
        let t = &mut self.touched;
        t.ports.extend(delta.lports.iter().cloned());
        for id in &delta.lports {
            let now = self.nb.snapshot.lports.get(id).map(|p| &**p);
            if let Some(old) = self.index.set_port(id, now) {
                t.nets.insert(old.lswitch.to_string());
            }
            if let Some(p) = now {
                t.nets.insert(p.lswitch.clone());
            }
        }
        for id in &delta.lrouters {
            let now = self.nb.snapshot.lrouters.get(id);
            t.nets
                .extend(self.index.set_router(id, now).iter().map(|n| n.to_string()));
            t.nets.extend(
                now.into_iter()
                    .flat_map(|r| r.ports.iter().map(|p| p.lswitch.clone())),
            );
        }
        t.nets.extend(delta.lswitches.iter().cloned());
        t.nets.extend(
            delta
                .active_ports
                .iter()
                .map(|(lswitch, _)| lswitch.clone()),
        );
        t.chassis.extend(delta.chassis.iter().cloned());
    }

    /// `df_config_v1[0]`: the tunnel device, this chassis' underlay address, whether
    /// the datapath forwards (set only once the forwarding maps have been written), whether
    /// it enforces security groups and the policy generation.
    ///
    /// `CFG_F_SECURITY_GROUPS` is wanted from the first write on (without it every port is
    /// open: failing open), and is never written before the rules: the config entry is
    /// written last in a write, the identity and policy entries first (see `Maps::apply`).
    fn chassis_config(&self) -> ChassisConfig {
        ChassisConfig {
            vxlan_ifindex: self.tunnel_ifindex,
            local_ip: match self.cfg.tunnel_ip {
                std::net::IpAddr::V4(a) => a.octets(),
                std::net::IpAddr::V6(_) => [0; 4],
            },
            flags: if self.forwarding_on {
                CFG_F_FORWARDING
            } else {
                0
            } | if self.sg_on { CFG_F_SECURITY_GROUPS } else { 0 },
            policy_gen: self.policy_gen,
        }
    }
}
