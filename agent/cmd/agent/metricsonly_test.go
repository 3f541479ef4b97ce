package main

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// runMainEnv makes the test binary the agent (TestMain): a test starts it
// as a process of its own to send it real signals.
const runMainEnv = "NETWATCH_AGENT_TEST_AS_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
	}
	os.Exit(m.Run())
}

// df is one line of `df -B1 --output=target,fstype,size,used PATH`: the
// independent source of a file system's mount point, size and used bytes.
type df struct {
	target, fstype string
	size, used     uint64
}

func readDF(t testing.TB, path string) df {
	t.Helper()
	out, err := exec.Command(testkit.Tool(t, "df"), "-B1", "--output=target,fstype,size,used", path).Output()
	if err != nil {
		t.Fatalf("df %s: %v", path, err)
	}
	lines := strings.Split(strings.TrimSpace(string(out)), "\n")
	f := strings.Fields(lines[len(lines)-1])
	if len(lines) != 2 || len(f) != 4 {
		t.Fatalf("df %s: %q", path, out)
	}
	size, err1 := strconv.ParseUint(f[2], 10, 64)
	used, err2 := strconv.ParseUint(f[3], 10, 64)
	if err1 != nil || err2 != nil {
		t.Fatalf("df %s: %q", path, out)
	}
	return df{f[0], f[1], size, used}
}

// TestMetricsOnlyRefusesCapture: -metrics-only captures nothing, so -pcap,
// -interface or -summary with it is a configuration error (exit 2) that
// says so, before any broker is asked; so is a -metrics.paths entry that
// does not exist or is not a directory. -check-config passes a valid one.
func TestMetricsOnlyRefusesCapture(t *testing.T) {
	file := "../../testdata/linktype-147-user0.pcap"
	for _, c := range []struct {
		args []string
		code int
		want string
	}{
		{[]string{"-metrics-only", "-pcap", file}, 2, "-metrics-only captures nothing: it cannot be combined with -pcap or -interface"},
		{[]string{"-metrics-only", "-interface", "lo"}, 2, "-metrics-only captures nothing: it cannot be combined with -pcap or -interface"},
		{[]string{"-metrics-only", "-summary"}, 2, "-metrics-only captures nothing: it cannot be combined with -summary"},
		{[]string{"-metrics-only", "-metrics.paths", "/nonexistent-netwatch-dir"}, 2, "-metrics.paths: stat /nonexistent-netwatch-dir: no such file or directory"},
		{[]string{"-metrics-only", "-metrics.paths", file}, 2, "-metrics.paths: " + file + " is not a directory"},
		{[]string{"-metrics-only", "-metrics.paths", " , "}, 2, ": no directory"},
		{[]string{}, 2, "want exactly one of -pcap and -interface (or -metrics-only)"},
		{[]string{"-metrics-only", "-metrics.paths", "/, " + t.TempDir(), "-check-config"}, 0, "configuration valid"},
	} {
		var stdout, stderr bytes.Buffer
		// an unreachable broker: a refusal must come before connecting
		args := append([]string{"-log.format", "text", "-http.addr", "", "-nats.url", "nats://127.0.0.1:1"}, c.args...)
		code := run(args, func(string) string { return "" }, &stdout, &stderr)
		if code != c.code || !strings.Contains(stderr.String(), c.want) {
			t.Errorf("agent %s: exit %d, want %d with %q; stderr: %s", strings.Join(args, " "), code, c.code, c.want, stderr.String())
		}
	}
}

// TestMetricsOnly runs `agent -metrics-only -metrics.paths DIR` as a
// process against a real JetStream, DIR on the tmpfs /dev/shm (not in the
// default disk list): it announces itself in the sensor registry with no
// capture interface, publishes pb.Metrics on netwatch.metrics.<sensor>
// (stored in METRICS, Nats-Msg-Id <sensor>.<boot>.metrics.<seq>) with no
// capture statistics, whose disks "/" and DIR's file system have df's
// size and a used figure between two df reads around the sample; SIGTERM
// ends it with exit 0.
func TestMetricsOnly(t *testing.T) {
	u, _, js := testkit.JetStream(t)
	dir, err := os.MkdirTemp("/dev/shm", "netwatch-metrics-only-")
	if err != nil {
		testkit.Unavailable(t, "a directory on the tmpfs /dev/shm: %v", err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if d := readDF(t, dir); d.fstype != "tmpfs" {
		testkit.Unavailable(t, "/dev/shm is %s, not tmpfs", d.fstype)
	}
	const sensor = "db-host-metrics"
	p := startAgent(t, "-metrics-only", "-sensor", sensor, "-nats.url", u, "-http.addr", "",
		"-metrics.interval", "200ms", "-metrics.paths", dir)
	stderr := p.stderr

	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var stream jetstream.Stream
	testkit.Eventually(t, 20*time.Second, func() bool {
		stream, err = js.Stream(ctx, schema.StreamMetrics)
		return err == nil
	}, "no METRICS stream: %v; agent: %s", err, stderr)
	cons, err := stream.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{schema.MetricsSubject(sensor)}})
	if err != nil {
		t.Fatal(err)
	}
	next := func() (*pb.Metrics, jetstream.Msg) {
		t.Helper()
		msg, err := cons.Next(jetstream.FetchMaxWait(20 * time.Second))
		if err != nil {
			t.Fatalf("no METRICS message: %v; agent: %s", err, stderr)
		}
		var m pb.Metrics
		if err := proto.Unmarshal(msg.Data(), &m); err != nil {
			t.Fatalf("METRICS message: %v", err)
		}
		return &m, msg
	}
	host, _ := os.Hostname()
	first, msg := next()
	if first.GetSensor() != sensor || first.GetBoot() == "" || first.GetHost() != host || first.GetMemTotalBytes() == 0 ||
		len(first.GetInterfaces()) == 0 || len(first.GetCaptures()) != 0 {
		t.Fatalf("message: sensor %q boot %q host %q mem %d, %d interfaces, captures %v", first.GetSensor(), first.GetBoot(),
			first.GetHost(), first.GetMemTotalBytes(), len(first.GetInterfaces()), first.GetCaptures())
	}
	if id, want := msg.Headers().Get("Nats-Msg-Id"), sensor+"."+first.GetBoot()+".metrics."+strconv.FormatUint(first.GetSeq(), 10); id != want {
		t.Errorf("Nats-Msg-Id %q, want %q", id, want)
	}

	kv, err := schema.OpenRegistry(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	regs, err := schema.List(ctx, kv, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(regs) != 1 || regs[0].Name != sensor || !regs[0].Online || regs[0].Boot != first.GetBoot() ||
		regs[0].Interfaces == nil || len(regs[0].Interfaces) != 0 || regs[0].Host != host {
		t.Errorf("registry: %+v, want %s online with boot %s and no capture interface", regs, sensor, first.GetBoot())
	}

	// Disk figures: a message sampled after one df read and received
	// before another must lie between them (other processes write to
	// both file systems meanwhile); a few tries for a write and its removal
	// between the reads.
	var last string
	seq := first.GetSeq()
	for try := 0; ; try++ {
		beforeRoot, beforeDir := readDF(t, "/"), readDF(t, dir)
		sampledAfter := time.Now().UnixNano()
		var m *pb.Metrics
		for m == nil || m.GetTimeNs() < sampledAfter {
			m, _ = next()
			if m.GetSeq() != seq+1 || m.GetBoot() != first.GetBoot() || len(m.GetCaptures()) != 0 {
				t.Fatalf("message seq %d boot %s captures %v after seq %d", m.GetSeq(), m.GetBoot(), m.GetCaptures(), seq)
			}
			seq++
		}
		afterRoot, afterDir := readDF(t, "/"), readDF(t, dir)
		ok := true
		last = ""
		for _, c := range []struct{ before, after df }{{beforeRoot, afterRoot}, {beforeDir, afterDir}} {
			var d *pb.DiskUsage
			for _, x := range m.GetDisks() {
				if x.GetMount() == c.before.target {
					d = x
				}
			}
			if d == nil {
				t.Fatalf("no disk %s in %v", c.before.target, m.GetDisks())
			}
			lo, hi := min(c.before.used, c.after.used), max(c.before.used, c.after.used)
			slo, shi := min(c.before.size, c.after.size), max(c.before.size, c.after.size)
			if d.GetTotalBytes() < slo || d.GetTotalBytes() > shi || d.GetUsedBytes() < lo || d.GetUsedBytes() > hi {
				ok = false
				last += " " + d.GetMount() + ": total " + strconv.FormatUint(d.GetTotalBytes(), 10) + " used " +
					strconv.FormatUint(d.GetUsedBytes(), 10) + ", df size " + strconv.FormatUint(slo, 10) + ".." +
					strconv.FormatUint(shi, 10) + " used " + strconv.FormatUint(lo, 10) + ".." + strconv.FormatUint(hi, 10) + ";"
			}
		}
		if ok {
			break
		}
		if try == 9 {
			t.Fatalf("after 10 samples:%s", last)
		}
	}

	p.stop(syscall.SIGTERM)
}

// proc is an agent started as a process of its own (TestMain).
type proc struct {
	t      *testing.T
	cmd    *exec.Cmd
	exited chan error
	stderr *bytes.Buffer
	ended  bool // stop saw it exit
}

// startAgent starts the test binary as `agent args...`; it is killed at
// the end of the test unless stop ended it.
func startAgent(t *testing.T, args ...string) *proc {
	t.Helper()
	p := &proc{t: t, cmd: exec.Command(os.Args[0], args...), exited: make(chan error, 1), stderr: &bytes.Buffer{}}
	p.cmd.Env = append(os.Environ(), runMainEnv+"=1")
	p.cmd.Stdout, p.cmd.Stderr = p.stderr, p.stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { p.exited <- p.cmd.Wait() }()
	t.Cleanup(func() {
		if !p.ended {
			p.cmd.Process.Kill()
			<-p.exited
		}
	})
	return p
}

// stop sends sig and wants exit status 0 with "agent stopped" logged
// within 15 s.
func (p *proc) stop(sig os.Signal) {
	p.t.Helper()
	if err := p.cmd.Process.Signal(sig); err != nil {
		p.t.Fatal(err)
	}
	select {
	case err := <-p.exited:
		p.ended = true
		if err != nil || !strings.Contains(p.stderr.String(), `"msg":"agent stopped"`) {
			p.t.Fatalf("after %v: %v; stderr: %s", sig, err, p.stderr)
		}
	case <-time.After(15 * time.Second):
		p.t.Fatalf("still running 15 s after %v; stderr: %s", sig, p.stderr)
	}
}

// TestMetricsOnlySIGINT: SIGINT (Ctrl-C) ends a metrics-only agent as
// SIGTERM does, exit 0, after its first message is stored.
func TestMetricsOnlySIGINT(t *testing.T) {
	u, nc, _ := testkit.JetStream(t)
	const sensor = "sigint-metrics"
	sub, err := nc.SubscribeSync(schema.MetricsSubject(sensor))
	if err != nil {
		t.Fatal(err)
	}
	p := startAgent(t, "-metrics-only", "-sensor", sensor, "-nats.url", u, "-http.addr", "", "-metrics.interval", "1h")
	if _, err := sub.NextMsg(20 * time.Second); err != nil {
		t.Fatalf("no METRICS message: %v; stderr: %s", err, p.stderr)
	}
	p.stop(syscall.SIGINT)
}
