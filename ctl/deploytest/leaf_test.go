package deploytest

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/ctl/internal/cli"
	"netwatch/ctl/internal/perms"
	"netwatch/ctl/internal/site"
	"netwatch/schema"
	"netwatch/schema/pb"
)

// freePort returns a TCP port on 127.0.0.1 that was free a moment ago (the
// routes and the leaf remotes name each other's ports before any server
// starts, so -1 cannot be used).
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// leafFleet is the hub (deploy/cluster/n1-3.conf) and one site
// (deploy/leaf/site.conf) as installed by install, with their ports
// rewritten to free ones on 127.0.0.1 and their stores in the test's
// directory, run in-process from those files.
type leafFleet struct {
	t                          *testing.T
	etc, ca                    string
	hubConfs                   [3]string
	siteConf                   string
	hubClient, hubLeaf, routes [3]int
	siteClient                 int
	hub                        [3]*server.Server
	site                       *server.Server
}

func newLeafFleet(t *testing.T) *leafFleet {
	etc, _ := install(t)
	f := &leafFleet{t: t, etc: etc, ca: filepath.Join(etc, "tls", "ca.pem"), siteClient: freePort(t)}
	for i := range 3 {
		f.hubClient[i], f.hubLeaf[i], f.routes[i] = freePort(t), freePort(t), freePort(t)
	}
	store := t.TempDir()
	rewrite := func(src, dst string, repl ...string) string {
		data, err := os.ReadFile(filepath.Join(etc, src))
		if err != nil {
			t.Fatal(err)
		}
		s := string(data)
		for i := 0; i < len(repl); i += 2 {
			if !strings.Contains(s, repl[i]) {
				t.Fatalf("%s has no %q to rewrite", src, repl[i])
			}
			s = strings.ReplaceAll(s, repl[i], repl[i+1])
		}
		path := filepath.Join(etc, filepath.Dir(src), dst) // beside the original: includes stay relative
		write(t, path, []byte(s))
		return path
	}
	var routeRepl, leafRepl []string
	for k := range 3 {
		host := fmt.Sprintf("nw-n%d.example.net", k+1)
		routeRepl = append(routeRepl, host+":6222", fmt.Sprintf("127.0.0.1:%d", f.routes[k]))
		leafRepl = append(leafRepl, host+":7422", fmt.Sprintf("127.0.0.1:%d", f.hubLeaf[k]))
	}
	for i := range 3 {
		repl := []string{
			"listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", f.hubClient[i]),
			"listen: 0.0.0.0:6222", fmt.Sprintf("listen: 127.0.0.1:%d", f.routes[i]),
			"listen: 0.0.0.0:7422", fmt.Sprintf("listen: 127.0.0.1:%d", f.hubLeaf[i]),
			"https: 0.0.0.0:8222", "https: 127.0.0.1:-1",
			"store_dir: /var/lib/netwatch/nats", "store_dir: " + strconv.Quote(filepath.Join(store, fmt.Sprintf("n%d", i+1))),
		}
		f.hubConfs[i] = rewrite(fmt.Sprintf("cluster/n%d.conf", i+1), fmt.Sprintf("n%d-test.conf", i+1), append(repl, routeRepl...)...)
	}
	f.siteConf = rewrite("leaf/site.conf", "site-test.conf", append([]string{
		"listen: 0.0.0.0:4222", fmt.Sprintf("listen: 127.0.0.1:%d", f.siteClient),
		"https: 0.0.0.0:8222", "https: 127.0.0.1:-1",
		"store_dir: /var/lib/netwatch/nats-site", "store_dir: " + strconv.Quote(filepath.Join(store, "site")),
	}, leafRepl...)...)
	t.Cleanup(func() {
		f.stopHub()
		if f.site != nil {
			f.site.Shutdown()
			f.site.WaitForShutdown()
		}
		if t.Failed() {
			for _, n := range []string{"n1", "n2", "n3", "site"} {
				data, _ := os.ReadFile(filepath.Join(etc, n+".log"))
				if d := os.Getenv("NETWATCH_LEAF_LOGS"); d != "" {
					os.WriteFile(filepath.Join(d, n+".log"), data, 0o644)
				}
				t.Logf("--- %s log (tail):\n%s", n, tailLines(string(data), 15))
			}
		}
	})
	return f
}

func tailLines(s string, n int) string {
	l := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(l) > n {
		l = l[len(l)-n:]
	}
	return strings.Join(l, "\n")
}

// start runs the server of a configuration file in-process, logging to
// etc/<name>.log (appended across restarts).
func (f *leafFleet) start(conf, name string) *server.Server {
	f.t.Helper()
	opts, err := server.ProcessConfigFile(conf)
	if err != nil {
		f.t.Fatalf("parse %s: %v", conf, err)
	}
	opts.NoSigs = true
	opts.LogFile = filepath.Join(f.etc, name+".log")
	s, err := server.NewServer(opts)
	if err != nil {
		f.t.Fatalf("start %s: %v", name, err)
	}
	s.ConfigureLogger()
	go s.Start()
	if !s.ReadyForConnections(20 * time.Second) {
		f.t.Fatalf("%s not ready in 20 s", name)
	}
	return s
}

func (f *leafFleet) startHub() {
	f.t.Helper()
	for i := range 3 {
		f.hub[i] = f.start(f.hubConfs[i], fmt.Sprintf("n%d", i+1))
	}
}

func (f *leafFleet) stopHub() {
	for i, s := range f.hub {
		if s != nil {
			s.Shutdown()
			s.WaitForShutdown()
			f.hub[i] = nil
		}
	}
}

// hubURL is the three nodes' client URLs with user's static password.
func (f *leafFleet) hubURL(user string) string {
	var u []string
	for _, p := range f.hubClient {
		u = append(u, fmt.Sprintf("tls://%s:change-me-%s@127.0.0.1:%d", user, user, p))
	}
	return strings.Join(u, ",")
}

func (f *leafFleet) siteURL(user string) string {
	return fmt.Sprintf("tls://%s:change-me-%s@127.0.0.1:%d", user, user, f.siteClient)
}

func (f *leafFleet) ctl(args ...string) string {
	f.t.Helper()
	var out, errb bytes.Buffer
	if rc := cli.Run(args, func(string) string { return "" }, &out, &errb); rc != 0 {
		f.t.Fatalf("netwatchctl %v: exit %d: %s", args, rc, errb.String())
	}
	return out.String()
}

func (f *leafFleet) connect(url string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
	f.t.Helper()
	nc, err := nats.Connect(url, append([]nats.Option{nats.RootCAs(f.ca), nats.MaxReconnects(-1),
		nats.ReconnectWait(200 * time.Millisecond)}, opts...)...)
	if err != nil {
		f.t.Fatalf("connect %s: %v", url, err)
	}
	f.t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		f.t.Fatal(err)
	}
	return nc, js
}

// batchKey is what identifies a published batch: its Nats-Msg-Id
// (schema.PacketBatchID) and, independently, the batch's own content.
type batchKey struct {
	sensor, boot string
	seq          uint64
}

// publishBatches publishes PacketBatch seq from..to-1 of sensor as the
// agent does (subject by bucket, Nats-Msg-Id sensor+boot+seq, one packet
// summary whose source port is the sequence) and waits for every ack.
func publishBatches(t *testing.T, ctx context.Context, js jetstream.JetStream, sensor, boot string, from, to int) {
	t.Helper()
	for i := from; i < to; i++ {
		b := &pb.PacketBatch{Sensor: sensor, Boot: boot, Seq: uint64(i), Bucket: uint32(i % schema.Buckets),
			SentNs: time.Now().UnixNano(), Packets: []*pb.PacketSummary{{TsNs: time.Now().UnixNano(),
				SrcAddr: []byte{10, 1, 0, 1}, DstAddr: []byte{10, 1, 0, 2}, SrcPort: uint32(i), DstPort: 53, Proto: 17, IpBytes: 60}}}
		data, err := proto.Marshal(b)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := js.Publish(ctx, schema.PacketsSubject(sensor, b.Bucket), data,
			jetstream.WithMsgID(schema.PacketBatchID(sensor, boot, uint64(i)))); err != nil {
			t.Fatalf("publish %s batch %d: %v", sensor, i, err)
		}
	}
}

// readBatches reads every message of stream (PACKETS or SITE) and returns
// how often each batch is stored, checking that its Nats-Msg-Id matches
// its content and counting the messages that came through a stream source
// (header Nats-Stream-Source).
func readBatches(t *testing.T, ctx context.Context, js jetstream.JetStream, stream string) (count map[batchKey]int, sourced int) {
	t.Helper()
	st, err := js.Stream(ctx, stream)
	if err != nil {
		t.Fatal(err)
	}
	state := st.CachedInfo().State
	count = map[batchKey]int{}
	for seq := state.FirstSeq; state.Msgs > 0 && seq <= state.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			t.Fatalf("read %s seq %d of %d..%d: %v", stream, seq, state.FirstSeq, state.LastSeq, err)
		}
		if !strings.HasPrefix(m.Subject, schema.PacketsPrefix+".") {
			continue // metrics in SITE
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data, &b); err != nil {
			t.Fatalf("%s: decode %s: %v", stream, m.Subject, err)
		}
		if id := m.Header.Get(jetstream.MsgIDHeader); id != schema.PacketBatchID(b.Sensor, b.Boot, b.Seq) {
			t.Errorf("%s: Nats-Msg-Id %q for the batch %s/%s/%d", stream, id, b.Sensor, b.Boot, b.Seq)
		}
		if m.Subject != schema.PacketsSubject(b.Sensor, b.Bucket) || len(b.Packets) != 1 || b.Packets[0].SrcPort != uint32(b.Seq) {
			t.Errorf("%s: %s holds a batch whose content does not match: %v", stream, m.Subject, &b)
		}
		count[batchKey{b.Sensor, b.Boot, b.Seq}]++
		if m.Header.Get("Nats-Stream-Source") != "" {
			sourced++
		}
	}
	return count, sourced
}

// checkOnce fails unless count holds exactly the batches of want (sensor
// -> boot -> seq range [from, to)), each once.
func checkOnce(t *testing.T, what string, count map[batchKey]int, want map[batchKey]bool) {
	t.Helper()
	missing, twice, extra := 0, 0, 0
	for k := range want {
		switch c := count[k]; {
		case c == 0:
			missing++
		case c > 1:
			twice++
		}
	}
	for k := range count {
		if !want[k] {
			extra++
		}
	}
	if missing+twice+extra > 0 {
		t.Errorf("%s: %d batches stored, want %d each once: %d missing, %d more than once, %d not published there",
			what, len(count), len(want), missing, twice, extra)
	}
}

func wantRange(w map[batchKey]bool, sensor, boot string, from, to int) {
	for i := from; i < to; i++ {
		w[batchKey{sensor, boot, uint64(i)}] = true
	}
}

// TestLeafSiteBuffersOutage starts the hub (the three nodes of
// deploy/cluster) and a site (deploy/leaf/site.conf, its own JetStream
// domain site-a) from the deploy files, with the static users of
// accounts.conf over TLS, provisions the site with netwatchctl
// provision-site and the hub with netwatchctl provision -replicas 3 -sites
// site-a, and shows the store-and-forward:
//
//   - link up: 40 batches sensor-a publishes at the site and 20 sensor-b
//     publishes at the hub are in the hub's PACKETS once each, the site's
//     all through the stream source (Nats-Stream-Source header) and none
//     directly across the leaf connection; the site stream holds only
//     sensor-a's 40 (the hub's are not pulled back);
//   - hub stopped (the WAN link down): sensor-a publishes 200 more batches,
//     3 metrics messages and its registry record at the site, all acked by
//     the site; the site has no leaf connection;
//   - hub restarted: PACKETS holds exactly the 260 batches, each once
//     (content and Nats-Msg-Id checked), METRICS sensor-a's metrics, and
//     KV_SENSORS sensor-a's record, sourced from the site;
//   - a stage's start-up provisioning (schema.ProvisionRetry, the
//     enricher, detector and sink call it; schema.ProvisionRegistry, the
//     agent's) keeps the sources: 30 batches published then reach the hub
//     without netwatchctl provision -sites running again, PACKETS holds
//     290, each once.
func TestLeafSiteBuffersOutage(t *testing.T) {
	if testing.Short() {
		t.Skip("4 servers, a hub restart")
	}
	f := newLeafFleet(t)
	f.site = f.start(f.siteConf, "site")
	f.ctl("provision-site", "-nats.url", f.siteURL("admin"), "-nats.tls-ca", f.ca, "-timeout", "20s")
	f.startHub()
	out := f.ctl("provision", "-nats.url", f.hubURL("admin"), "-nats.tls-ca", f.ca, "-replicas", "3", "-sites", "site-a", "-timeout", "60s")
	t.Logf("netwatchctl provision:\n%s", out)

	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	_, sjs := f.connect(f.siteURL("sensor-a"), nats.CustomInboxPrefix(perms.SensorInbox("sensor-a")))
	_, hsjs := f.connect(f.hubURL("sensor-b"), nats.CustomInboxPrefix(perms.SensorInbox("sensor-b")))
	_, siteAdmin := f.connect(f.siteURL("admin"))
	ai, err := siteAdmin.AccountInfo(ctx)
	if err != nil || ai.Domain != "site-a" {
		t.Fatalf("site JetStream domain %q (%v), want site-a", ai.Domain, err)
	}

	want := map[batchKey]bool{}
	waitHub := func(what string, n int) map[batchKey]int {
		t.Helper()
		_, hjs := f.connect(f.hubURL("admin"))
		deadline := time.Now().Add(90 * time.Second)
		var have uint64
		var lastErr error
		for time.Now().Before(deadline) {
			// a request without a meta leader (the cluster just restarted) gets no answer
			c, cf := context.WithTimeout(ctx, 2*time.Second)
			st, err := hjs.Stream(c, schema.StreamPackets)
			cf()
			if lastErr = err; err == nil {
				if have = st.CachedInfo().State.Msgs; have >= uint64(n) {
					break
				}
			}
			time.Sleep(100 * time.Millisecond)
		}
		if have < uint64(n) {
			t.Fatalf("%s: hub PACKETS holds %d messages after 90 s, want %d (%v)", what, have, n, lastErr)
		}
		// Exactly n, not more to come: every source has caught up with its
		// site stream (lag 0) and the count is still n.
		waitFor(t, 30*time.Second, what+": sources caught up", func() error {
			c, cf := context.WithTimeout(ctx, 2*time.Second)
			defer cf()
			st, err := hjs.Stream(c, schema.StreamPackets)
			if err != nil {
				return err
			}
			si := st.CachedInfo()
			for _, src := range si.Sources {
				if src.Lag != 0 || src.Error != nil {
					return fmt.Errorf("source %s: lag %d, error %v", src.Name, src.Lag, src.Error)
				}
			}
			if len(si.Sources) != 1 {
				return fmt.Errorf("PACKETS has %d sources", len(si.Sources))
			}
			if have = si.State.Msgs; have != uint64(n) {
				return fmt.Errorf("PACKETS holds %d messages, want %d", have, n)
			}
			return nil
		})
		count, sourced := readBatches(t, ctx, hjs, schema.StreamPackets)
		checkOnce(t, what, count, want)
		siteBatches := 0
		for k, c := range count {
			if k.sensor == "sensor-a" {
				siteBatches += c
			}
		}
		if sourced != siteBatches {
			t.Errorf("%s: %d of sensor-a's %d batches came through the stream source, the rest directly over the leaf connection", what, sourced, siteBatches)
		}
		t.Logf("%s: hub PACKETS %d messages, %d distinct batches, %d sourced from site-a", what, have, len(count), sourced)
		return count
	}

	// Link up.
	publishBatches(t, ctx, sjs, "sensor-a", "boot1", 0, 40)
	publishBatches(t, ctx, hsjs, "sensor-b", "boot1", 0, 20)
	wantRange(want, "sensor-a", "boot1", 0, 40)
	wantRange(want, "sensor-b", "boot1", 0, 20)
	waitHub("link up", 60)
	siteCount, _ := readBatches(t, ctx, siteAdmin, site.Stream)
	siteWant := map[batchKey]bool{}
	wantRange(siteWant, "sensor-a", "boot1", 0, 40)
	checkOnce(t, "site stream, link up", siteCount, siteWant)

	// WAN down: the hub is gone, the site keeps acking.
	f.stopHub()
	waitLeafs(t, f.site, 0)
	down := time.Now()
	publishBatches(t, ctx, sjs, "sensor-a", "boot1", 40, 240)
	wantRange(want, "sensor-a", "boot1", 40, 240)
	for i := range 3 {
		if _, err := sjs.Publish(ctx, schema.MetricsSubject("sensor-a"), []byte("metrics"),
			jetstream.WithMsgID(fmt.Sprintf("sensor-a.boot1.metrics.%d", i))); err != nil {
			t.Fatalf("metrics at the site: %v", err)
		}
	}
	kv, err := schema.OpenRegistry(ctx, sjs)
	if err != nil {
		t.Fatalf("sensor-a opening the site's registry: %v", err)
	}
	if _, err := schema.Announce(ctx, kv, schema.SensorRecord{Name: "sensor-a", Host: "site-a-host"}); err != nil {
		t.Fatalf("sensor-a announcing itself at the site: %v", err)
	}
	siteCount, _ = readBatches(t, ctx, siteAdmin, site.Stream)
	wantRange(siteWant, "sensor-a", "boot1", 40, 240)
	checkOnce(t, "site stream, WAN down", siteCount, siteWant)
	t.Logf("WAN down: 200 batches, 3 metrics and a registry record acked by the site in %s", time.Since(down).Round(time.Millisecond))

	// WAN back.
	f.startHub()
	waitLeafs(t, f.site, 1)
	waitHub("after the outage", 260)
	_, hjs := f.connect(f.hubURL("admin"))
	waitFor(t, 60*time.Second, "sensor-a's metrics and registry record at the hub", func() error {
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		ms, err := hjs.Stream(ctx, schema.StreamMetrics)
		if err != nil {
			return err
		}
		si, err := ms.Info(ctx, jetstream.WithSubjectFilter(schema.MetricsSubject("sensor-a")))
		if err != nil {
			return err
		}
		if got := si.State.Subjects[schema.MetricsSubject("sensor-a")]; got != 3 {
			return fmt.Errorf("METRICS holds %d of sensor-a's 3 metrics", got)
		}
		hkv, err := schema.OpenRegistry(ctx, hjs)
		if err != nil {
			return err
		}
		e, err := hkv.Get(ctx, "sensor-a")
		if err != nil {
			return fmt.Errorf("registry: %w", err)
		}
		if !strings.Contains(string(e.Value()), "site-a-host") {
			return fmt.Errorf("registry record %s", e.Value())
		}
		return nil
	})

	// A stage starting with its own provisioning keeps the sources.
	if err := schema.ProvisionRetry(ctx, hjs, schema.StreamOptions{Replicas: 3}); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.ProvisionRegistry(ctx, hjs, schema.StreamOptions{}); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{schema.StreamPackets, schema.StreamMetrics, "KV_" + schema.RegistryBucket} {
		st, err := hjs.Stream(ctx, name)
		if err != nil {
			t.Fatal(err)
		}
		if c := st.CachedInfo().Config; len(c.Sources) != 1 || c.Replicas != 3 {
			t.Errorf("%s after a stage's provisioning: %d sources, %d replicas; want 1 and 3", name, len(c.Sources), c.Replicas)
		}
	}
	publishBatches(t, ctx, sjs, "sensor-a", "boot1", 240, 270)
	wantRange(want, "sensor-a", "boot1", 240, 270)
	waitHub("after a stage's provisioning", 290)

	f.checkLeafUserConfined(ctx, hjs)
	waitHub("after the leaf user's misuse", 290)
}

// checkLeafUserConfined shows the QA's attacks with the leaf user's
// password (it is in every site's site.conf) refused by the hub:
//   - as a client it cannot log in (allowed_connection_types LEAFNODE);
//   - as a leaf node of a rogue server (no deny_exports, no users, so its
//     local client's messages go wherever the leaf user's permissions let
//     them), a forged netwatch.packets.sensor-b.1 publish does not reach the
//     hub's PACKETS and $JS.API.STREAM.DELETE.PACKETS and
//     $JS.hub.API.STREAM.DELETE.PACKETS get no answer: PACKETS is still there.
func (f *leafFleet) checkLeafUserConfined(ctx context.Context, hjs jetstream.JetStream) {
	t := f.t
	t.Helper()
	_, err := nats.Connect(f.hubURL("leaf"), nats.RootCAs(f.ca), nats.MaxReconnects(0))
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization violation") {
		t.Errorf("a client logging in to the hub as user leaf: %v, want an authorization violation", err)
	} else {
		t.Logf("client login as leaf refused by the hub: %v", err)
	}

	u, err := url.Parse(fmt.Sprintf("nats-leaf://leaf:change-me-leaf@127.0.0.1:%d", f.hubLeaf[0]))
	if err != nil {
		t.Fatal(err)
	}
	pem, err := os.ReadFile(f.ca)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(pem)
	rogue, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: -1, NoSigs: true,
		LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{URLs: []*url.URL{u}, TLS: true,
			TLSConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}}}}})
	if err != nil {
		t.Fatal(err)
	}
	go rogue.Start()
	defer func() { rogue.Shutdown(); rogue.WaitForShutdown() }()
	if !rogue.ReadyForConnections(10 * time.Second) {
		t.Fatal("rogue leaf server not ready")
	}
	waitLeafs(t, rogue, 1)
	nc, err := nats.Connect(rogue.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	if err := nc.Publish(schema.PacketsSubject("sensor-b", 1), []byte("forged")); err != nil {
		t.Fatal(err)
	}
	for _, subj := range []string{"$JS.API.STREAM.DELETE." + schema.StreamPackets, "$JS.hub.API.STREAM.DELETE." + schema.StreamPackets} {
		if m, err := nc.Request(subj, nil, 2*time.Second); err == nil {
			t.Errorf("%s through a leaf node logged in as leaf: answered %s", subj, m.Data)
		} else {
			t.Logf("%s through a rogue leaf node: %v", subj, err)
		}
	}
	if err := nc.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := hjs.Stream(ctx, schema.StreamPackets); err != nil {
		t.Errorf("PACKETS after the rogue leaf's delete request: %v", err)
	}
}

// waitLeafs waits until s has n leaf node connections.
func waitLeafs(t *testing.T, s *server.Server, n int) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for s.NumLeafNodes() != n {
		if time.Now().After(deadline) {
			t.Fatalf("site has %d leaf connections, want %d", s.NumLeafNodes(), n)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitFor polls cond every 100 ms until it returns nil or d passes.
func waitFor(t *testing.T, d time.Duration, what string, cond func() error) {
	t.Helper()
	deadline := time.Now().Add(d)
	for {
		err := cond()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
