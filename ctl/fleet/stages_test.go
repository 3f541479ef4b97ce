package fleet_test

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"netwatch/testkit"
	"netwatch/testkit/e2e"
)

// stages is the running pipeline of the namespace harness: enricher,
// detector and sink instances (counts from NETWATCH_FLEET_ENRICHERS,
// NETWATCH_FLEET_DETECTORS, NETWATCH_FLEET_SINKS; default 2 each, the
// issue's fleet) on a
// fresh database, each with its role's credentials from netwatchctl.
type stages struct {
	bin, authDir, natsURL, dbURL string
	db                           *pgx.Conn
	procs                        map[string][]*proc
	args                         map[string][]string
	started                      map[string]int
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func startStages(t *testing.T, root, authDir, natsURL string) *stages {
	t.Helper()
	if _, err := exec.LookPath("tshark"); err != nil {
		testkit.Unavailable(t, "no tshark: %v", err)
	}
	p := &stages{bin: filepath.Join(root, "bin"), authDir: authDir, natsURL: natsURL,
		procs: map[string][]*proc{}, args: map[string][]string{}, started: map[string]int{}}
	for _, s := range []string{"enricher", "detector", "sink"} {
		if _, err := os.Stat(filepath.Join(p.bin, s)); err != nil {
			testkit.Unavailable(t, "no %s (make build): %v", filepath.Join(p.bin, s), err)
		}
		ctl(t, "creds", "-dir", authDir, "-role", s, "-o", filepath.Join(authDir, s+".creds"))
	}
	p.dbURL = e2e.CreateDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, p.dbURL)
	if err != nil {
		t.Fatal(err)
	}
	p.db = db
	t.Cleanup(func() { db.Close(context.Background()) })
	p.args["enricher"] = []string{"-nats.replicas", "3", "-flow.idle-timeout.tcp", "3s", "-flow.idle-timeout.udp", "3s",
		"-flow.idle-timeout.icmp", "3s", "-flow.idle-timeout.other", "3s", "-flow.wall-tick", "500ms"}
	p.args["detector"] = []string{"-stream.replicas", "3"}
	p.args["sink"] = []string{"-database.url", p.dbURL}
	counts := map[string]int{"sink": envInt("NETWATCH_FLEET_SINKS", 2), "detector": envInt("NETWATCH_FLEET_DETECTORS", 2),
		"enricher": envInt("NETWATCH_FLEET_ENRICHERS", 2)}
	t.Cleanup(func() {
		if t.Failed() {
			for name, ps := range p.procs {
				for i, pr := range ps {
					t.Logf("--- %s #%d:\n%s", name, i, tail(pr.output(), 15))
				}
			}
		}
	})
	for _, s := range []string{"sink", "detector", "enricher"} { // data-flow order reversed: consumers first
		for range counts[s] {
			p.start(t, s)
		}
	}
	t.Logf("stages: %d enricher, %d detector, %d sink", counts["enricher"], counts["detector"], counts["sink"])
	return p
}

func (p *stages) start(t *testing.T, name string) {
	t.Helper()
	addr := freeAddr(t)
	args := append([]string{filepath.Join(p.bin, name), "-nats.url", p.natsURL, "-nats.creds",
		filepath.Join(p.authDir, name+".creds"), "-http.addr", addr, "-log.format", "text"}, p.args[name]...)
	pr := startProc(t, fmt.Sprintf("%s-%d", name, p.started[name]), args...)
	p.started[name]++
	p.procs[name] = append(p.procs[name], pr)
	waitFor(t, 60*time.Second, pr.name+" ready", func() error {
		select {
		case err := <-pr.done:
			pr.done <- err
			return fmt.Errorf("exited: %v\n%s", err, tail(pr.output(), 10))
		default:
		}
		r, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return fmt.Errorf("readyz %d", r.StatusCode)
		}
		return nil
	})
}

// restartOneOfEach stops the first instance of every stage (SIGTERM: each
// drains) and starts a new one.
func (p *stages) restartOneOfEach(t *testing.T) {
	t.Helper()
	for _, s := range []string{"enricher", "detector", "sink"} {
		pr := p.procs[s][0]
		if err := pr.stop(90 * time.Second); err != nil {
			t.Errorf("stop %s: %v", pr.name, err)
		}
		p.procs[s] = p.procs[s][1:]
		p.start(t, s)
		t.Logf("restarted one %s", s)
	}
}

// storedFlows reads sensor's flow records from PostgreSQL.
func (p *stages) storedFlows(ctx context.Context, sensor string) ([]e2e.Flow, error) {
	rows, err := p.db.Query(ctx, `SELECT host(orig_addr), orig_port, host(resp_addr), resp_port, proto,
		orig_pkts, orig_ip_bytes, resp_pkts, resp_ip_bytes FROM flows WHERE sensor = $1`, sensor)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []e2e.Flow
	for rows.Next() {
		var f e2e.Flow
		if err := rows.Scan(&f.OrigAddr, &f.OrigPort, &f.RespAddr, &f.RespPort, &f.Proto,
			&f.OrigPkts, &f.OrigIPBytes, &f.RespPkts, &f.RespIPBytes); err != nil {
			return nil, err
		}
		f.Sensor = sensor
		out = append(out, f)
	}
	return out, rows.Err()
}

// checkFlows waits until sensor's stored flows carry as many packets as
// tshark counts in the capture of the same link, then compares per
// directional 5-tuple: packets and IP bytes must be equal.
func (p *stages) checkFlows(t *testing.T, ctx context.Context, sensor, pcap string) {
	t.Helper()
	want, err := e2e.Tshark(ctx, "tshark", pcap)
	if err != nil {
		t.Fatalf("tshark %s: %v", pcap, err)
	}
	wt := e2e.Totals(want.Flows)
	var got map[e2e.Tuple]e2e.Count
	deadline := time.Now().Add(90 * time.Second)
	for {
		flows, err := p.storedFlows(ctx, sensor)
		if err != nil {
			t.Fatal(err)
		}
		var bad []string
		got, bad = e2e.Sum(flows)
		if len(bad) > 0 {
			t.Fatalf("%s: %v", sensor, bad)
		}
		gt := e2e.Totals(got)
		if gt.Pkts >= wt.Pkts || time.Now().After(deadline) {
			t.Logf("%s: stored %d flow records, %d packets, %d IP bytes; tshark %d tuples, %d packets, %d IP bytes",
				sensor, len(flows), gt.Pkts, gt.IPBytes, len(want.Flows), wt.Pkts, wt.IPBytes)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	// Per-tuple sums add up records, so a flow split between two enricher
	// instances would still match; the record count shows it (every
	// connection here has its own ports; ICMP echo may end in two records
	// across an idle timeout).
	pairs := map[[2]e2e.Tuple]bool{}
	for k := range want.Flows {
		r := e2e.Tuple{Src: k.Dst, SPort: k.DPort, Dst: k.Src, DPort: k.SPort, Proto: k.Proto}
		if r.String() < k.String() {
			k, r = r, k
		}
		pairs[[2]e2e.Tuple{k, r}] = true
	}
	if flows, err := p.storedFlows(ctx, sensor); err == nil {
		t.Logf("%s: %d flow records for %d bidirectional 5-tuples in the capture", sensor, len(flows), len(pairs))
	}
	if d := e2e.Diff(want.Flows, got, 20); len(d) > 0 {
		t.Errorf("%s: stored flows differ from tshark on the capture:\n%v", sensor, d)
	}
}

// checkAlerts expects exactly one portscan alert for sensor (a to b, 200
// ports) and no alert of another category.
func (p *stages) checkAlerts(t *testing.T, ctx context.Context, sensor string) {
	t.Helper()
	var cats map[string]int
	waitFor(t, 30*time.Second, sensor+" portscan alert", func() error {
		rows, err := p.db.Query(ctx, `SELECT category, count(*) FROM alerts WHERE sensor = $1 GROUP BY category`, sensor)
		if err != nil {
			return err
		}
		defer rows.Close()
		cats = map[string]int{}
		for rows.Next() {
			var c string
			var n int
			if err := rows.Scan(&c, &n); err != nil {
				return err
			}
			cats[c] = n
		}
		if cats["portscan"] == 0 {
			return fmt.Errorf("alerts %v", cats)
		}
		return nil
	})
	time.Sleep(2 * time.Second) // a second alert would come from the same flows: give it time
	if cats["portscan"] != 1 || len(cats) != 1 {
		t.Errorf("%s: alerts by category %v, want exactly one portscan", sensor, cats)
	} else {
		t.Logf("%s: alerts %v", sensor, cats)
	}
}

// live records, for every flow record on the api's WebSocket feed, the
// time from the record's last packet ("end", packet time: the capture
// clock of this machine) to its arrival.
type live struct {
	conn *websocket.Conn
	mu   sync.Mutex
	lat  []time.Duration
	ids  map[string]bool
	done chan struct{}
}

// startAPI starts one api (role api credentials) and subscribes to its
// live flow feed.
func (p *stages) startAPI(t *testing.T) *live {
	t.Helper()
	if _, err := os.Stat(filepath.Join(p.bin, "api")); err != nil {
		testkit.Unavailable(t, "no %s (make build): %v", filepath.Join(p.bin, "api"), err)
	}
	ctl(t, "creds", "-dir", p.authDir, "-role", "api", "-o", filepath.Join(p.authDir, "api.creds"))
	addr := freeAddr(t)
	p.args["api"] = []string{"-database.url", p.dbURL, "-http.addr", addr}
	pr := startProc(t, "api-0", append([]string{filepath.Join(p.bin, "api"), "-nats.url", p.natsURL, "-nats.creds",
		filepath.Join(p.authDir, "api.creds"), "-log.format", "text"}, p.args["api"]...)...)
	p.procs["api"] = []*proc{pr}
	waitFor(t, 60*time.Second, "api ready", func() error {
		r, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return err
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return fmt.Errorf("readyz %d", r.StatusCode)
		}
		return nil
	})
	conn, _, err := websocket.DefaultDialer.Dial("ws://"+addr+"/api/v1/live?types=flow", nil)
	if err != nil {
		t.Fatalf("live feed: %v", err)
	}
	l := &live{conn: conn, ids: map[string]bool{}, done: make(chan struct{})}
	go func() {
		defer close(l.done)
		for {
			_, b, err := conn.ReadMessage()
			if err != nil {
				return
			}
			now := time.Now()
			var m struct {
				Flow *struct {
					ID  string    `json:"id"`
					End time.Time `json:"end"`
				} `json:"flow"`
			}
			if json.Unmarshal(b, &m) != nil || m.Flow == nil {
				continue
			}
			l.mu.Lock()
			l.lat = append(l.lat, now.Sub(m.Flow.End))
			l.ids[m.Flow.ID] = true
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-l.done })
	return l
}

// report logs how many stored flow records of sensors came over the feed and
// the latency percentiles.
func (l *live) report(t *testing.T, ctx context.Context, p *stages, sensors ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	stored, missing := 0, 0
	for _, s := range sensors {
		rows, err := p.db.Query(ctx, `SELECT id::text FROM flows WHERE sensor = $1`, s)
		if err != nil {
			t.Logf("live: stored ids: %v", err)
			return
		}
		for rows.Next() {
			var id string
			if rows.Scan(&id) == nil {
				stored++
				if !l.ids[id] {
					missing++
				}
			}
		}
		rows.Close()
	}
	lat := slices.Clone(l.lat)
	slices.Sort(lat)
	if len(lat) == 0 {
		t.Errorf("live: no flow came over the WebSocket")
		return
	}
	pct := func(q float64) time.Duration { return lat[min(len(lat)-1, int(q*float64(len(lat))))] }
	t.Logf("live: %d flow records over the WebSocket (%d stored, %d of them not seen live); last packet -> WebSocket p50 %v, p99 %v, max %v",
		len(lat), stored, missing, pct(0.50).Round(time.Millisecond), pct(0.99).Round(time.Millisecond), lat[len(lat)-1].Round(time.Millisecond))
}
