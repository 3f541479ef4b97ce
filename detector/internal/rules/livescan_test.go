package rules

import (
	"bufio"
	"bytes"
	"maps"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

// tsharkPackets returns the TCP, UDP, ICMP and ICMPv6 packets of a capture
// in capture order as packet summaries, from tshark's fields (independent
// of the agent's decoder): outer header (-E occurrence=f; an ICMP error is
// ICMP, not the UDP or TCP header it quotes), payload tcp.len or
// udp.length - 8, the TCP flags byte.
func tsharkPackets(t testing.TB, path string) []Packet {
	t.Helper()
	out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", path, "-n", "-Y", "tcp || udp || icmp || icmpv6", "-T", "fields",
		"-E", "separator=\t", "-E", "occurrence=f", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst",
		"-e", "ipv6.src", "-e", "ipv6.dst", "-e", "icmp.type", "-e", "icmpv6.type", "-e", "tcp.srcport", "-e", "tcp.dstport",
		"-e", "tcp.flags", "-e", "tcp.len", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "udp.length").Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	num := func(s string) uint32 {
		v, _ := strconv.ParseUint(s, 0, 32)
		return uint32(v)
	}
	var pkts []Packet
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		ts, err := strconv.ParseFloat(c[0], 64)
		if err != nil {
			t.Fatalf("tshark time %q", c[0])
		}
		p := Packet{TsNs: int64(ts * 1e9)}
		sa, da := c[1], c[2]
		if sa == "" {
			sa, da = c[3], c[4]
		}
		p.Src, _ = netip.ParseAddr(sa)
		p.Dst, _ = netip.ParseAddr(da)
		switch {
		case c[5] != "":
			p.Proto, p.ICMPType = 1, num(c[5])
		case c[6] != "":
			p.Proto, p.ICMPType = 58, num(c[6])
		case c[7] != "":
			p.Proto, p.SrcPort, p.DstPort, p.TCPFlags, p.Payload = 6, num(c[7]), num(c[8]), num(c[9]), num(c[10])
		case c[11] != "":
			p.Proto, p.SrcPort, p.DstPort = 17, num(c[11]), num(c[12])
			if n := num(c[13]); n >= 8 {
				p.Payload = n - 8
			}
		default:
			continue
		}
		pkts = append(pkts, p)
	}
	return pkts
}

// crossings is, from tshark's packets matching filter alone, the time of
// the packet that brings each aligned window's count to threshold (the
// count of distinct values of the fields, or of packets when fields is
// empty), by window start.
func crossings(t testing.TB, path, filter string, fields []string, threshold int, window time.Duration) map[int64]int64 {
	t.Helper()
	args := []string{"-r", path, "-n", "-Y", filter, "-T", "fields", "-E", "separator=,", "-e", "frame.time_epoch"}
	for _, f := range fields {
		args = append(args, "-e", f)
	}
	out, err := exec.Command(testkit.Tool(t, "tshark"), args...).Output()
	if err != nil {
		t.Fatalf("tshark %s: %v", path, err)
	}
	seen := map[int64]map[string]bool{}
	count := map[int64]int{}
	cross := map[int64]int64{}
	for _, l := range strings.Fields(string(out)) {
		ts, rest, _ := strings.Cut(l, ",")
		v, err := strconv.ParseFloat(ts, 64)
		if err != nil {
			t.Fatalf("tshark time %q", ts)
		}
		ns := int64(v * 1e9)
		w := ns - ns%int64(window)
		if len(fields) > 0 {
			if seen[w] == nil {
				seen[w] = map[string]bool{}
			}
			seen[w][rest] = true
			count[w] = len(seen[w])
		} else {
			count[w]++
		}
		if count[w] == threshold {
			cross[w] = ns
		}
	}
	return cross
}

// liveCase is an attack capture for the live rules: the category, the
// expected originator ("" for spoofed sources) and target per window, and
// the tshark filter and fields whose count reaches the threshold.
type liveCase struct {
	name, file, category, orig, target string
	filter                             string
	fields                             []string
	cfg                                func(*Config)
	threshold                          func(Config) int
	window                             func(Config) time.Duration
	origs                              []string // per window in time order, when they differ (lab SYN flood)
}

var (
	synNoAck  = "tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.flags.reset == 0 && tcp.len == 0"
	portsThr  = func(c Config) int { return c.PortscanPorts }
	scanWin   = func(c Config) time.Duration { return c.PortscanWindow }
	floodWin  = func(c Config) time.Duration { return c.FloodWindow }
	synThr    = func(c Config) int { return c.SynFloodPkts }
	liveCases = []liveCase{
		{"portscan/lab-nmap-syn", "lab/lab-nmap-syn-scan.pcap", "portscan", "10.99.1.10", "10.99.1.20",
			"ip.src == 10.99.1.10 && ip.dst == 10.99.1.20 && " + synNoAck, []string{"tcp.dstport"}, nil, portsThr, scanWin, nil},
		{"portscan/nmap-syn", "attack-portscan-nmap-syn.pcapng", "portscan", "172.16.0.8", "64.13.134.52",
			"ip.src == 172.16.0.8 && ip.dst == 64.13.134.52 && " + synNoAck, []string{"tcp.dstport"}, nil, portsThr, scanWin, nil},
		{"portscan/masscan-udp", "attack-portscan-masscan-udp-0-1000.pcap", "portscan", "172.31.15.102", "198.124.152.15",
			"ip.src == 172.31.15.102 && ip.dst == 198.124.152.15 && udp && !icmp", []string{"udp.dstport"}, nil, portsThr, scanWin, nil},
		{"portscan/lab-nmap-udp", "lab/lab-nmap-udp-scan.pcap", "portscan", "10.99.1.10", "10.99.1.20",
			"ip.src == 10.99.1.10 && ip.dst == 10.99.1.20 && udp && !icmp", []string{"udp.dstport"}, nil, portsThr, scanWin, nil},
		// Flag probes (no SYN, ACK or RST; or SYN with FIN), distinct
		// (port, flags), threshold -portscan.flag-probes.
		{"portscan/flag-probes", "tcp-all-flag-combinations-null-fin-xmas.pcap", "portscan", "10.0.0.10", "10.0.0.80",
			"ip.src == 10.0.0.10 && tcp.len == 0 && ((tcp.flags.syn == 0 && tcp.flags.ack == 0 && tcp.flags.reset == 0) || (tcp.flags.syn == 1 && tcp.flags.fin == 1 && tcp.flags.ack == 0 && tcp.flags.reset == 0))",
			[]string{"tcp.dstport", "tcp.flags"}, nil, func(c Config) int { return c.PortscanFlagProbes }, scanWin, nil},
		{"syn_flood/spoofed", "attack-synflood-spoofed-sources.pcap", "syn_flood", "", "10.10.10.10",
			"ip.dst == 10.10.10.10 && " + synNoAck, nil, nil, synThr, floodWin, nil},
		// lab/labels.csv: 10.99.1.10 floods first, spoofed sources 10 s later.
		{"syn_flood/lab-hping3", "lab/lab-hping3-syn-flood.pcap", "syn_flood", "", "10.99.1.20",
			"ip.dst == 10.99.1.20 && " + synNoAck, nil, nil, synThr, floodWin, []string{"10.99.1.10", ""}},
		{"icmp_flood/lab-hping3", "lab/lab-hping3-icmp-flood.pcap", "icmp_flood", "10.99.1.10", "10.99.1.20",
			"ip.dst == 10.99.1.20 && icmp.type == 8", nil, nil, func(c Config) int { return c.ICMPFloodPkts }, floodWin, nil},
		// No UDP flood or IP host sweep capture in shared/: crafted ones
		// (testdata/gen-udp-flood.py, gen-ip-host-sweep.py) at the default
		// thresholds. udp-flood: 10.0.0.66 floods 10.0.0.20:5060 in the
		// first 10 s window, spoofed sources in the fourth.
		{"udp_flood/crafted", "testdata/udp-flood.pcap.gz", "udp_flood", "", "10.0.0.20",
			"ip.dst == 10.0.0.20 && udp && !icmp", nil, nil,
			func(c Config) int { return c.UDPFloodPkts }, floodWin, []string{"10.0.0.66", ""}},
		// ip-host-sweep: nmap -sn (ICMP echo counted) in minute 0, a SYN
		// sweep of port 22 in minute 1, of 192.0.2.1-254 from 10.0.0.66.
		{"hostsweep/crafted", "testdata/ip-host-sweep.pcap", "hostsweep", "10.0.0.66", "",
			"ip.src == 10.0.0.66 && (icmp.type == 8 || (tcp.dstport == 22 && " + synNoAck + "))", []string{"ip.dst"}, nil,
			func(c Config) int { return c.SweepHosts }, func(c Config) time.Duration { return c.SweepWindow }, nil},
		// The masscan scan (1,001 UDP packets to one host in 10 s) with
		// -udpflood.pkts 500: a second capture through the live count.
		{"udp_flood/masscan-udp-500", "attack-portscan-masscan-udp-0-1000.pcap", "udp_flood", "172.31.15.102", "198.124.152.15",
			"ip.dst == 198.124.152.15 && udp && !icmp", nil, func(c *Config) { c.UDPFloodPkts = 500 },
			func(c Config) int { return c.UDPFloodPkts }, floodWin, nil},
		// The lab sweep is ARP on a LAN (3 SYNs to port 22 reach IP): with
		// -hostsweep.hosts 3.
		{"hostsweep/lab-tcp22-3", "lab/lab-nmap-host-sweep.pcap", "hostsweep", "10.99.1.10", "",
			"ip.src == 10.99.1.10 && tcp.dstport == 22 && " + synNoAck, []string{"ip.dst"}, func(c *Config) { c.SweepHosts = 3 },
			func(c Config) int { return c.SweepHosts }, func(c Config) time.Duration { return c.SweepWindow }, nil},
	}
)

// liveFirst feeds a capture's packets to ObservePacket and returns the
// first alert of the category per window, and every alert.
func liveFirst(t testing.TB, e *Engine, pkts []Packet, category, target string) (map[int64]*pb.Alert, []*pb.Alert) {
	first := map[int64]*pb.Alert{}
	var all, out []*pb.Alert
	for i := range pkts {
		out = e.ObservePacket(out[:0], "lab", &pkts[i])
		for _, a := range out {
			all = append(all, a)
			if a.Category == category && a.RespAddr == target && first[a.WindowStartNs] == nil {
				first[a.WindowStartNs] = a
			}
		}
	}
	return first, all
}

// TestLiveScansAndFloods: portscan, hostsweep, syn_flood, udp_flood and
// icmp_flood from packet summaries (ObservePacket) on the attack captures:
// in every window where tshark's count of the attack's packets reaches
// the threshold, the rule's first alert has the time of the packet that
// crossed it (within 2 s; here exactly), names the labelled attacker (or
// no originator for spoofed sources) and victim, and there is no alert of
// the category in another window. The flow records (tshark-built) fed
// afterwards to the same engine add no new alert id of the category: one
// state, the count the larger of the two.
func TestLiveScansAndFloods(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	for _, c := range liveCases {
		t.Run(c.name, func(t *testing.T) {
			d := DefaultConfig()
			if c.cfg != nil {
				c.cfg(&d)
			}
			path := capPath(pcaps, c.file)
			cross := crossings(t, path, c.filter, c.fields, c.threshold(d), c.window(d))
			if len(cross) == 0 {
				t.Fatalf("tshark: no window reaches %d", c.threshold(d))
			}
			e := New(d)
			first, _ := liveFirst(t, e, tsharkPackets(t, path), c.category, c.target)
			if len(first) != len(cross) {
				t.Fatalf("alerts in %d windows, tshark crosses the threshold in %d", len(first), len(cross))
			}
			i := 0
			for _, w := range slices.Sorted(maps.Keys(cross)) {
				a := first[w]
				if a == nil {
					t.Fatalf("window %d: no alert, tshark crossed at %d", w, cross[w])
				}
				orig := c.orig
				if c.origs != nil {
					orig = c.origs[i]
				}
				i++
				if a.OrigAddr != orig {
					t.Errorf("window %d: orig %q, want %q", w, a.OrigAddr, orig)
				}
				delay := time.Duration(a.TimeNs - cross[w])
				if delay < 0 || delay > 2*time.Second {
					t.Errorf("window %d: alert at %d, tshark crossed at %d: delay %v", w, a.TimeNs, cross[w], delay)
				}
				t.Logf("window %d: %s delay %v: %s", w, a.Id, delay, a.Summary)
			}
			ids := map[string]bool{}
			for _, a := range first {
				ids[a.Id] = true
			}
			for _, f := range tsharkFlows(t, path) {
				for _, a := range e.Observe("lab", f) {
					if a.Category == c.category && !ids[a.Id] {
						t.Fatalf("flow record fired a new %s alert %s (%q -> %s) after the live ones", a.Category, a.Id, a.OrigAddr, a.RespAddr)
					}
				}
			}
		})
	}
}

// TestLiveBenign: every benign capture of the label files, run through
// the live rules with their default thresholds, raises nothing.
func TestLiveBenign(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	n := 0
	for _, l := range captureLabels(t, pcaps) {
		if !l.benign {
			continue
		}
		n++
		pkts := tsharkPackets(t, filepath.Join(pcaps, l.file))
		_, all := liveFirst(t, New(DefaultConfig()), pkts, "", "")
		for _, a := range all {
			t.Errorf("%s: %s %q -> %s: %s", l.file, a.Category, a.OrigAddr, a.RespAddr, a.Summary)
		}
		t.Logf("%s: %d packets, %d alerts", l.file, len(pkts), len(all))
	}
	if n < 20 {
		t.Fatalf("%d benign captures in the label files, want at least 20", n)
	}
}

// TestLiveCrafted: edge cases of the live rules on crafted packets.
func TestLiveCrafted(t *testing.T) {
	server := netip.MustParseAddr("192.0.2.1")
	client := func(i int) netip.Addr { return netip.AddrFrom4([4]byte{198, 51, byte(100 + i/250), byte(1 + i%250)}) }
	t0 := int64(1_700_000_000_000_000_000) // aligned to 10 s
	syn := func(src netip.Addr, sport uint32, i int) Packet {
		return Packet{TsNs: t0 + int64(i)*1_000_000, Src: src, Dst: server, SrcPort: sport, DstPort: 443, Proto: 6, TCPFlags: flagSYN}
	}
	count := func(e *Engine, pkts []Packet, category string) (n int, first *pb.Alert) {
		var out []*pb.Alert
		for i := range pkts {
			out = e.ObservePacket(out[:0], "c", &pkts[i])
			for _, a := range out {
				if a.Category == category {
					if n++; first == nil {
						first = a
					}
				}
			}
		}
		return n, first
	}
	d := DefaultConfig()
	t.Run("busy server: 2000 completed handshakes", func(t *testing.T) {
		var pkts []Packet
		for i := range 2000 {
			p := syn(client(i), 40000, i)
			pkts = append(pkts, p)
			ack := p
			ack.TsNs += 500_000
			ack.TCPFlags = flagACK
			pkts = append(pkts, ack)
		}
		if n, a := count(New(d), pkts, RuleSynFlood); n != 0 {
			t.Fatalf("%d syn_flood alerts on completed connections: %s", n, a.Summary)
		}
	})
	t.Run("2000 unanswered SYNs from many sources", func(t *testing.T) {
		var pkts []Packet
		for i := range 2000 {
			pkts = append(pkts, syn(client(i), 40000, i))
		}
		n, a := count(New(d), pkts, RuleSynFlood)
		if n != 2 || a.OrigAddr != "" || a.TimeNs != pkts[999].TsNs {
			t.Fatalf("%d alerts (want 1000 and update at 2000), first %+v", n, a)
		}
	})
	t.Run("RST and SYN-ACK are no probes, backscatter no scan", func(t *testing.T) {
		var pkts []Packet
		for i := range 200 {
			// the server answers a scanner's probes: SYN-ACK or RST from
			// many ports to one port of the scanner.
			fl := uint32(flagSYN | flagACK)
			if i%2 == 0 {
				fl = flagRST | flagACK
			}
			pkts = append(pkts, Packet{TsNs: t0 + int64(i), Src: server, Dst: client(0), SrcPort: uint32(1 + i), DstPort: 40000, Proto: 6, TCPFlags: fl})
			pkts = append(pkts, Packet{TsNs: t0 + int64(i), Src: client(0), Dst: server, SrcPort: 40000, DstPort: uint32(1 + i), Proto: 6, TCPFlags: flagRST})
		}
		e := New(d)
		if n, a := count(e, pkts, RulePortscan); n != 0 {
			t.Fatalf("portscan on replies and resets: %s", a.Summary)
		}
	})
	t.Run("UDP answers from a service port are not counted", func(t *testing.T) {
		var pkts []Packet
		for i := range 12000 {
			// a resolver answering one client from port 53 to 12,000 source ports
			pkts = append(pkts, Packet{TsNs: t0 + int64(i)*100_000, Src: server, Dst: client(0), SrcPort: 53, DstPort: uint32(10000 + i), Proto: 17, Payload: 80})
		}
		e := New(d)
		for _, r := range []string{RulePortscan, RuleUDPFlood, RuleHostsweep} {
			if n, a := count(e, pkts, r); n != 0 {
				t.Fatalf("%s on a resolver's answers: %s", r, a.Summary)
			}
		}
		// the same packets the other way round are a UDP flood (and a scan)
		for i := range pkts {
			p := &pkts[i]
			p.Src, p.Dst, p.SrcPort, p.DstPort = p.Dst, p.Src, p.DstPort, p.SrcPort
			p.DstPort = uint32(10000 + i)
		}
		n, a := count(New(d), pkts, RuleUDPFlood)
		if n != 1 || a.TimeNs != pkts[9999].TsNs || a.OrigAddr != client(0).String() {
			t.Fatalf("udp_flood: %d alerts, first %+v", n, a)
		}
	})
}
