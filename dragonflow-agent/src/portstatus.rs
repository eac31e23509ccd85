//! Publishes what the datapath does with each local port as `<prefix>portstatus/<lport>`
//! records under the chassis lease, for the Neutron driver (docs/neutron.md: the record's
//! contract).
//!
//! The controller says what each port's state is now ([`PortStates`], on a watch channel,
//! after every publication of its view); this task turns changes into etcd writes through
//! the etcd session: a put when a port's state (or reason) changes, a delete when the port
//! is no longer reported. A new session (lease) rewrites every record: records of a lease
//! that expired are gone from etcd, and the driver must not read "not enforced" for ports
//! that are. Writes that fail are retried every [`RETRY`] while the session lasts.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use etcd_client::{Client, PutOptions};
use thiserror::Error;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::{
    config::Config,
    etcd::{
        call::{self, CallError},
        session::Session,
    },
    nb::model::{PORT_STATUS_SEGMENT, PortStates, PortStatus},
    report::Chain,
};

/// Each etcd call's budget (retries included).
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How soon failed writes are tried again.
const RETRY: Duration = Duration::from_secs(2);

#[derive(Debug, Error)]
pub enum StatusError {
    #[error("{what} {key}: {source}")]
    Etcd {
        what: &'static str,
        key: String,
        #[source]
        source: CallError,
    },
    #[error("cannot encode the record of {key}: {source}")]
    Encode {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

/// `<prefix>portstatus/<lport id>`.
pub fn status_key(prefix: &str, lport: &str) -> String {
    format!("{prefix}{PORT_STATUS_SEGMENT}/{lport}")
}

/// What etcd should hold: the records of `states`, each with the time its state began.
#[derive(Debug, Default)]
struct Records {
    /// lport → the record wanted (its `since` kept while the state stays).
    want: BTreeMap<String, PortStatus>,
}

impl Records {
    /// Takes the controller's new states; `now` is the `since` of a state that changed.
    fn update(&mut self, chassis: &str, states: &PortStates, now: &str) {
        self.want.retain(|id, _| states.contains_key(id));
        for (id, (state, reason)) in states {
            match self.want.get_mut(id) {
                Some(r) if r.state == *state => r.reason.clone_from(reason),
                _ => {
                    self.want.insert(
                        id.clone(),
                        PortStatus {
                            chassis: chassis.to_string(),
                            state: *state,
                            since: now.to_string(),
                            reason: reason.clone(),
                        },
                    );
                }
            }
        }
    }
}

/// RFC 3339 in UTC, whole seconds (`2026-12-03T16:52:29Z`).
fn now_rfc3339() -> String {
    format!("{:.0}", jiff::Timestamp::now())
}

/// Runs until the controller's channel closes; writes under the lease of the etcd session
/// `sessions` carries (none while etcd is unreachable).
pub async fn run(
    cfg: Arc<Config>,
    mut states: watch::Receiver<PortStates>,
    mut sessions: watch::Receiver<Option<Session>>,
) {
    let mut records = Records::default();
    // What etcd holds under the current session, as this task wrote it.
    let mut written: BTreeMap<String, PortStatus> = BTreeMap::new();
    let mut session = sessions
        .borrow_and_update()
        .as_ref()
        .map(|s| (s.client.clone(), s.lease));
    records.update(&cfg.chassis, &states.borrow_and_update(), &now_rfc3339());
    let mut failing = false;
    loop {
        if let Some((client, lease)) = &session {
            match sync(&cfg.prefix, client, *lease, &records.want, &mut written).await {
                Ok(()) => {
                    if failing {
                        info!("port status records written again");
                    }
                    failing = false;
                }
                Err(e) => {
                    if !failing {
                        warn!("port status: {} (retried every {RETRY:?})", Chain(&e));
                    }
                    failing = true;
                }
            }
        }
        tokio::select! {
            r = states.changed() => {
                if r.is_err() {
                    return;
                }
                records.update(&cfg.chassis, &states.borrow_and_update(), &now_rfc3339());
            }
            r = sessions.changed() => {
                if r.is_err() {
                    return;
                }
                session = sessions.borrow_and_update().as_ref().map(|s| (s.client.clone(), s.lease));
                // Under a new lease every record is written again (the old lease's may be
                // gone); without a session nothing can be written.
                written.clear();
                failing = false;
                if let Some((_, lease)) = &session {
                    debug!(lease = format_args!("{lease:x}"), "port status: new etcd session");
                }
            }
            _ = tokio::time::sleep(RETRY), if failing => {}
        }
    }
}

/// Puts the records of `want` that differ from `written` and deletes those no longer
/// wanted, updating `written` as each call succeeds.
async fn sync(
    prefix: &str,
    client: &Client,
    lease: i64,
    want: &BTreeMap<String, PortStatus>,
    written: &mut BTreeMap<String, PortStatus>,
) -> Result<(), StatusError> {
    let mut first_error = None;
    let gone: Vec<String> = written
        .keys()
        .filter(|id| !want.contains_key(*id))
        .cloned()
        .collect();
    for id in gone {
        let key = status_key(prefix, &id);
        let r = call::call(CALL_TIMEOUT, || {
            let (mut c, k) = (client.clone(), key.clone());
            async move { c.delete(k, None).await }
        })
        .await;
        match r {
            Ok(_) => {
                debug!(lport = %id, "port status removed");
                written.remove(&id);
            }
            Err(source) => {
                first_error.get_or_insert(StatusError::Etcd {
                    what: "delete",
                    key,
                    source,
                });
            }
        }
    }
    for (id, rec) in want {
        if written.get(id) == Some(rec) {
            continue;
        }
        let key = status_key(prefix, id);
        let value = match serde_json::to_string(rec) {
            Ok(v) => v,
            Err(source) => {
                first_error.get_or_insert(StatusError::Encode { key, source });
                continue;
            }
        };
        let r = call::call(CALL_TIMEOUT, || {
            let (mut c, k, v) = (client.clone(), key.clone(), value.clone());
            async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
        })
        .await;
        match r {
            Ok(_) => {
                info!(lport = %id, state = ?rec.state, reason = %rec.reason, "port status written");
                written.insert(id.clone(), rec.clone());
            }
            Err(source) => {
                first_error.get_or_insert(StatusError::Etcd {
                    what: "put",
                    key,
                    source,
                });
            }
        }
    }
    first_error.map_or(Ok(()), Err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nb::model::PortState;

    fn obs(state: PortState, reason: &str) -> (PortState, String) {
        (state, reason.into())
    }

    #[test]
    fn since_changes_only_with_the_state() {
        let mut r = Records::default();
        let mut s = PortStates::from([("p1".into(), obs(PortState::FailClosed, "map full"))]);
        r.update("hv1", &s, "2026-12-03T10:00:00Z");
        assert_eq!(r.want["p1"].since, "2026-12-03T10:00:00Z");
        assert_eq!(r.want["p1"].chassis, "hv1");
        // Same state, new reason: the reason follows, `since` stays.
        s.insert("p1".into(), obs(PortState::FailClosed, "still full"));
        r.update("hv1", &s, "2026-12-03T10:00:05Z");
        assert_eq!(r.want["p1"].since, "2026-12-03T10:00:00Z");
        assert_eq!(r.want["p1"].reason, "still full");
        // New state: new `since`.
        s.insert("p1".into(), obs(PortState::Attached, ""));
        r.update("hv1", &s, "2026-12-03T10:00:09Z");
        assert_eq!(r.want["p1"].state, PortState::Attached);
        assert_eq!(r.want["p1"].since, "2026-12-03T10:00:09Z");
        // Gone from the states: gone from what is wanted.
        r.update("hv1", &PortStates::new(), "2026-12-03T10:00:10Z");
        assert!(r.want.is_empty());
    }

    #[test]
    fn timestamps_are_rfc3339_utc_whole_seconds() {
        let t = now_rfc3339();
        assert!(t.ends_with('Z') && !t.contains('.'), "{t}");
        assert!(t.parse::<jiff::Timestamp>().is_ok(), "{t}");
    }
}
