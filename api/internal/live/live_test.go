package live

import (
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"github.com/nats-io/nats.go"
	"google.golang.org/protobuf/proto"

	"netwatch/api/internal/record"
	"netwatch/schema/pb"
)

func TestFilter(t *testing.T) {
	flow := flowEvent(record.Flow{Sensor: "s1", Proto: 6, OrigAddr: "10.0.0.1", OrigPort: 5000, RespAddr: "192.0.2.1", RespPort: 443})
	alert := event{typ: "alert", sensor: "s1", addrs: [2]netip.Addr{netip.MustParseAddr("10.0.0.9")}, proto: -1, ports: [2]int{-1, -1}}
	metrics := event{typ: "metrics", sensor: "s1", proto: -1, ports: [2]int{-1, -1}}
	for _, tc := range []struct {
		query                string
		flow, alert, metrics bool
	}{
		{"", true, true, true},
		{"types=flow", true, false, false},
		{"types=alerts,metrics", false, true, true},
		{"sensor=s2", false, false, false},
		{"sensor=s1&port=443", true, true, true},
		{"port=80", false, true, true},
		{"proto=udp", false, true, true},
		{"addr=192.0.2.0/24", true, false, true},
		{"addr=10.0.0.9", false, true, true},
	} {
		f, err := ParseFilter(httptest.NewRequest("GET", "/?"+tc.query, nil))
		if err != nil {
			t.Fatalf("%s: %v", tc.query, err)
		}
		if f.match(flow) != tc.flow || f.match(alert) != tc.alert || f.match(metrics) != tc.metrics {
			t.Errorf("%s: flow %v alert %v metrics %v; want %v %v %v", tc.query,
				f.match(flow), f.match(alert), f.match(metrics), tc.flow, tc.alert, tc.metrics)
		}
	}
	for _, q := range []string{"types=packets", "port=x", "proto=999", "addr=nope"} {
		if _, err := ParseFilter(httptest.NewRequest("GET", "/?"+q, nil)); err == nil {
			t.Errorf("%s: no error", q)
		}
	}
}

func benchFlow(i int) *pb.Flow {
	return &pb.Flow{Id: "0123456789abcdef0123456789abcdef", Sensor: "s1", CommunityId: "1:LQU9qZlK+B5F3KDmev6m5PMibrg=",
		Proto: 6, OrigAddr: []byte{10, 0, byte(i >> 8), byte(i)}, OrigPort: 51234, RespAddr: []byte{192, 0, 2, 1}, RespPort: 443,
		StartNs: 1e18, EndNs: 1e18 + 5e8, OrigPkts: 10, OrigIpBytes: 1200, RespPkts: 8, RespIpBytes: 9000, App: "tls",
		Final: true, EndReason: pb.EndReason_END_FIN}
}

// TestFlowMessage: the live feed's flow message is what marshal writes.
func TestFlowMessage(t *testing.T) {
	f := benchFlow(1)
	f.Sensor = ""
	r := record.FlowFromPB(f)
	r.Sensor = "batch"
	if got, want := appendFlowMessage(nil, f, "batch"), marshal(message{Type: "flow", Flow: &r}); string(got) != string(want) {
		t.Errorf("got  %s\nwant %s", got, want)
	}
}

// BenchmarkFlowEvent is the per-flow cost of the live feed: protobuf flow to
// the JSON message, once per flow whatever the number of clients.
func BenchmarkFlowEvent(b *testing.B) {
	f := benchFlow(1)
	buf := appendFlowMessage(nil, f, "")
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	for b.Loop() {
		buf = appendFlowMessage(buf[:0], f, "")
	}
}

// BenchmarkBroadcast fans one alert-sized event out to 100 filtered clients.
func BenchmarkBroadcast(b *testing.B) {
	h := New(nil, nil, nil, nil)
	for i := 0; i < 100; i++ {
		c := &client{send: make(chan []byte, 1), live: true, filter: Filter{Port: i, Proto: -1}, mask: allTypes}
		h.clients[c] = struct{}{}
	}
	e := flowEvent(record.Flow{Sensor: "s1", Proto: 6, OrigAddr: "10.0.0.1", OrigPort: 5000, RespAddr: "192.0.2.1", RespPort: 1})
	b.ReportAllocs()
	for b.Loop() {
		h.broadcast(typeFlow, &e, nil)
	}
}

// BenchmarkOnFlows is the cost of one FLOWS message of 256 flows: with no
// client wanting flows (the hub is not even subscribed then; this is the
// cost if a message still arrives), with one client filtering on a port no
// flow has (decode and match only), and with one and with ten unfiltered
// clients (decode, one JSON encoding per flow, fan-out).
func BenchmarkOnFlows(b *testing.B) {
	batch := &pb.FlowBatch{Sensor: "s1"}
	for i := 0; i < 256; i++ {
		batch.Flows = append(batch.Flows, benchFlow(i))
	}
	data, err := proto.Marshal(batch)
	if err != nil {
		b.Fatal(err)
	}
	msg := &nats.Msg{Subject: "netwatch.flows.s1.0.0", Data: data}
	for _, c := range []struct {
		name    string
		clients int
		filter  Filter
	}{
		{"clients=0", 0, Filter{}},
		{"clients=1-filtered-out", 1, Filter{Port: 9, Proto: -1}},
		{"clients=1", 1, Filter{Port: -1, Proto: -1}},
		{"clients=10", 10, Filter{Port: -1, Proto: -1}},
	} {
		b.Run(c.name, func(b *testing.B) {
			h := New(nil, nil, nil, nil)
			done := make(chan struct{})
			defer close(done)
			for i := 0; i < c.clients; i++ {
				cl := &client{send: make(chan []byte, 1024), live: true, filter: c.filter, mask: allTypes}
				h.clients[cl] = struct{}{}
				go func() {
					for {
						select {
						case <-cl.send:
						case <-done:
							return
						}
					}
				}()
			}
			b.SetBytes(int64(len(data)))
			b.ReportAllocs()
			for b.Loop() {
				h.onFlows(msg)
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N)/256, "ns/flow")
		})
	}
}

// TestMappedAddressKept: an IPv4-mapped IPv6 address (16 bytes
// ::ffff:10.0.0.1) is sent on the live feed as PostgreSQL's inet and GET
// /api/v1/flows print it, "::ffff:10.0.0.1", and a filter on it or on
// 10.0.0.1 matches only its own family (the two are distinct addresses in
// flows and the rollups).
func TestMappedAddressKept(t *testing.T) {
	mapped := []byte{0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1}
	f := &pb.Flow{Id: "0123456789abcdef0123456789abcdef", Sensor: "s1", Proto: 17, OrigAddr: mapped, OrigPort: 5000,
		RespAddr: []byte{0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1}, RespPort: 53, StartNs: 1e18, EndNs: 1e18}
	msg := string(appendFlowMessage(nil, f, "s1"))
	if !strings.Contains(msg, `"orig_addr":"::ffff:10.0.0.1"`) || !strings.Contains(msg, `"resp_addr":"2001:db8::1"`) {
		t.Errorf("live flow message %s: want orig_addr ::ffff:10.0.0.1, resp_addr 2001:db8::1", msg)
	}
	ev := flowEvent(record.FlowFromPB(f))
	for q, want := range map[string]bool{"addr=::ffff:10.0.0.1": true, "addr=10.0.0.1": false, "addr=10.0.0.0/8": false,
		"addr=::ffff:10.0.0.0/104": true, "addr=2001:db8::1": true} {
		fl, err := ParseFilter(httptest.NewRequest("GET", "/?"+q, nil))
		if err != nil {
			t.Fatalf("%s: %v", q, err)
		}
		if got := fl.match(ev); got != want {
			t.Errorf("%s on a flow from ::ffff:10.0.0.1: %v, want %v", q, got, want)
		}
	}
}
