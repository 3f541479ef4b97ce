package server_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
	"netwatch/testkit/e2e"
)

// TestBrowserDashboard runs the real pipeline (agent, enricher, detector,
// sink and this api, built from this tree) on a capture with an attack (an
// nmap SYN port scan), then drives the dashboard the api embeds in headless
// Debian chromium (api/web/test/browser.mjs, playwright-core; never a
// downloaded browser) at 1280x800 and 390x844: every page, each chart's
// series against the REST API, a live alert and live counters, no sideways scrolling,
// acknowledging and closing an alert. Without node, chromium or the
// dashboard's packages it skips (fails under CI=true).
// NETWATCH_SCREENSHOTS=dir keeps the screenshots.
func TestBrowserDashboard(t *testing.T) {
	if testing.Short() {
		t.Skip("browser test in -short mode")
	}
	node := testkit.Tool(t, "node")
	chromium := os.Getenv("CHROMIUM")
	if chromium == "" {
		chromium = "/usr/bin/chromium"
	}
	if _, err := os.Stat(chromium); err != nil {
		testkit.Unavailable(t, "no chromium at %s: %v", chromium, err)
	}
	root := testkit.Root(t)
	webDir := filepath.Join(root, "api", "web")
	if _, err := os.Stat(filepath.Join(webDir, "node_modules", "playwright-core")); err != nil {
		cmd := exec.Command("npm", "ci", "--no-audit", "--no-fund", "--loglevel=error")
		cmd.Dir = webDir
		if out, err := cmd.CombinedOutput(); err != nil {
			testkit.Unavailable(t, "install the dashboard's packages (playwright-core): %v\n%s", err, out)
		}
	}
	capture := filepath.Join(testkit.Pcaps(t), "attack-portscan-nmap-syn.pcapng")
	if _, err := os.Stat(capture); err != nil {
		testkit.Unavailable(t, "no capture: %v", err)
	}

	// The pipeline, from binaries of this tree (the api embeds the
	// committed dashboard bundle); with NETWATCH_E2E_BIN, the other stages
	// come from that folder instead (as in testkit/e2e) and only the api is
	// built here.
	bin := t.TempDir()
	args := []string{"build", "-o", bin + string(filepath.Separator)}
	for _, b := range e2e.Binaries {
		if dir := os.Getenv("NETWATCH_E2E_BIN"); dir != "" && b != "api" {
			data, err := os.ReadFile(filepath.Join(dir, b))
			if err == nil {
				err = os.WriteFile(filepath.Join(bin, b), data, 0o755)
			}
			if err != nil {
				t.Fatalf("NETWATCH_E2E_BIN: %v", err)
			}
			continue
		}
		args = append(args, "./"+b+"/cmd/"+b)
	}
	build := exec.Command("go", args...)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("go %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	p := e2e.StartPipeline(t, bin)
	const sensor = "scan"
	if r := p.RunAgent(t, sensor, capture); r.Err != nil {
		t.Fatalf("agent: %v\n%s", r.Err, r.Stderr)
	}
	p.WaitSettled(t, sensor, -1, 2*time.Minute)
	testkit.Eventually(t, 30*time.Second, func() bool {
		as, err := p.Alerts(sensor)
		return err == nil && len(as) > 0
	}, "no alert from the detector on %s", filepath.Base(capture))

	checkRollups(t, p.APIURL)

	nc, err := nats.Connect(p.NATSURL)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// The live alert is a real one: once the page's WebSocket is live, the
	// agent replays another port scan (recorded in another year, so the
	// charts compared for the first capture's hour do not change) as
	// another sensor, and the detector's portscan alert for it must
	// appear on the open page.
	const liveSensor = "scan-live"
	liveCapture := filepath.Join(testkit.Pcaps(t), "lab", "lab-nmap-syn-scan.pcap")
	liveErr := make(chan error, 1)

	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	shots := os.Getenv("NETWATCH_SCREENSHOTS")
	if shots == "" {
		shots = t.TempDir()
	} else if err := os.MkdirAll(shots, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.CommandContext(ctx, node, filepath.Join(webDir, "test", "browser.mjs"))
	cmd.Dir = webDir
	// One second of counters: 3 packets, 150 bytes (1200 bit/s). Small on
	// purpose: the packets/s axis then has ticks 0, 0.5, ... 3, which must
	// get distinct labels (whole-number labels read "0 1 1 2 2 3 3").
	counters := &pb.TrafficCounters{Sensor: sensor, SecondNs: time.Now().Truncate(time.Second).UnixNano(),
		SentNs: time.Now().UnixNano(), Total: &pb.CounterSet{Packets: 3, IpBytes: 150}}
	cmd.Env = append(os.Environ(), "BASE_URL="+p.APIURL, "LIVE_ALERT_STDIN=1", "CHROMIUM="+chromium,
		"SCREENSHOT_DIR="+shots, "LIVE_PPS=3", "LIVE_BPS=1200")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	var out []string
	sc := bufio.NewScanner(stdout)
	for sc.Scan() {
		l := sc.Text()
		out = append(out, l)
		if l == "connected" {
			// The page's WebSocket is live: replay the attack as another
			// sensor and hand the browser the id of the detector's alert.
			go func() {
				id := ""
				defer func() { fmt.Fprintln(stdin, id) }()
				if r := p.RunAgent(t, liveSensor, liveCapture); r.Err != nil {
					liveErr <- fmt.Errorf("agent: %v\n%s", r.Err, r.Stderr)
					return
				}
				deadline := time.Now().Add(60 * time.Second)
				for time.Now().Before(deadline) {
					if as, err := p.Alerts(liveSensor); err == nil {
						for _, a := range as {
							if a.Category == "portscan" {
								id = a.ID
								liveErr <- nil
								return
							}
						}
					}
					time.Sleep(200 * time.Millisecond)
				}
				liveErr <- fmt.Errorf("no portscan alert for sensor %s within 60 s", liveSensor)
			}()
			b, _ := proto.Marshal(counters)
			if err := nc.Publish(schema.CountersSubject(sensor), b); err != nil {
				t.Fatal(err)
			}
		}
	}
	select {
	case err := <-liveErr:
		if err != nil {
			t.Errorf("live alert: %v", err)
		}
	default:
		t.Error("the browser ended before the live alert was raised")
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("browser test: %v\nstdout:\n%s\nstderr:\n%s", err, strings.Join(out, "\n"), stderr.String())
	}
	t.Logf("browser (screenshots in %s):\n%s", shots, strings.Join(out, "\n"))
}

// checkRollups: on the pipeline's real data, every statistic the api
// answers from the sink's per-minute rollups equals the same statistic
// computed from the flows table (a range that cuts a minute has no
// rollup): the rollups equal a GROUP BY over flows.
func checkRollups(t *testing.T, api string) {
	get := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(api + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		if resp.StatusCode != 200 {
			t.Fatalf("GET %s: %d", path, resp.StatusCode)
		}
		if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
			t.Fatal(err)
		}
	}
	var oldest, newest struct{ Flows []struct{ Start time.Time } }
	get("/api/v1/flows?limit=1&sort=start", &oldest)
	get("/api/v1/flows?limit=1", &newest)
	if len(oldest.Flows) == 0 {
		t.Fatal("no flows stored")
	}
	from := oldest.Flows[0].Start.Truncate(time.Minute).Add(-time.Minute)
	to := newest.Flows[0].Start.Truncate(time.Minute).Add(time.Minute)
	rollup := "from=" + from.Format(time.RFC3339) + "&to=" + to.Format(time.RFC3339)
	flows := "from=" + from.Add(time.Second).Format(time.RFC3339) + "&to=" + to.Format(time.RFC3339)
	for _, path := range []string{"/api/v1/top-talkers?limit=50", "/api/v1/top-talkers?side=pair&limit=50",
		"/api/v1/top-talkers?side=dst&by=pkts&limit=50", "/api/v1/protocols?x=1", "/api/v1/ports?limit=1000",
		"/api/v1/countries?x=1", "/api/v1/timeseries?step=1m"} {
		var r, f map[string]any
		get(path+"&"+rollup, &r)
		get(path+"&"+flows, &f)
		// Whole minutes come from the rollups; since sink migration 00011 a
		// range that cuts a minute is answered from the rollups too, plus
		// the raw flows of the seconds at its ends ("rollup"), or from the
		// flows alone ("flows"): either way it must agree with the first.
		if r["source"] != "rollup" || (f["source"] != "flows" && f["source"] != "rollup") {
			t.Fatalf("%s: sources %v and %v", path, r["source"], f["source"])
		}
		for _, k := range []string{"source", "from"} {
			delete(r, k)
			delete(f, k)
		}
		rb, _ := json.Marshal(r)
		fb, _ := json.Marshal(f)
		if string(rb) != string(fb) {
			t.Errorf("%s: the rollup answers\n%s\nflows answer\n%s", path, rb, fb)
		}
	}
}
