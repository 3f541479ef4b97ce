#!/usr/bin/env python3
"""Writes udp-flood.pcap.gz: two UDP floods for the udp_flood rule's tests at
its default threshold (-udpflood.pkts 10000 per -flood.window 10 s); no UDP
flood capture exists in shared/data/pcaps.

Shaped like the lab's hping3 floods (pcaps/lab/labels.csv: the attacker's
switch port policed, here to 4,000 pkt/s, one packet every 250 us):
- window 1 (packet time T0 .. T0+10 s): `hping3 --udp -p 5060 --flood
  10.0.0.20` from 10.0.0.66: 12,000 UDP datagrams with no payload from
  source port 2000 upwards (hping3 increments its source port per packet),
  T0+2 s .. T0+5 s. The 10,000th is at T0 + 2 + 9,999 * 0.00025 s.
- window 4 (T0+30 .. T0+40 s): the same with --rand-source: 12,000 datagrams
  from spoofed sources in 198.18.0.0/15 (RFC 2544 benchmarking range; a
  linear congruential generator, Numerical Recipes constants, seed 1),
  source port 1024 upwards, T0+32 s .. T0+35 s.
The victim has nothing on 5060 and answers with ICMP port unreachable
(type 3 code 3, quoting the datagram), rate-limited to one every 100 ms of
flood (Linux icmp_ratelimit): 30 per flood, to the real or spoofed source.
Benign traffic beside the floods: client 10.0.0.5 asks resolver 10.0.0.53 for
www.example.com (A) every 2 s (fresh source port, answered NOERROR) for
the whole 60 s, and syncs NTP with 10.0.0.123 every 16 s.

Expected by hand: one udp_flood alert per flood window on 10.0.0.20, the
first naming 10.0.0.66, the second no originator (many sources), each
at its 10,000th datagram; nothing else (the floods hit one port of one
host, far below the 20,000 of an update).

Frames: Ethernet II, IPv4 (header checksum set), UDP (checksum 0: none,
RFC 768), ICMP (checksum set), DNS (RFC 1035 4.1), NTP v4 (RFC 5905 client
and server modes, 48 bytes); pcap microsecond format, gzip-compressed
(tshark and the agent read .pcap.gz). Deterministic: the file is the same
on every run. Run: python3 gen-udp-flood.py
"""
import gzip
import struct

T0 = 1795968000  # a multiple of 60: 10 s flood windows and minutes align
ATTACKER, VICTIM, CLIENT, RESOLVER, NTP = "10.0.0.66", "10.0.0.20", "10.0.0.5", "10.0.0.53", "10.0.0.123"
RATE_US = 250  # 4,000 pkt/s
N = 12000


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def ipv4(src, dst, proto, payload, ident=1):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), ident & 0xFFFF, 0, 64, proto, 0, ip(src), ip(dst))
    return hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:] + payload


def eth(payload):
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + payload


def udp(src, dst, sport, dport, data=b""):
    return eth(ipv4(src, dst, 17, struct.pack("!HHHH", sport, dport, 8 + len(data), 0) + data))


def unreachable(victim, src, quoted_ip):
    body = struct.pack("!BBHI", 3, 3, 0, 0) + quoted_ip[:28]
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return eth(ipv4(victim, src, 1, body))


def qname(name):
    return b"".join(bytes([len(l)]) + l.encode() for l in name.split(".")) + b"\0"


records = []


def add(us, data):
    records.append((us, data))


def flood(start_us, sources, first_port):
    for i in range(N):
        t = start_us + i * RATE_US
        src, sport = sources(i), first_port + i
        frame = udp(src, VICTIM, sport, 5060)
        add(t, frame)
        if i % 400 == 0:  # one ICMP error per 100 ms of flood
            add(t + 50, unreachable(VICTIM, src, frame[14:]))


seed = 1


def spoofed(_):
    global seed
    seed = (seed * 1664525 + 1013904223) % 2**32
    v = seed >> 15  # 17 bits: 198.18.0.0/15
    return "198.%d.%d.%d" % (18 + (v >> 16), (v >> 8) & 0xFF, v & 0xFF)


flood((T0 + 2) * 10**6, lambda i: ATTACKER, 2000)
flood((T0 + 32) * 10**6, spoofed, 1024)

for k in range(30):  # DNS every 2 s
    t = (T0 + 2 * k) * 10**6 + 300_000
    q = struct.pack("!HHHHHH", 0x1000 + k, 0x0100, 1, 0, 0, 0) + qname("www.example.com") + struct.pack("!HH", 1, 1)
    a = (struct.pack("!HHHHHH", 0x1000 + k, 0x8180, 1, 1, 0, 0) + qname("www.example.com") + struct.pack("!HH", 1, 1)
         + b"\xc0\x0c" + struct.pack("!HHIH4s", 1, 1, 300, 4, ip("93.184.215.14")))
    add(t, udp(CLIENT, RESOLVER, 33000 + k, 53, q))
    add(t + 800, udp(RESOLVER, CLIENT, 53, 33000 + k, a))

for k in range(4):  # NTP every 16 s
    t = (T0 + 16 * k) * 10**6 + 700_000
    add(t, udp(CLIENT, NTP, 123, 123, bytes([0x23]) + bytes(47)))
    add(t + 1200, udp(NTP, CLIENT, 123, 123, bytes([0x24, 2]) + bytes(46)))

records.sort(key=lambda r: r[0])
with gzip.GzipFile("udp-flood.pcap.gz", "wb", mtime=0) as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for us, data in records:
        f.write(struct.pack("<IIII", us // 10**6, us % 10**6, len(data), len(data)))
        f.write(data)
print("wrote udp-flood.pcap.gz: %d frames" % len(records))
