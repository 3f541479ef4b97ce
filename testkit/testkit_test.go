package testkit

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
)

func TestJetStreamHasStreams(t *testing.T) {
	_, _, js := JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for _, name := range []string{schema.StreamPackets, schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics} {
		if _, err := js.Stream(ctx, name); err != nil {
			t.Errorf("stream %s: %v", name, err)
		}
	}
	// Provisioning twice is idempotent.
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatalf("second provision: %v", err)
	}
}

func TestPostgresFreshSchema(t *testing.T) {
	dsn := Postgres(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := pgx.Connect(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close(ctx)
	var n int
	if err := c.QueryRow(ctx, "SELECT count(*) FROM information_schema.tables WHERE table_schema = current_schema()").Scan(&n); err != nil {
		t.Fatal(err)
	}
	if n != 0 {
		t.Fatalf("fresh schema has %d tables", n)
	}
}

// TestProvisionRetryLogsToStageLogger: a server whose max_file_store (1 GiB
// here) is below PACKETS' 8 GiB cap refuses the stream on every try;
// ProvisionRetry says why through the logger the stage gave it (JSON, as the
// stages log), not slog's default text logger.
func TestProvisionRetryLogsToStageLogger(t *testing.T) {
	opts := &server.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(),
		JetStreamMaxStore: 1 << 30, NoLog: true, NoSigs: true}
	s, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10 s")
	}
	defer s.Shutdown()
	nc, err := nats.Connect(s.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	var buf syncBuffer
	log := slog.New(slog.NewJSONHandler(&buf, nil))
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	err = schema.ProvisionRetry(ctx, js, schema.StreamOptions{Log: log})
	if err == nil {
		t.Fatal("provisioned PACKETS' 8 GiB on a 1 GiB server")
	}
	var line struct {
		Level, Msg, Err string
	}
	first, _, _ := strings.Cut(buf.String(), "\n")
	if jerr := json.Unmarshal([]byte(first), &line); jerr != nil {
		t.Fatalf("the warning is not a JSON line of the given logger: %q (%v)", buf.String(), jerr)
	}
	if line.Level != "WARN" || line.Msg != "provisioning the streams failed; retrying" ||
		!strings.Contains(line.Err, "insufficient storage") {
		t.Errorf("warning %+v, want WARN, the retry message and the server's reason (insufficient storage)", line)
	}
}

// syncBuffer is a bytes.Buffer safe for a logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
