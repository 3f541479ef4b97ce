package fleet_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/synadia-io/orbit.go/pcgroups"
	"google.golang.org/protobuf/proto"

	"netwatch/ctl/internal/cli"
	"netwatch/ctl/internal/perms"
	"netwatch/schema"
	"netwatch/schema/ops"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// ctl runs netwatchctl with args and fails the test on a non-zero exit.
func ctl(t *testing.T, args ...string) string {
	t.Helper()
	var out, errb bytes.Buffer
	if rc := cli.Run(args, func(string) string { return "" }, &out, &errb); rc != 0 {
		t.Fatalf("netwatchctl %v: exit %d: %s", args, rc, errb.String())
	}
	return out.String()
}

func runCtl(args []string, stdout, stderr *bytes.Buffer) int {
	return cli.Run(args, func(string) string { return "" }, stdout, stderr)
}

// operatorServer issues an operator with netwatchctl init and starts a
// JetStream server that includes its resolver.conf (operator mode: every
// client needs a user JWT signed by the NETWATCH account).
func operatorServer(t *testing.T) (dir, url string) {
	dir, url, _ = operatorServerLog(t)
	return dir, url
}

// operatorServerLog is operatorServer with the server logging to the
// returned file (permission violations are logged there).
func operatorServerLog(t *testing.T) (dir, url, logFile string) {
	t.Helper()
	dir = t.TempDir()
	ctl(t, "init", "-dir", dir)
	logFile = filepath.Join(dir, "server.log")
	s := startConf(t, dir, "server", `
server_name: nw-test
listen: 127.0.0.1:-1
max_payload: 8MB
max_control_line: 16KB # role JWTs with their permission lists exceed the 4 KB default in CONNECT
jetstream { store_dir: `+q(filepath.Join(dir, "js"))+` }
include resolver.conf
log_file: `+q(logFile)+`
`)
	return dir, s.ClientURL(), logFile
}

// violations collects the asynchronous errors the server sends a client
// (-ERR 'Permissions Violation ...').
type violations struct {
	mu   sync.Mutex
	errs []string
}

func (v *violations) handler(_ *nats.Conn, _ *nats.Subscription, err error) {
	v.mu.Lock()
	v.errs = append(v.errs, err.Error())
	v.mu.Unlock()
}

func (v *violations) all() []string {
	v.mu.Lock()
	defer v.mu.Unlock()
	return slices.Clone(v.errs)
}

func (v *violations) find(sub string) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	for _, e := range v.errs {
		if strings.Contains(e, sub) {
			return nil
		}
	}
	return errors.New("no error containing " + sub + " yet; have " + strings.Join(v.errs, " | "))
}

// TestSensorCannotUseAnotherName issues credentials for sensor-a with
// netwatchctl creds and shows the broker refusing everything outside
// sensor-a's subjects: publishing as sensor-b (packets, metrics, registry
// record), subscribing to any stream subject, creating or deleting a
// stream, subscribing to nats.go's shared inbox _INBOX.> or to sensor-b's
// inbox _INBOX_sensor-b.>, reading PACKETS' or METRICS' stream info (whose
// subjects_filter lists every sensor's subjects) (a sensor's replies come to its own inbox,
// perms.SensorInbox; with the default prefix its publish gets no ack).
// What sensor-a may do still works, and PACKETS holds exactly the batches
// sensor-a published in its own name.
func TestSensorCannotUseAnotherName(t *testing.T) {
	dir, url := operatorServer(t)
	admin := filepath.Join(dir, "admin.creds")
	ctl(t, "creds", "-dir", dir, "-role", "admin", "-o", admin)
	ctl(t, "provision", "-nats.url", url, "-nats.creds", admin, "-replicas", "1", "-timeout", "20s")
	sensorA := filepath.Join(dir, "sensor-a.creds")
	ctl(t, "creds", "-dir", dir, "-sensor", "sensor-a", "-o", sensorA)

	// Without credentials the server refuses the connection outright.
	if nc, err := nats.Connect(url, nats.NoReconnect()); err == nil {
		nc.Close()
		t.Fatal("connected without credentials")
	} else {
		t.Logf("no credentials: %v", err)
	}

	// sensor-a connects as the agent does, with its own inbox prefix
	// (_INBOX_sensor-a): publish acks and API replies come back there.
	var v violations
	nc, err := nats.Connect(url, nats.UserCredentials(sensorA), nats.ErrorHandler(v.handler),
		nats.CustomInboxPrefix(perms.SensorInbox("sensor-a")))
	if err != nil {
		t.Fatalf("connect as sensor-a: %v", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// Its own subjects: acknowledged by the stream.
	if _, err := js.Publish(ctx, schema.PacketsSubject("sensor-a", 7), []byte("batch-a"), jetstream.WithMsgID("sensor-a/1/1")); err != nil {
		t.Fatalf("sensor-a publishing its own packets: %v", err)
	}
	if _, err := js.Publish(ctx, schema.MetricsSubject("sensor-a"), []byte("m"), jetstream.WithMsgID("sensor-a/1/m1")); err != nil {
		t.Fatalf("sensor-a publishing its own metrics: %v", err)
	}
	kv, err := schema.OpenRegistry(ctx, js)
	if err != nil {
		t.Fatalf("sensor-a opening the registry: %v", err)
	}
	if _, err := schema.Announce(ctx, kv, schema.SensorRecord{Name: "sensor-a", Host: "h1"}); err != nil {
		t.Fatalf("sensor-a announcing itself: %v", err)
	}

	// Another sensor's subjects: the server refuses the publish.
	short := func() (context.Context, context.CancelFunc) { return context.WithTimeout(ctx, 2*time.Second) }
	for _, subj := range []string{schema.PacketsSubject("sensor-b", 7), schema.MetricsSubject("sensor-b")} {
		c, cf := short()
		_, err := js.Publish(c, subj, []byte("forged"), jetstream.WithMsgID("forged-"+subj))
		cf()
		if err == nil {
			t.Fatalf("sensor-a published to %s and got an ack", subj)
		}
		waitFor(t, 5*time.Second, "permissions violation for "+subj, func() error {
			return v.find(`Permissions Violation for Publish to "` + subj + `"`)
		})
		t.Logf("sensor-a publishing to %s: %v; server: Permissions Violation for Publish to %q", subj, err, subj)
	}
	c, cf := short()
	_, err = schema.Announce(c, kv, schema.SensorRecord{Name: "sensor-b", Host: "forged"})
	cf()
	if err == nil {
		t.Fatal("sensor-a wrote sensor-b's registry record")
	}
	waitFor(t, 5*time.Second, "registry violation", func() error {
		return v.find(`Permissions Violation for Publish to "$KV.SENSORS.sensor-b"`)
	})

	// Reading: a subscription to any stream subject is refused.
	if _, err := nc.SubscribeSync(schema.FlowsPrefix + ".>"); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 5*time.Second, "subscribe violation", func() error {
		return v.find(`Permissions Violation for Subscription to "netwatch.flows.>"`)
	})
	// Replies meant for others: nats.go's shared inbox (_INBOX.>, every
	// stage's replies, pulled messages included) and sensor-b's inbox are
	// refused; its own inbox is not.
	for _, subj := range []string{"_INBOX.>", "_INBOX.*", perms.SensorInbox("sensor-b") + ".>", "_INBOX_sensor-b.abc", ">"} {
		if _, err := nc.SubscribeSync(subj); err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "subscribe violation for "+subj, func() error {
			return v.find(`Permissions Violation for Subscription to "` + subj + `"`)
		})
		t.Logf("sensor-a subscribing to %s: server: Permissions Violation for Subscription to %q", subj, subj)
	}
	if _, err := nc.SubscribeSync(perms.SensorInbox("sensor-a") + ".x"); err != nil {
		t.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	for _, e := range v.all() {
		if strings.Contains(e, perms.SensorInbox("sensor-a")+".") {
			t.Errorf("sensor-a refused its own inbox: %s", e)
		}
	}
	// The same credentials with nats.go's default inbox prefix get no
	// publish ack: the broker refuses the reply subscription.
	var dv violations
	dnc, err := nats.Connect(url, nats.UserCredentials(sensorA), nats.ErrorHandler(dv.handler))
	if err != nil {
		t.Fatal(err)
	}
	defer dnc.Close()
	djs, _ := jetstream.New(dnc)
	c, cf = short()
	_, err = djs.Publish(c, schema.PacketsSubject("sensor-a", 8), []byte("batch-default-inbox"), jetstream.WithMsgID("sensor-a/1/2"))
	cf()
	if err == nil {
		t.Error("sensor-a with the default inbox prefix got a publish ack")
	}
	waitFor(t, 5*time.Second, "default inbox violation", func() error {
		return dv.find(`Permissions Violation for Subscription to "_INBOX.`)
	})
	t.Logf("sensor-a with nats.go's default inbox: publish %v; server: %s", err, dv.all()[0])
	dnc.Close()
	// Provisioning: creating or deleting a stream is refused.
	c, cf = short()
	_, err = js.CreateStream(c, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	cf()
	if err == nil {
		t.Fatal("sensor-a created a stream")
	}
	c, cf = short()
	err = js.DeleteStream(c, schema.StreamPackets)
	cf()
	if err == nil {
		t.Fatal("sensor-a deleted PACKETS")
	}
	waitFor(t, 5*time.Second, "delete violation", func() error {
		return v.find(`Permissions Violation for Publish to "$JS.API.STREAM.DELETE.PACKETS"`)
	})
	// Other sensors' subjects and counts: PACKETS' and METRICS' stream info
	// (subjects_filter) is refused; the agent needs neither.
	for _, st := range []string{schema.StreamPackets, schema.StreamMetrics} {
		c, cf = short()
		_, err = js.Stream(c, st)
		cf()
		if err == nil {
			t.Errorf("sensor-a read %s's stream info", st)
		}
		waitFor(t, 5*time.Second, "stream info violation", func() error {
			return v.find(`Permissions Violation for Publish to "$JS.API.STREAM.INFO.` + st + `"`)
		})
	}

	// The independent count: what the streams hold, read as admin.
	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.New(anc)
	// PACKETS: the batch of its own inbox and the one whose ack the default
	// inbox lost (a sensor may publish there; only the reply was refused).
	for stream, want := range map[string]map[string]uint64{
		schema.StreamPackets: {"netwatch.packets.sensor-a.7": 1, "netwatch.packets.sensor-a.8": 1},
		schema.StreamMetrics: {"netwatch.metrics.sensor-a": 1}} {
		st, err := ajs.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		si, err := st.Info(ctx, jetstream.WithSubjectFilter(stream2prefix(stream)+".>"))
		if err != nil {
			t.Fatal(err)
		}
		if si.State.Msgs != uint64(len(want)) || !maps.Equal(si.State.Subjects, want) {
			t.Errorf("%s holds %d messages on %v, want %v", stream, si.State.Msgs, si.State.Subjects, want)
		}
	}
	// The api's credentials read the registry (List: stream info, an ordered
	// consumer for the keys, direct gets); only sensor-a's record is there.
	apiCreds := filepath.Join(dir, "api.creds")
	ctl(t, "creds", "-dir", dir, "-role", "api", "-o", apiCreds)
	var av violations
	apinc, err := nats.Connect(url, nats.UserCredentials(apiCreds), nats.ErrorHandler(av.handler),
		nats.CustomInboxPrefix(ops.StageInbox("api")))
	if err != nil {
		t.Fatal(err)
	}
	defer apinc.Close()
	apijs, _ := jetstream.New(apinc)
	akv, err := schema.OpenRegistry(ctx, apijs)
	if err != nil {
		t.Fatalf("api opening the registry: %v", err)
	}
	got, err := schema.List(ctx, akv, time.Now(), time.Minute)
	if err != nil {
		t.Fatalf("api listing the registry: %v (%v)", err, av.all())
	}
	if len(got) != 1 || got[0].Name != "sensor-a" || got[0].Host != "h1" || !got[0].Online {
		t.Errorf("registry = %+v, want only sensor-a on h1, online", got)
	}
	if e := av.all(); len(e) > 0 {
		t.Errorf("api reading the registry: %v", e)
	}
}

func stream2prefix(stream string) string {
	switch stream {
	case schema.StreamPackets:
		return schema.PacketsPrefix
	case schema.StreamMetrics:
		return schema.MetricsPrefix
	}
	return "netwatch"
}

// buildStage builds a stage's command (./<stage>/cmd/<stage> of this tree)
// into dir and returns the binary; with NETWATCH_BIN set it takes the
// binary from that directory instead (e.g. bin/ of make build).
func buildStage(t *testing.T, root, dir, stage string) string {
	t.Helper()
	if d := os.Getenv("NETWATCH_BIN"); d != "" {
		return filepath.Join(d, stage)
	}
	bin := filepath.Join(dir, stage)
	build := exec.Command("go", "build", "-trimpath", "-o", bin, "./"+stage+"/cmd/"+stage)
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build %s: %v\n%s", stage, err, out)
	}
	return bin
}

// startReady starts a stage binary with args plus -http.addr and waits for
// its /readyz.
func startReady(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	addr := freeAddr(t)
	pr := startProc(t, name, append(args, "-http.addr", addr, "-log.format", "text")...)
	waitReady(t, pr, addr)
	return pr
}

// waitReady waits for the /readyz at addr of the stage pr started.
func waitReady(t *testing.T, pr *proc, addr string) {
	t.Helper()
	name := pr.name
	waitFor(t, 20*time.Second, name+" ready", func() error {
		select {
		case err := <-pr.done:
			pr.done <- err
			return fmt.Errorf("exited: %v\n%s", err, tail(pr.output(), 10))
		default:
		}
		r, err := http.Get("http://" + addr + "/readyz")
		if err != nil {
			return fmt.Errorf("%v\n%s", err, tail(pr.output(), 10))
		}
		r.Body.Close()
		if r.StatusCode != 200 {
			return fmt.Errorf("readyz %d\n%s", r.StatusCode, tail(pr.output(), 10))
		}
		return nil
	})
}

// logViolations returns the lines of a server log that report a
// permissions violation.
func logViolations(t *testing.T, files ...string) []string {
	t.Helper()
	var out []string
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil && !os.IsNotExist(err) {
			t.Fatal(err)
		}
		for _, l := range strings.Split(string(data), "\n") {
			if strings.Contains(l, "Violation") {
				out = append(out, l)
			}
		}
	}
	return out
}

// TestStageCredentials runs the enricher (two members of consumer group
// perms.EnricherGroup) and the detector (flow rules, the ARP durable
// detector-arp, the health rules' METRICS consumer and lag checks, and a
// rescore run over FLOWS) from this tree with netwatchctl's role
// credentials and -nats.provision=false on an operator-mode server, fed by
// sensor-a's credentials. The detector is started before netwatchctl
// provision: it waits for the streams, then becomes ready.
// Their real work goes through with no permission violation in the server
// log: the UDP exchange sensor-a published (3 packets of 60 IP bytes out,
// 2 of 76 back, counted by hand) comes out of FLOWS as one record, the
// detector's ARP durable has read and acked both PACKETS messages, rescore
// reads the record back. Then calls outside each role are refused: the
// enricher deleting PACKETS, shrinking it, re-creating its own durable or
// pulling the sink's durable, the detector purging FLOWS, creating a
// stream, deleting its own durable, re-filtering sink-flows, pulling the
// sink's METRICS durable or the enrichers' work queue.
func TestStageCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the enricher and the detector (~20 s)")
	}
	root := testkit.Root(t)
	dir, url, logFile := operatorServerLog(t)
	t.Cleanup(func() {
		if t.Failed() {
			data, _ := os.ReadFile(logFile)
			t.Logf("--- server log:\n%s", tail(string(data), 30))
		}
	})
	bins := t.TempDir()
	enricher, detector := buildStage(t, root, bins, "enricher"), buildStage(t, root, bins, "detector")
	admin := filepath.Join(dir, "admin.creds")
	ctl(t, "creds", "-dir", dir, "-role", "admin", "-o", admin)
	creds := map[string]string{}
	for _, r := range []string{"enricher", "detector"} {
		creds[r] = filepath.Join(dir, r+".creds")
		ctl(t, "creds", "-dir", dir, "-role", r, "-o", creds[r])
	}
	sensorA := filepath.Join(dir, "sensor-a.creds")
	ctl(t, "creds", "-dir", dir, "-sensor", "sensor-a", "-o", sensorA)

	// The stages may not provision (their users cannot create streams).
	// Started with the default -nats.provision=true, the detector stops with
	// an error that says so (it looped on permission violations before).
	refused := exec.Command(detector, "-nats.url", url, "-nats.creds", creds["detector"], "-http.addr", "", "-log.format", "text")
	out, err := refused.CombinedOutput()
	if err == nil || !strings.Contains(string(out), "may not create or update the streams") || !strings.Contains(string(out), "-nats.provision=false") {
		t.Fatalf("detector with its role's credentials and -nats.provision=true: %v, want an exit naming -nats.provision=false:\n%s", err, tail(string(out), 10))
	}
	t.Logf("detector with -nats.provision=true: %v: %s", err, tail(string(out), 1))
	waitFor(t, 5*time.Second, "the refused request in the server log", func() error {
		if len(logViolations(t, logFile)) == 0 {
			return errors.New("no violation logged yet")
		}
		return nil
	})
	refusedLines := len(logViolations(t, logFile)) // the stages' real work must add none
	// Nor may a stage create what provisioning will: a stream created
	// first with a source from ALERTS would let it read the alerts.
	for _, c := range []struct{ role, stream string }{{"enricher", schema.StreamPackets + "-" + perms.EnricherGroup},
		{"enricher", "KV_" + schema.CheckpointBucket}, {"enricher", "KV_elastic-consumer-groups"},
		{"detector", "KV_" + schema.HostScoresBucket}, {"detector", "OBJ_" + schema.ModelsBucket},
		{"detector", schema.StreamFlows + "-" + perms.DetectorGroup}} {
		var v violations
		cnc, err := nats.Connect(url, nats.UserCredentials(creds[c.role]), nats.ErrorHandler(v.handler),
			nats.CustomInboxPrefix(ops.StageInbox(c.role)))
		if err != nil {
			t.Fatal(err)
		}
		cjs, _ := jetstream.New(cnc)
		cctx, ccancel := context.WithTimeout(context.Background(), 3*time.Second)
		_, err = cjs.CreateStream(cctx, jetstream.StreamConfig{Name: c.stream, Subjects: []string{"stolen." + c.role},
			Sources: []*jetstream.StreamSource{{Name: schema.StreamAlerts}}})
		ccancel()
		if err == nil {
			t.Errorf("%s could create %s before provisioning", c.role, c.stream)
		}
		waitFor(t, 5*time.Second, c.role+" creating "+c.stream, func() error {
			return v.find(`Permissions Violation for Publish to "$JS.API.STREAM.CREATE.` + c.stream)
		})
		cnc.Close()
	}
	waitFor(t, 5*time.Second, "the refused creates in the server log", func() error {
		if n := len(logViolations(t, logFile)); n < refusedLines+6 {
			return fmt.Errorf("%d violations logged", n)
		}
		return nil
	})
	refusedLines = len(logViolations(t, logFile))
	// Started with -nats.provision=false before netwatchctl provision, the
	// detector waits for it.
	detAddr := freeAddr(t)
	det := startProc(t, "detector", detector, "-nats.url", url, "-nats.creds", creds["detector"], "-nats.provision=false",
		"-health.check", "1s", "-http.addr", detAddr, "-log.format", "text")
	waitFor(t, 20*time.Second, "the detector waiting for the streams", func() error {
		if !strings.Contains(det.output(), "waiting for the streams") {
			return fmt.Errorf("%s", tail(det.output(), 5))
		}
		return nil
	})
	ctl(t, "provision", "-nats.url", url, "-nats.creds", admin, "-replicas", "1", "-timeout", "20s")
	waitReady(t, det, detAddr)

	procs := []*proc{det}
	// two detectors as members of the detectors' consumer groups on FLOWS
	// (and each reading PACKETS through an ordered consumer for the live
	// rules): they join the groups netwatchctl provision made
	groupAddrs := map[string]string{}
	for _, m := range []string{"d1", "d2"} {
		groupAddrs[m] = freeAddr(t)
		p := startProc(t, "detector "+m, detector, "-nats.url", url, "-nats.creds", creds["detector"], "-nats.provision=false",
			"-consume.group", perms.DetectorGroup, "-consume.member", m, "-health.check", "0", "-models.bucket", "",
			"-http.addr", groupAddrs[m], "-log.format", "text")
		waitReady(t, p, groupAddrs[m])
		procs = append(procs, p)
	}
	for _, m := range []string{"m1", "m2"} {
		procs = append(procs, startReady(t, "enricher "+m, enricher, "-nats.url", url, "-nats.creds", creds["enricher"],
			"-nats.provision=false", "-instance", "e-"+m, "-consume.group", perms.EnricherGroup, "-consume.member", m,
			"-consume.ack-wait", "5s", "-consume.keepalive", "2s",
			"-flow.idle-timeout.udp", "1s", "-flow.wall-tick", "200ms"))
	}
	t.Cleanup(func() {
		if t.Failed() {
			for _, p := range procs {
				t.Logf("--- %s:\n%s", p.name, tail(p.output(), 20))
			}
		}
	})

	// sensor-a: a DNS-like UDP exchange and an ARP reply, live timestamps.
	nc, err := nats.Connect(url, nats.UserCredentials(sensorA), nats.CustomInboxPrefix(perms.SensorInbox("sensor-a")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	a, b := []byte{10, 0, 0, 1}, []byte{10, 0, 0, 2}
	now := time.Now().UnixNano()
	var pkts []*pb.PacketSummary
	for i := range 5 {
		p := &pb.PacketSummary{TsNs: now + int64(i)*int64(time.Millisecond), SrcAddr: a, DstAddr: b, SrcPort: 40000, DstPort: 53,
			Proto: 17, IpBytes: 60, PayloadBytes: 32}
		if i >= 3 { // replies
			p.SrcAddr, p.DstAddr, p.SrcPort, p.DstPort, p.IpBytes, p.PayloadBytes = b, a, 53, 40000, 76, 48
		}
		pkts = append(pkts, p)
	}
	bucket := schema.PacketBucket(a, 40000, b, 53, 17, 0)
	arpBucket := schema.AddrBucket(b)
	for i, batch := range []*pb.PacketBatch{
		{Sensor: "sensor-a", Boot: "boot1", Seq: 1, Bucket: bucket, Packets: pkts, SentNs: now},
		{Sensor: "sensor-a", Boot: "boot1", Seq: 2, Bucket: arpBucket, SentNs: now, Arp: []*pb.ArpSummary{{TsNs: now, Op: 2,
			SenderMac: []byte{2, 0, 0, 0, 0, 2}, SenderIp: b, TargetMac: []byte{2, 0, 0, 0, 0, 1}, TargetIp: a}}},
	} {
		data, _ := proto.Marshal(batch)
		if _, err := js.Publish(ctx, schema.PacketsSubject("sensor-a", batch.Bucket), data,
			jetstream.WithMsgID(fmt.Sprintf("sensor-a.boot1.%d", i+1))); err != nil {
			t.Fatalf("sensor-a publish: %v", err)
		}
	}

	// Read as admin: the flow record in FLOWS, the ARP durable's progress.
	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.New(anc)
	var flows []*pb.Flow
	waitFor(t, 60*time.Second, "the flow record in FLOWS", func() error {
		st, err := ajs.Stream(ctx, schema.StreamFlows)
		if err != nil {
			return err
		}
		oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			return err
		}
		defer ajs.DeleteConsumer(ctx, schema.StreamFlows, oc.CachedInfo().Name)
		flows = nil
		mb, err := oc.Fetch(100, jetstream.FetchMaxWait(300*time.Millisecond))
		if err != nil {
			return err
		}
		for m := range mb.Messages() {
			var fb pb.FlowBatch
			if err := proto.Unmarshal(m.Data(), &fb); err != nil {
				return err
			}
			flows = append(flows, fb.Flows...)
		}
		if len(flows) == 0 {
			return errors.New("no flow yet")
		}
		return nil
	})
	time.Sleep(time.Second) // a second record would be a split flow
	if len(flows) != 1 {
		t.Fatalf("FLOWS holds %d records, want 1: %v", len(flows), flows)
	}
	f := flows[0]
	if f.OrigPort != 40000 || f.RespPort != 53 || f.OrigPkts != 3 || f.OrigIpBytes != 180 || f.RespPkts != 2 || f.RespIpBytes != 152 {
		t.Errorf("flow %d->%d pkts %d/%d ip bytes %d/%d, want 40000->53, 3/2 packets, 180/152 IP bytes",
			f.OrigPort, f.RespPort, f.OrigPkts, f.RespPkts, f.OrigIpBytes, f.RespIpBytes)
	}
	waitFor(t, 30*time.Second, "detector-arp read and acked both PACKETS messages", func() error {
		ci, err := ajs.Consumer(ctx, schema.StreamPackets, perms.ConsumerDetectorARP)
		if err != nil {
			return err
		}
		info, err := ci.Info(ctx)
		if err != nil {
			return err
		}
		if info.AckFloor.Stream != 2 || info.NumPending != 0 {
			return fmt.Errorf("ack floor %d, pending %d", info.AckFloor.Stream, info.NumPending)
		}
		return nil
	})
	// The group members: 8 of the 16 partitions of each group each, and
	// the flow record through both groups' work queues (acked: none left).
	for m, addr := range groupAddrs {
		waitFor(t, 10*time.Second, "detector "+m+" partitions", func() error {
			body, err := httpGet("http://" + addr + "/metrics")
			if err != nil {
				return err
			}
			for _, g := range []string{"originator", "target"} {
				if l := `netwatch_detector_group_partitions{group="` + g + `"} 8`; !strings.Contains(body, l) {
					return fmt.Errorf("no %s in /metrics", l)
				}
			}
			return nil
		})
	}
	for _, g := range []string{perms.DetectorGroup, schema.DetectorTargetGroup(perms.DetectorGroup)} {
		waitFor(t, 30*time.Second, "the flow record through group "+g, func() error {
			st, err := ajs.Stream(ctx, schema.StreamFlows+"-"+g)
			if err != nil {
				return err
			}
			info, err := st.Info(ctx)
			if err != nil {
				return err
			}
			if info.State.LastSeq != 1 || info.State.Msgs != 0 {
				return fmt.Errorf("work queue %s: last seq %d, %d messages left", st.CachedInfo().Config.Name, info.State.LastSeq, info.State.Msgs)
			}
			return nil
		})
	}
	// The health rules: the METRICS consumer runs and the lag checks (every
	// 1 s) have had time to read every durable's info.
	waitFor(t, 10*time.Second, "health checks", func() error {
		if !strings.Contains(det.output(), "health checks") {
			return fmt.Errorf("%s", tail(det.output(), 5))
		}
		return nil
	})
	time.Sleep(2 * time.Second)
	// rescore: an ordered consumer on FLOWS with the detector's credentials.
	rs := exec.Command(detector, "rescore", "-from", time.Now().Add(-time.Hour).UTC().Format(time.RFC3339),
		"-run", "creds-test", "-nats.url", url, "-nats.creds", creds["detector"], "-http.addr", "", "-log.format", "text")
	var rout, rerr bytes.Buffer
	rs.Stdout, rs.Stderr = &rout, &rerr
	if err := rs.Run(); err != nil {
		t.Fatalf("detector rescore: %v\n%s", err, rerr.String())
	}
	var sum struct {
		Flows int `json:"flows"`
	}
	if err := json.Unmarshal(rout.Bytes(), &sum); err != nil || sum.Flows != 1 {
		t.Errorf("rescore summary %s (%v), want 1 flow", rout.String(), err)
	}
	for _, p := range procs {
		if err := p.stop(30 * time.Second); err != nil {
			t.Errorf("%s: %v", p.name, err)
		}
	}
	if v := logViolations(t, logFile)[refusedLines:]; len(v) > 0 {
		t.Errorf("the stages' real work hit %d permission violations:\n%s", len(v), strings.Join(v, "\n"))
	}
	if o := det.output(); strings.Contains(o, "rule stopped") || strings.Contains(o, "health: ") {
		t.Errorf("detector: an auxiliary consumer failed:\n%s", tail(o, 20))
	}

	// Outside each role: refused by the server.
	type call struct {
		role, what, subject string
		do                  func(context.Context, jetstream.JetStream) error
	}
	// pullOne sends the pull request itself (no consumer info first, which
	// the role may not read either): the refusal must be of the pull.
	pullOne := func(stream, durable string) func(context.Context, jetstream.JetStream) error {
		return func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.Conn().RequestWithContext(ctx, "$JS.API.CONSUMER.MSG.NEXT."+stream+"."+durable,
				[]byte(`{"batch":1,"expires":1000000000}`))
			return err
		}
	}
	wq := schema.StreamPackets + "-" + perms.EnricherGroup
	for _, c := range []call{
		{"enricher", "delete PACKETS", "$JS.API.STREAM.DELETE.PACKETS", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, schema.StreamPackets)
		}},
		{"enricher", "pull the sink's FLOWS durable", "$JS.API.CONSUMER.MSG.NEXT.FLOWS.sink-flows", pullOne(schema.StreamFlows, schema.ConsumerSinkFlows)},
		{"enricher", "shrink PACKETS (provisioning is admin's)", "$JS.API.STREAM.UPDATE.PACKETS", func(ctx context.Context, js jetstream.JetStream) error {
			for _, cfg := range schema.StreamConfigs(schema.StreamOptions{}) {
				if cfg.Name == schema.StreamPackets {
					cfg.MaxBytes = 1 << 20
					_, err := js.UpdateStream(ctx, cfg)
					return err
				}
			}
			return errors.New("no PACKETS in the schema")
		}},
		{"enricher", "re-create its own durable", "$JS.API.CONSUMER.CREATE.PACKETS.enricher", func(ctx context.Context, js jetstream.JetStream) error {
			for _, cd := range schema.ConsumerConfigs(schema.StreamOptions{}) {
				if cd.Config.Durable == schema.ConsumerEnricher {
					_, err := js.CreateOrUpdateConsumer(ctx, cd.Stream, cd.Config)
					return err
				}
			}
			return errors.New("no enricher durable in the schema")
		}},
		{"detector", "re-filter the sink's FLOWS durable", "$JS.API.CONSUMER.CREATE.FLOWS.sink-flows", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateOrUpdateConsumer(ctx, schema.StreamFlows, jetstream.ConsumerConfig{Durable: schema.ConsumerSinkFlows,
				FilterSubject: schema.FlowsPrefix + ".nothing", AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}},
		{"enricher", "add a source to its checkpoint bucket", "$JS.API.STREAM.UPDATE.KV_" + schema.CheckpointBucket, func(ctx context.Context, js jetstream.JetStream) error {
			cfg := schema.CheckpointBucketConfig(1)
			_, err := js.UpdateKeyValue(ctx, cfg)
			return err
		}},
		{"detector", "update its host scores bucket", "$JS.API.STREAM.UPDATE.KV_" + schema.HostScoresBucket, func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.UpdateKeyValue(ctx, schema.HostScoresConfig(1, time.Hour))
			return err
		}},
		{"detector", "create a stream", "$JS.API.STREAM.CREATE.EVIL", func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
			return err
		}},
		{"detector", "create a consumer group", "$JS.API.DIRECT.GET.KV_elastic-consumer-groups.$KV.elastic-consumer-groups.FLOWS.evil",
			func(ctx context.Context, js jetstream.JetStream) error {
				_, err := pcgroups.CreateElastic(ctx, js, schema.StreamFlows, "evil", 4, []pcgroups.PartitioningFilter{
					{Filter: schema.DetectorGroupFilterSubject, PartitioningWildcards: schema.DetectorOrigWildcards}}, 0, 0)
				return err
			}},
		{"detector", "delete its group's work queue", "$JS.API.STREAM.DELETE.FLOWS-" + perms.DetectorGroup, func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteStream(ctx, schema.StreamFlows+"-"+perms.DetectorGroup)
		}},
		{"detector", "purge FLOWS", "$JS.API.STREAM.PURGE.FLOWS", func(ctx context.Context, js jetstream.JetStream) error {
			s, err := js.Stream(ctx, schema.StreamFlows)
			if err != nil {
				return err
			}
			return s.Purge(ctx)
		}},
		{"detector", "delete its own durable", "$JS.API.CONSUMER.DELETE.FLOWS.detector", func(ctx context.Context, js jetstream.JetStream) error {
			return js.DeleteConsumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
		}},
		{"detector", "pull the sink's METRICS durable", "$JS.API.CONSUMER.MSG.NEXT.METRICS.sink-metrics", pullOne(schema.StreamMetrics, schema.ConsumerSinkMetrics)},
		{"detector", "read the enrichers' work queue", "$JS.API.CONSUMER.CREATE." + wq, func(ctx context.Context, js jetstream.JetStream) error {
			_, err := js.OrderedConsumer(ctx, wq, jetstream.OrderedConsumerConfig{MaxResetAttempts: 1})
			return err
		}},
	} {
		var v violations
		cnc, err := nats.Connect(url, nats.UserCredentials(creds[c.role]), nats.ErrorHandler(v.handler),
			nats.CustomInboxPrefix(ops.StageInbox(c.role)))
		if err != nil {
			t.Fatal(err)
		}
		cjs, _ := jetstream.New(cnc)
		cctx, ccancel := context.WithTimeout(ctx, 3*time.Second)
		err = c.do(cctx, cjs)
		ccancel()
		if err == nil {
			t.Errorf("%s could %s", c.role, c.what)
		}
		waitFor(t, 5*time.Second, c.role+": "+c.what, func() error {
			return v.find(`Permissions Violation for Publish to "` + c.subject)
		})
		t.Logf("%s: %s refused (%v)", c.role, c.what, err)
		cnc.Close()
	}
	if v := logViolations(t, logFile); len(v) == 0 {
		t.Error("the server log shows no violation for the refused calls: the log scan above proves nothing")
	}
}

// TestStageCredentialsAPI shows the api's credentials confined to
// ephemeral consumers: a create request on a stage's durable name (which
// would rewrite its configuration: the QA moved sink-flows' filter with
// the api's credentials) is refused by the server for sink-flows,
// sink-alerts, the detector's and the enricher's durables, and sink-flows
// keeps the schema's filter; an ordered consumer on FLOWS (replay) still
// works with no violation. The api may subscribe to its own inbox only
// (ops.StageInbox("api")): _INBOX.>, the sink's and the enricher's inboxes
// and > are refused.
func TestStageCredentialsAPI(t *testing.T) {
	dir, url, logFile := operatorServerLog(t)
	admin := filepath.Join(dir, "admin.creds")
	ctl(t, "creds", "-dir", dir, "-role", "admin", "-o", admin)
	ctl(t, "provision", "-nats.url", url, "-nats.creds", admin, "-replicas", "1", "-timeout", "20s")
	api := filepath.Join(dir, "api.creds")
	ctl(t, "creds", "-dir", dir, "-role", "api", "-o", api)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	var v violations
	nc, err := nats.Connect(url, nats.UserCredentials(api), nats.ErrorHandler(v.handler),
		nats.CustomInboxPrefix(ops.StageInbox("api")))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	st, err := js.Stream(ctx, schema.StreamFlows)
	if err != nil {
		t.Fatal(err)
	}
	oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatalf("api ordered consumer on FLOWS: %v", err)
	}
	if _, err := oc.Fetch(1, jetstream.FetchMaxWait(300*time.Millisecond)); err != nil {
		t.Fatalf("api fetch from its ordered consumer: %v", err)
	}
	if e := v.all(); len(e) > 0 {
		t.Fatalf("api replay hit violations: %v", e)
	}
	for _, d := range []struct{ stream, durable, filter string }{
		{schema.StreamFlows, schema.ConsumerSinkFlows, schema.FlowsPrefix + ".x"},
		{schema.StreamAlerts, schema.ConsumerSinkAlerts, ""},
		{schema.StreamFlows, schema.ConsumerDetector, ""},
		{schema.StreamPackets, schema.ConsumerEnricher, schema.PacketsPrefix + ".x.>"},
		{schema.StreamPackets, perms.ConsumerDetectorARP, ""},
	} {
		cctx, ccancel := context.WithTimeout(ctx, 2*time.Second)
		_, err := js.CreateOrUpdateConsumer(cctx, d.stream, jetstream.ConsumerConfig{Durable: d.durable,
			FilterSubject: d.filter, AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: 1})
		ccancel()
		if err == nil {
			t.Errorf("api could rewrite %s's durable %s", d.stream, d.durable)
		}
		subj := "$JS.API.CONSUMER.CREATE." + d.stream + "." + d.durable
		waitFor(t, 5*time.Second, "api rewriting "+d.durable, func() error {
			return v.find(`Permissions Violation for Publish to "` + subj)
		})
		t.Logf("api: create/update of %s.%s refused (%v)", d.stream, d.durable, err)
	}
	// The sensors' packet summaries: no consumer on PACKETS (its info and
	// consumer list for the pipeline page stay readable).
	if _, err := js.Stream(ctx, schema.StreamPackets); err != nil {
		t.Errorf("api: PACKETS stream info: %v", err)
	}
	pctx, pcancel := context.WithTimeout(ctx, 2*time.Second)
	_, err = js.OrderedConsumer(pctx, schema.StreamPackets, jetstream.OrderedConsumerConfig{MaxResetAttempts: 1})
	pcancel()
	if err == nil {
		t.Error("api could read PACKETS with an ordered consumer")
	}
	waitFor(t, 5*time.Second, "api reading PACKETS", func() error {
		return v.find(`Permissions Violation for Publish to "$JS.API.CONSUMER.CREATE.` + schema.StreamPackets + `.`)
	})
	// Other roles' replies: the api has only its own inbox (ops.StageInbox).
	for _, subj := range []string{"_INBOX.>", "_INBOX.abc", ops.StageInbox("sink") + ".>", ops.StageInbox("enricher") + ".x", ">"} {
		sub, err := nc.SubscribeSync(subj)
		if err != nil {
			t.Fatal(err)
		}
		waitFor(t, 5*time.Second, "api subscribing to "+subj, func() error {
			return v.find(`Permissions Violation for Subscription to "` + subj + `"`)
		})
		sub.Unsubscribe()
	}
	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.New(anc)
	c, err := ajs.Consumer(ctx, schema.StreamFlows, schema.ConsumerSinkFlows)
	if err != nil {
		t.Fatal(err)
	}
	for _, cd := range schema.ConsumerConfigs(schema.StreamOptions{}) {
		if cd.Config.Durable == schema.ConsumerSinkFlows && c.CachedInfo().Config.FilterSubject != cd.Config.FilterSubject {
			t.Errorf("sink-flows filter %q, want the schema's %q", c.CachedInfo().Config.FilterSubject, cd.Config.FilterSubject)
		}
	}
	if len(logViolations(t, logFile)) == 0 {
		t.Error("the server log shows no violation for the refused calls")
	}
}

// TestStageCredentialsLeaf issues netwatchctl creds -role leaf (a site's
// leaf node link in JWT mode) and shows the JWT restricted to leaf node
// connections: a client connecting with it is refused by the server.
func TestStageCredentialsLeaf(t *testing.T) {
	dir, url := operatorServer(t)
	leaf := filepath.Join(dir, "leaf.creds")
	ctl(t, "creds", "-dir", dir, "-role", "leaf", "-o", leaf)
	nc, err := nats.Connect(url, nats.UserCredentials(leaf), nats.MaxReconnects(0))
	if err == nil {
		nc.Close()
		t.Fatal("a client logged in with the leaf role's credentials")
	}
	if !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Fatalf("client login with the leaf credentials: %v, want an authorization violation", err)
	}
	t.Logf("client login with leaf.creds refused: %v", err)
}

// httpGet returns the body of a GET of url (a 200 answer), or an error.
func httpGet(url string) (string, error) {
	r, err := http.Get(url)
	if err != nil {
		return "", err
	}
	defer r.Body.Close()
	b, err := io.ReadAll(r.Body)
	if err != nil {
		return "", err
	}
	if r.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s", url, r.Status)
	}
	return string(b), nil
}
