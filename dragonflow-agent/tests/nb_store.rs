//! `NbStore` against a real etcd: put-if-absent, dependency guards, mod_revision-guarded
//! updates under concurrent writers, malformed records, deletes.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

mod common;

use common::{Etcd, ls};
use dragonflow_agent::{
    etcd::{NbStore, StoreError},
    nb::{
        Kind, LPort, LSwitch, Subnet, ValidationError,
        parse::{parse_aap, parse_mac},
    },
};

fn port(id: &str) -> LPort {
    LPort {
        id: id.into(),
        lswitch: "ls1".into(),
        mac: parse_mac("fa:16:3e:00:00:01").unwrap(),
        fixed_ips: vec!["192.0.2.11".parse().unwrap()],
        allowed_address_pairs: vec![],
        port_security_enabled: true,
        security_groups: vec![],
        chassis: None,
        ifname: None,
        device_owner: String::new(),
        admin_state_up: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_crud_and_guards() {
    let etcd = Etcd::start();
    let store = NbStore::connect(std::slice::from_ref(&etcd.endpoint), "/t/")
        .await
        .unwrap();

    // create = put-if-absent; create_requiring checks the dependency in the same txn.
    assert!(matches!(
        store
            .create_requiring(&port("p1"), &[(Kind::LSwitch, "ls1")])
            .await,
        Err(StoreError::MissingDependency {
            dep_kind: "lswitch",
            ..
        })
    ));
    store.create(&ls("ls1")).await.unwrap();
    assert!(matches!(
        store.create(&ls("ls1")).await,
        Err(StoreError::AlreadyExists { .. })
    ));
    store
        .create_requiring(&port("p1"), &[(Kind::LSwitch, "ls1")])
        .await
        .unwrap();

    // Writes validate.
    let mut bad = ls("ls2");
    bad.segmentation_id = 0;
    let e = store.put(&bad).await.unwrap_err();
    assert!(matches!(e, StoreError::Invalid { .. }));
    assert!(
        e.to_string().starts_with("lswitch ls2: segmentation_id 0"),
        "{e}"
    );
    assert!(store.get::<LSwitch>("ls2").await.unwrap().is_none());

    // get / list with revisions.
    let got = store.get_existing::<LPort>("p1").await.unwrap();
    assert_eq!(got.value, port("p1"));
    assert!(got.mod_revision > 0 && got.create_revision == got.mod_revision);
    let l = store.list::<LPort>().await.unwrap();
    assert_eq!(l.items.len(), 1);
    assert!(l.revision >= got.mod_revision);
    assert!(matches!(
        store.get_existing::<Subnet>("nope").await,
        Err(StoreError::NotFound { kind: "subnet", .. })
    ));

    // Concurrent read-modify-writes all land (each retried on a mod_revision conflict).
    let mut tasks = Vec::new();
    for i in 0..5 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            s.update::<LPort, _>("p1", |p| {
                p.allowed_address_pairs
                    .push(parse_aap(&format!("192.0.2.{}", 100 + i)).unwrap());
                Ok(())
            })
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let p = store.get_existing::<LPort>("p1").await.unwrap();
    assert_eq!(p.value.allowed_address_pairs.len(), 5);
    assert!(p.mod_revision > got.mod_revision);

    // An update that breaks a rule is refused and writes nothing.
    let e = store
        .update::<LPort, _>("p1", |p| {
            p.port_security_enabled = false;
            Ok(())
        })
        .await
        .unwrap_err();
    match e {
        StoreError::Invalid { source, .. } => {
            assert_eq!(*source, ValidationError::AapRequiresPortSecurity)
        }
        other => panic!("{other}"),
    }
    // Renaming is refused; the closure's own error is returned as is.
    assert!(
        store
            .update::<LPort, _>("p1", |p| {
                p.id = "p2".into();
                Ok(())
            })
            .await
            .is_err()
    );
    let e = store
        .update::<LPort, _>("p1", |_| {
            Err(StoreError::Refused {
                kind: "lport",
                id: "p1".into(),
                reason: "no".into(),
            })
        })
        .await
        .unwrap_err();
    assert_eq!(e.to_string(), "lport p1: no");
    assert_eq!(
        store
            .get_existing::<LPort>("p1")
            .await
            .unwrap()
            .mod_revision,
        p.mod_revision
    );

    // Malformed records are listed apart.
    etcd.etcdctl_put("/t/lport/junk", "{");
    let l = store.list::<LPort>().await.unwrap();
    assert_eq!((l.items.len(), l.malformed.len()), (1, 1));
    assert_eq!(l.malformed[0].id(), "junk");
    assert!(matches!(
        store.get::<LPort>("junk").await,
        Err(StoreError::Decode(_))
    ));

    // Deletes.
    assert!(store.delete::<LPort>("p1").await.unwrap());
    assert!(!store.delete::<LPort>("p1").await.unwrap());
    store
        .delete_all(&[(Kind::LSwitch, "ls1"), (Kind::LPort, "junk")])
        .await
        .unwrap();
    assert!(store.list::<LSwitch>().await.unwrap().items.is_empty());
    assert!(store.list::<LPort>().await.unwrap().malformed.is_empty());
}

#[tokio::test]
async fn store_unreachable_is_reported_as_unavailable() {
    let port = common::free_port();
    let store = NbStore::connect(&[format!("http://127.0.0.1:{port}")], "/t/")
        .await
        .unwrap();
    let e = store.list::<LSwitch>().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(
        e.to_string()
            .starts_with("cannot reach etcd at http://127.0.0.1:"),
        "{e}"
    );
}
