//! A VM on a real tap device (issue 2, item 9): `ip tuntap add … mode tap` in the
//! hypervisor namespace (no bridge: the datapath switches its frames), and a "VM" process
//! (tests/scripts/tapvm.py) that opens it through /dev/net/tun like qemu does. Native XDP
//! on tun and TC both see what the process writes; legitimate echo requests are redirected
//! to the peer and answered (the reply redirected back into the tun device), spoofs
//! dropped and counted. Before the process opens the tap, flood copies into it are
//! refused by the device and counted as `dest_refused`.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::time::Duration;

use serde_json::Value;
use tests::{
    fixtures::vmctl_topo::{A, B, Topo, counters, wait_counted},
    framework::{hook::Hook, process::run, python::python_command},
};

const TAP: &str = "taprt";
const MAC: &str = "fa:16:3e:00:00:0f";
const IP: &str = "192.0.2.15";
const SPOOF: &str = "192.0.2.66";

fn real_tap(hook: Hook) {
    let t = Topo::new(hook, &[A, B]);
    let hv = t.hv();
    t.cloud.dfctl(&format!(
        "lport create prt --lswitch net1 --mac {MAC} --fixed-ip {IP} --chassis hv1 --ifname {TAP}"
    ));
    // Hot-plugged while the agent runs, as a VM boot would.
    hv.ns.exec(&format!("ip tuntap add dev {TAP} mode tap"));
    hv.ns.exec(&format!("ip link set {TAP} up"));
    // If the spoofed echo got through, b would answer it straight to the tap VM's MAC.
    t.vm(1).exec(&format!(
        "ip neigh replace {SPOOF} lladdr {MAC} dev eth0 nud permanent"
    ));

    // Until the "VM" opens its tap (qemu starting), the tap has no carrier and its queue
    // drops what is sent into it: a flood copy into it is refused by the device, counted
    // as dest_refused (the other copies go), never as a datapath failure.
    let before = counters(hv);
    let start = std::time::Instant::now();
    while wait_counted(
        hv,
        &before,
        "drop",
        &["dest_refused"],
        1.0,
        Duration::from_millis(200),
    )
    .is_err()
    {
        // A broadcast the responder does not answer (no port has the address): flooded.
        t.vm(1).try_exec("arping -c 1 -w 1 -I eth0 192.0.2.99");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no flood copy into the unopened tap was counted as dest_refused: {}",
            tests::fixtures::vmctl_topo::diff(&before, &counters(hv))
        );
    }
    assert_eq!(
        tests::fixtures::vmctl_topo::sum(&counters(hv), "drop", &["redirect_failed"]),
        tests::fixtures::vmctl_topo::sum(&before, "drop", &["redirect_failed"]),
        "a copy into the unopened tap counted as redirect_failed"
    );

    let before = counters(hv);
    let mut c = python_command(&hv.ns, "tapvm.py");
    c.args([
        "--ifname",
        TAP,
        "--mac",
        MAC,
        "--ip",
        IP,
        "--peer-mac",
        B.mac,
        "--peer-ip",
        B.ip4,
    ])
    .args(["--spoof-ip", SPOOF, "--timeout", "20"]);
    let out = run(&mut c);
    let r: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "tapvm.py output ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    eprintln!("[{}] tapvm.py: {r}", hook.as_str());
    let kind = hv.ns.exec(&format!("ip -d link show {TAP}"));
    assert!(
        String::from_utf8_lossy(&kind.stdout).contains("tun type tap"),
        "{TAP} is not a tun/tap device"
    );
    assert_eq!(
        r["legit"],
        Value::Bool(true),
        "legit echo from the real tap never answered: {r}"
    );
    assert_eq!(
        r["fence"],
        Value::Bool(true),
        "fence echo from the real tap never answered: {r}"
    );
    assert_eq!(
        r["spoof_ip_answered"],
        Value::Bool(false),
        "spoofed-IP echo from the real tap was answered: {r}"
    );
    assert_eq!(
        r["spoof_mac_answered"],
        Value::Bool(false),
        "spoofed-MAC echo from the real tap was answered: {r}"
    );
    let t3 = Duration::from_secs(3);
    let now = wait_counted(hv, &before, "drop", &["src_ip_spoof"], 1.0, t3)
        .unwrap_or_else(|e| panic!("real tap: {e}"));
    wait_counted(hv, &before, "drop", &["src_mac_spoof"], 1.0, t3)
        .unwrap_or_else(|e| panic!("real tap: {e}"));
    wait_counted(hv, &before, "pass", &["ipv4"], 2.0, t3)
        .unwrap_or_else(|e| panic!("real tap: {e}"));
    // Two-slot counting: the echoes from the tap and b's replies into it were redirected
    // by the datapath (l2_local), not handed to a bridge.
    wait_counted(hv, &before, "pass", &["l2_local"], 4.0, t3)
        .unwrap_or_else(|e| panic!("real tap, forwarding outcome: {e}"));
    if r["arp_replies_sent"].as_u64().unwrap_or(0) > 0 {
        wait_counted(hv, &before, "pass", &["arp"], 1.0, t3)
            .unwrap_or_else(|e| panic!("real tap ARP reply: {e}"));
    }
    eprintln!(
        "[{}] counters: {}",
        hook.as_str(),
        tests::fixtures::vmctl_topo::diff(&before, &now)
    );
}

#[test]
fn real_tap_device_xdp() {
    real_tap(Hook::Xdp);
}

#[test]
fn real_tap_device_tc() {
    real_tap(Hook::Tc);
}
