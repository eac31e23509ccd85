#!/usr/bin/env python3
"""Sends VXLAN datagrams to a hypervisor from a host on the underlay, as an attacker that
is no chassis would, for the tunnel admission tests.

  vxlan_inject.py --dst UNDERLAY_IP --vni N --kind KIND --src-mac MAC --dst-mac MAC
                  --src-ip IP --dst-ip IP --payload TEXT [--count N]

KIND is the inner frame:
  garp      gratuitous ARP for --src-ip from --src-mac (broadcast; --dst-* unused)
  dhcp      DHCP server reply (offer) from --src-ip:67 to --dst-ip:68
  tagged    802.1Q (VID 10) tagged UDP frame
  tcp_syn   TCP SYN from --src-ip:40000 to --dst-ip:22
  udp       plain UDP from --src-ip to --dst-ip

Every inner frame carries --payload after its last header (ARP: as Ethernet padding), so
the test finds it in captures. The datagram goes out of the namespace's own stack: its
outer source is the namespace's underlay address.
"""

import argparse
import logging
import socket

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    ARP,
    BOOTP,
    DHCP,
    IP,
    TCP,
    UDP,
    Dot1Q,
    Ether,
    Raw,
)

BCAST = "ff:ff:ff:ff:ff:ff"
VXLAN_PORT = 4789


def inner(a):
    mark = Raw(a.payload.encode())
    if a.kind == "garp":
        return (
            Ether(src=a.src_mac, dst=BCAST)
            / ARP(op=1, hwsrc=a.src_mac, psrc=a.src_ip, hwdst="00:00:00:00:00:00", pdst=a.src_ip)
            / mark
        )
    eth = Ether(src=a.src_mac, dst=a.dst_mac)
    ip = IP(src=a.src_ip, dst=a.dst_ip)
    if a.kind == "dhcp":
        return (
            eth
            / ip
            / UDP(sport=67, dport=68)
            / BOOTP(op=2, yiaddr=a.dst_ip, siaddr=a.src_ip, chaddr=bytes.fromhex(a.dst_mac.replace(":", "")))
            / DHCP(options=[("message-type", "offer"), ("router", a.src_ip), "end"])
            / mark
        )
    if a.kind == "tagged":
        return eth / Dot1Q(vlan=10) / ip / UDP(sport=40000, dport=40009) / mark
    if a.kind == "tcp_syn":
        return eth / ip / TCP(sport=40000, dport=22, flags="S") / mark
    return eth / ip / UDP(sport=40000, dport=40009) / mark


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dst", required=True)
    p.add_argument("--vni", type=int, required=True)
    p.add_argument(
        "--kind", choices=["garp", "dhcp", "tagged", "tcp_syn", "udp"], required=True
    )
    p.add_argument("--src-mac", required=True)
    p.add_argument("--dst-mac", default=BCAST)
    p.add_argument("--src-ip", required=True)
    p.add_argument("--dst-ip", default="0.0.0.0")
    p.add_argument("--payload", required=True)
    p.add_argument("--count", type=int, default=1)
    a = p.parse_args()
    # VXLAN header (RFC 7348): flags with the I bit, reserved, VNI, reserved.
    vxlan = bytes([0x08, 0, 0, 0]) + (a.vni << 8).to_bytes(4, "big")
    data = vxlan + bytes(inner(a))
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(a.count):
        s.sendto(data, (a.dst, VXLAN_PORT))
    print(len(data))


if __name__ == "__main__":
    main()
