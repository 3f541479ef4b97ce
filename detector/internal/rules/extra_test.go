package rules

import (
	"encoding/json"
	"math"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// dnsResponse is a reflected DNS answer of pkts packets from reflector i to
// victim, in the enricher's orientation (the victim is the originator and
// sent nothing) or, with firstPacket, as the first sender's flow.
func dnsResponse(i int, pkts uint64, at int64, firstPacket bool) *pb.Flow {
	r := []byte{192, 0, 2, byte(i)}
	f := &pb.Flow{Proto: 17, OrigAddr: victim, OrigPort: 80, RespAddr: r, RespPort: 53,
		StartNs: at, EndNs: at + 1e6, RespPkts: pkts, RespBytes: pkts * 3000, DirectionGuessed: true, Final: true}
	if firstPacket {
		f.OrigAddr, f.RespAddr, f.OrigPort, f.RespPort = r, victim, 53, 80
		f.OrigPkts, f.OrigBytes, f.RespPkts, f.RespBytes = f.RespPkts, f.RespBytes, 0, 0
	}
	return f
}

func TestAmplification(t *testing.T) {
	ms := int64(time.Millisecond)
	resp := func(n, reflectors int, firstPacket bool) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < n; i++ { // 10 packets per flow
			fs = append(fs, dnsResponse(i%reflectors, 10, t0+int64(i)*ms, firstPacket))
		}
		return fs
	}
	win := windowStart(t0, DefaultConfig().FloodWindow)
	for _, c := range []struct {
		name  string
		flows []*pb.Flow
		want  bool
	}{
		{"999 responses from 50 reflectors", append(resp(99, 50, false), dnsResponse(1, 9, t0, false)), false},
		{"1000 responses from 50 reflectors", resp(100, 50, false), true},
		{"1000 responses from 50 reflectors, first-packet orientation", resp(100, 50, true), true},
		{"1000 responses from 9 reflectors", resp(100, 9, false), false},
		{"1000 queries to 50 DNS servers (the host asked)", func() []*pb.Flow {
			var fs []*pb.Flow
			for i := 0; i < 100; i++ {
				f := dnsResponse(i%50, 10, t0+int64(i)*ms, false)
				f.OrigPkts = 10
				fs = append(fs, f)
			}
			return fs
		}(), false},
	} {
		t.Run(c.name, func(t *testing.T) {
			got := run(New(DefaultConfig()), c.flows)
			var amps []*pb.Alert
			for _, a := range got {
				if a.Category == "amplification" {
					amps = append(amps, a)
				}
			}
			if !c.want {
				if len(amps) != 0 {
					t.Fatalf("amplification alert: %s", amps[0].Summary)
				}
				return
			}
			if len(amps) != 1 {
				t.Fatalf("%d amplification alerts, want 1", len(amps))
			}
			a := amps[0]
			if a.Id != schema.AlertID("s1", "amplification", "", "10.0.0.20", win) || a.OrigAddr != "" ||
				a.RespAddr != "10.0.0.20" || a.Technique != "T1498.002" || a.Severity != pb.Severity_SEVERITY_HIGH {
				t.Errorf("alert %v", a)
			}
			var ev struct {
				Packets, Reflectors int
				Ports               []string `json:"reflector_ports"`
			}
			if err := json.Unmarshal(a.Evidence, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Packets != 1000 || ev.Reflectors != 50 || len(ev.Ports) != 1 || ev.Ports[0] != "udp/53" {
				t.Errorf("evidence %s", a.Evidence)
			}
		})
	}
}

// dgaName is a CryptoLocker-style name: 12 to 15 letters from a linear
// congruential generator (Numerical Recipes constants), under one of four
// TLDs.
func dgaName(i int) string {
	x := uint32(i*7919 + 17)
	next := func() uint32 { x = x*1664525 + 1013904223; return x >> 8 }
	b := make([]byte, 12+next()%4)
	for j := range b {
		b[j] = byte('a' + next()%26)
	}
	return string(b) + []string{".com.", ".net.", ".org.", ".biz."}[i%4]
}

func TestDGA(t *testing.T) {
	ms := int64(time.Millisecond)
	// The generated names that IsRandomLabel takes (about 60 %).
	var names []string
	for i := 0; len(names) < 40; i++ {
		if n := dgaName(i); IsRandomLabel(registrable(n)) {
			names = append(names, n)
		}
	}
	// lookups answered with rcode (responded), as the enricher reports
	// the first response of each flow.
	lookups := func(ns []string, rcode uint32, responded bool) []*pb.Flow {
		var fs []*pb.Flow
		for i, n := range ns {
			f := dnsQuery(n, t0+int64(i)*ms)
			f.DnsQtype, f.DnsRcode, f.DnsResponded = 1, rcode, responded
			if !responded {
				f.RespPkts, f.RespBytes = 0, 0
			}
			fs = append(fs, f)
		}
		return fs
	}
	nx := func(ns []string) []*pb.Flow { return lookups(ns, RcodeNXDomain, true) }
	benign := []string{"www.google.com.", "en.wikipedia.org.", "upload.wikimedia.org.", "www.facebook.com.",
		"scorecardresearch.com.", "googlesyndication.com.", "doubleclick.net.", "cdn.jsdelivr.net.",
		"fonts.googleapis.com.", "www.bbc.co.uk.", "static.xx.fbcdn.net.", "api.github.com.", "login.microsoftonline.com."}
	win := windowStart(t0, time.Minute)
	for _, c := range []struct {
		name      string
		flows     []*pb.Flow
		want      bool
		nxAnswers int // hand count: NXDOMAIN flows up to the 10th random-looking one
		nxRandom  int
	}{
		{"9 random-looking domains, NXDOMAIN", nx(names[:9]), false, 0, 0},
		{"10 random-looking domains, NXDOMAIN", nx(names[:10]), true, 10, 10},
		// 13 benign NXDOMAIN answers first, then 10 random-looking: 23 in all.
		{"13 popular and 10 random-looking domains, NXDOMAIN", append(nx(benign), nx(names[:10])...), true, 23, 10},
		{"40 random-looking domains that resolve (NOERROR)", lookups(names, 0, true), false, 0, 0},
		{"40 random-looking domains, SERVFAIL", lookups(names, 2, true), false, 0, 0},
		{"40 random-looking domains, unanswered", lookups(names, 0, false), false, 0, 0},
		{"rcode 3 without a response seen", lookups(names, RcodeNXDomain, false), false, 0, 0},
		{"the same random-looking domain 40 times, NXDOMAIN", nx(slicesRepeat(names[0], 40)), false, 0, 0},
		{"13 popular domains, NXDOMAIN", nx(benign), false, 0, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			var dgas []*pb.Alert
			for _, a := range run(New(DefaultConfig()), c.flows) {
				if a.Category == "dga" {
					dgas = append(dgas, a)
				}
			}
			if !c.want {
				if len(dgas) != 0 {
					t.Fatalf("dga alert: %s", dgas[0].Summary)
				}
				return
			}
			if len(dgas) != 1 {
				t.Fatalf("%d dga alerts, want 1", len(dgas))
			}
			a := dgas[0]
			if a.Id != schema.AlertID("s1", "dga", "10.0.0.66", "", win) || a.OrigAddr != "10.0.0.66" || a.Technique != "T1568.002" {
				t.Errorf("alert %v", a)
			}
			var ev struct {
				Random  int `json:"nxdomain_random_domains"`
				Answers int `json:"nxdomain_answers"`
			}
			if err := json.Unmarshal(a.Evidence, &ev); err != nil || ev.Random != c.nxRandom || ev.Answers != c.nxAnswers {
				t.Errorf("evidence %s, want %d random-looking domains of %d NXDOMAIN answers", a.Evidence, c.nxRandom, c.nxAnswers)
			}
		})
	}
	for _, c := range []struct {
		label string
		want  bool
	}{
		{"google", false}, {"wikipedia", false}, {"googlesyndication", false}, {"scorecardresearch", false},
		{"kqxbdzfmgrpwlnv", true}, {"x7k2m9q4", true}, {"msftncsi", true /* benign (Windows NCSI) but 1 vowel in 8 letters */},
		{"google-analytics", false}, {"abcdefg", false},
	} {
		if got := IsRandomLabel(c.label); got != c.want {
			t.Errorf("IsRandomLabel(%q) = %v, want %v", c.label, got, c.want)
		}
	}
}

func slicesRepeat(s string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = s
	}
	return out
}

// TestRandomLabelDataset counts IsRandomLabel on the registrable labels of
// the benign query names of shared/data/labeled/dns-tunnel-qnames. The
// expected count was computed independently (Python: label before the
// last one, or before the last two under a two-letter TLD with a short
// second level; vowels "aeiouy" ≤ 25 % of ≥ 8 letters with a consonant run
// ≥ 4, or ≥ 3 letter/digit switches): 198 of 4,000.
func TestRandomLabelDataset(t *testing.T) {
	dir := filepath.Join(testkit.Shared(t), "data", "labeled", "dns-tunnel-qnames")
	benign, hits := 0, 0
	for _, file := range []string{"train.csv", "validate.csv"} {
		b, err := os.ReadFile(filepath.Join(dir, file))
		if err != nil {
			testkit.Unavailable(t, "labelled query names: %v", err)
		}
		for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
			label, q, _ := strings.Cut(strings.TrimSpace(line), ",")
			if label != "0" {
				continue
			}
			benign++
			if IsRandomLabel(registrable(q)) {
				hits++
			}
		}
	}
	if benign != 4000 || hits != 198 {
		t.Errorf("benign %d, random-looking %d, want 4000 and 198", benign, hits)
	}
}

// beaconConn is one completed connection from scanner to victim:443.
func beaconConn(at int64) *pb.Flow {
	f := conversation(443, at)
	f.OrigPort = uint32(40000 + at/int64(time.Second)%20000)
	return f
}

func TestBeaconing(t *testing.T) {
	s := int64(time.Second)
	// Jitter in seconds, a fixed table in [-3, 3].
	jitter := []float64{0.4, -1.2, 2.5, -0.3, 1.1, -2.8, 0.9, -0.6, 1.7, -1.9, 0.2, 2.9, -2.2, 0.7, -0.1, 1.4, -1.5, 2.1, -0.8, 0.5}
	at := func(i int, period float64) int64 {
		return t0 + int64((float64(i)*period+jitter[i%len(jitter)])*float64(s))
	}
	series := func(n int, period float64) []*pb.Flow {
		var fs []*pb.Flow
		for i := 0; i < n; i++ {
			fs = append(fs, beaconConn(at(i, period)))
		}
		return fs
	}
	// Irregular: intervals of a few seconds to five minutes.
	irregular := func() []*pb.Flow {
		gaps := []int64{5, 120, 30, 300, 12, 90, 45, 200, 15, 60, 8, 150, 25, 70, 240, 11, 33, 180, 20, 95}
		var fs []*pb.Flow
		t := t0
		for _, g := range gaps {
			t += g * s
			fs = append(fs, beaconConn(t))
		}
		return fs
	}()
	hour := windowStart(t0, time.Hour)
	for _, c := range []struct {
		name   string
		flows  []*pb.Flow
		want   bool
		period float64
	}{
		{"20 connections every 60 s ± 3 s", series(20, 60), true, 60},
		{"7 connections every 60 s", series(7, 60), false, 0},
		{"20 connections every 2 s (faster than -beacon.min-period)", series(20, 2), false, 0},
		{"20 connections at irregular times", irregular, false, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			all := runAll(New(DefaultConfig()), c.flows)
			var got []*pb.Alert
			for _, a := range all {
				if a.Category == "beaconing" {
					got = append(got, a)
				}
			}
			if !c.want {
				if len(got) != 0 {
					t.Fatalf("beaconing alert: %s", got[0].Summary)
				}
				return
			}
			if len(got) == 0 {
				t.Fatal("no beaconing alert")
			}
			a := got[0]
			wantID := schema.AlertID("s1", "beaconing", "10.0.0.66", "10.0.0.20/tcp/443", hour)
			if a.Id != wantID || a.Technique != "T1071" || a.OrigAddr != "10.0.0.66" || a.RespAddr != "10.0.0.20" {
				t.Errorf("alert %v", a)
			}
			// Expected period and CV of the first 8 connections, two-pass.
			var iv []float64
			for i := 1; i < 8; i++ {
				iv = append(iv, float64(at(i, c.period)-at(i-1, c.period))/float64(s))
			}
			mean, ss := 0.0, 0.0
			for _, x := range iv {
				mean += x
			}
			mean /= float64(len(iv))
			for _, x := range iv {
				ss += (x - mean) * (x - mean)
			}
			cv := math.Sqrt(ss/float64(len(iv))) / mean
			var ev struct {
				Conns  int     `json:"connections"`
				Period float64 `json:"period_seconds"`
				CV     float64 `json:"jitter_cv"`
				Update int     `json:"update"`
			}
			if err := json.Unmarshal(a.Evidence, &ev); err != nil {
				t.Fatal(err)
			}
			if ev.Conns != 8 || math.Abs(ev.Period-mean) > 1e-6 || math.Abs(ev.CV-cv) > 1e-9 || ev.Update != 0 {
				t.Errorf("evidence %s, want 8 connections, period %v, cv %v", a.Evidence, mean, cv)
			}
			// 20 connections: one update at 16, same id.
			if len(got) != 2 || got[1].Id != a.Id || !strings.Contains(string(got[1].Evidence), `"connections":16`) {
				t.Errorf("updates: %d alerts", len(got))
			}
		})
	}
}

// TestUpdates: an attack that goes on re-publishes its alert (same id)
// with grown counts each time the count doubles: a 400-port scan gives the
// alert at 50 ports and updates at 100, 200 and 400; redelivering the same
// flows adds no update (distinct ports do not grow).
func TestUpdates(t *testing.T) {
	var flows []*pb.Flow
	for i := 0; i < 400; i++ {
		flows = append(flows, synProbe(uint32(1+i), t0+int64(i)*int64(time.Millisecond)))
	}
	e := New(DefaultConfig())
	var scans []*pb.Alert
	for _, a := range runAll(e, flows) {
		if a.Category == "portscan" {
			scans = append(scans, a)
		}
	}
	want := []int{50, 100, 200, 400}
	if len(scans) != len(want) {
		t.Fatalf("%d portscan publishes, want %d", len(scans), len(want))
	}
	for i, a := range scans {
		var ev struct {
			Ports  int `json:"distinct_ports"`
			Update int `json:"update"`
		}
		_ = json.Unmarshal(a.Evidence, &ev)
		if a.Id != scans[0].Id || ev.Ports != want[i] || ev.Update != i || UpdateOf(a) != i {
			t.Errorf("publish %d: id %s ports %d update %d, want id %s ports %d update %d", i, a.Id, ev.Ports, ev.Update, scans[0].Id, want[i], i)
		}
	}
	if n := len(runAll(e, flows)); n != 0 {
		t.Errorf("redelivery: %d publishes, want 0", n)
	}
	// A failed publish of update 2 is published again by the next probe.
	e.Retract(scans[2])
	again := runAll(e, flows[len(flows)-1:])
	if len(again) != 1 || UpdateOf(again[0]) != 2 || again[0].Id != scans[0].Id {
		t.Errorf("after retracting update 2: %v", again)
	}
}
