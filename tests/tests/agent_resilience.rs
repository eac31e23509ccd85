//! The agent's failure modes (issue 2, item 9): kill -9 and restart under continuous
//! traffic loses nothing and never opens the datapath; an etcd outage leaves enforcement
//! as it was and the agent resyncs afterwards; a tap with no known port is fail-closed;
//! malformed northbound records are logged, counted and skipped. The hypervisor has no
//! bridge: the traffic that must survive is switched by the datapath itself.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    fs,
    process::Stdio,
    time::{Duration, Instant},
};

use serde_json::{Value, json};
use tests::{
    fixtures::vmctl_topo::{
        A, B, C, Ctl, Topo, VmSpec, counters, fence, probe, probe_via, wait_counted,
    },
    framework::{hook::Hook, http::metric_sum, process::wait_until},
    harness::ping,
};

const COUNT_TIMEOUT: Duration = Duration::from_secs(3);

fn stream_stats(b: &Ctl) -> Value {
    b.call(json!({"op": "stream_stats"}))
}

fn received(b: &Ctl) -> u64 {
    stream_stats(b)["received"].as_u64().expect("received")
}

fn kill9_restart(hook: Hook) {
    let mut t = Topo::new(hook, &[A, B]);
    let spoof = json!({"src_ip": "192.0.2.66"});
    {
        let (a, b) = (&t.ctl[0], &t.ctl[1]);
        assert!(
            !probe(a, b, "udp4", spoof.clone()),
            "spoof passes before the kill"
        );
        b.call(json!({"op": "stream_listen", "port": 40001}));
        a.call(json!({"op": "stream_start", "dst": B.ip4, "port": 40001, "pps": 500}));
        wait_until("the UDP stream flows", Duration::from_secs(10), || {
            received(b) >= 200
        });
    }
    // A kernel ping flow too, spanning the kill.
    let ping = t
        .vm(0)
        .command("ping")
        .args(["-q", "-n", "-c", "400", "-i", "0.01", "-W", "2", B.ip4])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn ping");

    t.cloud.hvs[0].kill_agent();
    let pins = t.hv().bpffs.path.join("dragonflow").join("hv1");
    let pinned: Vec<String> = fs::read_dir(&pins)
        .unwrap_or_else(|e| panic!("pins under {} after kill -9: {e}", pins.display()))
        .filter_map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect();
    assert!(
        !pinned.is_empty(),
        "nothing pinned under {} while the agent is dead",
        pins.display()
    );
    {
        // Enforcement intact with no agent: the spoof is dropped, legit traffic passes
        // (the probe's fence is a legitimate frame and must arrive).
        let (a, b) = (&t.ctl[0], &t.ctl[1]);
        for _ in 0..3 {
            assert!(
                !probe(a, b, "udp4", spoof.clone()),
                "spoof passes while the agent is dead"
            );
            assert!(
                !probe(a, b, "mac_spoof", json!({})),
                "MAC spoof passes while the agent is dead"
            );
        }
    }
    let at_kill = received(&t.ctl[1]);
    t.cloud.start_agent(0);
    assert_eq!(
        tests::fixtures::vmctl_topo::forwarding_enabled(t.hv()),
        1.0,
        "the restarted agent adopted the pinned config but does not report forwarding on"
    );
    let after_restart = received(&t.ctl[1]);
    assert!(
        after_restart > at_kill,
        "the stream did not flow while the agent was restarting"
    );
    let (a, b) = (&t.ctl[0], &t.ctl[1]);
    wait_until(
        "the stream keeps flowing after the restart",
        Duration::from_secs(10),
        || received(b) >= after_restart + 500,
    );
    let stop = a.call(json!({"op": "stream_stop"}));
    let sent = stop["sent"].as_u64().expect("sent");
    // Give the tail of the stream a deadline to land, then judge.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut s = stream_stats(b);
    while s["received"].as_u64() != Some(sent) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
        s = stream_stats(b);
    }
    assert_eq!(
        s["missing"],
        json!(0),
        "UDP stream lost datagrams across kill -9 + restart: {s} (sent {sent})"
    );
    let out = ping.wait_with_output().expect("ping");
    let summary = String::from_utf8_lossy(&out.stdout);
    assert!(
        summary.contains(" 0% packet loss"),
        "ping -c 400 -i 0.01 across kill -9 + restart lost packets:\n{summary}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The restarted agent enforces and counts.
    let before = counters(t.hv());
    assert!(
        !probe(a, b, "udp4", spoof.clone()),
        "spoof passes after the restart"
    );
    wait_counted(
        t.hv(),
        &before,
        "drop",
        &["src_ip_spoof"],
        1.0,
        COUNT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("after restart: {e}"));
    eprintln!(
        "[{}] kill -9: stream sent {sent}, lost 0; pins: {pinned:?}",
        hook.as_str()
    );
}

#[test]
fn kill9_restart_under_traffic_xdp() {
    kill9_restart(Hook::Xdp);
}

#[test]
fn kill9_restart_under_traffic_tc() {
    kill9_restart(Hook::Tc);
}

fn etcd_outage(hook: Hook) {
    let mut t = Topo::new(hook, &[A, B]);
    let spoof = json!({"src_ip": "192.0.2.66"});
    t.cloud.etcd.stop();
    // While etcd is down, nothing changes: spoof dropped (and counted), legit passes, for a
    // while (several reconnect attempts of the agent).
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(4) || rounds < 3 {
        let (a, b) = (&t.ctl[0], &t.ctl[1]);
        let before = counters(t.hv());
        assert!(
            !probe(a, b, "udp4", spoof.clone()),
            "spoof passes while etcd is down (round {rounds})"
        );
        wait_counted(
            t.hv(),
            &before,
            "drop",
            &["src_ip_spoof"],
            1.0,
            COUNT_TIMEOUT,
        )
        .unwrap_or_else(|e| panic!("etcd down, round {rounds}: {e}"));
        assert!(
            tests::harness::ping(t.vm(0), B.ip4, 1),
            "legit ping fails while etcd is down (round {rounds})"
        );
        rounds += 1;
    }
    let etcd_lines: Vec<String> = t
        .hv()
        .metrics()
        .lines()
        .filter(|l| l.contains("etcd") && !l.starts_with('#'))
        .map(String::from)
        .collect();
    eprintln!(
        "[{}] etcd-related metrics during the outage: {etcd_lines:?}",
        hook.as_str()
    );

    t.cloud.etcd.start();
    // The agent notices on its own; a change made now must reach the datapath.
    t.cloud.dfctl("lport update pa --add-aap 192.0.2.66");
    let t0 = Instant::now();
    wait_until(
        "an AAP added after etcd came back reaches the datapath",
        Duration::from_secs(30),
        || probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
    );
    eprintln!(
        "[{}] resync after etcd restart took {:?}",
        hook.as_str(),
        t0.elapsed()
    );
    wait_until(
        "chassis/hv1 registered again",
        Duration::from_secs(30),
        || {
            let out = t.cloud.etcdctl(&["get", "/dragonflow/chassis/hv1"]);
            String::from_utf8_lossy(&out.stdout).contains("hv1")
        },
    );
    // And the rest still enforced.
    assert!(
        !probe(&t.ctl[0], &t.ctl[1], "mac_spoof", json!({})),
        "MAC spoof passes after the resync"
    );

    // A partition instead of an outage: etcd keeps running but the agent cannot reach it
    // (its underlay link is down) while the AAP is removed. The agent keeps the last good
    // state (legit passes, no flush), and catches up once the link is back.
    let hvns = &t.cloud.hvs[0].ns;
    hvns.exec("ip link set eth-ul down");
    t.cloud.dfctl("lport update pa --remove-aap 192.0.2.66");
    for _ in 0..3 {
        assert!(
            probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
            "partitioned from etcd, the datapath changed anyway: 192.0.2.66 no longer passes (flushed on etcd loss?)"
        );
        assert!(
            !probe(&t.ctl[0], &t.ctl[1], "mac_spoof", json!({})),
            "MAC spoof passes while the agent is partitioned from etcd"
        );
    }
    hvns.exec("ip link set eth-ul up");
    let t0 = Instant::now();
    wait_until(
        "an AAP removed during a partition is removed from the datapath after it",
        Duration::from_secs(30),
        || !probe(&t.ctl[0], &t.ctl[1], "udp4", spoof.clone()),
    );
    eprintln!(
        "[{}] catch-up after the partition took {:?}",
        hook.as_str(),
        t0.elapsed()
    );
}

#[test]
fn etcd_outage_xdp() {
    etcd_outage(Hook::Xdp);
}

#[test]
fn etcd_outage_tc() {
    etcd_outage(Hook::Tc);
}

const U: VmSpec = VmSpec {
    name: "u",
    mac: "fa:16:3e:00:00:0d",
    ip4: "192.0.2.13",
    ip6: "2001:db8::13",
    extra: "",
};
const W: VmSpec = VmSpec {
    name: "w",
    mac: "fa:16:3e:00:00:0e",
    ip4: "192.0.2.14",
    ip6: "2001:db8::14",
    extra: "",
};

fn fail_closed(t: &Topo) -> f64 {
    metric_sum(
        &t.hv().metrics(),
        "dragonflow_taps",
        &[("state", "fail_closed")],
    )
}

fn unknown_tap(hook: Hook) {
    // tapw exists before the agent starts; its port never does.
    let mut t = Topo::with(hook, &[A, B], |cloud| {
        tests::fixtures::vmctl_topo::add_vm(
            cloud,
            W.name,
            &W.tap(),
            W.mac,
            &["192.0.2.14/24", "2001:db8::14/64"],
        );
    });
    let w = Ctl::spawn(t.vm(2), &W, &B);
    let before = counters(t.hv());
    let s = w.send("udp4", json!({}));
    wait_counted(
        t.hv(),
        &before,
        "drop",
        &["unknown_port"],
        s.n as f64,
        COUNT_TIMEOUT,
    )
    .unwrap_or_else(|e| panic!("tap present at agent start without a port: {e}"));
    fence(&t.ctl[0], &t.ctl[1]);
    assert!(
        !t.ctl[1].seen(&s.sigs)[0],
        "traffic of a tap with no port reached VM b"
    );
    assert!(
        !probe_via(&w, &t.ctl[0], &t.ctl[1], "arp_request", json!({})),
        "ARP of a tap with no port passed"
    );
    assert!(
        fail_closed(&t) >= 1.0,
        "dragonflow_taps{{state=\"fail_closed\"}} = {}",
        fail_closed(&t)
    );

    // tapu appears while the agent runs (netlink): dropped as soon as the agent has seen
    // it (a frame racing the attach is the kernel's window, not a verdict).
    tests::fixtures::vmctl_topo::add_vm(
        &mut t.cloud,
        U.name,
        &U.tap(),
        U.mac,
        &["192.0.2.13/24", "2001:db8::13/64"],
    );
    let u = Ctl::spawn(&t.cloud.vms[3].ns, &U, &B);
    wait_until(
        "hot-plugged tapu without a port is dropped as unknown_port",
        Duration::from_secs(10),
        || {
            let before = counters(t.hv());
            let s = u.send("udp4", json!({}));
            wait_counted(
                t.hv(),
                &before,
                "drop",
                &["unknown_port"],
                1.0,
                Duration::from_millis(500),
            )
            .is_ok()
                && !probe_via(&u, &t.ctl[0], &t.ctl[1], "udp4", json!({}))
                && !t.ctl[1].seen(&s.sigs)[0]
        },
    );
    let fc = fail_closed(&t);
    assert!(
        fc >= 2.0,
        "two taps without a port, dragonflow_taps{{state=\"fail_closed\"}} = {fc}"
    );
    // Once the port exists, its traffic passes, and port security applies to it.
    t.cloud.dfctl(&format!(
        "lport create pu --lswitch net1 --mac {} --fixed-ip {} --fixed-ip {} --chassis hv1 --ifname tapu",
        U.mac, U.ip4, U.ip6
    ));
    wait_until(
        "tapu passes once port pu exists",
        Duration::from_secs(15),
        || probe_via(&u, &t.ctl[0], &t.ctl[1], "udp4", json!({})),
    );
    assert!(
        !probe(&u, &t.ctl[1], "udp4", json!({"src_ip": "192.0.2.66"})),
        "port pu: spoof passes"
    );
    wait_until(
        "one fail-closed tap fewer once pu exists",
        Duration::from_secs(5),
        || fail_closed(&t) == fc - 1.0,
    );
    // tapw still has no port and is still dropped.
    assert!(
        !probe_via(&w, &t.ctl[0], &t.ctl[1], "udp4", json!({})),
        "tapw passes after an unrelated port was created"
    );
}

#[test]
fn unknown_tap_fail_closed_xdp() {
    unknown_tap(Hook::Xdp);
}

#[test]
fn unknown_tap_fail_closed_tc() {
    unknown_tap(Hook::Tc);
}

#[test]
fn malformed_nb_records_are_skipped() {
    let t = Topo::new(Hook::Tc, &[A, B]);
    let invalid = || {
        metric_sum(
            &t.hv().metrics(),
            "dragonflow_nb_invalid_records_total",
            &[],
        )
    };
    let before = invalid();
    let put = |k: &str, v: &str| {
        let out = t.cloud.etcdctl(&["put", k, v]);
        assert!(
            out.status.success(),
            "etcdctl put {k}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    // Not JSON at all, JSON of the wrong shape, and a well-formed port that breaks
    // Neutron's rules (multicast MAC).
    put("/dragonflow/lport/bad", "{\"id\": garbage,,");
    put("/dragonflow/lport/bad2", "[1, 2, 3]");
    put(
        "/dragonflow/lport/bad3",
        r#"{"id":"bad3","lswitch":"net1","mac":"01:00:5e:00:00:01","fixed_ips":["192.0.2.30"],"chassis":"hv1","ifname":"tapbad3"}"#,
    );
    wait_until(
        "dragonflow_nb_invalid_records_total counts the 3 bad records",
        Duration::from_secs(10),
        || invalid() >= before + 3.0,
    );
    wait_until(
        "the agent logs the bad record's key",
        Duration::from_secs(5),
        || t.hv().agent_log().contains("lport/bad"),
    );
    let (status, _) = t
        .agent_get("/healthz")
        .expect("agent alive after bad records");
    assert_eq!(status, 200, "agent unhealthy after bad records");
    let (a, b) = (&t.ctl[0], &t.ctl[1]);
    assert!(
        !probe(a, b, "udp4", json!({"src_ip": "192.0.2.66"})),
        "spoof passes after bad records"
    );
    // The watch is still alive: a valid change after the bad ones applies.
    t.cloud.dfctl("lport update pa --add-aap 192.0.2.66");
    wait_until(
        "a valid change after bad records reaches the datapath",
        Duration::from_secs(15),
        || probe(a, b, "udp4", json!({"src_ip": "192.0.2.66"})),
    );
    // Overwriting the garbage with a valid record makes it a port like any other.
    put(
        "/dragonflow/lport/bad",
        r#"{"id":"bad","lswitch":"net1","mac":"fa:16:3e:00:00:31","fixed_ips":["192.0.2.31"],"chassis":"hv1","ifname":"tapbad"}"#,
    );
    let out = t.cloud.dfctl("lport list");
    assert!(
        out.contains("pa") && out.contains("pb"),
        "dfctl lport list after bad records:\n{out}"
    );
}

/// The value of an NB key (panics when absent).
fn etcd_get(t: &Topo, key: &str) -> Value {
    let out = t.cloud.etcdctl(&["get", key, "--print-value-only"]);
    assert!(
        out.status.success(),
        "etcdctl get {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{key} is not JSON ({e}): {:?}", out.stdout))
}

fn etcd_put(t: &Topo, key: &str, value: &Value) {
    let out = t.cloud.etcdctl(&["put", key, &value.to_string()]);
    assert!(
        out.status.success(),
        "etcdctl put {key}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Whether /state lists `key` among the invalid records.
fn listed_invalid(t: &Topo, key: &str) -> bool {
    t.hv().state()["invalid_records"].get(key).is_some()
}

/// Issue 11, item 7: a restart alone never changes a verdict. Port a admits on ingress only
/// the members of group g; b is one. b's record turns invalid in etcd: its last good
/// version stays in force, b still reaches a. After kill -9 and a restart the new agent
/// knows only the invalid value, and still enforces the last good version (kept in the
/// state dir): b still reaches a, c (not a member) is still refused. Fixing b's record
/// (out of g) takes effect.
#[test]
fn last_good_version_survives_a_restart() {
    let mut t = Topo::new(Hook::Tc, &[A, B, C]);
    t.cloud.dfctl("secgroup create g --name g");
    t.cloud.dfctl("secgroup create srv --name srv");
    t.cloud
        .dfctl("secgroup rule-add srv --direction ingress --ethertype ipv4 --remote-group g");
    t.cloud.dfctl("lport update pa --security-group srv");
    t.cloud.dfctl("lport update pb --security-group g");
    let (vb, vc) = (t.vm(1), t.vm(2));
    let apply = Duration::from_secs(15);
    wait_until("c (not in g) is refused by a", apply, || {
        !ping(vc, A.ip4, 1)
    });
    wait_until("b (in g) reaches a", apply, || ping(vb, A.ip4, 1));

    // b's record made invalid behind dfctl's back (a multicast MAC): nothing changes.
    let key = "/dragonflow/lport/pb";
    let good = etcd_get(&t, key);
    let mut bad = good.clone();
    bad["mac"] = json!("01:00:5e:00:00:01");
    etcd_put(&t, key, &bad);
    wait_until("/state lists b's record as invalid", apply, || {
        listed_invalid(&t, key)
    });
    assert!(
        ping(vb, A.ip4, 1),
        "b no longer reaches a once its record is invalid"
    );

    t.cloud.hvs[0].kill_agent();
    t.cloud.start_agent(0);
    wait_until(
        "the restarted agent lists b's record as invalid",
        apply,
        || listed_invalid(&t, key),
    );
    let (vb, vc) = (t.vm(1), t.vm(2));
    assert!(
        ping(vb, A.ip4, 1) && ping(vb, A.ip4, 1),
        "after the restart b no longer reaches a: the restart changed a verdict"
    );
    assert!(
        t.hv()
            .agent_log()
            .contains("its last good version from the state file stays in force"),
        "the restarted agent did not use the kept version; log:\n{}",
        t.hv().agent_log()
    );
    let denied = t.hv().counter("to_vm", "drop", "sg_denied");
    assert!(!ping(vc, A.ip4, 1), "after the restart c reaches a");
    wait_until(
        "c's ping to a counted sg_denied (to_vm)",
        COUNT_TIMEOUT,
        || t.hv().counter("to_vm", "drop", "sg_denied") > denied,
    );

    // Fixed, and moved out of g: the change takes effect, the kept version is gone.
    let mut fixed = good;
    fixed["security_groups"] = json!([tests::fixtures::vmctl_topo::ALLOW_ALL]);
    etcd_put(&t, key, &fixed);
    wait_until("b, out of g, is refused by a", apply, || {
        !ping(vb, A.ip4, 1)
    });
    assert!(
        !listed_invalid(&t, key),
        "b's fixed record still listed as invalid"
    );
}

/// Issue 11, item 6: a port written to etcd directly with another port's fixed IP does not
/// steal that IP's ARP answers. `p0dup` (a real tap, b's IP, its id sorting before b's) is
/// younger than b: refused, listed in /state naming b, counted; the ARP responder keeps
/// answering b's MAC. Once b is deleted, p0dup's record takes effect.
#[test]
fn a_conflicting_port_is_refused() {
    const DUP_MAC: &str = "fa:16:3e:00:00:0d";
    let t = Topo::with(Hook::Tc, &[A, B], |cloud| {
        let addr = format!("{}/24", B.ip4);
        tests::fixtures::vmctl_topo::add_vm(cloud, "dup", "tapdup", DUP_MAC, &[&addr]);
    });
    let invalid_lports = || {
        metric_sum(
            &t.hv().metrics(),
            "dragonflow_nb_invalid_records_total",
            &[("kind", "lport")],
        )
    };
    let before = invalid_lports();
    let key = "/dragonflow/lport/p0dup";
    etcd_put(
        &t,
        key,
        &json!({"id": "p0dup", "lswitch": "net1", "mac": DUP_MAC, "fixed_ips": [B.ip4],
                "chassis": "hv1", "ifname": "tapdup", "security_groups": [tests::fixtures::vmctl_topo::ALLOW_ALL]}),
    );
    let apply = Duration::from_secs(15);
    wait_until("/state lists p0dup as invalid", apply, || {
        listed_invalid(&t, key)
    });
    let reason = t.hv().state()["invalid_records"][key].clone();
    let reason = reason.as_str().unwrap_or_default();
    assert!(
        reason.contains(&format!("IP {} in lswitch net1", B.ip4)) && reason.contains("port pb"),
        "p0dup's reason names neither the IP nor b: {reason:?}"
    );
    assert_eq!(
        invalid_lports(),
        before + 1.0,
        "the refused port is counted once"
    );
    let a = &t.ctl[0];
    a.send("arp_request", json!({}));
    wait_until(
        "a's ARP request for b's IP is answered with b's MAC",
        COUNT_TIMEOUT,
        || a.got_neigh_answer(B.ip4, B.mac),
    );
    assert!(
        !a.got_neigh_answer(B.ip4, DUP_MAC),
        "the conflicting port stole the ARP answer for {}",
        B.ip4
    );

    // b goes: p0dup holds the IP now.
    t.cloud.dfctl("lport delete pb");
    wait_until("p0dup is valid once b is gone", apply, || {
        !listed_invalid(&t, key)
    });
    wait_until(
        "a's ARP request for the IP is answered with p0dup's MAC",
        apply,
        || {
            a.send("arp_request", json!({}));
            a.got_neigh_answer(B.ip4, DUP_MAC)
        },
    );
}
