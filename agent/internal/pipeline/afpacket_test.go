package pipeline

import (
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/agent/internal/capture"
	"netwatch/agent/internal/decode"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

var vethSeq atomic.Uint32

// veth creates a network namespace holding one end of a veth pair whose
// other end stays here; the local end is 10.250.N.1/30, the namespace end
// 10.250.N.2. Both are removed when the test ends. It returns the local
// interface name and the peer address.
func veth(t *testing.T) (string, net.IP) {
	t.Helper()
	if os.Geteuid() != 0 {
		testkit.Unavailable(t, "veth and network namespaces need root")
	}
	ipPath := testkit.Tool(t, "ip")
	n := int(vethSeq.Add(1))
	tag := fmt.Sprintf("%d%d", os.Getpid()%10000, n)
	ns, local, peer := "nwt"+tag, "nwa"+tag, "nwb"+tag
	sub := (os.Getpid()+n)%250 + 1
	run := func(args ...string) {
		t.Helper()
		if out, err := exec.Command(ipPath, args...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(args, " "), err, out)
		}
	}
	run("netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command(ipPath, "netns", "del", ns).Run() })
	run("link", "add", local, "type", "veth", "peer", "name", peer, "netns", ns)
	t.Cleanup(func() { _ = exec.Command(ipPath, "link", "del", local).Run() })
	run("addr", "add", fmt.Sprintf("10.250.%d.1/30", sub), "dev", local)
	run("link", "set", local, "up")
	run("-n", ns, "addr", "add", fmt.Sprintf("10.250.%d.2/30", sub), "dev", peer)
	run("-n", ns, "link", "set", peer, "up")
	run("-n", ns, "link", "set", "lo", "up")
	return local, net.IPv4(10, 250, byte(sub), 2)
}

// sendUDP sends k datagrams of payload bytes from a fresh local port to
// to:port and returns the local port. The socket is not connected, so the
// peer's ICMP port unreachable does not fail the next write.
func sendUDP(t *testing.T, to net.IP, port, k, payload int) int {
	t.Helper()
	c, err := net.ListenUDP("udp4", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dst := &net.UDPAddr{IP: to, Port: port}
	for i := 0; i < k; i++ {
		if _, err := c.WriteToUDP(make([]byte, payload), dst); err != nil {
			t.Fatal(err)
		}
	}
	return c.LocalAddr().(*net.UDPAddr).Port
}

// udpToPort counts the UDP summaries in PACKETS with destination port port.
func udpToPort(t *testing.T, js jetstream.JetStream, port int) (pkts, ipBytes int, srcPorts map[uint32]int) {
	t.Helper()
	st, err := js.Stream(context.Background(), schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	srcPorts = map[uint32]int{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatal(err)
		}
		for _, p := range b.Packets {
			if p.Proto == 17 && p.DstPort == uint32(port) {
				pkts++
				ipBytes += int(p.IpBytes)
				srcPorts[p.SrcPort]++
			}
		}
	}
	return
}

// runAFPacket starts an agent capturing iface through AF_PACKET with bpf
// and fanout sockets, and waits until warm-up datagrams to peer:warmPort
// are seen and the capture has gone quiet.
func runAFPacket(t *testing.T, iface string, peer net.IP, bpf string, fanout, warmPort int) (*Agent, jetstream.JetStream, func()) {
	t.Helper()
	_, nc, _ := testkit.JetStream(t)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Interface: iface, BPF: bpf, Sensor: "afpacket-test", BatchSize: 16,
		BatchFlush: 50 * time.Millisecond, MetricsInterval: time.Hour, MaxInflight: 16, Snaplen: 262144,
		CaptureMethod: "afpacket", Fanout: fanout, RingMB: 4, Promisc: true, BufferMB: 16}
	cfg.NATSURL = nc.ConnectedUrl()
	a := New(cfg, js, prometheus.NewRegistry(), slog.New(slog.DiscardHandler))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.Run(ctx) }()
	stop := func() {
		t.Helper()
		cancel()
		if err := <-done; err != nil {
			t.Fatalf("run: %v", err)
		}
	}
	t.Cleanup(cancel)
	testkit.Eventually(t, 10*time.Second, func() bool { sendUDP(t, peer, warmPort, 1, 10); return a.Stats.Received.Load() > 0 },
		"af_packet capture on %s saw nothing", iface)
	last := a.Stats.Received.Load()
	testkit.Eventually(t, 5*time.Second, func() bool {
		time.Sleep(200 * time.Millisecond) // poll interval: the count must stay put across it
		now := a.Stats.Received.Load()
		stable := now == last
		last = now
		return stable
	}, "capture did not go quiet")
	return a, js, stop
}

// TestAFPacketVeth captures through AF_PACKET (TPACKET_V3) on one end of a
// veth pair whose other end is in a namespace made by the test, with a BPF
// filter naming one UDP port: n datagrams of a known size to that port reach
// PACKETS exactly once each, with IP bytes 20 + 8 + payload (hand count);
// m datagrams to another port are filtered out in the kernel.
func TestAFPacketVeth(t *testing.T) {
	iface, peer := veth(t)
	const n, m, payload, port, other, warm = 40, 25, 300, 40001, 40002, 40003
	a, js, stop := runAFPacket(t, iface, peer, fmt.Sprintf("udp dst port %d or udp dst port %d", port, warm), 1, warm)
	r0 := a.Stats.Received.Load()
	sendUDP(t, peer, other, m, payload)
	sendUDP(t, peer, port, n, payload)
	testkit.Eventually(t, 10*time.Second, func() bool { return a.Stats.Received.Load() >= r0+n },
		"captured %d of %d datagrams", a.Stats.Received.Load()-r0, n)
	stop()
	if got := a.Stats.Received.Load() - r0; got != n {
		t.Errorf("captured %d frames after warm-up, want %d (the filter lets only port %d through)", got, n, port)
	}
	got, gotBytes, _ := udpToPort(t, js, port)
	if got != n || gotBytes != n*(20+8+payload) {
		t.Errorf("PACKETS holds %d datagrams / %d IP bytes to port %d, want %d / %d", got, gotBytes, port, n, n*(20+8+payload))
	}
	if o, _, _ := udpToPort(t, js, other); o != 0 {
		t.Errorf("%d datagrams to the filtered-out port %d were captured", o, other)
	}
	if p := a.Stats.RingPackets.Load(); p < n {
		t.Errorf("ring statistics count %d packets, want >= %d", p, n)
	}
	// the final METRICS message carries the ring counters
	stream, err := js.Stream(context.Background(), schema.StreamMetrics)
	if err != nil {
		t.Fatal(err)
	}
	last, err := stream.GetLastMsgForSubject(context.Background(), schema.MetricsSubject("afpacket-test"))
	if err != nil {
		t.Fatalf("last METRICS message: %v", err)
	}
	var met pb.Metrics
	if err := proto.Unmarshal(last.Data, &met); err != nil || len(met.Captures) != 1 {
		t.Fatalf("METRICS: %v, %d captures", err, len(met.Captures))
	}
	if c := met.Captures[0]; c.RingPackets < n || c.Dropped != 0 || c.RingPackets != a.Stats.RingPackets.Load() {
		t.Errorf("METRICS capture stats ring_packets %d dropped %d, want >= %d (agent %d) and 0", c.RingPackets, c.Dropped, n, a.Stats.RingPackets.Load())
	}
	if d := a.Stats.Dropped.Load(); d != 0 {
		t.Errorf("%d ring drops at this rate", d)
	}
}

// TestAFPacketFanout spreads the capture over four sockets in a
// PACKET_FANOUT_HASH group, each decoded by its own worker: flows × per-flow
// datagrams (hand count) arrive in PACKETS exactly once each, every flow
// whole, and the batch ids stay unique.
func TestAFPacketFanout(t *testing.T) {
	iface, peer := veth(t)
	const flows, per, payload, port, warm = 32, 20, 64, 41001, 41003
	a, js, stop := runAFPacket(t, iface, peer, fmt.Sprintf("udp dst port %d or udp dst port %d", port, warm), 4, warm)
	r0 := a.Stats.Received.Load()
	want := map[uint32]int{}
	for i := 0; i < flows; i++ {
		want[uint32(sendUDP(t, peer, port, per, payload))] += per
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return a.Stats.Received.Load() >= r0+flows*per },
		"captured %d of %d datagrams", a.Stats.Received.Load()-r0, flows*per)
	stop()
	if got := a.Stats.Received.Load() - r0; got != flows*per {
		t.Errorf("captured %d frames after warm-up, want %d", got, flows*per)
	}
	got, gotBytes, bySrc := udpToPort(t, js, port)
	if got != flows*per || gotBytes != flows*per*(20+8+payload) {
		t.Errorf("PACKETS holds %d datagrams / %d IP bytes, want %d / %d", got, gotBytes, flows*per, flows*per*(20+8+payload))
	}
	for sp, w := range want {
		if bySrc[sp] != w {
			t.Errorf("flow from port %d: %d datagrams, want %d", sp, bySrc[sp], w)
		}
	}
	// every batch id once (the workers share one sequence)
	st, _ := js.Stream(context.Background(), schema.StreamPackets)
	info, _ := st.Info(context.Background())
	seen := map[string]bool{}
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(context.Background(), seq)
		if err != nil {
			t.Fatal(err)
		}
		id := m.Header.Get(jetstream.MsgIDHeader)
		if seen[id] {
			t.Errorf("Nats-Msg-Id %s twice", id)
		}
		seen[id] = true
	}
}

// TestAFPacketFanoutHash reads the four sockets of a fanout group directly:
// every datagram of flows × per (hand count) is read exactly once, all the
// datagrams of a flow by the same socket (PACKET_FANOUT_HASH), and the
// flows are spread over more than one socket.
func TestAFPacketFanoutHash(t *testing.T) {
	iface, peer := veth(t)
	const flows, per, port = 32, 10, 42001
	// resolve the peer's MAC first, so that no datagram waits in (or
	// overflows) the neighbour queue
	ipPath := testkit.Tool(t, "ip")
	testkit.Eventually(t, 5*time.Second, func() bool {
		sendUDP(t, peer, port+1, 1, 1)
		out, _ := exec.Command(ipPath, "neigh", "show", peer.String(), "dev", iface).Output()
		return strings.Contains(string(out), "lladdr")
	}, "no ARP reply from %s", peer)
	src, err := capture.OpenAFPacket(capture.AFPacketConfig{Interface: iface, Snaplen: 262144,
		BPF: fmt.Sprintf("udp dst port %d", port), RingBytes: 4 << 20, Fanout: 4}, decode.Supported)
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()
	members := src.Members()
	if len(members) != 4 {
		t.Fatalf("%d members, want 4", len(members))
	}
	var total atomic.Int64
	bySock := make([]map[uint16]int, len(members)) // source port -> datagrams, per socket
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for i, m := range members {
		bySock[i] = map[uint16]int{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				data, _, _, err := m.Next()
				if err == capture.ErrTimeout {
					continue
				}
				if err != nil {
					t.Error(err)
					return
				}
				if len(data) < 14+20+8 {
					continue
				}
				bySock[i][binary.BigEndian.Uint16(data[14+20:])]++
				total.Add(1)
			}
		}()
	}
	// datagrams per source port: the kernel may give a later flow the
	// ephemeral port of an earlier one, and then both are one 5-tuple
	want := map[uint16]int{}
	for i := 0; i < flows; i++ {
		want[uint16(sendUDP(t, peer, port, per, 32))] += per
	}
	testkit.Eventually(t, 10*time.Second, func() bool { return total.Load() >= flows*per },
		"read %d of %d datagrams", total.Load(), flows*per)
	close(stop)
	wg.Wait()
	if total.Load() != flows*per {
		t.Errorf("read %d datagrams, want %d", total.Load(), flows*per)
	}
	used := 0
	for i := range bySock {
		if len(bySock[i]) > 0 {
			used++
		}
		for sp, n := range bySock[i] {
			if want[sp] == 0 {
				t.Errorf("socket %d read a datagram from unexpected port %d", i, sp)
			} else if n != want[sp] {
				t.Errorf("flow from port %d: socket %d read %d of its %d datagrams (a flow must stay on one socket)", sp, i, n, want[sp])
			}
		}
	}
	if used < 2 {
		t.Errorf("%d flows all went to %d socket(s)", flows, used)
	}
}
