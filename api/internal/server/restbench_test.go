package server_test

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/api/internal/server"
	"netwatch/testkit"
)

// BenchmarkDashboardQueries is the REST load: the dashboard's
// queries over NETWATCH_BENCH_FLOWS stored flows (default 10 million)
// spread over 24 hours (about 116 flows/s) from 4 sensors, 5,000 local
// originators and 20,000 remote responders (each sensor sees 1,250 and
// 5,000 of them: 25,000 talkers an hour), 12 countries, with the rollups of
// every tier filled (the GROUP BYs the sink keeps: per minute, hour and
// day). Each query runs 30 times (after one warm-up) through HTTP, or as
// often as fits in 30 s; it reports p50 and p99 (with fewer than 100 runs:
// the slowest) in milliseconds per query. The before_* queries run the
// statistics' SQL of before the hourly and daily tiers (per-minute rollups
// only) straight on the pool, for comparison on the same data. Generating
// the data takes minutes: run with -benchtime 1x. NETWATCH_BENCH_ROLLUPS=0
// leaves the rollups empty (most of the time goes into filling them): for
// the queries that read flows only (flows_, flow_by_id, host_).
// NETWATCH_BENCH_SCHEMA=name keeps the data in that schema and reuses it in
// later runs (benchEnv). Top talkers (not pairs) come warm, from the api's
// rollup cache filled by the warm-up, and as <name>_cold with the cache
// emptied before each run. The flows are stored as
// sink migration 00011 does (id uuid, a Community ID v1 as bytea: the byte 1
// and 20 bytes, here of a SHA-256).
func BenchmarkDashboardQueries(b *testing.B) {
	n := 10_000_000
	if v, err := strconv.Atoi(os.Getenv("NETWATCH_BENCH_FLOWS")); err == nil && v > 0 {
		n = v
	}
	e, reused := benchEnv(b, n)
	t0 := time.Now()
	day := time.Date(2026, 11, 28, 0, 0, 0, 0, time.UTC)
	if !reused {
		// Flow i starts at i * 86400/n seconds into the day; its hosts and
		// ports come from i by multiplicative hashing (deterministic).
		e.exec(b, `INSERT INTO flows (id, sensor, community_id, proto, orig_addr, orig_port, resp_addr, resp_port,
		start, "end", flow_start, orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
		app, conn_state, direction, orig_country, resp_country, resp_asn,
		vlan, inner_vlan, icmp_type, icmp_code, orig_tcp_flags, resp_tcp_flags, record_index, end_reason,
		direction_guessed, history, tunnel, tunnel_id, server_name, orig_name, resp_name, orig_city, resp_city,
		orig_asn, orig_as_org, resp_as_org, app_from_port, ja3, ja4, http_user_agent)
		SELECT md5(i::text)::uuid, 's' || (i % 4 + 1), '\x01'::bytea || substr(sha256(convert_to(i::text || 'c', 'UTF8')), 1, 20),
			CASE WHEN i % 10 < 7 THEN 6 ELSE 17 END,
			('10.0.' || ((i * 2654435761) % 5000 / 250) || '.' || ((i * 2654435761) % 250 + 1))::inet, 1024 + (i * 40503) % 60000,
			('203.' || ((i * 40503) % 20000 / 250) || '.' || ((i * 40503) % 20000 % 250) || '.7')::inet,
			(ARRAY[443, 80, 53, 22, 123, 8080, 25, 993])[i % 8 + 1],
			$1::timestamptz + make_interval(secs => i * 86400.0 / $2), $1::timestamptz + make_interval(secs => i * 86400.0 / $2 + 2),
			$1::timestamptz + make_interval(secs => i * 86400.0 / $2),
			1 + i % 20, 60 + (i % 20) * 900, (i % 20) * 860, 1 + i % 15, 60 + (i % 15) * 1200, (i % 15) * 1160,
			(ARRAY['tls', 'http', 'dns', 'ssh', 'ntp', 'http', 'smtp', 'imaps'])[i % 8 + 1], 'SF', 'outbound',
			'SE', NULLIF((ARRAY['US', 'DE', 'SE', 'NL', 'FR', 'GB', 'CN', 'RU', 'BR', 'IN', 'JP', ''])[(i * 13) % 12 + 1], ''), 64496 + i % 500,
			-- the values the benchmark leaves unknown, stored as the sink does since 00013: NULL
			NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
			NULL, NULL, NULL, NULL, NULL, NULL, NULL
		FROM generate_series(0::bigint, $2::bigint - 1) AS i`, day, n)
		if os.Getenv("NETWATCH_BENCH_ROLLUPS") != "0" {
			e.rollup(b)
			e.rollupTiers(b)
		}
		// What the sink's rollup loop does every 10 s for the partitions it
		// writes (store.SummarizeFlowIndexes): the BRIN ranges filled since are
		// summarised and the GIN pending list merged.
		e.exec(b, `SELECT count(CASE am.amname WHEN 'brin' THEN brin_summarize_new_values(x.indexrelid)
		WHEN 'gin' THEN gin_clean_pending_list(x.indexrelid) END)
		FROM pg_index x JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam
		WHERE x.indrelid = 'flows_default'::regclass AND am.amname IN ('brin', 'gin')`)
		e.exec(b, "ANALYZE")
		fmt.Fprintf(os.Stderr, "BenchmarkDashboardQueries: %d flows and rollups in %s\n", n, time.Since(t0).Round(time.Second))
		benchDone(b, e, n)
	} else {
		fmt.Fprintf(os.Stderr, "BenchmarkDashboardQueries: reusing %d flows in schema %s\n", n, os.Getenv("NETWATCH_BENCH_SCHEMA"))
	}
	for _, t := range []string{"flows", "flows_1m", "talkers_1m", "pairs_1m", "ports_1m", "countries_1m",
		"flows_1h", "talkers_1h", "pairs_1h", "flows_1d", "talkers_1d", "pairs_1d"} {
		var rows int64
		var size string
		if err := e.pool.QueryRow(b.Context(), "SELECT count(*), pg_size_pretty(pg_total_relation_size('"+t+"_default')) FROM "+t).Scan(&rows, &size); err == nil {
			fmt.Fprintf(os.Stderr, "  %s: %d rows, %s with indexes\n", t, rows, size)
		}
	}
	var id, cid string
	if err := e.pool.QueryRow(b.Context(), "SELECT md5(($1::int / 2)::text), '1:' || encode(substr(sha256(convert_to(($1::int / 3)::text || 'c', 'UTF8')), 1, 20), 'base64')", n).Scan(&id, &cid); err != nil {
		b.Fatal(err)
	}
	// Bytes per stored flow, indexes included.
	var flowBytes float64
	if err := e.pool.QueryRow(b.Context(), "SELECT pg_total_relation_size('flows_default')::float8 / $1", n).Scan(&flowBytes); err == nil {
		fmt.Fprintf(os.Stderr, "  flows: %.1f bytes per flow with indexes\n", flowBytes)
	}
	hour := "from=2026-11-28T12:00:00Z&to=2026-11-28T13:00:00Z"
	host := "&addr=10.0.3.17"
	queries := []struct{ name, path string }{
		{"overview_timeseries", "/api/v1/timeseries?step=1m&" + hour},
		{"overview_protocols", "/api/v1/protocols?" + hour},
		{"overview_top_talkers", "/api/v1/top-talkers?limit=10&" + hour},
		{"overview_alerts", "/api/v1/alerts?limit=10"},
		{"overview_sensors", "/api/v1/sensors"},
		{"day_timeseries_15m", "/api/v1/timeseries?step=15m&from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z"},
		{"day_top_talkers", "/api/v1/top-talkers?limit=10&from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z"},
		{"flows_page", "/api/v1/flows?limit=50&" + hour},
		{"flows_page_by_bytes", "/api/v1/flows?limit=50&sort=-bytes&" + hour},
		{"flows_addr", "/api/v1/flows?limit=50&" + hour + host},
		{"flows_cidr_port", "/api/v1/flows?limit=50&addr=203.7.0.0/16&port=22&" + hour},
		{"flow_by_id", "/api/v1/flows/" + id},
		{"host_timeseries", "/api/v1/timeseries?step=1m&" + hour + host},
		{"host_ports", "/api/v1/ports?limit=10&" + hour + host},
		{"host_countries", "/api/v1/countries?limit=10&" + hour + host},
		{"host_peers", "/api/v1/top-talkers?side=pair&limit=20&" + hour + host},
		{"countries", "/api/v1/countries?" + hour},
		{"ports", "/api/v1/ports?" + hour},
		{"day_protocols", "/api/v1/protocols?from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z"},
		{"day_countries", "/api/v1/countries?from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z"},
		{"day_top_pairs", "/api/v1/top-talkers?side=pair&limit=10&from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z"},
		// Ranges not on whole hours (a dashboard's "last hour" / "last
		// 24 hours" ending at 12:30): their ends come from the minutes.
		{"hour_unaligned_top_talkers", "/api/v1/top-talkers?limit=10&from=2026-11-28T11:30:00Z&to=2026-11-28T12:30:00Z"},
		{"hour_unaligned_protocols", "/api/v1/protocols?from=2026-11-28T11:30:00Z&to=2026-11-28T12:30:00Z"},
		{"day_unaligned_top_talkers", "/api/v1/top-talkers?limit=10&from=2026-11-27T12:30:00Z&to=2026-11-28T12:30:00Z"},
		{"day_unaligned_protocols", "/api/v1/protocols?from=2026-11-27T12:30:00Z&to=2026-11-28T12:30:00Z"},
		// "Last hour" / "last day" up to now (12:29:37): ranges that cut a
		// minute (since sink 00011 the seconds at the ends come from flows,
		// the rest from the rollups; before, all from flows).
		{"hour_now_top_talkers", "/api/v1/top-talkers?limit=10&from=2026-11-28T11:29:37Z&to=2026-11-28T12:29:37Z"},
		{"hour_now_protocols", "/api/v1/protocols?from=2026-11-28T11:29:37Z&to=2026-11-28T12:29:37Z"},
		{"day_now_top_talkers", "/api/v1/top-talkers?limit=10&from=2026-11-27T12:29:37Z&to=2026-11-28T12:29:37Z"},
		{"day_now_protocols", "/api/v1/protocols?from=2026-11-27T12:29:37Z&to=2026-11-28T12:29:37Z"},
		// The other flow lookups the sink's BRIN indexes serve (00011).
		{"flows_sensor", "/api/v1/flows?limit=50&sensor=s3&" + hour},
		{"flows_addr_day", "/api/v1/flows?limit=50&from=2026-11-28T00:00:00Z&to=2026-11-29T00:00:00Z" + host},
		{"flows_community_id", "/api/v1/flows?limit=50&community_id=" + url.QueryEscape(cid)},
	}
	// The statistics' SQL before the tiers: per-minute rollups only.
	const (
		oldTalkers = `SELECT * FROM (SELECT host(addr), '', sum(sent_ip_bytes)::bigint sb, sum(recv_ip_bytes)::bigint rb,
			sum(sent_pkts)::bigint sp, sum(recv_pkts)::bigint rp, sum(records)::bigint n FROM talkers_1m
			WHERE minute >= $1 AND minute < $2 GROUP BY addr) g ORDER BY sb + rb DESC, 1, 2 LIMIT 10`
		oldProtocols = `SELECT proto, app, sum(records)::bigint, sum(orig_pkts + resp_pkts)::bigint,
			sum(orig_ip_bytes + resp_ip_bytes)::bigint FROM flows_1m WHERE minute >= $1 AND minute < $2
			GROUP BY proto, app ORDER BY 5 DESC, 1, 2`
	)
	h0, h1 := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC), time.Date(2026, 11, 28, 13, 0, 0, 0, time.UTC)
	before := []struct {
		name, sql string
		from, to  time.Time
	}{
		{"before_overview_top_talkers", oldTalkers, h0, h1},
		{"before_day_top_talkers", oldTalkers, day, day.Add(24 * time.Hour)},
		{"before_overview_protocols", oldProtocols, h0, h1},
		{"before_day_protocols", oldProtocols, day, day.Add(24 * time.Hour)},
	}
	for _, q := range before {
		b.Run(q.name, func(b *testing.B) {
			for b.Loop() {
				var lat []time.Duration
				start := time.Now()
				for i := 0; i < 31 && (i < 3 || time.Since(start) < 30*time.Second); i++ {
					t := time.Now()
					rows, err := e.pool.Query(b.Context(), q.sql, q.from, q.to)
					if err != nil {
						b.Fatal(err)
					}
					for rows.Next() {
					}
					rows.Close()
					if err := rows.Err(); err != nil {
						b.Fatal(err)
					}
					if i > 0 {
						lat = append(lat, time.Since(t))
					}
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50_ms")
				b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99_ms")
			}
		})
	}
	// Top talkers (but pairs) also cold: the api's rollup cache
	// (rest.TalkerCache) emptied before each run, so every bucket is loaded
	// from PostgreSQL (whose own buffers stay warm).
	for _, q := range slices.Clone(queries) {
		if strings.Contains(q.path, "top-talkers") && !strings.Contains(q.path, "side=pair") && !strings.Contains(q.path, "addr=") {
			queries = append(queries, struct{ name, path string }{q.name + "_cold", q.path})
		}
	}
	for _, q := range queries {
		cold := strings.HasSuffix(q.name, "_cold")
		b.Run(q.name, func(b *testing.B) {
			for b.Loop() {
				var lat []time.Duration
				start := time.Now()
				for i := 0; i < 31 && (i < 3 || time.Since(start) < 30*time.Second); i++ {
					if cold && e.srv.API.Talkers != nil {
						e.srv.API.Talkers.Reset()
					}
					t := time.Now()
					resp, err := http.Get(e.url + q.path)
					if err != nil {
						b.Fatal(err)
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Fatalf("%s: %d", q.path, resp.StatusCode)
					}
					if i > 0 {
						lat = append(lat, time.Since(t))
					}
				}
				slices.Sort(lat)
				b.ReportMetric(float64(lat[len(lat)/2])/1e6, "p50_ms")
				b.ReportMetric(float64(lat[len(lat)*99/100])/1e6, "p99_ms")
			}
		})
	}
	if c := e.srv.API.Talkers; c != nil {
		st := c.Stats()
		fmt.Fprintf(os.Stderr, "BenchmarkDashboardQueries: rollup cache at the end: %d buckets, %.1f MiB\n", st.Buckets, float64(st.Bytes)/(1<<20))
	}
}

// benchEnv is the benchmark's api. With NETWATCH_BENCH_SCHEMA=name its data
// lives in that schema of the test database and is kept after the run: a
// schema that holds a finished dataset of n flows (generated with rollups,
// recorded in its table bench_dataset) is reused as it is (reused true);
// any other is dropped and created afresh. Without it: a fresh schema
// dropped at the end (testkit.Postgres). NETWATCH_BENCH_ROLLUP_CACHE=0 runs
// the api without its rollup cache (top talkers as one SQL, as before).
func benchEnv(b *testing.B, n int) (e *env, reused bool) {
	var opts server.Options
	if os.Getenv("NETWATCH_BENCH_ROLLUP_CACHE") == "0" {
		opts.RollupCacheBytes = -1 // every top talkers request is one SQL
	}
	name := os.Getenv("NETWATCH_BENCH_SCHEMA")
	if name == "" {
		return newEnvWith(b, opts), false
	}
	if !regexp.MustCompile(`^[a-z_][a-z0-9_]*$`).MatchString(name) {
		b.Fatalf("NETWATCH_BENCH_SCHEMA=%q: want a lower-case SQL identifier", name)
	}
	base := testkit.DatabaseURL()
	conn, err := pgx.Connect(b.Context(), base)
	if err != nil {
		b.Fatalf("NETWATCH_BENCH_SCHEMA: %v", err)
	}
	defer conn.Close(context.Background())
	rollups := os.Getenv("NETWATCH_BENCH_ROLLUPS") != "0"
	var have int
	var haveRollups bool
	err = conn.QueryRow(b.Context(), "SELECT flows, rollups FROM "+name+".bench_dataset").Scan(&have, &haveRollups)
	reused = err == nil && have == n && (haveRollups || !rollups)
	if !reused {
		if _, err := conn.Exec(b.Context(), "DROP SCHEMA IF EXISTS "+name+" CASCADE; CREATE SCHEMA "+name); err != nil {
			b.Fatal(err)
		}
	}
	u, err := url.Parse(base)
	if err != nil {
		b.Fatal(err)
	}
	q := u.Query()
	q.Set("search_path", name)
	u.RawQuery = q.Encode()
	upTo := "99999"
	if reused {
		upTo = ""
	}
	return newEnvDSN(b, opts, u.String(), upTo), reused
}

// benchDone records in a NETWATCH_BENCH_SCHEMA schema that its dataset of n
// flows is complete, so later runs reuse it.
func benchDone(b *testing.B, e *env, n int) {
	if os.Getenv("NETWATCH_BENCH_SCHEMA") == "" {
		return
	}
	e.exec(b, "CREATE TABLE bench_dataset (flows bigint, rollups boolean, made timestamptz DEFAULT now())")
	e.exec(b, "INSERT INTO bench_dataset (flows, rollups) VALUES ($1, $2)", n, os.Getenv("NETWATCH_BENCH_ROLLUPS") != "0")
}
