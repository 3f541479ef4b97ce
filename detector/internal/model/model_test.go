package model

import (
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"netwatch/schema/pb"
)

// shipped is the model file committed in detector/models.
const shipped = "../../models/flow-id3.model"

func kdd(t *testing.T) string {
	t.Helper()
	p := filepath.Join("..", "..", "..", "..", "shared", "data", "labeled", "nsl-kdd", "KDDTrain+_20Percent.txt")
	if v := os.Getenv("NETWATCH_SHARED"); v != "" {
		p = filepath.Join(v, "data", "labeled", "nsl-kdd", "KDDTrain+_20Percent.txt")
	}
	if _, err := os.Stat(p); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("NSL-KDD not found: %v", err)
		}
		t.Skipf("NSL-KDD not found: %v", err)
	}
	return p
}

func TestShippedModelScores(t *testing.T) {
	m, err := Load(shipped)
	if err != nil {
		t.Fatal(err)
	}
	if m.Name() != "flow-id3" || m.Meta.FeatureSet != FeatureSet {
		t.Fatalf("meta = %+v", m.Meta)
	}
	// A SYN scan (NSL-KDD neptune/portsweep: flag S0, service private, many
	// connections to one host in 2 s) and, on a fresh model, HTTP exchanges
	// with one web server (flag SF, http, a few per second).
	var syn *pb.Flow
	var ps float64
	for p := uint32(1000); p < 1100; p++ {
		syn = &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, 1}, OrigPort: 40000, RespAddr: []byte{10, 0, 0, 2}, RespPort: p,
			StartNs: int64(p) * 1e6, EndNs: int64(p) * 1e6, OrigPkts: 1, OrigTcpFlags: 0x02}
		if ps, err = m.Score(syn); err != nil {
			t.Fatal(err)
		}
	}
	if m, err = Load(shipped); err != nil {
		t.Fatal(err)
	}
	var pw float64
	for i := int64(0); i < 10; i++ {
		web := &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, 1}, OrigPort: uint32(50000 + i), RespAddr: []byte{10, 0, 0, 2},
			RespPort: 80, StartNs: i * 5e8, EndNs: i*5e8 + 2e8, OrigPkts: 6, RespPkts: 6, OrigBytes: 230, RespBytes: 1800,
			OrigTcpFlags: 0x13, RespTcpFlags: 0x13}
		if pw, err = m.Score(web); err != nil {
			t.Fatal(err)
		}
	}
	t.Logf("score: 100th S0 probe %.3f, 10th http exchange %.3f", ps, pw)
	if ps < 0.9 || pw >= 0.5 {
		t.Errorf("scores: S0 probe %.3f (want >= 0.9), http exchange %.3f (want < 0.5: normal)", ps, pw)
	}
	if x := Extract(syn); x.Flag != "S0" || x.Service != "private" || x.Protocol != "tcp" {
		t.Errorf("features = %+v", x)
	}
}

// TestShippedModelAccuracy evaluates the shipped model on the held-out fifth
// of KDDTrain+_20Percent (the split it was not trained on). Floor: 95 %
// accuracy, 95 % precision, 95 % recall (trained: 97.5 / 97.6 / 97.0).
func TestShippedModelAccuracy(t *testing.T) {
	recs, err := ReadKDDFile(kdd(t))
	if err != nil {
		t.Fatal(err)
	}
	if len(recs) != 25192 {
		t.Fatalf("records = %d, want 25192 (README.md)", len(recs))
	}
	_, test := Split(recs)
	m, err := Load(shipped)
	if err != nil {
		t.Fatal(err)
	}
	e, err := Evaluate(m, test)
	if err != nil {
		t.Fatal(err)
	}
	t.Log(e)
	if e.Accuracy < 0.95 || e.Precision < 0.95 || e.Recall < 0.95 {
		t.Errorf("evaluation below floor: %s", e)
	}
}

// TestTrainSaveLoad trains the shipped design (TrainNSLKDD: binary tree,
// novelty forest, 5-class tree) on the training split and checks that the
// saved and loaded model scores and classes every held-out row exactly as
// the trained one (the compiled walks are deterministic).
func TestTrainSaveLoad(t *testing.T) {
	recs, err := ReadKDDFile(kdd(t))
	if err != nil {
		t.Fatal(err)
	}
	train, test := Split(recs)
	m, err := TrainNSLKDD(train, "t")
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(t.TempDir(), "m.model")
	if err := m.Save(p); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(p)
	if err != nil {
		t.Fatal(err)
	}
	if m2.nov == nil || m2.root5 == nil || m2.nov.Threshold != m.nov.Threshold {
		t.Fatalf("loaded parts: novelty %v, 5-class tree %v", m2.nov != nil, m2.root5 != nil)
	}
	for i, r := range test {
		s1, _ := m.ScoreFeatures(r.X)
		s2, _ := m2.ScoreFeatures(r.X)
		if s1 != s2 || m.PredictClass(r.X) != m2.PredictClass(r.X) {
			t.Fatalf("row %d: trained %v %s, loaded %v %s", i, s1, m.PredictClass(r.X), s2, m2.PredictClass(r.X))
		}
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.model")
	os.WriteFile(bad, []byte("not a model"), 0o644)
	for _, p := range []string{filepath.Join(dir, "missing.model"), bad} {
		if _, err := Load(p); err == nil {
			t.Errorf("Load(%s): no error", p)
		}
	}
	// A model of the previous feature set (the six basic columns) is
	// refused with a message naming both feature sets.
	var recs []Record
	for i := 0; i < 20; i++ {
		recs = append(recs, Record{X: Features{Protocol: "tcp", Service: "http", Flag: []string{"SF", "S0"}[i%2]}, Attack: i%2 == 1})
	}
	old, err := Train(recs, 0, "old")
	if err != nil {
		t.Fatal(err)
	}
	old.Meta.FeatureSet = "kdd6-v1: duration,protocol_type,service,flag,src_bytes,dst_bytes"
	op := filepath.Join(dir, "old.model")
	if err := old.Save(op); err != nil {
		t.Fatal(err)
	}
	_, err = Load(op)
	if !errors.Is(err, ErrModel) || !strings.Contains(fmt.Sprint(err), "kdd6-v1") || !strings.Contains(fmt.Sprint(err), "kdd26-v2") {
		t.Errorf("old feature set: %v", err)
	}
}

// TestCompiledMatchesGolearn checks Score's compiled walk against golearn's
// PredictProba on every held-out NSL-KDD record and on the feature grid of
// every protocol, service and flag with a few durations and byte counts.
// Where golearn meets a value no child has, it picks a child in map order,
// so such rows may legitimately differ: at most 1 in 1000.
func TestCompiledMatchesGolearn(t *testing.T) {
	m, err := Load(shipped)
	if err != nil {
		t.Fatal(err)
	}
	var xs []Features
	for _, p := range Protocols {
		for _, s := range Services {
			for _, f := range Flags {
				for _, n := range []float64{0, 1, 45, 300, 5000} {
					xs = append(xs, Features{Protocol: p, Service: s, Flag: f, Duration: n / 100, SrcBytes: n, DstBytes: n * 3})
				}
			}
		}
	}
	recs, err := ReadKDDFile(kdd(t))
	if err != nil {
		t.Fatal(err)
	}
	_, test := Split(recs)
	for _, r := range test {
		xs = append(xs, r.X)
	}
	diff, fallback := 0, 0
	for _, x := range xs {
		want, err := m.scoreGolearn(x)
		if err != nil {
			t.Fatal(err)
		}
		got := m.root.walk(&x) // the binary tree alone (ScoreFeatures adds the novelty part)
		if !m.root.exact(&x) {
			fallback++
			continue // golearn's choice is random here
		}
		if got != want {
			diff++
			if diff < 5 {
				t.Errorf("%+v: compiled %v, golearn %v", x, got, want)
			}
		}
	}
	t.Logf("%d rows, %d reach a value no child has", len(xs), fallback)
	if diff > 0 {
		t.Errorf("compiled tree and golearn disagree on %d of %d rows", diff, len(xs)-fallback)
	}
	if n := testing.AllocsPerRun(100, func() { m.Score(benchFlows[0]) }); n != 0 {
		t.Errorf("Score allocates %v times per flow, want 0", n)
	}
}

// exact reports whether x reaches a leaf without golearn's fallback for a
// value that no child has.
func (n *node) exact(x *Features) bool {
	for n.feature != leaf {
		var v string
		switch n.feature {
		case fProtocol:
			v = x.Protocol
		case fService:
			v = x.Service
		case fFlag:
			v = x.Flag
		default:
			v = "0"
			if x.Num(n.feature-fNum) > n.split {
				v = "1"
			}
		}
		next, ok := n.children[v]
		if !ok {
			return false
		}
		n = next
	}
	return true
}

// TestHoldOutTypes: the 5-class whole-attack-type hold-out on
// KDDTrain+_20Percent.txt. Supports are hand counts of the file's labels
// (`cut -d, -f42 | sort | uniq -c`, grouped by the KDD Cup 99 categories:
// dos 8282+529+196+188+38+1, probe 710+691+587+301, r2l
// 181+10+7+5+2+2+1+1, u2r 6+4+1) and of its held-out normal records (awk
// 'NR%5==0 && $42=="normal"': 2,691): every attack record is tested once,
// with its type absent from its fold's training data.
func TestHoldOutTypes(t *testing.T) {
	recs, err := ReadKDDFile(kdd(t))
	if err != nil {
		t.Fatal(err)
	}
	rep, folds, err := HoldOutTypes(recs, "KDDTrain+_20Percent.txt")
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]int{CatNormal: 2691, CatDoS: 9234, CatProbe: 2289, CatR2L: 209, CatU2R: 11}
	for c, n := range want {
		if rep.Classes[c].Support != n {
			t.Errorf("%s support %d, want %d", c, rep.Classes[c].Support, n)
		}
	}
	if rep.N != 14434 {
		t.Errorf("n %d, want 14,434", rep.N)
	}
	held := map[string]int{}
	for _, f := range folds {
		for _, ty := range f.HeldOut {
			held[ty]++
		}
	}
	if len(held) != 21 { // the 21 attack labels of the file
		t.Errorf("%d attack types held out, want 21: %v", len(held), held)
	}
	for ty, n := range held {
		if n != 1 {
			t.Errorf("%s held out in %d folds", ty, n)
		}
	}
	// binary accuracy from the matrix: normal row and column.
	m := rep.Confusion.Matrix
	right := m[0][0]
	for i := 1; i < len(m); i++ {
		for j := 1; j < len(m); j++ {
			right += m[i][j]
		}
	}
	if got := float64(right) / float64(rep.N); math.Abs(got-rep.BinaryAccuracy) > 1e-12 {
		t.Errorf("binary accuracy %v, matrix says %v", rep.BinaryAccuracy, got)
	}
	t.Logf("hold-out types: binary accuracy %.4f; %+v; matrix %v", rep.BinaryAccuracy, rep.Classes, m)
}

// TestScoreEdgeFlows: issue 5 "unseen categories, constant columns,
// single-packet flows: scored without error, no NaN". The shipped model
// scores flows whose protocol (SCTP, GRE, ICMPv6), port (65000, 0) and
// Zeek conn_state ("XX") it never saw, single-packet and empty flows, and
// huge counters, each to a number in [0, 1]; a tree trained on records
// whose duration and byte columns are constant (all 0) trains and scores
// the same way.
func TestScoreEdgeFlows(t *testing.T) {
	m, err := Load(shipped)
	if err != nil {
		t.Fatal(err)
	}
	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	flows := []*pb.Flow{
		{},
		{Proto: 132, OrigAddr: a, RespAddr: b, OrigPort: 5000, RespPort: 38412, OrigPkts: 1},
		{Proto: 47, OrigAddr: a, RespAddr: b, OrigPkts: 1},
		{Proto: 58, OrigAddr: a, RespAddr: b, IcmpType: 135, OrigPkts: 1},
		{Proto: 6, OrigAddr: a, RespAddr: b, RespPort: 65000, OrigPkts: 1, OrigTcpFlags: 0x02, ConnState: "XX"},
		{Proto: 17, OrigAddr: a, RespAddr: b, RespPort: 0, OrigPkts: 1, StartNs: 5, EndNs: 5},
		{Proto: 6, OrigAddr: a, RespAddr: b, RespPort: 80, StartNs: 0, EndNs: math.MaxInt64, OrigPkts: math.MaxUint64,
			RespPkts: math.MaxUint64, OrigBytes: math.MaxUint64, RespBytes: math.MaxUint64, OrigTcpFlags: 0xff, RespTcpFlags: 0xff},
		{Proto: 6, OrigAddr: a, RespAddr: b, RespPort: 22, StartNs: 10, EndNs: 1, OrigPkts: 1}, // end before start
	}
	for i, f := range flows {
		p, err := m.Score(f)
		if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
			t.Errorf("flow %d (%+v): score %v, %v", i, Extract(f), p, err)
		}
	}
	var recs []Record
	for i := 0; i < 200; i++ {
		x := Features{Protocol: "tcp", Service: "http", Flag: "SF"}
		attack := i%2 == 0
		if attack {
			x.Flag = "S0"
		}
		recs = append(recs, Record{X: x, Attack: attack, Label: map[bool]string{true: "neptune", false: "normal"}[attack]})
	}
	c, err := Train(recs, 0, "constant-columns")
	if err != nil {
		t.Fatalf("train with constant columns: %v", err)
	}
	for i, f := range flows {
		p, err := c.Score(f)
		if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
			t.Errorf("constant-column tree, flow %d: score %v, %v", i, p, err)
		}
	}
	// The shipped design on the same records: every normal record alike, so
	// the novelty forest has nothing to split; it trains or says why.
	full, err := TrainNSLKDD(recs, "constant-columns")
	if err != nil {
		t.Logf("TrainNSLKDD with constant columns: %v", err)
		return
	}
	for i, f := range flows {
		p, err := full.Score(f)
		if err != nil || math.IsNaN(p) || p < 0 || p > 1 {
			t.Errorf("constant-column model, flow %d: score %v, %v", i, p, err)
		}
	}
}

// TestReadKDDInput: ReadKDD on the first five rows of KDDTrain+_20Percent
// (five records, whatever the line endings: \n, \r\n or a lone \r) and on
// malformed copies of them, each refused with an error naming the line.
func TestReadKDDInput(t *testing.T) {
	raw, err := os.ReadFile(kdd(t))
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.SplitN(string(raw), "\n", 6)[:5]
	for _, sep := range []string{"\n", "\r\n", "\r"} {
		recs, err := ReadKDD(strings.NewReader(strings.Join(rows, sep) + sep))
		if err != nil || len(recs) != 5 || recs[0].Label != "teardrop" || recs[4].Label != "normal" {
			t.Errorf("line ending %q: %d records, %v", sep, len(recs), err)
		}
	}
	// 42 columns (no difficulty) is the other valid width
	if recs, err := ReadKDD(strings.NewReader(rows[1][:strings.LastIndex(rows[1], ",")] + "\n")); err != nil || len(recs) != 1 {
		t.Errorf("42 columns: %d records, %v", len(recs), err)
	}
	third := func(edit func([]string) []string) string { // rows with the third one edited
		c := edit(strings.Split(rows[2], ","))
		return strings.Join([]string{rows[0], rows[1], strings.Join(c, ","), rows[3]}, "\n")
	}
	for name, c := range map[string]struct{ in, want string }{
		"empty":         {"", "no records"},
		"blank lines":   {"\n\n \n", "no records"},
		"44 columns":    {third(func(c []string) []string { return append(c, "7") }), "line 3: 44 columns"},
		"41 columns":    {third(func(c []string) []string { return c[:41] }), "line 3: 41 columns"},
		"NaN":           {third(func(c []string) []string { c[4] = "NaN"; return c }), "line 3 column 5"},
		"Inf":           {third(func(c []string) []string { c[5] = "Inf"; return c }), "line 3 column 6"},
		"-Inf":          {third(func(c []string) []string { c[0] = "-Inf"; return c }), "line 3 column 1"},
		"negative":      {third(func(c []string) []string { c[22] = "-1"; return c }), "line 3 column 23"},
		"negative rate": {third(func(c []string) []string { c[40] = "-0.5"; return c }), "line 3 column 41"},
		"not a number":  {third(func(c []string) []string { c[31] = "x"; return c }), "line 3 column 32"},
	} {
		recs, err := ReadKDD(strings.NewReader(c.in))
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%s: %d records, error %v, want one containing %q", name, len(recs), err, c.want)
		}
	}
}
