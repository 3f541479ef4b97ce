package server_test

import (
	"context"
	"encoding/json"
	"fmt"
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
// 504 "Database query timed out" four times in a row). The answers that
// only add NATS data to the database's — flows (host scores) and sensors
// (the registry) — answer at once from the database, the sensors with a
// registry_error (second QA: 30 s each, the registry silently missing).
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
	// A flow, a host-scores bucket with its model entry (so that flows are
	// annotated) and a registered sensor.
	kv, err := js.CreateKeyValue(ctx, schema.HostScoresConfig(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	model, _ := json.Marshal(schema.HostScoresModel{Model: "host-iforest", Threshold: 0.64, Quantile: 0.99, WindowNs: int64(time.Minute)})
	if _, err := kv.Put(ctx, schema.HostScoresModelKey, model); err != nil {
		t.Fatal(err)
	}
	reg, err := schema.ProvisionRegistry(ctx, js, schema.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Announce(ctx, reg, schema.SensorRecord{Name: "s9", Host: "h9", Version: "v9", Boot: "b"}); err != nil {
		t.Fatal(err)
	}
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
		VALUES ($1, 's1', convert_to('1:a', 'UTF8'), 6, '10.0.0.66', 40000, '192.0.2.10', 22, $2, $2, $2, 1, 60, 0, 1, 60, 0)`,
		tid("nats-down"), time.Date(2024, 5, 1, 12, 1, 30, 0, time.UTC))
	fetch := func(path string) (int, map[string]any, time.Duration) {
		t0 := time.Now()
		resp, err := http.Get(e.url + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		return resp.StatusCode, v, time.Since(t0)
	}
	const flowsPath = "/api/v1/flows?from=2024-05-01T11:00:00Z&to=2024-05-01T13:00:00Z"
	if code, v, _ := fetch("/api/v1/sensors"); code != 200 || len(v["sensors"].([]any)) != 1 || v["registry_error"] != nil {
		t.Fatalf("NATS up: sensors %d %v, want the registered s9 and no registry_error", code, v)
	}

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
	if code, v, took := fetch(flowsPath); code != 200 || len(v["flows"].([]any)) != 1 || took > 3*time.Second {
		t.Errorf("NATS down: flows %d %v in %s, want the flow within 3 s", code, v, took)
	}
	if code, v, took := fetch("/api/v1/sensors"); code != 200 || took > 3*time.Second ||
		!strings.Contains(fmt.Sprint(v["registry_error"]), "NATS") {
		t.Errorf("NATS down: sensors %d %v in %s, want an answer within 3 s with a registry_error naming NATS", code, v, took)
	}
}
