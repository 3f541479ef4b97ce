package store

import (
	"context"
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"netwatch/schema/pb"
)

// BenchmarkWriteFlows writes batches of new flows (5000, the default
// -batch.size, and 20000) and reports rows/s, the sink's CPU per row (go-cpu-ns/row:
// user + system time of this process during WriteFlows calls, flow
// generation excluded) and the CPU of the PostgreSQL backends that served
// it (pg-cpu-ns/row, from /proc/<pid>/schedstat; reported only when the
// server runs on this machine). SetBytes is the protobuf size of a batch.
func BenchmarkWriteFlows(b *testing.B) {
	for _, perBatch := range []int{5000, 20000} {
		b.Run(fmt.Sprintf("batch=%d", perBatch), func(b *testing.B) { benchWriteFlows(b, perBatch) })
	}
}

func benchWriteFlows(b *testing.B, perBatch int) {
	app := fmt.Sprintf("sinkbench_%d", time.Now().UnixNano())
	s, _ := openApp(b, app)
	ctx := context.Background()
	start := time.Now().UTC().Truncate(time.Hour)
	mk := func(n int) *pb.FlowBatch {
		fb := &pb.FlowBatch{Sensor: "bench"}
		for i := range perBatch {
			f := flow("bench", start.Add(time.Duration(n*perBatch+i)*time.Microsecond), uint32(i), uint32(n))
			// Addresses spread like a capture's (scans, floods): the address
			// indexes take inserts all over, not only at one end.
			h := uint32(n*perBatch+i) * 2654435761
			f.OrigAddr = []byte{10, byte(h >> 24), byte(h >> 16), byte(h >> 8)}
			f.RespAddr = []byte{192, 0, byte(h>>4) & 3, byte(h)}
			f.Proto, f.App = []uint32{6, 17, 1}[i%3], []string{"tls", "dns", "http", ""}[i%4]
			fb.Flows = append(fb.Flows, f)
		}
		return fb
	}
	// One warm-up write opens the connection and creates the partitions.
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{mk(-1)}); err != nil {
		b.Fatal(err)
	}
	b.SetBytes(int64(proto.Size(mk(0))))
	pg0 := backendCPU(b, s, app)
	var goCPU time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		fb := mk(n)
		c0 := processCPU()
		b.StartTimer()
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
		b.StopTimer()
		goCPU += processCPU() - c0
		b.StartTimer()
		if err != nil || res.Inserted != perBatch {
			b.Fatalf("%+v, %v", res, err)
		}
	}
	rows := float64(b.N * perBatch)
	b.ReportMetric(rows/b.Elapsed().Seconds(), "rows/s")
	b.ReportMetric(float64(goCPU.Nanoseconds())/rows, "go-cpu-ns/row")
	if pg0 >= 0 {
		if pg1 := backendCPU(b, s, app); pg1 >= 0 {
			b.ReportMetric(float64((pg1-pg0).Nanoseconds())/rows, "pg-cpu-ns/row")
		}
	}
}

// processCPU is the user + system time of this process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// backendCPU is the CPU time of the PostgreSQL backends whose
// application_name is app, or -1 when it cannot be read (server elsewhere).
func backendCPU(b *testing.B, s *Store, app string) time.Duration {
	rows, err := s.pool.Query(context.Background(), "SELECT pid FROM pg_stat_activity WHERE application_name = $1", app)
	if err != nil {
		b.Fatal(err)
	}
	defer rows.Close()
	var total time.Duration
	for rows.Next() {
		var pid int
		if err := rows.Scan(&pid); err != nil {
			b.Fatal(err)
		}
		raw, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/schedstat")
		if err != nil {
			return -1
		}
		ns, err := strconv.ParseInt(strings.Fields(string(raw))[0], 10, 64)
		if err != nil {
			return -1
		}
		total += time.Duration(ns)
	}
	return total
}
