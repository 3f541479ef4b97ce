package stage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/capflow"
	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestGroupPartitionMatchesServer: schema.GroupPartition, with which a
// member tells which addresses its partitions hold (the live path), gives
// the partition the NATS server's subject transform puts each FLOWS
// subject in, in both detector groups: for two sensors, one message per
// originator bucket o with responder bucket 7·o mod 64 (so each group
// sees all 64 buckets of each sensor), read back from the groups'
// work-queue streams (subjects "<partition>.netwatch.flows...").
func TestGroupPartitionMatchesServer(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	g := Group{Name: "dtest", Member: "m1", Partitions: 16}
	if err := JoinGroups(ctx, js, g); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, sensor := range []string{"sensor-a", "s2"} {
		for o := uint32(0); o < schema.Buckets; o++ {
			if _, err := js.Publish(ctx, schema.FlowsSubject(sensor, o, o*7%schema.Buckets), []byte{}); err != nil {
				t.Fatal(err)
			}
			n++
		}
	}
	for i, name := range g.names() {
		st, err := js.Stream(ctx, schema.StreamFlows+"-"+name)
		if err != nil {
			t.Fatal(err)
		}
		testkit.Eventually(t, 30*time.Second, func() bool {
			info, err := st.Info(ctx)
			return err == nil && info.State.Msgs == uint64(n)
		}, "group stream %s not filled", name)
		seen := map[uint]int{}
		for seq := uint64(1); seq <= uint64(n); seq++ {
			m, err := st.GetMsg(ctx, seq)
			if err != nil {
				t.Fatal(err)
			}
			part, subj, _ := strings.Cut(m.Subject, ".")
			tok := strings.Split(subj, ".") // netwatch flows sensor orig resp
			bucket := tok[3+i]
			want := schema.GroupPartition(16, tok[2], bucket)
			if part != strconv.Itoa(int(want)) {
				t.Fatalf("%s: server partition %s, GroupPartition %d", m.Subject, part, want)
			}
			seen[want]++
		}
		if len(seen) != 16 {
			t.Errorf("%s: %d partitions used, want 16", name, len(seen))
		}
	}
}

var publishSeq int

// publishFlows publishes flows as the enricher does: on
// netwatch.flows.<sensor>.<orig bucket>.<resp bucket>, a subject's batch
// sent at 256 records or once a record ends more than a second (packet
// time) after the batch's first, the rest at the end, so that messages go
// out in the order the enricher emits records, at their end (flows sorted
// by end first).
// It returns the number of messages.
func publishFlows(t *testing.T, js jetstream.JetStream, sensor string, flows []*pb.Flow) int {
	t.Helper()
	flows = slices.Clone(flows)
	sort.SliceStable(flows, func(i, j int) bool { return flows[i].EndNs < flows[j].EndNs })
	type sk struct{ o, r uint32 }
	type batch struct {
		k     sk
		flows []*pb.Flow
	}
	pending := map[sk]*batch{}
	var order []*batch // pending batches by their first record
	n := 0
	send := func(b *batch) {
		data, err := proto.Marshal(&pb.FlowBatch{Sensor: sensor, Flows: b.flows})
		if err != nil {
			t.Fatal(err)
		}
		publishSeq++ // ids unique across calls (the stream drops a repeated Nats-Msg-Id)
		publish(t, js, schema.FlowsSubject(sensor, b.k.o, b.k.r), data, fmt.Sprintf("%s.%d.%d.%d", sensor, b.k.o, b.k.r, publishSeq))
		n++
		delete(pending, b.k)
		order = slices.DeleteFunc(order, func(x *batch) bool { return x == b })
	}
	for _, f := range flows {
		for len(order) > 0 && f.EndNs-order[0].flows[0].EndNs > int64(time.Second) {
			send(order[0])
		}
		k := sk{schema.AddrBucket(f.OrigAddr), schema.AddrBucket(f.RespAddr)}
		b := pending[k]
		if b == nil {
			b = &batch{k: k}
			pending[k] = b
			order = append(order, b)
		}
		if b.flows = append(b.flows, f); len(b.flows) == 256 {
			send(b)
		}
	}
	for len(order) > 0 {
		send(order[0])
	}
	return n
}

// alertKeys reads ALERTS: one "sensor category orig>resp" line per alert
// id, sorted, and every publish (its Nats-Msg-Id, the alert id and
// update number, and summary with the counts), sorted.
func alertKeys(t *testing.T, js jetstream.JetStream) ([]string, []string) {
	t.Helper()
	ctx := context.Background()
	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	ids := map[string]string{}
	var pubs []string
	for seq := uint64(1); seq <= info.State.LastSeq; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var a pb.Alert
		if err := proto.Unmarshal(raw.Data, &a); err != nil {
			t.Fatal(err)
		}
		ids[a.Id] = fmt.Sprintf("%s %s %q>%q", a.Sensor, a.Category, a.OrigAddr, a.RespAddr)
		pubs = append(pubs, raw.Header.Get(jetstream.MsgIDHeader)+" "+a.Summary)
	}
	var out []string
	for _, v := range ids {
		out = append(out, v)
	}
	sort.Strings(out)
	sort.Strings(pubs)
	return out, pubs
}

// hostScores reads every host window score of the HOST_SCORES bucket kv
// (the model entry left out): key → its counts and score.
func hostScores(t *testing.T, kv jetstream.KeyValue) map[string]string {
	t.Helper()
	ctx := context.Background()
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	for k := range keys.Keys() {
		if k == HostScoresModelKey {
			continue
		}
		e, err := kv.Get(ctx, k)
		if err != nil {
			t.Fatal(err)
		}
		var hs HostScore
		if err := json.Unmarshal(e.Value(), &hs); err != nil {
			t.Fatal(err)
		}
		out[k] = fmt.Sprintf("%+v %.6f", hs.Counts, hs.Score)
	}
	return out
}

// closers are flows after every capture, one per pair of address buckets
// (originator b, responder 63-b) for each sensor, the i-th sensor's 10·i
// minutes after 2026-12-01, so that every member's host tracker passes the
// windows of the captures published before them and closes them (a
// tracker closes windows as the flows it sees move on, one window length
// behind its watermark).
func closers(sensors ...string) map[string][]*pb.Flow {
	out := map[string][]*pb.Flow{}
	var origs, resps [schema.Buckets][]byte
	for i := 0; ; i++ {
		a := []byte{198, 18, byte(i >> 8), byte(i)}
		if b := schema.AddrBucket(a); origs[b] == nil {
			origs[b] = a
		} else if resps[b] == nil {
			resps[b] = a
		}
		full := true
		for b := range origs {
			full = full && origs[b] != nil && resps[b] != nil
		}
		if full {
			break
		}
	}
	for i, sensor := range sensors {
		late := time.Date(2026, 12, 1, 0, 10*i, 0, 0, time.UTC).UnixNano()
		for b := range origs {
			out[sensor] = append(out[sensor], &pb.Flow{Proto: 17, OrigAddr: origs[b], OrigPort: 5000, RespAddr: resps[schema.Buckets-1-b],
				RespPort: 53, StartNs: late, EndNs: late, OrigPkts: 1, RespPkts: 1, Final: true})
		}
	}
	return out
}

// captureFlows is the flows tshark builds from a capture of the shared
// pcaps (capflow), and their count.
func captureFlows(t *testing.T, tshark, file string) []*pb.Flow {
	t.Helper()
	flows, err := capflow.Flows(filepath.Join(testkit.Pcaps(t), file), capflow.Options{Tshark: tshark})
	if err != nil {
		t.Fatal(err)
	}
	return flows
}

// member is one detector instance of a test group.
type member struct {
	st     *Stage
	m      *Metrics
	cancel context.CancelFunc
	done   chan error
}

func startMember(t *testing.T, js jetstream.JetStream, g Group, live bool) *member {
	return startMemberHosts(t, js, g, live, nil, nil)
}

// startMemberHosts starts a member with the host model hm writing closed
// host windows to kv (when not nil; Run then returns twice more).
func startMemberHosts(t *testing.T, js jetstream.JetStream, g Group, live bool, hm *hostmodel.Forest, kv jetstream.KeyValue) *member {
	t.Helper()
	m := NewMetrics(prometheus.NewRegistry())
	st := New(Config{Rules: rules.DefaultConfig(), Group: g, HostModel: hm}, js, nil, m, slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	mb := &member{st: st, m: m, cancel: cancel, done: make(chan error, 3)}
	if kv != nil {
		go func() { mb.done <- st.RunHostScores(ctx, kv) }()
	}
	go func() { mb.done <- st.Run(ctx) }()
	if live {
		go func() { mb.done <- st.RunARP(ctx, 1) }()
	}
	testkit.Eventually(t, 30*time.Second, func() bool { return st.Ready() == nil }, "member %s not ready", g.Member)
	return mb
}

func (mb *member) stop(t *testing.T, runs int) {
	mb.cancel()
	for i := 0; i < runs; i++ {
		if err := <-mb.done; err != nil {
			t.Error(err)
		}
	}
}

// partitionsHeld waits until every member holds want[i] partitions of
// each group (membership read by each member).
func partitionsHeld(t *testing.T, ms []*member, want []float64) {
	t.Helper()
	testkit.Eventually(t, 30*time.Second, func() bool {
		for i, mb := range ms {
			for _, g := range []string{"originator", "target"} {
				if testutil.ToFloat64(mb.m.Partitions.WithLabelValues(g)) != want[i] {
					return false
				}
			}
		}
		return true
	}, "partitions not spread as %v", want)
}

// groupDrained waits until both group streams have received n messages
// from FLOWS and every one is acked (work-queue: none left).
func groupDrained(t *testing.T, js jetstream.JetStream, g Group, n int) {
	t.Helper()
	ctx := context.Background()
	for _, name := range g.names() {
		testkit.Eventually(t, 120*time.Second, func() bool {
			s, err := js.Stream(ctx, schema.StreamFlows+"-"+name)
			if err != nil {
				return false
			}
			info, err := s.Info(ctx)
			return err == nil && info.State.LastSeq == uint64(n) && info.State.Msgs == 0
		}, "group %s: messages left", name)
	}
}

// TestGroupTwoMembers: two detector members (consumer groups on FLOWS)
// fed the flows of a real scan capture (lab-nmap-syn-scan: nmap SYN scan
// from 10.99.1.10 of 10.99.1.20, lab/labels.csv) and of a spoofed SYN
// flood (attack-synflood-spoofed-sources: SYNs to 10.10.10.10 from
// random sources, MANIFEST.md) raise one portscan naming the scanner and
// one syn_flood naming the target with no originator, the alerts one
// instance raises on the same flows, not two partial alerts or none. The
// flood's flows come from thousands of originators in every originator
// bucket: both members get originator-group messages, yet all the
// target's flows reach one member through the target group. Then member 1
// stops: member 2 takes all 16 partitions of both groups and alone raises
// the alert of a third capture (lab-hping3-icmp-flood: hping3 -1 --flood
// from 10.99.1.10 to 10.99.1.20, labels.csv), again as one instance does.
func TestGroupTwoMembers(t *testing.T) {
	tshark := testkit.Tool(t, "tshark")
	scan := captureFlows(t, tshark, "lab/lab-nmap-syn-scan.pcap")
	flood := captureFlows(t, tshark, "attack-synflood-spoofed-sources.pcap")
	icmp := captureFlows(t, tshark, "lab/lab-hping3-icmp-flood.pcap")
	want := []string{`lab portscan "10.99.1.10">"10.99.1.20"`, `lab2 syn_flood "">"10.10.10.10"`, `lab3 icmp_flood "10.99.1.10">"10.99.1.20"`}

	// one instance (the shared durable), the reference
	_, _, js1 := testkit.JetStream(t)
	n1 := publishFlows(t, js1, "lab", scan) + publishFlows(t, js1, "lab2", flood) + publishFlows(t, js1, "lab3", icmp)
	one := New(Config{Rules: rules.DefaultConfig()}, js1, nil, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- one.Run(ctx) }()
	testkit.Eventually(t, 120*time.Second, func() bool {
		cons, err := js1.Consumer(context.Background(), schema.StreamFlows, schema.ConsumerDetector)
		if err != nil {
			return false
		}
		info, err := cons.Info(context.Background())
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == uint64(n1)
	}, "one instance: pending messages")
	cancel()
	<-done
	ref, refPubs := alertKeys(t, js1)
	for _, w := range want {
		if !slices.Contains(ref, w) {
			t.Errorf("one instance: no alert %s among %v", w, ref)
		}
	}

	// two members
	_, _, js := testkit.JetStream(t)
	g := Group{Name: "detectors", Partitions: 16, AckWait: 10 * time.Second, Join: true, Leave: true}
	g1, g2 := g, g
	g1.Member, g2.Member = "det-1", "det-2"
	m1 := startMember(t, js, g1, false)
	m2 := startMember(t, js, g2, false)
	defer m2.stop(t, 1)
	partitionsHeld(t, []*member{m1, m2}, []float64{8, 8})
	n := publishFlows(t, js, "lab", scan) + publishFlows(t, js, "lab2", flood)
	groupDrained(t, js, g, n)
	total := float64(len(scan) + len(flood))
	of := testutil.ToFloat64(m1.m.Flows) + testutil.ToFloat64(m2.m.Flows)
	tf := testutil.ToFloat64(m1.m.TargetFlows) + testutil.ToFloat64(m2.m.TargetFlows)
	if of != total || tf != total {
		t.Errorf("flows evaluated: originator group %v, target group %v, want %v each", of, tf, total)
	}
	if testutil.ToFloat64(m1.m.Flows) == 0 || testutil.ToFloat64(m2.m.Flows) == 0 {
		t.Errorf("originator group: member 1 %v flows, member 2 %v: the flood's sources should be spread",
			testutil.ToFloat64(m1.m.Flows), testutil.ToFloat64(m2.m.Flows))
	}
	t.Logf("%d flows in %d messages; member 1: %v originator + %v target flows, member 2: %v + %v", len(scan)+len(flood), n,
		testutil.ToFloat64(m1.m.Flows), testutil.ToFloat64(m1.m.TargetFlows), testutil.ToFloat64(m2.m.Flows),
		testutil.ToFloat64(m2.m.TargetFlows))

	// member 1 stops (and leaves): member 2 holds every partition
	m1.stop(t, 1)
	partitionsHeld(t, []*member{m2}, []float64{16})
	before := testutil.ToFloat64(m2.m.Flows)
	n += publishFlows(t, js, "lab3", icmp)
	groupDrained(t, js, g, n)
	if d := testutil.ToFloat64(m2.m.Flows) - before; d != float64(len(icmp)) {
		t.Errorf("member 2 evaluated %v flows of the ICMP flood, want %d", d, len(icmp))
	}
	got, pubs := alertKeys(t, js)
	all := strings.Join(got, "\n")
	for _, w := range want {
		if c := strings.Count(all, w); c != 1 {
			t.Errorf("%d alert ids %s, want 1", c, w)
		}
	}
	if !slices.Equal(got, ref) {
		t.Errorf("two members' alerts:\n%s\none instance's:\n%s", all, strings.Join(ref, "\n"))
	}
	// every publish too: the first at the threshold and each update at a
	// doubling, with its counts (a target split between two engines
	// would publish the same id with smaller counts and fewer updates)
	if !slices.Equal(pubs, refPubs) {
		t.Errorf("two members' publishes:\n%s\none instance's:\n%s", strings.Join(pubs, "\n"), strings.Join(refPubs, "\n"))
	}
	t.Logf("alerts: %s; %d publishes", strings.Join(got, "; "), len(pubs))
	for _, p := range pubs {
		t.Log(p)
	}
}

// TestGroupLive: the live path in group mode. Two members each read all
// of PACKETS through an ordered consumer and run the live rules on the
// packets of their partitions only. The lab nmap SYN scan and the spoofed
// SYN flood as PacketBatches of 1,024 summaries (tshark's fields, the
// sensors' buckets ignored: everything on bucket 0): the first portscan
// alert names 10.99.1.10 → 10.99.1.20 and the first syn_flood alert
// 10.10.10.10 with no originator, each at the time of the packet tshark
// finds crossing the threshold (as one instance, TestStageLiveScansAndFloods),
// and each category is published by one member only (the holder of the
// scanner's originator partition, and of the target's target partition).
func TestGroupLive(t *testing.T) {
	pcaps := testkit.Pcaps(t)
	d := rules.DefaultConfig()
	type capture struct {
		sensor, file, category, orig, target, filter, field string
		threshold                                           int
		window                                              time.Duration
	}
	cs := []capture{
		{"lab", "lab/lab-nmap-syn-scan.pcap", "portscan", "10.99.1.10", "10.99.1.20",
			"ip.src == 10.99.1.10 && ip.dst == 10.99.1.20 && tcp.flags.syn == 1 && tcp.flags.ack == 0", "tcp.dstport", d.PortscanPorts, d.PortscanWindow},
		{"lab2", "attack-synflood-spoofed-sources.pcap", "syn_flood", "", "10.10.10.10",
			"ip.dst == 10.10.10.10 && tcp.flags.syn == 1 && tcp.flags.ack == 0 && tcp.flags.reset == 0 && tcp.len == 0", "", d.SynFloodPkts, d.FloodWindow},
	}
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	g := Group{Name: "detectors", Partitions: 16, AckWait: 10 * time.Second, Join: true, Leave: true}
	var ms []*member
	for _, name := range []string{"det-1", "det-2"} {
		gm := g
		gm.Member = name
		mb := startMember(t, js, gm, true)
		defer mb.stop(t, 2)
		testkit.Eventually(t, 10*time.Second, mb.st.ARPReady, "%s: live path not consuming", name)
		ms = append(ms, mb)
	}
	partitionsHeld(t, ms, []float64{8, 8})
	npkts := 0
	for _, c := range cs {
		pkts := tsharkSummaries(t, filepath.Join(pcaps, c.file))
		npkts += len(pkts)
		for i, nb := 0, 0; i < len(pkts); i, nb = i+1024, nb+1 {
			data, err := proto.Marshal(&pb.PacketBatch{Sensor: c.sensor, Boot: "b", Seq: uint64(nb + 1), Packets: pkts[i:min(i+1024, len(pkts))]})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, js, schema.PacketsSubject(c.sensor, 0), data, fmt.Sprintf("%s.b.%d", c.sensor, nb))
		}
	}
	// every member reads every summary
	for i, mb := range ms {
		testkit.Eventually(t, 60*time.Second, func() bool { return testutil.ToFloat64(mb.m.LivePackets) == float64(npkts) },
			"member %d read %v of %d packet summaries", i+1, testutil.ToFloat64(mb.m.LivePackets), npkts)
	}
	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range cs {
		cross := tsharkCrossing(t, filepath.Join(pcaps, c.file), c.filter, c.field, c.threshold, c.window)
		var first *pb.Alert
		testkit.Eventually(t, 10*time.Second, func() bool {
			info, err := s.Info(ctx)
			if err != nil {
				return false
			}
			for seq := uint64(1); seq <= info.State.LastSeq && first == nil; seq++ {
				raw, err := s.GetMsg(ctx, seq)
				if err != nil {
					return false
				}
				var a pb.Alert
				if proto.Unmarshal(raw.Data, &a) == nil && a.Sensor == c.sensor && a.Category == c.category && a.RespAddr == c.target {
					first = &a
				}
			}
			return first != nil
		}, "no %s alert on %s", c.category, c.target)
		if first.OrigAddr != c.orig || first.TimeNs != cross {
			t.Errorf("first %s alert %q -> %s at %d, want %q at %d (tshark)", c.category, first.OrigAddr, first.RespAddr, first.TimeNs, c.orig, cross)
		}
		var by []float64
		for _, mb := range ms {
			by = append(by, testutil.ToFloat64(mb.m.Alerts.WithLabelValues(c.category)))
		}
		if (by[0] == 0) == (by[1] == 0) {
			t.Errorf("%s alerts published by member 1: %v, member 2: %v; want one member only", c.category, by[0], by[1])
		}
		t.Logf("%s: %s (publishes by member: %v)", c.category, first.Summary, by)
	}
}

// TestGroupMemberConsumerDeleted: a member whose consumer on a group's
// work queue is deleted from outside (an operator, or pcgroups losing a
// create race when two members join at once) joins again within two of
// its 5 s checks, and the flows of the spoofed SYN flood published after
// it are all evaluated by the target group: one syn_flood on 10.10.10.10.
func TestGroupMemberConsumerDeleted(t *testing.T) {
	tshark := testkit.Tool(t, "tshark")
	flood := captureFlows(t, tshark, "attack-synflood-spoofed-sources.pcap")
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	g := Group{Name: "detectors", Partitions: 16, AckWait: time.Minute, Join: true, Leave: true}
	var ms []*member
	for _, name := range []string{"det-1", "det-2"} {
		gm := g
		gm.Member = name
		mb := startMember(t, js, gm, false)
		defer mb.stop(t, 1)
		ms = append(ms, mb)
	}
	partitionsHeld(t, ms, []float64{8, 8})
	wq := schema.StreamFlows + "-" + schema.DetectorTargetGroup(g.Name)
	testkit.Eventually(t, 10*time.Second, func() bool {
		_, err := js.Consumer(ctx, wq, "det-1")
		return err == nil
	}, "det-1 has no consumer on %s", wq)
	if err := js.DeleteConsumer(ctx, wq, "det-1"); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, 20*time.Second, func() bool {
		_, err := js.Consumer(ctx, wq, "det-1")
		return err == nil && testutil.ToFloat64(ms[0].m.Rejoins) == 1
	}, "det-1 did not join again (rejoins %v)", testutil.ToFloat64(ms[0].m.Rejoins))
	n := publishFlows(t, js, "lab2", flood)
	groupDrained(t, js, g, n)
	if tf := testutil.ToFloat64(ms[0].m.TargetFlows) + testutil.ToFloat64(ms[1].m.TargetFlows); tf != float64(len(flood)) {
		t.Errorf("target group evaluated %v flows, want %d", tf, len(flood))
	}
	got, _ := alertKeys(t, js)
	if !slices.Contains(got, `lab2 syn_flood "">"10.10.10.10"`) {
		t.Errorf("alerts %v, want a syn_flood on 10.10.10.10", got)
	}
}

// TestGroupHostWindows: the host anomaly model's windows in group mode.
// A host's originator side is counted by the originator group's member
// that holds its address, its responder side by the target group's, and
// with the same membership and partition count both are the same member:
// two members write the same closed host windows (counts and scores) to
// HOST_SCORES as one instance, on the flows of the lab's benign mix (five
// hosts talking both ways), the nmap SYN scan and the hping3 ICMP flood,
// each sensor followed by closing flows 10 minutes later in every
// address bucket (a tracker closes windows as its own flows move on), with
// no window dropped by the writer's queue. The members finish each
// capture before its closing flows come (as time orders them live: a
// member reads its two groups' work queues independently).
func TestGroupHostWindows(t *testing.T) {
	tshark := testkit.Tool(t, "tshark")
	caps := map[string][]*pb.Flow{
		"lab":  captureFlows(t, tshark, "lab/lab-benign-mixed.pcap"),
		"lab2": captureFlows(t, tshark, "lab/lab-nmap-syn-scan.pcap"),
		"lab3": captureFlows(t, tshark, "lab/lab-hping3-icmp-flood.pcap"),
	}
	sensors := []string{"lab", "lab2", "lab3"}
	late := closers(sensors...)
	hm, err := hostmodel.Load("../../models/host-iforest.model")
	if err != nil {
		t.Fatal(err)
	}
	// feed publishes each capture, then its closing flows; drained (when
	// not nil) waits for the detectors between the two, as time separates
	// them live: the two groups' work queues are read independently, so
	// without it a member could see the closing flows of one group before
	// the capture's flows of the other and close a window early
	feed := func(js jetstream.JetStream, drained func(int)) int {
		n := 0
		for _, sn := range sensors {
			n += publishFlows(t, js, sn, caps[sn])
			if drained != nil {
				drained(n)
			}
			n += publishFlows(t, js, sn, late[sn])
			if drained != nil {
				drained(n)
			}
		}
		return n
	}
	ctx := context.Background()

	_, _, js1 := testkit.JetStream(t)
	n1 := feed(js1, nil)
	kv1, err := OpenHostScores(ctx, js1, HostScoresBucket, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m1 := NewMetrics(prometheus.NewRegistry())
	one := New(Config{Rules: rules.DefaultConfig(), HostModel: hm}, js1, nil, m1, slog.New(slog.NewTextHandler(io.Discard, nil)))
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- one.Run(rctx) }()
	go func() { done <- one.RunHostScores(rctx, kv1) }()
	testkit.Eventually(t, 120*time.Second, func() bool {
		cons, err := js1.Consumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == uint64(n1)
	}, "one instance: pending messages")
	testkit.Eventually(t, 20*time.Second, func() bool {
		return testutil.ToFloat64(m1.HostScoresPut) > 0 && testutil.ToFloat64(m1.HostScoresPut) == testutil.ToFloat64(m1.HostWindows)
	}, "one instance: host windows not all written")
	cancel()
	<-done
	<-done
	ref := hostScores(t, kv1)

	_, _, js := testkit.JetStream(t)
	kv, err := OpenHostScores(ctx, js, HostScoresBucket, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	g := Group{Name: "detectors", Partitions: 16, AckWait: 10 * time.Second, Join: true, Leave: true}
	var ms []*member
	for _, name := range []string{"det-1", "det-2"} {
		gm := g
		gm.Member = name
		mb := startMemberHosts(t, js, gm, false, hm, kv)
		defer mb.stop(t, 2)
		ms = append(ms, mb)
	}
	partitionsHeld(t, ms, []float64{8, 8})
	feed(js, func(n int) { groupDrained(t, js, g, n) })
	var windows float64
	testkit.Eventually(t, 20*time.Second, func() bool {
		windows = 0
		for _, mb := range ms {
			if testutil.ToFloat64(mb.m.HostScoresPut) != testutil.ToFloat64(mb.m.HostWindows) {
				return false
			}
			windows += testutil.ToFloat64(mb.m.HostWindows)
		}
		return windows >= float64(len(ref))
	}, "members: host windows not all written: %v of one instance's %d; closed %v, %v; put %v, %v, dropped %v, %v", windows, len(ref),
		testutil.ToFloat64(ms[0].m.HostWindows), testutil.ToFloat64(ms[1].m.HostWindows),
		testutil.ToFloat64(ms[0].m.HostScoresPut), testutil.ToFloat64(ms[1].m.HostScoresPut),
		testutil.ToFloat64(ms[0].m.HostScoresDropped), testutil.ToFloat64(ms[1].m.HostScoresDropped))
	for i, mb := range append(ms, &member{m: m1}) {
		if d := testutil.ToFloat64(mb.m.HostScoresDropped) + testutil.ToFloat64(mb.m.HostScoresErrors); d != 0 {
			t.Errorf("run %d: %v host windows dropped or failed", i, d)
		}
	}
	got := hostScores(t, kv)
	if len(ref) == 0 {
		t.Fatal("one instance wrote no host window")
	}
	for k, v := range ref {
		if got[k] != v {
			t.Errorf("host window %s: two members %q, one instance %q", k, got[k], v)
		}
	}
	for k, v := range got {
		if _, ok := ref[k]; !ok {
			t.Errorf("host window %s written by the members only: %s", k, v)
		}
	}
	t.Logf("%d host windows, equal; member 1 closed %v, member 2 %v", len(ref),
		testutil.ToFloat64(ms[0].m.HostWindows), testutil.ToFloat64(ms[1].m.HostWindows))
}
