//! The port status records (docs/neutron.md; issue 13, item 4) as a real agent writes them
//! into a real etcd for ports it enforces, and `admin_state_up = false` honoured by the
//! datapath: the port's traffic dropped and counted, its record `admin-down`; back up,
//! `attached` again; a deleted port's record removed.
//!
//! The Neutron driver's side (reading these records, ACTIVE/DOWN) is tested under
//! Neutron's test base (neutron_plugin.rs).
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::Duration;

use serde_json::Value;
use tests::{
    fixtures::vmctl_topo::{A, B, Topo},
    framework::{hook::Hook, process::wait_for},
    harness::ping,
};

const DEADLINE: Duration = Duration::from_secs(20);

/// The record of `lport`, `None` while there is none.
fn status(t: &Topo, lport: &str) -> Option<Value> {
    let key = format!("/dragonflow/portstatus/{lport}");
    let out = t.cloud.etcdctl(&["get", &key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let text = text.trim();
    (!text.is_empty())
        .then(|| serde_json::from_str(text).unwrap_or_else(|e| panic!("{key} holds {text:?}: {e}")))
}

/// Waits until `lport`'s record says `state`; returns it.
#[track_caller]
fn wait_state(t: &Topo, lport: &str, state: &str) -> Value {
    wait_for(&format!("portstatus/{lport} = {state}"), DEADLINE, || {
        status(t, lport).filter(|v| v["state"] == state)
    })
}

/// Rewrites `lport`'s NB record with `admin_state_up` set to `up` (dfctl has no flag for
/// it; Neutron's driver writes the field).
fn set_admin_state(t: &Topo, lport: &str, up: bool) {
    let key = format!("/dragonflow/lport/{lport}");
    let out = t.cloud.etcdctl(&["get", &key, "--print-value-only"]);
    let mut rec: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{key}: {e}: {}", String::from_utf8_lossy(&out.stdout)));
    rec["admin_state_up"] = Value::Bool(up);
    let out = t.cloud.etcdctl(&["put", &key, &rec.to_string()]);
    assert!(
        out.status.success(),
        "etcdctl put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn port_status_records_and_admin_down() {
    let t = Topo::new(Hook::Tc, &[A, B]);
    let (pa, pb) = (A.port(), B.port());

    // Both ports enforced (Topo waited for a → b): both `attached`, from hv1.
    for p in [&pa, &pb] {
        let rec = wait_state(&t, p, "attached");
        assert_eq!(rec["chassis"], "hv1", "{p}: {rec}");
        let since = rec["since"].as_str().expect("since is a string");
        assert!(
            since.ends_with('Z') && since.len() == "2026-12-03T16:52:29Z".len(),
            "{p}: since {since:?} is not RFC 3339 UTC in whole seconds"
        );
        assert_eq!(rec["reason"], "", "{p}: {rec}");
    }
    // Written under the agent's lease: the key carries one.
    let out = t.cloud.etcdctl(&[
        "get",
        &format!("/dragonflow/portstatus/{pa}"),
        "--write-out=json",
    ]);
    let kv: Value = serde_json::from_slice(&out.stdout).expect("etcdctl json");
    assert!(
        kv["kvs"][0]["lease"].as_i64().is_some_and(|l| l != 0),
        "portstatus/{pa} is not under a lease: {kv}"
    );

    // a administratively down: its record says so, and its traffic is dropped, counted.
    let hv = t.hv();
    let dropped = hv.drops("unknown_port");
    set_admin_state(&t, &pa, false);
    let rec = wait_state(&t, &pa, "admin-down");
    assert_ne!(rec["reason"], "", "admin-down has a reason: {rec}");
    assert!(!ping(t.vm(0), B.ip4, 3), "a (admin down) still reaches b");
    assert!(!ping(t.vm(1), A.ip4, 3), "b still reaches a (admin down)");
    assert!(
        hv.drops("unknown_port") > dropped,
        "a's frames were not counted as dropped"
    );
    assert_eq!(
        status(&t, &pb).map(|v| v["state"].clone()),
        Some("attached".into()),
        "b is untouched"
    );

    // Back up: enforced again, `attached` with a later `since`.
    set_admin_state(&t, &pa, true);
    let up = wait_state(&t, &pa, "attached");
    assert!(
        up["since"].as_str() >= rec["since"].as_str(),
        "since went backwards: {rec} then {up}"
    );
    wait_for("a reaches b again", DEADLINE, || {
        ping(t.vm(0), B.ip4, 1).then_some(())
    });

    // b deleted: its record goes.
    t.cloud.dfctl(&format!("lport delete {pb}"));
    wait_for(&format!("portstatus/{pb} removed"), DEADLINE, || {
        status(&t, &pb).is_none().then_some(())
    });
    assert!(status(&t, &pa).is_some(), "a's record went with b's");
}
