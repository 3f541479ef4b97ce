package flow

import (
	"math"
	"testing"

	"google.golang.org/protobuf/proto"

	"netwatch/enricher/internal/names"
	"netwatch/schema/pb"
)

// FuzzBatch decodes arbitrary bytes as a PacketBatch (as the consumer does)
// and runs its packets through a table with features, passive DNS names and
// a flow limit of 3 on: no panic, every accounted packet appears in exactly
// one record, no feature is NaN, Inf or negative, no record ends before it
// starts. Seeds: a TCP handshake, an ICMP echo pair, addresses of mixed
// length, a DNS response with a CNAME loop and a bad address.
func FuzzBatch(f *testing.F) {
	for _, ps := range [][]*pb.PacketSummary{
		handshake(),
		{icmp(sec(0), hostA, hostB, 8, 0), icmp(sec(1), hostB, hostA, 0, 0)},
		{{TsNs: 1, SrcAddr: hostA, DstAddr: make([]byte, 16), Proto: 6}},
		{{TsNs: 5, SrcAddr: hostB, DstAddr: hostA, Proto: 17, SrcPort: 53, DstPort: 5000, DnsResponse: true,
			DnsAnswers: []*pb.DNSAnswer{{Name: "a", Type: 5, Target: "b"}, {Name: "b", Type: 5, Target: "a"},
				{Name: "b", Type: 1, Addr: hostB}, {Name: "c", Type: 28, Addr: []byte{1, 2, 3}}}},
			{TsNs: 4, SrcAddr: hostA, DstAddr: hostB, Proto: 6, SrcPort: 5000, DstPort: 80, TcpFlags: syn}},
	} {
		b, _ := proto.Marshal(&pb.PacketBatch{Sensor: "s", Packets: ps})
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		var b pb.PacketBatch
		if proto.Unmarshal(data, &b) != nil {
			return
		}
		var pkts uint64
		cfg := DefaultConfig()
		cfg.CloseLinger = 0
		cfg.Features, cfg.Names, cfg.Limit = true, names.New(names.Config{Max: 4}), &Limit{Max: 3}
		tb := NewTable(cfg, func(r Record) {
			pkts += r.Flow.OrigPkts + r.Flow.RespPkts
			for k, v := range r.Flow.Features {
				if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
					t.Fatalf("feature %s = %v", k, v)
				}
			}
			if r.Flow.EndNs < r.Flow.StartNs {
				t.Fatalf("record ends %d before it starts %d", r.Flow.EndNs, r.Flow.StartNs)
			}
		})
		for _, p := range b.Packets {
			tb.Add(p, nil)
		}
		tb.Flush(pb.EndReason_END_EOF)
		if want := uint64(len(b.Packets)) - tb.Skipped; pkts != want {
			t.Fatalf("records hold %d packets, want %d", pkts, want)
		}
		if tb.Len() != 0 || cfg.Limit.Open != 0 {
			t.Fatalf("%d flows left after flush", tb.Len())
		}
	})
}
