package rules

import (
	"fmt"
	"net/netip"
	"slices"
	"sort"
	"testing"
	"time"

	"netwatch/schema/pb"
)

// TestScope: the engines of a detector consumer group member split the
// rules without overlap or gap. On hand-built traffic with a known answer
// (sensor s1: 60 SYN probes from 10.0.0.66 to 60 ports of 10.0.0.20, a
// port scan; 1,000 half-open SYNs to 10.0.0.20:80 from 1,000 spoofed
// sources, a SYN flood; sensor amp-a: 1,000 DNS response packets from 50
// reflectors to 10.0.0.20 in flows whose originator is the victim, and
// sensor amp-b: the same in flows whose originator is the reflector), one
// engine of each scope sees every flow: ScopeAll raises portscan,
// syn_flood and both amplifications; ScopeOriginator portscan and the
// amplification whose victim is the flows' originator (amp-a); ScopeTarget
// syn_flood and the one whose victim is their responder (amp-b). The same
// traffic as packet summaries (ObservePacket): ScopeAll portscan and
// syn_flood, each of the other scopes one of them.
func TestScope(t *testing.T) {
	ms := int64(time.Millisecond)
	var flows []struct {
		sensor string
		f      *pb.Flow
	}
	var pkts []*Packet
	add := func(sensor string, f *pb.Flow) {
		flows = append(flows, struct {
			sensor string
			f      *pb.Flow
		}{sensor, f})
	}
	for i := 0; i < 60; i++ {
		add("s1", synProbe(uint32(1000+i), t0+int64(i)*ms))
		pkts = append(pkts, &Packet{TsNs: t0 + int64(i)*ms, Src: netip.AddrFrom4([4]byte(scanner)), Dst: netip.AddrFrom4([4]byte(victim)),
			SrcPort: 40000, DstPort: uint32(1000 + i), Proto: 6, TCPFlags: flagSYN})
	}
	for i := 0; i < 1000; i++ {
		src := []byte{100, 64, byte(i >> 8), byte(i)}
		at := t0 + int64(i)*ms
		add("s1", &pb.Flow{Proto: 6, OrigAddr: src, OrigPort: 1024 + uint32(i), RespAddr: victim, RespPort: 80, StartNs: at, EndNs: at,
			OrigPkts: 1, OrigIpBytes: 40, OrigTcpFlags: flagSYN, Final: true})
		pkts = append(pkts, &Packet{TsNs: at, Src: netip.AddrFrom4([4]byte(src)), Dst: netip.AddrFrom4([4]byte(victim)),
			SrcPort: 1024 + uint32(i), DstPort: 80, Proto: 6, TCPFlags: flagSYN})
	}
	for i := 0; i < 100; i++ {
		add("amp-a", dnsResponse(i%50, 10, t0+int64(i)*ms, false))
		add("amp-b", dnsResponse(i%50, 10, t0+int64(i)*ms, true))
	}
	keys := func(as []*pb.Alert) []string {
		var out []string
		for _, a := range as {
			if UpdateOf(a) == 0 {
				out = append(out, fmt.Sprintf("%s %s %q>%q", a.Sensor, a.Category, a.OrigAddr, a.RespAddr))
			}
		}
		sort.Strings(out)
		return out
	}
	scan, flood := `s1 portscan "10.0.0.66">"10.0.0.20"`, `s1 syn_flood "">"10.0.0.20"`
	ampA, ampB := `amp-a amplification "">"10.0.0.20"`, `amp-b amplification "">"10.0.0.20"`
	for _, c := range []struct {
		scope      Scope
		flows, pkt []string
	}{
		{ScopeAll, []string{ampA, ampB, scan, flood}, []string{scan, flood}},
		{ScopeOriginator, []string{ampA, scan}, []string{scan}},
		{ScopeTarget, []string{ampB, flood}, []string{flood}},
	} {
		e := New(DefaultConfig())
		e.SetScope(c.scope)
		var got []*pb.Alert
		for _, f := range flows {
			got = append(got, e.Observe(f.sensor, f.f)...)
		}
		if k := keys(got); !slices.Equal(k, c.flows) {
			t.Errorf("scope %d, flows: %v, want %v", c.scope, k, c.flows)
		}
		e = New(DefaultConfig())
		e.SetScope(c.scope)
		got = nil
		for _, p := range pkts {
			got = e.ObservePacket(got, "s1", p)
		}
		if k := keys(got); !slices.Equal(k, c.pkt) {
			t.Errorf("scope %d, packets: %v, want %v", c.scope, k, c.pkt)
		}
	}
}
