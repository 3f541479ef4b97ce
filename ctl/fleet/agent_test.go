package fleet_test

import (
	"bytes"
	"context"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"google.golang.org/protobuf/proto"

	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestAgentWithSensorCredentials runs the agent built from this tree with
// sensor-a's netwatchctl credentials (which allow replies only on its own
// inbox _INBOX_sensor-a.>) against an operator-mode server provisioned by
// netwatchctl: the agent replays a capture of 10 frames (capinfos -c, all
// IPv4) and exits 0; PACKETS holds exactly 10 packet summaries for
// sensor-a, METRICS its final metrics, the SENSORS registry its record
// with the capture as interface, and the server log has no permissions
// violation (its publish acks, stream info and registry replies all came
// to its own inbox).
func TestAgentWithSensorCredentials(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the agent")
	}
	root := testkit.Root(t)
	pcapFile := filepath.Join(testkit.Pcaps(t), "eth-ipv4-icmp-echo-5-pings.pcap")
	want := capinfosCount(t, pcapFile)
	dir, url, logFile := operatorServerLog(t)
	admin := filepath.Join(dir, "admin.creds")
	ctl(t, "creds", "-dir", dir, "-role", "admin", "-o", admin)
	ctl(t, "provision", "-nats.url", url, "-nats.creds", admin, "-replicas", "1", "-timeout", "20s")
	sensorA := filepath.Join(dir, "sensor-a.creds")
	ctl(t, "creds", "-dir", dir, "-sensor", "sensor-a", "-o", sensorA)
	agent := buildStage(t, root, t.TempDir(), "agent")

	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, agent, "-pcap", pcapFile, "-sensor", "sensor-a", "-nats.url", url,
		"-nats.creds", sensorA, "-nats.provision=false", "-http.addr", "", "-log.format", "text")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("agent with sensor-a's credentials: %v\n%s", err, tail(out.String(), 20))
	}
	t.Logf("agent:\n%s", tail(out.String(), 6))

	anc, err := nats.Connect(url, nats.UserCredentials(admin))
	if err != nil {
		t.Fatal(err)
	}
	defer anc.Close()
	js, _ := jetstream.New(anc)
	summaries, batches := 0, 0
	st, err := js.Stream(ctx, schema.StreamPackets)
	if err != nil {
		t.Fatal(err)
	}
	n := int(st.CachedInfo().State.Msgs)
	oc, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	for batches < n {
		m, err := oc.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("read PACKETS (%d of %d): %v", batches, n, err)
		}
		var b pb.PacketBatch
		if err := proto.Unmarshal(m.Data(), &b); err != nil {
			t.Fatalf("decode %s: %v", m.Subject(), err)
		}
		if !strings.HasPrefix(m.Subject(), schema.PacketsPrefix+".sensor-a.") || b.Sensor != "sensor-a" {
			t.Errorf("PACKETS message on %s from %q", m.Subject(), b.Sensor)
		}
		summaries += len(b.Packets)
		batches++
	}
	if summaries != want {
		t.Errorf("PACKETS holds %d packet summaries in %d messages, capinfos counts %d frames", summaries, batches, want)
	}
	ms, err := js.Stream(ctx, schema.StreamMetrics)
	if err != nil {
		t.Fatal(err)
	}
	si, err := ms.Info(ctx, jetstream.WithSubjectFilter(schema.MetricsSubject("sensor-a")))
	if err != nil {
		t.Fatal(err)
	}
	if si.State.Subjects[schema.MetricsSubject("sensor-a")] == 0 || si.State.Msgs != si.State.Subjects[schema.MetricsSubject("sensor-a")] {
		t.Errorf("METRICS holds %v, want sensor-a's metrics only", si.State.Subjects)
	}
	kv, err := schema.OpenRegistry(ctx, js)
	if err != nil {
		t.Fatal(err)
	}
	reg, err := schema.List(ctx, kv, time.Now(), time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if len(reg) != 1 || reg[0].Name != "sensor-a" || len(reg[0].Interfaces) != 1 || reg[0].Interfaces[0] != pcapFile {
		t.Errorf("registry %+v, want sensor-a reading %s", reg, pcapFile)
	}
	if v := logViolations(t, logFile); len(v) > 0 {
		t.Errorf("server logged permissions violations:\n%s", strings.Join(v, "\n"))
	}
	t.Logf("sensor-a: %d summaries in %d PACKETS messages (capinfos %d frames), %d METRICS messages, registry %s on %s",
		summaries, batches, want, si.State.Msgs, reg[0].Name, reg[0].Host)
}

// capinfosCount is the number of frames in a capture as capinfos counts them.
func capinfosCount(t *testing.T, file string) int {
	t.Helper()
	out, err := exec.Command("capinfos", "-c", "-M", "-T", "-r", file).Output()
	if err != nil {
		testkit.Unavailable(t, "capinfos: %v", err)
	}
	f := strings.Fields(strings.TrimSpace(string(out)))
	n, err := strconv.Atoi(f[len(f)-1])
	if err != nil {
		t.Fatalf("capinfos %s: %q", file, out)
	}
	return n
}
