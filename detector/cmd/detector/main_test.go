package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/modelstore"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"

	"netwatch/detector/internal/arp"
	"netwatch/detector/internal/policy"
	"netwatch/detector/internal/rules"
)

func TestCheckConfig(t *testing.T) {
	env := map[string]string{"NETWATCH_PORTSCAN_PORTS": "80"}
	getenv := func(k string) string { return env[k] }
	var out bytes.Buffer
	if err := run([]string{"-check-config"}, &out, getenv); err != nil {
		t.Fatalf("check-config: %v", err)
	}
	if !strings.Contains(out.String(), "flow-id3") || !strings.Contains(out.String(), "qname-id3") {
		t.Errorf("output %q does not name the shipped models", out.String())
	}
	for _, args := range [][]string{
		{"-check-config", "-portscan.ports", "1"},
		{"-check-config", "-portscan.flag-probes", "1"},
		{"-check-config", "-gc.percent", "5"},
		{"-check-config", "-host.model", "no-such-file"},
		{"-check-config", "-model.threshold", "2"},
		{"-check-config", "-model", "/nonexistent/model"},
		{"-check-config", "-synflood.pkts", "1"},
		{"-check-config", "-bruteforce.sessions", "0"},
		{"-check-config", "-dnstunnel.window", "10ms"},
		{"-check-config", "-flood.window", "0s"},
		{"-check-config", "-beacon.max-cv", "0"},
		{"-check-config", "-beacon.conns", "2"},
		{"-check-config", "-dga.domains", "1"},
		{"-check-config", "-dnstunnel.txt-null", "1"},
		{"-check-config", "-dnstunnel.model-names", "0"},
		{"-check-config", "-qname.model", "/nonexistent/qname.model"},
		{"-check-config", "-amplification.sources", "0"},
		{"-check-config", "-arp.replies", "1"},
		{"-check-config", "-arp.binding-ttl", "1s"},
		{"-check-config", "-output.webhook", "ftp://x/"},
		{"-check-config", "-output.webhook", "http://"},
		{"-check-config", "-output.syslog", "tls://h:6514"},
		{"-check-config", "-output.syslog", "nohostport"},
		{"-check-config", "-health.disk-ratio", "1.5"},
		{"-check-config", "-health.check", "-1s"},
	} {
		if err := run(args, &out, getenv); err == nil {
			t.Errorf("%v: no error", args)
		}
	}
	// The new rules' thresholds come from the environment too.
	env["NETWATCH_DNSTUNNEL_QUERIES"] = "1"
	if err := run([]string{"-check-config"}, &out, getenv); err == nil {
		t.Error("NETWATCH_DNSTUNNEL_QUERIES=1 accepted")
	}
	delete(env, "NETWATCH_DNSTUNNEL_QUERIES")
	if err := run([]string{"-check-config", "-output.webhook", "https://hooks.example/x", "-output.syslog", "tcp://127.0.0.1:601"}, &out, getenv); err != nil {
		t.Errorf("valid outputs rejected: %v", err)
	}
	// The environment loses to an explicit flag, and a bad environment value is an error.
	env["NETWATCH_PORTSCAN_PORTS"] = "x"
	if err := run([]string{"-check-config"}, &out, getenv); err == nil {
		t.Error("bad NETWATCH_PORTSCAN_PORTS accepted")
	}
	if err := run([]string{"-check-config", "-portscan.ports", "60"}, &out, getenv); err != nil {
		t.Errorf("flag should win over env: %v", err)
	}
}

// TestConfigFile: -config thresholds override the flags and are validated
// like them; unknown names and bad files are errors at start.
func TestConfigFile(t *testing.T) {
	dir := t.TempDir()
	write := func(name, doc string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(doc), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	getenv := func(string) string { return "" }
	var out bytes.Buffer
	good := write("good.yaml", "allow: [{networks: [10.9.0.0/24]}]\nthresholds: {beacon.max-cv: 0.1, arp.replies: 40}\n")
	if err := run([]string{"-check-config", "-config", good}, &out, getenv); err != nil {
		t.Errorf("good config: %v", err)
	}
	for name, doc := range map[string]string{
		"low.yaml":     "thresholds: {portscan.ports: 1}",
		"unknown.yaml": "thresholds: {portscan.portz: 100}",
		"broken.yaml":  "allow: [",
		"notflag.yaml": "thresholds: {nats.url: nats://x}", // not a rule threshold
	} {
		if err := run([]string{"-check-config", "-config", write(name, doc)}, &out, getenv); err == nil {
			t.Errorf("%s accepted", name)
		}
	}
	if err := run([]string{"-check-config", "-config", filepath.Join(dir, "missing.yaml")}, &out, getenv); err == nil {
		t.Error("missing file accepted")
	}
	// Overrides apply on top of the flags; what the file does not name keeps the flag's value.
	base := rules.DefaultConfig()
	base.PortscanPorts = 60
	p, err := policy.Load(good)
	if err != nil {
		t.Fatal(err)
	}
	r, a, err := thresholds(p, base, arp.DefaultConfig())
	if err != nil || r.PortscanPorts != 60 || r.BeaconMaxCV != 0.1 || a.Replies != 40 || r.SynFloodPkts != 1000 {
		t.Errorf("thresholds: %v ports %d cv %v replies %d", err, r.PortscanPorts, r.BeaconMaxCV, a.Replies)
	}
}

// TestRunEndToEnd runs the service (run, as main does) on an in-process
// JetStream with -config, -output.webhook and a real local HTTP server:
// an ARP poisoning batch on PACKETS reaches the webhook; after the config
// file allows arp_spoof (reloaded by fsnotify), a second poisoning in a
// later window does not; SIGTERM stops it cleanly.
func TestRunEndToEnd(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	ctx := context.Background()
	dir := t.TempDir()
	cfgPath := filepath.Join(dir, "detector.yaml")
	if err := os.WriteFile(cfgPath, []byte("thresholds: {arp.replies: 30}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	hooked := make(chan map[string]any, 8)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var doc map[string]any
		_ = json.NewDecoder(r.Body).Decode(&doc)
		hooked <- doc
	}))
	defer srv.Close()
	done := make(chan error, 1)
	var logs bytes.Buffer
	go func() {
		done <- run([]string{"-nats.url", url, "-http.addr", "", "-config", cfgPath, "-output.webhook", srv.URL,
			"-health.check", "0", "-log.level", "debug"}, &lockedWriter{w: &logs}, func(string) string { return "" })
	}()
	stopped := false
	defer func() {
		if !stopped {
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-done
		}
	}()
	hw := func(s string) []byte { m, _ := net.ParseMAC(s); return m }
	poison := func(seq uint64, at int64) {
		b := &pb.PacketBatch{Sensor: "e2e", Boot: "b", Seq: seq, Arp: []*pb.ArpSummary{
			{TsNs: at, Op: 1, SenderMac: hw("02:00:00:00:00:66"), SenderIp: []byte{10, 0, 0, 66}, TargetMac: make([]byte, 6), TargetIp: []byte{10, 0, 0, 1}},
			{TsNs: at + 1e9, Op: 2, SenderMac: hw("02:00:00:00:00:66"), SenderIp: []byte{10, 0, 0, 1}, TargetMac: hw("02:00:00:00:00:20"), TargetIp: []byte{10, 0, 0, 20}},
		}}
		data, _ := proto.Marshal(b)
		m := &nats.Msg{Subject: schema.PacketsSubject("e2e", 1), Data: data, Header: nats.Header{}}
		m.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("e2e.%d", seq))
		if _, err := js.PublishMsg(ctx, m); err != nil {
			t.Fatal(err)
		}
	}
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	// The service provisions the streams and creates detector-arp; wait for it.
	testkit.Eventually(t, 20*time.Second, func() bool {
		_, err := js.Consumer(ctx, schema.StreamPackets, "detector-arp")
		return err == nil
	}, "detector-arp consumer not created")
	poison(1, t0)
	select {
	case doc := <-hooked:
		if doc["category"] != "arp_spoof" || doc["sensor"] != "e2e" || doc["resp_addr"] != "10.0.0.1" {
			t.Errorf("webhook got %v", doc)
		}
	case <-time.After(20 * time.Second):
		t.Fatalf("no webhook delivery; logs:\n%s", logs.String())
	}
	if err := os.WriteFile(cfgPath, []byte("allow: [{rules: [arp_spoof]}]\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "config reloaded") }, "config not reloaded")
	poison(2, t0+int64(2*time.Minute)) // a later window: would alert again
	testkit.Eventually(t, 10*time.Second, func() bool { return strings.Contains(logs.String(), "alert suppressed") }, "second alert not suppressed")
	select {
	case doc := <-hooked:
		t.Errorf("suppressed alert reached the webhook: %v", doc)
	default:
	}
	stopped = true
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("run: %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("run did not stop on SIGTERM")
	}
}

// lockedWriter serialises writes of the service's logger and the test's reads.
type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// TestEvaluateJSON: `detector evaluate -format qnames` and `-format
// nsl-kdd` with the shipped models print one JSON object with
// binary_accuracy, per-class figures and the confusion matrix. The row
// counts are the data set's (README of labeled/: validate.csv 4,000 tunnel
// and 1,000 benign names; KDDTrain+_20Percent 25,192 rows, every fifth
// held out: 5,038).
func TestEvaluateJSON(t *testing.T) {
	shared := testkit.Shared(t)
	for _, c := range []struct {
		args        []string
		n           int
		support     map[string]int
		minAccuracy float64
	}{
		{[]string{"-format", "qnames", "-data", filepath.Join(shared, "data/labeled/dns-tunnel-qnames/validate.csv")}, 5000,
			map[string]int{"tunnel": 4000, "benign": 1000}, 0.98},
		{[]string{"-format", "nsl-kdd", "-data", filepath.Join(shared, "data/labeled/nsl-kdd/KDDTrain+_20Percent.txt"), "-split"}, 5038,
			nil, 0.95},
	} {
		var out bytes.Buffer
		if err := evaluate(c.args, &out, func(string) string { return "" }); err != nil {
			t.Fatalf("%v: %v", c.args, err)
		}
		var rep struct {
			N              int     `json:"n"`
			BinaryAccuracy float64 `json:"binary_accuracy"`
			Classes        map[string]struct {
				Precision, Recall, F1 float64
				Support               int
			} `json:"classes"`
			Confusion struct {
				Labels []string `json:"labels"`
				Matrix [][]int  `json:"matrix"`
			} `json:"confusion_matrix"`
		}
		if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
			t.Fatalf("%v: output is not one JSON object: %v\n%s", c.args, err, out.String())
		}
		sum, diag := 0, 0
		for i, row := range rep.Confusion.Matrix {
			for j, v := range row {
				sum += v
				if i == j {
					diag += v
				}
			}
		}
		if rep.N != c.n || sum != c.n || rep.BinaryAccuracy < c.minAccuracy || rep.BinaryAccuracy != float64(diag)/float64(sum) || len(rep.Classes) != 2 {
			t.Errorf("%v: n %d, matrix sum %d, accuracy %v (diagonal %d)", c.args, rep.N, sum, rep.BinaryAccuracy, diag)
		}
		for cl, n := range c.support {
			if rep.Classes[cl].Support != n {
				t.Errorf("%v: %s support %d, want %d", c.args, cl, rep.Classes[cl].Support, n)
			}
		}
	}
	if err := evaluate([]string{"-format", "pcap"}, &bytes.Buffer{}, func(string) string { return "" }); err == nil {
		t.Error("-format pcap accepted")
	}
	// -holdout-types: one JSON object with the five classes; n = the
	// file's attack records (11,743) + its held-out normal records (2,691),
	// hand counts (awk on the label column).
	var out bytes.Buffer
	if err := evaluate([]string{"-format", "nsl-kdd", "-holdout-types", "-data", filepath.Join(shared, "data/labeled/nsl-kdd/KDDTrain+_20Percent.txt")},
		&out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		N         int                        `json:"n"`
		Classes   map[string]json.RawMessage `json:"classes"`
		Confusion struct {
			Labels []string `json:"labels"`
		} `json:"confusion_matrix"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || rep.N != 14434 || len(rep.Classes) != 6 ||
		strings.Join(rep.Confusion.Labels, ",") != "normal,dos,probe,r2l,u2r,unknown_attack" {
		t.Errorf("-holdout-types: %v %+v", err, rep)
	}
	// -format nsl-kdd on a whole file (43 columns, no header, as KDDTest+.txt):
	// the binary report at the top level and the 5-class one under
	// five_class, over the same 25,192 records (wc -l), 13,449 of them normal
	// (awk -F, '$42=="normal"').
	out.Reset()
	if err := evaluate([]string{"-format", "nsl-kdd", "-data", filepath.Join(shared, "data/labeled/nsl-kdd/KDDTrain+_20Percent.txt")},
		&out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var both struct {
		N              int     `json:"n"`
		BinaryAccuracy float64 `json:"binary_accuracy"`
		Classes        map[string]struct {
			Support int `json:"support"`
		} `json:"classes"`
		Five struct {
			N              int     `json:"n"`
			BinaryAccuracy float64 `json:"binary_accuracy"`
			Classes        map[string]struct {
				Support int `json:"support"`
			} `json:"classes"`
			Confusion struct {
				Labels []string `json:"labels"`
			} `json:"confusion_matrix"`
		} `json:"five_class"`
	}
	if err := json.Unmarshal(out.Bytes(), &both); err != nil || both.N != 25192 || both.Five.N != 25192 ||
		both.Classes["normal"].Support != 13449 || both.Five.Classes["normal"].Support != 13449 ||
		both.BinaryAccuracy != both.Five.BinaryAccuracy ||
		strings.Join(both.Five.Confusion.Labels, ",") != "normal,dos,probe,r2l,u2r,unknown_attack" {
		t.Errorf("-format nsl-kdd whole file: %v %+v", err, both)
	}
}

// TestEvaluateHosts: `detector evaluate -format hosts` on the labelled
// captures reproduces the shipped host model's report: 135 benign and 24
// attack host windows (hand count: internal/hostmodel/testdata/
// count-windows.py over tshark's fields), the attack windows above the
// threshold exactly as recorded in the model file at training (the shipped
// forest is fixed), and attackers above the threshold more often than
// held-out benign hosts (labels are the truth; the held-out forests are
// refitted, so that figure varies a little from run to run).
func TestEvaluateHosts(t *testing.T) {
	shared := testkit.Shared(t)
	testkit.Tool(t, "tshark")
	var out bytes.Buffer
	if err := evaluate([]string{"-format", "hosts", "-data", filepath.Join(shared, "data/pcaps")}, &out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		N               int                        `json:"n"`
		BinaryAccuracy  float64                    `json:"binary_accuracy"`
		Classes         map[string]json.RawMessage `json:"classes"`
		BenignWindows   int                        `json:"benign_windows"`
		BenignAnomalous int                        `json:"benign_anomalous"`
		BenignInSample  int                        `json:"benign_anomalous_in_sample"`
		AttackWindows   int                        `json:"attack_windows"`
		AttackAnomalous int                        `json:"attack_anomalous"`
		Threshold       float64                    `json:"threshold"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatalf("not one JSON object: %v\n%s", err, out.String())
	}
	f, err := loadHostModel("")
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("attack %d/%d, benign held out %d/%d, in sample %d, accuracy %.3f", rep.AttackAnomalous, rep.AttackWindows,
		rep.BenignAnomalous, rep.BenignWindows, rep.BenignInSample, rep.BinaryAccuracy)
	if rep.N != 159 || rep.BenignWindows != 135 || rep.AttackWindows != 24 || len(rep.Classes) != 2 || rep.Threshold != f.Threshold {
		t.Errorf("n %d, benign %d, attack %d, classes %d, threshold %v", rep.N, rep.BenignWindows, rep.AttackWindows, len(rep.Classes), rep.Threshold)
	}
	if rep.AttackAnomalous != f.Eval.AttackAnomalous || rep.BenignInSample != f.Eval.BenignInSample {
		t.Errorf("attack anomalous %d, benign in sample %d; the model file recorded %d and %d", rep.AttackAnomalous, rep.BenignInSample,
			f.Eval.AttackAnomalous, f.Eval.BenignInSample)
	}
	if float64(rep.AttackAnomalous)/float64(rep.AttackWindows) <= float64(rep.BenignAnomalous)/float64(rep.BenignWindows) {
		t.Errorf("attackers above the threshold %d/%d, not more often than held-out benign hosts %d/%d",
			rep.AttackAnomalous, rep.AttackWindows, rep.BenignAnomalous, rep.BenignWindows)
	}
	// The shipped report (models/host-iforest.eval.json): every figure
	// of the shipped forest (attack captures, in-sample benign) exactly;
	// the held-out benign count, from forests refitted on each run, within
	// 5 windows of it.
	compareReport(t, "../../models/host-iforest.eval.json", out.Bytes(), func(k string, want, got any) bool {
		switch k {
		case "benign_anomalous":
			return math.Abs(want.(float64)-got.(float64)) <= 5
		case "binary_accuracy", "classes", "confusion_matrix":
			return true // follow benign_anomalous
		case "captures":
			return fmt.Sprint(attackRows(want)) == fmt.Sprint(attackRows(got))
		}
		return false
	})
}

// attackRows keeps the attack captures' rows of a host report's captures.
func attackRows(v any) []any {
	var out []any
	for _, c := range v.([]any) {
		if c.(map[string]any)["label"] != "benign" {
			out = append(out, c)
		}
	}
	return out
}

// compareReport compares a JSON report with the shipped one at path, key by
// key (except "data", the path the command was given): equal, or accepted
// by loose(key, want, got) for the keys a report documents as varying.
func compareReport(t *testing.T, path string, got []byte, loose func(k string, want, got any) bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var w, g map[string]any
	if err := json.Unmarshal(b, &w); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	if err := json.Unmarshal(got, &g); err != nil {
		t.Fatalf("report: %v", err)
	}
	for k, wv := range w {
		if k == "data" {
			continue
		}
		if fmt.Sprint(wv) != fmt.Sprint(g[k]) && (loose == nil || !loose(k, wv, g[k])) {
			t.Errorf("%s: %s = %v, the shipped report has %v", path, k, g[k], wv)
		}
	}
	if len(g) != len(w) {
		t.Errorf("%s: %d keys, the shipped report has %d", path, len(g), len(w))
	}
}

// TestShippedReports: the evaluation reports shipped in models/ (issue 5:
// "reproduced by make test") come out of `detector evaluate` again: the
// flow model on the held-out fifth of KDDTrain+_20Percent and the
// query-name model on validate.csv exactly (the shipped models are fixed
// and scored deterministically); the whole-attack-type hold-out, which
// retrains the design per fold, with the same rows and supports and a
// binary accuracy within holdoutTolerance of the report. That retraining
// cannot be made deterministic: golearn's isolation forest draws from
// math/rand's global source (rand.Seed is a no-op since Go 1.24) and its
// ID3 breaks ties between equal splits in map order. 41 runs of `detector
// evaluate -format nsl-kdd -holdout-types` on 2026-11-30 gave 0.9060 to
// 0.9419 (median 0.9308, the shipped report's run; 39 of 41 within
// 0.9230-0.9385; the QA's 8 runs 0.9286-0.9365, models/README.md). The
// host model's report: TestEvaluateHosts.
func TestShippedReports(t *testing.T) {
	// holdoutTolerance covers the measured range around the shipped
	// median (-0.0248, +0.0111) with 0.005 to spare; a hold-out no better
	// than answering attack for every record (0.814) still fails.
	const holdoutTolerance = 0.03
	shared := testkit.Shared(t)
	kdd := filepath.Join(shared, "data/labeled/nsl-kdd/KDDTrain+_20Percent.txt")
	for _, c := range []struct {
		report string
		args   []string
		loose  func(k string, want, got any) bool
	}{
		{"flow-id3.eval.json", []string{"-format", "nsl-kdd", "-data", kdd, "-split"}, func(k string, want, got any) bool {
			if k != "five_class" { // exact, but for the nested report's data path
				return false
			}
			w, g := want.(map[string]any), got.(map[string]any)
			delete(w, "data")
			delete(g, "data")
			return fmt.Sprint(w) == fmt.Sprint(g)
		}},
		{"qname-id3.eval.json", []string{"-format", "qnames", "-data", filepath.Join(shared, "data/labeled/dns-tunnel-qnames/validate.csv")}, nil},
		{"flow-id3.holdout-types.eval.json", []string{"-format", "nsl-kdd", "-holdout-types", "-data", kdd}, func(k string, want, got any) bool {
			switch k {
			case "binary_accuracy":
				t.Logf("hold-out binary accuracy %.4f, the report %.4f (tolerance %v)", got, want, holdoutTolerance)
				return math.Abs(want.(float64)-got.(float64)) <= holdoutTolerance
			case "classes":
				for cl, v := range want.(map[string]any) {
					g, ok := got.(map[string]any)[cl].(map[string]any)
					if !ok || g["support"] != v.(map[string]any)["support"] {
						return false
					}
				}
				return true
			case "confusion_matrix":
				w, g := want.(map[string]any), got.(map[string]any)
				if fmt.Sprint(w["labels"]) != fmt.Sprint(g["labels"]) {
					return false
				}
				for i, row := range w["matrix"].([]any) { // same row sums: the supports
					sw, sg := 0.0, 0.0
					for j := range row.([]any) {
						sw += row.([]any)[j].(float64)
						sg += g["matrix"].([]any)[i].([]any)[j].(float64)
					}
					if sw != sg {
						return false
					}
				}
				return true
			}
			return false
		}},
	} {
		t.Run(c.report, func(t *testing.T) {
			var out bytes.Buffer
			if err := evaluate(c.args, &out, func(string) string { return "" }); err != nil {
				t.Fatal(err)
			}
			compareReport(t, filepath.Join("../../models", c.report), out.Bytes(), c.loose)
		})
	}
}

// TestRescoreCommand runs `detector rescore` against an in-process
// JetStream holding 60 SYN probes: one portscan alert under the run id.
func TestRescoreCommand(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	ctx := context.Background()
	from := time.Now().Add(-time.Second)
	batch := &pb.FlowBatch{Sensor: "s1"}
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	for p := uint32(1); p <= 60; p++ {
		at := t0 + int64(p)*int64(time.Millisecond)
		batch.Flows = append(batch.Flows, &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, 66}, OrigPort: 40000, RespAddr: []byte{10, 0, 0, 20},
			RespPort: p, StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true})
	}
	data, _ := proto.Marshal(batch)
	m := &nats.Msg{Subject: schema.FlowsSubject("s1", 1, 2), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, "b1")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	err := rescore([]string{"-nats.url", url, "-from", from.UTC().Format(time.RFC3339Nano), "-run", "t1", "-health.check", "0"}, &out, &errOut, func(string) string { return "" })
	if err != nil {
		t.Fatalf("rescore: %v\n%s", err, errOut.String())
	}
	var sum struct {
		RunID  string         `json:"run_id"`
		Flows  int            `json:"flows"`
		Alerts map[string]int `json:"alerts"`
	}
	if err := json.Unmarshal(out.Bytes(), &sum); err != nil || sum.RunID != "t1" || sum.Flows != 60 || sum.Alerts["portscan"] != 1 {
		t.Errorf("summary %s (%v)", out.String(), err)
	}
	for _, args := range [][]string{{"-from", "yesterday"}, {"-from", "2026-01-02T00:00:00Z", "-to", "2026-01-01T00:00:00Z"}} {
		if err := rescore(append([]string{"-nats.url", url}, args...), &out, &errOut, func(string) string { return "" }); err == nil {
			t.Errorf("%v accepted", args)
		}
	}
}

// TestPushCommand: `detector push` stores the shipped query-name model as
// object "qname" of MODELS (one JSON line: bucket, kind, model, size =
// the file's size, digest); a file that is not a model of the kind, or an
// unknown kind, is an error and nothing is stored.
func TestPushCommand(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	ctx := context.Background()
	noenv := func(string) string { return "" }
	file := "../../models/qname-id3.model"
	st, err := os.Stat(file)
	if err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if err := push([]string{"-nats.url", url, "-kind", "qname", "-file", file}, &out, &errOut, noenv); err != nil {
		t.Fatalf("push: %v\n%s", err, errOut.String())
	}
	var res struct {
		Bucket, Kind, Model, Digest string
		Size                        int64
	}
	if err := json.Unmarshal(out.Bytes(), &res); err != nil || res.Bucket != "MODELS" || res.Kind != "qname" || res.Model != "qname-id3" ||
		res.Size != st.Size() || res.Digest == "" {
		t.Fatalf("push output %s (%v)", out.String(), err)
	}
	obs, err := js.ObjectStore(ctx, "MODELS")
	if err != nil {
		t.Fatal(err)
	}
	want, _ := os.ReadFile(file)
	if got, err := obs.GetBytes(ctx, "qname"); err != nil || !bytes.Equal(got, want) {
		t.Fatalf("stored object: %v, %d bytes", err, len(got))
	}
	for _, args := range [][]string{{"-kind", "flow", "-file", file}, {"-kind", "nets", "-file", file}, {"-kind", "host", "-file", file}} {
		if err := push(append([]string{"-nats.url", url}, args...), &out, &errOut, noenv); err == nil {
			t.Errorf("push %v: no error", args)
		}
	}
	if _, err := obs.GetInfo(ctx, "flow"); err == nil {
		t.Error("a refused model was stored")
	}
}

// TestRunModelLoadFailure: a flow model file that does not exist and a
// query-name model file that is not a model are errors at start (logged,
// netwatch_detector_model_load_errors_total; -check-config exits with
// them) and the rules keep running: 60 SYN probes on FLOWS raise the
// portscan alert on ALERTS. A flow model put into the MODELS object store
// afterwards is loaded without a restart.
func TestRunModelLoadFailure(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	ctx := context.Background()
	bad := filepath.Join(t.TempDir(), "qname.model")
	if err := os.WriteFile(bad, []byte("not a model"), 0o644); err != nil {
		t.Fatal(err)
	}
	args := []string{"-nats.url", url, "-http.addr", "", "-health.check", "0", "-model", "/nonexistent/flow.model", "-qname.model", bad}
	if err := run(append([]string{"-check-config"}, args...), &bytes.Buffer{}, func(string) string { return "" }); err == nil {
		t.Fatal("-check-config accepted models that do not load")
	}
	done := make(chan error, 1)
	var logs bytes.Buffer
	lw := &lockedWriter{w: &logs}
	go func() { done <- run(args, lw, func(string) string { return "" }) }()
	stopped := false
	defer func() {
		if !stopped {
			_ = syscall.Kill(os.Getpid(), syscall.SIGTERM)
			<-done
		}
	}()
	logged := func(s string) int { lw.mu.Lock(); defer lw.mu.Unlock(); return strings.Count(logs.String(), s) }
	testkit.Eventually(t, 20*time.Second, func() bool {
		_, err := js.Consumer(ctx, schema.StreamPackets, "detector-arp")
		return err == nil && logged("model not loaded; the rules run without it") == 2
	}, "detector not started, or the two model errors not logged")
	batch := &pb.FlowBatch{Sensor: "s1"}
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	for p := uint32(1); p <= 60; p++ {
		at := t0 + int64(p)*int64(time.Millisecond)
		batch.Flows = append(batch.Flows, &pb.Flow{Proto: 6, OrigAddr: []byte{10, 0, 0, 66}, OrigPort: 40000, RespAddr: []byte{10, 0, 0, 20},
			RespPort: p, StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true})
	}
	data, _ := proto.Marshal(batch)
	m := &nats.Msg{Subject: schema.FlowsSubject("s1", 1, 2), Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, "b1")
	if _, err := js.PublishMsg(ctx, m); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() bool {
		s, err := js.Stream(ctx, schema.StreamAlerts)
		if err != nil {
			return false
		}
		raw, err := s.GetMsg(ctx, 1)
		if err != nil {
			return false
		}
		var a pb.Alert
		return proto.Unmarshal(raw.Data, &a) == nil && a.Category == "portscan" && a.OrigAddr == "10.0.0.66"
	}, "no portscan alert without the models")
	obs, err := modelstore.Open(ctx, js, modelstore.DefaultBucket, 1)
	if err != nil {
		t.Fatal(err)
	}
	flow, err := os.ReadFile("../../models/flow-id3.model")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := modelstore.Put(ctx, obs, modelstore.KindFlow, flow); err != nil {
		t.Fatal(err)
	}
	// -model is set but did not load, so it does not pin the kind
	testkit.Eventually(t, 10*time.Second, func() bool {
		return logged(`"msg":"model loaded from the object store","service":"detector","kind":"flow","model":"flow-id3"`) == 1
	}, "stored flow model not loaded: "+logs.String())
	stopped = true
	if err := syscall.Kill(os.Getpid(), syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Errorf("run: %v", err)
	}
}

// TestEvaluateCaptures: `detector evaluate -format captures` (the flow
// classifier trained on the labelled captures' own flows, each capture
// scored by a tree trained without it) against the shipped report
// models/flow-captures-id3.eval.json. What it checks exactly: the same
// captures, each with the same number of flows and of labelled attack
// flows, and the confusion matrix's row sums (the labelled flows); and,
// independently of the code, the attack flows of six captures are the
// counts their label files state: nmap SYN scan 1,994 probes, masscan 1,001
// probes, 11 SSH and 30 FTP sessions (pcap-labels.csv), hydra SSH 9 TCP
// connections, hydra HTTP 40 passwords = 40 connections (lab/labels.csv).
// What it does not check: the classifier's accuracy. The floor 0.772
// (the previous six-feature tree's 0.762 + 0.01) is below every run
// reported (0.785 to 0.997: models/README.md and the QA of issue 5), so
// it only catches a collapse, not a regression: golearn's ID3 breaks ties
// between equally good splits in map order (no seed controls it: 5 refits
// of the NSL-KDD binary and 5-class trees on the same 20,154 records each
// scored or classed 12-22 of the 5,038 held-out records differently from
// a first fit, 2026-11-30), and with the traffic features that
// decides whether the lab hping3 SYN flood's 14,785 flows are recognised
// with their capture held out, which alone moves the accuracy by 0.2.
func TestEvaluateCaptures(t *testing.T) {
	shared := testkit.Shared(t)
	testkit.Tool(t, "tshark")
	var out bytes.Buffer
	if err := evaluate([]string{"-format", "captures", "-data", filepath.Join(shared, "data/pcaps")}, &out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		Captures []struct {
			Capture     string `json:"capture"`
			AttackFlows int    `json:"attack_flows"`
		} `json:"captures"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil {
		t.Fatal(err)
	}
	want := map[string]int{"attack-portscan-nmap-syn.pcapng": 1994, "attack-portscan-masscan-udp-0-1000.pcap": 1001,
		"attack-ssh-bruteforce-password-guessing.pcap": 11, "attack-ftp-bruteforce.pcap": 30,
		"lab/lab-hydra-ssh-bruteforce.pcap": 9, "lab/lab-hydra-http-basic-bruteforce.pcap": 40}
	for _, c := range rep.Captures {
		if n, ok := want[c.Capture]; ok {
			delete(want, c.Capture)
			if c.AttackFlows != n {
				t.Errorf("%s: %d attack flows, the label file says %d", c.Capture, c.AttackFlows, n)
			}
		}
	}
	if len(want) != 0 {
		t.Errorf("captures missing from the report: %v", want)
	}
	compareReport(t, "../../models/flow-captures-id3.eval.json", out.Bytes(), func(k string, w, g any) bool {
		switch k {
		case "binary_accuracy":
			// a floor only (see the doc comment): runs vary 0.785-0.997
			// with golearn's map-order tie-breaks (models/README.md)
			return g.(float64) >= 0.772
		case "classes":
			return true // follows binary_accuracy
		case "confusion_matrix": // the same row sums: the labelled flows
			wm, gm := w.(map[string]any)["matrix"].([]any), g.(map[string]any)["matrix"].([]any)
			for i := range wm {
				wr, gr := wm[i].([]any), gm[i].([]any)
				if wr[0].(float64)+wr[1].(float64) != gr[0].(float64)+gr[1].(float64) {
					return false
				}
			}
			return true
		case "captures": // the same captures, flows and labels
			strip := func(v any) string {
				var s []string
				for _, c := range v.([]any) {
					m := c.(map[string]any)
					s = append(s, fmt.Sprint(m["capture"], m["flows"], m["attack_flows"]))
				}
				return strings.Join(s, ";")
			}
			return strip(w) == strip(g)
		}
		return false
	})
}

// TestBadTrainingInput: `detector evaluate` and `detector train` refuse
// malformed files with an error naming the file and the line (main exits
// 1 on any error), and train refuses data of one class; an unknown -format
// names every format. The rows are the first lines of
// KDDTrain+_20Percent.txt, edited.
func TestBadTrainingInput(t *testing.T) {
	shared := testkit.Shared(t)
	raw, err := os.ReadFile(filepath.Join(shared, "data/labeled/nsl-kdd/KDDTrain+_20Percent.txt"))
	if err != nil {
		t.Fatal(err)
	}
	rows := strings.SplitN(string(raw), "\n", 6)[:5] // teardrop, normal, normal, neptune, normal
	dir := t.TempDir()
	file := func(name, body string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(body), 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	wide := strings.Join([]string{rows[0], rows[1] + ",0,0"}, "\n")
	nan := strings.Join([]string{rows[0], strings.Replace(rows[1], ",491,", ",NaN,", 1)}, "\n")
	neg := strings.Join([]string{rows[0], rows[1], strings.Replace(rows[2], ",146,", ",-146,", 1)}, "\n")
	for _, c := range []struct {
		cmd       func([]string, io.Writer, func(string) string) error
		args      []string
		wantError string
	}{
		{evaluate, []string{"-format", "nsl-kdd", "-data", file("empty.txt", "")}, "empty.txt: nsl-kdd: no records"},
		{train, []string{"-data", file("empty2.txt", "\n"), "-out", filepath.Join(dir, "m")}, "no records"},
		{evaluate, []string{"-format", "qnames", "-data", file("empty.csv", "")}, "empty.csv: no query names"},
		{train, []string{"-format", "qnames", "-data", file("empty2.csv", ""), "-out", filepath.Join(dir, "q")}, "0 names"},
		{evaluate, []string{"-format", "nsl-kdd", "-data", file("wide.txt", wide)}, "line 2: 45 columns, want 42 or 43"},
		{train, []string{"-data", file("wide2.txt", wide), "-out", filepath.Join(dir, "m")}, "line 2: 45 columns"},
		{evaluate, []string{"-format", "nsl-kdd", "-holdout-types", "-data", file("nan.txt", nan)}, "line 2 column 5"},
		{evaluate, []string{"-format", "nsl-kdd", "-data", file("neg.txt", neg)}, "line 3 column 5"},
		{train, []string{"-all", "-data", file("normal.txt", strings.Join([]string{rows[1], rows[2], rows[4]}, "\n")), "-out", filepath.Join(dir, "m")}, "all normal"},
		{train, []string{"-format", "qnames", "-data", file("tunnel.csv", "1,q+aJ04nrBA.hidemyself.org.\n1,q+aJ1InsBA.hidemyself.org.\n"), "-out", filepath.Join(dir, "q")}, "2 of them tunnel"},
		{evaluate, []string{"-format", "csv"}, "want nsl-kdd, captures, qnames or hosts"},
		{train, []string{"-format", "csv"}, "want nsl-kdd, captures, qnames or hosts"},
	} {
		err := c.cmd(c.args, io.Discard, func(string) string { return "" })
		if err == nil || !strings.Contains(err.Error(), c.wantError) {
			t.Errorf("%v: error %v, want one containing %q", c.args, err, c.wantError)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "m")); err == nil {
		t.Error("a model file was written from bad input")
	}
	// a file with CR-only line endings is five records, not one
	var out bytes.Buffer
	if err := evaluate([]string{"-format", "nsl-kdd", "-data", file("cr.txt", strings.Join(rows, "\r"))}, &out, func(string) string { return "" }); err != nil {
		t.Fatal(err)
	}
	var rep struct {
		N int `json:"n"`
	}
	if err := json.Unmarshal(out.Bytes(), &rep); err != nil || rep.N != 5 {
		t.Errorf("CR line endings: n = %d, want 5 (%v)", rep.N, err)
	}
}
