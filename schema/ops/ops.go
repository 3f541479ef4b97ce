// Package ops is the operational shell every netwatch service shares: config
// from flags and NETWATCH_* environment variables, the slog logger, the NATS
// connection, and the HTTP server for /metrics, /healthz and /readyz
// (STYLE.md, "Config", "Errors and logs", "Metrics").
package ops

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// EnvName is the environment variable of a flag: NETWATCH_ followed by the
// flag name upper-cased with '.' and '-' turned into '_'
// ("nats.url" -> "NETWATCH_NATS_URL").
func EnvName(flagName string) string {
	r := strings.NewReplacer(".", "_", "-", "_")
	return "NETWATCH_" + strings.ToUpper(r.Replace(flagName))
}

// ApplyEnv sets every flag of fs that was not given on the command line from
// its environment variable (EnvName), so that flag > environment > default.
// Call it after fs.Parse. It returns the first value a flag rejects.
func ApplyEnv(fs *flag.FlagSet, getenv func(string) string) error {
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	var err error
	fs.VisitAll(func(f *flag.Flag) {
		if set[f.Name] || err != nil {
			return
		}
		if v := getenv(EnvName(f.Name)); v != "" {
			if e := fs.Set(f.Name, v); e != nil {
				err = fmt.Errorf("environment %s=%q: %w", EnvName(f.Name), v, e)
			}
		}
	})
	return err
}

// Common is the part of every service's config that ops handles.
type Common struct {
	NATSURL   string // -nats.url, comma-separated server URLs
	NATSCreds string // -nats.creds, a credentials file; empty for none
	NATSCA    string // -nats.tls-ca, PEM CA bundle that signs the servers' certificates; empty: system roots
	NATSCert  string // -nats.tls-cert, client certificate (PEM) for servers that verify clients
	NATSKey   string // -nats.tls-key, its private key (PEM)
	HTTPAddr  string // -http.addr of /metrics, /healthz, /readyz; empty disables
	LogLevel  string // -log.level: debug, info, warn, error
	LogFormat string // -log.format: json or text
	CheckOnly bool   // -check-config: validate and exit
}

// Register adds the common flags to fs with defaults for a service whose ops
// HTTP server listens on defaultHTTP.
func (c *Common) Register(fs *flag.FlagSet, defaultHTTP string) {
	fs.StringVar(&c.NATSURL, "nats.url", "nats://127.0.0.1:4222", "NATS server URLs, comma-separated")
	fs.StringVar(&c.NATSCreds, "nats.creds", "", "NATS credentials file")
	fs.StringVar(&c.NATSCA, "nats.tls-ca", "", "PEM CA file that signs the NATS servers' certificates (default: the system roots)")
	fs.StringVar(&c.NATSCert, "nats.tls-cert", "", "client certificate (PEM) for NATS servers that verify clients")
	fs.StringVar(&c.NATSKey, "nats.tls-key", "", "private key (PEM) of -nats.tls-cert")
	fs.StringVar(&c.HTTPAddr, "http.addr", defaultHTTP, "listen address for /metrics, /healthz and /readyz (empty: off)")
	fs.StringVar(&c.LogLevel, "log.level", "info", "log level: debug, info, warn, error")
	fs.StringVar(&c.LogFormat, "log.format", "json", "log format: json or text")
	fs.BoolVar(&c.CheckOnly, "check-config", false, "validate the configuration and exit")
}

// Validate checks the common fields.
func (c *Common) Validate() error {
	var errs []error
	if c.NATSURL == "" {
		errs = append(errs, errors.New("-nats.url is empty"))
	}
	var l slog.Level
	if err := l.UnmarshalText([]byte(c.LogLevel)); err != nil {
		errs = append(errs, fmt.Errorf("-log.level %q: %w", c.LogLevel, err))
	}
	if c.LogFormat != "json" && c.LogFormat != "text" {
		errs = append(errs, fmt.Errorf("-log.format %q: want json or text", c.LogFormat))
	}
	for _, u := range strings.Split(c.NATSURL, ",") {
		if c.NATSURL == "" {
			break
		}
		u = strings.TrimSpace(u)
		if !strings.Contains(u, "://") {
			u = "nats://" + u // as nats.go reads a bare host:port
		}
		pu, err := url.Parse(u)
		switch {
		case err != nil:
			errs = append(errs, fmt.Errorf("-nats.url %q: %w", u, err))
		case pu.Scheme != "nats" && pu.Scheme != "tls" && pu.Scheme != "ws" && pu.Scheme != "wss":
			errs = append(errs, fmt.Errorf("-nats.url %q: scheme %q, want nats://, tls://, ws:// or wss://", u, pu.Scheme))
		case pu.Hostname() == "":
			errs = append(errs, fmt.Errorf("-nats.url %q: no host", u))
		}
	}
	if c.HTTPAddr != "" {
		if _, port, err := net.SplitHostPort(c.HTTPAddr); err != nil {
			errs = append(errs, fmt.Errorf("-http.addr %q: %w", c.HTTPAddr, err))
		} else if n, err := strconv.Atoi(port); err != nil || n < 0 || n > 65535 {
			errs = append(errs, fmt.Errorf("-http.addr %q: port %q is not a number 0..65535", c.HTTPAddr, port))
		}
	}
	if (c.NATSCert == "") != (c.NATSKey == "") {
		errs = append(errs, errors.New("-nats.tls-cert and -nats.tls-key go together"))
	}
	for _, f := range []struct{ flag, path string }{{"-nats.creds", c.NATSCreds}, {"-nats.tls-ca", c.NATSCA},
		{"-nats.tls-cert", c.NATSCert}, {"-nats.tls-key", c.NATSKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", f.flag, err))
		}
	}
	return errors.Join(errs...)
}

// Logger returns the service's logger writing to w, with a "service" attribute.
func (c *Common) Logger(w io.Writer, service string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(c.LogLevel))
	opts := &slog.HandlerOptions{Level: l}
	var h slog.Handler = slog.NewJSONHandler(w, opts)
	if c.LogFormat == "text" {
		h = slog.NewTextHandler(w, opts)
	}
	return slog.New(h).With("service", service)
}

// ConnectNATS connects to c.NATSURL, retrying until ctx ends, and reconnects
// forever afterwards (a broker outage is survived, DESIGN.md). name is the
// connection name the server shows.
func (c *Common) ConnectNATS(ctx context.Context, name string, log *slog.Logger) (*nats.Conn, error) {
	return c.connectNATS(ctx, name, log)
}

// StageInbox is the reply-subject prefix of a pipeline stage's NATS
// connection, "_INBOX_<role>" (role: enricher, detector, sink, api): the
// stage's publish acks, JetStream API replies and pulled messages arrive
// on StageInbox(role)+".<nuid>", the only inbox its role's credentials may
// subscribe to (netwatchctl creds -role, ctl/internal/perms), so no other
// role reads them on nats.go's shared _INBOX.> (the agent does the same
// with _INBOX_<sensor>). The prefix follows nats.CustomInboxPrefix's rules
// (no wildcard, no trailing '.').
func StageInbox(role string) string { return "_INBOX_" + role }

// ConnectNATSInbox is ConnectNATS with the connection's reply subjects
// under inbox (nats.CustomInboxPrefix; a stage passes StageInbox(role)).
// An empty inbox is ConnectNATS (nats.go's _INBOX); an invalid one is an
// error.
func (c *Common) ConnectNATSInbox(ctx context.Context, name, inbox string, log *slog.Logger) (*nats.Conn, error) {
	if inbox == "" {
		return c.connectNATS(ctx, name, log)
	}
	return c.connectNATS(ctx, name, log, nats.CustomInboxPrefix(inbox))
}

func (c *Common) connectNATS(ctx context.Context, name string, log *slog.Logger, extra ...nats.Option) (*nats.Conn, error) {
	opts := []nats.Option{
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(500 * time.Millisecond),
		nats.ReconnectBufSize(64 << 20),
		nats.RetryOnFailedConnect(true),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) { log.Info("nats reconnected", "url", nc.ConnectedUrl()) }),
	}
	if c.NATSCreds != "" {
		opts = append(opts, nats.UserCredentials(c.NATSCreds))
	}
	if c.NATSCA != "" {
		opts = append(opts, nats.RootCAs(c.NATSCA))
	}
	if c.NATSCert != "" {
		opts = append(opts, nats.ClientCert(c.NATSCert, c.NATSKey))
	}
	nc, err := nats.Connect(c.NATSURL, append(opts, extra...)...)
	if err != nil {
		return nil, fmt.Errorf("connect to nats %s: %w", c.NATSURL, err)
	}
	start := time.Now()
	nextLog := start.Add(2 * time.Second)
	for !nc.IsConnected() {
		select {
		case <-ctx.Done():
			nc.Close()
			return nil, fmt.Errorf("connect to nats %s: %w", c.NATSURL, ctx.Err())
		case now := <-time.After(100 * time.Millisecond):
			if now.After(nextLog) {
				log.Warn("waiting for nats", "url", c.NATSURL, "waited_s", int(now.Sub(start).Seconds()))
				nextLog = now.Add(10 * time.Second)
			}
		}
	}
	return nc, nil
}

// NewRegistry returns a Prometheus registry with the Go and process collectors.
func NewRegistry() *prometheus.Registry {
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return reg
}

// Handler serves /metrics from reg, /healthz (200 while the process runs) and
// /readyz (200 when ready returns nil, else 503 with the error).
func Handler(reg *prometheus.Registry, ready func() error) *http.ServeMux {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{Registry: reg}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok\n") })
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if ready != nil {
			if err := ready(); err != nil {
				http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		io.WriteString(w, "ready\n")
	})
	return mux
}

// Serve runs an HTTP server for h on addr until ctx ends, then shuts it down
// within 5 s. An empty addr returns at once. A listen error is returned.
func Serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	if addr == "" {
		return nil
	}
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve http on %s: %w", addr, err)
	case <-ctx.Done():
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return srv.Shutdown(sctx)
	}
}
