package pipeline

import (
	"context"
	"errors"
	"log/slog"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/capture"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

type streamed struct {
	packets, ipBytes uint64
	markers          map[uint32]bool
	batches          int
	metrics          int
}

// readBack reads every PACKETS and METRICS message of sensor.
func readBack(t *testing.T, js jetstream.JetStream, sensor, boot string) streamed {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	s := streamed{markers: map[uint32]bool{}}
	for _, stream := range []string{schema.StreamPackets, schema.StreamMetrics} {
		st, err := js.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(ctx)
		if err != nil {
			t.Fatal(err)
		}
		n := info.State.Msgs
		c, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatal(err)
		}
		for i := uint64(0); i < n; i++ {
			m, err := c.Next(jetstream.FetchMaxWait(5 * time.Second))
			if err != nil {
				t.Fatalf("%s message %d of %d: %v", stream, i+1, n, err)
			}
			id := m.Headers().Get(jetstream.MsgIDHeader)
			if stream == schema.StreamMetrics {
				var mm pb.Metrics
				if err := proto.Unmarshal(m.Data(), &mm); err != nil {
					t.Fatal(err)
				}
				if !strings.HasPrefix(id, sensor+"."+boot+".metrics.") || len(mm.Captures) != 1 {
					t.Fatalf("metrics message id %q, %d captures", id, len(mm.Captures))
				}
				s.metrics++
				continue
			}
			var b pb.PacketBatch
			if err := proto.Unmarshal(m.Data(), &b); err != nil {
				t.Fatal(err)
			}
			if want := schema.PacketBatchID(sensor, boot, b.Seq); id != want {
				t.Fatalf("Nats-Msg-Id %q, want %q", id, want)
			}
			if want := schema.PacketsSubject(sensor, b.Bucket); m.Subject() != want {
				t.Fatalf("subject %q, want %q", m.Subject(), want)
			}
			if b.EndOfInput {
				if len(b.Packets) != 0 {
					t.Fatalf("end-of-input marker with %d packets", len(b.Packets))
				}
				s.markers[b.Bucket] = true
				continue
			}
			s.batches++
			for _, p := range b.Packets {
				if bk := schema.PacketBucket(p.SrcAddr, p.SrcPort, p.DstAddr, p.DstPort, p.Proto, p.Vlan); bk != b.Bucket {
					t.Fatalf("packet in bucket %d, want %d", b.Bucket, bk)
				}
				s.packets++
				s.ipBytes += uint64(p.IpBytes)
			}
		}
	}
	return s
}

func runAgent(t *testing.T, file string) (streamed, *Agent, error) {
	t.Helper()
	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(10*time.Second), jetstream.WithPublishAsyncMaxPending(64))
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{PCAP: file, Sensor: "test-sensor", BatchSize: 64, BatchFlush: 200 * time.Millisecond,
		MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144}
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	runErr := a.Run(ctx)
	return readBack(t, js, cfg.Sensor, a.Boot), a, runErr
}

func tsharkTotals(t *testing.T, file string) (pkts, bytes uint64) {
	tshark := testkit.Tool(t, "tshark")
	for _, v := range theirs(t, tshark, file, tcpdumpFacts(t, file)) {
		pkts += v.pkts
		bytes += v.bytes
	}
	return
}

// TestPublish runs the agent on real captures against an in-process
// JetStream and reads PACKETS back: the packet and IP byte totals are
// tshark's, every bucket got an end-of-input marker, and ids are set.
func TestPublish(t *testing.T) {
	for _, name := range []string{"eth-ipv4-dns-http-browsing-wikipedia.pcap", "ipv4-fragments-tcp-5-frags.pcap",
		"attack-portscan-nmap-syn.pcapng", "lab/lab-nmap-udp-scan.pcap"} {
		t.Run(filepath.Base(name), func(t *testing.T) {
			file := filepath.Join(testkit.Pcaps(t), name)
			wantPkts, wantBytes := tsharkTotals(t, file)
			got, a, err := runAgent(t, file)
			if err != nil {
				t.Fatalf("run: %v", err)
			}
			if got.packets != wantPkts || got.ipBytes != wantBytes {
				t.Errorf("stream holds %d packets / %d IP bytes, tshark %d / %d", got.packets, got.ipBytes, wantPkts, wantBytes)
			}
			if len(got.markers) != schema.Buckets {
				t.Errorf("%d end-of-input markers, want %d", len(got.markers), schema.Buckets)
			}
			if got.metrics < 1 {
				t.Errorf("no METRICS message")
			}
			if a.Stats.IPPackets.Load() != wantPkts {
				t.Errorf("ip_packets %d, want %d", a.Stats.IPPackets.Load(), wantPkts)
			}
		})
	}
}

// TestTruncatedFile: a capture cut in the middle of record 93 (capinfos
// counts 92 whole records; tcpdump and tshark report it cut short) gives a
// ReadError naming that record and its offset (24-byte file header plus the
// 92 records before it, 19932 bytes, walked by hand), after publishing the
// 92 records' IP packets and the end-of-input markers.
func TestTruncatedFile(t *testing.T) {
	full := filepath.Join(testkit.Pcaps(t), "eth-ipv4-dns-http-browsing-wikipedia.pcap")
	tshark := testkit.Tool(t, "tshark")
	out, err := exec.Command(tshark, "-r", full, "-Y", "(ip or ipv6) and frame.number <= 92", "-T", "fields", "-e", "frame.number").Output()
	if err != nil {
		t.Fatal(err)
	}
	wantPkts := uint64(strings.Count(string(out), "\n"))
	got, _, err := runAgent(t, "../../testdata/truncated-mid-record.pcap")
	var re *capture.ReadError
	if !errors.As(err, &re) || re.Packet != 93 || re.Offset != 19932 {
		t.Fatalf("error %v, want a ReadError at packet 93, offset 19932", err)
	}
	if !strings.Contains(err.Error(), "packet 93 at byte offset 19932") {
		t.Errorf("error text %q does not name the packet and offset", err)
	}
	if got.packets != wantPkts {
		t.Errorf("published %d packets, want %d (tshark, first 92 frames)", got.packets, wantPkts)
	}
	if len(got.markers) != schema.Buckets {
		t.Errorf("%d end-of-input markers, want %d", len(got.markers), schema.Buckets)
	}
}

// TestCorruptRecordLength: record 10 (at offset 1866, after nine records
// walked by hand) claims 2147483647 captured bytes; tshark calls the file
// damaged.
func TestCorruptRecordLength(t *testing.T) {
	r, err := Summarize("../../testdata/corrupt-record-length.pcap", nil)
	var re *capture.ReadError
	if !errors.As(err, &re) || re.Packet != 10 || re.Offset != 1866 {
		t.Fatalf("error %v, want a ReadError at packet 10, offset 1866", err)
	}
	if r.Error == "" || r.ErrorPacket != 10 || r.ErrorOffset != 1866 || r.Packets != 9 {
		t.Errorf("report error %q packet %d offset %d packets %d", r.Error, r.ErrorPacket, r.ErrorOffset, r.Packets)
	}
}

// TestSummaryNetwork checks -summary's network split against capinfos and
// tshark on a file with ARP and IPv4.
func TestSummaryNetwork(t *testing.T) {
	file := filepath.Join(testkit.Pcaps(t), "attack-recon-nmap-arp-sweep-and-version-probe.pcap")
	tshark := testkit.Tool(t, "tshark")
	count := func(filter string) uint64 {
		out, err := exec.Command(tshark, "-r", file, "-Y", filter, "-T", "fields", "-e", "frame.number").Output()
		if err != nil {
			t.Fatal(err)
		}
		return uint64(strings.Count(string(out), "\n"))
	}
	r, err := Summarize(file, nil)
	if err != nil {
		t.Fatal(err)
	}
	if r.Packets != 547 { // capinfos -c (MANIFEST.md)
		t.Errorf("packets %d, want 547", r.Packets)
	}
	if w := count("arp"); r.Network["arp"].Packets != w {
		t.Errorf("arp %d, tshark %d", r.Network["arp"].Packets, w)
	}
	if w := count("ip"); r.Network["ipv4"].Packets != w {
		t.Errorf("ipv4 %d, tshark %d", r.Network["ipv4"].Packets, w)
	}
}
