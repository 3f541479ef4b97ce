package store

import (
	"context"
	"fmt"
	"sort"
	"time"

	"github.com/jackc/pgx/v5"
)

// day is the length of a partition: one UTC day (DESIGN.md "Time").
const day = 24 * time.Hour

// dayOf is the UTC midnight starting t's day. Go's zero time is a UTC
// midnight and days have no leap seconds, so Truncate aligns to UTC days.
func dayOf(t time.Time) time.Time { return t.UTC().Truncate(day) }

// partitionName is <table>_pYYYYMMDD for the UTC day starting at d.
func partitionName(table string, d time.Time) string {
	return table + "_p" + d.UTC().Format("20060102")
}

func (s *Store) known(name string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.parts[name]
}

func (s *Store) setKnown(name string, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if ok {
		s.parts[name] = true
	} else {
		delete(s.parts, name)
	}
}

// forget drops every cached partition of t, so the next write re-checks them
// (after an error, e.g. a partition dropped under us).
func (s *Store) forget(t *table) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for n := range s.parts {
		if len(n) > len(t.name)+2 && n[:len(t.name)+2] == t.name+"_p" {
			delete(s.parts, n)
		}
	}
}

// ensurePartitions creates the partitions of t for days that are not known
// to exist, in ascending order, and returns the names of all of days.
func (s *Store) ensurePartitions(ctx context.Context, t *table, days map[time.Time]struct{}) ([]string, error) {
	ds := make([]time.Time, 0, len(days))
	for d := range days {
		ds = append(ds, d)
	}
	sort.Slice(ds, func(i, j int) bool { return ds[i].Before(ds[j]) })
	names := make([]string, 0, len(ds))
	for _, d := range ds {
		name := partitionName(t.name, d)
		names = append(names, name)
		if s.known(name) {
			continue
		}
		if err := s.createPartition(ctx, t, d, name); err != nil {
			return nil, err
		}
		s.setKnown(name, true)
	}
	return names, nil
}

// createPartition creates t's partition for the day d unless it exists and
// records it in the partitions table. Sinks racing on the same day serialise
// on a transaction advisory lock keyed by schema and partition name, which
// retention takes too.
func (s *Store) createPartition(ctx context.Context, t *table, d time.Time, name string) error {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return fmt.Errorf("create partition %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '.' || $1::text, 0))", name); err != nil {
		return fmt.Errorf("create partition %s: lock: %w", name, err)
	}
	var exists bool
	if err := tx.QueryRow(ctx, "SELECT to_regclass($1) IS NOT NULL", name).Scan(&exists); err != nil {
		return fmt.Errorf("create partition %s: %w", name, err)
	}
	from, to := d.UTC(), d.UTC().Add(day)
	if !exists {
		q := fmt.Sprintf("CREATE TABLE IF NOT EXISTS %s PARTITION OF %s FOR VALUES FROM ('%s') TO ('%s')",
			pgx.Identifier{name}.Sanitize(), pgx.Identifier{t.name}.Sanitize(),
			from.Format("2006-01-02 15:04:05Z07:00"), to.Format("2006-01-02 15:04:05Z07:00"))
		if _, err := tx.Exec(ctx, q); err != nil {
			return fmt.Errorf("create partition %s: %w", name, err)
		}
	}
	if _, err := tx.Exec(ctx, `INSERT INTO partitions (name, parent, range_start, range_end, last_write)
		VALUES ($1, $2, $3, $4, now())
		ON CONFLICT (name) DO UPDATE SET last_write = now()`, name, t.name, from, to); err != nil {
		return fmt.Errorf("create partition %s: record: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return fmt.Errorf("create partition %s: commit: %w", name, err)
	}
	if !exists {
		s.metrics.PartitionsCreated.WithLabelValues(t.name).Inc()
		s.log.Info("partition created", "table", t.name, "partition", name)
	}
	return nil
}

// Retention is how long each table keeps its partitions; 0 keeps forever.
type Retention struct {
	Flows   time.Duration
	Alerts  time.Duration
	Metrics time.Duration
	Rollups time.Duration // flows_, talkers_, pairs_, ports_, countries_ 1m, 1h and 1d
	// capture_stats follows Metrics.
}

// DropExpired drops every partition recorded in the partitions table whose
// time range ended and whose last write happened more than its table's
// retention before now (DESIGN.md "Time": a replayed 2010 capture written
// today stays until today's window passes). It returns the names dropped.
func (s *Store) DropExpired(ctx context.Context, r Retention, now time.Time) ([]string, error) {
	var dropped []string
	type tableWindow struct {
		t *table
		w time.Duration
	}
	tws := []tableWindow{{flowsTable, r.Flows}, {alertsTable, r.Alerts}, {metricsTable, r.Metrics}, {captureTable, r.Metrics}}
	for _, t := range rollupTables {
		tws = append(tws, tableWindow{t, r.Rollups})
	}
	for _, tw := range tws {
		if tw.w <= 0 {
			continue
		}
		cutoff := now.Add(-tw.w)
		rows, err := s.pool.Query(ctx, `SELECT name FROM partitions
			WHERE parent = $1 AND range_end <= $2 AND last_write < $2 ORDER BY range_start`, tw.t.name, cutoff)
		if err != nil {
			return dropped, fmt.Errorf("list expired partitions of %s: %w", tw.t.name, err)
		}
		names, err := pgx.CollectRows(rows, pgx.RowTo[string])
		if err != nil {
			return dropped, fmt.Errorf("list expired partitions of %s: %w", tw.t.name, err)
		}
		for _, name := range names {
			ok, err := s.dropPartition(ctx, tw.t, name, cutoff)
			if err != nil {
				return dropped, err
			}
			if ok {
				dropped = append(dropped, name)
			}
		}
	}
	return dropped, nil
}

// dropPartition drops name if, under the partition's advisory lock and the
// partitions row lock, it is still expired at cutoff. A writer that updated
// last_write in the meantime keeps it.
func (s *Store) dropPartition(ctx context.Context, t *table, name string, cutoff time.Time) (bool, error) {
	tx, err := s.pool.Begin(ctx)
	if err != nil {
		return false, fmt.Errorf("drop partition %s: %w", name, err)
	}
	defer tx.Rollback(ctx)
	if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock(hashtextextended(current_schema() || '.' || $1::text, 0))", name); err != nil {
		return false, fmt.Errorf("drop partition %s: lock: %w", name, err)
	}
	var still bool
	err = tx.QueryRow(ctx, `SELECT true FROM partitions
		WHERE name = $1 AND range_end <= $2 AND last_write < $2 FOR UPDATE`, name, cutoff).Scan(&still)
	if err == pgx.ErrNoRows {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("drop partition %s: %w", name, err)
	}
	s.setKnown(name, false)
	if _, err := tx.Exec(ctx, "DROP TABLE IF EXISTS "+pgx.Identifier{name}.Sanitize()); err != nil {
		return false, fmt.Errorf("drop partition %s: %w", name, err)
	}
	if _, err := tx.Exec(ctx, "DELETE FROM partitions WHERE name = $1", name); err != nil {
		return false, fmt.Errorf("drop partition %s: forget: %w", name, err)
	}
	if err := tx.Commit(ctx); err != nil {
		return false, fmt.Errorf("drop partition %s: commit: %w", name, err)
	}
	s.setKnown(name, false)
	s.metrics.PartitionsDropped.WithLabelValues(t.name).Inc()
	s.log.Info("partition dropped", "table", t.name, "partition", name)
	return true, nil
}
