#!/usr/bin/env python3
"""Writes dga-nxdomain.pcap: a synthetic DGA burst for the dga rule's tests.

Host 10.0.0.66 asks resolver 10.0.0.53 (one fresh source port per query,
RFC 5452) for 40 generated domains, every one answered NXDOMAIN (RCODE 3),
between 20 benign lookups answered NOERROR and 5 benign names answered
NXDOMAIN (a mistyped intranet name). The generated labels are lower-case
letters (a linear congruential generator, Numerical Recipes constants,
12-15 letters, CryptoLocker style); only labels with at most 25 % vowels
(y counted) and a run of at least 4 consonants are kept, the criterion
README.md documents for random-looking names, checked here independently of
the Go code. Frames: Ethernet II, IPv4 (header checksum set), UDP (checksum
0: none, RFC 768), DNS (RFC 1035 4.1). Run: python3 gen-dga-nxdomain.py
"""
import struct

def random_looking(label):
    vowels = sum(c in "aeiouy" for c in label)
    run = best = 0
    for c in label:
        run = 0 if c in "aeiouy" else run + 1
        best = max(best, run)
    return len(label) >= 8 and vowels * 4 <= len(label) and best >= 4

def dga_names(n):
    x, out, i = 12345, [], 0
    def nxt():
        nonlocal x
        x = (x * 1664525 + 1013904223) % 2**32
        return x >> 8
    while len(out) < n:
        label = "".join(chr(ord("a") + nxt() % 26) for _ in range(12 + nxt() % 4))
        if random_looking(label) and label not in out:
            out.append(label + [".com", ".net", ".org", ".biz"][i % 4])
            i += 1
    return out

def qname(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"

def dns(txid, name, response, rcode):
    flags = (0x8180 | rcode) if response else 0x0100
    return struct.pack("!HHHHHH", txid, flags, 1, 0, 0, 0) + qname(name) + struct.pack("!HH", 1, 1)

def ipsum(h):
    s = sum(struct.unpack("!10H", h))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF

def frame(src, dst, sport, dport, payload, ident):
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), ident, 0, 64, 17, 0, bytes(src), bytes(dst))
    ip = ip[:10] + struct.pack("!H", ipsum(ip)) + ip[12:]
    eth = bytes.fromhex("020000000053") + bytes.fromhex("020000000066") + b"\x08\x00"
    if src[3] == 53:
        eth = bytes.fromhex("020000000066") + bytes.fromhex("020000000053") + b"\x08\x00"
    return eth + ip + udp

client, resolver = [10, 0, 0, 66], [10, 0, 0, 53]
benign = ["www.wikipedia.org", "upload.wikimedia.org", "fonts.googleapis.com", "www.debian.org"] * 5
typo = ["intranet.corp.example"] * 5
dga = dga_names(40)
# 65 lookups: benign NOERROR every third, the 5 NXDOMAIN typos early, the DGA burst throughout.
lookups = []
for i, n in enumerate(dga):
    if i % 2 == 0 and benign:
        lookups.append((benign.pop(), 0))
    if i % 6 == 1 and typo:
        lookups.append((typo.pop(), 3))
    lookups.append((n, 3))
lookups += [(n, 0) for n in benign] + [(n, 3) for n in typo]
assert sum(r == 3 for _, r in lookups) == 45 and len(lookups) == 65

t0 = 1767225600  # 2026-01-01 00:00:00 UTC, a minute boundary
out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
for i, (name, rcode) in enumerate(lookups):
    sport, txid, t = 40000 + i, 0x1000 + i, t0 + 1 + i * 0.5  # 33 s of lookups
    for data, ts in ((frame(client, resolver, sport, 53, dns(txid, name, False, 0), 2 * i), t),
                     (frame(resolver, client, 53, sport, dns(txid, name, True, rcode), 2 * i + 1), t + 0.02)):
        sec = int(ts)
        usec = int(round((ts - sec) * 1e6))
        out.append(struct.pack("<IIII", sec, usec, len(data), len(data)) + data)
open("dga-nxdomain.pcap", "wb").write(b"".join(out))
