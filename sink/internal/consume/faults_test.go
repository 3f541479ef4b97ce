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
	"netwatch/sink/internal/pgserver"
	"netwatch/sink/internal/store"
	"netwatch/sink/internal/storetest"
	"netwatch/testkit"
)

// instance is one sink's flows loop (its own store, pool and metrics) on the
// shared durable consumer.
type instance struct {
	st *store.Store
	m  *Metrics
}

// runFlows starts a flows loop against dsn on the sink-flows durable of js,
// stopped when the test ends.
func runFlows(t *testing.T, js jetstream.JetStream, dsn string, cfg Config) *instance {
	t.Helper()
	ctx := context.Background()
	log := slog.New(slog.DiscardHandler)
	st, err := store.Open(ctx, dsn, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	l := Flows(st, c, cfg, m, log)
	runCtx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	wg.Go(func() {
		if err := l.Run(runCtx); err != nil {
			t.Error(err)
		}
	})
	t.Cleanup(func() { cancel(); wg.Wait(); st.Close() })
	return &instance{st: st, m: m}
}

func publish(t *testing.T, js jetstream.JetStream, subject, id string, m proto.Message) {
	t.Helper()
	b, err := proto.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	msg := &nats.Msg{Subject: subject, Data: b, Header: nats.Header{}}
	msg.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

// consumerPending is num_pending + num_ack_pending of sink-flows (what
// /api/v1/pipeline shows).
func consumerPending(t *testing.T, js jetstream.JetStream) uint64 {
	t.Helper()
	c, err := js.Consumer(context.Background(), schema.StreamFlows, schema.ConsumerSinkFlows)
	if err != nil {
		t.Fatal(err)
	}
	ci, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return ci.NumPending + uint64(ci.NumAckPending)
}

// totals are the flows stored: rows, distinct ids and sums (for the exact
// checks: the expected values are computed from the published batches).
type totals struct{ rows, ids, origIPBytes, origPkts int64 }

func storedTotals(t *testing.T, dsn string) totals {
	t.Helper()
	ctx := context.Background()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var x totals
	if err := c.QueryRow(ctx, `SELECT count(*), count(DISTINCT id), coalesce(sum(orig_ip_bytes), 0)::int8,
		coalesce(sum(orig_pkts), 0)::int8 FROM flows`).Scan(&x.rows, &x.ids, &x.origIPBytes, &x.origPkts); err != nil {
		t.Fatal(err)
	}
	return x
}

func wantTotals(batches []*pb.FlowBatch) totals {
	var x totals
	for _, fb := range batches {
		for _, f := range fb.Flows {
			x.rows++
			x.ids++
			x.origIPBytes += int64(f.OrigIpBytes)
			x.origPkts += int64(f.OrigPkts)
		}
	}
	return x
}

// TestPostgresStoppedFor30s: a private PostgreSQL is stopped for 30 s while
// flows keep arriving. The sink backs off (db_errors grows slowly, not in a
// spin), its lag shows in netwatch_sink_lag_seconds, write_failing and the
// durable consumer's pending count; nothing is acked meanwhile. Once the
// server is back it catches up: every flow once, sums exact, lag 0.
func TestPostgresStoppedFor30s(t *testing.T) {
	srv := pgserver.Start(t)
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	dsn := srv.DSN()
	if _, err := store.Migrate(ctx, dsn, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	sink := runFlows(t, js, dsn, Config{BatchSize: 500, FlushInterval: 50 * time.Millisecond, RetryMax: 2 * time.Second})
	day := time.Date(2024, 2, 29, 12, 0, 0, 0, time.UTC)
	var sent []*pb.FlowBatch
	pub := func(i int) {
		fb := flowBatch("s1", i*100, 100, day)
		sent = append(sent, fb)
		publish(t, js, schema.FlowsSubject("s1", uint32(i%4), 0), schema.BatchID(ids(fb)), fb)
	}
	for i := range 10 {
		pub(i)
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return storedTotals(t, dsn).rows == 1000 }, "first 1000 flows not stored")

	srv.Stop()
	stopped := time.Now()
	for i := 10; i < 60; i++ {
		pub(i)
	}
	var maxLag, maxPending float64
	var failing bool
	for time.Since(stopped) < 30*time.Second {
		time.Sleep(500 * time.Millisecond)
		maxLag = max(maxLag, testutil.ToFloat64(sink.m.Lag.WithLabelValues("flows")))
		maxPending = max(maxPending, testutil.ToFloat64(sink.m.Pending.WithLabelValues("flows")))
		failing = failing || testutil.ToFloat64(sink.m.Failing.WithLabelValues("flows")) == 1
	}
	pendingNow := consumerPending(t, js)
	errs := testutil.ToFloat64(sink.m.DBErrors.WithLabelValues("flows"))
	srv.StartAgain()
	restarted := time.Now()
	t.Logf("outage 30 s: max lag %.1f s, max pending gauge %.0f, consumer pending %d, %v db errors", maxLag, maxPending, pendingNow, errs)

	// 5000 flows in 50 messages were held for ~30 s: the lag gauge saw at
	// least 25 s, the pending gauge and the consumer every message.
	if maxLag < 25 || maxPending < 50 || pendingNow < 50 || !failing {
		t.Errorf("during the outage: max lag %.1f s (want >= 25), max pending gauge %.0f and consumer pending %d (want >= 50), failing %v",
			maxLag, maxPending, pendingNow, failing)
	}
	// Backoff: retries of one batch 0.2, 0.4 … 2 s apart, two writers: far
	// fewer than one error per 100 ms.
	if errs < 2 || errs > 60 {
		t.Errorf("%v db errors in 30 s: want a few (backoff), not none and not a spin", errs)
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return consumerPending(t, js) == 0 },
		"consumer still has %d pending after the restart", consumerPending(t, js))
	t.Logf("caught up %v after the restart", time.Since(restarted).Round(100*time.Millisecond))
	if got, want := storedTotals(t, dsn), wantTotals(sent); got != want {
		t.Fatalf("after the outage: stored %+v, want %+v", got, want)
	}
	testkit.Eventually(t, 5*time.Second, func() bool {
		return testutil.ToFloat64(sink.m.Lag.WithLabelValues("flows")) == 0 &&
			testutil.ToFloat64(sink.m.Failing.WithLabelValues("flows")) == 0
	}, "lag %v / failing %v not back to 0", testutil.ToFloat64(sink.m.Lag.WithLabelValues("flows")),
		testutil.ToFloat64(sink.m.Failing.WithLabelValues("flows")))
	storetest.CheckRollupsDSN(t, dsn, "after outage")
}

// TestSeveralInstancesShareTheDurable: three sinks (own pools, own loops) on
// the one durable consumer, with republished duplicates: every flow once,
// sums exact, and the work was shared.
func TestSeveralInstancesShareTheDurable(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	dsn := testkit.Postgres(t)
	if _, err := store.Migrate(context.Background(), dsn, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	cfg := Config{BatchSize: 300, FlushInterval: 20 * time.Millisecond, Prefetch: 16}
	sinks := []*instance{runFlows(t, js, dsn, cfg), runFlows(t, js, dsn, cfg), runFlows(t, js, dsn, cfg)}
	start := time.Date(2023, 12, 31, 23, 50, 0, 0, time.UTC)
	var sent []*pb.FlowBatch
	for i := range 120 {
		fb := flowBatch(fmt.Sprintf("s%d", i%3), i*50, 50, start)
		sent = append(sent, fb)
		publish(t, js, schema.FlowsSubject(fb.Sensor, uint32(i%8), 0), schema.BatchID(ids(fb)), fb)
		if i%10 == 0 { // the same content again under another id
			publish(t, js, schema.FlowsSubject(fb.Sensor, 0, 0), fmt.Sprintf("again-%d", i), fb)
		}
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return consumerPending(t, js) == 0 }, "messages pending")
	if got, want := storedTotals(t, dsn), wantTotals(sent); got != want {
		t.Fatalf("stored %+v, want %+v", got, want)
	}
	var rows, dups float64
	busy := 0
	for _, s := range sinks {
		r := testutil.ToFloat64(s.m.Rows.WithLabelValues("flows"))
		rows += r
		dups += testutil.ToFloat64(s.m.Duplicates.WithLabelValues("flows"))
		if r > 0 {
			busy++
		}
	}
	if rows != 6000 || dups != 12*50 || busy < 2 {
		t.Errorf("rows_written_total %v (want 6000), duplicates %v (want 600), %d of 3 sinks wrote", rows, dups, busy)
	}
	storetest.CheckRollupsDSN(t, dsn, "three sinks")
}

// TestBadBatchParked: a message whose rows violate a constraint and one whose
// write hits the statement timeout are parked (parked_messages, counted) and
// terminated, not retried forever; the good messages around them are stored,
// the pool never runs dry and later writes succeed.
func TestBadBatchParked(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	base := testkit.Postgres(t)
	ctx := context.Background()
	if _, err := store.Migrate(ctx, base, slog.New(slog.DiscardHandler)); err != nil {
		t.Fatal(err)
	}
	admin, err := pgx.Connect(ctx, base)
	if err != nil {
		t.Fatal(err)
	}
	defer admin.Close(ctx)
	for _, q := range []string{
		// The database rejects orig_port 6666 (a stand-in for any data it
		// refuses) and takes 3 s over a row with orig_port 7777.
		"ALTER TABLE flows ADD CONSTRAINT no_6666 CHECK (orig_port <> 6666)",
		`CREATE FUNCTION slow_row() RETURNS trigger LANGUAGE plpgsql AS $$
		BEGIN IF NEW.orig_port = 7777 THEN PERFORM pg_sleep(3); END IF; RETURN NEW; END $$`,
		"CREATE TRIGGER slow BEFORE INSERT ON flows FOR EACH ROW EXECUTE FUNCTION slow_row()",
	} {
		if _, err := admin.Exec(ctx, q); err != nil {
			t.Fatalf("%s: %v", q, err)
		}
	}
	dsn := base + "&statement_timeout=1000&pool_max_conns=4"
	sink := runFlows(t, js, dsn, Config{BatchSize: 1000, FlushInterval: 50 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	day := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	var good []*pb.FlowBatch
	var badSeq []string
	for i := range 20 {
		fb := flowBatch("s1", i*10, 10, day)
		switch i {
		case 5:
			fb.Flows[3].OrigPort = 6666
			badSeq = append(badSeq, "check")
		case 12:
			fb.Flows[7].OrigPort = 7777
			badSeq = append(badSeq, "timeout")
		default:
			good = append(good, fb)
		}
		publish(t, js, schema.FlowsSubject("s1", 0, 0), fmt.Sprintf("m%d", i), fb)
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return consumerPending(t, js) == 0 }, "messages pending")
	if got, want := storedTotals(t, base), wantTotals(good); got != want {
		t.Fatalf("stored %+v, want the 18 good messages %+v", got, want)
	}
	rows, err := admin.Query(ctx, "SELECT msg_id, sqlstate, reason, length(data) > 0 FROM parked_messages ORDER BY msg_id")
	if err != nil {
		t.Fatal(err)
	}
	type parked struct {
		ID, State, Reason string
		Data              bool
	}
	ps, err := pgx.CollectRows(rows, pgx.RowToStructByPos[parked])
	if err != nil {
		t.Fatal(err)
	}
	if len(ps) != 2 || ps[0].ID != "m12" || ps[0].State != "57014" || !strings.Contains(ps[0].Reason, "statement timeout") ||
		ps[1].ID != "m5" || ps[1].State != "23514" || !strings.Contains(ps[1].Reason, "no_6666") || !ps[0].Data || !ps[1].Data {
		t.Fatalf("parked %+v; want m12 (57014 statement timeout) and m5 (23514 no_6666)", ps)
	}
	if p := testutil.ToFloat64(sink.m.Parked.WithLabelValues("flows")); p != 2 {
		t.Errorf("parked_messages_total %v, want 2", p)
	}
	// Not retried forever: the errors stop once the two are parked.
	errs := testutil.ToFloat64(sink.m.DBErrors.WithLabelValues("flows"))
	time.Sleep(2 * time.Second)
	if e := testutil.ToFloat64(sink.m.DBErrors.WithLabelValues("flows")); e != errs {
		t.Errorf("db errors still growing after parking: %v -> %v", errs, e)
	}
	// The pool is not exhausted: nothing is held, and a later batch is stored.
	if st := sink.st.Pool().Stat(); st.AcquiredConns() != 0 {
		t.Errorf("%d connections still acquired", st.AcquiredConns())
	}
	fb := flowBatch("s1", 1000, 10, day)
	good = append(good, fb)
	publish(t, js, schema.FlowsSubject("s1", 0, 0), "later", fb)
	testkit.Eventually(t, 20*time.Second, func() bool { return storedTotals(t, base) == wantTotals(good) }, "later batch not stored")
	storetest.CheckRollupsDSN(t, base, "after parking")
}
