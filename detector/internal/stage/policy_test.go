package stage

import (
	"context"
	"io"
	"log/slog"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/arp"
	"netwatch/detector/internal/policy"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestStagePolicy: an allow entry for the scanner's network suppresses
// its portscan alert (nothing on ALERTS, counted); a reloaded threshold
// (portscan.ports 200) applies to the next message: 150 ports to a second
// host raise nothing; with the default 50 they would.
func TestStagePolicy(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	scanner := []byte{10, 0, 0, 66}
	t0 := time.Date(2026, 1, 1, 0, 0, 10, 0, time.UTC).UnixNano()
	probes := func(victim []byte, seq int) {
		batch := &pb.FlowBatch{Sensor: "s1"}
		for port := uint32(1); port <= 150; port++ {
			at := t0 + int64(port)*int64(time.Millisecond)
			batch.Flows = append(batch.Flows, &pb.Flow{Proto: 6, OrigAddr: scanner, OrigPort: 40000, RespAddr: victim, RespPort: port,
				StartNs: at, EndNs: at + 1e5, OrigPkts: 1, RespPkts: 1, OrigTcpFlags: 0x02, RespTcpFlags: 0x14, Final: true})
		}
		data, _ := proto.Marshal(batch)
		publish(t, js, schema.FlowsSubject("s1", 1, 2), data, "batch-"+string(rune('0'+seq)))
	}
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig()}, js, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	allow, err := policy.Parse([]byte("allow: [{networks: [10.0.0.0/26, 10.0.0.64/30], rules: [portscan]}]"))
	if err != nil {
		t.Fatal(err)
	}
	st.SetPolicy(allow, rules.DefaultConfig(), arp.DefaultConfig())
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.Run(rctx) }()
	defer func() { cancel(); <-done }()
	cons, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
	if err != nil {
		t.Fatal(err)
	}
	acked := func(n uint64) func() bool {
		return func() bool {
			info, err := cons.Info(ctx)
			return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == n
		}
	}
	probes([]byte{10, 0, 0, 20}, 1)
	testkit.Eventually(t, 10*time.Second, acked(1), "first batch not acked")
	// The scan of 10.0.0.20: the alert at 50 ports and its update at 100, both suppressed.
	if got := testutil.ToFloat64(m.Suppressed.WithLabelValues("portscan")); got != 2 {
		t.Errorf("suppressed = %v, want 2", got)
	}
	s, _ := js.Stream(ctx, schema.StreamAlerts)
	if info, _ := s.Info(ctx); info.State.Msgs != 0 {
		t.Errorf("ALERTS holds %d messages, want 0", info.State.Msgs)
	}
	// Reload: no allow entry, portscan.ports 200.
	p, _ := policy.Parse([]byte("thresholds: {portscan.ports: 200}"))
	r := rules.DefaultConfig()
	r.PortscanPorts = 200
	st.SetPolicy(p, r, arp.DefaultConfig())
	probes([]byte{10, 0, 0, 21}, 2)
	testkit.Eventually(t, 10*time.Second, acked(2), "second batch not acked")
	if info, _ := s.Info(ctx); info.State.Msgs != 0 {
		t.Errorf("after the reload ALERTS holds %d messages, want 0 (150 < 200 ports)", info.State.Msgs)
	}
	if got := testutil.ToFloat64(m.Suppressed.WithLabelValues("portscan")); got != 2 {
		t.Errorf("suppressed = %v, want still 2", got)
	}
}
