// Package server assembles the api's one HTTP server: REST (package rest),
// the WebSocket live feed (package live), the dashboard (package web) and the
// operational endpoints /metrics, /healthz and /readyz.
package server

import (
	"bufio"
	"context"
	"errors"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"

	"netwatch/api/internal/hostscores"
	"netwatch/api/internal/live"
	"netwatch/api/internal/rest"
	"netwatch/api/internal/web"
	"netwatch/schema/ops"
)

// Server is the api's HTTP handler and its live hub.
type Server struct {
	Handler http.Handler
	Hub     *live.Hub
	API     *rest.API
	// Routes are the ServeMux patterns of the API ("GET /api/v1/flows"),
	// the WebSocket and operational endpoints (not the dashboard's "/").
	Routes []string
}

// Options are the optional parts of New.
type Options struct {
	// Web serves the dashboard; nil means the build embedded in the binary.
	Web http.Handler
	// Tokens are the bearer tokens accepted; none means no authentication
	// (the caller keeps the api on loopback).
	Tokens []Token
	// RollupCacheBytes bounds the api's cache of talkers rollup buckets
	// (rest.TalkerCache); 0 means rest.DefaultTalkerCacheBytes, below 0
	// disables it (top talkers then always query SQL).
	RollupCacheBytes int64
}

// New builds the server. pool and nc are required; reg receives the
// netwatch_api_* metrics and is served on /metrics.
func New(pool *pgxpool.Pool, nc *nats.Conn, reg *prometheus.Registry, log *slog.Logger, opts Options) (*Server, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, err
	}
	ready := func() error {
		if !nc.IsConnected() {
			return errors.New("nats not connected")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		return pool.Ping(ctx)
	}
	mux := ops.Handler(reg, ready)
	api := &rest.API{Pool: pool, JS: js, Log: log.With("component", "rest"), HostScores: hostscores.New(js, "")}
	switch {
	case opts.RollupCacheBytes == 0:
		api.Talkers = rest.NewTalkerCache(rest.DefaultTalkerCacheBytes, reg)
	case opts.RollupCacheBytes > 0:
		api.Talkers = rest.NewTalkerCache(opts.RollupCacheBytes, reg)
	}
	api.Register(mux)
	hub := live.New(nc, pool, log.With("component", "live"), reg)
	mux.Handle("GET /api/v1/live", hub)
	mux.HandleFunc("GET /api/v1/replay", hub.ServeReplay)
	if opts.Web == nil {
		opts.Web = web.Handler()
	}
	mux.Handle("/", opts.Web)
	adminRoutes := map[string]bool{}
	for _, rt := range api.Routes() {
		if rt.Admin {
			adminRoutes[rt.Pattern] = true
		}
	}
	admin := func(r *http.Request) bool {
		_, pat := mux.Handler(r)
		return adminRoutes[pat]
	}
	routes := []string{"GET /metrics", "GET /healthz", "GET /readyz", "GET /api/v1/live", "GET /api/v1/replay"}
	for _, rt := range api.Routes() {
		routes = append(routes, rt.Pattern)
	}
	return &Server{Handler: instrument(badQuery(authenticate(mux, opts.Tokens, admin)), mux, reg), Hub: hub, API: api, Routes: routes}, nil
}

// badQuery answers 400 for an /api/ request whose query string does not
// parse (a bad %-escape, a ';' separator): Go's parser skips such a pair,
// which would silently drop a filter and answer with unfiltered data; and
// for a name or value that is not UTF-8 text or holds a NUL.
func badQuery(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasPrefix(r.URL.Path, "/api/") {
			q, err := url.ParseQuery(r.URL.RawQuery)
			if err != nil {
				rest.WriteError(w, r, http.StatusBadRequest, "query string: "+err.Error())
				return
			}
			for name, vs := range q {
				for _, v := range vs {
					if !rest.Text(name) || !rest.Text(v) {
						// PostgreSQL text holds neither; the live feed's
						// filters would only fail after the handshake
						rest.WriteError(w, r, http.StatusBadRequest, "query string: parameter "+strconv.Quote(name)+
							" is not UTF-8 text, or holds a NUL character")
						return
					}
				}
			}
		}
		next.ServeHTTP(w, r)
	})
}

// instrument counts requests by route pattern and status code, and times
// them by route. The route is the ServeMux pattern (no addresses, bounded).
func instrument(next http.Handler, mux *http.ServeMux, reg prometheus.Registerer) http.Handler {
	requests := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_api_requests_total",
		Help: "HTTP requests by route and status code."}, []string{"route", "code"})
	duration := prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "netwatch_api_request_duration_seconds",
		Help: "HTTP request duration by route (WebSocket: connection lifetime).", Buckets: prometheus.DefBuckets},
		[]string{"route"})
	reg.MustRegister(requests, duration)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		rec := &recorder{ResponseWriter: w, code: http.StatusOK}
		next.ServeHTTP(rec, r)
		_, route := mux.Handler(r)
		if route == "" {
			route = "unmatched"
		}
		code := rec.code
		if rec.hijacked {
			code = http.StatusSwitchingProtocols
		}
		requests.WithLabelValues(route, strconv.Itoa(code)).Inc()
		duration.WithLabelValues(route).Observe(time.Since(start).Seconds())
	})
}

// recorder keeps the status code and still lets WebSocket upgrades hijack
// the connection.
type recorder struct {
	http.ResponseWriter
	code     int
	wrote    bool
	hijacked bool
}

func (r *recorder) WriteHeader(code int) {
	if !r.wrote {
		r.code, r.wrote = code, true
	}
	r.ResponseWriter.WriteHeader(code)
}

func (r *recorder) Write(b []byte) (int, error) {
	r.wrote = true
	return r.ResponseWriter.Write(b)
}

func (r *recorder) Flush() {
	if f, ok := r.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (r *recorder) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	h, ok := r.ResponseWriter.(http.Hijacker)
	if !ok {
		return nil, nil, errors.New("hijack not supported")
	}
	r.hijacked = true
	return h.Hijack()
}

func (r *recorder) Unwrap() http.ResponseWriter { return r.ResponseWriter }

// NewPool opens the api's PostgreSQL pool on url (a pgx connection string
// or URL; errors as pgxpool.ParseConfig's). Its sessions run with
// jit = off unless url sets jit itself (?jit=on): the api's queries are
// short and their plans over large partitions cost above jit_above_cost,
// so PostgreSQL's default would compile each of them (13-55 ms of LLVM
// code generation per query measured over the benchmark's 10 M flows, more
// than a one-flow lookup takes without it; docs/PERFORMANCE.md).
func NewPool(ctx context.Context, url string) (*pgxpool.Pool, error) {
	cfg, err := pgxpool.ParseConfig(url)
	if err != nil {
		return nil, err
	}
	if _, ok := cfg.ConnConfig.RuntimeParams["jit"]; !ok {
		cfg.ConnConfig.RuntimeParams["jit"] = "off"
	}
	return pgxpool.NewWithConfig(ctx, cfg)
}
