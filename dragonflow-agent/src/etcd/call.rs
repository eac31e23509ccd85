//! Calls that route around a dead cluster member.
//!
//! Failover: etcd-client balances requests over one tonic channel per endpoint with
//! power-of-two-choices. tonic reports a channel that once connected as *ready* even after
//! its member died (the reconnect error is handed to the next request instead), so about
//! one request in N goes to the dead member and fails at once with UNAVAILABLE. etcdctl
//! (grpc-go) retries such requests on another member; [`call`] does the same: an UNAVAILABLE
//! answer (connection refused, "leader changed", "no leader") is retried, on whichever
//! member the balancer picks next, until the caller's time budget is spent. Every request
//! also carries `require_leader`, so that a member cut off from the quorum answers "no
//! leader" at once instead of serving stale reads or hanging until the timeout.

use std::{future::Future, time::Duration};

use tonic::Code;

/// What went wrong in one etcd call, in the operator's words.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    #[error("TLS handshake with etcd failed: {0}")]
    Tls(String),
    #[error("etcd authentication failed: {0}")]
    Auth(String),
    #[error("etcd refused: permission denied: {0}")]
    PermissionDenied(String),
    #[error("etcd has no leader (quorum lost?): {0}")]
    NoLeader(String),
    #[error("etcd unavailable: {0}")]
    Unavailable(String),
    /// With TLS 1.3 the client finishes its side of the handshake before the server
    /// checks the client's certificate: a refused certificate shows up as a closed
    /// connection rather than an alert.
    #[error(
        "etcd closed the connection (with TLS: no client certificate, or one it does not trust?): {0}"
    )]
    Closed(String),
    #[error("no answer within {}s{}", .after.as_secs_f32(), .last.as_ref().map(|l| format!(" (last error: {l})")).unwrap_or_default())]
    Timeout {
        after: Duration,
        last: Option<Box<CallError>>,
    },
    #[error(transparent)]
    Other(etcd_client::Error),
}

impl CallError {
    /// Classifies an etcd-client error by its gRPC status and its innermost cause.
    pub fn classify(e: etcd_client::Error) -> CallError {
        let (code, text) = match &e {
            etcd_client::Error::GRpcStatus(st) => (Some(st.code()), chain_text(st)),
            etcd_client::Error::TransportError(t) => (Some(Code::Unavailable), chain_text(t)),
            _ => (None, String::new()),
        };
        let lower = text.to_ascii_lowercase();
        let tls = [
            "certificate",
            "handshake",
            "tls",
            "unknownissuer",
            "alert",
            "invalidcontenttype",
            "corrupt message",
        ];
        match code {
            _ if tls.iter().any(|w| lower.contains(w)) && !lower.contains("etcdserver") => {
                CallError::Tls(text)
            }
            Some(Code::Unauthenticated) => CallError::Auth(text),
            Some(Code::InvalidArgument) if lower.contains("authentication failed") => {
                CallError::Auth(text)
            }
            Some(Code::FailedPrecondition) if lower.contains("authentication is not enabled") => {
                CallError::Auth(text)
            }
            Some(Code::PermissionDenied) => CallError::PermissionDenied(text),
            Some(Code::Unavailable) if lower.contains("no leader") => CallError::NoLeader(text),
            Some(Code::Cancelled | Code::Unavailable | Code::Unknown)
                if ["connection closed", "broken pipe", "connection reset"]
                    .iter()
                    .any(|w| lower.contains(w)) =>
            {
                CallError::Closed(text)
            }
            Some(Code::Unavailable) => CallError::Unavailable(text),
            _ => CallError::Other(e),
        }
    }

    /// How much a transient failure tells an operator (see [`call`]).
    fn rank(&self) -> u8 {
        match self {
            CallError::NoLeader(_) | CallError::Closed(_) => 2,
            CallError::Unavailable(_) => 1,
            _ => 0,
        }
    }

    /// Worth another try, possibly on another member: the request did not reach a member
    /// that could serve it (dead member, election under way, quorum lost).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            CallError::Unavailable(_)
                | CallError::NoLeader(_)
                | CallError::Closed(_)
                | CallError::Timeout { .. }
        )
    }
}

/// A gRPC status' message and its innermost cause ("Connection refused", the rustls
/// error), instead of tonic's nested debug output.
fn chain_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut src = e.source();
    let mut innermost = None;
    while let Some(s) = src {
        innermost = Some(s.to_string());
        src = s.source();
    }
    if let Some(i) = innermost
        && !text.contains(&i)
    {
        text = format!("{text}: {i}");
    }
    text
}

/// Pause between two attempts of [`call`]: long enough for the balancer to notice a dead
/// member, short enough that a leader election (about a second with etcd's defaults) is
/// ridden out within a few tries.
const RETRY_PAUSE: Duration = Duration::from_millis(100);

/// The shortest time one attempt of [`call`] may take before it is abandoned and retried.
/// A write that reached a follower just as its leader died is forwarded to the dead leader
/// and lost: etcd answers it only after its own request timeout (7 s with the default
/// election timeout), longer than a caller waits. An attempt gets a third of the budget,
/// but at least this, so that a large range get on a healthy cluster is not cut short.
const MIN_ATTEMPT: Duration = Duration::from_secs(2);

/// Runs `attempt` until it succeeds, fails for good, or `budget` is spent. Transient
/// failures ([`CallError::is_transient`]), and attempts that take longer than a third of
/// the budget, are retried: each attempt is a new request that the balancer may send to
/// another member. Only for requests that may be repeated: reads, puts, and txns guarded
/// by a comparison (a guarded txn whose first answer was lost fails its comparison the
/// second time, which callers handle).
pub async fn call<T, F, Fut>(budget: Duration, mut attempt: F) -> Result<T, CallError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, etcd_client::Error>>,
{
    let start = tokio::time::Instant::now();
    let deadline = start + budget;
    let per_attempt = (budget / 3).max(MIN_ATTEMPT);
    // The most telling failure so far: "no leader" from a live member says more than
    // "connection refused" from a dead one.
    let mut telling: Option<CallError> = None;
    loop {
        let attempt_deadline = (tokio::time::Instant::now() + per_attempt).min(deadline);
        let err = match tokio::time::timeout_at(attempt_deadline, attempt()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) => CallError::classify(e),
            Err(_) => CallError::Timeout {
                after: per_attempt.min(budget),
                last: None,
            },
        };
        if !err.is_transient() {
            return Err(err);
        }
        if telling.as_ref().is_none_or(|t| err.rank() >= t.rank()) {
            telling = Some(err);
        }
        if tokio::time::Instant::now() + RETRY_PAUSE >= deadline {
            return Err(CallError::Timeout {
                after: budget,
                last: telling.map(Box::new),
            });
        }
        tokio::time::sleep(RETRY_PAUSE).await;
    }
}
