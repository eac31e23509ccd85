#!/usr/bin/env python3
"""Resource-exhaustion attempts from a VM namespace, for the per-port limit tests.

  storm.py arp --count N --spa IP --targets PREFIX.FIRST-LAST [--iface eth0]
      N ARP requests (broadcast) from the interface's MAC and `spa` for addresses
      nobody has (cycling through the range), as fast as a raw socket sends them.
  storm.py udpflows --dst IP --port P --count N
      N UDP datagrams to dst:port, each from a fresh kernel socket (a new source port:
      a new flow for the conntrack table).

Prints the number of frames/datagrams sent.
"""

import argparse
import logging
import socket

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import ARP, Ether  # noqa: E402


def arp(a):
    with open("/sys/class/net/%s/address" % a.iface) as f:
        mac = f.read().strip()
    prefix, span = a.targets.rsplit(".", 1)
    first, last = (int(x) for x in span.split("-"))
    frames = [
        bytes(
            Ether(src=mac, dst="ff:ff:ff:ff:ff:ff")
            / ARP(op=1, hwsrc=mac, psrc=a.spa, pdst="%s.%d" % (prefix, t))
        )
        for t in range(first, last + 1)
    ]
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind((a.iface, 0))
    for i in range(a.count):
        s.send(frames[i % len(frames)])
    print(a.count)


def udpflows(a):
    sent = 0
    for _ in range(a.count):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.sendto(b"flow", (a.dst, a.port))
            sent += 1
        except OSError:
            pass
        finally:
            s.close()
    print(sent)


def main():
    p = argparse.ArgumentParser()
    sub = p.add_subparsers(dest="cmd", required=True)
    x = sub.add_parser("arp")
    x.add_argument("--iface", default="eth0")
    x.add_argument("--count", type=int, required=True)
    x.add_argument("--spa", required=True)
    x.add_argument("--targets", required=True)
    x.set_defaults(run=arp)
    x = sub.add_parser("udpflows")
    x.add_argument("--dst", required=True)
    x.add_argument("--port", type=int, required=True)
    x.add_argument("--count", type=int, required=True)
    x.set_defaults(run=udpflows)
    a = p.parse_args()
    a.run(a)


if __name__ == "__main__":
    main()
