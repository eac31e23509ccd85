//! `dfctl monitor`: the live stream of an agent's datapath events (`GET /monitor`):
//! drops with the headers of the dropped frame, and GARPs. One readable line per event,
//! or the agent's JSON lines (`-o json`).

use std::io::{BufRead, BufReader, Write};

use clap::{Args, ValueEnum};
use serde_json::Value;

use crate::{
    error::{CliError, Result},
    output::{Output, utc},
};

/// A direction as the agent names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Dir {
    /// Sent by a local VM.
    FromVm,
    /// Toward a local VM (its security groups' ingress rules).
    ToVm,
    /// Arrived from another hypervisor through the tunnel.
    FromTunnel,
}

#[derive(Args, Debug)]
pub(crate) struct MonitorArgs {
    /// Only events of this port: a logical port id, a tap name or an ifindex.
    #[arg(long, value_name = "NAME_OR_ID")]
    port: Option<String>,
    /// Only drops for this reason (e.g. src_ip_spoof, sg_denied; see the metrics'
    /// `reason` label).
    #[arg(long, value_name = "R")]
    reason: Option<String>,
    /// Only events of this direction.
    #[arg(long, value_enum)]
    direction: Option<Dir>,
    /// Kinds of events: drops, garp (comma-separated) [default: all].
    #[arg(long, value_name = "KINDS")]
    events: Option<String>,
    /// Stop after this many events (default: run until interrupted).
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    /// The agent's HTTP address (its metrics listener).
    #[arg(
        long,
        env = "DRAGONFLOW_AGENT_URL",
        default_value = "http://127.0.0.1:9465"
    )]
    agent: String,
}

/// Percent-encodes a query value (everything but unreserved characters).
fn enc(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub(crate) fn run(a: &MonitorArgs, output: Option<Output>) -> Result<()> {
    let json = match output.unwrap_or(Output::Table) {
        Output::Table => false,
        Output::Json => true,
        Output::Yaml => {
            return Err(CliError::Refused(
                "dfctl monitor prints text or JSON lines (-o text|json)".into(),
            ));
        }
    };
    let base = a.agent.trim_end_matches('/');
    if !base.starts_with("http://") {
        return Err(CliError::Refused(format!(
            "--agent {base:?}: only http://host:port URLs are supported"
        )));
    }
    let mut q = Vec::new();
    if let Some(p) = &a.port {
        q.push(format!("port={}", enc(p)));
    }
    if let Some(r) = &a.reason {
        q.push(format!("reason={}", enc(r)));
    }
    if let Some(d) = a.direction {
        let d = d.to_possible_value().expect("no skipped variant");
        q.push(format!("direction={}", d.get_name().replace('-', "_")));
    }
    if let Some(e) = &a.events {
        q.push(format!("events={}", enc(e)));
    }
    let url = format!("{base}/monitor?{}", q.join("&"));
    // No timeout: the stream lasts as long as the user wants it.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .build()
        .into();
    let unavailable = |why: String| CliError::Unavailable(format!("agent at {base}: {why}"));
    let mut resp = http
        .get(&url)
        .call()
        .map_err(|e| unavailable(format!("GET {url}: {e}")))?;
    let status = resp.status();
    if status == ureq::http::StatusCode::BAD_REQUEST {
        let body = resp.body_mut().read_to_string().unwrap_or_default();
        return Err(CliError::Refused(body.trim().to_string()));
    }
    if status != ureq::http::StatusCode::OK {
        return Err(unavailable(format!("GET {url} answered {status}")));
    }
    let reader = BufReader::new(resp.body_mut().as_reader());
    let mut out = std::io::stdout().lock();
    let mut seen = 0u64;
    for line in reader.lines() {
        let line = line.map_err(|e| unavailable(format!("reading the stream: {e}")))?;
        let Ok(v) = serde_json::from_str::<Value>(&line) else {
            continue;
        };
        let kind = v.get("kind").and_then(Value::as_str).unwrap_or("");
        if kind == "heartbeat" {
            continue;
        }
        let text = if json { line } else { text_line(&v) };
        // A closed pipe (`| head`) ends the command quietly.
        if writeln!(out, "{text}").and_then(|()| out.flush()).is_err() {
            return Ok(());
        }
        if kind != "lost" {
            seen += 1;
        }
        if a.count.is_some_and(|n| seen >= n) {
            return Ok(());
        }
    }
    Err(unavailable("the agent closed the stream".into()))
}

/// One event as a line: time, port, direction, reason, `src_mac > dst_mac`, then what the
/// frame says (IPs, protocol and ports, ARP or ND fields).
pub(crate) fn text_line(v: &Value) -> String {
    let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("");
    let n = |k: &str| v.get(k).and_then(Value::as_u64);
    if s("kind") == "lost" {
        return format!(
            "-- lost {} events (this client fell behind) --",
            n("count").unwrap_or(0)
        );
    }
    let time = n("time_unix_ms").map(utc).unwrap_or_default();
    let port = match (s("port"), s("ifname")) {
        ("", "") => format!("ifindex {}", n("ifindex").unwrap_or(0)),
        ("", t) => t.to_string(),
        (p, "") => p.to_string(),
        (p, t) => format!("{p} ({t})"),
    };
    let mut parts = vec![time, port, s("direction").to_string()];
    match s("kind") {
        "drop" => parts.push(format!("DROP {}", s("reason"))),
        k => parts.push(k.to_uppercase()),
    }
    if !s("src_mac").is_empty() {
        parts.push(format!("{} > {}", s("src_mac"), or_dash(s("dst_mac"))));
    }
    if let Some(vlan) = n("vlan") {
        parts.push(format!("vlan {vlan}"));
    }
    if !s("arp_op").is_empty() {
        if s("kind") == "garp" && !s("nd_target").is_empty() {
            parts.push(format!("na target {}", s("nd_target")));
        } else {
            parts.push(format!(
                "arp {} sender {} {} target {}",
                s("arp_op"),
                or_dash(s("arp_sender_mac")),
                or_dash(s("arp_sender_ip")),
                or_dash(s("arp_target_ip"))
            ));
        }
    } else if !s("src_ip").is_empty() {
        let mut l = format!("{} > {}", s("src_ip"), s("dst_ip"));
        if !s("proto").is_empty() {
            l.push(' ');
            l.push_str(s("proto"));
        }
        if let (Some(sp), Some(dp)) = (n("src_port"), n("dst_port")) {
            l.push_str(&format!(" {sp} > {dp}"));
        }
        if let Some(t) = n("icmp_type") {
            l.push_str(&format!(" type {t}"));
        }
        if !s("nd_target").is_empty() {
            l.push_str(&format!(" nd target {}", s("nd_target")));
        }
        parts.push(l);
    } else if !s("ethertype").is_empty() {
        parts.push(format!("ethertype {}", s("ethertype")));
    }
    if let Some(len) = n("frame_len") {
        parts.push(format!("len {len}"));
    }
    parts.retain(|p| !p.is_empty());
    parts.join("  ")
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_of_a_spoof_and_an_arp() {
        let v: Value = serde_json::from_str(
            r#"{"kind":"drop","time_unix_ms":0,"ifindex":7,"ifname":"tap1","port":"web1",
            "direction":"from_vm","reason":"src_ip_spoof","frame_len":60,
            "src_mac":"02:00:00:00:00:01","dst_mac":"02:00:00:00:00:02",
            "src_ip":"192.0.2.99","dst_ip":"192.0.2.2","proto":"udp","src_port":1234,"dst_port":53}"#,
        )
        .unwrap();
        assert_eq!(
            text_line(&v),
            "1970-01-01T00:00:00.000Z  web1 (tap1)  from_vm  DROP src_ip_spoof  \
             02:00:00:00:00:01 > 02:00:00:00:00:02  192.0.2.99 > 192.0.2.2 udp 1234 > 53  len 60"
        );
        let v: Value = serde_json::from_str(
            r#"{"kind":"drop","ifindex":7,"ifname":"tap1","port":"","direction":"from_vm",
            "reason":"arp_spoof","src_mac":"02:00:00:00:00:01","dst_mac":"ff:ff:ff:ff:ff:ff",
            "arp_op":"request","arp_sender_mac":"02:00:00:00:00:01","arp_sender_ip":"192.0.2.9",
            "arp_target_ip":"192.0.2.1"}"#,
        )
        .unwrap();
        assert!(
            text_line(&v)
                .ends_with("arp request sender 02:00:00:00:00:01 192.0.2.9 target 192.0.2.1"),
            "{}",
            text_line(&v)
        );
        assert_eq!(
            text_line(&serde_json::json!({"kind":"lost","count":3})),
            "-- lost 3 events (this client fell behind) --"
        );
    }
}
