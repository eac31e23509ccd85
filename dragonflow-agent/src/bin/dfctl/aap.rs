//! `dfctl aap`: shared allowed-address-pair IPs and the detection way's records
//! (`activeport`): holders, mode, the active port and its history.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
    time::Duration,
};

use clap::Subcommand;
use dragonflow_agent::{
    detect::claims::{Event, HistoryRecord},
    etcd::{call, paged},
    nb::{AapMode, ActivePort, Chassis, LPort, LSwitch, active},
};
use serde::Serialize;

use crate::{
    ctx::Ctx,
    error::{CliError, Result, error_chain},
    output::{self, ago, dash, mode, now_ms, table},
};

#[derive(Subcommand, Debug)]
pub(crate) enum AapCmd {
    /// Per network: every IP listed as a single-IP AAP by two or more ports (or with an
    /// active entry), its holders, the mode, and the active port with its chassis and since
    /// when.
    List {
        /// Only this lswitch.
        #[arg(long)]
        lswitch: Option<String>,
    },
    /// Who held the IP, when, and why it changed (claims and removals, oldest first).
    History {
        /// The lswitch of the IP.
        lswitch: String,
        /// The shared IP (an AAP of two or more ports).
        ip: String,
    },
}

/// One row of `dfctl aap list` (also its JSON/YAML shape).
#[derive(Debug, Serialize)]
struct AapRow {
    lswitch: String,
    ip: IpAddr,
    /// Ports listing the IP as a single-IP AAP, as `port@chassis` (`-` when unbound).
    holders: Vec<String>,
    /// The network's mode: its override, else the modes published by the chassis of
    /// its holders.
    mode: String,
    active: Option<ActivePort>,
}

impl Ctx {
    pub(crate) async fn aap(&self, c: AapCmd, timeout: Duration) -> Result<()> {
        match c {
            AapCmd::List { lswitch } => self.aap_list(lswitch.as_deref(), timeout).await,
            AapCmd::History { lswitch, ip } => {
                let ip: IpAddr = ip
                    .parse()
                    .map_err(|_| CliError::Refused(format!("{ip:?} is not an IP address")))?;
                self.aap_history(&lswitch, ip, timeout).await
            }
        }
    }

    /// Raw key-values under `key` (a prefix when `prefix`), bounded by `timeout`.
    async fn raw_get(
        &self,
        key: &str,
        prefix: bool,
        timeout: Duration,
    ) -> Result<Vec<etcd_client::KeyValue>> {
        let got = call::call(timeout, || {
            let mut kv = paged::kv(self.store.client());
            async move {
                if prefix {
                    paged::get_prefix(&mut kv, key).await.map(|r| r.kvs)
                } else {
                    kv.get(key, None).await.map(|mut r| r.take_kvs())
                }
            }
        })
        .await;
        got.map_err(|e| CliError::Unavailable(format!("etcd: get {key}: {}", error_chain(&e))))
    }

    async fn aap_list(&self, only: Option<&str>, timeout: Duration) -> Result<()> {
        let prefix = self.store.prefix().to_string();
        let ports = self.items::<LPort>().await?;
        let switches = self.items::<LSwitch>().await?;
        let chassis = self.items::<Chassis>().await?;
        let mut active: BTreeMap<(String, IpAddr), ActivePort> = BTreeMap::new();
        for kv in self
            .raw_get(&active::active_prefix(&prefix), true, timeout)
            .await?
        {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            match active::parse_active_key(&prefix, &key)
                .unwrap_or_else(|| Err(format!("{key}: not an activeport key")))
                .and_then(|(ls, ip)| active::decode_active(&ls, ip, kv.value()))
            {
                Ok(a) => {
                    active.insert((a.lswitch.clone(), a.ip), a);
                }
                Err(e) => eprintln!("warning: skipping malformed record {key}: {e}"),
            }
        }
        // (lswitch, ip) → holders, from single-IP AAPs.
        let mut vips: BTreeMap<(String, IpAddr), Vec<String>> = BTreeMap::new();
        for p in &ports {
            for a in p
                .allowed_address_pairs
                .iter()
                .filter(|a| a.ip_address.is_host())
            {
                let who = format!("{}@{}", p.id, p.chassis.as_deref().unwrap_or("-"));
                let h = vips
                    .entry((p.lswitch.clone(), a.ip_address.addr))
                    .or_default();
                if !h.contains(&who) {
                    h.push(who);
                }
            }
        }
        let row = |key: &(String, IpAddr), holders: Vec<String>| AapRow {
            lswitch: key.0.clone(),
            ip: key.1,
            holders,
            mode: network_mode(&key.0, &switches, &ports, &chassis),
            active: active.get(key).cloned(),
        };
        let mut rows = Vec::new();
        for (key, holders) in &vips {
            if holders.len() < 2 && !active.contains_key(key) {
                continue;
            }
            if only.is_some_and(|o| o != key.0) {
                continue;
            }
            rows.push(row(key, holders.clone()));
        }
        // Entries whose IP no port lists any more (removed by their agent shortly).
        for key in active.keys() {
            if !vips.contains_key(key) && only.is_none_or(|o| o == key.0) {
                rows.push(row(key, Vec::new()));
            }
        }
        output::emit(self.list_output(), &rows, || aap_table(&rows))
    }

    async fn aap_history(&self, lswitch: &str, ip: IpAddr, timeout: Duration) -> Result<()> {
        let key = active::history_key(self.store.prefix(), lswitch, ip);
        let kvs = self.raw_get(&key, false, timeout).await?;
        let Some(kv) = kvs.first() else {
            return Err(CliError::Refused(format!(
                "no active-port history for {ip} on lswitch {lswitch} (never claimed)"
            )));
        };
        let records: Vec<HistoryRecord> = serde_json::from_slice(kv.value())
            .map_err(|e| CliError::Unavailable(format!("{key}: malformed history: {e}")))?;
        output::emit(self.list_output(), &records, || history_table(&records))
    }
}

fn aap_table(rows: &[AapRow]) -> String {
    let now = now_ms();
    let rows = rows
        .iter()
        .map(|r| {
            let a = r.active.as_ref();
            vec![
                r.lswitch.clone(),
                r.ip.to_string(),
                dash(r.holders.join(";")),
                r.mode.clone(),
                a.map_or("-".into(), |a| a.port.clone()),
                a.map_or("-".into(), |a| a.mac.to_string()),
                a.map_or("-".into(), |a| a.chassis.clone()),
                a.map_or("-".into(), |a| ago(now, a.since_ms)),
                a.map_or("-".into(), |a| a.reason.clone()),
            ]
        })
        .collect();
    table(
        &[
            "LSWITCH",
            "IP",
            "HOLDERS",
            "MODE",
            "ACTIVE_PORT",
            "MAC",
            "CHASSIS",
            "SINCE",
            "REASON",
        ],
        rows,
    )
}

fn history_table(records: &[HistoryRecord]) -> String {
    let now = now_ms();
    let rows = records
        .iter()
        .map(|r| {
            vec![
                output::utc(r.at_ms),
                ago(now, r.at_ms),
                match r.event {
                    Event::Claimed => "claimed".into(),
                    Event::Released => "released".into(),
                },
                r.port.clone(),
                r.mac.to_string(),
                r.chassis.clone(),
                r.why.name().into(),
                r.by.clone(),
            ]
        })
        .collect();
    table(
        &[
            "WHEN", "AGO", "EVENT", "PORT", "MAC", "CHASSIS", "WHY", "BY",
        ],
        rows,
    )
}

/// `detection (lswitch)` for an override; else the modes the chassis of the network's
/// ports publish: one mode, or `mixed (hv1=…, hv2=…)` when they disagree.
fn network_mode(ls: &str, switches: &[LSwitch], ports: &[LPort], chassis: &[Chassis]) -> String {
    if let Some(m) = switches
        .iter()
        .find(|s| s.id == ls)
        .and_then(|s| s.aap_mode)
    {
        return format!("{} (lswitch)", mode(m));
    }
    let hosts: BTreeSet<&str> = ports
        .iter()
        .filter(|p| p.lswitch == ls)
        .filter_map(|p| p.chassis.as_deref())
        .collect();
    let modes: Vec<(&str, AapMode)> = chassis
        .iter()
        .filter(|c| hosts.contains(c.name.as_str()))
        .map(|c| (c.name.as_str(), c.aap_mode))
        .collect();
    match modes.first() {
        None => "-".into(),
        Some((_, m)) if modes.iter().all(|(_, x)| x == m) => mode(*m),
        Some(_) => format!(
            "mixed ({})",
            modes
                .iter()
                .map(|(c, m)| format!("{c}={}", mode(*m)))
                .collect::<Vec<_>>()
                .join(",")
        ),
    }
}
