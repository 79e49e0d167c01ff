"""Self-tests of kdiff's pure parts (no root needed):
python3 -m unittest discover -s tools/kdiff"""

import ipaddress
import os
import struct
import sys
import tempfile
import tomllib
import unittest

sys.path.insert(0, os.path.dirname(__file__))
import kdiff  # noqa: E402

ROOT = os.path.join(os.path.dirname(__file__), "..", "..")


def pcap(records):
    out = struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)
    for ts_us, data in records:
        out += struct.pack("<IIII", ts_us // 10**6, ts_us % 10**6, len(data), len(data)) + data
    return out


def eth_ipv4(src, dst, dst_mac=b"\x02" * 6, src_mac=b"\x04" * 6, frag=0):
    ip = bytearray(20)
    ip[0] = 0x45
    ip[6:8] = struct.pack(">H", frag)
    ip[12:16] = ipaddress.IPv4Address(src).packed
    ip[16:20] = ipaddress.IPv4Address(dst).packed
    return dst_mac + src_mac + b"\x08\x00" + bytes(ip)


class Capture(unittest.TestCase):
    def test_pcap_records(self):
        recs = list(kdiff.read_capture(pcap([(1_500_000, b"abc"), (2_000_000, b"")])))
        self.assertEqual(recs, [(1_500_000_000, 1, b"abc"), (2_000_000_000, 1, b"")])

    def test_corpus_pcapng_and_pcap_counts(self):
        # Every corpus capture parses, with the MANIFEST's packet count.
        with open(os.path.join(ROOT, "tests/data/MANIFEST.tsv")) as f:
            rows = [l.rstrip("\n").split("\t") for l in f][1:]
        for row in rows:
            with open(os.path.join(ROOT, "tests/data", row[0]), "rb") as f:
                n = sum(1 for _ in kdiff.read_capture(f.read()))
            self.assertEqual(n, int(row[6]), row[0])

    def test_sides_and_vlans(self):
        inside = kdiff.parse_inside("10.0.0.0/8")
        self.assertEqual(kdiff.side_of(eth_ipv4("10.1.2.3", "8.8.8.8"), inside), "inside")
        self.assertEqual(kdiff.side_of(eth_ipv4("8.8.8.8", "10.1.2.3"), inside), "outside")
        tagged = eth_ipv4("10.1.2.3", "8.8.8.8")
        tagged = tagged[:12] + b"\x81\x00\x00\x05" + tagged[12:]
        self.assertEqual(kdiff.side_of(tagged, inside), "inside")
        self.assertEqual(kdiff.side_of(b"\xff" * 12 + b"\x08\x06" + b"\0" * 28, inside), "outside")

    def test_mac_fixes(self):
        f, changed = kdiff.fix_macs(eth_ipv4("1.1.1.1", "2.2.2.2", dst_mac=b"\x11" * 6, src_mac=b"\x11" * 6), "inside")
        self.assertTrue(changed)
        self.assertEqual(f[0] & 1, 0)
        self.assertEqual(f[6] & 1, 0)
        # A broadcast IP keeps its broadcast MAC.
        f, _ = kdiff.fix_macs(eth_ipv4("1.1.1.1", "1.1.1.255", dst_mac=b"\xff" * 6), "inside")
        self.assertEqual(f[:6], b"\xff" * 6)

    def test_frag_key(self):
        self.assertIsNone(kdiff.frag_key(eth_ipv4("1.1.1.1", "2.2.2.2")))
        self.assertIsNotNone(kdiff.frag_key(eth_ipv4("1.1.1.1", "2.2.2.2", frag=0x2000)))


class Ruleset(unittest.TestCase):
    def test_strict_translation(self):
        with open(os.path.join(ROOT, "tests/kdiff/strict.toml"), "rb") as f:
            cfg = tomllib.load(f)
        text = kdiff.translate(cfg, kdiff.parse_inside("10.0.0.0/8,fd00::/8"))
        self.assertIn("elements = { 10.0.0.0/8 }", text)
        self.assertIn('ct helper h-ftp { type "ftp" protocol tcp; }', text)
        self.assertIn('ct helper h-tftp { type "tftp" protocol udp; }', text)
        self.assertIn("policy drop;", text)
        self.assertIn("ct state { invalid } drop", text)
        self.assertIn('meta nfproto ipv4 ip saddr @inside4 meta l4proto tcp th dport { 21 } ct state { new } '
                      'ct helper set "h-ftp" accept', text)
        self.assertIn("meta nfproto ipv6 ip6 saddr @inside6 ct state { new } accept", text)
        self.assertIn("chain input { type filter hook input priority filter; policy drop; }", text)

    def test_notrack_and_outside(self):
        cfg = {"policy": {"default": "accept"},
               "rule": [{"from": "outside", "proto": "udp", "dport": "1000-2000", "action": "notrack"}]}
        text = kdiff.translate(cfg, kdiff.parse_inside("10.0.0.0/8"))
        self.assertIn("meta nfproto ipv4 ip saddr != @inside4 meta l4proto udp th dport { 1000-2000 } notrack", text)


class Compare(unittest.TestCase):
    def test_mismatches_and_expectations(self):
        k = [{"i": 0, "verdict": "accept", "state": "new", "reply": False},
             {"i": 1, "verdict": "drop", "state": "unknown", "reply": False},
             {"i": 2, "verdict": "accept", "state": "established", "reply": True}]
        t = [{"i": 0, "verdict": "accept", "state": "new", "reply": False},
             {"i": 1, "verdict": "drop", "state": "invalid", "reply": False},
             {"i": 2, "verdict": "drop", "state": "invalid", "reply": False}]
        m = kdiff.compare(k, t, "x.pcap", {})
        self.assertEqual([(i, f) for i, f, *_ in m], [(2, "verdict"), (2, "state"), (2, "reply")])
        with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as f:
            f.write('[[diff]]\ncapture = "x.pcap"\ni = [2]\nfield = ["verdict", "state", "reply"]\nwhy = "test"\n')
        try:
            exp = kdiff.load_expect(f.name, "x.pcap")
        finally:
            os.unlink(f.name)
        m = kdiff.compare(k, t, "x.pcap", exp)
        self.assertTrue(all(ok for *_, ok in m))
        with open(os.devnull, "w") as null:
            self.assertTrue(kdiff.report("x.pcap", m, exp, out=null))


if __name__ == "__main__":
    unittest.main()
