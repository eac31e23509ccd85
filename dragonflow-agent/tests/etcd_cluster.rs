//! dfctl and the agent against a real three-member etcd cluster (Debian's etcd, free
//! loopback ports, temp data dirs): the leader dies, quorum is lost and comes back.

mod common;

use std::time::{Duration, Instant};

use common::{EtcdCluster, dfctl_at};

/// dfctl with every endpoint of the cluster; (exit code, stdout, stderr).
fn dfctl(c: &EtcdCluster, args: &[&str]) -> (Option<i32>, String, String) {
    let out = dfctl_at(&c.endpoints(), args);
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[track_caller]
fn dfctl_ok(c: &EtcdCluster, args: &[&str]) -> String {
    let (code, out, err) = dfctl(c, args);
    assert_eq!(code, Some(0), "dfctl {args:?}: {err}\n{}", c.logs());
    out
}

/// A dfctl call must not take longer than this after the leader died (a retry on another
/// member takes ~100 ms; an election about a second with etcd's default timeouts).
const EACH_WITHIN: Duration = Duration::from_secs(4);

#[test]
fn dfctl_reads_and_edits_survive_the_leader_dying() {
    let mut c = EtcdCluster::start(3, None);
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
    let mut c = EtcdCluster::start(3, None);
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
