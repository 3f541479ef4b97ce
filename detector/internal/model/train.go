package model

import (
	"bufio"
	"fmt"
	"io"
	"math"
	"os"
	"strconv"
	"strings"

	"github.com/sjwhitworth/golearn/trees"
)

// Record is one labelled training or test row.
type Record struct {
	X      Features
	Attack bool
	Label  string // the NSL-KDD label, e.g. "normal", "neptune"
}

// ReadKDD reads NSL-KDD records (CSV, no header, 41 features, label,
// difficulty; see shared/data/labeled/README.md: KDDTrain+ and KDDTest+
// have 43 columns, a file without the difficulty 42) and keeps the Features
// netwatch computes from flows (basic columns, land and the 19 traffic
// columns; wrong_fragment, urgent and the content columns are dropped). Every label but "normal" is an attack.
//
// Lines end in \r\n, \n or a lone \r (scanLines); blank lines are
// skipped. Errors, naming the line (1-based) and column: a row of other
// than 42 or 43 columns, a numeric column that does not parse or is NaN,
// ±Inf or negative (every NSL-KDD numeric column is a duration, a byte
// count, a flag, a count or a rate, all ≥ 0), an unknown protocol or flag,
// and a file without any record.
func ReadKDD(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	sc.Split(scanLines)
	line := 0
	for sc.Scan() {
		line++
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		c := strings.Split(s, ",")
		if len(c) != 42 && len(c) != 43 {
			return nil, fmt.Errorf("nsl-kdd line %d: %d columns, want 42 or 43", line, len(c))
		}
		num := func(i int) (float64, error) {
			v, err := strconv.ParseFloat(strings.TrimSpace(c[i]), 64)
			if err != nil {
				return 0, fmt.Errorf("nsl-kdd line %d column %d: %w", line, i+1, err)
			}
			if math.IsNaN(v) || math.IsInf(v, 0) || v < 0 {
				return 0, fmt.Errorf("nsl-kdd line %d column %d: %q: want a finite number ≥ 0", line, i+1, c[i])
			}
			return v, nil
		}
		var rec Record
		var err error
		if rec.X.Duration, err = num(0); err != nil {
			return nil, err
		}
		if rec.X.SrcBytes, err = num(4); err != nil {
			return nil, err
		}
		if rec.X.DstBytes, err = num(5); err != nil {
			return nil, err
		}
		if rec.X.Land, err = num(6); err != nil {
			return nil, err
		}
		for i := 4; i < NumNumeric; i++ { // the traffic columns, 23-41
			v, err := num(22 + i - 4)
			if err != nil {
				return nil, err
			}
			rec.X.setNum(i, v)
		}
		rec.X.Protocol, rec.X.Service, rec.X.Flag = c[1], c[2], c[3]
		if !contains(Services, rec.X.Service) {
			rec.X.Service = "other"
		}
		if !contains(Protocols, rec.X.Protocol) || !contains(Flags, rec.X.Flag) {
			return nil, fmt.Errorf("nsl-kdd line %d: unknown protocol %q or flag %q", line, c[1], c[3])
		}
		rec.Label = c[41]
		rec.Attack = rec.Label != "normal"
		out = append(out, rec)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read nsl-kdd: %w", err)
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("nsl-kdd: no records (%d lines)", line)
	}
	return out, nil
}

// scanLines is a bufio.SplitFunc like bufio.ScanLines that also ends a
// line at a lone \r (classic Mac line endings), so such a file is read
// line by line instead of as one long row: a line ends at \r\n, \n or \r.
func scanLines(data []byte, atEOF bool) (advance int, token []byte, err error) {
	for i, b := range data {
		switch b {
		case '\n':
			return i + 1, data[:i], nil
		case '\r':
			if i+1 < len(data) {
				if data[i+1] == '\n' {
					return i + 2, data[:i], nil
				}
				return i + 1, data[:i], nil
			}
			if atEOF {
				return i + 1, data[:i], nil
			}
			return 0, nil, nil // need one more byte: \r\n or a lone \r
		}
	}
	if atEOF && len(data) > 0 {
		return len(data), data, nil
	}
	return 0, nil, nil
}

// ReadKDDFile is ReadKDD on a file.
func ReadKDDFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read nsl-kdd: %w", err)
	}
	defer f.Close()
	recs, err := ReadKDD(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

// Split is the deterministic train/test split used when no separate test
// file is given: every fifth record (index % 5 == 4) is held out, so 80 % /
// 20 % with the class mix of the file.
func Split(recs []Record) (train, test []Record) {
	for i, r := range recs {
		if i%5 == 4 {
			test = append(test, r)
		} else {
			train = append(train, r)
		}
	}
	return train, test
}

// Train fits golearn's ID3 decision tree (information gain, numeric splits
// for the float attributes) on recs. prune is golearn's held-out prune ratio
// (0 disables pruning; pruning draws a random split, so 0 keeps training
// deterministic).
func Train(recs []Record, prune float64, name string) (*Tree, error) {
	if len(recs) == 0 {
		return nil, fmt.Errorf("train: no records")
	}
	a := newAttrs()
	g := a.newGrid(len(recs))
	for i, r := range recs {
		class := ClassNormal
		if r.Attack {
			class = ClassAttack
		}
		g.set(i, r.X, class)
	}
	id3 := trees.NewID3DecisionTree(prune)
	if err := id3.Fit(g.inst); err != nil {
		return nil, fmt.Errorf("train id3: %w", err)
	}
	t := &Tree{id3: id3, a: a, Meta: Meta{Name: name, FeatureSet: FeatureSet, TrainRows: len(recs), Prune: prune}}
	if err := t.prepare(); err != nil {
		return nil, fmt.Errorf("train id3: %w", err)
	}
	return t, nil
}

// Evaluation is a binary confusion matrix with attack as the positive class.
type Evaluation struct {
	N, TP, FP, TN, FN int
	Accuracy          float64
	Precision         float64 // TP / (TP + FP)
	Recall            float64 // TP / (TP + FN)
	F1                float64
}

// Evaluate predicts every record with t and counts the outcomes.
func Evaluate(t *Tree, recs []Record) (Evaluation, error) {
	xs := make([]Features, len(recs))
	for i, r := range recs {
		xs[i] = r.X
	}
	pred, err := t.Predict(xs)
	if err != nil {
		return Evaluation{}, err
	}
	var e Evaluation
	e.N = len(recs)
	for i, r := range recs {
		p := pred[i] == ClassAttack
		switch {
		case p && r.Attack:
			e.TP++
		case p && !r.Attack:
			e.FP++
		case !p && r.Attack:
			e.FN++
		default:
			e.TN++
		}
	}
	div := func(a, b int) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	e.Accuracy = div(e.TP+e.TN, e.N)
	e.Precision = div(e.TP, e.TP+e.FP)
	e.Recall = div(e.TP, e.TP+e.FN)
	if e.Precision+e.Recall > 0 {
		e.F1 = 2 * e.Precision * e.Recall / (e.Precision + e.Recall)
	}
	return e, nil
}

func (e Evaluation) String() string {
	return fmt.Sprintf("n=%d accuracy=%.4f precision=%.4f recall=%.4f f1=%.4f (tp=%d fp=%d tn=%d fn=%d)",
		e.N, e.Accuracy, e.Precision, e.Recall, e.F1, e.TP, e.FP, e.TN, e.FN)
}

// The novelty forest of TrainNSLKDD: golearn's isolation forest with 100
// trees of at most 10 levels on sub-samples of 256 records (Liu et al.
// 2008 use 100 trees and 256), threshold at the 0.99 quantile of the
// normal training records' scores. Chosen on the whole-attack-type
// hold-out of KDDTrain+_20Percent (models/README.md), never on test data.
const (
	NoveltyTrees     = 50
	NoveltyMaxDepth  = 8
	NoveltySubSample = 256
	NoveltyQuantile  = 0.99
)

// TrainNSLKDD trains the shipped flow model on NSL-KDD records: the
// binary ID3 tree (Train, no pruning), the 5-class ID3 tree (PartClasses)
// and the novelty forest fitted on the normal records (PartNovelty).
func TrainNSLKDD(recs []Record, name string) (*Tree, error) {
	t, err := Train(recs, 0, name)
	if err != nil {
		return nil, err
	}
	if t.class5, err = trainClasses(recs); err != nil {
		return nil, err
	}
	var normal []Features
	for _, r := range recs {
		if !r.Attack {
			normal = append(normal, r.X)
		}
	}
	if t.nov, err = FitNovelty(normal, NoveltyTrees, NoveltyMaxDepth, NoveltySubSample, NoveltyQuantile); err != nil {
		return nil, err
	}
	t.Meta.Parts = []string{PartNovelty, PartClasses}
	if err := t.prepare(); err != nil {
		return nil, fmt.Errorf("train: %w", err)
	}
	return t, nil
}
