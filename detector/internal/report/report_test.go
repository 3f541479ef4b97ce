package report

import (
	"math"
	"testing"
)

// TestBinary: 10 records hand-counted: actual positives 1-4, predicted
// positives 3-6 → tp 2 (3, 4), fp 2 (5, 6), fn 2 (1, 2), tn 4.
func TestBinary(t *testing.T) {
	actual := make([]bool, 10)
	pred := make([]bool, 10)
	for i := 1; i <= 4; i++ {
		actual[i] = true
	}
	for i := 3; i <= 6; i++ {
		pred[i] = true
	}
	r := Binary("m", "qnames", "f", "benign", "tunnel", actual, pred)
	if r.N != 10 || r.BinaryAccuracy != 0.6 || r.Confusion.Matrix[0][0] != 4 || r.Confusion.Matrix[0][1] != 2 ||
		r.Confusion.Matrix[1][0] != 2 || r.Confusion.Matrix[1][1] != 2 {
		t.Errorf("report %+v", r)
	}
	tu, be := r.Classes["tunnel"], r.Classes["benign"]
	if tu.Precision != 0.5 || tu.Recall != 0.5 || tu.F1 != 0.5 || tu.Support != 4 {
		t.Errorf("tunnel %+v", tu)
	}
	// benign: tp 4, fp 2 (predicted benign, actually tunnel), fn 2.
	if math.Abs(be.Precision-4.0/6) > 1e-12 || math.Abs(be.Recall-4.0/6) > 1e-12 || be.Support != 6 {
		t.Errorf("benign %+v", be)
	}
	// No records, no predictions of a class: zeros, not NaN.
	e := Binary("m", "qnames", "f", "benign", "tunnel", nil, nil)
	if e.BinaryAccuracy != 0 || e.Classes["tunnel"].F1 != 0 {
		t.Errorf("empty %+v", e)
	}
}

// TestMulti: 8 records hand-counted over classes n, a, b: actual
// n n n a a b b b, predicted n a n a b b n b → matrix rows n [2 1 0],
// a [0 1 1], b [1 0 2]; a: tp 1, fp 1 (an n), fn 1 (to b); attack vs
// normal right for records 1, 3, 4, 5, 6, 8 (6 of 8).
func TestMulti(t *testing.T) {
	r := Multi("m", "nsl-kdd", "f", "n", []string{"n", "a", "b"},
		[]string{"n", "n", "n", "a", "a", "b", "b", "b"}, []string{"n", "a", "n", "a", "b", "b", "n", "b"})
	want := [][]int{{2, 1, 0}, {0, 1, 1}, {1, 0, 2}}
	for i := range want {
		for j := range want[i] {
			if r.Confusion.Matrix[i][j] != want[i][j] {
				t.Fatalf("matrix %v, want %v", r.Confusion.Matrix, want)
			}
		}
	}
	if r.N != 8 || r.BinaryAccuracy != 0.75 {
		t.Errorf("n %d binary accuracy %v, want 8, 0.75", r.N, r.BinaryAccuracy)
	}
	if a := r.Classes["a"]; a.Precision != 0.5 || a.Recall != 0.5 || a.Support != 2 {
		t.Errorf("a %+v", a)
	}
	// b: tp 2, fp 1 (from a), fn 1 (to n).
	if b := r.Classes["b"]; math.Abs(b.Precision-2.0/3) > 1e-12 || math.Abs(b.Recall-2.0/3) > 1e-12 || b.Support != 3 {
		t.Errorf("b %+v", b)
	}
}
