package rest

import (
	"net/http"
	"time"

	"netwatch/api/internal/record"
)

// Talker is one address's traffic over a range, both directions.
type Talker struct {
	Addr      string `json:"addr"`
	Bytes     int64  `json:"bytes"` // IP-layer bytes sent + received
	Pkts      int64  `json:"pkts"`
	SentBytes int64  `json:"sent_bytes"`
	RecvBytes int64  `json:"recv_bytes"`
	SentPkts  int64  `json:"sent_pkts"`
	RecvPkts  int64  `json:"recv_pkts"`
	Flows     int64  `json:"flows"` // flow records it appears in
}

func (a *API) topTalkers(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	limit := p.int("limit", 10, 1, MaxLimit)
	by := p.str("by")
	switch by {
	case "", "bytes":
		by = "bytes"
	case "pkts", "flows":
	default:
		p.bad("by: %q is not bytes, pkts or flows", by)
	}
	if p.err != nil {
		WriteError(w, http.StatusBadRequest, p.err.Error())
		return
	}
	q := &where{}
	q.flows(f)
	order := map[string]string{"bytes": "sb + rb", "pkts": "sp + rp", "flows": "n"}[by]
	sql := `WITH f AS (SELECT orig_addr, resp_addr, orig_ip_bytes, resp_ip_bytes, orig_pkts, resp_pkts FROM flows` + q.sql() + `),
	t AS (SELECT orig_addr AS addr, orig_ip_bytes AS sb, resp_ip_bytes AS rb, orig_pkts AS sp, resp_pkts AS rp FROM f
		UNION ALL SELECT resp_addr, resp_ip_bytes, orig_ip_bytes, resp_pkts, orig_pkts FROM f),
	g AS (SELECT host(addr) AS addr, sum(sb)::bigint AS sb, sum(rb)::bigint AS rb, sum(sp)::bigint AS sp,
		sum(rp)::bigint AS rp, count(*) AS n FROM t GROUP BY addr)
	SELECT addr, sb, rb, sp, rp, n FROM g ORDER BY ` + order + ` DESC, addr LIMIT ` + q.arg(limit)
	ctx, cancel := a.ctx(r)
	defer cancel()
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query top talkers", err)
		return
	}
	defer rows.Close()
	out := []Talker{}
	for rows.Next() {
		var t Talker
		if err := rows.Scan(&t.Addr, &t.SentBytes, &t.RecvBytes, &t.SentPkts, &t.RecvPkts, &t.Flows); err != nil {
			a.fail(w, r, "scan top talkers", err)
			return
		}
		t.Bytes, t.Pkts = t.SentBytes+t.RecvBytes, t.SentPkts+t.RecvPkts
		out = append(out, t)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query top talkers", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"talkers": out, "by": by})
}

// Protocol is the traffic of one IP protocol and application.
type Protocol struct {
	Proto int    `json:"proto"`
	Name  string `json:"name"` // tcp, udp, icmp, ... or the number
	App   string `json:"app"`  // "" when unknown
	Flows int64  `json:"flows"`
	Pkts  int64  `json:"pkts"`
	Bytes int64  `json:"bytes"` // IP-layer, both directions
}

func (a *API) protocols(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	if p.err != nil {
		WriteError(w, http.StatusBadRequest, p.err.Error())
		return
	}
	q := &where{}
	q.flows(f)
	ctx, cancel := a.ctx(r)
	defer cancel()
	rows, err := a.Pool.Query(ctx, `SELECT proto, app, count(*), sum(orig_pkts + resp_pkts)::bigint,
		sum(orig_ip_bytes + resp_ip_bytes)::bigint FROM flows`+q.sql()+` GROUP BY proto, app ORDER BY 5 DESC, 1, 2`, q.args...)
	if err != nil {
		a.fail(w, r, "query protocols", err)
		return
	}
	defer rows.Close()
	out := []Protocol{}
	for rows.Next() {
		var pr Protocol
		if err := rows.Scan(&pr.Proto, &pr.App, &pr.Flows, &pr.Pkts, &pr.Bytes); err != nil {
			a.fail(w, r, "scan protocols", err)
			return
		}
		pr.Name = ProtoName(pr.Proto)
		out = append(out, pr)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query protocols", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"protocols": out})
}

// Point is one time-series bucket. A flow record counts wholly in the
// bucket of its start.
type Point struct {
	Time  record.Time `json:"time"` // bucket start
	Flows int64       `json:"flows"`
	Pkts  int64       `json:"pkts"`
	Bytes int64       `json:"bytes"` // IP-layer, both directions
	BPS   float64     `json:"bps"`   // bits per second over the bucket
	PPS   float64     `json:"pps"`   // packets per second over the bucket
}

// maxPoints bounds a time series' buckets.
const maxPoints = 10000

func (a *API) timeseries(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	step := time.Minute
	if v := p.str("step"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second {
			p.bad("step: %q is not a duration of at least 1s (e.g. 10s, 1m, 1h)", v)
		} else {
			step = d.Truncate(time.Second)
		}
	}
	if p.err != nil {
		WriteError(w, http.StatusBadRequest, p.err.Error())
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	if f.To.IsZero() {
		// Default: the hour up to the newest matching flow, so that a
		// replayed capture from any year shows up.
		q := &where{}
		q.flows(f)
		var newest *time.Time
		if err := a.Pool.QueryRow(ctx, "SELECT max(start) FROM flows"+q.sql(), q.args...).Scan(&newest); err != nil {
			a.fail(w, r, "query newest flow", err)
			return
		}
		if newest == nil {
			now := time.Now()
			newest = &now
		}
		f.To = floorStep(*newest, step).Add(step)
	}
	if f.From.IsZero() {
		f.From = f.To.Add(-time.Hour)
	}
	f.From = floorStep(f.From, step)
	if !f.From.Before(f.To) {
		WriteError(w, http.StatusBadRequest, "from must be before to")
		return
	}
	n := int((f.To.Sub(f.From) + step - 1) / step)
	if n > maxPoints {
		WriteError(w, http.StatusBadRequest, "too many buckets: widen step or narrow from/to (at most 10000)")
		return
	}
	q := &where{}
	q.flows(f)
	sql := `SELECT date_bin(make_interval(secs => ` + q.arg(step.Seconds()) + `), start, TIMESTAMPTZ 'epoch') AS b,
		count(*), sum(orig_pkts + resp_pkts)::bigint, sum(orig_ip_bytes + resp_ip_bytes)::bigint
		FROM flows` + q.sql() + ` GROUP BY b ORDER BY b`
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query time series", err)
		return
	}
	defer rows.Close()
	points := make([]Point, n)
	for i := range points {
		points[i].Time = record.Time(f.From.Add(time.Duration(i) * step))
	}
	for rows.Next() {
		var b time.Time
		var pt Point
		if err := rows.Scan(&b, &pt.Flows, &pt.Pkts, &pt.Bytes); err != nil {
			a.fail(w, r, "scan time series", err)
			return
		}
		i := int(b.Sub(f.From) / step)
		if i < 0 || i >= n {
			continue
		}
		pt.Time = points[i].Time
		points[i] = pt
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query time series", err)
		return
	}
	for i := range points {
		points[i].BPS = float64(points[i].Bytes*8) / step.Seconds()
		points[i].PPS = float64(points[i].Pkts) / step.Seconds()
	}
	WriteJSON(w, http.StatusOK, map[string]any{"from": record.Time(f.From), "to": record.Time(f.To),
		"step_seconds": step.Seconds(), "points": points})
}

// floorStep rounds t down to a multiple of step since the Unix epoch, as
// PostgreSQL's date_bin(step, t, 'epoch') does.
func floorStep(t time.Time, step time.Duration) time.Time {
	ns := t.UnixNano()
	r := ns % int64(step)
	if r < 0 {
		r += int64(step)
	}
	return time.Unix(0, ns-r).UTC()
}
