package rules

import (
	"bufio"
	"bytes"
	"net/netip"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"netwatch/testkit"
)

// icmpPacket is one ICMP packet as tshark dissects it (outer header: the
// header quoted in an ICMP error is not used).
type icmpPacket struct {
	ts       int64
	src, dst netip.Addr
	proto    uint32
	typ      uint32
}

// tsharkICMP returns the ICMP and ICMPv6 packets of a capture, in capture
// order, from tshark's fields (independent of the agent's decoder).
func tsharkICMP(t testing.TB, path string) []icmpPacket {
	t.Helper()
	out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", path, "-n", "-Y", "icmp || icmpv6", "-T", "fields",
		"-E", "separator=\t", "-E", "occurrence=f", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst",
		"-e", "ipv6.src", "-e", "ipv6.dst", "-e", "icmp.type", "-e", "icmpv6.type").Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	var pkts []icmpPacket
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		ts, err := strconv.ParseFloat(c[0], 64)
		if err != nil {
			t.Fatalf("tshark time %q", c[0])
		}
		p := icmpPacket{ts: int64(ts * 1e9), proto: 1}
		sa, da, ty := c[1], c[2], c[5]
		if c[6] != "" {
			p.proto, ty = 58, c[6]
		}
		if sa == "" {
			sa, da = c[3], c[4]
		}
		p.src, _ = netip.ParseAddr(sa)
		p.dst, _ = netip.ParseAddr(da)
		typ, _ := strconv.Atoi(ty)
		p.typ = uint32(typ)
		pkts = append(pkts, p)
	}
	return pkts
}

// TestICMPFloodLive: icmp_flood from packet summaries. The lab hping3 ICMP
// flood (24,744 packets: 12,372 echo requests from 10.99.1.10 to
// 10.99.1.20 and as many replies back, tshark) is one ICMP flow: its
// record reaches the detector only at the enricher's timeouts. Counted per
// packet, the alert names the victim (never the flooder, which receives the
// replies), with the time of the packet tshark finds bringing the
// requests to 10.99.1.20 in one aligned 10 s window to the threshold (no
// delay in packet time), and one alert id for the window, updated at each
// doubling. The flow record arriving afterwards adds no second alert.
// Benign captures with ICMP and ICMPv6 (pings, neighbour discovery,
// errors, tunnelled pings) raise nothing.
func TestICMPFloodLive(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	d := DefaultConfig()
	path := filepath.Join(pcaps, "lab/lab-hping3-icmp-flood.pcap")
	cross := crossingT(t, path, "ip.dst == 10.99.1.20 && icmp.type == 8", d.ICMPFloodPkts, int64(d.FloodWindow))
	e := New(d)
	var ids = map[string]int{}
	var first int64
	for _, p := range tsharkICMP(t, path) {
		if a := e.ObserveICMPPacket("lab", p.src, p.dst, p.proto, p.typ, p.ts); a != nil {
			if a.GetRespAddr() != "10.99.1.20" || a.GetCategory() != "icmp_flood" || a.GetOrigAddr() != "10.99.1.10" {
				t.Fatalf("alert %s orig=%q resp=%q: want icmp_flood from 10.99.1.10 to 10.99.1.20", a.GetCategory(), a.GetOrigAddr(), a.GetRespAddr())
			}
			if len(ids) == 0 {
				first = a.GetTimeNs()
			}
			ids[a.GetId()]++
			t.Logf("%s u%d at %d: %s", a.GetId(), UpdateOf(a), a.GetTimeNs(), a.GetSummary())
		}
	}
	if first != cross {
		t.Fatalf("first alert at %d, threshold crossed at %d (tshark): delay %d ns", first, cross, first-cross)
	}
	// Windows (tshark): the requests of the 3 s flood fall in one aligned
	// 10 s window, so one id.
	if len(ids) != 1 {
		t.Fatalf("alert ids %v, want 1", ids)
	}
	for _, f := range tsharkFlows(t, path) {
		for _, a := range e.Observe("lab", f) {
			if a.GetCategory() == "icmp_flood" && UpdateOf(a) == 0 {
				t.Fatalf("flow record fired a new icmp_flood alert %s after the live one", a.GetId())
			}
		}
	}
	for _, file := range []string{"eth-ipv4-icmp-echo-5-pings.pcap", "linux-sll2-icmp-icmpv6-arp.pcap", "tunnel-gre-icmp-ping.pcap",
		"tunnel-6in4-ping6.pcap", "lab/lab-benign-mixed.pcap", "lab/lab-nmap-udp-scan.pcap", "eth-ipv4-dns-http-browsing-wikipedia.pcap"} {
		e := New(d)
		pkts := tsharkICMP(t, filepath.Join(pcaps, file))
		for _, p := range pkts {
			if a := e.ObserveICMPPacket("b", p.src, p.dst, p.proto, p.typ, p.ts); a != nil {
				t.Fatalf("%s: %s %s", file, a.GetCategory(), a.GetSummary())
			}
		}
		t.Logf("%s: %d ICMP packets, no alert", file, len(pkts))
	}
}

// crossingT is crossing for tests: the packet time (Unix ns) of the packet
// matching filter that brings one aligned window's count to threshold.
func crossingT(t testing.TB, path, filter string, threshold int, window int64) int64 {
	out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", path, "-n", "-Y", filter, "-T", "fields", "-e", "frame.time_epoch").Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	count := map[int64]int{}
	for _, l := range strings.Fields(string(out)) {
		ts, err := strconv.ParseFloat(l, 64)
		if err != nil {
			t.Fatalf("tshark time %q", l)
		}
		ns := int64(ts * 1e9)
		count[ns-ns%window]++
		if count[ns-ns%window] == threshold {
			return ns
		}
	}
	t.Fatalf("%s: no window reaches %d", path, threshold)
	return 0
}
