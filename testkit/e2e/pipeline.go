package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"netwatch/testkit"
)

// Services are the long-running stages, in start order (data-flow order
// reversed, so consumers are ready before producers).
var Services = []string{"sink", "detector", "enricher", "api"}

// Binaries are every program the pipeline needs.
var Binaries = []string{"agent", "enricher", "detector", "sink", "api"}

// Pipeline is a running netwatch: in-process JetStream, a fresh PostgreSQL
// database, and sink, detector, enricher and api as subprocesses.
type Pipeline struct {
	Bin     string // folder of the binaries
	NATSURL string
	DBURL   string // the fresh database
	APIURL  string // http://127.0.0.1:port
	LogDir  string
	DB      *pgx.Conn

	mu    sync.Mutex
	procs map[string]*proc
	dbMu  sync.Mutex
}

type proc struct {
	cmd  *exec.Cmd
	done chan struct{} // closed when the process has exited
}

// FreeAddr returns a 127.0.0.1 address with a port that was free a moment ago.
func FreeAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// CreateDatabase creates netwatch_e2e_<random> on the test PostgreSQL server
// (the services migrate into a database's default schema, so a schema of
// the shared database would not isolate them) and drops it when t ends.
func CreateDatabase(t testing.TB) string {
	t.Helper()
	base := testkit.DatabaseURL()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, base)
	if err != nil {
		testkit.Unavailable(t, "no PostgreSQL at %s: %v", base, err)
		return ""
	}
	defer conn.Close(ctx)
	name := fmt.Sprintf("netwatch_e2e_%d_%d", time.Now().Unix(), rand.IntN(1e6))
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		t.Fatalf("create database %s: %v", name, err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		c, err := pgx.Connect(ctx, base)
		if err != nil {
			t.Logf("drop database %s: %v", name, err)
			return
		}
		defer c.Close(ctx)
		if _, err := c.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			t.Logf("drop database %s: %v", name, err)
		}
	})
	u, err := url.Parse(base)
	if err != nil {
		t.Fatalf("parse %s: %v", base, err)
	}
	u.Path = "/" + name
	q := u.Query()
	q.Del("search_path")
	u.RawQuery = q.Encode()
	return u.String()
}

// StartPipeline starts JetStream, a fresh database and the four services
// from bin, waits until every service answers /readyz, and stops them all
// when t ends (printing the tail of each log if t failed).
func StartPipeline(t *testing.T, bin string) *Pipeline {
	t.Helper()
	p := &Pipeline{Bin: bin, LogDir: t.TempDir(), procs: map[string]*proc{}}
	p.NATSURL = testkit.NATS(t)
	p.DBURL = CreateDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	db, err := pgx.Connect(ctx, p.DBURL)
	if err != nil {
		t.Fatalf("connect %s: %v", p.DBURL, err)
	}
	p.DB = db
	t.Cleanup(func() { db.Close(context.Background()) })
	t.Cleanup(func() {
		p.Stop(t)
		if t.Failed() {
			for _, s := range Services {
				t.Logf("--- tail of %s log:\n%s", s, p.Tail(s, 30))
			}
		}
	})
	addrs := map[string]string{}
	for _, s := range Services {
		addrs[s] = FreeAddr(t)
		args := []string{"-nats.url", p.NATSURL, "-http.addr", addrs[s], "-log.level", "info"}
		switch s {
		case "sink":
			args = append(args, "-database.url", p.DBURL)
		case "api":
			args = append(args, "-database.url", p.DBURL, "-live.buffer", "200000")
		}
		p.start(t, s, args...)
		if s == "sink" {
			// The sink runs the migrations; the api needs the tables.
			p.waitReady(t, s, addrs[s])
		}
	}
	for _, s := range Services {
		p.waitReady(t, s, addrs[s])
	}
	p.APIURL = "http://" + addrs["api"]
	return p
}

func (p *Pipeline) start(t *testing.T, name string, args ...string) {
	t.Helper()
	f, err := os.Create(filepath.Join(p.LogDir, name+".log"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(filepath.Join(p.Bin, name), args...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.Env = cleanEnv()
	dieWithParent(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	pr := &proc{cmd: cmd, done: make(chan struct{})}
	p.mu.Lock()
	p.procs[name] = pr
	p.mu.Unlock()
	go func() {
		_ = cmd.Wait()
		f.Close()
		close(pr.done)
	}()
}

// cleanEnv is the environment without NETWATCH_* variables, so that only
// the flags the test gives configure the services.
func cleanEnv() []string {
	var env []string
	for _, kv := range os.Environ() {
		if !strings.HasPrefix(kv, "NETWATCH_") {
			env = append(env, kv)
		}
	}
	return env
}

func (p *Pipeline) waitReady(t *testing.T, name, addr string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		p.mu.Lock()
		pr := p.procs[name]
		p.mu.Unlock()
		select {
		case <-pr.done:
			t.Fatalf("%s exited during start: %v\n%s", name, pr.cmd.ProcessState, p.Tail(name, 30))
		default:
		}
		resp, err := http.Get("http://" + addr + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s not ready at %s after 30 s (last: %v)\n%s", name, addr, err, p.Tail(name, 30))
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Stop sends SIGINT to every service in data-flow order and waits for each
// to exit (killing it after 20 s).
func (p *Pipeline) Stop(t testing.TB) {
	for _, s := range []string{"enricher", "detector", "sink", "api"} {
		p.mu.Lock()
		pr := p.procs[s]
		delete(p.procs, s)
		p.mu.Unlock()
		if pr == nil {
			continue
		}
		_ = pr.cmd.Process.Signal(os.Interrupt)
		select {
		case <-pr.done:
		case <-time.After(20 * time.Second):
			t.Errorf("%s did not stop in 20 s after SIGINT; killing it", s)
			_ = pr.cmd.Process.Kill()
			<-pr.done
		}
		if st := pr.cmd.ProcessState; st != nil && !st.Success() {
			t.Logf("%s exited after SIGINT: %v", s, st)
		}
	}
}

// Tail returns the last n lines of a service's log.
func (p *Pipeline) Tail(name string, n int) string {
	return tailFile(filepath.Join(p.LogDir, name+".log"), n)
}

func tailFile(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return err.Error()
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// AgentResult is how one agent run ended.
type AgentResult struct {
	Err    error  // nil when it exited 0
	Stderr string // its log
	Took   time.Duration
}

// RunAgent runs the agent over a capture file as sensor and waits for it.
func (p *Pipeline) RunAgent(t testing.TB, sensor, file string) AgentResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(p.Bin, "agent"), "-pcap", file, "-sensor", sensor,
		"-nats.url", p.NATSURL, "-http.addr", "", "-log.level", "info")
	cmd.Env = cleanEnv()
	dieWithParent(cmd)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	start := time.Now()
	err := cmd.Run()
	return AgentResult{Err: err, Stderr: out.String(), Took: time.Since(start)}
}

// dbTotals is the stored flow count and packet sum of one sensor.
func (p *Pipeline) dbTotals(sensor string) (rows, pkts int64, err error) {
	p.dbMu.Lock()
	defer p.dbMu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = p.DB.QueryRow(ctx, `SELECT count(*), coalesce(sum(orig_pkts + resp_pkts), 0)::bigint FROM flows WHERE sensor = $1`, sensor).Scan(&rows, &pkts)
	return rows, pkts, err
}

// Pending is the api's /api/v1/pipeline total of pending messages.
func (p *Pipeline) Pending() (uint64, error) {
	var v struct {
		Pending uint64 `json:"pending"`
	}
	err := p.getJSON("/api/v1/pipeline", &v)
	return v.Pending, err
}

// WaitSettled waits until the sensor's stored flows stop changing: either
// they hold wantPkts packets and nothing changed for 1 s, or the pipeline
// had nothing pending and nothing changed for 3 s. It gives up (with an
// error) after timeout, or sooner when neither the sensor's flows nor the
// pipeline's pending count moved for 30 s (a stuck pipeline).
func (p *Pipeline) WaitSettled(t testing.TB, sensor string, wantPkts int64, timeout time.Duration) {
	t.Helper()
	start := time.Now()
	deadline := start.Add(timeout)
	var lastRows, lastPkts int64 = -1, -1
	var lastPending uint64
	changed, moved := time.Now(), time.Now()
	for {
		rows, pkts, err := p.dbTotals(sensor)
		if err != nil {
			t.Fatalf("read flow totals: %v", err)
		}
		if rows != lastRows || pkts != lastPkts {
			lastRows, lastPkts, changed, moved = rows, pkts, time.Now(), time.Now()
		}
		pending, perr := p.Pending()
		if perr == nil && pending != lastPending {
			lastPending, moved = pending, time.Now()
		}
		quiet := time.Since(changed)
		if pkts == wantPkts && quiet >= time.Second {
			return
		}
		if quiet >= 3*time.Second && perr == nil && pending == 0 {
			return
		}
		stuck := time.Since(moved) >= 30*time.Second
		if time.Now().After(deadline) || stuck {
			t.Errorf("after %s (stuck: %v): sensor %s has %d flow records with %d packets (want %d), pipeline pending %d (%v); comparing what is stored",
				time.Since(start).Round(time.Second), stuck, sensor, rows, pkts, wantPkts, pending, perr)
			return
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// Flow is the part of the api's flow JSON the test reads.
type Flow struct {
	ID          string `json:"id"`
	Sensor      string `json:"sensor"`
	Proto       int    `json:"proto"`
	OrigAddr    string `json:"orig_addr"`
	OrigPort    int    `json:"orig_port"`
	RespAddr    string `json:"resp_addr"`
	RespPort    int    `json:"resp_port"`
	OrigPkts    int64  `json:"orig_pkts"`
	OrigIPBytes int64  `json:"orig_ip_bytes"`
	RespPkts    int64  `json:"resp_pkts"`
	RespIPBytes int64  `json:"resp_ip_bytes"`
}

// Flows reads every stored flow record of sensor through GET /api/v1/flows,
// following the next cursor.
func (p *Pipeline) Flows(sensor string) ([]Flow, error) {
	var all []Flow
	q := url.Values{"sensor": {sensor}, "limit": {"1000"}}
	for pages := 0; pages < 10000; pages++ {
		var page struct {
			Flows []Flow `json:"flows"`
			Next  string `json:"next"`
		}
		if err := p.getJSON("/api/v1/flows?"+q.Encode(), &page); err != nil {
			return all, err
		}
		all = append(all, page.Flows...)
		if page.Next == "" {
			return all, nil
		}
		q.Set("cursor", page.Next)
	}
	return all, errors.New("more than 10000 pages")
}

// Alert is the part of the api's alert JSON the test reads.
type Alert struct {
	ID       string  `json:"id"`
	Sensor   string  `json:"sensor"`
	Category string  `json:"category"`
	OrigAddr *string `json:"orig_addr"`
	RespAddr *string `json:"resp_addr"`
	Summary  string  `json:"summary"`
	Rule     string  `json:"rule"`
}

// Alerts reads every stored alert of sensor.
func (p *Pipeline) Alerts(sensor string) ([]Alert, error) {
	var all []Alert
	q := url.Values{"sensor": {sensor}, "limit": {"1000"}}
	for pages := 0; pages < 1000; pages++ {
		var page struct {
			Alerts []Alert `json:"alerts"`
			Next   string  `json:"next"`
		}
		if err := p.getJSON("/api/v1/alerts?"+q.Encode(), &page); err != nil {
			return all, err
		}
		all = append(all, page.Alerts...)
		if page.Next == "" {
			return all, nil
		}
		q.Set("cursor", page.Next)
	}
	return all, errors.New("more than 1000 pages")
}

func (p *Pipeline) getJSON(path string, v any) error {
	client := &http.Client{Timeout: 30 * time.Second}
	resp, err := client.Get(p.APIURL + path)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("GET %s: %s: %s", path, resp.Status, bytes.TrimSpace(b))
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("GET %s: %w", path, err)
	}
	return nil
}

// Sum adds up flow records per directional 5-tuple: the originator side as
// (orig_addr, orig_port > resp_addr, resp_port) with orig_pkts and
// orig_ip_bytes, the responder side reversed; records of one tuple on
// different VLANs or interim records add up. Tuples with no packets are left
// out. Unparsable addresses are returned as errors.
func Sum(flows []Flow) (map[Tuple]Count, []string) {
	m := map[Tuple]Count{}
	var bad []string
	for _, f := range flows {
		o, err1 := netip.ParseAddr(f.OrigAddr)
		r, err2 := netip.ParseAddr(f.RespAddr)
		if err1 != nil || err2 != nil {
			bad = append(bad, fmt.Sprintf("flow %s: addresses %q %q", f.ID, f.OrigAddr, f.RespAddr))
			continue
		}
		o, r = o.Unmap(), r.Unmap()
		if f.OrigPkts > 0 || f.OrigIPBytes > 0 {
			k := Tuple{Src: o, SPort: uint16(f.OrigPort), Dst: r, DPort: uint16(f.RespPort), Proto: uint8(f.Proto)}
			c := m[k]
			c.Pkts += uint64(f.OrigPkts)
			c.IPBytes += uint64(f.OrigIPBytes)
			m[k] = c
		}
		if f.RespPkts > 0 || f.RespIPBytes > 0 {
			k := Tuple{Src: r, SPort: uint16(f.RespPort), Dst: o, DPort: uint16(f.OrigPort), Proto: uint8(f.Proto)}
			c := m[k]
			c.Pkts += uint64(f.RespPkts)
			c.IPBytes += uint64(f.RespIPBytes)
			m[k] = c
		}
	}
	return m, bad
}

// LiveClient is a WebSocket client of /api/v1/live that records the flow
// ids it receives.
type LiveClient struct {
	conn    *websocket.Conn
	mu      sync.Mutex
	ids     map[string]bool
	dropped uint64
	done    chan struct{}
	err     error
}

// Live connects to the api's live feed for one sensor's flows.
func (p *Pipeline) Live(t testing.TB, sensor string) *LiveClient {
	t.Helper()
	u := strings.Replace(p.APIURL, "http://", "ws://", 1) + "/api/v1/live?" + url.Values{"sensor": {sensor}, "types": {"flow"}}.Encode()
	conn, _, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", u, err)
	}
	c := &LiveClient{conn: conn, ids: map[string]bool{}, done: make(chan struct{})}
	go c.read()
	t.Cleanup(c.Close)
	return c
}

func (c *LiveClient) read() {
	defer close(c.done)
	for {
		_, b, err := c.conn.ReadMessage()
		if err != nil {
			c.mu.Lock()
			c.err = err
			c.mu.Unlock()
			return
		}
		var m struct {
			Type    string `json:"type"`
			Flow    *Flow  `json:"flow"`
			Dropped uint64 `json:"dropped"`
		}
		if json.Unmarshal(b, &m) != nil {
			continue
		}
		c.mu.Lock()
		if m.Flow != nil {
			c.ids[m.Flow.ID] = true
		}
		c.dropped += m.Dropped
		c.mu.Unlock()
	}
}

// Missing returns the ids of flows not (yet) received, and the number of
// messages the server reported dropped.
func (c *LiveClient) Missing(flows []Flow) ([]string, uint64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	var miss []string
	for _, f := range flows {
		if !c.ids[f.ID] {
			miss = append(miss, f.ID)
		}
	}
	return miss, c.dropped
}

// Close closes the connection and waits for the reader.
func (c *LiveClient) Close() {
	_ = c.conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
	_ = c.conn.Close()
	<-c.done
}

// FindBinaries returns a folder holding every binary: NETWATCH_E2E_BIN when
// set; else a copy of <root>/bin when it has them all (built by `make
// build`) and NETWATCH_E2E_BUILD is not 1; else a temporary folder they are
// built into with `go build` from the go.work workspace. The returned func
// removes the temporary folder.
func FindBinaries(root string) (dir string, built bool, cleanup func(), err error) {
	if v := os.Getenv("NETWATCH_E2E_BIN"); v != "" {
		return v, false, func() {}, nil
	}
	bin := filepath.Join(root, "bin")
	all := true
	for _, b := range Binaries {
		if _, err := os.Stat(filepath.Join(bin, b)); err != nil {
			all = false
		}
	}
	tmp, err := os.MkdirTemp("", "netwatch-e2e-bin-")
	if err != nil {
		return "", false, nil, err
	}
	if all && os.Getenv("NETWATCH_E2E_BUILD") != "1" {
		// Copy them, so that a `make build` during the run cannot swap
		// binaries under the test.
		for _, b := range Binaries {
			data, err := os.ReadFile(filepath.Join(bin, b))
			if err == nil {
				err = os.WriteFile(filepath.Join(tmp, b), data, 0o755)
			}
			if err != nil {
				os.RemoveAll(tmp)
				return "", false, nil, fmt.Errorf("copy %s: %w", b, err)
			}
		}
		return tmp, false, func() { os.RemoveAll(tmp) }, nil
	}
	args := []string{"build", "-o", tmp + string(filepath.Separator)}
	for _, b := range Binaries {
		args = append(args, "./"+b+"/cmd/"+b)
	}
	cmd := exec.Command("go", args...)
	cmd.Dir = root
	out, err := cmd.CombinedOutput()
	if err != nil {
		os.RemoveAll(tmp)
		return "", false, nil, fmt.Errorf("go %s: %w\n%s", strings.Join(args, " "), err, out)
	}
	return tmp, true, func() { os.RemoveAll(tmp) }, nil
}

// FindRoot is the nearest parent of the working directory holding go.work.
func FindRoot() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.work")); err == nil {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("no go.work above the working directory")
		}
		dir = parent
	}
}
