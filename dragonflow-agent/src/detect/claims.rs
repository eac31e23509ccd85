//! The claims in etcd: the claim and history records, the transactions that read them
//! and the etcd session they are written under.

use std::{
    net::IpAddr,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use etcd_client::{Client, KeyValue, Txn, TxnOp};
use serde::{Deserialize, Serialize};
use tokio::time;

use super::judge::Why;
use crate::nb::{ActivePort, MacAddr, active::decode_active};

/// A claim's identity: (lswitch, IP).
pub(super) type Key = (String, IpAddr);

/// Records kept per key (oldest dropped first).
pub const HISTORY_MAX: usize = 32;
/// Attempts of a claim or removal transaction that lost a race before giving up (the next
/// sighting or probe tries again).
pub(super) const TXN_ATTEMPTS: usize = 3;
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened to the key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Event {
    Claimed,
    Released,
}

/// One line of the history.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryRecord {
    /// Unix time, ms.
    pub at_ms: u64,
    pub event: Event,
    /// The holder claimed or released.
    pub port: String,
    pub mac: MacAddr,
    /// The holder's chassis.
    pub chassis: String,
    pub why: Why,
    /// The agent (chassis) that wrote the record.
    pub by: String,
}

/// Appends `r`, keeping the last [`HISTORY_MAX`] records.
pub fn push_history(h: &mut Vec<HistoryRecord>, r: HistoryRecord) {
    h.push(r);
    if h.len() > HISTORY_MAX {
        let extra = h.len() - HISTORY_MAX;
        h.drain(..extra);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ActiveError {
    #[error("etcd {what}")]
    Etcd {
        what: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    #[error("etcd {0}: timed out after {CALL_TIMEOUT:?}")]
    Timeout(&'static str),
    #[error("no etcd session (claims resume when the agent is connected again)")]
    NoSession,
}

pub(super) async fn call<T>(
    what: &'static str,
    f: impl Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, ActiveError> {
    match time::timeout(CALL_TIMEOUT, f).await {
        Ok(r) => r.map_err(|source| ActiveError::Etcd { what, source }),
        Err(_) => Err(ActiveError::Timeout(what)),
    }
}

/// The claim and the history of one key, as read in one transaction.
pub(super) struct Current {
    pub(super) entry: Option<(ActivePort, KeyValue)>,
    /// mod_revision of the claim key (0: absent).
    pub(super) entry_rev: i64,
    pub(super) history: Vec<HistoryRecord>,
    pub(super) history_rev: i64,
}

pub(super) async fn read(
    client: &mut Client,
    key: &Key,
    ak: &str,
    hk: &str,
) -> Result<Current, ActiveError> {
    let resp = call(
        "read activeport",
        client.txn(Txn::new().and_then([TxnOp::get(ak, None), TxnOp::get(hk, None)])),
    )
    .await?;
    let mut kvs = resp.op_responses().into_iter().map(|r| match r {
        etcd_client::TxnOpResponse::Get(g) => g.kvs().first().cloned(),
        _ => None,
    });
    let (a, h) = (kvs.next().flatten(), kvs.next().flatten());
    // An undecodable record is replaced like an absent one, but under its revision.
    let entry_rev = a.as_ref().map_or(0, |kv| kv.mod_revision());
    let entry = a.and_then(|kv| {
        decode_active(&key.0, key.1, kv.value())
            .ok()
            .map(|e| (e, kv))
    });
    Ok(Current {
        entry,
        entry_rev,
        history: h
            .as_ref()
            .and_then(|kv| serde_json::from_slice(kv.value()).ok())
            .unwrap_or_default(),
        history_rev: h.as_ref().map_or(0, |kv| kv.mod_revision()),
    })
}

pub(super) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
