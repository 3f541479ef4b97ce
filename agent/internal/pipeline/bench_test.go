package pipeline

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/agent/internal/decode"
	"netwatch/testkit"
)

// BenchmarkRunFile measures the whole agent on a file: read, decode,
// fragment table, batch, marshal and async publish to an in-process
// JetStream with every ack awaited (37,841 frames per op).
func BenchmarkRunFile(b *testing.B) {
	file := filepath.Join(testkit.Pcaps(b), "attack-synflood-spoofed-sources.pcap")
	st, err := os.Stat(file)
	if err != nil {
		b.Skip(err)
	}
	_, nc, _ := testkit.JetStream(b)
	js, _ := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second), jetstream.WithPublishAsyncMaxPending(1024))
	cfg := Config{PCAP: file, Sensor: "bench", BatchSize: 1024, BatchFlush: 200 * time.Millisecond,
		MetricsInterval: time.Hour, MaxInflight: 256}
	b.SetBytes(st.Size())
	b.ReportAllocs()
	var pkts uint64
	for i := 0; i < b.N; i++ {
		a := New(cfg, js, nil, slog.New(slog.DiscardHandler))
		if err := a.Run(context.Background()); err != nil {
			b.Fatal(err)
		}
		pkts += a.Stats.Received.Load()
	}
	b.ReportMetric(float64(pkts)/b.Elapsed().Seconds(), "pkts/s")
}

// BenchmarkReadFile is capture → decode → fragment without a broker.
func BenchmarkReadFile(b *testing.B) {
	file := filepath.Join(testkit.Pcaps(b), "attack-synflood-spoofed-sources.pcap")
	b.ReportAllocs()
	var pkts uint64
	for i := 0; i < b.N; i++ {
		s, err := ReadFile(file, func(*decode.Packet) {})
		if err != nil {
			b.Fatal(err)
		}
		pkts += s.Received.Load()
	}
	b.ReportMetric(float64(pkts)/b.Elapsed().Seconds(), "pkts/s")
}
