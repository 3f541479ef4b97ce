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
	// Parts lists what the file holds besides the binary tree: PartNovelty
	// (the isolation forest on normal records, key "netwatch_novelty") and
	// PartClasses (the 5-class ID3 tree, keys prefixed "class5").
	Parts []string `json:"parts,omitempty"`
}

// Parts of a model file (Meta.Parts).
const (
	PartNovelty = "novelty-iforest"
	PartClasses = "id3-5class"
)

// FeatureSet names the attributes of Features the model uses (Extract and
// Traffic.Observe); a model file trained on another feature set is refused
// (kdd6-v1 files, the six basic columns alone, included: retrain them).
const FeatureSet = "kdd26-v2: duration,protocol_type,service,flag,src_bytes,dst_bytes,land,count,srv_count," +
	"serror_rate,srv_serror_rate,rerror_rate,srv_rerror_rate,same_srv_rate,diff_srv_rate,srv_diff_host_rate," +
	"dst_host_count,dst_host_srv_count,dst_host_same_srv_rate,dst_host_diff_srv_rate,dst_host_same_src_port_rate," +
	"dst_host_srv_diff_host_rate,dst_host_serror_rate,dst_host_srv_serror_rate,dst_host_rerror_rate,dst_host_srv_rerror_rate"

// NumericNames are the NSL-KDD names of the numeric Features, in the order
// of Features.Num.
var NumericNames = []string{"duration", "src_bytes", "dst_bytes", "land",
	"count", "srv_count", "serror_rate", "srv_serror_rate", "rerror_rate", "srv_rerror_rate",
	"same_srv_rate", "diff_srv_rate", "srv_diff_host_rate",
	"dst_host_count", "dst_host_srv_count", "dst_host_same_srv_rate", "dst_host_diff_srv_rate",
	"dst_host_same_src_port_rate", "dst_host_srv_diff_host_rate", "dst_host_serror_rate",
	"dst_host_srv_serror_rate", "dst_host_rerror_rate", "dst_host_srv_rerror_rate"}

// NumNumeric is len(NumericNames).
const NumNumeric = 23

// Num returns the i-th numeric feature (NumericNames[i]).
func (x *Features) Num(i int) float64 {
	switch i {
	case 0:
		return x.Duration
	case 1:
		return x.SrcBytes
	case 2:
		return x.DstBytes
	case 3:
		return x.Land
	case 4:
		return x.Count
	case 5:
		return x.SrvCount
	case 6:
		return x.SerrorRate
	case 7:
		return x.SrvSerrorRate
	case 8:
		return x.RerrorRate
	case 9:
		return x.SrvRerrorRate
	case 10:
		return x.SameSrvRate
	case 11:
		return x.DiffSrvRate
	case 12:
		return x.SrvDiffHostRate
	case 13:
		return x.DstHostCount
	case 14:
		return x.DstHostSrvCount
	case 15:
		return x.DstHostSameSrvRate
	case 16:
		return x.DstHostDiffSrvRate
	case 17:
		return x.DstHostSameSrcPortRate
	case 18:
		return x.DstHostSrvDiffHostRate
	case 19:
		return x.DstHostSerrorRate
	case 20:
		return x.DstHostSrvSerrorRate
	case 21:
		return x.DstHostRerrorRate
	case 22:
		return x.DstHostSrvRerrorRate
	}
	return 0
}

// setNum sets the i-th numeric feature.
func (x *Features) setNum(i int, v float64) {
	p := []*float64{&x.Duration, &x.SrcBytes, &x.DstBytes, &x.Land,
		&x.Count, &x.SrvCount, &x.SerrorRate, &x.SrvSerrorRate, &x.RerrorRate, &x.SrvRerrorRate,
		&x.SameSrvRate, &x.DiffSrvRate, &x.SrvDiffHostRate,
		&x.DstHostCount, &x.DstHostSrvCount, &x.DstHostSameSrvRate, &x.DstHostDiffSrvRate,
		&x.DstHostSameSrcPortRate, &x.DstHostSrvDiffHostRate, &x.DstHostSerrorRate,
		&x.DstHostSrvSerrorRate, &x.DstHostRerrorRate, &x.DstHostSrvRerrorRate}
	*p[i] = v
}

// attrs are the golearn attributes, built once so that every grid uses the
// same value lists (a CategoricalAttribute only Equals one with identical
// values, and the tree finds attributes by Equals).
type attrs struct {
	num                         []*base.FloatAttribute // NumericNames order
	proto, service, flag, class *base.CategoricalAttribute
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
	a := &attrs{
		proto:   cat("protocol_type", Protocols),
		service: cat("service", Services),
		flag:    cat("flag", Flags),
		class:   cat("class", []string{ClassAttack, ClassNormal}),
	}
	for _, n := range NumericNames {
		a.num = append(a.num, base.NewFloatAttribute(n))
	}
	return a
}

// grid is a golearn DenseInstances of n rows with the model's attributes.
type grid struct {
	inst                        *base.DenseInstances
	num                         []base.AttributeSpec
	proto, service, flag, class base.AttributeSpec
	a                           *attrs
}

func (a *attrs) newGrid(n int) *grid {
	g := &grid{inst: base.NewDenseInstances(), a: a}
	g.proto = g.inst.AddAttribute(a.proto)
	g.service = g.inst.AddAttribute(a.service)
	g.flag = g.inst.AddAttribute(a.flag)
	for _, f := range a.num {
		g.num = append(g.num, g.inst.AddAttribute(f))
	}
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
	for i, s := range g.num {
		g.inst.Set(s, row, base.PackFloatToBytes(x.Num(i)))
	}
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
//
// A model may hold two more parts (Meta.Parts): a Novelty forest, which
// makes a record attack when it scores at or above its threshold whatever
// the tree says, and a 5-class ID3 tree, which names the category of a
// record the model calls attack (PredictClass).
//
// Score keeps the traffic window (Traffic) of the flows it scored, so the
// traffic features of a flow are over the flows this model saw before it;
// a model loaded anew (a new version from the store) starts an empty
// window, which is full again after 2 s and 100 connections.
type Tree struct {
	Meta    Meta
	id3     *trees.ID3DecisionTree
	a       *attrs
	root    *node
	mu      sync.Mutex // golearn's categorical attributes are not safe for concurrent use
	nov     *Novelty
	class5  *trees.ID3DecisionTree
	root5   *node
	tmu     sync.Mutex // guards traffic
	traffic *Traffic
}

// Feature indexes of a compiled node's split attribute.
const (
	leaf = iota
	fProtocol
	fService
	fFlag
	fNum // fNum+i: NumericNames[i]
)

// node is a compiled trees.DecisionTreeNode.
type node struct {
	feature  int              // leaf or the f* index of the split attribute
	split    float64          // numeric split value (SplitVal)
	children map[string]*node // golearn's Children: "0"/"1" for numeric splits, the value for categorical ones
	keys     []string         // children names, sorted: the fallback for a value no child has
	attack   float64          // leaf: attack probability (PredictProba of ClassAttack)
	class    string           // leaf: golearn's predicted class (Class)
	attackAs string           // leaf: its most frequent class other than normal, "" when none
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
		best = 0
		for k, c := range d.ClassDist {
			if k != ClassNormal && (c > best || c == best && k < n.attackAs) {
				n.attackAs, best = k, c
			}
		}
		return n, nil
	}
	if d.SplitRule == nil || d.SplitRule.SplitAttr == nil {
		return nil, errors.New("tree node without split rule")
	}
	n := &node{split: d.SplitRule.SplitVal, children: make(map[string]*node, len(d.Children))}
	at := d.SplitRule.SplitAttr
	for i, c := range []base.Attribute{a.proto, a.service, a.flag} {
		if c.Equals(at) {
			n.feature = fProtocol + i
			break
		}
	}
	for i, c := range a.num {
		if n.feature == leaf && c.Equals(at) {
			n.feature = fNum + i
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
			v = "0"
			if x.Num(n.feature-fNum) > n.split {
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

// Score computes f's features (Traffic.Observe on the model's window) and
// returns ScoreFeatures. It does not allocate.
func (t *Tree) Score(f *pb.Flow) (float64, error) {
	p, _, err := t.ScoreWithFeatures(f)
	return p, err
}

// ScoreWithFeatures is Score, also returning the features it scored (for
// an alert's evidence).
func (t *Tree) ScoreWithFeatures(f *pb.Flow) (float64, Features, error) {
	t.tmu.Lock()
	x := t.traffic.Observe(f)
	t.tmu.Unlock()
	p, err := t.ScoreFeatures(x)
	return p, x, err
}

// ScoreFlow scores f with sc and returns the features it used: those of
// ScoreWithFeatures when sc has it (a Tree: with the traffic columns),
// else Extract's.
func ScoreFlow(sc Scorer, f *pb.Flow) (float64, Features, error) {
	if w, ok := sc.(interface {
		ScoreWithFeatures(*pb.Flow) (float64, Features, error)
	}); ok {
		return w.ScoreWithFeatures(f)
	}
	p, err := sc.Score(f)
	return p, Extract(f), err
}

// ScoreFeatures scores already computed features: p, the fraction of
// attack records among the training records that reached the leaf x falls
// in (golearn's PredictProba). With a Novelty part, whose score s has
// threshold θ, a p below 0.5 becomes max(p, n) with n = 0.5 + 0.5
// (s-θ)/(1-θ) when s ≥ θ, else 0.5 s/θ: so the result is ≥ 0.5 exactly
// when the tree says attack (p ≥ 0.5) or the record is novel (s ≥ θ), and
// stays in [0, 1]. (The forest is not run when p ≥ 0.5: it could not
// change the answer.)
func (t *Tree) ScoreFeatures(x Features) (float64, error) {
	p := t.root.walk(&x)
	if t.nov != nil && p < 0.5 { // at 0.5 and above the tree's answer stands: the forest is not needed

		s, th := t.nov.Score(&x), t.nov.Threshold
		n := 0.5 * s / th
		if s >= th {
			n = 0.5 + 0.5*(s-th)/(1-th)
		}
		if n > p {
			p = min(n, 1)
		}
	}
	return p, nil
}

// PredictClass is the 5-class answer for x (Categories): "normal" when
// ScoreFeatures is below 0.5; else the 5-class tree's class, or, where
// that tree says normal, the most frequent attack category of its leaf;
// UnknownAttack when the leaf holds none (the novelty part alone called it
// attack) or the model has no 5-class tree.
func (t *Tree) PredictClass(x Features) string {
	if p, _ := t.ScoreFeatures(x); p < 0.5 {
		return CatNormal
	}
	if t.root5 == nil {
		return UnknownAttack
	}
	l := t.root5.leaf(&x)
	if l.class != CatNormal {
		return l.class
	}
	if l.attackAs != "" {
		return l.attackAs
	}
	return UnknownAttack
}

// UnknownAttack is PredictClass's answer for an attack of no known category.
const UnknownAttack = "unknown_attack"

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

// Predict returns the class (ClassAttack when ScoreFeatures is at least
// 0.5, else ClassNormal) of every features row, for evaluation. It uses
// the compiled walk, so a value no child has takes the same child on every
// run (golearn's Predict picks one in map order).
func (t *Tree) Predict(xs []Features) ([]string, error) {
	out := make([]string, len(xs))
	for i, x := range xs {
		out[i] = ClassNormal
		if p, _ := t.ScoreFeatures(x); p >= 0.5 {
			out[i] = ClassAttack
		}
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
	if t.nov != nil {
		if err := w.WriteJSONForKey("netwatch_novelty", t.nov); err != nil {
			return fmt.Errorf("save model %s: %w", path, err)
		}
	}
	if t.class5 != nil {
		if err := t.class5.SaveWithPrefix(w, "class5"); err != nil {
			return fmt.Errorf("save model %s: %w", path, err)
		}
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
	t.traffic = NewTraffic()
	if t.class5 != nil {
		if t.root5, err = t.a.compile(t.class5.Root); err != nil {
			return fmt.Errorf("5-class tree: %w", err)
		}
	}
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
	for _, p := range t.Meta.Parts {
		switch p {
		case PartNovelty:
			t.nov = &Novelty{}
			if err := r.GetJSONForKey("netwatch_novelty", t.nov); err != nil {
				return nil, fmt.Errorf("load model %s: %w: novelty: %v", path, ErrModel, err)
			}
			if err := t.nov.check(); err != nil {
				return nil, fmt.Errorf("load model %s: %w: %v", path, ErrModel, err)
			}
			t.nov.prepare()
		case PartClasses:
			t.class5 = trees.NewID3DecisionTree(0)
			if err := t.class5.LoadWithPrefix(r, "class5"); err != nil {
				return nil, fmt.Errorf("load model %s: %w: 5-class tree: %v", path, ErrModel, err)
			}
		default:
			return nil, fmt.Errorf("load model %s: %w: unknown part %q", path, ErrModel, p)
		}
	}
	if err := t.prepare(); err != nil {
		return nil, fmt.Errorf("load model %s: %w: %v", path, ErrModel, err)
	}
	return t, nil
}
