package flow

import (
	"net/netip"
	"runtime"
	"syscall"
	"testing"
	"time"

	"netwatch/enricher/internal/geo"
	"netwatch/enricher/internal/names"
	"netwatch/schema/pb"
)

// cpuTime is the process's user + system CPU time. Benchmarks report it per
// op ("cpu-ns/op") next to the wall-clock ns/op, which on a loaded machine
// counts time spent waiting for a core.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func reportCPU(b *testing.B, start time.Duration) {
	b.ReportMetric(float64(cpuTime()-start)/float64(b.N), "cpu-ns/op")
}

// benchPackets are n packets over 1000 concurrent UDP flows, 1 µs apart.
func benchPackets(n int) []*pb.PacketSummary {
	ps := make([]*pb.PacketSummary, n)
	for i := range ps {
		ps[i] = udp(t0+int64(i)*1000, hostA, uint32(20000+i%1000), hostB, 53, 100)
	}
	return ps
}

// BenchmarkAddExisting measures packets/s into open flows (the hot path).
func BenchmarkAddExisting(b *testing.B) {
	ps := benchPackets(10000)
	t := NewTable(DefaultConfig(), func(Record) {})
	for _, p := range ps {
		t.Add(p, nil)
	}
	b.ReportAllocs()
	b.SetBytes(128) // per packet summary, for a throughput figure
	i := 0
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		p := ps[i%len(ps)]
		p.TsNs = t0 + int64(10000+i)*1000
		t.Add(p, nil)
		i++
	}
}

// BenchmarkFlows measures flows/s: every 2 packets start a new flow that
// the UDP idle timeout ends later, so each iteration creates and emits one.
func BenchmarkFlows(b *testing.B) {
	t := NewTable(DefaultConfig(), func(Record) {})
	b.ReportAllocs()
	i := 0
	q := udp(0, hostA, 0, hostB, 53, 100)
	r := udp(0, hostB, 53, hostA, 0, 100)
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		port := uint32(1024 + i%60000)
		q.TsNs, q.SrcPort = t0+int64(i)*1e6, port // 1 ms apart: 60 s idle ends ~60000 flows later
		r.TsNs, r.DstPort = q.TsNs, port
		t.Add(q, nil)
		t.Add(r, nil)
		i++
	}
}

// TestAddAllocFree guards the hot path: a packet of an open flow allocates nothing.
func TestAddAllocFree(t *testing.T) {
	ps := benchPackets(1000)
	tb := NewTable(DefaultConfig(), func(Record) {})
	for _, p := range ps {
		tb.Add(p, nil)
	}
	ref := &countRef{}
	i := 0
	allocs := testing.AllocsPerRun(1000, func() {
		p := ps[i%len(ps)]
		p.TsNs = t0 + int64(1000+i)*1000
		tb.Add(p, ref)
		i++
	})
	// The first packet of each flow from a new message appends a ref; after
	// the first lap refs repeat, so the average stays well below one.
	if allocs > 1 {
		t.Errorf("%.2f allocs per packet", allocs)
	}
}

// BenchmarkFlowsContext is BenchmarkFlows with GeoIP/ASN lookups (the test
// databases; 4096 distinct client addresses, so the cache mostly hits) and
// passive DNS names on: the per-flow cost of the context.
func BenchmarkFlowsContext(b *testing.B) {
	db, err := geo.Open("../../../../shared/data/geoip/GeoIP2-City-Test.mmdb", "../../../../shared/data/geoip/GeoLite2-ASN-Test.mmdb", 0)
	if err != nil {
		b.Fatal(err)
	}
	defer db.Close()
	cfg := DefaultConfig()
	cfg.Geo, cfg.Names = db, names.New(names.Config{})
	server := netip.MustParseAddr("89.160.20.115").AsSlice()
	cfg.Names.Learn(&pb.PacketSummary{TsNs: t0, SrcPort: 53, DnsResponse: true, DnsAnswers: []*pb.DNSAnswer{{Name: "www.example.se", Type: 1, Addr: server, Ttl: 3600}}})
	t := NewTable(cfg, func(Record) {})
	b.ReportAllocs()
	i := 0
	client := []byte{81, 2, 0, 0}
	q := udp(0, client, 0, server, 53, 100)
	r := udp(0, server, 53, client, 0, 100)
	defer reportCPU(b, cpuTime())
	for b.Loop() {
		port := uint32(1024 + i%60000)
		client[2], client[3] = byte(i>>8)&0x0f, byte(i)
		q.TsNs, q.SrcPort = t0+int64(i)*1e6, port
		r.TsNs, r.DstPort = q.TsNs, port
		t.Add(q, nil)
		t.Add(r, nil)
		i++
	}
}

// BenchmarkMemoryPerFlow reports the heap held per open flow ("bytes/flow":
// table entry, map slot, idle list links, message refs) with 100 000 open
// TCP flows, each from one SYN and one SYN-ACK carrying a message ref.
func BenchmarkMemoryPerFlow(b *testing.B) {
	const n = 100_000
	ps := make([]*pb.PacketSummary, 0, 2*n)
	for i := range n {
		a := []byte{10, 1, byte(i >> 8), byte(i)}
		ps = append(ps, tcp(t0+int64(i), a, uint32(1024+i%60000), hostB, 443, syn, 0),
			tcp(t0+int64(i)+1, hostB, 443, a, uint32(1024+i%60000), syn|ack, 0))
	}
	ref := &countRef{}
	var per float64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		t := NewTable(DefaultConfig(), func(Record) {})
		for _, p := range ps {
			t.Add(p, ref)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		if t.Len() != n {
			b.Fatalf("%d flows", t.Len())
		}
		per = float64(after.HeapAlloc-before.HeapAlloc) / n
		runtime.KeepAlive(t)
	}
	b.ReportMetric(per, "bytes/flow")
}
