package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"

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
// their start days, the rows, their rollups (every table of every tier:
// rollup.go), last_write
// of the partitions and the sensors rows. When it returns nil everything is
// committed; otherwise nothing is.
//
// The rows are encoded straight into a binary COPY stream. The fast path
// copies them directly into flows and adds the batch's rollups, summed here,
// in one statement; a redelivered row makes that COPY fail with
// unique_violation, and the batch is then written again through the staging
// table with INSERT … ON CONFLICT DO NOTHING, which adds to the rollups only
// the rows it inserts. After a batch with duplicates the next batch goes the
// staging way directly, until one has none again (a redelivery comes in runs).
func (s *Store) WriteFlows(ctx context.Context, batches []*pb.FlowBatch) (Result, error) {
	b := s.getFlowBatch()
	defer s.putFlowBatch(b)
	for _, fb := range batches {
		b.addFlows(fb)
	}
	res := Result{Rows: b.rows, Invalid: b.invalid}
	if b.rows == 0 {
		return res, nil
	}
	b.copy.trailer()
	names, err := s.ensurePartitions(ctx, flowsTable, b.days)
	if err != nil {
		return res, err
	}
	for _, t := range rollupTables {
		more, err := s.ensurePartitions(ctx, t, b.days)
		if err != nil {
			return res, err
		}
		names = append(names, more...)
	}
	if !s.flowDups.Load() {
		res.Inserted, err = s.commitFlows(ctx, b, names, true)
		if err == nil {
			return res, nil
		}
		if !isUniqueViolation(err) {
			// A partition may have been dropped under the cache: re-check next time.
			s.forgetFlows()
			return res, err
		}
		s.flowDups.Store(true)
	}
	res.Inserted, err = s.commitFlows(ctx, b, names, false)
	if err != nil {
		s.forgetFlows()
		return res, err
	}
	s.flowDups.Store(res.Inserted < res.Rows)
	return res, nil
}

// forgetFlows forgets the cached partitions of flows and its rollups.
func (s *Store) forgetFlows() {
	s.forget(flowsTable)
	for _, t := range rollupTables {
		s.forget(t)
	}
}

// getFlowBatch is an empty flowBatch, reusing the buffers of an earlier
// one. (A sync.Pool would lose them at every garbage collection.)
func (s *Store) getFlowBatch() *flowBatch {
	select {
	case b := <-s.flowBufs:
		b.reset()
		return b
	default:
		b := newFlowBatch()
		b.reset()
		return b
	}
}

func (s *Store) putFlowBatch(b *flowBatch) {
	select {
	case s.flowBufs <- b:
	default:
	}
}

// isUniqueViolation reports whether err is SQLSTATE 23505.
func isUniqueViolation(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "23505"
}

var (
	copyFlows      = "COPY flows (" + quotedCols(flowsTable.cols) + ") FROM STDIN (FORMAT binary)"
	copyFlowsStage = "COPY " + flowsTable.stage + " (" + quotedCols(flowsTable.cols) + ") FROM STDIN (FORMAT binary)"
)

func quotedCols(cols []string) string {
	q := make([]string, len(cols))
	for i, c := range cols {
		q[i] = `"` + c + `"`
	}
	return strings.Join(q, ", ")
}

// commitFlows writes b in one transaction, directly (fast: every row must be
// new, else unique_violation) or through the staging table, and returns the
// number of rows inserted.
func (s *Store) commitFlows(ctx context.Context, b *flowBatch, parts []string, fast bool) (int, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return 0, fmt.Errorf("write %d flows: begin: %w", b.rows, err)
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if err := lockPartitions(ctx, tx, parts); err != nil {
		return 0, fmt.Errorf("write %d flows: %w", b.rows, err)
	}
	var inserted int
	if fast {
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b.copy.b), copyFlows)
		if err != nil {
			return 0, fmt.Errorf("write %d flows: copy: %w", b.rows, err)
		}
		if inserted = int(tag.RowsAffected()); inserted != b.rows {
			return 0, fmt.Errorf("write %d flows: copy stored %d rows", b.rows, inserted)
		}
		b.sumAll()
	} else {
		if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b.copy.b), copyFlowsStage); err != nil {
			return 0, fmt.Errorf("write %d flows: copy: %w", b.rows, err)
		}
		rows, err := tx.Query(ctx, flowsTable.ins)
		if err != nil {
			return 0, fmt.Errorf("write %d flows: insert: %w", b.rows, err)
		}
		ids := make(map[string]struct{}, b.rows)
		var id string
		_, err = pgx.ForEachRow(rows, []any{&id}, func() error {
			ids[id] = struct{}{}
			return nil
		})
		if err != nil {
			return 0, fmt.Errorf("write %d flows: insert: %w", b.rows, err)
		}
		inserted = len(ids)
		b.sumInserted(ids)
	}
	var rb pgx.Batch
	b.queue(&rb)
	if rb.Len() > 0 {
		if err := tx.SendBatch(ctx, &rb).Close(); err != nil {
			return 0, fmt.Errorf("write %d flows: rollups: %w", b.rows, err)
		}
	}
	if err := finish(ctx, tx, parts, b.sensors); err != nil {
		return 0, fmt.Errorf("write %d flows: %w", b.rows, err)
	}
	return inserted, nil
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
	if len(b.childRows) > 0 {
		more, err := s.ensurePartitions(ctx, b.child, b.childDays)
		if err != nil {
			return res, err
		}
		names = append(names, more...)
	}
	res.Inserted, err = s.commit(ctx, t, b, names)
	if err != nil {
		// A partition may have been dropped under the cache: re-check next time.
		s.forget(t)
		if b.child != nil {
			s.forget(b.child)
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
	if err := lockPartitions(ctx, tx, parts); err != nil {
		return 0, fmt.Errorf("write %d %s: %w", len(b.rows), t.name, err)
	}
	if _, err := tx.CopyFrom(ctx, pgx.Identifier{t.stage}, t.cols, pgx.CopyFromRows(b.rows)); err != nil {
		return 0, fmt.Errorf("write %d %s: copy: %w", len(b.rows), t.name, err)
	}
	if t.pre != "" {
		if _, err := tx.Exec(ctx, t.pre); err != nil {
			return 0, fmt.Errorf("write %d %s: lock: %w", len(b.rows), t.name, err)
		}
	}
	tag, err := tx.Exec(ctx, t.ins)
	if err != nil {
		return 0, fmt.Errorf("write %d %s: insert: %w", len(b.rows), t.name, err)
	}
	inserted := int(tag.RowsAffected())
	if len(b.childRows) > 0 {
		c := b.child
		if _, err := tx.CopyFrom(ctx, pgx.Identifier{c.stage}, c.cols, pgx.CopyFromRows(b.childRows)); err != nil {
			return 0, fmt.Errorf("write %d %s: copy: %w", len(b.childRows), c.name, err)
		}
		if _, err := tx.Exec(ctx, c.ins); err != nil {
			return 0, fmt.Errorf("write %d %s: insert: %w", len(b.childRows), c.name, err)
		}
	}
	if err := finish(ctx, tx, parts, b.sensors); err != nil {
		return 0, fmt.Errorf("write %d %s: %w", len(b.rows), t.name, err)
	}
	return inserted, nil
}

// lockPartitions holds the partitions rows of parts (KEY SHARE: writers do
// not block each other) so that retention cannot drop a partition this
// transaction writes to; a partition dropped before is missing here and the
// batch is retried.
func lockPartitions(ctx context.Context, tx pgx.Tx, parts []string) error {
	var held int
	if err := tx.QueryRow(ctx, `SELECT count(*) FROM (SELECT 1 FROM partitions
		WHERE name = ANY($1) FOR KEY SHARE) p`, parts).Scan(&held); err != nil {
		return fmt.Errorf("lock partitions: %w", err)
	}
	if held != len(parts) {
		return fmt.Errorf("%d of partitions %v are not recorded (dropped concurrently?)", len(parts)-held, parts)
	}
	return nil
}

// finish sets last_write of parts, upserts the sensors rows and commits.
func finish(ctx context.Context, tx pgx.Tx, parts []string, seen map[string]*sensorSeen) error {
	// Lock order: partitions rows (sorted names), then sensors rows (sorted),
	// so that concurrent sinks never deadlock on each other.
	if _, err := tx.Exec(ctx, "UPDATE partitions SET last_write = now() WHERE name = ANY($1)", parts); err != nil {
		return fmt.Errorf("partitions last_write: %w", err)
	}
	sensors := make([]string, 0, len(seen))
	for name := range seen {
		if name != "" {
			sensors = append(sensors, name)
		}
	}
	sort.Strings(sensors)
	if len(sensors) > 0 {
		var batch pgx.Batch
		for _, name := range sensors {
			sn := seen[name]
			var lastFlow any
			if !sn.lastFlow.IsZero() {
				lastFlow = sn.lastFlow
			}
			batch.Queue(upsertSensor, name, sn.host, lastFlow)
		}
		if err := tx.SendBatch(ctx, &batch).Close(); err != nil {
			return fmt.Errorf("sensors: %w", err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("commit: %w", err)
	}
	return nil
}
