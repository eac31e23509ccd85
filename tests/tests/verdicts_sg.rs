//! Verdict tables of the security-group stage (issue 4) through BPF_PROG_TEST_RUN, on both
//! from-VM hooks, and of the tunnel program through a real VXLAN device. Needs root.
//!
//! SETUP: a namespace with the devices the programs deliver to: `lo` is VM A's tap (the
//! test runs' ingress device), `tapb` VM B's (a veth, also an ingress device for B's
//! frames), `vx` a VXLAN device in external mode carrying frames from another chassis
//! (VM R, member of A's remote group, and VM X, not, without port security; both on the
//! chassis 198.18.0.2, an address of the namespace). Both taps are in the XDP devmap, so
//! a delivery from A to B (and back) is finished by either hook: every case has the same
//! outcome on both. Security groups and forwarding are on (`CFG_F_SECURITY_GROUPS |
//! CFG_F_FORWARDING`) unless a case says otherwise; identities and rules are seeded as
//! the agent writes them (see [`seed`]).
//!
//! Each scenario is a sequence of frames whose verdicts depend on the conntrack state
//! the earlier ones left (new → established → reply …). For every frame: the action, and
//! the exact set of counter slots that moved (per direction: `from_vm` is the sender's
//! program — its port-security path, its outcome, its egress `ct_*`/`sg_*` side counters;
//! `to_vm` the receiver's ingress judgement; `from_tunnel` the tunnel program's outcome).
//! An ingress drop is counted once, under `to_vm`. Where the state itself matters
//! (TCP states, revalidated entries) the conntrack entries are read back too.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    net::UdpSocket,
    time::{Duration, Instant},
};

use dragonflow_common::{
    addr::{FAMILY_V4, FAMILY_V6},
    fwd::{
        CFG_F_FORWARDING, CFG_F_SECURITY_GROUPS, ChassisConfig, DEST_LOCAL, DEST_REMOTE, L2Dest,
        L2Key, TUN_F_PORT, TUN_F_UNSECURED,
    },
    maps::CT_MAX,
    port::{PORT_F_PORT_SECURITY, PortConfig},
    sg::{
        CT_REPLIED, CT_TCP_CLOSED, CT_TCP_CLOSING, CT_TCP_ESTABLISHED, CT_TCP_SYN_SENT,
        CT_UNREPLIED, CtKey, CtValue, DIR_EGRESS, DIR_INGRESS, IDENT_ANY_V4, IDENT_ANY_V6,
        ct_timeout_secs,
    },
    verdict::{Direction, DropReason, EventStat, PassPath, Stat},
};
use tests::{
    fixtures::{addresses::pad4, frames::*, seeding::SecuredPort},
    framework::{
        hook::Hook,
        netns::Netns,
        process::{unique_prefix, wait_until},
        test_run::{Datapath, LO_IFINDEX, Ports, actions, from_vm_prog, policy_key},
    },
    verdict::{Coverage, covered_by, moved, names, slot},
};

const NET: u32 = 42;
const A_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x0a];
const B_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x0b];
const R_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x0c];
const X_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x0d];
const A4: [u8; 4] = [192, 0, 2, 10];
const B4: [u8; 4] = [192, 0, 2, 20];
const R4: [u8; 4] = [192, 0, 2, 30];
const X4: [u8; 4] = [192, 0, 2, 40];
/// Inside 198.51.100.0/24, the prefix of A's SSH rule.
const ADMIN4: [u8; 4] = [198, 51, 100, 7];
const A6: [u8; 16] = v6(0xa);
const B6: [u8; 16] = v6(0xb);
const R6: [u8; 16] = v6(0xc);
const REMOTE_CHASSIS: [u8; 4] = [198, 18, 0, 2];
const LOCAL_CHASSIS: [u8; 4] = [198, 18, 0, 1];

/// Identities, per family as the agent allocates them: remote group G = {A, R}, and the
/// rule prefix 198.51.100.0/24.
const G4: u32 = 100;
const G6: u32 = 101;
const ADMIN_NET4: u32 = 200;

const TCP: u8 = IPPROTO_TCP;
const UDP: u8 = IPPROTO_UDP;
const ICMP: u8 = IPPROTO_ICMP;
const ICMP6: u8 = IPPROTO_ICMPV6;

const FIN: u8 = 0x01;
const SYN: u8 = 0x02;
const RST: u8 = 0x04;
const ACK: u8 = 0x10;

/// 2001:db8::<host>
const fn v6(host: u8) -> [u8; 16] {
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, host,
    ]
}

/// The namespace and its devices (see the module docs).
struct Net {
    ns: Netns,
    tapb: u32,
    /// Port D's tap (network 42, no ingress rules): a flood destination.
    tapc: u32,
    vx: u32,
}

impl Net {
    fn new() -> Self {
        let ns = Netns::new(&format!("{}-sg", unique_prefix()));
        ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        ns.exec("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
        ns.add_veth_pair("tapb");
        ns.add_veth_pair("tapc");
        // REMOTE_CHASSIS's underlay address, the outer source of `from_chassis`.
        ns.exec("ip addr add 198.18.0.2/32 dev lo");
        ns.exec("ip link add vx type vxlan external dstport 4789");
        ns.exec("ip link set vx up");
        Net {
            tapb: ns.ifindex("tapb"),
            tapc: ns.ifindex("tapc"),
            vx: ns.ifindex("vx"),
            ns,
        }
    }

    fn tx_packets(&self, dev: &str) -> u64 {
        self.ns.tx_packets(dev)
    }
}

/// Who sends a frame in a test run: its tap's ifindex.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sender {
    A,
    B,
}

/// SETUP: ports A (lo) and B (tapb) on network 42 with port security, their addresses,
/// L2 entries for both and for the remote R and X, identities and the rules below;
/// forwarding and security groups on, policy generation 1.
///
/// A's rules: egress TCP 80 (IPv4 and IPv6), TCP 8080–8095 (one 16-port block), UDP any,
/// ICMP echo request, ICMPv6 echo request, ICMP 3/4 (type and code), all to any remote;
/// ingress TCP 22 from 198.51.100.0/24 and ICMP echo request from group G.
/// B's rules (Neutron's default egress): egress any IPv4 and any IPv6; ingress TCP 80
/// from G (v4 and v6), UDP from anywhere (v4 and v6), echo requests from G (v4 and v6).
fn seed(dp: &mut Datapath, n: &Net) {
    dp.clear();
    set_config(dp, n, CFG_F_FORWARDING | CFG_F_SECURITY_GROUPS, 1);
    for (ifindex, mac, ip4, ip6) in [(LO_IFINDEX, A_MAC, A4, A6), (n.tapb, B_MAC, B4, B6)] {
        SecuredPort {
            ifindex,
            net_id: NET,
            mac,
            ip4: &[ip4],
            ip6: &[ip6],
        }
        .seed(dp);
        dp.add_l2(
            L2Key::new(NET, mac),
            L2Dest {
                kind: DEST_LOCAL,
                mtu: 1500,
                ifindex,
                ..Default::default()
            },
        );
        dp.add_devmap(ifindex);
    }
    // Tunnel admission: both remote VMs are on REMOTE_CHASSIS, X without port security
    // (a DHCP server VM, say: its frames skip the tunnel's sanity checks).
    dp.add_tun_peer(NET, REMOTE_CHASSIS, TUN_F_PORT);
    dp.add_tun_src(NET, REMOTE_CHASSIS, R_MAC, TUN_F_PORT);
    dp.add_tun_src(NET, REMOTE_CHASSIS, X_MAC, TUN_F_PORT | TUN_F_UNSECURED);
    for mac in [R_MAC, X_MAC] {
        dp.add_l2(
            L2Key::new(NET, mac),
            L2Dest {
                kind: DEST_REMOTE,
                mtu: 1500,
                remote_ip: REMOTE_CHASSIS,
                ..Default::default()
            },
        );
    }
    // Flood list: the network exists on this chassis (the tunnel program checks it).
    dp.set_flood(
        NET,
        dragonflow_common::fwd::FloodList {
            mtu: 1500,
            ..Default::default()
        },
    );
    // Identities: G = {A, R}; the admin prefix.
    dp.add_ident(FAMILY_V4, pad4(A4), G4);
    dp.add_ident(FAMILY_V4, pad4(R4), G4);
    dp.add_ident(FAMILY_V6, A6, G6);
    dp.add_ident(FAMILY_V6, R6, G6);
    dp.add_ident_prefix(FAMILY_V4, pad4([198, 51, 100, 0]), 24, ADMIN_NET4);

    let a = LO_IFINDEX;
    let b = n.tapb;
    for k in [
        policy_key(a, IDENT_ANY_V4, DIR_EGRESS, TCP, Ports::port(80)),
        policy_key(a, IDENT_ANY_V6, DIR_EGRESS, TCP, Ports::port(80)),
        policy_key(
            a,
            IDENT_ANY_V4,
            DIR_EGRESS,
            TCP,
            Ports::Block {
                base: 8080,
                bits: 4,
            },
        ),
        policy_key(a, IDENT_ANY_V4, DIR_EGRESS, UDP, Ports::Any),
        policy_key(a, IDENT_ANY_V6, DIR_EGRESS, UDP, Ports::Any),
        policy_key(a, IDENT_ANY_V4, DIR_EGRESS, ICMP, Ports::IcmpType(8)),
        policy_key(a, IDENT_ANY_V6, DIR_EGRESS, ICMP6, Ports::IcmpType(128)),
        policy_key(a, IDENT_ANY_V4, DIR_EGRESS, ICMP, Ports::IcmpTypeCode(3, 4)),
        policy_key(a, ADMIN_NET4, DIR_INGRESS, TCP, Ports::port(22)),
        policy_key(a, G4, DIR_INGRESS, ICMP, Ports::IcmpType(8)),
        policy_key(b, IDENT_ANY_V4, DIR_EGRESS, 0, Ports::AnyProto),
        policy_key(b, IDENT_ANY_V6, DIR_EGRESS, 0, Ports::AnyProto),
        b_tcp80(b),
        policy_key(b, G6, DIR_INGRESS, TCP, Ports::port(80)),
        policy_key(b, IDENT_ANY_V4, DIR_INGRESS, UDP, Ports::Any),
        policy_key(b, IDENT_ANY_V6, DIR_INGRESS, UDP, Ports::Any),
        policy_key(b, G4, DIR_INGRESS, ICMP, Ports::IcmpType(8)),
        policy_key(b, G6, DIR_INGRESS, ICMP6, Ports::IcmpType(128)),
    ] {
        dp.add_policy(k);
    }
}

/// B's ingress rule TCP 80 from G (IPv4): removed by the revalidation scenario.
fn b_tcp80(b: u32) -> aya::maps::lpm_trie::Key<dragonflow_common::sg::PolicyKey> {
    policy_key(b, G4, DIR_INGRESS, TCP, Ports::port(80))
}

fn set_config(dp: &mut Datapath, n: &Net, flags: u32, policy_gen: u32) {
    dp.set_config(ChassisConfig {
        vxlan_ifindex: n.vx,
        local_ip: LOCAL_CHASSIS,
        flags,
        policy_gen,
    });
}

// ---- Frames ---------------------------------------------------------------------------

/// A 20-byte TCP header with `flags` and 8 bytes of data.
fn tcp_seg(sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    let mut h = Vec::new();
    h.extend_from_slice(&sport.to_be_bytes());
    h.extend_from_slice(&dport.to_be_bytes());
    h.extend_from_slice(&[
        0,
        0,
        0,
        1,
        0,
        0,
        0,
        0,
        5 << 4,
        flags,
        0xff,
        0xff,
        0,
        0,
        0,
        0,
    ]);
    h.extend_from_slice(b"payload!");
    h
}

fn mac_of(ip: [u8; 4]) -> [u8; 6] {
    match ip {
        A4 => A_MAC,
        B4 => B_MAC,
        R4 => R_MAC,
        X4 => X_MAC,
        _ => panic!("no MAC for {ip:?}"),
    }
}

fn mac_of6(ip: [u8; 16]) -> [u8; 6] {
    match ip {
        A6 => A_MAC,
        B6 => B_MAC,
        R6 => R_MAC,
        _ => panic!("no MAC for {ip:?}"),
    }
}

fn ip4(src: [u8; 4], dst: [u8; 4], proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(
        mac_of(dst),
        mac_of(src),
        ETH_P_IP,
        &ipv4(src, dst, proto, l4),
    )
}

fn ip6(src: [u8; 16], dst: [u8; 16], proto: u8, l4: &[u8]) -> Vec<u8> {
    eth(
        mac_of6(dst),
        mac_of6(src),
        ETH_P_IPV6,
        &ipv6(src, dst, proto, 64, l4),
    )
}

fn tcp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ip4(src, dst, TCP, &tcp_seg(sport, dport, flags))
}

fn tcp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16, flags: u8) -> Vec<u8> {
    ip6(src, dst, TCP, &tcp_seg(sport, dport, flags))
}

fn udp4(src: [u8; 4], dst: [u8; 4], sport: u16, dport: u16) -> Vec<u8> {
    ip4(src, dst, UDP, &udp(sport, dport, b"datagram"))
}

fn udp6(src: [u8; 16], dst: [u8; 16], sport: u16, dport: u16) -> Vec<u8> {
    ip6(src, dst, UDP, &udp(sport, dport, b"datagram"))
}

fn echo4(src: [u8; 4], dst: [u8; 4], ty: u8, id: u16) -> Vec<u8> {
    ip4(src, dst, ICMP, &icmp_echo_msg(ty, id, 1, b"abcdefgh"))
}

fn echo6(src: [u8; 16], dst: [u8; 16], ty: u8, id: u16) -> Vec<u8> {
    ip6(src, dst, ICMP6, &icmpv6_echo_msg(ty, id, 1, b"abcdefgh"))
}

/// An ICMP error `ty`/`code` from `src` to `dst` quoting `quoted` (an IP packet: its
/// header and the first 8 bytes of its payload, RFC 792).
fn icmp_err4(src: [u8; 4], dst: [u8; 4], ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    icmp_err4_via(mac_of(dst), src, dst, ty, code, quoted)
}

/// [`icmp_err4`] in a frame to `dst_mac`, from the sender's MAC (a crafted error need not
/// be addressed to the port its frame goes to).
fn icmp_err4_via(
    dst_mac: [u8; 6],
    src: [u8; 4],
    dst: [u8; 4],
    ty: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let mut m = vec![ty, code, 0, 0, 0, 0, 0, 0];
    m.extend_from_slice(&quoted[..28]);
    eth(dst_mac, mac_of(src), ETH_P_IP, &ipv4(src, dst, ICMP, &m))
}

/// An ICMPv6 error quoting `quoted` (its 40-byte header and 8 bytes of payload).
fn icmp_err6(src: [u8; 16], dst: [u8; 16], ty: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    icmp_err6_via(mac_of6(dst), src, dst, ty, code, quoted)
}

/// [`icmp_err6`] in a frame to `dst_mac` (see [`icmp_err4_via`]).
fn icmp_err6_via(
    dst_mac: [u8; 6],
    src: [u8; 16],
    dst: [u8; 16],
    ty: u8,
    code: u8,
    quoted: &[u8],
) -> Vec<u8> {
    let mut b = vec![0, 0, 0, 0];
    b.extend_from_slice(&quoted[..48]);
    eth(
        dst_mac,
        mac_of6(src),
        ETH_P_IPV6,
        &ipv6(src, dst, ICMP6, 64, &icmpv6(ty, code, &b)),
    )
}

/// An IPv4 fragment of A → B (`frag`: flags + offset field, e.g. 0x2000 = first).
fn frag4(proto: u8, frag: u16, payload: &[u8]) -> Vec<u8> {
    eth(
        B_MAC,
        A_MAC,
        ETH_P_IP,
        &ipv4_with(
            &V4 {
                frag,
                ..V4::default()
            },
            A4,
            B4,
            proto,
            payload,
        ),
    )
}

/// An IPv6 fragment of A → B (`offset` in 8-byte units).
fn frag6(offset: u16, more: bool, payload: &[u8]) -> Vec<u8> {
    eth(
        B_MAC,
        A_MAC,
        ETH_P_IPV6,
        &ipv6(
            A6,
            B6,
            NEXTHDR_FRAGMENT,
            64,
            &frag_hdr(UDP, offset, more, payload),
        ),
    )
}

// ---- Expectations -----------------------------------------------------------------------

/// What a frame must do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Act {
    /// Delivered into the destination tap (XDP_REDIRECT / TC_ACT_REDIRECT).
    Deliver,
    /// Up the stack (forwarding off: XDP_PASS / TC_ACT_OK).
    Kernel,
    Drop,
}

/// One counter slot.
type Slot = (Direction, Stat);

fn fv(s: Stat) -> Slot {
    (Direction::FromVm, s)
}
fn tv(s: Stat) -> Slot {
    (Direction::ToVm, s)
}
fn pass(p: PassPath) -> Stat {
    Stat::Pass(p)
}
fn drop(r: DropReason) -> Stat {
    Stat::Drop(r)
}
fn ev(e: EventStat) -> Stat {
    Stat::Event(e)
}

/// Slots of a frame delivered locally: the sender's path, `l2_local`, and side counters.
fn delivered(sec: PassPath, egress: EventStat, ingress: EventStat) -> Vec<Slot> {
    vec![
        fv(pass(sec)),
        fv(pass(PassPath::L2Local)),
        fv(ev(egress)),
        tv(ev(ingress)),
    ]
}

/// Slots of a frame the receiver's ingress rules refused.
fn refused(sec: PassPath, egress: EventStat, reason: DropReason) -> Vec<Slot> {
    vec![fv(pass(sec)), fv(ev(egress)), tv(drop(reason))]
}

/// Slots of a frame the sender's egress refused.
fn denied(sec: PassPath, reason: DropReason) -> Vec<Slot> {
    vec![fv(pass(sec)), fv(drop(reason))]
}

struct Step {
    name: &'static str,
    from: Sender,
    frame: Vec<u8>,
    act: Act,
    slots: Vec<Slot>,
}

fn step(name: &'static str, from: Sender, frame: Vec<u8>, act: Act, slots: Vec<Slot>) -> Step {
    Step {
        name,
        from,
        frame,
        act,
        slots,
    }
}

fn action(hook: Hook, act: Act) -> u32 {
    match (hook, act) {
        (Hook::Xdp, Act::Deliver) => actions::XDP_REDIRECT,
        (Hook::Xdp, Act::Kernel) => actions::XDP_PASS,
        (Hook::Xdp, Act::Drop) => actions::XDP_DROP,
        (Hook::Tc, Act::Deliver) => actions::TC_ACT_REDIRECT,
        (Hook::Tc, Act::Kernel) => actions::TC_ACT_OK,
        (Hook::Tc, Act::Drop) => actions::TC_ACT_SHOT,
    }
}

fn slots_of(slots: &[Slot]) -> Vec<(usize, u64)> {
    let mut v: Vec<(usize, u64)> = slots.iter().map(|&(d, s)| (slot(d, s), 1)).collect();
    v.sort();
    v
}

/// Runs one step on `hook` and checks action and counters; records the drops seen.
fn run(dp: &Datapath, n: &Net, hook: Hook, scenario: &str, s: &Step, seen: &mut Coverage) {
    let ctx = format!("[{}] {scenario}: {}", hook.as_str(), s.name);
    let ifindex = match s.from {
        Sender::A => LO_IFINDEX,
        Sender::B => n.tapb,
    };
    let before = dp.stats();
    let mut r = dp.run_prog(from_vm_prog(hook), hook, &s.frame, ifindex);
    let mut decided_by = hook;
    if hook == Hook::Xdp && r.retval == actions::XDP_PASS && dp.stats() == before {
        // Handed off, uncounted (TCP/UDP to a local tap: the checksum may be left to
        // offload, see `l2::xdp_finishes`): the tcx companion decides the untouched frame,
        // as the kernel runs it next.
        assert_eq!(r.data_out, s.frame, "{ctx}: handed off untouched");
        r = dp.run_prog(from_vm_prog(Hook::Tc), Hook::Tc, &s.frame, ifindex);
        decided_by = Hook::Tc;
    }
    let after = dp.stats();
    let got = moved(&before, &after);
    let want = slots_of(&s.slots);
    assert_eq!(
        (r.retval, names(&got)),
        (action(decided_by, s.act), names(&want)),
        "{ctx}: action and counters (decided by {})",
        decided_by.as_str()
    );
    if s.act != Act::Drop {
        assert_eq!(r.data_out, s.frame, "{ctx}: the frame leaves untouched");
    }
    for &(_, st) in &s.slots {
        if let Stat::Drop(_) = st {
            seen.record(st);
        }
    }
}

/// The conntrack entry of port `ifindex` for (local, remote, proto, lport, rport).
fn ct_entry(
    dp: &Datapath,
    ifindex: u32,
    proto: u8,
    local: [u8; 16],
    remote: [u8; 16],
    lport: u16,
    rport: u16,
) -> Option<CtValue> {
    dp.ct()
        .into_iter()
        .find(|(k, _)| {
            k.ifindex == ifindex
                && k.proto == proto
                && k.local == local
                && k.remote == remote
                && k.lport == lport.to_be()
                && k.rport == rport.to_be()
        })
        .map(|(_, v)| v)
}

/// (state, origin) of an entry that must exist.
fn state(
    dp: &Datapath,
    ifindex: u32,
    proto: u8,
    local: [u8; 16],
    remote: [u8; 16],
    lport: u16,
    rport: u16,
) -> (u8, u8) {
    let v = ct_entry(dp, ifindex, proto, local, remote, lport, rport).unwrap_or_else(|| {
        panic!("no conntrack entry on {ifindex} {local:?}:{lport} <-> {remote:?}:{rport}")
    });
    (v.state, v.origin)
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

// ---- Scenarios ---------------------------------------------------------------------------

use Act::{Deliver, Drop as Dropped, Kernel};
use EventStat::{CtEstablished, CtNew, CtRelated, CtRevalidated, CtUntracked, SgExempt};
use PassPath::{Ipv4, Ipv6};
use Sender::{A, B};

/// TCP from SYN to RST, then a new SYN on the closed tuple; IPv4 and IPv6.
fn tcp_states(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "TCP states";
    let (a, b) = (LO_IFINDEX, n.tapb);
    let steps = [
        step(
            "A→B SYN :80: new, allowed by A's egress and B's ingress (A ∈ G)",
            A,
            tcp4(A4, B4, 40000, 80, SYN),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "B→A SYN-ACK: the reply passes both entries (A has no rule for it)",
            B,
            tcp4(B4, A4, 80, 40000, SYN | ACK),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        step(
            "A→B ACK: established",
            A,
            tcp4(A4, B4, 40000, 80, ACK),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
    let ab = |dp: &Datapath| state(dp, a, TCP, pad4(A4), pad4(B4), 40000, 80);
    let ba = |dp: &Datapath| state(dp, b, TCP, pad4(B4), pad4(A4), 80, 40000);
    assert_eq!(
        ab(dp),
        (CT_TCP_ESTABLISHED, DIR_EGRESS),
        "[{}] A's entry",
        hook.as_str()
    );
    assert_eq!(
        ba(dp),
        (CT_TCP_ESTABLISHED, DIR_INGRESS),
        "[{}] B's entry",
        hook.as_str()
    );
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "A→B FIN",
            A,
            tcp4(A4, B4, 40000, 80, FIN | ACK),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        seen,
    );
    assert_eq!(ab(dp).0, CT_TCP_CLOSING, "[{}] FIN: closing", hook.as_str());
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "B→A RST",
            B,
            tcp4(B4, A4, 80, 40000, RST),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        seen,
    );
    assert_eq!(ab(dp).0, CT_TCP_CLOSED, "[{}] RST: closed", hook.as_str());
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "A→B SYN on the closed tuple: a new connection, judged and tracked again",
            A,
            tcp4(A4, B4, 40000, 80, SYN),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        seen,
    );
    assert_eq!(ab(dp).0, CT_TCP_SYN_SENT, "[{}] reopened", hook.as_str());

    for s in [
        step(
            "IPv6 A→B SYN :80 (A ∈ G for IPv6 too)",
            A,
            tcp6(A6, B6, 40001, 80, SYN),
            Deliver,
            delivered(Ipv6, CtNew, CtNew),
        ),
        step(
            "IPv6 B→A SYN-ACK",
            B,
            tcp6(B6, A6, 80, 40001, SYN | ACK),
            Deliver,
            delivered(Ipv6, CtEstablished, CtEstablished),
        ),
    ] {
        run(dp, n, hook, sc, &s, seen);
    }
    assert_eq!(
        state(dp, a, TCP, A6, B6, 40001, 80),
        (CT_TCP_ESTABLISHED, DIR_EGRESS),
        "[{}] A's IPv6 entry",
        hook.as_str()
    );
}

/// Denials in each direction, untracked TCP, unsolicited replies, port ranges (docs/THREATS.md row
/// 14).
fn denials(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "denials";
    let steps = [
        step(
            "A→B SYN :81: no egress rule of A",
            A,
            tcp4(A4, B4, 40010, 81, SYN),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "A→B SYN :8081 (A's block 8080-8095): B's ingress refuses it",
            A,
            tcp4(A4, B4, 40011, 8081, SYN),
            Dropped,
            refused(Ipv4, CtNew, DropReason::SgDenied),
        ),
        step(
            "IPv6 A→B SYN :8081: A's block is an IPv4 rule",
            A,
            tcp6(A6, B6, 40011, 8081, SYN),
            Dropped,
            denied(Ipv6, DropReason::SgDenied),
        ),
        step(
            "A→B ACK :80 without a connection: judged by the rules, passes untracked",
            A,
            tcp4(A4, B4, 40012, 80, ACK),
            Deliver,
            delivered(Ipv4, CtUntracked, CtUntracked),
        ),
        step(
            "A→B ACK :81 without a connection: judged by the rules, denied",
            A,
            tcp4(A4, B4, 40013, 81, ACK),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "B→A SYN-ACK nobody asked for: A's ingress judges it as new, denied",
            B,
            tcp4(B4, A4, 80, 40014, SYN | ACK),
            Dropped,
            refused(Ipv4, CtUntracked, DropReason::SgDenied),
        ),
        step(
            "B→A UDP 'reply' nobody asked for: denied by A's ingress",
            B,
            udp4(B4, A4, 53, 40015),
            Dropped,
            refused(Ipv4, CtNew, DropReason::SgDenied),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
    // No entry for what was denied or untracked.
    assert!(
        ct_entry(dp, LO_IFINDEX, TCP, pad4(A4), pad4(B4), 40012, 80).is_none(),
        "[{}] an ACK without SYN creates no entry",
        hook.as_str()
    );
}

/// Ping both ways (the reply passes; a request back with the same id does not: docs/THREATS.md
/// row 14), and an echo reply nobody asked for.
fn icmp(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "ICMP echo";
    let steps = [
        step(
            "A→B echo request id 7",
            A,
            echo4(A4, B4, 8, 7),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "B→A echo reply id 7: the reply",
            B,
            echo4(B4, A4, 0, 7),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        step(
            "B→A echo request id 7: not the reverse of A's ping, judged as new (B ∉ G)",
            B,
            echo4(B4, A4, 8, 7),
            Dropped,
            refused(Ipv4, CtNew, DropReason::SgDenied),
        ),
        step(
            "A→B echo reply id 9 nobody asked for: no egress rule for type 0",
            A,
            echo4(A4, B4, 0, 9),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "IPv6 A→B echo request id 5",
            A,
            echo6(A6, B6, 128, 5),
            Deliver,
            delivered(Ipv6, CtNew, CtNew),
        ),
        step(
            "IPv6 B→A echo reply id 5",
            B,
            echo6(B6, A6, 129, 5),
            Deliver,
            delivered(Ipv6, CtEstablished, CtEstablished),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
    assert_eq!(
        state(dp, LO_IFINDEX, ICMP, pad4(A4), pad4(B4), 7, 0),
        (CT_REPLIED, DIR_EGRESS),
        "[{}] A's ping",
        hook.as_str()
    );
}

/// ICMP errors about a tracked flow pass both sides; about an unknown flow they are new
/// ICMP messages (IPv4 and IPv6).
fn related(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "related ICMP errors";
    let q4 = ipv4(A4, B4, UDP, &udp(40020, 53, b"question"));
    let unknown4 = ipv4(A4, B4, UDP, &udp(40021, 53, b"question"));
    let q6 = ipv6(A6, B6, UDP, 64, &udp(40022, 53, b"question"));
    let steps = [
        step(
            "A→B UDP :53",
            A,
            udp4(A4, B4, 40020, 53),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "B→A port unreachable about it: related on both sides",
            B,
            icmp_err4(B4, A4, 3, 3, &q4),
            Deliver,
            delivered(Ipv4, CtRelated, CtRelated),
        ),
        step(
            "B→A port unreachable about an unknown flow: a new ICMP message A refuses",
            B,
            icmp_err4(B4, A4, 3, 3, &unknown4),
            Dropped,
            refused(Ipv4, CtUntracked, DropReason::SgDenied),
        ),
        step(
            "IPv6 A→B UDP :53",
            A,
            udp6(A6, B6, 40022, 53),
            Deliver,
            delivered(Ipv6, CtNew, CtNew),
        ),
        step(
            "IPv6 B→A unreachable (1/4) about it: related on both sides",
            B,
            icmp_err6(B6, A6, 1, 4, &q6),
            Deliver,
            delivered(Ipv6, CtRelated, CtRelated),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
}

/// ICMP errors are related only when addressed to the quoted packet's source (issue 10):
/// a VM that opened an allowed flow cannot pass errors quoting it to anyone else, neither
/// at its own egress nor at the receiver's ingress; every error type (IPv4 3, 11, 12;
/// IPv6 1–4). A router on the path (here B, forwarding A's datagram to 198.51.100.7)
/// reports from its own address: related.
fn unrelated_errors(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "ICMP errors not for the quoted source";
    let third4 = ADMIN4;
    let third6 = v6(0x99);
    // B's answer to A's question, and A's question (what A and B would quote).
    let answer4 = ipv4(B4, A4, UDP, &udp(53, 40030, b"answer.."));
    let question4 = ipv4(A4, B4, UDP, &udp(40030, 53, b"question"));
    let routed4 = ipv4(A4, third4, UDP, &udp(40031, 5000, b"via B..."));
    let answer6 = ipv6(B6, A6, UDP, 64, &udp(53, 40032, b"answer.."));
    let question6 = ipv6(A6, B6, UDP, 64, &udp(40032, 53, b"question"));
    let steps = [
        step(
            "A→B UDP :53 (the flow A may open)",
            A,
            udp4(A4, B4, 40030, 53),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "A: port unreachable quoting B's answer, to a third address: a new 3/3, no rule",
            A,
            icmp_err4_via(B_MAC, A4, third4, 3, 3, &answer4),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "A: 3/4 (A's rule allows it as a message) likewise: B's ingress does not relate it",
            A,
            icmp_err4_via(B_MAC, A4, third4, 3, 4, &answer4),
            Dropped,
            refused(Ipv4, CtUntracked, DropReason::SgDenied),
        ),
        step(
            "A: time exceeded quoting B's answer, to a third address",
            A,
            icmp_err4_via(B_MAC, A4, third4, 11, 0, &answer4),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "A: parameter problem quoting B's answer, to a third address",
            A,
            icmp_err4_via(B_MAC, A4, third4, 12, 0, &answer4),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "B: port unreachable quoting A's question, to X in a frame for A: A's ingress judges it as new",
            B,
            icmp_err4_via(A_MAC, B4, X4, 3, 3, &question4),
            Dropped,
            refused(Ipv4, CtUntracked, DropReason::SgDenied),
        ),
        step(
            "B→A port unreachable quoting A's question: related on both sides",
            B,
            icmp_err4(B4, A4, 3, 3, &question4),
            Deliver,
            delivered(Ipv4, CtRelated, CtRelated),
        ),
        step(
            "A→B's MAC UDP to 198.51.100.7 (B routes it)",
            A,
            eth(B_MAC, A_MAC, ETH_P_IP, &routed4),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "B (a router on the path) → A: time exceeded about it, from B's address: related",
            B,
            icmp_err4(B4, A4, 11, 0, &routed4),
            Deliver,
            delivered(Ipv4, CtRelated, CtRelated),
        ),
        step(
            "IPv6 A→B UDP :53",
            A,
            udp6(A6, B6, 40032, 53),
            Deliver,
            delivered(Ipv6, CtNew, CtNew),
        ),
        step(
            "IPv6 A: packet too big quoting B's answer, to a third address: no rule",
            A,
            icmp_err6_via(B_MAC, A6, third6, 2, 0, &answer6),
            Dropped,
            denied(Ipv6, DropReason::SgDenied),
        ),
        step(
            "IPv6 A: unreachable quoting B's answer, to a third address: no rule",
            A,
            icmp_err6_via(B_MAC, A6, third6, 1, 4, &answer6),
            Dropped,
            denied(Ipv6, DropReason::SgDenied),
        ),
        step(
            "IPv6 B: time exceeded quoting A's question, to a third address in a frame for A",
            B,
            icmp_err6_via(A_MAC, B6, third6, 3, 0, &question6),
            Dropped,
            refused(Ipv6, CtUntracked, DropReason::SgDenied),
        ),
        step(
            "IPv6 B→A parameter problem quoting A's question: related on both sides",
            B,
            icmp_err6(B6, A6, 4, 0, &question6),
            Deliver,
            delivered(Ipv6, CtRelated, CtRelated),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
}

/// A policy generation bump re-judges entries at their next packet: a removed rule cuts
/// the established flow, a kept one lets it go on (refreshed, judged once).
fn revalidation(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "policy_gen";
    for s in [
        step(
            "A→B SYN :80",
            A,
            tcp4(A4, B4, 40030, 80, SYN),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "A→B UDP :5000",
            A,
            udp4(A4, B4, 40031, 5000),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
    ] {
        run(dp, n, hook, sc, &s, seen);
    }
    // The agent removes B's TCP 80 rule, then bumps the generation.
    dp.remove_policy(b_tcp80(n.tapb));
    set_config(dp, n, CFG_F_FORWARDING | CFG_F_SECURITY_GROUPS, 2);
    let steps = [
        step(
            "A→B ACK :80: A's rule kept; B's removed: B's entry deleted, the ACK denied",
            A,
            tcp4(A4, B4, 40030, 80, ACK),
            Dropped,
            vec![
                fv(pass(Ipv4)),
                fv(ev(CtRevalidated)),
                fv(ev(CtEstablished)),
                tv(ev(CtRevalidated)),
                tv(drop(DropReason::SgDenied)),
            ],
        ),
        step(
            "A→B UDP :5000: both rules kept, the flow goes on",
            A,
            udp4(A4, B4, 40031, 5000),
            Deliver,
            vec![
                fv(pass(Ipv4)),
                fv(pass(PassPath::L2Local)),
                fv(ev(CtRevalidated)),
                fv(ev(CtEstablished)),
                tv(ev(CtRevalidated)),
                tv(ev(CtEstablished)),
            ],
        ),
        step(
            "A→B UDP :5000 again: judged once per generation",
            A,
            udp4(A4, B4, 40031, 5000),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
    assert!(
        ct_entry(dp, n.tapb, TCP, pad4(B4), pad4(A4), 80, 40030).is_none(),
        "[{}] B's entry of the cut flow is gone",
        hook.as_str()
    );
    let v = ct_entry(dp, n.tapb, UDP, pad4(B4), pad4(A4), 5000, 40031).expect("B's UDP entry");
    assert_eq!(
        v.policy_gen,
        2,
        "[{}] refreshed to the new generation",
        hook.as_str()
    );
}

/// An entry past its timeout counts as absent: the reply it would have let through is
/// judged as new.
fn expiry(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "timeouts";
    let now = monotonic_ns();
    let timeout = ct_timeout_secs(CT_UNREPLIED) * 1_000_000_000;
    for (lport, last_seen_ns) in [(40040u16, now), (40041, now - timeout - 1_000_000_000)] {
        let key = CtKey {
            ifindex: LO_IFINDEX,
            family: FAMILY_V4,
            proto: UDP,
            lport: lport.to_be(),
            rport: 53u16.to_be(),
            _pad: 0,
            local: pad4(A4),
            remote: pad4(B4),
        };
        dp.ct_insert(
            key,
            CtValue {
                last_seen_ns,
                policy_gen: 1,
                state: CT_UNREPLIED,
                origin: DIR_EGRESS,
                flags: 0,
            },
        )
        .expect("insert entry");
    }
    for s in [
        step(
            "B→A reply to A's fresh UDP entry",
            B,
            udp4(B4, A4, 53, 40040),
            Deliver,
            delivered(Ipv4, CtNew, CtEstablished),
        ),
        step(
            "B→A reply to A's expired UDP entry: new, denied by A's ingress",
            B,
            udp4(B4, A4, 53, 40041),
            Dropped,
            refused(Ipv4, CtNew, DropReason::SgDenied),
        ),
    ] {
        run(dp, n, hook, sc, &s, seen);
    }
    assert_eq!(
        state(dp, LO_IFINDEX, UDP, pad4(A4), pad4(B4), 40040, 53),
        (CT_REPLIED, DIR_EGRESS),
        "[{}] replied",
        hook.as_str()
    );
}

/// A full conntrack table drops new flows (`ct_full`), not established ones.
fn full_table(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "full table";
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "A→B UDP :6000 before the table fills",
            A,
            udp4(A4, B4, 40050, 6000),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        seen,
    );
    // Fill the rest with entries of a port that does not exist (what the agent collects).
    let mut i: u32 = 0;
    loop {
        let key = CtKey {
            ifindex: 999_999,
            family: FAMILY_V4,
            proto: UDP,
            lport: (i as u16).to_be(),
            rport: ((i >> 16) as u16).to_be(),
            _pad: 0,
            local: pad4(A4),
            remote: pad4(B4),
        };
        if dp
            .ct_insert(
                key,
                CtValue {
                    last_seen_ns: monotonic_ns(),
                    policy_gen: 1,
                    state: CT_UNREPLIED,
                    origin: DIR_EGRESS,
                    flags: 0,
                },
            )
            .is_err()
        {
            break;
        }
        i += 1;
        assert!(i <= CT_MAX, "more entries than the map's capacity");
    }
    assert_eq!(i + 2, CT_MAX, "the table holds CT_MAX entries");
    for s in [
        step(
            "A→B UDP :6001, a new flow the rules allow: the table is full",
            A,
            udp4(A4, B4, 40051, 6001),
            Dropped,
            denied(Ipv4, DropReason::CtFull),
        ),
        step(
            "A→B UDP :6000, established before: unaffected",
            A,
            udp4(A4, B4, 40050, 6000),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        step(
            "A→B ACK :80 without a connection: untracked, needs no entry",
            A,
            tcp4(A4, B4, 40052, 80, ACK),
            Deliver,
            delivered(Ipv4, CtUntracked, CtUntracked),
        ),
    ] {
        run(dp, n, hook, sc, &s, seen);
    }
    dp.clear_sg();
}

/// Fragments (docs/THREATS.md row 10): a later fragment needs its first; tiny first fragments and
/// overlapping later ones are dropped; a well-formed datagram passes (IPv4 and IPv6).
fn fragments(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    let sc = "fragments";
    // UDP header + 16 bytes in the first fragment: L4 data 0..24.
    let first = udp(40060, 7000, &[0x11; 16]);
    let steps = [
        step(
            "IPv4 later fragment without a first",
            A,
            frag4(UDP, 3, &[0x22; 16]),
            Dropped,
            denied(Ipv4, DropReason::FragNoFirst),
        ),
        step(
            "IPv4 tiny first fragment: 12 bytes of a TCP header",
            A,
            frag4(TCP, 0x2000, &tcp_seg(40061, 80, SYN)[..12]),
            Dropped,
            vec![fv(drop(DropReason::FragTiny))],
        ),
        step(
            "IPv4 first fragment (UDP :7000)",
            A,
            frag4(UDP, 0x2000, &first),
            Deliver,
            delivered(Ipv4, CtNew, CtNew),
        ),
        step(
            "IPv4 later fragment at 24: judged with the first's ports",
            A,
            frag4(UDP, 3, &[0x22; 16]),
            Deliver,
            delivered(Ipv4, CtEstablished, CtEstablished),
        ),
        step(
            "IPv4 later fragment at 8: inside the first's L4 data",
            A,
            frag4(UDP, 1, &[0x33; 16]),
            Dropped,
            denied(Ipv4, DropReason::FragOverlap),
        ),
        step(
            "IPv6 later fragment without a first",
            A,
            frag6(3, false, &[0x22; 16]),
            Dropped,
            denied(Ipv6, DropReason::FragNoFirst),
        ),
        step(
            "IPv6 first fragment (UDP :7000)",
            A,
            frag6(0, true, &udp(40062, 7000, &[0x11; 16])),
            Deliver,
            delivered(Ipv6, CtNew, CtNew),
        ),
        step(
            "IPv6 later fragment at 24",
            A,
            frag6(3, false, &[0x22; 16]),
            Deliver,
            delivered(Ipv6, CtEstablished, CtEstablished),
        ),
        step(
            "IPv6 later fragment at 16: overlap",
            A,
            frag6(2, false, &[0x22; 16]),
            Dropped,
            denied(Ipv6, DropReason::FragOverlap),
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
}

/// Egress rules alone (forwarding off: the frame goes up the stack once judged): port
/// blocks, ICMP type/code rules, group destinations, exemptions.
fn egress_rules(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    set_config(dp, n, CFG_F_SECURITY_GROUPS, 1);
    let sc = "egress rules, forwarding off";
    let kernel = |sec, e| vec![fv(pass(sec)), fv(ev(e))];
    let ll = dragonflow_common::addr::link_local_from_mac(A_MAC);
    let all_dhcp6 = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 2];
    let snm_b = solicited_node(B6);
    let mld2 = [0xff, 0x02, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x16];
    let steps = [
        step(
            "TCP :8080, first port of the block",
            A,
            tcp4(A4, B4, 40070, 8080, SYN),
            Kernel,
            kernel(Ipv4, CtNew),
        ),
        step(
            "TCP :8095, last port of the block",
            A,
            tcp4(A4, B4, 40071, 8095, SYN),
            Kernel,
            kernel(Ipv4, CtNew),
        ),
        step(
            "TCP :8096, after the block",
            A,
            tcp4(A4, B4, 40072, 8096, SYN),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "TCP :8079, before the block",
            A,
            tcp4(A4, B4, 40073, 8079, SYN),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "ICMP timestamp (13): no rule for the type",
            A,
            ip4(A4, B4, ICMP, &[13, 0, 0, 0, 0, 1, 0, 1, 0, 0, 0, 0]),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "ICMP 3/4 (type and code rule), about no tracked flow: a new message, untracked",
            A,
            icmp_err4(
                A4,
                B4,
                3,
                4,
                &ipv4(B4, A4, UDP, &udp(53, 40074, b"answer..")),
            ),
            Kernel,
            kernel(Ipv4, CtUntracked),
        ),
        step(
            "ICMP 3/1: the rule's code does not match",
            A,
            icmp_err4(
                A4,
                B4,
                3,
                1,
                &ipv4(B4, A4, UDP, &udp(53, 40075, b"answer..")),
            ),
            Dropped,
            denied(Ipv4, DropReason::SgDenied),
        ),
        step(
            "UDP to 192.0.2.255 (broadcast MAC): judged, never tracked",
            A,
            eth(
                BROADCAST,
                A_MAC,
                ETH_P_IP,
                &ipv4(A4, [192, 0, 2, 255], UDP, &udp(40076, 5353, b"everyone")),
            ),
            Kernel,
            kernel(Ipv4, CtUntracked),
        ),
        step(
            "ARP request: exempt",
            A,
            eth(BROADCAST, A_MAC, ETH_P_ARP, &arp(1, A_MAC, A4, [0; 6], B4)),
            Kernel,
            kernel(PassPath::Arp, SgExempt),
        ),
        step(
            "DHCPDISCOVER (68→67 from 0.0.0.0): exempt",
            A,
            eth(
                BROADCAST,
                A_MAC,
                ETH_P_IP,
                &ipv4([0; 4], [255; 4], UDP, &udp(68, 67, &dhcp_discover(A_MAC))),
            ),
            Kernel,
            kernel(PassPath::DhcpDiscover, SgExempt),
        ),
        step(
            "DHCPv6 solicit (546→547): exempt",
            A,
            eth(
                ipv6_mcast_mac(all_dhcp6),
                A_MAC,
                ETH_P_IPV6,
                &ipv6(ll, all_dhcp6, UDP, 1, &udp(546, 547, b"solicit.")),
            ),
            Kernel,
            kernel(Ipv6, SgExempt),
        ),
        step(
            "NS for B: exempt",
            A,
            eth(
                ipv6_mcast_mac(snm_b),
                A_MAC,
                ETH_P_IPV6,
                &ipv6(A6, snm_b, ICMP6, 255, &ns(B6, &lla_opt(1, A_MAC))),
            ),
            Kernel,
            kernel(PassPath::Nd, SgExempt),
        ),
        step(
            "MLDv2 report: exempt",
            A,
            eth(
                ipv6_mcast_mac(mld2),
                A_MAC,
                ETH_P_IPV6,
                &ipv6(A6, mld2, ICMP6, 1, &icmpv6(143, 0, &[0; 4])),
            ),
            Kernel,
            kernel(Ipv6, SgExempt),
        ),
        step(
            "UDP 67→68 from A (a DHCP server reply): port security's, not the groups'",
            A,
            udp4(A4, B4, 67, 68),
            Dropped,
            vec![fv(drop(DropReason::DhcpServer))],
        ),
    ];
    for s in &steps {
        run(dp, n, hook, sc, s, seen);
    }
}

/// Without `CFG_F_SECURITY_GROUPS`, or for ports without port security, nothing is judged.
fn not_enforced(dp: &mut Datapath, n: &Net, hook: Hook, seen: &mut Coverage) {
    seed(dp, n);
    set_config(dp, n, CFG_F_FORWARDING, 1);
    let sc = "not enforced";
    let plain = |sec| vec![fv(pass(sec)), fv(pass(PassPath::L2Local))];
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "security groups off: A→B SYN :81 (no rule) goes through unjudged",
            A,
            tcp4(A4, B4, 40080, 81, SYN),
            Deliver,
            plain(Ipv4),
        ),
        seen,
    );
    assert!(
        dp.ct().is_empty(),
        "[{}] no entry without security groups",
        hook.as_str()
    );

    // B without port security: its ingress is not judged; A's egress still is.
    seed(dp, n);
    dp.add_port(
        n.tapb,
        PortConfig {
            net_id: NET,
            flags: 0,
            mac: B_MAC,
            mtu: 1500,
        },
    );
    run(
        dp,
        n,
        hook,
        sc,
        &step(
            "B without port security: A→B SYN :8081 passes B's (absent) ingress",
            A,
            tcp4(A4, B4, 40081, 8081, SYN),
            Deliver,
            vec![fv(pass(Ipv4)), fv(pass(PassPath::L2Local)), fv(ev(CtNew))],
        ),
        seen,
    );

    // A without port security (the agent writes no address entries for such a port; a
    // MAC A has no pair for stands for that): its egress is not judged; B's ingress is.
    seed(dp, n);
    let z_mac = [0x02, 0xdf, 0, 0, 0, 0x0f];
    dp.add_port(
        LO_IFINDEX,
        PortConfig {
            net_id: NET,
            flags: 0,
            mac: z_mac,
            mtu: 1500,
        },
    );
    let from_z = |sport, dport| {
        eth(
            B_MAC,
            z_mac,
            ETH_P_IP,
            &ipv4(A4, B4, TCP, &tcp_seg(sport, dport, SYN)),
        )
    };
    for s in [
        step(
            "A without port security: A→B SYN :81, B's ingress refuses it",
            A,
            from_z(40082, 81),
            Dropped,
            vec![
                fv(pass(PassPath::NoPortSecurity)),
                tv(drop(DropReason::SgDenied)),
            ],
        ),
        step(
            "A without port security: A→B SYN :80, B's ingress allows it (A ∈ G)",
            A,
            from_z(40083, 80),
            Deliver,
            vec![
                fv(pass(PassPath::NoPortSecurity)),
                fv(pass(PassPath::L2Local)),
                tv(ev(CtNew)),
            ],
        ),
    ] {
        run(dp, n, hook, sc, &s, seen);
    }
}

#[test]
fn security_groups_both_hooks() {
    let n = Net::new();
    n.ns.within(|| {
        let mut dp = Datapath::load();
        for hook in Hook::BOTH {
            let mut seen = Coverage::new();
            for scenario in [
                tcp_states,
                denials,
                icmp,
                related,
                unrelated_errors,
                revalidation,
                expiry,
                full_table,
                fragments,
                egress_rules,
                not_enforced,
            ] {
                scenario(&mut dp, &n, hook, &mut seen);
            }
            seen.assert_covers(hook, covered_by("verdicts_sg"));
        }
    });
}

// ---- From the tunnel ------------------------------------------------------------------

/// Sends `frame` to the VXLAN device as REMOTE_CHASSIS would (UDP to 4789 from its
/// address, on the namespace's loopback; the device decapsulates it with VNI `NET` and the
/// outer source as metadata).
fn from_chassis(frame: &[u8]) {
    let mut d = vec![0x08, 0, 0, 0];
    d.extend_from_slice(&(NET << 8).to_be_bytes());
    d.extend_from_slice(frame);
    let s = UdpSocket::bind("198.18.0.2:0").expect("bind");
    s.send_to(&d, "198.18.0.2:4789").expect("send VXLAN");
}

/// One frame through the real tunnel program: the slots that must move (waited for) and
/// whether it reaches B's tap.
fn through_tunnel(
    dp: &Datapath,
    n: &Net,
    name: &str,
    frame: &[u8],
    slots: &[Slot],
    delivered: bool,
) {
    let before = dp.stats();
    let tx = n.tx_packets("tapb");
    from_chassis(frame);
    let want = slots_of(slots);
    // The program runs when the device decapsulates, asynchronously: poll (a frame that
    // must not arrive is checked once its counters moved, as the redirect would have
    // happened by then).
    let done = |got: &[(usize, u64)], sent: u64| got == want && sent == u64::from(delivered);
    let deadline = Instant::now() + Duration::from_secs(5);
    let (got, sent) = loop {
        let got = moved(&before, &dp.stats());
        let sent = n.tx_packets("tapb") - tx;
        if done(&got, sent) || Instant::now() > deadline {
            break (got, sent);
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(names(&got), names(&want), "tunnel: {name}: counters");
    assert_eq!(sent, u64::from(delivered), "tunnel: {name}: into B's tap");
}

/// Ingress at the receiver for frames from another chassis (`df_from_tunnel` on a real
/// VXLAN device): members of G reach B's TCP 80, others do not; the fragments and the
/// exemptions as for local senders; a reply to A's connection through the tunnel.
#[test]
fn security_groups_from_tunnel() {
    let n = Net::new();
    n.ns.within(|| {
        let mut dp = Datapath::load();
        seed(&mut dp, &n);
        dp.attach_from_tunnel("vx");
        let ft = |s| (Direction::FromTunnel, s);
        let ok = |e| vec![ft(pass(PassPath::L2Local)), tv(ev(e))];
        let cases: Vec<(&str, Vec<u8>, Vec<Slot>, bool)> = vec![
            (
                "R (∈ G) → B SYN :80",
                tcp4(R4, B4, 41000, 80, SYN),
                ok(CtNew),
                true,
            ),
            (
                "R → B ACK :80: established",
                tcp4(R4, B4, 41000, 80, ACK),
                ok(CtEstablished),
                true,
            ),
            (
                "X (∉ G) → B SYN :80: B's ingress refuses it (counted once, to_vm)",
                eth(
                    B_MAC,
                    X_MAC,
                    ETH_P_IP,
                    &ipv4(X4, B4, TCP, &tcp_seg(41001, 80, SYN)),
                ),
                vec![tv(drop(DropReason::SgDenied))],
                false,
            ),
            (
                "IPv6 R (∈ G) → B SYN :80",
                tcp6(R6, B6, 41002, 80, SYN),
                ok(CtNew),
                true,
            ),
            (
                "R → B later fragment without a first",
                eth(
                    B_MAC,
                    R_MAC,
                    ETH_P_IP,
                    &ipv4_with(
                        &V4 {
                            frag: 3,
                            ..V4::default()
                        },
                        R4,
                        B4,
                        UDP,
                        &[0x22; 16],
                    ),
                ),
                vec![tv(drop(DropReason::FragNoFirst))],
                false,
            ),
            (
                "198.51.100.7 → A SYN :22: A's rule for that prefix (identity by LPM)",
                eth(
                    A_MAC,
                    X_MAC,
                    ETH_P_IP,
                    &ipv4(ADMIN4, A4, TCP, &tcp_seg(41003, 22, SYN)),
                ),
                ok(CtNew),
                false,
            ),
            (
                "198.51.100.7 → A SYN :23: no rule",
                eth(
                    A_MAC,
                    X_MAC,
                    ETH_P_IP,
                    &ipv4(ADMIN4, A4, TCP, &tcp_seg(41004, 23, SYN)),
                ),
                vec![tv(drop(DropReason::SgDenied))],
                false,
            ),
            (
                "DHCP server reply (67→68) to B from X (no port security): exempt",
                eth(
                    B_MAC,
                    X_MAC,
                    ETH_P_IP,
                    &ipv4(X4, B4, UDP, &udp(67, 68, b"dhcp-offer")),
                ),
                vec![ft(pass(PassPath::L2Local)), tv(ev(SgExempt))],
                true,
            ),
        ];
        for (name, frame, slots, delivered) in &cases {
            through_tunnel(&dp, &n, name, frame, slots, *delivered);
        }
        // A reply through the tunnel to A's own connection (A's egress judged by a test
        // run of the TC hook; XDP hands tunnel frames to it).
        let before = dp.stats();
        let r = dp.run_prog(
            from_vm_prog(Hook::Tc),
            Hook::Tc,
            &tcp4(A4, R4, 40090, 80, SYN),
            LO_IFINDEX,
        );
        assert_eq!(
            r.retval,
            actions::TC_ACT_REDIRECT,
            "A→R SYN into the tunnel"
        );
        assert_eq!(
            names(&moved(&before, &dp.stats())),
            names(&slots_of(&[
                fv(pass(Ipv4)),
                fv(pass(PassPath::L2Tunnel)),
                fv(ev(CtNew)),
            ])),
            "A→R SYN: counters"
        );
        let before = dp.stats();
        from_chassis(&tcp4(R4, A4, 80, 40090, SYN | ACK));
        let want = slots_of(&[ft(pass(PassPath::L2Local)), tv(ev(CtEstablished))]);
        wait_until(
            "R→A SYN-ACK: a reply to A's connection",
            Duration::from_secs(5),
            || moved(&before, &dp.stats()) == want,
        );
    });
}

// ---- Routed and flooded (TC: XDP hands these frames to it) ------------------------------

/// Port C: on network 43 behind router 7, reached by routing (a TC redirect only records
/// its target: no device needed). Its ingress: TCP 80 from G.
const C_IF: u32 = 4243;
const C_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0x2b, 0x0c];
const C4: [u8; 4] = [203, 0, 113, 20];
const RT_MAC: [u8; 6] = [0x02, 0xdf, 0xee, 0, 0, 0x07];
const NET_C: u32 = 43;
const ROUTER: u32 = 7;
/// Port D: on network 42 (tapc), no ingress rule at all.
const D_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x0e];

/// SETUP on top of [`seed`]: router 7 between networks 42 and 43 with port C behind it,
/// port D on network 42, network 42's flood list {A, B, D}.
fn seed_routed(dp: &mut Datapath, n: &Net) {
    use dragonflow_common::fwd::{
        DEST_ROUTER, FloodDest, FloodList, NEIGH_F_FIXED, NeighKey, NeighValue, RouteDest, RouteKey,
    };
    seed(dp, n);
    let route = |ip: [u8; 4]| RouteKey {
        router_id: ROUTER,
        family: FAMILY_V4,
        _pad: [0; 3],
        ip: pad4(ip),
    };
    dp.add_route(
        route([192, 0, 2, 0]),
        24,
        RouteDest {
            net_id: NET,
            mac: RT_MAC,
            _pad: [0; 2],
        },
    );
    dp.add_route(
        route([203, 0, 113, 0]),
        24,
        RouteDest {
            net_id: NET_C,
            mac: RT_MAC,
            _pad: [0; 2],
        },
    );
    dp.add_neigh(
        NeighKey {
            net_id: NET_C,
            family: FAMILY_V4,
            _pad: [0; 3],
            ip: pad4(C4),
        },
        NeighValue {
            mac: C_MAC,
            flags: NEIGH_F_FIXED,
        },
    );
    dp.add_l2(
        L2Key::new(NET, RT_MAC),
        L2Dest {
            kind: DEST_ROUTER,
            router_id: ROUTER,
            mtu: 1500,
            ..Default::default()
        },
    );
    for (net, mac, ifindex) in [(NET_C, C_MAC, C_IF), (NET, D_MAC, n.tapc)] {
        dp.add_port(
            ifindex,
            PortConfig {
                net_id: net,
                flags: PORT_F_PORT_SECURITY,
                mac,
                mtu: 1500,
            },
        );
        dp.add_l2(
            L2Key::new(net, mac),
            L2Dest {
                kind: DEST_LOCAL,
                mtu: 1500,
                ifindex,
                ..Default::default()
            },
        );
    }
    dp.add_policy(policy_key(C_IF, G4, DIR_INGRESS, TCP, Ports::port(80)));
    let mut list = FloodList {
        mtu: 1500,
        ..Default::default()
    };
    for (i, ifindex) in [LO_IFINDEX, n.tapb, n.tapc].into_iter().enumerate() {
        list.dests[i] = FloodDest {
            kind: u32::from(DEST_LOCAL),
            ifindex,
            ..Default::default()
        };
    }
    list.len = 3;
    dp.set_flood(NET, list);
}

/// Routed deliveries are judged at the sender's egress and the routed-to port's ingress
/// (the 5-tuple does not change with routing); every copy of a flood at its own port's
/// ingress (a copy the port refuses is not sent, and counted `to_vm`). XDP hands both to
/// its TC companion, uncounted.
#[test]
fn security_groups_routed_and_flooded() {
    let n = Net::new();
    n.ns.within(|| {
        let mut dp = Datapath::load();
        seed_routed(&mut dp, &n);
        let routed = |dport, flags| {
            eth(
                RT_MAC,
                A_MAC,
                ETH_P_IP,
                &ipv4(A4, C4, TCP, &tcp_seg(40100, dport, flags)),
            )
        };
        let bcast = eth(
            BROADCAST,
            A_MAC,
            ETH_P_IP,
            &ipv4(A4, [192, 0, 2, 255], UDP, &udp(40101, 5353, b"everyone")),
        );
        // (name, frame, TC action, counters, copies sent to B and D)
        type Case = (&'static str, Vec<u8>, u32, Vec<Slot>, [u64; 2]);
        let cases: Vec<Case> = vec![
            (
                "A→C SYN :80 routed: A's egress and C's ingress (A ∈ G)",
                routed(80, SYN),
                actions::TC_ACT_REDIRECT,
                vec![
                    fv(pass(Ipv4)),
                    fv(pass(PassPath::Routed)),
                    fv(ev(CtNew)),
                    tv(ev(CtNew)),
                ],
                [0, 0],
            ),
            (
                "A→C ACK :80 routed: the connection's entries on both sides",
                routed(80, ACK),
                actions::TC_ACT_REDIRECT,
                vec![
                    fv(pass(Ipv4)),
                    fv(pass(PassPath::Routed)),
                    fv(ev(CtEstablished)),
                    tv(ev(CtEstablished)),
                ],
                [0, 0],
            ),
            (
                "A→C SYN :8081 routed: C's ingress refuses it",
                routed(8081, SYN),
                actions::TC_ACT_SHOT,
                refused(Ipv4, CtNew, DropReason::SgDenied),
                [0, 0],
            ),
            (
                "A→C SYN :81 routed: A's egress refuses it",
                routed(81, SYN),
                actions::TC_ACT_SHOT,
                denied(Ipv4, DropReason::SgDenied),
                [0, 0],
            ),
            (
                "broadcast UDP: judged at A's egress, at B's ingress (allowed: sent) and at D's \
                 (no rule: not sent)",
                bcast,
                actions::TC_ACT_SHOT,
                vec![
                    fv(pass(Ipv4)),
                    fv(pass(PassPath::Flood)),
                    fv(ev(CtUntracked)),
                    tv(ev(CtUntracked)),
                    tv(drop(DropReason::SgDenied)),
                ],
                [1, 0],
            ),
        ];
        for (name, frame, action, slots, tx) in &cases {
            // XDP: handed off untouched and uncounted.
            let before = dp.stats();
            let r = dp.run_prog(from_vm_prog(Hook::Xdp), Hook::Xdp, frame, LO_IFINDEX);
            assert_eq!(
                (r.retval, moved(&before, &dp.stats())),
                (actions::XDP_PASS, vec![]),
                "[xdp] {name}: handed off"
            );
            let tx_before = [n.tx_packets("tapb"), n.tx_packets("tapc")];
            let before = dp.stats();
            let r = dp.run_prog(from_vm_prog(Hook::Tc), Hook::Tc, frame, LO_IFINDEX);
            assert_eq!(
                (r.retval, names(&moved(&before, &dp.stats()))),
                (*action, names(&slots_of(slots))),
                "[tc] {name}: action and counters"
            );
            // Flood copies are sent synchronously by bpf_clone_redirect.
            let sent = [
                n.tx_packets("tapb") - tx_before[0],
                n.tx_packets("tapc") - tx_before[1],
            ];
            assert_eq!(&sent, tx, "[tc] {name}: copies sent to B and D");
        }
        assert_eq!(
            state(&dp, C_IF, TCP, pad4(C4), pad4(A4), 80, 40100),
            (CT_TCP_SYN_SENT, DIR_INGRESS),
            "C's entry of the routed connection: C has not answered yet"
        );
    });
}
