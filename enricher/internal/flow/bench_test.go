package flow

import (
	"syscall"
	"testing"
	"time"

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
