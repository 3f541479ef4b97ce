package pipeline

import (
	"context"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestPublishARP runs the agent on captures with ARP (Ethernet and Linux
// SLL) against an in-process JetStream: PACKETS holds one ArpSummary per
// ARP frame tshark shows, with tshark's op and sender/target addresses, in
// the bucket of its sender IP, and the final METRICS CaptureStats.arp and
// netwatch_agent_arp_packets_total equal tshark's count.
func TestPublishARP(t *testing.T) {
	for _, name := range []string{"attack-arp-poisoning-mitm.pcapng", "linux-sll-arp.pcap"} {
		t.Run(name, func(t *testing.T) {
			file := filepath.Join(testkit.Pcaps(t), name)
			out, err := exec.Command(testkit.Tool(t, "tshark"), "-r", file, "-Y", "arp", "-T", "fields", "-E", "separator=/t",
				"-e", "arp.opcode", "-e", "arp.src.hw_mac", "-e", "arp.src.proto_ipv4", "-e", "arp.dst.hw_mac",
				"-e", "arp.dst.proto_ipv4", "-e", "eth.src").Output()
			if err != nil {
				t.Fatal(err)
			}
			want := strings.Split(strings.TrimRight(string(out), "\n"), "\n")

			_, nc, _ := testkit.JetStream(t)
			js, err := jetstream.New(nc)
			if err != nil {
				t.Fatal(err)
			}
			reg := prometheus.NewRegistry()
			cfg := Config{PCAP: file, Sensor: "arp-sensor", BatchSize: 64, BatchFlush: 200 * time.Millisecond,
				MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144}
			a := New(cfg, js, reg, slog.New(slog.DiscardHandler))
			ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
			defer cancel()
			if err := a.Run(ctx); err != nil {
				t.Fatal(err)
			}

			var got []string
			var lastArp uint64
			for _, stream := range []string{schema.StreamPackets, schema.StreamMetrics} {
				st, err := js.Stream(ctx, stream)
				if err != nil {
					t.Fatal(err)
				}
				info, _ := st.Info(ctx)
				c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
				if err != nil {
					t.Fatal(err)
				}
				for i := uint64(0); i < info.State.Msgs; i++ {
					m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
					if err != nil {
						t.Fatal(err)
					}
					if stream == schema.StreamMetrics {
						var mm pb.Metrics
						if err := proto.Unmarshal(m.Data(), &mm); err != nil {
							t.Fatal(err)
						}
						lastArp = mm.Captures[0].Arp
						continue
					}
					var b pb.PacketBatch
					if err := proto.Unmarshal(m.Data(), &b); err != nil {
						t.Fatal(err)
					}
					for _, s := range b.Arp {
						if bk := schema.AddrBucket(s.SenderIp); bk != b.Bucket {
							t.Errorf("ARP from %v in bucket %d, want %d", net.IP(s.SenderIp), b.Bucket, bk)
						}
						if s.Gratuitous != slices.Equal(s.SenderIp, s.TargetIp) {
							t.Errorf("gratuitous %v for %v -> %v", s.Gratuitous, net.IP(s.SenderIp), net.IP(s.TargetIp))
						}
						eth := ""
						if len(s.EthSrc) > 0 {
							eth = net.HardwareAddr(s.EthSrc).String()
						}
						got = append(got, strings.Join([]string{strconv.FormatUint(uint64(s.Op), 10), net.HardwareAddr(s.SenderMac).String(),
							net.IP(s.SenderIp).String(), net.HardwareAddr(s.TargetMac).String(), net.IP(s.TargetIp).String(), eth}, "\t"))
					}
				}
			}
			slices.Sort(got)
			slices.Sort(want)
			if !slices.Equal(got, want) {
				t.Errorf("PACKETS ARP summaries\n%s\ntshark\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
			}
			if lastArp != uint64(len(want)) || a.Stats.ARP.Load() != uint64(len(want)) {
				t.Errorf("CaptureStats.arp %d, Stats.ARP %d, tshark %d", lastArp, a.Stats.ARP.Load(), len(want))
			}
			if v := metricValue(t, reg, "netwatch_agent_arp_packets_total"); v != float64(len(want)) {
				t.Errorf("netwatch_agent_arp_packets_total %v, tshark %d", v, len(want))
			}
		})
	}
}

// metricValue is the value of a registered counter.
func metricValue(t *testing.T, reg *prometheus.Registry, name string) float64 {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == name {
			return mf.GetMetric()[0].GetCounter().GetValue()
		}
	}
	t.Fatalf("no metric %s", name)
	return 0
}
