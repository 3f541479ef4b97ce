package consume

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/enricher/internal/flow"
	"netwatch/enricher/internal/publish"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

var (
	hostA = netip.MustParseAddr("10.1.0.1").AsSlice()
	hostB = netip.MustParseAddr("10.1.0.2").AsSlice()
	t0    = time.Date(2024, 5, 1, 12, 0, 0, 0, time.UTC).UnixNano()
)

func udp(sec float64, src []byte, sp uint32, dst []byte, dp uint32, payload uint32) *pb.PacketSummary {
	return &pb.PacketSummary{TsNs: t0 + int64(sec*1e9), SrcAddr: src, DstAddr: dst, SrcPort: sp, DstPort: dp,
		Proto: 17, IpBytes: 28 + payload, PayloadBytes: payload}
}

func publishBatch(t *testing.T, js jetstream.JetStream, b *pb.PacketBatch) {
	t.Helper()
	data, err := proto.Marshal(b)
	if err != nil {
		t.Fatal(err)
	}
	msg := nats.NewMsg(schema.PacketsSubject(b.Sensor, b.Bucket))
	msg.Data = data
	msg.Header.Set(jetstream.MsgIDHeader, schema.PacketBatchID(b.Sensor, b.Boot, b.Seq))
	if _, err := js.PublishMsg(context.Background(), msg); err != nil {
		t.Fatal(err)
	}
}

func startStage(t *testing.T, js jetstream.JetStream) (stop func()) {
	t.Helper()
	cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{MaxFlows: 256, Linger: 20 * time.Millisecond},
		WallTick: time.Hour, ShutdownFlush: true, Instance: "test"}
	s := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testkit.Eventually(t, 5*time.Second, func() bool { return s.Ready() == nil }, "stage not ready")
	return func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
}

// readStream calls fn with every message of stream, in order.
func readStream(t *testing.T, js jetstream.JetStream, stream string, fn func(jetstream.Msg)) {
	t.Helper()
	c, err := js.OrderedConsumer(context.Background(), stream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for {
		batch, err := c.FetchNoWait(100)
		if err != nil {
			t.Fatal(err)
		}
		n := 0
		for m := range batch.Messages() {
			n++
			fn(m)
		}
		if n == 0 {
			return
		}
	}
}

// readFlows fetches every FLOWS message and returns the flows, the subject
// of each flow's message, and the msg ids (one per message).
func readFlows(t *testing.T, js jetstream.JetStream) (flows []*pb.Flow, subjects, ids []string) {
	t.Helper()
	readStream(t, js, schema.StreamFlows, func(m jetstream.Msg) {
		var fb pb.FlowBatch
		if err := proto.Unmarshal(m.Data(), &fb); err != nil {
			t.Fatal(err)
		}
		var fids []string
		for _, f := range fb.Flows {
			fids = append(fids, f.Id)
		}
		if got, want := m.Headers().Get(jetstream.MsgIDHeader), schema.BatchID(fids); got != want {
			t.Errorf("msg id %s, want BatchID %s", got, want)
		}
		flows = append(flows, fb.Flows...)
		for range fb.Flows {
			subjects = append(subjects, m.Subject()) // one per flow
		}
		ids = append(ids, m.Headers().Get(jetstream.MsgIDHeader))
	})
	return flows, subjects, ids
}

func flowsCount(t *testing.T, js jetstream.JetStream) uint64 {
	st, err := js.Stream(context.Background(), schema.StreamFlows)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.State.Msgs
}

func packetsDone(t *testing.T, js jetstream.JetStream) bool {
	c, err := js.Consumer(context.Background(), schema.StreamPackets, schema.ConsumerEnricher)
	if err != nil {
		t.Fatal(err)
	}
	info, err := c.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return info.NumPending == 0 && info.NumAckPending == 0
}

func TestStage(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	stop := startStage(t, js)
	defer stop()
	b1 := schema.PacketBucket(hostA, 50000, hostB, 53, 17, 0)
	b2 := schema.PacketBucket(hostA, 50001, hostB, 123, 17, 0)
	// Bucket b1: a DNS exchange split across two messages; bucket b2: one NTP packet.
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: 1, Bucket: b1, Packets: []*pb.PacketSummary{
		udp(0, hostA, 50000, hostB, 53, 30)}})
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: 2, Bucket: b2, Packets: []*pb.PacketSummary{
		udp(0.5, hostA, 50001, hostB, 123, 48)}})
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: 3, Bucket: b1, Packets: []*pb.PacketSummary{
		udp(1, hostB, 53, hostA, 50000, 90)}})
	// Undecodable: terminated, not retried.
	bad := nats.NewMsg(schema.PacketsSubject("s1", b1))
	bad.Data = []byte{0xff, 0xff, 0xff}
	bad.Header.Set(jetstream.MsgIDHeader, "s1.boot1.bad")
	if _, err := js.PublishMsg(context.Background(), bad); err != nil {
		t.Fatal(err)
	}
	// Nothing is emitted and nothing acked before end of input.
	testkit.Eventually(t, 5*time.Second, func() bool {
		c, _ := js.Consumer(context.Background(), schema.StreamPackets, schema.ConsumerEnricher)
		info, _ := c.Info(context.Background())
		return info.NumPending == 0 && info.NumAckPending == 3
	}, "3 messages should be held")
	if n := flowsCount(t, js); n != 0 {
		t.Fatalf("%d FLOWS messages before EOF", n)
	}
	for i, b := range []uint32{b1, b2} {
		publishBatch(t, js, &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: uint64(10 + i), Bucket: b, EndOfInput: true})
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) }, "PACKETS consumer still has pending or ack-pending messages")
	flows, subjects, _ := readFlows(t, js)
	if len(flows) != 2 {
		t.Fatalf("%d flows, want 2", len(flows))
	}
	for i, f := range flows {
		if want := schema.FlowsSubject("s1", schema.AddrBucket(f.OrigAddr), schema.AddrBucket(f.RespAddr)); subjects[i] != want {
			t.Errorf("subject %s, want %s", subjects[i], want)
		}
		if !f.Final || f.EndReason != pb.EndReason_END_EOF || f.Sensor != "s1" {
			t.Errorf("flow %d: final %v reason %v sensor %q", i, f.Final, f.EndReason, f.Sensor)
		}
		switch f.RespPort {
		case 53:
			if f.OrigPkts != 1 || f.RespPkts != 1 || f.OrigIpBytes != 58 || f.RespIpBytes != 118 || f.App != "dns" {
				t.Errorf("dns flow %+v", f)
			}
		case 123:
			if f.OrigPkts != 1 || f.RespPkts != 0 || f.OrigBytes != 48 {
				t.Errorf("ntp flow %+v", f)
			}
		default:
			t.Errorf("unexpected flow %+v", f)
		}
	}
}

// TestRedelivery publishes the same batch twice with the same msg id: the
// stream drops the copy, so the flow is counted once.
func TestRedelivery(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	stop := startStage(t, js)
	defer stop()
	b := schema.PacketBucket(hostA, 40000, hostB, 5004, 17, 0)
	batch := &pb.PacketBatch{Sensor: "s2", Boot: "b", Seq: 1, Bucket: b, Packets: []*pb.PacketSummary{
		udp(0, hostA, 40000, hostB, 5004, 100), udp(1, hostB, 5004, hostA, 40000, 100)}}
	publishBatch(t, js, batch)
	publishBatch(t, js, batch)
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s2", Boot: "b", Seq: 2, Bucket: b, EndOfInput: true})
	testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) && flowsCount(t, js) == 1 },
		"want all PACKETS acked and one FLOWS message")
	flows, _, _ := readFlows(t, js)
	if len(flows) != 1 || flows[0].OrigPkts+flows[0].RespPkts != 2 {
		t.Fatalf("flows %v", flows)
	}
}

// TestRestartKeepsUnacked stops the stage with an open flow and
// ShutdownFlush off: the held message goes back to the stream, and a new
// stage rebuilds the same flow (same id) from it.
func TestRestartKeepsUnacked(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{Linger: 10 * time.Millisecond}, WallTick: time.Hour}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	b := schema.PacketBucket(hostA, 40000, hostB, 5004, 17, 0)
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s3", Boot: "b", Seq: 1, Bucket: b, Packets: []*pb.PacketSummary{
		udp(0, hostA, 40000, hostB, 5004, 100)}})
	ackPending := func(want int) func() bool {
		return func() bool {
			c, err := js.Consumer(context.Background(), schema.StreamPackets, schema.ConsumerEnricher)
			if err != nil {
				return false
			}
			info, err := c.Info(context.Background())
			return err == nil && info.NumAckPending == want && info.NumPending == 0
		}
	}
	for round := range 2 {
		s := New(js, cfg, log, nil)
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan error, 1)
		go func() { done <- s.Run(ctx) }()
		testkit.Eventually(t, 5*time.Second, ackPending(1), "round %d: message not held", round)
		if round == 1 {
			publishBatch(t, js, &pb.PacketBatch{Sensor: "s3", Boot: "b", Seq: 2, Bucket: b, EndOfInput: true})
			testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) && flowsCount(t, js) == 1 },
				"want the rebuilt flow and every message acked")
		}
		cancel()
		if err := <-done; err != nil {
			t.Fatal(err)
		}
		if round == 0 {
			if n := flowsCount(t, js); n != 0 {
				t.Fatalf("%d FLOWS messages after shutdown without flush", n)
			}
		}
	}
	flows, _, _ := readFlows(t, js)
	if len(flows) != 1 || flows[0].OrigPkts != 1 || flows[0].StartNs != t0 {
		t.Fatalf("flows %v", flows)
	}
}

// TestShutdownFlush ends open flows as END_SHUTDOWN and acks their input.
func TestShutdownFlush(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{MaxFlows: 256, Linger: 20 * time.Millisecond},
		WallTick: time.Hour, ShutdownFlush: true}
	s := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	b := schema.PacketBucket(hostA, 40000, hostB, 5004, 17, 0)
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s4", Boot: "b", Seq: 1, Bucket: b, Packets: []*pb.PacketSummary{
		udp(0, hostA, 40000, hostB, 5004, 100)}})
	// Delivered is not enough (ack pending is 1 while the message still sits
	// in the client's pull buffer): wait until the flow is open.
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(s.m.Packets) == 1 }, "packet not processed")
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) }, "input not acked after flush")
	flows, _, _ := readFlows(t, js)
	if len(flows) != 1 || flows[0].EndReason != pb.EndReason_END_SHUTDOWN || !flows[0].Final {
		t.Fatalf("flows %v", flows)
	}
}

// readCounters fetches every COUNTERS message and its msg id.
func readCounters(t *testing.T, js jetstream.JetStream) (msgs []*pb.TrafficCounters, ids []string) {
	t.Helper()
	readStream(t, js, schema.StreamCounters, func(m jetstream.Msg) {
		var tc pb.TrafficCounters
		if err := proto.Unmarshal(m.Data(), &tc); err != nil {
			t.Fatal(err)
		}
		if m.Subject() != schema.CountersSubject(tc.Sensor) {
			t.Errorf("subject %s for sensor %s", m.Subject(), tc.Sensor)
		}
		msgs = append(msgs, &tc)
		ids = append(ids, m.Headers().Get(jetstream.MsgIDHeader))
	})
	return msgs, ids
}

// TestCountersAndNames: a DNS response in one bucket names the server of a
// flow in another bucket (the passive DNS cache is per sensor), and the
// sensor's per-second counters reach COUNTERS with ids from sensor,
// instance and second (hand counts: second 0 has the DNS query and
// response, second 10 the SYN and SYN-ACK). The batch of second 10 comes
// first, as a separately batched bucket may: second 0 is still counted,
// not late.
func TestCountersAndNames(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	stop := startStage(t, js)
	server := netip.MustParseAddr("10.1.0.80").AsSlice()
	bd := schema.PacketBucket(hostA, 53000, hostB, 53, 17, 0)
	bt := schema.PacketBucket(hostA, 40000, server, 80, 6, 0)
	q := udp(0.1, hostA, 53000, hostB, 53, 30)
	r := udp(0.2, hostB, 53, hostA, 53000, 46)
	r.DnsResponse, r.DnsQuery = true, "web.example"
	r.DnsAnswers = []*pb.DNSAnswer{{Name: "web.example", Type: 1, Addr: server, Ttl: 300}}
	synP := &pb.PacketSummary{TsNs: t0 + 10.1e9, SrcAddr: hostA, DstAddr: server, SrcPort: 40000, DstPort: 80, Proto: 6, IpBytes: 60, TcpFlags: 0x02}
	synAck := &pb.PacketSummary{TsNs: t0 + 10.2e9, SrcAddr: server, DstAddr: hostA, SrcPort: 80, DstPort: 40000, Proto: 6, IpBytes: 60, TcpFlags: 0x12}
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s5", Boot: "b", Seq: 1, Bucket: bt, Packets: []*pb.PacketSummary{synP, synAck}})
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s5", Boot: "b", Seq: 2, Bucket: bd, Packets: []*pb.PacketSummary{q, r}})
	for i, b := range []uint32{bd, bt} {
		publishBatch(t, js, &pb.PacketBatch{Sensor: "s5", Boot: "b", Seq: uint64(10 + i), Bucket: b, EndOfInput: true})
	}
	testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) }, "PACKETS not all acked")
	stop()
	flows, _, _ := readFlows(t, js)
	var named bool
	for _, f := range flows {
		if f.RespPort == 80 {
			named = f.RespName == "web.example" && f.OrigName == ""
		}
	}
	if len(flows) != 2 || !named {
		t.Errorf("flows %v", flows)
	}
	msgs, ids := readCounters(t, js)
	if len(msgs) != 2 {
		t.Fatalf("%d COUNTERS messages, want 2", len(msgs))
	}
	want := []*pb.CounterSet{{Packets: 2, IpBytes: 58 + 74, DnsResponses: 1, Sources: 2}, {Packets: 2, IpBytes: 120, Syn: 1, SynAck: 1, Sources: 2}}
	for i, m := range msgs {
		if m.Sensor != "s5" || m.SecondNs != t0+int64(10*i)*1e9 || !proto.Equal(m.Total, want[i]) || len(m.Responders) != 2 {
			t.Errorf("second %d: %v", 10*i, m)
		}
		if wantID := fmt.Sprintf("s5.test.%d", t0/1e9+int64(10*i)); ids[i] != wantID {
			t.Errorf("msg id %s, want %s", ids[i], wantID)
		}
	}
}

// TestMaxFlows: with -flow.max-flows 2, a third flow in the same bucket
// ends the least recently active one early; the eviction is counted, the
// open-flow gauge stays at the bound, and every packet is in a record.
func TestMaxFlows(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{MaxFlows: 256, Linger: 20 * time.Millisecond},
		WallTick: time.Hour, ShutdownFlush: true, Instance: "test", MaxFlows: 2}
	s := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testkit.Eventually(t, 5*time.Second, func() bool { return s.Ready() == nil }, "stage not ready")
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s6", Boot: "b", Seq: 1, Bucket: 7, Packets: []*pb.PacketSummary{
		udp(0, hostA, 40001, hostB, 5004, 10), udp(1, hostA, 40002, hostB, 5004, 10),
		udp(2, hostA, 40001, hostB, 5004, 10), udp(3, hostA, 40003, hostB, 5004, 10)}})
	testkit.Eventually(t, 5*time.Second, func() bool { return testutil.ToFloat64(s.m.Packets) == 4 }, "packets not processed")
	if e, a := testutil.ToFloat64(s.m.Evicted), testutil.ToFloat64(s.m.ActiveFlows); e != 1 || a != 2 {
		t.Errorf("evicted %v, active %v; want 1 and 2", e, a)
	}
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s6", Boot: "b", Seq: 2, Bucket: 7, EndOfInput: true})
	testkit.Eventually(t, 5*time.Second, func() bool { return packetsDone(t, js) }, "PACKETS not all acked")
	flows, _, _ := readFlows(t, js)
	var pkts uint64
	for _, f := range flows {
		pkts += f.OrigPkts + f.RespPkts
		if f.OrigPort == 40002 && f.EndReason != pb.EndReason_END_EVICTED {
			t.Errorf("evicted flow ended %v", f.EndReason)
		}
	}
	if len(flows) != 3 || pkts != 4 {
		t.Errorf("%d flows with %d packets; want 3 and 4", len(flows), pkts)
	}
}

// TestWatermark: a sensor that sends watermark batches has its flow clocks
// moved by them, not by the wall clock. A DNS query, a watermark just after
// it, 1.5 s of wall-clock silence (as in a broker failover; the wall tick is
// 100 ms and the UDP idle timeout 1 s, so the wall clock alone would end
// the flow), then the late answer: one flow of 1+1 packets, ended idle by
// the next watermark (5 s), with no end of input. A later flow with no
// watermark after it ends by the wall clock once the sensor's watermarks
// are older than WatermarkSilence (4 s); a flow followed by a final
// watermark (the agent stopped) ends by the wall clock at once (idle 1 s).
func TestWatermark(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	fc := flow.DefaultConfig()
	fc.IdleUDP = time.Second
	cfg := Config{Flow: fc, Publish: publish.Config{MaxFlows: 256, Linger: 20 * time.Millisecond},
		WallTick: 100 * time.Millisecond, WatermarkSilence: 4 * time.Second, ShutdownFlush: false, Instance: "test"}
	s := New(js, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	defer func() { cancel(); <-done }()
	testkit.Eventually(t, 5*time.Second, func() bool { return s.Ready() == nil }, "stage not ready")

	b := schema.PacketBucket(hostA, 50000, hostB, 53, 17, 0)
	batch := func(seq uint64, wm float64, pkts ...*pb.PacketSummary) {
		m := &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: seq, Bucket: b, Packets: pkts}
		if wm > 0 {
			m.WatermarkNs = t0 + int64(wm*1e9)
		}
		publishBatch(t, js, m)
	}
	batch(1, 0, udp(0, hostA, 50000, hostB, 53, 30))
	batch(2, 0.1)
	time.Sleep(1500 * time.Millisecond)
	if n := flowsCount(t, js); n != 0 {
		t.Fatalf("%d FLOWS messages during the silence: the wall clock ended the flow", n)
	}
	batch(3, 0, udp(0.5, hostB, 53, hostA, 50000, 90))
	batch(4, 5)
	lastWM := time.Now()
	testkit.Eventually(t, 5*time.Second, func() bool { return flowsCount(t, js) >= 1 }, "the watermark at 5 s did not end the flow")
	flows, _, _ := readFlows(t, js)
	if len(flows) != 1 || flows[0].OrigPkts != 1 || flows[0].RespPkts != 1 || flows[0].EndReason != pb.EndReason_END_IDLE || !flows[0].Final {
		t.Fatalf("flows %v, want one final idle flow of 1+1 packets", flows)
	}

	// No watermark after this one: the wall clock takes over after 4 s.
	batch(5, 0, udp(10, hostA, 50000, hostB, 53, 30))
	testkit.Eventually(t, 10*time.Second, func() bool { return flowsCount(t, js) >= 2 }, "the wall clock did not end a flow after the watermarks stopped")
	if d := time.Since(lastWM); d < 4*time.Second {
		t.Errorf("the flow ended %v after the last watermark, before WatermarkSilence (4 s)", d)
	}

	// A final watermark: the wall clock takes over at once.
	batch(6, 0, udp(20, hostA, 50000, hostB, 53, 30))
	publishBatch(t, js, &pb.PacketBatch{Sensor: "s1", Boot: "boot1", Seq: 7, Bucket: b, WatermarkNs: t0 + 20.1e9, FinalWatermark: true})
	final := time.Now()
	testkit.Eventually(t, 10*time.Second, func() bool { return flowsCount(t, js) >= 3 }, "no flow ended after the final watermark")
	if d := time.Since(final); d > 3*time.Second {
		t.Errorf("the flow ended %v after the final watermark; the wall clock should end it after its 1 s idle timeout", d)
	}
}
