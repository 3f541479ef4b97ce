package rest

import (
	"context"
	"net/http"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"netwatch/api/internal/record"
)

// FlowColumns is the SELECT list that ScanFlow reads, in order.
const FlowColumns = `id, community_id, sensor, proto, host(orig_addr), orig_port, host(resp_addr), resp_port,
	vlan, inner_vlan, icmp_type, icmp_code, start, "end", flow_start,
	orig_pkts, orig_ip_bytes, orig_bytes, resp_pkts, resp_ip_bytes, resp_bytes,
	orig_tcp_flags, resp_tcp_flags, record_index, final, end_reason, direction_guessed,
	app, conn_state, history, tunnel, tunnel_id, server_name, direction, orig_name, resp_name`

// ScanFlow reads one row selected with FlowColumns.
func ScanFlow(row pgx.Row) (record.Flow, error) {
	var f record.Flow
	var start, end, flowStart time.Time
	err := row.Scan(&f.ID, &f.CommunityID, &f.Sensor, &f.Proto, &f.OrigAddr, &f.OrigPort, &f.RespAddr, &f.RespPort,
		&f.Vlan, &f.InnerVlan, &f.IcmpType, &f.IcmpCode, &start, &end, &flowStart,
		&f.OrigPkts, &f.OrigIPBytes, &f.OrigBytes, &f.RespPkts, &f.RespIPBytes, &f.RespBytes,
		&f.OrigTCPFlags, &f.RespTCPFlags, &f.RecordIndex, &f.Final, &f.EndReason, &f.DirectionGuessed,
		&f.App, &f.ConnState, &f.History, &f.Tunnel, &f.TunnelID, &f.ServerName, &f.Direction, &f.OrigName, &f.RespName)
	f.Start, f.End, f.FlowStart = record.Time(start), record.Time(end), record.Time(flowStart)
	f.Duration = end.Sub(start).Seconds()
	return f, err
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
}

func (p *params) flowFilter() FlowFilter {
	f := FlowFilter{From: p.time("from"), To: p.time("to"), Sensor: p.str("sensor"), Port: p.int("port", -1, 0, 65535),
		Proto: p.proto(), CommunityID: p.str("community_id"), App: strings.ToLower(p.str("app"))}
	if pf, ok := p.addr(); ok {
		f.Addr = pf.String()
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
	}
	if f.Port >= 0 {
		x := q.arg(f.Port)
		q.add("(orig_port = " + x + " OR resp_port = " + x + ")")
	}
	if f.Proto >= 0 {
		q.add("proto = " + q.arg(f.Proto))
	}
	if f.CommunityID != "" {
		q.add("community_id = " + q.arg(f.CommunityID))
	}
	if f.App != "" {
		q.add("app = " + q.arg(f.App))
	}
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
	if p.err != nil {
		WriteError(w, http.StatusBadRequest, p.err.Error())
		return
	}
	if !f.From.IsZero() && !f.To.IsZero() && !f.From.Before(f.To) {
		WriteError(w, http.StatusBadRequest, "from must be before to")
		return
	}
	q := &where{}
	q.flows(f)
	if hasCur {
		q.add("(start, id) < (" + q.arg(cur.T) + ", " + q.arg(cur.ID) + ")")
	}
	sql := "SELECT " + FlowColumns + " FROM flows" + q.sql() + " ORDER BY start DESC, id DESC LIMIT " + q.arg(limit+1)
	ctx, cancel := a.ctx(r)
	defer cancel()
	flows, err := queryFlows(ctx, a.Pool, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query flows", err)
		return
	}
	page := FlowsPage{Flows: flows}
	if len(flows) > limit {
		page.Flows = flows[:limit]
		last := page.Flows[limit-1]
		page.Next = cursor{T: time.Time(last.Start), ID: last.ID}.String()
	}
	WriteJSON(w, http.StatusOK, page)
}

// QueryFlows runs sql, which selects FlowColumns, and returns the flows
// (an empty, non-nil slice when none).
func queryFlows(ctx context.Context, pool *pgxpool.Pool, sql string, args ...any) ([]record.Flow, error) {
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
	q := &where{}
	q.flows(f)
	if afterID != "" {
		q.add("(start, id) > (" + q.arg(after) + ", " + q.arg(afterID) + ")")
	}
	sql := "SELECT " + FlowColumns + " FROM flows" + q.sql() + " ORDER BY start, id LIMIT " + q.arg(limit)
	return queryFlows(ctx, pool, sql, q.args...)
}
