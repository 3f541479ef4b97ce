package pipeline

import (
	"context"
	"log/slog"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// spbFile is testdata/gen-pcapng-spb.py's capture: an Enhanced Packet Block
// at 1700000000.000001, a Simple Packet Block (no timestamp) and another
// Enhanced Packet Block at 1700000002.500001, each a 38-byte IP datagram.
var spbFile = filepath.Join("..", "..", "testdata", "pcapng-simple-packet-block.pcapng")

// TestSimplePacketBlockTime: a packet without a timestamp is counted but does
// not enter first/last packet time (it gave "first_packet": "1754-...",
// "duration_s": 8495364581), and is published with the time of the newest
// frame before it (hand count in the generator's docstring; tshark shows no
// frame.time_epoch for frame 2).
func TestSimplePacketBlockTime(t *testing.T) {
	r, err := Summarize(spbFile, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Packets != 3 || r.IPPackets != 3 || r.IPBytes != 114 || r.FirstPacket != "2023-11-14T22:13:20.000001Z" ||
		r.LastPacket != "2023-11-14T22:13:22.500001Z" || r.DurationS != 2.5 {
		t.Errorf("summary: %d packets, %d IP (%d bytes), first %s, last %s, duration %v s; want 3, 3 (114), "+
			"2023-11-14T22:13:20.000001Z, 2023-11-14T22:13:22.500001Z, 2.5",
			r.Packets, r.IPPackets, r.IPBytes, r.FirstPacket, r.LastPacket, r.DurationS)
	}

	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PCAP: spbFile, Sensor: "spb-sensor", BatchSize: 64, BatchFlush: 200 * time.Millisecond,
		MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144}
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := a.Run(ctx); err != nil {
		t.Fatal(err)
	}
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var ts []int64
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		for _, p := range b.Packets {
			ts = append(ts, int64(p.TsNs))
		}
	}
	const t1, t3 = 1700000000_000001000, 1700000002_500001000
	if len(ts) != 3 || ts[0] != t1 || ts[1] != t1 || ts[2] != t3 {
		t.Errorf("PACKETS ts_ns %v, want [%d %d %d]", ts, int64(t1), int64(t1), int64(t3))
	}
}
