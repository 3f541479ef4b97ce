package policy

import (
	"context"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

const example = `
allow:
  - networks: [10.9.0.0/24, "fd00:9::/64"]
  - addresses: [10.0.0.53]
    rules: [dns_tunnel, dga]
  - rules: [beaconing]
thresholds:
  portscan.ports: 80
  beacon.max-cv: 0.1
  flood.window: 30s
`

func TestParseAndAllow(t *testing.T) {
	p, err := Parse([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		rule, orig, resp string
		want             bool
	}{
		{"portscan", "10.9.0.7", "10.0.0.20", true},   // scanner network, any rule
		{"portscan", "10.0.0.20", "10.9.0.255", true}, // as responder too
		{"portscan", "10.9.1.7", "10.0.0.20", false},  // outside the /24
		{"portscan", "fd00:9::1", "10.0.0.20", true},  // IPv6 network
		{"portscan", "::ffff:10.9.0.7", "", true},     // IPv4-mapped
		{"dns_tunnel", "10.0.0.53", "", true},         // the resolver, listed rule
		{"dga", "10.0.0.53", "", true},                // the resolver, listed rule
		{"portscan", "10.0.0.53", "10.0.0.1", false},  // the resolver, other rule
		{"beaconing", "10.0.0.66", "192.0.2.1", true}, // rule switched off
		{"syn_flood", "", "10.0.0.20", false},         // empty originator
	} {
		a := &pb.Alert{Rule: c.rule, Category: c.rule, OrigAddr: c.orig, RespAddr: c.resp}
		if got, _ := p.Allowed(a); got != c.want {
			t.Errorf("Allowed(%s %s -> %s) = %v, want %v", c.rule, c.orig, c.resp, got, c.want)
		}
	}
	var nilPolicy *Policy
	if ok, _ := nilPolicy.Allowed(&pb.Alert{Rule: "portscan"}); ok {
		t.Error("nil policy allows")
	}
	// Thresholds onto a flag set.
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	ports := fs.Int("portscan.ports", 50, "")
	cv := fs.Float64("beacon.max-cv", 0.2, "")
	win := fs.Duration("flood.window", 10*time.Second, "")
	if err := p.Apply(fs); err != nil || *ports != 80 || *cv != 0.1 || *win != 30*time.Second {
		t.Errorf("Apply: %v %d %v %v", err, *ports, *cv, *win)
	}
	// JSON is YAML too.
	if _, err := Parse([]byte(`{"allow":[{"addresses":["10.0.0.1"]}],"thresholds":{"portscan.ports":60}}`)); err != nil {
		t.Errorf("JSON: %v", err)
	}
}

func TestParseErrors(t *testing.T) {
	for name, doc := range map[string]string{
		"unknown key":       "alow: []",
		"unknown entry key": "allow: [{nets: [10.0.0.0/8]}]",
		"bad address":       "allow: [{addresses: [10.0.0.300]}]",
		"bad network":       "allow: [{networks: [10.0.0.0/33]}]",
		"list threshold":    "thresholds: {portscan.ports: [1, 2]}",
		"not yaml":          "allow: [",
	} {
		if _, err := Parse([]byte(doc)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
	p, _ := Parse([]byte("thresholds: {portscan.portz: 3, portscan.ports: x}"))
	fs := flag.NewFlagSet("t", flag.ContinueOnError)
	fs.Int("portscan.ports", 50, "")
	err := p.Apply(fs)
	if err == nil || !strings.Contains(err.Error(), "portscan.portz: not a rule threshold") || !strings.Contains(err.Error(), "thresholds.portscan.ports") {
		t.Errorf("Apply errors: %v", err)
	}
}

// TestWatch: writing the file reloads it (fsnotify), a broken file is
// reported and the last good one stays, a trigger (SIGHUP) reloads, and
// replacing the file by rename (as editors do) is seen.
func TestWatch(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "detector.yaml")
	if err := os.WriteFile(path, []byte("thresholds: {portscan.ports: 60}"), 0o644); err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var current *Policy
	var loads, errs int
	load := func() error {
		p, err := Load(path)
		mu.Lock()
		defer mu.Unlock()
		loads++
		if err != nil {
			return err
		}
		current = p
		return nil
	}
	onError := func(error) { mu.Lock(); errs++; mu.Unlock() }
	ports := func() string {
		mu.Lock()
		defer mu.Unlock()
		if current == nil {
			return ""
		}
		return current.Thresholds["portscan.ports"]
	}
	ctx, cancel := context.WithCancel(context.Background())
	trigger := make(chan struct{})
	done := make(chan error, 1)
	go func() { done <- Watch(ctx, path, trigger, load, onError) }()
	defer func() { cancel(); <-done }()

	trigger <- struct{}{}
	testkit.Eventually(t, 5*time.Second, func() bool { return ports() == "60" }, "trigger did not load")
	time.Sleep(50 * time.Millisecond) // let the watcher settle before the write (not waiting for a result)
	if err := os.WriteFile(path, []byte("thresholds: {portscan.ports: 70}"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return ports() == "70" }, "write did not reload")
	if err := os.WriteFile(path, []byte("thresholds: [broken"), 0o644); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { mu.Lock(); defer mu.Unlock(); return errs > 0 }, "broken file not reported")
	if ports() != "70" {
		t.Errorf("broken file replaced the policy: %q", ports())
	}
	tmp := filepath.Join(dir, "new.yaml")
	if err := os.WriteFile(tmp, []byte("thresholds: {portscan.ports: 90}"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return ports() == "90" }, "rename did not reload")
}

// FuzzParse: no document panics; a document that parses allows and
// applies without panicking.
func FuzzParse(f *testing.F) {
	f.Add([]byte(example))                              // the documented example
	f.Add([]byte(`{"allow":[{"addresses":["::1"]}]}`))  // JSON
	f.Add([]byte("allow: [{networks: [10.0.0.0/33]}]")) // bad prefix
	f.Add([]byte("thresholds: {a: {b: c}}"))            // nested value
	f.Fuzz(func(t *testing.T, doc []byte) {
		p, err := Parse(doc)
		if err != nil {
			return
		}
		p.Allowed(&pb.Alert{Rule: "portscan", OrigAddr: "10.0.0.1", RespAddr: "fd00::1"})
		fs := flag.NewFlagSet("f", flag.ContinueOnError)
		fs.Int("portscan.ports", 50, "")
		_ = p.Apply(fs)
	})
}
