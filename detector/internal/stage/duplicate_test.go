package stage

import (
	"context"
	"io"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"netwatch/detector/internal/output"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// recorder is an output that keeps the ids of what it is sent.
type recorder struct {
	mu  sync.Mutex
	ids []string
}

func (r *recorder) Send(a *pb.Alert) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.ids = append(r.ids, MsgID(a))
	return true
}

var _ output.Output = (*recorder)(nil)

// TestEmitDuplicate publishes the same alert (same id, update 0) twice, as
// a replay of FLOWS does, then its first update, through a real JetStream
// whose ALERTS has a one-hour duplicate window: ALERTS stores 2 messages,
// the output gets 2 (the alert and its update, never the repeat) and the
// duplicate metric counts 1.
func TestEmitDuplicate(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	rec := &recorder{}
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig(), Outputs: []output.Output{rec}}, js, nil, m,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	win := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	mk := func(update int) *pb.Alert {
		ev := `{"distinct_ports":50}`
		if update > 0 {
			ev = `{"distinct_ports":100,"update":1}`
		}
		return &pb.Alert{Id: schema.AlertID("s1", "portscan", "10.0.0.66", "10.0.0.20", win), Sensor: "s1",
			Category: "portscan", Rule: "portscan", OrigAddr: "10.0.0.66", RespAddr: "10.0.0.20", TimeNs: win + 1,
			WindowStartNs: win, WindowEndNs: win + int64(time.Minute), Severity: pb.Severity_SEVERITY_HIGH,
			Summary: "portscan", Evidence: []byte(ev)}
	}
	for i, a := range []*pb.Alert{mk(0), mk(0), mk(1)} {
		if err := st.emit(ctx, a); err != nil {
			t.Fatalf("emit %d: %v", i, err)
		}
	}
	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 2 {
		t.Errorf("ALERTS holds %d messages, want 2 (the alert and its update)", info.State.Msgs)
	}
	id := mk(0).GetId()
	if len(rec.ids) != 2 || rec.ids[0] != id || rec.ids[1] != id+".u1" {
		t.Errorf("output got %q, want [%s %s.u1]", rec.ids, id, id)
	}
	if got := testutil.ToFloat64(m.Duplicates.WithLabelValues("portscan")); got != 1 {
		t.Errorf("duplicates = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Alerts.WithLabelValues("portscan")); got != 2 {
		t.Errorf("alerts = %v, want 2", got)
	}
}
