#!/usr/bin/env python3
"""kdiff: replay a capture through the Linux kernel's conntrack and compare
with `tollgate replay`, packet by packet.

The kernel side is a real bridge with br_netfilter and an nftables `inet`
ruleset translated from a Tollgate config, built in network namespaces this
tool creates (and always removes). Every packet of the capture is sent on the
port of its side (inside if its source address is in an --inside prefix, as
`tollgate replay` decides), followed by a marker frame on the same port; the
frames that reach the other port before the marker are what the kernel
forwarded for that packet. A log rule ahead of the policy reports, over
NFLOG, the conntrack state and direction of every IP packet the forward hook
sees, forwarded or dropped.

Usage:
  kdiff.py kernel  --pcap F --inside CIDRS --config CFG [--out F.jsonl]
  kdiff.py compare --pcap F --inside CIDRS --config CFG --tollgate BIN
                   [--kernel-jsonl F] [--expect FILE] [--name NAME]
  kdiff.py diff    A.jsonl B.jsonl
  kdiff.py ruleset --inside CIDRS --config CFG

Python 3.11 standard library only. Needs root for `kernel` and `compare`
(unless --kernel-jsonl gives a recorded kernel run).
"""

import argparse
import ctypes
import ipaddress
import json
import re
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import tomllib

# ---------------------------------------------------------------- captures


def read_capture(data):
    """Yields (ts_ns, linktype, frame bytes) from pcap or pcapng bytes."""
    magic = data[:4]
    if magic in (b"\xd4\xc3\xb2\xa1", b"\xa1\xb2\xc3\xd4", b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d"):
        big = magic in (b"\xa1\xb2\xc3\xd4", b"\xa1\xb2\x3c\x4d")
        nanos = magic in (b"\x4d\x3c\xb2\xa1", b"\xa1\xb2\x3c\x4d")
        e = ">" if big else "<"
        link = struct.unpack(e + "I", data[20:24])[0] & 0xFFFF
        pos = 24
        while pos + 16 <= len(data):
            sec, frac, incl, _orig = struct.unpack(e + "IIII", data[pos:pos + 16])
            pos += 16
            frame = data[pos:pos + incl]
            if len(frame) < incl:
                raise ValueError("truncated capture")
            pos += incl
            yield sec * 10**9 + (frac if nanos else frac * 1000), link, frame
        return
    if magic != b"\x0a\x0d\x0d\x0a":
        raise ValueError("not a pcap or pcapng file")
    pos, e, ifaces = 0, "<", []
    while pos + 12 <= len(data):
        if data[pos:pos + 4] == b"\x0a\x0d\x0d\x0a":
            e = ">" if data[pos + 8:pos + 12] == b"\x1a\x2b\x3c\x4d" else "<"
            ifaces = []
        btype, blen = struct.unpack(e + "II", data[pos:pos + 8])
        if blen < 12 or pos + blen > len(data):
            raise ValueError("bad pcapng block")
        body = data[pos + 8:pos + blen - 4]
        pos += blen
        if btype == 1:
            link = struct.unpack(e + "H", body[:2])[0]
            units = 10**6
            opts = body[8:]
            while len(opts) >= 4:
                code, olen = struct.unpack(e + "HH", opts[:4])
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    r = opts[4]
                    units = (1 << (r & 0x7F)) if r & 0x80 else 10 ** (r & 0x7F)
                opts = opts[4 + ((olen + 3) & ~3):]
            ifaces.append((link, units))
        elif btype == 6:
            iid, hi, lo, cap, _orig = struct.unpack(e + "IIIII", body[:20])
            link, units = ifaces[iid]
            ts = (hi << 32) | lo
            yield ts * 10**9 // units, link, body[20:20 + cap]
        elif btype == 3:
            link, _units = ifaces[0]
            orig = struct.unpack(e + "I", body[:4])[0]
            yield 0, link, body[4:4 + orig]


ETH_P_IP, ETH_P_IPV6 = 0x0800, 0x86DD
VLAN_TYPES = (0x8100, 0x88A8, 0x9100)


def l3_of(frame):
    """(ethertype, L3 offset) of an Ethernet frame, following up to two tags."""
    if len(frame) < 14:
        return None, None
    et, off, tags = struct.unpack(">H", frame[12:14])[0], 14, 0
    while et in VLAN_TYPES and tags < 2 and len(frame) >= off + 4:
        et = struct.unpack(">H", frame[off + 2:off + 4])[0]
        off += 4
        tags += 1
    return et, off


def side_of(frame, inside):
    et, off = l3_of(frame)
    src = None
    if et == ETH_P_IP and len(frame) >= off + 20 and frame[off] >> 4 == 4:
        src = ipaddress.IPv4Address(frame[off + 12:off + 16])
    elif et == ETH_P_IPV6 and len(frame) >= off + 40 and frame[off] >> 4 == 6:
        src = ipaddress.IPv6Address(frame[off + 8:off + 24])
    if src is not None and any(src.version == n.version and src in n for n in inside):
        return "inside"
    return "outside"


def parse_inside(s):
    return [ipaddress.ip_network(p.strip(), strict=False) for p in s.split(",") if p.strip()]


# ---------------------------------------------------------------- ruleset

STATES = ["new", "established", "related", "invalid", "untracked"]
PROTOS = {"tcp": "tcp", "udp": "udp", "icmp": "icmp", "icmpv6": "ipv6-icmp", "gre": "gre",
          "sctp": "sctp", "udplite": "udplite"}


def _list(v):
    if v is None:
        return []
    return v if isinstance(v, list) else [v]


def translate(cfg, inside):
    """nftables ruleset text equivalent to a Tollgate config's policy."""
    inside4 = [str(n) for n in inside if n.version == 4]
    inside6 = [str(n) for n in inside if n.version == 6]
    policy = cfg.get("policy", {}).get("default", "drop")
    out = ["table inet kdiff {"]
    out.append("  set inside4 { type ipv4_addr; flags interval; %s}" %
               (("elements = { %s } " % ", ".join(inside4)) if inside4 else ""))
    out.append("  set inside6 { type ipv6_addr; flags interval; %s}" %
               (("elements = { %s } " % ", ".join(inside6)) if inside6 else ""))
    helpers = sorted({r["helper"] for r in cfg.get("rule", []) if "helper" in r})
    for h in helpers:
        proto = "udp" if h in ("tftp", "netbios-ns", "snmp", "amanda") else "tcp"
        if h == "sip":
            proto = next((r.get("proto", "udp") for r in cfg["rule"] if r.get("helper") == "sip"), "udp")
        out.append('  ct helper h-%s { type "%s" protocol %s; }' % (h, h, proto))
    raw, fwd = [], []
    for r in cfg.get("rule", []):
        specific = any(k in r for k in ("from", "src", "dst"))
        for fam in (("ip", "ip6") if specific else (None,)):
            m = ["meta nfproto %s" % ("ipv4" if fam == "ip" else "ipv6")] if fam else []
            frm = r.get("from")
            if frm in ("inside", "outside"):
                setname = "@inside4" if fam == "ip" else "@inside6"
                m.append("%s saddr %s%s" % (fam, "" if frm == "inside" else "!= ", setname))
            skip = False
            for key, word in (("src", "saddr"), ("dst", "daddr")):
                nets = [ipaddress.ip_network(x, strict=False) for x in _list(r.get(key))]
                if nets:
                    mine = [str(n) for n in nets if (n.version == 4) == (fam == "ip")]
                    if not mine:
                        skip = True
                        break
                    m.append("%s %s { %s }" % (fam, word, ", ".join(mine)))
            if skip:
                continue
            proto = r.get("proto")
            if proto is not None and proto != "any":
                m.append("meta l4proto %s" % PROTOS.get(proto, str(proto)))
            for key in ("sport", "dport"):
                ports = [str(x).replace(" ", "") for x in _list(r.get(key))]
                if ports:
                    m.append("th %s { %s }" % (key, ", ".join(ports)))
            action = r.get("action", "drop")
            if action == "notrack":
                raw.append(" ".join(m + ["notrack"]))
                continue
            states = _list(r.get("state"))
            if states:
                m.append("ct state { %s }" % ", ".join(states))
            verdict = action
            if "helper" in r and (not states or "new" in states) and action == "accept":
                # The kernel attaches the helper at confirmation, as Tollgate does.
                verdict = 'ct helper set "h-%s" accept' % r["helper"]
            fwd.append(" ".join(m + [verdict]))
    out.append("  chain raw { type filter hook prerouting priority raw; policy accept;")
    out.extend("    " + x for x in raw)
    out.append("  }")
    out.append("  chain state { type filter hook forward priority -10; policy accept;")
    for st in ("untracked", "invalid"):
        out.append('    ct state %s log prefix "kd:%s:o" group 7' % (st, st))
    for st in ("new", "established", "related"):
        for d, c in (("original", "o"), ("reply", "r")):
            out.append('    ct state %s ct direction %s log prefix "kd:%s:%s" group 7' % (st, d, st, c))
    out.append("  }")
    # Frames to a broadcast or multicast MAC are also passed up to the bridge
    # host; its copy would confirm the conntrack entry even when forwarding
    # dropped the packet. The reference box is a pure bridge: nothing is for it.
    out.append("  chain input { type filter hook input priority filter; policy drop; }")
    out.append("  chain filter { type filter hook forward priority filter; policy %s;" % policy)
    out.extend("    " + x for x in fwd)
    out.append("  }")
    out.append("}")
    return "\n".join(out) + "\n"


# ---------------------------------------------------------------- the lab

CLONE_NEWNET = 0x40000000
libc = ctypes.CDLL(None, use_errno=True)


def run(*args, ns=None, check=True, input=None):
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(args)
    r = subprocess.run(cmd, input=input, capture_output=True, text=True)
    if check and r.returncode != 0:
        raise RuntimeError("%s: %s" % (" ".join(cmd), r.stderr.strip()))
    return r


class Lab:
    """Namespace K holds the bridge and the ruleset; namespace H holds the two
    endpoints. Names carry the pid, so runs never collide; removal is
    idempotent and also runs on SIGINT/SIGTERM."""

    def __init__(self, inside, cfg):
        tag = "%x" % (os.getpid() & 0xFFFFF)
        self.k, self.h = "kd%sk" % tag, "kd%sh" % tag
        self.ifs = {"inside": ("ki%s" % tag, "hi%s" % tag), "outside": ("ko%s" % tag, "ho%s" % tag)}
        self.ruleset = translate(cfg, inside)
        self.cfg = cfg
        self.up = False

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def _on_signal(self, signum, _frame):
        self.close()
        sys.exit(128 + signum)

    def _build(self):
        k, h = self.k, self.h
        run("ip", "netns", "add", k)
        run("ip", "netns", "add", h)
        self.up = True
        for ns in (k, h):
            run("sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1", ns=ns)
            run("sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1", ns=ns)
        run("ip", "-n", k, "link", "add", "br0", "type", "bridge", "stp_state", "0", "ageing_time", "0",
            "mcast_snooping", "0")
        for kside, hside in self.ifs.values():
            run("ip", "link", "add", kside, "netns", k, "type", "veth", "peer", "name", hside, "netns", h)
            run("ip", "-n", k, "link", "set", kside, "mtu", "65000", "master", "br0", "up")
            run("ip", "-n", h, "link", "set", hside, "mtu", "65000", "up")
            run("bridge", "-n", k, "link", "set", "dev", kside, "learning", "off")
            # Without this the kernel trusts veth's checksum and never verifies.
            run("ethtool", "-K", kside, "rx", "off", "tx", "off", ns=k, check=False)
            run("ethtool", "-K", hside, "rx", "off", "tx", "off", ns=h, check=False)
        run("ip", "-n", k, "link", "set", "br0", "up")
        for key in ("bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-filter-vlan-tagged"):
            run("sysctl", "-qw", "net.bridge.%s=1" % key, ns=k)
        ct = self.cfg.get("conntrack", {})
        sysctls = {
            "nf_conntrack_tcp_loose": int(ct.get("tcp_loose", True)),
            "nf_conntrack_tcp_be_liberal": int(ct.get("tcp_be_liberal", False)),
            "nf_conntrack_checksum": int(ct.get("checksum", True)),
        }
        # Create the conntrack tables of the namespace first (the ruleset does).
        run("nft", "-f", "-", ns=k, input=self.ruleset)
        for key, val in sysctls.items():
            run("sysctl", "-qw", "net.netfilter.%s=%d" % (key, val), ns=k)

    def close(self):
        if not self.up:
            return
        self.up = False
        for ns in (self.k, self.h):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)

    def __exit__(self, *exc):
        self.close()


def setns(name):
    fd = os.open("/run/netns/%s" % name, os.O_RDONLY)
    try:
        if libc.setns(fd, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), "setns %s" % name)
    finally:
        os.close(fd)


# ---------------------------------------------------------------- NFLOG

NETLINK_NETFILTER = 12
NFNL_SUBSYS_ULOG = 4
NFULNL_MSG_PACKET, NFULNL_MSG_CONFIG = 0, 1
NFULA_PREFIX = 10
NFULA_CFG_CMD, NFULA_CFG_MODE, NFULA_CFG_QTHRESH, NFULA_CFG_TIMEOUT = 1, 2, 5, 4


def nla(atype, payload):
    ln = 4 + len(payload)
    return struct.pack("=HH", ln, atype) + payload + b"\0" * ((4 - ln % 4) % 4)


class Nflog:
    """Receives the log prefixes of one NFLOG group."""

    def __init__(self, group):
        self.s = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.s.bind((0, 0))
        self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.seq = 0
        self._cfg(group, nla(NFULA_CFG_CMD, struct.pack("B", 1)))  # bind
        self._cfg(group, nla(NFULA_CFG_MODE, struct.pack(">IBB", 0, 1, 0)))  # metadata only
        self._cfg(group, nla(NFULA_CFG_QTHRESH, struct.pack(">I", 1)))
        self._cfg(group, nla(NFULA_CFG_TIMEOUT, struct.pack(">I", 1)))

    def _cfg(self, group, attrs):
        self.seq += 1
        body = struct.pack("=BBH", 0, 0, socket.htons(group)) + attrs
        hdr = struct.pack("=IHHII", 16 + len(body), (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_CONFIG, 1 | 4, self.seq, 0)
        self.s.send(hdr + body)
        # Read the ACK.
        resp = self.s.recv(65536)
        _ln, mtype = struct.unpack("=IH", resp[:6])
        if mtype == 2:  # NLMSG_ERROR
            err = struct.unpack("=i", resp[16:20])[0]
            if err != 0:
                raise OSError(-err, "nflog config")

    def drain(self):
        """Every prefix received so far, in order."""
        out = []
        while select.select([self.s], [], [], 0)[0]:
            data = self.s.recv(1 << 20)
            pos = 0
            while pos + 16 <= len(data):
                ln, mtype = struct.unpack("=IH", data[pos:pos + 6])
                if ln < 16:
                    break
                if mtype == (NFNL_SUBSYS_ULOG << 8) | NFULNL_MSG_PACKET:
                    a = pos + 20
                    while a + 4 <= pos + ln:
                        alen, atype = struct.unpack("=HH", data[a:a + 4])
                        if alen < 4:
                            break
                        if atype & 0x3FFF == NFULA_PREFIX:
                            out.append(data[a + 4:a + alen].split(b"\0")[0].decode())
                        a += (alen + 3) & ~3
                pos += (ln + 3) & ~3
        return out


# ---------------------------------------------------------------- replay

ETH_P_ALL = 0x0003
PACKET_OUTGOING = 4
MARKER_TYPE = 0x88B5


def marker(i):
    return b"\xff" * 6 + b"\x02\x00\x00\x00\x00\xaa" + struct.pack(">H", MARKER_TYPE) + b"KDIFF" + struct.pack(">I", i) + b"\0" * 41


def unicast_ip(frame):
    et, off = l3_of(frame)
    try:
        if et == ETH_P_IP and len(frame) >= off + 20:
            a = ipaddress.IPv4Address(frame[off + 16:off + 20])
            return not (a.is_multicast or a.packed[3] == 255 or a == ipaddress.IPv4Address("255.255.255.255"))
        if et == ETH_P_IPV6 and len(frame) >= off + 40:
            return not ipaddress.IPv6Address(frame[off + 24:off + 40]).is_multicast
    except ValueError:
        pass
    return False


def fix_macs(frame, side):
    """Makes a captured frame bridgeable without changing what conntrack sees:
    a bridge drops frames from a zero or multicast source MAC, and a frame to
    a multicast MAC is also passed up to the bridge host, whose copy confirms
    the conntrack entry even when forwarding drops the packet. Generated
    captures often carry such MACs on unicast IP packets."""
    changed = False
    src = frame[6:12]
    if src == b"\0" * 6 or src[0] & 1:
        frame = frame[:6] + (b"\x02\x00\x00\x00\x00\x01" if side == "inside" else b"\x02\x00\x00\x00\x00\x02") + frame[12:]
        changed = True
    if frame[0] & 1 and unicast_ip(frame):
        frame = (b"\x02\x00\x00\x00\x00\x02" if side == "inside" else b"\x02\x00\x00\x00\x00\x01") + frame[6:]
        changed = True
    return frame, changed


def frag_key(frame):
    """(src, dst, proto, id) of an IPv4 fragment, else None."""
    et, off = l3_of(frame)
    if et != ETH_P_IP or len(frame) < off + 20:
        return None
    fo = struct.unpack(">H", frame[off + 6:off + 8])[0]
    if not (fo & 0x2000 or fo & 0x1FFF):
        return None
    return frame[off + 12:off + 16], frame[off + 16:off + 20], frame[off + 9], frame[off + 4:off + 6]


def kernel_run(lab, records, inside, timeout=1.0):
    """Sends every record through the kernel bridge; returns JSON-able dicts.

    The kernel reassembles IPv4 fragments before conntrack and holds them until
    the datagram is complete: fragments that come out later are credited to
    the packets that carried them, and they share the datagram's state."""
    setns(lab.k)
    nflog = Nflog(7)
    setns(lab.h)
    socks = {}
    for side, (_k, hside) in lab.ifs.items():
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        s.bind((hside, 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        socks[side] = s
    other = {"inside": "outside", "outside": "inside"}
    results, fixed = [], 0
    datagrams = {}  # fragment key -> indices of the packets that carried it
    time.sleep(0.2)
    nflog.drain()
    for s in socks.values():
        while select.select([s], [], [], 0)[0]:
            s.recv(65536)
    for i, (_ts, link, frame) in enumerate(records):
        if link != 1:
            results.append({"i": i, "side": "outside", "verdict": "drop", "state": None, "reply": False,
                            "note": "link type %d not replayed" % link})
            continue
        side = side_of(frame, inside)
        frame, f = fix_macs(frame, side)
        fixed += f
        res = {"i": i, "side": side, "verdict": "drop", "state": None, "reply": False}
        results.append(res)
        fk = frag_key(frame)
        if fk is not None:
            datagrams.setdefault(fk, []).append(i)
        tx, rx = socks[side], socks[other[side]]
        try:
            tx.send(frame)
        except OSError as e:
            res["note"] = "send failed: %s" % e
            continue
        tx.send(marker(i))
        got, deadline = [], time.monotonic() + timeout
        seen_marker = False
        while time.monotonic() < deadline:
            if not select.select([rx], [], [], max(0.0, deadline - time.monotonic()))[0]:
                continue
            data, addr = rx.recvfrom(65536)
            if addr[2] == PACKET_OUTGOING:
                continue
            if data[12:14] == struct.pack(">H", MARKER_TYPE) and data[14:19] == b"KDIFF":
                if struct.unpack(">I", data[19:23])[0] == i:
                    seen_marker = True
                    break
                continue
            got.append(data)
        if not seen_marker:
            raise RuntimeError("marker %d never arrived: the lab is broken" % i)
        logs = [p for p in nflog.drain() if p.startswith("kd:")]
        state = None
        if logs:
            _kd, st, d = logs[0].split(":")
            state = (st, d == "r")
        owners = set()
        for data in got:
            k = frag_key(data)
            owners.update(datagrams.get(k, [i]) if k is not None else [i])
        if fk is not None and state is not None:
            # The datagram's state, logged once it was reassembled.
            owners.update(datagrams.get(fk, []))
        for j in owners or ([i] if state else []):
            r = results[j]
            if got and (j in owners):
                r["verdict"] = "accept"
            if state:
                r["state"], r["reply"] = state
            if j != i:
                r["note"] = "held by defrag until packet %d" % i
        if not owners and state:
            res["state"], res["reply"] = state
    return results, fixed


def line(r):
    d = {"i": r["i"], "side": r["side"], "verdict": r["verdict"], "state": r["state"] or "unknown",
         "reply": r["reply"]}
    if r.get("note"):
        d["note"] = r["note"]
    return json.dumps(d, separators=(",", ":"))


# ---------------------------------------------------------------- compare


def load_jsonl(path):
    with open(path) as f:
        return [json.loads(x) for x in f if x.strip()]


def load_expect(path, name):
    """Expected differences for capture `name`: {(i, field): why}."""
    if not path:
        return {}
    with open(path, "rb") as f:
        doc = tomllib.load(f)
    out = {}
    for d in doc.get("diff", []):
        if d.get("capture") != name:
            continue
        idx = d["i"] if isinstance(d["i"], list) else [d["i"]]
        for i in idx:
            for field in _list(d.get("field", ["verdict", "state"])):
                out[(i, field)] = d.get("why", "")
    return out


def compare(kernel, tollgate, name, expect):
    """Mismatches as (i, field, kernel value, tollgate value, explained?)."""
    out = []
    for k, t in zip(kernel, tollgate):
        i = k["i"]
        checks = [("verdict", k["verdict"], t["verdict"])]
        if k["state"] not in (None, "unknown"):
            checks.append(("state", k["state"], t["state"]))
            if k["state"] in ("established", "related", "new"):
                checks.append(("reply", k["reply"], t["reply"]))
        for field, kv, tv in checks:
            if kv != tv:
                out.append((i, field, kv, tv, (i, field) in expect))
    if len(kernel) != len(tollgate):
        out.append((min(len(kernel), len(tollgate)), "count", len(kernel), len(tollgate), False))
    return out


def report(name, mism, expect, out=sys.stdout):
    bad = [m for m in mism if not m[4]]
    for i, field, kv, tv, ok in mism:
        why = (" (expected: %s)" % expect[(i, field)]) if ok else ""
        print("%s %d: %s kernel=%s tollgate=%s%s" % (name, i, field, kv, tv, why), file=out)
    print("%s: %d mismatches, %d unexplained" % (name, len(mism), len(bad)), file=out)
    return not bad


# ---------------------------------------------------------------- main


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("kernel", "compare"):
        p = sub.add_parser(name)
        p.add_argument("--pcap", required=True)
        p.add_argument("--inside", required=True)
        p.add_argument("--config", required=True)
        p.add_argument("--out")
        if name == "compare":
            p.add_argument("--tollgate", required=True)
            p.add_argument("--kernel-jsonl", help="use a recorded kernel run instead of running the kernel")
            p.add_argument("--expect")
            p.add_argument("--name")
            p.add_argument("--offload", action="store_true",
                           help="replay with the XDP fast path in front (tollgate replay --offload; root)")
    p = sub.add_parser("diff")
    p.add_argument("a")
    p.add_argument("b")
    p = sub.add_parser("ruleset")
    p.add_argument("--inside", required=True)
    p.add_argument("--config", required=True)
    a = ap.parse_args(argv)

    if a.cmd == "diff":
        mism = compare(load_jsonl(a.a), load_jsonl(a.b), a.a, {})
        return 0 if report(os.path.basename(a.a), mism, {}) else 1
    with open(a.config, "rb") as f:
        cfg = tomllib.load(f)
    inside = parse_inside(a.inside)
    if a.cmd == "ruleset":
        sys.stdout.write(translate(cfg, inside))
        return 0
    name = getattr(a, "name", None) or os.path.basename(a.pcap)
    kernel = None
    if a.cmd == "compare" and a.kernel_jsonl:
        kernel = load_jsonl(a.kernel_jsonl)
    if kernel is None:
        with open(a.pcap, "rb") as f:
            records = list(read_capture(f.read()))
        with Lab(inside, cfg) as lab:
            res, fixed = kernel_run(lab, records, inside)
        kernel = [json.loads(line(r)) for r in res]
        if fixed:
            print("%s: %d frames had MAC addresses made bridgeable (zero/multicast source, multicast destination of a unicast IP packet)" % (name, fixed), file=sys.stderr)
        if a.cmd == "kernel":
            text = "".join(line(r) + "\n" for r in res)
            if a.out:
                with open(a.out, "w") as f:
                    f.write(text)
            else:
                sys.stdout.write(text)
            return 0
    # The kernel saw the packets back to back, so Tollgate must too: its clock
    # then advances a microsecond per packet (timeouts are unit-tested).
    cmd = [a.tollgate, "replay", "--config", a.config, "--pcap", a.pcap, "--inside", a.inside,
           "--clock", "index"]
    if a.offload:
        cmd.append("--offload")
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        print("tollgate replay failed: %s" % r.stderr, file=sys.stderr)
        return 2
    tg = [json.loads(x) for x in r.stdout.splitlines() if x.strip()]
    expect = load_expect(a.expect, name)
    mism = compare(kernel, tg, name, expect)
    ok = report(name, mism, expect)
    if a.offload:
        fast = re.search(r"fast path: (\d+) packets", r.stderr)
        print("%s: with the XDP fast path, %s packets forwarded by the program" % (name, fast.group(1) if fast else "no"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
