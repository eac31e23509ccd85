#!/usr/bin/env python3
"""Sends a gratuitous ARP (or an ARP reply) for an IP from a VM namespace, as keepalived
or an attacker would, for the shared-VIP tests; for an IPv6 address, an unsolicited
neighbour advertisement.

  garp.py --ip IP [--mac MAC] [--op request|reply] [--count N] [--iface eth0]

The frame's Ethernet source and ARP sender hardware address are --mac (default: the
interface's MAC); a request is gratuitous (spa = tpa = IP, broadcast), a reply is sent to
the broadcast address with spa = IP. IPv6: an NA from the address itself to all-nodes,
override flag set, solicited flag clear, target link-layer address = --mac.
"""

import argparse
import logging

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import (  # noqa: E402
    ARP,
    Ether,
    ICMPv6ND_NA,
    ICMPv6NDOptDstLLAddr,
    IPv6,
    sendp,
)

BCAST = "ff:ff:ff:ff:ff:ff"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", default="eth0")
    p.add_argument("--ip", required=True)
    p.add_argument("--mac")
    p.add_argument("--op", choices=["request", "reply"], default="request")
    p.add_argument("--count", type=int, default=1)
    a = p.parse_args()
    mac = a.mac
    if mac is None:
        with open("/sys/class/net/%s/address" % a.iface) as f:
            mac = f.read().strip()
    if ":" in a.ip:
        frame = (
            Ether(src=mac, dst="33:33:00:00:00:01")
            / IPv6(src=a.ip, dst="ff02::1", hlim=255)
            / ICMPv6ND_NA(tgt=a.ip, R=0, S=0, O=1)
            / ICMPv6NDOptDstLLAddr(lladdr=mac)
        )
    else:
        op = 1 if a.op == "request" else 2
        frame = Ether(src=mac, dst=BCAST) / ARP(
            op=op, hwsrc=mac, psrc=a.ip, hwdst=BCAST, pdst=a.ip
        )
    sendp(frame, iface=a.iface, count=a.count, verbose=False)


if __name__ == "__main__":
    main()
