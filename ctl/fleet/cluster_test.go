package fleet_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"netwatch/schema"
)

// cluster is three JetStream servers with routes to each other on fixed
// local ports, so a stopped node can come back on the same addresses.
type cluster struct {
	t       *testing.T
	dir     string
	confs   [3]string
	servers [3]*server.Server
}

func newCluster(t *testing.T) *cluster { return newClusterOn(t, "127.0.0.1", "") }

// newClusterOn starts the three nodes listening on host, each
// configuration with extra appended and logging to nN.log in the cluster's
// directory when extra is not empty.
func newClusterOn(t *testing.T, host, extra string) *cluster {
	c := &cluster{t: t, dir: t.TempDir()}
	var client, route [3]int
	for i := range 3 {
		client[i], route[i] = freePort(t), freePort(t)
	}
	var routes []string
	for i := range 3 {
		routes = append(routes, fmt.Sprintf("nats-route://%s:%d", host, route[i]))
	}
	for i := range 3 {
		// The same blocks as deploy/cluster/n*.conf, on loopback ports.
		c.confs[i] = fmt.Sprintf(`
server_name: n%d
listen: %s:%d
max_payload: 8MB
max_control_line: 16KB # role JWTs with their permission lists exceed the 4 KB default in CONNECT
jetstream { store_dir: %s }
cluster {
  name: netwatch
  listen: %s:%d
  routes: [%s]
}
`, i+1, host, client[i], q(filepath.Join(c.dir, fmt.Sprintf("n%d", i+1))), host, route[i], strings.Join(routes, ", "))
		if extra != "" {
			c.confs[i] += extra + "\nlog_file: " + q(filepath.Join(c.dir, fmt.Sprintf("n%d.log", i+1))) + "\n"
		}
	}
	for i := range 3 {
		c.start(i)
	}
	return c
}

func (c *cluster) start(i int) {
	c.servers[i] = startConf(c.t, c.dir, fmt.Sprintf("n%d", i+1), c.confs[i])
}

func (c *cluster) stop(i int) {
	c.servers[i].Shutdown()
	c.servers[i].WaitForShutdown()
}

func (c *cluster) logs() []string {
	var out []string
	for i := range 3 {
		out = append(out, filepath.Join(c.dir, fmt.Sprintf("n%d.log", i+1)))
	}
	return out
}

func (c *cluster) urls() string {
	var u []string
	for _, s := range c.servers {
		u = append(u, s.ClientURL())
	}
	return strings.Join(u, ",")
}

func (c *cluster) index(name string) int {
	for i := range 3 {
		if c.servers[i].Name() == name {
			return i
		}
	}
	c.t.Fatalf("no server named %q", name)
	return -1
}

// TestClusterLosesNoMessageWhenANodeDies provisions the production streams
// with 3 replicas on a 3-node cluster and publishes N packet batches with
// Nats-Msg-Id while the PACKETS leader is stopped (after N/3 acks) and
// brought back (after 2N/3). Publishes whose ack does not come are retried
// with the same id. Afterwards PACKETS holds exactly N messages, every id
// once; then another node is stopped, so the restarted node must serve its
// caught-up copy, and the count is still exactly N.
func TestClusterLosesNoMessageWhenANodeDies(t *testing.T) {
	const n = 6000
	c := newCluster(t)
	nc, err := nats.Connect(c.urls(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncTimeout(3*time.Second), jetstream.WithPublishAsyncMaxPending(256))
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	waitFor(t, 60*time.Second, "JetStream meta leader", func() error {
		for _, s := range c.servers {
			if s.NumRoutes() < 2 {
				return fmt.Errorf("%s has %d routes", s.Name(), s.NumRoutes())
			}
		}
		// A request made before the meta leader exists gets no answer:
		// each try has its own short deadline.
		c2, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		_, err := js.AccountInfo(c2)
		return err
	})
	o := schema.StreamOptions{Replicas: 3}
	waitFor(t, 60*time.Second, "provision R3", func() error {
		c2, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		return schema.Provision(c2, js, o)
	})
	// A stage started with the default replicas (1) provisions again: the
	// streams and consumers stay at 3 replicas.
	if err := schema.Provision(ctx, js, schema.StreamOptions{}); err != nil {
		t.Fatalf("provision with default replicas: %v", err)
	}
	for _, sc := range schema.StreamConfigs(o) {
		s, err := js.Stream(ctx, sc.Name)
		if err != nil {
			t.Fatal(err)
		}
		if r := s.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("stream %s has %d replicas after a replicas-1 provision, want 3", sc.Name, r)
		}
	}
	for _, cd := range schema.ConsumerConfigs(o) {
		c, err := js.Consumer(ctx, cd.Stream, cd.Config.Durable)
		if err != nil {
			t.Fatal(err)
		}
		if r := c.CachedInfo().Config.Replicas; r != 3 {
			t.Errorf("consumer %s has %d replicas after a replicas-1 provision, want 3", cd.Config.Durable, r)
		}
	}
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "PACKETS leader and 2 current replicas", func() error {
		si, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if si.Config.Replicas != 3 || si.Cluster == nil || si.Cluster.Leader == "" || len(si.Cluster.Replicas) != 2 {
			return fmt.Errorf("cluster info %+v", si.Cluster)
		}
		return nil
	})
	si, _ := st.Info(ctx)
	leader := c.index(si.Cluster.Leader)

	// The fault: stop the leader after n/3 acks, start it again after 2n/3.
	var acked atomic.Int64
	faultDone := make(chan error, 1)
	restarting := make(chan struct{}) // closed when the restart begins
	go func() {
		for acked.Load() < n/3 {
			time.Sleep(time.Millisecond)
		}
		c.stop(leader)
		t.Logf("stopped %s (PACKETS leader) after %d acks", c.servers[leader].Name(), acked.Load())
		for acked.Load() < 2*n/3 {
			time.Sleep(time.Millisecond)
		}
		close(restarting)
		c.start(leader)
		t.Logf("restarted %s after %d acks", c.servers[leader].Name(), acked.Load())
		faultDone <- nil
	}()

	retries := 0
	pending := make([]int, n)
	for i := range pending {
		pending[i] = i
	}
	for len(pending) > 0 {
		if ctx.Err() != nil {
			t.Fatalf("publishing: %v with %d not acked", ctx.Err(), len(pending))
		}
		batch := pending[:min(len(pending), 100)]
		futures := make([]jetstream.PubAckFuture, len(batch))
		var failed []int
		for k, i := range batch {
			m := &nats.Msg{Subject: schema.PacketsSubject("sensor-a", uint32(i%schema.Buckets)),
				Data: []byte("batch " + strconv.Itoa(i)), Header: nats.Header{}}
			m.Header.Set(jetstream.MsgIDHeader, "sensor-a/1/"+strconv.Itoa(i))
			if futures[k], err = js.PublishMsgAsync(m); err != nil {
				futures[k] = nil
			}
		}
		for k, f := range futures {
			if f == nil {
				failed = append(failed, batch[k])
				continue
			}
			select {
			case <-f.Ok():
				acked.Add(1)
			case <-f.Err():
				failed = append(failed, batch[k])
			case <-ctx.Done():
				t.Fatal(ctx.Err())
			}
		}
		if int(acked.Load()) >= 2*n/3 {
			<-restarting // the rest is published while the node starts and catches up
		}
		retries += len(failed)
		pending = append(failed, pending[len(batch):]...)
		if len(failed) > 0 {
			time.Sleep(100 * time.Millisecond) // back off while the cluster elects a leader
		}
	}
	<-faultDone
	t.Logf("published %d messages, %d publishes retried", n, retries)

	count := func(what string) {
		t.Helper()
		si, err := st.Info(ctx)
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		if si.State.Msgs != n {
			t.Errorf("%s: PACKETS holds %d messages, want %d", what, si.State.Msgs, n)
		}
		// Independent of the stream's counter: read every message back.
		oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
		if err != nil {
			t.Fatalf("%s: %v", what, err)
		}
		seen := make(map[string]int, n)
		total := 0
		lastProgress := time.Now()
		for total < n && time.Since(lastProgress) < 20*time.Second {
			batch, err := oc.Fetch(1000, jetstream.FetchMaxWait(time.Second))
			if err != nil {
				t.Logf("%s: fetch: %v", what, err) // an ordered consumer recreates itself
				continue
			}
			for m := range batch.Messages() {
				seen[m.Headers().Get(jetstream.MsgIDHeader)]++
				total++
				lastProgress = time.Now()
			}
		}
		// One more fetch: anything beyond n would be a duplicate.
		if batch, err := oc.Fetch(1000, jetstream.FetchMaxWait(500*time.Millisecond)); err == nil {
			for m := range batch.Messages() {
				seen[m.Headers().Get(jetstream.MsgIDHeader)]++
				total++
			}
		}
		if total != n {
			t.Errorf("%s: read %d messages back, want %d", what, total, n)
		}
		for i := range n {
			id := "sensor-a/1/" + strconv.Itoa(i)
			if seen[id] != 1 {
				t.Errorf("%s: %s read %d times, want 1", what, id, seen[id])
			}
		}
		if len(seen) != n {
			t.Errorf("%s: %d distinct ids, want %d", what, len(seen), n)
		}
	}
	count("after the restart")

	// The restarted node catches up; then stop another one so that its copy counts.
	waitFor(t, 60*time.Second, "restarted node current", func() error {
		si, err := st.Info(ctx)
		if err != nil {
			return err
		}
		for _, r := range si.Cluster.Replicas {
			if !r.Current || r.Offline {
				return fmt.Errorf("replica %s current=%v offline=%v lag=%d", r.Name, r.Current, r.Offline, r.Lag)
			}
		}
		if len(si.Cluster.Replicas) != 2 {
			return fmt.Errorf("%d replicas", len(si.Cluster.Replicas))
		}
		return nil
	})
	other := (leader + 1) % 3
	c.stop(other)
	t.Logf("stopped %s; %s and %s remain", c.servers[other].Name(), c.servers[leader].Name(), c.servers[(leader+2)%3].Name())
	waitFor(t, 60*time.Second, "leader after the second stop", func() error {
		si, err := st.Info(ctx)
		if err != nil {
			return err
		}
		if si.Cluster.Leader == "" || si.Cluster.Leader == c.servers[other].Name() {
			return fmt.Errorf("leader %q", si.Cluster.Leader)
		}
		return nil
	})
	count("with the restarted node as one of two")
}
