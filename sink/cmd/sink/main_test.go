package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/storetest"
	"netwatch/testkit"
)

func TestConfig(t *testing.T) {
	env := func(m map[string]string) func(string) string { return func(k string) string { return m[k] } }
	c, err := parseConfig(nil, env(nil), io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.DatabaseURL != DefaultDatabaseURL || c.BatchSize != 5000 || c.BatchFlush != 250*time.Millisecond || c.BatchWriters != 2 ||
		c.RetentionFlows != 30*24*time.Hour || c.RetentionAlerts != 90*24*time.Hour ||
		c.RetentionMetrics != 7*24*time.Hour || c.HTTPAddr != "127.0.0.1:9104" {
		t.Fatalf("defaults: %+v", c)
	}
	c, err = parseConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://d", "NETWATCH_RETENTION_FLOWS": "2d12h"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://d" || c.RetentionFlows != 60*time.Hour {
		t.Fatalf("DATABASE_URL fallback / env: %+v, %v", c, err)
	}
	c, err = parseConfig(nil, env(map[string]string{"DATABASE_URL": "postgres://d", "NETWATCH_DATABASE_URL": "postgres://n"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://n" {
		t.Fatalf("NETWATCH_DATABASE_URL wins: %+v, %v", c, err)
	}
	c, err = parseConfig([]string{"-database.url", "postgres://f"}, env(map[string]string{"NETWATCH_DATABASE_URL": "postgres://n"}), io.Discard)
	if err != nil || c.DatabaseURL != "postgres://f" {
		t.Fatalf("flag wins: %+v, %v", c, err)
	}
	for _, bad := range [][]string{{"-batch.size", "0"}, {"-batch.writers", "0"}, {"-retention.alerts", "2h"}, {"-retention.metrics", "x"}, {"-log.format", "xml"}} {
		if _, err := parseConfig(bad, env(nil), io.Discard); err == nil {
			t.Errorf("%v accepted", bad)
		}
	}
}

// buildSink builds the binary into a temporary directory.
func buildSink(t *testing.T) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "sink")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	return bin
}

func TestMigrateOnlyAndCheckConfig(t *testing.T) {
	dsn := testkit.Postgres(t)
	bin := buildSink(t)
	run := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "NETWATCH_DATABASE_URL="+dsn, "NETWATCH_LOG_LEVEL=error")
		var stdout, stderr bytes.Buffer
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		if err := cmd.Run(); err != nil {
			t.Fatalf("sink %v: %v\n%s", args, err, stderr.String())
		}
		return stdout.String()
	}
	run("-check-config")
	if err := exec.Command(bin, "-check-config", "-batch.size", "0").Run(); err == nil {
		t.Error("-check-config accepted -batch.size 0")
	}
	out := run("migrate", "-http.addr", "")
	if out != "schema version 14 (applied 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14)\n" {
		t.Errorf("sink migrate printed %q", out)
	}
	if out := run("migrate"); out != "schema version 14 (up to date)\n" {
		t.Errorf("sink migrate again printed %q", out)
	}
	run("-migrate-only", "-http.addr", "") // the flag form, idempotent
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	var v int64
	if err := pool.QueryRow(ctx, "SELECT max(version_id) FROM goose_db_version").Scan(&v); err != nil || v != 14 {
		t.Fatalf("goose version %d, %v; want 14", v, err)
	}
	// A schema migrated by a newer sink: both the command and the service
	// refuse it at once with a clear error (exit 1), without retrying.
	if _, err := pool.Exec(ctx, "INSERT INTO goose_db_version (version_id, is_applied) VALUES (15, true)"); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{{"migrate"}, {"-http.addr", "", "-nats.url", "nats://127.0.0.1:1"}} {
		cmd := exec.Command(bin, args...)
		cmd.Env = append(os.Environ(), "NETWATCH_DATABASE_URL="+dsn)
		t0 := time.Now()
		b, err := cmd.CombinedOutput()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 1 || time.Since(t0) > 20*time.Second ||
			!strings.Contains(string(b), "database schema version 15 is newer than this sink knows (14)") {
			t.Errorf("sink %v with schema 15: %v after %v\n%s", args, err, time.Since(t0), b)
		}
	}
	if err := exec.Command(bin, "migrate", "extra").Run(); err == nil {
		t.Error("sink migrate extra: no error")
	}
}

// sinkProc is the sink binary running against the test servers.
type sinkProc struct {
	cmd *exec.Cmd
	out *bytes.Buffer
}

func startSink(t *testing.T, bin string, args ...string) *sinkProc {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(bin, args...)
	w := &syncWriter{w: &out}
	cmd.Stdout, cmd.Stderr = w, w
	cmd.Env = append(os.Environ(), "NETWATCH_DATABASE_URL=", "DATABASE_URL=")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p := &sinkProc{cmd: cmd, out: &out}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		if t.Failed() {
			t.Logf("sink output:\n%s", tail(out.String(), 4000))
		}
	})
	return p
}

type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(b []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(b)
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

func freeAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// testFlow i of the acceptance set: distinct ids, packet times spread over
// four days of 2010 (so several partitions), orig_ip_bytes = 60 + i.
func testFlow(i int) *pb.Flow {
	start := time.Date(2010, 6, 1, 0, 0, 0, 0, time.UTC).Add(time.Duration(i) * 5 * time.Second)
	oa, ra := []byte{10, byte(i >> 16), byte(i >> 8), byte(i)}, []byte{198, 51, 100, byte(i % 7)}
	return &pb.Flow{
		Id:     schema.FlowID("kill", 6, oa, 40000, ra, 80, 0, 0, 0, start.UnixNano(), 0),
		Sensor: "kill", Proto: 6, OrigAddr: oa, OrigPort: 40000, RespAddr: ra, RespPort: 80,
		StartNs: start.UnixNano(), EndNs: start.Add(time.Second).UnixNano(), FlowStartNs: start.UnixNano(),
		OrigPkts: 2, OrigIpBytes: uint64(60 + i), OrigBytes: 10, RespPkts: 3, RespIpBytes: 500, RespBytes: 400,
		Final: true, EndReason: pb.EndReason_END_FIN,
	}
}

// TestSIGKILLMidRun is the acceptance test: killing the sink with SIGKILL in
// the middle and restarting it gives the same rows as an uninterrupted run,
// nothing lost, nothing twice.
func TestSIGKILLMidRun(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and waits out the consumer's 1 min AckWait")
	}
	const (
		messages = 500
		perMsg   = 100
		total    = messages * perMsg
	)
	natsURL, _, js := testkit.JetStream(t)
	dsn := testkit.Postgres(t)
	bin := buildSink(t)
	ctx := context.Background()
	pool, err := pgxpool.New(ctx, dsn)
	if err != nil {
		t.Fatal(err)
	}
	defer pool.Close()
	count := func() int {
		var n int
		if err := pool.QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&n); err != nil {
			return 0 // not migrated yet
		}
		return n
	}

	publish := func(from, to int) error {
		for m := from; m < to; m++ {
			fb := &pb.FlowBatch{Sensor: "kill"}
			var ids []string
			for i := m * perMsg; i < (m+1)*perMsg; i++ {
				f := testFlow(i)
				fb.Flows = append(fb.Flows, f)
				ids = append(ids, f.Id)
			}
			b, _ := proto.Marshal(fb)
			msg := &nats.Msg{Subject: schema.FlowsSubject("kill", uint32(m%64), 0), Data: b, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, schema.BatchID(ids))
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				return fmt.Errorf("publish %d: %w", m, err)
			}
		}
		return nil
	}
	// A first part before the sink starts, the rest while it runs, so the
	// kill lands with rows committed, batches in flight and messages unread.
	if err := publish(0, 100); err != nil {
		t.Fatal(err)
	}
	pubErr := make(chan error, 1)
	args := []string{"-nats.url", natsURL, "-database.url", dsn, "-batch.size", "1000", "-batch.flush", "20ms",
		"-log.format", "text"}
	first := startSink(t, bin, append(args, "-http.addr", "")...)
	go func() { pubErr <- publish(100, messages) }()

	deadline := time.Now().Add(60 * time.Second)
	for count() < 5000 {
		if time.Now().After(deadline) {
			t.Fatalf("no rows committed within 60 s (%d)", count())
		}
		time.Sleep(2 * time.Millisecond) // tight poll: kill as soon as a few batches are in
	}
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = first.cmd.Wait()
	atKill := count()
	if atKill <= 0 || atKill >= total {
		t.Fatalf("%d rows at the kill, want some but not all of %d", atKill, total)
	}
	t.Logf("killed with %d of %d rows committed", atKill, total)

	httpAddr := freeAddr(t)
	second := startSink(t, bin, append(args, "-http.addr", httpAddr)...)
	if err := <-pubErr; err != nil {
		t.Fatal(err)
	}
	cons, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
	if err != nil {
		t.Fatal(err)
	}
	// The killed sink's unacked messages come back after the AckWait (1 min).
	testkit.Eventually(t, 3*time.Minute, func() bool {
		ci, err := cons.Info(ctx)
		return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0 && ci.Delivered.Stream == messages
	}, "consumer still has pending messages")

	rows, err := pool.Query(ctx, "SELECT replace(id::text, '-', '') FROM flows")
	if err != nil {
		t.Fatal(err)
	}
	seen := make(map[string]int, total)
	for rows.Next() {
		var id string
		if err := rows.Scan(&id); err != nil {
			t.Fatal(err)
		}
		seen[id]++
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	if len(seen) != total {
		t.Errorf("%d distinct ids, want %d", len(seen), total)
	}
	for i := range total {
		if id := testFlow(i).Id; seen[id] != 1 {
			t.Fatalf("flow %d (%s) stored %d times, want once", i, id, seen[id])
		}
	}
	var n, pkts, ipBytes, respBytes int64
	if err := pool.QueryRow(ctx, `SELECT count(*), sum(orig_pkts + resp_pkts), sum(orig_ip_bytes), sum(resp_ip_bytes)
		FROM flows`).Scan(&n, &pkts, &ipBytes, &respBytes); err != nil {
		t.Fatal(err)
	}
	if n != total || pkts != 5*total || ipBytes != 60*total+int64(total)*(total-1)/2 || respBytes != 500*total {
		t.Fatalf("count %d, pkts %d, orig_ip_bytes %d, resp_ip_bytes %d", n, pkts, ipBytes, respBytes)
	}

	// The per-minute rollups were added to exactly once per stored record
	// (once the rollup job has taken every batch the two sinks committed).
	storetest.WaitRollups(t, pool, "after SIGKILL and restart")
	var recs, rpkts, ripBytes int64
	if err := pool.QueryRow(ctx, `SELECT sum(records), sum(orig_pkts + resp_pkts), sum(orig_ip_bytes)
		FROM flows_1m`).Scan(&recs, &rpkts, &ripBytes); err != nil {
		t.Fatal(err)
	}
	if recs != total || rpkts != pkts || ripBytes != ipBytes {
		t.Fatalf("flows_1m: records %d, pkts %d, orig_ip_bytes %d; want %d, %d, %d", recs, rpkts, ripBytes, total, pkts, ipBytes)
	}
	storetest.CheckRollups(t, pool, "after SIGKILL and restart")

	// The restarted sink is ready and shuts down cleanly on SIGTERM.
	resp, err := http.Get("http://" + httpAddr + "/readyz")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("/readyz %d", resp.StatusCode)
	}
	if err := second.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := second.cmd.Wait(); err != nil {
		t.Errorf("exit after SIGTERM: %v", err)
	}
}

func TestValidateRejectsUnparseableDatabaseURL(t *testing.T) {
	_, err := parseConfig([]string{"-database.url", "notaurl"}, func(string) string { return "" }, io.Discard)
	if err == nil {
		t.Fatal("-database.url notaurl: no error")
	}
}
