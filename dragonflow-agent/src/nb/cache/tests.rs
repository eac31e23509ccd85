use std::{collections::BTreeMap, sync::Mutex};

use super::*;

/// What the cache reports as invalid, by kind segment (the agent's `obs::state::Shared`
/// keeps the same counts for its metric; this is the cache's side alone).
#[derive(Default)]
struct Shared(Mutex<BTreeMap<&'static str, u64>>);

impl Shared {
    fn for_tests() -> Self {
        Self::default()
    }

    fn invalid_count(&self, kind: Kind) -> u64 {
        self.invalid_named(kind.segment())
    }

    fn invalid_named(&self, segment: &str) -> u64 {
        self.0
            .lock()
            .expect("lock")
            .get(segment)
            .copied()
            .unwrap_or(0)
    }
}

impl InvalidCounter for Shared {
    fn count_invalid(&self, kind: Kind) {
        self.count_invalid_named(kind.segment());
    }

    fn count_invalid_named(&self, segment: &'static str) {
        *self.0.lock().expect("lock").entry(segment).or_default() += 1;
    }
}

const OPTS: DecodeOptions = DecodeOptions {
    max_allowed_address_pairs: 2,
    allow_any_aap: false,
};

const P: &str = "/dragonflow/";

/// A range get of `pairs`, every key created at revision 1.
fn load(
    c: &mut NbCache,
    prefix: &str,
    pairs: &[(String, Vec<u8>)],
    opts: &DecodeOptions,
    shared: &Shared,
) -> NbDelta {
    let kvs: Vec<Kv> = pairs.iter().map(|(key, value)| kv(key, value, 1)).collect();
    c.load(prefix, &kvs, opts, shared)
}

fn kv(key: &str, value: &[u8], create_revision: i64) -> Kv {
    Kv {
        key: key.to_string(),
        value: value.to_vec(),
        create_revision,
    }
}

/// A watch put of a key created at revision 1.
fn put(key: String, value: Vec<u8>) -> Change {
    Change::Put(kv(&key, &value, 1))
}

fn port_json(id: &str, aaps: &str) -> Vec<u8> {
    format!(
        r#"{{"id":"{id}","lswitch":"n1","mac":"fa:16:3e:00:00:01","fixed_ips":["192.0.2.5"],"allowed_address_pairs":[{aaps}],"chassis":"hv1"}}"#
    )
    .into_bytes()
}

#[test]
fn decode_checks() {
    assert!(decode_record(Kind::LPort, "p1", &port_json("p1", ""), &OPTS).is_ok());
    assert!(
        decode_record(Kind::LPort, "p2", &port_json("p1", ""), &OPTS).is_err(),
        "id mismatch"
    );
    let three =
        r#"{"ip_address":"192.0.2.6"},{"ip_address":"192.0.2.7"},{"ip_address":"192.0.2.8"}"#;
    assert!(decode_record(Kind::LPort, "p1", &port_json("p1", three), &OPTS).is_err());
    let any = r#"{"ip_address":"0.0.0.0/0"}"#;
    assert!(decode_record(Kind::LPort, "p1", &port_json("p1", any), &OPTS).is_err());
    let allow = DecodeOptions {
        allow_any_aap: true,
        ..OPTS
    };
    assert!(decode_record(Kind::LPort, "p1", &port_json("p1", any), &allow).is_ok());
    assert!(decode_record(Kind::LPort, "p1", b"{", &OPTS).is_err());
    assert!(
        decode_record(
            Kind::LSwitch,
            "n1",
            br#"{"id":"n1","segmentation_id":0}"#,
            &OPTS
        )
        .is_err()
    );
    assert!(decode_record(Kind::Subnet, "s", b"garbage", &OPTS).is_err());
    // Chassis records are parsed, not validated: loopback is fine for one host.
    assert!(matches!(
        decode_record(
            Kind::Chassis,
            "hv1",
            br#"{"name":"hv1","tunnel_ip":"127.0.0.1"}"#,
            &OPTS
        ),
        Ok(Some(Record::Chassis(_)))
    ));
    assert!(
        decode_record(
            Kind::Chassis,
            "hv2",
            br#"{"name":"hv1","tunnel_ip":"198.18.0.1"}"#,
            &OPTS
        )
        .is_err()
    );
}

#[test]
fn secgroups_keep_their_last_good_version() {
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    let key = format!("{P}secgroup/sg1");
    let good = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
        "protocol":"tcp","port_range_min":22,"port_range_max":22}]}"#;
    assert!(!load(&mut c, P, &[(key.clone(), good.to_vec())], &OPTS, &shared).is_empty());
    assert_eq!(c.snapshot.secgroups["sg1"].rules.len(), 1);
    // Port 0 is refused: the group keeps its previous rules.
    let bad = br#"{"id":"sg1","rules":[{"id":"r1","direction":"ingress","ethertype":"IPv4",
        "protocol":"tcp","port_range_min":0,"port_range_max":22}]}"#;
    let d = c.apply(P, &[put(key.clone(), bad.to_vec())], &OPTS, &shared);
    assert!(d.secgroups.is_empty() && d.invalid_changed, "{d:?}");
    assert_eq!(
        c.snapshot.secgroups["sg1"].rules[0].port_range_min,
        Some(22)
    );
    assert_eq!(shared.invalid_count(Kind::SecGroup), 1);
    assert!(c.invalid[&key].contains("port_range_min 0 is out of range"));
    let d = c.apply(P, &[Change::Delete(key)], &OPTS, &shared);
    assert_eq!(d.secgroups, BTreeSet::from(["sg1".to_string()]));
    assert!(c.snapshot.secgroups.is_empty() && c.invalid.is_empty());
}

#[test]
fn chassis_and_routers_come_and_go() {
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    let hv2 = format!("{P}chassis/hv2");
    let r1 = format!("{P}lrouter/r1");
    let router = br#"{"id":"r1","ports":[{"id":"i1","lswitch":"n1","mac":"fa:16:3e:00:01:01","ip":"192.0.2.1/24"}]}"#;
    assert!(
        !load(
            &mut c,
            P,
            &[
                (
                    hv2.clone(),
                    br#"{"name":"hv2","tunnel_ip":"198.18.0.2"}"#.to_vec()
                ),
                (r1.clone(), router.to_vec()),
            ],
            &OPTS,
            &shared
        )
        .is_empty()
    );
    assert_eq!(
        c.snapshot.chassis["hv2"].tunnel_ip.to_string(),
        "198.18.0.2"
    );
    assert_eq!(c.snapshot.lrouters["r1"].ports.len(), 1);
    // A bad router update keeps the last good version.
    let d = c.apply(P, &[put(r1.clone(), b"{".to_vec())], &OPTS, &shared);
    assert!(d.lrouters.is_empty() && d.invalid_changed, "{d:?}");
    assert_eq!(shared.invalid_count(Kind::LRouter), 1);
    assert!(c.snapshot.lrouters.contains_key("r1"));
    // Lease expiry deletes the chassis record.
    let d = c.apply(
        P,
        &[Change::Delete(hv2), Change::Delete(r1)],
        &OPTS,
        &shared,
    );
    assert_eq!(d.chassis, BTreeSet::from(["hv2".to_string()]));
    assert_eq!(d.lrouters, BTreeSet::from(["r1".to_string()]));
    assert!(c.snapshot.chassis.is_empty() && c.snapshot.lrouters.is_empty());
}

#[test]
fn active_ports_come_and_go_and_bad_ones_are_skipped() {
    let shared = std::sync::Arc::new(Shared::for_tests());
    let mut c = NbCache::default();
    let key = format!("{P}activeport/n1/192.0.2.100");
    let good = br#"{"lswitch":"n1","ip":"192.0.2.100","port":"p1","mac":"fa:16:3e:00:00:01","chassis":"hv1","since_ms":5,"reason":"garp"}"#;
    let k = ("n1".to_string(), "192.0.2.100".parse().unwrap());
    assert!(!load(&mut c, P, &[(key.clone(), good.to_vec())], &OPTS, &shared).is_empty());
    assert_eq!(c.snapshot.active_ports[&k].port, "p1");
    // A record naming another IP than its key: skipped, counted, no last good kept.
    let wrong = String::from_utf8_lossy(good).replace("192.0.2.100", "192.0.2.7");
    let d = c.apply(P, &[put(key.clone(), wrong.into_bytes())], &OPTS, &shared);
    assert_eq!(d.active_ports, BTreeSet::from([k.clone()]));
    assert!(c.snapshot.active_ports.is_empty());
    assert!(c.invalid.contains_key(&key));
    let bad_key = format!("{P}activeport/n1/not-an-ip");
    c.apply(P, &[put(bad_key, good.to_vec())], &OPTS, &shared);
    assert_eq!(shared.invalid_named("activeport"), 2);
    // Fixed, then gone with its lease; the history key is not a claim.
    c.apply(P, &[put(key.clone(), good.to_vec())], &OPTS, &shared);
    assert!(c.snapshot.active_ports.contains_key(&k) && !c.invalid.contains_key(&key));
    c.apply(
        P,
        &[put(
            format!("{P}activeport-log/n1/192.0.2.100"),
            b"[]".to_vec(),
        )],
        &OPTS,
        &shared,
    );
    assert_eq!(c.snapshot.active_ports.len(), 1);
    assert!(
        !c.apply(P, &[Change::Delete(key)], &OPTS, &shared)
            .is_empty()
    );
    assert!(c.snapshot.active_ports.is_empty());
}

#[test]
fn deltas_name_what_changed_in_force() {
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    let p1 = (format!("{P}lport/p1"), port_json("p1", ""));
    let n1 = (
        format!("{P}lswitch/n1"),
        br#"{"id":"n1","segmentation_id":100}"#.to_vec(),
    );
    let d = load(&mut c, P, &[p1.clone(), n1.clone()], &OPTS, &shared);
    assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
    assert_eq!(d.lswitches, BTreeSet::from(["n1".to_string()]));
    assert!(!d.invalid_changed);
    // The same range get again: nothing changed.
    assert!(load(&mut c, P, &[p1.clone(), n1.clone()], &OPTS, &shared).is_empty());
    // A put of the same value: nothing.
    let same = put(p1.0.clone(), p1.1.clone());
    assert!(c.apply(P, &[same], &OPTS, &shared).is_empty());
    // A resync without the port: only the port is named, and it is gone.
    let d = load(&mut c, P, std::slice::from_ref(&n1), &OPTS, &shared);
    assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
    assert!(d.lswitches.is_empty() && c.snapshot.lports.is_empty());
    // A changed network: only it.
    let n1b = br#"{"id":"n1","segmentation_id":101}"#.to_vec();
    let d = c.apply(P, &[put(n1.0.clone(), n1b)], &OPTS, &shared);
    assert_eq!(d.lswitches, BTreeSet::from(["n1".to_string()]));
    assert!(d.lports.is_empty() && !d.invalid_changed);
}

/// An lport record on hv1 with one fixed IP (and a tap of its own unless `tap`).
fn lport(id: &str, ip: &str, tap: Option<&str>) -> Vec<u8> {
    let tap = tap.map_or(format!("tap{id}"), str::to_string);
    format!(
        r#"{{"id":"{id}","lswitch":"n1","mac":"fa:16:3e:00:00:01","fixed_ips":["{ip}"],"chassis":"hv1","ifname":"{tap}","security_groups":["g"]}}"#
    )
    .into_bytes()
}

fn ids(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

fn ip_of(c: &NbCache, id: &str) -> Option<String> {
    c.snapshot
        .lports
        .get(id)
        .map(|p| p.fixed_ips[0].to_string())
}

#[test]
fn the_older_of_two_conflicting_ports_wins_whatever_the_order() {
    let (ka, kb) = (format!("{P}lport/a"), format!("{P}lport/b"));
    // b sorts after a by key but is older: age is create_revision, not the key.
    let a = kv(&ka, &lport("a", "192.0.2.5", None), 9);
    let b = kv(&kb, &lport("b", "192.0.2.5", None), 5);
    // In one range get, in either order.
    for kvs in [vec![a.clone(), b.clone()], vec![b.clone(), a.clone()]] {
        let shared = Shared::for_tests();
        let mut c = NbCache::default();
        let d = c.load(P, &kvs, &OPTS, &shared);
        assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
        assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.5"));
        assert!(!c.snapshot.lports.contains_key("a"));
        assert_eq!(
            c.invalid[&ka],
            "lport a: IP 192.0.2.5 in lswitch n1 belongs to the older port b \
             (refused until b releases it)"
        );
        assert_eq!(c.held_taps[&ka], ("hv1".to_string(), "tapa".to_string()));
        assert_eq!(shared.invalid_count(Kind::LPort), 1);
        // A resync recounts nothing and changes nothing.
        assert!(c.load(P, &kvs, &OPTS, &shared).is_empty());
        assert_eq!(shared.invalid_count(Kind::LPort), 1);
    }
    // Through the watch, the younger first: it is in force until the older arrives.
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    c.apply(P, &[Change::Put(a.clone())], &OPTS, &shared);
    assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
    let d = c.apply(P, &[Change::Put(b.clone())], &OPTS, &shared);
    assert_eq!(
        d.lports,
        ids(&["a", "b"]),
        "both ports of the conflict: {d:?}"
    );
    assert!(d.invalid_changed);
    assert!(!c.snapshot.lports.contains_key("a") && c.snapshot.lports.contains_key("b"));
    assert!(c.invalid[&ka].contains("older port b"));
    // The older one goes: the younger is in force again, its tap no longer held.
    let d = c.apply(P, &[Change::Delete(kb.clone())], &OPTS, &shared);
    assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
    assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
    assert!(c.invalid.is_empty() && c.held_taps.is_empty());
    // An AAP on another port's fixed IP collides too; a tap taken twice as well.
    let aap = String::from_utf8(lport("e", "192.0.2.9", None))
        .unwrap()
        .replace(
            r#""chassis""#,
            r#""allowed_address_pairs":[{"ip_address":"192.0.2.5"}],"chassis""#,
        );
    let e = kv(&format!("{P}lport/e"), aap.as_bytes(), 20);
    let f = kv(
        &format!("{P}lport/f"),
        &lport("f", "192.0.2.10", Some("tapa")),
        21,
    );
    c.apply(P, &[Change::Put(e), Change::Put(f)], &OPTS, &shared);
    assert!(c.snapshot.lports.contains_key("a"));
    assert!(c.invalid[&format!("{P}lport/e")].contains("IP 192.0.2.5 in lswitch n1"));
    assert!(
        c.invalid[&format!("{P}lport/f")]
            .contains("tap tapa on chassis hv1 belongs to the older port a")
    );
    assert_eq!(shared.invalid_count(Kind::LPort), 3);
}

#[test]
fn an_update_that_would_conflict_keeps_the_last_good_version() {
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    let (ka, kb) = (format!("{P}lport/a"), format!("{P}lport/b"));
    c.load(
        P,
        &[
            kv(&ka, &lport("a", "192.0.2.5", None), 5),
            kv(&kb, &lport("b", "192.0.2.6", None), 9),
        ],
        &OPTS,
        &shared,
    );
    // b moves onto a's IP: refused, its last good version stays.
    let d = c.apply(
        P,
        &[Change::Put(kv(&kb, &lport("b", "192.0.2.5", None), 9))],
        &OPTS,
        &shared,
    );
    assert_eq!(d.lports, ids(&["b"]), "b starts being refused: {d:?}");
    assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
    assert!(c.invalid[&kb].contains("IP 192.0.2.5 in lswitch n1 belongs to the older port a"));
    assert!(c.held_taps.is_empty());
    // Another bad update of b: still the same last good.
    c.apply(P, &[Change::Put(kv(&kb, b"{", 9))], &OPTS, &shared);
    assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
    c.apply(
        P,
        &[Change::Put(kv(&kb, &lport("b", "192.0.2.5", None), 9))],
        &OPTS,
        &shared,
    );
    // a leaves the IP: b's update takes effect.
    let d = c.apply(
        P,
        &[Change::Put(kv(&ka, &lport("a", "192.0.2.7", None), 5))],
        &OPTS,
        &shared,
    );
    assert_eq!(d.lports, ids(&["a", "b"]), "{d:?}");
    assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.5"));
    assert!(c.invalid.is_empty());
    // The older port moves onto the younger one's IP: the younger, unchanged, is the
    // colliding version itself and leaves force; its tap is held.
    c.apply(
        P,
        &[Change::Put(kv(&ka, &lport("a", "192.0.2.5", None), 5))],
        &OPTS,
        &shared,
    );
    assert_eq!(ip_of(&c, "a").as_deref(), Some("192.0.2.5"));
    assert!(!c.snapshot.lports.contains_key("b"));
    assert_eq!(c.held_taps[&kb].1, "tapb");
}

fn state_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("df-nbcache-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

#[test]
fn last_good_versions_survive_a_restart() {
    let dir = state_dir("restart");
    let shared = Shared::for_tests();
    let kb = format!("{P}lport/b");
    let good = kv(&kb, &lport("b", "192.0.2.6", None), 9);
    let bad = kv(
        &kb,
        br#"{"id":"b","lswitch":"n1","mac":"01:00:5e:00:00:01","chassis":"hv1"}"#,
        9,
    );
    let file = dir.join("hv1.lastgood.json");
    {
        let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
        c.load(P, std::slice::from_ref(&good), &OPTS, &shared);
        assert!(!file.exists(), "nothing invalid, nothing written");
        c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
        assert!(file.exists());
    }
    // A new process sees only the bad value: the kept version is in force.
    let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
    let d = c.load(P, std::slice::from_ref(&bad), &OPTS, &shared);
    assert_eq!(d.lports, ids(&["b"]));
    assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.6"));
    assert_eq!(c.snapshot.lports["b"].security_groups, ["g"]);
    assert!(c.invalid.contains_key(&kb) && c.held_taps.is_empty());
    // Fixed: the kept version is dropped, from the file too.
    let fixed = kv(&kb, &lport("b", "192.0.2.8", None), 9);
    c.apply(P, &[Change::Put(fixed)], &OPTS, &shared);
    assert_eq!(ip_of(&c, "b").as_deref(), Some("192.0.2.8"));
    let mut again = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
    again.load(P, std::slice::from_ref(&bad), &OPTS, &shared);
    assert!(again.snapshot.lports.is_empty(), "the file no longer has b");
    assert!(again.held_taps.contains_key(&kb));

    // Kept, then the key deleted and re-created (another create_revision) while the
    // agent was down: the kept version belongs to the old record and is not used.
    c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
    let mut other = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
    let recreated = kv(&kb, &bad.value, 30);
    other.load(P, &[recreated], &OPTS, &shared);
    assert!(other.snapshot.lports.is_empty());
    // And a key deleted while the agent was down is forgotten.
    c.apply(P, &[Change::Put(bad.clone())], &OPTS, &shared);
    NbCache::with_last_good(LastGood::open(&dir, "hv1")).load(P, &[], &OPTS, &shared);
    assert!(LastGood::open(&dir, "hv1").is_empty());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_corrupt_state_file_is_ignored() {
    let dir = state_dir("corrupt");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hv1.lastgood.json"), b"\x00garbage").unwrap();
    let shared = Shared::for_tests();
    let kb = format!("{P}lport/b");
    let bad = kv(
        &kb,
        br#"{"id":"b","lswitch":"n1","mac":"01:00:5e:00:00:01","chassis":"hv1"}"#,
        9,
    );
    let mut c = NbCache::with_last_good(LastGood::open(&dir, "hv1"));
    c.load(P, &[bad], &OPTS, &shared);
    // No last good: the tap is held as the pinned maps have it.
    assert!(c.snapshot.lports.is_empty());
    assert_eq!(c.held_taps[&kb], ("hv1".to_string(), "tapb".to_string()));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn invalid_update_keeps_last_good() {
    let shared = Shared::for_tests();
    let mut c = NbCache::default();
    let key = format!("{P}lport/p1");
    let d = load(
        &mut c,
        P,
        &[(
            key.clone(),
            port_json("p1", r#"{"ip_address":"192.0.2.9"}"#),
        )],
        &OPTS,
        &shared,
    );
    assert_eq!(d.lports, BTreeSet::from(["p1".to_string()]));
    assert_eq!(c.snapshot.lports["p1"].allowed_address_pairs.len(), 1);
    // A bad update: the previous version stays.
    let d = c.apply(P, &[put(key.clone(), b"{oops".to_vec())], &OPTS, &shared);
    assert!(d.lports.is_empty() && d.invalid_changed, "{d:?}");
    assert_eq!(c.snapshot.lports["p1"].allowed_address_pairs.len(), 1);
    assert!(c.invalid.contains_key(&key));
    assert_eq!(shared.invalid_count(Kind::LPort), 1);
    // A resync still holding the bad value keeps the good one and does not recount.
    assert!(
        load(
            &mut c,
            P,
            &[(key.clone(), b"{oops".to_vec())],
            &OPTS,
            &shared
        )
        .is_empty()
    );
    assert!(c.snapshot.lports.contains_key("p1"));
    assert_eq!(shared.invalid_count(Kind::LPort), 1);
    // Delete removes it.
    let d = c.apply(P, &[Change::Delete(key.clone())], &OPTS, &shared);
    assert!(d.lports.contains("p1") && d.invalid_changed, "{d:?}");
    assert!(c.snapshot.lports.is_empty() && c.invalid.is_empty());
    // A bad record seen first (e.g. after a restart): its tap is held as it is.
    let bad = br#"{"id":"p1","lswitch":"n1","mac":"01:00:00:00:00:01","chassis":"hv1"}"#;
    load(&mut c, P, &[(key.clone(), bad.to_vec())], &OPTS, &shared);
    assert!(c.snapshot.lports.is_empty());
    assert_eq!(c.held_taps[&key], ("hv1".to_string(), "tapp1".to_string()));
    let d = c.apply(P, &[Change::Delete(key.clone())], &OPTS, &shared);
    assert!(c.held_taps.is_empty() && d.lports.contains("p1"));
    // A new invalid record has nothing to fall back on.
    c.apply(P, &[put(key, b"{".to_vec())], &OPTS, &shared);
    assert!(c.snapshot.lports.is_empty());
}
