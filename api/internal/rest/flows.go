package rest

import (
	"context"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"netwatch/api/internal/record"
)

// flowColumns is the SELECT list that ScanFlow reads, in order. The
// context columns (country … http_user_agent) are those of the sink's
// migration 00004_flow_context; without them they read as their defaults.
// Since sink migration 00013 an optional column holds NULL for an unknown
// value ("" / 0 / false in rows stored before): each reads as its default
// (COALESCE), so a record prints the same either way.
func flowColumns(s *dbSchema) string {
	cols := `id, community_id, sensor, proto, host(orig_addr), orig_port, host(resp_addr), resp_port,
	COALESCE(vlan, 0), COALESCE(inner_vlan, 0), COALESCE(icmp_type, 0), COALESCE(icmp_code, 0), start, "end", flow_start,
	orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
	COALESCE(orig_tcp_flags, 0), COALESCE(resp_tcp_flags, 0), COALESCE(record_index, 0), final,
	COALESCE(end_reason, ''), COALESCE(direction_guessed, false),
	COALESCE(app, ''), COALESCE(conn_state, ''), COALESCE(history, ''), COALESCE(tunnel, ''), COALESCE(tunnel_id, 0),
	COALESCE(server_name, ''), COALESCE(direction, ''), COALESCE(orig_name, ''), COALESCE(resp_name, '')`
	for _, c := range contextColumns {
		cols += ", " + s.val("flows", c.name, c.def)
	}
	return cols
}

// contextColumns are the flow columns of migration 00004 with their defaults.
var contextColumns = []struct{ name, def string }{
	{"orig_country", "''"}, {"orig_city", "''"}, {"orig_asn", "0::bigint"}, {"orig_as_org", "''"},
	{"resp_country", "''"}, {"resp_city", "''"}, {"resp_asn", "0::bigint"}, {"resp_as_org", "''"},
	{"app_from_port", "false"}, {"ja3", "''"}, {"ja4", "''"}, {"http_user_agent", "''"},
}

// ScanFlow reads one row selected with flowColumns. Since sink migration
// 00011 id is a uuid and community_id a bytea (see StoredCommunityID); both
// come out as before: 32 lower-case hex digits and the Community ID text (a
// NULL community_id, sink 00013, as "").
func ScanFlow(row pgx.Row) (record.Flow, error) {
	var f record.Flow
	var start, end, flowStart time.Time
	var cid []byte
	err := row.Scan(&f.ID, &cid, &f.Sensor, &f.Proto, &f.OrigAddr, &f.OrigPort, &f.RespAddr, &f.RespPort,
		&f.Vlan, &f.InnerVlan, &f.IcmpType, &f.IcmpCode, &start, &end, &flowStart,
		&f.OrigPkts, &f.OrigIPBytes, &f.OrigBytes, &f.RespPkts, &f.RespIPBytes, &f.RespBytes,
		&f.OrigTCPFlags, &f.RespTCPFlags, &f.RecordIndex, &f.Final, &f.EndReason, &f.DirectionGuessed,
		&f.App, &f.ConnState, &f.History, &f.Tunnel, &f.TunnelID, &f.ServerName, &f.Direction, &f.OrigName, &f.RespName,
		&f.OrigCountry, &f.OrigCity, &f.OrigASN, &f.OrigASOrg, &f.RespCountry, &f.RespCity, &f.RespASN, &f.RespASOrg,
		&f.AppFromPort, &f.JA3, &f.JA4, &f.HTTPUserAgent)
	f.Start, f.End, f.FlowStart = record.Time(start), record.Time(end), record.Time(flowStart)
	f.Duration = float64(end.Sub(start).Nanoseconds()) / 1e9 // as the live feed (record.FlowFromPB): Seconds() prints 1.9477790000000001 for 1.947779 s
	f.ID = flowIDText(f.ID)
	f.CommunityID = communityIDText(cid)
	return f, err
}

// flowIDText is a stored flow id as the api shows it: a uuid (sink 00011,
// 8-4-4-4-12 hex digits) as the 32 hex digits of schema.FlowID; a text id
// (before 00011) as it is.
func flowIDText(id string) string {
	if len(id) == 36 && id[8] == '-' && id[13] == '-' && id[18] == '-' && id[23] == '-' {
		return id[:8] + id[9:13] + id[14:18] + id[19:23] + id[24:]
	}
	return id
}

// communityIDText is the text of a stored community_id: since sink
// migration 00011 a Community ID v1 is stored as the byte 1 and its 20-byte
// SHA-1 ("1:" + base64, https://github.com/corelight/community-id-spec), a
// text starting with byte 0 or 1 behind a 0 byte, any other text as its
// bytes (and before 00011 it was text).
func communityIDText(b []byte) string {
	switch {
	case len(b) == 21 && b[0] == 1:
		return "1:" + base64.StdEncoding.EncodeToString(b[1:])
	case len(b) > 0 && b[0] == 0:
		return string(b[1:])
	}
	return string(b)
}

// StoredCommunityID is s as stored in community_id since sink migration
// 00011 (the inverse of communityIDText; the sink's rule).
func StoredCommunityID(s string) []byte {
	if s == "" {
		return []byte{}
	}
	if len(s) == 30 && s[:2] == "1:" {
		var h [21]byte
		if n, err := base64.StdEncoding.Decode(h[1:], []byte(s[2:])); err == nil && n == 20 &&
			base64.StdEncoding.EncodeToString(h[1:]) == s[2:] {
			h[0] = 1
			return h[:]
		}
	}
	if s[0] <= 1 {
		return append([]byte{0}, s...)
	}
	return []byte(s)
}

// isFlowUUID reports whether id is 32 hex digits, the only ids a flows
// table of sink migration 00011 (id uuid) holds.
func isFlowUUID(id string) bool {
	if len(id) != 32 {
		return false
	}
	_, err := hex.DecodeString(id)
	return err == nil
}

// FlowFilter selects flows; zero fields match everything.
type FlowFilter struct {
	From, To    time.Time // start >= From, start < To
	Sensor      string
	Addr        string // address or CIDR prefix, either side; already validated
	Port        int    // either side; -1 any
	Proto       int    // -1 any
	CommunityID string
	App         string
	Direction   string // outbound, inbound, internal, external
	Country     string // ISO 3166-1 alpha-2, either side, upper case
	ASN         int64  // either side; 0 any
}

// Rollupable reports whether the per-minute rollups can answer f: only a
// time range and a sensor, the range on whole minutes (the rollup table
// must exist too: see dbSchema).
func (f FlowFilter) Rollupable() bool {
	return f.Addr == "" && f.Port < 0 && f.Proto < 0 && f.CommunityID == "" && f.App == "" && f.Direction == "" &&
		f.Country == "" && f.ASN == 0 && onMinute(f.From) && onMinute(f.To)
}

// RollupableAnyRange reports whether the rollups can answer f for any time
// range: only a time range and a sensor. A range that cuts a minute is read
// from the rollups for its whole minutes and from flows for the seconds at
// its ends (rollupFrom).
func (f FlowFilter) RollupableAnyRange() bool {
	return f.Addr == "" && f.Port < 0 && f.Proto < 0 && f.CommunityID == "" && f.App == "" && f.Direction == "" &&
		f.Country == "" && f.ASN == 0
}

func onMinute(t time.Time) bool { return t.IsZero() || t.Equal(t.Truncate(time.Minute)) }

// directions are the values of flows.direction (the enricher's local-network
// classification).
var directions = map[string]bool{"outbound": true, "inbound": true, "internal": true, "external": true}

func (p *params) flowFilter() FlowFilter {
	f := FlowFilter{From: p.time("from"), To: p.time("to"), Sensor: p.str("sensor"), Port: p.int("port", -1, 0, 65535),
		Proto: p.proto(), CommunityID: p.str("community_id"), App: strings.ToLower(p.str("app")),
		Direction: strings.ToLower(p.str("direction")), Country: strings.ToUpper(p.str("country"))}
	if pf, ok := p.addr(); ok {
		f.Addr = pf.String()
	}
	if f.Direction != "" && !directions[f.Direction] {
		p.bad("direction: %q is not outbound, inbound, internal or external", f.Direction)
	}
	if f.Country != "" && (len(f.Country) != 2 || f.Country[0] < 'A' || f.Country[0] > 'Z' || f.Country[1] < 'A' || f.Country[1] > 'Z') {
		p.bad("country: %q is not an ISO 3166-1 alpha-2 code (e.g. SE)", p.str("country"))
	}
	if v := p.str("asn"); v != "" {
		n, err := strconv.ParseUint(strings.TrimPrefix(strings.ToUpper(v), "AS"), 10, 32)
		if err != nil || n == 0 {
			p.bad("asn: %q is not an AS number from 1 to 4294967295 (e.g. 15169 or AS15169)", v)
		}
		f.ASN = int64(n)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		p.bad("from must be before to")
	}
	return f
}

func (q *where) flows(f FlowFilter) {
	q.timeRange("start", f.From, f.To)
	if f.Sensor != "" {
		q.add("sensor = " + q.arg(f.Sensor))
	}
	if f.Addr != "" {
		pf, _, _ := ParseAddr(f.Addr)
		q.addrCond(pf, "orig_addr", "resp_addr")
		if pf.IsSingleIP() && q.sch != nil && q.sch.addrGIN {
			// The same rows, in the form the GIN index of sink 00012 serves.
			q.add("ARRAY[orig_addr, resp_addr] @> ARRAY[" + q.arg(pf.Addr()) + "::inet]")
		}
	}
	if f.Port >= 0 {
		x := q.arg(f.Port)
		q.add("(orig_port = " + x + " OR resp_port = " + x + ")")
	}
	if f.Proto >= 0 {
		q.add("proto = " + q.arg(f.Proto))
	}
	if f.CommunityID != "" {
		if q.sch.compact() {
			q.add("community_id = " + q.arg(StoredCommunityID(f.CommunityID)))
		} else {
			q.add("community_id = " + q.arg(f.CommunityID))
		}
	}
	if f.App != "" {
		q.add("app = " + q.arg(f.App))
	}
	if f.Direction != "" {
		q.add("direction = " + q.arg(f.Direction))
	}
	if f.Country != "" {
		x := q.arg(f.Country)
		q.add("(" + q.sch.col("flows", "orig_country", "''") + " = " + x + " OR " + q.sch.col("flows", "resp_country", "''") + " = " + x + ")")
	}
	if f.ASN != 0 {
		x := q.arg(f.ASN)
		q.add("(" + q.sch.col("flows", "orig_asn", "0") + " = " + x + " OR " + q.sch.col("flows", "resp_asn", "0") + " = " + x + ")")
	}
}

// flowSort is one order of GET /api/v1/flows: a key expression, whether it
// is a time, and the direction.
type flowSort struct {
	expr string
	time bool
	desc bool
}

// flowSorts are the values of the sort parameter; "-" = descending.
// The default is -start (newest first).
var flowSorts = map[string]flowSort{
	"-start": {"start", true, true}, "start": {"start", true, false},
	"-bytes": {"(orig_ip_bytes + resp_ip_bytes)", false, true}, "bytes": {"(orig_ip_bytes + resp_ip_bytes)", false, false},
	"-pkts": {"(orig_pkts + resp_pkts)", false, true}, "pkts": {"(orig_pkts + resp_pkts)", false, false},
}

// FlowsPage is the body of GET /api/v1/flows.
type FlowsPage struct {
	Flows []record.Flow `json:"flows"`
	Next  string        `json:"next,omitempty"` // cursor of the next page; absent on the last
}

func (a *API) flows(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	limit := p.limit()
	cur, hasCur := p.cursor()
	sortName := p.str("sort")
	if sortName == "" {
		sortName = "-start"
	}
	srt, ok := flowSorts[sortName]
	if !ok {
		p.bad("sort: %q is not one of start, -start, bytes, -bytes, pkts, -pkts", sortName)
	}
	if hasCur && cur.S != "" && cur.S != sortName || hasCur && cur.S == "" && sortName != "-start" {
		p.bad("cursor: it belongs to another sort than %q", sortName)
	}
	if p.err != nil {
		badRequest(w, r, p.err)
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	if hasCur && sch.compact() && !isFlowUUID(cur.ID) {
		badRequest(w, r, errors.New("cursor: it is not a cursor from a previous page's next"))
		return
	}
	q := &where{sch: sch}
	q.flows(f)
	op, dir := ">", "ASC"
	if srt.desc {
		op, dir = "<", "DESC"
	}
	if hasCur {
		var key any = cur.V
		if srt.time {
			key = cur.T
		}
		q.add("(" + srt.expr + ", id) " + op + " (" + q.arg(key) + ", " + q.arg(cur.ID) + ")")
	}
	sql := "SELECT " + flowColumns(sch) + " FROM flows" + q.sql() + " ORDER BY " + srt.expr + " " + dir + ", id " + dir +
		" LIMIT " + q.arg(limit+1)
	var flows []record.Flow
	if f.CommunityID != "" {
		flows, err = queryFlowsIndexed(ctx, a.Pool, sql, q.args...)
	} else {
		flows, err = queryFlows(ctx, a.Pool, sql, q.args...)
	}
	if err != nil {
		a.fail(w, r, "query flows", err)
		return
	}
	page := FlowsPage{Flows: flows}
	if len(flows) > limit {
		page.Flows = flows[:limit]
		last := page.Flows[limit-1]
		c := cursor{T: time.Time(last.Start), ID: last.ID}
		if sortName != "-start" {
			c.S = sortName
		}
		switch srt.expr {
		case flowSorts["bytes"].expr:
			c.V = last.OrigIPBytes + last.RespIPBytes
		case flowSorts["pkts"].expr:
			c.V = last.OrigPkts + last.RespPkts
		}
		page.Next = c.String()
	}
	a.HostScores.Annotate(ctx, page.Flows)
	WriteJSON(w, http.StatusOK, page)
}

// flow answers GET /api/v1/flows/{id}: every stored record of the flow
// record id (one row; a flow's interim records have ids of their own).
func (a *API) flow(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !isHexID(id) {
		writeProblem(w, r, http.StatusBadRequest, "id: "+strconv.Quote(id)+" is not a flow id (32 hex digits)")
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	if sch.compact() && !isFlowUUID(id) {
		// Not 32 hex digits: no stored flow has this id (flows.id is a uuid).
		writeProblem(w, r, http.StatusNotFound, "no flow with id "+id)
		return
	}
	var f record.Flow
	err = withIndexScans(ctx, a.Pool, func(tx pgx.Tx) (err error) {
		f, err = ScanFlow(tx.QueryRow(ctx, "SELECT "+flowColumns(sch)+" FROM flows WHERE id = $1 LIMIT 1", id))
		return err
	})
	if errors.Is(err, pgx.ErrNoRows) {
		writeProblem(w, r, http.StatusNotFound, "no flow with id "+id)
		return
	}
	if err != nil {
		a.fail(w, r, "query flow", err)
		return
	}
	one := []record.Flow{f}
	a.HostScores.Annotate(ctx, one)
	WriteJSON(w, http.StatusOK, one[0])
}

// isHexID reports whether s looks like a schema.FlowID or AlertID: 1 to 64
// hex digits (ids are 32; tests use shorter ones too).
func isHexID(s string) bool {
	if s == "" || len(s) > 64 {
		return false
	}
	for _, c := range s {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// queryFlows runs sql, which selects flowColumns, and returns the flows
// (an empty, non-nil slice when none).
// queryFlowsIndexed is queryFlows under withIndexScans: for a Community ID
// search, which its BRIN bloom index answers in 20-35 ms over 10 M flows.
func queryFlowsIndexed(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) (out []record.Flow, err error) {
	err = withIndexScans(ctx, pool, func(tx pgx.Tx) error {
		out, err = queryFlows(ctx, tx, sql, args...)
		return err
	})
	return out, err
}

// withIndexScans runs fn in a read-only transaction with sequential scans
// disabled (SET LOCAL enable_seqscan = off), for the exact lookups of one
// flow id or Community ID that a BRIN bloom index serves (sink 00011,
// 00014): PostgreSQL cannot estimate such an index's selectivity (it
// assumes a large share of the pages match), so with a bound parameter it
// planned a parallel scan of the whole table instead, 1.5-1.9 s over 10 M
// flows against 20-35 ms through the index (docs/PERFORMANCE.md, "REST over
// 10 M stored flows").
func withIndexScans(ctx context.Context, pool *pgxpool.Pool, fn func(tx pgx.Tx) error) error {
	tx, err := pool.BeginTx(ctx, pgx.TxOptions{AccessMode: pgx.ReadOnly})
	if err != nil {
		return err
	}
	defer tx.Rollback(context.WithoutCancel(ctx))
	if _, err := tx.Exec(ctx, "SET LOCAL enable_seqscan = off"); err != nil {
		return err
	}
	if err := fn(tx); err != nil {
		return err
	}
	return tx.Commit(ctx)
}

// flowQuerier is what queryFlows reads from: the pool or a transaction.
type flowQuerier interface {
	Query(ctx context.Context, sql string, args ...any) (pgx.Rows, error)
}

func queryFlows(ctx context.Context, pool flowQuerier, sql string, args ...any) ([]record.Flow, error) {
	rows, err := pool.Query(ctx, sql, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	out := []record.Flow{}
	for rows.Next() {
		f, err := ScanFlow(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	return out, rows.Err()
}

// QueryFlows is queryFlows for other packages (the live replay).
func QueryFlows(ctx context.Context, pool *pgxpool.Pool, f FlowFilter, after time.Time, afterID string, limit int) ([]record.Flow, error) {
	sch, err := schemaOf(ctx, pool)
	if err != nil {
		return nil, err
	}
	q := &where{sch: sch}
	q.flows(f)
	if afterID != "" && sch.compact() && !isFlowUUID(afterID) {
		return nil, errors.New("after id " + strconv.Quote(afterID) + " is not a flow id (32 hex digits)")
	}
	if afterID != "" {
		q.add("(start, id) > (" + q.arg(after) + ", " + q.arg(afterID) + ")")
	}
	sql := "SELECT " + flowColumns(sch) + " FROM flows" + q.sql() + " ORDER BY start, id LIMIT " + q.arg(limit)
	return queryFlows(ctx, pool, sql, q.args...)
}
