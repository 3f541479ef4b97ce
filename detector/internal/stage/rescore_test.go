package stage

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestRescore: 150 SYN probes stored on FLOWS; a rescore over a range
// that holds them publishes the portscan alert and its update under new
// ids (RunAlertID of the live ids, evidence run_id and live_id); the same
// run again adds nothing (same ids, duplicate window); another run id
// adds its own two; a range after the messages finds nothing.
func TestRescore(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	scanner, victim := []byte{10, 0, 0, 66}, []byte{10, 0, 0, 20}
	win := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	t0 := win + 10*int64(time.Second)
	before := time.Now().Add(-time.Second)
	for b := 0; b < 3; b++ {
		batch := &pb.FlowBatch{Sensor: "s1"}
		for i := 0; i < 50; i++ {
			port := uint32(1 + b*50 + i)
			at := t0 + int64(port)*int64(time.Millisecond)
			batch.Flows = append(batch.Flows, &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
				StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true})
		}
		data, _ := proto.Marshal(batch)
		publish(t, js, schema.FlowsSubject("s1", 1, 2), data, "b"+string(rune('0'+b)))
	}
	publish(t, js, schema.FlowsSubject("s1", 1, 2), []byte{0xff, 0xff}, "garbage")
	after := time.Now().Add(time.Second)
	live := schema.AlertID("s1", "portscan", "10.0.0.66", "10.0.0.20", win)
	alerts, _ := js.Stream(ctx, schema.StreamAlerts)
	count := func() uint64 { info, _ := alerts.Info(ctx); return info.State.Msgs }
	rescore := func(run string, from, to time.Time) RescoreSummary {
		st := New(Config{Rules: rules.DefaultConfig()}, js, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
		sum, err := st.Rescore(ctx, run, from, to)
		if err != nil {
			t.Fatalf("rescore %s: %v", run, err)
		}
		return sum
	}
	sum := rescore("r1", before, after)
	if sum.Messages != 3 || sum.Undecoded != 1 || sum.Flows != 150 || sum.Alerts["portscan"] != 2 || count() != 2 {
		t.Fatalf("r1: %+v, ALERTS %d", sum, count())
	}
	raw, err := alerts.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var a pb.Alert
	_ = proto.Unmarshal(raw.Data, &a)
	var ev map[string]any
	_ = json.Unmarshal(a.Evidence, &ev)
	if a.Id != RunAlertID("r1", live) || a.Id == live || ev["run_id"] != "r1" || ev["live_id"] != live {
		t.Errorf("rescored alert id %s evidence %s; live id %s", a.Id, a.Evidence, live)
	}
	rescore("r1", before, after)
	if count() != 2 {
		t.Errorf("same run again: ALERTS %d, want 2", count())
	}
	rescore("r2", before, after)
	if count() != 4 {
		t.Errorf("second run: ALERTS %d, want 4", count())
	}
	if sum := rescore("r3", after, after.Add(time.Hour)); sum.Messages != 0 || count() != 4 {
		t.Errorf("empty range: %+v, ALERTS %d", sum, count())
	}
}
