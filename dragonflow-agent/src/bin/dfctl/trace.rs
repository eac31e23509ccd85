//! `dfctl trace`: a described frame (or a given one) through the real programs and live
//! maps of the agent of the port's chassis (its `POST /trace`, docs/DESIGN.md "Tracing a
//! packet"): the stages it passed, the verdict and drop reason, the security-group rule
//! that allowed it (or the groups none of whose rules did) and the frame as it would
//! leave. Nothing a VM could observe changes.

use std::net::{IpAddr, Ipv4Addr};

use clap::{Args, ValueEnum};
use dragonflow_agent::{
    nb::model::{EtherType, LPort, LRouter, RuleDirection, SecGroup, SecGroupRule},
    obs::trace::{Counted, Response, hex, is_port_security, unhex},
};

use crate::{
    client::AgentClient,
    ctx::Ctx,
    error::{CliError, Result},
    output::{self, Output},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub(crate) enum Proto {
    /// A TCP SYN.
    Tcp,
    /// A UDP datagram.
    Udp,
    /// An ICMP echo request.
    Icmp,
    /// An ARP request for the destination.
    Arp,
}

#[derive(Args, Debug)]
pub(crate) struct TraceArgs {
    /// The sending port (its NB id), as whose VM the frame is sent.
    #[arg(long = "from", value_name = "PORT")]
    from: String,
    /// Source IPv4 address [default: the port's first fixed IPv4].
    #[arg(long)]
    src: Option<Ipv4Addr>,
    /// Destination IPv4 address (required unless --frame is given).
    #[arg(long)]
    dst: Option<Ipv4Addr>,
    /// What to send.
    #[arg(long, value_enum, default_value = "icmp")]
    proto: Proto,
    /// TCP/UDP source port.
    #[arg(long, default_value_t = 40000)]
    sport: u16,
    /// TCP/UDP destination port.
    #[arg(long, default_value_t = 80)]
    dport: u16,
    /// Source MAC [default: the port's MAC].
    #[arg(long, value_name = "MAC")]
    src_mac: Option<String>,
    /// Destination MAC [default: the port holding --dst on the network, else the network's
    /// router interface; ARP: broadcast].
    #[arg(long, value_name = "MAC")]
    dst_mac: Option<String>,
    /// The whole Ethernet frame in hex instead of the fields above.
    #[arg(long, value_name = "HEX", conflicts_with = "pcap")]
    frame: Option<String>,
    /// The first frame of a pcap file (Ethernet link type) instead of the fields above.
    #[arg(long, value_name = "FILE")]
    pcap: Option<std::path::PathBuf>,
    /// The agent of the port's chassis (its HTTP address).
    #[arg(
        long,
        env = "DRAGONFLOW_AGENT_URL",
        default_value = "http://127.0.0.1:9465"
    )]
    agent: String,
    /// Also print the frame as it would leave, in hex.
    #[arg(short, long)]
    verbose: bool,
}

impl Ctx {
    pub(crate) async fn trace(&self, a: TraceArgs, timeout: std::time::Duration) -> Result<()> {
        let ports: Vec<LPort> = self.items().await?;
        let port = ports
            .iter()
            .find(|p| p.id == a.from)
            .ok_or_else(|| CliError::Refused(format!("no port {:?}", a.from)))?;
        let frame = match (&a.frame, &a.pcap) {
            (Some(h), _) => unhex(h).map_err(|e| CliError::Refused(format!("--frame: {e}")))?,
            (None, Some(path)) => {
                let bytes = std::fs::read(path)
                    .map_err(|e| CliError::Refused(format!("--pcap {}: {e}", path.display())))?;
                first_pcap_frame(&bytes)
                    .map_err(|e| CliError::Refused(format!("--pcap {}: {e}", path.display())))?
            }
            (None, None) => {
                let routers: Vec<LRouter> = self.items().await?;
                build(&a, port, &ports, &routers)?
            }
        };
        let client = AgentClient::new(&a.agent, timeout)?;
        let body = serde_json::json!({"port": port.id, "frame": hex(&frame)});
        let v = client.post_json("/trace", &body)?;
        let resp: Response = serde_json::from_value(v)
            .map_err(|e| CliError::Unavailable(format!("/trace answered unexpected JSON: {e}")))?;
        let groups: Vec<SecGroup> = self.items().await?;
        let verdict_line = rules_line(&resp, &frame, &ports, &groups);
        let out = self.output.unwrap_or(Output::Table);
        let mut doc = serde_json::to_value(&resp)
            .map_err(|e| CliError::Unavailable(format!("cannot format JSON: {e}")))?;
        if let Some(l) = &verdict_line {
            doc["security_group_rule"] = serde_json::Value::String(l.clone());
        }
        // The frame traced, as sent (the one built from the fields, or --frame).
        doc["frame_in"] = serde_json::Value::String(hex(&frame));
        output::emit(out, &doc, || text(&resp, &frame, verdict_line, a.verbose))
    }
}

/// The first record of a classic pcap file (either byte order, micro- or nanosecond
/// timestamps) whose link type is Ethernet.
fn first_pcap_frame(b: &[u8]) -> std::result::Result<Vec<u8>, String> {
    if b.len() < 24 {
        return Err("shorter than a pcap header".into());
    }
    let magic = [b[0], b[1], b[2], b[3]];
    let le = match magic {
        [0xd4, 0xc3, 0xb2, 0xa1] | [0x4d, 0x3c, 0xb2, 0xa1] => true,
        [0xa1, 0xb2, 0xc3, 0xd4] | [0xa1, 0xb2, 0x3c, 0x4d] => false,
        _ => return Err("not a pcap file (pcapng is not read: save as pcap)".into()),
    };
    let u32_at = |o: usize| {
        let w = [b[o], b[o + 1], b[o + 2], b[o + 3]];
        if le {
            u32::from_le_bytes(w)
        } else {
            u32::from_be_bytes(w)
        }
    };
    if u32_at(20) != 1 {
        return Err(format!("link type {} is not Ethernet (1)", u32_at(20)));
    }
    if b.len() < 40 {
        return Err("no frame in the file".into());
    }
    let caplen = u32_at(32) as usize;
    b.get(40..40 + caplen)
        .map(<[u8]>::to_vec)
        .ok_or_else(|| "the first frame is truncated".into())
}

fn mac(s: &str) -> Result<[u8; 6]> {
    let b: Vec<u8> = s
        .split(':')
        .map(|x| u8::from_str_radix(x, 16))
        .collect::<std::result::Result<_, _>>()
        .map_err(|_| CliError::Refused(format!("bad MAC {s:?}")))?;
    b.try_into()
        .map_err(|_| CliError::Refused(format!("bad MAC {s:?}")))
}

/// The frame the fields describe, with correct checksums.
fn build(a: &TraceArgs, port: &LPort, ports: &[LPort], routers: &[LRouter]) -> Result<Vec<u8>> {
    let dst = a
        .dst
        .ok_or_else(|| CliError::Refused("give --dst (or --frame)".into()))?;
    let src = match a.src {
        Some(s) => s,
        None => port
            .fixed_ips
            .iter()
            .find_map(|i| match i {
                IpAddr::V4(v) => Some(*v),
                IpAddr::V6(_) => None,
            })
            .ok_or_else(|| {
                CliError::Refused(format!("port {} has no IPv4: give --src", port.id))
            })?,
    };
    let smac = match &a.src_mac {
        Some(m) => mac(m)?,
        None => port.mac.0,
    };
    let dmac = match (&a.dst_mac, a.proto) {
        (Some(m), _) => mac(m)?,
        (None, Proto::Arp) => [0xff; 6],
        (None, _) => dest_mac(port, dst, ports, routers).ok_or_else(|| {
            CliError::Refused(format!(
                "no port or router interface of {} holds {dst}: give --dst-mac",
                port.lswitch
            ))
        })?,
    };
    let mut f = Vec::with_capacity(98);
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    if a.proto == Proto::Arp {
        f.extend_from_slice(&[0x08, 0x06, 0, 1, 0x08, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&smac);
        f.extend_from_slice(&src.octets());
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&dst.octets());
        return Ok(f);
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let payload = b"dfctl trace";
    let (proto, l4) = match a.proto {
        Proto::Tcp => {
            let mut t = Vec::new();
            t.extend_from_slice(&a.sport.to_be_bytes());
            t.extend_from_slice(&a.dport.to_be_bytes());
            t.extend_from_slice(&1u32.to_be_bytes()); // seq
            t.extend_from_slice(&0u32.to_be_bytes()); // ack
            t.extend_from_slice(&[0x50, 0x02]); // 20 bytes, SYN
            t.extend_from_slice(&64240u16.to_be_bytes());
            t.extend_from_slice(&[0, 0, 0, 0]); // checksum, urgent
            (6u8, t)
        }
        Proto::Udp => {
            let mut u = Vec::new();
            u.extend_from_slice(&a.sport.to_be_bytes());
            u.extend_from_slice(&a.dport.to_be_bytes());
            u.extend_from_slice(&((8 + payload.len()) as u16).to_be_bytes());
            u.extend_from_slice(&[0, 0]);
            u.extend_from_slice(payload);
            (17u8, u)
        }
        Proto::Icmp | Proto::Arp => {
            let mut i = vec![8, 0, 0, 0, 0, 7, 0, 1];
            i.extend_from_slice(payload);
            let c = checksum(&i, 0);
            i[2..4].copy_from_slice(&c.to_be_bytes());
            (1u8, i)
        }
    };
    let mut l4 = l4;
    if proto == 6 || proto == 17 {
        // Pseudo-header sum: addresses, protocol, length.
        let mut pseudo = Vec::new();
        pseudo.extend_from_slice(&src.octets());
        pseudo.extend_from_slice(&dst.octets());
        pseudo.extend_from_slice(&[0, proto]);
        pseudo.extend_from_slice(&(l4.len() as u16).to_be_bytes());
        let mut all = pseudo;
        all.extend_from_slice(&l4);
        let c = checksum(&all, 0);
        let off = if proto == 6 { 16 } else { 6 };
        l4[off..off + 2].copy_from_slice(&c.to_be_bytes());
    }
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + l4.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 1, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = checksum(&ip, 0);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&l4);
    Ok(f)
}

/// The Internet checksum of `b` (RFC 1071).
fn checksum(b: &[u8], init: u32) -> u16 {
    let mut s = init;
    for c in b.chunks(2) {
        let w = if c.len() == 2 {
            u16::from_be_bytes([c[0], c[1]])
        } else {
            u16::from_be_bytes([c[0], 0])
        };
        s += u32::from(w);
    }
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

/// The MAC a VM of `port` would send to for `dst`: the port on its network holding it,
/// else the network's router interface (routed).
fn dest_mac(port: &LPort, dst: Ipv4Addr, ports: &[LPort], routers: &[LRouter]) -> Option<[u8; 6]> {
    let ip = IpAddr::V4(dst);
    let same_net = ports.iter().filter(|p| p.lswitch == port.lswitch);
    for p in same_net {
        if p.fixed_ips.contains(&ip)
            || p.allowed_address_pairs
                .iter()
                .any(|a| a.ip_address.addr == ip)
        {
            return Some(p.mac.0);
        }
    }
    routers
        .iter()
        .flat_map(|r| &r.ports)
        .find(|rp| rp.lswitch == port.lswitch)
        .map(|rp| rp.mac.0)
}

/// Source and destination IPv4, protocol and destination port of an IPv4 frame.
fn flow(frame: &[u8]) -> Option<(Ipv4Addr, Ipv4Addr, u8, Option<u16>)> {
    if frame.len() < 34 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ihl = usize::from(frame[14] & 0x0f) * 4;
    let src = Ipv4Addr::new(frame[26], frame[27], frame[28], frame[29]);
    let dst = Ipv4Addr::new(frame[30], frame[31], frame[32], frame[33]);
    let proto = frame[23];
    let l4 = 14 + ihl;
    let dport = (proto == 6 || proto == 17)
        .then(|| {
            frame
                .get(l4 + 2..l4 + 4)
                .map(|b| u16::from_be_bytes([b[0], b[1]]))
        })
        .flatten();
    Some((src, dst, proto, dport))
}

fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        n => n.to_string(),
    }
}

/// Does `rule` allow a packet of `proto`/`dport` to/from `remote` (Neutron semantics)?
fn rule_allows(
    rule: &SecGroupRule,
    dir: RuleDirection,
    remote: Ipv4Addr,
    proto: u8,
    dport: Option<u16>,
    ports: &[LPort],
) -> bool {
    if rule.direction != dir || rule.ethertype != EtherType::IPv4 {
        return false;
    }
    if let Some(p) = &rule.protocol {
        let n = match p.as_str() {
            "tcp" => 6,
            "udp" => 17,
            "icmp" => 1,
            other => other.parse().unwrap_or(255),
        };
        if n != proto {
            return false;
        }
    }
    if let (Some(d), Some(min)) = (dport, rule.port_range_min) {
        let max = rule.port_range_max.unwrap_or(min);
        if u32::from(d) < min || u32::from(d) > max {
            return false;
        }
    }
    if let Some(pfx) = &rule.remote_ip_prefix {
        let IpAddr::V4(net) = pfx.addr else {
            return false;
        };
        let bits = u32::from(pfx.len.min(32));
        let mask = if bits == 0 {
            0
        } else {
            u32::MAX << (32 - bits)
        };
        if u32::from(net) & mask != u32::from(remote) & mask {
            return false;
        }
    }
    if let Some(g) = &rule.remote_group_id {
        let ip = IpAddr::V4(remote);
        let member = ports.iter().any(|p| {
            p.security_groups.contains(g)
                && (p.fixed_ips.contains(&ip)
                    || p.allowed_address_pairs
                        .iter()
                        .any(|a| a.ip_address.addr == ip))
        });
        if !member {
            return false;
        }
    }
    true
}

/// The security-group rule behind the verdict, in words: the rule that allowed each
/// judged side, or the groups none of whose rules allows the denied packet.
fn rules_line(
    resp: &Response,
    frame: &[u8],
    ports: &[LPort],
    groups: &[SecGroup],
) -> Option<String> {
    let (src, dst, proto, dport) = flow(frame)?;
    let denied = resp.reason.as_deref() == Some("sg_denied");
    let mut lines = Vec::new();
    for side in &resp.security_groups {
        let dir = if side.direction == "egress" {
            RuleDirection::Egress
        } else {
            RuleDirection::Ingress
        };
        let remote = if dir == RuleDirection::Egress {
            dst
        } else {
            src
        };
        let port_id = side.port.clone()?;
        let port = ports.iter().find(|p| p.id == port_id)?;
        let what = match dport {
            Some(d) => format!("{}/{d}", proto_name(proto)),
            None => proto_name(proto),
        };
        let towards = if dir == RuleDirection::Egress {
            "to"
        } else {
            "from"
        };
        if side.matched == "none" {
            if denied {
                lines.push(format!(
                    "no {} rule of groups {} of port {} allows {what} {towards} {remote}",
                    dir.as_str(),
                    port.security_groups.join(","),
                    port.id
                ));
            }
            continue;
        }
        let hit = port.security_groups.iter().find_map(|gid| {
            let g = groups.iter().find(|g| &g.id == gid)?;
            g.rules
                .iter()
                .find(|r| rule_allows(r, dir, remote, proto, dport, ports))
                .map(|r| (g, r))
        });
        match hit {
            Some((g, r)) => lines.push(format!(
                "{} {what} {towards} {remote} allowed by group {}{} rule {}",
                dir.as_str(),
                g.id,
                if g.name.is_empty() || g.name == g.id {
                    String::new()
                } else {
                    format!(" ({})", g.name)
                },
                r.id
            )),
            None => lines.push(format!(
                "{} {what} {towards} {remote} allowed by a rule of port {}'s groups (identity {})",
                dir.as_str(),
                port.id,
                side.identity
            )),
        }
    }
    (!lines.is_empty()).then(|| lines.join("; "))
}

/// One line describing a frame.
fn decode(f: &[u8]) -> String {
    if f.len() < 14 {
        return format!("{} bytes", f.len());
    }
    let m = |b: &[u8]| {
        b.iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(":")
    };
    let eth = format!("{} > {}", m(&f[6..12]), m(&f[0..6]));
    match (f[12], f[13]) {
        (0x08, 0x06) if f.len() >= 42 => format!(
            "{eth} ARP {} {} ({}) -> {} ({})",
            if f[21] == 1 { "request" } else { "reply" },
            Ipv4Addr::new(f[28], f[29], f[30], f[31]),
            m(&f[22..28]),
            Ipv4Addr::new(f[38], f[39], f[40], f[41]),
            m(&f[32..38])
        ),
        (0x08, 0x00) => match flow(f) {
            Some((s, d, p, dport)) => format!(
                "{eth} IPv4 {s} > {d} ttl {} {}{}",
                f[22],
                proto_name(p),
                dport.map(|d| format!(" dport {d}")).unwrap_or_default()
            ),
            None => format!("{eth} IPv4 (truncated)"),
        },
        (a, b) => format!("{eth} ethertype 0x{a:02x}{b:02x}"),
    }
}

/// One counted slot in words.
fn stage(c: &Counted) -> String {
    let side = match c.direction.as_str() {
        "from_vm" => "sender's egress",
        "to_vm" => "receiver's ingress",
        _ => "from the tunnel",
    };
    match (c.kind.as_str(), c.name.as_str()) {
        ("pass", p) if is_port_security(p) => format!("port security: allowed ({p})"),
        ("pass", p) => format!("forwarding: {p}"),
        ("drop", r) => format!("dropped ({}): {r}", c.direction),
        ("event", "garp_sent") => "GARP event: would be sent to the agent".into(),
        ("event", e) if e.starts_with("garp") => format!("GARP event: {e}"),
        ("event", e) if e.starts_with("ct_") || e == "sg_exempt" => {
            format!("conntrack ({side}): {}", e.trim_start_matches("ct_"))
        }
        (k, n) => format!("{} {k} {n}", c.direction),
    }
}

fn text(resp: &Response, frame: &[u8], rule: Option<String>, verbose: bool) -> String {
    let mut s = format!(
        "trace on chassis {} ({} hook), port {} (ifindex {})\n",
        resp.chassis,
        resp.hook,
        resp.port.as_deref().unwrap_or("-"),
        resp.ifindex
    );
    s += &format!("  in:      {}\n", decode(frame));
    for (i, p) in resp.programs.iter().enumerate() {
        let next = if i + 1 < resp.programs.len() {
            " (handed to its TC companion)"
        } else {
            ""
        };
        s += &format!("  program: {} -> {}{next}\n", p.program, p.action);
    }
    for c in &resp.counted {
        s += &format!("  stage:   {}\n", stage(c));
    }
    for g in &resp.security_groups {
        s += &format!(
            "  rules:   {} of {} (ifindex {}): {} ({}/{}, identity {})\n",
            g.direction,
            g.port.as_deref().unwrap_or("-"),
            g.ifindex,
            match g.matched.as_str() {
                "identity" => "allowed by a rule for the remote's group or prefix",
                "any" => "allowed by a rule for any remote",
                _ => "no rule allows",
            },
            proto_name(g.protocol),
            g.port_or_type,
            g.identity
        );
    }
    if let Some(r) = rule {
        s += &format!("  rule:    {r}\n");
    }
    let f = &resp.forward;
    let fwd = match f.kind.as_str() {
        "local" => format!(
            "to local port {} (tap {})",
            f.port.as_deref().unwrap_or("-"),
            f.tap.as_deref().unwrap_or("-")
        ),
        "back" => "back to the sender (answered by the datapath)".into(),
        "tunnel" => format!(
            "through the tunnel to {} VNI {}",
            f.remote.map_or("-".into(), |r| r.to_string()),
            f.vni
        ),
        "flood" => "flooded to the network's flood list".into(),
        "group" => "to the holders of a shared address".into(),
        "kernel" => "up the hypervisor's stack".into(),
        "none" => "nowhere (dropped before forwarding)".into(),
        other => other.to_string(),
    };
    s += &format!("  forward: {fwd}\n");
    s += &format!(
        "verdict: {}{}\n",
        resp.verdict,
        match (&resp.reason, &resp.path) {
            (Some(r), _) => format!(" ({r})"),
            (None, Some(p)) => format!(" ({p})"),
            _ => String::new(),
        }
    );
    if resp.verdict == "pass" {
        let out = unhex(&resp.frame_out).unwrap_or_default();
        s += &format!("out: {}\n", decode(&out));
        if verbose {
            s += &format!("out hex: {}\n", resp.frame_out);
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pcap_first_frame_both_byte_orders() {
        let frame = [0xffu8; 14];
        for le in [true, false] {
            let w = |v: u32| if le { v.to_le_bytes() } else { v.to_be_bytes() };
            let mut f = Vec::new();
            f.extend(w(0xa1b2_c3d4));
            f.extend(if le { [2u8, 0, 4, 0] } else { [0, 2, 0, 4] });
            f.extend(w(0));
            f.extend(w(0));
            f.extend(w(65535));
            f.extend(w(1));
            f.extend(w(0));
            f.extend(w(0));
            f.extend(w(14));
            f.extend(w(14));
            f.extend(frame);
            assert_eq!(first_pcap_frame(&f).unwrap(), frame.to_vec());
            let mut other = f.clone();
            other[20..24].copy_from_slice(&w(113));
            assert!(
                first_pcap_frame(&other)
                    .unwrap_err()
                    .contains("not Ethernet")
            );
            assert!(first_pcap_frame(&f[..45]).is_err());
        }
        assert!(first_pcap_frame(b"not a pcap file at all...").is_err());
    }

    #[test]
    fn checksums_are_valid() {
        // A frame built from fields checks out: the IPv4 header and the UDP datagram with
        // its pseudo-header sum to 0xffff (RFC 1071).
        let udp_sum = |f: &[u8]| {
            let mut all = Vec::new();
            all.extend_from_slice(&f[26..34]);
            all.extend_from_slice(&[0, 17]);
            all.extend_from_slice(&((f.len() - 34) as u16).to_be_bytes());
            all.extend_from_slice(&f[34..]);
            checksum(&all, 0)
        };
        let ip = Ipv4Addr::new(192, 0, 2, 10);
        let port = LPort {
            id: "pa".into(),
            lswitch: "n".into(),
            mac: dragonflow_agent::nb::MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]),
            fixed_ips: vec![IpAddr::V4(ip)],
            allowed_address_pairs: vec![],
            port_security_enabled: true,
            security_groups: vec![],
            chassis: None,
            ifname: None,
            device_owner: String::new(),
            admin_state_up: true,
        };
        let a = TraceArgs {
            from: "pa".into(),
            src: None,
            dst: Some(Ipv4Addr::new(192, 0, 2, 11)),
            proto: Proto::Udp,
            sport: 1,
            dport: 2,
            src_mac: None,
            dst_mac: Some("fa:16:3e:00:00:02".into()),
            frame: None,
            pcap: None,
            agent: String::new(),
            verbose: false,
        };
        let f = build(&a, &port, &[], &[]).unwrap();
        assert_eq!(checksum(&f[14..34], 0), 0);
        assert_eq!(udp_sum(&f), 0);
        assert_eq!(&f[26..30], &ip.octets());
    }
}
