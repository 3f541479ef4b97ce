#!/usr/bin/env python3
"""Writes beaconing.pcap: a command-and-control beacon for the beaconing
rule's tests at its defaults (-beacon.conns 8 connections from one host to
one service in -beacon.window 1 h, mean interval >= -beacon.min-period 10 s,
coefficient of variation of the intervals <= -beacon.max-cv 0.2); no
beaconing capture exists in shared/.

The implant on 10.0.0.66 opens a TCP connection to 203.0.113.10:443 every
60 s with +-10 % uniform jitter (a linear congruential generator, Numerical
Recipes constants, seed 42: interval = 60 * (1 + 0.2 * (u - 0.5)) s), 20
times from T0+30 s (T0 a multiple of 3600: one aligned hour), each a
complete exchange: SYN, SYN-ACK, ACK, 200 bytes up, 1,000 bytes down, FIN,
FIN-ACK, ACK over 190 ms, from a fresh source port. Beside it a person on
10.0.0.5 opens HTTPS connections to 203.0.113.80:443 at irregular
intervals (5 s to 5 min, a fixed list), the same exchange.

Expected by hand (this script prints the figures, computed here from the
generated start times, population standard deviation): one beaconing
alert 10.0.0.66 -> 203.0.113.10 published at the 8th connection (7
intervals) and updated at the 16th (the rule's doubling), with the period
(mean interval) and CV printed below; nothing for 10.0.0.5 (its CV is far
above 0.2). Printed by this script:
  after 8 connections: start of the 8th 1795968431866932 us, period 57.409562 s, cv 0.037968, end 1795968432056932 us
  after 16 connections: start of the 16th 1795968929143503 us, period 59.942900 s, cv 0.060537, end 1795968929333503 us

Frames: Ethernet II, IPv4 (header checksum set), TCP (checksum 0: not
checked by the readers); pcap microsecond format. Deterministic.
Run: python3 gen-beaconing.py
"""
import struct

T0 = 1795968000  # a multiple of 3600
IMPLANT, C2, CLIENT, WEB = "10.0.0.66", "203.0.113.10", "10.0.0.5", "203.0.113.80"
FIN, SYN, PSH, ACK = 0x01, 0x02, 0x08, 0x10


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def tcp(src, dst, sport, dport, flags, seq, ack, data=b""):
    t = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0) + data
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(t), 1, 0, 64, 6, 0, ip(src), ip(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + hdr + t


records = []


def exchange(t_us, c, s, sport):
    up, down = b"u" * 200, b"d" * 1000
    for dt, (a, b, sp, dp, fl, seq, ack, data) in zip(
            [0, 20_000, 40_000, 60_000, 100_000, 150_000, 170_000, 190_000], [
                (c, s, sport, 443, SYN, 100, 0, b""), (s, c, 443, sport, SYN | ACK, 900, 101, b""),
                (c, s, sport, 443, ACK, 101, 901, b""), (c, s, sport, 443, PSH | ACK, 101, 901, up),
                (s, c, 443, sport, PSH | ACK, 901, 301, down), (c, s, sport, 443, FIN | ACK, 301, 1901, b""),
                (s, c, 443, sport, FIN | ACK, 1901, 302, b""), (c, s, sport, 443, ACK, 302, 1902, b"")]):
        records.append((t_us + dt, tcp(a, b, sp, dp, fl, seq, ack, data)))


seed = 42
starts = []
t = (T0 + 30) * 10**6
for i in range(20):
    starts.append(t)
    exchange(t, IMPLANT, C2, 50000 + i)
    seed = (seed * 1664525 + 1013904223) % 2**32
    u = seed / 2**32
    t += int(round(60 * (1 + 0.2 * (u - 0.5)) * 10**6))

t = (T0 + 10) * 10**6
for i, gap in enumerate([5, 40, 7, 180, 12, 95, 3, 60, 240, 20, 15, 130, 33, 8, 300]):
    exchange(t, CLIENT, WEB, 40000 + i)
    t += gap * 10**6

records.sort(key=lambda r: r[0])
with open("beaconing.pcap", "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for us, data in records:
        f.write(struct.pack("<IIII", us // 10**6, us % 10**6, len(data), len(data)))
        f.write(data)
print("wrote beaconing.pcap: %d frames" % len(records))
for n in (8, 16):
    iv = [(starts[i + 1] - starts[i]) / 1e6 for i in range(n - 1)]
    mean = sum(iv) / len(iv)
    sd = (sum((x - mean) ** 2 for x in iv) / len(iv)) ** 0.5
    print("after %d connections: start of the %dth %d us, period %.6f s, cv %.6f, end %d us" % (
        n, n, starts[n - 1], mean, sd / mean, starts[n - 1] + 190_000))
