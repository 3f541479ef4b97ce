package consume

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/store"
	"netwatch/testkit"
)

type env struct {
	app string // application_name of the sink's connections
	dsn string
	js  jetstream.JetStream
	st  *store.Store
	m   *Metrics
	ctx context.Context
}

// start brings up JetStream and a migrated PostgreSQL schema and runs the
// three loops until the test ends.
func start(t *testing.T) *env {
	t.Helper()
	_, _, js := testkit.JetStream(t)
	app := fmt.Sprintf("sinktest_%d", time.Now().UnixNano())
	dsn := testkit.Postgres(t) + "&application_name=" + app
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	if _, err := store.Migrate(ctx, dsn, log); err != nil {
		t.Fatal(err)
	}
	st, err := store.Open(ctx, dsn, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	cons := func(stream, name string) jetstream.Consumer {
		c, err := js.Consumer(ctx, stream, name)
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	cfg := Config{BatchSize: 100, FlushInterval: 20 * time.Millisecond}
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	for _, l := range []interface{ Run(context.Context) error }{
		Flows(st, cons(schema.StreamFlows, schema.ConsumerSinkFlows), cfg, m, log),
		Alerts(st, cons(schema.StreamAlerts, schema.ConsumerSinkAlerts), cfg, m, log),
		HostMetrics(st, cons(schema.StreamMetrics, schema.ConsumerSinkMetrics), cfg, m, log),
	} {
		wg.Go(func() {
			if err := l.Run(runCtx); err != nil {
				t.Error(err)
			}
		})
	}
	t.Cleanup(func() { cancel(); wg.Wait(); st.Close() })
	return &env{app: app, dsn: dsn, js: js, st: st, m: m, ctx: ctx}
}

func (e *env) publish(t *testing.T, subject, id string, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: subject, Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := e.js.PublishMsg(e.ctx, msg); err != nil {
		t.Fatal(err)
	}
}

func (e *env) count(t *testing.T, q string) int {
	t.Helper()
	var n int
	if err := e.st.Pool().QueryRow(e.ctx, q).Scan(&n); err != nil {
		t.Fatal(err)
	}
	return n
}

func flowBatch(sensor string, from, n int, start time.Time) *pb.FlowBatch {
	fb := &pb.FlowBatch{Sensor: sensor}
	for i := from; i < from+n; i++ {
		oa, ra := []byte{10, 0, byte(i >> 8), byte(i)}, []byte{192, 0, 2, 1}
		st := start.Add(time.Duration(i) * time.Second)
		fb.Flows = append(fb.Flows, &pb.Flow{
			Id:     schema.FlowID(sensor, 17, oa, uint32(i), ra, 53, 0, 0, 0, st.UnixNano(), 0),
			Sensor: sensor, Proto: 17, OrigAddr: oa, OrigPort: uint32(i), RespAddr: ra, RespPort: 53,
			StartNs: st.UnixNano(), EndNs: st.Add(time.Millisecond).UnixNano(), FlowStartNs: st.UnixNano(),
			OrigPkts: 1, OrigIpBytes: uint64(60 + i), RespPkts: 1, RespIpBytes: 120, Final: true,
			EndReason: pb.EndReason_END_IDLE, App: "dns",
		})
	}
	return fb
}

func ids(fb *pb.FlowBatch) []string {
	var s []string
	for _, f := range fb.Flows {
		s = append(s, f.Id)
	}
	return s
}

func TestFlowsStoredOnceDespiteRepublish(t *testing.T) {
	e := start(t)
	start := time.Date(2010, 3, 15, 23, 0, 0, 0, time.UTC) // crosses into the 16th
	var batches []*pb.FlowBatch
	for i := range 40 {
		fb := flowBatch("s1", i*100, 100, start)
		batches = append(batches, fb)
		e.publish(t, schema.FlowsSubject("s1", uint32(i%4), 1), schema.BatchID(ids(fb)), fb)
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return e.count(t, "SELECT count(*) FROM flows") == 4000 },
		"want 4000 flows, have %d", e.count(t, "SELECT count(*) FROM flows"))
	// The same content again under new message ids (an enricher that rebuilt
	// its output after a restart with a different batching).
	for i, fb := range batches[:10] {
		e.publish(t, schema.FlowsSubject("s1", 0, 1), fmt.Sprintf("again-%d", i), fb)
	}
	testkit.Eventually(t, 20*time.Second, func() bool {
		return testutil.ToFloat64(e.m.Duplicates.WithLabelValues("flows")) == 1000
	}, "want 1000 duplicates skipped")
	if n := e.count(t, "SELECT count(*) FROM flows"); n != 4000 {
		t.Fatalf("%d flows after republish, want 4000", n)
	}
	if n := e.count(t, "SELECT sum(orig_ip_bytes)::int FROM flows"); n != 4000*60+3999*4000/2 {
		t.Fatalf("sum(orig_ip_bytes) = %d", n)
	}
	if n := e.count(t, "SELECT count(*) FROM partitions WHERE name IN ('flows_p20100315','flows_p20100316')"); n != 2 {
		t.Fatalf("%d 2010 partitions, want 2", n)
	}
	if got := testutil.ToFloat64(e.m.Rows.WithLabelValues("flows")); got != 4000 {
		t.Fatalf("rows_written_total %v, want 4000", got)
	}
}

func TestUndecodableIsTerminated(t *testing.T) {
	e := start(t)
	msg := &nats.Msg{Subject: schema.FlowsSubject("s1", 0, 0), Data: []byte{0xff, 0xff, 0xff}, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, "garbage")
	if _, err := e.js.PublishMsg(e.ctx, msg); err != nil {
		t.Fatal(err)
	}
	fb := flowBatch("s1", 0, 3, time.Now())
	e.publish(t, schema.FlowsSubject("s1", 0, 0), "good", fb)
	testkit.Eventually(t, 10*time.Second, func() bool { return e.count(t, "SELECT count(*) FROM flows") == 3 }, "good batch not stored")
	testkit.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(e.m.Poison.WithLabelValues("flows")) == 1
	}, "poison not counted")
	if n := e.count(t, "SELECT count(*) FROM parked_messages WHERE msg_id = 'garbage' AND data = '\\xffffff'::bytea AND reason LIKE 'does not decode%'"); n != 1 {
		t.Errorf("%d parked rows for the undecodable message, want 1", n)
	}
	c, _ := e.js.Consumer(e.ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
	testkit.Eventually(t, 10*time.Second, func() bool {
		ci, err := c.Info(e.ctx)
		return err == nil && ci.NumAckPending == 0 && ci.NumPending == 0
	}, "messages still pending")
}

func TestAlertsAndMetricsStored(t *testing.T) {
	e := start(t)
	now := time.Now().UTC()
	for i := range 5 {
		a := &pb.Alert{Id: schema.AlertID("s1", "portscan", fmt.Sprintf("10.0.0.%d", i), "", now.UnixNano()),
			TimeNs: now.UnixNano(), Sensor: "s1", Severity: pb.Severity_SEVERITY_MEDIUM, Category: "portscan",
			OrigAddr: fmt.Sprintf("10.0.0.%d", i), Summary: "scan", Rule: "portscan"}
		e.publish(t, schema.AlertsSubject("s1"), a.Id, a)
		e.publish(t, schema.AlertsSubject("s1"), a.Id+"-dup", a)
		m := &pb.Metrics{Sensor: "s1", Host: "h1", TimeNs: now.Add(time.Duration(i) * time.Second).UnixNano(),
			Boot: "b", Seq: uint64(i + 1), CpuPercent: float64(i)}
		e.publish(t, schema.MetricsSubject("s1"), fmt.Sprintf("s1.b.metrics.%d", i+1), m)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		return e.count(t, "SELECT count(*) FROM alerts") == 5 && e.count(t, "SELECT count(*) FROM host_metrics") == 5 &&
			testutil.ToFloat64(e.m.Duplicates.WithLabelValues("alerts")) == 5
	}, "alerts/metrics not stored")
	if n := e.count(t, "SELECT count(*) FROM alerts WHERE severity = 'medium' AND orig_addr IS NOT NULL AND resp_addr IS NULL"); n != 5 {
		t.Fatalf("%d alerts with expected columns, want 5", n)
	}
	if n := e.count(t, "SELECT count(*) FROM sensors WHERE sensor = 's1' AND host = 'h1'"); n != 1 {
		t.Fatalf("sensors row missing")
	}
}

// TestDatabaseOutage: while the database refuses the writes (the sink's
// connections are killed and the table is missing) nothing is acked; once it
// is back every row is stored exactly once.
func TestDatabaseOutage(t *testing.T) {
	e := start(t)
	day := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	pub := func(i int) {
		fb := flowBatch("s1", i*50, 50, day)
		e.publish(t, schema.FlowsSubject("s1", 0, 0), schema.BatchID(ids(fb)), fb)
	}
	pub(0)
	testkit.Eventually(t, 10*time.Second, func() bool { return e.count(t, "SELECT count(*) FROM flows") == 50 }, "first batch")

	admin, err := pgx.Connect(e.ctx, strings.Replace(e.dsn, e.app, "admin", 1))
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(e.ctx)
	exec := func(q string, args ...any) {
		t.Helper()
		if _, err := admin.Exec(e.ctx, q, args...); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	exec("ALTER TABLE flows RENAME TO flows_away")
	exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", e.app)
	for i := 1; i < 6; i++ {
		pub(i)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		return testutil.ToFloat64(e.m.DBErrors.WithLabelValues("flows")) >= 2
	}, "no db errors during the outage")
	c, _ := e.js.Consumer(e.ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
	if ci, err := c.Info(e.ctx); err != nil || ci.AckFloor.Stream != 1 {
		t.Fatalf("ack floor %+v (%v), want 1: nothing acked during the outage", ci.AckFloor, err)
	}
	exec("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1", e.app)
	exec("ALTER TABLE flows_away RENAME TO flows")
	testkit.Eventually(t, 20*time.Second, func() bool {
		ci, err := c.Info(e.ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
	}, "messages still pending after the outage")
	if n := e.count(t, "SELECT count(*) FROM flows"); n != 300 {
		t.Fatalf("%d flows, want 300", n)
	}
	if n := e.count(t, "SELECT count(DISTINCT id) FROM flows"); n != 300 {
		t.Fatalf("%d distinct flows, want 300", n)
	}
}

// TestInvalidUTF8OnTheWire: a FlowBatch whose string fields hold invalid
// UTF-8 (Go's protobuf refuses to decode it) is repaired by the text rule
// and stored, not lost; the other flows of the message with it.
func TestInvalidUTF8OnTheWire(t *testing.T) {
	e := start(t)
	fb := flowBatch("s1", 0, 5, time.Date(2024, 10, 1, 0, 0, 0, 0, time.UTC))
	fb.Flows[2].ServerName = "QQQQ.example"
	fb.Flows[2].HttpUserAgent = "UUUU"
	b, err := proto.Marshal(fb)
	if err != nil {
		t.Fatal(err)
	}
	b = []byte(strings.Replace(string(b), "QQQQ", "\xff\x00\xc3(", 1))
	b = []byte(strings.Replace(string(b), "UUUU", "ok\xe2\x82", 1))
	if err := proto.Unmarshal(b, new(pb.FlowBatch)); err == nil {
		t.Fatal("the crafted message decodes: the test does not test anything")
	}
	msg := &nats.Msg{Subject: schema.FlowsSubject("s1", 0, 0), Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, "bad-utf8")
	if _, err := e.js.PublishMsg(e.ctx, msg); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return e.count(t, "SELECT count(*) FROM flows") == 5 }, "flows not stored")
	var sn, ua string
	if err := e.st.Pool().QueryRow(e.ctx, "SELECT server_name, http_user_agent FROM flows WHERE orig_port = 2").Scan(&sn, &ua); err != nil {
		t.Fatal(err)
	}
	if sn != `\xff\x00\xc3(.example` || ua != `ok\xe2\x82` {
		t.Errorf("server_name %q, user agent %q", sn, ua)
	}
	if r, p := testutil.ToFloat64(e.m.Repaired.WithLabelValues("flows")), testutil.ToFloat64(e.m.Poison.WithLabelValues("flows")); r != 1 || p != 0 {
		t.Errorf("repaired %v poison %v, want 1 and 0", r, p)
	}
}
