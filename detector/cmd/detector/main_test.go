package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

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
	if !strings.Contains(out.String(), "flow-id3") {
		t.Errorf("output %q does not name the shipped model", out.String())
	}
	for _, args := range [][]string{
		{"-check-config", "-portscan.ports", "1"},
		{"-check-config", "-model.threshold", "2"},
		{"-check-config", "-model", "/nonexistent/model"},
		{"-check-config", "-synflood.pkts", "1"},
		{"-check-config", "-bruteforce.sessions", "0"},
		{"-check-config", "-dnstunnel.window", "10ms"},
		{"-check-config", "-flood.window", "0s"},
		{"-check-config", "-beacon.max-cv", "0"},
		{"-check-config", "-beacon.conns", "2"},
		{"-check-config", "-dga.domains", "1"},
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
