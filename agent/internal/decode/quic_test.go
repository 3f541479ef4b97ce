package decode

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/hex"
	"os"
	"strings"
	"testing"
)

// The RFC 9001 Appendix A (QUIC v1) and RFC 9369 Appendix A (QUIC v2)
// sample client Initial: Destination Connection ID 0x8394c8f03e515708,
// packet number 2, a CRYPTO frame with a ClientHello for example.com, then
// PADDING to 1162 bytes. testdata/rfc9001-a2-client-initial.hex and
// rfc9369-a2-client-initial.hex are the protected packets as printed in the
// RFCs' A.2 sections.
var (
	rfcDCID = mustHex("8394c8f03e515708")
	// RFC 9001 A.2 (the same frames in RFC 9369 A.2)
	rfcCryptoFrame = mustHex("060040f1010000ed0303ebf8fa56f12939b9584a3896472ec40bb863cfd3e868" +
		"04fe3a47f06a2b69484c00000413011302010000c000000010000e00000b6578" +
		"616d706c652e636f6dff01000100000a00080006001d00170018001000070005" +
		"04616c706e000500050100000000003300260024001d00209370b2c9caa47fba" +
		"baf4559fedba753de171fa71f50f1ce15d43e994ec74d748002b000302030400" +
		"0d0010000e0403050306030203080408050806002d00020101001c0002400100" +
		"3900320408ffffffffffffffff05048000ffff07048000ffff08011001048000" +
		"75300901100f088394c8f03e51570806048000ffff")
)

func mustHex(s string) []byte {
	b, err := hex.DecodeString(strings.NewReplacer(" ", "", "\n", "").Replace(s))
	if err != nil {
		panic(err)
	}
	return b
}

func readHex(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile("testdata/" + name)
	if err != nil {
		t.Fatal(err)
	}
	return mustHex(string(b))
}

// TestInitialKeysRFC checks the key schedule against RFC 9001 A.1 and
// RFC 9369 A.1.
func TestInitialKeysRFC(t *testing.T) {
	for _, c := range []struct {
		version                      uint32
		initial, client, key, iv, hp string
	}{
		{QUICv1, "7db5df06e7a69e432496adedb00851923595221596ae2ae9fb8115c1e9ed0a44",
			"c00cf151ca5be075ed0ebfb5c80323c42d6b7db67881289af4008f1f6c357aea",
			"1f369613dd76d5467730efcbe3b1a22d", "fa044b2f42a3fd3b46fb255c", "9f50449e04a0e810283a1e9933adedd2"},
		{QUICv2, "2062e8b3cd8d52092614b8071d0aa1fb7c2e3ac193f78b280e72d8f5751f6aba",
			"14ec9d6eb9fd7af83bf5a668bc17a7e283766aade7ecd0891f70f9ff7f4bf47b",
			"8b1a0bc121284290a29e0971b5cd045d", "91f73e2351d8fa91660e909f", "45b95e15235d6f45a6b19cbcb0294ba9"},
	} {
		v := quicVersionParams(c.version)
		initial, err := hkdf.Extract(sha256.New, rfcDCID, v.salt)
		if err != nil {
			t.Fatal(err)
		}
		client, err := expandLabel(initial, "client in", 32)
		if err != nil {
			t.Fatal(err)
		}
		key, iv, hp, err := initialKeys(v, rfcDCID)
		if err != nil {
			t.Fatal(err)
		}
		for _, g := range []struct {
			name string
			got  []byte
			want string
		}{{"initial_secret", initial, c.initial}, {"client_initial_secret", client, c.client},
			{"key", key, c.key}, {"iv", iv, c.iv}, {"hp", hp, c.hp}} {
			if hex.EncodeToString(g.got) != g.want {
				t.Errorf("version %#x %s = %x, want %s", c.version, g.name, g.got, g.want)
			}
		}
	}
}

// quicPacket wraps a UDP payload to port 443 in a decoded packet.
func quicPacket(payload []byte) *Packet {
	return &Packet{Kind: KindIP, Proto: 17, SrcPort: 50000, DstPort: 443, AddrLen: 4, Payload: payload,
		PayloadBytes: uint32(len(payload))}
}

// TestQUICInitialRFC decrypts the RFCs' sample client Initials: the
// plaintext is A.2's CRYPTO frame followed by PADDING (zero bytes) to 1162
// bytes, and the ClientHello in it gives SNI "example.com", ALPN "alpn"
// and fingerprints worked out by hand from the A.2 bytes: ciphers
// 1301,1302; extensions 0 (SNI), ff01, 0a, 10 (ALPN), 05, 33, 2b, 0d, 2d,
// 1c, 39; groups 1d,17,18; signature algorithms 0403,0503,0603,0203,
// 0804,0805,0806; supported_versions 0304. The hashes are sha256sum and
// md5sum of those strings.
func TestQUICInitialRFC(t *testing.T) {
	for _, c := range []struct {
		file    string
		version uint32
	}{{"rfc9001-a2-client-initial.hex", QUICv1}, {"rfc9369-a2-client-initial.hex", QUICv2}} {
		t.Run(c.file, func(t *testing.T) {
			pkt := readHex(t, c.file)
			orig := bytes.Clone(pkt)
			var l L7
			plain := l.quicInitial(pkt, quicVersionParams(c.version))
			if len(plain) != 1162 || !bytes.Equal(plain[:len(rfcCryptoFrame)], rfcCryptoFrame) ||
				!bytes.Equal(plain[len(rfcCryptoFrame):], make([]byte, 1162-len(rfcCryptoFrame))) {
				t.Fatalf("plaintext %d bytes: %x", len(plain), plain)
			}
			if !bytes.Equal(pkt, orig) {
				t.Fatal("the captured bytes were modified")
			}
			ParseL7(quicPacket(pkt), &l)
			const ja3 = "771,4865-4866,0-65281-10-16-5-51-43-13-45-28-57,29-23-24,"
			if l.App != AppQUIC || l.QUICVersion != c.version || l.TLSSNI != "example.com" ||
				strings.Join(l.TLSALPN, ",") != "alpn" || !l.Hello || l.HelloPartial {
				t.Errorf("app %q version %#x sni %q alpn %q hello %v partial %v", l.App, l.QUICVersion, l.TLSSNI,
					l.TLSALPN, l.Hello, l.HelloPartial)
			}
			if l.JA3Full != ja3 || l.JA3 != "41bc9ae914d6cb3bd0bd0a5453ab7d7f" {
				t.Errorf("JA3 %q %s", l.JA3Full, l.JA3)
			}
			if l.JA4 != "q13d0211an_62ed6f6ca7ad_4d634acda6c0" {
				t.Errorf("JA4 %s", l.JA4)
			}
			// one bit flipped in the ciphertext: authentication fails, the
			// version is still read
			pkt[100] ^= 1
			ParseL7(quicPacket(pkt), &l)
			if l.QUICVersion != c.version || l.TLSSNI != "" || l.Hello {
				t.Errorf("tampered packet: version %#x sni %q hello %v", l.QUICVersion, l.TLSSNI, l.Hello)
			}
		})
	}
}

// sealInitial builds a QUIC v1 client Initial carrying frames, protected as
// RFC 9001 5 says, with the RFC's connection ID and packet number 2: the
// test's own encoder (Go's crypto), checked against the RFC packet below.
func sealInitial(t *testing.T, frames []byte) []byte { return sealInitialTo(t, rfcDCID, frames) }

// sealInitialTo is sealInitial for an 8-byte connection ID dcid.
func sealInitialTo(t *testing.T, dcid, frames []byte) []byte {
	t.Helper()
	key, iv, hpKey, err := initialKeys(&quicV1Params, dcid)
	if err != nil {
		t.Fatal(err)
	}
	length := 4 + len(frames) + 16
	hdr := append([]byte{0xc3, 0, 0, 0, 1, 8}, dcid...)
	hdr = append(hdr, 0, 0, byte(0x40|length>>8), byte(length), 0, 0, 0, 2)
	block, _ := aes.NewCipher(key)
	aead, _ := cipher.NewGCM(block)
	nonce := bytes.Clone(iv)
	nonce[11] ^= 2
	pkt := aead.Seal(bytes.Clone(hdr), nonce, frames, hdr)
	hp, _ := aes.NewCipher(hpKey)
	var mask [16]byte
	pnOffset := len(hdr) - 4
	hp.Encrypt(mask[:], pkt[pnOffset+4:pnOffset+20])
	pkt[0] ^= mask[0] & 0x0f
	for i := 0; i < 4; i++ {
		pkt[pnOffset+i] ^= mask[1+i]
	}
	return pkt
}

// TestQUICCryptoFrames: CRYPTO frames out of order and split (as Chromium
// sends them) are put back together; a ClientHello whose end is in a later
// packet gives SNI and ALPN from the first part and no fingerprint.
func TestQUICCryptoFrames(t *testing.T) {
	hello := rfcCryptoFrame[4:] // the ClientHello: after type 06, offset 00, length 40f1
	padded := func(f []byte) []byte { return append(f, make([]byte, 1162-len(f))...) }
	// the encoder reproduces the RFC's packet byte for byte
	if got, want := sealInitial(t, padded(bytes.Clone(rfcCryptoFrame))), readHex(t, "rfc9001-a2-client-initial.hex"); !bytes.Equal(got, want) {
		t.Fatal("sealInitial does not reproduce RFC 9001 A.2")
	}
	crypto := func(off int, data []byte) []byte {
		return append([]byte{0x06, 0x40 | byte(off>>8), byte(off), 0x40 | byte(len(data)>>8), byte(len(data))}, data...)
	}
	// PING, the second half, an ACK (largest 0, delay 0, 1 range: gap 0 len 0, first 0), the first half
	ack := []byte{0x02, 0, 0, 1, 0, 0, 0}
	shuffled := cat([]byte{0x01}, crypto(120, hello[120:]), ack, crypto(0, hello[:120]))
	var l L7
	ParseL7(quicPacket(sealInitial(t, padded(shuffled))), &l)
	if l.TLSSNI != "example.com" || l.JA4 != "q13d0211an_62ed6f6ca7ad_4d634acda6c0" || l.HelloPartial {
		t.Errorf("shuffled: sni %q ja4 %q partial %v", l.TLSSNI, l.JA4, l.HelloPartial)
	}
	// only the first 100 bytes (SNI and ALPN end at byte 95 of the hello)
	ParseL7(quicPacket(sealInitial(t, padded(crypto(0, hello[:100])))), &l)
	if l.TLSSNI != "example.com" || strings.Join(l.TLSALPN, ",") != "alpn" || !l.HelloPartial || l.JA4 != "" || l.JA3 != "" {
		t.Errorf("first part: sni %q alpn %q partial %v ja4 %q ja3 %q", l.TLSSNI, l.TLSALPN, l.HelloPartial, l.JA4, l.JA3)
	}
	// the rest in the next Initial of the connection: the whole hello
	ParseL7(quicPacket(sealInitial(t, padded(crypto(100, hello[100:])))), &l)
	if l.TLSSNI != "example.com" || l.JA4 != "q13d0211an_62ed6f6ca7ad_4d634acda6c0" || l.HelloPartial {
		t.Errorf("second Initial: sni %q ja4 %q partial %v", l.TLSSNI, l.JA4, l.HelloPartial)
	}
	// only the second part, with a fresh L7: nothing from offset 0
	var m L7
	ParseL7(quicPacket(sealInitial(t, padded(crypto(120, hello[120:])))), &m)
	if m.Hello || m.QUICVersion != QUICv1 {
		t.Errorf("second part only: hello %v version %#x", m.Hello, m.QUICVersion)
	}
	// then the first part: whole
	ParseL7(quicPacket(sealInitial(t, padded(crypto(0, hello[:120])))), &m)
	if m.JA4 != "q13d0211an_62ed6f6ca7ad_4d634acda6c0" {
		t.Errorf("first part after the second: ja4 %q", m.JA4)
	}
}

// TestQUICPendingConnections: the parts of ClientHellos of several
// connections (their own connection IDs) interleaved, as Chromium splits
// one with post-quantum key shares over two Initials, each with shuffled
// CRYPTO frames: every connection's second Initial gives the whole hello;
// a connection ID whose first part was pushed out by quicPendingSlots
// newer connections gives nothing more.
func TestQUICPendingConnections(t *testing.T) {
	hello := rfcCryptoFrame[4:]
	padded := func(f []byte) []byte { return append(f, make([]byte, 1162-len(f))...) }
	crypto := func(off int, data []byte) []byte {
		return append([]byte{0x06, 0x40 | byte(off>>8), byte(off), 0x40 | byte(len(data)>>8), byte(len(data))}, data...)
	}
	dcid := func(i int) []byte { return []byte{0xaa, 0, 0, 0, 0, 0, 0, byte(i)} }
	// packet 1: bytes 0-59 and 150-199; packet 2: 200-end, 60-149
	first := func(i int) []byte {
		return sealInitialTo(t, dcid(i), padded(cat(crypto(150, hello[150:200]), crypto(0, hello[:60]))))
	}
	second := func(i int) []byte {
		return sealInitialTo(t, dcid(i), padded(cat(crypto(200, hello[200:]), crypto(60, hello[60:150]))))
	}
	var l L7
	for i := 0; i < quicPendingSlots; i++ {
		ParseL7(quicPacket(first(i)), &l)
		if !l.Hello || !l.HelloPartial || l.TLSSNI != "" { // SNI ends at byte 67
			t.Errorf("connection %d first Initial: hello %v partial %v sni %q", i, l.Hello, l.HelloPartial, l.TLSSNI)
		}
	}
	for i := quicPendingSlots - 1; i >= 0; i-- {
		ParseL7(quicPacket(second(i)), &l)
		if l.JA4 != "q13d0211an_62ed6f6ca7ad_4d634acda6c0" || l.TLSSNI != "example.com" {
			t.Errorf("connection %d second Initial: ja4 %q sni %q", i, l.JA4, l.TLSSNI)
		}
	}
	for i := 0; i <= quicPendingSlots; i++ {
		ParseL7(quicPacket(first(10+i)), &l)
	}
	ParseL7(quicPacket(second(10)), &l) // pushed out by four newer connections
	if l.JA4 != "" || l.Hello {
		t.Errorf("evicted connection: ja4 %q hello %v", l.JA4, l.Hello)
	}
	ParseL7(quicPacket(second(10+quicPendingSlots)), &l)
	if l.JA4 == "" {
		t.Error("newest connection: no JA4")
	}
}
