// Package capmodel trains and evaluates the flow classifier on netwatch's
// own flows from the labelled captures (issue 5: the supervised flow
// classifier's second training source, beside NSL-KDD): flows built per
// 5-tuple by tshark (internal/capflow), the six per-flow features of
// internal/model, labels from shared/data/labeled/pcap-labels.csv and
// pcaps/lab/labels.csv, evaluation leaving one capture out at a time (never
// a random split of the rows of one capture). The model it trains is an
// internal/model file (same classifier and feature set), so `-model` and
// `detector push -kind flow` take it.
package capmodel

import (
	"fmt"
	"io"
	"net/netip"
	"path/filepath"
	"sort"
	"strings"

	"netwatch/detector/internal/capflow"
	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/report"
	"netwatch/schema/pb"
)

// Flow is one labelled flow of a capture.
type Flow struct {
	Capture string
	model.Record
}

// Label says whether flow f of capture c is attack traffic: for each
// labelled attack of c, f involves the labelled attacker (as originator or
// responder), or, when the label names spoofed or many sources instead of
// an attacker, the labelled victim; and f starts within the attack's time
// range when the label has one (lab captures). Every flow of a benign capture, and a flow
// of an attack capture that matches no attack (background traffic), is
// benign.
func Label(c hostmodel.Capture, f *pb.Flow) bool {
	o, _ := netip.AddrFromSlice(f.GetOrigAddr())
	r, _ := netip.AddrFromSlice(f.GetRespAddr())
	o, r = o.Unmap(), r.Unmap()
	for _, a := range c.Attacks {
		who := a.Attacker
		if !who.IsValid() && a.Spoofed {
			who = a.Victim
		}
		if !who.IsValid() || (o != who && r != who) {
			continue
		}
		if a.End != 0 && (f.GetStartNs() < a.Start || f.GetStartNs() > a.End) {
			continue
		}
		return true
	}
	return false
}

// Labelled reports whether a capture can be labelled flow by flow: benign,
// or each attack naming an attacker address, or spoofed sources and a
// victim address. The ARP poisoning capture names its attacker by MAC (its
// IP flows are the victim's own traffic, relayed) and the DHCP INFORM
// replay 500 rewritten addresses: not labelled.
func Labelled(c hostmodel.Capture) bool {
	if c.Benign {
		return true
	}
	for _, a := range c.Attacks {
		if !a.Attacker.IsValid() && !(a.Spoofed && a.Victim.IsValid()) {
			return false
		}
	}
	return len(c.Attacks) > 0
}

// Flows reads the label files of the pcaps folder and returns the labelled
// flows of every capture that Labelled accepts, in label-file order, with
// the captures it skipped and why. A capture named like an earlier one
// but for its extension holds the same packets (lab/labels.csv:
// lab-nmap-syn-scan.pcapng) and is skipped: left in, leaving one out would
// still train on its twin. tshark is the tshark binary ("" for the one on
// PATH); progress, when not nil, gets one line per capture.
func Flows(pcaps, tshark string, progress io.Writer) ([]Flow, []string, error) {
	caps, err := hostmodel.ReadLabels(pcaps)
	if err != nil {
		return nil, nil, err
	}
	var out []Flow
	var skipped []string
	seen := map[string]bool{}
	for i, c := range caps {
		base := strings.TrimSuffix(c.File, filepath.Ext(c.File))
		switch {
		case !Labelled(c):
			skipped = append(skipped, c.File+": no attacker address (nor spoofed sources and a victim) to label its flows by")
			continue
		case seen[base]:
			skipped = append(skipped, c.File+": the same packets as another capture")
			continue
		}
		seen[base] = true
		if progress != nil {
			fmt.Fprintf(progress, "\r[%d/%d] %-60s", i+1, len(caps), c.File)
		}
		fs, err := capflow.Flows(filepath.Join(pcaps, c.File), capflow.Options{Tshark: tshark})
		if err != nil {
			return nil, nil, err
		}
		tr := model.NewTraffic() // traffic features over the capture's own flows, in tshark's order
		for _, f := range fs {
			out = append(out, Flow{Capture: c.File, Record: model.Record{X: tr.Observe(f), Attack: Label(c, f)}})
		}
	}
	if progress != nil {
		fmt.Fprintf(progress, "\r%-70s\r", "")
	}
	return out, skipped, nil
}

// Cap returns at most max records of each capture, taken evenly (every
// k-th in order), so that the floods' tens of thousands of alike flows do
// not outweigh every other capture; max <= 0 keeps all.
func Cap(fs []Flow, max int) []model.Record {
	n := map[string]int{}
	for _, f := range fs {
		n[f.Capture]++
	}
	seen := map[string]int{}
	var out []model.Record
	for _, f := range fs {
		i := seen[f.Capture]
		seen[f.Capture]++
		if max > 0 && n[f.Capture] > max && i*max/n[f.Capture] == (i-1)*max/n[f.Capture] && i > 0 {
			continue
		}
		out = append(out, f.Record)
	}
	return out
}

// CaptureEval is one capture's line of the leave-one-capture-out report.
type CaptureEval struct {
	Capture         string `json:"capture"`
	Flows           int    `json:"flows"`
	AttackFlows     int    `json:"attack_flows"`
	PredictedAttack int    `json:"predicted_attack"`
	Correct         int    `json:"correct"`
}

// Eval is the leave-one-capture-out evaluation: a binary report over every
// flow (each scored by a tree trained without its capture), and a line per
// capture.
type Eval struct {
	report.Report
	MaxPerCapture int           `json:"max_training_flows_per_capture"`
	Skipped       []string      `json:"skipped_captures"`
	Captures      []CaptureEval `json:"captures"`
}

// DefaultMaxPerCapture bounds the training flows of one capture (Cap).
const DefaultMaxPerCapture = 2000

// LeaveOneCaptureOut trains, for each capture, golearn's ID3 (no pruning)
// on the flows of every other capture (Cap'ed to max per capture) and
// predicts every flow of the held-out capture with the compiled tree
// (attack when the leaf's attack share is at least 0.5). data names the
// source in the report.
func LeaveOneCaptureOut(fs []Flow, skipped []string, max int, data string) (*Eval, error) {
	var order []string
	by := map[string][]Flow{}
	for _, f := range fs {
		if by[f.Capture] == nil {
			order = append(order, f.Capture)
		}
		by[f.Capture] = append(by[f.Capture], f)
	}
	e := &Eval{MaxPerCapture: max, Skipped: skipped}
	var actual, pred []bool
	for _, c := range order {
		var other []Flow
		for _, f := range fs {
			if f.Capture != c {
				other = append(other, f)
			}
		}
		t, err := model.Train(Cap(other, max), 0, "loco")
		if err != nil {
			return nil, fmt.Errorf("without %s: %w", c, err)
		}
		line := CaptureEval{Capture: c}
		for _, f := range by[c] {
			p, err := t.ScoreFeatures(f.X)
			if err != nil {
				return nil, err
			}
			attack := p >= 0.5
			line.Flows++
			if f.Attack {
				line.AttackFlows++
			}
			if attack {
				line.PredictedAttack++
			}
			if attack == f.Attack {
				line.Correct++
			}
			actual, pred = append(actual, f.Attack), append(pred, attack)
		}
		e.Captures = append(e.Captures, line)
	}
	sort.SliceStable(e.Captures, func(i, j int) bool { return e.Captures[i].Capture < e.Captures[j].Capture })
	e.Report = report.Binary("flow-captures-id3", "captures", data, "benign", "attack", actual, pred)
	return e, nil
}
