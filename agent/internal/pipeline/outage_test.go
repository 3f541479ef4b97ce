package pipeline

import (
	"context"
	"log/slog"
	"net"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// restartable is an in-process JetStream server on a fixed port and store
// directory, so that it can be stopped and started again as the same broker
// with the same streams and duplicate windows.
type restartable struct {
	t     *testing.T
	port  int
	store string
	s     *server.Server
}

func newRestartable(t *testing.T) *restartable {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	port := l.Addr().(*net.TCPAddr).Port
	l.Close()
	r := &restartable{t: t, port: port, store: t.TempDir()}
	r.start()
	t.Cleanup(r.stop)
	return r
}

func (r *restartable) start() {
	r.t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: r.port, JetStream: true, StoreDir: r.store,
		NoLog: true, NoSigs: true, MaxPayload: 8 << 20})
	if err != nil {
		r.t.Fatalf("start nats server: %v", err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		r.t.Fatal("nats server not ready in 10 s")
	}
	r.s = s
}

func (r *restartable) stop() {
	if r.s != nil {
		r.s.Shutdown()
		r.s.WaitForShutdown()
		r.s = nil
	}
}

func (r *restartable) url() string { return "nats://127.0.0.1:" + strconv.Itoa(r.port) }

// TestOutage replays a capture at 4x its recorded pace and stops the
// broker in the middle of it: the agent keeps reading (its packet count
// grows while NATS is down), buffers, retries with the same Nats-Msg-Ids,
// and once the broker is back on the same port and store, PACKETS holds
// every packet exactly once (totals equal tshark's), every batch id once,
// every bucket's batches in the order they were made (batch seq), and an
// end-of-input marker on every bucket; nothing was dropped.
func TestOutage(t *testing.T) {
	file := filepath.Join(testkit.Pcaps(t), "attack-portscan-nmap-syn.pcapng") // 2011 frames over 23 s
	wantPkts, wantBytes := tsharkTotals(t, file)

	srv := newRestartable(t)
	nc, err := nats.Connect(srv.url(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond),
		nats.ReconnectBufSize(64<<20))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	// a short ack timeout so that batches sent just before the outage are
	// retried, and the stream's duplicate window has to drop the copies
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(time.Second), jetstream.WithPublishAsyncMaxPending(64))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	cfg := Config{PCAP: file, Sensor: "outage-test", ReplaySpeed: 4, BatchSize: 16, BatchFlush: 100 * time.Millisecond,
		MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144, BufferMB: 16}
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	testkit.Eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(a.published) >= 5 },
		"no batch acked before the outage")
	srv.stop()
	down := a.Stats.Received.Load()
	testkit.Eventually(t, 20*time.Second, func() bool { return a.Stats.Received.Load() >= down+200 },
		"the agent stopped reading while NATS was down (%d frames since)", a.Stats.Received.Load()-down)
	testkit.Eventually(t, 20*time.Second, func() bool { return testutil.ToFloat64(a.pubErrors) > 0 },
		"no publish failed while NATS was down")
	if a.Stats.Received.Load() >= 2011 {
		t.Fatal("the file ended before the broker came back: the outage was not mid-capture")
	}
	srv.start()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("run: %v", err)
		}
	case <-ctx.Done():
		t.Fatal("agent did not finish after the broker came back")
	}

	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var pkts, bytes uint64
	ids := map[string]int{}
	markers := map[uint32]bool{}
	lastSeq := map[string]uint64{} // subject (bucket) -> batch seq of its latest stored batch
	behind := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		ids[m.Header.Get(jetstream.MsgIDHeader)]++
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		if b.EndOfInput {
			markers[b.Bucket] = true
		}
		if b.Seq < lastSeq[m.Subject] {
			behind++ // a retried batch stored after a later one of its bucket
		}
		lastSeq[m.Subject] = max(lastSeq[m.Subject], b.Seq)
		for _, p := range b.Packets {
			pkts++
			bytes += uint64(p.IpBytes)
		}
	}
	if pkts != wantPkts || bytes != wantBytes {
		t.Errorf("PACKETS holds %d packets / %d IP bytes, tshark %d / %d", pkts, bytes, wantPkts, wantBytes)
	}
	for id, n := range ids {
		if n != 1 {
			t.Errorf("Nats-Msg-Id %s stored %d times", id, n)
		}
	}
	if behind != 0 {
		t.Errorf("%d batches stored behind a later batch of their bucket: retries must keep a bucket's order", behind)
	}
	if len(markers) != schema.Buckets {
		t.Errorf("%d end-of-input markers, want %d", len(markers), schema.Buckets)
	}
	if b, p := a.BufferDropped(); b != 0 || p != 0 {
		t.Errorf("a file dropped %d batches / %d packets; it should wait", b, p)
	}
	t.Logf("broker stopped after %d frames; %d publish errors retried; %d messages", down,
		int(testutil.ToFloat64(a.pubErrors)), len(ids))
}
