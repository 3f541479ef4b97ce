package stage

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/model"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

func publish(t *testing.T, js jetstream.JetStream, subject string, data []byte, id string) {
	t.Helper()
	m := &nats.Msg{Subject: subject, Data: data, Header: nats.Header{}}
	m.Header.Set(jetstream.MsgIDHeader, id)
	if _, err := js.PublishMsg(context.Background(), m); err != nil {
		t.Fatal(err)
	}
}

// TestStage publishes 150 SYN probes from 10.0.0.66 to 150 ports of
// 10.0.0.20 (3 batches of 50) plus one undecodable message, runs the stage
// and expects exactly one portscan alert, one terminated message and an
// empty detector consumer.
func TestStage(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	scanner, victim := []byte{10, 0, 0, 66}, []byte{10, 0, 0, 20}
	win := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	t0 := win + 10*int64(time.Second)
	subj := schema.FlowsSubject("s1", schema.AddrBucket(scanner), schema.AddrBucket(victim))
	for b := 0; b < 3; b++ {
		batch := &pb.FlowBatch{Sensor: "s1"}
		var ids []string
		for i := 0; i < 50; i++ {
			port := uint32(1 + b*50 + i)
			at := t0 + int64(port)*int64(time.Millisecond)
			f := &pb.Flow{Sensor: "s1", Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
				StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true}
			f.Id = schema.FlowID("s1", 6, scanner, 40000, victim, port, 0, 0, 0, at, 0)
			ids = append(ids, f.Id)
			batch.Flows = append(batch.Flows, f)
		}
		data, err := proto.Marshal(batch)
		if err != nil {
			t.Fatal(err)
		}
		publish(t, js, subj, data, schema.BatchID(ids))
	}
	publish(t, js, subj, []byte{0xff, 0xff, 0xff}, "garbage")

	tree, err := model.Load("../../models/flow-id3.model")
	if err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	m := NewMetrics(reg)
	st := New(Config{Rules: rules.DefaultConfig(), ModelThreshold: 0.95}, js, tree, m,
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.Run(rctx) }()
	stopped := false
	stop := func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	defer stop()

	cons, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
	if err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 10*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == 4
	}, "detector consumer still has pending messages")

	if got := testutil.ToFloat64(m.Terminated); got != 1 {
		t.Errorf("terminated = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.Scored); got != 150 {
		t.Errorf("scored = %v, want 150", got)
	}
	// 150 ports: the alert at 50, one update at 100 (same alert id).
	if got := testutil.ToFloat64(m.Alerts.WithLabelValues("portscan")); got != 2 {
		t.Errorf("portscan publishes = %v, want 2", got)
	}
	if got := testutil.ToFloat64(m.Alerts.WithLabelValues("anomaly")); got != 0 {
		t.Errorf("anomaly alerts = %v, want 0 (-model.alerts off)", got)
	}

	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(ctx)
	if info.State.Msgs != 2 {
		t.Fatalf("ALERTS holds %d messages, want 2", info.State.Msgs)
	}
	raw, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var a pb.Alert
	if err := proto.Unmarshal(raw.Data, &a); err != nil {
		t.Fatal(err)
	}
	wantID := schema.AlertID("s1", "portscan", "10.0.0.66", "10.0.0.20", win)
	if raw.Subject != schema.AlertsSubject("s1") || raw.Header.Get(jetstream.MsgIDHeader) != wantID || a.Id != wantID {
		t.Errorf("subject %s, msg id %s, alert id %s; want %s", raw.Subject, raw.Header.Get(jetstream.MsgIDHeader), a.Id, wantID)
	}
	if a.Severity != pb.Severity_SEVERITY_HIGH || a.Category != "portscan" || a.Technique != "T1046" ||
		a.OrigAddr != "10.0.0.66" || a.RespAddr != "10.0.0.20" || a.Sensor != "s1" || a.Summary == "" ||
		a.WindowStartNs != win || a.WindowEndNs != win+int64(time.Minute) {
		t.Errorf("alert = %v", &a)
	}
	var ev map[string]any
	if err := json.Unmarshal(a.Evidence, &ev); err != nil {
		t.Fatalf("evidence %q: %v", a.Evidence, err)
	}
	if ev["distinct_ports"] != float64(50) || ev["window_start_ns"] != float64(win) {
		t.Errorf("evidence = %s", a.Evidence)
	}

	// The update: same alert id, its own Nats-Msg-Id, grown counts.
	raw2, err := s.GetMsg(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	var u pb.Alert
	if err := proto.Unmarshal(raw2.Data, &u); err != nil {
		t.Fatal(err)
	}
	var uev map[string]any
	_ = json.Unmarshal(u.Evidence, &uev)
	if u.Id != wantID || raw2.Header.Get(jetstream.MsgIDHeader) != wantID+".u1" || uev["distinct_ports"] != float64(100) || uev["update"] != float64(1) {
		t.Errorf("update: id %s msg id %s evidence %s", u.Id, raw2.Header.Get(jetstream.MsgIDHeader), u.Evidence)
	}

	// Replaying the same flows (a restarted detector) yields the same id,
	// which the ALERTS duplicate window drops.
	stop()
	if err := js.DeleteConsumer(ctx, schema.StreamFlows, schema.ConsumerDetector); err != nil {
		t.Fatal(err)
	}
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	st2 := New(Config{Rules: rules.DefaultConfig(), ModelThreshold: 0.95}, js, tree, NewMetrics(prometheus.NewRegistry()),
		slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx2, cancel2 := context.WithCancel(ctx)
	done2 := make(chan error, 1)
	go func() { done2 <- st2.Run(rctx2) }()
	defer func() { cancel2(); <-done2 }()
	testkit.Eventually(t, 10*time.Second, func() bool {
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == 4
	}, "replay: detector consumer still has pending messages")
	info, _ = s.Info(ctx)
	if info.State.Msgs != 2 {
		t.Errorf("after replay ALERTS holds %d messages, want 2", info.State.Msgs)
	}
}
