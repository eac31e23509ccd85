//! A small typed CRUD layer over etcd for NB objects (`<prefix><kind>/<id>` → JSON).
//!
//! - reads decode and validate ([`super::decode::decode_as`]); `list` keeps going past
//!   malformed records and returns them separately so callers can log and count them;
//! - writes validate first, so nothing this layer writes is refused by a reader;
//! - `create` is put-if-absent (a txn comparing the key's version with 0), optionally
//!   also requiring other keys to exist (a port's lswitch);
//! - `update` is read-modify-write guarded by the key's `mod_revision`, retried when a
//!   concurrent writer got there first.
//!
//! Every call is bounded by a timeout: etcd-client connects lazily and a request to an
//! unreachable cluster otherwise waits forever. Watching is not here (the agent owns it);
//! [`NbStore::client`] gives the underlying client for that.

use std::{future::Future, time::Duration};

use etcd_client::{Client, Compare, CompareOp, KvClient, PutOptions, Txn, TxnOp};

use super::{
    call::{self, CallError},
    paged,
};
use crate::nb::{
    Kind,
    decode::{NbObject, NbRecord, decode_as},
    error::{DecodeError, ValidationError},
    etcd::EtcdSettings,
    key,
    rules::ValidationOptions,
};

pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
pub const DEFAULT_OP_TIMEOUT: Duration = Duration::from_secs(5);
/// HTTP/2 keepalive interval and timeout of dfctl's connections: one invocation is short,
/// this only bounds a request stuck on a member that vanished without closing its socket.
const KEEPALIVE: Duration = Duration::from_secs(3);
/// Attempts of an [`NbStore::update`] before giving up on a key that keeps changing.
pub const UPDATE_ATTEMPTS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot connect to etcd at {endpoints}: {source}")]
    Connect {
        endpoints: String,
        #[source]
        source: CallError,
    },
    /// No member could serve the request within the timeout (dead members, no leader,
    /// TLS handshake failures), retried on every member the balancer offered meanwhile.
    #[error("cannot reach etcd at {endpoints} ({op}): {source}")]
    Unreachable {
        endpoints: String,
        op: String,
        #[source]
        source: CallError,
    },
    #[error("etcd at {endpoints}: {op} failed: {source}")]
    Etcd {
        endpoints: String,
        op: String,
        #[source]
        source: CallError,
    },
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{kind} {id}: {source}")]
    Invalid {
        kind: &'static str,
        id: String,
        #[source]
        source: Box<ValidationError>,
    },
    /// A request refused for a reason outside the per-object rules (e.g. by an
    /// [`NbStore::update`] closure).
    #[error("{kind} {id}: {reason}")]
    Refused {
        kind: &'static str,
        id: String,
        reason: String,
    },
    #[error("{kind} {id} not found")]
    NotFound { kind: &'static str, id: String },
    #[error("{kind} {id} already exists")]
    AlreadyExists { kind: &'static str, id: String },
    #[error("{kind} {id}: {dep_kind} {dep_id} does not exist")]
    MissingDependency {
        kind: &'static str,
        id: String,
        dep_kind: &'static str,
        dep_id: String,
    },
    #[error(
        "{kind} {id} kept changing under concurrent writers; gave up after {attempts} attempts"
    )]
    Conflict {
        kind: &'static str,
        id: String,
        attempts: usize,
    },
}

impl StoreError {
    /// etcd could not be reached or failed (as opposed to a refused request).
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            StoreError::Connect { .. } | StoreError::Unreachable { .. } | StoreError::Etcd { .. }
        )
    }
}

/// A record with the etcd revisions it was read at.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Versioned<T> {
    pub value: T,
    pub mod_revision: i64,
    pub create_revision: i64,
}

/// The result of a [`NbStore::list`].
#[derive(Debug)]
pub struct Listing<T> {
    /// Valid records, sorted by key.
    pub items: Vec<Versioned<T>>,
    /// Records that failed to parse or validate (skipped).
    pub malformed: Vec<DecodeError>,
    /// The store revision the listing reflects (watch from `revision + 1`).
    pub revision: i64,
}

/// Typed access to the NB objects under one prefix.
#[derive(Clone)]
pub struct NbStore {
    client: Client,
    prefix: String,
    endpoints: String,
    op_timeout: Duration,
    /// Rules for writes.
    opts: ValidationOptions,
    /// Rules for reads (by default the same as for writes).
    read_opts: ValidationOptions,
}

impl NbStore {
    /// Connects to plain `http://` endpoints with the default timeouts (tests, examples).
    pub async fn connect(endpoints: &[String], prefix: &str) -> Result<Self, StoreError> {
        Self::connect_with(
            &EtcdSettings::plain(endpoints.to_vec()),
            prefix,
            DEFAULT_CONNECT_TIMEOUT,
            DEFAULT_OP_TIMEOUT,
        )
        .await
    }

    /// Connects (lazily, unless a user is set: then authentication is the first request)
    /// with TLS and credentials from `etcd`.
    pub async fn connect_with(
        etcd: &EtcdSettings,
        prefix: &str,
        connect_timeout: Duration,
        op_timeout: Duration,
    ) -> Result<Self, StoreError> {
        let joined = etcd.endpoints_str();
        let options = etcd.connect_options(connect_timeout, KEEPALIVE);
        let client = call::call(connect_timeout + op_timeout, || {
            Client::connect(&etcd.endpoints, Some(options.clone()))
        })
        .await
        .map_err(|source| StoreError::Connect {
            endpoints: joined.clone(),
            source,
        })?;
        Ok(Self {
            client,
            prefix: prefix.to_string(),
            endpoints: joined,
            op_timeout,
            opts: ValidationOptions::default(),
            read_opts: ValidationOptions::default(),
        })
    }

    /// Validation options used for writes and (unless overridden) reads.
    pub fn with_validation(mut self, opts: ValidationOptions) -> Self {
        self.read_opts = opts.clone();
        self.opts = opts;
        self
    }

    /// Validation options for reads only (set after [`with_validation`](Self::with_validation)).
    /// A CLI showing what is stored may relax the policy knobs
    /// ([`ValidationOptions::permissive`]) so that a record written under other options stays
    /// readable; an agent deciding what to enforce should not.
    pub fn with_read_validation(mut self, opts: ValidationOptions) -> Self {
        self.read_opts = opts;
        self
    }

    pub fn validation(&self) -> &ValidationOptions {
        &self.opts
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The underlying client (cheap to clone), e.g. for watches and leases.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// `<prefix><kind>/<id>`.
    pub fn key(&self, kind: Kind, id: &str) -> String {
        key(&self.prefix, kind, id)
    }

    /// `<prefix><kind>/`, the range of one kind.
    pub fn kind_prefix(&self, kind: Kind) -> String {
        format!("{}{}/", self.prefix, kind.segment())
    }

    /// One request, retried on another member while the cluster cannot serve it (see
    /// [`call::call`]); `attempt` gets a fresh KV client each time.
    async fn run<R, F, Fut>(&self, op: impl Into<String>, mut attempt: F) -> Result<R, StoreError>
    where
        F: FnMut(KvClient) -> Fut,
        Fut: Future<Output = Result<R, etcd_client::Error>>,
    {
        call::call(self.op_timeout, || attempt(paged::kv(&self.client)))
            .await
            .map_err(|source| {
                let (endpoints, op) = (self.endpoints.clone(), op.into());
                if source.is_transient() || matches!(source, CallError::Tls(_)) {
                    StoreError::Unreachable {
                        endpoints,
                        op,
                        source,
                    }
                } else {
                    StoreError::Etcd {
                        endpoints,
                        op,
                        source,
                    }
                }
            })
    }

    fn check<T: NbRecord>(&self, obj: &T) -> Result<(), StoreError> {
        obj.validate(&self.opts)
            .map_err(|source| StoreError::Invalid {
                kind: T::KIND.segment(),
                id: obj.id().to_string(),
                source: Box::new(source),
            })
    }

    fn encode<T: NbRecord>(obj: &T) -> Vec<u8> {
        // Serialising these plain structs cannot fail.
        serde_json::to_vec(obj).expect("NB objects serialise to JSON")
    }

    /// One object, or `None` when the key is absent.
    pub async fn get<T: NbRecord>(&self, id: &str) -> Result<Option<Versioned<T>>, StoreError> {
        let k = self.key(T::KIND, id);
        let resp = self
            .run(format!("get {k}"), |mut kv| {
                let k = k.clone();
                async move { kv.get(k, None).await }
            })
            .await?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let value = decode_as::<T>(id, kv.value(), &self.read_opts)?;
        Ok(Some(Versioned {
            value,
            mod_revision: kv.mod_revision(),
            create_revision: kv.create_revision(),
        }))
    }

    /// Like [`get`](Self::get), but a missing object is [`StoreError::NotFound`].
    pub async fn get_existing<T: NbRecord>(&self, id: &str) -> Result<Versioned<T>, StoreError> {
        self.get(id).await?.ok_or_else(|| StoreError::NotFound {
            kind: T::KIND.segment(),
            id: id.to_string(),
        })
    }

    /// Every object of a kind, sorted by id; malformed records are returned apart.
    pub async fn list<T: NbRecord>(&self) -> Result<Listing<T>, StoreError> {
        let p = self.kind_prefix(T::KIND);
        let range = self
            .run(format!("get {p}*"), |mut kv| {
                let p = p.clone();
                async move { paged::get_prefix(&mut kv, &p).await }
            })
            .await?;
        let mut listing = Listing {
            items: Vec::new(),
            malformed: Vec::new(),
            revision: range.revision,
        };
        for kv in &range.kvs {
            let id = String::from_utf8_lossy(&kv.key()[p.len()..]).into_owned();
            match decode_as::<T>(&id, kv.value(), &self.read_opts) {
                Ok(value) => listing.items.push(Versioned {
                    value,
                    mod_revision: kv.mod_revision(),
                    create_revision: kv.create_revision(),
                }),
                Err(e) => listing.malformed.push(e),
            }
        }
        Ok(listing)
    }

    /// Writes an object unconditionally (after validating it); returns the new revision.
    pub async fn put<T: NbRecord>(&self, obj: &T) -> Result<i64, StoreError> {
        self.put_opts(obj, None).await
    }

    /// [`put`](Self::put) attached to a lease (e.g. `chassis/<name>` for liveness).
    pub async fn put_with_lease<T: NbRecord>(
        &self,
        obj: &T,
        lease: i64,
    ) -> Result<i64, StoreError> {
        self.put_opts(obj, Some(PutOptions::new().with_lease(lease)))
            .await
    }

    async fn put_opts<T: NbRecord>(
        &self,
        obj: &T,
        opts: Option<PutOptions>,
    ) -> Result<i64, StoreError> {
        self.check(obj)?;
        let k = self.key(T::KIND, obj.id());
        let value = Self::encode(obj);
        let resp = self
            .run(format!("put {k}"), |mut kv| {
                let (k, value, opts) = (k.clone(), value.clone(), opts.clone());
                async move { kv.put(k, value, opts).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Put-if-absent; [`StoreError::AlreadyExists`] when the key exists.
    pub async fn create<T: NbRecord>(&self, obj: &T) -> Result<i64, StoreError> {
        self.create_requiring(obj, &[]).await
    }

    /// Put-if-absent that also requires other objects to exist at that moment (one txn),
    /// e.g. a port's lswitch: [`StoreError::MissingDependency`] otherwise.
    pub async fn create_requiring<T: NbRecord>(
        &self,
        obj: &T,
        requires: &[(Kind, &str)],
    ) -> Result<i64, StoreError> {
        self.check(obj)?;
        let (kind, id) = (T::KIND.segment(), obj.id().to_string());
        let k = self.key(T::KIND, &id);
        let mut cmps = vec![Compare::version(k.as_str(), CompareOp::Equal, 0)];
        for (dk, did) in requires {
            cmps.push(Compare::version(self.key(*dk, did), CompareOp::Greater, 0));
        }
        let txn = Txn::new()
            .when(cmps)
            .and_then([TxnOp::put(k.as_str(), Self::encode(obj), None)]);
        let resp = self
            .run(format!("create {k}"), |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        if resp.succeeded() {
            return Ok(resp.header().map_or(0, |h| h.revision()));
        }
        // Find out which comparison failed, for the message.
        let resp = self
            .run(format!("get {k}"), |mut kv| {
                let k = k.clone();
                async move { kv.get(k, None).await }
            })
            .await?;
        if !resp.kvs().is_empty() {
            // Also when our own create was applied but its answer lost and the txn retried
            // on another member (`call::call`): rare, and indistinguishable here from an
            // identical record written by someone else.
            return Err(StoreError::AlreadyExists { kind, id });
        }
        for (dk, did) in requires {
            let dkey = self.key(*dk, did);
            let r = self
                .run(format!("get {dkey}"), |mut kv| {
                    let dkey = dkey.clone();
                    async move { kv.get(dkey, None).await }
                })
                .await?;
            if r.kvs().is_empty() {
                return Err(StoreError::MissingDependency {
                    kind,
                    id,
                    dep_kind: dk.segment(),
                    dep_id: did.to_string(),
                });
            }
        }
        // Everything is in place now: a concurrent writer raced us; report it as such.
        Err(StoreError::Conflict {
            kind,
            id,
            attempts: 1,
        })
    }

    /// Read-modify-write: `f` edits the current object; the write only lands if nobody
    /// changed the key since it was read (compare `mod_revision`), else it is redone with
    /// the fresh object, up to [`UPDATE_ATTEMPTS`] times. `f` may refuse with an error,
    /// which is returned as is. The id cannot be changed.
    pub async fn update<T, F>(&self, id: &str, mut f: F) -> Result<Versioned<T>, StoreError>
    where
        T: NbRecord,
        F: FnMut(&mut T) -> Result<(), StoreError>,
    {
        let kind = T::KIND.segment();
        let k = self.key(T::KIND, id);
        for _ in 0..UPDATE_ATTEMPTS {
            let cur = self.get_existing::<T>(id).await?;
            let mut value = cur.value.clone();
            f(&mut value)?;
            if value.id() != id {
                return Err(StoreError::Invalid {
                    kind,
                    id: id.to_string(),
                    source: Box::new(ValidationError::InvalidId {
                        what: "id",
                        id: value.id().to_string(),
                        reason: "an update cannot rename an object",
                    }),
                });
            }
            self.check(&value)?;
            let txn = Txn::new()
                .when([Compare::mod_revision(
                    k.as_str(),
                    CompareOp::Equal,
                    cur.mod_revision,
                )])
                .and_then([TxnOp::put(k.as_str(), Self::encode(&value), None)]);
            let resp = self
                .run(format!("update {k}"), |mut kv| {
                    let txn = txn.clone();
                    async move { kv.txn(txn).await }
                })
                .await?;
            if resp.succeeded() {
                let rev = resp.header().map_or(0, |h| h.revision());
                return Ok(Versioned {
                    value,
                    mod_revision: rev,
                    create_revision: cur.create_revision,
                });
            }
        }
        Err(StoreError::Conflict {
            kind,
            id: id.to_string(),
            attempts: UPDATE_ATTEMPTS,
        })
    }

    /// Writes objects unconditionally in one transaction (all or none), after validating
    /// each; returns the new revision. The caller keeps `objs` within the server's limit
    /// of operations per transaction (etcd's `--max-txn-ops`, 128 by default).
    pub async fn put_all(&self, objs: &[NbObject]) -> Result<i64, StoreError> {
        let mut ops = Vec::with_capacity(objs.len());
        for o in objs {
            let (k, v) = match o {
                NbObject::Chassis(x) => self.encoded(x)?,
                NbObject::LSwitch(x) => self.encoded(x)?,
                NbObject::Subnet(x) => self.encoded(x)?,
                NbObject::LPort(x) => self.encoded(x)?,
                NbObject::LRouter(x) => self.encoded(x)?,
                NbObject::SecGroup(x) => self.encoded(x)?,
            };
            ops.push(TxnOp::put(k, v, None));
        }
        let txn = Txn::new().and_then(ops);
        let resp = self
            .run(format!("put {} objects (txn)", objs.len()), |mut kv| {
                let txn = txn.clone();
                async move { kv.txn(txn).await }
            })
            .await?;
        Ok(resp.header().map_or(0, |h| h.revision()))
    }

    /// Key and value of a valid object.
    fn encoded<T: NbRecord>(&self, obj: &T) -> Result<(String, Vec<u8>), StoreError> {
        self.check(obj)?;
        Ok((self.key(T::KIND, obj.id()), Self::encode(obj)))
    }

    /// Deletes one object; `false` when it did not exist.
    pub async fn delete<T: NbRecord>(&self, id: &str) -> Result<bool, StoreError> {
        self.delete_key(T::KIND, id).await
    }

    /// [`delete`](Self::delete) by kind.
    pub async fn delete_key(&self, kind: Kind, id: &str) -> Result<bool, StoreError> {
        let k = self.key(kind, id);
        let resp = self
            .run(format!("delete {k}"), |mut kv| {
                let k = k.clone();
                async move { kv.delete(k, None).await }
            })
            .await?;
        Ok(resp.deleted() > 0)
    }

    /// Deletes several objects in one transaction (all or nothing).
    pub async fn delete_all(&self, objs: &[(Kind, &str)]) -> Result<(), StoreError> {
        let ops: Vec<TxnOp> = objs
            .iter()
            .map(|(kind, id)| TxnOp::delete(self.key(*kind, id), None))
            .collect();
        let txn = Txn::new().and_then(ops);
        self.run("delete (txn)", |mut kv| {
            let txn = txn.clone();
            async move { kv.txn(txn).await }
        })
        .await?;
        Ok(())
    }
}
