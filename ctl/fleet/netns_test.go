package fleet_test

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/jwt/v2"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/ctl/internal/perms"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// sh runs a command and fails the test with its output on error.
func sh(t *testing.T, name string, args ...string) string {
	t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// proc is a background process whose output is kept for the log.
type proc struct {
	name string
	cmd  *exec.Cmd
	mu   sync.Mutex
	out  bytes.Buffer
	done chan error
}

func (p *proc) Write(b []byte) (int, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.Write(b)
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.out.String()
}

func startProc(t *testing.T, name string, args ...string) *proc {
	t.Helper()
	p := &proc{name: name, cmd: exec.Command(args[0], args[1:]...), done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = p, p
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", name, err)
	}
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() { p.stop(5 * time.Second) })
	return p
}

// stop sends SIGTERM and waits up to d, then kills. It returns the exit error.
func (p *proc) stop(d time.Duration) error {
	if p.cmd.ProcessState != nil {
		return nil
	}
	_ = p.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-p.done:
		p.done <- err
		return err
	case <-time.After(d):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		return fmt.Errorf("%s killed after %v: %v", p.name, d, err)
	}
}

// TestFleetNamespaces is issue 8's fleet on one machine: two sensor hosts
// in their own network namespaces joined by a veth pair (the capture link),
// each also linked to the root namespace where a 3-node JetStream cluster
// (JWT auth from netwatchctl) listens; an agent per host captures its veth
// live with its own credentials; tcpdump in each namespace is the
// independent count; enricher and detector (consumer group members) and sink
// instances and an api run with their role credentials. Traffic from a to
// b: ICMP echo, HTTP, a TCP connect scan of 200 ports, UDP to port 53 and
// eight UDP exchanges open throughout. During it the PACKETS leader is
// stopped, one instance of each stage restarted, the node brought back. A
// third agent on host a calls itself sensor-c with sensor-a's credentials.
// Checked: PACKETS against tcpdump (summaries, bucket order), stored flows
// against tshark (per directional 5-tuple, one flow per connection with
// complete record chains), one portscan alert per sensor and no other
// traffic category, both detector groups caught up, the impostor refused and no
// other permission violation in the servers' logs; the WebSocket latency
// is logged (ctl/README.md).
func TestFleetNamespaces(t *testing.T) {
	if os.Getenv("NETWATCH_MULTIHOST") == "" {
		t.Skip("set NETWATCH_MULTIHOST=1 (make test-multihost) to build namespaces and veth pairs")
	}
	if os.Geteuid() != 0 {
		testkit.Unavailable(t, "network namespaces need root")
	}
	for _, tool := range []string{"ip", "tcpdump", "curl", "python3"} {
		if _, err := exec.LookPath(tool); err != nil {
			testkit.Unavailable(t, "no %s: %v", tool, err)
		}
	}
	root := testkit.Root(t)
	dir := t.TempDir()

	// Build the agent (cgo, libpcap) from this tree.
	agentBin := filepath.Join(dir, "agent")
	build := exec.Command("go", "build", "-o", agentBin, "./agent/cmd/agent")
	build.Dir = root
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build agent: %v\n%s", err, out)
	}

	// Namespaces: nwA and nwB joined by the capture link 10.77.1.0/24; each with
	// a control link to the root namespace, where NATS listens on 10.77.0.1.
	id := fmt.Sprintf("%04x", rand.IntN(1<<16))
	nsA, nsB := "nw"+id+"a", "nw"+id+"b"
	hub := "10.77.0.1"
	sh(t, "ip", "netns", "add", nsA)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsA).Run() })
	sh(t, "ip", "netns", "add", nsB)
	t.Cleanup(func() { exec.Command("ip", "netns", "del", nsB).Run() })
	// capture link
	sh(t, "ip", "link", "add", "nw"+id+"ca", "netns", nsA, "type", "veth", "peer", "name", "nw"+id+"cb", "netns", nsB)
	// control links (root end: nw<id>ra / nw<id>rb)
	for i, ns := range []string{nsA, nsB} {
		side := string(rune('a' + i))
		sh(t, "ip", "link", "add", "nw"+id+"r"+side, "type", "veth", "peer", "name", "ctl0", "netns", ns)
		t.Cleanup(func() { exec.Command("ip", "link", "del", "nw"+id+"r"+side).Run() })
		sh(t, "ip", "addr", "add", fmt.Sprintf("10.77.%d.1/30", 2+i), "dev", "nw"+id+"r"+side)
		sh(t, "ip", "link", "set", "nw"+id+"r"+side, "up")
		nsx := func(args ...string) { sh(t, "ip", append([]string{"netns", "exec", ns}, args...)...) }
		nsx("sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1")
		nsx("ip", "link", "set", "lo", "up")
		nsx("ip", "addr", "add", fmt.Sprintf("10.77.%d.2/30", 2+i), "dev", "ctl0")
		nsx("ip", "link", "set", "ctl0", "up")
		nsx("ip", "route", "add", hub+"/32", "via", fmt.Sprintf("10.77.%d.1", 2+i))
		nsx("ip", "addr", "add", fmt.Sprintf("10.77.1.%d/24", 1+i), "dev", "nw"+id+"c"+side)
		nsx("ip", "link", "set", "nw"+id+"c"+side, "up")
	}
	sh(t, "ip", "addr", "replace", hub+"/32", "dev", "lo")
	t.Cleanup(func() { exec.Command("ip", "addr", "del", hub+"/32", "dev", "lo").Run() })

	// Credentials and the cluster.
	authDir := filepath.Join(dir, "auth")
	ctl(t, "init", "-dir", authDir)
	resolver, err := os.ReadFile(filepath.Join(authDir, "resolver.conf"))
	if err != nil {
		t.Fatal(err)
	}
	c := newClusterOn(t, hub, string(resolver)) // inline: includes are relative to the file
	admin := filepath.Join(authDir, "admin.creds")
	ctl(t, "creds", "-dir", authDir, "-role", "admin", "-o", admin)
	for _, s := range []string{"sensor-a", "sensor-b"} {
		ctl(t, "creds", "-dir", authDir, "-sensor", s, "-o", filepath.Join(authDir, s+".creds"))
	}
	waitFor(t, 60*time.Second, "provision R3", func() error {
		return ctlErr("provision", "-nats.url", c.urls(), "-nats.creds", admin, "-replicas", "3", "-timeout", "10s")
	})
	// The pipeline stages (from bin/, make build), each with its own role credentials.
	pl := startStages(t, root, authDir, c.urls())
	feed := pl.startAPI(t)

	nc, err := nats.Connect(c.urls(), nats.UserCredentials(admin), nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	// tcpdump, then the agents, on each capture link.
	type host struct {
		ns, iface, sensor, pcap string
		tcpdump, agent          *proc
	}
	hosts := []*host{{ns: nsA, iface: "nw" + id + "ca", sensor: "sensor-a"}, {ns: nsB, iface: "nw" + id + "cb", sensor: "sensor-b"}}
	for _, h := range hosts {
		h.pcap = filepath.Join(dir, h.sensor+".pcap")
		h.tcpdump = startProc(t, "tcpdump "+h.sensor, "ip", "netns", "exec", h.ns, "tcpdump", "-i", h.iface, "-n", "-U", "-s", "256", "-w", h.pcap, "ip")
		waitFor(t, 10*time.Second, "tcpdump listening", func() error {
			if !strings.Contains(h.tcpdump.output(), "listening on") {
				return fmt.Errorf("tcpdump: %s", h.tcpdump.output())
			}
			return nil
		})
	}
	agentArgs := func(ns, iface, sensor, creds string) []string {
		return []string{"ip", "netns", "exec", ns, agentBin, "-interface", iface, "-sensor", sensor,
			"-nats.url", c.urls(), "-nats.creds", creds, "-nats.provision=false", "-http.addr", "",
			"-log.format", "text", "-batch.flush", "100ms", "-watermark.interval", "500ms"}
	}
	for _, h := range hosts {
		h.agent = startProc(t, "agent "+h.sensor, agentArgs(h.ns, h.iface, h.sensor, filepath.Join(authDir, h.sensor+".creds"))...)
	}
	// The impostor: sensor-a's credentials, sensor-c's name.
	impostor := startProc(t, "agent sensor-c", agentArgs(nsA, "nw"+id+"ca", "sensor-c", filepath.Join(authDir, "sensor-a.creds"))...)
	for _, p := range []*proc{hosts[0].agent, hosts[1].agent, impostor} {
		waitFor(t, 30*time.Second, p.name+" started", func() error {
			if !strings.Contains(p.output(), "agent started") {
				return fmt.Errorf("%s", p.output())
			}
			return nil
		})
	}
	time.Sleep(time.Second) // the capture handles are open once "agent started" is logged; a margin

	// Traffic from a to b, with the PACKETS leader stopped in the middle.
	nsa := func(args ...string) *exec.Cmd {
		return exec.Command("ip", append([]string{"netns", "exec", nsA}, args...)...)
	}
	web := startProc(t, "http server", "ip", "netns", "exec", nsB, "python3", "-m", "http.server", "--bind", "10.77.1.2", "8000")
	waitFor(t, 10*time.Second, "http server", func() error { return nsa("curl", "-sf", "-o", "/dev/null", "http://10.77.1.2:8000/").Run() })
	if out, err := nsa("python3", "-c", pingPy, "10.77.1.2", "20").CombinedOutput(); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	// Eight UDP exchanges that stay open across the outage and the restarts
	// (a datagram from each of ports 41000-41007 every 0.5 s, echoed by b):
	// spread over the group's partitions, some are the restarted member's,
	// and each must still be one flow.
	echo := startProc(t, "udp echo", "ip", "netns", "exec", nsB, "python3", "-c", udpEchoPy, "10.77.1.2", "9999")
	chatter := startProc(t, "udp chatter", "ip", "netns", "exec", nsA, "python3", "-c", udpChatterPy, "10.77.1.2", "9999")
	waitFor(t, 10*time.Second, "udp chatter", func() error {
		if !strings.Contains(chatter.output(), "sending") {
			return fmt.Errorf("chatter: %s; echo: %s", chatter.output(), echo.output())
		}
		return nil
	})
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	si, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	leader := c.index(si.Cluster.Leader)
	var outage [2]time.Time
	outage[0] = time.Now()
	c.stop(leader)
	t.Logf("stopped %s (PACKETS leader)", si.Cluster.Leader)
	for range 5 {
		if out, err := nsa("curl", "-sf", "-o", "/dev/null", "http://10.77.1.2:8000/").CombinedOutput(); err != nil {
			t.Fatalf("curl: %v %s", err, out)
		}
	}
	pl.restartOneOfEach(t)
	scan := nsa("bash", "-c", `for p in $(seq 1 200); do timeout 0.5 bash -c "echo > /dev/tcp/10.77.1.2/$p" 2>/dev/null; done; true`)
	if out, err := scan.CombinedOutput(); err != nil {
		t.Fatalf("scan: %v %s", err, out)
	}
	nsa("python3", "-c", `import socket
s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i in range(5): s.sendto(b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x07example\x03com\x00\x00\x01\x00\x01", ("10.77.1.2", 53))`).Run()
	c.start(leader)
	outage[1] = time.Now()
	t.Logf("restarted %s", si.Cluster.Leader)
	time.Sleep(2 * time.Second)
	chatter.stop(5 * time.Second)
	echo.stop(5 * time.Second)
	if out, err := nsa("python3", "-c", pingPy, "10.77.1.2", "10").CombinedOutput(); err != nil {
		t.Fatalf("ping: %v\n%s", err, out)
	}
	web.stop(5 * time.Second)
	time.Sleep(2 * time.Second) // the last batches flush (-batch.flush 100ms)

	// Stop the agents (they drain: every batch acknowledged), then tcpdump.
	// From here on a health_sensor_silent alert is a true one.
	agentsStopped := time.Now()
	for _, h := range hosts {
		if err := h.agent.stop(60 * time.Second); err != nil {
			t.Errorf("%s: %v\n%s", h.agent.name, err, tail(h.agent.output(), 20))
		}
	}
	impostor.stop(5 * time.Second)
	for _, h := range hosts {
		h.tcpdump.stop(5 * time.Second)
	}

	// Independent count: tcpdump's IP frames; the pipeline's: summaries in PACKETS.
	for _, h := range hosts {
		// stdout only: tcpdump -r prints "reading from file" on stderr
		out, err := exec.Command("tcpdump", "-r", h.pcap, "-n", "ip").Output()
		if err != nil {
			t.Fatalf("tcpdump -r %s: %v", h.pcap, err)
		}
		want := bytes.Count(out, []byte("\n"))
		got, behind, late := countSummaries(t, ctx, js, h.sensor)
		t.Logf("%s: tcpdump %d IP frames, PACKETS %d packet summaries, %d batches stored behind a later batch of their bucket, %d packets stored after a watermark more than 1 s later than them", h.sensor, want, got, behind, late)
		if late != 0 {
			t.Errorf("%s: %d packets stored more than 1 s after a watermark later than their time: the enricher may end their flows early", h.sensor, late)
		}
		if got != want || want == 0 {
			t.Errorf("%s: PACKETS holds %d packet summaries, tcpdump saw %d IP frames", h.sensor, got, want)
		}
		if behind != 0 {
			t.Errorf("%s: %d batches stored out of their bucket's order: the enricher will split their flows", h.sensor, behind)
		}
	}
	for _, h := range hosts {
		pl.checkFlows(t, ctx, h.sensor, h.pcap)
		pl.checkAlerts(t, ctx, h.sensor, outage, agentsStopped)
	}
	pl.logEnricherMetrics(t)
	for _, h := range hosts {
		logDelays(t, ctx, js, schema.StreamPackets, schema.PacketsPrefix+"."+h.sensor+".>", outage)
		logDelays(t, ctx, js, schema.StreamMetrics, schema.MetricsSubject(h.sensor), outage)
		var warns []string
		for _, l := range strings.Split(h.agent.output(), "\n") {
			if strings.Contains(l, "level=WARN") || strings.Contains(l, "level=ERROR") {
				warns = append(warns, l)
			}
		}
		if len(warns) > 6 {
			warns = append(warns[:3], append([]string{fmt.Sprintf("... %d more ...", len(warns)-6)}, warns[len(warns)-3:]...)...)
		}
		t.Logf("agent %s: %d warnings/errors:\n%s", h.sensor, len(warns), strings.Join(warns, "\n"))
	}
	// The detectors (members of the detectors' consumer groups, detector
	// credentials) evaluated every FLOWS message: each group's work queue
	// received all of them and has none left. (They read PACKETS for the
	// live rules through ordered consumers, which keep no position to
	// check; the durable detector-arp is a single instance's.) Messages
	// delivered to the detector that was restarted and not yet handled come
	// back after the consumers' AckWait (5 s, -consume.ack-wait).
	waitFor(t, 90*time.Second, "detector groups caught up", func() error {
		fs, err := js.Stream(ctx, schema.StreamFlows)
		if err != nil {
			return err
		}
		fi, err := fs.Info(ctx)
		if err != nil {
			return err
		}
		for _, g := range []string{perms.DetectorGroup, schema.DetectorTargetGroup(perms.DetectorGroup)} {
			ws, err := js.Stream(ctx, schema.StreamFlows+"-"+g)
			if err != nil {
				return err
			}
			wi, err := ws.Info(ctx)
			if err != nil {
				return err
			}
			if wi.State.LastSeq != fi.State.LastSeq || wi.State.Msgs != 0 {
				return fmt.Errorf("%s: %d of FLOWS' %d messages received, %d not acked", wi.Config.Name, wi.State.LastSeq, fi.State.LastSeq, wi.State.Msgs)
			}
		}
		t.Logf("detector groups: every FLOWS message (%d) evaluated in both", fi.State.LastSeq)
		return nil
	})
	feed.report(t, ctx, pl, outage, "sensor-a", "sensor-b")
	// No stage provisions (-nats.provision=false): the streams keep the 3
	// replicas netwatchctl provision gave them through every restart.
	for _, name := range []string{schema.StreamPackets, schema.StreamFlows, schema.StreamAlerts, schema.StreamMetrics} {
		s, err := js.Stream(ctx, name)
		if err != nil {
			t.Errorf("stream %s: %v", name, err)
		} else if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas at the end, want the 3 it was provisioned with", name, r)
		}
	}
	if got, _, _ := countSummaries(t, ctx, js, "sensor-c"); got != 0 {
		t.Errorf("sensor-c (sensor-a's credentials) got %d packets into PACKETS", got)
	}
	t.Logf("impostor agent (sensor-c with sensor-a's credentials), last lines:\n%s", tail(impostor.output(), 8))
	// The servers' logs: the impostor's violations, and none by anyone else
	// (the stages' and the agents' real work is within their permissions).
	users := map[string]string{} // user public key -> creds name
	for _, n := range []string{"admin", "enricher", "detector", "sink", "api", "sensor-a", "sensor-b"} {
		users[credsUser(t, filepath.Join(authDir, n+".creds"))] = n
	}
	found, others := false, 0
	for _, f := range c.logs() {
		data, _ := os.ReadFile(f)
		sc := bufio.NewScanner(bytes.NewReader(data))
		for sc.Scan() {
			line := sc.Text()
			if !strings.Contains(line, "Violation") {
				continue
			}
			who := "unknown user"
			for k, n := range users {
				if strings.Contains(line, k) {
					who = n
				}
			}
			if who == "sensor-a" && strings.Contains(line, `Publish Violation - Subject "netwatch.packets.sensor-c.`) {
				if !found {
					t.Logf("broker: %s", line)
				}
				found = true
				continue
			}
			if who == "sensor-a" && strings.Contains(line, "sensor-c") {
				continue // the impostor's metrics and registry record
			}
			others++
			if others <= 10 {
				t.Errorf("%s: permissions violation by %s: %s", filepath.Base(f), who, line)
			}
		}
	}
	if !found {
		t.Error("no server logged a permissions violation for sensor-c")
	}
	t.Logf("permission violations in the servers' logs other than the impostor's: %d", others)
}

// credsUser returns the user public key (the JWT's subject) of a .creds
// file: the servers' log lines name the user by it.
func credsUser(t *testing.T, file string) string {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	tok, err := jwt.ParseDecoratedJWT(data)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	uc, err := jwt.DecodeUserClaims(tok)
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	return uc.Subject
}

// pingPy sends COUNT ICMP echo requests to ADDR (RFC 792) on a raw socket
// and waits for each reply (iputils ping is not installed everywhere).
const pingPy = `import socket, struct, sys, time
addr, count = sys.argv[1], int(sys.argv[2])
def csum(b):
    s = sum(struct.unpack("!%dH" % (len(b)//2), b))
    s = (s >> 16) + (s & 0xffff); s += s >> 16
    return ~s & 0xffff
sk = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
sk.settimeout(2)
for seq in range(count):
    body = struct.pack("!HH", 0x4e57, seq) + b"netwatch-fleet-ping!"
    hdr = struct.pack("!BBH", 8, 0, 0) + body
    pkt = struct.pack("!BBH", 8, 0, csum(hdr)) + body
    sk.sendto(pkt, (addr, 0))
    while True:
        data, _ = sk.recvfrom(2048)
        if data[20] == 0 and struct.unpack("!H", data[26:28])[0] == seq:
            break
    time.sleep(0.05)
`

// udpEchoPy answers every UDP datagram to ADDR:PORT with the same bytes.
const udpEchoPy = `import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], int(sys.argv[2])))
while True:
    data, peer = s.recvfrom(2048)
    s.sendto(data, peer)
`

// udpChatterPy sends a datagram from each of local ports 41000-41007 to
// ADDR:PORT every 0.5 s until killed (SIGTERM).
const udpChatterPy = `import socket, sys, time
socks = []
for p in range(41000, 41008):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", p))
    s.setblocking(False)
    socks.append(s)
print("sending", flush=True)
while True:
    for s in socks:
        s.sendto(b"netwatch-fleet-chatter", (sys.argv[1], int(sys.argv[2])))
        try:
            s.recv(2048)
        except BlockingIOError:
            pass
    time.sleep(0.5)
`

// countSummaries sums the packet summaries of every PACKETS batch of
// sensor and counts the batches stored after a batch of the same subject
// (bucket) and agent boot with a higher batch sequence (out of order), and
// the packets stored after a watermark of their subject later than their
// time by more than 1 s (the agent promises none; a few ms from a capture
// block handed over late would be absorbed by the flow timeouts).
func countSummaries(t *testing.T, ctx context.Context, js jetstream.JetStream, sensor string) (total, behind, late int) {
	t.Helper()
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	subj := schema.PacketsPrefix + "." + sensor + ".>"
	si, err := st.Info(ctx, jetstream.WithSubjectFilter(subj))
	if err != nil {
		t.Fatal(err)
	}
	msgs := 0
	for _, n := range si.State.Subjects {
		msgs += int(n)
	}
	if msgs == 0 {
		return 0, 0, 0
	}
	wm := map[string]int64{} // subject -> latest watermark
	type sb struct{ subj, boot string }
	last := map[sb]uint64{}
	oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		t.Fatal(err)
	}
	read := 0
	for read < msgs {
		b, err := oc.Fetch(500, jetstream.FetchMaxWait(2*time.Second))
		if err != nil {
			t.Fatalf("fetch %s: %v", subj, err)
		}
		n := 0
		for m := range b.Messages() {
			var batch pb.PacketBatch
			if err := proto.Unmarshal(m.Data(), &batch); err != nil {
				t.Fatalf("decode batch on %s: %v", m.Subject(), err)
			}
			total += len(batch.Packets)
			for _, p := range batch.Packets {
				if p.TsNs < wm[m.Subject()]-int64(time.Second) {
					late++
					if late <= 5 {
						t.Logf("%s: packet at %s stored after watermark %s (%v later)", m.Subject(), time.Unix(0, p.TsNs).Format("15:04:05.000"),
							time.Unix(0, wm[m.Subject()]).Format("15:04:05.000"), time.Duration(wm[m.Subject()]-p.TsNs))
					}
				}
			}
			if batch.WatermarkNs != 0 { // covers this batch and the ones before
				wm[m.Subject()] = max(wm[m.Subject()], batch.WatermarkNs)
			}
			k := sb{m.Subject(), batch.Boot}
			if batch.Seq < last[k] {
				behind++
			}
			last[k] = max(last[k], batch.Seq)
			read++
			n++
		}
		if n == 0 && ctx.Err() != nil {
			t.Fatal(ctx.Err())
		}
	}
	return total, behind, late
}

func tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

func ctlErr(args ...string) error {
	var out, errb bytes.Buffer
	if rc := runCtl(args, &out, &errb); rc != 0 {
		return fmt.Errorf("netwatchctl %v: exit %d: %s", args, rc, errb.String())
	}
	return nil
}

// logDelays logs, for the messages of subj in stream, the longest delay
// from the agent's own time (PacketBatch.sent_ns, Metrics.time_ns) to the
// message's arrival in the stream and the longest gap between arrivals,
// with when they happened relative to the outage: where a late flow or a
// silent sensor came from (the agent's publishing, or after the stream).
func logDelays(t *testing.T, ctx context.Context, js jetstream.JetStream, stream, subj string, outage [2]time.Time) {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Logf("delays %s: %v", subj, err)
		return
	}
	oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{FilterSubjects: []string{subj}})
	if err != nil {
		t.Logf("delays %s: %v", subj, err)
		return
	}
	var maxDelay, maxGap time.Duration
	var delayAt, gapAt, prev time.Time
	n := 0
	for {
		b, err := oc.Fetch(500, jetstream.FetchMaxWait(time.Second))
		if err != nil {
			break
		}
		got := 0
		for m := range b.Messages() {
			got++
			md, err := m.Metadata()
			if err != nil {
				continue
			}
			var sent int64
			if stream == schema.StreamMetrics {
				var mt pb.Metrics
				if proto.Unmarshal(m.Data(), &mt) == nil {
					sent = mt.GetTimeNs()
				}
			} else {
				var pbt pb.PacketBatch
				if proto.Unmarshal(m.Data(), &pbt) == nil {
					sent = pbt.GetSentNs()
				}
			}
			if sent > 0 {
				if d := md.Timestamp.Sub(time.Unix(0, sent)); d > maxDelay {
					maxDelay, delayAt = d, md.Timestamp
				}
			}
			if !prev.IsZero() {
				if g := md.Timestamp.Sub(prev); g > maxGap {
					maxGap, gapAt = g, md.Timestamp
				}
			}
			prev = md.Timestamp
			n++
		}
		if got == 0 {
			break
		}
	}
	rel := func(at time.Time) string {
		return fmt.Sprintf("%+.1fs from the node's stop (back at %+.1fs)", at.Sub(outage[0]).Seconds(), outage[1].Sub(outage[0]).Seconds())
	}
	t.Logf("delays %s: %d messages; longest agent -> stream %v, arriving %s; longest gap between arrivals %v, ending %s",
		subj, n, maxDelay.Round(time.Millisecond), rel(delayAt), maxGap.Round(time.Millisecond), rel(gapAt))
}
