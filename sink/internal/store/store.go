// Package store is the sink's end of the pipeline: it migrates the netwatch
// PostgreSQL schema, creates one partition per UTC day on demand, writes
// batches of flows (binary COPY, with their per-minute rollups), alerts,
// host metrics and capture statistics idempotently (a redelivered message
// never duplicates a row nor adds to a rollup twice), parks messages given
// up on, and drops partitions past their retention.
//
// Every object is created unqualified, in the connection's current_schema(),
// so the store works in any schema named by the DSN's search_path.
package store

import (
	"context"
	"database/sql"
	"embed"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"log/slog"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgconn"
	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/jackc/pgx/v5/stdlib"
	"github.com/pressly/goose/v3"
	"github.com/pressly/goose/v3/lock"
	"github.com/prometheus/client_golang/prometheus"
)

//go:embed migrations/*.sql
var migrations embed.FS

// Migrate applies every pending migration in migrations/ to the schema the
// DSN selects (goose, versioned, embedded) and returns the versions applied.
// Several sinks starting together serialise on a session advisory lock keyed
// by the schema name. Running it again applies nothing. A database whose
// schema version is newer than this binary knows is an *ErrSchemaNewer.
func Migrate(ctx context.Context, dsn string, log *slog.Logger) ([]int64, error) {
	applied, _, err := MigrateVersion(ctx, dsn, log)
	return applied, err
}

// ErrSchemaNewer is the error of Migrate when the database was migrated by a
// newer sink: this binary must not write to a schema it does not know.
type ErrSchemaNewer struct {
	Database int64 // goose_db_version's highest version
	Known    int64 // the highest migration embedded in this binary
}

func (e *ErrSchemaNewer) Error() string {
	return fmt.Sprintf("database schema version %d is newer than this sink knows (%d): run a sink built with migration %d or later",
		e.Database, e.Known, e.Database)
}

// KnownVersion is the highest migration version embedded in this binary.
func KnownVersion() int64 {
	ents, _ := fs.ReadDir(migrations, "migrations")
	var v int64
	for _, e := range ents {
		if n, err := goose.NumericComponent(e.Name()); err == nil && n > v {
			v = n
		}
	}
	return v
}

// MigrateVersion is Migrate that also returns the schema version after it.
func MigrateVersion(ctx context.Context, dsn string, log *slog.Logger) (applied []int64, version int64, err error) {
	cfg, err := pgx.ParseConfig(dsn)
	if err != nil {
		return nil, 0, fmt.Errorf("parse database url: %w", err)
	}
	db := stdlib.OpenDB(*cfg)
	defer db.Close()
	var schemaName sql.NullString
	if err := db.QueryRowContext(ctx, "SELECT current_schema()").Scan(&schemaName); err != nil {
		return nil, 0, fmt.Errorf("migrate: query current schema: %w", err)
	}
	if !schemaName.Valid {
		return nil, 0, errors.New("migrate: no current schema: the search_path names no existing schema")
	}
	locker, err := lock.NewPostgresSessionLocker(lock.WithLockID(lockKey("goose:"+schemaName.String)),
		lock.WithLockTimeout(1, 600))
	if err != nil {
		return nil, 0, fmt.Errorf("migrate: %w", err)
	}
	sub, err := fs.Sub(migrations, "migrations")
	if err != nil {
		return nil, 0, fmt.Errorf("migrate: %w", err)
	}
	p, err := goose.NewProvider(goose.DialectPostgres, db, sub, goose.WithSessionLocker(locker),
		goose.WithDisableGlobalRegistry(true))
	if err != nil {
		return nil, 0, fmt.Errorf("migrate: %w", err)
	}
	cur, err := p.GetDBVersion(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("migrate: schema version: %w", err)
	}
	if known := KnownVersion(); cur > known {
		return nil, cur, &ErrSchemaNewer{Database: cur, Known: known}
	}
	res, err := p.Up(ctx)
	if err != nil {
		return nil, 0, fmt.Errorf("migrate: %w", err)
	}
	version = cur
	for _, r := range res {
		applied = append(applied, r.Source.Version)
		version = max(version, r.Source.Version)
		log.Info("migration applied", "version", r.Source.Version, "file", r.Source.Path, "duration", r.Duration)
	}
	return applied, version, nil
}

// lockKey is a 63-bit advisory-lock key for name (FNV-1a 64).
func lockKey(name string) int64 {
	h := fnv.New64a()
	h.Write([]byte(name))
	return int64(h.Sum64() >> 1)
}

// Metrics are the store's Prometheus metrics.
type Metrics struct {
	PartitionsCreated *prometheus.CounterVec // by table
	PartitionsDropped *prometheus.CounterVec // by table
	RollupBatches     prometheus.Counter     // flow batches added to the rollups by the rollup job
	RollupLag         prometheus.Gauge       // seconds: age of the oldest batch of the job's last run (0 when none pending)
}

// NewMetrics registers the store's metrics in reg.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		PartitionsCreated: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netwatch_sink_partitions_created_total", Help: "Day partitions created, by table."}, []string{"table"}),
		PartitionsDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "netwatch_sink_partitions_dropped_total", Help: "Day partitions dropped by retention, by table."}, []string{"table"}),
		RollupBatches: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "netwatch_sink_rollup_batches_total", Help: "Flow batches added to the rollups by this sink's rollup job."}),
		RollupLag: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "netwatch_sink_rollup_lag_seconds",
			Help: "Age of the oldest flow batch the rollup job last added to the rollups (0 when none was pending)."}),
	}
	if reg != nil {
		reg.MustRegister(m.PartitionsCreated, m.PartitionsDropped, m.RollupBatches, m.RollupLag)
	}
	return m
}

// Store writes to one PostgreSQL schema through a connection pool. It is safe
// for concurrent use; several Stores (several sink processes) may share a
// database.
type Store struct {
	pool    *pgxpool.Pool
	log     *slog.Logger
	metrics *Metrics

	mu    sync.Mutex
	parts map[string]bool // partitions known to exist, by name

	// flowDups is set while flow batches carry rows already stored
	// (redeliveries): WriteFlows then skips its fast path.
	flowDups atomic.Bool
	flowBufs chan *flowBatch // encoding buffers for reuse

	// The rollup job (rollup.go): woken by rollupKick, stopped by
	// rollupStop, closes rollupDone when it has returned.
	rollupKick chan struct{}
	rollupStop context.CancelFunc
	rollupDone chan struct{}
	// rollupPaused stops the loop from running the job (benchmarks
	// measure writing and rolling up apart).
	rollupPaused atomic.Bool
}

// Open connects a pool to dsn. The schema must already be migrated (Migrate):
// every connection creates its session's staging tables from the live
// tables. Open does not fail when the database is down; the first write does.
// m may be nil.
func Open(ctx context.Context, dsn string, log *slog.Logger, m *Metrics) (*Store, error) {
	cfg, err := pgxpool.ParseConfig(dsn)
	if err != nil {
		return nil, fmt.Errorf("parse database url: %w", err)
	}
	cfg.AfterConnect = func(ctx context.Context, c *pgx.Conn) error {
		for _, t := range stagedTables {
			q := fmt.Sprintf("CREATE TEMP TABLE IF NOT EXISTS %s (LIKE %s INCLUDING DEFAULTS) ON COMMIT DELETE ROWS",
				t.stage, t.name)
			if _, err := c.Exec(ctx, q); err != nil {
				return fmt.Errorf("create staging table %s: %w", t.stage, err)
			}
		}
		if _, err := c.Exec(ctx, rollupSource); err != nil {
			return fmt.Errorf("create rollup_src: %w", err)
		}
		return nil
	}
	// Three tables with two writers each, retention and readiness checks:
	// more than pgxpool's default of max(4, cores), unless the URL says.
	if !strings.Contains(dsn, "pool_max_conns") {
		cfg.MaxConns = max(cfg.MaxConns, 8)
	}
	cfg.MaxConnIdleTime = time.Minute
	cfg.HealthCheckPeriod = 5 * time.Second
	pool, err := pgxpool.NewWithConfig(ctx, cfg)
	if err != nil {
		return nil, fmt.Errorf("open database pool: %w", err)
	}
	if m == nil {
		m = NewMetrics(nil)
	}
	s := &Store{pool: pool, log: log, metrics: m, parts: map[string]bool{}, flowBufs: make(chan *flowBatch, 4),
		rollupKick: make(chan struct{}, 1), rollupDone: make(chan struct{})}
	rctx, stop := context.WithCancel(context.WithoutCancel(ctx))
	s.rollupStop = stop
	go s.rollupLoop(rctx)
	return s, nil
}

// Close stops the rollup job (a run under way is rolled back: its batches
// stay pending), adds what is still pending to the rollups for up to
// closeRollupTimeout (unless another sink's job holds the lock or the
// database fails: the batches then wait for the next job, of any sink), and
// closes the pool, waiting for connections in use.
func (s *Store) Close() {
	s.rollupStop()
	<-s.rollupDone
	if !s.rollupPaused.Load() {
		ctx, cancel := context.WithTimeout(context.Background(), closeRollupTimeout)
		for {
			if n, err := s.Rollup(ctx); err != nil || n == 0 {
				break
			}
		}
		cancel()
	}
	s.pool.Close()
}

// closeRollupTimeout bounds Close's last rollup runs.
const closeRollupTimeout = 10 * time.Second

// Ping checks that the database answers within ctx.
func (s *Store) Ping(ctx context.Context) error {
	if err := s.pool.Ping(ctx); err != nil {
		return fmt.Errorf("ping database: %w", err)
	}
	return nil
}

// Pool is the store's connection pool (tests and tools).
func (s *Store) Pool() *pgxpool.Pool { return s.pool }

// IsDataError reports whether err is PostgreSQL rejecting the data itself
// (SQLSTATE class 22 data exception or 23 integrity violation), which no
// retry of the same rows can fix, as opposed to an outage.
func IsDataError(err error) bool {
	var pe *pgconn.PgError
	if !errors.As(err, &pe) || len(pe.Code) != 5 {
		return false
	}
	switch pe.Code[:2] {
	case "22", "23":
		// 23514 check_violation is also what a missing partition raises
		// ("no partition of relation … found for row"): that is retryable.
		return pe.Code != "23514" || !strings.HasPrefix(pe.Message, "no partition of relation")
	}
	return false
}

// IsStatementTimeout reports whether err is PostgreSQL cancelling a
// statement that ran longer than statement_timeout (SQLSTATE 57014 with
// that reason; a cancel request of ours has the same code, another message).
func IsStatementTimeout(err error) bool {
	var pe *pgconn.PgError
	return errors.As(err, &pe) && pe.Code == "57014" && strings.Contains(pe.Message, "statement timeout")
}

// SQLState is err's SQLSTATE, "" when it is not a PostgreSQL error.
func SQLState(err error) string {
	var pe *pgconn.PgError
	if errors.As(err, &pe) {
		return pe.Code
	}
	return ""
}

// Parked is a message the sink gave up on, for the parked_messages table.
type Parked struct {
	Table     string // flows, alerts, host_metrics
	Stream    string
	StreamSeq uint64
	Subject   string
	MsgID     string // Nats-Msg-Id, may be empty
	Reason    string // the error
	SQLState  string // "" when not a database error (e.g. does not decode)
	Data      []byte // the payload
}

// Park stores p in parked_messages (once per stream and sequence: parking a
// redelivery of it again is a no-op). Text is made storable by text's rule.
func (s *Store) Park(ctx context.Context, p Parked) error {
	data := p.Data
	if data == nil {
		data = []byte{}
	}
	_, err := s.pool.Exec(ctx, `INSERT INTO parked_messages (tbl, stream, stream_seq, subject, msg_id, reason, sqlstate, data)
		VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT (stream, stream_seq) DO NOTHING`,
		text(p.Table), text(p.Stream), int64(min(p.StreamSeq, 1<<63-1)), text(p.Subject), text(p.MsgID),
		text(p.Reason), text(p.SQLState), data)
	if err != nil {
		return fmt.Errorf("park message %s/%d: %w", p.Stream, p.StreamSeq, err)
	}
	return nil
}

// Text makes s storable in a text column by the sink's rule for text: NUL
// and each byte of invalid UTF-8 become \xNN (see README "Text").
func Text(s string) string { return text(s) }
