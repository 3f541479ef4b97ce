// Command sink is the last stage of the netwatch pipeline: it stores FLOWS,
// ALERTS and METRICS in PostgreSQL (partitioned by UTC day, idempotently),
// runs the schema migrations and drops expired partitions. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"github.com/jackc/pgx/v5/pgxpool"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
	"netwatch/schema/ops"
	"netwatch/sink/internal/consume"
	"netwatch/sink/internal/store"
)

// DefaultDatabaseURL is the PostgreSQL of a one-machine install.
const DefaultDatabaseURL = "postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable"

// config is the sink's configuration (flag > NETWATCH_* > default).
type config struct {
	ops.Common
	DatabaseURL       string
	MigrateOnly       bool          // -migrate-only or the migrate command: apply the migrations and exit
	Provision         bool          // -nats.provision: create or update the streams and durables at start (else wait for them)
	MigrateCmd        bool          // the migrate command: also print the schema version
	BatchSize         int           // rows per write
	BatchFlush        time.Duration // longest a row waits in a batch
	BatchWriters      int           // batches of one table written at once
	ShutdownTimeout   time.Duration // how long shutdown keeps retrying the last batches
	RetentionFlows    time.Duration // 0 keeps forever
	RetentionAlerts   time.Duration
	RetentionMetrics  time.Duration
	RetentionRollups  time.Duration
	RetentionInterval time.Duration // period of the retention job
}

// days is a flag.Value for durations that also accepts a "d" (24 h) suffix:
// "30d", "12h", "1d12h".
type days struct{ d *time.Duration }

func (v days) String() string {
	if v.d == nil {
		return ""
	}
	if *v.d%(24*time.Hour) == 0 && *v.d != 0 {
		return strconv.FormatInt(int64(*v.d/(24*time.Hour)), 10) + "d"
	}
	return v.d.String()
}

func (v days) Set(s string) error {
	d, err := parseDays(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func parseDays(s string) (time.Duration, error) {
	var total time.Duration
	if i := strings.IndexByte(s, 'd'); i > 0 {
		n, err := strconv.ParseFloat(s[:i], 64)
		if err != nil || n < 0 {
			return 0, fmt.Errorf("duration %q: bad day count", s)
		}
		total = time.Duration(n * float64(24*time.Hour))
		s = s[i+1:]
		if s == "" {
			return total, nil
		}
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, err
	}
	return total + d, nil
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{RetentionFlows: 30 * 24 * time.Hour, RetentionAlerts: 90 * 24 * time.Hour,
		RetentionMetrics: 7 * 24 * time.Hour, RetentionRollups: 90 * 24 * time.Hour}
	migrateCmd := len(args) > 0 && args[0] == "migrate"
	if migrateCmd {
		args = args[1:]
	}
	fs := flag.NewFlagSet("sink", flag.ContinueOnError)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: sink [flags]          run the sink\n       sink migrate [flags]  apply the schema migrations, print the schema version and exit\n")
		fs.PrintDefaults()
	}
	fs.SetOutput(stderr)
	c.Common.Register(fs, "127.0.0.1:9104")
	fs.StringVar(&c.DatabaseURL, "database.url", DefaultDatabaseURL, "PostgreSQL URL (env NETWATCH_DATABASE_URL, else DATABASE_URL)")
	fs.BoolVar(&c.MigrateOnly, "migrate-only", false, "apply the migrations and exit")
	fs.BoolVar(&c.Provision, "nats.provision", true, "create or update the streams and durable consumers at start; false with the least-privilege sink user, which waits for netwatchctl provision")
	fs.IntVar(&c.BatchSize, "batch.size", 5000, "rows per database write")
	fs.DurationVar(&c.BatchFlush, "batch.flush", 250*time.Millisecond, "longest a row waits before its batch is written")
	fs.IntVar(&c.BatchWriters, "batch.writers", 2, "batches of one table written at once (one connection each) while the next fills")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown.timeout", 30*time.Second, "how long shutdown keeps retrying the last batches before nak'ing them")
	fs.Var(days{&c.RetentionFlows}, "retention.flows", "keep flows partitions this long, e.g. 30d (0: forever)")
	fs.Var(days{&c.RetentionAlerts}, "retention.alerts", "keep alerts partitions this long (0: forever)")
	fs.Var(days{&c.RetentionMetrics}, "retention.metrics", "keep host_metrics partitions this long (0: forever)")
	fs.Var(days{&c.RetentionRollups}, "retention.rollups", "keep flows_1m (per-minute rollup) partitions this long (0: forever)")
	fs.DurationVar(&c.RetentionInterval, "retention.interval", time.Hour, "how often expired partitions are dropped")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("unexpected argument %q (the only command is migrate, first)", fs.Arg(0))
	}
	if migrateCmd {
		c.MigrateCmd, c.MigrateOnly = true, true
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "database.url" })
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return nil, err
	}
	if !given && getenv(ops.EnvName("database.url")) == "" && getenv("DATABASE_URL") != "" {
		c.DatabaseURL = getenv("DATABASE_URL")
	}
	return c, c.Validate()
}

// Validate checks the configuration.
func (c *config) Validate() error {
	errs := []error{c.Common.Validate()}
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("-database.url is empty"))
	} else if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		errs = append(errs, fmt.Errorf("-database.url: %w", err))
	}
	if c.BatchSize < 1 {
		errs = append(errs, fmt.Errorf("-batch.size %d: want at least 1", c.BatchSize))
	}
	if c.BatchWriters < 1 {
		errs = append(errs, fmt.Errorf("-batch.writers %d: want at least 1", c.BatchWriters))
	}
	if c.BatchFlush <= 0 {
		errs = append(errs, fmt.Errorf("-batch.flush %s: want > 0", c.BatchFlush))
	}
	if c.ShutdownTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-shutdown.timeout %s: want > 0", c.ShutdownTimeout))
	}
	for _, r := range []struct {
		name string
		d    time.Duration
	}{{"flows", c.RetentionFlows}, {"alerts", c.RetentionAlerts}, {"metrics", c.RetentionMetrics}, {"rollups", c.RetentionRollups}} {
		if r.d < 0 {
			errs = append(errs, fmt.Errorf("-retention.%s %s: want >= 0", r.name, r.d))
		} else if r.d > 0 && r.d < 24*time.Hour {
			errs = append(errs, fmt.Errorf("-retention.%s %s: want 0 or at least 1d (partitions are days)", r.name, r.d))
		}
	}
	if c.RetentionInterval <= 0 {
		errs = append(errs, fmt.Errorf("-retention.interval %s: want > 0", c.RetentionInterval))
	}
	return errors.Join(errs...)
}

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "sink:", err)
		os.Exit(2)
	}
	if cfg.CheckOnly {
		fmt.Fprintln(os.Stderr, "sink: configuration ok")
		return
	}
	log := cfg.Logger(os.Stderr, "sink")
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if cfg.MigrateCmd {
		if err := migrateCommand(ctx, cfg, log, os.Stdout); err != nil {
			fmt.Fprintln(os.Stderr, "sink migrate:", err)
			os.Exit(1)
		}
		return
	}
	if err := run(ctx, cfg, log); err != nil {
		log.Error("sink failed", "err", err)
		os.Exit(1)
	}
}

// migrate applies the migrations, retrying while the database is
// unreachable (up to until when not zero). A schema newer than this binary
// knows is not retried. It returns the schema version and the versions
// applied.
func migrate(ctx context.Context, cfg *config, log *slog.Logger, until time.Time) (int64, []int64, error) {
	wait := 200 * time.Millisecond
	for {
		applied, v, err := store.MigrateVersion(ctx, cfg.DatabaseURL, log.With("component", "migrate"))
		if err == nil {
			return v, applied, nil
		}
		var newer *store.ErrSchemaNewer
		if errors.As(err, &newer) || (!until.IsZero() && time.Now().After(until)) {
			return 0, nil, err
		}
		log.Warn("migrate failed, retrying", "err", err)
		select {
		case <-ctx.Done():
			return 0, nil, errors.Join(err, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 5*time.Second)
	}
}

// migrateCommand is `sink migrate`: apply the migrations (waiting up to
// 30 s for the database), print the schema version to out and return.
func migrateCommand(ctx context.Context, cfg *config, log *slog.Logger, out io.Writer) error {
	v, applied, err := migrate(ctx, cfg, log, time.Now().Add(30*time.Second))
	if err != nil {
		return err
	}
	if len(applied) == 0 {
		fmt.Fprintf(out, "schema version %d (up to date)\n", v)
		return nil
	}
	s := make([]string, len(applied))
	for i, a := range applied {
		s[i] = strconv.FormatInt(a, 10)
	}
	fmt.Fprintf(out, "schema version %d (applied %s)\n", v, strings.Join(s, ", "))
	return nil
}

func run(ctx context.Context, cfg *config, log *slog.Logger) error {
	reg := ops.NewRegistry()
	var st atomic.Pointer[store.Store]
	ready := func() error {
		s := st.Load()
		if s == nil {
			return errors.New("database not migrated yet")
		}
		pctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return s.Ping(pctx)
	}
	httpCtx, stopHTTP := context.WithCancel(context.Background())
	httpDone := make(chan error, 1)
	go func() { httpDone <- ops.Serve(httpCtx, cfg.HTTPAddr, ops.Handler(reg, ready), log) }()
	defer func() {
		stopHTTP()
		if err := <-httpDone; err != nil {
			log.Warn("ops http", "err", err)
		}
	}()

	if _, _, err := migrate(ctx, cfg, log, time.Time{}); err != nil {
		return err
	}
	if cfg.MigrateOnly {
		log.Info("migrations applied, exiting (-migrate-only)")
		return nil
	}
	s, err := store.Open(ctx, cfg.DatabaseURL, log.With("component", "store"), store.NewMetrics(reg))
	if err != nil {
		return err
	}
	defer s.Close()
	st.Store(s)

	nc, err := cfg.ConnectNATSInbox(ctx, "sink", ops.StageInbox("sink"), log.With("component", "nats"))
	if err != nil {
		return err
	}
	defer func() {
		_ = nc.FlushTimeout(2 * time.Second) // the last acks
		nc.Close()
	}()
	js, err := jetstream.New(nc)
	if err != nil {
		return fmt.Errorf("jetstream: %w", err)
	}
	needs := schema.Needs{Streams: []string{schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics},
		Consumers: map[string][]string{schema.StreamFlows: {schema.ConsumerSinkFlows},
			schema.StreamAlerts: {schema.ConsumerSinkAlerts}, schema.StreamMetrics: {schema.ConsumerSinkMetrics}}}
	if err := schema.ProvisionOrAwait(ctx, js, cfg.Provision, schema.StreamOptions{Log: log}, needs, func(missing error) {
		log.Warn("waiting for the streams (-nats.provision=false: netwatchctl provision creates them)", "missing", missing)
	}); err != nil {
		return fmt.Errorf("provision: %w", err)
	}
	consumer := func(stream, name string) (jetstream.Consumer, error) {
		c, err := js.Consumer(ctx, stream, name)
		if err != nil {
			return nil, fmt.Errorf("consumer %s on %s: %w", name, stream, err)
		}
		return c, nil
	}
	cf, err := consumer(schema.StreamFlows, schema.ConsumerSinkFlows)
	if err != nil {
		return err
	}
	ca, err := consumer(schema.StreamAlerts, schema.ConsumerSinkAlerts)
	if err != nil {
		return err
	}
	cm, err := consumer(schema.StreamMetrics, schema.ConsumerSinkMetrics)
	if err != nil {
		return err
	}

	ccfg := consume.Config{BatchSize: cfg.BatchSize, FlushInterval: cfg.BatchFlush, ShutdownTimeout: cfg.ShutdownTimeout,
		Writers: cfg.BatchWriters}
	m := consume.NewMetrics(reg)
	clog := log.With("component", "consume")
	loops := []interface{ Run(context.Context) error }{
		consume.Flows(s, cf, ccfg, m, clog),
		consume.Alerts(s, ca, ccfg, m, clog),
		consume.HostMetrics(s, cm, ccfg, m, clog),
	}
	var wg sync.WaitGroup
	errs := make([]error, len(loops)+1)
	for i, l := range loops {
		wg.Go(func() { errs[i] = l.Run(ctx) })
	}
	wg.Go(func() {
		retention(ctx, s, store.Retention{Flows: cfg.RetentionFlows, Alerts: cfg.RetentionAlerts,
			Metrics: cfg.RetentionMetrics, Rollups: cfg.RetentionRollups}, cfg.RetentionInterval, log.With("component", "retention"))
	})
	log.Info("sink running", "batch_size", cfg.BatchSize, "batch_flush", cfg.BatchFlush, "batch_writers", cfg.BatchWriters,
		"http_addr", cfg.HTTPAddr)
	wg.Wait()
	log.Info("sink stopped: batches flushed, closing database and nats")
	return errors.Join(errs...)
}

// retention drops expired partitions at start and every interval until ctx ends.
func retention(ctx context.Context, s *store.Store, r store.Retention, every time.Duration, log *slog.Logger) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		dropped, err := s.DropExpired(ctx, r, time.Now())
		if err != nil && ctx.Err() == nil {
			log.Warn("retention", "err", err)
		} else if len(dropped) > 0 {
			log.Info("retention dropped partitions", "count", len(dropped))
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}
