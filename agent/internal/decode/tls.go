package decode

import (
	"crypto/md5"
	"crypto/sha256"
	"encoding/binary"
	"slices"
	"strconv"
)

// TLS extension types read from a ClientHello (IANA TLS ExtensionType
// Values).
const (
	extServerName          = 0  // RFC 6066 3
	extSupportedGroups     = 10 // RFC 8422 5.1.1 (elliptic_curves in JA3)
	extECPointFormats      = 11 // RFC 8422 5.1.2
	extSignatureAlgorithms = 13 // RFC 8446 4.2.3
	extALPN                = 16 // RFC 7301 3.1
	extSupportedVersions   = 43 // RFC 8446 4.2.1
)

// grease reports whether v is a GREASE value (RFC 8701 2: 0x0a0a, 0x1a1a,
// ..., 0xfafa), which JA3 and JA4 ignore wherever they appear.
func grease(v uint16) bool { return v&0x0f0f == 0x0a0a && v>>8 == v&0xff }

// helloFields are the parts of one ClientHello that JA3 and JA4 read,
// as slices of the message.
type helloFields struct {
	version    uint16 // legacy_version
	ciphers    []byte // cipher_suites, 2 bytes each
	exts       []byte // extension types in order, 2 bytes each (a copy in scratch)
	groups     []byte // supported_groups list, 2 bytes each
	points     []byte // ec_point_formats list, 1 byte each
	sigAlgs    []byte // signature_algorithms list, 2 bytes each
	versions   []byte // supported_versions list, 2 bytes each
	sni        bool   // a server_name extension is present
	alpnFirst  []byte // first ALPN protocol name; nil when none
	hasVersion bool   // a supported_versions extension is present
}

// parseTLSRecord reads a TLS record carrying a handshake message (RFC 8446
// 5.1) at the start of a TCP payload and, when it is a ClientHello, fills
// l's SNI, ALPN, JA3 and JA4. A ClientHello longer than what this segment
// holds (split over TCP segments or TLS records, or cut by the snaplen)
// gives SNI and ALPN when they are in the first part and sets
// HelloPartial; JA3 and JA4 need the whole message and stay empty (see
// keepTCP for the segments that follow).
func (l *L7) parseTLSRecord(b []byte) {
	if len(b) < 6 || b[0] != 0x16 || b[5] != 1 {
		return
	}
	h := b[5:]
	if n := int(binary.BigEndian.Uint16(b[3:5])); n < len(h) {
		h = h[:n] // the rest of the segment is another record
	}
	l.parseClientHello(h, 't')
}

// parseClientHello reads a handshake message h (RFC 8446 4: type 1 byte,
// length 3 bytes, body) that should be a ClientHello (RFC 8446 4.1.2,
// RFC 5246 7.4.1.2). proto is JA4's first character: 't' for TLS over
// TCP, 'q' for QUIC.
func (l *L7) parseClientHello(h []byte, proto byte) {
	if len(h) < 4 || h[0] != 1 {
		return
	}
	n := int(h[1])<<16 | int(h[2])<<8 | int(h[3])
	body := h[4:]
	complete := len(body) >= n
	if complete {
		body = body[:n]
	}
	l.Hello = true
	var f helloFields
	ok := l.helloFields(body, &f)
	if !complete {
		l.HelloPartial = true // no fingerprint from a part of it
		return
	}
	if !ok {
		l.Undecodable = ReasonTLSBadClientHello
		return
	}
	l.ja3(&f)
	l.ja4(&f, proto)
}

// helloFields walks a ClientHello body, filling f and l's SNI and ALPN. It
// reports whether the whole body parsed.
func (l *L7) helloFields(b []byte, f *helloFields) bool {
	if len(b) < 34 {
		return false
	}
	f.version = binary.BigEndian.Uint16(b)
	b = b[34:] // version, random
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return false
	}
	b = b[1+int(b[0]):] // legacy_session_id
	if len(b) < 2 {
		return false
	}
	nc := int(binary.BigEndian.Uint16(b))
	if nc%2 != 0 || len(b) < 2+nc {
		return false
	}
	f.ciphers = b[2 : 2+nc]
	b = b[2+nc:]
	if len(b) < 1 || len(b) < 1+int(b[0]) {
		return false
	}
	b = b[1+int(b[0]):] // legacy_compression_methods
	if len(b) == 0 {
		return true // no extensions (SSL 3.0 style): a complete hello
	}
	if len(b) < 2 {
		return false
	}
	ext := b[2:]
	whole := true
	if n := int(binary.BigEndian.Uint16(b)); n <= len(ext) {
		ext = ext[:n]
	} else {
		whole = false
	}
	types := l.s.exts[:0]
	for len(ext) > 0 {
		if len(ext) < 4 {
			whole = false
			break
		}
		typ := binary.BigEndian.Uint16(ext)
		n := int(binary.BigEndian.Uint16(ext[2:]))
		if n > len(ext)-4 {
			whole = false
			break
		}
		e := ext[4 : 4+n]
		ext = ext[4+n:]
		types = binary.BigEndian.AppendUint16(types, typ)
		switch typ {
		case extServerName:
			f.sni = true
			// server_name_list: length 2, then name_type 1 (0 host_name), length 2, name
			if len(e) >= 5 && e[2] == 0 && l.TLSSNI == "" {
				if m := int(binary.BigEndian.Uint16(e[3:])); 5+m <= len(e) {
					l.TLSSNI = l.text(e[5 : 5+m])
				}
			}
		case extALPN:
			// protocol_name_list: length 2, then names of length 1 + bytes
			if len(e) >= 2 {
				list := e[2:]
				if m := int(binary.BigEndian.Uint16(e)); m < len(list) {
					list = list[:m]
				}
				for len(list) > 0 && len(l.TLSALPN) < 64 {
					m := int(list[0])
					if 1+m > len(list) {
						break
					}
					if f.alpnFirst == nil {
						f.alpnFirst = list[1 : 1+m]
					}
					l.TLSALPN = append(l.TLSALPN, l.text(list[1:1+m]))
					list = list[1+m:]
				}
			}
		case extSupportedGroups:
			f.groups = u16List(e)
		case extECPointFormats:
			if len(e) >= 1 && 1+int(e[0]) <= len(e) {
				f.points = e[1 : 1+int(e[0])]
			}
		case extSignatureAlgorithms:
			f.sigAlgs = u16List(e)
		case extSupportedVersions:
			f.hasVersion = true
			if len(e) >= 1 && 1+int(e[0]) <= len(e) {
				f.versions = e[1 : 1+int(e[0])&^1]
			}
		}
	}
	l.s.exts = types
	f.exts = types
	return whole
}

// u16List returns the list of 2-byte values after a 2-byte length, or nil.
func u16List(e []byte) []byte {
	if len(e) < 2 {
		return nil
	}
	n := int(binary.BigEndian.Uint16(e)) &^ 1
	if 2+n > len(e) {
		return nil
	}
	return e[2 : 2+n]
}

// ja3 sets JA3Full and JA3 (Salesforce JA3: "SSLVersion,Cipher,
// SSLExtension,EllipticCurve,EllipticCurvePointFormat", decimal values
// joined by "-", GREASE values left out; JA3 is its MD5 in lower-case hex).
func (l *L7) ja3(f *helloFields) {
	start := len(l.arena)
	a := strconv.AppendUint(l.arena, uint64(f.version), 10)
	a = append(a, ',')
	a = appendDecList(a, f.ciphers)
	a = append(a, ',')
	a = appendDecList(a, f.exts)
	a = append(a, ',')
	a = appendDecList(a, f.groups)
	a = append(a, ',')
	for i, p := range f.points {
		if i > 0 {
			a = append(a, '-')
		}
		a = strconv.AppendUint(a, uint64(p), 10)
	}
	l.arena = a
	l.JA3Full = l.str(start)
	sum := md5.Sum(a[start:])
	start = len(l.arena)
	l.arena = appendHex(l.arena, sum[:])
	l.JA3 = l.str(start)
}

// appendDecList appends the non-GREASE 2-byte values of list in decimal,
// joined by "-".
func appendDecList(a []byte, list []byte) []byte {
	first := true
	for i := 0; i+1 < len(list); i += 2 {
		v := binary.BigEndian.Uint16(list[i:])
		if grease(v) {
			continue
		}
		if !first {
			a = append(a, '-')
		}
		first = false
		a = strconv.AppendUint(a, uint64(v), 10)
	}
	return a
}

const hexDigits = "0123456789abcdef"

func appendHex(a []byte, b []byte) []byte {
	for _, c := range b {
		a = append(a, hexDigits[c>>4], hexDigits[c&15])
	}
	return a
}

// ja4Version is JA4's two-character TLS version (FoxIO JA4 spec, "TLS and
// DTLS Version").
func ja4Version(v uint16) string {
	switch v {
	case 0x0304:
		return "13"
	case 0x0303:
		return "12"
	case 0x0302:
		return "11"
	case 0x0301:
		return "10"
	case 0x0300:
		return "s3"
	case 0x0002:
		return "s2"
	case 0xfeff:
		return "d1"
	case 0xfefd:
		return "d2"
	case 0xfefc:
		return "d3"
	}
	return "00"
}

func alnum(c byte) bool { return c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' }

// ja4 sets JA4, the FoxIO JA4 TLS client fingerprint (github.com/FoxIO-LLC/ja4,
// technical_details/JA4.md): ja4_a = proto, version (highest non-GREASE
// supported_versions value, else legacy_version), "d" with SNI or "i",
// cipher and extension counts (GREASE left out, at most 99), first and last
// character of the first ALPN value ("00" without one; the first and last
// hex digits when either is not alphanumeric); ja4_b = the first 12 hex
// digits of the SHA-256 of the sorted cipher list ("002f,0035,..."); ja4_c =
// the same of the sorted extension list without SNI and ALPN, then "_" and
// the signature algorithms in their order when there are any; an empty list
// hashes to "000000000000".
func (l *L7) ja4(f *helloFields, proto byte) {
	version := f.version
	if f.hasVersion {
		var best uint16
		for i := 0; i+1 < len(f.versions); i += 2 {
			if v := binary.BigEndian.Uint16(f.versions[i:]); !grease(v) && v > best {
				best = v
			}
		}
		if best != 0 {
			version = best
		}
	}
	start := len(l.arena)
	a := append(l.arena, proto)
	a = append(a, ja4Version(version)...)
	if f.sni {
		a = append(a, 'd')
	} else {
		a = append(a, 'i')
	}
	u := appendSorted(l.s.u16[:0], f.ciphers, false)
	nc := len(u)
	u = appendSorted(u, f.exts, true)
	l.s.u16 = u
	ciphers, exts := u[:nc], u[nc:]
	a = appendCount(a, len(ciphers))
	nExt := 0
	for i := 0; i+1 < len(f.exts); i += 2 {
		if !grease(binary.BigEndian.Uint16(f.exts[i:])) {
			nExt++
		}
	}
	a = appendCount(a, nExt)
	switch first := f.alpnFirst; {
	case len(first) == 0:
		a = append(a, "00"...)
	case alnum(first[0]) && alnum(first[len(first)-1]):
		a = append(a, first[0], first[len(first)-1])
	default:
		a = append(a, hexDigits[first[0]>>4], hexDigits[first[len(first)-1]&15])
	}
	a = append(a, '_')
	a = l.appendHash(a, ciphers, nil)
	a = append(a, '_')
	a = l.appendHash(a, exts, f.sigAlgs)
	l.arena = a
	l.JA4 = l.str(start)
}

// appendSorted appends the non-GREASE 2-byte values of list to dst, without
// SNI and ALPN when noNameExt, and sorts what it appended.
func appendSorted(dst []uint16, list []byte, noNameExt bool) []uint16 {
	start := len(dst)
	for i := 0; i+1 < len(list); i += 2 {
		v := binary.BigEndian.Uint16(list[i:])
		if grease(v) || noNameExt && (v == extServerName || v == extALPN) {
			continue
		}
		dst = append(dst, v)
	}
	slices.Sort(dst[start:])
	return dst
}

func appendCount(a []byte, n int) []byte {
	n = min(n, 99)
	return append(a, byte('0'+n/10), byte('0'+n%10))
}

// appendHash appends the first 12 hex digits of the SHA-256 of values as
// 4-digit hex joined by ",", followed by "_" and the non-GREASE values of
// tail (2 bytes each) in order when there are any; "000000000000" when
// values is empty.
func (l *L7) appendHash(a []byte, values []uint16, tail []byte) []byte {
	if len(values) == 0 {
		return append(a, "000000000000"...)
	}
	s := l.s.buf[:0]
	for i, v := range values {
		if i > 0 {
			s = append(s, ',')
		}
		s = append(s, hexDigits[v>>12], hexDigits[v>>8&15], hexDigits[v>>4&15], hexDigits[v&15])
	}
	first := true
	for i := 0; i+1 < len(tail); i += 2 {
		v := binary.BigEndian.Uint16(tail[i:])
		if grease(v) {
			continue
		}
		if first {
			s = append(s, '_')
			first = false
		} else {
			s = append(s, ',')
		}
		s = append(s, hexDigits[v>>12], hexDigits[v>>8&15], hexDigits[v>>4&15], hexDigits[v&15])
	}
	l.s.buf = s
	sum := sha256.Sum256(s)
	return appendHex(a, sum[:6])
}

// tcpPendingSlots is how many TCP connections' split ClientHellos one L7
// keeps; a new one takes a free slot, else the next one in turn.
const tcpPendingSlots = 4

// tcpPendingAge is how long, in packet time, the start of a split
// ClientHello waits for its next segment.
const tcpPendingAge = 10e9 // ns

// tcpPending is the start of a ClientHello split over TCP segments: the
// bytes from the record header on, and the sequence number the next
// segment of the connection must start at.
type tcpPending struct {
	used    bool
	src     [16]byte
	dst     [16]byte
	sport   uint16
	dport   uint16
	vlan    uint16
	tunnel  uint32
	nextSeq uint32
	tsNs    int64
	data    []byte
}

func (t *tcpPending) matches(p *Packet) bool {
	return t.used && t.src == p.Src && t.dst == p.Dst && t.sport == p.SrcPort && t.dport == p.DstPort &&
		t.vlan == p.VLAN && t.tunnel == p.TunnelID
}

// keepTCP keeps the first segment of a ClientHello split over TCP segments
// (p's payload, which starts the record) until the next segment of the
// connection. A payload cut by the snaplen or in an IP fragment cannot be
// continued and is not kept.
func (s *scratch) keepTCP(p *Packet) {
	if p.Proto != 6 || p.Fragment || len(p.Payload) < int(p.PayloadBytes) || len(p.Payload) > maxCrypto {
		return
	}
	if s.tcp == nil {
		s.tcp = new([tcpPendingSlots]tcpPending)
	}
	var t *tcpPending
	for i := range s.tcp {
		if s.tcp[i].matches(p) || t == nil && !s.tcp[i].used {
			t = &s.tcp[i]
		}
	}
	if t == nil {
		t = &s.tcp[s.nextTCP]
		s.nextTCP = (s.nextTCP + 1) % tcpPendingSlots
	}
	*t = tcpPending{used: true, src: p.Src, dst: p.Dst, sport: p.SrcPort, dport: p.DstPort, vlan: p.VLAN,
		tunnel: p.TunnelID, nextSeq: p.Seq + uint32(len(p.Payload)), tsNs: p.TsNs, data: append(t.data[:0], p.Payload...)}
}

// continueTCP reads a TCP segment that App does not recognise: when it is
// the next segment of a connection whose ClientHello start was kept, the
// two are put together and parsed (App becomes "tls"); the ClientHello,
// when now whole, gives JA3 and JA4 here. A segment out of order drops
// what was kept (no reassembly beyond in-order segments); a retransmission
// of an earlier one is ignored.
func (l *L7) continueTCP(p *Packet) {
	for i := range l.s.tcp {
		t := &l.s.tcp[i]
		if !t.used {
			continue
		}
		if p.TsNs-t.tsNs > tcpPendingAge || p.TsNs < t.tsNs-tcpPendingAge {
			t.used = false // its next segment never came
			continue
		}
		if !t.matches(p) {
			continue
		}
		if d := int32(p.Seq - t.nextSeq); d < 0 {
			return // a retransmission
		} else if d > 0 || len(p.Payload) < int(p.PayloadBytes) || len(t.data)+len(p.Payload) > maxCrypto {
			t.used = false // a gap, a snaplen cut or too long: give up on this hello
			return
		}
		t.data = append(t.data, p.Payload...)
		t.nextSeq += uint32(len(p.Payload))
		t.tsNs = p.TsNs
		l.App = AppTLS
		l.parseTLSRecord(t.data)
		if !l.HelloPartial {
			t.used = false
		}
		return
	}
}

// TLSPending reports whether l holds the start of a ClientHello split over
// TCP segments, whose next segment ParseL7 would put together with it: a
// caller that runs ParseL7 only for packets App recognises should also run
// it for TCP packets while this is true.
func (l *L7) TLSPending() bool {
	if l.s.tcp == nil {
		return false
	}
	for i := range l.s.tcp {
		if l.s.tcp[i].used {
			return true
		}
	}
	return false
}
