#!/usr/bin/env python3
"""Writes stealth-scans.pcap: NULL, FIN and Xmas port scans (nmap -sN, -sF,
-sX) for the portscan rule's flag-probe criterion.

Scanner 10.0.0.66 (one source port per scan, 40001-40003, as nmap keeps
one per run) probes 30 ports
(1-30) of 10.0.0.20 three times, in three aligned minutes of packet time:
a NULL scan (no TCP flag) at minute 0, a FIN scan (FIN) at minute 1, an
Xmas scan (FIN, PSH, URG) at minute 2, one probe every 10 ms. The victim
answers each probe to a closed port with RST+ACK (RFC 9293 3.10.7.1) and
stays silent on its open ports 22 and 25. Between the scans a client
10.0.0.5 opens an HTTP connection to 10.0.0.20:80 (SYN, SYN-ACK, ACK,
FIN-ACK, ACK, FIN-ACK, ACK; no payload) each minute: ordinary traffic
that must not be counted. Frames: Ethernet II, IPv4 (header checksum set),
TCP (checksum 0: not checked by the readers), pcap microsecond format.
Run: python3 gen-stealth-scans.py
"""
import struct

T0 = 1795968000  # a multiple of 60: minute boundaries are window boundaries
SCANNER, VICTIM, CLIENT = "10.0.0.66", "10.0.0.20", "10.0.0.5"
OPEN = {22, 25}
FIN, SYN, RST, PSH, ACK, URG = 0x01, 0x02, 0x04, 0x08, 0x10, 0x20


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def frame(src, dst, sport, dport, flags, seq=1000, ack=0):
    tcp = struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0)
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp), 1, 0, 64, 6, 0, ip(src), ip(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    eth = b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00"
    return eth + hdr + tcp


records = []


def add(t, data):
    records.append((t, data))


for minute, flags in enumerate([0, FIN, FIN | PSH | URG]):
    base = T0 + 60 * minute + 5
    for i, port in enumerate(range(1, 31)):
        t = base + i * 0.010
        add(t, frame(SCANNER, VICTIM, 40001 + minute, port, flags))
        if port not in OPEN:
            add(t + 0.0002, frame(VICTIM, SCANNER, port, 40001 + minute, RST | ACK, seq=0, ack=1001))
    # an ordinary HTTP connection without payload
    t = T0 + 60 * minute + 30
    c = 50000 + minute
    for j, (s, d, sp, dp, fl) in enumerate([
        (CLIENT, VICTIM, c, 80, SYN), (VICTIM, CLIENT, 80, c, SYN | ACK), (CLIENT, VICTIM, c, 80, ACK),
        (CLIENT, VICTIM, c, 80, FIN | ACK), (VICTIM, CLIENT, 80, c, ACK), (VICTIM, CLIENT, 80, c, FIN | ACK),
        (CLIENT, VICTIM, c, 80, ACK)]):
        add(t + j * 0.001, frame(s, d, sp, dp, fl))

records.sort(key=lambda r: r[0])
with open("stealth-scans.pcap", "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for t, data in records:
        sec = int(t)
        usec = int(round((t - sec) * 1e6))
        f.write(struct.pack("<IIII", sec, usec, len(data), len(data)))
        f.write(data)
print("wrote stealth-scans.pcap: %d frames" % len(records))
