package server_test

import (
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"time"
)

// seedCountryFlows stores four flows with known countries (sensor s1):
//
//	f1 10:00:30 10.1.1.1 (SE) -> 10.1.1.2 (SE)      10 pkts 1000 B / 20 pkts 3000 B   same country
//	f2 10:20:00 10.1.1.1 (SE) -> 192.0.2.9 (DE)      1 pkt   100 B /  2 pkts  400 B   two countries
//	f3 10:40:00 198.51.100.7 ('') -> 10.1.1.1 (SE)   5 pkts  500 B /  0 pkts    0 B   unknown originator
//	f4 11:10:15 10.1.1.2 (SE) -> 192.0.2.9 (DE)      3 pkts  300 B /  4 pkts  800 B
//	f5 09:59:30 10.1.1.2 (SE) -> 10.1.1.1 (SE)       2 pkts  200 B /  2 pkts  200 B   day 2024-06-01
//
// on 2024-06-01 (UTC), and fills the rollups of every tier.
func seedCountryFlows(t *testing.T, e *env) {
	t.Helper()
	day := time.Date(2024, 6, 1, 0, 0, 0, 0, time.UTC)
	for _, f := range []struct {
		id, orig, resp, oc, rc string
		at                     time.Duration
		op, ob, rp, rb         int
	}{
		{"f1", "10.1.1.1", "10.1.1.2", "SE", "SE", 10*time.Hour + 30*time.Second, 10, 1000, 20, 3000},
		{"f2", "10.1.1.1", "192.0.2.9", "SE", "DE", 10*time.Hour + 20*time.Minute, 1, 100, 2, 400},
		{"f3", "198.51.100.7", "10.1.1.1", "", "SE", 10*time.Hour + 40*time.Minute, 5, 500, 0, 0},
		{"f4", "10.1.1.2", "192.0.2.9", "SE", "DE", 11*time.Hour + 10*time.Minute + 15*time.Second, 3, 300, 4, 800},
		{"f5", "10.1.1.2", "10.1.1.1", "SE", "SE", 9*time.Hour + 59*time.Minute + 30*time.Second, 2, 200, 2, 200},
	} {
		st := day.Add(f.at)
		e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
			start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
			app, orig_country, resp_country)
			VALUES ($1, 's1', $11, 6, $2::inet, 40000, $3::inet, 443, $4, $4, $4, $5, $6, 0, $7, $8, 0, 'tls', $9, $10)`,
			tid(f.id), f.orig, f.resp, st, f.op, f.ob, f.rp, f.rb, f.oc, f.rc, []byte("1:"+f.id))
	}
	e.rollup(t)
	e.rollupTiers(t)
}

type countryRow struct {
	Country                                  string
	Bytes, Pkts, SentBytes, RecvBytes, Flows int64
	SentPkts, RecvPkts                       int64
}

func (c *countryRow) UnmarshalJSON(b []byte) error {
	var v struct {
		Country   string `json:"country"`
		Bytes     int64  `json:"bytes"`
		Pkts      int64  `json:"pkts"`
		SentBytes int64  `json:"sent_bytes"`
		RecvBytes int64  `json:"recv_bytes"`
		SentPkts  int64  `json:"sent_pkts"`
		RecvPkts  int64  `json:"recv_pkts"`
		Flows     int64  `json:"flows"`
	}
	if err := json.Unmarshal(b, &v); err != nil {
		return err
	}
	*c = countryRow{v.Country, v.Bytes, v.Pkts, v.SentBytes, v.RecvBytes, v.Flows, v.SentPkts, v.RecvPkts}
	return nil
}

// TestStatsCountriesOnce: a flow adds its traffic once to each distinct
// country of its ends, from the rollups (day, hour and minute tiers) and
// from flows alike; the Host view (addr) shows its peers' countries only.
// Every expectation is counted by hand from seedCountryFlows.
//
// It runs twice: over rows with "" for an unknown country (as stored before
// sink migration 00013) and over the same rows with NULL (as stored since).
func TestStatsCountriesOnce(t *testing.T) {
	forEmptyAndNull(t, testStatsCountriesOnce)
}

func testStatsCountriesOnce(t *testing.T, nulls bool) {
	e := newEnv(t)
	seedCountryFlows(t, e)
	if nulls {
		nullify(t, e)
	}
	get := func(path, wantSource string) []countryRow {
		t.Helper()
		var r struct {
			Countries []countryRow `json:"countries"`
			Source    string       `json:"source"`
		}
		if code := e.get(t, path, &r); code != 200 || r.Source != wantSource {
			t.Fatalf("%s: %d, source %q, want %q", path, code, r.Source, wantSource)
		}
		return r.Countries
	}
	// country, bytes, pkts, sent bytes, recv bytes, flows, sent pkts, recv pkts
	whole := []countryRow{
		// f1 once (as originator: sent 1000, received 3000), f2 and f4 as
		// originator, f3 as responder, f5 once.
		{"SE", 4000 + 500 + 500 + 1100 + 400, 30 + 3 + 5 + 7 + 4, 1000 + 100 + 0 + 300 + 200, 3000 + 400 + 500 + 800 + 200, 5,
			10 + 1 + 0 + 3 + 2, 20 + 2 + 5 + 4 + 2},
		{"DE", 500 + 1100, 3 + 7, 400 + 800, 100 + 300, 2, 2 + 4, 1 + 3}, // f2, f4 as responder
		{"", 500, 5, 500, 0, 1, 5, 0},                                    // f3 as originator
	}
	for _, r := range []struct{ path, source string }{
		{"/api/v1/countries?from=2024-06-01T00:00:00Z&to=2024-06-02T00:00:00Z", "rollup"},           // one day
		{"/api/v1/countries?from=2024-05-31T23:00:00Z&to=2024-06-02T01:00:00Z", "rollup"},           // hour, day, hour
		{"/api/v1/countries?from=2024-06-01T09:59:00Z&to=2024-06-01T11:11:00Z", "rollup"},           // minute, hour, minutes
		{"/api/v1/countries?from=2024-06-01T00:00:01Z&to=2024-06-02T00:00:00Z", "rollup"},           // cuts a minute: its seconds from flows
		{"/api/v1/countries?from=2024-06-01T00:00:00Z&to=2024-06-02T00:00:00Z&proto=tcp", "flows"},  // every flow is TCP
		{"/api/v1/countries?from=2024-06-01T09:00:00Z&to=2024-06-01T12:00:00Z&sensor=s1", "rollup"}, // hours
	} {
		if got := get(r.path, r.source); !reflect.DeepEqual(got, whole) {
			t.Errorf("%s:\n got %+v\nwant %+v", r.path, got, whole)
		}
	}
	// The hour 10:00-11:00 (hourly tier): f1, f2, f3.
	hour := []countryRow{
		{"SE", 4000 + 500 + 500, 30 + 3 + 5, 1000 + 100 + 0, 3000 + 400 + 500, 3, 10 + 1 + 0, 20 + 2 + 5},
		{"", 500, 5, 500, 0, 1, 5, 0}, // ties are ordered by country
		{"DE", 500, 3, 400, 100, 1, 2, 1},
	}
	for _, r := range []struct{ path, source string }{
		{"/api/v1/countries?from=2024-06-01T10:00:00Z&to=2024-06-01T11:00:00Z", "rollup"},
		{"/api/v1/countries?from=2024-06-01T10:00:00.5Z&to=2024-06-01T11:00:00Z", "rollup"},
		{"/api/v1/countries?from=2024-06-01T10:00:00Z&to=2024-06-01T11:00:00Z&proto=tcp", "flows"},
	} {
		if got := get(r.path, r.source); !reflect.DeepEqual(got, hour) {
			t.Errorf("%s:\n got %+v\nwant %+v", r.path, got, hour)
		}
	}
	// Host view: the peers' countries, with what the peer sent and received.
	const day = "&from=2024-06-01T00:00:00Z&to=2024-06-02T00:00:00Z"
	for _, r := range []struct {
		addr string
		want []countryRow
	}{
		// 10.1.1.1 (SE): f1 and f5 with 10.1.1.2 (SE), f2 with DE, f3 with
		// an unknown originator. SE appears as the country of the peer
		// 10.1.1.2, not of 10.1.1.1's own traffic.
		{"10.1.1.1", []countryRow{
			{"SE", 4000 + 400, 30 + 4, 3000 + 200, 1000 + 200, 2, 20 + 2, 10 + 2},
			{"", 500, 5, 500, 0, 1, 5, 0},
			{"DE", 500, 3, 400, 100, 1, 2, 1},
		}},
		// 192.0.2.9 (DE): its peers are in SE; DE, its own country, is absent.
		{"192.0.2.9", []countryRow{{"SE", 500 + 1100, 3 + 7, 100 + 300, 400 + 800, 2, 1 + 3, 2 + 4}}},
		// A CIDR: f1 and f5 have both ends inside (no outside peer).
		{"10.1.1.0/24", []countryRow{
			{"DE", 500 + 1100, 3 + 7, 400 + 800, 100 + 300, 2, 2 + 4, 1 + 3},
			{"", 500, 5, 500, 0, 1, 5, 0},
		}},
	} {
		path := "/api/v1/countries?addr=" + strings.ReplaceAll(r.addr, "/", "%2F") + day
		if got := get(path, "flows"); !reflect.DeepEqual(got, r.want) {
			t.Errorf("%s:\n got %+v\nwant %+v", path, got, r.want)
		}
	}
}

// TestStatsTiersEqualFlows: every statistic over ranges that the api cuts
// into day, hour and minute rollups equals the same statistic over a range
// one second later holding the same flows (its first second, up to the next
// whole minute, read from flows; a time series of it all from flows) and
// the same statistic from flows alone (proto=tcp: every seeded flow is TCP,
// and a protocol filter has no rollup), and the sums match the hand totals.
//
// It runs over "" and over NULL unknown values (forEmptyAndNull).
func TestStatsTiersEqualFlows(t *testing.T) {
	forEmptyAndNull(t, testStatsTiersEqualFlows)
}

func testStatsTiersEqualFlows(t *testing.T, nulls bool) {
	e := newEnv(t)
	seedCountryFlows(t, e)
	if nulls {
		nullify(t, e)
	}
	for _, rg := range []struct{ rollup, flows string }{
		{"from=2024-06-01T09:59:00Z&to=2024-06-01T11:11:00Z", "from=2024-06-01T09:59:01Z&to=2024-06-01T11:11:00Z"},
		{"from=2024-05-31T23:00:00Z&to=2024-06-02T01:00:00Z", "from=2024-05-31T23:00:01Z&to=2024-06-02T01:00:00Z"},
		{"from=2024-06-01T10:00:00Z&to=2024-06-01T11:00:00Z", "from=2024-06-01T10:00:01Z&to=2024-06-01T11:00:00Z"},
	} {
		for _, path := range []string{"/api/v1/top-talkers?limit=20", "/api/v1/top-talkers?side=src", "/api/v1/top-talkers?side=dst&by=pkts",
			"/api/v1/top-talkers?side=pair", "/api/v1/top-talkers?by=flows&sensor=s1", "/api/v1/protocols?x=1", "/api/v1/ports?limit=50",
			"/api/v1/countries?x=1", "/api/v1/timeseries?step=1h", "/api/v1/timeseries?step=24h", "/api/v1/timeseries?step=2m"} {
			var r, f map[string]any
			if code := e.get(t, path+"&"+rg.rollup, &r); code != 200 || r["source"] != "rollup" {
				t.Fatalf("%s&%s: %d, source %v", path, rg.rollup, code, r["source"])
			}
			want := "rollup"
			if strings.Contains(path, "timeseries") {
				want = "flows"
			}
			if code := e.get(t, path+"&"+rg.flows, &f); code != 200 || f["source"] != want {
				t.Fatalf("%s&%s: %d, source %v, want %s", path, rg.flows, code, f["source"], want)
			}
			var g map[string]any
			if code := e.get(t, path+"&proto=tcp&"+rg.rollup, &g); code != 200 || g["source"] != "flows" {
				t.Fatalf("%s&proto=tcp&%s: %d, source %v", path, rg.rollup, code, g["source"])
			}
			for _, m := range []map[string]any{r, f, g} {
				delete(m, "source")
				if strings.Contains(path, "timeseries") {
					delete(m, "from")
				}
			}
			if !reflect.DeepEqual(r, f) || !reflect.DeepEqual(r, g) {
				rb, _ := json.Marshal(r)
				fb, _ := json.Marshal(f)
				gb, _ := json.Marshal(g)
				t.Errorf("%s&%s: rollup %s\n edges from flows %s\n flows %s", path, rg.rollup, rb, fb, gb)
			}
		}
	}
	// Hand totals over 09:59-11:11: all five flows, 4000+500+500+1100+400
	// IP bytes, 30+3+5+7+4 packets.
	var pr struct {
		Protocols []struct{ Flows, Pkts, Bytes int64 } `json:"protocols"`
	}
	e.get(t, "/api/v1/protocols?from=2024-06-01T09:59:00Z&to=2024-06-01T11:11:00Z", &pr)
	if len(pr.Protocols) != 1 || pr.Protocols[0].Flows != 5 || pr.Protocols[0].Bytes != 6500 || pr.Protocols[0].Pkts != 49 {
		t.Errorf("protocols 09:59-11:11: %+v, want 5 flows, 6500 bytes, 49 pkts", pr.Protocols)
	}
	var ts struct {
		Points []struct{ Bytes int64 } `json:"points"`
	}
	e.get(t, "/api/v1/timeseries?step=1h&from=2024-06-01T09:00:00Z&to=2024-06-01T12:00:00Z", &ts)
	if got := ts.Points; len(got) != 3 || got[0].Bytes != 400 || got[1].Bytes != 5000 || got[2].Bytes != 1100 {
		t.Errorf("hourly series: %+v, want 400, 5000, 1100 bytes", got)
	}
}
