#!/usr/bin/env python3
"""Drives one simulated VM for the integration tests (runs inside the VM's namespace).

Protocol: one JSON request per stdin line, one JSON response per stdout line.

  {"op": "send", "case": NAME, "args": {...}}
      builds the frames of case NAME (the table below), writes them raw on eth0 (or on
      args["iface"]) and answers {"ok": true, "n": frames, "sigs": [hex|null...]}; a sig is
      the frame from its L3 header on (it carries a random nonce), used to ask the peer
      whether the frame arrived. A kernel refusal answers {"ok": false, "errno": N, ...}.
  {"op": "seen", "sigs": [hex...]}     -> {"ok": true, "seen": [bool...]}
  {"op": "seen_tagged", "sigs": [...]} -> the same, counting only frames that carried a VLAN
                                          tag (in their bytes or in skb metadata)
  {"op": "neigh_seen"}                 -> {"ok": true, "arp_requests": [tpa...],
                                          "arp_replies": [[spa, sha]...], "na": [[tgt, tlla]...]}
  {"op": "stream_listen", "port": P}   -> starts counting UDP sequence numbers on port P
  {"op": "stream_stats"}               -> {"ok": true, "received": n, "max": m, "missing": k}
  {"op": "stream_start", "dst": IP, "port": P, "pps": R}   -> sends seq-numbered UDP
  {"op": "stream_stop"}                -> {"ok": true, "sent": n, "errors": e}

The sniffer (a raw AF_PACKET socket on eth0) keeps every frame received, so a test can
tell "dropped by the datapath" from "delivered" without sleeping: it sends a legitimate
fence frame after the attack and, once the fence has arrived, the attack would have too.
"""

import argparse
import collections
import errno
import json
import logging
import os
import random
import socket
import struct
import sys
import threading
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    ARP,
    BOOTP,
    DHCP,
    ICMP,
    IP,
    LLC,
    SNAP,
    TCP,
    UDP,
    Dot1AD,
    Dot1Q,
    Dot3,
    Ether,
    ICMPv6EchoRequest,
    ICMPv6ND_NA,
    ICMPv6ND_NS,
    ICMPv6ND_RA,
    ICMPv6NDOptDstLLAddr,
    ICMPv6NDOptMTU,
    ICMPv6NDOptPrefixInfo,
    ICMPv6NDOptSrcLLAddr,
    IPOption_NOP,
    IPOption_RR,
    IPOption_Router_Alert,
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    PadN,
    Raw,
)
from scapy.layers.dhcp6 import DHCP6_Advertise, DHCP6OptServerId  # noqa: E402
from scapy.layers.ppp import PPPoE, PPPoED  # noqa: E402
from scapy.contrib.mpls import MPLS  # noqa: E402

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_VLAN_VALID = 1 << 4
FOREIGN_MAC = "fa:16:3e:66:66:66"
BCAST = "ff:ff:ff:ff:ff:ff"
NOSIG = {"arp_trunc"}


def mac_to_ll(mac):
    """EUI-64 link-local address of a MAC (what the kernel and the agent derive)."""
    b = bytes(int(x, 16) for x in mac.split(":"))
    eui = bytes([b[0] ^ 2]) + b[1:3] + b"\xff\xfe" + b[3:]
    return socket.inet_ntop(socket.AF_INET6, b"\xfe\x80" + b"\x00" * 6 + eui)


def solicited_node(ip6):
    raw = socket.inet_pton(socket.AF_INET6, ip6)
    ip = socket.inet_ntop(socket.AF_INET6, bytes.fromhex("ff0200000000000000000001ff") + raw[13:])
    mac = "33:33:ff:%02x:%02x:%02x" % (raw[13], raw[14], raw[15])
    return ip, mac


class Ctx:
    def __init__(self, o, args):
        self.a = args
        self.mac = args.get("src_mac", o.mac)
        s = args.get("src_ip")
        self.src4 = s if s and ":" not in s else o.ip4
        self.src6 = s if s and ":" in s else o.ip6
        self.ll = mac_to_ll(o.mac)
        self.port_mac = o.mac
        self.peer_mac = args.get("dst_mac", o.peer_mac)
        self.peer_ip4 = args.get("dst_ip", o.peer_ip4)
        self.peer_ip6 = args.get("dst_ip6", o.peer_ip6)
        self.peer_ll = mac_to_ll(o.peer_mac)

    def marker(self):
        return b"DFTM" + os.urandom(6).hex().encode()

    def fl(self):
        return random.randrange(1, 1 << 20)

    def eth(self, dst=None, src=None):
        return Ether(src=src or self.mac, dst=dst or self.peer_mac)

    def ip4(self, **kw):
        kw.setdefault("src", self.src4)
        kw.setdefault("dst", self.peer_ip4)
        kw.setdefault("id", random.randrange(1, 65535))
        return IP(**kw)

    def ip6(self, **kw):
        kw.setdefault("src", self.src6)
        kw.setdefault("dst", self.peer_ip6)
        kw.setdefault("fl", self.fl())
        return IPv6(**kw)

    def udp4(self, **kw):
        return self.eth() / self.ip4(**kw) / UDP(sport=40000, dport=40000) / Raw(self.marker())

    def udp6(self, **kw):
        return self.eth() / self.ip6(**kw) / UDP(sport=40000, dport=40000) / Raw(self.marker())


def patch(raw, off, fmt, *vals):
    raw = bytearray(raw)
    struct.pack_into(fmt, raw, off, *vals)
    return bytes(raw)


def arp_raw(c, htype=1, ptype=0x0800, hlen=6, plen=4, op=1, tail=b""):
    """An ARP body built by hand, for the lengths scapy will not emit."""
    sha = bytes(int(x, 16) for x in c.mac.split(":")) + b"\x00" * max(0, hlen - 6)
    spa = socket.inet_aton(c.src4) + b"\x00" * max(0, plen - 4)
    tha = b"\x00" * hlen
    tpa = socket.inet_aton(c.peer_ip4) + b"\x00" * max(0, plen - 4)
    body = struct.pack("!HHBBH", htype, ptype, hlen, plen, op) + sha + spa + tha + tpa
    return bytes(Ether(src=c.mac, dst=BCAST, type=0x0806)) + body + tail


def icmpv6_bytes(c, src, dst, l4):
    """ICMPv6 message bytes with the checksum over (src, dst), to place after ext headers."""
    return bytes(IPv6(src=src, dst=dst) / l4)[40:]


def dhcp_discover(c, chaddr, msg="discover"):
    ch = bytes(int(x, 16) for x in chaddr.split(":"))
    return (
        Ether(src=c.mac, dst=BCAST)
        / IP(src="0.0.0.0", dst="255.255.255.255", id=random.randrange(1, 65535))
        / UDP(sport=68, dport=67)
        / BOOTP(op=1, chaddr=ch + b"\x00" * 10, xid=random.randrange(1 << 32), flags=0x8000)
        / DHCP(options=[("message-type", msg), "end"])
        / Raw(c.marker())
    )


def ra(c):
    return ICMPv6ND_RA(routerlifetime=1800) / ICMPv6NDOptPrefixInfo(prefix="2001:db8:6666::", prefixlen=64) / ICMPv6NDOptMTU(mtu=1400)


def ra_base(c, nh):
    return Ether(src=c.mac, dst="33:33:00:00:00:01") / IPv6(src=c.ll, dst="ff02::1", hlim=255, fl=c.fl(), nh=nh)


def case_frames(name, c):
    a = c.a
    m = c.marker
    if name == "udp4":
        return [c.udp4()]
    if name == "udp6":
        return [c.udp6()]
    if name == "udp6_ll":
        return [c.eth() / c.ip6(src=c.ll, dst=c.peer_ll) / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "tcp_syn":
        return [c.eth() / c.ip4() / TCP(sport=40001, dport=40002, flags="S") / Raw(m())]
    if name == "icmp_echo":
        return [c.eth() / c.ip4() / ICMP(id=7, seq=1) / Raw(m())]
    if name == "icmp6_echo":
        return [c.eth() / c.ip6() / ICMPv6EchoRequest(id=7, seq=1) / Raw(m())]
    # [1] source MAC
    if name == "mac_spoof":
        return [c.eth(src=FOREIGN_MAC) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    # [2] source IP
    if name == "ip4_spoof":
        return [c.udp4(src=a.get("spoof", "192.0.2.66"))]
    if name == "ip6_spoof":
        return [c.udp6(src=a.get("spoof", "2001:db8::66"))]
    if name == "dhcp_discover":
        return [dhcp_discover(c, c.port_mac)]
    if name == "dhcp_request":
        return [dhcp_discover(c, c.port_mac, "request")]
    if name == "dhcp_discover_bad_chaddr":
        return [dhcp_discover(c, FOREIGN_MAC)]
    if name == "ip4_zero_src_udp":
        return [c.eth(dst=BCAST) / c.ip4(src="0.0.0.0", dst="255.255.255.255") / UDP(sport=40000, dport=40000) / Raw(m())]
    # [3] ARP
    if name == "arp_request":
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=1, hwsrc=c.mac, psrc=c.src4, pdst=c.peer_ip4) / Raw(m())]
    if name == "arp_reply":
        return [c.eth() / ARP(op=2, hwsrc=c.mac, psrc=c.src4, hwdst=c.peer_mac, pdst=c.peer_ip4) / Raw(m())]
    if name == "garp":  # gratuitous ARP request: spa = tpa
        ip = a.get("ip", c.src4)
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=1, hwsrc=c.mac, psrc=ip, hwdst="00:00:00:00:00:00", pdst=ip) / Raw(m())]
    if name == "garp_reply":
        ip = a.get("ip", c.src4)
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=2, hwsrc=c.mac, psrc=ip, hwdst=BCAST, pdst=ip) / Raw(m())]
    if name == "arp_sha_mismatch":
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=1, hwsrc=FOREIGN_MAC, psrc=c.src4, pdst=c.peer_ip4) / Raw(m())]
    if name == "arp_spa_spoof":
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=1, hwsrc=c.mac, psrc="192.0.2.66", pdst=c.peer_ip4) / Raw(m())]
    if name == "arp_reply_spoof":
        return [c.eth() / ARP(op=2, hwsrc=c.mac, psrc="192.0.2.66", hwdst=c.peer_mac, pdst=c.peer_ip4) / Raw(m())]
    if name == "arp_probe":  # RFC 5227 probe: spa 0.0.0.0
        return [Ether(src=c.mac, dst=BCAST) / ARP(op=1, hwsrc=c.mac, psrc="0.0.0.0", pdst=a.get("target", "192.0.2.77")) / Raw(m())]
    # [5] neighbour discovery
    if name == "na":
        tgt = a.get("target", c.src6)
        tlla = a.get("tlla", c.mac)
        return [
            Ether(src=c.mac, dst="33:33:00:00:00:01")
            / c.ip6(dst="ff02::1", hlim=255)
            / ICMPv6ND_NA(tgt=tgt, R=0, S=0, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=tlla)
        ]
    if name == "ns":
        tgt = a.get("target", c.peer_ip6)
        sn_ip, sn_mac = solicited_node(tgt)
        return [
            Ether(src=c.mac, dst=sn_mac)
            / c.ip6(dst=sn_ip, hlim=255)
            / ICMPv6ND_NS(tgt=tgt)
            / ICMPv6NDOptSrcLLAddr(lladdr=a.get("slla", c.mac))
        ]
    if name == "dad_ns":
        tgt = a.get("target", c.src6)
        sn_ip, sn_mac = solicited_node(tgt)
        return [Ether(src=c.mac, dst=sn_mac) / c.ip6(src="::", dst=sn_ip, hlim=255) / ICMPv6ND_NS(tgt=tgt)]
    # [6] router advertisements
    if name == "ra":
        return [ra_base(c, 58) / Raw(icmpv6_bytes(c, c.ll, "ff02::1", ra(c)))]
    if name == "ra_hbh":
        return [ra_base(c, 0) / IPv6ExtHdrHopByHop(nh=58) / Raw(icmpv6_bytes(c, c.ll, "ff02::1", ra(c)))]
    if name == "ra_dstopt":
        return [ra_base(c, 60) / IPv6ExtHdrDestOpt(nh=58) / Raw(icmpv6_bytes(c, c.ll, "ff02::1", ra(c)))]
    if name == "ra_hbh_dstopt":
        return [
            ra_base(c, 0)
            / IPv6ExtHdrHopByHop(nh=60)
            / IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=b"\x00" * 12)])
            / Raw(icmpv6_bytes(c, c.ll, "ff02::1", ra(c)))
        ]
    if name == "ra_frag":
        # First fragment of an RA: the ICMPv6 header is inside, the options are not.
        body = icmpv6_bytes(c, c.ll, "ff02::1", ra(c))
        return [ra_base(c, 44) / IPv6ExtHdrFragment(nh=58, m=1, offset=0, id=random.randrange(1 << 32)) / Raw(body[:24])]
    if name == "ra_frag_chain":
        # First fragment that ends inside a destination-options header: the RA's ICMPv6
        # header would only come in the second fragment (RFC 7112 forbids this).
        dst = bytes(IPv6ExtHdrDestOpt(nh=58, options=[PadN(optdata=b"\x00" * 36)]))
        return [ra_base(c, 44) / IPv6ExtHdrFragment(nh=60, m=1, offset=0, id=random.randrange(1 << 32)) / Raw(dst[:16])]
    # [7] DHCP servers
    if name == "dhcp_server":
        opts = a.get("ip_options")
        ipkw = {"dst": "255.255.255.255"}
        if opts:
            ipkw["options"] = [IPOption_Router_Alert()]
        return [
            Ether(src=c.mac, dst=BCAST)
            / c.ip4(**ipkw)
            / UDP(sport=67, dport=68)
            / BOOTP(op=2, yiaddr="192.0.2.99", chaddr=b"\xfa\x16\x3e\x00\x00\x0b" + b"\x00" * 10, xid=random.randrange(1 << 32))
            / DHCP(options=[("message-type", "offer"), ("server_id", c.src4), "end"])
            / Raw(m())
        ]
    if name == "dhcpv6_server":
        return [
            c.eth()
            / c.ip6(src=c.ll, dst=c.peer_ll)
            / UDP(sport=547, dport=546)
            / DHCP6_Advertise(trid=random.randrange(1 << 24))
            / DHCP6OptServerId()
            / Raw(m())
        ]
    # [8] MAC flood
    if name == "mac_flood":
        n = int(a.get("n", 200))
        out = []
        for _ in range(n):
            b = bytearray(os.urandom(6))
            b[0] = (b[0] & 0xFC) | 0x02  # unicast, locally administered
            mac = ":".join("%02x" % x for x in b)
            out.append(Ether(src=mac, dst=c.peer_mac) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m()))
        return out
    # [9] tags
    if name == "vlan_8021q":
        return [c.eth() / Dot1Q(vlan=100) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "vlan_prio":  # priority tag: VID 0
        return [c.eth() / Dot1Q(vlan=0, prio=5) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "vlan_88a8":
        return [c.eth() / Dot1AD(vlan=200) / Dot1Q(vlan=100) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "vlan_9100":
        return [Ether(src=c.mac, dst=c.peer_mac, type=0x9100) / Dot1Q(vlan=100) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "vlan_subif":
        # Sent untagged on a VLAN subinterface: the kernel adds the tag (in skb metadata
        # when the veth offers tx-vlan offload).
        return [c.udp4()]
    # [11] IPv4 header lengths and options
    if name == "ip4_ihl_lt5":
        raw = bytes(c.udp4())
        return [patch(raw, 14, "!B", 0x44)]
    if name == "ip4_ihl_gt_totlen":
        raw = bytes(c.eth() / c.ip4(options=[IPOption_NOP()] * 40) / UDP(sport=40000, dport=40000) / Raw(m()))
        return [patch(raw, 16, "!H", 40)]  # ihl*4 = 60 > tot_len = 40
    if name == "ip4_totlen_gt_frame":
        raw = bytes(c.udp4())
        return [patch(raw, 16, "!H", 1000)]
    if name == "ip4_options":
        return [c.eth() / c.ip4(options=[IPOption_Router_Alert()]) / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "ip4_options_max":
        return [c.eth() / c.ip4(options=[IPOption_RR(length=39, routers=["0.0.0.0"] * 9)]) / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "ip4_options_tcp":
        return [c.eth() / c.ip4(options=[IPOption_NOP()] * 8) / TCP(sport=40001, dport=40002, flags="S") / Raw(m())]
    if name == "ip4_options_tcp_doff":
        raw = bytes(c.eth() / c.ip4(options=[IPOption_NOP()] * 8) / TCP(sport=40001, dport=40002, flags="S") / Raw(m()))
        return [patch(raw, 14 + 28 + 12, "!B", 0x40)]  # doff 4 at ihl*4 = 28
    # [12] ethertypes
    if name == "lldp":
        return [Ether(src=c.mac, dst="01:80:c2:00:00:0e", type=0x88CC) / Raw(b"\x02\x07\x04" + bytes.fromhex(c.mac.replace(":", "")) + b"\x00\x00" + m())]
    if name == "pppoe_disc":
        return [Ether(src=c.mac, dst=BCAST) / PPPoED(code=0x09, sessionid=0) / Raw(b"\x01\x01\x00\x00" + m())]
    if name == "pppoe_sess":
        return [c.eth() / PPPoE(sessionid=0x1234) / Raw(b"\x00\x21") / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "mpls":
        return [c.eth() / MPLS(label=100, s=1, ttl=64) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    if name == "llc_8023":  # 802.3 length field + LLC/SNAP, no ethertype
        return [Dot3(src=c.mac, dst=c.peer_mac) / LLC() / SNAP(code=0x0800) / c.ip4() / UDP(sport=40000, dport=40000) / Raw(m())]
    # [13] truncated and malformed headers
    if name == "eth_trunc":
        return [bytes(c.eth())[:10]]
    if name == "arp_trunc":
        return [arp_raw(c)[: 14 + 20]]
    if name == "arp_hlen":
        return [arp_raw(c, hlen=8, tail=m())]
    if name == "arp_plen":
        return [arp_raw(c, plen=16, tail=m())]
    if name == "arp_htype":
        return [arp_raw(c, htype=6, tail=m())]
    if name == "arp_bad_op":
        return [arp_raw(c, op=9, tail=m())]
    if name == "ip4_trunc":
        return [bytes(c.udp4())[: 14 + 12]]
    if name == "ip6_trunc":
        return [bytes(c.udp6())[: 14 + 30]]
    if name == "ip6_plen_gt_frame":
        raw = bytes(c.udp6())
        return [patch(raw, 14 + 4, "!H", 1000)]
    if name == "tcp_trunc":
        raw = bytes(c.eth() / c.ip4() / TCP(sport=40001, dport=40002, flags="S"))
        raw = raw[: 14 + 20 + 10]
        return [patch(raw, 16, "!H", 30)]  # consistent tot_len, 10 bytes of TCP
    if name == "tcp_doff_lt5":
        return [c.eth() / c.ip4() / TCP(sport=40001, dport=40002, flags="S", dataofs=4) / Raw(m())]
    if name == "tcp_doff_beyond":
        raw = bytes(c.eth() / c.ip4() / TCP(sport=40001, dport=40002, flags="S"))
        return [patch(raw, 14 + 20 + 12, "!B", 0xF0)]  # doff 15 = 60 bytes, only 20 there
    if name == "udp_trunc":
        raw = bytes(c.eth() / c.ip4() / UDP(sport=40000, dport=40000))[: 14 + 20 + 4]
        return [patch(raw, 16, "!H", 24)]
    if name == "icmp_trunc":
        raw = bytes(c.eth() / c.ip4() / ICMP())[: 14 + 20 + 2]
        return [patch(raw, 16, "!H", 22)]
    if name == "tcp6_doff_lt5":
        return [c.eth() / c.ip6() / TCP(sport=40001, dport=40002, flags="S", dataofs=2) / Raw(m())]
    if name == "udp6_trunc":
        raw = bytes(c.eth() / c.ip6() / UDP(sport=40000, dport=40000))[: 14 + 40 + 4]
        return [patch(raw, 14 + 4, "!H", 4)]
    raise KeyError("unknown case %r" % name)


def l3_offset(raw):
    off = 12
    while off + 2 <= len(raw):
        (t,) = struct.unpack_from("!H", raw, off)
        if t in (0x8100, 0x88A8, 0x9100):
            off += 4
            continue
        return off + 2
    return None


def sig_of(raw):
    off = l3_offset(raw)
    if off is None or len(raw) - off < 20:
        return None
    return raw[off:].hex()


class Sniffer(threading.Thread):
    def __init__(self, iface):
        super().__init__(daemon=True)
        self.s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        try:
            self.s.setsockopt(socket.SOL_SOCKET, 33, 8 << 20)  # SO_RCVBUFFORCE
        except OSError:
            pass
        # A tag the kernel keeps in skb metadata is not in the bytes we read: ask for it.
        self.s.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)
        self.s.bind((iface, ETH_P_ALL))
        self.frames = collections.deque(maxlen=100000)  # (bytes, tagged)
        self.lock = threading.Lock()

    def run(self):
        while True:
            data, anc, _flags, addr = self.s.recvmsg(65535, socket.CMSG_SPACE(32))
            if addr[2] == PACKET_OUTGOING:
                continue
            tagged = l3_offset(data) not in (None, 14)
            for level, kind, cdata in anc:
                if level == SOL_PACKET and kind == PACKET_AUXDATA and len(cdata) >= 4:
                    (status,) = struct.unpack_from("=I", cdata)
                    tagged = tagged or bool(status & TP_STATUS_VLAN_VALID)
            with self.lock:
                self.frames.append((data, tagged))

    def seen(self, sigs, tagged_only=False):
        want = [bytes.fromhex(s) if s else None for s in sigs]
        with self.lock:
            frames = [f for f, t in self.frames if t or not tagged_only]
        return [bool(w) and any(w in f for f in frames) for w in want]

    def neigh(self):
        """ARP requests (their tpa), ARP replies (spa, sha) and NAs (target, TLLA) received."""
        with self.lock:
            frames = [f for f, _ in self.frames]
        out = {"arp_requests": [], "arp_replies": [], "na": []}
        for f in frames:
            if len(f) >= 42 and f[12:14] == b"\x08\x06":
                op = struct.unpack_from("!H", f, 20)[0]
                if op == 1:
                    out["arp_requests"].append(socket.inet_ntoa(f[38:42]))
                elif op == 2:
                    sha = ":".join("%02x" % x for x in f[22:28])
                    out["arp_replies"].append([socket.inet_ntoa(f[28:32]), sha])
            elif len(f) >= 86 and f[12:14] == b"\x86\xdd" and f[20] == 58 and f[54] == 136:
                tgt = socket.inet_ntop(socket.AF_INET6, f[62:78])
                tlla = ":".join("%02x" % x for x in f[80:86]) if f[78] == 2 else None
                out["na"].append([tgt, tlla])
        return out


class Stream:
    def __init__(self):
        self.rx_seqs = set()
        self.rx_max = -1
        self.rx_lock = threading.Lock()
        self.tx_stop = threading.Event()
        self.tx_thread = None
        self.tx_sent = 0
        self.tx_errors = 0

    def listen(self, port, ip):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind((ip, port))

        def rx():
            while True:
                data = s.recv(64)
                if len(data) >= 8:
                    (seq,) = struct.unpack_from("!Q", data)
                    with self.rx_lock:
                        self.rx_seqs.add(seq)
                        self.rx_max = max(self.rx_max, seq)

        threading.Thread(target=rx, daemon=True).start()

    def stats(self):
        with self.rx_lock:
            n = len(self.rx_seqs)
            mx = self.rx_max
            missing = [i for i in range(mx + 1) if i not in self.rx_seqs][:20]
        return {"received": n, "max": mx, "missing": (mx + 1) - n, "first_missing": missing}

    def start(self, dst, port, pps):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        interval = 1.0 / pps

        def tx():
            seq = 0
            t = time.monotonic()
            while not self.tx_stop.is_set():
                try:
                    s.sendto(struct.pack("!Q", seq) + b"DFTSTREAM", (dst, port))
                    seq += 1
                    self.tx_sent = seq
                except OSError:
                    self.tx_errors += 1
                t += interval
                d = t - time.monotonic()
                if d > 0:
                    time.sleep(d)

        self.tx_thread = threading.Thread(target=tx, daemon=True)
        self.tx_thread.start()

    def stop(self):
        self.tx_stop.set()
        if self.tx_thread:
            self.tx_thread.join()
        return {"sent": self.tx_sent, "errors": self.tx_errors}


def drain(sock):
    while True:
        sock.recv(65535)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", default="eth0")
    p.add_argument("--mac", required=True)
    p.add_argument("--ip4", required=True)
    p.add_argument("--ip6", required=True)
    p.add_argument("--peer-mac", required=True)
    p.add_argument("--peer-ip4", required=True)
    p.add_argument("--peer-ip6", required=True)
    o = p.parse_args()
    sniffer = Sniffer(o.iface)
    sniffer.start()
    stream = Stream()
    socks = {}

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    # Probes go to UDP port 40000: bind it so the kernel answers them with nothing
    # (no ICMP port unreachable), keeping the datapath counters about the sender only.
    for fam, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
        try:
            u = socket.socket(fam, socket.SOCK_DGRAM)
            if fam == socket.AF_INET6:
                u.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            u.bind((addr, 40000))
            threading.Thread(target=drain, args=(u,), daemon=True).start()
        except OSError:
            pass
    out({"ok": True, "ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "send":
                args = req.get("args", {})
                iface = args.get("iface", o.iface)
                frames = [bytes(f) for f in case_frames(req["case"], Ctx(o, args))]
                if iface not in socks:
                    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
                    s.bind((iface, 0))
                    socks[iface] = s
                try:
                    for f in frames:
                        socks[iface].send(f)
                except OSError as e:
                    out({"ok": False, "errno": e.errno, "error": "%s: %s" % (errno.errorcode.get(e.errno, "?"), e)})
                    continue
                # A truncated ARP has no room for a nonce: its bytes match any ARP request.
                sigs = [None if req["case"] in NOSIG else sig_of(f) for f in frames]
                macs = [":".join("%02x" % x for x in f[6:12]) for f in frames]
                out({"ok": True, "n": len(frames), "sigs": sigs, "src_macs": macs})
            elif op == "seen":
                out({"ok": True, "seen": sniffer.seen(req["sigs"])})
            elif op == "seen_tagged":
                out({"ok": True, "seen": sniffer.seen(req["sigs"], tagged_only=True)})
            elif op == "neigh_seen":
                out(dict(ok=True, **sniffer.neigh()))
            elif op == "stream_listen":
                stream.listen(req["port"], req.get("ip", o.ip4))
                out({"ok": True})
            elif op == "stream_stats":
                out(dict(ok=True, **stream.stats()))
            elif op == "stream_start":
                stream.start(req["dst"], req["port"], req.get("pps", 500))
                out({"ok": True})
            elif op == "stream_stop":
                out(dict(ok=True, **stream.stop()))
            else:
                out({"ok": False, "error": "unknown op %r" % op})
        except Exception as e:  # report, keep serving
            out({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})


if __name__ == "__main__":
    main()
