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

	"netwatch/detector/internal/health"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestStageHealth: on a real JetStream, two METRICS samples of sensor s9
// (1 s apart; 150 of 1,150 packets dropped between them, disk 95 % full)
// then nothing, and 5 FLOWS messages nobody consumes: the health rules
// publish capture drops, disk full, the sensor's silence and the detector
// consumer's lag to ALERTS.
func TestStageHealth(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	for i := 0; i < 5; i++ {
		data, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1"})
		publish(t, js, schema.FlowsSubject("s1", 0, 0), data, "f"+string(rune('0'+i)))
	}
	cfg := health.DefaultConfig()
	cfg.LagPending = 5
	cfg.SilentIntervals = 2
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig()}, js, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.RunHealth(rctx, cfg, 100*time.Millisecond) }()
	defer func() { cancel(); <-done }()

	alerts, _ := js.Stream(ctx, schema.StreamAlerts)
	now := time.Now()
	sample := func(seq uint64, at time.Time, received, dropped uint64) {
		data, _ := proto.Marshal(&pb.Metrics{Sensor: "s9", Host: "h9", Boot: "b", Seq: seq, TimeNs: at.UnixNano(),
			Captures: []*pb.CaptureStats{{Source: "eth0", Received: received, Dropped: dropped}},
			Disks:    []*pb.DiskUsage{{Mount: "/var", TotalBytes: 100 << 30, UsedBytes: 95 << 30}}})
		publish(t, js, schema.MetricsSubject("s9"), data, "m"+string(rune('0'+seq)))
	}
	// The ordered consumer starts at new messages: publish once it is up
	// (the first ticks have run), then the second sample.
	testkit.Eventually(t, 10*time.Second, func() bool {
		info, _ := alerts.Info(ctx)
		return info.State.Msgs >= 1 // the lag alert comes from the first tick
	}, "no lag alert")
	sample(1, now, 1000, 0)
	time.Sleep(50 * time.Millisecond) // two samples, not one message: keep their order (not waiting for a result)
	sample(2, now.Add(time.Second), 2000, 150)
	want := map[string]bool{health.RuleLag: false, health.RuleDrops: false, health.RuleDisk: false, health.RuleSilent: false}
	testkit.Eventually(t, 15*time.Second, func() bool {
		info, _ := alerts.Info(ctx)
		for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
			raw, err := alerts.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			var a pb.Alert
			if proto.Unmarshal(raw.Data, &a) == nil && a.Category == "health" {
				want[a.Rule] = true
			}
		}
		for _, ok := range want {
			if !ok {
				return false
			}
		}
		return true
	}, "health alerts: %v", want)
}

// TestStageHealthGroupLag: flows waiting in the detectors' group work
// queue (FLOWS-detectors, no member reading it) raise consumer_lag for the
// group, with the count published (6) as its backlog; the target group,
// created too, holds the same 6 flows.
func TestStageHealthGroupLag(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	for _, name := range []string{schema.DetectorGroup, schema.DetectorTargetGroup(schema.DetectorGroup)} {
		w := schema.DetectorOrigWildcards
		if name != schema.DetectorGroup {
			w = schema.DetectorTargetWildcards
		}
		if _, err := schema.CreateGroupStream(ctx, js, schema.StreamFlows, name, 4, schema.DetectorGroupFilterSubject, w); err != nil {
			t.Fatal(err)
		}
	}
	for i := 0; i < 6; i++ {
		data, _ := proto.Marshal(&pb.FlowBatch{Sensor: "s1"})
		publish(t, js, schema.FlowsSubject("s1", uint32(i), 0), data, "g"+string(rune('0'+i)))
	}
	cfg := health.DefaultConfig()
	cfg.LagPending = 6
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig()}, js, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.RunHealth(rctx, cfg, 100*time.Millisecond) }()
	defer func() { cancel(); <-done }()
	alerts, _ := js.Stream(ctx, schema.StreamAlerts)
	got := map[string]float64{}
	testkit.Eventually(t, 15*time.Second, func() bool {
		info, _ := alerts.Info(ctx)
		for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
			raw, err := alerts.GetMsg(ctx, seq)
			if err != nil {
				continue
			}
			var a pb.Alert
			if proto.Unmarshal(raw.Data, &a) != nil || a.Rule != health.RuleLag {
				continue
			}
			var ev struct {
				Stream  string  `json:"stream"`
				Pending float64 `json:"pending"`
			}
			if json.Unmarshal([]byte(a.Evidence), &ev) == nil {
				got[ev.Stream] = ev.Pending
			}
		}
		return got["FLOWS-detectors"] == 6 && got["FLOWS-detectors-targets"] == 6
	}, "lag alerts by stream: %v, want FLOWS-detectors and FLOWS-detectors-targets 6 pending", got)
}
