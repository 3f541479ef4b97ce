package model

import (
	"errors"
	"fmt"
	"os"
	"sort"
	"sync"

	"github.com/sjwhitworth/golearn/base"
	"github.com/sjwhitworth/golearn/trees"

	"netwatch/schema/pb"
)

// Scorer scores flows. Score is the probability (0..1) that the flow is
// attack traffic; an error means the flow could not be scored at all.
type Scorer interface {
	Score(f *pb.Flow) (float64, error)
	Name() string
}

// Class values of the model's class attribute.
const (
	ClassAttack = "attack"
	ClassNormal = "normal"
)

// ClassifierName is the golearn METADATA classifier name of our model files;
// Load rejects any other.
const ClassifierName = "netwatch-flow-id3"

// Meta is what a model file records besides the tree: how it was trained and
// how it scored on the held-out split.
type Meta struct {
	Name        string     `json:"name"`
	FeatureSet  string     `json:"feature_set"` // FeatureSet at training time
	TrainSource string     `json:"train_source"`
	TrainRows   int        `json:"train_rows"`
	Prune       float64    `json:"prune"`
	Eval        Evaluation `json:"eval"`
}

// FeatureSet names the attributes and value lists of Extract; a model file
// trained on another feature set is refused.
const FeatureSet = "kdd6-v1: duration,protocol_type,service,flag,src_bytes,dst_bytes"

// attrs are the golearn attributes, built once so that every grid uses the
// same value lists (a CategoricalAttribute only Equals one with identical
// values, and the tree finds attributes by Equals).
type attrs struct {
	duration, srcBytes, dstBytes *base.FloatAttribute
	proto, service, flag, class  *base.CategoricalAttribute
}

func newAttrs() *attrs {
	cat := func(name string, vals []string) *base.CategoricalAttribute {
		a := base.NewCategoricalAttribute()
		a.SetName(name)
		for _, v := range vals {
			a.GetSysValFromString(v)
		}
		return a
	}
	return &attrs{
		duration: base.NewFloatAttribute("duration"),
		srcBytes: base.NewFloatAttribute("src_bytes"),
		dstBytes: base.NewFloatAttribute("dst_bytes"),
		proto:    cat("protocol_type", Protocols),
		service:  cat("service", Services),
		flag:     cat("flag", Flags),
		class:    cat("class", []string{ClassAttack, ClassNormal}),
	}
}

// grid is a golearn DenseInstances of n rows with the model's attributes.
type grid struct {
	inst                                       *base.DenseInstances
	dur, src, dst, proto, service, flag, class base.AttributeSpec
	a                                          *attrs
}

func (a *attrs) newGrid(n int) *grid {
	g := &grid{inst: base.NewDenseInstances(), a: a}
	g.dur = g.inst.AddAttribute(a.duration)
	g.proto = g.inst.AddAttribute(a.proto)
	g.service = g.inst.AddAttribute(a.service)
	g.flag = g.inst.AddAttribute(a.flag)
	g.src = g.inst.AddAttribute(a.srcBytes)
	g.dst = g.inst.AddAttribute(a.dstBytes)
	g.class = g.inst.AddAttribute(a.class)
	if err := g.inst.AddClassAttribute(a.class); err != nil {
		panic(err) // the attribute was just added
	}
	if err := g.inst.Extend(n); err != nil {
		panic(err)
	}
	return g
}

func (g *grid) set(row int, x Features, class string) {
	g.inst.Set(g.dur, row, base.PackFloatToBytes(x.Duration))
	g.inst.Set(g.src, row, base.PackFloatToBytes(x.SrcBytes))
	g.inst.Set(g.dst, row, base.PackFloatToBytes(x.DstBytes))
	g.inst.Set(g.proto, row, g.a.proto.GetSysValFromString(x.Protocol))
	g.inst.Set(g.service, row, g.a.service.GetSysValFromString(x.Service))
	g.inst.Set(g.flag, row, g.a.flag.GetSysValFromString(x.Flag))
	if class == "" {
		class = ClassNormal
	}
	g.inst.Set(g.class, row, g.a.class.GetSysValFromString(class))
}

// Tree is a golearn ID3 decision tree over Features; it implements Scorer.
// It is safe for concurrent use.
//
// The tree is golearn's (trained, saved and loaded by golearn), but Score
// does not build a golearn DenseInstances per flow (about 36 µs and 108
// allocations): Load compiles the golearn nodes into a read-only form that
// Score walks with golearn's own rules (numeric split: child "1" when the
// value is greater than SplitVal, else "0"; categorical: the child named by
// the value; leaf: share of attack records in ClassDist). Load checks that
// the walk and golearn's PredictProba agree on probe flows whose path
// needs no fallback (where golearn's choice is random).
type Tree struct {
	Meta Meta
	id3  *trees.ID3DecisionTree
	a    *attrs
	root *node
	mu   sync.Mutex // golearn's categorical attributes are not safe for concurrent use
}

// Feature indexes of a compiled node's split attribute.
const (
	leaf = iota
	fDuration
	fProtocol
	fService
	fFlag
	fSrcBytes
	fDstBytes
)

// node is a compiled trees.DecisionTreeNode.
type node struct {
	feature  int              // leaf or the f* index of the split attribute
	split    float64          // numeric split value (SplitVal)
	children map[string]*node // golearn's Children: "0"/"1" for numeric splits, the value for categorical ones
	keys     []string         // children names, sorted: the fallback for a value no child has
	attack   float64          // leaf: attack probability (PredictProba of ClassAttack)
	class    string           // leaf: golearn's predicted class (Class)
}

// compile turns a golearn tree node into a node, resolving split attributes
// the way golearn's Predict does (Attribute.Equals against the grid's).
func (a *attrs) compile(d *trees.DecisionTreeNode) (*node, error) {
	if d == nil {
		return nil, errors.New("nil tree node")
	}
	if d.Children == nil {
		n := &node{feature: leaf, class: d.Class}
		total, best := 0, -1
		for k, c := range d.ClassDist {
			total += c
			// the majority class; golearn breaks ties in map order
			// (random), this takes the smallest name
			if c > best || c == best && k < n.class {
				n.class, best = k, c
			}
		}
		if c, ok := d.ClassDist[ClassAttack]; ok {
			n.attack = float64(c) / float64(total)
		}
		return n, nil
	}
	if d.SplitRule == nil || d.SplitRule.SplitAttr == nil {
		return nil, errors.New("tree node without split rule")
	}
	n := &node{split: d.SplitRule.SplitVal, children: make(map[string]*node, len(d.Children))}
	at := d.SplitRule.SplitAttr
	for i, c := range []base.Attribute{a.duration, a.proto, a.service, a.flag, a.srcBytes, a.dstBytes} {
		if c.Equals(at) {
			n.feature = fDuration + i
			break
		}
	}
	if n.feature == leaf {
		return nil, fmt.Errorf("split attribute %s is not one of the features", at.GetName())
	}
	if len(d.Children) == 0 {
		return nil, fmt.Errorf("split on %s without children", at.GetName())
	}
	for k, c := range d.Children {
		cn, err := a.compile(c)
		if err != nil {
			return nil, err
		}
		n.children[k] = cn
		n.keys = append(n.keys, k)
	}
	sort.Strings(n.keys)
	return n, nil
}

// walk returns the attack probability of the leaf x reaches.
func (n *node) walk(x *Features) float64 { return n.leaf(x).attack }

// leaf returns the leaf x reaches.
func (n *node) leaf(x *Features) *node {
	l, _ := n.leafExact(x)
	return l
}

// leafExact is leaf, and whether every node on the way had a child for
// x's value (no fallback: golearn's choice there is random).
func (n *node) leafExact(x *Features) (*node, bool) {
	exact := true
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
			f := x.Duration
			if n.feature == fSrcBytes {
				f = x.SrcBytes
			} else if n.feature == fDstBytes {
				f = x.DstBytes
			}
			v = "0"
			if f > n.split {
				v = "1"
			}
		}
		next, ok := n.children[v]
		if !ok {
			exact = false
			// golearn picks, in map order, the first child named after v
			// (else the last one it saw): a random choice. Taking the
			// children in sorted order makes it deterministic.
			k := n.keys[len(n.keys)-1]
			for _, c := range n.keys {
				if c > v {
					k = c
					break
				}
			}
			next = n.children[k]
		}
		n = next
	}
	return n, exact
}

// Name is the model's name (Meta.Name), used as the rule of its alerts.
func (t *Tree) Name() string { return t.Meta.Name }

// Score returns the fraction of attack records among the training records
// that reached the leaf f falls in (golearn's PredictProba). It does not
// allocate.
func (t *Tree) Score(f *pb.Flow) (float64, error) {
	x := Extract(f)
	return t.root.walk(&x), nil
}

// ScoreFeatures scores already extracted features.
func (t *Tree) ScoreFeatures(x Features) (float64, error) {
	return t.root.walk(&x), nil
}

// scoreGolearn scores x through golearn's PredictProba on a one-row
// DenseInstances: the reference that Load checks the compiled walk against.
func (t *Tree) scoreGolearn(x Features) (p float64, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	defer func() {
		if r := recover(); r != nil { // golearn panics on attribute mismatches
			err = fmt.Errorf("score flow: %v", r)
		}
	}()
	g := t.a.newGrid(1)
	g.set(0, x, "")
	probs, err := t.id3.PredictProba(g.inst)
	if err != nil {
		return 0, fmt.Errorf("score flow: %w", err)
	}
	for _, c := range probs {
		if c.ClassValue == ClassAttack {
			return c.Probability, nil
		}
	}
	return 0, nil
}

// Predict returns the class of every features row (batch form, for evaluation).
func (t *Tree) Predict(xs []Features) ([]string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	g := t.a.newGrid(len(xs))
	for i, x := range xs {
		g.set(i, x, "")
	}
	pred, err := t.id3.Predict(g.inst)
	if err != nil {
		return nil, fmt.Errorf("predict %d rows: %w", len(xs), err)
	}
	out := make([]string, len(xs))
	for i := range xs {
		out[i] = base.GetClass(pred, i)
	}
	return out, nil
}

// Save writes the tree and Meta to path in golearn's classifier format (a
// gzipped tar with METADATA, the tree as JSON and our "netwatch_meta" key).
func (t *Tree) Save(path string) error {
	w, err := base.CreateSerializedClassifierStub(path, base.ClassifierMetadataV1{
		FormatVersion: 1, ClassifierName: ClassifierName, ClassifierVersion: "1"})
	if err != nil {
		return fmt.Errorf("save model %s: %w", path, err)
	}
	if err := t.id3.SaveWithPrefix(w, ""); err != nil {
		return fmt.Errorf("save model %s: %w", path, err)
	}
	if err := w.WriteJSONForKey("netwatch_meta", t.Meta); err != nil {
		return fmt.Errorf("save model %s: %w", path, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("save model %s: %w", path, err)
	}
	return os.Chmod(path, 0o644)
}

// prepare compiles the golearn tree for Score and checks, on a few typical
// flows, that golearn's PredictProba gives the same scores (an attribute
// mismatch fails here, not per flow).
func (t *Tree) prepare() error {
	root, err := t.a.compile(t.id3.Root)
	if err != nil {
		return err
	}
	t.root = root
	for _, x := range []Features{
		{Protocol: "tcp", Service: "http", Flag: "SF", Duration: 0.2, SrcBytes: 230, DstBytes: 1800},
		{Protocol: "tcp", Service: "private", Flag: "S0"},
		{Protocol: "tcp", Service: "private", Flag: "REJ"},
		{Protocol: "udp", Service: "domain_u", Flag: "SF", SrcBytes: 42, DstBytes: 92},
		{Protocol: "icmp", Service: "ecr_i", Flag: "SF", SrcBytes: 1032},
	} {
		if _, exact := root.leafExact(&x); !exact {
			continue // golearn picks a child at random there: nothing to compare
		}
		want, err := t.scoreGolearn(x)
		if err != nil {
			return err
		}
		if got := root.walk(&x); got != want {
			return fmt.Errorf("compiled tree scores %+v at %v, golearn at %v", x, got, want)
		}
	}
	return nil
}

// ErrModel is wrapped by every Load error about the file's content (as
// opposed to it being unreadable).
var ErrModel = errors.New("not a netwatch flow model")

// Load reads a model written by Save. A missing file, a corrupt file, a file
// from another classifier or another FeatureSet is an error.
func Load(path string) (t *Tree, err error) {
	defer func() {
		if r := recover(); r != nil { // golearn's JSON decoding panics on bad input
			t, err = nil, fmt.Errorf("load model %s: %w: %v", path, ErrModel, r)
		}
	}()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("load model: %w", err)
	}
	r, err := base.ReadSerializedClassifierStub(path)
	if err != nil {
		return nil, fmt.Errorf("load model %s: %w: %v", path, ErrModel, err)
	}
	defer r.Close()
	if r.Metadata.ClassifierName != ClassifierName {
		return nil, fmt.Errorf("load model %s: %w: classifier %q", path, ErrModel, r.Metadata.ClassifierName)
	}
	t = &Tree{id3: trees.NewID3DecisionTree(0), a: newAttrs()}
	if err := r.GetJSONForKey("netwatch_meta", &t.Meta); err != nil {
		return nil, fmt.Errorf("load model %s: %w: meta: %v", path, ErrModel, err)
	}
	if t.Meta.FeatureSet != FeatureSet {
		return nil, fmt.Errorf("load model %s: %w: feature set %q, want %q", path, ErrModel, t.Meta.FeatureSet, FeatureSet)
	}
	if err := t.id3.LoadWithPrefix(r, ""); err != nil {
		return nil, fmt.Errorf("load model %s: %w: tree: %v", path, ErrModel, err)
	}
	if t.id3.Root == nil || (t.id3.Root.Children == nil && t.id3.Root.Class == "") {
		return nil, fmt.Errorf("load model %s: %w: empty tree", path, ErrModel)
	}
	if err := t.prepare(); err != nil {
		return nil, fmt.Errorf("load model %s: %w: %v", path, ErrModel, err)
	}
	return t, nil
}
