// Package summary is the agent's broker-free path (capture → decode →
// summary): it tallies a capture file into the one JSON object that
// `agent -summary` prints.
package summary

import (
	"time"

	"github.com/gopacket/gopacket/layers"

	"netwatch/agent/internal/decode"
)

// Count is a number of packets and their bytes.
type Count struct {
	Packets uint64 `json:"packets"`
	Bytes   uint64 `json:"bytes"`
}

// LinkCount is a number of frames of one link type and the IP bytes they carry.
type LinkCount struct {
	Packets uint64 `json:"packets"`
	IPBytes uint64 `json:"ip_bytes"`
}

// Report is the JSON object of `agent -summary`.
//
// Network counts every frame once by its outermost network header, Bytes
// being the frame's original (wire) length. Transport and Applications count
// IP frames by their innermost IP header, Bytes being IP bytes (DESIGN.md
// "Accounting").
type Report struct {
	File         string   `json:"file"`
	SkippedFiles []string `json:"skipped_files,omitempty"` // files of a directory skipped as not captures
	Error        string   `json:"error,omitempty"`
	ErrorFile    string   `json:"error_file,omitempty"`   // the file of a read error (File may be a directory)
	ErrorPacket  uint64   `json:"error_packet,omitempty"` // 1-based record number of a read error
	ErrorOffset  int64    `json:"error_offset,omitempty"` // byte offset of that record
	Interrupted  bool     `json:"interrupted,omitempty"`  // stopped by SIGINT/SIGTERM: counts cover the frames read until then
	Packets      uint64   `json:"packets"`
	IPPackets    uint64   `json:"ip_packets"`
	IPBytes      uint64   `json:"ip_bytes"`
	NonIP        uint64   `json:"non_ip"`
	Malformed    uint64   `json:"malformed"`
	// LinkTypes is keyed by decode.LinkName: capinfos' names ("Ethernet",
	// "Linux cooked-mode capture v1", "Raw IPv4", "link type N", ...).
	LinkTypes    map[string]*LinkCount `json:"link_types"`
	Network      map[string]*Count     `json:"network"`
	Transport    map[string]*Count     `json:"transport"`
	Applications map[string]*Count     `json:"applications"`
	Tunnels      map[string]uint64     `json:"tunnels"`
	Undecodable  map[string]uint64     `json:"undecodable"`
	// Truncated counts, by reason, the IP frames the snaplen cut inside
	// their (innermost) IP header before both addresses, or inside a
	// tunnel's inner frame before its IP length field (truncated_tunnel;
	// decode.KindTruncated): they are in IPPackets, IPBytes, Transport (by
	// the next header field, "other" when it was cut) and Tunnels, not in
	// Applications, and cannot be put in a flow.
	Truncated    map[string]uint64 `json:"truncated"`
	ARP          ARPCount          `json:"arp"`
	ClientHellos HelloCount        `json:"client_hellos"`
	FirstPacket  string            `json:"first_packet,omitempty"` // RFC 3339, UTC
	LastPacket   string            `json:"last_packet,omitempty"`
	DurationS    float64           `json:"duration_s"`

	first, last int64
	timed       bool            // first and last hold a packet's time
	untimed     bool            // the frame being added has no timestamp (AddUntimed)
	link        layers.LinkType // the link type named last, and its name
	linkNameS   string
	bindings    map[[10]byte]bool   // sender IPv4 + MAC pairs seen
	ipMAC       map[[4]byte][6]byte // the first MAC seen for each sender IP
	conflicts   map[[4]byte]bool    // sender IPs seen with more than one MAC
}

// ARPCount counts the ARP and RARP frames summarized (Ethernet hardware and
// IPv4 protocol addresses, RFC 826 / RFC 903), which network.arp counts
// among all frames of EtherType 0x0806/0x8035.
type ARPCount struct {
	Frames     uint64 `json:"frames"`     // summarized ARP/RARP frames
	Requests   uint64 `json:"requests"`   // op 1
	Replies    uint64 `json:"replies"`    // op 2
	RARP       uint64 `json:"rarp"`       // op 3 and 4 (RFC 903)
	Gratuitous uint64 `json:"gratuitous"` // sender IP == target IP (announcements, RFC 5227)
	// Bindings is the number of distinct (sender IP, sender MAC) pairs,
	// sender IP 0.0.0.0 (RFC 5227 probes) left out.
	Bindings uint64 `json:"bindings"`
	// IPsWithSeveralMACs counts sender IPs bound to more than one MAC (a
	// sign of ARP spoofing, or of a failover).
	IPsWithSeveralMACs uint64 `json:"ips_with_several_macs"`
}

// HelloCount counts the packets that carry a TLS ClientHello at the start
// of a TCP payload or in a decrypted QUIC client Initial; a whole one that
// does not parse is counted in Undecodable as tls_bad_client_hello
// instead. A partial one continues past its packet (split over TCP
// segments or QUIC Initials, or cut by the snaplen): the agent reads SNI
// and ALPN from that part and publishes no JA3/JA4 for it. The packet that
// completes a partial ClientHello (the next in-order TCP segment, or a later
// client Initial of the QUIC connection) counts in TLS or QUIC: the whole
// hello is put together there, so one hello in two packets counts once in
// each.
type HelloCount struct {
	TLS         uint64 `json:"tls"`          // whole, with JA3 and JA4
	TLSPartial  uint64 `json:"tls_partial"`  // the first part only
	QUIC        uint64 `json:"quic"`         // whole, from QUIC Initials
	QUICPartial uint64 `json:"quic_partial"` // the first part only
}

// New returns an empty report of file.
func New(file string) *Report {
	r := &Report{File: file, LinkTypes: map[string]*LinkCount{}, Network: map[string]*Count{},
		Transport: map[string]*Count{}, Applications: map[string]*Count{}, Tunnels: map[string]uint64{},
		Undecodable: map[string]uint64{}, Truncated: map[string]uint64{}}
	for _, n := range []string{"ipv4", "ipv6", "arp", "other"} {
		r.Network[n] = &Count{}
	}
	for _, n := range []string{"tcp", "udp", "icmp", "icmpv6", "other"} {
		r.Transport[n] = &Count{}
	}
	return r
}

var tunnelNames = [...]string{decode.TunnelGRE: "gre", decode.TunnelERSPAN: "erspan",
	decode.TunnelVXLAN: "vxlan", decode.TunnelGeneve: "geneve", decode.TunnelIPIP: "ipip"}

// Add counts one frame of link type link and wire length wireLen, decoded
// into p; l7 is scratch space for parsing DNS, whose undecodable messages
// are counted in Undecodable by reason (the frame stays counted as IP), and
// TLS and QUIC ClientHellos. ARP frames are counted in ARP.
func (r *Report) Add(link layers.LinkType, wireLen int, p *decode.Packet, l7 *decode.L7) {
	r.Packets++
	if !r.untimed {
		if !r.timed || p.TsNs < r.first {
			r.first = p.TsNs
		}
		if !r.timed || p.TsNs > r.last {
			r.last = p.TsNs
		}
		r.timed = true
	}
	name := r.linkName(link)
	lc := r.LinkTypes[name]
	if lc == nil {
		lc = &LinkCount{}
		r.LinkTypes[name] = lc
	}
	lc.Packets++
	n := r.Network[p.Network.String()]
	n.Packets++
	n.Bytes += uint64(wireLen)
	switch p.Kind {
	case decode.KindNonIP:
		r.NonIP++
		if p.ARP.OK {
			r.addARP(&p.ARP)
		}
		return
	case decode.KindMalformed:
		r.Malformed++
		r.Undecodable[p.Reason]++
		return
	}
	r.IPPackets++
	r.IPBytes += uint64(p.IPBytes)
	lc.IPBytes += uint64(p.IPBytes)
	if p.Kind == decode.KindTruncated {
		r.Truncated[p.Reason]++
	}
	t := "other"
	switch p.Proto {
	case 6:
		t = "tcp"
	case 17:
		t = "udp"
	case 1:
		t = "icmp"
	case 58:
		t = "icmpv6"
	}
	r.Transport[t].Packets++
	r.Transport[t].Bytes += uint64(p.IPBytes)
	if p.Tunnel != decode.TunnelNone && int(p.Tunnel) < len(tunnelNames) {
		r.Tunnels[tunnelNames[p.Tunnel]]++ // also for an inner header the snaplen cut
	}
	if p.Kind == decode.KindTruncated {
		return
	}
	app := decode.App(p)
	if app == "" {
		app = "unknown"
	}
	a := r.Applications[app]
	if a == nil {
		a = &Count{}
		r.Applications[app] = a
	}
	a.Packets++
	a.Bytes += uint64(p.IPBytes)
	switch {
	case (app == decode.AppDNS || app == decode.AppMDNS || app == decode.AppLLMNR) && p.Proto == 17:
		// DNS over TCP is a stream: a segment need not start a message
		decode.ParseL7(p, l7)
		if l7.Undecodable != "" {
			r.Undecodable[l7.Undecodable]++
		}
	case app == decode.AppTLS || app == decode.AppQUIC,
		app == "unknown" && p.Proto == 6 && l7.TLSPending(): // maybe the next segment of a split ClientHello
		decode.ParseL7(p, l7)
		if l7.Undecodable != "" {
			r.Undecodable[l7.Undecodable]++ // a whole ClientHello that does not parse
		} else if l7.Hello {
			c := &r.ClientHellos
			switch {
			case l7.App == decode.AppTLS && l7.HelloPartial:
				c.TLSPartial++
			case l7.App == decode.AppTLS:
				c.TLS++
			case l7.HelloPartial:
				c.QUICPartial++
			default:
				c.QUIC++
			}
		}
	}
}

// linkName is decode.LinkName(l), kept for the last link type so that
// naming a frame's link type allocates nothing.
func (r *Report) linkName(l layers.LinkType) string {
	if r.linkNameS == "" || l != r.link {
		r.link, r.linkNameS = l, decode.LinkName(l)
	}
	return r.linkNameS
}

func (r *Report) addARP(a *decode.ARP) {
	c := &r.ARP
	c.Frames++
	switch a.Op {
	case decode.ARPRequest:
		c.Requests++
	case decode.ARPReply:
		c.Replies++
	case decode.RARPRequest, decode.RARPReply:
		c.RARP++
	}
	if a.Gratuitous() {
		c.Gratuitous++
	}
	if a.SenderIP == [4]byte{} {
		return
	}
	var k [10]byte
	copy(k[:4], a.SenderIP[:])
	copy(k[4:], a.SenderMAC[:])
	if r.bindings == nil {
		r.bindings, r.ipMAC, r.conflicts = map[[10]byte]bool{}, map[[4]byte][6]byte{}, map[[4]byte]bool{}
	}
	if r.bindings[k] {
		return
	}
	r.bindings[k] = true
	c.Bindings++
	if mac, ok := r.ipMAC[a.SenderIP]; !ok {
		r.ipMAC[a.SenderIP] = a.SenderMAC
	} else if mac != a.SenderMAC && !r.conflicts[a.SenderIP] {
		r.conflicts[a.SenderIP] = true
		c.IPsWithSeveralMACs++
	}
}

// AddUntimed is Add for a frame without a timestamp (a pcapng Simple Packet
// Block, pcapng spec section 4.4): counted like any frame, but its p.TsNs
// (the newest earlier frame's time) is not taken into first/last packet.
func (r *Report) AddUntimed(link layers.LinkType, wireLen int, p *decode.Packet, l7 *decode.L7) {
	r.untimed = true
	r.Add(link, wireLen, p, l7)
	r.untimed = false
}

// Finish fills the time fields from the frames that have a timestamp (none
// when no frame has one).
func (r *Report) Finish() {
	if !r.timed {
		return
	}
	r.FirstPacket = time.Unix(0, r.first).UTC().Format(time.RFC3339Nano)
	r.LastPacket = time.Unix(0, r.last).UTC().Format(time.RFC3339Nano)
	r.DurationS = float64(r.last-r.first) / 1e9
}
