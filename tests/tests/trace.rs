//! `dfctl trace` (issue 14 item 2): a frame run through the real loaded programs and live
//! maps of an agent (`POST /trace`, BPF_PROG_TEST_RUN in trace mode) gives the verdict the
//! same frame gets when a VM really sends it, on both hooks; and a batch of traces leaves
//! nothing behind: no counter (global or per port), conntrack entry, fragment or
//! rate-limit state, GARP or drop event (a connected `dfctl monitor` sees none), and no
//! frame on any interface.
//!
//! Each row is traced first and then really sent by VM a (vmctl.py): the trace must not
//! have changed what the real frame meets, and every pass/drop slot the trace names must
//! be one the real frame moved (other traffic of the VMs may move more, never fewer).

#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    collections::BTreeMap,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    fixtures::{
        monitor::Monitor,
        vmctl_topo::{A, B, FOREIGN_MAC, Topo},
    },
    framework::{
        hook::Hook,
        netns::send_raw,
        process::{dfctl_bin, wait_for, wait_until},
    },
};

const BCAST: &str = "ff:ff:ff:ff:ff:ff";
/// The spoofed source of vmctl's `ip4_spoof`.
const SPOOF_IP: &str = "192.0.2.66";

/// One row: a vmctl case sent by VM a, the Ethernet header it has (vmctl's signature is
/// the frame from its L3 header on), and the verdict expected of both the trace and the
/// real frame (`pass <path>` or `drop <reason>`), and for a security-group verdict, what
/// the rule line must say.
struct Case {
    case: &'static str,
    args: Value,
    eth_dst: &'static str,
    eth_src: Option<&'static str>,
    ethertype: &'static str,
    verdict: &'static str,
    reason_or_path: &'static str,
    rule: Option<&'static str>,
}

fn row(
    case: &'static str,
    eth_dst: &'static str,
    eth_src: Option<&'static str>,
    ethertype: &'static str,
    verdict: &'static str,
    reason_or_path: &'static str,
) -> Case {
    Case {
        case,
        args: json!({}),
        eth_dst,
        eth_src,
        ethertype,
        verdict,
        reason_or_path,
        rule: None,
    }
}

/// Every port in `allow-all`: port security, L2 and the responder decide.
fn open_cases() -> Vec<Case> {
    vec![
        // Allowed, L2 to the local port b (UDP: XDP hands it to TC; ICMP: XDP finishes).
        row("udp4", B.mac, None, "0800", "pass", "l2_local"),
        row("icmp_echo", B.mac, None, "0800", "pass", "l2_local"),
        row("tcp_syn", B.mac, None, "0800", "pass", "l2_local"),
        // From a's allowed-address-pair IP.
        Case {
            args: json!({"spoof": "192.0.2.100"}),
            ..row("ip4_spoof", B.mac, None, "0800", "pass", "l2_local")
        },
        // ARP for b's address: answered by the responder.
        row("arp_request", BCAST, None, "0806", "pass", "arp_responder"),
        // Spoofs.
        row("ip4_spoof", B.mac, None, "0800", "drop", "src_ip_spoof"),
        row(
            "mac_spoof",
            B.mac,
            Some(FOREIGN_MAC),
            "0800",
            "drop",
            "src_mac_spoof",
        ),
        row("arp_spa_spoof", BCAST, None, "0806", "drop", "arp_spoof"),
    ]
}

/// b in `web` only, whose one rule admits TCP to port 40002 (vmctl's `tcp_syn`).
fn sg_cases() -> Vec<Case> {
    vec![
        Case {
            rule: Some("ingress tcp/40002 from 192.0.2.10 allowed by group web rule web-tcp"),
            ..row("tcp_syn", B.mac, None, "0800", "pass", "l2_local")
        },
        Case {
            rule: Some("no ingress rule of groups web of port pb allows udp/40000 from 192.0.2.10"),
            ..row("udp4", B.mac, None, "0800", "drop", "sg_denied")
        },
    ]
}

/// `dfctl -o json trace …` run in the hypervisor's namespace against its agent.
fn dfctl_trace_raw(t: &Topo, args: &[&str]) -> std::process::Output {
    let hv = t.hv();
    let agent = format!("http://{}", hv.metrics_addr);
    let mut c: Command = hv.ns.command(dfctl_bin());
    c.args(["--etcd-endpoints", &t.cloud.etcd.endpoints(), "-o", "json"])
        .args(["trace", "--agent", &agent])
        .args(args);
    c.output().expect("spawn dfctl")
}

/// [`dfctl_trace_raw`], which must succeed, parsed.
fn dfctl_trace(t: &Topo, args: &[&str]) -> Value {
    let out = dfctl_trace_raw(t, args);
    assert!(
        out.status.success(),
        "dfctl trace {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("dfctl trace -o json")
}

fn frame_hex(c: &Case, sig: &str) -> String {
    let src = c.eth_src.unwrap_or(A.mac);
    format!(
        "{}{}{}{sig}",
        c.eth_dst.replace(':', ""),
        src.replace(':', ""),
        c.ethertype
    )
}

type Slot = (String, String, String);

/// The pass/drop slots a trace names: (direction, pass|drop, path|reason).
fn traced_slots(v: &Value) -> Vec<Slot> {
    v["counted"]
        .as_array()
        .expect("counted")
        .iter()
        .filter(|c| c["kind"] != "event")
        .map(|c| {
            (
                c["direction"].as_str().unwrap().to_string(),
                c["kind"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

/// Every pass/drop counter of the agent, every direction.
fn all_counters(t: &Topo) -> BTreeMap<Slot, f64> {
    let mut out = BTreeMap::new();
    for l in t.hv().metrics().lines() {
        let Some(rest) = l.strip_prefix("dragonflow_datapath_packets_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let labels: BTreeMap<&str, &str> = labels
            .split(',')
            .filter_map(|kv| kv.split_once('=').map(|(k, v)| (k, v.trim_matches('"'))))
            .collect();
        let (Some(d), Some(v), Some(what)) = (
            labels.get("direction"),
            labels.get("verdict"),
            labels.get("reason").or_else(|| labels.get("path")),
        ) else {
            continue;
        };
        *out.entry((d.to_string(), v.to_string(), what.to_string()))
            .or_default() += value.parse::<f64>().unwrap_or(0.0);
    }
    out
}

/// Traces each row, then sends it for real, and compares (see the module docs).
fn check_rows(t: &Topo, rows: &[Case], failures: &mut Vec<String>) {
    for c in rows {
        // The frame: vmctl's own (a first send gives its bytes: the signature, from L3 on).
        // That send counts too; the comparison below is on the second, real one.
        let probe = t.ctl[0].send(c.case, c.args.clone());
        let sig = probe.sigs[0].clone().expect("signature");
        thread::sleep(Duration::from_millis(300));
        let v = dfctl_trace(t, &["--from", &A.port(), "--frame", &frame_hex(c, &sig)]);
        let got = format!(
            "{} {}",
            v["verdict"].as_str().unwrap_or("?"),
            v["reason"].as_str().or(v["path"].as_str()).unwrap_or("?")
        );
        let want = format!("{} {}", c.verdict, c.reason_or_path);
        if got != want {
            failures.push(format!(
                "{} {}: trace says {got}, want {want}: {v}",
                c.case, c.args
            ));
            continue;
        }
        if let Some(rule) = c.rule {
            let line = v["security_group_rule"].as_str().unwrap_or("");
            if !line.contains(rule) {
                failures.push(format!(
                    "{}: rule line {line:?} does not say {rule:?}",
                    c.case
                ));
            }
        }
        let slots = traced_slots(&v);
        let before = all_counters(t);
        t.ctl[0].send(c.case, c.args.clone());
        let deadline = Instant::now() + Duration::from_secs(3);
        let (missing, now) = loop {
            let now = all_counters(t);
            let missing: Vec<&Slot> = slots
                .iter()
                .filter(|k| {
                    now.get(*k).copied().unwrap_or(0.0) - before.get(*k).copied().unwrap_or(0.0)
                        < 1.0
                })
                .collect();
            if missing.is_empty() || Instant::now() > deadline {
                break (format!("{missing:?}"), now);
            }
            thread::sleep(Duration::from_millis(50));
        };
        if missing != "[]" {
            let moved: Vec<String> = now
                .iter()
                .filter(|(k, v)| **v > before.get(*k).copied().unwrap_or(0.0))
                .map(|(k, _)| format!("{k:?}"))
                .collect();
            failures.push(format!(
                "{} {}: the trace named {slots:?} but the real frame did not move {missing} \
                 (moved: {moved:?})",
                c.case, c.args
            ));
        }
    }
}

fn verdicts_match(hook: Hook) {
    let t = Topo::new(hook, &[A, B]);
    let mut failures = Vec::new();
    check_rows(&t, &open_cases(), &mut failures);

    // Security groups: b in `web` only (TCP to 40002 from anywhere).
    t.cloud
        .dfctl("secgroup create web --name web --no-default-rules");
    t.cloud.dfctl(
        "secgroup rule-add web --direction ingress --protocol tcp --port-min 40002 --id web-tcp",
    );
    t.cloud.dfctl("lport update pb --security-group web");
    let b_ip = B.ip4.to_string();
    wait_until(
        "the agent applies b's new group (a traced UDP datagram to b is denied)",
        Duration::from_secs(20),
        || {
            dfctl_trace(&t, &["--from", "pa", "--dst", &b_ip, "--proto", "udp"])["reason"]
                == "sg_denied"
        },
    );
    check_rows(&t, &sg_cases(), &mut failures);
    // The text form an operator reads (README, "Debugging a packet").
    let hv = t.hv();
    let out = hv
        .ns
        .command(dfctl_bin())
        .args(["--etcd-endpoints", &t.cloud.etcd.endpoints()])
        .args(["trace", "--agent", &format!("http://{}", hv.metrics_addr)])
        .args([
            "--from", "pa", "--dst", &b_ip, "--proto", "tcp", "--dport", "22",
        ])
        .output()
        .expect("spawn dfctl");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("dfctl trace (text):\n{text}");
    for want in [
        "verdict: drop (sg_denied)",
        "no ingress rule of groups web of port pb allows tcp/22 from 192.0.2.10",
        "stage:   port security: allowed (ipv4)",
        "stage:   dropped (to_vm): sg_denied",
    ] {
        if !text.contains(want) {
            failures.push(format!("dfctl trace's text lacks {want:?}:\n{text}"));
        }
    }

    // A port this chassis has no tap for: a clear refusal, not a guess.
    t.cloud.dfctl(
        "lport create pz --lswitch net1 --mac fa:16:3e:00:00:7a --fixed-ip 192.0.2.70 --chassis hv1 --ifname tapz --security-group allow-all"
    );
    let out = dfctl_trace_raw(&t, &["--from", "pz", "--dst", &b_ip]);
    let err = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || !err.contains("port pz has no tap on chassis hv1") {
        failures.push(format!("a port without a tap: {} {err}", out.status));
    }
    let out = dfctl_trace_raw(&t, &["--from", "nosuchport", "--dst", &b_ip]);
    if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("no port") {
        failures.push(format!("an unknown port: {}", out.status));
    }
    assert!(failures.is_empty(), "{hook:?}:\n{}", failures.join("\n"));
}

#[test]
fn trace_verdicts_match_real_packets_tc() {
    verdicts_match(Hook::Tc);
}

#[test]
fn trace_verdicts_match_real_packets_xdp() {
    verdicts_match(Hook::Xdp);
}

/// Everything a trace could have changed: every datapath counter series and drop-event
/// counter, the written pinned maps (per-port counters among them), the GARP table the
/// agent serves, the claims in etcd, the taps' packet counters.
fn snapshot(t: &Topo) -> BTreeMap<String, String> {
    let hv = t.hv();
    let mut s = BTreeMap::new();
    let metrics: String = hv
        .metrics()
        .lines()
        .filter(|l| l.starts_with("dragonflow_datapath_packets_total{"))
        .map(|l| format!("{l}\n"))
        .collect();
    s.insert("stats".into(), metrics);
    // The drop events the datapath sent, suppressed or lost (`dfctl monitor`'s feed).
    let events: String = hv
        .metrics()
        .lines()
        .filter(|l| l.starts_with("dragonflow_datapath_events_total{") && l.contains("drop_event_"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(
        events.contains("drop_event_sent"),
        "the metrics name drop_event_sent: {events}"
    );
    s.insert("drop events".into(), events);
    let pins = hv.bpffs.path.join("dragonflow").join("hv1").join("maps");
    for m in [
        "df_ct_v1",
        "df_frag_v1",
        "df_garp_rl_v1",
        "df_flood_rl_v1",
        "df_ct_count_v1",
        // Per-port drop counters and the drop events' rate window (`report`).
        "df_port_stats_v1",
        "df_drop_rl_v1",
    ] {
        let out = Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(pins.join(m))
            .output()
            .expect("bpftool");
        assert!(
            out.status.success(),
            "bpftool map dump {m}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        s.insert(m.into(), String::from_utf8_lossy(&out.stdout).into_owned());
    }
    s.insert(
        "garp".into(),
        t.agent_get("/garp").map(|(_, b)| b).unwrap_or_default(),
    );
    // The detection way's claims and their history.
    let claims = t
        .cloud
        .etcdctl(&["get", "--prefix", "/dragonflow/activeport"]);
    assert!(claims.status.success(), "etcdctl get");
    s.insert(
        "claims".into(),
        String::from_utf8_lossy(&claims.stdout).into_owned(),
    );
    for tap in [A.tap(), B.tap()] {
        for dir in ["rx", "tx"] {
            let out = hv.ns.exec(&format!(
                "cat /sys/class/net/{tap}/statistics/{dir}_packets"
            ));
            s.insert(
                format!("{tap} {dir}"),
                String::from_utf8_lossy(&out.stdout).into_owned(),
            );
        }
    }
    s
}

fn leaves_nothing(hook: Hook) {
    // The detection way, a and b sharing the VIP: a GARP for it would be claimed in etcd
    // by the agent.
    let t = Topo::with(hook, &[A, B], |cloud| {
        cloud.dfctl("lport update pb --add-aap 192.0.2.100");
        cloud.hvs[0]
            .extra_agent_args
            .extend(["--aap-mode".to_string(), "detection".to_string()]);
    });
    // A monitor client, connected (it shows a real spoof) before the traces: with it the
    // datapath sends drop events, so a traced drop that raised one would be seen.
    let mon = Monitor::spawn(&t.hv().ns, &["-o", "json", "--events", "drops"]);
    let spoofs_seen = |lines: Vec<String>| {
        lines
            .iter()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["reason"] == "src_ip_spoof" && v["src_ip"] == SPOOF_IP)
            .count()
    };
    wait_for(
        "dfctl monitor shows VM a's real spoof",
        Duration::from_secs(20),
        || {
            t.ctl[0].send("ip4_spoof", json!({}));
            (spoofs_seen(mon.drain(Duration::from_millis(300))) > 0).then_some(())
        },
    );
    // Whatever is still on its way (the last spoofs) is not the traces'.
    mon.drain(Duration::from_secs(1));
    // VMs send on their own now and then (IPv6 neighbour discovery, MLD): a window in
    // which something else moved is retried; a trace that leaves state leaves it in every
    // window (each window traces a new flow and the GARP again).
    let mut last = String::new();
    for attempt in 0..6u16 {
        let before = snapshot(&t);
        let sport = (41000 + attempt).to_string();
        let b_ip = B.ip4.to_string();
        let traces: Vec<Vec<&str>> = vec![
            // A TCP SYN: a new conntrack entry (and a quota count) for a real one.
            vec![
                "--from", "pa", "--dst", &b_ip, "--proto", "tcp", "--sport", &sport, "--dport",
                "22",
            ],
            vec![
                "--from", "pa", "--dst", &b_ip, "--proto", "udp", "--sport", &sport,
            ],
            vec!["--from", "pa", "--dst", &b_ip, "--proto", "icmp"],
            // ARP for an unknown address: a flood (copies, the flood bucket).
            vec!["--from", "pa", "--dst", "192.0.2.77", "--proto", "arp"],
            // A gratuitous ARP for a's allowed-address-pair VIP: a GARP event and its
            // rate-limit entry for a real one.
            vec![
                "--from",
                "pa",
                "--src",
                "192.0.2.100",
                "--dst",
                "192.0.2.100",
                "--proto",
                "arp",
            ],
            // A spoofed source (vmctl's `ip4_spoof`): a global drop slot, a per-port
            // drop and a drop event for a real one.
            vec![
                "--from", "pa", "--src", SPOOF_IP, "--dst", &b_ip, "--proto", "udp", "--sport",
                "40000", "--dport", "40000",
            ],
        ];
        let mut outs = Vec::new();
        for a in &traces {
            outs.push(dfctl_trace(&t, a));
        }
        let garp = &outs[4];
        assert!(
            garp["counted"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "garp_sent" || c["name"] == "garp_rate_limited"),
            "the GARP trace names the event it would raise: {garp}"
        );
        let syn = &outs[0];
        assert!(
            syn["counted"]
                .as_array()
                .unwrap()
                .iter()
                .any(|c| c["name"] == "ct_new"),
            "the SYN trace names a new conntrack entry: {syn}"
        );
        let spoof = &outs[5];
        assert_eq!(
            (spoof["verdict"].as_str(), spoof["reason"].as_str()),
            (Some("drop"), Some("src_ip_spoof")),
            "the spoof is traced as dropped: {spoof}"
        );
        let after = snapshot(&t);
        // Never, in any window: no traced spoof reaches the monitor client.
        assert_eq!(
            spoofs_seen(mon.drain(Duration::from_millis(500))),
            0,
            "dfctl monitor received a drop event of a traced frame"
        );
        if before == after {
            // The check can see a leak: the same GARP sent for real is claimed in etcd.
            assert!(
                !after["claims"].contains("192.0.2.100"),
                "claimed before any GARP"
            );
            // And the same spoof sent for real moves the per-port counters and the drop
            // events sent, and reaches the monitor.
            let quiet = snapshot(&t);
            t.ctl[0].send("ip4_spoof", json!({}));
            wait_for(
                "dfctl monitor shows the real spoof after the traces",
                Duration::from_secs(10),
                || (spoofs_seen(mon.drain(Duration::from_millis(300))) > 0).then_some(()),
            );
            let moved = snapshot(&t);
            for k in ["df_port_stats_v1", "drop events"] {
                assert_ne!(quiet[k], moved[k], "a real spoof moves {k}");
            }
            t.ctl[0].send("garp", json!({"ip": "192.0.2.100"}));
            wait_until(
                "a real GARP for a's VIP is claimed in etcd (the detection way)",
                Duration::from_secs(10),
                || {
                    let out = t
                        .cloud
                        .etcdctl(&["get", "--prefix", "/dragonflow/activeport"]);
                    String::from_utf8_lossy(&out.stdout).contains("192.0.2.100")
                },
            );
            return;
        }
        last = before
            .iter()
            .filter(|(k, v)| after.get(*k) != Some(v))
            .map(|(k, v)| format!("{k}:\n  before {v}\n  after  {}", after[k]))
            .collect::<Vec<_>>()
            .join("\n");
        thread::sleep(Duration::from_millis(200));
    }
    panic!("{hook:?}: every window changed state:\n{last}");
}

#[test]
fn traces_leave_no_state_tc() {
    leaves_nothing(Hook::Tc);
}

#[test]
fn traces_leave_no_state_xdp() {
    leaves_nothing(Hook::Xdp);
}

/// The trace mode's verifier cost: every program still loads, within the kernel's 1M
/// instruction budget; the counts are printed (`--nocapture`) for the commit messages.
/// `DF_EBPF_OBJECT=<object>` measures another build (e.g. main's, for the "before").
#[test]
fn programs_load_within_the_verifier_budget() {
    use aya::programs::SchedClassifier;
    use dragonflow_common::maps::progs;
    use tests::framework::test_run::Datapath;

    let mut dp = Datapath::load();
    let group: &mut SchedClassifier = dp
        .ebpf
        .program_mut(progs::AAP_GROUP_TC)
        .expect("df_aap_group in the object")
        .try_into()
        .expect("classifier");
    if group.fd().is_err() {
        group.load().expect("load df_aap_group");
    }
    for name in [
        progs::FROM_VM_XDP,
        progs::FROM_VM_TC,
        progs::FROM_TUNNEL_TC,
        progs::AAP_GROUP_TC,
        progs::VLAN_GUARD_TC,
    ] {
        let p = dp.ebpf.program(name).expect("program");
        let info = p.info().expect("program info");
        let verified = info.verified_instruction_count().expect("verified_insns");
        let xlated = info.size_translated().unwrap_or(0);
        println!("verifier: {name:<16} verified {verified:>7} xlated bytes {xlated:>6}");
        assert!(
            verified < 1_000_000,
            "{name}: {verified} verified instructions"
        );
    }
}

/// The id of the map `name` of the agent's programs (the maps of the programs it holds
/// open, named by bpftool): other agents on this machine have maps of the same name.
fn agent_map(t: &Topo, name: &str) -> u32 {
    let pid = t.hv().agent_pid().expect("agent running");
    let dir = format!("/proc/{pid}/fdinfo");
    let infos: Vec<String> = std::fs::read_dir(&dir)
        .expect("agent fdinfo")
        .filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok())
        .collect();
    let field = |info: &String, f: &str| -> Option<u32> {
        info.lines()
            .find_map(|l| l.strip_prefix(f))
            .and_then(|v| v.trim().parse().ok())
    };
    let bpftool = |args: &[&str]| -> Value {
        let out = Command::new("bpftool")
            .arg("-j")
            .args(args)
            .output()
            .expect("bpftool");
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let mut ids: Vec<u32> = infos.iter().filter_map(|i| field(i, "map_id:")).collect();
    for prog in infos.iter().filter_map(|i| field(i, "prog_id:")) {
        let v = bpftool(&["prog", "show", "id", &prog.to_string()]);
        ids.extend(
            v["map_ids"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|m| m.as_u64().map(|m| m as u32)),
        );
    }
    ids.sort_unstable();
    ids.dedup();
    for id in ids {
        if bpftool(&["map", "show", "id", &id.to_string()])["name"] == name {
            return id;
        }
    }
    panic!("the agent's programs have no map {name}");
}

/// The bytes of entry 0 of an array map.
fn map_value(id: u32) -> Vec<u8> {
    let out = Command::new("bpftool")
        .args([
            "-j",
            "map",
            "lookup",
            "id",
            &id.to_string(),
            "key",
            "0",
            "0",
            "0",
            "0",
        ])
        .output()
        .expect("bpftool");
    assert!(
        out.status.success(),
        "bpftool lookup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("bpftool json");
    v["value"]
        .as_array()
        .expect("raw value bytes")
        .iter()
        .map(|b| u8::from_str_radix(b.as_str().unwrap().trim_start_matches("0x"), 16).unwrap())
        .collect()
}

/// An IPv4/UDP frame from a to b carrying `payload` (UDP checksum 0: none).
fn udp_frame(payload: &[u8]) -> Vec<u8> {
    let mac = |m: &str| -> Vec<u8> {
        m.split(':')
            .map(|x| u8::from_str_radix(x, 16).unwrap())
            .collect()
    };
    let ip = |s: &str| -> Vec<u8> { s.split('.').map(|x| x.parse::<u8>().unwrap()).collect() };
    let mut f = mac(B.mac);
    f.extend(mac(A.mac));
    f.extend([0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut h = vec![0x45, 0];
    h.extend(total.to_be_bytes());
    h.extend([0, 1, 0x40, 0, 64, 17, 0, 0]);
    h.extend(ip(A.ip4));
    h.extend(ip(B.ip4));
    let mut sum: u32 = h
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    h[10..12].copy_from_slice(&(!(sum as u16)).to_be_bytes());
    f.extend(h);
    f.extend(40100u16.to_be_bytes());
    f.extend(40100u16.to_be_bytes());
    f.extend(((8 + payload.len()) as u16).to_be_bytes());
    f.extend([0, 0]);
    f.extend(payload);
    f
}

/// A VM that sends the agent's very token (read here from the agent's map, which no VM
/// can do) in every place of its frame is judged like any frame: counted, delivered, and
/// the trace record untouched — the token counts only in a test run's context.
fn token_in_a_frame_is_no_trace(hook: Hook) {
    let t = Topo::new(hook, &[A, B]);
    let key = map_value(agent_map(&t, "df_trace_key_v1"));
    assert_eq!(key.len(), 8);
    assert_ne!(key, vec![0; 8], "the agent wrote its token");
    // One trace first, so the record holds something to compare.
    let b_ip = B.ip4.to_string();
    dfctl_trace(&t, &["--from", "pa", "--dst", &b_ip, "--proto", "icmp"]);
    let record_id = agent_map(&t, "df_trace_v1");
    let record = map_value(record_id);
    let mut payload = Vec::new();
    for _ in 0..16 {
        payload.extend(&key);
        payload.extend(key.iter().rev());
    }
    let frame = udp_frame(&payload);
    let slot = (
        "from_vm".to_string(),
        "pass".to_string(),
        "l2_local".to_string(),
    );
    let before = all_counters(&t);
    let n = 5;
    for _ in 0..n {
        t.vm(0).within(|| send_raw("eth0", &frame));
    }
    wait_until(
        "the frames carrying the token are forwarded and counted like any frame",
        Duration::from_secs(5),
        || {
            all_counters(&t).get(&slot).copied().unwrap_or(0.0)
                - before.get(&slot).copied().unwrap_or(0.0)
                >= f64::from(n)
        },
    );
    assert_eq!(
        map_value(record_id),
        record,
        "a VM's frame wrote the trace record: it ran as a trace"
    );
}

#[test]
fn token_in_a_frame_is_no_trace_tc() {
    token_in_a_frame_is_no_trace(Hook::Tc);
}

#[test]
fn token_in_a_frame_is_no_trace_xdp() {
    token_in_a_frame_is_no_trace(Hook::Xdp);
}

/// Two chassis, two networks and a router (as in forwarding.rs): a1 (hv1) and a2 (hv2) on
/// net1, c1 (hv1) on net2; every port in `default` (its members admit each other).
fn two_chassis(hook: Hook) -> tests::harness::Cloud {
    use tests::harness::{Cloud, HvOpts, VmOpts};
    let mut cloud = Cloud::new();
    for i in 0..2 {
        cloud.add_hypervisor_opts(&format!("hv{}", i + 1), hook, HvOpts { bridge: false });
    }
    cloud.dfctl("lrouter create r1 --name r1");
    for (net, vni, cidr, gw, rmac) in [
        (
            "net1",
            101,
            "192.0.2.0/24",
            "192.0.2.1",
            "fa:16:3e:00:01:01",
        ),
        (
            "net2",
            102,
            "198.51.100.0/24",
            "198.51.100.1",
            "fa:16:3e:00:02:01",
        ),
    ] {
        cloud.dfctl(&format!("lswitch create {net} --vni {vni} --mtu 1450"));
        cloud.dfctl(&format!(
            "subnet create {net}-v4 --lswitch {net} --cidr {cidr} --gateway {gw}"
        ));
        cloud.dfctl(&format!(
            "lrouter add-interface r1 --lswitch {net} --mac {rmac} --ip {gw}/24"
        ));
    }
    for (name, hv, net, mac, ip, gw) in [
        (
            "a1",
            0,
            "net1",
            "fa:16:3e:01:00:10",
            "192.0.2.10",
            "192.0.2.1",
        ),
        (
            "a2",
            1,
            "net1",
            "fa:16:3e:01:00:20",
            "192.0.2.20",
            "192.0.2.1",
        ),
        (
            "c1",
            0,
            "net2",
            "fa:16:3e:02:00:10",
            "198.51.100.10",
            "198.51.100.1",
        ),
    ] {
        cloud.dfctl(&format!(
            "lport create p{name} --lswitch {net} --mac {mac} --fixed-ip {ip} --chassis hv{} --ifname tap{name}",
            hv + 1
        ));
        cloud.add_vm_opts(
            hv,
            name,
            &format!("tap{name}"),
            mac,
            &[&format!("{ip}/24")],
            &VmOpts::with_gateways(&[gw]),
        );
    }
    for i in 0..2 {
        cloud.start_agent(i);
    }
    for (vm, ip) in [(0, "192.0.2.20"), (0, "198.51.100.10")] {
        let ns = &cloud.vms[vm].ns;
        wait_until(&format!("a1 pings {ip}"), Duration::from_secs(30), || {
            tests::harness::ping(ns, ip, 1)
        });
    }
    cloud
}

/// `dfctl -o json trace` against hv1's agent in `cloud`.
fn trace_on_hv1(cloud: &tests::harness::Cloud, args: &[&str]) -> Value {
    let hv = &cloud.hvs[0];
    let agent = format!("http://{}", hv.metrics_addr);
    let out = hv
        .ns
        .command(dfctl_bin())
        .args(["--etcd-endpoints", &cloud.etcd.endpoints(), "-o", "json"])
        .args(["trace", "--agent", &agent])
        .args(args)
        .output()
        .expect("spawn dfctl");
    assert!(
        out.status.success(),
        "dfctl trace {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

/// Through the tunnel to the other chassis, and routed by the distributed router: the
/// trace names the VTEP and VNI, or the rewritten frame (router's MAC, the receiver's MAC,
/// TTL - 1); the same frame sent by a1 moves the counter the trace names.
fn tunnel_and_routed(hook: Hook) {
    let cloud = two_chassis(hook);
    let hv1 = &cloud.hvs[0];
    let tunnel = trace_on_hv1(
        &cloud,
        &["--from", "pa1", "--dst", "192.0.2.20", "--proto", "udp"],
    );
    assert_eq!(tunnel["verdict"], "pass", "{tunnel}");
    assert_eq!(tunnel["path"], "l2_tunnel", "{tunnel}");
    assert_eq!(tunnel["forward"]["kind"], "tunnel", "{tunnel}");
    assert_eq!(tunnel["forward"]["vni"], 101, "{tunnel}");
    assert_eq!(
        tunnel["forward"]["remote"].as_str(),
        Some(cloud.hvs[1].tunnel_ip.as_str()),
        "{tunnel}"
    );
    let routed = trace_on_hv1(
        &cloud,
        &["--from", "pa1", "--dst", "198.51.100.10", "--proto", "icmp"],
    );
    assert_eq!(routed["verdict"], "pass", "{routed}");
    assert_eq!(routed["path"], "routed", "{routed}");
    assert_eq!(routed["forward"]["kind"], "local", "{routed}");
    assert_eq!(routed["forward"]["port"], "pc1", "{routed}");
    let out = routed["frame_out"].as_str().expect("frame_out");
    let inp = routed["frame_in"].as_str().expect("frame_in");
    // dst MAC c1, src MAC the router's net2 interface, TTL one less.
    assert_eq!(&out[..12], "fa163e020010", "{routed}");
    assert_eq!(&out[12..24], "fa163e000201", "{routed}");
    assert_eq!(&inp[12..24], "fa163e010010");
    let ttl = |h: &str| u8::from_str_radix(&h[44..46], 16).unwrap();
    assert_eq!(ttl(out), ttl(inp) - 1, "{routed}");

    for (v, path) in [(&tunnel, "l2_tunnel"), (&routed, "routed")] {
        let frame: Vec<u8> = (0..v["frame_in"].as_str().unwrap().len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&v["frame_in"].as_str().unwrap()[i..i + 2], 16).unwrap())
            .collect();
        let before = hv1.counter("from_vm", "pass", path);
        cloud.vms[0].ns.within(|| send_raw("eth0", &frame));
        wait_until(
            &format!("the frame traced as {path} is counted {path} when a1 sends it"),
            Duration::from_secs(5),
            || hv1.counter("from_vm", "pass", path) > before,
        );
    }
}

#[test]
fn tunnel_and_routed_tc() {
    tunnel_and_routed(Hook::Tc);
}

#[test]
fn tunnel_and_routed_xdp() {
    tunnel_and_routed(Hook::Xdp);
}
