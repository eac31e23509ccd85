//! `dfctl monitor` and per-port visibility (issue 14, items 1 and 3) end to end: a real
//! agent, VMs behind veth taps sending spoofed frames (scapy), the real `dfctl monitor`
//! process streaming from the agent's `GET /monitor` in text and JSON, `dfctl port
//! status` and the top-offender metric. Both hooks.
//!
//! What is asserted: with no client connected the datapath emits no drop event (its
//! sent / rate-limited / ring-full counters stay put while drops are counted); a spoof
//! shows up with its port, direction, reason, MACs, IPs, protocol and ports; a client
//! filtered on another port never sees it; the per-CPU rate limit holds (events ≤ rate ×
//! seconds × CPUs + slack, the rest counted as rate-limited); and once the last client
//! is gone, events stop again.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    thread,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    fixtures::{
        monitor::Monitor,
        vmctl_topo::{A, AGENT_URL, B, Topo, counters, sum, wait_counted},
    },
    framework::{
        hook::Hook,
        http::metric_sum,
        process::{dfctl_bin, poll_until, run, wait_for},
    },
};

/// The datapath's rate limit for this test (events per second per CPU).
const RATE: u64 = 20;
const COUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// The spoofed source of vmctl's `ip4_spoof`.
const SPOOF_IP: &str = "192.0.2.66";

/// Sum of one side counter of the monitor over directions.
fn event_stat(t: &Topo, event: &str) -> f64 {
    metric_sum(
        &t.hv().metrics(),
        "dragonflow_datapath_events_total",
        &[("event", event)],
    )
}

fn monitor_stats(t: &Topo) -> [f64; 3] {
    [
        event_stat(t, "drop_event_sent"),
        event_stat(t, "drop_event_rate_limited"),
        event_stat(t, "drop_event_ring_full"),
    ]
}

/// VM `i` sends one spoofed IPv4 UDP frame; waits until it is counted.
fn spoof(t: &Topo, i: usize) {
    let before = counters(t.hv());
    t.ctl[i].send("ip4_spoof", json!({}));
    wait_counted(
        t.hv(),
        &before,
        "drop",
        &["src_ip_spoof"],
        1.0,
        COUNT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
}

fn monitor(hook: Hook) {
    let t = Topo::with(hook, &[A, B], |cloud| {
        cloud.hvs[0].extra_agent_args = vec!["--monitor-rate".into(), RATE.to_string()];
    });
    let ns = &t.hv().ns;

    // 1. Nobody listens: drops are counted, no drop event is even attempted.
    let quiet = monitor_stats(&t);
    for _ in 0..3 {
        spoof(&t, 0);
    }
    assert_eq!(
        monitor_stats(&t),
        quiet,
        "with no monitor client the datapath must not emit (nor rate-limit) drop events"
    );

    // 2. Three clients: all events as JSON, all as text, and only port pb's.
    let json_mon = Monitor::spawn(ns, &["-o", "json"]);
    let text_mon = Monitor::spawn(ns, &["-o", "text"]);
    let b_mon = Monitor::spawn(ns, &["-o", "json", "--port", &B.port()]);
    // The clients connect asynchronously: spoof until the JSON one reports it.
    let ev: Value = wait_for(
        "dfctl monitor -o json shows VM a's spoof",
        Duration::from_secs(20),
        || {
            spoof(&t, 0);
            json_mon
                .drain(Duration::from_millis(300))
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["reason"] == "src_ip_spoof" && v["port"] == A.port())
        },
    );
    assert_eq!(ev["kind"], "drop", "{ev}");
    assert_eq!(ev["ifname"], A.tap(), "{ev}");
    assert_eq!(ev["direction"], "from_vm", "{ev}");
    assert_eq!(ev["src_mac"], A.mac, "{ev}");
    assert_eq!(ev["dst_mac"], B.mac, "{ev}");
    assert_eq!(ev["src_ip"], SPOOF_IP, "{ev}");
    assert_eq!(ev["dst_ip"], B.ip4, "{ev}");
    assert_eq!(ev["proto"], "udp", "{ev}");
    assert_eq!(ev["src_port"], 40000, "{ev}");
    assert_eq!(ev["dst_port"], 40000, "{ev}");
    assert_eq!(
        ev["ifindex"].as_u64(),
        Some(u64::from(ns.ifindex(&A.tap()))),
        "{ev}"
    );

    let want_text = [
        format!("{} ({})", A.port(), A.tap()),
        "from_vm".to_string(),
        "DROP src_ip_spoof".to_string(),
        format!("{} > {}", A.mac, B.mac),
        format!("{SPOOF_IP} > {} udp 40000 > 40000", B.ip4),
    ];
    let line = wait_for(
        "dfctl monitor (text) shows VM a's spoof",
        Duration::from_secs(20),
        || {
            let found = text_mon
                .drain(Duration::from_millis(300))
                .into_iter()
                .find(|l| want_text.iter().all(|w| l.contains(w.as_str())));
            if found.is_none() {
                spoof(&t, 0);
            }
            found
        },
    );
    eprintln!("dfctl monitor text line: {line}");

    // The filtered client: B's own spoof reaches it (so it is connected), A's never.
    let b_ev: Value = wait_for(
        "dfctl monitor --port pb shows VM b's spoof",
        Duration::from_secs(20),
        || {
            spoof(&t, 1);
            b_mon
                .drain(Duration::from_millis(300))
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .find(|v| v["reason"] == "src_ip_spoof")
        },
    );
    assert_eq!(b_ev["port"], B.port(), "{b_ev}");
    spoof(&t, 0);
    let leaked: Vec<String> = b_mon
        .drain(Duration::from_millis(500))
        .into_iter()
        .filter(|l| l.contains(&format!("\"port\":\"{}\"", A.port())))
        .collect();
    assert!(
        leaked.is_empty(),
        "a client filtered on {} saw {}'s events: {leaked:?}",
        B.port(),
        A.port()
    );

    // 3. dfctl port status and /state: the drops on port pa under from_vm/src_ip_spoof.
    let out = run(ns.command(dfctl_bin()).args([
        "port",
        "status",
        &A.port(),
        "--agent",
        AGENT_URL,
        "-o",
        "json",
    ]));
    let st: Value = serde_json::from_slice(&out.stdout).expect("port status JSON");
    let drops = st["drops"]["from_vm"]["src_ip_spoof"].as_u64().unwrap_or(0);
    assert!(drops >= 4, "port status of pa: {st}");
    assert_eq!(st["tap"], A.tap(), "{st}");
    assert_eq!(st["tap_state"], "attached", "{st}");
    assert!(
        st["passes_from_vm"].as_u64().unwrap_or(0) >= 1,
        "VM a's pings passed: {st}"
    );
    assert!(
        st["frames_from_vm"].as_u64().unwrap_or(0) > drops,
        "the tap's kernel counter covers the drops and the passes: {st}"
    );
    let out = run(ns
        .command(dfctl_bin())
        .args(["port", "status", &A.tap(), "--agent", AGENT_URL]));
    let table = String::from_utf8_lossy(&out.stdout);
    eprintln!("dfctl port status {}:\n{table}", A.tap());
    assert!(
        table.contains("drops from_vm src_ip_spoof"),
        "port status table: {table}"
    );
    // The top-offender metric names port pa (and its total covers every port).
    let metrics = t.hv().metrics();
    let top = metric_sum(
        &metrics,
        "dragonflow_port_drops_top",
        &[
            ("port", &A.port()),
            ("direction", "from_vm"),
            ("reason", "src_ip_spoof"),
        ],
    );
    assert!(top >= 4.0, "dragonflow_port_drops_top for pa: {top}");
    assert!(metric_sum(&metrics, "dragonflow_port_drops_total", &[]) >= top);

    // 4. The rate limit: a burst of MAC spoofs, far above RATE per CPU.
    const BURST: u64 = 400;
    json_mon.drain(Duration::from_millis(200));
    let [sent0, limited0, full0] = monitor_stats(&t);
    let before = counters(t.hv());
    let start = Instant::now();
    t.ctl[0].send("mac_flood", json!({"n": BURST}));
    let after = wait_counted(
        t.hv(),
        &before,
        "drop",
        &["src_mac_spoof"],
        BURST as f64,
        COUNT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let secs = start.elapsed().as_secs() + 1;
    let events = json_mon
        .drain(Duration::from_millis(1000))
        .iter()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["reason"] == "src_mac_spoof")
        .count() as u64;
    let cpus = thread::available_parallelism().map_or(1, |n| n.get()) as u64;
    // A window may start just before the burst and another just after: +1 window.
    let bound = RATE * (secs + 1) * cpus;
    let [sent1, limited1, full1] = monitor_stats(&t);
    let dropped =
        sum(&after, "drop", &["src_mac_spoof"]) - sum(&before, "drop", &["src_mac_spoof"]);
    assert!(
        events <= bound,
        "{events} drop events for a burst of {BURST} over {secs}s at {RATE}/s on {cpus} CPUs"
    );
    assert!(events >= 1, "the burst raised no event at all");
    assert!(
        limited1 - limited0 >= (BURST - bound.min(BURST)) as f64,
        "suppressed events not counted: rate-limited {limited0} -> {limited1}, sent {sent0} -> {sent1}"
    );
    assert!(
        (sent1 - sent0) + (limited1 - limited0) + (full1 - full0) >= dropped,
        "every drop while a client listens is sent, rate-limited or lost to a full ring"
    );

    // 5. The last client goes: the agent notices (heartbeat) and turns events off.
    drop(json_mon);
    drop(text_mon);
    drop(b_mon);
    let off = poll_until(Duration::from_secs(15), || {
        let s0 = monitor_stats(&t);
        spoof(&t, 0);
        monitor_stats(&t) == s0
    });
    assert!(
        off,
        "drop events still emitted after every monitor client left"
    );
}

macro_rules! for_both_hooks {
    ($($name:ident),* $(,)?) => {
        mod xdp {
            $(#[test] fn $name() { super::$name(tests::framework::hook::Hook::Xdp) })*
        }
        mod tc {
            $(#[test] fn $name() { super::$name(tests::framework::hook::Hook::Tc) })*
        }
    };
}

for_both_hooks!(monitor);
