package main

import (
	"bytes"
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"netwatch/schema"
	"netwatch/testkit"
)

// summaryRun runs `agent -summary -pcap file` and decodes stdout, which must
// hold exactly one JSON object.
func summaryRun(t *testing.T, file string) (int, map[string]any) {
	var stdout, stderr bytes.Buffer
	code := run([]string{"-summary", "-pcap", file}, func(string) string { return "" }, &stdout, &stderr)
	dec := json.NewDecoder(&stdout)
	var obj map[string]any
	if err := dec.Decode(&obj); err != nil {
		t.Fatalf("stdout %q: %v", stdout.String(), err)
	}
	if dec.More() {
		t.Fatalf("more than one JSON value on stdout: %q", stdout.String())
	}
	return code, obj
}

func TestSummaryJSON(t *testing.T) {
	code, obj := summaryRun(t, filepath.Join(testkit.Pcaps(t), "linux-sll2-icmp-icmpv6-arp.pcap"))
	if code != 0 {
		t.Fatalf("exit %d", code)
	}
	// tshark: 2 frames each of arp, ip:icmp, ipv6:icmpv6
	net, _ := obj["network"].(map[string]any)
	for _, n := range []string{"ipv4", "ipv6", "arp", "other"} {
		c, ok := net[n].(map[string]any)
		if !ok || c["packets"] == nil || c["bytes"] == nil {
			t.Fatalf("network.%s missing packets/bytes: %v", n, net)
		}
		if want := map[string]float64{"ipv4": 2, "ipv6": 2, "arp": 2, "other": 0}[n]; c["packets"] != want {
			t.Errorf("network.%s.packets %v, want %v", n, c["packets"], want)
		}
	}
	tr, _ := obj["transport"].(map[string]any)
	for _, n := range []string{"tcp", "udp", "icmp", "icmpv6", "other"} {
		if _, ok := tr[n].(map[string]any); !ok {
			t.Errorf("transport.%s missing: %v", n, tr)
		}
	}
}

func TestSummaryJSONUnreadable(t *testing.T) {
	code, obj := summaryRun(t, filepath.Join(t.TempDir(), "missing.pcap"))
	if code != 1 {
		t.Errorf("exit %d, want 1", code)
	}
	if e, _ := obj["error"].(string); !strings.Contains(e, "missing.pcap") {
		t.Errorf("error %q does not name the file", e)
	}
	code, obj = summaryRun(t, "../../testdata/linktype-147-user0.pcap")
	if e, _ := obj["error"].(string); code != 1 || !strings.Contains(e, "unsupported link type 147") {
		t.Errorf("exit %d error %q", code, e)
	}
}

// TestRegistryAnnounce replays a capture into a real JetStream: the agent
// provisions the sensor registry and announces itself there before it
// captures (name, host, boot, the file as its interface), and List calls
// it online.
func TestRegistryAnnounce(t *testing.T) {
	u, _, js := testkit.JetStream(t)
	file := filepath.Join(testkit.Pcaps(t), "arp-who-has-and-reply.pcap")
	var stdout, stderr bytes.Buffer
	code := run([]string{"-nats.url", u, "-sensor", "reg-test", "-http.addr", "", "-pcap", file},
		func(string) string { return "" }, &stdout, &stderr)
	if code != 0 {
		t.Fatalf("agent exit %d: %s", code, stderr.String())
	}
	kv, err := schema.OpenRegistry(context.Background(), js)
	if err != nil {
		t.Fatal(err)
	}
	got, err := schema.List(context.Background(), kv, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	host, _ := os.Hostname()
	if len(got) != 1 || got[0].Name != "reg-test" || !got[0].Online || got[0].Host != host ||
		len(got[0].Interfaces) != 1 || got[0].Interfaces[0] != file || got[0].Boot == "" || got[0].Version == "" {
		t.Fatalf("registry: %+v", got)
	}
	if !strings.Contains(stderr.String(), got[0].Boot) {
		t.Errorf("the announced boot %s is not the one the agent logged", got[0].Boot)
	}
}

// TestCheckConfigOpensCapture: -check-config opens and closes the capture,
// so that what would stop the agent at start is reported with exit status
// 2 (bad configuration) and the reason: a missing file, a file that is not
// a capture (text, empty), an unsupported link type, a missing interface;
// a readable capture and an existing interface pass with 0.
func TestCheckConfigOpensCapture(t *testing.T) {
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty.pcap")
	if err := os.WriteFile(empty, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	lo := 0 // capturing needs root (or CAP_NET_RAW): without it libpcap refuses
	if os.Geteuid() != 0 {
		lo = 2
	}
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-pcap", filepath.Join(dir, "missing.pcap")}, 2, "missing.pcap: no such file"},
		{[]string{"-pcap", "../../README.md"}, 2, "pcap header: Unknown magic"},
		{[]string{"-pcap", empty}, 2, "empty.pcap: file header: unexpected EOF"},
		{[]string{"-pcap", "../../testdata/linktype-147-user0.pcap"}, 2, "unsupported link type 147"},
		{[]string{"-interface", "nosuch0"}, 2, "nosuch0"},
		{[]string{"-interface", "nosuch0", "-capture.method", "afpacket"}, 2, "nosuch0"},
		{[]string{"-pcap", filepath.Join(testkit.Pcaps(t), "arp-who-has-and-reply.pcap")}, 0, "configuration valid"},
		{[]string{"-interface", "lo"}, lo, ""},
	} {
		var stdout, stderr bytes.Buffer
		args := append([]string{"-check-config", "-log.format", "text"}, c.args...)
		code := run(args, func(string) string { return "" }, &stdout, &stderr)
		if code != c.code || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("agent %s: exit %d, want %d with %q; stderr: %s", strings.Join(args, " "), code, c.code, c.want, stderr.String())
		}
	}
}

// TestPipeInput: `agent -pcap FIFO` reads a capture written into a named
// pipe (as `tcpdump -w - | agent -pcap /dev/stdin`) once: the 10 frames of
// the 5 pings are read and published, exit 0. The capture used to be
// opened twice (a fail-fast check, then the run), the check consuming the
// pipe's data: "file header: unexpected EOF".
func TestPipeInput(t *testing.T) {
	u, _, _ := testkit.JetStream(t)
	data, err := os.ReadFile(filepath.Join(testkit.Pcaps(t), "eth-ipv4-icmp-echo-5-pings.pcap"))
	if err != nil {
		t.Fatal(err)
	}
	fifo := filepath.Join(t.TempDir(), "in.pcap")
	if err := syscall.Mkfifo(fifo, 0o600); err != nil {
		t.Fatal(err)
	}
	go func() {
		f, err := os.OpenFile(fifo, os.O_WRONLY, 0)
		if err != nil {
			t.Error(err)
			return
		}
		f.Write(data)
		f.Close()
	}()
	var stdout, stderr bytes.Buffer
	code := run([]string{"-nats.url", u, "-sensor", "pipe-test", "-http.addr", "", "-pcap", fifo},
		func(string) string { return "" }, &stdout, &stderr)
	if code != 0 || !strings.Contains(stderr.String(), `"msg":"capture done"`) ||
		!strings.Contains(stderr.String(), `"ip_packets":10`) {
		t.Fatalf("exit %d, want 0 after 10 IP packets; stderr: %s", code, stderr.String())
	}
}
