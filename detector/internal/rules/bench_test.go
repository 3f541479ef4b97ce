package rules

import (
	"testing"
	"time"

	"netwatch/schema/pb"
)

// TestObserveAllocs guards the per-flow path: a conversation, and a probe
// on a key already held, allocate nothing.
func TestObserveAllocs(t *testing.T) {
	e := New(DefaultConfig())
	conv, probe := conversation(443, t0), synProbe(1, t0)
	e.Observe("s1", probe)
	for name, f := range map[string]*pb.Flow{"conversation": conv, "probe, known key": probe} {
		if n := testing.AllocsPerRun(1000, func() { e.Observe("s1", f) }); n != 0 {
			t.Errorf("%s: %v allocations per flow, want 0", name, n)
		}
	}
}

// BenchmarkObserve feeds a SYN flood from spoofed sources (a new key per
// flow: the worst case), a port scan and conversations, 1 ms of packet time
// apart so windows expire as they would in a replay.
func BenchmarkObserve(b *testing.B) {
	const n = 1 << 16
	flows := make([]*pb.Flow, n)
	for i := range flows {
		at := t0 + int64(i)*int64(time.Millisecond)
		switch i % 4 {
		case 0, 1:
			f := synProbe(80, at)
			f.OrigAddr = []byte{byte(i >> 24), byte(i >> 16), byte(i >> 8), byte(i)}
			f.RespPkts, f.RespTcpFlags = 0, 0
			flows[i] = f
		case 2:
			flows[i] = synProbe(uint32(1+i%1000), at)
		default:
			flows[i] = conversation(443, at)
		}
	}
	e := New(DefaultConfig())
	b.ReportAllocs()
	i := 0
	for b.Loop() {
		if i == n {
			b.StopTimer()
			e, i = New(DefaultConfig()), 0
			b.StartTimer()
		}
		e.Observe("s1", flows[i])
		i++
	}
}
