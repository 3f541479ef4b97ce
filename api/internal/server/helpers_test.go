package server_test

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/server"
	"netwatch/schema/ops"
	"netwatch/testkit"
)

// env is a running api on a fresh database schema and JetStream server.
type env struct {
	url  string // http://127.0.0.1:port
	pool *pgxpool.Pool
	nc   *nats.Conn
	js   jetstream.JetStream
	srv  *server.Server
}

// migrate applies the sink's migrations (their Up sections, in order) and
// default partitions, so rows of any time can be inserted.
func migrate(t testing.TB, pool *pgxpool.Pool) { migrateUpTo(t, pool, "99999") }

// migrateUpTo applies the migrations numbered up to upTo (5 digits).
func migrateUpTo(t testing.TB, pool *pgxpool.Pool, upTo string) {
	t.Helper()
	dir := filepath.Join(testkit.Root(t), "sink", "internal", "store", "migrations")
	files, err := filepath.Glob(filepath.Join(dir, "*.sql"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no migrations in %s: %v", dir, err)
	}
	sort.Strings(files)
	ctx := context.Background()
	for _, f := range files {
		if filepath.Base(f)[:5] > upTo {
			continue
		}
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		up := string(b)
		if i := strings.Index(up, "-- +goose Down"); i >= 0 {
			up = up[:i]
		}
		up = strings.NewReplacer("-- +goose StatementBegin", "", "-- +goose StatementEnd", "").Replace(up)
		if _, err := pool.Exec(ctx, up); err != nil {
			t.Fatalf("apply %s: %v", filepath.Base(f), err)
		}
	}
	for _, tbl := range []string{"flows", "alerts", "host_metrics", "flows_1m", "talkers_1m", "pairs_1m", "ports_1m",
		"countries_1m", "capture_stats"} {
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", tbl).Scan(&exists); err != nil || !exists {
			continue
		}
		if _, err := pool.Exec(ctx, "CREATE TABLE "+tbl+"_default PARTITION OF "+tbl+" DEFAULT"); err != nil {
			t.Fatalf("default partition of %s: %v", tbl, err)
		}
	}
}

func newEnv(t testing.TB) *env { return newEnvWith(t, server.Options{}) }

func newEnvWith(t testing.TB, opts server.Options) *env { return newEnvSchema(t, opts, "99999") }

// newEnvSchema is newEnvWith on a database migrated up to migration upTo.
func newEnvSchema(t testing.TB, opts server.Options, upTo string) *env {
	t.Helper()
	return newEnvDSN(t, opts, testkit.Postgres(t), upTo)
}

// newEnvDSN is newEnvSchema on the database dsn (its search_path), which
// it migrates up to upTo unless upTo is "" (already migrated).
func newEnvDSN(t testing.TB, opts server.Options, dsn, upTo string) *env {
	t.Helper()
	_, nc, js := testkit.JetStream(t)
	return newEnvNATS(t, opts, dsn, upTo, nc, js)
}

// newEnvNATS is newEnvDSN with the api on the NATS connection nc (js its
// JetStream context), for tests that control the NATS server.
func newEnvNATS(t testing.TB, opts server.Options, dsn, upTo string, nc *nats.Conn, js jetstream.JetStream) *env {
	t.Helper()
	pool, err := server.NewPool(context.Background(), dsn)
	if err != nil {
		t.Fatalf("pool: %v", err)
	}
	t.Cleanup(pool.Close)
	if upTo != "" {
		migrateUpTo(t, pool, upTo)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	srv, err := server.New(pool, nc, ops.NewRegistry(), log, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := srv.Hub.Start(); err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(srv.Handler)
	t.Cleanup(func() {
		srv.Hub.Close()
		hs.Close()
	})
	return &env{url: hs.URL, pool: pool, nc: nc, js: js, srv: srv}
}

func (e *env) exec(t testing.TB, sql string, args ...any) {
	t.Helper()
	if _, err := e.pool.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// get fetches path and decodes the JSON body into v (when not nil),
// returning the status code.
func (e *env) get(t testing.TB, path string, v any) int {
	t.Helper()
	resp, err := http.Get(e.url + path)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); strings.HasPrefix(path, "/api/v1/") && !strings.HasPrefix(ct, "application/json") &&
		!(resp.StatusCode >= 400 && ct == "application/problem+json") {
		t.Fatalf("GET %s: Content-Type %q, body %s", path, ct, b)
	}
	if v != nil {
		if err := json.Unmarshal(b, v); err != nil {
			t.Fatalf("GET %s: decode %s: %v", path, b, err)
		}
	}
	return resp.StatusCode
}

func mustTime(t testing.TB, s string) time.Time {
	t.Helper()
	v, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		t.Fatal(err)
	}
	return v
}

func httpGet(u string) (string, error) {
	resp, err := http.Get(u)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return string(b), err
}

// rollup fills the per-minute rollup tables from flows with the GROUP BY
// that defines them (the database contract: each rollup equals a GROUP BY
// over flows; records count a flow once for an address or country that is
// both originator and responder, as sink/internal/store/rollup.go does),
// as the sink keeps them; it replaces what was there. An unknown app or
// country (NULL since sink migration 00013, "" before) is the key "".
func (e *env) rollup(t testing.TB) {
	t.Helper()
	for _, sql := range []string{
		`TRUNCATE flows_1m, talkers_1m, pairs_1m, ports_1m, countries_1m`,
		`INSERT INTO flows_1m SELECT date_trunc('minute', start), sensor, proto, COALESCE(app, ''), count(*), sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes) FROM flows GROUP BY 1, 2, 3, 4`,
		`INSERT INTO talkers_1m SELECT m, sensor, addr, sum(sp), sum(sb), sum(rp), sum(rb), sum(n) FROM (
			SELECT date_trunc('minute', start) m, sensor, orig_addr addr, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb, 1 n FROM flows
			UNION ALL
			SELECT date_trunc('minute', start), sensor, resp_addr, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes,
				CASE WHEN resp_addr = orig_addr THEN 0 ELSE 1 END FROM flows) x
			GROUP BY 1, 2, 3`,
		`INSERT INTO pairs_1m SELECT date_trunc('minute', start), sensor, orig_addr, resp_addr, proto, sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), count(*) FROM flows GROUP BY 1, 2, 3, 4, 5`,
		`INSERT INTO ports_1m SELECT date_trunc('minute', start), sensor, proto, resp_port, sum(orig_pkts), sum(resp_pkts),
			sum(orig_ip_bytes), sum(resp_ip_bytes), count(*) FROM flows GROUP BY 1, 2, 3, 4`,
		`INSERT INTO countries_1m SELECT m, sensor, c, sum(sp), sum(sb), sum(rp), sum(rb), sum(n) FROM (
			SELECT date_trunc('minute', start) m, sensor, COALESCE(orig_country, '') c, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb, 1 n FROM flows
			UNION ALL
			SELECT date_trunc('minute', start), sensor, COALESCE(resp_country, ''), resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes,
				CASE WHEN COALESCE(resp_country, '') = COALESCE(orig_country, '') THEN 0 ELSE 1 END FROM flows) x
			GROUP BY 1, 2, 3`,
	} {
		e.exec(t, sql)
	}
}
