package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"netwatch/schema"
)

var base = time.Date(2024, 5, 1, 12, 0, 0, 123456000, time.UTC)

// seedFlows inserts 5 flows, one a minute from base: flow i has orig
// 10.0.0.(1 + i%2):4000+i, resp 192.0.2.i:80 (tcp) for even i or :53 (udp)
// for odd i, sensor s1 for i < 3 else s2, orig_pkts i+1, orig_ip_bytes
// 100*(i+1), resp_pkts 2*(i+1), resp_ip_bytes 1000*(i+1).
func seedFlows(t *testing.T, e *env) {
	for i := 0; i < 5; i++ {
		proto, port, app := 6, 80, "http"
		if i%2 == 1 {
			proto, port, app = 17, 53, "dns"
		}
		sensor := "s1"
		if i >= 3 {
			sensor = "s2"
		}
		start := base.Add(time.Duration(i) * time.Minute)
		e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
			start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
			app, conn_state, history, end_reason, final, record_index)
			VALUES ($1, $2, $3, $4, $5::inet, $6, $7::inet, $8, $9, $10, $9, $11, $12, $13, $14, $15, $16, $17, 'SF', 'ShADadFf', 'fin', true, 0)`,
			tid(fmt.Sprintf("id%d", i)), sensor, []byte(fmt.Sprintf("1:cid%d", i)), proto, fmt.Sprintf("10.0.0.%d", 1+i%2), 4000+i,
			fmt.Sprintf("192.0.2.%d", i), port, start, start.Add(1500*time.Millisecond),
			i+1, 100*(i+1), 50*(i+1), 2*(i+1), 1000*(i+1), 900*(i+1), app)
	}
}

type flowsPage struct {
	Flows []map[string]any `json:"flows"`
	Next  string           `json:"next"`
}

func TestFlows(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)

	var p flowsPage
	if code := e.get(t, "/api/v1/flows", &p); code != 200 {
		t.Fatalf("status %d", code)
	}
	if len(p.Flows) != 5 || p.Next != "" {
		t.Fatalf("got %d flows, next %q; want 5 and no next", len(p.Flows), p.Next)
	}
	// Newest first: flow 4.
	f := p.Flows[0]
	f["id"] = untid(f["id"].(string))
	want := map[string]any{"id": "id4", "community_id": "1:cid4", "sensor": "s2", "proto": 6.0,
		"orig_addr": "10.0.0.1", "orig_port": 4004.0, "resp_addr": "192.0.2.4", "resp_port": 80.0,
		"orig_pkts": 5.0, "orig_ip_bytes": 500.0, "orig_bytes": 250.0, "resp_pkts": 10.0, "resp_ip_bytes": 5000.0,
		"resp_bytes": 4500.0, "start": "2024-05-01T12:04:00.123456000Z", "end": "2024-05-01T12:04:01.623456000Z",
		"duration": 1.5, "app": "http", "conn_state": "SF", "history": "ShADadFf", "end_reason": "fin",
		"final": true, "record_index": 0.0, "vlan": 0.0, "icmp_type": 0.0, "icmp_code": 0.0}
	for k, v := range want {
		if f[k] != v {
			t.Errorf("flow[%q] = %#v, want %#v", k, f[k], v)
		}
	}

	filters := []struct {
		query string
		ids   []string
	}{
		{"sensor=s1", []string{"id2", "id1", "id0"}},
		{"addr=10.0.0.2", []string{"id3", "id1"}},
		{"addr=192.0.2.3", []string{"id3"}},
		{"addr=192.0.2.0/30", []string{"id3", "id2", "id1", "id0"}},
		{"port=53", []string{"id3", "id1"}},
		{"port=4002", []string{"id2"}},
		{"proto=udp", []string{"id3", "id1"}},
		{"proto=6", []string{"id4", "id2", "id0"}},
		{"community_id=1:cid2", []string{"id2"}},
		{"from=" + url.QueryEscape(base.Add(time.Minute).Format(time.RFC3339Nano)) +
			"&to=" + url.QueryEscape(base.Add(3*time.Minute).Format(time.RFC3339Nano)), []string{"id2", "id1"}},
		{"from=2024-05-01T12:03:00Z", []string{"id4", "id3"}},
		{"to=2024-05-01T12:00:00Z", nil},
		{"sensor=s2&proto=udp", []string{"id3"}},
	}
	for _, tc := range filters {
		var p flowsPage
		if code := e.get(t, "/api/v1/flows?"+tc.query, &p); code != 200 {
			t.Errorf("%s: status %d", tc.query, code)
			continue
		}
		var got []string
		for _, f := range p.Flows {
			got = append(got, untid(f["id"].(string)))
		}
		if fmt.Sprint(got) != fmt.Sprint(tc.ids) {
			t.Errorf("%s: ids %v, want %v", tc.query, got, tc.ids)
		}
	}
}

func TestFlowsPagination(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	seen := map[string]bool{}
	var order []string
	pages := 0
	q := "/api/v1/flows?limit=2"
	for {
		var p flowsPage
		if code := e.get(t, q, &p); code != 200 {
			t.Fatalf("%s: status %d", q, code)
		}
		pages++
		for _, f := range p.Flows {
			id := untid(f["id"].(string))
			if seen[id] {
				t.Fatalf("page %d repeats %s", pages, id)
			}
			seen[id] = true
			order = append(order, id)
		}
		if p.Next == "" {
			break
		}
		if pages > 5 {
			t.Fatal("too many pages")
		}
		q = "/api/v1/flows?limit=2&cursor=" + url.QueryEscape(p.Next)
	}
	if pages != 3 || fmt.Sprint(order) != "[id4 id3 id2 id1 id0]" {
		t.Fatalf("%d pages, order %v; want 3 pages of id4..id0", pages, order)
	}
}

// TestBadRequests: every client mistake is a 4xx RFC 9457 problem
// (application/problem+json with type, title, status and a detail naming
// what was wrong), never a 500.
func TestBadRequests(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	for _, tc := range []struct {
		method, path string
		code         int
		detail       string // a substring of the detail
	}{
		{"GET", "/api/v1/flows?limit=1001", 400, "limit"},
		{"GET", "/api/v1/flows?sensor=s1;limit=1", 400, "query string"}, // Go's parser would drop the pair
		{"GET", "/api/v1/flows?addr=%ZZ", 400, "query string"},
		{"GET", "/api/v1/flows?sensor=a&sensor=b", 400, "given 2 times"},
		{"GET", "/api/v1/flows?limit=5&limit=2000", 400, "given 2 times"},
		{"GET", "/api/v1/flows?limit=0", 400, "limit"},
		{"GET", "/api/v1/flows?limit=x", 400, "limit"},
		{"GET", "/api/v1/flows?sensor=%00", 400, "NUL"}, // PostgreSQL text cannot hold it: was a 500
		{"GET", "/api/v1/live?sensor=%00", 400, "NUL"},  // before the WebSocket handshake, not after
		{"GET", "/api/v1/flows?app=%ff", 400, "UTF-8"},
		{"GET", "/api/v1/flows?community_id=%00", 400, "NUL"},
		{"GET", "/api/v1/alerts?category=%00", 400, "NUL"},
		{"GET", "/api/v1/top-talkers?sensor=%ff", 400, "UTF-8"},
		{"GET", "/api/v1/countries?sensor=%00", 400, "NUL"},
		{"GET", "/api/v1/metrics/hosts?sensor=%00", 400, "NUL"},
		{"GET", "/api/v1/timeseries?from=2300-01-01T00:00:00Z&to=2300-01-01T01:00:00Z", 400, "outside"}, // was a panic
		{"GET", "/api/v1/timeseries?to=2300-01-01T00:00:00Z", 400, "outside"},
		{"GET", "/api/v1/flows?from=0001-01-01T00:00:00Z&to=0001-01-01T00:10:00Z", 400, "outside"},
		{"GET", "/api/v1/flows?from=yesterday", 400, "from"},
		{"GET", "/api/v1/flows?to=2024-13-01T00:00:00Z", 400, "to"},
		{"GET", "/api/v1/flows?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z", 400, "from must be before to"},
		{"GET", "/api/v1/metrics/hosts?from=2024-05-02T00:00:00Z&to=2024-05-01T00:00:00Z", 400, "from must be before to"},
		{"GET", "/api/v1/flows?port=70000", 400, "port"},
		{"GET", "/api/v1/flows?port=-1", 400, "port"},
		{"GET", "/api/v1/flows?proto=bogus", 400, "proto"},
		{"GET", "/api/v1/flows?addr=10.0.0.300", 400, "addr"},
		{"GET", "/api/v1/flows?addr=10.0.0.0/33", 400, "addr"},
		{"GET", "/api/v1/flows?addr=2001:db8::/129", 400, "addr"},
		{"GET", "/api/v1/flows?cursor=notacursor", 400, "cursor"},
		{"GET", "/api/v1/flows?sort=colour", 400, "sort"},
		{"GET", "/api/v1/flows?direction=sideways", 400, "direction"},
		{"GET", "/api/v1/flows?country=SWE", 400, "country"},
		{"GET", "/api/v1/flows?asn=ASx", 400, "asn"},
		{"GET", "/api/v1/flows?asn=4294967296", 400, "asn"},
		{"GET", "/api/v1/flows/not%20an%20id", 400, "id"},
		{"GET", "/api/v1/flows/ffffffffffffffffffffffffffffffff", 404, "no flow"},
		{"GET", "/api/v1/alerts?severity=extreme", 400, "severity"},
		{"GET", "/api/v1/alerts?status=done", 400, "status"},
		{"GET", "/api/v1/alerts?limit=1001", 400, "limit"},
		{"GET", "/api/v1/alerts?from=x", 400, "from"},
		{"GET", "/api/v1/alerts/ffff", 404, "no alert"},
		{"GET", "/api/v1/top-talkers?by=colour", 400, "by"},
		{"GET", "/api/v1/top-talkers?side=left", 400, "side"},
		{"GET", "/api/v1/top-talkers?limit=0", 400, "limit"},
		{"GET", "/api/v1/ports?limit=100000", 400, "limit"},
		{"GET", "/api/v1/countries?from=2024", 400, "from"},
		{"GET", "/api/v1/protocols?addr=x", 400, "addr"},
		{"GET", "/api/v1/timeseries?step=1ms", 400, "step"},
		{"GET", "/api/v1/timeseries?step=1s&from=2000-01-01T00:00:00Z&to=2024-01-01T00:00:00Z", 400, "too many buckets"},
		{"GET", "/api/v1/metrics/hosts?limit=5000", 400, "limit"},
		{"GET", "/api/v1/metrics/hosts?step=500ms", 400, "step"},
		{"GET", "/api/v1/live?types=bogus", 400, "types"},
		{"GET", "/api/v1/live?from=2024-05-01T00:00:00Z&types=alert", 400, "flows only"}, // was ignored: flows were sent
		{"GET", "/api/v1/live", 400, "WebSocket"},
		{"GET", "/api/v1/replay", 400, "from"},
		{"GET", "/api/v1/replay?from=2024-05-01T00:00:00Z&speed=-2", 400, "speed"},
		{"GET", "/api/v1/replay?from=2024-05-01T00:00:00Z&speed=NaN", 400, "speed"},
		{"GET", "/api/v1/replay?from=2024-05-01T00:00:00Z&speed=1e-300", 400, "speed"},
		{"GET", "/api/v1/replay?from=2024-05-01T00:00:00Z&speed=%2BInf", 400, "speed"},
		{"GET", "/api/v1/live?from=2024-05-01T00:00:00Z&speed=NaN", 400, "speed"},
		{"GET", "/api/v1/live?from=2024-05-01T00:00:00Z&speed=1e-300", 400, "speed"},
		{"GET", "/api/v1/nope", 404, "no such endpoint"},
		{"GET", "/api/v2/flows", 404, "no such endpoint"},
		{"POST", "/api/v1/flows", 405, "GET"},
		{"DELETE", "/api/v1/alerts/a1", 405, "PATCH"},
		{"PATCH", "/api/v1/alerts/ffff", 400, "body"},
		{"PUT", "/api/v1/sensors", 405, "GET"},
	} {
		req, _ := http.NewRequest(tc.method, e.url+tc.path, nil)
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var p struct {
			Type, Title, Detail, Instance string
			Status                        int
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		err = json.Unmarshal(b, &p)
		name := tc.method + " " + tc.path
		if resp.StatusCode != tc.code || err != nil || p.Status != tc.code || p.Type == "" || p.Title == "" ||
			!strings.Contains(p.Detail, tc.detail) {
			t.Errorf("%s: %d %s; want %d with a detail containing %q", name, resp.StatusCode, b, tc.code, tc.detail)
			continue
		}
		if ct := resp.Header.Get("Content-Type"); ct != "application/problem+json" {
			t.Errorf("%s: Content-Type %q", name, ct)
		}
		// Every problem names the request path it occurred on (README;
		// the WebSocket endpoints' and the query-string check's had none).
		if path, _, _ := strings.Cut(tc.path, "?"); p.Instance != path {
			t.Errorf("%s: instance %q, want %q", name, p.Instance, path)
		}
		if tc.code == 405 && !strings.Contains(resp.Header.Get("Allow"), tc.detail) {
			t.Errorf("%s: Allow %q", name, resp.Header.Get("Allow"))
		}
	}
}

func TestAlerts(t *testing.T) {
	e := newEnv(t)
	sev := []string{"info", "low", "medium", "high", "critical"}
	for i := 0; i < 5; i++ {
		var orig any = fmt.Sprintf("10.0.0.%d", i)
		if i == 4 {
			orig = nil
		}
		e.exec(t, `INSERT INTO alerts (id, time, sensor, severity, category, technique, orig_addr, resp_addr, summary,
			evidence, rule, score, window_start, window_end)
			VALUES ($1, $2, $3, $4, $5, 'T1046', $6::inet, '192.0.2.1', $7, $8, 'portscan', 0.5, $2, $9)`,
			fmt.Sprintf("a%d", i), base.Add(time.Duration(i)*time.Second), "s1", sev[i],
			map[bool]string{true: "portscan", false: "syn_flood"}[i%2 == 0], orig, fmt.Sprintf("alert %d", i),
			fmt.Sprintf(`{"ports": %d}`, 10*i), base.Add(time.Duration(i)*time.Second+time.Minute))
	}
	var p struct {
		Alerts []map[string]any `json:"alerts"`
		Next   string           `json:"next"`
	}
	if code := e.get(t, "/api/v1/alerts", &p); code != 200 || len(p.Alerts) != 5 {
		t.Fatalf("status %d, %d alerts", code, len(p.Alerts))
	}
	a4, a3 := p.Alerts[0], p.Alerts[1]
	if _, ok := a4["orig_addr"]; ok {
		t.Errorf("alert with NULL orig_addr has orig_addr %v", a4["orig_addr"])
	}
	want := map[string]any{"id": "a3", "time": "2024-05-01T12:00:03.123456000Z", "sensor": "s1", "severity": "high",
		"category": "syn_flood", "technique": "T1046", "orig_addr": "10.0.0.3", "resp_addr": "192.0.2.1",
		"summary": "alert 3", "rule": "portscan", "score": 0.5}
	for k, v := range want {
		if a3[k] != v {
			t.Errorf("alert[%q] = %#v, want %#v", k, a3[k], v)
		}
	}
	if ev, ok := a3["evidence"].(map[string]any); !ok || ev["ports"] != 30.0 {
		t.Errorf("evidence = %#v, want {ports: 30}", a3["evidence"])
	}
	for q, n := range map[string]int{"severity=high": 2, "severity=info": 5, "category=portscan": 3,
		"addr=10.0.0.2": 1, "addr=192.0.2.1": 5, "sensor=s2": 0, "from=2024-05-01T12:00:02Z": 3} {
		p.Alerts = nil
		if code := e.get(t, "/api/v1/alerts?"+q, &p); code != 200 || len(p.Alerts) != n {
			t.Errorf("%s: status %d, %d alerts, want %d", q, code, len(p.Alerts), n)
		}
	}
	// Pagination: 2 + 2 + 1.
	var ids []string
	q := "/api/v1/alerts?limit=2"
	for i := 0; i < 4; i++ {
		p.Next, p.Alerts = "", nil
		e.get(t, q, &p)
		for _, a := range p.Alerts {
			ids = append(ids, a["id"].(string))
		}
		if p.Next == "" {
			break
		}
		q = "/api/v1/alerts?limit=2&cursor=" + url.QueryEscape(p.Next)
	}
	if fmt.Sprint(ids) != "[a4 a3 a2 a1 a0]" {
		t.Errorf("paged ids %v", ids)
	}
}

func TestSensorsAndHostMetrics(t *testing.T) {
	e := newEnv(t)
	// s1's newest flow ended at base and was stored 7.5 s later (the sink
	// keeps that in sensors.last_flow_at since its migration 00011): lag 7.5 s.
	e.exec(t, `INSERT INTO sensors (sensor, host, last_flow, last_flow_at) VALUES ('s1', 'h1', $1, $1::timestamptz + interval '7.5 seconds'),
		('s2', 'h2', NULL, NULL)`, base)
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port, start, "end",
		flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes)
		VALUES ($4, 's1', '', 6, '10.0.0.1', 1, '10.0.0.2', 2, $1, $1, $1, 1, 1, 0, 0, 0, 0),
		($5, 's1', '', 6, '10.0.0.1', 1, '10.0.0.2', 2, $2, $3, $2, 1, 1, 0, 0, 0, 0)`,
		base.Add(-time.Hour), base.Add(-2*time.Second), base, tid("old"), tid("new"))
	for i := 0; i < 3; i++ {
		e.exec(t, `INSERT INTO host_metrics (sensor, boot, seq, time, host, cpu_percent, mem_total_bytes, mem_used_bytes,
			load1, uptime_s, disks, interfaces, captures) VALUES ('s1', 'b', $1, $2, 'h1', $3, 8000, $4, 0.5, 60,
			'[{"mount":"/","total_bytes":100,"used_bytes":40}]', '[{"name":"eth0","rx_bytes":7}]',
			$5::jsonb)`,
			i, base.Add(time.Duration(i)*time.Second), 10.0*float64(i+1), 1000*(i+1),
			fmt.Sprintf(`[{"source":"eth0","received":100,"dropped":%d,"if_dropped":3},{"source":"eth1","received":5,"buffer_dropped":4}]`, i))
	}
	var s struct {
		Sensors []struct {
			Sensor     string         `json:"sensor"`
			Host       string         `json:"host"`
			LastFlow   *string        `json:"last_flow"`
			Metrics    map[string]any `json:"metrics"`
			Online     bool           `json:"online"`
			Received   uint64         `json:"received"`
			Dropped    uint64         `json:"dropped"`
			Interfaces []string       `json:"interfaces"`
			LagSeconds *float64       `json:"lag_seconds"`
		} `json:"sensors"`
	}
	if code := e.get(t, "/api/v1/sensors", &s); code != 200 || len(s.Sensors) != 2 {
		t.Fatalf("status %d, sensors %+v", code, s.Sensors)
	}
	s1, s2 := s.Sensors[0], s.Sensors[1]
	if s1.Sensor != "s1" || s1.Host != "h1" || s1.LastFlow == nil || *s1.LastFlow != "2024-05-01T12:00:00.123456000Z" {
		t.Errorf("s1 = %+v", s1)
	}
	m := s1.Metrics
	if m == nil || m["seq"] != 2.0 || m["cpu_percent"] != 30.0 || m["mem_used_bytes"] != 3000.0 {
		t.Fatalf("s1 metrics = %v, want the latest sample (seq 2)", m)
	}
	if c := m["captures"].([]any)[0].(map[string]any); c["dropped"] != 2.0 || c["source"] != "eth0" {
		t.Errorf("captures = %v", m["captures"])
	}
	if d := m["disks"].([]any)[0].(map[string]any); d["used_bytes"] != 40.0 {
		t.Errorf("disks = %v", m["disks"])
	}
	// The latest sample (seq 2): eth0 100 received, 2 + 3 dropped; eth1 5 received, 4 dropped in the agent.
	if s1.LagSeconds == nil || *s1.LagSeconds != 7.5 || s2.LagSeconds != nil {
		t.Errorf("lag: s1 %v (want 7.5), s2 %v (want absent)", s1.LagSeconds, s2.LagSeconds)
	}
	if !s1.Online || s1.Received != 105 || s1.Dropped != 9 || fmt.Sprint(s1.Interfaces) != "[eth0]" {
		t.Errorf("s1 summary: online %v received %d dropped %d interfaces %v", s1.Online, s1.Received, s1.Dropped, s1.Interfaces)
	}
	e.exec(t, `UPDATE sensors SET last_seen = now() - interval '2 minutes' WHERE sensor = 's2'`)
	e.get(t, "/api/v1/sensors", &s)
	if s.Sensors[1].Online {
		t.Errorf("s2 last seen 2 minutes ago is online")
	}

	// The SENSORS registry adds the agent's version and capture interfaces,
	// and sensors that stored nothing yet.
	ctx := context.Background()
	kv, err := schema.ProvisionRegistry(ctx, e.js, schema.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range []schema.SensorRecord{{Name: "s1", Host: "h1", Version: "v1.2.3", Interfaces: []string{"eth1"}, Boot: "b"},
		{Name: "s3", Host: "h3", Version: "v9", Interfaces: []string{"/tmp/x.pcap"}, Boot: "c"}} {
		if _, err := schema.Announce(ctx, kv, rec); err != nil {
			t.Fatal(err)
		}
	}
	var reg struct {
		Sensors []struct {
			Sensor            string   `json:"sensor"`
			Version           string   `json:"version"`
			CaptureInterfaces []string `json:"capture_interfaces"`
			Online            bool     `json:"online"`
			Heartbeat         *string  `json:"heartbeat"`
			FirstSeen         string   `json:"first_seen"`
			LastSeen          string   `json:"last_seen"`
		} `json:"sensors"`
	}
	before := time.Now().Add(-time.Second)
	e.get(t, "/api/v1/sensors", &reg)
	// s3 stored nothing: its first and last seen are its heartbeat (it
	// announced no start), not Go's zero time.
	if len(reg.Sensors) == 3 {
		s3 := reg.Sensors[2]
		first, err1 := time.Parse(time.RFC3339Nano, s3.FirstSeen)
		last, err2 := time.Parse(time.RFC3339Nano, s3.LastSeen)
		if err1 != nil || err2 != nil || first.Before(before) || last.Before(before) || s3.Heartbeat == nil || *s3.Heartbeat != s3.LastSeen {
			t.Errorf("registry-only sensor s3: first_seen %q last_seen %q heartbeat %v, want its heartbeat (after %s)",
				s3.FirstSeen, s3.LastSeen, s3.Heartbeat, before.UTC().Format(time.RFC3339Nano))
		}
	}
	if got := fmt.Sprint(reg.Sensors); len(reg.Sensors) != 3 || reg.Sensors[0].Version != "v1.2.3" ||
		fmt.Sprint(reg.Sensors[0].CaptureInterfaces) != "[eth1]" || !reg.Sensors[0].Online || reg.Sensors[0].Heartbeat == nil ||
		reg.Sensors[1].Version != "" || reg.Sensors[1].Online || reg.Sensors[2].Sensor != "s3" || !reg.Sensors[2].Online {
		t.Errorf("sensors with the registry: %s", got)
	}
	if s2.Sensor != "s2" || s2.Metrics != nil || s2.LastFlow != nil {
		t.Errorf("s2 = %+v, want no metrics, no last_flow", s2)
	}
	var hm struct {
		Metrics []map[string]any `json:"metrics"`
	}
	if code := e.get(t, "/api/v1/metrics/hosts?sensor=s1&limit=2", &hm); code != 200 || len(hm.Metrics) != 2 ||
		hm.Metrics[0]["seq"] != 2.0 || hm.Metrics[1]["seq"] != 1.0 {
		t.Errorf("host metrics: %d %v", code, hm.Metrics)
	}
	// step: one sample per sensor and step, its newest. Samples at 12:00:00.123,
	// :01.123 and :02.123 (seq 0, 1, 2): 2 s bins [12:00:00, :02) and [:02, :04)
	// keep seq 1 and seq 2; a 1 h bin keeps seq 2.
	for _, tc := range []struct {
		step string
		want []float64
	}{{"2s", []float64{2, 1}}, {"1h", []float64{2}}} {
		hm.Metrics = nil
		code := e.get(t, "/api/v1/metrics/hosts?sensor=s1&step="+tc.step, &hm)
		var got []float64
		for _, m := range hm.Metrics {
			got = append(got, m["seq"].(float64))
		}
		if code != 200 || fmt.Sprint(got) != fmt.Sprint(tc.want) {
			t.Errorf("host metrics step=%s: %d seq %v, want %v", tc.step, code, got, tc.want)
		}
	}
}

func TestAggregates(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	e.rollup(t)
	var tt struct {
		Talkers []struct {
			Addr  string `json:"addr"`
			Bytes int64  `json:"bytes"`
			Pkts  int64  `json:"pkts"`
			Flows int64  `json:"flows"`
		} `json:"talkers"`
	}
	if code := e.get(t, "/api/v1/top-talkers?limit=2", &tt); code != 200 || len(tt.Talkers) != 2 {
		t.Fatalf("top talkers %d %+v", code, tt)
	}
	// 10.0.0.1 is orig of flows 0, 2, 4: bytes 1100*(1+3+5), pkts 3*(1+3+5).
	if g := tt.Talkers[0]; g.Addr != "10.0.0.1" || g.Bytes != 9900 || g.Pkts != 27 || g.Flows != 3 {
		t.Errorf("top talker %+v, want 10.0.0.1 9900 bytes 27 pkts 3 flows", g)
	}
	if g := tt.Talkers[1]; g.Addr != "10.0.0.2" || g.Bytes != 6600 {
		t.Errorf("second talker %+v, want 10.0.0.2 6600 bytes", g)
	}
	var pr struct {
		Protocols []struct {
			Proto int    `json:"proto"`
			Name  string `json:"name"`
			App   string `json:"app"`
			Flows int64  `json:"flows"`
			Bytes int64  `json:"bytes"`
		} `json:"protocols"`
	}
	if code := e.get(t, "/api/v1/protocols", &pr); code != 200 || len(pr.Protocols) != 2 {
		t.Fatalf("protocols %d %+v", code, pr)
	}
	if p := pr.Protocols[0]; p.Name != "tcp" || p.App != "http" || p.Flows != 3 || p.Bytes != 9900 {
		t.Errorf("protocols[0] = %+v", p)
	}
	var ts struct {
		Step   float64 `json:"step_seconds"`
		Points []struct {
			Time  string  `json:"time"`
			Pkts  int64   `json:"pkts"`
			Bytes int64   `json:"bytes"`
			BPS   float64 `json:"bps"`
		} `json:"points"`
	}
	q := "/api/v1/timeseries?step=1m&from=2024-05-01T12:00:00Z&to=2024-05-01T12:05:00Z"
	if code := e.get(t, q, &ts); code != 200 || len(ts.Points) != 5 || ts.Step != 60 {
		t.Fatalf("timeseries %d %+v", code, ts)
	}
	for i, p := range ts.Points {
		wantBytes := int64(1100 * (i + 1))
		if p.Bytes != wantBytes || p.Pkts != int64(3*(i+1)) || p.BPS != float64(wantBytes*8)/60 {
			t.Errorf("point %d = %+v, want %d bytes", i, p, wantBytes)
		}
	}
	if ts.Points[0].Time != "2024-05-01T12:00:00.000000000Z" {
		t.Errorf("first bucket %s", ts.Points[0].Time)
	}
	ts.Points = nil
	if code := e.get(t, "/api/v1/timeseries", &ts); code != 200 || len(ts.Points) != 60 {
		t.Fatalf("default timeseries: %d, %d points", code, len(ts.Points))
	}
	var sum int64
	for _, p := range ts.Points {
		sum += p.Bytes
	}
	if sum != 1100*15 {
		t.Errorf("default range holds %d bytes, want %d", sum, 1100*15)
	}
}

func TestOpenAPIAndDashboard(t *testing.T) {
	e := newEnv(t)
	var doc struct {
		OpenAPI string         `json:"openapi"`
		Paths   map[string]any `json:"paths"`
	}
	if code := e.get(t, "/api/v1/openapi.json", &doc); code != 200 || doc.OpenAPI == "" {
		t.Fatalf("openapi %d %q", code, doc.OpenAPI)
	}
	for _, p := range []string{"/api/v1/flows", "/api/v1/alerts", "/api/v1/sensors", "/api/v1/pipeline", "/api/v1/live"} {
		if doc.Paths[p] == nil {
			t.Errorf("openapi lacks %s", p)
		}
	}
	for _, p := range []string{"/", "/api/docs", "/healthz", "/readyz", "/metrics"} {
		if code := e.get(t, p, nil); code != 200 {
			t.Errorf("GET %s: %d", p, code)
		}
	}
	e.get(t, "/api/v1/flows?limit=1001", nil)
	metrics, err := httpGet(e.url + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		`netwatch_api_requests_total{code="200",route="GET /api/v1/openapi.json"} 1`,
		`netwatch_api_requests_total{code="400",route="GET /api/v1/flows"} 1`,
		`netwatch_api_request_duration_seconds_count{route="GET /api/docs"} 1`,
		`netwatch_api_ws_clients 0`,
		`netwatch_api_ws_dropped_messages_total 0`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
