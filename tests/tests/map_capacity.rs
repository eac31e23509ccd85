//! A map too small for the NB state (issue 11, item 3: no silent overflow), end to end:
//! one hypervisor namespace, a real agent whose `df_policy_v1` is configured tiny
//! (`--map-capacity df_policy_v1=3`), VMs in namespaces on one network, each port in a
//! new security group (its two default egress rules: two policy entries per port).
//!
//! ```text
//!   net1 VNI 100, 192.0.2.0/24, group web (egress IPv4 and IPv6 to anywhere)
//!   hv1: a (.10), then b (.11): 4 policy entries needed, 3 fit
//! ```
//!
//! What it asserts: while the map cannot hold both ports, `/healthz` is 503 naming the
//! map, the need and the capacity; the metrics and `/state` say the same; the agent's log
//! has exactly one line for it over several reconciliations; no write fails or is retried
//! (`dragonflow_map_write_errors_total` 0); the running port keeps its place, the new one
//! is left out whole and stays fail closed, and the running one still drops a spoofed
//! frame. Once the need fits again, `/healthz` is ok, one line says so, and the waiting
//! port gets its entries. A restart asking for another capacity adopts the pinned map
//! with the capacity it has, and says so.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::Duration;

use serde_json::Value;
use tests::{
    framework::{hook::Hook, http::metric, process::wait_until, python::python},
    harness::{Cloud, HvOpts, VmOpts, ping},
};

/// The agent started, the NB read, taps attached.
const READY: Duration = Duration::from_secs(30);
/// A dfctl change reaching the datapath, a counter catching up.
const APPLY: Duration = Duration::from_secs(15);

const CAPACITY: u32 = 3;
const POLICY: &str = "df_policy_v1";
/// The log line of an overflow that starts or changes (`Maps::fit`).
const TOO_SMALL: &str = "map too small: df_policy_v1 needs";
const FITS_AGAIN: &str = "map no longer over capacity";

const VMS: [(&str, &str, &str); 2] = [
    ("a", "fa:16:3e:0b:00:10", "192.0.2.10"),
    ("b", "fa:16:3e:0b:00:11", "192.0.2.11"),
];

fn healthz(cloud: &Cloud) -> (u16, String) {
    let hv = &cloud.hvs[0];
    hv.ns
        .http_get(&hv.metrics_addr, "/healthz")
        .expect("agent answers /healthz")
}

fn policy_metric(cloud: &Cloud, name: &str) -> Option<f64> {
    metric(&cloud.hvs[0].metrics(), name, &[("map", POLICY)])
}

fn tap_state(cloud: &Cloud, tap: &str) -> String {
    let state = cloud.hvs[0].state();
    state["taps"]
        .as_array()
        .and_then(|taps| taps.iter().find(|t| t["ifname"] == tap))
        .and_then(|t| t["state"].as_str())
        .unwrap_or("")
        .to_string()
}

fn log_count(cloud: &Cloud, needle: &str) -> usize {
    cloud.hvs[0]
        .agent_log()
        .lines()
        .filter(|l| l.contains(needle))
        .count()
}

/// `dfctl lport create` for VM `i` in group web, and its namespace.
fn add_port(cloud: &mut Cloud, i: usize) {
    let (name, mac, ip) = VMS[i];
    cloud.dfctl(&format!(
        "lport create p{name} --lswitch net1 --mac {mac} --fixed-ip {ip} --chassis hv1 --ifname tap{name} --security-group web"
    ));
    if cloud.vms.len() <= i {
        cloud.add_vm_opts(
            0,
            name,
            &format!("tap{name}"),
            mac,
            &[&format!("{ip}/24")],
            &VmOpts::with_gateways(&[]),
        );
    }
}

/// Waits until the agent has reconciled an NB change made after `before` syncs.
fn wait_synced_past(cloud: &Cloud, before: f64) {
    wait_until("the change reconciled", APPLY, || {
        metric(&cloud.hvs[0].metrics(), "dragonflow_sync_total", &[]).unwrap_or(0.0) > before
    });
}

#[test]
fn overflow_is_reported_once_and_fails_closed() {
    let mut cloud = Cloud::new();
    let hv = cloud.add_hypervisor_opts("hv1", Hook::Tc, HvOpts { bridge: false });
    cloud.hvs[hv].extra_agent_args = vec![
        "--no-tunnel".into(),
        "--map-capacity".into(),
        format!("{POLICY}={CAPACITY}"),
    ];
    cloud.dfctl("lswitch create net1 --vni 100");
    cloud.dfctl("subnet create net1-v4 --lswitch net1 --cidr 192.0.2.0/24");
    cloud.dfctl("secgroup create web --name web");
    add_port(&mut cloud, 0);
    // Port a alone fits: the agent starts healthy (start_agent waits for /healthz 200).
    cloud.start_agent(hv);
    wait_until("tapa attached with its entries", READY, || {
        tap_state(&cloud, "tapa") == "attached"
    });
    assert_eq!(
        policy_metric(&cloud, "dragonflow_map_capacity"),
        Some(f64::from(CAPACITY))
    );
    assert_eq!(
        policy_metric(&cloud, "dragonflow_map_needed_entries"),
        Some(2.0)
    );
    assert_eq!(policy_metric(&cloud, "dragonflow_map_overflow"), Some(0.0));

    // Port b arrives: 4 entries needed, 3 fit.
    add_port(&mut cloud, 1);
    wait_until("/healthz degraded", APPLY, || healthz(&cloud).0 == 503);
    let (_, body) = healthz(&cloud);
    assert_eq!(
        body,
        format!("degraded: {POLICY} needs 4 entries, capacity {CAPACITY}\n"),
        "/healthz body"
    );
    assert_eq!(policy_metric(&cloud, "dragonflow_map_overflow"), Some(1.0));
    assert_eq!(
        policy_metric(&cloud, "dragonflow_map_needed_entries"),
        Some(4.0)
    );
    // The running port keeps its place; the new one is left out whole.
    assert_eq!(
        metric(
            &cloud.hvs[0].metrics(),
            "dragonflow_map_entries",
            &[("map", POLICY)]
        ),
        Some(2.0),
        "only port a's policy is written"
    );
    let state = cloud.hvs[0].state();
    let overflow = &state["map_overflow"];
    assert_eq!(
        overflow,
        &serde_json::json!([{"map": POLICY, "needed": 4, "capacity": CAPACITY, "kept": 2}]),
        "/state map_overflow"
    );
    wait_until("tapb seen", APPLY, || !tap_state(&cloud, "tapb").is_empty());
    assert_eq!(tap_state(&cloud, "tapa"), "attached");
    assert_eq!(
        tap_state(&cloud, "tapb"),
        "fail_closed",
        "a port that does not fit whole has no entry at all: {state:#}"
    );

    // Fail closed, not open: b's frames are dropped as unknown_port …
    let hv1 = &cloud.hvs[0];
    let unknown = hv1.counter("from_vm", "drop", "unknown_port");
    assert!(!ping(&cloud.vms[1].ns, VMS[0].2, 1), "b reached a");
    wait_until("b's frames dropped as unknown_port", APPLY, || {
        hv1.counter("from_vm", "drop", "unknown_port") > unknown
    });
    // … and a's port security still holds: a spoofed source is dropped.
    let spoofed = hv1.counter("from_vm", "drop", "src_ip_spoof");
    python(
        &cloud.vms[0].ns,
        "fwdsend.py",
        &[
            "--dst-mac",
            VMS[1].1,
            "--src-ip",
            "192.0.2.99",
            "--dst-ip",
            VMS[1].2,
            "--payload",
            "dft-spoof",
        ],
    );
    wait_until("a's spoofed frame dropped", APPLY, || {
        hv1.counter("from_vm", "drop", "src_ip_spoof") > spoofed
    });

    // More reconciliations with the same need: changes that do not concern this chassis'
    // policy. Still one line, and nothing written again and again.
    for n in 0..3 {
        let before = metric(&hv1.metrics(), "dragonflow_sync_total", &[]).unwrap_or(0.0);
        cloud.dfctl(&format!("lswitch create other{n} --vni {}", 300 + n));
        wait_synced_past(&cloud, before);
    }
    assert_eq!(healthz(&cloud).0, 503);
    let log = hv1.agent_log();
    assert_eq!(
        log_count(&cloud, TOO_SMALL),
        1,
        "one log line for the overflow, not one per entry or reconciliation:\n{log}"
    );
    assert_eq!(log_count(&cloud, "map writes failed"), 0, "{log}");
    assert_eq!(
        metric(&hv1.metrics(), "dragonflow_map_write_errors_total", &[]),
        Some(0.0),
        "no write was attempted past the capacity"
    );

    // The need shrinks: a's port goes, b's fits now and gets its entries.
    cloud.dfctl("lport delete pa");
    wait_until("/healthz ok again", APPLY, || {
        healthz(&cloud) == (200, "ok\n".into())
    });
    assert_eq!(policy_metric(&cloud, "dragonflow_map_overflow"), Some(0.0));
    assert_eq!(
        policy_metric(&cloud, "dragonflow_map_needed_entries"),
        Some(2.0)
    );
    assert_eq!(cloud.hvs[0].state()["map_overflow"], Value::Array(vec![]));
    wait_until("tapb attached with its entries", APPLY, || {
        tap_state(&cloud, "tapb") == "attached"
    });
    assert_eq!(
        log_count(&cloud, FITS_AGAIN),
        1,
        "{}",
        cloud.hvs[0].agent_log()
    );
    assert_eq!(log_count(&cloud, TOO_SMALL), 1);
    assert_eq!(
        metric(
            &cloud.hvs[0].metrics(),
            "dragonflow_map_write_errors_total",
            &[]
        ),
        Some(0.0),
        "the removals went first: no upsert met a full map"
    );

    // A restart asking for more: the pinned map (with b's live entries) is adopted with
    // the capacity it was made with, which the metric shows, and the log says why.
    cloud.hvs[0].kill_agent();
    cloud.hvs[0].extra_agent_args = vec![
        "--no-tunnel".into(),
        "--map-capacity".into(),
        format!("{POLICY}=64"),
    ];
    cloud.start_agent(hv);
    assert_eq!(
        policy_metric(&cloud, "dragonflow_map_capacity"),
        Some(f64::from(CAPACITY))
    );
    assert_eq!(
        log_count(
            &cloud,
            &format!("keeps its capacity {CAPACITY} (configured 64)")
        ),
        1,
        "{}",
        cloud.hvs[0].agent_log()
    );
}
