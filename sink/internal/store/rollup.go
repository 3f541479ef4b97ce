package store

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
)

// This file keeps the rollups (migrations 00003, 00006, 00009 and 00011),
// each in three tiers: per minute (_1m, column minute), per hour (_1h,
// column hour) and per day (_1d, column day), all UTC and of the record's
// start:
//
//	flows_1m     (minute, sensor, proto, app)                   records, orig/resp pkts, ip bytes, payload bytes
//	talkers_1m   (minute, sensor, addr)                         sent/recv pkts and ip bytes, records
//	pairs_1m     (minute, sensor, orig_addr, resp_addr, proto)  orig/resp pkts and ip bytes, records
//	ports_1m     (minute, sensor, proto, resp_port)             orig/resp pkts and ip bytes, records
//	countries_1m (minute, sensor, country)                      sent/recv pkts and ip bytes, records
//
// In talkers_* an address counts in both roles: as originator it sent orig_*
// and received resp_*, as responder the reverse; records counts the flow
// records it appears in, once when it is both originator and responder. In
// countries_* a record adds to each distinct country of its ends ('' when
// unknown) once: in the originator's role (sent orig_*, received resp_*),
// and in the responder's role (sent resp_*, received orig_*) when the
// responder's country differs.
//
// Since 00011 the rollups are not written by the transaction that copies a
// batch into flows: that transaction stamps its rows with a batch number
// (sequence flow_batch) and records the number in rollup_pending. The rollup
// job (Rollup, one at a time across sinks: a transaction advisory lock) adds
// the flows of the pending batches to every table of every tier with one
// INSERT … SELECT … GROUP BY … ON CONFLICT DO UPDATE per rollup (its three
// tiers in one statement) and deletes those batches from rollup_pending, in
// one transaction. So each rollup equals a GROUP BY over the flows of the
// batches no longer pending: a redelivered row is not inserted again (its
// row keeps its first batch), a crash before the job's commit leaves the
// batches pending, and after it they are gone with their rollups committed.
// The rollups lag the flows by the job's period (rollupPeriod) plus its run
// time; netwatch_sink_rollup_lag_seconds shows it.

// tier is one granularity of the rollups: a table suffix, the name of the
// time column and the date_bin width of a bucket.
type tier struct {
	suffix string // "_1m", "_1h", "_1d"
	col    string // "minute", "hour", "day"
	width  string // "1 minute", ...
}

// tiers are the rollup tiers, finest first.
var tiers = []tier{{"_1m", "minute", "1 minute"}, {"_1h", "hour", "1 hour"}, {"_1d", "day", "1 day"}}

// rollupPeriod is how often the rollup job looks for pending batches when no
// write of this store woke it (another sink's batches, a crashed sink's).
const rollupPeriod = time.Second

// rollupMaxBatches bounds the batches one run of the job takes.
const rollupMaxBatches = 64

// rollupSource is the per-session TEMP table the job fills with the
// pending batches' flows (only the columns the rollups read), so that each
// rollup reads them once, not flows.
const rollupSource = `CREATE TEMP TABLE IF NOT EXISTS rollup_src (
	start timestamptz, sensor text, proto smallint, app text, orig_addr inet, resp_addr inet, resp_port integer,
	orig_country text, resp_country text, orig_pkts bigint, resp_pkts bigint, orig_ip_bytes bigint, resp_ip_bytes bigint,
	orig_bytes bigint, resp_bytes bigint) ON COMMIT DELETE ROWS`

// fillRollupSource copies the rollup columns of the pending batches' flows
// into rollup_src. app and the countries are NULL when unknown since migration 00013 ("" in
// rows stored before): the rollups key both as "" (COALESCE).
const fillRollupSource = `INSERT INTO rollup_src SELECT start, sensor, proto, COALESCE(app, ''), orig_addr, resp_addr, resp_port,
	COALESCE(orig_country, ''), COALESCE(resp_country, ''), orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, orig_bytes, resp_bytes
	FROM flows WHERE batch = ANY($1) AND start >= $2 AND start <= $3`

// rollupSpec is one rollup: its base name, key columns, counter columns,
// and the SELECT over rollup_src giving, per row, the minute (column t), the
// keys and the counters to add.
type rollupSpec struct {
	base     string
	keys     []string
	counters []string
	rows     string
}

var rollupSpecs = []rollupSpec{
	{"flows", []string{"sensor", "proto", "app"},
		[]string{"records", "orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes", "orig_bytes", "resp_bytes"},
		`SELECT start t, sensor, proto, app, 1::bigint records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
			orig_bytes, resp_bytes FROM rollup_src`},
	{"talkers", []string{"sensor", "addr"},
		[]string{"sent_pkts", "sent_ip_bytes", "recv_pkts", "recv_ip_bytes", "records"},
		`SELECT start t, sensor, orig_addr addr, orig_pkts sent_pkts, orig_ip_bytes sent_ip_bytes, resp_pkts recv_pkts,
			resp_ip_bytes recv_ip_bytes, 1::bigint records FROM rollup_src
		UNION ALL
		SELECT start, sensor, resp_addr, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes,
			CASE WHEN resp_addr = orig_addr THEN 0::bigint ELSE 1::bigint END FROM rollup_src`},
	{"pairs", []string{"sensor", "orig_addr", "resp_addr", "proto"},
		[]string{"orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes", "records"},
		`SELECT start t, sensor, orig_addr, resp_addr, proto, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
			1::bigint records FROM rollup_src`},
	{"ports", []string{"sensor", "proto", "resp_port"},
		[]string{"orig_pkts", "resp_pkts", "orig_ip_bytes", "resp_ip_bytes", "records"},
		`SELECT start t, sensor, proto, resp_port, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
			1::bigint records FROM rollup_src`},
	{"countries", []string{"sensor", "country"},
		[]string{"sent_pkts", "sent_ip_bytes", "recv_pkts", "recv_ip_bytes", "records"},
		`SELECT start t, sensor, orig_country country, orig_pkts sent_pkts, orig_ip_bytes sent_ip_bytes,
			resp_pkts recv_pkts, resp_ip_bytes recv_ip_bytes, 1::bigint records FROM rollup_src
		UNION ALL
		SELECT start, sensor, resp_country, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes, 1::bigint
			FROM rollup_src WHERE resp_country <> orig_country`},
}

// sql is the statement that adds rollup_src to every tier of r: the
// per-minute sums once (CTE m), inserted into _1m and summed again into the
// hours and days, each INSERT in key order with ON CONFLICT DO UPDATE adding
// the counters.
func (r rollupSpec) sql() string {
	keys := strings.Join(r.keys, ", ")
	var sums, plus []string
	for _, c := range r.counters {
		sums = append(sums, "sum_int8("+c+") "+c)
		plus = append(plus, c+" = x."+c+" + EXCLUDED."+c)
	}
	all := keys + ", " + strings.Join(r.counters, ", ")
	groupBy := func(n int) string {
		g := make([]string, n)
		for i := range g {
			g[i] = fmt.Sprint(i + 1)
		}
		return strings.Join(g, ", ")
	}(len(r.keys) + 1)
	var b strings.Builder
	fmt.Fprintf(&b, "WITH m AS (SELECT date_bin('1 minute', t, timestamptz '2000-01-01 00:00:00+00') bucket, %s, %s FROM (%s) s GROUP BY %s)",
		keys, strings.Join(sums, ", "), r.rows, groupBy)
	for i, t := range tiers {
		ins := fmt.Sprintf("INSERT INTO %s%s AS x (%s, %s) SELECT date_bin('%s', bucket, timestamptz '2000-01-01 00:00:00+00'), %s, %s FROM m GROUP BY %s ORDER BY %s ON CONFLICT (%s, %s) DO UPDATE SET %s",
			r.base, t.suffix, t.col, all, t.width, keys, strings.Join(sums, ", "), groupBy, groupBy, t.col, keys, strings.Join(plus, ", "))
		if i < len(tiers)-1 {
			fmt.Fprintf(&b, ", i%d AS (%s RETURNING 1)", i, ins)
		} else {
			b.WriteString(" " + ins)
		}
	}
	return b.String()
}

// rollupSQL are the rollupSpecs' statements, in rollupTables order.
var rollupSQL = func() []string {
	var q []string
	for _, r := range rollupSpecs {
		q = append(q, r.sql())
	}
	return q
}()

// pendingBatch is one row of rollup_pending.
type pendingBatch struct {
	batch  int64
	days   []time.Time
	lo, hi time.Time
}

// Rollup runs the rollup job once: it adds the flows of up to
// rollupMaxBatches pending batches (oldest first) to every rollup of every
// tier and removes them from rollup_pending, in one transaction. It returns
// the number of batches rolled up: 0 when none is pending or another sink's
// job holds the lock. An error leaves the batches pending.
func (s *Store) Rollup(ctx context.Context) (int, error) {
	var pend []pendingBatch
	rows, err := s.pool.Query(ctx, `SELECT batch, days, lo, hi FROM rollup_pending ORDER BY batch LIMIT $1`, rollupMaxBatches)
	if err != nil {
		return 0, fmt.Errorf("rollup: list pending: %w", err)
	}
	for rows.Next() {
		var p pendingBatch
		if err := rows.Scan(&p.batch, &p.days, &p.lo, &p.hi); err != nil {
			rows.Close()
			return 0, fmt.Errorf("rollup: list pending: %w", err)
		}
		pend = append(pend, p)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return 0, fmt.Errorf("rollup: list pending: %w", err)
	}
	if len(pend) == 0 {
		s.metrics.RollupLag.Set(0)
		return 0, nil
	}
	days := map[time.Time]struct{}{}
	ids := make([]int64, 0, len(pend))
	lo, hi := pend[0].lo, pend[0].hi
	for _, p := range pend {
		for _, d := range p.days {
			days[dayOf(d)] = struct{}{}
		}
		ids = append(ids, p.batch)
		if p.lo.Before(lo) {
			lo = p.lo
		}
		if p.hi.After(hi) {
			hi = p.hi
		}
	}
	var names []string
	for _, t := range rollupTables {
		more, err := s.ensurePartitions(ctx, t, days)
		if err != nil {
			return 0, fmt.Errorf("rollup: %w", err)
		}
		names = append(names, more...)
	}
	n, err := s.rollupTx(ctx, ids, lo, hi, names)
	if err != nil {
		for _, t := range rollupTables {
			s.forget(t)
		}
		return 0, err
	}
	return n, nil
}

func (s *Store) rollupTx(ctx context.Context, ids []int64, lo, hi time.Time, parts []string) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("rollup: begin: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '.rollup_pending', 0))`).Scan(&locked); err != nil {
		return 0, fmt.Errorf("rollup: lock: %w", err)
	}
	if !locked {
		return 0, nil // another sink's job runs
	}
	// The batches still pending (another job may have taken some since).
	var still []int64
	var queued *time.Time
	if err := tx.QueryRow(ctx, `SELECT coalesce(array_agg(batch ORDER BY batch), '{}'), min(queued) FROM rollup_pending
		WHERE batch = ANY($1)`, ids).Scan(&still, &queued); err != nil {
		return 0, fmt.Errorf("rollup: pending: %w", err)
	}
	if len(still) == 0 {
		return 0, nil
	}
	if err := lockPartitions(ctx, tx, parts); err != nil {
		return 0, fmt.Errorf("rollup: %w", err)
	}
	// The job's sorts and hash aggregates hold a few hundred thousand rows:
	// in memory, not spilled to disk (the default work_mem is 4 MB). Its
	// commit need not wait for the WAL flush: a commit lost in a crash
	// loses the rollups and the ledger rows' deletion together, so the
	// batches are pending again and rolled up once (never twice).
	if _, err := tx.Exec(ctx, `SET LOCAL work_mem = '256MB'; SET LOCAL synchronous_commit = off`); err != nil {
		return 0, fmt.Errorf("rollup: settings: %w", err)
	}
	if _, err := tx.Exec(ctx, fillRollupSource, still, lo, hi); err != nil {
		return 0, fmt.Errorf("rollup: read flows: %w", err)
	}
	var b pgx.Batch
	for _, q := range rollupSQL {
		b.Queue(q)
	}
	b.Queue(`DELETE FROM rollup_pending WHERE batch = ANY($1)`, still)
	b.Queue(`UPDATE partitions SET last_write = now() WHERE name = ANY($1)`, parts)
	if err := tx.SendBatch(ctx, &b).Close(); err != nil {
		return 0, fmt.Errorf("rollup: %w", err)
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("rollup: commit: %w", err)
	}
	s.metrics.RollupBatches.Add(float64(len(still)))
	if queued != nil {
		s.metrics.RollupLag.Set(time.Since(*queued).Seconds())
	}
	return len(still), nil
}

// indexPeriod is how often the loop summarises the flows indexes
// (SummarizeFlowIndexes).
const indexPeriod = 10 * time.Second

// summarizeFlowIndexes brings the indexes of the flows partitions written
// in the last 10 minutes up to date: brin_summarize_new_values for each BRIN
// index (a page range filled since is otherwise read in full by every search
// on id, Community ID, start or batch until autovacuum summarises it) and
// gin_clean_pending_list for the GIN index on the addresses (whose pending
// list every address search otherwise reads). A lock held by autovacuum
// makes it skip (lock_timeout), not wait.
const summarizeFlowIndexes = `SELECT count(CASE am.amname WHEN 'brin' THEN brin_summarize_new_values(x.indexrelid)
		WHEN 'gin' THEN gin_clean_pending_list(x.indexrelid) END)
	FROM partitions p JOIN pg_index x ON x.indrelid = to_regclass(p.name)
	JOIN pg_class c ON c.oid = x.indexrelid JOIN pg_am am ON am.oid = c.relam
	WHERE p.parent = 'flows' AND p.last_write > now() - interval '10 minutes' AND am.amname IN ('brin', 'gin')`

// SummarizeFlowIndexes runs summarizeFlowIndexes (the rollup loop does,
// every indexPeriod; one sink at a time: a transaction advisory lock).
func (s *Store) SummarizeFlowIndexes(ctx context.Context) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("summarize flow indexes: %w", err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	var locked bool
	if err := tx.QueryRow(ctx, `SELECT pg_try_advisory_xact_lock(hashtextextended(current_schema() || '.summarize flows', 0))`).Scan(&locked); err != nil {
		return fmt.Errorf("summarize flow indexes: %w", err)
	}
	if !locked {
		return nil
	}
	if _, err := tx.Exec(ctx, `SET LOCAL lock_timeout = '200ms'`); err != nil {
		return fmt.Errorf("summarize flow indexes: %w", err)
	}
	if _, err := tx.Exec(ctx, summarizeFlowIndexes); err != nil {
		return fmt.Errorf("summarize flow indexes: %w", err)
	}
	return tx.Commit(ctx)
}

// rollupLoop runs the rollup job until ctx ends: after each flows write of
// this store (kick) and every rollupPeriod, as long as batches are pending;
// and every indexPeriod SummarizeFlowIndexes.
func (s *Store) rollupLoop(ctx context.Context) {
	defer close(s.rollupDone)
	t := time.NewTicker(rollupPeriod)
	defer t.Stop()
	ti := time.NewTicker(indexPeriod)
	defer ti.Stop()
	// A database outage fails every run (each second): one warning in 10 s,
	// and one line when the job runs again.
	var failing int // runs failed since the last warning
	var warned time.Time
	down := false
	for {
		select {
		case <-ctx.Done():
			return
		case <-ti.C:
			if err := s.SummarizeFlowIndexes(ctx); err != nil && ctx.Err() == nil {
				s.log.Warn("summarizing the flows indexes failed", "err", err)
			}
			continue
		case <-s.rollupKick:
		case <-t.C:
		}
		for ctx.Err() == nil && !s.rollupPaused.Load() {
			n, err := s.Rollup(ctx)
			if err != nil {
				if !errors.Is(err, context.Canceled) {
					failing, down = failing+1, true
					if time.Since(warned) >= 10*time.Second {
						s.log.Warn("rollup job failed; the batches stay pending", "err", err, "failed_runs", failing)
						warned, failing = time.Now(), 0
					}
				}
				break
			}
			if down {
				s.log.Info("rollup job runs again", "failed_runs_since_warning", failing)
				failing, warned, down = 0, time.Time{}, false
			}
			if n == 0 {
				break
			}
		}
	}
}

// kickRollup wakes the rollup job.
func (s *Store) kickRollup() {
	select {
	case s.rollupKick <- struct{}{}:
	default:
	}
}
