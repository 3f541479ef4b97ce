package server_test

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/rest"
	"netwatch/api/internal/server"
	"netwatch/schema"
	"netwatch/testkit"
)

// TestPipelineNATSDown: GET /api/v1/pipeline answers 200 while NATS is up;
// when the NATS server goes away after the api started, it answers 503
// (problem type unavailable) at once, not after the query timeout with a
// 504 that blames the database (independent QA, seventh session: 30 s and
// 504 "Database query timed out" four times in a row).
func TestPipelineNATSDown(t *testing.T) {
	ns, err := natsserver.NewServer(&natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true,
		StoreDir: t.TempDir(), NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready in 10 s")
	}
	t.Cleanup(ns.Shutdown)
	nc, err := nats.Connect(ns.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	e := newEnvNATS(t, server.Options{}, testkit.Postgres(t), "99999", nc, js)

	get := func() (int, rest.Problem, time.Duration) {
		t0 := time.Now()
		resp, err := http.Get(e.url + "/api/v1/pipeline")
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var p rest.Problem
		b, _ := io.ReadAll(resp.Body)
		if resp.StatusCode != http.StatusOK {
			if err := json.Unmarshal(b, &p); err != nil {
				t.Fatalf("%d %s: %v", resp.StatusCode, b, err)
			}
		}
		return resp.StatusCode, p, time.Since(t0)
	}
	if code, p, _ := get(); code != http.StatusOK {
		t.Fatalf("NATS up: %d %+v, want 200", code, p)
	}
	ns.Shutdown()
	testkit.Eventually(t, 10*time.Second, func() bool { return !nc.IsConnected() }, "the client sees the server gone")
	for range 2 {
		code, p, took := get()
		if code != http.StatusServiceUnavailable || p.Type != rest.ProblemUnavailable || !strings.Contains(p.Detail, "NATS") || took > 5*time.Second {
			t.Errorf("NATS down: %d %+v in %s, want 503 %s naming NATS within 5 s", code, p, took, rest.ProblemUnavailable)
		}
	}
}
