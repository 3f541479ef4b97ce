package model

import (
	"testing"

	"netwatch/schema/pb"
)

// benchFlows is a mix of the flows a detector sees: SYN probes (S0, REJ),
// SYN-ACK reflection, SSH, DNS and HTTPS conversations, ICMP echo.
var benchFlows = []*pb.Flow{
	{Proto: 6, RespPort: 80, StartNs: 1, EndNs: 1, OrigPkts: 1, OrigTcpFlags: 0x02},
	{Proto: 6, RespPort: 4444, StartNs: 1, EndNs: 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14},
	{Proto: 6, RespPort: 51000, StartNs: 1, EndNs: 1, OrigPkts: 1, OrigTcpFlags: 0x12},
	{Proto: 6, RespPort: 22, StartNs: 0, EndNs: 2e9, OrigPkts: 14, RespPkts: 12, OrigBytes: 1400, RespBytes: 2500,
		OrigTcpFlags: 0x1b, RespTcpFlags: 0x1b, ConnState: "SF"},
	{Proto: 17, RespPort: 53, StartNs: 0, EndNs: 2e7, OrigPkts: 1, RespPkts: 1, OrigBytes: 42, RespBytes: 92},
	{Proto: 6, RespPort: 443, StartNs: 0, EndNs: 3e8, OrigPkts: 20, RespPkts: 30, OrigBytes: 2000, RespBytes: 38000,
		OrigTcpFlags: 0x1b, RespTcpFlags: 0x1b},
	{Proto: 1, IcmpType: 8, StartNs: 0, EndNs: 1e6, OrigPkts: 1, RespPkts: 1, OrigBytes: 56, RespBytes: 56},
	{Proto: 6, RespPort: 8080, StartNs: 1, EndNs: 1, OrigPkts: 1, OrigTcpFlags: 0x02},
}

// BenchmarkScore is the model's cost per flow (feature extraction and tree).
func BenchmarkScore(b *testing.B) {
	m, err := Load(shipped)
	if err != nil {
		b.Fatal(err)
	}
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if _, err := m.Score(benchFlows[i%len(benchFlows)]); err != nil {
			b.Fatal(err)
		}
		i++
	}
}

// BenchmarkTrafficObserve is the traffic features' cost per flow
// (Traffic.Observe over the benchFlows mix, windows full).
func BenchmarkTrafficObserve(b *testing.B) {
	tr := NewTraffic()
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		tr.Observe(benchFlows[i%len(benchFlows)])
		i++
	}
}

// BenchmarkNovelty is the novelty forest's cost per scored record.
func BenchmarkNovelty(b *testing.B) {
	m, err := Load(shipped)
	if err != nil {
		b.Fatal(err)
	}
	x := Extract(benchFlows[3])
	b.ReportAllocs()
	for b.Loop() {
		m.nov.Score(&x)
	}
}
