// Package output sends the detector's alerts to places besides ALERTS: an
// HTTP webhook (JSON POST) and syslog (RFC 5424 over UDP or TCP). Each
// output has a bounded queue and its own goroutine: Send never blocks the
// detection path; when the queue is full the alert is dropped for that
// output and counted (ALERTS, the record of truth, always has it).
package output

import (
	"encoding/json"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"netwatch/schema/pb"
)

// Output receives published alerts.
type Output interface {
	// Send queues a for delivery and reports whether it was queued (false:
	// the queue is full or the output is closed; the alert is dropped for
	// this output and counted).
	Send(a *pb.Alert) bool
}

// Metrics of the outputs, labelled by output name ("webhook", "syslog").
type Metrics struct {
	Sent    *prometheus.CounterVec // delivered (2xx, or written to the socket)
	Retries *prometheus.CounterVec // failed attempts that were retried
	Dropped *prometheus.CounterVec // given up: queue full, permanent error, retries exhausted, or shut down
}

// NewMetrics registers netwatch_detector_output_{sent,retries,dropped}_total.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		Sent: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_output_sent_total",
			Help: "Alerts delivered to an output (webhook 2xx, syslog written)."}, []string{"output"}),
		Retries: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_output_retries_total",
			Help: "Failed delivery attempts that were retried."}, []string{"output"}),
		Dropped: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "netwatch_detector_output_dropped_total",
			Help: "Alerts an output gave up on: queue full, permanent error, retries exhausted or shutdown."}, []string{"output"}),
	}
	reg.MustRegister(m.Sent, m.Retries, m.Dropped)
	return m
}

// Document is the JSON form of an alert sent by the webhook: the fields
// the foundation issue names (id, time, sensor, severity, category,
// technique, orig_addr, resp_addr, summary, evidence) plus rule, window,
// score and update (0 for the first publish of the id, n for its n-th
// update with grown counts). Times are RFC 3339 with nanoseconds, UTC.
type Document struct {
	ID          string          `json:"id"`
	Time        time.Time       `json:"time"`
	Sensor      string          `json:"sensor"`
	Severity    string          `json:"severity"` // info, low, medium, high, critical
	Category    string          `json:"category"`
	Technique   string          `json:"technique"`
	OrigAddr    string          `json:"orig_addr"`
	RespAddr    string          `json:"resp_addr"`
	Summary     string          `json:"summary"`
	Evidence    json.RawMessage `json:"evidence"`
	Rule        string          `json:"rule"`
	WindowStart time.Time       `json:"window_start"`
	WindowEnd   time.Time       `json:"window_end"`
	Score       float64         `json:"score"`
	Update      int             `json:"update"`
}

// Severity names an alert severity in lower case ("" when unspecified).
func Severity(s pb.Severity) string {
	switch s {
	case pb.Severity_SEVERITY_INFO:
		return "info"
	case pb.Severity_SEVERITY_LOW:
		return "low"
	case pb.Severity_SEVERITY_MEDIUM:
		return "medium"
	case pb.Severity_SEVERITY_HIGH:
		return "high"
	case pb.Severity_SEVERITY_CRITICAL:
		return "critical"
	}
	return ""
}

// NewDocument converts an alert. Evidence that is not valid JSON is
// sent as a JSON string.
func NewDocument(a *pb.Alert) Document {
	ev := json.RawMessage(a.GetEvidence())
	if !json.Valid(ev) {
		ev, _ = json.Marshal(string(a.GetEvidence()))
	}
	var u struct {
		Update int `json:"update"`
	}
	_ = json.Unmarshal(a.GetEvidence(), &u)
	return Document{
		ID: a.GetId(), Time: time.Unix(0, a.GetTimeNs()).UTC(), Sensor: a.GetSensor(), Severity: Severity(a.GetSeverity()),
		Category: a.GetCategory(), Technique: a.GetTechnique(), OrigAddr: a.GetOrigAddr(), RespAddr: a.GetRespAddr(),
		Summary: a.GetSummary(), Evidence: ev, Rule: a.GetRule(), WindowStart: time.Unix(0, a.GetWindowStartNs()).UTC(),
		WindowEnd: time.Unix(0, a.GetWindowEndNs()).UTC(), Score: a.GetScore(), Update: u.Update,
	}
}
