package e2e

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"netwatch/testkit"
)

// parallel is how many captures run through the pipeline at once
// (NETWATCH_E2E_PARALLEL, default 3).
func parallel() int {
	if n, err := strconv.Atoi(os.Getenv("NETWATCH_E2E_PARALLEL")); err == nil && n > 0 {
		return n
	}
	return 3
}

// TestE2E starts the pipeline once and runs every shared capture through
// it, each as its own sensor; then checks port-scan alerts and damaged
// capture files against the same pipeline.
func TestE2E(t *testing.T) {
	if testing.Short() {
		t.Skip("end-to-end test skipped in -short mode")
	}
	ts := testkit.Tool(t, "tshark")
	root := testkit.Root(t)
	files := Captures(t)

	t0 := time.Now()
	bin, built, cleanup, err := FindBinaries(root)
	if err != nil {
		t.Fatalf("build binaries: %v", err)
	}
	t.Cleanup(cleanup)
	t.Logf("phase build: binaries in %s (built now: %v, else copied from %s/bin) took %s", bin, built, root, time.Since(t0).Round(time.Millisecond))

	t1 := time.Now()
	p := StartPipeline(t, bin)
	t.Logf("phase start: JetStream, database and services ready in %s (api %s, logs %s)", time.Since(t1).Round(time.Millisecond), p.APIURL, p.LogDir)

	var ran sync.Map // sensor -> true once its capture went through
	sem := make(chan struct{}, parallel())
	t2 := time.Now()
	t.Run("flows", func(t *testing.T) {
		for _, f := range files {
			sensor := SensorName("", f)
			t.Run(filepath.Base(f), func(t *testing.T) {
				t.Parallel()
				sem <- struct{}{}
				defer func() { <-sem }()
				checkCapture(t, p, ts, f, sensor)
				ran.Store(sensor, true)
			})
		}
	})
	t.Logf("phase flows: %d captures (minus those -run filtered out) in %s", len(files), time.Since(t2).Round(time.Millisecond))

	t3 := time.Now()
	t.Run("alerts", func(t *testing.T) { checkAlerts(t, p, ts, &ran) })
	t.Logf("phase alerts: %s", time.Since(t3).Round(time.Millisecond))

	t4 := time.Now()
	t.Run("damaged", func(t *testing.T) { checkDamaged(t, p, ts) })
	t.Logf("phase damaged: %s", time.Since(t4).Round(time.Millisecond))
}

// checkCapture runs one capture through the pipeline and compares the
// stored flows, summed per directional 5-tuple, with tshark's, and the flow
// ids the live WebSocket delivered with those stored.
func checkCapture(t *testing.T, p *Pipeline, ts, file, sensor string) {
	start := time.Now()
	type tsharkResult struct {
		exp *Expected
		err error
	}
	expCh := make(chan tsharkResult, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		exp, err := Tshark(ctx, ts, file)
		expCh <- tsharkResult{exp, err}
	}()
	live := p.Live(t, sensor)
	res := p.RunAgent(t, sensor, file)
	if res.Err != nil {
		t.Errorf("agent over %s: %v\n%s", filepath.Base(file), res.Err, tail(res.Stderr, 15))
	}
	tr := <-expCh
	if tr.err != nil {
		t.Fatal(tr.err)
	}
	compareStored(t, p, live, sensor, tr.exp)
	t.Logf("%s: %d frames (%d IP, %d non-IP), %d tuples; agent %s, total %s", sensor, tr.exp.Frames, tr.exp.IP, tr.exp.NonIP,
		len(tr.exp.Flows), res.Took.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
}

func compareStored(t *testing.T, p *Pipeline, live *LiveClient, sensor string, exp *Expected) {
	t.Helper()
	want := Totals(exp.Flows)
	p.WaitSettled(t, sensor, int64(want.Pkts), 2*time.Minute)
	flows, err := p.Flows(sensor)
	if err != nil {
		t.Fatalf("read flows of %s: %v", sensor, err)
	}
	got, bad := Sum(flows)
	for _, b := range bad {
		t.Error(b)
	}
	if d := Diff(exp.Flows, got, 20); len(d) > 0 {
		gt := Totals(got)
		t.Errorf("stored flows differ from tshark (want %d pkts %d bytes in %d tuples, got %d pkts %d bytes in %d tuples from %d records):\n  %s",
			want.Pkts, want.IPBytes, len(exp.Flows), gt.Pkts, gt.IPBytes, len(got), len(flows), strings.Join(d, "\n  "))
	}
	if live == nil {
		return
	}
	// Every stored flow record must have reached the WebSocket client.
	deadline := time.Now().Add(15 * time.Second)
	for {
		miss, dropped := live.Missing(flows)
		if len(miss) == 0 {
			break
		}
		if time.Now().After(deadline) {
			if len(miss) > 5 {
				miss = append(miss[:5], "...")
			}
			t.Errorf("WebSocket client missed %d of %d stored flow records (server reported %d dropped): %s",
				len(miss), len(flows), dropped, strings.Join(miss, " "))
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
}

func tail(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// ensureRan runs file through the pipeline as sensor unless the flows phase
// already did.
func ensureRan(t *testing.T, p *Pipeline, ran *sync.Map, file, sensor string) {
	t.Helper()
	if _, ok := ran.Load(sensor); ok {
		return
	}
	if res := p.RunAgent(t, sensor, file); res.Err != nil {
		t.Errorf("agent over %s: %v\n%s", filepath.Base(file), res.Err, tail(res.Stderr, 15))
	}
	p.WaitSettled(t, sensor, -1, 2*time.Minute)
}

// Scanner returns, per tshark, the source that sent TCP SYNs (without ACK)
// to the most distinct (destination, port) pairs, and that number.
func Scanner(ts, file string) (string, int, error) {
	out, err := exec.Command(ts, "-n", "-r", file, "-Y", "tcp.flags.syn == 1 && tcp.flags.ack == 0",
		"-T", "fields", "-e", "ip.src", "-e", "ipv6.src", "-e", "ip.dst", "-e", "ipv6.dst", "-e", "tcp.dstport").Output()
	if err != nil {
		return "", 0, fmt.Errorf("tshark %s: %w", file, err)
	}
	seen := map[string]map[string]bool{}
	for _, l := range strings.Split(string(out), "\n") {
		c := strings.Split(l, "\t")
		if len(c) < 5 {
			continue
		}
		src := c[0] + c[1]
		if seen[src] == nil {
			seen[src] = map[string]bool{}
		}
		seen[src][c[2]+c[3]+"|"+c[4]] = true
	}
	best, n := "", 0
	for s, m := range seen {
		if len(m) > n {
			best, n = s, len(m)
		}
	}
	return best, n, nil
}

func checkAlerts(t *testing.T, p *Pipeline, ts string, ran *sync.Map) {
	dir := testkit.Pcaps(t)
	scans := []struct{ file, scanner string }{
		{"attack-portscan-nmap-syn.pcapng", "172.16.0.8"}, // ../labeled/pcap-labels.csv
		{"lab/lab-nmap-syn-scan.pcap", "10.99.1.10"},      // lab/labels.csv
		{"lab/lab-nmap-syn-scan.pcapng", "10.99.1.10"},
	}
	for _, sc := range scans {
		t.Run(filepath.Base(sc.file), func(t *testing.T) {
			file := filepath.Join(dir, sc.file)
			src, n, err := Scanner(ts, file)
			if err != nil {
				t.Fatal(err)
			}
			if src != sc.scanner || n < 500 {
				t.Fatalf("tshark: the host with the most SYN targets is %s (%d), labels say %s", src, n, sc.scanner)
			}
			sensor := SensorName("", file)
			ensureRan(t, p, ran, file, sensor)
			var alerts []Alert
			found := false
			deadline := time.Now().Add(30 * time.Second)
			for !found && time.Now().Before(deadline) {
				alerts, err = p.Alerts(sensor)
				if err != nil {
					t.Fatal(err)
				}
				for _, a := range alerts {
					if a.Category == "portscan" && a.OrigAddr != nil && *a.OrigAddr == sc.scanner {
						found = true
					}
				}
				if !found {
					time.Sleep(200 * time.Millisecond)
				}
			}
			if !found {
				// Say where such an alert went, if anywhere (e.g. stored
				// under another sensor that saw the same packets).
				var elsewhere []string
				if all, err := p.Alerts(""); err == nil {
					for _, a := range all {
						if a.Category == "portscan" && a.OrigAddr != nil && *a.OrigAddr == sc.scanner {
							elsewhere = append(elsewhere, a.Sensor+" (id "+a.ID+")")
						}
					}
				}
				t.Errorf("no portscan alert naming scanner %s among %d alerts of %s: %s\n  portscan alerts naming %s under any sensor: %v",
					sc.scanner, len(alerts), sensor, describe(alerts), sc.scanner, elsewhere)
			}
		})
	}
	for _, f := range []string{"eth-ipv4-dns-http-browsing-wikipedia.pcap", "lab/lab-benign-mixed.pcap", "dns-over-tcp-tcpdump-org.pcap"} {
		t.Run(filepath.Base(f), func(t *testing.T) {
			file := filepath.Join(dir, f)
			sensor := SensorName("", file)
			ensureRan(t, p, ran, file, sensor)
			testkit.Eventually(t, 60*time.Second, func() bool { n, err := p.Pending(); return err == nil && n == 0 },
				"pipeline still has pending messages")
			alerts, err := p.Alerts(sensor)
			if err != nil {
				t.Fatal(err)
			}
			var scans []Alert
			for _, a := range alerts {
				if a.Category == "portscan" {
					scans = append(scans, a)
				}
			}
			if len(scans) > 0 {
				t.Errorf("benign capture %s raised %d portscan alerts: %s", f, len(scans), describe(scans))
			}
		})
	}
}

func describe(alerts []Alert) string {
	var b strings.Builder
	for i, a := range alerts {
		if i == 10 {
			fmt.Fprintf(&b, "\n  ... %d more", len(alerts)-i)
			break
		}
		o, r := "-", "-"
		if a.OrigAddr != nil {
			o = *a.OrigAddr
		}
		if a.RespAddr != nil {
			r = *a.RespAddr
		}
		fmt.Fprintf(&b, "\n  %s %s %s > %s: %s", a.Category, a.Rule, o, r, a.Summary)
	}
	return b.String()
}

// checkDamaged runs damaged copies of a capture: the agent must exit
// non-zero, name the packet number or byte offset of the damage, and
// publish every packet before it.
func checkDamaged(t *testing.T, p *Pipeline, ts string) {
	src := filepath.Join(testkit.Pcaps(t), "eth-ipv4-dns-http-browsing-wikipedia.pcap")
	tmp := t.TempDir()
	cases := []struct {
		name string
		make func() (Damage, error)
	}{
		{"truncated-mid-packet", func() (Damage, error) { return Truncate(src, tmp, 70) }},
		{"corrupt-record-length", func() (Damage, error) { return CorruptLength(src, tmp, 100) }},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			d, err := c.make()
			if err != nil {
				t.Fatal(err)
			}
			exp, err := Tshark(context.Background(), ts, d.Prefix)
			if err != nil {
				t.Fatal(err)
			}
			sensor := "damaged-" + c.name
			live := p.Live(t, sensor)
			res := p.RunAgent(t, sensor, d.Damaged)
			if res.Err == nil {
				t.Errorf("agent exited 0 over a file damaged at packet %d (offset %d)", d.Packet, d.Offset)
			} else if _, ok := res.Err.(*exec.ExitError); !ok {
				t.Errorf("agent: %v", res.Err)
			}
			re := regexp.MustCompile(fmt.Sprintf(`(?i)((packet|record|frame)[^0-9\n]{0,24}\b%d\b)|\b%d\b|0x0*%x\b`, d.Packet, d.Offset, d.Offset))
			if !re.MatchString(res.Stderr) {
				t.Errorf("agent output names neither packet %d nor offset %d (0x%x):\n%s", d.Packet, d.Offset, d.Offset, tail(res.Stderr, 15))
			} else {
				t.Logf("agent error: %s", re.FindString(res.Stderr))
			}
			compareStored(t, p, live, sensor, exp)
		})
	}
}
