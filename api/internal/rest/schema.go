package rest

import (
	"context"
	"sync"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
)

// dbSchema is which of the tables and columns the api reads exist in the
// database. The sink owns the migrations; the api works against an older
// schema too: a context column (GeoIP, JA3, …: migration 00004) that does
// not exist reads as its default, alerts without a status column (00005)
// are all open and cannot be acknowledged (503), a missing rollup table
// (00006) sends the statistics to the flows table, and without the hourly
// and daily tiers (00009) the statistics read the per-minute rollups only
// (countries then come from flows: countries_1m counted a record within one
// country twice before 00009).
type dbSchema struct {
	cols    map[string]bool // "table.column"
	sumInt8 bool            // the aggregate sum_int8(bigint) exists (sink migration 00010)
	addrGIN bool            // the GIN index on ARRAY[orig_addr, resp_addr] exists (sink migration 00012)
}

// sum is the SQL sum of the bigint expression x as a bigint: sum_int8 (no
// numeric accumulator, about twice as fast; an overflow is an error) when
// the database has it, else sum()::bigint.
func (s *dbSchema) sum(x string) string {
	if s != nil && s.sumInt8 {
		return "sum_int8(" + x + ")"
	}
	return "sum(" + x + ")::bigint"
}

// compact reports whether flows has the layout of sink migration 00011: id
// uuid, community_id bytea (StoredCommunityID), a batch column.
func (s *dbSchema) compact() bool { return s != nil && s.cols["flows.batch"] }

// has reports whether table.column exists; a nil schema (not probed) says yes.
func (s *dbSchema) has(table, column string) bool {
	return s == nil || s.cols[table+"."+column]
}

// hasTable reports whether table exists.
func (s *dbSchema) hasTable(table string) bool {
	return s == nil || s.cols[table+"."]
}

// col is column when table has it, else def (an SQL expression).
func (s *dbSchema) col(table, column, def string) string {
	if s.has(table, column) {
		return column
	}
	return def
}

// val is column when table has it, NULL read as def (COALESCE: since
// sink migration 00013 an unknown value of an optional flows column is
// NULL, "" / 0 / false in rows stored before), else def.
func (s *dbSchema) val(table, column, def string) string {
	if s.has(table, column) {
		return "COALESCE(" + column + ", " + def + ")"
	}
	return def
}

// rolledTables are the tables whose columns schemaOf probes: flows, alerts
// and every tier of the rollups (sink migrations 00003, 00006, 00009).
var rolledTables = func() []string {
	ts := []string{"flows", "alerts"}
	for _, b := range []string{"flows", "talkers", "pairs", "ports", "countries"} {
		for _, t := range rollupTiers {
			ts = append(ts, b+t.suffix)
		}
	}
	return ts
}()

// schemaTTL is how long a probe is trusted: the sink may migrate after the
// api started.
const schemaTTL = 15 * time.Second

type schemaEntry struct {
	mu  sync.Mutex
	s   *dbSchema
	at  time.Time
	err error
}

var schemas sync.Map // *pgxpool.Pool -> *schemaEntry

// schemaOf probes (at most every schemaTTL) the tables of the api's
// queries in the pool's current schema.
func schemaOf(ctx context.Context, pool *pgxpool.Pool) (*dbSchema, error) {
	v, _ := schemas.LoadOrStore(pool, &schemaEntry{})
	e := v.(*schemaEntry)
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.s != nil && time.Since(e.at) < schemaTTL {
		return e.s, nil
	}
	rows, err := pool.Query(ctx, `SELECT table_name, column_name FROM information_schema.columns
		WHERE table_schema = current_schema() AND table_name = ANY($1)`,
		rolledTables)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	s := &dbSchema{cols: map[string]bool{}}
	for rows.Next() {
		var t, c string
		if err := rows.Scan(&t, &c); err != nil {
			return nil, err
		}
		s.cols[t+"."+c] = true
		s.cols[t+"."] = true
	}
	if err := rows.Err(); err != nil {
		return nil, err
	}
	if err := pool.QueryRow(ctx, "SELECT to_regprocedure('sum_int8(bigint)') IS NOT NULL, to_regclass('flows_addrs_gin') IS NOT NULL").
		Scan(&s.sumInt8, &s.addrGIN); err != nil {
		return nil, err
	}
	e.s, e.at = s, time.Now()
	return s, nil
}
