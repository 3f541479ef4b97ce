package decode

import (
	"encoding/binary"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// Crafted frames for issue 3's "cases that must come out right"; every
// expected value is counted by hand from the bytes built here.

func ethHdr(et uint16) []byte {
	return []byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, byte(et >> 8), byte(et)}
}

// v4 is a 20-byte IPv4 header 10.0.0.1 -> 10.0.0.2 with the given total
// length field, followed by payload.
func v4(proto byte, id, flagsOff uint16, total int, payload []byte) []byte {
	h := []byte{0x45, 0, byte(total >> 8), byte(total), byte(id >> 8), byte(id), byte(flagsOff >> 8), byte(flagsOff),
		64, proto, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2}
	return append(h, payload...)
}

// udpHdr is a UDP header whose length field covers n payload bytes.
func udpHdr(sport, dport uint16, n int) []byte {
	b := make([]byte, 8)
	binary.BigEndian.PutUint16(b[0:], sport)
	binary.BigEndian.PutUint16(b[2:], dport)
	binary.BigEndian.PutUint16(b[4:], uint16(8+n))
	return b
}

func cat(parts ...[]byte) []byte {
	var out []byte
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

func udp4(sport, dport uint16, payload []byte) []byte {
	return cat(ethHdr(0x0800), v4(17, 1, 0, 20+8+len(payload), cat(udpHdr(sport, dport, len(payload)), payload)))
}

func TestCases(t *testing.T) {
	d, _ := New(layers.LinkTypeEthernet)
	// IPv6 header 2001:db8::1 -> 2001:db8::2, payload length 20, next header UDP, then 2 bytes
	v6 := cat(ethHdr(0x86dd), []byte{0x60, 0, 0, 0, 0, 20, 17, 64},
		[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
		[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, []byte{0x30, 0x39})
	// TCP 40000 -> 80 with a 24-byte header (data offset 6), flags PSH|ACK, then 4 payload bytes
	tcpWithOpt := func(opt ...byte) []byte {
		tcp := []byte{0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 2, 0x60, 0x18, 0xff, 0xff, 0, 0, 0, 0}
		tcp = append(tcp, opt...)
		return cat(ethHdr(0x0800), v4(6, 2, 0, 20+24+4, cat(tcp, []byte("data"))))
	}
	// TSO: total length 0, TCP 40000 -> 80 (20-byte header) and 3000 payload bytes
	tso := cat(ethHdr(0x0800), v4(6, 3, 0x4000, 0, cat([]byte{0x9c, 0x40, 0, 80, 0, 0, 0, 1, 0, 0, 0, 2, 0x50, 0x10, 0xff, 0xff, 0, 0, 0, 0},
		make([]byte, 3000))))
	shortTotal := func(total int) []byte { return cat(ethHdr(0x0800), v4(6, 4, 0, total, make([]byte, 20))) }
	// 802.1ad VID 1106 (0x452), 802.1Q VID 50 (0x032), then IPv4 UDP 5000 -> 6000
	qinq := func(outer uint16) []byte {
		return cat(ethHdr(0x88a8), []byte{byte(outer >> 8), byte(outer), 0x81, 0, 0x00, 0x32, 0x08, 0x00},
			v4(17, 5, 0, 20+8+4, cat(udpHdr(5000, 6000, 4), []byte("abcd"))))
	}

	for _, c := range []struct {
		name  string
		frame []byte
		kind  Kind
		check func(t *testing.T, p *Packet)
	}{
		{"ipv4 header then nothing", cat(ethHdr(0x0800), v4(6, 6, 0, 60, nil)), KindIP, func(t *testing.T, p *Packet) {
			// bytes from the total length (60), no ports captured; 60-20-20 = 20 payload bytes
			if p.IPBytes != 60 || p.Proto != 6 || p.SrcPort != 0 || p.DstPort != 0 || p.PayloadBytes != 20 || p.Network != NetIPv4 {
				t.Errorf("%+v", p)
			}
		}},
		{"ipv6 header then 2 bytes", v6, KindIP, func(t *testing.T, p *Packet) {
			// 20 + 40 bytes; 2 bytes are not a whole port pair
			if p.IPBytes != 60 || p.Proto != 17 || p.SrcPort != 0 || p.DstPort != 0 || p.AddrLen != 16 || p.Network != NetIPv6 {
				t.Errorf("%+v", p)
			}
		}},
		{"tcp option length 0", tcpWithOpt(2, 0, 0, 0), KindIP, func(t *testing.T, p *Packet) {
			if p.SrcPort != 40000 || p.DstPort != 80 || p.TCPFlags != 0x18 || p.PayloadBytes != 4 || string(p.Payload) != "data" {
				t.Errorf("%+v", p)
			}
		}},
		{"tcp option past the header", tcpWithOpt(8, 40, 0, 0), KindIP, func(t *testing.T, p *Packet) {
			if p.SrcPort != 40000 || p.DstPort != 80 || p.PayloadBytes != 4 || string(p.Payload) != "data" {
				t.Errorf("%+v", p)
			}
		}},
		{"ipv4 total length 0 (TSO)", tso, KindIP, func(t *testing.T, p *Packet) {
			// 20 IP + 20 TCP + 3000 captured after the Ethernet header
			if p.IPBytes != 3040 || p.PayloadBytes != 3000 || p.SrcPort != 40000 || p.DstPort != 80 {
				t.Errorf("%+v", p)
			}
		}},
		{"ipv4 total length 1", shortTotal(1), KindMalformed, func(t *testing.T, p *Packet) {
			if p.Reason != ReasonBadIPv4Total || p.Network != NetIPv4 {
				t.Errorf("%+v", p)
			}
		}},
		{"ipv4 total length 19", shortTotal(19), KindMalformed, func(t *testing.T, p *Packet) {
			if p.Reason != ReasonBadIPv4Total {
				t.Errorf("%+v", p)
			}
		}},
		{"qinq 1106/50", qinq(1106), KindIP, func(t *testing.T, p *Packet) {
			// 20 + 8 + 4 = 32 IP bytes
			if p.VLAN != 1106 || p.InnerVLAN != 50 || p.SrcPort != 5000 || p.DstPort != 6000 || p.IPBytes != 32 {
				t.Errorf("%+v", p)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			if k := d.Decode(c.frame, &p); k != c.kind {
				t.Fatalf("kind %d, want %d: %+v", k, c.kind, p)
			}
			c.check(t, &p)
			var l L7
			ParseL7(&p, &l) // must return on any input
		})
	}

	// The same 5-tuple in outer VLANs 1106 and 1107: the summaries differ in
	// VLAN, which the flow key and the PACKETS bucket include.
	var a, b Packet
	d.Decode(qinq(1106), &a)
	d.Decode(qinq(1107), &b)
	if a.VLAN == b.VLAN || a.Src != b.Src || a.Dst != b.Dst || a.SrcPort != b.SrcPort || a.DstPort != b.DstPort || a.Proto != b.Proto {
		t.Errorf("outer VLANs %d and %d: same key or different 5-tuple", a.VLAN, b.VLAN)
	}
}

// TestDNSUndecodable: UDP port 53 carrying something that is not a DNS
// message still makes a counted IP packet; the DNS layer is marked.
func TestDNSUndecodable(t *testing.T) {
	d, _ := New(layers.LinkTypeEthernet)
	hdr := []byte{0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0} // query, QDCOUNT 1
	for _, c := range []struct {
		name    string
		payload []byte
		reason  string
		query   string
	}{
		// QDCOUNT 0x5ec2; byte 12 is 0x9c: its top bits 10 are neither a label nor a pointer
		{"random bytes", []byte{0x8f, 0x3a, 0xd1, 0x07, 0x5e, 0xc2, 0x19, 0xa4, 0x73, 0x0b, 0xe6, 0x4d, 0x9c, 0x21, 0xf8, 0x55}, ReasonDNSBadQuestion, ""},
		{"header only", hdr, ReasonDNSBadQuestion, ""},
		{"shorter than a header", []byte{0x12, 0x34, 0x01}, ReasonDNSShort, ""},
		// the question name is a pointer to offset 12: itself
		{"self-pointing compression pointer", cat(hdr, []byte{0xc0, 0x0c, 0, 1, 0, 1}), ReasonDNSBadQuestion, ""},
		{"valid query", cat(hdr, []byte("\x07example\x03com\x00"), []byte{0, 1, 0, 1}), "", "example.com"},
	} {
		t.Run(c.name, func(t *testing.T) {
			var p Packet
			if d.Decode(udp4(40000, 53, c.payload), &p) != KindIP || p.DstPort != 53 || p.IPBytes != uint32(28+len(c.payload)) {
				t.Fatalf("not counted as a UDP packet: %+v", p)
			}
			var l L7
			ParseL7(&p, &l)
			if l.App != AppDNS || l.Undecodable != c.reason || l.DNSQuery != c.query {
				t.Errorf("app %q undecodable %q query %q, want dns %q %q", l.App, l.Undecodable, l.DNSQuery, c.reason, c.query)
			}
		})
	}
}
