package model

import (
	"errors"
	"fmt"
	"math"
	"netwatch/detector/internal/hostmodel"
	"sort"

	"github.com/sjwhitworth/golearn/base"
	"github.com/sjwhitworth/golearn/trees"
)

// Novelty is the model's second part: golearn's isolation forest
// (trees.IsolationForest; Liu, Ting & Zhou, "Isolation Forest", ICDM 2008)
// fitted on the normal training records only, so that a record unlike any
// normal traffic scores high whatever attack it is, including types the
// tree never saw. Its threshold is the Quantile quantile of the scores of
// the normal records it was fitted on (nearest rank), so about 1-Quantile
// of normal traffic like the training's is above it.
//
// Input vector (NoveltyNames): the 23 numeric Features, ln(1+x) of the
// unbounded ones (duration, src_bytes, dst_bytes, count, srv_count,
// dst_host_count, dst_host_srv_count), and protocol_type one-hot.
type Novelty struct {
	Trees     [][]hostmodel.Node `json:"trees"`
	SubSample int                `json:"sub_sample"`
	MaxDepth  int                `json:"max_depth"`
	Quantile  float64            `json:"quantile"`
	Threshold float64            `json:"threshold"` // score at Quantile of the normal training records
	cPsi      float64
	flat      []cnode // every tree's nodes, compact, one slice: what Score walks
	roots     []int32 // index of each tree's root in flat
}

// cnode is the compact form of a hostmodel.Node that Score walks (32 bytes, so
// the forest stays in cache): children index flat (-1 leaf), lc and rc the
// path length a leaf child adds (cFactor of its rows when more than 1).
type cnode struct {
	thr    float64
	lc, rc float64
	l, r   int32
	f      uint8
}

// noveltyN is the length of the novelty input vector; golearn's forest
// also sees the grid's class column (always 0) at index noveltyN.
const noveltyN = NumNumeric + 3

// logged marks the numeric features the novelty vector takes ln(1+x) of.
var logged = [NumNumeric]bool{0: true, 1: true, 2: true, 4: true, 5: true, 13: true, 14: true}

// noveltyVector is x as the forest's input (with the class column).
func noveltyVector(x *Features) (v [noveltyN + 1]float64) {
	for i := 0; i < NumNumeric; i++ {
		f := x.Num(i)
		if logged[i] {
			if f < 0 || math.IsNaN(f) {
				f = 0
			}
			f = math.Log1p(f)
		}
		v[i] = f
	}
	for i, p := range Protocols {
		if x.Protocol == p {
			v[NumNumeric+i] = 1
		}
	}
	return v
}

// noveltyGrid is a golearn DenseInstances of the vectors of xs.
func noveltyGrid(xs []Features) *base.DenseInstances {
	inst := base.NewDenseInstances()
	specs := make([]base.AttributeSpec, noveltyN+1)
	for i := 0; i < noveltyN; i++ {
		specs[i] = inst.AddAttribute(base.NewFloatAttribute(fmt.Sprint("v", i)))
	}
	cls := base.NewFloatAttribute("class")
	specs[noveltyN] = inst.AddAttribute(cls)
	if err := inst.AddClassAttribute(cls); err != nil {
		panic(err) // just added
	}
	if err := inst.Extend(len(xs)); err != nil {
		panic(err)
	}
	for r := range xs {
		v := noveltyVector(&xs[r])
		for i, s := range specs {
			inst.Set(s, r, base.PackFloatToBytes(v[i]))
		}
	}
	return inst
}

// FitNovelty fits the forest (nTrees isolation trees of at most maxDepth
// levels on sub-samples of subSample rows) on xs, the normal records, and
// sets its threshold at quantile q of their scores (nearest rank). golearn draws from
// math/rand's global source: two fits differ; a saved model does not.
func FitNovelty(xs []Features, nTrees, maxDepth, subSample int, q float64) (*Novelty, error) {
	if len(xs) < 2 {
		return nil, fmt.Errorf("fit novelty forest: %d normal rows, want at least 2", len(xs))
	}
	if q <= 0 || q >= 1 {
		return nil, fmt.Errorf("fit novelty forest: quantile %v, want 0 < q < 1", q)
	}
	g := noveltyGrid(xs)
	ifo := trees.NewIsolationForest(nTrees, maxDepth, subSample)
	ifo.Fit(g)
	ts, err := hostmodel.CompileGolearn(&ifo)
	if err != nil {
		return nil, err
	}
	n := &Novelty{Trees: ts, SubSample: subSample, MaxDepth: maxDepth, Quantile: q}
	n.prepare()
	scores := make([]float64, len(xs))
	for i := range xs {
		scores[i] = n.Score(&xs[i])
	}
	// the compiled walk must give golearn's own scores
	gs := ifo.Predict(g)
	for i := range scores {
		if math.Abs(gs[i]-scores[i]) > 1e-9 {
			return nil, fmt.Errorf("fit novelty forest: compiled score %v, golearn %v (row %d)", scores[i], gs[i], i)
		}
	}
	sort.Float64s(scores)
	r := int(math.Ceil(q * float64(len(scores))))
	n.Threshold = scores[max(r, 1)-1]
	return n, nil
}

func (n *Novelty) prepare() {
	n.cPsi = hostmodel.CFactor(float64(n.SubSample))
	n.flat, n.roots = n.flat[:0], n.roots[:0]
	for _, t := range n.Trees {
		base := int32(len(n.flat))
		n.roots = append(n.roots, base)
		for _, nd := range t {
			c := cnode{thr: nd.Threshold, l: -1, r: -1, f: uint8(nd.Feature)}
			if nd.Left >= 0 {
				c.l = base + int32(nd.Left)
			}
			if nd.Right >= 0 {
				c.r = base + int32(nd.Right)
			}
			if nd.LeftN > 1 {
				c.lc = hostmodel.CFactor(nd.LeftN)
			}
			if nd.RightN > 1 {
				c.rc = hostmodel.CFactor(nd.RightN)
			}
			n.flat = append(n.flat, c)
		}
	}
}

// check validates a loaded forest: node indexes in range, features in the
// vector.
func (n *Novelty) check() error {
	if len(n.Trees) == 0 || n.SubSample < 2 {
		return errors.New("novelty forest: no trees or sub_sample < 2")
	}
	for _, t := range n.Trees {
		if len(t) == 0 {
			return errors.New("novelty forest: empty tree")
		}
		for i, nd := range t {
			if nd.Feature < 0 || nd.Feature > noveltyN || nd.Left >= len(t) || nd.Right >= len(t) ||
				(nd.Left >= 0 && nd.Left <= i) || (nd.Right >= 0 && nd.Right <= i) {
				return fmt.Errorf("novelty forest: bad node %+v", nd)
			}
		}
	}
	if math.IsNaN(n.Threshold) || n.Threshold <= 0 || n.Threshold >= 1 {
		return fmt.Errorf("novelty forest: threshold %v, want 0 < t < 1", n.Threshold)
	}
	return nil
}

// Score is golearn's isolation forest anomaly score of x, 2^(-E[h]/c(ψ)),
// 0..1 (about 0.5 and below: like the normal training records; near 1:
// isolated at once). No allocation.
func (n *Novelty) Score(x *Features) float64 {
	v := noveltyVector(x)
	sum := 0.0
	for _, i := range n.roots {
		for {
			nd := &n.flat[i]
			sum++
			next, c := nd.r, nd.rc
			if v[nd.f] <= nd.thr {
				next, c = nd.l, nd.lc
			}
			if next < 0 {
				sum += c
				break
			}
			i = next
		}
	}
	return math.Exp2(-sum / float64(len(n.Trees)) / n.cPsi)
}
