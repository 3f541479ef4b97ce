// Package qname is the detector's DNS query-name classifier for
// tunnelling: a golearn ID3 decision tree over lexical features of a name
// (length, entropy, label statistics, character classes), trained on
// shared/data/labeled/dns-tunnel-qnames (train.csv, validated on
// validate.csv). It classifies one name; the dns_tunnel rule counts names
// per host and domain.
package qname

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sort"
	"strings"
	"sync"

	"github.com/sjwhitworth/golearn/base"
	"github.com/sjwhitworth/golearn/trees"
)

// Classes.
const (
	ClassTunnel = "tunnel"
	ClassBenign = "benign"
)

// ClassifierName is the golearn METADATA classifier name of qname model files.
const ClassifierName = "netwatch-qname-id3"

// FeatureNames are the features of Extract, in order.
//
// They are computed over the longest label of the name, not over "the
// labels below the parent domain": the benign names of the training set are
// almost all bare registrable domains (3,836 of 4,000 have two labels), so
// any feature that sees whether a subdomain exists separates the training
// classes perfectly and flags every "www.*" name in real traffic (a first
// model did: 35 of 50 benign capture names).
var FeatureNames = []string{
	"max_label",     // characters of the longest label
	"entropy",       // Shannon entropy of the longest label, bits per character
	"digit_ratio",   // digits / characters of the longest label
	"upper_ratio",   // upper-case letters / characters of the longest label
	"special_ratio", // characters other than letters, digits and '-' / characters of the longest label
	"vowel_ratio",   // vowels (aeiou) / letters of the longest label
	"unique_ratio",  // distinct characters / characters of the longest label
}

// Extract computes the features of a query name (trailing dot optional).
// Every value is finite; an empty name gives zeros.
func Extract(q string) []float64 {
	var x [nFeatures]float64
	extract(q, &x)
	return x[:]
}

// nFeatures is len(FeatureNames).
const nFeatures = 7

// clogTable[c] is c·log2(c).
var clogTable = func() (t [256]float64) {
	for c := 1; c < len(t); c++ {
		t[c] = float64(c) * math.Log2(float64(c))
	}
	return t
}()

func clog2c(c int) float64 {
	if c < len(clogTable) {
		return clogTable[c]
	}
	return float64(c) * math.Log2(float64(c))
}

// extract is Extract into x; it does not allocate.
func extract(q string, x *[nFeatures]float64) {
	q = strings.TrimSuffix(q, ".")
	sub := ""
	for rest := q; ; {
		l, r, more := strings.Cut(rest, ".")
		if len(l) > len(sub) {
			sub = l
		}
		if !more {
			break
		}
		rest = r
	}
	var counts [256]int32
	n, digits, upper, special, vowels, letters := 0, 0, 0, 0, 0, 0
	for i := 0; i < len(sub); i++ {
		c := sub[i]
		n++
		counts[c]++
		switch {
		case c >= '0' && c <= '9':
			digits++
		case c >= 'A' && c <= 'Z':
			upper++
			letters++
			if strings.IndexByte("AEIOU", c) >= 0 {
				vowels++
			}
		case c >= 'a' && c <= 'z':
			letters++
			if strings.IndexByte("aeiou", c) >= 0 {
				vowels++
			}
		case c == '-':
		default:
			special++
		}
	}
	ratio := func(a, b int) float64 {
		if b == 0 {
			return 0
		}
		return float64(a) / float64(b)
	}
	// Shannon entropy H = log2(n) - (1/n) Σ c·log2(c) over the counts c
	// of the distinct bytes (each taken once, in order of appearance).
	entropy, unique, sum := 0.0, 0, 0.0
	for i := 0; i < len(sub); i++ {
		if c := counts[sub[i]]; c > 0 {
			unique++
			sum += clog2c(int(c))
			counts[sub[i]] = 0
		}
	}
	if n > 0 {
		entropy = max(clog2c(n)/float64(n)-sum/float64(n), 0)
	}
	*x = [nFeatures]float64{float64(len(sub)), entropy, ratio(digits, n), ratio(upper, n), ratio(special, n), ratio(vowels, letters), ratio(unique, n)}
}

// Record is one labelled name.
type Record struct {
	Name   string
	Tunnel bool
}

// Read parses the data set's CSV: "label,qname" per line, label 1 for a
// tunnel name and 0 for a benign one, no header. Errors name the line.
func Read(r io.Reader) ([]Record, error) {
	var out []Record
	sc := bufio.NewScanner(r)
	for line := 1; sc.Scan(); line++ {
		s := strings.TrimSpace(sc.Text())
		if s == "" {
			continue
		}
		label, name, ok := strings.Cut(s, ",")
		if !ok || (label != "0" && label != "1") || name == "" {
			return nil, fmt.Errorf("qnames line %d: want \"0|1,name\", got %q", line, s)
		}
		out = append(out, Record{Name: name, Tunnel: label == "1"})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read qnames: %w", err)
	}
	return out, nil
}

// ReadFile is Read on a file.
func ReadFile(path string) ([]Record, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read qnames: %w", err)
	}
	defer f.Close()
	recs, err := Read(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return recs, nil
}

// Model is a trained classifier. Safe for concurrent use (calls are
// serialised: golearn's attributes are not).
type Model struct {
	Name string
	id3  *trees.ID3DecisionTree
	attr []*base.FloatAttribute
	cls  *base.CategoricalAttribute
	mu   sync.Mutex
	root *node // compiled tree for IsTunnel; nil until compile
}

// node is a compiled golearn trees.DecisionTreeNode: every feature is a
// golearn FloatAttribute, so every split is numeric (golearn's Predict:
// child "1" when the value is greater than SplitVal, else "0").
type node struct {
	feature  int // index in FeatureNames; -1 for a leaf
	split    float64
	children map[string]*node
	keys     []string // children names, sorted: the fallback for a missing child
	next     [2]*node // the child taken for "0" and "1" (children or the fallback)
	tunnel   bool     // leaf: golearn's Class is ClassTunnel
}

// compile turns golearn's tree into nodes.
func compile(d *trees.DecisionTreeNode) (*node, error) {
	if d == nil {
		return nil, errors.New("nil tree node")
	}
	if d.Children == nil {
		return &node{feature: -1, tunnel: d.Class == ClassTunnel}, nil
	}
	if d.SplitRule == nil || d.SplitRule.SplitAttr == nil || len(d.Children) == 0 {
		return nil, errors.New("tree node without split rule or children")
	}
	n := &node{feature: -1, split: d.SplitRule.SplitVal, children: make(map[string]*node, len(d.Children))}
	for i, f := range FeatureNames {
		if d.SplitRule.SplitAttr.GetName() == f {
			n.feature = i
		}
	}
	if n.feature < 0 {
		return nil, fmt.Errorf("split attribute %s is not a feature", d.SplitRule.SplitAttr.GetName())
	}
	for k, c := range d.Children {
		cn, err := compile(c)
		if err != nil {
			return nil, err
		}
		n.children[k] = cn
		n.keys = append(n.keys, k)
	}
	sort.Strings(n.keys)
	for i, v := range []string{"0", "1"} {
		next, ok := n.children[v]
		if !ok { // golearn: the first child after v in map order; here sorted
			k := n.keys[len(n.keys)-1]
			for _, c := range n.keys {
				if c > v {
					k = c
					break
				}
			}
			next = n.children[k]
		}
		n.next[i] = next
	}
	return n, nil
}

// IsTunnel classifies one query name with the compiled tree: the same
// answer as Predict (TestCompiledMatchesGolearn), without building a
// golearn DenseInstances per name. It does not allocate and is safe for
// concurrent use.
func (m *Model) IsTunnel(q string) bool {
	var x [nFeatures]float64
	extract(q, &x)
	n := m.root
	for n.feature >= 0 {
		if x[n.feature] > n.split {
			n = n.next[1]
		} else {
			n = n.next[0]
		}
	}
	return n.tunnel
}

// prepare compiles the tree and checks it against golearn's Predict on
// a few names.
func (m *Model) prepare() error {
	root, err := compile(m.id3.Root)
	if err != nil {
		return err
	}
	m.root = root
	names := []string{"www.example.com.", "en.wikipedia.org", "paa0bdcfa-b2b3b4b5b6b7b8b9bab.t.lab.test",
		"0iyb2ka3rlhcqsfwnv4d6tjxnb7rkdfpnhkgmxqaxcc.pirate.sea", "x"}
	want, err := m.Predict(names)
	if err != nil {
		return err
	}
	for i, q := range names {
		if m.IsTunnel(q) != want[i] {
			return fmt.Errorf("compiled tree classifies %q as tunnel=%v, golearn %v", q, !want[i], want[i])
		}
	}
	return nil
}

func newAttrs() ([]*base.FloatAttribute, *base.CategoricalAttribute) {
	var fs []*base.FloatAttribute
	for _, n := range FeatureNames {
		fs = append(fs, base.NewFloatAttribute(n))
	}
	c := base.NewCategoricalAttribute()
	c.SetName("class")
	c.GetSysValFromString(ClassBenign)
	c.GetSysValFromString(ClassTunnel)
	return fs, c
}

func (m *Model) grid(names []string, classes []bool) *base.DenseInstances {
	inst := base.NewDenseInstances()
	specs := make([]base.AttributeSpec, len(m.attr))
	for i, a := range m.attr {
		specs[i] = inst.AddAttribute(a)
	}
	cs := inst.AddAttribute(m.cls)
	if err := inst.AddClassAttribute(m.cls); err != nil {
		panic(err) // just added
	}
	if err := inst.Extend(len(names)); err != nil {
		panic(err)
	}
	for r, q := range names {
		for i, v := range Extract(q) {
			inst.Set(specs[i], r, base.PackFloatToBytes(v))
		}
		c := ClassBenign
		if classes != nil && classes[r] {
			c = ClassTunnel
		}
		inst.Set(cs, r, m.cls.GetSysValFromString(c))
	}
	return inst
}

// Train fits golearn's ID3 tree (information gain, numeric splits; no
// pruning, so training is deterministic) on recs.
func Train(recs []Record, name string) (*Model, error) {
	if len(recs) == 0 {
		return nil, errors.New("train qnames: no records")
	}
	fs, c := newAttrs()
	m := &Model{Name: name, id3: trees.NewID3DecisionTree(0), attr: fs, cls: c}
	names := make([]string, len(recs))
	classes := make([]bool, len(recs))
	for i, r := range recs {
		names[i], classes[i] = r.Name, r.Tunnel
	}
	if err := m.id3.Fit(m.grid(names, classes)); err != nil {
		return nil, fmt.Errorf("train qnames: %w", err)
	}
	if err := m.prepare(); err != nil {
		return nil, fmt.Errorf("train qnames: %w", err)
	}
	return m, nil
}

// Predict classifies names: true for a tunnel name.
func (m *Model) Predict(names []string) (out []bool, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	defer func() {
		if r := recover(); r != nil { // golearn panics on attribute mismatches
			out, err = nil, fmt.Errorf("predict qnames: %v", r)
		}
	}()
	if len(names) == 0 {
		return nil, nil
	}
	pred, err := m.id3.Predict(m.grid(names, nil))
	if err != nil {
		return nil, fmt.Errorf("predict qnames: %w", err)
	}
	out = make([]bool, len(names))
	for i := range names {
		out[i] = base.GetClass(pred, i) == ClassTunnel
	}
	return out, nil
}

// Save writes the model in golearn's classifier format.
func (m *Model) Save(path string) error {
	w, err := base.CreateSerializedClassifierStub(path, base.ClassifierMetadataV1{
		FormatVersion: 1, ClassifierName: ClassifierName, ClassifierVersion: "1"})
	if err != nil {
		return fmt.Errorf("save qname model %s: %w", path, err)
	}
	if err := m.id3.SaveWithPrefix(w, ""); err != nil {
		return fmt.Errorf("save qname model %s: %w", path, err)
	}
	if err := w.WriteJSONForKey("netwatch_qname", map[string]any{"name": m.Name, "features": FeatureNames}); err != nil {
		return fmt.Errorf("save qname model %s: %w", path, err)
	}
	if err := w.Close(); err != nil {
		return fmt.Errorf("save qname model %s: %w", path, err)
	}
	return os.Chmod(path, 0o644)
}

// Load reads a model written by Save. Errors: unreadable, another
// classifier, other features, a corrupt tree.
func Load(path string) (m *Model, err error) {
	defer func() {
		if r := recover(); r != nil {
			m, err = nil, fmt.Errorf("load qname model %s: %v", path, r)
		}
	}()
	if _, err := os.Stat(path); err != nil {
		return nil, fmt.Errorf("load qname model: %w", err)
	}
	r, err := base.ReadSerializedClassifierStub(path)
	if err != nil {
		return nil, fmt.Errorf("load qname model %s: %w", path, err)
	}
	defer r.Close()
	if r.Metadata.ClassifierName != ClassifierName {
		return nil, fmt.Errorf("load qname model %s: classifier %q, want %q", path, r.Metadata.ClassifierName, ClassifierName)
	}
	var meta struct {
		Name     string   `json:"name"`
		Features []string `json:"features"`
	}
	if err := r.GetJSONForKey("netwatch_qname", &meta); err != nil {
		return nil, fmt.Errorf("load qname model %s: meta: %w", path, err)
	}
	if strings.Join(meta.Features, ",") != strings.Join(FeatureNames, ",") {
		return nil, fmt.Errorf("load qname model %s: features %v, want %v", path, meta.Features, FeatureNames)
	}
	fs, c := newAttrs()
	m = &Model{Name: meta.Name, id3: trees.NewID3DecisionTree(0), attr: fs, cls: c}
	if err := m.id3.LoadWithPrefix(r, ""); err != nil {
		return nil, fmt.Errorf("load qname model %s: tree: %w", path, err)
	}
	if m.id3.Root == nil {
		return nil, fmt.Errorf("load qname model %s: empty tree", path)
	}
	if err := m.prepare(); err != nil {
		return nil, fmt.Errorf("load qname model %s: %w", path, err)
	}
	return m, nil
}
