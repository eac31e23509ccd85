//! `dfctl trace` (issue 14 item 2): a frame run through the real loaded programs and live
//! maps of an agent (`POST /trace`, BPF_PROG_TEST_RUN in trace mode) gives the verdict the
//! same frame gets when a VM really sends it, on both hooks; and a batch of traces leaves
//! nothing behind: no counter, conntrack entry, fragment or rate-limit state, GARP event,
//! and no frame on any interface.
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
    fixtures::vmctl_topo::{A, B, FOREIGN_MAC, Topo, counters, diff},
    framework::{hook::Hook, process::dfctl_bin},
};

const BCAST: &str = "ff:ff:ff:ff:ff:ff";

/// One row: a vmctl case sent by VM a, the Ethernet header it has (vmctl's signature is
/// the frame from its L3 header on), and the verdict expected of both the trace and the
/// real frame (`pass <path>` or `drop <reason>`).
struct Case {
    case: &'static str,
    args: Value,
    eth_dst: &'static str,
    eth_src: Option<&'static str>,
    ethertype: &'static str,
    verdict: &'static str,
    reason_or_path: &'static str,
}

fn cases() -> Vec<Case> {
    let c = |case, eth_dst, eth_src, ethertype, verdict, what| Case {
        case,
        args: json!({}),
        eth_dst,
        eth_src,
        ethertype,
        verdict,
        reason_or_path: what,
    };
    vec![
        // Allowed, L2 to the local port b (UDP: XDP hands it to TC; ICMP: XDP finishes).
        c("udp4", B.mac, None, "0800", "pass", "l2_local"),
        c("icmp_echo", B.mac, None, "0800", "pass", "l2_local"),
        c("tcp_syn", B.mac, None, "0800", "pass", "l2_local"),
        // ARP for b's address: answered by the responder.
        c("arp_request", BCAST, None, "0806", "pass", "arp_responder"),
        // Spoofs.
        c("ip4_spoof", B.mac, None, "0800", "drop", "src_ip_spoof"),
        c(
            "mac_spoof",
            B.mac,
            Some(FOREIGN_MAC),
            "0800",
            "drop",
            "src_mac_spoof",
        ),
        c("arp_spa_spoof", BCAST, None, "0806", "drop", "arp_spoof"),
    ]
}

/// `dfctl -o json trace …` run in the hypervisor's namespace against its agent.
fn dfctl_trace(t: &Topo, args: &[&str]) -> Value {
    let hv = t.hv();
    let agent = format!("http://{}", hv.metrics_addr);
    let mut c: Command = hv.ns.command(dfctl_bin());
    c.args(["--etcd-endpoints", &t.cloud.etcd.endpoints(), "-o", "json"])
        .args(["trace", "--agent", &agent])
        .args(args);
    let out = c.output().expect("spawn dfctl");
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

/// The from_vm pass/drop slots a trace names.
fn traced_slots(v: &Value) -> Vec<(String, String)> {
    v["counted"]
        .as_array()
        .expect("counted")
        .iter()
        .filter(|c| c["direction"] == "from_vm" && c["kind"] != "event")
        .map(|c| {
            (
                c["kind"].as_str().unwrap().to_string(),
                c["name"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

fn verdicts_match(hook: Hook) {
    let t = Topo::new(hook, &[A, B]);
    let mut failures = Vec::new();
    for c in cases() {
        // Build the exact frame vmctl will send: a dry send would move counters, so
        // the signature of the real send is used for the trace of the next one. Simpler:
        // trace the frame with a fresh payload, then send the real one; both carry the
        // same headers (only the nonce differs).
        let probe = t.ctl[0].send(c.case, c.args.clone());
        let sig = probe.sigs[0].clone().expect("signature");
        // Let the probe settle so its counting is not mistaken for the real send's.
        thread::sleep(Duration::from_millis(300));
        let v = dfctl_trace(&t, &["--from", &A.port(), "--frame", &frame_hex(&c, &sig)]);
        let got = format!(
            "{} {}",
            v["verdict"].as_str().unwrap_or("?"),
            v["reason"].as_str().or(v["path"].as_str()).unwrap_or("?")
        );
        let want = format!("{} {}", c.verdict, c.reason_or_path);
        if got != want {
            failures.push(format!("{}: trace says {got}, want {want}: {v}", c.case));
            continue;
        }
        let slots = traced_slots(&v);
        let before = counters(t.hv());
        t.ctl[0].send(c.case, c.args.clone());
        let deadline = Instant::now() + Duration::from_secs(3);
        let missing = loop {
            let now = counters(t.hv());
            let mut missing = Vec::new();
            for (kind, name) in &slots {
                let k = (kind.clone(), name.clone());
                let d =
                    now.get(&k).copied().unwrap_or(0.0) - before.get(&k).copied().unwrap_or(0.0);
                if d < 1.0 {
                    missing.push(format!("{kind}/{name}"));
                }
            }
            if missing.is_empty() || Instant::now() > deadline {
                break (missing, diff(&before, &now));
            }
            thread::sleep(Duration::from_millis(50));
        };
        if !missing.0.is_empty() {
            failures.push(format!(
                "{}: the trace named {:?} but the real frame did not move {:?} (moved: {})",
                c.case, slots, missing.0, missing.1
            ));
        }
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

/// Everything a trace could have changed: every datapath counter series, the written
/// pinned maps, the GARP table the agent serves, the taps' packet counters.
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
    let pins = hv.bpffs.path.join("dragonflow").join("hv1").join("maps");
    for m in [
        "df_ct_v1",
        "df_frag_v1",
        "df_garp_rl_v1",
        "df_flood_rl_v1",
        "df_ct_count_v1",
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
    let t = Topo::new(hook, &[A, B]);
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
        let after = snapshot(&t);
        if before == after {
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
