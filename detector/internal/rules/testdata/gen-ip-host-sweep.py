#!/usr/bin/env python3
"""Writes ip-host-sweep.pcap: two host sweeps of a routed /24 that reach IP,
for the hostsweep rule's tests at its default threshold (-hostsweep.hosts
32 distinct hosts on one service per -hostsweep.window 1 m). The shared
captures have none: the lab sweep is ARP on a LAN (absent hosts never get
an IP packet), the recon capture's sweep too.

Sweeper 10.0.0.66 (behind a router, so every probe is an IP packet) and the
network 192.0.2.0/24 (RFC 5737 documentation range), live hosts .1, .10,
.20, .53 and .80:
- minute 0 (packet time T0 .. T0+60 s): `nmap -sn -n 192.0.2.0/24` as root,
  nmap's default host discovery off the local network: to each address
  .1-.254 in turn, 1 ms apart from T0+5 s, an ICMP echo request (id 0x4d2,
  seq 0), a TCP SYN to 443, a TCP ACK to 80 and an ICMP timestamp request
  (type 13), 250 us apart. Live hosts answer: echo reply, SYN-ACK from 443
  (.10 and .80, then the sweeper's RST) or RST+ACK (the others), RST to the
  ACK, timestamp reply (type 14). The 32nd distinct address sent an echo
  request is 192.0.2.32, at T0 + 5 + 31 * 0.001 s.
- minute 1 (T0+60 .. T0+120 s): `nmap -Pn -n -p22 192.0.2.0/24`: a SYN to port
  22 of each address, 1 ms apart from T0+65 s, source port 51000; the live
  hosts answer RST+ACK except .10 (SYN-ACK, then the sweeper's RST); absent
  hosts are retried once 1 s later (nmap --max-retries default). The 32nd
  distinct address sent a SYN to 22 is 192.0.2.32, at T0 + 65 + 31 * 0.001 s.
Benign traffic beside the sweeps: 10.0.0.5 fetches a page from 192.0.2.80
(GET / and a 200 answer of 1,312 bytes of HTML, in one connection) every 20 s.

Expected by hand: one hostsweep alert per minute naming 10.0.0.66 (no
target: the evidence names the service and sample hosts), published at
the 32nd host and updated at the 64th and 128th (the rule's doublings;
254 hosts); nothing else: each address gets at most 3 ports (443, 80 and
22), far below -portscan.ports 50; nothing names 10.0.0.5.

Frames: Ethernet II, IPv4 (header checksum set), TCP (checksum 0: not
checked by the readers), ICMP (checksum set); pcap microsecond format.
Run: python3 gen-ip-host-sweep.py
"""
import struct

T0 = 1795968000  # a multiple of 60
SWEEPER, CLIENT = "10.0.0.66", "10.0.0.5"
LIVE = {1, 10, 20, 53, 80}
HTTPS_OPEN = {10, 80}
SSH_OPEN = {10}
FIN, SYN, RST, PSH, ACK = 0x01, 0x02, 0x04, 0x08, 0x10


def ip(a):
    return bytes(int(x) for x in a.split("."))


def csum(b):
    if len(b) % 2:
        b += b"\0"
    s = sum(struct.unpack("!%dH" % (len(b) // 2), b))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


def eth(src, dst, proto, payload):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 1, 0, 64, proto, 0, ip(src), ip(dst))
    hdr = hdr[:10] + struct.pack("!H", csum(hdr)) + hdr[12:]
    return b"\x02\x00\x00\x00\x00\x02" + b"\x02\x00\x00\x00\x00\x01" + b"\x08\x00" + hdr + payload


def tcp(src, dst, sport, dport, flags, seq=1000, ack=0, data=b""):
    return eth(src, dst, 6, struct.pack("!HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, 1024, 0, 0) + data)


def icmp(src, dst, typ, rest=b""):
    body = struct.pack("!BBHHH", typ, 0, 0, 0x4D2, 0) + rest
    body = body[:2] + struct.pack("!H", csum(body)) + body[4:]
    return eth(src, dst, 1, body)


records = []


def add(us, data):
    records.append((us, data))


# minute 0: nmap -sn
for h in range(1, 255):
    host = "192.0.2.%d" % h
    t = (T0 + 5) * 10**6 + (h - 1) * 1000
    add(t, icmp(SWEEPER, host, 8))
    add(t + 250, tcp(SWEEPER, host, 61000, 443, SYN))
    add(t + 500, tcp(SWEEPER, host, 61000, 80, ACK, ack=1))
    add(t + 750, icmp(SWEEPER, host, 13, bytes(12)))
    if h in LIVE:
        add(t + 100, icmp(host, SWEEPER, 0))
        if h in HTTPS_OPEN:
            add(t + 350, tcp(host, SWEEPER, 443, 61000, SYN | ACK, seq=5000, ack=1001))
            add(t + 400, tcp(SWEEPER, host, 61000, 443, RST, seq=1001))
        else:
            add(t + 350, tcp(host, SWEEPER, 443, 61000, RST | ACK, seq=0, ack=1001))
        add(t + 600, tcp(host, SWEEPER, 80, 61000, RST, seq=1))
        add(t + 850, icmp(host, SWEEPER, 14, bytes(12)))

# minute 1: nmap -Pn -p22
for h in range(1, 255):
    host = "192.0.2.%d" % h
    t = (T0 + 65) * 10**6 + (h - 1) * 1000
    add(t, tcp(SWEEPER, host, 51000, 22, SYN))
    if h in SSH_OPEN:
        add(t + 300, tcp(host, SWEEPER, 22, 51000, SYN | ACK, seq=7000, ack=1001))
        add(t + 350, tcp(SWEEPER, host, 51000, 22, RST, seq=1001))
    elif h in LIVE:
        add(t + 300, tcp(host, SWEEPER, 22, 51000, RST | ACK, seq=0, ack=1001))
    else:
        add(t + 1_000_000, tcp(SWEEPER, host, 51000, 22, SYN))  # retry

# benign: an HTTP page from 192.0.2.80 every 20 s
for k in range(6):
    t, c, s = (T0 + 20 * k + 2) * 10**6, 45000 + k, "192.0.2.80"
    req = b"GET / HTTP/1.1\r\nHost: 192.0.2.80\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n"
    body = b"<html>" + b"x" * 1300 + b"</html>"
    page = b"HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nContent-Length: %d\r\n\r\n" % len(body) + body
    for j, (a, b, sp, dp, fl, seq, ack, data) in enumerate([
            (CLIENT, s, c, 80, SYN, 100, 0, b""), (s, CLIENT, 80, c, SYN | ACK, 900, 101, b""),
            (CLIENT, s, c, 80, ACK, 101, 901, b""), (CLIENT, s, c, 80, PSH | ACK, 101, 901, req),
            (s, CLIENT, 80, c, PSH | ACK, 901, 101 + len(req), page),
            (CLIENT, s, c, 80, FIN | ACK, 101 + len(req), 901 + len(page), b""),
            (s, CLIENT, 80, c, FIN | ACK, 901 + len(page), 102 + len(req), b""),
            (CLIENT, s, c, 80, ACK, 102 + len(req), 902 + len(page), b"")]):
        add(t + j * 1000, tcp(a, b, sp, dp, fl, seq, ack, data))

records.sort(key=lambda r: r[0])
with open("ip-host-sweep.pcap", "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1))
    for us, data in records:
        f.write(struct.pack("<IIII", us // 10**6, us % 10**6, len(data), len(data)))
        f.write(data)
print("wrote ip-host-sweep.pcap: %d frames" % len(records))
