package fleet_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/jackc/pgx/v5"

	"netwatch/ctl/internal/perms"
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
	own                          map[*proc][]string // an instance's own arguments (enricher: its member name)
	addr                         map[*proc]string   // an instance's -http.addr (/metrics)
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
		procs: map[string][]*proc{}, args: map[string][]string{}, started: map[string]int{}, own: map[*proc][]string{}, addr: map[*proc]string{}}
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
	// The enrichers are members of one consumer group (every packet of a
	// flow reaches one member); a member's short AckWait (also the pinned
	// TTL) lets its restarted process take its partitions back within
	// seconds. -shutdown.flush=false: a stopped member ends no flow early,
	// it returns its held messages and the restarted one rebuilds its open
	// flows from the checkpoints, so a connection open across the restart
	// is still one flow.
	p.args["enricher"] = []string{"-nats.replicas", "3", "-flow.idle-timeout.tcp", idle.String(), "-flow.idle-timeout.udp", idle.String(),
		"-flow.idle-timeout.icmp", idle.String(), "-flow.idle-timeout.other", idle.String(), "-flow.wall-tick", "500ms",
		"-consume.group", perms.EnricherGroup, "-consume.ack-wait", "5s", "-consume.keepalive", "2s", "-shutdown.flush=false"}
	// The detectors are members of the detectors' two consumer groups on
	// FLOWS (by originator and by target: a scan's flows all reach one
	// member); a stopped member leaves them (-consume.leave), the restarted
	// one joins again.
	p.args["detector"] = []string{"-stream.replicas", "3", "-consume.group", perms.DetectorGroup, "-consume.ack-wait", "5s"}
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
		for i := range counts[s] {
			var own []string
			switch s {
			case "enricher":
				own = []string{"-consume.member", fmt.Sprintf("m%d", i), "-instance", fmt.Sprintf("enricher-m%d", i)}
			case "detector":
				own = []string{"-consume.member", fmt.Sprintf("d%d", i)}
			}
			p.start(t, s, own...)
		}
	}
	t.Logf("stages: %d enricher, %d detector, %d sink", counts["enricher"], counts["detector"], counts["sink"])
	return p
}

// start starts one more instance of stage name with the stage's arguments
// and own, the instance's.
func (p *stages) start(t *testing.T, name string, own ...string) {
	t.Helper()
	addr := freeAddr(t)
	// -nats.provision=false: the role's user may not create streams or
	// durables (the test provisioned them as admin, at 3 replicas)
	args := append([]string{filepath.Join(p.bin, name), "-nats.url", p.natsURL, "-nats.creds",
		filepath.Join(p.authDir, name+".creds"), "-nats.provision=false", "-http.addr", addr, "-log.format", "text"}, p.args[name]...)
	pr := startProc(t, fmt.Sprintf("%s-%d", name, p.started[name]), append(args, own...)...)
	p.started[name]++
	p.procs[name] = append(p.procs[name], pr)
	p.own[pr] = own
	p.addr[pr] = addr
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
// drains) and starts a new one with the same own arguments (the enricher
// and the detector: the same group member).
func (p *stages) restartOneOfEach(t *testing.T) {
	t.Helper()
	for _, s := range []string{"enricher", "detector", "sink"} {
		pr := p.procs[s][0]
		if err := pr.stop(90 * time.Second); err != nil {
			t.Errorf("stop %s: %v", pr.name, err)
		}
		p.procs[s] = p.procs[s][1:]
		p.start(t, s, p.own[pr]...)
		t.Logf("restarted one %s %v", s, p.own[pr])
	}
}

// idle is every protocol's idle timeout in the harness (the enrichers'
// -flow.idle-timeout.*): a silence longer than this ends a flow.
const idle = 15 * time.Second

// closeLinger is the enrichers' -flow.close-linger (its default): a TCP
// flow ends this long after its RST or its second FIN.
const closeLinger = 2 * time.Second

// record is a stored flow record: the e2e.Flow counters plus what ties a
// record to its flow.
type record struct {
	e2e.Flow
	ICMPType  int
	FlowStart time.Time
	Index     int
	Final     bool
	EndReason string
}

// storedFlows reads sensor's flow records from PostgreSQL.
func (p *stages) storedFlows(ctx context.Context, sensor string) ([]record, error) {
	rows, err := p.db.Query(ctx, `SELECT id, host(orig_addr), orig_port, host(resp_addr), resp_port, proto,
		orig_pkts, orig_ip_bytes, resp_pkts, resp_ip_bytes, COALESCE(icmp_type, 0), flow_start, COALESCE(record_index, 0),
		final, COALESCE(end_reason, '') FROM flows WHERE sensor = $1`, sensor) // NULL: unknown / 0 (sink 00013)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []record
	for rows.Next() {
		var f record
		if err := rows.Scan(&f.ID, &f.OrigAddr, &f.OrigPort, &f.RespAddr, &f.RespPort, &f.Proto,
			&f.OrigPkts, &f.OrigIPBytes, &f.RespPkts, &f.RespIPBytes, &f.ICMPType, &f.FlowStart, &f.Index, &f.Final, &f.EndReason); err != nil {
			return nil, err
		}
		f.Sensor = sensor
		out = append(out, f)
	}
	return out, rows.Err()
}

// conn is a bidirectional 5-tuple (endpoints in canonical order); ICMP
// tuples carry the message class instead of ports (echo request and reply
// are one exchange, any other type is its sender's own, as in the
// enricher's flow key).
type conn struct {
	a, b  netip.AddrPort
	proto uint8
	icmp  string
}

func (c conn) String() string {
	if c.icmp != "" {
		return fmt.Sprintf("icmp %s %s <-> %s", c.icmp, c.a.Addr(), c.b.Addr())
	}
	return fmt.Sprintf("proto %d %s <-> %s", c.proto, c.a, c.b)
}

func connOf(src netip.Addr, sport uint16, dst netip.Addr, dport uint16, proto uint8, icmpType int) conn {
	a, b := netip.AddrPortFrom(src, sport), netip.AddrPortFrom(dst, dport)
	c := conn{proto: proto}
	if proto == 1 {
		a, b = netip.AddrPortFrom(src, 0), netip.AddrPortFrom(dst, 0)
		c.icmp = "echo"
		if icmpType != 0 && icmpType != 8 {
			c.icmp = fmt.Sprintf("type %d from %s", icmpType, src)
		}
	}
	if a.Compare(b) > 0 {
		a, b = b, a
	}
	c.a, c.b = a, b
	return c
}

// capturedFlows reads pcap with tshark (outer IP header of each frame,
// ports of TCP and UDP, the ICMP type) and returns how many flows each
// bidirectional 5-tuple makes under the idle timeout: one, plus one per
// silence longer than idle between two of its packets, plus one per TCP
// packet more than closeLinger after the tuple's RST or second FIN. A tuple with a
// silence within a wall tick or so of idle (1 s below, 1.5 s above) may
// end or not depending on when the enricher's clock moved: it is in
// unsure, and one flow more is accepted.
func capturedFlows(ctx context.Context, pcap string) (want map[conn]int, unsure map[conn]bool, err error) {
	out, err := exec.CommandContext(ctx, "tshark", "-n", "-r", pcap, "-o", "ip.defragment:FALSE", "-T", "fields",
		"-E", "occurrence=f", "-E", "separator=/t", "-e", "frame.time_epoch", "-e", "ip.src", "-e", "ip.dst", "-e", "ip.proto",
		"-e", "tcp.srcport", "-e", "tcp.dstport", "-e", "udp.srcport", "-e", "udp.dstport", "-e", "icmp.type", "-e", "tcp.flags", "ip").Output()
	if err != nil {
		return nil, nil, fmt.Errorf("tshark %s: %w", pcap, err)
	}
	last := map[conn]float64{}
	closedAt := map[conn]float64{} // TCP: time of the RST, or of the second direction's FIN
	fins := map[conn]map[netip.Addr]bool{}
	want, unsure = map[conn]int{}, map[conn]bool{}
	for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
		f := strings.Split(line, "\t")
		for len(f) < 10 {
			f = append(f, "")
		}
		ts, err1 := strconv.ParseFloat(f[0], 64)
		src, err2 := netip.ParseAddr(f[1])
		dst, err3 := netip.ParseAddr(f[2])
		proto, err4 := strconv.Atoi(f[3])
		if err := errors.Join(err1, err2, err3, err4); err != nil {
			return nil, nil, fmt.Errorf("tshark line %q: %w", line, err)
		}
		num := func(s string) int { n, _ := strconv.Atoi(s); return n }
		var sp, dp int
		switch proto {
		case 6:
			sp, dp = num(f[4]), num(f[5])
		case 17:
			sp, dp = num(f[6]), num(f[7])
		}
		c := connOf(src, uint16(sp), dst, uint16(dp), uint8(proto), num(f[8]))
		flags, _ := strconv.ParseUint(strings.TrimPrefix(f[9], "0x"), 16, 16)
		if at, ok := closedAt[c]; ok && proto == 6 {
			// A TCP flow ends closeLinger after its RST or second FIN
			// (the enricher's -flow.close-linger, 2 s): a later packet (a
			// new connection on the same ports: Linux may pick the same
			// source port again after a refused SYN) starts another flow.
			// Near the linger the enricher's clock decides: unsure.
			since := time.Duration((ts - at) * float64(time.Second))
			switch {
			case since > closeLinger+1500*time.Millisecond:
				want[c]++ // surely a flow of its own
			case since > closeLinger-time.Second:
				unsure[c] = true // one flow or two: the count allows one more
			}
			if since > closeLinger-time.Second {
				delete(closedAt, c) // from here on the new connection's own ends count
				delete(fins, c)
				last[c] = ts
			}
		}
		if proto == 6 {
			if flags&0x04 != 0 { // RST
				if _, ok := closedAt[c]; !ok {
					closedAt[c] = ts
				}
			} else if flags&0x01 != 0 { // FIN
				if fins[c] == nil {
					fins[c] = map[netip.Addr]bool{}
				}
				fins[c][src] = true
				if _, ok := closedAt[c]; !ok && len(fins[c]) == 2 {
					closedAt[c] = ts
				}
			}
		}
		if prev, ok := last[c]; !ok {
			want[c] = 1
		} else if gap := time.Duration((ts - prev) * float64(time.Second)); gap > idle {
			want[c]++
			if gap < idle+1500*time.Millisecond {
				unsure[c] = true
			}
		} else if gap > idle-time.Second {
			unsure[c] = true
		}
		last[c] = ts
	}
	return want, unsure, nil
}

// checkFlows waits until sensor's stored flows carry as many packets as
// tshark counts in the capture of the same link, then compares per
// directional 5-tuple (packets and IP bytes equal) and per connection:
// every bidirectional 5-tuple of the capture is as many flows as its
// silences say (capturedFlows; one for every connection here but the two
// pings), and every flow's records (same tuple and flow_start) are a
// complete record_index chain 0..n-1 whose last alone is final. A flow
// split between two enrichers, or ended early by a restart and continued
// as a new flow, fails it.
func (p *stages) checkFlows(t *testing.T, ctx context.Context, sensor, pcap string) {
	t.Helper()
	want, err := e2e.Tshark(ctx, "tshark", pcap)
	if err != nil {
		t.Fatalf("tshark %s: %v", pcap, err)
	}
	wt := e2e.Totals(want.Flows)
	var got map[e2e.Tuple]e2e.Count
	var recs []record
	deadline := time.Now().Add(90 * time.Second)
	for {
		recs, err = p.storedFlows(ctx, sensor)
		if err != nil {
			t.Fatal(err)
		}
		flows := make([]e2e.Flow, len(recs))
		for i, r := range recs {
			flows[i] = r.Flow
		}
		var bad []string
		got, bad = e2e.Sum(flows)
		if len(bad) > 0 {
			t.Fatalf("%s: %v", sensor, bad)
		}
		gt := e2e.Totals(got)
		if gt.Pkts >= wt.Pkts || time.Now().After(deadline) {
			t.Logf("%s: stored %d flow records, %d packets, %d IP bytes; tshark %d tuples, %d packets, %d IP bytes",
				sensor, len(recs), gt.Pkts, gt.IPBytes, len(want.Flows), wt.Pkts, wt.IPBytes)
			break
		}
		time.Sleep(500 * time.Millisecond)
	}
	if d := e2e.Diff(want.Flows, got, 20); len(d) > 0 {
		t.Errorf("%s: stored flows differ from tshark on the capture:\n%v", sensor, d)
	}

	wantConns, unsure, err := capturedFlows(ctx, pcap)
	if err != nil {
		t.Fatal(err)
	}
	type flowKey struct {
		c     conn
		start time.Time
	}
	chains := map[flowKey][]record{}
	for _, r := range recs {
		oa, err1 := netip.ParseAddr(r.OrigAddr)
		ra, err2 := netip.ParseAddr(r.RespAddr)
		if err := errors.Join(err1, err2); err != nil {
			t.Fatalf("%s: record %s: %v", sensor, r.ID, err)
		}
		c := connOf(oa, uint16(r.OrigPort), ra, uint16(r.RespPort), uint8(r.Proto), r.ICMPType)
		k := flowKey{c, r.FlowStart.UTC()}
		chains[k] = append(chains[k], r)
	}
	gotConns := map[conn]int{}
	byConn := map[conn][]record{}
	var problems []string
	for k, rs := range chains {
		gotConns[k.c]++
		byConn[k.c] = append(byConn[k.c], rs...)
		slices.SortFunc(rs, func(a, b record) int { return a.Index - b.Index })
		for i, r := range rs {
			if r.Index != i || r.Final != (i == len(rs)-1) {
				var idx []string
				for _, r := range rs {
					idx = append(idx, fmt.Sprintf("%d(final=%v,%s)", r.Index, r.Final, r.EndReason))
				}
				problems = append(problems, fmt.Sprintf("%s flow from %s: records %s, want 0..%d, the last final",
					k.c, k.start.Format(time.RFC3339Nano), strings.Join(idx, " "), len(rs)-1))
				break
			}
		}
	}
	records, multi := 0, 0 // records: what the capture's silences make
	for c, n := range wantConns {
		g := gotConns[c]
		if g != n && !(unsure[c] && g == n+1) {
			rs := byConn[c]
			slices.SortFunc(rs, func(a, b record) int { return a.FlowStart.Compare(b.FlowStart) })
			var desc []string
			for i, r := range rs {
				if i == 4 {
					desc = append(desc, "...")
					break
				}
				desc = append(desc, fmt.Sprintf("[%s +%d/%d pkts, %s]", r.FlowStart.Format("15:04:05.000"), r.OrigPkts, r.RespPkts, r.EndReason))
			}
			problems = append(problems, fmt.Sprintf("%s: %d flows stored, the capture's silences make %d: %s", c, g, n, strings.Join(desc, " ")))
		}
		if n > 1 {
			multi++
		}
		records += n
	}
	for c, g := range gotConns {
		if _, ok := wantConns[c]; !ok {
			problems = append(problems, fmt.Sprintf("%s: %d flows stored, not in the capture", c, g))
		}
	}
	slices.Sort(problems)
	t.Logf("%s: %d flow records in %d flows for %d bidirectional 5-tuples of the capture, whose silences make %d flows (%d tuples more than one, %d unsure)",
		sensor, len(recs), len(chains), len(wantConns), records, multi, len(unsure))
	if len(problems) > 0 {
		if len(problems) > 20 {
			problems = append(problems[:20], fmt.Sprintf("... %d more", len(problems)-20))
		}
		t.Errorf("%s: stored flows are not one flow per connection:\n%s", sensor, strings.Join(problems, "\n"))
	}
}

// logEnricherMetrics logs the running enrichers' counters that tell why
// a flow split: packets older than their table's clock (a bucket's batch
// processed after a later one), redelivered batches, packets a replay
// skipped by a checkpoint.
func (p *stages) logEnricherMetrics(t *testing.T) {
	t.Helper()
	for _, pr := range p.procs["enricher"] {
		r, err := http.Get("http://" + p.addr[pr] + "/metrics")
		if err != nil {
			t.Logf("%s metrics: %v", pr.name, err)
			continue
		}
		body, _ := io.ReadAll(r.Body)
		r.Body.Close()
		var keep []string
		for _, l := range strings.Split(string(body), "\n") {
			for _, m := range []string{"netwatch_enricher_packets_backwards_total", "netwatch_enricher_batches_total",
				"netwatch_enricher_packets_replayed_total", "netwatch_enricher_flows_emitted_total"} {
				if strings.HasPrefix(l, m) {
					keep = append(keep, l)
				}
			}
		}
		t.Logf("%s %v: %s", pr.name, p.own[pr], strings.Join(keep, "; "))
	}
}

// checkAlerts expects exactly one portscan alert for sensor (a to b, 200
// ports) and no alert of another traffic category. Health alerts (category
// health: rules about netwatch itself, from METRICS and consumer info with
// the detector's credentials) are about the pipeline, not the traffic: a
// sensor's METRICS pause while the cluster loses a node (health_sensor_silent,
// 3 of the agents' intervals: 30 s at the default 10 s, so not expected;
// with 1 s intervals it fired in most runs) would be a true one, and so is
// the one that follows the test's stop of the agents (agentsStopped): a
// health_sensor_silent alert must fall within the outage (from the node's
// stop to 30 s after its restart) or after agentsStopped; any other health
// alert fails.
func (p *stages) checkAlerts(t *testing.T, ctx context.Context, sensor string, outage [2]time.Time, agentsStopped time.Time) {
	t.Helper()
	type alert struct {
		category, rule, summary string
		at                      time.Time
	}
	var cats map[string]int
	var health []alert
	read := func() error {
		rows, err := p.db.Query(ctx, `SELECT category, rule, summary, time FROM alerts WHERE sensor = $1`, sensor)
		if err != nil {
			return err
		}
		defer rows.Close()
		cats, health = map[string]int{}, nil
		for rows.Next() {
			var a alert
			if err := rows.Scan(&a.category, &a.rule, &a.summary, &a.at); err != nil {
				return err
			}
			if a.category == "health" {
				health = append(health, a)
				continue
			}
			cats[a.category]++
		}
		return rows.Err()
	}
	waitFor(t, 30*time.Second, sensor+" portscan alert", func() error {
		if err := read(); err != nil {
			return err
		}
		if cats["portscan"] == 0 {
			return fmt.Errorf("alerts %v", cats)
		}
		return nil
	})
	// A second alert would come from the same flows: give it time, then
	// read the alerts again.
	time.Sleep(5 * time.Second)
	if err := read(); err != nil {
		t.Fatalf("%s: alerts: %v", sensor, err)
	}
	if cats["portscan"] != 1 || len(cats) != 1 {
		t.Errorf("%s: alerts by category %v, want exactly one portscan", sensor, cats)
	} else {
		t.Logf("%s: traffic alerts %v", sensor, cats)
	}
	for _, a := range health {
		in := !a.at.Before(outage[0]) && !a.at.After(outage[1].Add(30*time.Second)) || !a.at.Before(agentsStopped)
		t.Logf("%s: health alert %s at %s (node down %s to %s, agents stopped %s): %s", sensor, a.rule, a.at.Format("15:04:05.000"),
			outage[0].Format("15:04:05.000"), outage[1].Format("15:04:05.000"), agentsStopped.Format("15:04:05.000"), a.summary)
		if a.rule != "health_sensor_silent" || !in {
			t.Errorf("%s: health alert %s at %s not explained by the node outage or the agents' stop", sensor, a.rule, a.at.Format(time.RFC3339Nano))
		}
	}
}

// live records, for every flow record on the api's WebSocket feed, the
// time from the record's last packet ("end", packet time: the capture
// clock of this machine) to its arrival.
type live struct {
	conn *websocket.Conn
	mu   sync.Mutex
	lat  []time.Duration
	ends []time.Time // each flow's last packet, as lat
	why  []string    // each flow's end_reason, as lat
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
					ID        string    `json:"id"`
					End       time.Time `json:"end"`
					EndReason string    `json:"end_reason"`
				} `json:"flow"`
			}
			if json.Unmarshal(b, &m) != nil || m.Flow == nil {
				continue
			}
			l.mu.Lock()
			l.lat = append(l.lat, now.Sub(m.Flow.End))
			l.ends = append(l.ends, m.Flow.End)
			l.why = append(l.why, m.Flow.EndReason)
			l.ids[m.Flow.ID] = true
			l.mu.Unlock()
		}
	}()
	t.Cleanup(func() { conn.Close(); <-l.done })
	return l
}

// report logs how many stored flow records of sensors came over the feed and
// the latency percentiles (a flow's last packet -> the flow on the
// WebSocket): all flows; apart those whose last packet fell in the outage
// (from a second before the node stopped until it was back), whose batches
// may wait for the agent's publish ack timeout (-nats.ack-timeout); and by
// how the flows ended, since a flow ended by its idle timeout is on the feed
// no sooner than that timeout (the stages' idle) after its last packet:
// for those the time beyond it is given too.
func (l *live) report(t *testing.T, ctx context.Context, p *stages, outage [2]time.Time, sensors ...string) {
	t.Helper()
	l.mu.Lock()
	defer l.mu.Unlock()
	stored, missing := 0, 0
	for _, s := range sensors {
		// the feed's ids are 32 hex digits; a uuid column prints with dashes
		rows, err := p.db.Query(ctx, `SELECT replace(id::text, '-', '') FROM flows WHERE sensor = $1`, s)
		if err != nil {
			t.Errorf("live: stored ids: %v", err)
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
	if stored == 0 || missing > 0 {
		t.Errorf("live: %d of the %d stored flow records never came over the WebSocket", missing, stored)
	}
	var in, out []time.Duration
	for i, d := range l.lat {
		if e := l.ends[i]; !e.Before(outage[0].Add(-time.Second)) && !e.After(outage[1]) {
			in = append(in, d)
		} else {
			out = append(out, d)
		}
	}
	byEnd := map[string][]time.Duration{}
	for i, d := range l.lat {
		if l.why[i] == "idle" {
			d -= idle // the idle timeout is part of the definition, not a delay
		}
		byEnd[l.why[i]] = append(byEnd[l.why[i]], d)
	}
	parts := []struct {
		name string
		d    []time.Duration
	}{{"outside the outage", out}, {"ending in the outage", in}}
	for _, r := range slices.Sorted(maps.Keys(byEnd)) {
		name := "ended by " + r
		if r == "idle" {
			name += " (time beyond the " + idle.String() + " idle timeout)"
		}
		parts = append(parts, struct {
			name string
			d    []time.Duration
		}{name, byEnd[r]})
	}
	for _, part := range parts {
		if len(part.d) == 0 {
			continue
		}
		slices.Sort(part.d)
		q := func(x float64) time.Duration { return part.d[min(len(part.d)-1, int(x*float64(len(part.d))))] }
		t.Logf("live: %d flows %s: p50 %v, p99 %v", len(part.d), part.name, q(0.5).Round(time.Millisecond), q(0.99).Round(time.Millisecond))
	}
}
