package decode

import (
	"bytes"
	"encoding/binary"
	"slices"
	"unsafe"
)

// Application names of App; constant so that classifying allocates nothing.
const (
	AppDNS  = "dns"
	AppTLS  = "tls"
	AppHTTP = "http"
	AppQUIC = "quic"
	AppSSH  = "ssh"
	AppDHCP = "dhcp"
	AppNTP  = "ntp"
	// AppMDNS is Multicast DNS (RFC 6762), UDP port 5353: DNS messages
	// whose question class carries the unicast-response bit and whose
	// responses usually hold no question (RFC 6762 §5.4, §6).
	AppMDNS = "mdns"
	// AppLLMNR is Link-Local Multicast Name Resolution (RFC 4795), UDP and
	// TCP port 5355: the DNS message format with its own flags.
	AppLLMNR = "llmnr"
)

// L7 is the light application-layer data of one packet.
type L7 struct {
	App         string // AppDNS ... ; "" when not recognised
	DNSQuery    string // question name without the trailing dot
	DNSQType    uint16
	DNSRCode    uint8
	DNSResponse bool
	DNSAnswers  []DNSAnswer
	TLSSNI      string
	// TLSALPN are the ALPN protocol names of a ClientHello in offered order
	// (RFC 7301 3.1), escaped like the other strings.
	TLSALPN []string
	// JA3Full is the JA3 string of a complete ClientHello and JA3 its MD5
	// (32 lower-case hex digits); JA4 its FoxIO JA4 fingerprint, e.g.
	// "t13d1516h2_8daaf6152771_e5627efa2ab1" ("q..." over QUIC). Empty when
	// the ClientHello is not whole in this packet (HelloPartial).
	JA3Full, JA3, JA4 string
	// Hello is set when the payload starts a TLS ClientHello (over TCP, or
	// in a decrypted QUIC client Initial); HelloPartial when that message
	// continues past this packet, so that only SNI and ALPN found in this
	// part are set.
	Hello, HelloPartial bool
	// QUICVersion is the version field of a QUIC long header (RFC 9000
	// 17.2): 1 for QUIC v1, 0x6b3343cf for v2 (RFC 9369), 0 for version
	// negotiation or when the packet is not QUIC.
	QUICVersion uint32
	HTTPMethod  string
	HTTPHost    string
	HTTPUA      string
	// Undecodable is why the application layer named by App did not parse
	// (ReasonDNS..., ReasonTLSBadClientHello), "" when it did. A fragment or a payload cut by the
	// snaplen is never marked: it is incomplete, not malformed.
	Undecodable string

	arena []byte // the bytes of the strings above (see ParseL7)
	s     scratch
}

// scratch is reusable working space of ParseL7, kept across calls so that
// TLS and QUIC parsing allocate only when a buffer grows.
type scratch struct {
	exts    []byte   // ClientHello extension types
	u16     []uint16 // sorted ciphers and extensions (JA4)
	buf     []byte   // JA4 hash input
	qhdr    []byte   // unprotected QUIC header (AEAD associated data)
	qplain  []byte   // decrypted QUIC Initial payload
	qcrypto []byte   // QUIC CRYPTO stream from offset 0
	// partial QUIC ClientHellos by connection, allocated on first use
	pending  *[quicPendingSlots]quicPending
	nextSlot int
	pendBuf  []byte // spare data buffer swapped with a slot's
	// TLS ClientHellos split over TCP segments, allocated on first use
	tcp     *[tcpPendingSlots]tcpPending
	nextTCP int
}

// Reasons a DNS message or a TLS ClientHello is undecodable (L7.Undecodable).
const (
	ReasonDNSShort       = "dns_short_message" // fewer than the 12 header bytes (RFC 1035 4.1.1)
	ReasonDNSBadQuestion = "dns_bad_question"  // the header counts a question that does not parse
	ReasonDNSBadRecord   = "dns_bad_answer"    // the header counts an answer that does not parse
	// a whole ClientHello (over TCP or in a QUIC Initial) whose inner
	// lengths do not add up: no JA3/JA4
	ReasonTLSBadClientHello = "tls_bad_client_hello"
)

// DNSAnswer is one A, AAAA or CNAME record.
type DNSAnswer struct {
	Name   string
	Type   uint16
	Addr   []byte // 4 or 16 bytes for A / AAAA
	Target string // CNAME target
	TTL    uint32 // seconds
}

var httpMethods = [][]byte{[]byte("GET "), []byte("POST "), []byte("HEAD "), []byte("PUT "),
	[]byte("DELETE "), []byte("OPTIONS "), []byte("PATCH "), []byte("CONNECT "), []byte("TRACE ")}

// App classifies p's payload without allocating: DNS on port 53, mDNS on
// UDP 5353 and LLMNR on 5355 (their names are parsed like DNS), TLS
// handshake records, HTTP/1 requests and responses, QUIC long headers on
// UDP 443, SSH banners, DHCP and NTP by port. It returns "" when unknown.
func App(p *Packet) string {
	if p.Kind != KindIP || (p.Proto != 6 && p.Proto != 17) {
		return ""
	}
	b := p.Payload
	sp, dp := p.SrcPort, p.DstPort
	if sp == 53 || dp == 53 {
		if p.Proto == 17 || len(b) > 0 {
			return AppDNS
		}
		return ""
	}
	if p.Proto == 17 && (sp == 5353 || dp == 5353) { // before LLMNR, as tshark decides 5353 ↔ 5355
		return AppMDNS
	}
	if sp == 5355 || dp == 5355 {
		if p.Proto == 17 || len(b) > 0 {
			return AppLLMNR
		}
		return ""
	}
	if p.Proto == 17 {
		switch {
		case (sp == 443 || dp == 443) && len(b) >= 5 && b[0]&0x80 != 0:
			return AppQUIC
		case sp == 67 || dp == 67 || sp == 68 || dp == 68:
			return AppDHCP
		case sp == 123 && dp == 123 || dp == 123 || sp == 123:
			return AppNTP
		}
		return ""
	}
	if len(b) == 0 {
		return ""
	}
	if len(b) >= 6 && b[0] == 0x16 && b[1] == 3 {
		return AppTLS
	}
	if bytes.HasPrefix(b, []byte("SSH-")) {
		return AppSSH
	}
	switch b[0] { // the first letters of "HTTP/1." and of the methods: most payloads stop here
	case 'H', 'G', 'P', 'D', 'O', 'C', 'T':
	default:
		return ""
	}
	if bytes.HasPrefix(b, []byte("HTTP/1.")) {
		return AppHTTP
	}
	for _, m := range httpMethods {
		if bytes.HasPrefix(b, m) {
			return AppHTTP
		}
	}
	return ""
}

// ParseL7 fills l with what App recognised plus the DNS question and answers,
// the TLS ClientHello's SNI, ALPN, JA3 and JA4 (over TCP, or from a QUIC v1/v2
// client Initial, decrypted), the QUIC version, and the HTTP request line and
// headers; malformed input leaves the fields it could not read empty. The strings and answer addresses point
// into buffers that l keeps and reuses: they are valid until the next
// ParseL7 on l (copy them with strings.Clone / bytes.Clone to keep them), so
// that a busy sensor's DNS traffic costs no allocations.
func ParseL7(p *Packet, l *L7) {
	*l = L7{App: App(p), arena: l.arena[:0], DNSAnswers: l.DNSAnswers[:0], TLSALPN: l.TLSALPN[:0], s: l.s}
	switch l.App {
	case AppDNS, AppMDNS, AppLLMNR:
		b := p.Payload
		if p.Proto == 6 {
			if len(b) < 2 {
				l.Undecodable = ReasonDNSShort
				return
			}
			b = b[2:]
		}
		parseDNS(b, l, l.App != AppDNS)
		if l.Undecodable != "" && (p.Fragment || len(p.Payload) < int(p.PayloadBytes)) {
			l.Undecodable = ""
		}
	case AppTLS:
		l.parseTLSRecord(p.Payload)
		if l.HelloPartial {
			l.s.keepTCP(p)
		}
	case "":
		if l.s.tcp != nil && p.Proto == 6 && len(p.Payload) > 0 {
			l.continueTCP(p)
		}
	case AppQUIC:
		l.parseQUIC(p.Payload)
	case AppHTTP:
		parseHTTP(p.Payload, l)
	}
}

func parseHTTP(b []byte, l *L7) {
	if len(b) > 4096 {
		b = b[:4096]
	}
	line, rest, _ := bytes.Cut(b, []byte("\r\n"))
	if sp := bytes.IndexByte(line, ' '); sp > 0 && !bytes.HasPrefix(line, []byte("HTTP/")) {
		l.HTTPMethod = l.text(line[:sp])
	}
	for len(rest) > 0 {
		var h []byte
		h, rest, _ = bytes.Cut(rest, []byte("\r\n"))
		if len(h) == 0 {
			break
		}
		k, v, ok := bytes.Cut(h, []byte(":"))
		if !ok {
			continue
		}
		v = bytes.TrimSpace(v)
		switch {
		case bytes.EqualFold(k, []byte("host")):
			l.HTTPHost = l.text(v)
		case bytes.EqualFold(k, []byte("user-agent")):
			l.HTTPUA = l.text(v)
		}
	}
}

// parseDNS reads the header, first question and A/AAAA/CNAME answers of a
// DNS message (RFC 1035 4.1; the same format for mDNS, RFC 6762 §18, and
// LLMNR, RFC 4795 §2.1). The answers are read also when there is no
// question, as in an mDNS response. The class is not checked (mDNS uses
// its top bit as the unicast-response / cache-flush flag). With all, the
// authority and additional records are read too (at most 32 records in
// all): an mDNS responder sends a host's A and AAAA records as additional
// records of its SRV or PTR answer (RFC 6762 §12); a DNS message's
// additional records are glue, left out.
func parseDNS(b []byte, l *L7, all bool) {
	if len(b) < 12 {
		l.Undecodable = ReasonDNSShort
		return
	}
	l.DNSResponse = b[2]&0x80 != 0
	l.DNSRCode = b[3] & 0x0f
	qd := int(binary.BigEndian.Uint16(b[4:]))
	an := int(binary.BigEndian.Uint16(b[6:]))
	if all {
		an += int(binary.BigEndian.Uint16(b[8:])) + int(binary.BigEndian.Uint16(b[10:]))
	}
	off := 12
	if qd > 0 {
		name, n, ok := dnsName(b, off, l)
		if !ok || n+4 > len(b) {
			l.Undecodable = ReasonDNSBadQuestion
			return
		}
		l.DNSQuery = name
		l.DNSQType = binary.BigEndian.Uint16(b[n:])
		off = n + 4
	}
	for i := 1; i < qd; i++ {
		_, n, ok := dnsName(b, off, nil)
		if !ok || n+4 > len(b) {
			l.Undecodable = ReasonDNSBadQuestion
			return
		}
		off = n + 4
	}
	for i := 0; i < an && i < 32; i++ {
		// the name is written out only for the records kept
		_, n, ok := dnsName(b, off, nil)
		if !ok || n+10 > len(b) {
			l.Undecodable = ReasonDNSBadRecord
			return
		}
		typ := binary.BigEndian.Uint16(b[n:])
		ttl := binary.BigEndian.Uint32(b[n+4:])
		rdl := int(binary.BigEndian.Uint16(b[n+8:]))
		rd := n + 10
		if rd+rdl > len(b) {
			l.Undecodable = ReasonDNSBadRecord
			return
		}
		switch {
		case typ == 1 && rdl == 4, typ == 28 && rdl == 16:
			name, _, _ := dnsName(b, off, l)
			l.DNSAnswers = append(l.DNSAnswers, DNSAnswer{Name: name, Type: typ, TTL: ttl,
				Addr: l.bytes(b[rd : rd+rdl])})
		case typ == 5:
			start := len(l.arena)
			name, _, _ := dnsName(b, off, l)
			t, _, ok := dnsName(b, rd, l)
			if ok {
				l.DNSAnswers = append(l.DNSAnswers, DNSAnswer{Name: name, Type: typ, TTL: ttl, Target: t})
			} else {
				l.arena = l.arena[:start]
			}
		}
		off = rd + rdl
	}
}

// dnsName reads a possibly compressed name at off and returns it without the
// trailing dot and the offset just after it. With a it writes the name,
// escaped as text does, straight into a's arena; without it only the end
// is found.
func dnsName(b []byte, off int, a *L7) (string, int, bool) {
	start := -1
	if a != nil {
		start = len(a.arena)
	}
	raw := 0 // name length in wire bytes, dots included: at most 255 (RFC 1035 2.3.4)
	end := -1
	for jumps := 0; jumps < 32; {
		if off >= len(b) {
			break
		}
		c := int(b[off])
		switch {
		case c == 0:
			if end < 0 {
				end = off + 1
			}
			if a == nil {
				return "", end, true
			}
			return a.str(start), end, true
		case c&0xc0 == 0xc0:
			if off+1 >= len(b) {
				jumps = 32
				continue
			}
			if end < 0 {
				end = off + 2
			}
			off = (c&0x3f)<<8 | int(b[off+1])
			jumps++
			continue
		case c&0xc0 != 0:
			jumps = 32
			continue
		}
		if off+1+c > len(b) || raw+c+1 > 255 {
			break
		}
		if a != nil {
			if raw > 0 {
				a.arena = append(a.arena, '.')
			}
			a.arena = appendText(a.arena, b[off+1:off+1+c])
		}
		if raw > 0 {
			raw++
		}
		raw += c
		off += 1 + c
	}
	if a != nil {
		a.arena = a.arena[:start]
	}
	return "", 0, false
}

// escapes holds, for every byte, what text writes for it, packed
// little-endian in the low bytes, and escLen its length: the byte itself
// (1) for printable ASCII but '\\', else \xNN (4).
var escapes, escLen = func() (e [256]uint32, n [256]uint8) {
	const hex = "0123456789abcdef"
	for c := range 256 {
		if c >= 0x20 && c <= 0x7e && c != '\\' {
			e[c], n[c] = uint32(c), 1
			continue
		}
		e[c] = uint32('\\') | uint32('x')<<8 | uint32(hex[c>>4])<<16 | uint32(hex[c&15])<<24
		n[c] = 4
	}
	return e, n
}()

// appendText appends b to dst with every byte outside printable ASCII, and
// the backslash, written as \xNN (see text), after one capacity check and
// without a branch per byte (binary DNS labels mix both kinds at random).
func appendText(dst, b []byte) []byte {
	n := len(dst)
	dst = slices.Grow(dst, 4*len(b))
	d := dst[n : n+4*len(b)]
	j := 0
	for _, c := range b {
		// j <= 4*(bytes so far), so the 4 bytes stored fit in d
		binary.LittleEndian.PutUint32(d[j:], escapes[c])
		j += int(escLen[c])
	}
	return dst[:n+j]
}

// text returns b as a printable string: bytes outside printable ASCII are
// written as \xNN, the escaping Zeek uses in its logs, so binary DNS labels
// (tunnels) and hostile header values survive as valid UTF-8 and stay
// distinguishable. Protobuf string fields must hold valid UTF-8.
//
// The string is kept in l's arena (valid until the next ParseL7 on l). The
// arena only grows until the next ParseL7 (a reallocation leaves earlier
// strings' bytes in the old array), so the bytes under a string do not
// change while it is valid.
func (l *L7) text(b []byte) string {
	if len(b) == 0 {
		return ""
	}
	start := len(l.arena)
	l.arena = appendText(l.arena, b)
	return l.str(start)
}

// str returns the arena bytes from start to its end as a string (see text).
func (l *L7) str(start int) string {
	s := l.arena[start:len(l.arena):len(l.arena)]
	return unsafe.String(unsafe.SliceData(s), len(s))
}

// bytes copies b into l's arena.
func (l *L7) bytes(b []byte) []byte {
	start := len(l.arena)
	l.arena = append(l.arena, b...)
	return l.arena[start:len(l.arena):len(l.arena)]
}
