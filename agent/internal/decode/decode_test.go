package decode

import (
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"unicode/utf8"

	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"

	"netwatch/testkit"
)

// frames reads up to max frames of a classic pcap file, for seeds and benchmarks.
func frames(tb testing.TB, file string, max int) ([][]byte, layers.LinkType) {
	f, err := os.Open(file)
	if err != nil {
		tb.Skipf("capture not available: %v", err)
	}
	defer f.Close()
	r, err := pcapgo.NewReader(f)
	if err != nil {
		tb.Fatal(err)
	}
	var out [][]byte
	for len(out) < max {
		data, _, err := r.ReadPacketData()
		if err == io.EOF {
			break
		}
		if err != nil {
			tb.Fatal(err)
		}
		out = append(out, data)
	}
	return out, r.LinkType()
}

var pcaps = filepath.Join("..", "..", "..", "..", "shared", "data", "pcaps")

// FuzzDecode feeds arbitrary frames to every link type's decoder and L7
// parser: no input may panic, and the invariants of a KindIP packet and of
// an ARP summary hold. The input is also handed straight to the TLS
// ClientHello parser and to the QUIC frame reader and ClientHello merge that
// run after decryption, which random bytes would otherwise never reach
// (they do not authenticate); after a frame that starts a split ClientHello
// its own bytes are fed as the next TCP segment. Seeds: the first frames of
// real captures with tunnels, fragments, VLANs, extension headers, DNS,
// TLS, QUIC, HTTP and ARP (Ethernet, SLL, SLL2) from ../shared/data/pcaps;
// the RFC 9001 and RFC 9369 sample client Initials in UDP to port 443; the
// JA4 spec's ClientHello; the first segment of Go's split ClientHello.
func FuzzDecode(f *testing.F) {
	links := []layers.LinkType{layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeLinuxSLL2,
		layers.LinkTypeRaw, layers.LinkTypeNull, layers.LinkTypeLoop, layers.LinkTypeIPv4, layers.LinkTypeIPv6}
	for _, name := range []string{"tunnel-vxlan-http.pcap", "tunnel-gre-icmp-ping.pcap", "tunnel-6in4-ping6.pcap",
		"tunnel-4in4-ipip-udp.pcap", "ipv4-fragments-tcp-5-frags.pcap", "ipv6-fragments-dns.pcap",
		"vlan-qinq-double-8021q-http-get.pcap", "ipv6-exthdr-hopbyhop-routing0.pcap", "tls12-clienthello-sni-google-de.pcap",
		"eth-ipv4-dns-http-browsing-wikipedia.pcap", "malformed-ipv6-39-byte-header.pcap", "malformed-ipv4-bogus-header-length.pcap",
		"attack-tls-heartbleed.pcap", "quic-v1-chromium-sni-api-cirrus-ci-com.pcap", "arp-who-has-and-reply.pcap",
		"linux-sll-arp.pcap", "linux-sll2-icmp-icmpv6-arp.pcap"} {
		fr, link := frames(f, filepath.Join(pcaps, name), 8)
		li := slices.Index(links, link)
		for _, d := range fr {
			f.Add(uint8(li), d)
		}
	}
	for _, file := range []string{"rfc9001-a2-client-initial.hex", "rfc9369-a2-client-initial.hex"} {
		b, err := os.ReadFile("testdata/" + file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(uint8(0), udp4(50000, 443, mustHex(string(b))))
	}
	f.Add(uint8(0), cat(ethHdr(0x0800), v4(6, 1, 0, 20+20+len(specHello(0x0403)), cat([]byte{0xc3, 0x50, 1, 0xbb,
		0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0}, specHello(0x0403)))))
	f.Add(uint8(0), rfcCryptoFrame)
	if rec := goClientHelloBytes(); len(rec) > 200 {
		f.Add(uint8(0), tcpFrame(50000, 1, rec[:len(rec)-100])) // the start of a split ClientHello
	}
	f.Fuzz(func(t *testing.T, link uint8, data []byte) {
		d, err := New(links[int(link)%len(links)])
		if err != nil {
			t.Fatal(err)
		}
		var p Packet
		if d.Decode(data, &p) == KindIP {
			if p.AddrLen != 4 && p.AddrLen != 16 {
				t.Fatalf("address length %d", p.AddrLen)
			}
			if p.FragOffset != 0 && (p.SrcPort != 0 || p.DstPort != 0) {
				t.Fatal("ports read out of a non-first fragment")
			}
		}
		if p.ARP.OK && (p.Network != NetARP || p.Kind != KindNonIP) {
			t.Fatalf("ARP summary on a %v frame of kind %d", p.Network, p.Kind)
		}
		// the same bytes as a frame cut by a snaplen (a wire length beyond
		// them, from the link byte): the truncated-header and TSO paths
		var c Packet
		c.WireLen = uint32(len(data)) + 1 + uint32(link)*37
		switch d.Decode(data, &c) {
		case KindIP:
			if c.AddrLen != 4 && c.AddrLen != 16 {
				t.Fatalf("cut frame: address length %d", c.AddrLen)
			}
		case KindTruncated:
			if c.AddrLen != 0 || c.Reason == "" || (c.Network != NetIPv4 && c.Network != NetIPv6) {
				t.Fatalf("truncated frame: %+v", c)
			}
		}
		var l L7
		ParseL7(&p, &l)
		checkL7(t, &l)
		if l.TLSPending() {
			// the start of a split ClientHello: the frame's bytes as its next segment
			q := p
			q.Seq, q.Payload, q.PayloadBytes = p.Seq+uint32(len(p.Payload)), data, uint32(len(data))
			ParseL7(&q, &l)
			checkL7(t, &l)
		}
		// the parsers behind TLS records and QUIC decryption, on raw bytes
		l = L7{}
		l.parseClientHello(data, 't')
		checkL7(t, &l)
		// the same bytes as the plaintext of two client Initials of one
		// connection: the second is put together with what the first kept
		l = L7{}
		l.quicHello(QUICv1, data[:min(len(data), 8)], data)
		checkL7(t, &l)
		l = L7{s: l.s} // the fields of one ParseL7, the kept data of the connection
		l.quicHello(QUICv1, data[:min(len(data), 8)], data)
		checkL7(t, &l)
	})
}

// checkL7 asserts what any parse must give: valid UTF-8 strings (protobuf
// strings), fingerprints of their fixed shapes, none from a partial hello.
func checkL7(t *testing.T, l *L7) {
	for _, s := range append([]string{l.TLSSNI, l.JA3Full, l.JA3, l.JA4, l.DNSQuery, l.HTTPHost, l.HTTPUA}, l.TLSALPN...) {
		if !utf8.ValidString(s) {
			t.Fatalf("invalid UTF-8 %q", s)
		}
	}
	if l.JA3 != "" && len(l.JA3) != 32 || l.JA4 != "" && (len(l.JA4) != 36 || l.JA4[10] != '_' || l.JA4[23] != '_') {
		t.Fatalf("fingerprint shapes: JA3 %q JA4 %q", l.JA3, l.JA4)
	}
	if l.HelloPartial && (l.JA3 != "" || l.JA4 != "") {
		t.Fatal("fingerprint of a partial ClientHello")
	}
}

func TestUnsupportedLinkType(t *testing.T) {
	if _, err := New(layers.LinkTypeIEEE802_11); err == nil {
		t.Fatal("802.11 accepted")
	}
}

// TestCrafted checks hand-built frames: values counted by hand from the bytes.
func TestCrafted(t *testing.T) {
	d, _ := New(layers.LinkTypeEthernet)
	eth := func(et uint16, payload ...byte) []byte {
		return append([]byte{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, byte(et >> 8), byte(et)}, payload...)
	}
	ipv4 := func(proto byte, flagsOff uint16, total int, payload ...byte) []byte {
		h := []byte{0x45, 0, byte(total >> 8), byte(total), 0x12, 0x34, byte(flagsOff >> 8), byte(flagsOff), 64, proto, 0, 0,
			10, 0, 0, 1, 10, 0, 0, 2}
		return append(h, payload...)
	}
	udp := []byte{0x30, 0x39, 0x00, 0x35, 0, 12, 0, 0, 'a', 'b', 'c', 'd'}
	var p Packet
	// first fragment, UDP 12345 -> 53, total 32 (20 + 12)
	if d.Decode(eth(0x0800, ipv4(17, 0x2000, 32, udp...)...), &p) != KindIP || p.SrcPort != 12345 || p.DstPort != 53 ||
		!p.Fragment || p.IPBytes != 32 || p.PayloadBytes != 4 {
		t.Errorf("first fragment: %+v", p)
	}
	// non-first fragment (offset 8 bytes): bytes that look like ports are not read
	if d.Decode(eth(0x0800, ipv4(17, 0x0001, 32, udp...)...), &p) != KindIP || p.SrcPort != 0 || p.FragOffset != 8 {
		t.Errorf("non-first fragment: %+v", p)
	}
	// QinQ: 802.1ad 100, 802.1Q 200
	qinq := eth(0x88a8, append([]byte{0, 100, 0x81, 0, 0, 200, 0x08, 0}, ipv4(17, 0, 32, udp...)...)...)
	if d.Decode(qinq, &p) != KindIP || p.VLAN != 100 || p.InnerVLAN != 200 {
		t.Errorf("qinq: %+v", p)
	}
	// ICMP error quoting a UDP header: counted as ICMP, type 3 code 3, no ports
	icmp := append([]byte{3, 3, 0, 0, 0, 0, 0, 0}, ipv4(17, 0, 32, udp...)...)
	if d.Decode(eth(0x0800, ipv4(1, 0, 20+len(icmp), icmp...)...), &p) != KindIP || p.Proto != 1 || p.ICMPType != 3 ||
		p.SrcPort != 0 || p.Dst[3] != 2 {
		t.Errorf("icmp error: %+v", p)
	}
	// IPv4 header length 4 words: malformed
	bad := ipv4(17, 0, 32, udp...)
	bad[0] = 0x44
	if d.Decode(eth(0x0800, bad...), &p) != KindMalformed {
		t.Errorf("bad ihl: %+v", p)
	}
	// ARP
	if d.Decode(eth(0x0806, make([]byte, 28)...), &p) != KindNonIP || p.Network != NetARP {
		t.Errorf("arp: %+v", p)
	}
}

func BenchmarkDecode(b *testing.B) {
	for _, name := range []string{"attack-synflood-spoofed-sources.pcap", "eth-ipv4-dns-http-browsing-wikipedia.pcap", "tunnel-vxlan-http.pcap"} {
		b.Run(name, func(b *testing.B) {
			fr, link := frames(b, filepath.Join(pcaps, name), 100000)
			d, _ := New(link)
			var total int
			for _, f := range fr {
				total += len(f)
			}
			b.SetBytes(int64(total / len(fr)))
			b.ReportAllocs()
			var p Packet
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				d.Decode(fr[i%len(fr)], &p)
			}
			b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
		})
	}
}

// TestDecodeAllocs guards the allocation-free decode path.
func TestDecodeAllocs(t *testing.T) {
	fr, link := frames(t, filepath.Join(pcaps, "tunnel-vxlan-http.pcap"), 100)
	d, _ := New(link)
	var p Packet
	if n := testing.AllocsPerRun(100, func() {
		for _, f := range fr {
			d.Decode(f, &p)
		}
	}); n != 0 {
		t.Errorf("%v allocations per run, want 0", n)
	}
}

// TestSCTPPorts: the Community ID spec's SCTP capture (../shared/data/
// community-id/sctp.pcap): tshark reads sctp.srcport 7, sctp.dstport 7 in
// every frame, frame lengths 78, 174 and 150 (IPv4 over Ethernet: SCTP
// payload = frame - 14 - 20 - 12 common header bytes). Without the ports the
// enricher hashed ports 0 and its Community ID differed from the spec's.
func TestSCTPPorts(t *testing.T) {
	file := filepath.Join("..", "..", "..", "..", "shared", "data", "community-id", "sctp.pcap")
	if _, err := os.Stat(file); err != nil {
		testkit.Unavailable(t, "no spec capture: %v", err)
	}
	fs, link := frames(t, file, 3)
	if len(fs) != 3 {
		t.Fatalf("%d frames, want 3", len(fs))
	}
	d, _ := New(link)
	var p Packet
	for i, f := range fs {
		if k := d.Decode(f, &p); k != KindIP || p.Proto != 132 || p.SrcPort != 7 || p.DstPort != 7 ||
			int(p.PayloadBytes) != len(f)-14-20-12 {
			t.Errorf("frame %d: kind %v proto %d ports %d > %d payload %d, want IP SCTP 7 > 7 payload %d",
				i+1, k, p.Proto, p.SrcPort, p.DstPort, p.PayloadBytes, len(f)-14-20-12)
		}
	}
}

// TestTunnelOuterFragments: a 2,000-byte inner UDP datagram 192.168.5.1:1234
// -> 192.168.5.2:5678 in VXLAN (UDP 50000 -> 4789) and in GRE, the outer
// IPv4 packet 9.9.9.1 -> 9.9.9.2 split in two (testdata/*-outer-frag.pcap,
// crafted by the independent QA of issue 3). Expected, from tshark with
// defragmentation off (`tshark -o ip.defragment:FALSE -T fields -e ip.src
// -e ip.len -e udp.srcport ...`): frame 1's innermost header is the inner
// IPv4 packet, 2000 bytes, ports 1234 -> 5678, the tunnel recorded; frame
// 2 is the outer fragment alone (offset 1480), 570 (VXLAN) or 544 (GRE)
// bytes, no ports.
func TestTunnelOuterFragments(t *testing.T) {
	for _, c := range []struct {
		file   string
		tunnel uint8
		second uint32
	}{{"vxlan-outer-frag.pcap", TunnelVXLAN, 570}, {"gre-outer-frag.pcap", TunnelGRE, 544}} {
		frs, link := frames(t, filepath.Join("testdata", c.file), 10)
		if len(frs) != 2 {
			t.Fatalf("%s: %d frames", c.file, len(frs))
		}
		d, err := New(link)
		if err != nil {
			t.Fatal(err)
		}
		var p Packet
		if d.Decode(frs[0], &p) != KindIP {
			t.Fatalf("%s frame 1: %+v", c.file, p)
		}
		if netip.AddrFrom4([4]byte(p.Src[:4])).String() != "192.168.5.1" || p.SrcPort != 1234 || p.DstPort != 5678 ||
			p.IPBytes != 2000 || p.Tunnel != c.tunnel {
			t.Errorf("%s frame 1: %v:%d -> %d, %d IP bytes, tunnel %d; want 192.168.5.1:1234 -> 5678, 2000, tunnel %d",
				c.file, netip.AddrFrom4([4]byte(p.Src[:4])), p.SrcPort, p.DstPort, p.IPBytes, p.Tunnel, c.tunnel)
		}
		if d.Decode(frs[1], &p) != KindIP {
			t.Fatalf("%s frame 2: %+v", c.file, p)
		}
		if netip.AddrFrom4([4]byte(p.Src[:4])).String() != "9.9.9.1" || p.SrcPort != 0 || p.DstPort != 0 ||
			p.IPBytes != c.second || p.FragOffset != 1480 || p.Tunnel != TunnelNone {
			t.Errorf("%s frame 2: %v:%d -> %d, %d IP bytes at offset %d, tunnel %d; want 9.9.9.1, no ports, %d bytes at 1480, none",
				c.file, netip.AddrFrom4([4]byte(p.Src[:4])), p.SrcPort, p.DstPort, p.IPBytes, p.FragOffset, p.Tunnel, c.second)
		}
	}
}
