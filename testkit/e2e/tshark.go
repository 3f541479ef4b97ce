// Package e2e is the end-to-end acceptance test of netwatch: it runs the real
// pipeline (agent → JetStream → enricher → detector/sink → PostgreSQL → api)
// over every shared capture and compares the stored flows with what tshark,
// an independent tool, reports under DESIGN.md's accounting rules.
//
// This file computes the expected values from tshark alone; nothing here
// looks at netwatch's output.
package e2e

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Tuple is a directional 5-tuple: the innermost IP header's addresses, the
// transport ports (0 for ICMP and protocols without ports) and the IP
// protocol number (upper-layer protocol after any IPv6 extension headers).
type Tuple struct {
	Src   netip.Addr
	SPort uint16
	Dst   netip.Addr
	DPort uint16
	Proto uint8
}

func (t Tuple) String() string {
	return fmt.Sprintf("%s %s:%d > %s", protoName(t.Proto), t.Src, t.SPort, netip.AddrPortFrom(t.Dst, t.DPort))
}

func protoName(p uint8) string {
	switch p {
	case 1:
		return "icmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 58:
		return "icmp6"
	}
	return "proto" + strconv.Itoa(int(p))
}

// Count is what one direction of a 5-tuple carried.
type Count struct {
	Pkts    uint64
	IPBytes uint64 // IPv4 total length or IPv6 payload length + 40, summed
}

// Expected is tshark's view of a capture under DESIGN.md's accounting.
type Expected struct {
	Flows   map[Tuple]Count
	Frames  int // every frame in the file
	IP      int // frames counted in a flow
	NonIP   int // frames with no usable IP header (ARP, STP, malformed)
	Skipped []string
}

// tsharkFields are the columns the parser reads, in order. ip.tso_support
// stays on (tshark's default): an IPv4 total length of 0 is what TCP
// segmentation offload leaves in locally captured packets, and issue 3 counts
// such a packet from its captured length, as tshark does (see usable).
var tsharkFields = []string{
	"frame.number", "frame.protocols", // 0 1
	"ip.src", "ip.dst", "ip.proto", "ip.len", "ip.id", "ip.frag_offset", "ip.flags.mf", "ip.hdr_len", // 2..9
	"ipv6.src", "ipv6.dst", "ipv6.nxt", "ipv6.plen", // 10..13
	"ipv6.hopopts.nxt", "ipv6.routing.nxt", "ipv6.dstopts.nxt", // 14..16
	"ipv6.fraghdr.nxt", "ipv6.fraghdr.ident", "ipv6.fraghdr.offset", "ipv6.fraghdr.more", // 17..20
	"tcp.srcport", "tcp.dstport", "udp.srcport", "udp.dstport", // 21..24
}

// layerOf says which frame.protocols layer each field belongs to, so that
// the k-th occurrence of the field is the k-th occurrence of the layer.
var layerOf = map[int]string{
	2: "ip", 3: "ip", 4: "ip", 5: "ip", 6: "ip", 7: "ip", 8: "ip", 9: "ip",
	10: "ipv6", 11: "ipv6", 12: "ipv6", 13: "ipv6",
	14: "ipv6.hopopts", 15: "ipv6.routing", 16: "ipv6.dstopts",
	17: "ipv6.fraghdr", 18: "ipv6.fraghdr", 19: "ipv6.fraghdr", 20: "ipv6.fraghdr",
	21: "tcp", 22: "tcp", 23: "udp", 24: "udp",
}

// portOverrides are frames whose transport header tshark does not dissect
// although DESIGN.md's rules count the frame; the ports were read by hand
// from the hex dump (`tshark -x`). Key: file base name, frame number.
var portOverrides = map[string]map[int][2]uint16{
	// Frame 1: IPv6 payload length 36 = a 24-byte Destination Options header
	// (its own length field is consistent) + an 8-byte UDP header + 4 bytes;
	// tshark stops at a malformed option *inside* the extension header
	// (type 0xca, length 144), but the UDP header 30000 > 13000 is intact
	// within the datagram.
	"ipv6-exthdr-destination-options-udp.pcap": {1: {30000, 13000}},
}

// truncatedChain are IPv6 frames whose extension header chain does not fit
// in the datagram: the fixed header is complete and valid, so the frame
// counts (DESIGN.md: every IP frame counts once), but the extension header
// that overruns the payload cannot be trusted, so the flow's protocol is the
// last next-header value that lies inside the datagram and there are no
// ports. tshark shows the overrunning header's next-header field instead.
// Read by hand from the hex dump; value: the protocol number to use.
var truncatedChain = map[string]map[int]uint8{
	// Frame 2: the Destination Options header claims 40 bytes but the IPv6
	// payload length is 36; the fixed header's next header is 60.
	"ipv6-exthdr-destination-options-udp.pcap": {2: 60},
}

// tunnelLayers may appear between an outer IP header and the inner one of
// a tunnel (DESIGN.md: IP-in-IP, 6in4, GRE, ERSPAN, VXLAN, Geneve).
var tunnelLayers = map[string]bool{
	"gre": true, "erspan": true, "vxlan": true, "geneve": true, "udp": true,
	"eth": true, "ethertype": true, "vlan": true,
	"ipv6.hopopts": true, "ipv6.routing": true, "ipv6.dstopts": true,
}

type frameRec struct {
	num       int
	t         Tuple
	bytes     uint64
	frag      bool // an IP fragment (first or not)
	firstFrag bool // offset 0
	fragKey   string
}

// Tshark runs tshark on file and returns the expected flows. Defragmentation
// is off, so every frame is one packet and a first fragment shows its ports.
func Tshark(ctx context.Context, tshark, file string) (*Expected, error) {
	args := []string{"-n", "-r", file, "-o", "ip.defragment:FALSE", "-o", "ipv6.defragment:FALSE",
		"-T", "fields", "-E", "occurrence=a", "-E", "separator=/t", "-E", "aggregator=,"}
	for _, f := range tsharkFields {
		args = append(args, "-e", f)
	}
	cmd := exec.CommandContext(ctx, tshark, args...)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("tshark %s: %w: %s", file, err, stderr.String())
	}
	return parseTshark(filepath.Base(file), out)
}

func parseTshark(base string, out []byte) (*Expected, error) {
	exp := &Expected{Flows: map[Tuple]Count{}}
	var recs []frameRec
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(make([]byte, 1<<20), 1<<24)
	for sc.Scan() {
		line := sc.Text()
		if line == "" {
			continue
		}
		exp.Frames++
		cols := strings.Split(line, "\t")
		for len(cols) < len(tsharkFields) {
			cols = append(cols, "")
		}
		rec, ok, err := parseFrame(base, cols)
		if err != nil {
			return nil, fmt.Errorf("%s frame %s: %w (line %q)", base, cols[0], err, line)
		}
		if !ok {
			exp.NonIP++
			continue
		}
		exp.IP++
		recs = append(recs, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	// Fragments take the ports of their datagram's first fragment, tied by
	// (src, dst, proto, id); without a first fragment they keep ports 0.
	first := map[string][2]uint16{}
	for _, r := range recs {
		if r.frag && r.firstFrag {
			first[r.fragKey] = [2]uint16{r.t.SPort, r.t.DPort}
		}
	}
	for _, r := range recs {
		if r.frag && !r.firstFrag {
			p := first[r.fragKey]
			r.t.SPort, r.t.DPort = p[0], p[1]
		}
		c := exp.Flows[r.t]
		c.Pkts++
		c.IPBytes += r.bytes
		exp.Flows[r.t] = c
	}
	return exp, nil
}

// parseFrame picks the frame's counting IP header (the innermost tunnelled
// one, never one quoted in an ICMP error) and returns its record; ok is
// false when the frame has no usable IP header.
func parseFrame(base string, cols []string) (frameRec, bool, error) {
	num, _ := strconv.Atoi(cols[0])
	layers := strings.Split(cols[1], ":")
	vals := make([][]string, len(cols))
	for i, c := range cols {
		if c != "" {
			vals[i] = strings.Split(c, ",")
		}
	}
	// occ[i] is the occurrence index of layers[i] among layers of its name.
	occ := make([]int, len(layers))
	seen := map[string]int{}
	for i, l := range layers {
		occ[i] = seen[l]
		seen[l]++
	}
	for fi, l := range layerOf {
		if len(vals[fi]) > seen[l] {
			return frameRec{}, false, fmt.Errorf("%d values of %s for %d %s layers", len(vals[fi]), tsharkFields[fi], seen[l], l)
		}
	}
	// get returns field fi of the layer at position i, "" when tshark gave
	// none (a dissection stops at the first exception, so missing values are
	// those of the last layers).
	get := func(fi, i int) string {
		if occ[i] < len(vals[fi]) {
			return vals[fi][occ[i]]
		}
		return ""
	}
	isIP := func(l string) bool { return l == "ip" || l == "ipv6" }

	cur := -1
	for i, l := range layers {
		if isIP(l) {
			cur = i
			break
		}
	}
	if cur < 0 {
		return frameRec{}, false, nil // ARP, STP, ...
	}
	// Follow tunnels inward.
	for {
		next := -1
		for j := cur + 1; j < len(layers); j++ {
			if isIP(layers[j]) {
				next = j
				break
			}
		}
		if next < 0 || !isTunnelPath(layers[cur+1:next]) {
			break
		}
		if !usable(cur, layers, get) {
			break
		}
		cur = next
	}
	if !usable(cur, layers, get) {
		return frameRec{}, false, nil
	}
	var r frameRec
	r.num = num
	after := cur + 1
	if layers[cur] == "ip" {
		src, _ := netip.ParseAddr(get(2, cur))
		dst, _ := netip.ParseAddr(get(3, cur))
		proto, _ := strconv.Atoi(get(4, cur))
		n, _ := strconv.Atoi(get(5, cur))
		off, _ := strconv.Atoi(get(7, cur))
		r.t = Tuple{Src: src, Dst: dst, Proto: uint8(proto)}
		r.bytes = uint64(n)
		r.frag = off != 0 || get(8, cur) == "1" || get(8, cur) == "True"
		r.firstFrag = off == 0
		r.fragKey = fmt.Sprintf("4|%s|%s|%d|%s", src, dst, proto, get(6, cur))
	} else {
		src, _ := netip.ParseAddr(get(10, cur))
		dst, _ := netip.ParseAddr(get(11, cur))
		nxt, _ := strconv.Atoi(get(12, cur))
		plen, _ := strconv.Atoi(get(13, cur))
		r.t = Tuple{Src: src, Dst: dst}
		r.bytes = uint64(plen) + 40
		// Walk the extension headers tshark dissected; the flow's protocol
		// is the last next-header value (the upper-layer protocol).
		for ; after < len(layers); after++ {
			fi := map[string]int{"ipv6.hopopts": 14, "ipv6.routing": 15, "ipv6.dstopts": 16, "ipv6.fraghdr": 17}[layers[after]]
			if fi == 0 {
				break
			}
			if v := get(fi, after); v != "" {
				nxt, _ = strconv.Atoi(v)
			}
			if layers[after] == "ipv6.fraghdr" {
				off, _ := strconv.Atoi(get(19, after))
				r.frag = true
				r.firstFrag = off == 0
				r.fragKey = fmt.Sprintf("6|%s|%s|%d|%s", src, dst, nxt, get(18, after))
			}
		}
		r.t.Proto = uint8(nxt)
		if p, ok := truncatedChain[base][num]; ok {
			r.t.Proto = p
			return r, true, nil
		}
	}
	if r.frag && !r.firstFrag {
		return r, true, nil // ports from the first fragment, later
	}
	if r.t.Proto != 6 && r.t.Proto != 17 {
		return r, true, nil // ICMP and others: ports 0
	}
	if after < len(layers) && (layers[after] == "tcp" || layers[after] == "udp") {
		fs, fd := 21, 22
		if layers[after] == "udp" {
			fs, fd = 23, 24
		}
		s, err1 := strconv.Atoi(get(fs, after))
		d, err2 := strconv.Atoi(get(fd, after))
		if err1 == nil && err2 == nil {
			r.t.SPort, r.t.DPort = uint16(s), uint16(d)
			return r, true, nil
		}
	}
	if p, ok := portOverrides[base][num]; ok {
		r.t.SPort, r.t.DPort = p[0], p[1]
		return r, true, nil
	}
	return r, false, fmt.Errorf("tshark shows no %s header after the counting IP header; read the frame by hand and add a rule to portOverrides", protoName(r.t.Proto))
}

// usable reports whether the IP header at layers[i] can be counted: tshark
// dissected its addresses and lengths. An IPv4 total length of 1 to the
// header length - 1 makes the header unusable, like a header cut short by
// the snaplen; 0 (TSO) arrives here as tshark's length from the captured
// bytes.
func usable(i int, layers []string, get func(fi, i int) string) bool {
	if layers[i] == "ip" {
		if get(2, i) == "" || get(3, i) == "" || get(4, i) == "" || get(5, i) == "" {
			return false
		}
		n, err1 := strconv.Atoi(get(5, i))
		h, err2 := strconv.Atoi(get(9, i))
		return err1 == nil && err2 == nil && h >= 20 && n >= h
	}
	return get(10, i) != "" && get(11, i) != "" && get(12, i) != "" && get(13, i) != ""
}

// isTunnelPath reports whether the layers between two IP headers are an
// encapsulation DESIGN.md counts as a tunnel: nothing (IP-in-IP, 6in4),
// GRE (optionally ERSPAN and Ethernet), or UDP with VXLAN or Geneve. ICMP
// between them means the inner header is quoted in an error message.
func isTunnelPath(mid []string) bool {
	hasUDP, hasEncap := false, false
	for _, l := range mid {
		if !tunnelLayers[l] {
			return false
		}
		switch l {
		case "udp":
			hasUDP = true
		case "vxlan", "geneve":
			hasEncap = true
		}
	}
	return !hasUDP || hasEncap
}

// Diff compares got with want and returns readable lines: missing tuples,
// extra tuples and wrong counts, at most max of them, sorted.
func Diff(want, got map[Tuple]Count, max int) []string {
	var lines []string
	for t, w := range want {
		g, ok := got[t]
		switch {
		case !ok:
			lines = append(lines, fmt.Sprintf("missing %s: want %d pkts %d bytes", t, w.Pkts, w.IPBytes))
		case g != w:
			lines = append(lines, fmt.Sprintf("wrong   %s: got %d pkts %d bytes, want %d pkts %d bytes", t, g.Pkts, g.IPBytes, w.Pkts, w.IPBytes))
		}
	}
	for t, g := range got {
		if _, ok := want[t]; !ok {
			lines = append(lines, fmt.Sprintf("extra   %s: got %d pkts %d bytes", t, g.Pkts, g.IPBytes))
		}
	}
	sort.Strings(lines)
	if len(lines) > max {
		n := len(lines)
		lines = append(lines[:max], fmt.Sprintf("... and %d more", n-max))
	}
	return lines
}

// Totals sums a flow map.
func Totals(m map[Tuple]Count) Count {
	var c Count
	for _, v := range m {
		c.Pkts += v.Pkts
		c.IPBytes += v.IPBytes
	}
	return c
}
