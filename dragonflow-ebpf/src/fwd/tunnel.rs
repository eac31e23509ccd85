//! VXLAN tunnel metadata (TC only: XDP cannot set or read it). `df-vxlan` is an
//! external/collect-metadata device: the VNI and the remote chassis travel as the skb's
//! tunnel key, set before redirecting to the device and read on arrival, where it decides
//! whether the frame is admitted at all ([`admit`]).

use aya_ebpf::{
    bindings::bpf_tunnel_key,
    helpers::{bpf_skb_get_tunnel_key, bpf_skb_set_tunnel_key},
    programs::TcContext,
};
use dragonflow_common::{
    fwd::{TUN_F_UNSECURED, TunPeerKey, TunSrcKey},
    verdict::DropReason,
};

use crate::{
    ctx::{PacketCtx, Pkt},
    maps::{FLOOD, TUN_PEERS, TUN_SRCS},
    parse::{self, ETH_P_IP, ETH_P_IPV6, Eth, arp, ipv4, ipv6},
};

/// TTL of the outer IPv4 header.
const TUNNEL_TTL: u8 = 64;

/// Sets the tunnel key of the skb: VNI = `vni`, toward `remote_ip` (network order as
/// stored in the maps; the helper takes host order).
#[inline(always)]
pub(crate) fn set_key(ctx: &TcContext, vni: u32, remote_ip: [u8; 4]) -> Result<(), DropReason> {
    set_key_to(ctx, &mut key(vni), remote_ip)
}

/// A tunnel key for VNI `vni`, without a destination yet (see [`set_key_to`]).
#[inline(always)]
pub(crate) fn key(vni: u32) -> bpf_tunnel_key {
    // SAFETY: bpf_tunnel_key is plain integers; all-zero is its "unset" value.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    key.tunnel_id = vni;
    key.tunnel_ttl = TUNNEL_TTL;
    key
}

/// Sets the skb's tunnel key to `key` toward `remote_ip`. For a loop sending to several
/// chassis: one key made before the loop keeps the stack the same at every iteration,
/// which the verifier needs to prune the loop's states.
#[inline(always)]
pub(crate) fn set_key_to(
    ctx: &TcContext,
    key: &mut bpf_tunnel_key,
    remote_ip: [u8; 4],
) -> Result<(), DropReason> {
    key.__bindgen_anon_1.remote_ipv4 = u32::from_be_bytes(remote_ip);
    // SAFETY: valid skb and a key of the size we pass.
    let rc = unsafe {
        bpf_skb_set_tunnel_key(
            ctx.skb.skb,
            key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 {
        Err(DropReason::RedirectFailed)
    } else {
        Ok(())
    }
}

/// What the tunnel key of a received frame says.
#[derive(Clone, Copy)]
pub(crate) struct Received {
    /// The VNI: the network's `net_id`.
    pub vni: u32,
    /// The outer IPv4 source (the sending chassis' `tunnel_ip`) as a word in memory
    /// (network) order, the layout of `TunPeerKey::remote_ip`.
    pub remote_w: u32,
}

/// The tunnel key of a frame that arrived through the tunnel; `None` without IPv4 tunnel
/// metadata — e.g. a frame injected by BPF_PROG_TEST_RUN, on a device that is not in
/// collect-metadata mode, or over an IPv6 underlay (the helper refuses an IPv6 key without
/// `BPF_F_TUNINFO_IPV6`): the caller drops it, no peer can be checked.
#[inline(always)]
pub(crate) fn received(ctx: &TcContext) -> Option<Received> {
    // SAFETY: as above.
    let mut key: bpf_tunnel_key = unsafe { core::mem::zeroed() };
    // SAFETY: valid skb, key buffer of the size we pass.
    let rc = unsafe {
        bpf_skb_get_tunnel_key(
            ctx.skb.skb,
            &mut key,
            core::mem::size_of::<bpf_tunnel_key>() as u32,
            0,
        )
    };
    if rc < 0 {
        return None;
    }
    Some(Received {
        vni: key.tunnel_id,
        // SAFETY: an IPv4 key (no BPF_F_TUNINFO_IPV6) fills the union's IPv4 member, in
        // host order.
        remote_w: unsafe { key.__bindgen_anon_1.remote_ipv4 }.to_be(),
    })
}

/// Admission of a frame from the tunnel: its outer source must be a live chassis that may
/// send frames of the VNI's network here, and its inner source MAC one that chassis may
/// send from in that network — one exact lookup of (VNI, outer source, source MAC) in
/// `df_tun_srcs_v1` on the fast path. Then, unless the MAC is a port's without port
/// security (`TUN_F_UNSECURED`: it may send anything), the sanity a VM's frame gets for
/// what no remote VM may send: tags (in the frame or in skb metadata), ethertypes other
/// than IPv4, IPv6 and ARP, truncated or malformed headers, DHCP/DHCPv6 server replies,
/// router advertisements and redirects, ARP whose sender hardware address is not the
/// Ethernet source. The same parsers as the from-VM pipeline (`parse::ipv4::sanity`, ...).
///
/// The peer is checked before anything in the frame is believed: a frame from no chassis
/// counts `tunnel_unknown_peer` whatever it carries. Fails closed: no entry, no frame.
#[inline(always)]
pub(crate) fn admit(ctx: &TcContext, pkt: &Pkt, rx: &Received) -> Result<Eth, DropReason> {
    let eth = match parse::eth_any(pkt) {
        Ok(eth) => eth,
        // Nothing to attribute the frame with: the peer alone says which reason.
        Err(reason) => {
            return Err(if peer(rx).is_some() {
                reason
            } else {
                refused(rx)
            });
        }
    };
    let Some(flags) = src(rx, &eth) else {
        return Err(refused(rx));
    };
    if flags & TUN_F_UNSECURED != 0 {
        return Ok(eth);
    }
    if ctx.vlan_tag_in_meta() {
        return Err(DropReason::VlanTagged);
    }
    parse::check_proto(eth.proto)?;
    match eth.proto {
        ETH_P_IP => ipv4::sanity(pkt)?,
        ETH_P_IPV6 => ipv6::sanity(pkt)?,
        // check_proto lets nothing else through.
        _ => {
            arp::sanity(pkt, &eth)?;
        }
    }
    Ok(eth)
}

/// The `TUN_F_*` flags of (VNI, outer source, Ethernet source), if admitted. The key is
/// built with word stores, as `l2::lookup_w`: `TunSrcKey` is four naturally aligned
/// `u32`s.
#[inline(always)]
fn src(rx: &Received, eth: &Eth) -> Option<u32> {
    let [a, b] = eth.src_w.1.to_ne_bytes();
    let words = [
        rx.vni,
        rx.remote_w,
        eth.src_w.0,
        u32::from_ne_bytes([a, b, 0, 0]),
    ];
    // SAFETY: TunSrcKey is #[repr(C)], 16 bytes of integers and byte arrays with explicit
    // padding, alignment 4: the layout is the words above.
    let key = unsafe { core::mem::transmute::<[u32; 4], TunSrcKey>(words) };
    // SAFETY: a map value pointer stays valid for the rest of the program run (RCU).
    TUN_SRCS.get_ptr(key).map(|p| unsafe { *p })
}

/// The `TUN_F_*` flags of (VNI, outer source) as a peer, if it is one.
#[inline(always)]
fn peer(rx: &Received) -> Option<u32> {
    // SAFETY: TunPeerKey is #[repr(C)], two u32-sized fields, alignment 4.
    let key = unsafe { core::mem::transmute::<[u32; 2], TunPeerKey>([rx.vni, rx.remote_w]) };
    // SAFETY: as above.
    TUN_PEERS.get_ptr(key).map(|p| unsafe { *p })
}

/// Why a frame `df_tun_srcs_v1` does not admit is dropped (slow path): a peer of the
/// network sending from a MAC it has no right to; a VNI not hosted here at all (nothing
/// here to protect or deliver to, as before admission existed); else a sender that is no
/// live chassis of the network.
#[inline(always)]
fn refused(rx: &Received) -> DropReason {
    if peer(rx).is_some() {
        DropReason::TunnelSrcMac
    } else if FLOOD.get_ptr(rx.vni).is_none() {
        DropReason::UnknownVni
    } else {
        DropReason::TunnelUnknownPeer
    }
}
