package hostmodel

import (
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"sort"

	"github.com/sjwhitworth/golearn/base"
	"github.com/sjwhitworth/golearn/trees"
)

// ModelName is the name of the shipped model (models/host-iforest.model).
const ModelName = "host-iforest"

// Format is the file format tag of a model file; Load refuses others.
const Format = "netwatch-host-iforest-v1"

// Node is one node of a compiled isolation tree, as golearn builds it:
// a point goes left when x[Feature] <= Threshold. Left/Right are node
// indexes, -1 where golearn stopped growing; there the path ends with
// c(LeftN) or c(RightN) added for the LeftN/RightN training points that
// reached that side (Liu, Ting and Zhou, "Isolation Forest", ICDM 2008,
// eq. 1 and 2).
type Node struct {
	Feature   int     `json:"f"`
	Threshold float64 `json:"t"`
	Left      int     `json:"l"`
	Right     int     `json:"r"`
	LeftN     float64 `json:"ln"`
	RightN    float64 `json:"rn"`
}

// Params are the isolation forest's hyper-parameters (golearn's
// NewIsolationForest arguments).
type Params struct {
	Trees     int `json:"trees"`      // number of trees
	MaxDepth  int `json:"max_depth"`  // height limit; Liu et al. use ceil(log2(SubSample))
	SubSample int `json:"sub_sample"` // points drawn (with replacement, golearn) per tree; also ψ in c(ψ)
}

// DefaultParams: ψ = 256 points per tree and the height limit
// log2(256) = 8 of Liu et al.; 200 trees instead of their 100 because the
// benign training set is small (135 windows, drawn with replacement), so
// that two fits score alike. On the labelled captures (README) this gave
// 8/24 attack windows above the 0.95 threshold against 23/135 held-out
// benign ones; ψ 64 / depth 6 gave 6/24 and 18/135, ψ 16 / depth 4 1/24
// and 19/135.
func DefaultParams() Params { return Params{Trees: 200, MaxDepth: 8, SubSample: 256} }

// Forest is a fitted isolation forest with its threshold; it is safe for
// concurrent use. Score(x) = 2^(-E[h(x)] / c(ψ)), 0..1, higher is more
// anomalous (about 0.5 and below: ordinary).
type Forest struct {
	Format     string    `json:"format"`
	Name       string    `json:"name"`
	FeatureSet string    `json:"feature_set"`
	Window     string    `json:"window"` // host window length the features are counted over (Go duration)
	Params     Params    `json:"params"`
	Quantile   float64   `json:"quantile"`  // of the benign training scores
	Threshold  float64   `json:"threshold"` // score at or above which a host window is anomalous
	Train      TrainInfo `json:"train"`
	Eval       *Eval     `json:"eval,omitempty"` // evaluation at training time
	Trees      [][]Node  `json:"trees"`
	cPsi       float64
}

// TrainInfo says what the forest was fitted on.
type TrainInfo struct {
	Source   string   `json:"source"`   // label files
	Captures []string `json:"captures"` // benign captures whose host windows were used
	Rows     int      `json:"rows"`     // host windows
}

// CFactor is c(n) of Liu et al. (eq. 1) as golearn computes it: the
// average path length of an unsuccessful search in a binary search tree of
// n points, 2 H(n-1) - 2 (n-1)/n with H(i) ≈ ln(i) + 0.5772156649.
func CFactor(n float64) float64 {
	return 2.0*(math.Log(n-1)+0.5772156649) - (2.0 * (n - 1) / n)
}

// grid is a golearn DenseInstances of the feature vectors with a constant
// float class attribute (golearn's isolation forest appends the class
// column to the data; a constant column is never split on).
func grid(xs [][NumFeatures]float64) *base.DenseInstances {
	inst := base.NewDenseInstances()
	specs := make([]base.AttributeSpec, NumFeatures)
	for i, n := range FeatureNames {
		specs[i] = inst.AddAttribute(base.NewFloatAttribute(n))
	}
	cls := base.NewFloatAttribute("class")
	cs := inst.AddAttribute(cls)
	if err := inst.AddClassAttribute(cls); err != nil {
		panic(err) // just added
	}
	if err := inst.Extend(len(xs)); err != nil {
		panic(err)
	}
	for r, x := range xs {
		for i, v := range x {
			inst.Set(specs[i], r, base.PackFloatToBytes(v))
		}
		inst.Set(cs, r, base.PackFloatToBytes(0))
	}
	return inst
}

// Fit fits golearn's trees.IsolationForest on xs (benign host windows) and
// compiles its trees. golearn draws from math/rand's global source, which
// Go seeds at random: two fits differ; a saved model file does not.
func Fit(xs [][NumFeatures]float64, p Params) (*Forest, error) {
	if len(xs) < 2 {
		return nil, fmt.Errorf("fit isolation forest: %d rows, want at least 2", len(xs))
	}
	if p.Trees < 1 || p.MaxDepth < 1 || p.SubSample < 2 {
		return nil, fmt.Errorf("fit isolation forest: params %+v: want trees >= 1, max_depth >= 1, sub_sample >= 2", p)
	}
	if !varies(xs) {
		return nil, errors.New("fit isolation forest: every row is the same")
	}
	g := grid(xs)
	ifo := trees.NewIsolationForest(p.Trees, p.MaxDepth, p.SubSample)
	ifo.Fit(g)
	ts, err := CompileGolearn(&ifo)
	if err != nil {
		return nil, err
	}
	f := &Forest{Format: Format, Name: ModelName, FeatureSet: FeatureSet, Params: p, Trees: ts}
	f.prepare()
	return f, nil
}

func varies(xs [][NumFeatures]float64) bool {
	for _, x := range xs[1:] {
		if x != xs[0] {
			return true
		}
	}
	return false
}

// GolearnScores scores xs with a fresh golearn forest's own Predict; for
// tests that compare it with the compiled walk.
func golearnPredict(ifo *trees.IsolationForest, xs [][NumFeatures]float64) []float64 {
	return ifo.Predict(grid(xs))
}

// CompileGolearn copies the trees of a fitted golearn IsolationForest (also
// the flow model's novelty forest, internal/model).
// golearn keeps them in an unexported field of unexported type
// (IsolationForest.trees []regressorNode, whose fields Left, Right,
// Threshold, Feature, LeftPred, RightPred are exported); reflection reads
// them. The golearn version is pinned in go.mod, and
// TestCompiledMatchesGolearn checks the copy against golearn's Predict.
func CompileGolearn(ifo *trees.IsolationForest) ([][]Node, error) {
	v := reflect.ValueOf(ifo).Elem().FieldByName("trees")
	if !v.IsValid() || v.Kind() != reflect.Slice {
		return nil, errors.New("compile golearn isolation forest: no trees field (golearn changed)")
	}
	out := make([][]Node, v.Len())
	for i := range out {
		var nodes []Node
		var walk func(n reflect.Value) (int, error)
		walk = func(n reflect.Value) (int, error) {
			fl := func(name string) (reflect.Value, error) {
				f := n.FieldByName(name)
				if !f.IsValid() {
					return f, fmt.Errorf("compile golearn isolation forest: node has no field %s (golearn changed)", name)
				}
				return f, nil
			}
			var fs [6]reflect.Value
			for j, name := range []string{"Feature", "Threshold", "LeftPred", "RightPred", "Left", "Right"} {
				f, err := fl(name)
				if err != nil {
					return 0, err
				}
				fs[j] = f
			}
			idx := len(nodes)
			nodes = append(nodes, Node{Feature: int(fs[0].Int()), Threshold: fs[1].Float(), LeftN: fs[2].Float(), RightN: fs[3].Float(), Left: -1, Right: -1})
			if !fs[4].IsNil() {
				l, err := walk(fs[4].Elem())
				if err != nil {
					return 0, err
				}
				nodes[idx].Left = l
			}
			if !fs[5].IsNil() {
				r, err := walk(fs[5].Elem())
				if err != nil {
					return 0, err
				}
				nodes[idx].Right = r
			}
			return idx, nil
		}
		if _, err := walk(v.Index(i)); err != nil {
			return nil, err
		}
		out[i] = nodes
	}
	return out, nil
}

func (f *Forest) prepare() { f.cPsi = CFactor(float64(f.Params.SubSample)) }

// pathLength walks one tree as golearn's pathLength does.
func pathLength(t []Node, x *[NumFeatures + 1]float64) float64 {
	path, i := 0.0, 0
	for {
		n := &t[i]
		path++
		var next int
		var cnt float64
		if x[n.Feature] <= n.Threshold {
			next, cnt = n.Left, n.LeftN
		} else {
			next, cnt = n.Right, n.RightN
		}
		if next < 0 {
			if cnt <= 1 {
				return path
			}
			return path + CFactor(cnt)
		}
		i = next
	}
}

// Score is the anomaly score of one feature vector, 0..1 (never NaN: the
// vector's entries are finite by construction). No allocation.
func (f *Forest) Score(x [NumFeatures]float64) float64 {
	var xx [NumFeatures + 1]float64 // + golearn's class column, always 0
	copy(xx[:], x[:])
	sum := 0.0
	for _, t := range f.Trees {
		sum += pathLength(t, &xx)
	}
	return math.Pow(2, -sum/float64(len(f.Trees))/f.cPsi)
}

// Anomalous reports whether a score reaches the threshold.
func (f *Forest) Anomalous(score float64) bool { return score >= f.Threshold }

// Quantile returns the q-quantile (0..1) of scores by the nearest-rank
// method (the smallest score with at least q of the scores at or below
// it); 0 for no scores.
func Quantile(scores []float64, q float64) float64 {
	if len(scores) == 0 {
		return 0
	}
	s := append([]float64(nil), scores...)
	sort.Float64s(s)
	r := int(math.Ceil(q * float64(len(s))))
	if r < 1 {
		r = 1
	}
	if r > len(s) {
		r = len(s)
	}
	return s[r-1]
}

// SetThreshold sets the threshold to the q-quantile of the forest's scores
// of xs (the benign training windows).
func (f *Forest) SetThreshold(xs [][NumFeatures]float64, q float64) {
	s := make([]float64, len(xs))
	for i, x := range xs {
		s[i] = f.Score(x)
	}
	f.Quantile, f.Threshold = q, Quantile(s, q)
}

// Save writes the forest as JSON.
func (f *Forest) Save(path string) error {
	b, err := json.Marshal(f)
	if err != nil {
		return fmt.Errorf("save host model: %w", err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("save host model: %w", err)
	}
	return nil
}

// Parse reads a model file's bytes. Errors: not JSON, another format or
// feature set, no trees, a node that points outside its tree or at a
// feature the vector does not have, a threshold outside 0..1.
func Parse(b []byte) (*Forest, error) {
	var f Forest
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("host model: %w", err)
	}
	if f.Format != Format {
		return nil, fmt.Errorf("host model: format %q, want %q", f.Format, Format)
	}
	if f.FeatureSet != FeatureSet {
		return nil, fmt.Errorf("host model: feature set %q, want %q", f.FeatureSet, FeatureSet)
	}
	if len(f.Trees) == 0 || f.Params.SubSample < 2 {
		return nil, errors.New("host model: no trees or sub_sample < 2")
	}
	if !(f.Threshold >= 0 && f.Threshold <= 1) {
		return nil, fmt.Errorf("host model: threshold %v outside 0..1", f.Threshold)
	}
	for ti, t := range f.Trees {
		if len(t) == 0 {
			return nil, fmt.Errorf("host model: tree %d is empty", ti)
		}
		for ni, n := range t {
			// Children come after their parent (pre-order), so a walk ends.
			if n.Feature < 0 || n.Feature > NumFeatures || (n.Left >= 0 && (n.Left <= ni || n.Left >= len(t))) ||
				(n.Right >= 0 && (n.Right <= ni || n.Right >= len(t))) || n.Left < -1 || n.Right < -1 {
				return nil, fmt.Errorf("host model: tree %d node %d is malformed", ti, ni)
			}
		}
	}
	f.prepare()
	return &f, nil
}

// Load reads a model file written by Save.
func Load(path string) (*Forest, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("load host model: %w", err)
	}
	f, err := Parse(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return f, nil
}
