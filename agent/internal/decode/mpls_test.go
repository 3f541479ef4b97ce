package decode

import (
	"fmt"
	"net/netip"
	"testing"

	"github.com/gopacket/gopacket/layers"
)

// TestMPLSAndPPPoE: IPv4/UDP and IPv6/UDP behind an MPLS label stack (two
// labels, RFC 3032) and inside a PPPoE session (RFC 2516, PPP 0x0021 and
// 0x0057), in a pcap written here: addresses, ports and IP length equal
// what tshark decodes; an MPLS payload that is not IP and a PPP control
// frame are non-IP, not malformed.
func TestMPLSAndPPPoE(t *testing.T) {
	ip4 := v4(17, 7, 0, 20+8+4, cat(udpHdr(1111, 53, 4), []byte("abcd")))
	ip6 := cat([]byte{0x60, 0, 0, 0, 0, 12, 17, 64},
		[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1},
		[]byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 2}, udpHdr(2222, 443, 4), []byte("efgh"))
	labels := []byte{0x00, 0x06, 0x40, 64, 0x00, 0x0c, 0x81, 64} // label 100, then label 200 bottom of stack
	pppoe := func(proto uint16, payload []byte) []byte {
		n := 2 + len(payload)
		return cat([]byte{0x11, 0, 0, 1, byte(n >> 8), byte(n), byte(proto >> 8), byte(proto)}, payload)
	}
	frames := [][]byte{
		cat(ethHdr(0x8847), labels, ip4),
		cat(ethHdr(0x8847), labels, ip6),
		cat(ethHdr(0x8864), pppoe(0x0021, ip4)),
		cat(ethHdr(0x8864), pppoe(0x0057, ip6)),
		cat(ethHdr(0x8847), []byte{0x00, 0x06, 0x41, 64}, []byte{0, 0, 0, 0}, make([]byte, 20)), // control word: not IP
		cat(ethHdr(0x8864), pppoe(0xc021, make([]byte, 10))),                                    // LCP
	}
	file := writePcap(t, "mpls-pppoe.pcap", frames...)
	rows := tsharkRowsFile(t, file, "ip or ipv6", "frame.number", "ip.src", "ipv6.src", "ip.dst", "ipv6.dst",
		"udp.srcport", "udp.dstport", "ip.len", "ipv6.plen")
	if len(rows) != 4 {
		t.Fatalf("tshark decodes %d IP frames, want 4", len(rows))
	}
	d, _ := New(layers.LinkTypeEthernet)
	for i, fr := range frames {
		var p Packet
		kind := d.Decode(fr, &p)
		r, ip := rows[i+1]
		if !ip {
			if kind != KindNonIP {
				t.Errorf("frame %d: kind %v, want non-IP (tshark: no IP)", i+1, kind)
			}
			continue
		}
		src, dst, ipLen := r[1]+r[2], r[3]+r[4], r[7]
		if r[8] != "" {
			var plen int
			fmt.Sscan(r[8], &plen)
			ipLen = fmt.Sprint(plen + 40)
		}
		got := []string{addr(p.Src[:p.AddrLen]), addr(p.Dst[:p.AddrLen]), fmt.Sprint(p.SrcPort), fmt.Sprint(p.DstPort),
			fmt.Sprint(p.IPBytes)}
		want := []string{src, dst, r[5], r[6], ipLen}
		if kind != KindIP || fmt.Sprint(got) != fmt.Sprint(want) {
			t.Errorf("frame %d: kind %v %v, tshark %v", i+1, kind, got, want)
		}
	}
}

// addr is the text form of a 4- or 16-byte address, as tshark prints it.
func addr(b []byte) string {
	a, ok := netip.AddrFromSlice(b)
	if !ok {
		return fmt.Sprintf("%x", b)
	}
	return a.String()
}
