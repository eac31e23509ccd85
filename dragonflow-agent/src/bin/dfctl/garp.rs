//! `dfctl garp`: the gratuitous ARPs / ARP replies for AAP IPs an agent's datapath saw.

use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::{
    client::AgentClient,
    error::{CliError, Result},
    output::{self, Output, ago, dash, now_ms, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum GarpCmd {
    /// The last GARP seen per IP (HTTP GET <agent>/garp).
    List {
        /// The agent's HTTP address (its metrics listener).
        #[arg(
            long,
            env = "DRAGONFLOW_AGENT_URL",
            default_value = "http://127.0.0.1:9465"
        )]
        agent: String,
    },
}

pub(crate) fn run(c: &GarpCmd, timeout: Duration, output: Option<Output>) -> Result<()> {
    let GarpCmd::List { agent } = c;
    let client = AgentClient::new(agent, timeout)?;
    let v = client.get_json("/garp")?;
    let Some(entries) = v.as_array() else {
        return Err(CliError::Unavailable(format!(
            "agent at {agent}: /garp is not a JSON array"
        )));
    };
    output::emit(output.unwrap_or(Output::Table), entries, || {
        garp_table(entries)
    })
}

fn garp_table(entries: &[Value]) -> String {
    let now = now_ms();
    let field = |e: &Value, k: &str| match e.get(k) {
        None | Some(Value::Null) => "-".to_string(),
        Some(Value::String(s)) => dash(s.clone()),
        Some(other) => other.to_string(),
    };
    let mut rows: Vec<Vec<String>> = entries
        .iter()
        .map(|e| {
            let seen = match e.get("last_seen_unix_ms").and_then(Value::as_u64) {
                Some(ms) => ago(now, ms),
                None => field(e, "last_seen_unix_ms"),
            };
            vec![
                field(e, "ip"),
                field(e, "mac"),
                field(e, "ifname"),
                field(e, "lport"),
                field(e, "net_id"),
                field(e, "op"),
                seen,
                field(e, "count"),
            ]
        })
        .collect();
    rows.sort();
    table(
        &[
            "IP",
            "MAC",
            "IFNAME",
            "LPORT",
            "NET_ID",
            "OP",
            "LAST_SEEN",
            "COUNT",
        ],
        rows,
    )
}
