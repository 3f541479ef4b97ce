package rules

import (
	"encoding/json"
	"fmt"
	"path/filepath"
	"testing"

	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestSinglesSameAlerts: keeping originators' first probes as singles
// (singles.go) changes no alert. The independent reference is the engine
// without singles (every probe opens its portscan and hostsweep states, as
// before): on real captures with scans, sweeps, flag probes, a spoofed SYN
// flood, ICMP echo and benign traffic, both give the same alerts and
// updates, at the same flows, with the same counts in the evidence.
func TestSinglesSameAlerts(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	for _, file := range []string{
		"attack-portscan-nmap-syn.pcapng",
		"attack-portscan-masscan-udp-0-1000.pcap",
		"attack-synflood-spoofed-sources.pcap",
		"tcp-all-flag-combinations-null-fin-xmas.pcap",
		"attack-recon-nmap-arp-sweep-and-version-probe.pcap",
		"attack-portscan-vnc-scanner.pcap",
		"eth-ipv4-icmp-echo-5-pings.pcap",
		"lab/lab-nmap-syn-scan.pcap",
		"lab/lab-nmap-udp-scan.pcap",
		"lab/lab-nmap-host-sweep.pcap",
		"lab/lab-benign-mixed.pcap",
	} {
		t.Run(file, func(t *testing.T) {
			flows := tsharkFlows(t, filepath.Join(pcaps, file))
			ref := New(DefaultConfig())
			ref.noSingles = true
			e := New(DefaultConfig())
			probes := 0
			for i, f := range flows {
				if IsProbe(f) || isEchoRequest(f) {
					probes++
				}
				want, got := alertKeys(ref.Observe("s1", f)), alertKeys(e.Observe("s1", f))
				if fmt.Sprint(want) != fmt.Sprint(got) {
					t.Fatalf("flow %d: alerts %v, without singles %v", i, got, want)
				}
			}
			t.Logf("%d flows, %d probes or echo requests; keys %d (without singles %d)", len(flows), probes, e.Keys(), ref.Keys())
		})
	}
}

// TestSinglesHandBuilt: a first probe kept as a single is counted when
// its originator probes again (49 more ports: the alert at 50 as without
// singles), also when the second flow is an ICMP echo request; singles
// expire with their window; with a threshold of 1 (one probe fires)
// singles are not used.
func TestSinglesHandBuilt(t *testing.T) {
	var flows []*pb.Flow
	for i := 0; i < 50; i++ {
		flows = append(flows, synProbe(uint32(1+i), t0+int64(i)*1e6))
	}
	e := New(DefaultConfig())
	a := runAll(e, flows[:1])
	if len(a) != 0 || e.nsingles != 1 || len(e.state) != 1 { // the single and syn_flood
		t.Fatalf("after one probe: %d alerts, %d singles, %d states", len(a), e.nsingles, len(e.state))
	}
	a = runAll(e, flows[1:])
	if len(a) != 1 || a[0].Category != "portscan" {
		t.Fatalf("alerts %v", a)
	}
	// hostsweep: 31 hosts probed once each, then the 32nd by ICMP echo.
	e = New(DefaultConfig())
	var sweep []*pb.Flow
	for i := 0; i < 31; i++ {
		f := synProbe(22, t0+int64(i)*1e6)
		f.RespAddr = []byte{10, 1, 0, byte(1 + i)}
		sweep = append(sweep, f)
	}
	if n := len(run(e, sweep)); n != 0 {
		t.Fatalf("31 hosts: %d alerts", n)
	}
	f := synProbe(22, t0+int64(40)*1e6)
	f.RespAddr = []byte{10, 1, 0, 99}
	if a := run(e, []*pb.Flow{f}); len(a) != 1 || a[0].Category != "hostsweep" {
		t.Fatalf("32nd host: %v", a)
	}
	// Expiry: a flow three windows later drops the first window's singles.
	e = New(DefaultConfig())
	runAll(e, flows[:1])
	later := synProbe(7, t0+int64(3*DefaultConfig().PortscanWindow))
	later.OrigAddr = []byte{10, 9, 9, 9}
	runAll(e, []*pb.Flow{later})
	if e.nsingles != 1 || len(e.singles) != 1 {
		t.Fatalf("after expiry: %d singles in %d windows, want 1 in 1", e.nsingles, len(e.singles))
	}
	// Threshold 1: the first probe fires, no single.
	cfg := DefaultConfig()
	cfg.PortscanPorts = 1
	e = New(cfg)
	if a := run(e, flows[:1]); len(a) != 1 || e.nsingles != 0 {
		t.Fatalf("threshold 1: %d alerts, %d singles", len(a), e.nsingles)
	}
}

// alertKeys is what must match between two engines: id, update number,
// packet time, severity and the counts of the evidence.
func alertKeys(as []*pb.Alert) []string {
	var out []string
	for _, a := range as {
		out = append(out, fmt.Sprintf("%s/%s/u%d/%d/%v/%s/%s", a.GetRule(), a.GetId(), UpdateOf(a), a.GetTimeNs(), a.GetSeverity(), a.GetSummary(), counts(a.GetEvidence())))
	}
	return out
}

// counts is the evidence without its sample lists (drawn from sets in no
// fixed order), as JSON with sorted keys.
func counts(ev []byte) string {
	var m map[string]any
	if err := json.Unmarshal(ev, &m); err != nil {
		return "bad evidence: " + err.Error()
	}
	for k, v := range m {
		if _, list := v.([]any); list {
			delete(m, k)
		}
	}
	b, _ := json.Marshal(m)
	return string(b)
}
