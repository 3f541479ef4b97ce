package store

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

// BenchmarkWriteFlows writes batches of 5000 new flows (the default
// -batch.size) and reports rows/s; SetBytes is the protobuf size of a batch.
func BenchmarkWriteFlows(b *testing.B) {
	s, _ := open(b)
	ctx := context.Background()
	const perBatch = 5000
	start := time.Now().UTC().Truncate(time.Hour)
	mk := func(n int) *pb.FlowBatch {
		fb := &pb.FlowBatch{Sensor: "bench"}
		for i := range perBatch {
			fb.Flows = append(fb.Flows, flow("bench", start.Add(time.Duration(n*perBatch+i)*time.Microsecond), uint32(i), uint32(n)))
		}
		return fb
	}
	b.SetBytes(int64(proto.Size(mk(0))))
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		fb := mk(n)
		b.StartTimer()
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
		if err != nil || res.Inserted != perBatch {
			b.Fatalf("%+v, %v", res, err)
		}
	}
	b.ReportMetric(float64(b.N*perBatch)/b.Elapsed().Seconds(), "rows/s")
}
