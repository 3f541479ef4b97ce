package stage

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/output"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestStageARP publishes the four ARP frames of
// attack-arp-poisoning-mitm.pcapng (as tshark shows them: frames 54, 55,
// 56 and 165) in a PacketBatch next to packet summaries, a batch of
// packets only and a garbage message on PACKETS, and expects one arp_spoof
// alert naming 00:25:b3:bf:91:ee and 172.16.0.1, one terminated message
// and nothing pending on the detector-arp consumer.
func TestStageARP(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	hw := func(s string) []byte { m, _ := net.ParseMAC(s); return m }
	ip := func(a, b, c, d byte) []byte { return []byte{a, b, c, d} }
	attacker, victim := hw("00:25:b3:bf:91:ee"), hw("00:21:70:c0:56:f0")
	t0 := int64(1279251572376535000) // 2010-07-16 03:39:32.73 UTC, the capture's start
	ms := int64(time.Millisecond)
	arps := []*pb.ArpSummary{
		{TsNs: t0 + 4646*ms, Op: 1, SenderMac: attacker, SenderIp: ip(172, 16, 0, 1), TargetMac: victim, TargetIp: ip(172, 16, 0, 107), EthSrc: attacker},
		{TsNs: t0 + 4646*ms + 53000, Op: 2, SenderMac: victim, SenderIp: ip(172, 16, 0, 107), TargetMac: attacker, TargetIp: ip(172, 16, 0, 1), EthSrc: victim},
		{TsNs: t0 + 4646*ms + 66000, Op: 2, SenderMac: attacker, SenderIp: ip(172, 16, 0, 1), TargetMac: victim, TargetIp: ip(172, 16, 0, 107), EthSrc: attacker},
		{TsNs: t0 + 14392*ms, Op: 1, SenderMac: attacker, SenderIp: ip(172, 16, 0, 105), TargetMac: make([]byte, 6), TargetIp: ip(172, 16, 0, 1), EthSrc: attacker},
	}
	pkts := []*pb.PacketSummary{{TsNs: t0, SrcAddr: ip(172, 16, 0, 107), DstAddr: ip(4, 2, 2, 2), Proto: 17, SrcPort: 5353, DstPort: 53, DnsQuery: "www.google.com"}}
	for i, b := range []*pb.PacketBatch{
		{Sensor: "s1", Boot: "b", Seq: 1, Packets: pkts, Arp: arps[:3]},
		{Sensor: "s1", Boot: "b", Seq: 2, Packets: pkts},
		{Sensor: "s1", Boot: "b", Seq: 3, Arp: arps[3:]},
	} {
		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		publish(t, js, schema.PacketsSubject("s1", uint32(i)), data, "b."+string(rune('1'+i)))
	}
	publish(t, js, schema.PacketsSubject("s1", 9), []byte{0x42, 0xff, 0xff}, "garbage")

	// A real local webhook receives the alert too.
	hooked := make(chan map[string]any, 4)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var doc map[string]any
		_ = json.NewDecoder(r.Body).Decode(&doc)
		hooked <- doc
	}))
	defer srv.Close()
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	hook := output.NewWebhook(output.WebhookConfig{URL: srv.URL}, output.NewMetrics(prometheus.NewRegistry()), quiet)
	defer hook.Close(ctx)

	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig(), Outputs: []output.Output{hook}}, js, nil, m, quiet)
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() { done <- st.RunARP(rctx, 1) }()
	defer func() { cancel(); <-done }()

	testkit.Eventually(t, 10*time.Second, func() bool {
		cons, err := js.Consumer(ctx, schema.StreamPackets, ConsumerARP)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == 4
	}, "detector-arp consumer still has pending messages")
	if got := testutil.ToFloat64(m.ARPTerminated); got != 1 {
		t.Errorf("terminated = %v, want 1", got)
	}
	if got := testutil.ToFloat64(m.ARPFrames); got != 4 {
		t.Errorf("ARP frames = %v, want 4", got)
	}
	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := s.Info(ctx)
	if info.State.Msgs != 1 {
		t.Fatalf("ALERTS holds %d messages, want 1", info.State.Msgs)
	}
	raw, err := s.GetMsg(ctx, 1)
	if err != nil {
		t.Fatal(err)
	}
	var a pb.Alert
	if err := proto.Unmarshal(raw.Data, &a); err != nil {
		t.Fatal(err)
	}
	if a.Category != "arp_spoof" || a.Technique != "T1557.002" || a.RespAddr != "172.16.0.1" || a.OrigAddr != "172.16.0.105" ||
		raw.Subject != schema.AlertsSubject("s1") {
		t.Errorf("alert %v on %s", &a, raw.Subject)
	}
	if got := testutil.ToFloat64(m.Alerts.WithLabelValues("arp_spoof")); got != 1 {
		t.Errorf("arp_spoof alerts = %v, want 1", got)
	}
	select {
	case doc := <-hooked:
		if doc["id"] != a.Id || doc["category"] != "arp_spoof" || doc["resp_addr"] != "172.16.0.1" {
			t.Errorf("webhook got %v", doc)
		}
	case <-time.After(10 * time.Second):
		t.Error("webhook got nothing")
	}
}
