package store

import (
	"context"
	"fmt"
	"sort"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"netwatch/schema/pb"
)

// Result is what one write did.
type Result struct {
	Rows     int // rows staged
	Inserted int // rows new to the table; Rows - Inserted were already stored
	Invalid  int // records skipped because they can never be stored (no id, bad address)
}

// WriteFlows stores the flows of batches in one transaction: partitions for
// their start days, COPY into the staging table, INSERT … ON CONFLICT DO
// NOTHING on (start, id), last_write of the partitions and the sensors rows.
// When it returns nil everything is committed; otherwise nothing is.
func (s *Store) WriteFlows(ctx context.Context, batches []*pb.FlowBatch) (Result, error) {
	b := newRowBatch()
	for _, fb := range batches {
		b.addFlows(fb)
	}
	return s.write(ctx, flowsTable, b)
}

// WriteAlerts stores alerts like WriteFlows, keyed on (time, id).
func (s *Store) WriteAlerts(ctx context.Context, alerts []*pb.Alert) (Result, error) {
	b := newRowBatch()
	for _, a := range alerts {
		b.addAlert(a)
	}
	return s.write(ctx, alertsTable, b)
}

// WriteMetrics stores host metrics like WriteFlows, keyed on
// (time, sensor, boot, seq); the sensors rows get the samples' host.
func (s *Store) WriteMetrics(ctx context.Context, ms []*pb.Metrics) (Result, error) {
	b := newRowBatch()
	for _, m := range ms {
		b.addMetrics(m)
	}
	return s.write(ctx, metricsTable, b)
}

const upsertSensor = `INSERT INTO sensors AS s (sensor, host, first_seen, last_seen, last_flow)
VALUES ($1, $2, now(), now(), $3)
ON CONFLICT (sensor) DO UPDATE SET
	last_seen = now(),
	host = CASE WHEN EXCLUDED.host <> '' THEN EXCLUDED.host ELSE s.host END,
	last_flow = GREATEST(s.last_flow, EXCLUDED.last_flow)`

func (s *Store) write(ctx context.Context, t *table, b *rowBatch) (Result, error) {
	res := Result{Rows: len(b.rows), Invalid: b.invalid}
	if len(b.rows) == 0 {
		return res, nil
	}
	names, err := s.ensurePartitions(ctx, t, b.days)
	if err != nil {
		return res, err
	}
	if t.rollup != nil {
		more, err := s.ensurePartitions(ctx, t.rollup, b.days)
		if err != nil {
			return res, err
		}
		names = append(names, more...)
	}
	res.Inserted, err = s.commit(ctx, t, b, names)
	if err != nil {
		// A partition may have been dropped under the cache: re-check next time.
		s.forget(t)
		if t.rollup != nil {
			s.forget(t.rollup)
		}
		return res, err
	}
	return res, nil
}

func (s *Store) commit(ctx context.Context, t *table, b *rowBatch, parts []string) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("write %d %s: begin: %w", len(b.rows), t.name, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	// Hold the partitions rows (KEY SHARE: writers do not block each other)
	// so that retention cannot drop a partition this batch writes to; a
	// partition dropped before is missing here and the batch is retried.
	var held int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM partitions
		WHERE name = ANY($1) FOR KEY SHARE) p`, parts).Scan(&held); err != nil {
		return 0, fmt.Errorf("write %d %s: lock partitions: %w", len(b.rows), t.name, err)
	}
	if held != len(parts) {
		return 0, fmt.Errorf("write %d %s: %d of partitions %v are not recorded (dropped concurrently?)",
			len(b.rows), t.name, len(parts)-held, parts)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{t.stage}, t.cols, pgx.CopyFromRows(b.rows)); err != nil {
		return 0, fmt.Errorf("write %d %s: copy: %w", len(b.rows), t.name, err)
	}
	var inserted int
	if t.counted {
		err = tx.QueryRow(ctx, t.ins).Scan(&inserted)
	} else {
		var tag pgconn.CommandTag
		tag, err = tx.Exec(ctx, t.ins)
		inserted = int(tag.RowsAffected())
	}
	if err != nil {
		return 0, fmt.Errorf("write %d %s: insert: %w", len(b.rows), t.name, err)
	}
	// Lock order: partitions rows (sorted names), then sensors rows (sorted),
	// so that concurrent sinks never deadlock on each other.
	if _, err := tx.Exec(ctx, "UPDATE partitions SET last_write = now() WHERE name = ANY($1)", parts); err != nil {
		return 0, fmt.Errorf("write %d %s: partitions last_write: %w", len(b.rows), t.name, err)
	}
	sensors := make([]string, 0, len(b.sensors))
	for name := range b.sensors {
		if name != "" {
			sensors = append(sensors, name)
		}
	}
	sort.Strings(sensors)
	if len(sensors) > 0 {
		var batch pgx.Batch
		for _, name := range sensors {
			seen := b.sensors[name]
			var lastFlow any
			if !seen.lastFlow.IsZero() {
				lastFlow = seen.lastFlow
			}
			batch.Queue(upsertSensor, name, seen.host, lastFlow)
		}
		if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
			return 0, fmt.Errorf("write %d %s: sensors: %w", len(b.rows), t.name, err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return 0, fmt.Errorf("write %d %s: commit: %w", len(b.rows), t.name, err)
	}
	return inserted, nil
}
