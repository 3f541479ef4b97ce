package decode

import (
	"crypto/tls"
	"encoding/binary"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/gopacket/gopacket"
	"github.com/gopacket/gopacket/layers"
	"github.com/gopacket/gopacket/pcapgo"
)

// goClientHello returns the first TLS record Go's crypto/tls client writes:
// a TLS 1.3 ClientHello with supported_versions, key shares (X25519MLKEM768
// included by default since Go 1.24), signature algorithms and ALPN.
func goClientHello(t *testing.T) []byte {
	t.Helper()
	rec := goClientHelloBytes()
	if rec == nil {
		t.Fatal("no ClientHello from crypto/tls")
	}
	return rec
}

// goClientHelloBytes is goClientHello, nil on failure.
func goClientHelloBytes() []byte {
	c, s := net.Pipe()
	defer s.Close()
	go func() {
		cl := tls.Client(c, &tls.Config{ServerName: "netwatch.example", NextProtos: []string{"h2", "http/1.1"}})
		_ = cl.Handshake()
		c.Close()
	}()
	_ = s.SetReadDeadline(time.Now().Add(10 * time.Second))
	hdr := make([]byte, 5)
	if _, err := io.ReadFull(s, hdr); err != nil {
		return nil
	}
	rec := make([]byte, 5+int(binary.BigEndian.Uint16(hdr[3:])))
	copy(rec, hdr)
	if _, err := io.ReadFull(s, rec[5:]); err != nil {
		return nil
	}
	return rec
}

// tcpFrame is an Ethernet/IPv4 frame with a TCP segment (PSH, ACK) from
// sport to 443 with sequence number seq carrying payload.
func tcpFrame(sport uint16, seq uint32, payload []byte) []byte {
	tcp := []byte{byte(sport >> 8), byte(sport), 0x01, 0xbb, byte(seq >> 24), byte(seq >> 16), byte(seq >> 8), byte(seq),
		0, 0, 0, 1, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0}
	return cat(ethHdr(0x0800), v4(6, 7, 0x4000, 20+len(tcp)+len(payload), cat(tcp, payload)))
}

// writePcap writes frames (one second apart) to a pcap file in a temporary
// directory.
func writePcap(t *testing.T, name string, frames ...[]byte) string {
	t.Helper()
	file := filepath.Join(t.TempDir(), name)
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	for i, fr := range frames {
		if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(int64(1+i), 0), CaptureLength: len(fr), Length: len(fr)}, fr); err != nil {
			t.Fatal(err)
		}
	}
	return file
}

// TestGoClientHelloTshark: a ClientHello made by Go's TLS stack (TLS 1.3,
// signature_algorithms_cert besides signature_algorithms), in one TCP
// segment to port 443 of a pcap written here, gives tshark's SNI, ALPN and
// JA3, and the JA4 computed from tshark's fields.
func TestGoClientHelloTshark(t *testing.T) {
	rec := goClientHello(t)
	frame := tcpFrame(50000, 1, rec)
	file := writePcap(t, "go-clienthello.pcap", frame)

	d, _ := New(layers.LinkTypeEthernet)
	var p Packet
	d.Decode(frame, &p)
	var l L7
	ParseL7(&p, &l)
	rows := tsharkRowsFile(t, file, "tls.handshake.type == 1", "frame.number", "tls.handshake.extensions_server_name",
		"tls.handshake.extensions_alpn_str", "tls.handshake.ja3_full", "tls.handshake.ja3", "tls.handshake.ciphersuite",
		"tls.handshake.extension.type", "tls.handshake.sig_hash_alg", "tls.handshake.extensions.supported_version",
		"tls.handshake.version", "tls.handshake.sig_hash_alg_len")
	r := rows[1]
	if r == nil {
		t.Fatal("tshark sees no ClientHello")
	}
	if l.TLSSNI != r[1] || strings.Join(l.TLSALPN, ",") != r[2] || l.JA3Full != r[3] || l.JA3 != r[4] {
		t.Errorf("sni %q alpn %q ja3 %q %s; tshark %q %q %q %s", l.TLSSNI, l.TLSALPN, l.JA3Full, l.JA3, r[1], r[2], r[3], r[4])
	}
	exts := hexList(t, r[6])
	sigs := sigAlgs13(exts, r[10], hexList(t, r[7]))
	if len(sigs) == 0 || slices.Contains(exts, 50) && len(sigs) == len(hexList(t, r[7])) {
		t.Fatalf("signature_algorithms not told apart: %v of %s", sigs, r[7])
	}
	want := referenceJA4("t", hexList(t, r[9])[0], hexList(t, r[8]), r[1] != "", hexList(t, r[5]), exts, sigs,
		strings.Split(r[2], ",")[0])
	if l.JA4 != want || !strings.HasPrefix(l.JA4, "t13d") {
		t.Errorf("JA4 %s, from tshark's fields %s", l.JA4, want)
	}
	t.Logf("%d-byte record: ja3 %s ja4 %s", len(rec), l.JA3, l.JA4)

	// the same hello in two segments of a 1448-byte MSS path (with Go's
	// default X25519MLKEM768 key share it does not fit one): the first gives
	// SNI and ALPN, no fingerprint
	p.Payload = rec[:min(1448, len(rec)-100)]
	ParseL7(&p, &l)
	if !l.HelloPartial || l.TLSSNI != r[1] || strings.Join(l.TLSALPN, ",") != r[2] || l.JA3 != "" || l.JA4 != "" {
		t.Errorf("first segment: partial %v sni %q alpn %q ja3 %q ja4 %q", l.HelloPartial, l.TLSSNI, l.TLSALPN, l.JA3, l.JA4)
	}
}

// TestClientHelloTCPSegments: Go's ClientHello (1526 bytes with the
// X25519MLKEM768 key share) sent in two TCP segments of a 1448-byte MSS
// path: tshark, which reassembles TCP, gives the JA3 of the second frame;
// the agent's ParseL7 gives SNI/ALPN on the first segment and the same
// JA3, and the JA4 of the whole hello, on the second. Out-of-order
// segments, a gap, and another connection do not join.
func TestClientHelloTCPSegments(t *testing.T) {
	rec := goClientHello(t)
	cut := min(1448, len(rec)-100)
	seg1, seg2 := tcpFrame(50001, 1000, rec[:cut]), tcpFrame(50001, 1000+uint32(cut), rec[cut:])
	file := writePcap(t, "go-clienthello-2-segments.pcap", seg1, seg2)
	rows := tsharkRowsFile(t, file, "tls.handshake.type == 1", "frame.number", "tls.handshake.ja3",
		"tls.handshake.extensions_server_name")
	if rows[2] == nil || rows[2][1] == "" {
		t.Fatalf("tshark reassembles no ClientHello in frame 2: %v", rows)
	}
	whole := tcpTLS(rec)
	var w L7
	ParseL7(whole, &w)

	d, _ := New(layers.LinkTypeEthernet)
	decodeL7 := func(l *L7, frame []byte) {
		var p Packet
		d.Decode(frame, &p)
		ParseL7(&p, l)
	}
	var l L7
	decodeL7(&l, seg1)
	if !l.HelloPartial || l.TLSSNI != rows[2][2] || l.JA3 != "" || !l.TLSPending() {
		t.Errorf("first segment: partial %v sni %q ja3 %q pending %v", l.HelloPartial, l.TLSSNI, l.JA3, l.TLSPending())
	}
	decodeL7(&l, seg2)
	if l.App != AppTLS || l.HelloPartial || l.JA3 != rows[2][1] || l.JA4 != w.JA4 || l.TLSSNI != rows[2][2] || l.TLSPending() {
		t.Errorf("second segment: app %q partial %v ja3 %s (tshark %s) ja4 %s (whole %s) sni %q pending %v",
			l.App, l.HelloPartial, l.JA3, rows[2][1], l.JA4, w.JA4, l.TLSSNI, l.TLSPending())
	}
	// the first segment retransmitted, then the second: joined once
	var r L7
	decodeL7(&r, seg1)
	decodeL7(&r, seg1)
	decodeL7(&r, seg2)
	if r.JA3 != rows[2][1] {
		t.Errorf("after a retransmission: ja3 %q", r.JA3)
	}
	// the second segment first: nothing; a gap: given up; another port: not joined
	for name, frames := range map[string][][]byte{
		"out of order": {seg2, seg1},
		"gap":          {seg1, tcpFrame(50001, 1000+uint32(cut)+1, rec[cut+1:]), seg2},
		"other port":   {seg1, tcpFrame(50002, 1000+uint32(cut), rec[cut:])},
	} {
		var o L7
		for _, f := range frames {
			decodeL7(&o, f)
		}
		if o.JA3 != "" {
			t.Errorf("%s: ja3 %s", name, o.JA3)
		}
	}
}
