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
use aya::maps::{HashMap as BpfHashMap, MapData};
use dragonflow_common::{
    fwd::{CFG_F_FORWARDING, CFG_F_SECURITY_GROUPS, ChassisConfig},
    limits::{Limits, flood_params},
    sg::{CtKey, CtValue},
};
use tokio::{
    sync::{mpsc, watch},
    time,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    conntrack,
    datapath::{self, LinkKind, Links, Maps, Outcome, tunnel},
    incremental::{Incremental, Scope, Touched},
    lastgood::LastGood,
    nb::{
        AapMode,
        index::NbIndex,
        model::{self, PortStates},
    },
    netlink,
    obs::state::{LimitsView, PortView, Shared, TapState, TapView, TunnelView},
    reconcile::{self, Desired, MapEntries, NbSnapshot, PortState},
    report::Chain,
    scope,
    secgroups::Identities,
    sync::{DecodeOptions, NbCache, NbDelta, NbEvent},
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
    ct: Arc<conntrack::CtShared>,
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
    /// The conntrack table until `run` hands it to the collector.
    ct_map: Option<BpfHashMap<MapData, CtKey, CtValue>>,
    /// The port of each programmed tap: a tap that loses or changes its port has its
    /// conntrack entries purged.
    ct_owners: BTreeMap<u32, String>,
}

impl Controller {
    pub fn new(
        cfg: Arc<Config>,
        shared: Arc<Shared>,
        ct: Arc<conntrack::CtShared>,
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
        let ct_map = maps.ct.take();
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
            ct.set_quota_maps(conntrack::QuotaMaps { count, freed });
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
            ct_map,
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
        if let Some(map) = self.ct_map.take() {
            tokio::spawn(conntrack::run(
                map,
                Duration::from_secs(self.cfg.ct_gc_interval_s),
                self.ct.clone(),
            ));
        }
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

    /// Makes sure the VXLAN device exists (created if missing, e.g. deleted by hand) in
    /// external mode and carries `df_from_tunnel`, adopting a pinned link from a previous
    /// agent. Failures are retried every ATTACH_RETRY and shown in /state.
    fn ensure_tunnel(&mut self, pins: &[datapath::links::Pin]) {
        let Some(name) = self.cfg.tunnel_dev.clone() else {
            // --no-tunnel after a run with a tunnel: detach what the old run attached.
            for pin in pins.iter().filter(|p| p.kind == LinkKind::Tunnel) {
                info!(ifname = %pin.ifname, "--no-tunnel: detaching df_from_tunnel");
                datapath::links::remove_pin(&pin.path);
            }
            return;
        };
        if let Some((at, _)) = &self.tunnel_error
            && at.elapsed() < ATTACH_RETRY
        {
            return;
        }
        match self.try_tunnel(&name) {
            Ok(()) => {
                if self.tunnel_error.take().is_some() {
                    info!(dev = %name, ifindex = self.tunnel_ifindex, "tunnel device ready");
                }
            }
            Err(msg) => {
                if self.tunnel_error.as_ref().map(|(_, m)| m) != Some(&msg) {
                    error!(dev = %name, "tunnel NOT working (ports on other chassis unreachable): {msg}");
                }
                self.tunnel_error = Some((Instant::now(), msg));
            }
        }
    }

    fn try_tunnel(&mut self, name: &str) -> Result<(), String> {
        let ifindex = match self.ifaces.get(name) {
            Some(&i) => i,
            None => {
                self.tunnel_ifindex = 0;
                tunnel::create(name).map_err(|e| Chain(&e).to_string())?;
                self.ifaces = netlink::scan().map_err(|e| Chain(&e).to_string())?;
                let i = *self
                    .ifaces
                    .get(name)
                    .ok_or_else(|| format!("{name} vanished right after it was created"))?;
                info!(
                    dev = name,
                    ifindex = i,
                    "created the VXLAN device (external mode, port 4789)"
                );
                self.tunnel_checked = Some(i);
                i
            }
        };
        if self.tunnel_checked != Some(ifindex) {
            tunnel::adopt(name).map_err(|e| Chain(&e).to_string())?;
            self.tunnel_checked = Some(ifindex);
        }
        // The device works for sending even if the receive program cannot be attached.
        self.tunnel_ifindex = ifindex;
        let outcome = self
            .links
            .ensure(&mut self.ebpf, name, ifindex, LinkKind::Tunnel);
        if matches!(outcome, Ok(Outcome::Adopted | Outcome::Attached)) {
            self.links.detach_foreign(&self.ebpf, name, ifindex);
        }
        self.report_foreign(name);
        match outcome {
            Ok(Outcome::Unchanged) => Ok(()),
            Ok(Outcome::Adopted) => {
                info!(
                    dev = name,
                    ifindex, "adopted pinned df_from_tunnel link (program replaced atomically)"
                );
                Ok(())
            }
            Ok(Outcome::Attached) => {
                info!(dev = name, ifindex, "attached df_from_tunnel");
                Ok(())
            }
            Err(e) => Err(format!(
                "frames from other chassis are not delivered: {}",
                Chain(&e)
            )),
        }
    }

    /// Devices (but the tunnel device) carrying a program of this project that our pins do
    /// not hold: looked for once, at start.
    fn find_foreign_taps(&self) -> BTreeSet<String> {
        let tunnel = self.cfg.tunnel_dev.as_deref();
        let mut found = BTreeSet::new();
        for (name, &ifindex) in &self.ifaces {
            if Some(name.as_str()) == tunnel {
                continue;
            }
            match datapath::links::foreign_on(&self.ebpf, name, ifindex) {
                // Logged once taken over or detached (`Links`), not here.
                Ok(f) if !f.is_empty() => {
                    found.insert(name.clone());
                }
                Ok(_) => {}
                Err(e) => debug!(ifname = %name, "cannot look for foreign programs: {e}"),
            }
        }
        found
    }

    /// Says once what `Links` took over or detached on `ifname`, and counts it.
    fn report_foreign(&mut self, ifname: &str) {
        let replaced = self.links.take_replaced();
        if replaced.is_empty() {
            return;
        }
        let what: Vec<String> = replaced.iter().map(|f| f.describe()).collect();
        warn!(
            ifname,
            "replaced {} program(s) of this project that this agent's pins did not hold \
             (another --bpffs, or an older agent's layout; their maps were frozen): {}",
            replaced.len(),
            what.join(", ")
        );
        self.shared
            .foreign_programs_replaced_total
            .fetch_add(replaced.len() as u64, Ordering::Relaxed);
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
        let mut touched = false;
        for &kind in LinkKind::for_hook(hook) {
            let outcome = self.links.ensure(&mut self.ebpf, ifname, ifindex, kind);
            touched |= !matches!(outcome, Ok(Outcome::Unchanged));
            match outcome {
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
            // First time this process handles the tap (or it was re-attached): the old
            // hook's links go once the new one runs (switching hooks across restarts), and
            // nothing else of ours may run on it.
            if touched {
                let n = self.links.remove(ifname, &datapath::other_kinds(hook));
                if n > 0 {
                    info!(ifname, "detached {n} link(s) of the previous hook");
                }
                self.links.detach_foreign(&self.ebpf, ifname, ifindex);
            }
        }
        self.report_foreign(ifname);
    }

    fn write(&mut self, d: &Desired, scope: &Scope, nb_changed: bool) {
        let diff = match scope {
            Scope::Full => d.entries.diff(&self.actual),
            Scope::Within(keys) => d.entries.diff_within(&self.actual, keys),
        };
        let mut errors = 0;
        // The collector must not take a tap that is getting its port for one without.
        self.ct.set_ports(
            d.entries
                .ports
                .keys()
                .chain(self.actual.ports.keys())
                .copied()
                .collect(),
        );
        if !diff.is_empty() {
            let (up, rm) = diff.counts();
            let sg_flag = |c: Option<&ChassisConfig>| c.map(|c| c.flags & CFG_F_SECURITY_GROUPS);
            let sg_flag_changes =
                sg_flag(self.actual.config.get(&0)) != sg_flag(d.entries.config.get(&0));
            errors = self.maps.apply(&diff, &mut self.actual);
            self.shared
                .map_write_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
            info!(upserts = up, removals = rm, errors, "datapath maps updated");
            if diff.changes_policy() || sg_flag_changes {
                self.bump_policy_gen();
            }
        }
        self.retry_write = (errors > 0).then(Instant::now);
        self.ct_after_write(d);
        // Forwarding goes on once, after a complete write of the forwarding maps (until
        // then allowed frames go to the kernel as in issue 2); it then stays on.
        if !self.forwarding_on && self.cfg.forwarding && errors == 0 && self.maps.has_forwarding() {
            self.forwarding_on = true;
            let only = |config| reconcile::MapEntries {
                config,
                ..Default::default()
            };
            let want = only(BTreeMap::from([(0, self.chassis_config())]));
            let diff = want.diff(&only(self.actual.config.clone()));
            let errors = self.maps.apply(&diff, &mut self.actual);
            if errors == 0 {
                info!("forwarding maps complete: forwarding in the datapath enabled");
            } else {
                self.forwarding_on = false;
                self.shared
                    .map_write_errors
                    .fetch_add(errors as u64, Ordering::Relaxed);
            }
        }
        self.shared
            .forwarding_enabled
            .store(self.forwarding_on, Ordering::Relaxed);
        for w in d.warnings.difference(&self.nb_warnings) {
            warn!("{w}");
        }
        self.nb_warnings = d.warnings.clone();
        for (net_id, wanted) in &d.flood_overflow {
            if self.flood_overflow.get(net_id) != Some(wanted) {
                error!(
                    net_id,
                    wanted,
                    max = dragonflow_common::fwd::FLOOD_MAX,
                    "flood list too long: only the first {} destinations (local taps first) get broadcasts",
                    dragonflow_common::fwd::FLOOD_MAX
                );
                self.shared
                    .flood_overflow_total
                    .fetch_add(1, Ordering::Relaxed);
            }
        }
        self.flood_overflow = d.flood_overflow.clone();
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
                    PortState::AdminDown => {
                        info!(lport = %p.id, tap = %p.tap, "port administratively down: its traffic is dropped")
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
        // An idle rescan (`desired` None) computed nothing because neither the NB nor the
        // interfaces changed: every tap still carries the port it had.
        let kept: BTreeMap<String, String> = match desired {
            Some(_) => BTreeMap::new(),
            None => (self.shared.taps.all().into_iter())
                .filter_map(|t| Some((t.ifname, t.lport?)))
                .collect(),
        };
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
                    lport: match desired {
                        Some(d) => d.tap_ports.get(ifname).cloned(),
                        None => kept.get(ifname).cloned(),
                    },
                    state,
                    links: links_by_if
                        .get(ifname.as_str())
                        .cloned()
                        .unwrap_or_default(),
                    error,
                }
            })
            .collect::<Vec<_>>();
        let mut view = self.shared.view.lock().expect("lock");
        if let Some(d) = desired {
            view.ports = d.local_ports.iter().map(PortView::from).collect();
            view.networks = d.networks.clone();
            view.remote_chassis = d.remote_chassis.clone();
        }
        if let Some(tx) = &self.port_states {
            let now = port_states(&view.ports, &taps);
            tx.send_if_modified(|old| {
                let changed = *old != now;
                if changed {
                    *old = now;
                }
                changed
            });
        }
        self.shared.taps.publish(taps);
        view.tunnel = self.cfg.tunnel_dev.as_ref().map(|name| TunnelView {
            name: name.clone(),
            ifindex: self.tunnel_ifindex,
            error: self.tunnel_error.as_ref().map(|(_, m)| m.clone()),
        });
        view.invalid_records = self.nb.invalid.clone();
        view.entries = datapath::maps::entry_counts(&self.actual);
        view.security_groups.enabled = self
            .actual
            .config
            .get(&0)
            .is_some_and(|c| c.flags & CFG_F_SECURITY_GROUPS != 0);
        view.security_groups.policy_gen = self.policy_gen;
        if let Some(d) = desired {
            view.security_groups.identities = d.sg_identities;
            view.security_groups.ports = d.sg_ports.clone();
        }
    }

    /// Every identity and policy change is in the maps: conntrack entries judged under an
    /// older policy are re-judged at their next packet from now on (that is how a removed
    /// rule cuts the flows it allowed). Written alone, after everything else.
    fn bump_policy_gen(&mut self) {
        self.policy_gen = self.policy_gen.wrapping_add(1);
        let only = |config| reconcile::MapEntries {
            config,
            ..Default::default()
        };
        let mut want = only(BTreeMap::from([(0, self.chassis_config())]));
        self.maps.mask(&mut want);
        let diff = want.diff(&only(self.actual.config.clone()));
        let errors = self.maps.apply(&diff, &mut self.actual);
        if errors > 0 {
            // Retried by the next write that changes the policy; until then established
            // flows keep their verdicts.
            self.shared
                .map_write_errors
                .fetch_add(errors as u64, Ordering::Relaxed);
        } else {
            debug!(
                policy_gen = self.policy_gen,
                "security-group policy generation bumped"
            );
        }
    }

    /// Tells the conntrack collector which taps have a port now, and to purge the entries
    /// of taps that lost their port or got another one (a new VM must not inherit flows).
    fn ct_after_write(&mut self, d: &Desired) {
        self.ct
            .set_ports(self.actual.ports.keys().copied().collect());
        let owners: BTreeMap<u32, String> = d
            .local_ports
            .iter()
            .filter_map(|p| match p.state {
                PortState::Programmed { ifindex } => Some((ifindex, p.id.clone())),
                _ => None,
            })
            .collect();
        let purge: Vec<u32> = self
            .ct_owners
            .iter()
            .filter(|(i, id)| {
                !self.actual.ports.contains_key(i) || owners.get(i).is_some_and(|o| o != *id)
            })
            .map(|(i, _)| *i)
            .collect();
        if !purge.is_empty() {
            debug!(
                ?purge,
                "purging conntrack entries of taps that lost their port"
            );
            self.ct.purge(purge);
        }
        self.ct_owners = owners;
    }
}

/// Each local port's state for its port status record, from the ports the controller last
/// computed and its taps as they are now: a programmed port is what its tap is; a port
/// administratively down, or on an unknown lswitch, whose tap exists is admin-down or
/// fail closed (its tap has no entries); a port with no tap, or whose tap another port
/// holds, has no state.
fn port_states(ports: &[PortView], taps: &[TapView]) -> PortStates {
    let by_name: BTreeMap<&str, &TapView> = taps.iter().map(|t| (t.ifname.as_str(), t)).collect();
    ports
        .iter()
        .filter_map(|p| {
            let tap = by_name.get(p.tap.as_str())?;
            let name = p.state;
            let state = if name == PortState::AdminDown.name() {
                (
                    model::PortState::AdminDown,
                    "admin_state_up is false".to_string(),
                )
            } else if name == PortState::UnknownLSwitch.name() {
                (
                    model::PortState::FailClosed,
                    format!("unknown lswitch {}", p.lswitch),
                )
            } else if p.ifindex.is_some() && tap.lport.as_deref() == Some(p.id.as_str()) {
                match tap.state {
                    TapState::Attached => (model::PortState::Attached, String::new()),
                    TapState::FailClosed => (
                        model::PortState::FailClosed,
                        "its entries are not in the maps (see /state map_overflow)".to_string(),
                    ),
                    TapState::AttachFailed => (
                        model::PortState::AttachFailed,
                        tap.error.clone().unwrap_or_default(),
                    ),
                }
            } else {
                return None;
            };
            Some((p.id.clone(), state))
        })
        .collect()
}
