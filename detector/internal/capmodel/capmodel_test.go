package capmodel

import (
	"net/netip"
	"testing"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/schema/pb"
)

// TestLabel on hand-built flows and labels: the attacker as originator or
// responder, inside and outside the attack's time range; spoofed sources
// labelled by the victim; a label naming no address is not labelled; a
// benign capture labels nothing.
func TestLabel(t *testing.T) {
	a := func(s string) []byte { return netip.MustParseAddr(s).AsSlice() }
	fl := func(o, r string, start int64) *pb.Flow {
		return &pb.Flow{Proto: 6, OrigAddr: a(o), RespAddr: a(r), StartNs: start}
	}
	lab := hostmodel.Capture{File: "lab/x.pcap", Attacks: []hostmodel.Attack{
		{Attacker: netip.MustParseAddr("10.99.1.10"), Start: 100, End: 200},
		{Spoofed: true, Victim: netip.MustParseAddr("10.99.1.20"), Start: 300, End: 400},
	}}
	for _, c := range []struct {
		f    *pb.Flow
		want bool
	}{
		{fl("10.99.1.10", "10.99.1.20", 150), true},  // attacker, in range
		{fl("10.99.1.20", "10.99.1.10", 150), true},  // attacker as responder
		{fl("10.99.1.10", "10.99.1.20", 250), false}, // attacker, between the two attacks
		{fl("10.99.1.30", "10.99.1.20", 150), false}, // a client of the victim during the first attack
		{fl("198.18.7.7", "10.99.1.20", 350), true},  // spoofed source to the victim in range
		{fl("198.18.7.7", "10.99.1.20", 450), false}, // after the range
		{fl("10.99.1.30", "10.99.1.40", 350), false}, // bystanders
	} {
		if got := Label(lab, c.f); got != c.want {
			t.Errorf("%v -> %v at %d: %v, want %v", c.f.OrigAddr, c.f.RespAddr, c.f.StartNs, got, c.want)
		}
	}
	if !Labelled(lab) || !Labelled(hostmodel.Capture{Benign: true}) {
		t.Error("labelled captures refused")
	}
	for _, c := range []hostmodel.Capture{
		{Attacks: []hostmodel.Attack{{Victim: netip.MustParseAddr("172.16.0.107")}}}, // attacker by MAC only, not spoofed
		{Attacks: []hostmodel.Attack{{Spoofed: true}}},                               // no victim address
		{}, // an attack capture without attacks
	} {
		if Labelled(c) {
			t.Errorf("%+v labelled", c)
		}
	}
	if Label(hostmodel.Capture{Benign: true}, fl("10.99.1.10", "10.99.1.20", 150)) {
		t.Error("a benign capture's flow labelled attack")
	}
}

// TestCap: at most max records per capture, evenly spaced (every k-th),
// all of a capture below it; max 0 keeps everything.
func TestCap(t *testing.T) {
	var fs []Flow
	for i := 0; i < 10; i++ {
		fs = append(fs, Flow{Capture: "big", Record: model.Record{X: model.Features{SrcBytes: float64(i)}}})
	}
	fs = append(fs, Flow{Capture: "small", Record: model.Record{X: model.Features{SrcBytes: 100}}})
	got := Cap(fs, 5)
	var bytes []float64
	for _, r := range got {
		bytes = append(bytes, r.X.SrcBytes)
	}
	if want := []float64{0, 2, 4, 6, 8, 100}; len(bytes) != len(want) {
		t.Fatalf("capped %v, want %v", bytes, want)
	} else {
		for i := range want {
			if bytes[i] != want[i] {
				t.Fatalf("capped %v, want %v", bytes, want)
			}
		}
	}
	if n := len(Cap(fs, 0)); n != 11 {
		t.Errorf("max 0: %d records", n)
	}
}
