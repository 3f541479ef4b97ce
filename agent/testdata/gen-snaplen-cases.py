#!/usr/bin/env python3
"""Writes the crafted captures of issue 3's snaplen and TSO cases (stdlib only).

snaplen54-vlan-ipv6.pcap (Ethernet, snaplen 54), frames:
  1. 802.1Q VID 100 + IPv6 + TCP (20-byte header, no payload): wire 78 bytes,
     captured 54, so 36 bytes of the 40-byte IPv6 header: truncated, IP bytes 60
  2. 802.1Q VID 100 + IPv6 + UDP, 100 payload bytes: wire 166, captured 54:
     truncated, IP bytes 148
  3. Ethernet + IPv6 + TCP, 10 payload bytes: wire 84, captured 54 = the whole
     IPv6 header: IP, 2001:db8::3 -> 2001:db8::4, ports not captured, IP bytes 70
  4. 802.1Q VID 100 + IPv4 with 20 bytes of options (IHL 10) + TCP: wire 78,
     captured 54, so 36 of the 40 header bytes: addresses there, IP,
     192.0.2.1 -> 192.0.2.2, IP bytes 60
  5. 802.1Q VID 100 + 30 bytes claiming IPv6, not cut (captured = wire = 48):
     malformed (short_ipv6_header)
snaplen54-sll2-ipv6.pcap (Linux SLL2, snaplen 54), frames:
  1. SLL2 + IPv6 + ICMPv6 echo request (16 bytes): wire 76, captured 54, so 34
     bytes of IPv6: truncated, IP bytes 56
  2. SLL2 + IPv4 + UDP 53 -> 40000, 10 payload bytes: wire 58, captured 54:
     IP with ports, IP bytes 38
tso-snaplen.pcap (Ethernet, snaplen 262144), one TCP segment 10.0.0.1:40000 ->
  10.0.0.2:80 with IPv4 total length 0 (TSO) and 3000 payload bytes, wire 3054
  bytes, written three times: captured whole (3054), cut at 54 and at 96.
  IP bytes 3054 - 14 = 3040 each (payload 3000), whatever the snaplen.
snaplen20-ipv6.pcap (Ethernet, snaplen 262144), one Ethernet + IPv6 + UDP
  40001 -> 53 datagram with 100 payload bytes (wire 162, payload length 108),
  written three times, cut by the record's captured length:
  1. at 20: 6 bytes of IPv6, the payload length (bytes 4-5) kept: truncated,
     IP bytes 40 + 108 = 148, next header not kept (transport "other")
  2. at 21: 7 bytes, the next header kept too: truncated, IP bytes 148, udp
  3. at 19: 5 bytes, the payload length itself cut: malformed
     (short_ipv6_header), not an IP frame
"""
import struct, os

here = os.path.dirname(os.path.abspath(__file__))

def pcap(name, link, snaplen, frames):
    with open(os.path.join(here, name), "wb") as f:
        f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, snaplen, link))
        for i, (data, wire) in enumerate(frames):
            cap = data[:snaplen]
            f.write(struct.pack("<IIII", 1700000000 + i, 1000 * i, len(cap), wire))
            f.write(cap)

def eth(et, vlan=None):
    h = bytes.fromhex("020000000002020000000001")
    if vlan is not None:
        h += struct.pack(">HH", 0x8100, vlan)
    return h + struct.pack(">H", et)

def ip6(nh, payload, src=1, dst=2):
    a = lambda n: bytes.fromhex("20010db8000000000000000000000000")[:15] + bytes([n])
    return struct.pack(">IHBB", 0x60000000, len(payload), nh, 64) + a(src) + a(dst) + payload

def ip4(proto, payload, src, dst, opts=b"", total=None):
    ihl = (20 + len(opts)) // 4
    tl = 20 + len(opts) + len(payload) if total is None else total
    return struct.pack(">BBHHHBBH4s4s", 0x40 | ihl, 0, tl, 1, 0x4000, 64, proto, 0,
                       bytes(src), bytes(dst)) + opts + payload

def tcp(sport, dport, data=b""):
    return struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 0x50, 0x02, 65535, 0, 0) + data

def udp(sport, dport, data):
    return struct.pack(">HHHH", sport, dport, 8 + len(data), 0) + data

def sll2(proto):
    # protocol type, reserved, interface index, ARPHRD_ETHER, packet type, address length, address
    return struct.pack(">HHIHBB8s", proto, 0, 1, 1, 0, 6, bytes.fromhex("0200000000010000"))

f1 = eth(0x86dd, 100) + ip6(6, tcp(40000, 80))
f2 = eth(0x86dd, 100) + ip6(17, udp(40001, 53, b"\x00" * 100))
f3 = eth(0x86dd) + ip6(6, tcp(40002, 443, b"x" * 10), 3, 4)
f4 = eth(0x0800, 100) + ip4(6, tcp(40003, 80), [192, 0, 2, 1], [192, 0, 2, 2], opts=b"\x01" * 20)
f5 = eth(0x86dd, 100) + ip6(6, tcp(40004, 80))[:30]
pcap("snaplen54-vlan-ipv6.pcap", 1, 54, [(f, len(f)) for f in (f1, f2, f3, f4, f5)])

s1 = sll2(0x86dd) + ip6(58, bytes([128, 0, 0, 0]) + b"\x00" * 12)
s2 = sll2(0x0800) + ip4(17, udp(53, 40000, b"y" * 10), [10, 0, 0, 53], [10, 0, 0, 9])
pcap("snaplen54-sll2-ipv6.pcap", 276, 54, [(s1, len(s1)), (s2, len(s2))])

seg = eth(0x0800) + ip4(6, tcp(40000, 80, b"z" * 3000), [10, 0, 0, 1], [10, 0, 0, 2], total=0)
with open(os.path.join(here, "tso-snaplen.pcap"), "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1))
    for i, n in enumerate((len(seg), 54, 96)):
        f.write(struct.pack("<IIII", 1700000000 + i, 0, n, len(seg)))
        f.write(seg[:n])

d6 = eth(0x86dd) + ip6(17, udp(40001, 53, b"\x00" * 100))
with open(os.path.join(here, "snaplen20-ipv6.pcap"), "wb") as f:
    f.write(struct.pack("<IHHiIII", 0xa1b2c3d4, 2, 4, 0, 0, 262144, 1))
    for i, n in enumerate((20, 21, 19)):
        f.write(struct.pack("<IIII", 1700000000 + i, 0, n, len(d6)))
        f.write(d6[:n])
