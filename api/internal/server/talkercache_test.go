package server_test

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http/httptest"
	"net/url"
	"reflect"
	"sync"
	"testing"
	"time"

	"netwatch/api/internal/rest"
	"netwatch/api/internal/server"
	"netwatch/schema/ops"
)

// seedTalkerFlows inserts flows lo..hi-1 (deterministic, from the index as
// the benchmark's data: 3 sensors, 40 local and 60 remote addresses, a few
// byte and packet sizes, so many talkers tie) from 2024-05-31T22:00 over 28
// hours, plus one flow of an address with itself, then refills the rollups
// of every tier from flows (as the sink keeps them).
func seedTalkerFlows(t testing.TB, e *env, lo, hi int) {
	t.Helper()
	e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
		app, conn_state, direction, orig_country, resp_country)
		SELECT md5(i::text)::uuid, 's' || (i % 3 + 1), '\x01'::bytea || substr(sha256(convert_to(i::text, 'UTF8')), 1, 20), 6,
			('10.0.' || ((i * 7) % 40 / 10) || '.' || ((i * 7) % 40 % 10 + 1))::inet, 40000,
			('203.0.' || ((i * 13) % 60 / 20) || '.' || ((i * 13) % 60 % 20 + 1))::inet, 443,
			$1::timestamptz + make_interval(secs => (i * 100.3) % (28 * 3600)), $1::timestamptz + make_interval(secs => (i * 100.3) % (28 * 3600)),
			$1::timestamptz + make_interval(secs => (i * 100.3) % (28 * 3600)),
			1 + i % 3, 100 * (1 + i % 3), 0, 1 + i % 2, 100 * (1 + i % 2), 0, 'tls', 'SF', 'outbound', 'SE', 'US'
		FROM generate_series($2::bigint, $3::bigint - 1) AS i`, time.Date(2024, 5, 31, 22, 0, 0, 0, time.UTC), lo, hi)
	if lo == 0 {
		e.exec(t, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
			start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
			app, conn_state, direction, orig_country, resp_country)
			VALUES (md5('self')::uuid, 's1', '\x01'::bytea, 6, '10.9.9.9', 1, '10.9.9.9', 2, '2024-06-01T10:00:30Z',
			'2024-06-01T10:00:31Z', '2024-06-01T10:00:30Z', 50, 90000, 0, 40, 80000, 0, 'tls', 'SF', 'internal', 'SE', 'SE')`)
	}
	e.rollup(t)
	e.rollupTiers(t)
}

// flowsTopTalkers is top talkers computed straight from flows for the query
// q (from, to, and optionally sensor, side, by, limit): a GROUP BY over
// both ends of each flow record, ordered as issue 6 specifies (value
// descending, then the address).
func flowsTopTalkers(t testing.TB, e *env, q url.Values) []rest.Talker {
	t.Helper()
	side, by, limit := q.Get("side"), q.Get("by"), q.Get("limit")
	if limit == "" {
		limit = "10"
	}
	order := map[string]string{"": "sb + rb", "bytes": "sb + rb", "pkts": "sp + rp", "flows": "n"}[by]
	if side == "src" && by != "flows" {
		order = map[string]string{"": "sb", "bytes": "sb", "pkts": "sp"}[by]
	}
	if side == "dst" && by != "flows" {
		order = map[string]string{"": "rb", "bytes": "rb", "pkts": "rp"}[by]
	}
	rows, err := e.pool.Query(t.Context(), `WITH f AS (SELECT * FROM flows WHERE start >= $1 AND start < $2 AND ($3 = '' OR sensor = $3)),
		t AS (SELECT orig_addr a, orig_ip_bytes sb, resp_ip_bytes rb, orig_pkts sp, resp_pkts rp, 1 n FROM f
			UNION ALL SELECT resp_addr, resp_ip_bytes, orig_ip_bytes, resp_pkts, orig_pkts, 0 FROM f WHERE resp_addr = orig_addr
			UNION ALL SELECT resp_addr, resp_ip_bytes, orig_ip_bytes, resp_pkts, orig_pkts, 1 FROM f WHERE resp_addr <> orig_addr)
		SELECT * FROM (SELECT host(a) h, sum(sb)::bigint sb, sum(rb)::bigint rb, sum(sp)::bigint sp, sum(rp)::bigint rp,
			sum(n)::bigint n FROM t GROUP BY a) g ORDER BY `+order+` DESC, h COLLATE "C" LIMIT `+limit,
		mustTime(t, q.Get("from")), mustTime(t, q.Get("to")), q.Get("sensor"))
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := []rest.Talker{}
	for rows.Next() {
		var x rest.Talker
		if err := rows.Scan(&x.Addr, &x.SentBytes, &x.RecvBytes, &x.SentPkts, &x.RecvPkts, &x.Flows); err != nil {
			t.Fatal(err)
		}
		x.Bytes, x.Pkts = x.SentBytes+x.RecvBytes, x.SentPkts+x.RecvPkts
		out = append(out, x)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// uncached starts a second api on e's database without the rollup cache.
func uncached(t testing.TB, e *env, bytes int64) string {
	t.Helper()
	srv, err := server.New(e.pool, e.nc, ops.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		server.Options{RollupCacheBytes: bytes})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler)
	t.Cleanup(hs.Close)
	return hs.URL
}

// talkerCacheRanges are the ranges checked: aligned hours and days,
// unaligned, cutting minutes, spanning the day boundary, and under a minute.
var talkerCacheRanges = [][2]string{
	{"2024-06-01T10:00:00Z", "2024-06-01T11:00:00Z"},
	{"2024-06-01T00:00:00Z", "2024-06-02T00:00:00Z"},
	{"2024-05-31T22:00:00Z", "2024-06-02T02:00:00Z"},
	{"2024-05-31T23:30:00Z", "2024-06-01T23:30:00Z"},
	{"2024-06-01T09:29:37Z", "2024-06-01T10:29:37Z"},
	{"2024-05-31T22:29:37Z", "2024-06-01T22:29:37Z"},
	{"2024-05-31T23:59:59Z", "2024-06-01T00:01:01Z"},
	{"2024-06-01T10:00:10Z", "2024-06-01T10:00:50Z"},
	{"2024-06-01T10:00:00Z", "2024-06-01T10:07:00Z"},
}

// checkTalkerCache compares, for every range, side, by, limit and sensor,
// the cached api (url c) with the uncached one (u) and with flows.
func checkTalkerCache(t *testing.T, e *env, c, u string, fast bool) {
	t.Helper()
	variants := []string{"limit=10", "limit=3&side=src", "side=dst&by=pkts&limit=25", "by=flows&limit=1000",
		"sensor=s1&limit=7", "sensor=s2&side=src&by=flows", "sensor=nosuch", "by=pkts&limit=100&sensor=s3"}
	if fast {
		variants = variants[:3]
	}
	for _, rg := range talkerCacheRanges {
		for _, v := range variants {
			q, _ := url.ParseQuery(v)
			q.Set("from", rg[0])
			q.Set("to", rg[1])
			path := "/api/v1/top-talkers?" + q.Encode()
			var got, sql struct {
				Talkers []rest.Talker `json:"talkers"`
				Source  string        `json:"source"`
			}
			for _, x := range []struct {
				base string
				v    any
			}{{c, &got}, {u, &sql}} {
				if s, err := httpGet(x.base + path); err != nil {
					t.Fatal(err)
				} else if err := json.Unmarshal([]byte(s), x.v); err != nil {
					t.Fatalf("%s: %v: %s", path, err, s)
				}
			}
			want := flowsTopTalkers(t, e, q)
			if !reflect.DeepEqual(got.Talkers, want) || !reflect.DeepEqual(sql.Talkers, want) || got.Source != "rollup" {
				gb, _ := json.Marshal(got)
				sb, _ := json.Marshal(sql.Talkers)
				wb, _ := json.Marshal(want)
				t.Errorf("%s:\n cached %s\n SQL    %s\n flows  %s", path, gb, sb, wb)
			}
		}
	}
}

// TestTalkerCacheExact: the cached top talkers equal the SQL answer and a
// GROUP BY over flows, warm and cold, after more flows are written (stale
// buckets reloaded), and with a byte bound so small every bucket is
// evicted.
func TestTalkerCacheExact(t *testing.T) {
	e := newEnv(t)
	seedTalkerFlows(t, e, 0, 3000)
	u := uncached(t, e, -1)
	checkTalkerCache(t, e, e.url, u, false) // cold, then partly warm
	st := e.srv.API.Talkers.Stats()
	if st.Buckets == 0 {
		t.Fatalf("nothing cached: %+v", st)
	}
	checkTalkerCache(t, e, e.url, u, false) // warm
	// More flows in the same minutes, hours and days: every cached bucket
	// they touch has a new version.
	seedTalkerFlows(t, e, 3000, 3400)
	checkTalkerCache(t, e, e.url, u, false)
	tiny := uncached(t, e, 2000)
	checkTalkerCache(t, e, tiny, u, true)
}

// TestTalkerCacheConcurrent runs requests from 6 goroutines on a cache
// bound small enough to evict all the time and on the default one, while
// another goroutine empties the default one (Reset, as the benchmark's cold
// runs do); every answer must equal the GROUP BY over flows (run it with
// -race).
func TestTalkerCacheConcurrent(t *testing.T) {
	e := newEnv(t)
	seedTalkerFlows(t, e, 0, 1500)
	small := uncached(t, e, 300_000)
	want := map[[2]string][]rest.Talker{}
	for _, rg := range talkerCacheRanges {
		want[rg] = flowsTopTalkers(t, e, url.Values{"from": {rg[0]}, "to": {rg[1]}, "limit": {"5"}})
	}
	stop := make(chan struct{})
	resets := make(chan int)
	go func() {
		n := 0
		defer func() { resets <- n }()
		for {
			select {
			case <-stop:
				return
			case <-time.After(3 * time.Millisecond):
				e.srv.API.Talkers.Reset()
				n++
			}
		}
	}()
	var wg sync.WaitGroup
	for g := range 6 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			base := []string{e.url, small}[g%2]
			for i := range 12 {
				rg := talkerCacheRanges[(g+i)%len(talkerCacheRanges)]
				s, err := httpGet(base + fmt.Sprintf("/api/v1/top-talkers?limit=5&from=%s&to=%s", rg[0], rg[1]))
				if err != nil {
					t.Error(err)
					return
				}
				var r struct{ Talkers []rest.Talker }
				if err := json.Unmarshal([]byte(s), &r); err != nil || !reflect.DeepEqual(r.Talkers, want[rg]) {
					t.Errorf("%v: %s (%v), want %+v", rg, s, err, want[rg])
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	t.Logf("%d resets during the requests", <-resets)
	checkTalkerCache(t, e, small, uncached(t, e, -1), true)
}

// TestTalkerCacheWarm: after WarmTalkers (what -cache.rollup-warm runs in
// the background), the last hour and the last 24 hours up to the newest
// minute of flows (also shifted by 37 s), and the range from the first
// minute of the next hour (the start edge of the last 24 hours after the
// next hour boundary, whose minutes are loaded ahead), are answered without
// one load query, and exactly (the GROUP BY over flows); an emptied cache
// needs loads for the same requests.
func TestTalkerCacheWarm(t *testing.T) {
	e := newEnv(t)
	seedTalkerFlows(t, e, 0, 3000)
	var newest time.Time
	if err := e.pool.QueryRow(t.Context(), `SELECT max(date_trunc('minute', start)) FROM flows`).Scan(&newest); err != nil {
		t.Fatal(err)
	}
	end := newest.Add(time.Minute).UTC()
	next := end.Add(-24 * time.Hour).Truncate(time.Hour).Add(time.Hour + time.Minute)
	ranges := [][2]time.Time{{end.Add(-time.Hour), end}, {end.Add(-24 * time.Hour), end},
		{end.Add(-24*time.Hour + 37*time.Second), end.Add(37 * time.Second)}, {next, end}}
	ask := func() {
		for _, r := range ranges {
			q := url.Values{"from": {r[0].Format(time.RFC3339Nano)}, "to": {r[1].Format(time.RFC3339Nano)}, "limit": {"7"}}
			var got struct{ Talkers []rest.Talker }
			if code := e.get(t, "/api/v1/top-talkers?"+q.Encode(), &got); code != 200 {
				t.Fatalf("%s: status %d", q.Encode(), code)
			}
			if want := flowsTopTalkers(t, e, q); !reflect.DeepEqual(got.Talkers, want) {
				t.Errorf("%s: %+v, want %+v", q.Encode(), got.Talkers, want)
			}
		}
	}
	c := e.srv.API.Talkers
	c.Reset()
	before := c.Stats().Loads
	ask()
	if c.Stats().Loads == before {
		t.Fatal("an empty cache answered without loading: the check below could not fail")
	}
	c.Reset()
	if _, err := e.srv.API.WarmTalkers(t.Context()); err != nil {
		t.Fatal(err)
	}
	warm := c.Stats()
	if warm.Buckets == 0 {
		t.Fatalf("WarmTalkers cached nothing: %+v", warm)
	}
	ask()
	if got := c.Stats().Loads; got != warm.Loads {
		t.Errorf("%d load queries after WarmTalkers, want 0 (cache %+v)", got-warm.Loads, warm)
	}
}

// TestTalkerCacheWarmTooSmall: with a bound below the last 24 hours'
// buckets (2,000 bytes), KeepTalkersWarm stops after the first check (its
// loads were evicted at once: each check would load them all again) instead
// of reloading every interval until the api stops.
func TestTalkerCacheWarmTooSmall(t *testing.T) {
	e := newEnv(t)
	seedTalkerFlows(t, e, 0, 3000)
	srv, err := server.New(e.pool, e.nc, ops.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		server.Options{RollupCacheBytes: 2000})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	t0 := time.Now()
	srv.API.KeepTalkersWarm(ctx, time.Second)
	if ctx.Err() != nil {
		t.Fatalf("KeepTalkersWarm kept reloading for %s on a 2,000-byte cache (loads %d)", time.Since(t0), srv.API.Talkers.Stats().Loads)
	}
	if n := srv.API.Talkers.Stats().Loads; n == 0 {
		t.Errorf("no load before stopping: the first check did not run")
	}
}

// TestTalkerCacheWarmFullCache: with a bound that holds the warmed ranges
// (1.5 times what WarmTalkers reports they take), requests for other ranges
// fill the cache and evict its buckets; the warming goes on (QA round 2:
// it stopped at the first eviction during a warm pass, whoever caused it).
func TestTalkerCacheWarmFullCache(t *testing.T) {
	e := newEnv(t)
	seedTalkerFlows(t, e, 0, 3000)
	need, err := e.srv.API.WarmTalkers(t.Context())
	if err != nil || need == 0 {
		t.Fatalf("WarmTalkers: %d bytes, %v", need, err)
	}
	srv, err := server.New(e.pool, e.nc, ops.NewRegistry(), slog.New(slog.NewTextHandler(io.Discard, nil)),
		server.Options{RollupCacheBytes: need * 3 / 2})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler)
	defer hs.Close()
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { defer close(done); srv.API.KeepTalkersWarm(ctx, time.Second) }()
	defer func() { cancel(); <-done }()
	for i := 0; i < 3; i++ {
		for _, rg := range talkerCacheRanges {
			if _, err := httpGet(hs.URL + "/api/v1/top-talkers?" + url.Values{"from": {rg[0]}, "to": {rg[1]}}.Encode()); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(1100 * time.Millisecond) // a warm pass reloads what the requests evicted
	}
	select {
	case <-done:
		t.Fatalf("warming stopped though the bound (%d bytes) holds the warm set (%d)", need*3/2, need)
	default:
	}
}
