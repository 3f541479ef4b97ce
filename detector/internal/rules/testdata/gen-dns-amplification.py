#!/usr/bin/env python3
"""Writes dns-amplification.pcap.gz: a DNS reflection/amplification attack
seen at the victim's uplink, for the amplification rule's tests at its
defaults (-amplification.pkts 1000 unsolicited responses from at least
-amplification.sources 10 reflectors per -flood.window 10 s); the shared
captures have a TCP SYN-ACK reflection only.

The attacker (not in the capture) sends DNS queries for "ANY isc.org"
with the source address of the victim 10.0.0.20 and a random source port
to 20 open resolvers 198.51.100.1-20; the capture holds what comes back
to the victim: 2,000 responses (UDP from port 53, 1,400-byte DNS
payload: header with QR set, the question, a truncated answer section),
one every 1 ms from T0+2 s, from the resolvers in turn, to the spoofed
ports, all distinct (port 1024 + (40507 * i + 12345) mod 64512 for the
i-th: 40507 is prime to 64512, so no two responses share a flow). The
victim sent none of the queries, so no flow has a packet from it. The
1,000th response is at T0 + 2 + 0.999 s, the 2,000th at T0 + 3.999 s.
Benign traffic beside it: the victim resolves www.example.com through its
own resolver 10.0.0.53 every 5 s (query and answer, one source port each)
for the whole minute.

Expected by hand: one amplification alert on 10.0.0.20 with no originator
(the reflectors are not the attacker), published at the 1,000th response
and updated at the 2,000th (the rule's doubling), 20 reflectors; no
portscan, no udp_flood (2,000 < 10,000), nothing naming a resolver.

Frames: Ethernet II, IPv4 (header checksum set), UDP (checksum 0: none,
RFC 768), DNS (RFC 1035 4.1); pcap microsecond format, gzip-compressed.
Deterministic. Run: python3 gen-dns-amplification.py
"""
import gzip
import struct

T0 = 1795968000
VICTIM, RESOLVER = "10.0.0.20", "10.0.0.53"
REFLECTORS = ["198.51.100.%d" % i for i in range(1, 21)]


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def udp(src, dst, sport, dport, data, ident):
    u = struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(u), ident & 0xFFFF, 0, 64, 17, 0, ip(src), ip(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + hdr + u


def qname(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


def any_response(qid):
    # QR=1, RD, RA, TC (truncated): header, question ANY isc.org, then TXT
    # answers filling the datagram to 1,400 bytes
    msg = struct.pack("!HHHHHH", qid, 0x8380, 1, 5, 0, 0) + qname("isc.org") + struct.pack("!HH", 255, 1)
    txt = b"v=spf1 " + b"x" * 240
    for _ in range(5):
        rd = bytes([len(txt)]) + txt
        msg += b"\xc0\x0c" + struct.pack("!HHIH", 16, 1, 3600, len(rd)) + rd
    return msg + b"\0" * (1400 - len(msg))


records = []
for i in range(2000):
    port = 1024 + (40507 * i + 12345) % (65536 - 1024)
    t = (T0 + 2) * 10**6 + i * 1000
    records.append((t, udp(REFLECTORS[i % 20], VICTIM, 53, port, any_response((i * 2654435761) & 0xFFFF), i)))

for k in range(12):  # the victim's own lookups, answered
    t = (T0 + 5 * k) * 10**6 + 400_000
    q = struct.pack("!HHHHHH", 0x2000 + k, 0x0100, 1, 0, 0, 0) + qname("www.example.com") + struct.pack("!HH", 1, 1)
    a = (struct.pack("!HHHHHH", 0x2000 + k, 0x8180, 1, 1, 0, 0) + qname("www.example.com") + struct.pack("!HH", 1, 1)
         + b"\xc0\x0c" + struct.pack("!HHIH4s", 1, 1, 300, 4, ip("93.184.215.14")))
    records.append((t, udp(VICTIM, RESOLVER, 41000 + k, 53, q, 5000 + k)))
    records.append((t + 700, udp(RESOLVER, VICTIM, 53, 41000 + k, a, 6000 + k)))

records.sort(key=lambda r: r[0])
with gzip.GzipFile("dns-amplification.pcap.gz", "wb", mtime=0) as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for us, data in records:
        f.write(struct.pack("<IIII", us // 10**6, us % 10**6, len(data), len(data)))
        f.write(data)
print("wrote dns-amplification.pcap.gz: %d frames" % len(records))
