// Package report is the JSON evaluation report that `detector evaluate`
// prints for every model: one object with a top-level binary_accuracy
// (0-1), per-class precision, recall and F1, and the confusion matrix
// (issue 5's contract).
package report

// Class holds one class's figures. Precision is TP / (TP + FP), recall
// TP / (TP + FN), F1 their harmonic mean; 0 when undefined (no prediction
// or no record of the class). Support is the number of records of the class.
type Class struct {
	Precision float64 `json:"precision"`
	Recall    float64 `json:"recall"`
	F1        float64 `json:"f1"`
	Support   int     `json:"support"`
}

// Confusion is a confusion matrix: Matrix[i][j] counts records of class
// Labels[i] predicted as Labels[j] (rows actual, columns predicted).
type Confusion struct {
	Labels []string `json:"labels"`
	Matrix [][]int  `json:"matrix"`
}

// Report is the evaluation of one model on one file.
type Report struct {
	Model          string           `json:"model"`
	Format         string           `json:"format"` // nsl-kdd or qnames
	Data           string           `json:"data"`   // the file evaluated
	N              int              `json:"n"`
	BinaryAccuracy float64          `json:"binary_accuracy"` // (TP + TN) / N, attack/tunnel against normal/benign
	Classes        map[string]Class `json:"classes"`
	Confusion      Confusion        `json:"confusion_matrix"`
}

// Binary builds a report of a two-class evaluation: actual[i] and
// predicted[i] are true for the positive class.
func Binary(model, format, data, negative, positive string, actual, predicted []bool) Report {
	var tp, fp, tn, fn int
	for i := range actual {
		switch {
		case actual[i] && predicted[i]:
			tp++
		case !actual[i] && predicted[i]:
			fp++
		case actual[i]:
			fn++
		default:
			tn++
		}
	}
	r := Report{Model: model, Format: format, Data: data, N: len(actual),
		Classes:   map[string]Class{positive: class(tp, fp, fn), negative: class(tn, fn, fp)},
		Confusion: Confusion{Labels: []string{negative, positive}, Matrix: [][]int{{tn, fp}, {fn, tp}}}}
	if r.N > 0 {
		r.BinaryAccuracy = float64(tp+tn) / float64(r.N)
	}
	return r
}

func class(tp, fp, fn int) Class {
	c := Class{Support: tp + fn}
	if tp+fp > 0 {
		c.Precision = float64(tp) / float64(tp+fp)
	}
	if tp+fn > 0 {
		c.Recall = float64(tp) / float64(tp+fn)
	}
	if c.Precision+c.Recall > 0 {
		c.F1 = 2 * c.Precision * c.Recall / (c.Precision + c.Recall)
	}
	return c
}

// Multi builds a report of a multi-class evaluation over labels (the
// confusion matrix's order); binary_accuracy counts a record right when
// its actual and predicted classes are both negative or both not
// negative (attack vs normal, whatever the attack class).
func Multi(model, format, data, negative string, labels, actual, predicted []string) Report {
	idx := map[string]int{}
	for i, l := range labels {
		idx[l] = i
	}
	m := make([][]int, len(labels))
	for i := range m {
		m[i] = make([]int, len(labels))
	}
	right := 0
	for i := range actual {
		a, okA := idx[actual[i]]
		p, okP := idx[predicted[i]]
		if okA && okP {
			m[a][p]++
		}
		if (actual[i] == negative) == (predicted[i] == negative) {
			right++
		}
	}
	r := Report{Model: model, Format: format, Data: data, N: len(actual), Classes: map[string]Class{},
		Confusion: Confusion{Labels: labels, Matrix: m}}
	for i, l := range labels {
		tp, fp, fn := m[i][i], 0, 0
		for j := range labels {
			if j != i {
				fp += m[j][i]
				fn += m[i][j]
			}
		}
		r.Classes[l] = class(tp, fp, fn)
	}
	if r.N > 0 {
		r.BinaryAccuracy = float64(right) / float64(r.N)
	}
	return r
}
