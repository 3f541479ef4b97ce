package hostmodel

import (
	"math"
	"net/netip"
	"os"
	"testing"

	"github.com/sjwhitworth/golearn/trees"

	"netwatch/schema/pb"
)

const shipped = "../../models/host-iforest.model"

var (
	scanner = []byte{10, 0, 0, 66}
	victim  = []byte{10, 0, 0, 20}
	client  = []byte{10, 0, 0, 5}
)

// TestTrackerCounts: hand-built flows in two windows; the counts are
// hand-computed.
func TestTrackerCounts(t *testing.T) {
	const min = int64(60e9)
	t0 := 1000 * min // aligned
	var flows []*pb.Flow
	// 30 SYN probes from the scanner to 30 ports of the victim: 10
	// unanswered, 20 reset (closed).
	for p := uint32(1); p <= 30; p++ {
		f := &pb.Flow{Proto: 6, OrigAddr: scanner, RespAddr: victim, OrigPort: 40000, RespPort: p, StartNs: t0 + int64(p)*1e6,
			EndNs: t0 + int64(p)*1e6 + 1e5, OrigPkts: 1, OrigTcpFlags: 0x02}
		if p > 10 {
			f.RespPkts, f.RespTcpFlags = 1, 0x14
		}
		flows = append(flows, f)
	}
	// The client fetches a page from the victim twice (port 80), once in
	// the next window.
	for i, at := range []int64{t0 + 5e9, t0 + min + 5e9} {
		_ = i
		flows = append(flows, &pb.Flow{Proto: 6, OrigAddr: client, RespAddr: victim, OrigPort: 50000, RespPort: 80, StartNs: at, EndNs: at + 1e8,
			OrigPkts: 6, RespPkts: 5, OrigBytes: 300, RespBytes: 5000, OrigTcpFlags: 0x1b, RespTcpFlags: 0x1b})
	}
	// ICMP echo from the client to the scanner, unanswered.
	flows = append(flows, &pb.Flow{Proto: 1, OrigAddr: client, RespAddr: scanner, IcmpType: 8, StartNs: t0 + 7e9, EndNs: t0 + 7e9, OrigPkts: 2, OrigBytes: 112})
	ws := Windows(flows, DefaultWindow)
	got := map[string]Counts{}
	for _, w := range ws {
		got[w.Addr.String()+"@"+map[bool]string{true: "0", false: "1"}[w.Start == t0]] = w.Counts
	}
	want := map[string]Counts{
		"10.0.0.66@0": {FlowsOut: 30, PeersOut: 1, PortsOut: 30, FailedOut: 30, PktsOut: 30, FlowsIn: 1, PeersIn: 1, BytesIn: 112},
		"10.0.0.20@0": {FlowsIn: 31, PeersIn: 2, PktsOut: 20 + 5, BytesOut: 5000, BytesIn: 300},
		"10.0.0.5@0":  {FlowsOut: 2, PeersOut: 2, PortsOut: 2, FailedOut: 1, PktsOut: 8, BytesOut: 412, BytesIn: 5000},
		"10.0.0.5@1":  {FlowsOut: 1, PeersOut: 1, PortsOut: 1, PktsOut: 6, BytesOut: 300, BytesIn: 5000},
		"10.0.0.20@1": {FlowsIn: 1, PeersIn: 1, PktsOut: 5, BytesOut: 5000, BytesIn: 300},
	}
	if len(got) != len(want) {
		t.Errorf("windows %v", got)
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%s: %+v, want %+v", k, got[k], w)
		}
	}
	// Live: a window closes once the watermark is a window past its end.
	tr := NewTracker(int64(DefaultWindow), 100)
	var closed []Window
	tr.OnClose = func(w Window) { closed = append(closed, w) }
	for _, f := range flows[:30] {
		tr.Observe("s1", f)
	}
	if c, ok := tr.Current("s1", netip.MustParseAddr("10.0.0.66"), t0+59e9); !ok || c.Counts.PortsOut != 30 {
		t.Errorf("current %+v %v", c, ok)
	}
	tr.Observe("s1", &pb.Flow{Proto: 17, OrigAddr: client, RespAddr: victim, StartNs: t0 + 2*min, EndNs: t0 + 2*min, OrigPkts: 1})
	if len(closed) != 2 || tr.Len() != 2 {
		t.Errorf("closed %d (want the scanner's and victim's first windows), open %d", len(closed), tr.Len())
	}
	// Bounded: a full tracker drops new hosts and counts them.
	small := NewTracker(int64(DefaultWindow), 1)
	small.Observe("s1", flows[0])
	if small.Len() != 1 || small.Dropped != 1 {
		t.Errorf("bounded tracker: %d open, %d dropped", small.Len(), small.Dropped)
	}
}

// TestCompiledMatchesGolearn fits golearn's forest, copies its trees and
// checks Score against golearn's own Predict on every training row and on
// points outside the data.
func TestCompiledMatchesGolearn(t *testing.T) {
	var xs [][NumFeatures]float64
	for i := 0; i < 200; i++ {
		c := Counts{FlowsOut: uint64(i%17 + 1), PeersOut: uint64(i%5 + 1), PortsOut: uint64(i%7 + 1), FailedOut: uint64(i % 3),
			PktsOut: uint64(i*13%101 + 1), BytesOut: uint64(i * 977 % 50000), BytesIn: uint64(i * 7919 % 900000), FlowsIn: uint64(i % 4), PeersIn: uint64(i % 2)}
		xs = append(xs, c.Vector())
	}
	xs = append(xs, Counts{FlowsOut: 5000, PortsOut: 1000, PeersOut: 1, FailedOut: 5000, PktsOut: 5000}.Vector(), Counts{}.Vector())
	p := Params{Trees: 50, MaxDepth: 8, SubSample: 128}
	ifo := trees.NewIsolationForest(p.Trees, p.MaxDepth, p.SubSample)
	ifo.Fit(grid(xs[:200]))
	ts, err := CompileGolearn(&ifo)
	if err != nil {
		t.Fatal(err)
	}
	f := &Forest{Params: p, Trees: ts}
	f.prepare()
	want := golearnPredict(&ifo, xs)
	for i, x := range xs {
		if got := f.Score(x); math.Abs(got-want[i]) > 1e-12 {
			t.Fatalf("row %d: compiled %v, golearn %v", i, got, want[i])
		}
	}
	train := make([]float64, 200)
	for i := range train {
		train[i] = f.Score(xs[i])
	}
	if s, med := f.Score(xs[200]), Quantile(train, 0.5); s <= med {
		t.Errorf("a 1000-port scan scores %.3f, the median training row %.3f", s, med)
	}
}

// TestShippedModel: the shipped file loads, names its feature set, and
// scores edge windows (all zero, huge counts) without NaN.
func TestShippedModel(t *testing.T) {
	f, err := Load(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if f.Name != ModelName || f.Threshold <= 0.5 || f.Threshold >= 1 || f.Quantile != DefaultQuantile || f.Train.Rows != 135 || f.Window != "1m0s" {
		t.Errorf("shipped model: %s threshold %v quantile %v rows %d window %q", f.Name, f.Threshold, f.Quantile, f.Train.Rows, f.Window)
	}
	for _, c := range []Counts{{}, {FlowsOut: math.MaxUint64, BytesOut: math.MaxUint64, FailedOut: math.MaxUint64}, {FlowsIn: 1}} {
		if s := f.Score(c.Vector()); math.IsNaN(s) || s <= 0 || s >= 1 {
			t.Errorf("%+v: score %v", c, s)
		}
	}
	if allocs := testing.AllocsPerRun(100, func() { f.Score(Counts{FlowsOut: 3}.Vector()) }); allocs != 0 {
		t.Errorf("Score allocates %v times", allocs)
	}
}

func TestLoadErrors(t *testing.T) {
	b, err := os.ReadFile(shipped)
	if err != nil {
		t.Fatal(err)
	}
	for name, data := range map[string]string{
		"not json":       "gzip?",
		"other format":   `{"format":"x"}`,
		"feature set":    `{"format":"` + Format + `","feature_set":"v0"}`,
		"no trees":       `{"format":"` + Format + `","feature_set":"` + FeatureSet + `","params":{"sub_sample":256},"threshold":0.6}`,
		"loop":           `{"format":"` + Format + `","feature_set":"` + FeatureSet + `","params":{"sub_sample":256},"threshold":0.6,"trees":[[{"f":0,"l":0,"r":-1}]]}`,
		"bad feature":    `{"format":"` + Format + `","feature_set":"` + FeatureSet + `","params":{"sub_sample":256},"threshold":0.6,"trees":[[{"f":12,"l":-1,"r":-1}]]}`,
		"bad threshold":  `{"format":"` + Format + `","feature_set":"` + FeatureSet + `","params":{"sub_sample":256},"threshold":7,"trees":[[{"f":1,"l":-1,"r":-1}]]}`,
		"truncated file": string(b[:len(b)/2]),
	} {
		if _, err := Parse([]byte(data)); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
	if _, err := Load("no-such-file"); err == nil {
		t.Error("missing file accepted")
	}
}

func TestQuantile(t *testing.T) {
	s := []float64{0.5, 0.1, 0.4, 0.3, 0.2, 0.9, 0.8, 0.7, 0.6, 1.0}
	for q, want := range map[float64]float64{0.95: 1.0, 0.9: 0.9, 0.5: 0.5, 0.01: 0.1, 1: 1.0} {
		if got := Quantile(s, q); got != want {
			t.Errorf("q %v: %v, want %v", q, got, want)
		}
	}
}
