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
