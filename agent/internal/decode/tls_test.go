package decode

import (
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"netwatch/testkit"
)

func u16s(v ...uint16) []byte {
	var b []byte
	for _, x := range v {
		b = binary.BigEndian.AppendUint16(b, x)
	}
	return b
}

type ext struct {
	typ  uint16
	data []byte
}

// clientHello builds a TLS record holding a ClientHello (RFC 8446 4.1.2).
func clientHello(version uint16, ciphers []uint16, exts ...ext) []byte {
	body := binary.BigEndian.AppendUint16(nil, version)
	body = append(body, make([]byte, 32)...) // random
	body = append(body, 0)                   // session id
	body = binary.BigEndian.AppendUint16(body, uint16(2*len(ciphers)))
	body = append(body, u16s(ciphers...)...)
	body = append(body, 1, 0) // compression: null
	var e []byte
	for _, x := range exts {
		e = binary.BigEndian.AppendUint16(e, x.typ)
		e = binary.BigEndian.AppendUint16(e, uint16(len(x.data)))
		e = append(e, x.data...)
	}
	body = binary.BigEndian.AppendUint16(body, uint16(len(e)))
	body = append(body, e...)
	hs := append([]byte{1, byte(len(body) >> 16), byte(len(body) >> 8), byte(len(body))}, body...)
	return append([]byte{0x16, 3, 1, byte(len(hs) >> 8), byte(len(hs))}, hs...)
}

func sniExt(name string) ext {
	d := binary.BigEndian.AppendUint16(nil, uint16(3+len(name)))
	d = append(d, 0)
	d = binary.BigEndian.AppendUint16(d, uint16(len(name)))
	return ext{0, append(d, name...)}
}

func alpnExt(names ...[]byte) ext {
	var l []byte
	for _, n := range names {
		l = append(append(l, byte(len(n))), n...)
	}
	return ext{16, append(binary.BigEndian.AppendUint16(nil, uint16(len(l))), l...)}
}

func listExt(typ uint16, v ...uint16) ext {
	return ext{typ, append(binary.BigEndian.AppendUint16(nil, uint16(2*len(v))), u16s(v...)...)}
}

func tcpTLS(record []byte) *Packet {
	return &Packet{Kind: KindIP, Proto: 6, SrcPort: 50000, DstPort: 443, AddrLen: 4, Payload: record,
		PayloadBytes: uint32(len(record))}
}

// specHello is the ClientHello of the JA4 spec's example
// (FoxIO-LLC/ja4 technical_details/JA4.md): its 15 ciphers and 16
// extensions in the listed order, ALPN h2, those signature algorithms,
// plus GREASE values (RFC 8701) in the ciphers, extensions, groups,
// supported versions and signature algorithms, which JA4 ignores.
func specHello(sigAlgs ...uint16) []byte {
	ciphers := []uint16{0x1301, 0x1302, 0x1303, 0xc02b, 0xc02f, 0xc02c, 0xc030, 0xcca9, 0xcca8, 0xc013, 0xc014,
		0x009c, 0x009d, 0x002f, 0x0035}
	exts := []ext{}
	for _, typ := range []uint16{0x001b, 0x0000, 0x0033, 0x0010, 0x4469, 0x0017, 0x002d, 0x000d, 0x0005, 0x0023,
		0x0012, 0x002b, 0xff01, 0x000b, 0x000a, 0x0015} {
		switch typ {
		case 0x0000:
			exts = append(exts, sniExt("example.org"))
		case 0x0010:
			exts = append(exts, alpnExt([]byte("h2"), []byte("http/1.1")))
		case 0x000d:
			exts = append(exts, listExt(typ, sigAlgs...))
		case 0x002b:
			exts = append(exts, ext{typ, append([]byte{6}, u16s(0x3a3a, 0x0304, 0x0303)...)})
		case 0x000a:
			exts = append(exts, listExt(typ, 0x4a4a, 0x001d, 0x0017))
		case 0x000b:
			exts = append(exts, ext{typ, []byte{1, 0}})
		default:
			exts = append(exts, ext{typ, nil})
		}
		if typ == 0x0033 {
			exts = append(exts, ext{0xdada, nil}) // GREASE extension
		}
	}
	return clientHello(0x0303, append([]uint16{0x2a2a}, ciphers...), exts...)
}

// TestJA4Spec: the spec's example gives its fingerprint
// t13d1516h2_8daaf6152771_e5627efa2ab1, and without signature
// algorithms its stated hash 6d807ffa2a79.
func TestJA4Spec(t *testing.T) {
	var l L7
	ParseL7(tcpTLS(specHello(0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601, 0x6a6a)), &l)
	if l.JA4 != "t13d1516h2_8daaf6152771_e5627efa2ab1" {
		t.Errorf("JA4 %s, want the spec's t13d1516h2_8daaf6152771_e5627efa2ab1", l.JA4)
	}
	if l.TLSSNI != "example.org" || strings.Join(l.TLSALPN, ",") != "h2,http/1.1" {
		t.Errorf("sni %q alpn %q", l.TLSSNI, l.TLSALPN)
	}
	// JA3 by hand: legacy version 771, ciphers, extensions (decimal, in order), groups, point formats
	const ja3 = "771,4865-4866-4867-49195-49199-49196-49200-52393-52392-49171-49172-156-157-47-53," +
		"27-0-51-16-17513-23-45-13-5-35-18-43-65281-11-10-21,29-23,0"
	if l.JA3Full != ja3 {
		t.Errorf("JA3 %q, want %q", l.JA3Full, ja3)
	}
	ParseL7(tcpTLS(specHello()), &l)
	if l.JA4 != "t13d1516h2_8daaf6152771_6d807ffa2a79" {
		t.Errorf("JA4 without signature algorithms %s, want ..._6d807ffa2a79", l.JA4)
	}
}

// TestJA4ALPN: the first ALPN value's first and last characters, or the
// first and last hex digits when either byte is not alphanumeric (the
// spec's own examples), "00" without ALPN; TLS 1.2 without
// supported_versions; no SNI gives "i"; no ciphers or extensions hash to
// zeros.
func TestJA4ALPN(t *testing.T) {
	for _, c := range []struct {
		alpn []byte
		want string
	}{
		{[]byte("h2"), "h2"}, {[]byte("http/1.1"), "h1"}, {[]byte("h"), "hh"},
		{[]byte{0xab}, "ab"}, {[]byte{0xab, 0xcd}, "ad"}, {[]byte{0x30, 0xab}, "3b"},
		{[]byte{0x30, 0x31, 0xab, 0xcd}, "3d"}, {[]byte{0x30, 0xab, 0xcd, 0x31}, "01"},
	} {
		var l L7
		ParseL7(tcpTLS(clientHello(0x0303, []uint16{0x002f}, alpnExt(c.alpn))), &l)
		if got := l.JA4[8:10]; got != c.want || l.JA4[:8] != "t12i0101" {
			t.Errorf("ALPN %x: JA4 %s, want %s", c.alpn, l.JA4, c.want)
		}
	}
	var l L7
	ParseL7(tcpTLS(clientHello(0x0301, nil)), &l)
	if l.JA4 != "t10i000000_000000000000_000000000000" || l.JA3Full != "769,,,," {
		t.Errorf("empty hello: JA4 %s JA3 %q", l.JA4, l.JA3Full)
	}
}

// TestClientHelloSplit: Chrome 34's ClientHello (tls12-clienthello-sni-google-de.pcap
// frame 4, 209 bytes of TCP payload by tshark) cut after 120 bytes, as if
// the rest came in the next segment: SNI (google.de, tshark) and ALPN are in
// the first part, JA3/JA4 are not computed; the next segment alone is not
// a ClientHello.
func TestClientHelloSplit(t *testing.T) {
	fr, _ := frames(t, filepath.Join(testkit.Pcaps(t), "tls12-clienthello-sni-google-de.pcap"), 4)
	d, _ := New(1)
	var p Packet
	d.Decode(fr[3], &p)
	if len(p.Payload) != 209 {
		t.Fatalf("payload %d bytes, tshark says 209", len(p.Payload))
	}
	full := p.Payload
	var l L7
	p.Payload = full[:120]
	ParseL7(&p, &l)
	if !l.Hello || !l.HelloPartial || l.TLSSNI != "google.de" || l.JA3 != "" || l.JA4 != "" {
		t.Errorf("first part: hello %v partial %v sni %q ja3 %q ja4 %q", l.Hello, l.HelloPartial, l.TLSSNI, l.JA3, l.JA4)
	}
	p.Payload = full[120:]
	ParseL7(&p, &l)
	if l.Hello || l.TLSSNI != "" {
		t.Errorf("second part: hello %v sni %q", l.Hello, l.TLSSNI)
	}
	p.Payload = full
	ParseL7(&p, &l)
	if l.HelloPartial || l.JA3 != "a607f3a5c94c2ee592af1456f36c8367" { // tshark tls.handshake.ja3
		t.Errorf("whole: partial %v ja3 %s", l.HelloPartial, l.JA3)
	}
}

// TestClientHelloMalformed: a whole ClientHello whose cipher list length
// is odd, or whose extension runs past the extensions block, is marked
// undecodable and gets no fingerprint; SNI read before the fault stays.
func TestClientHelloMalformed(t *testing.T) {
	odd := clientHello(0x0303, []uint16{0x002f, 0x0035}, sniExt("a.example"))
	odd[5+4+2+32+1+1] = 3 // cipher_suites length 4 -> 3
	over := clientHello(0x0303, []uint16{0x002f}, sniExt("a.example"), ext{0x0017, []byte{1, 2}})
	over[len(over)-3] = 9 // the last extension's length 2 -> 9
	for name, rec := range map[string][]byte{"odd cipher length": odd, "extension past the block": over} {
		var l L7
		ParseL7(tcpTLS(rec), &l)
		if l.Undecodable != ReasonTLSBadClientHello || l.JA3 != "" || l.JA4 != "" || l.HelloPartial {
			t.Errorf("%s: undecodable %q ja3 %q ja4 %q partial %v", name, l.Undecodable, l.JA3, l.JA4, l.HelloPartial)
		}
		if name == "extension past the block" && l.TLSSNI != "a.example" {
			t.Errorf("%s: sni %q", name, l.TLSSNI)
		}
	}
}

// TestParseL7TLSAllocs: after the first call has grown l's buffers, a TLS
// ClientHello costs no allocation (JA3, JA4 and the strings live in l).
func TestParseL7TLSAllocs(t *testing.T) {
	p := tcpTLS(specHello(0x0403, 0x0804))
	var l L7
	ParseL7(p, &l)
	if n := testing.AllocsPerRun(100, func() { ParseL7(p, &l) }); n != 0 {
		t.Errorf("%v allocations per ClientHello", n)
	}
}

// BenchmarkParseL7 measures the light L7 cost of the packets that carry a
// ClientHello: a TLS record over TCP (the JA4 spec's hello) and the RFC 9001
// client Initial (key derivation, header protection removal, AES-GCM
// decryption of 1162 bytes, CRYPTO frames, ClientHello).
func BenchmarkParseL7(b *testing.B) {
	rfc, err := os.ReadFile("testdata/rfc9001-a2-client-initial.hex")
	if err != nil {
		b.Fatal(err)
	}
	for _, c := range []struct {
		name string
		p    *Packet
	}{
		{"tls-clienthello", tcpTLS(specHello(0x0403, 0x0804, 0x0401, 0x0503, 0x0805, 0x0501, 0x0806, 0x0601))},
		{"quic-initial", quicPacket(mustHex(string(rfc)))},
	} {
		b.Run(c.name, func(b *testing.B) {
			var l L7
			b.SetBytes(int64(len(c.p.Payload)))
			b.ReportAllocs()
			for b.Loop() {
				ParseL7(c.p, &l)
			}
			if l.JA4 == "" {
				b.Fatal("no JA4")
			}
		})
	}
}

// TestParseL7Allocs: decoding and light L7 of DNS, HTTP and TLS traffic
// (first 100 frames of the wikipedia browsing capture, then Chrome 34's
// TLS session) allocate nothing once l's buffers have grown.
func TestParseL7Allocs(t *testing.T) {
	var fr [][]byte
	for _, name := range []string{"eth-ipv4-dns-http-browsing-wikipedia.pcap", "tls12-clienthello-sni-google-de.pcap"} {
		f, _ := frames(t, filepath.Join(testkit.Pcaps(t), name), 100)
		fr = append(fr, f...)
	}
	d, _ := New(1)
	var p Packet
	var l L7
	run := func() {
		for _, f := range fr {
			d.Decode(f, &p)
			if App(&p) != "" {
				ParseL7(&p, &l)
			}
		}
	}
	run()
	if n := testing.AllocsPerRun(20, run); n != 0 {
		t.Errorf("%v allocations per run of %d frames", n, len(fr))
	}
}
