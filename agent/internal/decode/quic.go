package decode

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/hkdf"
	"crypto/sha256"
	"encoding/binary"
)

// QUIC versions whose Initial packets are decrypted.
const (
	QUICv1 = 0x00000001 // RFC 9000
	QUICv2 = 0x6b3343cf // RFC 9369
)

// quicParams are the per-version constants of Initial packet protection.
type quicParams struct {
	salt        []byte // initial_salt (RFC 9001 5.2, RFC 9369 3.3.1)
	key, iv, hp string // HKDF-Expand-Label labels (RFC 9001 5.1, RFC 9369 3.3.2)
	initialType byte   // long header packet type bits of Initial (RFC 9000 17.2, RFC 9369 3.2)
}

var (
	quicV1Params = quicParams{
		salt: []byte{0x38, 0x76, 0x2c, 0xf7, 0xf5, 0x59, 0x34, 0xb3, 0x4d, 0x17, 0x9a, 0xe6, 0xa4, 0xc8, 0x0c, 0xad,
			0xcc, 0xbb, 0x7f, 0x0a},
		key: "quic key", iv: "quic iv", hp: "quic hp", initialType: 0,
	}
	quicV2Params = quicParams{
		salt: []byte{0x0d, 0xed, 0xe3, 0xde, 0xf7, 0x00, 0xa6, 0xdb, 0x81, 0x93, 0x81, 0xbe, 0x6e, 0x26, 0x9d, 0xcb,
			0xf9, 0xbd, 0x2e, 0xd9},
		key: "quicv2 key", iv: "quicv2 iv", hp: "quicv2 hp", initialType: 1,
	}
)

func quicVersionParams(v uint32) *quicParams {
	switch v {
	case QUICv1:
		return &quicV1Params
	case QUICv2:
		return &quicV2Params
	}
	return nil
}

// parseQUIC reads the version of a QUIC long header packet (RFC 9000 17.2)
// at the start of a UDP payload and, for a client Initial of QUIC v1 or v2,
// removes header protection and decrypts it with the keys derived from its
// Destination Connection ID (RFC 9001 5.2 and 5.4; RFC 9369 3.3), then
// reads the TLS ClientHello from its CRYPTO frames: SNI, ALPN, JA3 and JA4
// (with "q"). Only the first packet of a datagram is read. A ClientHello
// continued in a later Initial (large post-quantum key shares) gives the SNI
// and ALPN found in the CRYPTO data contiguous from offset 0 and sets
// HelloPartial; its CRYPTO data is kept, by connection ID, for the next
// client Initials parsed with l (up to quicPendingSlots connections), so
// that the Initial completing it gives the whole ClientHello. A server
// Initial, whose keys come from a connection ID it does not carry, fails
// authentication and yields only the version.
func (l *L7) parseQUIC(b []byte) {
	if len(b) < 7 || b[0]&0x80 == 0 {
		return
	}
	l.QUICVersion = binary.BigEndian.Uint32(b[1:5])
	v := quicVersionParams(l.QUICVersion)
	if v == nil || (b[0]>>4)&3 != v.initialType {
		return
	}
	plain := l.quicInitial(b, v)
	if plain == nil {
		return
	}
	l.quicHello(l.QUICVersion, b[6:6+int(b[5])], plain) // the connection ID length is checked by quicInitial
}

// quicHello reads the ClientHello from the CRYPTO frames of the decrypted
// client Initial payload plain of connection dcid, with the CRYPTO data
// kept from earlier Initials of that connection, and keeps its data when
// the ClientHello is still not whole.
func (l *L7) quicHello(version uint32, dcid, plain []byte) {
	var arr [maxChunks]cryptoChunk
	chunks := quicFrames(plain, arr[:0])
	pend := l.s.pendingFor(version, dcid)
	if pend != nil {
		chunks = pend.append(chunks)
	}
	hello := l.gather(chunks)
	if len(hello) > 0 && hello[0] != 1 {
		return // the CRYPTO stream does not start with a ClientHello
	}
	if wholeHello(hello) {
		if pend != nil {
			pend.n = 0 // done with this connection
		}
		l.parseClientHello(hello, 'q')
		return
	}
	if hello != nil {
		l.parseClientHello(hello, 'q') // SNI and ALPN of the first part
	}
	if len(chunks) > 0 {
		l.s.keep(pend, version, dcid, chunks)
	}
}

// wholeHello reports whether h holds a whole handshake message (RFC 8446 4).
func wholeHello(h []byte) bool {
	return len(h) >= 4 && 4+(int(h[1])<<16|int(h[2])<<8|int(h[3])) <= len(h)
}

// quicPendingSlots is how many connections' partial ClientHellos one L7
// keeps; a new one takes a free slot, else the slot taken longest ago.
const quicPendingSlots = 4

// quicPending is the CRYPTO data of the client Initials of one connection
// whose ClientHello is not whole yet.
type quicPending struct {
	version uint32
	dcid    [20]byte
	dcidLen int
	n       int // chunks held; 0 when the slot is free
	chunks  [maxChunks]struct{ off, at, n int }
	data    []byte // chunk bytes, chunks[i] at data[at:at+n]
}

// append appends p's chunks to c.
func (p *quicPending) append(c []cryptoChunk) []cryptoChunk {
	for _, k := range p.chunks[:p.n] {
		if len(c) == cap(c) {
			break
		}
		c = append(c, cryptoChunk{k.off, p.data[k.at : k.at+k.n]})
	}
	return c
}

// pendingFor returns the partial ClientHello kept for dcid, or nil.
func (s *scratch) pendingFor(version uint32, dcid []byte) *quicPending {
	if s.pending == nil {
		return nil
	}
	for i := range s.pending {
		p := &s.pending[i]
		if p.n > 0 && p.version == version && string(p.dcid[:p.dcidLen]) == string(dcid) {
			return p
		}
	}
	return nil
}

// keep stores chunks (which may point into p's data) in p, or in a free or
// the oldest slot when p is nil, up to maxCrypto bytes.
func (s *scratch) keep(p *quicPending, version uint32, dcid []byte, chunks []cryptoChunk) {
	if s.pending == nil {
		s.pending = new([quicPendingSlots]quicPending)
	}
	for i := range s.pending {
		if p == nil && s.pending[i].n == 0 {
			p = &s.pending[i] // a free slot
		}
	}
	if p == nil {
		p = &s.pending[s.nextSlot] // the slot taken longest ago
		s.nextSlot = (s.nextSlot + 1) % quicPendingSlots
	}
	p.version, p.dcidLen = version, copy(p.dcid[:], dcid)
	buf := s.pendBuf[:0] // built aside: chunks may point into p.data
	n := 0
	for _, c := range chunks {
		if len(buf)+len(c.data) > maxCrypto {
			break
		}
		p.chunks[n] = struct{ off, at, n int }{c.off, len(buf), len(c.data)}
		buf = append(buf, c.data...)
		n++
	}
	p.n = n
	p.data, s.pendBuf = buf, p.data[:0]
}

// quicVarint reads a variable-length integer (RFC 9000 16); n is 0 when b
// is too short.
func quicVarint(b []byte) (v uint64, n int) {
	if len(b) == 0 {
		return 0, 0
	}
	n = 1 << (b[0] >> 6)
	if len(b) < n {
		return 0, 0
	}
	v = uint64(b[0] & 0x3f)
	for i := 1; i < n; i++ {
		v = v<<8 | uint64(b[i])
	}
	return v, n
}

// expandLabel is TLS 1.3 HKDF-Expand-Label with an empty context (RFC 8446
// 7.1), as QUIC uses it (RFC 9001 5.1).
func expandLabel(secret []byte, label string, n int) ([]byte, error) {
	var info [64]byte
	i := append(info[:0], byte(n>>8), byte(n), byte(6+len(label)))
	i = append(i, "tls13 "...)
	i = append(i, label...)
	i = append(i, 0)
	return hkdf.Expand(sha256.New, secret, string(i), n)
}

// initialKeys derives the client Initial key, IV and header protection key
// for the client's Destination Connection ID dcid (RFC 9001 5.2).
func initialKeys(v *quicParams, dcid []byte) (key, iv, hp []byte, err error) {
	initial, err := hkdf.Extract(sha256.New, dcid, v.salt)
	if err != nil {
		return nil, nil, nil, err
	}
	client, err := expandLabel(initial, "client in", 32)
	if err != nil {
		return nil, nil, nil, err
	}
	if key, err = expandLabel(client, v.key, 16); err != nil {
		return nil, nil, nil, err
	}
	if iv, err = expandLabel(client, v.iv, 12); err != nil {
		return nil, nil, nil, err
	}
	hp, err = expandLabel(client, v.hp, 16)
	return key, iv, hp, err
}

// quicInitial removes header protection (RFC 9001 5.4, AES-based) from the
// Initial packet at the start of b and decrypts its payload with
// AEAD_AES_128_GCM (RFC 9001 5.3). It returns the plaintext frames, in l's
// scratch space, or nil when the packet is cut short or does not
// authenticate with the client keys. b is not modified.
func (l *L7) quicInitial(b []byte, v *quicParams) []byte {
	pos := 5
	dcidLen := int(b[pos])
	pos++
	if dcidLen > 20 || len(b) < pos+dcidLen+1 {
		return nil
	}
	dcid := b[pos : pos+dcidLen]
	pos += dcidLen
	scidLen := int(b[pos])
	pos++
	if scidLen > 20 || len(b) < pos+scidLen {
		return nil
	}
	pos += scidLen
	tokenLen, n := quicVarint(b[pos:])
	if n == 0 || tokenLen > uint64(len(b)-pos-n) {
		return nil
	}
	pos += n + int(tokenLen)
	length, n := quicVarint(b[pos:])
	if n == 0 {
		return nil
	}
	pos += n
	pnOffset := pos
	// the sample starts 4 bytes after the packet number offset (RFC 9001
	// 5.4.2); packet number, at least one payload byte and the 16-byte tag
	if length > uint64(len(b)-pnOffset) || length < 4+16 {
		return nil
	}
	end := pnOffset + int(length)
	key, iv, hpKey, err := initialKeys(v, dcid)
	if err != nil {
		return nil
	}
	hp, err := aes.NewCipher(hpKey)
	if err != nil {
		return nil
	}
	var mask [16]byte
	hp.Encrypt(mask[:], b[pnOffset+4:pnOffset+20])
	first := b[0] ^ mask[0]&0x0f
	pnLen := int(first&3) + 1
	hdr := append(l.s.qhdr[:0], b[:pnOffset+pnLen]...)
	l.s.qhdr = hdr
	hdr[0] = first
	var pn uint64
	for i := 0; i < pnLen; i++ {
		hdr[pnOffset+i] ^= mask[1+i]
		pn = pn<<8 | uint64(hdr[pnOffset+i])
	}
	var nonce [12]byte
	copy(nonce[:], iv)
	for i := 0; i < 8; i++ {
		nonce[11-i] ^= byte(pn >> (8 * i))
	}
	block, err := aes.NewCipher(key)
	if err != nil {
		return nil
	}
	aead, err := cipher.NewGCM(block)
	if err != nil {
		return nil
	}
	plain, err := aead.Open(l.s.qplain[:0], nonce[:], b[pnOffset+pnLen:end], hdr)
	if err != nil {
		return nil
	}
	l.s.qplain = plain
	return plain
}

// maxCrypto bounds the CRYPTO stream bytes gathered for one ClientHello,
// and maxChunks the CRYPTO frames read from one Initial.
const (
	maxCrypto = 16 << 10
	maxChunks = 64
)

// cryptoChunk is the data of one CRYPTO frame at its stream offset.
type cryptoChunk struct {
	off  int
	data []byte
}

// quicCrypto returns the CRYPTO stream bytes contiguous from offset 0 in
// the frames of one decrypted Initial payload (in l's scratch space), or
// nil when there are none.
func (l *L7) quicCrypto(f []byte) []byte {
	var arr [maxChunks]cryptoChunk
	return l.gather(quicFrames(f, arr[:0]))
}

// quicFrames walks the frames of a decrypted Initial payload (RFC 9000 19:
// PADDING, PING, ACK, CRYPTO, CONNECTION_CLOSE are allowed there) and
// appends its CRYPTO frames to c, up to cap(c).
func quicFrames(f []byte, c []cryptoChunk) []cryptoChunk {
	for len(f) > 0 && len(c) < cap(c) {
		typ, n := quicVarint(f)
		if n == 0 {
			break
		}
		f = f[n:]
		switch typ {
		case 0x00, 0x01: // PADDING, PING
			continue
		case 0x02, 0x03: // ACK: largest, delay, range count, first range, ranges, [ECN counts]
			var vals [4]uint64
			ok := true
			for i := range vals {
				if vals[i], n = quicVarint(f); n == 0 {
					ok = false
					break
				}
				f = f[n:]
			}
			extra := vals[2] * 2
			if typ == 0x03 {
				extra += 3
			}
			for i := uint64(0); ok && i < extra; i++ {
				if _, n = quicVarint(f); n == 0 {
					ok = false
				}
				f = f[n:]
			}
			if !ok {
				f = nil
			}
		case 0x06: // CRYPTO: offset, length, data
			off, n1 := quicVarint(f)
			if n1 == 0 {
				f = nil
				break
			}
			ln, n2 := quicVarint(f[n1:])
			if n2 == 0 || ln > uint64(len(f)-n1-n2) {
				f = nil
				break
			}
			data := f[n1+n2 : n1+n2+int(ln)]
			f = f[n1+n2+int(ln):]
			if off < maxCrypto && len(data) > 0 {
				c = append(c, cryptoChunk{int(off), data})
			}
		default: // CONNECTION_CLOSE or a frame not allowed in Initial: stop
			f = nil
		}
	}
	return c
}

// gather returns the bytes of chunks contiguous from offset 0, in any
// order of the chunks (Chromium shuffles its CRYPTO frames), in l's
// scratch space; nil when none starts at 0.
func (l *L7) gather(chunks []cryptoChunk) []byte {
	out := l.s.qcrypto[:0]
	for progress := true; progress; {
		progress = false
		for _, c := range chunks {
			if c.off <= len(out) && c.off+len(c.data) > len(out) && len(out) < maxCrypto {
				out = append(out, c.data[len(out)-c.off:]...)
				progress = true
			}
		}
	}
	l.s.qcrypto = out
	if len(out) == 0 {
		return nil
	}
	return out
}
