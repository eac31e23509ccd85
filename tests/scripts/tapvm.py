#!/usr/bin/env python3
"""A "VM" on a real tap device: opens /dev/net/tun with TUNSETIFF (IFF_TAP | IFF_NO_PI) on
an existing tap (run inside the hypervisor namespace) and writes Ethernet frames into it,
exactly as a hypervisor's VM process (qemu) does. What it writes is what the datapath sees
as the VM's traffic; what it reads is what the network delivers to the VM.

Steps, each with a deadline, result printed as one JSON object:
  1. legit ICMP echo request to the peer, repeated until the reply comes back (answers the
     peer's ARP requests for our IP on the way);
  2. a spoofed-source-IP echo request and a spoofed-source-MAC one, then a legitimate
     "fence" echo; once the fence's reply is back, a spoof that had passed would have
     been answered before it (the peer has a static neighbour entry for the spoofed IP).
"""

import argparse
import fcntl
import json
import logging
import os
import select
import struct
import time

logging.getLogger("scapy.runtime").setLevel(logging.ERROR)

from scapy.all import ARP, ICMP, IP, Ether, Raw  # noqa: E402

TUNSETIFF = 0x400454CA
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
FOREIGN_MAC = "fa:16:3e:66:66:66"


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ifname", required=True)
    p.add_argument("--mac", required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--peer-mac", required=True)
    p.add_argument("--peer-ip", required=True)
    p.add_argument("--spoof-ip", required=True)
    p.add_argument("--timeout", type=float, default=20.0)
    o = p.parse_args()

    fd = os.open("/dev/net/tun", os.O_RDWR)
    fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", o.ifname.encode(), IFF_TAP | IFF_NO_PI))
    result = {"legit": False, "spoof_ip_answered": False, "spoof_mac_answered": False, "fence": False, "arp_replies_sent": 0, "write_errors": []}
    replies = set()  # (id, seq) of echo replies read

    def echo(src_mac, src_ip, ident, seq):
        f = Ether(src=src_mac, dst=o.peer_mac) / IP(src=src_ip, dst=o.peer_ip) / ICMP(type=8, id=ident, seq=seq) / Raw(b"DFTTAP" + os.urandom(8))
        try:
            os.write(fd, bytes(f))
        except OSError as e:
            result["write_errors"].append(str(e))

    def pump(until):
        """Reads frames until `until` (monotonic): answers ARP for our IP, records replies."""
        while True:
            left = until - time.monotonic()
            if left <= 0:
                return
            r, _, _ = select.select([fd], [], [], left)
            if not r:
                return
            pkt = Ether(os.read(fd, 65535))
            if ARP in pkt and pkt[ARP].op == 1 and pkt[ARP].pdst == o.ip:
                rep = Ether(src=o.mac, dst=pkt.src) / ARP(op=2, hwsrc=o.mac, psrc=o.ip, hwdst=pkt[ARP].hwsrc, pdst=pkt[ARP].psrc)
                os.write(fd, bytes(rep))
                result["arp_replies_sent"] += 1
            elif ICMP in pkt and pkt[ICMP].type == 0:
                replies.add((pkt[ICMP].id, pkt[ICMP].seq))

    start = time.monotonic()
    deadline = start + o.timeout
    seq = 0
    while time.monotonic() < deadline and not result["legit"]:
        seq += 1
        echo(o.mac, o.ip, 0x4242, seq)
        pump(time.monotonic() + 0.2)
        result["legit"] = any(i == 0x4242 for i, _ in replies)
    result["legit_after_ms"] = int((time.monotonic() - start) * 1000)
    if result["legit"]:
        echo(o.mac, o.spoof_ip, 0x4343, 1)
        echo(FOREIGN_MAC, o.ip, 0x4444, 1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (0x4242, 1000) not in replies:
            echo(o.mac, o.ip, 0x4242, 1000)
            pump(time.monotonic() + 0.2)
        result["fence"] = (0x4242, 1000) in replies
        result["spoof_ip_answered"] = any(i == 0x4343 for i, _ in replies)
        result["spoof_mac_answered"] = any(i == 0x4444 for i, _ in replies)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
