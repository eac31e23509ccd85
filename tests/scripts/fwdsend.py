#!/usr/bin/env python3
"""Sends crafted UDP frames from a VM namespace for the forwarding tests.

  fwdsend.py --dst-mac MAC --src-ip IP --dst-ip IP --payload TEXT
             [--ttl N] [--count N] [--pad N] [--iface eth0]

The source MAC is the interface's. IPv4 or IPv6 follows the destination address; --ttl
sets the IPv4 TTL or the IPv6 hop limit; --pad appends zero bytes after the payload. The
test finds the frames by their payload in captures of the receivers.
"""

import argparse
import logging
import socket

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import IP, UDP, Ether, IPv6, Raw  # noqa: E402


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--iface", default="eth0")
    p.add_argument("--dst-mac", required=True)
    p.add_argument("--src-ip", required=True)
    p.add_argument("--dst-ip", required=True)
    p.add_argument("--payload", required=True)
    p.add_argument("--ttl", type=int, default=64)
    p.add_argument("--count", type=int, default=1)
    p.add_argument("--pad", type=int, default=0)
    a = p.parse_args()
    with open("/sys/class/net/%s/address" % a.iface) as f:
        src_mac = f.read().strip()
    if ":" in a.dst_ip:
        l3 = IPv6(src=a.src_ip, dst=a.dst_ip, hlim=a.ttl)
    else:
        l3 = IP(src=a.src_ip, dst=a.dst_ip, ttl=a.ttl, flags="DF")
    frame = (
        Ether(src=src_mac, dst=a.dst_mac)
        / l3
        / UDP(sport=40000, dport=40009)
        / Raw(a.payload.encode() + b"\x00" * a.pad)
    )
    raw = bytes(frame)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    for _ in range(a.count):
        s.send(raw)
    print(len(raw))


if __name__ == "__main__":
    main()
