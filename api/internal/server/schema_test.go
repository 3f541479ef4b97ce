package server_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers"
	"github.com/getkin/kin-openapi/routers/legacy"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
	"netwatch/testkit/e2e"
)

// openAPIDoc loads ../rest/openapi.json with kin-openapi (string formats
// ipv4 and ipv6 checked, not only date-time) and validates the document
// itself: its structure, references and every example against its schema.
func openAPIDoc(t *testing.T) *openapi3.T {
	t.Helper()
	openapi3.DefineIPv4Format()
	openapi3.DefineIPv6Format()
	doc, err := openapi3.NewLoader().LoadFromFile("../rest/openapi.json")
	if err != nil {
		t.Fatalf("load openapi.json: %v", err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		// Not fatal: the answers are still checked against its schemas.
		t.Errorf("openapi.json is not a valid OpenAPI 3 document: %.3000v", err)
	}
	// OpenAPI 3.0.3 (Schema Object, nullable): "nullable" has effect only
	// beside a "type" in the same schema; kin-openapi accepts it alone, but
	// strict validators (ajv) reject null there or refuse the schema
	// (independent QA, seventh session: a sensor's metrics).
	raw, err := os.ReadFile("../rest/openapi.json")
	if err != nil {
		t.Fatal(err)
	}
	var tree any
	if err := json.Unmarshal(raw, &tree); err != nil {
		t.Fatal(err)
	}
	var walk func(n any, path string)
	walk = func(n any, path string) {
		switch v := n.(type) {
		case map[string]any:
			if v["nullable"] == true && v["type"] == nil {
				t.Errorf("openapi.json %s: nullable without a type (has no effect in OpenAPI 3.0.3)", path)
			}
			for k, c := range v {
				walk(c, path+"/"+k)
			}
		case []any:
			for i, c := range v {
				walk(c, fmt.Sprintf("%s/%d", path, i))
			}
		}
	}
	walk(tree, "#")
	return doc
}

// schemaChecker sends requests to an api and validates each answer against
// the OpenAPI document: the operation must document the status code, the
// Content-Type, and the body must match that response's schema (strict
// objects: a field the api writes that the document lacks is an error).
type schemaChecker struct {
	doc    *openapi3.T
	router routers.Router
	base   string          // http://host:port of the api
	ok     map[string]bool // "GET /api/v1/flows" -> answered 200 and validated
}

func newSchemaChecker(t *testing.T, base string) *schemaChecker {
	doc := openAPIDoc(t)
	// The document was validated (openAPIDoc); its examples need not be
	// valid for the router, so that the answers are checked even then.
	r, err := legacy.NewRouter(doc, openapi3.DisableExamplesValidation())
	if err != nil {
		t.Fatal(err)
	}
	return &schemaChecker{doc: doc, router: r, base: base, ok: map[string]bool{}}
}

// call sends method path (with a JSON body when body is not "") and
// validates the answer, which must have status want. validRequest says
// whether the request itself must match the document (false for the
// requests that test a 400). It returns the decoded JSON body (nil for a
// body that is not JSON).
func (c *schemaChecker) call(t *testing.T, method, path, body string, want int, validRequest bool) any {
	t.Helper()
	var rd io.Reader
	if body != "" {
		rd = strings.NewReader(body)
	}
	req, err := http.NewRequest(method, c.base+path, rd)
	if err != nil {
		t.Fatal(err)
	}
	if body != "" {
		req.Header.Set("Content-Type", "application/json")
	}
	route, pathParams, err := c.router.FindRoute(req)
	if err != nil {
		t.Errorf("%s %s: not in the document: %v", method, path, err)
		return nil
	}
	ctx := context.Background()
	in := &openapi3filter.RequestValidationInput{Request: req, PathParams: pathParams, Route: route,
		Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc, MultiError: true}}
	if validRequest {
		if err := openapi3filter.ValidateRequest(ctx, in); err != nil {
			t.Errorf("%s %s: the request does not match the document: %v", method, path, err)
		}
		if body != "" {
			req.Body = io.NopCloser(strings.NewReader(body)) // ValidateRequest read it
		}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	b, err := io.ReadAll(resp.Body)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("%s %s: %v", method, path, err)
	}
	if resp.StatusCode != want {
		t.Errorf("%s %s: status %d, want %d: %s", method, path, resp.StatusCode, want, b)
		return nil
	}
	err = openapi3filter.ValidateResponse(ctx, &openapi3filter.ResponseValidationInput{
		RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header, Body: io.NopCloser(bytes.NewReader(b)),
		Options: &openapi3filter.Options{IncludeResponseStatus: true, MultiError: true}})
	if err != nil {
		t.Errorf("%s %s: the %d answer does not match the document: %v\nbody: %.2000s", method, path, resp.StatusCode, err, b)
	}
	if resp.StatusCode == http.StatusOK {
		c.ok[method+" "+route.Path] = true
	}
	var v any
	if json.Unmarshal(b, &v) != nil {
		return nil
	}
	return v
}

// list is call for a 200 answer whose field key must be a non-empty array
// (so that the schema of its items was exercised); it returns the array.
func (c *schemaChecker) list(t *testing.T, path, key string) []any {
	t.Helper()
	m, _ := c.call(t, http.MethodGet, path, "", http.StatusOK, true).(map[string]any)
	items, _ := m[key].([]any)
	if len(items) == 0 {
		t.Errorf("GET %s: no %s; the test needs a non-empty answer", path, key)
	}
	return items
}

// covered fails t unless every documented operation that answers JSON was
// answered with 200 and validated.
func (c *schemaChecker) covered(t *testing.T) {
	t.Helper()
	var missing []string
	for path, item := range c.doc.Paths.Map() {
		for method, op := range item.Operations() {
			r := op.Responses.Status(http.StatusOK)
			if r == nil || r.Value == nil || r.Value.Content.Get("application/json") == nil ||
				r.Value.Content.Get("application/json").Schema == nil {
				continue
			}
			if !c.ok[method+" "+path] {
				missing = append(missing, method+" "+path)
			}
		}
	}
	sort.Strings(missing)
	if len(missing) > 0 {
		t.Errorf("operations with a JSON schema that no request validated: %v", missing)
	}
}

// checkAll calls every JSON operation of the api (GET and the alert PATCH)
// with parameters that select the stored data between from and to, plus
// answers 400 and 404, and validates them. flowID and alertID are stored
// records.
func (c *schemaChecker) checkAll(t *testing.T, from, to time.Time, flowID, alertID string) {
	t.Helper()
	rng := "from=" + url.QueryEscape(from.Format(time.RFC3339)) + "&to=" + url.QueryEscape(to.Format(time.RFC3339))
	flows := c.list(t, "/api/v1/flows", "flows")
	c.list(t, "/api/v1/flows?"+rng+"&sort=-bytes&limit=1", "flows") // with next
	if len(flows) > 0 {
		f := flows[0].(map[string]any)
		c.list(t, "/api/v1/flows?addr="+url.QueryEscape(f["orig_addr"].(string))+"&proto="+jsonNum(f["proto"]), "flows")
	}
	c.call(t, http.MethodGet, "/api/v1/flows/"+flowID, "", http.StatusOK, true)
	c.call(t, http.MethodGet, "/api/v1/flows/"+strings.Repeat("f", 32), "", http.StatusNotFound, true)
	c.call(t, http.MethodGet, "/api/v1/flows?port=70000", "", http.StatusBadRequest, false)
	c.call(t, http.MethodGet, "/api/v1/flows?sort=size", "", http.StatusBadRequest, false)

	c.list(t, "/api/v1/alerts", "alerts")
	c.list(t, "/api/v1/alerts?limit=1", "alerts")
	c.call(t, http.MethodGet, "/api/v1/alerts/"+alertID, "", http.StatusOK, true)
	c.call(t, http.MethodGet, "/api/v1/alerts/"+strings.Repeat("e", 32), "", http.StatusNotFound, true)
	c.call(t, http.MethodPatch, "/api/v1/alerts/"+alertID, `{"status":"acknowledged","note":"looking","by":"schema test"}`, http.StatusOK, true)
	c.call(t, http.MethodGet, "/api/v1/alerts/"+alertID, "", http.StatusOK, true) // with status_at
	c.call(t, http.MethodPatch, "/api/v1/alerts/"+strings.Repeat("e", 32), `{"status":"closed"}`, http.StatusNotFound, true)
	c.call(t, http.MethodPatch, "/api/v1/alerts/"+alertID, `{"status":"done"}`, http.StatusBadRequest, false)
	c.call(t, http.MethodGet, "/api/v1/alerts?severity=urgent", "", http.StatusBadRequest, false)

	c.list(t, "/api/v1/sensors", "sensors")
	c.list(t, "/api/v1/pipeline", "streams")
	c.list(t, "/api/v1/metrics/hosts", "metrics")
	c.list(t, "/api/v1/metrics/hosts?step=1h", "metrics")
	c.call(t, http.MethodGet, "/api/v1/metrics/hosts?step=1ms", "", http.StatusBadRequest, false)

	for _, q := range []string{rng, rng + "&side=src&by=pkts", rng + "&side=pair", "side=dst&by=flows&proto=tcp", rng + "&side=pair&port=80"} {
		c.list(t, "/api/v1/top-talkers?"+q, "talkers")
	}
	c.call(t, http.MethodGet, "/api/v1/top-talkers?side=up", "", http.StatusBadRequest, false)
	for _, p := range []string{"protocols", "ports", "countries"} {
		c.list(t, "/api/v1/"+p+"?"+rng, p)
		c.list(t, "/api/v1/"+p+"?"+rng+"&proto=tcp", p)
	}
	c.list(t, "/api/v1/timeseries?"+rng, "points")
	c.list(t, "/api/v1/timeseries?step=10s", "points")
	c.call(t, http.MethodGet, "/api/v1/timeseries?step=1ms", "", http.StatusBadRequest, false)

	for _, p := range []string{"/healthz", "/readyz"} {
		c.call(t, http.MethodGet, p, "", http.StatusOK, true)
	}
	c.covered(t)
}

func jsonNum(v any) string {
	b, _ := json.Marshal(v)
	return string(b)
}

// TestOpenAPIResponseSchemas: openapi.json is a valid OpenAPI 3 document
// (kin-openapi, examples included), and every JSON answer of the api,
// on stored data that fills every optional field and leaves each out, matches
// the schema the document gives for its operation and status: flows stored
// with NULL for every unknown value (sink 00013), an IPv6 flow, a flow with a
// host score, alerts with and without addresses and windows, host metrics
// in the current and the pre-00004 shape, sensors of the database and of
// the registry only, a pipeline with a stored message; statistics from the
// rollups and from flows; 400 and 404 problems; every list on an empty
// database; and the live feed's flow, alert and metrics objects.
func TestOpenAPIResponseSchemas(t *testing.T) {
	e := newEnv(t)
	c := newSchemaChecker(t, e.url)
	ctx := context.Background()

	// Before anything is stored: empty lists are [], never null.
	for _, p := range []string{"flows", "alerts", "sensors", "pipeline", "top-talkers", "top-talkers?side=pair&proto=tcp",
		"protocols", "ports", "countries?addr=10.0.0.0/8", "timeseries", "metrics/hosts",
		"top-talkers?from=2024-05-01T12:00:00Z&to=2024-05-01T13:00:00Z"} {
		c.call(t, http.MethodGet, "/api/v1/"+p, "", http.StatusOK, true)
	}

	seedFlows(t, e)
	seedContext(t, e)
	e.exec(t, `UPDATE flows SET tunnel = 'vxlan', tunnel_id = 42, vlan = 10, inner_vlan = 20, orig_tcp_flags = 27, resp_tcp_flags = 18,
		server_name = 'example.com', ja4 = 't13d1516h2_8daaf6152771_b186095e22b6', orig_name = 'a.example', resp_name = 'b.example',
		orig_city = 'Stockholm', resp_city = 'Boston', orig_asn = 64496, orig_as_org = 'Org A', app_from_port = true,
		direction_guessed = true, record_index = 1, final = false, end_reason = 'active' WHERE id = $1`, tid("id0"))
	nullify(t, e) // unknown values as the sink stores them since 00013
	v6 := tid("v6")
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes, icmp_type, icmp_code)
		VALUES ($1, 's1', NULL, 58, '2001:db8::1', 0, '::ffff:192.0.2.9', 0, $2, $2, $2, 1, 104, 56, 1, 104, 56, 128, 0)`,
		v6, base.Add(30*time.Second))

	// A host score for 10.0.0.1's window of flow id0 (12:00-12:01), in the
	// detector's format (as TestFlowHostScores).
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
	minute := base.Truncate(time.Minute)
	put(schema.HostScoresModelKey, schema.HostScoresModel{Model: "host-iforest", Threshold: 0.64, Quantile: 0.99, WindowNs: int64(time.Minute)})
	put(schema.HostScoreKey("s1", netip.MustParseAddr("10.0.0.1"), minute.UnixNano()), map[string]any{
		"sensor": "s1", "addr": "10.0.0.1", "window_start_ns": minute.UnixNano(), "window_end_ns": minute.Add(time.Minute).UnixNano(),
		"score": 0.71, "anomalous": true, "counts": map[string]any{"flows": 3}})
	e.rollup(t)
	e.rollupTiers(t)

	// Alerts: one with every field, one without addresses and windows.
	alertID := strings.Repeat("a1", 16)
	e.exec(t, `INSERT INTO alerts (id, time, sensor, severity, category, technique, orig_addr, resp_addr, summary,
		evidence, rule, score, window_start, window_end) VALUES
		($1, $2, 's1', 'high', 'portscan', 'T1046', '10.0.0.1', '2001:db8::2', 'scan', '{"ports": 120, "sample": [22, 80]}', 'portscan', 0.9, $2, $3),
		($4, $2, 's2', 'critical', 'syn_flood', '', NULL, NULL, 'flood', '{}', 'syn_flood', 1, NULL, NULL)`,
		alertID, base, base.Add(time.Minute), strings.Repeat("b2", 16))

	// Host metrics: a sample as the sink writes it now and one from before
	// its migration 00004 (captures without the ring and ARP counters).
	full := `[{"source":"eth0","received":100,"dropped":1,"if_dropped":2,"ip_packets":97,"non_ip":3,"malformed":0,
		"published_batches":4,"ip_bytes":50000,"ring_packets":100,"ring_freezes":0,"buffer_dropped":0,"arp":3}]`
	old := `[{"source":"eth0","received":100,"dropped":1,"if_dropped":2,"ip_packets":97,"non_ip":3,"malformed":0,
		"published_batches":4,"ip_bytes":50000}]`
	for i, caps := range []string{old, full} {
		e.exec(t, `INSERT INTO host_metrics (sensor, boot, seq, time, host, cpu_percent, mem_total_bytes, mem_used_bytes,
			load1, uptime_s, disks, interfaces, captures) VALUES ('s1', 'b', $1, $2, 'h1', 12.5, 8000000000, 2000000000, 0.4, 3600,
			'[{"mount":"/","total_bytes":100000000000,"used_bytes":40000000000}]',
			'[{"name":"eth0","rx_bytes":1,"tx_bytes":2,"rx_packets":1,"tx_packets":1,"rx_errors":0,"tx_errors":0,"rx_dropped":0,"tx_dropped":0}]',
			$3::jsonb)`, i, base.Add(time.Duration(i)*time.Second), caps)
	}
	e.exec(t, `INSERT INTO sensors (sensor, host, last_flow, last_flow_at) VALUES ('s1', 'h1', $1, $1::timestamptz + interval '7.5 seconds'),
		('s2', 'h2', NULL, NULL)`, base)
	reg, err := schema.ProvisionRegistry(ctx, e.js, schema.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, rec := range []schema.SensorRecord{{Name: "s1", Host: "h1", Version: "v1.2.3", Interfaces: []string{"eth0"}, Boot: "b"},
		{Name: "s3", Host: "h3", Version: "v9", Interfaces: []string{"/tmp/x.pcap"}, Boot: "c"}} {
		if _, err := schema.Announce(ctx, reg, rec); err != nil {
			t.Fatal(err)
		}
	}
	// The pipeline: a flow record in FLOWS (first_time, last_time), whose
	// durable consumers schema.Provision created.
	publishFlows(t, e, "s1", testFlow("s1", 1, 6, 80))

	c.checkAll(t, base.Truncate(time.Hour), base.Truncate(time.Hour).Add(time.Hour), tid("id0"), alertID)
	// The flow with a host score carries it.
	if f, _ := c.call(t, http.MethodGet, "/api/v1/flows/"+tid("id0"), "", http.StatusOK, true).(map[string]any); f["orig_host_score"] == nil {
		t.Errorf("flow id0 has no orig_host_score: the HostScore schema was not exercised")
	}
	c.call(t, http.MethodGet, "/api/v1/flows/"+v6, "", http.StatusOK, true)

	// The live feed's flow, alert and metrics objects (its own flow encoder,
	// record.AppendFlowJSON) have the shapes of Flow, Alert and Metrics, as
	// the description of /api/v1/live says.
	ws := dial(t, e, "")
	f := testFlow("s1", 7, 17, 53)
	f.OrigAddr = netip.MustParseAddr("2001:db8::7").AsSlice()
	f.Direction, f.ConnState, f.Ja3, f.OrigCountry, f.OrigAsn = "inbound", "SF", "e7d705a3286e19ea42f587b344ee6865", "SE", 64500
	publishFlows(t, e, "s1", f)
	for subject, m := range map[string]proto.Message{
		schema.AlertsSubject("s1"): &pb.Alert{Id: "al1", TimeNs: base.UnixNano(), Sensor: "s1", Severity: pb.Severity_SEVERITY_HIGH,
			Category: "portscan", Technique: "T1046", OrigAddr: "10.1.0.2", Summary: "scan", Evidence: []byte(`{"ports":100}`),
			WindowStartNs: base.UnixNano(), WindowEndNs: base.Add(time.Minute).UnixNano(), Score: 0.5},
		schema.MetricsSubject("s1"): &pb.Metrics{Sensor: "s1", Host: "h1", TimeNs: base.UnixNano(), CpuPercent: 42, MemTotalBytes: 100,
			Disks:      []*pb.DiskUsage{{Mount: "/", TotalBytes: 10, UsedBytes: 5}},
			Interfaces: []*pb.InterfaceCounters{{Name: "eth0", RxBytes: 1}},
			Captures:   []*pb.CaptureStats{{Source: "eth0", Received: 7, Dropped: 1, Arp: 2}}},
	} {
		b, err := proto.Marshal(m)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.js.Publish(ctx, subject, b); err != nil {
			t.Fatal(err)
		}
	}
	got := map[string]bool{}
	for range 3 {
		m := next(t, ws)
		v, name := map[string]any{"flow": m.Flow, "alert": m.Alert, "metrics": m.Metrics}[m.Type], strings.ToUpper(m.Type[:1])+m.Type[1:]
		sch := c.doc.Components.Schemas[name]
		if v == nil || sch == nil {
			t.Errorf("live message of type %q: %+v", m.Type, m)
			continue
		}
		got[m.Type] = true
		if err := sch.Value.VisitJSON(v); err != nil {
			t.Errorf("live %s does not match the schema %s: %v\n%v", m.Type, name, err, v)
		}
	}
	if len(got) != 3 {
		t.Errorf("live messages: got %v, want a flow, an alert and a metrics sample", got)
	}
}

// TestOpenAPIResponseSchemasCapture: the same checks as
// TestOpenAPIResponseSchemas on what the real pipeline (agent, enricher,
// detector, sink, api, built from this tree) stored from real captures:
// an nmap SYN port scan (flows and the detector's alerts), a TLS 1.2
// ClientHello with SNI, HTTP over IPv4 and IPv6, and HTTP in VXLAN.
func TestOpenAPIResponseSchemasCapture(t *testing.T) {
	if testing.Short() {
		t.Skip("runs the pipeline; not in -short mode")
	}
	root := testkit.Root(t)
	bin, _, cleanup, err := e2e.FindBinaries(root)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(cleanup)
	p := e2e.StartPipeline(t, bin)
	captures := map[string]string{"scan": "attack-portscan-nmap-syn.pcapng", "tls": "tls12-clienthello-sni-google-de.pcap",
		"dual": "dualstack-http-ipv4-and-ipv6.pcapng", "vxlan": "tunnel-vxlan-http.pcap"}
	sensors := slices.Sorted(maps.Keys(captures))
	for _, s := range sensors {
		file := filepath.Join(testkit.Pcaps(t), captures[s])
		if _, err := os.Stat(file); err != nil {
			testkit.Unavailable(t, "no capture: %v", err)
		}
		if r := p.RunAgent(t, s, file); r.Err != nil {
			t.Fatalf("agent %s: %v\n%s", s, r.Err, r.Stderr)
		}
	}
	for _, s := range sensors {
		p.WaitSettled(t, s, -1, 2*time.Minute)
	}
	testkit.Eventually(t, 30*time.Second, func() bool {
		as, err := p.Alerts("scan")
		return err == nil && len(as) > 0
	}, "no alert from the detector on %s", captures["scan"])

	// The range of the port scan's flows, in whole hours (the captures are
	// of different years), a flow of the TLS capture and an alert.
	var first, last time.Time
	var flowID, alertID string
	db := p.DB
	qctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := db.QueryRow(qctx, `SELECT min(start), max(start) FROM flows WHERE sensor = 'scan'`).Scan(&first, &last); err != nil {
		t.Fatal(err)
	}
	if err := db.QueryRow(qctx, `SELECT replace(id::text, '-', '') FROM flows WHERE sensor = 'tls' ORDER BY start LIMIT 1`).Scan(&flowID); err != nil {
		t.Fatalf("a stored flow of the TLS capture: %v", err)
	}
	if err := db.QueryRow(qctx, `SELECT id::text FROM alerts ORDER BY time LIMIT 1`).Scan(&alertID); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := db.QueryRow(qctx, `SELECT count(*) FROM host_metrics`).Scan(&n); err != nil {
		t.Fatal(err)
	}
	t.Logf("stored: flows %s to %s, %d host-metrics samples", first, last, n)
	c := newSchemaChecker(t, p.APIURL)
	c.checkAll(t, first.Truncate(time.Hour), last.Truncate(time.Hour).Add(time.Hour), flowID, alertID)
}
