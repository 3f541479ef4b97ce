package qname

import (
	"math"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"netwatch/testkit"
)

func TestExtract(t *testing.T) {
	// Hand-computed: the longest label of "ab1.cD+9x.example.com." is
	// "example": 7 characters, e twice and 5 others once (6 distinct), no
	// digit, upper or special character, vowels e, a, e of 7 letters.
	x := Extract("ab1.cD+9x.example.com.")
	h := -(2.0/7*math.Log2(2.0/7) + 5*(1.0/7)*math.Log2(1.0/7))
	want := []float64{7, h, 0, 0, 0, 3.0 / 7, 6.0 / 7}
	for i := range want {
		if math.Abs(x[i]-want[i]) > 1e-12 {
			t.Errorf("%s = %v, want %v", FeatureNames[i], x[i], want[i])
		}
	}
	// "ab1.cD+9x.org": the longest label is "cD+9x": 5 distinct characters
	// (entropy log2 5), 1 digit, 1 upper, 1 special, no vowel of 3 letters.
	x = Extract("ab1.cD+9x.org")
	want = []float64{5, math.Log2(5), 0.2, 0.2, 0.2, 0, 1}
	for i := range want {
		if math.Abs(x[i]-want[i]) > 1e-12 {
			t.Errorf("cD+9x: %s = %v, want %v", FeatureNames[i], x[i], want[i])
		}
	}
	for _, q := range []string{"", ".", "com", "a.b", "x.co.uk", "+/=.example.org"} {
		for i, v := range Extract(q) {
			if math.IsNaN(v) || math.IsInf(v, 0) {
				t.Errorf("Extract(%q) %s = %v", q, FeatureNames[i], v)
			}
		}
	}
}

// TestTrainValidate trains on train.csv and checks the held-out
// validate.csv (names of the same tools, other sessions): the figures are
// printed by `detector evaluate -format qnames` and recorded in
// models/README.md; here the floor is the rule baseline (IsTunnelName:
// 2,972 of 4,000 tunnel names, 0 of 1,000 benign: accuracy 0.794).
func TestTrainValidate(t *testing.T) {
	dir := filepath.Join(testkit.Shared(t), "data", "labeled", "dns-tunnel-qnames")
	train, err := ReadFile(filepath.Join(dir, "train.csv"))
	if err != nil {
		testkit.Unavailable(t, "qnames: %v", err)
	}
	val, err := ReadFile(filepath.Join(dir, "validate.csv"))
	if err != nil {
		t.Fatal(err)
	}
	m, err := Train(train, "qname-id3")
	if err != nil {
		t.Fatal(err)
	}
	names := make([]string, len(val))
	for i, r := range val {
		names[i] = r.Name
	}
	pred, err := m.Predict(names)
	if err != nil {
		t.Fatal(err)
	}
	correct := 0
	for i, r := range val {
		if pred[i] == r.Tunnel {
			correct++
		}
	}
	acc := float64(correct) / float64(len(val))
	t.Logf("validate accuracy %.4f (%d of %d)", acc, correct, len(val))
	if acc <= 0.794 {
		t.Errorf("accuracy %.4f not above the rule baseline 0.794", acc)
	}
	path := filepath.Join(t.TempDir(), "q.model")
	if err := m.Save(path); err != nil {
		t.Fatal(err)
	}
	m2, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	pred2, _ := m2.Predict(names)
	for i := range pred {
		if pred[i] != pred2[i] {
			t.Fatalf("loaded model disagrees on %q", names[i])
		}
	}
}

// TestCaptureNames scores the shipped model on query names that tshark
// finds in the captures (not in the data set): the iodine tunnels' names
// (every query under t.lab.test and pirate.sea is tunnel traffic,
// labels.csv) and every name of the benign captures. It logs recall and
// false positives and requires most tunnel names found and few benign
// ones flagged; the figures are in models/README.md.
func TestCaptureNames(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	tshark := testkit.Tool(t, "tshark")
	names := func(file, suffix string) []string {
		out, err := exec.Command(tshark, "-r", filepath.Join(pcaps, file), "-n", "-Y", "dns.flags.response == 0", "-T", "fields", "-e", "dns.qry.name").Output()
		if err != nil {
			t.Fatalf("tshark %s: %v", file, err)
		}
		seen := map[string]bool{}
		var ns []string
		for _, l := range strings.Split(string(out), "\n") {
			l = strings.TrimSpace(l)
			if l != "" && !seen[l] && strings.HasSuffix(l, suffix) {
				seen[l] = true
				ns = append(ns, l)
			}
		}
		return ns
	}
	m, err := Load(filepath.Join("..", "..", "models", "qname-id3.model"))
	if err != nil {
		t.Fatal(err)
	}
	count := func(ns []string) int {
		p, err := m.Predict(ns)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for _, x := range p {
			if x {
				n++
			}
		}
		return n
	}
	var tunnel, benign []string
	tunnel = append(tunnel, names("lab/lab-dns-tunnel-iodine.pcap", ".t.lab.test")...)
	tunnel = append(tunnel, names("attack-dns-tunnel-iodine.pcap", ".pirate.sea")...)
	for _, f := range []string{"eth-ipv4-dns-http-browsing-wikipedia.pcap", "lab/lab-benign-mixed.pcap", "dns-over-tcp-tcpdump-org.pcap",
		"pcapng-2-interfaces-nsec-and-usec-dns.pcapng", "ipv6-fragments-dns.pcap", "attack-arp-poisoning-mitm.pcapng"} {
		benign = append(benign, names(f, "")...)
	}
	tp, fp := count(tunnel), count(benign)
	t.Logf("capture names: %d of %d tunnel names flagged, %d of %d benign names flagged", tp, len(tunnel), fp, len(benign))
	if len(tunnel) < 100 || len(benign) < 20 {
		t.Fatalf("tshark found %d tunnel and %d benign names", len(tunnel), len(benign))
	}
	if float64(tp) < 0.5*float64(len(tunnel)) || float64(fp) > 0.1*float64(len(benign)) {
		t.Errorf("recall %d/%d or false positives %d/%d out of bounds", tp, len(tunnel), fp, len(benign))
	}
}

// TestCompiledMatchesGolearn: IsTunnel (the compiled tree the dns_tunnel
// rule uses) gives golearn's Predict answer on every name of validate.csv
// and train.csv, with the shipped model, and allocates nothing.
func TestCompiledMatchesGolearn(t *testing.T) {
	dir := filepath.Join(testkit.Shared(t), "data", "labeled", "dns-tunnel-qnames")
	m, err := Load(filepath.Join("..", "..", "models", "qname-id3.model"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"validate.csv", "train.csv"} {
		recs, err := ReadFile(filepath.Join(dir, f))
		if err != nil {
			testkit.Unavailable(t, "qnames: %v", err)
		}
		names := make([]string, len(recs))
		for i, r := range recs {
			names[i] = r.Name
		}
		want, err := m.Predict(names)
		if err != nil {
			t.Fatal(err)
		}
		diff := 0
		for i, q := range names {
			if m.IsTunnel(q) != want[i] {
				diff++
				if diff < 5 {
					t.Errorf("%s: %q compiled %v, golearn %v", f, q, !want[i], want[i])
				}
			}
		}
		if diff > 0 {
			t.Errorf("%s: %d of %d names differ", f, diff, len(names))
		}
	}
	q := "0iyb2ka3rlhcqsfwnv4d6tjxnb7rkdfpnhkgmxqaxcc.pirate.sea."
	if n := testing.AllocsPerRun(100, func() { m.IsTunnel(q) }); n != 0 {
		t.Errorf("IsTunnel: %v allocations, want 0", n)
	}
}

func BenchmarkIsTunnel(b *testing.B) {
	m, err := Load(filepath.Join("..", "..", "models", "qname-id3.model"))
	if err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		m.IsTunnel("0iyb2ka3rlhcqsfwnv4d6tjxnb7rkdfpnhkgmxqaxcc.pirate.sea.")
	}
}
