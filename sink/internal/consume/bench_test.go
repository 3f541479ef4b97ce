package consume

import (
	"context"
	"fmt"
	"log/slog"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/sink/internal/store"
	"netwatch/testkit"
)

// BenchmarkFlowsLoop is the whole intake of FLOWS: 100,000 flows in messages
// of 256 (the enricher's -publish.max-flows) already in the stream, pulled,
// decoded, written and acked by one Loop with the default batch size, for 1
// and 2 writers, until every flow is stored and added to the rollups (the
// store's rollup job runs beside the writers). It reports rows/s and the CPU
// of this process per row (the sink plus the in-process NATS server
// delivering to it).
func BenchmarkFlowsLoop(b *testing.B) {
	for _, writers := range []int{1, 2} {
		b.Run(fmt.Sprintf("writers=%d", writers), func(b *testing.B) { benchFlowsLoop(b, writers) })
	}
}

func benchFlowsLoop(b *testing.B, writers int) {
	const total, perMsg = 100_000, 256
	log := slog.New(slog.DiscardHandler)
	ctx := context.Background()
	var elapsed, cpu time.Duration
	b.ReportAllocs()
	for n := 0; b.Loop(); n++ {
		b.StopTimer()
		_, _, js := testkit.JetStream(b)
		dsn := testkit.Postgres(b)
		if _, err := store.Migrate(ctx, dsn, log); err != nil {
			b.Fatal(err)
		}
		st, err := store.Open(ctx, dsn, log, nil)
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now().UTC().Truncate(time.Hour)
		for m := 0; m*perMsg < total; m++ {
			fb := &pb.FlowBatch{Sensor: "bench"}
			for i := m * perMsg; i < min(total, (m+1)*perMsg); i++ {
				h := uint32(i) * 2654435761
				oa, ra := []byte{10, byte(h >> 24), byte(h >> 16), byte(h >> 8)}, []byte{192, 0, byte(h>>4) & 3, byte(h)}
				t := start.Add(time.Duration(i) * time.Millisecond)
				fb.Flows = append(fb.Flows, &pb.Flow{
					Id:     schema.FlowID("bench", 6, oa, uint32(i), ra, 443, 0, 0, 0, t.UnixNano(), 0),
					Sensor: "bench", CommunityId: "1:abc=", Proto: 6, OrigAddr: oa, OrigPort: uint32(i), RespAddr: ra, RespPort: 443,
					StartNs: t.UnixNano(), EndNs: t.Add(time.Second).UnixNano(), FlowStartNs: t.UnixNano(),
					OrigPkts: 3, OrigIpBytes: 180, OrigBytes: 60, RespPkts: 2, RespIpBytes: 1540, RespBytes: 1460,
					Final: true, EndReason: pb.EndReason_END_FIN, App: "tls", ConnState: "SF", History: "ShADadFf",
					ServerName: "example.org", Direction: "outbound",
				})
			}
			data, _ := proto.Marshal(fb)
			msg := &nats.Msg{Subject: schema.FlowsSubject("bench", uint32(m%64), 0), Data: data, Header: nats.Header{}}
			msg.Header.Set(jetstream.MsgIDHeader, fmt.Sprintf("bench-%d", m))
			if _, err := js.PublishMsg(ctx, msg); err != nil {
				b.Fatal(err)
			}
		}
		c, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
		if err != nil {
			b.Fatal(err)
		}
		m := NewMetrics(nil)
		runCtx, cancel := context.WithCancel(ctx)
		done := make(chan error, 1)
		t0, c0 := time.Now(), processCPU()
		b.StartTimer()
		go func() { done <- Flows(st, c, Config{Writers: writers}, m, log).Run(runCtx) }()
		testkit.Eventually(b, 5*time.Minute, func() bool {
			ci, err := c.Info(ctx)
			return err == nil && ci.NumPending == 0 && ci.NumAckPending == 0
		}, "flows still pending")
		// And in the rollups: the store's rollup job ran beside the writes.
		testkit.Eventually(b, 5*time.Minute, func() bool {
			var pending int
			err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM rollup_pending").Scan(&pending)
			return err == nil && pending == 0
		}, "batches still pending for the rollups")
		b.StopTimer()
		elapsed += time.Since(t0)
		cpu += processCPU() - c0
		cancel()
		if err := <-done; err != nil {
			b.Fatal(err)
		}
		var stored int
		if err := st.Pool().QueryRow(ctx, "SELECT count(*) FROM flows").Scan(&stored); err != nil || stored != total {
			b.Fatalf("%d flows stored, %v; want %d", stored, err, total)
		}
		st.Close()
		b.StartTimer()
	}
	rows := float64(b.N * total)
	b.ReportMetric(rows/elapsed.Seconds(), "rows/s")
	b.ReportMetric(float64(cpu.Nanoseconds())/rows, "go-cpu-ns/row")
}

// processCPU is the user + system time of this process.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
