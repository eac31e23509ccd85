//! `dfctl ct`: the conntrack table of the agent on this host, read from its pinned map.

use std::path::{Path, PathBuf};

use clap::Subcommand;
use serde::Serialize;

use crate::{
    error::{CliError, Result, error_chain},
    output::{Output, Tabular, emit_rows},
};

#[derive(Subcommand, Debug)]
pub(crate) enum CtCmd {
    /// Tracked flows, as seen from each port (local = the VM's side).
    List {
        /// The chassis whose agent runs here (its pins are under <bpffs>/dragonflow/<chassis>).
        #[arg(long, env = "DRAGONFLOW_CHASSIS")]
        chassis: String,
        /// Where bpffs is mounted.
        #[arg(long, env = "DRAGONFLOW_BPFFS", default_value = dragonflow_agent::config::DEFAULT_BPFFS)]
        bpffs: PathBuf,
        /// Only the flows of this tap.
        #[arg(long)]
        ifindex: Option<u32>,
    },
}

/// One conntrack entry, for `ct list`.
#[derive(Serialize)]
struct CtRow {
    ifindex: u32,
    proto: u8,
    local: String,
    lport: u16,
    remote: String,
    rport: u16,
    state: &'static str,
    origin: &'static str,
    idle_s: f64,
    policy_gen: u32,
}

impl Tabular for CtRow {
    const HEADERS: &'static [&'static str] = &[
        "IFINDEX", "PROTO", "LOCAL", "REMOTE", "STATE", "ORIGIN", "IDLE", "GEN",
    ];
    fn row(&self) -> Vec<String> {
        vec![
            self.ifindex.to_string(),
            self.proto.to_string(),
            format!("{} {}", self.local, self.lport),
            format!("{} {}", self.remote, self.rport),
            self.state.to_string(),
            self.origin.to_string(),
            format!("{:.1}s", self.idle_s),
            self.policy_gen.to_string(),
        ]
    }
}

pub(crate) fn run(c: &CtCmd, output: Option<Output>) -> Result<()> {
    let CtCmd::List {
        chassis,
        bpffs,
        ifindex,
    } = c;
    let rows = read(chassis, bpffs, *ifindex)?;
    let rows: Vec<&CtRow> = rows.iter().collect();
    emit_rows(output.unwrap_or(Output::Table), &rows)
}

fn read(chassis: &str, bpffs: &Path, ifindex: Option<u32>) -> Result<Vec<CtRow>> {
    use aya::maps::{HashMap, Map, MapData};
    use dragonflow_common::{addr::FAMILY_V4, maps, sg};
    let path = dragonflow_agent::config::pin_root_of(bpffs, chassis)
        .join("maps")
        .join(maps::CT);
    let unavailable = |e: &dyn std::error::Error| {
        CliError::Unavailable(format!(
            "cannot open {} (is the agent of chassis {chassis} running here, and are you root?): {}",
            path.display(),
            error_chain(e)
        ))
    };
    let data = MapData::from_pin(&path).map_err(|e| unavailable(&e))?;
    let map = Map::from_map_data(data).map_err(|e| unavailable(&e))?;
    let ct: HashMap<MapData, sg::CtKey, sg::CtValue> =
        HashMap::try_from(map).map_err(|e| unavailable(&e))?;
    let now = dragonflow_agent::conntrack::monotonic_ns();
    let addr = |family: u8, b: &[u8; 16]| -> String {
        if family == FAMILY_V4 {
            std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string()
        } else {
            std::net::Ipv6Addr::from(*b).to_string()
        }
    };
    let mut rows: Vec<CtRow> = ct
        .iter()
        .filter_map(|r| r.ok())
        .filter(|(k, _)| ifindex.is_none_or(|i| i == k.ifindex))
        .map(|(k, v)| CtRow {
            ifindex: k.ifindex,
            proto: k.proto,
            local: addr(k.family, &k.local),
            lport: u16::from_be(k.lport),
            remote: addr(k.family, &k.remote),
            rport: u16::from_be(k.rport),
            state: match v.state {
                sg::CT_TCP_SYN_SENT => "syn_sent",
                sg::CT_TCP_ESTABLISHED => "established",
                sg::CT_TCP_CLOSING => "closing",
                sg::CT_TCP_CLOSED => "closed",
                sg::CT_UNREPLIED => "unreplied",
                sg::CT_REPLIED => "replied",
                _ => "?",
            },
            origin: match v.origin {
                sg::CT_ORIGIN_EGRESS => "egress",
                sg::CT_ORIGIN_INGRESS => "ingress",
                _ => "?",
            },
            idle_s: now.saturating_sub(v.last_seen_ns) as f64 / 1e9,
            policy_gen: v.policy_gen,
        })
        .collect();
    rows.sort_by(|a, b| {
        (a.ifindex, a.proto, &a.local, a.lport, &a.remote, a.rport)
            .cmp(&(b.ifindex, b.proto, &b.local, b.lport, &b.remote, b.rport))
    });
    Ok(rows)
}
