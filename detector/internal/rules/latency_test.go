package rules

import (
	"bufio"
	"bytes"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

// Enricher defaults (enricher/README.md, "Timeouts"): a flow record is
// emitted close-linger after a RST or FIN both ways, else idle-timeout
// after its last packet (interim records every active-timeout).
const (
	enricherLinger  = 2 * time.Second
	enricherIdleTCP = 5 * time.Minute
	enricherIdle    = time.Minute
	enricherActive  = 5 * time.Minute
)

// enricherEmit is the packet time at which the enricher, with its default
// timeouts, emits the (final) record of a tshark-built flow.
func enricherEmit(f *pb.Flow) int64 {
	switch {
	case f.Proto == 6 && ((f.OrigTcpFlags|f.RespTcpFlags)&flagRST != 0 || f.OrigTcpFlags&f.RespTcpFlags&flagFIN != 0):
		return f.EndNs + int64(enricherLinger)
	case f.Proto == 6:
		return f.EndNs + int64(enricherIdleTCP)
	}
	return f.EndNs + int64(enricherIdle)
}

// crossing is, from tshark's packets alone (not from flows or the rules),
// the packet time at which a scan or flood reaches its rule's threshold:
// the packet that brings the count of one aligned window (distinct
// destination ports for a scan, packets for a flood) to threshold.
func crossing(b *testing.B, path, filter string, distinctPorts bool, threshold int, window time.Duration) int64 {
	tshark := testkit.Tool(b, "tshark")
	out, err := exec.Command(tshark, "-r", path, "-n", "-Y", filter, "-T", "fields", "-E", "separator=\t",
		"-e", "frame.time_epoch", "-e", "tcp.dstport", "-e", "udp.dstport").Output()
	if err != nil {
		b.Fatalf("tshark %s: %v", path, err)
	}
	count := map[int64]int{}
	ports := map[int64]map[string]bool{}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		c := strings.Split(sc.Text(), "\t")
		ts, err := strconv.ParseFloat(c[0], 64)
		if err != nil {
			b.Fatalf("tshark time %q", c[0])
		}
		ns := int64(ts * 1e9)
		w := ns - ns%int64(window)
		if distinctPorts {
			if ports[w] == nil {
				ports[w] = map[string]bool{}
			}
			ports[w][c[1]+"/"+c[2]] = true
			count[w] = len(ports[w])
		} else {
			count[w]++
		}
		if count[w] == threshold {
			return ns
		}
	}
	b.Fatalf("%s: no window reaches %d", path, threshold)
	return 0
}

// BenchmarkDetectionLatency measures, on real captures, the packet-time
// delay from the packet that crosses a scan or flood threshold (counted
// by crossing from tshark's packets) to the alert, with flows built by
// tshark per 5-tuple and fed to the rules in the order their records are
// emitted:
//
//   - delay-ms: records emitted at their last packet (the rules' own
//     delay: the alert is out with the record that crosses the threshold);
//   - enricher-delay-s: records emitted as the enricher does with its
//     default timeouts (2 s close-linger after RST/FIN, else the 5 min TCP
//     or 1 min UDP/ICMP idle timeout): the delay a deployment with those
//     defaults sees;
//   - live-delay-ms: the packets counted from their summaries as they
//     arrive (live.go: ObservePacket for icmp_flood, syn_flood, udp_flood,
//     portscan, hostsweep), the path the stage runs on PACKETS: no flow
//     record needed.
//
// ns/op is the rules' time to process the capture's flows.
func BenchmarkDetectionLatency(b *testing.B) {
	pcaps := testkit.Pcaps(b)
	d := DefaultConfig()
	for _, c := range []struct {
		name, file, category, target string
		filter                       string
		distinct                     bool
		threshold                    int
		window                       time.Duration
	}{
		{"portscan/nmap-syn", "lab/lab-nmap-syn-scan.pcap", "portscan", "10.99.1.20",
			"ip.src == 10.99.1.10 && ip.dst == 10.99.1.20 && tcp.flags.syn == 1 && tcp.flags.ack == 0", true, d.PortscanPorts, d.PortscanWindow},
		{"portscan/nmap-syn-internet", "attack-portscan-nmap-syn.pcapng", "portscan", "64.13.134.52",
			"ip.src == 172.16.0.8 && ip.dst == 64.13.134.52 && tcp.flags.syn == 1 && tcp.flags.ack == 0", true, d.PortscanPorts, d.PortscanWindow},
		{"portscan/masscan-udp", "attack-portscan-masscan-udp-0-1000.pcap", "portscan", "198.124.152.15",
			"ip.src == 172.31.15.102 && ip.dst == 198.124.152.15 && udp", true, d.PortscanPorts, d.PortscanWindow},
		{"portscan/nmap-udp", "lab/lab-nmap-udp-scan.pcap", "portscan", "10.99.1.20",
			"ip.src == 10.99.1.10 && ip.dst == 10.99.1.20 && udp && !icmp", true, d.PortscanPorts, d.PortscanWindow},
		{"syn_flood/spoofed", "attack-synflood-spoofed-sources.pcap", "syn_flood", "10.10.10.10",
			"ip.dst == 10.10.10.10 && tcp.flags.syn == 1 && tcp.flags.ack == 0", false, d.SynFloodPkts, d.FloodWindow},
		{"syn_flood/hping3", "lab/lab-hping3-syn-flood.pcap", "syn_flood", "10.99.1.20",
			"ip.dst == 10.99.1.20 && tcp.flags.syn == 1 && tcp.flags.ack == 0", false, d.SynFloodPkts, d.FloodWindow},
		{"icmp_flood/hping3", "lab/lab-hping3-icmp-flood.pcap", "icmp_flood", "10.99.1.20",
			"ip.dst == 10.99.1.20 && icmp.type == 8", false, d.ICMPFloodPkts, d.FloodWindow},
	} {
		b.Run(c.name, func(b *testing.B) {
			path := filepath.Join(pcaps, c.file)
			cross := crossing(b, path, c.filter, c.distinct, c.threshold, c.window)
			flows := tsharkFlows(b, path)
			for _, f := range flows {
				if f.EndNs-f.StartNs >= int64(enricherActive) {
					b.Fatalf("a flow longer than the active timeout: the emission model does not cover it")
				}
			}
			// first alert of the category on the target, fed in emission order.
			first := func(emit func(*pb.Flow) int64) (int64, bool) {
				order := append([]*pb.Flow(nil), flows...)
				sort.SliceStable(order, func(i, j int) bool { return emit(order[i]) < emit(order[j]) })
				e := New(d)
				for _, f := range order {
					for _, a := range e.Observe("lat", f) {
						if a.Category == c.category && a.RespAddr == c.target {
							return emit(f), true
						}
					}
				}
				return 0, false
			}
			atLast := func(f *pb.Flow) int64 { return f.EndNs }
			var out int64
			var ok bool
			for b.Loop() {
				out, ok = first(atLast)
			}
			if !ok {
				b.Fatalf("no %s alert for %s", c.category, c.target)
			}
			outEnr, ok := first(enricherEmit)
			if !ok {
				b.Fatalf("no %s alert for %s with enricher emission", c.category, c.target)
			}
			// live: the packets counted from their summaries (ObservePacket,
			// the detector-arp consumer of PACKETS), independent of when a
			// flow record is emitted.
			e := New(d)
			live := int64(-1)
			var alerts []*pb.Alert
			pkts := tsharkPackets(b, path)
		packets:
			for i := range pkts {
				alerts = e.ObservePacket(alerts[:0], "lat", &pkts[i])
				for _, a := range alerts {
					if a.Category == c.category && a.RespAddr == c.target {
						live = a.GetTimeNs()
						break packets
					}
				}
			}
			if live < 0 {
				b.Fatalf("no live %s alert for %s", c.category, c.target)
			}
			b.ReportMetric(float64(live-cross)/1e6, "live-delay-ms")
			b.ReportMetric(float64(out-cross)/1e6, "delay-ms")
			b.ReportMetric(float64(outEnr-cross)/1e9, "enricher-delay-s")
			b.ReportMetric(float64(len(flows)), "flows")
		})
	}
}
