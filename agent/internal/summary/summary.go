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
	File         string                `json:"file"`
	SkippedFiles []string              `json:"skipped_files,omitempty"` // files of a directory skipped as not captures
	Error        string                `json:"error,omitempty"`
	ErrorFile    string                `json:"error_file,omitempty"`   // the file of a read error (File may be a directory)
	ErrorPacket  uint64                `json:"error_packet,omitempty"` // 1-based record number of a read error
	ErrorOffset  int64                 `json:"error_offset,omitempty"` // byte offset of that record
	Packets      uint64                `json:"packets"`
	IPPackets    uint64                `json:"ip_packets"`
	IPBytes      uint64                `json:"ip_bytes"`
	NonIP        uint64                `json:"non_ip"`
	Malformed    uint64                `json:"malformed"`
	LinkTypes    map[string]*LinkCount `json:"link_types"`
	Network      map[string]*Count     `json:"network"`
	Transport    map[string]*Count     `json:"transport"`
	Applications map[string]*Count     `json:"applications"`
	Tunnels      map[string]uint64     `json:"tunnels"`
	Undecodable  map[string]uint64     `json:"undecodable"`
	FirstPacket  string                `json:"first_packet,omitempty"` // RFC 3339, UTC
	LastPacket   string                `json:"last_packet,omitempty"`
	DurationS    float64               `json:"duration_s"`

	first, last int64
}

// New returns an empty report of file.
func New(file string) *Report {
	r := &Report{File: file, LinkTypes: map[string]*LinkCount{}, Network: map[string]*Count{},
		Transport: map[string]*Count{}, Applications: map[string]*Count{}, Tunnels: map[string]uint64{},
		Undecodable: map[string]uint64{}}
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
// are counted in Undecodable by reason (the frame stays counted as IP).
func (r *Report) Add(link layers.LinkType, wireLen int, p *decode.Packet, l7 *decode.L7) {
	r.Packets++
	if r.first == 0 || p.TsNs < r.first {
		r.first = p.TsNs
	}
	if p.TsNs > r.last {
		r.last = p.TsNs
	}
	lc := r.LinkTypes[link.String()]
	if lc == nil {
		lc = &LinkCount{}
		r.LinkTypes[link.String()] = lc
	}
	lc.Packets++
	n := r.Network[p.Network.String()]
	n.Packets++
	n.Bytes += uint64(wireLen)
	switch p.Kind {
	case decode.KindNonIP:
		r.NonIP++
		return
	case decode.KindMalformed:
		r.Malformed++
		r.Undecodable[p.Reason]++
		return
	}
	r.IPPackets++
	r.IPBytes += uint64(p.IPBytes)
	lc.IPBytes += uint64(p.IPBytes)
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
	if app == decode.AppDNS && p.Proto == 17 {
		// DNS over TCP is a stream: a segment need not start a message
		decode.ParseL7(p, l7)
		if l7.Undecodable != "" {
			r.Undecodable[l7.Undecodable]++
		}
	}
	if p.Tunnel != decode.TunnelNone && int(p.Tunnel) < len(tunnelNames) {
		r.Tunnels[tunnelNames[p.Tunnel]]++
	}
}

// Finish fills the time fields.
func (r *Report) Finish() {
	if r.Packets == 0 {
		return
	}
	r.FirstPacket = time.Unix(0, r.first).UTC().Format(time.RFC3339Nano)
	r.LastPacket = time.Unix(0, r.last).UTC().Format(time.RFC3339Nano)
	r.DurationS = float64(r.last-r.first) / 1e9
}
