package pipeline

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestLiveWatermarks captures live on loopback while two UDP senders (two
// 5-tuples, so two buckets) send a datagram every 150 ms for 0.9 s (reads
// time out between them: watermarks must go out before 256 frames were
// read), then every 5 ms for 0.6 s, with a watermark every 100 ms. On every PACKETS subject, in stream order: the
// watermarks increase, and no batch after a watermark W holds a packet
// stamped before W (the promise the enricher relies on). Every bucket gets
// watermarks, and they follow the traffic (the last is after the first
// datagram); data batches made after a watermark carry it too; after the
// stop, the last message of every bucket is a final watermark.
func TestLiveWatermarks(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Unavailable(t, "live capture needs root (CAP_NET_RAW)")
	}
	var sinks [2]*net.UDPConn
	for i := range sinks {
		c, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		sinks[i] = c
	}
	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	bpf := "udp port " + strconv.Itoa(sinks[0].LocalAddr().(*net.UDPAddr).Port) + " or udp port " +
		strconv.Itoa(sinks[1].LocalAddr().(*net.UDPAddr).Port)
	cfg := Config{Interface: "lo", BPF: bpf, Sensor: "wm-test", BatchSize: 8, BatchFlush: 50 * time.Millisecond,
		WatermarkInterval: 100 * time.Millisecond, MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144}
	cfg.NATSURL = nc.ConnectedUrl()
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	var conns [2]*net.UDPConn
	for i, s := range sinks {
		c, err := net.DialUDP("udp4", nil, s.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns[i] = c
	}
	testkit.Eventually(t, 10*time.Second, func() bool { conns[0].Write([]byte("warm")); return a.Stats.Received.Load() > 0 },
		"live capture on lo saw nothing")
	first := time.Now().UnixNano()
	fastStart := time.Now().Add(900 * time.Millisecond)
	for end := time.Now().Add(1500 * time.Millisecond); time.Now().Before(end); {
		for _, c := range conns {
			c.Write(make([]byte, 64))
		}
		// slow, then fast: the loop's ticks come from reads that time out
		// (100 ms) between datagrams first, then from every 256 frames
		if time.Now().Before(fastStart) {
			time.Sleep(150 * time.Millisecond)
		} else {
			time.Sleep(5 * time.Millisecond)
		}
	}
	time.Sleep(300 * time.Millisecond) // a few more watermarks over the quiet end
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	st, err := js.Stream(context.Background(), schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(context.Background())
	wmOf := map[string]int64{} // subject -> latest watermark
	wmN := map[string]int{}    // subject -> watermarks
	lastWM := map[string]int64{}
	lastFinal := map[string]bool{} // subject -> its latest message is a final watermark
	pkts, late, backwards, dataWM, slowWM := 0, 0, 0, 0, 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		if b.WatermarkNs != 0 && len(b.Packets) == 0 {
			if b.WatermarkNs < wmOf[m.Subject] || b.WatermarkNs == wmOf[m.Subject] && !b.FinalWatermark {
				backwards++
			}
			wmOf[m.Subject] = max(wmOf[m.Subject], b.WatermarkNs)
			lastWM[m.Subject] = b.WatermarkNs
			if b.SentNs < fastStart.UnixNano() {
				slowWM++
			}
			lastFinal[m.Subject] = b.FinalWatermark
			wmN[m.Subject]++
			continue
		}
		lastFinal[m.Subject] = false
		for _, p := range b.Packets {
			pkts++
			if p.TsNs < wmOf[m.Subject] {
				late++
				if late <= 5 {
					t.Errorf("%s: packet at %d after watermark %d (%v before it)", m.Subject, p.TsNs, wmOf[m.Subject],
						time.Duration(wmOf[m.Subject]-p.TsNs))
				}
			}
		}
		if b.WatermarkNs != 0 {
			// a data batch carries the last watermark sent: the promise
			// covers it and the batches before it
			dataWM++
			wmOf[m.Subject] = max(wmOf[m.Subject], b.WatermarkNs)
		}
	}
	if late != 0 || backwards != 0 {
		t.Errorf("%d packets after a later watermark of their bucket, %d watermarks not increasing", late, backwards)
	}
	if len(wmN) != schema.Buckets {
		t.Errorf("watermarks on %d subjects, want all %d buckets", len(wmN), schema.Buckets)
	}
	finals := 0
	for _, f := range lastFinal {
		if f {
			finals++
		}
	}
	if finals != schema.Buckets {
		t.Errorf("%d buckets end with a final watermark after the stop, want %d", finals, schema.Buckets)
	}
	minN := 1 << 30
	for subj, n := range wmN {
		minN = min(minN, n)
		if lastWM[subj] < first {
			t.Errorf("%s: last watermark %d is before the first datagram %d", subj, lastWM[subj], first)
		}
	}
	if slowWM < schema.Buckets {
		t.Errorf("%d watermarks sent during the slow phase, want at least a round of %d", slowWM, schema.Buckets)
	}
	if dataWM == 0 {
		t.Error("no data batch carried a watermark")
	}
	if minN < 3 {
		t.Errorf("a bucket got %d watermarks in 1.8 s at 100 ms, want ≥ 3 (ticks come every 256 packets or when the capture is empty)", minN)
	}
	t.Logf("%d packets, %d..per bucket watermarks (min %d), 0 late", pkts, len(wmN), minN)
}
