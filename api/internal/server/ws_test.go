package server_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

type wsMsg struct {
	Type     string         `json:"type"`
	Flow     map[string]any `json:"flow"`
	Alert    map[string]any `json:"alert"`
	Counters map[string]any `json:"counters"`
	Dropped  uint64         `json:"dropped"`
	Closing  bool           `json:"closing"`
	Messages int            `json:"messages"`
}

func wsURL(e *env, path string, q url.Values) string {
	return "ws" + strings.TrimPrefix(e.url, "http") + path + "?" + q.Encode()
}

func readWS(t *testing.T, c *websocket.Conn) wsMsg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	var m wsMsg
	if err := c.ReadJSON(&m); err != nil {
		t.Fatalf("read: %v", err)
	}
	return m
}

func counters(sensor string, sec int64, pkts, bytes uint64) *pb.TrafficCounters {
	return &pb.TrafficCounters{Sensor: sensor, SecondNs: base.Truncate(time.Second).UnixNano() + sec*1e9,
		Total:      &pb.CounterSet{Packets: pkts, IpBytes: bytes, Syn: 3, Sources: 2},
		Responders: []*pb.AddrCounters{{Addr: []byte{192, 0, 2, 9}, Counters: &pb.CounterSet{Packets: pkts, IpBytes: bytes}}}}
}

func publishPB(t *testing.T, e *env, subject string, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(context.Background(), subject, b); err != nil {
		t.Fatal(err)
	}
}

func TestLiveCounters(t *testing.T) {
	e := newEnv(t)
	c := dial(t, e, "?types=counters&sensor=s1")
	publishPB(t, e, schema.CountersSubject("s2"), counters("s2", 0, 1, 1))
	publishPB(t, e, schema.CountersSubject("s1"), counters("s1", 1, 1500, 900000))
	m := readWS(t, c)
	ct := m.Counters
	// 900000 bytes in one second: 7.2 Mbit/s.
	if m.Type != "counters" || ct["sensor"] != "s1" || ct["packets"] != 1500.0 || ct["bps"] != 7.2e6 || ct["pps"] != 1500.0 ||
		ct["time"] != "2024-05-01T12:00:01.000000000Z" || ct["syn"] != 3.0 ||
		ct["responders"].([]any)[0].(map[string]any)["addr"] != "192.0.2.9" {
		t.Fatalf("counters message %+v", m)
	}
}

// TestStreamReplay: /api/v1/replay sends what JetStream holds for the range,
// across streams in publish order, with the records' own timestamps, and
// stops at to.
func TestStreamReplay(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	from := time.Now().Add(-time.Second)
	publishFlows(t, e, "s1", testFlow("s1", 1, 6, 80), testFlow("s1", 2, 17, 53))
	publishPB(t, e, schema.CountersSubject("s1"), counters("s1", 1, 10, 1000))
	publishPB(t, e, schema.AlertsSubject("s1"), &pb.Alert{Id: "al1", TimeNs: base.UnixNano(), Sensor: "s1",
		Severity: pb.Severity_SEVERITY_LOW, Category: "portscan", Summary: "scan"})
	publishFlows(t, e, "s2", testFlow("s2", 3, 6, 443))
	publishPB(t, e, schema.CountersSubject("s1"), counters("s1", 2, 20, 2000)) // after "to"
	st, err := e.js.Stream(ctx, schema.StreamCounters)
	if err != nil {
		t.Fatal(err)
	}
	last, err := st.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	to := last.Time // the last counters message is not replayed: [from, to)

	replay := func(q url.Values) []string {
		c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/api/v1/replay", q), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		var got []string
		for {
			m := readWS(t, c)
			switch m.Type {
			case "flow":
				got = append(got, "flow "+m.Flow["orig_addr"].(string)+" "+m.Flow["start"].(string))
			case "alert":
				got = append(got, "alert "+m.Alert["id"].(string))
			case "counters":
				got = append(got, fmt.Sprint("counters ", m.Counters["packets"], " ", m.Counters["time"]))
			case "replay_end":
				if m.Messages != len(got) {
					t.Errorf("replay_end says %d messages, got %d", m.Messages, len(got))
				}
				return got
			default:
				t.Fatalf("unexpected %+v", m)
			}
		}
	}
	all := replay(url.Values{"from": {from.Format(time.RFC3339Nano)}, "to": {to.Format(time.RFC3339Nano)}, "speed": {"0"}})
	want := "[flow 10.1.0.1 2024-05-01T12:00:01.123456000Z flow 10.1.0.2 2024-05-01T12:00:02.123456000Z " +
		"counters 10 2024-05-01T12:00:01.000000000Z alert al1 flow 10.1.0.3 2024-05-01T12:00:03.123456000Z]"
	if fmt.Sprint(all) != want {
		t.Errorf("replay\n got %v\nwant %s", all, want)
	}
	filtered := replay(url.Values{"from": {from.Format(time.RFC3339Nano)}, "speed": {"10"}, "types": {"flow"}, "proto": {"tcp"}})
	if fmt.Sprint(filtered) != "[flow 10.1.0.1 2024-05-01T12:00:01.123456000Z flow 10.1.0.3 2024-05-01T12:00:03.123456000Z]" {
		t.Errorf("types=flow&proto=tcp replayed %v", filtered)
	}
	if got := replay(url.Values{"from": {time.Now().Add(time.Hour).Format(time.RFC3339)}}); len(got) != 0 {
		t.Errorf("future range replayed %v", got)
	}
}

// TestStalledClient (run with -race): 50 live clients, one of which reads
// nothing at all while flows arrive. The other 49 receive every probe flow
// within 250 ms of its publication. The stalled one is closed once the
// server could write it nothing for StallTimeout; when it reads again it
// gets the flows up to the stall, in publication order, then the report of
// what it missed, equal to the flows published for it minus the flows it
// received, then close 1008 naming the same count. The write deadline (1 s)
// is shorter than the stall: had the server blocked writing to the full
// socket, it would have closed the client without a report.
func TestStalledClient(t *testing.T) {
	e := newEnv(t)
	h := e.srv.Hub
	// The default queue (1024) takes a whole batch: the stalled client's
	// writer gets every bulk flow until its socket is full, rather than
	// the hub dropping most of each burst before the socket fills (then
	// the socket would hold everything it was sent, with nothing left to
	// wait for: an idle client, left to the ping timeout).
	h.Buffer = 1024
	h.WriteTimeout = time.Second
	h.StallTimeout = 8 * time.Second // longer than the publication of its flows (checked)
	// The stalled client wants the bulk flows (port 80).
	stalled, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/api/v1/live", url.Values{"types": {"flow"}, "port": {"80"}}), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	const readers, probes, bulk, bulkBatches = 49, 40, 500, 20
	type result struct {
		got   int
		worst time.Duration
		err   error
	}
	results := make(chan result, readers)
	var ready sync.WaitGroup
	for range readers {
		c, _, err := websocket.DefaultDialer.Dial(wsURL(e, "/api/v1/live", url.Values{"types": {"flow"}, "port": {"9999"}}), nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		ready.Add(1)
		go func() {
			ready.Done()
			var r result
			for r.got < probes {
				c.SetReadDeadline(time.Now().Add(10 * time.Second))
				var m wsMsg
				if r.err = c.ReadJSON(&m); r.err != nil {
					break
				}
				if m.Type != "flow" {
					continue
				}
				sent, _ := time.Parse(time.RFC3339Nano, m.Flow["start"].(string))
				r.worst = max(r.worst, time.Since(sent))
				r.got++
			}
			results <- r
		}()
	}
	ready.Wait()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.Clients() == readers+1 }, "clients not registered")
	// Each batch: one probe on port 9999 stamped with the publish time;
	// the first bulkBatches also carry 500 bulk flows on port 80 (about
	// 350 KB of JSON for the stalled client: 7 MB in all, more than its
	// socket holds). Every flow's originator port is 10000 + its place in
	// the publication, so the stalled client can tell the order and gaps.
	start := time.Now()
	seq, published := 0, 0
	for i := range probes {
		var flows []*pb.Flow
		for range bulk * min(1, bulkBatches-i) {
			f := testFlow("s1", seq%250, 6, 80)
			f.OrigPort = uint32(10000 + seq)
			flows = append(flows, f)
			seq++
		}
		probe := testFlow("s1", i, 6, 9999)
		probe.OrigPort = uint32(10000 + seq)
		probe.StartNs = time.Now().UnixNano()
		seq++
		publishFlows(t, e, "s1", append(flows, probe)...)
		if published += len(flows); i == bulkBatches-1 {
			// The stalled client cannot have been closed before its
			// last flow: no write to it failed for StallTimeout yet.
			if took := time.Since(start); took >= h.StallTimeout {
				t.Fatalf("publishing the bulk flows took %s, not less than StallTimeout %s (machine too loaded for this test)",
					took, h.StallTimeout)
			}
		}
		time.Sleep(25 * time.Millisecond) // a feed at 40 batches/s, not a burst
	}
	for range readers {
		r := <-results
		if r.err != nil || r.got != probes || r.worst > 250*time.Millisecond {
			t.Errorf("reader: %d/%d probes, worst latency %s, err %v", r.got, probes, r.worst, r.err)
		}
	}
	// 7 MB of flows for the stalled client exceed what its connection
	// holds (half the server's send buffer, at most net.ipv4.tcp_wmem's
	// maximum / 2, here 2 MB, plus the client's receive buffer) and its
	// queue (about 0.7 MB): its writer has to wait for room, and is closed
	// StallTimeout later.
	testkit.Eventually(t, 15*time.Second, func() bool { return h.Clients() == readers },
		"stalled client not disconnected (did its socket take every flow? see net.ipv4.tcp_wmem)")

	// The stalled client reads again: what reached its socket before the
	// stall, the report, the close.
	got, lastPort := 0, 9999
	var told uint64
	var closing bool
	for {
		stalled.SetReadDeadline(time.Now().Add(10 * time.Second))
		var m wsMsg
		err := stalled.ReadJSON(&m)
		if err != nil {
			var ce *websocket.CloseError
			if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
				t.Fatalf("after %d flows and %d reported dropped: %v, want close 1008", got, told, err)
			}
			if want := fmt.Sprintf("too slow: %d messages dropped", told); ce.Text != want {
				t.Errorf("close reason %q, want %q", ce.Text, want)
			}
			break
		}
		if closing {
			t.Fatalf("a message after the closing report: %+v", m)
		}
		switch m.Type {
		case "flow":
			port := int(m.Flow["orig_port"].(float64))
			if port <= lastPort {
				t.Fatalf("flow %d: orig_port %d after %d: not in publication order", got, port, lastPort)
			}
			lastPort = port
			got++
		case "dropped":
			told += m.Dropped
			closing = m.Closing
		default:
			t.Fatalf("unexpected %+v", m)
		}
	}
	if !closing || got == 0 || got+int(told) != published {
		t.Fatalf("stalled client: %d flows received + %d reported dropped = %d, want the %d published, with a closing report (%v)",
			got, told, got+int(told), published, closing)
	}
	t.Logf("stalled client: %d flows received before the stall, %d reported dropped, of %d published", got, told, published)
}

// TestLiveTCPCut: a client whose connection is cut without a FIN or a RST
// (a proxy between it and the api stops forwarding both ways and keeps
// both sockets open: nothing more arrives, not even pongs) and a client
// that resets its connection are both dropped, while a client alongside
// keeps receiving.
func TestLiveTCPCut(t *testing.T) {
	e := newEnv(t)
	h := e.srv.Hub
	h.PingInterval = 200 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	cut := make(chan struct{})
	var mu sync.Mutex
	var open []net.Conn
	defer func() {
		mu.Lock()
		defer mu.Unlock()
		for _, c := range open {
			c.Close()
		}
	}()
	forward := func(dst, src net.Conn) {
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			select {
			case <-cut:
				return // stop reading and writing; the sockets stay open
			default:
			}
			if err != nil {
				return
			}
			if _, err := dst.Write(buf[:n]); err != nil {
				return
			}
		}
	}
	go func() {
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.Dial("tcp", strings.TrimPrefix(e.url, "http://"))
			if err != nil {
				cc.Close()
				return
			}
			mu.Lock()
			open = append(open, cc, sc)
			mu.Unlock()
			go forward(sc, cc)
			go forward(cc, sc)
		}
	}()
	alive := dial(t, e, "?types=flow")
	reset := dial(t, e, "?types=flow")
	proxied, _, err := websocket.DefaultDialer.Dial("ws://"+ln.Addr().String()+"/api/v1/live?types=flow", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer proxied.Close()
	testkit.Eventually(t, 5*time.Second, func() bool { return h.Clients() == 3 }, "clients not registered")
	var aliveGot atomic.Int64
	go func() { // reads on (and so answers pings)
		for {
			if _, _, err := alive.ReadMessage(); err != nil {
				return
			}
			aliveGot.Add(1)
		}
	}()
	publishFlows(t, e, "s1", testFlow("s1", 1, 6, 80))
	for _, c := range []*websocket.Conn{proxied, reset} {
		if m := readWS(t, c); m.Type != "flow" {
			t.Fatalf("before the cut: %+v", m)
		}
	}
	close(cut)
	tc := reset.NetConn().(*net.TCPConn)
	_ = tc.SetLinger(0) // close sends a RST
	tc.Close()
	// Flows keep coming meanwhile.
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			b, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1", Flows: []*pb.Flow{testFlow("s1", i%250, 6, 80)}})
			_ = e.nc.Publish(schema.FlowsSubject("s1", 0, 0), b)
		}
	}()
	testkit.Eventually(t, 10*time.Second, func() bool { return h.Clients() == 1 }, "cut and reset clients not dropped")
	n := aliveGot.Load()
	testkit.Eventually(t, 5*time.Second, func() bool { return aliveGot.Load() > n+2 }, "the client alongside stopped receiving")
}

// TestSlowClientToldWhatItMissed: a client that reads slowly gets dropped
// reports, and what it received plus what it was told it missed is
// exactly what was published; one that stays too slow for StallTimeout is
// told a last time ("closing") and closed with 1008.
func TestSlowClientToldWhatItMissed(t *testing.T) {
	e := newEnv(t)
	h := e.srv.Hub
	h.Buffer = 4
	h.StallTimeout = 0
	c := dial(t, e, "?types=flow")
	const batches, per = 20, 500
	go func() {
		for i := range batches {
			flows := make([]*pb.Flow, per)
			for j := range flows {
				flows[j] = testFlow("s1", (i*per+j)%250, 6, 80)
			}
			publishFlows(t, e, "s1", flows...)
		}
	}()
	got, told := 0, uint64(0)
	for got+int(told) < batches*per {
		m := readWS(t, c)
		switch m.Type {
		case "flow":
			got++
			if got%50 == 0 {
				time.Sleep(10 * time.Millisecond) // a slow reader
			}
		case "dropped":
			told += m.Dropped
		}
	}
	if got+int(told) != batches*per || told == 0 {
		t.Fatalf("received %d + told dropped %d = %d, want %d with some dropped", got, told, got+int(told), batches*per)
	}

	// Too slow for long: told, then closed with 1008.
	h.StallTimeout = 2 * time.Second
	c2 := dial(t, e, "?types=flow")
	stop := make(chan struct{})
	defer close(stop)
	go func() {
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			case <-time.After(20 * time.Millisecond):
			}
			flows := make([]*pb.Flow, 200)
			for j := range flows {
				flows[j] = testFlow("s1", j, 6, 80)
			}
			b, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1", Flows: flows})
			_ = e.nc.Publish(schema.FlowsSubject("s1", 0, 0), b)
		}
	}()
	closing := false
	for {
		c2.SetReadDeadline(time.Now().Add(20 * time.Second))
		var m wsMsg
		err := c2.ReadJSON(&m)
		if err != nil {
			if !closing || !websocket.IsCloseError(err, websocket.ClosePolicyViolation) || !strings.Contains(err.Error(), "messages dropped") {
				t.Fatalf("closing notice %v, close error %v; want the notice then 1008", closing, err)
			}
			break
		}
		if m.Type == "dropped" && m.Closing {
			closing = m.Dropped > 0
		}
		time.Sleep(time.Millisecond) // slower than the feed
	}
}

var _ = jetstream.ErrStreamNotFound

// TestLiveBatchedFrames: with batch=1 a backlog goes out as frames of
// several messages, one JSON object a line; every message arrives once.
func TestLiveBatchedFrames(t *testing.T) {
	e := newEnv(t)
	e.srv.Hub.Buffer = 4096
	c := dial(t, e, "?types=flow&batch=1")
	flows := make([]*pb.Flow, 2000)
	for i := range flows {
		flows[i] = testFlow("s1", i%250, 6, 80)
		flows[i].OrigPort = uint32(i)
	}
	publishFlows(t, e, "s1", flows...)
	frames, got := 0, 0
	for got < len(flows) {
		c.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, frame, err := c.ReadMessage()
		if err != nil {
			t.Fatalf("after %d messages: %v", got, err)
		}
		frames++
		for _, line := range strings.Split(string(frame), "\n") {
			var m wsMsg
			if err := json.Unmarshal([]byte(line), &m); err != nil || m.Type != "flow" || m.Flow["orig_port"] != float64(got) {
				t.Fatalf("message %d: %v %q", got, err, line)
			}
			got++
		}
	}
	if frames >= len(flows) {
		t.Errorf("%d messages in %d frames: not batched", got, frames)
	}
	t.Logf("%d messages in %d frames", got, frames)
}
