package stage

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"sort"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/proto"

	"netwatch/detector/internal/capflow"
	"netwatch/detector/internal/hostmodel"
	"netwatch/detector/internal/model"
	"netwatch/detector/internal/qname"
	"netwatch/detector/internal/rules"
	"netwatch/schema"
	"netwatch/schema/pb"
	"netwatch/testkit"
)

// TestStageCraftedCaptures runs the detector's input path (FlowBatches on
// FLOWS, the durable consumer, every rule with its default threshold and
// the three shipped models, ALERTS) on the flows tshark builds from the
// crafted captures of internal/rules/testdata (see their generators), one
// sensor each, plus one unrelated flow 10 minutes after the previous sensor's
// last that closes the host windows. Expected by hand from the generators:
//   - udp: udp_flood on 10.0.0.20 from 10.0.0.66 (window T0) and from no
//     originator (spoofed, window T0+30 s): 2 alerts;
//   - sweep: hostsweep from 10.0.0.66 in minutes 0 and 1, each published at
//     32, 64 and 128 hosts: 6 alerts, 2 ids;
//   - amp: amplification on 10.0.0.20, no originator, at the 1,000th and
//     2,000th DNS response: 2 alerts, 1 id;
//   - beacon: beaconing 10.0.0.66 -> 203.0.113.10 at its 8th and 16th
//     connection: 2 alerts, 1 id;
//
// nothing else. Every alert carries host_anomaly. HOST_SCORES (the
// host-score bucket that annotates flows) then holds the sweeper's minute-1
// window with the counts of its port-22 sweep (254 flows to 254 hosts on 1
// port; 254 SYNs + 249 retries + 1 RST = 504 packets, no payload) and the
// flood victim's minute 0 (24,000 flows in), each with the shipped
// forest's score of those counts, and the model entry (1-minute windows).
func TestStageCraftedCaptures(t *testing.T) {
	tshark := testkit.Tool(t, "tshark")
	_, _, js := testkit.JetStream(t)
	ctx := context.Background()
	const t0 = int64(1795968000) * int64(time.Second)
	nmsg := 0
	for k, c := range []struct{ sensor, file string }{
		{"udp", "../rules/testdata/udp-flood.pcap.gz"}, {"sweep", "../rules/testdata/ip-host-sweep.pcap"},
		{"amp", "../rules/testdata/dns-amplification.pcap.gz"}, {"beacon", "../rules/testdata/beaconing.pcap"},
	} {
		flows, err := capflow.Flows(c.file, capflow.Options{Tshark: tshark})
		if err != nil {
			t.Fatal(err)
		}
		// the packet-time watermark is the detector's, across sensors:
		// each closing flow goes past the previous one
		late := t0 + int64(10+10*k)*int64(time.Minute)
		flows = append(flows, &pb.Flow{Proto: 17, OrigAddr: []byte{10, 9, 9, 9}, OrigPort: 5000, RespAddr: []byte{10, 9, 9, 53},
			RespPort: 53, StartNs: late, EndNs: late, OrigPkts: 1, RespPkts: 1, Final: true})
		for i := 0; i < len(flows); i += 256 {
			data, err := proto.Marshal(&pb.FlowBatch{Sensor: c.sensor, Flows: flows[i:min(i+256, len(flows))]})
			if err != nil {
				t.Fatal(err)
			}
			publish(t, js, schema.FlowsSubject(c.sensor, 0, 0), data, fmt.Sprintf("%s.%d", c.sensor, i))
			nmsg++
		}
	}
	tree, err := model.Load("../../models/flow-id3.model")
	if err != nil {
		t.Fatal(err)
	}
	qm, err := qname.Load("../../models/qname-id3.model")
	if err != nil {
		t.Fatal(err)
	}
	hm, err := hostmodel.Load("../../models/host-iforest.model")
	if err != nil {
		t.Fatal(err)
	}
	st := New(Config{Rules: rules.DefaultConfig(), ModelThreshold: 0.95, NameModel: qm, NameModelName: qm.Name, HostModel: hm},
		js, tree, NewMetrics(prometheus.NewRegistry()), slog.New(slog.NewTextHandler(io.Discard, nil)))
	kv, err := OpenHostScores(ctx, js, HostScoresBucket, 1, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	rctx, cancel := context.WithCancel(ctx)
	done := make(chan error, 2)
	go func() { done <- st.RunHostScores(rctx, kv) }()
	go func() { done <- st.Run(rctx) }()
	defer func() { cancel(); <-done; <-done }()
	testkit.Eventually(t, 60*time.Second, func() bool {
		cons, err := js.Consumer(ctx, schema.StreamFlows, schema.ConsumerDetector)
		if err != nil {
			return false
		}
		info, err := cons.Info(ctx)
		return err == nil && info.NumPending == 0 && info.NumAckPending == 0 && info.AckFloor.Stream == uint64(nmsg)
	}, "detector consumer still has pending messages")

	s, err := js.Stream(ctx, schema.StreamAlerts)
	if err != nil {
		t.Fatal(err)
	}
	info, err := s.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	ids := map[string]bool{}
	for seq := uint64(1); seq <= info.State.Msgs; seq++ {
		raw, err := s.GetMsg(ctx, seq)
		if err != nil {
			t.Fatal(err)
		}
		var a pb.Alert
		if err := proto.Unmarshal(raw.Data, &a); err != nil {
			t.Fatal(err)
		}
		var ev struct {
			HostAnomaly *json.RawMessage `json:"host_anomaly"`
		}
		if err := json.Unmarshal(a.Evidence, &ev); err != nil || ev.HostAnomaly == nil {
			t.Errorf("%s: no host_anomaly in %s", a.Summary, a.Evidence)
		}
		got = append(got, fmt.Sprintf("%s %s %q>%q", a.Sensor, a.Category, a.OrigAddr, a.RespAddr))
		ids[a.Id] = true
	}
	sort.Strings(got)
	want := []string{
		`amp amplification "">"10.0.0.20"`, `amp amplification "">"10.0.0.20"`,
		`beacon beaconing "10.0.0.66">"203.0.113.10"`, `beacon beaconing "10.0.0.66">"203.0.113.10"`,
		`sweep hostsweep "10.0.0.66">""`, `sweep hostsweep "10.0.0.66">""`, `sweep hostsweep "10.0.0.66">""`,
		`sweep hostsweep "10.0.0.66">""`, `sweep hostsweep "10.0.0.66">""`, `sweep hostsweep "10.0.0.66">""`,
		`udp udp_flood "">"10.0.0.20"`, `udp udp_flood "10.0.0.66">"10.0.0.20"`,
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || len(ids) != 6 {
		t.Fatalf("alerts (%d ids):\n%v\nwant (6 ids):\n%v", len(ids), got, want)
	}

	var meta HostScoresModel
	e, err := kv.Get(ctx, HostScoresModelKey)
	if err != nil || json.Unmarshal(e.Value(), &meta) != nil || meta.Model != hm.Name || meta.Threshold != hm.Threshold || meta.WindowNs != int64(time.Minute) {
		t.Fatalf("host scores model entry: %v %+v", err, meta)
	}
	for _, c := range []struct {
		sensor, addr string
		win          int64
		want         func(hostmodel.Counts) bool
	}{
		{"sweep", "10.0.0.66", t0 + int64(time.Minute), func(c hostmodel.Counts) bool {
			return c.FlowsOut == 254 && c.PeersOut == 254 && c.PortsOut == 1 && c.PktsOut == 504 && c.BytesOut == 0 && c.BytesIn == 0 && c.FlowsIn == 0
		}},
		{"udp", "10.0.0.20", t0, func(c hostmodel.Counts) bool { return c.FlowsIn == 24000 && c.BytesIn == 0 }},
	} {
		key := HostScoreKey(c.sensor, netip.MustParseAddr(c.addr), c.win)
		var hs HostScore
		testkit.Eventually(t, 10*time.Second, func() bool {
			e, err := kv.Get(ctx, key)
			return err == nil && json.Unmarshal(e.Value(), &hs) == nil
		}, "no host score at "+key)
		if !c.want(hs.Counts) || hs.Addr != c.addr || hs.WindowStart != c.win || hs.WindowEnd != c.win+int64(time.Minute) ||
			hs.Score != hm.Score(hs.Counts.Vector()) || hs.Anomalous != hm.Anomalous(hs.Score) {
			t.Errorf("%s: %+v", key, hs)
		}
		t.Logf("%s: score %.4f (threshold %.4f) %+v", key, hs.Score, hm.Threshold, hs.Counts)
	}
}

// TestHostScoreKey: keys on hand-written addresses.
func TestHostScoreKey(t *testing.T) {
	for addr, want := range map[string]string{
		"10.0.0.66":        "s1.10-0-0-66.1795968000",
		"fd99::10":         "s1.fd99__10.1795968000",
		"::ffff:192.0.2.1": "s1.192-0-2-1.1795968000",
	} {
		if got := HostScoreKey("s1", netip.MustParseAddr(addr), 1795968000*int64(time.Second)); got != want {
			t.Errorf("%s: %s, want %s", addr, got, want)
		}
	}
}
