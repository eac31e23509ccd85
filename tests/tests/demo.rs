//! The demo (`cargo xtask demo`) runs as a test: every step it shows must pass, including
//! the heart of the project, a keepalived VIP shared by two VMs on two hypervisors failing
//! over in the detection way while a client pings it. The demo binary exits non-zero when
//! a step fails; this test also checks the failover lines are there, so a demo that
//! silently stopped showing them fails too.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::process::Command;

#[test]
fn demo_runs_every_step_including_the_vip_failover() {
    let out = Command::new(env!("CARGO_BIN_EXE_df-demo"))
        .args(["--duration", "0"])
        .output()
        .expect("run df-demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the demo failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    for line in [
        "web1's GARP claimed the VIP (active port web1 on hv1): ok",
        "the VIP moved: active port web2 on hv2",
        "client's pings continue through web2",
        "longest gap",
    ] {
        assert!(
            stdout.contains(line),
            "the demo's output lacks {line:?}:\n{stdout}"
        );
    }
    // The history names both claims, in order.
    let web1 = stdout
        .find("claimed  web1")
        .expect("web1's claim in the history");
    let web2 = stdout
        .find("claimed  web2")
        .expect("web2's claim in the history");
    assert!(web1 < web2, "web1 claimed before web2:\n{stdout}");
}
