//! The northbound side: etcd session (chassis registration under a lease, range get at
//! revision R, watch from R+1, resync on compaction, reconnect with backoff). What it reads
//! goes to the controller as [`NbEvent`]s, which apply them to the cache of last good NB
//! objects ([`crate::nb::cache`]).
//!
//! The datapath is never touched from here: losing etcd only stops updates, the
//! controller keeps enforcing the last good state.

use std::{
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

use super::{
    call::{self, CallError},
    paged,
};
use crate::{
    config::Config,
    nb::{
        Chassis, Kind,
        cache::{Change, Kv},
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

/// An etcd session: its client and the chassis lease, while it is up (the detection way
/// claims active ports under that lease).
#[derive(Clone)]
pub struct Session {
    pub client: Client,
    pub lease: i64,
}

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
    call::call(CALL_TIMEOUT, attempt)
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
