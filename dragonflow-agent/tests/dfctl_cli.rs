//! dfctl as an operator meets it (issue 14 item 7): `-o table|json|yaml` on every list and
//! show (JSON and YAML parsed back and compared), shell completion and man pages from the
//! clap definitions, the OpenStack client's `--allowed-address` syntax, generated MACs and
//! port ids, and one-line errors for bad input. Real binary, real etcd per test.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{process::Command, time::Duration};

mod common;

use common::{DFCTL, Etcd, stub_agent};
use dragonflow_agent::{
    detect::{
        claims::{Event, HistoryRecord},
        judge::Why,
    },
    nb::{ActivePort, MacAddr, active},
};
use serde_json::{Value, json};

fn parse_json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}): {s}"))
}

fn parse_yaml(s: &str) -> Value {
    serde_saphyr::from_str(s).unwrap_or_else(|e| panic!("not YAML ({e}): {s}"))
}

/// Runs `args` in the three formats: JSON and YAML must carry the same data (returned);
/// the table has `header` first and a line containing each of `cells`.
#[track_caller]
fn three_ways(etcd: &Etcd, args: &str, header: &str, cells: &[&str]) -> Value {
    let j = parse_json(&etcd.ok(&format!("{args} -o json")));
    let y = parse_yaml(&etcd.ok(&format!("{args} -o yaml")));
    assert_eq!(j, y, "dfctl {args}: JSON and YAML differ");
    let t = etcd.ok(&format!("{args} -o table"));
    assert!(t.starts_with(header), "dfctl {args} -o table:\n{t}");
    assert!(
        !t.contains('|') && !t.contains('+'),
        "borderless table: dfctl {args}:\n{t}"
    );
    for c in cells {
        assert!(
            t.lines().skip(1).any(|l| l.contains(c)),
            "dfctl {args} -o table: no {c:?} in\n{t}"
        );
    }
    j
}

#[test]
fn every_list_and_show_in_every_format() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --name demo --vni 100 --aap-mode detection");
    etcd.ok("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24 --gateway 192.0.2.1");
    etcd.ok(
        "lport create web1 --lswitch net1 --mac fa:16:3e:00:00:01 --fixed-ip 192.0.2.11 \
         --aap 192.0.2.100 --chassis hv1",
    );
    etcd.ok(
        "lport create web2 --lswitch net1 --mac fa:16:3e:00:00:02 --fixed-ip 192.0.2.12 \
         --aap 192.0.2.100 --chassis hv2",
    );
    etcd.ok("lrouter create r1 --name edge");
    etcd.ok("lrouter add-interface r1 --lswitch net1 --mac fa:16:3e:00:01:01 --ip 192.0.2.1/24");
    etcd.ok("secgroup rule-add default --direction ingress --protocol tcp --port-min 22 --id ssh");
    // What agents write: a chassis, a claim and its history.
    etcd.etcdctl_put(
        "/dragonflow/chassis/hv1",
        &json!({"name": "hv1", "tunnel_ip": "198.18.0.1", "aap_mode": "detection",
                "version": "0.1.0"})
        .to_string(),
    );
    let vip = "192.0.2.100".parse().unwrap();
    let mac = MacAddr([0xfa, 0x16, 0x3e, 0, 0, 1]);
    let claim = ActivePort {
        lswitch: "net1".into(),
        ip: vip,
        port: "web1".into(),
        mac,
        chassis: "hv1".into(),
        since_ms: 1_795_000_000_000,
        reason: "garp".into(),
    };
    etcd.etcdctl_put(
        &active::active_key("/dragonflow/", "net1", vip),
        &serde_json::to_string(&claim).unwrap(),
    );
    let history = vec![HistoryRecord {
        at_ms: 1_795_000_000_000,
        event: Event::Claimed,
        port: "web1".into(),
        mac,
        chassis: "hv1".into(),
        why: Why::Garp,
        by: "hv1".into(),
    }];
    etcd.etcdctl_put(
        &active::history_key("/dragonflow/", "net1", vip),
        &serde_json::to_string(&history).unwrap(),
    );

    // Lists.
    let l = three_ways(&etcd, "lswitch list", "ID", &["net1  demo  100"]);
    assert_eq!(l[0]["aap_mode"], "detection");
    let l = three_ways(&etcd, "subnet list", "ID", &["192.0.2.0/24"]);
    assert_eq!(l[0]["gateway_ip"], "192.0.2.1");
    let l = three_ways(&etcd, "lport list", "ID", &["web1", "web2"]);
    assert_eq!(l.as_array().unwrap().len(), 2);
    assert_eq!(
        l[1]["allowed_address_pairs"][0]["ip_address"],
        "192.0.2.100"
    );
    let l = three_ways(&etcd, "lrouter list", "ID", &["r1-net1 net1 192.0.2.1/24"]);
    assert_eq!(l[0]["ports"][0]["mac"], "fa:16:3e:00:01:01");
    let l = three_ways(&etcd, "secgroup list", "ID", &["web1;web2"]);
    assert_eq!(l[0]["id"], "default");
    let l = three_ways(&etcd, "chassis list", "NAME", &["198.18.0.1"]);
    assert_eq!(l[0]["tunnel_ip"], "198.18.0.1");
    let l = three_ways(&etcd, "aap list", "LSWITCH", &["web1@hv1;web2@hv2"]);
    assert_eq!(
        (&l[0]["holders"], &l[0]["active"]["port"]),
        (&json!(["web1@hv1", "web2@hv2"]), &json!("web1"))
    );
    let l = three_ways(
        &etcd,
        "aap history net1 192.0.2.100",
        "WHEN",
        &["2026-11-18T11:06:40.000Z"],
    );
    assert_eq!(
        (&l[0]["event"], &l[0]["why"]),
        (&json!("claimed"), &json!("garp"))
    );

    // Shows: the record (JSON by default, as before), and the list's row as a table.
    for (args, header, cell, key, want) in [
        (
            "lswitch show net1",
            "ID",
            "demo",
            "segmentation_id",
            json!(100),
        ),
        (
            "subnet show sub1",
            "ID",
            "192.0.2.0/24",
            "ip_version",
            json!(4),
        ),
        (
            "lport show web1",
            "ID",
            "192.0.2.11",
            "chassis",
            json!("hv1"),
        ),
        ("lrouter show r1", "ID", "edge", "name", json!("edge")),
        (
            "chassis show hv1",
            "NAME",
            "detection",
            "version",
            json!("0.1.0"),
        ),
        (
            "secgroup show default",
            "secgroup default",
            "ssh",
            "name",
            json!("default"),
        ),
    ] {
        let v = three_ways(&etcd, args, header, &[cell]);
        assert_eq!(v[key], want, "dfctl {args}");
        if args.starts_with("secgroup") {
            // secgroup show is a table of rules unless asked otherwise (as before).
            assert!(etcd.ok(args).starts_with("secgroup default"));
        } else {
            assert_eq!(
                parse_json(&etcd.ok(args)),
                v,
                "dfctl {args} defaults to JSON"
            );
        }
    }

    // garp list from the agent's endpoint (a stub serving its JSON).
    let agent = stub_agent(
        false,
        r#"[{"ip":"192.0.2.100","mac":"fa:16:3e:00:00:01","ifname":"tapweb1","lport":"web1",
            "net_id":100,"op":"request","last_seen_unix_ms":1795000000000,"count":3}]"#,
    );
    // A proxy set for the outside world does not capture the agent's address.
    let garp = |fmt: &str| {
        let out = Command::new(DFCTL)
            .args(["garp", "list", "--agent", &agent, "-o", fmt])
            .env("http_proxy", "http://127.0.0.1:9")
            .env("HTTP_PROXY", "http://127.0.0.1:9")
            .env("ALL_PROXY", "http://127.0.0.1:9")
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let j = parse_json(&garp("json"));
    assert_eq!(j, parse_yaml(&garp("yaml")));
    assert_eq!(j[0]["count"], 3);
    let t = garp("table");
    assert!(t.starts_with("IP") && t.contains("tapweb1"), "{t}");

    // A bad format is clap's usage error.
    let out = etcd.dfctl(&["lswitch", "list", "-o", "xml"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("table, json, yaml"));
}

#[test]
fn completion_scripts_come_from_the_clap_definitions() {
    let run = |shell: &str| {
        let out = Command::new(DFCTL)
            .args(["completion", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let bash = run("bash");
    assert!(
        bash.contains("_dfctl()") && bash.contains("complete -F _dfctl"),
        "{bash}"
    );
    // Subcommands and their flags, including the OpenStack spelling.
    assert!(bash.contains("add-interface") && bash.contains("--allowed-address"));
    let zsh = run("zsh");
    assert!(zsh.starts_with("#compdef dfctl"), "{zsh}");
    // zsh and fish carry the help texts as descriptions.
    assert!(zsh.contains("Logical ports (Neutron ports)"), "{zsh}");
    let fish = run("fish");
    assert!(fish.contains("complete -c dfctl"), "{fish}");
    assert!(fish.contains("rule-add"), "{fish}");
    let out = Command::new(DFCTL)
        .args(["completion", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn man_pages_are_generated_for_every_command() {
    let dir = std::env::temp_dir().join(format!("dfctl-man-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    struct Rm(std::path::PathBuf);
    impl Drop for Rm {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _rm = Rm(dir.clone());
    let out = Command::new(DFCTL)
        .args(["man", "--out"])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let page = |name: &str| {
        std::fs::read_to_string(dir.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    let top = page("dfctl.1");
    assert!(top.contains("\n.TH dfctl 1 "), "{top}");
    assert!(top.contains("Manage the Dragonflow northbound database"));
    let create = page("dfctl-lport-create.1");
    assert!(create.contains("\n.TH dfctl-lport-create 1 "), "{create}");
    assert!(create.contains("allowed\\-address"), "{create}");
    assert!(page("dfctl-secgroup-rule-add.1").contains("remote\\-group"));
    // One page per visible command; the hidden generator has none.
    let pages = std::fs::read_dir(&dir).unwrap().count();
    assert!(pages >= 40, "{pages} pages");
    assert!(!dir.join("dfctl-man.1").exists());
    // An unwritable place is a clear error.
    let out = Command::new(DFCTL)
        .args(["man", "--out", "/proc/dfctl-man"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: cannot write man pages"));
}

#[test]
fn openstack_allowed_address_syntax() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("lport create p1 --lswitch net1 --mac fa:16:3e:00:00:01 \
         --allowed-address ip-address=192.0.2.100,mac-address=00:00:5e:00:01:01 \
         --allowed-address ip-address=198.51.100.0/24 --aap 192.0.2.101");
    assert_eq!(
        parse_json(&etcd.ok("lport show p1"))["allowed_address_pairs"],
        json!([
            {"ip_address": "192.0.2.100", "mac_address": "00:00:5e:00:01:01"},
            {"ip_address": "198.51.100.0/24"},
            {"ip_address": "192.0.2.101"}
        ])
    );
    etcd.ok(
        "lport update p1 --remove-allowed-address ip-address=192.0.2.100 \
         --allowed-address ip-address=192.0.2.102,mac-address=fa:16:3e:00:00:01",
    );
    assert_eq!(
        parse_json(&etcd.ok("lport show p1"))["allowed_address_pairs"],
        json!([
            {"ip_address": "198.51.100.0/24"},
            {"ip_address": "192.0.2.101"},
            {"ip_address": "192.0.2.102", "mac_address": "fa:16:3e:00:00:01"}
        ])
    );
    etcd.ok("lport update p1 --no-allowed-address --allowed-address ip-address=192.0.2.103");
    assert_eq!(
        parse_json(&etcd.ok("lport show p1"))["allowed_address_pairs"],
        json!([{"ip_address": "192.0.2.103"}])
    );
    let create = "lport create p2 --lswitch net1 --mac fa:16:3e:00:00:02";
    for (arg, msg) in [
        (
            "mac-address=fa:16:3e:00:00:09",
            "lport p2: allowed address \"mac-address=fa:16:3e:00:00:09\": no ip-address \
             (expected ip-address=IP[/LEN][,mac-address=MAC])",
        ),
        ("ip-address=192.0.2.5,colour=red", "unknown key \"colour\""),
        (
            "ip-address=192.0.2.5,ip-address=192.0.2.6",
            "ip-address given twice",
        ),
        (
            "ip-address=192.0.2.300",
            "lport p2: allowed address pair 192.0.2.300 is not an IP address or CIDR",
        ),
        (
            "ip-address=192.0.2.5,mac-address=zz",
            "\"zz\" is not a MAC address",
        ),
    ] {
        etcd.fails(&format!("{create} --allowed-address {arg}"), 2, msg);
    }
    etcd.fails(
        "lport update p1 --remove-allowed-address ip-address=192.0.2.200",
        2,
        "allowed address pair 192.0.2.200 is not on the port",
    );
    // --no-allowed-address with removals is contradictory: clap refuses it.
    let out = etcd.dfctl(&[
        "lport",
        "update",
        "p1",
        "--no-allowed-address",
        "--remove-aap",
        "192.0.2.103",
    ]);
    assert_eq!(out.status.code(), Some(2));
    // Nothing refused was written.
    assert_eq!(etcd.ok("lport list").lines().count(), 2);
}

#[test]
fn ports_get_a_neutron_mac_and_a_uuid_when_not_given() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.ok("subnet create sub1 --lswitch net1 --cidr 192.0.2.0/24");
    let mut macs = Vec::new();
    for i in 0..8 {
        let out = etcd.ok(&format!(
            "lport create --lswitch net1 --fixed-ip 192.0.2.{} --no-port-security",
            10 + i
        ));
        let id = out
            .lines()
            .find_map(|l| l.strip_prefix("created lport "))
            .unwrap_or_else(|| panic!("{out}"));
        let uuid = uuid::Uuid::parse_str(id).unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(uuid.get_version_num(), 4, "{id}");
        let p = parse_json(&etcd.ok(&format!("lport show {id}")));
        assert_eq!(p["id"], id);
        let mac = p["mac"].as_str().unwrap().to_string();
        assert!(mac.starts_with("fa:16:3e:"), "{mac}");
        macs.push(mac);
    }
    let mut unique = macs.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), macs.len(), "{macs:?}");
    // A given MAC and id are kept; a bad MAC is still refused, not replaced.
    etcd.ok("lport create p1 --lswitch net1 --mac fa:16:3e:aa:bb:cc");
    assert_eq!(
        parse_json(&etcd.ok("lport show p1"))["mac"],
        "fa:16:3e:aa:bb:cc"
    );
    etcd.fails(
        "lport create p2 --lswitch net1 --mac 01:00:5e:00:00:01",
        2,
        "must be unicast",
    );
    // A generated id is checked like a given one: the lswitch must exist.
    etcd.fails(
        "lport create --lswitch nope",
        2,
        "lswitch nope does not exist",
    );
}

#[test]
fn bad_input_is_one_clear_line() {
    let etcd = Etcd::start();
    etcd.ok("lswitch create net1 --vni 100");
    etcd.fails(
        "aap history net1 192.0.2.300",
        2,
        "\"192.0.2.300\" is not an IP address",
    );
    etcd.fails(
        "aap history net1 192.0.2.5",
        2,
        "no active-port history for 192.0.2.5 on lswitch net1",
    );
    etcd.fails("lswitch show nope -o yaml", 2, "lswitch nope not found");
    for (agent, code, msg) in [
        ("http://", 2, "has no host"),
        ("https://127.0.0.1:1", 2, "only http://host:port URLs"),
    ] {
        let out = Command::new(DFCTL)
            .args(["garp", "list", "--agent", agent])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{agent}: {err}");
        assert!(err.starts_with("error: ") && err.contains(msg), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
    // An agent answering something else than JSON.
    let agent = stub_agent(false, "<html>");
    let out = Command::new(DFCTL)
        .args(["garp", "list", "--agent", &agent])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("/garp is not JSON"), "{err}");
    // A slow agent: the timeout ends it.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", silent.local_addr().unwrap());
    let t = std::time::Instant::now();
    let out = Command::new(DFCTL)
        .args(["--timeout", "1", "garp", "list", "--agent", &url])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(t.elapsed() < Duration::from_secs(5), "{:?}", t.elapsed());
    drop(silent);
}
