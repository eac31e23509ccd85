//! Verdict table of shared allowed-address-pair addresses (issue 5, the broadcast way and
//! the forwarding side of the detection way) through BPF_PROG_TEST_RUN, on both from-VM
//! hooks: seeded maps (a sender on network A; holders of a VRRP MAC, of an IPv4 and an
//! IPv6 VIP, behind two local taps and one remote chassis; router 7 to network B, where a
//! VIP and a VRRP MAC are shared too), the input frame, the expected action and counter
//! slots, and every copy the group program (`df_aap_group`, tail-called through
//! `df_progs_v1`) sends: `bpf_clone_redirect` really transmits in a test run, so the
//! copies are read, byte for byte, from the far ends of veth pairs standing in for the
//! taps and for `df-vxlan`. Needs root.
//!
//! The XDP hook answers what the responder answers and redirects plain unicast itself;
//! every frame for a group it hands off untouched and uncounted (XDP_PASS) to its tcx
//! companion, so each such case checks the hand-off and then runs the TC program on the
//! untouched frame, as the kernel does on a tap with both attached.
//!
//! The tunnel side (from `df-vxlan`: local holders only) needs tunnel metadata a test run
//! cannot give; `tests/aap_broadcast.rs` covers it end to end, and
//! [`detection_way_from_the_tunnel`] runs `df_from_tunnel` on a real VXLAN device for the
//! detection way's readdressing.
#![expect(
    unused_crate_dependencies,
    reason = "one of several targets sharing the package's dependencies; src/lib.rs checks the list"
)]

use std::{
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::{Duration, Instant},
};

use aya::{maps::ProgramArray, programs::SchedClassifier};
use dragonflow_common::{
    addr::{ADDR_F_AAP, AddrKey, FAMILY_V4},
    fwd::{
        CFG_F_FORWARDING, ChassisConfig, DEST_GROUP, DEST_LOCAL, DEST_REMOTE, DEST_ROUTER,
        FloodDest, FloodList, GROUP_M_F_FIRST, Group, GroupKey, GroupMember, L2_F_SHARED_IP,
        L2Dest, L2Key, NEIGH_F_AAP, NEIGH_F_ACTIVE, NEIGH_F_FIXED, NEIGH_F_ROUTER, NEIGH_F_SHARED,
        NeighValue, RouteDest, RouteKey, TUN_F_PORT,
    },
    maps::{self as names, PROG_AAP_GROUP, progs},
    verdict::{Direction, DropReason, PassPath, Stat},
};
use tests::{
    fixtures::{
        addresses::{hex, neigh4, neigh6, pad4},
        frames::*,
        seeding::SecuredPort,
    },
    framework::{
        hook::Hook,
        netns::Netns,
        process::{unique_prefix, wait_until},
        test_run::{Datapath, LO_IFINDEX, actions},
    },
    verdict::{self, Coverage, slot},
};

const IF: u32 = LO_IFINDEX;
const NET_A: u32 = 42;
const NET_B: u32 = 43;
const ROUTER: u32 = 7;
const REMOTE: [u8; 4] = [10, 99, 0, 2];

const VM_MAC: [u8; 6] = [0x02, 0xdf, 0, 0, 0, 0x10];
const RA_MAC: [u8; 6] = [0x02, 0xdf, 0xee, 0, 0, 0x0a];
const RB_MAC: [u8; 6] = [0x02, 0xdf, 0xee, 0, 0, 0x0b];
/// Holders on network A: H1 behind tap 1, H2 and H3 on the remote chassis, H4 behind
/// tap 2.
const H1: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 1];
const H2: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 2];
const H3: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 3];
const H4: [u8; 6] = [0x02, 0xdf, 0, 0, 1, 4];
/// Holders on network B: HB1 behind tap 1, HB2 on the remote chassis.
const HB1: [u8; 6] = [0x02, 0xdf, 0, 0, 0xb, 1];
const HB2: [u8; 6] = [0x02, 0xdf, 0, 0, 0xb, 2];
/// A VRRP virtual MAC shared by tap 1, tap 2 and the remote chassis (broadcast way).
const VRRP: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x07];
/// A VRRP MAC pointed at its active port (tap 1): the detection way.
const VRRP_ACTIVE: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x08];
/// A VRRP MAC on network B, shared by tap 2 and the remote chassis.
const VRRP_B: [u8; 6] = [0x00, 0x00, 0x5e, 0x00, 0x01, 0x09];

const VM4: [u8; 4] = [192, 0, 2, 10];
/// H1's own address (its MAC is a holder's, the address is not shared).
const H1_OWN4: [u8; 4] = [192, 0, 2, 11];
/// Shared by H1, H2, H3 with their own MACs.
const VIP4: [u8; 4] = [192, 0, 2, 100];
/// Shared, but no holder is reachable (empty group).
const VIP_NOBODY: [u8; 4] = [192, 0, 2, 101];
/// Detection way: held by H1, H2 and H4 with their own MACs, active on H1's port (local).
const VIP_ACTIVE: [u8; 4] = [192, 0, 2, 102];
/// Detection way: held by H1 and H2, active on H2's port (on the remote chassis).
const VIP_ACTIVE_REMOTE: [u8; 4] = [192, 0, 2, 106];
/// Shared, but its group is missing (an agent behind).
const VIP_NOGROUP: [u8; 4] = [192, 0, 2, 103];
/// Shared by the sender alone among reachable holders.
const VIP_SELF: [u8; 4] = [192, 0, 2, 104];
/// Shared, its group's MTU is 100.
const VIP_SMALL: [u8; 4] = [192, 0, 2, 105];
const VIPB4: [u8; 4] = [198, 51, 100, 100];
/// A unique IP on B whose MAC is the shared VRRP_B.
const VRRPB4: [u8; 4] = [198, 51, 100, 101];
/// Detection way on B: held by HB1 and HB2, active on HB2's port (remote).
const VIPB_ACTIVE: [u8; 4] = [198, 51, 100, 102];

const VM6: [u8; 16] = v6(0x10);
/// Shared by H4 (IPv6).
const VIP6: [u8; 16] = v6(0x100);
/// Detection way: held by H1 and H4, active on H4's port.
const VIP6_ACTIVE: [u8; 16] = v6(0x102);

/// 2001:db8:a::<host>
const fn v6(host: u16) -> [u8; 16] {
    let [h, l] = host.to_be_bytes();
    [
        0x20, 0x01, 0x0d, 0xb8, 0, 0x0a, 0, 0, 0, 0, 0, 0, 0, 0, h, l,
    ]
}

/// The devices copies go to, in a namespace: `tap1`, `tap2` (local holders) and `vx`
/// (stands in for df-vxlan), veth pairs whose far ends (`…p`) are read.
struct Devices {
    ns: Netns,
    tap1: u32,
    tap2: u32,
    vx: u32,
}

const DEVS: [&str; 3] = ["aap1", "aap2", "aapvx"];

impl Devices {
    fn new() -> Self {
        let ns = Netns::new(&format!("{}-aapv", unique_prefix()));
        ns.exec("sysctl -qw net.ipv6.conf.all.disable_ipv6=1");
        ns.exec("sysctl -qw net.ipv6.conf.default.disable_ipv6=1");
        for d in DEVS {
            ns.add_veth_pair(d);
        }
        Devices {
            tap1: ns.ifindex("aap1"),
            tap2: ns.ifindex("aap2"),
            vx: ns.ifindex("aapvx"),
            ns,
        }
    }
}

/// A packet socket on the far end of a device: what the datapath sent into it.
struct Sniffer {
    fd: OwnedFd,
    dev: &'static str,
}

impl Sniffer {
    /// Opens it (in the calling thread's namespace).
    fn open(dev: &'static str) -> Sniffer {
        let name = std::ffi::CString::new(format!("{dev}p")).unwrap();
        // SAFETY: plain libc calls with valid arguments; the fd is owned below.
        unsafe {
            let ifindex = libc::if_nametoindex(name.as_ptr());
            assert!(ifindex > 0, "no device {dev}p");
            let proto = (libc::ETH_P_ALL as u16).to_be();
            let fd = libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK,
                i32::from(proto),
            );
            assert!(
                fd >= 0,
                "packet socket: {}",
                std::io::Error::last_os_error()
            );
            let fd = OwnedFd::from_raw_fd(fd);
            let mut sll: libc::sockaddr_ll = std::mem::zeroed();
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex as i32;
            let rc = libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            );
            assert_eq!(rc, 0, "bind {dev}p: {}", std::io::Error::last_os_error());
            Sniffer { fd, dev }
        }
    }

    fn try_recv(&self) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        // SAFETY: a valid buffer of that length.
        let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        (n > 0).then(|| {
            buf.truncate(n as usize);
            buf
        })
    }

    fn drain(&self) {
        while self.try_recv().is_some() {}
    }

    /// The frames received: polls until `want` arrived (the copies are queued to the
    /// peer's backlog, processed right after the test run), then a little longer to
    /// catch extra ones.
    fn frames(&self, want: usize) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let start = Instant::now();
        let settle = Duration::from_millis(if want == 0 { 50 } else { 20 });
        let mut last = Instant::now();
        loop {
            match self.try_recv() {
                Some(f) => {
                    got.push(f);
                    last = Instant::now();
                }
                None => {
                    if got.len() >= want && last.elapsed() >= settle {
                        return got;
                    }
                    if start.elapsed() > Duration::from_secs(2) {
                        return got;
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        }
    }
}

fn flood_dest(kind: u8, ifindex: u32, remote_ip: [u8; 4]) -> FloodDest {
    FloodDest {
        kind: u32::from(kind),
        ifindex,
        remote_ip,
        _pad: 0,
    }
}

fn member(kind: u8, first: bool, mac: [u8; 6], ifindex: u32) -> GroupMember {
    GroupMember {
        kind,
        flags: if first { GROUP_M_F_FIRST } else { 0 },
        mac,
        ifindex,
        remote_ip: if kind == DEST_REMOTE { REMOTE } else { [0; 4] },
    }
}

fn group(mtu: u16, members: &[GroupMember]) -> Group {
    let mut g = Group {
        len: members.len() as u32,
        mtu,
        ..Default::default()
    };
    g.members[..members.len()].copy_from_slice(members);
    g
}

fn set_group(dp: &mut Datapath, key: GroupKey, g: Group) {
    let mut m: aya::maps::HashMap<_, GroupKey, Group> =
        aya::maps::HashMap::try_from(dp.ebpf.map_mut(names::GROUPS).expect("groups"))
            .expect("groups");
    m.insert(key, g, 0).expect("insert group");
}

fn clear_groups(dp: &mut Datapath) {
    let mut m: aya::maps::HashMap<_, GroupKey, Group> =
        aya::maps::HashMap::try_from(dp.ebpf.map_mut(names::GROUPS).expect("groups"))
            .expect("groups");
    let keys: Vec<GroupKey> = m.keys().map(|k| k.expect("key")).collect();
    for k in keys {
        m.remove(&k).expect("remove group");
    }
}

/// Loads the group program and puts it in `df_progs_v1`, as the agent does.
fn link_group_program(dp: &mut Datapath) {
    let prog: &mut SchedClassifier = dp
        .ebpf
        .program_mut(progs::AAP_GROUP_TC)
        .expect("group program in the object")
        .try_into()
        .expect("classifier");
    if prog.fd().is_err() {
        prog.load()
            .unwrap_or_else(|e| panic!("load {}: {e:#}", progs::AAP_GROUP_TC));
    }
    let fd = prog.fd().expect("fd").try_clone().expect("dup fd");
    let mut arr =
        ProgramArray::try_from(dp.ebpf.map_mut(names::PROGS).expect("progs")).expect("prog array");
    arr.set(PROG_AAP_GROUP, &fd, 0).expect("set prog array");
}

fn unlink_group_program(dp: &mut Datapath) {
    let mut arr =
        ProgramArray::try_from(dp.ebpf.map_mut(names::PROGS).expect("progs")).expect("prog array");
    let _ = arr.clear_index(&PROG_AAP_GROUP);
}

/// SETUP (see the module docs).
fn seed(dp: &mut Datapath, d: &Devices) {
    dp.clear();
    clear_groups(dp);
    dp.set_config(ChassisConfig {
        vxlan_ifindex: d.vx,
        local_ip: [10, 99, 0, 1],
        flags: CFG_F_FORWARDING,
        policy_gen: 0,
    });
    SecuredPort {
        ifindex: IF,
        net_id: NET_A,
        mac: VM_MAC,
        ip4: &[VM4],
        ip6: &[VM6],
    }
    .seed(dp);
    // The sender may announce VIP4 (a holder announcing itself; port security allows it).
    dp.add_addr_net(AddrKey::v4(IF, VM_MAC, VIP4), ADDR_F_AAP, NET_A);
    // The sender's tap too: XDP answers ARP/NS (XDP_TX) only out of taps it can deliver
    // to, those in the devmap (a tun device in production).
    dp.add_devmap(IF);
    dp.add_devmap(d.tap1);
    dp.add_devmap(d.tap2);

    let local = |ifindex, flags| L2Dest {
        kind: DEST_LOCAL,
        flags,
        mtu: 1500,
        ifindex,
        ..Default::default()
    };
    let remote = |flags| L2Dest {
        kind: DEST_REMOTE,
        flags,
        mtu: 1500,
        remote_ip: REMOTE,
        ..Default::default()
    };
    let grouped = || L2Dest {
        kind: DEST_GROUP,
        mtu: 1500,
        ..Default::default()
    };
    dp.add_l2(L2Key::new(NET_A, VM_MAC), local(IF, 0));
    dp.add_l2(L2Key::new(NET_A, H1), local(d.tap1, L2_F_SHARED_IP));
    dp.add_l2(L2Key::new(NET_A, H2), remote(L2_F_SHARED_IP));
    dp.add_l2(L2Key::new(NET_A, H3), remote(L2_F_SHARED_IP));
    dp.add_l2(L2Key::new(NET_A, H4), local(d.tap2, L2_F_SHARED_IP));
    dp.add_l2(L2Key::new(NET_A, VRRP), grouped());
    dp.add_l2(L2Key::new(NET_A, VRRP_ACTIVE), local(d.tap1, 0));
    dp.add_l2(
        L2Key::new(NET_A, RA_MAC),
        L2Dest {
            kind: DEST_ROUTER,
            mtu: 1500,
            router_id: ROUTER,
            ..Default::default()
        },
    );
    dp.add_l2(L2Key::new(NET_B, VRRP_B), grouped());
    dp.add_l2(L2Key::new(NET_B, HB1), local(d.tap1, L2_F_SHARED_IP));
    dp.add_l2(L2Key::new(NET_B, HB2), remote(L2_F_SHARED_IP));

    let fixed = |mac| NeighValue {
        mac,
        flags: NEIGH_F_FIXED,
    };
    let shared = NeighValue {
        mac: [0; 6],
        flags: NEIGH_F_SHARED,
    };
    dp.add_neigh(neigh4(NET_A, VM4), fixed(VM_MAC));
    dp.add_neigh(neigh4(NET_A, H1_OWN4), fixed(H1));
    for ip in [VIP4, VIP_NOBODY, VIP_NOGROUP, VIP_SELF, VIP_SMALL] {
        dp.add_neigh(neigh4(NET_A, ip), shared);
    }
    let active = |mac| NeighValue {
        mac,
        flags: NEIGH_F_AAP | NEIGH_F_ACTIVE,
    };
    dp.add_neigh(neigh4(NET_A, VIP_ACTIVE), active(H1));
    dp.add_neigh(neigh4(NET_A, VIP_ACTIVE_REMOTE), active(H2));
    dp.add_neigh(neigh6(NET_A, VIP6_ACTIVE), active(H4));
    dp.add_neigh(neigh4(NET_B, VIPB_ACTIVE), active(HB2));
    dp.add_neigh(neigh6(NET_A, VM6), fixed(VM_MAC));
    dp.add_neigh(neigh6(NET_A, VIP6), shared);
    dp.add_neigh(
        neigh4(NET_A, [192, 0, 2, 1]),
        NeighValue {
            mac: RA_MAC,
            flags: NEIGH_F_ROUTER,
        },
    );
    dp.add_neigh(neigh4(NET_B, VIPB4), shared);
    dp.add_neigh(
        neigh4(NET_B, VRRPB4),
        NeighValue {
            mac: VRRP_B,
            flags: NEIGH_F_AAP,
        },
    );
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
            net_id: NET_A,
            mac: RA_MAC,
            _pad: [0; 2],
        },
    );
    dp.add_route(
        route([198, 51, 100, 0]),
        24,
        RouteDest {
            net_id: NET_B,
            mac: RB_MAC,
            _pad: [0; 2],
        },
    );

    let mut flood = FloodList {
        mtu: 1500,
        ..Default::default()
    };
    let dests = [
        flood_dest(DEST_LOCAL, IF, [0; 4]),
        flood_dest(DEST_LOCAL, d.tap1, [0; 4]),
        flood_dest(DEST_LOCAL, d.tap2, [0; 4]),
        flood_dest(DEST_REMOTE, 0, REMOTE),
    ];
    flood.dests[..dests.len()].copy_from_slice(&dests);
    flood.len = dests.len() as u32;
    dp.set_flood(NET_A, flood);

    let (t1, t2) = (d.tap1, d.tap2);
    set_group(
        dp,
        GroupKey::mac(NET_A, VRRP),
        group(
            1500,
            &[
                member(DEST_LOCAL, true, VRRP, t1),
                member(DEST_LOCAL, true, VRRP, t2),
                member(DEST_REMOTE, true, VRRP, 0),
            ],
        ),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh4(NET_A, VIP4)),
        group(
            1500,
            &[
                member(DEST_LOCAL, true, H1, t1),
                member(DEST_REMOTE, true, H2, 0),
                member(DEST_REMOTE, false, H3, 0),
            ],
        ),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh4(NET_A, VIP_NOBODY)),
        group(1500, &[]),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh4(NET_A, VIP_SELF)),
        group(1500, &[member(DEST_LOCAL, true, VM_MAC, IF)]),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh4(NET_A, VIP_SMALL)),
        group(100, &[member(DEST_LOCAL, true, H1, t1)]),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh6(NET_A, VIP6)),
        group(1500, &[member(DEST_LOCAL, true, H4, t2)]),
    );
    set_group(
        dp,
        GroupKey::ip(&neigh4(NET_B, VIPB4)),
        group(
            1500,
            &[
                member(DEST_LOCAL, true, HB1, t1),
                member(DEST_REMOTE, true, HB2, 0),
            ],
        ),
    );
    set_group(
        dp,
        GroupKey::mac(NET_B, VRRP_B),
        group(
            1500,
            &[
                member(DEST_LOCAL, true, VRRP_B, t2),
                member(DEST_REMOTE, true, VRRP_B, 0),
            ],
        ),
    );
    link_group_program(dp);
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Out {
    /// Decided by this hook: the action and the forwarding path.
    Pass(u32, PassPath),
    Drop(DropReason),
    /// XDP hands the frame to its TC companion (XDP_PASS, nothing counted).
    Handoff,
}

struct Case {
    name: &'static str,
    frame: Vec<u8>,
    /// The port-security path (counted besides the outcome).
    allowed: PassPath,
    xdp: Out,
    tc: Out,
    /// The frame the program returns when it answers (XDP_TX / redirect back).
    reply: Option<Vec<u8>>,
    /// Copies expected on each device (tap1, tap2, vx), in order.
    copies: [Vec<Vec<u8>>; 3],
    /// Without the group program in `df_progs_v1`.
    unlinked: bool,
}

fn udp_to(dst_mac: [u8; 6], dst: [u8; 4], ttl: u8, payload: usize) -> Vec<u8> {
    eth(
        dst_mac,
        VM_MAC,
        ETH_P_IP,
        &ipv4_ttl(
            ttl,
            VM4,
            dst,
            IPPROTO_UDP,
            &udp(4000, 5000, &vec![0x5a; payload]),
        ),
    )
}

/// `frame` with another destination MAC (a copy to a holder).
fn to_mac(frame: &[u8], mac: [u8; 6]) -> Vec<u8> {
    let mut f = frame.to_vec();
    f[..6].copy_from_slice(&mac);
    f
}

/// What routing makes of `udp_to(RA_MAC, dst, 64, n)` on network B, to `mac`.
fn routed(dst: [u8; 4], mac: [u8; 6], payload: usize) -> Vec<u8> {
    eth(
        mac,
        RB_MAC,
        ETH_P_IP,
        &ipv4_ttl(
            63,
            VM4,
            dst,
            IPPROTO_UDP,
            &udp(4000, 5000, &vec![0x5a; payload]),
        ),
    )
}

fn udp6_to(dst_mac: [u8; 6], dst: [u8; 16]) -> Vec<u8> {
    eth(
        dst_mac,
        VM_MAC,
        ETH_P_IPV6,
        &ipv6(VM6, dst, IPPROTO_UDP, 64, &udp(4000, 5000, &[0x5a; 32])),
    )
}

fn arp_req(tpa: [u8; 4]) -> Vec<u8> {
    eth(
        BROADCAST,
        VM_MAC,
        ETH_P_ARP,
        &arp(1, VM_MAC, VM4, [0; 6], tpa),
    )
}

fn ns_for(target: [u8; 16]) -> Vec<u8> {
    let dst = solicited_node(target);
    let msg = with_icmpv6_checksum(VM6, dst, &ns(target, &lla_opt(1, VM_MAC)));
    eth(
        ipv6_mcast_mac(dst),
        VM_MAC,
        ETH_P_IPV6,
        &ipv6(VM6, dst, IPPROTO_ICMPV6, 255, &msg),
    )
}

fn cases() -> Vec<Case> {
    use actions::{TC_ACT_REDIRECT, TC_ACT_SHOT, XDP_TX};
    let none = || [vec![], vec![], vec![]];
    let to_vrrp = udp_to(VRRP, VM4, 64, 32);
    let vip = udp_to(H1, VIP4, 64, 32);
    let garp = eth(
        BROADCAST,
        VM_MAC,
        ETH_P_ARP,
        &arp(1, VM_MAC, VIP4, [0; 6], VIP4),
    );
    let ns6 = ns_for(VIP6);
    let to_router = |dst| udp_to(RA_MAC, dst, 64, 32);
    let mut v = vec![
        Case {
            name: "frame to a shared VRRP MAC: one copy per local holder and one to the chassis, unchanged",
            frame: to_vrrp.clone(),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::AapGroup),
            reply: None,
            copies: [vec![to_vrrp.clone()], vec![to_vrrp.clone()], vec![to_vrrp]],
            unlinked: false,
        },
        Case {
            name: "ARP request for a shared VIP: not answered, to the holders only (once per chassis), unchanged",
            frame: arp_req(VIP4),
            allowed: PassPath::Arp,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::AapGroup),
            reply: None,
            copies: [vec![arp_req(VIP4)], vec![], vec![arp_req(VIP4)]],
            unlinked: false,
        },
        Case {
            name: "gratuitous ARP for the shared VIP: an announcement, flooded to the network",
            frame: garp.clone(),
            allowed: PassPath::Arp,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::Flood),
            reply: None,
            copies: [vec![garp.clone()], vec![garp.clone()], vec![garp]],
            unlinked: false,
        },
        Case {
            name: "NS for a shared IPv6 VIP: not answered, to its holder only",
            frame: ns6.clone(),
            allowed: PassPath::Nd,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::AapGroup),
            reply: None,
            copies: [vec![], vec![ns6], vec![]],
            unlinked: false,
        },
        Case {
            name: "packet to one holder's MAC for the shared VIP: every holder, each with its own MAC",
            frame: vip.clone(),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::AapGroup),
            reply: None,
            copies: [
                vec![vip.clone()],
                vec![],
                vec![to_mac(&vip, H2), to_mac(&vip, H3)],
            ],
            unlinked: false,
        },
        Case {
            name: "packet to a holder's MAC for its own address: plain unicast",
            frame: udp_to(H1, H1_OWN4, 64, 32),
            allowed: PassPath::Ipv4,
            // UDP: its checksum may be left to offload (`l2::xdp_finishes`).
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "routed packet to a shared VIP: every holder, destination MAC the holder's, TTL - 1",
            frame: to_router(VIPB4),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::Routed),
            reply: None,
            copies: [
                vec![routed(VIPB4, HB1, 32)],
                vec![],
                vec![routed(VIPB4, HB2, 32)],
            ],
            unlinked: false,
        },
        Case {
            name: "routed packet to an address whose MAC is a shared VRRP MAC: every holder of the MAC",
            frame: to_router(VRRPB4),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_SHOT, PassPath::Routed),
            reply: None,
            copies: [
                vec![],
                vec![routed(VRRPB4, VRRP_B, 32)],
                vec![routed(VRRPB4, VRRP_B, 32)],
            ],
            unlinked: false,
        },
        Case {
            name: "ARP for a shared VIP without a reachable holder: dropped, never flooded",
            frame: arp_req(VIP_NOBODY),
            allowed: PassPath::Arp,
            xdp: Out::Handoff,
            tc: Out::Drop(DropReason::NoHolder),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "ARP for a shared VIP only the sender holds: nobody to ask",
            frame: arp_req(VIP_SELF),
            allowed: PassPath::Arp,
            xdp: Out::Handoff,
            tc: Out::Drop(DropReason::NoHolder),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "shared VIP whose group is missing (agent behind): dropped",
            frame: arp_req(VIP_NOGROUP),
            allowed: PassPath::Arp,
            xdp: Out::Handoff,
            tc: Out::Drop(DropReason::NoHolder),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "packet for a shared VIP over its group's MTU: dropped, not truncated",
            frame: udp_to(H1, VIP_SMALL, 64, 80),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Drop(DropReason::MtuExceeded),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: ARP for the VIP answered with the active port's MAC",
            frame: arp_req(VIP_ACTIVE),
            allowed: PassPath::Arp,
            xdp: Out::Pass(XDP_TX, PassPath::ArpResponder),
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::ArpResponder),
            reply: Some(eth(
                VM_MAC,
                H1,
                ETH_P_ARP,
                &arp(2, H1, VIP_ACTIVE, VM_MAC, VM4),
            )),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: the shared MAC leads to the active port only",
            frame: udp_to(VRRP_ACTIVE, VIP_ACTIVE, 64, 32),
            allowed: PassPath::Ipv4,
            // UDP: its checksum may be left to offload (`l2::xdp_finishes`).
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: None,
            copies: none(),
            unlinked: false,
        },
        // Detection way: a packet for the VIP sent to another holder's MAC (a client whose
        // cache predates the failover) is readdressed to the active holder (issue 10).
        Case {
            name: "detection way: for the VIP to a local backup's MAC: readdressed to the active holder",
            frame: udp_to(H4, VIP_ACTIVE, 64, 32),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: Some(udp_to(H1, VIP_ACTIVE, 64, 32)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: for the VIP to a remote backup's MAC: readdressed to the local active holder",
            frame: udp_to(H2, VIP_ACTIVE, 64, 32),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: Some(udp_to(H1, VIP_ACTIVE, 64, 32)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: for the VIP to the active holder's own MAC: unchanged",
            frame: udp_to(H1, VIP_ACTIVE, 64, 32),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: Some(udp_to(H1, VIP_ACTIVE, 64, 32)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: for the VIP to a local backup's MAC, active remote: readdressed into the tunnel",
            frame: udp_to(H1, VIP_ACTIVE_REMOTE, 64, 32),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Tunnel),
            reply: Some(udp_to(H2, VIP_ACTIVE_REMOTE, 64, 32)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: a holder's own address to its MAC: plain unicast",
            frame: udp_to(H1, H1_OWN4, 64, 32),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: Some(udp_to(H1, H1_OWN4, 64, 32)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: IPv6 VIP to a backup's MAC: readdressed to the active holder",
            frame: udp6_to(H1, VIP6_ACTIVE),
            allowed: PassPath::Ipv6,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::L2Local),
            reply: Some(udp6_to(H4, VIP6_ACTIVE)),
            copies: none(),
            unlinked: false,
        },
        Case {
            name: "detection way: routed to the VIP: to the active holder's MAC only",
            frame: to_router(VIPB_ACTIVE),
            allowed: PassPath::Ipv4,
            xdp: Out::Handoff,
            tc: Out::Pass(TC_ACT_REDIRECT, PassPath::Routed),
            reply: Some(routed(VIPB_ACTIVE, HB2, 32)),
            copies: none(),
            unlinked: false,
        },
    ];
    v.push(Case {
        name: "group program missing from df_progs_v1: redirect_failed",
        frame: udp_to(VRRP, VM4, 64, 32),
        allowed: PassPath::Ipv4,
        xdp: Out::Handoff,
        tc: Out::Drop(DropReason::RedirectFailed),
        reply: None,
        copies: none(),
        unlinked: true,
    });
    v
}

/// Checks one case on one program (the TC program stands for both hooks' decisions).
fn check_on(
    dp: &Datapath,
    sniff: &[Sniffer; 3],
    hook: Hook,
    c: &Case,
    want: Out,
    covered: &mut Coverage,
) {
    let ctx = format!("[{}] {}", hook.as_str(), c.name);
    for s in sniff {
        s.drain();
    }
    let got = verdict::run(dp, hook, &c.frame);
    let sec = (slot(Direction::FromVm, Stat::Pass(c.allowed)), 1);
    let (want_action, mut want_moved) = match want {
        Out::Pass(a, p) => {
            covered.record(Stat::Pass(p));
            (a, vec![sec, (slot(Direction::FromVm, Stat::Pass(p)), 1)])
        }
        Out::Drop(r) => {
            covered.record(Stat::Drop(r));
            let a = match hook {
                Hook::Xdp => actions::XDP_DROP,
                Hook::Tc => actions::TC_ACT_SHOT,
            };
            (a, vec![sec, (slot(Direction::FromVm, Stat::Drop(r)), 1)])
        }
        Out::Handoff => (actions::XDP_PASS, vec![]),
    };
    want_moved.sort();
    verdict::assert_outcome(
        &format!("{ctx} (expected {want:?})"),
        &got,
        want_action,
        &want_moved,
    );
    match (&c.reply, want) {
        (Some(reply), Out::Pass(..)) => assert_eq!(&got.out, reply, "{ctx}: the reply"),
        _ if matches!(want, Out::Handoff) => assert_eq!(got.out, c.frame, "{ctx}: untouched"),
        _ => {}
    }
    let handoff = want == Out::Handoff;
    for (i, s) in sniff.iter().enumerate() {
        let want_copies: &[Vec<u8>] = if handoff { &[] } else { &c.copies[i] };
        let got = s.frames(want_copies.len());
        assert_eq!(
            got.iter().map(|f| hex(f)).collect::<Vec<_>>(),
            want_copies.iter().map(|f| hex(f)).collect::<Vec<_>>(),
            "{ctx}: copies sent into {}",
            s.dev
        );
    }
}

#[test]
fn shared_addresses_both_hooks() {
    let d = Devices::new();
    let ns = &d.ns;
    ns.within(|| {
        let mut dp = Datapath::load();
        let sniff = DEVS.map(Sniffer::open);
        let cases = cases();
        for hook in Hook::BOTH {
            let mut covered = Coverage::new();
            for c in &cases {
                seed(&mut dp, &d);
                if c.unlinked {
                    unlink_group_program(&mut dp);
                }
                match hook {
                    Hook::Tc => check_on(&dp, &sniff, Hook::Tc, c, c.tc, &mut covered),
                    Hook::Xdp => {
                        check_on(&dp, &sniff, Hook::Xdp, c, c.xdp, &mut covered);
                        if c.xdp == Out::Handoff {
                            // What the tcx companion then does with the untouched frame.
                            check_on(&dp, &sniff, Hook::Tc, c, c.tc, &mut covered);
                        }
                    }
                }
            }
            covered.assert_covers(hook, ["aap_group", "no_holder", "routed", "arp_responder"]);
        }
    });
}

/// The detection way from the tunnel (`df_from_tunnel` on a real VXLAN device, frames sent
/// as another chassis would): a packet for a VIP that reached this chassis addressed to a
/// backup's MAC (the sending chassis saw another active holder, or did not readdress) goes
/// to the active holder when it is here, readdressed; when the active holder is on another
/// chassis it is dropped, `inactive_holder` (never back into the tunnel, never to the
/// backup).
#[test]
fn detection_way_from_the_tunnel() {
    let d = Devices::new();
    d.ns.exec("ip link add aaptun type vxlan external dstport 4789");
    d.ns.exec("ip link set aaptun up");
    d.ns.within(|| {
        let mut dp = Datapath::load();
        seed(&mut dp, &d);
        dp.attach_from_tunnel("aaptun");
        // The sender is a VM on another chassis (the test's own address, 127.0.0.1, as
        // the outer source): tunnel admission only takes frames from a live chassis of
        // the network, from a MAC that chassis may send from.
        const REMOTE_CHASSIS: [u8; 4] = [127, 0, 0, 1];
        const REMOTE_VM_MAC: [u8; 6] = [0x02, 0, 0, 0, 0x7e, 0x01];
        dp.add_tun_peer(NET_A, REMOTE_CHASSIS, TUN_F_PORT);
        dp.add_tun_src(NET_A, REMOTE_CHASSIS, REMOTE_VM_MAC, TUN_F_PORT);
        let remote = |mut f: Vec<u8>| {
            f[6..12].copy_from_slice(&REMOTE_VM_MAC);
            f
        };
        let sniff = DEVS.map(Sniffer::open);
        let ft = |s| slot(Direction::FromTunnel, s);
        let delivered = vec![(ft(Stat::Pass(PassPath::L2Local)), 1)];
        // (what, frame, counter slots that move, frames into each of `DEVS`)
        type TunnelCase = (&'static str, Vec<u8>, Vec<(usize, u64)>, [Vec<Vec<u8>>; 3]);
        let cases: [TunnelCase; 4] = [
            (
                "to a local backup's MAC, active holder here: readdressed to it",
                udp_to(H4, VIP_ACTIVE, 64, 32),
                delivered.clone(),
                [vec![udp_to(H1, VIP_ACTIVE, 64, 32)], vec![], vec![]],
            ),
            (
                "IPv6: to a local backup's MAC, active holder here: readdressed to it",
                udp6_to(H1, VIP6_ACTIVE),
                delivered.clone(),
                [vec![], vec![udp6_to(H4, VIP6_ACTIVE)], vec![]],
            ),
            (
                "to the active holder's MAC: delivered unchanged",
                udp_to(H1, VIP_ACTIVE, 64, 32),
                delivered,
                [vec![udp_to(H1, VIP_ACTIVE, 64, 32)], vec![], vec![]],
            ),
            (
                "to a local backup's MAC, active holder on another chassis: inactive_holder",
                udp_to(H1, VIP_ACTIVE_REMOTE, 64, 32),
                vec![(ft(Stat::Drop(DropReason::InactiveHolder)), 1)],
                [vec![], vec![], vec![]],
            ),
        ];
        let cases: [TunnelCase; 4] = cases.map(|(name, frame, want, copies)| {
            let copies = copies.map(|c| c.into_iter().map(remote).collect::<Vec<_>>());
            (name, remote(frame), want, copies)
        });
        for (name, frame, want, copies) in &cases {
            for s in &sniff {
                s.drain();
            }
            let before = dp.stats();
            let mut vx = vec![0x08, 0, 0, 0];
            vx.extend_from_slice(&(NET_A << 8).to_be_bytes());
            vx.extend_from_slice(frame);
            let sock = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
            sock.send_to(&vx, "127.0.0.1:4789").expect("send VXLAN");
            // The device decapsulates asynchronously: wait for the outcome.
            wait_until(
                &format!("tunnel: {name}: counters {:?}", verdict::names(want)),
                Duration::from_secs(5),
                || verdict::moved(&before, &dp.stats()) == *want,
            );
            for (i, s) in sniff.iter().enumerate() {
                let got = s.frames(copies[i].len());
                assert_eq!(
                    got.iter().map(|f| hex(f)).collect::<Vec<_>>(),
                    copies[i].iter().map(|f| hex(f)).collect::<Vec<_>>(),
                    "tunnel: {name}: frames sent into {}",
                    s.dev
                );
            }
        }
    });
}

/// The sender's flood bucket (issue 10) covers ARP requests for a shared VIP, copied to
/// its holders like a flood, but not frames to a shared MAC (the VIP's own traffic):
/// with a bucket of one frame, the second question drops as `flood_rate_limited` while
/// frames to the VRRP MAC keep going to every holder.
#[test]
fn shared_ip_questions_use_the_flood_bucket() {
    use dragonflow_common::limits::{Limits, flood_params};
    let d = Devices::new();
    d.ns.within(|| {
        let mut dp = Datapath::load();
        seed(&mut dp, &d);
        let (flood_interval_ns, flood_tolerance_ns) = flood_params(1, 1);
        dp.set_limits(Limits {
            flood_interval_ns,
            flood_tolerance_ns,
            ..Default::default()
        });
        let question = arp_req(VIP4);
        let to_vrrp = udp_to(VRRP, VM4, 64, 32);
        let sec = |p| slot(Direction::FromVm, Stat::Pass(p));
        let outcome = |s| {
            let mut v = vec![(sec(PassPath::Arp), 1), (slot(Direction::FromVm, s), 1)];
            v.sort();
            v
        };
        verdict::assert_outcome(
            "the first question: to the holders",
            &verdict::run(&dp, Hook::Tc, &question),
            actions::TC_ACT_SHOT,
            &outcome(Stat::Pass(PassPath::AapGroup)),
        );
        verdict::assert_outcome(
            "the second question: over the bucket",
            &verdict::run(&dp, Hook::Tc, &question),
            actions::TC_ACT_SHOT,
            &outcome(Stat::Drop(DropReason::FloodRateLimited)),
        );
        for i in 0..3 {
            let mut want = vec![(sec(PassPath::Ipv4), 1), (sec(PassPath::AapGroup), 1)];
            want.sort();
            verdict::assert_outcome(
                &format!("frame {i} to the shared MAC: not limited"),
                &verdict::run(&dp, Hook::Tc, &to_vrrp),
                actions::TC_ACT_SHOT,
                &want,
            );
        }
    });
}
