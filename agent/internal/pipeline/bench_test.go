package pipeline

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"netwatch/agent/internal/decode"
	"netwatch/testkit"
)

// cpuTime is the process's user + system CPU time; benchmarks report it per
// packet ("cpu-ns/pkt"), which a loaded machine does not inflate the way it
// does wall-clock figures. BenchmarkRunFile's includes the in-process
// nats-server.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchFile is the capture of the pipeline benchmarks: NETWATCH_BENCH_PCAP
// (e.g. ../.cache/bench.pcap from make bench) or the shared SYN flood.
func benchFile(b *testing.B) string {
	if f := os.Getenv("NETWATCH_BENCH_PCAP"); f != "" {
		return f
	}
	return filepath.Join(testkit.Pcaps(b), "attack-synflood-spoofed-sources.pcap")
}

// BenchmarkRunFile measures the whole agent on a file: read, decode,
// fragment table, batch, marshal and async publish to an in-process
// JetStream with every ack awaited (37,841 frames per op).
func BenchmarkRunFile(b *testing.B) {
	file := benchFile(b)
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
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		a := New(cfg, js, nil, slog.New(slog.DiscardHandler))
		if err := a.Run(context.Background()); err != nil {
			b.Fatal(err)
		}
		pkts += a.Stats.Received.Load()
	}
	b.ReportMetric(float64(pkts)/b.Elapsed().Seconds(), "pkts/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(pkts), "cpu-ns/pkt")
}

// BenchmarkReadFile is capture → decode → fragment without a broker.
func BenchmarkReadFile(b *testing.B) {
	file := benchFile(b)
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
