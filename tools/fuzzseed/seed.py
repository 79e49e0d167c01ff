#!/usr/bin/env python3
"""Builds fuzz/seeds/<target>/ seed files from the captures in tests/data.

Each seed is named by the SHA-1 of its bytes (as libFuzzer names its own), so
rerunning only adds what is new. Run from the repository root:
    python3 tools/fuzzseed/seed.py
"""
import hashlib
import os
import struct
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = os.path.join(ROOT, "tests", "data")
OUT = os.path.join(ROOT, "fuzz", "seeds")
PER_TARGET = 300


def records(path):
    """(linktype, frame bytes) of a classic pcap or pcapng file."""
    b = open(path, "rb").read()
    if len(b) < 24:
        return
    magic = b[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d"):
        e = "<" if magic in (b"\xd4\xc3\xb2\xa1", b"\x4d\x3c\xb2\xa1") else ">"
        lt = struct.unpack(e + "I", b[20:24])[0]
        off = 24
        while off + 16 <= len(b):
            incl = struct.unpack(e + "I", b[off + 8:off + 12])[0]
            yield lt, b[off + 16:off + 16 + incl]
            off += 16 + incl
    elif magic == b"\x0a\x0d\x0d\x0a":
        e = "<" if b[8:12] == b"\x4d\x3c\x2b\x1a" else ">"
        off, lts = 0, []
        while off + 12 <= len(b):
            btype, blen = struct.unpack(e + "II", b[off:off + 8])
            if blen < 12:
                return
            if btype == 1:
                lts.append(struct.unpack(e + "H", b[off + 8:off + 10])[0])
            elif btype == 6:
                iface, _, _, cap = struct.unpack(e + "IIII", b[off + 8:off + 24])
                if iface < len(lts):
                    yield lts[iface], b[off + 28:off + 28 + cap]
            off += blen


def l3(lt, f):
    """The IP packet of a frame, or None."""
    if lt == 1:
        off = 12
        et = struct.unpack(">H", f[off:off + 2])[0] if len(f) >= 14 else 0
        off += 2
        while et in (0x8100, 0x88A8) and len(f) >= off + 4:
            et = struct.unpack(">H", f[off + 2:off + 4])[0]
            off += 4
        return f[off:] if et in (0x0800, 0x86DD) else None
    if lt == 101:
        return f
    if lt == 113 and len(f) >= 16:
        return f[16:] if struct.unpack(">H", f[14:16])[0] in (0x0800, 0x86DD) else None
    return None


def l4(ip):
    """(proto, sport, dport, payload) of an unfragmented TCP/UDP packet."""
    if not ip:
        return None
    v = ip[0] >> 4
    if v == 4 and len(ip) >= 20:
        ihl = (ip[0] & 15) * 4
        if struct.unpack(">H", ip[6:8])[0] & 0x3FFF:
            return None
        proto, rest = ip[9], ip[ihl:]
    elif v == 6 and len(ip) >= 40:
        proto, rest = ip[6], ip[40:]
    else:
        return None
    if proto == 6 and len(rest) >= 20:
        doff = (rest[12] >> 4) * 4
        sp, dp = struct.unpack(">HH", rest[:4])
        return 6, sp, dp, rest[doff:]
    if proto == 17 and len(rest) >= 8:
        sp, dp = struct.unpack(">HH", rest[:4])
        return 17, sp, dp, rest[8:]
    return None


def main():
    seeds = {}

    def add(target, data):
        if not data:
            return
        s = seeds.setdefault(target, {})
        if len(s) < PER_TARGET:
            s[hashlib.sha1(data).hexdigest()] = data

    ports = {21: "helper_ftp", 6667: "helper_irc", 5060: "helper_sip", 69: "helper_tftp", 1723: "helper_pptp",
             10080: "helper_amanda", 6566: "helper_sane"}
    for d in sorted(os.listdir(DATA)):
        dp = os.path.join(DATA, d)
        if not os.path.isdir(dp):
            continue
        for name in sorted(os.listdir(dp)):
            path = os.path.join(dp, name)
            if not name.endswith((".pcap", ".pcapng")):
                continue
            if os.path.getsize(path) <= 8192:
                add("capture_pcap", open(path, "rb").read())
            seq = b""
            for i, (lt, f) in enumerate(records(path)):
                ip = l3(lt, f)
                if ip is None:
                    continue
                add("packet_parse", ip)
                if i < 24:
                    # Headers and the start of the payload are what matter.
                    seq += bytes([i & 1, 1]) + ip[:200].replace(b"\xff", b"\xfe") + b"\xff"
                t = l4(ip)
                if t:
                    proto, sp, dpt, payload = t
                    target = ports.get(dpt) or ports.get(sp)
                    if target == "helper_ftp" or target == "helper_irc":
                        for line in payload.split(b"\n"):
                            add(target, line.rstrip(b"\r"))
                    elif target:
                        add(target, payload)
            add("pipeline", seq)
    for name in sorted(os.listdir(os.path.join(ROOT, "deploy", "examples"))):
        add("config_parse", open(os.path.join(ROOT, "deploy", "examples", name), "rb").read())
    add("config_parse", open(os.path.join(ROOT, "tests", "kdiff", "strict.toml"), "rb").read())
    for r in [
        b'{"cmd":"ct_list"}',
        b'{"cmd":"ct_list","filter":{"src":"10.0.0.0/8","dport":80,"proto":"tcp","state":"established"}}',
        b'{"cmd":"ct_flush","filter":{"dst":"fd00::/8","state":"unreplied"}}',
        b'{"cmd":"ct_stats"}',
        b'{"cmd":"ct_events","filter":{"proto":"udp"}}',
        b'{"cmd":"expect_list"}',
        b'{"cmd":"expect_add","master":{"proto":"tcp","src":"10.0.0.1","sport":40000,"dst":"10.0.0.2","dport":21},'
        b'"expect":{"proto":"tcp","src":"10.0.0.2","dst":"10.0.0.1","dport":50000},"helper":"ftp"}',
        b'{"cmd":"expect_del","id":3,"worker":0}',
        b'{"cmd":"reload"}',
    ]:
        add("control_request", r)
    total = 0
    for target, s in sorted(seeds.items()):
        d = os.path.join(OUT, target)
        os.makedirs(d, exist_ok=True)
        for h, data in s.items():
            p = os.path.join(d, h)
            if not os.path.exists(p):
                with open(p, "wb") as f:
                    f.write(data)
        total += len(s)
        print(f"{target}: {len(s)} seeds")
    print(f"{total} seeds in {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
