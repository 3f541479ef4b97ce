package server_test

import (
	"encoding/json"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"
)

// optionalFlowColumns are the columns of flows that hold NULL for an
// unknown / 0 / false value since sink migration 00013, with the value a
// row stored before holds instead.
var optionalFlowColumns = map[string]string{
	"tunnel_id": "0", "orig_asn": "0", "resp_asn": "0", "vlan": "0", "inner_vlan": "0", "record_index": "0",
	"icmp_type": "0", "icmp_code": "0", "orig_tcp_flags": "0", "resp_tcp_flags": "0",
	"direction_guessed": "false", "app_from_port": "false", "community_id": "''::bytea",
	"end_reason": "''", "app": "''", "conn_state": "''", "history": "''", "tunnel": "''", "server_name": "''",
	"direction": "''", "orig_name": "''", "resp_name": "''", "orig_country": "''", "orig_city": "''",
	"orig_as_org": "''", "resp_country": "''", "resp_city": "''", "resp_as_org": "''", "ja3": "''", "ja4": "''",
	"http_user_agent": "''",
}

// nullify stores every unknown value of flows as the sink does since
// migration 00013: NULL instead of "" / 0 / false (the rollups are left as
// they are: the sink keys an unknown app or country as "" there).
func nullify(t *testing.T, e *env) {
	t.Helper()
	var set []string
	for c, def := range optionalFlowColumns {
		set = append(set, c+" = NULLIF("+c+", "+def+")")
	}
	sort.Strings(set)
	e.exec(t, "UPDATE flows SET "+strings.Join(set, ", "))
}

// forEmptyAndNull runs test over unknown values stored as "" / 0 / false
// (before sink migration 00013) and as NULL (since): every expectation must
// hold for both.
func forEmptyAndNull(t *testing.T, test func(t *testing.T, nulls bool)) {
	t.Run("empty", func(t *testing.T) { test(t, false) })
	t.Run("null", func(t *testing.T) { test(t, true) })
}

// TestFlowNullsReadAsBefore: a flow record stored with NULL in every
// optional column (sink 00013) reads back through GET /api/v1/flows/{id} and
// /api/v1/flows as the JSON written out by hand below ("" / 0 / false), the
// same as the record stored the old way ("" / 0 / false); the filters on
// optional columns (country, asn, app, direction, community_id) match the
// record that has the value and neither bare one; protocols from flows put
// the NULL and the "" app in one row.
func TestFlowNullsReadAsBefore(t *testing.T) {
	e := newEnv(t)
	at := time.Date(2024, 7, 1, 8, 0, 0, 0, time.UTC)
	var nullCols, nulls []string
	for c := range optionalFlowColumns {
		nullCols, nulls = append(nullCols, c), append(nulls, "NULL")
	}
	insert := `INSERT INTO flows (id, sensor, proto, orig_addr, orig_port, resp_addr, resp_port, start, "end", flow_start,
		orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes, final`
	core := `'s1', 17, '10.9.0.1', 33000, '192.0.2.99', 53, $2, $2, $2, 1, 71, 43, 0, 0, 0, true`
	e.exec(t, insert+`, `+strings.Join(nullCols, ", ")+`) VALUES ($1, `+core+`, `+strings.Join(nulls, ", ")+`)`, tid("bare-null"), at)
	e.exec(t, insert+`) VALUES ($1, `+core+`)`, tid("bare-empty"), at)
	e.exec(t, insert+`, community_id, app, direction, orig_country, resp_country, orig_asn, resp_asn)
		VALUES ($1, `+core+`, '1:full'::bytea, 'tls', 'outbound', 'SE', NULL, 3301, NULL)`, tid("full"), at.Add(time.Second))
	var n int
	if err := e.pool.QueryRow(t.Context(), `SELECT num_nulls(`+strings.Join(nullCols, ", ")+`) FROM flows WHERE id = $1`,
		tid("bare-null")).Scan(&n); err != nil || n != len(optionalFlowColumns) {
		t.Fatalf("bare-null: %d NULLs (%v), want %d", n, err, len(optionalFlowColumns))
	}

	want := map[string]any{"id": tid("bare-null"), "community_id": "", "sensor": "s1", "proto": 17.0,
		"orig_addr": "10.9.0.1", "orig_port": 33000.0, "resp_addr": "192.0.2.99", "resp_port": 53.0,
		"vlan": 0.0, "inner_vlan": 0.0, "icmp_type": 0.0, "icmp_code": 0.0,
		"start": "2024-07-01T08:00:00.000000000Z", "end": "2024-07-01T08:00:00.000000000Z",
		"flow_start": "2024-07-01T08:00:00.000000000Z", "duration": 0.0,
		"orig_pkts": 1.0, "orig_ip_bytes": 71.0, "orig_bytes": 43.0, "resp_pkts": 0.0, "resp_ip_bytes": 0.0, "resp_bytes": 0.0,
		"orig_tcp_flags": 0.0, "resp_tcp_flags": 0.0, "record_index": 0.0, "final": true, "end_reason": "",
		"direction_guessed": false, "app": "", "conn_state": "", "history": "", "tunnel": "", "tunnel_id": 0.0,
		"server_name": "", "direction": "", "orig_name": "", "resp_name": "",
		"orig_country": "", "orig_city": "", "orig_asn": 0.0, "orig_as_org": "",
		"resp_country": "", "resp_city": "", "resp_asn": 0.0, "resp_as_org": "",
		"app_from_port": false, "ja3": "", "ja4": "", "http_user_agent": ""}
	var got, old map[string]any
	if code := e.get(t, "/api/v1/flows/"+tid("bare-null"), &got); code != 200 || !reflect.DeepEqual(got, want) {
		gb, _ := json.Marshal(got)
		wb, _ := json.Marshal(want)
		t.Errorf("GET flow with NULLs: %d\n got %s\nwant %s", code, gb, wb)
	}
	if code := e.get(t, "/api/v1/flows/"+tid("bare-empty"), &old); code != 200 {
		t.Fatalf("GET flow with '': %d", code)
	}
	old["id"] = tid("bare-null")
	if !reflect.DeepEqual(old, want) {
		t.Errorf("GET flow with '' / 0 / false: %v\nwant %v", old, want)
	}
	var page flowsPage
	if code := e.get(t, "/api/v1/flows?sort=start&proto=udp", &page); code != 200 || len(page.Flows) != 3 {
		t.Fatalf("flows list: %d, %d flows", code, len(page.Flows))
	}
	for _, f := range page.Flows {
		if f["id"] == tid("bare-null") && !reflect.DeepEqual(f, want) {
			t.Errorf("listed flow with NULLs: %v\nwant %v", f, want)
		}
	}

	for _, c := range []struct {
		query string
		want  []string
	}{
		{"country=SE", []string{"full"}},
		{"country=US", nil},
		{"asn=3301", []string{"full"}},
		{"asn=AS15169", nil},
		{"app=tls", []string{"full"}},
		{"direction=outbound", []string{"full"}},
		{"community_id=1:full", []string{"full"}},
		{"proto=udp&port=53", []string{"bare-empty", "bare-null", "full"}},
	} {
		var p flowsPage
		if code := e.get(t, "/api/v1/flows?sort=start&"+c.query, &p); code != 200 {
			t.Fatalf("%s: %d", c.query, code)
		}
		var ids []string
		for _, f := range p.Flows {
			ids = append(ids, untid(f["id"].(string)))
		}
		sort.Strings(ids)
		if !reflect.DeepEqual(ids, c.want) {
			t.Errorf("flows?%s: %v, want %v", c.query, ids, c.want)
		}
	}

	// From flows (a protocol filter has no rollup): the two bare records,
	// one with NULL and one with "", are the one row app "".
	var pr struct {
		Protocols []struct {
			App         string
			Flows, Pkts int64
		} `json:"protocols"`
		Source string `json:"source"`
	}
	e.get(t, "/api/v1/protocols?proto=udp&from=2024-07-01T00:00:00Z&to=2024-07-02T00:00:00Z", &pr)
	if pr.Source != "flows" || len(pr.Protocols) != 2 || pr.Protocols[0].App != "" || pr.Protocols[0].Flows != 2 ||
		pr.Protocols[1].App != "tls" || pr.Protocols[1].Flows != 1 {
		t.Errorf("protocols from flows: %+v, want app \"\" 2 flows, tls 1 flow", pr)
	}
}
