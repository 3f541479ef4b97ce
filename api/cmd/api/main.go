// Command api serves netwatch's REST API, WebSocket live feed and dashboard
// on one HTTP server (DESIGN.md, "api"): history from PostgreSQL, live
// records from the FLOWS, ALERTS and METRICS subjects, pipeline backlog from
// JetStream.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"netwatch/api/internal/server"
	"netwatch/api/internal/web"
	"netwatch/schema/ops"
)

// Config is the api's configuration.
type Config struct {
	ops.Common
	DatabaseURL  string        // -database.url; NETWATCH_DATABASE_URL, else DATABASE_URL
	LiveBuffer   int           // -live.buffer: messages queued per WebSocket client
	QueryTimeout time.Duration // -query.timeout: database work per request
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	var c Config
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.Common.Register(fs, "127.0.0.1:8080")
	fs.StringVar(&c.DatabaseURL, "database.url", defaultDatabaseURL, "PostgreSQL URL (env NETWATCH_DATABASE_URL, else DATABASE_URL)")
	fs.IntVar(&c.LiveBuffer, "live.buffer", 1024, "messages queued per live WebSocket client before dropping")
	fs.DurationVar(&c.QueryTimeout, "query.timeout", 30*time.Second, "time limit of one request's database work")
	if err := fs.Parse(args); err != nil {
		return nil, err
	}
	given := false
	fs.Visit(func(f *flag.Flag) { given = given || f.Name == "database.url" })
	if err := ops.ApplyEnv(fs, getenv); err != nil {
		return nil, err
	}
	if !given && getenv(ops.EnvName("database.url")) == "" && getenv("DATABASE_URL") != "" {
		c.DatabaseURL = getenv("DATABASE_URL")
	}
	return &c, c.Validate()
}

// Validate checks the configuration.
func (c *Config) Validate() error {
	var errs []error
	if err := c.Common.Validate(); err != nil {
		errs = append(errs, err)
	}
	if c.HTTPAddr == "" {
		errs = append(errs, errors.New("-http.addr is empty"))
	}
	if c.DatabaseURL == "" {
		errs = append(errs, errors.New("-database.url is empty (or set NETWATCH_DATABASE_URL / DATABASE_URL)"))
	} else if _, err := pgxpool.ParseConfig(c.DatabaseURL); err != nil {
		errs = append(errs, fmt.Errorf("-database.url: %w", err))
	}
	if c.LiveBuffer < 1 {
		errs = append(errs, fmt.Errorf("-live.buffer %d: want at least 1", c.LiveBuffer))
	}
	if c.QueryTimeout <= 0 {
		errs = append(errs, fmt.Errorf("-query.timeout %s: want > 0", c.QueryTimeout))
	}
	return errors.Join(errs...)
}

// defaultDatabaseURL is the PostgreSQL of a one-machine install (the sink's default).
const defaultDatabaseURL = "postgres://netwatch:netwatch@127.0.0.1:5432/netwatch?sslmode=disable"

func main() {
	cfg, err := parseConfig(os.Args[1:], os.Getenv, os.Stderr)
	if errors.Is(err, flag.ErrHelp) {
		os.Exit(0)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(2)
	}
	if cfg.CheckOnly {
		fmt.Fprintln(os.Stderr, "api: configuration ok")
		return
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg); err != nil {
		fmt.Fprintln(os.Stderr, "api:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, cfg *Config) error {
	log := cfg.Logger(os.Stderr, "api")
	pool, err := pgxpool.New(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()
	nc, err := cfg.ConnectNATS(ctx, "netwatch-api", log)
	if err != nil {
		return err
	}
	defer nc.Close()

	reg := ops.NewRegistry()
	srv, err := server.New(pool, nc, reg, log, server.Options{})
	if err != nil {
		return err
	}
	srv.Hub.Buffer = cfg.LiveBuffer
	srv.API.QueryTimeout = cfg.QueryTimeout
	if err := srv.Hub.Start(); err != nil {
		return err
	}
	hs := &http.Server{Addr: cfg.HTTPAddr, Handler: srv.Handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.ListenAndServe() }()
	log.Info("api started", "http_addr", cfg.HTTPAddr, "dashboard_built", web.Built())

	select {
	case err := <-errc:
		srv.Hub.Close()
		return fmt.Errorf("serve http on %s: %w", cfg.HTTPAddr, err)
	case <-ctx.Done():
	}
	log.Info("shutting down")
	// Stop intake first: the live hub unsubscribes and closes WebSocket
	// connections itself (Shutdown does not track hijacked ones); then HTTP
	// drains in-flight requests before the pool and NATS close (deferred).
	srv.Hub.Close()
	sctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := hs.Shutdown(sctx); err != nil {
		log.Warn("http shutdown", "err", err)
	}
	log.Info("stopped")
	return nil
}
