// Package rest is the api's history side: HTTP handlers that search the
// flows, alerts, sensors and host metrics the sink stored in PostgreSQL, and
// report the JetStream pipeline's backlog (DESIGN.md, "api").
package rest

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/hostscores"
)

// Page sizes of the list endpoints.
const (
	DefaultLimit = 100
	MaxLimit     = 1000
)

// API serves the REST endpoints. Pool is required; JS may be nil, then
// /api/v1/pipeline answers 503.
type API struct {
	Pool *pgxpool.Pool
	JS   jetstream.JetStream
	Log  *slog.Logger
	// QueryTimeout bounds one request's database work; 0 means 30 s.
	QueryTimeout time.Duration
	// HostScores annotates the flows answered with their hosts' anomaly
	// scores (nil: none).
	HostScores *hostscores.Annotator
	// Talkers caches the talkers rollup buckets for top talkers (nil:
	// every request is one SQL GROUP BY over the rollups).
	Talkers *TalkerCache
}

// Register adds the REST routes to mux. Routes that change state
// (PATCH /api/v1/alerts/{id}) are listed by AdminRoutes for the
// authentication middleware.
func (a *API) Register(mux *http.ServeMux) {
	for _, rt := range a.routes() {
		mux.HandleFunc(rt.Pattern, rt.handler)
	}
	mux.HandleFunc("/api/", unmatched(mux))
}

// Route is one REST route: a ServeMux pattern ("METHOD /path/{name}").
type Route struct {
	Pattern string
	Admin   bool // needs an admin token
	handler http.HandlerFunc
}

// Routes lists the REST routes (not the WebSocket ones), for the OpenAPI
// test and the authentication middleware.
func (a *API) Routes() []Route { return a.routes() }

func (a *API) routes() []Route {
	return []Route{
		{Pattern: "GET /api/v1/flows", handler: a.flows},
		{Pattern: "GET /api/v1/flows/{id}", handler: a.flow},
		{Pattern: "GET /api/v1/alerts", handler: a.alerts},
		{Pattern: "GET /api/v1/alerts/{id}", handler: a.alert},
		{Pattern: "PATCH /api/v1/alerts/{id}", Admin: true, handler: a.setAlertStatus},
		{Pattern: "GET /api/v1/sensors", handler: a.sensors},
		{Pattern: "GET /api/v1/pipeline", handler: a.pipeline},
		{Pattern: "GET /api/v1/top-talkers", handler: a.topTalkers},
		{Pattern: "GET /api/v1/protocols", handler: a.protocols},
		{Pattern: "GET /api/v1/ports", handler: a.ports},
		{Pattern: "GET /api/v1/countries", handler: a.countries},
		{Pattern: "GET /api/v1/timeseries", handler: a.timeseries},
		{Pattern: "GET /api/v1/metrics/hosts", handler: a.hostMetrics},
		{Pattern: "GET /api/openapi.json", handler: serveOpenAPI},
		{Pattern: "GET /api/v1/openapi.json", handler: serveOpenAPI},
		{Pattern: "GET /api/docs", handler: serveDocs},
	}
}

func (a *API) ctx(r *http.Request) (context.Context, context.CancelFunc) {
	d := a.QueryTimeout
	if d == 0 {
		d = 30 * time.Second
	}
	return context.WithTimeout(r.Context(), d)
}

// WriteJSON writes v as JSON with status code.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(code)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(v)
}

func (a *API) fail(w http.ResponseWriter, r *http.Request, op string, err error) {
	if errors.Is(err, context.Canceled) && r.Context().Err() != nil {
		return // the client went away
	}
	code := http.StatusInternalServerError
	if errors.Is(err, context.DeadlineExceeded) {
		code = http.StatusGatewayTimeout
	}
	if a.Log != nil {
		a.Log.Error(op, "path", r.URL.Path, "err", err)
	}
	writeProblem(w, r, code, op+": "+err.Error())
}

// badRequest answers 400 with err as the detail.
func badRequest(w http.ResponseWriter, r *http.Request, err error) {
	writeProblem(w, r, http.StatusBadRequest, err.Error())
}

// params reads query parameters, collecting the first error.
type params struct {
	r   *http.Request
	err error
}

func (p *params) bad(format string, args ...any) {
	if p.err == nil {
		p.err = fmt.Errorf(format, args...)
	}
}

func (p *params) str(name string) string {
	if vs := p.r.URL.Query()[name]; len(vs) > 1 {
		p.bad("parameter %s given %d times; give it once", name, len(vs))
	}
	v := strings.TrimSpace(QueryParam(p.r, name))
	if !Text(v) {
		p.bad("%s: not UTF-8 text, or holds a NUL character", name)
		return ""
	}
	return v
}

// Text says whether s can be a text parameter: valid UTF-8 without NUL
// (PostgreSQL text holds neither).
func Text(s string) bool { return utf8.ValidString(s) && !strings.ContainsRune(s, 0) }

// Times outside [MinTime, MaxTime] are refused: Go's Unix nanoseconds (and
// the time buckets computed from them) cover 1677-09-21 to 2262-04-11.
var (
	MinTime = time.Date(1678, 1, 1, 0, 0, 0, 0, time.UTC)
	MaxTime = time.Date(2262, 1, 1, 0, 0, 0, 0, time.UTC)
)

// QueryParam is r's query parameter name; every handler reads its
// parameters through it, so that TraceParams can list them.
func QueryParam(r *http.Request, name string) string {
	if tr, ok := r.Context().Value(traceKey{}).(*[]string); ok {
		*tr = append(*tr, name)
	}
	return r.URL.Query().Get(name)
}

type traceKey struct{}

// TraceParams returns r with a trace of the query parameters its handler
// reads (QueryParam) and a function that lists them: the OpenAPI test
// compares them with the document.
func TraceParams(r *http.Request) (*http.Request, func() []string) {
	var seen []string
	return r.WithContext(context.WithValue(r.Context(), traceKey{}, &seen)), func() []string { return seen }
}

// time reads an RFC 3339 time; zero when absent.
func (p *params) time(name string) time.Time {
	v := p.str(name)
	if v == "" {
		return time.Time{}
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		p.bad("%s: %q is not an RFC 3339 time (e.g. 2024-05-01T12:00:00Z)", name, v)
		return time.Time{}
	}
	if t.Before(MinTime) || t.After(MaxTime) {
		p.bad("%s: %s is outside %s to %s", name, v, MinTime.Format("2006-01-02"), MaxTime.Format("2006-01-02"))
		return time.Time{}
	}
	return t
}

// int reads an integer in [lo, hi]; def when absent.
func (p *params) int(name string, def, lo, hi int) int {
	v := p.str(name)
	if v == "" {
		return def
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < lo || n > hi {
		p.bad("%s: %q is not an integer from %d to %d", name, v, lo, hi)
		return def
	}
	return n
}

func (p *params) limit() int { return p.int("limit", DefaultLimit, 1, MaxLimit) }

// protocol names accepted by the proto parameter besides numbers.
var protoNumbers = map[string]int{"icmp": 1, "igmp": 2, "tcp": 6, "udp": 17, "gre": 47, "esp": 50,
	"icmp6": 58, "icmpv6": 58, "ipv6-icmp": 58, "sctp": 132}

// ProtoName is the lower-case name of an IP protocol number, or its number.
func ProtoName(n int) string {
	switch n {
	case 1:
		return "icmp"
	case 2:
		return "igmp"
	case 6:
		return "tcp"
	case 17:
		return "udp"
	case 47:
		return "gre"
	case 50:
		return "esp"
	case 58:
		return "icmp6"
	case 132:
		return "sctp"
	}
	return strconv.Itoa(n)
}

// ParseProto reads an IP protocol number or name; -1 for "".
func ParseProto(v string) (int, error) {
	if v == "" {
		return -1, nil
	}
	if n, ok := protoNumbers[strings.ToLower(v)]; ok {
		return n, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 0 || n > 255 {
		return -1, fmt.Errorf("proto: %q is not an IP protocol number (0-255) or name (tcp, udp, icmp, icmp6, ...)", v)
	}
	return n, nil
}

func (p *params) proto() int {
	n, err := ParseProto(p.str("proto"))
	if err != nil {
		p.bad("%v", err)
	}
	return n
}

// ParseAddr reads an address or CIDR prefix; ok is false for "".
func ParseAddr(v string) (netip.Prefix, bool, error) {
	if v == "" {
		return netip.Prefix{}, false, nil
	}
	if strings.Contains(v, "/") {
		pf, err := netip.ParsePrefix(v)
		if err != nil {
			return netip.Prefix{}, false, fmt.Errorf("addr: %q is not an IP address or CIDR prefix", v)
		}
		return pf.Masked(), true, nil
	}
	ad, err := netip.ParseAddr(v)
	if err != nil {
		return netip.Prefix{}, false, fmt.Errorf("addr: %q is not an IP address or CIDR prefix", v)
	}
	ad = ad.WithZone("") // ::ffff:10.0.0.1 stays IPv6: PostgreSQL's inet and the sink keep it apart from 10.0.0.1
	return netip.PrefixFrom(ad, ad.BitLen()), true, nil
}

func (p *params) addr() (netip.Prefix, bool) {
	pf, ok, err := ParseAddr(p.str("addr"))
	if err != nil {
		p.bad("%v", err)
	}
	return pf, ok
}

// where builds a SQL WHERE clause with $n placeholders.
type where struct {
	sch   *dbSchema // for columns that may not exist yet; nil: all do
	conds []string
	args  []any
}

// arg adds v as a parameter and returns its placeholder.
func (q *where) arg(v any) string {
	q.args = append(q.args, v)
	return "$" + strconv.Itoa(len(q.args))
}

func (q *where) add(cond string) { q.conds = append(q.conds, cond) }

func (q *where) sql() string {
	if len(q.conds) == 0 {
		return ""
	}
	return " WHERE " + strings.Join(q.conds, " AND ")
}

// addrCond matches either side of the pair of columns a, b.
func (q *where) addrCond(pf netip.Prefix, a, b string) {
	if pf.IsSingleIP() {
		x := q.arg(pf.Addr())
		q.add(fmt.Sprintf("(%s = %s::inet OR %s = %s::inet)", a, x, b, x))
		return
	}
	x := q.arg(pf)
	q.add(fmt.Sprintf("(%s <<= %s::inet OR %s <<= %s::inet)", a, x, b, x))
}

// timeRange adds col >= from and col < to for the non-zero ones.
func (q *where) timeRange(col string, from, to time.Time) {
	if !from.IsZero() {
		q.add(col + " >= " + q.arg(from))
	}
	if !to.IsZero() {
		q.add(col + " < " + q.arg(to))
	}
}

// cursor is the position after the last row of a page, for keyset
// pagination on (sort key, id). On the wire it is opaque: base64url of its
// JSON. S names the sort it belongs to; T is the key of a time sort, V of a
// numeric one.
type cursor struct {
	S  string    `json:"s,omitempty"` // sort ("" = the default, newest first)
	T  time.Time `json:"t"`
	V  int64     `json:"v,omitempty"`
	ID string    `json:"i"`
}

func (c cursor) String() string {
	b, _ := json.Marshal(c)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (p *params) cursor() (cursor, bool) {
	v := p.str("cursor")
	if v == "" {
		return cursor{}, false
	}
	var c cursor
	b, err := base64.RawURLEncoding.DecodeString(v)
	if err == nil {
		err = json.Unmarshal(b, &c)
	}
	if err != nil || c.ID == "" || c.T.IsZero() {
		p.bad("cursor: %q is not a cursor from a previous page's next", v)
		return cursor{}, false
	}
	return c, true
}

func contextWithValue(r *http.Request, k, v any) context.Context {
	return context.WithValue(r.Context(), k, v)
}
