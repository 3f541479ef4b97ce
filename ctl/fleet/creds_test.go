package fleet_test

import (
	"bytes"
	"context"
	"errors"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/ctl/internal/cli"
	"netwatch/schema"
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
	t.Helper()
	dir = t.TempDir()
	ctl(t, "init", "-dir", dir)
	s := startConf(t, dir, "server", `
server_name: nw-test
listen: 127.0.0.1:-1
max_payload: 8MB
jetstream { store_dir: `+q(filepath.Join(dir, "js"))+` }
include resolver.conf
`)
	return dir, s.ClientURL()
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
// stream. What sensor-a may do still works, and PACKETS holds exactly the
// one batch sensor-a published in its own name.
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

	var v violations
	nc, err := nats.Connect(url, nats.UserCredentials(sensorA), nats.ErrorHandler(v.handler))
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

	// The independent count: what the streams hold, read as admin.
	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.New(anc)
	for stream, want := range map[string]string{schema.StreamPackets: "netwatch.packets.sensor-a.7", schema.StreamMetrics: "netwatch.metrics.sensor-a"} {
		st, err := ajs.Stream(ctx, stream)
		if err != nil {
			t.Fatal(err)
		}
		si, err := st.Info(ctx, jetstream.WithSubjectFilter(stream2prefix(stream)+".>"))
		if err != nil {
			t.Fatal(err)
		}
		if si.State.Msgs != 1 || len(si.State.Subjects) != 1 || si.State.Subjects[want] != 1 {
			t.Errorf("%s holds %d messages on %v, want 1 on %s", stream, si.State.Msgs, si.State.Subjects, want)
		}
	}
	// The api's credentials read the registry (List: stream info, an ordered
	// consumer for the keys, direct gets); only sensor-a's record is there.
	apiCreds := filepath.Join(dir, "api.creds")
	ctl(t, "creds", "-dir", dir, "-role", "api", "-o", apiCreds)
	var av violations
	apinc, err := nats.Connect(url, nats.UserCredentials(apiCreds), nats.ErrorHandler(av.handler))
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
