#!/usr/bin/env python3
"""Bulk TCP with an integrity check, for the real-guest tests (the guest side is busybox nc).

  bulk.py recv --bind IP --port P --len N   listen, print "listening", accept one
                                            connection, read until EOF or N bytes, print
                                            "<bytes> <md5>"
  bulk.py send --host IP --port P --len N --seed S
                                            connect (retrying while refused, until
                                            --timeout), send N pseudo-random bytes from
                                            seed S, close; print "<bytes> <md5>"
"""

import argparse
import hashlib
import random
import socket
import sys
import time


def main():
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["recv", "send"])
    p.add_argument("--bind")
    p.add_argument("--host")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--len", type=int, required=True)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--timeout", type=float, default=60.0)
    o = p.parse_args()
    family = socket.AF_INET6 if ":" in (o.bind or o.host) else socket.AF_INET
    md5 = hashlib.md5()
    n = 0
    if o.mode == "recv":
        ls = socket.socket(family, socket.SOCK_STREAM)
        ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        ls.bind((o.bind, o.port))
        ls.listen(1)
        ls.settimeout(o.timeout)
        print("listening", flush=True)
        c, _ = ls.accept()
        c.settimeout(o.timeout)
        while n < o.len:
            b = c.recv(1 << 16)
            if not b:
                break
            md5.update(b)
            n += len(b)
        c.close()
    else:
        data = random.Random(o.seed).randbytes(o.len)
        deadline = time.monotonic() + o.timeout
        while True:
            try:
                c = socket.create_connection((o.host, o.port), timeout=5)
                break
            except (ConnectionRefusedError, socket.timeout, OSError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        c.settimeout(o.timeout)
        c.sendall(data)
        c.close()
        md5.update(data)
        n = len(data)
    print(f"{n} {md5.hexdigest()}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
