package store

import (
	"context"
	"crypto/sha1"
	"encoding/base64"
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
//
// Addresses are either spread (every flow a new originator, 1024
// responders: a scan or a flood, where talkers_1m and pairs_1m get about
// one new row per flow each) or hosts (1000 originators, 5000 responders:
// an office, where most rollup rows of a minute already exist).
//
// The flows carry a Community ID, SNI, two DNS names, history, countries and
// AS numbers; with flows=scan they are a TCP scan's unanswered SYNs instead
// (a Community ID, history S, conn_state S0, no L7 strings, no GeoIP: the
// optional values migration 00013 stores as NULL), spread addresses.
func BenchmarkWriteFlows(b *testing.B) {
	for _, c := range []struct {
		perBatch int
		hosts    uint32 // 0: spread
		scan     bool
	}{{5000, 0, false}, {5000, 1000, false}, {5000, 0, true}, {20000, 0, false}} {
		name := fmt.Sprintf("batch=%d/addrs=spread", c.perBatch)
		if c.hosts > 0 {
			name = fmt.Sprintf("batch=%d/addrs=hosts%d", c.perBatch, c.hosts)
		}
		if c.scan {
			name += "/flows=scan"
		}
		b.Run(name, func(b *testing.B) { benchWriteFlows(b, c.perBatch, c.hosts, c.scan) })
	}
}

func benchWriteFlows(b *testing.B, perBatch int, hosts uint32, scan bool) {
	app := fmt.Sprintf("sinkbench_%d", time.Now().UnixNano())
	s, _ := openApp(b, app)
	ctx := context.Background()
	start := time.Now().UTC().Truncate(time.Hour)
	mk := func(n int) *pb.FlowBatch { return benchBatch(n, perBatch, hosts, scan, start) }
	// One warm-up write opens the connection and creates the partitions;
	// its rollups are added before the clock starts.
	if _, err := s.WriteFlows(ctx, []*pb.FlowBatch{mk(-1)}); err != nil {
		b.Fatal(err)
	}
	drainRollups(b, s)
	// The rollup job runs after the writes here, not beside them, so that
	// the CPU of each is measured apart: wall time is the sum of both (on an
	// idle 2-core machine they overlap, one backend each).
	s.rollupPaused.Store(true)
	b.SetBytes(int64(proto.Size(mk(0))))
	pg0 := backendCPU(b, s, app)
	var goCPU, writeWall time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		fb := mk(n)
		c0, t0 := processCPU(), time.Now()
		b.StartTimer()
		res, err := s.WriteFlows(ctx, []*pb.FlowBatch{fb})
		b.StopTimer()
		goCPU += processCPU() - c0
		writeWall += time.Since(t0)
		b.StartTimer()
		if err != nil || res.Inserted != perBatch {
			b.Fatalf("%+v, %v", res, err)
		}
	}
	// The index maintenance the sink's rollup loop runs every 10 s belongs
	// to the writes: the BRIN ranges filled are summarised and the GIN's
	// pending list merged into the index (what a GIN insert defers), on one
	// of the pool's backends (counted below). Autovacuum may merge part of
	// the list first, uncounted.
	tm := time.Now()
	if err := s.SummarizeFlowIndexes(ctx); err != nil {
		b.Fatal(err)
	}
	writeWall += time.Since(tm)
	// Then every batch is added to the rollups (b.Loop's timer has stopped:
	// rows/s is computed from the two walls).
	pgw := backendCPU(b, s, app)
	c0, t0 := processCPU(), time.Now()
	drainRollups(b, s)
	rollupWall := time.Since(t0)
	goCPU += processCPU() - c0
	rows := float64(b.N * perBatch)
	b.ReportMetric(rows/(writeWall+rollupWall).Seconds(), "rows/s")
	b.ReportMetric(rows/writeWall.Seconds(), "write-rows/s")
	b.ReportMetric(rows/rollupWall.Seconds(), "rollup-rows/s")
	if pg0 >= 0 && pgw >= 0 {
		b.ReportMetric(float64((pgw-pg0).Nanoseconds())/rows, "pg-write-cpu-ns/row")
		if pg1 := backendCPU(b, s, app); pg1 >= 0 {
			b.ReportMetric(float64((pg1-pgw).Nanoseconds())/rows, "pg-rollup-cpu-ns/row")
		}
	}
	// Disk per stored flow, indexes included: flows, and the five rollups
	// of every tier (1m, 1h, 1d).
	var flowBytes, rollupBytes, stored float64
	if err := s.pool.QueryRow(ctx, `SELECT
		(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent = 'flows'::regclass),
		(SELECT sum(pg_total_relation_size(c.oid)) FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
			WHERE i.inhparent IN (SELECT oid FROM pg_class WHERE relnamespace = current_schema()::regnamespace
				AND relname ~ '^(flows|talkers|pairs|ports|countries)_1[mhd]$')),
		(SELECT count(*) FROM flows)`).Scan(&flowBytes, &rollupBytes, &stored); err != nil {
		b.Fatal(err)
	}
	b.ReportMetric(flowBytes/stored, "flow-disk-B/row")
	// Where the bytes go: the heap and each index of flows' partitions.
	parts, err := s.pool.Query(ctx, `SELECT coalesce(x.indexrelid::regclass::text, 'heap (+toast)'),
		sum(CASE WHEN x.indexrelid IS NULL THEN pg_table_size(c.oid) ELSE pg_relation_size(x.indexrelid) END)
		FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
		LEFT JOIN LATERAL (SELECT NULL::oid AS indexrelid UNION ALL SELECT indexrelid FROM pg_index WHERE indrelid = c.oid) x ON true
		WHERE i.inhparent = 'flows'::regclass GROUP BY 1 ORDER BY 2 DESC`)
	if err == nil {
		for parts.Next() {
			var name string
			var size float64
			if parts.Scan(&name, &size) == nil {
				b.Logf("flows %-40s %6.1f B/row", name, size/stored)
			}
		}
		parts.Close()
	}
	var tuple float64
	if err := s.pool.QueryRow(ctx, "SELECT avg(pg_column_size(f.*)) FROM flows f").Scan(&tuple); err == nil {
		b.Logf("flows row (pg_column_size, header included) %6.1f B", tuple)
	}
	b.ReportMetric(rollupBytes/stored, "rollup-disk-B/row")
	b.ReportMetric(float64(goCPU.Nanoseconds())/rows, "go-cpu-ns/row")
	if pg0 >= 0 {
		if pg1 := backendCPU(b, s, app); pg1 >= 0 {
			b.ReportMetric(float64((pg1-pg0).Nanoseconds())/rows, "pg-cpu-ns/row")
		}
	}
}

// benchBatch is the n-th batch of perBatch new flows of the benchmarks
// starting at start (one microsecond apart): spread addresses (hosts 0) or
// hosts originators; with scan, a TCP scan's unanswered SYNs.
func benchBatch(n, perBatch int, hosts uint32, scan bool, start time.Time) *pb.FlowBatch {
	fb := &pb.FlowBatch{Sensor: "bench"}
	for i := range perBatch {
		f := flow("bench", start.Add(time.Duration(n*perBatch+i)*time.Microsecond), uint32(i), uint32(n))
		// Addresses spread like a capture's (scans, floods): the address
		// indexes take inserts all over, not only at one end.
		h := uint32(n*perBatch+i) * 2654435761
		f.OrigAddr = []byte{10, byte(h >> 24), byte(h >> 16), byte(h >> 8)}
		f.RespAddr = []byte{192, 0, byte(h>>4) & 3, byte(h)}
		if hosts > 0 {
			o, r := h%hosts, (h>>7)%(5*hosts)
			f.OrigAddr = []byte{10, 1, byte(o >> 8), byte(o)}
			f.RespAddr = []byte{198, 51, byte(r >> 8), byte(r)}
		}
		f.Proto, f.App = []uint32{6, 17, 1}[i%3], []string{"tls", "dns", "http", ""}[i%4]
		f.RespPort = []uint32{443, 53, 80, 22, 8080, 123}[h%6]
		// A Community ID v1 is "1:" and the base64 of a SHA-1: 30 characters.
		sum := sha1.Sum([]byte(f.Id))
		f.CommunityId = "1:" + base64.StdEncoding.EncodeToString(sum[:])
		f.OrigCountry, f.RespCountry = countries[h%uint32(len(countries))], countries[(h>>8)%uint32(len(countries))]
		f.OrigAsn, f.RespAsn = h%5000, (h>>4)%5000
		if scan {
			f.Proto, f.App, f.ServerName, f.OrigName, f.RespName = 6, "", "", "", ""
			f.ConnState, f.History, f.EndReason, f.RecordIndex = "S0", "S", pb.EndReason_END_IDLE, 0
			f.OrigTcpFlags, f.RespTcpFlags = 0x02, 0
			f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.RespPkts, f.RespIpBytes, f.RespBytes = 1, 44, 0, 0, 0, 0
			f.OrigCountry, f.RespCountry, f.OrigAsn, f.RespAsn = "", "", 0, 0
		}
		fb.Flows = append(fb.Flows, f)
	}
	return fb
}

// drainRollups runs the rollup job until no batch is pending.
func drainRollups(b *testing.B, s *Store) {
	ctx := context.Background()
	for {
		n, err := s.Rollup(ctx)
		if err != nil {
			b.Fatal(err)
		}
		var pending int
		if err := s.pool.QueryRow(ctx, "SELECT count(*) FROM rollup_pending").Scan(&pending); err != nil {
			b.Fatal(err)
		}
		if pending == 0 {
			return
		}
		if n == 0 {
			time.Sleep(time.Millisecond) // the loop's run holds the lock
		}
	}
}

// countries are GeoIP country codes for the benchmark's flows.
var countries = []string{"", "SE", "US", "DE", "CN", "RU", "BR", "IN", "FR", "GB", "NL", "JP"}

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
