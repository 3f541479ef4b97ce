package publish

import (
	"math/rand/v2"
	"testing"

	"netwatch/schema"
	"netwatch/schema/pb"
)

// TestAddrBucket checks the allocation-free bucket against schema.AddrBucket
// (the definition) on IPv4 and IPv6 addresses.
func TestAddrBucket(t *testing.T) {
	r := rand.New(rand.NewPCG(1, 2))
	for i := range 2000 {
		a := make([]byte, 4+12*(i%2))
		for j := range a {
			a[j] = byte(r.Uint32())
		}
		if got, want := addrBucket(a), schema.AddrBucket(a); got != want {
			t.Fatalf("%x: %d, schema.AddrBucket %d", a, got, want)
		}
	}
}

// TestBatchID checks the reused-buffer batch id against schema.BatchID.
func TestBatchID(t *testing.T) {
	var p Publisher
	for n := 1; n <= 300; n += 37 {
		flows := make([]*pb.Flow, n)
		ids := make([]string, n)
		for i := range flows {
			ids[i] = schema.FlowID("s", 6, []byte{10, 0, 0, 1}, uint32(i), []byte{10, 0, 0, 2}, 80, 0, 0, 0, int64(n), 0)
			flows[i] = &pb.Flow{Id: ids[i]}
		}
		if got, want := p.batchID(flows), schema.BatchID(ids); got != want {
			t.Fatalf("%d flows: %s, schema.BatchID %s", n, got, want)
		}
	}
}
