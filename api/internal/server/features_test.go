package server_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"

	"netwatch/api/internal/server"
)

// seedContext gives the seeded flows (seedFlows) their context fields:
// flow i has orig_country SE and resp_country US for even i, DE for odd i;
// resp_asn 64500+i; direction outbound for i < 3, else inbound.
func seedContext(t *testing.T, e *env) {
	for i := 0; i < 5; i++ {
		rc, dir := "US", "outbound"
		if i%2 == 1 {
			rc = "DE"
		}
		if i >= 3 {
			dir = "inbound"
		}
		e.exec(t, `UPDATE flows SET orig_country = 'SE', resp_country = $2, resp_asn = $3, resp_as_org = 'Org',
			direction = $4, ja3 = 'e7d705a3286e19ea42f587b344ee6865', http_user_agent = 'curl/8' WHERE id = $1`,
			tid(fmt.Sprintf("id%d", i)), rc, 64500+i, dir)
	}
}

func ids(p flowsPage) string {
	var out []string
	for _, f := range p.Flows {
		out = append(out, untid(f["id"].(string)))
	}
	return strings.Join(out, " ")
}

func TestFlowSearch(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	seedContext(t, e)
	for q, want := range map[string]string{
		"direction=inbound":       "id4 id3",
		"country=de":              "id3 id1",
		"country=SE":              "id4 id3 id2 id1 id0",
		"asn=AS64502":             "id2",
		"asn=64501":               "id1",
		"community_id=1:cid2":     "id2",
		"addr=192.0.2.0/30":       "id3 id2 id1 id0",
		"addr=10.0.0.2&proto=udp": "id3 id1",
		"port=4003":               "id3",
		"app=DNS":                 "id3 id1",
		"sensor=s2":               "id4 id3",
		"from=2024-05-01T12:01:00Z&to=2024-05-01T12:03:00Z": "id2 id1",
		"sort=bytes": "id0 id1 id2 id3 id4",
		"sort=-pkts": "id4 id3 id2 id1 id0",
		"sort=start": "id0 id1 id2 id3 id4",
	} {
		var p flowsPage
		if code := e.get(t, "/api/v1/flows?"+q, &p); code != 200 || ids(p) != want {
			t.Errorf("%s: %d [%s], want [%s]", q, code, ids(p), want)
		}
	}
	// Keyset pages of a bytes sort: 2 + 2 + 1, no repeats, and a cursor of
	// another sort is refused.
	var got []string
	q := "/api/v1/flows?sort=-bytes&limit=2"
	var cur string
	for i := 0; i < 4; i++ {
		var p flowsPage
		if code := e.get(t, q, &p); code != 200 {
			t.Fatalf("%s: %d", q, code)
		}
		got = append(got, ids(p))
		if p.Next == "" {
			break
		}
		cur = p.Next
		q = "/api/v1/flows?sort=-bytes&limit=2&cursor=" + url.QueryEscape(p.Next)
	}
	if strings.Join(got, "|") != "id4 id3|id2 id1|id0" {
		t.Errorf("pages %q", got)
	}
	if code := e.get(t, "/api/v1/flows?sort=start&cursor="+url.QueryEscape(cur), nil); code != 400 {
		t.Errorf("cursor of -bytes used with sort=start: %d", code)
	}
	// One flow by id, with its context.
	var f map[string]any
	if code := e.get(t, "/api/v1/flows/"+tid("id3"), &f); code != 200 || f["id"] != tid("id3") || f["resp_country"] != "DE" ||
		f["resp_asn"] != 64503.0 || f["orig_country"] != "SE" || f["ja3"] != "e7d705a3286e19ea42f587b344ee6865" ||
		f["http_user_agent"] != "curl/8" || f["direction"] != "inbound" || f["app_from_port"] != false {
		t.Errorf("flow id3: %v", f)
	}
}

// TestRollups: the statistics answered from the per-minute rollups equal
// hand counts of the seeded flows and the same statistics over a range that
// cuts minutes at both ends, holding the same flows: its first and last
// flow (12:00:00.123456, 12:04:00.123456) are then read from flows (the
// seconds at the ends), the rest from the rollups; a time series of such a
// range is computed from flows alone.
func TestRollups(t *testing.T) {
	e := newEnv(t)
	seedFlows(t, e)
	seedContext(t, e)
	e.rollup(t)
	const rollupRange = "from=2024-05-01T11:59:00Z&to=2024-05-01T12:10:00Z"
	const flowsRange = "from=2024-05-01T12:00:00.1Z&to=2024-05-01T12:04:00.2Z" // cuts minutes: the ends from flows
	type answer map[string]any
	for _, path := range []string{"/api/v1/top-talkers?limit=20", "/api/v1/top-talkers?side=src", "/api/v1/top-talkers?side=dst&by=pkts",
		"/api/v1/top-talkers?side=pair", "/api/v1/protocols?x=1", "/api/v1/ports?limit=50", "/api/v1/countries?x=1",
		"/api/v1/timeseries?step=1m", "/api/v1/timeseries?step=5m", "/api/v1/top-talkers?by=flows&sensor=s1"} {
		var r, f answer
		if code := e.get(t, path+"&"+rollupRange, &r); code != 200 || r["source"] != "rollup" {
			t.Fatalf("%s: %d, source %v", path, code, r["source"])
		}
		want, cut := "rollup", flowsRange
		if strings.Contains(path, "timeseries") {
			// The same buckets: a range that cuts its first minute.
			want, cut = "flows", "from=2024-05-01T11:59:59Z&to=2024-05-01T12:10:00Z"
		}
		if code := e.get(t, path+"&"+cut, &f); code != 200 || f["source"] != want {
			t.Fatalf("%s: %d, source %v, want %s", path, code, f["source"], want)
		}
		delete(r, "source")
		delete(f, "source")
		if strings.Contains(path, "timeseries") {
			delete(r, "from") // the flows range starts a second later; the buckets are the same
			delete(f, "from")
		}
		if !reflect.DeepEqual(r, f) {
			rb, _ := json.Marshal(r)
			fb, _ := json.Marshal(f)
			t.Errorf("%s: rollup %s\n flows %s", path, rb, fb)
		}
	}
	// Hand counts (seedFlows: flow i has 1100*(i+1) bytes, 3*(i+1) pkts).
	var ports struct {
		Ports []struct {
			Proto, Port        int
			Flows, Bytes, Pkts int64
		}
	}
	e.get(t, "/api/v1/ports?"+rollupRange, &ports)
	if fmt.Sprint(ports.Ports) != "[{6 80 3 9900 27} {17 53 2 6600 18}]" {
		t.Errorf("ports %v, want tcp/80 3 flows 9900 bytes 27 pkts, udp/53 2 6600 18", ports.Ports)
	}
	var cs struct {
		Countries []struct {
			Country   string
			Bytes     int64
			SentBytes int64 `json:"sent_bytes"`
			Flows     int64
		}
	}
	e.get(t, "/api/v1/countries?"+rollupRange, &cs)
	// SE is the originator of all 5: 16500 bytes in all, sent 100*(1+..+5) = 1500.
	// US: responder of flows 0, 2, 4 (9900, sent 1000*(1+3+5)); DE: of 1, 3 (6600, sent 6000).
	if fmt.Sprint(cs.Countries) != "[{SE 16500 1500 5} {US 9900 9000 3} {DE 6600 6000 2}]" {
		t.Errorf("countries %v", cs.Countries)
	}
	var pairs struct {
		Talkers []struct {
			Addr, Peer string
			Bytes      int64
		}
	}
	e.get(t, "/api/v1/top-talkers?side=pair&limit=2&"+rollupRange, &pairs)
	if fmt.Sprint(pairs.Talkers) != "[{10.0.0.1 192.0.2.4 5500} {10.0.0.2 192.0.2.3 4400}]" {
		t.Errorf("pairs %v", pairs.Talkers)
	}
	var src struct {
		Talkers []struct {
			Addr      string
			SentBytes int64 `json:"sent_bytes"`
		}
	}
	// By bytes sent: 192.0.2.4 sent 5000, 192.0.2.3 4000.
	e.get(t, "/api/v1/top-talkers?side=src&limit=2&"+rollupRange, &src)
	if fmt.Sprint(src.Talkers) != "[{192.0.2.4 5000} {192.0.2.3 4000}]" {
		t.Errorf("src talkers %v", src.Talkers)
	}
}

// TestAuth: with tokens, /api/ needs one (header or ?token=), alerts are
// changed only with an admin token, and the dashboard, docs and OpenAPI
// document stay public.
func TestAuth(t *testing.T) {
	const readTok, adminTok = "read-0123456789abcdef", "admin-0123456789abcdef"
	e := newEnvWith(t, server.Options{Tokens: []server.Token{{Name: "viewer", Secret: readTok},
		{Name: "alice", Secret: adminTok, Admin: true}}})
	e.exec(t, `INSERT INTO alerts (id, time, sensor, severity, category, summary) VALUES ('a1', $1, 's1', 'high', 'portscan', 'x')`, base)
	do := func(method, path, tok, body string) (int, map[string]any) {
		req, _ := http.NewRequest(method, e.url+path, strings.NewReader(body))
		if tok != "" {
			req.Header.Set("Authorization", "Bearer "+tok)
		}
		if body != "" {
			req.Header.Set("Content-Type", "application/json")
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		var m map[string]any
		_ = json.Unmarshal(b, &m)
		return resp.StatusCode, m
	}
	ack := `{"status":"acknowledged","note":"looking"}`
	for _, tc := range []struct {
		method, path, tok, body string
		code                    int
	}{
		{"GET", "/api/v1/alerts", "", "", 401},
		{"GET", "/api/v1/alerts", "wrong-0123456789abcdef", "", 401},
		{"GET", "/api/v1/alerts", readTok, "", 200},
		{"GET", "/api/v1/alerts?token=" + readTok, "", "", 401}, // ?token= is for WebSocket URLs only
		{"GET", "/api/v1/alerts", adminTok, "", 200},
		{"PATCH", "/api/v1/alerts/a1", "", ack, 401},
		{"PATCH", "/api/v1/alerts/a1", readTok, ack, 403},
		{"GET", "/api/v1/nope", "", "", 401},
		{"GET", "/", "", "", 200},
		{"GET", "/api/docs", "", "", 200},
		{"GET", "/api/openapi.json", "", "", 200},
		{"GET", "/healthz", "", "", 200},
	} {
		if code, body := do(tc.method, tc.path, tc.tok, tc.body); code != tc.code {
			t.Errorf("%s %s token %q: %d %v, want %d", tc.method, tc.path, tc.tok, code, body, tc.code)
		}
	}
	code, al := do("PATCH", "/api/v1/alerts/a1", adminTok, ack)
	if code != 200 || al["status"] != "acknowledged" || al["status_by"] != "alice" || al["status_note"] != "looking" || al["status_at"] == nil {
		t.Fatalf("acknowledge: %d %v", code, al)
	}
	code, al = do("PATCH", "/api/v1/alerts/a1", adminTok, `{"status":"closed","by":"bob"}`)
	if code != 200 || al["status"] != "closed" || al["status_by"] != "bob" {
		t.Fatalf("close: %d %v", code, al)
	}
	for q, n := range map[string]int{"status=closed": 1, "status=open": 0, "status=open,acknowledged": 0} {
		var p struct{ Alerts []any }
		if code, _ := do("GET", "/api/v1/alerts?"+q, readTok, ""); code != 200 {
			t.Fatalf("%s: %d", q, code)
		}
		req, _ := http.NewRequest("GET", e.url+"/api/v1/alerts?"+q, nil)
		req.Header.Set("Authorization", "Bearer "+readTok)
		resp, _ := http.DefaultClient.Do(req)
		json.NewDecoder(resp.Body).Decode(&p)
		resp.Body.Close()
		if len(p.Alerts) != n {
			t.Errorf("%s: %d alerts, want %d", q, len(p.Alerts), n)
		}
	}
	for _, body := range []string{`{"status":"done"}`, `{"status":"closed","extra":1}`, `not json`,
		`{"status":"closed"} {"status":"open"}`, `{"status":"closed"}]`, `{"status":"closed"} x`} {
		if code, _ := do("PATCH", "/api/v1/alerts/a1", adminTok, body); code != 400 {
			t.Errorf("PATCH %s: %d, want 400", body, code)
		}
	}
	if code, _ := do("PATCH", "/api/v1/alerts/nosuch", adminTok, ack); code != 404 {
		t.Errorf("PATCH unknown alert: %d", code)
	}
	if code, al := do("GET", "/api/v1/alerts/a1", readTok, ""); code != 200 || al["status"] != "closed" {
		t.Errorf("GET alert: %d %v", code, al)
	}
}

// TestOlderSchema: against a database the sink has migrated only up to
// 00003 (no flow context columns, no alert status, no rollups but flows_1m)
// the api still answers: context fields read as defaults, alerts are open,
// acknowledging is 503, statistics come from flows.
func TestOlderSchema(t *testing.T) {
	e := newEnvSchema(t, server.Options{}, "00003")
	seedFlows(t, e)
	e.exec(t, `INSERT INTO alerts (id, time, sensor, severity, category, summary) VALUES ('a1', $1, 's1', 'high', 'portscan', 'x')`, base)
	var f map[string]any
	if code := e.get(t, "/api/v1/flows/"+tid("id2"), &f); code != 200 || f["orig_country"] != "" || f["resp_asn"] != 0.0 || f["ja3"] != "" {
		t.Errorf("flow on the old schema: %d %v", code, f)
	}
	var p flowsPage
	if code := e.get(t, "/api/v1/flows?country=SE", &p); code != 200 || len(p.Flows) != 0 {
		t.Errorf("country filter without the column: %d %d flows", code, len(p.Flows))
	}
	var al struct{ Alerts []map[string]any }
	if code := e.get(t, "/api/v1/alerts?status=open", &al); code != 200 || len(al.Alerts) != 1 || al.Alerts[0]["status"] != "open" {
		t.Errorf("alerts on the old schema: %d %v", code, al)
	}
	req, _ := http.NewRequest("PATCH", e.url+"/api/v1/alerts/a1", strings.NewReader(`{"status":"closed"}`))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 503 {
		t.Errorf("PATCH without a status column: %d, want 503", resp.StatusCode)
	}
	var tt struct {
		Talkers []struct {
			Addr  string
			Bytes int64
		}
		Source string
	}
	if code := e.get(t, "/api/v1/top-talkers?limit=1", &tt); code != 200 || tt.Source != "flows" || len(tt.Talkers) != 1 ||
		tt.Talkers[0].Addr != "10.0.0.1" || tt.Talkers[0].Bytes != 9900 {
		t.Errorf("top talkers without talkers_1m: %d %+v", code, tt)
	}
	var c struct {
		Countries []struct {
			Country string
			Bytes   int64
		}
	}
	if code := e.get(t, "/api/v1/countries", &c); code != 200 || len(c.Countries) != 1 || c.Countries[0].Country != "" ||
		c.Countries[0].Bytes != 16500 { // both ends unknown: one country, each flow once (16,500 bytes in all)
		t.Errorf("countries without the column: %d %+v", code, c)
	}
}
