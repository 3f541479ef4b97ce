// Package decode is the second stage of the agent (capture → decode →
// fragment → publish): it parses one captured frame, link layer to transport,
// by hand-written header parsing that allocates nothing, and finds the
// innermost tunnelled IP header that DESIGN.md ("Accounting") counts.
package decode

import (
	"encoding/binary"
	"fmt"

	"github.com/gopacket/gopacket/layers"
)

// Kind classifies a frame.
type Kind uint8

const (
	KindIP        Kind = iota // a usable IP header: counted in a flow
	KindNonIP                 // no IP header (ARP, LLC, ...): counted per sensor
	KindMalformed             // an IP or link header that does not parse: counted per sensor
	// KindTruncated is an IP frame cut by the snaplen (captured length
	// below the wire length) inside its IP header, before both addresses:
	// its IP bytes come from the length field (IPBytes, Network, Proto are
	// set), it counts as an IP frame per sensor, by Reason, but it cannot
	// be put in a flow. An IPv4 header cut after its addresses (options,
	// or no transport header) is KindIP, with ports 0. A tunnel's inner IP
	// header cut the same way makes the frame KindTruncated too, with the
	// inner header's bytes (Network stays the outermost header, Tunnel is
	// set); so does an inner frame cut before that header's length field
	// (ReasonTruncatedTunnel).
	KindTruncated
)

// Network is the outermost network-layer protocol of a frame.
type Network uint8

const (
	NetOther Network = iota
	NetIPv4
	NetIPv6
	NetARP
)

// String returns "ipv4", "ipv6", "arp" or "other".
func (n Network) String() string {
	switch n {
	case NetIPv4:
		return "ipv4"
	case NetIPv6:
		return "ipv6"
	case NetARP:
		return "arp"
	}
	return "other"
}

// Tunnel values match pb.Tunnel.
const (
	TunnelNone   = 0
	TunnelGRE    = 1
	TunnelERSPAN = 2
	TunnelVXLAN  = 3
	TunnelGeneve = 4
	TunnelIPIP   = 5
)

// Reasons a frame is malformed; constant strings so that counting them
// allocates nothing.
const (
	ReasonShortLink     = "short_link_header"
	ReasonShortIPv4     = "short_ipv4_header"
	ReasonBadIPv4Header = "bad_ipv4_header_length"
	ReasonBadIPv4Total  = "bad_ipv4_total_length"
	ReasonBadIPVersion  = "bad_ip_version"
	ReasonShortIPv6     = "short_ipv6_header"
	ReasonBadIPv6Ext    = "bad_ipv6_extension_header"

	// Reasons of KindTruncated: the snaplen ended the capture inside the
	// header, before the end of the destination address.
	ReasonTruncatedIPv4 = "truncated_ipv4_header"
	ReasonTruncatedIPv6 = "truncated_ipv6_header"
	// ReasonTruncatedTunnel: the snaplen ended the capture inside a
	// tunnel's header or inner frame before the inner IP header's length
	// field (for VXLAN, Geneve and ERSPAN with snaplen 54, inside the inner
	// Ethernet header); the inner packet's IP bytes are the outer length
	// fields' share left after the encapsulation headers (see tunnelCut).
	ReasonTruncatedTunnel = "truncated_tunnel"
)

// Packet is the decoded summary of one frame. Payload and the L7 input
// alias the frame's buffer and are valid only until the next read.
type Packet struct {
	Kind    Kind
	Reason  string  // why the frame is malformed or truncated; "" otherwise
	Network Network // outermost network header
	TsNs    int64   // packet time, Unix ns (set by the caller)
	// WireLen is the frame's length on the wire, bytes: the original
	// length of the capture's record header (pcap orig_len, pcapng
	// original packet length, libpcap's len), set by the caller like TsNs;
	// 0 when unknown. Decode reads it for IPv4 total length 0 (TSO) and to
	// tell a frame cut by the snaplen from a malformed one.
	WireLen uint32

	Src, Dst         [16]byte // innermost IP addresses; the first AddrLen bytes are used
	AddrLen          uint8    // 4 or 16
	SrcPort, DstPort uint16   // 0 without ports (ICMP, non-first fragments)
	Proto            uint8    // IP protocol number of the innermost header
	IPBytes          uint32   // IPv4 total length (when it is 0, TSO: WireLen minus the bytes before the IP header) or IPv6 payload length + 40
	PayloadBytes     uint32   // transport payload bytes from the length fields
	TCPFlags         uint16   // flags byte, NS as 0x100
	ICMPType         uint8
	ICMPCode         uint8
	VLAN, InnerVLAN  uint16 // outermost frame's 802.1Q IDs, 0 when untagged
	Tunnel           uint8  // TunnelNone..TunnelIPIP: the innermost tunnel removed
	TunnelID         uint32 // VNI, GRE key or ERSPAN session
	IPID             uint32 // IPv4 id or IPv6 fragment id
	Fragment         bool   // the innermost header is a fragment (first or not)
	FragOffset       uint16 // fragment offset in bytes; > 0 for non-first fragments
	TTL              uint8
	Seq, Ack         uint32
	Window           uint16
	Payload          []byte // captured transport payload (TCP/UDP), for light L7
	ARP              ARP    // the ARP/RARP frame when Network is NetARP (ARP.OK)

	frameLen int // captured bytes of the frame being decoded
}

// cut reports whether the captured frame ends before its wire length
// (a snaplen), so that a header running past the captured bytes is
// truncated rather than malformed.
func (p *Packet) cut() bool { return p.WireLen > 0 && p.frameLen < int(p.WireLen) }

// Decoder parses frames of one link type. The zero value is not usable:
// call New.
type Decoder struct {
	link layers.LinkType
}

// New returns a decoder for link, or an error naming an unsupported link type.
func New(link layers.LinkType) (*Decoder, error) {
	if !Supported(link) {
		return nil, fmt.Errorf("unsupported link type %d (%s): want Ethernet, Linux SLL/SLL2, raw IP or BSD loopback", int(link), LinkName(link))
	}
	return &Decoder{link: link}, nil
}

// Supported reports whether link can be decoded.
func Supported(link layers.LinkType) bool {
	switch link {
	case layers.LinkTypeEthernet, layers.LinkTypeLinuxSLL, layers.LinkTypeLinuxSLL2,
		layers.LinkTypeRaw, 12, 14, layers.LinkTypeIPv4, layers.LinkTypeIPv6,
		layers.LinkTypeNull, layers.LinkTypeLoop:
		return true
	}
	return false
}

// LinkName names a link type (LINKTYPE_ value of the pcap and pcapng
// formats, tcpdump.org/linktypes.html) as capinfos and tshark do (Wireshark
// 4.0's wiretap encapsulation descriptions, `capinfos -E`): "Ethernet",
// "Linux cooked-mode capture v1" (113) and "v2" (276), "Raw IP" (12, 14 and
// 101, one encapsulation in wiretap), "Raw IPv4" (228), "Raw IPv6" (229),
// "NULL/Loopback" (0), "OpenBSD loopback" (108), and a few common types the
// decoder does not read; any other is "link type N".
func LinkName(l layers.LinkType) string {
	switch l {
	case 0:
		return "NULL/Loopback"
	case 1:
		return "Ethernet"
	case 9:
		return "PPP"
	case 12, 14, 101:
		return "Raw IP"
	case 105:
		return "IEEE 802.11 Wireless LAN"
	case 108:
		return "OpenBSD loopback"
	case 113:
		return "Linux cooked-mode capture v1"
	case 127:
		return "IEEE 802.11 plus radiotap radio header"
	case 195:
		return "IEEE 802.15.4 Wireless PAN"
	case 228:
		return "Raw IPv4"
	case 229:
		return "Raw IPv6"
	case 253:
		return "Linux Netlink"
	case 276:
		return "Linux cooked-mode capture v2"
	}
	if l >= 147 && l <= 162 { // LINKTYPE_USER0..15
		return fmt.Sprintf("USER %d", int(l)-147)
	}
	return fmt.Sprintf("link type %d", int(l))
}

// LinkType is the link type this decoder reads.
func (d *Decoder) LinkType() layers.LinkType { return d.link }

// maxDepth bounds tunnel nesting, so that crafted frames cannot loop.
const maxDepth = 8

// Decode parses data into p (overwriting it, except TsNs and WireLen) and
// returns p.Kind. It never panics on any input.
func (d *Decoder) Decode(data []byte, p *Packet) Kind {
	ts, wire := p.TsNs, p.WireLen
	*p = Packet{TsNs: ts, WireLen: wire, frameLen: len(data)}
	switch d.link {
	case layers.LinkTypeEthernet:
		d.ether(data, p, 0, true, -1)
		if p.ARP.OK {
			copy(p.ARP.EthSrc[:], data[6:12])
			p.ARP.HasEthSrc = true
		}
	case layers.LinkTypeLinuxSLL:
		if len(data) < 16 {
			return p.malformed(ReasonShortLink)
		}
		d.ethertype(binary.BigEndian.Uint16(data[14:16]), data[16:], p, 0, true, -1)
	case layers.LinkTypeLinuxSLL2:
		if len(data) < 20 {
			return p.malformed(ReasonShortLink)
		}
		d.ethertype(binary.BigEndian.Uint16(data[0:2]), data[20:], p, 0, true, -1)
	case layers.LinkTypeRaw, 12, 14:
		d.rawIP(data, p)
	case layers.LinkTypeIPv4:
		p.Network = NetIPv4
		d.ipv4(data, p, 0)
	case layers.LinkTypeIPv6:
		p.Network = NetIPv6
		d.ipv6(data, p, 0)
	case layers.LinkTypeNull, layers.LinkTypeLoop:
		if len(data) < 4 {
			return p.malformed(ReasonShortLink)
		}
		fam := binary.LittleEndian.Uint32(data)
		if d.link == layers.LinkTypeLoop || fam > 0xffff {
			fam = binary.BigEndian.Uint32(data)
		}
		switch fam {
		case 2:
			p.Network = NetIPv4
			d.ipv4(data[4:], p, 0)
		case 10, 23, 24, 26, 28, 30:
			p.Network = NetIPv6
			d.ipv6(data[4:], p, 0)
		default:
			p.Kind = KindNonIP
		}
	default:
		return p.malformed(ReasonShortLink)
	}
	return p.Kind
}

// truncated marks p as an IP frame of ipBytes cut inside its header.
func (p *Packet) truncated(reason string, ipBytes uint32, n Network) {
	p.Kind, p.Reason, p.IPBytes, p.Network, p.AddrLen, p.Proto = KindTruncated, reason, ipBytes, n, 0, 0
	p.SrcPort, p.DstPort, p.TCPFlags, p.ICMPType, p.ICMPCode = 0, 0, 0, 0, 0
	p.Seq, p.Ack, p.Window, p.Payload, p.Fragment, p.FragOffset, p.PayloadBytes = 0, 0, 0, nil, false, 0, 0
}

// tunnelCut marks p as a tunnelled IP packet of ipBytes whose inner frame
// the snaplen cut before the inner IP header's length field could be read
// (ReasonTruncatedTunnel), when data, the captured part of the inner frame,
// is shorter than avail, its length by the outer length fields, and the
// frame was cut. ipBytes is at most what the wire held after data's start.
// It reports whether p was marked; p.Network (the outermost header) stays.
func (p *Packet) tunnelCut(data []byte, avail, ipBytes int) bool {
	if !p.cut() || avail <= len(data) || ipBytes <= 0 {
		return false
	}
	if w := int(p.WireLen) - (p.frameLen - len(data)); ipBytes > w {
		return false // the outer length fields claim more than the wire held
	}
	p.truncated(ReasonTruncatedTunnel, uint32(ipBytes), p.Network)
	return true
}

func (p *Packet) malformed(reason string) Kind {
	p.Kind = KindMalformed
	p.Reason = reason
	return p.Kind
}

func (d *Decoder) rawIP(data []byte, p *Packet) {
	if len(data) < 1 {
		p.malformed(ReasonShortLink)
		return
	}
	switch data[0] >> 4 {
	case 4:
		p.Network = NetIPv4
		d.ipv4(data, p, 0)
	case 6:
		p.Network = NetIPv6
		d.ipv6(data, p, 0)
	default:
		p.malformed(ReasonBadIPVersion)
	}
}

// ether parses an Ethernet frame; outer is true for the captured frame
// (whose VLAN tags and network header are recorded) and false inside tunnels.
// avail is the frame's length by the outer length fields (a tunnel's
// payload), -1 when unknown: an inner frame the snaplen cut inside its
// Ethernet header is taken for untagged Ethernet carrying IP, of avail - 14
// IP bytes (ReasonTruncatedTunnel: its EtherType was not captured).
func (d *Decoder) ether(data []byte, p *Packet, depth int, outer bool, avail int) bool {
	if len(data) < 14 {
		if outer {
			p.malformed(ReasonShortLink)
			return false
		}
		return p.tunnelCut(data, avail, avail-14)
	}
	return d.ethertype(binary.BigEndian.Uint16(data[12:14]), data[14:], p, depth, outer, avail-14)
}

// ethertype parses what follows an EtherType, including 802.1Q/802.1ad tags.
// It returns whether a usable IP header was found (or, inside a tunnel, an
// IP packet cut by the snaplen: KindTruncated). avail is the length of data
// by the outer length fields, < 0 when unknown or outer.
func (d *Decoder) ethertype(et uint16, data []byte, p *Packet, depth int, outer bool, avail int) bool {
	tags := 0
	for et == 0x8100 || et == 0x88a8 || et == 0x9100 {
		if len(data) < 4 {
			if outer {
				p.malformed(ReasonShortLink)
				return false
			}
			return p.tunnelCut(data, avail, avail-4) // taken for a tag followed by IP
		}
		if outer {
			id := binary.BigEndian.Uint16(data[0:2]) & 0x0fff
			if tags == 0 {
				p.VLAN = id
			} else if tags == 1 {
				p.InnerVLAN = id
			}
		}
		tags++
		et = binary.BigEndian.Uint16(data[2:4])
		data = data[4:]
		avail -= 4
	}
	switch et {
	case 0x8847, 0x8848: // MPLS (RFC 3032): labels up to the bottom of the stack, then IP by version
		for {
			if len(data) < 4 {
				if outer {
					p.malformed(ReasonShortLink)
				}
				return false
			}
			bottom := data[2]&1 == 1
			data = data[4:]
			avail -= 4
			if bottom {
				break
			}
		}
		if len(data) == 0 {
			if outer {
				p.malformed(ReasonShortLink)
			}
			return false
		}
		switch data[0] >> 4 {
		case 4:
			et = 0x0800
		case 6:
			et = 0x86dd
		}
	case 0x8864: // PPPoE session (RFC 2516): 6-byte header, then the PPP protocol (RFC 1661)
		if len(data) < 8 {
			if outer {
				p.malformed(ReasonShortLink)
			}
			return false
		}
		switch binary.BigEndian.Uint16(data[6:8]) {
		case 0x0021:
			et = 0x0800
		case 0x0057:
			et = 0x86dd
		}
		data = data[8:]
		avail -= 8
	}
	switch et {
	case 0x0800:
		if outer {
			p.Network = NetIPv4
			return d.ipv4(data, p, depth)
		}
		return d.inner(data, p, depth, 4, avail)
	case 0x86dd:
		if outer {
			p.Network = NetIPv6
			return d.ipv6(data, p, depth)
		}
		return d.inner(data, p, depth, 6, avail)
	case 0x0806, 0x8035:
		if outer {
			p.Network = NetARP
			p.Kind = KindNonIP
			p.ARP.parse(data)
		}
	default:
		if outer {
			p.Kind = KindNonIP
		}
	}
	return false
}

// inner decodes a tunnelled IP header of the given version into a scratch
// copy of p, and commits it only when it is usable, so that an unusable inner
// header leaves the frame counted at its outer header. avail is the inner
// packet's length by the outer length fields (< 0 when unknown). An inner
// header the snaplen cut is committed as KindTruncated (DESIGN.md: a frame's
// bytes are its innermost header's length, whatever the snaplen cut off):
// from its own length field when that was captured (IPv4 bytes 2-3, IPv6
// 4-5), else from avail (ReasonTruncatedTunnel); inner reports true then too.
func (d *Decoder) inner(data []byte, p *Packet, depth int, version int, avail int) bool {
	if depth >= maxDepth {
		return false
	}
	if len(data) < 1 {
		return p.tunnelCut(data, avail, avail)
	}
	if int(data[0]>>4) != version {
		return false
	}
	q := *p
	var ok bool
	if version == 4 {
		ok = d.ipv4(data, &q, depth+1)
	} else {
		ok = d.ipv6(data, &q, depth+1)
	}
	switch {
	case ok:
		*p = q
	case q.Kind == KindTruncated: // cut after its length field, before its addresses
		q.Network = p.Network
		*p = q
		ok = true
	case version == 4 && len(data) < 4, version == 6 && len(data) < 6:
		ok = p.tunnelCut(data, avail, avail)
	}
	return ok
}

// ipv4 parses an IPv4 header (RFC 791) and what follows.
func (d *Decoder) ipv4(data []byte, p *Packet, depth int) bool {
	if len(data) < 20 {
		if len(data) >= 4 && data[0]>>4 == 4 && p.cut() {
			// the snaplen ended the frame inside the header, before the
			// addresses: counted from the total length, not in a flow
			p.truncated(ReasonTruncatedIPv4, uint32(binary.BigEndian.Uint16(data[2:4])), NetIPv4)
			if len(data) >= 10 {
				p.Proto = data[9]
			}
			return false
		}
		p.malformed(ReasonShortIPv4)
		return false
	}
	if data[0]>>4 != 4 {
		p.malformed(ReasonBadIPVersion)
		return false
	}
	ihl := int(data[0]&0x0f) * 4
	// options cut by the snaplen: the addresses are there, the transport
	// header is not (ports 0)
	optionsCut := len(data) < ihl && p.cut()
	if ihl < 20 || len(data) < ihl && !optionsCut {
		p.malformed(ReasonBadIPv4Header)
		return false
	}
	total := int(binary.BigEndian.Uint16(data[2:4]))
	if total == 0 {
		// TCP segmentation offload: a locally captured segment larger than
		// 64 KiB, or not yet split by the NIC, has total length 0 (issue
		// 3). Its IP bytes are the frame's wire length minus the bytes
		// before this header (link header, tunnels), so that a snaplen does
		// not change them; the captured length when the wire length is
		// not known.
		total = len(data)
		if w := int(p.WireLen) - (p.frameLen - len(data)); p.WireLen > 0 && w > total {
			total = w
		}
	}
	if total < ihl {
		p.malformed(ReasonBadIPv4Total)
		return false
	}
	p.Kind = KindIP
	p.Reason = ""
	p.AddrLen = 4
	p.Src = [16]byte{}
	p.Dst = [16]byte{}
	copy(p.Src[:4], data[12:16])
	copy(p.Dst[:4], data[16:20])
	p.Proto = data[9]
	p.TTL = data[8]
	p.IPBytes = uint32(total)
	p.SrcPort, p.DstPort, p.TCPFlags, p.ICMPType, p.ICMPCode = 0, 0, 0, 0, 0
	p.Seq, p.Ack, p.Window, p.Payload = 0, 0, 0, nil
	ff := binary.BigEndian.Uint16(data[6:8])
	mf := ff&0x2000 != 0
	off := (ff & 0x1fff) * 8
	p.IPID = uint32(binary.BigEndian.Uint16(data[4:6]))
	p.Fragment = mf || off != 0
	p.FragOffset = off
	plen := total - ihl
	p.PayloadBytes = uint32(plen)
	body := data[min(ihl, len(data)):] // empty when the snaplen cut the options
	if len(body) > plen {
		body = body[:plen] // Ethernet padding
	}
	if off != 0 {
		return true // never read ports out of a non-first fragment
	}
	// A first fragment holds the tunnel's inner headers: decapsulated like
	// a whole packet (tshark does so with defragmentation off), its inner
	// length fields give the inner packet's bytes; the later fragments stay
	// in the outer flow (QA of issue 3: a fragmented VXLAN or GRE packet
	// was counted in the tunnel endpoints' flow).
	{
		switch p.Proto {
		case 4:
			if d.inner(body, p, depth, 4, plen) {
				p.Tunnel = TunnelIPIP
			}
			return true
		case 41:
			if d.inner(body, p, depth, 6, plen) {
				p.Tunnel = TunnelIPIP
			}
			return true
		case 47:
			d.gre(body, plen, p, depth)
			return true
		}
	}
	d.transport(body, plen, p, depth)
	return true
}

// ipv6 parses an IPv6 header (RFC 8200), its extension headers and what follows.
func (d *Decoder) ipv6(data []byte, p *Packet, depth int) bool {
	if len(data) < 40 {
		if len(data) >= 6 && data[0]>>4 == 6 && p.cut() {
			// the snaplen ended the frame inside the header (a link header
			// longer than Ethernet's — SLL2, 802.1Q — with snaplen 54, or
			// Ethernet with snaplen 20) after its payload length (bytes
			// 4-5, RFC 8200 section 3): counted from the payload length,
			// not in a flow; the next header (byte 6) when it was kept
			p.truncated(ReasonTruncatedIPv6, uint32(binary.BigEndian.Uint16(data[4:6]))+40, NetIPv6)
			if len(data) >= 7 {
				p.Proto = data[6]
			}
			return false
		}
		p.malformed(ReasonShortIPv6)
		return false
	}
	if data[0]>>4 != 6 {
		p.malformed(ReasonBadIPVersion)
		return false
	}
	p.Kind = KindIP
	p.Reason = ""
	p.AddrLen = 16
	copy(p.Src[:], data[8:24])
	copy(p.Dst[:], data[24:40])
	plen := int(binary.BigEndian.Uint16(data[4:6]))
	p.IPBytes = uint32(plen) + 40
	p.TTL = data[7]
	p.SrcPort, p.DstPort, p.TCPFlags, p.ICMPType, p.ICMPCode = 0, 0, 0, 0, 0
	p.Seq, p.Ack, p.Window, p.Payload = 0, 0, 0, nil
	p.IPID, p.Fragment, p.FragOffset = 0, false, 0
	nh := data[6]
	body := data[40:]
	if len(body) > plen {
		body = body[:plen]
	}
	rest := plen // bytes after the headers parsed so far, by the length field
	for i := 0; i < 16; i++ {
		switch nh {
		case 0, 43, 60, 135, 139, 140: // hop-by-hop, routing, destination, mobility, HIP, shim6
			if len(body) < 2 {
				p.Proto = nh
				p.PayloadBytes = uint32(max(rest, 0))
				return true // truncated by the snaplen: the IP header itself is usable
			}
			n := (int(body[1]) + 1) * 8
			if n > rest {
				// the extension header overruns the payload length: the IPv6
				// header is usable, the chain after it is not (as tshark counts it)
				p.Proto = nh
				p.PayloadBytes = uint32(max(rest, 0))
				return true
			}
			nh = body[0]
			rest -= n
			if n > len(body) {
				body = nil
			} else {
				body = body[n:]
			}
			if nh == 59 {
				p.Proto = 59
				p.PayloadBytes = uint32(rest)
				return true
			}
		case 51: // AH, RFC 4302: length in 4-octet units minus 2
			if len(body) < 2 {
				p.Proto = nh
				p.PayloadBytes = uint32(max(rest, 0))
				return true
			}
			n := (int(body[1]) + 2) * 4
			if n > rest {
				// the extension header overruns the payload length: the IPv6
				// header is usable, the chain after it is not (as tshark counts it)
				p.Proto = nh
				p.PayloadBytes = uint32(max(rest, 0))
				return true
			}
			nh = body[0]
			rest -= n
			if n > len(body) {
				body = nil
			} else {
				body = body[n:]
			}
		case 44: // fragment
			if rest < 8 {
				p.Proto = nh
				p.PayloadBytes = uint32(max(rest, 0))
				return true
			}
			if len(body) < 8 {
				p.Proto = 44
				p.PayloadBytes = uint32(rest)
				return true
			}
			nh = body[0]
			fo := binary.BigEndian.Uint16(body[2:4])
			p.FragOffset = fo &^ 7
			p.Fragment = true // an atomic fragment (offset 0, M 0) is still a fragment header
			p.IPID = binary.BigEndian.Uint32(body[4:8])
			rest -= 8
			body = body[8:]
			if p.FragOffset != 0 {
				p.Proto = nh
				p.PayloadBytes = uint32(rest)
				return true
			}
		default:
			p.Proto = nh
			{ // a first fragment too (see ipv4): non-first ones returned above
				switch nh {
				case 4:
					p.PayloadBytes = uint32(rest)
					if d.inner(body, p, depth, 4, rest) {
						p.Tunnel = TunnelIPIP
					}
					return true
				case 41:
					p.PayloadBytes = uint32(rest)
					if d.inner(body, p, depth, 6, rest) {
						p.Tunnel = TunnelIPIP
					}
					return true
				case 47:
					p.PayloadBytes = uint32(rest)
					d.gre(body, rest, p, depth)
					return true
				}
			}
			d.transport(body, rest, p, depth)
			return true
		}
	}
	p.Proto = nh
	p.PayloadBytes = uint32(max(rest, 0))
	return true
}

// transport parses TCP, UDP, SCTP, ICMP or ICMPv6 in body (captured bytes) of an IP
// payload that is plen bytes long by the IP length fields. It decapsulates
// VXLAN and Geneve.
func (d *Decoder) transport(body []byte, plen int, p *Packet, depth int) {
	p.PayloadBytes = uint32(max(plen, 0))
	switch p.Proto {
	case 6:
		if len(body) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(body[0:2])
			p.DstPort = binary.BigEndian.Uint16(body[2:4])
		}
		hl := 20
		if len(body) >= 16 {
			p.Seq = binary.BigEndian.Uint32(body[4:8])
			p.Ack = binary.BigEndian.Uint32(body[8:12])
			hl = int(body[12]>>4) * 4
			p.TCPFlags = uint16(body[13]) | uint16(body[12]&1)<<8
			p.Window = binary.BigEndian.Uint16(body[14:16])
		}
		if hl < 20 {
			hl = 20
		}
		p.PayloadBytes = uint32(max(plen-hl, 0))
		if len(body) > hl {
			p.Payload = body[hl:]
		}
	case 17, 136: // UDP, UDP-Lite
		if len(body) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(body[0:2])
			p.DstPort = binary.BigEndian.Uint16(body[2:4])
		}
		ulen := plen
		if len(body) >= 6 && p.Proto == 17 {
			if l := int(binary.BigEndian.Uint16(body[4:6])); l >= 8 && l <= plen {
				ulen = l
			}
		}
		p.PayloadBytes = uint32(max(ulen-8, 0))
		if len(body) > 8 {
			p.Payload = body[8:]
			if len(p.Payload) > ulen-8 && ulen >= 8 {
				p.Payload = p.Payload[:ulen-8]
			}
		}
		// the UDP header whole (a snaplen may have cut the payload, even all of it)
		if len(body) >= 8 && depth < maxDepth && p.Proto == 17 && p.FragOffset == 0 {
			switch p.DstPort {
			case 4789:
				d.vxlan(p.Payload, ulen-8, p, depth)
			case 6081:
				d.geneve(p.Payload, ulen-8, p, depth)
			}
		}
	case 1, 58:
		if len(body) >= 2 {
			p.ICMPType = body[0]
			p.ICMPCode = body[1]
		}
		p.PayloadBytes = uint32(max(plen-8, 0))
	case 132: // SCTP: source and destination port open its 12-byte common header (RFC 9260 §3.1)
		if len(body) >= 4 {
			p.SrcPort = binary.BigEndian.Uint16(body[0:2])
			p.DstPort = binary.BigEndian.Uint16(body[2:4])
		}
		p.PayloadBytes = uint32(max(plen-12, 0))
	}
}

// vxlan decapsulates a VXLAN header (RFC 7348) and the inner Ethernet frame;
// avail is the UDP payload's length by the UDP length field. A VXLAN header
// the snaplen cut (8 bytes, then the inner Ethernet header's 14) gives the
// inner IP bytes avail - 22 (ReasonTruncatedTunnel).
func (d *Decoder) vxlan(b []byte, avail int, p *Packet, depth int) {
	if len(b) >= 1 && b[0]&0x08 == 0 {
		return // the I flag must be set
	}
	if len(b) < 8 {
		if p.tunnelCut(b, avail, avail-8-14) {
			p.Tunnel = TunnelVXLAN
		}
		return
	}
	vni := uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6])
	if d.ether(b[8:], p, depth+1, false, avail-8) {
		p.Tunnel = TunnelVXLAN
		p.TunnelID = vni
	}
}

// geneve decapsulates a Geneve header (RFC 8926); avail is the UDP payload's
// length by the UDP length field. A Geneve header the snaplen cut after its
// protocol type (bytes 2-3; its length, options included, is in byte 0)
// gives the inner IP bytes from avail (ReasonTruncatedTunnel); cut before,
// the frame counts at its outer header.
func (d *Decoder) geneve(b []byte, avail int, p *Packet, depth int) {
	if len(b) < 4 || b[0]>>6 != 0 {
		return
	}
	hl := 8 + int(b[0]&0x3f)*4
	if len(b) < hl {
		inner := -1
		switch binary.BigEndian.Uint16(b[2:4]) {
		case 0x6558:
			inner = avail - hl - 14
		case 0x0800, 0x86dd:
			inner = avail - hl
		}
		if p.tunnelCut(b, avail, inner) {
			p.Tunnel = TunnelGeneve
		}
		return
	}
	vni := uint32(b[4])<<16 | uint32(b[5])<<8 | uint32(b[6])
	pt := binary.BigEndian.Uint16(b[2:4])
	var ok bool
	switch pt {
	case 0x6558:
		ok = d.ether(b[hl:], p, depth+1, false, avail-hl)
	case 0x0800:
		ok = d.inner(b[hl:], p, depth, 4, avail-hl)
	case 0x86dd:
		ok = d.inner(b[hl:], p, depth, 6, avail-hl)
	}
	if ok {
		p.Tunnel = TunnelGeneve
		p.TunnelID = vni
	}
}

// gre decapsulates GRE (RFC 2784, 2890) and ERSPAN type I/II/III; avail is
// the GRE packet's length by the outer IP length fields. A GRE or ERSPAN
// header the snaplen cut after GRE's protocol type (bytes 2-3) gives the
// inner IP bytes from avail minus the headers, whose lengths the flags tell
// (ReasonTruncatedTunnel), except an ERSPAN III header cut before its O
// flag (byte 11); cut before, the frame counts at its outer header.
func (d *Decoder) gre(b []byte, avail int, p *Packet, depth int) {
	if depth >= maxDepth || len(b) < 4 {
		return
	}
	flags := binary.BigEndian.Uint16(b[0:2])
	if flags&7 != 0 { // version 1 (PPTP) carries PPP: not decapsulated
		return
	}
	pt := binary.BigEndian.Uint16(b[2:4])
	hl := 4
	var key uint32
	if flags&0x8000 != 0 {
		hl += 4
	}
	if flags&0x2000 != 0 {
		if len(b) >= hl+4 {
			key = binary.BigEndian.Uint32(b[hl : hl+4])
		}
		hl += 4
	}
	seq := flags&0x1000 != 0
	if seq {
		hl += 4
	}
	if len(b) < hl {
		inner, tunnel := -1, uint8(TunnelGRE)
		switch pt {
		case 0x0800, 0x86dd:
			inner = avail - hl
		case 0x6558:
			inner = avail - hl - 14
		case 0x88be:
			inner, tunnel = avail-hl-14, TunnelERSPAN
			if seq {
				inner -= 8
			}
		}
		if p.tunnelCut(b, avail, inner) {
			p.Tunnel, p.TunnelID = tunnel, key
		}
		return
	}
	body := b[hl:]
	avail -= hl
	tunnel, id := uint8(TunnelGRE), key
	var ok bool
	switch pt {
	case 0x0800:
		ok = d.inner(body, p, depth, 4, avail)
	case 0x86dd:
		ok = d.inner(body, p, depth, 6, avail)
	case 0x6558:
		ok = d.ether(body, p, depth+1, false, avail)
	case 0x88be: // ERSPAN type II (sequence bit set) or type I (no header)
		tunnel = TunnelERSPAN
		if seq {
			if len(body) < 8 {
				if p.tunnelCut(body, avail, avail-8-14) {
					p.Tunnel = TunnelERSPAN
				}
				return
			}
			id = uint32(binary.BigEndian.Uint16(body[2:4]) & 0x03ff)
			body = body[8:]
			avail -= 8
		}
		ok = d.ether(body, p, depth+1, false, avail)
	case 0x22eb: // ERSPAN type III
		tunnel = TunnelERSPAN
		if len(body) < 12 {
			return // the O flag (byte 11) tells whether 8 more header bytes follow
		}
		id = uint32(binary.BigEndian.Uint16(body[2:4]) & 0x03ff)
		o := body[11]&1 != 0
		body = body[12:]
		avail -= 12
		if o {
			if len(body) < 8 {
				if p.tunnelCut(body, avail, avail-8-14) {
					p.Tunnel, p.TunnelID = TunnelERSPAN, id
				}
				return
			}
			body = body[8:]
			avail -= 8
		}
		ok = d.ether(body, p, depth+1, false, avail)
	}
	if ok {
		p.Tunnel = tunnel
		p.TunnelID = id
	}
}
