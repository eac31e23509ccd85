#!/usr/bin/env python3
"""Real flows (kernel sockets) and crafted frames (scapy) for the security-group tests;
runs inside one VM namespace.

Protocol: one JSON request per stdin line, one JSON response per stdout line; the first
line out is {"ok": true, "ready": true}. Every address is IPv4 or IPv6 by its spelling.

Servers (dual-stack, any local address):
  {"op": "listen", "proto": "tcp"|"udp", "port": P, "echo": bool}
      TCP: accepts connections and counts the bytes read; echo writes them back.
      UDP: records each datagram (first 64 bytes as text, its length, its source); echo
      sends it back to its source.
  {"op": "stats", "proto": ..., "port": P}
      -> {"bytes", "conns", "peers", "datagrams": [[text, len, src]...]}

Clients:
  {"op": "tcp_connect", "dst", "port", "src"?, "timeout", "payload"}
      -> {"connected": bool, "echoed": bool, "err": str|null}
  {"op": "udp_send", "dst", "port", "src"?, "sport"?, "payload", "size"?, "wait": secs}
      sends one datagram (padded to `size` bytes, fragmentation allowed: DF off) and
      waits up to `wait` s for an answer -> {"reply": bool, "reply_len": n}
  {"op": "stream_start", "dst", "port", "src"?}   a TCP connection sending without pause
  {"op": "stream_stop"} -> {"sent": bytes, "err": str|null}

Crafted frames, written raw on eth0 (source MAC = eth0's):
  {"op": "craft", "kind": K, "dst_mac", "src", "dst", ...}  -> {"n": frames}
      K = tcp (sport, dport, flags, seq, ack, payload), udp (sport, dport, payload),
      echo (type "request"|"reply", id, seq, payload), the fragment attacks
      frag_no_first, frag_tiny, frag_overlap (payload, id), and icmp_error (a port
      unreachable quoting the UDP datagram qsrc:qsport -> qdst:qdport, payload after its
      header). See `craft`.
"""

import json
import socket
import sys
import threading

IP_MTU_DISCOVER = 10
IP_PMTUDISC_DONT = 0
IPV6_MTU_DISCOVER = 23
IPV6_PMTUDISC_DONT = 0


def family(addr):
    return socket.AF_INET6 if ":" in addr else socket.AF_INET


def plain(addr):
    """An IPv4-mapped IPv6 address (dual-stack sockets) as plain IPv4."""
    return addr[7:] if addr.startswith("::ffff:") else addr


class Server:
    def __init__(self, proto, port, echo):
        self.lock = threading.Lock()
        self.bytes = 0
        self.conns = 0
        self.peers = []
        self.datagrams = []
        self.echo = echo
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        s = socket.socket(socket.AF_INET6, kind)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        s.bind(("::", port))
        self.sock = s
        if proto == "tcp":
            s.listen(64)
            target = self.accept
        else:
            target = self.recv_udp
        threading.Thread(target=target, daemon=True).start()

    def accept(self):
        while True:
            c, addr = self.sock.accept()
            with self.lock:
                self.conns += 1
                self.peers.append(plain(addr[0]))
            threading.Thread(target=self.serve, args=(c,), daemon=True).start()

    def serve(self, c):
        try:
            while True:
                data = c.recv(1 << 16)
                if not data:
                    break
                with self.lock:
                    self.bytes += len(data)
                if self.echo:
                    c.sendall(data)
        except OSError:
            pass
        finally:
            c.close()

    def recv_udp(self):
        while True:
            data, addr = self.sock.recvfrom(1 << 16)
            with self.lock:
                self.bytes += len(data)
                text = data[:64].decode("ascii", "replace")
                self.datagrams.append([text, len(data), plain(addr[0])])
            if self.echo:
                try:
                    self.sock.sendto(data, addr)
                except OSError:
                    pass

    def stats(self):
        with self.lock:
            return {
                "bytes": self.bytes,
                "conns": self.conns,
                "peers": list(self.peers),
                "datagrams": list(self.datagrams),
            }


def tcp_connect(req):
    dst = req["dst"]
    s = socket.socket(family(dst), socket.SOCK_STREAM)
    s.settimeout(req.get("timeout", 2.0))
    payload = req.get("payload", "hello").encode()
    out = {"connected": False, "echoed": False, "err": None}
    try:
        if req.get("src"):
            s.bind((req["src"], 0))
        s.connect((dst, req["port"]))
        out["connected"] = True
        s.sendall(payload)
        got = b""
        while len(got) < len(payload):
            d = s.recv(len(payload) - len(got))
            if not d:
                break
            got += d
        out["echoed"] = got == payload
    except OSError as e:
        out["err"] = str(e) or type(e).__name__
    finally:
        s.close()
    return out


def udp_send(req):
    dst = req["dst"]
    fam = family(dst)
    s = socket.socket(fam, socket.SOCK_DGRAM)
    # Let the kernel fragment datagrams larger than the MTU (DF off / no PMTU discovery).
    if fam == socket.AF_INET:
        s.setsockopt(socket.IPPROTO_IP, IP_MTU_DISCOVER, IP_PMTUDISC_DONT)
    else:
        s.setsockopt(socket.IPPROTO_IPV6, IPV6_MTU_DISCOVER, IPV6_PMTUDISC_DONT)
    if req.get("src") or req.get("sport"):
        s.bind((req.get("src") or ("::" if fam == socket.AF_INET6 else "0.0.0.0"), req.get("sport", 0)))
    data = req.get("payload", "ping").encode()
    size = req.get("size", 0)
    if size > len(data):
        data += b"." * (size - len(data))
    out = {"reply": False, "reply_len": 0, "err": None}
    try:
        s.sendto(data, (dst, req["port"]))
        wait = req.get("wait", 0)
        if wait > 0:
            s.settimeout(wait)
            r = s.recv(1 << 16)
            out["reply"] = True
            out["reply_len"] = len(r)
    except OSError as e:
        out["err"] = str(e) or type(e).__name__
    finally:
        s.close()
    return out


class Stream:
    """One TCP connection writing as fast as the path takes it."""

    def __init__(self, req):
        dst = req["dst"]
        self.sock = socket.socket(family(dst), socket.SOCK_STREAM)
        self.sock.settimeout(5)
        if req.get("src"):
            self.sock.bind((req["src"], 0))
        self.sock.connect((dst, req["port"]))
        self.sock.settimeout(None)
        self.sent = 0
        self.err = None
        self.stopping = False
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()

    def run(self):
        chunk = b"x" * (1 << 16)
        try:
            while not self.stopping:
                self.sent += self.sock.send(chunk)
        except OSError as e:
            if not self.stopping:
                self.err = str(e)

    def stop(self):
        self.stopping = True
        # A sender blocked on a closed window wakes up with an error.
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(5)
        return {"sent": self.sent, "err": self.err}


def craft(req):
    import logging

    logging.getLogger("scapy.runtime").setLevel(logging.ERROR)
    from scapy.all import ICMP, IP, TCP, UDP, Ether, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6
    from scapy.all import ICMPv6DestUnreach, IPv6ExtHdrFragment, Raw

    with open("/sys/class/net/eth0/address") as f:
        src_mac = f.read().strip()
    src, dst = req["src"], req["dst"]
    six = ":" in dst
    eth = Ether(src=src_mac, dst=req["dst_mac"])
    payload = req.get("payload", "").encode()
    kind = req["kind"]
    frag_id = req.get("id", 0x5151)

    def l3(**kw):
        return IPv6(src=src, dst=dst) if six else IP(src=src, dst=dst, **kw)

    def l4_bytes(seg):
        """The L4 bytes of `seg` behind our addresses (checksum over the real pseudo-header)."""
        hdr = IPv6(src=src, dst=dst) if six else IP(src=src, dst=dst)
        return bytes(hdr / seg)[40 if six else 20 :]

    def ip_frag(proto, offset_units, more, data):
        """One IP fragment carrying `data` (L4 bytes) at `offset_units` * 8."""
        if six:
            nh = {"tcp": 6, "udp": 17}[proto]
            return eth / IPv6(src=src, dst=dst) / IPv6ExtHdrFragment(
                nh=nh, offset=offset_units, m=int(more), id=frag_id
            ) / Raw(data)
        p = {"tcp": 6, "udp": 17}[proto]
        flags = "MF" if more else 0
        return eth / IP(src=src, dst=dst, id=frag_id & 0xFFFF, proto=p, flags=flags, frag=offset_units) / Raw(data)

    if kind == "tcp":
        frames = [
            eth
            / l3()
            / TCP(
                sport=req["sport"],
                dport=req["dport"],
                flags=req.get("flags", "S"),
                seq=req.get("seq", 1000),
                ack=req.get("ack", 0),
            )
            / Raw(payload)
        ]
    elif kind == "udp":
        frames = [eth / l3() / UDP(sport=req["sport"], dport=req["dport"]) / Raw(payload)]
    elif kind == "echo":
        request = req.get("type", "request") == "request"
        ident, seq = req.get("id", 0x4242), req.get("seq", 1)
        if six:
            icmp = (ICMPv6EchoRequest if request else ICMPv6EchoReply)(id=ident, seq=seq)
        else:
            icmp = ICMP(type=8 if request else 0, id=ident, seq=seq)
        frames = [eth / l3() / icmp / Raw(payload)]
    elif kind == "frag_no_first":
        # The second half of a UDP datagram whose first fragment never went out.
        frames = [ip_frag("udp", 2, False, payload)]
    elif kind == "frag_tiny":
        # RFC 1858: a TCP SYN whose first fragment holds only 8 of the 20 header bytes
        # (ports and sequence number, no flags); the flags are in the second fragment.
        seg = l4_bytes(TCP(sport=req.get("sport", 40123), dport=req["dport"], flags="S") / Raw(payload))
        frames = [ip_frag("tcp", 0, True, seg[:8]), ip_frag("tcp", 1, False, seg[8:])]
    elif kind == "frag_overlap":
        # A UDP first fragment with 24 bytes of L4 (header + 16 of data), then a fragment
        # at offset 8 that would overwrite the first's data (RFC 1858).
        seg = l4_bytes(UDP(sport=req.get("sport", 40124), dport=req["dport"]) / Raw(b"F" * 16 + payload))
        frames = [ip_frag("udp", 0, True, seg[:24]), ip_frag("udp", 1, False, b"O" * 8 + payload)]
    elif kind == "icmp_error":
        quoted = UDP(sport=req["qsport"], dport=req["qdport"]) / Raw(payload)
        if six:
            quoted = IPv6(src=req["qsrc"], dst=req["qdst"]) / quoted
            frames = [eth / l3() / ICMPv6DestUnreach(code=4) / quoted]
        else:
            quoted = IP(src=req["qsrc"], dst=req["qdst"]) / quoted
            frames = [eth / l3() / ICMP(type=3, code=3) / quoted]
    else:
        raise KeyError("unknown kind %r" % kind)
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
    s.bind(("eth0", 0))
    for f in frames:
        s.send(bytes(f))
    s.close()
    return {"n": len(frames)}


def main():
    servers = {}
    stream = None

    def out(obj):
        sys.stdout.write(json.dumps(obj) + "\n")
        sys.stdout.flush()

    out({"ok": True, "ready": True})
    for line in sys.stdin:
        line = line.strip()
        if not line:
            continue
        try:
            req = json.loads(line)
            op = req["op"]
            if op == "listen":
                key = (req["proto"], req["port"])
                if key not in servers:
                    servers[key] = Server(req["proto"], req["port"], req.get("echo", False))
                out({"ok": True})
            elif op == "stats":
                out(dict(ok=True, **servers[(req["proto"], req["port"])].stats()))
            elif op == "tcp_connect":
                out(dict(ok=True, **tcp_connect(req)))
            elif op == "udp_send":
                out(dict(ok=True, **udp_send(req)))
            elif op == "stream_start":
                stream = Stream(req)
                out({"ok": True})
            elif op == "stream_stop":
                r = stream.stop() if stream else {"sent": 0, "err": "no stream"}
                stream = None
                out(dict(ok=True, **r))
            elif op == "craft":
                out(dict(ok=True, **craft(req)))
            else:
                out({"ok": False, "error": "unknown op %r" % op})
        except Exception as e:  # report, keep serving
            out({"ok": False, "error": "%s: %s" % (type(e).__name__, e)})


if __name__ == "__main__":
    main()
