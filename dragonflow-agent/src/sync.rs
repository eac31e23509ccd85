//! The northbound side: etcd session (chassis registration under a lease, range get at
//! revision R, watch from R+1, resync on compaction, reconnect with backoff), and the
//! cache of last good NB objects the reconciler works from.
//!
//! The datapath is never touched from here: losing etcd only stops updates, the
//! controller keeps enforcing the last good state.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use etcd_client::{
    Client, Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use tokio::{
    sync::{mpsc, watch},
    time,
};
use tracing::{debug, error, info, warn};

use crate::{
    config::Config,
    detect::claims::Session,
    lastgood::{LastGood, Saved},
    nb::{
        Chassis, Kind, LPort, LRouter, LSwitch, NbObject, NbSnapshot, SecGroup, ValidationOptions,
        active,
        claims::ClaimIndex,
        decode_with,
        etcd::{self, CallError},
        paged, parse_key,
    },
    obs::state::Shared,
    report::Chain,
};

const CALL_TIMEOUT: Duration = Duration::from_secs(5);
const BACKOFF_MIN: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// HTTP/2 keepalive on the session's connections: a member that vanished without closing
/// its socket (power loss, partition) ends the watch within about twice this.
const KEEPALIVE: Duration = Duration::from_secs(2);

/// What etcd told us, for the controller.
#[derive(Debug)]
pub enum NbEvent {
    /// A full range get of the prefix at `revision` (first sync, reconnect, compaction).
    Snapshot { revision: i64, kvs: Vec<Kv> },
    /// One watch response.
    Changes { revision: i64, changes: Vec<Change> },
    /// The session is gone (the datapath stays as it is).
    Disconnected,
}

#[derive(Debug)]
pub enum Change {
    Put(Kv),
    Delete(String),
}

/// One key and its value, as etcd has it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kv {
    pub key: String,
    pub value: Vec<u8>,
    /// The revision the key was created at: of two conflicting ports, the older one wins
    /// (see `nb::claims`).
    pub create_revision: i64,
}

impl From<&etcd_client::KeyValue> for Kv {
    fn from(kv: &etcd_client::KeyValue) -> Self {
        Kv {
            key: String::from_utf8_lossy(kv.key()).into_owned(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("etcd {what}")]
    Etcd {
        what: &'static str,
        #[source]
        source: CallError,
    },
    #[error("etcd watch ended")]
    WatchEnded,
    #[error("the chassis lease expired")]
    LeaseLost,
    #[error(
        "chassis {chassis} is registered by another live agent (instance {owner}): two agents \
         must not share a chassis name; use another --chassis, or stop that agent (its record \
         goes when its lease expires)"
    )]
    Taken { chassis: String, owner: String },
    #[error("the chassis record kept changing while it was being claimed")]
    ClaimRaced,
    #[error("controller gone")]
    Closed,
}

/// One request, retried on another member while the cluster cannot serve it.
async fn call<T, F, Fut>(what: &'static str, attempt: F) -> Result<T, SyncError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    etcd::call(CALL_TIMEOUT, attempt)
        .await
        .map_err(|source| SyncError::Etcd { what, source })
}

/// A stream message's error (watch, keepalive): not retried, the session ends.
fn stream_error(what: &'static str) -> impl FnOnce(etcd_client::Error) -> SyncError {
    move |e| SyncError::Etcd {
        what,
        source: CallError::classify(e),
    }
}

/// Runs until the controller goes: one session after another, with backoff in between.
/// While a session is up, its client and chassis lease are published on `sessions` (the
/// detection way claims under that lease). Fails only when the very first registration
/// finds the chassis name taken by another live agent ([`SyncError::Taken`]): the agent
/// must not start then. Later, the same finding is logged and retried: the datapath keeps
/// running as it is.
pub async fn run(
    cfg: Arc<Config>,
    instance: String,
    shared: Arc<Shared>,
    tx: mpsc::Sender<NbEvent>,
    sessions: watch::Sender<Option<Session>>,
) -> Result<(), SyncError> {
    let mut ever_registered = false;
    let mut backoff = BACKOFF_MIN;
    // The lease of the last session: a new session keeps it while etcd still has it, so
    // that the chassis record and the claims under it never blink during a failover.
    let mut lease = None;
    loop {
        let mut established = false;
        let res = session(
            &cfg,
            &instance,
            &shared,
            &tx,
            &sessions,
            &mut established,
            &mut lease,
        )
        .await;
        sessions.send_replace(None);
        let was_connected = shared.etcd_connected.swap(false, Ordering::Relaxed);
        ever_registered |= established;
        match res {
            Err(SyncError::Closed) => return Ok(()),
            Err(e @ SyncError::Taken { .. }) if !ever_registered => return Err(e),
            Err(SyncError::Taken { ref owner, .. }) => {
                error!(
                    chassis = %cfg.chassis,
                    owner,
                    "another agent took this chassis name while etcd was unreachable; \
                     keeping the datapath as it is and retrying"
                );
            }
            _ => {}
        }
        if tx.send(NbEvent::Disconnected).await.is_err() {
            return Ok(());
        }
        if established {
            backoff = BACKOFF_MIN;
        }
        match res {
            Err(e) if was_connected => {
                warn!(
                    "etcd connection lost: {}; keeping the datapath as it is, reconnecting",
                    Chain(&e)
                )
            }
            Err(e) => warn!("etcd unavailable ({}); retrying in {backoff:?}", Chain(&e)),
            Ok(()) => {}
        }
        time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn session(
    cfg: &Config,
    instance: &str,
    shared: &Shared,
    tx: &mpsc::Sender<NbEvent>,
    sessions: &watch::Sender<Option<Session>>,
    established: &mut bool,
    prev_lease: &mut Option<i64>,
) -> Result<(), SyncError> {
    let opts = cfg.etcd.connect_options(CONNECT_TIMEOUT, KEEPALIVE);
    let client = call("connect", || {
        Client::connect(&cfg.etcd.endpoints, Some(opts.clone()))
    })
    .await?;

    // Register under a lease: the record disappears when this agent stops renewing it.
    // The chassis record lives as long as this lease (`--lease-ttl`): when the agent dies,
    // etcd deletes it after the TTL and every other agent drops this chassis from its L2
    // and flood entries. Keepalives go every third of the TTL.
    let ttl = cfg.lease_ttl_s.max(1);
    let alive = match *prev_lease {
        Some(id) => {
            call("lease ttl", || {
                let mut c = client.clone();
                async move { c.lease_time_to_live(id, None).await }
            })
            .await?
            .ttl()
                > 0
        }
        None => false,
    };
    let lease = match *prev_lease {
        Some(id) if alive => id,
        _ => call("lease grant", || {
            let mut c = client.clone();
            async move { c.lease_grant(ttl, None).await }
        })
        .await?
        .id(),
    };
    *prev_lease = Some(lease);
    let record = Chassis {
        name: cfg.chassis.clone(),
        tunnel_ip: cfg.tunnel_ip,
        aap_mode: cfg.aap_mode,
        version: env!("CARGO_PKG_VERSION").to_string(),
        instance: instance.to_string(),
    };
    let key = crate::nb::key(&cfg.prefix, Kind::Chassis, &cfg.chassis);
    let value = serde_json::to_vec(&record).expect("chassis record serialises");
    claim(&client, cfg, instance, &key, &value, lease).await?;
    let (mut keeper, mut keepalive_stream) = call("lease keepalive", || {
        let mut c = client.clone();
        async move { c.lease_keep_alive(lease).await }
    })
    .await?;
    info!(chassis = %cfg.chassis, lease = format_args!("{lease:x}"), "registered {key}");
    shared.etcd_connected.store(true, Ordering::Relaxed);
    *established = true;
    sessions.send_replace(Some(Session {
        client: client.clone(),
        lease,
    }));

    let mut keepalive = time::interval(Duration::from_millis((ttl as u64 * 1000 / 3).max(300)));
    keepalive.set_missed_tick_behavior(time::MissedTickBehavior::Delay);
    loop {
        // Full read at revision R, then everything after R.
        // In pages, all at one revision: the NB may be far larger than one response.
        let range = call("range get", || {
            let mut kv = paged::kv(&client);
            async move { paged::get_prefix(&mut kv, &cfg.prefix).await }
        })
        .await?;
        let revision = range.revision;
        // Each record's bytes are freed as soon as they are copied (a 100,000-port read is
        // some 100 MB; it must not be held twice).
        let kvs = range
            .kvs
            .into_iter()
            .map(|kv| Kv::from(&kv))
            .collect::<Vec<_>>();
        debug!(revision, keys = kvs.len(), "range get");
        tx.send(NbEvent::Snapshot { revision, kvs })
            .await
            .map_err(|_| SyncError::Closed)?;

        let wopts = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1)
            .with_progress_notify();
        let mut watch = call("watch", || {
            let (mut w, wopts) = (paged::watcher(&client), wopts.clone());
            async move { w.watch(cfg.prefix.as_str(), Some(wopts)).await }
        })
        .await?;
        'watch: loop {
            tokio::select! {
                _ = keepalive.tick() => {
                    keeper.keep_alive().await.map_err(stream_error("lease keepalive"))?;
                }
                msg = keepalive_stream.message() => {
                    match msg.map_err(stream_error("lease keepalive"))? {
                        Some(r) if r.ttl() <= 0 => return Err(SyncError::LeaseLost),
                        Some(_) => {}
                        None => return Err(SyncError::LeaseLost),
                    }
                }
                msg = watch.message() => {
                    let Some(resp) = msg.map_err(stream_error("watch"))? else {
                        return Err(SyncError::WatchEnded);
                    };
                    if resp.compact_revision() != 0 || resp.canceled() {
                        // Events were lost: read everything again and let the diff sort it out.
                        warn!(
                            compact_revision = resp.compact_revision(),
                            reason = resp.cancel_reason(),
                            "watch cancelled (compaction); resyncing"
                        );
                        break 'watch;
                    }
                    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
                    for ev in resp.events() {
                        let Some(kv) = ev.kv().filter(|kv| kv.key() == key.as_bytes()) else {
                            continue;
                        };
                        match ev.event_type() {
                            // Deleted by hand (or by a misbehaving tool) while this agent
                            // lives: put it back, other chassis would drop this one otherwise.
                            EventType::Delete => {
                                warn!("{key} was deleted while this agent is alive; re-creating it");
                                claim(&client, cfg, instance, &key, &value, lease).await?;
                            }
                            EventType::Put => {
                                let owner = record_owner(kv.value());
                                if owner != instance {
                                    error!(
                                        owner,
                                        "{key} was overwritten by another writer: is another \
                                         agent running with chassis name {}? Not fighting over it",
                                        cfg.chassis
                                    );
                                }
                            }
                        }
                    }
                    let changes: Vec<Change> = resp
                        .events()
                        .iter()
                        .filter_map(|ev| {
                            let kv = ev.kv()?;
                            Some(match ev.event_type() {
                                EventType::Put => Change::Put(Kv::from(kv)),
                                EventType::Delete => Change::Delete(
                                    String::from_utf8_lossy(kv.key()).into_owned(),
                                ),
                            })
                        })
                        .collect();
                    if !changes.is_empty() {
                        tx.send(NbEvent::Changes { revision: rev, changes })
                            .await
                            .map_err(|_| SyncError::Closed)?;
                    }
                }
            }
        }
    }
}

/// Before the datapath is touched: is the chassis name held by another live agent? A
/// best-effort read (the authoritative check is [`claim`]'s transaction, in the session):
/// an unreachable etcd lets the agent start and enforce its pinned state.
pub async fn check_owner(cfg: &Config, instance: &str) -> Result<(), SyncError> {
    let key = crate::nb::key(&cfg.prefix, Kind::Chassis, &cfg.chassis);
    let opts = cfg.etcd.connect_options(CONNECT_TIMEOUT, KEEPALIVE);
    let read = async {
        let client = call("connect", || {
            Client::connect(&cfg.etcd.endpoints, Some(opts.clone()))
        })
        .await?;
        call("get chassis record", || {
            let (mut c, key) = (client.clone(), key.clone());
            async move { c.get(key, None).await }
        })
        .await
    };
    match read.await {
        Ok(resp) => match resp.kvs().first().map(|kv| record_owner(kv.value())) {
            Some(owner) if !owner.is_empty() && owner != instance => Err(SyncError::Taken {
                chassis: cfg.chassis.clone(),
                owner,
            }),
            _ => Ok(()),
        },
        Err(e) => {
            warn!(
                "cannot check who owns {key} before starting ({}); the session will",
                Chain(&e)
            );
            Ok(())
        }
    }
}

/// The instance named in a chassis record ("" if unreadable or written before instances).
fn record_owner(value: &[u8]) -> String {
    serde_json::from_slice::<Chassis>(value)
        .map(|c| c.instance)
        .unwrap_or_default()
}

/// Writes this agent's chassis record under `lease`, unless a record of another agent
/// instance is there (it is alive: an expired one is deleted by etcd). A record of this
/// instance — a previous session's, or a previous incarnation's after a restart, whose
/// lease may still be alive after `kill -9` — is taken over: the put moves the key onto
/// the new lease, so the old lease's expiry no longer touches it. Both steps are
/// transactions, so a refused agent never writes.
async fn claim(
    client: &Client,
    cfg: &Config,
    instance: &str,
    key: &str,
    value: &[u8],
    lease: i64,
) -> Result<(), SyncError> {
    let put = TxnOp::put(key, value, Some(PutOptions::new().with_lease(lease)));
    let mut guard = Compare::version(key, CompareOp::Equal, 0);
    for _ in 0..3 {
        let txn = Txn::new()
            .when([guard.clone()])
            .and_then([put.clone()])
            .or_else([TxnOp::get(key, None)]);
        let resp = call("claim chassis record", || {
            let (mut c, txn) = (client.clone(), txn.clone());
            async move { c.txn(txn).await }
        })
        .await?;
        if resp.succeeded() {
            return Ok(());
        }
        let current = resp.op_responses().into_iter().find_map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().first().cloned(),
            _ => None,
        });
        guard = match current {
            // Gone in between: create it.
            None => Compare::version(key, CompareOp::Equal, 0),
            Some(kv) => {
                let owner = record_owner(kv.value());
                if owner.is_empty() {
                    warn!(
                        "{key} names no agent instance (written by an older agent); taking it over"
                    );
                } else if owner != instance {
                    return Err(SyncError::Taken {
                        chassis: cfg.chassis.clone(),
                        owner,
                    });
                }
                Compare::mod_revision(key, CompareOp::Equal, kv.mod_revision())
            }
        };
    }
    Err(SyncError::ClaimRaced)
}

/// Limits applied when decoding NB records (Neutron's, see `nb::validate`).
pub type DecodeOptions = ValidationOptions;

/// One decoded record the datapath cares about.
#[derive(Clone, Debug, PartialEq)]
pub enum Record {
    LSwitch(LSwitch),
    LPort(LPort),
    LRouter(LRouter),
    Chassis(Chassis),
    SecGroup(SecGroup),
}

/// Decodes and validates one NB value with `nb::validate` (Neutron's rules). Subnet
/// records are validated too, so that bad ones are counted, although the datapath does not
/// use them yet. Chassis records are written by the agents themselves and only parsed, not
/// validated (the default `--tunnel-ip 127.0.0.1` of a single-host setup is legitimate
/// there): the reconciler judges whether a chassis' tunnel_ip can be a VXLAN destination.
pub fn decode_record(
    kind: Kind,
    id: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<Option<Record>, String> {
    if kind == Kind::Chassis {
        let c: Chassis = serde_json::from_slice(bytes)
            .map_err(|e| format!("chassis {id}: malformed JSON: {e}"))?;
        if c.name != id {
            return Err(format!(
                "chassis {id}: the record names itself {:?}, not the id in its key",
                c.name
            ));
        }
        return Ok(Some(Record::Chassis(c)));
    }
    match decode_with(kind, id, bytes, opts).map_err(|e| e.to_string())? {
        NbObject::LSwitch(ls) => Ok(Some(Record::LSwitch(ls))),
        NbObject::LPort(p) => Ok(Some(Record::LPort(p))),
        NbObject::LRouter(r) => Ok(Some(Record::LRouter(r))),
        NbObject::SecGroup(g) => Ok(Some(Record::SecGroup(g))),
        NbObject::Chassis(_) | NbObject::Subnet(_) => Ok(None),
    }
}

/// What one [`NbCache::load`] or [`NbCache::apply`] changed in what is in force
/// ([`NbCache::snapshot`]), for a reconciler that works on what changed rather than on the
/// whole cloud.
///
/// The contract:
/// - per kind, the ids (keyed as in [`NbSnapshot`]) whose in-force version was added,
///   changed or removed; whether it is there now, and what it is, is in the snapshot;
/// - computed record by record (the old and the new in-force value of that record only),
///   never by comparing snapshots: the cost of a call grows with the records it touches;
/// - never an id left out whose in-force value differs after the call; an id may be
///   listed whose value ended where it started (changed and changed back in one call);
/// - a record put again unchanged, or an invalid update whose last good version stays in
///   force, lists nothing (but for the lport cases below);
/// - an lport id is listed also when its held tap ([`NbCache::held_taps`]) appears,
///   changes or goes, and when the port starts or stops being refused for a conflict
///   (so both ports of a conflict are listed when which of them holds it changes);
/// - `invalid_changed`: [`NbCache::invalid`] (what /state shows) changed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NbDelta {
    pub lswitches: BTreeSet<String>,
    pub lports: BTreeSet<String>,
    pub lrouters: BTreeSet<String>,
    pub chassis: BTreeSet<String>,
    pub secgroups: BTreeSet<String>,
    pub active_ports: BTreeSet<(String, IpAddr)>,
    pub invalid_changed: bool,
}

impl NbDelta {
    /// Nothing in force changed, and neither did the invalid records.
    pub fn is_empty(&self) -> bool {
        self.lswitches.is_empty()
            && self.lports.is_empty()
            && self.lrouters.is_empty()
            && self.chassis.is_empty()
            && self.secgroups.is_empty()
            && self.active_ports.is_empty()
            && !self.invalid_changed
    }
}

/// Puts `new` in force under `id` (`None`: nothing), noting `id` in `changed` when that
/// changes what was there.
fn settle<K: Ord + Clone, V: PartialEq>(
    map: &mut BTreeMap<K, V>,
    id: &K,
    new: Option<V>,
    changed: &mut BTreeSet<K>,
) {
    let same = match &new {
        Some(v) => map.get(id) == Some(v),
        None => !map.contains_key(id),
    };
    if same {
        return;
    }
    match new {
        Some(v) => map.insert(id.clone(), v),
        None => map.remove(id),
    };
    changed.insert(id.clone());
}

/// The last good version of every record. An invalid record is logged, counted and
/// skipped; if an earlier version of it was valid, that version stays in force (an
/// operator's typo must not open or cut a port), until the key is deleted or fixed.
///
/// A port that collides with an older one (`nb::claims`: a fixed IP or single-IP AAP on
/// another port's fixed IP in the same network, or the same chassis and tap) is invalid
/// too: its current version is refused until the older port releases the address or tap.
/// Its last good version stays in force, unless that version is the colliding one itself
/// (the port did not change, an older port took what it had): then nothing of it is in
/// force and its tap is held as it is.
///
/// The last good versions of invalid records survive restarts ([`LastGood`]).
#[derive(Debug, Default)]
pub struct NbCache {
    pub snapshot: NbSnapshot,
    /// Keys whose current value is invalid (for /state), conflicts included.
    pub invalid: BTreeMap<String, String>,
    /// Invalid lport records with no last good version (typically: the agent restarted
    /// while the record was bad and the state file had none): key → (chassis, tap name),
    /// read leniently from the JSON. The controller keeps whatever entries the pinned maps
    /// hold for such a tap, so that a restart does not turn a bad record into a changed
    /// datapath.
    pub held_taps: BTreeMap<String, (String, String)>,
    /// What every valid port record claims, and who holds what.
    claims: ClaimIndex,
    /// Current versions of valid port records that are not in force, by id: refused for a
    /// conflict, or not judged yet (`stale`).
    waiting: BTreeMap<String, LPort>,
    /// Ids of the ports refused for a conflict.
    refused: BTreeSet<String>,
    /// Ports whose standing may have changed, judged at the end of a load or apply.
    stale: BTreeSet<String>,
    /// The last good versions of invalid records, as kept across restarts.
    last_good: LastGood,
}

/// (chassis, tap name) of an lport record that does not validate, if the JSON says.
fn lenient_binding(value: &[u8]) -> Option<(String, String)> {
    let v: serde_json::Value = serde_json::from_slice(value).ok()?;
    let chassis = v.get("chassis")?.as_str()?.to_string();
    let tap = match v.get("ifname").and_then(|n| n.as_str()) {
        Some(n) => n.to_string(),
        None => format!(
            "tap{}",
            v.get("id")?.as_str()?.chars().take(11).collect::<String>()
        ),
    };
    Some((chassis, tap))
}

impl NbCache {
    /// A cache whose last good versions of invalid records are kept in `last_good` (and
    /// those it holds from an earlier run are used).
    pub fn with_last_good(last_good: LastGood) -> Self {
        NbCache {
            last_good,
            ..Default::default()
        }
    }

    /// Replaces everything with a full range get: keys no longer there are deleted, the
    /// others put. Returns what changed in force (see [`NbDelta`]).
    pub fn load(
        &mut self,
        prefix: &str,
        kvs: &[Kv],
        opts: &DecodeOptions,
        shared: &Shared,
    ) -> NbDelta {
        let mut d = NbDelta::default();
        let present: BTreeSet<&str> = kvs.iter().map(|kv| kv.key.as_str()).collect();
        for key in self.known_keys(prefix) {
            if !present.contains(key.as_str()) {
                self.delete(prefix, &key, &mut d);
            }
        }
        // Kept versions of records deleted while this agent was not running.
        self.last_good.retain(|k| present.contains(k));
        for kv in kvs {
            // A record already known bad is counted once, not again at every resync.
            let count = !self.invalid.contains_key(&kv.key);
            self.put(prefix, kv, opts, shared, count, &mut d);
        }
        self.judge_stale(prefix, opts, shared, &mut d);
        self.last_good.flush();
        d
    }

    /// Applies watch changes. Returns what changed in force (see [`NbDelta`]).
    pub fn apply(
        &mut self,
        prefix: &str,
        changes: &[Change],
        opts: &DecodeOptions,
        shared: &Shared,
    ) -> NbDelta {
        let mut d = NbDelta::default();
        for c in changes {
            match c {
                Change::Put(kv) => self.put(prefix, kv, opts, shared, true, &mut d),
                Change::Delete(key) => self.delete(prefix, key, &mut d),
            }
        }
        self.judge_stale(prefix, opts, shared, &mut d);
        self.last_good.flush();
        d
    }

    /// Every key this cache holds something for.
    fn known_keys(&self, prefix: &str) -> BTreeSet<String> {
        let s = &self.snapshot;
        let mut keys: BTreeSet<String> = self
            .invalid
            .keys()
            .chain(self.held_taps.keys())
            .cloned()
            .collect();
        let nb = |kind, ids: Vec<&String>| {
            ids.into_iter()
                .map(move |id| crate::nb::key(prefix, kind, id))
                .collect::<Vec<_>>()
        };
        keys.extend(nb(Kind::LSwitch, s.lswitches.keys().collect()));
        keys.extend(nb(
            Kind::LPort,
            s.lports.keys().chain(self.waiting.keys()).collect(),
        ));
        keys.extend(nb(Kind::LRouter, s.lrouters.keys().collect()));
        keys.extend(nb(Kind::Chassis, s.chassis.keys().collect()));
        keys.extend(nb(Kind::SecGroup, s.secgroups.keys().collect()));
        keys.extend(
            s.active_ports
                .keys()
                .map(|(ls, ip)| active::active_key(prefix, ls, *ip)),
        );
        keys
    }

    fn delete(&mut self, prefix: &str, key: &str, d: &mut NbDelta) {
        self.set_invalid(key, None, d);
        self.set_held(prefix, key, None, d);
        self.last_good.forget(key);
        if let Some(Ok(k)) = active::parse_active_key(prefix, key) {
            settle(
                &mut self.snapshot.active_ports,
                &k,
                None,
                &mut d.active_ports,
            );
        }
        if let Some((kind, id)) = parse_key(prefix, key) {
            if kind == Kind::LPort {
                self.unclaim(id, d);
            }
            self.set_in_force(kind, id, None, d);
        }
    }

    /// Notes `key`'s current problem (`None`: it has none).
    fn set_invalid(&mut self, key: &str, reason: Option<String>, d: &mut NbDelta) {
        let changed = match reason {
            Some(r) => self.invalid.insert(key.to_string(), r.clone()) != Some(r),
            None => self.invalid.remove(key).is_some(),
        };
        d.invalid_changed |= changed;
    }

    /// Holds (or releases, `None`) the tap of an invalid lport record.
    fn set_held(
        &mut self,
        prefix: &str,
        key: &str,
        binding: Option<(String, String)>,
        d: &mut NbDelta,
    ) {
        let changed = match binding {
            Some(b) => self.held_taps.insert(key.to_string(), b.clone()) != Some(b),
            None => self.held_taps.remove(key).is_some(),
        };
        if changed && let Some((Kind::LPort, id)) = parse_key(prefix, key) {
            d.lports.insert(id.to_string());
        }
    }

    /// Puts `record` in force for (`kind`, `id`); `None` removes what is there.
    fn set_in_force(&mut self, kind: Kind, id: &str, record: Option<Record>, d: &mut NbDelta) {
        let id = id.to_string();
        let s = &mut self.snapshot;
        macro_rules! settle_as {
            ($variant:ident, $map:ident) => {
                settle_as!($variant, $map, |v| v)
            };
            ($variant:ident, $map:ident, $wrap:expr) => {
                settle(
                    &mut s.$map,
                    &id,
                    record.and_then(|r| match r {
                        Record::$variant(v) => Some($wrap(v)),
                        _ => None,
                    }),
                    &mut d.$map,
                )
            };
        }
        match kind {
            Kind::LSwitch => settle_as!(LSwitch, lswitches),
            Kind::LPort => settle_as!(LPort, lports, Arc::new),
            Kind::LRouter => settle_as!(LRouter, lrouters),
            Kind::Chassis => settle_as!(Chassis, chassis),
            Kind::SecGroup => settle_as!(SecGroup, secgroups),
            Kind::Subnet => {}
        }
    }

    /// The version of (`kind`, `id`) in force, as JSON.
    fn in_force_json(&self, kind: Kind, id: &str) -> Option<serde_json::Value> {
        let s = &self.snapshot;
        let json =
            |v: Result<serde_json::Value, serde_json::Error>| v.expect("NB records serialise");
        match kind {
            Kind::LSwitch => s.lswitches.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::LPort => s.lports.get(id).map(|v| json(serde_json::to_value(&**v))),
            Kind::LRouter => s.lrouters.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::Chassis => s.chassis.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::SecGroup => s.secgroups.get(id).map(|v| json(serde_json::to_value(v))),
            Kind::Subnet => None,
        }
    }

    fn put(
        &mut self,
        prefix: &str,
        kv: &Kv,
        opts: &DecodeOptions,
        shared: &Shared,
        count: bool,
        d: &mut NbDelta,
    ) {
        let key = kv.key.as_str();
        if let Some(parsed) = active::parse_active_key(prefix, key) {
            return self.put_active(key, parsed, &kv.value, shared, count, d);
        }
        let Some((kind, id)) = parse_key(prefix, key) else {
            return;
        };
        match decode_record(kind, id, &kv.value, opts) {
            Ok(Some(Record::LPort(p))) => {
                // In force once judged: it may collide with another port.
                for other in self.claims.set(id, Some((kv.create_revision, &p))) {
                    self.stale.insert(other);
                }
                self.waiting.insert(id.to_string(), p);
                self.stale.insert(id.to_string());
            }
            Ok(record) => {
                self.set_invalid(key, None, d);
                self.last_good.forget(key);
                if record.is_some() {
                    self.set_in_force(kind, id, record, d);
                }
            }
            Err(reason) => {
                if count {
                    warn!(
                        key,
                        "invalid {} record, keeping its last good version if any: {reason}",
                        kind.segment()
                    );
                    shared.count_invalid(kind);
                }
                self.set_invalid(key, Some(reason), d);
                if kind == Kind::LPort {
                    self.unclaim(id, d);
                }
                let binding = || lenient_binding(&kv.value);
                self.keep_last_good(prefix, kind, id, kv.create_revision, opts, binding, d);
            }
        }
    }

    /// Port `id` claims nothing any more (deleted, or its record is invalid): the ports
    /// it collided with are judged again.
    fn unclaim(&mut self, id: &str, d: &mut NbDelta) {
        for other in self.claims.set(id, None) {
            self.stale.insert(other);
        }
        self.waiting.remove(id);
        if self.refused.remove(id) {
            d.lports.insert(id.to_string());
        }
    }

    /// An invalid record: its last good version stays in force; in a new process, the one
    /// an earlier run kept for this very record (same create_revision), if it still
    /// validates. With none, a port's tap (`binding`) is held as it is.
    #[allow(clippy::too_many_arguments)]
    fn keep_last_good(
        &mut self,
        prefix: &str,
        kind: Kind,
        id: &str,
        create_revision: i64,
        opts: &DecodeOptions,
        binding: impl FnOnce() -> Option<(String, String)>,
        d: &mut NbDelta,
    ) {
        let key = crate::nb::key(prefix, kind, id);
        if self.in_force_json(kind, id).is_none()
            && let Some(saved) = self.last_good.get(&key).cloned()
        {
            let value = serde_json::to_vec(&saved.value).expect("JSON serialises");
            match decode_record(kind, id, &value, opts) {
                Ok(Some(record)) if saved.create_revision == create_revision => {
                    info!(
                        key,
                        "invalid record: its last good version from the state file stays in force"
                    );
                    self.set_in_force(kind, id, Some(record), d);
                }
                Ok(_) => {}
                Err(e) => warn!(
                    key,
                    "the last good version kept in the state file is not valid any more, not using it: {e}"
                ),
            }
        }
        match self.in_force_json(kind, id) {
            Some(value) => {
                self.set_held(prefix, &key, None, d);
                self.last_good.keep(
                    &key,
                    Saved {
                        create_revision,
                        value,
                    },
                );
            }
            None => {
                self.last_good.forget(&key);
                if kind == Kind::LPort {
                    self.set_held(prefix, &key, binding(), d);
                }
            }
        }
    }

    /// Puts in force, or refuses, every port whose standing may have changed.
    fn judge_stale(
        &mut self,
        prefix: &str,
        opts: &DecodeOptions,
        shared: &Shared,
        d: &mut NbDelta,
    ) {
        for id in std::mem::take(&mut self.stale) {
            self.judge(prefix, &id, opts, shared, d);
        }
    }

    fn judge(
        &mut self,
        prefix: &str,
        id: &str,
        opts: &DecodeOptions,
        shared: &Shared,
        d: &mut NbDelta,
    ) {
        let Some(created) = self.claims.created(id) else {
            return; // gone, or invalid: nothing to judge
        };
        let Some(current) = self
            .waiting
            .remove(id)
            .or_else(|| self.snapshot.lports.get(id).map(|p| (**p).clone()))
        else {
            return;
        };
        let key = crate::nb::key(prefix, Kind::LPort, id);
        let was_refused = self.refused.contains(id);
        let Some(c) = self.claims.conflict(id) else {
            if was_refused {
                info!(key, "port no longer collides with an older one; in force");
                self.refused.remove(id);
                d.lports.insert(id.to_string());
            }
            self.set_invalid(&key, None, d);
            self.set_held(prefix, &key, None, d);
            self.last_good.forget(&key);
            self.set_in_force(Kind::LPort, id, Some(Record::LPort(current)), d);
            return;
        };
        let reason = format!(
            "lport {id}: {} belongs to the older port {} (refused until {} releases it)",
            c.claim, c.holder, c.holder
        );
        if !was_refused {
            warn!(
                key,
                "port refused, keeping its last good version if any: {reason}"
            );
            shared.count_invalid(Kind::LPort);
            self.refused.insert(id.to_string());
            d.lports.insert(id.to_string());
        }
        self.set_invalid(&key, Some(reason), d);
        // The colliding version itself never stays in force.
        if self.snapshot.lports.get(id).map(|p| &**p) == Some(&current) {
            self.set_in_force(Kind::LPort, id, None, d);
            self.last_good.forget(&key);
        }
        let binding = current.chassis.clone().map(|ch| (ch, current.tap_name()));
        self.waiting.insert(id.to_string(), current);
        self.keep_last_good(prefix, Kind::LPort, id, created, opts, || binding, d);
    }

    /// An `activeport/<lswitch>/<ip>` record (detection way). An invalid one is logged,
    /// counted and skipped: unlike NB objects, no earlier version stays in force (a claim
    /// is only valid as written, and its writer re-claims).
    fn put_active(
        &mut self,
        key: &str,
        parsed: Result<(String, IpAddr), String>,
        value: &[u8],
        shared: &Shared,
        count: bool,
        d: &mut NbDelta,
    ) {
        let decoded = parsed
            .clone()
            .and_then(|(ls, ip)| active::decode_active(&ls, ip, value).map(|a| ((ls, ip), a)));
        match decoded {
            Ok((k, a)) => {
                self.set_invalid(key, None, d);
                settle(
                    &mut self.snapshot.active_ports,
                    &k,
                    Some(a),
                    &mut d.active_ports,
                );
            }
            Err(reason) => {
                if count {
                    warn!(key, "invalid activeport record, ignored: {reason}");
                    shared.count_invalid_named(crate::nb::ACTIVE_PORT_SEGMENT);
                }
                if let Ok(k) = parsed {
                    settle(
                        &mut self.snapshot.active_ports,
                        &k,
                        None,
                        &mut d.active_ports,
                    );
                }
                self.set_invalid(key, Some(reason), d);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPTS: DecodeOptions = DecodeOptions {
        max_allowed_address_pairs: 2,
        allow_any_aap: false,
    };

    const P: &str = "/dragonflow/";

    /// A range get of `pairs`, every key created at revision 1.
    fn load(
        c: &mut NbCache,
        prefix: &str,
        pairs: &[(String, Vec<u8>)],
        opts: &DecodeOptions,
        shared: &Shared,
    ) -> NbDelta {
        let kvs: Vec<Kv> = pairs.iter().map(|(key, value)| kv(key, value, 1)).collect();
        c.load(prefix, &kvs, opts, shared)
    }

    fn kv(key: &str, value: &[u8], create_revision: i64) -> Kv {
        Kv {
            key: key.to_string(),
            value: value.to_vec(),
            create_revision,
        }
    }

    /// A watch put of a key created at revision 1.
    fn put(key: String, value: Vec<u8>) -> Change {
        Change::Put(kv(&key, &value, 1))
    }

    fn port_json(id: &str, aaps: &str) -> Vec<u8> {
        format!(
            r#"{{"id":"{id}","lswitch":"n1","mac":"fa:16:3e:00:00:01","fixed_ips":["192.0.2.5"],"allowed_address_pairs":[{aaps}],"chassis":"hv1"}}"#
        )
        .into_bytes()
    }

    #[test]
    fn decode_checks() {
        assert!(decode_record(Kind::LPort, "p1", &port_json("p1", ""), &OPTS).is_ok());
        assert!(
            decode_record(Kind::LPort, "p2", &port_json("p1", ""), &OPTS).is_err(),
            "id mismatch"
        );
        let three =
            r#"{"ip_address":"192.0.2.6"},{"ip_address":"192.0.2.7"},{"ip_address":"192.0.2.8"}"#;
        assert!(decode_record(Kind::LPort, "p1", &port_json("p1", three), &OPTS).is_err());
        let any = r#"{"ip_address":"0.0.0.0/0"}"#;
        assert!(decode_record(Kind::LPort, "p1", &port_json("p1", any), &OPTS).is_err());
        let allow = DecodeOptions {
            allow_any_aap: true,
            ..OPTS
        };
        assert!(decode_record(Kind::LPort, "p1", &port_json("p1", any), &allow).is_ok());
        assert!(decode_record(Kind::LPort, "p1", b"{", &OPTS).is_err());
        assert!(
            decode_record(
                Kind::LSwitch,
                "n1",
                br#"{"id":"n1","segmentation_id":0}"#,
                &OPTS
            )
            .is_err()
        );
        assert!(decode_record(Kind::Subnet, "s", b"garbage", &OPTS).is_err());
        // Chassis records are parsed, not validated: loopback is fine for one host.
        assert!(matches!(
            decode_record(
                Kind::Chassis,
                "hv1",
                br#"{"name":"hv1","tunnel_ip":"127.0.0.1"}"#,
                &OPTS
            ),
            Ok(Some(Record::Chassis(_)))
        ));
        assert!(
            decode_record(
                Kind::Chassis,
                "hv2",
                br#"{"name":"hv1","tunnel_ip":"198.18.0.1"}"#,
                &OPTS
            )
            .is_err()
        );
    }

    #[test]
    fn secgroups_keep_their_last_good_version() {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let key = format!("{P}secgroup/sg1");
        let good = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
            "protocol":"tcp","port_range_min":22,"port_range_max":22}]}"#;
        assert!(!load(&mut c, P, &[(key.clone(), good.to_vec())], &OPTS, &shared).is_empty());
        assert_eq!(c.snapshot.secgroups["sg1"].rules.len(), 1);
        // Port 0 is refused: the group keeps its previous rules.
        let bad = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
            "protocol":"tcp","port_range_min":0,"port_range_max":22}]}"#;
        let d = c.apply(P, &[put(key.clone(), bad.to_vec())], &OPTS, &shared);
        assert!(d.secgroups.is_empty() && d.invalid_changed, "{d:?}");
        assert_eq!(
            c.snapshot.secgroups["sg1"].rules[0].port_range_min,
            Some(22)
        );
        assert_eq!(shared.invalid_count(Kind::SecGroup), 1);
        assert!(c.invalid[&key].contains("port_range_min 0 is out of range"));
        let d = c.apply(P, &[Change::Delete(key)], &OPTS, &shared);
        assert_eq!(d.secgroups, BTreeSet::from(["sg1".to_string()]));
        assert!(c.snapshot.secgroups.is_empty() && c.invalid.is_empty());
    }

    #[test]
    fn chassis_and_routers_come_and_go() {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let hv2 = format!("{P}chassis/hv2");
        let r1 = format!("{P}lrouter/r1");
        let router = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"n1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24"}]}"#;
        assert!(
            !load(
                &mut c,
                P,
                &[
                    (
                        hv2.clone(),
                        br#"{"name":"hv2","tunnel_ip":"198.18.0.2"}"#.to_vec()
                    ),
                    (r1.clone(), router.to_vec()),
                ],
                &OPTS,
                &shared
            )
            .is_empty()
        );
        assert_eq!(
            c.snapshot.chassis["hv2"].tunnel_ip.to_string(),
            "198.18.0.2"
        );
        assert_eq!(c.snapshot.lrouters["r1"].ports.len(), 1);
        // A bad router update keeps the last good version.
        let d = c.apply(P, &[put(r1.clone(), b"{".to_vec())], &OPTS, &shared);
        assert!(d.lrouters.is_empty() && d.invalid_changed, "{d:?}");
        assert_eq!(shared.invalid_count(Kind::LRouter), 1);
        assert!(c.snapshot.lrouters.contains_key("r1"));
        // Lease expiry deletes the chassis record.
        let d = c.apply(
            P,
            &[Change::Delete(hv2), Change::Delete(r1)],
            &OPTS,
            &shared,
        );
        assert_eq!(d.chassis, BTreeSet::from(["hv2".to_string()]));
        assert_eq!(d.lrouters, BTreeSet::from(["r1".to_string()]));
        assert!(c.snapshot.chassis.is_empty() && c.snapshot.lrouters.is_empty());
    }

    #[test]
    fn active_ports_come_and_go_and_bad_ones_are_skipped() {
        let shared = std::sync::Arc::new(Shared::for_tests());
        let mut c = NbCache::default();
        let key = format!("{P}activeport/n1/192.0.2.100");
        let good = br#"{"lswitch":"n1","ip":"192.0.2.100","port":"p1","mac":"fa:16:3e:00:00:01","chassis":"hv1","since_ms":5,"reason":"garp"}"#;
        let k = ("n1".to_string(), "192.0.2.100".parse().unwrap());
        assert!(!load(&mut c, P, &[(key.clone(), good.to_vec())], &OPTS, &shared).is_empty());
        assert_eq!(c.snapshot.active_ports[&k].port, "p1");
        // A record naming another IP than its key: skipped, counted, no last good kept.
        let wrong = String::from_utf8_lossy(good).replace("192.0.2.100", "192.0.2.7");
        let d = c.apply(P, &[put(key.clone(), wrong.into_bytes())], &OPTS, &shared);
        assert_eq!(d.active_ports, BTreeSet::from([k.clone()]));
        assert!(c.snapshot.active_ports.is_empty());
        assert!(c.invalid.contains_key(&key));
        let bad_key = format!("{P}activeport/n1/not-an-ip");
        c.apply(P, &[put(bad_key, good.to_vec())], &OPTS, &shared);
        let text = crate::obs::metrics::encode(&crate::obs::metrics::registry(shared.clone()));
        assert!(
            text.contains("dragonflow_nb_invalid_records_total{kind=\"activeport\"} 2"),
            "{text}"
        );
        // Fixed, then gone with its lease; the history key is not a claim.
        c.apply(P, &[put(key.clone(), good.to_vec())], &OPTS, &shared);
        assert!(c.snapshot.active_ports.contains_key(&k) && !c.invalid.contains_key(&key));
        c.apply(
            P,
            &[put(
                format!("{P}activeport-log/n1/192.0.2.100"),
                b"[]".to_vec(),
            )],
            &OPTS,
            &shared,
        );
        assert_eq!(c.snapshot.active_ports.len(), 1);
        assert!(
            !c.apply(P, &[Change::Delete(key)], &OPTS, &shared)
                .is_empty()
        );
        assert!(c.snapshot.active_ports.is_empty());
    }

    #[test]
    fn deltas_name_what_changed_in_force() {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let p1 = (format!("{P}lport/p1"), port_json("p1", ""));
        let n1 = (
            format!("{P}lswitch/n1"),
            br#"{"id":"n1","segmentation_id":100}"#.to_vec(),
        );
        let d = load(&mut c, P, &[p1.clone(), n1.clone()], &OPTS, &shared);
        assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
        assert_eq!(d.lswitches, BTreeSet::from(["n1".to_string()]));
        assert!(!d.invalid_changed);
        // The same range get again: nothing changed.
        assert!(load(&mut c, P, &[p1.clone(), n1.clone()], &OPTS, &shared).is_empty());
        // A put of the same value: nothing.
        let same = put(p1.0.clone(), p1.1.clone());
        assert!(c.apply(P, &[same], &OPTS, &shared).is_empty());
        // A resync without the port: only the port is named, and it is gone.
        let d = load(&mut c, P, std::slice::from_ref(&n1), &OPTS, &shared);
        assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
        assert!(d.lswitches.is_empty() && c.snapshot.lports.is_empty());
        // A changed network: only it.
        let n1b = br#"{"id":"n1","segmentation_id":101}"#.to_vec();
        let d = c.apply(P, &[put(n1.0.clone(), n1b)], &OPTS, &shared);
        assert_eq!(d.lswitches, BTreeSet::from(["n1".to_string()]));
        assert!(d.lports.is_empty() && !d.invalid_changed);
    }

    /// An lport record on hv1 with one fixed IP (and a tap of its own unless `tap`).
    fn lport(id: &str, ip: &str, tap: Option<&str>) -> Vec<u8> {
        let tap = tap.map_or(format!("tap{id}"), str::to_string);
        format!(
            r#"{{"id":"{id}","lswitch":"n1","mac":"fa:16:3e:00:00:01","fixed_ips":["{ip}"],"chassis":"hv1","ifname":"{tap}","security_groups":["g"]}}"#
        )
        .into_bytes()
    }

    fn ids(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    fn ip_of(c: &NbCache, id: &str) -> Option<String> {
        c.snapshot
            .lports
            .get(id)
            .map(|p| p.fixed_ips[0].to_string())
    }

    #[test]
    fn the_older_of_two_conflicting_ports_wins_whatever_the_order() {
        let (ka, kb) = (format!("{P}lport/a"), format!("{P}lport/b"));
        // b sorts after a by key but is older: age is create_revision, not the key.
        let a = kv(&ka, &lport("a", "192.0.2.5", None), 9);
        let b = kv(&kb, &lport("b", "192.0.2.5", None), 5);
        // In one range get, in either order.
        for kvs in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
            let shared = Shared::for_tests();
            let mut c = NbCache::default();
            let d = c.load(P, &kvs, &OPTS, &shared);
            assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
            assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.5"));
            assert!(!c.snapshot.lports.contains_key("a"));
            assert_eq!(
                c.invalid[&ka],
                "lport a: IP 192.0.2.5 in lswitch n1 belongs to the older port b \
                 (refused until b releases it)"
            );
            assert_eq!(c.held_taps[&ka], ("hv1".to_string(), "tapa".to_string()));
            assert_eq!(shared.invalid_count(Kind::LPort), 1);
            // A resync recounts nothing and changes nothing.
            assert!(c.load(P, &kvs, &OPTS, &shared).is_empty());
            assert_eq!(shared.invalid_count(Kind::LPort), 1);
        }
        // Through the watch, the younger first: it is in force until the older arrives.
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        c.apply(P, &[Change::Put(a.clone())], &OPTS, &shared);
        assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
        let d = c.apply(P, &[Change::Put(b.clone())], &OPTS, &shared);
        assert_eq!(
            d.lports,
            ids(&["a", "b"]),
            "both ports of the conflict: {d:?}"
        );
        assert!(d.invalid_changed);
        assert!(!c.snapshot.lports.contains_key("a") && c.snapshot.lports.contains_key("b"));
        assert!(c.invalid[&ka].contains("older port b"));
        // The older one goes: the younger is in force again, its tap no longer held.
        let d = c.apply(P, &[Change::Delete(kb.clone())], &OPTS, &shared);
        assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
        assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
        assert!(c.invalid.is_empty() && c.held_taps.is_empty());
        // An AAP on another port's fixed IP collides too; a tap taken twice as well.
        let aap = String::from_utf8(lport("e", "192.0.2.9", None))
            .unwrap()
            .replace(
                r#""chassis""#,
                r#""allowed_address_pairs":[{"ip_address":"192.0.2.5"}],"chassis""#,
            );
        let e = kv(&format!("{P}lport/e"), aap.as_bytes(), 20);
        let f = kv(
            &format!("{P}lport/f"),
            &lport("f", "192.0.2.10", Some("tapa")),
            21,
        );
        c.apply(P, &[Change::Put(e), Change::Put(f)], &OPTS, &shared);
        assert!(c.snapshot.lports.contains_key("a"));
        assert!(c.invalid[&format!("{P}lport/e")].contains("IP 192.0.2.5 in lswitch n1"));
        assert!(
            c.invalid[&format!("{P}lport/f")]
                .contains("tap tapa on chassis hv1 belongs to the older port a")
        );
        assert_eq!(shared.invalid_count(Kind::LPort), 3);
    }

    #[test]
    fn an_update_that_would_conflict_keeps_the_last_good_version() {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let (ka, kb) = (format!("{P}lport/a"), format!("{P}lport/b"));
        c.load(
            P,
            &[
                kv(&ka, &lport("a", "192.0.2.5", None), 5),
                kv(&kb, &lport("b", "192.0.2.6", None), 9),
            ],
            &OPTS,
            &shared,
        );
        // b moves onto a's IP: refused, its last good version stays.
        let d = c.apply(
            P,
            &[Change::Put(kv(&kb, &lport("b", "192.0.2.5", None), 9))],
            &OPTS,
            &shared,
        );
        assert_eq!(d.lports, ids(&["b"]), "b starts being refused: {d:?}");
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
        assert!(c.invalid[&kb].contains("IP 192.0.2.5 in lswitch n1 belongs to the older port a"));
        assert!(c.held_taps.is_empty());
        // Another bad update of b: still the same last good.
        c.apply(P, &[Change::Put(kv(&kb, b"{", 9))], &OPTS, &shared);
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
        c.apply(
            P,
            &[Change::Put(kv(&kb, &lport("b", "192.0.2.5", None), 9))],
            &OPTS,
            &shared,
        );
        // a leaves the IP: b's update takes effect.
        let d = c.apply(
            P,
            &[Change::Put(kv(&ka, &lport("a", "192.0.2.7", None), 5))],
            &OPTS,
            &shared,
        );
        assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.5"));
        assert!(c.invalid.is_empty());
        // The older port moves onto the younger one's IP: the younger, unchanged, is the
        // colliding version itself and leaves force; its tap is held.
        c.apply(
            P,
            &[Change::Put(kv(&ka, &lport("a", "192.0.2.5", None), 5))],
            &OPTS,
            &shared,
        );
        assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
        assert!(!c.snapshot.lports.contains_key("b"));
        assert_eq!(c.held_taps[&kb].1, "tapb");
    }

    fn state_dir(tag: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("df-nbcache-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn last_good_versions_survive_a_restart() {
        let dir = state_dir("restart");
        let shared = Shared::for_tests();
        let kb = format!("{P}lport/b");
        let good = kv(&kb, &lport("b", "192.0.2.6", None), 9);
        let bad = kv(
            &kb,
            br#"{"id":"b","lswitch":"n1","mac":"01:00:5e:00:00:01","chassis":"hv1"}"#,
            9,
        );
        let file = dir.join("hv1.lastgood.json");
        {
            let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
            c.load(P, std::slice::from_ref(&good), &OPTS, &shared);
            assert!(!file.exists(), "nothing invalid, nothing written");
            c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
            assert!(file.exists());
        }
        // A new process sees only the bad value: the kept version is in force.
        let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
        let d = c.load(P, std::slice::from_ref(&bad), &OPTS, &shared);
        assert_eq!(d.lports, ids(&["b"]));
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
        assert_eq!(c.snapshot.lports["b"].security_groups, ["g"]);
        assert!(c.invalid.contains_key(&kb) && c.held_taps.is_empty());
        // Fixed: the kept version is dropped, from the file too.
        let fixed = kv(&kb, &lport("b", "192.0.2.8", None), 9);
        c.apply(P, &[Change::Put(fixed)], &OPTS, &shared);
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.8"));
        let mut again = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
        again.load(P, std::slice::from_ref(&bad), &OPTS, &shared);
        assert!(again.snapshot.lports.is_empty(), "the file no longer has b");
        assert!(again.held_taps.contains_key(&kb));

        // Kept, then the key deleted and re-created (another create_revision) while the
        // agent was down: the kept version belongs to the old record and is not used.
        c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
        let mut other = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
        let recreated = kv(&kb, &bad.value, 30);
        other.load(P, &[recreated], &OPTS, &shared);
        assert!(other.snapshot.lports.is_empty());
        // And a key deleted while the agent was down is forgotten.
        c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
        NbCache::with_last_good(LastGood::open(&dir, "hv1")).load(P, &[], &OPTS, &shared);
        assert!(LastGood::open(&dir, "hv1").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_corrupt_state_file_is_ignored() {
        let dir = state_dir("corrupt");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("hv1.lastgood.json"), b"\x00garbage").unwrap();
        let shared = Shared::for_tests();
        let kb = format!("{P}lport/b");
        let bad = kv(
            &kb,
            br#"{"id":"b","lswitch":"n1","mac":"01:00:5e:00:00:01","chassis":"hv1"}"#,
            9,
        );
        let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
        c.load(P, &[bad], &OPTS, &shared);
        // No last good: the tap is held as the pinned maps have it.
        assert!(c.snapshot.lports.is_empty());
        assert_eq!(c.held_taps[&kb], ("hv1".to_string(), "tapb".to_string()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn invalid_update_keeps_last_good() {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let key = format!("{P}lport/p1");
        let d = load(
            &mut c,
            P,
            &[(
                key.clone(),
                port_json("p1", r#"{"ip_address":"192.0.2.9"}"#),
            )],
            &OPTS,
            &shared,
        );
        assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
        assert_eq!(c.snapshot.lports["p1"].allowed_address_pairs.len(), 1);
        // A bad update: the previous version stays.
        let d = c.apply(P, &[put(key.clone(), b"{oops".to_vec())], &OPTS, &shared);
        assert!(d.lports.is_empty() && d.invalid_changed, "{d:?}");
        assert_eq!(c.snapshot.lports["p1"].allowed_address_pairs.len(), 1);
        assert!(c.invalid.contains_key(&key));
        assert_eq!(shared.invalid_count(Kind::LPort), 1);
        // A resync still holding the bad value keeps the good one and does not recount.
        assert!(
            load(
                &mut c,
                P,
                &[(key.clone(), b"{oops".to_vec())],
                &OPTS,
                &shared
            )
            .is_empty()
        );
        assert!(c.snapshot.lports.contains_key("p1"));
        assert_eq!(shared.invalid_count(Kind::LPort), 1);
        // Delete removes it.
        let d = c.apply(P, &[Change::Delete(key.clone())], &OPTS, &shared);
        assert!(d.lports.contains("p1") && d.invalid_changed, "{d:?}");
        assert!(c.snapshot.lports.is_empty() && c.invalid.is_empty());
        // A bad record seen first (e.g. after a restart): its tap is held as it is.
        let bad = br#"{"id":"p1","lswitch":"n1","mac":"01:00:00:00:00:01","chassis":"hv1"}"#;
        load(&mut c, P, &[(key.clone(), bad.to_vec())], &OPTS, &shared);
        assert!(c.snapshot.lports.is_empty());
        assert_eq!(c.held_taps[&key], ("hv1".to_string(), "tapp1".to_string()));
        let d = c.apply(P, &[Change::Delete(key.clone())], &OPTS, &shared);
        assert!(c.held_taps.is_empty() && d.lports.contains("p1"));
        // A new invalid record has nothing to fall back on.
        c.apply(P, &[put(key, b"{".to_vec())], &OPTS, &shared);
        assert!(c.snapshot.lports.is_empty());
    }
}
