package pipeline

import (
	"context"
	"log/slog"
	"net"
	"os"
	"strconv"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestLiveLoopback captures live from the loopback interface with libpcap
// and a BPF filter: n UDP datagrams of a known size sent by the test to a
// local port arrive in PACKETS exactly once each, with IP bytes 20 + 8 +
// payload (hand count), and TCP traffic to an excluded port (the pipeline's
// own traffic, -exclude.ports) is not captured at all.
func TestLiveLoopback(t *testing.T) {
	if os.Geteuid() != 0 {
		testkit.Unavailable(t, "live capture needs root (CAP_NET_RAW)")
	}
	const n, payload = 50, 100

	udp, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer udp.Close()
	warm, err := net.ListenUDP("udp4", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer warm.Close()
	own, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer own.Close()
	go func() {
		for {
			c, err := own.Accept()
			if err != nil {
				return
			}
			go func() {
				buf := make([]byte, 4096)
				for {
					if _, err := c.Read(buf); err != nil {
						c.Close()
						return
					}
				}
			}()
		}
	}()
	port := udp.LocalAddr().(*net.UDPAddr).Port
	ownPort := own.Addr().(*net.TCPAddr).Port

	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	// Other tests share loopback: the filter names this test's ports only.
	bpf := "udp port " + strconv.Itoa(port) + " or udp port " + strconv.Itoa(warm.LocalAddr().(*net.UDPAddr).Port) +
		" or tcp port " + strconv.Itoa(ownPort)
	cfg := Config{Interface: "lo", BPF: bpf, Sensor: "live-test", BatchSize: 16,
		BatchFlush: 50 * time.Millisecond, MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144,
		ExcludePorts: strconv.Itoa(ownPort)}
	cfg.NATSURL = nc.ConnectedUrl()
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()

	// Warm up until the capture is running, then until it is quiet.
	send := func(to *net.UDPConn, k int) {
		c, err := net.DialUDP("udp4", nil, to.LocalAddr().(*net.UDPAddr))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := 0; i < k; i++ {
			if _, err := c.Write(make([]byte, payload)); err != nil {
				t.Fatal(err)
			}
		}
	}
	testkit.Eventually(t, 10*time.Second, func() bool { send(warm, 1); return a.Stats.Received.Load() > 0 },
		"live capture on lo saw nothing")
	last := a.Stats.Received.Load()
	testkit.Eventually(t, 5*time.Second, func() bool {
		time.Sleep(200 * time.Millisecond) // poll interval: the count must stay put across it
		now := a.Stats.Received.Load()
		stable := now == last
		last = now
		return stable
	}, "capture did not go quiet")

	r0 := a.Stats.Received.Load()
	tc, err := net.Dial("tcp4", own.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	tc.Write(make([]byte, 500))
	tc.Close()
	send(udp, n)
	testkit.Eventually(t, 10*time.Second, func() bool { return a.Stats.Received.Load() >= r0+n },
		"captured %d of %d datagrams", a.Stats.Received.Load()-r0, n)
	cancel()
	if err := <-done; err != nil {
		t.Fatalf("run: %v", err)
	}

	var got, gotBytes, ownSeen int
	st, err := js.Stream(context.Background(), schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, _ := st.Info(context.Background())
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		for _, p := range b.Packets {
			if p.Proto == 6 && (p.SrcPort == uint32(ownPort) || p.DstPort == uint32(ownPort)) {
				ownSeen++
			}
			if p.Proto == 17 && p.DstPort == uint32(port) {
				got++
				gotBytes += int(p.IpBytes)
			}
		}
	}
	if got != n || gotBytes != n*(20+8+payload) {
		t.Errorf("PACKETS holds %d datagrams / %d IP bytes to port %d, want %d / %d", got, gotBytes, port, n, n*(20+8+payload))
	}
	if ownSeen != 0 {
		t.Errorf("%d packets of the excluded port %d were captured", ownSeen, ownPort)
	}
}
