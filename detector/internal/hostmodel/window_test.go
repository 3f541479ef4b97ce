package hostmodel

import "testing"

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
