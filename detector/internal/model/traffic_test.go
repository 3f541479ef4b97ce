package model

import (
	"math"
	"math/rand"
	"testing"

	"netwatch/schema/pb"
)

// TestTrafficHandCount: a SYN scan of 3 ports of host B, an HTTP exchange
// with host C, then a second HTTP exchange with B, the traffic columns
// counted by hand from the definitions (TrafficFeatures). For the last
// one, over the past 2 s: 4 connections to B (3 probes and itself), 3 of
// them with a SYN error (S0), 1 of 4 to its service (the probes' ports are
// "private"); 2 connections to http, one of them to another host (C).
func TestTrafficHandCount(t *testing.T) {
	a, b, c := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}, []byte{10, 0, 0, 3}
	probe := func(port uint32, at int64) *pb.Flow {
		return &pb.Flow{Proto: 6, OrigAddr: a, OrigPort: 40000, RespAddr: b, RespPort: port, StartNs: at, EndNs: at,
			OrigPkts: 1, OrigTcpFlags: syn}
	}
	web := func(dst []byte, sport uint32, at int64) *pb.Flow {
		return &pb.Flow{Proto: 6, OrigAddr: a, OrigPort: sport, RespAddr: dst, RespPort: 80, StartNs: at, EndNs: at + 1e8,
			OrigPkts: 5, RespPkts: 5, OrigBytes: 200, RespBytes: 900, OrigTcpFlags: syn | ack | fin, RespTcpFlags: syn | ack | fin}
	}
	tr := NewTraffic()
	x1 := tr.Observe(probe(1001, 0))
	x2 := tr.Observe(probe(1002, 1e8))
	tr.Observe(probe(1003, 2e8))
	tr.Observe(web(c, 50000, 3e8))
	x := tr.Observe(web(b, 50001, 4e8))
	if x1.Count != 1 || x1.SerrorRate != 1 || x1.SameSrvRate != 1 || x1.DstHostCount != 1 {
		t.Errorf("first probe: %+v", x1.TrafficFeatures)
	}
	if x2.Count != 2 || x2.SrvCount != 2 || x2.SerrorRate != 1 || x2.DstHostSameSrcPortRate != 1 {
		t.Errorf("second probe: %+v", x2.TrafficFeatures)
	}
	want := TrafficFeatures{Count: 4, SrvCount: 2, SerrorRate: 0.75, SrvSerrorRate: 0, RerrorRate: 0, SrvRerrorRate: 0,
		SameSrvRate: 0.25, DiffSrvRate: 0.75, SrvDiffHostRate: 0.5,
		DstHostCount: 4, DstHostSrvCount: 2, DstHostSameSrvRate: 0.25, DstHostDiffSrvRate: 0.75,
		DstHostSameSrcPortRate: 0.25, DstHostSrvDiffHostRate: 0.5, DstHostSerrorRate: 0.75}
	if x.TrafficFeatures != want {
		t.Errorf("second HTTP exchange:\n got %+v\nwant %+v", x.TrafficFeatures, want)
	}
	// 2.5 s later: the time window is empty again, the host window still
	// holds the 5 connections.
	y := tr.Observe(web(b, 50002, 29e8))
	if y.Count != 1 || y.SrvCount != 1 || y.DstHostCount != 5 || y.DstHostSrvCount != 3 {
		t.Errorf("after 2.5 s: %+v", y.TrafficFeatures)
	}
	// An interim record of a flow is scored but not counted again.
	in := web(b, 50003, 29e8)
	in.RecordIndex = 1
	tr.Observe(in)
	if z := tr.Observe(web(b, 50004, 29e8)); z.Count != 2 {
		t.Errorf("interim record counted: count %v, want 2", z.Count)
	}
}

// naive computes the traffic columns of flows[i] by the definitions over
// the earlier first records: the time window by a scan of the last
// MaxCount-1 connections in arrival order whose start is within 2 s before
// flows[i]'s and that were not evicted (Traffic evicts in arrival order,
// so a connection leaves once any later record starts more than 2 s after
// it), the host window over the last HostWindow-1.
func naive(flows []*pb.Flow, i int) TrafficFeatures {
	type cn struct {
		f    *pb.Flow
		x    Features
		gone bool
	}
	var cs []*cn
	var cur *cn
	for j := 0; j <= i; j++ {
		x := Extract(flows[j])
		// eviction by this record's start, oldest first, stopping at the first that stays
		for _, c := range cs {
			if c.gone {
				continue
			}
			if flows[j].StartNs-c.f.StartNs > TimeWindowNs {
				c.gone = true
				continue
			}
			break
		}
		cur = &cn{f: flows[j], x: x}
		if j < i && flows[j].RecordIndex == 0 {
			cs = append(cs, cur)
		}
	}
	var tw, hw []*cn
	for k := len(cs) - 1; k >= 0; k-- {
		if len(hw) < HostWindow-1 {
			hw = append(hw, cs[k])
		}
	}
	live := 0
	for k := len(cs) - 1; k >= 0 && live < MaxCount-1; k-- {
		live++
		if !cs[k].gone {
			tw = append(tw, cs[k])
		}
	}
	serr := func(c *cn) bool { return synError(c.x.Flag) }
	rerr := func(c *cn) bool { return rejError(c.x.Flag) }
	host := func(c *cn) bool { return string(c.f.RespAddr) == string(cur.f.RespAddr) }
	srv := func(c *cn) bool { return c.x.Service == cur.x.Service }
	type agg struct{ n, s, r, other float64 }
	count := func(w []*cn, in func(*cn) bool, other func(*cn) bool) agg {
		var a agg
		for _, c := range append(w, cur) {
			if !in(c) {
				continue
			}
			a.n++
			if serr(c) {
				a.s++
			}
			if rerr(c) {
				a.r++
			}
			if other(c) {
				a.other++
			}
		}
		return a
	}
	h := count(tw, host, srv)
	s := count(tw, srv, func(c *cn) bool { return !host(c) })
	hh := count(hw, host, srv)
	hp := count(hw, host, func(c *cn) bool { return c.f.OrigPort == cur.f.OrigPort })
	hs := count(hw, srv, func(c *cn) bool { return !host(c) })
	return TrafficFeatures{Count: h.n, SrvCount: s.n, SerrorRate: h.s / h.n, SrvSerrorRate: s.s / s.n,
		RerrorRate: h.r / h.n, SrvRerrorRate: s.r / s.n, SameSrvRate: h.other / h.n, DiffSrvRate: (h.n - h.other) / h.n,
		SrvDiffHostRate: s.other / s.n, DstHostCount: hh.n, DstHostSrvCount: hs.n, DstHostSameSrvRate: hh.other / hh.n,
		DstHostDiffSrvRate: (hh.n - hh.other) / hh.n, DstHostSameSrcPortRate: hp.other / hp.n,
		DstHostSrvDiffHostRate: hs.other / hs.n, DstHostSerrorRate: hh.s / hh.n, DstHostSrvSerrorRate: hs.s / hs.n,
		DstHostRerrorRate: hh.r / hh.n, DstHostSrvRerrorRate: hs.r / hs.n}
}

// TestTrafficNaive compares Observe with a direct scan by the definitions
// (naive) on 1,500 random flows among 6 hosts and 5 ports, starts slightly
// out of order, some interim records, and a burst of 700 connections in
// 1 s (over the MaxCount cap).
func TestTrafficNaive(t *testing.T) {
	rng := rand.New(rand.NewSource(1))
	var flows []*pb.Flow
	at := int64(0)
	for i := 0; i < 1500; i++ {
		step := int64(rng.Intn(30e6))
		if i > 600 && i < 1300 {
			step = 1.4e6
		}
		at += step
		f := &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, byte(rng.Intn(3))}, OrigPort: uint32(40000 + rng.Intn(3)),
			RespAddr: []byte{10, 0, 1, byte(rng.Intn(6))}, RespPort: []uint32{22, 80, 443, 4444, 5555}[rng.Intn(5)],
			StartNs: at - int64(rng.Intn(50e6)), OrigPkts: 1, OrigTcpFlags: syn}
		switch rng.Intn(4) {
		case 0:
			f.RespPkts, f.RespTcpFlags = 1, rst|ack // REJ
		case 1:
			f.RespPkts, f.OrigTcpFlags, f.RespTcpFlags = 3, syn|ack|fin, syn|ack|fin // SF
		}
		if rng.Intn(10) == 0 {
			f.RecordIndex = 1
		}
		flows = append(flows, f)
	}
	tr := NewTraffic()
	bad := 0
	for i, f := range flows {
		got := tr.Observe(f).TrafficFeatures
		if i%7 != 0 && i < 1490 { // naive is quadratic: a sample
			continue
		}
		want := naive(flows, i)
		if !close(got, want) {
			bad++
			if bad < 4 {
				t.Errorf("flow %d:\n got %+v\nwant %+v", i, got, want)
			}
		}
		for _, v := range []float64{got.SerrorRate, got.DstHostSrvRerrorRate, got.SrvDiffHostRate} {
			if math.IsNaN(v) || v < 0 || v > 1 {
				t.Fatalf("flow %d: rate %v", i, v)
			}
		}
	}
	if bad > 0 {
		t.Errorf("%d flows differ", bad)
	}
	if n := testing.AllocsPerRun(1000, func() { tr.Observe(flows[5]) }); n != 0 {
		t.Errorf("Observe allocates %v times per flow", n)
	}
}

func close(a, b TrafficFeatures) bool {
	x, y := []float64{a.Count, a.SrvCount, a.SerrorRate, a.SrvSerrorRate, a.RerrorRate, a.SrvRerrorRate, a.SameSrvRate,
		a.DiffSrvRate, a.SrvDiffHostRate, a.DstHostCount, a.DstHostSrvCount, a.DstHostSameSrvRate, a.DstHostDiffSrvRate,
		a.DstHostSameSrcPortRate, a.DstHostSrvDiffHostRate, a.DstHostSerrorRate, a.DstHostSrvSerrorRate, a.DstHostRerrorRate,
		a.DstHostSrvRerrorRate}, []float64{b.Count, b.SrvCount, b.SerrorRate, b.SrvSerrorRate, b.RerrorRate, b.SrvRerrorRate,
		b.SameSrvRate, b.DiffSrvRate, b.SrvDiffHostRate, b.DstHostCount, b.DstHostSrvCount, b.DstHostSameSrvRate,
		b.DstHostDiffSrvRate, b.DstHostSameSrcPortRate, b.DstHostSrvDiffHostRate, b.DstHostSerrorRate,
		b.DstHostSrvSerrorRate, b.DstHostRerrorRate, b.DstHostSrvRerrorRate}
	for i := range x {
		if math.Abs(x[i]-y[i]) > 1e-9 {
			return false
		}
	}
	return true
}
