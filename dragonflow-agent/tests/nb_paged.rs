//! Reading a northbound larger than one gRPC response, against a real etcd: paged range
//! gets at one revision, pages cut in halves when they exceed the decode limit, and
//! `NbStore::list` / `dfctl lport list` past the 4 MiB that an unpaged read could not take.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

mod common;

use common::{Etcd, ls};
use dragonflow_agent::{
    etcd::{NbStore, paged},
    nb::{
        LPort,
        parse::{parse_aap, parse_mac},
    },
};
use etcd_client::Client;

/// A Neutron-shaped port: UUID-like id, MAC, a fixed IP, two allowed address pairs.
fn port(i: u32) -> LPort {
    LPort {
        id: format!("{i:08x}-5e1f-4c2a-9b7d-0c4e2f6a8b1d"),
        lswitch: "ls1".into(),
        mac: parse_mac(&format!(
            "fa:16:3e:{:02x}:{:02x}:{:02x}",
            i >> 16,
            (i >> 8) & 0xff,
            i & 0xff
        ))
        .unwrap(),
        fixed_ips: vec![
            format!("2001:db8::{:x}:{:x}", i >> 16, i & 0xffff)
                .parse()
                .unwrap(),
        ],
        allowed_address_pairs: vec![
            parse_aap(&format!("203.0.113.{}", i % 250)).unwrap(),
            parse_aap(&format!("2001:db8:ffff::{i:x},fa:16:3e:ff:ff:01")).unwrap(),
        ],
        port_security_enabled: true,
        security_groups: vec![],
        chassis: None,
        ifname: None,
        device_owner: "compute:nova".into(),
        admin_state_up: true,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_at_one_revision_and_halved_when_too_large() {
    let etcd = Etcd::start();
    let client = Client::connect([etcd.endpoint.as_str()], None)
        .await
        .unwrap();
    let mut kv = client.kv_client();
    // 40 keys of 300 KB: 12 MB in all, far above the 1 MiB decode limit of this client.
    let big = vec![b'x'; 300_000];
    for i in 0..40 {
        kv.put(format!("/big/{i:03}"), big.clone(), None)
            .await
            .unwrap();
    }
    kv.put("/bigger", "outside the prefix", None).await.unwrap();

    // An unpaged read fails at this client's limit, as at the default 4 MiB.
    let mut small = client.kv_client().max_decoding_message_size(1 << 20);
    let whole = small
        .get("/big/", Some(etcd_client::GetOptions::new().with_prefix()))
        .await;
    assert!(whole.is_err(), "one response of 12 MB decoded under 1 MiB?");

    // Paged: a page of 10 (3 MB) does not fit either; it is halved until it does.
    let range = paged::get_prefix_paged(&mut small, "/big/", 10)
        .await
        .unwrap();
    let keys: Vec<String> = range
        .kvs
        .iter()
        .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
        .collect();
    let want: Vec<String> = (0..40).map(|i| format!("/big/{i:03}")).collect();
    assert_eq!(
        keys, want,
        "every key once, in order, none outside the prefix"
    );
    assert!(range.kvs.iter().all(|kv| kv.value().len() == 300_000));

    // One revision for all pages: writes between pages are not seen.
    let rev = range.revision;
    kv.put("/big/000", "changed", None).await.unwrap();
    kv.put("/big/999", "new", None).await.unwrap();
    let again = paged::get_prefix_paged(&mut small, "/big/", 3)
        .await
        .unwrap();
    assert!(again.revision > rev);
    assert_eq!(again.kvs.len(), 41);
    assert_eq!(again.kvs[0].value(), b"changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_and_dfctl_past_four_mebibytes() {
    let etcd = Etcd::start();
    let store = NbStore::connect(std::slice::from_ref(&etcd.endpoint), "/dragonflow/")
        .await
        .unwrap();
    store.create(&ls("ls1")).await.unwrap();
    // 15,000 ports: more than one default-sized (4 MiB) response.
    const N: u32 = 15_000;
    let client = store.client().clone();
    let mut tasks = Vec::new();
    for chunk in 0..8u32 {
        let store = NbStore::connect(std::slice::from_ref(&etcd.endpoint), "/dragonflow/")
            .await
            .unwrap();
        tasks.push(tokio::spawn(async move {
            for i in (chunk..N).step_by(8) {
                store.put(&port(i)).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let total: usize = paged::get_prefix(&mut paged::kv(&client), "/dragonflow/lport/")
        .await
        .unwrap()
        .kvs
        .iter()
        .map(|kv| kv.value().len())
        .sum();
    assert!(total > 4 << 20, "the NB is only {total} bytes");

    let listing = store.list::<LPort>().await.unwrap();
    assert_eq!(listing.items.len(), N as usize);
    assert!(listing.malformed.is_empty());

    let out = etcd.ok("lport list");
    let rows = out
        .lines()
        .filter(|l| l.contains("-5e1f-4c2a-9b7d-0c4e2f6a8b1d"))
        .count();
    assert_eq!(rows, N as usize, "dfctl lport list shows every port");
}
