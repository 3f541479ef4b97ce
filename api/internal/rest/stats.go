package rest

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"netwatch/api/internal/record"
)

// The statistics endpoints answer from the rollup tables the sink keeps
// (flows_, talkers_, pairs_, ports_, countries_ per minute _1m, hour _1h and
// day _1d: the database contract, each equal to a GROUP BY over flows) when
// the request filters only on a time range and a sensor
// (FlowFilter.RollupableAnyRange; the time series: on whole minutes,
// FlowFilter.Rollupable). A range is cut into whole UTC days, whole hours
// and the minutes left at its ends, each read from its tier (rollupFrom), so
// a day costs one row per key instead of 1440; the seconds of a range that
// cuts a minute (before its first whole minute, after its last) come from
// flows. Any other filter (address, port, protocol, app, Community ID,
// direction, country, ASN) has no rollup, so those requests fall back to a
// GROUP BY over flows. Both count IP-layer bytes and packets of both
// directions, and a flow record wholly in the minute of its start. The
// answer's "source" says which was used ("rollup", also with the seconds at
// the ends from flows, or "flows").

// rollupRange adds the time and sensor conditions of f on a per-minute
// rollup table.
func (q *where) rollupRange(f FlowFilter) {
	q.timeRange("minute", f.From, f.To)
	if f.Sensor != "" {
		q.add("sensor = " + q.arg(f.Sensor))
	}
}

// rollupTier is one granularity of the sink's rollups (sink migration
// 00009): table suffix, time column, bucket length (UTC-aligned).
type rollupTier struct {
	suffix, col string
	step        time.Duration
}

// rollupTiers, coarsest first.
var rollupTiers = []rollupTier{{"_1d", "day", 24 * time.Hour}, {"_1h", "hour", time.Hour}, {"_1m", "minute", time.Minute}}

// rollupPiece is a part of a range read from one tier.
type rollupPiece struct {
	tier     rollupTier
	from, to time.Time
}

// rollupPieces cuts [from, to) (both on whole minutes) into the fewest
// buckets of the tiers of base that exist in sch and whose length divides
// maxStep: greedily, from the start, the coarsest bucket that starts at the
// current time and ends by to; consecutive buckets of a tier are merged. An
// open range (from or to zero) is read from the minutes alone.
func rollupPieces(sch *dbSchema, base string, from, to time.Time, maxStep time.Duration) []rollupPiece {
	minute := rollupTiers[len(rollupTiers)-1]
	if from.IsZero() || to.IsZero() {
		return []rollupPiece{{minute, from, to}}
	}
	var usable []rollupTier // coarsest first
	for _, c := range rollupTiers {
		if c.step <= maxStep && maxStep%c.step == 0 && (c.suffix == minute.suffix || sch.hasTable(base+c.suffix)) {
			usable = append(usable, c)
		}
	}
	var ps []rollupPiece
	for t := from; t.Before(to); {
		i := len(usable) - 1 // the minutes
		for j, c := range usable {
			if t.Equal(t.Truncate(c.step)) && !t.Add(c.step).After(to) {
				i = j
				break
			}
		}
		tr := usable[i]
		// As many buckets of tr as fit, up to the first boundary of a
		// coarser tier whose bucket then fits (the next piece).
		limit := to
		for _, c := range usable[:i] {
			nb := t.Truncate(c.step)
			if nb.Before(t) {
				nb = nb.Add(c.step)
			}
			if !nb.Add(c.step).After(to) && nb.Before(limit) {
				limit = nb
			}
		}
		end := t.Add(max(1, limit.Sub(t)/tr.step) * tr.step)
		if n := len(ps); n > 0 && ps[n-1].tier == tr && ps[n-1].to.Equal(t) {
			ps[n-1].to = end
		} else {
			ps = append(ps, rollupPiece{tr, t, end})
		}
		t = end
	}
	return ps
}

// edgeRows are, per rollup base, the rows a flow record adds to that rollup
// (the sink's definitions, migrations 00003, 00006, 00009), as a SELECT over
// flows whose WHERE clause is %[1]s: t is the record's start. rollupFrom
// reads the seconds at the ends of a range that cuts a minute with them.
// An unknown app or country (NULL since sink migration 00013, "" before) is
// "", as in the rollups.
var edgeRows = map[string]string{
	"flows": `SELECT start t, sensor, proto, COALESCE(app, '') app, 1::bigint records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
		orig_bytes, resp_bytes FROM flows%[1]s`,
	"talkers": `SELECT start t, orig_addr addr, orig_pkts sent_pkts, orig_ip_bytes sent_ip_bytes, resp_pkts recv_pkts,
		resp_ip_bytes recv_ip_bytes, 1::bigint records FROM flows%[1]s
		UNION ALL SELECT start, resp_addr, resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes,
		CASE WHEN resp_addr = orig_addr THEN 0 ELSE 1 END::bigint FROM flows%[1]s`,
	"pairs": `SELECT start t, orig_addr, resp_addr, proto, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes,
		1::bigint records FROM flows%[1]s`,
	"ports": `SELECT start t, proto, resp_port, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes, 1::bigint records
		FROM flows%[1]s`,
	"countries": `SELECT start t, COALESCE(orig_country, '') country, orig_pkts sent_pkts, orig_ip_bytes sent_ip_bytes,
		resp_pkts recv_pkts, resp_ip_bytes recv_ip_bytes, 1::bigint records FROM flows%[1]s
		UNION ALL SELECT start, COALESCE(resp_country, ''), resp_pkts, resp_ip_bytes, orig_pkts, orig_ip_bytes, 1::bigint
		FROM flows%[1]s AND COALESCE(resp_country, '') <> COALESCE(orig_country, '')`,
}

// ceilMinute is t rounded up to a whole minute.
func ceilMinute(t time.Time) time.Time {
	m := t.Truncate(time.Minute)
	if m.Before(t) {
		m = m.Add(time.Minute)
	}
	return m
}

// rollupFrom is a FROM item (aliased r) over the rollups of base (flows,
// talkers, pairs, ports, countries) for f's range and sensor: the UNION ALL
// of cols from each piece of the range (rollupPieces), where the bucket's
// start is named t. maxStep limits the tiers to those whose buckets fit in
// one step of a time series (24h: any). When the range cuts a minute, the
// seconds before its first whole minute and after its last one come from
// flows (edgeRows, t the record's start): a dashboard's "last hour" ending
// now reads at most two minutes of raw flows and the rest from the rollups,
// and the answer is still exact.
func (q *where) rollupFrom(sch *dbSchema, base, cols string, f FlowFilter, maxStep time.Duration) string {
	var parts []string
	edge := func(a, b time.Time) {
		w := &where{sch: q.sch, args: q.args}
		w.timeRange("start", a, b)
		if f.Sensor != "" {
			w.add("sensor = " + w.arg(f.Sensor))
		}
		q.args = w.args
		parts = append(parts, "SELECT t, "+cols+" FROM ("+fmt.Sprintf(edgeRows[base], w.sql())+") e")
	}
	from, to := f.From, f.To
	if !from.IsZero() {
		from = ceilMinute(from)
	}
	if !to.IsZero() {
		to = to.Truncate(time.Minute)
	}
	if !f.From.IsZero() && !f.To.IsZero() && !from.Before(to) {
		edge(f.From, f.To) // no whole minute inside
		return " FROM (" + strings.Join(parts, " UNION ALL ") + ") r"
	}
	if from.After(f.From) {
		edge(f.From, from)
	}
	for _, p := range rollupPieces(sch, base, from, to, maxStep) {
		w := &where{sch: q.sch, args: q.args}
		w.timeRange(p.tier.col, p.from, p.to)
		if f.Sensor != "" {
			w.add("sensor = " + w.arg(f.Sensor))
		}
		q.args = w.args
		parts = append(parts, "SELECT "+p.tier.col+" AS t, "+cols+" FROM "+base+p.tier.suffix+w.sql())
	}
	if !f.To.IsZero() && f.To.After(to) {
		edge(to, f.To)
	}
	return " FROM (" + strings.Join(parts, " UNION ALL ") + ") r"
}

// Talker is one address's traffic over a range (or one pair's, with Peer).
type Talker struct {
	Addr      string `json:"addr"`           // the address; the originator of a pair
	Peer      string `json:"peer,omitempty"` // side=pair: the responder
	Bytes     int64  `json:"bytes"`          // IP-layer bytes sent + received
	Pkts      int64  `json:"pkts"`
	SentBytes int64  `json:"sent_bytes"` // pair: originator → responder
	RecvBytes int64  `json:"recv_bytes"` // pair: responder → originator
	SentPkts  int64  `json:"sent_pkts"`
	RecvPkts  int64  `json:"recv_pkts"`
	Flows     int64  `json:"flows"` // flow records it appears in (once when it is both originator and responder)
}

// talkerSides are the values of the side parameter of top talkers: both
// (ranked by traffic sent + received), src (by traffic the address sent, in
// either role), dst (by traffic it received), pair (originator, responder).
var talkerSides = []string{"both", "src", "dst", "pair"}

func (a *API) topTalkers(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	limit := p.int("limit", 10, 1, MaxLimit)
	by, side := p.str("by"), p.str("side")
	switch by {
	case "":
		by = "bytes"
	case "bytes", "pkts", "flows":
	default:
		p.bad("by: %q is not bytes, pkts or flows", by)
	}
	if side == "" {
		side = "both"
	} else if !contains(talkerSides, side) {
		p.bad("side: %q is not both, src, dst or pair", side)
	}
	if p.err != nil {
		badRequest(w, r, p.err)
		return
	}
	order := map[string]string{"bytes": "sb + rb", "pkts": "sp + rp", "flows": "n"}[by]
	switch {
	case side == "src" && by != "flows":
		order = map[string]string{"bytes": "sb", "pkts": "sp"}[by]
	case side == "dst" && by != "flows":
		order = map[string]string{"bytes": "rb", "pkts": "rp"}[by]
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	if f.RollupableAnyRange() && side != "pair" && sch.hasTable("talkers_1m") {
		out, ok, err := a.topTalkersCached(ctx, sch, f, side, by, limit)
		if err != nil {
			a.fail(w, r, "query top talkers", err)
			return
		}
		if ok {
			WriteJSON(w, http.StatusOK, map[string]any{"talkers": out, "by": by, "side": side, "source": "rollup"})
			return
		}
	}
	q := &where{sch: sch}
	var sql, source string
	switch {
	case f.RollupableAnyRange() && side == "pair" && sch.hasTable("pairs_1m"):
		source = "rollup"
		sql = `SELECT host(orig_addr), host(resp_addr), ` + sch.sum("orig_ip_bytes") + ` sb, ` + sch.sum("resp_ip_bytes") + ` rb, ` +
			sch.sum("orig_pkts") + ` sp, ` + sch.sum("resp_pkts") + ` rp, ` + sch.sum("records") + ` n` +
			q.rollupFrom(sch, "pairs", "orig_addr, resp_addr, orig_ip_bytes, resp_ip_bytes, orig_pkts, resp_pkts, records", f, 24*time.Hour) +
			` GROUP BY orig_addr, resp_addr`
	case f.RollupableAnyRange() && side != "pair" && sch.hasTable("talkers_1m"):
		source = "rollup"
		sql = `SELECT host(addr), '', ` + sch.sum("sent_ip_bytes") + ` sb, ` + sch.sum("recv_ip_bytes") + ` rb, ` +
			sch.sum("sent_pkts") + ` sp, ` + sch.sum("recv_pkts") + ` rp, ` + sch.sum("records") + ` n` +
			q.rollupFrom(sch, "talkers", "addr, sent_ip_bytes, recv_ip_bytes, sent_pkts, recv_pkts, records", f, 24*time.Hour) +
			` GROUP BY addr`
	case side == "pair":
		source = "flows" // no rollup for these filters: a GROUP BY over flows
		q.flows(f)
		sql = `SELECT host(orig_addr), host(resp_addr), sum(orig_ip_bytes)::bigint sb, sum(resp_ip_bytes)::bigint rb,
			sum(orig_pkts)::bigint sp, sum(resp_pkts)::bigint rp, count(*) n FROM flows` + q.sql() +
			` GROUP BY orig_addr, resp_addr`
	default:
		source = "flows" // no rollup for these filters: a GROUP BY over flows
		q.flows(f)
		sql = `WITH f AS (SELECT orig_addr, resp_addr, orig_ip_bytes, resp_ip_bytes, orig_pkts, resp_pkts FROM flows` + q.sql() + `),
		t AS (SELECT orig_addr AS addr, orig_ip_bytes AS sb, resp_ip_bytes AS rb, orig_pkts AS sp, resp_pkts AS rp, 1 AS n FROM f
			UNION ALL SELECT resp_addr, resp_ip_bytes, orig_ip_bytes, resp_pkts, orig_pkts,
				CASE WHEN resp_addr = orig_addr THEN 0 ELSE 1 END FROM f)
		SELECT host(addr), '', sum(sb)::bigint sb, sum(rb)::bigint rb, sum(sp)::bigint sp, sum(rp)::bigint rp, sum(n)::bigint n
			FROM t GROUP BY addr`
	}
	sql = `SELECT * FROM (` + sql + `) g ORDER BY ` + order + ` DESC, 1, 2 LIMIT ` + q.arg(limit)
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query top talkers", err)
		return
	}
	defer rows.Close()
	out := []Talker{}
	for rows.Next() {
		var t Talker
		if err := rows.Scan(&t.Addr, &t.Peer, &t.SentBytes, &t.RecvBytes, &t.SentPkts, &t.RecvPkts, &t.Flows); err != nil {
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
	WriteJSON(w, http.StatusOK, map[string]any{"talkers": out, "by": by, "side": side, "source": source})
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
	q := &where{sch: sch}
	var sql, source string
	if f.RollupableAnyRange() && sch.hasTable("flows_1m") {
		source = "rollup"
		sql = `SELECT proto, app, sum(records)::bigint, sum(orig_pkts + resp_pkts)::bigint,
			sum(orig_ip_bytes + resp_ip_bytes)::bigint` +
			q.rollupFrom(sch, "flows", "proto, app, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes", f, 24*time.Hour) +
			` GROUP BY proto, app ORDER BY 5 DESC, 1, 2`
	} else {
		source = "flows" // no rollup for these filters
		q.flows(f)
		sql = `SELECT proto, COALESCE(app, '') app, count(*), sum(orig_pkts + resp_pkts)::bigint,
			sum(orig_ip_bytes + resp_ip_bytes)::bigint FROM flows` + q.sql() + ` GROUP BY 1, 2 ORDER BY 5 DESC, 1, 2`
	}
	rows, err := a.Pool.Query(ctx, sql, q.args...)
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
	WriteJSON(w, http.StatusOK, map[string]any{"protocols": out, "source": source})
}

// Port is the traffic to one responder (destination) port of a protocol.
type Port struct {
	Proto int    `json:"proto"`
	Name  string `json:"name"`
	Port  int    `json:"port"` // resp_port; 0 for protocols without ports
	Flows int64  `json:"flows"`
	Pkts  int64  `json:"pkts"`
	Bytes int64  `json:"bytes"`
}

func (a *API) ports(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	limit := p.int("limit", 10, 1, MaxLimit)
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
	q := &where{sch: sch}
	var sql, source string
	if f.RollupableAnyRange() && sch.hasTable("ports_1m") {
		source = "rollup"
		sql = `SELECT proto, resp_port, sum(records)::bigint, sum(orig_pkts + resp_pkts)::bigint,
			sum(orig_ip_bytes + resp_ip_bytes)::bigint` +
			q.rollupFrom(sch, "ports", "proto, resp_port, records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes", f, 24*time.Hour) +
			` GROUP BY proto, resp_port`
	} else {
		source = "flows" // no rollup for these filters
		q.flows(f)
		sql = `SELECT proto, resp_port, count(*), sum(orig_pkts + resp_pkts)::bigint,
			sum(orig_ip_bytes + resp_ip_bytes)::bigint FROM flows` + q.sql() + ` GROUP BY proto, resp_port`
	}
	sql += ` ORDER BY 5 DESC, 1, 2 LIMIT ` + q.arg(limit)
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query ports", err)
		return
	}
	defer rows.Close()
	out := []Port{}
	for rows.Next() {
		var pt Port
		if err := rows.Scan(&pt.Proto, &pt.Port, &pt.Flows, &pt.Pkts, &pt.Bytes); err != nil {
			a.fail(w, r, "scan ports", err)
			return
		}
		pt.Name = ProtoName(pt.Proto)
		out = append(out, pt)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query ports", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"ports": out, "source": source})
}

// Country is the traffic of the flow records with an address of one country
// at an end, each record once per distinct country of its ends: in the
// originator's role (it sent orig_*, received resp_*), and in the
// responder's role when the responder's country differs (a record within
// one country counts once, as its originator's). With an addr filter (the
// Host view) only the ends outside addr count: the countries of the peers,
// with what the peer sent and received.
type Country struct {
	Country   string `json:"country"` // ISO 3166-1 alpha-2; "" unknown
	Bytes     int64  `json:"bytes"`   // IP-layer bytes of those records, both directions: sent + received
	Pkts      int64  `json:"pkts"`
	SentBytes int64  `json:"sent_bytes"`
	RecvBytes int64  `json:"recv_bytes"`
	SentPkts  int64  `json:"sent_pkts"`
	RecvPkts  int64  `json:"recv_pkts"`
	Flows     int64  `json:"flows"` // flow records with an address of the country (once when both are)
}

func (a *API) countries(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	f := p.flowFilter()
	limit := p.int("limit", 20, 1, MaxLimit)
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
	q := &where{sch: sch}
	var sql, source string
	// countries_1m counts a record within one country once only since sink
	// migration 00009 (which also adds the hourly tier); before, the flows
	// answer.
	if f.RollupableAnyRange() && sch.hasTable("countries_1m") && sch.hasTable("countries_1h") {
		source = "rollup"
		sql = `SELECT country, sum(sent_ip_bytes)::bigint sb, sum(recv_ip_bytes)::bigint rb, sum(sent_pkts)::bigint,
			sum(recv_pkts)::bigint, sum(records)::bigint` +
			q.rollupFrom(sch, "countries", "country, sent_ip_bytes, recv_ip_bytes, sent_pkts, recv_pkts, records", f, 24*time.Hour) +
			` GROUP BY country`
	} else {
		// No rollup for these filters. With addr, an end in addr is not
		// counted (a record between two addresses of addr counts for none).
		source = "flows"
		q.flows(f)
		oin, rin := "false", "false"
		if f.Addr != "" {
			pf, _, _ := ParseAddr(f.Addr)
			if pf.IsSingleIP() {
				x := q.arg(pf.Addr())
				oin, rin = "orig_addr = "+x+"::inet", "resp_addr = "+x+"::inet"
			} else {
				x := q.arg(pf)
				oin, rin = "orig_addr <<= "+x+"::inet", "resp_addr <<= "+x+"::inet"
			}
		}
		sql = `WITH f AS (SELECT ` + sch.val("flows", "orig_country", "''") + ` oc, ` +
			sch.val("flows", "resp_country", "''") + ` rc, orig_ip_bytes ob, resp_ip_bytes rb, orig_pkts op, resp_pkts rp, ` +
			oin + ` oin, ` + rin + ` rin FROM flows` + q.sql() + `),
		t AS (SELECT oc c, ob sb, rb, op sp, rp FROM f WHERE NOT oin
			UNION ALL SELECT rc, rb, ob, rp, op FROM f WHERE NOT rin AND (oin OR rc <> oc))
		SELECT c, sum(sb)::bigint sb, sum(rb)::bigint rb, sum(sp)::bigint, sum(rp)::bigint, count(*) FROM t GROUP BY c`
	}
	sql = `SELECT * FROM (` + sql + `) g ORDER BY sb + rb DESC, 1 LIMIT ` + q.arg(limit)
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query countries", err)
		return
	}
	defer rows.Close()
	out := []Country{}
	for rows.Next() {
		var c Country
		if err := rows.Scan(&c.Country, &c.SentBytes, &c.RecvBytes, &c.SentPkts, &c.RecvPkts, &c.Flows); err != nil {
			a.fail(w, r, "scan countries", err)
			return
		}
		c.Bytes, c.Pkts = c.SentBytes+c.RecvBytes, c.SentPkts+c.RecvPkts
		out = append(out, c)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query countries", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"countries": out, "source": source})
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
		badRequest(w, r, p.err)
		return
	}
	// The rollup answers whole-minute steps; the bucket edges are then
	// whole minutes too (floorStep of a multiple of a minute).
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	rollup := f.Rollupable() && step%time.Minute == 0 && sch.hasTable("flows_1m")
	table, timeCol := "flows", "start"
	if rollup {
		table, timeCol = "flows_1m", "minute"
	}
	if f.To.IsZero() {
		// Default: the hour up to the newest matching flow, so that a
		// replayed capture from any year shows up.
		q := &where{sch: sch}
		if rollup {
			q.rollupRange(f)
		} else {
			q.flows(f)
		}
		var newest *time.Time
		if err := a.Pool.QueryRow(ctx, "SELECT max("+timeCol+") FROM "+table+q.sql(), q.args...).Scan(&newest); err != nil {
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
		writeProblem(w, r, http.StatusBadRequest, "from must be before to")
		return
	}
	n := int((f.To.Sub(f.From) + step - 1) / step)
	if n > maxPoints {
		writeProblem(w, r, http.StatusBadRequest, "too many buckets: widen step or narrow from/to (at most 10000)")
		return
	}
	q := &where{sch: sch}
	var sql, source string
	if rollup {
		// Tiers whose buckets divide the step: each rollup row then lies in
		// one bucket (buckets start at multiples of step since the epoch).
		source = "rollup"
		bin := `date_bin(make_interval(secs => ` + q.arg(step.Seconds()) + `), t, TIMESTAMPTZ 'epoch') AS b`
		from := q.rollupFrom(sch, "flows", "records, orig_pkts, resp_pkts, orig_ip_bytes, resp_ip_bytes", f, step)
		sql = `SELECT ` + bin + `, sum(records)::bigint, sum(orig_pkts + resp_pkts)::bigint, sum(orig_ip_bytes + resp_ip_bytes)::bigint` +
			from + ` GROUP BY b ORDER BY b`
	} else {
		bin := `date_bin(make_interval(secs => ` + q.arg(step.Seconds()) + `), ` + timeCol + `, TIMESTAMPTZ 'epoch') AS b`
		source = "flows" // no rollup for these filters or a step under a minute
		q.flows(f)
		sql = `SELECT ` + bin + `, count(*), sum(orig_pkts + resp_pkts)::bigint, sum(orig_ip_bytes + resp_ip_bytes)::bigint
			FROM flows` + q.sql() + ` GROUP BY b ORDER BY b`
	}
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
		"step_seconds": step.Seconds(), "points": points, "source": source})
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
