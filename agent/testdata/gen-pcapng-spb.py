#!/usr/bin/env python3
"""Writes pcapng-simple-packet-block.pcapng (stdlib only): one section, one
Ethernet interface (snaplen 0, microsecond timestamps), and three Ethernet +
IPv4 + UDP 10.0.0.1:40000 -> 10.0.0.2:53 frames with 10 payload bytes (52
bytes on the wire, IP bytes 38 each):
  1. Enhanced Packet Block at 1700000000.000001 (2023-11-14T22:13:20.000001Z)
  2. Simple Packet Block: no timestamp (pcapng spec section 4.4)
  3. Enhanced Packet Block at 1700000002.500001
Hand count: 3 packets, 3 IP, 114 IP bytes; first packet 22:13:20.000001,
last 22:13:22.500001, duration 2.5 s (the Simple Packet Block has no time).
"""
import os, struct

here = os.path.dirname(os.path.abspath(__file__))

def block(t, body):
    body += b"\x00" * (-len(body) % 4)
    n = 12 + len(body)
    return struct.pack("<II", t, n) + body + struct.pack("<I", n)

def frame():
    udp = struct.pack(">HHHH", 40000, 53, 18, 0) + b"q" * 10
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])) + udp
    return bytes.fromhex("020000000002020000000001") + b"\x08\x00" + ip

f = frame()
us1, us3 = 1700000000 * 10**6 + 1, 1700000002 * 10**6 + 500001
out = block(0x0A0D0D0A, struct.pack("<IHHq", 0x1A2B3C4D, 1, 0, -1))
out += block(1, struct.pack("<HHI", 1, 0, 0))
out += block(6, struct.pack("<IIIII", 0, us1 >> 32, us1 & 0xffffffff, len(f), len(f)) + f)
out += block(3, struct.pack("<I", len(f)) + f)
out += block(6, struct.pack("<IIIII", 0, us3 >> 32, us3 & 0xffffffff, len(f), len(f)) + f)
with open(os.path.join(here, "pcapng-simple-packet-block.pcapng"), "wb") as fh:
    fh.write(out)
