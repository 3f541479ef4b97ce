package server_test

import (
	"context"
	"fmt"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

func TestPipelinePending(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	type pipeline struct {
		Streams []struct {
			Name      string `json:"name"`
			Messages  uint64 `json:"messages"`
			LastSeq   uint64 `json:"last_seq"`
			Consumers []struct {
				Name       string `json:"name"`
				Pending    uint64 `json:"pending"`
				NumPending uint64 `json:"num_pending"`
				AckPending int    `json:"ack_pending"`
			} `json:"consumers"`
		} `json:"streams"`
		Pending uint64 `json:"pending"`
	}
	enricher := func() (p pipeline, pending, num uint64, ack int) {
		e.get(t, "/api/v1/pipeline", &p)
		for _, s := range p.Streams {
			for _, c := range s.Consumers {
				if s.Name == schema.StreamPackets && c.Name == schema.ConsumerEnricher {
					return p, c.Pending, c.NumPending, c.AckPending
				}
			}
		}
		t.Fatalf("no enricher consumer in %+v", p)
		return
	}
	p, pending, _, _ := enricher()
	if p.Pending != 0 || pending != 0 || len(p.Streams) != 5 {
		t.Fatalf("empty pipeline: %+v", p)
	}
	for i := 1; i <= 3; i++ {
		b, _ := proto.Marshal(&pb.PacketBatch{Sensor: "s1", Boot: "b", Seq: uint64(i)})
		if _, err := e.js.Publish(ctx, schema.PacketsSubject("s1", 0), b,
			jetstream.WithMsgID(schema.PacketBatchID("s1", "b", uint64(i)))); err != nil {
			t.Fatal(err)
		}
	}
	p, pending, num, _ := enricher()
	if pending != 3 || num != 3 || p.Pending != 3 || p.Streams[0].Messages != 3 || p.Streams[0].LastSeq != 3 {
		t.Fatalf("after publishing 3: enricher pending %d num_pending %d, total %d, %+v", pending, num, p.Pending, p.Streams[0])
	}
	cons, err := e.js.Consumer(ctx, schema.StreamPackets, schema.ConsumerEnricher)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := cons.Fetch(3, jetstream.FetchMaxWait(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var msgs []jetstream.Msg
	for m := range batch.Messages() {
		msgs = append(msgs, m)
	}
	if len(msgs) != 3 {
		t.Fatalf("fetched %d", len(msgs))
	}
	// Delivered but not acked: still pending.
	_, pending, num, ack := enricher()
	if pending != 3 || num != 0 || ack != 3 {
		t.Fatalf("delivered, unacked: pending %d num_pending %d ack_pending %d; want 3 0 3", pending, num, ack)
	}
	for _, m := range msgs {
		if err := m.DoubleAck(ctx); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		p, pending, _, _ := enricher()
		return pending == 0 && p.Pending == 0
	}, "pending did not drop to 0 after acking")
}

func dial(t *testing.T, e *env, query string) *websocket.Conn {
	t.Helper()
	before := e.srv.Hub.Clients()
	u := "ws" + strings.TrimPrefix(e.url, "http") + "/api/v1/live" + query
	c, resp, err := websocket.DefaultDialer.Dial(u, nil)
	if err != nil {
		t.Fatalf("dial %s: %v (%v)", u, err, resp)
	}
	t.Cleanup(func() { c.Close() })
	testkit.Eventually(t, 5*time.Second, func() bool { return e.srv.Hub.Clients() > before }, "client not registered")
	return c
}

type liveMsg struct {
	Type    string         `json:"type"`
	Flow    map[string]any `json:"flow"`
	Alert   map[string]any `json:"alert"`
	Metrics map[string]any `json:"metrics"`
	Dropped uint64         `json:"dropped"`
}

func next(t *testing.T, c *websocket.Conn) liveMsg {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	var m liveMsg
	if err := c.ReadJSON(&m); err != nil {
		t.Fatalf("read: %v", err)
	}
	return m
}

func testFlow(sensor string, i int, proto uint32, port uint32) *pb.Flow {
	o := netip.MustParseAddr(fmt.Sprintf("10.1.0.%d", i)).AsSlice()
	r := netip.MustParseAddr("192.0.2.200").AsSlice()
	start := base.UnixNano() + int64(i)*1e9
	return &pb.Flow{Id: schema.FlowID(sensor, proto, o, 1000+uint32(i), r, port, 0, 0, 0, start, 0),
		Sensor: sensor, CommunityId: "1:x", Proto: proto, OrigAddr: o, OrigPort: 1000 + uint32(i), RespAddr: r, RespPort: port,
		StartNs: start, EndNs: start + 5e8, FlowStartNs: start, OrigPkts: 3, OrigIpBytes: 180, OrigBytes: 60,
		RespPkts: 2, RespIpBytes: 120, RespBytes: 40, Final: true, EndReason: pb.EndReason_END_FIN, App: "http",
		Tunnel: pb.Tunnel_TUNNEL_VXLAN}
}

func publishFlows(t *testing.T, e *env, sensor string, flows ...*pb.Flow) {
	t.Helper()
	b, err := proto.Marshal(&pb.FlowBatch{Sensor: sensor, Flows: flows})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := e.js.Publish(context.Background(), schema.FlowsSubject(sensor, 0, 0), b); err != nil {
		t.Fatal(err)
	}
}

func TestLive(t *testing.T) {
	e := newEnv(t)
	all := dial(t, e, "")
	s1tcp := dial(t, e, "?sensor=s1&proto=tcp&types=flow")
	byAddr := dial(t, e, "?addr=10.1.0.2&types=flow,alert")
	byPort := dial(t, e, "?port=53&types=flow")

	publishFlows(t, e, "s2", testFlow("s2", 1, 6, 80))
	publishFlows(t, e, "s1", testFlow("s1", 2, 17, 53), testFlow("s1", 3, 6, 80))

	// The unfiltered client sees all three, in order, as REST-shaped JSON.
	var ids []any
	for i := 0; i < 3; i++ {
		m := next(t, all)
		if m.Type != "flow" {
			t.Fatalf("type %q", m.Type)
		}
		ids = append(ids, m.Flow["orig_addr"])
		if i == 0 {
			want := map[string]any{"sensor": "s2", "proto": 6.0, "orig_addr": "10.1.0.1", "orig_port": 1001.0,
				"resp_addr": "192.0.2.200", "resp_port": 80.0, "orig_pkts": 3.0, "orig_ip_bytes": 180.0,
				"orig_bytes": 60.0, "resp_pkts": 2.0, "resp_ip_bytes": 120.0, "resp_bytes": 40.0,
				"start": "2024-05-01T12:00:01.123456000Z", "end": "2024-05-01T12:00:01.623456000Z",
				"end_reason": "fin", "tunnel": "vxlan", "final": true, "app": "http", "duration": 0.5}
			for k, v := range want {
				if m.Flow[k] != v {
					t.Errorf("flow[%q] = %#v, want %#v", k, m.Flow[k], v)
				}
			}
			if id, _ := m.Flow["id"].(string); len(id) != 32 {
				t.Errorf("id %q", id)
			}
		}
	}
	if fmt.Sprint(ids) != "[10.1.0.1 10.1.0.2 10.1.0.3]" {
		t.Errorf("unfiltered client got %v", ids)
	}
	if m := next(t, s1tcp); m.Flow["orig_addr"] != "10.1.0.3" {
		t.Errorf("sensor=s1&proto=tcp got %v", m.Flow)
	}
	if m := next(t, byAddr); m.Flow["orig_addr"] != "10.1.0.2" {
		t.Errorf("addr filter got %v", m.Flow)
	}
	if m := next(t, byPort); m.Flow["orig_addr"] != "10.1.0.2" {
		t.Errorf("port filter got %v", m.Flow)
	}

	// An alert and a metrics sample.
	al := &pb.Alert{Id: "al1", TimeNs: base.UnixNano(), Sensor: "s1", Severity: pb.Severity_SEVERITY_HIGH,
		Category: "portscan", Technique: "T1046", OrigAddr: "10.1.0.2", Summary: "scan", Evidence: []byte(`{"ports":100}`)}
	b, _ := proto.Marshal(al)
	if _, err := e.js.Publish(context.Background(), schema.AlertsSubject("s1"), b); err != nil {
		t.Fatal(err)
	}
	mt := &pb.Metrics{Sensor: "s1", Host: "h1", TimeNs: base.UnixNano(), CpuPercent: 42, MemTotalBytes: 100,
		Disks:    []*pb.DiskUsage{{Mount: "/", TotalBytes: 10, UsedBytes: 5}},
		Captures: []*pb.CaptureStats{{Source: "eth0", Received: 7, Dropped: 1}}}
	b, _ = proto.Marshal(mt)
	if _, err := e.js.Publish(context.Background(), schema.MetricsSubject("s1"), b); err != nil {
		t.Fatal(err)
	}
	// The alert and the metrics sample come from two subjects, each
	// delivered by its own subscription: in either order.
	byType := map[string]liveMsg{}
	for range 2 {
		m := next(t, all)
		byType[m.Type] = m
	}
	m := byType["alert"]
	if m.Type != "alert" || m.Alert["severity"] != "high" || m.Alert["orig_addr"] != "10.1.0.2" ||
		m.Alert["evidence"].(map[string]any)["ports"] != 100.0 {
		t.Errorf("alert message %+v (got %v)", m, byType)
	}
	if _, ok := m.Alert["resp_addr"]; ok {
		t.Errorf("empty resp_addr present: %v", m.Alert)
	}
	m = byType["metrics"]
	if m.Type != "metrics" || m.Metrics["cpu_percent"] != 42.0 ||
		m.Metrics["captures"].([]any)[0].(map[string]any)["dropped"] != 1.0 {
		t.Errorf("metrics message %+v (got %v)", m, byType)
	}
	if m := next(t, byAddr); m.Type != "alert" {
		t.Errorf("addr filter: want the alert, got %+v", m)
	}
	// byPort wants flows on port 53 only; it must not have seen the alert
	// or a port 80 flow: the next message is this one.
	publishFlows(t, e, "s1", testFlow("s1", 9, 17, 53))
	if m := next(t, byPort); m.Type != "flow" || m.Flow["orig_addr"] != "10.1.0.9" {
		t.Errorf("port filter: got %+v", m)
	}

	// Shutdown closes connections with "going away".
	e.srv.Hub.Close()
	all.SetReadDeadline(time.Now().Add(5 * time.Second))
	var err error
	for err == nil {
		_, _, err = all.ReadMessage()
	}
	if !websocket.IsCloseError(err, websocket.CloseGoingAway) {
		t.Errorf("after Close: %v, want close 1001", err)
	}
	if n := e.srv.Hub.Clients(); n != 0 {
		t.Errorf("%d clients after Close", n)
	}
}

func TestLiveSlowClientDrops(t *testing.T) {
	e := newEnv(t)
	e.srv.Hub.Buffer = 2
	c := dial(t, e, "?types=flow")
	flows := make([]*pb.Flow, 20000)
	for i := range flows {
		flows[i] = testFlow("s1", i%250, 6, 80)
	}
	publishFlows(t, e, "s1", flows...)
	got := 0
	for {
		m := next(t, c)
		if m.Type == "dropped" {
			if m.Dropped == 0 || got+int(m.Dropped) > len(flows) {
				t.Fatalf("dropped %d after %d flows", m.Dropped, got)
			}
			break
		}
		got++
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		metrics, err := httpGet(e.url + "/metrics")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Contains(metrics, "netwatch_api_ws_dropped_messages_total ") &&
			!strings.Contains(metrics, "netwatch_api_ws_dropped_messages_total 0\n")
	}, "drop metric not counted")
}

// TestLiveKeepalive: a client that answers pings stays, one that does not
// (it never reads, so never sends a pong) is closed after two intervals.
func TestLiveKeepalive(t *testing.T) {
	e := newEnv(t)
	e.srv.Hub.PingInterval = 100 * time.Millisecond
	alive := dial(t, e, "")
	go func() {
		for {
			if _, _, err := alive.ReadMessage(); err != nil { // answers pings
				return
			}
		}
	}()
	_ = dial(t, e, "") // never reads
	testkit.Eventually(t, 5*time.Second, func() bool { return e.srv.Hub.Clients() == 1 }, "silent client not closed")
	publishFlows(t, e, "s1", testFlow("s1", 1, 6, 80))
	if n := e.srv.Hub.Clients(); n != 1 {
		t.Errorf("%d clients, want the responsive one", n)
	}
}

// TestLiveSubscribesOnDemand: with no live client the api holds no
// subscription (the FLOWS traffic costs it nothing); a client subscribes
// the types it wants, and leaving unsubscribes them.
func TestLiveSubscribesOnDemand(t *testing.T) {
	e := newEnv(t)
	h := e.srv.Hub
	subscribed := func() string {
		return fmt.Sprint(h.Subscribed("flow"), h.Subscribed("alert"), h.Subscribed("metrics"))
	}
	if s := subscribed(); s != "false false false" {
		t.Fatalf("no client: subscribed %s", s)
	}
	c := dial(t, e, "?types=alert")
	if s := subscribed(); s != "false true false" {
		t.Fatalf("alert client: subscribed %s", s)
	}
	all := dial(t, e, "")
	if s := subscribed(); s != "true true true" {
		t.Fatalf("alert and unfiltered clients: subscribed %s", s)
	}
	publishFlows(t, e, "s1", testFlow("s1", 1, 6, 80))
	if m := next(t, all); m.Type != "flow" {
		t.Fatalf("got %+v", m)
	}
	all.Close()
	testkit.Eventually(t, 5*time.Second, func() bool { return subscribed() == "false true false" }, "unfiltered client left, flows still subscribed")
	c.Close()
	testkit.Eventually(t, 5*time.Second, func() bool { return subscribed() == "false false false" }, "every client left, still subscribed")
}
