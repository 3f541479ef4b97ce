package publish

import (
	"io"
	"log/slog"
	"sync"
	"syscall"
	"time"
	"os"
	"path/filepath"
	"testing"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/testkit"
)

// cpuTime is the process's user + system CPU time: a per-packet figure that
// a machine loaded by other work inflates less than wall-clock time.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// benchPackets decodes up to n IP packets of the benchmark capture
// (NETWATCH_BENCH_PCAP, else the shared wikipedia browsing capture) with
// their frames copied, for the encoder benchmarks.
func benchPackets(b *testing.B, n int) []decode.Packet {
	file := os.Getenv("NETWATCH_BENCH_PCAP")
	if file == "" {
		file = filepath.Join(testkit.Pcaps(b), "eth-ipv4-dns-http-browsing-wikipedia.pcap")
	}
	src, err := capture.OpenFile(file)
	if err != nil {
		b.Fatal(err)
	}
	defer src.Close()
	d, err := decode.New(src.LinkType())
	if err != nil {
		b.Fatal(err)
	}
	var out []decode.Packet
	for len(out) < n {
		data, ci, _, err := src.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			b.Fatal(err)
		}
		var p decode.Packet
		if d.Decode(append([]byte(nil), data...), &p) != decode.KindIP {
			continue
		}
		p.TsNs = ci.Timestamp.UnixNano()
		out = append(out, p)
	}
	return out
}

// BenchmarkBatcherAdd measures bucket hashing, light L7 and encoding of one
// summary into its batch (publishing is a no-op: buffers are recycled at once).
func BenchmarkBatcherAdd(b *testing.B) {
	pk := benchPackets(b, 200000)
	// A publisher without a send loop and a 1-byte buffer keeps its first
	// message queued and drops (and recycles) every later one.
	pub := &Publisher{MaxBytes: 1, DropWhenFull: true, log: slog.New(slog.DiscardHandler)}
	pub.cond = sync.NewCond(&pub.mu)
	bt := NewBatcher(pub, "bench", "0123456789abcdef", 1024, 0)
	b.ReportAllocs()
	b.ResetTimer()
	cpu0 := cpuTime()
	for i := 0; i < b.N; i++ {
		bt.Add(&pk[i%len(pk)])
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "pkts/s")
	b.ReportMetric(float64(cpuTime()-cpu0)/float64(b.N), "cpu-ns/pkt")
}
