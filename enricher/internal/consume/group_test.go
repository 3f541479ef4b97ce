package consume

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/netip"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus/testutil"

	"netwatch/enricher/internal/flow"
	"netwatch/enricher/internal/publish"
	"netwatch/enricher/internal/tsharkread"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// tupleKey is a canonical 5-tuple (both directions together) plus VLAN.
type tupleKey struct {
	proto      uint32
	a, b       string
	aport, bpt uint32
	vlan       uint32
}

func keyOf(proto uint32, src []byte, sp uint32, dst []byte, dp uint32, vlan uint32) tupleKey {
	if c := bytes.Compare(src, dst); c > 0 || c == 0 && sp > dp {
		src, sp, dst, dp = dst, dp, src, sp
	}
	a, _ := netip.AddrFromSlice(src)
	b, _ := netip.AddrFromSlice(dst)
	return tupleKey{proto, a.String(), b.String(), sp, dp, vlan}
}

type totals struct{ pkts, ipBytes uint64 }

type member struct {
	s      *Stage
	cancel context.CancelFunc
	done   chan error
}

// TestGroupStandbyTakesOver runs the stage through a partitioned consumer
// group with two, then three members and a hot standby of m1 on one
// capture; m1's active instance stops in the middle (SIGTERM: flush) and the
// standby takes its partitions. The stored flows add up exactly to the
// per-5-tuple packets and IP bytes of tshark's reading of the capture, and
// every member assembled flows; the instances' COUNTERS shares add up to
// tshark's packets per second.
func TestGroupStandbyTakesOver(t *testing.T) {
	for _, members := range [][]string{{"m1", "m2"}, {"m1", "m2", "m3"}} {
		t.Run(strings.Join(members, "+"), func(t *testing.T) { groupRun(t, members) })
	}
}

func groupRun(t *testing.T, members []string) {
	url, _, js := testkit.JetStream(t)
	tshark := testkit.Tool(t, "tshark")
	file := filepath.Join(testkit.Pcaps(t), "eth-ipv4-dns-http-browsing-wikipedia.pcap")
	pkts, err := tsharkread.Summaries(tshark, file)
	if err != nil {
		t.Fatal(err)
	}
	want := map[tupleKey]totals{}
	for _, p := range pkts {
		k := keyOf(p.Proto, p.SrcAddr, p.SrcPort, p.DstAddr, p.DstPort, p.Vlan)
		w := want[k]
		w.pkts++
		w.ipBytes += uint64(p.IpBytes)
		want[k] = w
	}
	if len(pkts) < 100 || len(want) < 10 {
		t.Fatalf("%d packets in %d 5-tuples: capture too small for the test", len(pkts), len(want))
	}
	// Batches as the agent makes them: per bucket, in capture order, at most 8 packets.
	var batches []*pb.PacketBatch
	open := map[uint32]*pb.PacketBatch{}
	seq := uint64(0)
	for _, p := range pkts {
		bk := schema.PacketBucket(p.SrcAddr, p.SrcPort, p.DstAddr, p.DstPort, p.Proto, p.Vlan)
		b := open[bk]
		if b == nil {
			seq++
			b = &pb.PacketBatch{Sensor: "g1", Boot: "boot", Seq: seq, Bucket: bk}
			open[bk] = b
			batches = append(batches, b)
		}
		b.Packets = append(b.Packets, p)
		if len(b.Packets) == 8 {
			delete(open, bk)
		}
	}
	if len(batches) < 10 {
		t.Fatalf("%d batches", len(batches))
	}

	g := Group{Name: "enricher", Partitions: 8, AckWait: 3 * time.Second}
	for _, m := range members { // membership first: no rebalancing during the test
		g.Member, g.Join = m, true
		if err := JoinGroup(context.Background(), js, g); err != nil {
			t.Fatal(err)
		}
	}
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	start := func(name, instance string) *member {
		nc, err := nats.Connect(url)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		mjs, err := jetstream.New(nc)
		if err != nil {
			t.Fatal(err)
		}
		cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{MaxFlows: 64, Linger: 20 * time.Millisecond},
			WallTick: time.Hour, KeepAlive: time.Second, ShutdownFlush: true, Instance: instance,
			Group: Group{Name: g.Name, Member: name, Partitions: g.Partitions, AckWait: g.AckWait}}
		m := &member{s: New(mjs, cfg, log.With("instance", instance), nil), done: make(chan error, 1)}
		ctx, cancel := context.WithCancel(context.Background())
		m.cancel = cancel
		go func() { m.done <- m.s.Run(ctx) }()
		testkit.Eventually(t, 10*time.Second, func() bool { return m.s.Ready() == nil }, "%s not ready", instance)
		return m
	}
	stop := func(m *member) {
		m.cancel()
		if err := <-m.done; err != nil {
			t.Errorf("run: %v", err)
		}
	}
	processed := func(ms ...*member) uint64 {
		var n float64
		for _, m := range ms {
			n += testutil.ToFloat64(m.s.m.Packets)
		}
		return uint64(n)
	}
	var active []*member
	for _, name := range members {
		active = append(active, start(name, name+"-a"))
	}
	m1, others := active[0], active[1:]
	half := len(batches) / 2
	var first uint64
	for _, b := range batches[:half] {
		publishBatch(t, js, b)
		first += uint64(len(b.Packets))
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return processed(active...) == first },
		"first half not processed: %d of %d packets", processed(active...), first)
	for i, m := range active {
		if processed(m) == 0 {
			t.Fatalf("member %s processed nothing", members[i])
		}
	}
	standby := start("m1", "m1-b")
	stop(m1) // SIGTERM in the middle: open flows end as END_SHUTDOWN, the rest goes to the standby
	for _, b := range batches[half:] {
		publishBatch(t, js, b)
	}
	for bk := range uint32(schema.Buckets) {
		seq++
		publishBatch(t, js, &pb.PacketBatch{Sensor: "g1", Boot: "boot", Seq: seq, Bucket: bk, EndOfInput: true})
	}
	total := uint64(len(pkts))
	all := append(active, standby)
	testkit.Eventually(t, 30*time.Second, func() bool { return processed(all...) == total && groupEmpty(t, js) },
		"not all processed and acked: %d of %d packets", processed(all...), total)
	for _, m := range others {
		stop(m)
	}
	stop(standby)
	if processed(standby) == 0 {
		t.Errorf("the standby processed nothing")
	}
	flows, _, _ := readFlows(t, js)
	got := map[tupleKey]totals{}
	for _, f := range flows {
		k := keyOf(f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort, f.Vlan)
		g := got[k]
		g.pkts += f.OrigPkts + f.RespPkts
		g.ipBytes += f.OrigIpBytes + f.RespIpBytes
		got[k] = g
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v: flows hold %+v, tshark %+v", k, got[k], w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%v: %+v in flows, not in the capture", k, g)
		}
	}
	// COUNTERS: each instance publishes its share of a second; summed per
	// second they equal tshark's packets per second.
	perSec := map[int64]uint64{}
	for _, p := range pkts {
		perSec[p.TsNs/1e9]++
	}
	msgs, ids := readCounters(t, js)
	sum := map[int64]uint64{}
	for _, m := range msgs {
		sum[m.SecondNs/1e9] += m.Total.Packets
	}
	if len(sum) != len(perSec) {
		t.Errorf("%d seconds in COUNTERS, %d in the capture", len(sum), len(perSec))
	}
	for sec, n := range perSec {
		if sum[sec] != n {
			t.Errorf("second %d: COUNTERS %d packets, tshark %d", sec, sum[sec], n)
		}
	}
	if len(ids) <= len(perSec) {
		t.Errorf("%d COUNTERS messages for %d seconds: want shares from several instances", len(ids), len(perSec))
	}
}

// groupEmpty reports whether the group's work-queue stream holds no message
// (all acked).
func groupEmpty(t *testing.T, js jetstream.JetStream) bool {
	st, err := js.Stream(context.Background(), schema.StreamPackets+"-enricher")
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(context.Background())
	return err == nil && info.State.Msgs == 0
}

// TestGroupMemberConsumerDeleted deletes the only member's consumer from
// outside while it runs (QA of issue 8: the member then consumed nothing
// until a membership change, and stayed ready): the member notices at its
// next checks (watchMemberConsumer), joins again and processes the rest;
// every packet of the capture ends up in the flows exactly once (per
// 5-tuple equal to tshark), and the rejoin is counted.
func TestGroupMemberConsumerDeleted(t *testing.T) {
	url, _, js := testkit.JetStream(t)
	tshark := testkit.Tool(t, "tshark")
	file := filepath.Join(testkit.Pcaps(t), "eth-ipv4-dns-http-browsing-wikipedia.pcap")
	pkts, err := tsharkread.Summaries(tshark, file)
	if err != nil {
		t.Fatal(err)
	}
	want := map[tupleKey]totals{}
	var batches []*pb.PacketBatch
	for i, p := range pkts {
		k := keyOf(p.Proto, p.SrcAddr, p.SrcPort, p.DstAddr, p.DstPort, p.Vlan)
		w := want[k]
		w.pkts++
		w.ipBytes += uint64(p.IpBytes)
		want[k] = w
		bk := schema.PacketBucket(p.SrcAddr, p.SrcPort, p.DstAddr, p.DstPort, p.Proto, p.Vlan)
		batches = append(batches, &pb.PacketBatch{Sensor: "g1", Boot: "boot", Seq: uint64(i + 1), Bucket: bk, Packets: []*pb.PacketSummary{p}})
	}
	g := Group{Name: "enricher", Member: "m1", Partitions: 8, AckWait: time.Second, Join: true}
	if err := JoinGroup(context.Background(), js, g); err != nil {
		t.Fatal(err)
	}
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	mjs, _ := jetstream.New(nc)
	cfg := Config{Flow: flow.DefaultConfig(), Publish: publish.Config{MaxFlows: 64, Linger: 20 * time.Millisecond},
		WallTick: time.Hour, KeepAlive: 500 * time.Millisecond, ShutdownFlush: true, Instance: "m1-a", Group: g}
	s := New(mjs, cfg, slog.New(slog.NewTextHandler(io.Discard, nil)), nil)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- s.Run(ctx) }()
	testkit.Eventually(t, 10*time.Second, func() bool { return s.Ready() == nil }, "not ready")
	processed := func() uint64 { return uint64(testutil.ToFloat64(s.m.Packets)) }
	half := len(batches) / 2
	for _, b := range batches[:half] {
		publishBatch(t, js, b)
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return processed() == uint64(half) },
		"first half: %d of %d packets", processed(), half)
	if err := js.DeleteConsumer(context.Background(), schema.StreamPackets+"-enricher", "m1"); err != nil {
		t.Fatal(err)
	}
	for _, b := range batches[half:] {
		publishBatch(t, js, b)
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return processed() == uint64(len(pkts)) },
		"after the consumer was deleted: %d of %d packets processed", processed(), len(pkts))
	if n := testutil.ToFloat64(s.m.Rejoins); n < 1 {
		t.Errorf("rejoins counted %v, want at least 1", n)
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	flows, _, _ := readFlows(t, js)
	got := map[tupleKey]totals{}
	for _, f := range flows {
		k := keyOf(f.Proto, f.OrigAddr, f.OrigPort, f.RespAddr, f.RespPort, f.Vlan)
		g := got[k]
		g.pkts += f.OrigPkts + f.RespPkts
		g.ipBytes += f.OrigIpBytes + f.RespIpBytes
		got[k] = g
	}
	for k, w := range want {
		if got[k] != w {
			t.Errorf("%v: flows hold %+v, tshark %+v", k, got[k], w)
		}
	}
	for k, g := range got {
		if _, ok := want[k]; !ok {
			t.Errorf("%v: %+v in flows, not in the capture", k, g)
		}
	}
}
