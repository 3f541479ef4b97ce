package fleet_test

import (
	"context"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/ctl/internal/perms"

	"netwatch/schema"
	"netwatch/testkit"
)

// TestRegistry announces two sensors in the SENSORS bucket, keeps one
// heartbeating, and checks List: records read back as written, sorted by
// name, online by the server's time of the latest put, offline once it is
// older than onlineWithin; a bad name is refused and an undecodable record
// is listed offline with only its key.
func TestRegistry(t *testing.T) {
	_, _, js := testkit.JetStream(t)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	kv, err := schema.ProvisionRegistry(ctx, js, schema.StreamOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := schema.ProvisionRegistry(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatalf("provision again: %v", err)
	}
	if got, err := schema.List(ctx, kv, time.Now(), 0); err != nil || len(got) != 0 {
		t.Fatalf("empty registry: %v %v", got, err)
	}

	started := time.Date(2026, 11, 29, 19, 0, 0, 0, time.UTC)
	b := schema.SensorRecord{Name: "sensor-b", Host: "host-2", Version: "v1.2.3", Interfaces: []string{"eth0", "eth1"}, Boot: "6be2fa2b96b231ae", Started: started}
	a := schema.SensorRecord{Name: "sensor-a", Host: "host-1", Version: "v1.2.3", Interfaces: []string{"ens3"}, Boot: "00000000000000a7", Started: started}
	before := time.Now()
	for _, r := range []schema.SensorRecord{b, a} {
		if _, err := schema.Announce(ctx, kv, r); err != nil {
			t.Fatal(err)
		}
	}
	after := time.Now()
	got, err := schema.List(ctx, kv, time.Now(), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 2 || got[0].Name != "sensor-a" || got[1].Name != "sensor-b" {
		t.Fatalf("list = %+v, want sensor-a, sensor-b", got)
	}
	for i, want := range []schema.SensorRecord{a, b} {
		g := got[i]
		if g.Host != want.Host || g.Version != want.Version || !slices.Equal(g.Interfaces, want.Interfaces) ||
			g.Boot != want.Boot || !g.Started.Equal(want.Started) || !g.Online {
			t.Errorf("sensor %d = %+v, want %+v online", i, g, want)
		}
		// LastSeen is the server's clock (same machine here), within the puts.
		if g.LastSeen.Before(before.Add(-time.Second)) || g.LastSeen.After(after.Add(time.Second)) {
			t.Errorf("%s last seen %v, want within [%v, %v]", g.Name, g.LastSeen, before, after)
		}
	}
	// 31 s later without a heartbeat both are offline (DefaultOnlineWithin 30 s).
	got, _ = schema.List(ctx, kv, after.Add(31*time.Second), 0)
	for _, g := range got {
		if g.Online {
			t.Errorf("%s online 31 s after its last put", g.Name)
		}
	}

	// sensor-b heartbeats every 100 ms, sensor-a is silent: after 1 s only b is online.
	hctx, hstop := context.WithCancel(ctx)
	done := make(chan error, 1)
	go func() {
		done <- schema.RunHeartbeat(hctx, kv, b, 100*time.Millisecond, func(err error) { t.Error(err) })
	}()
	waitFor(t, 10*time.Second, "a offline and b online", func() error {
		got, err := schema.List(ctx, kv, time.Now(), time.Second)
		if err != nil {
			return err
		}
		if len(got) != 2 || got[0].Online || !got[1].Online {
			return errorf("list %+v", got)
		}
		return nil
	})
	hstop()
	<-done

	if _, err := schema.Announce(ctx, kv, schema.SensorRecord{Name: "bad.name"}); err == nil {
		t.Error("announced a sensor named bad.name")
	}
	if _, err := kv.Put(ctx, "sensor-c", []byte("not json")); err != nil {
		t.Fatal(err)
	}
	got, err = schema.List(ctx, kv, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != 3 || got[2].Name != "sensor-c" || got[2].Online || got[2].Host != "" {
		t.Errorf("undecodable record listed as %+v", got[len(got)-1])
	}
}

// TestRegistrySensorCannotRollUp provisions with netwatchctl provision (as
// admin, on an operator-mode server) and shows the QA's attack refused: a
// put of sensor-a's own key $KV.SENSORS.sensor-a with the header
// "Nats-Rollup: all" (which, with the KV default allow_rollup_hdrs, erased
// sensor-b's record) gets JetStream's "rollup not permitted" error, and
// sensor-b's record is still there; sensor-a's plain put still works.
func TestRegistrySensorCannotRollUp(t *testing.T) {
	dir, url := operatorServer(t)
	admin := filepath.Join(dir, "admin.creds")
	ctl(t, "creds", "-dir", dir, "-role", "admin", "-o", admin)
	ctl(t, "provision", "-nats.url", url, "-nats.creds", admin, "-replicas", "1", "-timeout", "20s")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	kvs := map[string]jetstream.KeyValue{}
	jss := map[string]jetstream.JetStream{}
	for _, sn := range []string{"sensor-a", "sensor-b"} {
		creds := filepath.Join(dir, sn+".creds")
		ctl(t, "creds", "-dir", dir, "-sensor", sn, "-o", creds)
		nc, err := nats.Connect(url, nats.UserCredentials(creds), nats.CustomInboxPrefix(perms.SensorInbox(sn)))
		if err != nil {
			t.Fatal(err)
		}
		defer nc.Close()
		jss[sn], _ = jetstream.New(nc)
		if kvs[sn], err = schema.OpenRegistry(ctx, jss[sn]); err != nil {
			t.Fatal(err)
		}
		if _, err := schema.Announce(ctx, kvs[sn], schema.SensorRecord{Name: sn, Host: "host-" + sn}); err != nil {
			t.Fatalf("%s announcing itself: %v", sn, err)
		}
	}
	m := nats.NewMsg("$KV." + schema.RegistryBucket + ".sensor-a")
	m.Header.Set("Nats-Rollup", "all")
	m.Data = []byte(`{"name":"sensor-a"}`)
	_, err := jss["sensor-a"].PublishMsg(ctx, m)
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "rollup") {
		t.Errorf("sensor-a's put with Nats-Rollup: all: %v, want a rollup-not-permitted error", err)
	} else {
		t.Logf("sensor-a's rollup put refused: %v", err)
	}
	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	ajs, _ := jetstream.New(anc)
	akv, err := schema.OpenRegistry(ctx, ajs)
	if err != nil {
		t.Fatal(err)
	}
	e, err := akv.Get(ctx, "sensor-b")
	if err != nil || !strings.Contains(string(e.Value()), "host-sensor-b") {
		t.Fatalf("sensor-b's record after sensor-a's rollup attempt: %v", err)
	}
	if _, err := schema.Announce(ctx, kvs["sensor-a"], schema.SensorRecord{Name: "sensor-a", Host: "host-a2"}); err != nil {
		t.Errorf("sensor-a's plain put after: %v", err)
	}
}
