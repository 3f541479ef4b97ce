// Command api serves netwatch's REST API, WebSocket live feed and dashboard
// on one HTTP server (DESIGN.md, "api"): history from PostgreSQL, live
// records from the FLOWS, ALERTS and METRICS subjects, pipeline backlog from
// JetStream.
package main

import (
	"cmp"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"netwatch/api/internal/live"
	"netwatch/api/internal/rest"
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
	ReadTokens   string        // -auth.read-tokens: comma-separated name=secret or secret
	AdminTokens  string        // -auth.admin-tokens: same, tokens that may also change alerts
	TokenFile    string        // -auth.token-file: "read|admin name secret" lines
	StallTimeout time.Duration // -live.stall-timeout
	// RollupCacheBytes is -cache.rollup-bytes: the bound of top talkers'
	// cache of rollup buckets (0 disables it).
	RollupCacheBytes int64
	// RollupCacheWarm is -cache.rollup-warm: the period of
	// rest.API.KeepTalkersWarm (0: the cache loads buckets on request only).
	RollupCacheWarm time.Duration
	// Tokens are all the configured tokens (filled by Validate).
	Tokens []server.Token
}

func parseConfig(args []string, getenv func(string) string, stderr io.Writer) (*Config, error) {
	var c Config
	fs := flag.NewFlagSet("api", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.Common.Register(fs, "127.0.0.1:8080")
	fs.StringVar(&c.DatabaseURL, "database.url", defaultDatabaseURL, "PostgreSQL URL (env NETWATCH_DATABASE_URL, else DATABASE_URL)")
	fs.IntVar(&c.LiveBuffer, "live.buffer", 1024, "messages queued per live WebSocket client before dropping")
	fs.DurationVar(&c.QueryTimeout, "query.timeout", 30*time.Second, "time limit of one request's database work")
	fs.StringVar(&c.ReadTokens, "auth.read-tokens", "", "bearer tokens that may read, comma-separated name=secret (or secret); none and no admin token: loopback only")
	fs.StringVar(&c.AdminTokens, "auth.admin-tokens", "", "bearer tokens that may also acknowledge and close alerts, comma-separated name=secret")
	fs.StringVar(&c.TokenFile, "auth.token-file", "", "file of tokens, one a line: read|admin name secret")
	fs.DurationVar(&c.StallTimeout, "live.stall-timeout", live.DefaultStallTimeout, "disconnect a WebSocket client that keeps losing messages this long (0: never)")
	fs.Int64Var(&c.RollupCacheBytes, "cache.rollup-bytes", rest.DefaultTalkerCacheBytes,
		"bytes of talkers rollup buckets cached in memory for top talkers (LRU; 0 disables: every request is one SQL)")
	fs.DurationVar(&c.RollupCacheWarm, "cache.rollup-warm", 30*time.Second,
		"how often the rollup cache loads the last hour's and last 24 hours' buckets in the background (0: only on request)")
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
	if c.RollupCacheBytes < 0 {
		errs = append(errs, fmt.Errorf("-cache.rollup-bytes %d: want >= 0 (0 disables the cache)", c.RollupCacheBytes))
	}
	if c.RollupCacheWarm < 0 || c.RollupCacheWarm > 0 && c.RollupCacheWarm < time.Second {
		errs = append(errs, fmt.Errorf("-cache.rollup-warm %s: want 0 (load on request only) or at least 1s", c.RollupCacheWarm))
	}
	if c.StallTimeout < 0 {
		errs = append(errs, fmt.Errorf("-live.stall-timeout %s: want >= 0", c.StallTimeout))
	}
	c.Tokens = nil
	if ts, err := server.ParseTokens(c.ReadTokens, false); err != nil {
		errs = append(errs, fmt.Errorf("-auth.read-tokens: %w", err))
	} else {
		c.Tokens = append(c.Tokens, ts...)
	}
	if ts, err := server.ParseTokens(c.AdminTokens, true); err != nil {
		errs = append(errs, fmt.Errorf("-auth.admin-tokens: %w", err))
	} else {
		c.Tokens = append(c.Tokens, ts...)
	}
	if c.TokenFile != "" {
		if ts, err := server.ReadTokenFile(c.TokenFile); err != nil {
			errs = append(errs, fmt.Errorf("-auth.token-file: %w", err))
		} else {
			c.Tokens = append(c.Tokens, ts...)
		}
	}
	if len(c.Tokens) == 0 && c.HTTPAddr != "" && !loopback(c.HTTPAddr) {
		errs = append(errs, fmt.Errorf("-http.addr %s is not a loopback address and no token is configured: "+
			"set -auth.read-tokens / -auth.admin-tokens (or -auth.token-file), or listen on 127.0.0.1", c.HTTPAddr))
	}
	return errors.Join(errs...)
}

// loopback reports whether addr (host:port) listens on loopback only:
// localhost or a loopback IP; an empty host means every interface.
func loopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return false
	}
	if host == "localhost" {
		return true
	}
	ip, err := netip.ParseAddr(host)
	return err == nil && ip.IsLoopback()
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
	pool, err := server.NewPool(ctx, cfg.DatabaseURL)
	if err != nil {
		return fmt.Errorf("database pool: %w", err)
	}
	defer pool.Close()
	nc, err := cfg.ConnectNATSInbox(ctx, "netwatch-api", ops.StageInbox("api"), log)
	if err != nil {
		return err
	}
	defer nc.Close()

	reg := ops.NewRegistry()
	srv, err := server.New(pool, nc, reg, log, server.Options{Tokens: cfg.Tokens, RollupCacheBytes: cmp.Or(cfg.RollupCacheBytes, -1)})
	if err != nil {
		return err
	}
	srv.Hub.Buffer = cfg.LiveBuffer
	srv.Hub.StallTimeout = cfg.StallTimeout
	srv.API.QueryTimeout = cfg.QueryTimeout
	if err := srv.Hub.Start(); err != nil {
		return err
	}
	wctx, wcancel := context.WithCancel(ctx)
	warmed := make(chan struct{})
	go func() { defer close(warmed); srv.API.KeepTalkersWarm(wctx, cfg.RollupCacheWarm) }()
	defer func() { wcancel(); <-warmed }() // before the pool closes
	hs := &http.Server{Addr: cfg.HTTPAddr, Handler: srv.Handler, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- hs.ListenAndServe() }()
	log.Info("api started", "http_addr", cfg.HTTPAddr, "dashboard_built", web.Built(), "tokens", len(cfg.Tokens))

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
