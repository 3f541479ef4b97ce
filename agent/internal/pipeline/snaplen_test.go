package pipeline

import (
	"net/netip"
	"os/exec"
	"path/filepath"
	"testing"

	"netwatch/agent/internal/decode"
	"netwatch/testkit"
)

// The crafted captures of testdata/gen-snaplen-cases.py, whose docstring
// counts every frame by hand (tshark agrees on each length field).
var (
	vlanIPv6 = filepath.Join("..", "..", "testdata", "snaplen54-vlan-ipv6.pcap")
	sll2IPv6 = filepath.Join("..", "..", "testdata", "snaplen54-sll2-ipv6.pcap")
	tsoCut   = filepath.Join("..", "..", "testdata", "tso-snaplen.pcap")
	cut20    = filepath.Join("..", "..", "testdata", "snaplen20-ipv6.pcap")
)

type flowPkt struct {
	src, dst         netip.Addr
	sport, dport     uint16
	ipBytes, payload uint32
}

func emitted(t *testing.T, file string) ([]flowPkt, *Stats) {
	t.Helper()
	var out []flowPkt
	st, err := ReadFile(file, func(p *decode.Packet) {
		s, _ := netip.AddrFromSlice(p.Src[:p.AddrLen])
		d, _ := netip.AddrFromSlice(p.Dst[:p.AddrLen])
		out = append(out, flowPkt{s, d, p.SrcPort, p.DstPort, p.IPBytes, p.PayloadBytes})
	})
	if err != nil {
		t.Fatal(err)
	}
	return out, st
}

// TestSnaplenCutIPHeader: with snaplen 54 behind an 802.1Q (18-byte) or
// SLL2 (20-byte) link header, an IPv6 header is cut before its destination
// address: the frame still counts as an IP frame with the IP bytes of its
// payload length, as truncated (truncated_ipv6_header), not malformed; an
// IPv6 header captured whole (Ethernet) and an IPv4 header cut inside its
// options keep their addresses and go into a flow; a 30-byte "IPv6 header"
// in a frame that was not cut stays malformed.
func TestSnaplenCutIPHeader(t *testing.T) {
	pk, st := emitted(t, vlanIPv6)
	want := []flowPkt{
		{netip.MustParseAddr("2001:db8::3"), netip.MustParseAddr("2001:db8::4"), 0, 0, 70, 10},
		{netip.MustParseAddr("192.0.2.1"), netip.MustParseAddr("192.0.2.2"), 0, 0, 60, 0},
	}
	if len(pk) != len(want) || pk[0] != want[0] || pk[1] != want[1] {
		t.Errorf("802.1Q file: flow packets %+v, want %+v", pk, want)
	}
	// hand count: IP frames 1-4, 60+148+70+60 IP bytes, 1 and 2 truncated, 5 malformed
	if st.Received.Load() != 5 || st.IPPackets.Load() != 4 || st.IPBytes.Load() != 338 || st.Truncated.Load() != 2 ||
		st.Malformed.Load() != 1 {
		t.Errorf("802.1Q file: received %d, IP %d (%d bytes), truncated %d, malformed %d; want 5, 4 (338), 2, 1",
			st.Received.Load(), st.IPPackets.Load(), st.IPBytes.Load(), st.Truncated.Load(), st.Malformed.Load())
	}
	r, err := Summarize(vlanIPv6, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.IPPackets != 4 || r.IPBytes != 338 || r.Malformed != 1 || r.Truncated[decode.ReasonTruncatedIPv6] != 1+1 ||
		r.Undecodable[decode.ReasonShortIPv6] != 1 || r.Network["ipv6"].Packets != 4 || r.Network["ipv4"].Packets != 1 ||
		r.Transport["tcp"].Packets != 3 || r.Transport["tcp"].Bytes != 190 || r.Transport["udp"].Bytes != 148 {
		t.Errorf("802.1Q file summary: IP %d (%d bytes), malformed %d %v, truncated %v, network %+v %+v, tcp %+v, udp %+v",
			r.IPPackets, r.IPBytes, r.Malformed, r.Undecodable, r.Truncated, *r.Network["ipv6"], *r.Network["ipv4"],
			*r.Transport["tcp"], *r.Transport["udp"])
	}

	pk, st = emitted(t, sll2IPv6)
	want = []flowPkt{{netip.MustParseAddr("10.0.0.53"), netip.MustParseAddr("10.0.0.9"), 53, 40000, 38, 10}}
	if len(pk) != 1 || pk[0] != want[0] {
		t.Errorf("SLL2 file: flow packets %+v, want %+v", pk, want)
	}
	if st.IPPackets.Load() != 2 || st.IPBytes.Load() != 56+38 || st.Truncated.Load() != 1 || st.Malformed.Load() != 0 {
		t.Errorf("SLL2 file: IP %d (%d bytes), truncated %d, malformed %d; want 2 (94), 1, 0",
			st.IPPackets.Load(), st.IPBytes.Load(), st.Truncated.Load(), st.Malformed.Load())
	}
	r, err = Summarize(sll2IPv6, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Transport["icmpv6"].Packets != 1 || r.Transport["icmpv6"].Bytes != 56 || r.Truncated[decode.ReasonTruncatedIPv6] != 1 {
		t.Errorf("SLL2 file summary: icmpv6 %+v, truncated %v", *r.Transport["icmpv6"], r.Truncated)
	}
}

// TestSnaplenCutIPv6AfterLength: an IPv6 header cut after its payload
// length field (Ethernet with snaplen 20 keeps 6 bytes of it) is an IP frame
// counted from that field, truncated like an IPv4 header cut after its total
// length; cut inside the field it stays malformed (hand count in
// testdata/gen-snaplen-cases.py; before, 6 bytes were short_ipv6_header).
func TestSnaplenCutIPv6AfterLength(t *testing.T) {
	pk, st := emitted(t, cut20)
	if len(pk) != 0 || st.Received.Load() != 3 || st.IPPackets.Load() != 2 || st.IPBytes.Load() != 2*148 ||
		st.Truncated.Load() != 2 || st.Malformed.Load() != 1 {
		t.Errorf("flow packets %d, received %d, IP %d (%d bytes), truncated %d, malformed %d; want 0, 3, 2 (296), 2, 1",
			len(pk), st.Received.Load(), st.IPPackets.Load(), st.IPBytes.Load(), st.Truncated.Load(), st.Malformed.Load())
	}
	r, err := Summarize(cut20, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.IPPackets != 2 || r.IPBytes != 296 || r.Truncated[decode.ReasonTruncatedIPv6] != 2 ||
		r.Undecodable[decode.ReasonShortIPv6] != 1 || r.Malformed != 1 || r.Network["ipv6"].Packets != 3 ||
		r.Transport["other"].Packets != 1 || r.Transport["other"].Bytes != 148 ||
		r.Transport["udp"].Packets != 1 || r.Transport["udp"].Bytes != 148 {
		t.Errorf("summary: IP %d (%d bytes), truncated %v, undecodable %v, network ipv6 %+v, other %+v, udp %+v",
			r.IPPackets, r.IPBytes, r.Truncated, r.Undecodable, *r.Network["ipv6"], *r.Transport["other"], *r.Transport["udp"])
	}
}

// TestSnaplen54LinkHeaders: real SLL2 and 802.1Q captures cut to 54 bytes
// by editcap count the IP frames and IP bytes tshark counts in the whole
// captures (every IP frame counted, none lost as malformed).
func TestSnaplen54LinkHeaders(t *testing.T) {
	editcap := testkit.Tool(t, "editcap")
	for _, name := range []string{"linux-sll2-icmp-icmpv6-arp.pcap", "vlan-8021q-http-get.pcap", "vlan-qinq-double-8021q-http-get.pcap"} {
		full := filepath.Join(testkit.Pcaps(t), name)
		cut := filepath.Join(t.TempDir(), name)
		if out, err := exec.Command(editcap, "-s", "54", full, cut).CombinedOutput(); err != nil {
			t.Fatalf("editcap: %v %s", err, out)
		}
		wantPkts, wantBytes := tsharkTotals(t, full)
		_, st := emitted(t, cut)
		if st.IPPackets.Load() != wantPkts || st.IPBytes.Load() != wantBytes || st.Malformed.Load() != 0 {
			t.Errorf("%s cut at 54: %d IP frames, %d IP bytes, %d malformed; tshark on the whole capture %d, %d",
				name, st.IPPackets.Load(), st.IPBytes.Load(), st.Malformed.Load(), wantPkts, wantBytes)
		}
	}
}

// TestTSOWireLength: an IPv4 segment with total length 0 (TSO) and 3000
// payload bytes, 3054 bytes on the wire, counts 3054 - 14 = 3040 IP bytes
// whether it was captured whole or cut at 54 or 96 bytes (tshark says
// ip.len 3040 for all three), and keeps its ports.
func TestTSOWireLength(t *testing.T) {
	pk, st := emitted(t, tsoCut)
	if len(pk) != 3 || st.IPBytes.Load() != 3*3040 {
		t.Fatalf("%d packets, %d IP bytes; want 3, %d", len(pk), st.IPBytes.Load(), 3*3040)
	}
	for i, p := range pk {
		if p.ipBytes != 3040 || p.payload != 3000 || p.sport != 40000 || p.dport != 80 {
			t.Errorf("frame %d: %+v, want 3040 IP bytes, 3000 payload, 40000 -> 80", i+1, p)
		}
	}
	r, err := Summarize(tsoCut, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.IPBytes != 3*3040 || r.Transport["tcp"].Bytes != 3*3040 {
		t.Errorf("summary: %d IP bytes, tcp %+v", r.IPBytes, *r.Transport["tcp"])
	}
}
