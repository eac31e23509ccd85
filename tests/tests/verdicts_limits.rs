//! Verdict tables of the per-port limits (issue 10) through BPF_PROG_TEST_RUN, on both
//! from-VM hooks. Needs root.
//!
//! SETUP: a namespace with a veth `tapb`, port B's tap (a test run's ingress device must
//! exist); port A's tap is `lo`. Both ports are on network 42 with port security.
//!
//! - **Flood bucket** (`df_flood_rl_v1`): a burst of flooded frames passes, the next one
//!   drops as `flood_rate_limited`; ARP requests the responder answers are never limited;
//!   another port has its own bucket; moving the bucket back in time (what time passing
//!   does) lets exactly the frames the elapsed time pays for through. XDP hands floods to
//!   its TC companion untouched, uncounted and without charging the bucket.
//! - **Conntrack quota** (`df_ct_count_v1`, `df_ct_freed_v1`): a port at its quota has its
//!   new flows dropped as `ct_port_quota`, while its established flows and another port's
//!   new flows pass; what the agent's collector frees (entry deleted, `freed` counted)
//!   makes room again, and an entry the datapath deletes itself (revalidation) is counted.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::collections::BTreeSet;

use dragonflow_common::{
    addr::FAMILY_V4,
    fwd::{
        CFG_F_FORWARDING, CFG_F_SECURITY_GROUPS, ChassisConfig, FloodList, NEIGH_F_FIXED, NeighKey,
        NeighValue,
    },
    limits::{CtFreed, Limits, flood_params},
    sg::{CT_F_COUNTED, CT_ORIGIN_EGRESS, DIR_EGRESS, IDENT_ANY_V4},
    verdict::{Direction, DropReason, EventStat, PassPath, Stat},
};
use tests::{
    fixtures::{addresses::pad4, frames::*, seeding::SecuredPort},
    framework::{
        hook::Hook,
        netns::Netns,
        process::unique_prefix,
        test_run::{Datapath, LO_IFINDEX, Ports, actions, from_vm_prog, policy_key},
    },
    verdict::{self, Coverage},
};

const NET: u32 = 42;
const A_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0x10, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0x10, 0x0b];
const A4: [u8; 4] = [192, 0, 2, 10];
const B4: [u8; 4] = [192, 0, 2, 20];
/// Known to the responder (answered, never limited).
const KNOWN4: [u8; 4] = [192, 0, 2, 30];
const KNOWN_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0x10, 0x0c];
/// Known to nobody: ARP requests for it are flooded.
const UNKNOWN4: [u8; 4] = [192, 0, 2, 99];
/// Outside the network: where the quota scenario's flows go (forwarding off).
const REMOTE4: [u8; 4] = [203, 0, 113, 7];

/// The flood scenario's bucket: 3 frames at once, then one per second (so that the test
/// itself never waits for a refill: time is moved in the map).
const BURST: u32 = 3;
const RATE: u32 = 1;
const QUOTA: u32 = 3;

struct Net {
    ns: Netns,
    tapb: u32,
}

impl Net {
    fn new() -> Self {
        let ns = Netns::new(&format!("{}-lim", unique_prefix()));
        ns.add_veth_pair("tapb");
        Net {
            tapb: ns.ifindex("tapb"),
            ns,
        }
    }
}

/// Ports A (lo) and B (tapb) with their addresses, the responder's KNOWN4, network 42's
/// flood list (no other tap: a flood that passes makes no copy), and `flags`.
fn seed(dp: &mut Datapath, n: &Net, flags: u32, limits: Limits) {
    dp.clear();
    dp.set_config(ChassisConfig {
        flags,
        policy_gen: 1,
        ..Default::default()
    });
    dp.set_limits(limits);
    for (ifindex, mac, ip) in [(LO_IFINDEX, A_MAC, A4), (n.tapb, B_MAC, B4)] {
        SecuredPort {
            ifindex,
            net_id: NET,
            mac,
            ip4: &[ip],
            ip6: &[],
        }
        .seed(dp);
        // As the agent does for a tun tap: XDP answers ARP out of taps in its devmap only.
        dp.add_devmap(ifindex);
    }
    dp.add_neigh(
        NeighKey {
            net_id: NET,
            family: FAMILY_V4,
            _pad: [0; 3],
            ip: pad4(KNOWN4),
        },
        NeighValue {
            mac: KNOWN_MAC,
            flags: NEIGH_F_FIXED,
        },
    );
    dp.set_flood(
        NET,
        FloodList {
            mtu: 1500,
            ..Default::default()
        },
    );
}

/// Runs `frame` from `ifindex` on `hook`: the action and the slots that moved must be
/// `act` and `want`; records the drop reasons seen.
#[expect(
    clippy::too_many_arguments,
    reason = "one verdict case: the frame, where it enters, and what must happen; read as a table at the call sites"
)]
fn expect(
    dp: &Datapath,
    hook: Hook,
    ctx: &str,
    ifindex: u32,
    frame: &[u8],
    act: u32,
    want: &[Stat],
    seen: &mut Coverage,
) {
    let got = verdict::run_prog(dp, from_vm_prog(hook), hook, frame, ifindex);
    verdict::assert_outcome(
        &format!("[{}] {ctx}", hook.as_str()),
        &got,
        act,
        &verdict::once(Direction::FromVm, want),
    );
    for &s in want {
        if let Stat::Drop(_) = s {
            seen.record(s);
        }
    }
}

fn arp_request(src_mac: [u8; 6], spa: [u8; 4], tpa: [u8; 4]) -> Vec<u8> {
    eth(
        BROADCAST,
        src_mac,
        ETH_P_ARP,
        &arp(1, src_mac, spa, [0; 6], tpa),
    )
}

/// The flood scenario on one hook (see the module docs).
fn flood_bucket(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    let (interval, tolerance) = flood_params(RATE, BURST);
    seed(
        dp,
        n,
        CFG_F_FORWARDING,
        Limits {
            flood_interval_ns: interval,
            flood_tolerance_ns: tolerance,
            ..Default::default()
        },
    );
    let a = LO_IFINDEX;
    let unknown = arp_request(A_MAC, A4, UNKNOWN4);
    let answered = arp_request(A_MAC, A4, KNOWN4);
    let flooded = [Stat::Pass(PassPath::Arp), Stat::Pass(PassPath::Flood)];
    let limited = [
        Stat::Pass(PassPath::Arp),
        Stat::Drop(DropReason::FloodRateLimited),
    ];
    let responder = [
        Stat::Pass(PassPath::Arp),
        Stat::Pass(PassPath::ArpResponder),
    ];
    if hook == Hook::Xdp {
        // Every flood is the TC companion's: handed off, uncounted, the bucket untouched;
        // what XDP answers itself is never limited.
        for i in 0..2 * BURST {
            let ctx = format!("ARP request {i} for an unknown address: handed off");
            expect(dp, hook, &ctx, a, &unknown, actions::XDP_PASS, &[], seen);
        }
        assert_eq!(dp.flood_tat(a), None, "[xdp] the bucket is TC's");
        for i in 0..2 * BURST {
            let ctx = format!("ARP request {i} for a known address: answered");
            expect(
                dp,
                hook,
                &ctx,
                a,
                &answered,
                actions::XDP_TX,
                &responder,
                seen,
            );
        }
        return;
    }
    for i in 0..BURST {
        let ctx = format!("ARP request {i} for an unknown address, within the burst");
        expect(
            dp,
            hook,
            &ctx,
            a,
            &unknown,
            actions::TC_ACT_SHOT,
            &flooded,
            seen,
        );
    }
    for i in 0..2 {
        let ctx = format!("ARP request {i} over the burst");
        expect(
            dp,
            hook,
            &ctx,
            a,
            &unknown,
            actions::TC_ACT_SHOT,
            &limited,
            seen,
        );
    }
    let bcast = eth(
        BROADCAST,
        A_MAC,
        ETH_P_IP,
        &ipv4(A4, [192, 0, 2, 255], IPPROTO_UDP, &udp(40000, 5353, b"all")),
    );
    let garp = eth(BROADCAST, A_MAC, ETH_P_ARP, &arp(1, A_MAC, A4, [0; 6], A4));
    expect(
        dp,
        hook,
        "a broadcast UDP datagram: the same bucket",
        a,
        &bcast,
        actions::TC_ACT_SHOT,
        &[
            Stat::Pass(PassPath::Ipv4),
            Stat::Drop(DropReason::FloodRateLimited),
        ],
        seen,
    );
    expect(
        dp,
        hook,
        "a gratuitous ARP: flooded, so limited too",
        a,
        &garp,
        actions::TC_ACT_SHOT,
        &limited,
        seen,
    );
    for i in 0..2 * BURST {
        let ctx = format!("ARP request {i} for a known address: answered despite the bucket");
        expect(
            dp,
            hook,
            &ctx,
            a,
            &answered,
            actions::TC_ACT_REDIRECT,
            &responder,
            seen,
        );
    }
    let b_unknown = arp_request(B_MAC, B4, UNKNOWN4);
    for i in 0..BURST {
        let ctx = format!("B's ARP request {i}: B has its own bucket");
        let flooded = [Stat::Pass(PassPath::Arp), Stat::Pass(PassPath::Flood)];
        expect(
            dp,
            hook,
            &ctx,
            n.tapb,
            &b_unknown,
            actions::TC_ACT_SHOT,
            &flooded,
            seen,
        );
    }
    // Two intervals pass (the bucket moved back by them): exactly two more frames.
    let tat = dp.flood_tat(a).expect("A's bucket");
    dp.set_flood_tat(a, tat - 2 * interval);
    for i in 0..2 {
        let ctx = format!("ARP request {i} after two intervals: refilled");
        expect(
            dp,
            hook,
            &ctx,
            a,
            &unknown,
            actions::TC_ACT_SHOT,
            &flooded,
            seen,
        );
    }
    expect(
        dp,
        hook,
        "and the next one is limited again",
        a,
        &unknown,
        actions::TC_ACT_SHOT,
        &limited,
        seen,
    );
    // No limit configured: nothing is limited.
    dp.set_limits(Limits::default());
    for i in 0..2 * BURST {
        let ctx = format!("ARP request {i} with no limit configured");
        expect(
            dp,
            hook,
            &ctx,
            a,
            &unknown,
            actions::TC_ACT_SHOT,
            &flooded,
            seen,
        );
    }
}

fn udp_to(src: [u8; 4], src_mac: [u8; 6], sport: u16) -> Vec<u8> {
    eth(
        [0x02, 0xdf, 0, 0, 0x10, 0xee],
        src_mac,
        ETH_P_IP,
        &ipv4(src, REMOTE4, IPPROTO_UDP, &udp(sport, 53, b"query")),
    )
}

/// The quota scenario on one hook (see the module docs). Forwarding is off: the egress
/// judgement is all there is, and both hooks finish the frame themselves.
fn ct_quota(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(
        dp,
        n,
        CFG_F_SECURITY_GROUPS,
        Limits {
            ct_port_quota: QUOTA,
            ..Default::default()
        },
    );
    let (a, b) = (LO_IFINDEX, n.tapb);
    for ifindex in [a, b] {
        dp.add_policy(policy_key(
            ifindex,
            IDENT_ANY_V4,
            DIR_EGRESS,
            IPPROTO_UDP,
            Ports::Any,
        ));
    }
    let ok = if hook == Hook::Xdp {
        actions::XDP_PASS
    } else {
        actions::TC_ACT_OK
    };
    let drop = if hook == Hook::Xdp {
        actions::XDP_DROP
    } else {
        actions::TC_ACT_SHOT
    };
    let new = [Stat::Pass(PassPath::Ipv4), Stat::Event(EventStat::CtNew)];
    let est = [
        Stat::Pass(PassPath::Ipv4),
        Stat::Event(EventStat::CtEstablished),
    ];
    let over = [
        Stat::Pass(PassPath::Ipv4),
        Stat::Drop(DropReason::CtPortQuota),
    ];
    for sport in 1..=u16::try_from(QUOTA).unwrap() {
        let ctx = format!("A's new flow {sport}, within the quota");
        expect(dp, hook, &ctx, a, &udp_to(A4, A_MAC, sport), ok, &new, seen);
    }
    let c = dp.ct_count(a).expect("A's counters");
    assert_eq!(
        (c.created, c.removed),
        ([u64::from(QUOTA), 0], [0, 0]),
        "[{}] A's entries are counted as egress-originated",
        hook.as_str()
    );
    assert!(
        dp.ct()
            .iter()
            .filter(|(k, _)| k.ifindex == a)
            .all(|(_, v)| v.flags & CT_F_COUNTED != 0 && v.origin == CT_ORIGIN_EGRESS),
        "every entry of A is flagged counted"
    );
    expect(
        dp,
        hook,
        "A's next new flow: at the quota",
        a,
        &udp_to(A4, A_MAC, 100),
        drop,
        &over,
        seen,
    );
    expect(
        dp,
        hook,
        "A's established flow 1 still passes",
        a,
        &udp_to(A4, A_MAC, 1),
        ok,
        &est,
        seen,
    );
    expect(
        dp,
        hook,
        "B's new flow: B's own quota",
        b,
        &udp_to(B4, B_MAC, 100),
        ok,
        &new,
        seen,
    );
    // The agent's collector deletes A's flow 2 and counts it.
    let (k2, _) = dp
        .ct()
        .into_iter()
        .find(|(k, _)| k.ifindex == a && k.lport == 2u16.to_be())
        .expect("A's flow 2");
    dp.ct_remove(&k2);
    dp.set_ct_freed(a, CtFreed { freed: [1, 0] });
    expect(
        dp,
        hook,
        "A's new flow after one was freed",
        a,
        &udp_to(A4, A_MAC, 101),
        ok,
        &new,
        seen,
    );
    expect(
        dp,
        hook,
        "and the next one is over again",
        a,
        &udp_to(A4, A_MAC, 102),
        drop,
        &over,
        seen,
    );
    // A rule removed: flow 1 is revalidated, no longer allowed, deleted by the datapath.
    dp.remove_policy(policy_key(
        a,
        IDENT_ANY_V4,
        DIR_EGRESS,
        IPPROTO_UDP,
        Ports::Any,
    ));
    dp.set_config(ChassisConfig {
        flags: CFG_F_SECURITY_GROUPS,
        policy_gen: 2,
        ..Default::default()
    });
    expect(
        dp,
        hook,
        "A's flow 1 after its rule went: revalidated, deleted",
        a,
        &udp_to(A4, A_MAC, 1),
        drop,
        &[
            Stat::Pass(PassPath::Ipv4),
            Stat::Event(EventStat::CtRevalidated),
            Stat::Drop(DropReason::SgDenied),
        ],
        seen,
    );
    let c = dp.ct_count(a).expect("A's counters");
    assert_eq!(
        (c.created, c.removed),
        ([u64::from(QUOTA) + 1, 0], [1, 0]),
        "[{}] the datapath counts its own deletion",
        hook.as_str()
    );
}

#[test]
fn limits_both_hooks() {
    let n = Net::new();
    n.ns.within(|| {
        let mut dp = Datapath::load();
        for hook in Hook::BOTH {
            let mut seen = Coverage::new();
            flood_bucket(&mut dp, &n, hook, &mut seen);
            ct_quota(&mut dp, &n, hook, &mut seen);
            let want: BTreeSet<&str> = if hook == Hook::Xdp {
                // XDP hands floods to TC: only the quota is its own decision.
                ["ct_port_quota", "sg_denied"].into()
            } else {
                ["flood_rate_limited", "ct_port_quota", "sg_denied"].into()
            };
            assert_eq!(*seen.drops(), want, "[{}] reasons covered", hook.as_str());
        }
    });
}
