package consume

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/synadia-io/orbit.go/pcgroups"
	"google.golang.org/protobuf/proto"

	"netwatch/enricher/internal/tsharkread"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

var (
	buildOnce sync.Once
	binPath   string
	buildErr  error
)

// enricherBinary builds cmd/enricher once per test run.
func enricherBinary(t *testing.T) string {
	t.Helper()
	buildOnce.Do(func() {
		dir, err := os.MkdirTemp("", "enricher-crash-test")
		if err != nil {
			buildErr = err
			return
		}
		binPath = filepath.Join(dir, "enricher")
		cmd := exec.Command("go", "build", "-o", binPath, "./cmd/enricher")
		cmd.Dir = filepath.Join("..", "..")
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binPath
}

// proc is an enricher subprocess.
type proc struct {
	name string
	cmd  *exec.Cmd
	http string
	done chan error
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// metric reads one unlabelled metric from the process's /metrics (-1 when
// it cannot).
func (p *proc) metric(name string) float64 {
	resp, err := http.Get("http://" + p.http + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				return -1
			}
			return f
		}
	}
	return -1
}

// lockedBuilder collects a subprocess's stderr.
type lockedBuilder struct {
	mu sync.Mutex
	b  strings.Builder
}

func (l *lockedBuilder) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuilder) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// TestCrashExact runs the built enricher binary in a partitioned consumer
// group on the FTP brute-force capture (30 TCP sessions over 59 s) with a
// 2 s active timeout, so long sessions have interim records; it SIGKILLs one
// member in the middle (its open flows, held messages and unpublished
// records are lost with it) and lets a restarted instance (one member,
// two members) or a hot standby (three members) take over its partitions.
// The stored flows, deduplicated by flow id as the sink stores them, add up
// exactly to tshark's per-5-tuple packets and IP bytes, no flow id has two
// different contents, and the instance that took over skipped replayed
// packets through the checkpoints.
func TestCrashExact(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the enricher binary (about 40 s)")
	}
	for _, members := range [][]string{{"m1"}, {"m1", "m2"}, {"m1", "m2", "m3"}} {
		t.Run(strings.Join(members, "+"), func(t *testing.T) { crashRun(t, members, false) })
	}
	t.Run("membership", func(t *testing.T) { crashRun(t, []string{"m1", "m2"}, true) })
}

// crashRun runs members on the capture and kills the first in the middle.
// With change, membership changes while running instead: m3 joins after
// the first half (m1 and m2 hand partitions over with open flows), then m1
// is SIGKILLed and removed from the group, so m2 and m3 take its
// partitions.
func crashRun(t *testing.T, members []string, change bool) {
	bin := enricherBinary(t)
	url, _, js := testkit.JetStream(t)
	tshark := testkit.Tool(t, "tshark")
	file := filepath.Join(testkit.Pcaps(t), "attack-ftp-bruteforce.pcap")
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
	g := Group{Name: "enricher", Partitions: 8, AckWait: 2 * time.Second}
	for _, m := range members { // membership first: no rebalancing during the test
		g.Member, g.Join = m, true
		if err := JoinGroup(context.Background(), js, g); err != nil {
			t.Fatal(err)
		}
	}
	var procs []*proc
	start := func(member, instance string) *proc {
		p := &proc{name: instance, http: freeAddr(t), done: make(chan error, 1)}
		lb := &lockedBuilder{}
		p.cmd = exec.Command(bin, "-nats.url", url, "-http.addr", p.http, "-log.level", "warn", "-log.format", "text",
			"-instance", instance, "-consume.group", g.Name, "-consume.member", member, "-consume.join=false",
			"-consume.partitions", "8", "-consume.ack-wait", g.AckWait.String(), "-consume.keepalive", "500ms",
			"-flow.active-timeout", "2s", "-flow.wall-tick", "300ms", "-publish.linger", "20ms", "-publish.max-flows", "64")
		p.cmd.Stderr = lb
		if err := p.cmd.Start(); err != nil {
			t.Fatal(err)
		}
		go func() { p.done <- p.cmd.Wait() }()
		procs = append(procs, p)
		t.Cleanup(func() {
			if p.cmd.ProcessState == nil {
				_ = p.cmd.Process.Kill()
				<-p.done
			}
			if t.Failed() {
				t.Logf("%s stderr:\n%s", instance, lb.String())
			}
		})
		testkit.Eventually(t, 20*time.Second, func() bool {
			r, err := http.Get("http://" + p.http + "/readyz")
			if err != nil {
				return false
			}
			r.Body.Close()
			return r.StatusCode == http.StatusOK
		}, "%s not ready", instance)
		return p
	}
	processed := func(ps ...*proc) float64 {
		n := 0.0
		for _, p := range ps {
			n += p.metric("netwatch_enricher_packets_total")
		}
		return n
	}
	var active []*proc
	for _, m := range members {
		active = append(active, start(m, m+"-a"))
	}
	var standby *proc
	if len(members) == 3 {
		standby = start(members[0], members[0]+"-b")
	}
	victim := active[0]
	var late *proc
	half := len(batches) / 2
	first := 0
	for _, b := range batches[:half] {
		publishBatch(t, js, b)
		first += len(b.Packets)
	}
	testkit.Eventually(t, 20*time.Second, func() bool { return processed(active...) == float64(first) },
		"first half not processed: %v of %d packets", processed(active...), first)
	// Let records be published and checkpoints stored, so the kill finds
	// acked messages, checkpoints and held messages.
	time.Sleep(1500 * time.Millisecond)
	if h := victim.metric("netwatch_enricher_held_messages"); h <= 0 {
		t.Fatalf("the victim holds %v messages at the kill: nothing to recover", h)
	}
	if change {
		late = start("m3", "m3-a")
		if _, err := pcgroups.AddMembers(context.Background(), js, schema.StreamPackets, g.Name, []string{"m3"}); err != nil {
			t.Fatal(err)
		}
		// m3 takes over partitions with held messages and open flows.
		testkit.Eventually(t, 20*time.Second, func() bool { return late.metric("netwatch_enricher_packets_total") > 0 },
			"m3 processed nothing after joining")
		time.Sleep(1500 * time.Millisecond)
	}
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-victim.done
	taker := standby
	switch {
	case change:
		if _, err := pcgroups.DeleteMembers(context.Background(), js, schema.StreamPackets, g.Name, []string{"m1"}); err != nil {
			t.Fatal(err)
		}
		taker = late
	case taker == nil:
		taker = start(members[0], members[0]+"-r")
	}
	for _, b := range batches[half:] {
		publishBatch(t, js, b)
	}
	for bk := range uint32(schema.Buckets) {
		seq++
		publishBatch(t, js, &pb.PacketBatch{Sensor: "g1", Boot: "boot", Seq: seq, Bucket: bk, EndOfInput: true})
	}
	testkit.Eventually(t, 60*time.Second, func() bool { return groupEmpty(t, js) }, "not all PACKETS acked")
	replayed := taker.metric("netwatch_enricher_packets_replayed_total")
	if change {
		replayed += active[1].metric("netwatch_enricher_packets_replayed_total")
	}
	for _, p := range procs {
		if p == victim {
			continue
		}
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		if err := <-p.done; err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
	if replayed <= 0 {
		t.Errorf("the instance that took over skipped %v replayed packets: the checkpoints were not exercised", replayed)
	}
	flows, _, _ := readFlows(t, js)
	byID := map[string]*pb.Flow{}
	dups := 0
	for _, f := range flows {
		if o := byID[f.Id]; o != nil {
			dups++
			if !proto.Equal(o, f) {
				t.Errorf("flow id %s with two contents:\n%v\n%v", f.Id, o, f)
			}
			continue
		}
		byID[f.Id] = f
	}
	got := map[tupleKey]totals{}
	for _, f := range byID {
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
	// COUNTERS are not exact across a crash yet (README "Crash and
	// membership changes"): report how far off they are, do not fail.
	perSec := map[int64]uint64{}
	for _, p := range pkts {
		perSec[p.TsNs/1e9]++
	}
	msgs, _ := readCounters(t, js)
	sum := map[int64]uint64{}
	for _, m := range msgs {
		sum[m.SecondNs/1e9] += m.Total.Packets
	}
	off := 0
	for sec, n := range perSec {
		if sum[sec] != n {
			off++
		}
	}
	t.Logf("COUNTERS: %d of %d seconds differ from tshark's packets per second", off, len(perSec))
	t.Logf("%d flow records (%d republished with the same id and content), %v packets skipped by checkpoints",
		len(byID), dups, replayed)
}
