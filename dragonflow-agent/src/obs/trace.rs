//! `POST /trace`: a frame through this chassis's loaded programs in trace mode
//! (`datapath::trace`), answered as JSON for `dfctl trace`: the programs run, the counter
//! slots the frame would have moved (which name every stage it passed: port security's
//! path, the conntrack state of each side, the forwarding outcome or the drop reason), the
//! security-group lookups, the forwarding decision and the frame as it would leave.

use std::net::Ipv4Addr;

use dragonflow_common::{
    sg::{DIR_EGRESS, IDENT_WORLD},
    trace::{
        FWD_BACK, FWD_FLOOD, FWD_GROUP, FWD_HANDOFF, FWD_KERNEL, FWD_LOCAL, FWD_TUNNEL,
        SG_MATCH_ANY, SG_MATCH_IDENT, TraceRecord, TraceSg,
    },
    verdict::{DIRECTIONS, DropReason, EventStat, PassPath, Stat, stat_index},
};
use serde::{Deserialize, Serialize};

use crate::{config::Hook, datapath::trace::Outcome};

/// The request: the frame (hex) as the port's VM would send it, and the port by its NB
/// id (resolved to its tap here) or by the tap's ifindex.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Request {
    #[serde(default)]
    pub port: Option<String>,
    #[serde(default)]
    pub ifindex: Option<u32>,
    pub frame: String,
}

/// One counter slot the frame would have moved.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Counted {
    pub direction: String,
    /// `drop`, `pass` or `event`.
    pub kind: String,
    pub name: String,
}

/// One program run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Program {
    pub program: String,
    pub action: String,
}

/// The rules one side was judged by.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SgSide {
    /// `egress` (the sender's rules) or `ingress` (the receiver's).
    pub direction: String,
    pub ifindex: u32,
    /// The NB port behind `ifindex`, when this chassis has it.
    pub port: Option<String>,
    /// The remote address's identity (`0`: the world, no group or prefix of a rule).
    pub identity: u32,
    pub protocol: u8,
    /// Destination port (TCP/UDP) or ICMP type << 8 | code the rules were looked up with.
    pub port_or_type: u16,
    /// `identity` (a rule for the remote's identity), `any` (a rule for any remote) or
    /// `none`.
    pub matched: String,
}

/// The forwarding decision.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Forward {
    /// `none`, `local`, `back`, `tunnel`, `flood`, `group`, `kernel` or `handoff`.
    pub kind: String,
    pub ifindex: u32,
    pub tap: Option<String>,
    pub port: Option<String>,
    pub vni: u32,
    pub remote: Option<Ipv4Addr>,
}

/// The answer of `POST /trace`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Response {
    pub chassis: String,
    pub hook: String,
    pub ifindex: u32,
    pub port: Option<String>,
    pub programs: Vec<Program>,
    pub counted: Vec<Counted>,
    /// `pass` or `drop`.
    pub verdict: String,
    pub reason: Option<String>,
    /// The last pass path counted (the forwarding outcome), if it passed.
    pub path: Option<String>,
    pub forward: Forward,
    pub security_groups: Vec<SgSide>,
    /// The frame after the last program, hex: as it would leave (a reply from the
    /// responder, a routed frame with its new MACs and TTL).
    pub frame_out: String,
}

/// The counter slot `index` as (direction, stat).
pub fn slot(index: u32) -> Option<(&'static str, Stat)> {
    for d in DIRECTIONS {
        let stats = DropReason::ALL
            .iter()
            .map(|r| Stat::Drop(*r))
            .chain(PassPath::ALL.iter().map(|p| Stat::Pass(*p)))
            .chain(EventStat::ALL.iter().map(|e| Stat::Event(*e)));
        for s in stats {
            if stat_index(d, s) == index {
                return Some((d.name(), s));
            }
        }
    }
    None
}

fn counted(index: u32) -> Counted {
    match slot(index) {
        Some((direction, s)) => {
            let (kind, name) = match s {
                Stat::Drop(r) => ("drop", r.name()),
                Stat::Pass(p) => ("pass", p.name()),
                Stat::Event(e) => ("event", e.name()),
            };
            Counted {
                direction: direction.into(),
                kind: kind.into(),
                name: name.into(),
            }
        }
        None => Counted {
            direction: "?".into(),
            kind: "slot".into(),
            name: index.to_string(),
        },
    }
}

/// A pass path of port security (the others are forwarding outcomes).
pub fn is_port_security(path: &str) -> bool {
    PassPath::ALL
        .iter()
        .any(|p| p.name() == path && (*p as u32) <= PassPath::Ipv6Unspecified as u32)
}

fn fwd_kind(k: u32) -> &'static str {
    match k {
        FWD_LOCAL => "local",
        FWD_BACK => "back",
        FWD_TUNNEL => "tunnel",
        FWD_FLOOD => "flood",
        FWD_GROUP => "group",
        FWD_KERNEL => "kernel",
        FWD_HANDOFF => "handoff",
        _ => "none",
    }
}

fn action(program: &str, retval: u32) -> String {
    let xdp = [
        "XDP_ABORTED",
        "XDP_DROP",
        "XDP_PASS",
        "XDP_TX",
        "XDP_REDIRECT",
    ];
    if program.ends_with("xdp") {
        xdp.get(retval as usize)
            .map_or_else(|| retval.to_string(), |s| (*s).to_string())
    } else {
        match retval as i32 {
            -1 => "TC_ACT_UNSPEC".into(),
            0 => "TC_ACT_OK".into(),
            2 => "TC_ACT_SHOT".into(),
            7 => "TC_ACT_REDIRECT".into(),
            r => r.to_string(),
        }
    }
}

/// Names of the taps and ports on this chassis, by ifindex.
pub trait Names {
    fn tap(&self, ifindex: u32) -> Option<String>;
    fn port(&self, ifindex: u32) -> Option<String>;
}

/// The answer for `outcome`, a trace of a frame from the tap `ifindex`.
pub fn render(
    chassis: &str,
    hook: Hook,
    ifindex: u32,
    outcome: &Outcome,
    names: &dyn Names,
) -> Response {
    let r: &TraceRecord = &outcome.record;
    let n = (r.n_stats as usize).min(r.stats.len());
    let mut counted: Vec<Counted> = r.stats[..n].iter().map(|i| counted(*i)).collect();
    // In the order of the pipeline: port security's path is counted once the frame is
    // decided, after the later stages; it comes first here.
    counted.sort_by_key(|c| u8::from(!(c.kind == "pass" && is_port_security(&c.name))));
    let drop = counted.iter().rev().find(|c| c.kind == "drop");
    let path = counted
        .iter()
        .rev()
        .find(|c| c.kind == "pass")
        .map(|c| c.name.clone());
    let sides =
        r.sg.iter()
            .filter(|s| s.ifindex != 0)
            .map(|s: &TraceSg| SgSide {
                direction: if s.dir == DIR_EGRESS {
                    "egress".into()
                } else {
                    "ingress".into()
                },
                ifindex: s.ifindex,
                port: names.port(s.ifindex),
                identity: if s.ident == IDENT_WORLD { 0 } else { s.ident },
                protocol: s.proto,
                port_or_type: s.port,
                matched: match s.matched {
                    SG_MATCH_IDENT => "identity",
                    SG_MATCH_ANY => "any",
                    _ => "none",
                }
                .into(),
            })
            .collect();
    let frame = outcome
        .runs
        .last()
        .map(|p| p.frame.as_slice())
        .unwrap_or(&[]);
    Response {
        chassis: chassis.into(),
        hook: match hook {
            Hook::Xdp => "xdp",
            Hook::Tc => "tc",
        }
        .into(),
        ifindex,
        port: names.port(ifindex),
        programs: outcome
            .runs
            .iter()
            .map(|p| Program {
                program: p.program.into(),
                action: action(p.program, p.retval),
            })
            .collect(),
        verdict: if drop.is_some() { "drop" } else { "pass" }.into(),
        reason: drop.map(|c| c.name.clone()),
        path: if drop.is_some() { None } else { path },
        forward: Forward {
            kind: fwd_kind(r.fwd).into(),
            ifindex: r.out_ifindex,
            tap: (r.fwd == FWD_LOCAL || r.fwd == FWD_BACK)
                .then(|| names.tap(r.out_ifindex))
                .flatten(),
            port: (r.fwd == FWD_LOCAL || r.fwd == FWD_BACK)
                .then(|| names.port(r.out_ifindex))
                .flatten(),
            vni: if r.fwd == FWD_TUNNEL { r.vni } else { 0 },
            remote: (r.fwd == FWD_TUNNEL).then(|| Ipv4Addr::from(r.remote_ip.to_ne_bytes())),
        },
        counted,
        security_groups: sides,
        frame_out: hex(frame),
    }
}

pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of a hex string (whitespace and `:` ignored).
pub fn unhex(s: &str) -> Result<Vec<u8>, String> {
    let digits: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b':')
        .collect();
    if !digits.len().is_multiple_of(2) {
        return Err("odd number of hex digits".into());
    }
    digits
        .chunks(2)
        .map(|p| {
            let s = std::str::from_utf8(p).map_err(|_| "not hex".to_string())?;
            u8::from_str_radix(s, 16).map_err(|_| format!("not hex: {s:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use dragonflow_common::verdict::Direction;

    use super::*;

    #[test]
    fn slots_name_back() {
        let i = stat_index(Direction::ToVm, Stat::Drop(DropReason::SgDenied));
        assert_eq!(slot(i), Some(("to_vm", Stat::Drop(DropReason::SgDenied))));
        let i = stat_index(Direction::FromVm, Stat::Event(EventStat::CtNew));
        assert_eq!(slot(i), Some(("from_vm", Stat::Event(EventStat::CtNew))));
        assert_eq!(slot(u32::MAX), None);
    }

    #[test]
    fn hex_round_trip() {
        assert_eq!(unhex("0a:ff 10").unwrap(), vec![0x0a, 0xff, 0x10]);
        assert_eq!(hex(&[0x0a, 0xff]), "0aff");
        assert!(unhex("abc").is_err());
        assert!(unhex("zz").is_err());
    }
}
