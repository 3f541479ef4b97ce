package server_test

import (
	"context"
	"encoding/json"
	"net/netip"
	"testing"
	"time"

	"netwatch/schema"
)

// TestFlowHostScores: with the detector's HOST_SCORES bucket holding a
// model entry (1-minute windows) and the score of 10.0.0.66's window
// 12:01-12:02 on sensor s1 (written here in the detector's format,
// schema.HostScore under schema.HostScoreKey), a flow from 10.0.0.66
// starting at 12:01:30 carries that score as orig_host_score and no
// resp_host_score (no entry for its responder); a flow starting at 12:00:30
// (another window) carries neither; GET /api/v1/flows/{id} the same.
func TestFlowHostScores(t *testing.T) {
	e := newEnv(t)
	ctx := context.Background()
	kv, err := e.js.CreateKeyValue(ctx, schema.HostScoresConfig(1, 0))
	if err != nil {
		t.Fatal(err)
	}
	put := func(key string, v any) {
		b, _ := json.Marshal(v)
		if _, err := kv.Put(ctx, key, b); err != nil {
			t.Fatal(err)
		}
	}
	minute := time.Date(2024, 5, 1, 12, 1, 0, 0, time.UTC)
	put(schema.HostScoresModelKey, schema.HostScoresModel{Model: "host-iforest", Threshold: 0.64, Quantile: 0.99, WindowNs: int64(time.Minute)})
	put(schema.HostScoreKey("s1", netip.MustParseAddr("10.0.0.66"), minute.UnixNano()), map[string]any{
		"sensor": "s1", "addr": "10.0.0.66", "window_start_ns": minute.UnixNano(), "window_end_ns": minute.Add(time.Minute).UnixNano(),
		"score": 0.71, "anomalous": true, "counts": map[string]any{"flows": 254}})
	in, before := tid("in-window"), tid("before")
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
		VALUES ($1, 's1', convert_to('1:a', 'UTF8'), 6, '10.0.0.66', 40000, '192.0.2.10', 22, $2, $2, $2, 1, 60, 0, 1, 60, 0),
		($3, 's1', convert_to('1:b', 'UTF8'), 6, '10.0.0.66', 40001, '192.0.2.11', 22, $4, $4, $4, 1, 60, 0, 1, 60, 0)`,
		in, minute.Add(30*time.Second), before, minute.Add(-30*time.Second))
	var p flowsPage
	if code := e.get(t, "/api/v1/flows?from=2024-05-01T11:00:00Z&to=2024-05-01T13:00:00Z&addr=10.0.0.66", &p); code != 200 || len(p.Flows) != 2 {
		t.Fatalf("flows: %d %v", code, p.Flows)
	}
	for _, f := range p.Flows {
		check(t, f, f["id"] == in)
	}
	var f map[string]any
	if code := e.get(t, "/api/v1/flows/"+in, &f); code != 200 {
		t.Fatalf("flow %s: %d", in, code)
	}
	check(t, f, true)
}

func check(t *testing.T, f map[string]any, scored bool) {
	t.Helper()
	if r, ok := f["resp_host_score"]; ok {
		t.Errorf("flow %v: resp_host_score %v, want none", f["id"], r)
	}
	o, ok := f["orig_host_score"]
	if !scored {
		if ok {
			t.Errorf("flow %v (window 12:00): orig_host_score %v, want none", f["id"], o)
		}
		return
	}
	m, _ := o.(map[string]any)
	at := func(k string) time.Time {
		s, _ := m[k].(string)
		v, _ := time.Parse(time.RFC3339Nano, s)
		return v
	}
	if m == nil || m["score"] != 0.71 || m["anomalous"] != true || !at("window_start").Equal(time.Date(2024, 5, 1, 12, 1, 0, 0, time.UTC)) ||
		!at("window_end").Equal(time.Date(2024, 5, 1, 12, 2, 0, 0, time.UTC)) {
		t.Errorf("flow %v: orig_host_score %v, want score 0.71, anomalous, window 12:01-12:02", f["id"], o)
	}
}
