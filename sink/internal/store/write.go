package store

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"

	"netwatch/schema/pb"
)

// Result is what one write did.
type Result struct {
	Rows     int // rows staged
	Inserted int // rows new to the table; Rows - Inserted were already stored
	Invalid  int // records skipped because they can never be stored (no id, bad address, a number out of range: validFlow)
}

// WriteFlows stores the flows of batches in one transaction: partitions for
// their start days, the rows stamped with a new batch number (sequence
// flow_batch), the batch in rollup_pending (the rollup job adds its rows to
// the rollups later: rollup.go), last_write of the partitions and the
// sensors rows. When it returns nil everything is committed; otherwise
// nothing is.
//
// The rows are encoded straight into a binary COPY stream. The fast path
// copies them directly into flows; a redelivered row makes that COPY fail
// with unique_violation, and the batch is then written again through the
// staging table with INSERT … ON CONFLICT DO NOTHING, so only the new rows
// carry this batch's number (a row already stored keeps its own, and is
// never rolled up twice). After a batch with duplicates the next batch goes
// the staging way directly, until one has none again (a redelivery comes in
// runs).
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
	defer s.kickRollup()
	if !s.flowDups.Load() {
		res.Inserted, err = s.commitFlows(ctx, b, names, true)
		if err == nil {
			return res, nil
		}
		if !isUniqueViolation(err) {
			// A partition may have been dropped under the cache: re-check next time.
			s.forget(flowsTable)
			return res, err
		}
		s.flowDups.Store(true)
	}
	res.Inserted, err = s.commitFlows(ctx, b, names, false)
	if err != nil {
		s.forget(flowsTable)
		return res, err
	}
	s.flowDups.Store(res.Inserted < res.Rows)
	return res, nil
}

// flowBatch is flows encoded for COPY plus what the write needs besides
// them. Its buffers are reused from batch to batch (Store.flowBufs).
type flowBatch struct {
	copy    copyBuf
	offsets []int // of the rows in copy
	rows    int
	invalid int
	days    map[time.Time]struct{}
	sensors map[string]*sensorSeen
	lo, hi  int64 // earliest and latest start, Unix microseconds
}

func newFlowBatch() *flowBatch {
	return &flowBatch{days: map[time.Time]struct{}{}, sensors: map[string]*sensorSeen{}}
}

func (b *flowBatch) reset() {
	b.copy.reset()
	b.offsets = b.offsets[:0]
	b.rows, b.invalid = 0, 0
	clear(b.days)
	clear(b.sensors)
	// A rare huge batch must not pin its buffer forever.
	if cap(b.copy.b) > 64<<20 {
		b.copy.b = append([]byte(nil), copySignature...)
		b.offsets = nil
	}
}

// addFlows appends fb's flows. A flow without a 32-hex-digit id or with an
// address that is not 4 or 16 bytes is skipped and counted in invalid.
func (b *flowBatch) addFlows(fb *pb.FlowBatch) {
	for _, f := range fb.GetFlows() {
		if !validFlow(f) {
			b.invalid++
			continue
		}
		sensor := f.GetSensor()
		if sensor == "" {
			sensor = fb.GetSensor()
		}
		sensor = text(sensor)
		start, end := micros(f.GetStartNs()), micros(f.GetEndNs())
		flowStart := start
		if f.GetFlowStartNs() != 0 {
			flowStart = micros(f.GetFlowStartNs())
		}
		b.offsets = append(b.offsets, b.copy.flowRow(f, sensor, start, end, flowStart))
		if b.rows == 0 || start < b.lo {
			b.lo = start
		}
		if b.rows == 0 || start > b.hi {
			b.hi = start
		}
		b.rows++

		b.days[dayOf(ts(f.GetStartNs()))] = struct{}{}
		s := b.sensors[sensor]
		if s == nil {
			s = &sensorSeen{}
			b.sensors[sensor] = s
		}
		if e := ts(f.GetEndNs()); e.After(s.lastFlow) {
			s.lastFlow = e
		}
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
	var batch int64
	var held int
	if err := tx.QueryRow(ctx, `SELECT nextval('flow_batch'), (SELECT count(*) FROM (SELECT 1 FROM partitions
		WHERE name = ANY($1) FOR KEY SHARE) p)`, parts).Scan(&batch, &held); err != nil {
		return 0, fmt.Errorf("write %d flows: lock partitions: %w", b.rows, err)
	}
	if held != len(parts) {
		return 0, fmt.Errorf("write %d flows: %d of partitions %v are not recorded (dropped concurrently?)", b.rows, len(parts)-held, parts)
	}
	b.copy.setBatch(b.offsets, batch)
	var inserted int
	if fast {
		tag, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b.copy.b), copyFlows)
		if err != nil {
			return 0, fmt.Errorf("write %d flows: copy: %w", b.rows, err)
		}
		if inserted = int(tag.RowsAffected()); inserted != b.rows {
			return 0, fmt.Errorf("write %d flows: copy stored %d rows", b.rows, inserted)
		}
	} else {
		if _, err := tx.Conn().PgConn().CopyFrom(ctx, bytes.NewReader(b.copy.b), copyFlowsStage); err != nil {
			return 0, fmt.Errorf("write %d flows: copy: %w", b.rows, err)
		}
		tag, err := tx.Exec(ctx, flowsTable.ins)
		if err != nil {
			return 0, fmt.Errorf("write %d flows: insert: %w", b.rows, err)
		}
		inserted = int(tag.RowsAffected())
	}
	if inserted > 0 {
		days := make([]time.Time, 0, len(b.days))
		for d := range b.days {
			days = append(days, d)
		}
		if _, err := tx.Exec(ctx, `INSERT INTO rollup_pending (batch, days, lo, hi) VALUES ($1, $2, $3, $4)`,
			batch, days, utcMicro(b.lo), utcMicro(b.hi)); err != nil {
			return 0, fmt.Errorf("write %d flows: rollup_pending: %w", b.rows, err)
		}
	}
	if err := finish(ctx, tx, parts, b.sensors); err != nil {
		return 0, fmt.Errorf("write %d flows: %w", b.rows, err)
	}
	return inserted, nil
}

func utcMicro(us int64) time.Time { return time.UnixMicro(us).UTC() }

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

// upsertSensor keeps a sensors row ($1 sensor, $2 host or ”, $3 newest
// flow end or NULL): last_flow_at (00011) is when last_flow last rose.
const upsertSensor = `INSERT INTO sensors AS s (sensor, host, first_seen, last_seen, last_flow, last_flow_at)
VALUES ($1, $2, now(), now(), $3, CASE WHEN $3::timestamptz IS NOT NULL THEN now() END)
ON CONFLICT (sensor) DO UPDATE SET
	last_seen = now(),
	host = CASE WHEN EXCLUDED.host <> '' THEN EXCLUDED.host ELSE s.host END,
	last_flow = GREATEST(s.last_flow, EXCLUDED.last_flow),
	last_flow_at = CASE WHEN EXCLUDED.last_flow > s.last_flow OR s.last_flow IS NULL AND EXCLUDED.last_flow IS NOT NULL
		THEN now() ELSE s.last_flow_at END`

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
