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
		t.Fatal(err)
	}
	rec := make([]byte, 5+int(binary.BigEndian.Uint16(hdr[3:])))
	copy(rec, hdr)
	if _, err := io.ReadFull(s, rec[5:]); err != nil {
		t.Fatal(err)
	}
	return rec
}

// TestGoClientHelloTshark: a ClientHello made by Go's TLS stack (TLS 1.3,
// signature_algorithms_cert besides signature_algorithms), in one TCP
// segment to port 443 of a pcap written here, gives tshark's SNI, ALPN and
// JA3, and the JA4 computed from tshark's fields.
func TestGoClientHelloTshark(t *testing.T) {
	rec := goClientHello(t)
	tcp := []byte{0xc3, 0x50, 0x01, 0xbb, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x18, 0xff, 0xff, 0, 0, 0, 0}
	frame := cat(ethHdr(0x0800), v4(6, 7, 0x4000, 20+len(tcp)+len(rec), cat(tcp, rec)))
	file := filepath.Join(t.TempDir(), "go-clienthello.pcap")
	f, err := os.Create(file)
	if err != nil {
		t.Fatal(err)
	}
	w := pcapgo.NewWriter(f)
	if err := w.WriteFileHeader(65535, layers.LinkTypeEthernet); err != nil {
		t.Fatal(err)
	}
	if err := w.WritePacket(gopacket.CaptureInfo{Timestamp: time.Unix(1, 0), CaptureLength: len(frame), Length: len(frame)}, frame); err != nil {
		t.Fatal(err)
	}
	f.Close()

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
