package counters

import (
	"net/netip"
	"syscall"
	"testing"
	"time"

	"netwatch/enricher/internal/flow"
	"netwatch/schema"
	"netwatch/schema/pb"
)

var t0 = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()

func at(s float64) int64 { return t0 + int64(s*1e9) }

func ip(s string) []byte { return netip.MustParseAddr(s).AsSlice() }

func tcp(ts int64, src, dst string, flags uint32) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: ts, SrcAddr: ip(src), DstAddr: ip(dst), Proto: 6, IpBytes: 40, TcpFlags: flags}
}

type out struct {
	msgs []*pb.TrafficCounters
	refs int
}

func (o *out) emit(c *pb.TrafficCounters, refs []flow.Ref) {
	o.msgs = append(o.msgs, c)
	o.refs += len(refs)
}

type ref struct{ n int }

func (r *ref) Retain() { r.n++ }

// TestSeconds counts a small SYN flood by hand: second 0 has 3 SYNs from 3
// sources to the victim, one SYN-ACK back, an ICMP echo and a DNS response
// from a resolver; second 1 has 2 SYNs and an RST.
func TestSeconds(t *testing.T) {
	var o out
	s := NewSensor("s1", Config{Lateness: 2 * time.Second, Top: 2}, o.emit)
	quiet(s, 0, at(1000)) // only bucket 0 has traffic: it alone holds the watermark
	victim := "192.0.2.10"
	r1, r2 := &ref{}, &ref{}
	pkts := []*pb.PacketSummary{
		tcp(at(0.1), "198.51.100.1", victim, 0x02),
		tcp(at(0.2), "198.51.100.2", victim, 0x02),
		tcp(at(0.3), "198.51.100.3", victim, 0x02),
		tcp(at(0.4), victim, "198.51.100.1", 0x12),
		{TsNs: at(0.5), SrcAddr: ip("10.0.0.1"), DstAddr: ip("10.0.0.2"), Proto: 1, IpBytes: 84},
		{TsNs: at(0.6), SrcAddr: ip("10.0.0.53"), DstAddr: ip("10.0.0.1"), Proto: 17, IpBytes: 100, DnsResponse: true},
		tcp(at(1.1), "198.51.100.1", victim, 0x02),
		tcp(at(1.2), "198.51.100.4", victim, 0x02),
		tcp(at(1.3), victim, "198.51.100.4", 0x14),
	}
	for i, p := range pkts {
		r := r1
		if i >= 3 {
			r = r2
		}
		s.Add(p, 0, r)
	}
	if len(o.msgs) != 0 {
		t.Fatalf("%d seconds emitted before the lateness passed", len(o.msgs))
	}
	s.Add(tcp(at(3.0), "198.51.100.9", victim, 0x02), 0, nil) // clock 3.0: second 0 closes (0+1+2 ≤ 3)
	if len(o.msgs) != 1 {
		t.Fatalf("%d seconds emitted at clock 3 s, want 1", len(o.msgs))
	}
	s.Add(tcp(at(0.9), "198.51.100.9", victim, 0x02), 0, nil) // second 0 is closed: late
	s.Flush()
	if len(o.msgs) != 3 || s.Late != 1 {
		t.Fatalf("%d seconds, late %d; want 3 and 1", len(o.msgs), s.Late)
	}
	m := o.msgs[0]
	want := &pb.CounterSet{Packets: 6, IpBytes: 4*40 + 84 + 100, Syn: 3, SynAck: 1, Icmp: 1, DnsResponses: 1, Sources: 6}
	if m.Sensor != "s1" || m.SecondNs != at(0) || !equal(m.Total, want) {
		t.Errorf("second 0: %v %d total %v, want %v", m.Sensor, m.SecondNs, m.Total, want)
	}
	// Top 2 responders: the victim (3 SYNs from 3 sources), then the
	// lowest address among the 1-packet ones (10.0.0.1 got the DNS response).
	if len(m.Responders) != 2 || netip.AddrFrom4([4]byte(m.Responders[0].Addr)).String() != victim ||
		!equal(m.Responders[0].Counters, &pb.CounterSet{Packets: 3, IpBytes: 120, Syn: 3, Sources: 3}) ||
		netip.AddrFrom4([4]byte(m.Responders[1].Addr)).String() != "10.0.0.1" {
		t.Errorf("responders %v", m.Responders)
	}
	m = o.msgs[1]
	want = &pb.CounterSet{Packets: 3, IpBytes: 120, Syn: 2, Rst: 1, Sources: 3}
	if m.SecondNs != at(1) || !equal(m.Total, want) {
		t.Errorf("second 1: %d %v, want %v", m.SecondNs, m.Total, want)
	}
	if m := o.msgs[2]; m.SecondNs != at(3) || m.Total.Packets != 1 {
		t.Errorf("second 3: %d %v", m.SecondNs, m.Total)
	}
	// r1 is in second 0 only; r2 in seconds 0 and 1.
	if r1.n != 1 || r2.n != 2 || o.refs != 3 {
		t.Errorf("retains r1 %d r2 %d, refs handed out %d", r1.n, r2.n, o.refs)
	}
}

// quiet advances every bucket except one to now, as the stage does for
// buckets without batches.
func quiet(s *Sensor, except uint32, now int64) {
	for b := range uint32(schema.Buckets) {
		if b != except {
			s.Advance(b, now)
		}
	}
}

// TestWatermark: two buckets deliver the same 10 seconds one after the
// other (as separately batched buckets do in a fast replay): nothing is
// emitted until the slower bucket passes, nothing is late, and every
// second holds both buckets' packets.
func TestWatermark(t *testing.T) {
	var o out
	s := NewSensor("s1", Config{}, o.emit)
	for b := range uint32(schema.Buckets) {
		if b != 1 && b != 2 {
			s.Advance(b, at(1000))
		}
	}
	for _, b := range []uint32{1, 2} {
		for i := range 10 {
			s.Add(tcp(at(float64(i)+0.5), "10.0.0.1", "10.0.0.2", 0x10), b, nil)
		}
		if b == 1 && len(o.msgs) != 0 {
			t.Fatalf("%d seconds emitted while bucket 2 is behind", len(o.msgs))
		}
	}
	// Bucket 2's clock is 9.5 s: seconds 0..7 are 1 s (Lateness) behind it.
	if len(o.msgs) != 8 || s.Late != 0 {
		t.Fatalf("%d seconds emitted, %d late; want 8 and 0", len(o.msgs), s.Late)
	}
	s.Flush()
	for i, m := range o.msgs {
		if m.SecondNs != at(float64(i)) || m.Total.Packets != 2 {
			t.Errorf("second %d: %d %v", i, (m.SecondNs-t0)/1e9, m.Total)
		}
	}
	if len(o.msgs) != 10 {
		t.Errorf("%d seconds", len(o.msgs))
	}
}

// TestMaxOpen: a bucket that never delivers holds the watermark; at most
// MaxOpen seconds stay open, the oldest is emitted, and a straggler of it
// is late.
func TestMaxOpen(t *testing.T) {
	var o out
	s := NewSensor("s1", Config{MaxOpen: 3}, o.emit)
	for i := range 5 {
		s.Add(tcp(at(float64(i)), "10.0.0.1", "10.0.0.2", 0x10), 1, nil)
	}
	if s.Open() != 3 || len(o.msgs) != 2 {
		t.Fatalf("%d open, %d emitted; want 3 and 2", s.Open(), len(o.msgs))
	}
	s.Add(tcp(at(0.5), "10.0.0.1", "10.0.0.2", 0x10), 2, nil)
	if s.Late != 1 {
		t.Errorf("late %d, want 1", s.Late)
	}
}

func equal(a, b *pb.CounterSet) bool {
	return a.Packets == b.Packets && a.IpBytes == b.IpBytes && a.Syn == b.Syn && a.SynAck == b.SynAck && a.Rst == b.Rst &&
		a.Icmp == b.Icmp && a.DnsResponses == b.DnsResponses && a.Sources == b.Sources
}

// TestBounded: a spoofed flood from 10000 sources in one second keeps at most
// MaxAddrs addresses; packet counts stay exact.
func TestBounded(t *testing.T) {
	var o out
	s := NewSensor("s1", Config{MaxAddrs: 100}, o.emit)
	for i := range 10000 {
		s.Add(&pb.PacketSummary{TsNs: at(0), SrcAddr: []byte{10, 1, byte(i >> 8), byte(i)}, DstAddr: []byte{10, 2, byte(i >> 8), byte(i)},
			Proto: 17, IpBytes: 28}, 0, nil)
	}
	b := s.open[0]
	if len(b.srcs) > 100 || len(b.resp) > 100 || len(b.pairs) > 100 {
		t.Errorf("tracked %d sources %d responders %d pairs, bound 100", len(b.srcs), len(b.resp), len(b.pairs))
	}
	s.Flush()
	if m := o.msgs[0]; m.Total.Packets != 10000 || m.Total.Sources != 100 || len(m.Responders) != 32 {
		t.Errorf("total %v, %d responders", m.Total, len(m.Responders))
	}
}

func TestMsgID(t *testing.T) {
	if got := MsgID("s1", "host-a", at(0.7)); got != "s1.host-a.1714564800" {
		t.Errorf("id %s", got)
	}
	if MsgID("s1", "a", at(0)) == MsgID("s1", "b", at(0)) || MsgID("s1", "a", at(0)) == MsgID("s1", "a", at(1)) {
		t.Error("ids collide")
	}
}

// BenchmarkAdd measures packets/s into the counters (1000 sources, 10
// responders, 100 packets per millisecond of packet time, buckets in turn:
// the worst case for the watermark, which moves with every packet).
func BenchmarkAdd(b *testing.B) {
	s := NewSensor("s1", Config{}, func(*pb.TrafficCounters, []flow.Ref) {})
	ps := make([]*pb.PacketSummary, 1000)
	for i := range ps {
		ps[i] = &pb.PacketSummary{SrcAddr: []byte{10, 1, byte(i >> 8), byte(i)}, DstAddr: []byte{10, 2, 0, byte(i % 10)},
			Proto: 6, TcpFlags: 0x02, IpBytes: 40}
	}
	b.ReportAllocs()
	i := 0
	var ru0, ru1 syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru0)
	defer func() { // process CPU per op: wall ns/op on the shared machine includes waiting for a core
		_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru1)
		cpu := ru1.Utime.Nano() + ru1.Stime.Nano() - ru0.Utime.Nano() - ru0.Stime.Nano()
		b.ReportMetric(float64(cpu)/float64(b.N), "cpu-ns/op")
	}()
	for b.Loop() {
		p := ps[i%len(ps)]
		p.TsNs = t0 + int64(i)*10_000
		s.Add(p, uint32(i%64), nil)
		i++
	}
}
