//! etcd as operators run it (issue 11, items 4 and 5): dfctl and the agent against a real
//! three-member cluster (Debian's etcd, free loopback ports, temp data dirs) whose leader
//! dies and whose quorum is lost and restored, and against an etcd requiring TLS client
//! certificates and user/password authentication.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    os::unix::fs::PermissionsExt,
    process::Command,
    time::{Duration, Instant},
};

use tests::framework::{
    agent::{Agent, dfctl as dfctl_with, time_until},
    etcd::{Etcd, Pki},
    process::{dfctl_bin, wait_until},
};

/// dfctl with every endpoint of the cluster; (exit code, stdout, stderr).
fn dfctl(c: &Etcd, args: &[&str]) -> (Option<i32>, String, String) {
    dfctl_with(&c.endpoints(), &[], args)
}

#[track_caller]
fn dfctl_ok(c: &Etcd, args: &[&str]) -> String {
    let (code, out, err) = dfctl(c, args);
    assert_eq!(code, Some(0), "dfctl {args:?}: {err}\n{}", c.logs());
    out
}

/// A dfctl call must not take longer than this after the leader died (a retry on another
/// member takes ~100 ms; an election about a second with etcd's default timeouts).
const EACH_WITHIN: Duration = Duration::from_secs(4);

#[test]
fn dfctl_reads_and_edits_survive_the_leader_dying() {
    let mut c = Etcd::cluster(3, None);
    dfctl_ok(&c, &["lswitch", "create", "n0", "--vni", "100"]);
    let leader = c.leader();
    c.kill_member(leader);
    let t = Instant::now();
    let mut slowest = Duration::ZERO;
    for i in 1..=10 {
        let id = format!("n{i}");
        let vni = format!("{}", 100 + i);
        let t1 = Instant::now();
        dfctl_ok(&c, &["lswitch", "create", &id, "--vni", &vni]);
        let shown = dfctl_ok(&c, &["-o", "json", "lswitch", "show", "n0"]);
        assert!(shown.contains("\"segmentation_id\": 100"), "{shown}");
        let listed = dfctl_ok(&c, &["lswitch", "list"]);
        assert!(listed.contains(&id), "{listed}");
        slowest = slowest.max(t1.elapsed());
    }
    for i in 1..=10 {
        dfctl_ok(&c, &["lswitch", "delete", &format!("n{i}")]);
    }
    eprintln!(
        "leader m{leader} killed: 10 creates + 20 reads + 10 deletes in {:?}, slowest round {slowest:?}",
        t.elapsed()
    );
    assert!(slowest < 3 * EACH_WITHIN, "slowest round took {slowest:?}");
}

#[test]
fn dfctl_reports_lost_quorum_and_recovers() {
    let mut c = Etcd::cluster(3, None);
    dfctl_ok(&c, &["lswitch", "create", "n0", "--vni", "100"]);
    let leader = c.leader();
    let other = (leader + 1) % 3;
    c.kill_member(leader);
    c.kill_member(other);
    // The survivor notices within an election timeout (1 s) and then answers "no leader"
    // at once (dfctl asks with require_leader); dead members refuse connections.
    let t = Instant::now();
    let (code, _, err) = dfctl(&c, &["--timeout", "4", "lswitch", "list"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("etcd has no leader (quorum lost?)"),
        "expected a lost-quorum message: {err}"
    );
    assert!(
        t.elapsed() < Duration::from_secs(6),
        "took {:?}",
        t.elapsed()
    );
    let (code, _, err) = dfctl(
        &c,
        &["--timeout", "4", "lswitch", "create", "n9", "--vni", "9"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("no leader") || err.contains("quorum"), "{err}");
    // Back: everything written before is there, and edits work again.
    c.start_member(leader);
    c.start_member(other);
    c.wait_healthy(Duration::from_secs(30));
    let listed = dfctl_ok(&c, &["lswitch", "list"]);
    assert!(listed.contains("n0"), "{listed}");
    dfctl_ok(&c, &["lswitch", "create", "n9", "--vni", "9"]);
}

const PASSWORD: &str = "s3cret-agent-pw";

/// A TLS etcd with auth enabled: `root`, and `agent` with read-write on /dragonflow/.
fn secured() -> (Pki, Etcd) {
    let pki = Pki::generate();
    let c = Etcd::cluster(1, Some(&pki));
    let ep = c.endpoints();
    for args in [
        &["user", "add", "root", "--new-user-password=root-pw"][..],
        &["user", "grant-role", "root", "root"],
        &["role", "add", "df"],
        &[
            "role",
            "grant-permission",
            "df",
            "--prefix=true",
            "readwrite",
            "/dragonflow/",
        ],
        &[
            "user",
            "add",
            "agent",
            &format!("--new-user-password={PASSWORD}"),
        ],
        &["user", "grant-role", "agent", "df"],
        &["auth", "enable"],
    ] {
        let out = c.etcdctl(&ep, args);
        assert!(
            out.status.success(),
            "etcdctl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let pw = pki.dir.join("password");
    std::fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    std::fs::set_permissions(&pw, std::fs::Permissions::from_mode(0o600)).unwrap();
    (pki, c)
}

/// dfctl with `tls` arguments; (exit code, stdout, stderr).
fn dfctl_tls(c: &Etcd, tls: &[String], args: &[&str]) -> (Option<i32>, String, String) {
    let mut extra = vec!["--timeout=3".to_string()];
    extra.extend_from_slice(tls);
    dfctl_with(&c.endpoints(), &extra, args)
}

fn tls_args(pki: &Pki, ca: &str, with_cert: bool, password_file: &str) -> Vec<String> {
    let mut v = vec![format!("--etcd-cacert={}", pki.path(ca))];
    if with_cert {
        v.push(format!("--etcd-cert={}", pki.path("client.pem")));
        v.push(format!("--etcd-key={}", pki.path("client.key")));
    }
    v.push("--etcd-user=agent".into());
    v.push(format!("--etcd-password-file={}", pki.path(password_file)));
    v
}

#[track_caller]
fn fails_with(r: (Option<i32>, String, String), code: i32, msg: &str) {
    let (got, _, err) = r;
    assert_eq!(got, Some(code), "{err}");
    assert!(err.contains(msg), "expected {msg:?} in {err:?}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err:?}");
    assert!(!err.contains(PASSWORD), "the password leaked: {err}");
}

#[test]
fn dfctl_with_tls_client_certificates_and_a_password() {
    let (pki, c) = secured();
    let good = tls_args(&pki, "ca.pem", true, "password");
    let (code, _, err) = dfctl_tls(&c, &good, &["lswitch", "create", "n1", "--vni", "5"]);
    assert_eq!(code, Some(0), "{err}\n{}", c.logs());
    let (code, out, err) = dfctl_tls(&c, &good, &["lswitch", "list"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("n1"), "{out}");

    // The password from the environment instead of a file.
    let out = Command::new(dfctl_bin())
        .args(["--etcd-endpoints", &c.endpoints()])
        .args(&good[..3])
        .arg("--etcd-user=agent")
        .args(["lswitch", "show", "n1"])
        .env("DRAGONFLOW_ETCD_PASSWORD", PASSWORD)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A CA that did not sign the server's certificate.
    fails_with(
        dfctl_tls(
            &c,
            &tls_args(&pki, "other-ca.pem", true, "password"),
            &["lswitch", "list"],
        ),
        1,
        "TLS handshake with etcd failed",
    );
    // No client certificate: the server ends the handshake (an alert, or with TLS 1.3 a
    // closed connection: the client's side of the handshake was already done).
    let (code, _, err) = dfctl_tls(
        &c,
        &tls_args(&pki, "ca.pem", false, "password"),
        &["lswitch", "list"],
    );
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains("TLS handshake with etcd failed")
            || err.contains("no client certificate, or one it does not trust?"),
        "{err}"
    );
    // A wrong password.
    std::fs::write(pki.dir.join("wrong"), "not-the-password\n").unwrap();
    fails_with(
        dfctl_tls(
            &c,
            &tls_args(&pki, "ca.pem", true, "wrong"),
            &["lswitch", "list"],
        ),
        1,
        "etcd authentication failed",
    );
    // Files that are missing or not what they should be are named.
    fails_with(
        dfctl_tls(
            &c,
            &tls_args(&pki, "missing-ca.pem", true, "password"),
            &["lswitch", "list"],
        ),
        2,
        &format!(
            "cannot read CA certificate file {}",
            pki.path("missing-ca.pem")
        ),
    );
    let swapped = [
        format!("--etcd-cacert={}", pki.path("ca.pem")),
        format!("--etcd-cert={}", pki.path("client.key")),
        format!("--etcd-key={}", pki.path("client.pem")),
    ];
    fails_with(
        dfctl_tls(&c, &swapped, &["lswitch", "list"]),
        2,
        &format!(
            "client certificate file {} holds no PEM CERTIFICATE",
            pki.path("client.key")
        ),
    );
    // The agent with the same options (from its TOML file here) registers and syncs…
    let conf = pki.dir.join("agent.toml");
    std::fs::write(
        &conf,
        format!(
            "etcd_cacert = {:?}\netcd_cert = {:?}\netcd_key = {:?}\netcd_user = \"agent\"\n\
             etcd_password_file = {:?}\n",
            pki.path("ca.pem"),
            pki.path("client.pem"),
            pki.path("client.key"),
            pki.path("password"),
        ),
    )
    .unwrap();
    let mut args = agent_args(&c.endpoints());
    args.push(format!("--config={}", conf.display()));
    let mut a = Agent::spawn("hv-tls", &args);
    a.wait_ok(Duration::from_secs(30));
    let rec = c.etcdctl(
        &c.endpoints(),
        &[
            "--user=root:root-pw",
            "get",
            "/dragonflow/chassis/hv-tls",
            "--print-value-only",
        ],
    );
    let rec = String::from_utf8_lossy(&rec.stdout);
    assert!(
        rec.contains("\"name\":\"hv-tls\""),
        "chassis record: {rec:?}"
    );
    assert!(
        !a.log().contains(PASSWORD),
        "the password leaked into the log"
    );
    // …and with a wrong password says why it cannot, and keeps trying.
    let mut args = agent_args(&c.endpoints());
    args.extend(tls_args(&pki, "ca.pem", true, "wrong"));
    let mut bad = Agent::spawn("hv-badpw", &args);
    wait_until(
        "the agent logs the auth failure",
        Duration::from_secs(15),
        || bad.log().contains("etcd authentication failed"),
    );
    assert!(bad.exited_within(Duration::ZERO).is_none(), "agent exited");
    // Its HTTP endpoint may come up after the first failed attempt: poll, never ready.
    wait_until(
        "the agent without etcd reports not ready (503)",
        Duration::from_secs(15),
        || bad.healthz().is_some_and(|(s, _)| s == 503),
    );
    drop(a);

    // A plain http:// endpoint with TLS options, an https:// one without.
    let (code, _, err) = {
        let out = Command::new(dfctl_bin())
            .args([
                "--etcd-endpoints",
                &c.endpoints().replace("https://", "http://"),
            ])
            .args(&good)
            .args(["lswitch", "list"])
            .output()
            .unwrap();
        (
            out.status.code(),
            (),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("use https:// endpoints"), "{err}");
}

fn agent_args(endpoints: &str) -> Vec<String> {
    vec![
        format!("--etcd-endpoints={endpoints}"),
        // Short, so that a record kept alive by nobody would vanish within the test.
        "--lease-ttl=4".into(),
    ]
}

/// How long after the leader died the agent must again be connected and have applied a
/// change made after the kill (an election is ~1 s; the agent's session retries every
/// 0.2–2 s).
const AGENT_CATCH_UP: Duration = Duration::from_secs(10);

#[test]
fn agent_keeps_its_chassis_record_when_the_leader_dies() {
    let mut c = Etcd::cluster(3, None);
    let mut a = Agent::spawn("hv-failover", &agent_args(&c.endpoints()));
    a.wait_ok(Duration::from_secs(30));
    let key = "/dragonflow/chassis/hv-failover";
    assert!(c.get(key).is_some(), "no chassis record");

    let leader = c.leader();
    c.kill_member(leader);
    let t = Instant::now();
    let (code, _, err) = dfctl(&c, &["lswitch", "create", "after", "--vni", "77"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, rev) = c.get("/dragonflow/lswitch/after").expect("written");
    wait_until(
        "the agent applies a change made after the kill",
        AGENT_CATCH_UP,
        || {
            a.healthz().is_some_and(|(s, b)| s == 200 && b == "ok\n")
                && a.metric("dragonflow_etcd_revision")
                    .is_some_and(|r| r >= rev as f64)
        },
    );
    let caught_up = t.elapsed();
    // The record never blinks, also past the lease TTL (the agent kept its lease alive
    // through the new leader).
    let until = t + Duration::from_secs(6);
    while Instant::now() < until {
        assert!(
            c.get(key).is_some(),
            "the chassis record vanished {:?} after the leader died:\n{}",
            t.elapsed(),
            a.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!("leader m{leader} killed: agent connected and caught up after {caught_up:?}");
}

#[test]
fn agent_keeps_the_datapath_through_lost_quorum_and_catches_up() {
    let mut c = Etcd::cluster(3, None);
    let mut a = Agent::spawn("hv-quorum", &agent_args(&c.endpoints()));
    a.wait_ok(Duration::from_secs(30));
    let leader = c.leader();
    let other = (leader + 1) % 3;
    c.kill_member(leader);
    c.kill_member(other);
    let noticed = time_until("/healthz says degraded", Duration::from_secs(15), || {
        a.healthz()
            .is_some_and(|(s, b)| s == 200 && b.starts_with("degraded: etcd unreachable"))
    });
    assert_eq!(a.metric("dragonflow_etcd_connected"), Some(0.0));
    assert!(a.exited_within(Duration::ZERO).is_none(), "agent exited");
    wait_until("the agent logs the outage", Duration::from_secs(5), || {
        a.log().contains("keeping the datapath as it is")
    });
    wait_until("the agent names the cause", Duration::from_secs(10), || {
        a.log().contains("no leader")
    });

    let t = Instant::now();
    c.start_member(leader);
    c.start_member(other);
    c.wait_healthy(Duration::from_secs(30));
    let (code, _, err) = dfctl(&c, &["lswitch", "create", "back", "--vni", "78"]);
    assert_eq!(code, Some(0), "{err}");
    let (_, rev) = c.get("/dragonflow/lswitch/back").expect("written");
    let back = time_until("the agent catches up", AGENT_CATCH_UP, || {
        a.healthz().is_some_and(|(s, b)| s == 200 && b == "ok\n")
            && a.metric("dragonflow_etcd_revision")
                .is_some_and(|r| r >= rev as f64)
    });
    assert!(
        c.get("/dragonflow/chassis/hv-quorum").is_some(),
        "record not re-registered"
    );
    eprintln!(
        "quorum lost: degraded after {noticed:?}; restored: caught up {back:?} after the cluster was healthy ({:?} after the restart)",
        t.elapsed()
    );
}

/// The `instance` field of the chassis record of `chassis`, if the record exists.
fn owner(c: &Etcd, chassis: &str) -> Option<String> {
    let (value, _) = c.get(&format!("/dragonflow/chassis/{chassis}"))?;
    let v: serde_json::Value = serde_json::from_str(&value).expect("chassis JSON");
    Some(v["instance"].as_str().unwrap_or_default().to_string())
}

/// A deleted record is back within this (the agent watches its own key).
const RECREATE_WITHIN: Duration = Duration::from_secs(3);

#[test]
fn agent_owns_its_chassis_record() {
    let c = Etcd::cluster(1, None);
    let key = "/dragonflow/chassis/hv-own";
    let mut a = Agent::spawn("hv-own", &agent_args(&c.endpoints()));
    a.wait_ok(Duration::from_secs(30));
    let mine = owner(&c, "hv-own").expect("registered");
    assert_eq!(mine.len(), 32, "instance id {mine:?}");

    // Deleted by hand: back, with the same owner.
    let out = c.etcdctl(&c.endpoints(), &["del", key]);
    assert!(out.status.success());
    let back = time_until("the record is re-created", RECREATE_WITHIN, || {
        owner(&c, "hv-own").is_some()
    });
    assert_eq!(owner(&c, "hv-own").as_deref(), Some(mine.as_str()));
    assert!(
        a.log()
            .contains("was deleted while this agent is alive; re-creating it")
    );

    // A second agent with the same name (another state dir, so another instance): refused
    // with a clear error and a non-zero exit, without touching the first one's record.
    let mut b = Agent::spawn("hv-own", &agent_args(&c.endpoints()));
    let st = b
        .exited_within(Duration::from_secs(30))
        .expect("the impostor exits");
    assert!(!st.success(), "impostor exit status {st}");
    assert!(
        b.log()
            .contains("chassis hv-own is registered by another live agent"),
        "{}",
        b.log()
    );
    assert!(
        !b.log().contains("adopted pinned maps"),
        "the impostor touched the datapath before refusing:\n{}",
        b.log()
    );
    // Past the lease TTL (4 s) of anything the impostor could have granted: the record is
    // still the first agent's.
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert_eq!(owner(&c, "hv-own").as_deref(), Some(mine.as_str()));
        std::thread::sleep(Duration::from_millis(250));
    }
    assert!(!a.log().contains("was overwritten by another writer"));

    // kill -9 and restart: the old lease is still alive, the same instance takes over, and
    // the record outlives the old lease.
    a.kill9();
    let t = Instant::now();
    a.start();
    a.wait_ok(Duration::from_secs(30));
    let took_over = t.elapsed();
    assert_eq!(owner(&c, "hv-own").as_deref(), Some(mine.as_str()));
    let until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < until {
        assert!(
            owner(&c, "hv-own").is_some(),
            "record gone with the old lease"
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    // Overwritten by someone else: said loudly.
    let forged = r#"{"name":"hv-own","tunnel_ip":"127.0.0.1","instance":"00000000000000000000000000000001"}"#;
    assert!(
        c.etcdctl(&c.endpoints(), &["put", key, forged])
            .status
            .success()
    );
    wait_until(
        "the agent reports the overwrite",
        Duration::from_secs(5),
        || a.log().contains("was overwritten by another writer"),
    );
    eprintln!("record re-created after {back:?}; restart took over after {took_over:?}");
}
