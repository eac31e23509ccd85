//! `dfctl port status PORT`: one port's datapath counters as its agent reports them
//! (`GET /state`, `port_stats`): frames from the VM (the kernel's count on its tap) and
//! those passed, drops by direction and reason, conntrack entries in use and the tap's
//! state.

use std::time::Duration;

use clap::Subcommand;
use serde_json::Value;

use crate::{
    client::AgentClient,
    error::{CliError, Result},
    output::{self, Output, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum PortCmd {
    /// Counters of one port on this host's agent (HTTP GET <agent>/state).
    Status {
        /// The port: its logical port id, its tap name or the tap's ifindex.
        port: String,
        /// The agent's HTTP address (its metrics listener).
        #[arg(
            long,
            env = "DRAGONFLOW_AGENT_URL",
            default_value = "http://127.0.0.1:9465"
        )]
        agent: String,
    },
}

pub(crate) fn run(c: &PortCmd, timeout: Duration, output: Option<Output>) -> Result<()> {
    let PortCmd::Status { port, agent } = c;
    let client = AgentClient::new(agent, timeout)?;
    let state = client.get_json("/state")?;
    let rows = state
        .get("port_stats")
        .and_then(Value::as_array)
        .ok_or_else(|| {
            CliError::Unavailable(format!("agent at {agent}: /state has no port_stats"))
        })?;
    let found = rows.iter().find(|r| {
        let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("");
        s("lport") == port
            || s("tap") == port
            || r.get("ifindex")
                .and_then(Value::as_u64)
                .map(|i| i.to_string())
                == Some(port.clone())
    });
    let Some(row) = found else {
        return Err(CliError::Refused(format!(
            "port {port}: no tap of this agent carries it (or its tap has no counters yet)"
        )));
    };
    output::emit(output.unwrap_or(Output::Table), row, || status_table(row))
}

fn status_table(r: &Value) -> String {
    let s = |k: &str| match r.get(k) {
        Some(Value::String(v)) if !v.is_empty() => v.clone(),
        Some(Value::Number(n)) => n.to_string(),
        _ => "-".into(),
    };
    let mut rows = vec![
        vec!["port".into(), s("lport")],
        vec![
            "tap".into(),
            format!("{} (ifindex {})", s("tap"), s("ifindex")),
        ],
        vec!["tap state".into(), s("tap_state")],
        vec![
            "conntrack entries".into(),
            format!(
                "{} opened by the port, {} toward it",
                s("ct_egress"),
                s("ct_ingress")
            ),
        ],
    ];
    rows.push(vec!["frames from the VM".into(), s("frames_from_vm")]);
    rows.push(vec!["passes from_vm".into(), s("passes_from_vm")]);
    rows.push(vec!["drops total".into(), s("drops_total")]);
    if let Some(d) = r.get("drops").and_then(Value::as_object) {
        for (dir, reasons) in d {
            for (reason, n) in reasons.as_object().into_iter().flatten() {
                rows.push(vec![format!("drops {dir} {reason}"), n.to_string()]);
            }
        }
    }
    table(&["field", "value"], rows)
}
