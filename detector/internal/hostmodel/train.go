package hostmodel

import (
	"encoding/csv"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"time"

	"netwatch/detector/internal/capflow"
	"netwatch/detector/internal/report"
	"netwatch/schema/pb"
)

// DefaultWindow is the host window length of the shipped model and of the
// stage: a minute, as the scan rules' windows.
const DefaultWindow = time.Minute

// DefaultQuantile of the benign training scores is the threshold: 0.95,
// so by construction about one benign host window in twenty is above it
// on the data it was fitted on (the held-out figure is in the report).
const DefaultQuantile = 0.95

// Attack is one labelled attack of a capture.
type Attack struct {
	Attacker   netip.Addr // invalid when the label names no single address (spoofed, many)
	Victim     netip.Addr // first word of the victim column as an address (a ":port" dropped); invalid for a network or a range
	Spoofed    bool       // the attacker column names spoofed or many sources ("~37.6k spoofed sources", "~7.1k reflector sources")
	Start, End int64      // Unix ns; 0, 0 when the label gives no time range (the whole capture)
	Type       string
}

// Capture is one labelled capture file.
type Capture struct {
	File    string // path relative to the pcaps folder ("lab/x.pcap" for lab captures)
	Benign  bool
	Attacks []Attack
}

// ReadLabels reads pcaps/../labeled/pcap-labels.csv (columns file, label,
// attack_type, attacker, ...) and pcaps/lab/labels.csv (file, label,
// attack_type, attacker, victim, start_epoch, end_epoch, ...) and returns
// the captures in file order, a file of several rows once. The attacker is
// the first word of the attacker column when it parses as an address.
func ReadLabels(pcaps string) ([]Capture, error) {
	var out []Capture
	idx := map[string]int{}
	read := func(path, prefix string) error {
		fh, err := os.Open(path)
		if err != nil {
			return fmt.Errorf("read labels: %w", err)
		}
		defer fh.Close()
		r := csv.NewReader(fh)
		r.FieldsPerRecord = -1
		head, err := r.Read()
		if err != nil {
			return fmt.Errorf("read labels %s: %w", path, err)
		}
		col := map[string]int{}
		for i, h := range head {
			col[h] = i
		}
		for _, c := range []string{"file", "label", "attack_type", "attacker"} {
			if _, ok := col[c]; !ok {
				return fmt.Errorf("read labels %s: no column %s", path, c)
			}
		}
		for {
			rec, err := r.Read()
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return fmt.Errorf("read labels %s: %w", path, err)
			}
			get := func(c string) string {
				if i, ok := col[c]; ok && i < len(rec) {
					return strings.TrimSpace(rec[i])
				}
				return ""
			}
			file := prefix + get("file")
			i, ok := idx[file]
			if !ok {
				i = len(out)
				idx[file] = i
				out = append(out, Capture{File: file, Benign: true})
			}
			if get("label") != "benign" {
				out[i].Benign = false
				a := Attack{Type: get("attack_type")}
				if w := strings.Fields(get("attacker")); len(w) > 0 {
					if ad, err := netip.ParseAddr(w[0]); err == nil {
						a.Attacker = ad
					}
				}
				at := strings.ToLower(get("attacker"))
				a.Spoofed = strings.Contains(at, "spoofed") || strings.Contains(at, "sources")
				if w := strings.Fields(get("victim")); len(w) > 0 {
					v := w[0]
					if ap, err := netip.ParseAddrPort(v); err == nil {
						a.Victim = ap.Addr()
					} else if ad, err := netip.ParseAddr(v); err == nil {
						a.Victim = ad
					}
				}
				if s, err := strconv.ParseFloat(get("start_epoch"), 64); err == nil {
					a.Start = int64(s * 1e9)
				}
				if e, err := strconv.ParseFloat(get("end_epoch"), 64); err == nil {
					a.End = int64(e * 1e9)
				}
				out[i].Attacks = append(out[i].Attacks, a)
			}
		}
	}
	if err := read(filepath.Join(pcaps, "..", "labeled", "pcap-labels.csv"), ""); err != nil {
		return nil, err
	}
	if err := read(filepath.Join(pcaps, "lab", "labels.csv"), "lab/"); err != nil {
		return nil, err
	}
	return out, nil
}

// Windows computes every host window of flows offline: flows are taken in
// the order of their end (the order a flow meter emits them), and a
// window is only closed at the end, so a long flow never reopens one.
func Windows(flows []*pb.Flow, window time.Duration) []Window {
	fs := append([]*pb.Flow(nil), flows...)
	sort.SliceStable(fs, func(i, j int) bool { return fs[i].GetEndNs() < fs[j].GetEndNs() })
	t := NewTracker(int64(window), 1<<30)
	t.nextScan = 1<<63 - 1 // never close on the watermark
	var out []Window
	t.OnClose = func(w Window) { out = append(out, w) }
	for _, f := range fs {
		t.Observe("", f)
	}
	t.Flush()
	sort.Slice(out, func(i, j int) bool {
		if out[i].Start != out[j].Start {
			return out[i].Start < out[j].Start
		}
		return out[i].Addr.Less(out[j].Addr)
	})
	return out
}

// Row is one host window of a labelled capture.
type Row struct {
	Capture string
	Window
	Attack bool // the host is a labelled attacker and the window overlaps its attack
	Victim bool // not used for training or scoring figures
}

// Rows computes the host windows of every capture: all windows of benign
// captures (benign rows) and, in attack captures, the windows of each
// labelled attacker address that overlap the attack's time range (attack
// rows). Other hosts of attack captures (victims, bystanders) are left
// out: they are neither benign training data nor attackers.
func Rows(pcaps string, caps []Capture, window time.Duration, tshark string, progress io.Writer) ([]Row, error) {
	var rows []Row
	for i, c := range caps {
		if !c.Benign && !hasAttacker(c) {
			continue
		}
		if progress != nil {
			fmt.Fprintf(progress, "\r[%d/%d] %-60s", i+1, len(caps), c.File)
		}
		flows, err := capflow.Flows(filepath.Join(pcaps, c.File), capflow.Options{Tshark: tshark})
		if err != nil {
			return nil, err
		}
		for _, w := range Windows(flows, window) {
			if c.Benign {
				rows = append(rows, Row{Capture: c.File, Window: w})
				continue
			}
			for _, a := range c.Attacks {
				if a.Attacker.IsValid() && a.Attacker == w.Addr &&
					(a.End == 0 || (w.Start <= a.End && w.Start+int64(window) > a.Start)) {
					rows = append(rows, Row{Capture: c.File, Window: w, Attack: true})
					break
				}
			}
		}
	}
	if progress != nil {
		fmt.Fprintf(progress, "\r%-70s\r", "")
	}
	return rows, nil
}

func hasAttacker(c Capture) bool {
	for _, a := range c.Attacks {
		if a.Attacker.IsValid() {
			return true
		}
	}
	return false
}

// CaptureEval is one capture's line of an evaluation.
type CaptureEval struct {
	Capture   string  `json:"capture"`
	Label     string  `json:"label"` // benign or attack
	Windows   int     `json:"windows"`
	Anomalous int     `json:"anomalous"`
	MaxScore  float64 `json:"max_score"`
}

// Eval is the evaluation of a host model on labelled captures. Benign
// windows are scored leave-one-capture-out (a forest fitted on the other
// benign captures, its own threshold at the same quantile); attack windows
// by the evaluated forest, which never saw an attack capture.
type Eval struct {
	report.Report                 // benign (held out) vs attack windows, predicted = score >= threshold
	Threshold       float64       `json:"threshold"`
	Quantile        float64       `json:"quantile"`
	BenignWindows   int           `json:"benign_windows"`
	BenignAnomalous int           `json:"benign_anomalous"` // held out (leave one capture out)
	BenignInSample  int           `json:"benign_anomalous_in_sample"`
	AttackWindows   int           `json:"attack_windows"`
	AttackAnomalous int           `json:"attack_anomalous"`
	Captures        []CaptureEval `json:"captures"`
}

// BenignX returns the feature vectors of the benign rows.
func BenignX(rows []Row) [][NumFeatures]float64 {
	var xs [][NumFeatures]float64
	for _, r := range rows {
		if !r.Attack {
			xs = append(xs, r.Counts.Vector())
		}
	}
	return xs
}

// Train fits a forest on the benign rows and sets its threshold at the
// q-quantile of their scores.
func Train(rows []Row, p Params, q float64) (*Forest, error) {
	xs := BenignX(rows)
	f, err := Fit(xs, p)
	if err != nil {
		return nil, err
	}
	f.SetThreshold(xs, q)
	f.Train.Rows = len(xs)
	seen := map[string]bool{}
	for _, r := range rows {
		if !r.Attack && !seen[r.Capture] {
			seen[r.Capture] = true
			f.Train.Captures = append(f.Train.Captures, r.Capture)
		}
	}
	return f, nil
}

// Evaluate scores rows with f (attack rows, benign rows in sample) and
// with leave-one-capture-out forests of f's parameters and quantile
// (benign rows held out); data names the evaluated data in the report.
func Evaluate(f *Forest, rows []Row, data string) (*Eval, error) {
	e := &Eval{Threshold: f.Threshold, Quantile: f.Quantile}
	per := map[string]*CaptureEval{}
	var order []string
	line := func(r Row) *CaptureEval {
		c := per[r.Capture]
		if c == nil {
			c = &CaptureEval{Capture: r.Capture, Label: "benign"}
			if r.Attack {
				c.Label = "attack"
			}
			per[r.Capture] = c
			order = append(order, r.Capture)
		}
		return c
	}
	var actual, pred []bool
	// Held-out forests, one per benign capture.
	heldOut := map[string]*Forest{}
	for _, r := range rows {
		if r.Attack || heldOut[r.Capture] != nil {
			continue
		}
		var other []Row
		for _, o := range rows {
			if !o.Attack && o.Capture != r.Capture {
				other = append(other, o)
			}
		}
		h, err := Train(other, f.Params, f.Quantile)
		if err != nil {
			return nil, fmt.Errorf("hold out %s: %w", r.Capture, err)
		}
		heldOut[r.Capture] = h
	}
	for _, r := range rows {
		c := line(r)
		c.Windows++
		x := r.Counts.Vector()
		if r.Attack {
			s := f.Score(x)
			c.MaxScore = max(c.MaxScore, s)
			e.AttackWindows++
			if f.Anomalous(s) {
				e.AttackAnomalous++
				c.Anomalous++
			}
			actual, pred = append(actual, true), append(pred, f.Anomalous(s))
			continue
		}
		e.BenignWindows++
		if f.Anomalous(f.Score(x)) {
			e.BenignInSample++
		}
		h := heldOut[r.Capture]
		s := h.Score(x)
		c.MaxScore = max(c.MaxScore, s)
		if h.Anomalous(s) {
			e.BenignAnomalous++
			c.Anomalous++
		}
		actual, pred = append(actual, false), append(pred, h.Anomalous(s))
	}
	for _, n := range order {
		e.Captures = append(e.Captures, *per[n])
	}
	e.Report = report.Binary(f.Name, "hosts", data, "benign", "attack", actual, pred)
	return e, nil
}
