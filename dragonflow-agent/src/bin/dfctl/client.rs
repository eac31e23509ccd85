//! The agent's HTTP endpoints (`/garp`, …) as dfctl reads them: one blocking GET each,
//! on ureq (plain HTTP: the agent's listener has no TLS).

use std::time::Duration;

use crate::error::{CliError, Result};

/// Bodies larger than this are refused rather than read into memory.
const MAX_BODY: u64 = 64 << 20;

pub(crate) struct AgentClient {
    /// `http://host[:port][/prefix]` without a trailing `/`.
    base: String,
    http: ureq::Agent,
}

impl AgentClient {
    /// A client of the agent at `base` (`http://host[:port][/prefix]`); refuses other
    /// URLs before any connection is tried.
    pub(crate) fn new(base: &str, timeout: Duration) -> Result<Self> {
        let rest = base.strip_prefix("http://").ok_or_else(|| {
            CliError::Refused(format!(
                "--agent {base:?}: only http://host:port URLs are supported"
            ))
        })?;
        if rest.split('/').next().is_none_or(str::is_empty) {
            return Err(CliError::Refused(format!("--agent {base:?} has no host")));
        }
        let http = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            // Status codes are reported with the path asked for (below), not as ureq's error.
            .http_status_as_error(false)
            // The agent is reached directly (usually on loopback): an HTTP_PROXY meant for
            // the outside world must not capture it.
            .proxy(None)
            .build()
            .into();
        Ok(AgentClient {
            base: base.trim_end_matches('/').to_string(),
            http,
        })
    }

    /// GET `<base><path>` and parse the body of a 200 as JSON.
    pub(crate) fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let unavailable =
            |why: String| CliError::Unavailable(format!("agent at {}: {why}", self.base));
        let mut resp = self
            .http
            .get(&url)
            .header("Accept", "application/json")
            .call()
            .map_err(|e| unavailable(format!("GET {url}: {e}")))?;
        if resp.status() != ureq::http::StatusCode::OK {
            return Err(unavailable(format!("GET {url} answered {}", resp.status())));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| unavailable(format!("GET {url}: reading the body: {e}")))?;
        serde_json::from_str(&body).map_err(|e| unavailable(format!("{path} is not JSON: {e}")))
    }

    /// POST `body` as JSON to `<base><path>` and parse the body of a 200 as JSON; another
    /// status is reported with the agent's explanation (the body).
    pub(crate) fn post_json(
        &self,
        path: &str,
        body: &serde_json::Value,
    ) -> Result<serde_json::Value> {
        let url = format!("{}{path}", self.base);
        let unavailable =
            |why: String| CliError::Unavailable(format!("agent at {}: {why}", self.base));
        let mut resp = self
            .http
            .post(&url)
            .header("Accept", "application/json")
            .header("Content-Type", "application/json")
            .send(body.to_string())
            .map_err(|e| unavailable(format!("POST {url}: {e}")))?;
        let status = resp.status();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| unavailable(format!("POST {url}: reading the body: {e}")))?;
        if status == ureq::http::StatusCode::BAD_REQUEST
            || status == ureq::http::StatusCode::NOT_FOUND
        {
            return Err(CliError::Refused(format!("{path}: {}", text.trim())));
        }
        if status != ureq::http::StatusCode::OK {
            return Err(unavailable(format!(
                "POST {url} answered {status}: {}",
                text.trim()
            )));
        }
        serde_json::from_str(&text).map_err(|e| unavailable(format!("{path} is not JSON: {e}")))
    }
}
