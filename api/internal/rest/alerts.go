package rest

import (
	"net/http"
	"time"

	"netwatch/api/internal/record"
	"netwatch/schema"
)

const alertColumns = `id, time, sensor, severity, category, technique, host(orig_addr), host(resp_addr),
	summary, evidence, rule, score, window_start, window_end`

// AlertsPage is the body of GET /api/v1/alerts.
type AlertsPage struct {
	Alerts []record.Alert `json:"alerts"`
	Next   string         `json:"next,omitempty"`
}

func (a *API) alerts(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	from, to := p.time("from"), p.time("to")
	sensor, category := p.str("sensor"), p.str("category")
	sev := p.str("severity")
	pf, hasAddr := p.addr()
	limit := p.limit()
	cur, hasCur := p.cursor()
	if sev != "" && record.SeverityRank(sev) == 0 {
		p.bad("severity: %q is not one of info, low, medium, high, critical", sev)
	}
	if p.err != nil {
		WriteError(w, http.StatusBadRequest, p.err.Error())
		return
	}
	q := &where{}
	q.timeRange("time", from, to)
	if sensor != "" {
		q.add("sensor = " + q.arg(sensor))
	}
	if category != "" {
		q.add("category = " + q.arg(category))
	}
	if sev != "" {
		q.add("severity = ANY(" + q.arg(schema.Severities[record.SeverityRank(sev)-1:]) + ")")
	}
	if hasAddr {
		q.addrCond(pf, "orig_addr", "resp_addr")
	}
	if hasCur {
		q.add("(time, id) < (" + q.arg(cur.T) + ", " + q.arg(cur.ID) + ")")
	}
	sql := "SELECT " + alertColumns + " FROM alerts" + q.sql() + " ORDER BY time DESC, id DESC LIMIT " + q.arg(limit+1)
	ctx, cancel := a.ctx(r)
	defer cancel()
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query alerts", err)
		return
	}
	defer rows.Close()
	page := AlertsPage{Alerts: []record.Alert{}}
	for rows.Next() {
		var al record.Alert
		var t time.Time
		var ws, we *time.Time
		var ev []byte
		if err := rows.Scan(&al.ID, &t, &al.Sensor, &al.Severity, &al.Category, &al.Technique, &al.OrigAddr, &al.RespAddr,
			&al.Summary, &ev, &al.Rule, &al.Score, &ws, &we); err != nil {
			a.fail(w, r, "scan alert", err)
			return
		}
		al.Time = record.Time(t)
		al.Evidence = ev
		if ws != nil {
			v := record.Time(*ws)
			al.WindowStart = &v
		}
		if we != nil {
			v := record.Time(*we)
			al.WindowEnd = &v
		}
		page.Alerts = append(page.Alerts, al)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query alerts", err)
		return
	}
	if len(page.Alerts) > limit {
		page.Alerts = page.Alerts[:limit]
		last := page.Alerts[limit-1]
		page.Next = cursor{T: time.Time(last.Time), ID: last.ID}.String()
	}
	WriteJSON(w, http.StatusOK, page)
}
