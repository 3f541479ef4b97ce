package flow

import (
	"testing"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

// FuzzBatch decodes arbitrary bytes as a PacketBatch (as the consumer does)
// and runs its packets through a table: no panic, and every accounted packet
// appears in exactly one record. Seeds: a TCP handshake, an ICMP echo pair,
// addresses of mixed length.
func FuzzBatch(f *testing.F) {
	for _, ps := range [][]*pb.PacketSummary{
		handshake(),
		{icmp(sec(0), hostA, hostB, 8, 0), icmp(sec(1), hostB, hostA, 0, 0)},
		{{TsNs: 1, SrcAddr: hostA, DstAddr: make([]byte, 16), Proto: 6}},
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
		tb := NewTable(cfg, func(r Record) { pkts += r.Flow.OrigPkts + r.Flow.RespPkts })
		for _, p := range b.Packets {
			tb.Add(p, nil)
		}
		tb.Flush(pb.EndReason_END_EOF)
		if want := uint64(len(b.Packets)) - tb.Skipped; pkts != want {
			t.Fatalf("records hold %d packets, want %d", pkts, want)
		}
		if tb.Len() != 0 {
			t.Fatalf("%d flows left after flush", tb.Len())
		}
	})
}
