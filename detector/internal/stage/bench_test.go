package stage

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"runtime/debug"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/qname"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// benchMsg is a FLOWS message for the benchmark: Handle reads its data and
// subject and acks it.
type benchMsg struct {
	jetstream.Msg // nil: any other method panics
	data          []byte
	subject       string
}

func (m *benchMsg) Data() []byte                              { return m.data }
func (m *benchMsg) Subject() string                           { return m.subject }
func (m *benchMsg) Ack() error                                { return nil }
func (m *benchMsg) NakWithDelay(time.Duration) error          { return nil }
func (m *benchMsg) Term() error                               { return nil }
func (m *benchMsg) Metadata() (*jetstream.MsgMetadata, error) { return nil, nil }

func addr4(v uint32) []byte { return []byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)} }

// benchBatches builds n FlowBatches of 256 flows shaped like the enricher's
// output for the bench capture (DESIGN.md; make-bench-pcap): half one-packet
// SYNs from spoofed sources to one victim (hping3 --rand-source), an eighth
// SYN-ACK reflection, a fifth nmap SYN probes from one scanner, and
// conversations (SSH brute force, DNS, HTTPS). Each batch covers step of
// packet time, so windows open, fire and expire as in a replay.
func benchBatches(n int, step time.Duration) [][]byte {
	rng := rand.New(rand.NewPCG(1, 2))
	victim := []byte{192, 168, 56, 10}
	scanner := []byte{192, 168, 56, 66}
	client := []byte{192, 168, 56, 20}
	t := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC).UnixNano()
	port := uint32(0)
	out := make([][]byte, n)
	for i := range out {
		b := &pb.FlowBatch{Sensor: "bench"}
		for j := 0; j < 256; j++ {
			at := t + int64(j)*int64(step)/256
			f := &pb.Flow{Sensor: "bench", StartNs: at, EndNs: at, Final: true, RecordIndex: 0}
			switch {
			case j < 128: // spoofed SYN flood
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 6, addr4(rng.Uint32()), uint32(1024+rng.IntN(60000)), victim, 80
				f.OrigPkts, f.OrigIpBytes, f.OrigTcpFlags = 1, 40, 0x02
			case j < 160: // SYN-ACK reflection
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 6, addr4(rng.Uint32()), 80, victim, uint32(1024+rng.IntN(60000))
				f.OrigPkts, f.OrigIpBytes, f.OrigTcpFlags = 1, 44, 0x12
			case j < 210: // nmap SYN scan
				port = port%1000 + 1
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 6, scanner, 40000, victim, port
				f.OrigPkts, f.OrigIpBytes, f.OrigTcpFlags, f.RespPkts, f.RespIpBytes, f.RespTcpFlags = 1, 44, 0x02, 1, 40, 0x14
				f.EndNs = at + 1e5
			case j < 230: // SSH brute force
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 6, scanner, uint32(30000+j), victim, 22
				f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.RespPkts, f.RespIpBytes, f.RespBytes = 14, 2100, 1400, 12, 3100, 2500
				f.OrigTcpFlags, f.RespTcpFlags, f.EndNs, f.App, f.ConnState = 0x1b, 0x1b, at+2e9, "ssh", "SF"
			case j < 245: // DNS: lookups, DGA-like NXDOMAIN answers, a NULL tunnel
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 17, client, uint32(50000+j), []byte{9, 9, 9, 9}, 53
				f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.RespPkts, f.RespIpBytes, f.RespBytes = 1, 70, 42, 1, 120, 92
				f.EndNs, f.App, f.DnsQtype, f.DnsResponded = at+2e7, "dns", 1, true
				switch j % 3 {
				case 0:
					f.ServerName = []string{"www.wikipedia.org.", "upload.wikimedia.org.", "fonts.googleapis.com."}[i%3]
				case 1:
					f.ServerName, f.DnsRcode = fmt.Sprintf("%x%x.com.", rng.Uint32(), rng.Uint32()), 3
				default:
					f.ServerName, f.DnsQtype = fmt.Sprintf("%x%x%x.t.example.net.", rng.Uint64(), rng.Uint64(), rng.Uint32()), 10
				}
			default: // HTTPS
				f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort = 6, client, uint32(40000+j), []byte{142, 250, 1, 1}, 443
				f.OrigPkts, f.OrigIpBytes, f.OrigBytes, f.RespPkts, f.RespIpBytes, f.RespBytes = 20, 3000, 2000, 30, 40000, 38000
				f.OrigTcpFlags, f.RespTcpFlags, f.EndNs, f.App = 0x1b, 0x1b, at+3e8, "tls"
			}
			f.Id = schema.FlowID("bench", f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort, 0, 0, 0, at, 0)
			b.Flows = append(b.Flows, f)
		}
		data, err := proto.Marshal(b)
		if err != nil {
			panic(err)
		}
		out[i] = data
		t += int64(step)
	}
	return out
}

// BenchmarkHandle is the stage's cost per FLOWS message of 256 flows with
// every rule and both models on: protobuf decode, flow model score, rules
// (dns_tunnel with the query-name model), alert publish (to an in-process
// JetStream, waiting for each PubAck) and ack. The batches cover 150 s of
// packet time (150 ms each); after the last one the stage starts over with
// empty state. flows/core-s is flows per CPU second of the whole process
// (the in-process NATS server included): the per-core throughput.
// alert-msg-ms is the mean wall time of the messages that published an
// alert, from Handle's start to the ack (after the alerts' PubAcks): the
// detector's own share of detection latency.
func BenchmarkHandle(b *testing.B) {
	_, _, js := testkit.JetStream(b)
	tree, err := model.Load("../../models/flow-id3.model")
	if err != nil {
		b.Fatal(err)
	}
	batches := benchBatches(1000, 150*time.Millisecond)
	subj := schema.FlowsSubject("bench", 0, 0)
	qm, err := qname.Load("../../models/qname-id3.model")
	if err != nil {
		b.Fatal(err)
	}
	hm, err := hostmodel.Load("../../models/host-iforest.model")
	if err != nil {
		b.Fatal(err)
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	newStage := func() *Stage {
		return New(Config{Rules: rules.DefaultConfig(), ModelThreshold: 0.95, NameModel: qm, NameModelName: qm.Name, HostModel: hm},
			js, tree, NewMetrics(prometheus.NewRegistry()), log)
	}
	st := newStage()
	ctx := context.Background()
	// As the service does by default (-gc.percent 400, cmd/detector).
	defer debug.SetGCPercent(debug.SetGCPercent(400))
	b.ReportAllocs()
	i := 0
	alertMsgs, alertWall := 0, time.Duration(0)
	cpu0 := cpuTime()
	for b.Loop() {
		if i == len(batches) {
			b.StopTimer()
			st, i = newStage(), 0
			b.StartTimer()
		}
		n0 := alertsPublished(st)
		t0 := time.Now()
		st.Handle(ctx, &benchMsg{data: batches[i], subject: subj})
		if alertsPublished(st) > n0 {
			alertMsgs++
			alertWall += time.Since(t0)
		}
		i++
	}
	cpu := cpuTime() - cpu0
	b.ReportMetric(float64(b.N)*256/b.Elapsed().Seconds(), "flows/s")
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/256, "ns/flow")
	// CPU time of the whole process (GC and the in-process NATS server
	// included, the stage restarts excluded only from the wall time): the
	// figure to trust on a shared machine.
	b.ReportMetric(float64(cpu.Nanoseconds())/float64(b.N)/256, "cpu-ns/flow")
	b.ReportMetric(float64(b.N)*256/cpu.Seconds(), "flows/core-s")
	if alertMsgs > 0 {
		b.ReportMetric(float64(alertWall.Microseconds())/1000/float64(alertMsgs), "alert-msg-ms")
	}
	b.ReportMetric(float64(alertMsgs), "alert-msgs")
}

// alertsPublished is the number of alerts the stage has published.
func alertsPublished(st *Stage) float64 {
	var m dto.Metric
	n := 0.0
	for _, c := range []string{"portscan", "hostsweep", "syn_flood", "udp_flood", "icmp_flood", "amplification", "bruteforce",
		"dns_tunnel", "dga", "beaconing", "anomaly"} {
		if err := st.m.Alerts.WithLabelValues(c).Write(&m); err == nil {
			n += m.GetCounter().GetValue()
		}
	}
	return n
}

// cpuTime is the user + system CPU time of the process.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
