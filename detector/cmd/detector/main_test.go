package main

import (
	"bytes"
	"strings"
	"testing"
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
