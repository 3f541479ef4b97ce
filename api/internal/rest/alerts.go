package rest

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/jackc/pgx/v5"

	"netwatch/api/internal/record"
	"netwatch/schema"
)

// alertColumns is what scanAlert reads; the status columns are those of
// the sink's migration 00005_alert_status (without it: open, never changed).
func alertColumns(s *dbSchema) string {
	return `id, time, sensor, severity, category, technique, host(orig_addr), host(resp_addr),
	summary, evidence, rule, score, window_start, window_end, ` + s.col("alerts", "status", "'open'") + `, ` +
		s.col("alerts", "status_by", "''") + `, ` + s.col("alerts", "status_at", "NULL::timestamptz") + `, ` +
		s.col("alerts", "status_note", "''")
}

func optTime(t *time.Time) *record.Time {
	if t == nil {
		return nil
	}
	v := record.Time(*t)
	return &v
}

func scanAlert(row pgx.Row) (record.Alert, error) {
	var al record.Alert
	var t time.Time
	var ws, we, sa *time.Time
	var ev []byte
	err := row.Scan(&al.ID, &t, &al.Sensor, &al.Severity, &al.Category, &al.Technique, &al.OrigAddr, &al.RespAddr,
		&al.Summary, &ev, &al.Rule, &al.Score, &ws, &we, &al.Status, &al.StatusBy, &sa, &al.StatusNote)
	al.Time, al.Evidence = record.Time(t), ev
	al.WindowStart, al.WindowEnd, al.StatusAt = optTime(ws), optTime(we), optTime(sa)
	return al, err
}

// AlertsPage is the body of GET /api/v1/alerts.
type AlertsPage struct {
	Alerts []record.Alert `json:"alerts"`
	Next   string         `json:"next,omitempty"`
}

var statuses = []string{record.StatusOpen, record.StatusAcknowledged, record.StatusClosed}

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
	var status []string
	if v := p.str("status"); v != "" {
		for _, s := range strings.Split(v, ",") {
			s = strings.TrimSpace(s)
			if !contains(statuses, s) {
				p.bad("status: %q is not open, acknowledged or closed (or a comma-separated list of them)", s)
			}
			status = append(status, s)
		}
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		p.bad("from must be before to")
	}
	if hasCur && cur.S != "" {
		p.bad("cursor: not a cursor of /api/v1/alerts")
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
	q := &where{sch: sch}
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
	if status != nil {
		q.add(sch.col("alerts", "status", "'open'") + " = ANY(" + q.arg(status) + ")")
	}
	if hasAddr {
		q.addrCond(pf, "orig_addr", "resp_addr")
	}
	if hasCur {
		q.add("(time, id) < (" + q.arg(cur.T) + ", " + q.arg(cur.ID) + ")")
	}
	sql := "SELECT " + alertColumns(sch) + " FROM alerts" + q.sql() + " ORDER BY time DESC, id DESC LIMIT " + q.arg(limit+1)
	rows, err := a.Pool.Query(ctx, sql, q.args...)
	if err != nil {
		a.fail(w, r, "query alerts", err)
		return
	}
	defer rows.Close()
	page := AlertsPage{Alerts: []record.Alert{}}
	for rows.Next() {
		al, err := scanAlert(rows)
		if err != nil {
			a.fail(w, r, "scan alert", err)
			return
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

// alert answers GET /api/v1/alerts/{id}.
func (a *API) alert(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !isHexID(id) {
		writeProblem(w, r, http.StatusBadRequest, "id: "+strconv.Quote(id)+" is not an alert id")
		return
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	al, err := scanAlert(a.Pool.QueryRow(ctx, "SELECT "+alertColumns(sch)+" FROM alerts WHERE id = $1 ORDER BY time DESC LIMIT 1", id))
	if errors.Is(err, pgx.ErrNoRows) {
		writeProblem(w, r, http.StatusNotFound, "no alert with id "+id)
		return
	}
	if err != nil {
		a.fail(w, r, "query alert", err)
		return
	}
	WriteJSON(w, http.StatusOK, al)
}

// StatusChange is the body of PATCH /api/v1/alerts/{id}.
type StatusChange struct {
	Status string `json:"status"` // acknowledged, closed, or open (reopen)
	Note   string `json:"note"`   // free text, at most 2000 characters
	// By is who made the change; "" means the name of the admin token used.
	By string `json:"by"`
}

// Identity is who a request authenticated as (set by the authentication
// middleware; the zero value on an api without tokens).
type Identity struct {
	Name  string // the token's name, "" when unnamed
	Admin bool
}

type identityKey struct{}

// WithIdentity returns r carrying id, for handlers that record who acted.
func WithIdentity(r *http.Request, id Identity) *http.Request {
	return r.WithContext(contextWithValue(r, identityKey{}, id))
}

// setAlertStatus answers PATCH /api/v1/alerts/{id}: acknowledge, close or
// reopen an alert, recording who, when (server clock) and a note.
func (a *API) setAlertStatus(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	if !isHexID(id) {
		writeProblem(w, r, http.StatusBadRequest, "id: "+strconv.Quote(id)+" is not an alert id")
		return
	}
	if ct := r.Header.Get("Content-Type"); ct != "" && !strings.HasPrefix(ct, "application/json") &&
		!strings.HasPrefix(ct, "application/merge-patch+json") {
		writeProblem(w, r, http.StatusUnsupportedMediaType, "body must be JSON (Content-Type application/json), not "+ct)
		return
	}
	var ch StatusChange
	dec := json.NewDecoder(io.LimitReader(r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&ch); err != nil {
		writeProblem(w, r, http.StatusBadRequest, "body: not a JSON object {\"status\", \"note\", \"by\"}: "+err.Error())
		return
	}
	if _, err := dec.Token(); err != io.EOF {
		writeProblem(w, r, http.StatusBadRequest, "body: one JSON object {\"status\", \"note\", \"by\"} and nothing after it")
		return
	}
	if !contains(statuses, ch.Status) {
		writeProblem(w, r, http.StatusBadRequest, "status: "+strconv.Quote(ch.Status)+" is not acknowledged, closed or open")
		return
	}
	if !Text(ch.Note) || !Text(ch.By) {
		writeProblem(w, r, http.StatusBadRequest, "note and by: UTF-8 text without NUL characters")
		return
	}
	if len([]rune(ch.Note)) > 2000 || len([]rune(ch.By)) > 200 {
		writeProblem(w, r, http.StatusBadRequest, "note (2000) or by (200 characters) too long")
		return
	}
	if ch.By == "" {
		if idn, ok := r.Context().Value(identityKey{}).(Identity); ok && idn.Name != "" {
			ch.By = idn.Name
		} else {
			ch.By = "admin"
		}
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	if !sch.has("alerts", "status") {
		writeProblem(w, r, http.StatusServiceUnavailable, "the database has no alert status yet (the sink's migration 00005_alert_status)")
		return
	}
	al, err := scanAlert(a.Pool.QueryRow(ctx, `UPDATE alerts SET status = $2, status_by = $3, status_at = now(), status_note = $4
		WHERE id = $1 RETURNING `+alertColumns(sch), id, ch.Status, ch.By, ch.Note))
	if errors.Is(err, pgx.ErrNoRows) {
		writeProblem(w, r, http.StatusNotFound, "no alert with id "+id)
		return
	}
	if err != nil {
		a.fail(w, r, "update alert", err)
		return
	}
	WriteJSON(w, http.StatusOK, al)
}
