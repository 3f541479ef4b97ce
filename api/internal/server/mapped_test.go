package server_test

import (
	"net/url"
	"strings"
	"testing"
	"time"
)

// TestMappedAddressSearch: 10.0.0.1, ::ffff:10.0.0.1 and 2001:db8::1 are
// three addresses (as in flows' inet and the sink's rollups): a flows
// search for each finds its own flow only, and /flows/{id} prints each as
// stored; a top talkers answer filtered on the mapped one is its traffic
// (142 bytes sent), not 10.0.0.1's (71).
func TestMappedAddressSearch(t *testing.T) {
	e := newEnv(t)
	at := time.Date(2024, 7, 1, 8, 0, 0, 0, time.UTC)
	for i, a := range []string{"10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"} {
		e.exec(t, `INSERT INTO flows (id, sensor, proto, orig_addr, orig_port, resp_addr, resp_port, start, "end", flow_start,
			orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes, final)
			VALUES ($1, 's1', 17, $2, 33000, '2001:db8::99', 53, $3, $3, $3, $4, $5, 0, 0, 0, 0, true)`,
			tid("m"+a), a, at.Add(time.Duration(i)*time.Second), i+1, 71*(i+1))
	}
	for _, a := range []string{"10.0.0.1", "::ffff:10.0.0.1", "2001:db8::1"} {
		var got struct {
			Flows []struct {
				ID       string `json:"id"`
				OrigAddr string `json:"orig_addr"`
			} `json:"flows"`
		}
		q := url.Values{"addr": {a}, "from": {"2024-07-01T00:00:00Z"}, "to": {"2024-07-02T00:00:00Z"}}
		if code := e.get(t, "/api/v1/flows?"+q.Encode(), &got); code != 200 {
			t.Fatalf("%s: status %d", a, code)
		}
		if len(got.Flows) != 1 || got.Flows[0].OrigAddr != a || got.Flows[0].ID != tid("m"+a) {
			t.Errorf("flows with addr=%s: %+v, want its own flow only", a, got.Flows)
		}
	}
	var tt struct {
		Talkers []struct {
			Addr  string `json:"addr"`
			Bytes int64  `json:"bytes"`
		} `json:"talkers"`
	}
	q := url.Values{"addr": {"::ffff:10.0.0.1"}, "from": {"2024-07-01T00:00:00Z"}, "to": {"2024-07-02T00:00:00Z"}, "side": {"src"}}
	if code := e.get(t, "/api/v1/top-talkers?"+q.Encode(), &tt); code != 200 || len(tt.Talkers) == 0 ||
		tt.Talkers[0].Addr != "::ffff:10.0.0.1" || tt.Talkers[0].Bytes != 142 {
		t.Errorf("top talkers from ::ffff:10.0.0.1: %d %+v, want ::ffff:10.0.0.1 first with 142 bytes", code, tt.Talkers)
	}
}

// TestDurationDecimal: a flow of 1.947779 s (start and end in whole
// microseconds, as PostgreSQL keeps them) prints "duration":1.947779 from
// GET /api/v1/flows/{id}, as on the live feed, not the float noise of
// time.Duration.Seconds (1.9477790000000001; QA D2).
func TestDurationDecimal(t *testing.T) {
	e := newEnv(t)
	at := time.Date(2024, 7, 1, 8, 0, 0, 0, time.UTC)
	e.exec(t, `INSERT INTO flows (id, sensor, proto, orig_addr, orig_port, resp_addr, resp_port, start, "end", flow_start,
		orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes, final)
		VALUES ($1, 's1', 6, '10.0.0.1', 33000, '10.0.0.2', 80, $2, $3, $2, 1, 60, 0, 0, 0, 0, true)`,
		tid("dur"), at, at.Add(1947779*time.Microsecond))
	body, err := httpGet(e.url + "/api/v1/flows/" + tid("dur"))
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(body, `"duration":1.947779,`) {
		t.Errorf("GET /flows/{id}: %s, want \"duration\":1.947779", body)
	}
}
