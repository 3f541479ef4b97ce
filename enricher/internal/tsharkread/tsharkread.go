// Package tsharkread turns a capture into packet summaries with tshark's
// field output, for tests: an independent decoder to feed the flow table
// and to count per-5-tuple totals against (test code only; the enricher
// never reads captures).
package tsharkread

import (
	"bufio"
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strconv"
	"strings"

	"netwatch/schema/pb"
)

// fields are read per frame, first occurrence (outer header).
var fields = []string{"frame.time_epoch", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst", "ip.proto", "ip.len", "ipv6.plen",
	"tcp.srcport", "tcp.dstport", "tcp.flags", "tcp.len", "tcp.window_size_value", "udp.srcport", "udp.dstport", "udp.length",
	"icmp.type", "icmp.code", "icmpv6.type", "icmpv6.code", "dns.flags.response", "vlan.id"}

// Summaries runs tshark (the binary at path tshark) on file and returns one
// summary per IP frame, outermost IP header (first occurrence of each
// field): times in Unix ns, ip_bytes from the IPv4 total length or the IPv6
// payload length + 40, TCP/UDP ports and payload, TCP flags and window,
// ICMP type/code, DNS response flag, VLAN. Frames without IP are left out.
func Summaries(tshark, file string) ([]*pb.PacketSummary, error) {
	args := []string{"-n", "-r", file, "-T", "fields", "-E", "separator=|", "-E", "occurrence=f"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command(tshark, args...).Output()
	if err != nil {
		return nil, fmt.Errorf("tshark %s: %w", file, err)
	}
	var ps []*pb.PacketSummary
	sc := bufio.NewScanner(bytes.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		v := strings.Split(sc.Text(), "|")
		if len(v) != len(fields) {
			continue
		}
		u := func(i int) uint32 {
			x, _ := strconv.ParseUint(strings.TrimPrefix(v[i], "0x"), map[bool]int{true: 16, false: 10}[strings.HasPrefix(v[i], "0x")], 32)
			return uint32(x)
		}
		p := &pb.PacketSummary{TsNs: epochNs(v[0])}
		switch {
		case v[1] != "":
			p.SrcAddr, p.DstAddr, p.Proto, p.IpBytes = addr(v[1]), addr(v[2]), u(5), u(6)
		case v[3] != "":
			p.SrcAddr, p.DstAddr, p.IpBytes = addr(v[3]), addr(v[4]), u(7)+40
		default:
			continue // no IP: counted per sensor, not in flows
		}
		switch {
		case v[8] != "":
			p.Proto, p.SrcPort, p.DstPort, p.TcpFlags, p.PayloadBytes, p.TcpWindow = 6, u(8), u(9), u(10), u(11), u(12)
		case v[13] != "":
			p.Proto, p.SrcPort, p.DstPort = 17, u(13), u(14)
			if l := u(15); l >= 8 {
				p.PayloadBytes = l - 8
			}
		case v[16] != "":
			p.Proto, p.IcmpType, p.IcmpCode = 1, u(16), u(17)
		case v[18] != "":
			p.Proto, p.IcmpType, p.IcmpCode = 58, u(18), u(19)
		}
		p.DnsResponse = v[20] == "1" || v[20] == "True"
		p.Vlan = u(21)
		ps = append(ps, p)
	}
	return ps, sc.Err()
}

func addr(s string) []byte {
	a, err := netip.ParseAddr(s)
	if err != nil {
		return nil
	}
	return a.AsSlice()
}

// epochNs parses tshark's "seconds.fraction" without float rounding.
func epochNs(s string) int64 {
	sec, frac, _ := strings.Cut(s, ".")
	n, _ := strconv.ParseInt(sec, 10, 64)
	frac = (frac + "000000000")[:9]
	f, _ := strconv.ParseInt(frac, 10, 64)
	return n*1e9 + f
}
