package rest

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"sort"
	"strconv"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/api/internal/record"
	"netwatch/schema"
)

const metricsColumns = `sensor, host, time, boot, seq, cpu_percent, mem_total_bytes, mem_used_bytes, load1, uptime_s,
	disks, interfaces, captures`

func scanMetrics(row pgx.Row) (record.Metrics, error) {
	var m record.Metrics
	var t time.Time
	var disks, ifs, caps []byte
	err := row.Scan(&m.Sensor, &m.Host, &t, &m.Boot, &m.Seq, &m.CPUPercent, &m.MemTotalBytes, &m.MemUsedBytes,
		&m.Load1, &m.UptimeS, &disks, &ifs, &caps)
	m.Time, m.Disks, m.Interfaces, m.Captures = record.Time(t), disks, ifs, caps
	return m, err
}

// OnlineWithin is how recently a sensor must have sent something the sink
// stored (flows or metrics; agents send metrics every 10 s by default) to
// count as online.
const OnlineWithin = time.Minute

// Sensor is one sensor with its latest host metrics.
type Sensor struct {
	Sensor    string          `json:"sensor"`
	Host      string          `json:"host"`
	FirstSeen record.Time     `json:"first_seen"`          // wall clock of the sink's first write for it; for a sensor only the registry knows, its start (else its heartbeat)
	LastSeen  record.Time     `json:"last_seen"`           // wall clock of the sink's last write for it; for a sensor only the registry knows, its last heartbeat
	Online    bool            `json:"online"`              // last_seen within OnlineWithin
	LastFlow  *record.Time    `json:"last_flow,omitempty"` // packet time of the newest stored flow
	Metrics   *record.Metrics `json:"metrics"`             // latest sample; null when none
	// Received and Dropped sum the latest sample's capture sources: frames
	// read, and frames lost (kernel/ring, interface, and agent buffer).
	Received uint64 `json:"received"`
	Dropped  uint64 `json:"dropped"`
	// Interfaces are the latest sample's interface names.
	Interfaces []string `json:"interfaces"`
	// LagSeconds is, for the sensor's newest stored flow record (by its
	// last packet; by start before sink migration 00011), when the sink
	// stored it minus its last packet's time: for a live sensor how far
	// behind the pipeline is (idle/active timeouts included), for a
	// replayed capture its age. Absent without flows.
	LagSeconds *float64 `json:"lag_seconds,omitempty"`
	// From the SENSORS registry (schema.List: the agent's own record and
	// heartbeat), when the agent announced itself: its build version,
	// capture interfaces (or file), start and the server time of its last
	// heartbeat. A registered sensor is online when it heartbeated within
	// schema.DefaultOnlineWithin, whatever the database says.
	Version           string       `json:"version"`
	CaptureInterfaces []string     `json:"capture_interfaces"`
	Started           *record.Time `json:"started,omitempty"`
	Heartbeat         *record.Time `json:"heartbeat,omitempty"`
}

func (a *API) sensors(w http.ResponseWriter, r *http.Request) {
	ctx, cancel := a.ctx(r)
	defer cancel()
	sch, err := schemaOf(ctx, a.Pool)
	if err != nil {
		a.fail(w, r, "read the database schema", err)
		return
	}
	// Since sink migration 00011 flows has neither inserted_at nor an index
	// on (sensor, start): the sensors row says when its newest flow was stored.
	lagSQL := `SELECT extract(epoch FROM f.inserted_at - f."end")::float8 AS secs FROM flows f
			WHERE f.sensor = s.sensor ORDER BY f.start DESC LIMIT 1`
	if sch.compact() {
		lagSQL = `SELECT extract(epoch FROM s.last_flow_at - s.last_flow)::float8 AS secs WHERE s.last_flow_at IS NOT NULL`
	}
	rows, err := a.Pool.Query(ctx, `SELECT s.sensor, s.host, s.first_seen, s.last_seen, s.last_flow, lag.secs, m.time IS NOT NULL,
		coalesce(m.sensor, ''), coalesce(m.host, ''), coalesce(m.time, 'epoch'), coalesce(m.boot, ''), coalesce(m.seq, 0),
		coalesce(m.cpu_percent, 0), coalesce(m.mem_total_bytes, 0), coalesce(m.mem_used_bytes, 0), coalesce(m.load1, 0),
		coalesce(m.uptime_s, 0), coalesce(m.disks, '[]'), coalesce(m.interfaces, '[]'), coalesce(m.captures, '[]')
		FROM sensors s LEFT JOIN LATERAL (
			SELECT `+metricsColumns+` FROM host_metrics h WHERE h.sensor = s.sensor ORDER BY h.time DESC LIMIT 1
		) m ON true LEFT JOIN LATERAL (`+lagSQL+`) lag ON true ORDER BY s.sensor`)
	if err != nil {
		a.fail(w, r, "query sensors", err)
		return
	}
	defer rows.Close()
	out := []Sensor{}
	for rows.Next() {
		var s Sensor
		var first, last time.Time
		var lastFlow *time.Time
		var has bool
		var m record.Metrics
		var mt time.Time
		var disks, ifs, caps []byte
		if err := rows.Scan(&s.Sensor, &s.Host, &first, &last, &lastFlow, &s.LagSeconds, &has,
			&m.Sensor, &m.Host, &mt, &m.Boot, &m.Seq, &m.CPUPercent, &m.MemTotalBytes, &m.MemUsedBytes,
			&m.Load1, &m.UptimeS, &disks, &ifs, &caps); err != nil {
			a.fail(w, r, "scan sensor", err)
			return
		}
		s.FirstSeen, s.LastSeen = record.Time(first), record.Time(last)
		if lastFlow != nil {
			v := record.Time(*lastFlow)
			s.LastFlow = &v
		}
		s.Online = time.Since(last) < OnlineWithin
		s.Interfaces = []string{}
		if has {
			m.Time, m.Disks, m.Interfaces, m.Captures = record.Time(mt), disks, ifs, caps
			s.Metrics = &m
			var cs []struct {
				Received      uint64 `json:"received"`
				Dropped       uint64 `json:"dropped"`
				IfDropped     uint64 `json:"if_dropped"`
				BufferDropped uint64 `json:"buffer_dropped"`
			}
			var is []struct{ Name string }
			if json.Unmarshal(caps, &cs) == nil {
				for _, c := range cs {
					s.Received += c.Received
					s.Dropped += c.Dropped + c.IfDropped + c.BufferDropped
				}
			}
			if json.Unmarshal(ifs, &is) == nil {
				for _, i := range is {
					s.Interfaces = append(s.Interfaces, i.Name)
				}
			}
		}
		out = append(out, s)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query sensors", err)
		return
	}
	out, regErr := a.withRegistry(ctx, out)
	body := map[string]any{"sensors": out}
	if regErr != "" {
		body["registry_error"] = regErr
	}
	WriteJSON(w, http.StatusOK, body)
}

func (a *API) hostMetrics(w http.ResponseWriter, r *http.Request) {
	p := &params{r: r}
	from, to := p.time("from"), p.time("to")
	sensor := p.str("sensor")
	limit := p.limit()
	var step time.Duration
	if v := p.str("step"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < time.Second || d > 24*time.Hour {
			p.bad("step: %q is not a duration from 1s to 24h (e.g. 5m)", v)
		}
		step = d
	}
	if !from.IsZero() && !to.IsZero() && !from.Before(to) {
		p.bad("from must be before to")
	}
	if p.err != nil {
		badRequest(w, r, p.err)
		return
	}
	q := &where{}
	q.timeRange("time", from, to)
	if sensor != "" {
		q.add("sensor = " + q.arg(sensor))
	}
	ctx, cancel := a.ctx(r)
	defer cancel()
	src := "host_metrics" + q.sql()
	if step > 0 {
		// one sample per sensor and step (its newest): a long range fits
		// the limit instead of showing only its newest samples
		bin := "date_bin(" + q.arg(strconv.Itoa(int(step.Seconds()))+" seconds") + "::interval, time, TIMESTAMPTZ '2000-01-01 00:00:00+00')"
		src = "(SELECT DISTINCT ON (sensor, " + bin + ") " + metricsColumns + " FROM host_metrics" + q.sql() +
			" ORDER BY sensor, " + bin + ", time DESC) m"
	}
	rows, err := a.Pool.Query(ctx, "SELECT "+metricsColumns+" FROM "+src+
		" ORDER BY time DESC, sensor, boot, seq LIMIT "+q.arg(limit), q.args...)
	if err != nil {
		a.fail(w, r, "query host metrics", err)
		return
	}
	defer rows.Close()
	out := []record.Metrics{}
	for rows.Next() {
		m, err := scanMetrics(rows)
		if err != nil {
			a.fail(w, r, "scan host metrics", err)
			return
		}
		out = append(out, m)
	}
	if err := rows.Err(); err != nil {
		a.fail(w, r, "query host metrics", err)
		return
	}
	WriteJSON(w, http.StatusOK, map[string]any{"metrics": out})
}

// withRegistry merges the SENSORS registry into the sensors of the
// database (adding registered sensors nothing was stored for yet). Without
// NATS or a registry bucket the list is returned as it is; regErr then says
// why the registry was not read when NATS is configured ("" otherwise, and
// when no agent has announced itself yet).
func (a *API) withRegistry(ctx context.Context, out []Sensor) (_ []Sensor, regErr string) {
	for i := range out {
		out[i].CaptureInterfaces = []string{}
	}
	if a.JS == nil {
		return out, ""
	}
	// Without NATS the list is the database's, at once: a request on a
	// reconnecting connection would wait for the query timeout (independent
	// QA, seventh session: 30 s).
	if nc := a.JS.Conn(); nc != nil && !nc.IsConnected() {
		return out, "NATS connection " + nc.Status().String() + ": the sensor registry was not read"
	}
	ctx, cancel := context.WithTimeout(ctx, natsTimeout)
	defer cancel()
	kv, err := schema.OpenRegistry(ctx, a.JS)
	if err != nil {
		if errors.Is(err, jetstream.ErrBucketNotFound) {
			return out, ""
		}
		return out, "the sensor registry was not read: " + err.Error()
	}
	regs, err := schema.List(ctx, kv, time.Now(), 0)
	if err != nil {
		if a.Log != nil {
			a.Log.Warn("list the sensor registry", "err", err)
		}
		return out, "the sensor registry was not read: " + err.Error()
	}
	at := map[string]int{}
	for i, s := range out {
		at[s.Sensor] = i
	}
	for _, rg := range regs {
		i, ok := at[rg.Name]
		if !ok {
			// Nothing stored for it yet: first and last seen are the
			// registry's (its start, else its first heartbeat seen here,
			// and its last heartbeat), not Go's zero time.
			first := rg.Started
			if first.IsZero() || first.After(rg.LastSeen) {
				first = rg.LastSeen
			}
			out = append(out, Sensor{Sensor: rg.Name, Host: rg.Host, Interfaces: []string{},
				FirstSeen: record.Time(first), LastSeen: record.Time(rg.LastSeen)})
			i = len(out) - 1
		}
		s := &out[i]
		s.Version = rg.Version
		s.CaptureInterfaces = append([]string{}, rg.Interfaces...)
		if !rg.Started.IsZero() {
			v := record.Time(rg.Started)
			s.Started = &v
		}
		hb := record.Time(rg.LastSeen)
		s.Heartbeat = &hb
		s.Online = rg.Online
		if s.Host == "" {
			s.Host = rg.Host
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Sensor < out[j].Sensor })
	return out, ""
}
