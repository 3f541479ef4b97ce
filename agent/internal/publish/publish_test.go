package publish

import (
	"context"
	"log/slog"
	"net"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"netwatch/schema"
)

func startNATS(t *testing.T, port int, store string) *server.Server {
	t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: port, JetStream: true, StoreDir: store,
		NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatalf("start nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10 s")
	}
	return s
}

// TestDropWhenFull: with the broker down, a live publisher (DropWhenFull)
// whose buffer holds 10 messages of 1000 bytes accepts the first 10 of 30
// batches of 3 packets and drops the other 20 (60 packets), counted; when
// the broker is back on the same port and store, exactly the 10 kept
// messages are stored, once each.
func TestDropWhenFull(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	store := t.TempDir()
	s := startNATS(t, port, store)
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	s.Shutdown()
	s.WaitForShutdown()

	p := New(js, 4, slog.New(slog.DiscardHandler), Metrics{})
	p.MaxBytes, p.DropWhenFull = 10*1000, true
	var recycled atomic.Int32
	for i := 1; i <= 30; i++ {
		p.publish(schema.PacketsSubject("drop-test", 0), schema.PacketBatchID("drop-test", "b", uint64(i)),
			make([]byte, 1000), 3, func() { recycled.Add(1) })
	}
	if b, n := p.Dropped(); b != 20 || n != 60 {
		t.Fatalf("dropped %d batches / %d packets, want 20 / 60", b, n)
	}
	if n := recycled.Load(); n != 20 {
		t.Errorf("%d dropped buffers handed back, want 20", n)
	}
	s = startNATS(t, port, store)
	defer s.Shutdown()
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	p.Close()
	if n := recycled.Load(); n != 30 {
		t.Errorf("%d buffers handed back after the acks, want 30", n)
	}
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 10 {
		t.Fatalf("stream holds %d messages, want 10", info.State.Msgs)
	}
	seen := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		seen[m.Header.Get(jetstream.MsgIDHeader)] = true
	}
	for i := 1; i <= 10; i++ {
		if id := schema.PacketBatchID("drop-test", "b", uint64(i)); !seen[id] {
			t.Errorf("message %s missing", id)
		}
	}
}

// TestRetryKeepsSubjectOrder: a message whose publish fails (no stream
// answers yet: no responders) is retried; a later message of the same
// subject, published while the first waits for its retry, must be stored
// after it, and a message of another subject is not held back by it. Before
// per-subject ordering the later message went out at once and was stored
// first (the fleet test saw it when a cluster lost the PACKETS leader).
func TestRetryKeepsSubjectOrder(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	s := startNATS(t, port, t.TempDir())
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	errs := prometheus.NewCounter(prometheus.CounterOpts{Name: "errors"})
	p := New(js, 16, slog.New(slog.DiscardHandler), Metrics{Errors: errs})
	defer p.Close()

	p.Publish("order.a", "a-1", []byte("a-1")) // no stream yet: fails, retried after a backoff
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(errs) == 0 && time.Now().Before(deadline) {
		time.Sleep(time.Millisecond)
	}
	if testutil.ToFloat64(errs) == 0 {
		t.Fatal("the first publish did not fail without a stream")
	}
	if _, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "ORDER", Subjects: []string{"order.>"}}); err != nil {
		t.Fatal(err)
	}
	p.Publish("order.a", "a-2", []byte("a-2"))
	p.Publish("order.b", "b-1", []byte("b-1"))
	if err := p.Wait(ctx); err != nil {
		t.Fatal(err)
	}
	st, _ := js.Stream(ctx, "ORDER")
	var got []string
	for seq := uint64(1); seq <= 3; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("message %d: %v", seq, err)
		}
		got = append(got, string(m.Data))
	}
	pos := map[string]int{}
	for i, g := range got {
		pos[g] = i
	}
	if pos["a-1"] > pos["a-2"] {
		t.Errorf("stored %v: a-2 before the retried a-1", got)
	}
	t.Logf("stored %v after %.0f failed attempt(s)", got, testutil.ToFloat64(errs))
}
