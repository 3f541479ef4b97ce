package hostmodel

import (
	"testing"

	"netwatch/schema/pb"
)

// TestSetReuse: a distinct-value set reset for a reused host state counts
// as a new one: 1, 2, 1 is two values. Before the fix a reset set (whose
// map was kept) left its first value out of the map at the second value
// and counted it again at the third: 3.
func TestSetReuse(t *testing.T) {
	var s set
	for _, v := range []uint64{7, 8, 9} {
		s.add(v)
	}
	s.reset()
	for _, v := range []uint64{1, 2, 1, 2, 1} {
		s.add(v)
	}
	if s.n != 2 {
		t.Fatalf("distinct values of 1, 2, 1, 2, 1 after a reset: %d, want 2", s.n)
	}
}

// TestTrackerSidesLag: a group member's tracker is fed its two sides from
// two work queues; here the responder side (SideIn) runs 3 windows ahead
// of the originator side. Host 10.0.0.1 originates two flows in window 0,
// the second after the responder side's flows of minute 3 (hand count:
// one window, 2 flows out). With one watermark for both sides, window 0
// closed at the responder side's minute 3 with 1 flow out, and the late
// flow opened it again: two windows of 1 flow each under one key (seen in
// the stage's TestGroupHostWindows under load: 1 flow out of 30). Then
// the responder side runs more than MaxSkew windows ahead: windows close
// anyway.
func TestTrackerSidesLag(t *testing.T) {
	min := int64(DefaultWindow)
	flow := func(o, r byte, at int64) *pb.Flow {
		return &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, o}, RespAddr: []byte{10, 0, 0, r}, RespPort: 80,
			StartNs: at, EndNs: at + 1, OrigPkts: 1, RespPkts: 1}
	}
	tr := NewTracker(min, 100)
	tr.Sides = SideOut
	var closed []Window
	tr.OnClose = func(w Window) { closed = append(closed, w) }
	tr.Observe("s", flow(1, 2, 10))
	for m := int64(0); m <= 3; m++ {
		tr.ObserveSide("s", flow(3, 4, m*min+20), SideIn)
	}
	tr.Observe("s", flow(1, 5, 30))
	for _, w := range closed {
		if w.Start == 0 {
			t.Fatalf("window 0 closed while the originator side was at its start: %+v", w)
		}
	}
	tr.Observe("s", flow(1, 2, 3*min+30)) // the originator side catches up: window 0 closes
	var one []Window
	for _, w := range closed {
		if w.Addr.String() == "10.0.0.1" && w.Start == 0 {
			one = append(one, w)
		}
	}
	if len(one) != 1 || one[0].Counts.FlowsOut != 2 || one[0].Counts.PeersOut != 2 {
		t.Fatalf("10.0.0.1's window 0: %+v, want one with 2 flows to 2 peers", one)
	}
	// the responder side alone, MaxSkew+2 windows past the originator
	// side: the originator's window of minute 3 closes without it
	closed = nil
	tr.ObserveSide("s", flow(3, 4, (3+MaxSkew+2)*min+20), SideIn)
	found := false
	for _, w := range closed {
		found = found || (w.Addr.String() == "10.0.0.1" && w.Start == 3*min)
	}
	if !found {
		t.Fatalf("10.0.0.1's window of minute 3 still open with the other side %d windows ahead: closed %+v", MaxSkew+2, closed)
	}
}
