// Package storetest holds checks of the sink's tables for tests of several
// packages, written in SQL independently of the store's Go code.
package storetest

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// rollupChecks are, per rollup table, its columns and the same rows computed
// by SQL over flows (the definition in migrations 00003, 00006 and 00009,
// written independently of rollup.go); BIN is the tier's bucket of start.
// An unknown app or country is NULL since migration 00013 ("" before): both
// are the key "".
var rollupChecks = []struct{ table, cols, groupBy string }{
	{"flows_1m", "minute, sensor, proto, app, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes",
		`SELECT BIN, sensor, proto, COALESCE(app, ''), count(*),
			sum(orig_pkts), sum(resp_pkts), sum(orig_ip_bytes), sum(resp_ip_bytes), sum(orig_bytes), sum(resp_bytes)
		FROM flows GROUP BY 1, 2, 3, 4`},
	{"talkers_1m", "minute, sensor, addr, sent_pkts, sent_ip_bytes, recv_pkts, recv_ip_bytes, records",
		`SELECT m, sensor, a, sum(sp), sum(sb), sum(rp), sum(rb), count(DISTINCT (start, id)) FROM (
			SELECT BIN m, sensor, start, id,
				orig_addr a, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb FROM flows
			UNION ALL
			SELECT BIN, sensor, start, id,
				resp_addr, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes FROM flows) r GROUP BY 1, 2, 3`},
	{"pairs_1m", "minute, sensor, orig_addr, resp_addr, proto, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, records",
		`SELECT BIN, sensor, orig_addr, resp_addr, proto,
			sum(orig_pkts), sum(resp_pkts), sum(orig_ip_bytes), sum(resp_ip_bytes), count(*)
		FROM flows GROUP BY 1, 2, 3, 4, 5`},
	{"ports_1m", "minute, sensor, proto, resp_port, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, records",
		`SELECT BIN, sensor, proto, resp_port,
			sum(orig_pkts), sum(resp_pkts), sum(orig_ip_bytes), sum(resp_ip_bytes), count(*)
		FROM flows GROUP BY 1, 2, 3, 4`},
	// A record counts for each distinct country of its ends once: in the
	// originator's role, and in the responder's when its country differs.
	{"countries_1m", "minute, sensor, country, sent_pkts, sent_ip_bytes, recv_pkts, recv_ip_bytes, records",
		`SELECT m, sensor, c, sum(sp), sum(sb), sum(rp), sum(rb), count(*) FROM (
			SELECT BIN m, sensor, COALESCE(orig_country, '') c, orig_pkts sp, orig_ip_bytes sb, resp_pkts rp, resp_ip_bytes rb FROM flows
			UNION ALL
			SELECT BIN, sensor, COALESCE(resp_country, ''), resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes FROM flows
				WHERE COALESCE(resp_country, '') <> COALESCE(orig_country, '')) r GROUP BY 1, 2, 3`},
}

// checkTiers are the rollup tiers: table suffix, time column and the
// date_bin width of a bucket (UTC, from 2000-01-01, so minutes, hours and
// days are UTC ones).
var checkTiers = []struct{ suffix, col, width string }{
	{"_1m", "minute", "1 minute"}, {"_1h", "hour", "1 hour"}, {"_1d", "day", "1 day"},
}

// CheckRollups fails t unless every rollup table of every tier equals its
// GROUP BY over flows (symmetric difference empty) and the rollups are not empty when
// flows is not. Since sink migration 00011 the rollups lag the flows (the
// sink's rollup job adds the batches listed in rollup_pending): it first
// waits up to a minute for rollup_pending to be empty.
func CheckRollups(t testing.TB, pool *pgxpool.Pool, step string) {
	t.Helper()
	ctx := context.Background()
	WaitRollups(t, pool, step)
	var flows int
	if err := pool.QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&flows); err != nil {
		t.Fatal(err)
	}
	for _, tier := range checkTiers {
		for _, c := range rollupChecks {
			var diff, rows int
			table := strings.TrimSuffix(c.table, "_1m") + tier.suffix
			cols := strings.Replace(c.cols, "minute", tier.col, 1)
			groupBy := strings.ReplaceAll(c.groupBy, "BIN",
				"date_bin('"+tier.width+"', start, timestamptz '2000-01-01 00:00:00+00')")
			q := fmt.Sprintf(`WITH g AS (%s), r AS (SELECT %s FROM %s)
			SELECT (SELECT count(*) FROM ((SELECT * FROM g EXCEPT ALL SELECT * FROM r)
				UNION ALL (SELECT * FROM r EXCEPT ALL SELECT * FROM g)) d), (SELECT count(*) FROM r)`,
				groupBy, cols, table)
			if err := pool.QueryRow(ctx, q).Scan(&diff, &rows); err != nil {
				t.Fatalf("%s: %s: %v", step, table, err)
			}
			if diff != 0 || (flows > 0) != (rows > 0) {
				t.Errorf("%s: %s: %d rows differ from the GROUP BY over %d flows (%d rows)", step, table, diff, flows, rows)
			}
		}
	}
}

// CheckRollupsDSN is CheckRollups on a new pool of dsn.
func CheckRollupsDSN(t testing.TB, dsn string, step string) {
	t.Helper()
	pool, err := pgxpool.New(context.Background(), dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	CheckRollups(t, pool, step)
}

// WaitRollups waits up to a minute until rollup_pending (sink migration
// 00011) is empty, i.e. a rollup job added every committed batch of flows to
// the rollups; it fails t otherwise. Without the table it returns at once.
func WaitRollups(t testing.TB, pool *pgxpool.Pool, step string) {
	t.Helper()
	ctx := context.Background()
	deadline := time.Now().Add(time.Minute)
	for {
		var exists bool
		if err := pool.QueryRow(ctx, "SELECT to_regclass('rollup_pending') IS NOT NULL").Scan(&exists); err != nil {
			t.Fatalf("%s: %v", step, err)
		}
		var pending int
		if exists {
			if err := pool.QueryRow(ctx, "SELECT count(*) FROM rollup_pending").Scan(&pending); err != nil {
				t.Fatalf("%s: %v", step, err)
			}
		}
		if pending == 0 {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %d batches still pending for the rollups after a minute", step, pending)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// FillRollups sets every rollup table of every tier to its GROUP BY over
// flows (the definitions above): the rollups a sink would have kept for the
// stored flows. Tests of upgrades use it to build an older version's state.
func FillRollups(t testing.TB, pool *pgxpool.Pool) {
	t.Helper()
	ctx := context.Background()
	for _, tier := range checkTiers {
		for _, c := range rollupChecks {
			table := strings.TrimSuffix(c.table, "_1m") + tier.suffix
			cols := strings.Replace(c.cols, "minute", tier.col, 1)
			groupBy := strings.ReplaceAll(c.groupBy, "BIN",
				"date_bin('"+tier.width+"', start, timestamptz '2000-01-01 00:00:00+00')")
			if _, err := pool.Exec(ctx, "TRUNCATE "+table); err != nil {
				t.Fatal(err)
			}
			if _, err := pool.Exec(ctx, "INSERT INTO "+table+" ("+cols+") "+groupBy); err != nil {
				t.Fatalf("fill %s: %v", table, err)
			}
		}
	}
}
